#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include <fmt/format.h>
#include <xxhash.h>

#include <dualpath/common/log.h>
#include <dualpath/common/params.h>
#include <dualpath/loader/kv_handoff.h>

#include "relay_channel.h"
#include "relay_protocol.h"

namespace dualpath::loader {

static_assert(kMaxHandoffBlocks == relay::kMaxRelayBlocks);

namespace {

using transport::Endpoint;
using transport::Request;

// Puts a sender keeps in flight; the endpoint's request pool is the hard
// limit, this leaves room for the control messages.
constexpr std::size_t kMaxPutsInFlight = 24;
constexpr std::size_t kReceiveWindow = 4;

std::uint64_t carriedBytesPerLayer(const ModelSpec& model, std::uint32_t tokens) {
  return std::uint64_t{tokens} * model.kv_bytes_per_token_per_layer;
}

// XXH3-64 of what a handoff carries for one block: the first `tokens` tokens
// of every layer, layer by layer. For a full block these are the whole Full
// Block, so this is its payload checksum (block_format.h).
std::uint64_t carriedChecksum(const ModelSpec& model, const std::byte* full_block,
                              std::uint32_t tokens) {
  XXH3_state_t* state = XXH3_createState();
  if (state == nullptr) return 0;  // only on allocation failure: the check then fails
  XXH3_64bits_reset(state);
  const std::uint64_t per_layer = carriedBytesPerLayer(model, tokens);
  for (std::uint32_t layer = 0; layer < model.layers; ++layer) {
    XXH3_64bits_update(state, full_block + layerBlockRange(model, layer).offset, per_layer);
  }
  const std::uint64_t checksum = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return checksum;
}


std::uint32_t budgetMs(Deadline deadline, Clock::time_point now) {
  const auto budget = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return static_cast<std::uint32_t>(
      std::clamp<std::int64_t>(budget, 0, std::numeric_limits<std::uint32_t>::max()));
}

// Both ends check the model geometry they were given against the store's or
// the peer's.
bool sameGeometry(const ModelSpec& a, std::uint32_t layers, std::uint32_t tokens,
                  std::uint32_t bytes) {
  return a.layers == layers && a.block_tokens == tokens && a.kv_bytes_per_token_per_layer == bytes;
}

}  // namespace

Result<HandoffRequest> missTokenHandoff(std::uint64_t request_id, std::span<const TokenId> tokens,
                                        std::uint64_t hit_tokens, const ModelSpec& model,
                                        std::span<const std::uint64_t> source_offsets,
                                        Deadline deadline) {
  DP_TRY(validateBlockGeometry(model));
  const std::uint32_t b = model.block_tokens;
  const std::string who = fmt::format("handoff {}", request_id);
  if (hit_tokens % b != 0) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: {} cached tokens is not a multiple of {} block tokens", who,
                              hit_tokens, b));
  }
  if (hit_tokens >= tokens.size()) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: {} cached tokens of {}: no miss token to hand off", who,
                              hit_tokens, tokens.size()));
  }
  const std::uint64_t first_block = hit_tokens / b;
  const std::uint64_t end_block = (tokens.size() + b - 1) / b;
  if (source_offsets.size() != end_block - first_block) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("{}: {} PE buffer offsets for the {} blocks of tokens [{}, {})", who,
                              source_offsets.size(), end_block - first_block, hit_tokens,
                              tokens.size()));
  }
  const std::vector<BlockId> ids = blockIds(tokens, b);
  HandoffRequest request{
      .request_id = request_id, .first_token = hit_tokens, .blocks = {}, .deadline = deadline};
  for (std::uint64_t k = first_block; k < end_block; ++k) {
    const bool full = k < ids.size();
    request.blocks.push_back(HandoffBlock{
        .id = full ? ids[k] : BlockId{},
        .tokens = static_cast<std::uint32_t>(std::min<std::uint64_t>(b, tokens.size() - k * b)),
        .write_back = full,
        .source_offset = source_offsets[k - first_block]});
  }
  return request;
}

// ============================================================== the sender

