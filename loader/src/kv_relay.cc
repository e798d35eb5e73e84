#include <algorithm>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <optional>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/common/params.h>
#include <dualpath/loader/kv_relay.h>

#include "relay_protocol.h"

namespace dualpath::loader {

static_assert(kMaxRelayBlocks == relay::kMaxRelayBlocks);

namespace {

using transport::Endpoint;
using transport::Request;

// Puts a server keeps in flight; the endpoint's request pool is the hard limit
// (postPut says `again`), this leaves room for the notices.
constexpr std::size_t kMaxPutsInFlight = 32;
constexpr std::size_t kMaxSendsInFlight = 8;
constexpr std::size_t kControlWindow = 2;  // receives the server keeps posted
constexpr std::size_t kNoticeWindow = 8;   // receives the client keeps posted

bool connectionLost(const Status& status) {
  return status.code() == StatusCode::remote || status.code() == StatusCode::timeout;
}

std::string geometry(std::uint32_t layers, std::uint32_t tokens, std::uint32_t bytes) {
  return fmt::format("{} layers x {} tokens x {} B", layers, tokens, bytes);
}

Status checkPool(const BufferPool& pool, const ModelSpec& model, std::string_view who) {
  DP_TRY(validateBlockGeometry(model));
  if (pool.slotBytes() < model.fullBlockBytes()) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format("{}: buffer '{}' has {}-byte slots, a Full Block of '{}' is {} B", who,
                    pool.name(), pool.slotBytes(), model.name, model.fullBlockBytes()));
  }
  return Status::ok();
}

// Messages of one direction, sent in the order they were pushed: one tag is
// one ordered stream, so posting order is arrival order.
class Outbox {
 public:
  explicit Outbox(std::uint32_t tag) : tag_(tag) {}

  void push(std::vector<std::byte> bytes, std::uint64_t request_id = 0,
            relay::MessageKind kind = relay::MessageKind::done) {
    queued_.push_back(Queued{std::move(bytes), request_id, kind});
  }

  // Removes a queued, not yet posted message; false when it was posted.
  bool unqueue(std::uint64_t request_id, relay::MessageKind kind) {
    auto it = std::find_if(queued_.begin(), queued_.end(), [&](const Queued& q) {
      return q.request_id == request_id && q.kind == kind;
    });
    if (it == queued_.end()) return false;
    queued_.erase(it);
    return true;
  }

  // Reaps completed sends and posts queued ones. The connection's error, if
  // a send failed.
  Status pump(Endpoint& endpoint) {
    for (InFlight& f : inflight_) {
      if (f.done) continue;
      Status s = transport::test(f.request, &f.done, {});
      if (!s.isOk()) {
        f.done = true;  // a failed request is recycled too
        return s;
      }
    }
    while (!inflight_.empty() && inflight_.front().done) inflight_.pop_front();
    while (!queued_.empty() && inflight_.size() < kMaxSendsInFlight) {
      std::vector<std::byte>& bytes = queued_.front().bytes;
      Result<Request*> posted = endpoint.postSend(bytes.data(), bytes.size(), tag_, nullptr);
      if (!posted) {
        if (posted.status().code() == StatusCode::again) break;
        return std::move(posted).status();
      }
      inflight_.push_back(InFlight{std::move(bytes), *posted, false});
      queued_.pop_front();
    }
    return Status::ok();
  }

  bool empty() const noexcept { return queued_.empty() && inflight_.empty(); }
  // After the endpoint is closed: its requests are gone.
  void drop() noexcept {
    queued_.clear();
    inflight_.clear();
  }

 private:
  struct Queued {
    std::vector<std::byte> bytes;
    std::uint64_t request_id;
    relay::MessageKind kind;
  };
  struct InFlight {
    std::vector<std::byte> bytes;  // owned until the send completes
    Request* request;
    bool done;
  };
  std::uint32_t tag_;
  std::deque<Queued> queued_;
  std::deque<InFlight> inflight_;
};

// A window of receives of one tag, handed over in posting order (the k-th
// receive of a tag meets the k-th send of that tag).
class Inbox {
 public:
  using Handler = std::function<Status(std::span<const std::byte>)>;

  Inbox(std::uint32_t tag, std::size_t window, std::size_t capacity) : tag_(tag), slots_(window) {
    for (Slot& slot : slots_) slot.buffer.resize(capacity);
  }

