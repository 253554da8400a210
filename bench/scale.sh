#!/usr/bin/env bash
# Scale: simulated nodes (crates/hollow-nodes, like kubemark's hollow nodes)
# and many pods against 1 or 3 rke2 servers on this one machine.
#
# One `rke2 server` on 127.77.6.11 (--servers 3: two more join it through
# 127.77.6.11:9345 on 127.77.6.12/13; token in a config file; coredns,
# ingress-nginx and metrics-server disabled). Then:
#   1. rke2-hollow-nodes registers --nodes simulated nodes (spread over the
#      servers), renews their Leases every 10 s and reports bound pods
#      Running; time until all are Ready;
#   2. rke2-scale-load creates --pods pods as ReplicaSets (nodeSelector on
#      the hollow nodes) and waits until all are Running, while a paced
#      probe (ConfigMap create/patch/delete) samples the mutating latency;
#   3. steady state: CPU and RSS of every rke2 and etcd;
#   4. watch fan-out: --watchers watches on one namespace, --watch-events
#      writes, delivery latency to every watcher;
#   5. the reference: the same number of raw etcd puts (crates/bench-api,
#      the server's etcd client certificate), of the size of a stored pod,
#      with the hollow nodes' write concurrency, against the same etcd.
# Prints a table and writes it as Markdown to bench/results/scale.md.
#
# Usage: bench/scale.sh [--servers 1|3] [--nodes N] [--pods N] [--pods-per-rs N]
#                       [--concurrency N] [--creators N] [--probe-rate R]
#                       [--watchers N] [--watch-events N] [--timeout S] [--ref-ops N]
#                       [--subnet A.B.C] [--no-build] [--out FILE] [--keep]
#       bench/scale.sh --report DIR [--out FILE]
#   --report renders the table again from a work dir kept with --keep (the
#   run's options, phase outputs and readings are saved there), e.g. when a
#   late phase failed.
#   defaults: 1 server, 500 nodes, 5000 pods (the issue's target:
#   --servers 3 --nodes 2000 --pods 20000), watchers = nodes, subnet 127.77.6,
#   reference ops = pods, at most 5000 (its API side runs at the API's pace).
# Needs root (servers run containerd), etcd, kubectl. Not part of the test
# suite.

set -euo pipefail

SERVERS=1
NODES=500
PODS=5000
PODS_PER_RS=50
CONCURRENCY=32     # hollow nodes' writes in flight (and the reference's)
CREATORS=16        # ReplicaSet creates in flight
PROBE_RATE=10      # probes/s during the ramp (3 writes each)
WATCHERS=""        # default: NODES
WATCH_EVENTS=50
WATCH_RATE=5
TIMEOUT=1800       # seconds the ramp may take
REF_OPS=""         # default: min(PODS, 5000)
REPORT=""          # --report DIR: only render the table of a kept run
BUILD=1
KEEP=0
SUBNET=127.77.6    # server K on SUBNET.(10+K)
DEADLINE=180       # seconds until a server wait counts as failed
STOP_GRACE=20
SETTLE=15          # seconds of steady state before the RSS/CPU readings

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/scale.md"
ARGS="$*"

usage() {
    sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --servers) SERVERS="${2:?--servers needs 1 or 3}"; shift 2 ;;
        --nodes) NODES="${2:?--nodes needs a number}"; shift 2 ;;
        --pods) PODS="${2:?--pods needs a number}"; shift 2 ;;
        --pods-per-rs) PODS_PER_RS="${2:?--pods-per-rs needs a number}"; shift 2 ;;
        --concurrency) CONCURRENCY="${2:?--concurrency needs a number}"; shift 2 ;;
        --creators) CREATORS="${2:?--creators needs a number}"; shift 2 ;;
        --probe-rate) PROBE_RATE="${2:?--probe-rate needs a number}"; shift 2 ;;
        --watchers) WATCHERS="${2:?--watchers needs a number}"; shift 2 ;;
        --watch-events) WATCH_EVENTS="${2:?--watch-events needs a number}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
        --ref-ops) REF_OPS="${2:?--ref-ops needs a number}"; shift 2 ;;
        --report) REPORT="${2:?--report needs a kept work dir}"; shift 2 ;;
        --subnet) SUBNET="${2:?--subnet needs A.B.C}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "scale.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ -n "$REPORT" ]]; then
    [[ -f "$REPORT/params.env" ]] ||
        { echo "scale.sh: $REPORT/params.env not found (not a work dir kept with --keep)" >&2; exit 2; }
    # shellcheck disable=SC1091  # the run's own options and readings
    source "$REPORT/params.env"
