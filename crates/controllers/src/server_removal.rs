//! Server removal: deleting a server's Node removes its etcd member.
//!
//! The loop watches Nodes carrying the etcd role label. On a deletion it
//! asks the datastore (through a callback, since membership is not an API
//! object) to remove that node's member; the datastore never removes the
//! last voter. A deletion that happens while no server holds the lease is
//! not acted on (members of never-registered joining servers must not be
//! mistaken for orphans); `rke2` users remove such members by deleting the
//! Node again after it re-registers.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Removes the etcd member of a node; `Ok(true)` when one was removed.
pub type RemoveMember =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// The label that marks a server (etcd) node.
pub const ETCD_ROLE_LABEL: &str = "node-role.kubernetes.io/etcd";

/// Runs until `stop`: on every deleted etcd node, removes its member.
pub async fn run(client: kube::Client, remove: RemoveMember, stop: CancellationToken) {
    let nodes: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().labels(&format!("{ETCD_ROLE_LABEL}=true"));
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut stream = watcher(nodes, cfg).boxed();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.try_next() => ev,
        };
        match ev {
            Ok(Some(watcher::Event::Apply(n))) | Ok(Some(watcher::Event::InitApply(n))) => {
                if let Some(name) = n.metadata.name {
                    known.insert(name);
                }
            }
            Ok(Some(watcher::Event::Delete(n))) => {
                if let Some(name) = n.metadata.name {
                    known.remove(&name);
                    info!(node = %name, "server node deleted; removing its etcd member");
                    match remove(name.clone()).await {
                        Ok(true) => {}
                        Ok(false) => info!(node = %name, "no removable etcd member for this node"),
                        Err(e) => warn!(node = %name, error = %e, "removing etcd member failed"),
                    }
                }
            }
            Ok(Some(watcher::Event::Init)) => {}
            Ok(Some(watcher::Event::InitDone)) => {}
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "node watch failed; the watcher retries");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
