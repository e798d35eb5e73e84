#!/usr/bin/env bash
# netns-cluster.sh: a cluster of N nodes on one machine, each node in its own
# network namespace, joined by a bridge in a hub namespace, each node's link
# shaped by the tc script that `dualpath-qos render --format tc` makes from a
# QoS policy. `dualpath-bench interference --netns` runs its ranks on it
# (docs/bench.md, "Over network namespaces").
#
#   netns-cluster.sh up    --id ID --nodes N --policy FILE --rate RATE [--storage-rate RATE] [--qos BIN]
#   netns-cluster.sh shape --id ID --policy FILE --rate RATE [--qos BIN]
#   netns-cluster.sh exec  --id ID --node I|storage -- COMMAND [ARG...]
#   netns-cluster.sh down  --id ID
#
# up     creates namespaces dpns-ID-hub (the bridge dpbr) and dpns-ID-0 ..
#        dpns-ID-(N-1); node I has the veth dpnI (its peer dphI is a bridge
#        port in the hub) with address 10.214.X.(I+1)/24, X derived from ID,
#        the default MTU, and the rendered tc script on dpnI's egress. An
#        existing cluster with the same ID is removed first, so `up` can be
#        repeated. On any failure everything made so far is removed.
#        With --storage-rate, storage links too: a namespace dpns-ID-storage
#        whose bridge dpsbr has address 10.215.X.254/24 (where a storage
#        server listens), and on node I a second veth dpsI (its storage NIC,
#        10.215.X.(I+1)/24) whose peer dpstI is a port of dpsbr; both ends
#        shaped by tbf to the storage rate, so node I reads from storage
#        (dpstI's egress) and writes to it (dpsI's egress) at that rate.
# shape  renders and applies the policy again on every node (tc's counters
#        restart from zero).
# exec   runs COMMAND inside node I's namespace, or the storage namespace
#        (`ip netns exec`).
# down   removes every namespace named dpns-ID-*; nothing else was created.
#        Succeeds when there is nothing to remove.
#
# up and shape print, one per line, for tools to read:
#   subnet 10.214.X.0/24
#   node I NAMESPACE DEVICE ADDRESS      (up only)
#   storage NAMESPACE DEVICE ADDRESS     (up with --storage-rate: the server's side)
#   storage-link I DEVICE ADDRESS        (up with --storage-rate: node I's storage NIC)
#   class NAME CLASSID                   (the HTB class of each policy class)
#
# RATE is tc's (e.g. 200mbit, 1gbit): the whole link of each node, from which
# HTB sizes every class. BIN defaults to build/bin/dualpath-qos beside this
# script's repository.
#
# The host namespace's interfaces and addresses are never touched: every link
# is created from inside the hub namespace straight into the node namespaces,
# and every address is inside a namespace this script created. Needs root and
# iproute2 (ip, tc).
set -euo pipefail

readonly self="netns-cluster.sh"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo

die() {
  echo "$self: $*" >&2
  exit 1
}

usage() {
  sed -n '8,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Runs a command; on failure names it and shows what it printed.
run() {
  local output
  if ! output="$("$@" 2>&1)"; then
    die "'$*' failed: ${output:-no output}"
  fi
}

action="${1:-}"
[[ -n "$action" ]] || usage
shift
id=""
nodes=""
policy=""
rate=""
storage_rate=""
qos="$repo/build/bin/dualpath-qos"
node=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --id) id="${2:-}"; shift 2 || usage ;;
    --nodes) nodes="${2:-}"; shift 2 || usage ;;
    --policy) policy="${2:-}"; shift 2 || usage ;;
    --rate) rate="${2:-}"; shift 2 || usage ;;
    --storage-rate) storage_rate="${2:-}"; shift 2 || usage ;;
    --qos) qos="${2:-}"; shift 2 || usage ;;
    --node) node="${2:-}"; shift 2 || usage ;;
    --) shift; break ;;
    *) echo "$self: unknown argument '$1'" >&2; usage ;;
  esac
done

