// The CUDA copy engine (cuda_copy_engine.h). Host code only: copies are
// cudaMemcpyAsync on a copy stream, each layer's completion an event; saves
// run on a second stream after the compute stream's work. Compiled by nvcc
// when present; run only on a GPU. No fmt here: nvcc 13 cannot evaluate fmt
// 9's compile-time format checks, so messages are built in
// layer_copy_checks.cc or by concatenation.
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <string>

#include <cuda_runtime.h>

#include <dualpath/loader/cuda_copy_engine.h>

#include "layer_copy_checks.h"
#include "layer_window.h"

namespace dualpath::loader {
namespace {

Status cudaStatus(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return Status::ok();
  return Status(StatusCode::io, std::string(what) + ": " + cudaGetErrorString(error) + " (" +
                                    cudaGetErrorName(error) + ")");
}

// Polls `event` until it completes or `deadline` passes; never holds a lock.
Status waitForEvent(cudaEvent_t event, CopyDeadline deadline, bool& done) {
  for (;;) {
    const cudaError_t state = cudaEventQuery(event);
    if (state == cudaSuccess) {
      done = true;
      return Status::ok();
    }
    if (state != cudaErrorNotReady) return cudaStatus(state, "cudaEventQuery");
    if (CopyClock::now() >= deadline) {
      done = false;
      return Status::ok();
    }
    std::this_thread::yield();
  }
}

class CudaCopyEngine final : public LayerCopyEngine {
 public:
  static Result<std::unique_ptr<LayerCopyEngine>> create(const CudaCopyEngineOptions& options) {
    if (options.copy.lookahead == 0) {
      return invalidLookahead();
    }
    int devices = 0;
    if (cudaError_t error = cudaGetDeviceCount(&devices); error != cudaSuccess || devices == 0) {
      return Status(StatusCode::unsupported,
                    std::string("CUDA copy engine: no usable GPU (") +
                        (error == cudaSuccess ? "0 devices" : cudaGetErrorString(error)) + ")");
    }
    std::unique_ptr<CudaCopyEngine> engine(new CudaCopyEngine(options));
    DP_TRY(cudaStatus(cudaSetDevice(options.device), "cudaSetDevice"));
    DP_TRY(cudaStatus(cudaStreamCreateWithFlags(&engine->load_stream_, cudaStreamNonBlocking),
                      "cudaStreamCreateWithFlags"));
    DP_TRY(cudaStatus(cudaStreamCreateWithFlags(&engine->save_stream_, cudaStreamNonBlocking),
                      "cudaStreamCreateWithFlags"));
    DP_TRY(cudaStatus(cudaEventCreateWithFlags(&engine->saves_done_, cudaEventDisableTiming),
                      "cudaEventCreateWithFlags"));
    return std::unique_ptr<LayerCopyEngine>(std::move(engine));
  }

  ~CudaCopyEngine() override {
    // Buffers may be freed after this: let every queued copy end first.
    if (load_stream_ != nullptr) cudaStreamSynchronize(load_stream_);
    if (save_stream_ != nullptr) cudaStreamSynchronize(save_stream_);
    for (cudaEvent_t event : layer_events_) cudaEventDestroy(event);
    for (cudaEvent_t event : save_events_) cudaEventDestroy(event);
    if (saves_done_ != nullptr) cudaEventDestroy(saves_done_);
    if (load_stream_ != nullptr) cudaStreamDestroy(load_stream_);
    if (save_stream_ != nullptr) cudaStreamDestroy(save_stream_);
  }

  std::string_view name() const noexcept override { return "cuda"; }

  Status startLoad(LayerwiseLoad load) override {
    DP_TRY(validateLoad(load));
    std::lock_guard lock(mu_);
    if (active_) {
      return loadStillActive(request_id_);
    }
    // Copies left queued by a finish() that timed out still target the
    // previous load's buffers.
    DP_TRY(cudaStatus(cudaStreamSynchronize(load_stream_), "cudaStreamSynchronize"));
    DP_TRY(cudaStatus(cudaStreamSynchronize(save_stream_), "cudaStreamSynchronize"));
    for (std::vector<cudaEvent_t>* events : {&layer_events_, &save_events_}) {
      while (events->size() < load.layers.size()) {
        cudaEvent_t event = nullptr;
        DP_TRY(cudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                          "cudaEventCreateWithFlags"));
        events->push_back(event);
      }
    }
    save_recorded_.assign(load.layers.size(), false);
    saved_prefix_ = 0;
    active_ = true;
    request_id_ = load.request_id;
    layers_ = std::move(load.layers);
    window_.reset(static_cast<std::uint32_t>(layers_.size()), lookahead_, load.sources_ready);
    return issueReady();
  }

  Status layerArrived(std::uint32_t layer) override {
    std::lock_guard lock(mu_);
    DP_TRY(checkLayer(active_, request_id_, layer, window_.layers(), "layerArrived"));
    window_.arrive(layer);
    return issueReady();
  }