fi
WATCHERS="${WATCHERS:-$NODES}"
REF_OPS="${REF_OPS:-$(( PODS < 5000 ? PODS : 5000 ))}"
for v in NODES PODS PODS_PER_RS CONCURRENCY CREATORS PROBE_RATE WATCH_EVENTS TIMEOUT REF_OPS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 )); then
        opt=${v,,}; echo "scale.sh: --${opt//_/-} must be a positive number" >&2; exit 2
    fi
done
[[ "$WATCHERS" =~ ^[0-9]+$ ]] || { echo "scale.sh: --watchers must be a number (0: skip)" >&2; exit 2; }
[[ "$SUBNET" =~ ^127\.[0-9]+\.[0-9]+$ ]] || { echo "scale.sh: --subnet must be a loopback /24 like 127.77.6" >&2; exit 2; }
[[ "$SERVERS" == 1 || "$SERVERS" == 3 ]] || { echo "scale.sh: --servers must be 1 or 3" >&2; exit 2; }
(( NODES <= 10000 && PODS <= 100000 && WATCHERS <= 10000 )) ||
    { echo "scale.sh: at most 10000 nodes, 100000 pods, 10000 watchers" >&2; exit 2; }

KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
if [[ -z "$REPORT" ]]; then
if (( EUID != 0 )); then
    echo "scale.sh: needs root (rke2 server runs containerd); run it as root" >&2
    exit 1
fi
for tool in etcd cargo awk ss "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "scale.sh: ${tool:-kubectl} is not installed" >&2; exit 1; }
done
# every watch and every pooled request is a socket of the load generator
NOFILE_NEEDED=$(( WATCHERS + 2000 ))
if (( $(ulimit -n) < NOFILE_NEEDED )); then
    ulimit -n "$NOFILE_NEEDED" 2>/dev/null ||
        { echo "scale.sh: open file limit $(ulimit -n) < $NOFILE_NEEDED and cannot be raised" >&2; exit 1; }
fi
fi

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup --
WORK=""
RKE2_PIDS=()       # server K at index K-1
ETCD_PIDS=()
CTRD_PIDS=()
DATAS=()
HOLLOW_PID=""
GEN_PID=""         # the load generator or the reference, whichever runs
NAP_PID=""

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
zombie() { [[ "$(ps -o stat= -p "$1" 2>/dev/null)" == Z* ]]; }

# stop_pid PID: SIGTERM, wait up to STOP_GRACE s, then SIGKILL. Waits for exit.
stop_pid() {
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    if alive "$pid" && ! zombie "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < STOP_GRACE * 10; i++ )); do
            alive "$pid" || break
            zombie "$pid" && break
            sleep 0.1
        done
        if alive "$pid" && ! zombie "$pid"; then
            log "pid $pid ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do alive "$pid" || break; sleep 0.1; done   # not our child
}

# stop_all: helpers, then every server at once (SIGTERM to all, so no server
# waits for an etcd quorum the others already took down), then their etcd
# and containerd children, then `rke2 killall` per data dir.
stop_all() {
    local p d
    stop_pid "$GEN_PID"; GEN_PID=""
    stop_pid "$HOLLOW_PID"; HOLLOW_PID=""
    for p in "${RKE2_PIDS[@]}"; do
        if alive "$p"; then kill -TERM "$p" 2>/dev/null || true; fi
    done
    for p in "${RKE2_PIDS[@]}"; do stop_pid "$p"; done
    for p in "${ETCD_PIDS[@]}" "${CTRD_PIDS[@]}"; do stop_pid "$p"; done
    RKE2_PIDS=(); ETCD_PIDS=(); CTRD_PIDS=()
    for d in "${DATAS[@]}"; do
        if [[ -d "$d" ]]; then
            "$RKE2" killall --data-dir "$d" >/dev/null 2>&1 || log "rke2 killall --data-dir $d failed"
        fi
    done
    DATAS=()
}

cleanup() {
    local rc=$?
    trap - EXIT ERR
    trap '' INT TERM   # a second Ctrl-C must not cut the cleanup short
    if [[ -n "$NAP_PID" ]]; then kill -TERM "$NAP_PID" 2>/dev/null || true; wait "$NAP_PID" 2>/dev/null || true; fi
    if (( rc != 0 )) && [[ -n "$WORK" && -f "$WORK/s1/rke2.log" ]]; then
        log "--- tail of server 1's log"; tail -n 25 "$WORK/s1/rke2.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
        if [[ -f "$WORK/hollow.err" ]]; then log "--- tail of the hollow nodes' log"; tail -n 5 "$WORK/hollow.err" >&2 || true; fi
    fi
    stop_all
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ -n "$(awk -v d="$WORK/" 'index($5, d) == 1' /proc/self/mountinfo)" ]]; then
            log "mounts left under $WORK, not removing it"
        elif (( KEEP )); then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "command failed (line $LINENO): $BASH_COMMAND"' ERR
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
if (( BUILD )) && [[ -z "$REPORT" ]]; then
    log "building: cargo build --release -p rke2 -p rke2-hollow-nodes -p rke2-bench-api (target dir $TARGET_DIR)"
    cargo build --release -p rke2 -p rke2-hollow-nodes -p rke2-bench-api >&2
