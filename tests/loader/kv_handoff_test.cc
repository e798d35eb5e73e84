// The KV handoff and write-back (kv_handoff.h): a HandoffSender on a PE
// engine and a HandoffReceiver on a DE engine over UCX tcp on loopback, in one
// process. Bytes end to end (PE buffer -> DE buffer -> storage), layers put
// only once saved, checksums that catch a PE buffer changed after its put,
// write-back failures, deadlines and back-pressure. Also the handoff's wire
// messages (relay_protocol.h) and missTokenHandoff().
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <dualpath/loader/block_format.h>
#include <dualpath/loader/kv_handoff.h>
#include <dualpath/loader/layer_copy.h>
#include <dualpath/loader/memory_block_store.h>
#include <dualpath/loader/posix_block_store.h>

#include "log_capture.h"
#include "relay_protocol.h"
#include "relay_test_support.h"
#include "transport_test_util.h"

namespace dualpath::loader {
namespace {

using dualpath::testing::pollUntil;
using testing::KvConnection;
using testing::tinyModel;

std::vector<std::byte> bytesOf(std::string_view text) {
  std::vector<std::byte> out;
  for (char c : text) out.push_back(static_cast<std::byte>(c));
  return out;
}

// ------------------------------------------------------------ the wire format

TEST(KvHandoffProtocol, MessagesRoundTrip) {
  relay::HandoffOfferMessage offer{.request_id = 7,
                                   .layers = 4,
                                   .block_tokens = 16,
                                   .kv_bytes_per_token_per_layer = 64,
                                   .budget_ms = 1500,
                                   .first_token = 32,
                                   .blocks = {{BlockId{1, 2}, 16, true}, {BlockId{}, 5, false}}};
  std::vector<std::byte> bytes;
  ASSERT_TRUE(relay::encode(offer, bytes).isOk());
  EXPECT_EQ(bytes.size(), relay::kHandoffOfferFixedBytes + 2 * relay::kHandoffOfferBlockBytes);
  Result<relay::HandoffOfferMessage> o = relay::decodeHandoffOffer(bytes);
  ASSERT_TRUE(o.hasValue()) << o.status().toString();
  EXPECT_EQ(o->request_id, 7u);
  EXPECT_EQ(o->budget_ms, 1500u);
  EXPECT_EQ(o->first_token, 32u);
  ASSERT_EQ(o->blocks.size(), 2u);
  EXPECT_EQ(o->blocks[0].id, (BlockId{1, 2}));
  EXPECT_TRUE(o->blocks[0].write_back);
  EXPECT_EQ(o->blocks[1].tokens, 5u);
  EXPECT_FALSE(o->blocks[1].write_back);

  relay::HandoffReadyMessage ready{.request_id = 7,
                                   .region_base = 0x1000,
                                   .region_length = 8192,
                                   .remote_key = bytesOf("key"),
                                   .slot_offsets = {4096, 0}};
  ASSERT_TRUE(relay::encode(ready, bytes).isOk());
  Result<relay::HandoffReadyMessage> r = relay::decodeHandoffReady(bytes);
  ASSERT_TRUE(r.hasValue()) << r.status().toString();
  EXPECT_EQ(r->region_base, 0x1000u);
  EXPECT_EQ(r->remote_key, bytesOf("key"));
  EXPECT_EQ(r->slot_offsets, (std::vector<std::uint64_t>{4096, 0}));

  relay::HandoffEndMessage end{.request_id = 7, .layers = 4, .checksums = {11, 22}};
  ASSERT_TRUE(relay::encode(end, bytes).isOk());
  Result<relay::HandoffEndMessage> e = relay::decodeHandoffEnd(bytes);
  ASSERT_TRUE(e.hasValue()) << e.status().toString();
  EXPECT_EQ(e->layers, 4u);
  EXPECT_EQ(e->checksums, (std::vector<std::uint64_t>{11, 22}));
}

// An offer as the wire carries it, with `mutate` applied to the message.
std::string offerError(const std::function<void(relay::HandoffOfferMessage&)>& mutate) {
  relay::HandoffOfferMessage offer{.request_id = 1,
                                   .layers = 4,
                                   .block_tokens = 16,
                                   .kv_bytes_per_token_per_layer = 64,
                                   .budget_ms = 100,
                                   .first_token = 0,
                                   .blocks = {{BlockId{1, 1}, 16, true}, {BlockId{1, 2}, 16, true}}};
  mutate(offer);
  std::vector<std::byte> bytes;
  EXPECT_TRUE(relay::encode(offer, bytes).isOk());
  Result<relay::HandoffOfferMessage> decoded = relay::decodeHandoffOffer(bytes);
  return decoded ? "decoded" : decoded.status().message();
}

TEST(KvHandoffProtocol, OffersThatBreakTheWireRulesAreRefusedNamingTheField) {
  EXPECT_EQ(offerError([](auto& m) { m.blocks[0].tokens = 3; }),
            "relay handoff_offer message: block 0: tokens: 3, expected 16");
  EXPECT_EQ(offerError([](auto& m) { m.blocks[1].tokens = 17; }),
            "relay handoff_offer message: block 1: tokens: 17, expected 1 to 16");
  EXPECT_EQ(offerError([](auto& m) { m.blocks[1].tokens = 5; }),
            "relay handoff_offer message: block 1: flags: write back on a partial block (5 of "
            "16 tokens)");
  EXPECT_EQ(offerError([](auto& m) { m.first_token = 8; }),
            "relay handoff_offer message: first token: 8 is not a multiple of 16 block tokens");
  // A flag the format does not define, patched into the encoded bytes.
  relay::HandoffOfferMessage offer{.request_id = 1,
                                   .layers = 4,
                                   .block_tokens = 16,
                                   .kv_bytes_per_token_per_layer = 64,
                                   .budget_ms = 100,
                                   .first_token = 0,
                                   .blocks = {{BlockId{1, 1}, 16, true}}};
  std::vector<std::byte> bytes;
  ASSERT_TRUE(relay::encode(offer, bytes).isOk());
  bytes[relay::kHandoffOfferFixedBytes + 20] = std::byte{0x3};
  EXPECT_EQ(relay::decodeHandoffOffer(bytes).status().message(),
            "relay handoff_offer message: block 0: flags: 0x3 has unknown bits");
  // A truncated end message.
  relay::HandoffEndMessage end{.request_id = 1, .layers = 4, .checksums = {1, 2}};
  ASSERT_TRUE(relay::encode(end, bytes).isOk());
  bytes.resize(bytes.size() - 8);
  bytes[4] = static_cast<std::byte>(bytes.size());
  EXPECT_EQ(relay::decodeHandoffEnd(bytes).status().message(),
            "relay handoff_end message: length: 8 B of blocks, expected 16 B for 2 blocks");
}

// ------------------------------------------------------------ missTokenHandoff

TEST(KvHandoff, MissTokenHandoffCoversTheBlocksAfterTheCachedPrefix) {
  const ModelSpec model = tinyModel();  // 16 tokens per block
  std::vector<TokenId> tokens(16 * 3 + 5);
  std::iota(tokens.begin(), tokens.end(), TokenId{100});
  const std::vector<BlockId> ids = blockIds(tokens, model.block_tokens);
  ASSERT_EQ(ids.size(), 3u);
  const std::vector<std::uint64_t> offsets = {8192, 0, 4096};
  const Deadline deadline = Clock::now() + std::chrono::seconds(1);
  Result<HandoffRequest> request = missTokenHandoff(9, tokens, 16, model, offsets, deadline);
  ASSERT_TRUE(request.hasValue()) << request.status().toString();
  EXPECT_EQ(request->request_id, 9u);
  EXPECT_EQ(request->first_token, 16u);
  ASSERT_EQ(request->blocks.size(), 3u);
  EXPECT_EQ(request->blocks[0].id, ids[1]);
  EXPECT_EQ(request->blocks[1].id, ids[2]);
  EXPECT_EQ(request->blocks[2].id, BlockId{});
  EXPECT_EQ(request->blocks[0].tokens, 16u);
  EXPECT_EQ(request->blocks[2].tokens, 5u);
  EXPECT_TRUE(request->blocks[0].write_back);
  EXPECT_TRUE(request->blocks[1].write_back);
  EXPECT_FALSE(request->blocks[2].write_back);
  EXPECT_EQ(request->blocks[0].source_offset, 8192u);
  EXPECT_EQ(request->blocks[2].source_offset, 4096u);

  EXPECT_EQ(missTokenHandoff(9, tokens, 8, model, offsets, deadline).status().message(),
            "handoff 9: 8 cached tokens is not a multiple of 16 block tokens");
  EXPECT_EQ(missTokenHandoff(9, std::span(tokens).first(48), 48, model, {}, deadline)
                .status()
                .message(),
            "handoff 9: 48 cached tokens of 48: no miss token to hand off");
  EXPECT_EQ(missTokenHandoff(9, tokens, 0, model, offsets, deadline).status().message(),
            "handoff 9: 3 PE buffer offsets for the 4 blocks of tokens [0, 53)");
}

// ------------------------------------------------------------ end to end

// A PE (PE buffer, sender) and a DE (store, DE buffer, receiver) joined by one
// `kv` connection. The PE buffer's slots hold the "saved" KV of the handoff.
class HandoffHarness {
 public:
  explicit HandoffHarness(std::size_t de_slots = 8, ModelSpec de_model = tinyModel(),
                          BlockStore* store = nullptr,
                          std::chrono::milliseconds cancel_grace = std::chrono::seconds(10))
      : model_(tinyModel()) {
    if (!connection_.ready()) return;
    peer_of_de_ = connection_.pe->peerName();
    memory_store_ = std::move(MemoryBlockStore::create(de_model).value());
    store_ = store != nullptr ? store : memory_store_.get();
    pe_pool_ = std::move(BufferPool::create({.name = "pe-buffer",
                                             .slot_bytes = model_.fullBlockBytes(),
                                             .slots = 8})
                             .value());
    de_pool_ = std::move(BufferPool::create({.name = "de-buffer",
                                             .slot_bytes = de_model.fullBlockBytes(),
                                             .slots = de_slots})
                             .value());
    std::mt19937_64 random(777);
    for (std::byte& b : pe_pool_->region()) b = static_cast<std::byte>(random() & 0xff);
    auto sender = HandoffSender::create(std::move(connection_.pe), *pe_pool_, model_);
    EXPECT_TRUE(sender.hasValue()) << sender.status().toString();
    if (sender) sender_ = std::move(sender).value();
    auto receiver = HandoffReceiver::create(std::move(connection_.de), *store_, *de_pool_,
                                            de_model, HandoffReceiverOptions{.cancel_grace = cancel_grace});
    EXPECT_TRUE(receiver.hasValue()) << receiver.status().toString();
    if (receiver) receiver_ = std::move(receiver).value();
  }

