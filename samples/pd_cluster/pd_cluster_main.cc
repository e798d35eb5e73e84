// dualpath-pd-cluster: the miniature PD cluster (pd_cluster.h), each mode on
// the same trace, one after the other, and the ratios between them.
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "pd_cluster.h"

namespace {

using dualpath::samples::LoadMode;
using dualpath::samples::PdClusterOptions;
using dualpath::samples::PdClusterReport;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "The miniature PD cluster: a PE node and a DE node as processes, replaying an agentic "
      "trace over shared storage with emulated storage NICs and compute (samples/pd_cluster)"};
  PdClusterOptions o;
  std::vector<std::string> modes = {"basic", "dualpath", "oracle"};
  bool json = false;
  int timeout_s = static_cast<int>(o.timeout.count());
  app.add_option("--model", o.model, "model preset (deepseek-v3.2, qwen2.5-32b, tiny)");
  app.add_option("--engines", o.engines, "prefill engines (PE node) and decode engines (DE node)");
  app.add_option("--sessions", o.trace.sessions, "agent sessions");
  app.add_option("--turns", o.trace.turns, "turns per session");
  app.add_option("--initial-blocks-min", o.trace.initial_blocks_min, "history before turn 0, blocks");
  app.add_option("--initial-blocks-max", o.trace.initial_blocks_max, "history before turn 0, blocks");
  app.add_option("--new-tokens-min", o.trace.new_tokens_min, "new tokens per turn (and reply)");
  app.add_option("--new-tokens-max", o.trace.new_tokens_max, "new tokens per turn (and reply)");
  app.add_option("--seed", o.trace.seed, "trace seed");
  app.add_option("--snic-mbps", o.snic_mbps,
                 "each node's storage NIC, MB/s (emulated; with --netns a veth shaped by tc)");
  app.add_option("--gpu-tflops", o.gpu_tflops, "one emulated GPU's achieved prefill TFLOP/s");
  app.add_option("--tpot-ms", o.tpot_ms, "one emulated decode step, ms");
  app.add_option("--relay-put-kib", o.relay_put_kib, "the relay's largest put, KiB");
  app.add_option("--storage-dir", o.storage_dir, "a directory this run owns (emptied first)")
      ->required();
  app.add_option("--timeout-s", timeout_s, "bound on each mode, seconds");
  app.add_option("--mode", modes, "modes to run, in order")
      ->check(CLI::IsMember({"basic", "dualpath", "oracle"}));
  app.add_flag("--json", json, "one JSON document instead of text");
  bool netns = false;
  double compute_gbps = 4;
  app.add_flag("--netns", netns,
               "each node in its own network namespace on a veth shaped by tc (root; "
               "scripts/netns-cluster.sh)");
  app.add_option("--compute-gbps", compute_gbps, "with --netns, each node's compute link, Gbit/s");
  CLI11_PARSE(app, argc, argv);
  // UCX logs to stdout unless told otherwise, which would break the report
  // (and --json); the user's own UCX_LOG_FILE still wins.
  ::setenv("UCX_LOG_FILE", "stderr", 0);
  o.timeout = std::chrono::seconds(timeout_s);
  // Declared before the network, so that it outlives the cluster that uses it.
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() {
      std::error_code ignored;
      if (!path.empty()) std::filesystem::remove_all(path, ignored);
    }
  } policy_dir;
  dualpath::samples::PdClusterNetwork network;
  if (netns) {
    char scratch[] = "/tmp/dualpath-pd-cluster-XXXXXX";
    if (::mkdtemp(scratch) == nullptr) {
      std::fprintf(stderr, "dualpath-pd-cluster: --netns: mkdtemp: %s\n", std::strerror(errno));
      return 1;
    }
    policy_dir.path = scratch;
    auto made =
        dualpath::samples::makePdClusterNetwork(policy_dir.path, compute_gbps, o.snic_mbps);
    if (!made) {
      std::fprintf(stderr, "dualpath-pd-cluster: --netns: %s\n", made.status().toString().c_str());
      return made.status().code() == dualpath::StatusCode::invalid_argument ? 2 : 1;
    }
    network = std::move(made).value();
    o.network = network.cluster.get();
    o.policy_path = network.policy_path;
  }

  nlohmann::json doc{{"sample", "dualpath-pd-cluster"},
                     {"model", o.model},
                     {"engines_per_node", o.engines},
                     {"compute", "emulated"},
                     {"modes", nlohmann::json::array()}};
  std::vector<PdClusterReport> reports;
  for (const std::string& name : modes) {
    const LoadMode mode = name == "basic"      ? LoadMode::basic
                          : name == "dualpath" ? LoadMode::dualpath
                                               : LoadMode::oracle;
    auto report = dualpath::samples::runPdCluster(o, mode);
    if (!report) {
      std::fprintf(stderr, "dualpath-pd-cluster: %s\n", report.status().toString().c_str());
      return report.status().code() == dualpath::StatusCode::invalid_argument ? 2 : 1;
    }
    doc["modes"].push_back(report->toJson());
    if (!json) {
      const PdClusterReport& r = *report;
      fmt::print(
          "pd-cluster [{}; {}; compute emulated]: mode {:<8} {:7.3f} s  {:8.0f} tokens/s  storage NIC "
          "utilisation PE {:5.1f}% DE {:5.1f}%  blocks pe/de/fallback {}/{}/{}  written back "
          "{}+{}  loads verified {}\n",
          r.snic_description, r.network_description, dualpath::samples::loadModeName(r.mode),
          r.seconds,
          static_cast<double>(r.prefill_tokens) / r.seconds,
          100 * static_cast<double>(r.pe_snic_bytes) / (r.snic_bytes_per_s * r.seconds),
          100 * static_cast<double>(r.de_snic_bytes) / (r.snic_bytes_per_s * r.seconds),
          r.blocks_pe_path, r.blocks_de_path, r.blocks_fallback, r.blocks_written_after_prefill,
          r.blocks_written_after_decode, r.loads_verified);
    }
    reports.push_back(*report);
  }
  if (json) fmt::print("{}\n", doc.dump());
  return 0;
}
