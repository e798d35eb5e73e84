#include "worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

#include <endian.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <dualpath/common/log.h>

namespace dualpath::transport {

namespace {

constexpr unsigned kAmHello = 0x44;
constexpr unsigned kAmWelcome = 0x45;
constexpr unsigned kAmPut = 0x46;       // a put chunk (amput)
constexpr unsigned kAmPutFence = 0x47;  // after a put's chunks: acknowledge once landed
constexpr unsigned kAmPutAck = 0x48;    // the fence's answer
constexpr std::uint32_t kWireMagic = 0x44504833;  // "DPH3"
constexpr std::size_t kChunkPoolSize = 1024;
constexpr std::size_t kRequestPoolSize = kMaxRequestsPerEndpoint * (1 + kMaxRecvsPerRequest);
constexpr qos::TimeNs kTimeoutScanPeriodNs = 1'000'000;
// How often an idle control worker is progressed, in progress() calls: it
// then only has handshakes, closes and peer failures to notice, which can
// wait a few microseconds.
constexpr std::uint32_t kControlProgressStride = 64;
// Larger messages keep their own connection: a reply route is one TCP
// stream, and bulk transfers want their sockets in parallel.
constexpr std::size_t kReplyRouteMaxBytes = 64 * 1024;

// Hello (client → server) and welcome (server → client), as AM headers.
struct HelloWire {
  std::uint32_t magic;
  std::uint32_t client_endpoint_id;  // the id the server puts in its tags
  std::uint64_t listener_id;
  std::uint64_t policy_digest;
  std::uint64_t chunk_bytes;  // the sender's chunk for this class; max = unchunked
  std::uint64_t client_worker;       // workerId() of the client
  std::uint32_t route_endpoint_id;   // the client's reply route to this worker, or 0
  std::uint8_t class_index;
  std::uint8_t data_worker;  // the client has one: the server may choose data endpoints
  std::uint8_t pad[2];
};
struct WelcomeWire {
  std::uint32_t magic;
  std::uint32_t client_endpoint_id;
  std::uint32_t server_endpoint_id;
  std::int32_t refusal;  // 0, or a StatusCode with the reason in `reason`
  std::uint64_t chunk_bytes;
  std::uint8_t data_worker;  // both ends send over data endpoints (Connection::on_data_worker)
  char reason[39];
};
static_assert(sizeof(HelloWire) <= sizeof(Connection::hello));
static_assert(sizeof(WelcomeWire) <= sizeof(Connection::welcome));

std::string sockaddrToString(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {};
  std::uint16_t port = 0;
  if (address.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &in.sin_addr, text, sizeof(text));
    port = ntohs(in.sin_port);
    return fmt::format("{}:{}", text, port);
  }
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof(text));
    port = ntohs(in6.sin6_port);
    return fmt::format("[{}]:{}", text, port);
  }
  return "<unknown address>";
}

void sendCompleted(void* request, ucs_status_t status, void* user_data);
void recvCompleted(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                   void* user_data);
void flushCompleted(void* request, ucs_status_t status, void* user_data);
void fenceSent(void* request, ucs_status_t status, void* user_data);
void ackSent(void* request, ucs_status_t status, void* user_data);
void handshakeSent(void* request, ucs_status_t status, void* user_data);
void closeCompleted(void* request, ucs_status_t status, void* user_data);

Worker* workerOf(void* arg) {
  return static_cast<Worker*>(arg);
}

void epErrorTrampoline(void* arg, ucp_ep_h ep, ucs_status_t status) {
  Worker* worker = workerOf(arg);
  worker->mu.assertHeld();
  worker->onEpError(ep, status);
}

void connRequestTrampoline(ucp_conn_request_h request, void* arg) {
  auto* listener = static_cast<ListenerState*>(arg);
  listener->worker->mu.assertHeld();
  listener->worker->onConnRequest(listener, request);
}

// Handshake payloads are small and sent eagerly, so `data` is valid during
// the callback (UCP_AM_RECV_ATTR_FLAG_RNDV is never set for them).
ucs_status_t helloTrampoline(void* arg, const void* header, size_t header_length, void* data,
                             size_t length, const ucp_am_recv_param_t* param) {
  Worker* worker = workerOf(arg);
  worker->mu.assertHeld();
  ucp_ep_h reply = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
  return worker->onHello(header, header_length,
                         std::span(static_cast<const std::byte*>(data), length), reply);
}

ucs_status_t welcomeTrampoline(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t*) {
  Worker* worker = workerOf(arg);
  worker->mu.assertHeld();
  return worker->onWelcome(header, header_length,
                           std::span(static_cast<const std::byte*>(data), length));
}

ucs_status_t putTrampoline(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param) {
  Worker* worker = workerOf(arg);
  worker->mu.assertHeld();
  return worker->onPutData(header, header_length, data, length, param);
}

ucs_status_t putFenceTrampoline(void* arg, const void* header, size_t header_length, void*,
                                size_t, const ucp_am_recv_param_t*) {
  Worker* worker = workerOf(arg);
  worker->mu.assertHeld();
  return worker->onPutFence(header, header_length);
}

ucs_status_t putAckTrampoline(void* arg, const void* header, size_t header_length, void*, size_t,
                              const ucp_am_recv_param_t*) {
  Worker* worker = workerOf(arg);
  worker->mu.assertHeld();
  return worker->onPutAck(header, header_length);
}

void putLe(std::byte* out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<std::byte>((value >> (8 * i)) & 0xff);
}
std::uint64_t getLe(const std::byte* in, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= std::uint64_t{std::to_integer<std::uint8_t>(in[i])} << (8 * i);
  return value;
}

struct UcpConfigDeleter {
  void operator()(ucp_config_t* config) const { ucp_config_release(config); }
};

}  // namespace

Status fromUcs(ucs_status_t status, std::string_view what) {
  StatusCode code = StatusCode::io;
  switch (status) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_CANCELED:
      code = StatusCode::remote;
      break;
    case UCS_ERR_TIMED_OUT:
      code = StatusCode::timeout;
      break;
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_BUSY:
      code = StatusCode::again;
      break;
    case UCS_ERR_MESSAGE_TRUNCATED:
      code = StatusCode::invalid_usage;
      break;
    case UCS_ERR_INVALID_PARAM:
      code = StatusCode::invalid_argument;
      break;
    case UCS_ERR_UNSUPPORTED:
      code = StatusCode::unsupported;
      break;
    default:
      break;
  }
  return Status(code, fmt::format("{}: {}", what, ucs_status_string(status)));
}

void TagSequences::giveBack(std::uint32_t tag) noexcept {
  for (std::size_t i = 0; i < used_; ++i) {
    if (entries_[i].tag == tag) {
      --entries_[i].next;
      return;
    }
  }
}

Result<std::uint32_t> TagSequences::next(std::uint32_t tag) noexcept {
  for (std::size_t i = 0; i < used_; ++i) {
    if (entries_[i].tag == tag) return entries_[i].next++;
  }
  if (used_ == kMaxTags) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("tag {} would be the {}th distinct tag on this connection; at most "
                              "{} are supported",
                              tag, kMaxTags + 1, kMaxTags));
  }
  entries_[used_] = Entry{tag, 1};
  ++used_;
  return 0;
}

bool Request::finished() const {
  // A failed request is reported at once; if UCX still holds parts of it,
  // finishRequest() keeps it out of the pool until the worker ends.
  if (!failure.isOk()) return true;
  switch (kind) {
    case RequestKind::send:
      return chunks_posted == chunks_total && inflight == 0;
    case RequestKind::put:
      return flushed;
    case RequestKind::recv:
      return std::all_of(slots.begin(), slots.begin() + slot_count,
                         [](const RecvState& s) { return s.done; });
  }
  return false;
}

Worker::Worker(std::uint64_t worker_id, DeviceInfo device, std::uint8_t class_index,
               EngineConfig config, std::shared_ptr<qos::LinkArbiter> arbiter,
               std::shared_ptr<TransportCounters> counters, std::shared_ptr<Mutex> counters_mu)
    : worker_id_(worker_id),
      device_(std::move(device)),
      class_index_(class_index),
      config_(std::move(config)),
      arbiter_(std::move(arbiter)),
      counters_(std::move(counters)),
      counters_mu_(std::move(counters_mu)) {}

