//! Integration tests of `rke2 server`: the real binary, real etcd, and the
//! kube crate as the client.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use rke2_testbed::{Server, ServerOpts, etcd_child, eventually};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(90);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    let resp = client
        .send(b.body(body.into()).unwrap())
        .await
        .expect("request sent");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap_or_default();
    (code, String::from_utf8_lossy(&bytes).to_string())
}

fn cm(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes; /proc/<pid>/stat says 'Z'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Trust material, tokens, kubeconfig mode, node, built-in objects, and a
/// restart that changes nothing but a new tls-san.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_files_node_and_restart() {
    let mut s = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some(
                "token: my-shared-secret\ntls-san:\n  - my-kubernetes-domain.com\n".into(),
            ),
            ..Default::default()
        },
    )
    .unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    let tls = s.data_dir.join("server/tls");
    for f in [
        "server-ca.crt",
        "client-ca.crt",
        "request-header-ca.crt",
        "etcd/server-ca.crt",
        "etcd/peer-ca.crt",
        "service.key",
    ] {
        assert!(tls.join(f).exists(), "{f} missing");
    }
    for f in [
        "server-ca.key",
        "client-ca.key",
        "service.key",
        "serving-kube-apiserver.key",
    ] {
        assert_eq!(mode(&tls.join(f)), 0o600, "{f}");
    }
    // Token: K10<sha256 of server-ca.crt>::server:<the given password>.
    let token = std::fs::read_to_string(s.data_dir.join("server/token")).unwrap();
    let ca = std::fs::read(tls.join("server-ca.crt")).unwrap();
    assert_eq!(
        token.trim(),
        format!("K10{}::server:my-shared-secret", rke2_trust::ca_hash(&ca))
    );
    assert_eq!(
        std::fs::read_to_string(s.data_dir.join("server/node-token")).unwrap(),
        token
    );
    assert_eq!(mode(&s.data_dir.join("server/token")), 0o600);
    assert_eq!(mode(&s.kubeconfig), 0o600);
    let serving = std::fs::read_to_string(tls.join("serving-kube-apiserver.crt")).unwrap();
    let sans = rke2_trust::cert_san_strings(&serving).unwrap();
    for want in [
        "my-kubernetes-domain.com",
        "kubernetes.default.svc.cluster.local",
        "10.43.0.1",
        s.ip.as_str(),
    ] {
        assert!(sans.iter().any(|x| x == want), "{want} not in {sans:?}");
    }

    // The node: Ready (once its pod network is configured), server roles,
    // the runtime named, Lease renewed.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually(
        Duration::from_secs(60),
        "node registered and Ready",
        || async {
            let n = nodes.get_opt(&s.node_name).await.ok().flatten()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(n)
        },
    )
    .await
    .unwrap();
    assert!(
        node.status
            .as_ref()
            .unwrap()
            .node_info
            .as_ref()
            .unwrap()
            .container_runtime_version
            .starts_with("containerd://"),
        "{:?}",
        node.status.as_ref().unwrap().node_info
    );
    assert!(
        node.spec.as_ref().unwrap().pod_cidr.is_some(),
        "pod CIDR assigned"
    );
    let labels = node.metadata.labels.clone().unwrap();
    for r in ["control-plane", "etcd", "master"] {
        assert_eq!(
            labels
                .get(&format!("node-role.kubernetes.io/{r}"))
                .map(String::as_str),
            Some("true")
        );
    }
    let ready = node
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    let cpu = node.status.as_ref().unwrap().capacity.as_ref().unwrap()["cpu"]
        .0
        .clone();
    assert!(cpu.parse::<u32>().unwrap() >= 1);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = eventually(Duration::from_secs(30), "lease", || async {
        leases
            .get_opt(&s.node_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.renew_time)
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(40), "lease renewal", || async {
        let t = leases.get(&s.node_name).await.ok()?.spec?.renew_time?;
        (t != first).then_some(())
    })
    .await
    .unwrap();

    // Built-in objects.
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let svc: Service = Api::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.1"));
    let ep: Endpoints = Api::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(
        ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        s.ip
    );

    // Restart: nothing changes. Then a new tls-san re-issues only the serving cert.
    let snapshot = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        for f in [
            "server-ca.crt",
            "server-ca.key",
            "client-ca.crt",
            "serving-kube-apiserver.crt",
            "client-admin.crt",
            "etcd/server-ca.crt",
        ] {
            m.insert(f.to_string(), std::fs::read(dir.join(f)).unwrap());
        }
        m
    };
    let before = snapshot(&tls);
    let st = s
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert!(st.success(), "SIGTERM exit status {st}");
    // The restart also asks for a readable kubeconfig, as the seed page's
    // RKE2_KUBECONFIG_MODE note describes.
    s.opts
        .env
        .push(("RKE2_KUBECONFIG_MODE".into(), "0644".into()));
    s.spawn().unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    eventually(Duration::from_secs(30), "kubeconfig mode 0644", || async {
        (mode(&s.kubeconfig) == 0o644).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        snapshot(&tls),
        before,
        "a plain restart changed trust material"
    );
    assert_eq!(
        std::fs::read_to_string(s.data_dir.join("server/token")).unwrap(),
        token
    );
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes.get(&s.node_name).await.unwrap().metadata.uid,
        node.metadata.uid,
        "restart re-created the node"
    );

    let st = s
        .stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(30))
        .unwrap();
    assert!(st.success(), "SIGINT exit status {st}");
    s.opts.config_yaml = Some("token: my-shared-secret\ntls-san:\n  - my-kubernetes-domain.com\n  - another-kubernetes-domain.com\n".into());
    s.spawn().unwrap();
    s.wait_ready(READY).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "serving cert re-issued",
        || async {
            let pem = std::fs::read_to_string(tls.join("serving-kube-apiserver.crt")).ok()?;
            rke2_trust::cert_san_strings(&pem)
                .ok()?
                .iter()
                .any(|x| x == "another-kubernetes-domain.com")
                .then_some(())
        },
    )
    .await
    .unwrap();
    let after = snapshot(&tls);
    for (f, bytes) in &before {
        if f == "serving-kube-apiserver.crt" {
            assert_ne!(&after[f], bytes, "serving cert not re-issued");
        } else {
            assert_eq!(
                &after[f], bytes,
                "{f} changed when only a tls-san was added"
            );
        }
    }
}

