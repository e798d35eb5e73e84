#include <dualpath/loader/buffer_pool.h>

#include <cstdlib>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/common/units.h>

namespace dualpath::loader {

BufferLease::BufferLease(BufferLease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), slot_(other.slot_), bytes_(other.bytes_) {}

BufferLease& BufferLease::operator=(BufferLease&& other) noexcept {
  if (this != &other) {
    giveBack();
    pool_ = std::exchange(other.pool_, nullptr);
    slot_ = other.slot_;
    bytes_ = other.bytes_;
  }
  return *this;
}

BufferLease::~BufferLease() { giveBack(); }

void BufferLease::giveBack() noexcept {
  if (pool_ != nullptr) std::exchange(pool_, nullptr)->release(slot_);
}

std::size_t BufferLease::offset() const noexcept {
  return pool_ == nullptr ? 0 : slot_ * pool_->stride_;
}

Result<std::unique_ptr<BufferPool>> BufferPool::create(const BufferPoolOptions& options) {
  auto invalid = [&](std::string_view problem) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("buffer pool '{}': {}", options.name, problem));
  };
  if (options.slots == 0) return invalid("needs at least one slot");
  if (options.slot_bytes == 0) return invalid("slot_bytes must be positive");
  const std::size_t alignment = options.alignment;
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return invalid(fmt::format("alignment {} is not a power of two", alignment));
  }
  if (options.slot_bytes > std::numeric_limits<std::size_t>::max() - alignment) {
    return invalid("slot_bytes overflows");
  }
  const std::size_t stride = (options.slot_bytes + alignment - 1) / alignment * alignment;
  if (stride > std::numeric_limits<std::size_t>::max() / options.slots) {
    return invalid(fmt::format("{} slots of {} bytes overflow", options.slots, stride));
  }
  void* memory = std::aligned_alloc(alignment, stride * options.slots);
  if (memory == nullptr) {
    return Status(StatusCode::io, fmt::format("buffer pool '{}': cannot allocate {}", options.name,
                                              formatBytes(stride * options.slots)));
  }
  return std::unique_ptr<BufferPool>(
      new BufferPool(options, static_cast<std::byte*>(memory), stride));
}

BufferPool::BufferPool(const BufferPoolOptions& options, std::byte* base, std::size_t stride)
    : name_(options.name),
      slot_bytes_(options.slot_bytes),
      stride_(stride),
      slots_(options.slots),
      base_(base) {
  free_.reserve(slots_);
  for (std::size_t slot = slots_; slot > 0; --slot) free_.push_back(slot - 1);
}

BufferPool::~BufferPool() {
  if (free_.size() != slots_) {
    DP_LOG_ERROR("buffer pool '{}' destroyed with {} of {} slots still lent: a bug in its user",
                 name_, slots_ - free_.size(), slots_);
  }
  std::free(base_);
}

Result<BufferLease> BufferPool::acquire() {
  std::lock_guard lock(mu_);
  if (free_.empty()) {
    return Status(StatusCode::again,
                  fmt::format("buffer pool '{}': all {} slots are in use", name_, slots_));
  }
  const std::size_t slot = free_.back();
  free_.pop_back();
  return BufferLease(this, slot, {base_ + slot * stride_, slot_bytes_});
}

std::size_t BufferPool::available() const {
  std::lock_guard lock(mu_);
  return free_.size();
}

void BufferPool::release(std::size_t slot) noexcept {
  std::lock_guard lock(mu_);
  free_.push_back(slot);
}

}  // namespace dualpath::loader
