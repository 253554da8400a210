#!/usr/bin/env bash
# Services on a real cluster: crates/bench-services (`rke2-bench-services`)
# starts one server and one agent on the network-namespace bed
# (crates/testbed/src/netbed.rs, real containerd, the busybox test image),
# one pod `web` (busybox httpd, readiness = HTTP GET of a file) on the agent
# behind a ClusterIP and a NodePort Service, and two outside hosts routing
# the service network through either node. Two parts:
#
#   ready  --rounds times: the file is removed (`kubectl exec`), the pod goes
#          not-Ready and every Service path refuses; the file comes back, and
#          from the moment the bench's watch of the pod delivers Ready=True
#          until the first HTTP answer through the ClusterIP (via either
#          node) and the NodePort (on either node); p50/p99. Reference: the
#          same measurement by pod IP (the pod serves all along: the floor of
#          the method). Target p99 <= 1 s.
#   tcp    --runs times: connect + GET + response, one at a time, alternating
#          ClusterIP and pod IP from the same outside host via the same node
#          (p50, p99; target ratio <= 1.1), then requests/s with
#          --concurrency clients per path for --seconds.
#
# Writes the tables to bench/results/services.md (--out FILE elsewhere).
#
# Usage: bench/services.sh [--rounds N] [--runs N] [--requests N]
#                          [--seconds N] [--concurrency N] [--parts ready,tcp]
#                          [--no-build] [--out FILE]
# Needs root, containerd, runc, the CNI plugins, busybox-static, etcd,
# nftables, kubectl (scripts/install.sh). It uses network namespaces and
# containerd: run one netbed user at a time. Not part of the test suite.
set -euo pipefail

ROUNDS=30
RUNS=3
REQUESTS=2000
SECS=5
CONCURRENCY=4
PARTS=ready,tcp
BUILD=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/services.md"
ARGS="$*"
usage() { sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?}"; shift 2 ;;
        --runs) RUNS="${2:?}"; shift 2 ;;
        --requests) REQUESTS="${2:?}"; shift 2 ;;
        --seconds) SECS="${2:?}"; shift 2 ;;
        --concurrency) CONCURRENCY="${2:?}"; shift 2 ;;
        --parts) PARTS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "services.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in "$ROUNDS" "$RUNS" "$REQUESTS" "$SECS" "$CONCURRENCY"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "services.sh: counts are positive integers" >&2; exit 2; }
done
[[ "$PARTS" =~ ^(ready|tcp)(,(ready|tcp))?$ ]] || { echo "services.sh: --parts is ready, tcp or both" >&2; exit 2; }
(( EUID == 0 )) || { echo "services.sh: needs root (network namespaces, containerd)" >&2; exit 1; }
for tool in containerd runc etcd nft ip; do
    command -v "$tool" >/dev/null || { echo "services.sh: $tool is not installed (bash scripts/install.sh)" >&2; exit 1; }
done
log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 -p rke2-bench-services"
    cargo build --release -p rke2 -p rke2-bench-services >&2
fi
RKE2="$TARGET_DIR/release/rke2"
GEN="$TARGET_DIR/release/rke2-bench-services"
[[ -x "$RKE2" && -x "$GEN" ]] || { echo "services.sh: $RKE2 or $GEN missing (drop --no-build)" >&2; exit 1; }
KUBECTL_ARG=()
[[ -n "${KUBECTL:-}" ]] && KUBECTL_ARG=(--kubectl "$KUBECTL")

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
TABLES="$(mktemp "${TMPDIR:-/tmp}/rke2-services-bench.XXXXXX")"
GEN_PID=""
cleanup() {
    local rc=$?
    # the generator removes its bed (nodes, containers, namespaces) on SIGTERM
    if [[ -n "$GEN_PID" ]] && kill -0 "$GEN_PID" 2>/dev/null; then
        kill -TERM "$GEN_PID" 2>/dev/null || true
        wait "$GEN_PID" 2>/dev/null || true
    fi
    rm -f "$TABLES"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "rke2-bench-services --parts $PARTS --rounds $ROUNDS --runs $RUNS --requests $REQUESTS --seconds $SECS --concurrency $CONCURRENCY"
"$GEN" --rke2 "$RKE2" "${KUBECTL_ARG[@]}" --parts "$PARTS" --rounds "$ROUNDS" --runs "$RUNS" \
    --requests "$REQUESTS" --seconds "$SECS" --concurrency "$CONCURRENCY" >"$TABLES" &
GEN_PID=$!
if ! wait "$GEN_PID"; then
    GEN_PID=""
    log "FAILED: rke2-bench-services failed (its output above)"
    exit 1
fi
GEN_PID=""
mkdir -p "$(dirname "$OUT")"
{
    echo "# Services: endpoint Ready to traffic, ClusterIP against the pod IP"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- crates bench ':!bench/results' 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- command: \`bench/services.sh $ARGS\`"
    echo "- bed: server s1 and agent a1 (each its own network namespace, containerd and nftables proxy), pod \`web\` on a1 (busybox httpd, readiness httpGet every 1 s), outside hosts x1 (routes the service network and a1's pod CIDR via a1) and x2 (service network via s1), all on one bridge"
    echo
    cat "$TABLES"
} >"$OUT"
cat "$OUT"
