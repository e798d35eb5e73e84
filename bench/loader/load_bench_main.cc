// dualpath-load-bench: the load benchmark on its own (also `dualpath-bench load`).
#include <CLI/CLI.hpp>

#include "load_bench.h"

int main(int argc, char** argv) {
  dualpath::bench::LoadBenchArgs args;
  CLI::App app{
      "dualpath-load-bench: dual-path vs PE-path-only KV loading over emulated storage NICs"};
  dualpath::bench::addLoadBenchOptions(app, args);
  CLI11_PARSE(app, argc, argv);
  return dualpath::bench::runLoadBench(args);
}
