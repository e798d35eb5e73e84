// The transport core: connections, tagged messages and one-sided puts over
// UCX, with traffic classes from the QoS policy and the link arbiter on every
// post. The NCCL plugin and the loader's KV relays share one engine per
// process: the plugin depends on this shared library rather than carrying a
// copy, so Engine::shared() in the loader returns the engine, and the
// arbiters, that NCCL's connections use (docs/plugin.md, "One engine per
// process").
//
// Model (docs/plugin.md, "Transport"):
//  - One Engine per process. It owns, per (device, traffic class), a UCP
//    context and worker configured from the policy (UCX 1.13 sets IB SL and
//    traffic class per context, not per endpoint), and per device one
//    qos::LinkArbiter shared by every class on that NIC.
//  - Listen returns a 128-byte ConnectHandle that the application ships to
//    the peer; connect and accept never block: they return `again` until the
//    UCX handshake and our hello/welcome exchange have finished.
//  - Endpoints are bidirectional. Sends match receives in posting order; the
//    tag only picks a buffer within a grouped receive (NCCL's rule). A
//    receive may be larger than the send; the real size is reported.
//  - Low-priority messages and puts larger than the arbiter's chunk are sent
//    in chunks, each one granted by the arbiter, so a collective never waits
//    behind megabytes of KV.
//  - A dead or silent peer fails outstanding operations with `remote` or
//    `timeout` within DUALPATH_NET_TIMEOUT_MS. Nothing waits unbounded.
//
// Threading: every member function is thread-safe. Calls on one endpoint,
// listener or connector serialize on their worker's lock, so setup calls on
// one thread and data calls on another (NCCL's service and progress threads)
// are fine. Progress happens inside poll()/test(); there is no thread.
// Fast path (postSend/postRecv/postPut/test): no allocation, no system call
// other than the socket I/O UCX itself does, one worker lock, one arbiter
// lock. Requests come from a per-endpoint pool sized by EndpointLimits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/qos/arbiter.h>
#include <dualpath/qos/policy.h>
#include <dualpath/transport/device.h>

namespace dualpath::transport {

class Engine;
class Worker;

inline constexpr std::size_t kConnectHandleBytes = 128;  // the size of NCCL's handle buffer
inline constexpr std::uint8_t kAnyClass = 0xff;
inline constexpr std::size_t kMaxRecvsPerRequest = 8;  // grouped receive width
inline constexpr std::size_t kMaxRequestsPerEndpoint = 32;  // NCCL's requests in flight per comm

// What listen() produces and connect() consumes. Trivially copyable, fixed
// layout, integers in network byte order, so it can cross hosts as bytes.
// `stage` is local scratch for connect's retries (NCCL hands the same buffer
// back on every call); it is never read from a remote handle.
struct ConnectHandle {
  std::uint32_t magic;     // kConnectHandleMagic
  std::uint16_t version;   // kConnectHandleVersion
  std::uint8_t class_index;  // a class, or kAnyClass: one listener per class
  std::uint8_t family;       // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> address;
  std::array<std::uint16_t, qos::kMaxTrafficClasses> ports;  // per class; 0 = none
  std::uint64_t listener_id;    // echoed in the hello so a stale handle is refused
  std::uint64_t policy_digest;  // both ends must run the same class table
  std::uint64_t stage;          // local: the Connector* of a pending connect
  std::uint64_t engine_id;      // the listener's engine and device: names its workers
  std::uint8_t device_index;
  std::array<std::uint8_t, 39> reserved;
};
static_assert(std::is_trivially_copyable_v<ConnectHandle>);
static_assert(std::is_standard_layout_v<ConnectHandle>);
static_assert(sizeof(ConnectHandle) == kConnectHandleBytes);
inline constexpr std::uint32_t kConnectHandleMagic = 0x44505448;  // "DPTH"
inline constexpr std::uint16_t kConnectHandleVersion = 2;

struct EngineConfig {
  qos::Policy policy;
  DeviceFilter devices;
  std::uint32_t timeout_ms = 30'000;
  bool require_rdma = false;
};

// Counters an operator reads to see what the transport did.
struct TransportCounters {
  std::uint64_t connections = 0;
  std::uint64_t rdma_fallbacks = 0;  // RDMA device, but UCX chose TCP lanes
  std::uint64_t timeouts = 0;
  std::uint64_t peer_failures = 0;
  // Small sends that went over the connection both workers picked as their
  // reply route, instead of their own (TCP only; docs/plugin.md).
  std::uint64_t reply_route_sends = 0;
};

// Registered memory. Owned by the caller; must outlive every operation that
// uses it. Deregister by destroying it.
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual void* base() const noexcept = 0;
  virtual std::size_t length() const noexcept = 0;
  // Bytes a peer passes to Endpoint::importRemote() to put into this region.
  virtual Result<std::vector<std::byte>> packRemoteKey() const = 0;
};

