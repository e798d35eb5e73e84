// Reads a policy file into a Policy: TOML syntax, known keys, types and the
// range of every field. Rules that relate several fields live in validate.cc.
#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include <dualpath/common/log.h>
#include <dualpath/common/text.h>
#include <dualpath/common/toml_types.h>
#include <dualpath/qos/policy_loader.h>

#include "reporter.h"

namespace dualpath::qos {
namespace {

using detail::Reporter;

constexpr int kFormatVersion = 1;
constexpr std::size_t kMaxPolicyBytes = 1 << 20;
constexpr std::size_t kMaxVlArbEntries = 64;  // IB VLArbitration table capacity
constexpr std::size_t kMaxClassNameLength = 32;

SourceLocation locationOf(const toml::source_region& region) {
  return {region.begin.line, region.begin.column};
}

struct IntRange {
  std::int64_t min;
  std::int64_t max;
  std::string_view what;  // "an IB service level"
};

template <class E>
struct Choice {
  std::string_view name;
  E value;
};

// Reads one TOML table. Every lookup declares its key as known, present or
// not; finish() reports the keys nothing looked up, with a "did you mean".
// A missing or invalid required value marks the load incomplete, so that the
// cross-field rules do not run on half a policy.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string path, Reporter& reporter, Policy& policy,
              bool& incomplete)
      : table_(table),
        path_(std::move(path)),
        reporter_(reporter),
        policy_(policy),
        incomplete_(incomplete) {
    policy_.locations.emplace(path_, locationOf(table_.source()));
  }

  std::string field(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }
  SourceLocation where() const { return locationOf(table_.source()); }
  bool has(std::string_view key) const { return table_.contains(key); }
  Reporter& reporter() { return reporter_; }

  // A reader for a table inside this one, sharing the load's state.
  TableReader nested(const toml::table& table, std::string path) {
    return TableReader(table, std::move(path), reporter_, policy_, incomplete_);
  }
  Policy& policy() { return policy_; }

  const toml::node* lookup(std::string_view key) {
    known_.push_back(key);
    const toml::node* node = table_.get(key);
    if (node != nullptr) policy_.locations[field(key)] = locationOf(node->source());
    return node;
  }

  void missing(std::string_view key, std::string_view expectation) {
    reporter_.error(where(), field(key), fmt::format("missing; expected {}", expectation));
    incomplete_ = true;
  }

  // An error on a value that was present but wrong.
  void invalid(const toml::node& node, const std::string& field_path, std::string message) {
    reporter_.error(locationOf(node.source()), field_path, std::move(message));
    incomplete_ = true;
  }

  // The load cannot yield a complete policy (the reason is reported elsewhere).
  void markIncomplete() { incomplete_ = true; }

  void wrongType(const toml::node& node, const std::string& field_path,
                 std::string_view expectation) {
    invalid(node, field_path,
            fmt::format("expected {}, got {}", expectation, tomlTypeName(node.type())));
  }

  // Present-or-required lookup that checks the node's type.
  template <class T>
  const T* typed(std::string_view key, bool required, std::string_view expectation) {
    const toml::node* node = lookup(key);
    if (node == nullptr) {
      if (required) missing(key, expectation);
      return nullptr;
    }
    const T* value = node->as<T>();
    if (value == nullptr) wrongType(*node, field(key), expectation);
    return value;
  }

  std::optional<std::int64_t> integer(std::string_view key, IntRange range, bool required) {
    std::string expectation = fmt::format("{} ({}-{})", range.what, range.min, range.max);
    const auto* node = typed<toml::value<std::int64_t>>(key, required, expectation);
    if (node == nullptr) return std::nullopt;
    return checkRange(*node, field(key), range);
  }

  std::optional<std::int64_t> checkRange(const toml::value<std::int64_t>& node,
                                         const std::string& field_path, IntRange range) {
    std::int64_t value = node.get();
    if (value < range.min || value > range.max) {
      invalid(node, field_path,
              fmt::format("{} is out of range for {} ({}-{})", value, range.what, range.min,
                          range.max));
      return std::nullopt;
    }
    return value;
  }

  std::optional<std::string> string(std::string_view key, bool required,
                                    std::string_view expectation) {
    const auto* node = typed<toml::value<std::string>>(key, required, expectation);
    if (node == nullptr) return std::nullopt;
    return node->get();
  }

  std::optional<bool> boolean(std::string_view key) {
    const auto* node = typed<toml::value<bool>>(key, false, "true or false");
    if (node == nullptr) return std::nullopt;
    return node->get();
  }

