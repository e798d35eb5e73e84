#include <gtest/gtest.h>

#include <dualpath/common/units.h>

namespace dualpath {
namespace {

TEST(UnitsTest, ByteSizesTakeIecUnits) {
  EXPECT_EQ(*parseByteSize("4096"), 4096u);
  EXPECT_EQ(*parseByteSize("512KiB"), 512u * 1024);
  EXPECT_EQ(*parseByteSize(" 8 MiB "), 8u << 20);
  EXPECT_EQ(*parseByteSize("1GiB"), 1u << 30);
}

TEST(UnitsTest, ByteSizeErrorsNameTheForms) {
  Result<Bytes> si = parseByteSize("512KB");
  ASSERT_FALSE(si.hasValue());
  EXPECT_EQ(si.status().message(),
            "unknown unit 'KB' in '512KB'; expected bytes with an optional unit B, KiB, MiB, GiB "
            "or TiB (e.g. \"512KiB\")");
  EXPECT_FALSE(parseByteSize("lots").hasValue());
  EXPECT_FALSE(parseByteSize("-1").hasValue());
  EXPECT_EQ(parseByteSize("99999999999TiB").status().message(), "'99999999999TiB' is too large");
}

TEST(UnitsTest, BitRatesUseTcUnits) {
  EXPECT_EQ(*parseBitRate("400gbit"), 400'000'000'000u);
  EXPECT_EQ(*parseBitRate("200Mbit"), 200'000'000u);
  EXPECT_EQ(*parseBitRate("1500kbit"), 1'500'000u);
}

TEST(UnitsTest, BpsIsRefusedAsAmbiguous) {
  Result<BitsPerSecond> rate = parseBitRate("400Gbps");
  ASSERT_FALSE(rate.hasValue());
  EXPECT_EQ(rate.status().message(),
            "'400Gbps' is ambiguous: tc reads 'bps' as bytes per second; write the rate in bits "
            "with tc's units, e.g. \"400Gbit\"");
  EXPECT_FALSE(parseBitRate("0gbit").hasValue());
  EXPECT_FALSE(parseBitRate("400").hasValue());  // a unit is required
}

TEST(UnitsTest, FormattingRoundTrips) {
  EXPECT_EQ(formatBytes(512 * 1024), "512KiB");
  EXPECT_EQ(formatBytes(1000), "1000B");
  EXPECT_EQ(formatBytes(1536 * 1024), "1536KiB");
  EXPECT_EQ(formatBitRate(190'000'000), "190mbit");
  EXPECT_EQ(formatBitRate(1'500'000), "1500kbit");
  EXPECT_EQ(formatBitRate(7), "7bit");
  for (const char* text : {"400gbit", "25mbit", "1234bit"}) {
    EXPECT_EQ(formatBitRate(*parseBitRate(text)), text);
  }
}

}  // namespace
}  // namespace dualpath
