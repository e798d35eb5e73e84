// The read-path policies on a two-node cluster view.
#include <gtest/gtest.h>

#include <dualpath/scheduler/path_policy.h>

namespace dualpath::scheduler {
namespace {

constexpr EngineIndex kPrefillEngine = 0;  // node 0
constexpr EngineIndex kDecodeEngine = 2;   // node 1

// Node 0: two PEs; node 1: two DEs. SNICs 1,000 B/s, CNICs 500 B/s.
ClusterState twoNodes() {
  NodeSpec prefill{.role = EngineRole::prefill, .engines = 2, .snic_bytes_per_s = 1000,
                   .cnic_bytes_per_s = 500, .kv_hbm_bytes_per_engine = 0};
  NodeSpec decode = prefill;
  decode.role = EngineRole::decode;
  decode.kv_hbm_bytes_per_engine = 1 << 20;
  return ClusterState(ClusterSpec{.nodes = {prefill, decode}});
}

struct Loads {
  std::uint64_t prefill_read_queue = 0;
  std::uint64_t decode_read_queue = 0;
  double prefill_snic = 0;
  double decode_snic = 0;
  double prefill_cnic = 0;
  double decode_cnic = 0;
};

ClusterState withLoads(const Loads& loads) {
  ClusterState cluster = twoNodes();
  EXPECT_TRUE(cluster.apply({.node = 0, .read_queue_tokens = loads.prefill_read_queue,
                             .snic_load_bytes_per_s = loads.prefill_snic,
                             .engines = {{.cnic_load_bytes_per_s = loads.prefill_cnic}, {}}}));
  EXPECT_TRUE(cluster.apply({.node = 1, .read_queue_tokens = loads.decode_read_queue,
                             .snic_load_bytes_per_s = loads.decode_snic,
                             .engines = {{.cnic_load_bytes_per_s = loads.decode_cnic}, {}}}));
  return cluster;
}

ReadPlan choose(std::string_view policy, const ClusterState& cluster, std::uint32_t blocks) {
  return makePathPolicy(policy).value()->choose(PathChoice{.cluster = cluster,
                                                           .prefill_engine = kPrefillEngine,
                                                           .decode_engine = kDecodeEngine,
                                                           .cached_blocks = blocks});
}

TEST(PathPolicy, ShorterReadQueueReadsOnTheLessLoadedNode) {
  EXPECT_EQ(choose("shorter-queue", withLoads({.prefill_read_queue = 100, .decode_read_queue = 50}), 8),
            (ReadPlan{.de_path_blocks = 8, .pe_path_blocks = 0}));
  EXPECT_EQ(choose("shorter-queue", withLoads({.prefill_read_queue = 50, .decode_read_queue = 100}), 8),
            (ReadPlan{.de_path_blocks = 0, .pe_path_blocks = 8}));
  // A tie saves the relay.
  EXPECT_EQ(choose("shorter-queue", withLoads({.prefill_read_queue = 70, .decode_read_queue = 70}), 8),
            (ReadPlan{.de_path_blocks = 0, .pe_path_blocks = 8}));
}

TEST(PathPolicy, SinglePathBaselines) {
  const ClusterState cluster = withLoads({.prefill_read_queue = 1000});
  EXPECT_EQ(choose("pe-only", cluster, 5), (ReadPlan{.de_path_blocks = 0, .pe_path_blocks = 5}));
  EXPECT_EQ(choose("de-only", cluster, 5), (ReadPlan{.de_path_blocks = 5, .pe_path_blocks = 0}));
}

TEST(PathPolicy, SplitFollowsFreeBandwidth) {
  // PE path: 1,000 - 600 = 400 B/s free. DE path: min(DE SNIC 1,000,
  // DE CNIC 500 - 200, PE CNIC 500) = 300. 10 x 300 / 700 = 4.29 -> 4 blocks.
  const ClusterState cluster =
      withLoads({.prefill_snic = 600, .decode_snic = 0, .prefill_cnic = 0, .decode_cnic = 200});
  const PathChoice choice{.cluster = cluster, .prefill_engine = kPrefillEngine,
                          .decode_engine = kDecodeEngine, .cached_blocks = 10};
  EXPECT_DOUBLE_EQ(choice.prefillPathFreeBytesPerS(), 400);
  EXPECT_DOUBLE_EQ(choice.decodePathFreeBytesPerS(), 300);
  EXPECT_EQ(choose("split", cluster, 10), (ReadPlan{.de_path_blocks = 4, .pe_path_blocks = 6}));
  // The PE's own CNIC bounds the relay too: 150 free gives 10 x 150 / 550.
  const ClusterState busy_prefill_cnic =
      withLoads({.prefill_snic = 600, .prefill_cnic = 350, .decode_cnic = 200});
  EXPECT_EQ(choose("split", busy_prefill_cnic, 10),
            (ReadPlan{.de_path_blocks = 3, .pe_path_blocks = 7}));
}

TEST(PathPolicy, SplitWithoutFreeBandwidthFallsBackToTheShorterQueue) {
  const ClusterState cluster = withLoads({.prefill_read_queue = 10, .decode_read_queue = 5,
                                          .prefill_snic = 1000, .decode_snic = 1200});
  EXPECT_EQ(choose("split", cluster, 6), (ReadPlan{.de_path_blocks = 6, .pe_path_blocks = 0}));
}

TEST(PathPolicy, UnknownNameListsThePolicies) {
  EXPECT_EQ(makePathPolicy("fastest").status().message(),
            "unknown read-path policy 'fastest': expected shorter-queue, pe-only, de-only or split");
  for (std::string_view name : pathPolicyNames()) {
    EXPECT_EQ(makePathPolicy(name).value()->name(), name);
  }
}

}  // namespace
}  // namespace dualpath::scheduler
