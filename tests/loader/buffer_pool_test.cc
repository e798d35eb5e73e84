// The staging buffer pool: slots, back-pressure, alignment, leases, and
// concurrent use (run again under TSan).
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include <dualpath/loader/buffer_pool.h>

namespace dualpath::loader {
namespace {

std::unique_ptr<BufferPool> pool(std::size_t slots, std::size_t slot_bytes = 5000) {
  return std::move(
      BufferPool::create({.name = "pe-buffer", .slot_bytes = slot_bytes, .slots = slots}).value());
}

TEST(BufferPool, SlotsAreAlignedDisjointAndInsideTheRegion) {
  auto buffers = pool(3);
  std::vector<BufferLease> leases;
  std::set<std::byte*> starts;
  for (int i = 0; i < 3; ++i) leases.push_back(std::move(buffers->acquire().value()));
  for (const BufferLease& lease : leases) {
    EXPECT_EQ(lease.bytes().size(), 5000u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(lease.bytes().data()) % 4096, 0u);
    EXPECT_EQ(lease.offset() % 8192, 0u);  // 5,000 bytes rounded up to 8 KiB
    EXPECT_EQ(lease.bytes().data(), buffers->region().data() + lease.offset());
    starts.insert(lease.bytes().data());
  }
  EXPECT_EQ(starts.size(), 3u);
  EXPECT_EQ(buffers->region().size(), 3u * 8192);
}

TEST(BufferPool, AFullPoolIsBackPressure) {
  auto buffers = pool(2);
  BufferLease first = std::move(buffers->acquire().value());
  BufferLease second = std::move(buffers->acquire().value());
  Result<BufferLease> third = buffers->acquire();
  ASSERT_FALSE(third);
  EXPECT_EQ(third.status().code(), StatusCode::again);
  EXPECT_EQ(third.status().message(), "buffer pool 'pe-buffer': all 2 slots are in use");
  { BufferLease released = std::move(first); }  // back to the pool
  EXPECT_EQ(buffers->available(), 1u);
  EXPECT_TRUE(buffers->acquire());
}

TEST(BufferPool, MovedLeasesReturnTheirSlotOnce) {
  auto buffers = pool(1);
  BufferLease lease = std::move(buffers->acquire().value());
  BufferLease moved(std::move(lease));
  EXPECT_FALSE(lease.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_TRUE(moved.valid());
  moved = BufferLease();
  EXPECT_EQ(buffers->available(), 1u);
}

TEST(BufferPool, InvalidOptionsNameThePool) {
  EXPECT_EQ(BufferPool::create({.name = "de-buffer", .slot_bytes = 10, .slots = 0}).status().message(),
            "buffer pool 'de-buffer': needs at least one slot");
  EXPECT_EQ(BufferPool::create({.name = "de-buffer", .slot_bytes = 10, .slots = 1, .alignment = 48})
                .status()
                .message(),
            "buffer pool 'de-buffer': alignment 48 is not a power of two");
}

TEST(BufferPool, ThreadsShareOnePool) {
  auto buffers = pool(4, 64);
  auto churn = [&](std::byte mark) {
    for (int i = 0; i < 5000; ++i) {
      Result<BufferLease> lease = buffers->acquire();
      if (!lease) continue;  // back-pressure: the other thread holds them
      for (std::byte& b : lease->bytes()) b = mark;
      for (std::byte b : lease->bytes()) ASSERT_EQ(b, mark);  // nobody else wrote it
    }
  };
  std::thread other(churn, std::byte{1});
  churn(std::byte{2});
  other.join();
  EXPECT_EQ(buffers->available(), 4u);
}

}  // namespace
}  // namespace dualpath::loader
