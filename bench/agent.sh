#!/usr/bin/env bash
# Agent benchmark for rke2 (the Rust re-implementation), against the HA layout
# of scripts/ha-cluster.sh (HAProxy + 3 servers in network namespaces).
#
# Per round (a fresh agent data dir and node name each time) it measures:
#   1. join to Ready: `rke2 agent` started in its own namespace on the HA
#      bridge, until `kubectl get node` through the LB shows it Ready;
#   2. agent RSS 15 s after Ready, beside the RSS of the server processes;
#   3. API resume through the agent's local balancer (127.0.0.1:6443 in the
#      agent namespace) after the server it uses is killed (SIGKILL);
#   4. the reference: the same resume measurement through HAProxy (the LB's
#      6443), same server killed, same client, same credentials.
# Then it prints median/min/max over the rounds next to the targets and writes
# the same table as Markdown to bench/results/agent.md.
#
# Usage: bench/agent.sh [--rounds N] [--no-build] [--out FILE] [--subnet N]
#                       [--fault kill|stop] [--kill-etcd-leader] [--keep]
# Needs root, haproxy, etcd, etcdctl, kubectl. Not part of the test suite.

set -euo pipefail

ROUNDS=3
BUILD=1
SUBNET=201         # third octet of the private HA subnet 10.231.<N>.0/24
FAULT="kill"       # kill: SIGKILL the server; stop: SIGSTOP it (accepts TCP, never answers)
LEADER=away        # away: move etcd leadership off the faulted server first; on: onto it
KEEP=0
JOIN_POLL=0.05     # seconds between join probes (sequential)
RESUME_EVERY=0.1   # a resume probe is started this often (overlapping)
PROBE_TIMEOUT=3s   # kubectl --request-timeout of one resume probe
MAX_PROBES=40      # resume probes in flight at most
WINDOW=10          # seconds after the fault during which probes continue (failure count)
DEADLINE=120       # seconds until a wait counts as failed
IDLE_AT=15         # agent RSS is read this many seconds after Ready
STOP_GRACE=15      # SIGTERM, then SIGKILL after this many seconds

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/agent.md"
ARGS="$*"

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --rounds=*) ROUNDS="${1#--rounds=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --subnet) SUBNET="${2:?--subnet needs a number}"; shift 2 ;;
        --fault) FAULT="${2:?--fault needs kill or stop}"; shift 2 ;;
        --kill-etcd-leader) LEADER=on; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "agent.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || (( ROUNDS < 1 || ROUNDS > 50 )); then
    echo "agent.sh: --rounds must be between 1 and 50" >&2; exit 2
fi
if ! [[ "$SUBNET" =~ ^[0-9]+$ ]] || (( SUBNET < 1 || SUBNET > 249 )); then
    echo "agent.sh: --subnet must be between 1 and 249" >&2; exit 2
fi
[[ "$FAULT" == kill || "$FAULT" == stop ]] || { echo "agent.sh: --fault is kill or stop" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "agent.sh: needs root (network namespaces)" >&2; exit 1; }

KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
for tool in ip ss haproxy etcd etcdctl cargo awk setsid "$KUBECTL"; do
    command -v "$tool" >/dev/null || { echo "agent.sh: ${tool:-kubectl} is not installed" >&2; exit 1; }
done

log() { printf '[bench] %s\n' "$*" >&2; }

# ------------------------------------------------------------------ names --
# scripts/ha-cluster.sh keeps its state in <its repo>/.local/ha and names its
# bridge and namespaces rkeha-*. To leave a developer's cluster alone, a copy
# of it runs from the temp dir (its own .local/ha) with the prefix rkeab.
PREFIX=rkeab
NETPFX=10.231.$SUBNET
LB_IP=$NETPFX.10
AGENT_IP=$NETPFX.20
AGENT_NS=$PREFIX-agent
AGENT_VETH=$PREFIX-v-ag
BRIDGE=$PREFIX-br
NSERVERS=3
server_ip() { echo "$NETPFX.$((10 + $1))"; }
TOKEN=my-shared-secret   # the token scripts/ha-cluster.sh configures