Result<std::shared_ptr<Worker>> Worker::create(std::uint64_t worker_id,
                                               const DeviceInfo& device,
                                               const qos::Policy& policy,
                                               std::uint8_t class_index,
                                               const EngineConfig& config,
                                               std::shared_ptr<qos::LinkArbiter> arbiter,
                                               std::shared_ptr<TransportCounters> counters,
                                               std::shared_ptr<Mutex> counters_mu) {
  std::shared_ptr<Worker> worker(new Worker(worker_id, device, class_index, config,
                                            std::move(arbiter), std::move(counters),
                                            std::move(counters_mu)));
  DP_TRY(worker->init(policy));
  return worker;
}

Status Worker::init(const qos::Policy& policy) {
  const qos::TrafficClass& cls = policy.classes.at(class_index_);
  policy_digest_ = transport::policyDigest(policy);
  std::string what = fmt::format("UCX context for device {} class '{}'", device_.name, cls.name);

  ucp_config_t* raw_config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &raw_config); s != UCS_OK) {
    return fromUcs(s, what + ": ucp_config_read");
  }
  std::unique_ptr<ucp_config_t, UcpConfigDeleter> ucp_config(raw_config);

  // The context serves exactly this NIC; shared memory and loopback
  // transports stay available for peers on the same host.
  std::vector<qos::UcxSetting> settings{{"NET_DEVICES", device_.name}};
  for (qos::UcxSetting& s : qos::ucxSettingsFor(policy, cls, device_.kind == DeviceKind::rdma)) {
    settings.push_back(std::move(s));
  }
  // UCX's keepalive finds a silent peer; make it report within our bound.
  settings.push_back({"KEEPALIVE_INTERVAL", fmt::format("{}ms", std::max(1u, config_.timeout_ms / 3))});
  for (const qos::UcxSetting& s : settings) {
    if (ucs_status_t st = ucp_config_modify(ucp_config.get(), s.name.c_str(), s.value.c_str());
        st != UCS_OK) {
      return fromUcs(st, fmt::format("{}: setting {}={} (from policy {})", what, s.name, s.value,
                                     policy.source_name));
    }
    DP_LOG_DEBUG("{}: {}={}", what, s.name, s.value);
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED |
                      UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_AM;
  params.mt_workers_shared = 1;
  std::string name = fmt::format("dualpath-{}-{}", device_.name, cls.name);
  params.name = name.c_str();
  if (ucs_status_t s = ucp_init(&params, ucp_config.get(), &context_); s != UCS_OK) {
    return fromUcs(s, what + ": ucp_init");
  }
  const std::vector<std::string> resources = resourcesOf(context_);
  context_has_shared_memory_ = std::any_of(resources.begin(), resources.end(), isSharedMemoryLane);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_MULTI;
  if (ucs_status_t s = ucp_worker_create(context_, &worker_params, &worker_); s != UCS_OK) {
    return fromUcs(s, what + ": ucp_worker_create");
  }
  if (context_has_shared_memory_) {
    if (ucs_status_t s = ucp_worker_create(context_, &worker_params, &data_worker_);
        s != UCS_OK) {
      return fromUcs(s, what + ": ucp_worker_create (data)");
    }
  }
  ucp_worker_h addressed = data_worker_ != nullptr ? data_worker_ : worker_;

  ucp_address_t* address = nullptr;
  std::size_t address_length = 0;
  if (ucs_status_t s = ucp_worker_get_address(addressed, &address, &address_length);
      s != UCS_OK) {
    return fromUcs(s, what + ": ucp_worker_get_address");
  }
  address_.assign(reinterpret_cast<const std::byte*>(address),
                  reinterpret_cast<const std::byte*>(address) + address_length);
  ucp_worker_release_address(addressed, address);

  // Every handler on both workers: puts and their acknowledgements travel
  // wherever the connection's data does.
  for (ucp_worker_h worker : {worker_, data_worker_}) {
    if (worker == nullptr) continue;
    DP_TRY(registerAmHandlers(worker, what));
  }
  DP_LOG_INFO("transport: {} ready", what);
  return Status::ok();
}

Status Worker::registerAmHandlers(ucp_worker_h worker, const std::string& what) {
  for (auto [id, callback] : {std::pair{kAmHello, &helloTrampoline},
                              std::pair{kAmWelcome, &welcomeTrampoline},
                              std::pair{kAmPut, &putTrampoline},
                              std::pair{kAmPutFence, &putFenceTrampoline},
                              std::pair{kAmPutAck, &putAckTrampoline}}) {
    ucp_am_handler_param_t handler{};
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                         UCP_AM_HANDLER_PARAM_FIELD_ARG;
    handler.id = id;
    handler.cb = callback;
    handler.arg = this;
    if (ucs_status_t s = ucp_worker_set_am_recv_handler(worker, &handler); s != UCS_OK) {
      return fromUcs(s, what + ": registering the active-message handlers");
    }
  }
  return Status::ok();
}

