// The host layerwise copy engine: bytes that reach "device memory", the
// look-ahead window, arrivals from another thread, saves, bounded waits, and
// misuse. No sleeps: issuing is synchronous under the engine's lock, so the
// counters say exactly which layers were issued when a hook returns.
#include <array>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <dualpath/loader/layer_copy.h>

namespace dualpath::loader {
namespace {

constexpr std::uint32_t kLayers = 4;
constexpr std::size_t kSegmentBytes = 1000;
constexpr std::size_t kSegmentsPerLayer = 2;

CopyDeadline soon() {
  return CopyClock::now() + std::chrono::seconds(10);
}
CopyDeadline past() {
  return CopyClock::now() - std::chrono::seconds(1);
}

// Host "KV buffer" and "device memory" for one request: each layer has two
// segments of distinct bytes.
struct Buffers {
  std::vector<std::byte> host = std::vector<std::byte>(kLayers * kSegmentsPerLayer * kSegmentBytes);
  std::vector<std::byte> device = std::vector<std::byte>(host.size());

  Buffers() {
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>(i * 7 + i / 251);
  }

  LayerwiseLoad load(std::uint64_t request_id, bool sources_ready = true) {
    LayerwiseLoad load{.request_id = request_id, .layers = {}, .sources_ready = sources_ready};
    for (std::uint32_t l = 0; l < kLayers; ++l) {
      std::vector<CopySegment> segments;
      for (std::size_t s = 0; s < kSegmentsPerLayer; ++s) {
        const std::size_t offset = (l * kSegmentsPerLayer + s) * kSegmentBytes;
        segments.push_back({host.data() + offset, device.data() + offset, kSegmentBytes});
      }
      load.layers.push_back(std::move(segments));
    }
    return load;
  }

