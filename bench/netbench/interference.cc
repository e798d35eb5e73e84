#include "interference.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <dualpath/common/params.h>
#include <dualpath/transport/transport.h>

#include "collective_data.h"
#include "collectives.h"
#include "net_plugin.h"
#include "netns.h"
#if DUALPATH_HAVE_NCCL
#include "nccl_collectives.h"
#endif
#include "rank_launcher.h"

namespace dualpath::bench {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The classes of every case's policy: trafficClass 0 is `collective`, 1 is `kv`.
constexpr int kCollectiveClass = 0;
constexpr int kKvClass = 1;
// Puts a rank keeps in flight, and the slots of its landing region.
constexpr std::size_t kKvWindow = 8;

enum class Case { alone, qos_off, qos_on };

std::string_view caseName(Case c) {
  switch (c) {
    case Case::alone:
      return "alone";
    case Case::qos_off:
      return "kv, qos off";
    case Case::qos_on:
      return "kv, qos on";
  }
  return "?";
}

// Policy text of a case: the Ethernet test bed's two classes; the arbiter
// shapes each rank's link to the emulated NIC. QoS off: KV at high priority,
// so the arbiter shares the link evenly between the classes. In netns mode
// each class also gets its TCP port range (qos/examples/ethernet-testbed.toml's),
// which UCX's per-class PORT_RANGE honours and the rendered tc script
// classifies by; the kernel's HTB is then the link, and the arbiter shapes
// only when asked to.
std::string policyText(Case c, const InterferenceOptions& o) {
  const bool arbiter_shapes = !o.netns || o.netns_arbiter_shaping;
  return fmt::format(
      "# written by dualpath-bench interference, case '{}'\n"
      "format = 1\n\n"
      "[fabric]\nkind = \"ethernet\"\n\n"
      "[[class]]\nname = \"collective\"\nrole = \"collectives\"\npriority = \"high\"\n"
      "default = true\nnccl_traffic_classes = [{}]\n{}\n"
      "[[class]]\nname = \"kv\"\nrole = \"kv\"\npriority = \"{}\"\n"
      "nccl_traffic_classes = [{}]\ndscp = 10\n{}\n"
      "[arbiter]\nlow_share = 0.05\n{}{}",
      caseName(c), kCollectiveClass, o.netns ? "tcp_ports = \"24576-25599\"\n" : "",
      c == Case::qos_off ? "high" : "low", kKvClass,
      o.netns ? "tcp_ports = \"25600-26623\"\n" : "",
      arbiter_shapes ? fmt::format("link_rate = \"{}\"\n", tcRate(o.link_gbps)) : "",
      o.low_max_inflight.empty() ? ""
                                 : fmt::format("low_max_inflight = \"{}\"\n", o.low_max_inflight));
}

double bytesPerSecond(double gbps) {
  return gbps * 1e9 / 8;
}

// ------------------------------------------------------------ KV traffic

// What a rank tells the previous one about its landing region: where it is,
// then its packed remote key. A fixed size, as allGather wants.
constexpr std::size_t kKeyRecordBytes = 1024;
struct KeyRecordHeader {
  std::uint64_t base;
  std::uint64_t length;
  std::uint32_t key_bytes;
};

// The seed of the bytes rank `r` puts, distinct from the collectives' seeds.
std::uint64_t kvSeed(int rank) {
  return 1'000'003 + static_cast<std::uint64_t>(rank);
}

// One rank's KV relay traffic, as the loader's relay moves it: Layer-Block
// puts into a landing region of the next rank at the offered rate, on the
// `kv` class of this process's transport engine. That engine is the one the
// plugin's communicators run on (docs/plugin.md, "One engine per process"),
// so one arbiter per rank sees the collectives and the KV, as in an inference
// engine. The puts run on their own thread while the main thread runs
// collectives; every landed byte is checked at the end of the case.
class KvPuts {
 public:
  // Collective over the ranks: each listens on the kv class, connects to the
  // next rank and accepts the previous one, registers its landing region of
  // kKvWindow blocks and hands the previous rank its key. Bounded by the
  // bootstrap's deadline.
  static Result<std::unique_ptr<KvPuts>> connect(Bootstrap& bootstrap, std::size_t block_bytes) {
    auto puts = std::unique_ptr<KvPuts>(new KvPuts(bootstrap, block_bytes));
    DP_TRY(puts->connectRing());
    return puts;
  }

