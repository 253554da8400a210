//! Node lifecycle: a node that stops renewing its Lease becomes `Unknown`
//! and gets the `node.kubernetes.io/unreachable` taints, as
//! kube-controller-manager's node lifecycle controller does.
//!
//! The loop keeps reflectors over the Nodes and the Leases in
//! `kube-node-lease` (named like their node), filled from the apiserver's
//! watch cache, and every monitor period reads them and, per node:
//!
//! * **stale** (see below) → every condition of MemoryPressure,
//!   DiskPressure, PIDPressure and Ready that is not already `Unknown` is
//!   set to `Unknown` / `NodeStatusUnknown` / `Kubelet stopped posting node
//!   status.` with `lastTransitionTime` now and `lastHeartbeatTime` kept (a
//!   missing one is added as `NodeStatusNeverUpdated`, as upstream does),
//!   written as a strategic merge patch of `nodes/status` (conditions merge
//!   by `type`); and the taints `node.kubernetes.io/unreachable:NoSchedule`
//!   and `:NoExecute` are added, with `timeAdded` (upstream's
//!   `SwapNodeControllerTaint` stamps every taint it adds), keeping every
//!   other taint;
//! * **alive again** (this controller saw a renewal) → both unreachable
//!   taints are removed. Conditions are left alone: the node role writes
//!   `Ready=True` again with its own status updates, and the loop never
//!   writes `True`.
//!
//! Every write carries the `resourceVersion` it was computed from, so a
//! concurrent writer (the node role, a user, another controller) turns it
//! into a 409; the loop then reads the node and its Lease again and decides
//! afresh. `spec.taints` is an atomic list, so the taint patch sends the
//! whole new list.
//!
//! ## Reading from the cache, marking from live reads
//!
//! Listing every Node and Lease from etcd each period was ~6 MB a pass at
//! 2,000 nodes, so the loop reads its reflectors instead, as
//! kube-controller-manager reads its informers. A lagging cache can only
//! show *older* states. Lifting taints from it is safe: the renewal it
//! shows did happen, and the write's resourceVersion catches a node that
//! changed since. Marking from it is not: a Lease watch that fell behind
//! would make every node look dead, and the `NoExecute` taint evicts their
//! pods. So a node is only marked after a live read of the node and its
//! Lease agrees (one GET each, or one consistent list of both when more
//! than [`CONFIRM_BY_LIST`] nodes need it, as when a whole rack dies).
//! Observations are recorded from the cache only: a live read that shows
//! a renewal the cache has not delivered vetoes this pass's marking but is
//! not remembered, so the next cache pass (still older) does not count as
//! yet another renewal, and the node is judged again once the cache has
//! caught up.
//!
//! ## Staleness is measured with the controller's own clock
//!
//! Like upstream's "probe timestamp", the loop never compares a node's
//! `renewTime` (written with the *node's* clock) with its own clock.
//! It remembers, per node, the last `renewTime` and Ready
//! `lastHeartbeatTime` it saw and *when it first saw each new value*
//! ([`Observation::probe_time`], controller clock). A node is stale when
//! neither value has changed for longer than the grace period. A node whose
//! clock is hours off is therefore never marked unreachable while it keeps
//! renewing, and a controller with a skewed clock cannot mark anyone
//! either.
//!
//! On first sight (start-up, or after a leader change moved the loop to
//! another server) a node that has a Lease or a Ready condition counts as
//! just probed, so a dead node is marked at most one grace period plus one
//! monitor period after the loop starts. A node that never posted a Lease
//! nor a Ready condition counts from its `creationTimestamp` (clamped to
//! now), so one created longer than the grace period ago is marked at once.
//!
//! ## Idempotence across leader changes
//!
//! Decisions depend only on the objects and the loop's own observations:
//! a node already `Unknown` and tainted produces no write. Taints are only
//! removed after this loop has itself seen a renewal (never on first
//! sight), so a new leader does not lift the `NoExecute` taint of a dead
//! node (which would restart its eviction clock) just because it has not
//! yet watched it for a grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer;

