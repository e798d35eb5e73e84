// dualpath-bench interference on loopback (bench/netbench/interference.cc):
// KV as one-sided puts through the transport engine that the dlopened plugin
// shares, every landed byte checked by the ranks, and each case's ranks on
// that case's policy even when the launcher has parsed its own parameters.
#include "interference.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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

// ---------------------------------------------------------------- several hosts
//
// This process is rank 0; rank 1 is dualpath-bench started on its own, as on
// a second host, both over loopback.

// A port nothing listens on now (the kernel's pick, released at once).
std::uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  ::close(fd);
  return ntohs(address.sin_port);
}

// dualpath-bench interference as rank 1 of 2; its exit status is returned by
// wait(). Killed if still running when destroyed.
class OtherHost {
 public:
  explicit OtherHost(std::vector<std::string> args) {
    args.insert(args.begin(), {DUALPATH_BENCH_BINARY, "interference"});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(::posix_spawn(&pid_, DUALPATH_BENCH_BINARY, nullptr, nullptr, argv.data(), environ),
              0);
  }
  ~OtherHost() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Rank 1 ends on its own: its --timeout bounds every wait it makes.
  int wait() {
    int status = 0;
    EXPECT_EQ(::waitpid(pid_, &status, 0), pid_);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

class RendezvousTest : public SmallInterferenceTest {
 protected:
  void SetUp() override {
    SmallInterferenceTest::SetUp();
    ::setenv("DUALPATH_NET_DEVICES", "lo", 1);  // rank 1 inherits it
    rendezvous_ = "127.0.0.1:" + std::to_string(freePort());
  }

  InterferenceOptions rankZero() const {
    InterferenceOptions o = smallRun("alltoall");
    o.rendezvous = rendezvous_;
    o.rank = 0;
    return o;
  }

  // smallRun's options on the command line.
  std::vector<std::string> rankOneArgs(const std::string& min_bytes) const {
    return {"--rendezvous", rendezvous_, "--rank",        "1",   "--ranks",   "2",  "--op",
            "alltoall",     "-b",        min_bytes,       "-e",  "64K",       "-n", "2",
            "-w",           "1",         "--min-seconds", "0.1", "--timeout", "120"};
  }

  std::string rendezvous_;
};

TEST_F(RendezvousTest, RanksOnTwoHostsRunEveryCaseAndRankZeroReports) {
  OtherHost rank_one(rankOneArgs("64K"));
  Result<std::vector<InterferenceRow>> rows = runInterference(rankZero());
  ASSERT_TRUE(rows.hasValue()) << rows.status().toString();
  ASSERT_EQ(rows->size(), 1u);
  const InterferenceRow& row = rows->front();
  EXPECT_EQ(row.op, "alltoall");
  EXPECT_EQ(row.alone.wrong + row.qos_off.wrong + row.qos_on.wrong, 0u);
  EXPECT_GT(row.qos_on.kv_gbs, 0);
  EXPECT_EQ(rank_one.wait(), 0);
}

TEST_F(RendezvousTest, AHostWithOtherOptionsIsRefusedByRankZero) {
  OtherHost rank_one(rankOneArgs("32K"));
  Result<std::vector<InterferenceRow>> rows = runInterference(rankZero());
  ASSERT_FALSE(rows.hasValue());
  EXPECT_NE(rows.status().message().find("rank 1 runs other options than rank 0"),
            std::string::npos)
      << rows.status().toString();
  EXPECT_NE(rank_one.wait(), 0);
}

}  // namespace
}  // namespace dualpath::bench
