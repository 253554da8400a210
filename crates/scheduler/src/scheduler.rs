//! The scheduling loop: watches, queues, the node cache, binding and
//! reporting.
//!
//! One task owns everything: it applies Node and Pod watch events to its
//! own maps, and after each event schedules pods from the *active* queue
//! one by one (so decisions never race each other). A pod that fits
//! nowhere is *parked*; parked pods go back to the active queue when
//! something could have made room — a Node whose labels, taints, cordon,
//! allocatable or readiness changed, a bound pod deleted or finished, the
//! parked pod's own spec changed — and every 30 s regardless, as upstream's
//! unschedulable-pod flush does, in case a change slipped past those rules.
//!
//! A decision reads only per-node state kept up to date as events arrive
//! ([`Cache`]: what the pods on each node request, their count, owners and
//! host ports; [`NodeFacts`]: parsed allocatable, effective taints), so
//! its cost grows with the number of nodes, not with nodes × pods.
//!
//! A chosen pod is *assumed* on its node at once and its binding runs in
//! the background, up to [`MAX_BINDINGS_IN_FLIGHT`] at a time, while the
//! next decisions already count it there (upstream's scheduler cache does
//! the same). The assumption holds until the watch shows the pod bound —
//! a successful binding reaches the watch only later — and is dropped if
//! the binding fails. Without it, the replicas of one ReplicaSet created
//! together would all see an empty cluster and pile onto one node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::predicates::{self, Candidate, FitError, Footprint, NodeFacts, NodeInfo, is_terminated};
use crate::preemption::{self, Budget, OnNode, priority_of};

/// The `spec.schedulerName` this scheduler serves (also the event source).
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// How often parked pods are retried even if nothing seemed to change.
const RETRY_PERIOD: Duration = Duration::from_secs(30);
/// How often a repeated identical failure may bump its event's `count`, so
/// a pod pending for hours does not turn into a stream of event writes.
const EVENT_REFRESH: Duration = Duration::from_secs(30);
/// Bindings awaited at once. A binding is one API round trip (an etcd
/// write); awaiting each before the next decision capped the scheduler at
/// one pod per round trip. Bounded so that a slow API server sees a
/// limited burst and the watch events keep being applied in between.
const MAX_BINDINGS_IN_FLIGHT: usize = 16;

/// `<namespace>/<name>`.
type Key = String;