  template <class E, std::size_t N>
  std::optional<E> choice(std::string_view key, const std::array<Choice<E>, N>& choices,
                          bool required) {
    std::array<std::string_view, N> names{};
    for (std::size_t i = 0; i < N; ++i) names[i] = choices[i].name;
    std::string expectation = fmt::format("one of {}", joinQuoted(names));
    const auto* node = typed<toml::value<std::string>>(key, required, expectation);
    if (node == nullptr) return std::nullopt;
    for (const Choice<E>& c : choices) {
      if (node->get() == c.name) return c.value;
    }
    std::string message = fmt::format("\"{}\" is not {}", node->get(), expectation);
    if (auto guess = closestMatch(node->get(), names)) {
      message += fmt::format("; did you mean \"{}\"?", *guess);
    }
    invalid(*node, field(key), std::move(message));
    return std::nullopt;
  }

  // An integer number of bytes, or a string with an IEC unit ("512KiB").
  std::optional<Bytes> byteSize(std::string_view key) {
    const toml::node* node = lookup(key);
    if (node == nullptr) return std::nullopt;
    if (const auto* number = node->as<std::int64_t>()) {
      if (number->get() < 0) {
        invalid(*node, field(key),
                fmt::format("{} bytes: a size cannot be negative", number->get()));
        return std::nullopt;
      }
      return static_cast<Bytes>(number->get());
    }
    if (const auto* text = node->as<std::string>()) {
      Result<Bytes> size = parseByteSize(text->get());
      if (!size) {
        invalid(*node, field(key), size.status().message());
        return std::nullopt;
      }
      return *size;
    }
    wrongType(*node, field(key), "a size (an integer of bytes or a string such as \"512KiB\")");
    return std::nullopt;
  }

  std::optional<BitsPerSecond> bitRate(std::string_view key) {
    const auto* node =
        typed<toml::value<std::string>>(key, false, "a bit rate string such as \"400gbit\"");
    if (node == nullptr) return std::nullopt;
    Result<BitsPerSecond> rate = parseBitRate(node->get());
    if (!rate) {
      invalid(*node, field(key), rate.status().message());
      return std::nullopt;
    }
    return *rate;
  }

  // `hints` adds advice for keys that are common mistakes ("tos").
  void finish(const std::map<std::string_view, std::string, std::less<>>& hints = {}) {
    for (auto&& [key, node] : table_) {
      std::string_view name = key.str();
      if (std::find(known_.begin(), known_.end(), name) != known_.end()) continue;
      std::string message = "unknown key";
      if (auto hint = hints.find(name); hint != hints.end()) {
        message += "; " + hint->second;
      } else if (auto guess = closestMatch(name, known_)) {
        message += fmt::format("; did you mean \"{}\"?", *guess);
      } else {
        message += fmt::format("; expected one of {}", joinQuoted(known_));
      }
      reporter_.error(locationOf(key.source()), field(name), std::move(message));
    }
  }

  template <class Container>
  static std::string joinQuoted(const Container& words) {
    std::vector<std::string> quoted;
    for (std::string_view word : words) quoted.push_back(fmt::format("\"{}\"", word));
    std::vector<std::string_view> views(quoted.begin(), quoted.end());
    return joinAlternatives(views);
  }

 private:
  const toml::table& table_;
  std::string path_;
  Reporter& reporter_;
  Policy& policy_;
  bool& incomplete_;
  std::vector<std::string_view> known_;
};

// ---------------------------------------------------------------- fabric

std::string_view trimBlanks(std::string_view text) {
  std::size_t first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  std::size_t last = text.find_last_not_of(" \t");
  return text.substr(first, last - first + 1);
}

// A whole decimal number; values beyond 32 bits saturate so that range
// checks report them instead of wrapping.
bool parseDecimal(std::string_view text, std::uint64_t& out) {
  text = trimBlanks(text);
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec == std::errc::result_out_of_range) out = std::numeric_limits<std::uint64_t>::max();
  return end == text.data() + text.size() &&
         (ec == std::errc() || ec == std::errc::result_out_of_range);
}

// "A<separator>B" with blanks allowed around each number.
bool parsePair(std::string_view text, char separator, std::uint64_t& a, std::uint64_t& b) {
  std::size_t at = text.find(separator);
  return at != std::string_view::npos && parseDecimal(text.substr(0, at), a) &&
         parseDecimal(text.substr(at + 1), b);
}

