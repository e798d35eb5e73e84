// The io_uring engine (liburing 2.3).
//
// Up to `queue_depth` blocks are in flight, one slot each. A block whose
// destination lies in a region given to registerBuffers is read with two fixed
// reads: the header into the slot's 4 KiB of a header slab registered with the
// ring (buffer 0), the payload into the destination (buffers 1..n). Any other
// block is read whole with one readv, header into the slab and payload into
// the destination: one request per block, as fio makes. A short read is
// resubmitted for the rest; a read that returns 0 has hit the end of a
// truncated file.
//
// As slots finish, wait() checks their headers, refills the slots from the
// batch and submits, and only then hashes the payloads, so the kernel reads
// while this thread verifies instead of waiting for it. poll() does the same
// with the completions already posted (io_uring_peek_cqe), never waiting.
//
// At the deadline every read still in the kernel is cancelled
// (IORING_OP_ASYNC_CANCEL by user_data) and the store waits, at most
// `cancel_grace`, for the kernel to release the buffers: only then may the
// caller reuse them. If the grace runs out the engine is broken: every later
// call fails with io, and the buffers of the stuck reads must be considered
// owned by the kernel until the process exits.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <liburing.h>
#include <sys/resource.h>

#include <dualpath/common/log.h>
#include <dualpath/common/units.h>
#include <dualpath/loader/block_format.h>

#include "posix_read.h"

namespace dualpath::loader::detail {
namespace {

constexpr std::uint64_t kCancelTag = std::numeric_limits<std::uint64_t>::max();
constexpr std::size_t kNoRead = std::numeric_limits<std::size_t>::max();
constexpr std::uint64_t kMaxRegisteredBuffer = 1ull << 30;  // io_uring's limit per buffer
constexpr int kHeaderOp = 0;
constexpr int kPayloadOp = 1;

struct Op {
  // A whole-block read (one read per block): the file's first
  // kBlockHeaderBytes go to `buffer`, the rest to `tail`, as one readv.
  bool whole_block = false;
  std::byte* tail = nullptr;
  std::byte* buffer = nullptr;
  std::uint32_t want = 0;
  std::uint32_t done = 0;
  std::uint64_t offset = 0;
  int fixed_index = -1;  // registered buffer index, or -1
  int error = 0;         // errno, 0 when none
  bool in_kernel = false;
  bool finished = false;
};

struct Slot {
  std::size_t read = kNoRead;
  OpenBlock block;
  Op ops[2];
  iovec iov[2]{};  // a whole-block read's vector, stable while it is in the kernel
  bool busy() const noexcept { return read != kNoRead; }
};

// A block whose reads are done and whose header checked out; its slot is free
// again, its payload not yet hashed.
struct Unverified {
  std::size_t read = kNoRead;
  std::uint64_t checksum = 0;
  std::string path;
};

__kernel_timespec toTimespec(Clock::duration d) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  return __kernel_timespec{.tv_sec = ns / 1'000'000'000, .tv_nsec = ns % 1'000'000'000};
}

class UringReader final : public Reader {
 public:
  UringReader(BlockFiles& files, std::uint32_t queue_depth, std::chrono::milliseconds cancel_grace)
      : files_(files), cancel_grace_(cancel_grace), slots_(queue_depth) {}

  // A batch still in flight (submitted, never waited for) is cancelled first,
  // so that the kernel lets go of the caller's buffers before they may be freed.
  ~UringReader() override {
    if (!ring_ready_) return;
    if (inKernel() > 0) cancelAndDrain({});
    io_uring_queue_exit(&ring_);
  }

