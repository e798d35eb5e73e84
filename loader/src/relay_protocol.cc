#include "relay_protocol.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace dualpath::loader::relay {
namespace {

// Explicit little-endian, byte by byte: no dependence on the host's order.
class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) { out_.clear(); }
  void u8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void u16(std::uint16_t v) { le(v, 2); }
  void u32(std::uint32_t v) { le(v, 4); }
  void u64(std::uint64_t v) { le(v, 8); }
  void bytes(std::span<const std::byte> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void text(std::string_view t) {
    const auto* p = reinterpret_cast<const std::byte*>(t.data());
    out_.insert(out_.end(), p, p + t.size());
  }
  // Writes the common header; the length is patched by finish().
  void header(MessageKind kind, std::uint64_t request_id) {
    u8(kRelayProtocolVersion);
    u8(static_cast<std::uint8_t>(kind));
    u16(0);
    u32(0);
    u64(request_id);
  }
  void finish() {
    const auto size = static_cast<std::uint32_t>(out_.size());
    for (int i = 0; i < 4; ++i) out_[4 + i] = static_cast<std::byte>((size >> (8 * i)) & 0xff);
  }

 private:
  void le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
  }
  std::vector<std::byte>& out_;
};

class Reader {
 public:
  // `base`: where `in` starts in the message, so errors give message offsets.
  explicit Reader(std::span<const std::byte> in, std::size_t base = 0) : in_(in), base_(base) {}
  std::size_t remaining() const noexcept { return in_.size() - at_; }
  // Each getter names the field when the message is too short.
  Result<std::uint64_t> le(int n, std::string_view field) {
    if (remaining() < static_cast<std::size_t>(n)) return shortError(field, n);
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i)
      v |= std::uint64_t{std::to_integer<std::uint8_t>(in_[at_ + i])} << (8 * i);
    at_ += static_cast<std::size_t>(n);
    return v;
  }
  Result<std::span<const std::byte>> bytes(std::size_t n, std::string_view field) {
    if (remaining() < n) return shortError(field, n);
    auto out = in_.subspan(at_, n);
    at_ += n;
    return out;
  }

 private:
  Status shortError(std::string_view field, std::size_t n) const {
    return Status(StatusCode::corrupt,
                  fmt::format("relay message: {}: needs {} B at offset {}, the message has {} B",
                              field, n, base_ + at_, base_ + in_.size()));
  }
  std::span<const std::byte> in_;
  std::size_t base_;
  std::size_t at_ = 0;
};

Status fieldError(std::string_view kind, std::string_view field, std::string_view problem) {
  return Status(StatusCode::corrupt, fmt::format("relay {} message: {}: {}", kind, field, problem));
}

std::string_view cutText(const std::string& text) {
  return std::string_view(text).substr(0, kMaxTextBytes);
}

// A status code from the wire: any defined code; `allow_ok` for done.
Result<StatusCode> decodeCode(std::uint8_t raw, bool allow_ok, std::string_view kind) {
  if (raw > static_cast<std::uint8_t>(StatusCode::internal) ||
      (!allow_ok && raw == static_cast<std::uint8_t>(StatusCode::ok)) ||
      raw == static_cast<std::uint8_t>(StatusCode::again)) {
    return fieldError(kind, "status code",
                      fmt::format("{} is not a {}status code", raw, allow_ok ? "" : "failure "));
  }
  return static_cast<StatusCode>(raw);
}

Result<Header> expectKind(std::span<const std::byte> message, MessageKind kind) {
  DP_TRY_ASSIGN(Header header, decodeHeader(message));
  if (header.kind != kind) {
    return Status(StatusCode::corrupt, fmt::format("relay message: kind: {}, expected {}",
                                                   kindName(header.kind), kindName(kind)));
  }
  return header;
}

// A request and a handoff offer both open with the model geometry (both ends
// must agree) and the budget.
template <class Message>
void writeGeometryAndBudget(Writer& w, const Message& m) {
  w.u32(m.layers);
  w.u32(m.block_tokens);
  w.u32(m.kv_bytes_per_token_per_layer);
  w.u32(m.budget_ms);
}

