// The KV relay: the DE read path of DualPath. The decode engine's node reads
// a request's Full Blocks from its storage into its DE host buffer, then for
// each layer l writes every block's Layer Block l into the prefill engine's
// host buffer with one-sided puts (traffic class `kv`) and tells the PE once
// layer l has landed, so the PE's copy engine can move layer l to the device
// (LayerCopyEngine::layerArrived(l)) while later layers are still in flight.
//
//   DE node: RelayServer                      PE node: RelayClient
//     <-- request (ids, PE slot offsets, PE remote key, budget) --
//     store.submit(each block) -> DE buffer; reaped by store.poll(); each
//       block's puts start as soon as it is read (see below)
//     -- block_failed(index, id, status) -->   one per block the DE could not read
//     put Layer Block 0 of every good block; wait for remote completion
//     -- layer_landed(0, blocks) ---------->   event: layer 0 landed
//     ... layers 1 .. L-1, puts of l+1 in flight while l completes ...
//     -- done(status) --------------------->   event: finished
//
// Guarantees (docs/loader.md, "The KV relay"):
//  - Only verified bytes are announced. A block whose DE read failed (not
//    found, corrupt, io, timeout) is reported by id before any layer_landed
//    of its request and is never put; layer_landed(l) means Layer Block l of
//    every other block is visible in the PE buffer (each put is flushed to
//    remote completion before the notice is sent).
//  - Per request, layer_landed events come in layer order, each exactly once,
//    and `finished` comes last, exactly once. After `finished` the DE writes
//    nothing more into the request's PE slots: the DE acknowledged (done), or
//    the connection is closed.
//  - Every wait is bounded. The client ends a relay with `timeout` when its
//    deadline passes (it then cancels on the DE and waits at most
//    cancel_grace for the DE's acknowledgement; without one it closes the
//    endpoint) and with `remote`/`timeout` when the peer dies or stalls
//    (DUALPATH_NET_TIMEOUT_MS on the transport's sends and puts). Errors name
//    the request, the block (BlockId::toHex), the layer and the peer.
//
// Ownership: each side owns its endpoint, so that closing it is the fence
// that stops puts into (or from) its buffer, and registers its BufferPool's
// whole region with that endpoint. The pool, the store and the endpoint's
// Engine must outlive the server or client. Destroying a server or client
// closes the endpoint without waiting for the peer.
//
// Threading: no internal thread. A server or client is driven by one thread at
// a time (its poll(), and the client's startRelay()); it is not thread-safe
// itself, but other components may use the same Engine from other threads.
// Neither poll() waits: the server submits a request's reads as soon as it
// has DE buffer slots for them and reaps them with the store's non-blocking
// poll (a batch whose budget has run out is ended by store.wait() with its
// past deadline, which returns at once). So the server reads the next
// requests while the active one's puts are on the wire; it relays one
// request at a time, in arrival order. Each block is its own read batch (a
// batch's buffers are the store's until all of it is reaped), so the active
// relay puts a block's layers as soon as that block is read; its layer
// notices start once every read of the request has its outcome.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>
#include <dualpath/loader/block_store.h>
#include <dualpath/loader/buffer_pool.h>
#include <dualpath/transport/transport.h>

