//! `kubectl drain` on a two-host bed (one server, one agent, each with
//! its own containerd): the agent is cordoned and everything on it but
//! its DaemonSet pod is evicted through `pods/eviction`; a
//! PodDisruptionBudget stops the drain (upstream's 429, which kubectl
//! retries) until another replica is Ready elsewhere. Also: the PDB's
//! status and columns, the eviction of a missing pod (404) and a PDB with
//! a bad value (upstream's 422).
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs two nodes, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

async fn live(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// A child process (the drain) killed by its pid if the test ends first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// POSTs an Eviction through the client, answering (code, Status body).
async fn evict(client: &kube::Client, name: &str) -> (u16, serde_json::Value) {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": "default"}});
    let req = http::Request::post(format!("/api/v1/namespaces/default/pods/{name}/eviction"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_honours_disruption_budgets() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let ha = bed.add_host("a1").unwrap();
    let common = format!("token: drain-secret\npause-image: {TEST_PAUSE_IMAGE}\n");
    let server_cfg = format!(
        "{common}disable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &server_cfg, &[]).unwrap();
    let agent_cfg = format!("server: https://{}:9345\n{common}", hs.ip);
    let mut a1 = NodeProc::new(&bed, bin(), &ha, "agent", &agent_cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    rke2_testbed::seed_images(&a1.data_dir()).unwrap();
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
    a1.start(&bed).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "two Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // Bad input: a PDB with a bad value, the eviction of a missing pod.
    let bad = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "bad"}, "spec": {"minAvailable": "abc", "selector": {"matchLabels": {"app": "web"}}}});
    match pdbs
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert_eq!(
                s.message,
                "PodDisruptionBudget.policy \"bad\" is invalid: spec.minAvailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"abc\"}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%' or '93%', regex used for validation is '[0-9]+%')"
            );
        }
        other => panic!("a PDB with minAvailable \"abc\" was accepted: {other:?}"),
    }
    let (code, status) = evict(&client, "nope").await;
    assert_eq!(code, 404, "{status}");
    assert_eq!(status["message"], "pods \"nope\" not found");

    // A DaemonSet (one pod per node) and a Deployment of two replicas,
    // one per node (the scheduler spreads an owner's pods), with an
    // emptyDir, behind a budget that wants both.
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agentd"},
        "spec": {"selector": {"matchLabels": {"app": "agentd"}}, "template": {
            "metadata": {"labels": {"app": "agentd"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c",
                "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]}}}});
    let ds_yaml = serde_json::to_vec(&ds).unwrap();
    let f = bed.dir().join("ds.json");
    std::fs::write(&f, ds_yaml).unwrap();
    let o = kubectl(&k, &kubeconfig, &["apply", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "web", "image": TEST_BUSYBOX_IMAGE,
                    "command": ["sh", "-c", "touch /scratch/ready && exec sleep 3600"],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    "readinessProbe": {"exec": {"command": ["cat", "/scratch/ready"]}, "periodSeconds": 1}}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &dep)
        .await
        .unwrap();
    let on_agent = eventually(
        LONG,
        "two Ready web pods on two nodes, agentd on both",
        || async {
            let web = live(&pods, "app=web").await;
            let ds = live(&pods, "app=agentd").await;
            let web_nodes: std::collections::BTreeSet<String> =
                web.iter().filter(|p| ready(p)).map(node_of).collect();
            let ds_running = ds
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            if web_nodes.len() != 2 || ds_running != 2 {
                return None;
            }
            web.into_iter().find(|p| node_of(p) == "a1")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let victim = on_agent.metadata.name.clone().unwrap();

    let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let st = eventually(LONG, "the PDB's status", || async {
        let p = pdbs.get("web").await.ok()?;
        let st = p.status?;
        (st.observed_generation == p.metadata.generation && st.current_healthy == 2).then_some(st)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(
        (st.desired_healthy, st.expected_pods, st.disruptions_allowed),
        (2, 2, 0)
    );
    let cond = &st.conditions.unwrap()[0];
    assert_eq!(
        (
            cond.type_.as_str(),
            cond.status.as_str(),
            cond.reason.as_str()
        ),
        ("DisruptionAllowed", "False", "InsufficientPods")
    );
    let o = kubectl(&k, &kubeconfig, &["get", "pdb", "web"]);
    let lines: Vec<String> = text(&o).lines().map(str::to_string).collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{lines:?}"
    );
    assert_eq!(
        lines[1].split_whitespace().take(4).collect::<Vec<_>>(),
        ["web", "2", "N/A", "0"],
        "{lines:?}"
    );

    // An eviction the budget forbids: upstream's 429 and cause.
    let (code, status) = evict(&client, &victim).await;
    assert_eq!(code, 429, "{status}");
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(
        status["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(status["details"]["causes"][0]["reason"], "DisruptionBudget");
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );

    // The drain: cordons, evicts, and is held by the budget.
    let log_path = bed.dir().join("drain.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let drain = Command::new(&k)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "drain",
            "a1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("running kubectl drain");
    let drain = std::sync::Mutex::new(KillOnDrop(drain));
    let drain_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually(LONG, "the drain held by the budget", || async {
        drain_log()
            .contains("Cannot evict pod as it would violate the pod's disruption budget.")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", drain_log()));
    let a1_node = nodes.get("a1").await.unwrap();
    assert_eq!(
        a1_node.spec.unwrap().unschedulable,
        Some(true),
        "the drain cordons first"
    );
    let still = pods.get(&victim).await.unwrap();
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "the budget keeps {victim}"
    );
    assert!(
        drain.lock().unwrap().0.try_wait().unwrap().is_none(),
        "{}",
        drain_log()
    );

    // Another replica, Ready on the server (the agent is cordoned), lets
    // the drain through.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let status = eventually(LONG, "the drain finished", || async {
        drain.lock().unwrap().0.try_wait().unwrap()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", drain_log(), s1.log()));
    assert!(status.success(), "{}", drain_log());
    assert!(drain_log().contains("node/a1 drained"), "{}", drain_log());
    assert!(
        drain_log().contains(&format!("evicting pod default/{victim}")),
        "{}",
        drain_log()
    );

    // Only the DaemonSet's pod is left on the agent; the web pods are
    // back to three Ready on the server.
    eventually(LONG, "the agent holds only its DaemonSet pod", || async {
        let all = pods.list(&ListParams::default()).await.ok()?.items;
        let left: Vec<&Pod> = all.iter().filter(|p| node_of(p) == "a1").collect();
        (left.len() == 1
            && left[0]
                .metadata
                .labels
                .as_ref()?
                .get("app")
                .map(String::as_str)
                == Some("agentd"))
        .then_some(())
    })
    .await
    .unwrap();
    eventually(LONG, "three Ready web pods on the server", || async {
        let web = live(&pods, "app=web").await;
        (web.len() == 3 && web.iter().all(|p| ready(p) && node_of(p) == "s1")).then_some(())
    })
    .await
    .unwrap();
    let st = eventually(LONG, "the PDB allows one disruption", || async {
        let st = pdbs.get("web").await.ok()?.status?;
        (st.current_healthy == 3).then_some(st)
    })
    .await
    .unwrap();
    assert_eq!(st.disruptions_allowed, 1);
    assert!(st.disrupted_pods.is_none_or(|m| m.is_empty()));

    let o = kubectl(&k, &kubeconfig, &["uncordon", "a1"]);
    assert!(o.status.success(), "{}", text(&o));
    drop(a1);
    drop(s1);
    drop(bed);
}
