// Internal: one UCP context and worker for a (device, traffic class), and the
// state of every connection, listener and connect attempt on it.
//
// Ownership: the Worker owns every Connection and ListenerState in its maps;
// the public Endpoint/Listener/Connector objects hold a shared_ptr to the
// Worker and a raw pointer to their state, and hand the state back with
// retire*() when destroyed. A retired connection stays until UCX has
// finished every request that points into it (callbacks write into its
// request pool), so no UCX callback ever sees freed memory.
//
// Threading: `mu` guards everything below it, including every UCX call on
// this worker. UCX callbacks run inside ucp_worker_progress(), which we only
// call with `mu` held, so they run under it too.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <ucp/api/ucp.h>

#include <dualpath/common/status.h>
#include <dualpath/common/thread_annotations.h>
#include <dualpath/qos/arbiter.h>
#include <dualpath/transport/transport.h>

namespace dualpath::transport {

class Worker;
struct Connection;

// The UCX lanes of an endpoint, as "transport/device" ("tcp/lo",
// "posix/memory"), from ucp_ep_print_info.
std::vector<std::string> lanesOf(ucp_ep_h ep);
// The transports a context may use, as "transport/device", from
// ucp_context_print_info's resource lines.
std::vector<std::string> resourcesOf(ucp_context_h context);
bool isSharedMemoryLane(const std::string& lane);
// True when a connection on an RDMA device got only TCP lanes.
bool isTcpFallback(const std::vector<std::string>& lanes);
// Every lane is TCP (then UCX has no RMA lane, and puts go as amput).
bool allLanesTcp(const std::vector<std::string>& lanes);

// UCX status as ours: peer failures are `remote`, timeouts `timeout`,
// resource exhaustion `again`, the rest `io`.
Status fromUcs(ucs_status_t status, std::string_view what);

// Tag layout (64 bits): [63] 0 | [62:43] receiver's endpoint id | [42:11] the
// caller's tag | [10:0] per-tag sequence. Receivers match every bit.
//
// Chunks: a sender with chunk size C (the arbiter's maxPostBytes for the
// class; unlimited for high priority) sends a message of S bytes as
// floor(S / C) + 1 messages of one tag: full chunks, then one shorter chunk
// (possibly empty). The receiver, told C in the handshake, reposts the rest of
// its buffer after every full chunk and stops at the first short one. (UCX
// 1.13 does not report the sender's tag reliably for rendezvous receives, so
// the length is the only end-of-message signal we use.)
namespace tagbits {
inline constexpr unsigned kEndpointIdBits = 20;
inline constexpr unsigned kSeqBits = 11;
inline constexpr std::uint64_t kMatchAll = ~std::uint64_t{0};
inline constexpr std::uint32_t kMaxEndpointId = (1u << kEndpointIdBits) - 1;
inline std::uint64_t make(std::uint32_t endpoint_id, std::uint32_t tag, std::uint32_t seq) {
  return (std::uint64_t{endpoint_id} << 43) | (std::uint64_t{tag} << kSeqBits) |
         std::uint64_t{seq & ((1u << kSeqBits) - 1)};
}
inline std::uint32_t callerTag(std::uint64_t bits) {
  return static_cast<std::uint32_t>(bits >> kSeqBits);
}
}  // namespace tagbits

// A worker's name across processes: its engine's random id with the device
// index and class in the low 16 bits. Two workers compare names to agree on
// which of their connections is the reply route (Worker::sendEp).
inline std::uint64_t workerId(std::uint64_t engine_id, std::uint8_t device, std::uint8_t cls) {
  return (engine_id & ~std::uint64_t{0xffff}) | (std::uint64_t{device} << 8) | cls;
}

// Counts messages per caller tag, so the k-th send with tag t meets the k-th
// receive buffer with tag t: NCCL's "posting order, tag picks the buffer".
class TagSequences {
 public:
  static constexpr std::size_t kMaxTags = 64;
  // The next sequence number for `tag`; `invalid_usage` past kMaxTags tags.
  Result<std::uint32_t> next(std::uint32_t tag) noexcept;
  // Returns the latest number of `tag` when its message could not be posted
  // after all (the caller retries and must get the same number).
  void giveBack(std::uint32_t tag) noexcept;