  // Keeps the window posted and hands every completed receive, oldest first,
  // to `handler`. The first error (the connection's, or the handler's).
  Status pump(Endpoint& endpoint, const Handler& handler) {
    while (true) {
      while (posted_ < slots_.size()) {
        Slot& slot = slots_[(head_ + posted_) % slots_.size()];
        transport::RecvSlot recv{slot.buffer.data(), slot.buffer.size(), tag_};
        Result<Request*> r = endpoint.postRecv({&recv, 1});
        if (!r) {
          if (r.status().code() == StatusCode::again) break;
          return std::move(r).status();
        }
        slot.request = *r;
        ++posted_;
      }
      if (posted_ == 0) return Status::ok();
      Slot& head = slots_[head_];
      bool done = false;
      std::size_t size = 0;
      Status s = transport::test(head.request, &done, {&size, 1});
      if (!s.isOk()) {
        // Recycled by test(); the rest die with the connection.
        head_ = (head_ + 1) % slots_.size();
        --posted_;
        return s;
      }
      if (!done) return Status::ok();
      head.request = nullptr;
      head_ = (head_ + 1) % slots_.size();
      --posted_;
      DP_TRY(handler(std::span<const std::byte>(head.buffer.data(), size)));
    }
  }

  void drop() noexcept {
    posted_ = 0;
    for (Slot& slot : slots_) slot.request = nullptr;
  }

 private:
  struct Slot {
    std::vector<std::byte> buffer;
    Request* request = nullptr;
  };
  std::uint32_t tag_;
  std::vector<Slot> slots_;
  std::size_t head_ = 0;
  std::size_t posted_ = 0;
};

std::uint64_t rawRequestId(std::span<const std::byte> message) {
  if (message.size() < relay::kHeaderBytes) return 0;
  std::uint64_t id = 0;
  for (int i = 0; i < 8; ++i)
    id |= std::uint64_t{std::to_integer<std::uint8_t>(message[8 + i])} << (8 * i);
  return id;
}

std::chrono::milliseconds defaultCancelGrace() {
  Result<const params::Snapshot*> snapshot = params::global();
  return std::chrono::milliseconds(snapshot ? (*snapshot)->net_timeout_ms : 30'000u);
}

}  // namespace

// ============================================================== the server

struct RelayServer::State {
  struct Put {
    Request* request;
    std::uint32_t layer;
    bool done;
  };
  struct Relay {
    relay::RequestMessage message;
    Deadline deadline;
    bool started = false;  // buffers acquired, blocks read, puts may go
    bool cancelled = false;
    std::vector<BufferLease> leases;
    std::vector<std::size_t> good;  // indexes of the blocks read ok
    std::uint32_t blocks_failed = 0;
    const transport::RemoteRegion* remote = nullptr;
    std::uint32_t post_layer = 0;  // the next put: layer, position in `good`
    std::size_t post_position = 0;
    std::vector<std::uint32_t> outstanding;  // per layer: puts not yet complete
    std::uint32_t next_notice = 0;
    std::deque<Put> puts;
    Status ending;  // set when the relay stops early
  };

  BlockStore& store;
  BufferPool& pool;
  ModelSpec model;
  std::string peer;
  std::unique_ptr<transport::MemoryRegion> region;
  // The PE region last imported: requests usually name the same one.
  std::vector<std::byte> remote_key;
  std::uint64_t remote_base = 0;
  std::uint64_t remote_length = 0;
  std::unique_ptr<transport::RemoteRegion> remote;
  std::deque<Relay> queue;  // front() is the active relay once started
  Outbox outbox{relay::kNoticeTag};
  Inbox inbox{relay::kControlTag, kControlWindow, relay::kMaxControlBytes};
  RelayServerCounters counters;
  Status failure;
  // Last: destroyed first, so that closing it stops every put before the
  // leases and the registration go.
  std::unique_ptr<Endpoint> endpoint;

  State(BlockStore& s, BufferPool& p, ModelSpec m) : store(s), pool(p), model(std::move(m)) {}

  std::string where(std::uint64_t request_id) const {
    return fmt::format("relay {} for PE {}", request_id, peer);
  }

  void sendDone(std::uint64_t request_id, Status status, std::uint32_t layers,
                std::uint32_t failed) {
    if (status.isOk()) {
      ++counters.relays_done;
    } else {
      ++counters.relays_failed;
      DP_LOG_INFO("kv relay: {}: ended: {}", where(request_id), status.toString());
    }
    std::vector<std::byte> bytes;
    relay::encode(relay::DoneMessage{request_id, std::move(status), layers, failed}, bytes);
    outbox.push(std::move(bytes));
  }

