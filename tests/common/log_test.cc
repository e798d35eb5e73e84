// The log facade's per-thread routes: what the NCCL plugin relies on to send
// its calls' lines to NCCL's logger while the rest of the process keeps its
// own sink.
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/common/log.h>

#include "log_capture.h"

namespace dualpath::log {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::mutex g_routed_mu;
std::vector<std::string> g_routed;
std::vector<std::string> g_inner_routed;

void routedSink(Level level, const char*, int, std::string_view message) noexcept {
  std::lock_guard lock(g_routed_mu);
  g_routed.push_back(std::string(levelName(level)) + ": " + std::string(message));
}

void innerSink(Level level, const char*, int, std::string_view message) noexcept {
  std::lock_guard lock(g_routed_mu);
  g_inner_routed.push_back(std::string(levelName(level)) + ": " + std::string(message));
}

// Like a host's NCCL logger that forwards to DualPath's own log.
void forwardingSink(Level level, const char* file, int line, std::string_view message) noexcept {
  write(level, file, line, "forwarded: {}", message);
}

class LogRouteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::lock_guard lock(g_routed_mu);
    g_routed.clear();
    g_inner_routed.clear();
  }
  std::vector<std::string> routed() {
    std::lock_guard lock(g_routed_mu);
    return g_routed;
  }
  std::vector<std::string> innerRouted() {
    std::lock_guard lock(g_routed_mu);
    return g_inner_routed;
  }
};

TEST_F(LogRouteTest, ARouteTakesOnlyItsOwnThreadsLines) {
  testing::LogCapture process(Level::warn);
  {
    ScopedRoute route(&routedSink, Level::info);
    DP_LOG_INFO("from the routed thread");
    std::thread other([] { DP_LOG_WARN("from another thread"); });
    other.join();
  }
  DP_LOG_WARN("after the route");
  EXPECT_THAT(routed(), ElementsAre("info: from the routed thread"));
  EXPECT_THAT(process.lines(), ElementsAre("warn: from another thread", "warn: after the route"));
}

TEST_F(LogRouteTest, TheRoutesLevelAppliesOnItsThreadOnly) {
  testing::LogCapture process(Level::warn);
  ScopedRoute route(&routedSink, Level::debug);
  EXPECT_TRUE(enabled(Level::debug));
  bool other_enabled = true;
  std::thread other([&] { other_enabled = enabled(Level::debug); });
  other.join();
  EXPECT_FALSE(other_enabled) << "the process level is warn";
}

TEST_F(LogRouteTest, RoutesNestAndTheInnermostWins) {
  ScopedRoute outer(&routedSink, Level::info);
  {
    ScopedRoute inner(&innerSink, Level::info);
    DP_LOG_INFO("inner");
  }
  DP_LOG_INFO("outer");
  EXPECT_THAT(innerRouted(), ElementsAre("info: inner"));
  EXPECT_THAT(routed(), ElementsAre("info: outer"));
}

TEST_F(LogRouteTest, ASinkThatLogsReachesTheNextSinkOutNotItself) {
  testing::LogCapture process(Level::warn);
  {
    ScopedRoute route(&forwardingSink, Level::info);
    DP_LOG_WARN("once");
  }
  EXPECT_THAT(process.lines(), ElementsAre("warn: forwarded: once"));
  EXPECT_THAT(routed(), IsEmpty());
}

}  // namespace
}  // namespace dualpath::log
