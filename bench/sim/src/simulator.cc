#include <dualpath/sim/simulator.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <functional>
#include <optional>
#include <queue>

#include <fmt/format.h>

#include <dualpath/scheduler/prefill_batcher.h>
#include <dualpath/sim/trace.h>

#include "links.h"

namespace dualpath::sim {
namespace {

using detail::Demand;
using detail::FifoJob;
using detail::FifoLink;
using detail::SharedLink;
using detail::Waiter;
using scheduler::EngineIndex;
using scheduler::NodeIndex;

// A flow waits rather than start on a link with less than this share free:
// starting at a trickle would pin it to that trickle for its whole life.
constexpr double kMinStartShare = 0.05;
// Rates and byte sums are doubles; a link may overshoot its capacity by this
// much from rounding alone.
constexpr double kCapacitySlack = 1e-9;

// Byte totals summed in different orders agree to rounding, relative to the
// larger of the two.
bool sameBytes(double a, double b, double relative_tolerance) {
  return std::fabs(a - b) <= relative_tolerance * std::max({1.0, std::fabs(a), std::fabs(b)});
}

enum LinkKind : std::uint8_t { snic_read, snic_write, cnic_read, cnic_write, dram, kLinkKinds };
constexpr std::array<std::string_view, kLinkKinds> kLinkKindNames = {
    "snic-read", "snic-write", "cnic-read", "cnic-write", "dram"};

struct Event {
  enum class Kind : std::uint8_t {
    turn_arrives,
    fifo_done,
    batch_done,
    copy_done,
    decode_done,
    scheduler_tick
  };
  double time;
  std::uint64_t sequence;  // ties go to the earlier event: runs are reproducible
  Kind kind;
  std::uint32_t id;
  std::uint64_t generation;

  bool operator>(const Event& other) const noexcept {
    return time != other.time ? time > other.time : sequence > other.sequence;
  }
};

// One agent's turn in flight (an agent has at most one).
struct AgentState {
  std::uint32_t turn = 0;  // index into Trace::turns
  std::uint32_t last_turn = 0;
  EngineIndex prefill_engine = 0, decode_engine = 0;
  std::uint64_t prefill_path_tokens = 0, decode_path_tokens = 0;
  std::uint32_t reads_pending = 0;
  std::uint32_t chunks_prefilled = 0;  // of the current turn, counted as each batch ends
  bool prefill_path_read = false;   // its PE-path blocks are in the PE node's buffer
  bool decode_buffer_held = false;  // the DE node's buffer holds room for its context
  double arrival = 0, decode_join = 0;
  std::vector<Demand> copy;  // the DE's host-to-HBM copy, while it runs
  double copy_seconds = 0;
};

struct BufferWait {
  std::uint32_t agent;
  double bytes;
  bool decode_side;  // the DE node's ticket (true) or the PE node's (false)
};

struct NodeSim {
  FifoLink read;
  FifoLink write;
  std::uint32_t dram = 0;
  double buffer_free = 0;
  std::deque<BufferWait> buffer_waiters;
  std::uint64_t read_queue_tokens = 0;
  bool dirty = false;
};

struct PrefillEngine {
  PrefillEngine(NodeIndex node_index, std::uint32_t read, std::uint32_t write,
                scheduler::PrefillBatcher prefill_batcher)
      : node(node_index), cnic_read(read), cnic_write(write), batcher(std::move(prefill_batcher)) {}

  NodeIndex node = 0;
  std::uint32_t cnic_read = 0, cnic_write = 0;
  scheduler::PrefillBatcher batcher;
  bool busy = false;     // a batch is running
  bool waiting = false;  // a batch waits for link capacity
  bool loading_phase = false;  // without layerwise: the load before the compute
  scheduler::PrefillBatch batch;
  std::vector<Demand> flow;
  double flow_seconds = 0;
  TrafficBytes flow_traffic;  // what the running flow moves, by kind of copy
  std::uint32_t requests = 0;
  std::uint64_t tokens = 0;  // new tokens not yet prefilled
};

struct DecodeEngine {
  NodeIndex node = 0;
  std::uint32_t cnic_read = 0, cnic_write = 0;
  std::uint32_t requests = 0;   // assigned and not finished: the scheduler's seq_e
  std::uint64_t tokens = 0;     // their context tokens: tok_e
  std::uint64_t kv_bytes = 0;   // their KV in HBM, as the scheduler counts it
  // The running batch: each sequence finishes at a step count.
  std::priority_queue<std::pair<double, std::uint32_t>, std::vector<std::pair<double, std::uint32_t>>,
                      std::greater<>>
      finishes;
  double steps = 0;  // steps done since the engine began (fractional between events)
  double step_seconds = 0;
  double last = 0;
  double attention_bytes = 0;
  std::uint64_t generation = 0;
};

// Percentiles by selection, not a full sort: the scale preset has millions.
LatencySummary summarise(std::vector<double>& samples) {
  LatencySummary summary;
  summary.samples = samples.size();
  if (samples.empty()) return summary;
  double sum = 0;
  for (double v : samples) sum += v;
  summary.mean = sum / static_cast<double>(samples.size());
  auto at = [&](double q) {
    const auto index = static_cast<std::ptrdiff_t>(q * static_cast<double>(samples.size() - 1));
    std::nth_element(samples.begin(), samples.begin() + index, samples.end());
    return samples[static_cast<std::size_t>(index)];
  };
  summary.p50 = at(0.5);
  summary.p90 = at(0.9);
  summary.p99 = at(0.99);
  summary.max = *std::max_element(samples.begin(), samples.end());
  return summary;
}

class Simulator {
 public:
  Simulator(const SimConfig& config, Trace trace, scheduler::Scheduler scheduler,
            scheduler::CostModel cost)
      : config_(config),
        trace_(std::move(trace)),
        scheduler_(std::move(scheduler)),
        cost_(std::move(cost)),
        oracle_(config.mode == Mode::oracle),
        layerwise_(config.layerwisePrefill()),
        kv_bytes_per_token_(static_cast<double>(config.model.kvBytesPerToken())),
        block_tokens_(config.model.block_tokens),
        agents_(trace_.agents()) {
    build();
  }

