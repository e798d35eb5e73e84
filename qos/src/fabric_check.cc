// Parses smpquery output (formats of rdma-core's infiniband-diags and libibmad)
// and compares it with the policy:
//
//   # SL2VL table: Lid 3
//   #                 SL: | 0| 1| 2| ...|15|
//   ports: in  0, out  0: | 0| 1| 2| ...| 3|
//
//   # VLArbitration tables: Lid 3 port 1 LowCap 8 HighCap 8
//   # Low priority VL Arbitration Table:
//   VL    : |0x0 |0x1 |0x2 |...
//   WEIGHT: |0xC0|0xC0|0x40|...
//   # High priority VL Arbitration Table:
//   ...
//
//   VLHighLimit:.....................240
//   OperVLs:.........................VL0-3
#include <charconv>
#include <sstream>

#include <fmt/format.h>

#include <dualpath/qos/fabric_check.h>

namespace dualpath::qos {
namespace {

std::string_view trim(std::string_view text) {
  std::size_t first = text.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  std::size_t last = text.find_last_not_of(" \t\r");
  return text.substr(first, last - first + 1);
}

bool parseNumber(std::string_view text, unsigned& out) {
  text = trim(text);
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    text.remove_prefix(2);
    base = 16;
  }
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out, base);
  return ec == std::errc() && end == text.data() + text.size();
}

// "| 0| 1|...|" or "|0x0 |0xC0|" -> numbers.
bool parseCells(std::string_view row, std::vector<unsigned>& cells) {
  std::size_t bar = row.find('|');
  if (bar == std::string_view::npos) return false;
  row.remove_prefix(bar + 1);
  while (!trim(row).empty()) {
    bar = row.find('|');
    std::string_view cell = row.substr(0, bar);
    unsigned value = 0;
    if (!parseNumber(cell, value)) return false;
    cells.push_back(value);
    if (bar == std::string_view::npos) break;
    row.remove_prefix(bar + 1);
  }
  return true;
}

struct Line {
  std::size_t number;
  std::string_view text;
};

std::vector<Line> splitLines(const std::string& text) {
  std::vector<Line> lines;
  std::size_t number = 1;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back({number++, std::string_view(text).substr(start, end - start)});
    start = end + 1;
  }
  return lines;
}

Status unreadable(const CapturedOutput& capture, std::size_t line, std::string_view what) {
  return Status(StatusCode::invalid_argument, fmt::format("{}:{}: {}", capture.name, line, what));
}

std::string policyAt(const Policy& policy, const std::string& field) {
  SourceLocation at = policy.locate(field);
  return fmt::format("{}:{}:{}", policy.source_name, at.line, at.column);
}

// ------------------------------------------------------------------ SL2VL

Status checkSl2Vl(const Policy& policy, const IbPortQos& port, const std::string& field,
                  const CapturedOutput& capture, FabricCheckReport& report) {
  std::size_t rows = 0;
  for (const Line& line : splitLines(capture.text)) {
    std::string_view text = trim(line.text);
    if (text.rfind("ports:", 0) != 0) continue;
    std::size_t colon = text.find(':', 6);
    std::string_view ports = trim(text.substr(6, colon == std::string_view::npos ? 0 : colon - 6));
    std::vector<unsigned> vls;
    if (colon == std::string_view::npos || !parseCells(text.substr(colon + 1), vls) ||
        vls.size() != kIbServiceLevels) {
      return unreadable(capture, line.number,
                        "not an SL2VL row (expected 'ports: in N, out M: | 0| 1| ...' with 16 "
                        "VLs, as `smpquery sl2vl` prints)");
    }
    ++rows;
    for (std::size_t sl = 0; sl < kIbServiceLevels; ++sl) {
      if (vls[sl] == port.sl2vl[sl]) continue;
      report.mismatches.push_back(fmt::format(
          "sl2vl ({}): SL {} -> VL {} on the fabric ({}:{}), the policy maps SL {} -> VL {} ({})",
          ports, sl, vls[sl], capture.name, line.number, sl, port.sl2vl[sl],
          policyAt(policy, fmt::format("{}[{}]", field, sl))));
    }
  }
  if (rows == 0) {
    return unreadable(capture, 1,
                      "no SL2VL rows found; expected the output of `smpquery sl2vl <lid> [port]`");
  }
  report.checked.push_back(fmt::format("sl2vl ({} row{})", rows, rows == 1 ? "" : "s"));
  return Status::ok();
}

// ------------------------------------------------------------------ VLArb

