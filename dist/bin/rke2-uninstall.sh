#!/bin/sh
# Removes rke2 from this machine: stops it and everything it started
# (rke2-killall.sh), then deletes what the installer and rke2 wrote: the
# binary and scripts, the units and their env files, the data dir, the
# config dir and the node password.
#
#   RKE2_DATA_DIR    data dir of the node (default /var/lib/rancher/rke2)
#   RKE2_CONFIG_DIR  config dir (default /etc/rancher/rke2)
set -eu

[ "$(id -u)" -eq 0 ] || { echo "rke2-uninstall.sh: must run as root" >&2; exit 1; }

PREFIX=/usr/local
DEFAULT_DATA_DIR=/var/lib/rancher/rke2
RKE2_DATA_DIR=${RKE2_DATA_DIR:-$DEFAULT_DATA_DIR}
RKE2_CONFIG_DIR=${RKE2_CONFIG_DIR:-/etc/rancher/rke2}
export RKE2_DATA_DIR

"$PREFIX/bin/rke2-killall.sh"

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in rke2-server.service rke2-agent.service; do
        systemctl disable "$unit" >/dev/null 2>&1 || true
        systemctl reset-failed "$unit" >/dev/null 2>&1 || true
    done
fi

# Refuse to remove a data dir that still has something mounted under it.
if grep -q " $RKE2_DATA_DIR/" /proc/self/mountinfo; then
    echo "rke2-uninstall.sh: mounts remain under $RKE2_DATA_DIR; not removing it" >&2
    grep " $RKE2_DATA_DIR/" /proc/self/mountinfo >&2
    exit 1
fi

rm -f "$PREFIX/lib/systemd/system/rke2-server.service" \
      "$PREFIX/lib/systemd/system/rke2-agent.service" \
      "$PREFIX/lib/systemd/system/rke2-server.env" \
      "$PREFIX/lib/systemd/system/rke2-agent.env" \
      /etc/systemd/system/multi-user.target.wants/rke2-server.service \
      /etc/systemd/system/multi-user.target.wants/rke2-agent.service
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi
rm -rf "$RKE2_DATA_DIR" "$RKE2_CONFIG_DIR"
# The node password lives in /etc/rancher/node only for the default data dir.
if [ "$RKE2_DATA_DIR" = "$DEFAULT_DATA_DIR" ]; then
    rm -rf /etc/rancher/node
fi
rmdir /etc/rancher 2>/dev/null || true
rm -f "$PREFIX/share/rke2/LICENSE.txt"
rmdir "$PREFIX/share/rke2" 2>/dev/null || true
rm -f "$PREFIX/bin/rke2" "$PREFIX/bin/rke2-killall.sh"
echo "rke2-uninstall.sh: rke2 removed"
# Last, as RKE2's: this script removes itself.
rm -f "$PREFIX/bin/rke2-uninstall.sh"
