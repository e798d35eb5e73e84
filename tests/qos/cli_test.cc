// dualpath-qos commands, run in-process: exit codes and what they print.
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "policy_test_util.h"
#include "qos_cli.h"

namespace dualpath::qos::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kSource = DUALPATH_SOURCE_DIR;
const std::string kPaper = kSource + "/qos/examples/paper-ib.toml";
const std::string kFixtures = kSource + "/tests/qos/fixtures/";

using test_support::CliRun;

CliRun runCli(const std::vector<std::string>& args) {
  return test_support::runCli(&run, "dualpath-qos", args);
}

std::string writeTemp(const std::string& name, const std::string& text) {
  return test_support::writeTempFile(name, text);
}

TEST(QosCliTest, ValidateValidPolicy) {
  CliRun r = runCli({"validate", kPaper});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_EQ(r.out, kPaper + ": valid (0 warnings)\n");
  EXPECT_EQ(r.err, "");
}

TEST(QosCliTest, ValidateInvalidPolicyExitsTwoWithDiagnostics) {
  std::string path =
      writeTemp("bad-sl.toml", testing::replaceLine(testing::kInfinibandPolicy, 23, "ib_sl = 16"));
  CliRun r = runCli({"validate", path});
  EXPECT_EQ(r.code, kExitInvalid);
  EXPECT_EQ(r.out, path + ": invalid: 1 error\n");
  EXPECT_EQ(r.err, path +
                       ":23:9: error: class[1].ib_sl: 16 is out of range for an IB service "
                       "level (0-15)\n");
}

TEST(QosCliTest, StrictTurnsWarningsIntoErrors) {
  std::string path = writeTemp(
      "starving.toml", testing::replaceLine(testing::kInfinibandPolicy, 5, "high_limit = 255"));
  CliRun lenient = runCli({"validate", path});
  EXPECT_EQ(lenient.code, kExitOk);
  EXPECT_EQ(lenient.out, path + ": valid (1 warning)\n");
  EXPECT_THAT(lenient.err, StartsWith(path + ":5:14: warning: fabric.high_limit: 255 means"));

  CliRun strict = runCli({"validate", "--strict", path});
  EXPECT_EQ(strict.code, kExitInvalid);
  EXPECT_EQ(strict.out, path + ": invalid: 1 error\n");
  EXPECT_THAT(strict.err, StartsWith(path + ":5:14: error: fabric.high_limit: 255 means"));

  CliRun render = runCli({"render", "--format", "opensm", "--strict", path});
  EXPECT_EQ(render.code, kExitInvalid);
  EXPECT_EQ(render.out, "");
  EXPECT_THAT(render.err, HasSubstr(": not a valid policy (0 errors, 1 warning under --strict)"));
}

TEST(QosCliTest, RenderOpenSm) {
  CliRun r = runCli({"render", "--format", "opensm", kPaper});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_THAT(r.out, HasSubstr("\nqos TRUE\nqos_max_vls 4\nqos_high_limit 240\n"
                               "qos_vlarb_high 0:192,1:192,2:0,3:192\n"
                               "qos_vlarb_low 0:192,1:192,2:64,3:192\n"));
}

TEST(QosCliTest, RenderNeedsItsFlags) {
  CliRun roce = runCli({"render", "--format", "roce", kSource + "/qos/examples/roce.toml"});
  EXPECT_EQ(roce.code, kExitInvalid);
  EXPECT_EQ(roce.err,
            "dualpath-qos: --format roce needs --iface IF (the RoCE netdev, e.g. eth2)\n");
  CliRun tc = runCli({"render", "--format", "tc", kPaper});
  EXPECT_EQ(tc.code, kExitInvalid);
  EXPECT_EQ(tc.err, "dualpath-qos: --format tc needs --dev DEV (the Linux link to shape)\n");
  CliRun rate = runCli({"render", "--format", "tc", "--dev", "veth0", "--rate", "10Gbps", kPaper});
  EXPECT_EQ(rate.code, kExitInvalid);
  EXPECT_THAT(rate.err, StartsWith("dualpath-qos: --rate: '10Gbps' is ambiguous"));
  CliRun misplaced = runCli({"render", "--format", "opensm", "--rate", "10gbit", kPaper});
  EXPECT_EQ(misplaced.code, kExitInvalid);
  EXPECT_EQ(misplaced.err, "dualpath-qos: --rate applies to --format tc only\n");
  CliRun unknown = runCli({"render", "--format", "yaml", kPaper});
  EXPECT_EQ(unknown.code, kExitInvalid);
  EXPECT_THAT(unknown.err, HasSubstr("--format"));
  CliRun wrong_kind = runCli({"render", "--format", "roce", "--iface", "eth2", kPaper});
  EXPECT_EQ(wrong_kind.code, kExitInvalid);
  EXPECT_EQ(wrong_kind.err, "dualpath-qos: --format roce needs a fabric of kind \"roce\"; " +
                                kPaper + " has kind \"infiniband\"\n");
}

