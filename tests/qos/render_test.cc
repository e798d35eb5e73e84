#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <dualpath/qos/render.h>

#include "policy_test_util.h"

namespace dualpath::qos {
namespace {

using ::testing::HasSubstr;
using testing::kEthernetPolicy;
using testing::kInfinibandPolicy;
using testing::kRocePolicy;
using testing::loadTestPolicy;
using ::testing::Not;
using testing::replaceLine;

Policy mustLoad(const std::string& text) {
  LoadedPolicy loaded = loadTestPolicy(text);
  EXPECT_TRUE(loaded.policy.has_value());
  return std::move(*loaded.policy);
}

Policy loadExample(const char* name) {
  LoadedPolicy loaded = loadPolicyFile(std::string(DUALPATH_SOURCE_DIR) + "/qos/examples/" + name);
  EXPECT_TRUE(loaded.policy.has_value()) << name;
  return std::move(*loaded.policy);
}

std::vector<std::string> commandLines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] != '#') lines.push_back(line);
  }
  return lines;
}

TEST(RenderOpenSmTest, PaperExampleGivesThePaperLinesByteForByte) {
  Result<std::string> text = renderOpenSm(loadExample("paper-ib.toml"));
  ASSERT_TRUE(text.hasValue()) << text.status().toString();
  EXPECT_THAT(commandLines(*text),
              ::testing::ElementsAre("qos TRUE", "qos_max_vls 4", "qos_high_limit 240",
                                     "qos_vlarb_high 0:192,1:192,2:0,3:192",
                                     "qos_vlarb_low 0:192,1:192,2:64,3:192",
                                     "qos_sl2vl 0,1,2,3,0,1,2,3,0,1,2,3,0,1,2,3"));
}

TEST(RenderOpenSmTest, PortTypeOverridesUseOpenSmPrefixes) {
  Policy policy = mustLoad(
      testing::appendLines(kInfinibandPolicy,
                           "[fabric.switch_external]\nhigh_limit = 200\n[fabric.ca]\nvlarb_low = "
                           "\"0:100,1:100,2:32,3:100\""));
  Result<std::string> text = renderOpenSm(policy);
  ASSERT_TRUE(text.hasValue());
  EXPECT_THAT(*text, HasSubstr("\nqos_ca_vlarb_low 0:100,1:100,2:32,3:100\n"));
  EXPECT_THAT(*text, HasSubstr("\nqos_swe_high_limit 200\n"));
  EXPECT_THAT(*text, Not(HasSubstr("qos_ca_high_limit")));
}

TEST(RenderOpenSmTest, RefusesOtherFabrics) {
  Result<std::string> text = renderOpenSm(mustLoad(kRocePolicy));
  ASSERT_FALSE(text.hasValue());
  EXPECT_EQ(text.status().message(),
            "--format opensm needs a fabric of kind \"infiniband\"; policy.toml has kind \"roce\"");
}

TEST(RenderRoceTest, MlnxQosCommands) {
  Result<std::string> text = renderRoce(mustLoad(kRocePolicy), "eth2", RoceTool::mlnx_qos);
  ASSERT_TRUE(text.hasValue()) << text.status().toString();
  EXPECT_THAT(
      commandLines(*text),
      ::testing::ElementsAre(
          "set -e", "mlnx_qos -i eth2 --trust dscp", "mlnx_qos -i eth2 --dscp2prio set,26,3",
          "mlnx_qos -i eth2 --dscp2prio set,10,2", "mlnx_qos -i eth2 --prio_tc 0,1,2,3,4,5,6,7",
          "mlnx_qos -i eth2 --tsa ets,ets,ets,ets,ets,ets,ets,ets --tcbw 0,0,5,95,0,0,0,0",
          "mlnx_qos -i eth2 --pfc 0,0,1,1,0,0,0,0"));
}

TEST(RenderRoceTest, DcbCommands) {
  Result<std::string> text = renderRoce(mustLoad(kRocePolicy), "eth2", RoceTool::dcb);
  ASSERT_TRUE(text.hasValue());
  EXPECT_THAT(commandLines(*text),
              ::testing::ElementsAre(
                  "set -e", "dcb apptrust set dev eth2 order dscp",
                  "dcb app replace dev eth2 dscp-prio 26:3 10:2",
                  "dcb ets set dev eth2 prio-tc 0:0 1:1 2:2 3:3 4:4 5:5 6:6 7:7 tc-tsa all:ets "
                  "tc-bw 0:0 1:0 2:5 3:95 4:0 5:0 6:0 7:0",
                  "dcb pfc set dev eth2 prio-pfc all:off 2:on 3:on"));
}

TEST(RenderRoceTest, EtsPercentagesSumTo100AndKeepTinyShares) {
  // A 0.4% share must not round to a 0% guarantee.
  Policy policy = mustLoad(testing::appendLines(kRocePolicy, "[arbiter]\nlow_share = 0.004"));
  Result<std::string> text = renderRoce(policy, "eth2", RoceTool::mlnx_qos);
  ASSERT_TRUE(text.hasValue());
  EXPECT_THAT(*text, HasSubstr("--tcbw 0,0,1,99,0,0,0,0\n"));
}

