#!/usr/bin/env bash
# Restore-to-Ready benchmark: a 3-server cluster restored from an etcd
# snapshot with `rke2 server --cluster-reset --cluster-reset-restore-path`,
# against a plain restart of the same cluster, in the same run.
#
# It starts three `rke2 server`s (release build) on loopback addresses (the
# second and third joining the first), writes --objects ConfigMaps, takes
# one snapshot on the first server (`rke2 etcd-snapshot save`) and writes a
# marker ConfigMap after it. Then per run, the three servers stopped
# (SIGTERM) before each measurement:
#   1. the reference, a plain restart: the three servers started together
#      (one alone has no etcd quorum); time until the first server's Node
#      is Ready with a heartbeat newer than the start ("first Ready"), and
#      until all three Nodes are Ready with fresh heartbeats and etcd has
#      three started voters ("all re-joined");
#   2. the restore: time from starting `rke2 server --cluster-reset
#      --cluster-reset-restore-path=<snapshot>` (which restores and exits)
#      through starting the first server again until its Node is Ready
#      ("first Ready"), then the other two started with their old config
#      (they notice the reset, move their database aside and re-join) until
#      all three are Ready with three voters ("all re-joined"). The marker
#      written after the snapshot must be gone and the objects before it
#      there.
# It prints median/min/max and the ratios restore / restart, and writes
# the table as Markdown to bench/results/restore.md.
#
# Usage: bench/restore.sh [--runs N] [--objects N] [--no-build] [--out FILE]
# (RKE2_BIN=path uses another rke2 binary, e.g. a debug build, with --no-build.)
# Needs root, etcd, etcdctl, kubectl. Not part of the test suite.

set -euo pipefail

RUNS=2
OBJECTS=500
BUILD=1
DEADLINE=300       # seconds until a wait counts as failed
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/restore.md"

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?}"; shift 2 ;;
        --objects) OBJECTS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "restore.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in "$RUNS" "$OBJECTS"; do
    [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 )) || { echo "restore.sh: numbers must be positive" >&2; exit 2; }
done
(( RUNS <= 20 && OBJECTS <= 100000 )) || { echo "restore.sh: --runs <= 20, --objects <= 100000" >&2; exit 2; }
KUBECTL="$(ls /usr/local/lib/rke2-test/kubectl/kubectl-1.* 2>/dev/null | sort -V | tail -n1 || true)"
[[ -x "$KUBECTL" ]] || KUBECTL="$(command -v kubectl || true)"
for tool in etcd etcdctl cargo awk python3 ss; do
    command -v "$tool" >/dev/null || { echo "restore.sh: $tool is not installed" >&2; exit 1; }
done
[[ -x "$KUBECTL" ]] || { echo "restore.sh: no kubectl (scripts/install.sh)" >&2; exit 1; }

log() { printf '[bench] %s\n' "$*" >&2; }

