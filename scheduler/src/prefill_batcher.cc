#include <dualpath/scheduler/prefill_batcher.h>

#include <algorithm>

namespace dualpath::scheduler {

std::uint64_t PrefillBatcher::largestFittingChunk(const PrefillWork& work, double budget) const {
  // Prefill time grows with the chunk, so the fitting chunks form a prefix of
  // [0, new_tokens]: binary search for its end.
  std::uint64_t fits = 0;
  std::uint64_t too_big = work.new_tokens;
  while (too_big - fits > 1) {
    const std::uint64_t mid = fits + (too_big - fits) / 2;
    if (cost_.prefillSeconds(work.context_tokens, mid) <= budget) {
      fits = mid;
    } else {
      too_big = mid;
    }
  }
  const std::uint64_t block = cost_.model().block_tokens;
  return fits / block * block;
}

PrefillBatch PrefillBatcher::next() {
  PrefillBatch batch;
  while (!queue_.empty()) {
    PrefillWork& head = queue_.front();
    const double whole = cost_.prefillSeconds(head.context_tokens, head.new_tokens);
    if (batch.predicted_seconds + whole <= quota_seconds_) {
      batch.entries.push_back(BatchEntry{.request_id = head.request_id,
                                         .context_tokens = head.context_tokens,
                                         .new_tokens = head.new_tokens});
      batch.predicted_seconds += whole;
      queue_.pop_front();
      continue;
    }
    std::uint64_t chunk = largestFittingChunk(head, quota_seconds_ - batch.predicted_seconds);
    if (chunk == 0) {
      if (!batch.entries.empty()) break;
      chunk = std::min<std::uint64_t>(head.new_tokens, cost_.model().block_tokens);
    }
    const bool completes = chunk == head.new_tokens;
    batch.entries.push_back(BatchEntry{.request_id = head.request_id,
                                       .context_tokens = head.context_tokens,
                                       .new_tokens = chunk,
                                       .completes_request = completes});
    batch.predicted_seconds += cost_.prefillSeconds(head.context_tokens, chunk);
    if (completes) {
      queue_.pop_front();
    } else {
      head.context_tokens += chunk;
      head.new_tokens -= chunk;
    }
    break;
  }
  return batch;
}

}  // namespace dualpath::scheduler
