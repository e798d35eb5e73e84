// The PE's per-request loader (prefill_loader.h) end to end, in one process
// over UCX tcp on loopback: a PE node (MemoryBlockStore, PE buffer, relay
// client, host copy engine, a "device" buffer in host memory) and a DE node
// (MemoryBlockStore, DE buffer, relay server). Every case checks the bytes
// that reached the device against the stored payloads, layer by layer, and
// that blocks not copied left the device untouched. No sleeps: the test
// thread polls the DE server and the loader, with bounded loops.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dualpath/loader/block_format.h>
#include <dualpath/loader/kv_relay.h>
#include <dualpath/loader/layer_copy.h>
#include <dualpath/loader/memory_block_store.h>
#include <dualpath/loader/prefill_loader.h>
#include <dualpath/loader/storage_limiter.h>

#include "log_capture.h"
#include "relay_test_support.h"
#include "transport_test_util.h"

namespace dualpath::loader {
namespace {

using dualpath::testing::pollUntil;
using ::testing::HasSubstr;
using testing::idOf;

constexpr std::byte kUntouched{0x5a};

// Both nodes hold the same blocks (a block id names its bytes); every block
// is different random bytes. The PE buffer has room for every block twice
// (fallback reads after layers were handed out use a second slot).
class PrefillHarness {
 public:
  PrefillHarness(ModelSpec model, std::size_t blocks, std::uint32_t timeout_ms = 30'000)
      : model_(std::move(model)), n_(blocks), net_(timeout_ms) {
    if (!net_.ready()) return;
    payloads_ = testing::randomBlocks(model_, n_);
    pe_store_ = std::move(MemoryBlockStore::create(model_).value());
    de_store_ = std::move(MemoryBlockStore::create(model_).value());
    for (std::size_t i = 0; i < n_; ++i) {
      EXPECT_TRUE(pe_store_->write(idOf(i), payloads_[i]).isOk());
      EXPECT_TRUE(de_store_->write(idOf(i), payloads_[i]).isOk());
    }
    pe_pool_ =
        std::move(BufferPool::create(
                      {.name = "pe-buffer", .slot_bytes = model_.fullBlockBytes(), .slots = 2 * n_})
                      .value());
    de_pool_ =
        std::move(BufferPool::create(
                      {.name = "de-buffer", .slot_bytes = model_.fullBlockBytes(), .slots = n_})
                      .value());
    device_.assign(n_ * model_.fullBlockBytes(), kUntouched);
    copy_ = std::move(makeHostCopyEngine({.lookahead = 2}).value());
    auto server = RelayServer::create(std::move(net_.de), *de_store_, *de_pool_, model_);
    EXPECT_TRUE(server.hasValue()) << server.status().toString();
    if (server) server_ = std::move(server).value();
    auto client = RelayClient::create(std::move(net_.pe), *pe_pool_, model_);
    EXPECT_TRUE(client.hasValue()) << client.status().toString();
    if (client) client_ = std::move(client).value();
    auto loader = PrefillLoader::create(
        PrefillLoaderParts{
            .store = *pe_store_, .pool = *pe_pool_, .relay = client_.get(), .copy_engine = *copy_},
        model_);
    EXPECT_TRUE(loader.hasValue()) << loader.status().toString();
    if (loader) loader_ = std::move(loader).value();
  }

  bool ready() const { return server_ && client_ && loader_; }

  PrefillLoad load(std::uint64_t id, scheduler::ReadPlan plan,
                   std::chrono::milliseconds budget = std::chrono::seconds(10)) {
    PrefillLoad load{.request_id = id,
                     .blocks = {},
                     .plan = plan,
                     .device_blocks = {},
                     .deadline = Clock::now() + budget};
    for (std::size_t i = 0; i < n_; ++i) {
      load.blocks.push_back(idOf(i));
      load.device_blocks.push_back(device_.data() + i * model_.fullBlockBytes());
    }
    return load;
  }

  // The loader thread's part (and the DE's), until the terminal state.
  bool runToEnd() {
    return pollUntil([&] {
      if (server_) {
        EXPECT_TRUE(server_->poll().isOk());
      }
      EXPECT_TRUE(loader_->poll().isOk());
      return loader_->done();
    });
  }

  // The compute thread's part: every layer of the copy, then finish.
  void computeSide() {
    if (!loader_->result().copy_started) return;
    const auto deadline = CopyClock::now() + std::chrono::seconds(10);
    for (std::uint32_t l = 0; l < model_.layers; ++l) {
      Status s = copy_->waitForLayer(l, deadline);
      EXPECT_TRUE(s.isOk()) << s.toString();
    }
    Status s = copy_->finish(deadline);
    EXPECT_TRUE(s.isOk()) << s.toString();
  }

  std::span<const std::byte> deviceBlock(std::size_t b) const {
    return std::span<const std::byte>(device_).subspan(b * model_.fullBlockBytes(),
                                                       model_.fullBlockBytes());
  }

  // Blocks [0, copied) hold their payload, layer by layer; the rest is untouched.
  void expectDevice(std::size_t copied) const {
    for (std::size_t b = 0; b < n_; ++b) {
      const std::span<const std::byte> device = deviceBlock(b);
      for (std::uint32_t l = 0; l < model_.layers; ++l) {
        const ByteRange r = layerBlockRange(model_, l);
        if (b < copied) {
          EXPECT_EQ(std::memcmp(device.data() + r.offset, payloads_[b].data() + r.offset, r.size),
                    0)
              << "block " << b << " layer " << l << " differs from the stored payload";
        } else {
          EXPECT_TRUE(std::all_of(device.begin() + static_cast<std::ptrdiff_t>(r.offset),
                                  device.begin() + static_cast<std::ptrdiff_t>(r.offset + r.size),
                                  [](std::byte x) { return x == kUntouched; }))
              << "block " << b << " layer " << l << " was written to the device";
        }
      }
    }
  }

  ModelSpec model_;
  std::size_t n_;
  testing::KvConnection net_;
  std::vector<std::vector<std::byte>> payloads_;
  std::unique_ptr<MemoryBlockStore> pe_store_;
  std::unique_ptr<MemoryBlockStore> de_store_;
  std::unique_ptr<BufferPool> pe_pool_;
  std::unique_ptr<BufferPool> de_pool_;
  std::vector<std::byte> device_;
  std::unique_ptr<LayerCopyEngine> copy_;
  // After the pools, stores and copy engine: destroyed before them.
  std::unique_ptr<RelayServer> server_;
  std::unique_ptr<RelayClient> client_;
  std::unique_ptr<PrefillLoader> loader_;
};

void expectCounters(const PrefillLoadCounters& c, std::uint32_t pe, std::uint32_t de,
                    std::uint32_t fallback, std::uint32_t failed) {
  EXPECT_EQ(c.pe_path, pe);
  EXPECT_EQ(c.de_path, de);
  EXPECT_EQ(c.fallback, fallback);
  EXPECT_EQ(c.failed, failed);
}

TEST(PrefillLoader, PePathOnly) {
  PrefillHarness h(testing::tinyModel(), 5);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_->start(h.load(1, {.de_path_blocks = 0, .pe_path_blocks = 5})).isOk());
  // No relay: the loader thread can simply run() to the end.
  ASSERT_TRUE(h.loader_->run(Clock::now() + std::chrono::seconds(10)).isOk());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  EXPECT_TRUE(r.failed_blocks.empty());
  EXPECT_EQ(r.copied_blocks, 5u);
  EXPECT_EQ(r.recompute_from_token, 5u * h.model_.block_tokens);
  EXPECT_TRUE(r.copy_started);
  expectCounters(r.counters, 5, 0, 0, 0);
  h.computeSide();
  h.expectDevice(5);
  EXPECT_EQ(h.pe_store_->counters().reads_ok, 5u);
  EXPECT_EQ(h.de_store_->counters().reads_ok, 0u);
  EXPECT_EQ(h.server_->counters().requests, 0u);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

TEST(PrefillLoader, DePathOnlyHandsEachLayerOutAsItLands) {
  // 64 layers: the DE keeps at most 32 puts in flight, so the relay is still
  // going when its first layers land.
  PrefillHarness h(testing::deepTinyModel(), 4);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_->start(h.load(2, {.de_path_blocks = 4, .pe_path_blocks = 0})).isOk());
  EXPECT_FALSE(h.loader_->copyStarted()) << "nothing has landed yet";
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    EXPECT_TRUE(h.loader_->poll().isOk());
    return h.loader_->copyStarted();
  }));
  EXPECT_FALSE(h.loader_->done()) << "the copy starts with the first layer, not the last";
  EXPECT_LT(h.server_->counters().layers_landed, h.model_.layers);
  // The compute thread may start now; the first layer is there.
  EXPECT_TRUE(h.copy_->waitForLayer(0, CopyClock::now() + std::chrono::seconds(10)).isOk());
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  expectCounters(r.counters, 0, 4, 0, 0);
  h.computeSide();
  h.expectDevice(4);
  EXPECT_EQ(h.pe_store_->counters().reads_ok, 0u);
  EXPECT_EQ(h.de_store_->counters().reads_ok, 4u);
  EXPECT_EQ(h.server_->counters().relays_done, 1u);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  EXPECT_TRUE(h.loader_->quiet());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