// "0:192, 1:192,2:0" -> entries, each located at its own column.
std::optional<VlArbTable> readVlArbTable(TableReader& reader, std::string_view key, bool required) {
  const auto* node = reader.typed<toml::value<std::string>>(
      key, required, "a VL arbitration table string such as \"0:192,1:192,2:64\"");
  if (node == nullptr) return std::nullopt;
  const std::string& text = node->get();
  const std::string field = reader.field(key);
  SourceLocation start = locationOf(node->source());
  VlArbTable table;
  bool ok = true;
  std::size_t offset = 0;
  std::size_t index = 0;
  // Positions are the string's opening quote plus the entry's offset; exact
  // for basic strings without escapes, which is what these tables are.
  auto entry_location = [&](std::size_t at) {
    return SourceLocation{start.line, start.column + 1 + static_cast<std::uint32_t>(at)};
  };
  auto fail = [&](std::size_t at, std::string message) {
    reader.reporter().error(entry_location(at), fmt::format("{}[{}]", field, index),
                            std::move(message));
    ok = false;
  };
  if (text.find_first_not_of(" \t") == std::string::npos) return table;  // empty table
  while (offset <= text.size()) {
    std::size_t end = text.find(',', offset);
    if (end == std::string::npos) end = text.size();
    std::string_view entry(text.data() + offset, end - offset);
    std::size_t lead = entry.find_first_not_of(" \t");
    std::size_t entry_at = offset + (lead == std::string_view::npos ? 0 : lead);
    reader.policy().locations[fmt::format("{}[{}]", field, index)] = entry_location(entry_at);
    std::uint64_t vl = 0;
    std::uint64_t weight = 0;
    if (!parsePair(entry, ':', vl, weight)) {
      fail(entry_at, fmt::format("\"{}\" is not VL:WEIGHT (e.g. \"2:64\")", trimBlanks(entry)));
    } else if (vl >= static_cast<unsigned>(kIbDropVl)) {
      fail(entry_at, fmt::format("VL {} is out of range for a data VL (0-14; VL15 carries only "
                                 "subnet management and is never arbitrated)",
                                 vl));
    } else if (weight > 255) {
      fail(entry_at, fmt::format("weight {} is out of range (0-255)", weight));
    } else {
      table.push_back({static_cast<std::uint8_t>(vl), static_cast<std::uint8_t>(weight)});
    }
    ++index;
    offset = end + 1;
  }
  if (index > kMaxVlArbEntries) {
    reader.invalid(*node, field,
                   fmt::format("{} entries; a VL arbitration table holds at most {}", index,
                               kMaxVlArbEntries));
    return std::nullopt;
  }
  if (!ok) {
    reader.markIncomplete();
    return std::nullopt;
  }
  return table;
}

std::optional<Sl2VlTable> readSl2Vl(TableReader& reader, bool required) {
  const auto* array =
      reader.typed<toml::array>("sl2vl", required, "an array of 16 VLs, the VL of SL 0 to SL 15");
  if (array == nullptr) return std::nullopt;
  const std::string field = reader.field("sl2vl");
  if (array->size() != kIbServiceLevels) {
    reader.invalid(*array, field,
                   fmt::format("{} entries; expected 16, the VL of SL 0 to SL 15", array->size()));
    return std::nullopt;
  }
  Sl2VlTable table{};
  bool ok = true;
  for (std::size_t sl = 0; sl < array->size(); ++sl) {
    const toml::node& element = *array->get(sl);
    std::string element_field = fmt::format("{}[{}]", field, sl);
    reader.policy().locations[element_field] = locationOf(element.source());
    const auto* vl = element.as<std::int64_t>();
    if (vl == nullptr) {
      reader.wrongType(element, element_field, "a VL (0-15)");
      ok = false;
      continue;
    }
    auto checked = reader.checkRange(*vl, element_field, {0, 15, "a VL"});
    if (!checked) {
      ok = false;
      continue;
    }
    table[sl] = static_cast<std::uint8_t>(*checked);
  }
  if (!ok) return std::nullopt;
  return table;
}

constexpr IntRange kMaxVlsRange{1, 15, "an operational VL count"};
constexpr IntRange kHighLimitRange{0, 255, "high_limit"};

std::optional<std::uint8_t> readMaxVls(TableReader& reader, bool required) {
  auto value = reader.integer("max_vls", kMaxVlsRange, required);
  if (!value) return std::nullopt;
  // PortInfo.OperationalVLs encodes only these counts (IBA vol. 1, 14.2.5.6).
  if (*value != 1 && *value != 2 && *value != 4 && *value != 8 && *value != 15) {
    reader.invalid(
        *reader.lookup("max_vls"), reader.field("max_vls"),
        fmt::format("{} VLs cannot be operational; a port runs 1, 2, 4, 8 or 15 data VLs", *value));
    return std::nullopt;
  }
  return static_cast<std::uint8_t>(*value);
}

constexpr std::array<std::pair<std::string_view, IbPortType>, 4> kPortTypeTables{{
    {"ca", IbPortType::ca},
    {"switch_external", IbPortType::switch_external},
    {"switch_port0", IbPortType::switch_port0},
    {"router", IbPortType::router},
}};

