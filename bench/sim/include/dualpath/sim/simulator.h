// The discrete-event cluster simulator behind dualpath-sim.
//
// simulate() replays an agentic trace on a simulated PD cluster and returns
// what happened. Decisions are scheduler/'s, unchanged: a scheduler::Scheduler
// assigns each turn to a prefill and a decode engine and picks its read path,
// and a scheduler::PrefillBatcher per prefill engine packs its batches. The
// simulator plays the cluster around them:
//   - storage reads queue per node and are served first come, first served
//     by the node's SNIC, into the node's host buffer (bounded);
//   - a prefill batch runs for the longest of its compute time (the cost
//     model's FLOPs) and the time to move its KV into HBM: over PCIe for
//     PE-path blocks, and over the DE's and the PE's compute NICs, on the KV
//     lane's share, for DE-path blocks. Without layerwise prefill the move
//     comes first and the compute after it;
//   - the KV then goes to the decode engine (all of it on the PE path, only
//     the new tokens on the DE path), is copied into its HBM, and the decode
//     engine generates the reply in a continuous batch whose step time comes
//     from the DecodeModel;
//   - the full blocks the turn added are written back over the DE node's
//     SNIC before the agent's next turn may read them.
// Every transfer holds its rate on each link it crosses for its duration,
// and a link never hands out more than its capacity: the report checks both
// that and that every byte read, relayed and written is accounted for.
//
// A run is a pure function of its SimConfig (the trace comes from its seed).
//
// Threading: none; simulate() runs on the caller's thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/sim/config.h>

namespace dualpath::sim {

struct LatencySummary {
  std::uint64_t samples = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;  // seconds
};

// One link kind, over every node or engine that has one.
struct LinkSummary {
  std::string kind;             // "snic-read", "snic-write", "cnic-in", ...
  std::uint32_t links = 0;
  double capacity_bytes_per_s = 0;  // of one link
  double bytes = 0;                 // over all links of the kind
  double mean_utilisation = 0;      // bytes / (capacity x makespan), averaged over links
  double peak_utilisation = 0;      // the highest rate any one link ever handed out / capacity
};

struct TrafficBytes {
  double storage_read_pe_path = 0;  // cached KV read by PE nodes
  double storage_read_de_path = 0;  // cached KV read by DE nodes
  double relay = 0;                 // DE buffer -> PE HBM over the compute NICs
  double pe_host_to_device = 0;     // PE buffer -> PE HBM over PCIe
  double handoff = 0;               // PE HBM -> DE buffer over the compute NICs
  double de_host_to_device = 0;     // DE buffer -> DE HBM over PCIe
  double write_back = 0;            // new full blocks, DE node -> storage
};

struct SimReport {
  std::string name;
  std::string mode;
  std::string policy;
  bool layerwise = false;
  std::uint32_t prefill_nodes = 0, decode_nodes = 0, gpus = 0;
  std::uint32_t agents = 0;
  std::uint64_t requests = 0;
  std::uint64_t prompt_tokens = 0, cached_tokens = 0, generated_tokens = 0;

  double makespan_seconds = 0;  // offline: the job completion time (JCT)
  double tokens_per_second = 0;  // prompt tokens served per second of makespan
  double agents_per_second = 0;  // online: the offered rate
  LatencySummary ttft, ttst, tpot;
  // Mean read utilisation of the PE nodes' SNICs and of the DE nodes'.
  double snic_read_utilisation_prefill = 0, snic_read_utilisation_decode = 0;
  // Each SNIC's bytes (reads and writes) over the mean of all SNICs; the paper
  // reports max/avg 1.53 (basic) and 1.18 (DualPath).
  double snic_max_over_mean = 0;
  double de_path_block_share = 0;  // of all cached blocks read

  TrafficBytes traffic;   // counted as each copy, read or write ended
  TrafficBytes expected;  // the same, from the trace and the decisions
  bool link_bytes_match = false;  // the links' own byte counters sum to `traffic`
  std::vector<LinkSummary> links;
  double peak_link_utilisation = 0;  // the highest over every link
  std::uint64_t scheduler_rounds = 0;
  std::uint64_t events = 0;

  bool bytesConserved(double relative_tolerance = 1e-9) const noexcept;
};

// Runs the configuration to the end: every turn of every agent prefilled,
// decoded and written back. invalid_argument for a bad configuration;
// internal if the run broke an invariant (a link over its capacity, a turn
// that can never be placed).
Result<SimReport> simulate(const SimConfig& config);

}  // namespace dualpath::sim
