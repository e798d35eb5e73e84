// The PE's per-request loader: the PE path, the DE path (the relay), the
// fallback between them, and the copy engine, behind one deadline and one
// terminal state (prefill_loader.h).
//
// Order of work inside poll(), none of which waits: the relay is polled
// (its events of this load only, so several loaders may share a client), the
// PE-path batch is reaped with the store's non-blocking poll, a fallback
// batch goes out for the blocks the relay did not deliver, and the layers in
// the PE buffer for every copied block go to the copy engine. So in a load
// that uses both paths the relayed layers go out as they land, once the
// PE-path reads are done, and the relay keeps being polled (over tcp the
// DE's puts need the PE's progress) while the PE reads are outstanding. A
// batch still in flight at the load's deadline is ended by store.wait() with
// that deadline, which has passed and so returns at once.
#include <algorithm>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include <dualpath/common/log.h>
#include <dualpath/loader/prefill_loader.h>

namespace dualpath::loader {
namespace {

enum class Via : std::uint8_t { pe, de, fallback };
enum class Stage : std::uint8_t { pending, good, failed };

}  // namespace

std::string_view prefillLoadStateName(PrefillLoadState state) noexcept {
  switch (state) {
    case PrefillLoadState::running:
      return "running";
    case PrefillLoadState::ok:
      return "ok";
    case PrefillLoadState::partial:
      return "partial";
    case PrefillLoadState::failed:
      return "failed";
  }
  return "unknown";
}

struct PrefillLoader::Load {
  struct Block {
    BlockId id;
    std::byte* device = nullptr;
    BufferLease lease;    // its PE buffer slot: where it is read or relayed to
    BufferLease scratch;  // a fallback read after layers of the slot were handed out
    Via via = Via::pe;
    Stage stage = Stage::pending;
    bool needs_fallback = false;  // the relay did not deliver it
    Status status;                // the last failure, when failed
  };

  std::uint64_t id = 0;
  Deadline deadline{};
  std::uint32_t de_blocks = 0;  // blocks [0, de_blocks) went to the relay
  std::vector<Block> blocks;
  ReadBatch batch;
  std::vector<std::size_t> batch_blocks;  // batch read i is block batch_blocks[i]
  bool batch_in_flight = false;
  bool relay_in_flight = false;
  std::uint32_t relay_layers = 0;  // layers the relay announced
  std::uint32_t released = 0;      // layers handed to the copy engine
  bool copy_decided = false;       // copied_blocks is fixed
  std::uint32_t copied_blocks = 0;
  std::vector<RelayEvent> events;
};

PrefillLoader::PrefillLoader(PrefillLoaderParts parts, ModelSpec model)
    : parts_(parts), model_(std::move(model)) {}

PrefillLoader::~PrefillLoader() {
  // Slots a relay may still write must not go back to the pool: poll it to
  // its end, which the client bounds (its deadline, then its cancel grace).
  // Destinations of a batch in flight belong to the store until wait().
  if (load_ && load_->batch_in_flight) (void)parts_.store.wait(load_->batch, Clock::now());
  while (!quiet()) drainRelay();
}

Result<std::unique_ptr<PrefillLoader>> PrefillLoader::create(PrefillLoaderParts parts,
                                                             const ModelSpec& model) {
  DP_TRY(validateBlockGeometry(model));
  const ModelSpec& stored = parts.store.model();
  if (stored.layers != model.layers || stored.block_tokens != model.block_tokens ||
      stored.kv_bytes_per_token_per_layer != model.kv_bytes_per_token_per_layer) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("prefill loader: the PE store holds '{}', the loader loads '{}' "
                              "(another geometry)",
                              stored.name, model.name));
  }
  if (parts.pool.slotBytes() < model.fullBlockBytes()) {
    return Status(
        StatusCode::invalid_argument,
        fmt::format("prefill loader: PE buffer '{}' has {}-byte slots, a Full Block "
                    "of '{}' needs {}",
                    parts.pool.name(), parts.pool.slotBytes(), model.name, model.fullBlockBytes()));
  }
  return std::unique_ptr<PrefillLoader>(new PrefillLoader(parts, model));
}