IbPortQosOverride readPortOverride(TableReader& reader) {
  IbPortQosOverride o;
  o.max_vls = readMaxVls(reader, false);
  if (auto v = reader.integer("high_limit", kHighLimitRange, false)) {
    o.high_limit = static_cast<std::uint8_t>(*v);
  }
  o.vlarb_high = readVlArbTable(reader, "vlarb_high", false);
  o.vlarb_low = readVlArbTable(reader, "vlarb_low", false);
  o.sl2vl = readSl2Vl(reader, false);
  reader.finish();
  return o;
}

InfinibandFabric readInfiniband(TableReader& reader) {
  InfinibandFabric fabric;
  IbPortQos& d = fabric.defaults;
  if (auto v = readMaxVls(reader, true)) d.max_vls = *v;
  if (auto v = reader.integer("high_limit", kHighLimitRange, true)) {
    d.high_limit = static_cast<std::uint8_t>(*v);
  }
  if (auto t = readVlArbTable(reader, "vlarb_high", true)) d.vlarb_high = std::move(*t);
  if (auto t = readVlArbTable(reader, "vlarb_low", true)) d.vlarb_low = std::move(*t);
  if (auto t = readSl2Vl(reader, true)) d.sl2vl = *t;
  fabric.routing_engine = reader.string("routing_engine", false, "an OpenSM routing engine name");
  for (auto [key, type] : kPortTypeTables) {
    const auto* table =
        reader.typed<toml::table>(key, false, "a table of settings for this port type");
    if (table == nullptr) continue;
    TableReader sub = reader.nested(*table, reader.field(key));
    fabric.overrides[type] = readPortOverride(sub);
  }
  return fabric;
}

// An array of small integers, each checked against `range`; duplicates refused.
std::optional<std::vector<std::uint8_t>> readSmallIntArray(TableReader& reader,
                                                           std::string_view key, IntRange range) {
  const auto* array = reader.typed<toml::array>(
      key, false, fmt::format("an array of {} ({}-{})", range.what, range.min, range.max));
  if (array == nullptr) return std::nullopt;
  std::vector<std::uint8_t> values;
  bool ok = true;
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    std::string element_field = fmt::format("{}[{}]", reader.field(key), i);
    reader.policy().locations[element_field] = locationOf(element.source());
    const auto* number = element.as<std::int64_t>();
    if (number == nullptr) {
      reader.wrongType(element, element_field, std::string(range.what));
      ok = false;
      continue;
    }
    auto checked = reader.checkRange(*number, element_field, range);
    if (!checked) {
      ok = false;
      continue;
    }
    auto value = static_cast<std::uint8_t>(*checked);
    if (std::find(values.begin(), values.end(), value) != values.end()) {
      reader.invalid(element, element_field, fmt::format("{} is listed twice", value));
      ok = false;
      continue;
    }
    values.push_back(value);
  }
  if (!ok) return std::nullopt;
  return values;
}

RoceFabric readRoce(TableReader& reader) {
  RoceFabric fabric;
  constexpr IntRange kTc{0, 7, "a traffic class"};
  if (const auto* array = reader.typed<toml::array>(
          "prio_tc", false, "an array of 8 traffic classes, the TC of priority 0 to 7")) {
    if (array->size() != kRocePriorities) {
      reader.invalid(
          *array, reader.field("prio_tc"),
          fmt::format("{} entries; expected 8, the TC of priority 0 to 7", array->size()));
    } else {
      for (std::size_t prio = 0; prio < array->size(); ++prio) {
        const toml::node& element = *array->get(prio);
        std::string element_field = fmt::format("{}[{}]", reader.field("prio_tc"), prio);
        const auto* number = element.as<std::int64_t>();
        if (number == nullptr) {
          reader.wrongType(element, element_field, "a traffic class (0-7)");
        } else if (auto tc = reader.checkRange(*number, element_field, kTc)) {
          fabric.prio_tc[prio] = static_cast<std::uint8_t>(*tc);
        }
      }
    }
  }
  if (auto pfc = readSmallIntArray(reader, "pfc_priorities", {0, 7, "a priority"})) {
    fabric.pfc_priorities = std::move(*pfc);
    std::sort(fabric.pfc_priorities.begin(), fabric.pfc_priorities.end());
  }
  return fabric;
}

EthernetFabric readEthernet(TableReader& reader) {
  EthernetFabric fabric;
  fabric.link_rate = reader.bitRate("link_rate");
  return fabric;
}

constexpr std::array<Choice<FabricKind>, 3> kFabricKinds{{
    {"infiniband", FabricKind::infiniband},
    {"roce", FabricKind::roce},
    {"ethernet", FabricKind::ethernet},
}};

