//! What kube-apiserver refuses, we refuse: the write path's typed checks
//! (every served type, every write verb), `fieldValidation`, the metadata
//! rules, against the real binary with real etcd, real kubectl binaries
//! and raw requests through the kube crate's client.
//!
//! One server per test function; `random_writes_store_only_typed_objects`
//! is the property test: random JSON, merge, strategic merge and apply
//! patches (and whole-object updates) against every served type are either
//! refused with a 4xx or leave an object that decodes as the typed struct.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api;
use proptest::prelude::*;
use rke2_testbed::{Server, ServerOpts, kubectls};
use serde_json::{Map, Value, json};

async fn start_server() -> (Server, kube::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(Path::new(env!("CARGO_BIN_EXE_rke2")), ServerOpts::default())
        .expect("starting rke2 server");
    let client = server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    (server, client)
}

/// One answer: code, `Warning` header texts, body.
struct Answer {
    code: u16,
    warnings: Vec<String>,
    body: Value,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

async fn send(client: &kube::Client, method: &str, path: &str, ct: &str, body: &[u8]) -> Answer {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(body.to_vec().into())
        .unwrap();
    let resp = client.send(req).await.expect("request sent");
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            // `299 - "text"`, the text JSON-quoted.
            let quoted = v.split_once(" - ").map(|(_, t)| t).unwrap_or(v);
            serde_json::from_str::<String>(quoted).unwrap_or_else(|_| quoted.to_string())
        })
        .collect();
    let bytes = resp.into_body().collect_bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        code,
        warnings,
        body,
    }
}

async fn send_json(client: &kube::Client, method: &str, path: &str, ct: &str, v: &Value) -> Answer {
    send(client, method, path, ct, &serde_json::to_vec(v).unwrap()).await
}