 private:
  struct Entry {
    std::uint32_t tag = 0;
    std::uint32_t next = 0;
  };
  std::array<Entry, kMaxTags> entries_{};
  std::size_t used_ = 0;
};

enum class RequestKind : std::uint8_t { send, recv, put };

struct RecvState {
  char* data = nullptr;
  std::size_t capacity = 0;
  std::size_t received = 0;
  std::uint64_t tag_bits = 0;
  void* ucx = nullptr;  // the posted ucp request, for cancel
  bool done = false;
  bool repost = false;  // a middle chunk arrived: post the next one
};

}  // namespace dualpath::transport

// Request lives in the public namespace's forward declaration.
namespace dualpath::transport {

class Request {
 public:
  Connection* connection = nullptr;
  RequestKind kind = RequestKind::send;
  bool in_use = false;
  Status failure;  // first error seen
  qos::TimeNs last_progress_ns = 0;

  // send and put
  const char* data = nullptr;
  std::size_t size = 0;
  std::size_t chunks_total = 0;   // see tagbits: sends end with a short chunk
  std::size_t chunks_posted = 0;
  std::size_t inflight = 0;       // UCX operations not yet completed
  std::uint64_t tag_bits = 0;
  ucp_rkey_h rkey = nullptr;
  std::uint64_t remote_addr = 0;
  bool flush_posted = false;
  bool flushed = false;
  // Puts as active messages (Connection::am_puts): the fence that the peer
  // acknowledges once every earlier put landed, named by this serial.
  std::uint64_t put_serial = 0;

  // recv
  std::uint8_t slot_count = 0;
  std::array<RecvState, kMaxRecvsPerRequest> slots{};

  bool finished() const;
};

// A per-chunk completion context: which request and how many bytes.
struct ChunkContext {
  Request* request = nullptr;  // null for a put acknowledgement we send
  std::size_t bytes = 0;
  std::uint8_t slot = 0;
  void* ucx = nullptr;  // the UCX request while it is outstanding
  // An active message's header: UCX 1.13 reads it until the send completes.
  std::array<std::byte, 16> am_header{};
};

// Puts over TCP. UCX 1.13 has no RMA lane on TCP and emulates puts with its
// own active messages, whose target-side handler aborts the process when it
// acknowledges a put from a peer that just failed (docs/plugin.md, "Puts over
// TCP"). A connection whose lanes are all TCP therefore carries each put
// chunk as one of our active messages, written into the registered region by
// our handler, and completes the put with a fence that the peer acknowledges
// once every earlier chunk landed (one lane: in order).
namespace amput {
// [0, 4) target connection id | [4, 8) zero | [8, 16) target address
inline constexpr std::size_t kDataHeaderBytes = 16;
// [0, 4) connection id (the receiver's) | [4, 8) request index | [8, 16) serial
inline constexpr std::size_t kFenceHeaderBytes = 16;
}  // namespace amput

// One pending endpoint close: the callback may run before ucp_ep_close_nbx
// returns, so it records completion here rather than in a counter.
struct CloseSlot {
  Connection* connection = nullptr;
  void* request = nullptr;  // outstanding UCX request, or null
  bool done = false;
};

struct Connection {
  Worker* worker = nullptr;
  ucp_ep_h ep = nullptr;       // client-server endpoint: handshake and failure detection
  ucp_ep_h data_ep = nullptr;  // to the peer's data worker: every data operation
  ucp_ep_h dataEp() const { return data_ep != nullptr ? data_ep : ep; }
  std::array<CloseSlot, 2> close_slots{};  // data_ep, ep
  void* handshake_request = nullptr;       // the hello or welcome in flight
  bool handshake_done = false;
  bool established = false;  // welcomed (client) or hello accepted (server)
  std::uint64_t peer_worker = 0;  // workerId() of the other end; 0 until known
  bool counted_live = false;      // counted in its PeerRoutes::live
  // The reply route, retired by its owner but kept open for the other
  // connections to the same peer worker (Worker::retire).
  bool parked = false;
  std::uint32_t local_id = 0;
  std::uint32_t remote_id = 0;
  std::string peer;
  Status failure;  // set once; every later post fails with it
  bool retired = false;
  bool close_posted = false;
  bool closed = false;
  std::size_t ucx_outstanding = 0;  // UCX requests pointing into this connection
  std::uint64_t peer_chunk_bytes = 0;  // the peer's chunk size for our class
  bool am_puts = false;  // every lane is TCP: puts go as our active messages
  bool tcp_only = false;  // every lane is TCP: small sends may take the reply route
  // Both ends send over data endpoints, so messages arrive at the data
  // worker; else over the client-server endpoints, at the control worker.
  // Decided by the server and told in the welcome, so both ends agree.
  bool on_data_worker = false;
  bool counts_as_control_data = false;  // counted in control_data_connections_
  // Fences the peer asked us to acknowledge, waiting for a chunk to send in.
  std::vector<std::pair<std::uint32_t, std::uint64_t>> pending_acks;

