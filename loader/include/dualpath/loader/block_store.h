// BlockStore: where Full Blocks live, behind one batch interface.
//
// Reading is in three steps, so that an I/O engine can keep many reads in
// flight while the caller does other work:
//
//   ReadBatch batch;
//   batch.add(id, destination);            // N times: block id -> caller's buffer
//   DP_TRY(store.submit(batch));            // starts the reads
//   DP_TRY(store.wait(batch, deadline));    // every read now has its outcome
//   for (const BlockRead& read : batch.reads()) ... read.status ...
//
// or, for a caller with its own loop, poll() instead of wait():
//
//   DP_TRY_ASSIGN(bool done, store.poll(batch));  // never blocks
//
// Each read ends in exactly one outcome, a Status whose message names the
// block id (and the file, for the POSIX store):
//   ok         the destination holds the payload, verified against its checksum;
//   not_found  no such block;
//   corrupt    a header field or the payload checksum did not match, or the
//              block is truncated; the destination's bytes are garbage;
//   io         the system refused (permissions, EIO, ...), with strerror;
//   timeout    the deadline passed before the read was seen to complete.
// Corrupt bytes are never reported as ok. wait() itself fails only on misuse
// (invalid_usage) or when the engine breaks (io); it returns once every read
// has its outcome, at the latest shortly after the deadline (the reads still in
// flight are cancelled, and the store waits for the kernel to let go of their
// buffers).
//
// Writing stores one Full Block atomically: a reader sees the old block, the
// new block or no block, never a torn one (see posix_block_store.h).
//
// Threading: a store is driven by one thread at a time (the loader's I/O
// thread); calls from several threads need external locking. The destination
// buffers belong to the store from submit() until wait() returns or poll()
// returns true, except that a read whose status poll() left other than
// `again` (pending) has its final outcome: the store no longer writes its
// destination, so a caller may use that block before the batch ends.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>
#include <dualpath/loader/storage_limiter.h>

namespace dualpath::loader {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

struct BlockRead {
  BlockId id;
  std::span<std::byte> destination;  // exactly model.fullBlockBytes() bytes
  Status status = Status(StatusCode::again, "not submitted");
  // With an emulated storage NIC: when the emulated link delivers this read.
  Clock::time_point emulated_delivery{};
};

// A set of reads, prepared by the caller and driven by one store.
class ReadBatch {
 public:
  ReadBatch() = default;
  ReadBatch(const ReadBatch&) = delete;
  ReadBatch& operator=(const ReadBatch&) = delete;
  ReadBatch(ReadBatch&&) = default;
  ReadBatch& operator=(ReadBatch&&) = default;

  // Only while the batch is not in flight.
  void add(const BlockId& id, std::span<std::byte> destination);
  void clear();

  std::span<const BlockRead> reads() const noexcept { return reads_; }
  std::size_t size() const noexcept { return reads_.size(); }
  // Reads whose outcome is not ok (valid once the batch is not in flight).
  std::size_t failures() const noexcept;
  bool inFlight() const noexcept { return in_flight_; }

 private:
  friend class BlockStore;
  std::vector<BlockRead> reads_;
  bool in_flight_ = false;
  // The storage gave every read its outcome (doPoll() returned true); only the
  // emulated link may still hold reads back.
  bool storage_done_ = false;
  // Per read: verified ok, but the emulated link has not delivered it yet, so
  // poll() shows it as pending.
  std::vector<bool> awaiting_delivery_;
};

// What a store did, for tests and benchmarks. Counts only grow.
struct StoreCounters {
  std::uint64_t reads_ok = 0;
  std::uint64_t reads_failed = 0;        // every outcome but ok
  std::uint64_t direct_reads = 0;        // block files opened with O_DIRECT
  std::uint64_t buffered_reads = 0;      // block files read through the page cache
  std::uint64_t fixed_buffer_reads = 0;  // payload reads into an io_uring registered buffer
  std::uint64_t writes = 0;
  std::uint64_t bytes_read = 0;  // payload bytes of ok reads
};

class BlockStore {
 public:
  virtual ~BlockStore() = default;
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  const ModelSpec& model() const noexcept { return model_; }

