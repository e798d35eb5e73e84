// Layerwise loading against pure compute: with a look-ahead of 2 and each
// layer's copy shorter than its compute, a forward pass that waits for every
// layer should take at most 1.1x the compute alone (issue 5). Both run in the
// same invocation, so docs/performance.md reports their ratio.
//
// "Compute" is a busy loop of a fixed duration per layer on the calling
// thread (never a sleep: the scheduler's wake-up latency would dominate); the
// host copy engine's worker copies the next layers on the other core. Copies
// are memcpy of `bytes` per layer, sized so a copy takes well under the
// compute time on this machine.
#include <chrono>
#include <cstdlib>
#include <vector>

#include <benchmark/benchmark.h>

#include <dualpath/loader/layer_copy.h>

namespace dualpath::loader {
namespace {

constexpr std::uint32_t kLayers = 61;  // DeepSeek-V3.2
constexpr auto kComputePerLayer = std::chrono::microseconds(500);

void computeLayer() {
  const auto until = std::chrono::steady_clock::now() + kComputePerLayer;
  while (std::chrono::steady_clock::now() < until) benchmark::ClobberMemory();
}

// Layer l is bytes [l x bytes, (l + 1) x bytes) of both buffers.
LayerwiseLoad oneSegmentPerLayer(const std::vector<std::byte>& host, std::vector<std::byte>& device,
                                 std::size_t bytes) {
  LayerwiseLoad load{.request_id = 1, .layers = {}, .sources_ready = true};
  for (std::uint32_t l = 0; l < kLayers; ++l) {
    load.layers.push_back({{host.data() + l * bytes, device.data() + l * bytes, bytes}});
  }
  return load;
}

void BM_ComputeOnly(benchmark::State& state) {
  for (auto _ : state) {
    for (std::uint32_t l = 0; l < kLayers; ++l) computeLayer();
  }
}
BENCHMARK(BM_ComputeOnly)->UseRealTime()->Unit(benchmark::kMillisecond);

// range(0): bytes per layer; range(1): look-ahead.
void BM_LayerwiseLoad(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<std::byte> host(bytes * kLayers, std::byte{1});
  std::vector<std::byte> device(host.size());
  auto engine = std::move(
      makeHostCopyEngine({.lookahead = static_cast<std::uint32_t>(state.range(1))}).value());
  for (auto _ : state) {
    const auto deadline = CopyClock::now() + std::chrono::seconds(30);
    if (!engine->startLoad(oneSegmentPerLayer(host, device, bytes))) std::abort();
    for (std::uint32_t l = 0; l < kLayers; ++l) {
      if (!engine->waitForLayer(l, deadline)) std::abort();
      computeLayer();
    }
    if (!engine->finish(deadline)) std::abort();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * host.size()));
}
BENCHMARK(BM_LayerwiseLoad)
    ->ArgNames({"bytes", "lookahead"})
    ->Args({256 << 10, 2})
    ->Args({1 << 20, 2})
    ->Args({1 << 20, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The copies alone, to show each is shorter than a layer's compute.
void BM_CopiesOnly(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<std::byte> host(bytes * kLayers, std::byte{1});
  std::vector<std::byte> device(host.size());
  auto engine = std::move(makeHostCopyEngine({.lookahead = 2}).value());
  for (auto _ : state) {
    const auto deadline = CopyClock::now() + std::chrono::seconds(30);
    if (!engine->startLoad(oneSegmentPerLayer(host, device, bytes))) std::abort();
    if (!engine->finish(deadline)) std::abort();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * host.size()));
}
BENCHMARK(BM_CopiesOnly)->ArgName("bytes")->Arg(256 << 10)->Arg(1 << 20)->UseRealTime()->Unit(
    benchmark::kMillisecond);

}  // namespace
}  // namespace dualpath::loader

BENCHMARK_MAIN();
