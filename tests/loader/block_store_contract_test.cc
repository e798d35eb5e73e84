// The BlockStore contract, run against every back end: the in-memory store,
// the POSIX store with each io engine, and the remote store (a BlockServer
// over a POSIX store, on its own thread, reached over UCX tcp on loopback).
// Checks loader/src/block_store.cc, memory_block_store.cc,
// posix_block_store.cc, both readers, remote_block_store.cc and
// block_server.cc.
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <dualpath/loader/block_format.h>
#include <dualpath/loader/memory_block_store.h>
#include <dualpath/loader/posix_block_store.h>
#include <dualpath/loader/remote_block_store.h>
#include <dualpath/loader/storage_limiter.h>

#include "block_server_thread.h"
#include "log_capture.h"
#include "store_test_support.h"
#include "transport_test_util.h"

namespace dualpath::loader {
namespace {

using testing::AlignedBuffers;
using testing::payloadFor;
using testing::preset;
using testing::ScratchDir;

enum class Backend { memory, posix_io_uring, posix_pread, remote };

std::string backendName(const ::testing::TestParamInfo<Backend>& info) {
  switch (info.param) {
    case Backend::memory:
      return "memory";
    case Backend::posix_io_uring:
      return "posix_io_uring";
    case Backend::posix_pread:
      return "posix_pread";
    case Backend::remote:
      return "remote";
  }
  return "unknown";
}

Deadline later() {
  return Clock::now() + std::chrono::seconds(30);
}

class BlockStoreContractTest : public ::testing::TestWithParam<Backend> {
 protected:
  // Opens a store of `model`; queue depth 4 so that batches overflow it.
  void open(const ModelSpec& model) {
    model_ = model;
    if (GetParam() == Backend::memory) {
      Result<std::unique_ptr<MemoryBlockStore>> store = MemoryBlockStore::create(model);
      ASSERT_TRUE(store.hasValue()) << store.status().toString();
      memory_ = store->get();
      store_ = std::move(store).value();
      return;
    }
    PosixBlockStoreOptions options;
    options.io_engine =
        GetParam() == Backend::posix_io_uring ? IoEngine::io_uring : IoEngine::pread;
    options.queue_depth = 4;
    options.fsync = FsyncPolicy::none;  // durability is not under test here
    Result<std::unique_ptr<PosixBlockStore>> store =
        PosixBlockStore::open(scratch_.path(), model, options);
    ASSERT_TRUE(store.hasValue()) << store.status().toString();
    posix_ = store->get();
    EXPECT_EQ(posix_->engine(), options.io_engine);
    if (GetParam() == Backend::remote) {
      ASSERT_NO_FATAL_FAILURE(serve(std::move(store).value()));
      return;
    }
    store_ = std::move(store).value();
  }

