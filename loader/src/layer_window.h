// Which layers of a layerwise load may be copied now, shared by the host and
// CUDA copy engines: a layer is issued once its sources have arrived and it
// lies inside the look-ahead window, [0, end). startLoad opens the window to
// `lookahead` layers; waiting for layer l widens it to l + 1 + lookahead, so
// the copies of the next layers overlap layer l's compute.
//
// Threading: none; the engines call it under their own lock.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace dualpath::loader {

class LayerWindow {
 public:
  void reset(std::uint32_t layers, std::uint32_t lookahead, bool sources_ready) {
    lookahead_ = lookahead;
    end_ = std::min(layers, lookahead);
    arrived_.assign(layers, sources_ready ? 1 : 0);
    issued_.assign(layers, 0);
    copied_.assign(layers, 0);
    copied_count_ = 0;
  }

  std::uint32_t layers() const noexcept { return static_cast<std::uint32_t>(arrived_.size()); }
  void arrive(std::uint32_t layer) { arrived_[layer] = 1; }
  void widenFor(std::uint32_t waited_layer) {
    end_ = std::max(end_, std::min(layers(), waited_layer + 1 + lookahead_));
  }
  void openAll() { end_ = layers(); }

  // Calls issue(l) for every layer that may start now, in layer order, and
  // marks it issued.
  template <class Issue>
  void issueReady(Issue&& issue) {
    for (std::uint32_t l = 0; l < end_; ++l) {
      if (arrived_[l] && !issued_[l]) {
        issued_[l] = 1;
        issue(l);
      }
    }
  }

  void markCopied(std::uint32_t layer) {
    if (!copied_[layer]) ++copied_count_;
    copied_[layer] = 1;
  }
  bool arrived(std::uint32_t layer) const { return arrived_[layer] != 0; }
  bool issued(std::uint32_t layer) const { return issued_[layer] != 0; }
  bool copied(std::uint32_t layer) const { return copied_[layer] != 0; }
  bool allCopied() const noexcept { return copied_count_ == layers(); }

 private:
  std::uint32_t lookahead_ = 1;
  std::uint32_t end_ = 0;
  std::vector<std::uint8_t> arrived_;
  std::vector<std::uint8_t> issued_;
  std::vector<std::uint8_t> copied_;
  std::uint32_t copied_count_ = 0;
};

}  // namespace dualpath::loader