TEST(QosCliTest, RenderEnvUsesAnAbsolutePolicyPath) {
  CliRun r = runCli({"render", "--format", "env", kPaper});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_THAT(r.out, HasSubstr("\nexport DUALPATH_QOS_POLICY=" + kPaper + "\n"));
}

TEST(QosCliTest, ExplainJson) {
  CliRun r = runCli({"explain", "--json", kPaper});
  EXPECT_EQ(r.code, kExitOk);
  nlohmann::json json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["classes"][1]["vl"], 2);
}

TEST(QosCliTest, CheckMatchAndMismatch) {
  CliRun match =
      runCli({"check", kPaper, "--sl2vl", kFixtures + "paper-ca.sl2vl.txt", "--vlarb",
              kFixtures + "paper-ca.vlarb.txt", "--portinfo", kFixtures + "paper-ca.portinfo.txt"});
  EXPECT_EQ(match.code, kExitOk);
  EXPECT_EQ(match.out, "fabric matches " + kPaper +
                           " (port type ca): sl2vl (1 row), vlarb_high (8 entries), vlarb_low (8 "
                           "entries), VLHighLimit, OperVLs\n");

  CliRun mismatch = runCli({"check", kPaper, "--vlarb", kFixtures + "default-ca.vlarb.txt"});
  EXPECT_EQ(mismatch.code, kExitMismatch);
  EXPECT_THAT(mismatch.out,
              StartsWith("mismatch: vlarb_high entry 2: VL 2 weight 64 on the fabric"));
  EXPECT_THAT(mismatch.out, HasSubstr("\n3 mismatches between the fabric and " + kPaper +
                                      " (port type ca); checked vlarb_high (8 entries), vlarb_low "
                                      "(8 entries)\n"));
}

TEST(QosCliTest, CheckUnreadableInputExitsTwo) {
  CliRun missing = runCli({"check", kPaper, "--sl2vl", "/nonexistent/sl2vl.txt"});
  EXPECT_EQ(missing.code, kExitInvalid);
  EXPECT_EQ(missing.err,
            "dualpath-qos: /nonexistent/sl2vl.txt: cannot open: No such file or directory\n");
  CliRun nothing = runCli({"check", kPaper});
  EXPECT_EQ(nothing.code, kExitInvalid);
  EXPECT_EQ(nothing.err,
            "dualpath-qos: nothing to check: give at least one of --sl2vl, --vlarb, --portinfo\n");
}

TEST(QosCliTest, BuiltinPolicyRoundTrips) {
  CliRun builtin = runCli({"builtin"});
  EXPECT_EQ(builtin.code, kExitOk);
  std::string path = writeTemp("builtin.toml", builtin.out);
  EXPECT_EQ(runCli({"validate", path}).code, kExitOk);
}

TEST(QosCliTest, ParamsListsTheRegistry) {
  CliRun r = runCli({"params"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_THAT(r.out, HasSubstr("DUALPATH_QOS_POLICY"));
  EXPECT_THAT(r.out, HasSubstr("DUALPATH_LOG_LEVEL"));
}

TEST(QosCliTest, NoCommandIsAUsageError) {
  CliRun r = runCli({});
  EXPECT_EQ(r.code, kExitInvalid);
  EXPECT_THAT(r.err, HasSubstr("A subcommand is required"));
  EXPECT_EQ(runCli({"--help"}).code, kExitOk);
}

}  // namespace
}  // namespace dualpath::qos::cli