Worker::~Worker() {
  MutexLock lock(mu);
  for (auto& listener : listeners_) {
    if (listener->listener != nullptr) ucp_listener_destroy(listener->listener);
  }
  // Close every endpoint, then give UCX a short, bounded time to finish what
  // points into our pools. A flushing close needs the peer to progress its
  // worker, which a peer that has finished may never do again.
  peers_.clear();
  for (auto& [id, connection] : connections_) {
    if (!connection->retired || connection->parked) ++retired_count_;
    connection->retired = true;
    connection->parked = false;
    closeEp(*connection, /*force=*/true);
  }
  const qos::TimeNs deadline =
      qos::monotonicNowNs() +
      static_cast<qos::TimeNs>(std::min<std::uint32_t>(config_.timeout_ms, 1'000)) * 1'000'000;
  while (!connections_.empty() && qos::monotonicNowNs() < deadline) {
    ucp_worker_progress(worker_);
    if (data_worker_ != nullptr) ucp_worker_progress(data_worker_);
    reapRetired();
  }
  if (!connections_.empty()) {
    DP_LOG_INFO("transport: {} connection(s) on {} still closing; destroying the worker "
                "releases them",
                connections_.size(), device_.name);
  }
  // Hand UCX back every request it still holds (no callback runs for a
  // released request; UCX asserts on destroying an endpoint with one it
  // still owns), then destroy the worker; only then can our memory go.
  for (auto& [id, connection] : connections_) {
    for (ChunkContext& chunk : connection->chunk_pool) {
      if (chunk.ucx != nullptr) ucp_request_free(chunk.ucx);
      chunk.ucx = nullptr;
    }
    for (CloseSlot& slot : connection->close_slots) {
      if (slot.request != nullptr) ucp_request_free(slot.request);
      slot.request = nullptr;
    }
    if (connection->handshake_request != nullptr) ucp_request_free(connection->handshake_request);
    connection->handshake_request = nullptr;
  }
  if (data_worker_ != nullptr) ucp_worker_destroy(data_worker_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  connections_.clear();
  if (context_ != nullptr) ucp_cleanup(context_);
}

void Worker::bumpCounter(std::uint64_t TransportCounters::*counter) {
  MutexLock lock(*counters_mu_);
  ++((*counters_).*counter);
}

// ---------------------------------------------------------------- progress

void Worker::progress() {
  // Once per call: on tcp every call is an epoll_wait, and callers (NCCL's
  // test() loop) call again anyway.
  if (data_worker_ == nullptr) {
    ucp_worker_progress(worker_);
  } else {
    ucp_worker_progress(data_worker_);
    if (control_data_connections_ > 0 || ++control_progress_skipped_ >= kControlProgressStride) {
      control_progress_skipped_ = 0;
      ucp_worker_progress(worker_);
    }
  }
  const qos::TimeNs now = qos::monotonicNowNs();
  // Receives whose middle chunk arrived: post the rest of the buffer. The
  // list is swapped out first because posting may complete more chunks.
  if (!reposts_.empty()) {
    reposting_.swap(reposts_);
    for (auto [request, slot] : reposting_) {
      if (request->slots[slot].repost && request->connection->failure.isOk()) {
        postRecvSlot(*request, slot);
      }
    }
    reposting_.clear();
  }
  for (auto& [id, connection] : connections_) {
    if (!connection->pending_posts.empty()) pumpPosts(*connection, now);
    if (!connection->pending_acks.empty()) pumpAcks(*connection);
  }
  if (now - last_timeout_scan_ns_ > kTimeoutScanPeriodNs) {
    last_timeout_scan_ns_ = now;
    checkTimeouts(now);
  }
  reapRetired();
}

void Worker::checkTimeouts(qos::TimeNs now) {
  const qos::TimeNs limit = static_cast<qos::TimeNs>(config_.timeout_ms) * 1'000'000;
  for (auto& [id, connection] : connections_) {
    Connection& c = *connection;
    if (!c.failure.isOk() || c.retired || c.ucx_outstanding == 0) continue;
    for (Request& r : c.requests) {
      const bool awaiting_ack = r.kind == RequestKind::put && r.flush_posted && !r.flushed;
      if (!r.in_use || r.kind == RequestKind::recv || (r.inflight == 0 && !awaiting_ack)) continue;
      if (now - r.last_progress_ns > limit) {
        bumpCounter(&TransportCounters::timeouts);
        fail(c, Status(StatusCode::timeout,
                       fmt::format("{} of {} bytes to peer {} made no progress for {} ms "
                                   "(DUALPATH_NET_TIMEOUT_MS)",
                                   r.kind == RequestKind::put ? "put" : "send", r.size, c.peer,
                                   config_.timeout_ms)));
        break;
      }
    }
  }
  // Plain loops, not erase_if: lock analysis cannot see into the lambda.
  for (auto it = accepting_.begin(); it != accepting_.end();) {
    if (now - it->created_ns <= limit) {
      ++it;
      continue;
    }
    DP_LOG_WARN("transport: peer {} connected to {} but sent no hello within {} ms; dropped",
                it->connection->peer, device_.name, config_.timeout_ms);
    retire(it->connection);
    it = accepting_.erase(it);
  }
  for (auto& pending : connects_) {
    if (!pending->welcomed && pending->failure.isOk() && now - pending->started_ns > limit) {
      bumpCounter(&TransportCounters::timeouts);
      pending->failure = Status(StatusCode::timeout,
                                fmt::format("connecting to {} timed out after {} ms "
                                            "(DUALPATH_NET_TIMEOUT_MS)",
                                            pending->connection->peer, config_.timeout_ms));
    }
  }
}

void Worker::reapRetired() {
  // A retired connection goes once UCX holds nothing of it. One whose peer
  // died with operations in flight may stay until the worker is destroyed.
  // Runs on every progress: skip the walk when nothing is retired.
  if (retired_count_ == 0) return;
  for (auto it = connections_.begin(); it != connections_.end();) {
    Connection& c = *it->second;
    if (c.retired && !c.parked && !c.close_posted) closeEp(c, /*force=*/!c.failure.isOk());
    if (c.retired && c.closed && c.ucx_outstanding == 0) {
      it = connections_.erase(it);
      --retired_count_;
    } else {
      ++it;
    }
  }
}

// ---------------------------------------------------------------- endpoints

Result<ucp_ep_h> Worker::createEp(ucp_worker_h worker, ucp_ep_params_t& params,
                                  const std::string& peer, bool detect_peer_failure) {
  params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.err_mode = detect_peer_failure ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = &epErrorTrampoline;
  params.err_handler.arg = this;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t s = ucp_ep_create(worker, &params, &ep); s != UCS_OK) {
    return fromUcs(s, fmt::format("creating an endpoint to {}", peer));
  }
  return ep;
}

Result<Connection*> Worker::newConnection(ucp_ep_h ep, std::string peer) {
  // Ids are never reused while the worker lives, so a late message for a
  // closed connection cannot match a new one.
  if (next_endpoint_id_ > tagbits::kMaxEndpointId) {
    return Status(StatusCode::unsupported,
                  fmt::format("worker for {} has used all {} connection ids", device_.name,
                              tagbits::kMaxEndpointId));
  }
  auto connection = std::make_unique<Connection>();
  connection->worker = this;
  connection->ep = ep;
  connection->local_id = next_endpoint_id_++;
  connection->peer = std::move(peer);
  connection->requests.resize(kRequestPoolSize);
  connection->free_requests.reserve(kRequestPoolSize);
  for (Request& r : connection->requests) {
    r.connection = connection.get();
    connection->free_requests.push_back(&r);
  }
  connection->pending_posts.reserve(kRequestPoolSize);
  if (reposts_.capacity() < kRequestPoolSize) {
    reposts_.reserve(kRequestPoolSize);
    reposting_.reserve(kRequestPoolSize);
  }
  connection->chunk_pool.resize(kChunkPoolSize);
  connection->free_chunks.reserve(kChunkPoolSize);
  for (ChunkContext& chunk : connection->chunk_pool) connection->free_chunks.push_back(&chunk);
  Connection* raw = connection.get();
  connections_.emplace(raw->local_id, std::move(connection));
  if (ep != nullptr) by_ep_[ep] = raw;
  return raw;
}

Status Worker::openDataEp(Connection& connection, std::span<const std::byte> peer_address,
                          bool required) {
  const auto unreachable = [&] {
    return Status(StatusCode::unsupported,
                  fmt::format("peer {} sends over shared memory, but UCX gives this process no "
                              "shared-memory lane to it on {} (do both processes allow the same "
                              "UCX_TLS?)",
                              connection.peer, device_.name));
  };
  // Without shared memory (UCX_TLS=tcp, say) the data endpoint could only
  // duplicate the client-server endpoint's lanes; opening it anyway starts
  // TCP connections that closing it at once cuts under the peer, which UCX
  // 1.13 logs as an error on the peer's side.
  if (data_worker_ == nullptr) return required ? unreachable() : Status::ok();
  if (peer_address.empty()) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("peer {} sent no worker address", connection.peer));
  }
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  params.address = reinterpret_cast<const ucp_address_t*>(peer_address.data());
  // Without peer-failure handling: UCX 1.13's shared-memory transports do
  // not support it and would be excluded. The client-server endpoint, which
  // has it, stays open to report a dead peer for both.
  DP_TRY_ASSIGN(ucp_ep_h data_ep, createEp(data_worker_, params, connection.peer, false));
  // Keep it only if UCX gave it shared memory; otherwise its lanes are the
  // client-server endpoint's, and UCX 1.13 holds a closed address-based tcp
  // endpoint's sockets until the worker ends (measured: 1.8 fds per
  // connection over 1,000 connect/close cycles).
  std::vector<std::string> data_lanes = lanesOf(data_ep);
  const bool shared_memory = std::any_of(data_lanes.begin(), data_lanes.end(), isSharedMemoryLane);
  if (!shared_memory) {
    ucp_request_param_t param{};
    void* request = ucp_ep_close_nbx(data_ep, &param);
    if (request != nullptr && !UCS_PTR_IS_ERR(request)) ucp_request_free(request);
    return required ? unreachable() : Status::ok();
  }
  connection.data_ep = data_ep;
  by_ep_[connection.data_ep] = &connection;
  return Status::ok();
}

void Worker::settleDataPath(Connection& connection, bool on_data_worker) {
  connection.on_data_worker = on_data_worker;
  if (!on_data_worker && !connection.counts_as_control_data) {
    connection.counts_as_control_data = true;
    ++control_data_connections_;
  }
}

void Worker::releaseDataPath(Connection& connection) {
  if (!connection.counts_as_control_data) return;
  connection.counts_as_control_data = false;
  --control_data_connections_;
}

Connection* Worker::findByEp(ucp_ep_h ep) {
  auto it = by_ep_.find(ep);
  return it == by_ep_.end() ? nullptr : it->second;
}

