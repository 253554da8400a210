#!/usr/bin/env bash
# The HA layout of the docs, on this one machine, for a person to try:
# an LB network namespace running HAProxy (TCP, ports 9345 and 6443) and
# three server namespaces each running `rke2 server`, all on a private
# bridge 10.231.<HA_SUBNET>.0/24 with no default route (nothing leaves the
# machine).
#
#   bash scripts/ha-cluster.sh up       # build if needed, start LB + servers
#   bash scripts/ha-cluster.sh status   # what runs, backend health
#   bash scripts/ha-cluster.sh down     # stop everything, remove the network
#   bash scripts/ha-cluster.sh purge    # down, then delete .local/ha
#
# Layout (default HA_SUBNET=200):
#   bridge rkeha-br   10.231.200.1    (root namespace: you reach the hosts)
#   rkeha-lb          10.231.200.10   HAProxy :9345 :6443
#   rkeha-server-N    10.231.200.1N   rke2 server, node name server-N
# Per server .local/ha/server-N/: config.yaml, data/, rke2.log, rke2.yaml.
# .local/ha/rke2.yaml is server-1's admin kubeconfig pointed at the LB.
# .local/ha/pids holds "name pid starttime" per process started; .local/ha/net
# holds the namespaces and links created (written before each is created),
# so `down` stops and removes exactly those.
#
# Environment:
#   HA_SERVERS   number of servers (default 3)
#   HA_SUBNET    third octet of the subnet (default 200)
#   RKE2_BIN     the rke2 binary (default $CARGO_TARGET_DIR or ./target,
#                release/rke2; built with `cargo build --release -p rke2`
#                when missing)
#   KUBECTL      kubectl to use (default: the newest
#                /usr/local/lib/rke2-test/kubectl/kubectl-1.*, else kubectl on PATH)
#   HA_READY_TIMEOUT  seconds to wait for server-1 through the LB (default 180)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HA=$ROOT/.local/ha
PIDS=$HA/pids
NET=$HA/net
SERVERS=${HA_SERVERS:-3}
SUBNET=${HA_SUBNET:-200}
NETPFX=10.231.$SUBNET
GW=$NETPFX.1
LB_IP=$NETPFX.10
PREFIX=rkeha
BRIDGE=${PREFIX}-br
TOKEN=my-shared-secret
READY_TIMEOUT=${HA_READY_TIMEOUT:-180}

die() { echo "ha-cluster: $*" >&2; exit 1; }
log() { echo "ha-cluster: $*"; }

server_ip() { echo "$NETPFX.$((10 + $1))"; }

rke2_bin() {
    if [[ -n ${RKE2_BIN:-} ]]; then echo "$RKE2_BIN"; return; fi
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/rke2"
}

