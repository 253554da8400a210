#!/usr/bin/env bash
# What one mutating admission webhook adds to a ConfigMap create:
# crates/bench-api's `bench-webhook` against one `rke2 server` (fresh data
# dir, addons disabled). It serves the webhook itself (HTTPS, JSONPatch
# adding a label, certificate from its own CA) on loopback, creates
# --ops ConfigMaps one at a time with no webhook configuration at all, then
# registers the webhook for ConfigMaps labelled hook=yes and creates
# labelled (webhook called) and unlabelled (not called) ConfigMaps
# alternately, so both sides share the same run and server state. Prints
# p50/p99 of the three sides and the p99 ratio webhook / not matched; writes
# bench/results/webhook.md.
#
# Usage: bench/webhook.sh [--ops N] [--no-build] [--out FILE]
# Needs root (the server runs containerd). Not part of the test suite.
set -euo pipefail

OPS=1000
BUILD=1
ADDR=127.77.6.20
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/webhook.md"
ARGS="$*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --ops) OPS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        *) echo "webhook.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$OPS" =~ ^[1-9][0-9]*$ ]] || { echo "webhook.sh: --ops is a positive integer" >&2; exit 2; }
(( EUID == 0 )) || { echo "webhook.sh: needs root (rke2 server runs containerd)" >&2; exit 1; }
log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 -p rke2-bench-api"
    cargo build --release -p rke2 -p rke2-bench-api >&2
fi
RKE2="$TARGET_DIR/release/rke2"
GEN="$TARGET_DIR/release/bench-webhook"
[[ -x "$RKE2" && -x "$GEN" ]] || { echo "webhook.sh: $RKE2 or $GEN missing (drop --no-build)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-webhook-bench.XXXXXX")"
DATA="$WORK/data"
KC="$WORK/kubeconfig.yaml"
PID=""
cleanup() {
    local rc=$?
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    "$RKE2" killall --data-dir "$DATA" >/dev/null 2>&1 || true
    if (( rc != 0 )); then log "--- tail of the server log"; tail -n 20 "$WORK/rke2.log" >&2 || true; fi
    [[ -z "$(awk -v d="$WORK/" 'index($5, d) == 1' /proc/self/mountinfo)" ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

printf 'disable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n' >"$WORK/config.yaml"
LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
log "rke2 server on $ADDR"
CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 CONTAINERD_HTTPS_PROXY=http://127.0.0.1:9 \
    "$RKE2" server --config "$WORK/config.yaml" --data-dir "$DATA" --write-kubeconfig "$KC" \
    --bind-address "$ADDR" --node-ip "$ADDR" --node-name bench-webhook >>"$WORK/rke2.log" 2>&1 &
PID=$!
deadline=$(( SECONDS + 120 ))
until [[ -s "$KC" ]] && kubectl --kubeconfig "$KC" get --raw /readyz >/dev/null 2>&1; do
    kill -0 "$PID" 2>/dev/null || { log "rke2 server exited"; exit 1; }
    (( SECONDS < deadline )) || { log "apiserver not ready within 120 s"; exit 1; }
    sleep 0.2
done
"$GEN" --kubeconfig "$KC" --ops "$OPS" >"$WORK/gen.tsv"
cat "$WORK/gen.tsv" >&2

# RESULT side n p50 p99 max
ROWS=$(awk -F'\t' '$1 == "RESULT" { printf "| %s | %s | %.3f | %.3f | %.3f |\n", $2, $3, $4, $5, $6 }' "$WORK/gen.tsv")
RATIO=$(awk -F'\t' '$1 == "RATIO" { sub(/^RATIO\t/, ""); gsub(/\t/, "; "); print }' "$WORK/gen.tsv")
[[ -n "$ROWS" && -n "$RATIO" ]] || { log "no results"; exit 1; }
{
    echo "# What one mutating webhook adds to a ConfigMap create"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates bench ':!bench/results' || echo ' (with uncommitted changes)')"
    echo "- command: \`bench/webhook.sh $ARGS\`; $OPS creates per side, one at a time (release build)"
    echo
    echo "no-configuration = no webhook configuration exists; not-matched = the"
    echo "configuration exists but its objectSelector skips the object;"
    echo "one-mutating-webhook = the webhook (in the bench process, HTTPS on"
    echo "loopback, kept-alive connection) is called and its JSONPatch applied."
    echo "not-matched and one-mutating-webhook alternate request by request."
    echo "Latencies in ms, as the client (kube-rs) sees them."
    echo
    echo "| side | n | p50 | p99 | max |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    echo "$ROWS"
    echo
    echo "Ratios: $RATIO"
} >"$OUT"
cat "$OUT"
