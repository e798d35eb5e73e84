// dualpath-bench demo: the README's main job. The whole mission on one
// machine, in one compact report: the miniature PD cluster
// (samples/pd_cluster) with basic, DualPath and Oracle loading on the same
// agentic trace, then one collective beside KV traffic with QoS off and on
// (the interference benchmark's three cases at one size).
//
// Threading: runDemo forks the cluster's nodes and the benchmark's ranks;
// call it from the main thread of a process that has not loaded UCX.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

namespace dualpath::bench {

struct DemoOptions {
  std::string model = "deepseek-v3.2";
  std::uint32_t engines = 4;  // per node
  std::uint32_t sessions = 16;
  std::uint32_t turns = 4;
  double snic_mbps = 200;   // each node's emulated storage NIC
  double link_gbps = 1.0;   // the interference case's emulated NIC
  std::string plugin = "dualpath";
  // Root only: both parts over network namespaces, veth links shaped by tc
  // (the cluster's compute link at compute_gbps, the interference case's at
  // link_gbps), classes told apart by the kernel as well as by the arbiter.
  bool netns = false;
  double compute_gbps = 4.0;
  bool json = false;
  bool progress = true;     // a progress bar on stderr while it runs (when a terminal)
};

void addDemoOptions(CLI::App& app, DemoOptions& options);

// Runs everything and prints the report; the process's exit code.
int runDemo(const DemoOptions& options);

}  // namespace dualpath::bench
