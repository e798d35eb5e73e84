// dualpath-bench: the bench users' entry point (docs/bench.md).
//
//   dualpath-bench interference   collectives over the NCCL net plugin, alone and
//                                 beside KV traffic with QoS off and on
//   dualpath-bench load           dual-path vs PE-path-only KV loading on an agentic
//                                 trace (the same as dualpath-load-bench)
//   dualpath-bench demo           the README's main job: the miniature PD cluster and
//                                 the interference case, in one report
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <dualpath/common/units.h>

#include "interference.h"
#include "demo.h"
#include "load_bench.h"

namespace {

using dualpath::Result;
using dualpath::Status;
using dualpath::bench::InterferenceOptions;
using dualpath::bench::InterferenceRow;
using dualpath::bench::NetnsReport;

// nccl-tests' verdicts, per size: QoS keeps the collective's bus bandwidth,
// and KV keeps most of what the collective leaves free.
constexpr double kKeptBusbw = 0.9;
constexpr double kKvOfFree = 0.8;

std::string sizeText(std::size_t bytes) {
  if (bytes % (1024 * 1024) == 0) return fmt::format("{}M", bytes / (1024 * 1024));
  if (bytes % 1024 == 0) return fmt::format("{}K", bytes / 1024);
  return fmt::format("{}", bytes);
}

double ratio(double a, double b) {
  return b > 0 ? a / b : 0;
}

// What KV kept of the bandwidth the collective left free (per rank, in the
// QoS-on case), against what it asked for.
double kvOfFree(const InterferenceRow& row, const InterferenceOptions& o) {
  const double link = o.link_gbps / 8;  // GB/s
  const double free = std::max(0.0, link - row.qos_on.collective_gbs);
  const double wanted = std::min(free, o.kv_load * link);
  return wanted > 0 ? row.qos_on.kv_gbs / wanted : 1;
}

// Which limits were real: the kernel's (netns) or the arbiter's emulation.
std::string linkText(const InterferenceOptions& o) {
  if (!o.netns) {
    return fmt::format("an emulated {:.3g} Gbit/s NIC per rank (the arbiter's link_rate shaping; "
                       "loopback alone is not a bottleneck)",
                       o.link_gbps);
  }
  return fmt::format("veth in network namespaces, shaped by tc htb to {:.3g} Gbit/s per rank "
                     "(real: UCX over TCP, classes by port); {}",
                     o.link_gbps,
                     o.netns_arbiter_shaping
                         ? "the arbiter's link_rate also shapes to that rate"
                         : "the arbiter's link_rate is off (it still orders the classes)");
}

const char* collectivesText(const InterferenceOptions& o) {
  return o.nccl ? "NCCL on GPUs (ncclAllGather, ncclReduceScatter, ncclAlltoAll) over the plugin"
                : "host memory, moved over the plugin's net API as NCCL's proxy moves them";
}

std::string kernelText(const std::vector<dualpath::bench::KernelClassBytes>& classes) {
  std::string text;
  for (const auto& k : classes) {
    text += fmt::format("{}{} ({}) {} B", text.empty() ? "" : ", ", k.name, k.classid, k.bytes);
  }
  return text;
}

void printTable(const std::vector<InterferenceRow>& rows, const InterferenceOptions& o,
                const NetnsReport& netns) {
  std::printf(
      "# dualpath-bench interference: %d ranks (processes) through the NCCL net plugin '%s'\n"
      "# collectives: %s\n"
      "# link: %s\n"
      "# kv: %zu-byte one-sided puts to the next rank on class 'kv' of the plugin's engine, "
      "offered at %.0f%% of the link\n"
      "# time in us per iteration (slowest rank), bandwidths in GB/s, kv in GB/s per rank\n#\n",
      o.ranks, o.plugin.c_str(), collectivesText(o), linkText(o).c_str(), o.kv_message_bytes,
      o.kv_load * 100);
  std::printf("# %-14s %8s %10s | %9s %7s %6s | %9s %7s %7s %6s | %9s %7s %7s %6s\n", "", "", "",
              "alone", "", "", "kv, qos", "off", "", "", "kv, qos", "on", "", "");
  std::printf("# %-14s %8s %10s | %9s %7s %6s | %9s %7s %7s %6s | %9s %7s %7s %6s\n", "op", "size",
              "count", "time", "busbw", "#wrong", "time", "busbw", "kv", "kept", "time", "busbw",
              "kv", "kept");
  for (const InterferenceRow& r : rows) {
    std::printf("  %-14s %8s %10zu | %9.1f %7.3f %6llu | %9.1f %7.3f %7.3f %6.2f | %9.1f %7.3f "
                "%7.3f %6.2f\n",
                r.op.c_str(), sizeText(r.bytes).c_str(), r.count, r.alone.time_us,
                r.alone.busbw_gbs, static_cast<unsigned long long>(r.alone.wrong),
                r.qos_off.time_us, r.qos_off.busbw_gbs, r.qos_off.kv_gbs,
                ratio(r.qos_off.busbw_gbs, r.alone.busbw_gbs), r.qos_on.time_us,
                r.qos_on.busbw_gbs, r.qos_on.kv_gbs, ratio(r.qos_on.busbw_gbs, r.alone.busbw_gbs));
  }
  std::size_t kept = 0;
  std::size_t kv_ok = 0;
  for (const InterferenceRow& r : rows) {
    kept += ratio(r.qos_on.busbw_gbs, r.alone.busbw_gbs) >= kKeptBusbw;
    kv_ok += kvOfFree(r, o) >= kKvOfFree;
  }
  std::printf("#\n# kept: busbw against the alone case. Targets: with QoS on, busbw >= %.0f%% of "
              "alone (%zu of %zu sizes) and KV >= %.0f%% of the bandwidth the collective leaves "
              "free (%zu of %zu sizes).\n",
              kKeptBusbw * 100, kept, rows.size(), kKvOfFree * 100, kv_ok, rows.size());
  if (o.netns) {
    std::printf("# kernel (tc -s class show, every node's veth, bytes sent per case): alone: %s; "
                "kv, qos off: %s; kv, qos on: %s\n",
                kernelText(netns.alone).c_str(), kernelText(netns.qos_off).c_str(),
                kernelText(netns.qos_on).c_str());
  }
}

nlohmann::json toJson(const std::vector<InterferenceRow>& rows, const InterferenceOptions& o,
                      const NetnsReport& netns) {
  auto figures = [](const dualpath::bench::CaseFigures& f) {
    return nlohmann::json{{"time_us", f.time_us},       {"algbw_gbs", f.algbw_gbs},
                          {"busbw_gbs", f.busbw_gbs},   {"wrong", f.wrong},
                          {"kv_gbs", f.kv_gbs},         {"collective_gbs", f.collective_gbs}};
  };
  nlohmann::json out{{"ranks", o.ranks},
                     {"plugin", o.plugin},
                     {"collectives", collectivesText(o)},
                     {"link", {{"gbit_per_s", o.link_gbps}, {"emulated", !o.netns},
                               {"text", linkText(o)}}},
                     {"kv", {{"offered_fraction", o.kv_load}, {"message_bytes", o.kv_message_bytes}}},
                     {"rows", nlohmann::json::array()}};
  for (const InterferenceRow& r : rows) {
    out["rows"].push_back({{"op", r.op},
                           {"bytes", r.bytes},
                           {"count", r.count},
                           {"alone", figures(r.alone)},
                           {"qos_off", figures(r.qos_off)},
                           {"qos_on", figures(r.qos_on)},
                           {"qos_on_busbw_kept", ratio(r.qos_on.busbw_gbs, r.alone.busbw_gbs)},
                           {"qos_off_busbw_kept", ratio(r.qos_off.busbw_gbs, r.alone.busbw_gbs)},
                           {"qos_on_kv_of_free", kvOfFree(r, o)}});
  }
  if (o.netns) {
    auto classes = [](const std::vector<dualpath::bench::KernelClassBytes>& list) {
      nlohmann::json by_name = nlohmann::json::object();
      for (const auto& k : list) {
        by_name[k.name] = {{"classid", k.classid}, {"bytes", k.bytes}, {"packets", k.packets}};
      }
      return by_name;
    };
    out["netns"] = {{"cluster_id", netns.cluster_id},
                    {"subnet", netns.subnet},
                    {"tc_rate", netns.rate},
                    {"arbiter_shaping", o.netns_arbiter_shaping},
                    {"kernel_classes",
                     {{"alone", classes(netns.alone)},
                      {"qos_off", classes(netns.qos_off)},
                      {"qos_on", classes(netns.qos_on)}}}};
  }
  return out;
}

std::size_t parseSize(const std::string& text, const char* option) {
  // nccl-tests writes sizes as 8, 64K, 1M, 1G.
  std::string normalized = text;
  if (!normalized.empty() && std::string("KMG").find(normalized.back()) != std::string::npos) {
    normalized += "iB";
  }
  Result<dualpath::Bytes> bytes = dualpath::parseByteSize(normalized);
  if (!bytes) {
    throw CLI::ValidationError(option, bytes.status().message());
  }
  return static_cast<std::size_t>(*bytes);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DualPath benchmarks for bench users (docs/bench.md)"};
  app.require_subcommand(1);

  InterferenceOptions o;
  std::string min_text = "256K";
  std::string max_text = "4M";
  std::string op = "all";
  bool json = false;
  CLI::App* interference = app.add_subcommand(
      "interference",
      "collectives through the NCCL net plugin, alone and beside KV traffic with QoS off and on");
  interference->add_option("--ranks,-r", o.ranks, "ranks, one process each (2 to 8)");
  interference->add_option("--op", op, "all_gather, reduce_scatter, alltoall or all")
      ->check(CLI::IsMember({"all", "all_gather", "reduce_scatter", "alltoall"}));
  interference->add_option("-b,--minbytes", min_text, "smallest size, as nccl-tests (64K, 1M)");
  interference->add_option("-e,--maxbytes", max_text, "largest size");
  interference->add_option("-f,--stepfactor", o.factor, "size multiplication factor");
  interference->add_option("-n,--iters", o.iters, "timed iterations per size");
  interference->add_option("-w,--warmup_iters", o.warmup, "untimed iterations per size");
  interference->add_option("--min-seconds", o.min_seconds,
                           "timed phase per size at least this long (more iterations)");
  interference->add_option("--link-gbps", o.link_gbps,
                           "the emulated NIC per rank, Gbit/s (the arbiter's link_rate)");
  interference->add_option("--kv-load", o.kv_load, "offered KV per rank, a fraction of the link");
  interference->add_option("--low-max-inflight", o.low_max_inflight,
                           "the arbiter's low_max_inflight in every case's policy (e.g. 256KiB; "
                           "default: the policy's default)");
  interference->add_option("--kv-message-bytes", o.kv_message_bytes,
                           "KV put size (default: a DeepSeek-V3.2 Layer Block)");
  interference->add_option("--plugin", o.plugin, "NCCL_NET_PLUGIN's value, or a library path");
  interference->add_flag("--json", json, "one JSON document instead of the table");
  interference->add_flag("--netns", o.netns,
                         "each rank in its own network namespace on a veth shaped by tc htb to "
                         "--link-gbps (root; scripts/netns-cluster.sh)");
  interference->add_flag("--netns-arbiter", o.netns_arbiter_shaping,
                         "with --netns, also shape with the arbiter's link_rate");
  interference->add_option("--rendezvous", o.rendezvous,
                           "HOST:PORT of rank 0: one rank per host, each host running this "
                           "command with its --rank (rank 0 listens there and prints the report)");
  interference->add_option("--rank", o.rank, "this host's rank, with --rendezvous");
  interference
      ->add_option_function<int>(
          "--timeout", [&o](int seconds) { o.timeout = std::chrono::seconds(seconds); },
          "seconds each case may take before its ranks are stopped (default 300)")
      ->check(CLI::Range(1, 86400));
  interference->add_flag("--nccl", o.nccl,
                         "NCCL runs the collectives on this host's GPUs, through the plugin "
                         "(builds with CUDA and NCCL; GPU machines only)");

  dualpath::bench::LoadBenchArgs load_args;
  CLI::App* load = app.add_subcommand(
      "load", "dual-path vs PE-path-only KV loading on an agentic trace (docs/performance.md)");
  dualpath::bench::addLoadBenchOptions(*load, load_args);

  dualpath::bench::DemoOptions demo_options;
  CLI::App* demo = app.add_subcommand(
      "demo", "the whole mission on one machine: the miniature PD cluster (basic, DualPath, "
              "Oracle) and collectives beside KV traffic with QoS off and on");
  dualpath::bench::addDemoOptions(*demo, demo_options);

  CLI11_PARSE(app, argc, argv);
  // UCX logs to stdout unless told otherwise, which would break the report
  // (and --json); the user's own UCX_LOG_FILE still wins.
  ::setenv("UCX_LOG_FILE", "stderr", 0);
  if (load->parsed()) return dualpath::bench::runLoadBench(load_args);
  if (demo->parsed()) return dualpath::bench::runDemo(demo_options);

  if (interference->parsed()) {
    try {
      o.min_bytes = parseSize(min_text, "-b");
      o.max_bytes = parseSize(max_text, "-e");
    } catch (const CLI::Error& e) {
      return app.exit(e);
    }
    if (op != "all") o.ops = {op};
    // One host: the ranks talk over loopback. Several: over the NIC the user
    // names in DUALPATH_NET_DEVICES (docs/bench.md).
    if (o.rendezvous.empty() && std::getenv("DUALPATH_NET_DEVICES") == nullptr) {
      ::setenv("DUALPATH_NET_DEVICES", "lo", 1);
    }
    char scratch[] = "/tmp/dualpath-bench-XXXXXX";
    if (::mkdtemp(scratch) == nullptr) {
      std::fprintf(stderr, "dualpath-bench: mkdtemp: %s\n", std::strerror(errno));
      return 1;
    }
    o.work_dir = scratch;
    NetnsReport netns;
    Result<std::vector<InterferenceRow>> rows = dualpath::bench::runInterference(o, &netns);
    std::filesystem::remove_all(scratch);
    if (!rows) {
      std::fprintf(stderr, "dualpath-bench interference: %s\n", rows.status().toString().c_str());
      return rows.status().code() == dualpath::StatusCode::invalid_argument ? 2 : 1;
    }
    if (!o.rendezvous.empty() && o.rank != 0) {
      if (json) {
        std::printf("%s\n", nlohmann::json{{"rank", o.rank}, {"ranks", o.ranks},
                                           {"report", "printed by rank 0"}}
                                 .dump()
                                 .c_str());
      } else {
        std::printf("dualpath-bench interference: rank %d of %d ran every case; rank 0 prints "
                    "the report\n",
                    o.rank, o.ranks);
      }
      return 0;
    }
    if (json) {
      std::printf("%s\n", toJson(*rows, o, netns).dump().c_str());
    } else {
      printTable(*rows, o, netns);
    }
    for (const InterferenceRow& r : *rows) {
      if (r.alone.wrong + r.qos_off.wrong + r.qos_on.wrong != 0) {
        std::fprintf(stderr, "dualpath-bench interference: %s at %zu B delivered wrong bytes\n",
                     r.op.c_str(), r.bytes);
        return 1;
      }
    }
  }
  return 0;
}
