// The arbiter under a fake clock: shares under saturation, work conservation,
// priority, claims, and the in-flight limits. No sleeps: time is a variable.
#include <atomic>
#include <deque>
#include <thread>

#include <gtest/gtest.h>

#include <dualpath/qos/arbiter.h>

#include "log_capture.h"

namespace dualpath::qos {
namespace {

constexpr ClassIndex kHigh = 0;
constexpr ClassIndex kLow = 1;
constexpr Bytes kKiB = 1024;
constexpr TimeNs kMicrosecond = 1000;
constexpr TimeNs kSecond = 1'000'000'000;

ArbiterSettings shapedSettings(double low_share = 0.05) {
  ArbiterSettings s;
  s.low_share = low_share;
  s.link_rate = 10'000'000'000;  // 10gbit = 1.25 bytes/ns
  s.burst = 64 * kKiB;
  s.chunk = 64 * kKiB;
  s.max_inflight = 0;
  s.low_max_inflight = 0;
  s.demand_hold_us = 200;
  return s;
}

std::unique_ptr<LinkArbiter> makeArbiter(ArbiterSettings settings,
                                         std::vector<ArbiterClassSpec> classes = {
                                             {"collective", Priority::high, 1},
                                             {"kv", Priority::low, 1}}) {
  Result<std::unique_ptr<LinkArbiter>> arbiter =
      LinkArbiter::create({std::move(classes), settings});
  EXPECT_TRUE(arbiter.hasValue()) << arbiter.status().toString();
  return std::move(arbiter).value();
}

// Every class in `askers` asks for `post` bytes every microsecond, as often as
// it is granted, for `duration`; each post completes at once. Returns the
// bytes granted per class.
std::vector<Bytes> saturate(LinkArbiter& arbiter, const std::vector<ClassIndex>& askers, Bytes post,
                            TimeNs duration, TimeNs start = 0) {
  std::vector<Bytes> granted(arbiter.config().classes.size(), 0);
  std::size_t rotation = 0;
  for (TimeNs now = start; now < start + duration; now += kMicrosecond) {
    // Rotate who asks first so the order of calls favours no class.
    for (std::size_t k = 0; k < askers.size(); ++k) {
      ClassIndex cls = askers[(k + rotation) % askers.size()];
      while (arbiter.tryAcquire(cls, post, now).isOk()) {
        granted[cls] += post;
        arbiter.release(cls, post);
      }
    }
    ++rotation;
  }
  return granted;
}

double fractionOf(const std::vector<Bytes>& granted, ClassIndex cls) {
  Bytes total = 0;
  for (Bytes b : granted) total += b;
  return static_cast<double>(granted[cls]) / static_cast<double>(total);
}

TEST(ArbiterTest, SaturatedLinkLeavesLowItsConfiguredShare) {
  auto arbiter = makeArbiter(shapedSettings(0.05));
  std::vector<Bytes> granted = saturate(*arbiter, {kHigh, kLow}, 64 * kKiB, kSecond);
  EXPECT_NEAR(fractionOf(granted, kLow), 0.05, 0.01);
  // Shaping holds the total to the link rate (1.25 GB in 1 s) within one post and the burst.
  EXPECT_NEAR(static_cast<double>(granted[kHigh] + granted[kLow]), 1.25e9, 2 * 64 * 1024);
}

TEST(ArbiterTest, OtherSharesAreHeldToo) {
  for (double share : {0.01, 0.2, 0.5}) {
    auto arbiter = makeArbiter(shapedSettings(share));
    std::vector<Bytes> granted = saturate(*arbiter, {kHigh, kLow}, 16 * kKiB, kSecond);
    EXPECT_NEAR(fractionOf(granted, kLow), share, 0.01) << "low_share " << share;
  }
}

TEST(ArbiterTest, LowAloneGetsTheWholeLink) {
  auto arbiter = makeArbiter(shapedSettings(0.05));
  std::vector<Bytes> granted = saturate(*arbiter, {kLow}, 64 * kKiB, kSecond);
  EXPECT_NEAR(static_cast<double>(granted[kLow]) / 1.25e9, 1.0, 0.01);
  EXPECT_EQ(arbiter->stats(kLow).refused_for_turn, 0u);
}

TEST(ArbiterTest, HighAloneGetsTheWholeLink) {
  auto arbiter = makeArbiter(shapedSettings(0.05));
  std::vector<Bytes> granted = saturate(*arbiter, {kHigh}, 1024 * kKiB, kSecond);
  EXPECT_NEAR(static_cast<double>(granted[kHigh]) / 1.25e9, 1.0, 0.01);
}

TEST(ArbiterTest, WeightsSplitALevel) {
  auto arbiter = makeArbiter(
      shapedSettings(0.2),
      {{"collective", Priority::high, 1}, {"kv", Priority::low, 1}, {"bulk", Priority::low, 3}});
  std::vector<Bytes> granted = saturate(*arbiter, {0, 1, 2}, 16 * kKiB, kSecond);
  EXPECT_NEAR(fractionOf(granted, 0), 0.80, 0.01);
  EXPECT_NEAR(fractionOf(granted, 1), 0.05, 0.01);
  EXPECT_NEAR(fractionOf(granted, 2), 0.15, 0.01);
}

TEST(ArbiterTest, IdleHighClassLeavesItsShareToTheOtherHighClass) {
  // Low keeps 5% whichever high classes are busy.
  auto arbiter = makeArbiter(shapedSettings(0.05), {{"collective", Priority::high, 1},
                                                    {"control", Priority::high, 1},
                                                    {"kv", Priority::low, 1}});
  std::vector<Bytes> granted = saturate(*arbiter, {0, 2}, 16 * kKiB, kSecond);
  EXPECT_EQ(granted[1], 0u);
  EXPECT_NEAR(fractionOf(granted, 2), 0.05, 0.01);
}

TEST(ArbiterTest, HighGoesFirstWhenItArrives) {
  auto arbiter = makeArbiter(shapedSettings(0.05));
  // Low has had the link to itself for a while and is in token debt.
  saturate(*arbiter, {kLow}, 64 * kKiB, 10 * 1000 * kMicrosecond);
  TimeNs now = 10 * 1000 * kMicrosecond;
  ASSERT_FALSE(arbiter->tryAcquire(kLow, 64 * kKiB, now).isOk());
  // High waits only for the debt of low's last chunk: 64 KiB at 1.25 B/ns.
  TimeNs waited = 0;
  while (!arbiter->tryAcquire(kHigh, 64 * kKiB, now + waited).isOk()) {
    ASSERT_FALSE(arbiter->tryAcquire(kLow, 64 * kKiB, now + waited).isOk())
        << "low overtook a waiting high at +" << waited << " ns";
    waited += kMicrosecond;
    ASSERT_LE(waited, 60 * kMicrosecond);
  }
  EXPECT_LE(waited, 53 * kMicrosecond);  // 65536 B / 1.25 B/ns = 52.4 us
}

TEST(ArbiterTest, WindowModeHoldsSharesOnASimulatedLink) {
  ArbiterSettings s = shapedSettings(0.05);
  s.link_rate.reset();
  s.max_inflight = 1024 * kKiB;
  auto arbiter = makeArbiter(s);
  // The link drains 1250 bytes per microsecond, oldest post first.
  struct Post {
    ClassIndex cls;
    Bytes left;
    Bytes size;
  };
  std::deque<Post> wire;
  std::vector<Bytes> granted(2, 0);
  for (TimeNs now = 0; now < kSecond; now += kMicrosecond) {
    Bytes budget = 1250;
    while (budget > 0 && !wire.empty()) {
      Bytes sent = std::min(budget, wire.front().left);
      wire.front().left -= sent;
      budget -= sent;
      if (wire.front().left == 0) {
        arbiter->release(wire.front().cls, wire.front().size);
        wire.pop_front();
      }
    }
    for (ClassIndex cls : {static_cast<ClassIndex>(now / kMicrosecond % 2),
                           static_cast<ClassIndex>((now / kMicrosecond + 1) % 2)}) {
      while (arbiter->tryAcquire(cls, 64 * kKiB, now).isOk()) {
        granted[cls] += 64 * kKiB;
        wire.push_back({cls, 64 * kKiB, 64 * kKiB});
      }
    }
  }
  EXPECT_NEAR(fractionOf(granted, kLow), 0.05, 0.01);
  EXPECT_NEAR(static_cast<double>(granted[0] + granted[1]), 1.25e9, 2.0 * 1024 * 1024);
}

TEST(ArbiterTest, LowInflightLimitBoundsQueuedKvWithoutBlockingHigh) {
  ArbiterSettings s = shapedSettings(0.05);
  s.link_rate.reset();
  s.chunk = 256 * kKiB;
  s.low_max_inflight = 1024 * kKiB;
  s.max_inflight = 0;
  auto arbiter = makeArbiter(s);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(arbiter->tryAcquire(kLow, 256 * kKiB, 0).isOk());
  EXPECT_EQ(arbiter->tryAcquire(kLow, 256 * kKiB, 0).code(), StatusCode::again);
  EXPECT_EQ(arbiter->stats(kLow).refused_for_own_limit, 1u);
  // Low's own limit is not a claim on the link: high posts at once.
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 4096 * kKiB, 0).isOk());
  arbiter->release(kLow, 256 * kKiB);
  EXPECT_TRUE(arbiter->tryAcquire(kLow, 256 * kKiB, 0).isOk());
  EXPECT_EQ(arbiter->stats(kLow).inflight_bytes, 1024 * kKiB);
}