void Worker::closeEp(Connection& connection, bool force) {
  if (connection.close_posted) return;
  connection.close_posted = true;
  for (std::size_t i = 0; i < 2; ++i) {
    ucp_ep_h& ep = i == 0 ? connection.data_ep : connection.ep;
    if (ep == nullptr) continue;
    by_ep_.erase(ep);
    CloseSlot& slot = connection.close_slots[i];
    slot = CloseSlot{&connection, nullptr, false};
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FIELD_FLAGS;
    // UCX allows a forced close of an endpoint without peer-failure
    // handling (the data endpoint) only when the peer cannot be harmed by
    // it: once the connection has failed. A healthy one flushes.
    const bool may_force = &ep == &connection.ep || !connection.failure.isOk();
    param.flags = force && may_force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    param.cb.send = &closeCompleted;
    param.user_data = &slot;
    void* request = ucp_ep_close_nbx(ep, &param);
    ep = nullptr;
    // A forced close may complete, callback included, before returning.
    if (request != nullptr && !UCS_PTR_IS_ERR(request) && !slot.done) slot.request = request;
  }
  connection.closed = std::none_of(connection.close_slots.begin(), connection.close_slots.end(),
                                   [](const CloseSlot& s) { return s.request != nullptr; });
}

void Worker::retire(Connection* connection) {
  if (connection == nullptr || connection->retired) return;
  connection->retired = true;
  releaseDataPath(*connection);
  // Receives nobody will test again: cancel them so UCX lets go of the buffers.
  for (Request& r : connection->requests) {
    if (!r.in_use) continue;
    for (std::uint8_t i = 0; i < r.slot_count; ++i) {
      if (r.slots[i].ucx != nullptr) ucp_request_cancel(recvWorker(*connection), r.slots[i].ucx);
    }
    if (r.kind != RequestKind::recv && r.inflight == 0) finishRequest(r);
  }
  if (connection->failure.isOk()) {
    arbiter_->withdraw(class_index_);
  }
  // Force: every operation the owner cares about has completed (a send
  // completes once UCX has handed its bytes to the transport, and a kernel
  // socket still delivers what it holds after close), and a flushing close
  // of a client-server endpoint waits for a disconnect handshake that UCX
  // 1.13 does not always finish, which kept sockets open (measured: 3.6 fds
  // per connection after 1,000 cycles).
  if (releaseOnRetire(*connection)) return;
  ++retired_count_;
  closeEp(*connection, /*force=*/true);
}

void Worker::fail(Connection& connection, Status reason) {
  if (!connection.failure.isOk()) return;
  const bool busy = std::any_of(connection.requests.begin(), connection.requests.end(),
                                [](const Request& r) { return r.in_use; });
  if (busy || reason.code() != StatusCode::remote) {
    DP_LOG_WARN("transport: connection to {} on {} failed: {}", connection.peer, device_.name,
                reason.message());
  } else {
    // The peer closed while nothing was outstanding: a normal shutdown.
    DP_LOG_INFO("transport: peer {} closed the connection on {}", connection.peer, device_.name);
  }
  connection.failure = std::move(reason);
  for (Request& r : connection.requests) {
    if (!r.in_use) continue;
    if (r.failure.isOk()) r.failure = connection.failure;
    for (std::uint8_t i = 0; i < r.slot_count; ++i) {
      if (r.slots[i].ucx != nullptr) ucp_request_cancel(recvWorker(connection), r.slots[i].ucx);
      r.slots[i].repost = false;
    }
  }
  connection.pending_posts.clear();
  forgetRoute(connection);
  releaseDataPath(connection);
  closeEp(connection, /*force=*/true);
}

void Worker::onEpError(ucp_ep_h ep, ucs_status_t status) {
  Connection* connection = findByEp(ep);
  if (connection != nullptr && connection->parked) {
    // Nobody owns a parked route any more: it only has to stop being used.
    fail(*connection, fromUcs(status, fmt::format("peer {}", connection->peer)));
    return;
  }
  if (connection == nullptr || connection->retired) return;
  bumpCounter(&TransportCounters::peer_failures);
  fail(*connection, fromUcs(status, fmt::format("peer {}", connection->peer)));
  for (auto& pending : connects_) {
    if (pending->connection == connection && pending->failure.isOk()) {
      pending->failure = connection->failure;
    }
  }
}

// ---------------------------------------------------------------- reply routes

void Worker::countLive(Connection& connection) {
  if (connection.peer_worker == 0 || connection.counted_live) return;
  connection.counted_live = true;
  ++peers_[connection.peer_worker].live;
}

void Worker::setRoute(std::uint64_t peer_worker, Connection* route) {
  PeerRoutes& peer = peers_[peer_worker];
  if (peer.route == route) return;
  if (peer.route != nullptr && peer.route->parked) unpark(*peer.route);
  peer.route = route;
}

bool Worker::releaseOnRetire(Connection& connection) {
  if (!connection.counted_live) return false;
  connection.counted_live = false;
  auto it = peers_.find(connection.peer_worker);
  PeerRoutes& peer = it->second;
  --peer.live;
  if (peer.live > 0) {
    if (peer.route != &connection) return false;
    // A route that never got its welcome carries nothing: close it now.
    if (connection.established && connection.failure.isOk()) {
      connection.parked = true;
      return true;
    }
    peer.route = nullptr;
    return false;
  }
  if (peer.route != nullptr && peer.route != &connection && peer.route->parked) {
    unpark(*peer.route);
  }
  peers_.erase(it);
  return false;
}

void Worker::forgetRoute(Connection& connection) {
  auto it = peers_.find(connection.peer_worker);
  if (it == peers_.end() || it->second.route != &connection) return;
  it->second.route = nullptr;
  if (connection.parked) unpark(connection);
}

void Worker::unpark(Connection& connection) {
  connection.parked = false;
  ++retired_count_;
  closeEp(connection, /*force=*/true);  // as retire() does, for the same reason
}

ucp_ep_h Worker::sendEp(Connection& connection, const Request& request) {
  // One chunk only: the chunks of a message must stay in order on one
  // endpoint, and a message of one chunk is posted whole.
  if (!connection.tcp_only || request.chunks_total != 1 || request.size > kReplyRouteMaxBytes) {
    return connection.dataEp();
  }
  auto it = peers_.find(connection.peer_worker);
  if (it == peers_.end()) return connection.dataEp();
  const Connection* route = it->second.route;
  if (route == nullptr || route == &connection || !route->established || !route->tcp_only ||
      !route->failure.isOk() || route->ep == nullptr) {
    return connection.dataEp();
  }
  reply_route_sends_.fetch_add(1, std::memory_order_relaxed);
  return route->ep;
}

// ---------------------------------------------------------------- posting

ChunkContext* Worker::takeChunk(Connection& connection) {
  if (connection.free_chunks.empty()) return nullptr;
  ChunkContext* chunk = connection.free_chunks.back();
  connection.free_chunks.pop_back();
  return chunk;
}

void Worker::giveChunk(Connection& connection, ChunkContext* chunk) {
  *chunk = ChunkContext{};
  connection.free_chunks.push_back(chunk);
}

