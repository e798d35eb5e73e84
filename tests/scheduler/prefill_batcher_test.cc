// Prefill batching under a compute quota, with the overflowing request cut
// into a chunked prefill by binary search.
#include <gtest/gtest.h>

#include <dualpath/scheduler/prefill_batcher.h>

namespace dualpath::scheduler {
namespace {

// 1 ms per new token and no attention cost, so times are token counts;
// 16-token blocks.
CostModel linearCost(double attention_flops_per_token_pair = 0) {
  ModelSpec model = modelPreset("tiny").value();
  model.attention_flops_per_token_pair = attention_flops_per_token_pair;
  return CostModel::create(model, hardwarePreset("tiny").value()).value();
}

TEST(PrefillBatcher, PacksFirstComeFirstServedUnderTheQuota) {
  const CostModel cost = linearCost();
  PrefillBatcher batcher(cost, 0.100);
  batcher.push({.request_id = 1, .context_tokens = 0, .new_tokens = 40});
  batcher.push({.request_id = 2, .context_tokens = 0, .new_tokens = 50});
  batcher.push({.request_id = 3, .context_tokens = 0, .new_tokens = 30});

  // 40 + 50 = 90 ms; request 3 would reach 120 ms, and the 10 ms left hold
  // less than one 16-token block, so it waits for the next batch whole.
  PrefillBatch first = batcher.next();
  EXPECT_EQ(first.entries, (std::vector<BatchEntry>{{1, 0, 40, true}, {2, 0, 50, true}}));
  EXPECT_DOUBLE_EQ(first.predicted_seconds, 0.090);
  PrefillBatch second = batcher.next();
  EXPECT_EQ(second.entries, (std::vector<BatchEntry>{{3, 0, 30, true}}));
  EXPECT_TRUE(batcher.next().entries.empty());
}

TEST(PrefillBatcher, CutsTheOverflowingRequestIntoWholeBlocks) {
  const CostModel cost = linearCost();
  PrefillBatcher batcher(cost, 0.100);
  batcher.push({.request_id = 1, .context_tokens = 0, .new_tokens = 60});
  batcher.push({.request_id = 2, .context_tokens = 0, .new_tokens = 100});

  // 40 ms left: 40 tokens fit, rounded down to two blocks (32).
  PrefillBatch first = batcher.next();
  EXPECT_EQ(first.entries, (std::vector<BatchEntry>{{1, 0, 60, true}, {2, 0, 32, false}}));
  EXPECT_DOUBLE_EQ(first.predicted_seconds, 0.092);
  // The rest continues with the chunk as context.
  PrefillBatch second = batcher.next();
  EXPECT_EQ(second.entries, (std::vector<BatchEntry>{{2, 32, 68, true}}));
  EXPECT_EQ(batcher.pending(), 0u);
}

TEST(PrefillBatcher, BinarySearchHonoursAttentionCost) {
  // Time of c new tokens after 1,000: 1.1 ms x c + 50 ns x c(c+1), so 90
  // tokens take 99.41 ms and 91 take 100.52 ms: 90 fit, 80 in whole blocks.
  const CostModel cost = linearCost(100);
  PrefillBatcher batcher(cost, 0.100);
  batcher.push({.request_id = 7, .context_tokens = 1000, .new_tokens = 200});
  PrefillBatch batch = batcher.next();
  EXPECT_EQ(batch.entries, (std::vector<BatchEntry>{{7, 1000, 80, false}}));
  EXPECT_DOUBLE_EQ(batch.predicted_seconds, 0.088 + 80 * 81 * 50e-9);
}

TEST(PrefillBatcher, AlwaysMakesProgress) {
  // A 10 ms quota holds no whole block: each batch still takes one block.
  const CostModel cost = linearCost();
  PrefillBatcher batcher(cost, 0.010);
  batcher.push({.request_id = 1, .context_tokens = 0, .new_tokens = 20});
  EXPECT_EQ(batcher.next().entries, (std::vector<BatchEntry>{{1, 0, 16, false}}));
  EXPECT_EQ(batcher.next().entries, (std::vector<BatchEntry>{{1, 16, 4, true}}));
  EXPECT_EQ(batcher.pending(), 0u);
}

}  // namespace
}  // namespace dualpath::scheduler