Status PrefillLoader::start(PrefillLoad request) {
  const std::uint64_t id = request.request_id;
  if (load_) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("prefill loader: start of request {}: request {} is still held; "
                              "call endLoad()",
                              id, load_->id));
  }
  const std::size_t n = request.blocks.size();
  if (n == 0) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("prefill loader: request {}: no blocks to load", id));
  }
  if (request.plan.blocks() != n) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("prefill loader: request {}: the read plan covers {} blocks "
                              "({} DE path, {} PE path), the prefix has {}",
                              id, request.plan.blocks(), request.plan.de_path_blocks,
                              request.plan.pe_path_blocks, n));
  }
  if (request.device_blocks.size() != n) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("prefill loader: request {}: {} device destinations for {} blocks",
                              id, request.device_blocks.size(), n));
  }
  for (std::size_t b = 0; b < n; ++b) {
    if (request.device_blocks[b] == nullptr) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("prefill loader: request {}: block {} (index {}): null device "
                                "destination",
                                id, request.blocks[b].toHex(), b));
    }
  }

  auto load = std::make_unique<Load>();
  load->id = id;
  load->deadline = request.deadline;
  load->blocks.resize(n);
  for (std::size_t b = 0; b < n; ++b) {
    load->blocks[b].id = request.blocks[b];
    load->blocks[b].device = request.device_blocks[b];
  }
  result_ = PrefillLoadResult{};
  copy_started_.store(false, std::memory_order_release);
  if (Clock::now() >= request.deadline) {
    load_ = std::move(load);
    fail(Status(StatusCode::timeout,
                fmt::format("request {}: the deadline passed before the load started", id)));
    return Status::ok();
  }
  for (Load::Block& block : load->blocks) {
    Result<BufferLease> lease = parts_.pool.acquire();
    if (!lease) {  // back-pressure: the leases taken so far go back with `load`
      return std::move(lease).status().withContext(
          fmt::format("prefill loader: request {} ({} blocks)", id, n));
    }
    block.lease = std::move(lease).value();
  }

  // The DE path: blocks [0, de_path_blocks), unless there is no relay.
  const std::uint32_t de = parts_.relay != nullptr ? request.plan.de_path_blocks : 0;
  load->de_blocks = de;
  bool relay_refused = false;
  if (de > 0) {
    RelayRequest relay{
        .request_id = id, .blocks = {}, .slot_offsets = {}, .deadline = request.deadline};
    for (std::uint32_t b = 0; b < de; ++b) {
      load->blocks[b].via = Via::de;
      relay.blocks.push_back(load->blocks[b].id);
      relay.slot_offsets.push_back(load->blocks[b].lease.offset());
    }
    if (Status s = parts_.relay->startRelay(std::move(relay)); s.isOk()) {
      load->relay_in_flight = true;
    } else {
      // Whatever the reason (the connection failed, 8 relays in flight),
      // these blocks take the PE path now, in the first batch.
      DP_LOG_WARN(
          "prefill loader: request {}: the relay did not start, reading {} blocks on "
          "the PE path: {}",
          id, de, s.toString());
      relay_refused = true;
    }
  }
  // The PE path: the rest, and the DE blocks when the relay was refused.
  for (std::size_t b = relay_refused ? 0 : de; b < n; ++b) {
    if (b < de) load->blocks[b].via = Via::fallback;
    load->batch.add(load->blocks[b].id,
                    load->blocks[b].lease.bytes().first(model_.fullBlockBytes()));
    load->batch_blocks.push_back(b);
  }
  load_ = std::move(load);
  if (!load_->batch_blocks.empty()) {
    if (Status s = parts_.store.submit(load_->batch); !s.isOk()) {
      fail(std::move(s).withContext(fmt::format("request {}: PE-path reads", id)));
      return Status::ok();
    }
    load_->batch_in_flight = true;
  }
  advance();
  return Status::ok();
}

Status PrefillLoader::poll() {
  if (!load_) {
    if (draining_.empty()) {
      return Status(StatusCode::invalid_usage, "prefill loader: poll: no load");
    }
    drainRelay();
    return Status::ok();
  }
  if (done()) {
    drainRelay();
  } else {
    advance();
  }
  return Status::ok();
}

Status PrefillLoader::run(Deadline deadline) {
  while (!done()) {
    DP_TRY(poll());
    if (!done() && Clock::now() >= deadline) {
      return Status(StatusCode::timeout,
                    fmt::format("prefill loader: request {} still loading at run()'s deadline",
                                load_ ? load_->id : 0));
    }
  }
  return Status::ok();
}

