// The layerwise copy engine: moves a request's KV-cache into device memory
// one layer at a time, so that layer l's copy overlaps the compute of the
// layers before it, and copies each layer's new KV back out after its compute.
//
// The hooks follow vLLM's KV connector, in our naming:
//
//   vLLM (KVConnectorBase_V1)   here
//   start_load_kv               startLoad(load)
//   wait_for_layer_load         waitForLayer(l, deadline)
//   save_kv_layer               saveLayer(l, segments)
//   wait_for_save               finish(deadline)
//
// An inference engine calls, per forward pass:
//
//   engine.startLoad(load);                 // issues layers [0, lookahead)
//   for (l = 0; l < layers; ++l) {
//     engine.waitForLayer(l, deadline);     // layer l is in device memory;
//                                           // layers up to l + lookahead are issued
//     ... compute layer l ...
//     engine.saveLayer(l, new_kv_of_l);     // device -> host buffer, in the background
//   }                                       // (layersSaved() counts the saves done)
//   engine.finish(deadline);                // every copy and save is done
//
// A layer is copied once its sources are in the host buffer. On the PE path
// the whole Full Blocks are read before the load starts (sources_ready); on the
// DE path Layer Blocks arrive by RDMA one layer at a time, and the read path
// calls layerArrived(l) for each.
//
// Implementations: the host engine (memcpy on a worker thread; the tests and
// every machine without a GPU use it) and the CUDA engine (a copy stream and
// one event per layer; cuda_copy_engine.h; built when nvcc is found, runs only
// on a GPU).
//
// Threading: one inference thread calls startLoad, waitForLayer, saveLayer and
// finish; layerArrived may come from any thread. Every wait is bounded by the
// caller's deadline. Buffers named by a load must stay valid until finish()
// returns ok, or until the next startLoad() after a failed finish().
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::loader {

using CopyClock = std::chrono::steady_clock;
using CopyDeadline = CopyClock::time_point;

// One contiguous copy: a Layer Block or part of one.
struct CopySegment {
  const std::byte* source = nullptr;
  std::byte* destination = nullptr;
  std::size_t bytes = 0;
};

struct LayerwiseLoad {
  std::uint64_t request_id = 0;
  // layers[l]: what must be in device memory before layer l's compute.
  std::vector<std::vector<CopySegment>> layers;
  // true: every source is in the host buffer already (the PE path). false:
  // each layer's sources arrive later and the read path calls layerArrived().
  bool sources_ready = true;
};

struct CopyEngineOptions {
  // Layers copied ahead of the one being computed; at least 1.
  std::uint32_t lookahead = 2;
};

// What an engine did, for tests and benchmarks. Counts only grow.
struct CopyEngineCounters {
  std::uint64_t layers_issued = 0;
  std::uint64_t layers_copied = 0;
  std::uint64_t layers_saved = 0;
  std::uint64_t bytes_loaded = 0;
  std::uint64_t bytes_saved = 0;
};

class LayerCopyEngine {
 public:
  virtual ~LayerCopyEngine() = default;

  virtual std::string_view name() const noexcept = 0;

  // Begins `load` and issues the copies of layers [0, lookahead) whose
  // sources are ready. invalid_usage while another load is active, or for a
  // load without layers or with a null or empty segment (the error names the
  // request, layer and segment).
  virtual Status startLoad(LayerwiseLoad load) = 0;

  // The sources of `layer` are now in the host buffer; its copy is issued
  // when it is within the look-ahead window.
  virtual Status layerArrived(std::uint32_t layer) = 0;

  // Returns once `layer` is in device memory, after extending the window to
  // layer + lookahead. timeout (naming the request, the layer and whether its
  // sources arrived) when the deadline passes first; the load stays active.
  virtual Status waitForLayer(std::uint32_t layer, CopyDeadline deadline) = 0;

  // Copies `segments` (device -> host buffer) in the background, after the
  // layer's load copy.
  virtual Status saveLayer(std::uint32_t layer, std::vector<CopySegment> segments) = 0;

  // How many layers of the current load (or of the last one, after finish())
  // are saved: layers [0, n) each had saveLayer() called and every save of
  // them is done, so their KV is in the host buffer. Never waits; any thread
  // (the loader thread hands saved layers on, HandoffSender::layersSaved).
  virtual std::uint32_t layersSaved() const = 0;

  // Issues whatever is left, then waits for every copy and save of the load
  // and ends it. On timeout the copies not yet started are dropped and the
  // load ends anyway; copies already running finish before the next startLoad.
  virtual Status finish(CopyDeadline deadline) = 0;

  virtual CopyEngineCounters counters() const = 0;
};

// memcpy on one worker thread. invalid_argument when lookahead is 0.
Result<std::unique_ptr<LayerCopyEngine>> makeHostCopyEngine(const CopyEngineOptions& options = {});

}  // namespace dualpath::loader
