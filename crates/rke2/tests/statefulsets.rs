//! StatefulSets and DaemonSet rollouts for real: one server node in its
//! own network namespace with its own containerd, the bundled
//! `rke2-coredns`, pods of the test busybox image, driven by the newest
//! real kubectl.
//!
//! A 3-replica `OrderedReady` StatefulSet starts in order (each pod is
//! created only after the one before it is Ready), keeps its names across
//! a pod delete, gives each pod a DNS name through its headless Service,
//! rolls a template change out with a partition (only ordinals at or
//! above it change), finishes it, and `kubectl rollout undo` takes it
//! back, with `rollout status|history` as upstream prints them; a
//! `Parallel` set creates all its pods without waiting; a set deleted
//! with `--cascade=orphan` leaves its pods running and, applied again,
//! adopts them (same uids, no restart, no roll); claims are made
//! per ordinal from `volumeClaimTemplates` and follow the retention
//! policy (the pods that use them do not start here: binding claims is
//! not on this branch); a claim template change is refused with
//! upstream's 422; a DaemonSet rolls out and back with
//! `rollout status|history|undo`.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine shared with other builds.
const LONG: Duration = Duration::from_secs(240);

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// stdout of a kubectl that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// stderr of a kubectl that must fail.
    fn fails(&self, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success(), "kubectl {args:?} should have failed");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

fn running_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn ready_since(p: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn label<'a>(p: &'a Pod, key: &str) -> &'a str {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(|s| s.as_str())
        .unwrap_or("")
}

fn env_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "VERSION")?
        .value
        .clone()
}

/// The pods of `app`, by name.
async fn pods_of(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    let mut v = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    v.sort_by_key(|p| p.metadata.name.clone());
    v
}

