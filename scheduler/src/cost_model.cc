#include <dualpath/scheduler/cost_model.h>

#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>

#include <dualpath/common/text.h>

namespace dualpath::scheduler {
namespace {

constexpr std::array<std::string_view, 3> kModelPresetNames = {"deepseek-v3.2", "qwen2.5-32b",
                                                                "tiny"};
constexpr std::array<std::string_view, 2> kHardwarePresetNames = {"hopper-8x400g", "tiny"};

Status fieldError(std::string_view what, std::string_view name, std::string_view field,
                  std::string_view problem) {
  return Status(StatusCode::invalid_argument,
                fmt::format("{} '{}': {} {}", what, name, field, problem));
}

bool positiveFinite(double value) { return std::isfinite(value) && value > 0; }

Status unknownPreset(std::string_view kind, std::string_view name,
                     std::span<const std::string_view> names) {
  return Status(StatusCode::invalid_argument,
                fmt::format("unknown {} preset '{}': expected {}", kind, name,
                            joinAlternatives(names)));
}

}  // namespace

Status ModelSpec::validate() const {
  if (layers == 0) return fieldError("model", name, "layers", "must be positive");
  if (kv_bytes_per_token_per_layer == 0) {
    return fieldError("model", name, "kv_bytes_per_token_per_layer", "must be positive");
  }
  if (block_tokens == 0) return fieldError("model", name, "block_tokens", "must be positive");
  if (!positiveFinite(linear_flops_per_token)) {
    return fieldError("model", name, "linear_flops_per_token", "must be positive and finite");
  }
  if (!std::isfinite(attention_flops_per_token_pair) || attention_flops_per_token_pair < 0) {
    return fieldError("model", name, "attention_flops_per_token_pair",
                      "must be zero or positive and finite");
  }
  return Status::ok();
}

Status HardwareSpec::validate() const {
  if (!positiveFinite(gpu_flops)) return fieldError("hardware", name, "gpu_flops", "must be positive");
  if (!(mfu > 0 && mfu <= 1)) return fieldError("hardware", name, "mfu", "must be in (0, 1]");
  if (!positiveFinite(snic_bytes_per_s)) {
    return fieldError("hardware", name, "snic_bytes_per_s", "must be positive");
  }
  if (!positiveFinite(cnic_bytes_per_s)) {
    return fieldError("hardware", name, "cnic_bytes_per_s", "must be positive");
  }
  if (gpus_per_node == 0) return fieldError("hardware", name, "gpus_per_node", "must be positive");
  if (kv_hbm_bytes_per_gpu == 0) {
    return fieldError("hardware", name, "kv_hbm_bytes_per_gpu", "must be positive");
  }
  return Status::ok();
}

Result<ModelSpec> modelPreset(std::string_view name) {
  if (name == "deepseek-v3.2") {
    // 37B active parameters; MLA in absorbed form: 128 heads x (576 + 512)
    // multiply-adds per pair and layer; the indexer's top-2048 selection is
    // modelled as a 2,048-token window.
    return ModelSpec{.name = std::string(name),
                     .layers = 61,
                     .kv_bytes_per_token_per_layer = 656,
                     .block_tokens = 64,
                     .linear_flops_per_token = 2 * 37e9,
                     .attention_flops_per_token_pair = 2.0 * 128 * (576 + 512) * 61,
                     .attention_window = 2048};
  }
  if (name == "qwen2.5-32b") {
    // 32.5B parameters; 40 query heads of 128 for QK^T and AV; 8 KV heads in
    // FP16 give 4 KiB per token per layer.
    return ModelSpec{.name = std::string(name),
                     .layers = 64,
                     .kv_bytes_per_token_per_layer = 4096,
                     .block_tokens = 64,
                     .linear_flops_per_token = 2 * 32.5e9,
                     .attention_flops_per_token_pair = 2.0 * 2 * 40 * 128 * 64,
                     .attention_window = 0};
  }
  if (name == "tiny") {
    // Round numbers so tests can compute expectations by hand.
    return ModelSpec{.name = std::string(name),
                     .layers = 4,
                     .kv_bytes_per_token_per_layer = 64,
                     .block_tokens = 16,
                     .linear_flops_per_token = 1e6,
                     .attention_flops_per_token_pair = 100,
                     .attention_window = 0};
  }
  return unknownPreset("model", name, kModelPresetNames);
}

std::span<const std::string_view> modelPresetNames() noexcept { return kModelPresetNames; }

Result<HardwareSpec> hardwarePreset(std::string_view name) {
  if (name == "hopper-8x400g") {
    return HardwareSpec{.name = std::string(name),
                        .gpu_flops = 989e12,
                        .mfu = 0.4,
                        .snic_bytes_per_s = 400e9 / 8,
                        .cnic_bytes_per_s = 400e9 / 8,
                        .gpus_per_node = 8,
                        .kv_hbm_bytes_per_gpu = 40ull << 30};
  }
  if (name == "tiny") {
    return HardwareSpec{.name = std::string(name),
                        .gpu_flops = 1e9,
                        .mfu = 1.0,
                        .snic_bytes_per_s = 1e6,
                        .cnic_bytes_per_s = 1e6,
                        .gpus_per_node = 2,
                        .kv_hbm_bytes_per_gpu = 1u << 20};
  }
  return unknownPreset("hardware", name, kHardwarePresetNames);
}

std::span<const std::string_view> hardwarePresetNames() noexcept { return kHardwarePresetNames; }

Result<CostModel> CostModel::create(ModelSpec model, HardwareSpec hardware) {
  DP_TRY(model.validate());
  DP_TRY(hardware.validate());
  return CostModel(std::move(model), std::move(hardware));
}

double CostModel::attentionPairs(std::uint64_t context_tokens,
                                 std::uint64_t new_tokens) const noexcept {
  // New token i (1-based) sees context_tokens + i tokens, at most the window.
  const double c = static_cast<double>(context_tokens);
  const std::uint64_t window = model_.attention_window;
  std::uint64_t uncapped = new_tokens;
  if (window != 0) {
    uncapped = window > context_tokens ? std::min(new_tokens, window - context_tokens) : 0;
  }
  const double k = static_cast<double>(uncapped);
  const double capped = static_cast<double>(new_tokens - uncapped);
  return k * c + k * (k + 1) / 2 + capped * static_cast<double>(window);
}

double CostModel::prefillFlops(std::uint64_t context_tokens,
                               std::uint64_t new_tokens) const noexcept {
  return static_cast<double>(new_tokens) * model_.linear_flops_per_token +
         attentionPairs(context_tokens, new_tokens) * model_.attention_flops_per_token_pair;
}

double CostModel::prefillSeconds(std::uint64_t context_tokens,
                                 std::uint64_t new_tokens) const noexcept {
  return prefillFlops(context_tokens, new_tokens) / (hardware_.gpu_flops * hardware_.mfu);
}

std::uint64_t CostModel::tokensReadableIn(double seconds) const noexcept {
  return static_cast<std::uint64_t>(hardware_.snic_bytes_per_s * seconds /
                                    static_cast<double>(model_.kvBytesPerToken()));
}

std::uint64_t CostModel::tokensPrefilledIn(double seconds) const noexcept {
  return static_cast<std::uint64_t>(hardware_.gpu_flops * hardware_.mfu * seconds /
                                    model_.linear_flops_per_token);
}

}  // namespace dualpath::scheduler
