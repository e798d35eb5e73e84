// Checks loader/src/block_format.cc: the stored header, field by field.
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <xxhash.h>

#include <dualpath/loader/block_format.h>

namespace dualpath::loader {
namespace {

class BlockFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<ModelSpec> tiny = scheduler::modelPreset("tiny");
    ASSERT_TRUE(tiny.hasValue());
    model_ = *tiny;
    payload_.resize(model_.fullBlockBytes());
    for (std::size_t i = 0; i < payload_.size(); ++i) payload_[i] = std::byte(i * 7 + 3);
    header_.resize(kBlockHeaderBytes);
    encodeBlockHeader(model_, id_, payload_, header_);
  }

  // Rewrites a field and re-seals the header checksum, so that the field's
  // own check is what fails.
  template <class T>
  void setField(std::size_t offset, T value, bool reseal = true) {
    std::memcpy(header_.data() + offset, &value, sizeof(T));
    if (reseal) {
      const std::uint64_t checksum = headerChecksumOf(header_);
      std::memcpy(header_.data() + 64, &checksum, sizeof(checksum));
    }
  }
  // The header checksum, recomputed independently: XXH3-64 of bytes [0, 64).
  static std::uint64_t headerChecksumOf(const std::vector<std::byte>& header) {
    return XXH3_64bits(header.data(), 64);
  }

  std::string verifyMessage() {
    Result<std::uint64_t> verified = verifyBlockHeader(header_, model_, id_);
    EXPECT_FALSE(verified.hasValue());
    if (verified.hasValue()) return "";
    EXPECT_EQ(verified.status().code(), StatusCode::corrupt);
    return verified.status().message();
  }

  ModelSpec model_;
  BlockId id_{.hi = 0x1111222233334444ULL, .lo = 0x5555666677778888ULL};
  std::vector<std::byte> payload_;
  std::vector<std::byte> header_;
};

TEST_F(BlockFormatTest, AnEncodedHeaderVerifies) {
  Result<std::uint64_t> checksum = verifyBlockHeader(header_, model_, id_);
  ASSERT_TRUE(checksum.hasValue()) << checksum.status().toString();
  EXPECT_EQ(*checksum, payloadChecksum(payload_));
  EXPECT_EQ(*checksum, XXH3_64bits(payload_.data(), payload_.size()));
  EXPECT_TRUE(verifyBlockPayload(payload_, *checksum).isOk());
  // The layout of docs/loader.md, byte by byte.
  EXPECT_EQ(std::memcmp(header_.data(), "DPKVBLK1", 8), 0);
  std::uint32_t u32 = 0;
  std::uint64_t u64 = 0;
  std::memcpy(&u32, header_.data() + 8, 4);
  EXPECT_EQ(u32, 1u);
  std::memcpy(&u32, header_.data() + 12, 4);
  EXPECT_EQ(u32, 4096u);
  std::memcpy(&u32, header_.data() + 16, 4);
  EXPECT_EQ(u32, 4u);
  std::memcpy(&u32, header_.data() + 20, 4);
  EXPECT_EQ(u32, 16u);
  std::memcpy(&u32, header_.data() + 24, 4);
  EXPECT_EQ(u32, 64u);
  std::memcpy(&u64, header_.data() + 32, 8);
  EXPECT_EQ(u64, 4096u);
  std::memcpy(&u64, header_.data() + 40, 8);
  EXPECT_EQ(u64, id_.hi);
  std::memcpy(&u64, header_.data() + 48, 8);
  EXPECT_EQ(u64, id_.lo);
  std::memcpy(&u64, header_.data() + 56, 8);
  EXPECT_EQ(u64, payloadChecksum(payload_));
  std::memcpy(&u64, header_.data() + 64, 8);
  EXPECT_EQ(u64, headerChecksumOf(header_));
}

TEST_F(BlockFormatTest, EveryFieldIsChecked) {
  const std::vector<std::byte> good = header_;
  struct Case {
    std::function<void()> damage;
    std::string message;
  };
  const Case cases[] = {
      {[&] { header_[0] = std::byte{'X'}; }, "bad magic 'XPKVBLK1', expected 'DPKVBLK1'"},
      {[&] { setField<std::uint32_t>(8, 2); }, "format version 2, this build reads version 1"},
      {[&] { header_[20] ^= std::byte{1}; },
       fmt::format("header checksum {:016x}, computed ", headerChecksumOf(good))},
      {[&] { setField<std::uint32_t>(12, 512); }, "header size 512, expected 4096"},
      {[&] { setField<std::uint32_t>(28, 9); }, "reserved field 9 is not zero"},
      {[&] { header_[4000] = std::byte{1}; }, "header padding is not zero"},
      {[&] { setField<std::uint32_t>(16, 61); },
       "geometry 61 layers x 16 tokens x 64 B, the store's model 'tiny' is 4 x 16 x 64 B"},
      {[&] { setField<std::uint64_t>(32, 4095); },
       "payload size 4095 B, the geometry gives 4096 B"},
      {[&] { setField<std::uint64_t>(48, 1); },
       "header names block 11112222333344440000000000000001"},
  };
  for (const Case& c : cases) {
    header_ = good;
    c.damage();
    const std::string message = verifyMessage();
    EXPECT_EQ(message.substr(0, c.message.size()), c.message);
  }
  header_ = good;
  Result<std::uint64_t> truncated = verifyBlockHeader(std::span(header_).first(100), model_, id_);
  ASSERT_FALSE(truncated.hasValue());
  EXPECT_EQ(truncated.status().message(), "truncated header: 100 of 4096 bytes");
}

TEST_F(BlockFormatTest, APayloadByteFlipFailsItsChecksum) {
  payload_[1234] ^= std::byte{0x40};
  Result<std::uint64_t> checksum = verifyBlockHeader(header_, model_, id_);
  ASSERT_TRUE(checksum.hasValue());
  const Status flipped = verifyBlockPayload(payload_, *checksum);
  EXPECT_EQ(flipped.code(), StatusCode::corrupt);
  EXPECT_EQ(flipped.message(), fmt::format("payload checksum {:016x}, header says {:016x}",
                                           payloadChecksum(payload_), *checksum));
}

}  // namespace
}  // namespace dualpath::loader