/// Where nodes keep their Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The taint key of a node whose status is unknown.
pub const UNREACHABLE_TAINT_KEY: &str = "node.kubernetes.io/unreachable";
/// Reason of a condition the controller set to `Unknown`.
pub const REASON_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Message of a condition the controller set to `Unknown`.
pub const MESSAGE_STATUS_UNKNOWN: &str = "Kubelet stopped posting node status.";
/// Reason of a condition the node never posted.
pub const REASON_NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
/// Message of a condition the node never posted.
pub const MESSAGE_NEVER_UPDATED: &str = "Kubelet never posted node status.";
/// The conditions set to `Unknown` when a node goes stale.
pub const MONITORED_CONDITIONS: [&str; 4] =
    ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];
/// The taint effects added for an unreachable node.
pub const UNREACHABLE_EFFECTS: [&str; 2] = ["NoSchedule", "NoExecute"];
/// Above this many nodes to confirm in one pass, the live reads are one
/// consistent list of Nodes and one of Leases rather than a GET of each.
pub const CONFIRM_BY_LIST: usize = 32;

/// Timing of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLifecycleConfig {
    /// How long a node may go without a renewal observed by the controller
    /// before it is marked `Unknown` (kube-controller-manager's
    /// `--node-monitor-grace-period`).
    pub grace_period: Duration,
    /// How often nodes and Leases are checked (`--node-monitor-period`).
    pub monitor_period: Duration,
}

impl Default for NodeLifecycleConfig {
    /// 40 s grace (four missed 10 s renewals), checked every 5 s:
    /// upstream's defaults.
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(40),
            monitor_period: Duration::from_secs(5),
        }
    }
}

/// What the controller remembers about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The Lease's `renewTime` last seen (the node's clock; only compared
    /// for equality).
    pub renew_time: Option<DateTime<Utc>>,
    /// The Ready condition's `lastHeartbeatTime` last seen (likewise).
    pub heartbeat: Option<DateTime<Utc>>,
    /// When, by the controller's clock, the node was last seen alive: the
    /// moment a new `renew_time` or `heartbeat` was first observed.
    pub probe_time: DateTime<Utc>,
    /// Whether this controller has itself seen one of them change (not
    /// only the first sight).
    pub seen_alive: bool,
}

/// What to write for one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actions {
    /// Conditions to write to `nodes/status` (strategic merge by `type`).
    pub conditions: Vec<Value>,
    /// The complete new `spec.taints`, when it must change.
    pub taints: Option<Vec<Taint>>,
    /// Whether the unreachable taints are being added (else removed) when
    /// `taints` is set.
    pub tainting: bool,
}

impl Actions {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty() && self.taints.is_none()
    }

    /// Whether the node is being marked (conditions to `Unknown` or the
    /// unreachable taints added), the writes a live read must confirm.
    pub fn marks(&self) -> bool {
        self.tainting || !self.conditions.is_empty()
    }
}

fn chrono_of(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.as_microsecond()).unwrap_or_default()
}

fn time_of(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn condition<'a>(node: &'a Node, ty: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

fn lease_renew_time(lease: Option<&Lease>) -> Option<DateTime<Utc>> {
    lease?
        .spec
        .as_ref()?
        .renew_time
        .as_ref()
        .map(|t| chrono_of(&t.0))
}

/// Updates what is known about `node` with what is seen `now` (the
/// controller's clock). `prev` is the previous observation, `None` on first
/// sight.
pub fn observe(
    prev: Option<&Observation>,
    node: &Node,
    lease: Option<&Lease>,
    now: DateTime<Utc>,
) -> Observation {
    let renew_time = lease_renew_time(lease);
    // A kubelet reports Ready True or False, never Unknown: an Unknown
    // condition was written by this loop (or another leader's), and the
    // heartbeat time it carries is no sign of life. Counting it made a
    // never-updated node flap between marked and unmarked.
    let heartbeat = condition(node, "Ready")
        .filter(|c| c.status != "Unknown")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| chrono_of(&t.0));
    match prev {
        None => {
            let probe_time = if renew_time.is_some() || condition(node, "Ready").is_some() {
                now
            } else {
                // Never posted anything: count from its creation.
                node.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| chrono_of(&t.0).min(now))
                    .unwrap_or(now)
            };
            Observation {
                renew_time,
                heartbeat,
                probe_time,
                seen_alive: false,
            }
        }
        Some(p) => {
            let renewed = renew_time.is_some() && renew_time != p.renew_time;
            let heartbeat_moved = heartbeat.is_some() && heartbeat != p.heartbeat;
            let alive = renewed || heartbeat_moved;
            Observation {
                renew_time,
                heartbeat,
                probe_time: if alive { now } else { p.probe_time },
                seen_alive: p.seen_alive || alive,
            }
        }
    }
}

