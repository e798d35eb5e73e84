// The topology override file (TOML) -> TopologyConfig. Checks syntax, known
// keys and types; whether a pattern or pin names something real is decided
// against the machine, in topology.cc.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include <dualpath/common/text.h>
#include <dualpath/common/toml_types.h>
#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo {
namespace {

constexpr std::size_t kMaxConfigBytes = 1 << 20;
constexpr double kMaxSpeedGbps = 1e6;  // 1 Pbit/s: anything above is a typo

ConfigSite siteOf(const toml::source_region& region, std::string field) {
  return {region.begin.line, region.begin.column, std::move(field)};
}

// Collects every error of one file, each a line "file:line:column: field: message".
class Diagnostics {
 public:
  explicit Diagnostics(const TopologyConfig& config) : config_(config) {}

  void error(const ConfigSite& site, std::string_view message) {
    lines_.push_back(fmt::format("{}: {}", config_.where(site), message));
  }
  void wrongType(const toml::node& node, const std::string& field, std::string_view expected) {
    error(siteOf(node.source(), field),
          fmt::format("expected {}, got {}", expected, tomlTypeName(node.type())));
  }
  bool empty() const { return lines_.empty(); }
  Status status() const {
    std::string joined;
    for (const std::string& line : lines_) joined += (joined.empty() ? "" : "\n") + line;
    return Status(StatusCode::invalid_argument, std::move(joined));
  }

 private:
  const TopologyConfig& config_;
  std::vector<std::string> lines_;
};

// The keys of one table: each lookup declares its key known; reportUnknown()
// names the others, with a "did you mean".
class TableKeys {
 public:
  TableKeys(const toml::table& table, std::string path) : table_(table), path_(std::move(path)) {}

  const toml::node* get(std::string_view key) {
    known_.push_back(key);
    return table_.get(key);
  }
  std::string field(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }
  ConfigSite site() const { return siteOf(table_.source(), path_); }

  void reportUnknown(Diagnostics& diagnostics) const {
    for (auto&& [key, node] : table_) {
      if (std::find(known_.begin(), known_.end(), key.str()) != known_.end()) continue;
      std::string message = "unknown key";
      if (auto guess = closestMatch(key.str(), known_)) {
        message += fmt::format("; did you mean \"{}\"?", *guess);
      } else {
        std::vector<std::string> quoted;
        for (std::string_view name : known_) quoted.push_back(fmt::format("\"{}\"", name));
        std::vector<std::string_view> views(quoted.begin(), quoted.end());
        message += fmt::format("; expected {}", joinAlternatives(views));
      }
      diagnostics.error(siteOf(key.source(), field(key.str())), message);
    }
  }

 private:
  const toml::table& table_;
  std::string path_;
  std::vector<std::string_view> known_;
};

const toml::table* subTable(TableKeys& parent, std::string_view key, Diagnostics& diagnostics) {
  const toml::node* node = parent.get(key);
  if (node == nullptr) return nullptr;
  if (!node->is_table()) {
    diagnostics.wrongType(*node, parent.field(key), fmt::format("a [{}] table", key));
    return nullptr;
  }
  return node->as_table();
}

// An array of non-empty strings: NIC names, PCI bus ids or shell patterns.
std::vector<NicPattern> readPatterns(TableKeys& table, std::string_view key,
                                     Diagnostics& diagnostics) {
  constexpr std::string_view kExpected =
      "an array of NIC names, PCI bus ids or shell patterns, e.g. [\"mlx5_*\"]";
  std::vector<NicPattern> patterns;
  const toml::node* node = table.get(key);
  if (node == nullptr) return patterns;
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    diagnostics.wrongType(*node, table.field(key), kExpected);
    return patterns;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    std::string field = fmt::format("{}[{}]", table.field(key), i);
    const auto* text = element.as_string();
    if (text == nullptr) {
      diagnostics.wrongType(element, field, "a NIC name, PCI bus id or shell pattern");
    } else if (text->get().empty()) {
      diagnostics.error(siteOf(element.source(), field), "an empty pattern matches no NIC");
    } else {
      patterns.push_back({text->get(), siteOf(element.source(), std::move(field))});
    }
  }
  return patterns;
}

void readMinSpeed(TableKeys& table, TopologyConfig& config, Diagnostics& diagnostics) {
  constexpr std::string_view kKey = "min_speed_gbps";
  const toml::node* node = table.get(kKey);
  if (node == nullptr) return;
  std::optional<double> value = node->value<double>();  // integers convert exactly
  if (!value) {
    diagnostics.wrongType(*node, table.field(kKey), "a speed in Gbit/s, e.g. 25");
  } else if (!(*value >= 0 && *value <= kMaxSpeedGbps)) {
    diagnostics.error(
        siteOf(node->source(), table.field(kKey)),
        fmt::format("{:g} is not a speed in Gbit/s (0 to {:.0f})", *value, kMaxSpeedGbps));
  } else {
    config.min_speed_gbps = *value;
  }
}

