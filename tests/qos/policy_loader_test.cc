// Every error and warning the loader and validator produce, each checked by
// its whole text: file, line, column, field and message.
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/qos/policy_loader.h>

#include "log_capture.h"
#include "policy_test_util.h"

namespace dualpath::qos {
namespace {

using testing::appendLines;
using ::testing::Contains;
using testing::diagnosticTexts;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::kEthernetPolicy;
using testing::kInfinibandPolicy;
using testing::kRocePolicy;
using testing::loadTestPolicy;
using testing::replaceLine;

TEST(PolicyLoaderTest, BasePoliciesAreValidWithoutWarnings) {
  for (const char* text : {kInfinibandPolicy, kRocePolicy, kEthernetPolicy}) {
    LoadedPolicy loaded = loadTestPolicy(text);
    EXPECT_TRUE(loaded.policy.has_value());
    EXPECT_THAT(diagnosticTexts(loaded), ElementsAre());
  }
}

TEST(PolicyLoaderTest, ShippedExamplesAreValidWithoutWarnings) {
  for (const char* name : {"paper-ib.toml", "roce.toml", "ethernet-testbed.toml"}) {
    std::string path = std::string(DUALPATH_SOURCE_DIR) + "/qos/examples/" + name;
    LoadedPolicy loaded = loadPolicyFile(path);
    EXPECT_TRUE(loaded.policy.has_value()) << path;
    EXPECT_THAT(diagnosticTexts(loaded), ElementsAre()) << path;
  }
}

TEST(PolicyLoaderTest, BuiltinPolicyIsValid) {
  LoadedPolicy loaded = loadPolicyText(builtinPolicyText(), "<built-in>");
  ASSERT_TRUE(loaded.policy.has_value());
  EXPECT_THAT(diagnosticTexts(loaded), ElementsAre());
  EXPECT_EQ(loaded.policy->defaultClass().name, "collective");
  EXPECT_EQ(loaded.policy->findRole(Role::kv)->name, "kv");
}

TEST(PolicyLoaderTest, PaperExampleReadsAsThePaperDescribes) {
  LoadedPolicy loaded =
      loadPolicyFile(std::string(DUALPATH_SOURCE_DIR) + "/qos/examples/paper-ib.toml");
  ASSERT_TRUE(loaded.policy.has_value());
  const Policy& policy = *loaded.policy;
  const IbPortQos& ports = policy.infiniband()->defaults;
  EXPECT_EQ(ports.max_vls, 4);
  EXPECT_EQ(ports.high_limit, 240);
  EXPECT_EQ(formatVlArbTable(ports.vlarb_high), "0:192,1:192,2:0,3:192");
  EXPECT_EQ(formatVlArbTable(ports.vlarb_low), "0:192,1:192,2:64,3:192");
  const TrafficClass& kv = *policy.findRole(Role::kv);
  EXPECT_EQ(ports.vlOfSl(*kv.ib_sl), 2);  // the KV lane
  EXPECT_EQ(ports.highWeight(2), 0u);
  EXPECT_EQ(ports.lowWeight(2), 64u);
}

TEST(PolicyLoaderTest, LocationsPointAtFields) {
  LoadedPolicy loaded = loadTestPolicy(kInfinibandPolicy);
  ASSERT_TRUE(loaded.policy.has_value());
  SourceLocation sl = loaded.policy->locate("class[1].ib_sl");
  EXPECT_EQ(sl.line, 23u);
  EXPECT_EQ(sl.column, 9u);
  SourceLocation entry = loaded.policy->locate("fabric.vlarb_low[2]");
  EXPECT_EQ(entry.line, 7u);
  EXPECT_EQ(entry.column, 26u);  // the '2' of "2:64"
}

TEST(PolicyLoaderTest, NcclTrafficClassSelectsExplicitly) {
  LoadedPolicy loaded = loadTestPolicy(kInfinibandPolicy);
  ASSERT_TRUE(loaded.policy.has_value());
  const Policy& policy = *loaded.policy;
  EXPECT_EQ((*policy.selectByNcclTrafficClass(-1))->name, "collective");
  EXPECT_EQ((*policy.selectByNcclTrafficClass(0))->name, "collective");
  EXPECT_EQ((*policy.selectByNcclTrafficClass(2))->name, "kv");
  Result<const TrafficClass*> unknown = policy.selectByNcclTrafficClass(5);
  ASSERT_FALSE(unknown.hasValue());
  EXPECT_EQ(unknown.status().message(),
            "NCCL trafficClass 5 selects no class in policy policy.toml (it maps 0 -> collective, "
            "2 -> kv); add it to a class's nccl_traffic_classes");
}

TEST(PolicyLoaderTest, UcxSettingsFollowTheFabric) {
  LoadedPolicy ib = loadTestPolicy(kInfinibandPolicy);
  ASSERT_TRUE(ib.policy.has_value());
  const TrafficClass& kv = *ib.policy->findClass("kv");
  EXPECT_THAT(ucxSettingsFor(*ib.policy, kv, true), ElementsAre(UcxSetting{"IB_SL", "2"}));
  EXPECT_THAT(ucxSettingsFor(*ib.policy, kv, false), ElementsAre());

  LoadedPolicy roce = loadTestPolicy(kRocePolicy);
  ASSERT_TRUE(roce.policy.has_value());
  // DSCP 10 travels as the ToS byte 40: UCX takes the whole byte.
  EXPECT_THAT(ucxSettingsFor(*roce.policy, *roce.policy->findClass("kv"), true),
              ElementsAre(UcxSetting{"IB_SL", "2"}, UcxSetting{"IB_TRAFFIC_CLASS", "40"}));

  LoadedPolicy eth = loadTestPolicy(kEthernetPolicy);
  ASSERT_TRUE(eth.policy.has_value());
  EXPECT_THAT(ucxSettingsFor(*eth.policy, *eth.policy->findClass("kv"), false),
              ElementsAre(UcxSetting{"PORT_RANGE", "25600-26623"}));
}

TEST(PolicyLoaderTest, UnreadableFileIsReported) {
  LoadedPolicy loaded = loadPolicyFile("/nonexistent/policy.toml");
  EXPECT_FALSE(loaded.policy.has_value());
  EXPECT_THAT(diagnosticTexts(loaded),
              ElementsAre("/nonexistent/policy.toml: error: cannot open: No such file or "
                          "directory"));
}

TEST(PolicyLoaderTest, SyntaxErrorNamesLineAndColumn) {
  LoadedPolicy loaded = loadTestPolicy(replaceLine(kInfinibandPolicy, 5, "high_limit = "));
  EXPECT_FALSE(loaded.policy.has_value());
  ASSERT_EQ(loaded.diagnostics.size(), 1u);
  EXPECT_THAT(loaded.diagnostics[0].toString(),
              HasSubstr("policy.toml:5:14: error: syntax error: "));
}

TEST(PolicyLoaderTest, DuplicateTomlKeyIsASyntaxError) {
  LoadedPolicy loaded = loadTestPolicy(replaceLine(kInfinibandPolicy, 16, "ib_sl = 0\nib_sl = 1"));
  ASSERT_EQ(loaded.diagnostics.size(), 1u);
  EXPECT_THAT(loaded.diagnostics[0].toString(), HasSubstr("policy.toml:17:"));
  EXPECT_THAT(loaded.diagnostics[0].toString(), HasSubstr("ib_sl"));
}

TEST(PolicyLoaderTest, NonAsciiOutsideCommentsIsRefused) {
  // toml++ 3.3.0 has undefined behaviour on some non-ASCII input; the loader
  // never hands it any (found by tests/fuzz).
  LoadedPolicy loaded = loadTestPolicy(replaceLine(kInfinibandPolicy, 19, "name = \"k\u00e9v\""));
  EXPECT_THAT(diagnosticTexts(loaded),
              ElementsAre("policy.toml:19:10: error: non-ASCII byte 0xC3: a policy is ASCII "
                          "outside comments"));
}

TEST(PolicyLoaderTest, NonAsciiInCommentsIsFine) {
  LoadedPolicy loaded =
      loadTestPolicy(replaceLine(kInfinibandPolicy, 23, "ib_sl = 2  # \u2192 VL 2, \"#\" \u00e9"));
  ASSERT_TRUE(loaded.policy.has_value());
  EXPECT_THAT(diagnosticTexts(loaded), ElementsAre());
  EXPECT_EQ(loaded.policy->locate("class[1].ib_sl").column, 9u);
}

TEST(PolicyLoaderTest, HashInsideStringsIsNotAComment) {
  LoadedPolicy commented = loadTestPolicy(
      replaceLine(kInfinibandPolicy, 19, "name = \"kv\" # \"\u00e9\nweight = 1 # '''\u00e9"));
  EXPECT_TRUE(commented.policy.has_value());
  LoadedPolicy in_string =
      loadTestPolicy(testing::appendLines(kInfinibandPolicy, "[ucx]\nTLS = \"rc # \u00e9\""));
  EXPECT_THAT(diagnosticTexts(in_string),
              ElementsAre("policy.toml:25:13: error: non-ASCII byte 0xC3: a policy is ASCII "
                          "outside comments"));
}

TEST(PolicyLoaderTest, AtMostSixteenClasses) {
  std::string text = kEthernetPolicy;
  for (int i = 0; i < 15; ++i) {
    text += "[[class]]\nname = \"extra" + std::to_string(i) +
            "\"\nrole = \"other\"\npriority = "
            "\"low\"\ndscp = " +
            std::to_string(20 + i) + "\n";
  }
  // class[16], the 17th, is the 15th added: its header follows 14 base lines and 14 * 5 more.
  EXPECT_THAT(
      diagnosticTexts(loadTestPolicy(text)),
      ElementsAre("policy.toml:85:1: error: class[16]: 17 classes; a policy has at most 16"));
}

TEST(PolicyLoaderTest, OversizedFileIsRefused) {
  std::string huge = std::string(kInfinibandPolicy) + "#" + std::string(1 << 20, 'x') + "\n";
  EXPECT_THAT(diagnosticTexts(loadTestPolicy(huge)),
              ElementsAre(std::to_string(huge.size()).insert(0, "policy.toml: error: ") +
                          " bytes; a policy file is at most 1MiB"));
}

TEST(PolicyLoaderTest, StrictLoadTurnsWarningsIntoErrors) {
  std::string path = std::string(::testing::TempDir()) + "/high_limit_255.toml";
  {
    std::ofstream out(path);
    out << replaceLine(kInfinibandPolicy, 5, "high_limit = 255");
  }
  {
    dualpath::testing::LogCapture capture;
    Result<Policy> lenient = loadPolicyOrError(path, /*warnings_are_errors=*/false);
    EXPECT_TRUE(lenient.hasValue());
    ASSERT_EQ(capture.lines().size(), 1u);
    EXPECT_THAT(capture.lines()[0],
                HasSubstr("warn: " + path + ":5:14: warning: fabric.high_limit"));
  }
  Result<Policy> strict = loadPolicyOrError(path, /*warnings_are_errors=*/true);
  ASSERT_FALSE(strict.hasValue());
  EXPECT_EQ(strict.status().code(), StatusCode::invalid_argument);
  EXPECT_THAT(strict.status().message(), HasSubstr(":5:14: warning: fabric.high_limit: 255"));
  std::filesystem::remove(path);
}

// ------------------------------------------------------------ one case per message

struct Case {
  const char* name;
  std::string text;
  std::string expected;  // one diagnostic, whole
  bool still_valid;      // true for warnings
};

// Keeps CTest's test names readable (GoogleTest would print the bytes).
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class DiagnosticTest : public ::testing::TestWithParam<Case> {};

TEST_P(DiagnosticTest, ReportsLineFieldAndReason) {
  const Case& c = GetParam();
  LoadedPolicy loaded = loadTestPolicy(c.text);
  EXPECT_THAT(diagnosticTexts(loaded), Contains(c.expected));
  EXPECT_EQ(loaded.policy.has_value(), c.still_valid);
}

std::vector<Case> errorCases() {
  const std::string ib = kInfinibandPolicy;
  const std::string roce = kRocePolicy;
  const std::string eth = kEthernetPolicy;
  return {
      {"UnknownKeySuggests", replaceLine(ib, 4, "max_vl = 4"),
       "policy.toml:4:1: error: fabric.max_vl: unknown key; did you mean \"max_vls\"?", false},
      {"RequiredKeyMissing", replaceLine(ib, 4, ""),
       "policy.toml:2:1: error: fabric.max_vls: missing; expected an operational VL count (1-15)",
       false},
      {"UnknownTopLevelKey", appendLines(ib, "[arbitrer]\nlow_share = 0.05"),
       "policy.toml:24:2: error: arbitrer: unknown key; did you mean \"arbiter\"?", false},
      {"KeyOfAnotherFabricKind", replaceLine(ib, 4, "max_vls = 4\nprio_tc = [0,1,2,3,4,5,6,7]"),
       "policy.toml:5:1: error: fabric.prio_tc: unknown key; it applies to kind = \"roce\", and "
       "fabric.kind is \"infiniband\"",
       false},
      {"FabricKindTypo", replaceLine(ib, 3, "kind = \"infiniban\""),
       "policy.toml:3:8: error: fabric.kind: \"infiniban\" is not one of \"infiniband\", \"roce\" "
       "or \"ethernet\"; did you mean \"infiniband\"?",
       false},
      {"WrongType", replaceLine(ib, 23, "ib_sl = \"2\""),
       "policy.toml:23:9: error: class[1].ib_sl: expected an IB service level (0-15), got a "
       "string",
       false},
      {"SlOutOfRange", replaceLine(ib, 23, "ib_sl = 16"),
       "policy.toml:23:9: error: class[1].ib_sl: 16 is out of range for an IB service level "
       "(0-15)",
       false},
      {"Sl2VlEntryOutOfRange", replaceLine(ib, 8, "sl2vl = [0,1,2,3, 0,1,2,3, 0,1,2,3, 0,1,2,16]"),
       "policy.toml:8:43: error: fabric.sl2vl[15]: 16 is out of range for a VL (0-15)", false},
      {"Sl2VlWrongLength", replaceLine(ib, 8, "sl2vl = [0,1,2,3]"),
       "policy.toml:8:9: error: fabric.sl2vl: 4 entries; expected 16, the VL of SL 0 to SL 15",
       false},
      {"VlArbVlOutOfRange", replaceLine(ib, 7, "vlarb_low = \"0:192,1:192,16:64,3:192\""),
       "policy.toml:7:26: error: fabric.vlarb_low[2]: VL 16 is out of range for a data VL (0-14; "
       "VL15 carries only subnet management and is never arbitrated)",
       false},
      {"VlArbWeightOutOfRange", replaceLine(ib, 6, "vlarb_high = \"0:192,1:300,2:0,3:192\""),
       "policy.toml:6:21: error: fabric.vlarb_high[1]: weight 300 is out of range (0-255)", false},
      {"VlArbEntrySyntax", replaceLine(ib, 6, "vlarb_high = \"0:192,1-192,2:0,3:192\""),
       "policy.toml:6:21: error: fabric.vlarb_high[1]: \"1-192\" is not VL:WEIGHT (e.g. "
       "\"2:64\")",
       false},
      {"HighLimitOutOfRange", replaceLine(ib, 5, "high_limit = 256"),
       "policy.toml:5:14: error: fabric.high_limit: 256 is out of range for high_limit (0-255)",
       false},
      {"MaxVlsNotOperational", replaceLine(ib, 4, "max_vls = 3"),
       "policy.toml:4:11: error: fabric.max_vls: 3 VLs cannot be operational; a port runs 1, 2, "
       "4, 8 or 15 data VLs",
       false},
      {"SlMappedToVl15", replaceLine(ib, 8, "sl2vl = [0,1,15,3, 0,1,2,3, 0,1,2,3, 0,1,2,3]"),
       "policy.toml:23:9: error: class[1].ib_sl: class \"kv\" uses SL 2, which fabric.sl2vl maps "
       "to VL 15: its packets would be dropped",
       false},
      {"SlMappedAboveOperationalVls",
       replaceLine(ib, 8, "sl2vl = [0,1,2,3, 4,1,2,3, 0,1,2,3, 0,1,2,3]"),
       "policy.toml:8:19: error: fabric.sl2vl[4]: SL 4 maps to VL 4, but only VLs 0-3 are "
       "operational (max_vls = 4); OpenSM would silently mask it. Map it to an operational VL, "
       "or to 15 to drop the SL",
       false},
      {"VlArbEntryAboveOperationalVls",
       replaceLine(ib, 7, "vlarb_low = \"0:192,1:192,2:64,3:192,4:10\""),
       "policy.toml:7:37: error: fabric.vlarb_low[4]: VL 4 is not operational (only VLs 0-3 are "
       "operational, max_vls = 4); OpenSM would silently mask this entry",
       false},
      {"ClassNeverServed", replaceLine(ib, 7, "vlarb_low = \"0:192,1:192,2:0,3:192\""),
       "policy.toml:23:9: error: class[1].ib_sl: class \"kv\" rides VL 2 (SL 2), which has "
       "weight 0 in both vlarb_high and vlarb_low: it would never be served",
       false},
      {"HighClassOnLowOnlyVl", replaceLine(ib, 16, "ib_sl = 6"),
       "policy.toml:13:12: error: class[0].priority: class \"collective\" is high priority, but "
       "its VL 2 (SL 6) has weight 0 in vlarb_high: the fabric would serve it only from the "
       "low-priority table",
       false},
      {"LowClassOnHighVl", replaceLine(ib, 23, "ib_sl = 1"),
       "policy.toml:21:12: error: class[1].priority: class \"kv\" is low priority, but its VL 1 "
       "(SL 1) has weight 192 in vlarb_high: the fabric would serve it at high priority",
       false},
      {"ClassWithoutSl", replaceLine(ib, 23, ""),
       "policy.toml:18:1: error: class[1]: class \"kv\" has no ib_sl; an InfiniBand policy gives "
       "every class a service level",
       false},
      {"DuplicateClassName", replaceLine(ib, 19, "name = \"collective\""),
       "policy.toml:19:8: error: class[1].name: class name \"collective\" is already used by "
       "class[0] (line 11)",
       false},
      {"DuplicateTrafficClassId", replaceLine(ib, 22, "nccl_traffic_classes = [3, 0]"),
       "policy.toml:22:28: error: class[1].nccl_traffic_classes[1]: NCCL trafficClass 0 already "
       "selects class \"collective\" (line 15)",
       false},
      {"UnsetTrafficClassInList", replaceLine(ib, 22, "nccl_traffic_classes = [-1]"),
       "policy.toml:22:25: error: class[1].nccl_traffic_classes[0]: -1 means \"trafficClass "
       "unset\", which selects the class with default = true; remove -1 here and mark the class "
       "default",
       false},
      {"NoDefaultClass", replaceLine(ib, 14, "default = false"),
       "policy.toml:10:1: error: class: no default class: mark exactly one class default = true; "
       "NCCL communicators whose trafficClass is unset (-1) use it",
       false},
      {"TwoDefaultClasses", replaceLine(ib, 22, "default = true"),
       "policy.toml:22:11: error: class[1].default: class \"kv\" is default, but so is class "
       "\"collective\" (line 14); exactly one class may be the default",
       false},
      {"NoClasses", "[fabric]\nkind = \"ethernet\"\n",
       "policy.toml:1:1: error: class: missing; expected [[class]] sections, one per traffic "
       "class",
       false},
      {"BadClassName", replaceLine(ib, 19, "name = \"kv cache\""),
       "policy.toml:19:8: error: class[1].name: \"kv cache\" is not a class name: a letter, then "
       "letters, digits, '_' or '-', at most 32 characters",
       false},
      {"DscpOutOfRange", replaceLine(roce, 15, "dscp = 300"),
       "policy.toml:15:8: error: class[1].dscp: 300 is out of range for a DSCP (0-63)", false},
      {"TosWhereDscpExpected", replaceLine(roce, 9, "dscp = 104"),
       "policy.toml:9:8: error: class[0].dscp: 104 is not a DSCP (0-63); it looks like a ToS "
       "byte, which carries DSCP 26 in its upper six bits (ToS = DSCP << 2); write dscp = 26",
       false},
      {"TosWithEcnWhereDscpExpected", replaceLine(roce, 9, "dscp = 106"),
       "policy.toml:9:8: error: class[0].dscp: 106 is not a DSCP (0-63); it looks like a ToS "
       "byte, which carries DSCP 26 in its upper six bits (ToS = DSCP << 2, ECN bits 2); write "
       "dscp = 26",
       false},
      {"TosKeyWhereDscpExpected", replaceLine(roce, 9, "tos = 104"),
       "policy.toml:9:1: error: class[0].tos: unknown key; DualPath takes the DSCP, not the ToS "
       "byte; write dscp = 26 (ToS 104 >> 2)",
       false},
      {"RoceClassWithoutDscp", replaceLine(roce, 15, ""),
       "policy.toml:11:1: error: class[1]: class \"kv\" has no dscp; a RoCE policy gives every "
       "class the DSCP that marks its packets",
       false},
      {"RoceDscpTwoPriorities", replaceLine(roce, 15, "dscp = 26"),
       "policy.toml:15:8: error: class[1].dscp: DSCP 26 already maps to priority 3 for class "
       "\"collective\" (line 9); one DSCP maps to one priority",
       false},
      {"RocePriorityOutOfRange", replaceLine(roce, 16, "roce_priority = 8"),
       "policy.toml:16:17: error: class[1].roce_priority: 8 is out of range for a RoCE (802.1p) "
       "priority (0-7)",
       false},
      {"PfcPriorityTwice", replaceLine(roce, 3, "pfc_priorities = [3, 3]"),
       "policy.toml:3:22: error: fabric.pfc_priorities[1]: 3 is listed twice", false},
      {"EthernetClassUnclassifiable", replaceLine(eth, 14, ""),
       "policy.toml:10:1: error: class[1]: class \"kv\" has neither dscp nor tcp_ports: on an "
       "Ethernet fabric nothing would steer its packets away from the default class",
       false},
      {"PortRangesOverlap", replaceLine(eth, 14, "tcp_ports = \"25000-26000\""),
       "policy.toml:14:13: error: class[1].tcp_ports: 25000-26000 overlaps class "
       "\"collective\"'s tcp_ports 24576-25599 (line 9)",
       false},
      {"PortNotAPort", replaceLine(eth, 14, "tcp_ports = 70000"),
       "policy.toml:14:13: error: class[1].tcp_ports: 70000 is not a TCP port (1-65535)", false},
      {"DscpZeroOnNonDefaultEthernetClass", replaceLine(eth, 14, "dscp = 0"),
       "policy.toml:14:8: error: class[1].dscp: DSCP 0 is what unmarked packets carry: every "
       "unmarked packet on the link would join class \"kv\"; pick another DSCP",
       false},
      {"EthernetSharedDscp",
       replaceLine(eth, 9, "dscp = 10\ntcp_ports = \"24576-25599\"") + "dscp = 10",
       "policy.toml:16:8: error: class[1].dscp: DSCP 10 is also class \"collective\"'s (line 9): "
       "on "
       "an Ethernet fabric the two classes' marked packets could not be told apart",
       false},
      {"PortRangeMalformed", replaceLine(eth, 14, "tcp_ports = \"26000-25000\""),
       "policy.toml:14:13: error: class[1].tcp_ports: 26000-25000 is not a port range "
       "\"FIRST-LAST\" (1-65535), e.g. \"21000-21999\"",
       false},
      {"UcxPrefix", appendLines(ib, "[class.ucx]\nUCX_RNDV_THRESH = \"8k\""),
       "policy.toml:25:1: error: class[1].ucx.UCX_RNDV_THRESH: write the name without the UCX_ "
       "prefix: RNDV_THRESH = ...",
       false},
      {"UcxDerivedSetting", appendLines(ib, "[class.ucx]\nIB_SL = 3"),
       "policy.toml:25:1: error: class[1].ucx.IB_SL: DualPath sets IB_SL from the class's ib_sl "
       "(or roce_priority on RoCE); remove it here",
       false},
      {"LowShareNotAFraction", appendLines(ib, "[arbiter]\nlow_share = 5.0"),
       "policy.toml:25:13: error: arbiter.low_share: 5 is not a fraction strictly between 0 and "
       "1 (0.05 is 5%)",
       false},
      {"LowShareAsInteger", appendLines(ib, "[arbiter]\nlow_share = 5"),
       "policy.toml:25:13: error: arbiter.low_share: expected a fraction between 0 and 1, e.g. "
       "0.05 for 5%, got an integer",
       false},
      {"BadSize", appendLines(ib, "[arbiter]\nchunk = \"512KB\""),
       "policy.toml:25:9: error: arbiter.chunk: unknown unit 'KB' in '512KB'; expected bytes with "
       "an optional unit B, KiB, MiB, GiB or TiB (e.g. \"512KiB\")",
       false},
      {"AmbiguousRate", appendLines(ib, "[arbiter]\nlink_rate = \"400Gbps\""),
       "policy.toml:25:13: error: arbiter.link_rate: '400Gbps' is ambiguous: tc reads 'bps' as "
       "bytes per second; write the rate in bits with tc's units, e.g. \"400Gbit\"",
       false},
      {"InflightBelowChunk", appendLines(ib, "[arbiter]\nlow_max_inflight = \"256KiB\""),
       "policy.toml:25:20: error: arbiter.low_max_inflight: 256KiB is smaller than one chunk "
       "(512KiB): a full low-priority chunk could never be posted; raise it, lower "
       "arbiter.chunk, or set 0 for no limit",
       false},
      {"UnsupportedFormat", replaceLine(ib, 1, "format = 2"),
       "policy.toml:1:10: error: format: format 2 is not supported; this DualPath reads format 1",
       false},
      {"UnknownRoutingEngine",
       replaceLine(
           ib, 8,
           std::string("sl2vl = [0,1,2,3, 0,1,2,3, 0,1,2,3, 0,1,2,3]\nrouting_engine = \"ftre\"")),
       "policy.toml:9:18: error: fabric.routing_engine: \"ftre\" is not an OpenSM routing "
       "engine; did you mean \"ftree\"?",
       false},
  };
}

std::vector<Case> warningCases() {
  const std::string ib = kInfinibandPolicy;
  const std::string roce = kRocePolicy;
  const std::string eth = kEthernetPolicy;
  return {
      {"HighLimit255Starves", replaceLine(ib, 5, "high_limit = 255"),
       "policy.toml:5:14: warning: fabric.high_limit: 255 means no limit: the high-priority VLs "
       "may starve the low-priority ones (the KV relays) indefinitely",
       true},
      {"KvAndCollectivesShareVl",
       replaceLine(replaceLine(ib, 23, "ib_sl = 4"), 21, "priority = \"high\""),
       "policy.toml:23:9: warning: class[1].ib_sl: KV class \"kv\" and collectives class "
       "\"collective\" share VL 0: the fabric cannot keep KV traffic from slowing the collectives",
       true},
      {"KvAndCollectivesShareTc", replaceLine(roce, 16, "roce_priority = 3"),
       "policy.toml:16:17: warning: class[1].roce_priority: KV class \"kv\" and collectives "
       "class \"collective\" share traffic class 3: the fabric cannot keep KV traffic from "
       "slowing the collectives",
       true},
      {"NoKvClass", replaceLine(ib, 20, "role = \"other\""),
       "policy.toml:10:1: warning: class: no class has role = \"kv\": the loader's KV relays "
       "would ride the default class, with the collectives",
       true},
      {"SlAssigningRoutingEngine",
       replaceLine(ib, 8,
                   "sl2vl = [0,1,2,3, 0,1,2,3, 0,1,2,3, 0,1,2,3]\nrouting_engine = "
                   "\"ftree, lash\""),
       "policy.toml:9:18: warning: fabric.routing_engine: the lash routing engine assigns SLs "
       "itself for deadlock avoidance; the SLs DualPath's classes write into their connections "
       "(0, 2) may collide with its choice",
       true},
      {"EphemeralPorts", replaceLine(eth, 14, "tcp_ports = \"40000-40999\""),
       "policy.toml:14:13: warning: class[1].tcp_ports: 40000-40999 overlaps Linux's default "
       "ephemeral ports 32768-60999: another class's outgoing connection may get a port in this "
       "range and be classified as \"kv\"",
       true},
      {"RoceWithoutPfc", replaceLine(roce, 3, ""),
       "policy.toml:1:1: warning: fabric: no pfc_priorities: RoCE without PFC is lossy and needs "
       "ECN-based congestion control on every NIC and switch",
       true},
      {"ArbiterFasterThanLink", appendLines(eth, "[arbiter]\nlink_rate = \"1gbit\""),
       "policy.toml:16:13: warning: arbiter.link_rate: the arbiter shapes to 1gbit, faster than "
       "the link (200mbit): the shaping never takes effect",
       true},
  };
}

std::string caseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Errors, DiagnosticTest, ::testing::ValuesIn(errorCases()), caseName);
INSTANTIATE_TEST_SUITE_P(Warnings, DiagnosticTest, ::testing::ValuesIn(warningCases()), caseName);

}  // namespace
}  // namespace dualpath::qos