  // Returns the errno of io_uring_queue_init, or 0.
  int init(int init_errno_for_test) {
    if (init_errno_for_test != 0) return init_errno_for_test;
    // Room for two reads and two cancels per slot; the CQ is twice that. No
    // IORING_SETUP_COOP_TASKRUN (fio sets it): on the VM of docs/performance.md
    // it made reads slower, measured.
    const int ret = io_uring_queue_init(static_cast<unsigned>(slots_.size() * 4), &ring_, 0);
    if (ret < 0) return -ret;
    ring_ready_ = true;
    unverified_.reserve(slots_.size());
    reaped_.reserve(slots_.size());
    header_slab_ = allocateAligned(kBlockHeaderBytes, slots_.size() * kBlockHeaderBytes);
    if (header_slab_ == nullptr) return ENOMEM;
    registered_.push_back(iovec{header_slab_.get(), slots_.size() * kBlockHeaderBytes});
    const int reg = io_uring_register_buffers(&ring_, registered_.data(), 1);
    if (reg < 0) {
      registered_.clear();
      DP_LOG_DEBUG(
          "loader: registering the {} header slab with io_uring failed: {}; header "
          "reads use unregistered buffers",
          formatBytes(slots_.size() * kBlockHeaderBytes), std::strerror(-reg));
    }
    return 0;
  }

  Status registerBuffers(std::span<const std::span<std::byte>> regions) override {
    if (pending_ != 0) {
      return Status(StatusCode::invalid_usage, "registerBuffers: a batch is in flight");
    }
    std::vector<iovec> wanted;
    wanted.push_back(iovec{header_slab_.get(), slots_.size() * kBlockHeaderBytes});
    Bytes total = 0;
    for (std::size_t i = 0; i < regions.size(); ++i) {
      if (regions[i].empty() || regions[i].size() > kMaxRegisteredBuffer) {
        return Status(StatusCode::invalid_argument,
                      fmt::format("registerBuffers: region {} is {} B; a registered buffer is 1 B "
                                  "to 1 GiB (io_uring's limit)",
                                  i, regions[i].size()));
      }
      wanted.push_back(iovec{regions[i].data(), regions[i].size()});
      total += regions[i].size();
    }
    if (!registered_.empty()) io_uring_unregister_buffers(&ring_);
    registered_.clear();
    const int ret =
        io_uring_register_buffers(&ring_, wanted.data(), static_cast<unsigned>(wanted.size()));
    if (ret == 0) {
      registered_ = std::move(wanted);
      return Status::ok();
    }
    // Put the header slab back alone; reads into the regions stay unregistered.
    if (io_uring_register_buffers(&ring_, wanted.data(), 1) == 0) registered_.push_back(wanted[0]);
    std::string advice;
    if (ret == -ENOMEM) {
      rlimit limit{};
      getrlimit(RLIMIT_MEMLOCK, &limit);
      advice = fmt::format(
          "; registered buffers count against RLIMIT_MEMLOCK ({}; `ulimit -l`) unless the "
          "process has CAP_IPC_LOCK",
          limit.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : formatBytes(limit.rlim_cur));
    }
    return Status(
        StatusCode::io,
        fmt::format("registerBuffers: io_uring_register_buffers of {} region{} ({}): {}{}",
                    regions.size(), regions.size() == 1 ? "" : "s", formatBytes(total),
                    std::strerror(-ret), advice));
  }

  Status submit(std::span<BlockRead> reads) override {
    if (broken_) {
      for (BlockRead& read : reads) files_.fail(read, brokenStatus());
      return brokenStatus();
    }
    next_ = 0;
    pending_ = reads.size();
    fill(reads);
    io_uring_submit(&ring_);  // a failure leaves the SQEs queued; wait() submits again
    return Status::ok();
  }

  Status wait(std::span<BlockRead> reads, Deadline deadline) override {
    while (pending_ > 0) {
      const Clock::time_point now = Clock::now();
      if (now >= deadline) {
        expire(reads);
        break;
      }
      if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
      __kernel_timespec timeout = toTimespec(deadline - now);
      io_uring_cqe* cqe = nullptr;
      const int ret = io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout);
      if (ret == -ETIME || ret == -EINTR) continue;
      if (ret < 0) {
        DP_LOG_ERROR("loader: io_uring_wait_cqe_timeout: {}; ending the batch",
                     std::strerror(-ret));
        expire(reads);
        break;
      }
      progress(reads);
      verifyReaped(reads);
    }
    return Status::ok();
  }

  // Slots and the refill cursor belong to one batch.
  bool busy() const noexcept override { return pending_ > 0; }

