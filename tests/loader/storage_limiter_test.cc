// The emulated storage NIC's token bucket, on a clock the test controls.
#include <gtest/gtest.h>

#include <dualpath/loader/storage_limiter.h>

namespace dualpath::loader {
namespace {

using Clock = StorageRateLimiter::Clock;
using std::chrono::milliseconds;

TEST(StorageRateLimiter, ReadsQueueBehindEachOtherAtTheRate) {
  // 1,000 B/s with 500 B of credit.
  auto limiter = std::move(StorageRateLimiter::create(1000, 500).value());
  const Clock::time_point t0{};
  EXPECT_EQ(limiter->reserve(500, t0), t0);                     // the burst credit
  EXPECT_EQ(limiter->reserve(1000, t0), t0 + milliseconds(1000));  // 1,000 B of debt
  // Half a second later 500 B were repaid; 250 more queue behind the rest.
  EXPECT_EQ(limiter->reserve(250, t0 + milliseconds(500)), t0 + milliseconds(1250));
}

TEST(StorageRateLimiter, IdleTimeRefillsOnlyUpToTheBurst) {
  auto limiter = std::move(StorageRateLimiter::create(1000, 500).value());
  const Clock::time_point t0{};
  EXPECT_EQ(limiter->reserve(500, t0), t0);
  // Ten idle seconds give back 500 B of credit, not 10,000.
  const Clock::time_point later = t0 + milliseconds(10'000);
  EXPECT_EQ(limiter->reserve(1500, later), later + milliseconds(1000));
}

TEST(StorageRateLimiter, SaysItIsEmulated) {
  auto limiter = std::move(StorageRateLimiter::create(1.25e9, 8 << 20).value());
  EXPECT_EQ(limiter->describe(), "emulated storage NIC: 10gbit, burst 8MiB");
  EXPECT_EQ(StorageRateLimiter::create(0, 1).status().message(),
            "emulated storage NIC: rate 0 bytes/s must be positive");
}

}  // namespace
}  // namespace dualpath::loader
