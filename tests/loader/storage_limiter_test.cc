// The emulated storage NIC's token bucket, on a clock the test controls.
#include <gtest/gtest.h>

#include <dualpath/loader/memory_block_store.h>
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
  EXPECT_EQ(limiter->describe(), "emulated storage NIC (10gbit, burst 8MiB)");
  EXPECT_EQ(StorageRateLimiter::create(0, 1).status().message(),
            "emulated storage NIC: rate 0 bytes/s must be positive");
}

// A store behind an emulated NIC: the burst covers one tiny Full Block (4 KiB)
// and the link then delivers 8 bytes per second, so in one batch the first
// read completes at once and the second only long after any test deadline.
TEST(EmulatedStorageNic, HoldsBackReadsTheLinkCannotDeliverInTime) {
  const ModelSpec tiny = scheduler::modelPreset("tiny").value();
  auto store = std::move(MemoryBlockStore::create(tiny).value());
  const std::vector<std::byte> payload(tiny.fullBlockBytes(), std::byte{0x5a});
  const BlockId first{.hi = 1, .lo = 1};
  const BlockId second{.hi = 2, .lo = 2};
  ASSERT_TRUE(store->write(first, payload));
  ASSERT_TRUE(store->write(second, payload));
  auto link = std::move(StorageRateLimiter::create(8, tiny.fullBlockBytes()).value());
  store->emulateStorageNic(link.get());

  std::vector<std::byte> a(payload.size()), b(payload.size());
  ReadBatch batch;
  batch.add(first, a);
  batch.add(second, b);
  ASSERT_TRUE(store->read(batch, Clock::now() + std::chrono::seconds(10)));
  EXPECT_TRUE(batch.reads()[0].status);
  EXPECT_EQ(a, payload);
  EXPECT_EQ(batch.reads()[1].status.code(), StatusCode::timeout);
  EXPECT_EQ(batch.reads()[1].status.message(),
            "block " + second.toHex() +
                ": timed out: the emulated storage NIC (64bit, burst 4KiB) delivers it only "
                "after the deadline");
}

TEST(EmulatedStorageNic, AFastLinkChangesNothing) {
  const ModelSpec tiny = scheduler::modelPreset("tiny").value();
  auto store = std::move(MemoryBlockStore::create(tiny).value());
  const std::vector<std::byte> payload(tiny.fullBlockBytes(), std::byte{0x33});
  ASSERT_TRUE(store->write({.hi = 3, .lo = 3}, payload));
  auto link = std::move(StorageRateLimiter::create(1e12, 1 << 20).value());
  store->emulateStorageNic(link.get());
  std::vector<std::byte> out(payload.size());
  ReadBatch batch;
  batch.add({.hi = 3, .lo = 3}, out);
  ASSERT_TRUE(store->read(batch, Clock::now() + std::chrono::seconds(10)));
  EXPECT_TRUE(batch.reads()[0].status) << batch.reads()[0].status.message();
  EXPECT_EQ(out, payload);
}

}  // namespace
}  // namespace dualpath::loader