# ---------------------------------------------------------------- cleanup --
WORK=""           # temp dir: the ha-cluster copy and its data, agent data, logs
HA=""             # $WORK/ha/.local/ha once the copy exists
HA_SCRIPT=""
HA_UP=0           # ha-cluster.sh up was called (down is due)
AGENT_PIDS=()     # agents started (pid)
PROBE_PIDS=()     # resume probes in flight (background subshells)
RESTARTED=()      # "pid starttime" of servers this script restarted
STOPPED=""        # a server pid left SIGSTOPped by --fault stop
CREATED_NS=""     # the agent namespace, once created
CREATED_LINK=""   # its veth, once created

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

# stop_pid PID: SIGTERM, wait up to STOP_GRACE s, then SIGKILL. Waits for exit.
stop_pid() {
    local pid=$1 i
    if alive "$pid" && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for (( i = 0; i < STOP_GRACE * 10; i++ )); do
            alive "$pid" || break
            [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == Z* ]] && break
            sleep 0.1
        done
        if alive "$pid" && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]; then
            log "pid $pid ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    local p keep=()
    for p in "${AGENT_PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    AGENT_PIDS=("${keep[@]}")
}

wait_probes() {
    local p
    for p in "${PROBE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PROBE_PIDS=()
}

ha() { # ha-cluster.sh copy with our subnet, binary and kubectl
    HA_SUBNET=$SUBNET HA_SERVERS=$NSERVERS RKE2_BIN="$RKE2" KUBECTL="$KUBECTL" \
        bash "$HA_SCRIPT" "$@"
}

cleanup() {
    local rc=$? pid st
    trap - EXIT INT TERM
    wait_probes                                        # bounded by PROBE_TIMEOUT
    for pid in "${AGENT_PIDS[@]}"; do stop_pid "$pid"; done
    if [[ -n "$STOPPED" ]]; then kill -CONT "$STOPPED" 2>/dev/null || true; fi
    if (( rc != 0 )) && [[ -n "$WORK" && -d "$WORK" ]]; then
        local f
        for f in "$WORK"/agent-*/agent.log "$HA"/server-*/rke2.log; do
            [[ -f "$f" ]] || continue
            log "--- tail of $f"; tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
        done
    fi
    if (( HA_UP )); then
        log "tearing down the HA cluster"
        ha down >&2 || log "ha-cluster.sh down failed"
    fi
    # servers restarted by this script are in ha-cluster's pids file, so
    # `down` stopped them; this is only the fallback
    for pid in "${RESTARTED[@]}"; do
        read -r pid st <<<"$pid"
        if same_proc "$pid" "$st"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if [[ -n "$CREATED_NS" ]]; then
        for pid in $(ip netns pids "$CREATED_NS" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true          # only ours run there
        done
        ip netns del "$CREATED_NS" 2>/dev/null || log "could not delete netns $CREATED_NS"
    fi
    if [[ -n "$CREATED_LINK" ]] && ip link show "$CREATED_LINK" >/dev/null 2>&1; then
        ip link del "$CREATED_LINK" 2>/dev/null || true    # normally gone with the netns
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if (( KEEP )); then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
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
for ns in "$PREFIX-lb" "$AGENT_NS" $(for i in $(seq $NSERVERS); do echo "$PREFIX-server-$i"; done); do
    if ip netns list | awk '{ print $1 }' | grep -qx "$ns"; then
        die "network namespace $ns exists (another agent.sh running?); not touching it"
    fi
done
for l in "$BRIDGE" "$PREFIX-v-lb" "$AGENT_VETH" $(for i in $(seq $NSERVERS); do echo "$PREFIX-v-s$i"; done); do
    if ip link show "$l" >/dev/null 2>&1; then die "link $l exists (another agent.sh running?)"; fi
done
if ip -o -4 addr show | grep -q "inet $NETPFX\."; then
    die "$NETPFX.0/24 is in use on this machine; pick another with --subnet N"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rke2-agent-bench.XXXXXX")"
mkdir -p "$WORK/ha/scripts"
HA_SCRIPT="$WORK/ha/scripts/ha-cluster.sh"
sed 's/^PREFIX=rkeha$/PREFIX='"$PREFIX"'/' "$ROOT/scripts/ha-cluster.sh" >"$HA_SCRIPT"
[[ $(grep -c "^PREFIX=$PREFIX\$" "$HA_SCRIPT") == 1 ]] ||
    die "scripts/ha-cluster.sh no longer has the line PREFIX=rkeha; update bench/agent.sh"
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
rss_kb() {
    awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) exit 1 }' "/proc/$1/status" 2>/dev/null \
        || die "cannot read VmRSS of pid $1"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
nocolor() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }

