// Argument checks and error texts shared by the copy engines, so both give
// the same messages.
#pragma once

#include <cstdint>
#include <string_view>

#include <dualpath/loader/layer_copy.h>

namespace dualpath::loader {

// invalid_usage for a load without layers, or with a null or empty segment.
Status validateLoad(const LayerwiseLoad& load);
// invalid_usage for segments with null pointers or no bytes.
Status validateSegments(std::uint64_t request_id, std::uint32_t layer,
                        const std::vector<CopySegment>& segments, std::string_view hook);
// invalid_usage when no load is active or `layer` is out of range; `hook` is
// the caller's name, e.g. "waitForLayer".
Status checkLayer(bool active, std::uint64_t request_id, std::uint32_t layer,
                  std::uint32_t layers, std::string_view hook);
Status layerTimeout(std::uint64_t request_id, std::uint32_t layer, bool arrived);
Status loadStillActive(std::uint64_t request_id);
// `pending` saves, when the engine can count them; 0 when it cannot.
Status savesTimeout(std::uint64_t request_id, std::size_t pending);
Status invalidLookahead();

}  // namespace dualpath::loader
