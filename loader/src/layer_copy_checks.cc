#include "layer_copy_checks.h"

#include <fmt/format.h>

namespace dualpath::loader {

Status validateSegments(std::uint64_t request_id, std::uint32_t layer,
                        const std::vector<CopySegment>& segments, std::string_view hook) {
  for (std::size_t s = 0; s < segments.size(); ++s) {
    const CopySegment& segment = segments[s];
    if (segment.source == nullptr || segment.destination == nullptr || segment.bytes == 0) {
      return Status(StatusCode::invalid_usage,
                    fmt::format("{}: request {} layer {} segment {}: {}", hook, request_id, layer,
                                s,
                                segment.bytes == 0 ? "has no bytes" : "has a null buffer"));
    }
  }
  return Status::ok();
}

Status validateLoad(const LayerwiseLoad& load) {
  if (load.layers.empty()) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("startLoad: request {} has no layers", load.request_id));
  }
  for (std::uint32_t l = 0; l < load.layers.size(); ++l) {
    DP_TRY(validateSegments(load.request_id, l, load.layers[l], "startLoad"));
  }
  return Status::ok();
}

Status checkLayer(bool active, std::uint64_t request_id, std::uint32_t layer,
                  std::uint32_t layers, std::string_view hook) {
  if (!active) return Status(StatusCode::invalid_usage, fmt::format("{}: no load started", hook));
  if (layer >= layers) {
    return Status(StatusCode::invalid_usage,
                  fmt::format("{}: request {} has layers 0 to {}, not {}", hook, request_id,
                              layers - 1, layer));
  }
  return Status::ok();
}

Status layerTimeout(std::uint64_t request_id, std::uint32_t layer, bool arrived) {
  return Status(StatusCode::timeout,
                fmt::format("request {}: layer {} not in device memory by the deadline ({})",
                            request_id, layer,
                            arrived ? "its copy is still running"
                                    : "its sources have not arrived in the host buffer"));
}

Status loadStillActive(std::uint64_t request_id) {
  return Status(StatusCode::invalid_usage,
                fmt::format("startLoad: request {}'s load is still active; call finish()",
                            request_id));
}

Status savesTimeout(std::uint64_t request_id, std::size_t pending) {
  if (pending == 0) {
    return Status(StatusCode::timeout,
                  fmt::format("request {}: layer saves not done by the deadline", request_id));
  }
  return Status(StatusCode::timeout,
                fmt::format("request {}: {} layer save{} not done by the deadline", request_id,
                            pending, pending == 1 ? "" : "s"));
}

Status invalidLookahead() {
  return Status(StatusCode::invalid_argument, "copy engine: lookahead must be at least 1");
}

}  // namespace dualpath::loader
