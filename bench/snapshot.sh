#!/usr/bin/env bash
# etcd snapshot benchmark: `rke2 etcd-snapshot save` against `etcdctl
# snapshot save` of the same database, in the same run.
#
# It starts one `rke2 server` (release build) on a loopback address with a
# fresh data dir and scheduled snapshots off, fills its database with
# ConfigMaps (--objects of --object-kib KiB each, through kubectl), then per
# run takes, one after the other:
#   1. `rke2 etcd-snapshot save` (plain): process start to exit, which also
#      writes the SHA-256 sidecar and updates the ETCDSnapshotFile records;
#   2. `rke2 etcd-snapshot save --snapshot-compress` (zip);
#   3. the reference: `etcdctl snapshot save` against the same member with
#      the same client certificate.
# It prints median/min/max of time and size, the ratios ours / etcdctl, and
# writes the table as Markdown to bench/results/snapshot.md.
#
# Usage: bench/snapshot.sh [--runs N] [--objects N] [--object-kib N] [--no-build] [--out FILE]
# (RKE2_BIN=path uses another rke2 binary, e.g. a debug build, with --no-build.)
# Not part of the test suite.

set -euo pipefail

RUNS=5
OBJECTS=3000
OBJECT_KIB=8
BUILD=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/snapshot.md"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?}"; shift 2 ;;
        --objects) OBJECTS="${2:?}"; shift 2 ;;
        --object-kib) OBJECT_KIB="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "snapshot.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in "$RUNS" "$OBJECTS" "$OBJECT_KIB"; do
    [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 )) || { echo "snapshot.sh: numbers must be positive" >&2; exit 2; }
done
(( RUNS <= 50 && OBJECTS <= 100000 && OBJECT_KIB <= 512 )) || { echo "snapshot.sh: --runs <= 50, --objects <= 100000, --object-kib <= 512" >&2; exit 2; }
KUBECTL="$(ls /usr/local/lib/rke2-test/kubectl/kubectl-1.* 2>/dev/null | sort -V | tail -n1 || true)"
[[ -x "$KUBECTL" ]] || KUBECTL="$(command -v kubectl || true)"
for tool in etcd etcdctl cargo awk python3; do
    command -v "$tool" >/dev/null || { echo "snapshot.sh: $tool is not installed" >&2; exit 1; }
done
[[ -x "$KUBECTL" ]] || { echo "snapshot.sh: no kubectl (scripts/install.sh)" >&2; exit 1; }

log() { printf '[bench] %s\n' "$*" >&2; }

WORK=""
SERVER_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { log "FAILED: $*"; exit 1; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="${RKE2_BIN:-$TARGET_DIR/release/rke2}"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-bench-snapshot.XXXXXX")"
IP=""
for last in $(seq 60 250); do
    cand="127.0.83.$last"
    if ! ss -Hltn "src $cand" 2>/dev/null | grep -q .; then IP=$cand; break; fi
done
[[ -n "$IP" ]] || die "no free loopback address"
DATA="$WORK/data"
CONF="$WORK/config.yaml"
KCFG="$WORK/rke2.yaml"
NODE="bench-snapshot"
printf 'etcd-disable-snapshots: true\n' >"$CONF"

log "starting rke2 server on $IP"
"$RKE2" server --data-dir "$DATA" --config "$CONF" --bind-address "$IP" --node-name "$NODE" \
    --write-kubeconfig "$KCFG" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 1200); do
    [[ -f "$KCFG" ]] && "$KUBECTL" --kubeconfig "$KCFG" get --raw /readyz >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited; log: $WORK/server.log"
    sleep 0.1
done
"$KUBECTL" --kubeconfig "$KCFG" get --raw /readyz >/dev/null 2>&1 || die "server not ready in 120 s"

