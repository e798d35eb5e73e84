// Checks loader/src/block.cc: block ids (the prefix-hash chain) and the
// Full Block / Layer Block layout.
#include <cstddef>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>

#include <dualpath/loader/block.h>

namespace dualpath::loader {
namespace {

std::vector<TokenId> iota(std::size_t count, TokenId first = 0) {
  std::vector<TokenId> tokens(count);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

TEST(BlockIdTest, SameTokensGiveTheSameIds) {
  const std::vector<TokenId> tokens = iota(200);
  EXPECT_EQ(blockIds(tokens, 64), blockIds(tokens, 64));
  EXPECT_EQ(chainBlockId(rootBlockId(), std::span(tokens).first(64)),
            chainBlockId(rootBlockId(), std::span(tokens).first(64)));
}

TEST(BlockIdTest, EachIdChainsOnItsParent) {
  const std::vector<TokenId> tokens = iota(192);
  const std::span<const TokenId> all(tokens);
  const std::vector<BlockId> ids = blockIds(tokens, 64);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], chainBlockId(rootBlockId(), all.subspan(0, 64)));
  EXPECT_EQ(ids[1], chainBlockId(ids[0], all.subspan(64, 64)));
  EXPECT_EQ(ids[2], chainBlockId(ids[1], all.subspan(128, 64)));
}

TEST(BlockIdTest, SameTokensUnderADifferentParentGiveADifferentId) {
  const std::vector<TokenId> block = iota(64, 1000);
  const BlockId other_parent = chainBlockId(rootBlockId(), iota(64));
  EXPECT_NE(chainBlockId(rootBlockId(), block), chainBlockId(other_parent, block));

  // Two sequences that differ only in block 0 share block 1's tokens, but not
  // its id: an id names the whole prefix.
  std::vector<TokenId> a = iota(128);
  std::vector<TokenId> b = a;
  b[5] = 99'999;
  const std::vector<BlockId> ids_a = blockIds(a, 64);
  const std::vector<BlockId> ids_b = blockIds(b, 64);
  EXPECT_NE(ids_a[0], ids_b[0]);
  EXPECT_NE(ids_a[1], ids_b[1]);

  // A shared prefix shares its ids up to the first differing block.
  std::vector<TokenId> c = a;
  c[100] = 7;
  const std::vector<BlockId> ids_c = blockIds(c, 64);
  EXPECT_EQ(ids_a[0], ids_c[0]);
  EXPECT_NE(ids_a[1], ids_c[1]);
}

TEST(BlockIdTest, TokenOrderMatters) {
  std::vector<TokenId> a = iota(64);
  std::vector<TokenId> b = a;
  std::swap(b[0], b[1]);
  EXPECT_NE(chainBlockId(rootBlockId(), a), chainBlockId(rootBlockId(), b));
}

TEST(BlockIdTest, OnlyFullBlocksGetIds) {
  EXPECT_TRUE(blockIds(iota(63), 64).empty());
  EXPECT_EQ(blockIds(iota(64), 64).size(), 1u);
  EXPECT_EQ(blockIds(iota(130), 64).size(), 2u);
  // The full blocks' ids do not depend on the partial tail.
  EXPECT_EQ(blockIds(iota(130), 64), blockIds(iota(128), 64));
  EXPECT_TRUE(blockIds(iota(10), 0).empty());
}

TEST(BlockIdTest, ARootOtherThanTheDefaultGivesOtherIds) {
  const BlockId salted = chainBlockId(rootBlockId(), std::vector<TokenId>{42});
  EXPECT_NE(blockIds(iota(64), 64, salted), blockIds(iota(64), 64));
}

// Pinned: ids name files in stores that outlive a build. Computed apart from
// block.cc, with libxxhash directly: XXH3-128("dualpath.kv.root.v1"), then
// XXH3-128 of (root.lo, root.hi, tokens 0..63 as u32), little-endian.
TEST(BlockIdTest, IdsArePinned) {
  EXPECT_EQ(rootBlockId().toHex(), "3e56db268db57977670a6d4948997b23");
  EXPECT_EQ(blockIds(iota(64), 64).at(0).toHex(), "fc94d9fac06a8e7780a0b01a4a6e7078");
}

TEST(BlockIdTest, HexRoundTrips) {
  const BlockId id{.hi = 0x0123456789abcdefULL, .lo = 0xfedcba9876543210ULL};
  EXPECT_EQ(id.toHex(), "0123456789abcdeffedcba9876543210");
  Result<BlockId> parsed = BlockId::fromHex(id.toHex());
  ASSERT_TRUE(parsed.hasValue()) << parsed.status().toString();
  EXPECT_EQ(*parsed, id);
  Result<BlockId> upper = BlockId::fromHex("0123456789ABCDEFFEDCBA9876543210");
  ASSERT_TRUE(upper.hasValue());
  EXPECT_EQ(*upper, id);
  for (const BlockId& chained : blockIds(iota(640), 64)) {
    const std::string hex = chained.toHex();
    EXPECT_EQ(hex.size(), 32u);
    Result<BlockId> back = BlockId::fromHex(hex);
    ASSERT_TRUE(back.hasValue());
    EXPECT_EQ(*back, chained);
  }
}

TEST(BlockIdTest, BadHexIsRejectedWithTheText) {
  Result<BlockId> short_text = BlockId::fromHex("abc");
  ASSERT_FALSE(short_text.hasValue());
  EXPECT_EQ(short_text.status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(short_text.status().message(),
            "block id 'abc': expected 32 hex digits, got 3 characters");
  Result<BlockId> bad_digit = BlockId::fromHex("0123456789abcdeffedcba987654321g");
  ASSERT_FALSE(bad_digit.hasValue());
  EXPECT_EQ(bad_digit.status().message(),
            "block id '0123456789abcdeffedcba987654321g': 'g' at position 31 is not a hex digit");
}

TEST(BlockLayoutTest, DeepSeekV32ByHand) {
  Result<ModelSpec> model = scheduler::modelPreset("deepseek-v3.2");
  ASSERT_TRUE(model.hasValue());
  // 64 tokens x 656 B = 41,984 B per Layer Block; x 61 layers = 2,561,024 B.
  EXPECT_EQ(model->layerBlockBytes(), 41'984u);
  EXPECT_EQ(model->fullBlockBytes(), 2'561'024u);
  EXPECT_EQ(layerBlockRange(*model, 0).offset, 0u);
  EXPECT_EQ(layerBlockRange(*model, 1).offset, 41'984u);
  EXPECT_EQ(layerBlockRange(*model, 60).offset, 2'519'040u);
  EXPECT_EQ(layerBlockRange(*model, 60).size, 41'984u);
  EXPECT_EQ(layerBlockRange(*model, 60).offset + layerBlockRange(*model, 60).size,
            model->fullBlockBytes());

  std::vector<std::byte> full(model->fullBlockBytes());
  const std::span<std::byte> layer7 = layerBlock(*model, std::span(full), 7);
  EXPECT_EQ(layer7.data(), full.data() + 7 * 41'984);
  EXPECT_EQ(layer7.size(), 41'984u);
  const std::span<const std::byte> const_full(full);
  EXPECT_EQ(layerBlock(*model, const_full, 60).data(), full.data() + 2'519'040);
}

TEST(BlockLayoutTest, Qwen25ByHand) {
  Result<ModelSpec> model = scheduler::modelPreset("qwen2.5-32b");
  ASSERT_TRUE(model.hasValue());
  // FP16: 4 KiB per token per layer; 64 tokens; 64 layers: 16 MiB per Full Block.
  EXPECT_EQ(model->layerBlockBytes(), 262'144u);
  EXPECT_EQ(model->fullBlockBytes(), 16u << 20);
  EXPECT_EQ(layerBlockRange(*model, 63).offset, 63u * 262'144u);
}

TEST(BlockLayoutTest, GeometryIsValidated) {
  Result<ModelSpec> tiny = scheduler::modelPreset("tiny");
  ASSERT_TRUE(tiny.hasValue());
  EXPECT_TRUE(validateBlockGeometry(*tiny).isOk());

  ModelSpec no_layers = *tiny;
  no_layers.layers = 0;
  EXPECT_EQ(validateBlockGeometry(no_layers).message(), "model 'tiny': layers: must be positive");

  ModelSpec huge{
      .name = "huge", .layers = 128, .kv_bytes_per_token_per_layer = 65'536, .block_tokens = 256};
  const Status too_big = validateBlockGeometry(huge);
  EXPECT_EQ(too_big.code(), StatusCode::invalid_argument);
  EXPECT_EQ(too_big.message(),
            "model 'huge': full block: 128 layers x 256 tokens x 65536 B exceeds 1 GiB");
}

}  // namespace
}  // namespace dualpath::loader
