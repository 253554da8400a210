#!/usr/bin/env bash
# Single-server startup benchmark for rke2 (the Rust re-implementation).
#
# Per run it measures, on this machine:
#   1. cold start: `rke2 server` on a fresh data dir, from process start until
#      `kubectl get nodes` shows the node Ready;
#   2. idle RSS 15 s after that start: the rke2 process itself and its etcd child;
#   3. warm restart: SIGTERM, start again on the same data dir, time to Ready;
#   4. the reference: raw `etcd` (the same binary rke2 runs, with the same
#      heartbeat/election settings but WITHOUT TLS) on a fresh data dir, from
#      process start until `etcdctl endpoint health` succeeds, and its RSS 15 s
#      after its start, and its own warm restart (reference for 3.).
# Then it prints median/min/max over the runs next to the targets and writes
# the same table as Markdown to bench/results/startup.md.
#
# Usage: bench/startup.sh [--runs N] [--no-build] [--out FILE]
# Not part of the test suite.

set -euo pipefail

RUNS=5
BUILD=1
POLL=0.05          # seconds between readiness probes
DEADLINE=120       # seconds until a start counts as failed
IDLE_AT=15         # RSS is read this many seconds after process start
STOP_GRACE=15      # SIGTERM, then SIGKILL after this many seconds

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/startup.md"

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --runs=*) RUNS="${1#--runs=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "startup.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$RUNS" =~ ^[0-9]+$ ]] || (( RUNS < 1 || RUNS > 50 )); then
    echo "startup.sh: --runs must be between 1 and 50" >&2
    exit 2
fi

for tool in etcd etcdctl kubectl cargo awk; do
    command -v "$tool" >/dev/null || { echo "startup.sh: $tool is not installed" >&2; exit 1; }
done

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup --
PIDS=()            # every process this script started (and rke2's etcd child)
WORK=""            # temp dir holding all data dirs, logs and kubeconfigs

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# stop_pid PID: SIGTERM, wait up to STOP_GRACE s, then SIGKILL. Waits for exit.
stop_pid() {
    local pid=$1 i
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < STOP_GRACE * 10; i++ )); do
        alive "$pid" || break
        # a child of ours: reap it as soon as it exits
        if [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == Z* ]]; then break; fi
        sleep 0.1
    done
    if alive "$pid" && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]; then
        log "pid $pid ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # not our child (rke2's etcd): wait until it is really gone
    for (( i = 0; i < 50; i++ )); do alive "$pid" || break; sleep 0.1; done
    forget "$pid"
}

# forget PID: drop a stopped pid from PIDS so cleanup never signals a reused pid
forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done  # rke2 before its etcd child
    [[ -n "$WORK" && -d "$WORK" ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

die() {
    log "FAILED: $*"
    exit 1
}

# ------------------------------------------------------------------ build --
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="$TARGET_DIR/release/rke2"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"
ETCD="$(command -v etcd)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-bench.XXXXXX")"

# ---------------------------------------------------------------- helpers --
now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

port_free() { # ADDR PORT
    ! ss -Hltn "src $1:$2" 2>/dev/null | grep -q .
}

# rss_kb PID: VmRSS in kB
rss_kb() {
    awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) exit 1 }' "/proc/$1/status" 2>/dev/null \
        || die "cannot read VmRSS of pid $1"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# etcd_child PID: the pid of the etcd child of PID (empty if none)
