#!/usr/bin/env bash
# The bundled addons on a fresh server: `bench-addons` (crates/bench-services)
# starts one server on the network-namespace bed (real containerd; images
# and helm seeded as the air-gap folder and `scripts/install.sh --data-dir`
# provide them), every bundled addon enabled, --runs times. Figures:
#
#   ready            process start -> node Ready
#   ready-to-addons  node Ready -> every kube-system pod Running and Ready
#                    (helm Jobs Succeeded), each bundled addon present
#                    (target <= 10 s)
#   memory           after --idle seconds, of all Running kube-system pods
#                    together: the sum of VmRSS and of PSS of the processes
#                    in each pod's cgroup, and the cgroups' working set
#                    (usage - inactive file pages, kubelet's figure);
#                    target 64 MB
#
# No reference is measured in the run: RKE2's own addon images cannot run
# here (no registry). The memory target is the issue's fixed 64 MB.
#
# Usage: bench/addons.sh [--runs N] [--idle SECONDS] [--no-build] [--out FILE]
# Needs root, containerd, helm (scripts/install.sh). Uses network
# namespaces: run one netbed user at a time. Not part of the test suite.
set -euo pipefail

RUNS=3
IDLE=30
BUILD=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/addons.md"
ARGS="$*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?}"; shift 2 ;;
        --idle) IDLE="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        *) echo "addons.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for v in "$RUNS" "$IDLE"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "addons.sh: --runs and --idle are positive integers" >&2; exit 2; }
done
(( EUID == 0 )) || { echo "addons.sh: needs root (network namespaces, containerd)" >&2; exit 1; }
log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if (( BUILD )); then
    log "building (release)"
    cargo build --release -p rke2 -p rke2-bench-services >&2
fi
RKE2="$TARGET_DIR/release/rke2"
BENCH="$TARGET_DIR/release/bench-addons"
for b in "$RKE2" "$BENCH"; do
    [[ -x $b ]] || { echo "addons.sh: $b missing (run without --no-build)" >&2; exit 1; }
done
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT
"$BENCH" --rke2 "$RKE2" --runs "$RUNS" --idle "$IDLE" | tee "$RAW" >&2

python3 - "$RAW" "$OUT" "$ARGS" "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git rev-parse --short HEAD)" <<'PY'
import statistics, sys, datetime, os
raw, out, args, load0, load1, commit = sys.argv[1:7]
rows = [l.rstrip("\n").split("\t") for l in open(raw) if l.startswith("RESULT")]
ready = [float(r[3]) for r in rows if r[1] == "ready"]
addons = [float(r[3]) for r in rows if r[1] == "ready-to-addons"]
mem = [(float(r[3]), float(r[4]), float(r[5])) for r in rows if r[1] == "memory"]
pods = {}
for r in rows:
    if r[1] == "pod":
        pods.setdefault(r[3], []).append((float(r[4]), float(r[5]), float(r[6])))
med = statistics.median
lines = [
    "# The bundled addons on a fresh server", "",
    f"- date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC",
    f"- machine: nproc {os.cpu_count()}, {os.uname().sysname} {os.uname().release}; load average at start {load0}, at the end {load1}",
    f"- commit: {commit}",
    f"- command: `bench/addons.sh {args}`", "",
    "One server on the network-namespace bed, every bundled addon enabled;",
    "medians over the runs (min-max). Memory in MiB after the idle time.", "",
    "| figure | median | min | max | target | met |",
    "| --- | ---: | ---: | ---: | ---: | --- |",
    f"| process start -> node Ready (s) | {med(ready):.2f} | {min(ready):.2f} | {max(ready):.2f} | | |",
    f"| node Ready -> all kube-system pods Running (s) | {med(addons):.2f} | {min(addons):.2f} | {max(addons):.2f} | 10 | {'met' if med(addons) <= 10 else 'NOT met'} |",
]
for i, label in enumerate(["RSS, summed per process", "PSS (shared pages shared out)", "working set (kubelet's figure)"]):
    col = [m[i] for m in mem]
    lines.append(f"| addon pods' {label} together (MiB) | {med(col):.1f} | {min(col):.1f} | {max(col):.1f} | 64 | {'met' if med(col) <= 64 else 'NOT met'} |")
lines += ["", "Per workload (median MiB):", "",
    "| workload | RSS | PSS | working set |", "| --- | ---: | ---: | ---: |"]
for k, v in sorted(pods.items()):
    lines.append(f"| {k} | {med([x[0] for x in v]):.1f} | {med([x[1] for x in v]):.1f} | {med([x[2] for x in v]):.1f} |")
lines += ["", "Every addon process runs the same rke2 binary: summed RSS counts the",
          "binary's resident pages once per process, PSS divides shared pages among",
          "the processes mapping them, the working set is what the pod cgroups are",
          "charged (usage minus inactive file pages)."]
lines += ["", "No reference is measured in the run: RKE2's addon images cannot run",
          "here (no registry); the memory target is a fixed 64 MB."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
