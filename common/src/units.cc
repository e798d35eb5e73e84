#include <array>
#include <cctype>
#include <charconv>
#include <limits>

#include <fmt/format.h>

#include <dualpath/common/units.h>

namespace dualpath {
namespace {

struct Unit {
  std::string_view suffix;
  std::uint64_t multiplier;
};

constexpr std::array<Unit, 5> kByteUnits{{
    {"B", 1},
    {"KiB", 1ULL << 10},
    {"MiB", 1ULL << 20},
    {"GiB", 1ULL << 30},
    {"TiB", 1ULL << 40},
}};

// tc(8) bit units; case-insensitive there, so here too.
constexpr std::array<Unit, 5> kBitUnits{{
    {"bit", 1},
    {"kbit", 1000ULL},
    {"mbit", 1000ULL * 1000},
    {"gbit", 1000ULL * 1000 * 1000},
    {"tbit", 1000ULL * 1000 * 1000 * 1000},
}};

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  return text;
}

// Splits "400 gbit" / "400gbit" into its number and unit.
bool splitNumber(std::string_view text, std::uint64_t& number, std::string_view& unit) {
  text = trim(text);
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec != std::errc() || end == text.data()) return false;
  unit = trim(std::string_view(end, static_cast<std::size_t>(text.data() + text.size() - end)));
  return true;
}

template <std::size_t N>
Result<std::uint64_t> parseWithUnits(std::string_view text, const std::array<Unit, N>& units,
                                     bool case_sensitive, std::string_view bare_unit,
                                     std::string_view expected_form) {
  std::uint64_t number = 0;
  std::string_view unit;
  if (!splitNumber(text, number, unit)) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("'{}' is not a size or rate; expected {}", text, expected_form));
  }
  if (unit.empty()) unit = bare_unit;
  for (const Unit& candidate : units) {
    bool same =
        case_sensitive ? unit == candidate.suffix : equalsIgnoreCase(unit, candidate.suffix);
    if (!same) continue;
    if (number > std::numeric_limits<std::uint64_t>::max() / candidate.multiplier) {
      return Status(StatusCode::invalid_argument, fmt::format("'{}' is too large", text));
    }
    return number * candidate.multiplier;
  }
  return Status(StatusCode::invalid_argument,
                fmt::format("unknown unit '{}' in '{}'; expected {}", unit, text, expected_form));
}

}  // namespace

Result<Bytes> parseByteSize(std::string_view text) {
  return parseWithUnits(text, kByteUnits, /*case_sensitive=*/true, "B",
                        "bytes with an optional unit B, KiB, MiB, GiB or TiB (e.g. \"512KiB\")");
}

Result<BitsPerSecond> parseBitRate(std::string_view text) {
  std::uint64_t number = 0;
  std::string_view unit;
  if (splitNumber(text, number, unit) && unit.size() >= 3 &&
      equalsIgnoreCase(unit.substr(unit.size() - 3), "bps")) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("'{}' is ambiguous: tc reads 'bps' as bytes per second; write the "
                              "rate in bits with tc's units, e.g. \"{}{}bit\"",
                              text, number, unit.size() > 3 ? unit.substr(0, 1) : ""));
  }
  Result<std::uint64_t> rate =
      parseWithUnits(text, kBitUnits, /*case_sensitive=*/false, "",
                     "a bit rate with tc's units bit, kbit, mbit, gbit or tbit (e.g. \"400gbit\")");
  if (rate && *rate == 0) {
    return Status(StatusCode::invalid_argument, fmt::format("'{}': a rate must be positive", text));
  }
  return rate;
}

std::string formatBytes(Bytes bytes) {
  for (auto it = kByteUnits.rbegin(); it != kByteUnits.rend(); ++it) {
    if (bytes >= it->multiplier && bytes % it->multiplier == 0) {
      return fmt::format("{}{}", bytes / it->multiplier, it->suffix);
    }
  }
  for (auto it = kByteUnits.rbegin(); it != kByteUnits.rend(); ++it) {
    if (bytes >= it->multiplier) {
      return fmt::format(
          "{:.2f}{}", static_cast<double>(bytes) / static_cast<double>(it->multiplier), it->suffix);
    }
  }
  return fmt::format("{}B", bytes);
}

std::string formatBitRate(BitsPerSecond rate) {
  for (auto it = kBitUnits.rbegin(); it != kBitUnits.rend(); ++it) {
    if (rate >= it->multiplier && rate % it->multiplier == 0) {
      return fmt::format("{}{}", rate / it->multiplier, it->suffix);
    }
  }
  return fmt::format("{}bit", rate);
}

}  // namespace dualpath
