#!/usr/bin/env bash
# Local-path volume benchmark for rke2.
#
# One `rke2 server` on a loopback address (fresh data dir, its own
# containerd child, the pause and busybox images in the air-gap folder, no
# registry reachable), then ROUNDS rounds (after one warm-up round) of,
# one at a time (bench/lib/storage_bench.py, the python kubernetes client
# polling every 20 ms):
#   1. the reference, same run: a pod with an emptyDir volume, created ->
#      Ready;
#   2. a claim of the default class `local-path` and a pod using it:
#      claim created -> Bound (the scheduler picks the node, the provisioner
#      makes the volume, the binder binds), pod created -> Ready;
#   3. pod deleted, claim deleted -> its volume object gone (reclaim Delete:
#      a helper pod removes the directory first; checked gone).
# Prints p50 / p99 / max and the ratios claim pod / emptyDir pod, and
# writes them as Markdown to bench/results/storage.md.
#
# Usage: bench/storage.sh [--rounds N] [--no-build] [--binary FILE] [--out FILE] [--keep]
# (--binary: run that rke2 instead of the release build, implies --no-build)
# Needs root, containerd, runc, the CNI plugins, busybox-static, etcd,
# kubectl, python3 with the kubernetes client (scripts/install.sh). Not
# part of the test suite.

set -euo pipefail

ROUNDS=20
BUILD=1
BINARY=""
KEEP=0
ADDR=127.77.9.10
DEADLINE=180
STOP_GRACE=20
PAUSE_IMAGE=rke2.test/pause:1
BUSYBOX_IMAGE=rke2.test/busybox:1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/storage.md"
ARGS="$*"

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --binary) BINARY="${2:?--binary needs a file}"; BUILD=0; shift 2 ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "storage.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || (( ROUNDS < 1 || ROUNDS > 500 )); then
    echo "storage.sh: --rounds must be a number from 1 to 500" >&2; exit 2
fi
if (( EUID != 0 )); then
    echo "storage.sh: needs root (rke2 runs containerd, runc and the CNI plugins)" >&2; exit 1
fi
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in containerd runc etcd cargo python3 ss "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "storage.sh: ${tool:-kubectl} is not installed (scripts/install.sh)" >&2; exit 1; }
done
python3 -c 'import kubernetes' 2>/dev/null ||
    { echo "storage.sh: the python kubernetes client is missing (scripts/install.sh)" >&2; exit 1; }

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

