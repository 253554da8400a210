//! The scheduling loop: watches, queues, binding and reporting.
//!
//! One task owns everything: it applies Node and Pod watch events to its
//! own maps, and after each event schedules the pods in the *active* queue
//! one by one (so decisions never race each other). A pod that fits
//! nowhere is *parked*; parked pods go back to the active queue when
//! something could have made room — a Node whose labels, taints, cordon,
//! allocatable or readiness changed, a bound pod deleted or finished, the
//! parked pod's own spec changed — and every 30 s regardless, as upstream's
//! unschedulable-pod flush does, in case a change slipped past those rules.
//!
//! A successful binding reaches the pod watch only later, so the bound pod
//! is *assumed* on its node until the watch shows it bound (upstream's
//! scheduler cache does the same); without that, the replicas of one
//! ReplicaSet created together would all see an empty cluster and pile
//! onto one node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::predicates::{self, is_terminated};

/// The `spec.schedulerName` this scheduler serves (also the event source).
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// How often parked pods are retried even if nothing seemed to change.
const RETRY_PERIOD: Duration = Duration::from_secs(30);
/// How often a repeated identical failure may bump its event's `count`, so
/// a pod pending for hours does not turn into a stream of event writes.
const EVENT_REFRESH: Duration = Duration::from_secs(30);

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

fn is_bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
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

struct Scheduler {
    client: kube::Client,
    /// `reportingInstance` of our events, naming the server we run on.
    instance: String,
    nodes: BTreeMap<String, Node>,
    node_fingerprints: BTreeMap<String, Value>,
    /// Nodes of a relist in progress (watch restarted after an error).
    node_relist: Option<BTreeMap<String, Node>>,
    nodes_synced: bool,
    pods: BTreeMap<Key, Pod>,
    pod_relist: Option<BTreeMap<Key, Pod>>,
    pods_synced: bool,
    active: BTreeSet<Key>,
    parked: BTreeMap<Key, Parked>,
    /// Pods we bound whose binding the watch has not shown yet, with
    /// `spec.nodeName` filled in.
    assumed: BTreeMap<Key, Pod>,
    reported: BTreeMap<Key, Reported>,
}

