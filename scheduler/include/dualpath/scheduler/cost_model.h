// The model and hardware descriptions the scheduler reasons with, and the
// FLOPs-to-time model derived from them.
//
// A ModelSpec gives the KV-cache geometry (layers, KV bytes per token per
// layer, tokens per block) and the prefill cost: linear-layer FLOPs per new
// token plus attention FLOPs per (new token, context token) pair, optionally
// capped by an attention window for sparse attention. A HardwareSpec gives a
// node's GPUs and NICs. The CostModel turns both into the scheduler's
// thresholds (α: tokens a node's storage NIC reads in a few seconds; β: tokens
// one GPU prefills in a few seconds) and into predicted prefill times for the
// PE batcher.
//
// The presets are approximations from public model cards and datasheets, for
// planning and tests; a deployment should profile and override them.
//
// Threading: values only; every member function is const and pure.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <dualpath/common/status.h>

namespace dualpath::scheduler {

struct ModelSpec {
  std::string name;
  std::uint32_t layers = 0;
  std::uint32_t kv_bytes_per_token_per_layer = 0;
  std::uint32_t block_tokens = 0;  // tokens per KV block (the prefix-cache unit)
  double linear_flops_per_token = 0;          // about 2 x active parameters
  double attention_flops_per_token_pair = 0;  // summed over layers
  // 0: full causal attention. Otherwise each new token attends to at most this
  // many tokens (sparse attention such as DeepSeek-V3.2's top-k selection).
  std::uint64_t attention_window = 0;

  std::uint64_t kvBytesPerToken() const noexcept {
    return std::uint64_t{layers} * kv_bytes_per_token_per_layer;
  }
  std::uint64_t layerBlockBytes() const noexcept {
    return std::uint64_t{block_tokens} * kv_bytes_per_token_per_layer;
  }
  std::uint64_t fullBlockBytes() const noexcept { return layerBlockBytes() * layers; }

  // Every field in range; the error names the model and the field.
  Status validate() const;
};

struct HardwareSpec {
  std::string name;
  double gpu_flops = 0;  // dense BF16 peak of one GPU, FLOP/s
  double mfu = 0;        // fraction of the peak that prefill achieves, in (0, 1]
  double snic_bytes_per_s = 0;  // one node's storage NIC(s), together
  double cnic_bytes_per_s = 0;  // one GPU's compute NIC
  std::uint32_t gpus_per_node = 0;
  std::uint64_t kv_hbm_bytes_per_gpu = 0;  // HBM left for KV-cache on a decode engine

  Status validate() const;
};

// "deepseek-v3.2", "qwen2.5-32b", "tiny". The error lists the names.
Result<ModelSpec> modelPreset(std::string_view name);
std::span<const std::string_view> modelPresetNames() noexcept;

// "hopper-8x400g" (the paper's nodes: 8 Hopper GPUs, a 400 Gbps CNIC per GPU,
// one 400 Gbps SNIC per node) and "tiny".
Result<HardwareSpec> hardwarePreset(std::string_view name);
std::span<const std::string_view> hardwarePresetNames() noexcept;

class CostModel {
 public:
  // Validates both descriptions.
  static Result<CostModel> create(ModelSpec model, HardwareSpec hardware);

  const ModelSpec& model() const noexcept { return model_; }
  const HardwareSpec& hardware() const noexcept { return hardware_; }

  // (new token, visible context token) pairs when `new_tokens` tokens are
  // prefilled causally after `context_tokens` cached ones, honouring the
  // attention window.
  double attentionPairs(std::uint64_t context_tokens, std::uint64_t new_tokens) const noexcept;
  double prefillFlops(std::uint64_t context_tokens, std::uint64_t new_tokens) const noexcept;
  // Seconds for one GPU to prefill `new_tokens` tokens after `context_tokens`.
  double prefillSeconds(std::uint64_t context_tokens, std::uint64_t new_tokens) const noexcept;

  // α: KV tokens a node's storage NICs read in `seconds`.
  std::uint64_t tokensReadableIn(double seconds) const noexcept;
  // β: new tokens one GPU prefills in `seconds`, counting linear layers only
  // (the context-independent part of the cost).
  std::uint64_t tokensPrefilledIn(double seconds) const noexcept;

  // Bytes of KV-cache a context of `tokens` tokens occupies.
  std::uint64_t kvBytes(std::uint64_t tokens) const noexcept {
    return tokens * model_.kvBytesPerToken();
  }

 private:
  CostModel(ModelSpec model, HardwareSpec hardware)
      : model_(std::move(model)), hardware_(std::move(hardware)) {}

  ModelSpec model_;
  HardwareSpec hardware_;
};

}  // namespace dualpath::scheduler
