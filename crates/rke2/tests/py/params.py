"""Query parameters through the real Python `kubernetes` client.

Run by tests/validation.rs with the admin kubeconfig as argv[1]. Each check
raises with a message naming what failed; the last line printed is "ok".
The client sends booleans as `True`/`False` (`watch=True`), which kube-
apiserver reads as booleans; a server that read only `true` answered its
watches with a list and they saw no event.
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
NS = "default"


def cm(name, **meta):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, **meta), data={"k": "v"}
    )


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, f"{fn.__name__}: status {e.status}, want {code}: {e.body}"
        return e
    raise AssertionError(f"{fn.__name__}{args}{kwargs}: succeeded, want {code}")


# watch=True: events, not a list. The watch starts at a list's revision, so
# it sees exactly what is created after it.
listed = v1.list_namespaced_config_map(NS)
rv = listed.metadata.resource_version
seen = []


def watcher():
    w = watch.Watch()
    for ev in w.stream(
        v1.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=30
    ):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["object"].metadata.name == "py-watched":
            w.stop()


t = threading.Thread(target=watcher)
t.start()
# The watch must be open before the create for the event to be a new one;
# it starts at `rv`, so even a create before it opens is delivered.
v1.create_namespaced_config_map(NS, cm("py-watched"))
t.join(60)
assert not t.is_alive(), "the watch saw no event for py-watched within 60 s"
assert ("ADDED", "py-watched") in seen, f"watch events: {seen}"

# timeoutSeconds ends a watch on time, with no event.
start = time.monotonic()
events = list(
    watch.Watch().stream(
        v1.list_namespaced_config_map,
        NS,
        resource_version=v1.list_namespaced_config_map(NS).metadata.resource_version,
        timeout_seconds=1,
    )
)
took = time.monotonic() - start
assert events == [], f"events on an idle watch: {events}"
assert took < 20, f"a 1 s watch took {took:.1f} s"

# dryRun=All: answered, nothing stored; anything else is refused, nothing stored.
made = v1.create_namespaced_config_map(NS, cm("py-dry"), dry_run="All")
assert made.metadata.name == "py-dry" and made.metadata.uid, made.metadata
expect_status(404, v1.read_namespaced_config_map, "py-dry", NS)
e = expect_status(422, v1.create_namespaced_config_map, NS, cm("py-dry"), dry_run="Al")
assert "dryRun: Unsupported value" in e.body, e.body
expect_status(404, v1.read_namespaced_config_map, "py-dry", NS)

# A dry-run delete (query and DeleteOptions body) keeps the object.
v1.create_namespaced_config_map(NS, cm("py-keep"))
v1.delete_namespaced_config_map("py-keep", NS, dry_run="All")
v1.delete_namespaced_config_map(
    "py-keep", NS, body=client.V1DeleteOptions(dry_run=["All"])
)
v1.read_namespaced_config_map("py-keep", NS)
expect_status(422, v1.delete_namespaced_config_map, "py-keep", NS, dry_run="Nope")
v1.read_namespaced_config_map("py-keep", NS)
v1.delete_namespaced_config_map("py-keep", NS)
expect_status(404, v1.read_namespaced_config_map, "py-keep", NS)

# limit and continue.
for i in range(3):
    v1.create_namespaced_config_map(NS, cm(f"py-page-{i}", labels={"py": "page"}))
page = v1.list_namespaced_config_map(NS, label_selector="py=page", limit=2)
assert len(page.items) == 2 and page.metadata._continue, page.metadata
rest = v1.list_namespaced_config_map(
    NS, label_selector="py=page", limit=2, _continue=page.metadata._continue
)
assert [c.metadata.name for c in page.items + rest.items] == [
    "py-page-0",
    "py-page-1",
    "py-page-2",
], (page.items, rest.items)

# generateName.
names = {
    v1.create_namespaced_config_map(NS, cm(None, generate_name="py-gen-")).metadata.name
    for _ in range(20)
}
assert len(names) == 20 and all(n.startswith("py-gen-") for n in names), names

# Malformed typed parameters are 400, through the client's raw call.
for query in ([("limit", "abc")], [("timeoutSeconds", "1.5")]):
    try:
        v1.api_client.call_api(
            "/api/v1/namespaces/default/configmaps",
            "GET",
            query_params=query,
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        raise AssertionError(f"{query} accepted")
    except ApiException as e:
        assert e.status == 400, f"{query}: {e.status} {e.body}"

# A resourceVersion ahead of the store: a wait, then 504 Too large.
start = time.monotonic()
e = expect_status(
    504,
    v1.list_namespaced_config_map,
    NS,
    resource_version="999999999",
    resource_version_match="NotOlderThan",
)
took = time.monotonic() - start
assert "Too large resource version" in e.body, e.body
assert "ResourceVersionTooLarge" in e.body, e.body
assert took >= 2.5, f"answered after {took:.1f} s, without waiting"

print("ok")
