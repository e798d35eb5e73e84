// What dualpath-sim prints: tables for people, JSON for scripts, and plots
// drawn by gnuplot (SVG or PNG, chosen by the file's extension).
//
// Threading: pure functions, except writePlot, which writes files and runs
// gnuplot as a child process.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <dualpath/common/status.h>
#include <dualpath/sim/config.h>
#include <dualpath/sim/planner.h>
#include <dualpath/sim/simulator.h>
#include <dualpath/sim/trace.h>

namespace dualpath::sim {

// The paper's figure a preset reproduces, where the paper gives one.
struct PaperReference {
  std::string what;            // where the figure comes from
  double basic_over_dualpath;  // offline JCT ratio
};
std::optional<PaperReference> paperReference(std::string_view preset);
// The band within which the simulator counts as reproducing the figure.
constexpr double kPaperTolerance = 0.15;

nlohmann::json toJson(const SimConfig& config);
nlohmann::json toJson(const Trace& trace);
nlohmann::json toJson(const SimReport& report);
nlohmann::json toJson(const SweepPoint& point);
nlohmann::json toJson(const PlanCandidate& candidate);

std::string describe(const SimConfig& config);  // one line: model, cluster, trace
std::string describe(const Trace& trace);       // one line: turns, context, hit rate
// A table of runs, one row each, with a header.
std::string formatRuns(const std::vector<SimReport>& reports);
std::string formatSweep(const std::vector<SweepPoint>& points, std::string_view x_name);
std::string formatPlan(const std::vector<PlanCandidate>& candidates, std::size_t rows);

// Throughput (prompt tokens per second) of each mode against the sweep's x,
// to `path` (.svg or .png). Writes the data and the gnuplot script beside it
// (path + ".dat", path + ".gp"), then runs gnuplot. unsupported, naming the
// package, when gnuplot is not installed; the data and script stay.
Status writePlot(const std::vector<SweepPoint>& points, const std::string& path,
                 std::string_view title, std::string_view x_label, bool log_x);

}  // namespace dualpath::sim
