// The Engine and the public objects over worker state: endpoints, listeners,
// connectors, memory regions.
#include <arpa/inet.h>
#include <endian.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <random>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/common/params.h>
#include <dualpath/qos/policy_loader.h>
#include <dualpath/transport/transport.h>

#include "worker.h"

namespace dualpath::transport {

namespace {

// ---------------------------------------------------------------- memory

class MemoryRegionImpl final : public MemoryRegion {
 public:
  MemoryRegionImpl(std::shared_ptr<Worker> worker, ucp_mem_h memh, void* base, std::size_t length)
      : worker_(std::move(worker)), memh_(memh), base_(base), length_(length) {
    MutexLock lock(worker_->mu);
    worker_->addRegion(base_, length_);
  }
  ~MemoryRegionImpl() override {
    {
      MutexLock lock(worker_->mu);
      worker_->removeRegion(base_, length_);
    }
    if (ucs_status_t s = ucp_mem_unmap(worker_->context(), memh_); s != UCS_OK) {
      DP_LOG_WARN("transport: deregistering {} bytes at {}: {}", length_, base_,
                  ucs_status_string(s));
    }
  }
  void* base() const noexcept override { return base_; }
  std::size_t length() const noexcept override { return length_; }
  Result<std::vector<std::byte>> packRemoteKey() const override {
    void* buffer = nullptr;
    std::size_t size = 0;
    if (ucs_status_t s = ucp_rkey_pack(worker_->context(), memh_, &buffer, &size); s != UCS_OK) {
      return fromUcs(s, "packing a remote key");
    }
    std::vector<std::byte> packed(static_cast<std::byte*>(buffer),
                                  static_cast<std::byte*>(buffer) + size);
    ucp_rkey_buffer_release(buffer);
    return packed;
  }

 private:
  std::shared_ptr<Worker> worker_;
  ucp_mem_h memh_;
  void* base_;
  std::size_t length_;
};

class RemoteRegionImpl final : public RemoteRegion {
 public:
  RemoteRegionImpl(std::shared_ptr<Worker> worker, ucp_rkey_h rkey, std::uint64_t base,
                   std::size_t length)
      : worker_(std::move(worker)), rkey_(rkey), base_(base), length_(length) {}
  ~RemoteRegionImpl() override {
    MutexLock lock(worker_->mu);
    ucp_rkey_destroy(rkey_);
  }
  std::uint64_t base() const noexcept override { return base_; }
  std::size_t length() const noexcept override { return length_; }
  ucp_rkey_h rkey() const noexcept { return rkey_; }
  const Worker* worker() const noexcept { return worker_.get(); }

 private:
  std::shared_ptr<Worker> worker_;
  ucp_rkey_h rkey_;
  std::uint64_t base_;
  std::size_t length_;
};

// ---------------------------------------------------------------- endpoint

class EndpointImpl final : public Endpoint {
 public:
  EndpointImpl(std::shared_ptr<Worker> worker, Connection* connection)
      : worker_(std::move(worker)), connection_(connection), peer_(connection->peer) {}
  ~EndpointImpl() override {
    MutexLock lock(worker_->mu);
    worker_->retire(connection_);
    worker_->progress();
  }

  Result<Request*> postSend(const void* data, std::size_t size, std::uint32_t tag,
                            const MemoryRegion*) noexcept override {
    if (data == nullptr && size != 0) {
      return Status(StatusCode::invalid_argument, "send of a null buffer");
    }
    MutexLock lock(worker_->mu);
    DP_TRY_ASSIGN(Request * r, acquire(RequestKind::send));
    Result<std::uint32_t> seq = connection_->send_sequences.next(tag);
    if (!seq) {
      worker_->finishRequest(*r);
      return std::move(seq).status();
    }
    r->data = static_cast<const char*>(data);
    r->size = size;
    r->tag_bits = tagbits::make(connection_->remote_id, tag, *seq);
    const std::size_t chunk = worker_->arbiter().maxPostBytes(worker_->classIndex());
    r->chunks_total = size / chunk + 1;
    Result<Request*> posted = startPosting(r);
    // Not posted at all: the retry must carry this same sequence number, or
    // it would match the receive after the one it belongs to.
    if (!posted && posted.status().code() == StatusCode::again) {
      connection_->send_sequences.giveBack(tag);
    }
    return posted;
  }

