// dualpath-bench interference in netns mode (bench/netbench/netns.cc and its
// use in interference.cc): two ranks, each in its own network namespace on a
// veth shaped by the tc script rendered from each case's policy, with every
// byte checked, and the kernel's own per-class counters as the proof that KV
// rode the kv class and the collectives the collective class.
//
// Needs root (namespaces, tc) and iproute2; skips with a message otherwise.
// Uses only addresses inside the namespaces scripts/netns-cluster.sh creates.
// Every wait is bounded: the ranks by the run's timeout, each script run by
// NetnsOptions::command_timeout.
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>

#include "interference.h"
#include "netns.h"
#include "small_interference.h"

namespace dualpath::bench {
namespace {

std::uint64_t classBytes(const std::vector<KernelClassBytes>& classes, const std::string& name) {
  for (const KernelClassBytes& k : classes) {
    if (k.name == name) return k.bytes;
  }
  ADD_FAILURE() << "no kernel counters for class '" << name << "'";
  return 0;
}

// 200 Mbit/s: the kernel's HTB is the bottleneck, not 2 vCPUs.
class NetnsInterferenceTest : public SmallInterferenceTest {
 protected:
  InterferenceOptions netnsRun() const {
    InterferenceOptions o = smallRun("all_gather");
    o.link_gbps = 0.2;
    o.netns = true;
    return o;
  }
};

TEST_F(NetnsInterferenceTest, KvRidesTheKvClassAndEveryByteArrives) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: network namespaces, veth and tc";
  if (std::system("command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "needs iproute2 (ip, tc)";
  }
  // Root with iproute2: anything else missing is a broken build, not a skip.
  ASSERT_TRUE(netnsAvailable(defaultNetnsScript(), defaultQosBinary()).isOk())
      << netnsAvailable(defaultNetnsScript(), defaultQosBinary()).toString();

  NetnsReport netns;
  Result<std::vector<InterferenceRow>> rows = runInterference(netnsRun(), &netns);
  ASSERT_TRUE(rows.hasValue()) << rows.status().toString();
  ASSERT_EQ(rows->size(), 1u);
  const InterferenceRow& row = rows->front();
  EXPECT_EQ(row.alone.wrong, 0u);
  EXPECT_EQ(row.qos_off.wrong, 0u);
  EXPECT_EQ(row.qos_on.wrong, 0u);
  EXPECT_GT(row.qos_on.kv_gbs, 0);

  // Each rank sends at least one verified all_gather (32 KiB) per case on
  // the collective class; KV at least one Layer Block on the kv class.
  const std::uint64_t chunk = 32 * 1024;
  const std::uint64_t block = InterferenceOptions{}.kv_message_bytes;
  EXPECT_GE(classBytes(netns.alone, "collective"), 2 * chunk);
  EXPECT_GE(classBytes(netns.qos_on, "collective"), 2 * chunk);
  EXPECT_GE(classBytes(netns.qos_on, "kv"), block);
  EXPECT_GE(classBytes(netns.qos_off, "kv"), block);
  // Without KV nothing may land in the kv class: the classification is by
  // the kv class's ports, not by accident.
  EXPECT_EQ(classBytes(netns.alone, "kv"), 0u);
  EXPECT_FALSE(netns.cluster_id.empty());

  // The destructor removed every namespace of the run.
  const std::string ours = "dpns-" + netns.cluster_id + "-";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    EXPECT_NE(entry.path().filename().string().rfind(ours, 0), 0u)
        << entry.path() << " was left behind";
  }
}

// These need no root: options are refused before any namespace is made.
TEST_F(NetnsInterferenceTest, RefusesSharedMemoryTransports) {
  const char* before = std::getenv("UCX_TLS");
  const std::string saved = before != nullptr ? before : "";
  ::setenv("UCX_TLS", "posix,tcp", 1);
  Result<std::vector<InterferenceRow>> rows = runInterference(netnsRun());
  if (before != nullptr) {
    ::setenv("UCX_TLS", saved.c_str(), 1);
  } else {
    ::unsetenv("UCX_TLS");
  }
  ASSERT_FALSE(rows.hasValue());
  EXPECT_EQ(rows.status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(rows.status().message(),
            "--netns: UCX_TLS='posix,tcp': the ranks must talk over tcp only (shared memory "
            "would bypass the veth links and tc); unset it or set tcp");
}

TEST_F(NetnsInterferenceTest, ArbiterShapingNeedsNetns) {
  InterferenceOptions o = netnsRun();
  o.netns = false;
  o.netns_arbiter_shaping = true;
  Result<std::vector<InterferenceRow>> rows = runInterference(o);
  ASSERT_FALSE(rows.hasValue());
  EXPECT_EQ(rows.status().message(), "--netns-arbiter: only with --netns");
}

}  // namespace
}  // namespace dualpath::bench