  Result<bool> poll(std::span<BlockRead> reads) override {
    if (pending_ == 0) return true;
    submitQueued();
    io_uring_cqe* cqe = nullptr;
    const int ret = io_uring_peek_cqe(&ring_, &cqe);
    if (ret == -EAGAIN || ret == -EINTR) return false;
    if (ret < 0) {
      DP_LOG_ERROR("loader: io_uring_peek_cqe: {}", std::strerror(-ret));
      return Status(StatusCode::io, fmt::format("io_uring_peek_cqe: {}", std::strerror(-ret)));
    }
    progress(reads);
    verifyReaped(reads);
    return pending_ == 0;
  }

 private:
  Status brokenStatus() const {
    return Status(StatusCode::io,
                  "io_uring engine unusable: reads cancelled at a deadline did not complete "
                  "within the cancel grace");
  }

  void submitQueued() {
    if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
  }

  // Takes every posted completion, refills the freed slots and submits, so
  // the kernel has the next reads before this thread starts hashing.
  void progress(std::span<BlockRead> reads) {
    reap(reads);
    fill(reads);
    submitQueued();
  }

  // Hashes the payloads of the blocks reaped so far; their slots were refilled
  // and submitted by progress(), so the kernel reads while this thread
  // hashes. Taking new completions between two hashes (one more submit each)
  // measured slower than one submit per wake-up on the VM of
  // docs/performance.md: each submit kicks the virtual disk.
  void verifyReaped(std::span<BlockRead> reads) {
    for (const Unverified& block : unverified_) {
      files_.verifyPayload(reads[block.read], block.path, block.checksum);
      --pending_;
    }
    unverified_.clear();
  }

  io_uring_sqe* getSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  int fixedIndex(const std::byte* buffer, std::size_t bytes) const noexcept {
    for (std::size_t i = 1; i < registered_.size(); ++i) {
      const auto* base = static_cast<const std::byte*>(registered_[i].iov_base);
      if (buffer >= base && buffer + bytes <= base + registered_[i].iov_len) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }

  // Queues the rest of `op` of `slot`. False when the SQ has no room even
  // after a submit (cannot happen with the ring sized in init()).
  bool queue(std::size_t slot_index, int op_index) {
    Op& op = slots_[slot_index].ops[op_index];
    io_uring_sqe* sqe = getSqe();
    if (sqe == nullptr) return false;
    Slot& slot = slots_[slot_index];
    const int fd = slot.block.fd.get();
    std::byte* buffer = op.buffer + op.done;
    const std::uint32_t bytes = op.want - op.done;
    const std::uint64_t offset = op.offset + op.done;
    if (op.whole_block) {
      unsigned segments = 0;
      if (op.done < kBlockHeaderBytes) {
        slot.iov[segments++] = iovec{buffer, kBlockHeaderBytes - op.done};
        slot.iov[segments++] = iovec{op.tail, op.want - kBlockHeaderBytes};
      } else {
        slot.iov[segments++] = iovec{op.tail + (op.done - kBlockHeaderBytes), bytes};
      }
      io_uring_prep_readv(sqe, fd, slot.iov, segments, offset);
    } else if (op.fixed_index >= 0) {
      io_uring_prep_read_fixed(sqe, fd, buffer, bytes, offset, op.fixed_index);
    } else {
      io_uring_prep_read(sqe, fd, buffer, bytes, offset);
    }
    io_uring_sqe_set_data64(sqe, slot_index * 2 + static_cast<std::uint64_t>(op_index));
    op.in_kernel = true;
    return true;
  }

  // Starts reads of the batch in free slots.
  void fill(std::span<BlockRead> reads) {
    for (std::size_t s = 0; s < slots_.size() && next_ < reads.size(); ++s) {
      Slot& slot = slots_[s];
      if (slot.busy()) continue;
      while (next_ < reads.size()) {
        BlockRead& read = reads[next_++];
        if (!files_.open(read, slot.block)) {
          --pending_;
          continue;
        }
        slot.read = static_cast<std::size_t>(&read - reads.data());
        std::byte* header = header_slab_.get() + s * kBlockHeaderBytes;
        const int fixed_index = fixedIndex(read.destination.data(), read.destination.size());
        // One readv per block where the payload is not in a registered region:
        // one request instead of two. A registered payload keeps its fixed
        // read (no page pinning per read), which a readv cannot be.
        const bool whole_block = fixed_index < 0;
        if (whole_block) {
          slot.ops[kHeaderOp] =
              Op{.whole_block = true,
                 .tail = read.destination.data(),
                 .buffer = header,
                 .want = static_cast<std::uint32_t>(kBlockHeaderBytes + read.destination.size()),
                 .offset = 0};
          slot.ops[kPayloadOp] = Op{.finished = true};
        } else {
          slot.ops[kHeaderOp] = Op{.buffer = header,
                                   .want = static_cast<std::uint32_t>(kBlockHeaderBytes),
                                   .offset = 0,
                                   .fixed_index = registered_.empty() ? -1 : 0};
          slot.ops[kPayloadOp] = Op{.buffer = read.destination.data(),
                                    .want = static_cast<std::uint32_t>(read.destination.size()),
                                    .offset = kBlockHeaderBytes,
                                    .fixed_index = fixed_index};
          if (fixed_index >= 0) ++files_.counters().fixed_buffer_reads;
        }
        if (!queue(s, kHeaderOp) || (!whole_block && !queue(s, kPayloadOp))) {
          // Unreachable with the ring sized in init(); fail the block rather than hang.
          slot.ops[kHeaderOp].error = slot.ops[kPayloadOp].error = EBUSY;
          slot.ops[kHeaderOp].finished = !slot.ops[kHeaderOp].in_kernel;
          slot.ops[kPayloadOp].finished = !slot.ops[kPayloadOp].in_kernel;
          if (slot.ops[kHeaderOp].finished && slot.ops[kPayloadOp].finished) {
            complete(reads, s);
            continue;
          }
        }
        break;
      }
    }
  }

  // Handles every completion in the CQ.
  void reap(std::span<BlockRead> reads) {
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_cqe* cqe = nullptr;
    reaped_.clear();
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const std::uint64_t tag = io_uring_cqe_get_data64(cqe);
      if (tag == kCancelTag) continue;
      const std::size_t s = tag / 2;
      const int op_index = static_cast<int>(tag % 2);
      if (handle(s, op_index, cqe->res)) reaped_.push_back(s);
    }
    io_uring_cq_advance(&ring_, seen);
    for (std::size_t s : reaped_) complete(reads, s);
  }