TEST(RenderRoceTest, RefusesShellUnsafeInterface) {
  Result<std::string> text = renderRoce(mustLoad(kRocePolicy), "eth2;reboot", RoceTool::dcb);
  ASSERT_FALSE(text.hasValue());
  EXPECT_THAT(text.status().message(), HasSubstr("--iface 'eth2;reboot': not a network interface"));
}

TEST(RenderTcTest, HtbClassesAndFilters) {
  Result<std::string> text = renderTc(loadExample("ethernet-testbed.toml"), "veth0", std::nullopt);
  ASSERT_TRUE(text.hasValue()) << text.status().toString();
  EXPECT_THAT(
      commandLines(*text),
      ::testing::ElementsAre(
          "set -e", "tc qdisc del dev veth0 root 2>/dev/null || true",
          "tc qdisc add dev veth0 root handle 1: htb default 10",
          "tc class add dev veth0 parent 1: classid 1:1 htb rate 200mbit ceil 200mbit",
          "tc class add dev veth0 parent 1:1 classid 1:10 htb rate 190mbit ceil 200mbit prio 0 "
          "quantum 23750",
          "tc class add dev veth0 parent 1:1 classid 1:11 htb rate 10mbit ceil 200mbit prio 1 "
          "quantum 1514",
          "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff "
          "match ip sport 24576 0xfc00 flowid 1:10",
          "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff "
          "match ip dport 24576 0xfc00 flowid 1:10",
          "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff "
          "match ip sport 25600 0xfc00 flowid 1:11",
          "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff "
          "match ip dport 25600 0xfc00 flowid 1:11",
          "tc filter add dev veth0 parent 1: protocol ip prio 2 u32 match ip dsfield 0x28 0xfc "
          "flowid 1:11"));
}

