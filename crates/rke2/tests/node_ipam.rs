//! Node IPAM against a real server: the server's own leader-elected loop
//! gives its own node and API-created nodes distinct /24s of a small
//! `cluster-cidr` (a /23: two blocks, so exhaustion is reachable), reports
//! `CIDRNotAvailable` when none is left, hands a deleted node's block to
//! the waiting one, and still knows every block in use after a restart.
//! The apiserver refuses to change a podCIDR once set.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually};
use serde_json::json;

const READY: Duration = Duration::from_secs(90);
/// Generous for a watch-driven write; a leader election after the
/// restart is included (8 s lease).
const WITHIN: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn pod_cidrs(n: &Node) -> (Option<String>, Option<Vec<String>>) {
    let spec = n.spec.clone().unwrap_or_default();
    (spec.pod_cidr, spec.pod_cidrs)
}

async fn create_node(nodes: &Api<Node>, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

/// Waits until `name` holds a podCIDR (and the same one in podCIDRs).
async fn cidr_of(nodes: &Api<Node>, name: &str) -> String {
    eventually(WITHIN, &format!("a pod CIDR on node {name}"), || async {
        let n = nodes.get(name).await.ok()?;
        match pod_cidrs(&n) {
            (Some(c), Some(list)) if !c.is_empty() && list == [c.clone()] => Some(c),
            _ => None,
        }
    })
    .await
    .unwrap()
}

async fn not_available_event(events: &Api<Event>, node: &str) {
    eventually(
        WITHIN,
        &format!("a CIDRNotAvailable event for {node}"),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("CIDRNotAvailable")
                        && e.involved_object.kind.as_deref() == Some("Node")
                        && e.involved_object.name.as_deref() == Some(node)
                        && e.message.as_deref()
                            == Some(&format!("Node {node} status is now: CIDRNotAvailable"))
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_get_distinct_pod_cidrs_freed_on_delete() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let opts = ServerOpts {
        args: vec!["--cluster-cidr".into(), "10.42.0.0/23".into()],
        ..Default::default()
    };
    let mut server = Server::start(bin(), opts).unwrap();
    let client = server.wait_ready(READY).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let me = server.node_name.clone();

    // The server's own node is the first one: the first block.
    assert_eq!(cidr_of(&nodes, &me).await, "10.42.0.0/24");

    // A new node gets the other block within about a second of creation
    // (the deadline is generous; the loop is watch-driven).
    let created = Instant::now();
    create_node(&nodes, "ipam-a").await;
    assert_eq!(cidr_of(&nodes, "ipam-a").await, "10.42.1.0/24");
    assert!(
        created.elapsed() < Duration::from_secs(10),
        "pod CIDR took {:?}: is the loop still watch-driven?",
        created.elapsed()
    );

    // No block left: the node waits, named in a warning and an event.
    create_node(&nodes, "ipam-b").await;
    not_available_event(&events, "ipam-b").await;
    eventually(WITHIN, "the exhaustion warning naming ipam-b", || async {
        let log = server.log_text();
        log.lines()
            .any(|l| l.contains("no free pod CIDR") && l.contains("ipam-b"))
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(pod_cidrs(&nodes.get("ipam-b").await.unwrap()), (None, None));

    // Deleting ipam-a frees its block, and the waiting node gets it.
    nodes
        .delete("ipam-a", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(cidr_of(&nodes, "ipam-b").await, "10.42.1.0/24");

    // Once set, a podCIDR cannot be changed through the API.
    let change = json!({"spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]}});
    match nodes
        .patch("ipam-b", &PatchParams::default(), &Patch::Merge(&change))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message.contains(
                    "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
                ),
                "{}",
                s.message
            );
        }
        other => panic!("changing a podCIDR: expected 422, got {other:?}"),
    }

    // After a restart the new leader rebuilds the allocation from the
    // Nodes: both blocks stay with their holders, a new node waits.
    server
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    server.spawn().unwrap();
    let client = server.wait_ready(READY).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let events: Api<Event> = Api::namespaced(client, "default");
    create_node(&nodes, "ipam-c").await;
    not_available_event(&events, "ipam-c").await;
    assert_eq!(cidr_of(&nodes, &me).await, "10.42.0.0/24");
    assert_eq!(cidr_of(&nodes, "ipam-b").await, "10.42.1.0/24");
    assert_eq!(pod_cidrs(&nodes.get("ipam-c").await.unwrap()), (None, None));
    nodes
        .delete("ipam-b", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(cidr_of(&nodes, "ipam-c").await, "10.42.1.0/24");
}
