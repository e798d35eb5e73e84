#include <algorithm>

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
  Status submitted = doSubmit(batch.reads_);
  // Whatever doSubmit started must still be reaped by wait().
  batch.in_flight_ = true;
  return submitted;
}

Status BlockStore::wait(ReadBatch& batch, Deadline deadline) {
  if (!batch.in_flight_)
    return Status(StatusCode::invalid_usage, "wait: the batch was not submitted");
  Status waited = doWait(batch.reads_, deadline);
  batch.in_flight_ = false;
  return waited;
}

Status BlockStore::read(ReadBatch& batch, Deadline deadline) {
  Status submitted = submit(batch);
  if (!submitted && !batch.in_flight_) return submitted;
  Status waited = wait(batch, deadline);
  return submitted ? std::move(waited) : std::move(submitted);
}

}  // namespace dualpath::loader
