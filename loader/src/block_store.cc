#include <algorithm>
#include <thread>

#include <fmt/format.h>

#include <dualpath/loader/block_store.h>

namespace dualpath::loader {

void ReadBatch::add(const BlockId& id, std::span<std::byte> destination) {
  reads_.push_back(BlockRead{.id = id, .destination = destination});
}

void ReadBatch::clear() {
  reads_.clear();
}

std::size_t ReadBatch::failures() const noexcept {
  return static_cast<std::size_t>(std::count_if(
      reads_.begin(), reads_.end(), [](const BlockRead& read) { return !read.status.isOk(); }));
}

Status BlockStore::submit(ReadBatch& batch) {
  if (batch.in_flight_) {
    return Status(StatusCode::invalid_usage, "submit: the batch is already in flight");
  }
  if (batch.reads_.empty()) return Status(StatusCode::invalid_usage, "submit: the batch is empty");
  const std::uint64_t full_block = model_.fullBlockBytes();
  for (BlockRead& read : batch.reads_) {
    if (read.destination.size() != full_block) {
      return Status(
          StatusCode::invalid_usage,
          fmt::format("submit: block {}: destination is {} B, a Full Block of '{}' is {} B",
                      read.id.toHex(), read.destination.size(), model_.name, full_block));
    }
  }
  for (BlockRead& read : batch.reads_) read.status = Status(StatusCode::again, "pending");
  if (limiter_ != nullptr) {
    const Clock::time_point now = Clock::now();
    for (BlockRead& read : batch.reads_) read.emulated_delivery = limiter_->reserve(full_block, now);
  }
  Status submitted = doSubmit(batch.reads_);
  // Whatever doSubmit started must still be reaped by wait().
  batch.in_flight_ = true;
  return submitted;
}

void BlockStore::holdBackForEmulatedNic(std::span<BlockRead> reads, Deadline deadline) const {
  Clock::time_point delivered{};
  for (BlockRead& read : reads) {
    if (!read.status.isOk()) continue;
    if (read.emulated_delivery > deadline) {
      read.status = Status(StatusCode::timeout,
                           fmt::format("block {}: timed out: the {} delivers it only after the "
                                       "deadline",
                                       read.id.toHex(), limiter_->describe()));
    } else {
      delivered = std::max(delivered, read.emulated_delivery);
    }
  }
  // The emulated link is slower than the storage: completion waits for it.
  // Bounded: no delivery kept as ok is later than the deadline.
  std::this_thread::sleep_until(delivered);
}

Status BlockStore::wait(ReadBatch& batch, Deadline deadline) {
  if (!batch.in_flight_)
    return Status(StatusCode::invalid_usage, "wait: the batch was not submitted");
  Status waited = doWait(batch.reads_, deadline);
  batch.in_flight_ = false;
  if (limiter_ != nullptr) holdBackForEmulatedNic(batch.reads_, deadline);
  return waited;
}

Status BlockStore::read(ReadBatch& batch, Deadline deadline) {
  Status submitted = submit(batch);
  if (!submitted && !batch.in_flight_) return submitted;
  Status waited = wait(batch, deadline);
  return submitted ? std::move(waited) : std::move(submitted);
}

}  // namespace dualpath::loader
