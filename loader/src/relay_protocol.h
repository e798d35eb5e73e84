// The KV relay's wire format (private to the loader; docs/loader.md, "The KV relay").
//
// Every message starts with the same 16 bytes, all integers little-endian:
//
//   offset size field
//        0    1 version (kRelayProtocolVersion)
//        1    1 kind (MessageKind)
//        2    2 reserved, zero
//        4    4 message bytes, header included (must equal the received size)
//        8    8 request id
//
// then a body per kind (the offsets below are from the start of the message):
//
//   request (PE -> DE)
//       16    4 layers            \  the model geometry: both ends must agree
//       20    4 block tokens       |
//       24    4 KV bytes per token per layer /
//       28    4 budget ms: the request's deadline, relative to when it was sent
//       32    8 PE region base (the remote address of the PE buffer)
//       40    8 PE region length
//       48    4 remote key bytes (k, 1 to kMaxRemoteKeyBytes)
//       52    4 block count (n, 1 to kMaxRelayBlocks)
//       56    k remote key (Endpoint::importRemote's packed key)
//     56+k 24n  per block: id hi (8), id lo (8), slot offset in the PE region (8)
//   cancel (PE -> DE): no body.
//   block_failed (DE -> PE)
//       16    4 block index in the request
//       20    1 status code (the DE store's outcome: not_found, corrupt, io, timeout)
//       21    1 reserved, zero
//       22    2 message bytes (m, at most kMaxTextBytes)
//       24   16 block id (hi, lo)
//       40    m message, UTF-8
//   layer_landed (DE -> PE)
//       16    4 layer
//       20    4 blocks whose Layer Block landed
//   done (DE -> PE): the last message of a request
//       16    1 status code (ok, or why the relay ended)
//       17    1 reserved, zero
//       18    2 message bytes (m, at most kMaxTextBytes)
//       20    4 layers landed
//       24    4 blocks failed
//       28    m message, UTF-8
//
// The KV handoff (kv_handoff.h) runs on a connection of its own with the same
// header, tags and the kinds cancel, block_failed and done (whose "layers
// landed" field then counts the blocks written back), plus:
//
//   handoff_offer (PE -> DE): the PE has KV for these blocks
//       16    4 layers            \  the model geometry, as in request
//       20    4 block tokens       |
//       24    4 KV bytes per token per layer /
//       28    4 budget ms
//       32    8 first token: the position of block 0's first token (a
//                multiple of block tokens)
//       40    4 block count (n, 1 to kMaxRelayBlocks)
//       44    4 reserved, zero
//       48  24n per block: id hi (8), id lo (8), tokens (4, 1 to block
//                tokens; only the last block may be partial), flags (4: bit 0
//                = write back; only on a full block)
//   handoff_ready (DE -> PE): where to put them
//       16    8 DE region base
//       24    8 DE region length
//       32    4 remote key bytes (k, 1 to kMaxRemoteKeyBytes)
//       36    4 block count (n, as offered)
//       40    k remote key
//     40+k   8n per block: slot offset in the DE region
//   handoff_end (PE -> DE): every put is remote-complete
//       16    4 layers put
//       20    4 block count (n, as offered)
//       24   8n per block: XXH3-64 (seed 0) of the bytes put, layer by layer
//                (for a full block, the payload checksum of block_format.h)
//
// The remote block store (remote_block_store.h, block_server.h) runs on a
// connection of its own with the same header and these kinds:
//
//   store_read (client -> server): read these blocks; request id = the batch
//       16    4 layers            \  the model geometry, as in request
//       20    4 block tokens       |
//       24    4 KV bytes per token per layer /
//       28    4 budget ms (0: none; the client closes the connection at its
//                deadline)
//       32    4 block count (n, 1 to kMaxRelayBlocks)
//       36    4 reserved, zero
//       40  16n block ids (hi, lo)
//   store_write (client -> server): store this block; its payload follows on
//   the data tag
//       16   16 geometry and budget, as in store_read
//       32   16 block id
//       48    8 XXH3-64 (seed 0) of the payload
//   store_outcome (server -> client): one per read of a store_read, in order,
//   and one per store_write
//       16    4 block index in the batch (0 for a write)
//       20    1 status code (ok, or the server store's outcome)
//       21    1 reserved, zero
//       22    2 message bytes (m, at most kMaxTextBytes)
//       24   16 block id
//       40    8 XXH3-64 of the payload sent on the data tag (ok reads), else 0
//       48    m message, UTF-8
//
// On the data tag the server sends one message per read, in order: the
// payload (a Full Block) when the read is ok, zero bytes otherwise; the
// client sends one per store_write, the payload.
//
// Threading: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/loader/block.h>