struct HandoffSender::State {
  enum class Phase {
    offered,  // waiting for the DE's slots
    putting,  // puts of the saved layers
    ending,   // handoff_end sent: waiting for the DE's verdict
  };
  struct Put {
    Request* request;
    std::uint64_t bytes;
    bool done;
  };
  struct Handoff {
    HandoffRequest request;
    Phase phase = Phase::offered;
    std::uint32_t layers_saved = 0;
    std::uint32_t post_layer = 0;
    std::size_t post_block = 0;
    std::vector<std::uint64_t> de_slots;
    const transport::RemoteRegion* remote = nullptr;
    std::deque<Put> puts;
    Status stopping;      // why no more puts go (deadline, put error, the DE's done)
    bool de_done = false;  // the DE ended it: nothing more will come
    HandoffOutcome outcome;
  };

  BufferPool& pool;
  ModelSpec model;
  std::string peer;
  std::unique_ptr<transport::MemoryRegion> region;
  // The DE region last imported: every handoff names the same one.
  std::vector<std::byte> remote_key;
  std::uint64_t remote_base = 0;
  std::uint64_t remote_length = 0;
  std::unique_ptr<transport::RemoteRegion> remote;
  std::map<std::uint64_t, Handoff> handoffs;
  // Ended here before the DE's done arrived (cancelled, or past the
  // deadline): their late messages are expected and dropped.
  std::set<std::uint64_t> retired;
  relay::Outbox outbox{relay::kControlTag};
  relay::Inbox inbox{relay::kNoticeTag, kReceiveWindow, relay::kMaxHandoffNoticeBytes};
  HandoffSenderCounters counters;
  Status failure;
  // Last: destroyed first, so that closing it stops every put before the
  // registration goes.
  std::unique_ptr<Endpoint> endpoint;

  State(BufferPool& p, ModelSpec m) : pool(p), model(std::move(m)) {}

  std::string where(std::uint64_t id) const {
    return fmt::format("handoff {} to DE {}", id, peer);
  }

  Status protocolError(std::string text) const {
    return Status(StatusCode::corrupt,
                  fmt::format("kv handoff: message from DE {}: {}", peer, std::move(text)));
  }

  void end(std::map<std::uint64_t, Handoff>::iterator it, Status status,
           std::vector<HandoffOutcome>& ended, bool await_de) {
    Handoff& h = it->second;
    if (h.outcome.status.isOk()) h.outcome.status = std::move(status);
    if (h.outcome.status.isOk()) {
      ++counters.handoffs_ok;
    } else {
      ++counters.handoffs_failed;
      DP_LOG_INFO("kv handoff: {}", h.outcome.status.message());
    }
    if (await_de) retired.insert(it->first);
    ended.push_back(std::move(h.outcome));
    handoffs.erase(it);
  }

  Result<const transport::RemoteRegion*> importRemote(const relay::HandoffReadyMessage& m) {
    if (!remote || remote_key != m.remote_key || remote_base != m.region_base ||
        remote_length != m.region_length) {
      remote.reset();
      DP_TRY_ASSIGN(remote, endpoint->importRemote(m.remote_key, m.region_base, m.region_length));
      remote_key = m.remote_key;
      remote_base = m.region_base;
      remote_length = m.region_length;
    }
    return remote.get();
  }

  Status onReady(Handoff& h, const relay::HandoffReadyMessage& m) {
    const std::uint64_t id = h.request.request_id;
    if (h.phase != Phase::offered) {
      return protocolError(fmt::format("{}: handoff_ready twice", where(id)));
    }
    if (m.slot_offsets.size() != h.request.blocks.size()) {
      return protocolError(fmt::format("{}: handoff_ready names {} slots for {} blocks", where(id),
                                       m.slot_offsets.size(), h.request.blocks.size()));
    }
    const std::uint64_t full = model.fullBlockBytes();
    for (std::size_t i = 0; i < m.slot_offsets.size(); ++i) {
      if (m.slot_offsets[i] > m.region_length || m.region_length - m.slot_offsets[i] < full) {
        return protocolError(fmt::format("{}: block {}: DE slot offset {} + {} B overruns the "
                                         "{}-byte DE buffer",
                                         where(id), i, m.slot_offsets[i], full, m.region_length));
      }
    }
    DP_TRY_ASSIGN(h.remote, importRemote(m));
    h.de_slots = m.slot_offsets;
    h.phase = Phase::putting;
    return Status::ok();
  }