  Result<SimReport> run();

 private:
  void build();
  std::uint32_t addSharedLink(LinkKind kind, double capacity);

  void push(double time, Event::Kind kind, std::uint32_t id, std::uint64_t generation = 0) {
    events_.push(Event{time, next_sequence_++, kind, id, generation});
  }

  // Agents and the scheduler.
  Status submitTurn(std::uint32_t agent);
  void runSchedulerRounds();
  void reportDirtyNodes();
  scheduler::GroupReport reportOf(NodeIndex node) const;
  void start(const scheduler::Assignment& assignment);

  // Host buffers and storage.
  void requestBuffer(NodeIndex node, BufferWait wait);
  void requestDecodeBuffer(std::uint32_t agent);
  void grantBuffers(NodeIndex node);
  void releaseBuffer(NodeIndex node, double bytes);
  void bufferGranted(const BufferWait& wait);
  void enqueue(NodeIndex node, FifoLink& link, const FifoJob& job);
  void fifoDone(std::uint32_t link_id, std::uint64_t generation);
  void rebalanceStorage();
  void readDone(const FifoJob& job);
  void writeDone(const FifoJob& job);

  // Flows over shared links.
  std::optional<double> startFlow(std::vector<Demand>& demands, double min_seconds, Waiter waiter);
  void endFlow(const std::vector<Demand>& demands, double seconds);
  void wake(std::vector<Waiter> waiters);

  // Prefill and decode.
  void readyForPrefill(std::uint32_t agent);
  void tryStartBatch(std::uint32_t engine);
  void batchDone(std::uint32_t engine);
  void addHandoff(PrefillEngine& engine, const scheduler::BatchEntry& entry);
  void tryStartCopy(std::uint32_t agent);
  void copyDone(std::uint32_t agent);
  DecodeEngine& decodeEngine(EngineIndex e) { return decode_[e - prefill_engine_count_]; }
  void advance(DecodeEngine& engine);
  void reschedule(std::uint32_t index, DecodeEngine& engine);
  void decodeDone(std::uint32_t index, std::uint64_t generation);
  void finishTurn(std::uint32_t agent);
  void nextTurn(std::uint32_t agent);

  SimReport report() const;
  // Online runs measure the turns that arrive in the steady-state window.
  bool measured(const AgentState& state) const noexcept {
    return config_.arrivals == Arrivals::offline ||
           (state.arrival >= config_.online_measure_from_seconds && state.arrival <= config_.online_seconds);
  }

  const SimConfig& config_;
  Trace trace_;
  scheduler::Scheduler scheduler_;
  scheduler::CostModel cost_;
  const bool oracle_;
  const bool layerwise_;
  const double kv_bytes_per_token_;
  const std::uint32_t block_tokens_;

  double now_ = 0;
  std::uint64_t next_sequence_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  std::uint64_t events_processed_ = 0;
  bool schedule_pending_ = false;  // something changed that a round may act on
  bool tick_scheduled_ = false;
  std::uint64_t rounds_ = 0;
  Status failure_;

  std::vector<AgentState> agents_;
  std::vector<NodeSim> nodes_;
  std::vector<FifoLink*> fifo_links_;  // by id: node n's read link is 2n, its write link 2n + 1
  std::vector<SharedLink> shared_;
  std::vector<PrefillEngine> prefill_;
  std::vector<DecodeEngine> decode_;
  std::uint32_t prefill_engine_count_ = 0;
  std::uint32_t busy_snics_ = 0;