  bool ready() const { return sender_ && receiver_; }

  // Blocks `ids` (the last one partial with `tail_tokens` when nonzero), full
  // ones flagged for write-back, each in its own PE slot.
  HandoffRequest request(std::uint64_t id, std::size_t full_blocks, std::uint32_t tail_tokens,
                         std::chrono::milliseconds budget = std::chrono::seconds(20)) {
    HandoffRequest request{.request_id = id,
                           .first_token = 32,
                           .blocks = {},
                           .deadline = Clock::now() + budget};
    const std::size_t n = full_blocks + (tail_tokens != 0 ? 1 : 0);
    for (std::size_t i = 0; i < n; ++i) {
      Result<BufferLease> lease = pe_pool_->acquire();
      if (!lease) {
        ADD_FAILURE() << lease.status().toString();
        break;
      }
      const bool full = i < full_blocks;
      request.blocks.push_back(HandoffBlock{.id = BlockId{.hi = 0xfeed, .lo = id * 100 + i},
                                            .tokens = full ? model_.block_tokens : tail_tokens,
                                            .write_back = full,
                                            .source_offset = lease->offset()});
      leases_.push_back(std::move(lease).value());
    }
    return request;
  }

  std::span<std::byte> peSlot(const HandoffBlock& block) const {
    return pe_pool_->region().subspan(block.source_offset, model_.fullBlockBytes());
  }