void readNics(TableKeys& root, TopologyConfig& config, Diagnostics& diagnostics) {
  const toml::table* table = subTable(root, "nics", diagnostics);
  if (table == nullptr) return;
  TableKeys keys(*table, "nics");
  config.allow = readPatterns(keys, "allow", diagnostics);
  config.deny = readPatterns(keys, "deny", diagnostics);
  readMinSpeed(keys, config, diagnostics);
  keys.reportUnknown(diagnostics);
}

void readStorage(TableKeys& root, TopologyConfig& config, Diagnostics& diagnostics) {
  const toml::table* table = subTable(root, "storage", diagnostics);
  if (table == nullptr) return;
  TableKeys keys(*table, "storage");
  config.storage_nics = readPatterns(keys, "nics", diagnostics);
  keys.reportUnknown(diagnostics);
}

// `gpu = 3` or `gpu = "0000:18:00.0"`.
std::optional<PinRule> readPin(const toml::table& table, std::string path,
                               Diagnostics& diagnostics) {
  TableKeys keys(table, std::move(path));
  PinRule pin;
  bool complete = true;
  const toml::node* gpu = keys.get("gpu");
  const toml::node* nic = keys.get("nic");
  if (gpu == nullptr) {
    diagnostics.error(keys.site(), "missing \"gpu\": a GPU index or PCI bus id");
    complete = false;
  } else if (const auto* index = gpu->as_integer()) {
    if (index->get() < 0 || index->get() > std::numeric_limits<std::uint32_t>::max()) {
      diagnostics.error(siteOf(gpu->source(), keys.field("gpu")),
                        fmt::format("{} is not a GPU index", index->get()));
      complete = false;
    } else {
      pin.gpu = static_cast<std::uint32_t>(index->get());
    }
  } else if (const auto* bus_id = gpu->as_string(); bus_id != nullptr && !bus_id->get().empty()) {
    pin.gpu = bus_id->get();
  } else {
    diagnostics.wrongType(*gpu, keys.field("gpu"), "a GPU index or PCI bus id");
    complete = false;
  }
  if (nic == nullptr) {
    diagnostics.error(keys.site(), "missing \"nic\": a NIC name or PCI bus id");
    complete = false;
  } else if (const auto* name = nic->as_string(); name != nullptr && !name->get().empty()) {
    pin.nic = name->get();
  } else {
    diagnostics.wrongType(*nic, keys.field("nic"), "a NIC name or PCI bus id");
    complete = false;
  }
  keys.reportUnknown(diagnostics);
  if (!complete) return std::nullopt;
  pin.gpu_site = siteOf(gpu->source(), keys.field("gpu"));
  pin.nic_site = siteOf(nic->source(), keys.field("nic"));
  return pin;
}

void readPins(TableKeys& root, TopologyConfig& config, Diagnostics& diagnostics) {
  const toml::node* node = root.get("pin");
  if (node == nullptr) return;
  const toml::array* array = node->as_array();
  if (array == nullptr || !array->is_array_of_tables()) {
    diagnostics.wrongType(*node, "pin", "[[pin]] sections, each with gpu and nic");
    return;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    if (auto pin = readPin(*array->get(i)->as_table(), fmt::format("pin[{}]", i), diagnostics)) {
      config.pins.push_back(std::move(*pin));
    }
  }
}

}  // namespace

std::string TopologyConfig::where(const ConfigSite& site) const {
  std::string out = source.empty() ? std::string("<config>") : source;
  if (site.line > 0) out += fmt::format(":{}:{}", site.line, site.column);
  if (!site.field.empty()) out += ": " + site.field;
  return out;
}

Result<TopologyConfig> parseTopologyConfig(std::string_view text, std::string source_name) {
  TopologyConfig config;
  config.source = std::move(source_name);
  Diagnostics diagnostics(config);
  if (text.size() > kMaxConfigBytes) {
    diagnostics.error({}, fmt::format("{} bytes; a topology file is at most {} bytes", text.size(),
                                      kMaxConfigBytes));
    return diagnostics.status();
  }
  std::vector<NonAsciiByte> non_ascii;
  const std::string ascii = blankNonAsciiTomlComments(text, non_ascii);
  for (const NonAsciiByte& byte : non_ascii) {
    diagnostics.error({byte.line, byte.column, ""},
                      fmt::format("non-ASCII byte 0x{:02X}: a topology file is ASCII outside "
                                  "comments",
                                  byte.value));
  }
  if (!non_ascii.empty()) return diagnostics.status();
  toml::parse_result parsed = toml::parse(ascii, config.source);
  if (!parsed) {
    const toml::parse_error& error = parsed.error();
    diagnostics.error(siteOf(error.source(), ""),
                      fmt::format("syntax error: {}", error.description()));
    return diagnostics.status();
  }
  TableKeys root(parsed.table(), "");
  readNics(root, config, diagnostics);
  readStorage(root, config, diagnostics);
  readPins(root, config, diagnostics);
  root.reportUnknown(diagnostics);
  if (!diagnostics.empty()) return diagnostics.status();
  return config;
}

Result<TopologyConfig> loadTopologyConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status(StatusCode::io, fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parseTopologyConfig(text.str(), path);
}

}  // namespace dualpath::scheduler::topo