// Keys that belong to one kind only, for a precise error under another kind.
constexpr std::array<std::pair<std::string_view, FabricKind>, 13> kKindSpecificKeys{{
    {"max_vls", FabricKind::infiniband},
    {"high_limit", FabricKind::infiniband},
    {"vlarb_high", FabricKind::infiniband},
    {"vlarb_low", FabricKind::infiniband},
    {"sl2vl", FabricKind::infiniband},
    {"routing_engine", FabricKind::infiniband},
    {"ca", FabricKind::infiniband},
    {"switch_external", FabricKind::infiniband},
    {"switch_port0", FabricKind::infiniband},
    {"router", FabricKind::infiniband},
    {"prio_tc", FabricKind::roce},
    {"pfc_priorities", FabricKind::roce},
    {"link_rate", FabricKind::ethernet},
}};

void readFabric(TableReader& root, Policy& policy) {
  const auto* table = root.typed<toml::table>("fabric", true, "a [fabric] table");
  if (table == nullptr) return;
  TableReader reader = root.nested(*table, "fabric");
  auto kind = reader.choice("kind", kFabricKinds, true);
  if (!kind) {
    for (auto [key, owner] : kKindSpecificKeys) reader.lookup(key);  // judged once kind is valid
    reader.finish();
    return;
  }
  switch (*kind) {
    case FabricKind::infiniband:
      policy.fabric = readInfiniband(reader);
      break;
    case FabricKind::roce:
      policy.fabric = readRoce(reader);
      break;
    case FabricKind::ethernet:
      policy.fabric = readEthernet(reader);
      break;
  }
  std::map<std::string_view, std::string, std::less<>> hints;
  for (auto [key, owner] : kKindSpecificKeys) {
    if (owner != *kind) {
      hints.emplace(key, fmt::format("it applies to kind = \"{}\", and fabric.kind is \"{}\"",
                                     fabricKindName(owner), fabricKindName(*kind)));
    }
  }
  reader.finish(hints);
}

// ---------------------------------------------------------------- classes

constexpr std::array<Choice<Role>, 3> kRoles{{
    {"collectives", Role::collectives},
    {"kv", Role::kv},
    {"other", Role::other},
}};
constexpr std::array<Choice<Priority>, 2> kPriorities{{
    {"high", Priority::high},
    {"low", Priority::low},
}};

bool isValidClassName(std::string_view name) {
  if (name.empty() || name.size() > kMaxClassNameLength) return false;
  if (std::isalpha(static_cast<unsigned char>(name.front())) == 0) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
  });
}

std::optional<std::uint8_t> readDscp(TableReader& reader) {
  const auto* node = reader.typed<toml::value<std::int64_t>>("dscp", false, "a DSCP (0-63)");
  if (node == nullptr) return std::nullopt;
  std::int64_t value = node->get();
  if (value >= 0 && value <= kMaxDscp) return static_cast<std::uint8_t>(value);
  if (value > kMaxDscp && value <= 255) {
    std::string ecn = (value & 3) != 0 ? fmt::format(", ECN bits {}", value & 3) : "";
    reader.invalid(*node, reader.field("dscp"),
                   fmt::format("{} is not a DSCP (0-63); it looks like a ToS byte, which carries "
                               "DSCP {} in its upper six bits (ToS = DSCP << 2{}); write dscp = {}",
                               value, value >> 2, ecn, value >> 2));
  } else {
    reader.invalid(*node, reader.field("dscp"),
                   fmt::format("{} is out of range for a DSCP (0-63)", value));
  }
  return std::nullopt;
}

std::optional<PortRange> readPortRange(TableReader& reader) {
  const toml::node* node = reader.lookup("tcp_ports");
  if (node == nullptr) return std::nullopt;
  const std::string field = reader.field("tcp_ports");
  constexpr std::string_view kForm = "a port range \"FIRST-LAST\" (1-65535), e.g. \"21000-21999\"";
  std::uint64_t first = 0;
  std::uint64_t last = 0;
  if (const auto* number = node->as<std::int64_t>()) {
    if (number->get() < 1 || number->get() > 65535) {
      reader.invalid(*node, field, fmt::format("{} is not a TCP port (1-65535)", number->get()));
      return std::nullopt;
    }
    first = last = static_cast<std::uint64_t>(number->get());
  } else if (const auto* text = node->as<std::string>()) {
    if (!parsePair(text->get(), '-', first, last)) {
      reader.invalid(*node, field, fmt::format("\"{}\" is not {}", text->get(), kForm));
      return std::nullopt;
    }
  } else {
    reader.wrongType(*node, field, kForm);
    return std::nullopt;
  }
  if (first < 1 || last > 65535 || first > last) {
    reader.invalid(*node, field, fmt::format("{}-{} is not {}", first, last, kForm));
    return std::nullopt;
  }
  return PortRange{static_cast<std::uint16_t>(first), static_cast<std::uint16_t>(last)};
}