const MERGE: &str = "application/merge-patch+json";
const SMP: &str = "application/strategic-merge-patch+json";
const JSONPATCH: &str = "application/json-patch+json";
const APPLY: &str = "application/apply-patch+yaml";
const JSON: &str = "application/json";

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_path_refuses_what_kube_apiserver_refuses() {
    let (server, client) = start_server().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let deps = "/apis/apps/v1/namespaces/default/deployments";
    let created = send_json(
        &client,
        "POST",
        cms,
        JSON,
        &json!({"metadata": {"name": "c1"}, "data": {"a": "1"}}),
    )
    .await;
    assert_eq!(created.code, 201, "{}", created.body);
    let uid = created.body["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let created = send_json(&client, "POST", deps, JSON, &deployment("d1")).await;
    assert_eq!(created.code, 201, "{}", created.body);

    // Wrong types through every patch kind: 422 naming the field, nothing stored.
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1"),
        MERGE,
        &json!({"data": {"a": {}}}),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert_eq!(a.body["reason"], "Invalid");
    assert!(
        a.message().contains("patch: Invalid value") && a.message().contains("data.a"),
        "{}",
        a.message()
    );
    for (ct, patch) in [
        (MERGE, json!({"spec": {"replicas": "three"}})),
        (SMP, json!({"spec": {"replicas": "three"}})),
        (
            JSONPATCH,
            json!([{"op": "replace", "path": "/spec/replicas", "value": "three"}]),
        ),
        (SMP, json!({"spec": {"replicas": {"$retainKeys": []}}})),
        (SMP, json!({"spec": {"replicas": 3_000_000_000u64}})),
    ] {
        let a = send_json(&client, "PATCH", &format!("{deps}/d1"), ct, &patch).await;
        assert_eq!(a.code, 422, "{ct} {patch}: {}", a.body);
        assert!(
            a.message().contains("spec.replicas"),
            "{ct}: {}",
            a.message()
        );
    }
    let a = send_json(&client, "PATCH", &format!("{deps}/d1?fieldManager=t"), APPLY,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"}, "spec": {"replicas": "three"}})).await;
    assert_eq!(a.code, 422, "{}", a.body);
    let a = send_json(&client, "PATCH", &format!("{deps}/d1?fieldManager=t"), APPLY,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"}, "spec": {"bogus": 1}})).await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(
        a.message()
            .ends_with(".spec.bogus: field not declared in schema"),
        "{}",
        a.message()
    );
    let got = send(&client, "GET", &format!("{deps}/d1"), JSON, b"").await;
    assert_eq!(got.body["spec"]["replicas"], 0, "nothing was stored");
    serde_json::from_value::<api::apps::v1::Deployment>(got.body).expect("stored object decodes");
    // Create and update bodies: 400 as upstream's decoder.
    let mut bad = deployment("d2");
    bad["spec"]["replicas"] = json!("three");
    let a = send_json(&client, "POST", deps, JSON, &bad).await;
    assert_eq!(a.code, 400, "{}", a.body);
    assert!(
        a.message().starts_with(
            "Deployment in version \"v1\" cannot be handled as a Deployment: spec.replicas:"
        ),
        "{}",
        a.message()
    );
    let a = send_json(
        &client,
        "PUT",
        &format!("{cms}/c1"),
        JSON,
        &json!({"metadata": {"name": "c1"}, "data": {"a": 1}}),
    )
    .await;
    assert_eq!(a.code, 400, "{}", a.body);
    // A directive whose shape is wrong is refused, not stored as {}.
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1"),
        SMP,
        &json!({"data": {"$retainKeys": ["a"], "b": "2"}}),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);

    // fieldValidation: Strict refuses, Warn (the default) warns and drops,
    // Ignore drops silently; duplicates count too.
    let body =
        br#"{"metadata": {"name": "c2"}, "data": {"a": "1"}, "bogus": 1, "data": {"b": "2"}}"#;
    let a = send(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=Strict"),
        JSON,
        body,
    )
    .await;
    assert_eq!(a.code, 400, "{}", a.body);
    assert_eq!(
        a.message(),
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"bogus\", duplicate field \"data\""
    );
    let a = send(&client, "POST", cms, JSON, body).await;
    assert_eq!(a.code, 201, "{}", a.body);
    assert_eq!(
        a.warnings,
        ["unknown field \"bogus\"", "duplicate field \"data\""]
    );
    assert!(
        a.body.get("bogus").is_none() && a.body["data"] == json!({"b": "2"}),
        "{}",
        a.body
    );
    let a = send(
        &client,
        "PATCH",
        &format!("{cms}/c2?fieldValidation=Ignore"),
        MERGE,
        br#"{"x": 1, "metadata": {"y": 2}}"#,
    )
    .await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert!(
        a.warnings.is_empty() && a.body.get("x").is_none(),
        "{:?} {}",
        a.warnings,
        a.body
    );
    let a = send(
        &client,
        "PATCH",
        &format!("{deps}/d1?fieldValidation=Strict"),
        SMP,
        br#"{"spec": {"template": {"spec": {"containers": [{"name": "c", "unknownNested": 1}]}}}}"#,
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(a.message().ends_with("strict decoding error: unknown field \"spec.template.spec.containers[0].unknownNested\""), "{}", a.message());
    let a = send(
        &client,
        "PATCH",
        &format!("{deps}/d1?fieldValidation=Warn"),
        JSONPATCH,
        br#"[{"op": "add", "path": "/spec/x", "value": 1, "foo": 2}]"#,
    )
    .await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(
        a.warnings,
        [
            "json patch unknown field \"foo\"",
            "unknown field \"spec.x\""
        ]
    );
    let a = send(
        &client,
        "POST",
        &format!("{cms}?fieldValidation=strict"),
        JSON,
        br#"{"metadata": {"name": "c3"}}"#,
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);

    // Identity: namespace, name and uid cannot move; creationTimestamp stays.
    let stamp = send(&client, "GET", &format!("{cms}/c1"), JSON, b"")
        .await
        .body["metadata"]["creationTimestamp"]
        .clone();
    for (patch, code, msg) in [
        (
            json!([{"op": "replace", "path": "/metadata/namespace", "value": "kube-system"}]),
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
        ),
        (
            json!([{"op": "replace", "path": "/metadata/name", "value": "other"}]),
            400,
            "the name of the object (other) does not match the name on the URL (c1)",
        ),
        (
            json!([{"op": "replace", "path": "/metadata/uid", "value": "0000"}]),
            422,
            "ConfigMap \"c1\" is invalid: metadata.uid: Invalid value: \"0000\": field is immutable",
        ),
    ] {
        let a = send_json(&client, "PATCH", &format!("{cms}/c1"), JSONPATCH, &patch).await;
        assert_eq!((a.code, a.message()), (code, msg), "{patch}");
    }
    let a = send_json(&client, "PATCH", &format!("{cms}/c1"), JSONPATCH,
        &json!([{"op": "replace", "path": "/metadata/creationTimestamp", "value": "2001-01-01T00:00:00Z"}])).await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.body["metadata"]["creationTimestamp"], stamp);
    assert_eq!(a.body["metadata"]["uid"], uid.as_str());
    let mut moved = a.body.clone();
    moved["metadata"]["namespace"] = json!("kube-system");
    let a = send_json(&client, "PUT", &format!("{cms}/c1"), JSON, &moved).await;
    assert_eq!(a.code, 400, "{}", a.body);
    let missing = send(
        &client,
        "GET",
        "/api/v1/namespaces/kube-system/configmaps/c1",
        JSON,
        b"",
    )
    .await;
    assert_eq!(missing.code, 404, "nothing moved to kube-system");

    // Metadata and data rules.
    let ann = |k: &str, v: String| json!({"metadata": {"annotations": {k: v}}});
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1"),
        MERGE,
        &ann("bad key!", "x".into()),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(
        a.message().starts_with(
            "ConfigMap \"c1\" is invalid: metadata.annotations: Invalid value: \"bad key!\""
        ),
        "{}",
        a.message()
    );
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1"),
        MERGE,
        &ann("big", "x".repeat(256 * 1024)),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(
        a.message()
            .ends_with("metadata.annotations: Too long: may not be more than 262144 bytes"),
        "{}",
        a.message()
    );
    for key in ["..", ".", "a/b", "..x"] {
        let a = send_json(
            &client,
            "PATCH",
            &format!("{cms}/c1"),
            MERGE,
            &json!({"data": {key: "v"}}),
        )
        .await;
        assert_eq!(a.code, 422, "{key}: {}", a.body);
        assert!(
            a.message().contains(&format!("data[{key}]")),
            "{}",
            a.message()
        );
    }
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1"),
        MERGE,
        &json!({"data": {"big": "x".repeat(1024 * 1024 + 1)}}),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(
        a.message()
            .ends_with("[]: Too long: may not be more than 1048576 bytes"),
        "{}",
        a.message()
    );
    let a = send_json(
        &client,
        "POST",
        "/api/v1/namespaces/default/secrets",
        JSON,
        &json!({"metadata": {"name": "s1"}, "stringData": {"../x": "v"}}),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    let long = "m".repeat(129);
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1?fieldManager={long}"),
        MERGE,
        &json!({}),
    )
    .await;
    assert_eq!(
        (a.code, a.message()),
        (
            422,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes"
        )
    );
    let a = send_json(
        &client,
        "PATCH",
        &format!("{cms}/c1?fieldManager=a%07b"),
        MERGE,
        &json!({}),
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(
        a.message()
            .contains("invalid character U+0007 (at position 1)"),
        "{}",
        a.message()
    );
    let a = send_json(&client, "PATCH", &format!("{cms}/c1"), MERGE,
        &json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Delete", "fieldsType": "FieldsV2"}]}})).await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert!(a.message().contains("metadata.managedFields[0].operation: Invalid value: \"Delete\": must be `Apply` or `Update`")
        && a.message().contains("metadata.managedFields[0].fieldsType: Invalid value: \"FieldsV2\": must be `FieldsV1`"), "{}", a.message());

    // Real kubectl: it sends fieldValidation=Strict, so an unknown field in
    // a manifest is an error; --validate=warn prints upstream's warning.
    for (minor, bin) in kubectls().expect("kubectl binaries") {
        let dir = server.dir.path().join(format!("v{minor}"));
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!("k{minor}");
        let manifest = dir.join("cm.yaml");
        std::fs::write(&manifest, format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  a: \"1\"\nbogus: 1\n")).unwrap();
        let out = server
            .kubectl(&bin)
            .env("HOME", &dir)
            .args(["apply", "-f"])
            .arg(&manifest)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "1.{minor}: apply with an unknown field succeeded"
        );
        assert!(
            stderr.contains("strict decoding error: unknown field \"bogus\""),
            "1.{minor}: {stderr}"
        );
        let out = server
            .kubectl(&bin)
            .env("HOME", &dir)
            .args(["apply", "--validate=warn", "-f"])
            .arg(&manifest)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "1.{minor}: {stderr}");
        assert!(
            stderr.contains("Warning: unknown field \"bogus\""),
            "1.{minor}: {stderr}"
        );
        let out = server
            .kubectl(&bin)
            .env("HOME", &dir)
            .args([
                "patch",
                "deployment",
                "d1",
                "--type=merge",
                "-p",
                r#"{"spec":{"replicas":"three"}}"#,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("is invalid: patch: Invalid value"),
            "1.{minor}: {stderr}"
        );
    }
}

