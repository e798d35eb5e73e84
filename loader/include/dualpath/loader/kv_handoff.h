// The KV handoff and write-back: after prefill, the prefill engine moves the
// KV it computed into the decode engine's host buffer, and the DE writes each
// newly filled block back to storage. Only the miss tokens travel: the blocks
// of the prefix that came from storage are there already.
//
//   PE node: HandoffSender                      DE node: HandoffReceiver
//     -- handoff_offer(blocks, tokens, flags) -->
//                                                acquire one DE buffer slot per block
//     <-- handoff_ready(DE key, slot offsets) ---
//     as the PE's saves land (layersSaved):
//       put each block's tokens of layer l  ====> DE slots (class kv, one-sided)
//     -- handoff_end(per-block XXH3-64) ------->   once every put is remote-complete
//                                                verify every block against its checksum;
//                                                write back each full block flagged new
//                                                (BlockStore::write: atomic, with header)
//     <-- block_failed(index, id, status) ------   per block not verified or not written
//     <-- done(status) -------------------------   the last message of the handoff
//                                                the DE engine takes the slots (decode)
//
// Guarantees (docs/loader.md, "Write-back"):
//  - A block reaches storage only after every byte of it was checked against
//    the checksum the PE computed over its own buffer; a block that does not
//    verify is reported by id and never written. Writes are the store's:
//    atomic, so a crash leaves the old block or none.
//  - Bounded. The PE stops putting at its deadline, lets its puts complete and
//    cancels, and the DE then gives the slots back. The DE holds the slots of
//    a handoff whose PE went quiet (its puts may still land there) until
//    `cancel_grace` after the deadline, and then closes the connection, the
//    only fence against late puts. A PE waits for the DE's verdict until its
//    deadline. A dead peer ends every handoff with remote/timeout
//    (DUALPATH_NET_TIMEOUT_MS).
//  - Errors name the request, the block (BlockId::toHex), the layer and the peer.
//
// Ownership is as for the KV relay (kv_relay.h): each side owns its endpoint
// (a connection of its own, on the `kv` class) and registers its pool's
// region with it; the pool, the store and the Engine must outlive the sender
// or receiver.
//
// Threading: no internal thread. A sender or receiver is driven by one thread
// at a time. HandoffReceiver::poll() runs the DE store's writes of a handoff
// that ended, and may block for as long as they take; everything else returns
// without waiting.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>
#include <dualpath/loader/block_store.h>
#include <dualpath/loader/buffer_pool.h>
#include <dualpath/transport/transport.h>

