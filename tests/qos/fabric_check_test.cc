#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/qos/fabric_check.h>
#include <dualpath/qos/policy_loader.h>

#include "policy_test_util.h"

namespace dualpath::qos {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

const std::string kFixtures = std::string(DUALPATH_SOURCE_DIR) + "/tests/qos/fixtures/";

CapturedOutput fixture(const std::string& name) {
  std::ifstream in(kFixtures + name);
  EXPECT_TRUE(in.good()) << name;
  std::ostringstream text;
  text << in.rdbuf();
  return {name, text.str()};
}

Policy paperPolicy() {
  // Loaded from text under a short name so messages are stable.
  std::ifstream in(std::string(DUALPATH_SOURCE_DIR) + "/qos/examples/paper-ib.toml");
  std::ostringstream text;
  text << in.rdbuf();
  LoadedPolicy loaded = loadPolicyText(text.str(), "paper-ib.toml");
  EXPECT_TRUE(loaded.policy.has_value());
  return std::move(*loaded.policy);
}

TEST(FabricCheckTest, PaperFabricMatches) {
  FabricCheckRequest request;
  request.sl2vl = fixture("paper-ca.sl2vl.txt");
  request.vlarb = fixture("paper-ca.vlarb.txt");
  request.portinfo = fixture("paper-ca.portinfo.txt");
  Result<FabricCheckReport> report = checkFabric(paperPolicy(), request);
  ASSERT_TRUE(report.hasValue()) << report.status().toString();
  EXPECT_THAT(report->mismatches, IsEmpty());
  EXPECT_THAT(report->checked, ElementsAre("sl2vl (1 row)", "vlarb_high (8 entries)",
                                           "vlarb_low (8 entries)", "VLHighLimit", "OperVLs"));
}

TEST(FabricCheckTest, ReportsEveryMismatchWithBothSides) {
  FabricCheckRequest request;
  request.sl2vl = fixture("default-ca.sl2vl.txt");
  request.vlarb = fixture("default-ca.vlarb.txt");
  request.portinfo = fixture("default-ca.portinfo.txt");
  Result<FabricCheckReport> report = checkFabric(paperPolicy(), request);
  ASSERT_TRUE(report.hasValue()) << report.status().toString();
  EXPECT_THAT(
      report->mismatches,
      ElementsAre(
          "sl2vl (in  0, out  0): SL 2 -> VL 0 on the fabric (default-ca.sl2vl.txt:3), the "
          "policy maps SL 2 -> VL 2 (paper-ib.toml:17:16)",
          "vlarb_high entry 2: VL 2 weight 64 on the fabric (default-ca.vlarb.txt:7), the policy "
          "has VL 2 weight 0 (paper-ib.toml:14:27)",
          "vlarb_low entry 2: VL 2 weight 32 on the fabric (default-ca.vlarb.txt:4), the policy "
          "has VL 2 weight 64 (paper-ib.toml:15:26)",
          "vlarb_low entry 4: VL 4 weight 4 on the fabric (default-ca.vlarb.txt:4), the policy has "
          "no entry (weight 0)",
          "high_limit: 0 on the fabric (default-ca.portinfo.txt:25), the policy has 240 "
          "(paper-ib.toml:13:14)",
          "max_vls: 2 operational VLs on the fabric (default-ca.portinfo.txt:32), the policy "
          "expects 4 (paper-ib.toml:12:11); VLs beyond the operational count are masked"));
}

TEST(FabricCheckTest, SwitchRowsAreEachCompared) {
  FabricCheckRequest request;
  request.port_type = IbPortType::switch_external;
  request.sl2vl = fixture("paper-switch.sl2vl.txt");
  Result<FabricCheckReport> report = checkFabric(paperPolicy(), request);
  ASSERT_TRUE(report.hasValue());
  EXPECT_THAT(report->mismatches,
              ElementsAre("sl2vl (in  3, out  5): SL 15 -> VL 2 on the fabric "
                          "(paper-switch.sl2vl.txt:6), the policy maps SL 15 -> VL 3 "
                          "(paper-ib.toml:17:55)"));
  EXPECT_THAT(report->checked, ElementsAre("sl2vl (4 rows)"));
}

TEST(FabricCheckTest, PortTypeOverrideIsTheReference) {
  std::string text = testing::appendLines(testing::kInfinibandPolicy,
                                          "[fabric.ca]\nvlarb_low = \"0:192,1:192,2:32,3:192\"");
  LoadedPolicy loaded = loadPolicyText(text, "policy.toml");
  ASSERT_TRUE(loaded.policy.has_value());
  FabricCheckRequest request;
  request.vlarb = fixture("default-ca.vlarb.txt");
  Result<FabricCheckReport> ca = checkFabric(*loaded.policy, request);
  ASSERT_TRUE(ca.hasValue());
  // Entry 2 now agrees (32); the stray VL 4 entry and the high table do not.
  EXPECT_THAT(
      ca->mismatches,
      ElementsAre(::testing::StartsWith("vlarb_high entry 2:"),
                  "vlarb_low entry 4: VL 4 weight 4 on the fabric (default-ca.vlarb.txt:4), "
                  "the policy has no entry (weight 0)"));
}

TEST(FabricCheckTest, UnreadableCaptureNamesFileAndLine) {
  FabricCheckRequest request;
  request.sl2vl = fixture("not-smpquery-sl2vl.txt");
  Result<FabricCheckReport> report = checkFabric(paperPolicy(), request);
  ASSERT_FALSE(report.hasValue());
  EXPECT_EQ(report.status().message(),
            "not-smpquery-sl2vl.txt:1: no SL2VL rows found; expected the output of `smpquery "
            "sl2vl <lid> [port]`");

  request.sl2vl = CapturedOutput{"cut.txt", "ports: in  0, out  0: | 0| 1| 2|\n"};
  report = checkFabric(paperPolicy(), request);
  ASSERT_FALSE(report.hasValue());
  EXPECT_EQ(report.status().message(),
            "cut.txt:1: not an SL2VL row (expected 'ports: in N, out M: | 0| 1| ...' with 16 VLs, "
            "as `smpquery sl2vl` prints)");
}

TEST(FabricCheckTest, VlArbRowOutsideATable) {
  FabricCheckRequest request;
  request.vlarb = CapturedOutput{"vlarb.txt", "VL    : |0x0 |\nWEIGHT: |0x1 |\n"};
  Result<FabricCheckReport> report = checkFabric(paperPolicy(), request);
  ASSERT_FALSE(report.hasValue());
  EXPECT_EQ(report.status().message(),
            "vlarb.txt:1: VL arbitration row before a '# Low/High priority VL Arbitration Table' "
            "header; expected the output of `smpquery vlarb <lid> [port]`");
}

TEST(FabricCheckTest, RefusesNonInfinibandPolicies) {
  LoadedPolicy loaded = loadPolicyText(testing::kRocePolicy, "roce.toml");
  ASSERT_TRUE(loaded.policy.has_value());
  FabricCheckRequest request;
  request.sl2vl = fixture("paper-ca.sl2vl.txt");
  Result<FabricCheckReport> report = checkFabric(*loaded.policy, request);
  ASSERT_FALSE(report.hasValue());
  EXPECT_EQ(report.status().message(),
            "check compares InfiniBand tables; roce.toml has fabric kind \"roce\"");
}

}  // namespace
}  // namespace dualpath::qos