kc() { "$KUBECTL" --kubeconfig "$LBKC" --cache-dir "$WORK/kcache-lb" --request-timeout=5s "$@"; }

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
        --key "$ETCD_TLS/client.key" --command-timeout=3s "$@"
}
etcd_endpoints() {
    local i e=()
    for i in $(seq $NSERVERS); do e+=("https://$(server_ip "$i"):2379"); done
    (IFS=,; echo "${e[*]}")
}
# etcd_status: "ip id leader learner" per answering member
etcd_status() {
    etcdctl_ --endpoints "$(etcd_endpoints)" endpoint status -w simple 2>/dev/null |
        awk -F', ' '{ ip = $1; sub(/^https:\/\//, "", ip); sub(/:.*/, "", ip); print ip, $2, $5, $6 }' || true
}
etcd_leader_ip() { etcd_status | awk '$3 == "true" { print $1; exit }'; }

# haproxy_state N: last UP/DOWN event of rke2-apiserver/server-N (UP if none)
haproxy_state() {
    local s
    s=$(grep -oE "Server rke2-apiserver/server-$1 is (UP|DOWN)" "$HA/lb/haproxy.log" 2>/dev/null | tail -n 1 | awk '{ print $NF }')
    echo "${s:-UP}"
}
# agent_lb_state LOG IP: last apiserver-balancer health event for IP:6443 (healthy if none)
agent_lb_state() {
    local s
    s=$(nocolor "$1" | grep -E "lb=apiserver server=$2:6443" | grep -oE "server is (healthy|unhealthy)" | tail -n 1 | awk '{ print $NF }')
    echo "${s:-healthy}"
}

# cluster_ready: 3 Ready server nodes, 3 voting etcd members with a leader,
# every server's /readyz, HAProxy sees every apiserver UP
cluster_ready() {
    local i st
    for i in $(seq $NSERVERS); do
        node_ready "server-$i" || return 1
        kc --server "https://$(server_ip "$i"):6443" get --raw /readyz >/dev/null 2>&1 || return 1
        [[ $(haproxy_state "$i") == UP ]] || return 1
    done
    st=$(etcd_status)
    [[ $(awk '$4 == "false"' <<<"$st" | wc -l) == "$NSERVERS" ]] || return 1
    grep -q ' true ' <<<"$st"
}

wait_for() { # WHAT CMD...: poll CMD every 0.2 s until it succeeds
    local what=$1 t0; shift
    t0=$(now)
    until "$@"; do
        past "$t0" "$DEADLINE" && die "$what not reached within ${DEADLINE}s"
        nap 0.2
    done
}

# ------------------------------------------------------------ the cluster --
log "HA cluster on $NETPFX.0/24 (a copy of scripts/ha-cluster.sh, prefix $PREFIX)"
HA_UP=1
ha up >"$WORK/ha-up.log" 2>&1 || { cat "$WORK/ha-up.log" >&2; die "ha-cluster.sh up failed"; }
wait_for "all 3 servers Ready, etcd voting, HAProxy backends UP" cluster_ready
nap 2
log "cluster ready: $(kc get nodes --no-headers | awk '{ printf "%s=%s ", $1, $2 }')"