template <class Message>
Status readGeometryAndBudget(Reader& r, std::string_view kind, Message& m) {
  DP_TRY_ASSIGN(std::uint64_t layers, r.le(4, "layers"));
  DP_TRY_ASSIGN(std::uint64_t tokens, r.le(4, "block tokens"));
  DP_TRY_ASSIGN(std::uint64_t kv_bytes, r.le(4, "kv bytes per token per layer"));
  DP_TRY_ASSIGN(std::uint64_t budget, r.le(4, "budget ms"));
  if (layers == 0) return fieldError(kind, "layers", "0");
  if (tokens == 0) return fieldError(kind, "block tokens", "0");
  if (kv_bytes == 0) return fieldError(kind, "kv bytes per token per layer", "0");
  m.layers = static_cast<std::uint32_t>(layers);
  m.block_tokens = static_cast<std::uint32_t>(tokens);
  m.kv_bytes_per_token_per_layer = static_cast<std::uint32_t>(kv_bytes);
  m.budget_ms = static_cast<std::uint32_t>(budget);
  return Status::ok();
}

Status checkBlockCount(std::string_view what, std::uint64_t request_id, std::size_t count) {
  if (count == 0 || count > kMaxRelayBlocks) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("{} {}: {} blocks; 1 to {} fit one message", what, request_id, count,
                              kMaxRelayBlocks));
  }
  return Status::ok();
}

Status expectEnd(const Reader& reader, std::string_view kind) {
  if (reader.remaining() != 0) {
    return fieldError(kind, "length",
                      fmt::format("{} B left over after the last field", reader.remaining()));
  }
  return Status::ok();
}

// A block's outcome, the body block_failed and store_outcome share: its index
// in the request, a status code, the text's length, the block id, then (only
// store_outcome) the payload checksum, then the text.
struct BlockOutcome {
  std::uint32_t index = 0;
  Status status;
  BlockId block;
  std::uint64_t checksum = 0;
};

void writeBlockOutcome(Writer& w, const BlockOutcome& o, bool with_checksum) {
  const std::string_view text = cutText(o.status.message());
  w.u32(o.index);
  w.u8(static_cast<std::uint8_t>(o.status.code()));
  w.u8(0);
  w.u16(static_cast<std::uint16_t>(text.size()));
  w.u64(o.block.hi);
  w.u64(o.block.lo);
  if (with_checksum) w.u64(o.checksum);
  w.text(text);
}

// `allow_ok`: store_outcome reports successes too; block_failed never does.
Result<BlockOutcome> readBlockOutcome(Reader& r, std::string_view kind, bool allow_ok,
                                      bool with_checksum) {
  BlockOutcome o;
  DP_TRY_ASSIGN(std::uint64_t index, r.le(4, "block index"));
  DP_TRY_ASSIGN(std::uint64_t raw_code, r.le(1, "status code"));
  DP_TRY_ASSIGN(std::uint64_t reserved, r.le(1, "reserved"));
  DP_TRY_ASSIGN(std::uint64_t text_bytes, r.le(2, "message bytes"));
  DP_TRY_ASSIGN(o.block.hi, r.le(8, "block id"));
  DP_TRY_ASSIGN(o.block.lo, r.le(8, "block id"));
  if (with_checksum) {
    DP_TRY_ASSIGN(o.checksum, r.le(8, "checksum"));
  }
  DP_TRY_ASSIGN(StatusCode code, decodeCode(static_cast<std::uint8_t>(raw_code), allow_ok, kind));
  if (reserved != 0)
    return fieldError(kind, "reserved", fmt::format("{:#x}, expected 0", reserved));
  if (text_bytes > kMaxTextBytes || text_bytes != r.remaining()) {
    return fieldError(
        kind, "message bytes",
        fmt::format("{}, with {} B left (at most {})", text_bytes, r.remaining(), kMaxTextBytes));
  }
  DP_TRY_ASSIGN(auto text, r.bytes(text_bytes, "message"));
  o.index = static_cast<std::uint32_t>(index);
  o.status = code == StatusCode::ok
                 ? Status::ok()
                 : Status(code, std::string(reinterpret_cast<const char*>(text.data()), text.size()));
  return o;
}

}  // namespace

