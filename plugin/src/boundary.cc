#include "boundary.h"

#include <array>
#include <climits>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/common/params.h>
#include <dualpath/common/status.h>
#include <dualpath/transport/transport.h>

namespace dualpath::plugin {

namespace {

using transport::ConnectHandle;

static_assert(sizeof(ConnectHandle) == abi::kHandleBytes, "our handle fills NCCL's buffer");
static_assert(transport::kMaxRequestsPerEndpoint == static_cast<std::size_t>(abi::kMaxRequests));

// ---------------------------------------------------------------- logging

std::atomic<abi::DebugLogger> g_nccl_logger{nullptr};

void ncclSink(log::Level level, const char* file, int line, std::string_view message) noexcept {
  abi::DebugLogger logger = g_nccl_logger.load(std::memory_order_acquire);
  if (logger == nullptr) return;
  abi::LogLevel nccl_level = abi::LogLevel::trace;
  switch (level) {
    case log::Level::error:
    case log::Level::warn:
      nccl_level = abi::LogLevel::warn;
      break;
    case log::Level::info:
      nccl_level = abi::LogLevel::info;
      break;
    case log::Level::trace:
    case log::Level::debug:
    case log::Level::off:
      break;
  }
  logger(nccl_level, abi::kLogNet, file, line, "NET/DualPath %.*s", static_cast<int>(message.size()),
         message.data());
}

// ---------------------------------------------------------------- translation

abi::NcclResult toNccl(const Status& status, const char* call) noexcept {
  if (status.isOk() || status.code() == StatusCode::again) return abi::success;
  DP_LOG_WARN("{} failed: {}", call, status.toString());
  switch (status.code()) {
    case StatusCode::remote:
    case StatusCode::timeout:
      return abi::remoteError;
    case StatusCode::invalid_argument:
    case StatusCode::invalid_usage:
      return abi::invalidUsage;
    case StatusCode::internal:
      return abi::internalError;
    case StatusCode::ok:
    case StatusCode::again:
    case StatusCode::not_found:
    case StatusCode::unsupported:
    case StatusCode::io:
    case StatusCode::corrupt:
      break;
  }
  return abi::systemError;
}

// Routes this thread's lines to NCCL's logger for the duration of one ABI
// call, so the transport's lines about NCCL's connections reach NCCL_DEBUG,
// while other threads of the process (a loader sharing the transport) keep
// their own sink. NCCL's logger filters by NCCL_DEBUG; it gets everything down
// to info, or lower when DUALPATH_LOG_LEVEL asks for it. On every call of the
// data path too: a route costs two thread-local writes.
class NcclLogRoute {
 public:
  NcclLogRoute() noexcept {
    if (g_nccl_logger.load(std::memory_order_acquire) != nullptr) {
      route_.emplace(&ncclSink, log::Level::info);
    }
  }

 private:
  std::optional<log::ScopedRoute> route_;
};

// Runs `body` with every exception contained: nothing crosses the C ABI.
template <class Body>
abi::NcclResult guarded(const char* call, Body&& body) noexcept {
  NcclLogRoute route;
  try {
    return toNccl(body(), call);
  } catch (const std::bad_alloc&) {
    DP_LOG_ERROR("{}: out of memory", call);
    return abi::systemError;
  } catch (const std::exception& e) {
    DP_LOG_ERROR("{}: internal error: {}", call, e.what());
    return abi::internalError;
  } catch (...) {
    DP_LOG_ERROR("{}: internal error: unknown exception", call);
    return abi::internalError;
  }
}

Status usage(std::string message) {
  return Status(StatusCode::invalid_usage, std::move(message));
}

// ---------------------------------------------------------------- objects

struct Context {
  std::shared_ptr<transport::Engine> engine;
  std::uint8_t class_index = 0;
  std::uint64_t comm_id = 0;
};

struct ListenComm {
  std::shared_ptr<transport::Engine> engine;
  std::unique_ptr<transport::Listener> listener;
};

enum class CommKind : std::uint8_t { send, recv };

struct Comm {
  static constexpr std::uint32_t kMagic = 0x4450434d;  // "DPCM"
  std::uint32_t magic = kMagic;
  CommKind kind = CommKind::send;
  std::shared_ptr<transport::Engine> engine;
  std::unique_ptr<transport::Endpoint> endpoint;
};

struct MemoryHandle {
  std::unique_ptr<transport::MemoryRegion> region;
};

// Process-wide plugin state: the engine, the legacy context, and the
// strings getProperties hands out (they must outlive any caller).
struct PluginState {
  std::mutex mu;
  std::weak_ptr<transport::Engine> engine;
  std::unique_ptr<Context> legacy;
  std::unordered_map<std::string, std::unique_ptr<std::string>> strings;
  std::size_t live_contexts = 0;