# -------------------------------------------------------- the agent netns --
# like ha-cluster.sh's hosts: veth on its bridge, an address in its subnet,
# lo up, no default route (recorded only once created, so cleanup removes
# exactly what this script made)
ip netns add "$AGENT_NS"
CREATED_NS=$AGENT_NS
ip link add "$AGENT_VETH" type veth peer name eth0 netns "$AGENT_NS"
CREATED_LINK=$AGENT_VETH
ip link set "$AGENT_VETH" master "$BRIDGE"
ip link set "$AGENT_VETH" up
ip -n "$AGENT_NS" link set lo up
ip -n "$AGENT_NS" addr add "$AGENT_IP/24" dev eth0
ip -n "$AGENT_NS" link set eth0 up
in_ns() { ip netns exec "$AGENT_NS" "$@"; }

# --------------------------------------------------------------- measures --

# write_agent_kc FILE SERVER DATA: the agent's node credentials, given server
write_agent_kc() {
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: $2
    certificate-authority: $3/agent/server-ca.crt
users:
- name: node
  user:
    client-certificate: $3/agent/client-kubelet.crt
    client-key: $3/agent/client-kubelet.key
contexts:
- name: c
  context: {cluster: c, user: node}
current-context: c
EOF
}

# probe KUBECONFIG NODE RESULT: one `get node` from the agent namespace;
# appends "<start> <end> ok|fail" (epoch seconds) to RESULT
probe() {
    local t0=$EPOCHREALTIME ok=fail
    if in_ns "$KUBECTL" --kubeconfig "$1" --cache-dir "$1.cache" --request-timeout="$PROBE_TIMEOUT" \
        get node "$2" --no-headers >/dev/null 2>&1; then
        ok=ok
    fi
    echo "$t0 $EPOCHREALTIME $ok" >>"$3"
}

# probe_latency KUBECONFIG NODE: median seconds of 5 sequential probes (healthy cluster)
probe_latency() {
    local i res="$WORK/lat.$$"
    probe "$1" "$2" "$res"                       # warm kubectl's discovery cache
    : >"$res"
    for i in 1 2 3 4 5; do probe "$1" "$2" "$res"; done
    grep -q ' fail$' "$res" && die "probe through $(awk '/server:/ { print $2 }' "$1") failed before any fault"
    awk '{ printf "%.3f\n", $2 - $1 }' "$res" | sort -g | sed -n 3p
}

