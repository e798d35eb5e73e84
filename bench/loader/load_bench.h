// dualpath-load-bench, as a library: dual-path KV loading against
// PE-path-only loading on one agentic trace, in one process and one
// invocation (load_bench.cc says how). `dualpath-load-bench` and
// `dualpath-bench load` are both this.
//
// Threading: runLoadBench starts the bench's own threads and joins them
// before it returns; call it from one thread. It prints to stdout and ends
// the process on a setup failure or a byte mismatch (it is a program's body).
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

namespace dualpath::bench {

struct LoadBenchArgs {
  std::string model = "deepseek-v3.2";
  std::uint32_t engines = 4;
  // Loads a PE engine keeps in flight: each has its own PrefillLoader, copy
  // engine and device buffer, and all share the engine's store, PE buffer
  // and relay client. With two, the next load's reads (and the DE's reads
  // of its relay) run while the current load relays and copies. One by
  // default: with 1 MiB relay puts the relay keeps up, and here two were
  // slower (docs/performance.md): the engine thread's byte check and copy
  // wait stall the other lane's relay, and a relay queued behind another
  // leaves the DE read queue late, so the scheduler sends the DE less.
  std::uint32_t loads_per_engine = 1;
  // The relay's largest put (RelayServerOptions::max_put_bytes): over tcp
  // every put is an emulated put plus a flush, so fewer, larger puts move
  // more per CPU second. 0: one put per Layer Block.
  std::uint32_t relay_put_kib = 1024;
  // One emulated GPU's achieved prefill FLOP/s, in 10^12 (pd_cluster's
  // default): a request's prefill takes the cost model's FLOPs over this,
  // after its KV has landed, one request at a time per engine.
  double gpu_tflops = 400;
  double rate_mbps = 200;   // MB/s (10^6 B/s) per node's emulated storage NIC
  double burst_blocks = 1;  // bucket depth, in Full Blocks
  std::uint32_t sessions = 6;
  std::uint32_t turns = 8;
  std::uint32_t initial_blocks_min = 16;
  std::uint32_t initial_blocks_max = 32;
  std::uint32_t new_tokens_min = 4;  // per turn: new user tokens, and the reply's tokens
  std::uint32_t new_tokens_max = 32;
  std::uint64_t seed = 1;
  std::uint32_t poll_sleep_us = 20;
  std::uint32_t load_timeout_s = 120;
  std::uint32_t net_timeout_ms = 30'000;
  bool json = false;
  std::int64_t inject_mismatch = -1;  // self-test: damage this request's device bytes
};

// The command-line options of the bench, bound to `args`.
void addLoadBenchOptions(CLI::App& app, LoadBenchArgs& args);

// Runs the three modes on the trace and prints the report; the process's exit code.
int runLoadBench(const LoadBenchArgs& args);

}  // namespace dualpath::bench