TEST(PrefillLoader, ASplitLoadsSomeBlocksEachWay) {
  PrefillHarness h(testing::tinyModel(), 6);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_->start(h.load(3, {.de_path_blocks = 2, .pe_path_blocks = 4})).isOk());
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  expectCounters(r.counters, 4, 2, 0, 0);
  h.computeSide();
  h.expectDevice(6);
  EXPECT_EQ(h.pe_store_->counters().reads_ok, 4u);
  EXPECT_EQ(h.de_store_->counters().reads_ok, 2u);
  ASSERT_TRUE(h.loader_->endLoad().isOk());

  // The loader takes the next load at once.
  std::fill(h.device_.begin(), h.device_.end(), kUntouched);
  ASSERT_TRUE(h.loader_->start(h.load(4, {.de_path_blocks = 3, .pe_path_blocks = 3})).isOk());
  ASSERT_TRUE(h.runToEnd());
  EXPECT_EQ(h.loader_->result().state, PrefillLoadState::ok);
  expectCounters(h.loader_->result().counters, 3, 3, 0, 0);
  h.computeSide();
  h.expectDevice(6);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, AMixedLoadHandsRelayedLayersOutWhileTheRelayIsStillGoing) {
  // 64 layers: the DE keeps at most 32 puts in flight, so the relay is still
  // going when its first layers land. The PE-path block is read at once; the
  // relayed layers then go to the copy engine as they land rather than when
  // the relay is done.
  PrefillHarness h(testing::deepTinyModel(), 4);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_->start(h.load(21, {.de_path_blocks = 3, .pe_path_blocks = 1})).isOk());
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    EXPECT_TRUE(h.loader_->poll().isOk());
    return h.loader_->copyStarted();
  }));
  EXPECT_FALSE(h.loader_->done()) << "the copy starts with the first relayed layer, not the last";
  EXPECT_LT(h.server_->counters().layers_landed, h.model_.layers);
  EXPECT_EQ(h.server_->counters().relays_done, 0u);
  EXPECT_TRUE(h.copy_->waitForLayer(0, CopyClock::now() + std::chrono::seconds(10)).isOk());
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  expectCounters(r.counters, 1, 3, 0, 0);
  h.computeSide();
  h.expectDevice(4);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, APePathReadStillPendingAtTheDeadlineEndsAtOnce) {
  // The PE node's emulated storage NIC delivers the second block only after
  // 100 s; poll() never waits for it, and at the deadline it ends as timeout.
  PrefillHarness h(testing::tinyModel(), 2);
  ASSERT_TRUE(h.ready());
  auto limiter = StorageRateLimiter::create(41.0, h.model_.fullBlockBytes()).value();
  h.pe_store_->emulateStorageNic(limiter.get());
  ASSERT_TRUE(h.loader_
                  ->start(h.load(22, {.de_path_blocks = 0, .pe_path_blocks = 2},
                                 std::chrono::milliseconds(300)))
                  .isOk());
  const auto started = Clock::now();
  ASSERT_TRUE(h.runToEnd());
  EXPECT_LT(Clock::now() - started, std::chrono::seconds(5)) << "bounded by the deadline";
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::partial) << r.status.toString();
  EXPECT_EQ(r.status.code(), StatusCode::timeout);
  // Block 0 was delivered at once; whether the store reaped it before the
  // deadline depends on the store, block 1 cannot have been.
  EXPECT_THAT(r.status.message(), HasSubstr("request 22: "));
  ASSERT_FALSE(r.failed_blocks.empty());
  EXPECT_EQ(r.failed_blocks.back(), idOf(1));
  EXPECT_LE(r.copied_blocks, 1u);
  EXPECT_EQ(r.recompute_from_token, r.copied_blocks * h.model_.block_tokens);
  h.computeSide();
  h.expectDevice(r.copied_blocks);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