  std::vector<Request> requests;        // fixed pool; addresses are stable
  std::vector<Request*> free_requests;
  std::size_t recvs_in_use = 0;
  std::size_t sends_in_use = 0;  // sends and puts
  std::vector<Request*> pending_posts;  // FIFO of sends/puts with chunks to post
  std::vector<ChunkContext> chunk_pool;
  std::vector<ChunkContext*> free_chunks;
  TagSequences send_sequences;
  TagSequences recv_sequences;

  // Handshake message buffers: UCX reads them until the send completes.
  std::array<std::byte, 64> hello{};
  std::array<std::byte, 64> welcome{};
};

struct ListenerState {
  Worker* worker = nullptr;
  ucp_listener_h listener = nullptr;
  std::uint64_t listener_id = 0;
  std::deque<Connection*> ready;  // said hello; waiting for tryAccept()
};

struct ConnectState {
  Connection* connection = nullptr;  // owned by the worker; ep created
  bool welcomed = false;
  Status failure;
  qos::TimeNs started_ns = 0;
};

class Worker {
 public:
  static Result<std::shared_ptr<Worker>> create(std::uint64_t worker_id,
                                                const DeviceInfo& device,
                                                const qos::Policy& policy,
                                                std::uint8_t class_index,
                                                const EngineConfig& config,
                                                std::shared_ptr<qos::LinkArbiter> arbiter,
                                                std::shared_ptr<TransportCounters> counters,
                                                std::shared_ptr<Mutex> counters_mu);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  Mutex mu;

  // All below: caller holds mu.
  void progress() DP_REQUIRES(mu);
  Result<ListenerState*> createListener(std::uint16_t* port) DP_REQUIRES(mu);
  void destroyListener(ListenerState* state) DP_REQUIRES(mu);
  // `peer_worker`: the workerId() of the handle's listener for this class.
  Result<ConnectState*> startConnect(const ConnectHandle& handle, std::uint16_t port,
                                     std::uint64_t peer_worker) DP_REQUIRES(mu);
  void abandonConnect(ConnectState* state) DP_REQUIRES(mu);
  void retire(Connection* connection) DP_REQUIRES(mu);
  void fail(Connection& connection, Status reason) DP_REQUIRES(mu);
  void pumpPosts(Connection& connection, qos::TimeNs now) DP_REQUIRES(mu);
  void postRecvSlot(Request& request, std::uint8_t slot) DP_REQUIRES(mu);
  ChunkContext* takeChunk(Connection& connection) DP_REQUIRES(mu);
  void giveChunk(Connection& connection, ChunkContext* chunk) DP_REQUIRES(mu);
  Result<Request*> acquireRequest(Connection& connection, RequestKind kind) DP_REQUIRES(mu);
  void finishRequest(Request& request) DP_REQUIRES(mu);
  bool postFlush(Connection& connection, Request& request) DP_REQUIRES(mu);
  void queueRepost(Request& request, std::uint8_t slot) DP_REQUIRES(mu) {
    reposts_.emplace_back(&request, slot);
  }
  std::vector<std::string> lanes(const Connection& connection) DP_REQUIRES(mu);

