#!/usr/bin/env bash
# Preemption latency benchmark for rke2 (the Rust re-implementation).
#
# One `rke2 server` on a loopback address (fresh data dir, its own
# containerd child, the pause and busybox images in the air-gap folder,
# no registry reachable). Per round, in the same run and on the same node:
#   A. the node's free CPU is filled by two low-priority busybox pods
#      (each half of it, terminationGracePeriodSeconds 0); a high-priority
#      pod requesting half is created and timed from `kubectl create`
#      until it is Running: the scheduler preempts one low pod, waits for
#      it to go, binds, and the kubelet starts the pod;
#   B. the reference: the same high-priority pod on the node with room
#      (no low pods), timed the same way.
# Everything is deleted (and gone) before the next; the order of A and B
# alternates between rounds so neither always runs on a warmer node.
# Prints per-round times and the median ratio preemption / room, and
# writes them as Markdown to bench/results/preemption.md.
#
# Usage: bench/preemption.sh [--rounds N] [--no-build]
#                            [--binary PATH] [--out FILE] [--keep]
# (--binary: an rke2 built elsewhere, e.g. a debug build; implies --no-build)
# Needs root, containerd, runc, the CNI plugins, busybox-static, python3,
# etcd, kubectl. Not part of the test suite.

set -euo pipefail

ROUNDS=3
BUILD=1
KEEP=0
BINARY=""
ADDR=127.77.9.30
DEADLINE=600
STOP_GRACE=20
PAUSE_IMAGE=rke2.test/pause:1
BUSYBOX_IMAGE=rke2.test/busybox:1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/preemption.md"
ARGS="$*"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --binary) BINARY="${2:?--binary needs a path}"; BUILD=0; shift 2 ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "preemption.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in ROUNDS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 )); then
        echo "preemption.sh: --${v,,} must be a positive number" >&2; exit 2
    fi
done
(( EUID == 0 )) || { echo "preemption.sh: needs root (rke2 runs containerd); run it as root" >&2; exit 1; }
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in containerd runc etcd cargo awk python3 ss "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "preemption.sh: ${tool:-kubectl} is not installed (scripts/install.sh)" >&2; exit 1; }
done

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

WORK=""
RKE2_PID=""
DATA=""
KC=""
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

stop_pid() {
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < STOP_GRACE * 10; i++ )); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

kc() { "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=30s "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if (( rc != 0 )) && [[ -n "$WORK" && -f "$WORK/rke2.log" ]]; then
        log "--- tail of the server log"; tail -n 25 "$WORK/rke2.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
    fi
    if alive "$RKE2_PID" && [[ -s "$KC" ]]; then
        kc delete pods -n bench --all --wait=false >/dev/null 2>&1 || true
        kc delete priorityclass bench-low bench-high --wait=false >/dev/null 2>&1 || true
    fi
    stop_pid "$RKE2_PID"
    if [[ -n "$DATA" && -d "$DATA/agent" ]]; then
        "$RKE2" killall --data-dir "$DATA" >&2 || log "rke2 killall failed"
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if (( KEEP )); then log "kept $WORK"
        elif awk -v d="$WORK/" 'index($5, d) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            log "mounts left under $WORK, not removing it"
        else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="${BINARY:-$TARGET_DIR/release/rke2}"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"
for port in 6443 9345 2379 2380 10250; do
    ss -Hltn "src $ADDR:$port" 2>/dev/null | grep -q . && die "$ADDR:$port is already in use"
done

now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
past() { awk -v s="$1" -v n="$(now)" -v d="$2" 'BEGIN { exit !(n - s > d) }'; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-prio-bench.XXXXXX")"
DATA="$WORK/data"
KC="$WORK/kubeconfig.yaml"
mkdir -p "$DATA/agent/images"
python3 "$ROOT/scripts/mkimage.py" "$DATA/agent/images/pause.tar" "$PAUSE_IMAGE" --pause >&2
python3 "$ROOT/scripts/mkimage.py" "$DATA/agent/images/busybox.tar" "$BUSYBOX_IMAGE" >&2
cat >"$WORK/config.yaml" <<EOF
pause-image: $PAUSE_IMAGE
disable:
  - rke2-coredns
  - rke2-ingress-nginx
  - rke2-metrics-server
EOF
LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
log "rke2 server on $ADDR"
t0=$(now)
CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 CONTAINERD_HTTPS_PROXY=http://127.0.0.1:9 \
    "$RKE2" server --config "$WORK/config.yaml" --data-dir "$DATA" --write-kubeconfig "$KC" \
    --bind-address "$ADDR" --node-ip "$ADDR" --node-name bench-prio >>"$WORK/rke2.log" 2>&1 &
RKE2_PID=$!
until [[ -s "$KC" ]] && kc get nodes --no-headers 2>/dev/null | awk '$1 == "bench-prio" && $2 == "Ready" { f = 1 } END { exit !f }'; do
    alive "$RKE2_PID" || die "rke2 server exited before its node was Ready"
    past "$t0" "$DEADLINE" && die "node not Ready within ${DEADLINE}s"
    sleep 0.2
done
log "  node Ready after $(sub "$(now)" "$t0")s"
until kc create namespace bench >/dev/null 2>&1; do past "$t0" "$DEADLINE" && die "cannot create namespace bench"; sleep 0.5; done
until kc get serviceaccount default -n bench >/dev/null 2>&1; do sleep 0.2; done

kc create -f - >/dev/null <<EOF
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: bench-low}
value: 10
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: bench-high}
value: 1000
EOF