  Status waitForLayer(std::uint32_t layer, CopyDeadline deadline) override {
    cudaEvent_t event = nullptr;
    std::uint64_t request = 0;
    {
      std::unique_lock lock(mu_);
      DP_TRY(checkLayer(active_, request_id_, layer, window_.layers(), "waitForLayer"));
      window_.widenFor(layer);
      DP_TRY(issueReady());
      if (!arrivals_.wait_until(lock, deadline, [&] { return window_.issued(layer); })) {
        return layerTimeout(request_id_, layer, false);
      }
      event = layer_events_[layer];
      request = request_id_;
    }
    bool done = false;
    DP_TRY(waitForEvent(event, deadline, done));
    std::lock_guard lock(mu_);
    if (!done) return layerTimeout(request, layer, true);
    if (!window_.copied(layer)) {
      window_.markCopied(layer);
      ++counters_.layers_copied;
    }
    return Status::ok();
  }

  Status saveLayer(std::uint32_t layer, std::vector<CopySegment> segments) override {
    std::lock_guard lock(mu_);
    DP_TRY(checkLayer(active_, request_id_, layer, window_.layers(), "saveLayer"));
    DP_TRY(validateSegments(request_id_, layer, segments, "saveLayer"));
    // After the layer's compute: the save stream waits for the compute stream.
    cudaEvent_t computed = nullptr;
    DP_TRY(cudaStatus(cudaEventCreateWithFlags(&computed, cudaEventDisableTiming),
                      "cudaEventCreateWithFlags"));
    Status status = cudaStatus(cudaEventRecord(computed, compute_stream_), "cudaEventRecord");
    if (status) status = cudaStatus(cudaStreamWaitEvent(save_stream_, computed, 0), "cudaStreamWaitEvent");
    cudaEventDestroy(computed);  // released once the wait is satisfied
    DP_TRY(std::move(status));
    for (const CopySegment& segment : segments) {
      DP_TRY(cudaStatus(cudaMemcpyAsync(segment.destination, segment.source, segment.bytes,
                                        cudaMemcpyDefault, save_stream_),
                        "cudaMemcpyAsync (save)"));
      counters_.bytes_saved += segment.bytes;
    }
    // Recorded after every save of the layer so far: the event completes
    // once all of them are done.
    DP_TRY(cudaStatus(cudaEventRecord(save_events_[layer], save_stream_), "cudaEventRecord"));
    save_recorded_[layer] = true;
    ++counters_.layers_saved;
    return Status::ok();
  }

  std::uint32_t layersSaved() const override {
    std::lock_guard lock(mu_);
    while (saved_prefix_ < save_recorded_.size() && save_recorded_[saved_prefix_] &&
           cudaEventQuery(save_events_[saved_prefix_]) == cudaSuccess) {
      ++saved_prefix_;
    }
    return saved_prefix_;
  }

  Status finish(CopyDeadline deadline) override {
    {
      std::lock_guard lock(mu_);
      if (!active_) return Status(StatusCode::invalid_usage, "finish: no load started");
      window_.openAll();
      DP_TRY(issueReady());
      DP_TRY(cudaStatus(cudaEventRecord(saves_done_, save_stream_), "cudaEventRecord"));
    }
    for (std::uint32_t layer = 0; layer < window_.layers(); ++layer) {
      Status status = waitForLayer(layer, deadline);
      if (!status) {
        std::lock_guard lock(mu_);
        active_ = false;
        return status;
      }
    }
    bool done = false;
    Status status = waitForEvent(saves_done_, deadline, done);
    std::lock_guard lock(mu_);
    active_ = false;
    DP_TRY(std::move(status));
    if (!done) {
      return savesTimeout(request_id_, 0);
    }
    return Status::ok();
  }

  CopyEngineCounters counters() const override {
    std::lock_guard lock(mu_);
    return counters_;
  }

 private:
  explicit CudaCopyEngine(const CudaCopyEngineOptions& options)
      : lookahead_(options.copy.lookahead),
        compute_stream_(static_cast<cudaStream_t>(options.compute_stream)) {}

  // Caller holds mu_.
  Status issueReady() {
    Status status;
    window_.issueReady([&](std::uint32_t layer) {
      for (const CopySegment& segment : layers_[layer]) {
        if (!status) return;
        status = cudaStatus(cudaMemcpyAsync(segment.destination, segment.source, segment.bytes,
                                            cudaMemcpyDefault, load_stream_),
                            "cudaMemcpyAsync (load)");
        counters_.bytes_loaded += segment.bytes;
      }
      if (status) status = cudaStatus(cudaEventRecord(layer_events_[layer], load_stream_), "cudaEventRecord");
      ++counters_.layers_issued;
    });
    arrivals_.notify_all();
    return status;
  }

  const std::uint32_t lookahead_;
  cudaStream_t compute_stream_ = nullptr;
  cudaStream_t load_stream_ = nullptr;
  cudaStream_t save_stream_ = nullptr;
  cudaEvent_t saves_done_ = nullptr;
  std::vector<cudaEvent_t> layer_events_;  // grown to the longest load, reused
  std::vector<cudaEvent_t> save_events_;   // per layer: its saves so far are done
  std::vector<bool> save_recorded_;        // per layer of the load: saveLayer was called
  mutable std::uint32_t saved_prefix_ = 0;
  mutable std::mutex mu_;
  std::condition_variable arrivals_;  // a layer was issued
  bool active_ = false;
  std::uint64_t request_id_ = 0;
  std::vector<std::vector<CopySegment>> layers_;
  LayerWindow window_;
  CopyEngineCounters counters_;
};

}  // namespace

Result<std::unique_ptr<LayerCopyEngine>> makeCudaCopyEngine(const CudaCopyEngineOptions& options) {
  return CudaCopyEngine::create(options);
}

}  // namespace dualpath::loader