// ------------------------------------------------ parameters and limits

/// Query parameters, dry runs, resourceVersions ahead of the store, writes
/// larger than etcd takes and early refusals, with the real Python client,
/// every kubectl and curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_limits_as_kube_apiserver() {
    let (server, client) = start_server().await;
    let t0 = std::time::Instant::now();

    // The Python client: watch=True, dry runs, paging, generateName,
    // malformed integers, a resourceVersion ahead (tests/py/params.py).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/params.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&server.kubeconfig)
        .output()
        .expect("python3 runs (scripts/install.sh installs it and the kubernetes package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "tests/py/params.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{:?}: python client", t0.elapsed());

    // Raw requests: a misspelt dryRun never writes; a dry-run delete body
    // keeps the object, also for a deletecollection.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "raw-dry", "labels": {"raw": "dry"}}});
    let a = send_json(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps?dryRun=all",
        JSON,
        &cm,
    )
    .await;
    assert_eq!(a.code, 422, "{}", a.body);
    assert_eq!(
        a.message(),
        "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"all\"}: supported values: \"All\""
    );
    let a = send(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps/raw-dry",
        JSON,
        b"",
    )
    .await;
    assert_eq!(a.code, 404, "a refused dry run wrote: {}", a.body);
    let a = send_json(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        JSON,
        &cm,
    )
    .await;
    assert_eq!(a.code, 201, "{}", a.body);
    for path in [
        "/api/v1/namespaces/default/configmaps/raw-dry",
        "/api/v1/namespaces/default/configmaps?labelSelector=raw%3Ddry",
    ] {
        let a = send_json(
            &client,
            "DELETE",
            path,
            JSON,
            &json!({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]}),
        )
        .await;
        assert_eq!(a.code, 200, "{path}: {}", a.body);
        let a = send_json(&client, "DELETE", path, JSON, &json!({"dryRun": ["Al"]})).await;
        assert_eq!(a.code, 422, "{path}: {}", a.body);
        assert!(
            a.message().starts_with("DeleteOptions.meta.k8s.io"),
            "{}",
            a.message()
        );
        let a = send(
            &client,
            "GET",
            "/api/v1/namespaces/default/configmaps/raw-dry",
            JSON,
            b"",
        )
        .await;
        assert_eq!(
            a.code, 200,
            "a dry-run delete of {path} deleted: {}",
            a.body
        );
    }
    for (query, want) in [
        ("limit=ten", 400),
        ("timeoutSeconds=1e3&watch=1", 400),
        ("limit=2", 200),
        ("watch=0", 200),
    ] {
        let a = send(
            &client,
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?{query}"),
            JSON,
            b"",
        )
        .await;
        assert_eq!(a.code, want, "{query}: {}", a.body);
        if want == 200 {
            assert_eq!(
                a.body["kind"], "ConfigMapList",
                "{query} is a list: {}",
                a.body
            );
        } else {
            assert!(
                a.message().contains("strconv.ParseInt"),
                "{query}: {}",
                a.message()
            );
        }
    }

    eprintln!("{:?}: raw requests", t0.elapsed());

    // kubectl's server-side dry runs (the delete sends dryRun in the body).
    for (v, kubectl) in kubectls().expect("kubectl binaries") {
        let run = |args: &[&str]| {
            server
                .kubectl(&kubectl)
                .args(args)
                .output()
                .expect("kubectl runs")
        };
        let out = run(&["delete", "configmap", "raw-dry", "--dry-run=server"]);
        assert!(
            out.status.success(),
            "kubectl 1.{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(&[
            "create",
            "configmap",
            &format!("dry-{v}"),
            "--dry-run=server",
            "-o",
            "name",
        ]);
        assert!(
            out.status.success(),
            "kubectl 1.{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(&[
            "get",
            "configmap",
            "raw-dry",
            &format!("dry-{v}"),
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "configmap/raw-dry",
            "kubectl 1.{v}: dry runs changed what is stored"
        );
    }

    eprintln!("{:?}: kubectl", t0.elapsed());

    // A list at a revision just ahead of the store waits for it.
    let a = send(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps?limit=1",
        JSON,
        b"",
    )
    .await;
    let now: i64 = a.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ahead = format!(
        "/api/v1/namespaces/default/configmaps?resourceVersion={}&resourceVersionMatch=NotOlderThan",
        now + 1
    );
    let (waited, made) = tokio::join!(send(&client, "GET", &ahead, JSON, b""), async {
        send_json(
            &client,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            JSON,
            &json!({"metadata": {"name": "catch-up"}}),
        )
        .await
    });
    assert_eq!(made.code, 201, "{}", made.body);
    assert_eq!(waited.code, 200, "{}", waited.body);
    let got: i64 = waited.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        got > now,
        "served revision {got}, asked for at least {}",
        now + 1
    );
    // A single object at a revision that never comes: 504 after the wait
    // (kubectl's raw GET does not retry it, as the kube crate's client does).
    let (_, kubectl) = kubectls()
        .expect("kubectl binaries")
        .pop()
        .expect("a kubectl");
    let out = server
        .kubectl(&kubectl)
        .args([
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps/catch-up?resourceVersion=999999999",
        ])
        .output()
        .expect("kubectl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("(Timeout): Too large resource version: 999999999, current: "),
        "{err}"
    );
    eprintln!("{:?}: catch-up", t0.elapsed());
    let big = |name: &str, bytes: usize| {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name},
            "involvedObject": {"kind": "ConfigMap", "namespace": "default", "name": "catch-up"},
            "reason": "Big", "message": "x".repeat(bytes)})
    };
    let events = "/api/v1/namespaces/default/events";
    let a = send_json(&client, "POST", events, JSON, &big("too-big", 1_600_000)).await;
    assert_eq!(a.code, 413, "{}", a.body);
    assert_eq!(a.body["reason"], "RequestEntityTooLarge");
    eprintln!("{:?}: 413", t0.elapsed());
    let a = send(&client, "GET", &format!("{events}/too-big"), JSON, b"").await;
    assert_eq!(a.code, 404, "{}", a.body);
    for i in 0..4 {
        let a = send_json(
            &client,
            "POST",
            events,
            JSON,
            &big(&format!("large-{i}"), 1_200_000),
        )
        .await;
        assert_eq!(a.code, 201, "large-{i}: {}", a.message());
        eprintln!("{:?}: large-{i}", t0.elapsed());
    }
    let a = send(
        &client,
        "GET",
        &format!("{events}?fieldSelector=reason%3DBig"),
        JSON,
        b"",
    )
    .await;
    assert_eq!(a.code, 200, "{}", a.message());
    assert_eq!(
        a.body["items"].as_array().map(Vec::len),
        Some(4),
        "{}",
        a.message()
    );
    eprintln!("{:?}: large writes", t0.elapsed());

    // An early refusal (no credentials: 401 before the body is read) is
    // the answer the client sees, over HTTP/2 and HTTP/1.1, mid-upload.
    let upload = server.dir.path().join("upload.json");
    std::fs::write(&upload, vec![b' '; 2 * 1024 * 1024]).unwrap();
    let url = format!(
        "https://{}:6443/api/v1/namespaces/default/configmaps",
        server.ip
    );
    let ca = server.data_dir.join("server/tls/server-ca.crt");
    for proto in ["--http2", "--http1.1"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", proto, "--cacert"])
            .arg(&ca)
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", upload.display()))
            .args([
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                &url,
            ])
            .output()
            .expect("curl runs (scripts/install.sh installs it)");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.starts_with("401 "),
            "curl {proto}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want_version = if proto == "--http2" { " 2" } else { " 1.1" };
        assert!(said.ends_with(want_version), "curl {proto} spoke {said}");
    }
}