TEST(ArbiterTest, LargePostFitsAnEmptyWindow) {
  ArbiterSettings s = shapedSettings(0.05);
  s.link_rate.reset();
  s.max_inflight = 1024 * kKiB;
  auto arbiter = makeArbiter(s);
  // A collective larger than the window still goes when nothing is in flight.
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 8192 * kKiB, 0).isOk());
  EXPECT_EQ(arbiter->tryAcquire(kHigh, 1, 0).code(), StatusCode::again);
  arbiter->release(kHigh, 8192 * kKiB);
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 1, 0).isOk());
}

// Low is refused for capacity and so claims the next turn; high, which has
// just been served, must wait for it: until low withdraws or its claim lapses.
std::unique_ptr<LinkArbiter> arbiterWithLowClaim() {
  ArbiterSettings s = shapedSettings(0.05);
  s.link_rate.reset();
  s.max_inflight = 128 * kKiB;
  auto arbiter = makeArbiter(s);
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 128 * kKiB, 0).isOk());
  EXPECT_EQ(arbiter->tryAcquire(kLow, 64 * kKiB, 0).code(), StatusCode::again);
  arbiter->release(kHigh, 128 * kKiB);
  return arbiter;
}

TEST(ArbiterTest, ClaimHoldsTheTurnForItsOwner) {
  auto arbiter = arbiterWithLowClaim();
  EXPECT_EQ(arbiter->tryAcquire(kHigh, 64 * kKiB, 100 * kMicrosecond).code(), StatusCode::again);
  EXPECT_EQ(arbiter->stats(kHigh).refused_for_turn, 1u);
  EXPECT_TRUE(arbiter->tryAcquire(kLow, 64 * kKiB, 100 * kMicrosecond).isOk());
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 64 * kKiB, 100 * kMicrosecond).isOk());
}

