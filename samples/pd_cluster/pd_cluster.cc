// The miniature PD cluster (pd_cluster.h says what runs where).
//
// Wire of the cluster's own control channel (a SOCK_SEQPACKET socketpair the
// launcher makes before forking): the DE node sends one DecodeDone per
// request once its decode finished and every block decode filled is written
// back; the PE node's scheduler then releases the session's next turn. The
// PE node closing its end before the DE saw every request is an error on the
// DE node, and the reverse on the PE node: neither waits for a dead peer.
//
// A request's id on the relay and the handoff is the trace index with the
// scheduler's DE engine in the top bits, so the DE node knows which of its
// decode engines continues the request.
#include "pd_cluster.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <dualpath/common/log.h>
#include <dualpath/loader/block_format.h>
#include <dualpath/loader/buffer_pool.h>
#include <dualpath/loader/kv_handoff.h>
#include <dualpath/loader/kv_relay.h>
#include <dualpath/loader/layer_copy.h>
#include <dualpath/loader/posix_block_store.h>
#include <dualpath/loader/prefill_loader.h>
#include <dualpath/loader/remote_block_store.h>
#include <dualpath/loader/storage_limiter.h>
#include <dualpath/qos/policy_loader.h>
#include <dualpath/scheduler/cost_model.h>
#include <dualpath/scheduler/scheduler.h>
#include <dualpath/transport/transport.h>

#include "netns.h"
#include "rank_launcher.h"