/// CRUD, selectors, paging, conflicts and the error Status of each kind
/// of bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_crud_selectors_paging_and_errors() {
    let mut s = Server::start(bin(), ServerOpts::default()).unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..12 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(
            &PostParams::default(),
            &cm(
                &format!("cm-{i:02}"),
                &[("tier", tier), ("app", "paging")],
                &[("i", &i.to_string())],
            ),
        )
        .await
        .unwrap();
    }
    // Label selectors, equality and set-based.
    let even = cms
        .list(&ListParams::default().labels("tier=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 6);
    let set = cms
        .list(&ListParams::default().labels("tier in (odd),app=paging"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 6);
    assert!(
        set.items
            .iter()
            .all(|c| c.metadata.labels.as_ref().unwrap()["tier"] == "odd")
    );
    // Field selector.
    let one = cms
        .list(&ListParams::default().fields("metadata.name=cm-03"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps?fieldSelector=spec.bogus%3Dx",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("field label not supported: spec.bogus"),
        "{body}"
    );
    // Paging: 12 objects in pages of 5, one consistent resourceVersion.
    let mut names = Vec::new();
    let mut lp = ListParams::default().labels("app=paging").limit(5);
    let mut rvs = Vec::new();
    loop {
        let page = cms.list(&lp).await.unwrap();
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        rvs.push(page.metadata.resource_version.clone());
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(names.len(), 12, "{names:?}");
    assert_eq!(rvs.len(), 3);
    assert!(
        rvs.windows(2).all(|w| w[0] == w[1]),
        "pages at different revisions: {rvs:?}"
    );

    // Stale resourceVersion: 409 and the stored object unchanged.
    let mut c = cms.get("cm-00").await.unwrap();
    let stale_rv = c.metadata.resource_version.clone();
    c.data.as_mut().unwrap().insert("i".into(), "fresh".into());
    cms.replace("cm-00", &PostParams::default(), &c)
        .await
        .unwrap();
    c.metadata.resource_version = stale_rv;
    c.data.as_mut().unwrap().insert("i".into(), "stale".into());
    match cms.replace("cm-00", &PostParams::default(), &c).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        }
        other => panic!("expected 409, got {other:?}"),
    }
    assert_eq!(cms.get("cm-00").await.unwrap().data.unwrap()["i"], "fresh");
    // AlreadyExists.
    match cms
        .create(&PostParams::default(), &cm("cm-01", &[], &[]))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected 409, got {other:?}"),
    }
    // Invalid name: 422 naming metadata.name.
    match cms
        .create(&PostParams::default(), &cm("Bad_Name", &[], &[]))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
            assert!(e.message.contains("metadata.name"), "{}", e.message);
        }
        other => panic!("expected 422, got {other:?}"),
    }
    // Unknown resource: 404.
    let (code, body) = raw(&client, "GET", "/api/v1/widgets", None, vec![]).await;
    assert_eq!(code, 404, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "NotFound");
    // Malformed JSON: 400 with the parser's position.
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        b"{\"metadata\": {\"name\": \"x\",}\n}".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("line 1") && body.contains("column"), "{body}");
    // Malformed YAML: 400.
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/yaml"),
        b"metadata:\n  name: [x\n".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    // YAML body accepted.
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n".to_vec(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    // Over 3 MiB: 413, nothing stored.
    let big = json!({"metadata": {"name": "big"}, "data": {"x": "a".repeat(3 * 1024 * 1024 + 10)}});
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("limit is 3145728"), "{body}");
    assert!(cms.get_opt("big").await.unwrap().is_none());
    // Missing namespace: 404 naming the namespace.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    match other
        .create(&PostParams::default(), &cm("x", &[], &[]))
        .await
    {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 404 && e.message.contains("namespaces \"nope\" not found"),
            "{e:?}"
        ),
        other => panic!("expected 404, got {other:?}"),
    }
    // Patches: merge, JSON patch, strategic merge.
    let (code, body) = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/cm-02",
        Some("application/merge-patch+json"),
        br#"{"data":{"added":"yes"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/cm-02",
        Some("application/json-patch+json"),
        br#"[{"op":"replace","path":"/data/i","value":"patched"}]"#.to_vec(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/cm-02",
        Some("application/strategic-merge-patch+json"),
        br#"{"data":{"added":null}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let got = cms.get("cm-02").await.unwrap().data.unwrap();
    assert_eq!(got.get("i").map(String::as_str), Some("patched"));
    assert!(!got.contains_key("added"));
    // Delete, then NotFound.
    cms.delete("cm-05", &DeleteParams::default()).await.unwrap();
    match cms.get("cm-05").await {
        Err(kube::Error::Api(e)) => assert_eq!(
            (e.code, e.message.as_str()),
            (404, "configmaps \"cm-05\" not found")
        ),
        other => panic!("expected 404, got {other:?}"),
    }
    // Deleting a namespace removes what is inside it.
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
    )
    .await
    .unwrap();
    let inside: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    inside
        .create(&PostParams::default(), &cm("inner", &[], &[]))
        .await
        .unwrap();
    ns.delete("doomed", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "namespace gone", || async {
        ns.get_opt("doomed")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        inside
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Pods: binding sets spec.nodeName once; status is written through
    // /status only. The pod is bound to a node name nothing runs (the
    // server's own node would run it and write its status).
    let target = "no-kubelet-node";
    // Another scheduler name: the built-in scheduler leaves this pod to the test.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "p1"}, "spec": {"schedulerName": "test-scheduler", "containers": [{"name": "c", "image": "busybox"}]}})).unwrap()).await.unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p1"}, "target": {"apiVersion": "v1", "kind": "Node", "name": target}});
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/p1/binding",
        Some("application/json"),
        serde_json::to_vec(&binding).unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/p1/binding",
        Some("application/json"),
        serde_json::to_vec(&binding).unwrap(),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let p = pods.get("p1").await.unwrap();
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some(target));
    let conds = p.status.as_ref().unwrap().conditions.clone().unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let patch = json!({"status": {"phase": "Running"}});
    pods.patch_status(
        "p1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    // A status change through the main resource is ignored.
    pods.patch(
        "p1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        pods.get("p1")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Running")
    );
    // Table output for pods carries kube-apiserver's columns.
    let req = http::Request::get("/api/v1/namespaces/default/pods")
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::<u8>::new().into())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let t: Value =
        serde_json::from_slice(&resp.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        [
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates"
        ]
    );
    assert_eq!(t["rows"][0]["cells"][2], "Running");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    // Without a client certificate: only health and version answer.
    let kc = std::fs::read_to_string(&s.kubeconfig).unwrap();
    let anon: Value = serde_saphyr_free_parse(&kc);
    let anon_path = s.dir.path().join("anon.yaml");
    std::fs::write(&anon_path, serde_json::to_string(&anon).unwrap()).unwrap();
    let anon_client = rke2_testbed::client_from_kubeconfig(&anon_path)
        .await
        .unwrap();
    for (path, want) in [
        ("/version", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/livez", 200),
        ("/api/v1/namespaces/default/configmaps", 401),
        ("/api", 401),
        ("/apis", 401),
    ] {
        let (code, body) = raw(&anon_client, "GET", path, None, vec![]).await;
        assert_eq!(code, want, "{path}: {body}");
    }
    let _ = s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
}