void Worker::pumpPosts(Connection& connection, qos::TimeNs now) {
  if (!connection.failure.isOk() || connection.dataEp() == nullptr) return;
  const std::size_t max_chunk = arbiter_->maxPostBytes(class_index_);
  std::size_t kept = 0;
  for (Request* r : connection.pending_posts) {
    bool blocked = false;
    while (r->failure.isOk() && r->chunks_posted < r->chunks_total) {
      const std::size_t offset = r->chunks_posted * std::min(max_chunk, r->size);
      const std::size_t bytes = std::min(r->size - offset, max_chunk);
      if (bytes != 0) {
        Status grant = arbiter_->tryAcquire(class_index_, bytes, now);
        if (!grant.isOk()) {
          if (grant.code() != StatusCode::again) r->failure = std::move(grant);
          blocked = true;
          break;
        }
      }
      ChunkContext* chunk = takeChunk(connection);
      if (chunk == nullptr) {
        if (bytes != 0) arbiter_->release(class_index_, bytes);
        blocked = true;
        break;
      }
      chunk->request = r;
      chunk->bytes = bytes;
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      param.cb.send = &sendCompleted;
      param.user_data = chunk;
      void* op = nullptr;
      if (r->kind == RequestKind::send) {
        op = ucp_tag_send_nbx(sendEp(connection, *r), r->data + offset, bytes, r->tag_bits,
                              &param);
      } else if (connection.am_puts) {
        putLe(chunk->am_header.data(), connection.remote_id, 4);
        putLe(chunk->am_header.data() + 4, 0, 4);
        putLe(chunk->am_header.data() + 8, r->remote_addr + offset, 8);
        param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
        param.flags = UCP_AM_SEND_FLAG_EAGER;  // the handler sees all the data at once
        op = ucp_am_send_nbx(connection.dataEp(), kAmPut, chunk->am_header.data(),
                             amput::kDataHeaderBytes, r->data + offset, bytes, &param);
      } else {
        op = ucp_put_nbx(connection.dataEp(), r->data + offset, bytes, r->remote_addr + offset, r->rkey,
                         &param);
      }
      ++r->chunks_posted;
      r->last_progress_ns = now;
      if (op == nullptr) {
        if (bytes != 0) arbiter_->release(class_index_, bytes);
        giveChunk(connection, chunk);
      } else if (UCS_PTR_IS_ERR(op)) {
        if (bytes != 0) arbiter_->release(class_index_, bytes);
        giveChunk(connection, chunk);
        r->failure = fromUcs(UCS_PTR_STATUS(op), fmt::format("posting to peer {}", connection.peer));
      } else {
        chunk->ucx = op;
        ++r->inflight;
        ++connection.ucx_outstanding;
      }
    }
    // A put is remote-complete only after a flush, posted once every chunk
    // completed locally; until then it stays queued.
    if (!blocked && r->failure.isOk() && r->kind == RequestKind::put && !r->flush_posted) {
      blocked = r->inflight != 0 || !postFlush(connection, *r);
    }
    if (blocked && r->failure.isOk()) connection.pending_posts[kept++] = r;
  }
  connection.pending_posts.resize(kept);
}

bool Worker::postFlush(Connection& connection, Request& r) {
  ChunkContext* chunk = takeChunk(connection);
  if (chunk == nullptr) return false;
  chunk->request = &r;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = connection.am_puts ? &fenceSent : &flushCompleted;
  param.user_data = chunk;
  r.flush_posted = true;
  void* op = nullptr;
  if (connection.am_puts) {
    // Done when the peer's acknowledgement arrives (onPutAck), not when the
    // fence leaves.
    r.put_serial = next_put_serial_++;
    const auto index = static_cast<std::uint64_t>(&r - connection.requests.data());
    putLe(chunk->am_header.data(), connection.remote_id, 4);
    putLe(chunk->am_header.data() + 4, index, 4);
    putLe(chunk->am_header.data() + 8, r.put_serial, 8);
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    op = ucp_am_send_nbx(connection.dataEp(), kAmPutFence, chunk->am_header.data(),
                         amput::kFenceHeaderBytes, nullptr, 0, &param);
  } else {
    op = ucp_ep_flush_nbx(connection.dataEp(), &param);
  }
  if (op == nullptr) {
    if (!connection.am_puts) r.flushed = true;
    giveChunk(connection, chunk);
  } else if (UCS_PTR_IS_ERR(op)) {
    r.failure = fromUcs(UCS_PTR_STATUS(op), fmt::format("flushing puts to {}", connection.peer));
    giveChunk(connection, chunk);
  } else {
    chunk->ucx = op;
    ++r.inflight;
    ++connection.ucx_outstanding;
  }
  return true;
}

void Worker::postRecvSlot(Request& request, std::uint8_t slot) {
  Connection& connection = *request.connection;
  RecvState& state = request.slots[slot];
  state.repost = false;
  ChunkContext* chunk = takeChunk(connection);
  if (chunk == nullptr) {
    state.repost = true;  // try again on the next progress
    return;
  }
  chunk->request = &request;
  chunk->slot = slot;
  // Always complete through the callback: UCX 1.13 does not fill recv_info
  // when a receive completes immediately, and we need the length.
  ucp_request_param_t param{};
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  param.cb.recv = &recvCompleted;
  param.user_data = chunk;
  void* op = ucp_tag_recv_nbx(recvWorker(connection), state.data + state.received,
                              state.capacity - state.received, state.tag_bits, tagbits::kMatchAll,
                              &param);
  if (op == nullptr || UCS_PTR_IS_ERR(op)) {
    giveChunk(connection, chunk);
    request.failure =
        op == nullptr ? Status(StatusCode::internal, "UCX completed a receive it was told not to")
                      : fromUcs(UCS_PTR_STATUS(op), fmt::format("receiving from {}", connection.peer));
    state.done = true;
    return;
  }
  state.ucx = op;
  chunk->ucx = op;
  ++request.inflight;
  ++connection.ucx_outstanding;
}

Result<Request*> Worker::acquireRequest(Connection& connection, RequestKind kind) {
  if (!connection.failure.isOk()) return connection.failure;
  const bool recv = kind == RequestKind::recv;
  std::size_t& in_use = recv ? connection.recvs_in_use : connection.sends_in_use;
  const std::size_t limit = recv ? kMaxRequestsPerEndpoint
                                 : kMaxRequestsPerEndpoint * kMaxRecvsPerRequest;
  if (in_use >= limit || connection.free_requests.empty()) return Status(StatusCode::again);
  Request* r = connection.free_requests.back();
  connection.free_requests.pop_back();
  ++in_use;
  *r = Request{};
  r->connection = &connection;
  r->kind = kind;
  r->in_use = true;
  r->last_progress_ns = qos::monotonicNowNs();
  return r;
}

void Worker::finishRequest(Request& request) {
  if (!request.in_use) return;
  request.in_use = false;
  request.failure = Status::ok();
  Connection& connection = *request.connection;
  --(request.kind == RequestKind::recv ? connection.recvs_in_use : connection.sends_in_use);
  if (request.inflight == 0) connection.free_requests.push_back(&request);
}

// ---------------------------------------------------------------- callbacks

