#!/usr/bin/env bash
# What authorization costs a request: one `rbac` phase of crates/bench-api
# against one `rke2 server` (fresh data dir, addons disabled). GETs paced at
# --rate/s, as the admin (group system:masters: no authorizer runs) and as a
# user with a client certificate whose only permission is a Role bound to
# it (RBAC answers every request), with 10 and then 10,000 RoleBindings in
# the namespace. Prints p50/p99 of both, the p99 ratio (target <= 1.1) and
# the server's CPU time per request of both, whose difference is what
# authorization (RBAC through the subject index) costs, in µs; writes the
# table to bench/results/rbac.md. Each count is measured in --runs admin/user
# pairs (the side that goes first alternates); the table gives medians over
# the runs and the median of the per-run p99 ratios with its range, and a
# second table every run.
#
# Usage: bench/rbac.sh [--bindings 10,10000] [--runs N] [--rate N]
#                      [--paced-seconds N] [--no-build] [--out FILE]
# Needs root (the server runs containerd). Not part of the test suite.
set -euo pipefail

BINDINGS=10,10000
RATE=500
PACED_SECONDS=20
RUNS=5
BUILD=1
ADDR=127.77.6.10
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/rbac.md"
ARGS="$*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bindings) BINDINGS="${2:?}"; shift 2 ;;
        --rate) RATE="${2:?}"; shift 2 ;;
        --paced-seconds) PACED_SECONDS="${2:?}"; shift 2 ;;
        --runs) RUNS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        *) echo "rbac.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$BINDINGS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "rbac.sh: --bindings is a comma-separated list of counts" >&2; exit 2; }
for v in "$RUNS" "$RATE" "$PACED_SECONDS"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "rbac.sh: --runs, --rate and --paced-seconds are positive integers" >&2; exit 2; }
done
(( EUID == 0 )) || { echo "rbac.sh: needs root (rke2 server runs containerd)" >&2; exit 1; }
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
[[ -x "$RKE2" && -x "$GEN" ]] || { echo "rbac.sh: $RKE2 or $GEN missing (drop --no-build)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-rbac-bench.XXXXXX")"
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
    --bind-address "$ADDR" --node-ip "$ADDR" --node-name bench-rbac >>"$WORK/rke2.log" 2>&1 &
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
    --kubeconfig "$KC" --phases create,rbac --ops 2000 --rate "$RATE" --paced-seconds "$PACED_SECONDS" \
    --rbac-bindings "$BINDINGS" --rbac-runs "$RUNS" --client-ca-dir "$DATA/server/tls" --watchers 0 \
    --server-pid "$PID" ${ETCD_PID:+--etcd-pid "$ETCD_PID"} >"$WORK/gen.tsv"

# RESULT phase side n ops/s p50 p99 max server-µs/op etcd-µs/op client-µs/op note
# phase = rbac@<bindings>/<run>
AWK_LIB='
    function med(s,    a, n, i, j, t) {   # median of a space-separated list
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lo(s,    a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 < m) m = a[i] + 0; return m }
    function hi(s,    a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0; return m }
    $1 == "RESULT" && $2 ~ /^rbac@/ {
        split(substr($2, 6), p, "/"); b = p[1]; r = p[2]
        if (!(b in seen)) { seen[b] = 1; order[++nb] = b }
        k = b SUBSEP r
        if (!(k in seenr)) { seenr[k] = 1; runs[b] = runs[b] " " r }
        if ($3 ~ /^admin/) { a50[k] = $6; a99[k] = $7; acpu[k] = $9 } else { u50[k] = $6; u99[k] = $7; ucpu[k] = $9 }
    }'
TABLE=$(awk -F'\t' "$AWK_LIB"'
    END {
        for (i = 1; i <= nb; i++) {
            b = order[i]; n = split(runs[b], rs, " ")
            A50 = A99 = U50 = U99 = RAT = AC = UC = AZ = ""
            for (j = 1; j <= n; j++) {
                k = b SUBSEP rs[j]
                A50 = A50 " " a50[k]; A99 = A99 " " a99[k]; U50 = U50 " " u50[k]; U99 = U99 " " u99[k]
                RAT = RAT " " ((a99[k] > 0) ? u99[k] / a99[k] : 0)
                AC = AC " " acpu[k]; UC = UC " " ucpu[k]; AZ = AZ " " (ucpu[k] - acpu[k])
            }
            r = med(RAT)
            printf "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f-%.2f | %.0f | %.0f | %.0f | %s |\n", b, n,
                med(A50), med(A99), med(U50), med(U99), r, lo(RAT), hi(RAT), med(AC), med(UC), med(AZ),
                (r <= 1.1) ? "met" : "**NOT met**"
        }
    }' "$WORK/gen.tsv")
RUNS_TABLE=$(awk -F'\t' "$AWK_LIB"'
    END {
        for (i = 1; i <= nb; i++) {
            b = order[i]; n = split(runs[b], rs, " ")
            for (j = 1; j <= n; j++) {
                k = b SUBSEP rs[j]
                printf "| %s | %s | %s | %s | %s | %s | %s | %.2f | %s | %s |\n", b, rs[j], (rs[j] % 2) ? "admin" : "user",
                    a50[k], a99[k], u50[k], u99[k], (a99[k] > 0) ? u99[k] / a99[k] : 0, acpu[k], ucpu[k]
            }
        }
    }' "$WORK/gen.tsv")
[[ -n "$TABLE" ]] || { log "no rbac results"; exit 1; }
{
    echo "# What authorization costs a request"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates bench ':!bench/results' || echo ' (with uncommitted changes)')"
    echo "- command: \`bench/rbac.sh $ARGS\`; GETs of 2,000 ConfigMaps paced at $RATE/s for $PACED_SECONDS s per side, $RUNS runs (admin/user pairs) per RoleBinding count"
    echo
    echo "admin = the admin kubeconfig (group system:masters passes before any"
    echo "authorizer); user = a client certificate whose only permission is a Role"
    echo "bound to it among N RoleBindings of the namespace, so RBAC answers every"
    echo "request. Latencies in ms; CPU = the rke2 server's CPU time per request;"
    echo "authz = user CPU - admin CPU. Every figure is the median over the runs;"
    echo "the p99 ratio is the median of the per-run ratios user p99 / admin p99,"
    echo "with their range."
    echo
    echo "| RoleBindings | runs | admin p50 | admin p99 | user p50 | user p99 | p99 ratio | ratio range | admin CPU µs | user CPU µs | authz µs | ratio <= 1.1 |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    echo "$TABLE"
    echo
    echo "Every run (first = the side measured first in that run):"
    echo
    echo "| RoleBindings | run | first | admin p50 | admin p99 | user p50 | user p99 | p99 ratio | admin CPU µs | user CPU µs |"
    echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    echo "$RUNS_TABLE"
} >"$OUT"
cat "$OUT"
