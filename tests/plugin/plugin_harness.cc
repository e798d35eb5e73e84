#include "plugin_harness.h"

#include <dlfcn.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>

namespace dualpath::testing {

namespace {

std::mutex g_log_mu;
std::vector<std::string> g_lines;

const char* levelText(abi::LogLevel level) {
  switch (level) {
    case abi::LogLevel::warn:
      return "WARN";
    case abi::LogLevel::info:
      return "INFO";
    case abi::LogLevel::trace:
      return "TRACE";
    default:
      return "OTHER";
  }
}

void recordingLogger(abi::LogLevel level, unsigned long, const char*, int, const char* format, ...) {
  char buffer[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  std::lock_guard lock(g_log_mu);
  g_lines.push_back(fmt::format("{} {}", levelText(level), buffer));
}

template <class T>
const T& as(const void* table) {
  return *static_cast<const T*>(table);
}

}  // namespace

std::vector<std::string> loggedLines() {
  std::lock_guard lock(g_log_mu);
  return g_lines;
}

void clearLoggedLines() {
  std::lock_guard lock(g_log_mu);
  g_lines.clear();
}

PluginApi::PluginApi(const std::string& plugin_name, int version) : version_(version) {
  // NCCL's rule: the name as given, then libnccl-net-<name>.so.
  library_ = dlopen(plugin_name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library_ == nullptr) {
    std::string conventional = "libnccl-net-" + plugin_name + ".so";
    library_ = dlopen(conventional.c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  if (library_ == nullptr) throw std::runtime_error(std::string("dlopen: ") + dlerror());
  std::string symbol = fmt::format("ncclNetPlugin_v{}", version);
  table_ = dlsym(library_, symbol.c_str());
  if (table_ == nullptr) {
    dlclose(library_);
    throw std::runtime_error(fmt::format("dlsym {}: not exported", symbol));
  }
}

PluginApi::~PluginApi() {
  if (library_ != nullptr) dlclose(library_);
}

const char* PluginApi::name() const {
  return *static_cast<const char* const*>(table_);  // first member in every version
}

#define DISPATCH(call_v11, call_v10, call_v9, call_v8) \
  switch (version_) {                                  \
    case 11:                                           \
      return call_v11;                                 \
    case 10:                                           \
      return call_v10;                                 \
    case 9:                                            \
      return call_v9;                                  \
    default:                                           \
      return call_v8;                                  \
  }

abi::NcclResult PluginApi::init(void** ctx, int traffic_class) {
  connect_traffic_class_ = traffic_class;
  static int legacy_ctx = 0;
  if (version_ == 11) {
    abi::CommConfigV11 config{traffic_class};
    return as<abi::NetV11>(table_).init(ctx, 0x1234, &config, recordingLogger, nullptr);
  }
  *ctx = &legacy_ctx;
  DISPATCH(abi::internalError, as<abi::NetV10>(table_).init(recordingLogger, nullptr),
           as<abi::NetV9>(table_).init(recordingLogger), as<abi::NetV8>(table_).init(recordingLogger))
}

abi::NcclResult PluginApi::finalize(void* ctx) {
  if (version_ != 11) return abi::success;
  return as<abi::NetV11>(table_).finalize(ctx);
}

abi::NcclResult PluginApi::devices(int* count) {
  DISPATCH(as<abi::NetV11>(table_).devices(count), as<abi::NetV10>(table_).devices(count),
           as<abi::NetV9>(table_).devices(count), as<abi::NetV8>(table_).devices(count))
}

abi::NcclResult PluginApi::properties(int dev, std::string* name, int* max_recvs, int* ptr_support) {
  auto copy = [&](const auto& props) {
    *name = props.name;
    *max_recvs = props.maxRecvs;
    *ptr_support = props.ptrSupport;
  };
  abi::NcclResult result = abi::internalError;
  switch (version_) {
    case 11: {
      abi::PropertiesV11 p{};
      result = as<abi::NetV11>(table_).getProperties(dev, &p);
      if (result == abi::success) copy(p);
      break;
    }
    case 10: {
      abi::PropertiesV10 p{};
      result = as<abi::NetV10>(table_).getProperties(dev, &p);
      if (result == abi::success) copy(p);
      break;
    }
    case 9: {
      abi::PropertiesV9 p{};
      result = as<abi::NetV9>(table_).getProperties(dev, &p);
      if (result == abi::success) copy(p);
      break;
    }
    default: {
      abi::PropertiesV8 p{};
      result = as<abi::NetV8>(table_).getProperties(dev, &p);
      if (result == abi::success) copy(p);
      break;
    }
  }
  return result;
}

abi::NcclResult PluginApi::listen(void* ctx, int dev, void* handle, void** comm) {
  DISPATCH(as<abi::NetV11>(table_).listen(ctx, dev, handle, comm),
           as<abi::NetV10>(table_).listen(dev, handle, comm),
           as<abi::NetV9>(table_).listen(dev, handle, comm),
           as<abi::NetV8>(table_).listen(dev, handle, comm))
}

abi::NcclResult PluginApi::connect(void* ctx, int dev, void* handle, void** comm) {
  abi::NetDeviceHandle* dev_comm = nullptr;
  abi::CommConfigV10 config{connect_traffic_class_};
  DISPATCH(as<abi::NetV11>(table_).connect(ctx, dev, handle, comm, &dev_comm),
           as<abi::NetV10>(table_).connect(dev, &config, handle, comm, &dev_comm),
           as<abi::NetV9>(table_).connect(dev, handle, comm, &dev_comm),
           as<abi::NetV8>(table_).connect(dev, handle, comm, &dev_comm))
}

abi::NcclResult PluginApi::accept(void* listen_comm, void** comm) {
  abi::NetDeviceHandle* dev_comm = nullptr;
  DISPATCH(as<abi::NetV11>(table_).accept(listen_comm, comm, &dev_comm),
           as<abi::NetV10>(table_).accept(listen_comm, comm, &dev_comm),
           as<abi::NetV9>(table_).accept(listen_comm, comm, &dev_comm),
           as<abi::NetV8>(table_).accept(listen_comm, comm, &dev_comm))
}

abi::NcclResult PluginApi::regMr(void* comm, void* data, std::size_t size, int type, void** mh) {
  DISPATCH(as<abi::NetV11>(table_).regMr(comm, data, size, type, mh),
           as<abi::NetV10>(table_).regMr(comm, data, size, type, mh),
           as<abi::NetV9>(table_).regMr(comm, data, size, type, mh),
           as<abi::NetV8>(table_).regMr(comm, data, size, type, mh))
}

abi::NcclResult PluginApi::deregMr(void* comm, void* mh) {
  DISPATCH(as<abi::NetV11>(table_).deregMr(comm, mh), as<abi::NetV10>(table_).deregMr(comm, mh),
           as<abi::NetV9>(table_).deregMr(comm, mh), as<abi::NetV8>(table_).deregMr(comm, mh))
}

abi::NcclResult PluginApi::isend(void* comm, void* data, std::size_t size, int tag, void* mh,
                                 void** request) {
  DISPATCH(as<abi::NetV11>(table_).isend(comm, data, size, tag, mh, nullptr, request),
           as<abi::NetV10>(table_).isend(comm, data, size, tag, mh, nullptr, request),
           as<abi::NetV9>(table_).isend(comm, data, size, tag, mh, request),
           as<abi::NetV8>(table_).isend(comm, data, static_cast<int>(size), tag, mh, request))
}

abi::NcclResult PluginApi::irecv(void* comm, int n, void** data, const std::size_t* sizes,
                                 const int* tags, void** mhandles, void** request) {
  std::size_t sizes_copy[8];
  int int_sizes[8];
  int tags_copy[8];
  for (int i = 0; i < n && i < 8; ++i) {
    sizes_copy[i] = sizes[i];
    int_sizes[i] = static_cast<int>(sizes[i]);
    tags_copy[i] = tags[i];
  }
  void* phandles[8] = {};
  DISPATCH(as<abi::NetV11>(table_).irecv(comm, n, data, sizes_copy, tags_copy, mhandles, phandles,
                                         request),
           as<abi::NetV10>(table_).irecv(comm, n, data, sizes_copy, tags_copy, mhandles, phandles,
                                         request),
           as<abi::NetV9>(table_).irecv(comm, n, data, sizes_copy, tags_copy, mhandles, request),
           as<abi::NetV8>(table_).irecv(comm, n, data, int_sizes, tags_copy, mhandles, request))
}

abi::NcclResult PluginApi::iflush(void* comm, int n, void** data, int* sizes, void** mh,
                                  void** request) {
  DISPATCH(as<abi::NetV11>(table_).iflush(comm, n, data, sizes, mh, request),
           as<abi::NetV10>(table_).iflush(comm, n, data, sizes, mh, request),
           as<abi::NetV9>(table_).iflush(comm, n, data, sizes, mh, request),
           as<abi::NetV8>(table_).iflush(comm, n, data, sizes, mh, request))
}

abi::NcclResult PluginApi::test(void* request, int* done, int* sizes) {
  DISPATCH(as<abi::NetV11>(table_).test(request, done, sizes),
           as<abi::NetV10>(table_).test(request, done, sizes),
           as<abi::NetV9>(table_).test(request, done, sizes),
           as<abi::NetV8>(table_).test(request, done, sizes))
}

abi::NcclResult PluginApi::closeSend(void* comm) {
  DISPATCH(as<abi::NetV11>(table_).closeSend(comm), as<abi::NetV10>(table_).closeSend(comm),
           as<abi::NetV9>(table_).closeSend(comm), as<abi::NetV8>(table_).closeSend(comm))
}

abi::NcclResult PluginApi::closeRecv(void* comm) {
  DISPATCH(as<abi::NetV11>(table_).closeRecv(comm), as<abi::NetV10>(table_).closeRecv(comm),
           as<abi::NetV9>(table_).closeRecv(comm), as<abi::NetV8>(table_).closeRecv(comm))
}

abi::NcclResult PluginApi::closeListen(void* comm) {
  DISPATCH(as<abi::NetV11>(table_).closeListen(comm), as<abi::NetV10>(table_).closeListen(comm),
           as<abi::NetV9>(table_).closeListen(comm), as<abi::NetV8>(table_).closeListen(comm))
}

#undef DISPATCH

bool connectBoth(PluginApi& api, void* send_ctx, void* listen_comm, void* handle, void** send,
                 void** recv, std::string* error) {
  *send = nullptr;
  *recv = nullptr;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    if (*send == nullptr && send_ctx != nullptr) {
      if (abi::NcclResult r = api.connect(send_ctx, 0, handle, send); r != abi::success) {
        *error = fmt::format("connect returned {}", static_cast<int>(r));
        return false;
      }
    }
    if (*recv == nullptr && listen_comm != nullptr) {
      if (abi::NcclResult r = api.accept(listen_comm, recv); r != abi::success) {
        *error = fmt::format("accept returned {}", static_cast<int>(r));
        return false;
      }
    }
    if ((send_ctx == nullptr || *send != nullptr) && (listen_comm == nullptr || *recv != nullptr)) {
      return true;
    }
  }
  *error = "connect/accept did not finish within 20 s";
  return false;
}

abi::NcclResult waitDone(PluginApi& api, void* request, int* sizes, double seconds) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int done = 0;
    abi::NcclResult r = api.test(request, &done, sizes);
    if (r != abi::success || done) return r;
  }
  return abi::inProgress;  // our marker for "deadline passed" in tests
}

void fillPattern(void* data, std::size_t size, int seed) {
  auto* bytes = static_cast<unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    bytes[i] = static_cast<unsigned char>((i * 2654435761u + static_cast<unsigned>(seed) * 97) >> 7);
  }
}

std::string checkPattern(const void* data, std::size_t size, int seed) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    auto expected =
        static_cast<unsigned char>((i * 2654435761u + static_cast<unsigned>(seed) * 97) >> 7);
    if (bytes[i] != expected) {
      return fmt::format("byte {} of {} is {:#04x}, expected {:#04x} (seed {})", i, size, bytes[i],
                         expected, seed);
    }
  }
  return {};
}

}  // namespace dualpath::testing
