#!/usr/bin/env bash
# Pod startup latency benchmark for rke2 (the Rust re-implementation).
#
# Per run: one `rke2 server` on a loopback address (fresh data dir, its own
# containerd child, the pause and busybox images in the air-gap folder, no
# registry reachable), one warm-up pod, then N pods (busybox `sleep 3600`,
# image present) twice, each pod timed from creation to Ready by a
# `kubectl get pods -w` running beside it, stamped line by line:
#   A. paced (the headline, the SLO method): N pods created one at a time at
#      a uniform rate (--qps, 5/s as clusterloader2's latency pods), each
#      POSTed at its absolute deadline by one long-lived creator
#      (bench/lib/pace.py); then they are deleted and the node settles;
#   B. burst (context: throughput-bound on few cores): N pods created all at
#      once by a few parallel `kubectl create -f` of List files.
# Measures
#   1. pod startup latency p50 / p99 / max (creation -> Ready), paced and
#      burst; how far the paced creates fell behind their schedule; the
#      burst's throughput (pods Ready per second);
#   2. node figures with the N burst pods running: rke2 RSS, containerd
#      RSS, shims;
#   3. the reference, same run, same containerd: N containers started
#      directly with `ctr run -d --net-host` (no sandbox, no CNI, no API),
#      as many at a time as the creators, then all at once, each timed from
#      command start until the task runs.
# Prints a table next to the target and writes it as Markdown to
# bench/results/pods.md.
#
# Usage: bench/pods.sh [--runs N] [--pods N] [--qps N] [--creators N]
#                      [--no-build] [--out FILE] [--keep]
# Needs root, containerd, runc, ctr, the CNI plugins, busybox-static,
# python3, etcd, kubectl, perl. Not part of the test suite.

set -euo pipefail

RUNS=2
PODS=100
QPS=5              # paced creates per second (clusterloader2's Uniform5qps)
CREATORS=4         # parallel `kubectl create -f` (and parallel `ctr run` in the reference)
BUILD=1
KEEP=0
SUBNET=127.77.4    # run R uses SUBNET.(10+R)
POLL=0.1
DEADLINE=180       # seconds until a wait counts as failed
SETTLE=5           # seconds after the last pod Ready before RSS is read
STOP_GRACE=20
PAUSE_IMAGE=rke2.test/pause:1
BUSYBOX_IMAGE=rke2.test/busybox:1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/pods.md"
ARGS="$*"

usage() {
    sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --pods) PODS="${2:?--pods needs a number}"; shift 2 ;;
        --qps) QPS="${2:?--qps needs a number}"; shift 2 ;;
        --creators) CREATORS="${2:?--creators needs a number}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "pods.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS PODS CREATORS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 )); then
        echo "pods.sh: --${v,,} must be a positive number" >&2; exit 2
    fi
done
(( RUNS <= 20 )) || { echo "pods.sh: at most 20 runs" >&2; exit 2; }
(( PODS <= 108 )) || { echo "pods.sh: at most 108 pods (the node takes 110, one is the warm-up)" >&2; exit 2; }
if ! [[ "$QPS" =~ ^[0-9]+([.][0-9]+)?$ ]] || ! awk -v q="$QPS" 'BEGIN { exit !(q > 0 && q <= 100) }'; then
    echo "pods.sh: --qps must be a number above 0 and at most 100" >&2; exit 2
fi
(( CREATORS <= 16 )) || { echo "pods.sh: at most 16 creators" >&2; exit 2; }

if (( EUID != 0 )); then
    echo "pods.sh: needs root (rke2 runs containerd, runc and the CNI plugins); run it as root" >&2
    exit 1
fi
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in containerd runc ctr etcd cargo awk perl python3 ss ip "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "pods.sh: ${tool:-kubectl} is not installed (scripts/install.sh)" >&2; exit 1; }
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
    { echo "pods.sh: the CNI plugins are not in /usr/lib/cni (Debian containernetworking-plugins)" >&2; exit 1; }

log() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup --
PIDS=()            # helpers this script started (watch, creators)
WORK=""
RKE2_PID=""        # the current run's server and its children (etcd, containerd)
ETCD_PID=""
CTRD_PID=""
DATA=""            # the current run's data dir (for killall)
KC=""
REF_IDS=()         # reference containers started with ctr in the current run

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
    local p keep=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

