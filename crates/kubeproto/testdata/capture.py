#!/usr/bin/env python3
"""Capture the request bodies real kubectl sends for typed create commands.

A plain-HTTP stub apiserver on 127.0.0.1 that answers legacy discovery for
the common core/apps/batch/rbac/... resources and, on POST, saves the raw
body and its Content-Type, then answers 201 with a small JSON object.

    python3 capture.py serve PORT OUTDIR        # just the stub
    python3 capture.py run KUBECTL OUTDIR PREFIX # stub + the commands below

`run` writes OUTDIR/<PREFIX>-<name>.pb (or .json when kubectl sent JSON)
one per command in COMMANDS, and prints each Content-Type.
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

R = lambda name, kind, ns=True, short=None: {  # noqa: E731
    "name": name, "singularName": kind.lower(), "namespaced": ns, "kind": kind,
    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    **({"shortNames": short} if short else {}),
}

GROUPS = {
    "/api/v1": [R("configmaps", "ConfigMap", short=["cm"]), R("secrets", "Secret"),
                R("namespaces", "Namespace", False, ["ns"]), R("services", "Service", short=["svc"]),
                R("serviceaccounts", "ServiceAccount", short=["sa"]), R("pods", "Pod", short=["po"]),
                R("resourcequotas", "ResourceQuota", short=["quota"]),
                R("nodes", "Node", False, ["no"])],
    "/apis/apps/v1": [R("deployments", "Deployment", short=["deploy"])],
    "/apis/batch/v1": [R("jobs", "Job"), R("cronjobs", "CronJob", short=["cj"])],
    "/apis/rbac.authorization.k8s.io/v1": [R("roles", "Role"), R("rolebindings", "RoleBinding"),
                                           R("clusterroles", "ClusterRole", False),
                                           R("clusterrolebindings", "ClusterRoleBinding", False)],
    "/apis/policy/v1": [R("poddisruptionbudgets", "PodDisruptionBudget", short=["pdb"])],
    "/apis/scheduling.k8s.io/v1": [R("priorityclasses", "PriorityClass", False, ["pc"])],
    "/apis/networking.k8s.io/v1": [R("ingresses", "Ingress", short=["ing"])],
}

# (name, kubectl args)
COMMANDS = [
    ("configmap", ["create", "configmap", "c1", "--from-literal=a=b", "--from-literal=k2=v2"]),
    ("secret", ["create", "secret", "generic", "s1", "--from-literal=p=q"]),
    ("deployment", ["create", "deployment", "web", "--image=busybox", "--replicas=2", "--port=80"]),
    ("namespace", ["create", "namespace", "n1"]),
    ("pod", ["run", "p1", "--image=busybox", "--restart=Never", "--env=A=B", "--labels=x=y",
             "--", "sleep", "10"]),
    ("service", ["create", "service", "clusterip", "svc1", "--tcp=80:8080"]),
    ("serviceaccount", ["create", "serviceaccount", "sa1"]),
    ("job", ["create", "job", "j1", "--image=busybox"]),
    ("cronjob", ["create", "cronjob", "cj1", "--image=busybox", "--schedule=*/5 * * * *"]),
    ("role", ["create", "role", "r1", "--verb=get,list", "--resource=pods"]),
    ("rolebinding", ["create", "rolebinding", "rb1", "--role=r1", "--user=alice"]),
    ("clusterrole", ["create", "clusterrole", "cr1", "--verb=get", "--resource=nodes"]),
    ("pdb", ["create", "pdb", "pdb1", "--selector=app=web", "--min-available=1"]),
    ("priorityclass", ["create", "priorityclass", "pc1", "--value=1000"]),
    ("quota", ["create", "quota", "q1", "--hard=cpu=1,pods=2"]),
    ("ingress", ["create", "ingress", "ing1", "--rule=foo.com/bar=svc1:80"]),
]


class H(BaseHTTPRequestHandler):
    outdir = "."
    last = {}

    def log_message(self, *a):
        pass

    def send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/api":
            return self.send(200, {"kind": "APIVersions", "versions": ["v1"],
                                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                   "serverAddress": "127.0.0.1"}]})
        if p == "/apis":
            groups = []
            for g in GROUPS:
                if g.startswith("/apis/"):
                    name, ver = g[6:].split("/")
                    gv = {"groupVersion": f"{name}/{ver}", "version": ver}
                    groups.append({"name": name, "versions": [gv], "preferredVersion": gv})
            return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if p in GROUPS:
            gv = p[5:] if p.startswith("/api/") else p[6:]
            return self.send(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                   "groupVersion": gv, "resources": GROUPS[p]})
        if p == "/version":
            return self.send(200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0"})
        self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        H.last = {"path": self.path, "ctype": self.headers.get("Content-Type", ""), "body": body}
        if H.outdir:
            with open(os.path.join(H.outdir, "last.body"), "wb") as f:
                f.write(body)
        parts = self.path.split("?")[0].strip("/").split("/")
        self.send(201, {"kind": "Status", "apiVersion": "v1", "metadata": {"name": "captured"},
                        "status": "Success", "path": parts})


def serve(port, outdir):
    H.outdir = outdir
    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    return srv


def main():
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3]).serve_forever()
        return
    kubectl, outdir, prefix = sys.argv[2], sys.argv[3], sys.argv[4]
    os.makedirs(outdir, exist_ok=True)
    srv = serve(0, None)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = dict(os.environ, KUBECONFIG="/dev/null", HOME="/tmp/kubeproto-capture-home")
    for name, args in COMMANDS:
        H.last = {}
        cmd = [kubectl, f"--server=http://127.0.0.1:{port}", "-n", "default"] + args
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        last = H.last
        if not last:
            print(f"{name}: no POST (rc={r.returncode}) {r.stderr.strip()[:300]}")
            continue
        ext = "pb" if "protobuf" in last["ctype"] else "json"
        base = os.path.join(outdir, f"{prefix}-{name}")
        with open(f"{base}.{ext}", "wb") as f:
            f.write(last["body"])
        print(f"{name}: {last['ctype']} {len(last['body'])} bytes POST {last['path']} -> {base}.{ext}")
    srv.shutdown()


if __name__ == "__main__":
    main()
