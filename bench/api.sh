#!/usr/bin/env bash
# API against the physical limit: rke2's API vs the raw etcd under it.
#
# Per run: one `rke2 server` on a loopback address (fresh data dir, coredns,
# ingress-nginx and metrics-server disabled), then the load generator
# (crates/bench-api) does the same work twice, against the same etcd member
# with the same concurrency and object size:
#   raw etcd (etcd-client, the server's etcd client certificate, keys under
#   /bench/raw/)   vs   the API (kube-rs, the admin kubeconfig):
#   put vs create ConfigMap; range of one key vs GET; txn on mod_revision vs
#   PUT with resourceVersion; range of 1,000 keys vs LIST of 1,000
#   ConfigMaps; write answer -> event on a watch; GET paced at 500/s
#   (open loop). Context rows: the etcd calls our store makes per create
#   (txn) and per update on a cache miss (range + txn), and CPU time per
#   operation of rke2, etcd and the client.
# Then watch fan-out: --watchers API watches of ConfigMaps (each its own
#   connection; half with a label selector matching half the writes) vs as
#   many etcd watches (half on a narrower prefix), --fanout-writes writes at
#   --fanout-rate/s: delivery latency over all (write, watcher) pairs, the
#   last delivery, etcd's own watcher count and the RSS of rke2 and etcd.
#   The etcd watches share --etcd-watch-conns HTTP/2 connections (default 1,
#   as an apiserver without a watch cache would have them).
# Prints the tables (throughput, p50, p99 of both, ratio, targets) and writes
# them as Markdown with the environment to bench/results/api.md.
#
# Usage: bench/api.sh [--runs N] [--ops N] [--concurrency N] [--list-ops N]
#                     [--rate N] [--paced-seconds N] [--watchers N (0: none)]
#                     [--fanout-writes N] [--fanout-rate N]
#                     [--etcd-watch-conns N] [--no-build] [--out FILE] [--keep]
# Needs root (the server runs containerd), etcd, kubectl. Not part of the
# test suite.

set -euo pipefail

RUNS=2
OPS=3000
CONCURRENCY=16
LIST_OPS=100
RATE=500
PACED_SECONDS=10
SIZE=1024
WATCHERS=2000
FANOUT_WRITES=200
FANOUT_RATE=10     # 2000 watchers x 50/s outruns raw etcd's fan-out on 2 CPUs: a queue, not delivery
ETCD_WATCH_CONNS=1
LIST_OBJECTS=1000
BUILD=1
KEEP=0
SUBNET=127.77.5    # run R uses SUBNET.(10+R)
DEADLINE=120       # seconds until a wait counts as failed
SETTLE=3           # seconds between the node Ready and the first phase
STOP_GRACE=15

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/api.md"
ARGS="$*"

usage() {
    sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --ops) OPS="${2:?--ops needs a number}"; shift 2 ;;
        --concurrency) CONCURRENCY="${2:?--concurrency needs a number}"; shift 2 ;;
        --list-ops) LIST_OPS="${2:?--list-ops needs a number}"; shift 2 ;;
        --rate) RATE="${2:?--rate needs a number}"; shift 2 ;;
        --paced-seconds) PACED_SECONDS="${2:?--paced-seconds needs a number}"; shift 2 ;;
        --watchers) WATCHERS="${2:?--watchers needs a number}"; shift 2 ;;
        --fanout-writes) FANOUT_WRITES="${2:?--fanout-writes needs a number}"; shift 2 ;;
        --fanout-rate) FANOUT_RATE="${2:?--fanout-rate needs a number}"; shift 2 ;;
        --etcd-watch-conns) ETCD_WATCH_CONNS="${2:?--etcd-watch-conns needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "api.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS OPS CONCURRENCY LIST_OPS RATE PACED_SECONDS FANOUT_WRITES FANOUT_RATE ETCD_WATCH_CONNS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 )); then
        opt=${v,,}; echo "api.sh: --${opt//_/-} must be a positive number" >&2; exit 2
    fi
done
(( RUNS <= 20 && CONCURRENCY <= 256 && OPS <= 200000 )) ||
    { echo "api.sh: at most 20 runs, concurrency 256, 200000 ops" >&2; exit 2; }