TEST(PrefillLoader, TwoLoadersShareOneRelayClient) {
  // One PE engine with two loads in flight: each loader has its own copy
  // engine and device buffer, both share the store, the PE buffer and the
  // relay connection, and each takes only its own relay's events.
  PrefillHarness h(testing::deepTinyModel(), 4);
  ASSERT_TRUE(h.ready());
  std::vector<std::byte> second_device(2 * h.model_.fullBlockBytes(), kUntouched);
  auto second_copy = makeHostCopyEngine({.lookahead = 2}).value();
  auto second = PrefillLoader::create(PrefillLoaderParts{.store = *h.pe_store_,
                                                         .pool = *h.pe_pool_,
                                                         .relay = h.client_.get(),
                                                         .copy_engine = *second_copy},
                                      h.model_)
                    .value();
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  PrefillLoad first_load{.request_id = 31,
                         .blocks = {idOf(0), idOf(1)},
                         .plan = {.de_path_blocks = 2, .pe_path_blocks = 0},
                         .device_blocks = {h.device_.data(),
                                           h.device_.data() + h.model_.fullBlockBytes()},
                         .deadline = deadline};
  PrefillLoad second_load{.request_id = 32,
                          .blocks = {idOf(2), idOf(3)},
                          .plan = {.de_path_blocks = 1, .pe_path_blocks = 1},
                          .device_blocks = {second_device.data(),
                                            second_device.data() + h.model_.fullBlockBytes()},
                          .deadline = deadline};
  ASSERT_TRUE(h.loader_->start(std::move(first_load)).isOk());
  ASSERT_TRUE(second->start(std::move(second_load)).isOk());
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    if (!h.loader_->done()) {
      EXPECT_TRUE(h.loader_->poll().isOk());
    }
    if (!second->done()) {
      EXPECT_TRUE(second->poll().isOk());
    }
    return h.loader_->done() && second->done();
  }));
  EXPECT_EQ(h.loader_->result().state, PrefillLoadState::ok) << h.loader_->result().status.toString();
  EXPECT_EQ(second->result().state, PrefillLoadState::ok) << second->result().status.toString();
  expectCounters(h.loader_->result().counters, 0, 2, 0, 0);
  expectCounters(second->result().counters, 1, 1, 0, 0);
  const auto copy_deadline = CopyClock::now() + std::chrono::seconds(10);
  for (LayerCopyEngine* copy : {h.copy_.get(), second_copy.get()}) {
    for (std::uint32_t l = 0; l < h.model_.layers; ++l) {
      EXPECT_TRUE(copy->waitForLayer(l, copy_deadline).isOk());
    }
    EXPECT_TRUE(copy->finish(copy_deadline).isOk());
  }
  for (std::size_t b = 0; b < 4; ++b) {
    const std::byte* device = b < 2 ? h.device_.data() + b * h.model_.fullBlockBytes()
                                    : second_device.data() + (b - 2) * h.model_.fullBlockBytes();
    EXPECT_EQ(std::memcmp(device, h.payloads_[b].data(), h.model_.fullBlockBytes()), 0)
        << "block " << b;
  }
  EXPECT_EQ(h.server_->counters().relays_done, 2u);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  ASSERT_TRUE(second->endLoad().isOk());
  second.reset();
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

