// The remote block store: a BlockServer on one engine serving a store, a
// RemoteBlockStore on another engine reading and writing through it, over
// UCX tcp on loopback in one process. Bytes end to end, the server store's
// outcomes kept and attributed to the server, geometry refused, end-to-end
// checksums, a server that goes away, a deadline that passes.
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/loader/memory_block_store.h>
#include <dualpath/loader/remote_block_store.h>

#include "block_server_thread.h"
#include "log_capture.h"
#include "relay_protocol.h"
#include "relay_test_support.h"
#include "transport_test_util.h"

namespace dualpath::loader {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::idOf;
using testing::randomBlocks;
using testing::tinyModel;

Deadline later() { return Clock::now() + std::chrono::seconds(20); }

class RemoteBlockStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy_ = dualpath::testing::examplePolicy("ethernet-testbed.toml");
    kv_ = static_cast<std::uint8_t>(policy_.indexOf(*policy_.findClass("kv")));
    client_engine_ = dualpath::testing::loopbackEngine(policy_, 2'000);
    server_engine_ = dualpath::testing::loopbackEngine(policy_, 2'000);
    ASSERT_TRUE(client_engine_ && server_engine_);
    Result<std::unique_ptr<MemoryBlockStore>> store = MemoryBlockStore::create(tinyModel());
    ASSERT_TRUE(store.hasValue()) << store.status().toString();
    stored_ = std::move(store).value();
    blocks_ = randomBlocks(tinyModel(), 20);
    for (std::size_t i = 0; i < blocks_.size(); ++i)
      ASSERT_TRUE(stored_->write(idOf(i), blocks_[i]).isOk());
  }

  void TearDown() override { stopServer(); }

  // Starts the server on its own thread (its one driver from then on) and
  // makes a client store of `model`, which connects on its first use.
  std::unique_ptr<RemoteBlockStore> start(const ModelSpec& model = tinyModel()) {
    Result<std::unique_ptr<BlockServer>> server =
        BlockServer::create(*server_engine_, 0, kv_, *stored_);
    EXPECT_TRUE(server.hasValue()) << server.status().toString();
    if (!server) return nullptr;
    server_ = std::move(server).value();
    server_thread_.emplace(*server_);
    Result<std::unique_ptr<RemoteBlockStore>> remote = RemoteBlockStore::create(
        {client_engine_, 0, server_->handle(), kv_}, model,
        {.write_timeout = std::chrono::seconds(10)});
    EXPECT_TRUE(remote.hasValue()) << remote.status().toString();
    return remote ? std::move(remote).value() : nullptr;
  }

  // Stops and destroys the server: its connections close.
  void stopServer() {
    server_thread_.reset();
    server_.reset();
  }

  struct Reads {
    std::vector<std::vector<std::byte>> buffers;
    ReadBatch batch;
  };
  // A batch of blocks `ids` into fresh buffers.
  static std::unique_ptr<Reads> batchOf(const std::vector<BlockId>& ids) {
    auto reads = std::make_unique<Reads>();
    reads->buffers.assign(ids.size(), std::vector<std::byte>(tinyModel().fullBlockBytes()));
    for (std::size_t i = 0; i < ids.size(); ++i) reads->batch.add(ids[i], reads->buffers[i]);
    return reads;
  }

  // Peers that close log warnings (the transport's, the store's): each test
  // asserts the ones it causes; the rest, at teardown, are expected.
  dualpath::testing::LogCapture capture_;
  qos::Policy policy_;
  std::uint8_t kv_ = 0;
  std::shared_ptr<transport::Engine> client_engine_, server_engine_;
  std::unique_ptr<MemoryBlockStore> stored_;
  std::vector<std::vector<std::byte>> blocks_;
  std::unique_ptr<BlockServer> server_;
  std::optional<testing::BlockServerThread> server_thread_;
};

TEST_F(RemoteBlockStoreTest, ABatchLargerThanEveryWindowArrivesByteForByte) {
  auto remote = start();
  ASSERT_TRUE(remote);
  std::vector<BlockId> ids;
  for (std::size_t i = 0; i < blocks_.size(); ++i) ids.push_back(idOf(i));
  auto reads = batchOf(ids);
  ASSERT_TRUE(remote->read(reads->batch, later()).isOk());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    EXPECT_TRUE(reads->batch.reads()[i].status.isOk()) << reads->batch.reads()[i].status.toString();
    EXPECT_EQ(reads->buffers[i], blocks_[i]) << "block " << i;
  }
  EXPECT_EQ(remote->counters().reads_ok, ids.size());
  EXPECT_EQ(remote->counters().bytes_read, ids.size() * tinyModel().fullBlockBytes());
  // The next batch on the same connection, driven by poll() alone.
  auto again = batchOf({idOf(3), idOf(19)});
  ASSERT_TRUE(remote->submit(again->batch).isOk());
  bool done = false;
  ASSERT_TRUE(dualpath::testing::pollUntil([&] {
    Result<bool> polled = remote->poll(again->batch);
    EXPECT_TRUE(polled.hasValue()) << polled.status().toString();
    done = polled.hasValue() && *polled;
    return done || !polled.hasValue();
  }));
  ASSERT_TRUE(done);
  EXPECT_EQ(again->buffers[0], blocks_[3]);
  EXPECT_EQ(again->buffers[1], blocks_[19]);
}