  Result<Request*> postRecv(std::span<const RecvSlot> slots) noexcept override {
    if (slots.empty() || slots.size() > kMaxRecvsPerRequest) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("grouped receive of {} buffers; 1 to {} are supported",
                                slots.size(), kMaxRecvsPerRequest));
    }
    MutexLock lock(worker_->mu);
    DP_TRY_ASSIGN(Request * r, acquire(RequestKind::recv));
    r->slot_count = static_cast<std::uint8_t>(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) {
      Result<std::uint32_t> seq = connection_->recv_sequences.next(slots[i].tag);
      if (!seq) {
        // Sequences already taken stay taken: the connection is unusable for
        // exact matching now, so fail it rather than mis-deliver later.
        worker_->fail(*connection_, seq.status());
        worker_->finishRequest(*r);
        return std::move(seq).status();
      }
      r->slots[i] = RecvState{static_cast<char*>(slots[i].data), slots[i].capacity, 0,
                              tagbits::make(connection_->local_id, slots[i].tag, *seq)};
    }
    for (std::uint8_t i = 0; i < r->slot_count; ++i) worker_->postRecvSlot(*r, i);
    return r;
  }

  Result<Request*> postPut(const void* local, std::size_t size, const MemoryRegion*,
                           const RemoteRegion& remote, std::size_t remote_offset) noexcept override {
    const auto& region = static_cast<const RemoteRegionImpl&>(remote);
    if (region.worker() != worker_.get()) {
      return Status(StatusCode::invalid_usage,
                    "remote region was imported on another connection's worker");
    }
    if (remote_offset > region.length() || size > region.length() - remote_offset) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("put of {} bytes at offset {} overruns the {}-byte remote region "
                                "of peer {}",
                                size, remote_offset, region.length(), peer_));
    }
    if (size == 0) return Status(StatusCode::invalid_argument, "put of zero bytes");
    MutexLock lock(worker_->mu);
    DP_TRY_ASSIGN(Request * r, acquire(RequestKind::put));
    r->data = static_cast<const char*>(local);
    r->size = size;
    r->rkey = region.rkey();
    const std::size_t chunk = worker_->arbiter().maxPostBytes(worker_->classIndex());
    r->chunks_total = size / chunk + (size % chunk != 0 ? 1 : 0);
    r->remote_addr = region.base() + remote_offset;
    return startPosting(r);
  }

  Result<std::unique_ptr<MemoryRegion>> registerMemory(void* data, std::size_t size) override {
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = data;
    params.length = size;
    params.memory_type = UCS_MEMORY_TYPE_HOST;
    ucp_mem_h memh = nullptr;
    if (ucs_status_t s = ucp_mem_map(worker_->context(), &params, &memh); s != UCS_OK) {
      return fromUcs(s, fmt::format("registering {} bytes at {}", size, data));
    }
    return std::unique_ptr<MemoryRegion>(new MemoryRegionImpl(worker_, memh, data, size));
  }

  Result<std::unique_ptr<RemoteRegion>> importRemote(std::span<const std::byte> packed_key,
                                                     std::uint64_t remote_base,
                                                     std::size_t length) override {
    MutexLock lock(worker_->mu);
    if (connection_->dataEp() == nullptr || !connection_->failure.isOk()) {
      return connection_->failure.isOk()
                 ? Status(StatusCode::remote, fmt::format("connection to {} is closed", peer_))
                 : connection_->failure;
    }
    ucp_rkey_h rkey = nullptr;
    if (ucs_status_t s = ucp_ep_rkey_unpack(connection_->dataEp(), packed_key.data(), &rkey);
        s != UCS_OK) {
      return fromUcs(s, fmt::format("unpacking the remote key of peer {}", peer_));
    }
    return std::unique_ptr<RemoteRegion>(new RemoteRegionImpl(worker_, rkey, remote_base, length));
  }

  std::uint8_t classIndex() const noexcept override { return worker_->classIndex(); }
  const std::string& peerName() const noexcept override { return peer_; }
  std::vector<std::string> lanes() const override {
    MutexLock lock(worker_->mu);
    return worker_->lanes(*connection_);
  }

 private:
  Result<Request*> acquire(RequestKind kind) DP_REQUIRES(worker_->mu) {
    return worker_->acquireRequest(*connection_, kind);
  }

  // Posts what the arbiter grants now. If not even the first chunk may go,
  // the request is returned to the pool and the caller retries (`again`).
  Result<Request*> startPosting(Request* r) DP_REQUIRES(worker_->mu) {
    connection_->pending_posts.push_back(r);
    worker_->pumpPosts(*connection_, qos::monotonicNowNs());
    if (r->chunks_posted == 0 && r->failure.isOk()) {
      std::erase(connection_->pending_posts, r);
      worker_->finishRequest(*r);
      return Status(StatusCode::again);
    }
    if (!r->failure.isOk() && r->inflight == 0) {
      Status failure = r->failure;
      worker_->finishRequest(*r);
      return failure;
    }
    return r;
  }

  std::shared_ptr<Worker> worker_;
  Connection* connection_;
  std::string peer_;
};