Status PrefillLoader::endLoad() {
  if (!load_) return Status(StatusCode::invalid_usage, "prefill loader: endLoad: no load");
  if (!done()) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("prefill loader: endLoad: request {} is still loading", load_->id));
  }
  if (load_->relay_in_flight) {
    Draining d{.request_id = load_->id, .leases = {}};
    for (Load::Block& block : load_->blocks) {
      d.leases.push_back(std::move(block.lease));
      if (block.scratch.valid()) d.leases.push_back(std::move(block.scratch));
    }
    draining_.push_back(std::move(d));
  }
  load_.reset();
  copy_started_.store(false, std::memory_order_release);
  return Status::ok();
}

bool PrefillLoader::quiet() const noexcept {
  return draining_.empty() && !(load_ && load_->relay_in_flight);
}

// The relays whose events this loader takes from a (possibly shared) client:
// the load's own, and those of ended loads that are still draining.
std::vector<std::uint64_t> PrefillLoader::relayIds() const {
  std::vector<std::uint64_t> ids;
  if (load_ && load_->relay_in_flight) ids.push_back(load_->id);
  for (const Draining& d : draining_) ids.push_back(d.request_id);
  return ids;
}

// Polls the relay for relays that outlived their load's terminal state.
void PrefillLoader::drainRelay() {
  if (parts_.relay == nullptr || quiet()) return;
  if (load_) {
    handleRelayEvents();
    return;
  }
  std::vector<RelayEvent> events;
  // A failed connection still ends every relay.
  (void)parts_.relay->pollRelays(relayIds(), events);
  for (const RelayEvent& e : events) {
    if (e.kind != RelayEventKind::finished) continue;
    std::erase_if(draining_, [&](const Draining& d) { return d.request_id == e.request_id; });
  }
}

void PrefillLoader::handleRelayEvents() {
  Load& load = *load_;
  load.events.clear();
  // The connection's error also arrives as each relay's `finished`.
  (void)parts_.relay->pollRelays(relayIds(), load.events);
  for (RelayEvent& e : load.events) {
    if (!load.relay_in_flight || e.request_id != load.id) {
      if (e.kind == RelayEventKind::finished) {
        std::erase_if(draining_, [&](const Draining& d) { return d.request_id == e.request_id; });
      }
      continue;
    }
    switch (e.kind) {
      case RelayEventKind::block_failed: {
        Load::Block& block = load.blocks[e.block_index];
        block.needs_fallback = true;
        block.status = std::move(e.status);
        break;
      }
      case RelayEventKind::layer_landed:
        load.relay_layers = e.layer + 1;
        break;
      case RelayEventKind::finished:
        load.relay_in_flight = false;
        for (std::uint32_t b = 0; b < load.de_blocks; ++b) {
          Load::Block& block = load.blocks[b];
          // A block already being read on the PE path (after its block_failed)
          // has its outcome from that read.
          if (block.stage != Stage::pending || block.needs_fallback || block.via == Via::fallback)
            continue;
          if (e.status.isOk()) {
            block.stage = Stage::good;
          } else {
            block.needs_fallback = true;
            block.status = e.status;
          }
        }
        if (!e.status.isOk()) {
          DP_LOG_WARN(
              "prefill loader: request {}: the relay failed after {} layers; reading "
              "its blocks on the PE path: {}",
              load.id, e.layers_landed, e.status.toString());
        }
        break;
    }
  }
}

void PrefillLoader::advance() {
  Load& load = *load_;
  // One reading of the clock per step, so that a batch found in flight is
  // ended at the deadline (wait(), at once) by the same step that would
  // otherwise fail the load for the deadline: a read the deadline cut short
  // is a failed block (partial), never a failed load.
  const bool past_deadline = Clock::now() >= load.deadline;
  if (parts_.relay != nullptr && !quiet()) handleRelayEvents();
  if (load.batch_in_flight) reapBatch(past_deadline);
  if (done()) return;
  // The blocks the relay did not deliver (block_failed comes before its
  // first layer; a failed relay ends with every block it did not finish)
  // are read on the PE path as soon as the PE path is free of this load's
  // previous batch.
  if (!load.batch_in_flight) {
    submitFallback();
    if (done()) return;
    if (load.batch_in_flight) reapBatch(past_deadline);
    if (done()) return;
  }
  releaseLayers();
  if (done()) return;
  if (settled()) {
    conclude();
  } else if (past_deadline) {
    std::size_t loaded = 0;
    for (const Load::Block& block : load.blocks) loaded += block.stage == Stage::good ? 1 : 0;
    fail(Status(StatusCode::timeout,
                fmt::format("request {}: the deadline passed with {} of {} blocks loaded", load.id,
                            loaded, load.blocks.size())));
  }
}