TEST_F(RemoteBlockStoreTest, TheServerStoresOutcomesKeepTheirCodeAndNameTheServer) {
  stored_->mutableStoredBytes(idOf(2)).back() ^= std::byte{1};  // payload no longer matches
  auto remote = start();
  ASSERT_TRUE(remote);
  auto reads = batchOf({idOf(1), idOf(99), idOf(2), idOf(4)});
  ASSERT_TRUE(remote->read(reads->batch, later()).isOk());
  const std::span<const BlockRead> r = reads->batch.reads();
  EXPECT_TRUE(r[0].status.isOk());
  EXPECT_EQ(r[1].status.code(), StatusCode::not_found);
  EXPECT_EQ(r[1].status.message(),
            fmt::format("{}: block {} in memory: absent", remote->server(), idOf(99).toHex()));
  EXPECT_THAT(remote->server(), StartsWith("storage server 127.0.0.1:"));
  EXPECT_EQ(r[2].status.code(), StatusCode::corrupt);
  EXPECT_THAT(r[2].status.message(),
              StartsWith(fmt::format("{}: block {} in memory", remote->server(), idOf(2).toHex())));
  EXPECT_TRUE(r[3].status.isOk());
  EXPECT_EQ(reads->buffers[3], blocks_[4]);  // the reads after a failure still line up
  EXPECT_EQ(remote->counters().reads_failed, 2u);
  EXPECT_EQ(server_->counters().reads_failed, 2u);
}

TEST_F(RemoteBlockStoreTest, AWriteIsStoredAndReadsBack) {
  auto remote = start();
  ASSERT_TRUE(remote);
  const auto fresh = randomBlocks(tinyModel(), 1, 777)[0];
  ASSERT_TRUE(remote->write(idOf(500), fresh).isOk());
  EXPECT_EQ(remote->counters().writes, 1u);
  auto reads = batchOf({idOf(500)});
  ASSERT_TRUE(remote->read(reads->batch, later()).isOk());
  ASSERT_TRUE(reads->batch.reads()[0].status.isOk()) << reads->batch.reads()[0].status.toString();
  EXPECT_EQ(reads->buffers[0], fresh);

  const std::vector<std::byte> short_block(10);
  Status refused = remote->write(idOf(501), short_block);
  EXPECT_EQ(refused.code(), StatusCode::invalid_usage);
  EXPECT_EQ(refused.message(), fmt::format("write: block {}: 10 B given, a Full Block of 'tiny' "
                                           "is 4096 B",
                                           idOf(501).toHex()));
}

