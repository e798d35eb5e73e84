// The miniature PD cluster (samples/pd_cluster) end to end: both node
// processes, the relay, the handoff, the write-back and the byte checks, on
// the tiny model. Over loopback everywhere; over network namespaces (the
// kernel's HTB classes proving that KV rode the kv class) as root only,
// skipped with a message otherwise.
//
// Every run is bounded by PdClusterOptions::timeout; no test sleeps.
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "netns.h"
#include "pd_cluster.h"

namespace dualpath::samples {
namespace {

class PdClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    work_dir_ = ::testing::TempDir() + "/pd-cluster-" + std::to_string(::getpid());
    std::filesystem::create_directories(work_dir_);
    options_.model = "tiny";
    options_.engines = 2;
    options_.trace.sessions = 3;
    options_.trace.turns = 3;
    options_.snic_mbps = 50;
    options_.storage_dir = work_dir_ + "/storage";
    options_.timeout = std::chrono::seconds(60);
  }
  void TearDown() override { std::filesystem::remove_all(work_dir_); }

  std::string work_dir_;
  PdClusterOptions options_;
};

TEST_F(PdClusterTest, EveryModeLoadsEveryBlockOnceAndChecksItsBytes) {
  auto basic = runPdCluster(options_, LoadMode::basic);
  ASSERT_TRUE(basic.hasValue()) << basic.status().toString();
  auto dual = runPdCluster(options_, LoadMode::dualpath);
  ASSERT_TRUE(dual.hasValue()) << dual.status().toString();
  auto oracle = runPdCluster(options_, LoadMode::oracle);
  ASSERT_TRUE(oracle.hasValue()) << oracle.status().toString();

  // The same trace in every mode; every non-Oracle load verified.
  EXPECT_EQ(basic->requests, 9u);
  EXPECT_EQ(dual->requests, basic->requests);
  EXPECT_EQ(basic->loads_verified, basic->requests);
  EXPECT_EQ(dual->loads_verified, dual->requests);
  EXPECT_EQ(oracle->loads_verified, 0u);
  // Basic: the PE path only, and the DE node's storage untouched.
  EXPECT_EQ(basic->blocks_de_path, 0u);
  EXPECT_EQ(basic->de_snic_bytes, 0u);
  EXPECT_EQ(basic->relay_bytes, 0u);
  // DualPath: both paths, every block once, the DE's reads relayed whole.
  EXPECT_GT(dual->blocks_de_path, 0u);
  EXPECT_GT(dual->blocks_pe_path, 0u);
  EXPECT_EQ(dual->blocks_fallback, 0u);
  EXPECT_EQ(dual->blocks_pe_path + dual->blocks_de_path,
            basic->blocks_pe_path + basic->blocks_de_path);
  EXPECT_EQ(dual->relay_bytes, dual->de_snic_bytes);
  // Oracle: no storage reads at all.
  EXPECT_EQ(oracle->pe_snic_bytes + oracle->de_snic_bytes, 0u);
  // The same blocks are written back whatever the read path.
  EXPECT_EQ(dual->blocks_written_after_prefill, basic->blocks_written_after_prefill);
  EXPECT_EQ(dual->blocks_written_after_decode, basic->blocks_written_after_decode);
  EXPECT_GT(basic->blocks_written_after_decode, 0u);
  EXPECT_EQ(basic->network_description, "UCX over tcp on loopback");
  EXPECT_TRUE(basic->kernel_class_bytes.empty());
}

TEST_F(PdClusterTest, RefusesOptionsOutOfRangeNamingThem) {
  options_.engines = 0;
  auto report = runPdCluster(options_, LoadMode::basic);
  ASSERT_FALSE(report.hasValue());
  EXPECT_EQ(report.status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(report.status().message(), "options: pd-cluster: engines must be 1 to 64");
}

TEST_F(PdClusterTest, OverNetworkNamespacesKvRidesTheKernelsKvClass) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: network namespaces, veth and tc";
  if (std::system("command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "needs iproute2 (ip, tc)";
  }
  auto network = makePdClusterNetwork(work_dir_, 2.0, options_.snic_mbps);
  ASSERT_TRUE(network.hasValue()) << network.status().toString();
  options_.network = network->cluster.get();
  options_.policy_path = network->policy_path;
  auto dual = runPdCluster(options_, LoadMode::dualpath);
  ASSERT_TRUE(dual.hasValue()) << dual.status().toString();
  EXPECT_EQ(dual->loads_verified, dual->requests);
  EXPECT_GT(dual->relay_bytes, 0u);
  EXPECT_EQ(dual->network_description,
            "UCX over tcp on veth links in network namespaces, shaped by tc htb to 2 Gbit/s per "
            "node");
  // Storage came over the storage links, from the storage server: what it
  // sent is what the nodes read (runPdCluster checks the two agree), and the
  // kernel saw at least those bytes leave the storage namespace per node.
  EXPECT_FALSE(dual->snic_emulated);
  EXPECT_EQ(dual->snic_description,
            "a storage link (a veth per node to the storage server's namespace, shaped by tc tbf "
            "to 50 MB/s each way)");
  EXPECT_GT(dual->pe_snic_bytes, 0u);
  EXPECT_GT(dual->de_snic_bytes, 0u);
  EXPECT_EQ(dual->storage_server_bytes, dual->pe_snic_bytes + dual->de_snic_bytes);
  auto to_pe = network->cluster->storageLinkBytesToNode(0);
  auto to_de = network->cluster->storageLinkBytesToNode(1);
  ASSERT_TRUE(to_pe.hasValue()) << to_pe.status().toString();
  ASSERT_TRUE(to_de.hasValue()) << to_de.status().toString();
  EXPECT_GE(*to_pe, dual->pe_snic_bytes);
  EXPECT_GE(*to_de, dual->de_snic_bytes);
  // The relay's puts and the handoff crossed the veths on the kv class (plus
  // TCP/IP and UCX headers, so at least as many bytes).
  std::uint64_t kv = 0;
  for (const auto& [name, bytes] : dual->kernel_class_bytes) {
    if (name == "kv") kv = bytes;
  }
  EXPECT_GE(kv, dual->relay_bytes + dual->handoff_bytes);
}

}  // namespace
}  // namespace dualpath::samples