std::string_view kindName(MessageKind kind) noexcept {
  switch (kind) {
    case MessageKind::request:
      return "request";
    case MessageKind::cancel:
      return "cancel";
    case MessageKind::block_failed:
      return "block_failed";
    case MessageKind::layer_landed:
      return "layer_landed";
    case MessageKind::done:
      return "done";
    case MessageKind::handoff_offer:
      return "handoff_offer";
    case MessageKind::handoff_ready:
      return "handoff_ready";
    case MessageKind::handoff_end:
      return "handoff_end";
    case MessageKind::store_read:
      return "store_read";
    case MessageKind::store_write:
      return "store_write";
    case MessageKind::store_outcome:
      return "store_outcome";
  }
  return "unknown";
}

Status encode(const RequestMessage& m, std::vector<std::byte>& out) {
  if (m.blocks.empty() || m.blocks.size() > kMaxRelayBlocks) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("relay request {}: {} blocks; 1 to {} fit one request", m.request_id,
                              m.blocks.size(), kMaxRelayBlocks));
  }
  if (m.remote_key.empty() || m.remote_key.size() > kMaxRemoteKeyBytes) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("relay request {}: a {}-byte remote key; 1 to {} B fit", m.request_id,
                              m.remote_key.size(), kMaxRemoteKeyBytes));
  }
  Writer w(out);
  w.header(MessageKind::request, m.request_id);
  writeGeometryAndBudget(w, m);
  w.u64(m.region_base);
  w.u64(m.region_length);
  w.u32(static_cast<std::uint32_t>(m.remote_key.size()));
  w.u32(static_cast<std::uint32_t>(m.blocks.size()));
  w.bytes(m.remote_key);
  for (const RequestBlock& b : m.blocks) {
    w.u64(b.id.hi);
    w.u64(b.id.lo);
    w.u64(b.slot_offset);
  }
  w.finish();
  return Status::ok();
}

void encodeCancel(std::uint64_t request_id, std::vector<std::byte>& out) {
  Writer w(out);
  w.header(MessageKind::cancel, request_id);
  w.finish();
}

void encode(const BlockFailedMessage& m, std::vector<std::byte>& out) {
  Writer w(out);
  w.header(MessageKind::block_failed, m.request_id);
  writeBlockOutcome(w, {m.block_index, m.status, m.block, 0}, false);
  w.finish();
}

void encode(const LayerLandedMessage& m, std::vector<std::byte>& out) {
  Writer w(out);
  w.header(MessageKind::layer_landed, m.request_id);
  w.u32(m.layer);
  w.u32(m.blocks);
  w.finish();
}

void encode(const DoneMessage& m, std::vector<std::byte>& out) {
  const std::string_view text = cutText(m.status.message());
  Writer w(out);
  w.header(MessageKind::done, m.request_id);
  w.u8(static_cast<std::uint8_t>(m.status.code()));
  w.u8(0);
  w.u16(static_cast<std::uint16_t>(text.size()));
  w.u32(m.layers_landed);
  w.u32(m.blocks_failed);
  w.text(text);
  w.finish();
}

Result<Header> decodeHeader(std::span<const std::byte> message) {
  Reader r(message);
  Header h;
  DP_TRY_ASSIGN(std::uint64_t version, r.le(1, "version"));
  if (version != kRelayProtocolVersion) {
    return Status(StatusCode::corrupt, fmt::format("relay message: version: {}, expected {}",
                                                   version, kRelayProtocolVersion));
  }
  h.version = static_cast<std::uint8_t>(version);
  DP_TRY_ASSIGN(std::uint64_t kind, r.le(1, "kind"));
  if (kind < static_cast<std::uint8_t>(MessageKind::request) ||
      kind > static_cast<std::uint8_t>(MessageKind::store_outcome)) {
    return Status(StatusCode::corrupt,
                  fmt::format("relay message: kind: {} is not a relay message kind", kind));
  }
  h.kind = static_cast<MessageKind>(kind);
  DP_TRY_ASSIGN(std::uint64_t reserved, r.le(2, "reserved"));
  if (reserved != 0) {
    return Status(StatusCode::corrupt,
                  fmt::format("relay message: reserved: {:#x}, expected 0", reserved));
  }
  DP_TRY_ASSIGN(std::uint64_t bytes, r.le(4, "length"));
  if (bytes != message.size()) {
    return Status(StatusCode::corrupt, fmt::format("relay message: length: {} B declared, {} B "
                                                   "received",
                                                   bytes, message.size()));
  }
  h.bytes = static_cast<std::uint32_t>(bytes);
  DP_TRY_ASSIGN(h.request_id, r.le(8, "request id"));
  return h;
}

