#include <array>

#include <gtest/gtest.h>

#include <dualpath/common/text.h>

namespace dualpath {
namespace {

TEST(TextTest, ClosestMatchFindsTypos) {
  constexpr std::array<std::string_view, 4> kKeys{"max_vls", "high_limit", "vlarb_high",
                                                  "vlarb_low"};
  EXPECT_EQ(closestMatch("max_vl", kKeys), "max_vls");
  EXPECT_EQ(closestMatch("hihg_limit", kKeys), "high_limit");
  EXPECT_EQ(closestMatch("vlarb-low", kKeys), "vlarb_low");
  EXPECT_FALSE(closestMatch("colour", kKeys).has_value());
}

TEST(TextTest, JoinAlternatives) {
  constexpr std::array<std::string_view, 3> kWords{"a", "b", "c"};
  EXPECT_EQ(joinAlternatives(kWords), "a, b or c");
  EXPECT_EQ(joinAlternatives(std::span(kWords).first(1)), "a");
}

TEST(TextTest, TableAlignsColumnsWithoutTrailingBlanks) {
  TextTable table({"class", "SL"});
  table.addRow({"collective", "0"});
  table.addRow({"kv", ""});
  EXPECT_EQ(table.render(), "class       SL\ncollective  0\nkv\n");
}

}  // namespace
}  // namespace dualpath