  Status onControl(std::span<const std::byte> message) {
    const std::uint64_t raw_id = rawRequestId(message);
    Result<relay::Header> header = relay::decodeHeader(message);
    if (!header) {
      DP_LOG_WARN("kv relay: from PE {}: {}", peer, header.status().message());
      sendDone(raw_id, std::move(header).status().withContext(where(raw_id)), 0, 0);
      return Status::ok();
    }
    switch (header->kind) {
      case relay::MessageKind::request: {
        Result<relay::RequestMessage> request = relay::decodeRequest(message);
        if (!request) {
          DP_LOG_WARN("kv relay: {}: {}", where(raw_id), request.status().message());
          sendDone(raw_id, std::move(request).status().withContext(where(raw_id)), 0, 0);
          return Status::ok();
        }
        ++counters.requests;
        Relay r;
        r.deadline = Clock::now() + std::chrono::milliseconds(request->budget_ms);
        r.message = std::move(request).value();
        queue.push_back(std::move(r));
        return Status::ok();
      }
      case relay::MessageKind::cancel: {
        Result<std::uint64_t> id = relay::decodeCancel(message);
        if (!id) {
          DP_LOG_WARN("kv relay: {}: {}", where(raw_id), id.status().message());
          return Status::ok();
        }
        for (std::size_t i = 0; i < queue.size(); ++i) {
          if (queue[i].message.request_id != *id) continue;
          if (i == 0 && queue[i].started) {
            queue[i].cancelled = true;  // stops at the next step, after its puts
          } else {
            sendDone(*id,
                     Status(StatusCode::timeout,
                            fmt::format("{}: cancelled by the PE before it started", where(*id))),
                     0, 0);
            queue.erase(queue.begin() + static_cast<std::ptrdiff_t>(i));
          }
          break;
        }
        return Status::ok();  // unknown: its done crossed the cancel
      }
      default: {
        Status wrong(StatusCode::corrupt,
                     fmt::format("{}: relay message: kind: {} is not a PE -> DE message",
                                 where(raw_id), relay::kindName(header->kind)));
        DP_LOG_WARN("kv relay: {}", wrong.message());
        sendDone(raw_id, std::move(wrong), 0, 0);
        return Status::ok();
      }
    }
  }