namespace {

void sendCompleted(void* ucx_request, ucs_status_t status, void* user_data) {
  auto* chunk = static_cast<ChunkContext*>(user_data);
  Request& r = *chunk->request;
  Connection& c = *r.connection;
  Worker& w = *c.worker;
  if (chunk->bytes != 0) w.arbiter().release(w.classIndex(), chunk->bytes);
  if (status != UCS_OK && r.failure.isOk()) {
    r.failure = c.failure.isOk() ? fromUcs(status, fmt::format("sending to peer {}", c.peer))
                                 : c.failure;
  }
  r.last_progress_ns = qos::monotonicNowNs();
  --r.inflight;
  --c.ucx_outstanding;
  w.mu.assertHeld();
  w.giveChunk(c, chunk);
  ucp_request_free(ucx_request);
}

// The fence of an active-message put left (or failed); the put completes
// when the peer acknowledges it.
void fenceSent(void* ucx_request, ucs_status_t status, void* user_data) {
  auto* chunk = static_cast<ChunkContext*>(user_data);
  Request& r = *chunk->request;
  Connection& c = *r.connection;
  if (status != UCS_OK && r.failure.isOk()) {
    r.failure = c.failure.isOk()
                    ? fromUcs(status, fmt::format("completing puts to peer {}", c.peer))
                    : c.failure;
  }
  r.last_progress_ns = qos::monotonicNowNs();
  --r.inflight;
  --c.ucx_outstanding;
  c.worker->mu.assertHeld();
  c.worker->giveChunk(c, chunk);
  ucp_request_free(ucx_request);
}

// An acknowledgement we sent. A failure needs nothing: the peer's put then
// fails on its side (its connection fails or times out).
void ackSent(void* ucx_request, ucs_status_t /*status*/, void* user_data) {
  auto* chunk = static_cast<ChunkContext*>(user_data);
  Connection& c = *static_cast<Connection*>(chunk->ucx);
  --c.ucx_outstanding;
  c.worker->mu.assertHeld();
  c.worker->giveChunk(c, chunk);
  ucp_request_free(ucx_request);
}

void flushCompleted(void* ucx_request, ucs_status_t status, void* user_data) {
  auto* chunk = static_cast<ChunkContext*>(user_data);
  Request& r = *chunk->request;
  Connection& c = *r.connection;
  if (status != UCS_OK && r.failure.isOk()) {
    r.failure = fromUcs(status, fmt::format("completing puts to peer {}", c.peer));
  }
  r.flushed = true;
  --r.inflight;
  --c.ucx_outstanding;
  c.worker->mu.assertHeld();
  c.worker->giveChunk(c, chunk);
  ucp_request_free(ucx_request);
}

void recvCompleted(void* ucx_request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                   void* user_data) {
  auto* chunk = static_cast<ChunkContext*>(user_data);
  Request& r = *chunk->request;
  Connection& c = *r.connection;
  const std::uint8_t chunk_slot = chunk->slot;
  RecvState& slot = r.slots[chunk_slot];
  slot.ucx = nullptr;
  --r.inflight;
  --c.ucx_outstanding;
  c.worker->mu.assertHeld();
  c.worker->giveChunk(c, chunk);
  ucp_request_free(ucx_request);
  if (status != UCS_OK) {
    if (r.failure.isOk()) {
      if (!c.failure.isOk()) {
        r.failure = c.failure;
      } else if (status == UCS_ERR_MESSAGE_TRUNCATED) {
        r.failure = Status(StatusCode::invalid_usage,
                           fmt::format("peer {} sent more than the {}-byte receive buffer for "
                                       "tag {}",
                                       c.peer, slot.capacity, tagbits::callerTag(slot.tag_bits)));
      } else {
        r.failure = fromUcs(status, fmt::format("receiving from peer {}", c.peer));
      }
    }
    slot.done = true;
    return;
  }
  slot.received += info->length;
  if (info->length < c.peer_chunk_bytes) {
    slot.done = true;
  } else {
    slot.repost = true;  // posted from progress(), outside UCX's callback
    c.worker->queueRepost(r, chunk_slot);
  }
}

void handshakeSent(void* ucx_request, ucs_status_t, void* user_data) {
  auto* connection = static_cast<Connection*>(user_data);
  connection->handshake_done = true;
  if (connection->handshake_request != nullptr) --connection->ucx_outstanding;
  connection->handshake_request = nullptr;
  ucp_request_free(ucx_request);
}

void closeCompleted(void* ucx_request, ucs_status_t, void* user_data) {
  auto* slot = static_cast<CloseSlot*>(user_data);
  slot->done = true;
  slot->request = nullptr;
  Connection& connection = *slot->connection;
  connection.closed = std::none_of(connection.close_slots.begin(), connection.close_slots.end(),
                                   [](const CloseSlot& s) { return s.request != nullptr; });
  ucp_request_free(ucx_request);
}

Status sendHandshake(Worker& worker, Connection& connection, unsigned id, const void* header,
                     std::size_t length, bool reply) {
  // The payload is our worker address: the peer opens a second endpoint to
  // it, on which UCX picks the best lanes for the pair (shared memory on one
  // host). The client-server endpoint itself only gets network lanes.
  const std::vector<std::byte>& address = worker.address();
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_EAGER | (reply ? UCP_AM_SEND_FLAG_REPLY : 0);
  param.cb.send = &handshakeSent;
  param.user_data = &connection;
  connection.handshake_done = false;
  void* op = ucp_am_send_nbx(connection.ep, id, header, length, address.data(), address.size(),
                             &param);
  if (UCS_PTR_IS_ERR(op)) {
    return fromUcs(UCS_PTR_STATUS(op), fmt::format("handshake with {}", connection.peer));
  }
  if (op != nullptr && !connection.handshake_done) {
    connection.handshake_request = op;
    ++connection.ucx_outstanding;
  }
  return Status::ok();
}

}  // namespace

// ---------------------------------------------------------------- listen / connect

Result<ListenerState*> Worker::createListener(std::uint16_t* port) {
  sockaddr_storage address{};
  socklen_t length = 0;
  if (device_.ip.find(':') == std::string::npos) {
    auto& in = reinterpret_cast<sockaddr_in&>(address);
    in.sin_family = AF_INET;
    if (inet_pton(AF_INET, device_.ip.c_str(), &in.sin_addr) != 1) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("device {}: bad IPv4 address '{}'", device_.name, device_.ip));
    }
    length = sizeof(sockaddr_in);
  } else {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(address);
    in6.sin6_family = AF_INET6;
    if (inet_pton(AF_INET6, device_.ip.c_str(), &in6.sin6_addr) != 1) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("device {}: bad IPv6 address '{}'", device_.name, device_.ip));
    }
    length = sizeof(sockaddr_in6);
  }
  auto state = std::make_unique<ListenerState>();
  state->worker = this;
  state->listener_id = std::random_device{}() | (std::uint64_t{std::random_device{}()} << 32);

  ucp_listener_params_t params{};
  params.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&address);
  params.sockaddr.addrlen = length;
  params.conn_handler.cb = &connRequestTrampoline;
  params.conn_handler.arg = state.get();
  if (ucs_status_t s = ucp_listener_create(worker_, &params, &state->listener); s != UCS_OK) {
    return fromUcs(s, fmt::format("listening on {} ({})", device_.name, device_.ip));
  }
  ucp_listener_attr_t attr{};
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (ucs_status_t s = ucp_listener_query(state->listener, &attr); s != UCS_OK) {
    ucp_listener_destroy(state->listener);
    return fromUcs(s, "querying the listener's port");
  }
  *port = attr.sockaddr.ss_family == AF_INET
              ? ntohs(reinterpret_cast<const sockaddr_in&>(attr.sockaddr).sin_port)
              : ntohs(reinterpret_cast<const sockaddr_in6&>(attr.sockaddr).sin6_port);
  listeners_.push_back(std::move(state));
  return listeners_.back().get();
}

void Worker::destroyListener(ListenerState* state) {
  ucp_listener_destroy(state->listener);
  state->listener = nullptr;
  for (Connection* c : state->ready) retire(c);
  for (auto it = accepting_.begin(); it != accepting_.end();) {
    if (it->listener != state) {
      ++it;
      continue;
    }
    retire(it->connection);
    it = accepting_.erase(it);
  }
  std::erase_if(listeners_, [&](const auto& l) { return l.get() == state; });
}

void Worker::onConnRequest(ListenerState* listener, ucp_conn_request_h request) {
  std::string peer = "<unknown peer>";
  ucp_conn_request_attr_t attr{};
  attr.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
  if (ucp_conn_request_query(request, &attr) == UCS_OK) peer = sockaddrToString(attr.client_address);

  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST;
  params.conn_request = request;
  Result<ucp_ep_h> ep = createEp(worker_, params, peer, true);
  if (!ep) {
    DP_LOG_WARN("transport: accepting {} on {}: {}", peer, device_.name, ep.status().message());
    ucp_listener_reject(listener->listener, request);
    return;
  }
  Result<Connection*> connection = newConnection(*ep, peer);
  if (!connection) {
    DP_LOG_WARN("transport: accepting {}: {}", peer, connection.status().message());
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    void* op = ucp_ep_close_nbx(*ep, &param);
    if (op != nullptr && !UCS_PTR_IS_ERR(op)) ucp_request_free(op);
    return;
  }
  accepting_.push_back({listener, *connection, qos::monotonicNowNs()});
}