Result<RequestMessage> decodeRequest(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::request));
  constexpr std::string_view kKind = "request";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  RequestMessage m;
  m.request_id = header.request_id;
  DP_TRY(readGeometryAndBudget(r, kKind, m));
  DP_TRY_ASSIGN(m.region_base, r.le(8, "region base"));
  DP_TRY_ASSIGN(m.region_length, r.le(8, "region length"));
  DP_TRY_ASSIGN(std::uint64_t key_bytes, r.le(4, "remote key bytes"));
  DP_TRY_ASSIGN(std::uint64_t count, r.le(4, "block count"));
  if (key_bytes == 0 || key_bytes > kMaxRemoteKeyBytes) {
    return fieldError(kKind, "remote key bytes",
                      fmt::format("{}, expected 1 to {}", key_bytes, kMaxRemoteKeyBytes));
  }
  if (count == 0 || count > kMaxRelayBlocks) {
    return fieldError(kKind, "block count",
                      fmt::format("{}, expected 1 to {}", count, kMaxRelayBlocks));
  }
  if (r.remaining() != key_bytes + count * kRequestBlockBytes) {
    return fieldError(
        kKind, "length",
        fmt::format("{} B of key and blocks, expected {} B for a {}-byte key and {} "
                    "blocks",
                    r.remaining(), key_bytes + count * kRequestBlockBytes, key_bytes, count));
  }
  DP_TRY_ASSIGN(auto key, r.bytes(key_bytes, "remote key"));
  m.remote_key.assign(key.begin(), key.end());
  m.blocks.resize(count);
  for (RequestBlock& b : m.blocks) {
    DP_TRY_ASSIGN(b.id.hi, r.le(8, "block id"));
    DP_TRY_ASSIGN(b.id.lo, r.le(8, "block id"));
    DP_TRY_ASSIGN(b.slot_offset, r.le(8, "slot offset"));
  }
  DP_TRY(expectEnd(r, kKind));
  return m;
}

Result<BlockFailedMessage> decodeBlockFailed(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::block_failed));
  constexpr std::string_view kKind = "block_failed";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  DP_TRY_ASSIGN(BlockOutcome o, readBlockOutcome(r, kKind, false, false));
  return BlockFailedMessage{header.request_id, o.index, o.block, std::move(o.status)};
}

Result<LayerLandedMessage> decodeLayerLanded(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::layer_landed));
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  LayerLandedMessage m;
  m.request_id = header.request_id;
  DP_TRY_ASSIGN(std::uint64_t layer, r.le(4, "layer"));
  DP_TRY_ASSIGN(std::uint64_t blocks, r.le(4, "blocks"));
  DP_TRY(expectEnd(r, "layer_landed"));
  m.layer = static_cast<std::uint32_t>(layer);
  m.blocks = static_cast<std::uint32_t>(blocks);
  return m;
}