  // Checks a request against this DE; the reason it cannot be served.
  Status validate(const relay::RequestMessage& m) const {
    if (m.layers != model.layers || m.block_tokens != model.block_tokens ||
        m.kv_bytes_per_token_per_layer != model.kv_bytes_per_token_per_layer) {
      return Status(
          StatusCode::invalid_argument,
          fmt::format(
              "{}: the PE's model is {}, this DE serves '{}' ({})", where(m.request_id),
              geometry(m.layers, m.block_tokens, m.kv_bytes_per_token_per_layer), model.name,
              geometry(model.layers, model.block_tokens, model.kv_bytes_per_token_per_layer)));
    }
    if (m.blocks.size() > pool.slots()) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: {} blocks, but the DE buffer '{}' has {} slots",
                                where(m.request_id), m.blocks.size(), pool.name(), pool.slots()));
    }
    for (const relay::RequestBlock& b : m.blocks) {
      if (b.slot_offset > m.region_length ||
          m.region_length - b.slot_offset < model.fullBlockBytes()) {
        return Status(StatusCode::invalid_argument,
                      fmt::format("{}: block {}: slot offset {} + {} B overruns the {}-byte PE "
                                  "buffer",
                                  where(m.request_id), b.id.toHex(), b.slot_offset,
                                  model.fullBlockBytes(), m.region_length));
      }
    }
    return Status::ok();
  }

  Result<const transport::RemoteRegion*> importRemote(const relay::RequestMessage& m) {
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

  enum class Start { started, waiting, ended };

  // Buffers, then the reads, then the PE region. `waiting` for buffers;
  // `ended` (a done is queued, the relay popped) when it cannot start.
  Start start(Relay& r) {
    const std::uint64_t id = r.message.request_id;
    if (Status bad = validate(r.message); !bad.isOk()) {
      sendDone(id, std::move(bad), 0, 0);
      queue.pop_front();
      return Start::ended;
    }
    if (Clock::now() >= r.deadline) {
      sendDone(id,
               Status(StatusCode::timeout,
                      fmt::format("{}: the budget ran out while waiting for DE buffer '{}'",
                                  where(id), pool.name())),
               0, 0);
      queue.pop_front();
      return Start::ended;
    }
    // All or nothing, so that relays waiting for buffers cannot deadlock.
    const std::size_t n = r.message.blocks.size();
    if (pool.available() < n) return Start::waiting;
    r.leases.clear();
    for (std::size_t i = 0; i < n; ++i) {
      Result<BufferLease> lease = pool.acquire();
      if (!lease) {
        r.leases.clear();
        return Start::waiting;  // someone else took one meanwhile
      }
      r.leases.push_back(std::move(lease).value());
    }
    ReadBatch batch;
    for (std::size_t i = 0; i < n; ++i) {
      batch.add(r.message.blocks[i].id, r.leases[i].bytes().first(model.fullBlockBytes()));
    }
    if (Status read = store.read(batch, r.deadline); !read.isOk()) {
      sendDone(id, std::move(read).withContext(fmt::format("{}: reading the blocks", where(id))), 0,
               0);
      queue.pop_front();
      return Start::ended;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const BlockRead& read = batch.reads()[i];
      if (read.status.isOk()) {
        r.good.push_back(i);
        continue;
      }
      ++r.blocks_failed;
      ++counters.blocks_failed;
      std::vector<std::byte> bytes;
      relay::encode(
          relay::BlockFailedMessage{id, static_cast<std::uint32_t>(i), read.id, read.status},
          bytes);
      outbox.push(std::move(bytes));
    }
    Result<const transport::RemoteRegion*> imported = importRemote(r.message);
    if (!imported) {
      sendDone(id,
               std::move(imported).status().withContext(
                   fmt::format("{}: importing the PE buffer's key", where(id))),
               0, r.blocks_failed);
      queue.pop_front();
      return Start::ended;
    }
    r.remote = *imported;
    r.outstanding.assign(r.message.layers, 0);
    if (r.good.empty()) r.post_layer = r.message.layers;  // nothing to put
    r.started = true;
    return Start::started;
  }

  void stopEarly(Relay& r, Status why) {
    if (r.ending.isOk()) r.ending = std::move(why);
  }

  // One step of the active relay. An error only when the connection is lost.
  Status advance(Relay& r) {
    const std::uint64_t id = r.message.request_id;
    const std::uint64_t layer_bytes = model.layerBlockBytes();
    // Completed puts.
    for (Put& put : r.puts) {
      if (put.done) continue;
      Status s = transport::test(put.request, &put.done, {});
      if (!s.isOk()) {
        put.done = true;
        if (connectionLost(s)) return s;
        stopEarly(
            r, std::move(s).withContext(fmt::format("{}: put of layer {}", where(id), put.layer)));
        --r.outstanding[put.layer];
        continue;
      }
      if (put.done) {
        --r.outstanding[put.layer];
        counters.bytes_put += layer_bytes;
      }
    }
    while (!r.puts.empty() && r.puts.front().done) r.puts.pop_front();
    if (r.ending.isOk() && r.cancelled) {
      stopEarly(r, Status(StatusCode::timeout,
                          fmt::format("{}: cancelled by the PE after {} of {} layers landed",
                                      where(id), r.next_notice, r.message.layers)));
    }
    if (r.ending.isOk() && Clock::now() >= r.deadline && r.next_notice < r.message.layers) {
      stopEarly(r, Status(StatusCode::timeout,
                          fmt::format("{}: the budget ran out after {} of {} layers landed",
                                      where(id), r.next_notice, r.message.layers)));
    }
    // Notices: a layer is announced once all its puts are remote-complete,
    // and only in order.
    while (r.ending.isOk() && r.next_notice < r.message.layers && r.post_layer > r.next_notice &&
           r.outstanding[r.next_notice] == 0) {
      std::vector<std::byte> bytes;
      relay::encode(
          relay::LayerLandedMessage{id, r.next_notice, static_cast<std::uint32_t>(r.good.size())},
          bytes);
      outbox.push(std::move(bytes));
      ++counters.layers_landed;
      ++r.next_notice;
    }
    // More puts, layer-major, so layer l completes before l + 1.
    while (r.ending.isOk() && r.post_layer < r.message.layers && r.puts.size() < kMaxPutsInFlight) {
      const std::size_t b = r.good[r.post_position];
      const std::byte* local =
          r.leases[b].bytes().data() + std::uint64_t{r.post_layer} * layer_bytes;
      const std::uint64_t offset =
          r.message.blocks[b].slot_offset + std::uint64_t{r.post_layer} * layer_bytes;
      Result<Request*> put = endpoint->postPut(local, layer_bytes, region.get(), *r.remote, offset);
      if (!put) {
        if (put.status().code() == StatusCode::again) break;
        if (connectionLost(put.status())) return std::move(put).status();
        stopEarly(r, std::move(put).status().withContext(
                         fmt::format("{}: block {}: put of layer {}", where(id),
                                     r.message.blocks[b].id.toHex(), r.post_layer)));
        break;
      }
      r.puts.push_back(Put{*put, r.post_layer, false});
      ++r.outstanding[r.post_layer];
      if (++r.post_position == r.good.size()) {
        r.post_position = 0;
        ++r.post_layer;
      }
    }
    // The end: every layer announced, or stopped with nothing in flight.
    const bool finished = r.ending.isOk() ? r.next_notice == r.message.layers : r.puts.empty();
    if (finished) {
      sendDone(id, r.ending, r.next_notice, r.blocks_failed);
      queue.pop_front();  // gives the leases back: nothing reads them any more
    }
    return Status::ok();
  }

  Status step() {
    DP_TRY(inbox.pump(*endpoint, [this](std::span<const std::byte> m) { return onControl(m); }));
    // Start relays until one is active or waits for buffers.
    while (!queue.empty()) {
      if (!queue.front().started) {
        const Start started = start(queue.front());
        if (started == Start::waiting) break;
        if (started == Start::ended) continue;  // try the next
      }
      const std::size_t before = queue.size();
      DP_TRY(advance(queue.front()));
      if (queue.size() == before) break;  // still running
    }
    return outbox.pump(*endpoint);
  }

  void fail(Status why) {
    failure = std::move(why).withContext(fmt::format("kv relay server for PE {}", peer));
    DP_LOG_WARN("{}", failure.message());
    endpoint.reset();  // the fence: no put reads our buffer after this
    inbox.drop();
    outbox.drop();
    counters.relays_failed += queue.size();
    queue.clear();
  }
};