  // Polls both sides (the receiver only while `serve`) until `done` or the
  // test deadline.
  bool pollBoth(const std::function<bool()>& done, bool serve = true) {
    return pollUntil([&] {
      if (serve) {
        receiver_status_ = receiver_->poll(arrived_);
      }
      sender_status_ = sender_->poll(ended_);
      return done();
    });
  }

  std::span<const std::byte> layerBytes(std::span<const std::byte> full, std::uint32_t layer,
                                        std::uint32_t tokens) const {
    return full.subspan(std::uint64_t{layer} * model_.layerBlockBytes(),
                        std::uint64_t{tokens} * model_.kv_bytes_per_token_per_layer);
  }

  ModelSpec model_;
  KvConnection connection_;
  std::string peer_of_de_;
  std::unique_ptr<MemoryBlockStore> memory_store_;
  BlockStore* store_ = nullptr;
  std::unique_ptr<BufferPool> pe_pool_;
  std::unique_ptr<BufferPool> de_pool_;
  std::vector<BufferLease> leases_;
  std::vector<HandoffOutcome> ended_;
  std::vector<HandoffArrival> arrived_;
  Status sender_status_;
  Status receiver_status_;
  // Declared last: destroyed before the pools and the store.
  std::unique_ptr<HandoffSender> sender_;
  std::unique_ptr<HandoffReceiver> receiver_;
};

bool equalBytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

TEST(KvHandoff, MissTokenKvLandsInTheDeBufferAndFullBlocksAreWrittenBack) {
  HandoffHarness h;
  ASSERT_TRUE(h.ready());
  HandoffRequest request = h.request(1, 2, 5);  // two full blocks and a 5-token tail
  const std::vector<HandoffBlock> blocks = request.blocks;
  ASSERT_TRUE(h.sender_->start(std::move(request)).isOk());
  ASSERT_TRUE(h.sender_->layersSaved(1, h.model_.layers).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty() && !h.arrived_.empty(); }));
  ASSERT_TRUE(h.sender_status_.isOk()) << h.sender_status_.toString();
  ASSERT_TRUE(h.receiver_status_.isOk()) << h.receiver_status_.toString();

