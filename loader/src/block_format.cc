#include <algorithm>
#include <cstring>
#include <string_view>

#include <fmt/format.h>
#include <xxhash.h>

#include <dualpath/loader/block_format.h>

namespace dualpath::loader {
namespace {

// Field offsets; docs/loader.md has the same table.
constexpr std::size_t kMagicAt = 0;
constexpr std::size_t kVersionAt = 8;
constexpr std::size_t kHeaderBytesAt = 12;
constexpr std::size_t kLayersAt = 16;
constexpr std::size_t kBlockTokensAt = 20;
constexpr std::size_t kBytesPerTokenAt = 24;
constexpr std::size_t kReservedAt = 28;
constexpr std::size_t kPayloadBytesAt = 32;
constexpr std::size_t kIdHiAt = 40;
constexpr std::size_t kIdLoAt = 48;
constexpr std::size_t kPayloadChecksumAt = 56;
constexpr std::size_t kHeaderChecksumAt = 64;
constexpr std::size_t kPaddingAt = 72;

constexpr std::string_view kMagic = "DPKVBLK1";
static_assert(kMagic.size() == 8);

// Host order is little-endian (asserted in block.cc).
template <class T>
void store(std::span<std::byte> out, std::size_t at, T value) noexcept {
  std::memcpy(out.data() + at, &value, sizeof(T));
}
template <class T>
T load(std::span<const std::byte> in, std::size_t at) noexcept {
  T value;
  std::memcpy(&value, in.data() + at, sizeof(T));
  return value;
}

std::uint64_t headerChecksum(std::span<const std::byte> header) noexcept {
  return XXH3_64bits(header.data(), kHeaderChecksumAt);
}

Status corrupt(std::string message) {
  return Status(StatusCode::corrupt, std::move(message));
}

std::string printable(std::span<const std::byte> bytes) {
  std::string text;
  for (std::byte b : bytes) {
    const auto c = static_cast<unsigned char>(b);
    text += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '.';
  }
  return text;
}

}  // namespace

std::uint64_t payloadChecksum(std::span<const std::byte> payload) noexcept {
  return XXH3_64bits(payload.data(), payload.size());
}

void encodeBlockHeader(const ModelSpec& model, const BlockId& id,
                       std::span<const std::byte> payload, std::span<std::byte> out) noexcept {
  std::fill(out.begin(), out.end(), std::byte{0});
  std::memcpy(out.data() + kMagicAt, kMagic.data(), kMagic.size());
  store<std::uint32_t>(out, kVersionAt, kBlockFormatVersion);
  store<std::uint32_t>(out, kHeaderBytesAt, static_cast<std::uint32_t>(kBlockHeaderBytes));
  store<std::uint32_t>(out, kLayersAt, model.layers);
  store<std::uint32_t>(out, kBlockTokensAt, model.block_tokens);
  store<std::uint32_t>(out, kBytesPerTokenAt, model.kv_bytes_per_token_per_layer);
  store<std::uint32_t>(out, kReservedAt, 0);
  store<std::uint64_t>(out, kPayloadBytesAt, payload.size());
  store<std::uint64_t>(out, kIdHiAt, id.hi);
  store<std::uint64_t>(out, kIdLoAt, id.lo);
  store<std::uint64_t>(out, kPayloadChecksumAt, payloadChecksum(payload));
  store<std::uint64_t>(out, kHeaderChecksumAt, headerChecksum(out));
}

Result<std::uint64_t> verifyBlockHeader(std::span<const std::byte> header, const ModelSpec& model,
                                        const BlockId& expected) {
  if (header.size() < kBlockHeaderBytes) {
    return corrupt(
        fmt::format("truncated header: {} of {} bytes", header.size(), kBlockHeaderBytes));
  }
  const std::span<const std::byte> magic = header.subspan(kMagicAt, kMagic.size());
  if (std::memcmp(magic.data(), kMagic.data(), kMagic.size()) != 0) {
    return corrupt(fmt::format("bad magic '{}', expected '{}'", printable(magic), kMagic));
  }
  const auto version = load<std::uint32_t>(header, kVersionAt);
  if (version != kBlockFormatVersion) {
    return corrupt(fmt::format("format version {}, this build reads version {}", version,
                               kBlockFormatVersion));
  }
  const auto stored_checksum = load<std::uint64_t>(header, kHeaderChecksumAt);
  const std::uint64_t computed_checksum = headerChecksum(header);
  if (stored_checksum != computed_checksum) {
    return corrupt(fmt::format("header checksum {:016x}, computed {:016x}", stored_checksum,
                               computed_checksum));
  }
  const auto header_bytes = load<std::uint32_t>(header, kHeaderBytesAt);
  if (header_bytes != kBlockHeaderBytes) {
    return corrupt(fmt::format("header size {}, expected {}", header_bytes, kBlockHeaderBytes));
  }
  if (load<std::uint32_t>(header, kReservedAt) != 0) {
    return corrupt(
        fmt::format("reserved field {} is not zero", load<std::uint32_t>(header, kReservedAt)));
  }
  const std::span<const std::byte> padding =
      header.subspan(kPaddingAt, kBlockHeaderBytes - kPaddingAt);
  if (std::any_of(padding.begin(), padding.end(), [](std::byte b) { return b != std::byte{0}; })) {
    return corrupt("header padding is not zero");
  }
  const auto layers = load<std::uint32_t>(header, kLayersAt);
  const auto block_tokens = load<std::uint32_t>(header, kBlockTokensAt);
  const auto bytes_per_token = load<std::uint32_t>(header, kBytesPerTokenAt);
  if (layers != model.layers || block_tokens != model.block_tokens ||
      bytes_per_token != model.kv_bytes_per_token_per_layer) {
    return corrupt(fmt::format(
        "geometry {} layers x {} tokens x {} B, the store's model '{}' is {} x {} x {} B", layers,
        block_tokens, bytes_per_token, model.name, model.layers, model.block_tokens,
        model.kv_bytes_per_token_per_layer));
  }
  const auto payload_bytes = load<std::uint64_t>(header, kPayloadBytesAt);
  if (payload_bytes != model.fullBlockBytes()) {
    return corrupt(fmt::format("payload size {} B, the geometry gives {} B", payload_bytes,
                               model.fullBlockBytes()));
  }
  const BlockId stored_id{.hi = load<std::uint64_t>(header, kIdHiAt),
                          .lo = load<std::uint64_t>(header, kIdLoAt)};
  if (stored_id != expected) {
    return corrupt(fmt::format("header names block {}", stored_id.toHex()));
  }
  return load<std::uint64_t>(header, kPayloadChecksumAt);
}

Status verifyBlockPayload(std::span<const std::byte> payload, std::uint64_t expected_checksum) {
  const std::uint64_t computed = payloadChecksum(payload);
  if (computed != expected_checksum) {
    return corrupt(
        fmt::format("payload checksum {:016x}, header says {:016x}", computed, expected_checksum));
  }
  return Status::ok();
}

}  // namespace dualpath::loader