  Status onMessage(std::span<const std::byte> message) {
    Result<relay::Header> header = relay::decodeHeader(message);
    if (!header) return protocolError(header.status().message());
    const std::uint64_t id = header->request_id;
    auto it = handoffs.find(id);
    if (it == handoffs.end()) {
      if (!retired.contains(id)) {
        return protocolError(fmt::format("request id {}: no such handoff in flight", id));
      }
      if (header->kind == relay::MessageKind::done) retired.erase(id);
      return Status::ok();
    }
    Handoff& h = it->second;
    switch (header->kind) {
      case relay::MessageKind::handoff_ready: {
        Result<relay::HandoffReadyMessage> ready = relay::decodeHandoffReady(message);
        if (!ready) return protocolError(ready.status().message());
        if (!h.stopping.isOk()) return Status::ok();  // cancelled meanwhile: nothing goes
        return onReady(h, *ready);
      }
      case relay::MessageKind::block_failed: {
        Result<relay::BlockFailedMessage> failed = relay::decodeBlockFailed(message);
        if (!failed) return protocolError(failed.status().message());
        if (failed->block_index >= h.request.blocks.size()) {
          return protocolError(fmt::format("{}: block_failed for block {} of {}", where(id),
                                           failed->block_index, h.request.blocks.size()));
        }
        h.outcome.failed.push_back(HandoffOutcome::FailedBlock{
            failed->block_index, failed->block, std::move(failed->status)});
        return Status::ok();
      }
      case relay::MessageKind::done: {
        Result<relay::DoneMessage> done = relay::decodeDone(message);
        if (!done) return protocolError(done.status().message());
        h.de_done = true;
        if (h.outcome.status.isOk() && !done->status.isOk()) {
          h.outcome.status = std::move(done->status);
        }
        if (h.stopping.isOk()) {
          h.stopping = Status(StatusCode::remote, fmt::format("{}: the DE ended it", where(id)));
        }
        h.outcome.blocks_written = done->layers_landed;  // the DE's count of blocks stored
        return Status::ok();
      }
      default:
        return protocolError(fmt::format("{}: kind {} is not a DE -> PE handoff message",
                                         where(id), relay::kindName(header->kind)));
    }
  }

  // Completed puts, then more puts of the saved layers. An error only when
  // the connection is lost.
  Status advancePuts(Handoff& h) {
    const std::uint64_t id = h.request.request_id;
    for (Put& put : h.puts) {
      if (put.done) continue;
      Status s = transport::test(put.request, &put.done, {});
      if (!s.isOk()) {
        put.done = true;
        if (relay::connectionLost(s)) return s;
        if (h.stopping.isOk()) h.stopping = std::move(s).withContext(fmt::format("{}: put", where(id)));
        continue;
      }
      if (put.done) counters.bytes_put += put.bytes;
    }
    while (!h.puts.empty() && h.puts.front().done) h.puts.pop_front();
    while (h.stopping.isOk() && h.post_layer < h.layers_saved && h.puts.size() < kMaxPutsInFlight) {
      const HandoffBlock& block = h.request.blocks[h.post_block];
      const std::uint64_t layer_offset = layerBlockRange(model, h.post_layer).offset;
      const std::uint64_t bytes = carriedBytesPerLayer(model, block.tokens);
      const std::byte* local = pool.region().data() + block.source_offset + layer_offset;
      Result<Request*> put = endpoint->postPut(local, bytes, region.get(), *h.remote,
                                               h.de_slots[h.post_block] + layer_offset);
      if (!put) {
        if (put.status().code() == StatusCode::again) break;
        if (relay::connectionLost(put.status())) return std::move(put).status();
        h.stopping = std::move(put).status().withContext(
            fmt::format("{}: block {} (index {}): put of layer {}", where(id), block.id.toHex(),
                        h.post_block, h.post_layer));
        break;
      }
      h.puts.push_back(Put{*put, bytes, false});
      if (++h.post_block == h.request.blocks.size()) {
        h.post_block = 0;
        ++h.post_layer;
      }
    }
    return Status::ok();
  }

  void sendEnd(Handoff& h) {
    relay::HandoffEndMessage m{
        .request_id = h.request.request_id, .layers = model.layers, .checksums = {}};
    for (const HandoffBlock& block : h.request.blocks) {
      m.checksums.push_back(
          carriedChecksum(model, pool.region().data() + block.source_offset, block.tokens));
    }
    std::vector<std::byte> bytes;
    // Counts were checked at start(); encode cannot refuse them.
    if (Status encoded = relay::encode(m, bytes); encoded.isOk()) outbox.push(std::move(bytes));
    h.phase = Phase::ending;
  }