  const HandoffOutcome& outcome = h.ended_[0];
  EXPECT_EQ(outcome.request_id, 1u);
  EXPECT_TRUE(outcome.status.isOk()) << outcome.status.toString();
  EXPECT_EQ(outcome.blocks_written, 2u);
  EXPECT_TRUE(outcome.failed.empty());

  // The DE holds every carried byte, in the Full Block layout.
  const HandoffArrival& arrival = h.arrived_[0];
  EXPECT_EQ(arrival.request_id, 1u);
  EXPECT_EQ(arrival.peer, h.receiver_->peerName());
  EXPECT_EQ(arrival.first_token, 32u);
  ASSERT_EQ(arrival.blocks.size(), 3u);
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const HandoffArrival::Block& landed = arrival.blocks[i];
    EXPECT_EQ(landed.id, blocks[i].id);
    EXPECT_EQ(landed.tokens, blocks[i].tokens);
    EXPECT_EQ(landed.written, blocks[i].write_back);
    for (std::uint32_t l = 0; l < h.model_.layers; ++l) {
      EXPECT_TRUE(equalBytes(h.layerBytes(landed.slot.bytes(), l, landed.tokens),
                             h.layerBytes(h.peSlot(blocks[i]), l, blocks[i].tokens)))
          << "block " << i << " layer " << l;
    }
  }
  // Storage holds the two full blocks, verified on read, byte for byte the PE's.
  ReadBatch batch;
  std::vector<std::vector<std::byte>> read_back(2, std::vector<std::byte>(h.model_.fullBlockBytes()));
  for (std::size_t i = 0; i < 2; ++i) batch.add(blocks[i].id, read_back[i]);
  ASSERT_TRUE(h.store_->read(batch, Clock::now() + std::chrono::seconds(5)).isOk());
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(batch.reads()[i].status.isOk()) << batch.reads()[i].status.toString();
    EXPECT_TRUE(equalBytes(read_back[i], h.peSlot(blocks[i])));
    EXPECT_EQ(payloadChecksum(read_back[i]), payloadChecksum(h.peSlot(blocks[i])));
  }
  EXPECT_FALSE(h.memory_store_->contains(BlockId{}));  // the tail has no id and is not stored

  EXPECT_EQ(h.sender_->counters().handoffs_ok, 1u);
  EXPECT_EQ(h.sender_->counters().bytes_put, h.model_.layers * (2 * 16 + 5) * 64u);
  EXPECT_EQ(h.receiver_->counters().blocks_written, 2u);
  EXPECT_EQ(h.sender_->handoffsInFlight(), 0u);
  // The decode engine owns the slots until it lets them go.
  EXPECT_EQ(h.de_pool_->available(), 8u - 3u);
  h.arrived_.clear();
  EXPECT_EQ(h.de_pool_->available(), 8u);
}

