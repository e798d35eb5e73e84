// Sizes and rates as admins write them, and as tc and logs print them.
//
// Byte sizes: an integer with an optional IEC suffix, "512KiB", "8MiB", "4096".
// Bit rates: tc's bit units, "400gbit", "200mbit", "1tbit". "Gbps"-style units
// are refused on purpose: tc reads "bps" as *bytes* per second, so the spelling
// is ambiguous between the tools an admin will paste it into.
//
// Threading: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <dualpath/common/status.h>

namespace dualpath {

using Bytes = std::uint64_t;
using BitsPerSecond = std::uint64_t;

// Errors name the accepted forms; callers add the field name as context.
Result<Bytes> parseByteSize(std::string_view text);
Result<BitsPerSecond> parseBitRate(std::string_view text);

// "512KiB", "3MiB", "1000B": exact when possible, else two decimals.
std::string formatBytes(Bytes bytes);
// tc syntax, exact: "400gbit", "1500kbit", "7bit".
std::string formatBitRate(BitsPerSecond rate);

}  // namespace dualpath