TEST(RenderTcTest, RateComesFromFlagThenFabric) {
  // The arbiter's shaping rate is not the link's rate: it is never used here.
  Policy policy = mustLoad(testing::appendLines(replaceLine(kEthernetPolicy, 3, ""),
                                                "[arbiter]\nlink_rate = \"25gbit\""));
  Result<std::string> missing = renderTc(policy, "veth0", std::nullopt);
  ASSERT_FALSE(missing.hasValue());
  EXPECT_EQ(missing.status().message(),
            "--format tc needs the link rate to size HTB classes: pass --rate (e.g. --rate "
            "10gbit) or set fabric.link_rate in policy.toml");
  Result<std::string> flagged = renderTc(policy, "veth0", 10'000'000'000);
  ASSERT_TRUE(flagged.hasValue());
  EXPECT_THAT(*flagged, HasSubstr("classid 1:1 htb rate 10gbit ceil 10gbit\n"));
  EXPECT_THAT(*renderTc(mustLoad(kEthernetPolicy), "veth0", std::nullopt),
              HasSubstr("classid 1:1 htb rate 200mbit ceil 200mbit\n"));
  Result<std::string> roce = renderTc(mustLoad(kRocePolicy), "eth2", std::nullopt);
  ASSERT_FALSE(roce.hasValue());
  EXPECT_EQ(roce.status().message(),
            "--format tc needs the link rate to size HTB classes: pass --rate (e.g. --rate "
            "10gbit)");
}

TEST(RenderTcTest, DefaultClassGetsNoDscpFilter) {
  // DSCP 0 is every unmarked packet; the default class catches those anyway.
  Result<std::string> text =
      renderTc(mustLoad(replaceLine(kEthernetPolicy, 9, "dscp = 0")), "veth0", std::nullopt);
  ASSERT_TRUE(text.hasValue());
  EXPECT_THAT(*text, Not(HasSubstr("dsfield 0x00")));
}

TEST(RenderTcTest, WorksForInfinibandPoliciesWithDscp) {
  // IPoIB test links: classes need a DSCP or a port range to be classified.
  Result<std::string> text = renderTc(mustLoad(kInfinibandPolicy), "ib0", 100'000'000'000);
  ASSERT_FALSE(text.hasValue());
  EXPECT_EQ(text.status().message(),
            "class \"kv\" has neither dscp nor tcp_ports: tc could not steer its packets into its "
            "HTB class");
}

TEST(RenderTcTest, RefusesClassesTcCannotTellApart) {
  Result<std::string> zero = renderTc(
      mustLoad(testing::appendLines(replaceLine(kInfinibandPolicy, 23, "ib_sl = 2"), "dscp = 0")),
      "ib0", 100'000'000'000);
  ASSERT_FALSE(zero.hasValue());
  EXPECT_EQ(zero.status().message(),
            "class \"kv\" has DSCP 0, which every unmarked packet carries: tc could not tell its "
            "packets from other traffic");
  Result<std::string> shared =
      renderTc(mustLoad(testing::appendLines(
                   replaceLine(kInfinibandPolicy, 16, "ib_sl = 0\ndscp = 10"), "dscp = 10")),
               "ib0", 100'000'000'000);
  ASSERT_FALSE(shared.hasValue());
  EXPECT_EQ(shared.status().message(),
            "classes \"collective\" and \"kv\" share DSCP 10: tc could not tell their marked "
            "packets apart");
}

TEST(PortRangeMasksTest, AlignedRangeIsOneMatch) {
  using Masks = std::vector<std::pair<std::uint16_t, std::uint16_t>>;
  EXPECT_EQ(portRangeMasks({25600, 26623}), (Masks{{25600, 0xfc00}}));
  EXPECT_EQ(portRangeMasks({80, 80}), (Masks{{80, 0xffff}}));
  EXPECT_EQ(portRangeMasks({1, 65535}).size(), 16u);
}

TEST(PortRangeMasksTest, MasksCoverExactlyTheRange) {
  for (PortRange range : {PortRange{1, 1}, PortRange{21000, 21999}, PortRange{1023, 1025},
                          PortRange{60000, 65535}, PortRange{1, 65535}}) {
    std::vector<bool> covered(65536, false);
    for (auto [value, mask] : portRangeMasks(range)) {
      for (std::uint32_t port = 0; port < 65536; ++port) {
        if ((port & mask) == value) {
          EXPECT_FALSE(covered[port]) << "port " << port << " matched twice";
          covered[port] = true;
        }
      }
    }
    for (std::uint32_t port = 0; port < 65536; ++port) {
      ASSERT_EQ(covered[port], port >= range.first && port <= range.last)
          << "port " << port << " in " << range.first << "-" << range.last;
    }
  }
}

TEST(RenderEnvTest, PluginPolicyAndUcxVariables) {
  Policy policy = loadExample("roce.toml");
  std::string text = renderEnv(policy, "/etc/dualpath/roce policy.toml");
  EXPECT_THAT(
      commandLines(text),
      ::testing::ElementsAre("export NCCL_NET_PLUGIN=dualpath", "export NCCL_NET=DualPath",
                             "export DUALPATH_QOS_POLICY='/etc/dualpath/roce policy.toml'",
                             "export NCCL_NET_PLUGIN_REF_COUNT=1", "export UCX_IB_GID_INDEX=3"));
  EXPECT_THAT(text, HasSubstr("#   kv: IB_SL=2 IB_TRAFFIC_CLASS=40\n"));
}

TEST(RenderEnvTest, BuiltinPolicyLeavesTheVariableUnset) {
  LoadedPolicy builtin = loadPolicyText(builtinPolicyText(), "<built-in>");
  ASSERT_TRUE(builtin.policy.has_value());
  EXPECT_THAT(renderEnv(*builtin.policy, ""), HasSubstr("\nunset DUALPATH_QOS_POLICY\n"));
}

TEST(ExplainTest, TableNamesClassesLanesAndWeights) {
  std::string text = explainText(loadExample("paper-ib.toml"));
  EXPECT_THAT(text, HasSubstr("class       role         priority  share  NCCL trafficClass  SL  "
                              "VL  high  low  DSCP\n"
                              "collective  collectives  high      99%    unset,0            0   "
                              "0   192   192  -\n"
                              "kv          kv           low       1%     1                  2   "
                              "2   0     64   -\n"));
}

TEST(ExplainTest, JsonCarriesTheSameFacts) {
  nlohmann::json json = nlohmann::json::parse(explainJson(loadExample("paper-ib.toml")));
  EXPECT_EQ(json["fabric"]["kind"], "infiniband");
  EXPECT_EQ(json["fabric"]["vlarb_low"], "0:192,1:192,2:64,3:192");
  ASSERT_EQ(json["classes"].size(), 2u);
  const auto& kv = json["classes"][1];
  EXPECT_EQ(kv["name"], "kv");
  EXPECT_EQ(kv["vl"], 2);
  EXPECT_EQ(kv["vl_high_weight"], 0);
  EXPECT_EQ(kv["vl_low_weight"], 64);
  EXPECT_DOUBLE_EQ(kv["share"].get<double>(), 0.01);
  EXPECT_EQ(kv["ucx"]["IB_SL"], "2");
  EXPECT_TRUE(json["arbiter"]["link_rate_bps"].is_null());
}

TEST(GuaranteedSharesTest, LevelsSplitByWeight) {
  Policy policy = mustLoad(testing::appendLines(
      kEthernetPolicy,
      "[[class]]\nname = \"bulk\"\nrole = \"other\"\npriority = \"low\"\nweight = 3\ndscp = "
      "12\n[arbiter]\nlow_share = 0.2"));
  std::vector<double> shares = guaranteedShares(policy);
  ASSERT_EQ(shares.size(), 3u);
  EXPECT_DOUBLE_EQ(shares[0], 0.8);
  EXPECT_DOUBLE_EQ(shares[1], 0.05);
  EXPECT_DOUBLE_EQ(shares[2], 0.15);
}

}  // namespace
}  // namespace dualpath::qos