  bool layerArrivedIntact(std::uint32_t layer) const {
    const std::size_t offset = layer * kSegmentsPerLayer * kSegmentBytes;
    return std::memcmp(host.data() + offset, device.data() + offset,
                       kSegmentsPerLayer * kSegmentBytes) == 0;
  }
};

std::unique_ptr<LayerCopyEngine> hostEngine(std::uint32_t lookahead = 2) {
  return std::move(makeHostCopyEngine({.lookahead = lookahead}).value());
}

TEST(HostCopyEngine, EveryLayerArrivesByteExact) {
  Buffers buffers;
  auto engine = hostEngine();
  ASSERT_TRUE(engine->startLoad(buffers.load(7)));
  for (std::uint32_t l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(engine->waitForLayer(l, soon()));
    EXPECT_TRUE(buffers.layerArrivedIntact(l)) << "layer " << l;
  }
  ASSERT_TRUE(engine->finish(soon()));
  EXPECT_EQ(buffers.host, buffers.device);
  const CopyEngineCounters counters = engine->counters();
  EXPECT_EQ(counters.layers_copied, kLayers);
  EXPECT_EQ(counters.bytes_loaded, buffers.host.size());
}

TEST(HostCopyEngine, LookaheadBoundsTheLayersIssued) {
  Buffers buffers;
  auto engine = hostEngine(2);
  ASSERT_TRUE(engine->startLoad(buffers.load(1)));
  EXPECT_EQ(engine->counters().layers_issued, 2u);  // layers 0 and 1
  ASSERT_TRUE(engine->waitForLayer(0, soon()));
  EXPECT_EQ(engine->counters().layers_issued, 3u);  // + layer 2, during layer 0's compute
  ASSERT_TRUE(engine->waitForLayer(1, soon()));
  EXPECT_EQ(engine->counters().layers_issued, 4u);
  ASSERT_TRUE(engine->finish(soon()));

  auto one_ahead = hostEngine(1);
  ASSERT_TRUE(one_ahead->startLoad(buffers.load(2)));
  EXPECT_EQ(one_ahead->counters().layers_issued, 1u);
  ASSERT_TRUE(one_ahead->finish(soon()));  // finish issues the rest
  EXPECT_EQ(one_ahead->counters().layers_issued, kLayers);
}

TEST(HostCopyEngine, LayersWaitForTheirSources) {
  Buffers buffers;
  auto engine = hostEngine(2);
  ASSERT_TRUE(engine->startLoad(buffers.load(9, /*sources_ready=*/false)));
  EXPECT_EQ(engine->counters().layers_issued, 0u);
  ASSERT_TRUE(engine->layerArrived(3));  // outside the window: held back
  EXPECT_EQ(engine->counters().layers_issued, 0u);
  EXPECT_EQ(engine->waitForLayer(0, past()).message(),
            "request 9: layer 0 not in device memory by the deadline (its sources have not "
            "arrived in the host buffer)");
  ASSERT_TRUE(engine->layerArrived(0));
  ASSERT_TRUE(engine->waitForLayer(0, soon()));
  EXPECT_TRUE(buffers.layerArrivedIntact(0));
  EXPECT_EQ(engine->counters().layers_issued, 1u);  // layer 3 is still beyond 0 + 2
}

TEST(HostCopyEngine, ArrivalsFromTheReadPathThread) {
  Buffers buffers;
  auto engine = hostEngine(2);
  ASSERT_TRUE(engine->startLoad(buffers.load(5, /*sources_ready=*/false)));
  std::thread read_path([&] {
    for (std::uint32_t l = 0; l < kLayers; ++l) ASSERT_TRUE(engine->layerArrived(l));
  });
  for (std::uint32_t l = 0; l < kLayers; ++l) ASSERT_TRUE(engine->waitForLayer(l, soon()));
  read_path.join();
  ASSERT_TRUE(engine->finish(soon()));
  EXPECT_EQ(buffers.host, buffers.device);
}

TEST(HostCopyEngine, SavesCopyNewKvBackBeforeFinishReturns) {
  Buffers buffers;
  std::vector<std::byte> saved(kLayers * kSegmentBytes);
  auto engine = hostEngine();
  ASSERT_TRUE(engine->startLoad(buffers.load(3)));
  for (std::uint32_t l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(engine->waitForLayer(l, soon()));
    // "Compute" wrote layer l's new KV into the first device segment.
    ASSERT_TRUE(
        engine->saveLayer(l, {{buffers.device.data() + l * kSegmentsPerLayer * kSegmentBytes,
                               saved.data() + l * kSegmentBytes, kSegmentBytes}}));
  }
  ASSERT_TRUE(engine->finish(soon()));
  for (std::uint32_t l = 0; l < kLayers; ++l) {
    EXPECT_EQ(
        std::memcmp(saved.data() + l * kSegmentBytes,
                    buffers.host.data() + l * kSegmentsPerLayer * kSegmentBytes, kSegmentBytes),
        0)
        << "layer " << l;
  }
  EXPECT_EQ(engine->counters().layers_saved, kLayers);
  EXPECT_EQ(engine->counters().bytes_saved, kLayers * kSegmentBytes);
}

TEST(HostCopyEngine, LayersSavedCountsTheSavedPrefixOnly) {
  Buffers buffers;
  std::vector<std::byte> saved(kLayers * kSegmentBytes);
  auto save = [&](std::uint32_t l) {
    return CopySegment{buffers.device.data() + l * kSegmentsPerLayer * kSegmentBytes,
                       saved.data() + l * kSegmentBytes, kSegmentBytes};
  };
  auto engine = hostEngine();
  ASSERT_TRUE(engine->startLoad(buffers.load(4)));
  EXPECT_EQ(engine->layersSaved(), 0u);
  for (std::uint32_t l = 0; l < kLayers; ++l) ASSERT_TRUE(engine->waitForLayer(l, soon()));
  // Layer 1 saved before layer 0: nothing counts until layer 0 is saved too.
  ASSERT_TRUE(engine->saveLayer(1, {save(1)}));
  ASSERT_TRUE(engine->saveLayer(3, {save(3)}));
  ASSERT_TRUE(engine->saveLayer(0, {save(0)}));
  ASSERT_TRUE(engine->finish(soon()));
  // Layer 2 was never saved: the prefix stops before it, after finish too.
  EXPECT_EQ(engine->layersSaved(), 2u);
  EXPECT_EQ(engine->counters().layers_saved, 3u);
  // The next load starts from zero.
  ASSERT_TRUE(engine->startLoad(buffers.load(5)));
  EXPECT_EQ(engine->layersSaved(), 0u);
  for (std::uint32_t l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(engine->waitForLayer(l, soon()));
    ASSERT_TRUE(engine->saveLayer(l, {save(l)}));
  }
  ASSERT_TRUE(engine->finish(soon()));
  EXPECT_EQ(engine->layersSaved(), kLayers);
}

TEST(HostCopyEngine, FinishTimesOutOnAMissingLayerAndTheEngineIsReusable) {
  Buffers buffers;
  auto engine = hostEngine();
  ASSERT_TRUE(engine->startLoad(buffers.load(4, /*sources_ready=*/false)));
  ASSERT_TRUE(engine->layerArrived(0));
  ASSERT_TRUE(engine->waitForLayer(0, soon()));
  const Status timed_out = engine->finish(past());
  EXPECT_EQ(timed_out.code(), StatusCode::timeout);
  EXPECT_EQ(timed_out.message(),
            "request 4: layer 1 not in device memory by the deadline (its sources have not "
            "arrived in the host buffer)");
  // The load ended: the next one runs normally.
  Buffers next;
  ASSERT_TRUE(engine->startLoad(next.load(5)));
  ASSERT_TRUE(engine->finish(soon()));
  EXPECT_EQ(next.host, next.device);
}

TEST(HostCopyEngine, MisuseIsNamed) {
  Buffers buffers;
  auto engine = hostEngine();
  EXPECT_EQ(engine->waitForLayer(0, soon()).message(), "waitForLayer: no load started");
  EXPECT_EQ(engine->finish(soon()).message(), "finish: no load started");
  EXPECT_EQ(engine->startLoad(LayerwiseLoad{.request_id = 6, .layers = {}, .sources_ready = true})
                .message(),
            "startLoad: request 6 has no layers");
  LayerwiseLoad broken = buffers.load(6);
  broken.layers[2][1].bytes = 0;
  EXPECT_EQ(engine->startLoad(broken).message(),
            "startLoad: request 6 layer 2 segment 1: has no bytes");
  ASSERT_TRUE(engine->startLoad(buffers.load(8)));
  EXPECT_EQ(engine->startLoad(buffers.load(9)).message(),
            "startLoad: request 8's load is still active; call finish()");
  EXPECT_EQ(engine->waitForLayer(kLayers, soon()).message(),
            "waitForLayer: request 8 has layers 0 to 3, not 4");
  EXPECT_EQ(engine->saveLayer(0, {{nullptr, buffers.device.data(), 1}}).message(),
            "saveLayer: request 8 layer 0 segment 0: has a null buffer");
  ASSERT_TRUE(engine->finish(soon()));
  EXPECT_EQ(makeHostCopyEngine({.lookahead = 0}).status().message(),
            "copy engine: lookahead must be at least 1");
}

}  // namespace
}  // namespace dualpath::loader