  ~KvPuts() { (void)stop(); }

  // Starts the stream on its own thread; what it meets is stop()'s to report.
  void start(double offered_bytes_per_s) {
    rate_ = offered_bytes_per_s;
    stop_.store(false, std::memory_order_release);
    thread_ = std::thread([this] { status_ = run(); });
  }

  // Ends the stream: what completed by now counts; the puts in flight finish.
  Status stop() {
    stop_.store(true, std::memory_order_release);
    if (thread_.joinable()) thread_.join();
    return status_;
  }

  // Bytes whose puts completed (visible at the next rank) before stop().
  std::uint64_t bytesDelivered() const { return delivered_at_stop_; }
  double seconds() const { return seconds_; }

  // Collective, after every rank's stop(): the slots the previous rank put
  // into hold its bytes, and the others are untouched. `corrupt` otherwise,
  // naming both ranks and the slot.
  Status checkLanded() {
    std::array<std::byte, sizeof(std::uint64_t)> mine{};
    std::memcpy(mine.data(), &total_posted_, sizeof(total_posted_));
    DP_TRY_ASSIGN(std::vector<std::byte> all, bootstrap_.allGather(mine));
    std::uint64_t prev_posted = 0;
    std::memcpy(&prev_posted, all.data() + static_cast<std::size_t>(prev_) * sizeof(std::uint64_t),
                sizeof(prev_posted));
    const std::size_t written = static_cast<std::size_t>(
        std::min<std::uint64_t>(prev_posted, kKvWindow));
    for (std::size_t slot = 0; slot < kKvWindow; ++slot) {
      const std::byte* landed = landing_.data() + slot * block_bytes_;
      for (std::size_t i = 0; i < block_bytes_; ++i) {
        const std::byte expected = slot < written ? patternByte(kvSeed(prev_), i) : std::byte{0};
        if (landed[i] != expected) {
          return Status(StatusCode::corrupt,
                        fmt::format("kv puts from rank {} to rank {}: slot {} differs at byte {} "
                                    "({} puts made, {} of {} slots written)",
                                    prev_, bootstrap_.rank(), slot, i, prev_posted, written,
                                    kKvWindow));
        }
      }
    }
    return Status::ok();
  }

 private:
  KvPuts(Bootstrap& bootstrap, std::size_t block_bytes)
      : bootstrap_(bootstrap), block_bytes_(block_bytes),
        next_((bootstrap.rank() + 1) % bootstrap.ranks()),
        prev_((bootstrap.rank() + bootstrap.ranks() - 1) % bootstrap.ranks()),
        source_(block_bytes), landing_(block_bytes * kKvWindow) {
    for (std::size_t i = 0; i < block_bytes_; ++i) source_[i] = patternByte(kvSeed(bootstrap.rank()), i);
  }

  Status connectRing() {
    DP_TRY_ASSIGN(engine_, transport::Engine::shared());
    DP_TRY_ASSIGN(const qos::TrafficClass* kv, engine_->policy().selectByNcclTrafficClass(kKvClass));
    const auto kv_class = static_cast<std::uint8_t>(engine_->policy().indexOf(*kv));

    transport::ConnectHandle mine{};
    DP_TRY_ASSIGN(listener_, engine_->listen(kDevice, kv_class, &mine));
    DP_TRY_ASSIGN(std::vector<std::byte> handles,
                  bootstrap_.allGather(std::as_bytes(std::span(&mine, 1))));
    transport::ConnectHandle next_handle{};
    std::memcpy(&next_handle, handles.data() + static_cast<std::size_t>(next_) * sizeof(next_handle),
                sizeof(next_handle));
    DP_TRY_ASSIGN(std::unique_ptr<transport::Connector> connector,
                  engine_->connect(kDevice, next_handle, kv_class));
    while (!to_next_ || !from_prev_) {
      if (Clock::now() > bootstrap_.deadline()) {
        return Status(StatusCode::timeout,
                      fmt::format("kv puts: rank {} connecting to rank {} and accepting rank {}",
                                  bootstrap_.rank(), next_, prev_));
      }
      if (!to_next_) DP_TRY(settle(connector->poll(), &to_next_));
      if (!from_prev_) DP_TRY(settle(listener_->tryAccept(), &from_prev_));
      std::this_thread::yield();
    }

    DP_TRY_ASSIGN(landing_region_, from_prev_->registerMemory(landing_.data(), landing_.size()));
    DP_TRY_ASSIGN(source_region_, to_next_->registerMemory(source_.data(), source_.size()));
    DP_TRY_ASSIGN(std::vector<std::byte> key, landing_region_->packRemoteKey());
    if (sizeof(KeyRecordHeader) + key.size() > kKeyRecordBytes) {
      return Status(StatusCode::internal,
                    fmt::format("kv puts: a packed remote key of {} B does not fit the {} B record",
                                key.size(), kKeyRecordBytes));
    }
    std::array<std::byte, kKeyRecordBytes> record{};
    const KeyRecordHeader header{reinterpret_cast<std::uintptr_t>(landing_.data()), landing_.size(),
                                 static_cast<std::uint32_t>(key.size())};
    std::memcpy(record.data(), &header, sizeof(header));
    std::memcpy(record.data() + sizeof(header), key.data(), key.size());
    DP_TRY_ASSIGN(std::vector<std::byte> records, bootstrap_.allGather(record));
    const std::byte* theirs = records.data() + static_cast<std::size_t>(next_) * kKeyRecordBytes;
    KeyRecordHeader next_header{};
    std::memcpy(&next_header, theirs, sizeof(next_header));
    DP_TRY_ASSIGN(remote_, to_next_->importRemote(
                               std::span(theirs + sizeof(next_header), next_header.key_bytes),
                               next_header.base, next_header.length));
    return Status::ok();
  }

