#!/usr/bin/env bash
# Builds the previous release of rke2 (the commit in dist/previous-release)
# as <target dir>/previous-release/rke2, for the upgrade test
# (crates/rke2/tests/upgrade.rs). scripts/test.sh runs it before the tests.
#
# The old sources are taken from this clone's history (git archive) and
# built in the same target directory, so the dependencies built for the
# current sources are reused; the old binary is renamed `rke2-previous`
# in its copy of the sources so that it never replaces target/debug/rke2.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(grep -v '^#' dist/previous-release | tr -d '[:space:]')
target=${CARGO_TARGET_DIR:-$PWD/target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
out="$target/previous-release"
if [ -x "$out/rke2" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$commit" ]; then
  echo "previous release ${commit:0:12} already built: $out/rke2"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null \
  && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch --quiet --unshallow || true
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "build-previous-release: commit $commit (dist/previous-release) is not in this clone's history; clone without --depth" >&2
  exit 1
fi
src="$target/previous-release-src"
rm -rf "$src" "$out"
mkdir -p "$src" "$out"
git archive "$commit" | tar -x -C "$src"
sed -i '/^\[\[bin\]\]/,/^path/ s/^name = "rke2"$/name = "rke2-previous"/' "$src/crates/rke2/Cargo.toml"
grep -q '^name = "rke2-previous"' "$src/crates/rke2/Cargo.toml" || {
  echo "build-previous-release: could not rename the binary in $src/crates/rke2/Cargo.toml" >&2
  exit 1
}
echo "== building the previous release ${commit:0:12}"
(cd "$src" && CARGO_TARGET_DIR="$target" cargo build --locked -q -p rke2 --bin rke2-previous)
cp "$target/debug/rke2-previous" "$out/rke2"
echo "$commit" > "$out/commit"
rm -rf "$src"
echo "previous release ${commit:0:12}: $out/rke2"