fi
RKE2="$TARGET_DIR/release/rke2"
HOLLOW="$TARGET_DIR/release/rke2-hollow-nodes"
LOADGEN="$TARGET_DIR/release/rke2-scale-load"
REFGEN="$TARGET_DIR/release/rke2-bench-api"
if [[ -z "$REPORT" ]]; then
for b in "$RKE2" "$HOLLOW" "$LOADGEN" "$REFGEN"; do
    [[ -x "$b" ]] || die "$b not found (build it, or drop --no-build)"
done

addr() { echo "$SUBNET.$((10 + $1))"; }
for (( k = 1; k <= SERVERS; k++ )); do
    for port in 6443 9345 2379 2380 10250; do
        if ss -Hltn "src $(addr "$k"):$port" 2>/dev/null | grep -q .; then
            die "$(addr "$k"):$port is already in use"
        fi
    done
done

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)   # other jobs on the machine skew the figures
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-scale-bench.XXXXXX")"
KC="$WORK/s1/kubeconfig.yaml"
# the run's options and readings, for --report
save() { local v; for v in "$@"; do printf '%s=%q\n' "$v" "${!v}" >>"$WORK/params.env"; done; }
RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
RUN_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    RUN_COMMIT="$RUN_COMMIT (work tree had uncommitted changes)"
fi
BINARIES="\`$RKE2\` (built $(date -u -r "$RKE2" '+%Y-%m-%d %H:%M UTC')), \`$HOLLOW\` (built $(date -u -r "$HOLLOW" '+%H:%M')), \`$LOADGEN\`, \`$REFGEN\`"
save SERVERS NODES PODS PODS_PER_RS CONCURRENCY CREATORS PROBE_RATE WATCHERS WATCH_EVENTS \
    WATCH_RATE REF_OPS TIMEOUT LOAD_AT_START ARGS RUN_DATE RUN_COMMIT BINARIES

