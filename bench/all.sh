#!/usr/bin/env bash
# Every benchmark, one after another, and one summary table.
#
# Builds once (`cargo build --release` of rke2 and of every package a bench
# script builds, e.g. rke2-bench-api), then runs each script in bench/ with
# --no-build, never two at once (they would disturb each other): startup.sh,
# agent.sh, ha.sh, scheduler.sh, pods.sh, api.sh, scale.sh, dns.sh,
# services.sh and faults.sh (the long fault-injection checker; when present).
# Each writes its own Markdown to a temp dir; bench/lib/summary.py takes the
# figures from those tables and prints ONE table (figure, ours, the reference
# measured in the same run, ratio ours / reference, target, source script),
# written with the environment to bench/results/summary.md (each script's own
# tables appended) and as a bar chart of the ratios to bench/results/summary.png.
# A script that fails does not stop the others: its rows say FAILED with the
# reason, and all.sh exits 1 at the end.
#
# Usage: bench/all.sh [--quick] [--no-build] [--only a,b] [--skip a,b]
#                     [--out DIR] [--keep-logs] [--verbose]
#   --quick      the smallest sensible options of each script (a smoke run,
#                about 8 minutes instead of about 30)
#   --no-build   reuse the release binaries in $CARGO_TARGET_DIR (./target)
#   --only/--skip  script names without .sh (e.g. --only startup,api)
#   --out DIR    write summary.md and summary.png to DIR (default bench/results)
#   --keep-logs  keep every script's output (kept anyway when one failed)
#   --verbose    show the scripts' progress as they run (else only in the logs)
# Needs what the scripts need (root, etcd, kubectl, haproxy, containerd, ...)
# and python3 (matplotlib is pip-installed when missing). Not part of the
# test suite.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
BUILD=1
ONLY=""
SKIP=""
OUTDIR="$ROOT/bench/results"
KEEP_LOGS=0
VERBOSE=0
ARGS="$*"

# the scripts, in this order (a missing one is reported as not present)
SCRIPTS=(startup agent ha scheduler pods api scale dns services faults)
# --quick: the smallest sensible options of each
declare -A QUICK_OPTS=(
    [startup]="--runs 1"
    [agent]="--rounds 1"
    [ha]="--rounds 1"
    [scheduler]="--pods 200 --nodes 20 --creators 4"
    [pods]="--runs 1 --pods 30 --creators 2"
    [api]="--runs 1 --ops 500 --list-ops 20 --paced-seconds 3"
    [scale]="--nodes 50 --pods 500 --watchers 50 --watch-events 20"
    [dns]="--runs 1 --seconds 3"
    [services]="--rounds 5 --runs 1 --requests 300 --seconds 2"
    [faults]="--rounds 4"
)

usage() { sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --only) ONLY="${2:?--only needs script names}"; shift 2 ;;
        --skip) SKIP="${2:?--skip needs script names}"; shift 2 ;;
        --out) OUTDIR="${2:?--out needs a directory}"; shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -v|--verbose) VERBOSE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "all.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in ${ONLY//,/ } ${SKIP//,/ }; do
    [[ " ${SCRIPTS[*]} " == *" ${n%.sh} "* ]] || { echo "all.sh: no script named $n (${SCRIPTS[*]})" >&2; exit 2; }
done
selected() { # NAME: chosen by --only/--skip
    local n=$1
    if [[ -n $ONLY && ",${ONLY//.sh/}," != *",$n,"* ]]; then return 1; fi
    [[ ",${SKIP//.sh/}," != *",$n,"* ]]
}
command -v python3 >/dev/null || { echo "all.sh: python3 is needed for the summary" >&2; exit 1; }

