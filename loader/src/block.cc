#include <array>
#include <bit>
#include <cstring>

#include <fmt/format.h>

#include <dualpath/loader/block.h>
// The streaming state is declared only for static linking; its size may
// change between xxHash versions, which is fine inside one build.
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

namespace dualpath::loader {
namespace {

static_assert(std::endian::native == std::endian::little,
              "block ids and headers are little-endian; a big-endian port must byte-swap");

constexpr std::uint64_t kMaxFullBlockBytes = 1ull << 30;

BlockId fromHash(const XXH128_hash_t& hash) noexcept {
  return BlockId{.hi = hash.high64, .lo = hash.low64};
}

int hexValue(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string BlockId::toHex() const {
  return fmt::format("{:016x}{:016x}", hi, lo);
}

Result<BlockId> BlockId::fromHex(std::string_view text) {
  if (text.size() != 32) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format("block id '{}': expected 32 hex digits, got {} characters", text, text.size()));
  }
  BlockId id;
  for (std::size_t i = 0; i < 32; ++i) {
    const int value = hexValue(text[i]);
    if (value < 0) {
      return Status(
          StatusCode::invalid_argument,
          fmt::format("block id '{}': '{}' at position {} is not a hex digit", text, text[i], i));
    }
    std::uint64_t& half = i < 16 ? id.hi : id.lo;
    half = (half << 4) | static_cast<std::uint64_t>(value);
  }
  return id;
}

BlockId rootBlockId() noexcept {
  static const BlockId root = [] {
    constexpr std::string_view kRootText = "dualpath.kv.root.v1";
    return fromHash(XXH3_128bits(kRootText.data(), kRootText.size()));
  }();
  return root;
}

BlockId chainBlockId(const BlockId& parent, std::span<const TokenId> tokens) noexcept {
  // Input: parent.lo, parent.hi, then each token, all little-endian (the host
  // order, asserted above), streamed so that no buffer is allocated.
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  const std::array<std::uint64_t, 2> parent_words{parent.lo, parent.hi};
  XXH3_128bits_update(&state, parent_words.data(), sizeof(parent_words));
  XXH3_128bits_update(&state, tokens.data(), tokens.size_bytes());
  return fromHash(XXH3_128bits_digest(&state));
}

std::vector<BlockId> blockIds(std::span<const TokenId> tokens, std::uint32_t block_tokens,
                              const BlockId& root) {
  std::vector<BlockId> ids;
  if (block_tokens == 0) return ids;
  ids.reserve(tokens.size() / block_tokens);
  BlockId parent = root;
  for (std::size_t begin = 0; begin + block_tokens <= tokens.size(); begin += block_tokens) {
    parent = chainBlockId(parent, tokens.subspan(begin, block_tokens));
    ids.push_back(parent);
  }
  return ids;
}

Status validateBlockGeometry(const ModelSpec& model) {
  auto fieldError = [&](std::string_view field, std::string_view what) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("model '{}': {}: {}", model.name, field, what));
  };
  if (model.layers == 0) return fieldError("layers", "must be positive");
  if (model.block_tokens == 0) return fieldError("block_tokens", "must be positive");
  if (model.kv_bytes_per_token_per_layer == 0) {
    return fieldError("kv_bytes_per_token_per_layer", "must be positive");
  }
  // Each factor is below 2^32, so the product of two fits; check before the third.
  const std::uint64_t layer_block = model.layerBlockBytes();
  if (layer_block > kMaxFullBlockBytes || layer_block * model.layers > kMaxFullBlockBytes) {
    return fieldError("full block",
                      fmt::format("{} layers x {} tokens x {} B exceeds 1 GiB", model.layers,
                                  model.block_tokens, model.kv_bytes_per_token_per_layer));
  }
  return Status::ok();
}

Status checkFullBlockToWrite(const ModelSpec& model, const BlockId& id, std::size_t bytes) {
  if (bytes == model.fullBlockBytes()) return Status::ok();
  return Status(StatusCode::invalid_usage,
                fmt::format("write: block {}: {} B given, a Full Block of '{}' is {} B",
                            id.toHex(), bytes, model.name, model.fullBlockBytes()));
}

}  // namespace dualpath::loader
