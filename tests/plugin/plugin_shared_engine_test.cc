// The plugin inside an inference process that also links the transport (as a
// program using the loader does): NCCL's connections and the process's own
// must go through one engine, so that one arbiter per NIC sees both, and each
// side's log lines must reach its own sink.
//
// The plugin is loaded by NCCL's name rule, as in plugin_abi_test; this binary
// links libdualpath_transport.so itself, and the dynamic linker must hand the
// plugin that same copy.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <dualpath/common/log.h>
#include <dualpath/transport/transport.h>

#include "log_capture.h"
#include "plugin_harness.h"

namespace dualpath::testing {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// ethernet-testbed.toml: trafficClass 0 selects "collective", 1 "kv". Set
// before the first Engine::shared() and the first load of the plugin.
const bool kEnvironmentSet = [] {
  setenv("DUALPATH_NET_DEVICES", "lo", 1);
  setenv("DUALPATH_QOS_POLICY", DUALPATH_SOURCE_DIR "/qos/examples/ethernet-testbed.toml", 1);
  return true;
}();

void* postSend(PluginApi& api, void* comm, void* data, std::size_t size) {
  void* request = nullptr;
  for (int attempt = 0; attempt < 1'000'000 && request == nullptr; ++attempt) {
    EXPECT_EQ(api.isend(comm, data, size, 0, nullptr, &request), abi::success);
  }
  return request;
}

void* postRecv(PluginApi& api, void* comm, void* data, std::size_t size) {
  void* request = nullptr;
  int tag = 0;
  void* mhandle = nullptr;
  for (int attempt = 0; attempt < 1'000'000 && request == nullptr; ++attempt) {
    EXPECT_EQ(api.irecv(comm, 1, &data, &size, &tag, &mhandle, &request), abi::success);
  }
  return request;
}

class PluginSharedEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kEnvironmentSet);
    clearLoggedLines();
    Result<std::shared_ptr<transport::Engine>> engine = transport::Engine::shared();
    ASSERT_TRUE(engine.hasValue()) << engine.status().toString();
    engine_ = std::move(engine).value();
  }

  std::shared_ptr<transport::Engine> engine_;  // the process's own, as a loader holds it
  PluginApi api_{"dualpath", 11};
};

TEST_F(PluginSharedEngineTest, NcclsMessagesAreGrantedByTheProcesssArbiter) {
  Result<const qos::TrafficClass*> selected = engine_->policy().selectByNcclTrafficClass(0);
  ASSERT_TRUE(selected.hasValue()) << selected.status().toString();
  const std::size_t collective = engine_->policy().indexOf(**selected);
  const qos::ArbiterClassStats before = engine_->arbiter(0).stats(collective);
  const long references_before = engine_.use_count();

  void* ctx = nullptr;
  ASSERT_EQ(api_.init(&ctx, 0), abi::success);
  EXPECT_EQ(engine_.use_count(), references_before + 1) << "the plugin holds our engine";

  std::array<char, abi::kHandleBytes> handle{};
  void* listen_comm = nullptr;
  ASSERT_EQ(api_.listen(ctx, 0, handle.data(), &listen_comm), abi::success);
  void* send = nullptr;
  void* recv = nullptr;
  std::string error;
  ASSERT_TRUE(connectBoth(api_, ctx, listen_comm, handle.data(), &send, &recv, &error)) << error;

  constexpr std::size_t kBytes = 1 << 20;
  std::vector<char> sent(kBytes);
  std::vector<char> received(kBytes);
  fillPattern(sent.data(), kBytes, 7);
  void* recv_request = postRecv(api_, recv, received.data(), kBytes);
  void* send_request = postSend(api_, send, sent.data(), kBytes);
  ASSERT_NE(recv_request, nullptr);
  ASSERT_NE(send_request, nullptr);
  int sizes = -1;
  ASSERT_EQ(waitDone(api_, send_request, &sizes), abi::success);
  ASSERT_EQ(waitDone(api_, recv_request, &sizes), abi::success);
  EXPECT_EQ(sizes, static_cast<int>(kBytes));
  EXPECT_EQ(checkPattern(received.data(), kBytes, 7), "");

  const qos::ArbiterClassStats after = engine_->arbiter(0).stats(collective);
  EXPECT_GE(after.granted_bytes - before.granted_bytes, kBytes)
      << "NCCL's send was granted by another arbiter than the process's";
  EXPECT_GT(after.granted_posts, before.granted_posts);

  EXPECT_EQ(api_.closeSend(send), abi::success);
  EXPECT_EQ(api_.closeRecv(recv), abi::success);
  EXPECT_EQ(api_.closeListen(listen_comm), abi::success);
  EXPECT_EQ(api_.finalize(ctx), abi::success);
  EXPECT_EQ(engine_.use_count(), references_before);
}