/// Whether the node has not been seen alive for longer than `grace`.
pub fn is_stale(obs: &Observation, grace: Duration, now: DateTime<Utc>) -> bool {
    now.signed_duration_since(obs.probe_time)
        .to_std()
        .map(|age| age > grace)
        .unwrap_or(false)
}

fn is_unreachable(t: &Taint) -> bool {
    t.key == UNREACHABLE_TAINT_KEY && UNREACHABLE_EFFECTS.contains(&t.effect.as_str())
}

/// What to write for `node`, given the controller's observation of it.
pub fn decide(node: &Node, obs: &Observation, grace: Duration, now: DateTime<Utc>) -> Actions {
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut actions = Actions::default();
    if is_stale(obs, grace, now) {
        for ty in MONITORED_CONDITIONS {
            match condition(node, ty) {
                Some(c) if c.status == "Unknown" => {}
                Some(c) => actions.conditions.push(json!({
                    "type": ty,
                    "status": "Unknown",
                    "reason": REASON_STATUS_UNKNOWN,
                    "message": MESSAGE_STATUS_UNKNOWN,
                    "lastHeartbeatTime": c.last_heartbeat_time,
                    "lastTransitionTime": rfc3339(now),
                })),
                None => actions.conditions.push(json!({
                    "type": ty,
                    "status": "Unknown",
                    "reason": REASON_NEVER_UPDATED,
                    "message": MESSAGE_NEVER_UPDATED,
                    "lastHeartbeatTime": node.metadata.creation_timestamp,
                    "lastTransitionTime": rfc3339(now),
                })),
            }
        }
        let mut new = taints.clone();
        for effect in UNREACHABLE_EFFECTS {
            if !taints
                .iter()
                .any(|t| t.key == UNREACHABLE_TAINT_KEY && t.effect == effect)
            {
                new.push(Taint {
                    key: UNREACHABLE_TAINT_KEY.to_string(),
                    effect: effect.to_string(),
                    value: None,
                    time_added: Some(time_of(now)),
                });
            }
        }
        if new.len() != taints.len() {
            actions.taints = Some(new);
            actions.tainting = true;
        }
    } else {
        let mut new = taints.clone();
        if obs.seen_alive {
            new.retain(|t| !is_unreachable(t));
        }
        // Upstream's TaintNodesByCondition: a pressure condition the node
        // reports `True` keeps new pods off it.
        for (ty, key) in PRESSURE_TAINTS {
            let want = condition(node, ty).is_some_and(|c| c.status == "True");
            let has = new.iter().any(|t| t.key == key && t.effect == "NoSchedule");
            if want && !has {
                new.push(Taint {
                    key: key.to_string(),
                    effect: "NoSchedule".to_string(),
                    value: None,
                    time_added: Some(time_of(now)),
                });
            } else if !want && has {
                new.retain(|t| !(t.key == key && t.effect == "NoSchedule"));
            }
        }
        if new != taints {
            actions.taints = Some(new);
        }
    }
    actions
}

/// The `NoSchedule` taint of each pressure condition (upstream's
/// `nodeConditionToTaintKeyStatusMap`).
pub const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