namespace dualpath::samples {

std::string_view loadModeName(LoadMode mode) noexcept {
  switch (mode) {
    case LoadMode::basic:
      return "basic";
    case LoadMode::dualpath:
      return "dualpath";
    case LoadMode::oracle:
      return "oracle";
  }
  return "?";
}

nlohmann::json PdClusterReport::toJson() const {
  const double avg = (static_cast<double>(pe_snic_bytes) + static_cast<double>(de_snic_bytes)) / 2;
  auto util = [&](std::uint64_t bytes) {
    return seconds > 0 ? static_cast<double>(bytes) / (snic_bytes_per_s * seconds) : 0.0;
  };
  nlohmann::json kernel = nlohmann::json::object();
  for (const auto& [name, bytes] : kernel_class_bytes) kernel[name] = bytes;
  return {{"mode", loadModeName(mode)},
          {"network", {{"description", network_description}, {"kernel_class_bytes", kernel}}},
          {"seconds", seconds},
          {"requests", requests},
          {"prefill_tokens", prefill_tokens},
          {"cached_tokens", cached_tokens},
          {"generated_tokens", generated_tokens},
          {"tokens_per_s", seconds > 0 ? static_cast<double>(prefill_tokens) / seconds : 0},
          {"storage_nics",
           {{"emulated", snic_emulated},
            {"description", snic_description},
            {"storage_server_bytes", storage_server_bytes},
            {"pe_node_bytes", pe_snic_bytes},
            {"de_node_bytes", de_snic_bytes},
            {"pe_node_utilisation", util(pe_snic_bytes)},
            {"de_node_utilisation", util(de_snic_bytes)},
            {"max_over_avg",
             avg > 0 ? static_cast<double>(std::max(pe_snic_bytes, de_snic_bytes)) / avg : 0}}},
          {"blocks",
           {{"pe_path", blocks_pe_path},
            {"de_path", blocks_de_path},
            {"fallback", blocks_fallback},
            {"written_after_prefill", blocks_written_after_prefill},
            {"written_after_decode", blocks_written_after_decode}}},
          {"relay_bytes", relay_bytes},
          {"handoff_bytes", handoff_bytes},
          {"loads_verified", loads_verified},
          {"compute", "emulated"}};
}

namespace {

using namespace loader;
namespace sched = dualpath::scheduler;
using bench::AgenticTrace;
using bench::Bootstrap;
using bench::TraceRequest;
using nlohmann::json;

constexpr int kPeRank = 0;
constexpr int kDeRank = 1;
constexpr int kStorageRank = 2;  // with storage links only
constexpr unsigned kDeEngineShift = 48;
constexpr std::uint64_t kIndexMask = (std::uint64_t{1} << kDeEngineShift) - 1;
constexpr std::uint64_t kPoison = 0xdeadbeefcafef00dULL;
constexpr auto kPollNap = std::chrono::microseconds(50);

std::uint64_t wireId(std::uint64_t index, std::uint32_t de_engine) {
  return (std::uint64_t{de_engine} << kDeEngineShift) | index;
}

// Status::withContext, leaving an ok status untouched.
Status context(Status status, std::string_view what) {
  if (status.isOk()) return status;
  return std::move(status).withContext(what);
}

#define PD_TRY(expr, what)                                 \
  do {                                                     \
    if (Status pd_status_ = (expr); !pd_status_.isOk()) { \
      return context(std::move(pd_status_), (what));       \
    }                                                      \
  } while (0)

// Everything both nodes inherit from the launcher through fork().
struct Shared {
  const PdClusterOptions& options;
  LoadMode mode;
  ModelSpec model;
  AgenticTrace trace;
  double snic_bytes_per_s = 0;
  std::uint64_t snic_burst_bytes = 0;
  std::size_t pe_slots = 0, relay_slots = 0, handoff_slots = 0;
  int control[2] = {-1, -1};
  // The network has storage links: the storage directory is served by a
  // storage process in the storage namespace, and each node reaches it over
  // its storage NIC (RemoteBlockStore) instead of through an emulated one.
  bool storage_links = false;
};

// The decode-filled full blocks of a request: [tokens / B, (tokens + reply) / B).
std::pair<std::size_t, std::size_t> decodeBlocks(const TraceRequest& r, const ModelSpec& model) {
  return {r.tokens / model.block_tokens, (r.tokens + r.reply_tokens) / model.block_tokens};
}

std::size_t newBlocks(const TraceRequest& r, const ModelSpec& model) {
  const std::uint64_t bt = model.block_tokens;
  return (r.tokens + bt - 1) / bt - r.cached_tokens / bt;
}

Result<std::unique_ptr<PosixBlockStore>> openStore(const Shared& s) {
  Result<PosixBlockStoreOptions> options = PosixBlockStoreOptions::fromEnvironment();
  if (!options) return options.status();
  // The storage is one directory on this machine: reads come through the page
  // cache and the emulated storage NIC is the limit, not this VM's disk.
  options->direct_io = false;
  options->create_directory = false;
  options->sweep_temp_files = false;
  return PosixBlockStore::open(s.options.storage_dir, s.model, *options);
}

// A node's network: loopback, or (with options.network) its own namespace
// and veth, entered before UCX is loaded. The transport's device filter.
Result<transport::DeviceFilter> enterNetwork(const Shared& s, int rank) {
  if (s.options.network == nullptr) return transport::DeviceFilter{{"lo"}, {}};
  const bench::NetnsNode& node = s.options.network->nodes()[static_cast<std::size_t>(rank)];
  DP_TRY(bench::enterNetnsNode(node));
  // Shared memory between the nodes would bypass the veth and the kernel's
  // shaping (runPdCluster refused any other UCX_TLS).
  ::setenv("UCX_TLS", "tcp", 1);
  return transport::DeviceFilter{{node.device}, {}};
}

// A transport on `devices` with the cluster's policy. `connection_class` gets
// the class the node's connections use: on the compute link the kv class; on a storage link
// (`storage_link`) the policy's default class, which is high priority, so
// that a Full Block goes as one message rather than in the arbiter's
// low-priority chunks (each of which waits for the receiver to post the
// rest), and the arbiter bounds nothing in flight: the storage link carries
// no collectives to protect, and an in-flight bound would let payloads the
// storage server sent to one engine, whose thread is busy elsewhere (a write
// to another store waits for its outcome), hold back every other engine's
// outcomes behind them.
Result<std::shared_ptr<transport::Engine>> makeEngine(const Shared& s,
                                                      transport::DeviceFilter devices,
                                                      std::uint8_t& connection_class,
                                                      bool storage_link = false) {
  Result<qos::Policy> policy = qos::loadPolicyOrError(s.options.policy_path, false);
  if (!policy) return policy.status();
  if (storage_link) {
    policy->arbiter.max_inflight = 0;
    policy->arbiter.low_max_inflight = 0;
  }
  const qos::TrafficClass* chosen =
      storage_link ? &policy->defaultClass() : policy->findClass("kv");
  if (chosen == nullptr) return Status(StatusCode::internal, "the QoS policy has no kv class");
  connection_class = static_cast<std::uint8_t>(policy->indexOf(*chosen));
  return transport::Engine::create({*policy, std::move(devices), 30'000, false});
}

Result<std::shared_ptr<transport::Engine>> makeTransport(const Shared& s, int rank,
                                                         std::uint8_t& kv) {
  DP_TRY_ASSIGN(transport::DeviceFilter devices, enterNetwork(s, rank));
  return makeEngine(s, std::move(devices), kv);
}

// A node's end of the control channel, shut down (not merely closed) however
// the node ends: the launcher keeps both ends open until both nodes end, so
// only a shutdown tells the peer node that this one is gone.
class ControlEnd {
 public:
  explicit ControlEnd(int fd) : fd_(fd) {}
  ControlEnd(ControlEnd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ControlEnd& operator=(ControlEnd&&) = delete;
  ~ControlEnd() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  int fd() const noexcept { return fd_; }

 private:
  int fd_;
};

// ---- the global scheduler, in the PE node's process --------------------------

struct Work {
  std::size_t index = 0;  // in the trace
  sched::ReadPlan plan;
  std::uint32_t de_engine = 0;
};

// The scheduler's view of the cluster, fed by both nodes: a session's turn is
// ready once its previous turn's decode is done; it is assigned (a PE engine,
// a DE engine and a read plan) when a PE engine is idle, after both nodes
// reported their read queues and engine loads.
class ClusterScheduler {
 public:
  static Result<std::unique_ptr<ClusterScheduler>> create(const Shared& s) {
    const std::string policy_name = s.mode == LoadMode::dualpath ? "shorter-queue" : "pe-only";
    sched::HardwareSpec hw{.name = "emulated",
                           .gpu_flops = s.options.gpu_tflops * 1e12,
                           .mfu = 1.0,
                           .snic_bytes_per_s = s.snic_bytes_per_s,
                           .cnic_bytes_per_s = 10e9,
                           .gpus_per_node = s.options.engines,
                           .kv_hbm_bytes_per_gpu = kHbm};
    Result<sched::CostModel> cost = sched::CostModel::create(s.model, hw);
    if (!cost) return cost.status();
    Result<std::unique_ptr<sched::PathPolicy>> policy = sched::makePathPolicy(policy_name);
    if (!policy) return policy.status();
    // One request per round, handed out as PE engines free up: the batching
    // threshold must not hold a request back.
    sched::SchedulerConfig config;
    config.beta_tokens = std::uint64_t{1} << 50;
    config.max_round_requests = 1;
    Result<sched::Scheduler> scheduler = sched::Scheduler::create(
        sched::ClusterSpec::uniform(1, 1, hw), *cost, std::move(*policy), config);
    if (!scheduler) return scheduler.status();
    return std::unique_ptr<ClusterScheduler>(
        new ClusterScheduler(s, std::move(cost).value(), std::move(scheduler).value()));
  }

  const sched::CostModel& cost() const noexcept { return cost_; }

  // The engine's next request; nothing once every request's decode is done;
  // timeout at `deadline`.
  Result<std::optional<Work>> next(std::uint32_t engine, Deadline deadline) {
    std::unique_lock lock(mu_);
    for (;;) {
      PD_TRY(dispatch(), "scheduler");
      if (!queues_[engine].empty()) {
        Work w = queues_[engine].front();
        queues_[engine].pop_front();
        return std::optional<Work>(w);
      }
      if (decoded_ == s_.trace.requests.size() || !failure_.isOk()) {
        if (!failure_.isOk()) return failure_;
        return std::optional<Work>();
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline)
        return Status(StatusCode::timeout,
                      fmt::format("PE engine {}: no request to serve before the deadline ({} of "
                                  "{} decoded)",
                                  engine, decoded_, s_.trace.requests.size()));
    }
  }

  // The load's storage reads are over: its tokens leave the read queues.
  void readDone(const Work& w) {
    std::lock_guard lock(mu_);
    pe_read_q_ -= std::uint64_t{w.plan.pe_path_blocks} * s_.model.block_tokens;
    de_read_q_ -= std::uint64_t{w.plan.de_path_blocks} * s_.model.block_tokens;
  }

  // Prefill and handoff are done: the PE engine is free.
  void prefillDone(std::uint32_t engine, const Work& w) {
    {
      std::lock_guard lock(mu_);
      pe_loads_[engine].unfinished_requests -= 1;
      pe_loads_[engine].unfinished_tokens -= s_.trace.requests[w.index].tokens;
    }
    cv_.notify_all();
  }

  // The DE node finished decoding the request: its session's next turn is ready.
  void decodeDone(std::uint64_t index, std::uint32_t de_engine) {
    {
      std::lock_guard lock(mu_);
      const TraceRequest& r = s_.trace.requests[index];
      de_loads_[de_engine].unfinished_requests -= 1;
      de_loads_[de_engine].unfinished_tokens -= r.tokens;
      if (r.turn + 1 < s_.options.trace.turns) ready_.push_back(index + s_.options.trace.sessions);
      ++decoded_;
      if (decoded_ == s_.trace.requests.size()) finished_at_ = Clock::now();
    }
    cv_.notify_all();
  }

  void fail(Status why) {
    {
      std::lock_guard lock(mu_);
      if (failure_.isOk()) failure_ = std::move(why);
    }
    cv_.notify_all();
  }

  std::uint64_t decoded() const {
    std::lock_guard lock(mu_);
    return decoded_;
  }
  Clock::time_point finishedAt() const {
    std::lock_guard lock(mu_);
    return finished_at_;
  }

 private:
  static constexpr std::uint64_t kHbm = std::uint64_t{1} << 42;  // DE memory is not modelled

  ClusterScheduler(const Shared& s, sched::CostModel cost, sched::Scheduler scheduler)
      : s_(s),
        cost_(std::move(cost)),
        scheduler_(std::move(scheduler)),
        queues_(s.options.engines),
        pe_loads_(s.options.engines),
        de_loads_(s.options.engines) {
    for (sched::EngineLoad& l : pe_loads_) l.free_kv_bytes = kHbm;
    for (sched::EngineLoad& l : de_loads_) l.free_kv_bytes = kHbm;
    for (std::uint32_t i = 0; i < s.options.trace.sessions; ++i) ready_.push_back(i);
  }

  // Under mu_.
  Status dispatch() {
    for (;;) {
      const bool idle = std::any_of(pe_loads_.begin(), pe_loads_.end(), [](const auto& l) {
        return l.unfinished_requests == 0;
      });
      if (!idle || ready_.empty()) return Status::ok();
      PD_TRY(scheduler_.apply({.node = 0,
                               .read_queue_tokens = pe_read_q_,
                               .snic_load_bytes_per_s = 0,
                               .engines = pe_loads_}),
             "PE node report");
      PD_TRY(scheduler_.apply({.node = 1,
                               .read_queue_tokens = de_read_q_,
                               .snic_load_bytes_per_s = 0,
                               .engines = de_loads_}),
             "DE node report");
      const std::size_t index = ready_.front();
      ready_.pop_front();
      const TraceRequest& r = s_.trace.requests[index];
      PD_TRY(scheduler_.submit({.id = index, .tokens = r.tokens, .cached_tokens = r.cached_tokens}),
             fmt::format("request {}", index));
      std::vector<sched::Assignment> out;
      const sched::RoundResult round = scheduler_.scheduleRound(out);
      if (out.size() != 1)
        return Status(StatusCode::internal,
                      fmt::format("request {}: not assigned ({})", index,
                                  sched::roundStopName(round.stop)));
      const sched::ClusterState& c = scheduler_.cluster();
      const sched::Assignment& as = out[0];
      const std::uint32_t pe = as.prefill_engine - c.nodeOf(as.prefill_engine).first_engine;
      const std::uint32_t de = as.decode_engine - c.nodeOf(as.decode_engine).first_engine;
      queues_[pe].push_back({.index = index, .plan = as.read, .de_engine = de});
      pe_loads_[pe].unfinished_requests += 1;
      pe_loads_[pe].unfinished_tokens += r.tokens;
      de_loads_[de].unfinished_requests += 1;
      de_loads_[de].unfinished_tokens += r.tokens;
      pe_read_q_ += std::uint64_t{as.read.pe_path_blocks} * s_.model.block_tokens;
      de_read_q_ += std::uint64_t{as.read.de_path_blocks} * s_.model.block_tokens;
    }
  }

  const Shared& s_;
  sched::CostModel cost_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  sched::Scheduler scheduler_;
  std::deque<std::size_t> ready_;
  std::vector<std::deque<Work>> queues_;
  std::vector<sched::EngineLoad> pe_loads_, de_loads_;
  std::uint64_t pe_read_q_ = 0, de_read_q_ = 0;
  std::uint64_t decoded_ = 0;
  Clock::time_point finished_at_{};
  Status failure_;
};

// ---- connections ---------------------------------------------------------------

// Per PE engine two kv connections to the DE node: the relay (2i) and the
// handoff (2i + 1). The DE node listens and publishes its handles through
// the bootstrap; the PE node connects.
// The all-gather of every rank's handles: the DE node's listeners (one per
// connection) and, with storage links, the storage server's (rank 2's first).
// Connects the PE and DE nodes; `storage` gets the storage server's handle.
Result<std::vector<std::unique_ptr<transport::Endpoint>>> connectNodes(
    Bootstrap& bootstrap, transport::Engine& engine, std::uint8_t kv, std::size_t count,
    transport::ConnectHandle* storage) {
  const bool de = bootstrap.rank() == kDeRank;
  std::vector<transport::ConnectHandle> handles(count);
  std::vector<std::unique_ptr<transport::Listener>> listeners;
  if (de) {
    for (std::size_t i = 0; i < count; ++i) {
      auto listener = engine.listen(0, kv, &handles[i]);
      if (!listener) return context(listener.status(), "DE node: listen");
      listeners.push_back(std::move(listener).value());
    }
  }
  auto gathered = bootstrap.allGather(
      {reinterpret_cast<const std::byte*>(handles.data()), count * sizeof(handles[0])});
  if (!gathered) return context(gathered.status(), "bootstrap");
  if (bootstrap.ranks() > kStorageRank) {
    std::memcpy(storage, gathered->data() + kStorageRank * count * sizeof(handles[0]),
                sizeof(*storage));
  }
  std::vector<std::unique_ptr<transport::Connector>> connectors;
  if (!de) {
    std::memcpy(handles.data(), gathered->data() + count * sizeof(handles[0]),
                count * sizeof(handles[0]));
    for (const transport::ConnectHandle& h : handles) {
      auto connector = engine.connect(0, h, kv);
      if (!connector) return context(connector.status(), "PE node: connect");
      connectors.push_back(std::move(connector).value());
    }
  }
  std::vector<std::unique_ptr<transport::Endpoint>> endpoints(count);
  const Deadline deadline = Clock::now() + std::chrono::seconds(20);
  for (std::size_t i = 0; i < count;) {
    if (Clock::now() > deadline)
      return Status(StatusCode::timeout,
                    fmt::format("{} node: connection {} of {} not up within 20 s", de ? "DE" : "PE",
                                i, count));
    auto polled = de ? listeners[i]->tryAccept() : connectors[i]->poll();
    if (polled) {
      endpoints[i++] = std::move(polled).value();
    } else if (polled.status().code() != StatusCode::again) {
      return context(polled.status(), fmt::format("connection {}", i));
    } else {
      std::this_thread::sleep_for(kPollNap);
    }
  }
  return endpoints;
}

// One control message, DE -> PE.
struct DecodeDone {
  std::uint64_t wire_id = 0;
  std::uint32_t blocks_written = 0;
  std::uint32_t reserved = 0;
};

// ---- the PE node -----------------------------------------------------------------

struct PeFigures {
  std::atomic<std::uint64_t> pe_path{0}, de_path{0}, fallback{0}, verified{0};
  std::atomic<std::uint64_t> written_after_prefill{0}, handoff_bytes{0}, relay_bytes{0};
};

class PrefillEngine {
 public:
  static Result<std::unique_ptr<PrefillEngine>> create(
      const Shared& s, std::uint32_t index, std::unique_ptr<BlockStore> store,
      std::unique_ptr<transport::Endpoint> relay, std::unique_ptr<transport::Endpoint> handoff) {
    auto e = std::unique_ptr<PrefillEngine>(new PrefillEngine(s, index));
    e->store_ = std::move(store);
    auto pool = BufferPool::create({.name = fmt::format("pe-buffer-{}", index),
                                    .slot_bytes = s.model.fullBlockBytes(),
                                    .slots = s.pe_slots});
    if (!pool) return pool.status();
    e->pool_ = std::move(pool).value();
    auto client = RelayClient::create(std::move(relay), *e->pool_, s.model);
    if (!client) return client.status();
    e->relay_ = std::move(client).value();
    auto sender = HandoffSender::create(std::move(handoff), *e->pool_, s.model);
    if (!sender) return sender.status();
    e->sender_ = std::move(sender).value();
    auto copy = makeHostCopyEngine({.lookahead = 2});
    if (!copy) return copy.status();
    e->copy_ = std::move(copy).value();
    auto loader = PrefillLoader::create(
        {.store = *e->store_, .pool = *e->pool_, .relay = e->relay_.get(), .copy_engine = *e->copy_},
        s.model);
    if (!loader) return loader.status();
    e->loader_ = std::move(loader).value();
    e->device_.resize((s.trace.max_blocks + s.trace.max_new_blocks) * s.model.fullBlockBytes());
    return e;
  }

  ~PrefillEngine() {
    // Loader and relay before the pool and store they use.
    loader_.reset();
    relay_.reset();
    sender_.reset();
  }

  std::uint64_t snicBytes() const { return store_->counters().bytes_read; }

  Status serve(const Work& w, ClusterScheduler& scheduler, PeFigures& figures) {
    const TraceRequest& r = s_.trace.requests[w.index];
    const std::string who = fmt::format("PE engine {}: request {}", index_, w.index);
    const std::uint64_t wire = wireId(w.index, w.de_engine);
    const Deadline deadline = Clock::now() + s_.options.request_timeout;
    const std::size_t n = r.blocks.size(), fresh = newBlocks(r, s_.model);
    const std::uint64_t full = s_.model.fullBlockBytes(), layer_bytes = s_.model.layerBlockBytes();

    // The miss tokens' KV goes to the DE from these PE buffer slots.
    std::vector<BufferLease> out_slots;
    std::vector<std::uint64_t> offsets;
    for (std::size_t b = 0; b < fresh; ++b) {
      Result<BufferLease> lease = pool_->acquire();
      if (!lease) return context(lease.status(), who + ": PE buffer for the handoff");
      offsets.push_back(lease->offset());
      out_slots.push_back(std::move(lease).value());
    }
    const std::vector<TokenId>& session = s_.trace.session_tokens[r.session];
    auto handoff = missTokenHandoff(wire, {session.data(), r.tokens}, r.cached_tokens, s_.model,
                                    offsets, deadline);
    if (!handoff) return context(handoff.status(), who);
    PD_TRY(sender_->start(std::move(handoff).value()), who + ": handoff");

    // The load, over the scheduler's read paths.
    bool loading = false;
    if (s_.mode != LoadMode::oracle && n > 0) {
      PrefillLoad load{.request_id = wire, .blocks = r.blocks, .plan = w.plan,
                       .device_blocks = {}, .deadline = deadline};
      for (std::size_t b = 0; b < n; ++b) {
        std::byte* dst = device_.data() + b * full;
        load.device_blocks.push_back(dst);
        // A layer never copied keeps this word and fails the byte check.
        for (std::uint32_t l = 0; l < s_.model.layers; ++l)
          std::memcpy(dst + l * layer_bytes, &kPoison, sizeof kPoison);
      }
      PD_TRY(loader_->start(std::move(load)), who + ": load");
      loading = true;
    } else {
      scheduler.readDone(w);
    }

    // The miss tokens' KV that prefill "computes": each new full block's
    // synthetic KV, so the next turn can check what it reads back.
    for (std::size_t b = 0; b < fresh; ++b) {
      const std::size_t block = r.cached_tokens / s_.model.block_tokens + b;
      std::span<std::byte> dst(device_.data() + (n + b) * full, full);
      if (block < s_.trace.session_blocks[r.session].size())
        bench::fillBlockPayload(s_.trace.session_blocks[r.session][block],
                                s_.options.trace.seed, dst);
    }

    // Layerwise prefill: wait for layer l, compute it (emulated), save its
    // new KV to the PE buffer, and hand saved layers to the handoff.
    bool read_done = !loading;
    const double layer_seconds =
        scheduler.cost().prefillSeconds(r.cached_tokens, r.tokens - r.cached_tokens) /
        s_.model.layers;
    std::vector<HandoffOutcome> ended;
    auto pump = [&]() -> Status {
      if (loading) PD_TRY(loader_->poll(), "load");
      if (loading && !read_done && (loader_->copyStarted() || loader_->done())) {
        scheduler.readDone(w);
        read_done = true;
      }
      return context(sender_->poll(ended), "handoff");
    };
    // The copy engine starts once the loader knows which blocks it copies.
    while (loading && !loader_->copyStarted() && !loader_->done()) {
      PD_TRY(pump(), who);
      std::this_thread::sleep_for(kPollNap);
    }
    const bool copying = loading && loader_->copyStarted();
    auto compute_end = Clock::now();
    for (std::uint32_t l = 0; l < s_.model.layers; ++l) {
      while (copying) {
        Status waited = copy_->waitForLayer(l, Clock::now() + std::chrono::milliseconds(1));
        if (waited.isOk()) break;
        if (waited.code() != StatusCode::timeout || Clock::now() > deadline)
          return context(std::move(waited), who);
        PD_TRY(pump(), who);
      }
      compute_end = std::max(compute_end, Clock::now()) +
                    std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(layer_seconds));
      std::this_thread::sleep_until(compute_end);
      std::vector<CopySegment> saves;
      for (std::size_t b = 0; b < fresh; ++b)
        saves.push_back({.source = device_.data() + (n + b) * full + l * layer_bytes,
                         .destination = out_slots[b].bytes().data() + l * layer_bytes,
                         .bytes = layer_bytes});
      if (copying) {
        PD_TRY(copy_->saveLayer(l, std::move(saves)), who + ": save");
        PD_TRY(sender_->layersSaved(wire, copy_->layersSaved()), who + ": handoff");
      } else {
        for (const CopySegment& c : saves) std::memcpy(c.destination, c.source, c.bytes);
        PD_TRY(sender_->layersSaved(wire, l + 1), who + ": handoff");
      }
      PD_TRY(pump(), who);
    }
    if (copying) {
      PD_TRY(copy_->finish(deadline), who + ": copy engine");
      PD_TRY(sender_->layersSaved(wire, copy_->layersSaved()), who + ": handoff");
    }

    if (loading) {
      while (!loader_->done()) {
        if (Clock::now() > deadline)
          return Status(StatusCode::timeout, who + ": the load did not end before its deadline");
        PD_TRY(pump(), who);
        std::this_thread::sleep_for(kPollNap);
      }
      const PrefillLoadResult& res = loader_->result();
      if (res.state != PrefillLoadState::ok)
        return context(res.status, fmt::format("{}: load ended {}", who,
                                               prefillLoadStateName(res.state)));
      PD_TRY(verify(r, who), who);
      figures.pe_path += res.counters.pe_path;
      figures.de_path += res.counters.de_path;
      figures.fallback += res.counters.fallback;
      figures.verified += 1;
      PD_TRY(loader_->endLoad(), who);
      loading = false;
    }

    // The DE's verdict on the handoff: every new block verified and stored.
    while (ended.empty()) {
      if (Clock::now() > deadline)
        return Status(StatusCode::timeout, who + ": no handoff verdict before the deadline");
      std::this_thread::sleep_for(kPollNap);
      PD_TRY(pump(), who);
    }
    const HandoffOutcome& outcome = ended.front();
    PD_TRY(outcome.status, who + ": handoff");
    figures.written_after_prefill += outcome.blocks_written;
    return Status::ok();
  }

  void finalCounters(PeFigures& figures) const {
    figures.handoff_bytes += sender_->counters().bytes_put;
  }

 private:
  PrefillEngine(const Shared& s, std::uint32_t index) : s_(s), index_(index) {}

  // The device bytes of every loaded block against the block's synthetic KV.
  Status verify(const TraceRequest& r, const std::string& who) {
    const std::uint64_t full = s_.model.fullBlockBytes();
    for (std::size_t b = 0; b < r.blocks.size(); ++b) {
      const std::uint64_t want = expectedChecksum(r.blocks[b]);
      const std::uint64_t got = payloadChecksum({device_.data() + b * full, full});
      if (got != want)
        return Status(StatusCode::corrupt,
                      fmt::format("{}: block {} (index {}): the device buffer differs from the "
                                  "block's KV (checksum {:016x}, expected {:016x})",
                                  who, r.blocks[b].toHex(), b, got, want));
    }
    return Status::ok();
  }

  std::uint64_t expectedChecksum(const BlockId& id) {
    auto it = checksums_.find(id);
    if (it != checksums_.end()) return it->second;
    scratch_.resize(s_.model.fullBlockBytes());
    bench::fillBlockPayload(id, s_.options.trace.seed, scratch_);
    return checksums_[id] = payloadChecksum(scratch_);
  }

  const Shared& s_;
  std::uint32_t index_;
  std::unique_ptr<BlockStore> store_;
  std::unique_ptr<BufferPool> pool_;
  std::unique_ptr<RelayClient> relay_;
  std::unique_ptr<HandoffSender> sender_;
  std::unique_ptr<LayerCopyEngine> copy_;
  std::unique_ptr<PrefillLoader> loader_;
  std::vector<std::byte> device_;  // the emulated HBM: prefix blocks, then the new ones
  std::map<BlockId, std::uint64_t> checksums_;
  std::vector<std::byte> scratch_;
};

// What each node starts from: its end of the control channel (the other end
// closed), the transport on its network, its 2K connections to the other
// node (engine i's relay, then its handoff) and its storage NIC: emulated,
// or with storage links a transport on the node's storage device and the
// storage server's handle.
struct NodeStart {
  ControlEnd control;
  std::shared_ptr<transport::Engine> net;
  std::vector<std::unique_ptr<transport::Endpoint>> endpoints;
  std::unique_ptr<StorageRateLimiter> snic;
  std::shared_ptr<transport::Engine> storage_net;
  std::uint8_t storage_class = 0;
  transport::ConnectHandle storage_handle{};
  std::string snic_description;
};

// One engine's view of the shared storage: the directory behind the node's
// emulated storage NIC, or a connection to the storage server over the
// node's storage link.
Result<std::unique_ptr<BlockStore>> openNodeStore(const Shared& s, NodeStart& node,
                                                  const std::string& who) {
  if (!s.storage_links) {
    auto store = openStore(s);
    if (!store) return context(store.status(), who + ": store");
    (*store)->emulateStorageNic(node.snic.get());
    return std::unique_ptr<BlockStore>(std::move(store).value());
  }
  // It connects on its first use.
  auto store = RemoteBlockStore::create(
      {node.storage_net, 0, node.storage_handle, node.storage_class}, s.model);
  if (!store) return context(store.status(), who + ": store");
  return std::unique_ptr<BlockStore>(std::move(store).value());
}

Result<NodeStart> startNode(const Shared& s, Bootstrap& bootstrap, int rank) {
  const std::string who = rank == kPeRank ? "PE node" : "DE node";
  ::close(s.control[rank == kPeRank ? 1 : 0]);
  ControlEnd control(s.control[rank == kPeRank ? 0 : 1]);
  std::uint8_t kv = 0;
  auto net = makeTransport(s, rank, kv);
  if (!net) return context(net.status(), who + ": transport");
  NodeStart node{std::move(control), std::move(net).value(), {}, {}, {}, 0, {}, {}};
  auto endpoints = connectNodes(bootstrap, *node.net, kv, 2 * std::size_t{s.options.engines},
                                &node.storage_handle);
  if (!endpoints) return endpoints.status();
  node.endpoints = std::move(endpoints).value();
  auto snic = StorageRateLimiter::create(s.snic_bytes_per_s, s.snic_burst_bytes);
  if (!snic) return context(snic.status(), who + ": storage NIC");
  node.snic = std::move(snic).value();
  node.snic_description = node.snic->describe();
  if (s.storage_links) {
    const bench::NetnsNode& me = s.options.network->nodes()[static_cast<std::size_t>(rank)];
    auto storage_net =
        makeEngine(s, transport::DeviceFilter{{me.storage_device}, {}}, node.storage_class, true);
    if (!storage_net) return context(storage_net.status(), who + ": storage transport");
    node.storage_net = std::move(storage_net).value();
    node.snic_description = fmt::format(
        "a storage link (a veth per node to the storage server's namespace, shaped by tc tbf to "
        "{:g} MB/s each way)",
        s.options.snic_mbps);
  }
  return node;
}

Status runPeNode(const Shared& s, Bootstrap& bootstrap, const PdClusterProgress& progress,
                 std::string* report) {
  DP_TRY_ASSIGN(NodeStart node, startNode(s, bootstrap, kPeRank));
  const int control = node.control.fd();
  std::vector<std::unique_ptr<PrefillEngine>> engines;
  for (std::uint32_t i = 0; i < s.options.engines; ++i) {
    auto store = openNodeStore(s, node, fmt::format("PE engine {}", i));
    if (!store) return store.status();
    auto e = PrefillEngine::create(s, i, std::move(store).value(), std::move(node.endpoints[2 * i]),
                                   std::move(node.endpoints[2 * i + 1]));
    if (!e) return context(e.status(), fmt::format("PE engine {}", i));
    engines.push_back(std::move(e).value());
  }
  auto scheduler = ClusterScheduler::create(s);
  if (!scheduler) return context(scheduler.status(), "PE node: scheduler");
  ClusterScheduler& sch = **scheduler;
  PD_TRY(bootstrap.barrier(), "PE node: start barrier");

  const std::uint64_t total = s.trace.requests.size();
  const Deadline deadline = Clock::now() + s.options.timeout;
  const auto t0 = Clock::now();
  // The control channel: the DE node's decode verdicts.
  std::thread control_reader([&] {
    for (;;) {
      if (sch.decoded() == total) return;
      pollfd pfd{control, POLLIN, 0};
      const int ready = ::poll(&pfd, 1, 100);
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) {
        if (Clock::now() > deadline) {
          sch.fail(Status(StatusCode::timeout, "PE node: the DE node's decodes did not finish"));
          return;
        }
        continue;
      }
      DecodeDone done;
      const ssize_t got = ::recv(control, &done, sizeof done, 0);
      if (got != static_cast<ssize_t>(sizeof done)) {
        sch.fail(Status(StatusCode::remote,
                        fmt::format("PE node: the DE node closed the control channel after {} of "
                                    "{} decodes",
                                    sch.decoded(), total)));
        return;
      }
      sch.decodeDone(done.wire_id & kIndexMask,
                     static_cast<std::uint32_t>(done.wire_id >> kDeEngineShift));
      if (progress) progress(sch.decoded(), total);
    }
  });
  PeFigures figures;
  std::vector<std::thread> threads;
  std::mutex failure_mu;
  Status failure;
  for (std::uint32_t i = 0; i < s.options.engines; ++i) {
    threads.emplace_back([&, i] {
      for (;;) {
        Result<std::optional<Work>> w = sch.next(i, deadline);
        Status st = w ? Status::ok() : w.status();
        if (st.isOk() && !w->has_value()) return;
        if (st.isOk()) st = engines[i]->serve(**w, sch, figures);
        if (!st.isOk()) {
          {
            std::lock_guard lock(failure_mu);
            if (failure.isOk()) failure = st;
          }
          sch.fail(std::move(st));
          return;
        }
        sch.prefillDone(i, **w);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (!failure.isOk()) {
    ::shutdown(control, SHUT_RDWR);  // the DE node stops waiting for us
    control_reader.join();
    return failure;
  }
  control_reader.join();
  if (sch.decoded() != total)
    return Status(StatusCode::internal,
                  fmt::format("PE node: {} of {} requests decoded", sch.decoded(), total));
  // Closing the connections makes the DE's ends log "connection failed":
  // expected now, so only errors are shown from here on.
  log::setLevel(log::Level::error);
  const double seconds = std::chrono::duration<double>(sch.finishedAt() - t0).count();
  std::uint64_t snic_bytes = 0;
  for (const auto& e : engines) {
    snic_bytes += e->snicBytes();
    e->finalCounters(figures);
  }
  *report = json{{"seconds", seconds},
                 {"snic_bytes", snic_bytes},
                 {"snic", node.snic_description},
                 {"pe_path", figures.pe_path.load()},
                 {"de_path", figures.de_path.load()},
                 {"fallback", figures.fallback.load()},
                 {"verified", figures.verified.load()},
                 {"written_after_prefill", figures.written_after_prefill.load()},
                 {"handoff_bytes", figures.handoff_bytes.load()}}
                .dump();
  // Teardown in turn, so that no worker sees its peer's sockets vanish under
  // it: this node closes its connections and its transport (whose workers
  // progress the closes to their end) while the DE node still progresses its
  // side; only then does the DE node close its own and end.
  engines.clear();
  node.net.reset();
  ::shutdown(control, SHUT_WR);
  pollfd pfd{control, POLLIN, 0};
  while (Clock::now() < deadline && ::poll(&pfd, 1, 100) == 0) {
  }  // until the DE node's end closed
  // With storage links: the storage node serves until both nodes are here.
  if (s.storage_links) PD_TRY(bootstrap.barrier(), "PE node: end barrier");
  return Status::ok();
}

// ---- the DE node -----------------------------------------------------------------

struct Decoding {
  std::uint64_t wire_id = 0;
  std::uint64_t remaining = 0;  // tokens still to generate
  HandoffArrival arrival;       // the KV decode continues from (its slots)
};

Status runDeNode(const Shared& s, Bootstrap& bootstrap, std::string* report) {
  DP_TRY_ASSIGN(NodeStart node, startNode(s, bootstrap, kDeRank));
  const int control = node.control.fd();
  struct Pair {
    std::unique_ptr<BlockStore> store;
    std::unique_ptr<BufferPool> relay_pool, handoff_pool;
    std::unique_ptr<RelayServer> server;
    std::unique_ptr<HandoffReceiver> receiver;
  };
  std::vector<Pair> pairs(s.options.engines);
  for (std::uint32_t i = 0; i < s.options.engines; ++i) {
    Pair& p = pairs[i];
    auto store = openNodeStore(s, node, fmt::format("DE engine {}", i));
    if (!store) return store.status();
    p.store = std::move(store).value();
    auto relay_pool = BufferPool::create({.name = fmt::format("de-relay-buffer-{}", i),
                                          .slot_bytes = s.model.fullBlockBytes(),
                                          .slots = s.relay_slots});
    auto handoff_pool = BufferPool::create({.name = fmt::format("de-decode-buffer-{}", i),
                                            .slot_bytes = s.model.fullBlockBytes(),
                                            .slots = s.handoff_slots});
    if (!relay_pool) return relay_pool.status();
    if (!handoff_pool) return handoff_pool.status();
    p.relay_pool = std::move(relay_pool).value();
    p.handoff_pool = std::move(handoff_pool).value();
    auto server = RelayServer::create(
        std::move(node.endpoints[2 * i]), *p.store, *p.relay_pool, s.model,
        {.max_put_bytes = std::uint64_t{s.options.relay_put_kib} * 1024});
    if (!server) return context(server.status(), "DE relay server");
    p.server = std::move(server).value();
    auto receiver = HandoffReceiver::create(std::move(node.endpoints[2 * i + 1]), *p.store,
                                            *p.handoff_pool, s.model);
    if (!receiver) return context(receiver.status(), "DE handoff receiver");
    p.receiver = std::move(receiver).value();
  }
  PD_TRY(bootstrap.barrier(), "DE node: start barrier");

  const std::uint64_t total = s.trace.requests.size();
  const Deadline deadline = Clock::now() + s.options.timeout;
  const auto tpot = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(s.options.tpot_ms));
  std::vector<std::vector<Decoding>> decoding(s.options.engines);
  std::vector<Clock::time_point> next_step(s.options.engines);
  std::vector<std::byte> block(s.model.fullBlockBytes());
  std::uint64_t finished = 0, written_after_decode = 0;
  std::vector<HandoffArrival> arrived;
  while (finished < total) {
    if (Clock::now() > deadline)
      return Status(StatusCode::timeout, fmt::format("DE node: {} of {} requests decoded by the "
                                                     "deadline", finished, total));
    for (Pair& p : pairs) {
      PD_TRY(p.server->poll(), "DE node: relay from " + p.server->peerName());
      PD_TRY(p.receiver->poll(arrived), "DE node: handoff from " + p.receiver->peerName());
    }
    for (HandoffArrival& a : arrived) {
      const std::uint64_t index = a.request_id & kIndexMask;
      const auto engine = static_cast<std::uint32_t>(a.request_id >> kDeEngineShift);
      if (index >= total || engine >= s.options.engines)
        return Status(StatusCode::corrupt,
                      fmt::format("DE node: handoff {:#x} from {} names no request of the trace",
                                  a.request_id, a.peer));
      if (decoding[engine].empty()) next_step[engine] = Clock::now() + tpot;
      decoding[engine].push_back(
          {.wire_id = a.request_id, .remaining = s.trace.requests[index].reply_tokens,
           .arrival = std::move(a)});
    }
    arrived.clear();
    // Decode steps: each running request of an engine gains one token per step.
    for (std::uint32_t e = 0; e < s.options.engines; ++e) {
      std::vector<Decoding>& running = decoding[e];
      while (!running.empty() && Clock::now() >= next_step[e]) {
        next_step[e] += tpot;
        for (Decoding& d : running) d.remaining -= 1;
        for (auto it = running.begin(); it != running.end();) {
          if (it->remaining > 0) {
            ++it;
            continue;
          }
          // The reply is complete: write back every block decode filled.
          const std::uint64_t index = it->wire_id & kIndexMask;
          const TraceRequest& r = s.trace.requests[index];
          const auto [first, end] = decodeBlocks(r, s.model);
          Status written = Status::ok();
          for (std::size_t b = first; b < end && written.isOk(); ++b) {
            const BlockId& id = s.trace.session_blocks[r.session][b];
            bench::fillBlockPayload(id, s.options.trace.seed, block);
            written = pairs[e].store->write(id, block);
            if (!written.isOk())
              return context(std::move(written),
                             fmt::format("DE engine {}: request {}: write-back of block {}", e,
                                         index, id.toHex()));
          }
          written_after_decode += end - first;
          const DecodeDone done{.wire_id = it->wire_id,
                                .blocks_written = static_cast<std::uint32_t>(end - first),
                                .reserved = 0};
          it = running.erase(it);  // the decode buffer's slots go back
          if (::send(control, &done, sizeof done, MSG_NOSIGNAL) != sizeof done)
            return Status(StatusCode::remote,
                          fmt::format("DE node: the PE node closed the control channel after {} "
                                      "of {} decodes",
                                      finished, total));
          ++finished;
        }
      }
    }
    // A PE node that ended early (it failed) closes the control channel.
    char probe;
    if (::recv(control, &probe, 1, MSG_DONTWAIT | MSG_PEEK) == 0)
      return Status(StatusCode::remote,
                    fmt::format("DE node: the PE node went away after {} of {} decodes", finished,
                                total));
    std::this_thread::sleep_for(kPollNap);
  }
  std::uint64_t snic_bytes = 0, relay_bytes = 0;
  for (const Pair& p : pairs) {
    snic_bytes += p.store->counters().bytes_read;
    relay_bytes += p.server->counters().bytes_put;
  }
  *report = json{{"snic_bytes", snic_bytes},
                 {"relay_bytes", relay_bytes},
                 {"written_after_decode", written_after_decode}}
                .dump();
  // The PE node closes its connections first, then the control channel.
  // Until then this node keeps its workers progressing, so that those closes
  // complete as handshakes instead of as failures on a silent peer.
  log::setLevel(log::Level::error);  // as on the PE node: the teardown's warnings are expected
  std::vector<bool> open(pairs.size(), true);
  while (Clock::now() < deadline) {
    char probe;
    if (::recv(control, &probe, 1, MSG_DONTWAIT | MSG_PEEK) == 0) break;
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      if (open[i]) open[i] = pairs[i].server->poll().isOk() && pairs[i].receiver->poll(arrived).isOk();
    }
    std::this_thread::sleep_for(kPollNap);
  }
  // Then this node's connections go, and only then its end of the channel.
  pairs.clear();
  if (s.storage_links) {
    // The PE node waits for this end to close before its own end barrier.
    ::shutdown(control, SHUT_RDWR);
    PD_TRY(bootstrap.barrier(), "DE node: end barrier");
  }
  return Status::ok();  // then node.control shuts the channel down, after the transport
}

// ---- the storage server (with storage links) ----------------------------------

// Serves the storage directory to both nodes' engines from the storage
// namespace until both nodes have reached their end barrier (or the mode's
// deadline passes): an engine's store connects on its first use, so the
// server cannot count its way to the end. Its BlockServer is polled by one
// thread of its own, since this thread waits in the bootstrap meanwhile.
Status runStorageNode(const Shared& s, Bootstrap& bootstrap, std::string* report) {
  const bench::NetnsNode& storage = *s.options.network->storage();
  PD_TRY(bench::enterNetnsNode(storage), "storage node");
  ::setenv("UCX_TLS", "tcp", 1);
  std::uint8_t storage_class = 0;
  auto net = makeEngine(s, transport::DeviceFilter{{storage.device}, {}}, storage_class, true);
  if (!net) return context(net.status(), "storage node: transport");
  auto store = openStore(s);
  if (!store) return context(store.status(), "storage node: store");
  auto server = BlockServer::create(**net, 0, storage_class, **store);
  if (!server) return context(server.status(), "storage node: block server");
  BlockServer& served = **server;

  const Deadline deadline = Clock::now() + s.options.timeout;
  std::atomic<bool> nodes_done{false};
  Status polled = Status::ok();
  std::thread poller([&] {
    while (!nodes_done.load(std::memory_order_acquire)) {
      if (Clock::now() > deadline) {
        polled = Status(StatusCode::timeout, "the nodes did not end before the mode's deadline");
        return;
      }
      polled = served.poll();
      if (!polled.isOk()) return;
      std::this_thread::sleep_for(kPollNap);
    }
  });
  // The all-gather of the nodes' handles (a chunk per rank, as big as theirs:
  // a handle per connection between the nodes), then the start and end
  // barriers.
  std::vector<transport::ConnectHandle> handles(2 * std::size_t{s.options.engines});
  handles[0] = served.handle();
  auto gathered = bootstrap.allGather(
      {reinterpret_cast<const std::byte*>(handles.data()), handles.size() * sizeof(handles[0])});
  Status synced = gathered ? bootstrap.barrier() : gathered.status();
  if (synced.isOk()) synced = bootstrap.barrier();
  nodes_done.store(true, std::memory_order_release);
  poller.join();
  PD_TRY(synced, "storage node: bootstrap");
  PD_TRY(polled, "storage node");
  const BlockServerCounters c = served.counters();
  *report = json{{"reads_ok", c.reads_ok},
                 {"reads_failed", c.reads_failed},
                 {"writes_ok", c.writes_ok},
                 {"writes_failed", c.writes_failed},
                 {"bytes_sent", c.bytes_sent},
                 {"connections", c.connections}}
                .dump();
  return Status::ok();
}

// The history every session has in storage before its first turn.
Status seedStorage(const Shared& s) {
  std::error_code ec;
  std::filesystem::remove_all(s.options.storage_dir, ec);
  if (ec)
    return Status(StatusCode::io,
                  fmt::format("{}: cannot empty it: {}", s.options.storage_dir, ec.message()));
  std::filesystem::create_directories(s.options.storage_dir, ec);
  if (ec)
    return Status(StatusCode::io,
                  fmt::format("{}: cannot create it: {}", s.options.storage_dir, ec.message()));
  auto store = openStore(s);
  if (!store) return context(store.status(), "storage");
  std::vector<std::byte> payload(s.model.fullBlockBytes());
  for (std::uint32_t session = 0; session < s.options.trace.sessions; ++session) {
    for (const BlockId& id : s.trace.requests[session].blocks) {
      bench::fillBlockPayload(id, s.options.trace.seed, payload);
      PD_TRY((*store)->write(id, payload), "storage: seeding block " + id.toHex());
    }
  }
  return Status::ok();
}

Status checkOptions(const PdClusterOptions& o) {
  auto bad = [](std::string_view option, std::string_view why) {
    return Status(StatusCode::invalid_argument, fmt::format("pd-cluster: {} {}", option, why));
  };
  if (o.engines == 0 || o.engines > 64) return bad("engines", "must be 1 to 64");
  if (!(o.snic_mbps > 0)) return bad("snic_mbps", "must be positive");
  if (!(o.gpu_tflops > 0)) return bad("gpu_tflops", "must be positive");
  if (!(o.tpot_ms > 0)) return bad("tpot_ms", "must be positive");
  if (o.storage_dir.empty()) return bad("storage_dir", "is required");
  if (o.request_timeout.count() <= 0 || o.timeout.count() <= 0)
    return bad("timeout", "must be positive");
  if (o.network != nullptr) {
    if (o.policy_path.empty())
      return bad("policy_path", "is required with a network: the nodes' classes must be the "
                                "ones its tc script classifies (makePdClusterNetwork's)");
    if (o.network->nodes().size() != 2)
      return bad("network", fmt::format("has {} nodes; the cluster needs 2 (PE, DE)",
                                        o.network->nodes().size()));
    const char* tls = std::getenv("UCX_TLS");
    if (tls != nullptr && std::string_view(tls) != "tcp")
      return bad("network", fmt::format("with UCX_TLS='{}': the nodes must talk over tcp only "
                                        "(shared memory would bypass the veth links and tc)",
                                        tls));
  }
  return Status::ok();
}

}  // namespace

PdClusterNetwork::PdClusterNetwork() = default;
PdClusterNetwork::PdClusterNetwork(PdClusterNetwork&&) noexcept = default;
PdClusterNetwork& PdClusterNetwork::operator=(PdClusterNetwork&&) noexcept = default;
PdClusterNetwork::~PdClusterNetwork() = default;

Result<PdClusterNetwork> makePdClusterNetwork(const std::string& work_dir, double compute_gbps,
                                              double storage_mbps) {
  if (!(compute_gbps * 1e6 >= 1))
    return Status(StatusCode::invalid_argument,
                  fmt::format("pd-cluster: compute link {} Gbit/s: below tc's 1kbit", compute_gbps));
  if (!(storage_mbps * 8e3 >= 1))
    return Status(StatusCode::invalid_argument,
                  fmt::format("pd-cluster: storage link {} MB/s: below tc's 1kbit", storage_mbps));
  PdClusterNetwork network;
  network.policy_path = work_dir + "/pd-cluster-policy.toml";
  {
    // The Ethernet test bed's classes (qos/examples/ethernet-testbed.toml):
    // the kernel tells them apart by the TCP port range UCX binds per class.
    std::ofstream out(network.policy_path);
    out << "# written by the miniature PD cluster (samples/pd_cluster)\n"
           "format = 1\n\n[fabric]\nkind = \"ethernet\"\n\n"
           "[[class]]\nname = \"collective\"\nrole = \"collectives\"\npriority = \"high\"\n"
           "default = true\nnccl_traffic_classes = [0]\ntcp_ports = \"24576-25599\"\n\n"
           "[[class]]\nname = \"kv\"\nrole = \"kv\"\npriority = \"low\"\n"
           "nccl_traffic_classes = [1]\ntcp_ports = \"25600-26623\"\ndscp = 10\n\n"
           "[arbiter]\nlow_share = 0.05\n";
    if (!out)
      return Status(StatusCode::io,
                    fmt::format("pd-cluster: writing the policy {}", network.policy_path));
  }
  bench::NetnsOptions netns;
  netns.script = bench::defaultNetnsScript();
  netns.qos_binary = bench::defaultQosBinary();
  netns.nodes = 2;
  netns.policy_path = network.policy_path;
  netns.rate = bench::tcRate(compute_gbps);
  netns.storage_rate = bench::tcRate(storage_mbps * 8e-3);
  auto cluster = bench::NetnsCluster::up(netns);
  if (!cluster) return context(cluster.status(), "pd-cluster: network namespaces");
  network.cluster = std::move(cluster).value();
  return network;
}

Result<PdClusterReport> runPdCluster(const PdClusterOptions& options, LoadMode mode,
                                     const PdClusterProgress& progress) {
  PD_TRY(checkOptions(options), "options");
  auto model = sched::modelPreset(options.model);
  if (!model) return model.status();
  auto trace = bench::makeAgenticTrace(options.trace, *model);
  if (!trace) return trace.status();
  Shared s{.options = options, .mode = mode, .model = *model, .trace = std::move(trace).value()};
  s.snic_bytes_per_s = options.snic_mbps * 1e6;
  s.snic_burst_bytes = model->fullBlockBytes();
  // PE: one load's blocks, as many again for fallback reads, and one
  // handoff's blocks. DE: one relay's blocks; and the decode buffer holds a
  // handoff's blocks per session decoding at once.
  s.pe_slots = 2 * s.trace.max_blocks + s.trace.max_new_blocks;
  s.relay_slots = std::max<std::size_t>(s.trace.max_blocks, 1);
  s.handoff_slots = std::size_t{options.trace.sessions} * s.trace.max_new_blocks;
  PD_TRY(seedStorage(s), "pd-cluster");
  if (options.network != nullptr)
    PD_TRY(options.network->shape(options.policy_path), "pd-cluster: network");
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s.control) != 0)
    return Status(StatusCode::io, fmt::format("pd-cluster: socketpair: {}", std::strerror(errno)));

  s.storage_links = options.network != nullptr && options.network->storage() != nullptr;
  auto outcomes = bench::runRanks(
      s.storage_links ? 3 : 2,
      [&](Bootstrap& bootstrap, std::string* report) {
        switch (bootstrap.rank()) {
          case kPeRank:
            return runPeNode(s, bootstrap, progress, report);
          case kDeRank:
            return runDeNode(s, bootstrap, report);
          default:
            return runStorageNode(s, bootstrap, report);
        }
      },
      std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout +
                                                            std::chrono::seconds(30)));
  ::close(s.control[0]);
  ::close(s.control[1]);
  if (!outcomes) return outcomes.status();
  for (const bench::RankOutcome& o : *outcomes) {
    if (!o.status.isOk())
      return context(o.status, fmt::format("pd-cluster {} ({} node)", loadModeName(mode),
                                           o.rank == kPeRank   ? "PE"
                                           : o.rank == kDeRank ? "DE"
                                                               : "storage"));
  }
  const json pe = json::parse((*outcomes)[kPeRank].report, nullptr, false);
  const json de = json::parse((*outcomes)[kDeRank].report, nullptr, false);
  if (pe.is_discarded() || de.is_discarded())
    return Status(StatusCode::internal, "pd-cluster: a node's report is not JSON");
  PdClusterReport r;
  r.mode = mode;
  r.seconds = pe.at("seconds").get<double>();
  r.requests = s.trace.requests.size();
  r.prefill_tokens = s.trace.tokens;
  r.cached_tokens = s.trace.cached_tokens;
  r.generated_tokens = s.trace.reply_tokens;
  r.pe_snic_bytes = pe.at("snic_bytes").get<std::uint64_t>();
  r.de_snic_bytes = de.at("snic_bytes").get<std::uint64_t>();
  r.blocks_pe_path = pe.at("pe_path").get<std::uint64_t>();
  r.blocks_de_path = pe.at("de_path").get<std::uint64_t>();
  r.blocks_fallback = pe.at("fallback").get<std::uint64_t>();
  r.relay_bytes = de.at("relay_bytes").get<std::uint64_t>();
  r.handoff_bytes = pe.at("handoff_bytes").get<std::uint64_t>();
  r.blocks_written_after_prefill = pe.at("written_after_prefill").get<std::uint64_t>();
  r.blocks_written_after_decode = de.at("written_after_decode").get<std::uint64_t>();
  r.loads_verified = pe.at("verified").get<std::uint64_t>();
  r.snic_bytes_per_s = s.snic_bytes_per_s;
  r.snic_description = pe.at("snic").get<std::string>();
  r.snic_emulated = !s.storage_links;
  if (s.storage_links) {
    const json storage = json::parse((*outcomes)[kStorageRank].report, nullptr, false);
    if (storage.is_discarded())
      return Status(StatusCode::internal, "pd-cluster: the storage node's report is not JSON");
    r.storage_server_bytes = storage.at("bytes_sent").get<std::uint64_t>();
    // Every byte the nodes read came over a storage link from the server.
    if (r.storage_server_bytes != r.pe_snic_bytes + r.de_snic_bytes)
      return Status(StatusCode::internal,
                    fmt::format("pd-cluster {}: the storage server sent {} B, the nodes read {} B",
                                loadModeName(mode), r.storage_server_bytes,
                                r.pe_snic_bytes + r.de_snic_bytes));
  }
  r.network_description = "UCX over tcp on loopback";
  if (options.network != nullptr) {
    // tc's "4000000kbit" (bench::tcRate) reads better as Gbit/s.
    const std::string& rate = options.network->rate();
    std::string readable = rate;
    if (rate.ends_with("kbit")) {
      readable = fmt::format("{:.3g} Gbit/s", std::strtod(rate.c_str(), nullptr) / 1e6);
    }
    r.network_description = fmt::format(
        "UCX over tcp on veth links in network namespaces, shaped by tc htb to {} per node",
        readable);
    for (const bench::NetnsNode& node : options.network->nodes()) {
      auto counters = options.network->classCounters(node.index);
      if (!counters) return context(counters.status(), "pd-cluster: the kernel's class counters");
      for (const bench::KernelClassCounters& k : *counters) {
        auto it = std::find_if(r.kernel_class_bytes.begin(), r.kernel_class_bytes.end(),
                               [&](const auto& entry) { return entry.first == k.name; });
        if (it == r.kernel_class_bytes.end())
          it = r.kernel_class_bytes.insert(r.kernel_class_bytes.end(), {k.name, 0});
        it->second += k.bytes;
      }
    }
  }
  if (mode != LoadMode::oracle &&
      r.blocks_pe_path + r.blocks_de_path + r.blocks_fallback != s.trace.block_reads)
    return Status(StatusCode::internal,
                  fmt::format("pd-cluster {}: {} blocks loaded, the trace reads {}",
                              loadModeName(mode),
                              r.blocks_pe_path + r.blocks_de_path + r.blocks_fallback,
                              s.trace.block_reads));
  return r;
}

}  // namespace dualpath::samples
