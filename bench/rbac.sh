#!/usr/bin/env bash
# What authorization costs a request: one `rbac` phase of crates/bench-api
# against one `rke2 server` (fresh data dir, addons disabled). GETs paced at
# --rate/s, as the admin (group system:masters: no authorizer runs) and as a
# user with a client certificate whose only permission is a Role bound to
# it (RBAC answers every request), with 10 and then 10,000 RoleBindings in
# the namespace. Prints p50/p99 of both, the p99 ratio (target <= 1.1) and
# the server's CPU time per request of both, whose difference is what
# authorization (RBAC through the subject index) costs, in µs; writes the
# table to bench/results/rbac.md.
#
# Usage: bench/rbac.sh [--bindings 10,10000] [--rate N] [--paced-seconds N]
#                      [--no-build] [--out FILE]
# Needs root (the server runs containerd). Not part of the test suite.
set -euo pipefail

BINDINGS=10,10000
RATE=500
PACED_SECONDS=10
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
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        *) echo "rbac.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ "$BINDINGS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "rbac.sh: --bindings is a comma-separated list of counts" >&2; exit 2; }
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
    --rbac-bindings "$BINDINGS" --client-ca-dir "$DATA/server/tls" --watchers 0 \
    --server-pid "$PID" ${ETCD_PID:+--etcd-pid "$ETCD_PID"} >"$WORK/gen.tsv"

# RESULT phase side n ops/s p50 p99 max server-µs/op etcd-µs/op client-µs/op note
TABLE=$(awk -F'\t' '
    $1 == "RESULT" && $2 ~ /^rbac@/ {
        b = substr($2, 6); if (!(b in seen)) { seen[b] = 1; order[++n] = b }
        if ($3 ~ /^admin/) { a50[b] = $6; a99[b] = $7; acpu[b] = $9 } else { u50[b] = $6; u99[b] = $7; ucpu[b] = $9 }
    }
    END {
        for (i = 1; i <= n; i++) {
            b = order[i]; r = (a99[b] > 0) ? u99[b] / a99[b] : 0
            printf "| %s | %s | %s | %s | %s | %.2f | %s | %s | %.0f | %s |\n", b, a50[b], a99[b], u50[b], u99[b], r,
                acpu[b], ucpu[b], ucpu[b] - acpu[b], (r <= 1.1) ? "met" : "**NOT met**"
        }
    }' "$WORK/gen.tsv")
[[ -n "$TABLE" ]] || { log "no rbac results"; exit 1; }
{
    echo "# What authorization costs a request"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates bench || echo ' (with uncommitted changes)')"
    echo "- command: \`bench/rbac.sh $ARGS\`; GETs of 2,000 ConfigMaps paced at $RATE/s for $PACED_SECONDS s per side"
    echo
    echo "admin = the admin kubeconfig (group system:masters passes before any"
    echo "authorizer); user = a client certificate whose only permission is a Role"
    echo "bound to it among N RoleBindings of the namespace, so RBAC answers every"
    echo "request. Latencies in ms; CPU = the rke2 server's CPU time per request;"
    echo "authz = user CPU - admin CPU."
    echo
    echo "| RoleBindings | admin p50 | admin p99 | user p50 | user p99 | p99 ratio | admin CPU µs | user CPU µs | authz µs | ratio <= 1.1 |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    echo "$TABLE"
} >"$OUT"
cat "$OUT"