# probe_window KUBECONFIG NODE START: start a probe every RESUME_EVERY s (not
# waiting for the previous one) until one has succeeded and WINDOW s have
# passed since START. Sets (globals: PROBE_PIDS must stay visible to cleanup)
#   FIRST_OK   end of the first successful probe - START (the resume time)
#   FAILED     how many probes failed, of PROBES started
#   LAST_FAIL  start of the last failing probe - START (0 when none failed)
probe_window() {
    local kcfg=$1 node=$2 start=$3 res="$WORK/resume.$$" p keep
    : >"$res"
    while ! grep -q ' ok$' "$res" || ! past "$start" "$WINDOW"; do
        keep=()
        for p in "${PROBE_PIDS[@]}"; do alive "$p" && keep+=("$p"); done
        PROBE_PIDS=("${keep[@]}")
        if (( ${#PROBE_PIDS[@]} < MAX_PROBES )); then
            probe "$kcfg" "$node" "$res" &
            PROBE_PIDS+=("$!")
        fi
        past "$start" "$DEADLINE" && die "no request through $(awk '/server:/ { print $2 }' "$kcfg") succeeded within ${DEADLINE}s"
        nap "$RESUME_EVERY"
    done
    wait_probes
    read -r FIRST_OK FAILED PROBES LAST_FAIL < <(awk -v s="$start" '
        $3 == "ok" && (first == "" || $2 < first) { first = $2 }
        $3 == "fail" { failed++; if ($1 > last) last = $1 }
        END { printf "%.3f %d %d %.3f\n", first - s, failed, NR, (failed ? last - s : 0) }' "$res")
}

# agent_backend: the server IP new connections through the agent's apiserver
# balancer go to: hold a TCP connection to 127.0.0.1:6443 open in the agent
# namespace and see which upstream connection appeared (two agreeing looks;
# the agent's own long-lived connections exist before and are ignored)
agent_backend() {
    local i a b="" ips
    ips=$(for i in $(seq $NSERVERS); do server_ip "$i"; done)
    for (( i = 0; i < 20; i++ )); do
        # shellcheck disable=SC2016
        a=$(in_ns bash -c '
                q() { ss -Htn state established "( dport = :6443 )" | awk "{ print \$(NF-1), \$NF }" | sort; }
                before=$(q); exec 3<>/dev/tcp/127.0.0.1/6443; sleep 0.3; after=$(q); exec 3>&-
                comm -13 <(echo "$before") <(echo "$after")' 2>/dev/null |
            awk '{ split($2, d, ":"); print d[1] }' | grep -Fxf <(echo "$ips") | sort -u)
        [[ $(wc -w <<<"$a") == 1 ]] || a=""
        if [[ -n "$a" && "$a" == "$b" ]]; then echo "$a"; return 0; fi
        b=$a
        nap 0.2
    done
    die "cannot tell which server the agent's apiserver balancer uses"
}

# etcd_prepare IP: make the member on IP not the leader (LEADER=away) or the leader (on)
etcd_prepare() {
    local ip=$1 st leader to_ip to_id i
    for (( i = 0; i < 5; i++ )); do
        st=$(etcd_status)
        leader=$(awk '$3 == "true" { print $1 }' <<<"$st")
        if [[ $LEADER == away && -n "$leader" && "$leader" != "$ip" ]]; then return 0; fi
        if [[ $LEADER == on && "$leader" == "$ip" ]]; then return 0; fi
        if [[ -n "$leader" ]]; then
            if [[ $LEADER == away ]]; then
                to_ip=$(awk -v x="$ip" '$1 != x && $4 == "false" { print $1; exit }' <<<"$st")
            else
                to_ip=$ip
            fi
            to_id=$(awk -v x="$to_ip" '$1 == x { print $2 }' <<<"$st")
            log "    moving etcd leadership $leader -> $to_ip"
            etcdctl_ --endpoints "https://$leader:2379" move-leader "$to_id" >/dev/null 2>&1 || true
        fi
        nap 1
    done
    die "could not arrange etcd leadership ($LEADER) for $ip"
}

# server_back N LOG: server-N answers /readyz, is Ready, etcd votes with a
# leader, and both HAProxy and the agent's balancer count it healthy
server_back() {
    cluster_ready || return 1
    [[ $(agent_lb_state "$2" "$(server_ip "$1")") == healthy ]]
}

# fault_and_resume N KUBECONFIG NODE AGENTLOG: sets RESUME (seconds), the
# globals of probe_window and FAULT_LEADER (was the faulted server the etcd leader: yes/no). Not to be
# called in $(...): the pids it records must reach cleanup.
fault_and_resume() {
    local n=$1 kcfg=$2 node=$3 alog=$4 ip pid t0 st cmd=()
    ip=$(server_ip "$n")
    etcd_prepare "$ip"
    nap 1
    wait_for "steady cluster before the fault" server_back "$n" "$alog"
    probe_latency "$kcfg" "$node" >/dev/null        # the path works, or fail loudly
    [[ $(etcd_leader_ip) == "$ip" ]] && FAULT_LEADER=yes || FAULT_LEADER=no
    pid=$(server_pid "$n") || die "server-$n is not running"
    st=$(starttime "$pid")
    mapfile -d '' -t cmd <"/proc/$pid/cmdline"
    [[ ${#cmd[@]} -gt 1 && "${cmd[0]##*/}" == rke2 ]] || die "pid $pid is not server-$n's rke2 (${cmd[*]})"
    if [[ $FAULT == kill ]]; then
        t0=$(now)
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null || true               # reaps it if we restarted it earlier
        while same_proc "$pid" "$st"; do nap 0.01; done
    else
        t0=$(now)
        kill -STOP "$pid"
        STOPPED=$pid
    fi
    probe_window "$kcfg" "$node" "$t0"
    RESUME=$FIRST_OK
    # bring it back, then wait until everything sees it again
    if [[ $FAULT == kill ]]; then
        echo "=== bench/agent.sh restart: $(date -u +%FT%TZ)" >>"$HA/server-$n/rke2.log"
        setsid ip netns exec "$PREFIX-server-$n" "${cmd[@]}" </dev/null >>"$HA/server-$n/rke2.log" 2>&1 &
        pid=$!
        for (( st = 0; st < 50; st++ )); do [[ -n $(starttime "$pid") ]] && break; nap 0.02; done
        st=$(starttime "$pid")
        [[ -n $st ]] || die "server-$n exited at once after its restart"
        RESTARTED+=("$pid $st")
        echo "server-$n $pid $st" >>"$HA/pids"      # so `ha-cluster.sh down` stops it
    else
        kill -CONT "$pid"
        STOPPED=""
    fi
    wait_for "server-$n back (Ready, etcd, HAProxy and agent balancer healthy)" server_back "$n" "$alog"
    nap 2      # one more check round for both balancers
    wait_for "server-$n steady" server_back "$n" "$alog"
}

# ------------------------------------------------------------------ rounds --
declare -a R_FAIL_A R_FAIL_H R_LAST_A R_LAST_H R_JOIN R_LAT_A R_LAT_H R_RES_A R_RES_H R_RES_RATIO R_RSS_A R_RSS_S R_RSS_RATIO DETAILS
kc get nodes >/dev/null 2>&1 || true       # warm kubectl's discovery cache

for (( round = 1; round <= ROUNDS; round++ )); do
    dir="$WORK/agent-$round"
    node="bench-agent-$round"
    data="$dir/data"
    alog="$dir/agent.log"
    mkdir -p "$dir"
    printf 'server: https://%s:9345\ntoken: %s\n' "$LB_IP" "$TOKEN" >"$dir/config.yaml"

    # -- join to Ready ------------------------------------------------------
    log "round $round/$ROUNDS: rke2 agent $node in $AGENT_NS ($AGENT_IP), fresh data dir"
    start=$(now)
    setsid ip netns exec "$AGENT_NS" "$RKE2" agent --config "$dir/config.yaml" --data-dir "$data" \
        --node-name "$node" --node-ip "$AGENT_IP" </dev/null >>"$alog" 2>&1 &
    apid=$!
    AGENT_PIDS+=("$apid")
    until node_ready "$node"; do
        alive "$apid" || die "rke2 agent (pid $apid) exited before its node was Ready"
        past "$start" "$DEADLINE" && die "node $node not Ready within ${DEADLINE}s"
        nap "$JOIN_POLL"
    done
    ready_t=$(now)
    join=$(sub "$ready_t" "$start")
    [[ "$(cat "/proc/$apid/comm" 2>/dev/null)" == rke2 ]] || die "pid $apid is not the agent"
    log "  join to Ready ${join}s"

    # -- RSS, 15 s after Ready ------------------------------------------------
    nap "$(awk -v s="$ready_t" -v n="$(now)" -v w="$IDLE_AT" 'BEGIN { d = s + w - n; printf "%.3f", (d > 0 ? d : 0) }')"
    alive "$apid" || die "rke2 agent exited while idle"
    agent_kb=$(rss_kb "$apid")
    srv_kbs=()
    for i in $(seq $NSERVERS); do
        p=$(server_pid "$i") || die "server-$i is not running"
        srv_kbs+=("$(rss_kb "$p")")
    done
    srv_kb=$(printf '%s\n' "${srv_kbs[@]}" | sort -g | sed -n "$(( (NSERVERS + 1) / 2 ))p")
    log "  RSS: agent $(mib "$agent_kb") MiB; servers (rke2 only) $(for k in "${srv_kbs[@]}"; do printf '%s ' "$(mib "$k")"; done)MiB"

    # -- API resume: through the agent's balancer, then through HAProxy -------
    kc_agent="$dir/kc-agent-lb.yaml"
    kc_haproxy="$dir/kc-haproxy.yaml"
    write_agent_kc "$kc_agent" "https://127.0.0.1:6443" "$data"
    write_agent_kc "$kc_haproxy" "https://$LB_IP:6443" "$data"
    lat_a=$(probe_latency "$kc_agent" "$node")
    lat_h=$(probe_latency "$kc_haproxy" "$node")
    backend=$(agent_backend)
    n=$(( ${backend##*.} - 10 ))
    (( n >= 1 && n <= NSERVERS )) || die "the agent balancer uses $backend, not a server"
    log "  agent balancer uses server-$n ($backend); probe latency: agent LB ${lat_a}s, HAProxy ${lat_h}s"

    fault_and_resume "$n" "$kc_agent" "$node" "$alog"
    res_a=$RESUME lead_a=$FAULT_LEADER fail_a="$FAILED/$PROBES" last_a=$LAST_FAIL
    log "  $FAULT server-$n (etcd leader: $FAULT_LEADER): API through the agent balancer back after ${res_a}s; failed probes $fail_a, last failure started at ${last_a}s"
    fault_and_resume "$n" "$kc_haproxy" "$node" "$alog"
    res_h=$RESUME lead_h=$FAULT_LEADER fail_h="$FAILED/$PROBES" last_h=$LAST_FAIL
    log "  $FAULT server-$n (etcd leader: $FAULT_LEADER): API through HAProxy back after ${res_h}s; failed probes $fail_h, last failure started at ${last_h}s"

    stop_pid "$apid"
    kc delete node "$node" --wait=false >/dev/null 2>&1 || true

    ratio_res=$(awk -v a="$res_a" -v b="$res_h" 'BEGIN { printf "%.2f", a / b }')
    ratio_rss=$(awk -v a="$agent_kb" -v b="$srv_kb" 'BEGIN { printf "%.2f", a / b }')
    R_JOIN+=("$join"); R_LAT_A+=("$lat_a"); R_LAT_H+=("$lat_h")
    R_RES_A+=("$res_a"); R_RES_H+=("$res_h"); R_RES_RATIO+=("$ratio_res")
    R_FAIL_A+=("${fail_a%/*}"); R_FAIL_H+=("${fail_h%/*}"); R_LAST_A+=("$last_a"); R_LAST_H+=("$last_h")
    R_RSS_A+=("$(mib "$agent_kb")"); R_RSS_S+=("$(mib "$srv_kb")"); R_RSS_RATIO+=("$ratio_rss")
    DETAILS+=("$round|$join|server-$n|$lead_a / $lead_h|$res_a|$res_h|$fail_a|$fail_h|$last_a|$last_h|$(mib "$agent_kb")|$(mib "$srv_kb")")
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
fault_word=$([[ $FAULT == kill ]] && echo "SIGKILL" || echo "SIGSTOP")
row "join to Ready (s)"                        "%.2f" "-"                      "${R_JOIN[@]}"
row "probe latency, agent balancer (s)"        "%.3f" "context (kubectl run)"  "${R_LAT_A[@]}"
row "probe latency, HAProxy (s)"               "%.3f" "context (kubectl run)"  "${R_LAT_H[@]}"
row "API resume after $fault_word, agent balancer (s)" "%.2f" "< 2 s (original: ~1 min reported)" "${R_RES_A[@]}"
row "API resume after $fault_word, HAProxy (s)" "%.2f" "reference (check 1 s, fall 2)" "${R_RES_H[@]}"
row "ratio resume agent / HAProxy"             "%.2f" "-"                      "${R_RES_RATIO[@]}"
row "failed probes in ${WINDOW} s after, agent balancer" "%g" "-"       "${R_FAIL_A[@]}"
row "failed probes in ${WINDOW} s after, HAProxy" "%g"  "reference"              "${R_FAIL_H[@]}"
row "last failing probe started, agent balancer (s)" "%.2f" "-"                 "${R_LAST_A[@]}"
row "last failing probe started, HAProxy (s)"  "%.2f" "reference"              "${R_LAST_H[@]}"
row "agent RSS 15 s after Ready (MB)"          "%.1f" "< 32 MB (k3s agent 275 MB, RKE2 agent 3.6 GB)" "${R_RSS_A[@]}"
row "server RSS, rke2 excl. etcd (MB)"         "%.1f" "reference"              "${R_RSS_S[@]}"
row "ratio RSS agent / server"                 "%.2f" "-"                      "${R_RSS_RATIO[@]}"

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    commit="$commit (work tree had uncommitted changes)"
fi
date_s=$(date -u '+%Y-%m-%d %H:%M UTC')
cpus=$(nproc)
kubectl_ver=$("$KUBECTL" version --client 2>/dev/null | awk '/Client Version/ { print $3 }')
haproxy_ver=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')
etcd_ver=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
lead_word=$([[ $LEADER == away ]] && echo "not the etcd leader (leadership moved away first)" || echo "the etcd leader (leadership moved onto it first)")

echo
printf 'rke2 agent vs HA cluster, %d round(s), %s, nproc %s, commit %s\n' "$ROUNDS" "$date_s" "$cpus" "$commit"
printf 'fault: %s of the server the agent balancer uses, which was %s\n' "$fault_word" "$lead_word"
printf '%-46s %8s %8s %8s   %s\n' "metric" "median" "min" "max" "target"
for r in "${ROWS[@]}"; do
    IFS='|' read -r l m lo hi t <<<"$r"
    printf '%-46s %8s %8s %8s   %s\n' "$l" "$m" "$lo" "$hi" "$t"
done
echo "MB = MiB (VmRSS kB / 1024). Server RSS: median of the 3 servers' rke2 processes at the agent's RSS moment."

mkdir -p "$(dirname "$OUT")"
{
    echo "# rke2 agent benchmark (HA cluster: HAProxy + 3 servers)"
    echo
    echo "- date: $date_s"
    echo "- machine: nproc $cpus, $(uname -sr)"
    echo "- commit: $commit"
    echo "- binary: \`$RKE2\`"
    echo "- rounds: $ROUNDS (median, min, max over rounds)"
    echo "- fault: $fault_word of the server the agent's apiserver balancer uses; that server was $lead_word"
    echo "- HAProxy $haproxy_ver, etcd $etcd_ver, kubectl $kubectl_ver"
    echo "- command: \`bench/agent.sh${ARGS:+ $ARGS}\`"
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
    echo "| round | join (s) | faulted | etcd leader? (agent / HAProxy run) | resume agent LB (s) | resume HAProxy (s) | failed/probes agent LB | failed/probes HAProxy | last failure agent LB (s) | last failure HAProxy (s) | agent RSS (MB) | server RSS (MB) |"
    echo "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for d in "${DETAILS[@]}"; do
        echo "| ${d//|/ | } |"
    done
    echo
    echo "Join: from spawning \`rke2 agent\` (own network namespace on the HA bridge, fresh"
    echo "data dir) until \`kubectl get node\` through HAProxy shows it \`Ready\` (polled"
    echo "every 50 ms, one kubectl run per poll). Resume: from the signal until the first"
    echo "successful \`kubectl get node <agent>\` with the agent's node credentials, run"
    echo "inside the agent namespace against \`https://127.0.0.1:6443\` (the agent's"
    echo "balancer) or \`https://$LB_IP:6443\` (HAProxy); a probe starts every 100 ms"
    echo "without waiting for the previous one (each with \`--request-timeout=$PROBE_TIMEOUT\`), so"
    echo "the figure includes one kubectl run (see the probe latency rows). Probes go on"
    echo "for $WINDOW s after the fault: \"failed probes\" counts those that failed (of about"
    echo "$(awk -v w="$WINDOW" -v e="$RESUME_EVERY" 'BEGIN { print int(w / e) }') started), \"last failing probe\" is when the last of them started"
    echo "(0: none failed). After each fault the server is $([[ $FAULT == kill ]] && echo "restarted (its recorded command line)" || echo "continued (SIGCONT)")"
    echo "and the next step waits until it is Ready, etcd has 3 voters and a"
    echo "leader, and HAProxy and the agent's balancer count it healthy again. RSS is"
    echo "VmRSS; MB = MiB. Server RSS: median of the three servers' \`rke2\` processes"
    echo "(etcd is a separate process, not included)."
} >"$OUT"
log "wrote $OUT"
