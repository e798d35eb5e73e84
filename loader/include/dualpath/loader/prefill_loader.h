// The prefill engine's per-request loader: brings one request's cached KV
// prefix into device memory over the read paths the scheduler chose, and ends
// every load in exactly one terminal state. It owns nothing global; it drives
// the parts that exist:
//
//   ReadPlan: blocks [0, de_path_blocks) over the DE path, the rest over the PE path.
//
//   PE buffer (BufferPool)  one slot per block, acquired up front (a full pool
//                           is `again` before anything starts)
//   PE path (BlockStore)    one read batch into the slots of blocks [de, n)
//   DE path (RelayClient)   one relay into the slots of blocks [0, de)
//   fallback                blocks the relay failed (or did not deliver when
//                           the relay itself failed) are read on the PE path,
//                           in a second batch, within the same deadline
//   copy engine             layer l goes to the device (layerArrived(l)) once
//                           it is in the PE buffer for every block copied
//
// Terminal state, exactly once per load:
//   ok       every block is in device memory (once the copy engine is done);
//   partial  some blocks failed on every path they were tried on; prefix
//            caching keeps only the good prefix, so blocks [0, copied_blocks)
//            are copied and tokens from recompute_from_token on are
//            recomputed; a failed block, and every block after it, is never
//            handed to the copy engine;
//   failed   nothing may be used (the deadline passed first, the copy engine
//            refused the load, or a block of the copy failed after its first
//            layers were handed out); the whole prefix is recomputed.
//
// When the copy starts. A LayerwiseLoad names its segments up front, so the
// loader starts the copy engine (sources_ready = false) only once it knows
// which blocks are copied: when every PE-path read has its outcome and the
// relay's failures are known (the relay reports them before its first layer
// notice), which is the first moment any layer could be handed out anyway
// (layer l of the copy includes layer l of the PE-path blocks). From then on
// each relayed layer goes out as it lands, while the relay goes on.
// PrefillLoadResult::copy_started and copyStarted() say whether it did.
//
// Threading: no internal thread. One thread (the inference engine's loader
// thread) calls start(), poll()/run() and endLoad(); it is the only user of
// the RelayClient's events of its relays (it takes them with pollRelays(), so
// several loaders driven by one thread may share one client: a PE engine
// with loads in flight on several loaders, each with its own copy engine).
// The compute thread uses the copy engine alone: once
// copyStarted() (an atomic flag, readable from any thread) is true it calls
// waitForLayer(l) before layer l's compute and finish() at the end; then the
// loader thread calls endLoad(), which gives the PE buffer slots back. The
// store, pool, relay client and copy engine must outlive the loader.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>
#include <dualpath/loader/block_store.h>
#include <dualpath/loader/buffer_pool.h>
#include <dualpath/loader/kv_relay.h>
#include <dualpath/loader/layer_copy.h>
#include <dualpath/scheduler/path_policy.h>