kc() { "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=30s "$@"; }
ctr_() { ctr --address "$DATA/agent/containerd/containerd.sock" -n k8s.io "$@"; }

# remove_ref_containers: the reference containers of this run, by id
# (SIGKILL, delete the task, remove the container and its snapshot)
remove_ref_containers() {
    local id left
    (( ${#REF_IDS[@]} )) || return 0
    [[ -S "$DATA/agent/containerd/containerd.sock" ]] || return 0
    for id in "${REF_IDS[@]}"; do
        ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    done
    ctr_ tasks delete -f "${REF_IDS[@]}" >/dev/null 2>&1 || true
    ctr_ containers rm "${REF_IDS[@]}" >/dev/null 2>&1 || true
    # one by one whatever is left (a batch call may stop at an id that never got created)
    left=$(ctr_ containers ls -q 2>/dev/null | grep -xF -f <(printf '%s\n' "${REF_IDS[@]}") || true)
    for id in $left; do
        ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
        ctr_ containers rm "$id" >/dev/null 2>&1 || log "could not remove reference container $id"
    done
    REF_IDS=()
}

# mounts_under DIR: mount points below DIR still mounted (from mountinfo)
mounts_under() {
    awk -v d="$1/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo
}

# stop_run: everything of the current run, in order: helpers, pods (best
# effort, while the server answers), reference containers, the server (and
# its etcd and containerd), then `rke2 killall` for the containers it left.
stop_run() {
    local i left t0
    for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do stop_pid "${PIDS[i]}"; done
    if alive "$RKE2_PID" && [[ -s "$KC" ]]; then
        kc delete pods -n bench --all --wait=false >/dev/null 2>&1 || true
        t0=$EPOCHREALTIME
        while :; do
            left=$(kc get pods -n bench --no-headers 2>/dev/null | wc -l) || break
            (( left == 0 )) && break
            awk -v s="$t0" -v n="$EPOCHREALTIME" 'BEGIN { exit !(n - s > 30) }' && break
            sleep 0.2
        done
    fi
    remove_ref_containers
    stop_pid "$RKE2_PID"
    stop_pid "$ETCD_PID"
    stop_pid "$CTRD_PID"
    RKE2_PID=""; ETCD_PID=""; CTRD_PID=""
    if [[ -n "$DATA" && -d "$DATA/agent" ]]; then
        "$RKE2" killall --data-dir "$DATA" >&2 || log "rke2 killall failed"
    fi
}

cleanup() {
    local rc=$? m
    trap - EXIT INT TERM ERR
    trap '' INT TERM   # a second Ctrl-C must not cut the cleanup short
    if [[ -n "$NAP_PID" ]]; then kill -TERM "$NAP_PID" 2>/dev/null || true; wait "$NAP_PID" 2>/dev/null || true; fi
    if (( rc != 0 )) && [[ -n "$DATA" && -f "$DATA/../rke2.log" ]]; then
        log "--- tail of the server log"; tail -n 25 "$DATA/../rke2.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
    fi
    stop_run
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        m=$(mounts_under "$WORK")
        if [[ -n "$m" ]]; then
            log "mounts left under $WORK, not removing it:"; printf '  %s\n' $m >&2
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
    log "building: cargo build --release -p rke2 (target dir $TARGET_DIR)"
    cargo build --release -p rke2 >&2
fi
RKE2="$TARGET_DIR/release/rke2"
[[ -x "$RKE2" ]] || die "$RKE2 not found (build it, or drop --no-build)"

for (( run = 1; run <= RUNS; run++ )); do
    for port in 6443 9345 2379 2380 10250; do
        if ss -Hltn "src $SUBNET.$((10 + run)):$port" 2>/dev/null | grep -q .; then
            die "$SUBNET.$((10 + run)):$port is already in use"
        fi
    done
done

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)   # other jobs on the machine skew the figures
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-pods-bench.XXXXXX")"

# ---------------------------------------------------------------- helpers --
now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
past() { awk -v s="$1" -v n="$(now)" -v d="$2" 'BEGIN { exit !(n - s > d) }'; }
# nap SECONDS: a `sleep` child waited for with the `wait` builtin, which a
# trapped signal (Ctrl-C, SIGTERM) interrupts at once. Not `read -t`: bash
# 5.2 aborts ("longjmp causes uninitialized stack frame") when a trap exits
# during `read -t` and its timer fires later, in the middle of the cleanup.
NAP_PID=""
nap() {
    sleep "$1" &
    NAP_PID=$!
    wait "$NAP_PID" 2>/dev/null || true
    NAP_PID=""
}

child_named() { # PARENT COMM: pid of PARENT's child named COMM
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        if [[ "$(cat /proc/"$c"/comm 2>/dev/null)" == "$2" ]]; then echo "$c"; return 0; fi
    done
}
rss_kb() { awk '/^VmRSS:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# cpu_s PID: user + system CPU seconds the process has used so far;
# cpu_sc PID: the same plus that of its children it has waited for
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_sc() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# shims_cpu SOCKET: CPU s of the shims serving SOCKET, with the runc runs they waited for
shims_cpu() { local p t=0; for p in $(shims_of "$1"); do t=$(awk -v a="$t" -v b="$(cpu_sc "$p")" 'BEGIN { printf "%.2f", a + b }'); done; echo "$t"; }
# machine_busy: CPU seconds all CPUs spent not idle since boot (every process, not only ours)
machine_busy() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# shims_of SOCKET: pids of containerd-shim-runc-v2 processes serving SOCKET
shims_of() {
    local p
    for p in $(pgrep -x containerd-shim || true); do
        # 2>/dev/null first: a shim that just exited makes the < fail
        if tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "-address $1 "; then echo "$p"; fi
    done
}
# pct FILE Q: the Q quantile (nearest rank) of the sorted numbers in FILE
pct() { awk -v q="$2" '{ v[NR] = $1 } END { if (!NR) { print "n/a"; exit } i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; printf "%.3f", v[i] }' "$1"; }

# ready_count WATCH PREFIX: pods named PREFIX-* seen Ready in the watch stamps
ready_count() { awk -v p="^$2-" '$3 ~ p && $4 == "True" { r[$3] = 1 } END { print length(r) }' "$1"; }
# lat_of WATCH PREFIX: per pod named PREFIX-*: its first watch line
# (creation) -> its first line with Ready True, in s, sorted
lat_of() {
    awk -v p="^$2-" '
        $3 !~ p { next }
        !($3 in seen) { seen[$3] = $1 }
        $4 == "True" && !($3 in ready) { ready[$3] = $1; printf "%.6f\n", $1 - seen[$3] }
    ' "$1" | sort -g
}
# api_p99 LABEL: p99 of Ready.lastTransitionTime - creationTimestamp (whole
# seconds, the API's own stamps) over the pods with app=LABEL
api_p99() {
    kc get pods -n bench -l "app=$1" \
        -o jsonpath='{range .items[*]}{.metadata.creationTimestamp} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}{"\n"}{end}' |
        perl -MTime::Local -ne 'sub t { my ($y,$m,$d,$H,$M,$S) = $_[0] =~ /(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)/ or return; timegm($S,$M,$H,$d,$m-1,$y) }
            my ($c, $s) = split; next unless $s; printf "%d\n", t($s) - t($c)' | sort -g |
        awk '{ v[NR] = $1 } END { i = int(0.99 * NR + 0.999999); if (i < 1) i = 1; print (NR ? v[i] : "n/a") }'
}
# step_split WATCH CLOG PREFIX: where the time goes, per pod named PREFIX-*:
# the watch's stamps joined with containerd's own log (µs, same clock) by
# pod name; one line per step: "label|p50|p99|pods"
step_split() {
    perl -MTime::Local -e '
        sub ts {
            $_[0] =~ /time="(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(\.\d+)?(Z|([+-])(\d\d):(\d\d))?"/ or return;
            my $t = timegm($6, $5, $4, $3, $2 - 1, $1) + ($7 || 0);
            $t -= ($9 eq "-" ? -1 : 1) * ($10 * 3600 + $11 * 60) if defined $9;
            return $t;
        }
        my ($watch, $clog, $pfx) = @ARGV;
        my (%seen, %bound, %ready, %sb0, %sb1, %sbpod, %cc0, %cpod, %up);
        open my $w, "<", $watch or die;
        while (<$w>) {
            my ($t, $ev, $name, $rd, $node) = split;
            next unless $name =~ /^\Q$pfx\E-/;
            $seen{$name} //= $t;
            $bound{$name} //= $t if $node ne "<none>";
            $ready{$name} //= $t if $rd eq "True";
        }
        open my $c, "<", $clog or die;
        while (<$c>) {
            next unless /level=info/;
            s/\\"/"/g;
            if (/RunPodSandbox for &PodSandboxMetadata\{Name:(\Q$pfx\E-\d+),.*returns sandbox id "(\w+)"/) {
                $sbpod{$2} = $1; $sb1{$1} //= ts($_);
            } elsif (/RunPodSandbox for &PodSandboxMetadata\{Name:(\Q$pfx\E-\d+),/) {
                $sb0{$1} //= ts($_);
            } elsif (/CreateContainer within sandbox "(\w+)" for (container )?&ContainerMetadata\{Name:sleep,.*returns container id "(\w+)"/) {
                $cpod{$3} = $sbpod{$1} if $sbpod{$1};
            } elsif (/CreateContainer within sandbox "(\w+)" for (container )?&ContainerMetadata\{Name:sleep,/) {
                $cc0{$sbpod{$1}} //= ts($_) if $sbpod{$1};
            } elsif (/StartContainer for "(\w+)" returns successfully/) {
                $up{$cpod{$1}} //= ts($_) if $cpod{$1};
            }
        }
        my @steps = (
            ["created -> bound (scheduler)", \%seen, \%bound],
            ["bound -> RunPodSandbox called", \%bound, \%sb0],
            ["RunPodSandbox call", \%sb0, \%sb1],
            ["sandbox up -> CreateContainer called", \%sb1, \%cc0],
            ["CreateContainer -> StartContainer returned", \%cc0, \%up],
            ["container started -> Ready seen", \%up, \%ready],
        );
        for my $s (@steps) {
            my ($label, $from, $to) = @$s;
            my @d = sort { $a <=> $b } map { $to->{$_} - $from->{$_} } grep { defined $from->{$_} && defined $to->{$_} } keys %seen;
            if (!@d) { print "$label|n/a|n/a|0\n"; next }
            my $q = sub { my $i = int($_[0] * @d + 0.999999); $i = 1 if $i < 1; $i = @d if $i > @d; sprintf "%.3f", $d[$i - 1] };
            printf "%s|%s|%s|%d\n", $label, $q->(0.5), $q->(0.99), scalar @d;
        }
    ' "$1" "$2" "$3"
}

# gen_pods PREFIX: CREATORS List files of about PODS/CREATORS pods each
gen_pods() {
    local pfx=$1 c i
    for (( c = 0; c < CREATORS; c++ )); do
        {
            echo "apiVersion: v1"
            echo "kind: List"
            echo "items:"
            for (( i = c + 1; i <= PODS; i += CREATORS )); do
                cat <<EOF
- apiVersion: v1
  kind: Pod
  metadata: {name: $(printf 'bench-pod-%03d' "$i"), namespace: bench, labels: {app: bench}}
  spec:
    terminationGracePeriodSeconds: 0
    containers:
    - name: sleep
      image: $BUSYBOX_IMAGE
      imagePullPolicy: IfNotPresent
      command: [sleep, "3600"]
EOF
            done
        } >"$pfx-$c.yaml"
    done
}

# ref_batch RUN PARALLEL TAG DIR: PODS containers started with `ctr run -d`
# on this run's containerd by PARALLEL loops at once, each `ctr` timed from
# its start until it returned (the task runs then); sets RB50, RB99, RBMAX
# (s) and RBTPUT (containers/s, launch -> all returned); removes them again.
ref_batch() {
    local run=$1 par=$2 tag=$3 dir=$4 c i t0 t1 running pids=()
    log "  reference: $PODS containers with ctr run -d --net-host, $par at a time"
    for (( i = 1; i <= PODS; i++ )); do REF_IDS+=("$(printf 'bench-ref%s-%d-%03d' "$tag" "$run" "$i")"); done
    rm -f "$dir"/ref-"$tag"-*.txt
    t0=$(now)
    for (( c = 0; c < par; c++ )); do
        (
            trap - EXIT INT TERM ERR
            for (( i = c + 1; i <= PODS; i += par )); do
                id=$(printf 'bench-ref%s-%d-%03d' "$tag" "$run" "$i")
                s=$EPOCHREALTIME
                ctr_ run -d --null-io --net-host --runc-root "$DATA/agent/containerd/state/runc" \
                    "$BUSYBOX_IMAGE" "$id" sleep 3600 >/dev/null 2>>"$dir/ref.err" || { echo "fail $id" >>"$dir/ref.err"; continue; }
                e=$EPOCHREALTIME
                echo "$s $e" >>"$dir/ref-$tag-$c.txt"
            done
        ) &
        pids+=("$!")
        PIDS+=("$!")
    done
    for c in "${pids[@]}"; do wait "$c" || true; stop_pid "$c"; done
    t1=$(now)
    running=$(ctr_ tasks ls 2>/dev/null | awk -v p="bench-ref$tag-" 'index($1, p) == 1 && $3 == "RUNNING"' | wc -l)
    (( running == PODS )) || { tail -n 5 "$dir/ref.err" >&2 || true; die "only $running of $PODS reference tasks running"; }
    cat "$dir"/ref-"$tag"-*.txt | awk '{ printf "%.6f\n", $2 - $1 }' | sort -g >"$dir/ref-$tag-lat.txt"
    RB50=$(pct "$dir/ref-$tag-lat.txt" 0.50); RB99=$(pct "$dir/ref-$tag-lat.txt" 0.99); RBMAX=$(pct "$dir/ref-$tag-lat.txt" 1)
    RBTPUT=$(awk -v n="$PODS" -v s="$(sub "$t1" "$t0")" 'BEGIN { printf "%.1f", n / s }')
    log "    p50 ${RB50}s p99 ${RB99}s max ${RBMAX}s; ${RBTPUT} containers/s"
    remove_ref_containers
}

# --------------------------------------------------------------- one run --
declare -a R_P50 R_P99 R_MAX R_TPUT R_WALL R_API99 R_WARM R_CREATE R_REF50 R_REF99 R_REFMAX R_REFTPUT
declare -a R_Q50 R_Q99 R_QMAX R_QAPI99 R_QLAG R_QRATE R_QMACH R_QGONE R_QSETTLE R_QPH50 R_QPH99 QPH
declare -a R_R50 R_R99 R_RTPUT R_SRV R_CTRD R_ETCD R_SHIMN R_SHIM R_DEL R_ERRS R_PH50 R_PH99 PH_LABEL PH R_CSRV R_CCTRD R_CETCD R_CMACH R_CSHIM R_ALL50 R_ALL99 R_ALLMAX R_ALLTPUT R_A50 R_A99

one_run() {
    local run=$1 addr="$SUBNET.$((10 + run))" dir="$WORK/run$run" node="bench-pods-$run"
    local t0 c pids rc i
    mkdir -p "$dir"
    DATA="$dir/data"
    KC="$dir/kubeconfig.yaml"
    local slog="$dir/rke2.log"

    # images in the air-gap folder before the server starts
    mkdir -p "$DATA/agent/images"
    python3 "$ROOT/scripts/mkimage.py" "$DATA/agent/images/pause.tar" "$PAUSE_IMAGE" --pause >&2
    python3 "$ROOT/scripts/mkimage.py" "$DATA/agent/images/busybox.tar" "$BUSYBOX_IMAGE" >&2
    cat >"$dir/config.yaml" <<EOF
pause-image: $PAUSE_IMAGE
disable:
  - rke2-coredns
  - rke2-ingress-nginx
  - rke2-metrics-server
EOF

    log "run $run/$RUNS: rke2 server on $addr (fresh data dir)"
    t0=$(now)
    CONTAINERD_HTTP_PROXY=http://127.0.0.1:9 CONTAINERD_HTTPS_PROXY=http://127.0.0.1:9 \
        "$RKE2" server --config "$dir/config.yaml" --data-dir "$DATA" --write-kubeconfig "$KC" \
        --bind-address "$addr" --node-ip "$addr" --node-name "$node" >>"$slog" 2>&1 &
    RKE2_PID=$!
    until [[ -s "$KC" ]] && kc get nodes --no-headers 2>/dev/null | awk -v n="$node" '$1 == n && $2 == "Ready" { f = 1 } END { exit !f }'; do
        alive "$RKE2_PID" || die "rke2 server exited before its node was Ready"
        past "$t0" "$DEADLINE" && die "node not Ready within ${DEADLINE}s"
        nap 0.2
    done
    ETCD_PID=$(child_named "$RKE2_PID" etcd)
    CTRD_PID=$(child_named "$RKE2_PID" containerd)
    [[ -n "$CTRD_PID" ]] || die "no containerd child under rke2 (pid $RKE2_PID)"
    log "  node Ready after $(sub "$(now)" "$t0")s (podCIDR $(kc get node "$node" -o jsonpath='{.spec.podCIDR}'))"

    kc create namespace bench >/dev/null
    gen_pods "$dir/pods"

    # The observer: every line of the pod watch, stamped with the local time
    # (µs) the moment it arrives. Lines: "<t> <EVENT> <name> <Ready> <node>".
    local watch="$dir/watch.txt"
    "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" get pods -n bench -w --output-watch-events \
        -o 'custom-columns=EVENT:.type,NAME:.object.metadata.name,READY:.object.status.conditions[?(@.type=="Ready")].status,NODE:.object.spec.nodeName' \
        --no-headers > >(perl -MTime::HiRes=time -ne 'BEGIN { $| = 1 } printf "%.6f %s", time, $_' >"$watch") 2>"$dir/watch.err" &
    local watch_pid=$!
    PIDS+=("$watch_pid")

    # warm-up: one pod, through to Ready (retried while the namespace's
    # service account or the pod network is not there yet)
    t0=$(now)
    until kc run bench-warmup -n bench --image="$BUSYBOX_IMAGE" --image-pull-policy=IfNotPresent \
        --restart=Never --overrides='{"spec":{"terminationGracePeriodSeconds":0}}' -- sleep 3600 >/dev/null 2>"$dir/warmup.err"; do
        past "$t0" 30 && { cat "$dir/warmup.err" >&2; die "cannot create the warm-up pod"; }
        nap 0.5
    done
    until awk '$3 == "bench-warmup" && $4 == "True" { f = 1 } END { exit !f }' "$watch"; do
        alive "$watch_pid" || { cat "$dir/watch.err" >&2; die "the pod watch exited"; }
        past "$t0" 60 && { kc describe pod -n bench bench-warmup >&2 || true; die "the warm-up pod was not Ready within 60 s"; }
        nap "$POLL"
    done
    local warm
    warm=$(awk '$3 == "bench-warmup" && !s { s = $1 } $3 == "bench-warmup" && $4 == "True" { printf "%.3f", $1 - s; exit }' "$watch")
    log "  warm-up pod Ready ${warm}s after it was seen"
    nap 1
    local sock="$DATA/agent/containerd/containerd.sock" clog="$DATA/agent/containerd/containerd.log"

    # ---- A. paced (the headline): PODS pods, one at a time at QPS per
    # second, each POSTed at its deadline start + (i-1)/QPS by one
    # long-lived creator with its own keep-alive connections (a kubectl
    # process per pod costs ~80 ms CPU, a fifth of this machine at 5/s).
    log "  paced: creating $PODS pods at $QPS/s (bench/lib/pace.py, scheduled by absolute deadlines)"
    kc config view --raw --minify --flatten -o json >"$dir/kubeconfig.json"
    local q_mach q_t0 pace_pid
    q_mach=$(machine_busy); q_t0=$(now)
    python3 "$ROOT/bench/lib/pace.py" --kubeconfig-json "$dir/kubeconfig.json" --namespace bench \
        --prefix bench-paced --label bench-paced --image "$BUSYBOX_IMAGE" --count "$PODS" --qps "$QPS" \
        --out "$dir/pace.txt" 2>"$dir/pace.err" &
    pace_pid=$!
    PIDS+=("$pace_pid")
    rc=0
    wait "$pace_pid" || rc=$?
    stop_pid "$pace_pid"
    (( rc == 0 )) || { cat "$dir/pace.err" >&2; die "a paced create failed (bench/lib/pace.py exit $rc)"; }
    # lag: each create's send time - its scheduled time; rate: creates sent
    # per second from the first send to the last
    local q_lag q_rate
    q_lag=$(awk '{ d = $3 - $2; if (NR == 1 || d > m) m = d } END { printf "%.3f", m }' "$dir/pace.txt")
    q_rate=$(awk 'NR == 1 { f = $3 } { l = $3 } END { r = 0; if (NR > 1 && l > f) r = (NR - 1) / (l - f); printf "%.2f", r }' "$dir/pace.txt")
    log "  paced creates sent: ${q_rate}/s, at most ${q_lag}s behind schedule"
    t0=$(now)
    until (( $(ready_count "$watch" bench-paced) >= PODS )); do
        alive "$watch_pid" || { cat "$dir/watch.err" >&2; die "the pod watch exited"; }
        if past "$t0" "$DEADLINE"; then
            kc get pods -n bench -l app=bench-paced --no-headers | awk '$3 != "Running" || $2 != "1/1"' | head >&2 || true
            die "only $(ready_count "$watch" bench-paced) of $PODS paced pods Ready within ${DEADLINE}s of the last create"
        fi
        nap "$POLL"
    done
    q_mach=$(awk -v b="$(sub "$(machine_busy)" "$q_mach")" -v w="$(sub "$(now)" "$q_t0")" -v n="$(nproc)" 'BEGIN { printf "%.0f", 100 * b / (w * n) }')
    lat_of "$watch" bench-paced >"$dir/lat-paced.txt"
    local q50 q99 qmax qapi99
    q50=$(pct "$dir/lat-paced.txt" 0.50); q99=$(pct "$dir/lat-paced.txt" 0.99); qmax=$(pct "$dir/lat-paced.txt" 1)
    qapi99=$(api_p99 bench-paced)
    QPH=()
    if [[ -f "$clog" ]]; then
        step_split "$watch" "$clog" bench-paced >"$dir/phases-paced.txt" || true
        mapfile -t QPH <"$dir/phases-paced.txt"
    fi
    log "  paced: $(wc -l <"$dir/lat-paced.txt") pods Ready: creation->Ready p50 ${q50}s p99 ${q99}s max ${qmax}s; machine busy ${q_mach}%"
    local ph
    for ph in "${QPH[@]}"; do IFS='|' read -r l a b n <<<"$ph"; log "    $l: p50 ${a}s p99 ${b}s ($n pods)"; done

    # the paced pods deleted; the burst starts once none is listed and the
    # node has stopped their sandboxes (only the warm-up pod's shim left)
    t0=$(now)
    kc delete pods -n bench -l app=bench-paced --wait=false >/dev/null
    until (( $(kc get pods -n bench -l app=bench-paced --no-headers 2>/dev/null | wc -l) == 0 )); do
        past "$t0" "$DEADLINE" && die "paced pods not gone within ${DEADLINE}s of the delete"
        nap 0.2
    done
    local q_gone q_settle
    q_gone=$(sub "$(now)" "$t0")
    until (( $(shims_of "$sock" | wc -l) <= 1 )); do
        if past "$t0" 60; then log "  WARNING: $(shims_of "$sock" | wc -l) shims still running 60 s after the paced pods' delete"; break; fi
        nap 0.2
    done
    q_settle=$(sub "$(now)" "$t0")
    log "  paced pods deleted: none listed after ${q_gone}s, their shims gone after ${q_settle}s"
    nap 1

    # ---- B. burst (context, throughput-bound): PODS pods all at once
    log "  burst: creating $PODS pods all at once ($CREATORS parallel kubectl create)"
    local launch c_srv c_ctrd c_etcd=0 c_mach c_shim t_mach
    c_srv=$(cpu_s "$RKE2_PID"); c_ctrd=$(cpu_sc "$CTRD_PID"); c_shim=$(shims_cpu "$sock")
    [[ -n "$ETCD_PID" ]] && c_etcd=$(cpu_s "$ETCD_PID")
    c_mach=$(machine_busy); t_mach=$(now)
    launch=$(now)
    pids=()
    for (( c = 0; c < CREATORS; c++ )); do
        "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/kcache" --request-timeout=30s \
            create -f "$dir/pods-$c.yaml" >"$dir/pods-$c.out" 2>&1 &
        pids+=("$!")
        PIDS+=("$!")
    done
    rc=0
    for c in "${pids[@]}"; do wait "$c" || rc=1; stop_pid "$c"; done
    local created
    created=$(sub "$(now)" "$launch")
    (( rc == 0 )) || { tail -n 5 "$dir"/pods-*.out >&2; die "a kubectl create failed"; }
    log "  creates done after ${created}s"
    t0=$(now)
    until (( $(ready_count "$watch" bench-pod) >= PODS )); do
        alive "$watch_pid" || { cat "$dir/watch.err" >&2; die "the pod watch exited"; }
        if past "$t0" "$DEADLINE"; then
            kc get pods -n bench --no-headers | awk '$3 != "Running" || $2 != "1/1"' | head >&2 || true
            die "only $(ready_count "$watch" bench-pod) of $PODS pods Ready within ${DEADLINE}s of the creates"
        fi
        nap "$POLL"
    done
    local win
    c_mach=$(awk -v b="$(sub "$(machine_busy)" "$c_mach")" -v w="$(sub "$(now)" "$t_mach")" -v n="$(nproc)" 'BEGIN { printf "%.0f", 100 * b / (w * n) }')
    win=$(sub "$(now)" "$launch")
    c_srv=$(sub "$(cpu_s "$RKE2_PID")" "$c_srv"); c_ctrd=$(sub "$(cpu_sc "$CTRD_PID")" "$c_ctrd")
    c_shim=$(sub "$(shims_cpu "$sock")" "$c_shim")
    [[ -n "$ETCD_PID" ]] && c_etcd=$(sub "$(cpu_s "$ETCD_PID")" "$c_etcd")
    log "  CPU s from launch to all Ready (${win}s): rke2 $c_srv, containerd+CNI $c_ctrd, shims+runc $c_shim, etcd $c_etcd; machine busy ${c_mach}%"

    # node figures with the pods running, after a short settle
    nap "$SETTLE"
    local srv_kb ctrd_kb etcd_kb=0 shim_kb=0 shim_n=0 p
    srv_kb=$(rss_kb "$RKE2_PID"); ctrd_kb=$(rss_kb "$CTRD_PID")
    [[ -n "$ETCD_PID" ]] && etcd_kb=$(rss_kb "$ETCD_PID")
    for p in $(shims_of "$sock"); do shim_kb=$(( shim_kb + $(rss_kb "$p") )); shim_n=$(( shim_n + 1 )); done
    stop_pid "$watch_pid"

    # per pod: first line seen (creation) -> first line with Ready True
    lat_of "$watch" bench-pod >"$dir/lat.txt"
    local first last n_ready
    read -r first last n_ready < <(awk '
        $3 !~ /^bench-pod-/ { next }
        first == "" { first = $1 }
        $4 == "True" && !($3 in r) { r[$3] = 1; last = $1 }
        END { printf "%.6f %.6f %d\n", first, last, length(r) }' "$watch")
    local p50 p99 pmax tput wall
    p50=$(pct "$dir/lat.txt" 0.50); p99=$(pct "$dir/lat.txt" 0.99); pmax=$(pct "$dir/lat.txt" 1)
    tput=$(awk -v n="$n_ready" -v s="$(sub "$last" "$first")" 'BEGIN { printf "%.1f", n / s }')
    wall=$(sub "$last" "$launch")

    # the API's own timestamps (whole seconds): creationTimestamp -> Ready
    local api99
    api99=$(api_p99 bench)

    # Where the time goes, per pod: the watch's stamps joined with
    # containerd's own log (µs, same clock) by pod name; p50 of each step.
    PH=()
    if [[ -f "$clog" ]]; then
        step_split "$watch" "$clog" bench-pod >"$dir/phases.txt" || true
        mapfile -t PH <"$dir/phases.txt"
    fi
    local errs
    errs=$(sed 's/\x1b\[[0-9;]*m//g' "$slog" | grep -cE ' (WARN|ERROR) ' || true)
    log "  burst: $n_ready pods Ready: creation->Ready p50 ${p50}s p99 ${p99}s max ${pmax}s; ${tput} pods/s; last Ready ${wall}s after launch"
    log "  RSS with $PODS pods: rke2 $(mib "$srv_kb") MiB, containerd $(mib "$ctrd_kb") MiB, etcd $(mib "$etcd_kb") MiB, $shim_n shims $(mib "$shim_kb") MiB"
    for ph in "${PH[@]}"; do IFS='|' read -r l a b n <<<"$ph"; log "    $l: p50 ${a}s p99 ${b}s ($n pods)"; done
    log "  server log WARN/ERROR lines: $errs"

    # deleting them (context), so the reference starts on an empty node
    t0=$(now)
    kc delete pods -n bench --all --wait=false >/dev/null
    until (( $(kc get pods -n bench --no-headers 2>/dev/null | wc -l) == 0 )); do
        past "$t0" "$DEADLINE" && die "pods not gone within ${DEADLINE}s of the delete"
        nap 0.2
    done
    local del
    del=$(sub "$(now)" "$t0")
    log "  $((PODS + 1)) pods deleted and gone after ${del}s"
    nap 2

    # the reference: the same number of containers through ctr, twice: as
    # many in parallel as there are creators, and all at once (the node
    # starts every bound pod at once, so its latencies include that queue)
    ref_batch "$run" "$CREATORS" c "$dir"
    local r50=$RB50 r99=$RB99 rmax=$RBMAX rtput=$RBTPUT
    nap 2
    ref_batch "$run" "$PODS" a "$dir"
    local a50=$RB50 a99=$RB99 amax=$RBMAX atput=$RBTPUT

    R_Q50+=("$q50"); R_Q99+=("$q99"); R_QMAX+=("$qmax"); R_QAPI99+=("$qapi99")
    R_QLAG+=("$q_lag"); R_QRATE+=("$q_rate"); R_QMACH+=("$q_mach"); R_QGONE+=("$q_gone"); R_QSETTLE+=("$q_settle")
    R_P50+=("$p50"); R_P99+=("$p99"); R_MAX+=("$pmax"); R_TPUT+=("$tput"); R_WALL+=("$wall")
    R_API99+=("$api99"); R_WARM+=("$warm"); R_CREATE+=("$created"); R_DEL+=("$del")
    R_REF50+=("$r50"); R_REF99+=("$r99"); R_REFMAX+=("$rmax"); R_REFTPUT+=("$rtput")
    R_ALL50+=("$a50"); R_ALL99+=("$a99"); R_ALLMAX+=("$amax"); R_ALLTPUT+=("$atput")
    R_R50+=("$(awk -v a="$p50" -v b="$r50" 'BEGIN { printf "%.1f", a / b }')")
    R_R99+=("$(awk -v a="$p99" -v b="$r99" 'BEGIN { printf "%.1f", a / b }')")
    R_A50+=("$(awk -v a="$p50" -v b="$a50" 'BEGIN { printf "%.1f", a / b }')")
    R_A99+=("$(awk -v a="$p99" -v b="$a99" 'BEGIN { printf "%.1f", a / b }')")
    R_RTPUT+=("$(awk -v a="$tput" -v b="$atput" 'BEGIN { printf "%.2f", a / b }')")
    R_SRV+=("$(mib "$srv_kb")"); R_CTRD+=("$(mib "$ctrd_kb")"); R_ETCD+=("$(mib "$etcd_kb")")
    R_SHIMN+=("$shim_n"); R_SHIM+=("$(mib "$shim_kb")")
    R_ERRS+=("$errs")
    R_CSRV+=("$c_srv"); R_CCTRD+=("$c_ctrd"); R_CETCD+=("$c_etcd"); R_CSHIM+=("$c_shim"); R_CMACH+=("$c_mach")
    for (( i = 0; i < 6; i++ )); do
        IFS='|' read -r _ a b _ <<<"${PH[i]:-x|n/a|n/a|0}"
        R_PH50[i]="${R_PH50[i]:-} $a"; R_PH99[i]="${R_PH99[i]:-} $b"
        PH_LABEL[i]=$(cut -d'|' -f1 <<<"${PH[i]:-step $i|}")
        IFS='|' read -r _ a b _ <<<"${QPH[i]:-x|n/a|n/a|0}"
        R_QPH50[i]="${R_QPH50[i]:-} $a"; R_QPH99[i]="${R_QPH99[i]:-} $b"
    done

    stop_run
    local m
    m=$(mounts_under "$dir")
    [[ -z "$m" ]] || die "mounts left under $dir after rke2 killall: $m"
    if (( KEEP )); then
        cp "$slog" "$DATA/agent/containerd/containerd.log" "$WORK/" 2>/dev/null || true
        mv "$WORK/rke2.log" "$WORK/rke2-run$run.log" 2>/dev/null || true
        mv "$WORK/containerd.log" "$WORK/containerd-run$run.log" 2>/dev/null || true
        cp "$watch" "$WORK/watch-run$run.txt" 2>/dev/null || true
    fi
    rm -rf "$dir"
    DATA=""
}

for (( run = 1; run <= RUNS; run++ )); do one_run "$run"; done

# ------------------------------------------------------------------ table --
ROWS=()   # "label|v1 v2 ...|target"
row() { local l=$1 t=$2; shift 2; ROWS+=("$l|$*|$t"); }
PQ="paced, $QPS pods/s"      # A: the headline (the SLO method)
BA="burst, all $PODS at once"   # B: context (throughput-bound)
row "$PQ: creation -> Ready p50 (s)"                     "-"                   "${R_Q50[@]}"
row "$PQ: creation -> Ready p99 (s)"                     "< 2 s (k8s SLO 5 s)" "${R_Q99[@]}"
row "$PQ: creation -> Ready max (s)"                     "-"                   "${R_QMAX[@]}"
row "$PQ: creation -> Ready p99, API timestamps (s, 1 s res.)" "-"             "${R_QAPI99[@]}"
row "$PQ: creations behind schedule, max (s)"            "context"             "${R_QLAG[@]}"
row "$PQ: creates sent per second"                       "context"             "${R_QRATE[@]}"
row "$PQ: machine CPU busy, creator launch -> last Ready (%)" "context"         "${R_QMACH[@]}"
row "paced pods deleted -> none listed (s)"              "context"             "${R_QGONE[@]}"
row "paced pods deleted -> their shims gone (s)"         "context"             "${R_QSETTLE[@]}"
row "warm-up pod creation -> Ready (s)"                  "context"             "${R_WARM[@]}"
for (( i = 0; i < 6; i++ )); do
    row "paced step p50: ${PH_LABEL[i]} (s)" "breakdown" ${R_QPH50[i]}
    row "paced step p99: ${PH_LABEL[i]} (s)" "breakdown" ${R_QPH99[i]}
done
row "$BA: creation -> Ready p50 (s)"                     "context (throughput-bound)" "${R_P50[@]}"
row "$BA: creation -> Ready p99 (s)"                     "context (throughput-bound)" "${R_P99[@]}"
row "$BA: creation -> Ready max (s)"                     "context (throughput-bound)" "${R_MAX[@]}"
row "$BA: creation -> Ready p99, API timestamps (s, 1 s res.)" "context (throughput-bound)" "${R_API99[@]}"
row "$BA: throughput, first seen -> last Ready (pods/s)" "context (throughput-bound)" "${R_TPUT[@]}"
row "$BA: launch of creators -> last Ready (s)"          "context (throughput-bound)" "${R_WALL[@]}"
row "$BA: creates done after launch (s)"                 "context"             "${R_CREATE[@]}"
for (( i = 0; i < 6; i++ )); do
    row "burst step p50: ${PH_LABEL[i]} (s)" "breakdown" ${R_PH50[i]}
    row "burst step p99: ${PH_LABEL[i]} (s)" "breakdown" ${R_PH99[i]}
done
row "ctr run, $CREATORS at a time: p50 (s)"                "reference"   "${R_REF50[@]}"
row "ctr run, $CREATORS at a time: p99 (s)"                "reference"   "${R_REF99[@]}"
row "ctr run, $CREATORS at a time: max (s)"                "reference"   "${R_REFMAX[@]}"
row "ctr run, $CREATORS at a time: throughput (containers/s)" "reference" "${R_REFTPUT[@]}"
row "ctr run, all $PODS at once: p50 (s)"                 "reference"   "${R_ALL50[@]}"
row "ctr run, all $PODS at once: p99 (s)"                 "reference"   "${R_ALL99[@]}"
row "ctr run, all $PODS at once: max (s)"                 "reference"   "${R_ALLMAX[@]}"
row "ctr run, all $PODS at once: throughput (containers/s)" "reference" "${R_ALLTPUT[@]}"
row "ratio burst p50 / ctr $CREATORS at a time"           "-"           "${R_R50[@]}"
row "ratio burst p99 / ctr $CREATORS at a time"           "-"           "${R_R99[@]}"
row "ratio burst p50 / ctr all at once"                   "-"           "${R_A50[@]}"
row "ratio burst p99 / ctr all at once"                   "-"           "${R_A99[@]}"
row "ratio burst throughput / ctr all at once"            "-"           "${R_RTPUT[@]}"
row "burst: CPU s, launch -> all Ready: rke2 server"            "context"             "${R_CSRV[@]}"
row "burst: CPU s, launch -> all Ready: containerd + CNI plugins" "context"            "${R_CCTRD[@]}"
row "burst: CPU s, launch -> all Ready: shims + runc"           "context"             "${R_CSHIM[@]}"
row "burst: CPU s, launch -> all Ready: etcd"                   "context"             "${R_CETCD[@]}"
row "burst: machine CPU busy, launch -> all Ready (%)"          "context"             "${R_CMACH[@]}"
row "rke2 server RSS, $PODS burst pods (MB)"                 "-"                   "${R_SRV[@]}"
row "containerd RSS, $PODS burst pods (MB)"                  "-"                   "${R_CTRD[@]}"
row "etcd RSS, $PODS burst pods (MB)"                        "context"             "${R_ETCD[@]}"
row "containerd-shim-runc-v2: count"                   "context"             "${R_SHIMN[@]}"
row "containerd-shim-runc-v2: total RSS (MB)"          "context"             "${R_SHIM[@]}"
row "kubectl delete --all (one DELETE per pod) -> none listed (s)" "context" "${R_DEL[@]}"
row "WARN/ERROR lines in the server log"               "-"                   "${R_ERRS[@]}"

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes in crates/)"
fi
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
cpus=$(nproc)
kubectl_ver=$("$KUBECTL" version --client 2>/dev/null | awk '/Client Version/ { print $3 }')
etcd_ver=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
ctrd_ver=$(containerd --version 2>/dev/null | awk '{ print $3 }')
runc_ver=$(runc --version 2>/dev/null | awk 'NR == 1 { print $3 }')
hdr="run 1"; for (( r = 2; r <= RUNS; r++ )); do hdr="$hdr|run $r"; done

echo
printf 'rke2 pod startup: %d pods paced at %s/s, then all at once by %d creators; %d run(s), %s, nproc %s, commit %s\n' \
    "$PODS" "$QPS" "$CREATORS" "$RUNS" "$date_s" "$cpus" "$commit"
lw=6
for x in "${ROWS[@]}"; do l=${x%%|*}; if (( ${#l} > lw )); then lw=${#l}; fi; done
printf '%-*s' "$lw" "metric"; for (( r = 1; r <= RUNS; r++ )); do printf ' %9s' "run $r"; done; printf '   %s\n' "target"
for x in "${ROWS[@]}"; do
    IFS='|' read -r l v t <<<"$x"
    printf '%-*s' "$lw" "$l"; for y in $v; do printf ' %9s' "$y"; done; printf '   %s\n' "$t"
done
echo "MB = MiB (VmRSS kB / 1024). Ratios: per run."

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 pod startup benchmark"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $cpus, $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- commit: $commit"
    echo "- binary: \`$RKE2\` (built $(date -u -r "$RKE2" '+%Y-%m-%d %H:%M UTC'))"
    echo "- $RUNS run(s), each: fresh server, warm-up pod; A. $PODS pods paced at $QPS/s (one creator, absolute deadlines), deleted; B. $PODS pods all at once by $CREATORS parallel \`kubectl create -f\`"
    echo "- containerd $ctrd_ver, runc $runc_ver, etcd $etcd_ver, kubectl $kubectl_ver"
    echo "- command: \`bench/pods.sh${ARGS:+ $ARGS}\`"
    echo
    printf '| metric |'; for (( r = 1; r <= RUNS; r++ )); do printf ' run %d |' "$r"; done; echo " target |"
    printf '| --- |'; for (( r = 1; r <= RUNS; r++ )); do printf ' ---: |'; done; echo " --- |"
    for x in "${ROWS[@]}"; do
        IFS='|' read -r l v t <<<"$x"
        printf '| %s |' "$l"; for y in $v; do printf ' %s |' "$y"; done; printf ' %s |\n' "$t"
    done
    echo
    echo "Pods: busybox \`sleep 3600\`, image in the air-gap folder (imagePullPolicy"
    echo "IfNotPresent), no requests, \`terminationGracePeriodSeconds: 0\`, default service"
    echo "account token volume. A \`kubectl get pods -w\` on the namespace, started before the"
    echo "warm-up pod, is stamped line by line with the local clock (µs) as lines arrive: a"
    echo "pod's creation is its first line, its Ready the first line with the \`Ready\`"
    echo "condition \`True\`; the same for both blocks."
    echo
    echo "**A. Paced (the headline; the target applies here).** After one warm-up pod was"
    echo "Ready, $PODS pods were created one at a time at a uniform $QPS per second: one"
    echo "long-lived creator (\`bench/lib/pace.py\`, 4 keep-alive HTTPS connections with the"
    echo "admin client certificate) POSTs pod i at its absolute deadline start + (i-1)/$QPS,"
    echo "so creation does not drift and a slow create delays no later one. This is how the"
    echo "Kubernetes pod startup SLO (p99 <= 5 s, image present) is measured upstream:"
    echo "clusterloader2 creates its latency pods at a uniform rate (tuning set"
    echo "\`Uniform5qps\` in its density test; \`Uniform1qps\` for the 100 pods of its single-node"
    echo "\`node-throughput\` test), so the figure is each pod's latency, not a queue. \"Creations"
    echo "behind schedule\" is the largest send time - scheduled time over the creates (the"
    echo "pacing held if it is far below 1/$QPS s); \"creates sent per second\" is the rate"
    echo "achieved from the first send to the last; machine busy counts every process from"
    echo "the creator's launch until the last paced pod was Ready. The paced pods were then"
    echo "deleted; B started once none was listed and their shims had exited."
    echo
    echo "**B. Burst, all at once (context: a throughput figure).** $PODS pods split round-robin"
    echo "over $CREATORS \`kind: List\` files, each created by one \`kubectl create -f\`, all"
    echo "started together. On few cores this is throughput-bound: containerd and runc need"
    echo "~0.1 CPU s per pod, so the last pods wait for the first ones and the p99 measures"
    echo "the queue. Throughput = Ready pods / (first pod seen -> last pod Ready)."
    echo
    echo "The API-timestamp rows are \`Ready.lastTransitionTime - creationTimestamp\` (whole"
    echo "seconds). The step rows split each pod's creation -> Ready by joining the watch's"
    echo "stamps with containerd's own log (µs, same clock) by pod name: RunPodSandbox called"
    echo "and returned, CreateContainer called, \`StartContainer ... returns successfully\`."
    echo "Reference: after the burst pods were deleted, on the same containerd, $PODS containers"
    echo "\`ctr run -d --null-io --net-host $BUSYBOX_IMAGE ID sleep 3600\`, each \`ctr\` timed"
    echo "from its start until it returned (the task is running then), twice: $CREATORS loops in"
    echo "parallel (the creators' parallelism), then all $PODS at once (as the node starts every"
    echo "bound pod at once, so both latencies include the queue); throughput = containers /"
    echo "(launch -> all returned). No sandbox, no CNI, no API, one container where a pod has"
    echo "two (pause and busybox): the runtime's floor; the ratios compare it with the burst."
    echo "Burst CPU rows: user + system seconds from the launch of the creators until the last"
    echo "pod was Ready (containerd with the CNI plugins it ran, the shims with the runc runs"
    echo "they waited for); machine busy counts every process on the machine. RSS (VmRSS,"
    echo "MB = MiB) is read $SETTLE s after the last burst pod was Ready, with $((PODS + 1)) pods running."
} >"$OUT"
log "wrote $OUT"