// The inference engine's side: the copy engine's saves fill the PE buffer
// layer by layer during "compute", and each saved layer is handed on while
// later layers compute. What storage holds at the end is what compute wrote.
TEST(KvHandoff, SavesFromTheCopyEngineAreHandedOnLayerByLayerAndWrittenBack) {
  HandoffHarness h;
  ASSERT_TRUE(h.ready());
  const ModelSpec& model = h.model_;
  std::vector<TokenId> tokens(2 * model.block_tokens + 9);  // one cached block, 25 miss tokens
  std::iota(tokens.begin(), tokens.end(), TokenId{7});
  const std::uint64_t hit = model.block_tokens;
  std::vector<BufferLease> slots;
  std::vector<std::uint64_t> offsets;
  for (int i = 0; i < 2; ++i) {
    slots.push_back(std::move(h.pe_pool_->acquire().value()));
    offsets.push_back(slots.back().offset());
  }
  Result<HandoffRequest> request =
      missTokenHandoff(21, tokens, hit, model, offsets, Clock::now() + std::chrono::seconds(20));
  ASSERT_TRUE(request.hasValue()) << request.status().toString();
  const std::vector<HandoffBlock> blocks = request->blocks;
  // "Device memory": the new KV compute produces for the miss tokens, per
  // block in the Full Block layout.
  std::vector<std::vector<std::byte>> device(2, std::vector<std::byte>(model.fullBlockBytes()));
  std::mt19937_64 random(99);
  for (auto& block : device) {
    for (std::byte& b : block) b = static_cast<std::byte>(random() & 0xff);
  }
  // The cached block's load is not what this test is about: one byte a layer.
  std::vector<std::byte> cached(model.layers), loaded(model.layers);
  LayerwiseLoad load{.request_id = 21, .layers = {}, .sources_ready = true};
  for (std::uint32_t l = 0; l < model.layers; ++l) {
    load.layers.push_back({CopySegment{&cached[l], &loaded[l], 1}});
  }
  auto engine = std::move(makeHostCopyEngine().value());
  ASSERT_TRUE(h.sender_->start(std::move(request).value()).isOk());
  ASSERT_TRUE(engine->startLoad(std::move(load)).isOk());
  std::vector<std::uint32_t> saved_seen;
  for (std::uint32_t l = 0; l < model.layers; ++l) {
    ASSERT_TRUE(engine->waitForLayer(l, Clock::now() + std::chrono::seconds(10)).isOk());
    std::vector<CopySegment> saves;
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      const std::uint64_t at = std::uint64_t{l} * model.layerBlockBytes();
      saves.push_back(CopySegment{device[b].data() + at, slots[b].bytes().data() + at,
                                  std::uint64_t{blocks[b].tokens} * model.kv_bytes_per_token_per_layer});
    }
    ASSERT_TRUE(engine->saveLayer(l, std::move(saves)).isOk());
    // The loader thread's part: hand on what is saved, keep both sides moving.
    ASSERT_TRUE(h.sender_->layersSaved(21, engine->layersSaved()).isOk());
    ASSERT_TRUE(h.receiver_->poll(h.arrived_).isOk());
    ASSERT_TRUE(h.sender_->poll(h.ended_).isOk());
    saved_seen.push_back(engine->layersSaved());
  }
  ASSERT_TRUE(engine->finish(Clock::now() + std::chrono::seconds(10)).isOk());
  EXPECT_EQ(engine->layersSaved(), model.layers);
  ASSERT_TRUE(h.sender_->layersSaved(21, engine->layersSaved()).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty() && !h.arrived_.empty(); }));
  EXPECT_TRUE(h.ended_[0].status.isOk()) << h.ended_[0].status.toString();
  EXPECT_EQ(h.ended_[0].blocks_written, 1u);
  EXPECT_TRUE(std::is_sorted(saved_seen.begin(), saved_seen.end()));

  // The full block in storage is compute's KV, verified on read.
  std::vector<std::byte> stored(model.fullBlockBytes());
  ReadBatch batch;
  batch.add(blockIds(tokens, model.block_tokens)[1], stored);
  ASSERT_TRUE(h.store_->read(batch, Clock::now() + std::chrono::seconds(5)).isOk());
  ASSERT_TRUE(batch.reads()[0].status.isOk()) << batch.reads()[0].status.toString();
  EXPECT_TRUE(equalBytes(stored, device[0]));
  // The 9-token tail sits in the DE buffer for decode, its tokens exact.
  const HandoffArrival::Block& tail = h.arrived_[0].blocks[1];
  EXPECT_EQ(tail.tokens, 9u);
  EXPECT_FALSE(tail.written);
  for (std::uint32_t l = 0; l < model.layers; ++l) {
    EXPECT_TRUE(equalBytes(h.layerBytes(tail.slot.bytes(), l, 9), h.layerBytes(device[1], l, 9)))
        << "layer " << l;
  }
}