Result<std::unique_ptr<RelayServer>> RelayServer::create(std::unique_ptr<Endpoint> endpoint,
                                                         BlockStore& store, BufferPool& pool,
                                                         const ModelSpec& model) {
  if (!endpoint) return Status(StatusCode::invalid_usage, "kv relay server: no endpoint");
  const std::string who = fmt::format("kv relay server for PE {}", endpoint->peerName());
  DP_TRY(checkPool(pool, model, who));
  const ModelSpec& stored = store.model();
  if (stored.layers != model.layers || stored.block_tokens != model.block_tokens ||
      stored.kv_bytes_per_token_per_layer != model.kv_bytes_per_token_per_layer) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format(
            "{}: the store holds '{}' ({}), the relay serves '{}' ({})", who, stored.name,
            geometry(stored.layers, stored.block_tokens, stored.kv_bytes_per_token_per_layer),
            model.name,
            geometry(model.layers, model.block_tokens, model.kv_bytes_per_token_per_layer)));
  }
  auto state = std::make_unique<State>(store, pool, model);
  state->peer = endpoint->peerName();
  auto region = endpoint->registerMemory(pool.region().data(), pool.region().size());
  if (!region) {
    return std::move(region).status().withContext(
        fmt::format("{}: registering DE buffer '{}'", who, pool.name()));
  }
  state->region = std::move(region).value();
  state->endpoint = std::move(endpoint);
  return std::unique_ptr<RelayServer>(new RelayServer(std::move(state)));
}

RelayServer::RelayServer(std::unique_ptr<State> state) : state_(std::move(state)) {}
RelayServer::~RelayServer() = default;

Status RelayServer::poll() {
  if (!state_->failure.isOk()) return state_->failure;
  if (Status s = state_->step(); !s.isOk()) state_->fail(std::move(s));
  return state_->failure;
}

RelayServerCounters RelayServer::counters() const noexcept {
  return state_->counters;
}
const std::string& RelayServer::peerName() const noexcept {
  return state_->peer;
}

// ============================================================== the client

struct RelayClient::State {
  struct Relay {
    RelayRequest request;
    bool expired = false;  // the deadline had passed at start: nothing sent
    std::uint32_t next_layer = 0;
    std::vector<bool> failed;
    std::uint32_t failed_count = 0;
    bool cancelling = false;
    Clock::time_point grace_end{};
    Status cancel_reason;
  };

  BufferPool& pool;
  ModelSpec model;
  std::chrono::milliseconds cancel_grace;
  std::string peer;
  std::unique_ptr<transport::MemoryRegion> region;
  std::vector<std::byte> remote_key;
  std::map<std::uint64_t, Relay> relays;
  Outbox outbox{relay::kControlTag};
  Inbox inbox{relay::kNoticeTag, kNoticeWindow, relay::kMaxNoticeBytes};
  Status failure;
  // Last: destroyed first, so that closing it stops every put into our
  // buffer before the registration goes.
  std::unique_ptr<Endpoint> endpoint;