log "writing $OBJECTS ConfigMaps of $OBJECT_KIB KiB"
python3 - "$OBJECTS" "$OBJECT_KIB" "$WORK/objects" <<'PY'
import json, os, sys
n, kib, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(out, exist_ok=True)
chunk = 250
for start in range(0, n, chunk):
    items = []
    for i in range(start, min(n, start + chunk)):
        payload = os.urandom(kib * 512).hex()
        items.append({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": f"bench-{i:06d}", "namespace": "default"},
                      "data": {"payload": payload}})
    with open(os.path.join(out, f"{start:06d}.json"), "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
PY
for f in "$WORK"/objects/*.json; do
    "$KUBECTL" --kubeconfig "$KCFG" create -f "$f" >/dev/null || die "creating objects from $f"
done
rm -rf "$WORK/objects"

TLS="$DATA/server/tls/etcd"
ETCDCTL=(etcdctl --endpoints="https://$IP:2379" --cacert="$TLS/server-ca.crt" --cert="$TLS/client.crt" --key="$TLS/client.key")
DB_SIZE=$(ETCDCTL_API=3 "${ETCDCTL[@]}" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
log "etcd database: $DB_SIZE bytes"

SNAPDIR="$WORK/snaps"
mkdir -p "$SNAPDIR"
now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
declare -a T_PLAIN T_ZIP T_REF S_PLAIN S_ZIP S_REF
snap() { # extra args...; prints the saved path
    "$RKE2" etcd-snapshot save --data-dir "$DATA" --config "$CONF" --node-name "$NODE" \
        --dir "$SNAPDIR" --snapshot-retention 100 "$@" | awk '/^Snapshot /{print $5; exit}' | sed 's|^file://||'
}
for r in $(seq 1 "$RUNS"); do
    t0=$(now); p=$(snap --name "plain$r"); t1=$(now)
    [[ -f "$p" ]] || die "rke2 etcd-snapshot save wrote no file"
    T_PLAIN+=("$(sub "$t1" "$t0")"); S_PLAIN+=("$(stat -c %s "$p")")
    t0=$(now); p=$(snap --name "zip$r" --snapshot-compress); t1=$(now)
    [[ -f "$p" ]] || die "rke2 etcd-snapshot save --snapshot-compress wrote no file"
    T_ZIP+=("$(sub "$t1" "$t0")"); S_ZIP+=("$(stat -c %s "$p")")
    t0=$(now); ETCDCTL_API=3 "${ETCDCTL[@]}" snapshot save "$SNAPDIR/ref$r.db" >/dev/null 2>&1 || die "etcdctl snapshot save"; t1=$(now)
    T_REF+=("$(sub "$t1" "$t0")"); S_REF+=("$(stat -c %s "$SNAPDIR/ref$r.db")")
    log "run $r: plain ${T_PLAIN[-1]} s, zip ${T_ZIP[-1]} s, etcdctl ${T_REF[-1]} s"
    rm -f "$SNAPDIR"/*
done

stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f %.3f %.3f", m, a[1], a[NR]}'; }
med() { stats "$@" | awk '{print $1}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mb() { awk -v a="$1" 'BEGIN { printf "%.2f", a / 1048576 }'; }
read -r tp_m tp_lo tp_hi <<<"$(stats "${T_PLAIN[@]}")"
read -r tz_m tz_lo tz_hi <<<"$(stats "${T_ZIP[@]}")"
read -r tr_m tr_lo tr_hi <<<"$(stats "${T_REF[@]}")"
sp=$(med "${S_PLAIN[@]}"); sz=$(med "${S_ZIP[@]}"); sr=$(med "${S_REF[@]}")

mkdir -p "$(dirname "$OUT")"
{
    echo "# etcd snapshot benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr)"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- runs: $RUNS; database: $OBJECTS ConfigMaps of $OBJECT_KIB KiB, etcd dbSize $(mb "$DB_SIZE") MiB"
    echo "- $(etcd --version | head -n1), $(etcdctl version | head -n1)"
    echo "- binary: $RKE2"
    echo "- command: \`bench/snapshot.sh --runs $RUNS --objects $OBJECTS --object-kib $OBJECT_KIB\`"
    echo
    echo "| what | time median (s) | min | max | size (MiB) | time / etcdctl | size / etcdctl |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    echo "| \`rke2 etcd-snapshot save\` | $tp_m | $tp_lo | $tp_hi | $(mb "$sp") | $(ratio "$tp_m" "$tr_m") | $(ratio "$sp" "$sr") |"
    echo "| \`rke2 etcd-snapshot save --snapshot-compress\` | $tz_m | $tz_lo | $tz_hi | $(mb "$sz") | $(ratio "$tz_m" "$tr_m") | $(ratio "$sz" "$sr") |"
    echo "| \`etcdctl snapshot save\` (reference) | $tr_m | $tr_lo | $tr_hi | $(mb "$sr") | 1.00 | 1.00 |"
    echo
    echo "Times are wall clock from process start to exit. \`rke2 etcd-snapshot save\`"
    echo "also reads the server's config, writes the SHA-256 sidecar (hashing the"
    echo "file once more), checks etcd's trailing hash, prunes to the retention and"
    echo "updates the ETCDSnapshotFile records through the API; etcdctl only streams"
    echo "and writes. The payloads are random hex, so they compress to about half"
    echo "(real clusters' objects compress much better)."
} >"$OUT"
cat "$OUT"