TEST(KvHandoff, OnlySavedLayersArePutAndTheDeWaitsForTheLast) {
  HandoffHarness h;
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.sender_->start(h.request(2, 2, 0)).isOk());
  const std::uint64_t per_layer = 2 * h.model_.layerBlockBytes();
  ASSERT_TRUE(h.sender_->layersSaved(2, 1).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return h.sender_->counters().bytes_put == per_layer; }));
  ASSERT_TRUE(h.sender_->layersSaved(2, 3).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return h.sender_->counters().bytes_put == 3 * per_layer; }));
  // Three of four layers put: nothing ended, nothing handed to decode.
  EXPECT_TRUE(h.ended_.empty());
  EXPECT_TRUE(h.arrived_.empty());
  EXPECT_EQ(h.sender_->layersSaved(2, 5).message(),
            "handoff 2 to DE " + h.peer_of_de_ + ": layersSaved(5): the model has 4 layers");
  ASSERT_TRUE(h.sender_->layersSaved(2, 4).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty() && !h.arrived_.empty(); }));
  EXPECT_TRUE(h.ended_[0].status.isOk()) << h.ended_[0].status.toString();
  EXPECT_EQ(h.sender_->counters().bytes_put, 4 * per_layer);
}

TEST(KvHandoff, ABlockWhoseBytesChangedAfterTheirPutIsReportedAndNothingIsWritten) {
  HandoffHarness h;
  ASSERT_TRUE(h.ready());
  HandoffRequest request = h.request(3, 2, 0);
  const std::vector<HandoffBlock> blocks = request.blocks;
  ASSERT_TRUE(h.sender_->start(std::move(request)).isOk());
  const std::uint64_t per_layer = 2 * h.model_.layerBlockBytes();
  ASSERT_TRUE(h.sender_->layersSaved(3, 3).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return h.sender_->counters().bytes_put == 3 * per_layer; }));
  // Layer 0 of block 1 changes in the PE buffer after it was put (a save
  // that landed late): what the DE holds is no longer what the PE has.
  h.peSlot(blocks[1])[10] ^= std::byte{0xff};
  ASSERT_TRUE(h.sender_->layersSaved(3, 4).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty(); }));

  const HandoffOutcome& outcome = h.ended_[0];
  EXPECT_EQ(outcome.status.code(), StatusCode::corrupt);
  EXPECT_THAT(outcome.status.message(),
              ::testing::MatchesRegex("handoff 3 from PE .*: block " + blocks[1].id.toHex() +
                                      " \\(index 1\\): the KV that landed has checksum "
                                      "[0-9a-f]{16}, the PE's has [0-9a-f]{16}"));
  ASSERT_EQ(outcome.failed.size(), 1u);
  EXPECT_EQ(outcome.failed[0].index, 1u);
  EXPECT_EQ(outcome.failed[0].id, blocks[1].id);
  EXPECT_EQ(outcome.blocks_written, 0u);
  // Neither block reached storage, nothing went to decode, the slots are free.
  EXPECT_FALSE(h.memory_store_->contains(blocks[0].id));
  EXPECT_FALSE(h.memory_store_->contains(blocks[1].id));
  EXPECT_TRUE(h.arrived_.empty());
  EXPECT_EQ(h.de_pool_->available(), 8u);
  EXPECT_EQ(h.receiver_->counters().blocks_failed, 1u);
}

