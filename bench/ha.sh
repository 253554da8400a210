#!/usr/bin/env bash
# HA benchmark for rke2 (the Rust re-implementation), on the layout of
# scripts/ha-cluster.sh (HAProxy + 3 servers in network namespaces).
#
# Once, while the cluster comes up: servers 2 and 3 joining server-1 (started
# together) until their nodes are Ready. Then per round:
#   1. re-join: server-3 is stopped, its Node deleted (which removes its etcd
#      member), its data dir wiped; time from starting it again until its
#      node is Ready through the LB;
#   2. write path after SIGKILL of the etcd leader's server: a ConfigMap
#      create through HAProxy every 50 ms; time from the kill until the
#      first successful write;
#   3. the reference, same kill: time until etcd itself reports a new leader
#      (`etcdctl endpoint status` polled on the surviving members);
#   4. the same write path measurement after SIGKILL of a follower's server.
# Killed servers are restarted (their recorded command line) and the cluster
# is steady again before the next step. Prints median/min/max over the rounds
# next to the targets and writes the same table as Markdown to
# bench/results/ha.md.
#
# Usage: bench/ha.sh [--rounds N] [--no-build] [--out FILE] [--subnet N] [--keep]
# Needs root, haproxy, etcd, etcdctl, kubectl, curl. Not part of the test suite.

set -euo pipefail

ROUNDS=2
BUILD=1
SUBNET=202         # third octet of the private HA subnet 10.231.<N>.0/24
KEEP=0
NSERVERS=3
REJOIN=3           # the server that is wiped and re-joined
POLL=0.05          # seconds between Ready probes and etcd status polls
WRITE_EVERY=0.05   # a write is started this often (not waiting for the previous one)
WRITE_TIMEOUT=2    # curl --max-time of one write (kubectl's --request-timeout=2s)
PRE=1              # seconds of writes before the kill (healthy latency, sanity)
WINDOW=10          # seconds after the kill during which writes continue
DEADLINE=120       # seconds until a wait counts as failed
STOP_GRACE=15      # SIGTERM, then SIGKILL after this many seconds

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/ha.md"
ARGS="$*"

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --rounds=*) ROUNDS="${1#--rounds=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --subnet) SUBNET="${2:?--subnet needs a number}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ha.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || (( ROUNDS < 1 || ROUNDS > 50 )); then
    echo "ha.sh: --rounds must be between 1 and 50" >&2; exit 2
fi
if ! [[ "$SUBNET" =~ ^[0-9]+$ ]] || (( SUBNET < 1 || SUBNET > 249 )); then
    echo "ha.sh: --subnet must be between 1 and 249" >&2; exit 2
fi
[[ $(id -u) == 0 ]] || { echo "ha.sh: needs root (network namespaces)" >&2; exit 1; }

KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in ip ss haproxy etcd etcdctl cargo awk curl base64 setsid "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "ha.sh: ${tool:-kubectl} is not installed" >&2; exit 1; }
done

log() { printf '[bench] %s\n' "$*" >&2; }