# The ID goes into namespace names; keep it short and plain.
[[ "$id" =~ ^[A-Za-z0-9]{1,20}$ ]] || die "--id '$id': 1 to 20 letters or digits"
readonly hub="dpns-$id-hub"
readonly prefix="dpns-$id-"
# 10.214.X.0/24: X from the ID, so that two clusters' addresses differ in
# diagnostics (they could not collide anyway: each lives in its own namespaces).
readonly subnet="10.214.$(( $(printf '%s' "$id" | cksum | cut -d' ' -f1) % 256 ))"
readonly storage_subnet="10.215.${subnet##*.}"
readonly storage_ns="${prefix}storage"

need_tools() {
  [[ $EUID -eq 0 ]] || die "needs root: network namespaces, veth and tc (running as uid $EUID)"
  command -v ip >/dev/null || die "needs iproute2: 'ip' is not on PATH"
  command -v tc >/dev/null || die "needs iproute2: 'tc' is not on PATH"
}

# Namespaces of this cluster that exist now.
existing() {
  ip netns list | awk '{print $1}' | grep -E "^${prefix}" || true
}

down() {
  local ns
  for ns in $(existing); do
    # Deleting a namespace deletes its veth ends and the bridge with it.
    run ip netns del "$ns"
  done
}

# Renders the policy for node I's device and applies it in node I's namespace.
# Prints the class lines once (from node 0).
shape() {
  [[ -f "$policy" ]] || die "--policy '$policy': no such file"
  [[ -n "$rate" ]] || die "--rate is required (tc's units, e.g. 200mbit)"
  [[ -x "$qos" ]] || die "dualpath-qos not found at '$qos' (build it, or pass --qos)"
  local count i ns dev script
  [[ -n "$tmp" ]] || tmp="$(mktemp -d "${TMPDIR:-/tmp}/dualpath-netns-$id.XXXXXX")"
  count=$(existing | grep -c -E "^${prefix}[0-9]+$" || true)
  [[ "$count" -gt 0 ]] || die "no cluster '$id' is up (no namespace ${prefix}0)"
  echo "subnet $subnet.0/24"
  for (( i = 0; i < count; i++ )); do
    ns="$prefix$i"
    dev="dpn$i"
    script="$tmp/tc-$i.sh"
    if ! "$qos" render --format tc --dev "$dev" --rate "$rate" "$policy" >"$script" 2>"$tmp/err"; then
      die "'$qos render --format tc --dev $dev --rate $rate $policy' failed: $(cat "$tmp/err")"
    fi
    run ip netns exec "$ns" sh "$script"
    if [[ $i -eq 0 ]]; then
      # "# class NAME: ..." is followed by its "tc class add ... classid X" line.
      awk '/^# class / { name = $3; sub(":", "", name); getline;
             for (f = 1; f <= NF; f++) if ($f == "classid") print "class", name, $(f + 1) }' "$script"
    fi
  done
}

up() {
  if ! [[ "$nodes" =~ ^[0-9]+$ ]] || (( nodes < 1 || nodes > 64 )); then
    die "--nodes '$nodes': 1 to 64 nodes"
  fi
  [[ -f "$policy" ]] || die "--policy '$policy': no such file"
  [[ -n "$rate" ]] || die "--rate is required (tc's units, e.g. 200mbit)"
  down
  # Whatever fails from here on, leave nothing behind (see cleanup).
  creating=1
  run ip netns add "$hub"
  run ip -n "$hub" link set lo up
  run ip -n "$hub" link add dpbr type bridge
  run ip -n "$hub" link set dpbr up
  local i ns
  for (( i = 0; i < nodes; i++ )); do
    ns="$prefix$i"
    run ip netns add "$ns"
    run ip -n "$ns" link set lo up
    # Made inside the hub; the node's end goes straight into its namespace.
    run ip -n "$hub" link add "dph$i" type veth peer name "dpn$i" netns "$ns"
    run ip -n "$hub" link set "dph$i" master dpbr
    run ip -n "$hub" link set "dph$i" up
    run ip -n "$ns" addr add "$subnet.$(( i + 1 ))/24" dev "dpn$i"
    run ip -n "$ns" link set "dpn$i" up
  done
  [[ -z "$storage_rate" ]] || storage_links
  shape
  for (( i = 0; i < nodes; i++ )); do
    wait_running "$prefix$i" "dpn$i"
    [[ -z "$storage_rate" ]] || wait_running "$prefix$i" "dps$i"
  done
  for (( i = 0; i < nodes; i++ )); do
    echo "node $i $prefix$i dpn$i $subnet.$(( i + 1 ))"
  done
  if [[ -n "$storage_rate" ]]; then
    echo "storage $storage_ns dpsbr $storage_subnet.254"
    for (( i = 0; i < nodes; i++ )); do
      echo "storage-link $i dps$i $storage_subnet.$(( i + 1 ))"
    done
  fi
}