  void sendCancel(std::uint64_t id) {
    std::vector<std::byte> bytes;
    relay::encodeCancel(id, bytes);
    outbox.push(std::move(bytes));
  }

  Status step(std::vector<HandoffOutcome>& ended) {
    DP_TRY(inbox.pump(*endpoint, [this](std::span<const std::byte> m) { return onMessage(m); }));
    const Clock::time_point now = Clock::now();
    for (auto it = handoffs.begin(); it != handoffs.end();) {
      auto current = it++;
      Handoff& h = current->second;
      const std::uint64_t id = current->first;
      if (h.phase == Phase::putting) DP_TRY(advancePuts(h));
      if (h.stopping.isOk() && now >= h.request.deadline && h.phase != Phase::ending) {
        h.stopping = Status(
            StatusCode::timeout,
            fmt::format("{}: the deadline passed after {} of {} layers were put", where(id),
                        h.post_layer, model.layers));
      }
      if (h.phase == Phase::ending) {
        if (h.de_done) {
          end(current, Status::ok(), ended, false);
        } else if (now >= h.request.deadline) {
          end(current,
              Status(StatusCode::timeout,
                     fmt::format("{}: the DE did not confirm the write-back by the deadline; "
                                 "its new blocks may or may not be stored",
                                 where(id))),
              ended, true);
        }
        continue;
      }
      if (!h.stopping.isOk()) {
        // Stopped: once our puts are quiet the DE may release its slots. A DE
        // that already ended the handoff ignores the cancel, or (after its
        // own deadline) was waiting for it.
        if (!h.puts.empty()) continue;
        sendCancel(id);
        end(current, h.stopping, ended, !h.de_done);
        continue;
      }
      if (h.phase == Phase::putting && h.post_layer == model.layers && h.puts.empty()) {
        sendEnd(h);
      }
    }
    return outbox.pump(*endpoint);
  }

  void fail(Status why, std::vector<HandoffOutcome>& ended) {
    failure = std::move(why).withContext(fmt::format("kv handoff sender for DE {}", peer));
    DP_LOG_WARN("{}", failure.message());
    endpoint.reset();  // the fence: no put reads our buffer after this
    inbox.drop();
    outbox.drop();
    for (auto& [id, h] : handoffs) {
      if (h.outcome.status.isOk()) {
        h.outcome.status = Status(failure.code(),
                                  fmt::format("{}: {}", where(id), failure.message()));
      }
      ++counters.handoffs_failed;
      ended.push_back(std::move(h.outcome));
    }
    handoffs.clear();
    retired.clear();
  }

  Status validate(const HandoffRequest& q) const {
    const std::string who = where(q.request_id);
    const std::size_t n = q.blocks.size();
    if (n == 0 || n > kMaxHandoffBlocks) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: {} blocks; 1 to {} fit one handoff", who, n, kMaxHandoffBlocks));
    }
    if (q.first_token % model.block_tokens != 0) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: first token {} is not a multiple of {} block tokens", who,
                                q.first_token, model.block_tokens));
    }
    const std::uint64_t full = model.fullBlockBytes();
    const std::uint64_t length = pool.region().size();
    for (std::size_t i = 0; i < n; ++i) {
      const HandoffBlock& b = q.blocks[i];
      const std::string block = fmt::format("{}: block {} (index {})", who, b.id.toHex(), i);
      const bool last = i + 1 == n;
      if (b.tokens == 0 || b.tokens > model.block_tokens || (!last && b.tokens != model.block_tokens)) {
        return Status(StatusCode::invalid_argument,
                      fmt::format("{}: {} tokens; a block holds {}{}", block, b.tokens,
                                  model.block_tokens, last ? "" : " and only the last may hold fewer"));
      }
      if (b.write_back && b.tokens != model.block_tokens) {
        return Status(StatusCode::invalid_argument,
                      fmt::format("{}: write back of a partial block ({} of {} tokens)", block,
                                  b.tokens, model.block_tokens));
      }
      if (b.source_offset > length || length - b.source_offset < full) {
        return Status(StatusCode::invalid_argument,
                      fmt::format("{}: source offset {} + {} B overruns the {}-byte PE buffer '{}'",
                                  block, b.source_offset, full, length, pool.name()));
      }
    }
    return Status::ok();
  }
};