  // The remote back end: `served` behind a BlockServer polled on its own
  // thread, and store_ a RemoteBlockStore on another engine.
  void serve(std::unique_ptr<PosixBlockStore> served) {
    // Closed connections log warnings (the transport's, the store's).
    capture_.emplace();
    const qos::Policy policy = dualpath::testing::examplePolicy("ethernet-testbed.toml");
    const auto kv = static_cast<std::uint8_t>(policy.indexOf(*policy.findClass("kv")));
    client_engine_ = dualpath::testing::loopbackEngine(policy, 2'000);
    server_engine_ = dualpath::testing::loopbackEngine(policy, 2'000);
    ASSERT_TRUE(client_engine_ && server_engine_);
    served_ = std::move(served);
    Result<std::unique_ptr<BlockServer>> server =
        BlockServer::create(*server_engine_, 0, kv, *served_);
    ASSERT_TRUE(server.hasValue()) << server.status().toString();
    server_ = std::move(server).value();
    server_thread_.emplace(*server_);
    Result<std::unique_ptr<RemoteBlockStore>> remote =
        RemoteBlockStore::create({client_engine_, 0, server_->handle(), kv}, model_);
    ASSERT_TRUE(remote.hasValue()) << remote.status().toString();
    remote_ = remote->get();
    store_ = std::move(remote).value();
  }

  void TearDown() override {
    store_.reset();
    server_thread_.reset();
    server_.reset();
  }

  // "block <hex> in memory" or "block <hex> (<path>)": how messages name a block.
  std::string where(const BlockId& id) const {
    if (memory_ != nullptr) return fmt::format("block {} in memory", id.toHex());
    const std::string local = fmt::format("block {} ({})", id.toHex(), posix_->blockPath(id));
    return remote_ != nullptr ? remote_->server() + ": " + local : local;
  }

  // Rewrites the stored form (header + payload) of `id`.
  void editStored(const BlockId& id, const std::function<void(std::vector<std::byte>&)>& edit) {
    if (memory_ != nullptr) {
      std::span<std::byte> stored = memory_->mutableStoredBytes(id);
      std::vector<std::byte> bytes(stored.begin(), stored.end());
      edit(bytes);
      if (bytes.size() <= stored.size()) {
        std::memcpy(stored.data(), bytes.data(), bytes.size());
        memory_->truncate(id, bytes.size());
      }
      return;
    }
    const std::string path = posix_->blockPath(id);
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(chars.size());
    std::memcpy(bytes.data(), chars.data(), chars.size());
    edit(bytes);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
  }

  // Polls `batch` until poll() returns true; false (with a test failure) when
  // it errors or 30 s pass first. Spins: poll() never blocks.
  bool pollUntilDone(ReadBatch& batch) {
    const Deadline give_up = later();
    while (Clock::now() < give_up) {
      Result<bool> done = store_->poll(batch);
      if (!done.hasValue()) {
        ADD_FAILURE() << "poll: " << done.status().toString();
        return false;
      }
      if (*done) return true;
    }
    ADD_FAILURE() << "poll did not complete the batch within 30 s";
    return false;
  }

  BlockId writeBlock(std::uint64_t n) {
    const BlockId id{.hi = 0xd00d0000ULL + n, .lo = n * 0x1234567ULL};
    const std::vector<std::byte> payload = payloadFor(id, model_.fullBlockBytes());
    EXPECT_TRUE(store_->write(id, payload).isOk());
    return id;
  }

  ScratchDir scratch_;
  ModelSpec model_;
  std::unique_ptr<BlockStore> store_;
  MemoryBlockStore* memory_ = nullptr;
  PosixBlockStore* posix_ = nullptr;  // with the remote back end: the server's store
  // The remote back end.
  std::optional<dualpath::testing::LogCapture> capture_;
  std::shared_ptr<transport::Engine> client_engine_, server_engine_;
  std::unique_ptr<PosixBlockStore> served_;
  std::unique_ptr<BlockServer> server_;
  std::optional<testing::BlockServerThread> server_thread_;
  RemoteBlockStore* remote_ = nullptr;
};

TEST_P(BlockStoreContractTest, WrittenBlocksReadBackByteExact) {
  ASSERT_NO_FATAL_FAILURE(open(preset("deepseek-v3.2")));
  constexpr std::size_t kBlocks = 6;
  std::vector<BlockId> ids;
  for (std::size_t i = 0; i < kBlocks; ++i) ids.push_back(writeBlock(i));
  AlignedBuffers buffers(kBlocks, model_.fullBlockBytes());
  ReadBatch batch;
  for (std::size_t i = 0; i < kBlocks; ++i) batch.add(ids[i], buffers[i]);
  ASSERT_TRUE(store_->read(batch, later()).isOk());
  for (std::size_t i = 0; i < kBlocks; ++i) {
    EXPECT_TRUE(batch.reads()[i].status.isOk()) << batch.reads()[i].status.toString();
    const std::vector<std::byte> expected = payloadFor(ids[i], model_.fullBlockBytes());
    EXPECT_EQ(std::memcmp(buffers[i].data(), expected.data(), expected.size()), 0) << i;
  }
  EXPECT_EQ(batch.failures(), 0u);
  const StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.writes, kBlocks);
  EXPECT_EQ(counters.reads_ok, kBlocks);
  EXPECT_EQ(counters.bytes_read, kBlocks * 2'561'024u);
}

TEST_P(BlockStoreContractTest, ManyReadsOverflowTheQueueDepthAndAllArrive) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  constexpr std::size_t kBlocks = 100;  // 25 x the queue depth
  std::vector<BlockId> ids;
  for (std::size_t i = 0; i < kBlocks; ++i) ids.push_back(writeBlock(i));
  AlignedBuffers buffers(kBlocks, model_.fullBlockBytes());
  ReadBatch batch;
  for (std::size_t i = kBlocks; i-- > 0;) batch.add(ids[i], buffers[i]);
  ASSERT_TRUE(store_->submit(batch).isOk());
  EXPECT_TRUE(batch.inFlight());
  ASSERT_TRUE(store_->wait(batch, later()).isOk());
  EXPECT_FALSE(batch.inFlight());
  EXPECT_EQ(batch.failures(), 0u);
  for (std::size_t i = 0; i < kBlocks; ++i) {
    EXPECT_EQ(payloadFor(ids[i], model_.fullBlockBytes()),
              std::vector<std::byte>(buffers[i].begin(), buffers[i].end()))
        << i;
  }
  // The batch is reusable after wait().
  batch.clear();
  batch.add(ids[0], buffers[0]);
  ASSERT_TRUE(store_->read(batch, later()).isOk());
  EXPECT_TRUE(batch.reads()[0].status.isOk());
}

TEST_P(BlockStoreContractTest, AMixedBatchReportsEachOutcomeByBlockId) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  const BlockId present = writeBlock(1);
  const BlockId missing{.hi = 0xabc, .lo = 0xdef};
  const BlockId flipped = writeBlock(2);
  const BlockId geometry = writeBlock(3);
  const BlockId short_payload = writeBlock(4);
  const BlockId short_header = writeBlock(5);
  const BlockId misnamed = writeBlock(6);
  const BlockId present_too = writeBlock(7);

