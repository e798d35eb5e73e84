// dualpath-sim: the cluster-scale simulator (docs/simulator.md).
//
//   dualpath-sim --preset ds660b-2p4d            basic, DualPath and Oracle, offline
//   dualpath-sim --preset ds660b-2p4d --json     the same as one JSON document
//   dualpath-sim --preset ds27b-1p1d --online --aps 0.4
//   dualpath-sim --preset ds27b-1p1d --capacity  the largest agents/s within the SLO
//   dualpath-sim --preset ds27b-1p1d --sweep pd --nodes 4 --plot pd.svg
//   dualpath-sim --preset ds27b-1p1d --sweep snic --snic-gbps-list 100,200,400,800
//   dualpath-sim --preset ds27b-1p1d --plan --nodes 4
//   dualpath-sim --preset ds660b-2p4d --bottleneck-range
//
// Exit status: 0, or 1 with the reason on stderr (a bad flag, a broken
// invariant, a paper figure missed with --check-paper).
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <dualpath/sim/config.h>
#include <dualpath/sim/output.h>
#include <dualpath/sim/planner.h>
#include <dualpath/sim/simulator.h>
#include <dualpath/sim/trace.h>

namespace {

using dualpath::Result;
using dualpath::Status;
using dualpath::StatusCode;
using namespace dualpath::sim;
using nlohmann::json;

constexpr double kGbps = 1e9 / 8;

struct Options {
  std::string preset = "ds660b-2p4d";
  std::optional<std::string> mode;
  std::optional<std::string> policy;
  std::optional<bool> layerwise;
  std::optional<std::uint32_t> agents, prefill_nodes, decode_nodes;
  std::optional<std::uint64_t> max_len;
  std::optional<double> snic_gbps, storage_gbps, collective_share, tool_seconds, mfu;
  std::uint64_t seed = 1;
  bool online = false;
  double aps = 0;
  std::optional<double> online_seconds, measure_from;
  bool capacity = false;
  std::string sweep;
  std::uint32_t nodes = 0;
  std::vector<double> snic_list = {100, 200, 400, 800, 1600};
  std::string plot;
  bool plan = false;
  bool range = false;
  bool trace_stats = false;
  bool check_paper = false;
  bool json = false;
};

Result<SimConfig> configure(const Options& o) {
  DP_TRY_ASSIGN(SimConfig config, simPreset(o.preset));
  if (o.mode) {
    DP_TRY_ASSIGN(config.mode, parseMode(*o.mode));
  }
  config.policy = o.policy;
  config.layerwise = o.layerwise;
  if (o.agents) config.trace.agents = *o.agents;
  if (o.prefill_nodes) config.prefill_nodes = *o.prefill_nodes;
  if (o.decode_nodes) config.decode_nodes = *o.decode_nodes;
  if (o.max_len) {
    // The paper's trace for that length (Table 2), at the preset's agents.
    config.trace = paperTrace(config.trace.agents, *o.max_len);
  }
  if (o.snic_gbps) config.hardware.base.snic_bytes_per_s = *o.snic_gbps * kGbps;
  if (o.storage_gbps) config.hardware.storage_bytes_per_s = *o.storage_gbps * kGbps;
  if (o.collective_share) config.hardware.collective_share = *o.collective_share;
  if (o.tool_seconds) config.trace.tool_seconds_mean = *o.tool_seconds;
  if (o.mfu) config.hardware.base.mfu = *o.mfu;
  config.trace.seed = o.seed;
  if (o.online) {
    config.arrivals = Arrivals::online;
    config.agents_per_second = o.aps;
  }
  if (o.online_seconds) config.online_seconds = *o.online_seconds;
  if (o.measure_from) config.online_measure_from_seconds = *o.measure_from;
  DP_TRY(config.validate());
  return config;
}

// Prints the reason; the exit status of a failed command.
int fail(const Status& status) {
  std::fprintf(stderr, "dualpath-sim: %s\n", status.message().c_str());
  return 1;
}

// The preset's runs: all three modes offline, with the paper's figure; or
// the one run a mode, a policy, a layerwise choice or --online asks for.
int runPreset(const Options& o, const SimConfig& config) {
  std::vector<SimConfig> runs;
  if (o.mode || o.online || o.policy || o.layerwise) {
    runs.push_back(config);
  } else {
    for (Mode mode : {Mode::basic, Mode::dualpath, Mode::oracle}) {
      SimConfig c = config;
      c.mode = mode;
      c.policy.reset();
      c.layerwise.reset();
      runs.push_back(c);
    }
  }
  std::vector<SimReport> reports;
  double wall = 0;
  for (const SimConfig& c : runs) {
    const auto start = std::chrono::steady_clock::now();
    Result<SimReport> report = simulate(c);
    wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!report) return fail(report.status());
    reports.push_back(std::move(report).value());
  }
  Result<Trace> trace = makeTrace(config.effectiveTrace(), config.model.block_tokens, config.arrivals,
                                  config.agents_per_second);
  if (!trace) return fail(trace.status());

