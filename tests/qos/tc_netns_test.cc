// The rendered tc script on a real link: two network namespaces joined by a
// veth pair, the script applied to one end, real TCP connections through it,
// and the kernel's own per-class byte counters as the verdict.
//
// Needs root (namespaces, tc) and iproute2; skips with a message otherwise.
// Uses only addresses inside the namespaces it creates.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <regex>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dualpath/qos/policy_loader.h>
#include <dualpath/qos/render.h>

namespace dualpath::qos {
namespace {

constexpr const char* kSenderAddress = "10.213.0.1";
constexpr const char* kReceiverAddress = "10.213.0.2";
constexpr std::size_t kPayload = 1 << 20;
constexpr int kIoTimeoutSeconds = 20;  // bounds every blocking socket call

// Runs a shell command; returns its exit status and output.
std::pair<int, std::string> shell(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, std::strerror(errno)};
  char buffer[4096];
  while (std::size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// Runs `work` on a thread that has entered network namespace `ns`. Sockets
// it creates stay in that namespace whichever thread uses them later.
void inNamespace(const std::string& ns, const std::function<void()>& work) {
  std::thread worker([&] {
    int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << "open /run/netns/" << ns << ": " << std::strerror(errno);
    ASSERT_EQ(setns(fd, CLONE_NEWNET), 0) << "setns " << ns << ": " << std::strerror(errno);
    close(fd);
    work();
  });
  worker.join();
}

void boundTimeouts(int fd) {
  timeval timeout{kIoTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
}

sockaddr_in address(const char* ip, std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, ip, &addr.sin_addr);
  return addr;
}

class TcNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: network namespaces and tc";
    if (shell("command -v ip && command -v tc").first != 0) {
      GTEST_SKIP() << "needs iproute2 (ip, tc)";
    }
    std::string id = std::to_string(getpid());
    sender_ns_ = "dpqos-a-" + id;
    receiver_ns_ = "dpqos-b-" + id;
    sender_dev_ = "dpqa" + id.substr(0, 10);
    std::string receiver_dev = "dpqb" + id.substr(0, 10);
    for (const std::string& command : {
             "ip netns add " + sender_ns_,
             "ip netns add " + receiver_ns_,
             "ip link add " + sender_dev_ + " netns " + sender_ns_ + " type veth peer name " +
                 receiver_dev + " netns " + receiver_ns_,
             "ip -n " + sender_ns_ + " addr add " + kSenderAddress + "/24 dev " + sender_dev_,
             "ip -n " + receiver_ns_ + " addr add " + kReceiverAddress + "/24 dev " + receiver_dev,
             "ip -n " + sender_ns_ + " link set " + sender_dev_ + " up",
             "ip -n " + receiver_ns_ + " link set " + receiver_dev + " up",
         }) {
      auto [code, output] = shell(command);
      ASSERT_EQ(code, 0) << command << ": " << output;
    }
    created_ = true;

    LoadedPolicy loaded =
        loadPolicyFile(std::string(DUALPATH_SOURCE_DIR) + "/qos/examples/ethernet-testbed.toml");
    ASSERT_TRUE(loaded.policy.has_value());
    Result<std::string> script = renderTc(*loaded.policy, sender_dev_, std::nullopt);
    ASSERT_TRUE(script.hasValue()) << script.status().toString();
    std::string path = ::testing::TempDir() + "/tc-" + id + ".sh";
    std::ofstream(path) << *script;
    auto [code, output] = shell("ip netns exec " + sender_ns_ + " sh " + path);
    ASSERT_EQ(code, 0) << "applying the rendered script failed:\n" << output << "\n" << *script;
  }

  void TearDown() override {
    if (!created_) return;
    shell("ip netns del " + sender_ns_);
    shell("ip netns del " + receiver_ns_);
  }

  // Bytes HTB class `classid` has sent on the sender's link.
  std::uint64_t sentBytes(const std::string& classid) {
    auto [code, output] =
        shell("ip netns exec " + sender_ns_ + " tc -s class show dev " + sender_dev_);
    EXPECT_EQ(code, 0) << output;
    std::regex pattern("class htb " + classid + " [^\\n]*\\n\\s*Sent (\\d+) bytes");
    std::smatch match;
    if (!std::regex_search(output, match, pattern)) {
      ADD_FAILURE() << "no counters for class " << classid << " in:\n" << output;
      return 0;
    }
    return std::stoull(match[1]);
  }