Result<DoneMessage> decodeDone(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::done));
  constexpr std::string_view kKind = "done";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  DoneMessage m;
  m.request_id = header.request_id;
  DP_TRY_ASSIGN(std::uint64_t raw_code, r.le(1, "status code"));
  DP_TRY_ASSIGN(std::uint64_t reserved, r.le(1, "reserved"));
  DP_TRY_ASSIGN(std::uint64_t text_bytes, r.le(2, "message bytes"));
  DP_TRY_ASSIGN(std::uint64_t layers, r.le(4, "layers landed"));
  DP_TRY_ASSIGN(std::uint64_t failed, r.le(4, "blocks failed"));
  DP_TRY_ASSIGN(StatusCode code, decodeCode(static_cast<std::uint8_t>(raw_code), true, kKind));
  if (reserved != 0)
    return fieldError(kKind, "reserved", fmt::format("{:#x}, expected 0", reserved));
  if (text_bytes > kMaxTextBytes || text_bytes != r.remaining()) {
    return fieldError(
        kKind, "message bytes",
        fmt::format("{}, with {} B left (at most {})", text_bytes, r.remaining(), kMaxTextBytes));
  }
  DP_TRY_ASSIGN(auto text, r.bytes(text_bytes, "message"));
  if (code == StatusCode::ok && text_bytes != 0) {
    return fieldError(kKind, "message bytes", "an ok status carries no message");
  }
  m.status =
      code == StatusCode::ok
          ? Status::ok()
          : Status(code, std::string(reinterpret_cast<const char*>(text.data()), text.size()));
  m.layers_landed = static_cast<std::uint32_t>(layers);
  m.blocks_failed = static_cast<std::uint32_t>(failed);
  return m;
}

Result<std::uint64_t> decodeCancel(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::cancel));
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  DP_TRY(expectEnd(r, "cancel"));
  return header.request_id;
}

Status encode(const HandoffOfferMessage& m, std::vector<std::byte>& out) {
  DP_TRY(checkBlockCount("handoff offer", m.request_id, m.blocks.size()));
  Writer w(out);
  w.header(MessageKind::handoff_offer, m.request_id);
  writeGeometryAndBudget(w, m);
  w.u64(m.first_token);
  w.u32(static_cast<std::uint32_t>(m.blocks.size()));
  w.u32(0);
  for (const HandoffOfferBlock& b : m.blocks) {
    w.u64(b.id.hi);
    w.u64(b.id.lo);
    w.u32(b.tokens);
    w.u32(b.write_back ? kHandoffWriteBack : 0);
  }
  w.finish();
  return Status::ok();
}

Status encode(const HandoffReadyMessage& m, std::vector<std::byte>& out) {
  DP_TRY(checkBlockCount("handoff ready", m.request_id, m.slot_offsets.size()));
  if (m.remote_key.empty() || m.remote_key.size() > kMaxRemoteKeyBytes) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("handoff ready {}: a {}-byte remote key; 1 to {} B fit",
                              m.request_id, m.remote_key.size(), kMaxRemoteKeyBytes));
  }
  Writer w(out);
  w.header(MessageKind::handoff_ready, m.request_id);
  w.u64(m.region_base);
  w.u64(m.region_length);
  w.u32(static_cast<std::uint32_t>(m.remote_key.size()));
  w.u32(static_cast<std::uint32_t>(m.slot_offsets.size()));
  w.bytes(m.remote_key);
  for (std::uint64_t offset : m.slot_offsets) w.u64(offset);
  w.finish();
  return Status::ok();
}

Status encode(const HandoffEndMessage& m, std::vector<std::byte>& out) {
  DP_TRY(checkBlockCount("handoff end", m.request_id, m.checksums.size()));
  Writer w(out);
  w.header(MessageKind::handoff_end, m.request_id);
  w.u32(m.layers);
  w.u32(static_cast<std::uint32_t>(m.checksums.size()));
  for (std::uint64_t checksum : m.checksums) w.u64(checksum);
  w.finish();
  return Status::ok();
}

namespace {

// A block count read from the wire, and that exactly `per_block` bytes per
// block follow.
Result<std::size_t> readBlockCount(const Reader& r, std::uint64_t count, std::size_t per_block,
                                   std::string_view kind) {
  if (count == 0 || count > kMaxRelayBlocks) {
    return fieldError(kind, "block count",
                      fmt::format("{}, expected 1 to {}", count, kMaxRelayBlocks));
  }
  if (r.remaining() != count * per_block) {
    return fieldError(kind, "length",
                      fmt::format("{} B of blocks, expected {} B for {} blocks", r.remaining(),
                                  count * per_block, count));
  }
  return static_cast<std::size_t>(count);
}

}  // namespace

