#!/usr/bin/env bash
# What a custom type costs a write: one `custom` phase of crates/bench-api
# against one `rke2 server` (fresh data dir, addons disabled). Creates of
# ConfigMaps and of custom objects of a CRD with a structural schema
# (defaults, an enum, a CEL rule), the same 1 KiB payload, --concurrency in
# flight, --ops per side, in --runs pairs whose first side alternates.
# Prints creates/s, p50 and p99 of both, the throughput ratio custom /
# ConfigMap (target >= 0.9) and the server's CPU per create; writes the
# table to bench/results/crd.md.
#
# Usage: bench/crd.sh [--runs N] [--ops N] [--concurrency N] [--no-build] [--out FILE]
# Needs root (the server runs containerd). Not part of the test suite.
set -euo pipefail

RUNS=5
OPS=2000
CONCURRENCY=16
BUILD=1
ADDR=127.77.6.20
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/crd.md"
ARGS="$*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?}"; shift 2 ;;
        --ops) OPS="${2:?}"; shift 2 ;;
        --concurrency) CONCURRENCY="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        *) echo "crd.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for v in "$RUNS" "$OPS" "$CONCURRENCY"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "crd.sh: --runs, --ops and --concurrency are positive integers" >&2; exit 2; }
done
(( EUID == 0 )) || { echo "crd.sh: needs root (rke2 server runs containerd)" >&2; exit 1; }
log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 -p rke2-bench-api"
    cargo build --release -p rke2 -p rke2-bench-api >&2
fi
RKE2="$TARGET_DIR/release/rke2"
GEN="$TARGET_DIR/release/rke2-bench-api"
[[ -x "$RKE2" && -x "$GEN" ]] || { echo "crd.sh: $RKE2 or $GEN missing (drop --no-build)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-crd-bench.XXXXXX")"
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
    --bind-address "$ADDR" --node-ip "$ADDR" --node-name bench-crd >>"$WORK/rke2.log" 2>&1 &
PID=$!
deadline=$(( SECONDS + 120 ))
until [[ -s "$KC" ]] && kubectl --kubeconfig "$KC" get nodes --no-headers 2>/dev/null | grep -q " Ready "; do
    kill -0 "$PID" 2>/dev/null || { log "rke2 server exited"; exit 1; }
    (( SECONDS < deadline )) || { log "node not Ready within 120 s"; exit 1; }
    sleep 0.2
done
ETCD_PID=""
for c in $(cat /proc/"$PID"/task/*/children 2>/dev/null); do
    [[ "$(cat /proc/"$c"/comm 2>/dev/null)" == etcd ]] && ETCD_PID=$c
done
"$GEN" --etcd-endpoint "https://$ADDR:2379" --etcd-tls-dir "$DATA/server/tls/etcd" \
    --kubeconfig "$KC" --phases custom --ops "$OPS" --concurrency "$CONCURRENCY" \
    --custom-runs "$RUNS" --watchers 0 \
    --server-pid "$PID" ${ETCD_PID:+--etcd-pid "$ETCD_PID"} >"$WORK/gen.tsv"

# RESULT phase side n ops/s p50 p99 max server-µs/op etcd-µs/op client-µs/op note
# phase = custom@<run>
AWK_LIB='
    function med(s,    a, n, i, j, t) {   # median of a space-separated list
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lo(s,    a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 < m) m = a[i] + 0; return m }
    function hi(s,    a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0; return m }
    $1 == "RESULT" && $2 ~ /^custom@/ {
        r = substr($2, 8)
        if (!(r in seen)) { seen[r] = 1; order[++nr] = r }
        if ($3 == "ConfigMap") { cops[r] = $5; c50[r] = $6; c99[r] = $7; ccpu[r] = $9 } else { xops[r] = $5; x50[r] = $6; x99[r] = $7; xcpu[r] = $9 }
    }'
TABLE=$(awk -F'\t' "$AWK_LIB"'
    END {
        for (i = 1; i <= nr; i++) {
            r = order[i]
            CO = CO " " cops[r]; XO = XO " " xops[r]; RAT = RAT " " ((cops[r] > 0) ? xops[r] / cops[r] : 0)
            C50 = C50 " " c50[r]; C99 = C99 " " c99[r]; X50 = X50 " " x50[r]; X99 = X99 " " x99[r]
            CC = CC " " ccpu[r]; XC = XC " " xcpu[r]
        }
        m = med(RAT)
        printf "| %d | %.0f | %.0f | %.2f | %.2f-%.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f | %s |\n", nr,
            med(CO), med(XO), m, lo(RAT), hi(RAT), med(C50), med(C99), med(X50), med(X99), med(CC), med(XC),
            (m >= 0.9) ? "met" : "**NOT met**"
    }' "$WORK/gen.tsv")
RUNS_TABLE=$(awk -F'\t' "$AWK_LIB"'
    END {
        for (i = 1; i <= nr; i++) {
            r = order[i]
            printf "| %s | %s | %s | %s | %.2f | %s | %s | %s | %s |\n", r, (r % 2) ? "ConfigMap" : "custom object",
                cops[r], xops[r], (cops[r] > 0) ? xops[r] / cops[r] : 0, c99[r], x99[r], ccpu[r], xcpu[r]
        }
    }' "$WORK/gen.tsv")
[[ -n "$TABLE" ]] || { log "no custom results"; exit 1; }
{
    echo "# What a custom type costs a write"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates bench ':!bench/results' || echo ' (with uncommitted changes)')"
    echo "- command: \`bench/crd.sh $ARGS\`; $OPS creates per side, $CONCURRENCY in flight, 1 KiB payload, $RUNS runs"
    echo
    echo "ConfigMap = POST of a ConfigMap; custom = POST of a custom object whose"
    echo "CRD has a structural schema (pruning, a default, an enum, a CEL rule)."
    echo "Throughput in creates/s, latencies in ms, CPU = the rke2 server's CPU time"
    echo "per create in µs. Medians over the runs; the ratio is the median of the"
    echo "per-run ratios custom / ConfigMap creates/s, with their range."
    echo
    echo "| runs | ConfigMap/s | custom/s | ratio | ratio range | CM p50 | CM p99 | custom p50 | custom p99 | CM CPU µs | custom CPU µs | ratio >= 0.9 |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    echo "$TABLE"
    echo
    echo "Every run:"
    echo
    echo "| run | first | ConfigMap/s | custom/s | ratio | CM p99 | custom p99 | CM CPU µs | custom CPU µs |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    echo "$RUNS_TABLE"
} >"$OUT"
cat "$OUT"