  State(BufferPool& p, ModelSpec m, std::chrono::milliseconds grace)
      : pool(p), model(std::move(m)), cancel_grace(grace) {}

  std::string where(std::uint64_t request_id) const {
    return fmt::format("relay {} from DE {}", request_id, peer);
  }

  Status protocolError(std::string text) const {
    return Status(StatusCode::corrupt,
                  fmt::format("kv relay: notice from DE {}: {}", peer, std::move(text)));
  }

  static std::vector<BlockId> everyBlock(const Relay& r) { return r.request.blocks; }

  void finish(std::vector<RelayEvent>& events, std::uint64_t id, const Relay& r, Status status,
              std::vector<BlockId> missing) {
    RelayEvent event;
    event.kind = RelayEventKind::finished;
    event.request_id = id;
    event.status = std::move(status);
    event.layers_landed = r.next_layer;
    event.missing = std::move(missing);
    events.push_back(std::move(event));
  }

  Status onNotice(std::span<const std::byte> message, std::vector<RelayEvent>& events) {
    Result<relay::Header> header = relay::decodeHeader(message);
    if (!header) return protocolError(header.status().message());
    auto it = relays.find(header->request_id);
    if (it == relays.end() || it->second.expired) {
      return protocolError(
          fmt::format("request id {}: no such relay in flight", header->request_id));
    }
    const std::uint64_t id = it->first;
    Relay& r = it->second;
    const std::size_t n = r.request.blocks.size();
    switch (header->kind) {
      case relay::MessageKind::block_failed: {
        Result<relay::BlockFailedMessage> m = relay::decodeBlockFailed(message);
        if (!m) return protocolError(m.status().message());
        if (m->block_index >= n || r.request.blocks[m->block_index] != m->block ||
            r.failed[m->block_index] || r.next_layer != 0) {
          return protocolError(fmt::format(
              "relay {}: block_failed for block {} at index {} does not fit the request ({} "
              "blocks, {} layers announced)",
              id, m->block.toHex(), m->block_index, n, r.next_layer));
        }
        r.failed[m->block_index] = true;
        ++r.failed_count;
        if (r.cancelling) return Status::ok();
        RelayEvent event;
        event.kind = RelayEventKind::block_failed;
        event.request_id = id;
        event.block_index = m->block_index;
        event.block = m->block;
        event.status = Status(m->status.code(), fmt::format("{}: block {}: {}", where(id),
                                                            m->block.toHex(), m->status.message()));
        events.push_back(std::move(event));
        return Status::ok();
      }
      case relay::MessageKind::layer_landed: {
        Result<relay::LayerLandedMessage> m = relay::decodeLayerLanded(message);
        if (!m) return protocolError(m.status().message());
        if (m->layer != r.next_layer || m->layer >= model.layers ||
            m->blocks != n - r.failed_count) {
          return protocolError(fmt::format(
              "relay {}: layer_landed for layer {} with {} blocks, expected layer {} with {}", id,
              m->layer, m->blocks, r.next_layer, n - r.failed_count));
        }
        ++r.next_layer;
        if (r.cancelling) return Status::ok();
        RelayEvent event;
        event.kind = RelayEventKind::layer_landed;
        event.request_id = id;
        event.layer = m->layer;
        event.blocks = m->blocks;
        events.push_back(std::move(event));
        return Status::ok();
      }
      case relay::MessageKind::done: {
        Result<relay::DoneMessage> m = relay::decodeDone(message);
        if (!m) return protocolError(m.status().message());
        if (m->layers_landed != r.next_layer ||
            (m->status.isOk() &&
             (r.next_layer != model.layers || m->blocks_failed != r.failed_count))) {
          return protocolError(fmt::format(
              "relay {}: done ({}) after {} layers with {} blocks failed, but {} layers and {} "
              "failures arrived",
              id, statusCodeName(m->status.code()), m->layers_landed, m->blocks_failed,
              r.next_layer, r.failed_count));
        }
        if (r.cancelling) {
          finish(events, id, r, std::move(r.cancel_reason), everyBlock(r));
        } else if (m->status.isOk()) {
          std::vector<BlockId> missing;
          for (std::size_t i = 0; i < n; ++i) {
            if (r.failed[i]) missing.push_back(r.request.blocks[i]);
          }
          finish(events, id, r, Status::ok(), std::move(missing));
        } else {
          finish(events, id, r,
                 Status(m->status.code(),
                        fmt::format("{}: the DE ended it after {} of {} "
                                    "layers: {}",
                                    where(id), r.next_layer, model.layers, m->status.message())),
                 everyBlock(r));
        }
        relays.erase(it);
        return Status::ok();
      }
      default:
        return protocolError(fmt::format("relay {}: kind: {} is not a DE -> PE message", id,
                                         relay::kindName(header->kind)));
    }
  }

