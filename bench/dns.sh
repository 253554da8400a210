#!/usr/bin/env bash
# Cluster DNS benchmark: `rke2 dns` against dnsmasq serving the same names.
#
# One `rke2 server` on a loopback address (fresh data dir) with N Services
# (ClusterIP, one named port) in namespace `bench`; `rke2 dns` watching it;
# dnsmasq answering the same N names from an --addn-hosts file of the same
# ClusterIPs (TTL 30 as ours). Both servers are pinned to CPU 1, dnsperf to
# CPU 0 (2-core machine: one core each, dnsmasq being single-threaded).
# Per run, for each server in turn:
#   1. throughput: dnsperf for --seconds s, 4 clients, 200 queries
#      outstanding, the N names in order (A queries, all NOERROR):
#      queries/s, lost queries;
#   2. latency: dnsperf at a fixed --rate queries/s for 5 s, every answer
#      timed (-v): p50 and p99.
# Then the RSS of the `rke2 dns` process holding the N Services (after the
# load), and dnsmasq's for reference.
# Prints a table (median over runs; ratio = median of per-run ours/dnsmasq
# throughput, the target being >= 1.0) and writes it as Markdown to
# bench/results/dns.md.
#
# Usage: bench/dns.sh [--runs N] [--services N] [--seconds N] [--rate N]
#                     [--no-build] [--out FILE] [--keep]
# Needs root (port 53), etcd, kubectl, dnsperf, dnsmasq, dig, taskset, curl
# (scripts/install.sh). Not part of the test suite.

set -euo pipefail

RUNS=3
SERVICES=1000
SECONDS_=10
RATE=20000
BUILD=1
KEEP=0
SUBNET=127.77.6    # .10 server, .11 rke2 dns, .12 dnsmasq
DEADLINE=120

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/dns.md"
ARGS="$*"

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --services) SERVICES="${2:?--services needs a number}"; shift 2 ;;
        --seconds) SECONDS_="${2:?--seconds needs a number}"; shift 2 ;;
        --rate) RATE="${2:?--rate needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "dns.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS SERVICES SECONDS_ RATE; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 )); then
        echo "dns.sh: --${v,,} must be a positive number" >&2; exit 2
    fi
done
(( RUNS <= 20 && SERVICES <= 20000 && SECONDS_ <= 120 && RATE <= 200000 )) ||
    { echo "dns.sh: at most 20 runs, 20000 services, 120 seconds, rate 200000" >&2; exit 2; }
(( EUID == 0 )) || { echo "dns.sh: needs root (both servers listen on port 53)" >&2; exit 1; }
KUBECTL="${KUBECTL:-$(command -v kubectl || ls /usr/local/lib/rke2-test/kubectl/kubectl-1.* 2>/dev/null | sort -V | tail -1 || true)}"
for tool in etcd cargo dnsperf dnsmasq dig taskset curl awk "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "dns.sh: ${tool:-kubectl} is not installed (scripts/install.sh)" >&2; exit 1; }
done
(( $(nproc) >= 2 )) || { echo "dns.sh: needs 2 CPUs (servers on CPU 1, dnsperf on CPU 0)" >&2; exit 1; }

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup --
WORK=""
SERVER_PID=""
DNS_PID=""
MASQ_PID=""
DATA=""

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
stop_pid() {
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < 300; i++ )); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    trap '' INT TERM
    if (( rc != 0 )) && [[ -n "$WORK" && -f "$WORK/server.log" ]]; then
        log "--- tail of the server log"; tail -n 15 "$WORK/server.log" >&2 || true
        [[ -f "$WORK/dns.log" ]] && { log "--- tail of the rke2 dns log"; tail -n 15 "$WORK/dns.log" >&2 || true; }
    fi
    stop_pid "$DNS_PID"
    stop_pid "$MASQ_PID"
    stop_pid "$SERVER_PID"
    if [[ -n "$DATA" && -d "$DATA/agent" ]]; then
        "$RKE2" killall --data-dir "$DATA" >/dev/null 2>&1 || log "rke2 killall failed"
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if (( KEEP )); then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------------ build --
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if (( BUILD )); then
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="$TARGET_DIR/release/rke2"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-bench-dns.XXXXXX")"
chmod 755 "$WORK"   # dnsmasq reads its hosts file as nobody
DATA="$WORK/data"
KC="$WORK/rke2.yaml"