  // Starts every read of `batch`. invalid_usage when the batch is in flight,
  // empty, or a destination is not exactly one Full Block (naming the block),
  // and when the store's engine cannot take another batch yet: the POSIX
  // store's io_uring engine has one batch in flight at a time, so a caller
  // with several (a relay server, loaders sharing a store) submits the next
  // once the previous one's wait() returned or poll() returned true. Nothing
  // is started then and the batch is not in flight.
  Status submit(ReadBatch& batch);

  // Blocks until every read of `batch` has its outcome or `deadline` passes;
  // reads not seen to complete by then end as timeout. A deadline already
  // past ends every read still pending as timeout at once, deterministically.
  // invalid_usage when the batch was not submitted.
  Status wait(ReadBatch& batch, Deadline deadline);

  // Reaps the reads of `batch` that have completed, without blocking. true
  // once every read has its outcome: the batch is then no longer in flight,
  // exactly as after wait(). false while some read is pending. With an
  // emulated storage NIC a read counts as complete only once the emulated
  // link has delivered it (its emulated_delivery has passed). invalid_usage
  // when the batch was not submitted.
  //
  // Until it returns true, a read whose status is still `again` is pending and
  // the others have their outcome. poll() has no deadline: a caller that stops
  // polling ends the batch with wait(), which takes over whatever poll()
  // started. Which stores do the reads inside poll() itself (the in-memory
  // store, the POSIX store's pread engine) is said in their headers.
  Result<bool> poll(ReadBatch& batch);

  // submit() then wait().
  Status read(ReadBatch& batch, Deadline deadline);

  // Stores `full_block` (exactly model.fullBlockBytes()) as block `id`,
  // atomically, replacing any block of that id.
  virtual Status write(const BlockId& id, std::span<const std::byte> full_block) = 0;

  virtual StoreCounters counters() const = 0;

  // Emulates this node's storage NIC (storage_limiter.h): each read takes its
  // Full Block's bytes from `limiter` at submit(), and wait() holds its
  // completion back until the emulated link has delivered it (poll() reports
  // it pending until then, without sleeping); a read the link
  // delivers only after the deadline ends as timeout, naming the emulated
  // link. nullptr (the default) reads at full speed. The limiter must outlive
  // the store, and may be shared by the stores of one node. counters() count
  // what the storage itself did, before the emulation.
  void emulateStorageNic(StorageRateLimiter* limiter) noexcept { limiter_ = limiter; }
  const StorageRateLimiter* emulatedStorageNic() const noexcept { return limiter_; }

 protected:
  explicit BlockStore(ModelSpec model) : model_(std::move(model)) {}

  // Called with every read's status reset to pending; must give each read its
  // outcome by the end of doWait(), or by the doPoll() that returns true.
  virtual Status doSubmit(std::span<BlockRead> reads) = 0;
  // May follow doPoll() calls that returned false: it then ends the reads
  // they left pending. Never called after doPoll() returned true.
  virtual Status doWait(std::span<BlockRead> reads, Deadline deadline) = 0;
  // Gives outcomes to the reads that have completed, without waiting for the
  // storage; true once every read has one. Not called again for the batch
  // after it returned true. An error means the engine broke; the batch stays
  // in flight and wait() ends it.
  virtual Result<bool> doPoll(std::span<BlockRead> reads) = 0;
  // The engine still works on a batch's reads and cannot start another.
  virtual bool doBusy() const { return false; }

 private:
  void holdBackForEmulatedNic(std::span<BlockRead> reads, Deadline deadline) const;
  // poll()'s side of the emulated link: pending reads that it has not
  // delivered by `now`, without sleeping; true when none is left.
  bool deliveredByEmulatedNic(ReadBatch& batch, Clock::time_point now) const;

  ModelSpec model_;
  StorageRateLimiter* limiter_ = nullptr;
};

}  // namespace dualpath::loader