  editStored(flipped,
             [](std::vector<std::byte>& b) { b[kBlockHeaderBytes + 100] ^= std::byte{1}; });
  editStored(geometry, [](std::vector<std::byte>& b) {
    const std::uint32_t layers = 8;  // the header says 8 layers, and is otherwise sound
    std::memcpy(b.data() + 16, &layers, 4);
    const std::uint64_t checksum = XXH3_64bits(b.data(), 64);
    std::memcpy(b.data() + 64, &checksum, 8);
  });
  editStored(short_payload, [](std::vector<std::byte>& b) { b.resize(kBlockHeaderBytes + 1000); });
  editStored(short_header, [](std::vector<std::byte>& b) { b.resize(10); });
  // The bytes of block 1 stored under the name of block 6.
  editStored(misnamed, [&](std::vector<std::byte>& b) {
    std::memcpy(b.data() + 40, &present.hi, 8);
    std::memcpy(b.data() + 48, &present.lo, 8);
    const std::uint64_t checksum = XXH3_64bits(b.data(), 64);
    std::memcpy(b.data() + 64, &checksum, 8);
  });

  const BlockId order[] = {present,       missing,      flipped,  geometry,
                           short_payload, short_header, misnamed, present_too};
  AlignedBuffers buffers(std::size(order), model_.fullBlockBytes());
  ReadBatch batch;
  for (std::size_t i = 0; i < std::size(order); ++i) batch.add(order[i], buffers[i]);
  ASSERT_TRUE(store_->read(batch, later()).isOk());
  ASSERT_EQ(batch.size(), std::size(order));
  const std::span<const BlockRead> reads = batch.reads();

  EXPECT_TRUE(reads[0].status.isOk()) << reads[0].status.toString();
  EXPECT_TRUE(reads[7].status.isOk()) << reads[7].status.toString();
  EXPECT_EQ(payloadFor(present, 4096),
            std::vector<std::byte>(buffers[0].begin(), buffers[0].end()));

  EXPECT_EQ(reads[1].status.code(), StatusCode::not_found);
  EXPECT_EQ(reads[1].status.message(),
            where(missing) + (memory_ != nullptr ? ": absent" : ": no such block"));

  EXPECT_EQ(reads[2].status.code(), StatusCode::corrupt);
  EXPECT_EQ(reads[2].status.message().rfind(where(flipped) + ": payload checksum ", 0), 0u)
      << reads[2].status.message();

  EXPECT_EQ(reads[3].status.code(), StatusCode::corrupt);
  EXPECT_EQ(
      reads[3].status.message(),
      where(geometry) +
          ": geometry 8 layers x 16 tokens x 64 B, the store's model 'tiny' is 4 x 16 x 64 B");

  EXPECT_EQ(reads[4].status.code(), StatusCode::corrupt);
  EXPECT_EQ(reads[4].status.message(),
            where(short_payload) + ": truncated payload: 1000 of 4096 bytes");

  EXPECT_EQ(reads[5].status.code(), StatusCode::corrupt);
  EXPECT_EQ(reads[5].status.message(),
            where(short_header) + ": truncated header: 10 of 4096 bytes");

  EXPECT_EQ(reads[6].status.code(), StatusCode::corrupt);
  EXPECT_EQ(reads[6].status.message(), where(misnamed) + ": header names block " + present.toHex());

  EXPECT_EQ(batch.failures(), 6u);
  const StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.reads_ok, 2u);
  EXPECT_EQ(counters.reads_failed, 6u);
}