  bool invariants = true;
  for (const SimReport& r : reports) invariants = invariants && r.bytesConserved() && r.peak_link_utilisation <= 1 + 1e-9;
  std::optional<double> ratio;
  if (reports.size() == 3) ratio = reports[0].makespan_seconds / reports[1].makespan_seconds;
  const std::optional<PaperReference> paper = paperReference(config.name);
  const bool within = ratio && paper &&
                      std::abs(*ratio / paper->basic_over_dualpath - 1) <= kPaperTolerance;

  if (o.json) {
    json doc = {{"config", toJson(config)}, {"trace", toJson(*trace)}, {"wall_seconds", wall},
                {"invariants_hold", invariants}};
    json runs_json = json::array();
    for (const SimReport& r : reports) runs_json.push_back(toJson(r));
    doc["runs"] = runs_json;
    if (ratio) doc["jct_basic_over_dualpath"] = *ratio;
    if (ratio) doc["jct_dualpath_over_oracle"] = reports[1].makespan_seconds / reports[2].makespan_seconds;
    if (paper) {
      doc["paper"] = {{"what", paper->what},
                      {"basic_over_dualpath", paper->basic_over_dualpath},
                      {"tolerance", kPaperTolerance}};
      if (ratio) doc["paper"]["within_tolerance"] = within;
    }
    std::printf("%s\n", doc.dump().c_str());
  } else {
    std::printf("dualpath-sim %s\n%s\n\n%s", describe(config).c_str(), describe(*trace).c_str(),
                formatRuns(reports).c_str());
    if (ratio) {
      std::printf("\nJCT basic/dualpath = %.2fx, dualpath/oracle = %.2fx\n", *ratio,
                  reports[1].makespan_seconds / reports[2].makespan_seconds);
      if (paper) {
        std::printf("paper: %.2fx (%s); simulated/paper = %.2f, %s the +-%.0f%% band\n",
                    paper->basic_over_dualpath, paper->what.c_str(), *ratio / paper->basic_over_dualpath,
                    within ? "within" : "OUTSIDE", 100 * kPaperTolerance);
      }
    }
    std::printf("invariants: bytes conserved %s, peak link utilisation %.4f; %.2f s of CPU\n",
                invariants ? "yes" : "NO", reports.front().peak_link_utilisation, wall);
  }
  if (!invariants) return fail(Status(StatusCode::internal, "an invariant failed"));
  if (o.check_paper && paper && ratio && !within) {
    return fail(Status(StatusCode::internal,
                       fmt::format("JCT ratio {:.2f} is outside {:.2f} +-{:.0f}%", *ratio,
                                   paper->basic_over_dualpath, 100 * kPaperTolerance))),
           1;
  }
  return 0;
}

int runCapacity(const Options& o, const SimConfig& config) {
  Result<CapacityResult> result = findCapacity(config, Slo{});
  if (!result) return fail(result.status());
  if (o.json) {
    json doc = {{"config", toJson(config)},
                {"slo", {{"ttft_seconds", Slo{}.ttft_seconds}, {"tpot_seconds", Slo{}.tpot_seconds}}},
                {"agents_per_second", result->agents_per_second},
                {"runs", result->runs}};
    if (result->agents_per_second > 0) doc["at_capacity"] = toJson(result->at_capacity);
    std::printf("%s\n", doc.dump().c_str());
    return 0;
  }
  // The header describes the run at capacity (or the search's first rate).
  SimConfig shown = config;
  shown.arrivals = Arrivals::online;
  shown.agents_per_second = result->agents_per_second > 0 ? result->agents_per_second
                                                           : CapacitySearch{}.start_agents_per_second;
  std::printf("dualpath-sim %s\n", describe(shown).c_str());
  std::printf("capacity (%s, SLO mean TTFT <= 4 s and mean TPOT <= 50 ms): %.4g agents/s after %u runs\n",
              std::string(modeName(config.mode)).c_str(), result->agents_per_second, result->runs);
  if (result->agents_per_second > 0) std::printf("%s", formatRuns({result->at_capacity}).c_str());
  return 0;
}

