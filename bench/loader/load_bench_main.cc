// dualpath-load-bench: the load benchmark on its own (also `dualpath-bench load`).
#include <cstdlib>

#include <CLI/CLI.hpp>

#include "load_bench.h"

int main(int argc, char** argv) {
  dualpath::bench::LoadBenchArgs args;
  CLI::App app{
      "dualpath-load-bench: dual-path vs PE-path-only KV loading over emulated storage NICs"};
  dualpath::bench::addLoadBenchOptions(app, args);
  CLI11_PARSE(app, argc, argv);
  // UCX logs to stdout unless told otherwise, which would break the report
  // (and --json); the user's own UCX_LOG_FILE still wins.
  ::setenv("UCX_LOG_FILE", "stderr", 0);
  return dualpath::bench::runLoadBench(args);
}