// ------------------------------------------------------------ property test

/// The typed decode that says whether a stored object is one a Go client
/// could read.
type Decode = fn(Value) -> Result<(), String>;

/// A valid object of every served type, and its typed decode.
fn seeds() -> Vec<(&'static str, Value, Decode)> {
    fn dec<T: serde::de::DeserializeOwned>(v: Value) -> Result<(), String> {
        serde_json::from_value::<T>(v)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]}],
        "schedulerName": "nobody", "nodeSelector": {"nowhere": "true"}});
    let template = json!({"metadata": {"labels": {"app": "p"}}, "spec": pod_spec.clone()});
    vec![
        (
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prop-ns"}}),
            dec::<api::core::v1::Namespace>,
        ),
        (
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "prop-node", "labels": {"a": "b"}}, "spec": {"unschedulable": true}}),
            dec::<api::core::v1::Node>,
        ),
        (
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prop-pod"}, "spec": pod_spec}),
            dec::<api::core::v1::Pod>,
        ),
        (
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prop-svc"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "p"}}}),
            dec::<api::core::v1::Service>,
        ),
        (
            "/api/v1/namespaces/default/endpoints",
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "prop-ep"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
            dec::<api::core::v1::Endpoints>,
        ),
        (
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "prop-eps", "labels": {"kubernetes.io/service-name": "prop-svc"}},
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}], "ports": [{"name": "http", "port": 80}]}),
            dec::<api::discovery::v1::EndpointSlice>,
        ),
        (
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prop-cm"}, "data": {"a": "1"}}),
            dec::<api::core::v1::ConfigMap>,
        ),
        (
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prop-secret"}, "data": {"a": "MQ=="}}),
            dec::<api::core::v1::Secret>,
        ),
        (
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prop-sa"}}),
            dec::<api::core::v1::ServiceAccount>,
        ),
        (
            "/api/v1/namespaces/default/events",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "prop-ev"}, "involvedObject": {"kind": "Pod", "name": "x"}, "reason": "R", "message": "m", "type": "Normal"}),
            dec::<api::core::v1::Event>,
        ),
        (
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "prop-lease"}, "spec": {"holderIdentity": "h", "leaseDurationSeconds": 10}}),
            dec::<api::coordination::v1::Lease>,
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "prop-deploy"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "p"}}, "template": template.clone()}}),
            dec::<api::apps::v1::Deployment>,
        ),
        (
            "/apis/apps/v1/namespaces/default/replicasets",
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "prop-rs"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "p"}}, "template": template.clone()}}),
            dec::<api::apps::v1::ReplicaSet>,
        ),
        (
            "/apis/apps/v1/namespaces/default/daemonsets",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "prop-ds"}, "spec": {"selector": {"matchLabels": {"app": "p"}}, "template": template.clone()}}),
            dec::<api::apps::v1::DaemonSet>,
        ),
        (
            "/apis/batch/v1/namespaces/default/jobs",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "prop-job"}, "spec": {"suspend": true, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}}),
            dec::<api::batch::v1::Job>,
        ),
        (
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            // A request made once with `openssl req` (CN=prop, O=props):
            // its signature does not age.
            json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": "prop-csr"}, "spec": {
                "request": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KTUlIWk1JR0JBZ0VBTUI4eERUQUxCZ05WQkFNTUJIQnliM0F4RGpBTUJnTlZCQW9NQlhCeWIzQnpNRmt3RXdZSApLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFTmlXT2Z4dlFQb1JtSTVoTC9Vczh2eU9FWVBNNjR4bjNIbHBHCkpIaGVJOHdXZ0pIZmtrZWFPR2lZNlNJVlNoZG1PRUc4ci9xajFrVFVtRGVQWFp2OHdxQUFNQW9HQ0NxR1NNNDkKQkFNQ0EwY0FNRVFDSUFWbnJUVWdhaG0rMElvNmN6UFRVUGs4TzFCRlRrb25VSENYYjFhRUZJSlFBaUFMOTdmTwpoMWdhLy81bHRSV0ZybWllejc2bFpGTmh0OERlWEptYm54a3dUQT09Ci0tLS0tRU5EIENFUlRJRklDQVRFIFJFUVVFU1QtLS0tLQo=",
                "signerName": "example.com/prop", "usages": ["client auth"]}}),
            dec::<api::certificates::v1::CertificateSigningRequest>,
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "prop-role"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
            dec::<api::rbac::v1::Role>,
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "prop-clusterrole"},
                "rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
            dec::<api::rbac::v1::ClusterRole>,
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "prop-rb"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prop-role"},
                "subjects": [{"kind": "User", "name": "prop"}]}),
            dec::<api::rbac::v1::RoleBinding>,
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "prop-crb"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "prop-clusterrole"},
                "subjects": [{"kind": "Group", "name": "props"}]}),
            dec::<api::rbac::v1::ClusterRoleBinding>,
        ),
    ]
}