// Reads every block the relay did not deliver on the PE path, in one batch.
void PrefillLoader::submitFallback() {
  Load& load = *load_;
  load.batch.clear();
  load.batch_blocks.clear();
  for (std::size_t b = 0; b < load.blocks.size(); ++b) {
    Load::Block& block = load.blocks[b];
    if (!block.needs_fallback || block.stage != Stage::pending) continue;
    block.needs_fallback = false;
    block.via = Via::fallback;
    std::span<std::byte> destination = block.lease.bytes();
    if (load.released > 0) {
      // The copy engine may be reading layers [0, released) of this slot:
      // read elsewhere, verified, and fill in only the layers not handed out.
      Result<BufferLease> scratch = parts_.pool.acquire();
      if (!scratch) {
        block.stage = Stage::failed;
        block.status = std::move(scratch).status().withContext(
            fmt::format("request {}: block {}: no PE buffer slot to read it on the PE path",
                        load.id, block.id.toHex()));
        continue;
      }
      block.scratch = std::move(scratch).value();
      destination = block.scratch.bytes();
    }
    load.batch.add(block.id, destination.first(model_.fullBlockBytes()));
    load.batch_blocks.push_back(b);
  }
  if (load.batch_blocks.empty()) return;
  if (Status s = parts_.store.submit(load.batch); !s.isOk()) {
    fail(std::move(s).withContext(fmt::format("request {}: fallback reads", load.id)));
    return;
  }
  load.batch_in_flight = true;
}

// Collects the PE-path batch's outcomes once every read has one; never
// waits. At the load's deadline the reads still pending end as timeout at
// once (wait() with a deadline already past).
void PrefillLoader::reapBatch(bool past_deadline) {
  Load& load = *load_;
  if (past_deadline) {
    Status waited = parts_.store.wait(load.batch, load.deadline);
    load.batch_in_flight = false;
    if (!waited.isOk()) {
      fail(std::move(waited).withContext(fmt::format("request {}: PE-path reads", load.id)));
      return;
    }
  } else {
    Result<bool> polled = parts_.store.poll(load.batch);
    if (!polled) {
      if (!load.batch.inFlight()) load.batch_in_flight = false;
      fail(std::move(polled).status().withContext(
          fmt::format("request {}: PE-path reads", load.id)));
      return;
    }
    if (!*polled) return;
    load.batch_in_flight = false;
  }
  const std::uint64_t layer_bytes = model_.layerBlockBytes();
  for (std::size_t i = 0; i < load.batch_blocks.size(); ++i) {
    const BlockRead& read = load.batch.reads()[i];
    Load::Block& block = load.blocks[load.batch_blocks[i]];
    if (read.status.isOk()) {
      block.stage = Stage::good;
      if (block.scratch.valid()) {
        const std::uint64_t from = std::uint64_t{load.released} * layer_bytes;
        std::memcpy(block.lease.bytes().data() + from, block.scratch.bytes().data() + from,
                    model_.fullBlockBytes() - from);
      }
    } else {
      block.stage = Stage::failed;
      block.status =
          Status(read.status.code(), fmt::format("request {}: {}", load.id, read.status.message()));
    }
    block.scratch = BufferLease{};
  }
}