# until SECONDS WHAT CMD...: polls CMD every 0.1 s until it succeeds
until_ok() {
    local limit=$1 what=$2 t0=$EPOCHREALTIME; shift 2
    until "$@" >/dev/null 2>&1; do
        awk -v s="$t0" -v n="$EPOCHREALTIME" -v l="$limit" 'BEGIN { exit !(n - s > l) }' &&
            die "timed out after ${limit}s waiting for $what"
        sleep 0.1
    done
}
kc() { "$KUBECTL" --kubeconfig "$KC" --request-timeout=30s "$@"; }
for ip in 10 11 12; do
    ss -Hlun "src $SUBNET.$ip:53" | grep -q . && die "$SUBNET.$ip:53 is in use"
done

# ----------------------------------------------------------------- server --
log "starting rke2 server on $SUBNET.10"
"$RKE2" server --data-dir "$DATA" --write-kubeconfig "$KC" --bind-address "$SUBNET.10" \
    --node-name bench-dns >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
ready_api() { [[ -s "$KC" ]] && [[ "$(kc get --raw /readyz 2>/dev/null)" == ok ]]; }
until_ok "$DEADLINE" "the API" ready_api

log "creating $SERVICES Services"
kc create namespace bench >/dev/null
awk -v n="$SERVICES" 'BEGIN {
    print "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": ["
    for (i = 0; i < n; i++)
        printf "%s{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"svc-%d\", \"namespace\": \"bench\"}, \"spec\": {\"ports\": [{\"name\": \"http\", \"port\": 80}]}}\n", (i ? "," : ""), i
    print "]}"
}' >"$WORK/services.json"
kc create -f "$WORK/services.json" >/dev/null
kc get services -n bench -o jsonpath='{range .items[*]}{.metadata.name} {.spec.clusterIP}{"\n"}{end}' >"$WORK/ips"
(( $(wc -l <"$WORK/ips") == SERVICES )) || die "expected $SERVICES Services, got $(wc -l <"$WORK/ips")"
awk '{ print $1 ".bench.svc.cluster.local A" }' "$WORK/ips" >"$WORK/queries"
awk '{ print $2, $1 ".bench.svc.cluster.local" }' "$WORK/ips" >"$WORK/hosts"
chmod 644 "$WORK/hosts"
LAST=$(tail -1 "$WORK/ips")
LAST_NAME="${LAST%% *}.bench.svc.cluster.local"
LAST_IP="${LAST##* }"

# ---------------------------------------------------------- the two DNSes --
printf 'nameserver %s.12\n' "$SUBNET" >"$WORK/resolv.conf"
log "starting rke2 dns on $SUBNET.11 (CPU 1)"
taskset -c 1 "$RKE2" dns --listen "$SUBNET.11:53" --health-listen "$SUBNET.11:8080" \
    --ready-listen "$SUBNET.11:8181" --kubeconfig "$KC" --resolv-conf "$WORK/resolv.conf" \
    >"$WORK/dns.log" 2>&1 &
DNS_PID=$!
log "starting dnsmasq on $SUBNET.12 (CPU 1)"
taskset -c 1 dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --addn-hosts="$WORK/hosts" --listen-address="$SUBNET.12" --bind-interfaces --port=53 \
    --pid-file= --local-ttl=30 >"$WORK/dnsmasq.log" 2>&1 &
