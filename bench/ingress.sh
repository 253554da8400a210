#!/usr/bin/env bash
# Ingress proxy benchmark: our proxy (crates/ingress) against Debian's
# nginx configured by hand as a reverse proxy to the same backends, in the
# same run.
#
# Standalone, no cluster: the proxy is the crate's `standalone` example
# (release build), its routing table built from API objects (an Ingress
# with Host bench.test, a Service, an EndpointSlice naming the backends)
# exactly as the controller builds it from its watches; so the figures are
# the data path only (a cluster adds nothing on it: the controller's
# watches never touch a request). The backends are two nginx servers
# answering a small 200 (`return 200`), shared by both proxies. nginx as a
# proxy: one worker, an upstream with `keepalive 64`, HTTP/1.1 to the
# backends, the X-Forwarded-*/X-Real-IP headers ingress-nginx sets. Ours:
# one thread (a current-thread tokio runtime: one event loop, as one nginx
# worker). Both proxies pinned to CPU 1; backends and oha to
# CPU 0 (2-core machine).
#
# Per run, for each proxy in turn: oha for --seconds s with --conns
# keep-alive connections, Host: bench.test: requests/s, p50, p99.
# Prints a table (median over runs; ratios ours/nginx: throughput target
# >= 1.0, p99 target <= 1.2) and writes it as Markdown to
# bench/results/ingress.md.
#
# Usage: bench/ingress.sh [--runs N] [--seconds N] [--conns N] [--no-build]
#                         [--out FILE]
# Needs nginx (Debian's nginx-light) and oha (crates.io), installed here when
# missing; taskset, curl, python3.
# Not part of the test suite.

set -euo pipefail

RUNS=3
SECONDS_=10
CONNS=50
BUILD=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/ingress.md"
ARGS="$*"
IP=127.77.18.1
OURS_PORT=18080
NGINX_PORT=18081
BACKENDS=(18091 18092)

usage() { sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="${2:?}"; shift 2 ;;
        --seconds) SECONDS_="${2:?}"; shift 2 ;;
        --conns) CONNS="${2:?}"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT="${2:?}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ingress.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "ingress.sh: $*" >&2; exit 1; }
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    echo "ingress.sh: installing Debian's nginx-light" >&2
    apt-get install -y -qq --no-install-recommends nginx-light >&2 || die "apt-get install nginx-light failed"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v oha >/dev/null; then
    [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/oha" ]] || {
        echo "ingress.sh: installing oha from crates.io" >&2
        cargo install oha --locked >&2 || die "cargo install oha failed"
    }
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if (( BUILD )); then
    (cd "$ROOT" && cargo build --release -q -p rke2-ingress --example standalone) || die "build failed"
fi
OURS="$CARGO_TARGET_DIR/release/examples/standalone"
[[ -x $OURS ]] || die "$OURS missing (run without --no-build)"