// Hands the layers that are in the PE buffer for every copied block to the
// copy engine, starting its load the first time.
void PrefillLoader::releaseLayers() {
  Load& load = *load_;
  if (load.batch_in_flight) return;
  // A block of the copy that failed after layers of it were handed out (its
  // fallback read failed, or found no slot): the copy can neither finish nor
  // leave it out.
  if (load.copy_decided && load.released > 0) {
    for (std::uint32_t b = 0; b < load.copied_blocks; ++b) {
      const Load::Block& block = load.blocks[b];
      if (block.stage != Stage::failed) continue;
      fail(Status(
          block.status.code(),
          fmt::format("request {}: block {} (index {}) failed after layers 0 to {} of the "
                      "copy were handed out; the copy cannot complete: {}",
                      load.id, block.id.toHex(), b, load.released - 1, block.status.message())));
      return;
    }
  }
  for (const Load::Block& block : load.blocks) {
    if (block.needs_fallback && block.stage == Stage::pending) return;
  }
  const std::uint32_t available = load.relay_in_flight ? load.relay_layers : model_.layers;
  if (available == 0 || available <= load.released) return;
  if (!load.copy_decided) {
    load.copy_decided = true;
    while (load.copied_blocks < load.blocks.size() &&
           load.blocks[load.copied_blocks].stage != Stage::failed) {
      ++load.copied_blocks;
    }
    if (load.copied_blocks > 0) {
      LayerwiseLoad copy{.request_id = load.id, .layers = {}, .sources_ready = false};
      copy.layers.resize(model_.layers);
      for (std::uint32_t l = 0; l < model_.layers; ++l) {
        const ByteRange range = layerBlockRange(model_, l);
        for (std::uint32_t b = 0; b < load.copied_blocks; ++b) {
          const Load::Block& block = load.blocks[b];
          copy.layers[l].push_back(CopySegment{.source = block.lease.bytes().data() + range.offset,
                                               .destination = block.device + range.offset,
                                               .bytes = range.size});
        }
      }
      if (Status s = parts_.copy_engine.startLoad(std::move(copy)); !s.isOk()) {
        fail(std::move(s).withContext(fmt::format("request {}: copy engine", load.id)));
        return;
      }
      copy_started_.store(true, std::memory_order_release);
    }
  }
  if (load.copied_blocks > 0) {
    for (std::uint32_t l = load.released; l < available; ++l) {
      if (Status s = parts_.copy_engine.layerArrived(l); !s.isOk()) {
        fail(std::move(s).withContext(fmt::format("request {}: copy engine", load.id)));
        return;
      }
    }
  }
  load.released = available;
}

bool PrefillLoader::settled() const {
  const Load& load = *load_;
  if (load.relay_in_flight || load.batch_in_flight) return false;
  return std::none_of(load.blocks.begin(), load.blocks.end(),
                      [](const Load::Block& b) { return b.stage == Stage::pending; });
}

void PrefillLoader::conclude() {
  Load& load = *load_;
  PrefillLoadResult r;
  r.copy_started = copyStarted();
  r.copied_blocks = load.copy_decided ? load.copied_blocks : 0;
  const Load::Block* first_failed = nullptr;
  std::string ids;
  for (const Load::Block& block : load.blocks) {
    switch (block.stage) {
      case Stage::failed:
        ++r.counters.failed;
        r.failed_blocks.push_back(block.id);
        if (first_failed == nullptr) first_failed = &block;
        ids += (ids.empty() ? "" : ", ") + block.id.toHex();
        break;
      case Stage::good:
        ++(block.via == Via::pe   ? r.counters.pe_path
           : block.via == Via::de ? r.counters.de_path
                                  : r.counters.fallback);
        break;
      case Stage::pending:
        break;
    }
  }
  r.recompute_from_token = std::uint64_t{r.copied_blocks} * model_.block_tokens;
  if (first_failed == nullptr) {
    r.state = PrefillLoadState::ok;
  } else {
    r.state = PrefillLoadState::partial;
    r.status = Status(first_failed->status.code(),
                      fmt::format("request {}: {} of {} blocks failed ({}); recompute from token "
                                  "{}: {}",
                                  load.id, r.failed_blocks.size(), load.blocks.size(), ids,
                                  r.recompute_from_token, first_failed->status.message()));
  }
  result_ = std::move(r);
}

void PrefillLoader::fail(Status why) {
  Load& load = *load_;
  if (load.batch_in_flight) {
    // The destinations belong to the store until wait() returns; a deadline
    // already past ends whatever is pending at once.
    (void)parts_.store.wait(load.batch, Clock::now());
    load.batch_in_flight = false;
  }
  PrefillLoadResult r;
  r.state = PrefillLoadState::failed;
  r.status = std::move(why);
  r.copy_started = copyStarted();
  for (const Load::Block& block : load.blocks) {
    if (block.stage == Stage::failed) {
      ++r.counters.failed;
      r.failed_blocks.push_back(block.id);
    } else if (block.stage == Stage::good) {
      ++(block.via == Via::pe   ? r.counters.pe_path
         : block.via == Via::de ? r.counters.de_path
                                : r.counters.fallback);
    }
  }
  result_ = std::move(r);
}

}  // namespace dualpath::loader
