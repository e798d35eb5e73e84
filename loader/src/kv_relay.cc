#include <algorithm>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <optional>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/common/params.h>
#include <dualpath/loader/kv_relay.h>

#include "relay_channel.h"
#include "relay_protocol.h"

namespace dualpath::loader {

static_assert(kMaxRelayBlocks == relay::kMaxRelayBlocks);

namespace {

using transport::Endpoint;
using transport::Request;

// Puts a server keeps in flight; the endpoint's request pool is the hard limit
// (postPut says `again`), this leaves room for the notices.
constexpr std::size_t kMaxPutsInFlight = 32;
constexpr std::size_t kControlWindow = 2;  // receives the server keeps posted
constexpr std::size_t kNoticeWindow = 8;   // receives the client keeps posted

using relay::checkPool;
using relay::connectionLost;
using relay::defaultCancelGrace;
using relay::geometry;
using relay::Inbox;
using relay::Outbox;
using relay::rawRequestId;


}  // namespace

// ============================================================== the server

struct RelayServer::State {
  // One put: Layer Blocks [layer, layer + layers) of one block, which are
  // adjacent in the DE lease and in the PE slot (the Full Block layout).
  struct Put {
    Request* request;
    std::uint32_t run;  // index of the run of layers_per_put layers
    std::uint32_t layers;
    bool done;
  };
  // A relay's life on the DE: queued (waiting for DE buffer slots) ->
  // admitted (one read batch per block submitted, reaped on every step) ->
  // relaying, once it is the front relay: each block's runs of layers are
  // put as soon as the block is read, while the later blocks are still
  // being read; layer notices start once every read has its outcome (so
  // every block_failed comes first) -> done. Several relays may be reading
  // at once, so the DE's storage NIC reads the next requests while the
  // front one is on the wire; only the front relay puts, so relays complete
  // in order. One batch per block, because a batch's buffers are the
  // store's until the whole batch is reaped.
  enum class Phase : std::uint8_t { queued, admitted };
  enum class Read : std::uint8_t { pending, ok, failed };
  struct Relay {
    relay::RequestMessage message;
    Deadline deadline;
    Phase phase = Phase::queued;
    bool relaying = false;  // the front relay: the PE region is imported
    bool cancelled = false;
    std::vector<BufferLease> leases;
    ReadBatch batch;                 // read b into leases[b]
    std::vector<Read> reads;         // per block
    std::size_t reads_pending = 0;
    std::size_t next_reported = 0;  // block_failed notices go out in block order
    std::uint32_t good = 0;         // blocks read ok
    std::uint32_t blocks_failed = 0;
    const transport::RemoteRegion* remote = nullptr;
    std::vector<std::uint32_t> runs_posted;  // per block: runs put so far
    std::vector<std::uint32_t> run_blocks;   // per run: blocks whose put of it was posted
    std::vector<std::uint32_t> outstanding;  // per run: puts not yet complete
    std::uint32_t first_open_run = 0;        // runs before it are posted for every good block
    std::uint32_t next_notice = 0;
    std::deque<Put> puts;
    Status ending;  // set when the relay stops early
  };

  BlockStore& store;
  BufferPool& pool;
  ModelSpec model;
  std::uint32_t layers_per_put = 1;
  std::string peer;
  std::unique_ptr<transport::MemoryRegion> region;
  // The PE region last imported: requests usually name the same one.
  std::vector<std::byte> remote_key;
  std::uint64_t remote_base = 0;
  std::uint64_t remote_length = 0;
  std::unique_ptr<transport::RemoteRegion> remote;
  // In arrival order; front() is the relaying one. Held by pointer: a read
  // batch in flight must not move (the store keeps pointers to its reads),
  // and relays leave from the middle (cancel).
  std::deque<std::unique_ptr<Relay>> queue;
  Outbox outbox{relay::kNoticeTag};
  Inbox inbox{relay::kControlTag, kControlWindow, relay::kMaxControlBytes};
  RelayServerCounters counters;
  Status failure;
  // Last: destroyed first, so that closing it stops every put before the
  // leases and the registration go.
  std::unique_ptr<Endpoint> endpoint;

  State(BlockStore& s, BufferPool& p, ModelSpec m) : store(s), pool(p), model(std::move(m)) {}
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  ~State() {
    endpoint.reset();  // no put reads the DE buffer after this
    for (std::unique_ptr<Relay>& r : queue) endReads(*r);
  }

  std::uint32_t runs() const { return (model.layers + layers_per_put - 1) / layers_per_put; }

  std::string where(std::uint64_t request_id) const {
    return fmt::format("relay {} for PE {}", request_id, peer);
  }