[[ "$WATCHERS" =~ ^[0-9]+$ ]] && (( WATCHERS <= 20000 && FANOUT_WRITES <= 100000 && ETCD_WATCH_CONNS <= 1000 )) ||
    { echo "api.sh: --watchers must be 0..20000, --fanout-writes at most 100000, --etcd-watch-conns 1000" >&2; exit 2; }

if (( EUID != 0 )); then
    echo "api.sh: needs root (rke2 server runs containerd); run it as root" >&2
    exit 1
fi
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in etcd cargo awk ss "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "api.sh: ${tool:-kubectl} is not installed" >&2; exit 1; }
done

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup --
WORK=""
RKE2_PID=""        # the current run's server and its children
ETCD_PID=""
CTRD_PID=""
GEN_PID=""         # the load generator
NAP_PID=""         # a running `sleep` of nap()
DATA=""            # the current run's data dir (for killall)
KC=""

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
zombie() { [[ "$(ps -o stat= -p "$1" 2>/dev/null)" == Z* ]]; }

# stop_pid PID: SIGTERM, wait up to STOP_GRACE s, then SIGKILL. Waits for exit.
stop_pid() {
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    if alive "$pid" && ! zombie "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < STOP_GRACE * 10; i++ )); do
            alive "$pid" || break
            zombie "$pid" && break
            sleep 0.1
        done
        if alive "$pid" && ! zombie "$pid"; then
            log "pid $pid ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do alive "$pid" || break; sleep 0.1; done   # not our child
}

# stop_run: the generator, the server (then its etcd and containerd if they
# outlived it), `rke2 killall` for anything it left.
stop_run() {
    stop_pid "$GEN_PID"
    stop_pid "$RKE2_PID"
    stop_pid "$ETCD_PID"
    stop_pid "$CTRD_PID"
    GEN_PID=""; RKE2_PID=""; ETCD_PID=""; CTRD_PID=""
    if [[ -n "$DATA" && -d "$DATA" ]]; then
        "$RKE2" killall --data-dir "$DATA" >/dev/null 2>&1 || log "rke2 killall failed"
    fi
    DATA=""
}

cleanup() {
    local rc=$?
    trap - EXIT ERR
    trap '' INT TERM   # a second Ctrl-C must not cut the cleanup short
    if [[ -n "$NAP_PID" ]]; then kill -TERM "$NAP_PID" 2>/dev/null || true; wait "$NAP_PID" 2>/dev/null || true; fi
    if (( rc != 0 )) && [[ -n "$DATA" && -f "$DATA/../rke2.log" ]]; then
        log "--- tail of the server log"; tail -n 25 "$DATA/../rke2.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
    fi
    stop_run
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ -n "$(awk -v d="$WORK/" 'index($5, d) == 1' /proc/self/mountinfo)" ]]; then
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
set -E
trap 'log "command failed (line $LINENO): $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

die() {
    log "FAILED: $*"
    exit 1
}

# ------------------------------------------------------------------ build --
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 -p rke2-bench-api (target dir $TARGET_DIR)"
    cargo build --release -p rke2 -p rke2-bench-api >&2
fi
RKE2="$TARGET_DIR/release/rke2"
GEN="$TARGET_DIR/release/rke2-bench-api"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"
[[ -x "$GEN" ]] || die "$GEN not found (build it, or drop --no-build)"

for (( run = 1; run <= RUNS; run++ )); do
    for port in 6443 9345 2379 2380 10250; do
        if ss -Hltn "src $SUBNET.$((10 + run)):$port" 2>/dev/null | grep -q .; then
            die "$SUBNET.$((10 + run)):$port is already in use"
        fi
    done
done

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)   # other jobs on the machine skew the figures
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-api-bench.XXXXXX")"