TEST_F(RemoteBlockStoreTest, AnotherGeometryIsRefusedNamingBoth) {
  ModelSpec other = tinyModel();
  other.name = "tiny-8-layers";
  other.layers = 8;
  auto remote = start(other);
  ASSERT_TRUE(remote);
  std::vector<std::byte> buffer(other.fullBlockBytes());
  ReadBatch batch;
  batch.add(idOf(1), buffer);
  ASSERT_TRUE(remote->read(batch, later()).isOk());
  EXPECT_EQ(batch.reads()[0].status.code(), StatusCode::invalid_argument);
  EXPECT_THAT(batch.reads()[0].status.message(),
              HasSubstr("block server: the store holds 'tiny'"));
  EXPECT_THAT(batch.reads()[0].status.message(), HasSubstr("the request asks for"));
  Status write = remote->write(idOf(7), buffer);
  EXPECT_EQ(write.code(), StatusCode::invalid_argument);
  EXPECT_THAT(write.message(), HasSubstr("the write carries"));
}

TEST_F(RemoteBlockStoreTest, AServerThatGoesAwayEndsTheBatchAndTheStore) {
  auto remote = start();
  ASSERT_TRUE(remote);
  stopServer();  // closes its end of every connection
  auto reads = batchOf({idOf(1), idOf(2)});
  ASSERT_TRUE(remote->read(reads->batch, later()).isOk());
  for (const BlockRead& read : reads->batch.reads()) {
    EXPECT_TRUE(read.status.code() == StatusCode::remote ||
                read.status.code() == StatusCode::timeout)
        << read.status.toString();
    EXPECT_THAT(read.status.message(), StartsWith(remote->server() + ": block "));
  }
  EXPECT_FALSE(remote->lastFailure().isOk());
  EXPECT_THAT(capture_.lines(),
              ::testing::Contains(StartsWith(fmt::format(
                  "warn: remote block store: {}: connection closed: ", remote->server()))));
  // The next batch tries a new connection, which fails the same way, bounded.
  auto next = batchOf({idOf(1)});
  ASSERT_TRUE(remote->read(next->batch, later()).isOk());
  EXPECT_NE(next->batch.reads()[0].status.code(), StatusCode::ok);
  EXPECT_EQ(remote->connects(), 2u);
}

TEST_F(RemoteBlockStoreTest, APassedDeadlineEndsEveryReadAndClosesTheConnection) {
  auto remote = start();
  ASSERT_TRUE(remote);
  // The server stays connected but is no longer driven: nothing comes back.
  server_thread_->stop();
  auto reads = batchOf({idOf(1), idOf(2), idOf(3)});
  ASSERT_TRUE(remote->read(reads->batch, Clock::now() + std::chrono::milliseconds(100)).isOk());
  for (const BlockRead& read : reads->batch.reads()) {
    EXPECT_EQ(read.status.code(), StatusCode::timeout);
    EXPECT_EQ(read.status.message(), fmt::format("{}: block {}: not read before the deadline",
                                                 remote->server(), read.id.toHex()));
  }
  EXPECT_EQ(remote->lastFailure().code(), StatusCode::timeout);
  EXPECT_THAT(capture_.lines(),
              ::testing::Contains(fmt::format("warn: remote block store: {}: connection closed: "
                                              "timeout: a read batch passed its deadline",
                                              remote->server())));
  // The buffers are the caller's again: the closed connection lands nothing.
  std::vector<std::byte> zeros(tinyModel().fullBlockBytes());
  for (std::vector<std::byte>& buffer : reads->buffers) std::fill(buffer.begin(), buffer.end(), std::byte{0});
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(server_->poll().isOk());
  for (const std::vector<std::byte>& buffer : reads->buffers) EXPECT_EQ(buffer, zeros);

  // The store is usable afterwards: the same batch, with the server driven
  // again, reads every block over a new connection.
  server_thread_.emplace(*server_);
  ASSERT_TRUE(remote->read(reads->batch, later()).isOk());
  EXPECT_EQ(reads->batch.failures(), 0u);
  EXPECT_EQ(reads->buffers[0], blocks_[1]);
  EXPECT_EQ(remote->connects(), 2u);
}