/// Keys that reach real fields of the seeds, directives, and a few others.
fn arb_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "metadata",
        "labels",
        "annotations",
        "name",
        "namespace",
        "uid",
        "finalizers",
        "spec",
        "status",
        "data",
        "binaryData",
        "stringData",
        "replicas",
        "selector",
        "matchLabels",
        "template",
        "containers",
        "image",
        "env",
        "value",
        "ports",
        "port",
        "containerPort",
        "targetPort",
        "subsets",
        "addresses",
        "ip",
        "holderIdentity",
        "leaseDurationSeconds",
        "suspend",
        "unschedulable",
        "taints",
        "type",
        "reason",
        "count",
        "a",
        "b",
        "c",
        "$patch",
        "$retainKeys",
        "$setElementOrder/containers",
        "managedFields",
        "ownerReferences",
        "creationTimestamp",
        "nodeSelector",
        "bogus",
    ])
    .prop_map(str::to_string)
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(1),
            Just(80),
            Just(i64::from(i32::MAX) + 1),
            any::<i64>()
        ]
        .prop_map(|n| json!(n)),
        Just(json!(1.5)),
        prop::sample::select(vec![
            "",
            "x",
            "1",
            "MQ==",
            "TCP",
            "delete",
            "replace",
            "2024-01-01T00:00:00Z",
            "a/b",
            "..",
            "Bad Name"
        ])
        .prop_map(|s| json!(s)),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 40, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_pointer() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/metadata/labels/x",
        "/metadata/annotations",
        "/metadata/namespace",
        "/metadata/name",
        "/metadata/uid",
        "/data/a",
        "/data",
        "/spec",
        "/spec/replicas",
        "/spec/selector",
        "/spec/template/spec/containers/0/image",
        "/spec/template/spec/containers/0",
        "/spec/containers/0/env/0/value",
        "/spec/ports/0/port",
        "/subsets/0/addresses/0/ip",
        "/spec/holderIdentity",
        "/status",
        "/kind",
        "/apiVersion",
        "/involvedObject/name",
    ])
    .prop_map(str::to_string)
}