WORK=$(mktemp -d /tmp/ingress-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$WORK"/*.pid; do [[ -f $f ]] && kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The backends: one nginx, two ports, a small 200.
mkdir -p "$WORK/b" "$WORK/p"
cat >"$WORK/backend.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/b; proxy_temp_path $WORK/b; fastcgi_temp_path $WORK/b;
    uwsgi_temp_path $WORK/b; scgi_temp_path $WORK/b;
    keepalive_requests 1000000;
    server { listen $IP:${BACKENDS[0]}; listen $IP:${BACKENDS[1]}; location / { return 200 "hello from the backend\n"; } }
}
EOF
# nginx as the reverse proxy, configured by hand as ingress-nginx would.
cat >"$WORK/proxy.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/p; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/p;
    uwsgi_temp_path $WORK/p; scgi_temp_path $WORK/p;
    keepalive_requests 1000000;
    upstream backends {
        server $IP:${BACKENDS[0]};
        server $IP:${BACKENDS[1]};
        keepalive 64;
    }
    server {
        listen $IP:$NGINX_PORT;
        server_name bench.test;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Port \$server_port;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_connect_timeout 5s;
            proxy_read_timeout 60s;
            client_max_body_size 1m;
            proxy_pass http://backends;
        }
    }
}
EOF
python3 - "$WORK/objects.json" "$IP" "${BACKENDS[@]}" <<'EOF'
import json, sys
out, ip, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
objs = [
    {"kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
     "metadata": {"name": "bench", "namespace": "default"},
     "spec": {"ingressClassName": "nginx", "rules": [{"host": "bench.test", "http": {"paths": [
         {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}},
    {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"ports": [{"port": 80}]}},
]
# One slice per port (endpoints of a slice share its ports).
for i, p in enumerate(ports):
    objs.append({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                 "metadata": {"name": f"web-{i}", "namespace": "default",
                              "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": "IPv4", "ports": [{"name": "", "port": int(p), "protocol": "TCP"}],
                 "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]})
json.dump(objs, open(out, "w"))
EOF

taskset -c 0 "$NGINX" -c "$WORK/backend.conf" -p "$WORK" 2>"$WORK/backend.err" & PIDS+=($!)
taskset -c 1 "$NGINX" -c "$WORK/proxy.conf" -p "$WORK" 2>"$WORK/proxy.err" & PIDS+=($!)
taskset -c 1 "$OURS" "$WORK/objects.json" "$IP:$OURS_PORT" "$IP:18443" 0 2>"$WORK/ours.err" & PIDS+=($!)
OURS_PID=$!

wait_200() {
    local url=$1 i
    for i in $(seq 1 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "$url" || true) == 200 ]]; then return 0; fi
        sleep 0.1
    done
    die "$url never answered 200 ($(cat "$WORK"/*.err))"
}
wait_200 "http://$IP:$OURS_PORT/"
wait_200 "http://$IP:$NGINX_PORT/"

# oha's JSON: requests/s and latency percentiles (seconds).
measure() {
    local port=$1
    taskset -c 0 oha --no-tui --output-format json -z "${SECONDS_}s" -c "$CONNS" -H 'Host: bench.test' \
        "http://$IP:$port/" >"$WORK/oha.json"
    python3 - "$WORK/oha.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
bad = sum(v for k, v in codes.items() if k != "200")
print(f'{s["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {bad}')
EOF
}

declare -a R_OURS R_NGINX
for run in $(seq 1 "$RUNS"); do
    # Alternate which goes first, so drifting load on the shared machine
    # does not favour one.
    if (( run % 2 )); then
        o=$(measure $OURS_PORT); n=$(measure $NGINX_PORT)
    else
        n=$(measure $NGINX_PORT); o=$(measure $OURS_PORT)
    fi
    echo "run $run: ours rps/p50/p99(ms)/non-200 = $o ; nginx = $n" >&2
    R_OURS+=("$o"); R_NGINX+=("$n")
done
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$OURS_PID/status")

python3 - "$OUT" "$RUNS" "$SECONDS_" "$CONNS" "$RSS" "$ARGS" "${R_OURS[@]}" -- "${R_NGINX[@]}" <<'EOF'
import statistics, sys, datetime, subprocess
out, runs, secs, conns, rss, args = sys.argv[1:7]
rest = sys.argv[7:]
i = rest.index("--")
ours = [list(map(float, r.split())) for r in rest[:i]]
ngx = [list(map(float, r.split())) for r in rest[i + 1:]]
med = lambda rows, k: statistics.median(r[k] for r in rows)
ratio_rps = statistics.median(o[0] / n[0] for o, n in zip(ours, ngx))
ratio_p99 = statistics.median(o[2] / n[2] for o, n in zip(ours, ngx))
nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
lines = [
    "# Ingress proxy: rke2-ingress vs nginx",
    "",
    f"`bench/ingress.sh {args}` on {datetime.date.today()}: {runs} runs of {secs} s, oha with {conns} keep-alive connections,",
    "Host: bench.test, GET / (a 23-byte 200 from two nginx backends, round robin). Standalone proxies (no cluster):",
    "ours is the crate's `standalone` example (release build, the table built from an Ingress, a Service and",
    f"EndpointSlices as the controller builds it, one thread: a current-thread tokio runtime); nginx is {nginx_v.replace('nginx version: ', '')},",
    "one worker, upstream keepalive 64, the X-Forwarded-* headers ingress-nginx sets. Proxies on CPU 1, backends and oha on CPU 0.",
    "",
    "| proxy | requests/s | p50 (ms) | p99 (ms) | non-200 |",
    "|---|---:|---:|---:|---:|",
    f"| rke2-ingress | {med(ours,0):.0f} | {med(ours,1):.3f} | {med(ours,2):.3f} | {sum(r[3] for r in ours):.0f} |",
    f"| nginx | {med(ngx,0):.0f} | {med(ngx,1):.3f} | {med(ngx,2):.3f} | {sum(r[3] for r in ngx):.0f} |",
    "",
    f"Ratios (median of per-run ours/nginx): throughput **{ratio_rps:.2f}x** (target >= 1.0), p99 **{ratio_p99:.2f}x** (target <= 1.2).",
    f"RSS of our proxy after the runs: {int(rss)//1024} MiB.",
    "",
]
text = "\n".join(lines)
print(text)
open(out, "w").write(text)
EOF
