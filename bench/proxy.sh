#!/usr/bin/env bash
# What a sync of the service proxy costs: crates/service-proxy's
# `proxy_bench` example, in a network namespace of its own (the machine's
# tables are not touched), writes --services Services x --endpoints
# endpoints with one full sync (one `nft -f` transaction), then changes one
# endpoint of one Service and syncs again (a partial sync: the changed
# chains and elements only). The reference, in the same run, is raw
# `nft -f` of the same full script (what the kernel and nft alone cost for
# that ruleset). Medians over --rounds; writes bench/results/proxy.md.
#
# Usage: bench/proxy.sh [--services N] [--endpoints N] [--rounds N]
#                       [--no-build] [--out FILE]
# Needs root and Debian's nftables (scripts/install.sh). Not part of the
# test suite.
set -euo pipefail

SERVICES=1000
ENDPOINTS=10
ROUNDS=5
BUILD=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/proxy.md"
ARGS="$*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --services) SERVICES="${2:?}"; shift 2 ;;
        --endpoints) ENDPOINTS="${2:?}"; shift 2 ;;
        --rounds) ROUNDS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        *) echo "proxy.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for v in "$SERVICES" "$ENDPOINTS" "$ROUNDS"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "proxy.sh: counts are positive integers" >&2; exit 2; }
done
(( EUID == 0 )) || { echo "proxy.sh: needs root (network namespace, nftables)" >&2; exit 1; }
command -v nft >/dev/null || { echo "proxy.sh: nft missing (bash scripts/install.sh)" >&2; exit 1; }
log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2-service-proxy --example proxy_bench"
    cargo build --release -p rke2-service-proxy --example proxy_bench >&2
fi
BIN="$TARGET_DIR/release/examples/proxy_bench"
[[ -x "$BIN" ]] || { echo "proxy.sh: $BIN missing (drop --no-build)" >&2; exit 1; }

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
log "proxy_bench $SERVICES $ENDPOINTS $ROUNDS"
TABLE=$("$BIN" "$SERVICES" "$ENDPOINTS" "$ROUNDS")
mkdir -p "$(dirname "$OUT")"
{
    echo "# Service proxy sync time"
    echo
    echo "\`bench/proxy.sh $ARGS\` on $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown),"
    echo "$(nproc) cores, kernel $(uname -r), $(nft --version), load at start $LOAD_AT_START, at end $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "$TABLE"
} >"$OUT"
cat "$OUT"
