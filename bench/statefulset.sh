#!/usr/bin/env bash
# StatefulSet scale-up benchmark for rke2 (the Rust re-implementation).
#
# One `rke2 server` on a loopback address (fresh data dir, its own
# containerd child, the pause and busybox images in the air-gap folder,
# no registry reachable). Per round, in the same run and on the same node:
#   A. a StatefulSet of N replicas, podManagementPolicy Parallel, busybox
#      `sleep 3600`, timed from `kubectl apply` until status.readyReplicas
#      is N;
#   B. the reference: a Deployment of N replicas of the same pod template,
#      timed the same way.
# Each is deleted (and its pods gone) before the next; the order of A and
# B alternates between rounds so neither always runs on a warmer node.
# Prints per-round times and the median ratio StatefulSet / Deployment,
# and writes them as Markdown to bench/results/statefulset.md.
#
# Usage: bench/statefulset.sh [--rounds N] [--replicas N] [--no-build]
#                             [--binary PATH] [--out FILE] [--keep]
# (--binary: an rke2 built elsewhere, e.g. a debug build; implies --no-build)
# Needs root, containerd, runc, the CNI plugins, busybox-static, python3,
# etcd, kubectl. Not part of the test suite.

set -euo pipefail

ROUNDS=3
REPLICAS=100
BUILD=1
KEEP=0
BINARY=""
ADDR=127.77.9.10
DEADLINE=600
STOP_GRACE=20
PAUSE_IMAGE=rke2.test/pause:1
BUSYBOX_IMAGE=rke2.test/busybox:1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/statefulset.md"
ARGS="$*"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --replicas) REPLICAS="${2:?--replicas needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --binary) BINARY="${2:?--binary needs a path}"; BUILD=0; shift 2 ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "statefulset.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in ROUNDS REPLICAS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 )); then
        echo "statefulset.sh: --${v,,} must be a positive number" >&2; exit 2
    fi
done
(( REPLICAS <= 105 )) || { echo "statefulset.sh: at most 105 replicas (the node takes 110)" >&2; exit 2; }
(( EUID == 0 )) || { echo "statefulset.sh: needs root (rke2 runs containerd); run it as root" >&2; exit 1; }
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in containerd runc etcd cargo awk python3 ss "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "statefulset.sh: ${tool:-kubectl} is not installed (scripts/install.sh)" >&2; exit 1; }
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
        kc delete statefulset,deployment -n bench --all --wait=false >/dev/null 2>&1 || true
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

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-sts-bench.XXXXXX")"
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
    --bind-address "$ADDR" --node-ip "$ADDR" --node-name bench-sts >>"$WORK/rke2.log" 2>&1 &
RKE2_PID=$!
until [[ -s "$KC" ]] && kc get nodes --no-headers 2>/dev/null | awk '$1 == "bench-sts" && $2 == "Ready" { f = 1 } END { exit !f }'; do
    alive "$RKE2_PID" || die "rke2 server exited before its node was Ready"
    past "$t0" "$DEADLINE" && die "node not Ready within ${DEADLINE}s"
    sleep 0.2
done
log "  node Ready after $(sub "$(now)" "$t0")s"
until kc create namespace bench >/dev/null 2>&1; do past "$t0" "$DEADLINE" && die "cannot create namespace bench"; sleep 0.5; done
until kc get serviceaccount default -n bench >/dev/null 2>&1; do sleep 0.2; done

manifest() { # KIND NAME
    local extra=""
    [[ "$1" == StatefulSet ]] && extra="  serviceName: $2
  podManagementPolicy: Parallel"
    cat <<EOF
apiVersion: apps/v1
kind: $1
metadata: {name: $2, namespace: bench}
spec:
  replicas: $REPLICAS
$extra
  selector: {matchLabels: {app: $2}}
  template:
    metadata: {labels: {app: $2}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: sleep
        image: $BUSYBOX_IMAGE
        imagePullPolicy: IfNotPresent
        command: [sleep, "3600"]
EOF
}

# timed KIND NAME: seconds from apply until readyReplicas = REPLICAS; then
# deletes it and waits until its pods are gone
timed() {
    local kind=$1 name=$2 res t0 ready t
    res=$(tr '[:upper:]' '[:lower:]' <<<"$kind")
    manifest "$kind" "$name" >"$WORK/$name.yaml"
    t0=$(now)
    kc apply -f "$WORK/$name.yaml" >/dev/null
    while :; do
        ready=$(kc get "$res" "$name" -n bench -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)
        [[ "${ready:-0}" == "$REPLICAS" ]] && break
        past "$t0" "$DEADLINE" && die "$kind $name: ${ready:-0}/$REPLICAS Ready after ${DEADLINE}s"
        sleep 0.2
    done
    t=$(sub "$(now)" "$t0")
    kc delete "$res" "$name" -n bench --wait=false >/dev/null
    t0=$(now)
    until (( $(kc get pods -n bench -l "app=$name" --no-headers 2>/dev/null | wc -l) == 0 )); do
        past "$t0" "$DEADLINE" && die "$kind $name: pods not gone ${DEADLINE}s after the delete"
        sleep 0.5
    done
    echo "$t"
}

declare -a STS DEP RATIO
for (( r = 1; r <= ROUNDS; r++ )); do
    if (( r % 2 )); then
        s=$(timed StatefulSet "sts$r"); d=$(timed Deployment "dep$r")
    else
        d=$(timed Deployment "dep$r"); s=$(timed StatefulSet "sts$r")
    fi
    STS+=("$s"); DEP+=("$d")
    RATIO+=("$(awk -v a="$s" -v b="$d" 'BEGIN { printf "%.2f", a / b }')")
    log "round $r: StatefulSet ${s}s, Deployment ${d}s, ratio ${RATIO[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
MS=$(median "${STS[@]}"); MD=$(median "${DEP[@]}"); MR=$(median "${RATIO[@]}")

mkdir -p "$(dirname "$OUT")"
{
    echo "# StatefulSet scale-up: $REPLICAS replicas Parallel to all Ready"
    echo
    echo "\`bench/statefulset.sh $ARGS\` on $(date -u +%Y-%m-%d), $(nproc) CPUs, load at start $LOAD_AT_START."
    echo "Binary: \`$RKE2\`. One server node (its own containerd, busybox \`sleep 3600\` pods, image present)."
    echo "Reference: a Deployment of the same pod template, same node, same run."
    echo
    printf '| round |'; for (( r = 1; r <= ROUNDS; r++ )); do printf ' %d |' "$r"; done; echo ' median |'
    printf '|---|'; for (( r = 0; r <= ROUNDS; r++ )); do printf -- '---|'; done; echo
    printf '| StatefulSet (s) |'; for v in "${STS[@]}"; do printf ' %s |' "$v"; done; echo " $MS |"
    printf '| Deployment (s) |'; for v in "${DEP[@]}"; do printf ' %s |' "$v"; done; echo " $MD |"
    printf '| ratio StatefulSet / Deployment |'; for v in "${RATIO[@]}"; do printf ' %s |' "$v"; done; echo " $MR |"
} >"$OUT"
cat "$OUT"
log "wrote $OUT"
