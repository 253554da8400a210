#!/bin/sh
# Stops rke2 and everything it started on this node: the rke2 units, then
# every container and shim of the node, their mounts, the pod network
# (bridge, routes, egress rule) and the service proxy's nftables table.
# Containers otherwise outlive `systemctl stop` (KillMode=process).
#
#   RKE2_DATA_DIR   data dir of the node (default /var/lib/rancher/rke2)
set -eu

[ "$(id -u)" -eq 0 ] || { echo "rke2-killall.sh: must run as root" >&2; exit 1; }

PREFIX=/usr/local
RKE2_DATA_DIR=${RKE2_DATA_DIR:-/var/lib/rancher/rke2}

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in rke2-server.service rke2-agent.service; do
        if systemctl is-active --quiet "$unit"; then
            systemctl stop "$unit"
        fi
    done
fi

if [ -x "$PREFIX/bin/rke2" ]; then
    "$PREFIX/bin/rke2" killall --data-dir "$RKE2_DATA_DIR"
else
    echo "rke2-killall.sh: $PREFIX/bin/rke2 is missing; nothing stopped" >&2
    exit 1
fi