/// A kubeconfig without user credentials, as JSON (valid kubeconfig YAML).
fn serde_saphyr_free_parse(kc: &str) -> Value {
    let ca = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .unwrap()
        .trim()
        .trim_matches('"');
    let server = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .unwrap()
        .trim()
        .trim_matches('"');
    json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "default",
        "clusters": [{"name": "default", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "default", "user": {}}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
    })
}

/// Watch from a revision, watch-list with the initial-events bookmark,
/// 410 after compaction, and etcd restarted by the supervisor; SIGTERM
/// leaves no etcd behind and kill -9 of the server takes etcd with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_compaction_and_process_supervision() {
    let mut s = Server::start(bin(), ServerOpts::default()).unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("w1", &[("a", "b")], &[]))
        .await
        .unwrap();
    let mut c = cms.get("w1").await.unwrap();
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    cms.replace("w1", &PostParams::default(), &c).await.unwrap();
    cms.delete("w1", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
            .expect("stream open");
        let (kind, name) = match ev {
            WatchEvent::Added(o) => ("ADDED", o.metadata.name.unwrap()),
            WatchEvent::Modified(o) => ("MODIFIED", o.metadata.name.unwrap()),
            WatchEvent::Deleted(o) => ("DELETED", o.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        // The root CA publisher may write `kube-root-ca.crt` into the
        // namespace meanwhile (it is asynchronous to readiness): only this
        // test's object is counted.
        if name != "kube-root-ca.crt" {
            seen.push((kind, name));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("ADDED", "w1".to_string()),
            ("MODIFIED", "w1".to_string()),
            ("DELETED", "w1".to_string())
        ]
    );

    // Watch-list: initial ADDED events then a BOOKMARK marking their end.
    cms.create(&PostParams::default(), &cm("wl", &[], &[]))
        .await
        .unwrap();
    let (code, body) = {
        let req = http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1").body(Vec::<u8>::new().into()).unwrap();
        let resp = client.send(req).await.unwrap();
        let code = resp.status().as_u16();
        (
            code,
            String::from_utf8_lossy(&resp.into_body().collect_bytes().await.unwrap()).to_string(),
        )
    };
    assert_eq!(code, 200);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "wl"),
        "{body}"
    );
    let bm = lines
        .iter()
        .position(|e| e["type"] == "BOOKMARK")
        .expect("bookmark");
    assert_eq!(
        lines[bm]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert!(lines[..bm].iter().all(|e| e["type"] == "ADDED"));
    // sendInitialEvents without its companions is refused, never ignored.
    let (code, _) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 422);

    // Compaction: a watch of etcd's history from a compacted revision gets
    // ERROR 410. Events are watched from etcd directly (they have no watch
    // cache); for cached types a revision the cache still holds is served
    // from the cache, as in kube-apiserver, and one older than its window
    // goes to etcd like this (unit tests of watch_cache).
    let old_rv: i64 = rv.parse().unwrap();
    let now_rv: i64 = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let out = rke2_testbed::etcdctl(&s.data_dir, &s.ip, &["compaction", &now_rv.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = raw(
        &client,
        "GET",
        &format!(
            "/api/v1/namespaces/default/events?watch=true&resourceVersion={old_rv}&timeoutSeconds=5"
        ),
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    let ev: Value = serde_json::from_str(body.lines().next().expect("an event")).unwrap();
    assert_eq!(ev["type"], "ERROR", "{body}");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");

    // etcd killed: the server restarts it and the API serves again.
    let server_pid = s.pid().unwrap();
    let etcd1 = etcd_child(server_pid).expect("etcd child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(etcd1),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "etcd restarted and API writable",
        || async {
            let e = etcd_child(server_pid)?;
            (e != etcd1).then_some(())?;
            cms.create(&PostParams::default(), &cm(&format!("after-{e}"), &[], &[]))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await
    .unwrap();

    // SIGTERM: the server exits and its etcd is gone.
    let etcd2 = etcd_child(server_pid).unwrap();
    let st = s
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert!(st.success());
    assert!(!pid_alive(etcd2), "etcd {etcd2} outlived the server");

    // kill -9 of the server: etcd dies with it; a restart works and keeps data.
    s.spawn().unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    let pid = s.pid().unwrap();
    let etcd3 = etcd_child(pid).unwrap();
    s.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "etcd gone after kill -9",
        || async { (!pid_alive(etcd3)).then_some(()) },
    )
    .await
    .unwrap();
    drop(client);
    s.spawn().unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    assert!(
        cms.get_opt("wl").await.unwrap().is_some(),
        "data lost across kill -9"
    );
}

/// Bad configuration: exit code 2, a message naming file, key and value,
/// and nothing written to the data dir. A missing etcd names the package.
#[test]
fn bad_config_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases: [(&str, &[&str]); 4] = [
        (
            "cluster-cidr: 10.42.0.0/33\n",
            &["cluster-cidr", "10.42.0.0/33", "config.yaml"],
        ),
        (
            "write-kubeconfig-mode: rw-r\n",
            &["write-kubeconfig-mode", "rw-r", "config.yaml"],
        ),
        ("token: [unclosed\n", &["config.yaml", "line"]),
        (
            "node-taint:\n  - CriticalAddonsOnly=true\n",
            &["node-taint", "CriticalAddonsOnly=true"],
        ),
    ];
    for (yaml, needles) in cases {
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let out = std::process::Command::new(bin())
            .args(["server", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .arg("--write-kubeconfig")
            .arg(dir.path().join("k.yaml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{yaml}: {n:?} missing in {err}");
        }
        assert!(!data.exists(), "{yaml}: data dir was created");
        assert!(!dir.path().join("k.yaml").exists());
    }
    let out = std::process::Command::new(bin())
        .args(["server", "--etcd-binary", "/nonexistent/etcd", "--data-dir"])
        .arg(&data)
        .arg("--write-kubeconfig")
        .arg(dir.path().join("k.yaml"))
        .args(["--config", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd-server"), "{err}");
    assert!(!data.exists(), "data dir created despite missing etcd");
    // --version and --help.
    let v = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("rke2 version v1."));
    let h = std::process::Command::new(bin())
        .args(["server", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&h.stdout);
    for flag in [
        "--token",
        "--tls-san",
        "--node-taint",
        "--write-kubeconfig-mode",
        "--data-dir",
        "--cluster-cidr",
        "--server",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}

/// kill -9 at several points of a first start (trust material, etcd
/// start, bootstrap data, API), then a normal start: always Ready, with
/// the same token and CA as the interrupted start wrote (if it got that far).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_any_point_of_startup_then_restart_works() {
    for delay_ms in [30u64, 150, 400, 900] {
        let mut s = Server::start(bin(), ServerOpts::default()).unwrap();
        // The delay places the fault, it synchronises nothing.
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = s.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10));
        let ca_before = std::fs::read(s.data_dir.join("server/tls/server-ca.crt")).ok();
        s.spawn().unwrap();
        let client = s
            .wait_ready(READY)
            .await
            .unwrap_or_else(|e| panic!("after kill -9 at {delay_ms} ms: {e}"));
        if let Some(ca) = ca_before {
            assert_eq!(
                std::fs::read(s.data_dir.join("server/tls/server-ca.crt")).unwrap(),
                ca,
                "CA regenerated after kill at {delay_ms} ms"
            );
        }
        let token = std::fs::read_to_string(s.data_dir.join("server/token")).unwrap();
        assert!(
            token.starts_with("K10"),
            "token after kill at {delay_ms} ms: {token:?}"
        );
        let nodes: Api<Node> = Api::all(client);
        eventually(Duration::from_secs(60), "node registered", || async {
            nodes.get_opt(&s.node_name).await.ok().flatten()
        })
        .await
        .unwrap();
    }
}

/// One change made by the watch-cache test, as a watcher should see it.
struct Change {
    ns: &'static str,
    name: String,
    before: Option<String>,
    after: Option<String>,
    rv: String,
}

/// etcd's count of open watchers (its own metric), read with the server's
/// etcd client certificate.
fn etcd_watchers(s: &Server) -> Option<u64> {
    let tls = s.data_dir.join("server/tls/etcd");
    let out = std::process::Command::new("curl")
        .arg("-sf")
        .arg("--cacert")
        .arg(tls.join("server-ca.crt"))
        .arg("--cert")
        .arg(tls.join("client.crt"))
        .arg("--key")
        .arg(tls.join("client.key"))
        .arg(format!("https://{}:2379/metrics", s.ip))
        .output()
        .expect("curl (scripts/install.sh)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The watch cache: 150 client watches with different namespaces and
/// label selectors are served by a handful of etcd watches, and each sees
/// exactly the changes its selector makes visible (label moves arrive as
/// ADDED/DELETED), in order; so do watches pinned by `metadata.name` or a
/// pod's `spec.nodeName` (the cache's trigger index), and a pinned watch
/// that sees nothing still gets current bookmarks; a watch from an older
/// revision replays from the cache; a `resourceVersion=0` list comes from
/// the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cache_fans_out_with_exact_events() {
    const WATCHERS: usize = 150;
    let mut s = Server::start(bin(), ServerOpts::default()).unwrap();
    let client = s.wait_ready(READY).await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in ["wc-a", "wc-b"] {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        nss.create(&PostParams::default(), &n).await.unwrap();
    }
    let before_watchers = etcd_watchers(&s).expect("etcd watcher metric");
    let start_rv = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // After them, watches pinned to one name: (namespace, labels, name).
    // The last matches nothing.
    const PINNED: [(Option<&str>, Option<&str>, &str); 4] = [
        (Some("wc-b"), None, "c7"),
        (None, None, "c0"),
        (Some("wc-a"), Some("g=g1"), "c10"),
        (Some("wc-a"), None, "nothing"),
    ];
    // Watcher i: namespace a, b or all; selector g=g0/g1/g2 or none.
    let spec = |i: usize| -> (Option<&'static str>, Option<String>, Option<&'static str>) {
        if let Some(&(ns, sel, name)) = i.checked_sub(WATCHERS).and_then(|p| PINNED.get(p)) {
            return (ns, sel.map(str::to_string), Some(name));
        }
        let ns = [Some("wc-a"), Some("wc-b"), None][i % 3];
        let sel = [Some("g=g0"), Some("g=g1"), Some("g=g2"), None][(i / 3) % 4];
        (ns, sel.map(str::to_string), None)
    };
    let mut streams = Vec::new();
    for i in 0..WATCHERS + PINNED.len() {
        let (ns, sel, name) = spec(i);
        let api: Api<ConfigMap> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut wp = WatchParams::default().timeout(120);
        if let Some(sel) = &sel {
            wp = wp.labels(sel);
        }
        if let Some(name) = name {
            wp = wp.fields(&format!("metadata.name={name}"));
        }
        streams.push(api.watch(&wp, &start_rv).await.unwrap().boxed());
    }
    let during_watchers = etcd_watchers(&s).expect("etcd watcher metric");
    println!(
        "etcd watchers: {before_watchers} before, {during_watchers} with {WATCHERS} client watches"
    );
    assert!(
        during_watchers < before_watchers + 10,
        "{WATCHERS} client watches opened {} etcd watches",
        during_watchers - before_watchers.min(during_watchers)
    );

    // Creates, label moves (update with resourceVersion), data patches and
    // deletes, recorded with what each did to the labels.
    let mut changes: Vec<Change> = Vec::new();
    for k in 0..24 {
        let ns = if k % 2 == 0 { "wc-a" } else { "wc-b" };
        let g = format!("g{}", k % 3);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let c = api
            .create(
                &PostParams::default(),
                &cm(&format!("c{k}"), &[("g", &g)], &[]),
            )
            .await
            .unwrap();
        changes.push(Change {
            ns,
            name: format!("c{k}"),
            before: None,
            after: Some(g),
            rv: c.metadata.resource_version.unwrap(),
        });
    }
    for k in (0..24).step_by(2) {
        let ns = if k % 2 == 0 { "wc-a" } else { "wc-b" };
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let mut c = api.get(&format!("c{k}")).await.unwrap();
        let old = format!("g{}", k % 3);
        let new = format!("g{}", (k + 1) % 3);
        c.metadata.labels = Some(BTreeMap::from([("g".to_string(), new.clone())]));
        let c = api
            .replace(&format!("c{k}"), &PostParams::default(), &c)
            .await
            .unwrap();
        changes.push(Change {
            ns,
            name: format!("c{k}"),
            before: Some(old),
            after: Some(new),
            rv: c.metadata.resource_version.unwrap(),
        });
    }
    let label_of = |changes: &[Change], ns: &str, name: &str| {
        changes
            .iter()
            .rev()
            .find(|c| c.ns == ns && c.name == name)
            .and_then(|c| c.after.clone())
    };
    for k in (1..24).step_by(3) {
        let ns = if k % 2 == 0 { "wc-a" } else { "wc-b" };
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let c = api
            .patch(
                &format!("c{k}"),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"data": {"k": "v"}})),
            )
            .await
            .unwrap();
        let g = label_of(&changes, ns, &format!("c{k}"));
        changes.push(Change {
            ns,
            name: format!("c{k}"),
            before: g.clone(),
            after: g,
            rv: c.metadata.resource_version.unwrap(),
        });
    }
    for k in (0..24).step_by(5) {
        let ns = if k % 2 == 0 { "wc-a" } else { "wc-b" };
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let g = label_of(&changes, ns, &format!("c{k}"));
        api.delete(&format!("c{k}"), &DeleteParams::default())
            .await
            .unwrap();
        // The DELETED event carries the deletion's revision; the model
        // only needs the order, so the last known one stands in.
        changes.push(Change {
            ns,
            name: format!("c{k}"),
            before: g,
            after: None,
            rv: String::new(),
        });
    }

    // What watcher i must see, by the watch rules of selectors.
    let expected = |i: usize| -> Vec<(String, String)> {
        let (ns, sel, name) = spec(i);
        let m = |g: &Option<String>| {
            g.as_ref()
                .is_some_and(|g| sel.as_ref().is_none_or(|s| *s == format!("g={g}")))
        };
        changes
            .iter()
            .filter(|c| ns.is_none_or(|n| n == c.ns))
            .filter(|c| name.is_none_or(|n| n == c.name))
            .filter_map(|c| {
                let kind = match (
                    m(&c.before),
                    m(&c.after),
                    c.before.is_some(),
                    c.after.is_some(),
                ) {
                    (_, true, false, true) => "ADDED",
                    (true, true, _, _) => "MODIFIED",
                    (false, true, _, _) => "ADDED",
                    (true, false, _, _) => "DELETED",
                    _ => return None,
                };
                Some((kind.to_string(), format!("{}/{}", c.ns, c.name)))
            })
            .collect()
    };
    let mut checked = 0;
    for (i, stream) in streams.iter_mut().enumerate() {
        let want = expected(i);
        let mut got = Vec::new();
        let mut last_rv = 0i64;
        while got.len() < want.len() {
            let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "watcher {i} {:?}: stalled after {got:?}, wants {want:?}",
                        spec(i)
                    )
                })
                .unwrap()
                .unwrap_or_else(|| panic!("watcher {i}: stream ended after {got:?}"));
            let (kind, o) = match ev {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watcher {i}: {e:?}"),
            };
            let rv: i64 = o.metadata.resource_version.unwrap().parse().unwrap();
            assert!(rv > last_rv, "watcher {i}: resourceVersion went back");
            last_rv = rv;
            // All-namespace watchers also see the server's own ConfigMaps,
            // and every namespace has the root CA publisher's.
            if !o
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("")
                .starts_with("wc-")
                || o.metadata.name.as_deref() == Some("kube-root-ca.crt")
            {
                continue;
            }
            got.push((
                kind.to_string(),
                format!(
                    "{}/{}",
                    o.metadata.namespace.unwrap(),
                    o.metadata.name.unwrap()
                ),
            ));
        }
        assert_eq!(got, want, "watcher {i} {:?}", spec(i));
        checked += want.len();
    }
    println!(
        "watch cache: {} watchers, {checked} events checked",
        streams.len()
    );

    // The pinned watch that matches nothing sees no events, but its
    // bookmarks follow the cache (it would otherwise keep its start
    // revision and its client's next watch would fall out of the window).
    let last_rv: i64 = changes
        .iter()
        .filter_map(|c| c.rv.parse().ok())
        .max()
        .unwrap();
    let idle = streams.last_mut().unwrap();
    let mut seen = Vec::new();
    let fresh = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = idle.try_next().await.unwrap() {
            match ev {
                WatchEvent::Bookmark(b) => {
                    let rv: i64 = b.metadata.resource_version.parse().unwrap();
                    if rv >= last_rv {
                        return true;
                    }
                    seen.push(rv);
                }
                other => panic!("idle pinned watch got {other:?}"),
            }
        }
        false
    })
    .await;
    assert!(
        fresh == Ok(true),
        "idle pinned watch: no bookmark at or after {last_rv}, only {seen:?}"
    );

    // Pod watches by node: one from "any" (the cache's snapshot), one from
    // a revision (its replay); each sees its node's pods only, and binding
    // an unscheduled pod shows it as ADDED there. The pods are left to a
    // scheduler that does not run, on nodes nothing runs.
    let node_watch = |ns: Option<&str>, node: &str, rv: &str| {
        let api: Api<Pod> = match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let wp = WatchParams::default()
            .timeout(60)
            .fields(&format!("spec.nodeName={node}"));
        let rv = rv.to_string();
        async move { api.watch(&wp, &rv).await.unwrap().boxed() }
    };
    let mut on_n1 = node_watch(None, "wc-node-1", "0").await;
    let mut on_n2 = node_watch(Some("wc-a"), "wc-node-2", &start_rv).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "wc-a");
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut p = json!({"metadata": {"name": name}, "spec": {"schedulerName": "no-such-scheduler", "containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        serde_json::from_value(p).unwrap()
    };
    pods.create(&PostParams::default(), &pod("wp1", None))
        .await
        .unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "wp1"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "wc-node-1"}});
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/wc-a/pods/wp1/binding",
        Some("application/json"),
        serde_json::to_vec(&binding).unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    pods.create(&PostParams::default(), &pod("wp2", Some("wc-node-2")))
        .await
        .unwrap();
    pods.patch(
        "wp1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    pods.delete("wp1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    for (stream, want) in [
        (&mut on_n1, vec!["ADDED wp1", "MODIFIED wp1", "DELETED wp1"]),
        (&mut on_n2, vec!["ADDED wp2"]),
    ] {
        let mut got = Vec::new();
        while got.len() < want.len() {
            let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
                .await
                .unwrap_or_else(|_| panic!("node watch stalled after {got:?}, wants {want:?}"))
                .unwrap()
                .expect("node watch open");
            let (kind, o) = match ev {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("node watch: {e:?}"),
            };
            got.push(format!("{kind} {}", o.metadata.name.unwrap()));
        }
        assert_eq!(got, want);
    }

    // A watch from the middle of the changes replays the rest from the
    // cache's window.
    let mid = &changes[20];
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "wc-a");
    let want: Vec<String> = changes[21..]
        .iter()
        .filter(|c| c.ns == "wc-a")
        .map(|c| c.name.clone())
        .collect();
    let mut replay = api
        .watch(&WatchParams::default().timeout(30), &mid.rv)
        .await
        .unwrap()
        .boxed();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let ev = tokio::time::timeout(Duration::from_secs(30), replay.try_next())
            .await
            .expect("replayed event in time")
            .unwrap()
            .expect("replay stream open");
        match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                got.push(o.metadata.name.unwrap())
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("replay: {e:?}"),
        }
    }
    assert_eq!(got, want);

    // resourceVersion=0 lists answer from the cache: the final state.
    let live: Vec<String> = {
        let mut v: Vec<String> = (0..24)
            .filter(|k| k % 5 != 0)
            .map(|k| format!("c{k}"))
            .collect();
        v.sort();
        v
    };
    eventually(
        Duration::from_secs(10),
        "RV=0 list shows the final state",
        || async {
            let l = Api::<ConfigMap>::all(client.clone())
                .list(&ListParams::default().match_any().labels("g"))
                .await
                .ok()?;
            let mut names: Vec<String> = l
                .items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect();
            names.sort();
            (names == live).then_some(())
        },
    )
    .await
    .unwrap();
    s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
}
