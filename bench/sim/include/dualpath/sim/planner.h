// Questions asked of many simulations: how many agents per second a cluster
// serves within an SLO, how throughput moves with the P/D ratio and with SNIC
// bandwidth, which cluster shape serves a model and trace best, and the
// paper's closed-form range of P/D ratios free of CNIC and DRAM bottlenecks.
//
// Every function runs simulate() on copies of the caller's SimConfig, one
// after another, on the caller's thread; results are deterministic.
//
// Threading: none.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/sim/config.h>
#include <dualpath/sim/simulator.h>

namespace dualpath::sim {

// The paper's online SLO (§7.4): TTFT at most 4 s and TPOT at most 50 ms,
// both as means over every turn of the run.
struct Slo {
  double ttft_seconds = 4.0;
  double tpot_seconds = 0.050;

  bool met(const SimReport& report) const noexcept {
    return report.ttft.mean <= ttft_seconds && report.tpot.mean <= tpot_seconds;
  }
};

struct CapacitySearch {
  double start_agents_per_second = 0.05;  // doubled until the SLO fails
  std::uint32_t bisections = 6;
};

struct CapacityResult {
  double agents_per_second = 0;  // the largest rate found that met the SLO; 0 if none did
  SimReport at_capacity;         // the run at that rate (empty if none)
  std::uint32_t runs = 0;
};

// Online runs of `config` (its arrivals are overridden) at doubling rates,
// then a bisection between the last rate that met the SLO and the first that
// did not. A cluster that misses the SLO even at the start rate has a
// capacity of 0: a result, not an error.
Result<CapacityResult> findCapacity(const SimConfig& config, const Slo& slo,
                                    const CapacitySearch& search = {});

// One point of a sweep: the same cluster and trace in basic, DualPath and
// Oracle, offline.
struct SweepPoint {
  std::string label;  // "2P4D", "400 Gbps"
  double x = 0;       // the P/D ratio, or the SNIC bandwidth in Gbps
  SimReport basic, dualpath, oracle;
};

// P from 1 to `nodes` - 1 with D = nodes - P.
Result<std::vector<SweepPoint>> sweepPrefillDecodeRatio(const SimConfig& config, std::uint32_t nodes);
// The configured cluster at each SNIC bandwidth (Gbps, per node).
Result<std::vector<SweepPoint>> sweepSnicBandwidth(const SimConfig& config,
                                                   const std::vector<double>& snic_gbps);

// Capacity planning: for `nodes` nodes in total, every P/D split and every
// SNIC bandwidth, the DualPath cluster's capacity in agents per second under
// the SLO. Sorted best first.
struct PlanCandidate {
  std::uint32_t prefill_nodes = 0, decode_nodes = 0;
  double snic_gbps = 0;
  CapacityResult capacity;
};
Result<std::vector<PlanCandidate>> planCapacity(const SimConfig& config, std::uint32_t nodes,
                                                const std::vector<double>& snic_gbps, const Slo& slo,
                                                const CapacitySearch& search = {});

// The paper's §4.2 bound on P/D (nodes) for which every SNIC can be read at
// line rate without a CNIC or a DRAM becoming the bottleneck, with g GPUs per
// node, SNIC bandwidth s x B (B: one CNIC's) and DRAM bandwidth M:
//   s/(g - s) <= P/D <= min{(g - 2s)/s, (g - s)/(2s), (M/(Bs) - 3)/2}.
// For g = 8, s = 1, M = 500 GB/s, B = 50 GB/s: 1/7 to 7/2.
struct PdRange {
  double s = 0;  // SNIC bandwidth in CNICs
  double lowest = 0, highest = 0;
  std::string lowest_limit, highest_limit;  // the link that sets each end
  bool empty() const noexcept { return lowest > highest; }
};
PdRange bottleneckFreeRange(const NodeHardware& hardware);

}  // namespace dualpath::sim