TEST(ArbiterTest, WithdrawnClaimFreesTheTurn) {
  auto arbiter = arbiterWithLowClaim();
  arbiter->withdraw(kLow);
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 64 * kKiB, 1).isOk());
}

TEST(ArbiterTest, ClaimLapsesAfterTheHold) {
  auto arbiter = arbiterWithLowClaim();
  EXPECT_EQ(arbiter->tryAcquire(kHigh, 64 * kKiB, 200 * kMicrosecond).code(), StatusCode::again);
  EXPECT_TRUE(arbiter->tryAcquire(kHigh, 64 * kKiB, 200 * kMicrosecond + 1).isOk());
}

TEST(ArbiterTest, MisuseIsInvalidUsage) {
  auto arbiter = makeArbiter(shapedSettings());
  testing::LogCapture capture(log::Level::error);
  EXPECT_EQ(arbiter->tryAcquire(7, 1, 0).code(), StatusCode::invalid_usage);
  EXPECT_EQ(arbiter->tryAcquire(kHigh, 0, 0).code(), StatusCode::invalid_usage);
  EXPECT_EQ(arbiter->maxPostBytes(kLow), 64 * kKiB);
  Status oversized = arbiter->tryAcquire(kLow, 64 * kKiB + 1, 0);
  EXPECT_EQ(oversized.code(), StatusCode::invalid_usage);
  EXPECT_EQ(oversized.message(),
            "post of 65537 bytes for class 1 refused: classes 0-1, low-priority posts at most "
            "65536 bytes (split them into chunks)");
  ASSERT_EQ(capture.lines().size(), 3u);
  EXPECT_EQ(capture.lines()[2], "error: arbiter: " + oversized.message());
}