namespace dualpath::loader {

// One load: a request's cached prefix and where it goes.
struct PrefillLoad {
  std::uint64_t request_id = 0;
  // The ids of the prefix's full blocks, in order (blockIds() of its tokens).
  std::vector<BlockId> blocks;
  // The scheduler's split; plan.blocks() must equal blocks.size().
  scheduler::ReadPlan plan;
  // Per block: the device address of its Full Block, layer-major as in
  // block.h; Layer Block l of block b goes to device_blocks[b] + l x layerBlockBytes().
  std::vector<std::byte*> device_blocks;
  Deadline deadline{};
};

enum class PrefillLoadState : std::uint8_t { running, ok, partial, failed };
std::string_view prefillLoadStateName(PrefillLoadState state) noexcept;

// Where each block of a load came from. When a load ends ok or partial every
// block is counted exactly once: pe_path + de_path + fallback + failed == blocks.
struct PrefillLoadCounters {
  std::uint32_t pe_path = 0;   // read on the PE path, as planned
  std::uint32_t de_path = 0;   // relayed by the DE
  std::uint32_t fallback = 0;  // planned for the DE, read on the PE path instead
  std::uint32_t failed = 0;    // failed on every path tried
};

struct PrefillLoadResult {
  PrefillLoadState state = PrefillLoadState::running;
  // ok; partial: the first failed block's outcome, naming the request and
  // every failed block; failed: why, naming the request.
  Status status;
  std::vector<BlockId> failed_blocks;  // in prefix order
  // Blocks [0, copied_blocks) are (or will be, once the copy engine is done)
  // in device memory; tokens from recompute_from_token on must be recomputed
  // (copied_blocks x block_tokens; 0 when failed).
  std::uint32_t copied_blocks = 0;
  std::uint64_t recompute_from_token = 0;
  // The copy engine was given this load: the compute thread must call finish().
  bool copy_started = false;
  PrefillLoadCounters counters;
};

// The parts a PE's loader drives. `relay` may be null: PE path only (the
// plan's DE blocks are then read on the PE path, counted as pe_path).
struct PrefillLoaderParts {
  BlockStore& store;
  BufferPool& pool;
  RelayClient* relay = nullptr;
  LayerCopyEngine& copy_engine;
};

class PrefillLoader {
 public:
  // invalid_argument for a bad geometry, a store of another model, or PE
  // buffer slots smaller than a Full Block.
  static Result<std::unique_ptr<PrefillLoader>> create(PrefillLoaderParts parts,
                                                       const ModelSpec& model);
  ~PrefillLoader();
  PrefillLoader(const PrefillLoader&) = delete;
  PrefillLoader& operator=(const PrefillLoader&) = delete;

  // Begins a load: acquires one PE buffer slot per block, submits the PE-path
  // reads and starts the relay. `again` when the pool has too few free slots
  // (nothing started, nothing held); invalid_argument for a malformed load;
  // invalid_usage while the previous load is held (see endLoad()). A
  // deadline already past ends the load at once as failed/timeout, having
  // started nothing.
  Status start(PrefillLoad load);

  // Advances the load and never waits: polls the relay, reaps the PE-path
  // reads (BlockStore poll; at the deadline the reads still pending end as
  // timeout at once), sends fallback reads, hands arrived layers to the copy
  // engine. After the terminal state it only drains a relay that is still
  // ending. invalid_usage without a load.
  Status poll();

  // poll() until the terminal state or `deadline`, whichever is first
  // (timeout then; the load goes on). Spins: the relay has no blocking wait.
  Status run(Deadline deadline);

  bool done() const noexcept { return result_.state != PrefillLoadState::running; }
  // Valid once done().
  const PrefillLoadResult& result() const noexcept { return result_; }
  // Any thread: the copy engine has this load (the compute thread may wait).
  bool copyStarted() const noexcept { return copy_started_.load(std::memory_order_acquire); }

  // Ends the load after its terminal state, once the compute thread's copy
  // engine finish() returned (or the copy never started): the PE buffer
  // slots go back to the pool, except those of a relay still ending, which
  // go back when poll() sees its end. invalid_usage before the terminal state.
  Status endLoad();

  // No relay of an ended load is still writing into PE buffer slots.
  bool quiet() const noexcept;

 private:
  struct Load;
  PrefillLoader(PrefillLoaderParts parts, ModelSpec model);

  void drainRelay();
  void advance();
  void handleRelayEvents();
  void reapBatch(bool past_deadline);
  std::vector<std::uint64_t> relayIds() const;
  void submitFallback();
  void releaseLayers();
  bool settled() const;
  void conclude();
  void fail(Status why);

  PrefillLoaderParts parts_;
  ModelSpec model_;
  std::unique_ptr<Load> load_;
  // Relays of ended loads still in flight, with the slots they may write.
  struct Draining {
    std::uint64_t request_id = 0;
    std::vector<BufferLease> leases;
  };
  std::vector<Draining> draining_;
  PrefillLoadResult result_;
  std::atomic<bool> copy_started_{false};
};

}  // namespace dualpath::loader