log() { printf '[all] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup --
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-all.XXXXXX")"
CHILD=""           # the script running now
STOPPING=0
FAILED=0

on_signal() { # forward to the running script (it cleans up), run no more
    STOPPING=1
    log "$1: stopping${CHILD:+ the running script (pid $CHILD)}"
    if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null || true; fi
}
trap 'on_signal interrupted' INT
trap 'on_signal terminated' TERM
cleanup() {
    local rc=$?
    if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
    if (( KEEP_LOGS || FAILED || rc != 0 )); then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
START_ALL=$EPOCHREALTIME
LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ build --
# every `-p NAME` on a `cargo build --release` line of the scripts we run
PKGS=(rke2)
for n in "${SCRIPTS[@]}"; do
    f="$ROOT/bench/$n.sh"
    [[ -f $f ]] && selected "$n" || continue
    for p in $(grep -E '^[[:space:]]*cargo build --release' "$f" | grep -oE -- '-p [A-Za-z0-9_-]+' | awk '{ print $2 }'); do
        [[ " ${PKGS[*]} " == *" $p "* ]] || PKGS+=("$p")
    done
done
if (( BUILD )); then
    pargs=()
    for p in "${PKGS[@]}"; do pargs+=(-p "$p"); done
    log "building: cargo build --release ${pargs[*]} (target dir $TARGET_DIR)"
    if ! cargo build --release "${pargs[@]}" >&2; then
        log "FAILED: the release build failed; no benchmark run"
        FAILED=1
        exit 1
    fi
fi
[[ -x "$TARGET_DIR/release/rke2" ]] || { log "$TARGET_DIR/release/rke2 not found (drop --no-build)"; FAILED=1; exit 1; }

# --------------------------------------------------------------- leftovers --
# What a script leaves behind after it exited: its temp dirs (the prefix of
# its `mktemp -d` line, e.g. rke2-ha-bench.), processes still using them,
# mounts below them, and network namespaces named with its PREFIX= (agent.sh,
# ha.sh) that were not there before. Only reported, never removed. Another
# run of the same script beside this one would be reported too.
TMPD="${TMPDIR:-/tmp}"
own_names() { # SCRIPT: sets TMP_PFX, NS_PFX
    TMP_PFX=$(grep -oE 'mktemp -d "\$\{TMPDIR:-/tmp\}/[A-Za-z0-9_.-]+\.X+' "$1" | head -n 1 | sed -E 's#.*/##; s/X+$//' || true)
    NS_PFX=$(sed -n 's/^PREFIX=\([A-Za-z0-9_-]*\)$/\1/p' "$1" | head -n 1)
}
netns_list() { ip netns list 2>/dev/null | awk '{ print $1 }' | sort; }
leftovers() { # STAMPFILE NETNS-BEFORE
    local d p out=() procs mounts ns
    if [[ -n $TMP_PFX ]]; then
        for d in $(find "$TMPD" -maxdepth 1 -name "$TMP_PFX*" -newer "$1" 2>/dev/null | sort); do
            procs=""
            for p in /proc/[0-9]*; do
                if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$d/"; then procs+=" ${p#/proc/}"; fi
            done
            mounts=$(awk -v d="$d/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)
            out+=("temp dir $d left${procs:+, processes still using it:$procs}$( ((mounts)) && echo ", $mounts mounts below it" || true)")
        done
    fi
    if [[ -n $NS_PFX ]]; then
        ns=$(comm -13 <(printf '%s\n' "$2") <(netns_list) | grep "^$NS_PFX-" | tr '\n' ' ' || true)
        [[ -z ${ns// /} ]] || out+=("network namespaces left: $ns")
    fi
    (( ${#out[@]} )) && printf '%s; ' "${out[@]}" | sed 's/; $//'
    return 0
}

# ------------------------------------------------------------------- runs --
RESULTS="$WORK/results"
mkdir -p "$RESULTS" "$WORK/logs"
STATUS="$WORK/status.tsv"
: >"$STATUS"

for n in "${SCRIPTS[@]}"; do
    f="$ROOT/bench/$n.sh"
    if ! selected "$n"; then printf '%s\t-\t-\t%s\t\n' "$n" "skipped (--only/--skip)" >>"$STATUS"; continue; fi
    if [[ ! -f $f ]]; then printf '%s\t-\t-\t%s\t\n' "$n" "bench/$n.sh not present" >>"$STATUS"; continue; fi
    if (( STOPPING )); then printf '%s\t-\t-\t%s\t\n' "$n" "not run (interrupted)" >>"$STATUS"; continue; fi
    opts=""
    (( QUICK )) && opts=${QUICK_OPTS[$n]:-}
    logf="$WORK/logs/$n.log"
    touch "$WORK/stamp-$n"
    own_names "$f"
    ns_before=$(netns_list)
    log "$n.sh --no-build${opts:+ $opts} (log: $logf)"
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2086
    if (( VERBOSE )); then
        bash "$f" --no-build --out "$RESULTS/$n.md" $opts > >(tee "$logf") 2> >(tee -a "$logf" >&2) &
    else
        bash "$f" --no-build --out "$RESULTS/$n.md" $opts >"$logf" 2>&1 &
    fi
    CHILD=$!
    rc=0
    while :; do
        wait "$CHILD" && rc=0 || rc=$?
        # a trapped signal interrupts `wait` (status > 128) while the script still runs
        if kill -0 "$CHILD" 2>/dev/null; then continue; fi
        break
    done
    CHILD=""
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
    reason=""
    if (( rc != 0 )); then
        FAILED=$((FAILED + 1))
        # its own verdict: the last FAILED line, else the first failed
        # command its ERR trap reported, else a missing tool or root
        clean=$(sed 's/\x1b\[[0-9;]*m//g' "$logf")
        reason=$(grep -E '^\[bench\] FAILED: ' <<<"$clean" | tail -n 1 | sed 's/^\[bench\] //' || true)
        [[ -n $reason ]] || reason=$(grep -E '^\[bench\] command failed ' <<<"$clean" | tail -n 1 | sed 's/^\[bench\] //' || true)
        [[ -n $reason ]] || reason=$(grep -E '^[a-z]+\.sh: ' <<<"$clean" | tail -n 1 || true)
        case $rc in
            130|143) reason="stopped (exit $rc)${reason:+: $reason}" ;;
            141) reason="exit 141 (SIGPIPE)${reason:+: $reason}" ;;
            1) [[ $reason == FAILED:* ]] || reason="exit 1${reason:+: $reason}" ;;
            *) reason="exit $rc${reason:+: $reason}" ;;
        esac
        (( ${#reason} <= 200 )) || reason="${reason:0:197}..."
        [[ -s "$RESULTS/$n.md" ]] && mv "$RESULTS/$n.md" "$WORK/logs/$n.partial.md"   # no figures from a failed run
        log "  $n.sh FAILED after ${secs}s (exit $rc): $reason"
        log "  --- last lines of its output:"
        tail -n 15 "$logf" | sed 's/\x1b\[[0-9;]*m//g; s/^/    /' >&2 || true
    elif [[ ! -s "$RESULTS/$n.md" ]]; then
        FAILED=$((FAILED + 1)); rc=1; reason="exited 0 but wrote no Markdown"
        log "  $n.sh: $reason"
    else
        log "  $n.sh done after ${secs}s"
    fi
    left=$(leftovers "$WORK/stamp-$n" "$ns_before")
    if [[ -n $left ]]; then
        log "  WARNING: $n.sh left: $left"
        reason="${reason:+$reason; }left behind: $left"
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$rc" "$secs" "${reason//$'\t'/ }" "${opts:-}" >>"$STATUS"
done

# -------------------------------------------------------------- the summary --
# matplotlib for the chart: installed with pip when missing (Debian's own
# python needs --break-system-packages, a pyenv or venv python does not, as
# in scripts/install.sh); without it summary.py draws bars without text
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    extra=()
    if python3 -c 'import os, sys, sysconfig; sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'; then
        extra=(--break-system-packages)
    fi
    log "installing matplotlib for the chart: python3 -m pip install --quiet ${extra[*]} matplotlib"
    python3 -m pip install --quiet "${extra[@]}" matplotlib >"$WORK/pip.log" 2>&1 ||
        log "pip install matplotlib failed ($(tail -n 1 "$WORK/pip.log")); the chart will have no text"
fi

ver() { "$@" 2>/dev/null | head -n 1 || true; }
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes in crates/)"
fi
total=$(awk -v a="$START_ALL" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
{
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), total wall time $((total / 60)) min $((total % 60)) s"
    echo "- machine: nproc $(nproc), $(uname -sr), $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory; load average at start $LOAD_AT_START, at the end $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- commit: $commit"
    echo "- binary: \`$TARGET_DIR/release/rke2\` (built $(date -u -r "$TARGET_DIR/release/rke2" '+%Y-%m-%d %H:%M UTC')); $(ver rustc --version)"
    echo "- etcd $(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }'), kubectl $(kubectl version --client 2>/dev/null | awk '/Client Version/ { print $3 }'), HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }'), containerd $(containerd --version 2>/dev/null | awk '{ print $3 }'), runc $(runc --version 2>/dev/null | awk 'NR == 1 { print $3 }')"
    echo "- command: \`bash bench/all.sh${ARGS:+ $ARGS}\`$( ((QUICK)) && echo " (smoke run: the smallest options of each script, see Scripts below)")"
} >"$WORK/env.md"

mkdir -p "$OUTDIR"
echo
python3 "$ROOT/bench/lib/summary.py" --results "$RESULTS" --status "$STATUS" --env "$WORK/env.md" \
    --md "$OUTDIR/summary.md" --png "$OUTDIR/summary.png" \
    --title "rke2 benchmarks$( ((QUICK)) && echo ' (quick)'): ours / reference, same run, commit ${commit%% *}" ||
    { log "FAILED: bench/lib/summary.py"; FAILED=$((FAILED + 1)); }
echo
log "wrote $OUTDIR/summary.md and $OUTDIR/summary.png (total ${total}s)"
if (( STOPPING )); then exit 130; fi
if (( FAILED )); then
    log "$FAILED script(s) failed: $(awk -F'\t' '$2 != "0" && $2 != "-" { printf "%s.sh ", $1 }' "$STATUS")"
    exit 1
fi