  // Keeps an endpoint once ready; `again` is not an error.
  static Status settle(Result<std::unique_ptr<transport::Endpoint>> polled,
                       std::unique_ptr<transport::Endpoint>* out) {
    if (polled.hasValue()) {
      *out = std::move(polled).value();
      return Status::ok();
    }
    if (polled.status().code() == StatusCode::again) return Status::ok();
    return std::move(polled).status().withContext("kv puts");
  }

  // One run: puts at the offered rate until stop, then an end message to the
  // next rank once they have all completed. The thread ends when the previous
  // rank's end message has arrived too: until then it keeps this rank's
  // worker progressing, which lands that rank's puts (over TCP the target
  // acknowledges them from its worker's progress, as a loader's polling
  // does).
  Status run() {
    std::vector<transport::Request*> in_flight;
    in_flight.reserve(kKvWindow);
    std::uint64_t posted = 0;  // in this run
    std::uint64_t completed_bytes = 0;
    const transport::RecvSlot end_slot{&end_received_, sizeof(end_received_), kEndTag};
    // Nothing else is posted on this endpoint, so a request is free.
    Result<transport::Request*> end_recv = from_prev_->postRecv(std::span(&end_slot, 1));
    if (!end_recv.hasValue()) {
      return std::move(end_recv).status().withContext(
          fmt::format("kv puts: the end message from rank {}", prev_));
    }
    transport::Request* end_from_prev = *end_recv;
    transport::Request* end_to_next = nullptr;
    bool end_sent = false;
    const Clock::time_point started = Clock::now();
    Clock::time_point stopped{};
    for (;;) {
      const Clock::time_point now = Clock::now();
      if (now > bootstrap_.deadline()) {
        return Status(StatusCode::timeout,
                      fmt::format("kv puts of rank {}: {} still in flight at the deadline",
                                  bootstrap_.rank(), in_flight.size()));
      }
      const bool stopping = stop_.load(std::memory_order_acquire);
      if (stopping && stopped == Clock::time_point{}) {
        stopped = now;
        delivered_at_stop_ = completed_bytes;
        seconds_ = std::chrono::duration<double>(now - started).count();
      }
      for (auto it = in_flight.begin(); it != in_flight.end();) {
        bool done = false;
        DP_TRY(transport::test(*it, &done, {}).withContext(
            fmt::format("kv put from rank {} to rank {}", bootstrap_.rank(), next_)));
        if (done) {
          completed_bytes += block_bytes_;
          it = in_flight.erase(it);
        } else {
          ++it;
        }
      }
      if (end_from_prev != nullptr) {
        bool done = false;
        DP_TRY(transport::test(end_from_prev, &done, {}).withContext(
            fmt::format("kv puts: the end message from rank {}", prev_)));
        if (done && end_received_ != kEndMarker) {
          return Status(StatusCode::corrupt,
                        fmt::format("kv puts: the end message from rank {} is not one", prev_));
        }
        if (done) end_from_prev = nullptr;
      }
      if (end_to_next != nullptr) {
        bool done = false;
        DP_TRY(transport::test(end_to_next, &done, {}).withContext(
            fmt::format("kv puts: the end message to rank {}", next_)));
        if (done) end_to_next = nullptr;
      }
      if (stopping) {
        if (in_flight.empty() && !end_sent) {
          Result<transport::Request*> sent =
              to_next_->postSend(&kEndMarker, sizeof(kEndMarker), kEndTag, nullptr);
          if (sent.hasValue()) {
            end_to_next = *sent;
            end_sent = true;
          } else if (sent.status().code() != StatusCode::again) {
            return std::move(sent).status().withContext(
                fmt::format("kv puts: the end message to rank {}", next_));
          }
        }
        if (end_sent && end_to_next == nullptr && end_from_prev == nullptr) return Status::ok();
      } else {
        const double allowed = rate_ * std::chrono::duration<double>(now - started).count();
        while (in_flight.size() < kKvWindow &&
               static_cast<double>((posted + 1) * block_bytes_) <= allowed) {
          const std::size_t slot = static_cast<std::size_t>(total_posted_ % kKvWindow);
          Result<transport::Request*> put = to_next_->postPut(
              source_.data(), block_bytes_, source_region_.get(), *remote_, slot * block_bytes_);
          if (!put.hasValue()) {
            if (put.status().code() == StatusCode::again) break;  // the arbiter says later
            return std::move(put).status().withContext(
                fmt::format("kv put from rank {} to rank {}", bootstrap_.rank(), next_));
          }
          in_flight.push_back(*put);
          ++posted;
          ++total_posted_;
        }
      }
      std::this_thread::yield();
    }
  }

