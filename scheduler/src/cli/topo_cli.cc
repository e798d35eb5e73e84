#include "topo_cli.h"

#include <ostream>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

#include <dualpath/scheduler/topology.h>

namespace dualpath::scheduler::topo::cli {
namespace {

struct Arguments {
  std::string xml;
  std::string config;
  bool json = false;
};

// One "dualpath-topo: " line per line of the message: config errors come
// one per line, each naming its file:line.
int fail(const Status& status, std::ostream& err) {
  std::istringstream lines(status.message());
  for (std::string line; std::getline(lines, line);) err << "dualpath-topo: " << line << '\n';
  return kExitInvalid;
}

int runTopology(const Arguments& args, std::ostream& out, std::ostream& err) {
  TopologyConfig config;
  if (!args.config.empty()) {
    Result<TopologyConfig> loaded = loadTopologyConfig(args.config);
    if (!loaded) return fail(loaded.status(), err);
    config = std::move(*loaded);
  }
  Result<TopologyModel> model = args.xml.empty() ? loadLiveTopology() : loadTopologyXml(args.xml);
  if (!model) return fail(model.status(), err);
  Result<TopologyReport> report = planTopology(*model, config);
  if (!report) return fail(report.status(), err);
  out << (args.json ? renderTopologyJson(*report) : renderTopologyText(*report));
  return kExitOk;
}

}  // namespace

int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{
      "dualpath-topo: each GPU's compute NIC, the storage NICs and NUMA placement, from the "
      "PCIe topology (hwloc).",
      "dualpath-topo"};
  Arguments args;
  app.add_option("--xml", args.xml,
                 "Read this hwloc XML export (lstopo --of xml) instead of the live machine");
  app.add_option("--config", args.config,
                 "Topology override file (TOML): [nics] allow/deny/min_speed_gbps, "
                 "[storage] nics, [[pin]]");
  app.add_flag("--json", args.json, "Machine-readable output");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports through exceptions; they end here.
    int code = app.exit(e, out, err);
    return code == 0 ? kExitOk : kExitInvalid;
  }
  return runTopology(args, out, err);
}

}  // namespace dualpath::scheduler::topo::cli