namespace dualpath::loader::relay {

inline constexpr std::uint8_t kRelayProtocolVersion = 1;
inline constexpr std::size_t kHeaderBytes = 16;
inline constexpr std::size_t kMaxRelayBlocks = 4096;
inline constexpr std::size_t kMaxRemoteKeyBytes = 4096;
inline constexpr std::size_t kMaxTextBytes = 512;
inline constexpr std::size_t kRequestFixedBytes = 56;
inline constexpr std::size_t kRequestBlockBytes = 24;
// Receive buffers: a control receive (PE -> DE) holds the largest request; a
// notice receive (DE -> PE) the largest notice.
inline constexpr std::size_t kMaxControlBytes =
    kRequestFixedBytes + kMaxRemoteKeyBytes + kMaxRelayBlocks * kRequestBlockBytes;
inline constexpr std::size_t kMaxNoticeBytes = 40 + kMaxTextBytes;
inline constexpr std::size_t kHandoffOfferFixedBytes = 48;
inline constexpr std::size_t kHandoffOfferBlockBytes = 24;
inline constexpr std::size_t kHandoffReadyFixedBytes = 40;
inline constexpr std::size_t kHandoffEndFixedBytes = 24;
// The largest message of each handoff direction.
inline constexpr std::size_t kMaxHandoffControlBytes =
    kHandoffOfferFixedBytes + kMaxRelayBlocks * kHandoffOfferBlockBytes;
inline constexpr std::size_t kMaxHandoffNoticeBytes =
    kHandoffReadyFixedBytes + kMaxRemoteKeyBytes + kMaxRelayBlocks * 8;
inline constexpr std::size_t kStoreReadFixedBytes = 40;
inline constexpr std::size_t kMaxStoreReadBytes = kStoreReadFixedBytes + kMaxRelayBlocks * 16;
inline constexpr std::size_t kStoreWriteBytes = 56;
inline constexpr std::size_t kStoreOutcomeFixedBytes = 48;
inline constexpr std::size_t kMaxStoreOutcomeBytes = kStoreOutcomeFixedBytes + kMaxTextBytes;

// Transport tags: each tag is its own ordered stream (the k-th send of a tag
// meets the k-th receive of that tag), so each direction uses one tag and
// the relay's order of messages is the order of posting.
inline constexpr std::uint32_t kControlTag = 0x4b56;  // PE -> DE ("KV")
inline constexpr std::uint32_t kNoticeTag = 0x4b57;   // DE -> PE
// The remote block store's streams.
inline constexpr std::uint32_t kStoreRequestTag = 0x5354;  // client -> server ("ST")
inline constexpr std::uint32_t kStoreOutcomeTag = 0x5355;  // server -> client
inline constexpr std::uint32_t kStoreDataTag = 0x5356;     // payloads, either way

enum class MessageKind : std::uint8_t {
  request = 1,
  cancel = 2,
  block_failed = 3,
  layer_landed = 4,
  done = 5,
  handoff_offer = 6,
  handoff_ready = 7,
  handoff_end = 8,
  store_read = 9,
  store_write = 10,
  store_outcome = 11,
};

struct RequestBlock {
  BlockId id;
  std::uint64_t slot_offset = 0;
};

struct RequestMessage {
  std::uint64_t request_id = 0;
  std::uint32_t layers = 0;
  std::uint32_t block_tokens = 0;
  std::uint32_t kv_bytes_per_token_per_layer = 0;
  std::uint32_t budget_ms = 0;
  std::uint64_t region_base = 0;
  std::uint64_t region_length = 0;
  std::vector<std::byte> remote_key;
  std::vector<RequestBlock> blocks;
};

struct BlockFailedMessage {
  std::uint64_t request_id = 0;
  std::uint32_t block_index = 0;
  BlockId block;
  Status status;  // never ok
};

struct LayerLandedMessage {
  std::uint64_t request_id = 0;
  std::uint32_t layer = 0;
  std::uint32_t blocks = 0;
};

struct DoneMessage {
  std::uint64_t request_id = 0;
  Status status;
  std::uint32_t layers_landed = 0;
  std::uint32_t blocks_failed = 0;
};

inline constexpr std::uint32_t kHandoffWriteBack = 1;  // handoff_offer block flag

struct HandoffOfferBlock {
  BlockId id;  // zero for a partial block
  std::uint32_t tokens = 0;
  bool write_back = false;
};

struct HandoffOfferMessage {
  std::uint64_t request_id = 0;
  std::uint32_t layers = 0;
  std::uint32_t block_tokens = 0;
  std::uint32_t kv_bytes_per_token_per_layer = 0;
  std::uint32_t budget_ms = 0;
  std::uint64_t first_token = 0;
  std::vector<HandoffOfferBlock> blocks;
};

struct HandoffReadyMessage {
  std::uint64_t request_id = 0;
  std::uint64_t region_base = 0;
  std::uint64_t region_length = 0;
  std::vector<std::byte> remote_key;
  std::vector<std::uint64_t> slot_offsets;
};

struct HandoffEndMessage {
  std::uint64_t request_id = 0;
  std::uint32_t layers = 0;
  std::vector<std::uint64_t> checksums;
};

struct StoreReadMessage {
  std::uint64_t request_id = 0;
  std::uint32_t layers = 0;
  std::uint32_t block_tokens = 0;
  std::uint32_t kv_bytes_per_token_per_layer = 0;
  std::uint32_t budget_ms = 0;
  std::vector<BlockId> blocks;
};

struct StoreWriteMessage {
  std::uint64_t request_id = 0;
  std::uint32_t layers = 0;
  std::uint32_t block_tokens = 0;
  std::uint32_t kv_bytes_per_token_per_layer = 0;
  std::uint32_t budget_ms = 0;
  BlockId block;
  std::uint64_t checksum = 0;
};

struct StoreOutcomeMessage {
  std::uint64_t request_id = 0;
  std::uint32_t block_index = 0;
  BlockId block;
  Status status;  // ok, or why not
  std::uint64_t checksum = 0;
};

// Encoders append to `out` (cleared first). Text longer than kMaxTextBytes is
// cut. A request with more than kMaxRelayBlocks blocks or a key outside
// [1, kMaxRemoteKeyBytes] is the caller's bug: invalid_usage.
Status encode(const RequestMessage& message, std::vector<std::byte>& out);
void encodeCancel(std::uint64_t request_id, std::vector<std::byte>& out);
void encode(const BlockFailedMessage& message, std::vector<std::byte>& out);
void encode(const LayerLandedMessage& message, std::vector<std::byte>& out);
void encode(const DoneMessage& message, std::vector<std::byte>& out);
// invalid_usage for a block count or key size outside the limits.
Status encode(const HandoffOfferMessage& message, std::vector<std::byte>& out);
Status encode(const HandoffReadyMessage& message, std::vector<std::byte>& out);
Status encode(const HandoffEndMessage& message, std::vector<std::byte>& out);
// invalid_usage for a block count outside [1, kMaxRelayBlocks].
Status encode(const StoreReadMessage& message, std::vector<std::byte>& out);
void encode(const StoreWriteMessage& message, std::vector<std::byte>& out);
void encode(const StoreOutcomeMessage& message, std::vector<std::byte>& out);

struct Header {
  std::uint8_t version = 0;
  MessageKind kind{};
  std::uint32_t bytes = 0;
  std::uint64_t request_id = 0;
};

// Checks version, kind, the reserved field and the length against the bytes
// received. Errors are corrupt and name the field: "relay message: version:
// 2, expected 1".
Result<Header> decodeHeader(std::span<const std::byte> message);

// Each decoder checks the header (and that it is of its kind), then every
// body field. Errors are corrupt and name the field.
Result<RequestMessage> decodeRequest(std::span<const std::byte> message);
Result<BlockFailedMessage> decodeBlockFailed(std::span<const std::byte> message);
Result<LayerLandedMessage> decodeLayerLanded(std::span<const std::byte> message);
Result<DoneMessage> decodeDone(std::span<const std::byte> message);
// The handoff decoders check the wire rules above (counts, flags, a partial
// block only last, write back only on a full block); what depends on the
// receiver (its model, its buffer) is the receiver's to check.
Result<HandoffOfferMessage> decodeHandoffOffer(std::span<const std::byte> message);
Result<HandoffReadyMessage> decodeHandoffReady(std::span<const std::byte> message);
Result<HandoffEndMessage> decodeHandoffEnd(std::span<const std::byte> message);
Result<StoreReadMessage> decodeStoreRead(std::span<const std::byte> message);
Result<StoreWriteMessage> decodeStoreWrite(std::span<const std::byte> message);
Result<StoreOutcomeMessage> decodeStoreOutcome(std::span<const std::byte> message);
// A cancel: the header alone. Returns its request id.
Result<std::uint64_t> decodeCancel(std::span<const std::byte> message);

std::string_view kindName(MessageKind kind) noexcept;

}  // namespace dualpath::loader::relay