/// One random write against a seed: (method, content type, body).
fn arb_write() -> impl Strategy<Value = (usize, &'static str, &'static str, Value)> {
    let seed = 0..15usize;
    prop_oneof![
        (seed.clone(), arb_json()).prop_map(|(s, v)| (s, "PATCH", MERGE, v)),
        (seed.clone(), arb_json()).prop_map(|(s, v)| (s, "PATCH", SMP, v)),
        (
            seed.clone(),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["add", "replace", "remove", "copy", "move"]),
                    arb_pointer(),
                    arb_json()
                ),
                1..3
            )
        )
            .prop_map(|(s, ops)| {
                let ops: Vec<Value> = ops
                    .into_iter()
                    .map(|(op, path, value)| match op {
                        "copy" | "move" => {
                            json!({"op": op, "from": "/metadata/labels", "path": path})
                        }
                        "remove" => json!({"op": op, "path": path}),
                        _ => json!({"op": op, "path": path, "value": value}),
                    })
                    .collect();
                (s, "PATCH", JSONPATCH, Value::Array(ops))
            }),
        (seed.clone(), arb_json()).prop_map(|(s, v)| (s, "PATCH", APPLY, v)),
        (seed, arb_json()).prop_map(|(s, v)| (s, "PUT", JSON, v)),
    ]
}