  ucp_context_h context() const { return context_; }
  // Sends that went over the reply route rather than their own connection.
  std::uint64_t replyRouteSends() const {
    return reply_route_sends_.load(std::memory_order_relaxed);
  }
  qos::LinkArbiter& arbiter() const { return *arbiter_; }
  std::uint8_t classIndex() const { return class_index_; }

  // UCX callbacks (static trampolines call these).
  void onConnRequest(ListenerState* listener, ucp_conn_request_h request) DP_REQUIRES(mu);
  void onEpError(ucp_ep_h ep, ucs_status_t status) DP_REQUIRES(mu);
  ucs_status_t onHello(const void* header, std::size_t length,
                       std::span<const std::byte> peer_address, ucp_ep_h reply_ep) DP_REQUIRES(mu);
  ucs_status_t onWelcome(const void* header, std::size_t length,
                         std::span<const std::byte> peer_address) DP_REQUIRES(mu);
  const std::vector<std::byte>& address() const { return address_; }
  ucs_status_t onPutData(const void* header, std::size_t header_length, void* data,
                         std::size_t length, const ucp_am_recv_param_t* param) DP_REQUIRES(mu);
  ucs_status_t onPutFence(const void* header, std::size_t header_length) DP_REQUIRES(mu);
  ucs_status_t onPutAck(const void* header, std::size_t header_length) DP_REQUIRES(mu);

  // Regions registered on this worker: where a peer's active-message put may
  // write.
  void addRegion(const void* base, std::size_t length) DP_REQUIRES(mu);
  void removeRegion(const void* base, std::size_t length) DP_REQUIRES(mu);

 private:
  Worker(std::uint64_t worker_id, DeviceInfo device, std::uint8_t class_index,
         EngineConfig config, std::shared_ptr<qos::LinkArbiter> arbiter,
         std::shared_ptr<TransportCounters> counters, std::shared_ptr<Mutex> counters_mu);
  Status init(const qos::Policy& policy);
  Result<Connection*> newConnection(ucp_ep_h ep, std::string peer) DP_REQUIRES(mu);
  Result<ucp_ep_h> createEp(ucp_worker_h worker, ucp_ep_params_t& params,
                            const std::string& peer, bool detect_peer_failure) DP_REQUIRES(mu);
  Status registerAmHandlers(ucp_worker_h worker, const std::string& what);
  void checkTimeouts(qos::TimeNs now) DP_REQUIRES(mu);
  void reapRetired() DP_REQUIRES(mu);
  void closeEp(Connection& connection, bool force) DP_REQUIRES(mu);
  void checkLanes(Connection& connection) DP_REQUIRES(mu);
  Connection* findByEp(ucp_ep_h ep) DP_REQUIRES(mu);
  // Where the connection's messages arrive, and so where its receives go.
  ucp_worker_h recvWorker(const Connection& connection) const {
    return connection.on_data_worker ? data_worker_ : worker_;
  }
  // Records where an established connection's data runs (see progress()).
  void settleDataPath(Connection& connection, bool on_data_worker) DP_REQUIRES(mu);
  void releaseDataPath(Connection& connection) DP_REQUIRES(mu);
  // Server (`required` false): opens a data endpoint and keeps it if UCX
  // gives it shared memory. Client (`required` true, when the welcome says
  // the server did): the same, but no shared memory is an error.
  Status openDataEp(Connection& connection, std::span<const std::byte> peer_address,
                    bool required) DP_REQUIRES(mu);
  void bumpCounter(std::uint64_t TransportCounters::*counter);

  // Reply routes. NCCL's comms are one-way, so a ping and its pong travel on
  // two connections; over TCP each direction then has its own socket, and
  // the receiving kernel sends a bare ACK for every message (measured: +2.4
  // us one way on loopback). Between two workers, one connection opened by
  // the lower-named worker is the reply route: both workers send their small
  // single-chunk messages over it, so each reply carries the ACK of the
  // message before it. Tags name the receiving connection, so any endpoint
  // to the peer worker delivers correctly; the route only has to stay open
  // while either side may still send over it: while its worker has any
  // unretired connection to that peer.
  struct PeerRoutes {
    Connection* route = nullptr;
    std::size_t live = 0;  // unretired connections to the peer worker
  };
  ucp_ep_h sendEp(Connection& connection, const Request& request) DP_REQUIRES(mu);
  void countLive(Connection& connection) DP_REQUIRES(mu);
  void setRoute(std::uint64_t peer_worker, Connection* route) DP_REQUIRES(mu);
  // Called when `connection` retires: parks it if it is the route and
  // other connections to its peer remain, and lets a parked route go once
  // none do. Returns whether it parked `connection`.
  bool releaseOnRetire(Connection& connection) DP_REQUIRES(mu);
  // A failed route is no route; a parked one closes now.
  void forgetRoute(Connection& connection) DP_REQUIRES(mu);
  void unpark(Connection& connection) DP_REQUIRES(mu);