TEST(KvHandoff, AFailedWriteBackIsReportedAndTheKvStillReachesDecode) {
  const std::filesystem::path root =
      std::filesystem::temp_directory_path() / ("dualpath-handoff-" + std::to_string(::getpid()));
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  auto store = PosixBlockStore::open(root.string(), tinyModel(), PosixBlockStoreOptions{});
  ASSERT_TRUE(store.hasValue()) << store.status().toString();
  // The store's directory goes away under it: every write fails.
  std::filesystem::remove_all(root);

  HandoffHarness h(8, tinyModel(), store->get());
  ASSERT_TRUE(h.ready());
  HandoffRequest request = h.request(4, 1, 7);
  const BlockId full = request.blocks[0].id;
  ASSERT_TRUE(h.sender_->start(std::move(request)).isOk());
  ASSERT_TRUE(h.sender_->layersSaved(4, h.model_.layers).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty() && !h.arrived_.empty(); }));

  const HandoffOutcome& outcome = h.ended_[0];
  EXPECT_EQ(outcome.status.code(), StatusCode::io) << outcome.status.toString();
  EXPECT_THAT(outcome.status.message(),
              ::testing::StartsWith("handoff 4 from PE " + h.receiver_->peerName() + ": block " +
                                    full.toHex() + " (index 0): write-back: writing block " +
                                    full.toHex()));
  ASSERT_EQ(outcome.failed.size(), 1u);
  EXPECT_EQ(outcome.failed[0].id, full);
  EXPECT_EQ(outcome.blocks_written, 0u);
  ASSERT_EQ(h.arrived_[0].blocks.size(), 2u);
  EXPECT_FALSE(h.arrived_[0].blocks[0].written);
  EXPECT_EQ(h.arrived_[0].blocks[1].tokens, 7u);
}

TEST(KvHandoff, APeThatNeverSavesStopsAtItsDeadlineAndTheDeGivesTheSlotsBack) {
  HandoffHarness h;
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.sender_->start(h.request(5, 2, 0, std::chrono::milliseconds(200))).isOk());
  // Wait until the DE offered its slots, then let the deadline pass.
  ASSERT_TRUE(h.pollBoth([&] { return h.de_pool_->available() == 6; }));
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty(); }));
  EXPECT_EQ(h.ended_[0].status.code(), StatusCode::timeout);
  EXPECT_EQ(h.ended_[0].status.message(),
            "handoff 5 to DE " + h.peer_of_de_ +
                ": the deadline passed after 0 of 4 layers were put");
  // The cancel reaches the DE: its slots go back, and its answer is absorbed.
  ASSERT_TRUE(h.pollBoth([&] { return h.de_pool_->available() == 8; }));
  EXPECT_TRUE(h.arrived_.empty());
  EXPECT_EQ(h.sender_->handoffsInFlight(), 0u);
  // The id is free again once the DE answered.
  const HandoffRequest again = h.request(5, 1, 0);
  ASSERT_TRUE(h.pollBoth([&] { return h.sender_->start(again).isOk(); }));
  ASSERT_TRUE(h.sender_status_.isOk()) << h.sender_status_.toString();
  ASSERT_TRUE(h.receiver_status_.isOk()) << h.receiver_status_.toString();
}

TEST(KvHandoff, ADeWhosePeGoesQuietClosesTheConnectionAfterTheGrace) {
  HandoffHarness h(8, tinyModel(), nullptr, std::chrono::milliseconds(100));
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.sender_->start(h.request(11, 2, 0, std::chrono::milliseconds(100))).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return h.de_pool_->available() == 6; }));
  // The PE stops running (no puts, no cancel): only the DE is polled.
  dualpath::testing::LogCapture capture;
  ASSERT_TRUE(pollUntil([&] { return !h.receiver_->poll(h.arrived_).isOk(); }));
  EXPECT_THAT(capture.lines(),
              ::testing::ElementsAre("warn: kv handoff receiver for PE " +
                                     h.receiver_->peerName() + ": handoff 11 from PE " +
                                     h.receiver_->peerName() +
                                     ": no end or cancel from the PE 100 ms after its deadline"));
  const Status closed = h.receiver_->poll(h.arrived_);
  EXPECT_EQ(closed.code(), StatusCode::timeout);
  EXPECT_EQ(closed.message(), "kv handoff receiver for PE " + h.receiver_->peerName() +
                                  ": handoff 11 from PE " + h.receiver_->peerName() +
                                  ": no end or cancel from the PE 100 ms after its deadline");
  // Closed: no late put can land, so the slots are free.
  EXPECT_EQ(h.de_pool_->available(), 8u);
  EXPECT_EQ(h.receiver_->counters().handoffs_failed, 1u);
}

