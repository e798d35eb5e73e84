// Collectives over the NCCL net plugin (bench/netbench): 2 to 4 ranks as
// processes, connected through libnccl-net-dualpath.so as NCCL's proxy
// connects them, over UCX tcp on loopback. Every rank checks every byte it
// ends with; chunks are not multiples of the slice size, so partial slices
// and pipelining through several steps are exercised.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "collectives.h"
#include "net_plugin.h"
#include "rank_launcher.h"

namespace dualpath::bench {
namespace {

// Every rank, and so every plugin, uses loopback and the Ethernet test-bed
// policy; set before the first fork.
const bool kEnvironmentSet = [] {
  setenv("DUALPATH_NET_DEVICES", "lo", 1);
  setenv("DUALPATH_QOS_POLICY", DUALPATH_SOURCE_DIR "/qos/examples/ethernet-testbed.toml", 1);
  return true;
}();

constexpr auto kTimeout = std::chrono::seconds(60);
constexpr std::size_t kSlice = 4096;

std::byte patternByte(std::uint64_t seed, std::size_t i) {
  return static_cast<std::byte>((seed * 131 + i * 7 + i / 251) & 0xff);
}

// Runs `collective` on every rank of a fresh mesh; each rank reports "ok" or
// what it found wrong.
void runOnRanks(int ranks,
                const std::function<Status(NetMesh&, Bootstrap&, std::string*)>& collective) {
  Result<std::vector<RankOutcome>> outcomes = runRanks(
      ranks,
      [&](Bootstrap& bootstrap, std::string* report) -> Status {
        DP_TRY_ASSIGN(auto plugin, NetPlugin::load("dualpath"));
        Status status;
        {
          MeshOptions options;
          options.slice_bytes = kSlice;
          options.window = 4;
          DP_TRY_ASSIGN(auto mesh, NetMesh::connect(*plugin, bootstrap, options));
          status = collective(*mesh, bootstrap, report);
          // Nobody closes a connection a peer still reads from.
          if (status.isOk()) status = bootstrap.barrier();
        }
        return status;
      },
      kTimeout);
  ASSERT_TRUE(outcomes.hasValue()) << outcomes.status().toString();
  ASSERT_EQ(outcomes->size(), static_cast<std::size_t>(ranks));
  for (const RankOutcome& outcome : *outcomes) {
    EXPECT_TRUE(outcome.status.isOk()) << outcome.status.toString();
    EXPECT_EQ(outcome.report, "ok") << "rank " << outcome.rank;
  }
}

class CollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectivesTest, RingAllGatherLeavesEveryRanksChunkOnEveryRank) {
  const std::size_t chunk = 3 * kSlice + 123;
  runOnRanks(GetParam(), [&](NetMesh& mesh, Bootstrap&, std::string* report) -> Status {
    const auto n = static_cast<std::size_t>(mesh.ranks());
    DP_TRY_ASSIGN(MeshBuffer buffer, mesh.allocate(n * chunk));
    std::span<std::byte> bytes = buffer.bytes();
    const auto me = static_cast<std::size_t>(mesh.rank());
    for (std::size_t i = 0; i < chunk; ++i) bytes[me * chunk + i] = patternByte(me, i);
    DP_TRY(mesh.allGather(buffer, chunk, LaunchClock::now() + kTimeout));
    *report = "ok";
    for (std::size_t c = 0; c < n; ++c) {
      for (std::size_t i = 0; i < chunk; ++i) {
        if (bytes[c * chunk + i] != patternByte(c, i)) {
          *report = fmt::format("chunk {} byte {} differs", c, i);
          return Status::ok();
        }
      }
    }
    return Status::ok();
  });
}

// Rank r's contribution to element i of chunk c: small integers, so every
// sum is exact in float.
float contribution(std::size_t r, std::size_t c, std::size_t i) {
  return static_cast<float>((r + 1) * 1000 + c * 10 + i % 7);
}

TEST_P(CollectivesTest, RingReduceScatterSumsEachChunkOnItsRank) {
  const std::size_t count = 2 * (kSlice / sizeof(float)) + 77;
  runOnRanks(GetParam(), [&](NetMesh& mesh, Bootstrap&, std::string* report) -> Status {
    const auto n = static_cast<std::size_t>(mesh.ranks());
    const auto me = static_cast<std::size_t>(mesh.rank());
    DP_TRY_ASSIGN(MeshBuffer input, mesh.allocate(n * count * sizeof(float)));
    DP_TRY_ASSIGN(MeshBuffer scratch, mesh.allocate((n - 1) * count * sizeof(float)));
    std::span<float> in = input.as<float>();
    for (std::size_t c = 0; c < n; ++c) {
      for (std::size_t i = 0; i < count; ++i) in[c * count + i] = contribution(me, c, i);
    }
    std::vector<float> output(count);
    DP_TRY(mesh.reduceScatter(input, scratch, output, count, LaunchClock::now() + kTimeout));
    *report = "ok";
    for (std::size_t i = 0; i < count; ++i) {
      float expected = 0;
      for (std::size_t r = 0; r < n; ++r) expected += contribution(r, me, i);
      if (output[i] != expected) {
        *report = fmt::format("element {}: {} instead of {}", i, output[i], expected);
        break;
      }
    }
    return Status::ok();
  });
}

TEST_P(CollectivesTest, PairwiseAllToAllDeliversEachChunkToItsRank) {
  const std::size_t chunk = kSlice + 999;
  runOnRanks(GetParam(), [&](NetMesh& mesh, Bootstrap&, std::string* report) -> Status {
    const auto n = static_cast<std::size_t>(mesh.ranks());
    const auto me = static_cast<std::size_t>(mesh.rank());
    DP_TRY_ASSIGN(MeshBuffer send, mesh.allocate(n * chunk));
    DP_TRY_ASSIGN(MeshBuffer recv, mesh.allocate(n * chunk));
    for (std::size_t p = 0; p < n; ++p) {
      for (std::size_t i = 0; i < chunk; ++i) send.bytes()[p * chunk + i] = patternByte(me * n + p, i);
    }
    DP_TRY(mesh.allToAll(send, recv, chunk, LaunchClock::now() + kTimeout));
    *report = "ok";
    for (std::size_t q = 0; q < n; ++q) {
      for (std::size_t i = 0; i < chunk; ++i) {
        if (recv.bytes()[q * chunk + i] != patternByte(q * n + me, i)) {
          *report = fmt::format("chunk from rank {} byte {} differs", q, i);
          return Status::ok();
        }
      }
    }
    return Status::ok();
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, CollectivesTest, ::testing::Values(2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& param) {
                           return fmt::format("{}ranks", param.param);
                         });

TEST(RankLauncher, ARankThatFailsIsReportedByRankWithItsError) {
  Result<std::vector<RankOutcome>> outcomes = runRanks(
      2,
      [](Bootstrap& bootstrap, std::string* report) -> Status {
        if (bootstrap.rank() == 1) return Status(StatusCode::io, "disk on fire");
        *report = "fine";
        return Status::ok();
      },
      kTimeout);
  ASSERT_TRUE(outcomes.hasValue()) << outcomes.status().toString();
  EXPECT_TRUE((*outcomes)[0].status.isOk());
  EXPECT_EQ((*outcomes)[0].report, "fine");
  EXPECT_EQ((*outcomes)[1].status.message(), "rank 1: exited 1: io: disk on fire");
}

// Rank 0 waits in a barrier that rank 1 never joins: without fail-fast it
// would wait for the whole timeout (kTimeout); it is killed once rank 1 has
// failed and its grace has passed.
TEST(RankLauncher, TheOthersAreStoppedSoonAfterARankFails) {
  Result<std::vector<RankOutcome>> outcomes = runRanks(
      2,
      [](Bootstrap& bootstrap, std::string*) -> Status {
        if (bootstrap.rank() == 1) return Status(StatusCode::io, "disk on fire");
        return bootstrap.barrier();
      },
      std::chrono::hours(1), std::chrono::milliseconds(200));
  ASSERT_TRUE(outcomes.hasValue()) << outcomes.status().toString();
  EXPECT_EQ((*outcomes)[1].status.message(), "rank 1: exited 1: io: disk on fire");
  EXPECT_EQ((*outcomes)[0].status.code(), StatusCode::remote);
  EXPECT_EQ((*outcomes)[0].status.message(),
            "rank 0: still running 200 ms after rank 1 failed; killed");
}

TEST(RankLauncher, AllGatherHandsEveryRankEveryBlobInRankOrder) {
  Result<std::vector<RankOutcome>> outcomes = runRanks(
      3,
      [](Bootstrap& bootstrap, std::string* report) -> Status {
        const std::byte mine[2] = {static_cast<std::byte>(bootstrap.rank()), std::byte{0x5a}};
        DP_TRY_ASSIGN(std::vector<std::byte> all, bootstrap.allGather(mine));
        for (std::byte b : all) *report += fmt::format("{:02x}", std::to_integer<int>(b));
        return Status::ok();
      },
      kTimeout);
  ASSERT_TRUE(outcomes.hasValue()) << outcomes.status().toString();
  for (const RankOutcome& outcome : *outcomes) EXPECT_EQ(outcome.report, "005a015a025a");
}

}  // namespace
}  // namespace dualpath::bench