Result<std::unique_ptr<HandoffSender>> HandoffSender::create(std::unique_ptr<Endpoint> endpoint,
                                                             BufferPool& pool,
                                                             const ModelSpec& model) {
  if (!endpoint) return Status(StatusCode::invalid_usage, "kv handoff sender: no endpoint");
  const std::string who = fmt::format("kv handoff sender for DE {}", endpoint->peerName());
  DP_TRY(relay::checkPool(pool, model, who));
  DP_TRY_ASSIGN(relay::RegisteredPool registered,
                relay::registerPool(*endpoint, pool, who, /*pack_key=*/false));
  auto state = std::make_unique<State>(pool, model);
  state->peer = endpoint->peerName();
  state->region = std::move(registered.region);
  state->endpoint = std::move(endpoint);
  return std::unique_ptr<HandoffSender>(new HandoffSender(std::move(state)));
}

HandoffSender::HandoffSender(std::unique_ptr<State> state) : state_(std::move(state)) {}
HandoffSender::~HandoffSender() = default;

Status HandoffSender::start(HandoffRequest request) {
  State& s = *state_;
  if (!s.failure.isOk()) return s.failure;
  const std::uint64_t id = request.request_id;
  if (s.handoffs.contains(id) || s.retired.contains(id)) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("{}: a handoff of that id is in flight", s.where(id)));
  }
  if (s.handoffs.size() >= kMaxHandoffsInFlight) {
    return Status(StatusCode::again, fmt::format("kv handoff sender for DE {}: {} handoffs in flight",
                                                 s.peer, s.handoffs.size()));
  }
  DP_TRY(s.validate(request));
  relay::HandoffOfferMessage m{.request_id = id,
                               .layers = s.model.layers,
                               .block_tokens = s.model.block_tokens,
                               .kv_bytes_per_token_per_layer = s.model.kv_bytes_per_token_per_layer,
                               .budget_ms = budgetMs(request.deadline, Clock::now()),
                               .first_token = request.first_token,
                               .blocks = {}};
  for (const HandoffBlock& b : request.blocks) {
    m.blocks.push_back(relay::HandoffOfferBlock{b.id, b.tokens, b.write_back});
  }
  std::vector<std::byte> bytes;
  DP_TRY(relay::encode(m, bytes));
  s.outbox.push(std::move(bytes), id, relay::MessageKind::handoff_offer);
  State::Handoff h;
  h.outcome.request_id = id;
  h.request = std::move(request);
  s.handoffs.emplace(id, std::move(h));
  ++s.counters.handoffs;
  return Status::ok();
}

Status HandoffSender::layersSaved(std::uint64_t request_id, std::uint32_t layers) {
  State& s = *state_;
  auto it = s.handoffs.find(request_id);
  if (it == s.handoffs.end()) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("{}: layersSaved: no such handoff in flight", s.where(request_id)));
  }
  if (layers > s.model.layers) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("{}: layersSaved({}): the model has {} layers", s.where(request_id),
                              layers, s.model.layers));
  }
  it->second.layers_saved = std::max(it->second.layers_saved, layers);
  return Status::ok();
}

Status HandoffSender::poll(std::vector<HandoffOutcome>& ended) {
  State& s = *state_;
  if (!s.failure.isOk()) return s.failure;
  if (Status step = s.step(ended); !step.isOk()) s.fail(std::move(step), ended);
  return s.failure;
}

std::size_t HandoffSender::handoffsInFlight() const noexcept {
  return state_->handoffs.size();
}
HandoffSenderCounters HandoffSender::counters() const noexcept {
  return state_->counters;
}
const std::string& HandoffSender::peerName() const noexcept {
  return state_->peer;
}

// ============================================================== the receiver

struct HandoffReceiver::State {
  enum class Phase {
    waiting,  // for DE buffer slots
    ready,    // slots offered to the PE: its puts may land there
  };
  struct Handoff {
    relay::HandoffOfferMessage offer;
    Deadline deadline;
    Phase phase = Phase::waiting;
    std::vector<BufferLease> slots;
  };

  BlockStore& store;
  BufferPool& pool;
  ModelSpec model;
  std::chrono::milliseconds cancel_grace;
  std::string peer;
  std::unique_ptr<transport::MemoryRegion> region;
  std::vector<std::byte> remote_key;
  // Offers in arrival order: slots go to the oldest first.
  std::deque<std::uint64_t> order;
  std::map<std::uint64_t, Handoff> handoffs;
  relay::Outbox outbox{relay::kNoticeTag};
  relay::Inbox inbox{relay::kControlTag, kReceiveWindow, relay::kMaxHandoffControlBytes};
  HandoffReceiverCounters counters;
  Status failure;
  // Last: destroyed first, so that closing it stops every put into our
  // buffer before the slots and the registration go.
  std::unique_ptr<Endpoint> endpoint;