struct CapturedVlArb {
  std::vector<VlArbEntry> high;
  std::vector<VlArbEntry> low;
  std::vector<std::size_t> high_lines;  // capture line of each entry's WEIGHT row
  std::vector<std::size_t> low_lines;
  bool saw_high = false;
  bool saw_low = false;
};

Result<CapturedVlArb> parseVlArb(const CapturedOutput& capture) {
  CapturedVlArb tables;
  enum class Section { none, low, high } section = Section::none;
  std::vector<unsigned> pending_vls;
  std::size_t pending_line = 0;
  for (const Line& line : splitLines(capture.text)) {
    std::string_view text = trim(line.text);
    if (text.empty()) continue;
    if (text.front() == '#') {
      if (text.find("No VLArbitration tables") != std::string_view::npos) {
        return unreadable(capture, line.number,
                          "this port has no VL arbitration tables (base switch port 0)");
      }
      if (text.find("Low priority VL Arbitration Table") != std::string_view::npos) {
        section = Section::low;
        tables.saw_low = true;
      } else if (text.find("High priority VL Arbitration Table") != std::string_view::npos) {
        section = Section::high;
        tables.saw_high = true;
      }
      continue;
    }
    bool is_vl_row = text.rfind("VL", 0) == 0 && text.rfind("VLArb", 0) != 0;
    bool is_weight_row = text.rfind("WEIGHT", 0) == 0;
    if (!is_vl_row && !is_weight_row) continue;
    if (section == Section::none) {
      return unreadable(capture, line.number,
                        "VL arbitration row before a '# Low/High priority VL Arbitration Table' "
                        "header; expected the output of `smpquery vlarb <lid> [port]`");
    }
    std::vector<unsigned> cells;
    if (!parseCells(text, cells)) {
      return unreadable(capture, line.number, "cannot read the cells of this row");
    }
    if (is_vl_row) {
      pending_vls = std::move(cells);
      pending_line = line.number;
      continue;
    }
    if (pending_line == 0 || cells.size() != pending_vls.size()) {
      return unreadable(capture, line.number,
                        "WEIGHT row without a VL row of the same length above it");
    }
    auto& table = section == Section::low ? tables.low : tables.high;
    auto& lines = section == Section::low ? tables.low_lines : tables.high_lines;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      if (pending_vls[i] > 15 || cells[i] > 255) {
        return unreadable(capture, line.number, "VL or weight out of range");
      }
      table.push_back(
          {static_cast<std::uint8_t>(pending_vls[i]), static_cast<std::uint8_t>(cells[i])});
      lines.push_back(line.number);
    }
    pending_line = 0;
  }
  if (!tables.saw_low && !tables.saw_high) {
    return unreadable(capture, 1,
                      "no VL arbitration tables found; expected the output of "
                      "`smpquery vlarb <lid> [port]`");
  }
  return tables;
}

// The hardware table holds `capacity` entries; OpenSM writes the policy's
// entries first and zero weights after them. A zero-weight entry is skipped
// by the arbiter whatever its VL, so only weights, and VLs of nonzero
// weights, have to agree.
void compareVlArb(const Policy& policy, std::string_view name, const std::string& field,
                  const VlArbTable& expected, const std::vector<VlArbEntry>& fabric,
                  const std::vector<std::size_t>& lines, const CapturedOutput& capture,
                  FabricCheckReport& report) {
  std::size_t count = std::max(expected.size(), fabric.size());
  for (std::size_t i = 0; i < count; ++i) {
    VlArbEntry want = i < expected.size() ? expected[i] : VlArbEntry{0, 0};
    std::string policy_entry = i < expected.size()
                                   ? fmt::format("VL {} weight {} ({})", want.vl, want.weight,
                                                 policyAt(policy, fmt::format("{}[{}]", field, i)))
                                   : std::string("no entry (weight 0)");
    if (i >= fabric.size()) {
      if (want.weight == 0) continue;
      report.mismatches.push_back(
          fmt::format("{} entry {}: beyond the port's {} entries ({}); the policy has {}", name, i,
                      fabric.size(), capture.name, policy_entry));
      continue;
    }
    VlArbEntry have = fabric[i];
    bool same = have.weight == want.weight && (want.weight == 0 || have.vl == want.vl);
    if (same) continue;
    report.mismatches.push_back(
        fmt::format("{} entry {}: VL {} weight {} on the fabric ({}:{}), "
                    "the policy has {}",
                    name, i, have.vl, have.weight, capture.name, lines[i], policy_entry));
  }
  report.checked.push_back(fmt::format("{} ({} entries)", name, fabric.size()));
}