TEST(PrefillLoader, ABlockMissingOnTheDeIsReadOnThePePath) {
  PrefillHarness h(testing::tinyModel(), 6);
  ASSERT_TRUE(h.ready());
  h.de_store_->erase(idOf(1));
  ASSERT_TRUE(h.loader_->start(h.load(5, {.de_path_blocks = 4, .pe_path_blocks = 2})).isOk());
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  EXPECT_TRUE(r.failed_blocks.empty());
  expectCounters(r.counters, 2, 3, 1, 0);
  h.computeSide();
  h.expectDevice(6);
  EXPECT_EQ(h.pe_store_->counters().reads_ok, 3u) << "2 planned + 1 fallback";
  EXPECT_EQ(h.de_store_->counters().reads_failed, 1u);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, ABlockTheDeCannotReadIsReadOnThePePathWhileTheRelayGoesOn) {
  // 64 layers: the relay of the other blocks takes many server steps, and
  // the fallback read goes out as soon as block_failed arrives (before any
  // layer), not once the relay is done.
  PrefillHarness h(testing::deepTinyModel(), 4);
  ASSERT_TRUE(h.ready());
  h.de_store_->erase(idOf(1));
  ASSERT_TRUE(h.loader_->start(h.load(23, {.de_path_blocks = 4, .pe_path_blocks = 0})).isOk());
  bool relay_done_when_read = true;
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    EXPECT_TRUE(h.loader_->poll().isOk());
    if (h.pe_store_->counters().reads_ok == 0) return false;
    relay_done_when_read = h.server_->counters().relays_done > 0;
    return true;
  }));
  EXPECT_FALSE(relay_done_when_read) << "the fallback read waited for the relay";
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  expectCounters(r.counters, 0, 3, 1, 0);
  h.computeSide();
  h.expectDevice(4);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, ABlockMissingOnBothPathsEndsPartialAndNothingFromItOnIsCopied) {
  PrefillHarness h(testing::tinyModel(), 6);
  ASSERT_TRUE(h.ready());
  h.de_store_->erase(idOf(2));
  h.pe_store_->erase(idOf(2));
  ASSERT_TRUE(h.loader_->start(h.load(6, {.de_path_blocks = 3, .pe_path_blocks = 3})).isOk());
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  ASSERT_EQ(r.state, PrefillLoadState::partial);
  EXPECT_EQ(r.failed_blocks, (std::vector<BlockId>{idOf(2)}));
  EXPECT_EQ(r.copied_blocks, 2u);
  EXPECT_EQ(r.recompute_from_token, 2u * h.model_.block_tokens);
  EXPECT_EQ(r.status.code(), StatusCode::not_found);
  EXPECT_THAT(r.status.message(),
              HasSubstr("request 6: 1 of 6 blocks failed (" + idOf(2).toHex() +
                        "); recompute from token 32: request 6: block " + idOf(2).toHex()));
  expectCounters(r.counters, 3, 2, 0, 1);
  h.computeSide();
  h.expectDevice(2);  // blocks 3..5 were read fine, but the prefix ends at 2
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

TEST(PrefillLoader, ACorruptBlockOnThePePathIsNeverCopied) {
  PrefillHarness h(testing::tinyModel(), 6);
  ASSERT_TRUE(h.ready());
  std::span<std::byte> stored = h.pe_store_->mutableStoredBytes(idOf(4));
  ASSERT_FALSE(stored.empty());
  stored[kBlockHeaderBytes + 100] ^= std::byte{0xff};
  ASSERT_TRUE(h.loader_->start(h.load(7, {.de_path_blocks = 2, .pe_path_blocks = 4})).isOk());
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  ASSERT_EQ(r.state, PrefillLoadState::partial);
  EXPECT_EQ(r.status.code(), StatusCode::corrupt);
  EXPECT_THAT(r.status.message(), HasSubstr(idOf(4).toHex()));
  EXPECT_EQ(r.failed_blocks, (std::vector<BlockId>{idOf(4)}));
  EXPECT_EQ(r.copied_blocks, 4u);
  EXPECT_EQ(r.recompute_from_token, 4u * h.model_.block_tokens);
  expectCounters(r.counters, 3, 2, 0, 1);
  h.computeSide();
  h.expectDevice(4);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, ADeThatGoesAwayMidLoadFallsBackToThePePath) {
  constexpr std::size_t kBlocks = 4;
  PrefillHarness h(testing::deepTinyModel(), kBlocks, /*timeout_ms=*/300);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_->start(h.load(8, {.de_path_blocks = kBlocks, .pe_path_blocks = 0})).isOk());
  // The DE serves until the loader handed a layer to the copy engine; then
  // it goes. It keeps at most 32 puts (8 of 64 layers) in flight and only
  // progresses in poll(): mid-relay by construction.
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    EXPECT_TRUE(h.loader_->poll().isOk());
    return h.loader_->copyStarted();
  }));
  ASSERT_LT(h.server_->counters().layers_landed, h.model_.layers);
  const std::uint64_t announced = h.copy_->counters().layers_issued;
  dualpath::testing::LogCapture capture;
  h.server_.reset();
  h.net_.de_engine.reset();
  const auto started = Clock::now();
  ASSERT_TRUE(h.runToEnd());
  EXPECT_LT(Clock::now() - started, std::chrono::seconds(5));
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::ok) << r.status.toString();
  expectCounters(r.counters, 0, 0, kBlocks, 0);
  EXPECT_LE(announced, h.model_.layers);
  h.computeSide();
  h.expectDevice(kBlocks);
  EXPECT_EQ(h.pe_store_->counters().reads_ok, kBlocks);
  EXPECT_THAT(capture.lines(),
              ::testing::Contains(HasSubstr("prefill loader: request 8: the relay failed after")));
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots()) << "scratch slots went back too";
}