fn key_of(pod: &Pod) -> Key {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn uid_of(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

fn node_name_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn is_bound(pod: &Pod) -> bool {
    node_name_of(pod).is_some()
}

/// Whether this scheduler should place the pod now: no node yet, addressed
/// to us, not being deleted, not finished, and not held back by
/// `spec.schedulingGates` (upstream waits until every gate is removed; the
/// removal is a spec change, which queues the pod again).
fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    !is_bound(pod)
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
        && matches!(
            spec.scheduler_name.as_deref().unwrap_or(""),
            "" | SCHEDULER_NAME
        )
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminated(pod)
}

/// What the filters read from a Node; a change in any of it may let a
/// parked pod fit, while heartbeats and other status churn cannot.
fn node_fingerprint(node: &Node) -> Value {
    let spec = node.spec.as_ref();
    json!({
        "labels": node.metadata.labels,
        "taints": spec.and_then(|s| s.taints.as_ref()),
        "unschedulable": spec.and_then(|s| s.unschedulable),
        "allocatable": node.status.as_ref().and_then(|s| s.allocatable.as_ref()),
        "ready": predicates::ready_status(node),
    })
}

fn spec_value(pod: &Pod) -> Value {
    serde_json::to_value(&pod.spec).unwrap_or(Value::Null)
}

/// Seconds-precision RFC 3339, the format of `Time` fields.
fn time_now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// A Node as the scheduler keeps it.
#[derive(Clone)]
struct KnownNode {
    node: Node,
    /// Derived from `node` when its fingerprint last changed; everything
    /// they are derived from is part of the fingerprint, so heartbeats need
    /// not recompute them.
    facts: NodeFacts,
    fingerprint: Value,
}

/// Where a pod counts in the [`Cache`] and for how much.
#[derive(Debug, Clone)]
struct Placed {
    uid: String,
    node: String,
    footprint: Footprint,
    /// `spec.priority` (immutable).
    priority: i32,
    /// Chosen by us, binding not (yet) seen in the watch.
    assumed: bool,
}

/// Per-node totals of the pods that count against each node: bound and not
/// terminated, or assumed by us. Maintained per pod event, so a decision
/// reads one [`NodeInfo`] per node instead of summing every pod.
#[derive(Debug, Default)]
struct Cache {
    placed: HashMap<Key, Placed>,
    /// By node name; also for nodes not (or not yet) in the node map, so a
    /// node that registers after pods were bound to it starts out right.
    infos: HashMap<String, NodeInfo>,
    empty: NodeInfo,
    /// How many placed pods have each priority: whether any pod could be
    /// preempted at all is one lookup, not a pass over every pod.
    priorities: BTreeMap<i32, usize>,
}

impl Cache {
    /// What counts against `node`.
    fn info(&self, node: &str) -> &NodeInfo {
        self.infos.get(node).unwrap_or(&self.empty)
    }

    fn is_assumed(&self, key: &str) -> bool {
        self.placed.get(key).is_some_and(|p| p.assumed)
    }

    /// The lowest priority of a placed pod.
    fn lowest_priority(&self) -> Option<i32> {
        self.priorities.keys().next().copied()
    }

    fn add(&mut self, key: &Key, placed: Placed) {
        *self.priorities.entry(placed.priority).or_default() += 1;
        self.infos
            .entry(placed.node.clone())
            .or_default()
            .add(&placed.footprint);
        self.placed.insert(key.clone(), placed);
    }

    /// Stops counting the pod `key`; whether it counted anywhere (so its
    /// place is free now).
    fn remove(&mut self, key: &str) -> bool {
        let Some(placed) = self.placed.remove(key) else {
            return false;
        };
        if let Some(n) = self.priorities.get_mut(&placed.priority) {
            *n -= 1;
            if *n == 0 {
                self.priorities.remove(&placed.priority);
            }
        }
        if let Some(info) = self.infos.get_mut(&placed.node) {
            info.remove(&placed.footprint);
            if info.is_empty() {
                self.infos.remove(&placed.node);
            }
        }
        true
    }

    /// Counts `pod` (not bound yet) on `node` until the watch confirms the
    /// binding or [`Cache::forget`] drops it.
    fn assume(&mut self, key: &Key, pod: &Pod, node: &str) {
        self.remove(key);
        self.add(
            key,
            Placed {
                uid: uid_of(pod).to_string(),
                node: node.to_string(),
                footprint: Footprint::of(pod),
                priority: priority_of(pod),
                assumed: true,
            },
        );
    }

    /// Drops the assumption of pod `key` (`uid`) after its binding failed;
    /// whether it held a place. A pod the watch already showed bound, or a
    /// newer pod under the same name, is left alone.
    fn forget(&mut self, key: &str, uid: &str) -> bool {
        match self.placed.get(key) {
            Some(p) if p.assumed && p.uid == uid => self.remove(key),
            _ => false,
        }
    }

    /// Applies a watched version of a pod: counted on its node while bound
    /// and not terminated, an assumption confirmed once the watch shows the
    /// binding. Whether that freed (or moved) a place, which may let a
    /// parked pod fit.
    fn observe(&mut self, key: &Key, pod: &Pod) -> bool {
        let uid = uid_of(pod);
        let current = self.placed.get(key);
        if current.is_some_and(|p| p.assumed && p.uid == uid)
            && !is_bound(pod)
            && !is_terminated(pod)
        {
            // Our binding has not reached the watch yet.
            return false;
        }
        let Some(node) = node_name_of(pod).filter(|_| !is_terminated(pod)) else {
            return self.remove(key);
        };
        // Recomputed on every update so an in-place resize counts as the
        // old full recount did; cheap next to decoding the event.
        let footprint = Footprint::of(pod);
        if let Some(p) = self.placed.get_mut(key)
            && p.uid == uid
            && p.node == node
            && p.footprint == footprint
        {
            p.assumed = false;
            return false;
        }
        let freed = self.remove(key);
        self.add(
            key,
            Placed {
                uid: uid.to_string(),
                node: node.to_string(),
                footprint,
                priority: priority_of(pod),
                assumed: false,
            },
        );
        freed
    }
}

/// The pick for `pod` among all `nodes`, counting what `cache` has on each.
#[cfg(test)]
fn decide(
    pod: &Pod,
    nodes: &BTreeMap<String, KnownNode>,
    cache: &Cache,
) -> Result<String, FitError> {
    decide_from(pod, nodes, cache, 0, usize::MAX).0
}

/// The pick for `pod` among the first `enough` feasible nodes, searching
/// from the `start`-th node round to the one before it; also how many
/// nodes were examined.
#[cfg(test)]
fn decide_from(
    pod: &Pod,
    nodes: &BTreeMap<String, KnownNode>,
    cache: &Cache,
    start: usize,
    enough: usize,
) -> (Result<String, FitError>, usize) {
    decide_with(pod, nodes, cache, &HashMap::new(), start, enough)
}

/// The pick for `pod` among the first `enough` feasible nodes, searching
/// from the `start`-th node round to the one before it, where `reserved`
/// replaces the cache's view of some nodes (those holding room for
/// nominated pods); also how many nodes were examined.
fn decide_with(
    pod: &Pod,
    nodes: &BTreeMap<String, KnownNode>,
    cache: &Cache,
    reserved: &HashMap<String, NodeInfo>,
    start: usize,
    enough: usize,
) -> (Result<String, FitError>, usize) {
    let start = if nodes.is_empty() {
        0
    } else {
        start % nodes.len()
    };
    predicates::select_among_first(
        pod,
        nodes
            .iter()
            .skip(start)
            .chain(nodes.iter().take(start))
            .map(|(name, k)| Candidate {
                node: &k.node,
                facts: &k.facts,
                info: reserved.get(name).unwrap_or_else(|| cache.info(name)),
            }),
        enough,
    )
}

/// Upstream's queue order: higher priority first, then older first; the
/// key breaks ties.
type QueueOrder = (Reverse<i32>, Option<Timestamp>);

fn queue_order(pod: &Pod) -> QueueOrder {
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    (
        Reverse(priority),
        pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
    )
}

/// Pods waiting for a decision, kept in queue order so taking the next one
/// does not sort the whole backlog again.
#[derive(Debug, Default)]
struct ActiveQueue {
    order: BTreeSet<(QueueOrder, Key)>,
    index: HashMap<Key, QueueOrder>,
}

impl ActiveQueue {
    fn push(&mut self, key: Key, pod: &Pod) {
        let order = queue_order(pod);
        if let Some(old) = self.index.insert(key.clone(), order) {
            self.order.remove(&(old, key.clone()));
        }
        self.order.insert((order, key));
    }

    fn remove(&mut self, key: &str) {
        if let Some(order) = self.index.remove(key) {
            self.order.remove(&(order, key.to_string()));
        }
    }

    fn pop(&mut self) -> Option<Key> {
        let (_, key) = self.order.pop_first()?;
        self.index.remove(&key);
        Some(key)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A pod that did not fit, waiting for a reason to try again.
struct Parked {
    /// The spec it was tried with: a different one is worth a new try.
    spec: Value,
    /// Retry on the next update of the pod itself (a write of ours hit a
    /// conflict, so the next version should be handled afresh).
    retry_on_update: bool,
}

/// The `FailedScheduling` event already written for a pod.
struct Reported {
    uid: String,
    message: String,
    event: String,
    count: i32,
    written: Instant,
}

/// Bindings in flight. Owned by [`run`]'s loop rather than the
/// [`Scheduler`], which is borrowed across awaits and so must stay `Sync`.
type Bindings = FuturesUnordered<BoxFuture<'static, BindingDone>>;

/// The outcome of one background binding.
struct BindingDone {
    key: Key,
    /// The version we decided about.
    pod: Pod,
    node: String,
    result: Result<(), kube::Error>,
}

struct Scheduler {
    client: kube::Client,
    /// `reportingInstance` of our events, naming the server we run on.
    instance: String,
    nodes: BTreeMap<String, KnownNode>,
    /// Nodes of a relist in progress (watch restarted after an error).
    node_relist: Option<BTreeMap<String, Node>>,
    nodes_synced: bool,
    pods: BTreeMap<Key, Pod>,
    pod_relist: Option<BTreeMap<Key, Pod>>,
    pods_synced: bool,
    active: ActiveQueue,
    parked: BTreeMap<Key, Parked>,
    cache: Cache,
    reported: BTreeMap<Key, Reported>,
    /// Where the next pod's search for feasible nodes starts.
    next_start: usize,
    /// Pods that preempted others, by key: their uid and the node they
    /// wait for (`status.nominatedNodeName`). Room is held there for them
    /// against pods of lower priority until they are bound or gone.
    nominated: BTreeMap<Key, (String, String)>,
}

/// The pods nominated (`nominated`, as [`Scheduler::nominated`]) to
/// `node` whose priority is below `preemptor`'s: upstream's
/// `getLowerPriorityNominatedPods`, for the nominations to clear when
/// `preemptor` is nominated there. A nomination of a pod since replaced
/// under the same name is left alone.
fn nominations_to_clear(
    nominated: &BTreeMap<Key, (String, String)>,
    pods: &BTreeMap<Key, Pod>,
    node: &str,
    preemptor: &Pod,
) -> Vec<Key> {
    let current = nominated.iter().filter_map(|(k, (uid, n))| {
        let p = pods.get(k).filter(|p| uid_of(p) == uid)?;
        Some((k.as_str(), n.as_str(), p))
    });
    preemption::lower_priority_nominated(current, node, priority_of(preemptor))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Runs the scheduler until `stop` is cancelled.
///
/// Call it only while holding the [`crate::SCHEDULER_LEASE`] Lease, e.g.
/// as the `lead` closure of `rke2_controllers::leader::run_elected`; the
/// token that closure gets is cancelled when leadership is lost. State is
/// rebuilt from the watches on every start, so a new leader simply carries
/// on. Bindings still in flight when `stop` fires are abandoned; the next
/// leader sees from the watch which of them landed.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    info!("scheduler started");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut s = Scheduler {
        client: client.clone(),
        instance: format!("{SCHEDULER_NAME}-{hostname}"),
        nodes: BTreeMap::new(),
        node_relist: None,
        nodes_synced: false,
        pods: BTreeMap::new(),
        pod_relist: None,
        pods_synced: false,
        active: ActiveQueue::default(),
        parked: BTreeMap::new(),
        cache: Cache::default(),
        reported: BTreeMap::new(),
        next_start: 0,
        nominated: BTreeMap::new(),
    };
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .boxed();
    let pods = watcher(
        Api::<Pod>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .boxed();
    let (mut nodes, mut pods) = (nodes, pods);
    let mut bindings = Bindings::new();
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = bindings.next(), if !bindings.is_empty() => s.binding_done(done),
            ev = nodes.next() => match ev {
                Some(Ok(ev)) => s.node_event(ev),
                Some(Err(e)) => warn!(error = %e, "node watch failed; retrying"),
                None => break,
            },
            ev = pods.next() => match ev {
                Some(Ok(ev)) => s.pod_event(ev),
                Some(Err(e)) => warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            _ = retry.tick() => s.unpark_all("periodic retry"),
        }
        // Decisions need the whole picture: nothing is placed before both
        // initial lists are in.
        if s.nodes_synced && s.pods_synced && !s.active.is_empty() {
            s.schedule_active(&stop, &mut bindings).await;
        }
    }
    info!("scheduler stopped");
}

impl Scheduler {
    fn node_event(&mut self, ev: WatchEvent<Node>) {
        match ev {
            WatchEvent::Apply(n) => self.node_applied(n),
            WatchEvent::Delete(n) => self.node_deleted(&n),
            WatchEvent::Init => self.node_relist = Some(BTreeMap::new()),
            WatchEvent::InitApply(n) => {
                if let Some(buf) = self.node_relist.as_mut() {
                    buf.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
            }
            WatchEvent::InitDone => {
                // A relist replaces the picture: what is missing was
                // deleted meanwhile, the rest is applied like an update.
                let fresh = self.node_relist.take().unwrap_or_default();
                let gone: Vec<Node> = self
                    .nodes
                    .iter()
                    .filter(|(k, _)| !fresh.contains_key(*k))
                    .map(|(_, n)| n.node.clone())
                    .collect();
                for n in gone {
                    self.node_deleted(&n);
                }
                for (_, n) in fresh {
                    self.node_applied(n);
                }
                self.nodes_synced = true;
            }
        }
    }

    fn node_applied(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let fingerprint = node_fingerprint(&node);
        if let Some(known) = self.nodes.get_mut(&name)
            && known.fingerprint == fingerprint
        {
            known.node = node;
            return;
        }
        let facts = NodeFacts::of(&node);
        self.nodes.insert(
            name.clone(),
            KnownNode {
                node,
                facts,
                fingerprint,
            },
        );
        debug!(node = %name, "node added or changed");
        self.unpark_all("node changed");
    }

    fn node_deleted(&mut self, node: &Node) {
        // A node going away never makes room for anyone. Its pods stay in
        // the cache until their own deletions arrive.
        let name = node.metadata.name.as_deref().unwrap_or("");
        self.nodes.remove(name);
    }

    fn pod_event(&mut self, ev: WatchEvent<Pod>) {
        match ev {
            WatchEvent::Apply(p) => self.pod_applied(p),
            WatchEvent::Delete(p) => self.pod_deleted(&p),
            WatchEvent::Init => self.pod_relist = Some(BTreeMap::new()),
            WatchEvent::InitApply(p) => {
                if let Some(buf) = self.pod_relist.as_mut() {
                    buf.insert(key_of(&p), p);
                }
            }
            WatchEvent::InitDone => {
                let fresh = self.pod_relist.take().unwrap_or_default();
                let gone: Vec<Pod> = self
                    .pods
                    .iter()
                    .filter(|(k, _)| !fresh.contains_key(*k))
                    .map(|(_, p)| p.clone())
                    .collect();
                for p in gone {
                    self.pod_deleted(&p);
                }
                for (_, p) in fresh {
                    self.pod_applied(p);
                }
                self.pods_synced = true;
            }
        }
    }

    fn pod_applied(&mut self, pod: Pod) {
        let key = key_of(&pod);
        let old = self.pods.insert(key.clone(), pod.clone());
        if old.as_ref().is_some_and(|o| uid_of(o) != uid_of(&pod)) {
            // Deleted and recreated under the same name while the watch
            // was down: forget the old pod first.
            self.forget(&key);
        }
        if self.cache.observe(&key, &pod) {
            self.unpark_all("pod finished or moved");
        }
        if is_bound(&pod) {
            self.active.remove(&key);
            self.parked.remove(&key);
            self.reported.remove(&key);
            self.nominated.remove(&key);
            return;
        }
        if !wants_scheduling(&pod) {
            self.active.remove(&key);
            self.parked.remove(&key);
            self.nominated.remove(&key);
            return;
        }
        // The nomination follows the pod's status: one from before this
        // scheduler started (another leader, or ours before a restart)
        // holds room as ours do, and a cleared one holds none. A version
        // from before our own nomination may briefly drop it; the next
        // version brings it back, before the pod is tried again.
        match pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            Some(node) => {
                self.nominated
                    .insert(key.clone(), (uid_of(&pod).to_string(), node.to_string()));
            }
            None => {
                self.nominated.remove(&key);
            }
        }
        if self.cache.is_assumed(&key) {
            // Our binding has not reached the watch yet.
            return;
        }
        match self.parked.get(&key) {
            Some(p) if !p.retry_on_update && p.spec == spec_value(&pod) => {}
            _ => {
                self.parked.remove(&key);
                self.active.push(key, &pod);
            }
        }
    }

    fn pod_deleted(&mut self, pod: &Pod) {
        let key = key_of(pod);
        self.pods.remove(&key);
        self.forget(&key);
    }

    /// Drops everything known about a pod that is gone; if it held a place
    /// on a node (bound or assumed), parked pods get another chance.
    fn forget(&mut self, key: &Key) {
        let held = self.cache.remove(key);
        self.active.remove(key);
        self.parked.remove(key);
        self.reported.remove(key);
        self.nominated.remove(key);
        if held {
            self.unpark_all("pod deleted");
        }
    }

    fn unpark_all(&mut self, why: &str) {
        if self.parked.is_empty() {
            return;
        }
        debug!(pods = self.parked.len(), why, "retrying unschedulable pods");
        for key in std::mem::take(&mut self.parked).into_keys() {
            if let Some(pod) = self.pods.get(&key) {
                self.active.push(key, pod);
            }
        }
    }

    /// Decides for active pods in queue order while a binding slot is free;
    /// the rest wait for the next turn of the loop.
    async fn schedule_active(&mut self, stop: &CancellationToken, bindings: &mut Bindings) {
        while bindings.len() < MAX_BINDINGS_IN_FLIGHT && !stop.is_cancelled() {
            let Some(key) = self.active.pop() else {
                return;
            };
            self.schedule_one(&key, bindings).await;
        }
    }

    async fn schedule_one(&mut self, key: &Key, bindings: &mut Bindings) {
        let Some(pod) = self.pods.get(key) else {
            return;
        };
        if !wants_scheduling(pod) || self.cache.is_assumed(key) {
            return;
        }
        let pod = pod.clone();
        let total = self.nodes.len();
        // The pod's claims: bound volumes limit the nodes, unbound
        // WaitForFirstConsumer claims learn the node chosen.
        let plan = match crate::volumes::plan(&self.client, &pod).await {
            Ok(p) => p,
            Err(why) => {
                let msg = FitError::pre_filter(&why, total);
                self.unschedulable(&pod, key, msg).await;
                return;
            }
        };
        let limited;
        let nodes = if plan.bound.is_empty() {
            &self.nodes
        } else {
            limited = self
                .nodes
                .iter()
                .filter(|(_, k)| plan.allows(&k.node))
                .map(|(n, k)| (n.clone(), k.clone()))
                .collect::<BTreeMap<_, _>>();
            &limited
        };
        let conflicts = total - nodes.len();
        let enough = predicates::feasible_nodes_to_find(nodes.len());
        let reserved = self.reserved_for_nominated(&pod, key);
        let (decision, examined) = if nodes.is_empty() {
            (Err(FitError::default()), 0)
        } else {
            decide_with(&pod, nodes, &self.cache, &reserved, self.next_start, enough)
        };
        self.next_start = self.next_start.wrapping_add(examined);
        match decision {
            Ok(node) => {
                if let Err(e) = crate::volumes::select_node(&self.client, &plan, &node).await {
                    let why = format!("selecting node {node:?} for the pod's claims: {e}");
                    self.unschedulable(&pod, key, FitError::pre_filter(&why, total))
                        .await;
                    return;
                }
                bindings.push(self.start_binding(pod, key, node));
            }
            Err(mut fit) => {
                fit.add_unresolvable(predicates::REASON_VOLUME_NODE_CONFLICT, conflicts);
                // Whether the pod keeps (or got) a nominated node.
                let mut nominated = true;
                let message = if !preemption::may_preempt(&pod) {
                    nominated = false;
                    fit.with_post_filter(preemption::NOT_ELIGIBLE_NEVER)
                } else if self.waits_for_victims(&pod, key) {
                    fit.with_post_filter(preemption::NOT_ELIGIBLE_TERMINATING)
                } else if fit.preemption_may_help()
                    && self
                        .cache
                        .lowest_priority()
                        .is_some_and(|p| p < priority_of(&pod))
                {
                    let allowed: Vec<String> = nodes.keys().cloned().collect();
                    match self.preempt(&pod, key, &allowed).await {
                        Some(_) => fit.with_post_filter(""),
                        None => {
                            nominated = false;
                            fit.to_string()
                        }
                    }
                } else {
                    nominated = false;
                    fit.to_string()
                };
                if !nominated {
                    self.clear_nomination(&pod, key).await;
                }
                self.unschedulable(&pod, key, message).await;
            }
        }
    }

    /// Drops the nomination of a pod that failed again and made no room
    /// this time, as upstream's scheduler clears `nominatedNodeName`: the
    /// room held for it would otherwise stay held.
    async fn clear_nomination(&mut self, pod: &Pod, key: &Key) {
        let ours = self.nominated.remove(key).is_some();
        let shown = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if !ours && !shown {
            return;
        }
        let patch = json!({"status": {"nominatedNodeName": null}});
        let name = pod.metadata.name.as_deref().unwrap_or("");
        if let Err(e) = self
            .pods_api(pod)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            debug!(pod = %key, error = %e, "could not clear nominatedNodeName");
        }
    }

    /// What nodes hold for nominated pods that go before `pod` (priority
    /// at least its own), as upstream's scheduler adds them to a node
    /// before filtering: the room a preemption made is not taken by a
    /// lower-priority pod while the preemptor waits for it.
    fn reserved_for_nominated(&self, pod: &Pod, key: &Key) -> HashMap<String, NodeInfo> {
        let mut out: HashMap<String, NodeInfo> = HashMap::new();
        for (k, (uid, node)) in &self.nominated {
            let Some(other) = self.pods.get(k) else {
                continue;
            };
            if k == key
                || uid_of(other) != uid
                || is_bound(other)
                || self.cache.is_assumed(k)
                || priority_of(other) < priority_of(pod)
            {
                continue;
            }
            out.entry(node.clone())
                .or_insert_with(|| self.cache.info(node).clone())
                .add(&Footprint::of(other));
        }
        out
    }

    /// Upstream's `PodEligibleToPreemptOthers`: a pod nominated to a node
    /// where a lower-priority pod is still terminating waits for that
    /// instead of choosing more victims.
    fn waits_for_victims(&self, pod: &Pod, key: &Key) -> bool {
        let node = match self.nominated.get(key) {
            Some((uid, node)) if uid == uid_of(pod) => Some(node.as_str()),
            _ => pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
                .filter(|n| !n.is_empty()),
        };
        let Some(node) = node else {
            return false;
        };
        let priority = priority_of(pod);
        self.cache.placed.iter().any(|(k, p)| {
            p.node == node
                && self.pods.get(k).is_some_and(|victim| {
                    victim.metadata.deletion_timestamp.is_some() && priority_of(victim) < priority
                })
        })
    }

    /// Preempts for `pod`: picks the node among `allowed` where removing
    /// lower-priority pods makes room at the least cost, nominates it,
    /// and deletes the victims gracefully (with the `DisruptionTarget`
    /// condition and a `Preempted` event each). The node, or `None` when
    /// no node has victims that would help.
    async fn preempt(&mut self, pod: &Pod, key: &Key, allowed: &[String]) -> Option<String> {
        // Budgets only change which victims are chosen, not whether a
        // node has any: they are read only when some node does.
        self.pick_victims(pod, key, allowed, &[])?;
        let budgets: Vec<Budget> = match Api::<PodDisruptionBudget>::all(self.client.clone())
            .list(&Default::default())
            .await
        {
            Ok(list) => list.items.iter().filter_map(Budget::of).collect(),
            Err(e) => {
                warn!(pod = %key, error = %e, "could not list PodDisruptionBudgets; preempting without them");
                Vec::new()
            }
        };
        let (chosen, victims) = self.pick_victims(pod, key, allowed, &budgets)?;
        let node = chosen.node;
        info!(pod = %key, %node, victims = ?chosen.pods, "preempting");
        // Nominated first, so the room made is held for this pod.
        let patch = json!({"status": {"nominatedNodeName": node}});
        let name = pod.metadata.name.as_deref().unwrap_or("");
        if let Err(e) = self
            .pods_api(pod)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(pod = %key, error = %e, "could not set nominatedNodeName");
            return None;
        }
        self.nominated
            .insert(key.clone(), (uid_of(pod).to_string(), node.clone()));
        // Lower-priority pods waiting for room on this node would wait
        // for room that now goes to this pod: their nomination is
        // cleared and they are tried again at once, as upstream's
        // `prepareCandidate` does.
        for other in nominations_to_clear(&self.nominated, &self.pods, &node, pod) {
            if let Some(p) = self.pods.get(&other).cloned() {
                info!(pod = %other, %node, preemptor = %key, "clearing the nomination of a lower-priority pod");
                self.clear_nomination(&p, &other).await;
                self.parked.remove(&other);
                self.active.push(other, &p);
            }
        }
        let message = format!(
            "{}: preempting to accommodate a higher priority pod",
            pod.spec
                .as_ref()
                .and_then(|s| s.scheduler_name.as_deref())
                .unwrap_or(SCHEDULER_NAME)
        );
        for victim in victims {
            self.preempt_victim(pod, &victim, &node, &message).await;
        }
        Some(node)
    }

    /// The node among `allowed` to preempt on for `pod`, weighing
    /// `budgets`, and its victims; `None` when no node has victims whose
    /// removal lets the pod fit.
    fn pick_victims(
        &self,
        pod: &Pod,
        key: &Key,
        allowed: &[String],
        budgets: &[Budget],
    ) -> Option<(preemption::Victims, Vec<Pod>)> {
        let mut by_node: HashMap<&str, Vec<OnNode<'_>>> = HashMap::new();
        for (k, placed) in &self.cache.placed {
            if placed.assumed {
                continue;
            }
            if let Some(p) = self.pods.get(k).filter(|p| uid_of(p) == placed.uid) {
                by_node
                    .entry(placed.node.as_str())
                    .or_default()
                    .push(OnNode {
                        key: k,
                        pod: p,
                        footprint: &placed.footprint,
                    });
            }
        }
        let reserved = self.reserved_for_nominated(pod, key);
        let candidates: Vec<preemption::Victims> = allowed
            .iter()
            .filter_map(|name| {
                let known = self.nodes.get(name)?;
                let on = by_node.get(name.as_str())?;
                let info = reserved.get(name).unwrap_or_else(|| self.cache.info(name));
                preemption::select_victims(pod, &known.node, info, on, budgets)
            })
            .collect();
        let chosen = preemption::pick(candidates)?;
        let victims: Vec<Pod> = chosen
            .pods
            .iter()
            .filter_map(|k| self.pods.get(k).cloned())
            .collect();
        Some((chosen, victims))
    }

    /// Marks `victim` with `DisruptionTarget`, deletes it with its own
    /// grace period, and records the `Preempted` event.
    async fn preempt_victim(&self, preemptor: &Pod, victim: &Pod, node: &str, message: &str) {
        let api = self.pods_api(victim);
        let name = victim.metadata.name.as_deref().unwrap_or("");
        let patch = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True",
            "reason": "PreemptionByScheduler", "message": message,
            "lastTransitionTime": time_now(),
        }]}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) => {
                warn!(pod = %name, error = %e, "could not add the DisruptionTarget condition")
            }
        }
        // Only the version we chose: a pod replaced meanwhile is not ours
        // to delete.
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: victim.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                warn!(pod = %name, error = %e, "could not delete the preempted pod");
                return;
            }
        }
        let message = format!("Preempted by pod {} on node {node}", uid_of(preemptor));
        if let Some((_, mut event)) =
            self.build_event(victim, "Normal", "Preempted", "Preempting", &message)
        {
            event.related = Some(k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: preemptor.metadata.namespace.clone(),
                name: preemptor.metadata.name.clone(),
                uid: preemptor.metadata.uid.clone(),
                ..Default::default()
            });
            let events: Api<Event> = Api::namespaced(
                self.client.clone(),
                victim.metadata.namespace.as_deref().unwrap_or("default"),
            );
            if let Err(e) = events.create(&PostParams::default(), &event).await {
                debug!(pod = %name, error = %e, "could not write the Preempted event");
            }
        }
    }

    fn pods_api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Assumes `pod` on `node`; the returned future posts its binding, and
    /// [`Scheduler::binding_done`] handles the answer.
    fn start_binding(
        &mut self,
        pod: Pod,
        key: &Key,
        node: String,
    ) -> BoxFuture<'static, BindingDone> {
        self.cache.assume(key, &pod, &node);
        self.parked.remove(key);
        let api = self.pods_api(&pod);
        let key = key.clone();
        let binding = async move {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": pod.metadata.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let result = api
                .create_subresource::<Value, Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .map(drop);
            BindingDone {
                key,
                pod,
                node,
                result,
            }
        };
        binding.boxed()
    }

    fn binding_done(&mut self, done: BindingDone) {
        let BindingDone {
            key,
            pod,
            node,
            result,
        } = done;
        match result {
            Ok(()) => {
                info!(pod = %key, %node, "pod bound");
                self.reported.remove(&key);
                let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let message = format!("Successfully assigned {ns}/{name} to {node}");
                // Not awaited: the next pod's binding need not wait for
                // this event's etcd write (upstream records events
                // asynchronously too).
                if let Some((_, event)) =
                    self.build_event(&pod, "Normal", "Scheduled", "Binding", &message)
                {
                    let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
                    tokio::spawn(async move {
                        if let Err(e) = api.create(&PostParams::default(), &event).await {
                            debug!(error = %e, "could not write the Scheduled event");
                        }
                    });
                }
            }
            // Already bound (by another scheduler instance during a leader
            // change, or a user), being deleted, or gone: the watch brings
            // the truth either way.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                debug!(pod = %key, %node, reason = %s.message, "binding refused; skipping");
                if self.cache.forget(&key, uid_of(&pod)) {
                    self.unpark_all("binding refused");
                }
            }
            Err(e) => {
                warn!(pod = %key, %node, error = %e, "binding failed; will retry");
                if self.cache.forget(&key, uid_of(&pod)) {
                    self.unpark_all("binding failed");
                }
                // Only the pod we decided about: one deleted (or replaced)
                // meanwhile must not come back from the parked set.
                if self
                    .pods
                    .get(&key)
                    .is_some_and(|p| uid_of(p) == uid_of(&pod))
                {
                    self.park(&key, &pod, true);
                }
            }
        }
    }

    fn park(&mut self, key: &Key, pod: &Pod, retry_on_update: bool) {
        self.parked.insert(
            key.clone(),
            Parked {
                spec: spec_value(pod),
                retry_on_update,
            },
        );
    }

    async fn unschedulable(&mut self, pod: &Pod, key: &Key, message: String) {
        debug!(pod = %key, %message, "pod does not fit");
        self.park(key, pod, false);
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let up_to_date = current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message.as_str())
        });
        if !up_to_date {
            // lastTransitionTime only moves when the status does.
            let transition = current
                .filter(|c| c.status == "False")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(time_now);
            // Strategic merge: conditions merge by type, so the others
            // stay; the resourceVersion makes it conditional on the pod we
            // decided about (a concurrent binding turns it into a 409).
            let patch = json!({
                "metadata": {"resourceVersion": pod.metadata.resource_version},
                "status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null,
                    "lastTransitionTime": transition,
                }]},
            });
            let name = pod.metadata.name.as_deref().unwrap_or("");
            match self
                .pods_api(pod)
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    debug!(pod = %key, "pod changed while deciding; retrying on its next version");
                    self.park(key, pod, true);
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => warn!(pod = %key, error = %e, "could not record PodScheduled=False"),
            }
        }
        self.report_failure(pod, key, message).await;
    }

    /// One `FailedScheduling` event per pod and distinct message; the same
    /// failure again only bumps its `count` (at most every 30 s).
    async fn report_failure(&mut self, pod: &Pod, key: &Key, message: String) {
        let uid = uid_of(pod).to_string();
        if let Some(r) = self.reported.get_mut(key)
            && r.uid == uid
            && r.message == message
        {
            if r.written.elapsed() < EVENT_REFRESH {
                return;
            }
            let events: Api<Event> = Api::namespaced(
                self.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let patch = json!({"count": r.count + 1, "lastTimestamp": time_now()});
            match events
                .patch(&r.event, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    r.count += 1;
                    r.written = Instant::now();
                    return;
                }
                // Expired or deleted: write a fresh one below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    debug!(pod = %key, error = %e, "could not update FailedScheduling event");
                    return;
                }
            }
        }
        if let Some(event) = self
            .create_event(pod, "Warning", "FailedScheduling", "Scheduling", &message)
            .await
        {
            self.reported.insert(
                key.clone(),
                Reported {
                    uid,
                    message,
                    event,
                    count: 1,
                    written: Instant::now(),
                },
            );
        }
    }

    /// Writes a core/v1 Event about `pod`; its name, or `None` if the write
    /// failed (events are best effort, as upstream's recorder).
    async fn create_event(
        &self,
        pod: &Pod,
        type_: &str,
        reason: &str,
        action: &str,
        message: &str,
    ) -> Option<String> {
        let (name, event) = self.build_event(pod, type_, reason, action, message)?;
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => Some(name),
            Err(e) => {
                debug!(pod = %pod_name, %reason, error = %e, "could not write event");
                None
            }
        }
    }

    /// An event about `pod` from this scheduler, and its name.
    fn build_event(
        &self,
        pod: &Pod,
        type_: &str,
        reason: &str,
        action: &str,
        message: &str,
    ) -> Option<(String, Event)> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = pod.metadata.name.as_deref().unwrap_or("");
        // Upstream's recorder names events `<object>.<unix nanos in hex>`.
        let name = format!(
            "{pod_name}.{:x}",
            Timestamp::now().as_nanosecond().max(0) as u128
        );
        let now = time_now();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod_name,
                "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
            },
            "reason": reason, "message": message, "type": type_,
            "source": {"component": SCHEDULER_NAME},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "action": action,
            "reportingComponent": SCHEDULER_NAME,
            "reportingInstance": self.instance,
        });
        match serde_json::from_value::<Event>(event) {
            Ok(e) => Some((name, e)),
            Err(e) => {
                warn!(error = %e, "building event");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server spawns [`run`] on a multi-threaded runtime.
    #[test]
    fn run_is_send() {
        fn assert_send<F: Future + Send>(_: fn(kube::Client, CancellationToken) -> F) {}
        assert_send(run);
    }

    fn pod(name: &str, uid: &str, extra: Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
        });
        merge(&mut p, extra);
        serde_json::from_value(p).unwrap()
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn on(node: &str) -> Value {
        json!({"spec": {"nodeName": node}})
    }

    fn phase(p: &str) -> Value {
        json!({"status": {"phase": p}})
    }

    fn node(name: &str, cpu: &str, pods: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": pods},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    fn known(nodes: &[Node]) -> BTreeMap<String, KnownNode> {
        nodes
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap(),
                    KnownNode {
                        node: n.clone(),
                        facts: NodeFacts::of(n),
                        fingerprint: node_fingerprint(n),
                    },
                )
            })
            .collect()
    }

    fn key(name: &str) -> Key {
        format!("default/{name}")
    }

    #[test]
    fn a_sample_of_feasible_nodes_rotating_over_all() {
        use predicates::feasible_nodes_to_find as enough;
        assert_eq!(
            [
                enough(3),
                enough(99),
                enough(100),
                enough(1000),
                enough(2000)
            ],
            [3, 99, 100, 420, 680]
        );
        assert_eq!([enough(5000), enough(10_000)], [500, 500]);
        // Five nodes, of which n2 is full; look for two feasible ones.
        let mut all: Vec<Node> = (0..5).map(|i| node(&format!("n{i}"), "4", "110")).collect();
        all[2] = node("n2", "4", "0");
        let nodes = known(&all);
        let c = Cache::default();
        let p = pod("p", "u1", json!({}));
        // From n1: n1 fits, n2 does not, n3 fits: three examined.
        let (pick, examined) = decide_from(&p, &nodes, &c, 1, 2);
        assert_eq!((pick.unwrap().as_str(), examined), ("n1", 3));
        // From n4 the search wraps round to n0.
        let (pick, examined) = decide_from(&p, &nodes, &c, 4 + 5, 2);
        assert_eq!((pick.unwrap().as_str(), examined), ("n0", 2));
        // A pod nothing fits is checked against every node.
        let big = pod(
            "big",
            "u2",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "8"}}}]}}),
        );
        let (err, examined) = decide_from(&big, &nodes, &c, 3, 2);
        assert_eq!((err.unwrap_err().num_nodes, examined), (5, 5));
    }

    #[test]
    fn assumption_counts_until_confirmed_by_the_watch() {
        let mut c = Cache::default();
        let p = pod("a", "u1", json!({}));
        c.assume(&key("a"), &p, "n1");
        assert!(c.is_assumed(&key("a")));
        assert_eq!(c.info("n1").pods, 1);
        assert_eq!(c.info("n1").requested.get("cpu"), 100);
        // A status update before the binding shows up keeps the assumption.
        let unbound = pod("a", "u1", json!({"status": {"conditions": []}}));
        assert!(!c.observe(&key("a"), &unbound));
        assert!(c.is_assumed(&key("a")));
        assert_eq!(c.info("n1").pods, 1);
        // The watch shows the binding: confirmed, not counted twice.
        assert!(!c.observe(&key("a"), &pod("a", "u1", on("n1"))));
        assert!(!c.is_assumed(&key("a")));
        assert_eq!(c.info("n1").pods, 1);
        assert_eq!(c.info("n1").requested.get("cpu"), 100);
        // A late binding failure (say a 409 from a racing instance) must
        // not drop a pod the watch already showed bound.
        assert!(!c.forget(&key("a"), "u1"));
        assert_eq!(c.info("n1").pods, 1);
    }

    #[test]
    fn failed_binding_forgets_the_assumption() {
        let mut c = Cache::default();
        let p = pod("a", "u1", json!({}));
        c.assume(&key("a"), &p, "n1");
        // Another pod under the same name is not ours to forget.
        assert!(!c.forget(&key("a"), "u2"));
        assert_eq!(c.info("n1").pods, 1);
        assert!(c.forget(&key("a"), "u1"));
        assert!(!c.is_assumed(&key("a")));
        assert_eq!(c.info("n1"), &NodeInfo::default());
        assert!(c.infos.is_empty(), "no empty per-node entry is left behind");
        assert!(!c.forget(&key("a"), "u1"));
    }

    #[test]
    fn deleted_pods_free_their_node() {
        let mut c = Cache::default();
        c.observe(&key("bound"), &pod("bound", "u1", on("n1")));
        c.assume(&key("assumed"), &pod("assumed", "u2", json!({})), "n1");
        assert_eq!(c.info("n1").pods, 2);
        assert_eq!(c.info("n1").requested.get("memory"), 128 << 20);
        assert!(c.remove(&key("bound")));
        assert_eq!(c.info("n1").pods, 1);
        assert!(c.remove(&key("assumed")));
        assert_eq!(c.info("n1"), &NodeInfo::default());
        assert!(!c.remove(&key("bound")), "a second delete frees nothing");
    }

    #[test]
    fn the_lowest_placed_priority_is_tracked() {
        let mut c = Cache::default();
        assert_eq!(c.lowest_priority(), None);
        let mut high = on("n1");
        merge(&mut high, json!({"spec": {"priority": 100}}));
        c.observe(&key("high"), &pod("high", "u1", high));
        let mut low = on("n1");
        merge(&mut low, json!({"spec": {"priority": 5}}));
        c.observe(&key("low"), &pod("low", "u2", low));
        c.assume(&key("zero"), &pod("zero", "u3", json!({})), "n1");
        assert_eq!(c.lowest_priority(), Some(0));
        assert!(c.forget(&key("zero"), "u3"));
        assert_eq!(c.lowest_priority(), Some(5));
        assert!(c.remove(&key("low")));
        assert_eq!(c.lowest_priority(), Some(100));
        assert!(c.remove(&key("high")));
        assert_eq!(c.lowest_priority(), None);
    }

    #[test]
    fn terminated_pods_free_their_node() {
        for done in ["Succeeded", "Failed"] {
            let mut c = Cache::default();
            let mut running = pod("a", "u1", on("n1"));
            assert!(!c.observe(&key("a"), &running));
            assert_eq!(c.info("n1").pods, 1);
            merge_pod(&mut running, phase(done));
            assert!(c.observe(&key("a"), &running), "{done} frees its place");
            assert_eq!(c.info("n1"), &NodeInfo::default());
            // Seen again (a relist), still not counted.
            assert!(!c.observe(&key("a"), &running));
            assert_eq!(c.info("n1").pods, 0);
        }
        // A pod first seen already finished never counts.
        let mut c = Cache::default();
        let mut p = pod("b", "u1", on("n1"));
        merge_pod(&mut p, phase("Succeeded"));
        assert!(!c.observe(&key("b"), &p));
        assert_eq!(c.info("n1").pods, 0);
    }

    fn merge_pod(p: &mut Pod, extra: Value) {
        let mut v = serde_json::to_value(&*p).unwrap();
        merge(&mut v, extra);
        *p = serde_json::from_value(v).unwrap();
    }

    #[test]
    fn recreated_pod_replaces_the_old_one() {
        let mut c = Cache::default();
        c.observe(&key("a"), &pod("a", "u1", on("n1")));
        // Deleted and recreated while the watch was down: the new uid on
        // another node moves the count and reports the old place as free.
        assert!(c.observe(&key("a"), &pod("a", "u2", on("n2"))));
        assert_eq!(c.info("n1").pods, 0);
        assert_eq!(c.info("n2").pods, 1);
        // Unbound under the same name (not assumed by us): nothing counts.
        assert!(c.observe(&key("a"), &pod("a", "u3", json!({}))));
        assert_eq!(c.info("n2").pods, 0);
    }

    #[test]
    fn host_ports_and_owners_are_released() {
        let nodes = known(&[node("n1", "4", "110")]);
        let mut c = Cache::default();
        let with_port = |name: &str, uid: &str| {
            pod(
                name,
                uid,
                json!({
                    "metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
                        "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]},
                    "spec": {"containers": [{"name": "c", "image": "i",
                        "ports": [{"containerPort": 80, "hostPort": 8080}]}]},
                }),
            )
        };
        let first = with_port("a", "u1");
        assert_eq!(decide(&first, &nodes, &c).unwrap(), "n1");
        c.assume(&key("a"), &first, "n1");
        assert_eq!(c.info("n1").owners.get("rs-1"), Some(&1));
        let second = with_port("b", "u2");
        assert_eq!(
            decide(&second, &nodes, &c).unwrap_err().to_string(),
            "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. \
             preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
        assert!(c.forget(&key("a"), "u1"));
        assert!(c.info("n1").owners.is_empty());
        assert!(c.info("n1").host_ports.is_empty());
        assert_eq!(decide(&second, &nodes, &c).unwrap(), "n1");
    }

    #[test]
    fn full_node_fits_again_after_a_deletion() {
        let nodes = known(&[node("n1", "250m", "110")]);
        let mut c = Cache::default();
        let a = pod("a", "u1", json!({}));
        let b = pod("b", "u2", json!({}));
        let big = pod(
            "big",
            "u3",
            json!({"spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": "100m"}}}]}}),
        );
        c.assume(&key("a"), &a, "n1");
        c.assume(&key("b"), &b, "n1");
        assert!(decide(&big, &nodes, &c).is_err(), "200m of 250m used");
        c.observe(&key("a"), &pod("a", "u1", on("n1")));
        assert!(c.remove(&key("a")));
        assert_eq!(decide(&big, &nodes, &c).unwrap(), "n1");
    }

    /// The cache is only an optimisation: every decision must equal the one
    /// computed from scratch over all pods, through assumptions,
    /// confirmations, deletions and finished pods.
    #[test]
    fn cached_decisions_match_a_full_recount() {
        let node_list = [
            node("n1", "1", "5"),
            node("n2", "2", "110"),
            node("n3", "500m", "110"),
            node("n4", "3", "7"),
        ];
        let nodes = known(&node_list);
        let mut c = Cache::default();
        // What the watch would show: every pod placed so far, by key.
        let mut placed: BTreeMap<Key, Pod> = BTreeMap::new();
        for i in 0..60 {
            let name = format!("p{i}");
            let owner = format!("rs-{}", i % 3);
            let mut extra = json!({
                "metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
                    "kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {"requests": {"cpu": format!("{}m", 50 + (i % 4) * 75)}}}]},
            });
            if i % 5 == 0 {
                extra["spec"]["containers"][0]["ports"] =
                    json!([{"containerPort": 80, "hostPort": 9000 + (i % 10)}]);
            }
            let p = pod(&name, &format!("uid-{i}"), extra);
            let scratch = predicates::select_node(&p, &node_list, placed.values());
            let cached = decide(&p, &nodes, &c);
            assert_eq!(cached, scratch, "pod {name}");
            let Ok(target) = cached else { continue };
            c.assume(&key(&name), &p, &target);
            let mut bound = p.clone();
            bound.spec.as_mut().unwrap().node_name = Some(target.clone());
            // Every other pod: the watch confirms before the next decision.
            if i % 2 == 0 {
                c.observe(&key(&name), &bound);
            }
            placed.insert(key(&name), bound);
            // Now and then one finishes, is deleted, or its binding fails.
            if i % 7 == 6 {
                let victim = key(&format!("p{}", i - 3));
                if let Some(mut v) = placed.remove(&victim) {
                    match i % 3 {
                        0 => {
                            merge_pod(&mut v, phase("Succeeded"));
                            c.observe(&victim, &v);
                        }
                        1 => {
                            c.remove(&victim);
                        }
                        _ => {
                            // A failed binding only undoes an assumption;
                            // a confirmed pod is deleted instead.
                            if !c.forget(&victim, uid_of(&v)) {
                                c.remove(&victim);
                            }
                        }
                    }
                }
            }
        }
        let scratch = predicates::node_infos(placed.values());
        for n in ["n1", "n2", "n3", "n4"] {
            let mut want = scratch.get(n).cloned().unwrap_or_default();
            let mut got = c.info(n).clone();
            // Port order and zero amounts left by subtraction do not matter.
            want.host_ports.sort();
            got.host_ports.sort();
            want.requested.0.retain(|_, v| *v != 0);
            got.requested.0.retain(|_, v| *v != 0);
            assert_eq!(got, want, "node {n}");
        }
    }

    #[test]
    fn a_preemptor_clears_lower_priority_nominations_on_its_node() {
        let with_priority = |name: &str, uid: &str, priority: i32| {
            pod(name, uid, json!({"spec": {"priority": priority}}))
        };
        let pods: BTreeMap<Key, Pod> = [
            with_priority("low", "u-low", 5),
            with_priority("equal", "u-eq", 10),
            with_priority("other-node", "u-on", 1),
            with_priority("replaced", "u-new", 1),
            with_priority("preemptor", "u-p", 10),
        ]
        .into_iter()
        .map(|p| (key_of(&p), p))
        .collect();
        let nominated: BTreeMap<Key, (String, String)> = [
            ("low", "u-low", "n1"),
            ("equal", "u-eq", "n1"),
            ("other-node", "u-on", "n2"),
            // Nominated under its old uid: not this pod's nomination.
            ("replaced", "u-old", "n1"),
            ("preemptor", "u-p", "n1"),
        ]
        .into_iter()
        .map(|(n, uid, node)| (key(n), (uid.to_string(), node.to_string())))
        .collect();
        let preemptor = &pods[&key("preemptor")];
        assert_eq!(
            nominations_to_clear(&nominated, &pods, "n1", preemptor),
            [key("low")]
        );
        assert!(nominations_to_clear(&nominated, &pods, "n3", preemptor).is_empty());
    }

    #[test]
    fn queue_takes_priority_then_age_then_name() {
        let at = |name: &str, prio: i32, created: &str| {
            pod(
                name,
                name,
                json!({"metadata": {"creationTimestamp": created}, "spec": {"priority": prio}}),
            )
        };
        let mut q = ActiveQueue::default();
        q.push(key("young"), &at("young", 0, "2026-01-01T00:00:05Z"));
        q.push(key("old-b"), &at("old-b", 0, "2026-01-01T00:00:01Z"));
        q.push(key("old-a"), &at("old-a", 0, "2026-01-01T00:00:01Z"));
        q.push(key("urgent"), &at("urgent", 100, "2026-01-01T00:00:09Z"));
        q.push(key("gone"), &at("gone", 0, "2026-01-01T00:00:00Z"));
        // Pushed again (unparked twice): still once in the queue.
        q.push(key("young"), &at("young", 0, "2026-01-01T00:00:05Z"));
        q.remove(&key("gone"));
        let order: Vec<Key> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            ["urgent", "old-a", "old-b", "young"].map(key).to_vec()
        );
        assert!(q.is_empty());
        assert!(q.index.is_empty());
    }
}