  // Applies one completion; true when the slot's block has both reads done.
  bool handle(std::size_t s, int op_index, int res) {
    Slot& slot = slots_[s];
    Op& op = slot.ops[op_index];
    op.in_kernel = false;
    if (expiring_) {
      op.finished = true;
      return false;
    }
    if (res == -EINTR || res == -EAGAIN) {
      if (queue(s, op_index)) return false;
      res = -EBUSY;
    }
    if (res < 0) {
      op.error = -res;
      op.finished = true;
    } else if (res == 0) {
      op.finished = true;  // end of file: the block is truncated
    } else {
      op.done += static_cast<std::uint32_t>(res);
      // A short O_DIRECT read that stops off the alignment has met the end
      // of the file; asking for the rest would be a misaligned read (EINVAL).
      const bool direct_eof = slot.block.direct && (op.offset + op.done) % files_.dio().offset != 0;
      if (op.done < op.want && !direct_eof && queue(s, op_index)) return false;
      op.finished = true;
    }
    return slot.ops[kHeaderOp].finished && slot.ops[kPayloadOp].finished;
  }

  // Frees slot `s`, whose reads are done: a block that fails its header check
  // has its outcome; one that passes waits in unverified_ for its payload hash.
  void complete(std::span<BlockRead> reads, std::size_t s) {
    Slot& slot = slots_[s];
    BlockRead& read = reads[slot.read];
    const Op& header = slot.ops[kHeaderOp];
    const Op& payload = slot.ops[kPayloadOp];
    std::size_t header_bytes = header.done;
    std::size_t payload_bytes = payload.done;
    if (header.whole_block) {
      header_bytes = std::min<std::size_t>(header.done, kBlockHeaderBytes);
      payload_bytes = header.done - header_bytes;
    }
    const std::optional<std::uint64_t> checksum = files_.checkHeader(
        read, slot.block.path, std::span<const std::byte>(header.buffer, kBlockHeaderBytes),
        header_bytes, payload_bytes, header.error != 0 ? header.error : payload.error);
    if (checksum) {
      unverified_.push_back(
          Unverified{.read = slot.read, .checksum = *checksum, .path = std::move(slot.block.path)});
    } else {
      --pending_;
    }
    slot.block.fd.reset();
    slot.read = kNoRead;
  }