MASQ_PID=$!
ready_dns() { [[ "$(curl -s "http://$SUBNET.11:8181/ready")" == OK ]]; }
until_ok "$DEADLINE" "rke2 dns /ready" ready_dns
resolves() { [[ "$(dig @"$1" +short +time=1 +tries=1 "$LAST_NAME" A)" == "$LAST_IP" ]]; }
until_ok "$DEADLINE" "rke2 dns to answer $LAST_NAME" resolves "$SUBNET.11"
until_ok "$DEADLINE" "dnsmasq to answer $LAST_NAME" resolves "$SUBNET.12"

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
RSS_SYNCED=$(rss_mb "$DNS_PID")

# throughput ADDR -> "qps lost"
throughput() {
    taskset -c 0 dnsperf -s "$1" -d "$WORK/queries" -l "$SECONDS_" -c 4 -q 200 2>&1 |
        awk '/Queries per second:/ { q = $4 } /Queries lost:/ { l = $3 } END { printf "%.0f %d\n", q, l }'
}
# latency ADDR -> "p50_ms p99_ms"
latency() {
    taskset -c 0 dnsperf -s "$1" -d "$WORK/queries" -l 5 -Q "$RATE" -c 4 -v 2>/dev/null |
        awk '/^> / { print $NF }' | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan nan"; exit }
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%.3f %.3f\n", v[i50] * 1000, v[i99] * 1000 }'
}

declare -a OURS_QPS MASQ_QPS OURS_P50 OURS_P99 MASQ_P50 MASQ_P99 RATIO OURS_LOST MASQ_LOST
for (( r = 1; r <= RUNS; r++ )); do
    read -r q l < <(throughput "$SUBNET.11"); OURS_QPS+=("$q"); OURS_LOST+=("$l")
    read -r q l < <(throughput "$SUBNET.12"); MASQ_QPS+=("$q"); MASQ_LOST+=("$l")
    read -r a b < <(latency "$SUBNET.11"); OURS_P50+=("$a"); OURS_P99+=("$b")
    read -r a b < <(latency "$SUBNET.12"); MASQ_P50+=("$a"); MASQ_P99+=("$b")
    RATIO+=("$(awk -v a="${OURS_QPS[-1]}" -v b="${MASQ_QPS[-1]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')")
    log "run $r: ours ${OURS_QPS[-1]} q/s (p99 ${OURS_P99[-1]} ms), dnsmasq ${MASQ_QPS[-1]} q/s (p99 ${MASQ_P99[-1]} ms), ratio ${RATIO[-1]}"
done
RSS_LOADED=$(rss_mb "$DNS_PID")
RSS_MASQ=$(rss_mb "$MASQ_PID")

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
row() { # LABEL VALUES...
    local label=$1; shift
    printf '| %s | %s | %s |\n' "$label" "$(median "$@")" "$(printf '%s ' "$@")"
}

{
    echo "# Cluster DNS: rke2 dns vs dnsmasq"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $SERVICES Services, $RUNS runs of ${SECONDS_} s (throughput) and 5 s at $RATE q/s (latency); \`bench/dns.sh $ARGS\`, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), dnsmasq $(dnsmasq --version | awk 'NR == 1 { print $3 }'), dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')."
    echo
    echo "Servers on CPU 1, dnsperf on CPU 0; A queries for the $SERVICES Service names in turn, all NOERROR. \"Lost\" are the queries still in flight when dnsperf's time limit ends."
    echo
    echo "| figure | median | runs |"
    echo "|---|---|---|"
    row "rke2 dns queries/s" "${OURS_QPS[@]}"
    row "dnsmasq queries/s" "${MASQ_QPS[@]}"
    row "ratio ours / dnsmasq (target >= 1.0)" "${RATIO[@]}"
    row "rke2 dns lost queries" "${OURS_LOST[@]}"
    row "dnsmasq lost queries" "${MASQ_LOST[@]}"
    row "rke2 dns p50 at $RATE q/s (ms)" "${OURS_P50[@]}"
    row "rke2 dns p99 at $RATE q/s (ms)" "${OURS_P99[@]}"
    row "dnsmasq p50 at $RATE q/s (ms)" "${MASQ_P50[@]}"
    row "dnsmasq p99 at $RATE q/s (ms)" "${MASQ_P99[@]}"
    echo "| rke2 dns RSS, $SERVICES Services, synced (MB) | $RSS_SYNCED | |"
    echo "| rke2 dns RSS, $SERVICES Services, after the load (MB) | $RSS_LOADED | |"
    echo "| dnsmasq RSS, $SERVICES hosts, after the load (MB) | $RSS_MASQ | |"
} | tee "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "written to $OUT"
