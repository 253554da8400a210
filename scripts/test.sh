#!/usr/bin/env bash
# Installs what the project needs (scripts/install.sh), then builds and
# runs the whole test suite: unit tests, integration tests against real
# etcd, and compatibility tests with real kubectl binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== the previous release, for the upgrade test"
bash scripts/build-previous-release.sh
echo "== cargo test"
cargo test --workspace --no-fail-fast
