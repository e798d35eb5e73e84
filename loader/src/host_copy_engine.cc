// The host copy engine: "device memory" is host memory and a copy is a
// memcpy on one worker thread. It is the engine of every machine without a
// GPU, and it gives the tests the exact ordering of the CUDA engine.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <dualpath/loader/layer_copy.h>

#include "layer_copy_checks.h"
#include "layer_window.h"

namespace dualpath::loader {
namespace {

class HostCopyEngine final : public LayerCopyEngine {
 public:
  explicit HostCopyEngine(const CopyEngineOptions& options)
      : lookahead_(options.lookahead), worker_([this] { work(); }) {}

  ~HostCopyEngine() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      jobs_.clear();
    }
    wake_.notify_all();
    worker_.join();
  }

  std::string_view name() const noexcept override { return "host"; }

  Status startLoad(LayerwiseLoad load) override {
    DP_TRY(validateLoad(load));
    std::unique_lock lock(mu_);
    if (active_) {
      return loadStillActive(request_id_);
    }
    // A copy left running by a finish() that timed out still writes into the
    // previous load's buffers: let it end (one memcpy) before reusing state.
    wake_.wait(lock, [&] { return running_ == 0; });
    ++generation_;
    active_ = true;
    request_id_ = load.request_id;
    layers_ = std::move(load.layers);
    window_.reset(static_cast<std::uint32_t>(layers_.size()), lookahead_, load.sources_ready);
    saves_pending_ = 0;
    saves_per_layer_.assign(layers_.size(), SavesOfLayer{});
    saved_prefix_ = 0;
    issueReady();
    return Status::ok();
  }

  Status layerArrived(std::uint32_t layer) override {
    std::lock_guard lock(mu_);
    DP_TRY(checkLayer(active_, request_id_, layer, window_.layers(), "layerArrived"));
    window_.arrive(layer);
    issueReady();
    return Status::ok();
  }

  Status waitForLayer(std::uint32_t layer, CopyDeadline deadline) override {
    std::unique_lock lock(mu_);
    DP_TRY(checkLayer(active_, request_id_, layer, window_.layers(), "waitForLayer"));
    window_.widenFor(layer);
    issueReady();
    if (!wake_.wait_until(lock, deadline, [&] { return window_.copied(layer); })) {
      return layerTimeout(request_id_, layer, window_.arrived(layer));
    }
    return Status::ok();
  }

  Status saveLayer(std::uint32_t layer, std::vector<CopySegment> segments) override {
    std::lock_guard lock(mu_);
    DP_TRY(checkLayer(active_, request_id_, layer, window_.layers(), "saveLayer"));
    DP_TRY(validateSegments(request_id_, layer, segments, "saveLayer"));
    ++saves_pending_;
    ++saves_per_layer_[layer].called;
    jobs_.push_back(Job{.generation = generation_, .save = true, .layer = layer,
                        .segments = std::move(segments)});
    wake_.notify_all();
    return Status::ok();
  }

  Status finish(CopyDeadline deadline) override {
    std::unique_lock lock(mu_);
    if (!active_) return Status(StatusCode::invalid_usage, "finish: no load started");
    window_.openAll();
    issueReady();
    const bool done = wake_.wait_until(
        lock, deadline, [&] { return window_.allCopied() && saves_pending_ == 0; });
    active_ = false;
    if (done) return Status::ok();
    jobs_.clear();  // not started: dropped; the running one ends before the next load
    std::uint32_t first_missing = 0;
    while (first_missing < window_.layers() && window_.copied(first_missing)) ++first_missing;
    if (first_missing < window_.layers()) {
      return layerTimeout(request_id_, first_missing, window_.arrived(first_missing));
    }
    return savesTimeout(request_id_, saves_pending_);
  }

  std::uint32_t layersSaved() const override {
    std::lock_guard lock(mu_);
    return saved_prefix_;
  }

  CopyEngineCounters counters() const override {
    std::lock_guard lock(mu_);
    return counters_;
  }

 private:
  struct SavesOfLayer {
    std::uint32_t called = 0;
    std::uint32_t done = 0;
    bool saved() const noexcept { return called != 0 && done == called; }
  };

  struct Job {
    std::uint64_t generation = 0;
    bool save = false;
    std::uint32_t layer = 0;
    std::vector<CopySegment> segments;  // saves only; loads read layers_
  };

  // Caller holds mu_.
  void issueReady() {
    bool issued = false;
    window_.issueReady([&](std::uint32_t layer) {
      jobs_.push_back(Job{.generation = generation_, .save = false, .layer = layer, .segments = {}});
      ++counters_.layers_issued;
      issued = true;
    });
    if (issued) wake_.notify_all();
  }

  void work() {
    std::unique_lock lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      Job job = std::move(jobs_.front());
      jobs_.pop_front();
      const std::vector<CopySegment>& segments = job.save ? job.segments : layers_[job.layer];
      ++running_;
      lock.unlock();
      std::uint64_t bytes = 0;
      for (const CopySegment& segment : segments) {
        std::memcpy(segment.destination, segment.source, segment.bytes);
        bytes += segment.bytes;
      }
      lock.lock();
      --running_;
      if (job.generation == generation_) finishJob(job, bytes);
      wake_.notify_all();
    }
  }

  void finishJob(const Job& job, std::uint64_t bytes) {
    if (job.save) {
      --saves_pending_;
      ++saves_per_layer_[job.layer].done;
      while (saved_prefix_ < saves_per_layer_.size() && saves_per_layer_[saved_prefix_].saved()) {
        ++saved_prefix_;
      }
      ++counters_.layers_saved;
      counters_.bytes_saved += bytes;
    } else {
      window_.markCopied(job.layer);
      ++counters_.layers_copied;
      counters_.bytes_loaded += bytes;
    }
  }

  const std::uint32_t lookahead_;
  mutable std::mutex mu_;
  std::condition_variable wake_;  // jobs queued, jobs done, stop
  std::deque<Job> jobs_;
  bool stop_ = false;
  std::uint64_t generation_ = 0;  // which load a queued job belongs to
  std::uint32_t running_ = 0;     // jobs being copied outside the lock
  bool active_ = false;
  std::uint64_t request_id_ = 0;
  std::vector<std::vector<CopySegment>> layers_;
  LayerWindow window_;
  std::size_t saves_pending_ = 0;
  std::vector<SavesOfLayer> saves_per_layer_;
  std::uint32_t saved_prefix_ = 0;
  CopyEngineCounters counters_;
  std::thread worker_;  // last: starts once every member above exists
};

}  // namespace

Result<std::unique_ptr<LayerCopyEngine>> makeHostCopyEngine(const CopyEngineOptions& options) {
  if (options.lookahead == 0) {
    return invalidLookahead();
  }
  return std::unique_ptr<LayerCopyEngine>(std::make_unique<HostCopyEngine>(options));
}

}  // namespace dualpath::loader
