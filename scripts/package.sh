#!/usr/bin/env bash
# Builds the release tarball dist/install.sh installs, as RKE2 ships it:
# rke2.linux-<arch>.tar.gz (bin/rke2, bin/rke2-killall.sh,
# bin/rke2-uninstall.sh, lib/systemd/system/rke2-{server,agent}.{service,env},
# share/rke2/LICENSE.txt) and sha256sum-<arch>.txt, plus a copy of install.sh.
#
#   bash scripts/package.sh [BINARY] [OUTDIR]
#
# BINARY defaults to target/release/rke2, OUTDIR to dist/artifacts.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-$root/target/release/rke2}
out=${2:-$root/dist/artifacts}
[[ -x $binary ]] || { echo "package.sh: $binary is not an executable (cargo build --release -p rke2)" >&2; exit 1; }
case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) echo "package.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$binary" "$stage/bin/rke2"
install -m 0755 "$root/dist/bin/rke2-killall.sh" "$root/dist/bin/rke2-uninstall.sh" "$stage/bin/"
install -d "$stage/lib/systemd/system"
install -m 0644 "$root"/dist/lib/systemd/system/rke2-* "$stage/lib/systemd/system/"
parts=(bin lib)
if [[ -f $root/LICENSE ]]; then
    install -D -m 0644 "$root/LICENSE" "$stage/share/rke2/LICENSE.txt"
    parts+=(share)
fi
mkdir -p "$out"
# Stable owner, order and times: the same inputs give the same tarball.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$stage" -czf "$out/rke2.linux-$arch.tar.gz" "${parts[@]}"
(cd "$out" && sha256sum "rke2.linux-$arch.tar.gz" > "sha256sum-$arch.txt")
install -m 0755 "$root/dist/install.sh" "$out/install.sh"
echo "package.sh: $out/rke2.linux-$arch.tar.gz ($(du -h "$out/rke2.linux-$arch.tar.gz" | cut -f1))"