Result<HandoffOfferMessage> decodeHandoffOffer(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::handoff_offer));
  constexpr std::string_view kKind = "handoff_offer";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  HandoffOfferMessage m;
  m.request_id = header.request_id;
  DP_TRY(readGeometryAndBudget(r, kKind, m));
  const std::uint64_t tokens = m.block_tokens;
  DP_TRY_ASSIGN(m.first_token, r.le(8, "first token"));
  DP_TRY_ASSIGN(std::uint64_t count, r.le(4, "block count"));
  DP_TRY_ASSIGN(std::uint64_t reserved, r.le(4, "reserved"));
  if (reserved != 0)
    return fieldError(kKind, "reserved", fmt::format("{:#x}, expected 0", reserved));
  if (m.first_token % tokens != 0) {
    return fieldError(kKind, "first token",
                      fmt::format("{} is not a multiple of {} block tokens", m.first_token, tokens));
  }
  DP_TRY_ASSIGN(std::size_t n, readBlockCount(r, count, kHandoffOfferBlockBytes, kKind));
  m.blocks.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    HandoffOfferBlock& b = m.blocks[i];
    DP_TRY_ASSIGN(b.id.hi, r.le(8, "block id"));
    DP_TRY_ASSIGN(b.id.lo, r.le(8, "block id"));
    DP_TRY_ASSIGN(std::uint64_t block_tokens, r.le(4, "tokens"));
    DP_TRY_ASSIGN(std::uint64_t flags, r.le(4, "flags"));
    const bool last = i + 1 == n;
    if (block_tokens == 0 || block_tokens > tokens || (!last && block_tokens != tokens)) {
      return fieldError(kKind, fmt::format("block {}: tokens", i),
                        fmt::format("{}, expected {}", block_tokens,
                                    last ? fmt::format("1 to {}", tokens) : fmt::format("{}", tokens)));
    }
    if ((flags & ~std::uint64_t{kHandoffWriteBack}) != 0) {
      return fieldError(kKind, fmt::format("block {}: flags", i),
                        fmt::format("{:#x} has unknown bits", flags));
    }
    b.tokens = static_cast<std::uint32_t>(block_tokens);
    b.write_back = (flags & kHandoffWriteBack) != 0;
    if (b.write_back && b.tokens != tokens) {
      return fieldError(kKind, fmt::format("block {}: flags", i),
                        fmt::format("write back on a partial block ({} of {} tokens)", b.tokens,
                                    tokens));
    }
  }
  return m;
}

Result<HandoffReadyMessage> decodeHandoffReady(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::handoff_ready));
  constexpr std::string_view kKind = "handoff_ready";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  HandoffReadyMessage m;
  m.request_id = header.request_id;
  DP_TRY_ASSIGN(m.region_base, r.le(8, "region base"));
  DP_TRY_ASSIGN(m.region_length, r.le(8, "region length"));
  DP_TRY_ASSIGN(std::uint64_t key_bytes, r.le(4, "remote key bytes"));
  DP_TRY_ASSIGN(std::uint64_t count, r.le(4, "block count"));
  if (key_bytes == 0 || key_bytes > kMaxRemoteKeyBytes || r.remaining() < key_bytes) {
    return fieldError(kKind, "remote key bytes",
                      fmt::format("{}, expected 1 to {} within the message's {} B left", key_bytes,
                                  kMaxRemoteKeyBytes, r.remaining()));
  }
  DP_TRY_ASSIGN(auto key, r.bytes(key_bytes, "remote key"));
  m.remote_key.assign(key.begin(), key.end());
  DP_TRY_ASSIGN(std::size_t n, readBlockCount(r, count, 8, kKind));
  m.slot_offsets.resize(n);
  for (std::uint64_t& offset : m.slot_offsets) {
    DP_TRY_ASSIGN(offset, r.le(8, "slot offset"));
  }
  return m;
}