  static constexpr std::size_t kDevice = 0;  // the plugin's device 0, as NetMesh uses
  static constexpr std::uint32_t kEndTag = 0x4b56;  // "KV"
  static constexpr std::byte kEndMarker{0x45};

  Bootstrap& bootstrap_;
  std::size_t block_bytes_;
  int next_;
  int prev_;
  std::vector<std::byte> source_;
  std::vector<std::byte> landing_;
  // Declared before what uses them, so destroyed after: regions go before
  // their endpoints, endpoints before the engine.
  std::shared_ptr<transport::Engine> engine_;
  std::unique_ptr<transport::Listener> listener_;
  std::unique_ptr<transport::Endpoint> to_next_;
  std::unique_ptr<transport::Endpoint> from_prev_;
  std::unique_ptr<transport::MemoryRegion> landing_region_;
  std::unique_ptr<transport::MemoryRegion> source_region_;
  std::unique_ptr<transport::RemoteRegion> remote_;
  double rate_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Status status_;
  std::uint64_t total_posted_ = 0;  // over every run: picks the slot
  std::byte end_received_{};
  std::uint64_t delivered_at_stop_ = 0;
  double seconds_ = 0;
};

// ------------------------------------------------------------ one rank

// One collective at one size on this rank, over the plugin's net API as NCCL
// moves inter-node data: buffers, a verified run, then timed runs.
class PluginSizeRun final : public SizeRun {
 public:
  PluginSizeRun(NetMesh& mesh, const std::string& op, std::size_t bytes)
      : SizeRun(CollectiveData(op, static_cast<std::size_t>(mesh.ranks()),
                               static_cast<std::size_t>(mesh.rank()), bytes)),
        mesh_(mesh) {}

  Status prepare() override {
    DP_TRY_ASSIGN(a_, mesh_.allocate(data().bufferBytes()));
    DP_TRY_ASSIGN(b_, mesh_.allocate(data().bufferBytes()));
    output_.assign(data().chunkBytes() / sizeof(float), 0);
    return Status::ok();
  }

  Result<std::uint64_t> verify(CollectiveDeadline deadline) override {
    data().fill(a_.bytes());
    DP_TRY(once(deadline));
    return data().wrongElements(a_.bytes(), b_.bytes(), output_);
  }

  Status once(CollectiveDeadline deadline) override {
    const std::string& op = data().op();
    if (op == "all_gather") return mesh_.allGather(a_, data().chunkBytes(), deadline);
    if (op == "reduce_scatter") {
      return mesh_.reduceScatter(a_, b_, output_, data().chunkBytes() / sizeof(float), deadline);
    }
    return mesh_.allToAll(a_, b_, data().chunkBytes(), deadline);
  }

