// Prefill batching on one prefill engine: packs queued requests, first come
// first served, into batches whose predicted compute time fits a quota
// (default 300 ms, as in the paper), so one long prompt cannot stall the
// requests behind it for seconds.
//
// The request that would overflow the quota is cut: a binary search finds
// the largest prefix of its new tokens that still fits, rounded down to whole
// KV blocks so every chunk writes back full blocks. That chunk joins the
// batch; the rest stays at the head of the queue and continues, with the
// chunk now part of its context, in the next batch (chunked prefill). A batch
// always makes progress: when even one block of the head request exceeds the
// quota alone, that block forms the batch.
//
// Threading: none; one batcher per prefill engine, driven by its thread.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include <dualpath/scheduler/cost_model.h>

namespace dualpath::scheduler {

struct PrefillWork {
  std::uint64_t request_id = 0;
  std::uint64_t context_tokens = 0;  // already in KV-cache (hit, or earlier chunks)
  std::uint64_t new_tokens = 0;      // still to prefill; positive
};

struct BatchEntry {
  std::uint64_t request_id = 0;
  std::uint64_t context_tokens = 0;
  std::uint64_t new_tokens = 0;
  bool completes_request = true;  // false: a chunk; the request continues later

  bool operator==(const BatchEntry&) const = default;
};

struct PrefillBatch {
  std::vector<BatchEntry> entries;
  double predicted_seconds = 0;
};

class PrefillBatcher {
 public:
  static constexpr double kDefaultQuotaSeconds = 0.3;

  // `cost` must outlive the batcher.
  explicit PrefillBatcher(const CostModel& cost, double quota_seconds = kDefaultQuotaSeconds)
      : cost_(cost), quota_seconds_(quota_seconds) {}

  // Precondition: work.new_tokens > 0.
  void push(const PrefillWork& work) { queue_.push_back(work); }
  // The next batch; empty when nothing is queued.
  PrefillBatch next();

  std::size_t pending() const noexcept { return queue_.size(); }
  double quotaSeconds() const noexcept { return quota_seconds_; }

 private:
  // The largest number of the head's new tokens, in whole blocks, that fits in
  // `budget` seconds; 0 when not even one block fits.
  std::uint64_t largestFittingChunk(const PrefillWork& work, double budget) const;

  const CostModel& cost_;
  double quota_seconds_;
  std::deque<PrefillWork> queue_;
};

}  // namespace dualpath::scheduler