// Settings DualPath derives from the class's own fields; writing them in a
// ucx table as well would let the two disagree.
constexpr std::array<std::pair<std::string_view, std::string_view>, 3> kDerivedUcxSettings{{
    {"IB_SL", "ib_sl (or roce_priority on RoCE)"},
    {"IB_TRAFFIC_CLASS", "dscp (UCX takes the ToS byte, DSCP << 2, and DualPath converts it)"},
    {"PORT_RANGE", "tcp_ports"},
}};

std::vector<UcxSetting> readUcxTable(TableReader& parent, std::string_view key,
                                     std::string_view derived_from_where) {
  std::vector<UcxSetting> settings;
  const auto* table = parent.typed<toml::table>(
      key, false, "a table of UCX settings, NAME = \"value\" without the UCX_ prefix");
  if (table == nullptr) return settings;
  std::string table_field = parent.field(key);
  for (auto&& [name_key, value] : *table) {
    std::string name(name_key.str());
    std::string field = fmt::format("{}.{}", table_field, name);
    SourceLocation where = locationOf(name_key.source());
    parent.policy().locations[field] = where;
    if (name.rfind("UCX_", 0) == 0) {
      parent.reporter().error(
          where, field,
          fmt::format("write the name without the UCX_ prefix: {} = ...", name.substr(4)));
      continue;
    }
    bool valid_name = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isupper(static_cast<unsigned char>(c)) != 0 ||
             std::isdigit(static_cast<unsigned char>(c)) != 0 || c == '_';
    });
    if (!valid_name) {
      parent.reporter().error(where, field,
                              "not a UCX setting name: UCX names are upper case, e.g. RNDV_THRESH");
      continue;
    }
    auto derived = std::find_if(kDerivedUcxSettings.begin(), kDerivedUcxSettings.end(),
                                [&](const auto& d) { return d.first == name; });
    if (derived != kDerivedUcxSettings.end()) {
      parent.reporter().error(where, field,
                              fmt::format("DualPath sets {} from {} {}; remove it here", name,
                                          derived_from_where, derived->second));
      continue;
    }
    if (const auto* text = value.as<std::string>()) {
      settings.push_back({name, text->get()});
    } else if (const auto* number = value.as<std::int64_t>()) {
      settings.push_back({name, std::to_string(number->get())});
    } else if (const auto* flag = value.as<bool>()) {
      settings.push_back({name, flag->get() ? "y" : "n"});
    } else {
      parent.wrongType(value, field, "a string, an integer or a boolean");
    }
  }
  return settings;
}

std::map<std::string_view, std::string, std::less<>> classKeyHints(const toml::table& table) {
  std::map<std::string_view, std::string, std::less<>> hints;
  std::string tos_hint = "DualPath takes the DSCP, not the ToS byte; write dscp = <ToS >> 2>";
  for (std::string_view key : {"tos", "tos_byte", "roce_tos", "traffic_class"}) {
    if (const auto* tos = table.get_as<std::int64_t>(key); tos != nullptr && tos->get() >= 0) {
      hints.emplace(key, fmt::format("DualPath takes the DSCP, not the ToS byte; write dscp = {} "
                                     "(ToS {} >> 2)",
                                     tos->get() >> 2, tos->get()));
    } else {
      hints.emplace(key, tos_hint);
    }
  }
  hints.emplace("sl", "did you mean \"ib_sl\"?");
  hints.emplace("vl", "a class's VL follows from its ib_sl through fabric.sl2vl; set ib_sl");
  hints.emplace("pcp", "did you mean \"roce_priority\"?");
  return hints;
}

