"""An admission webhook server over TLS for tests/admission.rs.

Usage: webhook.py <port> <cert> <key> <client-ca> <log>

Prints "ready <port>" once it listens (port 0 picks a free one) on
$WEBHOOK_BIND (default 127.0.0.1).

Paths:
  /mutate   allows, adding the label admitted-by=webhook (JSONPatch)
  /deny     denies objects named bad-*, with a message and code 403;
            allows the rest with a warning
  /garbage  answers a body that is not an AdmissionReview
  /wronguid answers allowed with a different uid
  /slow     answers after 5 seconds
  /convert  a CRD conversion webhook (ConversionReview): between v1's
            spec.hostPort "h:p" and v2's spec.host + spec.port
  /convertfail  answers every ConversionReview with a Failure
Every request's AdmissionReview and the client certificate's CN are
appended to <log> as one JSON line.
"""

import base64
import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, CERT, KEY, CLIENT_CA, LOG = sys.argv[1:6]


def client_cn(sock):
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body, code=200):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        review = json.loads(self.rfile.read(length))
        path = self.path.split("?")[0]
        with open(LOG, "a") as f:
            f.write(json.dumps({"path": self.path, "cn": client_cn(self.connection), "review": review}) + "\n")
        req = review["request"]
        if path.startswith("/convert"):
            return self.convert(path, review)
        resp = {"uid": req["uid"], "allowed": True}
        obj = req.get("object") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        if path == "/mutate":
            labels = (obj.get("metadata") or {}).get("labels")
            if labels is None:
                ops = [{"op": "add", "path": "/metadata/labels", "value": {"admitted-by": "webhook"}}]
            else:
                ops = [{"op": "add", "path": "/metadata/labels/admitted-by", "value": "webhook"}]
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        elif path == "/deny":
            if name.startswith("bad-"):
                resp["allowed"] = False
                resp["status"] = {"code": 403, "reason": "Forbidden", "message": "names starting with bad- are not welcome here"}
            else:
                resp["warnings"] = ["checked by the deny webhook"]
        elif path == "/garbage":
            return self.answer(b"<html>certainly not a review</html>")
        elif path == "/wronguid":
            resp["uid"] = "not-" + req["uid"]
        elif path == "/slow":
            time.sleep(5)
        self.answer({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})

    def convert(self, path, review):
        req = review["request"]
        desired = req["desiredAPIVersion"]
        resp = {"uid": req["uid"], "result": {"status": "Success"}, "convertedObjects": []}
        if path == "/convertfail":
            resp["result"] = {"status": "Failure", "message": "conversion refused by the test"}
        for obj in req["objects"] if path == "/convert" else []:
            spec = obj.get("spec") or {}
            if desired.endswith("/v2") and "hostPort" in spec:
                host, port = spec.pop("hostPort").rsplit(":", 1)
                spec["host"], spec["port"] = host, int(port)
            elif desired.endswith("/v1") and "host" in spec:
                spec["hostPort"] = "%s:%s" % (spec.pop("host"), spec.pop("port", 80))
            obj["apiVersion"] = desired
            resp["convertedObjects"].append(obj)
        self.answer({"apiVersion": review["apiVersion"], "kind": "ConversionReview", "response": resp})


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
ctx.load_verify_locations(CLIENT_CA)
ctx.verify_mode = ssl.CERT_OPTIONAL
server = ThreadingHTTPServer((os.environ.get("WEBHOOK_BIND", "127.0.0.1"), int(PORT)), Handler)
server.daemon_threads = True
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", server.server_address[1], flush=True)
server.serve_forever()