/// Runs the scheduler until `stop` is cancelled.
///
/// Call it only while holding the [`crate::SCHEDULER_LEASE`] Lease, e.g.
/// as the `lead` closure of `rke2_controllers::leader::run_elected`; the
/// token that closure gets is cancelled when leadership is lost. State is
/// rebuilt from the watches on every start, so a new leader simply carries
/// on.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    info!("scheduler started");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut s = Scheduler {
        client: client.clone(),
        instance: format!("{SCHEDULER_NAME}-{hostname}"),
        nodes: BTreeMap::new(),
        node_fingerprints: BTreeMap::new(),
        node_relist: None,
        nodes_synced: false,
        pods: BTreeMap::new(),
        pod_relist: None,
        pods_synced: false,
        active: BTreeSet::new(),
        parked: BTreeMap::new(),
        assumed: BTreeMap::new(),
        reported: BTreeMap::new(),
    };
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed();
    let pods = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let (mut nodes, mut pods) = (nodes, pods);
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
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
            s.schedule_active(&stop).await;
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
                    .map(|(_, n)| n.clone())
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
        let fp = node_fingerprint(&node);
        self.nodes.insert(name.clone(), node);
        if self.node_fingerprints.get(&name) != Some(&fp) {
            self.node_fingerprints.insert(name.clone(), fp);
            debug!(node = %name, "node added or changed");
            self.unpark_all("node changed");
        }
    }

    fn node_deleted(&mut self, node: &Node) {
        // A node going away never makes room for anyone.
        let name = node.metadata.name.as_deref().unwrap_or("");
        self.nodes.remove(name);
        self.node_fingerprints.remove(name);
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
        if let Some(old) = old.as_ref()
            && uid_of(old) != uid_of(&pod)
        {
            // Deleted and recreated under the same name while the watch
            // was down: forget the old pod first.
            self.forget(&key, old);
        }
        if is_bound(&pod) {
            self.active.remove(&key);
            self.parked.remove(&key);
            self.assumed.remove(&key);
            self.reported.remove(&key);
            let was_running = old
                .as_ref()
                .is_some_and(|o| uid_of(o) == uid_of(&pod) && !is_terminated(o));
            if was_running && is_terminated(&pod) {
                self.unpark_all("pod finished");
            }
            return;
        }
        if !wants_scheduling(&pod) {
            self.active.remove(&key);
            self.parked.remove(&key);
            return;
        }
        if self.assumed.contains_key(&key) {
            // Our binding has not reached the watch yet.
            return;
        }
        match self.parked.get(&key) {
            Some(p) if !p.retry_on_update && p.spec == spec_value(&pod) => {}
            _ => {
                self.parked.remove(&key);
                self.active.insert(key);
            }
        }
    }

    fn pod_deleted(&mut self, pod: &Pod) {
        let key = key_of(pod);
        self.pods.remove(&key);
        self.forget(&key, pod);
    }

    /// Drops everything known about a pod that is gone; if it held a place
    /// on a node, parked pods get another chance.
    fn forget(&mut self, key: &Key, pod: &Pod) {
        let was_assumed = self.assumed.remove(key).is_some();
        self.active.remove(key);
        self.parked.remove(key);
        self.reported.remove(key);
        if was_assumed || (is_bound(pod) && !is_terminated(pod)) {
            self.unpark_all("pod deleted");
        }
    }

    fn unpark_all(&mut self, why: &str) {
        if self.parked.is_empty() {
            return;
        }
        debug!(pods = self.parked.len(), why, "retrying unschedulable pods");
        let keys = std::mem::take(&mut self.parked).into_keys();
        self.active.extend(keys);
    }

    /// Schedules every active pod: higher priority first, then older first
    /// (upstream's queue order), then by name.
    async fn schedule_active(&mut self, stop: &CancellationToken) {
        let mut queue: Vec<(Reverse<i32>, Option<Timestamp>, Key)> =
            std::mem::take(&mut self.active)
                .into_iter()
                .filter_map(|key| {
                    let pod = self.pods.get(&key)?;
                    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    Some((Reverse(priority), created, key))
                })
                .collect();
        queue.sort();
        for (_, _, key) in queue {
            if stop.is_cancelled() {
                return;
            }
            self.schedule_one(&key).await;
        }
    }

    async fn schedule_one(&mut self, key: &Key) {
        let Some(pod) = self.pods.get(key).cloned() else {
            return;
        };
        if !wants_scheduling(&pod) || self.assumed.contains_key(key) {
            return;
        }
        let bound = self
            .pods
            .values()
            .filter(|p| is_bound(p))
            .chain(self.assumed.values());
        match predicates::select_node(&pod, self.nodes.values(), bound) {
            Ok(node) => self.bind(&pod, key, &node).await,
            Err(fit) => self.unschedulable(&pod, key, fit.to_string()).await,
        }
    }

    fn pods_api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    async fn bind(&mut self, pod: &Pod, key: &Key, node: &str) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let res = self
            .pods_api(pod)
            .create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding)
            .await;
        match res {
            Ok(_) => {
                info!(pod = %key, %node, "pod bound");
                let mut assumed = pod.clone();
                if let Some(spec) = assumed.spec.as_mut() {
                    spec.node_name = Some(node.to_string());
                }
                self.assumed.insert(key.clone(), assumed);
                self.parked.remove(key);
                self.reported.remove(key);
                let message = format!("Successfully assigned {ns}/{name} to {node}");
                // Not awaited: the next pod's binding need not wait for
                // this event's etcd write (upstream records events
                // asynchronously too).
                if let Some((_, event)) =
                    self.build_event(pod, "Normal", "Scheduled", "Binding", &message)
                {
                    let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
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
            }
            Err(e) => {
                warn!(pod = %key, %node, error = %e, "binding failed; will retry");
                self.park(key, pod, true);
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