// ------------------------------------------------------------------ PortInfo

// "VLHighLimit:.....................240" -> "240"
std::optional<std::pair<std::string_view, std::size_t>> portInfoValue(const CapturedOutput& capture,
                                                                      std::string_view key) {
  for (const Line& line : splitLines(capture.text)) {
    std::string_view text = trim(line.text);
    if (text.rfind(key, 0) != 0 || text.size() <= key.size() || text[key.size()] != ':') continue;
    std::string_view value = text.substr(key.size() + 1);
    std::size_t first = value.find_first_not_of('.');
    if (first == std::string_view::npos) return std::pair(std::string_view(), line.number);
    return std::pair(trim(value.substr(first)), line.number);
  }
  return std::nullopt;
}

Status checkPortInfo(const Policy& policy, const IbPortQos& port, const InfinibandFabric& fabric,
                     IbPortType type, const CapturedOutput& capture, FabricCheckReport& report) {
  auto high_limit = portInfoValue(capture, "VLHighLimit");
  auto oper_vls = portInfoValue(capture, "OperVLs");
  if (!high_limit && !oper_vls) {
    return unreadable(capture, 1,
                      "neither VLHighLimit nor OperVLs found; expected the output of "
                      "`smpquery portinfo <lid> [port]`");
  }
  if (high_limit) {
    unsigned value = 0;
    if (!parseNumber(high_limit->first, value)) {
      return unreadable(capture, high_limit->second, "VLHighLimit is not a number");
    }
    if (value != port.high_limit) {
      report.mismatches.push_back(
          fmt::format("high_limit: {} on the fabric ({}:{}), the policy has {} ({})", value,
                      capture.name, high_limit->second, port.high_limit,
                      policyAt(policy, fabric.fieldPath(type, "high_limit"))));
    }
    report.checked.emplace_back("VLHighLimit");
  }
  if (oper_vls) {
    // "VL0" is one VL, "VL0-3" four.
    std::string_view text = oper_vls->first;
    unsigned count = 0;
    if (text == "VL0") {
      count = 1;
    } else if (text.rfind("VL0-", 0) == 0 && parseNumber(text.substr(4), count)) {
      ++count;
    } else {
      return unreadable(capture, oper_vls->second, "OperVLs is not 'VL0' or 'VL0-N'");
    }
    if (count != port.max_vls) {
      report.mismatches.push_back(fmt::format(
          "max_vls: {} operational VLs on the fabric ({}:{}), the policy expects {} ({}); VLs "
          "beyond the operational count are masked",
          count, capture.name, oper_vls->second, port.max_vls,
          policyAt(policy, fabric.fieldPath(type, "max_vls"))));
    }
    report.checked.emplace_back("OperVLs");
  }
  return Status::ok();
}

}  // namespace

Result<FabricCheckReport> checkFabric(const Policy& policy, const FabricCheckRequest& request) {
  const InfinibandFabric* fabric = policy.infiniband();
  if (fabric == nullptr) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("check compares InfiniBand tables; {} has fabric kind \"{}\"",
                              policy.source_name, fabricKindName(policy.kind())));
  }
  if (!request.sl2vl && !request.vlarb && !request.portinfo) {
    return Status(StatusCode::invalid_argument,
                  "nothing to check: give at least one of --sl2vl, --vlarb, --portinfo");
  }
  const IbPortQos port = fabric->forPort(request.port_type);
  FabricCheckReport report;
  if (request.sl2vl) {
    DP_TRY(checkSl2Vl(policy, port, fabric->fieldPath(request.port_type, "sl2vl"), *request.sl2vl,
                      report));
  }
  if (request.vlarb) {
    DP_TRY_ASSIGN(CapturedVlArb tables, parseVlArb(*request.vlarb));
    if (tables.saw_high) {
      compareVlArb(policy, "vlarb_high", fabric->fieldPath(request.port_type, "vlarb_high"),
                   port.vlarb_high, tables.high, tables.high_lines, *request.vlarb, report);
    }
    if (tables.saw_low) {
      compareVlArb(policy, "vlarb_low", fabric->fieldPath(request.port_type, "vlarb_low"),
                   port.vlarb_low, tables.low, tables.low_lines, *request.vlarb, report);
    }
  }
  if (request.portinfo) {
    DP_TRY(checkPortInfo(policy, port, *fabric, request.port_type, *request.portinfo, report));
  }
  return report;
}

}  // namespace dualpath::qos