/// Waits until the pods named `names` (exactly) are Running and Ready,
/// each with VERSION `version`.
async fn wait_ready(pods: &Api<Pod>, app: &str, names: &[&str], version: &str, what: &str) {
    let last = std::sync::Mutex::new(Vec::new());
    let res = eventually(LONG, what, || {
        let pods = pods.clone();
        let last = &last;
        async move {
            let list = pods_of(&pods, app).await;
            let ok = list.len() == names.len()
                && list.iter().zip(names).all(|(p, n)| {
                    p.metadata.name.as_deref() == Some(*n)
                        && running_ready(p)
                        && env_of(p).as_deref() == Some(version)
                });
            *last.lock().unwrap() = list
                .iter()
                .map(|p| {
                    format!(
                        "{} ready={} version={:?} deleting={}",
                        p.metadata.name.clone().unwrap_or_default(),
                        running_ready(p),
                        env_of(p),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect();
            ok.then_some(())
        }
    })
    .await;
    if let Err(e) = res {
        panic!("{e}; last seen {:?}", last.lock().unwrap());
    }
}

fn sts_manifest(name: &str, policy: &str, ready_cmd: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "serviceName": name,
            "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web",
                        "image": TEST_BUSYBOX_IMAGE,
                        "command": ["sh", "-c", format!("{ready_cmd}; mkdir -p /www && echo $HOSTNAME > /www/index.html && exec httpd -f -p 8080 -h /www")],
                        "env": [{"name": "VERSION", "value": "v1"}],
                        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
                    }]
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_and_daemonset_rollouts() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: sts-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc_path = s1.dir.join("rke2.yaml");
    eventually(LONG, "server kubeconfig", || async {
        kc_path.exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubeconfig = s1.kubeconfig_at_ip().unwrap();
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "a Ready node", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let k = Kubectl {
        bin: rke2_testbed::kubectls().unwrap().last().unwrap().1.clone(),
        kubeconfig: kubeconfig.clone(),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");

    // The governing headless Service and a 3-replica OrderedReady set
    // whose pods turn Ready a little after they start.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}});
    let web = sts_manifest("web", "OrderedReady", "sleep 2; touch /tmp/ready");
    let apply = |obj: &serde_json::Value| {
        let path = bed.dir().join("manifest.json");
        std::fs::write(&path, serde_json::to_vec(obj).unwrap()).unwrap();
        k.ok(&["apply", "-f", path.to_str().unwrap()])
    };
    apply(&svc);
    apply(&web);
    wait_ready(
        &pods,
        "web",
        &["web-0", "web-1", "web-2"],
        "v1",
        "web-0..2 Ready",
    )
    .await;
    // In order: each pod was created only once the one before was Ready.
    let list = pods_of(&pods, "web").await;
    for w in list.windows(2) {
        let ready = ready_since(&w[0]).unwrap();
        let created = w[1].metadata.creation_timestamp.as_ref().unwrap().0;
        assert!(
            created >= ready,
            "{} created at {created} before {} was Ready at {ready}",
            w[1].metadata.name.as_deref().unwrap(),
            w[0].metadata.name.as_deref().unwrap()
        );
    }
    for p in &list {
        let name = p.metadata.name.as_deref().unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(name));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        assert_eq!(label(p, "statefulset.kubernetes.io/pod-name"), name);
        assert_eq!(
            label(p, "apps.kubernetes.io/pod-index"),
            name.strip_prefix("web-").unwrap()
        );
    }
    let rev1 = label(&list[0], "controller-revision-hash").to_string();
    assert!(rev1.starts_with("web-"), "revision label {rev1}");
    let st = sets.get("web").await.unwrap().status.unwrap();
    eventually(LONG, "web status 3 ready, current = update", || async {
        let st = sets.get("web").await.ok()?.status?;
        (st.ready_replicas == Some(3)
            && st.available_replicas == Some(3)
            && st.current_replicas == Some(3)
            && st.updated_replicas == Some(3)
            && st.current_revision.as_deref() == Some(rev1.as_str())
            && st.update_revision.as_deref() == Some(rev1.as_str()))
        .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {st:?}"));

    // kubectl's view: Table columns (wide too), the revisions, status.
    let out = k.ok(&["get", "statefulset", "web"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("web "), "{out}");
    assert!(out.contains(" 3/3 "), "{out}");
    let out = k.ok(&["get", "sts", "-o", "wide"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"],
        "{out}"
    );
    assert!(out.contains(TEST_BUSYBOX_IMAGE), "{out}");
    let out = k.ok(&["get", "controllerrevisions"]);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["NAME", "CONTROLLER", "REVISION", "AGE"],
        "{out}"
    );
    assert!(
        out.contains(&format!("{rev1} ")) && out.contains("statefulset.apps/web"),
        "{out}"
    );
    let out = k.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert!(
        out.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{out}"
    );

    // DNS through the headless Service: web-1's name from web-0.
    let web1_ip = pods
        .get("web-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    let mut last = String::new();
    eventually(LONG, "web-1.web.default.svc.cluster.local resolves", || {
        let o = k.run(&[
            "exec",
            "web-0",
            "--",
            "nslookup",
            "web-1.web.default.svc.cluster.local",
        ]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let ok = last.contains(&web1_ip);
        async move { ok.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {last}"));

    // A deleted pod comes back under its name.
    let old_uid = pods.get("web-1").await.unwrap().metadata.uid;
    k.ok(&["delete", "pod", "web-1", "--wait=false"]);
    eventually(LONG, "web-1 back, a new pod, Ready", || async {
        let p = pods.get("web-1").await.ok()?;
        (p.metadata.uid != old_uid && running_ready(&p)).then_some(())
    })
    .await
    .unwrap();

    // A partitioned rolling update: only ordinal 2 changes.
    k.ok(&[
        "patch",
        "statefulset",
        "web",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
    ]);
    k.ok(&["set", "env", "statefulset/web", "VERSION=v2"]);
    let rev2 = eventually(LONG, "web's update revision", || async {
        let st = sets.get("web").await.ok()?.status?;
        st.update_revision.filter(|r| *r != rev1)
    })
    .await
    .unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(LONG, "web-2 at v2, web-0 and web-1 at v1", || {
        let pods = pods.clone();
        let seen = &seen;
        async move {
            let list = pods_of(&pods, "web").await;
            *seen.lock().unwrap() = list
                .iter()
                .map(|p| (p.metadata.name.clone(), env_of(p), running_ready(p)))
                .collect();
            let want = [("web-0", "v1"), ("web-1", "v1"), ("web-2", "v2")];
            (list.len() == 3
                && list.iter().zip(want).all(|(p, (n, v))| {
                    p.metadata.name.as_deref() == Some(n)
                        && env_of(p).as_deref() == Some(v)
                        && running_ready(p)
                }))
            .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", seen.lock().unwrap()));
    let list = pods_of(&pods, "web").await;
    assert_eq!(label(&list[2], "controller-revision-hash"), rev2);
    assert_eq!(label(&list[0], "controller-revision-hash"), rev1);
    let out = k.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert!(
        out.contains("partitioned roll out complete: 1 new pods have been updated"),
        "{out}"
    );
    let st = sets.get("web").await.unwrap().status.unwrap();
    assert_eq!(st.current_revision.as_deref(), Some(rev1.as_str()));
    assert_eq!(st.updated_replicas, Some(1));

    // Partition 0: the rest follow; the current revision becomes rev2.
    k.ok(&[
        "patch",
        "statefulset",
        "web",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    wait_ready(
        &pods,
        "web",
        &["web-0", "web-1", "web-2"],
        "v2",
        "all of web at v2",
    )
    .await;
    eventually(LONG, "web's current revision = update revision", || async {
        let st = sets.get("web").await.ok()?.status?;
        (st.current_revision.as_deref() == Some(rev2.as_str()) && st.updated_replicas == Some(3))
            .then_some(())
    })
    .await
    .unwrap();
    let out = k.ok(&["rollout", "history", "statefulset/web"]);
    let revisions: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{out}");
    let out = k.ok(&["rollout", "history", "statefulset/web", "--revision=1"]);
    assert!(
        out.contains("VERSION:\tv1") || out.contains("VERSION: v1") || out.contains("v1"),
        "{out}"
    );

    // Undo: back to v1, as revision 3.
    let out = k.ok(&["rollout", "undo", "statefulset/web"]);
    assert!(out.contains("rolled back"), "{out}");
    wait_ready(
        &pods,
        "web",
        &["web-0", "web-1", "web-2"],
        "v1",
        "all of web back at v1",
    )
    .await;
    let list = pods_of(&pods, "web").await;
    assert!(
        list.iter()
            .all(|p| label(p, "controller-revision-hash") == rev1)
    );
    let out = k.ok(&["rollout", "history", "statefulset/web"]);
    let revisions: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{out}");
    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    assert_eq!(revs.get(&rev1).await.unwrap().revision, 3);

    // The scale subresource: down to 2 takes web-2 away.
    k.ok(&["scale", "statefulset", "web", "--replicas=2"]);
    wait_ready(&pods, "web", &["web-0", "web-1"], "v1", "web scaled to 2").await;

    // Orphaned, then adopted: `--cascade=orphan` leaves web's pods
    // running; the set applied again adopts them (same uids, no restart)
    // and its revisions with them, so nothing rolls.
    let identity = |list: &[Pod]| -> Vec<(String, String, i32, String)> {
        list.iter()
            .map(|p| {
                let restarts = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|c| c.iter().map(|c| c.restart_count).sum())
                    .unwrap_or(0);
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.uid.clone().unwrap_or_default(),
                    restarts,
                    label(p, "controller-revision-hash").to_string(),
                )
            })
            .collect()
    };
    let before = identity(&pods_of(&pods, "web").await);
    let old_set_uid = sets.get("web").await.unwrap().metadata.uid.unwrap();
    k.ok(&["delete", "statefulset", "web", "--cascade=orphan"]);
    eventually(LONG, "web gone, its pods orphaned", || async {
        if sets.get_opt("web").await.ok()?.is_some() {
            return None;
        }
        let list = pods_of(&pods, "web").await;
        (list.len() == 2
            && list.iter().all(|p| {
                p.metadata
                    .owner_references
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
            }))
        .then_some(())
    })
    .await
    .unwrap();
    let mut again = sts_manifest("web", "OrderedReady", "sleep 2; touch /tmp/ready");
    again["spec"]["replicas"] = json!(2);
    apply(&again);
    let new_set_uid = sets.get("web").await.unwrap().metadata.uid.unwrap();
    assert_ne!(new_set_uid, old_set_uid);
    eventually(LONG, "web's pods adopted by the new set", || async {
        let list = pods_of(&pods, "web").await;
        let st = sets.get("web").await.ok()?.status?;
        (list.len() == 2
            && list.iter().all(|p| {
                p.metadata
                    .owner_references
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.controller == Some(true) && r.uid == new_set_uid)
            })
            && st.ready_replicas == Some(2)
            && st.update_revision.as_deref() == Some(rev1.as_str()))
        .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(identity(&pods_of(&pods, "web").await), before);
    let adopted = revs.get(&rev1).await.unwrap();
    assert!(
        adopted
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|r| r.uid == new_set_uid),
        "revision {rev1} not adopted"
    );

    // Parallel: all three pods exist while none is Ready.
    apply(&sts_manifest("par", "Parallel", "true"));
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(LONG, "par-0..2 created at once", || {
        let pods = pods.clone();
        let seen = &seen;
        async move {
            let list = pods_of(&pods, "par").await;
            *seen.lock().unwrap() = list
                .iter()
                .map(|p| (p.metadata.name.clone(), running_ready(p)))
                .collect();
            (list.len() == 3).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", seen.lock().unwrap()));
    assert!(
        pods_of(&pods, "par")
            .await
            .iter()
            .all(|p| !running_ready(p)),
        "no par pod can be Ready (no /tmp/ready)"
    );
    k.ok(&["delete", "statefulset", "par", "--wait=false"]);

    // Claims from templates, with the retention policy as owner refs.
    let mut db = sts_manifest("db", "Parallel", "true");
    db["spec"]["replicas"] = json!(2);
    db["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}]);
    db["spec"]["persistentVolumeClaimRetentionPolicy"] =
        json!({"whenDeleted": "Delete", "whenScaled": "Delete"});
    apply(&db);
    let mut keep = sts_manifest("keep", "Parallel", "true");
    keep["spec"]["replicas"] = json!(1);
    keep["spec"]["volumeClaimTemplates"] = db["spec"]["volumeClaimTemplates"].clone();
    apply(&keep);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let db_uid = sets.get("db").await.unwrap().metadata.uid.unwrap();
    eventually(LONG, "claims data-db-0, data-db-1, data-keep-0", || async {
        let mut names: Vec<String> = claims
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        names.sort();
        (names == ["data-db-0", "data-db-1", "data-keep-0"]).then_some(())
    })
    .await
    .unwrap();
    let c = claims.get("data-db-0").await.unwrap();
    let refs = c.metadata.owner_references.unwrap_or_default();
    assert!(
        refs.iter()
            .any(|r| r.kind == "StatefulSet" && r.uid == db_uid),
        "{refs:?}"
    );
    assert_eq!(c.metadata.labels.unwrap()["app"], "db");
    let p = pods.get("db-1").await.unwrap();
    let vol = p
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(vol.persistent_volume_claim.unwrap().claim_name, "data-db-1");
    let c = claims.get("data-keep-0").await.unwrap();
    assert!(c.metadata.owner_references.unwrap_or_default().is_empty());

    // A claim template change is refused with upstream's 422.
    let mut changed = db.clone();
    changed["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] =
        json!("2Mi");
    let err = k.fails(
        &["apply", "-f", "-"],
        &serde_json::to_string(&changed).unwrap(),
    );
    assert!(
        err.contains("The StatefulSet \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"),
        "{err}"
    );
    let mut typed: StatefulSet = sets.get("db").await.unwrap();
    typed.spec.as_mut().unwrap().service_name = Some("other".into());
    match sets.replace("db", &PostParams::default(), &typed).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}")
        }
        other => panic!("serviceName change accepted: {other:?}"),
    }

    // whenScaled: Delete: scaling to 1 takes data-db-1 with db-1;
    // whenDeleted: Delete: deleting the set takes data-db-0; Retain keeps.
    k.ok(&["scale", "statefulset", "db", "--replicas=1"]);
    eventually(LONG, "data-db-1 gone with db-1", || async {
        let gone = claims.get_opt("data-db-1").await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .unwrap();
    assert!(claims.get_opt("data-db-0").await.unwrap().is_some());
    k.ok(&["delete", "statefulset", "db", "keep"]);
    eventually(LONG, "data-db-0 gone with db", || async {
        claims
            .get_opt("data-db-0")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        claims.get_opt("data-keep-0").await.unwrap().is_some(),
        "Retain keeps the claim"
    );
    claims
        .delete("data-keep-0", &DeleteParams::default())
        .await
        .unwrap();

    // A DaemonSet: rollout status, a change, history, undo.
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "a", "image": TEST_BUSYBOX_IMAGE,
                        "command": ["sh", "-c", "touch /tmp/ready; exec sleep 100000"],
                        "env": [{"name": "VERSION", "value": "v1"}]}]
                }
            }
        }
    });
    apply(&ds);
    let out = k.ok(&["rollout", "status", "daemonset/agent", "--timeout=180s"]);
    assert!(
        out.contains("daemon set \"agent\" successfully rolled out"),
        "{out}"
    );
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let first = pods_of(&pods, "agent").await;
    assert_eq!(first.len(), 1);
    let hash1 = label(&first[0], "controller-revision-hash").to_string();
    k.ok(&["set", "env", "daemonset/agent", "VERSION=v2"]);
    let out = k.ok(&["rollout", "status", "daemonset/agent", "--timeout=180s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    eventually(LONG, "the agent pod at v2", || async {
        let list = pods_of(&pods, "agent").await;
        (list.len() == 1 && env_of(&list[0]).as_deref() == Some("v2") && running_ready(&list[0]))
            .then_some(())
    })
    .await
    .unwrap();
    let out = k.ok(&["rollout", "history", "daemonset/agent"]);
    let revisions: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{out}");
    let out = k.ok(&["rollout", "undo", "daemonset/agent"]);
    assert!(out.contains("rolled back"), "{out}");
    eventually(LONG, "the agent pod back at v1", || async {
        let list = pods_of(&pods, "agent").await;
        (list.len() == 1
            && env_of(&list[0]).as_deref() == Some("v1")
            && running_ready(&list[0])
            && label(&list[0], "controller-revision-hash") == hash1)
            .then_some(())
    })
    .await
    .unwrap();
    let st = dss.get("agent").await.unwrap().status.unwrap();
    assert_eq!(st.updated_number_scheduled, Some(1), "{st:?}");
    let out = k.ok(&["rollout", "history", "daemonset/agent"]);
    assert!(
        out.lines()
            .filter(|l| l.starts_with('2') || l.starts_with('3'))
            .count()
            == 2,
        "{out}"
    );

    // Clean up what the test made (the bed goes with the test).
    k.ok(&["delete", "daemonset", "agent"]);
    k.ok(&["delete", "statefulset", "web"]);
    k.ok(&["delete", "service", "web"]);
}
