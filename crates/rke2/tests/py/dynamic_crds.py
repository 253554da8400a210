"""Custom types through the real Python `kubernetes` client's dynamic client.

Run by tests/crds.rs with the admin kubeconfig as argv[1] and a namespace
as argv[2], after the Gateway API CRDs are established. Each check raises
with a message naming what failed; the last line printed is "ok".
"""

import sys

from kubernetes import config, dynamic
from kubernetes.client import api_client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic.exceptions import NotFoundError

config.load_kube_config(config_file=sys.argv[1])
NS = sys.argv[2]
dyn = dynamic.DynamicClient(api_client.ApiClient())

routes = dyn.resources.get(api_version="gateway.networking.k8s.io/v1", kind="HTTPRoute")
assert routes.namespaced, "HTTPRoute should be namespaced"

route = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "py-route", "namespace": NS},
    "spec": {
        "hostnames": ["py.test"],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}],
    },
}
created = routes.create(body=route, namespace=NS)
# The CRD's defaults: a rule without matches matches every path.
match = created.spec.rules[0].matches[0]
assert match.path.type == "PathPrefix" and match.path.value == "/", f"defaults: {created.spec}"

got = routes.get(name="py-route", namespace=NS)
assert got.spec.hostnames == ["py.test"], got
names = [r.metadata.name for r in routes.get(namespace=NS).items]
assert "py-route" in names, names

patched = routes.patch(
    name="py-route",
    namespace=NS,
    body={"spec": {"hostnames": ["py2.test"]}},
    content_type="application/merge-patch+json",
)
assert patched.spec.hostnames == ["py2.test"], patched

bad = dict(route, metadata={"name": "py-bad", "namespace": NS})
bad["spec"] = {"rules": [{"backendRefs": [{"name": "web"}]}]}
try:
    routes.create(body=bad, namespace=NS)
    raise AssertionError("a Service backendRef without port was accepted")
except ApiException as e:
    assert e.status == 422, e
    assert "Must have port for Service reference" in e.body.decode(), e.body

routes.delete(name="py-route", namespace=NS)
try:
    routes.get(name="py-route", namespace=NS)
    raise AssertionError("py-route still there after delete")
except NotFoundError:
    pass
print("ok")
