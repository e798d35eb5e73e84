#!/usr/bin/env bash
# Storage reads: dualpath-storage-bench against fio on the same files, in one
# invocation (docs/performance.md, "Loader storage reads vs fio").
#
#   bench/loader/fio_compare.sh BENCH DIR [MODEL] [BLOCKS] [QUEUE_DEPTH] [REPS] [DIRECT] [ROUNDS] [REGISTER]
#
# BENCH is build/bin/dualpath-storage-bench; DIR a scratch directory (emptied,
# then removed). The bench writes BLOCKS Full Blocks of MODEL into DIR, syncs
# them to disk (untimed), and times REPS passes of reading them all back with
# QUEUE_DEPTH blocks in flight (io_uring, O_DIRECT when DIRECT=1), each pass
# opening, reading, verifying and closing every file. With REGISTER=1 (the
# default) its destinations are registered buffers and each block is two fixed
# reads (header, payload); with REGISTER=0 they are not, and each block is one
# readv of the whole file. fio then reads the same files: ioengine io_uring,
# one read of a whole file (header + payload) per I/O, the same queue depth,
# the same O_DIRECT setting, registered buffers (fixedbufs), REPS loops, each
# loop opening every file again as our passes do (strace: one openat per file
# per loop), no verification. The two alternate for ROUNDS rounds (3), since
# the machine is shared; the last two lines print our throughput over fio's,
# as the median and the best of the rounds, both counted in whole file bytes
# and over all REPS passes of a round (fio's loops; our mean_file_gbps).
set -euo pipefail

bench=${1:?usage: fio_compare.sh BENCH DIR [MODEL] [BLOCKS] [QUEUE_DEPTH] [REPS] [DIRECT] [ROUNDS] [REGISTER]}
dir=${2:?usage: fio_compare.sh BENCH DIR [MODEL] [BLOCKS] [QUEUE_DEPTH] [REPS] [DIRECT] [ROUNDS] [REGISTER]}
model=${3:-deepseek-v3.2}
blocks=${4:-64}
qd=${5:-32}
reps=${6:-5}
direct=${7:-1}
rounds=${8:-3}
register=${9:-1}

if ! command -v fio >/dev/null 2>&1; then
  echo "fio_compare: fio not found: install Debian package 'fio' (scripts/install-deps.sh does it)" >&2
  exit 2
fi
trap 'rm -rf "$dir"' EXIT

bench_flags=()
[ "$direct" = 1 ] || bench_flags+=(--buffered)
[ "$register" = 1 ] || bench_flags+=(--no-register)

ours_best=0
fio_best=0
ours_all=()
fio_all=()
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for round in $(seq "$rounds"); do
  line=$("$bench" --dir "$dir" --model "$model" --blocks "$blocks" --queue-depth "$qd" \
    --reps "$reps" --engine io_uring --keep "${bench_flags[@]}")
  echo "round $round: $line"
  file_bytes=$(sed -n 's/.* file_bytes=\([0-9]*\).*/\1/p' <<<"$line")
  ours=$(sed -n 's/.* mean_file_gbps=\([0-9.]*\).*/\1/p' <<<"$line")
  ours_best=$(awk -v a="$ours_best" -v b="$ours" 'BEGIN { print (b > a) ? b : a }')
  ours_all+=("$ours")

  # fio: every block file under DIR, each read whole in one I/O.
  # --minimal (terse v3): field 7 is the read bandwidth in KiB/s.
  terse=$(fio --name=dualpath-compare --opendir="$dir" --rw=read --bs="$file_bytes" \
    --size=$((file_bytes * blocks)) --iodepth="$qd" --direct="$direct" --ioengine=io_uring \
    --fixedbufs=1 --loops="$reps" --thread=1 --minimal --output-format=terse)
  fio_kib=$(awk -F';' '/^3;/ { print $7 }' <<<"$terse")
  if [ -z "$fio_kib" ]; then
    echo "fio_compare: no terse result from fio:" >&2
    echo "$terse" >&2
    exit 1
  fi
  fio_gbps=$(awk -v k="$fio_kib" 'BEGIN { printf "%.3f", k * 1024 / 1e9 }')
  echo "round $round: fio ioengine=io_uring direct=$direct bs=$file_bytes iodepth=$qd files=$blocks loops=$reps read_gbps=$fio_gbps"
  fio_best=$(awk -v a="$fio_best" -v b="$fio_gbps" 'BEGIN { print (b > a) ? b : a }')
  fio_all+=("$fio_gbps")
done

ours_median=$(median "${ours_all[@]}")
fio_median=$(median "${fio_all[@]}")
awk -v o="$ours_median" -v f="$fio_median" 'BEGIN {
  printf "fio_compare: median of rounds: ours %.3f GB/s, fio %.3f GB/s, ratio %.2f\n", o, f, (f > 0) ? o / f : 0 }'
awk -v o="$ours_best" -v f="$fio_best" 'BEGIN {
  printf "fio_compare: best of rounds: ours %.3f GB/s, fio %.3f GB/s, ratio %.2f\n", o, f, (f > 0) ? o / f : 0 }'
