// What dualpath-sim simulates: a PD-disaggregated cluster (its nodes, links
// and engines), the agentic workload it serves, and how it loads KV-cache.
//
// The scheduler's own descriptions (scheduler::ModelSpec, HardwareSpec,
// SchedulerConfig) are used as they are, so the simulator decides with the
// same inputs as the live loader. What only the simulator needs (host links,
// DRAM, buffers, the storage cluster, the CNIC share of the model's
// collectives, decode speed) is added here. The presets are the paper's
// setups as far as it describes them; docs/simulator.md lists each value and
// where it comes from.
//
// Threading: values and pure functions only.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <dualpath/common/status.h>
#include <dualpath/scheduler/cost_model.h>
#include <dualpath/scheduler/prefill_batcher.h>
#include <dualpath/scheduler/scheduler.h>

namespace dualpath::sim {

// A node of g GPUs beyond what the scheduler sees.
struct NodeHardware {
  scheduler::HardwareSpec base;  // GPUs, SNIC, CNIC per GPU, KV HBM per GPU
  // One node's host memory, reads and writes together (DRAM is half duplex).
  // Host-to-HBM copies go through the GPU's CNIC as RDMA loopback, as in the
  // paper, so they load its CNIC in both directions, not a separate PCIe link.
  double dram_bytes_per_s = 0;
  double buffer_bytes = 0;          // one node's host buffer for KV loads and hand-offs
  // The storage cluster behind every SNIC, reads and writes together; 0 means
  // it is never the bottleneck (the paper's 3FS is far wider than its SNICs).
  double storage_bytes_per_s = 0;
  // Fraction of each CNIC the model's own collectives hold (EP all-to-all
  // and friends, on the high-priority lane). KV traffic on the low-priority
  // lane gets the rest; the VL arbiter gives collectives ~99% when both want
  // the link, so this is what they use, not a guarantee KV shares.
  double collective_share = 0;

  double kvCnicBytesPerS() const noexcept {
    return base.cnic_bytes_per_s * (1.0 - collective_share);
  }
  Status validate() const;
};

// Time of one decode step of one decode engine, from its batch: a fixed part
// (weights, expert all-to-all), a part per sequence, and the KV the step's
// attention reads from HBM (each sequence's context, capped by the model's
// attention window).
struct DecodeModel {
  double step_base_seconds = 0;
  double step_per_sequence_seconds = 0;
  double hbm_bytes_per_s = 0;

  Status validate() const;
};

// The agentic trace: each agent is a session of turns. Turn 0 sends the
// initial prompt; every later turn appends tool output (append tokens) to
// the context, which also holds every reply (generated tokens). A session
// ends before its context would pass max_context_tokens. Lengths are drawn
// from exponential distributions around their means (clamped to [1, 8 x
// mean]); docs/simulator.md compares the result with the paper's traces.
struct TraceShape {
  std::uint32_t agents = 0;
  std::uint64_t max_context_tokens = 0;
  std::uint64_t initial_tokens_mean = 0;
  std::uint64_t append_tokens_mean = 0;
  std::uint64_t generated_tokens_mean = 0;
  double tool_seconds_mean = 0;  // between a reply and the next turn
  std::uint64_t seed = 1;

  Status validate() const;
};

// The paper's traces (Table 2): per maximum context length (32K, 48K, 64K),
// the mean append and generated tokens per turn; lengths between take the
// next longer trace's. The initial prompt (max / 16) is our choice: it puts
// the mean context and the hit rate near the table's (docs/simulator.md).
TraceShape paperTrace(std::uint32_t agents, std::uint64_t max_context_tokens);

enum class Mode : std::uint8_t {
  basic,     // PE path only, the whole cached KV loaded before a prefill starts
  dualpath,  // layerwise prefill, the scheduler's shorter-queue policy over both paths
  oracle,    // no storage I/O: every cached block is already in place
};
std::string_view modeName(Mode mode) noexcept;
Result<Mode> parseMode(std::string_view name);

enum class Arrivals : std::uint8_t {
  offline,  // every agent starts at time 0; the run ends when the last finishes (JCT)
  online,   // agents start as a Poisson process of agents_per_second
};

// Online runs stop here: a rate that needs more agents is not simulated.
constexpr double kMaxOnlineAgents = 2e6;

struct SimConfig {
  std::string name;  // the preset, or "custom"
  scheduler::ModelSpec model;
  NodeHardware hardware;
  DecodeModel decode;
  std::uint32_t prefill_nodes = 0;
  std::uint32_t decode_nodes = 0;
  TraceShape trace;
  Mode mode = Mode::dualpath;
  // Overrides of what the mode implies: any read-path policy of scheduler/,
  // and whether prefill overlaps each layer's KV load with its compute.
  std::optional<std::string> policy;
  std::optional<bool> layerwise;
  Arrivals arrivals = Arrivals::offline;
  // Online: agents arrive for online_seconds (so trace.agents is rate x
  // seconds), and latencies count the turns that arrive from
  // online_measure_from_seconds to online_seconds: the steady state, without
  // the ramp-up before it and the drain after the last arrival.
  double agents_per_second = 0;
  double online_seconds = 1800;
  double online_measure_from_seconds = 900;
  scheduler::SchedulerConfig scheduler;
  double prefill_quota_seconds = scheduler::PrefillBatcher::kDefaultQuotaSeconds;
  // The scheduler runs its rounds at most this often: what changes in between
  // (arrivals, finished prefills and decodes) waits for the next round. 0
  // decides at the instant of every change.
  double scheduler_interval_seconds = 0.01;

  std::string policyName() const;  // the override, or the mode's
  TraceShape effectiveTrace() const;  // online: trace.agents from the rate
  bool layerwisePrefill() const noexcept { return layerwise.value_or(mode != Mode::basic); }

  // Every field in range and the parts consistent (a node's buffer holds the
  // longest context); the error names the field.
  Status validate() const;
};

// "ds660b-2p4d", "ds27b-1p1d", "qwen32b-1p2d", "ds660b-48p96d" (the scale
// run: 1,152 GPUs, 48K agents) and "tiny" (for tests). `max_context_tokens`
// of 0 keeps the preset's (64K).
Result<SimConfig> simPreset(std::string_view name);
std::span<const std::string_view> simPresetNames() noexcept;

}  // namespace dualpath::sim
