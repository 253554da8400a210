#!/bin/sh
# Installs rke2 (this project's Rust RKE2) as a systemd service, in the
# style of RKE2's install script, from a release tarball on this machine
# (there is no download: air-gapped is the only way).
#
#   INSTALL_RKE2_ARTIFACT_PATH  directory holding rke2.linux-<arch>.tar.gz and
#                               sha256sum-<arch>.txt (scripts/package.sh makes
#                               them); default: this script's directory
#   INSTALL_RKE2_TYPE           server (default) or agent: the unit to enable
#   INSTALL_RKE2_TAR_PREFIX     where to install (default /usr/local; the
#                               units and scripts are rewritten to match)
#   INSTALL_RKE2_METHOD         tar (the only method here)
#   INSTALL_RKE2_SKIP_RELOAD    when set, no `systemctl daemon-reload`
#
# Then: systemctl enable --now rke2-<type>.service
set -eu

info() { echo "[INFO]  $*"; }
fatal() { echo "[ERROR] $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fatal "You need to be root to perform this install"

DEFAULT_TAR_PREFIX=/usr/local
INSTALL_RKE2_TYPE=${INSTALL_RKE2_TYPE:-server}
INSTALL_RKE2_METHOD=${INSTALL_RKE2_METHOD:-tar}
INSTALL_RKE2_TAR_PREFIX=${INSTALL_RKE2_TAR_PREFIX:-$DEFAULT_TAR_PREFIX}
INSTALL_RKE2_ARTIFACT_PATH=${INSTALL_RKE2_ARTIFACT_PATH:-$(cd "$(dirname "$0")" && pwd)}

case "$INSTALL_RKE2_TYPE" in
    server|agent) ;;
    *) fatal "Invalid INSTALL_RKE2_TYPE \"$INSTALL_RKE2_TYPE\": must be server or agent" ;;
esac
[ "$INSTALL_RKE2_METHOD" = tar ] || \
    fatal "Invalid INSTALL_RKE2_METHOD \"$INSTALL_RKE2_METHOD\": only tar is supported"
case "$(uname -m)" in
    x86_64|amd64) ARCH=amd64 ;;
    aarch64|arm64) ARCH=arm64 ;;
    *) fatal "Unsupported architecture $(uname -m)" ;;
esac
case "$INSTALL_RKE2_TAR_PREFIX" in
    /*) ;;
    *) fatal "INSTALL_RKE2_TAR_PREFIX must be an absolute path, got \"$INSTALL_RKE2_TAR_PREFIX\"" ;;
esac

TARBALL="$INSTALL_RKE2_ARTIFACT_PATH/rke2.linux-$ARCH.tar.gz"
SUMS="$INSTALL_RKE2_ARTIFACT_PATH/sha256sum-$ARCH.txt"
[ -f "$TARBALL" ] || fatal "Tarball $TARBALL not found (INSTALL_RKE2_ARTIFACT_PATH)"
[ -f "$SUMS" ] || fatal "Checksum file $SUMS not found (INSTALL_RKE2_ARTIFACT_PATH)"

info "Verifying the tarball against $SUMS"
EXPECTED=$(awk -v f="rke2.linux-$ARCH.tar.gz" '$2 == f || $2 == "*" f { print $1 }' "$SUMS")
[ -n "$EXPECTED" ] || fatal "No checksum for rke2.linux-$ARCH.tar.gz in $SUMS"
ACTUAL=$(sha256sum "$TARBALL" | awk '{ print $1 }')
[ "$EXPECTED" = "$ACTUAL" ] || \
    fatal "Download sha256 does not match $EXPECTED, got $ACTUAL ($TARBALL)"

TMP_DIR=$(mktemp -d -t rke2-install.XXXXXXXXXX)
trap 'rm -rf "$TMP_DIR"' EXIT
tar -xzf "$TARBALL" -C "$TMP_DIR" || fatal "Cannot unpack $TARBALL"
for f in bin/rke2 bin/rke2-killall.sh bin/rke2-uninstall.sh \
         lib/systemd/system/rke2-server.service lib/systemd/system/rke2-agent.service; do
    [ -f "$TMP_DIR/$f" ] || fatal "$TARBALL has no $f"
done

if [ "$INSTALL_RKE2_TAR_PREFIX" != "$DEFAULT_TAR_PREFIX" ]; then
    info "Updating tarball contents to reflect install path $INSTALL_RKE2_TAR_PREFIX"
    sed -i "s|$DEFAULT_TAR_PREFIX|$INSTALL_RKE2_TAR_PREFIX|g" \
        "$TMP_DIR"/lib/systemd/system/rke2-*.service \
        "$TMP_DIR"/bin/rke2-killall.sh "$TMP_DIR"/bin/rke2-uninstall.sh
fi

info "Installing rke2 to $INSTALL_RKE2_TAR_PREFIX"
mkdir -p "$INSTALL_RKE2_TAR_PREFIX/bin" "$INSTALL_RKE2_TAR_PREFIX/lib/systemd/system"
# Everything goes in under a temporary name and is renamed into place, so a
# running rke2 is never overwritten in place and a failure leaves no half file.
for f in bin/rke2 bin/rke2-killall.sh bin/rke2-uninstall.sh; do
    install -m 0755 "$TMP_DIR/$f" "$INSTALL_RKE2_TAR_PREFIX/$f.new"
done
for f in "$TMP_DIR"/lib/systemd/system/rke2-*; do
    install -m 0644 "$f" "$INSTALL_RKE2_TAR_PREFIX/lib/systemd/system/$(basename "$f").new"
done
if [ -f "$TMP_DIR/share/rke2/LICENSE.txt" ]; then
    mkdir -p "$INSTALL_RKE2_TAR_PREFIX/share/rke2"
    install -m 0644 "$TMP_DIR/share/rke2/LICENSE.txt" "$INSTALL_RKE2_TAR_PREFIX/share/rke2/LICENSE.txt.new"
fi
for f in "$INSTALL_RKE2_TAR_PREFIX"/bin/rke2*.new \
         "$INSTALL_RKE2_TAR_PREFIX"/lib/systemd/system/rke2-*.new \
         "$INSTALL_RKE2_TAR_PREFIX"/share/rke2/*.new; do
    [ -e "$f" ] && mv -f "$f" "${f%.new}"
done

if [ -z "${INSTALL_RKE2_SKIP_RELOAD:-}" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi
info "Installed $("$INSTALL_RKE2_TAR_PREFIX/bin/rke2" --version)"
info "Start it with: systemctl enable --now rke2-$INSTALL_RKE2_TYPE.service"
info "Remove it with: $INSTALL_RKE2_TAR_PREFIX/bin/rke2-uninstall.sh"
