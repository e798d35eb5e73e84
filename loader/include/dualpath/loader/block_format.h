// The stored form of a Full Block: a 4,096-byte header, then the payload.
//
// Every back end keeps blocks in this form (the POSIX store as files, the
// in-memory store as byte vectors), so a reader verifies the same fields
// everywhere. The header is padded to 4,096 bytes so that the payload starts
// O_DIRECT-aligned. All integers are little-endian. Layout (docs/loader.md):
//
//   offset size field
//        0    8 magic "DPKVBLK1"
//        8    4 format version (1)
//       12    4 header bytes (4096)
//       16    4 layers
//       20    4 block tokens
//       24    4 KV bytes per token per layer
//       28    4 reserved, zero
//       32    8 payload bytes (layers x tokens x bytes)
//       40   16 block id (hi, then lo)
//       56    8 payload checksum: XXH3-64, seed 0, of the payload
//       64    8 header checksum: XXH3-64, seed 0, of bytes [0, 64)
//       72 4024 zero padding
//
// Threading: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>

namespace dualpath::loader {

inline constexpr std::size_t kBlockHeaderBytes = 4096;
inline constexpr std::uint32_t kBlockFormatVersion = 1;

// XXH3-64 (seed 0) of a payload.
std::uint64_t payloadChecksum(std::span<const std::byte> payload) noexcept;

// Writes the header of block `id` with `payload` (model.fullBlockBytes() long)
// into `out`. Precondition: out.size() == kBlockHeaderBytes.
void encodeBlockHeader(const ModelSpec& model, const BlockId& id,
                       std::span<const std::byte> payload, std::span<std::byte> out) noexcept;

// Checks every header field: magic, version, header size, header checksum,
// reserved and padding bytes, geometry against `model`, payload size, and that
// the header names `expected`. On success returns the payload checksum the
// header promises. Errors are corrupt, with a message that states the field,
// what was found and what was expected; callers prefix the block id and file.
Result<std::uint64_t> verifyBlockHeader(std::span<const std::byte> header, const ModelSpec& model,
                                        const BlockId& expected);

// Checks `payload` against the checksum verifyBlockHeader returned; corrupt
// otherwise.
Status verifyBlockPayload(std::span<const std::byte> payload, std::uint64_t expected_checksum);

}  // namespace dualpath::loader
