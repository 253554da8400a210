//! The scheduler against a real server whose own node carries
//! `CriticalAddonsOnly=true:NoExecute` (seed ha.md step 2a): pods that do
//! not tolerate it stay Pending with upstream's FailedScheduling wording
//! until an untainted node appears; tolerations, nodeSelector and node
//! affinity pick nodes; replicas of one owner spread; oversized requests
//! stay Pending with `Insufficient cpu`.
//!
//! The scheduler is the server's own (run under the `kube-scheduler`
//! Lease): a second, in-process instance would race it, and two
//! schedulers with separate caches cannot spread replicas
//! deterministically. Extra nodes are fake (created through the API, Ready, with allocatable cpu 2,
//! memory 4Gi, pods 110) and a fake kubelet renews their Leases so the
//! server's node lifecycle loop leaves them alone.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(90);
/// Scheduling reacts to watch events; this only bounds a slow machine.
const SCHEDULED: Duration = Duration::from_secs(30);
const NS: &str = "sched";
const TAINT_MESSAGE: &str = "0/3 nodes are available: 3 node(s) had untolerated taint {CriticalAddonsOnly: true}. \
     preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn critical_taint() -> Value {
    json!([{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}])
}

/// Creates a fake Node and makes it Ready with room for small pods.
async fn create_node(nodes: &Api<Node>, name: &str, labels: Value, taints: Value) {
    let mut all_labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
    for (k, v) in labels.as_object().into_iter().flatten() {
        all_labels[k] = v.clone();
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"taints": taints},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = Timestamp::now().to_string();
    let resources = json!({"cpu": "2", "memory": "4Gi", "pods": "110"});
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {
                "capacity": resources, "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "fake kubelet", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            }})),
        )
        .await
        .unwrap();
}

/// A fake kubelet: renews the Lease of every listed node every 2 s.
fn lease_renewer(client: kube::Client, names: Vec<String>, stop: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Timestamp::from_microsecond(Timestamp::now().as_microsecond())
                .unwrap()
                .to_string();
            for name in &names {
                let spec =
                    json!({"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now});
                let patched = leases
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": spec})),
                    )
                    .await;
                if let Err(kube::Error::Api(s)) = patched
                    && s.code == 404
                {
                    let lease: Lease = serde_json::from_value(json!({
                        "metadata": {"name": name, "namespace": "kube-node-lease"},
                        "spec": spec,
                    }))
                    .unwrap();
                    let _ = leases.create(&PostParams::default(), &lease).await;
                }
            }
        }
    });
}

async fn create_pod(pods: &Api<Pod>, name: &str, spec: Value, meta: Value) -> Pod {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "registry.k8s.io/pause:3.10"}]);
    let mut metadata = json!({"name": name, "namespace": NS});
    for (k, v) in meta.as_object().into_iter().flatten() {
        metadata[k] = v.clone();
    }
    let pod: Pod = serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone().filter(|n| !n.is_empty())
}

/// The PodScheduled condition as (status, reason, message).
fn scheduled_condition(p: &Pod) -> Option<(String, String, String)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// Waits until `name` is bound, and returns its node.
async fn wait_bound(pods: &Api<Pod>, name: &str) -> String {
    eventually(SCHEDULED, &format!("{name} bound"), || async {
        let p = pods.get(name).await.ok()?;
        node_of(&p)
    })
    .await
    .unwrap()
}

/// Waits until `name` is Unschedulable with exactly `message`, still
/// without a node.
async fn wait_unschedulable(pods: &Api<Pod>, name: &str, message: &str) {
    let last = std::sync::Mutex::new(None);
    let res = eventually(SCHEDULED, &format!("{name} Unschedulable"), || async {
        let p = pods.get(name).await.ok()?;
        assert_eq!(node_of(&p), None, "{name} must stay unbound");
        let cond = scheduled_condition(&p);
        *last.lock().unwrap() = cond.clone();
        let (status, reason, msg) = cond?;
        (status == "False" && reason == "Unschedulable" && msg == message).then_some(())
    })
    .await;
    if let Err(e) = res {
        panic!(
            "{e}; last PodScheduled condition: {:?}",
            last.lock().unwrap()
        );
    }
}

/// The messages of `reason` events about pod `name`.
async fn events(client: &kube::Client, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name},reason={reason}"));
    api.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

