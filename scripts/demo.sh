#!/usr/bin/env bash
# Sets everything up and runs the main job: the README's first command.
# Today that is `dualpath-qos explain` on the DualPath paper's InfiniBand
# policy and `dualpath-topo` on a DGX-H100-like server; the miniature PD
# cluster demo replaces it when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
cmake --build build -j"$(nproc)" --target dualpath-qos dualpath-topo >&2
echo >&2
build/bin/dualpath-qos explain qos/examples/paper-ib.toml
echo
build/bin/dualpath-qos render --format opensm qos/examples/paper-ib.toml
echo
build/bin/dualpath-topo --xml tests/scheduler/data/dgx-h100-like-2snic.xml
