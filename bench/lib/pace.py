#!/usr/bin/env python3
"""Paced pod creator for bench/pods.sh: N pods POSTed at a uniform rate.

    python3 bench/lib/pace.py --kubeconfig-json FILE --namespace NS --prefix P
        --label APP --image IMG --count N --qps Q --out FILE [--workers W]

FILE is `kubectl config view --raw --minify --flatten -o json` (certificates
embedded). Pod i (1..N) is named P-iii and is sent at its deadline
start + (i-1)/Q, an absolute schedule: a slow create delays no later one
(W persistent HTTPS connections, 4 by default, each in its own thread, take
the creates in turn), and the pacing cannot drift. This is how
clusterloader2 paces its latency pods (a uniform-QPS tuning set), without a
process per pod: one `kubectl create` costs ~80 ms CPU here, which at 5/s
would take a fifth of a 2-core machine from what is being measured.

Writes one line per pod to --out, in creation order of the schedule:
    name scheduled sent answered http-status
(wall-clock seconds, the clock of `perl Time::HiRes::time` in pods.sh), and
exits 1 when any create did not answer 201.
"""

import argparse
import base64
import http.client
import json
import os
import queue
import ssl
import sys
import threading
import time
from urllib.parse import urlparse


def pod(name, ns, label, image):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": label}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "sleep",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }


def tls_context(kc, tmpdir):
    """An SSL context with the kubeconfig's CA and client certificate."""
    cluster = kc["clusters"][0]["cluster"]
    user = kc["users"][0]["user"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    cert = os.path.join(tmpdir, "pace-client.crt")
    key = os.path.join(tmpdir, "pace-client.key")
    for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(user[field]))
    ctx.load_cert_chain(cert, key)
    return ctx, urlparse(cluster["server"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig-json", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--qps", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args()
    if a.count < 1 or a.qps <= 0 or a.workers < 1:
        ap.error("--count, --qps and --workers must be positive")

    with open(a.kubeconfig_json) as f:
        kc = json.load(f)
    ctx, url = tls_context(kc, os.path.dirname(os.path.abspath(a.out)))
    path = f"/api/v1/namespaces/{a.namespace}/pods"
    jobs = queue.Queue()
    results = [None] * a.count
    ready = threading.Barrier(a.workers + 1)
    failed = []

    def worker():
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=30)
        try:
            # connect and handshake before the schedule starts
            conn.request("GET", "/version")
            conn.getresponse().read()
        except Exception as e:  # reported after the barrier; the creates will fail too
            failed.append(f"warm-up GET /version: {e}")
        ready.wait()
        while True:
            job = jobs.get()
            if job is None:
                return
            i, name, sched = job
            body = json.dumps(pod(name, a.namespace, a.label, a.image)).encode()
            sent = time.time()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                text = r.read()
                status = r.status
            except Exception as e:
                # one reconnect and retry: a keep-alive connection the server closed
                conn.close()
                try:
                    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    text = r.read()
                    status = r.status
                except Exception as e2:
                    status, text = 0, f"{e}; retry: {e2}".encode()
            done = time.time()
            results[i] = (name, sched, sent, done, status)
            if status != 201:
                failed.append(f"{name}: HTTP {status}: {text[:300].decode(errors='replace')}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.workers)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.time() + 0.05
    for i in range(a.count):
        sched = start + i / a.qps          # absolute deadline: no drift
        delay = sched - time.time()
        if delay > 0:
            time.sleep(delay)
        jobs.put((i, f"{a.prefix}-{i + 1:03d}", sched))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()

    with open(a.out, "w") as f:
        for r in results:
            if r is not None:
                f.write("%s %.6f %.6f %.6f %d\n" % r)
    for msg in failed[:5]:
        print(f"pace.py: {msg}", file=sys.stderr)
    return 1 if failed or any(r is None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