WORK=""
declare -a PIDS=("" "" "")
stop_server() { # index
    local pid=${PIDS[$1]}
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    PIDS[$1]=""
}
cleanup() {
    local rc=$?
    for i in 2 1 0; do stop_server "$i"; done
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { log "FAILED: $*"; exit 1; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="${RKE2_BIN:-$TARGET_DIR/release/rke2}"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-bench-restore.XXXXXX")"
declare -a IPS=()
for last in $(seq 60 250); do
    cand="127.0.84.$last"
    if ! ss -Hltn "src $cand" 2>/dev/null | grep -q .; then IPS+=("$cand"); fi
    (( ${#IPS[@]} == 3 )) && break
done
(( ${#IPS[@]} == 3 )) || die "no three free loopback addresses"
TOKEN="bench-restore-$RANDOM$RANDOM"
for i in 0 1 2; do
    mkdir -p "$WORK/s$i"
    printf 'token: %s\netcd-disable-snapshots: true\n' "$TOKEN" >"$WORK/s$i/config.yaml"
    (( i == 0 )) || printf 'server: https://%s:9345\n' "${IPS[0]}" >>"$WORK/s$i/config.yaml"
done
node() { printf 'bench-restore-%s' "$1"; }
server_args() { # index
    printf '%s\n' server --data-dir "$WORK/s$1/data" --config "$WORK/s$1/config.yaml" \
        --bind-address "${IPS[$1]}" --node-name "$(node "$1")" --write-kubeconfig "$WORK/s$1/rke2.yaml"
}
start_server() { # index
    mapfile -t args < <(server_args "$1")
    CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 "$RKE2" "${args[@]}" >>"$WORK/s$1/server.log" 2>&1 &
    PIDS[$1]=$!
}
kc() { "$KUBECTL" --kubeconfig "$WORK/s0/rke2.yaml" --server "https://${IPS[0]}:6443" --request-timeout=5s "$@"; }
TLS="$WORK/s0/data/server/tls/etcd"
etcdctl0() { ETCDCTL_API=3 etcdctl --endpoints="https://${IPS[0]}:2379" --cacert="$TLS/server-ca.crt" \
    --cert="$TLS/client.crt" --key="$TLS/client.key" --command-timeout=5s "$@"; }

# fresh_ready SINCE NODE...: every named Node Ready with a heartbeat at or
# after SINCE (Unix seconds): a Node object read back from etcd says Ready
# until it goes stale, only a new heartbeat shows the node is back.
fresh_ready() {
    local since=$1; shift
    local out
    out=$(kc get nodes -o json 2>/dev/null) || return 1
    python3 "$WORK/fresh.py" "$since" "$@" <<<"$out"
}
voters() { etcdctl0 member list 2>/dev/null | awk -F', ' '$2 == "started" && $6 == "false"' | wc -l; }
wait_until() { # what, command...
    local what=$1; shift
    local end=$((SECONDS + DEADLINE))
    until "$@"; do
        for i in 0 1 2; do
            [[ -z "${PIDS[$i]}" ]] || kill -0 "${PIDS[$i]}" 2>/dev/null || die "server $i exited while waiting for $what; log: $WORK/s$i/server.log"
        done
        (( SECONDS < end )) || die "$what not within $DEADLINE s"
        sleep 0.1
    done
}
three_voters() { [[ "$(voters)" == 3 ]]; }
now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

cat >"$WORK/fresh.py" <<'PY'
import datetime, json, sys
since = int(sys.argv[1]); want = set(sys.argv[2:])
for n in json.load(sys.stdin)["items"]:
    for c in n.get("status", {}).get("conditions", []):
        if c["type"] == "Ready" and c["status"] == "True":
            t = datetime.datetime.strptime(c["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ")
            if t.replace(tzinfo=datetime.timezone.utc).timestamp() >= since:
                want.discard(n["metadata"]["name"])
sys.exit(0 if not want else 1)
PY

log "starting three servers on ${IPS[*]}"
T_START=$(date +%s)
start_server 0
wait_until "server 0 ready" fresh_ready "$T_START" "$(node 0)"
start_server 1
start_server 2
wait_until "three Ready nodes" fresh_ready "$T_START" "$(node 0)" "$(node 1)" "$(node 2)"
wait_until "three etcd voters" three_voters

log "writing $OBJECTS ConfigMaps"
python3 - "$OBJECTS" "$WORK/objects.json" <<'PY'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
items = [{"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": f"bench-{i:06d}", "namespace": "default"},
          "data": {"payload": "x" * 1024}} for i in range(n)]
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(out, "w"))
PY
kc create -f "$WORK/objects.json" >/dev/null || die "creating the objects"
SNAP=$("$RKE2" etcd-snapshot save --data-dir "$WORK/s0/data" --config "$WORK/s0/config.yaml" \
    --node-name "$(node 0)" --name bench | awk '/^Snapshot /{print $5; exit}' | sed 's|^file://||')
[[ -f "$SNAP" ]] || die "no snapshot written"
kc create configmap after-snapshot >/dev/null || die "writing the marker"
log "snapshot $SNAP ($(stat -c %s "$SNAP") bytes)"

stop_all() { for i in 2 1 0; do stop_server "$i"; done; }
declare -a REF_FIRST REF_ALL RES_FIRST RES_ALL
# bring_back T0 SINCE together|first: start the servers (all three at once
# for a plain restart: one alone has no etcd quorum; the restored one first
# for a restore, as its next steps say); sets FIRST and ALL (s since T0).
bring_back() {
    local t0=$1 since=$2 how=$3
    start_server 0
    if [[ "$how" == together ]]; then start_server 1; start_server 2; fi
    wait_until "server 0 Ready" fresh_ready "$since" "$(node 0)"
    FIRST=$(sub "$(now)" "$t0")
    if [[ "$how" != together ]]; then start_server 1; start_server 2; fi
    wait_until "three Ready nodes" fresh_ready "$since" "$(node 0)" "$(node 1)" "$(node 2)"
    wait_until "three etcd voters" three_voters
    ALL=$(sub "$(now)" "$t0")
}
for r in $(seq 1 "$RUNS"); do
    stop_all
    since=$(( $(date +%s) + 1 ))
    sleep 1  # heartbeats have second resolution: none of the old ones count
    t0=$(now)
    bring_back "$t0" "$since" together
    REF_FIRST+=("$FIRST"); REF_ALL+=("$ALL")

    stop_all
    since=$(( $(date +%s) + 1 ))
    sleep 1
    t0=$(now)
    mapfile -t args < <(server_args 0)
    CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 "$RKE2" "${args[@]}" --cluster-reset \
        "--cluster-reset-restore-path=$SNAP" >>"$WORK/s0/server.log" 2>&1 \
        || die "the restore failed; log: $WORK/s0/server.log"
    bring_back "$t0" "$since" first
    RES_FIRST+=("$FIRST"); RES_ALL+=("$ALL")
    ! kc get configmap after-snapshot >/dev/null 2>&1 || die "the write after the snapshot survived the restore"
    kc get configmap "bench-$(printf '%06d' $((OBJECTS - 1)))" >/dev/null || die "an object before the snapshot is missing"
    kc create configmap after-snapshot >/dev/null || die "writing the marker again"
    log "run $r: restart ${REF_FIRST[-1]} / ${REF_ALL[-1]} s, restore ${RES_FIRST[-1]} / ${RES_ALL[-1]} s (first Ready / all re-joined)"
done

stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f %.3f %.3f", m, a[1], a[NR]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
read -r rf_m rf_lo rf_hi <<<"$(stats "${REF_FIRST[@]}")"
read -r ra_m ra_lo ra_hi <<<"$(stats "${REF_ALL[@]}")"
read -r sf_m sf_lo sf_hi <<<"$(stats "${RES_FIRST[@]}")"
read -r sa_m sa_lo sa_hi <<<"$(stats "${RES_ALL[@]}")"

mkdir -p "$(dirname "$OUT")"
{
    echo "# Restore-to-Ready benchmark (3 servers)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- runs: $RUNS; database: $OBJECTS ConfigMaps of 1 KiB, snapshot $(stat -c %s "$SNAP") bytes"
    echo "- $(etcd --version | head -n1)"
    echo "- binary: $RKE2"
    echo "- command: \`bench/restore.sh --runs $RUNS --objects $OBJECTS\`"
    echo
    echo "| what | median (s) | min | max | restore / restart |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    echo "| restore: first server Ready | $sf_m | $sf_lo | $sf_hi | $(ratio "$sf_m" "$rf_m") |"
    echo "| restore: all three re-joined | $sa_m | $sa_lo | $sa_hi | $(ratio "$sa_m" "$ra_m") |"
    echo "| restart (reference): first server Ready | $rf_m | $rf_lo | $rf_hi | 1.00 |"
    echo "| restart (reference): all three Ready | $ra_m | $ra_lo | $ra_hi | 1.00 |"
    echo
    echo "The restore time includes the \`--cluster-reset\` run itself (checksum"
    echo "and etcd hash checked, the old database moved aside, the snapshot"
    echo "restored, a one-member cluster started and stopped). The re-joining"
    echo "servers each move their old database aside and join as new members"
    echo "(learner, then promoted), where a restart only resumes its member."
    echo "Ready means the Node's Ready condition with a heartbeat newer than the"
    echo "start of the measurement."
} >"$OUT"
cat "$OUT"