Result<HandoffEndMessage> decodeHandoffEnd(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::handoff_end));
  constexpr std::string_view kKind = "handoff_end";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  HandoffEndMessage m;
  m.request_id = header.request_id;
  DP_TRY_ASSIGN(std::uint64_t layers, r.le(4, "layers put"));
  DP_TRY_ASSIGN(std::uint64_t count, r.le(4, "block count"));
  if (layers == 0) return fieldError(kKind, "layers put", "0");
  DP_TRY_ASSIGN(std::size_t n, readBlockCount(r, count, 8, kKind));
  m.layers = static_cast<std::uint32_t>(layers);
  m.checksums.resize(n);
  for (std::uint64_t& checksum : m.checksums) {
    DP_TRY_ASSIGN(checksum, r.le(8, "checksum"));
  }
  return m;
}

Status encode(const StoreReadMessage& m, std::vector<std::byte>& out) {
  DP_TRY(checkBlockCount("store read", m.request_id, m.blocks.size()));
  Writer w(out);
  w.header(MessageKind::store_read, m.request_id);
  writeGeometryAndBudget(w, m);
  w.u32(static_cast<std::uint32_t>(m.blocks.size()));
  w.u32(0);
  for (const BlockId& id : m.blocks) {
    w.u64(id.hi);
    w.u64(id.lo);
  }
  w.finish();
  return Status::ok();
}

void encode(const StoreWriteMessage& m, std::vector<std::byte>& out) {
  Writer w(out);
  w.header(MessageKind::store_write, m.request_id);
  writeGeometryAndBudget(w, m);
  w.u64(m.block.hi);
  w.u64(m.block.lo);
  w.u64(m.checksum);
  w.finish();
}

void encode(const StoreOutcomeMessage& m, std::vector<std::byte>& out) {
  Writer w(out);
  w.header(MessageKind::store_outcome, m.request_id);
  writeBlockOutcome(w, {m.block_index, m.status, m.block, m.checksum}, true);
  w.finish();
}

Result<StoreReadMessage> decodeStoreRead(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::store_read));
  constexpr std::string_view kKind = "store_read";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  StoreReadMessage m;
  m.request_id = header.request_id;
  DP_TRY(readGeometryAndBudget(r, kKind, m));
  DP_TRY_ASSIGN(std::uint64_t count, r.le(4, "block count"));
  DP_TRY_ASSIGN(std::uint64_t reserved, r.le(4, "reserved"));
  if (reserved != 0)
    return fieldError(kKind, "reserved", fmt::format("{:#x}, expected 0", reserved));
  DP_TRY_ASSIGN(std::size_t n, readBlockCount(r, count, 16, kKind));
  m.blocks.resize(n);
  for (BlockId& id : m.blocks) {
    DP_TRY_ASSIGN(id.hi, r.le(8, "block id"));
    DP_TRY_ASSIGN(id.lo, r.le(8, "block id"));
  }
  return m;
}

Result<StoreWriteMessage> decodeStoreWrite(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::store_write));
  constexpr std::string_view kKind = "store_write";
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  StoreWriteMessage m;
  m.request_id = header.request_id;
  DP_TRY(readGeometryAndBudget(r, kKind, m));
  DP_TRY_ASSIGN(m.block.hi, r.le(8, "block id"));
  DP_TRY_ASSIGN(m.block.lo, r.le(8, "block id"));
  DP_TRY_ASSIGN(m.checksum, r.le(8, "checksum"));
  DP_TRY(expectEnd(r, kKind));
  return m;
}

Result<StoreOutcomeMessage> decodeStoreOutcome(std::span<const std::byte> message) {
  DP_TRY_ASSIGN(Header header, expectKind(message, MessageKind::store_outcome));
  Reader r(message.subspan(kHeaderBytes), kHeaderBytes);
  DP_TRY_ASSIGN(BlockOutcome o, readBlockOutcome(r, "store_outcome", true, true));
  return StoreOutcomeMessage{header.request_id, o.index, o.block, std::move(o.status), o.checksum};
}

}  // namespace dualpath::loader::relay