 private:
  NetMesh& mesh_;
  MeshBuffer a_;
  MeshBuffer b_;
  std::vector<float> output_;
};

// Timed iterations: at least o.iters and at least o.min_seconds long, from
// the slowest rank's time for one; every rank computes the same number.
Result<int> agreeOnIterations(Bootstrap& bootstrap, SizeRun& run, const InterferenceOptions& o,
                              CollectiveDeadline deadline) {
  DP_TRY(bootstrap.barrier());
  const Clock::time_point started = Clock::now();
  DP_TRY(run.once(deadline));
  const double one = std::chrono::duration<double>(Clock::now() - started).count();
  std::array<std::byte, sizeof(double)> mine{};
  std::memcpy(mine.data(), &one, sizeof(one));
  DP_TRY_ASSIGN(std::vector<std::byte> all, bootstrap.allGather(mine));
  double slowest = 0;
  for (std::size_t at = 0; at + sizeof(double) <= all.size(); at += sizeof(double)) {
    double t = 0;
    std::memcpy(&t, all.data() + at, sizeof(t));
    slowest = std::max(slowest, t);
  }
  const double wanted = slowest > 0 ? std::ceil(o.min_seconds / slowest) : o.iters;
  return static_cast<int>(std::clamp<double>(wanted, o.iters, 1'000'000));
}

std::vector<std::size_t> sizesOf(const InterferenceOptions& o) {
  std::vector<std::size_t> sizes;
  for (std::size_t s = o.min_bytes; s <= o.max_bytes; s *= o.factor) {
    sizes.push_back(s);
    if (o.factor <= 1) break;
  }
  return sizes;
}

// A rank's whole case: every op and size; its report is a JSON array.
Status runRank(Bootstrap& bootstrap, const InterferenceOptions& o, Case c,
               const std::string& policy_path, const NetnsCluster* cluster, std::string* report) {
  if (cluster != nullptr) {
    // Before the plugin (and UCX in it) looks at the network: this rank's
    // node is all it may see.
    DP_TRY(enterNetnsNode(cluster->nodes()[static_cast<std::size_t>(bootstrap.rank())])
               .withContext(fmt::format("rank {}", bootstrap.rank())));
    // Shared memory between the ranks would bypass the veth links and tc
    // (validate() refused any other UCX_TLS).
    ::setenv("UCX_TLS", "tcp", 1);
  }
  ::setenv("DUALPATH_QOS_POLICY", policy_path.c_str(), 1);
  // The parameters this process inherited are the launcher's; the plugin and
  // the transport it shares with us must read this case's policy and device.
  DP_TRY(params::reloadAfterFork().status());
  // Resolved here, as NCCL would resolve it; with --nccl, NCCL is handed the
  // very file (and, being the same file, dlopen hands it this same library).
  DP_TRY_ASSIGN(auto plugin, NetPlugin::load(o.plugin));
  Json rows = Json::array();
  {
    std::unique_ptr<NetMesh> mesh;
#if DUALPATH_HAVE_NCCL
    std::unique_ptr<NcclCollectives> nccl;
    if (o.nccl) {
      DP_TRY_ASSIGN(nccl, NcclCollectives::create(bootstrap, plugin->path(), kCollectiveClass));
    }
#endif
    if (!o.nccl) {
      MeshOptions collective_options;
      collective_options.traffic_class = kCollectiveClass;
      DP_TRY_ASSIGN(mesh, NetMesh::connect(*plugin, bootstrap, collective_options));
    }
    auto sizeRun = [&](const std::string& op, std::size_t bytes) -> std::unique_ptr<SizeRun> {
#if DUALPATH_HAVE_NCCL
      if (nccl) return nccl->sizeRun(op, bytes);
#endif
      return std::make_unique<PluginSizeRun>(*mesh, op, bytes);
    };
    {
      // The plugin's engine, now that its communicators exist, must run this
      // case's policy.
      DP_TRY_ASSIGN(std::shared_ptr<transport::Engine> engine, transport::Engine::shared());
      const std::string& policy_used = engine->policy().source_name;
      // A rank that kept the launcher's parameters would run another policy,
      // and the cases would measure the same thing.
      if (policy_used != policy_path) {
        return Status(StatusCode::internal,
                      fmt::format("rank {} runs policy '{}', not the case's '{}'",
                                  bootstrap.rank(), policy_used, policy_path));
      }
    }
    std::unique_ptr<KvPuts> kv;
    if (c != Case::alone) {
      DP_TRY_ASSIGN(kv, KvPuts::connect(bootstrap, o.kv_message_bytes));
    }
    const CollectiveDeadline deadline = bootstrap.deadline();
    for (const std::string& op : o.ops) {
      for (std::size_t bytes : sizesOf(o)) {
        std::unique_ptr<SizeRun> run = sizeRun(op, bytes);
        DP_TRY(run->prepare());
        DP_TRY_ASSIGN(std::uint64_t wrong, run->verify(deadline));
        for (int i = 0; i < o.warmup; ++i) DP_TRY(run->once(deadline));
        DP_TRY_ASSIGN(const int iters, agreeOnIterations(bootstrap, *run, o, deadline));
        if (kv) kv->start(o.kv_load * bytesPerSecond(o.link_gbps));
        DP_TRY(bootstrap.barrier());
        const Clock::time_point started = Clock::now();
        for (int i = 0; i < iters; ++i) DP_TRY(run->once(deadline));
        const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
        double kv_bytes_per_s = 0;
        if (kv) {
          DP_TRY(kv->stop());
          kv_bytes_per_s = kv->seconds() > 0
                               ? static_cast<double>(kv->bytesDelivered()) / kv->seconds()
                               : 0;
        }
        // Every rank's puts have finished before anyone reuses the buffers.
        DP_TRY(bootstrap.barrier());
        rows.push_back(Json{{"op", op},
                            {"bytes", bytes},
                            {"count", run->data().count()},
                            {"seconds", seconds},
                            {"iters", iters},
                            {"wrong", wrong},
                            {"kv_bytes_per_s", kv_bytes_per_s},
                            {"collective_bytes_per_s",
                             seconds > 0 ? static_cast<double>(run->data().bytesSent()) * iters /
                                               seconds
                                         : 0}});
      }
    }
    if (kv) DP_TRY(kv->checkLanded());
    // Nobody closes a connection a peer still reads from.
    DP_TRY(bootstrap.barrier());
  }
  *report = Json{{"rows", std::move(rows)}}.dump();
  return Status::ok();
}

Status validate(const InterferenceOptions& o) {
  auto bad = [](std::string text) { return Status(StatusCode::invalid_argument, std::move(text)); };
  if (o.ranks < 2 || o.ranks > 8) return bad(fmt::format("--ranks {}: 2 to 8 ranks", o.ranks));
  if (o.min_bytes == 0 || o.max_bytes < o.min_bytes) {
    return bad(fmt::format("-b {} -e {}: need 0 < minbytes <= maxbytes", o.min_bytes, o.max_bytes));
  }
  if (o.factor < 2) return bad(fmt::format("-f {}: the step factor must be at least 2", o.factor));
  if (o.iters < 1 || o.warmup < 0) {
    return bad(fmt::format("--iters {} --warmup {}: need iters >= 1, warmup >= 0", o.iters, o.warmup));
  }
  if (!(o.min_seconds >= 0)) return bad(fmt::format("--min-seconds {}: must be >= 0", o.min_seconds));
  if (!(o.link_gbps > 0)) return bad(fmt::format("--link-gbps {}: must be positive", o.link_gbps));
  if (!(o.kv_load > 0) || o.kv_load > 1) {
    return bad(fmt::format("--kv-load {}: a fraction of the link in (0, 1]", o.kv_load));
  }
  if (o.kv_message_bytes == 0) return bad("--kv-message-bytes 0: must be positive");
  for (const std::string& op : o.ops) {
    if (op != "all_gather" && op != "reduce_scatter" && op != "alltoall") {
      return bad(fmt::format("--op {}: one of all_gather, reduce_scatter, alltoall", op));
    }
  }
  if (o.work_dir.empty()) return bad("work_dir: empty");
  if (o.netns_arbiter_shaping && !o.netns) return bad("--netns-arbiter: only with --netns");
#if !DUALPATH_HAVE_NCCL
  if (o.nccl) {
    return bad("--nccl: this build has no NCCL backend (the CUDA toolkit and NCCL were not found "
               "when it was configured)");
  }
#endif
  if (!o.rendezvous.empty()) {
    DP_TRY(parseRendezvous(o.rendezvous).status());
    if (o.rank < 0 || o.rank >= o.ranks) {
      return bad(fmt::format("--rank {}: with --rendezvous, this host's rank, 0 to {}", o.rank,
                             o.ranks - 1));
    }
    if (o.netns) return bad("--rendezvous and --netns: namespaces are one host's; use one");
  } else if (o.rank >= 0) {
    return bad(fmt::format("--rank {}: only with --rendezvous", o.rank));
  }
  if (o.nccl && o.netns) {
    return bad("--nccl and --netns: NCCL's ranks run on this host's GPUs, not in network "
               "namespaces; use one or the other");
  }
  if (o.netns) {
    if (o.link_gbps * 1e6 < 1) return bad(fmt::format("--link-gbps {}: below tc's 1kbit", o.link_gbps));
    // UCX_* passes through to UCX; we only refuse a value that would let the
    // ranks talk over shared memory instead of the veth links.
    const char* tls = std::getenv("UCX_TLS");
    if (tls != nullptr && std::string_view(tls) != "tcp") {
      return bad(fmt::format("--netns: UCX_TLS='{}': the ranks must talk over tcp only (shared "
                             "memory would bypass the veth links and tc); unset it or set tcp",
                             tls));
    }
  }
  return Status::ok();
}

// What every host of a --rendezvous run must agree on, hashed (FNV-1a): the
// rank, the timeout and the local paths are left out.
std::uint64_t sharedOptionsDigest(const InterferenceOptions& o) {
  std::string ops;
  for (const std::string& op : o.ops) ops += op + ",";
  const std::string text = fmt::format(
      "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", o.ranks, ops, o.min_bytes, o.max_bytes, o.factor,
      o.warmup, o.iters, o.min_seconds, o.link_gbps, o.kv_load, o.kv_message_bytes,
      o.low_max_inflight, o.nccl);
  std::uint64_t hash = 14695981039346656037ull;
  for (unsigned char ch : text) {
    hash ^= ch;
    hash *= 1099511628211ull;
  }
  return hash;
}

std::string policyPath(const InterferenceOptions& o, Case c) {
  return fmt::format("{}/interference-{}.toml", o.work_dir, static_cast<int>(c));
}

// The kernel's per-class counters of every node, summed by class.
Result<std::vector<KernelClassBytes>> kernelBytes(const NetnsCluster& cluster) {
  std::vector<KernelClassBytes> sums;
  for (const NetnsNode& node : cluster.nodes()) {
    DP_TRY_ASSIGN(std::vector<KernelClassCounters> counters, cluster.classCounters(node.index));
    for (const KernelClassCounters& k : counters) {
      auto it = std::find_if(sums.begin(), sums.end(),
                             [&](const KernelClassBytes& s) { return s.name == k.name; });
      if (it == sums.end()) it = sums.insert(sums.end(), KernelClassBytes{k.name, k.classid, 0, 0});
      it->bytes += k.bytes;
      it->packets += k.packets;
    }
  }
  return sums;
}

}  // namespace