namespace dualpath::loader {

// Blocks in one handoff (the offer must fit one receive).
inline constexpr std::size_t kMaxHandoffBlocks = 4096;
// Handoffs a sender keeps in flight; start() says `again` beyond it.
inline constexpr std::size_t kMaxHandoffsInFlight = 8;

// One block of a handoff, in session order.
struct HandoffBlock {
  // The block's id (blockIds() of the session's tokens); ignored for a
  // partial block, which has none yet.
  BlockId id;
  // Tokens of the block carried: block_tokens, except for a last partial block.
  std::uint32_t tokens = 0;
  // The block is new: the DE writes it back. Only for a full block.
  bool write_back = false;
  // Where its KV sits in the PE buffer, as a Full Block (layer-major, block.h):
  // the offset in the PE pool's region (BufferLease::offset()). Layer l's
  // tokens are the first tokens x kv_bytes_per_token_per_layer bytes at
  // source_offset + l x layerBlockBytes().
  std::uint64_t source_offset = 0;
};

struct HandoffRequest {
  std::uint64_t request_id = 0;  // unique among the sender's handoffs in flight
  // The position in the session of block 0's first token: the request's
  // cached tokens, a multiple of block_tokens.
  std::uint64_t first_token = 0;
  std::vector<HandoffBlock> blocks;  // 1 to kMaxHandoffBlocks
  Deadline deadline{};
};

// The blocks of a request's miss tokens: blocks [hit_tokens / B, ceil(tokens / B))
// of `tokens`, each full one flagged for write-back, at the given PE buffer
// offsets (one per block). invalid_argument when hit_tokens is not a multiple
// of block_tokens, covers every token, or the offsets do not match.
Result<HandoffRequest> missTokenHandoff(std::uint64_t request_id, std::span<const TokenId> tokens,
                                        std::uint64_t hit_tokens, const ModelSpec& model,
                                        std::span<const std::uint64_t> source_offsets,
                                        Deadline deadline);

// The end of a handoff, on the PE.
struct HandoffOutcome {
  std::uint64_t request_id = 0;
  // ok: every block landed verified and every write-back block is stored;
  // otherwise the first problem (naming the request, and the block).
  Status status;
  std::uint32_t blocks_written = 0;
  // The blocks the DE did not keep or did not write, in order, with why.
  struct FailedBlock {
    std::size_t index = 0;
    BlockId id;
    Status status;
  };
  std::vector<FailedBlock> failed;
};

// What a handoff left on the DE: the KV the decode engine continues from.
struct HandoffArrival {
  std::uint64_t request_id = 0;
  std::string peer;
  std::uint64_t first_token = 0;
  struct Block {
    BlockId id;  // zero for a partial block
    std::uint32_t tokens = 0;
    // The DE buffer slot holding the block's KV in the Full Block layout;
    // the decode engine owns it now. A partial block is written back by the
    // DE engine once decode fills it (BlockStore::write).
    BufferLease slot;
    bool written = false;  // stored by this handoff
  };
  std::vector<Block> blocks;
};

struct HandoffSenderCounters {
  std::uint64_t handoffs = 0;         // offers sent
  std::uint64_t handoffs_ok = 0;      // ended with done(ok)
  std::uint64_t handoffs_failed = 0;  // every other end
  std::uint64_t bytes_put = 0;        // remote-completed
};

struct HandoffReceiverCounters {
  std::uint64_t offers = 0;          // well-formed offers received
  std::uint64_t arrivals = 0;        // handoffs handed to the DE engine
  std::uint64_t blocks_written = 0;  // write-backs stored
  std::uint64_t blocks_failed = 0;   // not verified, or their write failed
  std::uint64_t handoffs_failed = 0;
};

struct HandoffReceiverOptions {
  // How long after a handoff's deadline the receiver waits for the PE's end
  // or cancel before it closes the connection. 0: DUALPATH_NET_TIMEOUT_MS.
  std::chrono::milliseconds cancel_grace{0};
};

// Runs on the PE node.
class HandoffSender {
 public:
  // `endpoint`: connected to a HandoffReceiver, on the `kv` class. `pool`:
  // the PE buffer the blocks' KV is saved into; its region is registered with
  // the endpoint. invalid_argument for a bad geometry or slots smaller than a
  // Full Block.
  static Result<std::unique_ptr<HandoffSender>> create(
      std::unique_ptr<transport::Endpoint> endpoint, BufferPool& pool, const ModelSpec& model);
  ~HandoffSender();
  HandoffSender(const HandoffSender&) = delete;
  HandoffSender& operator=(const HandoffSender&) = delete;

  // Offers the blocks to the DE. invalid_argument for a malformed request
  // (naming the request and block), invalid_usage for a request id in
  // flight, `again` with kMaxHandoffsInFlight handoffs in flight, and the
  // connection's error once it failed.
  Status start(HandoffRequest request);

  // Layers [0, layers) of every block of `request_id` are in the PE buffer
  // (the copy engine's saveLayer for them finished). Counts only grow; the
  // puts of a layer go once the DE is ready. invalid_usage for an unknown
  // request or a count above the model's layers.
  Status layersSaved(std::uint64_t request_id, std::uint32_t layers);

  // Advances every handoff; appends the ones that ended. ok while the
  // connection lives; its error once it failed, every handoff in flight then
  // ending with it.
  Status poll(std::vector<HandoffOutcome>& ended);

  std::size_t handoffsInFlight() const noexcept;
  HandoffSenderCounters counters() const noexcept;
  const std::string& peerName() const noexcept;

 private:
  struct State;
  explicit HandoffSender(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Runs on the DE node.
class HandoffReceiver {
 public:
  // `endpoint`: connected, on the `kv` class. `store`: where new blocks are
  // written back, of geometry `model`. `pool`: the DE buffer, slots of at
  // least one Full Block. invalid_argument for a mismatched geometry or too
  // small slots.
  static Result<std::unique_ptr<HandoffReceiver>> create(
      std::unique_ptr<transport::Endpoint> endpoint, BlockStore& store, BufferPool& pool,
      const ModelSpec& model, HandoffReceiverOptions options = {});
  ~HandoffReceiver();
  HandoffReceiver(const HandoffReceiver&) = delete;
  HandoffReceiver& operator=(const HandoffReceiver&) = delete;

  // Advances every handoff; appends each one whose KV arrived and verified,
  // after writing back its new blocks (a block whose write failed is
  // reported to the PE and arrives with written = false: decode can still
  // use it). A handoff with a block that did not verify is answered with
  // done(corrupt), keeps nothing and writes nothing: decode cannot continue
  // from KV with a hole. A malformed offer is answered with done(corrupt)
  // and logged. ok while the connection lives; its error once it failed.
  Status poll(std::vector<HandoffArrival>& arrived);

  HandoffReceiverCounters counters() const noexcept;
  const std::string& peerName() const noexcept;

 private:
  struct State;
  explicit HandoffReceiver(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace dualpath::loader