ucs_status_t Worker::onHello(const void* header, std::size_t length,
                             std::span<const std::byte> peer_address, ucp_ep_h reply_ep) {
  auto it = std::find_if(accepting_.begin(), accepting_.end(), [&](const Accepting& a) {
    return a.connection->ep == reply_ep;
  });
  if (it == accepting_.end()) {
    DP_LOG_WARN("transport: hello from an endpoint that is not being accepted on {}; ignored",
                device_.name);
    return UCS_OK;
  }
  Accepting accepting = *it;
  accepting_.erase(it);
  Connection& c = *accepting.connection;

  HelloWire hello{};
  std::string refusal;
  if (length != sizeof(HelloWire)) {
    refusal = fmt::format("hello of {} bytes, expected {}", length, sizeof(HelloWire));
  } else {
    std::memcpy(&hello, header, sizeof(hello));
    if (hello.magic != kWireMagic) {
      refusal = "not a DualPath peer (bad hello magic)";
    } else if (hello.listener_id != accepting.listener->listener_id) {
      refusal = "stale connect handle (listener id mismatch)";
    } else if (hello.policy_digest != policy_digest_) {
      refusal = "the peers run different QoS class tables (DUALPATH_QOS_POLICY differs)";
    } else if (hello.class_index != class_index_) {
      refusal = fmt::format("class {} requested on the listener for class {}", hello.class_index,
                            class_index_);
    } else if (hello.client_endpoint_id == 0 || hello.client_endpoint_id > tagbits::kMaxEndpointId) {
      refusal = fmt::format("bad endpoint id {}", hello.client_endpoint_id);
    }
  }
  WelcomeWire welcome{};
  welcome.magic = kWireMagic;
  welcome.client_endpoint_id = hello.client_endpoint_id;
  welcome.server_endpoint_id = c.local_id;
  if (!refusal.empty()) {
    welcome.refusal = static_cast<std::int32_t>(StatusCode::invalid_argument);
    std::snprintf(welcome.reason, sizeof(welcome.reason), "%s", refusal.c_str());
    DP_LOG_WARN("transport: refusing {} on {}: {}", c.peer, device_.name, refusal);
  } else {
    c.remote_id = hello.client_endpoint_id;
    c.peer_chunk_bytes = hello.chunk_bytes;
    c.peer_worker = hello.client_worker;
    countLive(c);
    if (hello.data_worker != 0) {
      if (Status opened = openDataEp(c, peer_address, false); !opened.isOk()) {
        refusal = opened.message();
      }
    }
  }
  welcome.chunk_bytes = arbiter_->maxPostBytes(class_index_);
  welcome.data_worker = c.data_ep != nullptr ? 1 : 0;
  std::memcpy(c.welcome.data(), &welcome, sizeof(welcome));
  Status sent = sendHandshake(*this, c, kAmWelcome, c.welcome.data(), sizeof(WelcomeWire), false);
  if (!sent.isOk() || !refusal.empty()) {
    if (!sent.isOk()) DP_LOG_WARN("transport: {}", sent.message());
    retire(&c);
    return UCS_OK;
  }
  checkLanes(c);
  c.tcp_only = allLanesTcp(lanes(c));
  c.am_puts = c.tcp_only;
  if (!c.failure.isOk()) {
    retire(&c);
    return UCS_OK;
  }
  c.established = true;
  settleDataPath(c, c.data_ep != nullptr);
  // The lower-named worker chooses the route and names it in every hello;
  // the route's own hello names itself.
  if (hello.route_endpoint_id == hello.client_endpoint_id && hello.client_worker < worker_id_) {
    setRoute(c.peer_worker, &c);
  }
  bumpCounter(&TransportCounters::connections);
  accepting.listener->ready.push_back(&c);
  return UCS_OK;
}

Result<ConnectState*> Worker::startConnect(const ConnectHandle& handle, std::uint16_t port,
                                           std::uint64_t peer_worker) {
  sockaddr_storage address{};
  socklen_t length = 0;
  if (handle.family == AF_INET) {
    auto& in = reinterpret_cast<sockaddr_in&>(address);
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    std::memcpy(&in.sin_addr, handle.address.data(), 4);
    length = sizeof(in);
  } else {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(address);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(port);
    std::memcpy(&in6.sin6_addr, handle.address.data(), 16);
    length = sizeof(in6);
  }
  std::string peer = sockaddrToString(address);

  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
  params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&address);
  params.sockaddr.addrlen = length;
  DP_TRY_ASSIGN(ucp_ep_h ep, createEp(worker_, params, peer, true));
  Result<Connection*> connection = newConnection(ep, peer);
  if (!connection) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    void* op = ucp_ep_close_nbx(ep, &param);
    if (op != nullptr && !UCS_PTR_IS_ERR(op)) ucp_request_free(op);
    return std::move(connection).status();
  }
  Connection& c = **connection;
  c.peer_worker = peer_worker;
  countLive(c);
  std::uint32_t route_endpoint_id = 0;
  if (worker_id_ < peer_worker) {
    PeerRoutes& routes = peers_[peer_worker];
    if (routes.route == nullptr) routes.route = &c;
    route_endpoint_id = routes.route->local_id;
  }

  HelloWire hello{};
  hello.magic = kWireMagic;
  hello.client_endpoint_id = c.local_id;
  hello.listener_id = be64toh(handle.listener_id);
  hello.policy_digest = policy_digest_;
  hello.class_index = class_index_;
  hello.chunk_bytes = arbiter_->maxPostBytes(class_index_);
  hello.client_worker = worker_id_;
  hello.data_worker = data_worker_ != nullptr ? 1 : 0;
  hello.route_endpoint_id = route_endpoint_id;
  std::memcpy(c.hello.data(), &hello, sizeof(hello));
  auto state = std::make_unique<ConnectState>();
  state->connection = &c;
  state->started_ns = qos::monotonicNowNs();
  if (Status sent = sendHandshake(*this, c, kAmHello, c.hello.data(), sizeof(hello), true);
      !sent.isOk()) {
    retire(&c);
    return sent;
  }
  connects_.push_back(std::move(state));
  return connects_.back().get();
}

void Worker::abandonConnect(ConnectState* state) {
  if (state->connection != nullptr) retire(state->connection);
  std::erase_if(connects_, [&](const auto& p) { return p.get() == state; });
}

ucs_status_t Worker::onWelcome(const void* header, std::size_t length,
                               std::span<const std::byte> peer_address) {
  if (length != sizeof(WelcomeWire)) {
    DP_LOG_WARN("transport: welcome of {} bytes on {}; ignored", length, device_.name);
    return UCS_OK;
  }
  WelcomeWire welcome{};
  std::memcpy(&welcome, header, sizeof(welcome));
  auto it = std::find_if(connects_.begin(), connects_.end(), [&](const auto& p) {
    return p->connection->local_id == welcome.client_endpoint_id;
  });
  if (welcome.magic != kWireMagic || it == connects_.end()) {
    DP_LOG_WARN("transport: unexpected welcome for endpoint {} on {}; ignored",
                welcome.client_endpoint_id, device_.name);
    return UCS_OK;
  }
  ConnectState& state = **it;
  Connection& c = *state.connection;
  if (welcome.refusal != 0) {
    welcome.reason[sizeof(welcome.reason) - 1] = '\0';
    state.failure = Status(StatusCode::remote,
                           fmt::format("peer {} refused the connection: {}", c.peer, welcome.reason));
    return UCS_OK;
  }
  c.remote_id = welcome.server_endpoint_id;
  c.peer_chunk_bytes = welcome.chunk_bytes;
  if (welcome.data_worker != 0) {
    if (Status opened = openDataEp(c, peer_address, true); !opened.isOk()) {
      state.failure = std::move(opened);
      return UCS_OK;
    }
  }
  checkLanes(c);
  c.tcp_only = allLanesTcp(lanes(c));
  c.am_puts = c.tcp_only;
  if (!c.failure.isOk()) {
    state.failure = c.failure;
    return UCS_OK;
  }
  c.established = true;
  settleDataPath(c, c.data_ep != nullptr);
  bumpCounter(&TransportCounters::connections);
  state.welcomed = true;
  return UCS_OK;
}

// ---------------------------------------------------------------- lanes

std::vector<std::string> Worker::lanes(const Connection& connection) {
  return lanesOf(connection.dataEp());
}

namespace {

// What one of UCX's print functions writes, as text; empty when no stream.
template <typename Print>
std::string printedByUcx(Print print) {
  char* text = nullptr;
  std::size_t size = 0;
  FILE* stream = open_memstream(&text, &size);
  if (stream == nullptr) return {};
  print(stream);
  std::fclose(stream);
  std::string printed(text, size);
  std::free(text);
  return printed;
}

}  // namespace

