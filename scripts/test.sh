#!/usr/bin/env bash
# Sets everything up and runs every test: the README's test command, and what
# CI runs. Four builds, each in its own directory:
#   build/       GCC, -Werror: every test (netns tests skip unless root)
#   build-asan/  GCC, ASan+UBSan: every test
#   build-tsan/  clang, TSan and -Wthread-safety: the concurrency, UCX transport
#                and plugin tests
#   build-fuzz/  clang, libFuzzer: each fuzzer for DUALPATH_FUZZ_SECONDS (30 s)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

jobs=$(nproc)
step() { printf '\n==== %s (%s)\n' "$*" "$(date +%T)"; }

step "build/: GCC, warnings as errors"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDUALPATH_WERROR=ON
cmake --build build -j"$jobs"
ctest --no-tests=error --test-dir build --output-on-failure -j"$jobs"

step "build-asan/: GCC, AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDUALPATH_WERROR=ON \
  -DDUALPATH_SANITIZER=address,undefined -DDUALPATH_BUILD_BENCH=OFF
cmake --build build-asan -j"$jobs"
# The sanitizers intercept dlopen(), so the plugin tests' RUNPATH no longer
# applies to the plugin's name lookup: give the library directory explicitly.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  LD_LIBRARY_PATH="$PWD/build-asan/lib" ctest --no-tests=error --test-dir build-asan --output-on-failure -j"$jobs"

step "build-tsan/: clang, ThreadSanitizer, -Wthread-safety"
CC=clang CXX=clang++ cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDUALPATH_WERROR=ON -DDUALPATH_SANITIZER=thread -DDUALPATH_BUILD_BENCH=OFF
cmake --build build-tsan -j"$jobs"
# UCX's memory hooks crash under TSan unless switched off (../shared/FACTS.md).
TSAN_OPTIONS=halt_on_error=1 UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=no \
  LD_LIBRARY_PATH="$PWD/build-tsan/lib" ctest --no-tests=error --test-dir build-tsan --output-on-failure -j"$jobs" -L "concurrency|ucx|abi"

step "build-fuzz/: clang, libFuzzer"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDUALPATH_WERROR=ON -DDUALPATH_FUZZ=ON -DDUALPATH_BUILD_TESTS=OFF -DDUALPATH_BUILD_BENCH=OFF
# Only the fuzzers and what they link: the rest was built three times above.
cmake --build build-fuzz -j"$jobs" --target policy_fuzzer smpquery_fuzzer
ctest --no-tests=error --test-dir build-fuzz --output-on-failure -L fuzz

step "all tests passed"