async fn wait_event(client: &kube::Client, pod: &str, reason: &str, message: &str) -> Event {
    eventually(SCHEDULED, &format!("{reason} event for {pod}"), || async {
        events(client, pod, reason)
            .await
            .into_iter()
            .find(|e| e.message.as_deref() == Some(message))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_honours_taints_selectors_resources_and_spreads() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut server = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("node-taint:\n  - \"CriticalAddonsOnly=true:NoExecute\"\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let client = server.wait_ready(READY).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let me = server.node_name.clone();

    // The server's own node: registered, Ready, tainted by node-taint.
    eventually(READY, "server node Ready and tainted", || async {
        let n = nodes.get(&me).await.ok()?;
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == "CriticalAddonsOnly" && t.effect == "NoExecute");
        (ready && tainted).then_some(())
    })
    .await
    .unwrap();

    let stop = CancellationToken::new();
    lease_renewer(
        client.clone(),
        ["tainted-1", "tainted-2", "worker-1", "worker-2", "worker-3"]
            .map(String::from)
            .to_vec(),
        stop.clone(),
    );
    // The server runs the scheduler under its Lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    eventually(READY, "scheduler Lease held by the server", || async {
        let lease = leases
            .get_opt(rke2_scheduler::SCHEDULER_LEASE)
            .await
            .ok()??;
        let holder = lease.spec?.holder_identity?;
        holder.starts_with(&format!("{me}_")).then_some(())
    })
    .await
    .unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // Three nodes, all tainted: a pod without the toleration stays Pending.
    create_node(&nodes, "tainted-1", json!({}), critical_taint()).await;
    create_node(&nodes, "tainted-2", json!({}), critical_taint()).await;
    create_pod(&pods, "plain", json!({}), json!({})).await;
    wait_unschedulable(&pods, "plain", TAINT_MESSAGE).await;
    let failed = wait_event(&client, "plain", "FailedScheduling", TAINT_MESSAGE).await;
    assert!(
        failed
            .message
            .as_deref()
            .unwrap()
            .contains("CriticalAddonsOnly")
    );
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(
        failed.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    assert_eq!(
        failed.reporting_component.as_deref(),
        Some("default-scheduler")
    );

    // An untainted node appears: the pending pod lands there.
    create_node(&nodes, "worker-1", json!({}), json!([])).await;
    assert_eq!(wait_bound(&pods, "plain").await, "worker-1");
    let p = pods.get("plain").await.unwrap();
    assert_eq!(
        scheduled_condition(&p).map(|c| c.0).as_deref(),
        Some("True")
    );
    let ok = wait_event(
        &client,
        "plain",
        "Scheduled",
        "Successfully assigned sched/plain to worker-1",
    )
    .await;
    assert_eq!(ok.type_.as_deref(), Some("Normal"));

    // Tolerating CriticalAddonsOnly, pinned to the server node by a
    // matchFields affinity: it lands on the tainted node.
    let pinned = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [me]}]}]}}}});
    let mut tolerant = pinned.clone();
    tolerant["tolerations"] = json!([{"key": "CriticalAddonsOnly", "operator": "Exists"}]);
    create_pod(&pods, "addon", tolerant, json!({})).await;
    assert_eq!(wait_bound(&pods, "addon").await, me);
    // The same pin without the toleration fits nowhere; reasons are
    // counted per node and sorted.
    create_pod(&pods, "pinned-plain", pinned, json!({})).await;
    wait_unschedulable(
        &pods,
        "pinned-plain",
        "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         3 node(s) had untolerated taint {CriticalAddonsOnly: true}. \
         preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.",
    )
    .await;
    pods.delete("pinned-plain", &DeleteParams::default())
        .await
        .unwrap();

    // nodeSelector and required node affinity pick their nodes.
    create_node(
        &nodes,
        "worker-2",
        json!({"disk": "ssd", "generation": "2"}),
        json!([]),
    )
    .await;
    create_node(
        &nodes,
        "worker-3",
        json!({"zone": "b", "generation": "5"}),
        json!([]),
    )
    .await;
    create_pod(
        &pods,
        "ssd",
        json!({"nodeSelector": {"disk": "ssd"}}),
        json!({}),
    )
    .await;
    let affine = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["b", "c"]},
                {"key": "generation", "operator": "Gt", "values": ["3"]},
                {"key": "disk", "operator": "DoesNotExist"}]}]}}}});
    create_pod(&pods, "affine", affine, json!({})).await;
    assert_eq!(wait_bound(&pods, "ssd").await, "worker-2");
    assert_eq!(wait_bound(&pods, "affine").await, "worker-3");

    // Pods with a preset node are never touched; two on worker-1 make it
    // the busiest worker, so only owner spreading (not load balancing)
    // sends a replica there.
    for name in ["preset-1", "preset-2"] {
        create_pod(&pods, name, json!({"nodeName": "worker-1"}), json!({})).await;
    }
    // The owner is a ConfigMap: no workload controller manages its pods,
    // and it exists, so garbage collection keeps them.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "replicas", "namespace": NS}})).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let owner_ref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "replicas",
        "uid": owner.metadata.uid, "controller": true}]);
    for i in 0..3 {
        create_pod(
            &pods,
            &format!("replica-{i}"),
            json!({}),
            json!({"labels": {"app": "replica"}, "ownerReferences": owner_ref}),
        )
        .await;
    }
    let mut spread = Vec::new();
    for i in 0..3 {
        spread.push(wait_bound(&pods, &format!("replica-{i}")).await);
    }
    spread.sort();
    assert_eq!(spread, ["worker-1", "worker-2", "worker-3"]);
    for name in ["preset-1", "preset-2"] {
        let p = pods.get(name).await.unwrap();
        assert_eq!(node_of(&p).as_deref(), Some("worker-1"));
        assert!(
            scheduled_condition(&p).is_none_or(|c| c.1 != "Unschedulable"),
            "{name}: {:?}",
            scheduled_condition(&p)
        );
        assert!(events(&client, name, "Scheduled").await.is_empty());
    }

    // More CPU than any node has: Insufficient cpu on the workers, the
    // taint on the rest.
    let big: Pod = serde_json::from_value(json!({
        "metadata": {"name": "big-cpu", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "3", "memory": "64Mi"}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &big).await.unwrap();
    let insufficient = "0/6 nodes are available: 3 Insufficient cpu, \
        3 node(s) had untolerated taint {CriticalAddonsOnly: true}. \
        preemption: 0/6 nodes are available: 3 No preemption victims found for incoming pod, \
        3 Preemption is not helpful for scheduling.";
    wait_unschedulable(&pods, "big-cpu", insufficient).await;
    wait_event(&client, "big-cpu", "FailedScheduling", insufficient).await;

    stop.cancel();
}