int runSweep(const Options& o, const SimConfig& config) {
  const bool pd = o.sweep == "pd";
  Result<std::vector<SweepPoint>> points =
      pd ? sweepPrefillDecodeRatio(config, o.nodes ? o.nodes : config.prefill_nodes + config.decode_nodes)
         : sweepSnicBandwidth(config, o.snic_list);
  if (!points) return fail(points.status());
  if (!o.plot.empty()) {
    const std::string title = fmt::format("{}: throughput against {}", config.name,
                                          pd ? "the P/D ratio" : "SNIC bandwidth");
    Status plotted = writePlot(*points, o.plot, title, pd ? "P/D (nodes)" : "SNIC Gbps per node", true);
    if (!plotted.isOk()) return fail(plotted);
  }
  if (o.json) {
    json doc = {{"config", toJson(config)}, {"sweep", o.sweep}, {"points", json::array()}};
    for (const SweepPoint& p : *points) doc["points"].push_back(toJson(p));
    if (!o.plot.empty()) doc["plot"] = o.plot;
    std::printf("%s\n", doc.dump().c_str());
    return 0;
  }
  std::printf("dualpath-sim %s\n\n%s", describe(config).c_str(),
              formatSweep(*points, pd ? "P/D" : "Gbps").c_str());
  if (!o.plot.empty()) std::printf("plot: %s\n", o.plot.c_str());
  return 0;
}

int runPlan(const Options& o, const SimConfig& config) {
  const std::uint32_t nodes = o.nodes ? o.nodes : config.prefill_nodes + config.decode_nodes;
  Result<std::vector<PlanCandidate>> plan = planCapacity(config, nodes, o.snic_list, Slo{});
  if (!plan) return fail(plan.status());
  if (o.json) {
    json doc = {{"config", toJson(config)}, {"nodes", nodes}, {"candidates", json::array()}};
    for (const PlanCandidate& c : *plan) doc["candidates"].push_back(toJson(c));
    std::printf("%s\n", doc.dump().c_str());
    return 0;
  }
  std::printf("dualpath-sim %s\nplan: %u nodes, DualPath, SLO mean TTFT <= 4 s and mean TPOT <= 50 ms\n\n%s",
              describe(config).c_str(), nodes, formatPlan(*plan, plan->size()).c_str());
  if (!plan->empty() && plan->front().capacity.agents_per_second > 0) {
    const PlanCandidate& best = plan->front();
    std::printf("\nbest: %uP%uD with %g Gbps SNICs: %.4g agents/s\n", best.prefill_nodes,
                best.decode_nodes, best.snic_gbps, best.capacity.agents_per_second);
  }
  return 0;
}

int runRange(const Options& o, const SimConfig& config) {
  const PdRange range = bottleneckFreeRange(config.hardware);
  if (o.json) {
    std::printf("%s\n", json{{"g", config.hardware.base.gpus_per_node},
                             {"s", range.s},
                             {"dram_bytes_per_s", config.hardware.dram_bytes_per_s},
                             {"cnic_bytes_per_s", config.hardware.base.cnic_bytes_per_s},
                             {"lowest", range.lowest},
                             {"highest", range.highest},
                             {"lowest_limit", range.lowest_limit},
                             {"highest_limit", range.highest_limit}}
                            .dump()
                            .c_str());
    return 0;
  }
  std::printf("bottleneck-free P/D (nodes) for g=%u, s=%g, M=%g GB/s, B=%g GB/s: %.4g (%s) to %.4g (%s)%s\n",
              config.hardware.base.gpus_per_node, range.s, config.hardware.dram_bytes_per_s / 1e9,
              config.hardware.base.cnic_bytes_per_s / 1e9, range.lowest, range.lowest_limit.c_str(),
              range.highest, range.highest_limit.c_str(), range.empty() ? ": EMPTY" : "");
  return 0;
}