TEST(KvHandoff, AFullDeBufferHoldsTheNextOfferUntilDecodeLetsSlotsGo) {
  HandoffHarness h(2);  // two DE slots
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.sender_->start(h.request(6, 2, 0)).isOk());
  ASSERT_TRUE(h.sender_->start(h.request(7, 2, 0)).isOk());
  ASSERT_TRUE(h.sender_->layersSaved(6, 4).isOk());
  ASSERT_TRUE(h.sender_->layersSaved(7, 4).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return h.arrived_.size() == 1 && h.ended_.size() == 1; }));
  EXPECT_EQ(h.arrived_[0].request_id, 6u);
  // Decode still holds handoff 6's slots: handoff 7 waits, nothing is put.
  const std::uint64_t put = h.sender_->counters().bytes_put;
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(h.receiver_->poll(h.arrived_).isOk());
    ASSERT_TRUE(h.sender_->poll(h.ended_).isOk());
  }
  EXPECT_EQ(h.sender_->counters().bytes_put, put);
  EXPECT_EQ(h.arrived_.size(), 1u);
  h.arrived_.clear();  // decode is done with handoff 6
  ASSERT_TRUE(h.pollBoth([&] { return h.arrived_.size() == 1 && h.ended_.size() == 2; }));
  EXPECT_EQ(h.arrived_[0].request_id, 7u);
  EXPECT_TRUE(h.ended_[1].status.isOk()) << h.ended_[1].status.toString();
}

TEST(KvHandoff, ADeOfAnotherModelRefusesTheOfferNamingBoth) {
  ModelSpec other = tinyModel();
  other.name = "tiny-8-layers";
  other.layers = 8;
  HandoffHarness h(8, other);
  ASSERT_TRUE(h.ready());
  ASSERT_TRUE(h.sender_->start(h.request(8, 1, 0)).isOk());
  ASSERT_TRUE(h.pollBoth([&] { return !h.ended_.empty(); }));
  EXPECT_EQ(h.ended_[0].status.code(), StatusCode::invalid_argument);
  EXPECT_EQ(h.ended_[0].status.message(),
            "handoff 8 from PE " + h.receiver_->peerName() +
                ": the PE's model is 4 layers x 16 tokens x 64 B, this DE holds 'tiny-8-layers' "
                "(8 layers x 16 tokens x 64 B)");
  EXPECT_EQ(h.sender_->handoffsInFlight(), 0u);
}

TEST(KvHandoff, MalformedRequestsAreRefusedBeforeAnythingIsSent) {
  HandoffHarness h;
  ASSERT_TRUE(h.ready());
  const std::string who = "handoff 9 to DE " + h.peer_of_de_;

  HandoffRequest partial_first = h.request(9, 1, 4);
  std::swap(partial_first.blocks[0], partial_first.blocks[1]);
  partial_first.blocks[1].write_back = false;
  EXPECT_EQ(h.sender_->start(partial_first).message(),
            who + ": block " + partial_first.blocks[0].id.toHex() +
                " (index 0): 4 tokens; a block holds 16 and only the last may hold fewer");

  HandoffRequest write_partial = h.request(9, 0, 4);
  write_partial.blocks[0].write_back = true;
  EXPECT_EQ(h.sender_->start(write_partial).message(),
            who + ": block " + write_partial.blocks[0].id.toHex() +
                " (index 0): write back of a partial block (4 of 16 tokens)");

  HandoffRequest overrun = h.request(9, 1, 0);
  overrun.blocks[0].source_offset = h.pe_pool_->region().size() - 100;
  EXPECT_EQ(h.sender_->start(overrun).message(),
            who + ": block " + overrun.blocks[0].id.toHex() + " (index 0): source offset " +
                std::to_string(overrun.blocks[0].source_offset) +
                " + 4096 B overruns the 32768-byte PE buffer 'pe-buffer'");

  HandoffRequest misaligned = h.request(9, 1, 0);
  misaligned.first_token = 3;
  EXPECT_EQ(h.sender_->start(misaligned).message(),
            who + ": first token 3 is not a multiple of 16 block tokens");

  ASSERT_TRUE(h.sender_->start(h.request(9, 1, 0)).isOk());
  EXPECT_EQ(h.sender_->start(h.request(9, 1, 0)).message(),
            who + ": a handoff of that id is in flight");
  EXPECT_EQ(h.sender_->layersSaved(10, 1).message(),
            "handoff 10 to DE " + h.peer_of_de_ + ": layersSaved: no such handoff in flight");
  EXPECT_EQ(h.sender_->counters().handoffs, 1u);
}

}  // namespace
}  // namespace dualpath::loader