TEST(PrefillLoader, AFallbackThatFailsAfterLayersWereHandedOutFailsTheLoad) {
  constexpr std::size_t kBlocks = 4;
  PrefillHarness h(testing::deepTinyModel(), kBlocks, /*timeout_ms=*/300);
  ASSERT_TRUE(h.ready());
  h.pe_store_->erase(idOf(2));
  ASSERT_TRUE(
      h.loader_->start(h.load(14, {.de_path_blocks = kBlocks, .pe_path_blocks = 0})).isOk());
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    EXPECT_TRUE(h.loader_->poll().isOk());
    return h.loader_->copyStarted();
  }));
  dualpath::testing::LogCapture capture;
  h.server_.reset();
  h.net_.de_engine.reset();
  ASSERT_TRUE(h.runToEnd());
  const PrefillLoadResult& r = h.loader_->result();
  ASSERT_EQ(r.state, PrefillLoadState::failed);
  EXPECT_EQ(r.status.code(), StatusCode::not_found);
  EXPECT_THAT(r.status.message(), HasSubstr("request 14: block " + idOf(2).toHex() +
                                            " (index 2) failed after layers 0 to "));
  EXPECT_THAT(r.status.message(),
              HasSubstr("of the copy were handed out; the copy cannot complete"));
  EXPECT_TRUE(r.copy_started);
  EXPECT_EQ(r.recompute_from_token, 0u);
  EXPECT_THAT(capture.lines(),
              ::testing::Contains(HasSubstr("prefill loader: request 14: the relay failed after")));
  // The compute thread ends the copy; only verified layers reached the device.
  EXPECT_EQ(h.copy_->finish(CopyClock::now()).code(), StatusCode::timeout);
  for (std::size_t b = 0; b < kBlocks; ++b) {
    const std::span<const std::byte> device = h.deviceBlock(b);
    for (std::uint32_t l = 0; l < h.model_.layers; ++l) {
      const ByteRange range = layerBlockRange(h.model_, l);
      const bool payload = std::memcmp(device.data() + range.offset,
                                       h.payloads_[b].data() + range.offset, range.size) == 0;
      const bool untouched =
          std::all_of(device.begin() + static_cast<std::ptrdiff_t>(range.offset),
                      device.begin() + static_cast<std::ptrdiff_t>(range.offset + range.size),
                      [](std::byte x) { return x == kUntouched; });
      EXPECT_TRUE(payload || untouched) << "block " << b << " layer " << l;
    }
  }
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

