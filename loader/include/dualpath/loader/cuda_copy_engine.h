// The CUDA layerwise copy engine: cudaMemcpyAsync on a dedicated copy stream
// and one event per layer, so copies overlap the model's kernels. Host
// buffers should be pinned (cudaHostRegister; the loader's buffer pools are)
// or the copies fall back to staged, synchronous transfers.
//
// Built only when nvcc is found (the target dualpath_loader_cuda, macro
// DUALPATH_HAVE_CUDA_COPY_ENGINE); runs only on a GPU. Our machines compile
// it and run the host engine instead (layer_copy.h), which shares its window
// logic and its error texts.
//
// Threading: as LayerCopyEngine. waitForLayer blocks the calling thread until
// the layer's event completes (polling cudaEventQuery against the deadline).
#pragma once

#include <memory>

#include <dualpath/loader/layer_copy.h>

namespace dualpath::loader {

struct CudaCopyEngineOptions {
  CopyEngineOptions copy;
  int device = 0;
  // The stream the model's kernels run on (a cudaStream_t; nullptr is the
  // legacy default stream). saveLayer waits for the work queued on it.
  void* compute_stream = nullptr;
};

// unsupported when CUDA reports no device or the device cannot be used; the
// message carries CUDA's error string.
Result<std::unique_ptr<LayerCopyEngine>> makeCudaCopyEngine(const CudaCopyEngineOptions& options);

}  // namespace dualpath::loader
