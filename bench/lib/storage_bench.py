#!/usr/bin/env python3
"""Times local-path claims against emptyDir pods on one server (bench/storage.sh).

Per round, one after the other (never two pods at once, so each figure is
a latency and not a queue):
  1. the reference: a pod with an emptyDir volume, created -> Ready;
  2. a claim of the default class (local-path) and a pod using it, both
     created together: claim created -> Bound, pod created -> Ready;
  3. the pod and the claim deleted: claim deleted -> volume object gone
     and its directory gone (reclaim Delete through the helper pod).
Polls the API every POLL seconds over one keep-alive client.

Usage: storage_bench.py KUBECONFIG NAMESPACE ROUNDS STORAGE_DIR OUT_JSON
"""

import json
import os
import sys
import time

from kubernetes import client, config

POLL = 0.02
DEADLINE = 180.0
IMAGE = "rke2.test/busybox:1"


def wait(what, check):
    start = time.monotonic()
    while True:
        got = check()
        if got:
            return time.monotonic()
        if time.monotonic() - start > DEADLINE:
            raise SystemExit(f"storage_bench: {what} not within {DEADLINE:.0f}s")
        time.sleep(POLL)


def ready(core, ns, name):
    try:
        p = core.read_namespaced_pod(name, ns)
    except client.ApiException:
        return False
    for c in (p.status.conditions or []) if p.status else []:
        if c.type == "Ready" and c.status == "True":
            return True
    return False


def gone_pod(core, ns, name):
    try:
        core.read_namespaced_pod(name, ns)
        return False
    except client.ApiException as e:
        return e.status == 404


def pod(name, volume):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "echo x > /data/x && exec sleep 3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [dict(name="data", **volume)],
        },
    }


def main():
    kubeconfig, ns, rounds, storage, out = sys.argv[1:6]
    rounds = int(rounds)
    config.load_kube_config(kubeconfig)
    core = client.CoreV1Api()
    res = {"empty_ready": [], "pvc_bound": [], "pvc_ready": [], "reclaim": []}
    # Round 0 is a warm-up (the first helper pod builds the addon image on
    # the node): run, not counted.
    for i in range(0, rounds + 1):
        # 1. the reference
        name = f"empty-{i}"
        t0 = time.monotonic()
        core.create_namespaced_pod(ns, pod(name, {"emptyDir": {}}))
        t1 = wait(f"{name} Ready", lambda: ready(core, ns, name))
        res["empty_ready"].append(t1 - t0)
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        wait(f"{name} gone", lambda: gone_pod(core, ns, name))

        # 2. a claim and its first consumer
        claim = f"data-{i}"
        name = f"claim-{i}"
        t0 = time.monotonic()
        core.create_namespaced_persistent_volume_claim(ns, {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        })
        tp = time.monotonic()
        core.create_namespaced_pod(ns, pod(name, {"persistentVolumeClaim": {"claimName": claim}}))
        bound = {}

        def both():
            if "t" not in bound:
                c = core.read_namespaced_persistent_volume_claim(claim, ns)
                if c.status and c.status.phase == "Bound":
                    bound["t"] = time.monotonic()
                    bound["pv"] = c.spec.volume_name
                    bound["uid"] = c.metadata.uid
            return "t" in bound and ready(core, ns, name)

        t1 = wait(f"{name} Ready with {claim} Bound", both)
        res["pvc_bound"].append(bound["t"] - t0)
        res["pvc_ready"].append(t1 - tp)
        directory = os.path.join(storage, f"pvc-{bound['uid']}_{ns}_{claim}")
        if not os.path.isfile(os.path.join(directory, "x")):
            raise SystemExit(f"storage_bench: {directory}/x was not written")

        # 3. reclaim
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        wait(f"{name} gone", lambda: gone_pod(core, ns, name))
        t0 = time.monotonic()
        core.delete_namespaced_persistent_volume_claim(claim, ns)

        def pv_gone():
            try:
                core.read_persistent_volume(bound["pv"])
                return False
            except client.ApiException as e:
                return e.status == 404

        t1 = wait(f"volume {bound['pv']} deleted", pv_gone)
        res["reclaim"].append(t1 - t0)
        # The directory goes before the object (the helper pod Succeeded first).
        if os.path.exists(directory):
            raise SystemExit(f"storage_bench: {directory} still there after its volume was deleted")
        if i == 0:
            res = {k: [] for k in res}
            continue
        print(f"round {i}: emptyDir {res['empty_ready'][-1]:.3f}s, claim bound {res['pvc_bound'][-1]:.3f}s, "
              f"pod ready {res['pvc_ready'][-1]:.3f}s, reclaim {res['reclaim'][-1]:.3f}s", file=sys.stderr)
    stats = {}
    for k, v in res.items():
        v = sorted(v)
        q = lambda p: v[min(len(v) - 1, max(0, int(p * len(v) + 0.999999) - 1))]
        stats[k] = {"p50": q(0.50), "p99": q(0.99), "max": v[-1], "n": len(v)}
    stats["ratio_p50"] = stats["pvc_ready"]["p50"] / stats["empty_ready"]["p50"]
    stats["ratio_p99"] = stats["pvc_ready"]["p99"] / stats["empty_ready"]["p99"]
    with open(out, "w") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