  State(BlockStore& st, BufferPool& p, ModelSpec m, std::chrono::milliseconds grace)
      : store(st), pool(p), model(std::move(m)), cancel_grace(grace) {}

  std::string where(std::uint64_t id) const {
    return fmt::format("handoff {} from PE {}", id, peer);
  }

  void sendDone(std::uint64_t id, Status status, std::uint32_t written, std::uint32_t failed) {
    if (!status.isOk()) {
      ++counters.handoffs_failed;
      DP_LOG_INFO("kv handoff: {}", status.message());
    }
    std::vector<std::byte> bytes;
    relay::encode(relay::DoneMessage{id, std::move(status), written, failed}, bytes);
    outbox.push(std::move(bytes));
  }

  void sendBlockFailed(std::uint64_t id, std::size_t index, const BlockId& block, Status status) {
    ++counters.blocks_failed;
    std::vector<std::byte> bytes;
    relay::encode(relay::BlockFailedMessage{id, static_cast<std::uint32_t>(index), block,
                                            std::move(status)},
                  bytes);
    outbox.push(std::move(bytes));
  }

  void erase(std::uint64_t id) {
    handoffs.erase(id);
    order.erase(std::remove(order.begin(), order.end(), id), order.end());
  }

  Status validate(const relay::HandoffOfferMessage& m) const {
    if (!sameGeometry(model, m.layers, m.block_tokens, m.kv_bytes_per_token_per_layer)) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: the PE's model is {}, this DE holds '{}' ({})",
                                where(m.request_id),
                                relay::geometry(m.layers, m.block_tokens,
                                                m.kv_bytes_per_token_per_layer),
                                model.name,
                                relay::geometry(model.layers, model.block_tokens,
                                                model.kv_bytes_per_token_per_layer)));
    }
    if (m.blocks.size() > pool.slots()) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: {} blocks, but the DE buffer '{}' has {} slots",
                                where(m.request_id), m.blocks.size(), pool.name(), pool.slots()));
    }
    return Status::ok();
  }

  // Verifies every block against the PE's checksums, then writes back the new
  // ones. Gives the KV to the DE engine unless a block did not verify.
  void conclude(std::uint64_t id, Handoff& h, const relay::HandoffEndMessage& end,
                std::vector<HandoffArrival>& arrived) {
    const std::size_t n = h.offer.blocks.size();
    if (end.layers != model.layers || end.checksums.size() != n) {
      sendDone(id,
               Status(StatusCode::corrupt,
                      fmt::format("{}: handoff_end for {} layers and {} blocks; expected {} and {}",
                                  where(id), end.layers, end.checksums.size(), model.layers, n)),
               0, static_cast<std::uint32_t>(n));
      return;
    }
    Status first_problem;
    std::uint32_t failed = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const relay::HandoffOfferBlock& b = h.offer.blocks[i];
      const std::uint64_t landed = carriedChecksum(model, h.slots[i].bytes().data(), b.tokens);
      if (landed == end.checksums[i]) continue;
      Status bad(StatusCode::corrupt,
                 fmt::format("{}: block {} (index {}): the KV that landed has checksum {:016x}, "
                             "the PE's has {:016x}",
                             where(id), b.id.toHex(), i, landed, end.checksums[i]));
      if (first_problem.isOk()) first_problem = bad;
      sendBlockFailed(id, i, b.id, std::move(bad));
      ++failed;
    }
    if (failed != 0) {
      // Decode cannot continue from KV with a hole: nothing is kept or written.
      sendDone(id, std::move(first_problem), 0, failed);
      return;
    }
    HandoffArrival arrival{
        .request_id = id, .peer = peer, .first_token = h.offer.first_token, .blocks = {}};
    std::uint32_t written = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const relay::HandoffOfferBlock& b = h.offer.blocks[i];
      bool stored = false;
      if (b.write_back) {
        Status write = store.write(b.id, h.slots[i].bytes().first(model.fullBlockBytes()));
        if (write.isOk()) {
          stored = true;
          ++written;
          ++counters.blocks_written;
        } else {
          Status failed_write = std::move(write).withContext(
              fmt::format("{}: block {} (index {}): write-back", where(id), b.id.toHex(), i));
          if (first_problem.isOk()) first_problem = failed_write;
          sendBlockFailed(id, i, b.id, std::move(failed_write));
          ++failed;
        }
      }
      arrival.blocks.push_back(HandoffArrival::Block{
          .id = b.id, .tokens = b.tokens, .slot = std::move(h.slots[i]), .written = stored});
    }
    sendDone(id, std::move(first_problem), written, failed);
    ++counters.arrivals;
    arrived.push_back(std::move(arrival));
  }

  Status onMessage(std::span<const std::byte> message, std::vector<HandoffArrival>& arrived) {
    const std::uint64_t raw_id = relay::rawRequestId(message);
    Result<relay::Header> header = relay::decodeHeader(message);
    if (!header) {
      DP_LOG_WARN("kv handoff: from PE {}: {}", peer, header.status().message());
      sendDone(raw_id, std::move(header).status().withContext(where(raw_id)), 0, 0);
      return Status::ok();
    }
    const std::uint64_t id = header->request_id;
    auto it = handoffs.find(id);
    switch (header->kind) {
      case relay::MessageKind::handoff_offer: {
        Result<relay::HandoffOfferMessage> offer = relay::decodeHandoffOffer(message);
        if (!offer) {
          DP_LOG_WARN("kv handoff: {}: {}", where(id), offer.status().message());
          sendDone(id, std::move(offer).status().withContext(where(id)), 0, 0);
          return Status::ok();
        }
        if (it != handoffs.end()) {
          sendDone(id,
                   Status(StatusCode::invalid_usage,
                          fmt::format("{}: offered while a handoff of that id is open", where(id))),
                   0, 0);
          return Status::ok();
        }
        if (Status bad = validate(*offer); !bad.isOk()) {
          sendDone(id, std::move(bad), 0, 0);
          return Status::ok();
        }
        ++counters.offers;
        Handoff h;
        h.deadline = Clock::now() + std::chrono::milliseconds(offer->budget_ms);
        h.offer = std::move(offer).value();
        handoffs.emplace(id, std::move(h));
        order.push_back(id);
        return Status::ok();
      }
      case relay::MessageKind::cancel: {
        if (Result<std::uint64_t> ok = relay::decodeCancel(message); !ok) {
          DP_LOG_WARN("kv handoff: {}: {}", where(id), ok.status().message());
          return Status::ok();
        }
        if (it == handoffs.end()) return Status::ok();  // it crossed our done
        // The PE's puts have stopped: the slots are ours again.
        sendDone(id, Status(StatusCode::timeout, fmt::format("{}: cancelled by the PE", where(id))),
                 0, 0);
        erase(id);
        return Status::ok();
      }
      case relay::MessageKind::handoff_end: {
        Result<relay::HandoffEndMessage> end = relay::decodeHandoffEnd(message);
        if (it == handoffs.end() || it->second.phase == Phase::waiting) {
          DP_LOG_WARN("kv handoff: {}: handoff_end without slots offered", where(id));
          if (it == handoffs.end()) return Status::ok();
          sendDone(id,
                   Status(StatusCode::corrupt,
                          fmt::format("{}: handoff_end before handoff_ready", where(id))),
                   0, 0);
          erase(id);
          return Status::ok();
        }
        if (!end) {
          sendDone(id, std::move(end).status().withContext(where(id)), 0, 0);
        } else {
          conclude(id, it->second, *end, arrived);
        }
        erase(id);
        return Status::ok();
      }
      default: {
        Status wrong(StatusCode::corrupt,
                     fmt::format("{}: relay message: kind: {} is not a PE -> DE handoff message",
                                 where(id), relay::kindName(header->kind)));
        DP_LOG_WARN("kv handoff: {}", wrong.message());
        sendDone(id, std::move(wrong), 0, 0);
        return Status::ok();
      }
    }
  }

  // Slots for the waiting offers, oldest first, all or nothing per offer so
  // that offers waiting for slots cannot deadlock each other.
  Status offerSlots(Clock::time_point now) {
    for (std::uint64_t id : std::vector<std::uint64_t>(order.begin(), order.end())) {
      Handoff& h = handoffs.at(id);
      if (h.phase != Phase::waiting) continue;
      if (now >= h.deadline) {
        sendDone(id,
                 Status(StatusCode::timeout,
                        fmt::format("{}: the budget ran out while waiting for DE buffer '{}'",
                                    where(id), pool.name())),
                 0, 0);
        erase(id);
        continue;
      }
      const std::size_t n = h.offer.blocks.size();
      if (pool.available() < n) break;
      for (std::size_t i = 0; i < n; ++i) {
        Result<BufferLease> lease = pool.acquire();
        if (!lease) break;  // someone else took one meanwhile
        h.slots.push_back(std::move(lease).value());
      }
      if (h.slots.size() < n) {
        h.slots.clear();
        break;
      }
      relay::HandoffReadyMessage ready{.request_id = id,
                                       .region_base =
                                           reinterpret_cast<std::uint64_t>(pool.region().data()),
                                       .region_length = pool.region().size(),
                                       .remote_key = remote_key,
                                       .slot_offsets = {}};
      for (const BufferLease& slot : h.slots) ready.slot_offsets.push_back(slot.offset());
      std::vector<std::byte> bytes;
      DP_TRY(relay::encode(ready, bytes));
      outbox.push(std::move(bytes));
      h.phase = Phase::ready;
    }
    return Status::ok();
  }

  Status step(std::vector<HandoffArrival>& arrived) {
    DP_TRY(inbox.pump(*endpoint,
                      [&](std::span<const std::byte> m) { return onMessage(m, arrived); }));
    const Clock::time_point now = Clock::now();
    DP_TRY(offerSlots(now));
    for (const auto& [id, h] : handoffs) {
      // A PE cancels at its deadline once its puts are quiet; one that has
      // not, cancel_grace later, is stuck, and its puts may still land in
      // the slots: only closing the connection makes them safe to reuse.
      if (h.phase == Phase::ready && now >= h.deadline + cancel_grace) {
        return Status(StatusCode::timeout,
                      fmt::format("{}: no end or cancel from the PE {} ms after its deadline",
                                  where(id), cancel_grace.count()));
      }
    }
    return outbox.pump(*endpoint);
  }

  void fail(Status why) {
    failure = std::move(why).withContext(fmt::format("kv handoff receiver for PE {}", peer));
    DP_LOG_WARN("{}", failure.message());
    endpoint.reset();  // the fence: nothing lands in our buffer after this
    inbox.drop();
    outbox.drop();
    counters.handoffs_failed += handoffs.size();
    handoffs.clear();
    order.clear();
  }
};

