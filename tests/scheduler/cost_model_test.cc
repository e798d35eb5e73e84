// The FLOPs-to-time model, α and β, and the presets, against numbers worked
// out by hand in the comments.
#include <gtest/gtest.h>

#include <dualpath/scheduler/cost_model.h>

namespace dualpath::scheduler {
namespace {

CostModel tinyCost(std::uint64_t attention_window = 0) {
  ModelSpec model = modelPreset("tiny").value();
  model.attention_window = attention_window;
  return CostModel::create(model, hardwarePreset("tiny").value()).value();
}

TEST(CostModel, CausalAttentionPairs) {
  const CostModel cost = tinyCost();
  EXPECT_DOUBLE_EQ(cost.attentionPairs(0, 4), 10);   // 1 + 2 + 3 + 4
  EXPECT_DOUBLE_EQ(cost.attentionPairs(10, 4), 50);  // 11 + 12 + 13 + 14
  EXPECT_DOUBLE_EQ(cost.attentionPairs(10, 0), 0);
}

TEST(CostModel, AttentionWindowCapsWhatEachTokenSees) {
  const CostModel cost = tinyCost(12);
  EXPECT_DOUBLE_EQ(cost.attentionPairs(10, 4), 47);  // 11 + 12 + 12 + 12
  EXPECT_DOUBLE_EQ(cost.attentionPairs(20, 3), 36);  // 12 + 12 + 12
  EXPECT_DOUBLE_EQ(cost.attentionPairs(0, 4), 10);   // under the window
}

TEST(CostModel, PrefillSecondsFromFlops) {
  const CostModel cost = tinyCost();
  // 16 new tokens after 16: 16 x 1e6 linear + (17 + ... + 32 = 392) x 100
  // attention FLOPs on 1 GFLOP/s at MFU 1.
  EXPECT_DOUBLE_EQ(cost.prefillFlops(16, 16), 16e6 + 39200);
  EXPECT_DOUBLE_EQ(cost.prefillSeconds(16, 16), 0.0160392);
}

TEST(CostModel, AlphaIsTokensReadableAndBetaTokensPrefilled) {
  const CostModel tiny = tinyCost();
  EXPECT_EQ(tiny.tokensReadableIn(3), 11718u);  // 3 x 1e6 B/s / 256 B per token
  EXPECT_EQ(tiny.tokensPrefilledIn(5), 5000u);  // 5 x 1e9 / 1e6 FLOPs per token

  const CostModel paper =
      CostModel::create(modelPreset("deepseek-v3.2").value(), hardwarePreset("hopper-8x400g").value())
          .value();
  EXPECT_EQ(paper.tokensReadableIn(3), 3748500u);  // 3 x 50e9 / (61 x 656)
  EXPECT_EQ(paper.tokensPrefilledIn(5), 26729u);   // 5 x 989e12 x 0.4 / 74e9
}

TEST(CostModel, PresetGeometry) {
  const ModelSpec deepseek = modelPreset("deepseek-v3.2").value();
  EXPECT_EQ(deepseek.kvBytesPerToken(), 40016u);   // 61 x 656
  EXPECT_EQ(deepseek.layerBlockBytes(), 41984u);   // 64 x 656
  EXPECT_EQ(deepseek.fullBlockBytes(), 2561024u);  // 61 x 41984
  const ModelSpec qwen = modelPreset("qwen2.5-32b").value();
  EXPECT_EQ(qwen.fullBlockBytes(), 16u << 20);  // 64 layers x 64 tokens x 4 KiB
  EXPECT_EQ(CostModel::create(qwen, hardwarePreset("tiny").value()).value().kvBytes(2),
            2u * 64 * 4096);
}

TEST(CostModel, UnknownPresetsListTheNames) {
  EXPECT_EQ(modelPreset("gpt").status().message(),
            "unknown model preset 'gpt': expected deepseek-v3.2, qwen2.5-32b or tiny");
  EXPECT_EQ(hardwarePreset("tpu").status().message(),
            "unknown hardware preset 'tpu': expected hopper-8x400g or tiny");
}

TEST(CostModel, InvalidDescriptionsNameTheField) {
  ModelSpec model = modelPreset("tiny").value();
  model.block_tokens = 0;
  EXPECT_EQ(CostModel::create(model, hardwarePreset("tiny").value()).status().message(),
            "model 'tiny': block_tokens must be positive");
  HardwareSpec hardware = hardwarePreset("tiny").value();
  hardware.mfu = 1.5;
  EXPECT_EQ(CostModel::create(modelPreset("tiny").value(), hardware).status().message(),
            "hardware 'tiny': mfu must be in (0, 1]");
}

}  // namespace
}  // namespace dualpath::scheduler