# ------------------------------------------------------------------ names --
# scripts/ha-cluster.sh keeps its state in <its repo>/.local/ha and names its
# bridge and namespaces rkeha-*. To leave a developer's cluster (and other
# benchmarks) alone, a copy of it runs from the temp dir (its own .local/ha)
# with the prefix rkehb.
PREFIX=rkehb
NETPFX=10.231.$SUBNET
LB_IP=$NETPFX.10
BRIDGE=$PREFIX-br
server_ip() { echo "$NETPFX.$((10 + $1))"; }
ip_server() { echo $(( ${1##*.} - 10 )); }

# ---------------------------------------------------------------- cleanup --
WORK=""           # temp dir: the ha-cluster copy and its data, logs
HA=""             # $WORK/ha/.local/ha once the copy exists
HA_SCRIPT=""
HA_UP=0           # ha-cluster.sh up was called (down is due)
WRITER=""         # the background writer loop, while it runs
RESTARTED=()      # "pid starttime" of servers this script (re)started

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# starttime PID: field 22 of /proc/PID/stat (empty when gone)
starttime() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# same_proc PID START: PID is still the process that started at START
same_proc() {
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $st != Z && $st != X ]] || return 1
    [[ $(starttime "$1") == "$2" ]]
}

ha() { # the ha-cluster.sh copy with our subnet, binary and kubectl
    HA_SUBNET=$SUBNET HA_SERVERS=$NSERVERS RKE2_BIN="$RKE2" KUBECTL="$KUBECTL" \
        bash "$HA_SCRIPT" "$@"
}

cleanup() {
    local rc=$? pid st
    trap - EXIT INT TERM
    if [[ -n "$WRITER" ]]; then
        kill -TERM "$WRITER" 2>/dev/null || true   # its writes end within WRITE_TIMEOUT
        wait "$WRITER" 2>/dev/null || true
    fi
    if (( rc != 0 )) && [[ -n "$HA" && -d "$HA" ]]; then
        local f
        for f in "$HA"/server-*/rke2.log; do
            [[ -f "$f" ]] || continue
            log "--- tail of $f"; tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
        done
    fi
    if (( HA_UP )); then
        log "tearing down the HA cluster"
        ha down >&2 || log "ha-cluster.sh down failed"
    fi
    # restarted servers are in ha-cluster's pids file, so `down` stopped
    # them; this is only the fallback
    for pid in "${RESTARTED[@]}"; do
        read -r pid st <<<"$pid"
        if same_proc "$pid" "$st"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if (( KEEP )); then log "kept $WORK"; else rm -rf "$WORK"; fi
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

# Refuse to run next to anything with our names or subnet: ha-cluster.sh
# records a name before creating it, so on a clash its own error path would
# delete the other owner's bridge or namespace.
for ns in "$PREFIX-lb" $(for i in $(seq $NSERVERS); do echo "$PREFIX-server-$i"; done); do
    if ip netns list | awk '{ print $1 }' | grep -qx "$ns"; then
        die "network namespace $ns exists (another ha.sh running?); not touching it"
    fi
done
for l in "$BRIDGE" "$PREFIX-v-lb" $(for i in $(seq $NSERVERS); do echo "$PREFIX-v-s$i"; done); do
    if ip link show "$l" >/dev/null 2>&1; then die "link $l exists (another ha.sh running?)"; fi
done
if ip -o -4 addr show | grep -q "inet $NETPFX\."; then
    die "$NETPFX.0/24 is in use on this machine; pick another with --subnet N"
fi

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)   # other jobs on the machine skew the figures
WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-ha-bench.XXXXXX")"
mkdir -p "$WORK/ha/scripts"
HA_SCRIPT="$WORK/ha/scripts/ha-cluster.sh"
sed 's/^PREFIX=rkeha$/PREFIX='"$PREFIX"'/' "$ROOT/scripts/ha-cluster.sh" >"$HA_SCRIPT"
[[ $(grep -c "^PREFIX=$PREFIX\$" "$HA_SCRIPT") == 1 ]] ||
    die "scripts/ha-cluster.sh no longer has the line PREFIX=rkeha; update bench/ha.sh"
HA="$WORK/ha/.local/ha"
LBKC="$HA/rke2.yaml"
ETCD_TLS="$HA/server-1/data/server/tls/etcd"

# ---------------------------------------------------------------- helpers --
now() { printf '%s' "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
past() { awk -v s="$1" -v n="$(now)" -v d="$2" 'BEGIN { exit !(n - s > d) }'; }
exec {IDLE_FD}<> <(:)
# nap SECONDS: a builtin timed read (a signal interrupts it at once, unlike sleep)
nap() { read -rt "$1" -u "$IDLE_FD" _ || true; }
nap_until() { # EPOCH: nap until then
    nap "$(awk -v t="$1" -v n="$(now)" 'BEGIN { d = t - n; printf "%.3f", (d > 0 ? d : 0) }')"
}

kc() { "$KUBECTL" --kubeconfig "$LBKC" --cache-dir "$WORK/kcache-lb" --request-timeout=5s "$@"; }

# proc_start_epoch PID: the process start as epoch seconds (10 ms resolution)
# (boot time from /proc/uptime, not btime, which is whole seconds)
HZ=$(getconf CLK_TCK)
proc_start_epoch() {
    local st up
    st=$(starttime "$1")
    [[ -n $st ]] || return 1
    read -r up _ </proc/uptime
    awk -v n="$(now)" -v up="$up" -v s="$st" -v hz="$HZ" 'BEGIN { printf "%.3f", n - up + s / hz }'
}

# server_pid N: pid of server-N's rke2 now (the last live entry in the pids file)
server_pid() {
    local n pid st found=""
    while read -r n pid st; do
        [[ $n == "server-$1" ]] && same_proc "$pid" "$st" && found=$pid
    done <"$HA/pids"
    [[ -n $found ]] && echo "$found"
}

# node_ready NAME: the node shows Ready through the LB
node_ready() {
    kc get node "$1" --no-headers 2>/dev/null | awk -v n="$1" '$1 == n && $2 == "Ready" { f = 1 } END { exit !f }'
}

etcdctl_() {
    ETCDCTL_API=3 etcdctl --cacert "$ETCD_TLS/server-ca.crt" --cert "$ETCD_TLS/client.crt" \
        --key "$ETCD_TLS/client.key" --command-timeout=2s "$@"
}
etcd_endpoints() { # [EXCEPT_N]: the client URLs of all servers but EXCEPT_N
    local i e=()
    for i in $(seq $NSERVERS); do
        [[ $i == "${1:-}" ]] || e+=("https://$(server_ip "$i"):2379")
    done
    (IFS=,; echo "${e[*]}")
}
# etcd_status [EXCEPT_N]: "ip id(hex) is-leader is-learner" per answering member
etcd_status() {
    etcdctl_ --endpoints "$(etcd_endpoints "${1:-}")" endpoint status -w simple 2>/dev/null |
        awk -F', ' '{ ip = $1; sub(/^https:\/\//, "", ip); sub(/:.*/, "", ip); print ip, $2, $5, $6 }' || true
}
etcd_leader_ip() { etcd_status | awk '$3 == "true" { print $1; exit }'; }
etcd_members() { etcdctl_ --endpoints "$(etcd_endpoints)" member list -w simple 2>/dev/null || true; }

# haproxy_state N [BACKEND]: last UP/DOWN event of BACKEND/server-N (UP if
# none; BACKEND rke2-apiserver unless given)
haproxy_state() {
    local s
    s=$(grep -oE "Server ${2:-rke2-apiserver}/server-$1 is (UP|DOWN)" "$HA/lb/haproxy.log" 2>/dev/null | tail -n 1 | awk '{ print $NF }')
    echo "${s:-UP}"
}

# cluster_ready: all server nodes Ready, every server's /readyz, HAProxy sees
# every apiserver UP, etcd has NSERVERS voting members and a leader
cluster_ready() {
    local i st
    for i in $(seq $NSERVERS); do
        node_ready "server-$i" || return 1
        kc --server "https://$(server_ip "$i"):6443" get --raw /readyz >/dev/null 2>&1 || return 1
        [[ $(haproxy_state "$i") == UP ]] || return 1
        [[ $(haproxy_state "$i" rke2-supervisor) == UP ]] || return 1
    done
    st=$(etcd_status)
    [[ $(awk '$4 == "false"' <<<"$st" | wc -l) == "$NSERVERS" ]] || return 1
    awk '$3 == "true" { f = 1 } END { exit !f }' <<<"$st"
}

wait_for() { # WHAT CMD...: poll CMD every 0.2 s until it succeeds
    local what=$1 t0; shift
    t0=$(now)
    until "$@"; do
        past "$t0" "$DEADLINE" && die "$what not reached within ${DEADLINE}s"
        nap 0.2
    done
}
steady() { # the cluster is ready, and still is 2 s later (one more HAProxy check round)
    wait_for "cluster ready (${NSERVERS} nodes Ready, etcd voting, HAProxy UP)" cluster_ready
    nap 2
    wait_for "cluster steady" cluster_ready
}

# start_server N CMD...: start server-N's command line in its namespace,
# output appended to its log, recorded in ha-cluster's pids file (so `down`
# stops it). Sets STARTED_PID.
start_server() {
    local n=$1 pid st i; shift
    echo "=== bench/ha.sh start: $(date -u +%FT%TZ)" >>"$HA/server-$n/rke2.log"
    setsid ip netns exec "$PREFIX-server-$n" "$@" </dev/null >>"$HA/server-$n/rke2.log" 2>&1 &
    pid=$!
    disown "$pid"       # no job notice when a later round SIGKILLs it
    for (( i = 0; i < 50; i++ )); do [[ -n $(starttime "$pid") ]] && break; nap 0.02; done
    st=$(starttime "$pid")
    [[ -n $st ]] || die "server-$n exited at once after its start"
    RESTARTED+=("$pid $st")
    echo "server-$n $pid $st" >>"$HA/pids"
    STARTED_PID=$pid
}

# server_cmd N: server-N's command line into the array CMD
server_cmd() {
    local pid
    pid=$(server_pid "$1") || die "server-$1 is not running"
    mapfile -d '' -t CMD <"/proc/$pid/cmdline"
    [[ ${#CMD[@]} -gt 1 && "${CMD[0]##*/}" == rke2 ]] || die "pid $pid is not server-$1's rke2 (${CMD[*]})"
}

# netns_empty N: nothing (rke2 or its etcd) runs in server-N's namespace any more
netns_empty() { [[ -z $(ip netns pids "$PREFIX-server-$1" 2>/dev/null) ]]; }

# ---------------------------------------------------------- write client --
# The writes use curl, not kubectl: 20 kubectl runs a second would take most
# of this machine's CPUs. Same request as `kubectl create configmap`, with
# the admin credentials of ha-cluster's LB kubeconfig.
CREDS="$WORK/creds"
extract_creds() {
    mkdir -p "$CREDS"
    local f k
    for f in certificate-authority-data:ca.crt client-certificate-data:client.crt client-key-data:client.key; do
        k=${f%%:*}
        awk -v k="$k:" '$1 == k { print $2; exit }' "$LBKC" | base64 -d >"$CREDS/${f#*:}"
        [[ -s "$CREDS/${f#*:}" ]] || die "no $k in $LBKC"
    done
    chmod 600 "$CREDS"/*
}

# write_one NAME RESULT: one ConfigMap create through HAProxy; appends
# "<start> <end> <http code>" (epoch seconds; 000 = no answer) to RESULT
write_one() {
    local t0=$EPOCHREALTIME code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$WRITE_TIMEOUT" \
        --cacert "$CREDS/ca.crt" --cert "$CREDS/client.crt" --key "$CREDS/client.key" \
        -H 'Content-Type: application/json' -X POST \
        --data "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"$1\"},\"data\":{\"k\":\"v\"}}" \
        "https://$LB_IP:6443/api/v1/namespaces/default/configmaps" 2>/dev/null) || true
    echo "$t0 $EPOCHREALTIME ${code:-000}" >>"$2"
}

# writer TAG RESULT: a write every WRITE_EVERY s until killed (TERM), then
# waits for the writes in flight. Run in the background.
writer() {
    local tag=$1 res=$2 i=0 stop=0 pids=()
    trap 'stop=1' TERM
    while (( !stop )); do
        write_one "bw-$tag-$i" "$res" &
        pids+=("$!")
        i=$((i + 1))
        nap "$WRITE_EVERY"
    done
    for i in "${pids[@]}"; do wait "$i" 2>/dev/null || true; done
}

# kill_and_measure N TAG REF: SIGKILL server-N's rke2 while the writer runs;
# with REF=1 also poll the surviving etcd members until they report a new
# leader. Restarts the server and waits until the cluster is steady.
# Sets FIRST_OK, FAILED, WRITES, LAST_FAIL, HEALTHY_LAT, ELECT (REF=1).
kill_and_measure() {
    local n=$1 tag=$2 ref=$3 pid st res="$WORK/writes-$2" t0 old_id="" line
    server_cmd "$n"
    pid=$(server_pid "$n")
    st=$(starttime "$pid")
    if (( ref )); then
        old_id=$(etcd_status | awk -v ip="$(server_ip "$n")" '$1 == ip { print $2 }')
        [[ -n $old_id ]] || die "no etcd member id for server-$n"
    fi
    : >"$res"
    writer "$tag" "$res" &
    WRITER=$!
    nap "$PRE"
    t0=$(now)
    kill -KILL "$pid"
    ELECT=""
    if (( ref )); then
        # etcd's own election, from the survivors' point of view
        while [[ -z $ELECT ]]; do
            line=$(etcd_status "$n" | awk -v old="$old_id" '$3 == "true" && $2 != old { print; exit }')
            if [[ -n $line ]]; then ELECT=$(sub "$(now)" "$t0"); break; fi
            past "$t0" "$DEADLINE" && die "etcd elected no new leader within ${DEADLINE}s"
            nap "$POLL"
        done
    fi
    nap_until "$(awk -v t="$t0" -v w="$WINDOW" 'BEGIN { printf "%.3f", t + w }')"
    kill -TERM "$WRITER" 2>/dev/null || true
    wait "$WRITER" 2>/dev/null || true
    WRITER=""
    same_proc "$pid" "$st" && die "server-$n (pid $pid) survived SIGKILL"
    wait "$pid" 2>/dev/null || true                  # reaps it if we started it
    grep -q ' 201$' <(awk -v t="$t0" '$1 >= t' "$res") ||
        die "no write through the LB succeeded within ${WINDOW}s of killing server-$n"
    HEALTHY_LAT=$(awk -v t="$t0" '$2 < t && $3 == "201" { printf "%.3f\n", $2 - $1 }' "$res" |
        sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 0) }')
    read -r FIRST_OK FAILED WRITES LAST_FAIL PRE_FAIL < <(awk -v t="$t0" '
        $2 < t && $3 != "201" { prefail++ }
        $1 >= t { n++ }
        $1 >= t && $3 == "201" && (first == "" || $2 < first) { first = $2 }
        $1 >= t && $3 != "201" { failed++; if ($1 > last) last = $1 }
        END { printf "%.3f %d %d %.3f %d\n", first - t, failed, n, (failed ? last - t : 0), prefail }' "$res")
    (( PRE_FAIL == 0 )) || log "  WARNING: $PRE_FAIL writes failed before the kill, on the healthy cluster"
    # bring it back
    netns_empty "$n" || wait_for "server-$n's etcd gone" netns_empty "$n"
    start_server "$n" "${CMD[@]}"
    steady
}

# rejoin N: stop server-N, delete its Node (its etcd member goes with it),
# wipe its data dir, start it again: sets JOIN (s to Ready), REMOVE (s from
# the Node delete until etcd lists one member fewer)
# removals_logged: "<by a Node delete event> <by reconciliation>", the etcd
# member removals the servers' logs report so far
removals_logged() {
    local f a b e=0 r=0
    for f in "$HA"/server-*/rke2.log; do
        a=$(grep -c "removed etcd member of deleted node" "$f" || true)
        b=$(grep -c "removed etcd voter whose Node is gone" "$f" || true)
        e=$((e + ${a:-0})) r=$((r + ${b:-0}))
    done
    echo "$e $r"
}

rejoin() {
    local n=$1 pid st t0 data="$HA/server-$1/data" i
    server_cmd "$n"
    # not the etcd leader (a leader leaving costs an election, measured elsewhere)
    for (( i = 0; i < 5; i++ )); do
        [[ $(etcd_leader_ip) != "$(server_ip "$n")" ]] && break
        local to
        to=$(etcd_status | awk -v x="$(server_ip "$n")" '$1 != x && $4 == "false" { print $2; exit }')
        log "    moving etcd leadership off server-$n"
        etcdctl_ --endpoints "https://$(server_ip "$n"):2379" move-leader "$to" >/dev/null 2>&1 || true
        nap 1
    done
    pid=$(server_pid "$n")
    st=$(starttime "$pid")
    kill -TERM "$pid"
    t0=$(now)
    while same_proc "$pid" "$st"; do
        past "$t0" "$STOP_GRACE" && { log "server-$n ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
        nap 0.1
    done
    wait "$pid" 2>/dev/null || true
    wait_for "server-$n's etcd gone" netns_empty "$n"
    # HAProxy would still hand every third connection to the stopped server,
    # and (no `option redispatch`) retry it for 3 s before giving up: the
    # joiner's first requests to 9345 would measure that
    wait_for "HAProxy marking server-$n DOWN" \
        eval '[[ $(haproxy_state "$n") == DOWN && $(haproxy_state "$n" rke2-supervisor) == DOWN ]]'
    local e0 r0 e1 r1
    read -r e0 r0 < <(removals_logged)
    t0=$(now)
    kc delete node "server-$n" --wait=false >/dev/null
    wait_for "server-$n's etcd member removed" \
        eval '[[ $(etcd_members | grep -c .) == $((NSERVERS - 1)) ]]'
    REMOVE=$(sub "$(now)" "$t0")
    # which path removed it: the Node delete event reaches only a live
    # holder of the controllers' lease; when the stopped server held it,
    # the next holder's reconciliation (voters against Nodes, after a
    # grace) does. The log line follows the removal within moments.
    REMOVED_BY="?"
    for (( i = 0; i < 20; i++ )); do
        read -r e1 r1 < <(removals_logged)
        if (( r1 > r0 )); then REMOVED_BY=reconciliation; break; fi
        if (( e1 > e0 )); then REMOVED_BY=event; break; fi
        nap 0.1
    done
    rm -rf "$data"
    # the join itself
    t0=$(now)
    start_server "$n" "${CMD[@]}"
    until node_ready "server-$n"; do
        alive "$STARTED_PID" || die "server-$n exited before its node was Ready"
        past "$t0" "$DEADLINE" && die "server-$n not Ready within ${DEADLINE}s"
        nap "$POLL"
    done
    JOIN=$(sub "$(now)" "$t0")
    steady
}

# ------------------------------------------------------------ the cluster --
log "HA cluster on $NETPFX.0/24 (a copy of scripts/ha-cluster.sh, prefix $PREFIX)"
HA_UP=1
ha up >"$WORK/ha-up.log" 2>&1 || { cat "$WORK/ha-up.log" >&2; die "ha-cluster.sh up failed"; }
# the initial join of servers 2..N (ha-cluster starts them together once
# server-1 answers through the LB): from each process start until its node
# is Ready
declare -A JSTART JREADY
for (( i = 2; i <= NSERVERS; i++ )); do
    p=$(server_pid "$i") || die "server-$i is not running"
    JSTART[$i]=$(proc_start_epoch "$p")
done
t0=$(now)
nready=0
while (( nready < NSERVERS - 1 )); do
    out=$(kc get nodes --no-headers 2>/dev/null || true)
    t=$(now)
    for (( i = 2; i <= NSERVERS; i++ )); do
        [[ -n ${JREADY[$i]:-} ]] && continue
        if awk -v n="server-$i" '$1 == n && $2 == "Ready" { f = 1 } END { exit !f }' <<<"$out"; then
            JREADY[$i]=$(sub "$t" "${JSTART[$i]}")
            nready=$((nready + 1))
        fi
    done
    past "$t0" "$DEADLINE" && die "servers 2..$NSERVERS not Ready within ${DEADLINE}s of \`up\`"
    nap "$POLL"
done
INITIAL=()
for (( i = 2; i <= NSERVERS; i++ )); do INITIAL+=("${JREADY[$i]}"); done
log "initial join to Ready (servers 2..$NSERVERS started together): ${INITIAL[*]} s"
steady
extract_creds
kc get nodes >/dev/null 2>&1 || true
log "cluster ready: $(kc get nodes --no-headers | awk '{ printf "%s=%s ", $1, $2 }')"

# ------------------------------------------------------------------ rounds --
declare -a R_JOIN R_REMOVE R_LEAD R_ELECT R_RATIO R_FOLL R_FAIL_L R_FAIL_F R_LAST_L R_LAST_F R_LAT DETAILS
for (( round = 1; round <= ROUNDS; round++ )); do
    log "round $round/$ROUNDS: re-join of server-$REJOIN (stop, delete Node, wipe data dir, start)"
    rejoin "$REJOIN"
    log "  member removed ${REMOVE}s after the Node delete (by $REMOVED_BY); re-join to Ready ${JOIN}s"

    lip=$(etcd_leader_ip)
    [[ -n $lip ]] || die "no etcd leader"
    ln=$(ip_server "$lip")
    log "  SIGKILL server-$ln (etcd leader) while writing through HAProxy every ${WRITE_EVERY}s"
    kill_and_measure "$ln" "r$round-leader" 1
    lead=$FIRST_OK elect=$ELECT fail_l="$FAILED/$WRITES" last_l=$LAST_FAIL lat=$HEALTHY_LAT
    log "  first write after ${lead}s (etcd new leader after ${elect}s); failed writes $fail_l, last failure started at ${last_l}s"

    lip=$(etcd_leader_ip)
    fn=""
    for (( i = 1; i <= NSERVERS; i++ )); do
        [[ $(server_ip "$i") != "$lip" ]] && { fn=$i; break; }
    done
    log "  SIGKILL server-$fn (etcd follower) while writing through HAProxy every ${WRITE_EVERY}s"
    kill_and_measure "$fn" "r$round-follower" 0
    foll=$FIRST_OK fail_f="$FAILED/$WRITES" last_f=$LAST_FAIL
    log "  first write after ${foll}s; failed writes $fail_f, last failure started at ${last_f}s"

    ratio=$(awk -v a="$lead" -v b="$elect" 'BEGIN { printf "%.2f", a / b }')
    R_JOIN+=("$JOIN"); R_REMOVE+=("$REMOVE"); R_LEAD+=("$lead"); R_ELECT+=("$elect"); R_RATIO+=("$ratio")
    R_FOLL+=("$foll"); R_FAIL_L+=("${fail_l%/*}"); R_FAIL_F+=("${fail_f%/*}")
    R_LAST_L+=("$last_l"); R_LAST_F+=("$last_f"); R_LAT+=("$lat")
    DETAILS+=("$round|$JOIN|$REMOVE|$REMOVED_BY|server-$ln|$lead|$elect|$fail_l|$last_l|server-$fn|$foll|$fail_f|$last_f")
done

# ------------------------------------------------------------------ table --
stats() {
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s %s %s", m, v[1], v[NR]
        }'
}
ROWS=()
# shellcheck disable=SC2059
row() { # LABEL FMT TARGET VALUES...
    local label=$1 fmt=$2 target=$3; shift 3
    local s m lo hi
    s=$(stats "$@"); read -r m lo hi <<<"$s"
    ROWS+=("$label|$(printf "$fmt" "$m")|$(printf "$fmt" "$lo")|$(printf "$fmt" "$hi")|$target")
}
row "initial join to Ready, servers 2+3 together (s)" "%.2f" "< 10 s"       "${INITIAL[@]}"
row "re-join to Ready, wiped server (s)"             "%.2f" "< 10 s"         "${R_JOIN[@]}"
row "etcd member removed after Node delete (s)"      "%.2f" "-"              "${R_REMOVE[@]}"
row "write latency, healthy (s)"                     "%.3f" "context (one curl run)" "${R_LAT[@]}"
row "first write after SIGKILL, etcd leader (s)"     "%.2f" "< 2 s"          "${R_LEAD[@]}"
row "etcd new leader after SIGKILL of leader (s)"    "%.2f" "reference"      "${R_ELECT[@]}"
row "ratio write / etcd election"                    "%.2f" "-"              "${R_RATIO[@]}"
row "first write after SIGKILL, follower (s)"        "%.2f" "< 2 s"          "${R_FOLL[@]}"
row "failed writes in ${WINDOW} s after, leader"     "%g"   "-"              "${R_FAIL_L[@]}"
row "failed writes in ${WINDOW} s after, follower"   "%g"   "-"              "${R_FAIL_F[@]}"
row "last failing write started, leader (s)"         "%.2f" "-"              "${R_LAST_L[@]}"
row "last failing write started, follower (s)"       "%.2f" "-"              "${R_LAST_F[@]}"

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes)"
fi
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
cpus=$(nproc)
kubectl_ver=$("$KUBECTL" version --client 2>/dev/null | awk '/Client Version/ { print $3 }')
haproxy_ver=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')
etcd_ver=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')

echo
printf 'rke2 HA (HAProxy + %d servers), %d round(s), %s, nproc %s, commit %s\n' "$NSERVERS" "$ROUNDS" "$date_s" "$cpus" "$commit"
printf '%-48s %8s %8s %8s   %s\n' "metric" "median" "min" "max" "target"
for r in "${ROWS[@]}"; do
    IFS='|' read -r l m lo hi t <<<"$r"
    printf '%-48s %8s %8s %8s   %s\n' "$l" "$m" "$lo" "$hi" "$t"
done

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 HA benchmark (HAProxy + $NSERVERS servers)"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $cpus, $(uname -sr); load average at start $LOAD_AT_START, at the end $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- commit: $commit"
    echo "- binary: \`$RKE2\`"
    echo "- rounds: $ROUNDS (median, min, max over rounds; the initial join: over servers 2..$NSERVERS)"
    echo "- HAProxy $haproxy_ver, etcd $etcd_ver, kubectl $kubectl_ver, $(curl --version | awk 'NR == 1 { print $1, $2 }')"
    echo "- command: \`bench/ha.sh${ARGS:+ $ARGS}\`"
    echo
    echo "| metric | median | min | max | target |"
    echo "| --- | ---: | ---: | ---: | --- |"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r l m lo hi t <<<"$r"
        echo "| $l | $m | $lo | $hi | $t |"
    done
    echo
    echo "Per round:"
    echo
    echo "| round | re-join (s) | member removal (s) | removed by | leader killed | first write (s) | etcd election (s) | failed/writes | last failure (s) | follower killed | first write (s) | failed/writes | last failure (s) |"
    echo "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
    for d in "${DETAILS[@]}"; do
        echo "| ${d//|/ | } |"
    done
    echo
    echo "Join: from the \`rke2 server\` process start (its start time in \`/proc\`) until"
    echo "\`kubectl get node\` through HAProxy shows it \`Ready\` (polled every 50 ms, one"
    echo "kubectl run per poll). Initial join: servers 2 and 3 as \`ha-cluster.sh up\` starts"
    echo "them, together, once server-1 answers through the LB. Re-join: server-$REJOIN"
    echo "stopped (SIGTERM), its Node deleted (the server-removal controller removes its"
    echo "etcd member), its data dir wiped, then started with its old command line."
    echo "Member removal: from the Node delete until \`etcdctl member list\` has $((NSERVERS - 1))"
    echo "members. \"event\": the removal loop saw the delete (a live server held the"
    echo "controllers' lease); \"reconciliation\": server-$REJOIN itself held the lease when it"
    echo "was stopped, so no loop saw the delete, and the next holder removed the voter"
    echo "once its Node had been missing for the grace (60 s, counted from its takeover)."
    echo "Writes: a ConfigMap create (\`POST /api/v1/namespaces/default/configmaps\`, admin"
    echo "credentials) through HAProxy with curl, one started every ${WRITE_EVERY} s without"
    echo "waiting for the previous one, each with \`--max-time $WRITE_TIMEOUT\`; success = 201."
    echo "First write: from the SIGKILL of the server's \`rke2\` (its etcd dies with it)"
    echo "until the end of the first successful write started after it. Writes go on for"
    echo "$WINDOW s after the kill (failed/writes counts those). etcd election (the"
    echo "reference, same kill): until \`etcdctl endpoint status\` on the surviving members"
    echo "(polled every 50 ms) reports a leader other than the killed member. After each"
    echo "kill the server is restarted and the next step waits until all nodes are Ready,"
    echo "etcd has $NSERVERS voters and a leader and HAProxy counts every apiserver UP."
} >"$OUT"
log "wrote $OUT"
