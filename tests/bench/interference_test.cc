// dualpath-bench interference on loopback (bench/netbench/interference.cc):
// KV as one-sided puts through the transport engine that the dlopened plugin
// shares, every landed byte checked by the ranks, and each case's ranks on
// that case's policy even when the launcher has parsed its own parameters.
#include "interference.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <dualpath/common/params.h>

#include "small_interference.h"

namespace dualpath::bench {
namespace {

using InterferenceTest = SmallInterferenceTest;

TEST_F(InterferenceTest, KvPutsLandBesideTheCollectivesInEveryKvCase) {
  // As the demo's launcher does before it forks the ranks: the parameters
  // each rank inherits are this process's, not its case's policy.
  ASSERT_TRUE(params::global().hasValue());

  // runInterference fails when a rank ran another policy than its case's,
  // or when a KV slot holds other bytes than the previous rank's puts.
  Result<std::vector<InterferenceRow>> rows = runInterference(smallRun("alltoall"));
  ASSERT_TRUE(rows.hasValue()) << rows.status().toString();
  ASSERT_EQ(rows->size(), 1u);
  const InterferenceRow& row = rows->front();
  EXPECT_EQ(row.alone.wrong + row.qos_off.wrong + row.qos_on.wrong, 0u);
  EXPECT_EQ(row.alone.kv_gbs, 0);
  EXPECT_GT(row.qos_off.kv_gbs, 0);
  EXPECT_GT(row.qos_on.kv_gbs, 0);
}

// --nccl: NCCL's own collectives on GPUs. Where there is no GPU (our CI) the
// ranks must say so; on a GPU machine the same run must deliver every byte.
TEST_F(InterferenceTest, NcclRunsOnGpusOrSaysWhyNot) {
  InterferenceOptions o = smallRun("alltoall");
  o.nccl = true;
  Result<std::vector<InterferenceRow>> rows = runInterference(o);
#if DUALPATH_HAVE_NCCL
  if (rows.hasValue()) {
    ASSERT_EQ(rows->size(), 1u);
    EXPECT_EQ(rows->front().alone.wrong + rows->front().qos_on.wrong, 0u);
    EXPECT_GT(rows->front().qos_on.kv_gbs, 0);
    return;
  }
  EXPECT_NE(rows.status().message().find("rank 0 sees no CUDA device"), std::string::npos)
      << rows.status().toString();
#else
  ASSERT_FALSE(rows.hasValue());
  EXPECT_EQ(rows.status().message(),
            "--nccl: this build has no NCCL backend (the CUDA toolkit and NCCL were not found "
            "when it was configured)");
#endif
}

TEST_F(InterferenceTest, NcclAndNetnsTogetherAreRefused) {
  InterferenceOptions o = smallRun("alltoall");
  o.nccl = true;
  o.netns = true;
  Result<std::vector<InterferenceRow>> rows = runInterference(o);
  ASSERT_FALSE(rows.hasValue());
  EXPECT_EQ(rows.status().code(), StatusCode::invalid_argument);
#if DUALPATH_HAVE_NCCL
  EXPECT_EQ(rows.status().message(),
            "--nccl and --netns: NCCL's ranks run on this host's GPUs, not in network namespaces; "
            "use one or the other");
#endif
}

}  // namespace
}  // namespace dualpath::bench
