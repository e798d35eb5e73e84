// Shared by kv_relay_test.cc and kv_relay_peer.cc: the geometry and the
// payloads of the two-process relay test, so that the test can check the
// bytes a killed DE process put into its buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <dualpath/loader/block.h>
#include <dualpath/scheduler/cost_model.h>

namespace dualpath::loader::relay_peer {

inline constexpr std::size_t kBlocks = 4;

// The tiny preset with 64 layers: the DE cannot finish in a few polls.
inline ModelSpec model() {
  ModelSpec model = scheduler::modelPreset("tiny").value();
  model.name = "tiny-64-layers";
  model.layers = 64;
  return model;
}

inline BlockId blockId(std::size_t index) {
  return BlockId{.hi = 0xde, .lo = index};
}

// Distinct bytes per block: xorshift64 seeded by the index.
inline std::vector<std::byte> payload(const ModelSpec& model, std::size_t index) {
  std::vector<std::byte> bytes(model.fullBlockBytes());
  std::uint64_t x = 0x9e3779b97f4a7c15ull * (index + 1);
  for (std::byte& b : bytes) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<std::byte>(x & 0xff);
  }
  return bytes;
}

}  // namespace dualpath::loader::relay_peer