TEST_P(BlockStoreContractTest, APastDeadlineEndsEveryReadAsTimeout) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  constexpr std::size_t kBlocks = 10;
  std::vector<BlockId> ids;
  for (std::size_t i = 0; i < kBlocks; ++i) ids.push_back(writeBlock(i));
  AlignedBuffers buffers(kBlocks, model_.fullBlockBytes());
  ReadBatch batch;
  for (std::size_t i = 0; i < kBlocks; ++i) batch.add(ids[i], buffers[i]);
  ASSERT_TRUE(store_->submit(batch).isOk());
  ASSERT_TRUE(store_->wait(batch, Clock::now() - std::chrono::seconds(1)).isOk());
  for (std::size_t i = 0; i < kBlocks; ++i) {
    const Status& status = batch.reads()[i].status;
    EXPECT_EQ(status.code(), StatusCode::timeout) << status.toString();
    if (remote_ != nullptr) {
      // The client closes its connection (the fence); it knows no path.
      EXPECT_EQ(status.message(), fmt::format("{}: block {}: not read before the deadline",
                                              remote_->server(), ids[i].toHex()));
      continue;
    }
    const std::string expected_tail =
        memory_ != nullptr ? ": the deadline passed before the read started"
                           : ": timed out: the deadline passed before the read completed";
    EXPECT_EQ(status.message(), where(ids[i]) + expected_tail);
  }
  // The store is usable afterwards: the same batch reads ok with time to spare.
  ASSERT_TRUE(store_->read(batch, later()).isOk());
  EXPECT_EQ(batch.failures(), 0u);
}

TEST_P(BlockStoreContractTest, AWriteReplacesTheBlock) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  const BlockId id = writeBlock(1);
  const std::vector<std::byte> second = payloadFor(BlockId{.hi = 9, .lo = 9}, 4096);
  ASSERT_TRUE(store_->write(id, second).isOk());
  AlignedBuffers buffers(1, 4096);
  ReadBatch batch;
  batch.add(id, buffers[0]);
  ASSERT_TRUE(store_->read(batch, later()).isOk());
  ASSERT_TRUE(batch.reads()[0].status.isOk());
  EXPECT_EQ(second, std::vector<std::byte>(buffers[0].begin(), buffers[0].end()));
}

TEST_P(BlockStoreContractTest, MisuseIsRefusedWithTheReason) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  const BlockId id = writeBlock(1);
  ReadBatch batch;
  EXPECT_EQ(store_->submit(batch).message(), "submit: the batch is empty");
  EXPECT_EQ(store_->wait(batch, later()).message(), "wait: the batch was not submitted");

  std::vector<std::byte> small(100);
  batch.add(id, small);
  const Status wrong_size = store_->submit(batch);
  EXPECT_EQ(wrong_size.code(), StatusCode::invalid_usage);
  EXPECT_EQ(wrong_size.message(), fmt::format("submit: block {}: destination is 100 B, a Full "
                                              "Block of 'tiny' is 4096 B",
                                              id.toHex()));
  EXPECT_FALSE(batch.inFlight());

  AlignedBuffers buffers(1, 4096);
  batch.clear();
  batch.add(id, buffers[0]);
  ASSERT_TRUE(store_->submit(batch).isOk());
  EXPECT_EQ(store_->submit(batch).message(), "submit: the batch is already in flight");
  ASSERT_TRUE(store_->wait(batch, later()).isOk());
  EXPECT_TRUE(batch.reads()[0].status.isOk());

  const Status bad_write = store_->write(id, small);
  EXPECT_EQ(bad_write.code(), StatusCode::invalid_usage);
  EXPECT_EQ(
      bad_write.message(),
      fmt::format("write: block {}: 100 B given, a Full Block of 'tiny' is 4096 B", id.toHex()));
}