// ---------------------------------------------------------------- listen/connect

class ListenerImpl final : public Listener {
 public:
  struct PerClass {
    std::shared_ptr<Worker> worker;
    ListenerState* state = nullptr;
  };
  explicit ListenerImpl(std::vector<PerClass> classes) : classes_(std::move(classes)) {}
  ~ListenerImpl() override {
    for (PerClass& c : classes_) {
      MutexLock lock(c.worker->mu);
      c.worker->destroyListener(c.state);
    }
  }

  Result<std::unique_ptr<Endpoint>> tryAccept() noexcept override {
    for (PerClass& c : classes_) {
      MutexLock lock(c.worker->mu);
      c.worker->progress();
      // Hand out a connection once our welcome has left: the peer's connect
      // must not depend on us progressing again after accept returns.
      auto welcomed = std::find_if(c.state->ready.begin(), c.state->ready.end(),
                                   [](const Connection* r) { return r->handshake_request == nullptr; });
      if (welcomed == c.state->ready.end()) continue;
      Connection* connection = *welcomed;
      c.state->ready.erase(welcomed);
      return std::unique_ptr<Endpoint>(new EndpointImpl(c.worker, connection));
    }
    return Status(StatusCode::again);
  }

 private:
  std::vector<PerClass> classes_;
};

class ConnectorImpl final : public Connector {
 public:
  ConnectorImpl(std::shared_ptr<Worker> worker, ConnectState* state)
      : worker_(std::move(worker)), state_(state) {}
  ~ConnectorImpl() override {
    if (state_ == nullptr) return;
    MutexLock lock(worker_->mu);
    worker_->abandonConnect(state_);
  }

  Result<std::unique_ptr<Endpoint>> poll() noexcept override {
    if (state_ == nullptr) {
      return Status(StatusCode::invalid_usage, "connector polled after it finished");
    }
    MutexLock lock(worker_->mu);
    worker_->progress();
    // Welcomed means connected, even if the peer has gone since: the
    // endpoint's first operation then reports that.
    if (!state_->welcomed) {
      if (state_->failure.isOk()) return Status(StatusCode::again);
      Status failure = state_->failure;
      worker_->abandonConnect(state_);
      state_ = nullptr;
      return failure;
    }
    Connection* connection = state_->connection;
    state_->connection = nullptr;
    worker_->abandonConnect(state_);
    state_ = nullptr;
    return std::unique_ptr<Endpoint>(new EndpointImpl(worker_, connection));
  }

