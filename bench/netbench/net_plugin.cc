#include "net_plugin.h"

#include <cstdarg>
#include <cstdio>

#include <dlfcn.h>
#include <link.h>

#include <fmt/format.h>

#include <dualpath/common/log.h>

namespace dualpath::bench {
namespace {

namespace abi = plugin::abi;

std::string_view resultName(abi::NcclResult result) {
  switch (result) {
    case abi::success:
      return "ncclSuccess";
    case abi::unhandledCudaError:
      return "ncclUnhandledCudaError";
    case abi::systemError:
      return "ncclSystemError";
    case abi::internalError:
      return "ncclInternalError";
    case abi::invalidArgument:
      return "ncclInvalidArgument";
    case abi::invalidUsage:
      return "ncclInvalidUsage";
    case abi::remoteError:
      return "ncclRemoteError";
    case abi::inProgress:
      return "ncclInProgress";
  }
  return "ncclResult(?)";
}

Status checked(abi::NcclResult result, std::string_view call) {
  if (result == abi::success) return Status::ok();
  const StatusCode code = result == abi::remoteError ? StatusCode::remote
                          : result == abi::invalidUsage || result == abi::invalidArgument
                              ? StatusCode::invalid_usage
                              : StatusCode::io;
  return Status(code, fmt::format("net plugin: {} returned {} (the plugin logged why; "
                                  "DUALPATH_LOG_LEVEL=info shows it)",
                                  call, resultName(result)));
}

// NCCL's logger, as the plugin sees it: printf-style, any thread.
void pluginLogger(abi::LogLevel level, unsigned long /*flags*/, const char* file, int line,
                  const char* format, ...) {
  char text[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof(text), format, args);
  va_end(args);
  switch (level) {
    case abi::LogLevel::warn:
    case abi::LogLevel::abort:
      DP_LOG_WARN("net plugin: {} ({}:{})", text, file != nullptr ? file : "?", line);
      break;
    case abi::LogLevel::info:
    case abi::LogLevel::version:
      DP_LOG_INFO("net plugin: {}", text);
      break;
    default:
      DP_LOG_DEBUG("net plugin: {}", text);
      break;
  }
}

// NCCL's rule for NCCL_NET_PLUGIN: a name becomes libnccl-net-<name>.so; a
// value that already names a library file is used as is.
std::string libraryFor(const std::string& name_or_path) {
  if (name_or_path.find('/') != std::string::npos ||
      name_or_path.find(".so") != std::string::npos) {
    return name_or_path;
  }
  return fmt::format("libnccl-net-{}.so", name_or_path);
}

}  // namespace

Result<std::unique_ptr<NetPlugin>> NetPlugin::load(const std::string& name_or_path) {
  const std::string library = libraryFor(name_or_path);
  void* handle = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* error = ::dlerror();
    return Status(StatusCode::io, fmt::format("net plugin: dlopen(\"{}\"): {}", library,
                                              error != nullptr ? error : "unknown error"));
  }
  auto* table = static_cast<const abi::NetV11*>(::dlsym(handle, abi::kSymbolNetV11));
  if (table == nullptr) {
    ::dlclose(handle);
    return Status(StatusCode::unsupported,
                  fmt::format("net plugin: {} has no {} table", library, abi::kSymbolNetV11));
  }
  link_map* map = nullptr;
  std::string path = library;
  if (::dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr) {
    path = map->l_name;
  }
  return std::unique_ptr<NetPlugin>(new NetPlugin(handle, table, std::move(path)));
}

NetPlugin::~NetPlugin() {
  ::dlclose(library_);
}

Result<void*> NetPlugin::init(std::uint64_t comm_id, int traffic_class) {
  abi::CommConfigV11 config{traffic_class};
  void* ctx = nullptr;
  DP_TRY(checked(table_->init(&ctx, comm_id, &config, &pluginLogger, nullptr),
                 fmt::format("init(trafficClass {})", traffic_class)));
  return ctx;
}

Status NetPlugin::finalize(void* ctx) {
  return checked(table_->finalize(ctx), "finalize");
}

Result<int> NetPlugin::devices() {
  int count = 0;
  DP_TRY(checked(table_->devices(&count), "devices"));
  return count;
}

Status NetPlugin::listen(void* ctx, int dev, void* handle, void** listen_comm) {
  return checked(table_->listen(ctx, dev, handle, listen_comm), "listen");
}

Status NetPlugin::connect(void* ctx, int dev, void* handle, void** send_comm) {
  abi::NetDeviceHandleV11* device_handle = nullptr;
  return checked(table_->connect(ctx, dev, handle, send_comm, &device_handle), "connect");
}

Status NetPlugin::accept(void* listen_comm, void** recv_comm) {
  abi::NetDeviceHandleV11* device_handle = nullptr;
  return checked(table_->accept(listen_comm, recv_comm, &device_handle), "accept");
}

Status NetPlugin::regMr(void* comm, void* data, std::size_t size, void** mhandle) {
  return checked(table_->regMr(comm, data, size, abi::kPtrHost, mhandle), "regMr");
}

Status NetPlugin::deregMr(void* comm, void* mhandle) {
  return checked(table_->deregMr(comm, mhandle), "deregMr");
}

Status NetPlugin::isend(void* send_comm, void* data, std::size_t size, int tag, void* mhandle,
                        void** request) {
  *request = nullptr;
  return checked(table_->isend(send_comm, data, size, tag, mhandle, nullptr, request), "isend");
}

Status NetPlugin::irecv(void* recv_comm, void* data, std::size_t size, int tag, void* mhandle,
                        void** request) {
  void* data_v[1] = {data};
  std::size_t sizes[1] = {size};
  int tags[1] = {tag};
  void* mhandles[1] = {mhandle};
  void* phandles[1] = {nullptr};
  *request = nullptr;
  return checked(table_->irecv(recv_comm, 1, data_v, sizes, tags, mhandles, phandles, request),
                 "irecv");
}

Status NetPlugin::test(void* request, bool* done, int* size) {
  int finished = 0;
  int sizes[1] = {0};
  DP_TRY(checked(table_->test(request, &finished, sizes), "test"));
  *done = finished != 0;
  if (size != nullptr) *size = sizes[0];
  return Status::ok();
}

Status NetPlugin::closeSend(void* comm) {
  return checked(table_->closeSend(comm), "closeSend");
}
Status NetPlugin::closeRecv(void* comm) {
  return checked(table_->closeRecv(comm), "closeRecv");
}
Status NetPlugin::closeListen(void* comm) {
  return checked(table_->closeListen(comm), "closeListen");
}

}  // namespace dualpath::bench
