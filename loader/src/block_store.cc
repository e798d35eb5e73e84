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
  if (doBusy()) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("submit: the store's engine has another batch in flight (it takes "
                              "one at a time); submit block {}'s batch once that one ended",
                              batch.reads_.front().id.toHex()));
  }
  for (BlockRead& read : batch.reads_) read.status = Status(StatusCode::again, "pending");
  batch.storage_done_ = false;
  batch.awaiting_delivery_.assign(batch.reads_.size(), false);
  if (limiter_ != nullptr) {
    const Clock::time_point now = Clock::now();
    for (BlockRead& read : batch.reads_)
      read.emulated_delivery = limiter_->reserve(full_block, now);
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

bool BlockStore::deliveredByEmulatedNic(ReadBatch& batch, Clock::time_point now) const {
  bool all_delivered = true;
  for (std::size_t i = 0; i < batch.reads_.size(); ++i) {
    BlockRead& read = batch.reads_[i];
    if (batch.awaiting_delivery_[i]) {
      if (read.emulated_delivery > now) {
        all_delivered = false;
        continue;
      }
      batch.awaiting_delivery_[i] = false;
      read.status = Status::ok();
    } else if (read.status.isOk() && read.emulated_delivery > now) {
      // Verified, but still on the emulated link: not an outcome yet. Only ok
      // reads are held back, so ok is what to restore.
      batch.awaiting_delivery_[i] = true;
      read.status = Status(StatusCode::again, "pending");
      all_delivered = false;
    }
  }
  return all_delivered;
}

Status BlockStore::wait(ReadBatch& batch, Deadline deadline) {
  if (!batch.in_flight_)
    return Status(StatusCode::invalid_usage, "wait: the batch was not submitted");
  Status waited = batch.storage_done_ ? Status::ok() : doWait(batch.reads_, deadline);
  batch.in_flight_ = false;
  if (limiter_ != nullptr) {
    // Reads a poll() saw verified are ok again; the hold-back below decides.
    for (std::size_t i = 0; i < batch.reads_.size(); ++i) {
      if (batch.awaiting_delivery_[i]) batch.reads_[i].status = Status::ok();
    }
    holdBackForEmulatedNic(batch.reads_, deadline);
  }
  batch.awaiting_delivery_.assign(batch.reads_.size(), false);
  return waited;
}

Result<bool> BlockStore::poll(ReadBatch& batch) {
  if (!batch.in_flight_)
    return Status(StatusCode::invalid_usage, "poll: the batch was not submitted");
  if (!batch.storage_done_) {
    DP_TRY_ASSIGN(batch.storage_done_, doPoll(batch.reads_));
  }
  // Even before the storage is done, so that reads it finished show pending
  // until the emulated link delivers them.
  const bool delivered = limiter_ == nullptr || deliveredByEmulatedNic(batch, Clock::now());
  if (!batch.storage_done_ || !delivered) return false;
  batch.in_flight_ = false;
  return true;
}

Status BlockStore::read(ReadBatch& batch, Deadline deadline) {
  Status submitted = submit(batch);
  if (!submitted && !batch.in_flight_) return submitted;
  Status waited = wait(batch, deadline);
  return submitted ? std::move(waited) : std::move(submitted);
}

}  // namespace dualpath::loader