kubectl_bin() {
    if [[ -n ${KUBECTL:-} ]]; then echo "$KUBECTL"; return; fi
    local best="" m bestm=-1 f
    for f in /usr/local/lib/rke2-test/kubectl/kubectl-1.*; do
        [[ -x $f ]] || continue
        m=${f##*/kubectl-1.}
        [[ $m =~ ^[0-9]+$ ]] || continue
        if ((m > bestm)); then bestm=$m; best=$f; fi
    done
    if [[ -n $best ]]; then echo "$best"; return; fi
    command -v kubectl 2>/dev/null || echo kubectl
}

# Start time of a pid (field 22 of /proc/PID/stat), empty when gone.
starttime() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# True when pid $1 still is the process that started at $2 (and not a zombie).
same_proc() {
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(awk '{sub(/.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $st != Z && $st != X ]] || return 1
    [[ $(starttime "$1") == "$2" ]]
}

record_net() { mkdir -p "$HA"; echo "$1 $2" >>"$NET"; }

# Starts "$@" in namespace $2 in the background, detached from this shell;
# records "$1 pid starttime" in the pids file. Output goes to $3.
start_in() {
    local name=$1 ns=$2 out=$3
    shift 3
    echo "=== ha-cluster.sh up: $(date -u +%FT%TZ) $*" >>"$out"
    setsid ip netns exec "$ns" "$@" </dev/null >>"$out" 2>&1 &
    local pid=$!
    local st=""
    for _ in $(seq 50); do
        st=$(starttime "$pid")
        [[ -n $st ]] && break
        sleep 0.02
    done
    [[ -n $st ]] || die "$name exited at once; see $out"
    echo "$name $pid $st" >>"$PIDS"
    log "started $name (pid $pid) in $ns"
}

make_host() {
    local ns=$1 veth=$2 ip=$3
    record_net netns "$ns"
    ip netns add "$ns"
    record_net link "$veth"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
}

haproxy_cfg() {
    cat <<EOF
global
    maxconn 4096
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 3s
EOF
    local port name path i
    for spec in "9345 rke2-supervisor /ping" "6443 rke2-apiserver /readyz"; do
        read -r port name path <<<"$spec"
        printf '\nfrontend %s\n    bind *:%s\n    default_backend %s\n' "$name" "$port" "$name"
        printf '\nbackend %s\n    balance roundrobin\n    option httpchk GET %s\n' "$name" "$path"
        for i in $(seq "$SERVERS"); do
            printf '    server server-%s %s:%s check check-ssl verify none inter 1s fall 2 rise 1\n' \
                "$i" "$(server_ip "$i")" "$port"
        done
    done
}

server_config() {
    local i=$1
    if ((i > 1)); then echo "server: https://$LB_IP:9345"; fi
    cat <<EOF
token: $TOKEN
tls-san:
  - $LB_IP
EOF
}

# Writes .local/ha/rke2.yaml: server-1's kubeconfig, server -> the LB.
write_lb_kubeconfig() {
    local src=$HA/server-1/rke2.yaml
    [[ -s $src ]] || return 1
    sed -E "s#^( *server: *)\"?https://[^\" ]*\"?#\1\"https://$LB_IP:6443\"#" "$src" >"$HA/rke2.yaml.tmp"
    grep -q "https://$LB_IP:6443" "$HA/rke2.yaml.tmp" || return 1
    chmod 600 "$HA/rke2.yaml.tmp"
    mv "$HA/rke2.yaml.tmp" "$HA/rke2.yaml"
}

running() { [[ -s $PIDS || -s $NET ]]; }

cmd_up() {
    [[ $(id -u) == 0 ]] || die "needs root (network namespaces, veths, a bridge)"
    command -v ip >/dev/null || die "needs iproute2 (ip)"
    command -v haproxy >/dev/null || die "needs haproxy (Debian package haproxy)"
    [[ $SERVERS =~ ^[1-9]$ ]] || die "HA_SERVERS must be 1..9"
    if running; then
        die "already up (see $PIDS and $NET); run \`bash scripts/ha-cluster.sh down\` first"
    fi
    if ip -o -4 addr show | grep -q "inet $NETPFX\."; then
        die "$NETPFX.0/24 is already in use on this machine; pick another with HA_SUBNET=<1..249>"
    fi
    local bin
    bin=$(rke2_bin)
    if [[ ! -x $bin ]]; then
        if [[ -n ${RKE2_BIN:-} ]]; then die "RKE2_BIN=$RKE2_BIN is not executable"; fi
        log "building $bin (cargo build --release -p rke2)"
        (cd "$ROOT" && cargo build --release -p rke2)
    fi
    [[ -x $bin ]] || die "no rke2 binary at $bin"

    mkdir -p "$HA"
    : >"$PIDS"
    : >"$NET"
    # Undo everything on any failure from here on.
    trap 'echo "ha-cluster: up failed; tearing down" >&2; cmd_down' ERR
    set -E

    record_net link "$BRIDGE"
    ip link add "$BRIDGE" type bridge
    ip addr add "$GW/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up

    make_host "$PREFIX-lb" "$PREFIX-v-lb" "$LB_IP"
    local i
    for i in $(seq "$SERVERS"); do
        make_host "$PREFIX-server-$i" "$PREFIX-v-s$i" "$(server_ip "$i")"
    done

    mkdir -p "$HA/lb"
    haproxy_cfg >"$HA/lb/haproxy.cfg"
    haproxy -c -f "$HA/lb/haproxy.cfg" >/dev/null
    start_in lb "$PREFIX-lb" "$HA/lb/haproxy.log" haproxy -db -f "$HA/lb/haproxy.cfg"

    # A fresh cluster: server-1 first, the others once it answers through
    # the LB. Existing data (a restart after `down`): all at once, since
    # etcd needs a quorum of the old members before anything is ready.
    local restart=0
    if [[ -d $HA/server-1/data/server ]]; then
        restart=1
        log "existing data in $HA: restarting all servers at once (\`purge\` first for a fresh cluster)"
    fi
    for i in $(seq "$SERVERS"); do
        local d=$HA/server-$i ip
        ip=$(server_ip "$i")
        mkdir -p "$d"
        server_config "$i" >"$d/config.yaml"
        start_in "server-$i" "$PREFIX-server-$i" "$d/rke2.log" \
            "$bin" server --config "$d/config.yaml" --data-dir "$d/data" \
            --node-ip "$ip" --bind-address "$ip" --node-name "server-$i" \
            --write-kubeconfig "$d/rke2.yaml"
        if ((i == (restart ? SERVERS : 1))); then
            d=$HA/server-1
            # Later servers register through the LB: wait for server-1.
            log "waiting for the API to answer /readyz through the LB ($LB_IP:6443)"
            local kc
            kc=$(kubectl_bin)
            local t0=$SECONDS
            until write_lb_kubeconfig &&
                "$kc" --kubeconfig "$HA/rke2.yaml" get --raw /readyz >/dev/null 2>&1; do
                if ! pid_alive server-1 && ! ((restart)); then
                    echo "--- tail of $d/rke2.log" >&2
                    tail -n 30 "$d/rke2.log" >&2 || true
                    false # -> ERR trap
                fi
                if ((SECONDS - t0 > READY_TIMEOUT)); then
                    echo "ha-cluster: the API is not ready through the LB after ${READY_TIMEOUT}s" >&2
                    tail -n 30 "$d/rke2.log" >&2 || true
                    false
                fi
                sleep 1
            done
            log "the API is ready through the LB after $((SECONDS - t0))s"
        fi
    done
    trap - ERR
    set +E

    local kc
    kc=$(kubectl_bin)
    cat <<EOF

HA layout is up:
  LB (HAProxy)   $LB_IP:9345 and $LB_IP:6443   log $HA/lb/haproxy.log
$(for i in $(seq "$SERVERS"); do printf '  server-%s       %-15s log %s\n' "$i" "$(server_ip "$i")" "$HA/server-$i/rke2.log"; done)

kubeconfig (through the LB): $HA/rke2.yaml
  $kc --kubeconfig $HA/rke2.yaml get nodes

Servers 2.. join through https://$LB_IP:9345; watch them with
  bash scripts/ha-cluster.sh status
Stop and remove everything with
  bash scripts/ha-cluster.sh down
EOF
}

pid_alive() {
    local name=$1 n pid st
    while read -r n pid st; do
        [[ $n == "$name" ]] && same_proc "$pid" "$st" && return 0
    done <"$PIDS"
    return 1
}

cmd_status() {
    if ! running; then
        echo "not up"
        return 0
    fi
    local n pid st
    echo "processes:"
    while read -r n pid st; do
        if same_proc "$pid" "$st"; then
            printf '  %-10s pid %-8s running\n' "$n" "$pid"
        else
            printf '  %-10s pid %-8s gone\n' "$n" "$pid"
        fi
    done <"$PIDS"
    echo "network:"
    local kind name
    while read -r kind name; do
        if [[ $kind == netns ]]; then
            if ip netns list | awk '{print $1}' | grep -qx "$name"; then
                local addr
                addr=$(ip -n "$name" -o -4 addr show dev eth0 2>/dev/null | awk '{print $4}')
                printf '  netns %-16s %s\n' "$name" "${addr:-}"
            else
                printf '  netns %-16s missing\n' "$name"
            fi
        else
            if ip link show "$name" >/dev/null 2>&1; then
                printf '  link  %-16s %s\n' "$name" \
                    "$(ip -o link show "$name" | grep -o 'state [A-Z]*')"
            else
                printf '  link  %-16s missing\n' "$name"
            fi
        fi
    done <"$NET"
    echo "LB backends (health from the HAProxy log):"
    if [[ -f $HA/lb/haproxy.log ]]; then
        grep -E 'Server rke2-[a-z]+/server-[0-9]+ is (UP|DOWN)' "$HA/lb/haproxy.log" |
            sed -E 's#.*Server (rke2-[a-z]+/server-[0-9]+) is (UP|DOWN).*#\1 \2#' |
            awk '{s[$1]=$2} END {for (k in s) printf "  %-28s %s\n", k, s[k]}' | sort
        echo "  (servers never reported DOWN count as UP)"
    fi
    if [[ -s $HA/rke2.yaml ]]; then
        local kc
        kc=$(kubectl_bin)
        echo "nodes (through the LB):"
        "$kc" --kubeconfig "$HA/rke2.yaml" get nodes -o wide 2>&1 | sed 's/^/  /' || true
    fi
}

cmd_down() {
    [[ $(id -u) == 0 ]] || die "needs root"
    local n pid st
    local -a pids=()
    if [[ -f $PIDS ]]; then
        # Servers first (reverse start order), HAProxy last.
        while read -r n pid st; do
            if same_proc "$pid" "$st"; then
                pids=("$pid" "${pids[@]}")
                kill -TERM "$pid" 2>/dev/null || true
                log "stopping $n (pid $pid)"
            fi
        done <"$PIDS"
        local t0=$SECONDS left
        while :; do
            left=0
            while read -r n pid st; do
                same_proc "$pid" "$st" && left=1
            done <"$PIDS"
            ((left)) || break
            if ((SECONDS - t0 > 20)); then
                while read -r n pid st; do
                    if same_proc "$pid" "$st"; then
                        log "killing $n (pid $pid)"
                        kill -KILL "$pid" 2>/dev/null || true
                    fi
                done <"$PIDS"
                break
            fi
            sleep 0.2
        done
    fi
    if [[ -f $NET ]]; then
        local kind name
        # Whatever still runs inside our namespaces (e.g. an etcd whose
        # server was killed): by pid, from `ip netns pids`.
        while read -r kind name; do
            [[ $kind == netns ]] || continue
            ip netns list | awk '{print $1}' | grep -qx "$name" || continue
            for pid in $(ip netns pids "$name" 2>/dev/null); do
                log "killing leftover pid $pid in $name"
                kill -KILL "$pid" 2>/dev/null || true
            done
        done <"$NET"
        sleep 0.2
        while read -r kind name; do
            [[ $kind == netns ]] || continue
            if ip netns list | awk '{print $1}' | grep -qx "$name"; then
                if ip netns del "$name"; then log "deleted netns $name"; fi
            fi
        done <"$NET"
        # Links in reverse order: veths (mostly gone with their namespace), then the bridge.
        tac "$NET" | while read -r kind name; do
            [[ $kind == link ]] || continue
            if ip link show "$name" >/dev/null 2>&1; then
                # (a veth may vanish meanwhile, with its namespace)
                if ip link del "$name" 2>/dev/null; then log "deleted link $name"; fi
            fi
        done
    fi
    rm -f "$PIDS" "$NET"
    log "down (data, configs and logs kept in $HA; \`purge\` removes them)"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
purge)
    cmd_down
    rm -rf "$HA"
    log "removed $HA"
    ;;
*)
    echo "usage: bash scripts/ha-cluster.sh up|status|down|purge" >&2
    exit 2
    ;;
esac
