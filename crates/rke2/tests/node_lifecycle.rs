//! The node lifecycle loop against a real server: nodes that stop renewing
//! their Lease go `Unknown` and get the unreachable taints; they lose the
//! taints when they renew again; the real server node stays untouched; a
//! restarted loop (a leader change) does not rewrite what is already
//! right.
//!
//! The server does not run the loop itself here: the test runs it
//! in-process with a short grace period, as an API client like any other.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rke2_controllers::node_lifecycle::{self, NodeLifecycleConfig};
use rke2_testbed::{Server, ServerOpts, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(90);
/// Longer than the real node's 10 s lease renewal plus a monitor period,
/// so the server's own node must stay healthy.
const GRACE: Duration = Duration::from_secs(14);
const MONITOR: Duration = Duration::from_secs(1);
/// How long a marking may take: the grace period plus generous slack.
const MARKED_WITHIN: Duration = Duration::from_secs(14 + 40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn micro_now() -> String {
    Timestamp::from_microsecond(Timestamp::now().as_microsecond())
        .unwrap()
        .to_string()
}

fn secs_ago(s: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() - s)
        .unwrap()
        .to_string()
}

fn conditions(heartbeat: &str) -> Value {
    let c = |ty: &str, status: &str, reason: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": "fake kubelet",
               "lastHeartbeatTime": heartbeat, "lastTransitionTime": heartbeat})
    };
    json!([
        c("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        c("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        c("PIDPressure", "False", "KubeletHasSufficientPID"),
        c("Ready", "True", "KubeletReady"),
    ])
}

const OTHER_TAINT: &str = "example.com/dedicated";

/// Creates a fake Node; `heartbeat` gives it conditions (all healthy).
async fn create_node(nodes: &Api<Node>, name: &str, heartbeat: Option<&str>) -> Node {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": OTHER_TAINT, "value": "db", "effect": "NoSchedule"}]},
    }))
    .unwrap();
    let created = nodes.create(&PostParams::default(), &node).await.unwrap();
    match heartbeat {
        Some(hb) => nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": conditions(hb)}})),
            )
            .await
            .unwrap(),
        None => created,
    }
}

async fn renew(leases: &Api<Lease>, name: &str) {
    let spec =
        json!({"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()});
    match leases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": spec,
            }))
            .unwrap();
            leases.create(&PostParams::default(), &lease).await.unwrap();
        }
        Err(e) => panic!("renewing lease {name}: {e}"),
    }
}

/// A fake kubelet renewing `name`'s Lease every second until cancelled.
fn renewer(
    leases: Api<Lease>,
    name: &'static str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => renew(&leases, name).await,
            }
        }
    });
    (stop, handle)
}

fn condition<'a>(n: &'a Node, ty: &str) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

fn ready(n: &Node) -> Option<String> {
    condition(n, "Ready").map(|c| c.status.clone())
}

fn taints(n: &Node) -> Vec<(String, String)> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

fn has_unreachable(n: &Node, effect: &str) -> bool {
    taints(n)
        .iter()
        .any(|(k, e)| k == node_lifecycle::UNREACHABLE_TAINT_KEY && e == effect)
}

fn marked(n: &Node) -> bool {
    ready(n).as_deref() == Some("Unknown")
        && has_unreachable(n, "NoSchedule")
        && has_unreachable(n, "NoExecute")
}

async fn wait_marked(nodes: &Api<Node>, name: &str) -> Node {
    eventually(
        MARKED_WITHIN,
        &format!("{name} Unknown and unreachable"),
        || async { nodes.get(name).await.ok().filter(marked) },
    )
    .await
    .unwrap()
}

/// The server's own node: Ready, never tainted unreachable.
async fn assert_healthy(nodes: &Api<Node>, name: &str) {
    let n = nodes.get(name).await.unwrap();
    assert_eq!(ready(&n).as_deref(), Some("True"), "{name}: {:?}", n.status);
    assert!(
        !taints(&n)
            .iter()
            .any(|(k, _)| k == node_lifecycle::UNREACHABLE_TAINT_KEY),
        "{name} tainted: {:?}",
        taints(&n)
    );
}