TEST(ArbiterTest, CreateRefusesBadConfigs) {
  ArbiterSettings s = shapedSettings();
  EXPECT_EQ(LinkArbiter::create({{}, s}).status().message(),
            "an arbiter needs 1 to 16 classes, got 0");
  EXPECT_EQ(LinkArbiter::create({{{"kv", Priority::low, 0}}, s}).status().message(),
            "class \"kv\": weight 0; weights are 1-255");
}

TEST(ArbiterConcurrencyTest, EightThreadsKeepTheBooksBalanced) {
  ArbiterSettings s = shapedSettings(0.05);
  s.link_rate.reset();
  s.max_inflight = 256 * kKiB;
  s.low_max_inflight = 128 * kKiB;
  auto arbiter = makeArbiter(s);
  constexpr int kThreads = 8;
  constexpr int kAttempts = 20'000;
  std::atomic<std::int64_t> inflight{0};
  std::atomic<std::int64_t> low_inflight{0};
  std::atomic<bool> window_exceeded{false};
  std::vector<Bytes> granted(kThreads, 0);
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const ClassIndex cls = t % 2 == 0 ? kHigh : kLow;
        const Bytes size = (1 + t) * 4 * kKiB;
        for (int i = 0; i < kAttempts; ++i) {
          if (!arbiter->tryAcquire(cls, size).isOk()) continue;
          std::int64_t now_inflight = inflight.fetch_add(size) + size;
          std::int64_t now_low = cls == kLow ? low_inflight.fetch_add(size) + size : 0;
          // Windows may be exceeded only by a post into an empty window.
          if (now_inflight > static_cast<std::int64_t>(s.max_inflight) &&
              now_inflight != static_cast<std::int64_t>(size)) {
            window_exceeded = true;
          }
          if (now_low > static_cast<std::int64_t>(s.low_max_inflight)) window_exceeded = true;
          granted[t] += size;
          if (cls == kLow) low_inflight.fetch_sub(size);
          inflight.fetch_sub(size);
          arbiter->release(cls, size);
        }
      });
    }
  }
  EXPECT_FALSE(window_exceeded.load());
  Bytes high = 0;
  Bytes low = 0;
  for (int t = 0; t < kThreads; ++t) (t % 2 == 0 ? high : low) += granted[t];
  EXPECT_EQ(arbiter->stats(kHigh).granted_bytes, high);
  EXPECT_EQ(arbiter->stats(kLow).granted_bytes, low);
  EXPECT_EQ(arbiter->stats(kHigh).inflight_bytes, 0u);
  EXPECT_EQ(arbiter->stats(kLow).inflight_bytes, 0u);
  EXPECT_GT(high, 0u);
  EXPECT_GT(low, 0u);
}

}  // namespace
}  // namespace dualpath::qos