TEST_P(BlockStoreContractTest, PollingToCompletionGivesTheOutcomesOfWait) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  // More good blocks than the queue depth, so that polling refills it.
  std::vector<BlockId> order;
  for (std::size_t i = 0; i < 12; ++i) order.push_back(writeBlock(i));
  const BlockId missing{.hi = 0xabc, .lo = 0xdef};
  const BlockId flipped = writeBlock(20);
  const BlockId short_payload = writeBlock(21);
  editStored(flipped,
             [](std::vector<std::byte>& b) { b[kBlockHeaderBytes + 100] ^= std::byte{1}; });
  editStored(short_payload, [](std::vector<std::byte>& b) { b.resize(kBlockHeaderBytes + 1000); });
  order.insert(order.begin() + 3, missing);
  order.insert(order.begin() + 7, flipped);
  order.push_back(short_payload);

  AlignedBuffers polled_buffers(order.size(), model_.fullBlockBytes());
  AlignedBuffers waited_buffers(order.size(), model_.fullBlockBytes());
  ReadBatch polled;
  ReadBatch waited;
  for (std::size_t i = 0; i < order.size(); ++i) {
    polled.add(order[i], polled_buffers[i]);
    waited.add(order[i], waited_buffers[i]);
  }
  ASSERT_TRUE(store_->submit(polled).isOk());
  ASSERT_TRUE(pollUntilDone(polled));
  EXPECT_FALSE(polled.inFlight());
  ASSERT_TRUE(store_->read(waited, later()).isOk());

  for (std::size_t i = 0; i < order.size(); ++i) {
    const Status& by_poll = polled.reads()[i].status;
    const Status& by_wait = waited.reads()[i].status;
    EXPECT_EQ(by_poll.code(), by_wait.code()) << i << ": " << by_poll.toString();
    EXPECT_EQ(by_poll.message(), by_wait.message()) << i;
    if (by_poll.isOk()) {
      EXPECT_EQ(
          std::memcmp(polled_buffers[i].data(), waited_buffers[i].data(), model_.fullBlockBytes()),
          0)
          << i;
    }
  }
  EXPECT_EQ(polled.reads()[3].status.code(), StatusCode::not_found);
  EXPECT_EQ(polled.reads()[7].status.code(), StatusCode::corrupt);
  EXPECT_EQ(polled.reads()[7].status.message().rfind(where(flipped) + ": payload checksum ", 0), 0u)
      << polled.reads()[7].status.message();
  EXPECT_EQ(polled.reads().back().status.message(),
            where(short_payload) + ": truncated payload: 1000 of 4096 bytes");
  EXPECT_EQ(polled.failures(), 3u);
  const StoreCounters counters = store_->counters();
  EXPECT_EQ(counters.reads_ok, 2 * 12u);
  EXPECT_EQ(counters.reads_failed, 2 * 3u);

  // Done means done: polling again is misuse, and the batch is reusable.
  EXPECT_EQ(store_->poll(polled).status().message(), "poll: the batch was not submitted");
  ASSERT_TRUE(store_->submit(polled).isOk());
  ASSERT_TRUE(pollUntilDone(polled));
  EXPECT_EQ(polled.failures(), 3u);
}

TEST_P(BlockStoreContractTest, WaitEndsABatchAfterAPartialPoll) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  constexpr std::size_t kBlocks = 40;  // 10 x the queue depth: one poll cannot end it
  std::vector<BlockId> ids;
  for (std::size_t i = 0; i < kBlocks; ++i) ids.push_back(writeBlock(i));
  AlignedBuffers buffers(kBlocks, model_.fullBlockBytes());
  ReadBatch batch;
  for (std::size_t i = 0; i < kBlocks; ++i) batch.add(ids[i], buffers[i]);
  ASSERT_TRUE(store_->submit(batch).isOk());
  Result<bool> first = store_->poll(batch);
  ASSERT_TRUE(first.hasValue()) << first.status().toString();
  EXPECT_EQ(batch.inFlight(), !*first);
  if (batch.inFlight()) {
    // Whatever poll() reaped keeps its outcome; wait() ends the rest.
    ASSERT_TRUE(store_->wait(batch, later()).isOk());
  }
  EXPECT_FALSE(batch.inFlight());
  EXPECT_EQ(batch.failures(), 0u);
  for (std::size_t i = 0; i < kBlocks; ++i) {
    EXPECT_EQ(payloadFor(ids[i], model_.fullBlockBytes()),
              std::vector<std::byte>(buffers[i].begin(), buffers[i].end()))
        << i;
  }
  EXPECT_EQ(store_->counters().reads_ok, kBlocks);
  EXPECT_EQ(store_->wait(batch, later()).message(), "wait: the batch was not submitted");
}