Result<std::unique_ptr<HandoffReceiver>> HandoffReceiver::create(
    std::unique_ptr<Endpoint> endpoint, BlockStore& store, BufferPool& pool,
    const ModelSpec& model, HandoffReceiverOptions options) {
  if (!endpoint) return Status(StatusCode::invalid_usage, "kv handoff receiver: no endpoint");
  const std::string who = fmt::format("kv handoff receiver for PE {}", endpoint->peerName());
  DP_TRY(relay::checkPool(pool, model, who));
  if (options.cancel_grace.count() < 0) {
    return Status(StatusCode::invalid_argument, fmt::format("{}: cancel_grace is negative", who));
  }
  DP_TRY(relay::checkStore(store, model, who, "handoff carries"));
  DP_TRY_ASSIGN(relay::RegisteredPool registered,
                relay::registerPool(*endpoint, pool, who, /*pack_key=*/true));
  auto state = std::make_unique<State>(store, pool, model, options.cancel_grace.count() > 0 ? options.cancel_grace : relay::defaultCancelGrace());
  state->peer = endpoint->peerName();
  state->remote_key = std::move(registered.remote_key);
  state->region = std::move(registered.region);
  state->endpoint = std::move(endpoint);
  return std::unique_ptr<HandoffReceiver>(new HandoffReceiver(std::move(state)));
}

HandoffReceiver::HandoffReceiver(std::unique_ptr<State> state) : state_(std::move(state)) {}
HandoffReceiver::~HandoffReceiver() = default;

Status HandoffReceiver::poll(std::vector<HandoffArrival>& arrived) {
  State& s = *state_;
  if (!s.failure.isOk()) return s.failure;
  if (Status step = s.step(arrived); !step.isOk()) s.fail(std::move(step));
  return s.failure;
}

HandoffReceiverCounters HandoffReceiver::counters() const noexcept {
  return state_->counters;
}
const std::string& HandoffReceiver::peerName() const noexcept {
  return state_->peer;
}

}  // namespace dualpath::loader
