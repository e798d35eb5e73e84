#include <dualpath/sim/planner.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace dualpath::sim {
namespace {

constexpr double kGbps = 1e9 / 8;  // bytes per second in one Gbit/s

// One configuration in the three modes, offline.
Result<SweepPoint> runModes(SimConfig config, std::string label, double x) {
  SweepPoint point{.label = std::move(label), .x = x, .basic = {}, .dualpath = {}, .oracle = {}};
  config.arrivals = Arrivals::offline;
  for (Mode mode : {Mode::basic, Mode::dualpath, Mode::oracle}) {
    config.mode = mode;
    config.policy.reset();
    config.layerwise.reset();
    DP_TRY_ASSIGN(SimReport report, simulate(config));
    (mode == Mode::basic ? point.basic : mode == Mode::dualpath ? point.dualpath : point.oracle) =
        std::move(report);
  }
  return point;
}

}  // namespace

Result<CapacityResult> findCapacity(const SimConfig& base, const Slo& slo,
                                    const CapacitySearch& search) {
  if (!(search.start_agents_per_second > 0)) {
    return Status(StatusCode::invalid_argument, "capacity search: the start rate must be positive");
  }
  SimConfig config = base;
  config.arrivals = Arrivals::online;
  CapacityResult result;
  auto meets = [&](double rate) -> Result<bool> {
    if (rate * config.online_seconds > kMaxOnlineAgents) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("capacity search: '{}' still met the SLO at {:g} agents/s; a higher rate "
                                "needs more than {:g} agents in {:g} s: this trace does not load the "
                                "cluster",
                                config.name, result.agents_per_second, kMaxOnlineAgents,
                                config.online_seconds));
    }
    config.agents_per_second = rate;
    DP_TRY_ASSIGN(SimReport report, simulate(config));
    ++result.runs;
    const bool met = slo.met(report);
    if (met && rate >= result.agents_per_second) {
      result.agents_per_second = rate;
      result.at_capacity = std::move(report);
    }
    return met;
  };
  double good = 0;
  double bad = search.start_agents_per_second;
  // Double until a rate misses the SLO; kMaxOnlineAgents bounds the doubling.
  while (true) {
    DP_TRY_ASSIGN(bool met, meets(bad));
    if (!met) break;
    good = bad;
    bad *= 2;
  }
  if (good == 0) return result;
  for (std::uint32_t i = 0; i < search.bisections; ++i) {
    const double middle = (good + bad) / 2;
    DP_TRY_ASSIGN(bool met, meets(middle));
    (met ? good : bad) = middle;
  }
  return result;
}

Result<std::vector<SweepPoint>> sweepPrefillDecodeRatio(const SimConfig& config, std::uint32_t nodes) {
  if (nodes < 2) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("P/D sweep: needs at least 2 nodes, got {}", nodes));
  }
  std::vector<SweepPoint> points;
  for (std::uint32_t p = 1; p < nodes; ++p) {
    SimConfig shaped = config;
    shaped.prefill_nodes = p;
    shaped.decode_nodes = nodes - p;
    DP_TRY_ASSIGN(SweepPoint point,
                  runModes(shaped, fmt::format("{}P{}D", p, nodes - p),
                           static_cast<double>(p) / static_cast<double>(nodes - p)));
    points.push_back(std::move(point));
  }
  return points;
}

Result<std::vector<SweepPoint>> sweepSnicBandwidth(const SimConfig& config,
                                                   const std::vector<double>& snic_gbps) {
  std::vector<SweepPoint> points;
  for (double gbps : snic_gbps) {
    if (!(gbps > 0) || !std::isfinite(gbps)) {
      return Status(StatusCode::invalid_argument,
                    fmt::format("SNIC sweep: bandwidth {} Gbps must be positive", gbps));
    }
    SimConfig shaped = config;
    shaped.hardware.base.snic_bytes_per_s = gbps * kGbps;
    DP_TRY_ASSIGN(SweepPoint point, runModes(shaped, fmt::format("{:g} Gbps", gbps), gbps));
    points.push_back(std::move(point));
  }
  return points;
}

Result<std::vector<PlanCandidate>> planCapacity(const SimConfig& config, std::uint32_t nodes,
                                                const std::vector<double>& snic_gbps, const Slo& slo,
                                                const CapacitySearch& search) {
  if (nodes < 2) {
    return Status(StatusCode::invalid_argument,
                  fmt::format("capacity plan: needs at least 2 nodes, got {}", nodes));
  }
  std::vector<PlanCandidate> candidates;
  for (double gbps : snic_gbps) {
    for (std::uint32_t p = 1; p < nodes; ++p) {
      SimConfig shaped = config;
      shaped.mode = Mode::dualpath;
      shaped.prefill_nodes = p;
      shaped.decode_nodes = nodes - p;
      shaped.hardware.base.snic_bytes_per_s = gbps * kGbps;
      DP_TRY_ASSIGN(CapacityResult capacity, findCapacity(shaped, slo, search));
      candidates.push_back(PlanCandidate{.prefill_nodes = p,
                                         .decode_nodes = nodes - p,
                                         .snic_gbps = gbps,
                                         .capacity = std::move(capacity)});
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    return a.capacity.agents_per_second > b.capacity.agents_per_second;
  });
  return candidates;
}

PdRange bottleneckFreeRange(const NodeHardware& hardware) {
  const double g = hardware.base.gpus_per_node;
  const double b = hardware.base.cnic_bytes_per_s;
  const double s = hardware.base.snic_bytes_per_s / b;
  PdRange range{.s = s, .lowest = s / (g - s), .highest = 0, .lowest_limit = "PE CNIC write",
                .highest_limit = ""};
  const double de_cnic_read = (g - 2 * s) / s;
  const double de_cnic_write = (g - s) / (2 * s);
  const double de_dram = (hardware.dram_bytes_per_s / (b * s) - 3) / 2;
  range.highest = std::min({de_cnic_read, de_cnic_write, de_dram});
  std::vector<std::string> limits;
  constexpr double kSame = 1e-9;
  if (std::fabs(de_cnic_read - range.highest) < kSame) limits.emplace_back("DE CNIC read");
  if (std::fabs(de_cnic_write - range.highest) < kSame) limits.emplace_back("DE CNIC write");
  if (std::fabs(de_dram - range.highest) < kSame) limits.emplace_back("DE DRAM");
  for (std::size_t i = 0; i < limits.size(); ++i) {
    range.highest_limit += (i == 0 ? "" : " and ") + limits[i];
  }
  return range;
}

}  // namespace dualpath::sim
