#!/usr/bin/env bash
# Scheduler throughput benchmark for rke2 (the Rust re-implementation).
#
# One `rke2 server` on a loopback address (fresh data dir), 100 fake Nodes
# (created through the API, Ready, with Leases renewed every 10 s like a
# kubelet's), then 1,000 Pods created as fast as a few parallel `kubectl
# create` processes can. A `kubectl get pods -w` running beside it is
# timestamped line by line, which gives per pod: creation seen -> binding seen.
# Measures
#   1. scheduling throughput: pods / (first pod seen -> last pod bound);
#   2. p50 / p99 / max of creation -> binding per pod;
#   3. the reference, same run, same server: the same pods created again in
#      another namespace with a schedulerName nobody serves: the API's create
#      rate alone (what the creators can push).
# Prints a table next to the target and writes it as Markdown to
# bench/results/scheduler.md.
#
# Usage: bench/scheduler.sh [--pods N] [--nodes N] [--creators N] [--no-build]
#                           [--out FILE] [--keep]
# Needs etcd, kubectl, perl. Not part of the test suite.

set -euo pipefail

PODS=1000
NODES=100
CREATORS=4         # parallel `kubectl create -f` processes
BUILD=1
KEEP=0
ADDR=127.77.2.10   # loopback address of the server (startup.sh uses 127.77.0.x)
POLL=0.05
DEADLINE=120       # seconds until a wait counts as failed
LEASE_EVERY=10     # seconds between renewals of the fake nodes' Leases
STOP_GRACE=15

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/scheduler.md"
ARGS="$*"

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --pods) PODS="${2:?--pods needs a number}"; shift 2 ;;
        --nodes) NODES="${2:?--nodes needs a number}"; shift 2 ;;
        --creators) CREATORS="${2:?--creators needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "scheduler.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in PODS NODES CREATORS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 || ${!v} > 100000 )); then
        echo "scheduler.sh: --${v,,} must be a positive number" >&2; exit 2
    fi
done
(( NODES <= 9999 && CREATORS <= 64 )) || { echo "scheduler.sh: at most 9999 nodes, 64 creators" >&2; exit 2; }

KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in etcd cargo awk perl ss "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "scheduler.sh: ${tool:-kubectl} is not installed" >&2; exit 1; }
done

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup --
PIDS=()            # every process this script started (rke2, its etcd, helpers)
WORK=""

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# stop_pid PID: SIGTERM, wait up to STOP_GRACE s, then SIGKILL. Waits for exit.
stop_pid() {
    local pid=$1 i
    if alive "$pid" && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < STOP_GRACE * 10; i++ )); do
            alive "$pid" || break
            [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == Z* ]] && break
            sleep 0.1
        done
        if alive "$pid" && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]; then
            log "pid $pid ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do alive "$pid" || break; sleep 0.1; done   # not our child
    local p keep=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    if (( rc != 0 )) && [[ -n "$WORK" && -f "$WORK/rke2.log" ]]; then
        log "--- tail of $WORK/rke2.log"; tail -n 20 "$WORK/rke2.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
    fi
    # helpers (started last) first, then rke2 before its etcd child
    for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do
        [[ ${PIDS[i]} == "${RKE2_PID:-}" || ${PIDS[i]} == "${ETCD_PID:-}" ]] && continue
        stop_pid "${PIDS[i]}"
    done
    [[ -n "${RKE2_PID:-}" ]] && stop_pid "$RKE2_PID"
    [[ -n "${ETCD_PID:-}" ]] && stop_pid "$ETCD_PID"
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if (( KEEP )); then log "kept $WORK"; else rm -rf "$WORK"; fi
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
if (( BUILD )); then
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="$TARGET_DIR/release/rke2"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"

for port in 6443 9345 2379 2380; do
    if ss -Hltn "src $ADDR:$port" 2>/dev/null | grep -q .; then die "$ADDR:$port is already in use"; fi
done

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)   # other jobs on the machine skew the figures
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-sched-bench.XXXXXX")"
KC="$WORK/kubeconfig.yaml"

# ---------------------------------------------------------------- helpers --
now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
past() { awk -v s="$1" -v n="$(now)" -v d="$2" 'BEGIN { exit !(n - s > d) }'; }
exec {IDLE_FD}<> <(:)
nap() { read -rt "$1" -u "$IDLE_FD" _ || true; }