namespace dualpath::loader {

// Blocks in one relay request (the request message must fit one receive).
inline constexpr std::size_t kMaxRelayBlocks = 4096;
// Relays a client keeps in flight on one endpoint; startRelay says `again`
// beyond it. The server reads them as soon as it has DE buffer slots for
// them and relays them one at a time, in order.
inline constexpr std::size_t kMaxRelaysInFlight = 8;

// What the PE asks the DE for.
struct RelayRequest {
  std::uint64_t request_id = 0;  // unique among the client's relays in flight
  std::vector<BlockId> blocks;   // in order; 1 to kMaxRelayBlocks
  // Per block: where its Full Block lands, as an offset in the PE pool's
  // region (BufferLease::offset()). Layer Block l of block b goes to
  // slot_offsets[b] + l x layerBlockBytes(). Slots must not overlap.
  std::vector<std::uint64_t> slot_offsets;
  Deadline deadline{};
};

enum class RelayEventKind : std::uint8_t {
  block_failed,  // the DE could not read a block: the PE must read it itself
  layer_landed,  // Layer Block `layer` of every block not reported failed landed
  finished,      // the relay ended; the last event of the request
};

struct RelayEvent {
  RelayEventKind kind = RelayEventKind::finished;
  std::uint64_t request_id = 0;
  // layer_landed: the layer, and how many blocks it covers.
  std::uint32_t layer = 0;
  std::uint32_t blocks = 0;
  // block_failed: the block's position in RelayRequest::blocks, and its id.
  std::size_t block_index = 0;
  BlockId block;
  // block_failed: the DE store's outcome (not_found, corrupt, io, timeout),
  // with the DE's message. finished: ok, or why the relay failed.
  Status status;
  // finished: layers announced, and the blocks the PE must read on the PE
  // path: the failed ones after an ok relay, every block after a failed one.
  std::uint32_t layers_landed = 0;
  std::vector<BlockId> missing;
};

// What a server did. Counts only grow.
struct RelayServerCounters {
  std::uint64_t requests = 0;       // well-formed relay requests received
  std::uint64_t relays_done = 0;    // ended with done(ok)
  std::uint64_t relays_failed = 0;  // ended with done(error), cancelled, or lost
  std::uint64_t blocks_failed = 0;  // DE reads reported as block_failed
  std::uint64_t layers_landed = 0;  // layer_landed notices sent
  std::uint64_t bytes_put = 0;      // payload bytes remote-completed
  // Relays whose reads were submitted (they got their DE buffer slots), and
  // those whose reads were submitted while an earlier relay of this server
  // was still being served: the DE's reads overlapping another relay's puts.
  std::uint64_t read_batches = 0;
  std::uint64_t read_batches_overlapped = 0;
};

struct RelayServerOptions {
  // The largest put. A block's consecutive Layer Blocks are adjacent in the
  // DE buffer and in the PE slot, so up to this many bytes of them go as one
  // put: fewer puts (and, over tcp, fewer emulated puts and flushes, each a
  // round trip), at the price of layer notices in groups of that many layers
  // (each layer is still announced separately, in order). 0, or less than a
  // Layer Block: one put per Layer Block.
  std::uint64_t max_put_bytes = 0;
};

// Runs on the DE node: serves the relay requests that arrive on its endpoint.
class RelayServer {
 public:
  // `endpoint`: connected, on the `kv` class. `store`: the DE node's
  // storage, of geometry `model`. `pool`: the DE buffer, slots of at least one
  // Full Block; a request needs one slot per block. invalid_argument for a
  // mismatched geometry or too small slots; the transport's error when the
  // pool cannot be registered.
  static Result<std::unique_ptr<RelayServer>> create(std::unique_ptr<transport::Endpoint> endpoint,
                                                     BlockStore& store, BufferPool& pool,
                                                     const ModelSpec& model,
                                                     RelayServerOptions options = {});
  ~RelayServer();
  RelayServer(const RelayServer&) = delete;
  RelayServer& operator=(const RelayServer&) = delete;

  // Advances every state machine once: receives requests and cancels, reads
  // blocks, posts and completes puts, sends notices. ok while the connection
  // lives; the connection's error (remote, timeout) once it failed, after
  // which every call returns it and nothing is served. A malformed request is
  // answered with done(corrupt) and logged; it does not end the server.
  Status poll();

  RelayServerCounters counters() const noexcept;
  const std::string& peerName() const noexcept;

 private:
  struct State;
  explicit RelayServer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

struct RelayClientOptions {
  // After its deadline a relay is cancelled on the DE; the client waits this
  // long for the DE to acknowledge (its puts into the PE slots have stopped)
  // before it closes the endpoint. 0: DUALPATH_NET_TIMEOUT_MS.
  std::chrono::milliseconds cancel_grace{0};
};

// Runs on the PE node: asks the DE for relays and reports what landed.
class RelayClient {
 public:
  // `endpoint`: connected to a RelayServer, on the `kv` class. `pool`: the
  // PE buffer; its region is registered with the endpoint and its remote key
  // travels with each request. invalid_argument for a bad geometry or slots
  // smaller than a Full Block.
  static Result<std::unique_ptr<RelayClient>> create(std::unique_ptr<transport::Endpoint> endpoint,
                                                     BufferPool& pool, const ModelSpec& model,
                                                     RelayClientOptions options = {});
  ~RelayClient();
  RelayClient(const RelayClient&) = delete;
  RelayClient& operator=(const RelayClient&) = delete;

  // Starts a relay; its events come from poll(). invalid_argument for a bad
  // request (naming the request and block), invalid_usage for a request id
  // already in flight, `again` with kMaxRelaysInFlight relays in flight, and
  // the connection's error once it failed. A deadline already past is
  // accepted: the next poll() ends the relay with timeout, and nothing is
  // sent.
  Status startRelay(RelayRequest request);

  // Appends the events that happened since the last call. ok while the
  // connection lives. Once it fails (or is closed because the DE did not
  // acknowledge a cancel, or sent a malformed notice), every relay in flight
  // gets its `finished` event with the error and poll() returns that error,
  // now and on every later call.
  Status poll(std::vector<RelayEvent>& events);

  // poll() for callers that share one client (several PrefillLoaders of one
  // PE engine, driven by one thread): appends only the events of the relays
  // named in `request_ids`, in order; the others' events are held, and go to
  // the next poll() or pollRelays() that names their relay.
  Status pollRelays(std::span<const std::uint64_t> request_ids, std::vector<RelayEvent>& events);

  std::size_t relaysInFlight() const noexcept;
  const std::string& peerName() const noexcept;

 private:
  struct State;
  explicit RelayClient(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace dualpath::loader