TrafficClass readClass(TableReader& reader, const toml::table& table) {
  TrafficClass cls;
  if (const auto* node =
          reader.typed<toml::value<std::string>>("name", true, "a class name such as \"kv\"")) {
    if (isValidClassName(node->get())) {
      cls.name = node->get();
    } else {
      reader.invalid(*node, reader.field("name"),
                     fmt::format("\"{}\" is not a class name: a letter, then letters, digits, "
                                 "'_' or '-', at most {} characters",
                                 node->get(), kMaxClassNameLength));
    }
  }
  if (auto role = reader.choice("role", kRoles, true)) cls.role = *role;
  if (auto priority = reader.choice("priority", kPriorities, true)) cls.priority = *priority;
  if (auto weight = reader.integer("weight", {1, 255, "a weight"}, false)) {
    cls.weight = static_cast<std::uint32_t>(*weight);
  }
  cls.is_default = reader.boolean("default").value_or(false);

  if (const auto* ids = reader.typed<toml::array>("nccl_traffic_classes", false,
                                                  "an array of NCCL trafficClass ids (>= 0)")) {
    for (std::size_t i = 0; i < ids->size(); ++i) {
      const toml::node& element = *ids->get(i);
      std::string field = fmt::format("{}[{}]", reader.field("nccl_traffic_classes"), i);
      reader.policy().locations[field] = locationOf(element.source());
      const auto* id = element.as<std::int64_t>();
      if (id == nullptr) {
        reader.wrongType(element, field, "an NCCL trafficClass id (>= 0)");
      } else if (id->get() == kNcclTrafficClassUnset) {
        reader.invalid(element, field,
                       "-1 means \"trafficClass unset\", which selects the class with "
                       "default = true; remove -1 here and mark the class default");
      } else if (auto checked = reader.checkRange(
                     *id, field,
                     {0, std::numeric_limits<std::int32_t>::max(), "an NCCL trafficClass id"})) {
        cls.nccl_traffic_classes.push_back(static_cast<std::int32_t>(*checked));
      }
    }
  }
  if (auto sl = reader.integer("ib_sl", {0, 15, "an IB service level"}, false)) {
    cls.ib_sl = static_cast<std::uint8_t>(*sl);
  }
  cls.dscp = readDscp(reader);
  if (auto prio = reader.integer("roce_priority", {0, 7, "a RoCE (802.1p) priority"}, false)) {
    cls.roce_priority = static_cast<std::uint8_t>(*prio);
  }
  cls.tcp_ports = readPortRange(reader);
  cls.ucx = readUcxTable(reader, "ucx", "the class's");
  reader.finish(classKeyHints(table));
  return cls;
}

void readClasses(TableReader& root, Policy& policy) {
  const toml::node* node = root.lookup("class");
  constexpr std::string_view kExpectation = "[[class]] sections, one per traffic class";
  if (node == nullptr) {
    root.missing("class", kExpectation);
    return;
  }
  const toml::array* array = node->as_array();
  if (array == nullptr || !array->is_array_of_tables() || array->empty()) {
    root.wrongType(*node, "class", kExpectation);
    return;
  }
  if (array->size() > kMaxTrafficClasses) {
    root.invalid(
        *array->get(kMaxTrafficClasses), fmt::format("class[{}]", kMaxTrafficClasses),
        fmt::format("{} classes; a policy has at most {}", array->size(), kMaxTrafficClasses));
    return;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::table& table = *array->get(i)->as_table();
    TableReader reader = root.nested(table, fmt::format("class[{}]", i));
    policy.classes.push_back(readClass(reader, table));
  }
}

// ---------------------------------------------------------------- arbiter

void readArbiter(TableReader& root, ArbiterSettings& arbiter) {
  const auto* table = root.typed<toml::table>("arbiter", false, "an [arbiter] table");
  if (table == nullptr) return;
  TableReader reader = root.nested(*table, "arbiter");
  if (const toml::node* node = reader.lookup("low_share")) {
    const auto* share = node->as<double>();
    if (share == nullptr) {
      reader.wrongType(*node, reader.field("low_share"),
                       "a fraction between 0 and 1, e.g. 0.05 for 5%");
    } else if (!(share->get() > 0.0 && share->get() < 1.0)) {
      reader.invalid(
          *node, reader.field("low_share"),
          fmt::format("{} is not a fraction strictly between 0 and 1 (0.05 is 5%)", share->get()));
    } else {
      arbiter.low_share = share->get();
    }
  }
  arbiter.link_rate = reader.bitRate("link_rate");
  if (auto v = reader.byteSize("burst")) arbiter.burst = *v;
  if (auto v = reader.byteSize("chunk")) arbiter.chunk = *v;
  if (auto v = reader.byteSize("max_inflight")) arbiter.max_inflight = *v;
  if (auto v = reader.byteSize("low_max_inflight")) arbiter.low_max_inflight = *v;
  if (auto v =
          reader.integer("demand_hold_us", {1, 1'000'000, "a hold time in microseconds"}, false)) {
    arbiter.demand_hold_us = static_cast<std::uint32_t>(*v);
  }
  reader.finish();
}

}  // namespace

std::string Diagnostic::toString() const {
  std::string out = file;
  if (where.line > 0) out += fmt::format(":{}:{}", where.line, where.column);
  out += severity == Severity::error ? ": error: " : ": warning: ";
  if (!field.empty()) out += field + ": ";
  out += message;
  return out;
}

std::size_t LoadedPolicy::errorCount() const {
  return static_cast<std::size_t>(
      std::count_if(diagnostics.begin(), diagnostics.end(),
                    [](const Diagnostic& d) { return d.severity == Severity::error; }));
}