# Waits (at most 5 s) until DEV in namespace NS is up with a carrier. The
# kernel reports a new veth's carrier a moment after `link set up` (its link
# watch runs deferred), and UCX lists only interfaces that are running.
wait_running() {
  local ns="$1" dev="$2" tries
  for (( tries = 0; tries < 50; tries++ )); do
    [[ "$(ip netns exec "$ns" cat "/sys/class/net/$dev/operstate" 2>/dev/null)" == up ]] && return 0
    sleep 0.1
  done
  die "$dev in $ns is not up with a carrier after 5 s: $(ip -n "$ns" link show dev "$dev" 2>&1)"
}

# A token bucket on DEV's egress in namespace NS: the storage link's rate. The
# bucket holds 1 ms at that rate, and at least 64 KiB (a few TCP segments).
shape_storage_link() {
  local ns="$1" dev="$2"
  run ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$storage_rate" \
    burst "$storage_burst" latency 100ms
}

storage_links() {
  local bits burst i ns
  # tc's units: kbit, mbit or gbit (what bench::tcRate and people write).
  [[ "$storage_rate" =~ ^([0-9]+)(kbit|mbit|gbit)$ ]] ||
    die "--storage-rate '$storage_rate': a rate in kbit, mbit or gbit (e.g. 1600mbit)"
  case "${BASH_REMATCH[2]}" in
    kbit) bits=$(( BASH_REMATCH[1] * 1000 )) ;;
    mbit) bits=$(( BASH_REMATCH[1] * 1000000 )) ;;
    gbit) bits=$(( BASH_REMATCH[1] * 1000000000 )) ;;
  esac
  burst=$(( bits / 8 / 1000 ))
  (( burst >= 65536 )) || burst=65536
  storage_burst="${burst}b"
  run ip netns add "$storage_ns"
  run ip -n "$storage_ns" link set lo up
  run ip -n "$storage_ns" link add dpsbr type bridge
  run ip -n "$storage_ns" addr add "$storage_subnet.254/24" dev dpsbr
  run ip -n "$storage_ns" link set dpsbr up
  for (( i = 0; i < nodes; i++ )); do
    ns="$prefix$i"
    run ip -n "$storage_ns" link add "dpst$i" type veth peer name "dps$i" netns "$ns"
    run ip -n "$storage_ns" link set "dpst$i" master dpsbr
    run ip -n "$storage_ns" link set "dpst$i" up
    run ip -n "$ns" addr add "$storage_subnet.$(( i + 1 ))/24" dev "dps$i"
    run ip -n "$ns" link set "dps$i" up
    shape_storage_link "$storage_ns" "dpst$i"
    shape_storage_link "$ns" "dps$i"
  done
}

tmp=""       # rendered scripts; removed on exit
creating=0   # 1 once `up` starts making things: a failure then removes them
cleanup() {
  local status=$?
  [[ -z "$tmp" ]] || rm -rf "$tmp"
  if [[ $status -ne 0 && $creating -eq 1 ]]; then
    creating=0
    echo "$self: removing the partly built cluster '$id'" >&2
    down || true
  fi
}
trap cleanup EXIT

case "$action" in
  up)
    need_tools
    up
    ;;
  shape)
    need_tools
    shape
    ;;
  exec)
    need_tools
    [[ "$node" =~ ^([0-9]+|storage)$ ]] || die "--node '$node': a node number, or storage"
    [[ $# -gt 0 ]] || die "exec: no command after --"
    ip netns list | awk '{print $1}' | grep -qx "$prefix$node" ||
      die "namespace $prefix$node does not exist (is cluster '$id' up with more than $node nodes?)"
    exec ip netns exec "$prefix$node" "$@"
    ;;
  down)
    need_tools
    down
    ;;
  *)
    usage
    ;;
esac