 private:
  std::shared_ptr<Worker> worker_;
  ConnectState* state_;
};

// ---------------------------------------------------------------- engine

class EngineImpl final : public Engine {
 public:
  EngineImpl(EngineConfig config, std::vector<DeviceInfo> devices)
      : config_(std::move(config)), devices_(std::move(devices)) {}

  Status init() {
    // workerId() gives the device index 8 bits.
    if (devices_.size() > 256) {
      return Status(StatusCode::unsupported,
                    fmt::format("{} devices selected; at most 256 are supported (narrow them "
                                "with DUALPATH_NET_DEVICES)",
                                devices_.size()));
    }
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      DP_TRY_ASSIGN(auto arbiter,
                    qos::LinkArbiter::create(qos::ArbiterConfig::fromPolicy(config_.policy)));
      arbiters_.push_back(std::shared_ptr<qos::LinkArbiter>(std::move(arbiter)));
    }
    return Status::ok();
  }

  const std::vector<DeviceInfo>& devices() const noexcept override { return devices_; }
  const qos::Policy& policy() const noexcept override { return config_.policy; }
  const EngineConfig& config() const noexcept override { return config_; }

  Result<std::unique_ptr<Listener>> listen(std::size_t device, std::uint8_t class_index,
                                           ConnectHandle* handle) override {
    DP_TRY(checkDevice(device));
    if (class_index != kAnyClass) DP_TRY(checkClass(class_index));
    std::memset(handle, 0, sizeof(*handle));
    handle->magic = htobe32(kConnectHandleMagic);
    handle->version = htobe16(kConnectHandleVersion);
    handle->class_index = class_index;
    handle->policy_digest = htobe64(policyDigest(config_.policy));
    handle->engine_id = htobe64(engine_id_);
    handle->device_index = static_cast<std::uint8_t>(device);
    const DeviceInfo& info = devices_[device];
    const bool v6 = info.ip.find(':') != std::string::npos;
    handle->family = v6 ? AF_INET6 : AF_INET;
    if (inet_pton(v6 ? AF_INET6 : AF_INET, info.ip.c_str(), handle->address.data()) != 1) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("device {} has no usable address ('{}')", info.name, info.ip));
    }
    std::vector<ListenerImpl::PerClass> per_class;
    std::uint64_t listener_id = 0;
    const std::size_t first = class_index == kAnyClass ? 0 : class_index;
    const std::size_t last = class_index == kAnyClass ? config_.policy.classes.size() : first + 1;
    for (std::size_t cls = first; cls < last; ++cls) {
      DP_TRY_ASSIGN(std::shared_ptr<Worker> worker, workerFor(device, static_cast<std::uint8_t>(cls)));
      MutexLock lock(worker->mu);
      std::uint16_t port = 0;
      Result<ListenerState*> state = worker->createListener(&port);
      if (!state) {
        for (auto& made : per_class) {
          MutexLock other(made.worker->mu);
          made.worker->destroyListener(made.state);
        }
        return std::move(state).status();
      }
      // One id for the whole handle: the hello must match any class's listener.
      if (listener_id == 0) listener_id = (*state)->listener_id;
      (*state)->listener_id = listener_id;
      handle->ports[cls] = htobe16(port);
      per_class.push_back({worker, *state});
    }
    handle->listener_id = htobe64(listener_id);
    return std::unique_ptr<Listener>(new ListenerImpl(std::move(per_class)));
  }

  Result<std::unique_ptr<Connector>> connect(std::size_t device, const ConnectHandle& handle,
                                             std::uint8_t class_index) override {
    DP_TRY(checkDevice(device));
    if (be32toh(handle.magic) != kConnectHandleMagic) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("connect handle has magic {:#x}, expected {:#x}: not a DualPath "
                                "handle",
                                be32toh(handle.magic), kConnectHandleMagic));
    }
    if (be16toh(handle.version) != kConnectHandleVersion) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("connect handle version {}, this library speaks {}",
                                be16toh(handle.version), kConnectHandleVersion));
    }
    if (be64toh(handle.policy_digest) != policyDigest(config_.policy)) {
      return Status(StatusCode::invalid_argument,
                    "the peer's QoS class table differs from ours: both ends must load the same "
                    "policy (DUALPATH_QOS_POLICY)");
    }
    std::uint8_t cls = class_index == kAnyClass ? handle.class_index : class_index;
    if (cls == kAnyClass) cls = static_cast<std::uint8_t>(config_.policy.indexOf(config_.policy.defaultClass()));
    DP_TRY(checkClass(cls));
    if (handle.class_index != kAnyClass && handle.class_index != cls) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("the listener serves class '{}' but class '{}' was requested",
                                className(handle.class_index), className(cls)));
    }
    const std::uint16_t port = be16toh(handle.ports[cls]);
    if (port == 0 || (handle.family != AF_INET && handle.family != AF_INET6)) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("connect handle has no listener for class '{}'", className(cls)));
    }
    DP_TRY_ASSIGN(std::shared_ptr<Worker> worker, workerFor(device, cls));
    MutexLock lock(worker->mu);
    const std::uint64_t peer_worker = workerId(be64toh(handle.engine_id), handle.device_index, cls);
    DP_TRY_ASSIGN(ConnectState * state, worker->startConnect(handle, port, peer_worker));
    return std::unique_ptr<Connector>(new ConnectorImpl(worker, state));
  }

  qos::LinkArbiter& arbiter(std::size_t device) override { return *arbiters_.at(device); }

  TransportCounters counters() const override {
    TransportCounters counters;
    {
      MutexLock lock(*counters_mu_);
      counters = *counters_;
    }
    std::lock_guard lock(workers_mu_);
    for (const auto& [key, worker] : workers_) counters.reply_route_sends += worker->replyRouteSends();
    return counters;
  }

 private:
  Status checkDevice(std::size_t device) const {
    if (device < devices_.size()) return Status::ok();
    return Status(StatusCode::invalid_argument,
                  fmt::format("device {} does not exist: {} device(s)", device, devices_.size()));
  }
  Status checkClass(std::size_t cls) const {
    if (cls < config_.policy.classes.size()) return Status::ok();
    return Status(StatusCode::invalid_argument,
                  fmt::format("traffic class index {} does not exist in policy {} ({} classes)",
                              cls, config_.policy.source_name, config_.policy.classes.size()));
  }
  std::string className(std::size_t cls) const {
    return cls < config_.policy.classes.size() ? config_.policy.classes[cls].name
                                               : fmt::format("#{}", cls);
  }

  Result<std::shared_ptr<Worker>> workerFor(std::size_t device, std::uint8_t cls) {
    std::lock_guard lock(workers_mu_);
    auto key = std::pair{device, cls};
    if (auto it = workers_.find(key); it != workers_.end()) return it->second;
    DP_TRY_ASSIGN(std::shared_ptr<Worker> worker,
                  Worker::create(workerId(engine_id_, static_cast<std::uint8_t>(device), cls),
                                 devices_[device], config_.policy, cls, config_,
                                 arbiters_[device], counters_, counters_mu_));
    workers_.emplace(key, worker);
    return worker;
  }

  static std::uint64_t randomEngineId() {
    std::random_device random;
    std::uint64_t id = 0;
    while ((id & ~std::uint64_t{0xffff}) == 0) id = (std::uint64_t{random()} << 32) ^ random();
    return id;
  }

  const EngineConfig config_;
  const std::vector<DeviceInfo> devices_;
  const std::uint64_t engine_id_ = randomEngineId();  // workerId()'s high bits
  std::vector<std::shared_ptr<qos::LinkArbiter>> arbiters_;
  std::shared_ptr<TransportCounters> counters_ = std::make_shared<TransportCounters>();
  std::shared_ptr<Mutex> counters_mu_ = std::make_shared<Mutex>();
  mutable std::mutex workers_mu_;
  std::map<std::pair<std::size_t, std::uint8_t>, std::shared_ptr<Worker>> workers_;
};

}  // namespace

