//! The verbs without etcd: an [`ApiState`] over the in-memory store
//! ([`MemoryStore`]), driven through the API's own router (routing,
//! authentication from the request's identity, authorization, admission,
//! the handlers and the watch caches), as a client's request is.
//!
//! The store's agreement with etcd is tested apart (the datastore's
//! contract checks run against both); the real server with real etcd and
//! real clients is tested in `crates/rke2/tests`. What these tests buy is
//! speed and reach: compaction and conflicts are set up directly in the
//! store.

use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use rke2_apiserver::proxy::NodeClientTls;
use rke2_apiserver::{ApiConfig, ApiState, Identity};
use rke2_datastore::{MemoryStore, ObjectStore};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Deadline for one answer or one watch event that should come at once.
const QUICK: Duration = Duration::from_secs(15);

const NS: &str = "verbs";

/// An apiserver over an in-memory store, with a namespace `verbs`.
struct Api {
    state: ApiState,
    store: MemoryStore,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        Self::start_on(MemoryStore::new()).await
    }

    /// Starts over `store` (which may hold keys and history already).
    async fn start_on(store: MemoryStore) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let trust = rke2_trust::ensure_server_trust(&rke2_trust::ServerTrustParams {
            data_dir: dir.path().to_path_buf(),
            node_name: "verbs".into(),
            serving_sans: vec!["127.0.0.1".into()],
            etcd_sans: rke2_trust::etcd_sans("verbs", &["127.0.0.1".parse().expect("ip")]),
        })
        .expect("trust material");
        let state = ApiState::new(
            ApiConfig {
                service_cidr: "10.43.0.0/16".parse().expect("cidr"),
                advertise_address: "127.0.0.1".parse().expect("ip"),
                port: 6443,
                node_port_range: (30000, 32767),
                node_client: NodeClientTls::from_pem(
                    trust.server_ca.cert_pem.as_bytes(),
                    trust.kube_apiserver_client.cert_pem.as_bytes(),
                    trust.kube_apiserver_client.key_pem.as_bytes(),
                )
                .expect("node client TLS"),
                tokens: std::sync::Arc::new(rke2_apiserver::tokens::TokenIssuer::generate()),
                pod_security: Default::default(),
                audit: None,
                aggregator: None,
            },
            store.clone(),
        );
        rke2_apiserver::bootstrap::ensure_builtin_objects(&state)
            .await
            .unwrap_or_else(|e| panic!("built-in objects: {}", e.message));
        let api = Api {
            router: rke2_apiserver::server::router(state.clone()),
            state,
            store,
            _dir: dir,
        };
        let (code, ns) = api
            .call(
                Method::POST,
                "/api/v1/namespaces",
                json!({"metadata": {"name": NS}}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{ns}");
        api
    }

    /// Sends a request as a cluster admin (`system:masters`).
    async fn send(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> http::Response<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request");
        req.extensions_mut().insert(Some(Identity {
            user: "verbs-admin".into(),
            groups: vec!["system:masters".into()],
        }));
        tokio::time::timeout(QUICK, self.router.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("no answer in time to {uri}"))
            .expect("infallible router")
    }

    /// A request with a JSON body (`Value::Null`: none); the status and
    /// the decoded answer.
    async fn call(&self, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call_as(method, uri, "application/json", body).await
    }

    async fn call_as(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).expect("json")
        };
        let resp = self.send(method, uri, content_type, bytes).await;
        let code = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{uri}: answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (code, value)
    }

    async fn create_cm(&self, name: &str, labels: Value, data: Value) -> Value {
        let (code, cm) = self
            .call(
                Method::POST,
                &format!("/api/v1/namespaces/{NS}/configmaps"),
                json!({"metadata": {"name": name, "labels": labels}, "data": data}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{cm}");
        cm
    }

    /// Starts a watch; its events are read with [`WatchReader::next`].
    async fn watch(&self, uri: &str) -> WatchReader {
        let resp = self
            .send(Method::GET, uri, "application/json", Vec::new())
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "watch {uri}");
        WatchReader {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

fn rv(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {obj}"))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The lines of a watch answer.
struct WatchReader {
    body: Body,
    buf: Vec<u8>,
}

impl WatchReader {
    /// The next event other than a bookmark.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let ev: Value = serde_json::from_slice(&line).expect("a JSON event line");
                if ev["type"] != "BOOKMARK" {
                    return ev;
                }
                continue;
            }
            let frame = tokio::time::timeout(QUICK, self.body.frame())
                .await
                .expect("a watch event in time")
                .expect("the watch is still open")
                .expect("a body frame");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_and_conflicting_writes() {
    let api = Api::start().await;
    let cm = api
        .create_cm("one", json!({"app": "web"}), json!({"k": "v1"}))
        .await;
    assert!(cm["metadata"]["uid"].is_string(), "{cm}");
    assert_eq!(
        rv(&cm),
        api.store.current_revision().await.unwrap(),
        "the resourceVersion is the store revision of the write"
    );
    let (code, got) = api
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/configmaps/one"),
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!((got["data"]["k"].as_str(), rv(&got)), (Some("v1"), rv(&cm)));

    let (code, st) = api
        .call(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/configmaps"),
            json!({"metadata": {"name": "one"}}),
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyExists")),
        "{st}"
    );
    assert_eq!(st["message"], "configmaps \"one\" already exists");

    let (code, st) = api
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/configmaps/nope"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some("NotFound")),
        "{st}"
    );

    // An update based on the current resourceVersion lands ...
    let mut next = got.clone();
    next["data"]["k"] = json!("v2");
    let (code, updated) = api
        .call(
            Method::PUT,
            &format!("/api/v1/namespaces/{NS}/configmaps/one"),
            next.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert!(rv(&updated) > rv(&got));
    // ... and one based on the older one is refused, changing nothing.
    let mut stale = got.clone();
    stale["data"]["k"] = json!("stale");
    let (code, st) = api
        .call(
            Method::PUT,
            &format!("/api/v1/namespaces/{NS}/configmaps/one"),
            stale,
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict")),
        "{st}"
    );
    assert_eq!(
        st["message"],
        "Operation cannot be fulfilled on configmaps \"one\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (_, now) = api
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/configmaps/one"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (now["data"]["k"].as_str(), rv(&now)),
        (Some("v2"), rv(&updated))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_selectors_and_pages() {
    let api = Api::start().await;
    for (name, app, tier) in [
        ("a", "web", "front"),
        ("b", "web", "back"),
        ("c", "db", "back"),
        ("d", "web", "front"),
        ("e", "web", "front"),
    ] {
        api.create_cm(name, json!({"app": app, "tier": tier}), json!({}))
            .await;
    }
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    // kube-root-ca.crt is not published here (no controllers run).
    let (code, all) = api.call(Method::GET, &base, Value::Null).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(names(&all), ["a", "b", "c", "d", "e"]);
    assert_eq!(all["kind"], "ConfigMapList");
    let list_rv: i64 = all["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(list_rv, api.store.current_revision().await.unwrap());

    let (_, web) = api
        .call(
            Method::GET,
            &format!("{base}?labelSelector=app%3Dweb"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&web), ["a", "b", "d", "e"]);
    let (_, set) = api
        .call(
            Method::GET,
            &format!("{base}?labelSelector=app%3Dweb,tier%20in%20(back)"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&set), ["b"]);
    let (_, notweb) = api
        .call(
            Method::GET,
            &format!("{base}?labelSelector=app!%3Dweb"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&notweb), ["c"]);
    let (_, by_name) = api
        .call(
            Method::GET,
            &format!("{base}?fieldSelector=metadata.name%3Dd"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&by_name), ["d"]);
    let (_, both) = api
        .call(
            Method::GET,
            &format!("{base}?fieldSelector=metadata.name!%3Da&labelSelector=tier%3Dfront"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&both), ["d", "e"]);
    let (code, st) = api
        .call(
            Method::GET,
            &format!("{base}?fieldSelector=data.k%3Dv"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest")),
        "{st}"
    );
    assert!(
        st["message"]
            .as_str()
            .unwrap_or("")
            .contains("field label not supported: data.k"),
        "{st}"
    );

    // Pages of two, continuing at the first page's revision: a create
    // between pages is not seen.
    let (_, page) = api
        .call(Method::GET, &format!("{base}?limit=2"), Value::Null)
        .await;
    assert_eq!(names(&page), ["a", "b"]);
    assert_eq!(page["metadata"]["remainingItemCount"], 3, "{page}");
    let first_rv = page["metadata"]["resourceVersion"].clone();
    api.create_cm("f", json!({"app": "web"}), json!({})).await;
    let mut seen = names(&page);
    let mut token = page["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    loop {
        let (code, page) = api
            .call(
                Method::GET,
                &format!("{base}?limit=2&continue={token}"),
                Value::Null,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{page}");
        assert_eq!(
            page["metadata"]["resourceVersion"], first_rv,
            "every page at the first page's revision"
        );
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    // With a selector, pages hold only matching objects.
    let (_, page) = api
        .call(
            Method::GET,
            &format!("{base}?limit=2&labelSelector=tier%3Dfront"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&page), ["a", "d"]);
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("continue token");
    let (_, rest) = api
        .call(
            Method::GET,
            &format!("{base}?limit=2&labelSelector=tier%3Dfront&continue={token}"),
            Value::Null,
        )
        .await;
    assert_eq!(names(&rest), ["e"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_merge_json_and_strategic() {
    let api = Api::start().await;
    api.create_cm("p", json!({"a": "1"}), json!({"k": "v", "drop": "x"}))
        .await;
    let uri = format!("/api/v1/namespaces/{NS}/configmaps/p");

    let (code, cm) = api
        .call_as(
            Method::PATCH,
            &uri,
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"b": "2"}}, "data": {"drop": null, "new": "n"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{cm}");
    assert_eq!(cm["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(
        cm["data"],
        json!({"k": "v", "new": "n"}),
        "null removes a key"
    );

    let (code, cm) = api
        .call_as(
            Method::PATCH,
            &uri,
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/k", "value": "v"}, {"op": "replace", "path": "/data/k", "value": "w"}]),
        )
        .await;
    assert_eq!(
        (code, cm["data"]["k"].as_str()),
        (StatusCode::OK, Some("w")),
        "{cm}"
    );
    let before = rv(&cm);
    let (code, st) = api
        .call_as(
            Method::PATCH,
            &uri,
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/k", "value": "not-w"}, {"op": "remove", "path": "/data/k"}]),
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")),
        "{st}"
    );
    let (_, cm) = api.call(Method::GET, &uri, Value::Null).await;
    assert_eq!(
        (cm["data"]["k"].as_str(), rv(&cm)),
        (Some("w"), before),
        "a failed patch writes nothing"
    );

    // Strategic merge: containers merge by name; a merge patch replaces
    // the list.
    let deployments = format!("/apis/apps/v1/namespaces/{NS}/deployments");
    let (code, d) = api
        .call(
            Method::POST,
            &deployments,
            json!({
                "metadata": {"name": "d"},
                "spec": {
                    "selector": {"matchLabels": {"app": "d"}},
                    "template": {
                        "metadata": {"labels": {"app": "d"}},
                        "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}
                    }
                }
            }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{d}");
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}});
    let (code, d) = api
        .call_as(
            Method::PATCH,
            &format!("{deployments}/d"),
            "application/strategic-merge-patch+json",
            patch.clone(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{d}");
    let images: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, ["a:1", "b:2"], "merged by name");
    let (code, d) = api
        .call_as(
            Method::PATCH,
            &format!("{deployments}/d"),
            "application/merge-patch+json",
            patch,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{d}");
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(
        containers.len(),
        1,
        "a merge patch replaces lists: {containers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_with_finalizers_and_grace() {
    let api = Api::start().await;
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    let (code, cm) = api
        .call(
            Method::POST,
            &cms,
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{cm}");
    let (code, marked) = api
        .call(Method::DELETE, &format!("{cms}/held"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK, "{marked}");
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "a finalizer keeps the object, marked: {marked}"
    );
    let (code, still) = api
        .call(Method::GET, &format!("{cms}/held"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        still["metadata"]["deletionTimestamp"],
        marked["metadata"]["deletionTimestamp"]
    );
    // Removing the last finalizer completes the deletion.
    let (code, done) = api
        .call_as(
            Method::PATCH,
            &format!("{cms}/held"),
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{done}");
    let (code, _) = api
        .call(Method::GET, &format!("{cms}/held"), Value::Null)
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "gone once no finalizer holds it"
    );

    // A stale precondition refuses the delete.
    let cm = api.create_cm("pre", json!({}), json!({})).await;
    let (code, st) = api
        .call(
            Method::DELETE,
            &format!("{cms}/pre"),
            json!({"preconditions": {"resourceVersion": (rv(&cm) - 1).to_string()}}),
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict")),
        "{st}"
    );
    let (code, _) = api
        .call(Method::DELETE, &format!("{cms}/pre"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .call(Method::GET, &format!("{cms}/pre"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // A pod bound to a node is deleted gracefully: marked with its grace
    // period until a zero-grace delete (the kubelet's) removes it.
    let (code, sa) = api
        .call(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/serviceaccounts"),
            json!({"metadata": {"name": "default"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{sa}");
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let (code, pod) = api
        .call(
            Method::POST,
            &pods,
            json!({
                "metadata": {"name": "p"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}
            }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{pod}");
    let (code, marked) = api
        .call(
            Method::DELETE,
            &format!("{pods}/p"),
            json!({"gracePeriodSeconds": 45}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{marked}");
    assert_eq!(
        marked["metadata"]["deletionGracePeriodSeconds"], 45,
        "{marked}"
    );
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = api
        .call(Method::GET, &format!("{pods}/p"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK, "still there during its grace period");
    let (code, _) = api
        .call(
            Method::DELETE,
            &format!("{pods}/p?gracePeriodSeconds=0"),
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .call(Method::GET, &format!("{pods}/p"), Value::Null)
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "a zero-grace delete removes it"
    );
}

/// Watches from a resourceVersion, through the watch cache (ConfigMaps)
/// and through the store's own watch (Events are not cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_resource_version() {
    let api = Api::start().await;
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    let first = api
        .create_cm("w1", json!({"app": "w"}), json!({"k": "1"}))
        .await;
    // Created after the watch's revision, before the watch: replayed.
    api.create_cm("w2", json!({"app": "w"}), json!({})).await;
    api.create_cm("other", json!({"app": "x"}), json!({})).await;
    let mut w = api
        .watch(&format!(
            "{cms}?watch=true&resourceVersion={}&labelSelector=app%3Dw",
            rv(&first)
        ))
        .await;
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w2")),
        "{ev}"
    );
    let (_, updated) = api
        .call_as(
            Method::PATCH,
            &format!("{cms}/w1"),
            "application/merge-patch+json",
            json!({"data": {"k": "2"}}),
        )
        .await;
    let ev = w.next().await;
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["data"]["k"].as_str()),
        (Some("MODIFIED"), Some("2")),
        "{ev}"
    );
    assert_eq!(rv(&ev["object"]), rv(&updated));
    // A label change out of the selector reads as a deletion to this watch.
    api.call_as(
        Method::PATCH,
        &format!("{cms}/w2"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "gone"}}}),
    )
    .await;
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("w2")),
        "{ev}"
    );
    let (code, _) = api
        .call(Method::DELETE, &format!("{cms}/w1"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("w1")),
        "{ev}"
    );
    assert!(
        rv(&ev["object"]) > rv(&updated),
        "a deletion carries the deletion's revision"
    );

    // Events are not cached: the same through the store's own watch,
    // with a field selector (a change out of it is told as a deletion
    // only with the store's previous value).
    let events = format!("/api/v1/namespaces/{NS}/events");
    let event = |name: &str, reason: &str, count: i64| {
        json!({
            "metadata": {"name": name},
            "involvedObject": {"kind": "ConfigMap", "name": "w1", "namespace": NS, "apiVersion": "v1"},
            "reason": reason, "message": "m", "type": "Normal", "count": count,
            "source": {"component": "verbs"},
        })
    };
    let (code, e1) = api
        .call(Method::POST, &events, event("e1", "Tested", 1))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{e1}");
    let mut w = api
        .watch(&format!(
            "{events}?watch=true&resourceVersion={}&fieldSelector=reason%3DTested",
            rv(&e1)
        ))
        .await;
    let (code, e2) = api
        .call(Method::POST, &events, event("e2", "Tested", 1))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{e2}");
    let (code, _) = api
        .call(Method::POST, &events, event("e3", "Other", 1))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("e2")),
        "{ev}"
    );
    let (code, _) = api
        .call(Method::PUT, &format!("{events}/e1"), {
            let mut e = e1.clone();
            e["count"] = json!(2);
            e
        })
        .await;
    assert_eq!(code, StatusCode::OK);
    let ev = w.next().await;
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["count"].as_i64()),
        (Some("MODIFIED"), Some(2)),
        "{ev}"
    );
    let (code, _) = api
        .call_as(
            Method::PATCH,
            &format!("{events}/e2"),
            "application/merge-patch+json",
            json!({"reason": "Moved"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("e2")),
        "leaving the selector reads as a deletion: {ev}"
    );
    api.call(Method::DELETE, &format!("{events}/e1"), Value::Null)
        .await;
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("e1")),
        "{ev}"
    );
}

/// Revisions before the store's compaction point answer 410 Gone: a
/// watch (an ERROR event, as upstream), an exact list, and a continue
/// token of a compacted list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_revisions_are_gone() {
    // History that the caches (started with the state) never see.
    let store = MemoryStore::new();
    for i in 0..5 {
        store
            .create(&format!("/verbs-test/filler/{i}"), b"x".to_vec())
            .await
            .unwrap();
    }
    let compacted = store.current_revision().await.unwrap();
    store.compact(compacted).await.unwrap();
    let api = Api::start_on(store).await;
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    api.create_cm("a", json!({}), json!({})).await;

    let old = compacted - 3;
    let mut w = api
        .watch(&format!("{cms}?watch=true&resourceVersion={old}"))
        .await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "ERROR", "{ev}");
    assert_eq!(
        (
            ev["object"]["code"].as_i64(),
            ev["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired")),
        "{ev}"
    );
    assert_eq!(
        ev["object"]["message"],
        format!("too old resource version: {old} ({compacted})")
    );

    let (code, st) = api
        .call(
            Method::GET,
            &format!("{cms}?resourceVersion={old}&resourceVersionMatch=Exact"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::GONE, Some("Expired")),
        "{st}"
    );

    // A continue token outlives its revision's history.
    api.create_cm("b", json!({}), json!({})).await;
    let (_, page) = api
        .call(Method::GET, &format!("{cms}?limit=1"), Value::Null)
        .await;
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    api.create_cm("c", json!({}), json!({})).await;
    let now = api.store.current_revision().await.unwrap();
    api.state.store.compact(now).await.unwrap();
    let (code, st) = api
        .call(
            Method::GET,
            &format!("{cms}?limit=1&continue={token}"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::GONE, Some("Expired")),
        "{st}"
    );
    assert!(
        st["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("The provided continue parameter is too old"),
        "{st}"
    );
    // A watch from a revision after the compaction point still works.
    let mut w = api
        .watch(&format!("{cms}?watch=true&resourceVersion={now}"))
        .await;
    api.create_cm("d", json!({}), json!({})).await;
    let ev = w.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("d")),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_honour_disruption_budgets() {
    let api = Api::start().await;
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let pdbs = format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets");
    let (code, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/namespaces/{NS}/serviceaccounts"),
            json!({"metadata": {"name": "default"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let evict = |name: &str| {
        let uri = format!("{pods}/{name}/eviction");
        let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": NS}});
        let api = &api;
        async move { api.call(Method::POST, &uri, body).await }
    };
    let (code, st) = evict("nope").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{st}");
    assert_eq!(st["message"], "pods \"nope\" not found");
    for name in ["running", "pending"] {
        let (code, p) = api
            .call(
                Method::POST,
                &pods,
                json!({"metadata": {"name": name, "labels": {"app": "a"}},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{p}");
    }
    let (code, p) = api
        .call_as(
            Method::PATCH,
            &format!("{pods}/running/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    let (code, pdb) = api
        .call(
            Method::POST,
            &pdbs,
            json!({"metadata": {"name": "budget"},
                   "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "a"}}}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{pdb}");
    // Not yet seen by the disruption controller.
    let (code, st) = evict("running").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{st}");
    assert_eq!(
        st["details"]["causes"][0]["message"],
        "The disruption budget budget is still being processed by the server."
    );
    let set_status = |allowed: i64| {
        let api = &api;
        let uri = format!("{pdbs}/budget/status");
        async move {
            let (code, p) = api
                .call_as(
                    Method::PATCH,
                    &uri,
                    "application/merge-patch+json",
                    json!({"status": {"observedGeneration": 1, "currentHealthy": 1,
                        "desiredHealthy": 1, "expectedPods": 2, "disruptionsAllowed": allowed}}),
                )
                .await;
            assert_eq!(code, StatusCode::OK, "{p}");
        }
    };
    set_status(0).await;
    let (code, st) = evict("running").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{st}");
    assert_eq!(st["reason"], "TooManyRequests");
    assert_eq!(
        st["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(st["details"]["causes"][0]["reason"], "DisruptionBudget");
    assert_eq!(
        st["details"]["causes"][0]["message"],
        "The disruption budget budget needs 1 healthy pods and has 1 currently"
    );
    let (code, p) = api
        .call(Method::GET, &format!("{pods}/running"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(p["metadata"]["deletionTimestamp"].is_null(), "{p}");
    // A Pending pod costs the budget nothing.
    let (code, st) = evict("pending").await;
    assert_eq!(code, StatusCode::CREATED, "{st}");
    assert_eq!(st["status"], "Success");
    // One disruption allowed: a dry run takes nothing.
    set_status(1).await;
    let (code, st) = api
        .call(
            Method::POST,
            &format!("{pods}/running/eviction"),
            json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": "running", "namespace": NS},
                "deleteOptions": {"dryRun": ["All"]}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{st}");
    let (_, pdb) = api
        .call(Method::GET, &format!("{pdbs}/budget"), Value::Null)
        .await;
    assert_eq!(pdb["status"]["disruptionsAllowed"], 1, "{pdb}");
    let (_, p) = api
        .call(Method::GET, &format!("{pods}/running"), Value::Null)
        .await;
    assert!(p["metadata"]["deletionTimestamp"].is_null(), "{p}");
    // Then for real: taken, recorded, and the pod deleted.
    let (code, st) = evict("running").await;
    assert_eq!(code, StatusCode::CREATED, "{st}");
    let (_, pdb) = api
        .call(Method::GET, &format!("{pdbs}/budget"), Value::Null)
        .await;
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0, "{pdb}");
    assert!(
        pdb["status"]["disruptedPods"]["running"].is_string(),
        "{pdb}"
    );
    let (code, p) = api
        .call(Method::GET, &format!("{pods}/running"), Value::Null)
        .await;
    assert!(
        code == StatusCode::NOT_FOUND || p["metadata"]["deletionTimestamp"].is_string(),
        "{p}"
    );
    // Discovery names the subresource's group, version and kind, which
    // kubectl drain looks for.
    let (_, v1) = api.call(Method::GET, "/api/v1", Value::Null).await;
    let ev = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/eviction")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&ev["group"], &ev["version"], &ev["kind"]),
        (&json!("policy"), &json!("v1"), &json!("Eviction")),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscalers_are_served_in_v2_and_v1_from_one_storage() {
    let api = Api::start().await;
    let v2 = format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers");
    let v1 = format!("/apis/autoscaling/v1/namespaces/{NS}/horizontalpodautoscalers");
    let mut w1 = api.watch(&format!("{v1}?watch=true")).await;
    // Created through v1 (what kubectl 1.29 autoscale sends).
    let (code, created) = api
        .call(
            Method::POST,
            &v1,
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                         "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    assert_eq!(created["spec"]["minReplicas"], 1);
    let ev = w1.next().await;
    assert_eq!(ev["type"], "ADDED", "{ev}");
    assert_eq!(ev["object"]["apiVersion"], "autoscaling/v1", "{ev}");
    assert_eq!(
        ev["object"]["spec"]["targetCPUUtilizationPercentage"], 50,
        "{ev}"
    );
    // Read through v2: the cpu metric, no annotations.
    let (code, got) = api
        .call(Method::GET, &format!("{v2}/web"), Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK, "{got}");
    assert_eq!(got["apiVersion"], "autoscaling/v2");
    assert_eq!(
        got["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
    );
    assert!(got["metadata"]["annotations"].is_null(), "{got}");
    // A v2-only field (behavior) and a status written through v2 ...
    let (code, patched) = api
        .call_as(
            Method::PATCH,
            &format!("{v2}/web"),
            "application/merge-patch+json",
            json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert_eq!(
        patched["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"], 0,
        "defaulted: {patched}"
    );
    let (code, st) = api
        .call_as(
            Method::PATCH,
            &format!("{v2}/web/status"),
            "application/merge-patch+json",
            json!({"status": {"currentReplicas": 2, "desiredReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 120, "averageValue": "120m"}}}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{st}");
    // ... read through v1, list and watch included.
    let (_, list) = api.call(Method::GET, &v1, Value::Null).await;
    let item = &list["items"][0];
    assert_eq!(list["apiVersion"], "autoscaling/v1", "{list}");
    assert_eq!(
        item["status"]["currentCPUUtilizationPercentage"], 120,
        "{list}"
    );
    assert!(
        item["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/behavior"].is_string(),
        "{list}"
    );
    let ev = w1.next().await;
    assert_eq!(ev["type"], "MODIFIED", "{ev}");
    assert_eq!(ev["object"]["apiVersion"], "autoscaling/v1", "{ev}");
    // A v1 update keeps the v2 fields it carried in annotations.
    let mut upd = item.clone();
    upd["spec"]["maxReplicas"] = json!(5);
    let (code, put) = api.call(Method::PUT, &format!("{v1}/web"), upd).await;
    assert_eq!(code, StatusCode::OK, "{put}");
    let (_, got) = api
        .call(Method::GET, &format!("{v2}/web"), Value::Null)
        .await;
    assert_eq!(got["spec"]["maxReplicas"], 5, "{got}");
    assert_eq!(
        got["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 10,
        "{got}"
    );
    assert!(got["metadata"]["annotations"].is_null(), "{got}");
    // Bad input names the field, in either version.
    let (code, st) = api
        .call(
            Method::POST,
            &v2,
            json!({"metadata": {"name": "bad"}, "spec": {"minReplicas": 0, "maxReplicas": 1,
                "scaleTargetRef": {"kind": "Deployment", "name": "web"}}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{st}");
    assert_eq!(
        st["message"],
        "HorizontalPodAutoscaler.autoscaling \"bad\" is invalid: [spec.minReplicas: Invalid value: 0: must be greater than or equal to 1, spec.metrics: Forbidden: must specify at least one Object or External metric to support scaling to zero replicas]"
    );
    // The Table kubectl prints.
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(&v2)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(Some(Identity {
        user: "verbs-admin".into(),
        groups: vec!["system:masters".into()],
    }));
    let resp = api.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let table: Value = serde_json::from_slice(&bytes).expect("a Table");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        [
            "Name",
            "Reference",
            "Targets",
            "MinPods",
            "MaxPods",
            "Replicas",
            "Age"
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[1], "Deployment/web");
    assert_eq!(cells[2], "cpu: 120%/50%");
    assert_eq!(cells[3], "1");
    assert_eq!(cells[4], 5);
    assert_eq!(cells[5], 2);
}