  Status checkDeadlines(std::vector<RelayEvent>& events) {
    const auto now = Clock::now();
    for (auto it = relays.begin(); it != relays.end();) {
      const std::uint64_t id = it->first;
      Relay& r = it->second;
      if (r.expired || (!r.cancelling && now >= r.request.deadline &&
                        outbox.unqueue(id, relay::MessageKind::request))) {
        finish(
            events, id, r,
            Status(StatusCode::timeout,
                   fmt::format("{}: the deadline passed before the request was sent", where(id))),
            everyBlock(r));
        it = relays.erase(it);
        continue;
      }
      if (!r.cancelling && now >= r.request.deadline) {
        // The DE may still be writing into our slots: cancel, and report
        // the end once it acknowledged (or the connection is gone).
        r.cancelling = true;
        r.grace_end = now + cancel_grace;
        r.cancel_reason = Status(StatusCode::timeout,
                                 fmt::format("{}: the deadline passed after {} of {} layers landed",
                                             where(id), r.next_layer, model.layers));
        std::vector<std::byte> bytes;
        relay::encodeCancel(id, bytes);
        outbox.push(std::move(bytes), id, relay::MessageKind::cancel);
      } else if (r.cancelling && now >= r.grace_end) {
        return Status(StatusCode::timeout,
                      fmt::format("{}: the DE did not acknowledge the cancel within {} ms; "
                                  "closing the connection so that it cannot write into the "
                                  "PE buffer",
                                  where(id), cancel_grace.count()));
      }
      ++it;
    }
    return Status::ok();
  }

  Status step(std::vector<RelayEvent>& events) {
    DP_TRY(
        inbox.pump(*endpoint, [&](std::span<const std::byte> m) { return onNotice(m, events); }));
    DP_TRY(checkDeadlines(events));
    return outbox.pump(*endpoint);
  }

  void fail(Status why, std::vector<RelayEvent>& events) {
    failure = std::move(why);
    DP_LOG_WARN("kv relay client for DE {}: {}", peer, failure.message());
    endpoint.reset();  // the fence: nothing lands in our buffer after this
    inbox.drop();
    outbox.drop();
    for (auto& [id, r] : relays) {
      finish(events, id, r,
             Status(failure.code(), fmt::format("{}: after {} of {} layers: {}", where(id),
                                                r.next_layer, model.layers, failure.message())),
             everyBlock(r));
    }
    relays.clear();
  }

  Status validate(const RelayRequest& q) const {
    const std::string who = where(q.request_id);
    if (q.blocks.empty() || q.blocks.size() > kMaxRelayBlocks) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: {} blocks; 1 to {} fit one relay", who, q.blocks.size(),
                                kMaxRelayBlocks));
    }
    if (q.slot_offsets.size() != q.blocks.size()) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("{}: {} slot offsets for {} blocks", who, q.slot_offsets.size(),
                                q.blocks.size()));
    }
    const std::uint64_t full = model.fullBlockBytes();
    const std::uint64_t length = pool.region().size();
    for (std::size_t i = 0; i < q.blocks.size(); ++i) {
      if (q.slot_offsets[i] > length || length - q.slot_offsets[i] < full) {
        return Status(
            StatusCode::invalid_argument,
            fmt::format("{}: block {} (index {}): slot offset {} + {} B overruns the "
                        "{}-byte PE buffer '{}'",
                        who, q.blocks[i].toHex(), i, q.slot_offsets[i], full, length, pool.name()));
      }
    }
    std::vector<std::size_t> order(q.blocks.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return q.slot_offsets[a] < q.slot_offsets[b]; });
    for (std::size_t k = 1; k < order.size(); ++k) {
      const std::size_t a = order[k - 1];
      const std::size_t b = order[k];
      if (q.slot_offsets[b] - q.slot_offsets[a] < full) {
        return Status(StatusCode::invalid_argument,
                      fmt::format("{}: the slots of blocks {} (index {}) and {} (index {}) "
                                  "overlap: offsets {} and {}, a Full Block is {} B",
                                  who, q.blocks[a].toHex(), a, q.blocks[b].toHex(), b,
                                  q.slot_offsets[a], q.slot_offsets[b], full));
      }
    }
    return Status::ok();
  }
};

