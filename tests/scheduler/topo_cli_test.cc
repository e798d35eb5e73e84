// dualpath-topo, run in-process: exit codes and what it prints.
#include "topo_cli.h"

#include "cli_run.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kShared = DUALPATH_SHARED_TOPOLOGIES;
const std::string kDgx2Snic = std::string(DUALPATH_TOPOLOGY_DATA) + "/dgx-h100-like-2snic.xml";

using test_support::CliRun;

CliRun runCli(const std::vector<std::string>& args) {
  return test_support::runCli(&run, "dualpath-topo", args);
}

std::string writeTemp(const std::string& name, const std::string& text) {
  return test_support::writeTempFile(name, text);
}

TEST(TopoCliTest, TextShowsPairsStorageNicsAndExclusions) {
  CliRun r = runCli({"--xml", kDgx2Snic});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, StartsWith("Topology of " + kDgx2Snic +
                                ": 2 packages, 2 NUMA nodes, 5 PCIe switches, 8 GPUs, 11 NICs, "
                                "5 NVMe\n\nGPU  PCI           device     NUMA  CNIC    CNIC PCI "
                                "     path  chosen\n"
                                "0    0000:18:00.0  10de:2330  0     mlx5_0  0000:13:00.0  PIX   "
                                "auto\n"));
  EXPECT_THAT(r.out, HasSubstr("\n7    0000:ca:00.0  10de:2330  1     mlx5_7  0000:c4:00.0  PIX "
                               "  auto\n"));
  EXPECT_THAT(r.out, HasSubstr("\nStorage NICs: mlx5_8 (0000:aa:00.0, NUMA 0), mlx5_9 "
                               "(0000:d8:00.0, NUMA 1)\n"));
  EXPECT_THAT(r.out, HasSubstr("excluded  2 Gbit/s (PCIe link) is below min_speed_gbps = 25"));
  EXPECT_THAT(r.out, HasSubstr("\nNVMe     PCI           NUMA\nnvme4n1  0000:03:00.0  0\n"));
}

TEST(TopoCliTest, JsonHasTheSameFacts) {
  CliRun r = runCli({"--xml", kDgx2Snic, "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["source"], kDgx2Snic);
  EXPECT_EQ(json["pcie_switches"], 5);
  ASSERT_EQ(json["gpus"].size(), 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(json["gpus"][i]["cnic"]["name"], fmt::format("mlx5_{}", i));
    EXPECT_EQ(json["gpus"][i]["distance"], "PIX");
    EXPECT_EQ(json["gpus"][i]["numa"], i < 4 ? 0 : 1);
  }
  EXPECT_EQ(json["snics"], nlohmann::json::parse(R"([
      {"name": "mlx5_8", "bus_id": "0000:aa:00.0", "numa": 0},
      {"name": "mlx5_9", "bus_id": "0000:d8:00.0", "numa": 1}])"));
  EXPECT_EQ(json["nics"][0]["name"], "eno1");
  EXPECT_EQ(json["nics"][0]["role"], "excluded");
  EXPECT_EQ(json["nics"][0]["speed_gbps"], 2);
  EXPECT_EQ(json["warnings"], nlohmann::json::array());

  // Exactly what the library renders.
  Result<TopologyModel> model = loadTopologyXml(kDgx2Snic);
  ASSERT_TRUE(model);
  Result<TopologyReport> report = planTopology(*model, {});
  ASSERT_TRUE(report);
  EXPECT_EQ(r.out, renderTopologyJson(*report));
}

TEST(TopoCliTest, ServerWithoutStorageNicWarns) {
  CliRun r = runCli({"--xml", kShared + "/aws-p5.48xl.xml"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_THAT(r.out, HasSubstr("\nStorage NICs: none\n"));
  EXPECT_THAT(r.out, HasSubstr("\nwarning: no storage NIC off the GPUs' PCIe switches; name one "
                               "in [storage] nics (candidates: enp71s0, enp72s0, enp73s0, "
                               "enp74s0, rdmap80s0, rdmap81s0, rdmap82s0, enp88s0 and 48 more in "
                               "the NIC table)\n"));
}

TEST(TopoCliTest, ConfigChangesTheChoice) {
  std::string config = writeTemp("cli-storage.toml", "[storage]\nnics = [\"mlx5_9\"]\n");
  CliRun r = runCli({"--xml", kDgx2Snic, "--config", config});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nStorage NICs: mlx5_9 (0000:d8:00.0, NUMA 1)\n"));
}

TEST(TopoCliTest, BadXmlPathExitsTwoNamingTheFile) {
  CliRun r = runCli({"--xml", "/nonexistent/server.xml"});
  EXPECT_EQ(r.code, kExitInvalid);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "dualpath-topo: /nonexistent/server.xml: cannot open: No such file or directory\n");
}

TEST(TopoCliTest, BadConfigExitsTwoWithOneLinePerError) {
  std::string config =
      writeTemp("cli-bad.toml", "[nics]\nalow = [\"x\"]\n[[pin]]\ngpu = 0\nnic = \"mlx5_0\"\n");
  CliRun typo = runCli({"--xml", kDgx2Snic, "--config", config});
  EXPECT_EQ(typo.code, kExitInvalid);
  EXPECT_EQ(typo.err,
            "dualpath-topo: " + config + ":2:1: nics.alow: unknown key; did you mean \"allow\"?\n");

  std::string pins = writeTemp("cli-pins.toml", "[[pin]]\ngpu = 9\nnic = \"mlx5_42\"\n");
  CliRun bad_pins = runCli({"--xml", kDgx2Snic, "--config", pins});
  EXPECT_EQ(bad_pins.code, kExitInvalid);
  EXPECT_THAT(bad_pins.err, StartsWith("dualpath-topo: " + pins +
                                       ":2:7: pin[0].gpu: no GPU 9; this machine has GPUs 0-7\n"
                                       "dualpath-topo: " +
                                       pins + ":3:7: pin[0].nic: no NIC \"mlx5_42\""));

  CliRun missing = runCli({"--config", "/nonexistent/topo.toml"});
  EXPECT_EQ(missing.code, kExitInvalid);
  EXPECT_EQ(missing.err,
            "dualpath-topo: /nonexistent/topo.toml: cannot open: No such file or directory\n");
}

TEST(TopoCliTest, LiveMachineExitsZero) {
  CliRun text = runCli({});
  EXPECT_EQ(text.code, kExitOk) << text.err;
  EXPECT_THAT(text.out, StartsWith("Topology of this machine (live): "));
  CliRun json = runCli({"--json"});
  EXPECT_EQ(json.code, kExitOk) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out)["source"], "live");
}

TEST(TopoCliTest, UsageErrors) {
  CliRun unknown = runCli({"--frobnicate"});
  EXPECT_EQ(unknown.code, kExitInvalid);
  EXPECT_THAT(unknown.err, HasSubstr("--frobnicate"));
  CliRun help = runCli({"--help"});
  EXPECT_EQ(help.code, kExitOk);
  EXPECT_THAT(help.out, HasSubstr("--xml"));
}

}  // namespace
}  // namespace dualpath::scheduler::topo::cli