  // Sends kPayload bytes over one TCP connection from the sender namespace,
  // optionally from a fixed source port and with a ToS byte, and checks that
  // every byte arrived.
  void transfer(std::uint16_t destination_port, std::uint16_t source_port = 0, int tos = 0) {
    int listener = -1;
    inNamespace(receiver_ns_, [&] {
      listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      sockaddr_in addr = address(kReceiverAddress, destination_port);
      ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0)
          << std::strerror(errno);
      ASSERT_EQ(listen(listener, 1), 0);
      boundTimeouts(listener);
    });
    ASSERT_GE(listener, 0);

    std::size_t received = 0;
    std::thread receiver([&] {
      int connection = accept(listener, nullptr, nullptr);
      ASSERT_GE(connection, 0) << "accept: " << std::strerror(errno);
      boundTimeouts(connection);
      char buffer[65536];
      while (true) {
        ssize_t n = recv(connection, buffer, sizeof buffer, 0);
        ASSERT_GE(n, 0) << "recv: " << std::strerror(errno);
        if (n == 0) break;
        received += static_cast<std::size_t>(n);
      }
      close(connection);
    });

    inNamespace(sender_ns_, [&] {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      boundTimeouts(fd);
      if (tos != 0) setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof tos);
      if (source_port != 0) {
        sockaddr_in local = address(kSenderAddress, source_port);
        ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local), 0)
            << std::strerror(errno);
      }
      sockaddr_in peer = address(kReceiverAddress, destination_port);
      ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof peer), 0)
          << "connect: " << std::strerror(errno);
      std::vector<char> payload(kPayload, 'k');
      std::size_t sent = 0;
      while (sent < payload.size()) {
        ssize_t n = send(fd, payload.data() + sent, payload.size() - sent, MSG_NOSIGNAL);
        ASSERT_GT(n, 0) << "send: " << std::strerror(errno);
        sent += static_cast<std::size_t>(n);
      }
      shutdown(fd, SHUT_WR);
      close(fd);
    });
    receiver.join();
    close(listener);
    EXPECT_EQ(received, kPayload);
  }

  // Asserts that a transfer lands in `expected` ("1:11") and not in `other`.
  void expectClassified(const std::function<void()>& traffic, const std::string& expected,
                        const std::string& other) {
    std::uint64_t expected_before = sentBytes(expected);
    std::uint64_t other_before = sentBytes(other);
    traffic();
    EXPECT_GE(sentBytes(expected) - expected_before, kPayload);
    EXPECT_LT(sentBytes(other) - other_before, kPayload / 10);
  }

  std::string sender_ns_;
  std::string receiver_ns_;
  std::string sender_dev_;
  bool created_ = false;
};

// ethernet-testbed.toml: collective = 1:10 (ports 24576-25599, the default
// class), kv = 1:11 (ports 25600-26623, DSCP 10).
constexpr const char* kCollective = "1:10";
constexpr const char* kKv = "1:11";

TEST_F(TcNetnsTest, KvDestinationPortRidesTheKvClass) {
  expectClassified([&] { transfer(25700); }, kKv, kCollective);
}

TEST_F(TcNetnsTest, KvSourcePortRidesTheKvClass) {
  expectClassified([&] { transfer(30000, 25800); }, kKv, kCollective);
}

TEST_F(TcNetnsTest, CollectivePortRidesTheCollectiveClass) {
  expectClassified([&] { transfer(24700); }, kCollective, kKv);
}

TEST_F(TcNetnsTest, KvDscpRidesTheKvClass) {
  expectClassified([&] { transfer(30001, 0, /*tos=*/10 << 2); }, kKv, kCollective);
}

TEST_F(TcNetnsTest, UnclassifiedTrafficJoinsTheDefaultClass) {
  expectClassified([&] { transfer(30002); }, kCollective, kKv);
}

}  // namespace
}  // namespace dualpath::qos
