#!/usr/bin/env bash
# The fault-injection checker, long version.
#
# Runs crates/rke2/tests/faults.rs (three servers behind HAProxy in network
# namespaces; writers doing compare-and-swap updates and creates through the
# load balancer, a watcher, and a fault each round: a server killed with -9,
# only its etcd killed, or its link cut, then healed) with many more rounds
# than CI's 4, and checks afterwards: no acknowledged write lost, no value
# or resourceVersion going backwards, every change seen by the watch in
# order (or covered by a re-list after 410), no 409 for a write that
# applied. Prints rounds, faults injected, operations and violations (must
# be 0) and writes them as Markdown to bench/results/faults.md.
#
# Usage: bench/faults.sh [--rounds N] [--seed S] [--no-build] [--out FILE]
#   --rounds N   fault rounds (default 30; CI runs 4)
#   --seed S     replay a fault schedule (the seed is printed by every run)
#   --no-build   accepted for bench/all.sh; the test harness is compiled by
#                `cargo test --release` either way (the rke2 binary it
#                starts is the release one all.sh built)
# Needs root, haproxy, etcd/etcdctl (scripts/install.sh). Not part of the
# test suite (its 4-round version is).

set -euo pipefail

ROUNDS=30
SEED=""
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/faults.md"
ARGS="$*"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { echo "[bench] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --seed) SEED="${2:?--seed needs a number}"; shift 2 ;;
        --no-build) shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "faults.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && (( ROUNDS >= 1 && ROUNDS <= 10000 )) \
    || { echo "faults.sh: --rounds must be a number from 1 to 10000" >&2; exit 2; }
[[ -z "$SEED" || "$SEED" =~ ^[0-9]+$ ]] || { echo "faults.sh: --seed must be a number" >&2; exit 2; }
(( EUID == 0 )) || { echo "faults.sh: needs root (network namespaces)" >&2; exit 2; }
for t in haproxy etcd etcdctl; do
    command -v "$t" >/dev/null || { echo "faults.sh: $t not found (scripts/install.sh)" >&2; exit 2; }
done

cd "$ROOT"
LOG="$(mktemp "${TMPDIR:-/tmp}/rke2-faults-bench.XXXXXX")"
LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)
log "cargo test --release -p rke2 --test faults, $ROUNDS rounds${SEED:+, seed $SEED} (output: $LOG)"
rc=0
FAULTS_ROUNDS="$ROUNDS" ${SEED:+FAULTS_SEED="$SEED"} \
    cargo test --release -p rke2 --test faults -- --nocapture >"$LOG" 2>&1 || rc=$?

summary=$(grep -E '^faults: SUMMARY ' "$LOG" | tail -n 1 || true)
if [[ -z "$summary" ]]; then
    tail -n 30 "$LOG" >&2
    log "FAILED: the checker printed no summary (exit $rc; output in $LOG)"
    exit 1
fi
field() { sed -nE "s/.* $1=([^ ]+).*/\1/p" <<<"$summary"; }
faults=$(sed -nE 's/.* faults=\{([^}]*)\}.*/\1/p' <<<"$summary")
violations=$(field violations)
# recovery per round: "whole again after X s"
recov=$(grep -oE 'whole again after [0-9.]+s' "$LOG" | awk '{ print $4 + 0 }' | sort -n)
nrec=$(wc -l <<<"$recov")
rec_p50=$(awk -v n="$nrec" 'NR == int((n + 1) / 2) { printf "%.2f", $1 }' <<<"$recov")
rec_max=$(tail -n 1 <<<"$recov" | awk '{ printf "%.2f", $1 }')
mapfile -t vlines < <(grep -E '^faults: (VIOLATION|FALSE CONFLICT|REJECTED)' "$LOG" | head -n 20 || true)

table() {
    echo "| measurement | value | target |"
    echo "| --- | ---: | --- |"
    echo "| rounds | $(field rounds) | - |"
    echo "| faults injected | $faults | - |"
    echo "| operations acknowledged (creates among them) | $(field acked) $(sed -nE 's/.*\(creates ([0-9]+)\).*/(\1)/p' <<<"$summary") | - |"
    echo "| outcome unknown (timeouts) | $(field unknown) | context |"
    echo "| 409 conflicts answered / of them for writes that applied | $(field conflicts) / $(field false-conflicts) | context |"
    echo "| watch events / 410 re-lists / changes covered by a re-list | $(field watch-events) / $(field 410-relists) / $(field covered-by-relist) | context |"
    echo "| cluster whole again after a fault, p50 / max (s) | $rec_p50 / $rec_max | context |"
    echo "| violations | $violations | 0 |"
}

{
    echo "# rke2 fault injection (long checker run)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: nproc $(nproc), $(uname -sr); load average at start $LOAD_AT_START"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (work tree had uncommitted changes)')"
    echo "- command: \`bench/faults.sh $ARGS\`; seed $(field seed) (replay: \`bench/faults.sh --rounds $(field rounds) --seed $(field seed)\`)"
    echo "- checker: \`crates/rke2/tests/faults.rs\` built with \`cargo test --release\`, 3 servers behind HAProxy in network namespaces"
    echo
    table
    echo
    echo "The violations row counts every acknowledged write lost, value or"
    echo "resourceVersion going backwards (in the watch or in the writers' own"
    echo "reads), acknowledged update the watch missed without a 410 re-list"
    echo "covering it, value nobody wrote, watch not ending where the objects"
    echo "are, and 409 answered for a write that had applied. Nothing in this"
    echo "table depends on machine speed except the recovery times (etcd's"
    echo "election timeout is 2 s)."
    if (( ${#vlines[@]} )); then
        echo
        echo "First violations:"
        echo
        printf -- '- `%s`\n' "${vlines[@]}"
    fi
} >"$OUT"

table | column -t -s '|' >&2 || table >&2
log "wrote $OUT"
if (( rc != 0 )) || [[ "$violations" != "0" ]]; then
    log "FAILED: $violations violations (test exit $rc; output in $LOG)"
    exit 1
fi
rm -f "$LOG"
