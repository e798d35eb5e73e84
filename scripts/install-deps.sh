#!/usr/bin/env bash
# Installs DualPath's build and test dependencies from Debian's archive
# (Debian 12). Idempotent: installs only the packages that are missing, and
# does nothing, not even `apt-get update`, when all are present.
set -euo pipefail

packages=(
  # toolchain
  cmake make g++ clang libclang-rt-14-dev pkg-config
  # libraries
  libucx-dev ucx-utils libhwloc-dev hwloc liburing-dev libxxhash-dev
  libspdlog-dev libfmt-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # tests: network namespaces, veth, tc
  iproute2
  # benchmarks: the storage-read reference; the simulator's plots
  fio gnuplot-nox
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