// The wire messages (relay_protocol.h): what is encoded decodes the same, and
// a damaged field is named.
TEST(StoreMessagesTest, EncodeAndDecodeAgree) {
  relay::StoreReadMessage read{.request_id = 7,
                               .layers = 4,
                               .block_tokens = 16,
                               .kv_bytes_per_token_per_layer = 64,
                               .budget_ms = 0,
                               .blocks = {idOf(1), idOf(2)}};
  std::vector<std::byte> bytes;
  ASSERT_TRUE(relay::encode(read, bytes).isOk());
  EXPECT_EQ(bytes.size(), relay::kStoreReadFixedBytes + 2 * 16);
  Result<relay::StoreReadMessage> read_back = relay::decodeStoreRead(bytes);
  ASSERT_TRUE(read_back.hasValue()) << read_back.status().toString();
  EXPECT_EQ(read_back->request_id, 7u);
  EXPECT_EQ(read_back->blocks, read.blocks);
  EXPECT_EQ(read_back->layers, 4u);

  relay::encode(relay::StoreWriteMessage{.request_id = 8, .layers = 4, .block_tokens = 16,
                                         .kv_bytes_per_token_per_layer = 64, .budget_ms = 500,
                                         .block = idOf(3), .checksum = 0x1234},
                bytes);
  EXPECT_EQ(bytes.size(), relay::kStoreWriteBytes);
  Result<relay::StoreWriteMessage> write_back = relay::decodeStoreWrite(bytes);
  ASSERT_TRUE(write_back.hasValue()) << write_back.status().toString();
  EXPECT_EQ(write_back->block, idOf(3));
  EXPECT_EQ(write_back->checksum, 0x1234u);
  EXPECT_EQ(write_back->budget_ms, 500u);

  relay::encode(relay::StoreOutcomeMessage{.request_id = 7, .block_index = 1, .block = idOf(2),
                                           .status = Status(StatusCode::not_found, "absent"),
                                           .checksum = 0},
                bytes);
  Result<relay::StoreOutcomeMessage> outcome = relay::decodeStoreOutcome(bytes);
  ASSERT_TRUE(outcome.hasValue()) << outcome.status().toString();
  EXPECT_EQ(outcome->block_index, 1u);
  EXPECT_EQ(outcome->status.code(), StatusCode::not_found);
  EXPECT_EQ(outcome->status.message(), "absent");
}

TEST(StoreMessagesTest, DamagedFieldsAreNamed) {
  std::vector<std::byte> bytes;
  Status empty = relay::encode(relay::StoreReadMessage{.request_id = 3, .layers = 4,
                                                       .block_tokens = 16,
                                                       .kv_bytes_per_token_per_layer = 64,
                                                       .budget_ms = 0, .blocks = {}},
                               bytes);
  EXPECT_EQ(empty.code(), StatusCode::invalid_usage);
  EXPECT_EQ(empty.message(), "store read 3: 0 blocks; 1 to 4096 fit one message");

  ASSERT_TRUE(relay::encode(relay::StoreReadMessage{.request_id = 3, .layers = 4,
                                                    .block_tokens = 16,
                                                    .kv_bytes_per_token_per_layer = 64,
                                                    .budget_ms = 0, .blocks = {idOf(1)}},
                            bytes)
                  .isOk());
  bytes[36] = std::byte{1};  // reserved
  EXPECT_EQ(relay::decodeStoreRead(bytes).status().message(),
            "relay store_read message: reserved: 0x1, expected 0");
  bytes[36] = std::byte{0};
  bytes.pop_back();
  bytes[4] = static_cast<std::byte>(bytes.size());  // a consistent length, one byte short
  EXPECT_EQ(relay::decodeStoreRead(bytes).status().message(),
            "relay store_read message: length: 15 B of blocks, expected 16 B for 1 blocks");
  EXPECT_EQ(relay::decodeStoreOutcome(bytes).status().message(),
            "relay message: kind: store_read, expected store_outcome");
}

}  // namespace
}  // namespace dualpath::loader