  // The destinations of a batch in flight belong to the store: a deadline
  // already past ends whatever is pending at once, so the leases may go.
  void endReads(Relay& r) {
    if (r.batch.inFlight()) (void)store.wait(r.batch, Deadline{});
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

  // Ends a relay that has no put in flight: done, and out of the queue.
  void endRelay(std::size_t index, Status why) {
    Relay& r = *queue[index];
    endReads(r);
    sendDone(r.message.request_id, std::move(why), r.next_notice, r.blocks_failed);
    queue.erase(queue.begin() + static_cast<std::ptrdiff_t>(index));
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
        auto r = std::make_unique<Relay>();
        r->deadline = Clock::now() + std::chrono::milliseconds(request->budget_ms);
        r->message = std::move(request).value();
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
          Relay& r = *queue[i];
          if (r.message.request_id != *id) continue;
          if (r.relaying) {
            r.cancelled = true;  // stops at the next step, after its puts
          } else {
            // Nothing was put: end it now, its reads (if any) cut short.
            endRelay(i, Status(StatusCode::timeout,
                               fmt::format("{}: cancelled by the PE before it started", where(*id))));
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

  enum class Admit { admitted, waiting, ended };

  // A queued relay: its DE buffer slots, then its reads, one batch per
  // block. `waiting` for buffers; `ended` (a done is queued, the relay
  // erased) when it cannot start.
  Admit admit(std::size_t index) {
    Relay& r = *queue[index];
    const std::uint64_t id = r.message.request_id;
    if (Status bad = validate(r.message); !bad.isOk()) {
      endRelay(index, std::move(bad));
      return Admit::ended;
    }
    if (Clock::now() >= r.deadline) {
      endRelay(index, Status(StatusCode::timeout,
                             fmt::format("{}: the budget ran out while waiting for DE buffer '{}'",
                                         where(id), pool.name())));
      return Admit::ended;
    }
    // All or nothing, so that relays waiting for buffers cannot deadlock.
    const std::size_t n = r.message.blocks.size();
    if (pool.available() < n) return Admit::waiting;
    r.leases.clear();
    for (std::size_t i = 0; i < n; ++i) {
      Result<BufferLease> lease = pool.acquire();
      if (!lease) {
        r.leases.clear();
        return Admit::waiting;  // someone else took one meanwhile
      }
      r.leases.push_back(std::move(lease).value());
    }
    r.phase = Phase::admitted;
    r.reads.assign(n, Read::pending);
    r.runs_posted.assign(n, 0);
    r.run_blocks.assign(runs(), 0);
    r.outstanding.assign(runs(), 0);
    // Counted before submit so that a test can see the overlap: an earlier
    // relay of this server is still being served while these reads start.
    ++counters.read_batches;
    if (index > 0) ++counters.read_batches_overlapped;
    for (std::size_t i = 0; i < n; ++i)
      r.batch.add(r.message.blocks[i].id, r.leases[i].bytes().first(model.fullBlockBytes()));
    if (Status submitted = store.submit(r.batch); !submitted.isOk()) {
      endRelay(index, std::move(submitted).withContext(
                          fmt::format("{}: reading its {} blocks", where(id), n)));
      return Admit::ended;
    }
    r.reads_pending = n;
    return Admit::admitted;
  }

  // Reaps an admitted relay's reads without blocking, and announces the
  // failed blocks in block order (all before any layer of the request, since
  // notices wait for every read). false when the relay ended (a done is
  // queued, the relay erased).
  bool reap(std::size_t index) {
    Relay& r = *queue[index];
    const std::uint64_t id = r.message.request_id;
    const bool spent = Clock::now() >= r.deadline;
    if (r.batch.inFlight()) {
      Status broken = Status::ok();
      if (spent) {
        // The budget is spent: its deadline is past, so this returns at
        // once, ending the reads still pending as timeout.
        broken = store.wait(r.batch, r.deadline);
      } else if (Result<bool> polled = store.poll(r.batch); !polled) {
        broken = std::move(polled).status();
      }
      if (!broken.isOk()) {
        Status why = std::move(broken).withContext(fmt::format("{}: reading its blocks", where(id)));
        if (r.relaying) {
          stopEarly(r, std::move(why));  // its puts in flight end first
          return true;
        }
        endRelay(index, std::move(why));
        return false;
      }
      // A read whose status left `pending` has its final outcome and the
      // store no longer writes its destination (block_store.h), so its
      // block may be put before the rest of the batch is read.
      for (std::size_t b = 0; b < r.reads.size(); ++b) {
        if (r.reads[b] != Read::pending) continue;
        const Status& status = r.batch.reads()[b].status;
        if (status.code() == StatusCode::again) continue;
        --r.reads_pending;
        if (status.isOk()) {
          r.reads[b] = Read::ok;
          ++r.good;
        } else {
          r.reads[b] = Read::failed;
        }
      }
    }
    while (r.next_reported < r.reads.size() && r.reads[r.next_reported] != Read::pending) {
      const std::size_t b = r.next_reported++;
      if (r.reads[b] != Read::failed) continue;
      const BlockRead& read = r.batch.reads()[b];
      ++r.blocks_failed;
      ++counters.blocks_failed;
      std::vector<std::byte> bytes;
      relay::encode(
          relay::BlockFailedMessage{id, static_cast<std::uint32_t>(b), read.id, read.status},
          bytes);
      outbox.push(std::move(bytes));
    }
    return true;
  }

  // The front relay becomes the relaying one: the PE region for its puts.
  // false when it ended.
  bool beginRelaying() {
    Relay& r = *queue.front();
    const std::uint64_t id = r.message.request_id;
    Result<const transport::RemoteRegion*> imported = importRemote(r.message);
    if (!imported) {
      endRelay(0, std::move(imported).status().withContext(
                      fmt::format("{}: importing the PE buffer's key", where(id))));
      return false;
    }
    r.remote = *imported;
    r.relaying = true;
    return true;
  }

  void stopEarly(Relay& r, Status why) {
    if (r.ending.isOk()) r.ending = std::move(why);
  }

  // Posts the next puts: run-major over the blocks read so far, so a run's
  // puts go out as soon as their blocks are read and the layers of one run
  // complete before those of the next. false when the connection is lost
  // (the error in `lost`).
  bool postPuts(Relay& r, Status& lost) {
    const std::uint64_t id = r.message.request_id;
    const std::uint64_t layer_bytes = model.layerBlockBytes();
    const std::uint32_t total_runs = runs();
    for (std::uint32_t run = r.first_open_run; run < total_runs; ++run) {
      const std::uint32_t first_layer = run * layers_per_put;
      const std::uint32_t layers = std::min(layers_per_put, r.message.layers - first_layer);
      for (std::size_t b = 0; b < r.reads.size(); ++b) {
        if (!r.ending.isOk() || r.puts.size() >= kMaxPutsInFlight) return true;
        if (r.reads[b] != Read::ok || r.runs_posted[b] != run) continue;
        const std::byte* local = r.leases[b].bytes().data() + first_layer * layer_bytes;
        const std::uint64_t offset = r.message.blocks[b].slot_offset + first_layer * layer_bytes;
        Result<Request*> put = endpoint->postPut(local, std::uint64_t{layers} * layer_bytes,
                                                 region.get(), *r.remote, offset);
        if (!put) {
          if (put.status().code() == StatusCode::again) return true;
          if (connectionLost(put.status())) {
            lost = std::move(put).status();
            return false;
          }
          stopEarly(r, std::move(put).status().withContext(fmt::format(
                           "{}: block {}: put of layers {} to {}", where(id),
                           r.message.blocks[b].id.toHex(), first_layer, first_layer + layers - 1)));
          return true;
        }
        r.puts.push_back(Put{*put, run, layers, false});
        ++r.outstanding[run];
        ++r.run_blocks[run];
        ++r.runs_posted[b];
      }
      // A later run may start for the blocks read so far, but the scan can
      // skip this one only once every good block has it.
      if (r.reads_pending == 0 && r.run_blocks[run] == r.good && run == r.first_open_run) {
        ++r.first_open_run;
      }
    }
    return true;
  }

  // One step of the relaying (front) relay. An error only when the
  // connection is lost.
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
        const std::uint32_t first = put.run * layers_per_put;
        stopEarly(r, std::move(s).withContext(fmt::format("{}: put of layers {} to {}", where(id),
                                                          first, first + put.layers - 1)));
        --r.outstanding[put.run];
        continue;
      }
      if (put.done) {
        --r.outstanding[put.run];
        counters.bytes_put += std::uint64_t{put.layers} * layer_bytes;
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
    // Notices: once every read has its outcome (every block_failed went
    // first), a layer is announced when its run's puts for every good block
    // are remote-complete, and only in order.
    while (r.ending.isOk() && r.reads_pending == 0 && r.next_notice < r.message.layers) {
      const std::uint32_t run = r.next_notice / layers_per_put;
      if (r.run_blocks[run] != r.good || r.outstanding[run] != 0) break;
      std::vector<std::byte> bytes;
      relay::encode(relay::LayerLandedMessage{id, r.next_notice, r.good}, bytes);
      outbox.push(std::move(bytes));
      ++counters.layers_landed;
      ++r.next_notice;
    }
    Status lost = Status::ok();
    if (r.ending.isOk() && !postPuts(r, lost)) return lost;
    // The end: every layer announced, or stopped with nothing in flight.
    const bool finished = r.ending.isOk() ? r.next_notice == r.message.layers : r.puts.empty();
    if (finished) endRelay(0, r.ending);  // gives the leases back: nothing reads them any more
    return Status::ok();
  }

  Status step() {
    DP_TRY(inbox.pump(*endpoint, [this](std::span<const std::byte> m) { return onControl(m); }));
    // Reads first, so that a relay's storage reads are under way while the
    // front relay's puts are on the wire. Relays get their DE buffer slots
    // in arrival order: the first that cannot get them stops the others.
    // A store has one read batch in flight at a time (block_store.h), so a
    // relay's reads start once the previous relay's reads are done.
    bool reading = false;
    for (std::size_t i = 0; i < queue.size();) {
      if (queue[i]->phase == Phase::queued) {
        if (reading) break;
        const Admit admitted = admit(i);
        if (admitted == Admit::waiting) break;
        if (admitted == Admit::ended) continue;  // erased: `i` is the next one
      }
      if (queue[i]->batch.inFlight() && !reap(i)) continue;
      reading = reading || queue[i]->batch.inFlight();
      // A relay read and waiting for its turn whose budget ran out gives
      // its buffers back now rather than when it reaches the front.
      if (i > 0 && queue[i]->reads_pending == 0 && Clock::now() >= queue[i]->deadline) {
        endRelay(i, Status(StatusCode::timeout,
                           fmt::format("{}: the budget ran out after 0 of {} layers landed",
                                       where(queue[i]->message.request_id), model.layers)));
        continue;
      }
      ++i;
    }
    // The front relay relays (its blocks may still be arriving). The next
    // relay takes over in the same step when it ends.
    while (!queue.empty()) {
      Relay& front = *queue.front();
      if (front.phase == Phase::queued) break;
      if (!front.relaying && !beginRelaying()) continue;
      const std::size_t before = queue.size();
      DP_TRY(advance(front));
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
    for (std::unique_ptr<Relay>& r : queue) endReads(*r);
    queue.clear();
  }
};

Result<std::unique_ptr<RelayServer>> RelayServer::create(std::unique_ptr<Endpoint> endpoint,
                                                         BlockStore& store, BufferPool& pool,
                                                         const ModelSpec& model,
                                                         RelayServerOptions options) {
  if (!endpoint) return Status(StatusCode::invalid_usage, "kv relay server: no endpoint");
  const std::string who = fmt::format("kv relay server for PE {}", endpoint->peerName());
  DP_TRY(checkPool(pool, model, who));
  DP_TRY(relay::checkStore(store, model, who, "relay serves"));
  DP_TRY_ASSIGN(relay::RegisteredPool registered,
                relay::registerPool(*endpoint, pool, who, /*pack_key=*/false));
  auto state = std::make_unique<State>(store, pool, model);
  state->layers_per_put = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(
      options.max_put_bytes / model.layerBlockBytes(), 1, model.layers));
  state->peer = endpoint->peerName();
  state->region = std::move(registered.region);
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
  // Events that arrived during a pollRelays() of another caller's relays.
  std::vector<RelayEvent> held;
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
  DP_TRY_ASSIGN(relay::RegisteredPool registered,
                relay::registerPool(*endpoint, pool, who, /*pack_key=*/true));
  auto state = std::make_unique<State>(pool, model, grace);
  state->peer = endpoint->peerName();
  state->remote_key = std::move(registered.remote_key);
  state->region = std::move(registered.region);
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
  // Events held for a pollRelays() caller come first: they are older.
  std::move(s.held.begin(), s.held.end(), std::back_inserter(events));
  s.held.clear();
  if (!s.failure.isOk()) return s.failure;
  if (Status step = s.step(events); !step.isOk()) s.fail(std::move(step), events);
  return s.failure;
}

Status RelayClient::pollRelays(std::span<const std::uint64_t> request_ids,
                               std::vector<RelayEvent>& events) {
  State& s = *state_;
  std::vector<RelayEvent> fresh;
  Status connection = Status::ok();
  if (s.failure.isOk()) {
    if (Status step = s.step(fresh); !step.isOk()) s.fail(std::move(step), fresh);
  }
  connection = s.failure;
  std::move(fresh.begin(), fresh.end(), std::back_inserter(s.held));
  // Hand out the caller's events, keeping each request's order; the rest
  // stay held for their own caller.
  auto mine = [&](const RelayEvent& e) {
    return std::find(request_ids.begin(), request_ids.end(), e.request_id) != request_ids.end();
  };
  auto others = std::stable_partition(s.held.begin(), s.held.end(),
                                      [&](const RelayEvent& e) { return !mine(e); });
  std::move(others, s.held.end(), std::back_inserter(events));
  s.held.erase(others, s.held.end());
  return connection;
}

std::size_t RelayClient::relaysInFlight() const noexcept {
  return state_->relays.size();
}
const std::string& RelayClient::peerName() const noexcept {
  return state_->peer;
}

}  // namespace dualpath::loader