double busFactor(const std::string& /*op*/, int ranks) {
  // nccl-tests: (n - 1) / n for all_gather, reduce_scatter and alltoall.
  return static_cast<double>(ranks - 1) / ranks;
}

Result<std::vector<InterferenceRow>> runInterference(const InterferenceOptions& o,
                                                     NetnsReport* netns_report) {
  DP_TRY(validate(o));
  for (Case c : {Case::alone, Case::qos_off, Case::qos_on}) {
    const std::string path = policyPath(o, c);
    std::ofstream out(path);
    out << policyText(c, o);
    if (!out) {
      return Status(StatusCode::io, fmt::format("writing the policy of case '{}' to {}",
                                                caseName(c), path));
    }
  }
  std::unique_ptr<NetnsCluster> cluster;
  if (o.netns) {
    NetnsOptions netns;
    netns.script = o.netns_script.empty() ? defaultNetnsScript() : o.netns_script;
    netns.qos_binary = o.qos_binary.empty() ? defaultQosBinary() : o.qos_binary;
    netns.nodes = o.ranks;
    netns.policy_path = policyPath(o, Case::alone);
    netns.rate = tcRate(o.link_gbps);
    Result<std::unique_ptr<NetnsCluster>> made = NetnsCluster::up(netns);
    if (!made) return std::move(made).status().withContext("--netns");
    cluster = std::move(*made);
    if (netns_report != nullptr) {
      netns_report->cluster_id = cluster->id();
      netns_report->subnet = cluster->subnet();
      netns_report->rate = cluster->rate();
    }
  }
  HostRank host_rank;
  std::unique_ptr<RendezvousListener> listener;
  if (!o.rendezvous.empty()) {
    DP_TRY_ASSIGN(host_rank.rendezvous, parseRendezvous(o.rendezvous));
    host_rank.rank = o.rank;
    host_rank.ranks = o.ranks;
    host_rank.digest = sharedOptionsDigest(o);
    if (o.rank == 0) {
      DP_TRY_ASSIGN(listener, RendezvousListener::open(host_rank.rendezvous));
    }
  }
  std::vector<InterferenceRow> rows;
  for (Case c : {Case::alone, Case::qos_off, Case::qos_on}) {
    const std::string path = policyPath(o, c);
    // Each case's own tc script (QoS off: both classes at high priority in
    // the kernel too); `up` already applied the first.
    if (cluster && c != Case::alone) {
      DP_TRY(cluster->shape(path).withContext(fmt::format("--netns: case '{}'", caseName(c))));
    }
    const RankBody body = [&](Bootstrap& bootstrap, std::string* report) {
      return runRank(bootstrap, o, c, path, cluster.get(), report);
    };
    DP_TRY_ASSIGN(std::vector<RankOutcome> outcomes,
                  o.rendezvous.empty()
                      ? runRanks(o.ranks, body, o.timeout)
                      : runHostRank(host_rank, listener.get(), body, o.timeout));
    if (!o.rendezvous.empty() && o.rank != 0) {
      const Status& mine = outcomes.front().status;
      if (!mine.isOk()) {
        return Status(mine.code(), fmt::format("case '{}': {}", caseName(c), mine.message()));
      }
      continue;  // rank 0 has the report
    }
    std::vector<Json> reports;
    for (const RankOutcome& outcome : outcomes) {
      if (!outcome.status.isOk()) {
        return Status(outcome.status.code(),
                      fmt::format("case '{}': {}", caseName(c), outcome.status.message()));
      }
      Json report = Json::parse(outcome.report, nullptr, false);
      if (report.is_discarded() || !report.is_object() || !report["rows"].is_array()) {
        return Status(StatusCode::internal,
                      fmt::format("case '{}': rank {} reported '{}'", caseName(c), outcome.rank,
                                  outcome.report));
      }
      reports.push_back(std::move(report["rows"]));
    }
    const std::size_t sizes = reports[0].size();
    if (rows.empty()) rows.resize(sizes);
    for (std::size_t i = 0; i < sizes; ++i) {
      InterferenceRow& row = rows[i];
      row.op = reports[0][i]["op"].get<std::string>();
      row.bytes = reports[0][i]["bytes"].get<std::size_t>();
      row.count = reports[0][i]["count"].get<std::size_t>();
      CaseFigures f;
      double kv_sum = 0;
      double collective_sum = 0;
      for (const Json& report : reports) {
        const Json& r = report[i];
        f.time_us = std::max(f.time_us, r["seconds"].get<double>() * 1e6 / r["iters"].get<int>());
        f.wrong += r["wrong"].get<std::uint64_t>();
        kv_sum += r["kv_bytes_per_s"].get<double>();
        collective_sum += r["collective_bytes_per_s"].get<double>();
      }
      f.algbw_gbs = f.time_us > 0 ? static_cast<double>(row.bytes) / (f.time_us * 1e3) : 0;
      f.busbw_gbs = f.algbw_gbs * busFactor(row.op, o.ranks);
      f.kv_gbs = kv_sum / static_cast<double>(reports.size()) / 1e9;
      f.collective_gbs = collective_sum / static_cast<double>(reports.size()) / 1e9;
      (c == Case::alone ? row.alone : c == Case::qos_off ? row.qos_off : row.qos_on) = f;
    }
    if (cluster && netns_report != nullptr) {
      Result<std::vector<KernelClassBytes>> bytes = kernelBytes(*cluster);
      if (!bytes) {
        return std::move(bytes).status().withContext(
            fmt::format("--netns: case '{}': reading tc's counters", caseName(c)));
      }
      (c == Case::alone ? netns_report->alone
                        : c == Case::qos_off ? netns_report->qos_off : netns_report->qos_on) =
          std::move(*bytes);
    }
  }
  return rows;
}

}  // namespace dualpath::bench