Result<std::shared_ptr<Engine>> Engine::create(EngineConfig config) {
  DP_TRY_ASSIGN(std::vector<DeviceInfo> all, queryUcxDevices());
  DP_TRY_ASSIGN(std::vector<DeviceInfo> chosen, selectDevices(std::move(all), config.devices));
  auto engine = std::make_shared<EngineImpl>(std::move(config), std::move(chosen));
  DP_TRY(engine->init());
  for (const DeviceInfo& d : engine->devices()) {
    DP_LOG_INFO("transport: device {} ({}, {} Mb/s, {}, PCI {})", d.name, deviceKindName(d.kind),
                d.speed_mbps, d.ip, d.pci_path.empty() ? "none" : d.pci_path);
  }
  return std::shared_ptr<Engine>(std::move(engine));
}

Result<std::shared_ptr<Engine>> Engine::shared() {
  static std::mutex mu;
  static std::weak_ptr<Engine> current;
  std::lock_guard lock(mu);
  if (std::shared_ptr<Engine> alive = current.lock()) return alive;
  DP_TRY_ASSIGN(const params::Snapshot* snapshot, params::global());
  DP_TRY_ASSIGN(qos::Policy policy, qos::loadPolicyOrError(snapshot->qos_policy, false));
  EngineConfig config{std::move(policy),
                      DeviceFilter{snapshot->net_devices, snapshot->net_devices_exclude},
                      snapshot->net_timeout_ms, snapshot->net_require_rdma};
  DP_TRY_ASSIGN(std::shared_ptr<Engine> engine, Engine::create(std::move(config)));
  current = engine;
  return engine;
}