TEST_F(PluginSharedEngineTest, PluginCallsLogToNcclAndTheProcessKeepsItsSink) {
  LogCapture process_lines(log::Level::info);
  void* ctx = nullptr;
  ASSERT_EQ(api_.init(&ctx, 1), abi::success);
  DP_LOG_WARN("a line of the loader between two NCCL calls");
  void* bad = nullptr;
  EXPECT_EQ(api_.init(&bad, 7), abi::invalidUsage);

  const std::vector<std::string> nccl = loggedLines();
  EXPECT_THAT(nccl, Contains(HasSubstr("trafficClass 1 selects class 'kv'")));
  EXPECT_THAT(nccl, Contains(HasSubstr("trafficClass 7")));
  EXPECT_THAT(nccl, Not(Contains(HasSubstr("a line of the loader"))));

  const std::vector<std::string> own = process_lines.lines();
  EXPECT_THAT(own, Contains("warn: a line of the loader between two NCCL calls"));
  EXPECT_THAT(own, Not(Contains(HasSubstr("selects class"))));
  EXPECT_THAT(own, Not(Contains(HasSubstr("trafficClass 7"))));
  EXPECT_EQ(api_.finalize(ctx), abi::success);
}

// ---------------------------------------------------------------- packaging

// The lines `command` prints; the test fails if it does not exit 0.
std::vector<std::string> linesOf(const std::string& command) {
  std::vector<std::string> lines;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run: " << command;
    return lines;
  }
  std::array<char, 1024> line{};
  while (std::fgets(line.data(), line.size(), pipe) != nullptr) {
    std::string text(line.data());
    if (!text.empty() && text.back() == '\n') text.pop_back();
    lines.push_back(std::move(text));
  }
  EXPECT_EQ(::pclose(pipe), 0) << command;
  return lines;
}

// They end up in other people's processes: header-only code instantiated in
// them (toml++, nlohmann-json, fmt) must not bind to a host's copy.
TEST(PluginPackagingTest, TheLibrariesBesideThePluginExportOnlyDualPathSymbols) {
  for (const char* library : {"common", "qos", "transport"}) {
    const std::vector<std::string> symbols = linesOf(fmt::format(
        "nm -DC --defined-only {}/lib/libdualpath_{}.so", DUALPATH_BINARY_DIR, library));
    EXPECT_FALSE(symbols.empty()) << library;
    for (const std::string& symbol : symbols) {
      EXPECT_NE(symbol.find("dualpath::"), std::string::npos) << library << " exports " << symbol;
    }
  }
}

// NCCL finds the plugin by name; its own libraries must resolve beside it,
// wherever build/lib was copied, without LD_LIBRARY_PATH.
TEST(PluginPackagingTest, ACopyOfTheLibraryDirectoryResolvesOnItsOwn) {
  const std::filesystem::path copy =
      ::testing::TempDir() + "/plugin-copy-" + std::to_string(::getpid());
  std::filesystem::create_directories(copy);
  for (const auto& entry : std::filesystem::directory_iterator(DUALPATH_BINARY_DIR "/lib")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("libnccl-net-dualpath.so", 0) == 0 || name.rfind("libdualpath_", 0) == 0) {
      std::filesystem::copy(entry.path(), copy / name,
                            std::filesystem::copy_options::copy_symlinks);
    }
  }
  const std::vector<std::string> resolved =
      linesOf(fmt::format("env -u LD_LIBRARY_PATH ldd {}/libnccl-net-dualpath.so", copy.string()));
  int ours = 0;
  for (const std::string& line : resolved) {
    if (line.find("libdualpath_") == std::string::npos) continue;
    ++ours;
    EXPECT_NE(line.find(copy.string() + "/libdualpath_"), std::string::npos) << line;
  }
  EXPECT_EQ(ours, 3) << "libdualpath_common, _qos and _transport";
  std::filesystem::remove_all(copy);
}

}  // namespace
}  // namespace dualpath::testing