now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
past() { awk -v s="$1" -v n="$(now)" -v d="$2" 'BEGIN { exit !(n - s > d) }'; }
# nap SECONDS: a `sleep` child waited for with `wait`, which a trapped
# signal interrupts at once.
nap() {
    sleep "$1" &
    NAP_PID=$!
    wait "$NAP_PID" 2>/dev/null || true
    NAP_PID=""
}
kc() { "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=60s "$@"; }
child_named() { # PARENT COMM: pid of PARENT's child named COMM
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        if [[ "$(cat /proc/"$c"/comm 2>/dev/null)" == "$2" ]]; then echo "$c"; return 0; fi
    done
}
mb() { # PID FIELD (VmRSS or VmHWM): MiB
    awk -v f="$2:" '$1 == f { printf "%.0f", $2 / 1024; found = 1 } END { if (!found) print "n/a" }' \
        "/proc/$1/status" 2>/dev/null || echo n/a
}
ticks() { # PID: utime+stime
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- servers --
TOKEN="scale-bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
SERVER_URLS=()
start_server() { # K
    local k=$1 a dir
    a=$(addr "$k")
    dir="$WORK/s$k"
    mkdir -p "$dir"
    {
        echo "token: \"$TOKEN\""
        (( k > 1 )) && echo "server: https://$(addr 1):9345"
        # Room for a /24 per node up to 4,096 nodes (the default /16 has
        # 256), clear of the default service CIDR 10.43.0.0/16.
        echo "cluster-cidr: 10.128.0.0/12"
        echo "disable:"
        echo "  - rke2-coredns"
        echo "  - rke2-ingress-nginx"
        echo "  - rke2-metrics-server"
    } >"$dir/config.yaml"
    CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 CONTAINERD_HTTPS_PROXY=http://127.0.0.1:9 \
        "$RKE2" server --config "$dir/config.yaml" --data-dir "$dir/data" \
        --write-kubeconfig "$dir/kubeconfig.yaml" --bind-address "$a" --node-ip "$a" \
        --node-name "scale-server-$k" >>"$dir/rke2.log" 2>&1 &
    RKE2_PIDS+=("$!")
    DATAS+=("$dir/data")
    SERVER_URLS+=("https://$a:6443")
}
wait_server() { # K: /readyz through its own address, then its etcd child
    local k=$1 t0 pid
    pid=${RKE2_PIDS[k - 1]}
    t0=$(now)
    until [[ -s "$KC" ]] && kc --server "https://$(addr "$k"):6443" get --raw /readyz >/dev/null 2>&1; do
        alive "$pid" || die "server $k exited before it was ready (log: $WORK/s$k/rke2.log)"
        past "$t0" "$DEADLINE" && die "server $k not ready within ${DEADLINE}s"
        nap 0.5
    done
    ETCD_PIDS+=("$(child_named "$pid" etcd)")
    CTRD_PIDS+=("$(child_named "$pid" containerd)")
    [[ -n "${ETCD_PIDS[k - 1]}" ]] || die "no etcd child under server $k (pid $pid)"
    log "  server $k ready after $(sub "$(now)" "$t0") s (pid $pid, etcd ${ETCD_PIDS[k - 1]})"
}

log "starting $SERVERS server(s) on $SUBNET.11..$((10 + SERVERS)) (work dir $WORK)"
for (( k = 1; k <= SERVERS; k++ )); do
    start_server "$k"
    wait_server "$k"
done
t0=$(now)
until [[ "$(kc get nodes --no-headers 2>/dev/null | awk '$1 ~ /^scale-server-/ && $2 == "Ready"' | wc -l)" == "$SERVERS" ]]; do
    past "$t0" "$DEADLINE" && die "server nodes not Ready within ${DEADLINE}s"
    nap 0.5
done
PIDARGS=()
for (( k = 1; k <= SERVERS; k++ )); do
    PIDARGS+=(--pid "rke2-$k=${RKE2_PIDS[k - 1]}" --pid "etcd-$k=${ETCD_PIDS[k - 1]}")
done
SRVARGS=()
for u in "${SERVER_URLS[@]}"; do SRVARGS+=(--server "$u"); done

# ----------------------------------------------------------- hollow nodes --
log "hollow nodes: $NODES, writes in flight $CONCURRENCY"
t_hollow=$(now)
"$HOLLOW" --kubeconfig "$KC" "${SRVARGS[@]}" --nodes "$NODES" --prefix hollow- \
    --concurrency "$CONCURRENCY" >"$WORK/hollow.out" 2>"$WORK/hollow.err" &
HOLLOW_PID=$!
ready_hollow() { kc get nodes -l rke2.io/hollow-node=true --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l; }
REG_DEADLINE=$(( 120 + NODES / 5 ))
while :; do
    n=$(ready_hollow)
    (( n >= NODES )) && break
    alive "$HOLLOW_PID" || die "rke2-hollow-nodes exited (log: $WORK/hollow.err)"
    past "$t_hollow" "$REG_DEADLINE" && die "only $n of $NODES hollow nodes Ready after ${REG_DEADLINE}s"
    nap 2
done
REGISTER_S=$(sub "$(now)" "$t_hollow")
save REGISTER_S
log "  all $NODES hollow nodes Ready after $REGISTER_S s"
nap 10    # a round of lease renewals before the ramp
kill -USR1 "$HOLLOW_PID"   # period0: registration

# ------------------------------------------------------------------- ramp --
log "ramp: $PODS pods as ReplicaSets of $PODS_PER_RS, $CREATORS creates in flight, probe $PROBE_RATE/s"
"$LOADGEN" --kubeconfig "$KC" "${SRVARGS[@]}" --pods "$PODS" --pods-per-rs "$PODS_PER_RS" \
    --concurrency "$CREATORS" --probe-rate "$PROBE_RATE" --timeout "$TIMEOUT" \
    "${PIDARGS[@]}" --pid "hollow=$HOLLOW_PID" >"$WORK/ramp.tsv" 2> >(tee "$WORK/ramp.err" >&2) &
GEN_PID=$!
rc=0; wait "$GEN_PID" || rc=$?
GEN_PID=""
(( rc == 0 )) || die "the load generator failed (exit $rc)"
kill -USR1 "$HOLLOW_PID"   # period1: ramp

# ----------------------------------------------------------- steady state --
log "steady state: ${SETTLE}s, then CPU over 20 s and RSS"
nap "$SETTLE"
declare -A T0 STEADY_CPU RSS HWM
PROCS=()
for (( k = 1; k <= SERVERS; k++ )); do
    PROCS+=("rke2-$k:${RKE2_PIDS[k - 1]}" "etcd-$k:${ETCD_PIDS[k - 1]}")
done
PROCS+=("hollow:$HOLLOW_PID")
for p in "${PROCS[@]}"; do T0[${p%%:*}]=$(ticks "${p#*:}"); done
nap 20
for p in "${PROCS[@]}"; do
    l=${p%%:*}; pid=${p#*:}
    STEADY_CPU[$l]=$(awk -v a="${T0[$l]}" -v b="$(ticks "$pid")" 'BEGIN { printf "%.0f", (b - a) / 20 }')   # % of one CPU
    RSS[$l]=$(mb "$pid" VmRSS); HWM[$l]=$(mb "$pid" VmHWM)
done

# --------------------------------------------------------------- fan-out --
if (( WATCHERS > 0 )); then
    log "watch fan-out: $WATCHERS watchers, $WATCH_EVENTS events at $WATCH_RATE/s"
    "$LOADGEN" --kubeconfig "$KC" "${SRVARGS[@]}" --pods 0 --watchers "$WATCHERS" \
        --watch-events "$WATCH_EVENTS" --watch-rate "$WATCH_RATE" \
        "${PIDARGS[@]}" --pid "hollow=$HOLLOW_PID" >"$WORK/watch.tsv" 2> >(tee "$WORK/watch.err" >&2) &
    GEN_PID=$!
    rc=0; wait "$GEN_PID" || rc=$?
    GEN_PID=""
    (( rc == 0 )) || die "the fan-out phase failed (exit $rc)"
else
    : >"$WORK/watch.tsv"
fi
for p in "${PROCS[@]}"; do
    l=${p%%:*}
    HWM[$l]=$(mb "${p#*:}" VmHWM)
    printf '%s\t%s\t%s\t%s\n' "$l" "${STEADY_CPU[$l]}" "${RSS[$l]}" "${HWM[$l]}" >>"$WORK/steady.tsv"
done
kill -USR1 "$HOLLOW_PID"   # period2: steady state and fan-out

# -------------------------------------------------------------- reference --
# (awk reads everything: with pipefail, an early exit would SIGPIPE kubectl)
pod=$(kc get pods -n scale --no-headers -o custom-columns=N:.metadata.name | awk 'NR == 1 { print }')
[[ -n "$pod" ]] || die "no pod left in namespace scale to size the reference"
POD_BYTES=$(kc get --raw "/api/v1/namespaces/scale/pods/$pod" | wc -c)
save POD_BYTES
# the raw value is the JSON of a ConfigMap whose payload has --size bytes,
# about 110 bytes of envelope around it
REF_SIZE=$(( POD_BYTES > 300 ? POD_BYTES - 110 : 200 ))
log "reference: $REF_OPS raw etcd puts of ~$POD_BYTES bytes (a stored Running pod), $CONCURRENCY in flight, against server 1's etcd"
"$REFGEN" --etcd-endpoint "https://$(addr 1):2379" --etcd-tls-dir "${DATAS[0]}/server/tls/etcd" \
    --kubeconfig "$KC" --concurrency "$CONCURRENCY" --ops "$REF_OPS" --size "$REF_SIZE" \
    --phases create --namespace scale-ref --server-pid "${RKE2_PIDS[0]}" --etcd-pid "${ETCD_PIDS[0]}" \
    >"$WORK/ref.tsv" 2> >(tee "$WORK/ref.err" >&2) &
GEN_PID=$!
rc=0; wait "$GEN_PID" || rc=$?
GEN_PID=""
# a failed reference leaves its rows n/a; the rest of the table stands
(( rc == 0 )) || log "the reference (rke2-bench-api) failed (exit $rc); its rows are n/a"
kill -USR1 "$HOLLOW_PID"   # period3: the reference
nap 1
stop_pid "$HOLLOW_PID"; HOLLOW_PID=""
grep -q '^RESULT	total' "$WORK/hollow.out" || die "no final results from rke2-hollow-nodes"
LOAD_AT_END=$(cut -d" " -f1-3 /proc/loadavg)
save LOAD_AT_END
else
    # --report: the kept run's readings (what it did not record is n/a)
    WORK=$REPORT
    KEEP=1
    declare -A STEADY_CPU RSS HWM
    PROCS=()
    for (( k = 1; k <= SERVERS; k++ )); do PROCS+=("rke2-$k:" "etcd-$k:"); done
    PROCS+=("hollow:")
    for p in "${PROCS[@]}"; do l=${p%%:*}; STEADY_CPU[$l]=n/a; RSS[$l]=n/a; HWM[$l]=n/a; done
    if [[ -f "$WORK/steady.tsv" ]]; then
        while IFS=$'\t' read -r l c r h; do STEADY_CPU[$l]=$c; RSS[$l]=$r; HWM[$l]=$h; done <"$WORK/steady.tsv"
    fi
    for f in ramp.tsv hollow.out; do
        [[ -f "$WORK/$f" ]] || die "$WORK/$f missing: the run did not get past the ramp"
    done
    [[ -f "$WORK/watch.tsv" ]] || : >"$WORK/watch.tsv"
    [[ -f "$WORK/ref.tsv" ]] || : >"$WORK/ref.tsv"
fi
POD_BYTES=${POD_BYTES:-n/a}
ERRLINES=0
for (( k = 1; k <= SERVERS; k++ )); do
    ERRLINES=$(( ERRLINES + $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/s$k/rke2.log" | grep -cE ' (ERROR|WARN) ' || true) ))
done
CIDR_WARN=$(cat "$WORK"/s*/rke2.log 2>/dev/null | grep -c 'no free pod CIDR' || true)
# the most frequent WARN/ERROR messages of all servers (fields cut off)
TOP_WARN=$(cat "$WORK"/s*/rke2.log 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -E ' (ERROR|WARN) ' |
    sed -E 's/^[^ ]+ +//; s/\{[^}]*\}//g; s/ [A-Za-z_.]+=.*//' | sort | uniq -c | sort -rn | awk 'NR <= 6' || true)

# ------------------------------------------------------------------ table --
val() { awk -F'\t' -v k="$2" '$1 == "VALUE" && $2 == k { print $3; exit }' "$1"; }
latf() { # FILE NAME FIELD(n|err|p50|p99|max)
    awk -F'\t' -v k="$2" -v f="$3" 'BEGIN { c["n"] = 3; c["err"] = 4; c["p50"] = 5; c["p99"] = 6; c["max"] = 7 }
        $1 == "LAT" && $2 == k { print $(c[f]); exit }' "$1"
}
hol() { # PERIOD KIND FIELD
    awk -F'\t' -v p="$1" -v k="$2" -v f="$3" 'BEGIN { c["n"] = 4; c["err"] = 5; c["p50"] = 6; c["p99"] = 7; c["max"] = 8 }
        $1 == "RESULT" && $2 == p && $3 == k { print $(c[f]); found = 1; exit } END { if (!found) print "n/a" }' "$WORK/hollow.out"
}
cnt() { awk -F'\t' -v p="$1" -v k="$2" '$1 == "COUNT" && $2 == p && $3 == k { print $4; exit }' "$WORK/hollow.out"; }
ref() { # SIDE-PREFIX FIELD(5 ops/s, 6 p50, 7 p99)
    awk -F'\t' -v s="$1" -v f="$2" '$1 == "RESULT" && $2 == "create" && index($3, s) == 1 { print $(f); exit }' "$WORK/ref.tsv"
}
s_of() { awk -v x="$1" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else printf "%.2f", x / 1000 }'; }
ms() { awk -v x="$1" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else if (x < 10) printf "%.1f", x; else printf "%.0f", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
ops() { awk -v x="$1" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else printf "%.0f", x }'; }
under() { awk -v x="$1" -v l="$2" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else print (x + 0 < l) ? "met" : "NOT met" }'; }

R=$WORK/ramp.tsv
W=$WORK/watch.tsv
PROBE_P99=$(latf "$R" ramp.probe-all-writes p99)
RS_P99=$(latf "$R" ramp.rs-create p99)
HOL_RAMP_P99=$(hol period1 all-writes p99)
HOL_STEADY_P99=$(hol period2 all-writes p99)
WATCH_WRITE_P99=$(latf "$W" watch.watch-write p99)
RAW_OPS=$(ref "raw etcd put" 5); RAW_P50=$(ref "raw etcd put" 6); RAW_P99=$(ref "raw etcd put" 7)
API_OPS=$(ref "API POST" 5); API_P50=$(ref "API POST" 6); API_P99=$(ref "API POST" 7)
STORE_OPS=$(ref "raw txn (store)" 5); STORE_P99=$(ref "raw txn (store)" 7)
WORST_P99=$(printf '%s\n' "$PROBE_P99" "$RS_P99" "$HOL_RAMP_P99" | awk '$1 != "n/a" && $1 != "" { if ($1 > m) m = $1 } END { print m + 0 }')

ROWS=()   # label|value|target
row() { ROWS+=("$1|$2|$3"); }
row "hollow nodes: start -> all $NODES Ready (s)" "$REGISTER_S" "-"
row "ReplicaSets created ($(val "$R" ramp.replicasets) x $PODS_PER_RS pods) (s)" "$(val "$R" ramp.rs_created_s)" "-"
if [[ "$(val "$R" ramp.all_running_s)" == n/a ]]; then
    row "pods Running when the ramp timed out after $(val "$R" ramp.timed_out_s) s" "$(val "$R" ramp.running_at_end) of $PODS" "-"
else
    row "first create -> all $PODS pods Running (s)" "$(val "$R" ramp.all_running_s)" "-"
fi
row "pods created per second (RS controller)" "$(val "$R" ramp.create_rate)" "-"
row "pods bound per second (scheduler)" "$(val "$R" ramp.bind_rate)" "-"
row "pods Running per second (hollow nodes)" "$(val "$R" ramp.running_rate)" "-"
row "pod startup p50, seen -> Running (s)" "$(s_of "$(latf "$R" ramp.pod-startup p50)")" "-"
row "pod startup p99, seen -> Running (s)" "$(s_of "$(latf "$R" ramp.pod-startup p99)")" "< 5 s: $(under "$(s_of "$(latf "$R" ramp.pod-startup p99)")" 5)"
row "scheduling p99, seen -> bound (s)" "$(s_of "$(latf "$R" ramp.pod-scheduling p99)")" "-"
row "mutating p99, probe (ConfigMap create/patch/delete) in the ramp (ms)" "$(ms "$PROBE_P99")" "< 1000 ms: $(under "$PROBE_P99" 1000)"
row "mutating p99, ReplicaSet creates (ms)" "$(ms "$RS_P99")" "< 1000 ms: $(under "$RS_P99" 1000)"
row "mutating p99, hollow nodes' writes in the ramp (ms)" "$(ms "$HOL_RAMP_P99")" "< 1000 ms: $(under "$HOL_RAMP_P99" 1000)"
row "mutating p99, hollow nodes' writes, steady + fan-out (ms)" "$(ms "$HOL_STEADY_P99")" "< 1000 ms: $(under "$HOL_STEADY_P99" 1000)"
if (( WATCHERS > 0 )); then
    row "watch delivery p50, create sent -> event, $(val "$W" watch.established)/$WATCHERS watchers (ms)" "$(ms "$(latf "$W" watch.delivery p50)")" "-"
    row "watch delivery p99, create sent -> event (ms)" "$(ms "$(latf "$W" watch.delivery p99)")" "-"
    row "create sent -> the last watcher has it, p99 (ms)" "$(ms "$(latf "$W" watch.last-watcher p99)")" "-"
    row "deliveries missing" "$(val "$W" watch.missing)" "-"
    row "mutating p99 with $WATCHERS watchers open (ms)" "$(ms "$WATCH_WRITE_P99")" "< 1000 ms: $(under "$WATCH_WRITE_P99" 1000)"
fi
row "reference: raw etcd put p99, $REF_OPS x ${POD_BYTES} B, $CONCURRENCY in flight (ms)" "$(ms "$RAW_P99")" "reference"
row "ratio worst mutating p99 in the ramp / raw etcd put p99" "$(ratio "$WORST_P99" "$RAW_P99")" "-"

CTX=()    # label|value
ctx() { CTX+=("$1|$2"); }
ctx "hollow lease renewals ok / failed (all periods)" "$(cnt total lease_ok) / $(cnt total lease_failed)"
ctx "hollow heartbeats ok / failed" "$(cnt total heartbeat_ok) / $(cnt total heartbeat_failed)"
ctx "pods reported Running / failed" "$(cnt total pods_reported) / $(cnt total pods_report_failed)"
for kind in lease-update node-status pod-status; do
    ctx "hollow $kind in the ramp: n, p50 / p99 / max (ms)" "$(hol period1 "$kind" n), $(ms "$(hol period1 "$kind" p50)") / $(ms "$(hol period1 "$kind" p99)") / $(ms "$(hol period1 "$kind" max)")"
done
ctx "hollow writes in registration: n, p50 / p99 (ms)" "$(hol period0 all-writes n), $(ms "$(hol period0 all-writes p50)") / $(ms "$(hol period0 all-writes p99)")"
ctx "hollow writes failed: registration / ramp / steady" "$(hol period0 all-writes err) / $(hol period1 all-writes err) / $(hol period2 all-writes err)"
for kind in probe-create probe-patch probe-delete; do
    ctx "load $kind in the ramp: n, p50 / p99 / max (ms)" "$(latf "$R" "ramp.$kind" n), $(ms "$(latf "$R" "ramp.$kind" p50)") / $(ms "$(latf "$R" "ramp.$kind" p99)") / $(ms "$(latf "$R" "ramp.$kind" max)")"
done
ctx "bound -> Running p50 / p99 (s)" "$(s_of "$(latf "$R" ramp.bound-to-running p50)") / $(s_of "$(latf "$R" ramp.bound-to-running p99)")"
for p in "${PROCS[@]}"; do
    l=${p%%:*}
    ctx "CPU s in the ramp: $l" "$(val "$R" "ramp.cpu.${l}_s")"
done
ctx "CPU s in the ramp: load generator" "$(val "$R" ramp.cpu.load-generator-total_s)"
ctx "machine busy in the ramp (% of $(nproc) CPUs)" "$(val "$R" ramp.cpu.machine_busy_pct)"
for p in "${PROCS[@]}"; do
    l=${p%%:*}
    ctx "CPU steady state (% of one CPU): $l" "${STEADY_CPU[$l]}"
done
if (( WATCHERS > 0 )); then
    ctx "fan-out: watches opened in (s)" "$(val "$W" watch.open_s)"
    ctx "fan-out: deliveries per second" "$(val "$W" watch.deliveries_per_s)"
    for (( k = 1; k <= SERVERS; k++ )); do
        ctx "CPU s in the fan-out ($(val "$W" watch.wall_s) s): rke2-$k / etcd-$k" "$(val "$W" "watch.cpu.rke2-${k}_s") / $(val "$W" "watch.cpu.etcd-${k}_s")"
    done
    ctx "machine busy in the fan-out (%)" "$(val "$W" watch.cpu.machine_busy_pct)"
fi
for p in "${PROCS[@]}"; do
    l=${p%%:*}
    ctx "RSS steady / peak (MB): $l" "${RSS[$l]} / ${HWM[$l]}"
done
ctx "reference raw etcd put: ops/s, p50 / p99 (ms)" "$(ops "$RAW_OPS"), $(ms "$RAW_P50") / $(ms "$RAW_P99")"
ctx "same size via the API (POST ConfigMap): ops/s, p50 / p99 (ms)" "$(ops "$API_OPS"), $(ms "$API_P50") / $(ms "$API_P99")"
ctx "raw txn (what the store does per create): ops/s, p99 (ms)" "$(ops "$STORE_OPS"), $(ms "$STORE_P99")"
ctx "stored Running pod (bytes)" "$POD_BYTES"
ctx "server log WARN/ERROR lines (of them 'no free pod CIDR')" "$ERRLINES ($CIDR_WARN)"

commit=${RUN_COMMIT:-unknown}
date_s=${RUN_DATE:-n/a}
kubectl_ver=$("$KUBECTL" version --client 2>/dev/null | awk '/Client Version/ { print $3 }')
etcd_ver=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
rustc_ver=$(rustc --version 2>/dev/null | awk '{ print $2 }')
what="$SERVERS server(s), $NODES hollow nodes, $PODS pods ($PODS_PER_RS per ReplicaSet), hollow writes in flight $CONCURRENCY, $CREATORS ReplicaSet creates in flight, probe $PROBE_RATE/s, $WATCHERS watchers"

echo
printf 'rke2 scale: %s; %s, nproc %s, commit %s\n' "$what" "$date_s" "$(nproc)" "$commit"
printf '%-78s %12s   %s\n' "measurement" "value" "target"
for r in "${ROWS[@]}"; do
    IFS='|' read -r l v t <<<"$r"
    printf '%-78s %12s   %s\n' "$l" "$v" "$t"
done
echo
for r in "${CTX[@]}"; do
    IFS='|' read -r l v <<<"$r"
    printf '%-78s %s\n' "$l" "$v"
done

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 scale: hollow nodes and pods"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $(nproc), $(uname -sr), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); load average at start ${LOAD_AT_START:-n/a}, at the end ${LOAD_AT_END:-n/a}"
    echo "- commit: $commit; rustc $rustc_ver"
    echo "- binaries: ${BINARIES:-n/a}"
    echo "- etcd $etcd_ver (the servers' own children, TLS), kubectl $kubectl_ver (waits only)"
    echo "- $what"
    echo "- command: \`bench/scale.sh${ARGS:+ $ARGS}\`"
    if [[ -n "$REPORT" ]]; then
        echo "- table rendered $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/scale.sh --report\` from the kept work dir; rows the run did not record say n/a"
    fi
    echo
    echo "| measurement | value | target |"
    echo "| --- | ---: | --- |"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r l v t <<<"$r"
        echo "| $l | $v | $(sed -E 's/(NOT met|met)$/**\1**/' <<<"$t") |"
    done
    echo
    echo "Context:"
    echo
    echo "| figure | value |"
    echo "| --- | ---: |"
    for r in "${CTX[@]}"; do
        IFS='|' read -r l v <<<"$r"
        echo "| $l | $v |"
    done
    if [[ -n "$TOP_WARN" ]]; then
        echo
        echo "Most frequent WARN/ERROR messages in the server logs (count, message without its fields):"
        echo
        while read -r c m; do echo "- $c: \`$m\`"; done <<<"$TOP_WARN"
    fi
    echo
    echo "What is timed: every write of the hollow nodes and the load generator from"
    echo "before it is sent until its answer (failed ones included). Pods are followed"
    echo "through one watch on their namespace: seen = first event, bound = first event"
    echo "with spec.nodeName, Running = first event with phase Running and Ready=True."
    echo "The probe starts a ConfigMap create every 1/$PROBE_RATE s (open loop) and then"
    echo "patches and deletes it. Fan-out: latency = arrival at a watcher minus the moment"
    echo "its create was sent. The reference runs after the rest with the hollow nodes"
    echo "still renewing their leases (rke2-bench-api \`--phases create\`: raw puts of"
    echo "a ConfigMap JSON the size of a stored Running pod, then the same through the"
    echo "API, then the store's txn), $CONCURRENCY in flight, on server 1's etcd."
} >"$OUT"
log "wrote $OUT"