  const char* intern(const std::string& text) {
    auto& slot = strings[text];
    if (!slot) slot = std::make_unique<std::string>(text);
    return slot->c_str();
  }
};

// Destroyed when NCCL unloads the library (or at exit): the v8-v10 context,
// and with it the last engine reference, go then.
PluginState& state() {
  static PluginState s;
  return s;
}

Result<std::shared_ptr<transport::Engine>> currentEngine() {
  std::lock_guard lock(state().mu);
  if (auto alive = state().engine.lock()) return alive;
  return Status(StatusCode::invalid_usage, "no communicator is initialized: call init first");
}

Status checkComm(void* comm, CommKind kind, const char* what) {
  if (comm == nullptr) return usage(fmt::format("{}: NULL comm", what));
  auto* c = static_cast<Comm*>(comm);
  if (c->magic != Comm::kMagic) return usage(fmt::format("{}: not a DualPath comm", what));
  if (c->kind != kind) {
    return usage(fmt::format("{}: a {} comm was passed where a {} comm is expected", what,
                             c->kind == CommKind::send ? "send" : "recv",
                             kind == CommKind::send ? "send" : "recv"));
  }
  return Status::ok();
}

Status checkAnyComm(void* comm, const char* what) {
  if (comm == nullptr) return usage(fmt::format("{}: NULL comm", what));
  if (static_cast<Comm*>(comm)->magic != Comm::kMagic) {
    return usage(fmt::format("{}: not a DualPath comm", what));
  }
  return Status::ok();
}

Result<std::uint8_t> classFor(const transport::Engine& engine, int traffic_class) {
  DP_TRY_ASSIGN(const qos::TrafficClass* cls, engine.policy().selectByNcclTrafficClass(traffic_class));
  return static_cast<std::uint8_t>(engine.policy().indexOf(*cls));
}

}  // namespace

// ---------------------------------------------------------------- init / finalize

abi::NcclResult init(void** ctx, std::uint64_t comm_id, int traffic_class,
                     abi::DebugLogger logger) noexcept {
  // Before the guard, so that init's own failures reach NCCL's logger.
  if (logger != nullptr) g_nccl_logger.store(logger, std::memory_order_release);
  return guarded("init", [&]() -> Status {
    if (ctx == nullptr) return usage("init: NULL ctx");
    *ctx = nullptr;
    DP_TRY(params::global().status());
    DP_TRY_ASSIGN(std::shared_ptr<transport::Engine> engine, transport::Engine::shared());
    DP_TRY_ASSIGN(std::uint8_t cls, classFor(*engine, traffic_class));
    auto context = std::make_unique<Context>(Context{engine, cls, comm_id});
    {
      std::lock_guard lock(state().mu);
      state().engine = engine;
      ++state().live_contexts;
    }
    DP_LOG_INFO("init: comm {:#x}, trafficClass {} selects class '{}' (policy {})", comm_id,
                traffic_class, engine->policy().classes[cls].name, engine->policy().source_name);
    *ctx = context.release();
    return Status::ok();
  });
}

abi::NcclResult finalize(void* ctx) noexcept {
  return guarded("finalize", [&]() -> Status {
    if (ctx == nullptr) return usage("finalize: NULL ctx");
    std::lock_guard lock(state().mu);
    if (ctx == state().legacy.get()) return usage("finalize: the v8-v10 context is not finalized");
    delete static_cast<Context*>(ctx);  // its engine reference goes with it
    --state().live_contexts;
    return Status::ok();
  });
}

void* legacyContext() noexcept {
  std::lock_guard lock(state().mu);
  return state().legacy.get();
}

abi::NcclResult initLegacy(abi::DebugLogger logger) noexcept {
  {
    std::lock_guard lock(state().mu);
    if (state().legacy) return abi::success;
  }
  void* ctx = nullptr;
  abi::NcclResult result = init(&ctx, 0, abi::kTrafficClassUndef, logger);
  if (result != abi::success) return result;
  std::lock_guard lock(state().mu);
  state().legacy.reset(static_cast<Context*>(ctx));
  return abi::success;
}

// ---------------------------------------------------------------- devices

abi::NcclResult devices(int* count) noexcept {
  return guarded("devices", [&]() -> Status {
    if (count == nullptr) return usage("devices: NULL count");
    DP_TRY_ASSIGN(auto engine, currentEngine());
    *count = static_cast<int>(engine->devices().size());
    return Status::ok();
  });
}

abi::NcclResult properties(int dev, DeviceProperties* props) noexcept {
  return guarded("getProperties", [&]() -> Status {
    DP_TRY_ASSIGN(auto engine, currentEngine());
    if (dev < 0 || static_cast<std::size_t>(dev) >= engine->devices().size()) {
      return usage(fmt::format("getProperties: device {} does not exist ({} devices)", dev,
                               engine->devices().size()));
    }
    const transport::DeviceInfo& info = engine->devices()[static_cast<std::size_t>(dev)];
    std::lock_guard lock(state().mu);
    *props = DeviceProperties{};
    props->name = state().intern(info.name);
    props->pci_path = info.pci_path.empty() ? nullptr : state().intern(info.pci_path);
    props->guid = std::hash<std::string>{}(info.name);
    props->ptr_support = abi::kPtrHost;  // Debian's UCX has no CUDA support
    // NCCL models bandwidth from the speed; loopback reports none.
    props->speed_mbps = info.speed_mbps != 0 ? static_cast<int>(info.speed_mbps) : 10'000;
    props->port = 1;
    props->latency_us = 0;
    props->max_comms = 65'536;
    props->max_recvs = static_cast<int>(transport::kMaxRecvsPerRequest);
    props->max_p2p_bytes = abi::kMaxNetSizeBytes;
    props->max_coll_bytes = abi::kMaxNetSizeBytes;
    return Status::ok();
  });
}

// ---------------------------------------------------------------- connection setup

abi::NcclResult listen(void* ctx, int dev, void* handle, void** listen_comm, bool any_class) noexcept {
  return guarded("listen", [&]() -> Status {
    if (ctx == nullptr || handle == nullptr || listen_comm == nullptr) {
      return usage("listen: NULL ctx, handle or listenComm");
    }
    *listen_comm = nullptr;
    auto* context = static_cast<Context*>(ctx);
    ConnectHandle out{};
    DP_TRY_ASSIGN(auto listener,
                  context->engine->listen(static_cast<std::size_t>(dev),
                                          any_class ? transport::kAnyClass : context->class_index,
                                          &out));
    std::memcpy(handle, &out, sizeof(out));
    *listen_comm = new ListenComm{context->engine, std::move(listener)};
    return Status::ok();
  });
}

abi::NcclResult connect(void* ctx, int dev, int traffic_class, void* handle, void** send_comm,
                        abi::NetDeviceHandle**) noexcept {
  return guarded("connect", [&]() -> Status {
    if (ctx == nullptr || handle == nullptr || send_comm == nullptr) {
      return usage("connect: NULL ctx, handle or sendComm");
    }
    *send_comm = nullptr;
    auto* context = static_cast<Context*>(ctx);
    // NCCL hands back the same handle buffer on every retry: the pending
    // Connector lives in its `stage` field.
    ConnectHandle remote;
    std::memcpy(&remote, handle, sizeof(remote));
    auto* pending = reinterpret_cast<transport::Connector*>(remote.stage);
    auto store = [&](transport::Connector* connector) {
      std::uint64_t stage = reinterpret_cast<std::uint64_t>(connector);
      std::memcpy(static_cast<char*>(handle) + offsetof(ConnectHandle, stage), &stage,
                  sizeof(stage));
    };
    if (pending == nullptr) {
      std::uint8_t cls = context->class_index;
      if (traffic_class != kContextClass) {
        DP_TRY_ASSIGN(cls, classFor(*context->engine, traffic_class));
      }
      DP_TRY_ASSIGN(auto connector,
                    context->engine->connect(static_cast<std::size_t>(dev), remote, cls));
      pending = connector.release();
      store(pending);
    }
    Result<std::unique_ptr<transport::Endpoint>> endpoint = pending->poll();
    if (!endpoint && endpoint.status().code() == StatusCode::again) return Status::ok();
    delete pending;
    store(nullptr);
    if (!endpoint) return std::move(endpoint).status();
    DP_LOG_INFO("connect: to {} on class '{}', lanes {}", (*endpoint)->peerName(),
                context->engine->policy().classes[(*endpoint)->classIndex()].name,
                fmt::join((*endpoint)->lanes(), ","));
    *send_comm = new Comm{Comm::kMagic, CommKind::send, context->engine, std::move(endpoint).value()};
    return Status::ok();
  });
}

abi::NcclResult accept(void* listen_comm, void** recv_comm, abi::NetDeviceHandle**) noexcept {
  return guarded("accept", [&]() -> Status {
    if (listen_comm == nullptr || recv_comm == nullptr) {
      return usage("accept: NULL listenComm or recvComm");
    }
    *recv_comm = nullptr;
    auto* listen = static_cast<ListenComm*>(listen_comm);
    Result<std::unique_ptr<transport::Endpoint>> endpoint = listen->listener->tryAccept();
    if (!endpoint) return std::move(endpoint).status();  // again → NULL comm, success
    DP_LOG_INFO("accept: from {} on class '{}'", (*endpoint)->peerName(),
                listen->engine->policy().classes[(*endpoint)->classIndex()].name);
    *recv_comm = new Comm{Comm::kMagic, CommKind::recv, listen->engine, std::move(endpoint).value()};
    return Status::ok();
  });
}

// ---------------------------------------------------------------- memory

abi::NcclResult regMr(void* comm, void* data, std::size_t size, int type, void** mhandle) noexcept {
  return guarded("regMr", [&]() -> Status {
    DP_TRY(checkAnyComm(comm, "regMr"));
    if (mhandle == nullptr) return usage("regMr: NULL mhandle");
    *mhandle = nullptr;
    if (type != abi::kPtrHost) {
      return usage(fmt::format("regMr: memory type {} is not supported; this build registers "
                               "host memory only (UCX reports no CUDA support)",
                               type));
    }
    DP_TRY_ASSIGN(auto region, static_cast<Comm*>(comm)->endpoint->registerMemory(data, size));
    *mhandle = new MemoryHandle{std::move(region)};
    return Status::ok();
  });
}

abi::NcclResult regMrDmaBuf(void* comm, void*, std::size_t size, int type, std::uint64_t, int fd,
                            void** mhandle) noexcept {
  return guarded("regMrDmaBuf", [&]() -> Status {
    if (mhandle != nullptr) *mhandle = nullptr;
    (void)comm;
    return Status(StatusCode::unsupported,
                  fmt::format("regMrDmaBuf (type {}, {} bytes, fd {}): dma-buf is not supported "
                              "(ptrSupport does not advertise it)",
                              type, size, fd));
  });
}

abi::NcclResult deregMr(void* comm, void* mhandle) noexcept {
  return guarded("deregMr", [&]() -> Status {
    DP_TRY(checkAnyComm(comm, "deregMr"));
    delete static_cast<MemoryHandle*>(mhandle);
    return Status::ok();
  });
}

// ---------------------------------------------------------------- data path

abi::NcclResult isend(void* send_comm, void* data, std::size_t size, int tag, void* mhandle,
                      void** request) noexcept {
  return guarded("isend", [&]() -> Status {
    DP_TRY(checkComm(send_comm, CommKind::send, "isend"));
    if (request == nullptr) return usage("isend: NULL request");
    *request = nullptr;
    auto* region = mhandle != nullptr ? static_cast<MemoryHandle*>(mhandle)->region.get() : nullptr;
    Result<transport::Request*> posted = static_cast<Comm*>(send_comm)->endpoint->postSend(
        data, size, static_cast<std::uint32_t>(tag), region);
    if (!posted) return std::move(posted).status();  // again → NULL request
    *request = *posted;
    return Status::ok();
  });
}

abi::NcclResult irecv(void* recv_comm, int n, void** data, const void* sizes,
                      std::size_t size_of_size, const int* tags, void**, void** request) noexcept {
  return guarded("irecv", [&]() -> Status {
    DP_TRY(checkComm(recv_comm, CommKind::recv, "irecv"));
    // *request may hold NCCL's 0x1 optional-completion marker: write, never read.
    if (request == nullptr) return usage("irecv: NULL request");
    *request = nullptr;
    if (n < 1 || static_cast<std::size_t>(n) > transport::kMaxRecvsPerRequest || data == nullptr ||
        sizes == nullptr || tags == nullptr) {
      return usage(fmt::format("irecv: n={} (1 to {}), or NULL data/sizes/tags", n,
                               transport::kMaxRecvsPerRequest));
    }
    std::array<transport::RecvSlot, transport::kMaxRecvsPerRequest> slots;
    for (int i = 0; i < n; ++i) {
      std::size_t capacity = 0;
      if (size_of_size == sizeof(int)) {
        int value = 0;
        std::memcpy(&value, static_cast<const char*>(sizes) + i * sizeof(int), sizeof(int));
        if (value < 0) return usage(fmt::format("irecv: sizes[{}] = {} is negative", i, value));
        capacity = static_cast<std::size_t>(value);
      } else {
        std::memcpy(&capacity, static_cast<const char*>(sizes) + i * sizeof(std::size_t),
                    sizeof(std::size_t));
      }
      slots[static_cast<std::size_t>(i)] =
          transport::RecvSlot{data[i], capacity, static_cast<std::uint32_t>(tags[i])};
    }
    Result<transport::Request*> posted = static_cast<Comm*>(recv_comm)->endpoint->postRecv(
        std::span<const transport::RecvSlot>(slots.data(), static_cast<std::size_t>(n)));
    if (!posted) return std::move(posted).status();
    *request = *posted;
    return Status::ok();
  });
}

abi::NcclResult iflush(void* recv_comm, int, void**, int*, void**, void** request) noexcept {
  return guarded("iflush", [&]() -> Status {
    DP_TRY(checkComm(recv_comm, CommKind::recv, "iflush"));
    if (request == nullptr) return usage("iflush: NULL request");
    // Host memory only: received bytes are visible when test() says done.
    *request = nullptr;
    return Status::ok();
  });
}

abi::NcclResult test(void* request, int* done, int* sizes) noexcept {
  return guarded("test", [&]() -> Status {
    if (request == nullptr || done == nullptr) return usage("test: NULL request or done");
    if (reinterpret_cast<std::uintptr_t>(request) == abi::kOptionalRecvCompletion) {
      return usage("test: called on NCCL's 0x1 optional-completion marker");
    }
    std::array<std::size_t, transport::kMaxRecvsPerRequest> received{};
    std::size_t reported = 0;
    bool finished = false;
    Status status = transport::test(static_cast<transport::Request*>(request), &finished,
                                    received, &reported);
    *done = finished ? 1 : 0;
    if (!status.isOk()) return status;
    if (finished && sizes != nullptr) {
      for (std::size_t i = 0; i < reported; ++i) {
        if (received[i] > static_cast<std::size_t>(INT_MAX)) {
          return usage(fmt::format("test: {} bytes do not fit NCCL's int size", received[i]));
        }
        sizes[i] = static_cast<int>(received[i]);
      }
    }
    return Status::ok();
  });
}

// ---------------------------------------------------------------- teardown

abi::NcclResult closeSend(void* send_comm) noexcept {
  return guarded("closeSend", [&]() -> Status {
    DP_TRY(checkComm(send_comm, CommKind::send, "closeSend"));
    auto* comm = static_cast<Comm*>(send_comm);
    comm->magic = 0;
    delete comm;  // the endpoint closes without waiting for the peer
    return Status::ok();
  });
}

abi::NcclResult closeRecv(void* recv_comm) noexcept {
  return guarded("closeRecv", [&]() -> Status {
    DP_TRY(checkComm(recv_comm, CommKind::recv, "closeRecv"));
    auto* comm = static_cast<Comm*>(recv_comm);
    comm->magic = 0;
    delete comm;
    return Status::ok();
  });
}

abi::NcclResult closeListen(void* listen_comm) noexcept {
  return guarded("closeListen", [&]() -> Status {
    if (listen_comm == nullptr) return usage("closeListen: NULL listenComm");
    delete static_cast<ListenComm*>(listen_comm);
    return Status::ok();
  });
}

// ---------------------------------------------------------------- offload and hints

abi::NcclResult getDeviceMr(void*, void*, void** dptr_mhandle) noexcept {
  return guarded("getDeviceMr", [&]() -> Status {
    if (dptr_mhandle != nullptr) *dptr_mhandle = nullptr;  // host plugin: no device handle
    return Status::ok();
  });
}

abi::NcclResult irecvConsumed(void*, int, void*) noexcept {
  return abi::success;  // only device-offload plugins track consumption
}

abi::NcclResult makeVDevice(int* dev, int ndevs, const int* devs) noexcept {
  return guarded("makeVDevice", [&]() -> Status {
    if (dev == nullptr || devs == nullptr) return usage("makeVDevice: NULL argument");
    if (ndevs != 1) {
      return Status(StatusCode::unsupported,
                    fmt::format("makeVDevice: merging {} NICs into one virtual device is not "
                                "supported; unset NCCL_NET_MERGE_LEVEL",
                                ndevs));
    }
    *dev = devs[0];
    return Status::ok();
  });
}

abi::NcclResult setNetAttr(void*, const abi::NetAttrV11* attr) noexcept {
  if (attr != nullptr) {
    DP_LOG_DEBUG("setNetAttr: send peers {}..{}, recv peers {}..{} (hint noted, not used)",
                 attr->sendCommAttr.minConcurrentPeers, attr->sendCommAttr.maxConcurrentPeers,
                 attr->recvCommAttr.minConcurrentPeers, attr->recvCommAttr.maxConcurrentPeers);
  }
  return abi::success;
}

}  // namespace dualpath::plugin
