#include <dualpath/sim/output.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fmt/format.h>

extern char** environ;

namespace dualpath::sim {
namespace {

using nlohmann::json;

json toJson(const LatencySummary& s) {
  return {{"samples", s.samples}, {"mean", s.mean}, {"p50", s.p50},
          {"p90", s.p90},         {"p99", s.p99},   {"max", s.max}};
}

json toJson(const TrafficBytes& t) {
  return {{"storage_read_pe_path", t.storage_read_pe_path},
          {"storage_read_de_path", t.storage_read_de_path},
          {"relay", t.relay},
          {"pe_host_to_device", t.pe_host_to_device},
          {"handoff", t.handoff},
          {"de_host_to_device", t.de_host_to_device},
          {"write_back", t.write_back}};
}

std::string tokens(std::uint64_t count) {
  if (count >= 1024 && count % 1024 == 0) return fmt::format("{}K", count / 1024);
  return fmt::format("{}", count);
}

}  // namespace

std::optional<PaperReference> paperReference(std::string_view preset) {
  if (preset == "ds660b-2p4d") {
    return PaperReference{"DS 660B, 2P4D, 64K trace, 2,048 agents: JCT Basic/DualPath (Fig. 7)", 1.87};
  }
  if (preset == "ds27b-1p1d") {
    return PaperReference{"DS 27B, 1P1D: JCT Basic/DualPath, the largest (Fig. 7)", 1.78};
  }
  return std::nullopt;
}

json toJson(const SimConfig& c) {
  const NodeHardware& h = c.hardware;
  json config = {
      {"name", c.name},
      {"model", c.model.name},
      {"prefill_nodes", c.prefill_nodes},
      {"decode_nodes", c.decode_nodes},
      {"gpus_per_node", h.base.gpus_per_node},
      {"gpu_flops", h.base.gpu_flops},
      {"mfu", h.base.mfu},
      {"snic_bytes_per_s", h.base.snic_bytes_per_s},
      {"cnic_bytes_per_s", h.base.cnic_bytes_per_s},
      {"kv_hbm_bytes_per_gpu", h.base.kv_hbm_bytes_per_gpu},
      {"dram_bytes_per_s", h.dram_bytes_per_s},
      {"buffer_bytes", h.buffer_bytes},
      {"storage_bytes_per_s", h.storage_bytes_per_s},
      {"collective_share", h.collective_share},
      {"decode",
       {{"step_base_seconds", c.decode.step_base_seconds},
        {"step_per_sequence_seconds", c.decode.step_per_sequence_seconds},
        {"hbm_bytes_per_s", c.decode.hbm_bytes_per_s}}},
      {"trace",
       {{"agents", c.trace.agents},
        {"max_context_tokens", c.trace.max_context_tokens},
        {"initial_tokens_mean", c.trace.initial_tokens_mean},
        {"append_tokens_mean", c.trace.append_tokens_mean},
        {"generated_tokens_mean", c.trace.generated_tokens_mean},
        {"tool_seconds_mean", c.trace.tool_seconds_mean},
        {"seed", c.trace.seed}}},
      {"arrivals", c.arrivals == Arrivals::online ? "online" : "offline"},
      {"prefill_quota_seconds", c.prefill_quota_seconds},
      {"scheduler_interval_seconds", c.scheduler_interval_seconds},
  };
  if (c.arrivals == Arrivals::online) {
    config["agents_per_second"] = c.agents_per_second;
    config["online_seconds"] = c.online_seconds;
    config["online_measure_from_seconds"] = c.online_measure_from_seconds;
  }
  return config;
}

json toJson(const Trace& t) {
  const double turns = static_cast<double>(t.turns.size());
  return {{"agents", t.agents()},
          {"turns", t.turns.size()},
          {"turns_per_agent", turns / t.agents()},
          {"mean_context_tokens", static_cast<double>(t.prompt_tokens) / turns},
          {"mean_generated_tokens", static_cast<double>(t.generated_tokens) / turns},
          {"mean_append_tokens",
           t.turns.size() > t.agents() ? static_cast<double>(t.append_tokens) / (turns - t.agents()) : 0.0},
          {"longest_context_tokens", t.longest_context},
          {"hit_rate", t.hitRate()}};
}

json toJson(const SimReport& r) {
  json links = json::array();
  for (const LinkSummary& l : r.links) {
    links.push_back({{"kind", l.kind},
                     {"links", l.links},
                     {"capacity_bytes_per_s", l.capacity_bytes_per_s},
                     {"bytes", l.bytes},
                     {"mean_utilisation", l.mean_utilisation},
                     {"peak_utilisation", l.peak_utilisation}});
  }
  return {{"name", r.name},
          {"mode", r.mode},
          {"policy", r.policy},
          {"layerwise", r.layerwise},
          {"prefill_nodes", r.prefill_nodes},
          {"decode_nodes", r.decode_nodes},
          {"gpus", r.gpus},
          {"agents", r.agents},
          {"requests", r.requests},
          {"prompt_tokens", r.prompt_tokens},
          {"cached_tokens", r.cached_tokens},
          {"generated_tokens", r.generated_tokens},
          {"makespan_seconds", r.makespan_seconds},
          {"tokens_per_second", r.tokens_per_second},
          {"agents_per_second", r.agents_per_second},
          {"ttft", toJson(r.ttft)},
          {"ttst", toJson(r.ttst)},
          {"tpot", toJson(r.tpot)},
          {"snic_read_utilisation_prefill", r.snic_read_utilisation_prefill},
          {"snic_read_utilisation_decode", r.snic_read_utilisation_decode},
          {"snic_max_over_mean", r.snic_max_over_mean},
          {"de_path_block_share", r.de_path_block_share},
          {"traffic", toJson(r.traffic)},
          {"expected", toJson(r.expected)},
          {"bytes_conserved", r.bytesConserved()},
          {"links", links},
          {"peak_link_utilisation", r.peak_link_utilisation},
          {"scheduler_rounds", r.scheduler_rounds},
          {"events", r.events}};
}

json toJson(const SweepPoint& p) {
  return {{"label", p.label},
          {"x", p.x},
          {"basic", toJson(p.basic)},
          {"dualpath", toJson(p.dualpath)},
          {"oracle", toJson(p.oracle)}};
}

json toJson(const PlanCandidate& c) {
  json candidate = {{"prefill_nodes", c.prefill_nodes},
                    {"decode_nodes", c.decode_nodes},
                    {"snic_gbps", c.snic_gbps},
                    {"agents_per_second", c.capacity.agents_per_second},
                    {"runs", c.capacity.runs}};
  if (c.capacity.agents_per_second > 0) candidate["at_capacity"] = toJson(c.capacity.at_capacity);
  return candidate;
}

std::string describe(const SimConfig& c) {
  const std::uint32_t g = c.hardware.base.gpus_per_node;
  std::string arrivals =
      c.arrivals == Arrivals::online ? fmt::format("online at {:g} agents/s", c.agents_per_second)
                                     : "offline";
  return fmt::format("{}: {} on {}P{}D ({} GPUs; SNIC {:g} Gbps/node, CNIC {:g} Gbps/GPU), {} agents {}, "
                     "{} max context",
                     c.name, c.model.name, c.prefill_nodes, c.decode_nodes,
                     (c.prefill_nodes + c.decode_nodes) * g, c.hardware.base.snic_bytes_per_s * 8 / 1e9,
                     c.hardware.base.cnic_bytes_per_s * 8 / 1e9, c.effectiveTrace().agents, arrivals,
                     tokens(c.trace.max_context_tokens));
}

std::string describe(const Trace& t) {
  const double turns = static_cast<double>(t.turns.size());
  return fmt::format("trace: {} turns ({:.1f} per agent), mean context {:.0f} tokens, hit rate {:.2f}%",
                     t.turns.size(), turns / t.agents(), static_cast<double>(t.prompt_tokens) / turns,
                     100 * t.hitRate());
}

std::string formatRuns(const std::vector<SimReport>& reports) {
  std::string out = fmt::format("{:<9} {:<14} {:<9} {:>9} {:>11} {:>15} {:>7} {:>7} {:>13} {:>7} {:>9}\n",
                                "mode", "policy", "layerwise", "JCT s", "tokens/s", "TTFT mean/p99 s",
                                "TTST s", "TPOT ms", "SNIC rd PE/DE", "DE path", "SNIC m/a");
  for (const SimReport& r : reports) {
    out += fmt::format(
        "{:<9} {:<14} {:<9} {:>9.1f} {:>11.4g} {:>7.2f}/{:<7.2f} {:>7.3f} {:>7.1f} {:>5.0f}%/{:>5.0f}% "
        "{:>6.1f}% {:>9.2f}\n",
        r.mode, r.policy, r.layerwise ? "yes" : "no", r.makespan_seconds, r.tokens_per_second,
        r.ttft.mean, r.ttft.p99, r.ttst.mean, 1e3 * r.tpot.mean, 100 * r.snic_read_utilisation_prefill,
        100 * r.snic_read_utilisation_decode, 100 * r.de_path_block_share, r.snic_max_over_mean);
  }
  return out;
}

std::string formatSweep(const std::vector<SweepPoint>& points, std::string_view x_name) {
  std::string out = fmt::format("{:<10} {:>8} {:>12} {:>12} {:>12} {:>15} {:>15}\n", "config", x_name,
                                "basic tok/s", "dual tok/s", "oracle tok/s", "basic/dual JCT",
                                "dual/oracle JCT");
  for (const SweepPoint& p : points) {
    out += fmt::format("{:<10} {:>8.3g} {:>12.4g} {:>12.4g} {:>12.4g} {:>14.2f}x {:>14.2f}x\n", p.label, p.x,
                       p.basic.tokens_per_second, p.dualpath.tokens_per_second,
                       p.oracle.tokens_per_second,
                       p.basic.makespan_seconds / p.dualpath.makespan_seconds,
                       p.dualpath.makespan_seconds / p.oracle.makespan_seconds);
  }
  return out;
}

std::string formatPlan(const std::vector<PlanCandidate>& candidates, std::size_t rows) {
  std::string out = fmt::format("{:<8} {:>10} {:>12} {:>11} {:>10} {:>5}\n", "cluster", "SNIC Gbps",
                                "agents/s", "TTFT mean s", "TPOT ms", "runs");
  for (std::size_t i = 0; i < candidates.size() && i < rows; ++i) {
    const PlanCandidate& c = candidates[i];
    const bool served = c.capacity.agents_per_second > 0;
    out += fmt::format("{:<8} {:>10g} {:>12.4g} {:>11} {:>10} {:>5}\n",
                       fmt::format("{}P{}D", c.prefill_nodes, c.decode_nodes), c.snic_gbps,
                       c.capacity.agents_per_second,
                       served ? fmt::format("{:.2f}", c.capacity.at_capacity.ttft.mean) : "-",
                       served ? fmt::format("{:.1f}", 1e3 * c.capacity.at_capacity.tpot.mean) : "-",
                       c.capacity.runs);
  }
  return out;
}

Status writePlot(const std::vector<SweepPoint>& points, const std::string& path, std::string_view title,
                 std::string_view x_label, bool log_x) {
  std::string terminal;
  if (path.ends_with(".svg")) {
    terminal = "svg size 800,500 dynamic";
  } else if (path.ends_with(".png")) {
    terminal = "png size 800,500";
  } else {
    return Status(StatusCode::invalid_argument,
                  fmt::format("plot '{}': the file must end in .svg or .png", path));
  }
  const std::string data_path = path + ".dat";
  const std::string script_path = path + ".gp";
  {
    std::ofstream data(data_path);
    data << "# x label basic_tokens_per_s dualpath_tokens_per_s oracle_tokens_per_s\n";
    for (const SweepPoint& p : points) {
      data << fmt::format("{:.9g} \"{}\" {:.9g} {:.9g} {:.9g}\n", p.x, p.label, p.basic.tokens_per_second,
                          p.dualpath.tokens_per_second, p.oracle.tokens_per_second);
    }
    std::ofstream script(script_path);
    script << fmt::format("set terminal {}\nset output '{}'\nset title \"{}\"\n", terminal, path, title)
           << fmt::format("set xlabel \"{}\"\nset ylabel \"prompt tokens per second\"\n", x_label)
           << (log_x ? "set logscale x 2\n" : "") << "set key outside right\nset grid\n"
           << fmt::format("plot '{0}' using 1:3:xtic(2) with linespoints title 'basic', "
                          "'{0}' using 1:4 with linespoints title 'DualPath', "
                          "'{0}' using 1:5 with linespoints title 'Oracle'\n",
                          data_path);
    if (!data || !script) {
      return Status(StatusCode::io, fmt::format("plot: cannot write '{}' or '{}'", data_path, script_path));
    }
  }
  pid_t pid = 0;
  std::string program = "gnuplot";
  std::vector<char*> argv = {program.data(), const_cast<char*>(script_path.c_str()), nullptr};
  const int spawned = ::posix_spawnp(&pid, "gnuplot", nullptr, nullptr, argv.data(), environ);
  if (spawned != 0) {
    return Status(StatusCode::unsupported,
                  fmt::format("plot: cannot run gnuplot ({}): install the gnuplot-nox package; the "
                              "data and the script are in '{}' and '{}'",
                              std::strerror(spawned), data_path, script_path));
  }
  // gnuplot draws a few points in milliseconds; the bound is for a wedged one.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int status = 0;
  while (true) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) {
      return Status(StatusCode::io, fmt::format("plot: waitpid: {}", std::strerror(errno)));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return Status(StatusCode::timeout, fmt::format("plot: gnuplot {} ran for 30 s", script_path));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code == 127) {
      return Status(StatusCode::unsupported,
                    fmt::format("plot: gnuplot is not installed: install the gnuplot-nox package; the "
                                "data and the script are in '{}' and '{}'",
                                data_path, script_path));
    }
    return Status(StatusCode::io, fmt::format("plot: gnuplot {} exited with {}", script_path, code));
  }
  return Status::ok();
}

}  // namespace dualpath::sim