# Half of the CPU the node has free (allocatable less what its pods request).
alloc=$(kc get node bench-prio -o jsonpath='{.status.allocatable.cpu}')
milli() { awk -v q="$1" 'BEGIN { if (q ~ /m$/) { sub(/m$/, "", q); print int(q) } else print int(q * 1000) }'; }
used=0
for q in $(kc get pods -A --field-selector spec.nodeName=bench-prio,status.phase!=Succeeded,status.phase!=Failed \
        -o jsonpath='{range .items[*].spec.containers[*]}{.resources.requests.cpu}{" "}{end}'); do
    used=$(( used + $(milli "$q") ))
done
HALF=$(( ($(milli "$alloc") - used) / 2 ))
(( HALF > 100 )) || die "too little free CPU on the node (${alloc} allocatable, ${used}m requested)"
log "  pods request ${HALF}m CPU each (allocatable $alloc, ${used}m already requested)"

pod() { # NAME CLASS
    cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: bench}
spec:
  priorityClassName: $2
  terminationGracePeriodSeconds: 0
  containers:
  - name: sleep
    image: $BUSYBOX_IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    resources: {requests: {cpu: ${HALF}m}}
EOF
}

running() { # NAME T0: waits until the pod is Running
    local t0=$2
    until [[ "$(kc get pod "$1" -n bench -o jsonpath='{.status.phase}' 2>/dev/null)" == Running ]]; do
        past "$t0" "$DEADLINE" && die "pod $1 not Running after ${DEADLINE}s"
        sleep 0.1
    done
}

clear_pods() {
    local t0
    kc delete pods -n bench --all --wait=false >/dev/null
    t0=$(now)
    until (( $(kc get pods -n bench --no-headers 2>/dev/null | wc -l) == 0 )); do
        past "$t0" "$DEADLINE" && die "pods not gone ${DEADLINE}s after the delete"
        sleep 0.2
    done
}

# timed_high NAME: seconds from create until the high-priority pod Runs
timed_high() {
    local t0
    pod "$1" bench-high >"$WORK/$1.yaml"
    t0=$(now)
    kc create -f "$WORK/$1.yaml" >/dev/null
    running "$1" "$t0"
    sub "$(now)" "$t0"
}

preempting() { # ROUND
    local t0 t left
    for l in a b; do pod "low-$l-$1" bench-low | kc create -f - >/dev/null; done
    t0=$(now)
    for l in a b; do running "low-$l-$1" "$t0"; done
    t=$(timed_high "high-full-$1")
    left=$(kc get pods -n bench --no-headers 2>/dev/null | awk '$1 ~ /^low-/' | wc -l)
    (( left == 1 )) || die "round $1: expected one low pod left after the preemption, found $left"
    clear_pods
    echo "$t"
}

with_room() { # ROUND
    local t
    t=$(timed_high "high-room-$1")
    clear_pods
    echo "$t"
}

declare -a FULL ROOM RATIO
for (( r = 1; r <= ROUNDS; r++ )); do
    if (( r % 2 )); then
        f=$(preempting "$r"); o=$(with_room "$r")
    else
        o=$(with_room "$r"); f=$(preempting "$r")
    fi
    FULL+=("$f"); ROOM+=("$o")
    RATIO+=("$(awk -v a="$f" -v b="$o" 'BEGIN { printf "%.2f", a / b }')")
    log "round $r: on the full node ${f}s, with room ${o}s, ratio ${RATIO[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
MF=$(median "${FULL[@]}"); MO=$(median "${ROOM[@]}"); MR=$(median "${RATIO[@]}")

mkdir -p "$(dirname "$OUT")"
{
    echo "# Preemption latency: a high-priority pod to Running on a full node"
    echo
    echo "\`bench/preemption.sh $ARGS\` on $(date -u +%Y-%m-%d), $(nproc) CPUs, load at start $LOAD_AT_START."
    echo "Binary: \`$RKE2\`. One server node (its own containerd, busybox \`sleep 3600\` pods requesting ${HALF}m CPU each, image present)."
    echo "Full node: two low-priority pods hold its free CPU; one is preempted (grace period 0). Reference: the same pod on the node with room, same run."
    echo
    printf '| round |'; for (( r = 1; r <= ROUNDS; r++ )); do printf ' %d |' "$r"; done; echo ' median |'
    printf '|---|'; for (( r = 0; r <= ROUNDS; r++ )); do printf -- '---|'; done; echo
    printf '| full node, preempting (s) |'; for v in "${FULL[@]}"; do printf ' %s |' "$v"; done; echo " $MF |"
    printf '| node with room (s) |'; for v in "${ROOM[@]}"; do printf ' %s |' "$v"; done; echo " $MO |"
    printf '| ratio preempting / room |'; for v in "${RATIO[@]}"; do printf ' %s |' "$v"; done; echo " $MR |"
} >"$OUT"
cat "$OUT"
log "wrote $OUT"