TEST_P(BlockStoreContractTest, PollingAnUnsubmittedBatchIsRefused) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  ReadBatch batch;
  Result<bool> empty = store_->poll(batch);
  ASSERT_FALSE(empty.hasValue());
  EXPECT_EQ(empty.status().code(), StatusCode::invalid_usage);
  EXPECT_EQ(empty.status().message(), "poll: the batch was not submitted");

  AlignedBuffers buffers(1, 4096);
  batch.add(writeBlock(1), buffers[0]);
  Result<bool> added = store_->poll(batch);
  ASSERT_FALSE(added.hasValue());
  EXPECT_EQ(added.status().code(), StatusCode::invalid_usage);
  EXPECT_EQ(added.status().message(), "poll: the batch was not submitted");
  EXPECT_FALSE(batch.inFlight());
}

// The burst covers the first tiny Full Block (4 KiB); the link then delivers
// 8 KiB/s, so the second read arrives half a second after submit(): far later
// than the first poll, soon enough to poll through.
TEST_P(BlockStoreContractTest, BehindAnEmulatedNicPollIsFalseUntilTheLinkDelivers) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  auto link = std::move(StorageRateLimiter::create(8192, 4096).value());
  store_->emulateStorageNic(link.get());
  const BlockId first = writeBlock(1);
  const BlockId second = writeBlock(2);
  AlignedBuffers buffers(2, 4096);
  ReadBatch batch;
  batch.add(first, buffers[0]);
  batch.add(second, buffers[1]);
  ASSERT_TRUE(store_->submit(batch).isOk());
  const Clock::time_point delivery = batch.reads()[1].emulated_delivery;
  ASSERT_GT(delivery, Clock::now() + std::chrono::milliseconds(100));

  Result<bool> first_poll = store_->poll(batch);
  ASSERT_TRUE(first_poll.hasValue()) << first_poll.status().toString();
  EXPECT_FALSE(*first_poll);
  EXPECT_TRUE(batch.inFlight());
  // Verified or not, the second read is not an outcome before its delivery.
  EXPECT_EQ(batch.reads()[1].status.code(), StatusCode::again);

  ASSERT_TRUE(pollUntilDone(batch));
  EXPECT_GE(Clock::now(), delivery);
  EXPECT_FALSE(batch.inFlight());
  EXPECT_EQ(batch.failures(), 0u);
  EXPECT_EQ(payloadFor(second, 4096), std::vector<std::byte>(buffers[1].begin(), buffers[1].end()));
}

// wait() after a partial poll still holds reads to the link: one the link
// delivers only after wait()'s deadline ends as timeout, naming the link.
TEST_P(BlockStoreContractTest, BehindAnEmulatedNicWaitAfterPollTimesOutUndeliveredReads) {
  ASSERT_NO_FATAL_FAILURE(open(preset("tiny")));
  auto link = std::move(StorageRateLimiter::create(8, 4096).value());  // 8 B/s after the burst
  store_->emulateStorageNic(link.get());
  const BlockId first = writeBlock(1);
  const BlockId second = writeBlock(2);
  AlignedBuffers buffers(2, 4096);
  ReadBatch batch;
  batch.add(first, buffers[0]);
  batch.add(second, buffers[1]);
  ASSERT_TRUE(store_->submit(batch).isOk());
  // Poll until the storage has verified the first read (the burst delivers it
  // at once); the second stays pending on the link.
  const Deadline give_up = later();
  while (!batch.reads()[0].status.isOk() && Clock::now() < give_up) {
    Result<bool> done = store_->poll(batch);
    ASSERT_TRUE(done.hasValue()) << done.status().toString();
    ASSERT_FALSE(*done);
  }
  ASSERT_TRUE(batch.reads()[0].status.isOk()) << batch.reads()[0].status.toString();
  EXPECT_EQ(batch.reads()[1].status.code(), StatusCode::again);

  ASSERT_TRUE(store_->wait(batch, later()).isOk());
  EXPECT_FALSE(batch.inFlight());
  EXPECT_TRUE(batch.reads()[0].status.isOk());
  EXPECT_EQ(payloadFor(first, 4096), std::vector<std::byte>(buffers[0].begin(), buffers[0].end()));
  EXPECT_EQ(batch.reads()[1].status.code(), StatusCode::timeout);
  EXPECT_EQ(batch.reads()[1].status.message(),
            "block " + second.toHex() +
                ": timed out: the emulated storage NIC (64bit, burst 4KiB) delivers it only "
                "after the deadline");
  EXPECT_EQ(store_->counters().reads_ok, 2u);  // the storage read both
}

INSTANTIATE_TEST_SUITE_P(Backends, BlockStoreContractTest,
                         ::testing::Values(Backend::memory, Backend::posix_io_uring,
                                           Backend::posix_pread, Backend::remote),
                         backendName);

}  // namespace
}  // namespace dualpath::loader