now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
past() { awk -v s="$1" -v n="$(now)" -v d="$2" 'BEGIN { exit !(n - s > d) }'; }
# nap SECONDS: a `sleep` child waited for with the `wait` builtin, which a
# trapped signal interrupts at once (not `read -t`: bash 5.2 aborts when a
# trap exits during `read -t` and its timer fires later, in the cleanup).
nap() {
    sleep "$1" &
    NAP_PID=$!
    wait "$NAP_PID" 2>/dev/null || true
    NAP_PID=""
}
kc() { "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=30s "$@"; }
child_named() { # PARENT COMM: pid of PARENT's child named COMM
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        if [[ "$(cat /proc/"$c"/comm 2>/dev/null)" == "$2" ]]; then echo "$c"; return 0; fi
    done
}

# ------------------------------------------------------------------- runs --
RESULTS="$WORK/results.tsv"   # RESULT lines of all runs, run number appended
VALUES="$WORK/values.tsv"     # VALUE lines (fan-out figures), run number appended
: >"$RESULTS"
: >"$VALUES"
for (( run = 1; run <= RUNS; run++ )); do
    addr="$SUBNET.$((10 + run))"
    dir="$WORK/run$run"
    node="bench-api-$run"
    mkdir -p "$dir"
    DATA="$dir/data"
    KC="$dir/kubeconfig.yaml"
    cat >"$dir/config.yaml" <<EOF
disable:
  - rke2-coredns
  - rke2-ingress-nginx
  - rke2-metrics-server
EOF
    log "run $run/$RUNS: rke2 server on $addr (fresh data dir)"
    t0=$(now)
    CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 CONTAINERD_HTTPS_PROXY=http://127.0.0.1:9 \
        "$RKE2" server --config "$dir/config.yaml" --data-dir "$DATA" --write-kubeconfig "$KC" \
        --bind-address "$addr" --node-ip "$addr" --node-name "$node" >>"$dir/rke2.log" 2>&1 &
    RKE2_PID=$!
    until [[ -s "$KC" ]] && kc get nodes --no-headers 2>/dev/null | awk -v n="$node" '$1 == n && $2 == "Ready" { f = 1 } END { exit !f }'; do
        alive "$RKE2_PID" || die "rke2 server exited before its node was Ready"
        past "$t0" "$DEADLINE" && die "node not Ready within ${DEADLINE}s"
        nap 0.2
    done
    ETCD_PID=$(child_named "$RKE2_PID" etcd)
    CTRD_PID=$(child_named "$RKE2_PID" containerd)
    [[ -n "$ETCD_PID" ]] || die "no etcd child under rke2 (pid $RKE2_PID)"
    log "  node Ready after $(sub "$(now)" "$t0")s; etcd pid $ETCD_PID"
    nap "$SETTLE"

    "$GEN" --etcd-endpoint "https://$addr:2379" --etcd-tls-dir "$DATA/server/tls/etcd" \
        --kubeconfig "$KC" --concurrency "$CONCURRENCY" --ops "$OPS" --size "$SIZE" \
        --list-objects "$LIST_OBJECTS" --list-ops "$LIST_OPS" --rate "$RATE" \
        --paced-seconds "$PACED_SECONDS" --watchers "$WATCHERS" --fanout-writes "$FANOUT_WRITES" \
        --fanout-rate "$FANOUT_RATE" --etcd-watch-conns "$ETCD_WATCH_CONNS" --server-pid "$RKE2_PID" --etcd-pid "$ETCD_PID" \
        >"$dir/gen.tsv" 2> >(tee "$dir/gen.err" >&2) &
    GEN_PID=$!
    rc=0; wait "$GEN_PID" || rc=$?
    GEN_PID=""
    (( rc == 0 )) || die "the load generator failed (exit $rc)"
    awk -v r="$run" -F'\t' -v OFS='\t' '$1 == "RESULT" { print $0, r }' "$dir/gen.tsv" >>"$RESULTS"
    grep -q . "$RESULTS" || die "no results from the load generator"
    awk -v r="$run" -F'\t' -v OFS='\t' '$1 == "VALUE" { print $0, r }' "$dir/gen.tsv" >>"$VALUES"
    stop_run
done

# ------------------------------------------------------------------ table --
# Per phase and side (api / raw / store): the median over runs of each field.
# Fields: 4 n, 5 ops/s, 6 p50, 7 p99, 8 max, 9 rke2 µs/op, 10 etcd µs/op,
# 11 client µs/op; 12 note; 13 run.
summarize() { # [RUN]: only that run, else medians over all
    awk -F'\t' -v only="${1:-}" '
        function side(s) { return s ~ /^API/ ? "api" : (s ~ /\(store/ ? "store" : "raw") }
        only != "" && $13 != only { next }
        {
            k = $2 "|" side($3); if (!(k in cnt)) order[++nk] = k
            c = ++cnt[k]; label[k] = $3; note[k] = $12
            for (f = 4; f <= 11; f++) v[k, f, c] = $f
        }
        function med(k, f,   n, i, j, t, a) {
            n = cnt[k]
            for (i = 1; i <= n; i++) { if (v[k, f, i] == "n/a") return "n/a"; a[i] = v[k, f, i] + 0 }
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        END {
            for (i = 1; i <= nk; i++) {
                k = order[i]; printf "%s|%s", k, label[k]
                for (f = 4; f <= 11; f++) printf "|%s", med(k, f)
                printf "|%s\n", note[k]
            }
        }' "$RESULTS"
}
# field F (4..11) of PHASE|SIDE in a summary
pick() { awk -F'|' -v k="$2|$3" -v f="$(( $4 ))" '$1 "|" $2 == k { print $(f) }' <<<"$1"; }
fmt_ops() { awk -v x="$1" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else printf "%.0f", x }'; }
fmt_ms() { awk -v x="$1" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else if (x < 10) printf "%.2f", x; else printf "%.1f", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

PHASES=(create get update list watch "get@rate")
declare -A PHASE_LABEL=(
    [create]="create: put vs POST ConfigMap"
    [get]="get: range 1 key vs GET"
    [update]="update: txn on mod_revision vs PUT with RV"
    [list]="list: range $LIST_OBJECTS keys vs LIST $LIST_OBJECTS"
    [watch]="watch: write answer -> event"
    [get@rate]="GET paced at $RATE/s (open loop)"
)
declare -A TARGET=(
    [create]="ratio >= 0.70"
    [get@rate]="ours p99 < 5 ms"
)
# table SUMMARY: rows "label|ours ops/s|p50|p99|raw ops/s|p50|p99|ratio|target|verdict"
# (fields in a summary line: 1 phase, 2 side, 3 label, 4 n, 5 ops/s, 6 p50,
# 7 p99, 8 max, 9 rke2 µs, 10 etcd µs, 11 client µs, 12 note)
table_rows() {
    local s=$1 p oo o50 o99 ro r50 r99 rt tg verdict
    for p in "${PHASES[@]}"; do
        oo=$(pick "$s" "$p" api 5); o50=$(pick "$s" "$p" api 6); o99=$(pick "$s" "$p" api 7)
        ro=$(pick "$s" "$p" raw 5); r50=$(pick "$s" "$p" raw 6); r99=$(pick "$s" "$p" raw 7)
        rt=$(ratio "$oo" "$ro")
        tg=${TARGET[$p]:-}
        verdict=""
        case "$p" in
            create) verdict=$(awk -v r="$rt" 'BEGIN { print (r != "n/a" && r >= 0.70) ? "met" : "NOT met" }') ;;
            get@rate) verdict=$(awk -v x="$o99" 'BEGIN { print (x != "" && x < 5) ? "met" : "NOT met" }') ;;
        esac
        printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "${PHASE_LABEL[$p]}" "$(fmt_ops "$oo")" "$(fmt_ms "$o50")" \
            "$(fmt_ms "$o99")" "$(fmt_ops "$ro")" "$(fmt_ms "$r50")" "$(fmt_ms "$r99")" "$rt" "${tg:--}" "${verdict:--}"
    done
}
# context rows: the store's own etcd calls, and CPU per operation
store_rows() {
    local s=$1 p oo so s50 s99
    for p in create update; do
        oo=$(pick "$s" "$p" api 5); so=$(pick "$s" "$p" store 5)
        s50=$(pick "$s" "$p" store 6); s99=$(pick "$s" "$p" store 7)
        local what="raw txn, as the store does it"
        [[ $p == update ]] && what="raw range + txn, as the store does it when its cache lags"
        printf '%s|%s|%s|%s|%s\n' "$p: $what" "$(fmt_ops "$so")" \
            "$(fmt_ms "$s50")" "$(fmt_ms "$s99")" "$(ratio "$oo" "$so")"
    done
}
e2e_row() {
    local s=$1
    printf '%s|%s|%s|%s\n' "$(fmt_ms "$(pick "$s" watch-e2e api 6)")" "$(fmt_ms "$(pick "$s" watch-e2e api 7)")" \
        "$(fmt_ms "$(pick "$s" watch-e2e raw 6)")" "$(fmt_ms "$(pick "$s" watch-e2e raw 7)")"
}
cpu_rows() {
    local s=$1
    awk -F'|' '$1 != "watch-e2e" && $1 != "fanout-e2e" { printf "%s|%s|%s|%s|%s\n", $1, $3, ($9 == "n/a" ? "n/a" : sprintf("%.0f", $9)), ($10 == "n/a" ? "n/a" : sprintf("%.0f", $10)), sprintf("%.0f", $11) }' <<<"$s"
}

# fan-out figures: "key|side|median over runs" (VALUE fields: 2 key, 3 side,
# 4 number, 5 note, 6 run)
vsummarize() {
    awk -F'\t' '
        { k = $2 "|" $3; if (!(k in cnt)) order[++nk] = k; c = ++cnt[k]; v[k, c] = $4 }
        END {
            for (i = 1; i <= nk; i++) {
                k = order[i]; n = cnt[k]; na = 0
                for (j = 1; j <= n; j++) { if (v[k, j] == "n/a") na = 1; a[j] = v[k, j] + 0 }
                for (j = 2; j <= n; j++) { t = a[j]; for (m = j - 1; m >= 1 && a[m] > t; m--) a[m + 1] = a[m]; a[m + 1] = t }
                printf "%s|%s\n", k, na ? "n/a" : ((n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
            }
        }' "$VALUES"
}
vpick() { awk -F'|' -v k="$2|$3" '$1 "|" $2 == k { print $3 }' <<<"$1"; }
fmt_n() { awk -v x="$1" -v d="${2:-0}" 'BEGIN { if (x == "" || x == "n/a") print "n/a"; else printf "%.*f", d, x }'; }
# fan-out rows: "label|API|etcd|API / etcd"
fanout_rows() {
    local s=$1 v=$2 a b f
    for f in "6 p50" "7 p99" "8 max"; do
        set -- $f
        a=$(pick "$s" fanout api "$1"); b=$(pick "$s" fanout raw "$1")
        printf '%s|%s|%s|%s\n' "delivery $2, write answer -> event (ms)" "$(fmt_ms "$a")" "$(fmt_ms "$b")" "$(ratio "$a" "$b")"
    done
    for f in "6 p50" "7 p99"; do
        set -- $f
        a=$(pick "$s" fanout-e2e api "$1"); b=$(pick "$s" fanout-e2e raw "$1")
        printf '%s|%s|%s|%s\n' "delivery $2, write sent -> event (ms)" "$(fmt_ms "$a")" "$(fmt_ms "$b")" "$(ratio "$a" "$b")"
    done
    a=$(vpick "$v" fanout-last api); b=$(vpick "$v" fanout-last raw)
    printf '%s|%s|%s|%s\n' "last write answered -> last watcher has every event (ms)" "$(fmt_ms "$a")" "$(fmt_ms "$b")" "$(ratio "$a" "$b")"
    a=$(pick "$s" fanout api 5); b=$(pick "$s" fanout raw 5)
    # what the paced writes ask for: below it, deliveries queue up
    local offered
    offered=$(awk -v p="$(pick "$s" fanout api 4)" -v r="$FANOUT_RATE" -v w="$FANOUT_WRITES" 'BEGIN { if (p == "") print "n/a"; else printf "%.0f", p * r / w }')
    printf '%s|%s|%s|%s\n' "deliveries per second, first write sent -> last delivery (the writes offer $offered/s)" "$(fmt_ops "$a")" "$(fmt_ops "$b")" "$(ratio "$a" "$b")"
    a=$(pick "$s" fanout api 4); b=$(pick "$s" fanout raw 4)
    printf '%s|%s|%s|%s\n' "(write, watcher) pairs delivered" "$(fmt_n "$a")" "$(fmt_n "$b")" "-"
    a=$(vpick "$v" fanout-open api); b=$(vpick "$v" fanout-open raw)
    printf '%s|%s|%s|%s\n' "opening the $WATCHERS watches, 64 at a time (s)" "$(fmt_n "$a" 2)" "$(fmt_n "$b" 2)" "$(ratio "$a" "$b")"
    a=$(vpick "$v" etcd-watchers api); b=$(vpick "$v" etcd-watchers raw)
    printf '%s|%s|%s|%s\n' "etcd's watchers with the watches open (before: $(fmt_n "$(vpick "$v" etcd-watchers before)"))" "$(fmt_n "$a")" "$(fmt_n "$b")" "$(ratio "$a" "$b")"
    a=$(vpick "$v" rke2-rss api)
    printf '%s|%s|%s|%s\n' "rke2 RSS with the watches open, MiB (before: $(fmt_n "$(vpick "$v" rke2-rss before)"))" "$(fmt_n "$a")" "-" "-"
    a=$(vpick "$v" rke2-rss api-after)
    printf '%s|%s|%s|%s\n' "rke2 RSS after the writes, watches still open (MiB)" "$(fmt_n "$a")" "-" "-"
    a=$(vpick "$v" etcd-rss api); b=$(vpick "$v" etcd-rss raw)
    printf '%s|%s|%s|%s\n' "etcd RSS with the watches open, MiB (before: $(fmt_n "$(vpick "$v" etcd-rss before)"))" "$(fmt_n "$a")" "$(fmt_n "$b")" "-"
}

SUMMARY=$(summarize)
mapfile -t MAIN < <(table_rows "$SUMMARY")
mapfile -t STORE < <(store_rows "$SUMMARY")
mapfile -t CPU < <(cpu_rows "$SUMMARY")
E2E=$(e2e_row "$SUMMARY")
FANOUT=()
FANOUT_ERR=""   # the generator goes on after a failed fan-out phase; the run fails at the end
if (( WATCHERS > 0 )); then
    mapfile -t FANOUT < <(fanout_rows "$SUMMARY" "$(vsummarize)")
    FANOUT_ERR=$(awk -F'\t' '$2 == "fanout-error" { printf "%srun %s: %s", (n++ ? "; " : ""), $6, $5 }' "$VALUES")
fi

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes)"
fi
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
cpus=$(nproc)
kubectl_ver=$("$KUBECTL" version --client 2>/dev/null | awk '/Client Version/ { print $3 }')
etcd_ver=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
rustc_ver=$(rustc --version 2>/dev/null | awk '{ print $2 }')
what="concurrency $CONCURRENCY, $OPS ops per phase, $SIZE B of data per ConfigMap, $LIST_OPS lists of $LIST_OBJECTS, $RATE/s for $PACED_SECONDS s"
(( WATCHERS > 0 )) && what="$what, $WATCHERS watchers with $FANOUT_WRITES writes at $FANOUT_RATE/s"

echo
printf 'rke2 API vs raw etcd (median of %d runs): %s; %s, nproc %s, commit %s\n' "$RUNS" "$what" "$date_s" "$cpus" "$commit"
printf '%-44s %9s %8s %8s %9s %8s %8s %6s   %s\n' "phase" "ours/s" "p50 ms" "p99 ms" "raw/s" "p50 ms" "p99 ms" "ratio" "target"
for r in "${MAIN[@]}"; do
    IFS='|' read -r l a b c d e f g t v <<<"$r"
    printf '%-44s %9s %8s %8s %9s %8s %8s %6s   %s\n' "$l" "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$([[ $t == - ]] && echo - || echo "$t: $v")"
done
for r in "${STORE[@]}"; do
    IFS='|' read -r l a b c g <<<"$r"
    printf '%-44s %9s %8s %8s %9s %8s %8s %6s   %s\n' "$l" "" "" "" "$a" "$b" "$c" "$g" "(context: ours / this)"
done
IFS='|' read -r a b c d <<<"$E2E"
printf '%-44s %9s %8s %8s %9s %8s %8s %6s   %s\n' "watch: write sent -> event" "" "$a" "$b" "" "$c" "$d" "" "(context)"
if (( ${#FANOUT[@]} )); then
    echo
    printf '%-62s %12s %12s %10s\n' "watch fan-out: $WATCHERS watchers, $FANOUT_WRITES writes at $FANOUT_RATE/s" "API" "etcd" "API/etcd"
    for r in "${FANOUT[@]}"; do
        IFS='|' read -r l a b g <<<"$r"
        printf '%-62s %12s %12s %10s\n' "$l" "$a" "$b" "$g"
    done
    [[ -z "$FANOUT_ERR" ]] || echo "fan-out phase FAILED: $FANOUT_ERR"
fi

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 API vs raw etcd"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $cpus, $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- commit: $commit; rustc $rustc_ver"
    echo "- binaries: \`$RKE2\`, \`$GEN\`"
    echo "- etcd $etcd_ver (the server's own child, TLS), kubectl $kubectl_ver (only to wait for Ready)"
    echo "- $RUNS runs, each a fresh \`rke2 server\` on $SUBNET.(10+run); $what"
    echo "- command: \`bench/api.sh${ARGS:+ $ARGS}\`"
    echo
    echo "Median over the runs (the per-run tables follow). \"ours\" = through the API"
    echo "(kube-rs, admin client certificate, HTTP/1.1 over TLS), \"raw\" = etcd-client on the"
    echo "server's etcd (its etcd client certificate, one HTTP/2 connection, keys under"
    echo "\`/bench/raw/\`). ratio = ours / raw throughput. Latencies in ms."
    echo
    echo "| phase | ours ops/s | p50 | p99 | raw ops/s | p50 | p99 | ratio | target |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for r in "${MAIN[@]}"; do
        IFS='|' read -r l a b c d e f g t v <<<"$r"
        echo "| $l | $a | $b | $c | $d | $e | $f | $g | $([[ $t == - ]] && echo - || echo "$t: **$v**") |"
    done
    echo
    echo "Context: the etcd calls our store makes, done raw with the same concurrency. A"
    echo "create is one \`Compare(mod_revision == 0) -> Put\` (the namespace is checked in"
    echo "the watch cache): the floor for a create that must not overwrite. An update is"
    echo "\`Compare(mod_revision == rv) -> Put\` (the main table's raw update row) when"
    echo "the watch cache has the object at the request's resourceVersion, else a read"
    echo "from etcd first (this row):"
    echo
    echo "| store's etcd work, raw | ops/s | p50 | p99 | ours / this |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for r in "${STORE[@]}"; do
        IFS='|' read -r l a b c g <<<"$r"
        echo "| $l | $a | $b | $c | $g |"
    done
    echo
    echo "Context: watch delivery counted from the moment the write was sent (so the"
    echo "write's own latency is included; the table above counts from its answer):"
    echo
    echo "| write sent -> event on the watch | ours p50 | p99 | raw p50 | p99 |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    IFS='|' read -r a b c d <<<"$E2E"
    echo "| API POST -> API watch vs etcd put -> etcd watch | $a | $b | $c | $d |"
    echo
    if (( ${#FANOUT[@]} )); then
        echo "Watch fan-out: $WATCHERS watches of ConfigMaps in one namespace, half of them"
        echo "with the label selector \`bench-fan=a\` that matches half of the writes;"
        echo "$FANOUT_WRITES creates of labelled ConfigMaps paced at $FANOUT_RATE/s. API: each watch"
        echo "its own HTTP/1.1 connection (kube-rs, \`?watch=true&resourceVersion=<list RV>\`),"
        echo "all served by the apiserver's watch cache. etcd: as many etcd-client watch"
        echo "streams on the raw prefix (the selecting half on a narrower prefix, so both"
        echo "sides deliver the same (write, watcher) pairs), multiplexed by etcd-client over"
        echo "$ETCD_WATCH_CONNS HTTP/2 connection(s) of their own (not the one the puts use); the"
        echo "puts carry the same JSON. Latencies over all (write, watcher) pairs, median"
        echo "over runs."
        echo "etcd's watchers = \`etcd_debugging_mvcc_watcher_total\` from its own /metrics."
        echo "1-minute load average as the fan-out phase started: $(fmt_n "$(vpick "$(vsummarize)" loadavg before)" 2)"
        echo "(median over runs; it includes this run's own earlier phases; the deliveries"
        echo "need the CPUs all at once, so other work on the machine moves these figures most)."
        echo
        echo "| $WATCHERS watchers, $FANOUT_WRITES writes at $FANOUT_RATE/s | API watches | etcd watches | API / etcd |"
        echo "| --- | ---: | ---: | ---: |"
        for r in "${FANOUT[@]}"; do
            IFS='|' read -r l a b g <<<"$r"
            echo "| $l | $a | $b | $g |"
        done
        echo
        if [[ -n "$FANOUT_ERR" ]]; then
            echo "**The fan-out phase FAILED** ($FANOUT_ERR); its figures are from the other runs, if any."
            echo
        fi
    fi
    echo "CPU time per operation (µs; \`utime+stime\` of each process over the phase, 10 ms"
    echo "ticks, divided by its operations; the rke2 figure includes its idle background"
    echo "work, the etcd one the raw side's and ours alike):"
    echo
    echo "| phase | side | rke2 | etcd | client |"
    echo "| --- | --- | ---: | ---: | ---: |"
    for r in "${CPU[@]}"; do
        IFS='|' read -r p l a b c <<<"$r"
        echo "| $p | $l | $a | $b | $c |"
    done
    for (( run = 1; run <= RUNS; run++ )); do
        mapfile -t ROWS < <(table_rows "$(summarize "$run")")
        echo
        echo "Run $run:"
        echo
        echo "| phase | ours ops/s | p50 | p99 | raw ops/s | p50 | p99 | ratio |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for r in "${ROWS[@]}"; do
            IFS='|' read -r l a b c d e f g t v <<<"$r"
            echo "| $l | $a | $b | $c | $d | $e | $f | $g |"
        done
    done
    echo
    echo "Notes from the load generator (last run):"
    echo
    awk -F'\t' -v r="$RUNS" '$13 == r && $12 != "-" { printf "- %s, %s: %s\n", $2, $3, $12 }' "$RESULTS"
    echo
    echo "What is timed: closed-loop phases keep $CONCURRENCY requests in flight; each"
    echo "request is timed from before it is sent until its whole answer has arrived (API"
    echo "answers are read as text, not decoded), throughput = operations / wall time of"
    echo "the phase. Bodies are built before the clock starts; the raw put value is the"
    echo "very JSON the API create sends. Each object is updated once (no conflicts). GETs"
    echo "read a fixed scatter over the created objects. Watch: one watch opened before the"
    echo "writes ($OPS writes at concurrency $CONCURRENCY: raw puts on a raw prefix watch,"
    echo "API creates on an API watch of their namespace); latency = event arrival minus"
    echo "the answer of its write, throughput = events / (first write answered -> last"
    echo "event). Paced GETs start every 1/$RATE s whatever the earlier ones do, timed from"
    echo "their own start."
    if (( WATCHERS > 0 )); then
        echo
        echo "Fan-out: all watches are open (answer headers received, etcd watches created)"
        echo "before the first write; write i starts at i/$FANOUT_RATE s whatever the earlier ones do;"
        echo "a delivery is timed when the watcher's task has read the event's line (API: the"
        echo "event type and object name are picked out of it, not decoded), so the"
        echo "generator's own scheduling of $WATCHERS readers on this machine's CPUs is included,"
        echo "on both sides. CPU per operation of the fanout rows is per delivery. Every"
        echo "watcher must have all its events within 60 s of the last write's answer, or the"
        echo "run fails. The API side runs first (etcd's RSS of the API phase is not the raw"
        echo "phase's leftover), each side after the server went idle."
    fi
} >"$OUT"
log "wrote $OUT"
[[ -z "$FANOUT_ERR" ]] || die "the fan-out phase failed: $FANOUT_ERR"