int runTraceStats(const Options& o, const SimConfig& config) {
  Result<Trace> trace = makeTrace(config.effectiveTrace(), config.model.block_tokens, config.arrivals,
                                  config.agents_per_second);
  if (!trace) return fail(trace.status());
  if (o.json) {
    std::printf("%s\n", toJson(*trace).dump().c_str());
    return 0;
  }
  const json stats = toJson(*trace);
  std::printf("%s\nappend %.0f, generated %.0f tokens per turn; longest context %u\n", describe(*trace).c_str(),
              stats["mean_append_tokens"].get<double>(), stats["mean_generated_tokens"].get<double>(),
              trace->longest_context);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dualpath-sim: a discrete-event simulator of DualPath on a PD-disaggregated cluster, "
               "running scheduler/'s decisions unchanged (docs/simulator.md)"};
  Options o;
  std::string presets;
  for (std::string_view name : simPresetNames()) presets += (presets.empty() ? "" : ", ") + std::string(name);
  app.add_option("--preset", o.preset, "The setup: " + presets)->capture_default_str();
  app.add_option("--mode", o.mode, "Run one mode: basic, dualpath or oracle (default: all three)");
  app.add_option("--policy", o.policy, "A read-path policy of scheduler/, overriding the mode's");
  bool layerwise = false, whole_loads = false;
  app.add_flag("--layerwise", layerwise, "Overlap each layer's KV load with its compute (DualPath's default)");
  app.add_flag("--no-layerwise", whole_loads, "Load all of a batch's KV before its compute (basic's default)")
      ->excludes("--layerwise");
  app.add_option("--agents", o.agents, "Agents (sessions)");
  app.add_option("--max-len", o.max_len, "Maximum context in tokens: the paper's 32K (32768), 48K, 64K trace");
  app.add_option("--prefill-nodes", o.prefill_nodes, "Prefill nodes");
  app.add_option("--decode-nodes", o.decode_nodes, "Decode nodes");
  app.add_option("--snic-gbps", o.snic_gbps, "Each node's SNIC, Gbit/s");
  app.add_option("--storage-gbps", o.storage_gbps, "The storage cluster, Gbit/s (default: unlimited)");
  app.add_option("--collective-share", o.collective_share,
                 "Fraction of each CNIC the model's collectives hold; KV gets the rest");
  app.add_option("--tool-seconds", o.tool_seconds, "Mean tool time between turns (paper: 0)");
  app.add_option("--mfu", o.mfu, "Prefill's fraction of the GPU's peak FLOPs");
  app.add_option("--seed", o.seed, "The trace's seed")->capture_default_str();
  app.add_flag("--online", o.online, "Poisson arrivals at --aps agents per second");
  app.add_option("--aps", o.aps, "Online arrival rate, agents per second");
  app.add_option("--online-seconds", o.online_seconds, "Online: how long agents arrive (default 1800)");
  app.add_option("--measure-from", o.measure_from,
                 "Online: latencies count turns arriving from this second to --online-seconds (default 900)");
  app.add_flag("--capacity", o.capacity, "Find the largest agents/s within the SLO (online)");
  app.add_option("--sweep", o.sweep, "Throughput against the P/D ratio (pd) or SNIC bandwidth (snic)")
      ->check(CLI::IsMember({"pd", "snic"}));
  app.add_option("--nodes", o.nodes, "Nodes in total for --sweep pd and --plan (default: the preset's)");
  app.add_option("--snic-gbps-list", o.snic_list, "SNIC bandwidths for --sweep snic and --plan")
      ->delimiter(',');
  app.add_option("--plot", o.plot, "With --sweep: draw it with gnuplot to FILE.svg or FILE.png");
  app.add_flag("--plan", o.plan, "Capacity planning: the P/D split and SNIC that serve the most agents/s");
  app.add_flag("--bottleneck-range", o.range, "The paper's bottleneck-free P/D range for this hardware");
  app.add_flag("--trace-stats", o.trace_stats, "The trace's statistics (the paper's Table 2)");
  app.add_flag("--check-paper", o.check_paper, "Fail when the JCT ratio misses the paper's figure by > 15%");
  app.add_flag("--json", o.json, "One JSON document on stdout");
  CLI11_PARSE(app, argc, argv);
  if (layerwise || whole_loads) o.layerwise = layerwise;

  if (o.online && !(o.aps > 0)) {
    return fail(Status(StatusCode::invalid_argument, "--online needs --aps, a positive rate"));
  }
  if (!o.plot.empty() && o.sweep.empty()) {
    return fail(Status(StatusCode::invalid_argument, "--plot draws a --sweep: add --sweep pd or --sweep snic"));
  }
  Result<SimConfig> config = configure(o);
  if (!config) return fail(config.status());
  if (o.range) return runRange(o, *config);
  if (o.trace_stats) return runTraceStats(o, *config);
  if (o.capacity) return runCapacity(o, *config);
  if (!o.sweep.empty()) return runSweep(o, *config);
  if (o.plan) return runPlan(o, *config);
  return runPreset(o, *config);
}