  // The deadline passed: cancel what the kernel holds, wait (bounded) until it
  // lets go, and end every read still pending as timeout.
  void expire(std::span<BlockRead> reads) {
    cancelAndDrain(reads);
    for (Slot& slot : slots_) {
      if (!slot.busy()) continue;
      files_.timeOut(reads[slot.read], slot.block.path);
      if (slot.ops[kHeaderOp].in_kernel || slot.ops[kPayloadOp].in_kernel) {
        (void)slot.block.fd.release();  // the kernel may still use it
      }
      slot.block.fd.reset();
      slot.read = kNoRead;
    }
    for (; next_ < reads.size(); ++next_) {
      files_.timeOut(reads[next_], files_.path(reads[next_].id));
    }
    pending_ = 0;
  }

  // Cancels every read the kernel holds and waits, at most cancel_grace_, for
  // their completions. Completions arriving meanwhile give no outcome.
  void cancelAndDrain(std::span<BlockRead> reads) {
    expiring_ = true;
    for (std::size_t s = 0; s < slots_.size(); ++s) {
      if (!slots_[s].busy()) continue;
      for (int o = 0; o < 2; ++o) {
        if (!slots_[s].ops[o].in_kernel) continue;
        io_uring_sqe* sqe = getSqe();
        if (sqe == nullptr) continue;  // the grace below then decides
        io_uring_prep_cancel64(sqe, s * 2 + static_cast<std::uint64_t>(o), 0);
        io_uring_sqe_set_data64(sqe, kCancelTag);
      }
    }
    io_uring_submit(&ring_);
    const Clock::time_point grace_end = Clock::now() + cancel_grace_;
    while (inKernel() > 0 && Clock::now() < grace_end) {
      __kernel_timespec timeout = toTimespec(grace_end - Clock::now());
      io_uring_cqe* cqe = nullptr;
      const int ret = io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout);
      if (ret < 0 && ret != -ETIME && ret != -EINTR) break;
      reap(reads);
    }
    if (const std::size_t stuck = inKernel(); stuck > 0) {
      broken_ = true;
      DP_LOG_ERROR(
          "loader: {} reads did not complete within {} ms of their cancellation; the "
          "io_uring engine is unusable and their buffers stay owned by the kernel",
          stuck, cancel_grace_.count());
    }
    expiring_ = false;
  }

  std::size_t inKernel() const noexcept {
    std::size_t n = 0;
    for (const Slot& slot : slots_) {
      if (!slot.busy()) continue;
      n += static_cast<std::size_t>(slot.ops[kHeaderOp].in_kernel) +
           static_cast<std::size_t>(slot.ops[kPayloadOp].in_kernel);
    }
    return n;
  }

  BlockFiles& files_;
  std::chrono::milliseconds cancel_grace_;
  io_uring ring_{};
  bool ring_ready_ = false;
  AlignedBytes header_slab_;
  std::vector<iovec> registered_;  // [0] the header slab, then the caller's regions
  std::vector<Slot> slots_;
  std::size_t next_ = 0;     // next read of the batch to start
  std::size_t pending_ = 0;  // reads of the batch without an outcome
  // Empty whenever wait() or poll() returns, so expire() never sees one.
  std::vector<Unverified> unverified_;
  std::vector<std::size_t> reaped_;  // reap()'s scratch: slots it completed
  bool expiring_ = false;
  bool broken_ = false;
};

}  // namespace

Result<std::unique_ptr<Reader>> makeUringReader(BlockFiles& files, std::uint32_t queue_depth,
                                                std::chrono::milliseconds cancel_grace,
                                                int init_errno_for_test) {
  auto reader = std::make_unique<UringReader>(files, queue_depth, cancel_grace);
  if (const int error = reader->init(init_errno_for_test); error != 0) {
    return Status(StatusCode::unsupported,
                  fmt::format("io_uring_queue_init: {}", std::strerror(error)));
  }
  return std::unique_ptr<Reader>(std::move(reader));
}

}  // namespace dualpath::loader::detail
