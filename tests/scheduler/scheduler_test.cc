// The global scheduler's rules on a small cluster with hand-set loads:
// two PE nodes (engines 0-3) and two DE nodes (engines 4-7), two GPUs each,
// the tiny model (256 B of KV per token, 16-token blocks), α = 1,000 and
// β = 500 tokens.
#include <gtest/gtest.h>

#include <dualpath/scheduler/scheduler.h>

namespace dualpath::scheduler {
namespace {

constexpr std::uint64_t kAlpha = 1000;
constexpr std::uint64_t kBeta = 500;
constexpr std::uint64_t kKvPerEngine = 1 << 20;  // 4,096 tokens of the tiny model

CostModel tinyCost() {
  return CostModel::create(modelPreset("tiny").value(), hardwarePreset("tiny").value()).value();
}

Scheduler makeScheduler(SchedulerConfig config = {.alpha_tokens = kAlpha, .beta_tokens = kBeta},
                        std::string_view policy = "shorter-queue") {
  return Scheduler::create(ClusterSpec::uniform(2, 2, hardwarePreset("tiny").value()), tinyCost(),
                           makePathPolicy(policy).value(), config)
      .value();
}

struct Engine {
  std::uint64_t tokens = 0;
  std::uint32_t requests = 0;
  std::uint64_t free_kv = kKvPerEngine;
};

void report(Scheduler& scheduler, NodeIndex node, std::uint64_t read_queue, Engine first,
            Engine second) {
  auto load = [](const Engine& e) {
    return EngineLoad{.unfinished_requests = e.requests, .unfinished_tokens = e.tokens,
                      .free_kv_bytes = e.free_kv};
  };
  ASSERT_TRUE(scheduler.apply({.node = node, .read_queue_tokens = read_queue,
                               .engines = {load(first), load(second)}}));
}

Assignment scheduleOne(Scheduler& scheduler, const Request& request) {
  EXPECT_TRUE(scheduler.submit(request));
  std::vector<Assignment> out;
  const RoundResult round = scheduler.scheduleRound(out);
  EXPECT_EQ(round.assigned, 1u) << roundStopName(round.stop);
  return out.empty() ? Assignment{} : out.front();
}

constexpr Request kSmall{.id = 1, .tokens = 16, .cached_tokens = 0};

// ---------------------------------------------------------------- prefill

TEST(PrefillChoice, PrefersNodesWhoseReadQueueIsAtMostAlpha) {
  Scheduler scheduler = makeScheduler();
  report(scheduler, 0, 2000, {.tokens = 100}, {.tokens = 50});
  report(scheduler, 1, kAlpha, {.tokens = 300}, {.tokens = 400});
  EXPECT_EQ(scheduler.choosePrefillEngine(), 2u);  // not engine 1, whose node reads too much
}

TEST(PrefillChoice, SkipsEnginesOverBeta) {
  Scheduler scheduler = makeScheduler();
  report(scheduler, 0, 2000, {.tokens = 100}, {.tokens = 50});
  report(scheduler, 1, 500, {.tokens = kBeta + 1}, {.tokens = 400});
  EXPECT_EQ(scheduler.choosePrefillEngine(), 3u);
}

TEST(PrefillChoice, WithoutPreferredEnginesTakesTheFewestTokens) {
  Scheduler scheduler = makeScheduler();
  report(scheduler, 0, 2000, {.tokens = 100}, {.tokens = 50});
  report(scheduler, 1, 5000, {.tokens = 600}, {.tokens = 40});
  EXPECT_EQ(scheduler.choosePrefillEngine(), 3u);
  report(scheduler, 1, 5000, {.tokens = 600}, {.tokens = 400});
  EXPECT_EQ(scheduler.choosePrefillEngine(), 1u);
}

TEST(PrefillChoice, TiesGoToTheLowerIndex) {
  Scheduler scheduler = makeScheduler();
  EXPECT_EQ(scheduler.choosePrefillEngine(), 0u);
}

TEST(PrefillChoice, EveryEngineOverBetaStopsTheRound) {
  Scheduler scheduler = makeScheduler();
  report(scheduler, 0, 0, {.tokens = kBeta + 1}, {.tokens = kBeta + 1});
  report(scheduler, 1, 0, {.tokens = kBeta + 1}, {.tokens = 9000});
  ASSERT_TRUE(scheduler.submit(kSmall));
  std::vector<Assignment> out;
  const RoundResult round = scheduler.scheduleRound(out);
  EXPECT_EQ(round.assigned, 0u);
  EXPECT_EQ(round.stop, RoundStop::prefill_engines_busy);
  EXPECT_EQ(scheduler.queued(), 1u);
  EXPECT_TRUE(out.empty());
}

// ---------------------------------------------------------------- decode

TEST(DecodeChoice, TheGroupWithFewestTokensTakesTheRound) {
  Scheduler scheduler = makeScheduler();
  report(scheduler, 2, 0, {.tokens = 1000}, {.tokens = 1000});  // 2,000
  report(scheduler, 3, 0, {.tokens = 500}, {.tokens = 2000});   // 2,500
  EXPECT_EQ(scheduleOne(scheduler, kSmall).decode_engine, 4u);  // not engine 6
}

TEST(DecodeChoice, UnderZTheFewestRequestsWin) {
  // Z = 1.05 x (16 + 2,010) / 2 = 1,063.65: both engines stay under it.
  Scheduler scheduler = makeScheduler();
  report(scheduler, 2, 0, {.tokens = 1000, .requests = 5}, {.tokens = 1010, .requests = 1});
  report(scheduler, 3, 0, {.tokens = 2000}, {.tokens = 2000});
  EXPECT_EQ(scheduleOne(scheduler, kSmall).decode_engine, 5u);
}

TEST(DecodeChoice, OverZTheFewestTokensWin) {
  // Z = 1.05 x (160 + 1,990) / 2 = 1,128.75: 1,160 and 1,150 are both over.
  Scheduler scheduler = makeScheduler();
  report(scheduler, 2, 0, {.tokens = 1000, .requests = 0}, {.tokens = 990, .requests = 9});
  report(scheduler, 3, 0, {.tokens = 2000}, {.tokens = 2000});
  EXPECT_EQ(scheduleOne(scheduler, {.id = 1, .tokens = 160, .cached_tokens = 144}).decode_engine,
            5u);
}

TEST(DecodeChoice, NeedsFreeKvMemory) {
  // 16 tokens need 4,096 bytes; engine 5 would win on requests but has 4,000.
  Scheduler scheduler = makeScheduler();
  report(scheduler, 2, 0, {.tokens = 1000, .requests = 5},
         {.tokens = 1010, .requests = 1, .free_kv = 4000});
  report(scheduler, 3, 0, {.tokens = 2000}, {.tokens = 2000});
  EXPECT_EQ(scheduleOne(scheduler, kSmall).decode_engine, 4u);
}

TEST(DecodeChoice, AFullGroupSpillsToTheNextGroup) {
  // Node 2 has the fewest tokens but no memory; on node 3, Z for this request
  // alone is 1.05 x (16 + 150) / 2 = 87.15: engine 7 (50 + 16) is under it.
  Scheduler scheduler = makeScheduler();
  report(scheduler, 2, 0, {.free_kv = 0}, {.free_kv = 0});
  report(scheduler, 3, 0, {.tokens = 100}, {.tokens = 50, .requests = 3});
  EXPECT_EQ(scheduleOne(scheduler, kSmall).decode_engine, 7u);
}

TEST(DecodeChoice, NoMemoryAnywhereStopsTheRoundAndUndoesThePrefill) {
  Scheduler scheduler = makeScheduler();
  report(scheduler, 2, 0, {.free_kv = 0}, {.free_kv = 0});
  report(scheduler, 3, 0, {.free_kv = 4095}, {.free_kv = 0});
  ASSERT_TRUE(scheduler.submit(kSmall));
  std::vector<Assignment> out;
  const RoundResult round = scheduler.scheduleRound(out);
  EXPECT_EQ(round.assigned, 0u);
  EXPECT_EQ(round.stop, RoundStop::decode_memory_full);
  EXPECT_EQ(scheduler.queued(), 1u);
  EXPECT_EQ(scheduler.cluster().engine(0).load.unfinished_tokens, 0u);
  EXPECT_EQ(scheduler.cluster().engine(0).load.unfinished_requests, 0u);
}

// ---------------------------------------------------------------- rounds

TEST(Round, SpreadsRequestsAndAlternatesReadPaths) {
  // Z = 1.05 x (160 + 160) / 2 = 168, so the two requests land on different
  // DEs. The first reads on its PE's node (a tie); its 144 tokens then make
  // node 0's queue longer than node 2's, so the second is relayed by its DE.
  Scheduler scheduler = makeScheduler();
  ASSERT_TRUE(scheduler.submit({.id = 1, .tokens = 160, .cached_tokens = 144}));
  ASSERT_TRUE(scheduler.submit({.id = 2, .tokens = 160, .cached_tokens = 144}));
  std::vector<Assignment> out;
  const RoundResult round = scheduler.scheduleRound(out);
  EXPECT_EQ(round.assigned, 2u);
  EXPECT_EQ(round.stop, RoundStop::queue_empty);
  EXPECT_EQ(out, (std::vector<Assignment>{
                     {.request_id = 1, .prefill_engine = 0, .decode_engine = 4,
                      .read = {.de_path_blocks = 0, .pe_path_blocks = 9}},
                     {.request_id = 2, .prefill_engine = 1, .decode_engine = 5,
                      .read = {.de_path_blocks = 9, .pe_path_blocks = 0}},
                 }));
  const ClusterState& cluster = scheduler.cluster();
  EXPECT_EQ(cluster.node(0).read_queue_tokens, 144u);
  EXPECT_EQ(cluster.node(2).read_queue_tokens, 144u);
  EXPECT_EQ(cluster.engine(0).load.unfinished_tokens, 16u);  // PEs count new tokens
  EXPECT_EQ(cluster.engine(4).load.unfinished_tokens, 160u);  // DEs count the context
  EXPECT_EQ(cluster.engine(4).load.free_kv_bytes, kKvPerEngine - 160 * 256);
  EXPECT_EQ(cluster.node(2).group_tokens, 320u);
}

TEST(Round, ReportsReplaceTheSchedulersEstimates) {
  Scheduler scheduler = makeScheduler();
  scheduleOne(scheduler, {.id = 1, .tokens = 160, .cached_tokens = 144});
  report(scheduler, 0, 7, {.tokens = 3}, {});
  EXPECT_EQ(scheduler.cluster().node(0).read_queue_tokens, 7u);
  EXPECT_EQ(scheduler.cluster().engine(0).load.unfinished_tokens, 3u);
  EXPECT_EQ(scheduler.cluster().node(0).group_tokens, 3u);
}

TEST(Round, StopsAtMaxRoundRequests) {
  Scheduler scheduler =
      makeScheduler({.alpha_tokens = kAlpha, .beta_tokens = kBeta, .max_round_requests = 2});
  for (std::uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(scheduler.submit({.id = id, .tokens = 16, .cached_tokens = 0}));
  }
  std::vector<Assignment> out;
  EXPECT_EQ(scheduler.scheduleRound(out).stop, RoundStop::round_full);
  EXPECT_EQ(scheduler.queued(), 1u);
  EXPECT_EQ(scheduler.scheduleRound(out).stop, RoundStop::queue_empty);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[2].request_id, 3u);
}

TEST(Round, SamePolicyInterfaceDrivesEveryPolicy) {
  Scheduler basic = makeScheduler({.alpha_tokens = kAlpha, .beta_tokens = kBeta}, "pe-only");
  report(basic, 0, 900, {}, {});
  EXPECT_EQ(basic.policy().name(), "pe-only");
  EXPECT_EQ(scheduleOne(basic, {.id = 1, .tokens = 48, .cached_tokens = 32}).read,
            (ReadPlan{.de_path_blocks = 0, .pe_path_blocks = 2}));
}

std::vector<Assignment> replay(std::string_view policy) {
  Scheduler scheduler = makeScheduler({.alpha_tokens = kAlpha, .beta_tokens = kBeta}, policy);
  std::vector<Assignment> out;
  for (std::uint64_t id = 0; id < 400; ++id) {
    const std::uint64_t cached = (id * 7 % 13) * 16;
    EXPECT_TRUE(scheduler.submit({.id = id, .tokens = cached + 1 + id % 29, .cached_tokens = cached}));
    if (id % 5 == 4) scheduler.scheduleRound(out);
    if (id % 50 == 49) {  // engines finish their work and report
      for (NodeIndex node = 0; node < 4; ++node) report(scheduler, node, 0, {}, {});
    }
  }
  while (scheduler.queued() > 0 && scheduler.scheduleRound(out).assigned > 0) {
  }
  return out;
}

TEST(Round, IsDeterministicAndReadsEveryCachedBlockOnce) {
  for (std::string_view policy : pathPolicyNames()) {
    const std::vector<Assignment> first = replay(policy);
    EXPECT_EQ(first.size(), 400u) << policy;
    EXPECT_EQ(first, replay(policy)) << policy;
    for (const Assignment& a : first) {
      EXPECT_EQ(a.read.blocks(), a.request_id * 7 % 13) << policy << " request " << a.request_id;
    }
  }
}

// ---------------------------------------------------------------- inputs

TEST(Inputs, AlphaAndBetaDeriveFromTheModelUnlessProfiled) {
  const Scheduler derived = makeScheduler(SchedulerConfig{});
  EXPECT_EQ(derived.alphaTokens(), 11718u);  // 3 s x 1e6 B/s / 256 B
  EXPECT_EQ(derived.betaTokens(), 5000u);    // 5 s x 1e9 FLOP/s / 1e6 FLOPs
  const Scheduler profiled = makeScheduler();
  EXPECT_EQ(profiled.alphaTokens(), kAlpha);
  EXPECT_EQ(profiled.betaTokens(), kBeta);
}

TEST(Inputs, BadRequestsNameTheRequestAndField) {
  Scheduler scheduler = makeScheduler();
  EXPECT_EQ(scheduler.submit({.id = 3, .tokens = 0}).message(), "request 3: tokens must be positive");
  EXPECT_EQ(scheduler.submit({.id = 4, .tokens = 100, .cached_tokens = 40}).message(),
            "request 4: cached_tokens 40 is not a whole number of 16-token blocks");
  EXPECT_EQ(scheduler.submit({.id = 5, .tokens = 32, .cached_tokens = 32}).message(),
            "request 5: cached_tokens 32 must be fewer than tokens 32: at least one token is "
            "prefilled");
  EXPECT_EQ(scheduler.submit({.id = 6, .tokens = 5000}).message(),
            "request 6: its KV-cache (1250KiB) exceeds the KV memory of every decode engine (1MiB)");
  EXPECT_EQ(scheduler.queued(), 0u);
}

TEST(Inputs, BadReportsNameTheNode) {
  Scheduler scheduler = makeScheduler();
  EXPECT_EQ(scheduler.apply(GroupReport{.node = 9, .engines = {}}).message(),
            "report from node 9: the cluster has nodes 0 to 3");
  EXPECT_EQ(scheduler.apply({.node = 2, .engines = {{}, {}, {}}}).message(),
            "report from node 2: 3 engine loads for 2 engines");
}

TEST(Inputs, ClusterNeedsBothRoles) {
  const Result<Scheduler> created =
      Scheduler::create(ClusterSpec::uniform(2, 0, hardwarePreset("tiny").value()), tinyCost(),
                        makePathPolicy("shorter-queue").value());
  EXPECT_EQ(created.status().message(),
            "cluster: needs at least one prefill and one decode node (has some prefill, no decode)");
}

}  // namespace
}  // namespace dualpath::scheduler
