// Host staging buffers for Full Blocks, with a fixed budget: the PE buffer and
// the DE buffer of the DualPath paper. One aligned allocation, cut into
// equal slots, made once at start; the whole region is exposed so that it can
// be registered once with the transport (RDMA), io_uring (fixed buffers) or
// CUDA (pinned memory).
//
// A full pool is back-pressure: acquire() returns `again`, never allocates,
// so a burst of requests cannot run the process out of memory. A lease gives
// its slot back when destroyed.
//
// Threading: acquire() and lease destruction are thread-safe (the I/O thread
// and the relay thread share a pool). The pool must outlive its leases;
// destroying it with leases out is a bug and is logged as an error.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::loader {

class BufferPool;

// One slot, lent until destruction. Move-only.
class BufferLease {
 public:
  BufferLease() = default;
  BufferLease(BufferLease&& other) noexcept;
  BufferLease& operator=(BufferLease&& other) noexcept;
  BufferLease(const BufferLease&) = delete;
  BufferLease& operator=(const BufferLease&) = delete;
  ~BufferLease();

  bool valid() const noexcept { return pool_ != nullptr; }
  std::span<std::byte> bytes() const noexcept { return bytes_; }
  std::size_t slot() const noexcept { return slot_; }
  // Offset of the slot in the pool's region, for one-sided puts into it.
  std::size_t offset() const noexcept;

 private:
  friend class BufferPool;
  BufferLease(BufferPool* pool, std::size_t slot, std::span<std::byte> bytes)
      : pool_(pool), slot_(slot), bytes_(bytes) {}
  void giveBack() noexcept;

  BufferPool* pool_ = nullptr;
  std::size_t slot_ = 0;
  std::span<std::byte> bytes_;
};

struct BufferPoolOptions {
  std::string name;             // "pe-buffer", for errors and logs
  std::size_t slot_bytes = 0;   // usually ModelSpec::fullBlockBytes()
  std::size_t slots = 0;
  std::size_t alignment = 4096;  // O_DIRECT and page alignment; a power of two
};

class BufferPool {
 public:
  // invalid_argument for zero slots or slot bytes, an alignment that is not
  // a power of two, or a budget that overflows; io when the memory cannot be
  // allocated. Slot sizes are rounded up to the alignment.
  static Result<std::unique_ptr<BufferPool>> create(const BufferPoolOptions& options);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A free slot; `again` (naming the pool and its size) when all are lent.
  Result<BufferLease> acquire();

  const std::string& name() const noexcept { return name_; }
  std::size_t slots() const noexcept { return slots_; }
  std::size_t slotBytes() const noexcept { return slot_bytes_; }
  std::size_t available() const;
  // The whole region: slots() x slot stride bytes.
  std::span<std::byte> region() const noexcept { return {base_, stride_ * slots_}; }

 private:
  friend class BufferLease;
  BufferPool(const BufferPoolOptions& options, std::byte* base, std::size_t stride);
  void release(std::size_t slot) noexcept;

  std::string name_;
  std::size_t slot_bytes_;
  std::size_t stride_;
  std::size_t slots_;
  std::byte* base_;
  mutable std::mutex mu_;
  std::vector<std::size_t> free_;  // a stack: the most recently freed slot is reused first
};

}  // namespace dualpath::loader