/// Writes `actions` for `node`, each write conditional on the
/// resourceVersion the decision was made from.
async fn apply(nodes: &Api<Node>, node: &Node, actions: &Actions) -> Result<(), kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut rv = node.metadata.resource_version.clone();
    if !actions.conditions.is_empty() {
        let patch = json!({
            "metadata": {"resourceVersion": rv},
            "status": {"conditions": actions.conditions},
        });
        let updated = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        // The status subresource leaves spec alone: the taints decided from
        // `node` still apply, at the new version.
        rv = updated.metadata.resource_version;
    }
    if let Some(taints) = &actions.taints {
        let list = if taints.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(taints).expect("taints serialize")
        };
        let patch = json!({
            "metadata": {"resourceVersion": rv},
            "spec": {"taints": list},
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// Decides and writes for one node from `node` and `lease`, given what
/// the loop has recorded about it; on a conflict reads the node and its
/// Lease again and decides afresh. Live reads are not recorded (see the
/// module documentation).
async fn sync_node(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    seen: &BTreeMap<String, Observation>,
    mut node: Node,
    mut lease: Option<Lease>,
    cfg: &NodeLifecycleConfig,
) -> Result<(), kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    for _ in 0..5 {
        let now = Utc::now();
        let obs = observe(seen.get(&name), &node, lease.as_ref(), now);
        let actions = decide(&node, &obs, cfg.grace_period, now);
        if actions.is_empty() {
            return Ok(());
        }
        match apply(nodes, &node, &actions).await {
            Ok(()) => {
                if actions.marks() {
                    let unseen = now.signed_duration_since(obs.probe_time).num_seconds();
                    info!(
                        node = %name,
                        not_seen_alive_for = %format!("{unseen}s"),
                        grace_period = ?cfg.grace_period,
                        "node stopped posting its lease/status; marked Unknown and tainted unreachable"
                    );
                } else {
                    info!(node = %name, "node renews its lease again; removed the unreachable taints");
                }
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(node = %name, "node changed while being updated; deciding again");
                node = match nodes.get_opt(&name).await? {
                    Some(n) => n,
                    None => return Ok(()),
                };
                lease = leases.get_opt(&name).await?;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    warn!(node = %name, "node kept changing while being updated; trying again next period");
    Ok(())
}

/// The loop's reflectors.
struct Caches {
    nodes: Store<Node>,
    leases: Store<Lease>,
}

impl Caches {
    fn lease(&self, name: &str) -> Option<Arc<Lease>> {
        self.leases
            .get(&ObjectRef::new(name).within(NODE_LEASE_NAMESPACE))
    }
}

/// One monitor pass over every node in the cache.
async fn monitor_once(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    caches: &Caches,
    seen: &mut BTreeMap<String, Observation>,
    cfg: &NodeLifecycleConfig,
) {
    let node_list = caches.nodes.state();
    let present: BTreeSet<&str> = node_list
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    seen.retain(|name, _| present.contains(name.as_str()));
    let mut to_confirm: Vec<String> = Vec::new();
    let mut to_lift: Vec<(Arc<Node>, Option<Arc<Lease>>)> = Vec::new();
    for node in node_list {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let lease = caches.lease(&name);
        let now = Utc::now();
        let obs = observe(seen.get(&name), &node, lease.as_deref(), now);
        let actions = decide(&node, &obs, cfg.grace_period, now);
        seen.insert(name.clone(), obs);
        if actions.marks() {
            to_confirm.push(name);
        } else if !actions.is_empty() {
            to_lift.push((node, lease));
        }
    }
    for (node, lease) in to_lift {
        let name = node.metadata.name.clone().unwrap_or_default();
        let r = sync_node(
            nodes,
            leases,
            seen,
            Node::clone(&node),
            lease.as_deref().cloned(),
            cfg,
        )
        .await;
        if let Err(e) = r {
            warn!(node = %name, error = %e, "updating node health failed; retrying next period");
        }
    }
    if to_confirm.is_empty() {
        return;
    }
    let listed = if to_confirm.len() > CONFIRM_BY_LIST {
        match live_lists(nodes, leases).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "listing nodes or node leases failed; retrying next period");
                return;
            }
        }
    } else {
        None
    };
    for name in to_confirm {
        let live = match &listed {
            Some((ns, ls)) => Ok((ns.get(&name).cloned(), ls.get(&name).cloned())),
            None => live_get(nodes, leases, &name).await,
        };
        let r = match live {
            Ok((Some(node), lease)) => sync_node(nodes, leases, seen, node, lease, cfg).await,
            // Deleted meanwhile: nothing to mark.
            Ok((None, _)) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            warn!(node = %name, error = %e, "updating node health failed; retrying next period");
        }
    }
}

/// A node and its Lease, read live.
async fn live_get(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    name: &str,
) -> Result<(Option<Node>, Option<Lease>), kube::Error> {
    Ok((nodes.get_opt(name).await?, leases.get_opt(name).await?))
}

type ByName<T> = BTreeMap<String, T>;

/// Every Node and node Lease, read consistently (from etcd).
async fn live_lists(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
) -> Result<(ByName<Node>, ByName<Lease>), kube::Error> {
    fn by_name<T: kube::Resource>(items: Vec<T>) -> ByName<T> {
        items
            .into_iter()
            .filter_map(|o| Some((o.meta().name.clone()?, o)))
            .collect()
    }
    let n = nodes.list(&ListParams::default()).await?.items;
    let l = leases.list(&ListParams::default()).await?.items;
    Ok((by_name(n), by_name(l)))
}

/// Runs the node lifecycle loop until `stop`.
pub async fn run(client: kube::Client, cfg: NodeLifecycleConfig, stop: CancellationToken) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    let caches = Caches {
        nodes: informer::spawn(nodes.clone(), "nodes", &stop, |_| {}),
        leases: informer::spawn(leases.clone(), "node leases", &stop, |_| {}),
    };
    // Judging nodes before both initial lists are in would see every
    // node without its Lease.
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async {
            let _ = caches.nodes.wait_until_ready().await;
            let _ = caches.leases.wait_until_ready().await;
        } => {}
    }
    let mut seen: BTreeMap<String, Observation> = BTreeMap::new();
    let mut tick = tokio::time::interval(cfg.monitor_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(grace_period = ?cfg.grace_period, monitor_period = ?cfg.monitor_period, "node lifecycle loop started");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = monitor_once(&nodes, &leases, &caches, &mut seen, &cfg) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(40);

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn ts(s: i64) -> String {
        rfc3339(t(s))
    }

    fn node(created: i64, conditions: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "creationTimestamp": ts(created), "resourceVersion": "7"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn healthy(heartbeat: i64) -> Value {
        json!([
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": ts(heartbeat), "lastTransitionTime": ts(0)},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "lastHeartbeatTime": ts(heartbeat), "lastTransitionTime": ts(0)},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "lastHeartbeatTime": ts(heartbeat), "lastTransitionTime": ts(0)},
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "lastHeartbeatTime": ts(heartbeat), "lastTransitionTime": ts(0)},
        ])
    }

    fn unknown(heartbeat: i64) -> Value {
        let mut c = healthy(heartbeat);
        for x in c.as_array_mut().unwrap() {
            x["status"] = json!("Unknown");
            x["reason"] = json!(REASON_STATUS_UNKNOWN);
        }
        c
    }

    fn lease(renew_micros: i64) -> Lease {
        let renew =
            DateTime::from_timestamp_micros(t(0).timestamp_micros() + renew_micros).unwrap();
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "namespace": NODE_LEASE_NAMESPACE},
            "spec": {"holderIdentity": "n1", "renewTime": renew.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
        }))
        .unwrap()
    }

    fn other_taint() -> Value {
        json!({"key": "example.com/dedicated", "value": "db", "effect": "NoSchedule"})
    }

    fn unreachable_taints(at: i64) -> Value {
        json!([
            other_taint(),
            {"key": UNREACHABLE_TAINT_KEY, "effect": "NoSchedule", "timeAdded": ts(at)},
            {"key": UNREACHABLE_TAINT_KEY, "effect": "NoExecute", "timeAdded": ts(at)},
        ])
    }

    #[test]
    fn conditions_this_loop_wrote_are_no_sign_of_life() {
        // A node that never posted anything, then marked by a loop: the
        // Unknown conditions carry a heartbeat (its creation time), which
        // must not count as the node being alive again.
        let bare = node(0, json!([]), json!([]));
        let first = observe(None, &bare, None, t(10));
        let marked = node(0, unknown(0), unreachable_taints(60));
        let after = observe(Some(&first), &marked, None, t(61));
        assert!(!after.seen_alive);
        assert_eq!(after.probe_time, first.probe_time);
        assert!(
            decide(&marked, &after, Duration::from_secs(40), t(62))
                .taints
                .is_none()
        );
        // The node itself reporting Ready again is.
        let back = node(0, healthy(70), unreachable_taints(60));
        let alive = observe(Some(&after), &back, None, t(71));
        assert!(alive.seen_alive);
        assert_eq!(alive.probe_time, t(71));
    }

    /// Feeds the same node/lease at each time in `times`, returning the
    /// last observation.
    fn watch(n: &Node, l: Option<&Lease>, times: &[i64]) -> Observation {
        let mut obs: Option<Observation> = None;
        for &s in times {
            obs = Some(observe(obs.as_ref(), n, l, t(s)));
        }
        obs.unwrap()
    }

    #[test]
    fn pressure_conditions_taint_and_untaint() {
        let conditions = |mem: &str| {
            json!([{"type": "Ready", "status": "True", "lastHeartbeatTime": ts(10)},
                {"type": "MemoryPressure", "status": mem}])
        };
        let n = node(0, conditions("True"), json!([]));
        let obs = watch(&n, None, &[10]);
        let a = decide(&n, &obs, Duration::from_secs(40), t(12));
        let taints = a.taints.expect("tainted");
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (taints[0].key.as_str(), taints[0].effect.as_str()),
            ("node.kubernetes.io/memory-pressure", "NoSchedule")
        );
        assert!(
            !a.tainting,
            "no live read needed for a condition the node posted"
        );
        let n = node(
            0,
            conditions("False"),
            json!([{"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}, other_taint()]),
        );
        let a = decide(&n, &obs, Duration::from_secs(40), t(12));
        assert_eq!(a.taints.expect("untainted").len(), 1);
    }

    #[test]
    fn default_timing_is_upstreams() {
        let c = NodeLifecycleConfig::default();
        assert_eq!(c.grace_period, Duration::from_secs(40));
        assert_eq!(c.monitor_period, Duration::from_secs(5));
    }

    #[test]
    fn fresh_lease_on_first_sight_writes_nothing() {
        let n = node(-1000, healthy(-500), json!([other_taint()]));
        let obs = watch(&n, Some(&lease(900 * 1_000_000)), &[1000]);
        assert_eq!(obs.probe_time, t(1000));
        assert!(!obs.seen_alive);
        assert!(decide(&n, &obs, GRACE, t(1000)).is_empty());
    }

    #[test]
    fn lease_not_renewed_for_the_grace_period_marks_unknown_and_taints() {
        let n = node(-1000, healthy(-500), json!([other_taint()]));
        let l = lease(0);
        // Seen at 0; unchanged until 40 s: still within grace.
        let obs = watch(&n, Some(&l), &[0, 20, 40]);
        assert!(decide(&n, &obs, GRACE, t(40)).is_empty());
        let obs = observe(Some(&obs), &n, Some(&l), t(41));
        let a = decide(&n, &obs, GRACE, t(41));
        assert_eq!(a.conditions.len(), 4);
        for (c, ty) in a.conditions.iter().zip(MONITORED_CONDITIONS) {
            assert_eq!(c["type"], ty);
            assert_eq!(c["status"], "Unknown");
            assert_eq!(c["reason"], REASON_STATUS_UNKNOWN);
            assert_eq!(c["message"], MESSAGE_STATUS_UNKNOWN);
            assert_eq!(c["lastHeartbeatTime"], ts(-500), "heartbeat kept");
            assert_eq!(c["lastTransitionTime"], ts(41));
        }
        assert!(a.tainting);
        let taints = serde_json::to_value(a.taints.unwrap()).unwrap();
        assert_eq!(
            taints,
            json!([
                other_taint(),
                {"key": UNREACHABLE_TAINT_KEY, "effect": "NoSchedule", "timeAdded": ts(41)},
                {"key": UNREACHABLE_TAINT_KEY, "effect": "NoExecute", "timeAdded": ts(41)},
            ])
        );
    }

    #[test]
    fn already_unknown_and_tainted_writes_nothing() {
        let n = node(-1000, unknown(-500), unreachable_taints(10));
        let obs = watch(&n, Some(&lease(0)), &[0, 100]);
        assert!(is_stale(&obs, GRACE, t(100)));
        assert!(decide(&n, &obs, GRACE, t(100)).is_empty());
    }

    #[test]
    fn only_conditions_not_yet_unknown_are_written_and_missing_taints_added() {
        let mut conds = healthy(-500);
        conds[3]["status"] = json!("Unknown");
        let n = node(
            -1000,
            conds,
            json!([{"key": UNREACHABLE_TAINT_KEY, "effect": "NoSchedule"}]),
        );
        let obs = watch(&n, Some(&lease(0)), &[0, 50]);
        let a = decide(&n, &obs, GRACE, t(50));
        let types: Vec<&str> = a
            .conditions
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["MemoryPressure", "DiskPressure", "PIDPressure"]);
        let taints = serde_json::to_value(a.taints.unwrap()).unwrap();
        assert_eq!(
            taints,
            json!([
                {"key": UNREACHABLE_TAINT_KEY, "effect": "NoSchedule"},
                {"key": UNREACHABLE_TAINT_KEY, "effect": "NoExecute", "timeAdded": ts(50)},
            ])
        );
    }

    #[test]
    fn renewal_after_going_unknown_removes_only_the_unreachable_taints() {
        let n = node(-1000, unknown(-500), unreachable_taints(10));
        let obs = watch(&n, Some(&lease(0)), &[0, 100]);
        let obs = observe(Some(&obs), &n, Some(&lease(101 * 1_000_000)), t(102));
        assert!(obs.seen_alive);
        assert_eq!(obs.probe_time, t(102));
        let a = decide(&n, &obs, GRACE, t(102));
        assert!(a.conditions.is_empty(), "Ready=True is the node's to write");
        assert!(!a.tainting);
        assert_eq!(
            serde_json::to_value(a.taints.unwrap()).unwrap(),
            json!([other_taint()])
        );
        // Only unreachable taints: the list becomes empty.
        let n = node(
            -1000,
            unknown(-500),
            json!([
                {"key": UNREACHABLE_TAINT_KEY, "effect": "NoSchedule"},
                {"key": UNREACHABLE_TAINT_KEY, "effect": "NoExecute"},
            ]),
        );
        assert_eq!(decide(&n, &obs, GRACE, t(102)).taints, Some(vec![]));
    }

    #[test]
    fn first_sight_never_lifts_taints() {
        // A new leader sees a dead, tainted node with a lease renewed "just
        // now" by a skewed clock: nothing is removed until it sees a renewal.
        let n = node(-1000, unknown(-500), unreachable_taints(10));
        let l = lease(1000 * 1_000_000);
        let obs = watch(&n, Some(&l), &[1000, 1010, 1030]);
        assert!(!obs.seen_alive);
        assert!(decide(&n, &obs, GRACE, t(1030)).is_empty());
        let obs = observe(Some(&obs), &n, Some(&l), t(1041));
        assert!(decide(&n, &obs, GRACE, t(1041)).is_empty());
    }

    #[test]
    fn node_clock_skew_does_not_matter() {
        // The node's clock is a day behind; it renews every 10 s.
        let n = node(-1000, healthy(-86_400), json!(null));
        let mut obs = observe(None, &n, Some(&lease(-86_400 * 1_000_000)), t(0));
        for i in 1..20 {
            let l = lease((-86_400 + i * 10) * 1_000_000);
            obs = observe(Some(&obs), &n, Some(&l), t(i * 10));
            assert!(decide(&n, &obs, GRACE, t(i * 10)).is_empty(), "at {i}");
        }
        // And a day ahead, likewise; when it stops, staleness counts from
        // the last renewal the controller saw.
        let l = lease(86_400 * 1_000_000);
        let obs = observe(Some(&obs), &n, Some(&l), t(200));
        let obs2 = observe(Some(&obs), &n, Some(&l), t(240));
        assert!(decide(&n, &obs2, GRACE, t(240)).is_empty());
        let obs3 = observe(Some(&obs2), &n, Some(&l), t(241));
        assert!(!decide(&n, &obs3, GRACE, t(241)).is_empty());
    }

    #[test]
    fn no_lease_counts_heartbeats() {
        // An old heartbeat on first sight: counted from first sight.
        let n = node(-10_000, healthy(-5_000), json!(null));
        let obs = watch(&n, None, &[0, 40]);
        assert!(decide(&n, &obs, GRACE, t(40)).is_empty());
        let obs = observe(Some(&obs), &n, None, t(41));
        let a = decide(&n, &obs, GRACE, t(41));
        assert_eq!(a.conditions.len(), 4);
        assert!(a.tainting);
        // A moving heartbeat keeps it alive.
        let obs = watch(&n, None, &[0, 30]);
        let n2 = node(-10_000, healthy(25), json!(null));
        let obs = observe(Some(&obs), &n2, None, t(35));
        let obs = observe(Some(&obs), &n2, None, t(70));
        assert!(decide(&n2, &obs, GRACE, t(70)).is_empty());
    }

    #[test]
    fn never_posted_anything_counts_from_creation() {
        let bare = |created: i64| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "n1", "creationTimestamp": ts(created)},
            }))
            .unwrap()
        };
        // Created long ago: marked on first sight.
        let n = bare(-3600);
        let obs = observe(None, &n, None, t(0));
        assert_eq!(obs.probe_time, t(-3600));
        let a = decide(&n, &obs, GRACE, t(0));
        assert_eq!(a.conditions.len(), 4);
        for c in &a.conditions {
            assert_eq!(c["status"], "Unknown");
            assert_eq!(c["reason"], REASON_NEVER_UPDATED);
            assert_eq!(c["message"], MESSAGE_NEVER_UPDATED);
            assert_eq!(c["lastHeartbeatTime"], ts(-3600));
        }
        assert_eq!(a.taints.as_ref().map(Vec::len), Some(2));
        // Created just now: given the grace period.
        let n = bare(-5);
        assert!(decide(&n, &observe(None, &n, None, t(0)), GRACE, t(0)).is_empty());
        // A creation time in the future (skew) counts as now.
        let n = bare(500);
        assert_eq!(observe(None, &n, None, t(0)).probe_time, t(0));
    }

    #[test]
    fn a_live_read_vetoes_marking_from_a_lagging_cache() {
        // The cache stops at the renewal at 0 while the node keeps renewing.
        let n = node(-1000, healthy(-500), json!([other_taint()]));
        let cached = lease(0);
        let recorded = watch(&n, Some(&cached), &[0, 20, 41]);
        let from_cache = decide(&n, &recorded, GRACE, t(41));
        assert!(from_cache.marks(), "the cache alone says stale");
        // The live read shows a renewal: nothing to write, and the live
        // observation is not recorded.
        let live = observe(Some(&recorded), &n, Some(&lease(40 * 1_000_000)), t(41));
        assert!(decide(&n, &live, GRACE, t(41)).is_empty());
        // Still lagging next pass: the recorded observation (not the live
        // one) is compared with the cache, so the stale copy is no
        // "renewal" and asks for confirmation again rather than reviving
        // the node for good.
        let recorded = observe(Some(&recorded), &n, Some(&cached), t(46));
        assert!(!recorded.seen_alive);
        assert!(decide(&n, &recorded, GRACE, t(46)).marks());
        // The cache catches up: a renewal, counted from when it was seen.
        let recorded = observe(Some(&recorded), &n, Some(&lease(40 * 1_000_000)), t(50));
        assert_eq!(recorded.probe_time, t(50));
        assert!(decide(&n, &recorded, GRACE, t(90)).is_empty());
        assert!(decide(&n, &recorded, GRACE, t(91)).marks());
    }

    #[test]
    fn lifting_taints_is_not_marking() {
        let n = node(-1000, unknown(-500), unreachable_taints(10));
        let obs = watch(&n, Some(&lease(0)), &[0, 100]);
        assert!(decide(&n, &obs, GRACE, t(100)).is_empty());
        let obs = observe(Some(&obs), &n, Some(&lease(101 * 1_000_000)), t(102));
        let a = decide(&n, &obs, GRACE, t(102));
        assert!(!a.is_empty());
        assert!(!a.marks());
    }

    #[test]
    fn a_lease_appearing_is_a_sign_of_life() {
        let n = node(-10, json!(null), json!(null));
        let obs = observe(None, &n, None, t(0));
        assert_eq!(obs.probe_time, t(-10));
        let obs = observe(Some(&obs), &n, Some(&lease(0)), t(35));
        assert!(obs.seen_alive);
        assert!(decide(&n, &obs, GRACE, t(70)).is_empty());
    }
}