WORK=""
RKE2_PID=""
DATA=""
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
stop_server() {
    local i
    [[ -n "$RKE2_PID" ]] || return 0
    if alive "$RKE2_PID"; then
        kill -TERM "$RKE2_PID" 2>/dev/null || true
        for (( i = 0; i < STOP_GRACE * 10; i++ )); do alive "$RKE2_PID" || break; sleep 0.1; done
        alive "$RKE2_PID" && kill -KILL "$RKE2_PID" 2>/dev/null || true
    fi
    wait "$RKE2_PID" 2>/dev/null || true
    RKE2_PID=""
    if [[ -n "$DATA" && -d "$DATA/agent" ]]; then
        "$RKE2" killall --data-dir "$DATA" >&2 || log "rke2 killall failed"
    fi
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if (( rc != 0 )) && [[ -n "$WORK" && -f "$WORK/rke2.log" ]]; then
        log "--- tail of the server log"; tail -n 25 "$WORK/rke2.log" >&2 || true
    fi
    stop_server
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if awk -v d="$WORK/" 'index($5, d) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
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

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-storage-bench.XXXXXX")"
DATA="$WORK/data"
KC="$WORK/kubeconfig.yaml"
STORAGE="$WORK/local-storage"
kc() { "$KUBECTL" --kubeconfig "$KC" --request-timeout=30s "$@"; }

mkdir -p "$DATA/agent/images"
python3 "$ROOT/scripts/mkimage.py" "$DATA/agent/images/pause.tar" "$PAUSE_IMAGE" --pause >&2
python3 "$ROOT/scripts/mkimage.py" "$DATA/agent/images/busybox.tar" "$BUSYBOX_IMAGE" >&2
cat >"$WORK/config.yaml" <<EOF
pause-image: $PAUSE_IMAGE
default-local-storage-path: $STORAGE
disable:
  - rke2-coredns
  - rke2-ingress-nginx
  - rke2-metrics-server
EOF
log "rke2 server on $ADDR (fresh data dir)"
CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 CONTAINERD_HTTPS_PROXY=http://127.0.0.1:9 \
    "$RKE2" server --config "$WORK/config.yaml" --data-dir "$DATA" --write-kubeconfig "$KC" \
    --bind-address "$ADDR" --node-ip "$ADDR" --node-name bench-storage >>"$WORK/rke2.log" 2>&1 &
RKE2_PID=$!
t0=$SECONDS
until [[ -s "$KC" ]] && kc get nodes --no-headers 2>/dev/null | awk '$1 == "bench-storage" && $2 == "Ready" { f = 1 } END { exit !f }' &&
    kc get sc local-path >/dev/null 2>&1; do
    alive "$RKE2_PID" || die "rke2 server exited before its node was Ready"
    (( SECONDS - t0 < DEADLINE )) || die "node Ready and StorageClass local-path not within ${DEADLINE}s"
    sleep 0.2
done
log "node Ready and local-path present after $(( SECONDS - t0 ))s"
kc create namespace bench >/dev/null
log "$ROUNDS rounds (+1 warm-up)"
python3 "$ROOT/bench/lib/storage_bench.py" "$KC" bench "$ROUNDS" "$STORAGE" "$WORK/stats.json"
errs=$(grep -cE '\b(WARN|ERROR)\b' "$WORK/rke2.log" || true)

get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d; [v := v[k] for k in sys.argv[2].split(".")]; print(f"{v:.3f}" if isinstance(v, float) else v)' "$WORK/stats.json" "$1"; }
ROWS=(
    "emptyDir pod: created -> Ready p50 (s)|$(get empty_ready.p50)|reference"
    "emptyDir pod: created -> Ready p99 (s)|$(get empty_ready.p99)|reference"
    "local-path claim: created -> Bound p50 (s)|$(get pvc_bound.p50)|-"
    "local-path claim: created -> Bound p99 (s)|$(get pvc_bound.p99)|-"
    "local-path pod: created -> Ready p50 (s)|$(get pvc_ready.p50)|-"
    "local-path pod: created -> Ready p99 (s)|$(get pvc_ready.p99)|-"
    "local-path pod: created -> Ready max (s)|$(get pvc_ready.max)|-"
    "ratio local-path pod / emptyDir pod, p50|$(get ratio_p50)|-"
    "ratio local-path pod / emptyDir pod, p99|$(get ratio_p99)|-"
    "claim deleted -> volume and directory gone p50 (s)|$(get reclaim.p50)|context"
    "claim deleted -> volume and directory gone p99 (s)|$(get reclaim.p99)|context"
    "WARN/ERROR lines in the server log|$errs|-"
)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
echo
printf 'rke2 local-path volumes: %d rounds, %s, nproc %s, commit %s\n' "$ROUNDS" "$date_s" "$(nproc)" "$commit"
for r in "${ROWS[@]}"; do IFS='|' read -r l v t <<<"$r"; printf '%-55s %9s   %s\n' "$l" "$v" "$t"; done
mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 local-path volume benchmark"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- commit: $commit"
    echo "- binary: \`$RKE2\`"
    echo "- command: \`bench/storage.sh${ARGS:+ $ARGS}\`"
    echo
    echo "| metric | value | target |"
    echo "| --- | ---: | --- |"
    for r in "${ROWS[@]}"; do IFS='|' read -r l v t <<<"$r"; echo "| $l | $v | $t |"; done
    echo
    echo "One server (its own node), $ROUNDS rounds after a warm-up round, one pod at a time:"
    echo "an emptyDir pod (the reference), then a claim of the default class \`local-path\`"
    echo "(\`WaitForFirstConsumer\`) created together with a pod using it; both pods write a"
    echo "file into the volume and sleep. The claim's time runs from its creation to"
    echo "\`Bound\` (the scheduler chooses the node and annotates the claim, the provisioner"
    echo "creates the volume, the binder binds both); the pod's from its creation to Ready"
    echo "(the node mounts the directory once the claim is Bound). Reclaim: claim deleted ->"
    echo "the volume object deleted, which happens only after the helper pod removed the"
    echo "directory (checked gone). Polling every 20 ms through the python kubernetes client."
} >"$OUT"
log "wrote $OUT"