fn start_loop(client: &kube::Client) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let cfg = NodeLifecycleConfig {
        grace_period: GRACE,
        monitor_period: MONITOR,
    };
    let handle = tokio::spawn(node_lifecycle::run(client.clone(), cfg, stop.clone()));
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_nodes_are_marked_and_recover() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut server = Server::start(bin(), ServerOpts::default()).unwrap();
    let client = server.wait_ready(READY).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let me = server.node_name.clone();
    eventually(
        Duration::from_secs(60),
        "the server node and its lease",
        || async {
            let n = nodes.get(&me).await.ok()?;
            leases.get(&me).await.ok()?;
            (ready(&n).as_deref() == Some("True")).then_some(())
        },
    )
    .await
    .unwrap();

    // ghost: a live fake node renewing its Lease.
    create_node(&nodes, "ghost", Some(&secs_ago(0))).await;
    renew(&leases, "ghost").await;
    let (ghost_alive, ghost_renewer) = renewer(leases.clone(), "ghost");
    // old: never had a Lease, last heartbeat two hours ago.
    let old_heartbeat = secs_ago(7200);
    create_node(&nodes, "old", Some(&old_heartbeat)).await;
    // bare: never posted a Lease nor any status.
    create_node(&nodes, "bare", None).await;

    let (stop1, loop1) = start_loop(&client);

    // Both silent nodes get marked (one grace period after the loop first
    // sees them), which also proves the loop has watched ghost and the
    // server node for longer than the grace period.
    let old = wait_marked(&nodes, "old").await;
    let bare = wait_marked(&nodes, "bare").await;
    for ty in ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"] {
        let c = condition(&old, ty).unwrap_or_else(|| panic!("old has no {ty}"));
        assert_eq!(c.status, "Unknown", "{ty}");
        assert_eq!(c.reason.as_deref(), Some("NodeStatusUnknown"), "{ty}");
        assert_eq!(
            c.message.as_deref(),
            Some("Kubelet stopped posting node status."),
            "{ty}"
        );
        assert_eq!(
            c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()),
            Some(old_heartbeat.clone()),
            "{ty}: heartbeat kept"
        );
        let b = condition(&bare, ty).unwrap_or_else(|| panic!("bare has no {ty}"));
        assert_eq!(b.status, "Unknown", "{ty}");
        assert_eq!(b.reason.as_deref(), Some("NodeStatusNeverUpdated"), "{ty}");
    }
    for n in [&old, &bare] {
        let ts = n.spec.as_ref().unwrap().taints.clone().unwrap();
        assert!(ts.iter().any(|t| t.key == OTHER_TAINT), "other taints kept");
        let no_execute = ts
            .iter()
            .find(|t| t.key == node_lifecycle::UNREACHABLE_TAINT_KEY && t.effect == "NoExecute")
            .unwrap();
        assert!(no_execute.time_added.is_some(), "NoExecute has timeAdded");
    }
    let ghost = nodes.get("ghost").await.unwrap();
    assert_eq!(ready(&ghost).as_deref(), Some("True"));
    assert_eq!(
        taints(&ghost),
        [(OTHER_TAINT.to_string(), "NoSchedule".to_string())]
    );
    assert_healthy(&nodes, &me).await;

    // A leader change (a new loop with no memory) while ghost dies.
    stop1.cancel();
    loop1.await.unwrap();
    ghost_alive.cancel();
    ghost_renewer.await.unwrap();
    let old_rv = nodes.get("old").await.unwrap().metadata.resource_version;
    let (stop2, loop2) = start_loop(&client);

    let ghost = wait_marked(&nodes, "ghost").await;
    for c in ghost.status.as_ref().unwrap().conditions.as_ref().unwrap() {
        assert_eq!(c.status, "Unknown", "{}", c.type_);
        assert_eq!(
            c.reason.as_deref(),
            Some("NodeStatusUnknown"),
            "{}",
            c.type_
        );
    }
    assert!(
        taints(&ghost).contains(&(OTHER_TAINT.to_string(), "NoSchedule".to_string())),
        "other taints kept: {:?}",
        taints(&ghost)
    );
    // The new loop has now run for longer than the grace period: it left
    // the already-marked node alone (no write at all, no lifted taint).
    assert_eq!(
        nodes.get("old").await.unwrap().metadata.resource_version,
        old_rv,
        "the restarted loop rewrote an already-marked node"
    );
    assert_healthy(&nodes, &me).await;

    // ghost comes back: its taints go, its Ready stays the node's to set.
    let (ghost_alive, ghost_renewer) = renewer(leases.clone(), "ghost");
    let ghost =
        eventually(
            Duration::from_secs(30),
            "ghost's unreachable taints removed",
            || async {
                nodes.get("ghost").await.ok().filter(|n| {
                    !has_unreachable(n, "NoSchedule") && !has_unreachable(n, "NoExecute")
                })
            },
        )
        .await
        .unwrap();
    assert_eq!(
        taints(&ghost),
        [(OTHER_TAINT.to_string(), "NoSchedule".to_string())]
    );
    assert_eq!(
        ready(&ghost).as_deref(),
        Some("Unknown"),
        "the loop never writes Ready=True"
    );
    // The silent nodes stay marked.
    assert!(marked(&nodes.get("old").await.unwrap()));
    assert!(marked(&nodes.get("bare").await.unwrap()));
    assert_healthy(&nodes, &me).await;

    stop2.cancel();
    loop2.await.unwrap();
    ghost_alive.cancel();
    ghost_renewer.await.unwrap();
}