// A peer's registered region, imported on one endpoint.
class RemoteRegion {
 public:
  virtual ~RemoteRegion() = default;
  virtual std::uint64_t base() const noexcept = 0;
  virtual std::size_t length() const noexcept = 0;
};

struct RecvSlot {
  void* data = nullptr;
  std::size_t capacity = 0;
  std::uint32_t tag = 0;
};

// An operation in flight. Owned by its endpoint; valid until test() reports
// it done or failed, after which it is recycled.
class Request;

class Endpoint {
 public:
  virtual ~Endpoint() = default;  // closes without waiting for the peer

  // Each post returns `again` when it cannot post now: no free request, the
  // arbiter refused the first chunk, or the connection is still flushing.
  // Retrying later is the whole contract. `remote`/`timeout` once the
  // connection failed; `invalid_argument` for bad arguments, with a reason.
  virtual Result<Request*> postSend(const void* data, std::size_t size, std::uint32_t tag,
                                    const MemoryRegion* region) noexcept = 0;
  virtual Result<Request*> postRecv(std::span<const RecvSlot> slots) noexcept = 0;
  // Writes `size` bytes from `local` into `remote` at `remote_offset`. Done
  // means the bytes are visible in the peer's memory (remote completion).
  virtual Result<Request*> postPut(const void* local, std::size_t size,
                                   const MemoryRegion* local_region, const RemoteRegion& remote,
                                   std::size_t remote_offset) noexcept = 0;

  virtual Result<std::unique_ptr<MemoryRegion>> registerMemory(void* data,
                                                               std::size_t size) = 0;
  virtual Result<std::unique_ptr<RemoteRegion>> importRemote(std::span<const std::byte> packed_key,
                                                             std::uint64_t remote_base,
                                                             std::size_t length) = 0;

  virtual std::uint8_t classIndex() const noexcept = 0;
  virtual const std::string& peerName() const noexcept = 0;  // "127.0.0.1:40123"
  // The UCX lanes this connection uses ("tcp/lo", "posix/memory", ...).
  virtual std::vector<std::string> lanes() const = 0;
};

class Listener {
 public:
  virtual ~Listener() = default;
  // One connection per call. `again` until a peer has connected and said
  // hello. Never blocks.
  virtual Result<std::unique_ptr<Endpoint>> tryAccept() noexcept = 0;
};

class Connector {
 public:
  virtual ~Connector() = default;
  // `again` until the handshake is done; `remote` or `timeout` with the peer's
  // address if it fails. Never blocks.
  virtual Result<std::unique_ptr<Endpoint>> poll() noexcept = 0;
};

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  // Builds an engine: queries UCX devices, applies the filter. Contexts and
  // workers are created lazily, on first use of a (device, class).
  static Result<std::shared_ptr<Engine>> create(EngineConfig config);
  // The process's engine, from DUALPATH_* parameters and DUALPATH_QOS_POLICY.
  // Created on the first call; later calls return the same engine while
  // anyone holds it. The NCCL plugin uses this one: a loader that should be
  // arbitrated together with NCCL's collectives must use it too, not create().
  static Result<std::shared_ptr<Engine>> shared();

  virtual ~Engine() = default;

  virtual const std::vector<DeviceInfo>& devices() const noexcept = 0;
  virtual const qos::Policy& policy() const noexcept = 0;
  virtual const EngineConfig& config() const noexcept = 0;

  // `class_index` is a policy class, or kAnyClass to accept any class (one
  // UCX listener per class; the handle carries each port).
  virtual Result<std::unique_ptr<Listener>> listen(std::size_t device, std::uint8_t class_index,
                                                   ConnectHandle* handle) = 0;
  // Starts connecting to `handle` on `class_index` (kAnyClass: the handle's
  // class). Fails at once on a malformed or foreign handle.
  virtual Result<std::unique_ptr<Connector>> connect(std::size_t device,
                                                     const ConnectHandle& handle,
                                                     std::uint8_t class_index) = 0;

  // The arbiter of one device's link, shared by every class on it.
  virtual qos::LinkArbiter& arbiter(std::size_t device) = 0;
  virtual TransportCounters counters() const = 0;
};

// Progresses the request's worker, then reports whether `request` finished.
// When done, `sizes` (if not empty) gets each receive slot's received bytes
// (the size for a send or put) and the request is recycled. A failed request
// returns its error and is recycled too. `reported`, when given, gets how
// many entries of `sizes` were written (the receive's slot count, or 1).
// Never blocks.
Status test(Request* request, bool* done, std::span<std::size_t> sizes,
            std::size_t* reported = nullptr) noexcept;

// Fingerprint of the class table (names, priorities, order) in a handle.
std::uint64_t policyDigest(const qos::Policy& policy) noexcept;

}  // namespace dualpath::transport