/// Merges a random value over the seed (apply and PUT bodies should mostly
/// be objects of the seed's kind and name, or the case only tests a 4xx).
fn over_seed(seed: &Value, v: Value) -> Value {
    let mut out = seed.clone();
    if let Value::Object(m) = v {
        for (k, val) in m {
            out[k] = val;
        }
    }
    if let Some(meta) = out["metadata"].as_object_mut() {
        meta.insert("name".into(), seed["metadata"]["name"].clone());
    }
    out
}

#[test]
fn random_writes_store_only_typed_objects() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(start_server());
    let seeds = seeds();
    let mut paths = Vec::new();
    for (coll, obj, _) in &seeds {
        let a = rt.block_on(send_json(&client, "POST", coll, JSON, obj));
        assert_eq!(a.code, 201, "seed {coll}: {}", a.body);
        paths.push((
            format!("{coll}/{}", obj["metadata"]["name"].as_str().unwrap()),
            a.body["metadata"]["uid"].clone(),
        ));
    }
    let outcomes = std::sync::Mutex::new(std::collections::BTreeMap::<(u16, &str), u32>::new());
    let config = ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(w in arb_write())| {
        let (i, method, ct, body) = w;
        let (coll, seed, decode) = &seeds[i];
        let (path, uid) = &paths[i];
        let body = match (method, ct) {
            ("PUT", _) => {
                let mut b = over_seed(seed, body);
                let current = rt.block_on(send(&client, "GET", path, JSON, b"")).body;
                if let Some(meta) = b["metadata"].as_object_mut() {
                    meta.insert("resourceVersion".into(), current["metadata"]["resourceVersion"].clone());
                }
                b
            }
            (_, APPLY) => over_seed(seed, body),
            _ => body,
        };
        let query = if ct == APPLY { "?fieldManager=prop&force=true" } else { "" };
        let a = rt.block_on(send_json(&client, method, &format!("{path}{query}"), ct, &body));
        prop_assert!(
            (200..300).contains(&a.code) || (400..500).contains(&a.code),
            "{method} {ct} {body} on {coll}: {} {}", a.code, a.body
        );
        if (400..500).contains(&a.code) {
            prop_assert_eq!(&a.body["kind"], "Status", "a refusal is a Status: {}", a.body);
        }
        *outcomes.lock().unwrap().entry((a.code, ct)).or_default() += 1;
        let stored = rt.block_on(send(&client, "GET", path, JSON, b""));
        prop_assert_eq!(stored.code, 200, "{} after {} {} {}", path, method, ct, body);
        if let Err(e) = decode(stored.body.clone()) {
            prop_assert!(false, "after {method} {ct} {body} on {coll} the stored object does not decode: {e}\n{}", stored.body);
        }
        prop_assert_eq!(&stored.body["metadata"]["uid"], uid, "uid kept");
        prop_assert_eq!(&stored.body["metadata"]["name"], &seed["metadata"]["name"], "name kept");
        if (200..300).contains(&a.code)
            && let Err(e) = decode(a.body.clone())
        {
            prop_assert!(false, "answer does not decode: {e}\n{}", a.body);
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    eprintln!("outcomes (code, content type): {outcomes:?}");
    // The generator must reach both sides, or the test proves little.
    let accepted: u32 = outcomes
        .iter()
        .filter(|((c, _), _)| *c < 300)
        .map(|(_, n)| n)
        .sum();
    let refused: u32 = outcomes
        .iter()
        .filter(|((c, _), _)| *c >= 400)
        .map(|(_, n)| n)
        .sum();
    assert!(
        accepted >= 40 && refused >= 40,
        "accepted {accepted}, refused {refused}"
    );
    drop(server);
}