etcd_child() {
    local parent=$1 c
    for c in $(cat /proc/"$parent"/task/*/children 2>/dev/null); do
        if [[ "$(cat /proc/"$c"/comm 2>/dev/null)" == etcd ]]; then echo "$c"; return 0; fi
    done
    ps --ppid "$parent" -o pid=,comm= 2>/dev/null | awk '$2 == "etcd" { print $1; exit }' || true
}

# wait_until_elapsed START SECONDS: measurement wait (idle period), not sync
wait_until_elapsed() {
    local left
    left=$(awk -v s="$1" -v n="$(now)" -v w="$2" 'BEGIN { d = s + w - n; printf "%.3f", (d > 0 ? d : 0) }')
    # a builtin timed read on a pipe nobody writes to: unlike `sleep`, a
    # signal (Ctrl-C, SIGTERM) interrupts it at once and runs the trap
    read -rt "$left" -u "$IDLE_FD" _ || true
}
exec {IDLE_FD}<> <(:)

# start_rke2 DATA ADDR NODE KUBECONFIG LOG -> sets RKE2_PID, START_T
start_rke2() {
    local data=$1 addr=$2 node=$3 kc=$4 logf=$5
    port_free "$addr" 6443 || die "$addr:6443 is already in use"
    port_free "$addr" 2379 || die "$addr:2379 is already in use"
    START_T=$(now)
    "$RKE2" server --data-dir "$data" --write-kubeconfig "$kc" \
        --bind-address "$addr" --node-name "$node" >>"$logf" 2>&1 &
    RKE2_PID=$!
    PIDS+=("$RKE2_PID")
}

# wait_ready PID NODE KUBECONFIG CACHEDIR LOG START -> prints seconds to Ready
wait_ready() {
    local pid=$1 node=$2 kc=$3 cache=$4 logf=$5 start=$6 out t
    while :; do
        if [[ -s "$kc" ]]; then
            out=$(kubectl --kubeconfig "$kc" --cache-dir "$cache" --request-timeout=5s \
                get nodes --no-headers 2>/dev/null || true)
            if awk -v n="$node" '$1 == n && $2 == "Ready" { f = 1 } END { exit !f }' <<<"$out"; then
                t=$(now)
                sub "$t" "$start"
                return 0
            fi
        fi
        if ! alive "$pid"; then
            tail -n 30 "$logf" >&2 || true
            die "rke2 server (pid $pid) exited before the node was Ready"
        fi
        if awk -v s="$start" -v n="$(now)" -v d="$DEADLINE" 'BEGIN { exit !(n - s > d) }'; then
            tail -n 30 "$logf" >&2 || true
            die "node $node not Ready within ${DEADLINE}s"
        fi
        sleep "$POLL"
    done
}

# start_raw_etcd DATA ADDR LOG -> sets RAW_PID, START_T. Same binary and raft
# timing flags as rke2 passes (crates/datastore/src/etcd.rs), but no TLS.
start_raw_etcd() {
    local data=$1 addr=$2 logf=$3
    local cu="http://$addr:2379" pu="http://$addr:2380"
    START_T=$(now)
    "$ETCD" --name raw --data-dir "$data" \
        --listen-client-urls "$cu" --advertise-client-urls "$cu" \
        --listen-peer-urls "$pu" --initial-advertise-peer-urls "$pu" \
        --initial-cluster "raw=$pu" --initial-cluster-state new \
        --heartbeat-interval=200 --election-timeout=2000 \
        --logger=zap --log-outputs=stderr >>"$logf" 2>&1 &
    RAW_PID=$!
    PIDS+=("$RAW_PID")
}

# wait_etcd_healthy PID ADDR LOG START -> prints seconds until endpoint health
wait_etcd_healthy() {
    local pid=$1 addr=$2 logf=$3 start=$4
    while :; do
        if ETCDCTL_API=3 etcdctl --endpoints "http://$addr:2379" --command-timeout=2s \
            endpoint health >/dev/null 2>&1; then
            sub "$(now)" "$start"
            return 0
        fi
        if ! alive "$pid"; then tail -n 30 "$logf" >&2 || true; die "raw etcd exited"; fi
        if awk -v s="$start" -v n="$(now)" -v d="$DEADLINE" 'BEGIN { exit !(n - s > d) }'; then
            die "raw etcd not healthy within ${DEADLINE}s"
        fi
        sleep "$POLL"
    done
}

# ------------------------------------------------------------------- runs --
declare -a R_READY R_ETCD R_RATIO R_WARM R_RAWWARM R_SRV R_ETCDRSS R_RAWRSS

for (( run = 1; run <= RUNS; run++ )); do
    dir="$WORK/run$run"
    mkdir -p "$dir"
    addr="127.77.0.$((10 + run))"
    raw_addr="127.77.0.$((110 + run))"
    node="bench-$run"
    kc="$dir/kubeconfig.yaml"
    logf="$dir/rke2.log"

    # -- 1. cold start to Ready ----------------------------------------------
    log "run $run/$RUNS: rke2 server on $addr (fresh data dir)"
    start_rke2 "$dir/data" "$addr" "$node" "$kc" "$logf"
    pid=$RKE2_PID
    cold_start=$START_T
    ready=$(wait_ready "$pid" "$node" "$kc" "$dir/kcache-cold" "$logf" "$cold_start")
    log "  start-to-Ready ${ready}s"

    # -- 3. idle RSS, 15 s after start -----------------------------------------
    wait_until_elapsed "$cold_start" "$IDLE_AT"
    alive "$pid" || die "rke2 server exited while idle"
    child=$(etcd_child "$pid")
    [[ -n "$child" ]] || die "no etcd child found under rke2 pid $pid"
    PIDS+=("$child")
    srv_kb=$(rss_kb "$pid")
    etcd_kb=$(rss_kb "$child")
    log "  idle RSS: server $(mib "$srv_kb") MiB, its etcd $(mib "$etcd_kb") MiB"

    # -- warm restart ---------------------------------------------------------
    stop_pid "$pid"
    stop_pid "$child"
    log "  warm restart on the same data dir"
    start_rke2 "$dir/data" "$addr" "$node" "$kc" "$logf"
    pid=$RKE2_PID
    warm=$(wait_ready "$pid" "$node" "$kc" "$dir/kcache-warm" "$logf" "$START_T")
    log "  warm-restart-to-Ready ${warm}s"
    child=$(etcd_child "$pid")
    if [[ -n "$child" ]]; then PIDS+=("$child"); fi
    stop_pid "$pid"
    if [[ -n "$child" ]]; then stop_pid "$child"; fi

    # -- 2. reference: raw etcd, no TLS ---------------------------------------
    log "  raw etcd reference on $raw_addr (no TLS)"
    port_free "$raw_addr" 2379 || die "$raw_addr:2379 is already in use"
    etcd_log="$dir/etcd-raw.log"
    start_raw_etcd "$dir/etcd-raw" "$raw_addr" "$etcd_log"
    raw_pid=$RAW_PID
    raw_start=$START_T
    raw=$(wait_etcd_healthy "$raw_pid" "$raw_addr" "$etcd_log" "$raw_start")
    wait_until_elapsed "$raw_start" "$IDLE_AT"
    raw_kb=$(rss_kb "$raw_pid")
    stop_pid "$raw_pid"
    # and its warm restart on the same data dir: the floor under ours
    start_raw_etcd "$dir/etcd-raw" "$raw_addr" "$etcd_log"
    raw_warm=$(wait_etcd_healthy "$RAW_PID" "$raw_addr" "$etcd_log" "$START_T")
    stop_pid "$RAW_PID"
    ratio=$(awk -v a="$ready" -v b="$raw" 'BEGIN { printf "%.2f", a / b }')
    log "  raw etcd start-to-healthy ${raw}s, RSS $(mib "$raw_kb") MiB; ratio ours/etcd ${ratio}; raw etcd restart-to-healthy ${raw_warm}s"

    R_READY+=("$ready"); R_ETCD+=("$raw"); R_RATIO+=("$ratio"); R_WARM+=("$warm"); R_RAWWARM+=("$raw_warm")
    R_SRV+=("$(mib "$srv_kb")"); R_ETCDRSS+=("$(mib "$etcd_kb")"); R_RAWRSS+=("$(mib "$raw_kb")")
    rm -rf "$dir"
done

# ------------------------------------------------------------------ table --
# stats V...: "median min max"
stats() {
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s %s %s", m, v[1], v[NR]
        }'
}

ROWS=()   # "label|unit-format|median|min|max|target"
row() { # LABEL FMT TARGET VALUES...
    local label=$1 fmt=$2 target=$3; shift 3
    local s m lo hi
    s=$(stats "$@"); read -r m lo hi <<<"$s"
    ROWS+=("$label|$(printf "$fmt" "$m")|$(printf "$fmt" "$lo")|$(printf "$fmt" "$hi")|$target")
}
row "start-to-Ready (s)"              "%.2f" "< 3 s (k3s documents ~30 s)" "${R_READY[@]}"
row "raw etcd start-to-healthy (s)"   "%.2f" "reference"                    "${R_ETCD[@]}"
row "ratio ours / raw etcd"           "%.2f" "-"                            "${R_RATIO[@]}"
row "warm-restart-to-Ready (s)"       "%.2f" "- (none set)"                 "${R_WARM[@]}"
row "raw etcd restart-to-healthy (s)"  "%.2f" "reference"                    "${R_RAWWARM[@]}"
row "server RSS idle, excl. etcd (MB)" "%.1f" "< 64 MB"                     "${R_SRV[@]}"
row "etcd child RSS idle (MB)"        "%.1f" "-"                            "${R_ETCDRSS[@]}"
row "raw etcd RSS idle (MB)"          "%.1f" "reference"                    "${R_RAWRSS[@]}"

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes)"
fi
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
cpus=$(nproc)
etcd_ver=$("$ETCD" --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
kubectl_ver=$(kubectl version --client 2>/dev/null | awk '/Client Version/ { print $3 }')

echo
printf 'rke2 single-server startup, %d run(s), %s, nproc %s, commit %s\n' "$RUNS" "$date_s" "$cpus" "$commit"
printf '%-34s %8s %8s %8s   %s\n' "metric" "median" "min" "max" "target"
for r in "${ROWS[@]}"; do
    IFS='|' read -r l m lo hi t <<<"$r"
    printf '%-34s %8s %8s %8s   %s\n' "$l" "$m" "$lo" "$hi" "$t"
done
echo "MB = MiB (VmRSS kB / 1024). Raw etcd runs without TLS; rke2's etcd uses TLS on both ports."

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 single-server startup benchmark"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $cpus, $(uname -sr)"
    echo "- commit: $commit"
    echo "- runs: $RUNS (median, min, max over runs)"
    echo "- etcd $etcd_ver (Debian etcd-server), kubectl $kubectl_ver"
    echo "- command: \`bench/startup.sh --runs $RUNS\`"
    echo
    echo "| metric | median | min | max | target |"
    echo "| --- | ---: | ---: | ---: | --- |"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r l m lo hi t <<<"$r"
        echo "| $l | $m | $lo | $hi | $t |"
    done
    echo
    echo "Start-to-Ready: from spawning \`rke2 server\` on a fresh data dir until"
    echo "\`kubectl get nodes --no-headers\` shows the node \`Ready\` (polled every 50 ms;"
    echo "each kubectl call itself takes tens of ms and includes API discovery)."
    echo "Raw etcd: the same etcd binary on a fresh data dir, another loopback address,"
    echo "same heartbeat/election flags as rke2 passes, **without TLS**, until"
    echo "\`etcdctl endpoint health\` succeeds. RSS is VmRSS 15 s after process start;"
    echo "MB = MiB. Warm restart: SIGTERM, then start again on the same data dir (for"
    echo "rke2 and, as its reference, for raw etcd)."
} >"$OUT"
log "wrote $OUT"