Result<std::unique_ptr<RelayClient>> RelayClient::create(std::unique_ptr<Endpoint> endpoint,
                                                         BufferPool& pool, const ModelSpec& model,
                                                         RelayClientOptions options) {
  if (!endpoint) return Status(StatusCode::invalid_usage, "kv relay client: no endpoint");
  const std::string who = fmt::format("kv relay client for DE {}", endpoint->peerName());
  DP_TRY(checkPool(pool, model, who));
  if (options.cancel_grace.count() < 0) {
    return Status(StatusCode::invalid_argument, fmt::format("{}: cancel_grace is negative", who));
  }
  const auto grace =
      options.cancel_grace.count() == 0 ? defaultCancelGrace() : options.cancel_grace;
  auto state = std::make_unique<State>(pool, model, grace);
  state->peer = endpoint->peerName();
  auto region = endpoint->registerMemory(pool.region().data(), pool.region().size());
  if (!region) {
    return std::move(region).status().withContext(
        fmt::format("{}: registering PE buffer '{}'", who, pool.name()));
  }
  auto key = (*region)->packRemoteKey();
  if (!key) return std::move(key).status().withContext(who);
  if (key->empty() || key->size() > relay::kMaxRemoteKeyBytes) {
    return Status(StatusCode::unsupported,
                  fmt::format("{}: UCX packed a {}-byte remote key; the relay carries 1 to {} B",
                              who, key->size(), relay::kMaxRemoteKeyBytes));
  }
  state->remote_key = std::move(key).value();
  state->region = std::move(region).value();
  state->endpoint = std::move(endpoint);
  return std::unique_ptr<RelayClient>(new RelayClient(std::move(state)));
}

RelayClient::RelayClient(std::unique_ptr<State> state) : state_(std::move(state)) {}
RelayClient::~RelayClient() = default;

Status RelayClient::startRelay(RelayRequest request) {
  State& s = *state_;
  if (!s.failure.isOk()) return s.failure;
  if (s.relays.contains(request.request_id)) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("{}: a relay of that id is in flight", s.where(request.request_id)));
  }
  if (s.relays.size() >= kMaxRelaysInFlight) {
    return Status(StatusCode::again, fmt::format("kv relay client for DE {}: {} relays in flight",
                                                 s.peer, s.relays.size()));
  }
  DP_TRY(s.validate(request));
  const std::uint64_t id = request.request_id;
  State::Relay r;
  r.failed.assign(request.blocks.size(), false);
  const auto now = Clock::now();
  if (now >= request.deadline) {
    r.expired = true;
  } else {
    const auto budget =
        std::chrono::ceil<std::chrono::milliseconds>(request.deadline - now).count();
    relay::RequestMessage m;
    m.request_id = id;
    m.layers = s.model.layers;
    m.block_tokens = s.model.block_tokens;
    m.kv_bytes_per_token_per_layer = s.model.kv_bytes_per_token_per_layer;
    m.budget_ms = static_cast<std::uint32_t>(
        std::min<std::int64_t>(budget, std::numeric_limits<std::uint32_t>::max()));
    m.region_base = reinterpret_cast<std::uint64_t>(s.pool.region().data());
    m.region_length = s.pool.region().size();
    m.remote_key = s.remote_key;
    m.blocks.reserve(request.blocks.size());
    for (std::size_t i = 0; i < request.blocks.size(); ++i) {
      m.blocks.push_back(relay::RequestBlock{request.blocks[i], request.slot_offsets[i]});
    }
    std::vector<std::byte> bytes;
    DP_TRY(relay::encode(m, bytes));
    s.outbox.push(std::move(bytes), id, relay::MessageKind::request);
  }
  r.request = std::move(request);
  s.relays.emplace(id, std::move(r));
  return Status::ok();
}

Status RelayClient::poll(std::vector<RelayEvent>& events) {
  State& s = *state_;
  if (!s.failure.isOk()) return s.failure;
  if (Status step = s.step(events); !step.isOk()) s.fail(std::move(step), events);
  return s.failure;
}

std::size_t RelayClient::relaysInFlight() const noexcept {
  return state_->relays.size();
}
const std::string& RelayClient::peerName() const noexcept {
  return state_->peer;
}

}  // namespace dualpath::loader