TEST(PrefillLoader, AFullPeBufferIsBackPressureBeforeAnythingStarts) {
  PrefillHarness h(testing::tinyModel(), 3);
  ASSERT_TRUE(h.ready());
  std::vector<BufferLease> taken;
  while (h.pe_pool_->available() > 2) taken.push_back(std::move(h.pe_pool_->acquire().value()));
  Status s = h.loader_->start(h.load(9, {.de_path_blocks = 1, .pe_path_blocks = 2}));
  EXPECT_EQ(s.code(), StatusCode::again) << s.toString();
  EXPECT_THAT(s.message(), HasSubstr("prefill loader: request 9 (3 blocks): "));
  EXPECT_THAT(s.message(), HasSubstr("pe-buffer"));
  EXPECT_EQ(h.pe_pool_->available(), 2u) << "the slots taken so far went back";
  EXPECT_EQ(h.client_->relaysInFlight(), 0u);
  EXPECT_EQ(h.pe_store_->counters().reads_ok + h.pe_store_->counters().reads_failed, 0u);
  EXPECT_FALSE(h.loader_->done());
  EXPECT_EQ(h.loader_->poll().code(), StatusCode::invalid_usage) << "no load was taken";

  // Once slots are free the same load goes through.
  taken.clear();
  ASSERT_TRUE(h.loader_->start(h.load(9, {.de_path_blocks = 1, .pe_path_blocks = 2})).isOk());
  ASSERT_TRUE(h.runToEnd());
  EXPECT_EQ(h.loader_->result().state, PrefillLoadState::ok);
  h.computeSide();
  h.expectDevice(3);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, ADeadlineAlreadyPastFailsAtOnce) {
  PrefillHarness h(testing::tinyModel(), 3);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_
                  ->start(h.load(10, {.de_path_blocks = 1, .pe_path_blocks = 2},
                                 std::chrono::milliseconds(-1)))
                  .isOk());
  ASSERT_TRUE(h.loader_->done());
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::failed);
  EXPECT_EQ(r.status.code(), StatusCode::timeout);
  EXPECT_EQ(r.status.message(), "request 10: the deadline passed before the load started");
  EXPECT_FALSE(r.copy_started);
  EXPECT_EQ(r.recompute_from_token, 0u);
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
  EXPECT_EQ(h.client_->relaysInFlight(), 0u);
  EXPECT_EQ(h.pe_store_->counters().reads_ok + h.pe_store_->counters().reads_failed, 0u);
  h.expectDevice(0);
  EXPECT_EQ(h.loader_->start(h.load(11, {.de_path_blocks = 0, .pe_path_blocks = 3})).code(),
            StatusCode::invalid_usage)
      << "held until endLoad()";
  ASSERT_TRUE(h.loader_->endLoad().isOk());
}