std::vector<std::string> resourcesOf(ucp_context_h context) {
  std::vector<std::string> result;
  std::istringstream lines(printedByUcx([&](FILE* out) { ucp_context_print_info(context, out); }));
  // Lines look like "#      resource 1  :  md 1  dev 1  flags -- tcp/lo": the last word.
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find("resource ") == std::string::npos) continue;
    const std::size_t start = line.find_last_of(' ');
    if (start != std::string::npos && start + 1 < line.size()) result.push_back(line.substr(start + 1));
  }
  return result;
}

std::vector<std::string> lanesOf(ucp_ep_h ep) {
  std::vector<std::string> result;
  if (ep == nullptr) return result;
  const std::string printed = printedByUcx([&](FILE* out) { ucp_ep_print_info(ep, out); });
  const std::string_view info(printed);
  // Lines look like "#   lane[0]:  2:tcp/lo.0 md[0] ..." : take "tcp/lo".
  std::size_t pos = 0;
  while ((pos = info.find("lane[", pos)) != std::string_view::npos) {
    std::size_t colon = info.find(':', pos);
    std::size_t eol = info.find('\n', pos);
    if (colon == std::string_view::npos || colon > eol) break;
    std::size_t start = info.find(':', colon + 1);
    if (start == std::string_view::npos || start > eol) {
      pos = eol;
      continue;
    }
    ++start;
    std::size_t end = info.find_first_of(" \t.\n", start);
    std::string lane(info.substr(start, end - start));
    if (std::find(result.begin(), result.end(), lane) == result.end()) result.push_back(lane);
    pos = eol == std::string_view::npos ? info.size() : eol;
  }
  return result;
}

bool allLanesTcp(const std::vector<std::string>& lanes) {
  return !lanes.empty() && std::all_of(lanes.begin(), lanes.end(), [](const std::string& lane) {
    return lane.rfind("tcp/", 0) == 0;
  });
}

bool isTcpFallback(const std::vector<std::string>& lanes) {
  // On one host shared memory beats RDMA; only all-TCP lanes are a fallback.
  return allLanesTcp(lanes);
}

bool isSharedMemoryLane(const std::string& lane) {
  for (std::string_view shm : {"posix/", "sysv/", "cma/", "xpmem/", "knem/"}) {
    if (lane.rfind(shm, 0) == 0) return true;
  }
  return false;
}

void Worker::checkLanes(Connection& connection) {
  if (device_.kind != DeviceKind::rdma) return;
  std::vector<std::string> used = lanes(connection);
  if (!isTcpFallback(used)) return;
  bumpCounter(&TransportCounters::rdma_fallbacks);
  std::string message = fmt::format(
      "connection to {} on RDMA device {} uses no RDMA lane (lanes: {}); traffic goes over TCP",
      connection.peer, device_.name, fmt::join(used, ", "));
  if (config_.require_rdma) {
    fail(connection, Status(StatusCode::unsupported, message + " (DUALPATH_NET_REQUIRE_RDMA=1)"));
  } else {
    DP_LOG_WARN("transport: {}", message);
  }
}

// ---------------------------------------------------------------- puts over TCP

Connection* Worker::liveConnection(std::uint32_t local_id) {
  auto it = connections_.find(local_id);
  if (it == connections_.end()) return nullptr;
  Connection* c = it->second.get();
  return c->failure.isOk() && !c->retired ? c : nullptr;
}

void Worker::addRegion(const void* base, std::size_t length) {
  regions_.emplace_back(reinterpret_cast<std::uintptr_t>(base), length);
}

void Worker::removeRegion(const void* base, std::size_t length) {
  auto it = std::find(regions_.begin(), regions_.end(),
                      std::pair{reinterpret_cast<std::uintptr_t>(base), length});
  if (it != regions_.end()) regions_.erase(it);
}

ucs_status_t Worker::onPutData(const void* header, std::size_t header_length, void* data,
                               std::size_t length, const ucp_am_recv_param_t* param) {
  if (header_length != amput::kDataHeaderBytes) return UCS_OK;  // not ours: nothing to write
  const auto* h = static_cast<const std::byte*>(header);
  Connection* c = liveConnection(static_cast<std::uint32_t>(getLe(h, 4)));
  // A put of a connection that failed or closed is dropped: its sender's
  // put fails there, and our region may belong to someone else by now.
  if (c == nullptr) return UCS_OK;
  const std::uint64_t address = getLe(h + 8, 8);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    fail(*c, Status(StatusCode::corrupt,
                    fmt::format("peer {} sent a {}-byte put by rendezvous; puts over TCP are "
                                "eager", c->peer, length)));
    return UCS_OK;
  }
  const bool inside = std::any_of(regions_.begin(), regions_.end(), [&](const auto& region) {
    const auto [base, size] = region;
    return address >= base && address - base <= size && length <= size - (address - base);
  });
  if (!inside) {
    fail(*c, Status(StatusCode::corrupt,
                    fmt::format("peer {} put {} bytes at {:#x}, outside every region registered "
                                "here", c->peer, length, address)));
    return UCS_OK;
  }
  std::memcpy(reinterpret_cast<void*>(static_cast<std::uintptr_t>(address)), data, length);
  return UCS_OK;
}

ucs_status_t Worker::onPutFence(const void* header, std::size_t header_length) {
  if (header_length != amput::kFenceHeaderBytes) return UCS_OK;
  const auto* h = static_cast<const std::byte*>(header);
  Connection* c = liveConnection(static_cast<std::uint32_t>(getLe(h, 4)));
  if (c == nullptr) return UCS_OK;
  // One lane, in order: every put chunk sent before the fence has landed.
  c->pending_acks.emplace_back(static_cast<std::uint32_t>(getLe(h + 4, 4)), getLe(h + 8, 8));
  pumpAcks(*c);
  return UCS_OK;
}

void Worker::pumpAcks(Connection& c) {
  std::size_t sent = 0;
  for (; sent < c.pending_acks.size(); ++sent) {
    if (!c.failure.isOk() || c.dataEp() == nullptr) {
      sent = c.pending_acks.size();  // nobody to answer
      break;
    }
    ChunkContext* chunk = takeChunk(c);
    if (chunk == nullptr) break;  // on a later progress
    const auto [index, serial] = c.pending_acks[sent];
    putLe(chunk->am_header.data(), c.remote_id, 4);
    putLe(chunk->am_header.data() + 4, index, 4);
    putLe(chunk->am_header.data() + 8, serial, 8);
    chunk->ucx = &c;  // ackSent finds the connection here
    ucp_request_param_t param{};
    param.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    param.cb.send = &ackSent;
    param.user_data = chunk;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    void* op = ucp_am_send_nbx(c.dataEp(), kAmPutAck, chunk->am_header.data(),
                               amput::kFenceHeaderBytes, nullptr, 0, &param);
    if (op == nullptr || UCS_PTR_IS_ERR(op)) {
      giveChunk(c, chunk);
    } else {
      ++c.ucx_outstanding;
    }
  }
  c.pending_acks.erase(c.pending_acks.begin(),
                       c.pending_acks.begin() + static_cast<std::ptrdiff_t>(sent));
}

ucs_status_t Worker::onPutAck(const void* header, std::size_t header_length) {
  if (header_length != amput::kFenceHeaderBytes) return UCS_OK;
  const auto* h = static_cast<const std::byte*>(header);
  Connection* c = liveConnection(static_cast<std::uint32_t>(getLe(h, 4)));
  if (c == nullptr) return UCS_OK;
  const std::uint64_t index = getLe(h + 4, 4);
  const std::uint64_t serial = getLe(h + 8, 8);
  if (index >= c->requests.size()) return UCS_OK;
  Request& r = c->requests[index];
  // The serial tells this put's fence from a recycled request's.
  if (r.in_use && r.kind == RequestKind::put && r.flush_posted && r.put_serial == serial) {
    r.flushed = true;
    r.last_progress_ns = qos::monotonicNowNs();
  }
  return UCS_OK;
}

}  // namespace dualpath::transport
