//! ResourceQuota and LimitRange against the real binary with real
//! kubectl: a quota refuses the pod over it with kube-apiserver's 403
//! message (every kubectl prints it), `must specify` for a pod that
//! names no CPU, `get quota`/`describe quota` show used/hard, deleting a
//! pod gives its usage back (the quota controller recounts), concurrent
//! creates are charged exactly, object counts (ConfigMaps), claims
//! (`requests.storage`, a PersistentVolumeClaim LimitRange), a bad
//! quantity refused at decode (400), LimitRange defaults filled into a
//! created pod and min/max refused, and a Deployment over quota whose
//! ReplicaSet records `FailedCreate` with the quota message.
//!
//! Pods carry `schedulerName: nobody`: nothing binds them, nothing runs,
//! and quota counts them all the same.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, ResourceQuota};
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually, kubectls};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: the box is shared and busy.
const LONG: Duration = Duration::from_secs(120);

struct Kubectl<'a> {
    server: &'a Server,
    bin: PathBuf,
    dir: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.server
            .kubectl(&self.bin)
            .env("HOME", &self.dir)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn apply(&self, ns: &str, manifest: &str) -> Output {
        let path = self.dir.join("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.run(&["create", "-n", ns, "-f", path.to_str().unwrap()])
    }

    fn ok(&self, what: &str, out: Output) -> String {
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn refused(&self, what: &str, out: Output) -> String {
        assert!(
            !out.status.success(),
            "{what} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

fn pod(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  schedulerName: nobody\n  containers:\n  - name: c\n    image: busybox\n    resources: {resources}\n"
    )
}

async fn used(quotas: &Api<ResourceQuota>, name: &str, resource: &str) -> Option<String> {
    let q = quotas.get(name).await.ok()?;
    q.status?.used?.get(resource).map(|v| v.0.clone())
}

async fn wait_used(quotas: &Api<ResourceQuota>, name: &str, resource: &str, want: &str) {
    eventually(LONG, &format!("{name} used {resource}={want}"), || async {
        (used(quotas, name, resource).await.as_deref() == Some(want)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_limit_ranges() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(bin(), ServerOpts::default()).expect("starting rke2 server");
    let client = server.wait_ready(LONG).await.expect("rke2 server ready");
    let all = kubectls().expect("kubectl binaries");
    let (_, newest) = all.iter().max_by_key(|(m, _)| *m).cloned().unwrap();
    let dir = server.dir.path().join("kubectl");
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl {
        server: &server,
        bin: newest,
        dir: dir.clone(),
    };

    // --- Compute quota: refusal, must specify, get/describe, release.
    k.ok("create ns", k.run(&["create", "namespace", "qa"]));
    k.ok(
        "create quota",
        k.apply(
            "qa",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: q\nspec:\n  hard:\n    cpu: \"2\"\n    pods: \"4\"\n",
        ),
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "qa");
    // The controller fills the status; until then the quota is not enforced.
    wait_used(&quotas, "q", "cpu", "0").await;
    k.ok("p1", k.apply("qa", &pod("p1", "{requests: {cpu: \"1\"}}")));
    let refusal = "pods \"p2\" is forbidden: exceeded quota: q, requested: cpu=2, used: cpu=1, limited: cpu=2";
    for (minor, bin) in &all {
        let kk = Kubectl {
            server: &server,
            bin: bin.clone(),
            dir: dir.clone(),
        };
        let err = kk.refused(
            "p2 over quota",
            kk.apply("qa", &pod("p2", "{requests: {cpu: \"2000m\"}}")),
        );
        assert!(
            err.contains("Error from server (Forbidden): error when creating")
                && err.contains(refusal),
            "kubectl 1.{minor}: {err}"
        );
    }
    let err = k.refused("p3 without cpu", k.apply("qa", &pod("p3", "{}")));
    assert!(
        err.contains("pods \"p3\" is forbidden: failed quota: q: must specify cpu for: c"),
        "{err}"
    );
    let got = k.ok("get quota", k.run(&["get", "quota", "-n", "qa"]));
    let header = got.lines().next().unwrap_or("");
    assert!(
        header.split_whitespace().collect::<Vec<_>>() == ["NAME", "AGE", "REQUEST", "LIMIT"],
        "{got}"
    );
    assert!(got.contains("cpu: 1/2, pods: 1/4"), "{got}");
    let described = k.ok(
        "describe quota",
        k.run(&["describe", "quota", "q", "-n", "qa"]),
    );
    let rows: Vec<Vec<&str>> = described
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["cpu", "1", "2"]), "{described}");
    assert!(rows.contains(&vec!["pods", "1", "4"]), "{described}");
    k.ok("delete p1", k.run(&["delete", "pod", "p1", "-n", "qa"]));
    wait_used(&quotas, "q", "cpu", "0").await;
    wait_used(&quotas, "q", "pods", "0").await;
    k.ok(
        "p2 fits now",
        k.apply("qa", &pod("p2", "{requests: {cpu: \"2\"}}")),
    );

    // A Deployment over quota: its ReplicaSet reports the refusal.
    k.ok(
        "deployment",
        k.apply(
            "qa",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      schedulerName: nobody\n      containers:\n      - name: c\n        image: busybox\n        resources: {requests: {cpu: \"1\"}}\n",
        ),
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "qa");
    let message = eventually(LONG, "FailedCreate event of the ReplicaSet", || async {
        let list = events
            .list(&ListParams::default().fields("reason=FailedCreate"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.involved_object.kind.as_deref() == Some("ReplicaSet"))
            .and_then(|e| e.message)
    })
    .await
    .unwrap();
    assert!(
        message.starts_with("Error creating: pods \"d-")
            && message.ends_with(
                "is forbidden: exceeded quota: q, requested: cpu=1, used: cpu=2, limited: cpu=2"
            ),
        "{message}"
    );

    // --- Concurrent creates are charged exactly.
    k.ok("create ns", k.run(&["create", "namespace", "qc"]));
    k.ok(
        "create quota",
        k.apply(
            "qc",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: three\nspec:\n  hard:\n    pods: \"3\"\n",
        ),
    );
    let qc: Api<ResourceQuota> = Api::namespaced(client.clone(), "qc");
    wait_used(&qc, "three", "pods", "0").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "qc");
    let creates = (0..8).map(|i| {
        let pods = pods.clone();
        async move {
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("c{i}")},
                "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]}
            }))
            .unwrap();
            pods.create(&PostParams::default(), &p).await
        }
    });
    let results = futures::future::join_all(creates).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 3, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        let kube::Error::Api(s) = r else {
            panic!("{r}")
        };
        assert_eq!(s.code, 403, "{s:?}");
        assert!(
            s.message.contains(
                "exceeded quota: three, requested: pods=1, used: pods=3, limited: pods=3"
            ),
            "{s:?}"
        );
    }
    assert_eq!(used(&qc, "three", "pods").await.as_deref(), Some("3"));

    // --- Object counts.
    k.ok("create ns", k.run(&["create", "namespace", "qo"]));
    k.ok(
        "create quota",
        k.apply(
            "qo",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: objects\nspec:\n  hard:\n    configmaps: \"3\"\n    count/secrets: \"5\"\n",
        ),
    );
    let qo: Api<ResourceQuota> = Api::namespaced(client.clone(), "qo");
    // kube-root-ca.crt is the namespace's first ConfigMap.
    wait_used(&qo, "objects", "configmaps", "1").await;
    k.ok("cm a", k.run(&["create", "configmap", "a", "-n", "qo"]));
    k.ok("cm b", k.run(&["create", "configmap", "b", "-n", "qo"]));
    let err = k.refused("cm c", k.run(&["create", "configmap", "c", "-n", "qo"]));
    assert!(
        err.contains("configmaps \"c\" is forbidden: exceeded quota: objects, requested: configmaps=1, used: configmaps=3, limited: configmaps=3"),
        "{err}"
    );
    k.ok(
        "secret",
        k.run(&["create", "secret", "generic", "s", "-n", "qo"]),
    );
    wait_used(&qo, "objects", "count/secrets", "1").await;
    k.ok(
        "delete cm a",
        k.run(&["delete", "configmap", "a", "-n", "qo"]),
    );
    wait_used(&qo, "objects", "configmaps", "2").await;

    // --- A bad quantity is refused when the body is decoded.
    let err = k.refused(
        "bad quantity",
        k.apply(
            "qo",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: bad\nspec:\n  hard:\n    cpu: lots\n",
        ),
    );
    assert!(
        err.contains("Error from server (BadRequest)")
            && err.contains("ResourceQuota in version \"v1\" cannot be handled as a ResourceQuota: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
        "{err}"
    );
    let err = k.refused(
        "fractional pods",
        k.apply(
            "qo",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: bad\nspec:\n  hard:\n    pods: 1500m\n",
        ),
    );
    assert!(
        err.contains("ResourceQuota \"bad\" is invalid: spec.hard[pods]: Invalid value: \"1500m\": must be an integer"),
        "{err}"
    );

    let err = k.refused(
        "pod with a bad quantity",
        k.apply("qo", &pod("badpod", "{requests: {cpu: lots}}")),
    );
    assert!(
        err.contains("Error from server (BadRequest)")
            && err.contains("Pod in version \"v1\" cannot be handled as a Pod: quantities must match the regular expression"),
        "{err}"
    );

    // --- LimitRange: defaults, max, min.
    k.ok("create ns", k.run(&["create", "namespace", "lr"]));
    k.ok(
        "limit range",
        k.apply(
            "lr",
            "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: limits\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 250m, memory: 64Mi}\n    max: {cpu: \"1\"}\n    min: {memory: 64Mi}\n",
        ),
    );
    let got = k.ok("get limits", k.run(&["get", "limitrange", "-n", "lr"]));
    assert!(
        got.lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["NAME", "CREATED", "AT"],
        "{got}"
    );
    k.ok("defaulted pod", k.apply("lr", &pod("plain", "{}")));
    let lr_pods: Api<Pod> = Api::namespaced(client.clone(), "lr");
    let p = lr_pods.get("plain").await.unwrap();
    let res = serde_json::to_value(&p.spec.unwrap().containers[0].resources).unwrap();
    assert_eq!(
        res,
        json!({"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}})
    );
    let note = p
        .metadata
        .annotations
        .unwrap_or_default()
        .get("kubernetes.io/limit-ranger")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        note,
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    let err = k.refused(
        "over max",
        k.apply("lr", &pod("big", "{limits: {cpu: \"2\"}}")),
    );
    assert!(
        err.contains(
            "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
        ),
        "{err}"
    );
    let err = k.refused(
        "under min",
        k.apply("lr", &pod("small", "{limits: {memory: 32Mi}}")),
    );
    assert!(
        err.contains("pods \"small\" is forbidden: minimum memory usage per Container is 64Mi, but request is 32Mi"),
        "{err}"
    );

    // --- Storage: claims counted and sized; a LimitRange bounds them.
    k.ok("create ns", k.run(&["create", "namespace", "qs"]));
    k.ok(
        "storage quota",
        k.apply(
            "qs",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: storage\nspec:\n  hard:\n    requests.storage: 3Gi\n    persistentvolumeclaims: \"5\"\n",
        ),
    );
    k.ok(
        "claim limits",
        k.apply(
            "qs",
            "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: claims\nspec:\n  limits:\n  - type: PersistentVolumeClaim\n    max: {storage: 2Gi}\n",
        ),
    );
    let qs: Api<ResourceQuota> = Api::namespaced(client.clone(), "qs");
    wait_used(&qs, "storage", "requests.storage", "0").await;
    let claim = |name: &str, size: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n"
        )
    };
    k.ok("claim a", k.apply("qs", &claim("a", "2Gi")));
    let err = k.refused("claim over max", k.apply("qs", &claim("huge", "4Gi")));
    assert!(
        err.contains("persistentvolumeclaims \"huge\" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 4Gi"),
        "{err}"
    );
    let err = k.refused("claim over quota", k.apply("qs", &claim("b", "2Gi")));
    assert!(
        err.contains("persistentvolumeclaims \"b\" is forbidden: exceeded quota: storage, requested: requests.storage=2Gi, used: requests.storage=2Gi, limited: requests.storage=3Gi"),
        "{err}"
    );
    assert_eq!(
        used(&qs, "storage", "persistentvolumeclaims")
            .await
            .as_deref(),
        Some("1")
    );

    for ns in ["qa", "qc", "qo", "lr", "qs"] {
        let _ = k.run(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// Three servers, three apiservers: creates through all of them at once
/// are charged exactly (each apiserver writes `status.used` with the
/// quota's revision as compare and re-checks on a conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_charged_exactly_across_three_apiservers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut s1 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: quota-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let c1 = s1.wait_ready(LONG).await.unwrap();
    let joiner = || ServerOpts {
        config_yaml: Some(format!(
            "server: https://{}:9345\ntoken: quota-secret\n",
            s1.ip
        )),
        ..Default::default()
    };
    let mut s2 = Server::start(bin(), joiner()).unwrap();
    let mut s3 = Server::start(bin(), joiner()).unwrap();
    let c2 = s2.wait_ready(LONG).await.unwrap();
    let c3 = s3.wait_ready(LONG).await.unwrap();

    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "ha"}})).unwrap();
    Api::all(c1.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let quota: ResourceQuota = serde_json::from_value(
        json!({"metadata": {"name": "five"}, "spec": {"hard": {"pods": "5"}}}),
    )
    .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(c2.clone(), "ha");
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    wait_used(&quotas, "five", "pods", "0").await;
    // Every apiserver must see the quota's status before the burst.
    for c in [&c1, &c2, &c3] {
        let api: Api<ResourceQuota> = Api::namespaced(c.clone(), "ha");
        wait_used(&api, "five", "pods", "0").await;
    }
    let clients = [c1.clone(), c2.clone(), c3.clone()];
    let creates = (0..15).map(|i| {
        let pods: Api<Pod> = Api::namespaced(clients[i % 3].clone(), "ha");
        async move {
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("p{i}")},
                "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]}
            }))
            .unwrap();
            pods.create(&PostParams::default(), &p).await
        }
    });
    let results = futures::future::join_all(creates).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 5, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        let kube::Error::Api(s) = r else {
            panic!("{r}")
        };
        assert_eq!(s.code, 403, "{s:?}");
        assert!(
            s.message
                .contains("exceeded quota: five, requested: pods=1, used: pods=5, limited: pods=5"),
            "{s:?}"
        );
    }
    let pods: Api<Pod> = Api::namespaced(c3.clone(), "ha");
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        5
    );
    assert_eq!(used(&quotas, "five", "pods").await.as_deref(), Some("5"));
    // The controller's recount agrees: deleting two gives two back.
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    for n in &names[..2] {
        pods.delete(n, &Default::default()).await.unwrap();
    }
    wait_used(&quotas, "five", "pods", "3").await;
}