TEST(PrefillLoader, ADeadlineThatPassesMidLoadFailsAndTheRelayIsDrained) {
  PrefillHarness h(testing::tinyModel(), 3);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.loader_
                  ->start(h.load(15, {.de_path_blocks = 3, .pe_path_blocks = 0},
                                 std::chrono::milliseconds(100)))
                  .isOk());
  // The DE does not serve: the load's deadline passes first.
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.loader_->poll().isOk());
    return h.loader_->done();
  }));
  const PrefillLoadResult& r = h.loader_->result();
  EXPECT_EQ(r.state, PrefillLoadState::failed);
  EXPECT_EQ(r.status.code(), StatusCode::timeout);
  EXPECT_EQ(r.status.message(), "request 15: the deadline passed with 0 of 3 blocks loaded");
  EXPECT_FALSE(r.copy_started);
  ASSERT_TRUE(h.loader_->endLoad().isOk());
  // The relay is still ending (cancelled, waiting for the DE's word): its
  // slots stay lent until it has.
  EXPECT_FALSE(h.loader_->quiet());
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots() - 3);
  ASSERT_TRUE(pollUntil([&] {
    EXPECT_TRUE(h.server_->poll().isOk());
    EXPECT_TRUE(h.loader_->poll().isOk());
    return h.loader_->quiet();
  }));
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
  h.expectDevice(0);
}

TEST(PrefillLoader, MalformedLoadsAreRefusedNamingTheRequest) {
  PrefillHarness h(testing::tinyModel(), 3);
  ASSERT_TRUE(h.ready());
  PrefillLoad bad_plan = h.load(12, {.de_path_blocks = 1, .pe_path_blocks = 1});
  Status s = h.loader_->start(bad_plan);
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_EQ(s.message(),
            "prefill loader: request 12: the read plan covers 2 blocks (1 DE path, 1 PE path), "
            "the prefix has 3");
  PrefillLoad null_device = h.load(13, {.de_path_blocks = 0, .pe_path_blocks = 3});
  null_device.device_blocks[1] = nullptr;
  s = h.loader_->start(null_device);
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_THAT(s.message(), HasSubstr("block " + idOf(1).toHex() + " (index 1)"));
  EXPECT_EQ(h.pe_pool_->available(), h.pe_pool_->slots());
}

}  // namespace
}  // namespace dualpath::loader
