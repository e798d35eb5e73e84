// dualpath-bench interference on loopback (bench/netbench/interference.cc):
// KV as one-sided puts through the transport engine that the dlopened plugin
// shares, every landed byte checked by the ranks, and each case's ranks on
// that case's policy even when the launcher has parsed its own parameters.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <dualpath/common/params.h>

#include "interference.h"
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

}  // namespace
}  // namespace dualpath::bench
