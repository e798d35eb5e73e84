#!/usr/bin/env bash
# Sets everything up and runs the main job: the README's first command.
# `dualpath-bench demo`: the miniature PD cluster replaying an agentic trace
# with basic, DualPath and Oracle loading, then one collective beside KV
# traffic with QoS off and on, in one compact report (docs/bench.md, "The
# demo"). Arguments go to `dualpath-bench demo` (--json, --netns as root, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
# dualpath-bench pulls in what it runs: the NCCL net plugin and dualpath-qos.
cmake --build build -j"$(nproc)" --target dualpath-bench >&2
echo >&2
exec build/bin/dualpath-bench demo "$@"