  std::uint32_t agents_finished_ = 0;
  double last_finish_ = 0;
  std::uint64_t requests_done_ = 0;
  std::vector<double> ttft_, ttst_, tpot_;
  TrafficBytes traffic_, expected_;
  std::uint64_t decode_path_tokens_ = 0;  // cached tokens the scheduler sent the DE path
};

void Simulator::build() {
  const NodeHardware& hw = config_.hardware;
  const std::uint32_t g = hw.base.gpus_per_node;
  const std::uint32_t node_count = config_.prefill_nodes + config_.decode_nodes;
  prefill_engine_count_ = config_.prefill_nodes * g;
  nodes_.reserve(node_count);
  for (std::uint32_t n = 0; n < node_count; ++n) {
    nodes_.push_back(NodeSim{.read = FifoLink(snic_read, hw.base.snic_bytes_per_s),
                             .write = FifoLink(snic_write, hw.base.snic_bytes_per_s),
                             .dram = 0,
                             .buffer_free = 0,
                             .buffer_waiters = {},
                             .read_queue_tokens = 0,
                             .dirty = false});
    // The SNIC's reads land in DRAM at up to line rate: the copies get the rest.
    nodes_.back().dram = addSharedLink(dram, hw.dram_bytes_per_s - hw.base.snic_bytes_per_s);
    nodes_.back().buffer_free = hw.buffer_bytes;
  }
  for (NodeSim& node : nodes_) {
    fifo_links_.push_back(&node.read);
    fifo_links_.push_back(&node.write);
  }
  const double kv_cnic = hw.kvCnicBytesPerS();
  for (std::uint32_t e = 0; e < node_count * g; ++e) {
    const NodeIndex node = e / g;
    const std::uint32_t read = addSharedLink(cnic_read, kv_cnic);
    const std::uint32_t write = addSharedLink(cnic_write, kv_cnic);
    if (e < prefill_engine_count_) {
      prefill_.push_back(PrefillEngine{node, read, write,
                                       scheduler::PrefillBatcher(cost_, config_.prefill_quota_seconds)});
    } else {
      DecodeEngine& engine = decode_.emplace_back();
      engine.node = node;
      engine.cnic_read = read;
      engine.cnic_write = write;
    }
  }
  for (std::uint32_t a = 0; a < trace_.agents(); ++a) {
    agents_[a].turn = trace_.first_turn[a];
    agents_[a].last_turn = trace_.first_turn[a + 1] - 1;
  }
}

std::uint32_t Simulator::addSharedLink(LinkKind kind, double capacity) {
  SharedLink& link = shared_.emplace_back();
  link.kind = kind;
  link.capacity = capacity;
  return static_cast<std::uint32_t>(shared_.size() - 1);
}

Result<SimReport> Simulator::run() {
  for (std::uint32_t a = 0; a < trace_.agents(); ++a) {
    push(trace_.agent_start_seconds[a], Event::Kind::turn_arrives, a);
  }
  while (!events_.empty()) {
    const Event event = events_.top();
    events_.pop();
    now_ = event.time;
    ++events_processed_;
    switch (event.kind) {
      case Event::Kind::turn_arrives: failure_ = submitTurn(event.id); break;
      case Event::Kind::fifo_done: fifoDone(event.id, event.generation); break;
      case Event::Kind::batch_done: batchDone(event.id); break;
      case Event::Kind::copy_done: copyDone(event.id); break;
      case Event::Kind::decode_done: decodeDone(event.id, event.generation); break;
      case Event::Kind::scheduler_tick: runSchedulerRounds(); break;
    }
    if (!failure_.isOk()) return std::move(failure_);
    // The scheduler decides on what changed at its next tick, as a live one
    // would on its next loop; a tick with nothing new is never scheduled.
    if (schedule_pending_ && !tick_scheduled_) {
      tick_scheduled_ = true;
      push(now_ + config_.scheduler_interval_seconds, Event::Kind::scheduler_tick, 0);
    }
  }
  if (agents_finished_ != trace_.agents()) {
    return Status(StatusCode::internal,
                  fmt::format("simulation stalled at t={:.3f} s: {} of {} agents finished, {} "
                              "turns queued at the scheduler",
                              now_, agents_finished_, trace_.agents(), scheduler_.queued()));
  }
  return report();
}

Status Simulator::submitTurn(std::uint32_t agent) {
  AgentState& state = agents_[agent];
  const Turn& turn = trace_.turns[state.turn];
  state.arrival = now_;
  schedule_pending_ = true;
  return scheduler_
      .submit(scheduler::Request{.id = agent, .tokens = turn.tokens, .cached_tokens = turn.cached_tokens})
      .withContext(fmt::format("agent {} turn {}", agent, state.turn - trace_.first_turn[agent]));
}

scheduler::GroupReport Simulator::reportOf(NodeIndex n) const {
  const NodeSim& node = nodes_[n];
  const std::uint32_t g = config_.hardware.base.gpus_per_node;
  scheduler::GroupReport report;
  report.node = n;
  report.read_queue_tokens = node.read_queue_tokens;
  report.snic_load_bytes_per_s = node.read.busy() ? node.read.rate() : 0.0;
  report.engines.reserve(g);
  for (std::uint32_t i = 0; i < g; ++i) {
    const EngineIndex e = n * g + i;
    scheduler::EngineLoad load;
    auto cnicLoad = [&](std::uint32_t read, std::uint32_t write) {
      return std::max(shared_[read].allocated, shared_[write].allocated);
    };
    if (e < prefill_engine_count_) {
      const PrefillEngine& engine = prefill_[e];
      load = {.unfinished_requests = engine.requests,
              .unfinished_tokens = engine.tokens,
              .free_kv_bytes = config_.hardware.base.kv_hbm_bytes_per_gpu,
              .cnic_load_bytes_per_s = cnicLoad(engine.cnic_read, engine.cnic_write)};
    } else {
      const DecodeEngine& engine = decode_[e - prefill_engine_count_];
      const std::uint64_t capacity = config_.hardware.base.kv_hbm_bytes_per_gpu;
      load = {.unfinished_requests = engine.requests,
              .unfinished_tokens = engine.tokens,
              .free_kv_bytes = capacity - std::min(capacity, engine.kv_bytes),
              .cnic_load_bytes_per_s = cnicLoad(engine.cnic_read, engine.cnic_write)};
    }
    report.engines.push_back(load);
  }
  return report;
}

void Simulator::reportDirtyNodes() {
  for (NodeIndex n = 0; n < nodes_.size(); ++n) {
    if (!nodes_[n].dirty) continue;
    nodes_[n].dirty = false;
    // A report matches the cluster's shape by construction; one that does
    // not is a bug here, and ends the run.
    Status applied = scheduler_.apply(reportOf(n));
    if (!applied.isOk() && failure_.isOk()) {
      failure_ = Status(StatusCode::internal, applied.message());
    }
  }
}

void Simulator::runSchedulerRounds() {
  schedule_pending_ = false;
  tick_scheduled_ = false;
  reportDirtyNodes();
  std::vector<scheduler::Assignment> assignments;
  while (scheduler_.queued() > 0) {
    assignments.clear();
    const scheduler::RoundResult round = scheduler_.scheduleRound(assignments);
    ++rounds_;
    for (const scheduler::Assignment& assignment : assignments) start(assignment);
    if (round.stop != scheduler::RoundStop::round_full) break;
  }
}

void Simulator::start(const scheduler::Assignment& a) {
  const std::uint32_t agent = static_cast<std::uint32_t>(a.request_id);
  AgentState& state = agents_[agent];
  const Turn& turn = trace_.turns[state.turn];
  state.prefill_engine = a.prefill_engine;
  state.decode_engine = a.decode_engine;
  state.prefill_path_tokens = oracle_ ? 0 : std::uint64_t{a.read.pe_path_blocks} * block_tokens_;
  state.decode_path_tokens = oracle_ ? 0 : std::uint64_t{a.read.de_path_blocks} * block_tokens_;

  PrefillEngine& pe = prefill_[a.prefill_engine];
  pe.requests += 1;
  pe.tokens += turn.tokens - turn.cached_tokens;
  DecodeEngine& de = decodeEngine(a.decode_engine);
  de.requests += 1;
  de.tokens += turn.tokens;
  de.kv_bytes += cost_.kvBytes(turn.tokens);
  decode_path_tokens_ += state.decode_path_tokens;
  nodes_[pe.node].read_queue_tokens += state.prefill_path_tokens;
  nodes_[de.node].read_queue_tokens += state.decode_path_tokens;
  nodes_[pe.node].dirty = nodes_[de.node].dirty = true;

  // Host buffers, in a fixed order so they cannot deadlock: the PE node's for
  // the PE-path blocks first, then the DE node's for the whole context (the
  // relayed blocks stay there for the DE's copy, the rest arrives from the
  // PE). A request that holds the DE node's buffer never waits for another
  // buffer, so it reaches its prefill and its copy, and frees it.
  state.prefill_path_read = false;
  state.decode_buffer_held = false;
  if (state.prefill_path_tokens > 0) {
    requestBuffer(pe.node, BufferWait{.agent = agent,
                                      .bytes = static_cast<double>(state.prefill_path_tokens) *
                                               kv_bytes_per_token_,
                                      .decode_side = false});
  } else {
    requestDecodeBuffer(agent);
  }
}

void Simulator::requestDecodeBuffer(std::uint32_t agent) {
  const AgentState& state = agents_[agent];
  requestBuffer(decodeEngine(state.decode_engine).node,
                BufferWait{.agent = agent,
                           .bytes = static_cast<double>(trace_.turns[state.turn].tokens) * kv_bytes_per_token_,
                           .decode_side = true});
}

void Simulator::requestBuffer(NodeIndex node, BufferWait wait) {
  nodes_[node].buffer_waiters.push_back(wait);
  grantBuffers(node);
}

void Simulator::grantBuffers(NodeIndex n) {
  NodeSim& node = nodes_[n];
  while (!node.buffer_waiters.empty() && node.buffer_waiters.front().bytes <= node.buffer_free) {
    const BufferWait wait = node.buffer_waiters.front();
    node.buffer_waiters.pop_front();
    node.buffer_free -= wait.bytes;
    bufferGranted(wait);
  }
}

void Simulator::releaseBuffer(NodeIndex node, double bytes) {
  nodes_[node].buffer_free += bytes;
  grantBuffers(node);
}

// A PE-path-only request reads as soon as it has the PE node's buffer and
// takes the DE node's after its read; a split request takes both first, so
// that the DE node's buffer is never held by a request that waits.
void Simulator::bufferGranted(const BufferWait& wait) {
  AgentState& state = agents_[wait.agent];
  const double block_bytes = static_cast<double>(cost_.kvBytes(block_tokens_));
  auto read = [&](bool decode_path) {
    const std::uint64_t tokens = decode_path ? state.decode_path_tokens : state.prefill_path_tokens;
    const NodeIndex node =
        decode_path ? decodeEngine(state.decode_engine).node : prefill_[state.prefill_engine].node;
    enqueue(node, nodes_[node].read,
            FifoJob{.kind = decode_path ? FifoJob::Kind::read_decode_path : FifoJob::Kind::read_prefill_path,
                    .agent = wait.agent,
                    .bytes = static_cast<double>(tokens / block_tokens_) * block_bytes,
                    .tokens = tokens});
  };
  if (!wait.decode_side) {
    if (state.decode_path_tokens > 0) {
      requestDecodeBuffer(wait.agent);
      return;
    }
    state.reads_pending = 1;
    read(false);
    return;
  }
  state.decode_buffer_held = true;
  // Count every read before starting any, so one that ends at once does not
  // start the prefill early.
  const bool read_prefill_path = state.prefill_path_tokens > 0 && !state.prefill_path_read;
  state.reads_pending = (state.decode_path_tokens > 0 ? 1 : 0) + (read_prefill_path ? 1 : 0);
  if (state.reads_pending == 0) {
    readyForPrefill(wait.agent);
    return;
  }
  if (state.decode_path_tokens > 0) read(true);
  if (read_prefill_path) read(false);
}

void Simulator::enqueue(NodeIndex node, FifoLink& link, const FifoJob& job) {
  if (!link.push(now_, job)) return;  // queued behind the link's current job
  ++busy_snics_;
  if (config_.hardware.storage_bytes_per_s > 0) {
    rebalanceStorage();  // schedules every busy link's completion, this one's too
    return;
  }
  const std::uint32_t id = 2 * node + (&link == &nodes_[node].write ? 1 : 0);
  push(link.headFinish(now_), Event::Kind::fifo_done, id, link.generation());
}

// Every busy SNIC gets an equal share of a storage cluster narrower than
// their sum, up to its own line rate.
void Simulator::rebalanceStorage() {
  const double share = busy_snics_ == 0 ? 0 : config_.hardware.storage_bytes_per_s / busy_snics_;
  for (std::uint32_t id = 0; id < fifo_links_.size(); ++id) {
    FifoLink& link = *fifo_links_[id];
    if (!link.busy()) continue;
    link.setRate(now_, std::min(link.capacity(), share));
    push(link.headFinish(now_), Event::Kind::fifo_done, id, link.generation());
  }
}

void Simulator::fifoDone(std::uint32_t id, std::uint64_t generation) {
  FifoLink& link = *fifo_links_[id];
  if (generation != link.generation() || !link.busy()) return;  // superseded by a rate change
  const FifoJob job = link.pop(now_);
  if (link.busy()) {
    push(link.headFinish(now_), Event::Kind::fifo_done, id, link.generation());
  } else {
    --busy_snics_;
    if (config_.hardware.storage_bytes_per_s > 0) rebalanceStorage();
  }
  if (job.kind == FifoJob::Kind::write_back) {
    writeDone(job);
  } else {
    readDone(job);
  }
}

void Simulator::readDone(const FifoJob& job) {
  AgentState& state = agents_[job.agent];
  const bool decode_path = job.kind == FifoJob::Kind::read_decode_path;
  const NodeIndex node = decode_path ? decodeEngine(state.decode_engine).node
                                     : prefill_[state.prefill_engine].node;
  nodes_[node].read_queue_tokens -= job.tokens;
  nodes_[node].dirty = true;
  (decode_path ? traffic_.storage_read_de_path : traffic_.storage_read_pe_path) += job.bytes;
  if (!decode_path) state.prefill_path_read = true;
  if (--state.reads_pending > 0) return;
  if (state.decode_buffer_held) {
    readyForPrefill(job.agent);
  } else {
    requestDecodeBuffer(job.agent);
  }
}

void Simulator::readyForPrefill(std::uint32_t agent) {
  const AgentState& state = agents_[agent];
  const Turn& turn = trace_.turns[state.turn];
  PrefillEngine& engine = prefill_[state.prefill_engine];
  engine.batcher.push(scheduler::PrefillWork{.request_id = agent,
                                             .context_tokens = turn.cached_tokens,
                                             .new_tokens = turn.tokens - turn.cached_tokens});
  tryStartBatch(state.prefill_engine);
}

std::optional<double> Simulator::startFlow(std::vector<Demand>& demands, double min_seconds,
                                           Waiter waiter) {
  // One demand per link.
  std::sort(demands.begin(), demands.end(),
            [](const Demand& a, const Demand& b) { return a.link < b.link; });
  std::size_t kept = 0;
  for (const Demand& d : demands) {
    if (d.bytes <= 0) continue;
    if (kept > 0 && demands[kept - 1].link == d.link) {
      demands[kept - 1].bytes += d.bytes;
    } else {
      demands[kept++] = d;
    }
  }
  demands.resize(kept);

  double seconds = min_seconds;
  for (const Demand& d : demands) {
    SharedLink& link = shared_[d.link];
    const double free = link.capacity - link.allocated;
    if (free < kMinStartShare * link.capacity) {
      link.waiters.push_back(waiter);
      return std::nullopt;
    }
    seconds = std::max(seconds, d.bytes / free);
  }
  for (const Demand& d : demands) {
    SharedLink& link = shared_[d.link];
    link.allocated += d.bytes / seconds;
    link.peak_allocated = std::max(link.peak_allocated, link.allocated);
  }
  return seconds;
}

void Simulator::endFlow(const std::vector<Demand>& demands, double seconds) {
  std::vector<Waiter> waiters;
  for (const Demand& d : demands) {
    SharedLink& link = shared_[d.link];
    link.allocated = std::max(0.0, link.allocated - d.bytes / seconds);
    link.bytes += d.bytes;
    waiters.insert(waiters.end(), link.waiters.begin(), link.waiters.end());
    link.waiters.clear();
  }
  wake(std::move(waiters));
}

void Simulator::wake(std::vector<Waiter> waiters) {
  for (const Waiter& waiter : waiters) {
    if (waiter.kind == Waiter::Kind::prefill_batch) {
      prefill_[waiter.id].waiting = false;
      tryStartBatch(waiter.id);
    } else {
      tryStartCopy(waiter.id);
    }
  }
}

void Simulator::tryStartBatch(std::uint32_t index) {
  PrefillEngine& engine = prefill_[index];
  if (engine.busy || engine.waiting) return;
  if (engine.flow.empty() && engine.batch.entries.empty()) {
    engine.batch = engine.batcher.next();
    if (engine.batch.entries.empty()) return;
    // The KV each entry needs in HBM: its cached blocks, from whichever buffer
    // read them (each chunk of a chunked prefill loads them again: layerwise
    // prefill keeps one layer resident); and once the request completes, its
    // KV to the DE (all of it on the PE path, only the new tokens on the DE path).
    engine.loading_phase = !layerwise_;
    engine.flow.clear();
    engine.flow_traffic = {};
    for (const scheduler::BatchEntry& entry : engine.batch.entries) {
      const AgentState& state = agents_[entry.request_id];
      const DecodeEngine& de = decodeEngine(state.decode_engine);
      const double prefill_path = static_cast<double>(state.prefill_path_tokens) * kv_bytes_per_token_;
      const double decode_path = static_cast<double>(state.decode_path_tokens) * kv_bytes_per_token_;
      engine.flow.push_back({engine.cnic_read, prefill_path});  // loopback H2D
      engine.flow.push_back({engine.cnic_write, prefill_path});
      engine.flow.push_back({nodes_[engine.node].dram, prefill_path});
      engine.flow.push_back({de.cnic_read, decode_path});  // the relay
      engine.flow.push_back({nodes_[de.node].dram, decode_path});
      engine.flow.push_back({engine.cnic_write, decode_path});
      engine.flow_traffic.pe_host_to_device += prefill_path;
      engine.flow_traffic.relay += decode_path;
      if (layerwise_ && entry.completes_request) addHandoff(engine, entry);
    }
  }
  const double min_seconds = engine.loading_phase ? 0 : engine.batch.predicted_seconds;
  const std::optional<double> seconds =
      startFlow(engine.flow, min_seconds, Waiter{Waiter::Kind::prefill_batch, index});
  if (!seconds) {
    engine.waiting = true;
    return;
  }
  engine.busy = true;
  engine.flow_seconds = *seconds;
  push(now_ + *seconds, Event::Kind::batch_done, index);
}

// A completed request's KV goes to its DE's buffer: all of it on the PE path,
// only what the DE does not hold already on the DE path.
void Simulator::addHandoff(PrefillEngine& engine, const scheduler::BatchEntry& entry) {
  const AgentState& state = agents_[entry.request_id];
  const DecodeEngine& de = decodeEngine(state.decode_engine);
  const double bytes = static_cast<double>(trace_.turns[state.turn].tokens - state.decode_path_tokens) *
                       kv_bytes_per_token_;
  engine.flow.push_back({engine.cnic_read, bytes});
  engine.flow.push_back({de.cnic_write, bytes});
  engine.flow.push_back({nodes_[de.node].dram, bytes});
  engine.flow_traffic.handoff += bytes;
}

void Simulator::batchDone(std::uint32_t index) {
  PrefillEngine& engine = prefill_[index];
  endFlow(engine.flow, engine.flow_seconds);
  traffic_.pe_host_to_device += engine.flow_traffic.pe_host_to_device;
  traffic_.relay += engine.flow_traffic.relay;
  traffic_.handoff += engine.flow_traffic.handoff;
  engine.flow_traffic = {};
  engine.busy = false;
  engine.flow.clear();
  if (engine.loading_phase) {
    // Without layerwise prefill the compute starts once every layer is in
    // HBM, and the KV leaves for the DEs as it is computed.
    engine.loading_phase = false;
    for (const scheduler::BatchEntry& entry : engine.batch.entries) {
      if (entry.completes_request) addHandoff(engine, entry);
    }
    tryStartBatch(index);
    return;
  }
  const scheduler::PrefillBatch batch = std::move(engine.batch);
  engine.batch = {};
  for (const scheduler::BatchEntry& entry : batch.entries) {
    engine.tokens -= std::min(engine.tokens, entry.new_tokens);
    const std::uint32_t agent = static_cast<std::uint32_t>(entry.request_id);
    AgentState& state = agents_[agent];
    ++state.chunks_prefilled;
    if (!entry.completes_request) continue;
    // Every chunk loaded the request's cached KV once, over the paths its
    // read plan chose.
    const double chunks = state.chunks_prefilled;
    state.chunks_prefilled = 0;
    expected_.pe_host_to_device += chunks * static_cast<double>(state.prefill_path_tokens) * kv_bytes_per_token_;
    expected_.relay += chunks * static_cast<double>(state.decode_path_tokens) * kv_bytes_per_token_;
    engine.requests -= 1;
    if (measured(state)) ttft_.push_back(now_ - state.arrival);
    if (state.prefill_path_tokens > 0) {
      releaseBuffer(engine.node, static_cast<double>(state.prefill_path_tokens) * kv_bytes_per_token_);
    }
    tryStartCopy(agent);
  }
  nodes_[engine.node].dirty = true;
  schedule_pending_ = true;
  tryStartBatch(index);
}

// The DE copies the whole context from its buffer into HBM, then decodes.
void Simulator::tryStartCopy(std::uint32_t agent) {
  AgentState& state = agents_[agent];
  const DecodeEngine& de = decodeEngine(state.decode_engine);
  const double bytes = static_cast<double>(trace_.turns[state.turn].tokens) * kv_bytes_per_token_;
  if (state.copy.empty()) {
    state.copy = {{de.cnic_read, bytes}, {de.cnic_write, bytes}, {nodes_[de.node].dram, bytes}};
  }
  const std::optional<double> seconds =
      startFlow(state.copy, 0, Waiter{Waiter::Kind::decode_copy, agent});
  if (!seconds) return;
  state.copy_seconds = *seconds;
  push(now_ + *seconds, Event::Kind::copy_done, agent);
}

void Simulator::copyDone(std::uint32_t agent) {
  AgentState& state = agents_[agent];
  endFlow(state.copy, state.copy_seconds);
  state.copy.clear();
  const Turn& turn = trace_.turns[state.turn];
  traffic_.de_host_to_device += static_cast<double>(turn.tokens) * kv_bytes_per_token_;
  const EngineIndex e = state.decode_engine;
  DecodeEngine& de = decodeEngine(e);
  releaseBuffer(de.node, static_cast<double>(turn.tokens) * kv_bytes_per_token_);

  // Join the running batch; the first token came from the prefill.
  advance(de);
  state.decode_join = now_;
  de.finishes.emplace(de.steps + (turn.generated_tokens - 1), agent);
  const std::uint64_t window = config_.model.attention_window;
  const std::uint64_t attended = window == 0 ? turn.tokens : std::min<std::uint64_t>(window, turn.tokens);
  de.attention_bytes += static_cast<double>(attended) * kv_bytes_per_token_;
  reschedule(e - prefill_engine_count_, de);
  if (measured(state)) ttst_.push_back(now_ + de.step_seconds - state.arrival);
}

void Simulator::advance(DecodeEngine& engine) {
  if (!engine.finishes.empty() && engine.step_seconds > 0) {
    engine.steps += (now_ - engine.last) / engine.step_seconds;
  }
  engine.last = now_;
}

void Simulator::reschedule(std::uint32_t index, DecodeEngine& engine) {
  const DecodeModel& model = config_.decode;
  const double batch = static_cast<double>(engine.finishes.size());
  engine.step_seconds = model.step_base_seconds + model.step_per_sequence_seconds * batch +
                        engine.attention_bytes / model.hbm_bytes_per_s;
  ++engine.generation;
  if (engine.finishes.empty()) return;
  const double steps_left = std::max(0.0, engine.finishes.top().first - engine.steps);
  push(now_ + steps_left * engine.step_seconds, Event::Kind::decode_done, index, engine.generation);
}

void Simulator::decodeDone(std::uint32_t index, std::uint64_t generation) {
  DecodeEngine& engine = decode_[index];
  if (generation != engine.generation) return;
  advance(engine);
  // Every sequence due by now (within rounding) leaves the batch.
  const std::uint64_t window = config_.model.attention_window;
  while (!engine.finishes.empty() && engine.finishes.top().first <= engine.steps + 1e-6) {
    const std::uint32_t agent = engine.finishes.top().second;
    engine.finishes.pop();
    const Turn& turn = trace_.turns[agents_[agent].turn];
    const std::uint64_t attended = window == 0 ? turn.tokens : std::min<std::uint64_t>(window, turn.tokens);
    engine.attention_bytes = std::max(0.0, engine.attention_bytes -
                                               static_cast<double>(attended) * kv_bytes_per_token_);
    finishTurn(agent);
  }
  if (engine.finishes.empty()) engine.attention_bytes = 0;
  reschedule(index, engine);
}

void Simulator::finishTurn(std::uint32_t agent) {
  AgentState& state = agents_[agent];
  const Turn& turn = trace_.turns[state.turn];
  if (measured(state)) {
    tpot_.push_back((now_ - state.decode_join) / static_cast<double>(turn.generated_tokens - 1));
  }
  ++requests_done_;
  DecodeEngine& de = decodeEngine(state.decode_engine);
  de.requests -= 1;
  de.tokens -= turn.tokens;
  de.kv_bytes -= cost_.kvBytes(turn.tokens);
  nodes_[de.node].dirty = true;
  schedule_pending_ = true;

  // Blocks this turn filled (its new tokens and its reply) go back to storage
  // before the agent's next turn may read them.
  const std::uint64_t filled =
      (turn.tokens + turn.generated_tokens) / block_tokens_ - turn.cached_tokens / block_tokens_;
  if (oracle_ || filled == 0) {
    nextTurn(agent);
    return;
  }
  const double bytes = static_cast<double>(filled) * static_cast<double>(cost_.kvBytes(block_tokens_));
  enqueue(de.node, nodes_[de.node].write,
          FifoJob{.kind = FifoJob::Kind::write_back, .agent = agent, .bytes = bytes, .tokens = 0});
}

void Simulator::writeDone(const FifoJob& job) {
  traffic_.write_back += job.bytes;
  nextTurn(job.agent);
}

void Simulator::nextTurn(std::uint32_t agent) {
  AgentState& state = agents_[agent];
  const double pause = trace_.turns[state.turn].tool_seconds;
  if (state.turn == state.last_turn) {
    ++agents_finished_;
    last_finish_ = now_;
    return;
  }
  ++state.turn;
  push(now_ + pause, Event::Kind::turn_arrives, agent);
}

SimReport Simulator::report() const {
  SimReport r;
  r.name = config_.name;
  r.mode = std::string(modeName(config_.mode));
  r.policy = oracle_ ? "none (no I/O)" : config_.policyName();
  r.layerwise = layerwise_;
  r.prefill_nodes = config_.prefill_nodes;
  r.decode_nodes = config_.decode_nodes;
  r.gpus = (config_.prefill_nodes + config_.decode_nodes) * config_.hardware.base.gpus_per_node;
  r.agents = trace_.agents();
  r.requests = requests_done_;
  r.prompt_tokens = trace_.prompt_tokens;
  r.cached_tokens = trace_.cached_tokens;
  r.generated_tokens = trace_.generated_tokens;
  r.makespan_seconds = last_finish_;
  r.tokens_per_second = last_finish_ > 0 ? static_cast<double>(trace_.prompt_tokens) / last_finish_ : 0;
  r.agents_per_second = config_.arrivals == Arrivals::online ? config_.agents_per_second : 0;
  std::vector<double> ttft = ttft_, ttst = ttst_, tpot = tpot_;
  r.ttft = summarise(ttft);
  r.ttst = summarise(ttst);
  r.tpot = summarise(tpot);

  // Bytes by link kind, as the links counted them.
  std::array<LinkSummary, kLinkKinds> kinds;
  for (std::uint8_t k = 0; k < kLinkKinds; ++k) kinds[k].kind = std::string(kLinkKindNames[k]);
  auto account = [&](std::uint8_t kind, double capacity, double bytes, double peak) {
    LinkSummary& s = kinds[kind];
    s.links += 1;
    s.capacity_bytes_per_s = capacity;
    s.bytes += bytes;
    if (last_finish_ > 0) s.mean_utilisation += bytes / (capacity * last_finish_);
    s.peak_utilisation = std::max(s.peak_utilisation, peak / capacity);
  };
  std::vector<double> snic_bytes;
  for (NodeIndex n = 0; n < nodes_.size(); ++n) {
    const NodeSim& node = nodes_[n];
    if (last_finish_ > 0) {
      const double utilisation = node.read.bytes() / (node.read.capacity() * last_finish_);
      (n < config_.prefill_nodes ? r.snic_read_utilisation_prefill : r.snic_read_utilisation_decode) +=
          utilisation / (n < config_.prefill_nodes ? config_.prefill_nodes : config_.decode_nodes);
    }
    account(snic_read, node.read.capacity(), node.read.bytes(), node.read.peakRate());
    account(snic_write, node.write.capacity(), node.write.bytes(), node.write.peakRate());
    snic_bytes.push_back(node.read.bytes() + node.write.bytes());
  }
  for (const SharedLink& link : shared_) {
    account(link.kind, link.capacity, link.bytes, link.peak_allocated);
  }
  for (LinkSummary& s : kinds) {
    if (s.links > 0) s.mean_utilisation /= s.links;
    r.peak_link_utilisation = std::max(r.peak_link_utilisation, s.peak_utilisation);
    r.links.push_back(s);
  }
  double snic_sum = 0, snic_max = 0;
  for (double b : snic_bytes) {
    snic_sum += b;
    snic_max = std::max(snic_max, b);
  }
  r.snic_max_over_mean = snic_sum > 0 ? snic_max / (snic_sum / static_cast<double>(snic_bytes.size())) : 0;
  const double read = traffic_.storage_read_pe_path + traffic_.storage_read_de_path;
  r.de_path_block_share = read > 0 ? traffic_.storage_read_de_path / read : 0;

  // What moved, counted as each copy ended; what should have, from the trace
  // (every cached token read once, every context copied into a DE's HBM once,
  // every filled block written back once) and from the decisions (which path
  // read which blocks; how many chunks loaded them).
  r.traffic = traffic_;
  r.expected = expected_;
  const double kv = kv_bytes_per_token_;
  const double block_bytes = static_cast<double>(block_tokens_) * kv;
  if (!oracle_) {
    r.expected.storage_read_pe_path = static_cast<double>(trace_.cached_tokens - decode_path_tokens_) * kv;
    r.expected.storage_read_de_path = static_cast<double>(decode_path_tokens_) * kv;
    double filled_blocks = 0;
    for (const Turn& turn : trace_.turns) {
      filled_blocks += static_cast<double>((turn.tokens + turn.generated_tokens) / block_tokens_ -
                                           turn.cached_tokens / block_tokens_);
    }
    r.expected.write_back = filled_blocks * block_bytes;
  }
  r.expected.handoff = static_cast<double>(trace_.prompt_tokens - decode_path_tokens_) * kv;
  r.expected.de_host_to_device = static_cast<double>(trace_.prompt_tokens) * kv;
  // And the links' own counters agree with the copies: each copy crosses one
  // CNIC read side, one CNIC write side and one DRAM.
  const double copies = traffic_.pe_host_to_device + traffic_.relay + traffic_.handoff +
                        traffic_.de_host_to_device;
  auto near = [](double a, double b) { return sameBytes(a, b, 1e-9); };
  r.link_bytes_match =
      near(kinds[snic_read].bytes, traffic_.storage_read_pe_path + traffic_.storage_read_de_path) &&
      near(kinds[snic_write].bytes, traffic_.write_back) && near(kinds[cnic_read].bytes, copies) &&
      near(kinds[cnic_write].bytes, copies) && near(kinds[dram].bytes, copies);
  r.scheduler_rounds = rounds_;
  r.events = events_processed_;
  return r;
}

}  // namespace

bool SimReport::bytesConserved(double tolerance) const noexcept {
  auto same = [&](double a, double b) { return sameBytes(a, b, tolerance); };
  return link_bytes_match && same(traffic.storage_read_pe_path, expected.storage_read_pe_path) &&
         same(traffic.storage_read_de_path, expected.storage_read_de_path) &&
         same(traffic.relay, expected.relay) &&
         same(traffic.pe_host_to_device, expected.pe_host_to_device) &&
         same(traffic.handoff, expected.handoff) &&
         same(traffic.de_host_to_device, expected.de_host_to_device) &&
         same(traffic.write_back, expected.write_back);
}

Result<SimReport> simulate(const SimConfig& config) {
  DP_TRY(config.validate());
  DP_TRY_ASSIGN(Trace trace, makeTrace(config.effectiveTrace(), config.model.block_tokens,
                                       config.arrivals, config.agents_per_second));
  DP_TRY_ASSIGN(scheduler::CostModel cost,
                scheduler::CostModel::create(config.model, config.hardware.base));
  DP_TRY_ASSIGN(std::unique_ptr<scheduler::PathPolicy> policy,
                scheduler::makePathPolicy(config.policyName()));
  const scheduler::ClusterSpec cluster = scheduler::ClusterSpec::uniform(
      config.prefill_nodes, config.decode_nodes, config.hardware.base);
  DP_TRY_ASSIGN(scheduler::Scheduler scheduler,
                scheduler::Scheduler::create(cluster, cost, std::move(policy), config.scheduler));
  Simulator simulator(config, std::move(trace), std::move(scheduler), std::move(cost));
  DP_TRY_ASSIGN(SimReport report, simulator.run());
  if (report.peak_link_utilisation > 1 + kCapacitySlack) {
    return Status(StatusCode::internal,
                  fmt::format("simulation broke a link's capacity: peak utilisation {:.6f}",
                              report.peak_link_utilisation));
  }
  return report;
}

}  // namespace dualpath::sim