kc() { "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=30s "$@"; }

etcd_child() {
    local parent=$1 c
    for c in $(cat /proc/"$parent"/task/*/children 2>/dev/null); do
        if [[ "$(cat /proc/"$c"/comm 2>/dev/null)" == etcd ]]; then echo "$c"; return 0; fi
    done
}

node_name() { printf 'fake-node-%04d' "$1"; }
utc_now() { date -u '+%Y-%m-%dT%H:%M:%SZ'; }
micro_now() { date -u '+%Y-%m-%dT%H:%M:%S.%6NZ'; }

# ------------------------------------------------------------------ server --
log "rke2 server on $ADDR (fresh data dir)"
"$RKE2" server --data-dir "$WORK/data" --write-kubeconfig "$KC" \
    --bind-address "$ADDR" --node-name bench-server >>"$WORK/rke2.log" 2>&1 &
RKE2_PID=$!
PIDS+=("$RKE2_PID")
t0=$(now)
until [[ -s "$KC" ]] && kc get nodes --no-headers 2>/dev/null | awk '$1 == "bench-server" && $2 == "Ready" { f = 1 } END { exit !f }'; do
    alive "$RKE2_PID" || die "rke2 server exited before its node was Ready"
    past "$t0" "$DEADLINE" && die "server not Ready within ${DEADLINE}s"
    nap 0.2
done
ETCD_PID=$(etcd_child "$RKE2_PID")
[[ -n "$ETCD_PID" ]] && PIDS+=("$ETCD_PID")
log "server Ready after $(sub "$(now)" "$t0")s"

# ------------------------------------------------------------ fake nodes --
# Nodes with their status in the create (a kubelet registers that way);
# any node not Ready afterwards gets its status patched.
gen_nodes() {
    local i n ts
    ts=$(utc_now)
    echo "apiVersion: v1"
    echo "kind: List"
    echo "items:"
    for (( i = 1; i <= NODES; i++ )); do
        n=$(node_name "$i")
        cat <<EOF
- apiVersion: v1
  kind: Node
  metadata:
    name: $n
    labels: {kubernetes.io/hostname: $n, kubernetes.io/os: linux, bench: fake}
  status:
    capacity: {cpu: "32", memory: 64Gi, pods: "110"}
    allocatable: {cpu: "32", memory: 64Gi, pods: "110"}
    conditions:
    - {type: Ready, status: "True", reason: KubeletReady, message: fake, lastHeartbeatTime: "$ts", lastTransitionTime: "$ts"}
EOF
    done
}
gen_leases() {
    local i n ts
    ts=$(micro_now)
    echo "apiVersion: v1"
    echo "kind: List"
    echo "items:"
    for (( i = 1; i <= NODES; i++ )); do
        n=$(node_name "$i")
        cat <<EOF
- apiVersion: coordination.k8s.io/v1
  kind: Lease
  metadata: {name: $n, namespace: kube-node-lease}
  spec: {holderIdentity: $n, leaseDurationSeconds: 40, renewTime: "$ts"}
EOF
    done
}
renew_leases() {
    gen_leases >"$WORK/leases.yaml"
    kc apply --server-side --force-conflicts --field-manager=bench-kubelet -f "$WORK/leases.yaml" >/dev/null
}
# lease_loop: renew every LEASE_EVERY s until TERM (run in the background)
lease_loop() {
    local stop=0
    trap 'stop=1' TERM
    while (( !stop )); do
        nap "$LEASE_EVERY"
        (( stop )) && break
        renew_leases 2>>"$WORK/leases.err" || echo "renewal failed at $(date -u +%T)" >>"$WORK/leases.err"
    done
}
ready_fake_nodes() {
    kc get nodes -l bench=fake --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l
}

log "creating $NODES fake nodes and their Leases"
gen_nodes >"$WORK/nodes.yaml"
kc create -f "$WORK/nodes.yaml" >/dev/null
renew_leases
lease_loop &
PIDS+=("$!")
ready=$(ready_fake_nodes)
STATUS_VIA="status in the create"
if (( ready < NODES )); then
    log "  $ready of $NODES Ready after the create (status dropped?); patching status/ of the others"
    STATUS_VIA="status/ patch ($ready of $NODES were Ready from the create)"
    ts=$(utc_now)
    patch="{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"fake\",\"lastHeartbeatTime\":\"$ts\",\"lastTransitionTime\":\"$ts\"}],\"allocatable\":{\"cpu\":\"32\",\"memory\":\"64Gi\",\"pods\":\"110\"},\"capacity\":{\"cpu\":\"32\",\"memory\":\"64Gi\",\"pods\":\"110\"}}}"
    kc get nodes -l bench=fake --no-headers | awk '$2 != "Ready" { print $1 }' |
        xargs -r -P 4 -I{} "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" \
            patch node {} --subresource=status --type=merge -p "$patch" >/dev/null
fi
t0=$(now)
until (( $(ready_fake_nodes) == NODES )); do
    past "$t0" 30 && die "only $(ready_fake_nodes) of $NODES fake nodes Ready"
    nap 0.5
done
log "  $NODES fake nodes Ready ($STATUS_VIA)"

# ---------------------------------------------------------------- the pods --
kc create namespace bench >/dev/null
kc create namespace bench-ref >/dev/null
# gen_pods NS SCHEDULER FILE-PREFIX: CREATORS files of about PODS/CREATORS pods each
gen_pods() {
    local ns=$1 sched=$2 pfx=$3 c i
    for (( c = 0; c < CREATORS; c++ )); do
        {
            echo "apiVersion: v1"
            echo "kind: List"
            echo "items:"
            for (( i = c + 1; i <= PODS; i += CREATORS )); do
                cat <<EOF
- apiVersion: v1
  kind: Pod
  metadata: {name: $(printf 'bench-pod-%05d' "$i"), namespace: $ns, labels: {app: bench}}
  spec:
    schedulerName: $sched
    terminationGracePeriodSeconds: 0
    containers:
    - name: pause
      image: registry.k8s.io/pause:3.10
      resources: {requests: {cpu: 10m, memory: 16Mi}}
EOF
            done
        } >"$pfx-$c.yaml"
    done
}
# create_all FILE-PREFIX: the CREATORS kubectl processes in parallel; sets
# CREATE_T (s from launch until all done)
create_all() {
    local pfx=$1 c t0 pids=() rc=0
    t0=$(now)
    for (( c = 0; c < CREATORS; c++ )); do
        "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=30s \
            create -f "$pfx-$c.yaml" >"$pfx-$c.out" 2>&1 &
        pids+=("$!")
        PIDS+=("$!")
    done
    for c in "${pids[@]}"; do wait "$c" || rc=1; stop_pid "$c"; done
    CREATE_T=$(sub "$(now)" "$t0")
    (( rc == 0 )) || { tail -n 5 "$pfx"-*.out >&2; die "a kubectl create failed"; }
}

gen_pods bench default-scheduler "$WORK/pods"
gen_pods bench-ref bench-nobody "$WORK/ref"

# The observer: every line of the pod watch, stamped with the local time
# (microseconds) the moment it arrives. Lines: "<t> <EVENT> <name> <node>".
WATCH="$WORK/watch.txt"
"$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" get pods -n bench -w --output-watch-events \
    -o 'custom-columns=EVENT:.type,NAME:.object.metadata.name,NODE:.object.spec.nodeName' --no-headers \
    > >(perl -MTime::HiRes=time -ne 'BEGIN { $| = 1 } printf "%.6f %s", time, $_' >"$WATCH") 2>"$WORK/watch.err" &
WATCH_PID=$!
PIDS+=("$WATCH_PID")
# a sentinel pod: the watch is live and the scheduler has both lists once it shows up bound
t0=$(now)
kc run bench-sentinel -n bench --image=registry.k8s.io/pause:3.10 --restart=Never >/dev/null
log "  sentinel pod created after $(sub "$(now)" "$t0")s" 
until awk '$3 == "bench-sentinel" && $4 != "<none>" { f = 1 } END { exit !f }' "$WATCH"; do
    alive "$WATCH_PID" || { cat "$WORK/watch.err" >&2; die "the pod watch exited"; }
    past "$t0" 30 && { cat "$WATCH" >&2; die "the sentinel pod was not seen bound within 30 s"; }
    nap 0.1
done
log "  sentinel pod seen bound after $(sub "$(now)" "$t0")s"
nap 1

log "creating $PODS pods ($CREATORS parallel kubectl create)"
create_all "$WORK/pods"
SCHED_CREATE_T=$CREATE_T
log "  creates done after ${CREATE_T}s"
t0=$(now)
bound_count() { awk '$2 != "DELETED" && $3 ~ /^bench-pod-/ && $4 != "<none>" { b[$3] = 1 } END { print length(b) }' "$WATCH"; }
until (( $(bound_count) >= PODS )); do
    past "$t0" "$DEADLINE" && die "only $(bound_count) of $PODS pods bound within ${DEADLINE}s of the creates"
    nap 0.2
done
nap 0.5
stop_pid "$WATCH_PID"

# per pod: first line seen (creation) and first line with a node (binding)
read -r FIRST LAST N_SEEN < <(awk '
    $3 !~ /^bench-pod-/ { next }
    !($3 in seen) { seen[$3] = $1 }
    $4 != "<none>" && !($3 in bound) { bound[$3] = $1 }
    END {
        first = ""; last = ""
        for (p in seen) if (first == "" || seen[p] < first) first = seen[p]
        for (p in bound) if (last == "" || bound[p] > last) last = bound[p]
        printf "%.6f %.6f %d\n", first, last, length(bound)
    }' "$WATCH")
awk '
    $3 !~ /^bench-pod-/ { next }
    !($3 in seen) { seen[$3] = $1 }
    $4 != "<none>" && !($3 in bound) { bound[$3] = $1; printf "%.6f\n", bound[$3] - seen[$3] }
' "$WATCH" | sort -g >"$WORK/lat.txt"
pct() { awk -v q="$1" '{ v[NR] = $1 } END { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; printf "%.3f", v[i] }' "$WORK/lat.txt"; }
P50=$(pct 0.50); P99=$(pct 0.99); PMAX=$(pct 1)
ZERO=$(awk '$1 == 0' "$WORK/lat.txt" | wc -l)   # first seen already bound
SPAN=$(sub "$LAST" "$FIRST")
THROUGHPUT=$(awk -v n="$N_SEEN" -v s="$SPAN" 'BEGIN { printf "%.0f", n / s }')
CREATE_RATE=$(awk -v n="$PODS" -v s="$SCHED_CREATE_T" 'BEGIN { printf "%.0f", n / s }')

# the API's own timestamps (whole seconds): creationTimestamp -> PodScheduled
kc get pods -n bench -l app=bench \
    -o jsonpath='{range .items[*]}{.metadata.creationTimestamp} {.status.conditions[?(@.type=="PodScheduled")].lastTransitionTime}{"\n"}{end}' |
    perl -MTime::Local -ne 'sub t { my ($y,$m,$d,$H,$M,$S) = $_[0] =~ /(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)/ or return; timegm($S,$M,$H,$d,$m-1,$y) }
        my ($c, $s) = split; next unless $s; printf "%d\n", t($s) - t($c)' | sort -g >"$WORK/lat-api.txt"
API_N=$(wc -l <"$WORK/lat-api.txt")
API_P99=$(awk '{ v[NR] = $1 } END { i = int(0.99 * NR + 0.999999); if (i < 1) i = 1; print (NR ? v[i] : "n/a") }' "$WORK/lat-api.txt")
API_MAX=$(tail -n 1 "$WORK/lat-api.txt")
# the scheduler's own pace: first to last "pod bound" line of the server log (µs stamps)
BIND_RATE=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/rke2.log" | grep 'pod bound pod=bench/bench-pod-' | awk '{ print $1 }' |
    perl -MTime::Local -ne '/(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(\.\d+)?Z/ and printf "%.6f\n", timegm($6, $5, $4, $3, $2 - 1, $1) + ($7 || 0)' |
    awk 'NR == 1 { f = $1 } { l = $1 } END { if (NR > 1 && l > f) printf "%.0f", (NR - 1) / (l - f); else printf "n/a" }')
log "  ${N_SEEN} pods bound ${SPAN}s after the first was seen: ${THROUGHPUT} pods/s; creation->binding p50 ${P50}s p99 ${P99}s max ${PMAX}s"

# ------------------------------------------------------------- reference --
log "reference: the same $PODS pods in bench-ref, schedulerName nobody serves"
create_all "$WORK/ref"
REF_T=$CREATE_T
REF_RATE=$(awk -v n="$PODS" -v s="$REF_T" 'BEGIN { printf "%.0f", n / s }')
unbound=$(kc get pods -n bench-ref -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c . || true)
(( unbound == 0 )) || log "  WARNING: $unbound reference pods got a node"
RATIO=$(awk -v a="$THROUGHPUT" -v b="$REF_RATE" 'BEGIN { printf "%.2f", a / b }')
log "  ${PODS} creates in ${REF_T}s: ${REF_RATE} pods/s"
LEASE_ERRS=$(grep -c 'renewal failed' "$WORK/leases.err" 2>/dev/null || true)
(( ${LEASE_ERRS:-0} == 0 )) || log "  WARNING: ${LEASE_ERRS} lease renewals failed"
UNREACH=$(kc get nodes -l bench=fake --no-headers | awk '$2 != "Ready"' | wc -l)
(( UNREACH == 0 )) || log "  WARNING: $UNREACH fake nodes not Ready at the end"

# ------------------------------------------------------------------ table --
ROWS=(
    "scheduling throughput (pods/s)|$THROUGHPUT|>= 300 pods/s"
    "creation -> binding p50 (s)|$P50|-"
    "creation -> binding p99 (s)|$P99|(print p99)"
    "creation -> binding max (s)|$PMAX|-"
    "creation -> binding p99, API timestamps (s, 1 s resolution)|$API_P99|-"
    "binds/s in the server log, first to last bind|$BIND_RATE|context"
    "create rate while scheduling (pods/s)|$CREATE_RATE|context"
    "raw API create rate, nothing scheduled (pods/s)|$REF_RATE|reference"
    "ratio throughput / raw create rate|$RATIO|-"
)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes)"
fi
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
cpus=$(nproc)
kubectl_ver=$("$KUBECTL" version --client 2>/dev/null | awk '/Client Version/ { print $3 }')
etcd_ver=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')

echo
printf 'rke2 scheduler: %d pods on %d fake nodes, %d creators, %s, nproc %s, commit %s\n' "$PODS" "$NODES" "$CREATORS" "$date_s" "$cpus" "$commit"
printf '%-62s %10s   %s\n' "metric" "value" "target"
for r in "${ROWS[@]}"; do
    IFS='|' read -r l v t <<<"$r"
    printf '%-62s %10s   %s\n' "$l" "$v" "$t"
done

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 scheduler benchmark"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $cpus, $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- commit: $commit"
    echo "- binary: \`$RKE2\`"
    echo "- one run: $PODS pods, $NODES fake nodes (+ the server's own), $CREATORS parallel \`kubectl create -f\`"
    echo "- etcd $etcd_ver, kubectl $kubectl_ver"
    echo "- command: \`bench/scheduler.sh${ARGS:+ $ARGS}\`"
    echo
    echo "| metric | value | target |"
    echo "| --- | ---: | --- |"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r l v t <<<"$r"
        echo "| $l | $v | $t |"
    done
    echo
    echo "Fake nodes: created through the API with status (Ready, 32 CPU, 64 Gi, 110 pods;"
    echo "$STATUS_VIA), their Leases in \`kube-node-lease\` renewed every $LEASE_EVERY s by a"
    echo "server-side apply of all of them. Pods: one \`pause\` container requesting 10m CPU"
    echo "and 16 Mi, split round-robin over $CREATORS files (\`kind: List\`), each created by one"
    echo "\`kubectl create -f\`, all started together. A \`kubectl get pods -w\` on the namespace,"
    echo "started before (and proven live by a sentinel pod), is stamped line by line with"
    echo "the local clock (µs): a pod's creation is its first line, its binding the first"
    echo "line with \`spec.nodeName\` set ($ZERO of $N_SEEN pods were first seen already bound,"
    echo "i.e. 0 s). Throughput = bound pods / (first pod seen -> last pod bound). The"
    echo "API-timestamp row is \`PodScheduled.lastTransitionTime - creationTimestamp\`"
    echo "(whole seconds; $API_N pods, max $API_MAX s). Reference: after the measurement, the"
    echo "same pods in namespace \`bench-ref\` with a \`schedulerName\` nobody serves, created"
    echo "the same way: from launching the kubectl processes until all exited. The create"
    echo "rate while scheduling is the same figure for the measured run. Binds/s in the"
    echo "server log: (binds - 1) / (first to last \`pod bound\` line of the benchmark's pods,"
    echo "the scheduler's own timestamps, µs); close to the throughput when the scheduler,"
    echo "not the creators, is the bottleneck."
} >"$OUT"
log "wrote $OUT"