Status test(Request* request, bool* done, std::span<std::size_t> sizes,
            std::size_t* reported) noexcept {
  *done = false;
  if (reported != nullptr) *reported = 0;
  if (request == nullptr || request->connection == nullptr) {
    return Status(StatusCode::invalid_usage, "test() of a null request");
  }
  Worker& worker = *request->connection->worker;
  MutexLock lock(worker.mu);
  if (!request->in_use) {
    return Status(StatusCode::invalid_usage, "test() of a request that is not in flight");
  }
  // Progress only when the answer is not already known.
  if (!request->finished()) {
    worker.progress();
    if (!request->finished()) return Status::ok();
  }
  *done = true;
  Status failure = request->failure;
  if (failure.isOk() && !sizes.empty()) {
    if (request->kind == RequestKind::recv) {
      std::size_t i = 0;
      for (; i < request->slot_count && i < sizes.size(); ++i) {
        sizes[i] = request->slots[i].received;
      }
      if (reported != nullptr) *reported = i;
    } else {
      sizes[0] = request->size;
      if (reported != nullptr) *reported = 1;
    }
  }
  worker.finishRequest(*request);
  return failure;
}

std::uint64_t policyDigest(const qos::Policy& policy) noexcept {
  // FNV-1a over what both ends must agree on: class order, names, priorities.
  std::uint64_t hash = 0xcbf29ce484222325ull;
  auto mix = [&](std::string_view bytes) {
    for (char ch : bytes) {
      hash ^= static_cast<unsigned char>(ch);
      hash *= 0x100000001b3ull;
    }
  };
  for (const qos::TrafficClass& cls : policy.classes) {
    mix(cls.name);
    mix(qos::priorityName(cls.priority));
    mix("\n");
  }
  return hash;
}

}  // namespace dualpath::transport