std::size_t LoadedPolicy::warningCount() const {
  return diagnostics.size() - errorCount();
}

LoadedPolicy loadPolicyText(std::string_view text, std::string source_name) {
  Reporter reporter(source_name);
  LoadedPolicy loaded;
  if (text.size() > kMaxPolicyBytes) {
    reporter.error({}, "",
                   fmt::format("{} bytes; a policy file is at most {}", text.size(),
                               formatBytes(kMaxPolicyBytes)));
    loaded.diagnostics = reporter.take();
    return loaded;
  }
  std::vector<NonAsciiByte> non_ascii;
  const std::string ascii = blankNonAsciiTomlComments(text, non_ascii);
  for (const NonAsciiByte& byte : non_ascii) {
    reporter.error({byte.line, byte.column}, "",
                   fmt::format("non-ASCII byte 0x{:02X}: a policy is ASCII outside comments",
                               byte.value));
  }
  if (reporter.hasErrors()) {
    loaded.diagnostics = reporter.take();
    return loaded;
  }
  toml::parse_result parsed = toml::parse(ascii, source_name);
  if (!parsed) {
    const toml::parse_error& error = parsed.error();
    reporter.error(locationOf(error.source()), "",
                   fmt::format("syntax error: {}", error.description()));
    loaded.diagnostics = reporter.take();
    return loaded;
  }

  Policy policy;
  policy.source_name = source_name;
  bool incomplete = false;
  TableReader root(parsed.table(), "", reporter, policy, incomplete);
  if (const auto* format = root.typed<toml::value<std::int64_t>>(
          "format", false, fmt::format("the format version, {}", kFormatVersion))) {
    if (format->get() != kFormatVersion) {
      root.invalid(*format, "format",
                   fmt::format("format {} is not supported; this DualPath reads format {}",
                               format->get(), kFormatVersion));
    }
  }
  readFabric(root, policy);
  readClasses(root, policy);
  readArbiter(root, policy.arbiter);
  policy.ucx_global = readUcxTable(root, "ucx", "each class's");
  root.finish();

  // Cross-field rules need every field; unknown keys do not stop them.
  if (!incomplete) detail::validatePolicy(policy, reporter);
  if (!reporter.hasErrors()) loaded.policy = std::move(policy);
  loaded.diagnostics = reporter.take();
  std::stable_sort(loaded.diagnostics.begin(), loaded.diagnostics.end(),
                   [](const Diagnostic& a, const Diagnostic& b) {
                     return std::pair(a.where.line, a.where.column) <
                            std::pair(b.where.line, b.where.column);
                   });
  return loaded;
}

LoadedPolicy loadPolicyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int error = errno;
    LoadedPolicy loaded;
    loaded.diagnostics.push_back(
        {Severity::error, path, {}, "", fmt::format("cannot open: {}", std::strerror(error))});
    return loaded;
  }
  std::ostringstream text;
  text << in.rdbuf();
  return loadPolicyText(text.str(), path);
}

std::string_view builtinPolicyText() {
  return R"(# DualPath's built-in policy, used when DUALPATH_QOS_POLICY is unset.
# It configures no fabric QoS: collectives and KV relays are told apart by the
# software arbiter in each process. On Ethernet DualPath marks no packets (UCX
# over TCP cannot), so kv's DSCP only steers traffic that carries it in tc
# scripts rendered from this policy. Write a policy for your fabric.
format = 1

[fabric]
kind = "ethernet"

[[class]]
name = "collective"
role = "collectives"
priority = "high"
default = true
nccl_traffic_classes = [0]

[[class]]
name = "kv"
role = "kv"
priority = "low"
nccl_traffic_classes = [1]
dscp = 8          # CS1, "lower effort": used by tc scripts rendered from this policy

[arbiter]
low_share = 0.05
)";
}

LoadedPolicy loadPolicy(const std::string& path) {
  if (path.empty()) return loadPolicyText(builtinPolicyText(), std::string(kBuiltinPolicyName));
  return loadPolicyFile(path);
}

Result<Policy> loadPolicyOrError(const std::string& path, bool warnings_are_errors) {
  LoadedPolicy loaded = loadPolicy(path);
  std::string errors;
  for (const Diagnostic& d : loaded.diagnostics) {
    bool fatal = d.severity == Severity::error || warnings_are_errors;
    if (fatal) {
      errors += (errors.empty() ? "" : "\n") + d.toString();
    } else {
      DP_LOG_WARN("{}", d.toString());
    }
  }
  if (!errors.empty()) return Status(StatusCode::invalid_argument, std::move(errors));
  return std::move(*loaded.policy);
}

}  // namespace dualpath::qos