  const std::uint64_t worker_id_;
  const DeviceInfo device_;
  const std::uint8_t class_index_;
  const EngineConfig config_;
  std::shared_ptr<qos::LinkArbiter> arbiter_;
  std::shared_ptr<TransportCounters> counters_;
  std::shared_ptr<Mutex> counters_mu_;
  std::uint64_t policy_digest_ = 0;

  ucp_context_h context_ = nullptr;
  bool context_has_shared_memory_ = false;  // else no data endpoint is worth opening
  // Two UCX workers when the context has shared memory. The control worker
  // holds the listener and the client-server endpoints, which must keep TCP
  // lanes to detect a dead peer (UCX 1.13's shared-memory transports cannot);
  // the data worker holds the shared-memory data endpoints. Progressing a
  // worker with TCP lanes costs an epoll_wait system call every time, so the
  // control worker is progressed only every kControlProgressStride calls
  // while no established connection carries data over it (measured: shm
  // ping-pong 2.0 us -> 0.8 us one way; docs/performance.md). Without shared
  // memory there is one worker and `data_worker_` is null.
  ucp_worker_h worker_ = nullptr;
  ucp_worker_h data_worker_ = nullptr;
  std::vector<std::byte> address_;  // the data worker's (else the worker's), sent in the handshake
  std::size_t control_data_connections_ DP_GUARDED_BY(mu) = 0;
  std::uint32_t control_progress_skipped_ DP_GUARDED_BY(mu) = 0;

  std::uint32_t next_endpoint_id_ DP_GUARDED_BY(mu) = 1;
  std::unordered_map<std::uint32_t, std::unique_ptr<Connection>> connections_ DP_GUARDED_BY(mu);
  std::size_t retired_count_ DP_GUARDED_BY(mu) = 0;  // retired, not yet reaped
  std::unordered_map<ucp_ep_h, Connection*> by_ep_ DP_GUARDED_BY(mu);
  // Server side: accepted UCX endpoints that have not said hello yet.
  struct Accepting {
    ListenerState* listener = nullptr;
    Connection* connection = nullptr;
    qos::TimeNs created_ns = 0;
  };
  std::vector<Accepting> accepting_ DP_GUARDED_BY(mu);
  std::vector<std::unique_ptr<ListenerState>> listeners_ DP_GUARDED_BY(mu);
  std::vector<std::unique_ptr<ConnectState>> connects_ DP_GUARDED_BY(mu);
  qos::TimeNs last_timeout_scan_ns_ DP_GUARDED_BY(mu) = 0;
  std::vector<std::pair<Request*, std::uint8_t>> reposts_ DP_GUARDED_BY(mu);
  std::vector<std::pair<Request*, std::uint8_t>> reposting_ DP_GUARDED_BY(mu);
  // (base, length), one entry per registration: a buffer may be registered
  // on several endpoints of this worker.
  std::vector<std::pair<std::uintptr_t, std::size_t>> regions_ DP_GUARDED_BY(mu);
  std::uint64_t next_put_serial_ DP_GUARDED_BY(mu) = 1;
  std::unordered_map<std::uint64_t, PeerRoutes> peers_ DP_GUARDED_BY(mu);
  std::atomic<std::uint64_t> reply_route_sends_{0};

  void pumpAcks(Connection& connection) DP_REQUIRES(mu);
  Connection* liveConnection(std::uint32_t local_id) DP_REQUIRES(mu);
};

}  // namespace dualpath::transport
