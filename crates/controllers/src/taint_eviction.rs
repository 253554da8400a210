//! Taint-based eviction, as kube-controller-manager's
//! `taint-eviction-controller` (the former NoExecuteTaintManager) does.
//!
//! A pod bound to a node (`spec.nodeName`) with `NoExecute` taints is
//! evicted:
//!
//! * at once when one of those taints is not tolerated by any of the pod's
//!   tolerations;
//! * otherwise, when every taint is tolerated but some tolerating
//!   toleration has `tolerationSeconds`, at the earliest
//!   `start(taint) + tolerationSeconds` over the taints, where `start` is
//!   the taint's `timeAdded` or, without one, when this loop first saw the
//!   taint on the node for that pod (upstream uses the latter always);
//!   `tolerationSeconds <= 0` means at once. As upstream, the toleration
//!   used for a taint is the *first* one that tolerates it.
//!
//! Evicting = a `DisruptionTarget` condition (reason
//! `DeletionByTaintManager`) on the pod's status, a Normal Event
//! `TaintManagerEviction` / `Marking for deletion Pod <ns>/<name>`, then a
//! delete with the pod's uid as precondition. A scheduled eviction that
//! stops applying (taint removed, toleration added) gets the event
//! `Cancelling deletion of Pod <ns>/<name>`.
//!
//! The loop keeps reflectors over Nodes and Pods and an index of the pods
//! by node (`spec.nodeName`), kept from the pod watch events. Scanning
//! every pod on each change was O(changes × pods) at 20,000 pods; now the
//! watch tasks only mark the changed pods and nodes, and a pass (which
//! serves every change since the last one) re-evaluates the pods of the
//! nodes touched: a node whose taints changed, a node one of whose pods
//! changed, and a node whose earliest pending deadline (or eviction retry)
//! has come. A node without `NoExecute` taints and with nothing pending
//! costs one lookup. After a re-list (and at start) every node is looked
//! at and the index is rebuilt, as removals came without events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod, Taint, Toleration};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer;

/// The effect whose taints evict running pods.
pub const NO_EXECUTE: &str = "NoExecute";
/// Reason of the eviction events.
pub const EVICTION_REASON: &str = "TaintManagerEviction";
/// The component named in the events.
pub const COMPONENT: &str = "taint-eviction-controller";

/// Upstream `Toleration.ToleratesTaint`.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = tol.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("") {
        "" | "Equal" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether some toleration tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// What to do with one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No `NoExecute` taint, or all tolerated forever.
    Keep,
    /// Evict now.
    Now,
    /// Evict at this time (if still tainted then).
    At(Timestamp),
}

/// Decides for a pod with `tolerations` on a node with `taints` (only the
/// `NoExecute` ones count). `start` gives when each taint's toleration
/// clock started.
pub fn evaluate(
    tolerations: &[Toleration],
    taints: &[Taint],
    mut start: impl FnMut(&Taint) -> Timestamp,
) -> Verdict {
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        let Some(tol) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Verdict::Now;
        };
        let Some(secs) = tol.toleration_seconds else {
            continue;
        };
        if secs <= 0 {
            return Verdict::Now;
        }
        let at = start(taint)
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap_or(Timestamp::MAX);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    match deadline {
        Some(d) => Verdict::At(d),
        None => Verdict::Keep,
    }
}

fn taint_id(t: &Taint) -> String {
    format!(
        "{}={}:{}",
        t.key,
        t.value.as_deref().unwrap_or(""),
        t.effect
    )
}

/// What the loop remembers about one node that has (or had) `NoExecute`
/// taints.
#[derive(Debug, Default, Clone, PartialEq)]
struct NodeState {
    /// (pod uid, taint id) -> when first seen (taints without timeAdded).
    first_seen: BTreeMap<(String, String), Timestamp>,
    /// Pods with a pending (timed) eviction: uid -> "ns/name".
    scheduled: BTreeMap<String, String>,
    /// Pods this loop has evicted that the cache still shows alive: not
    /// marked and recorded again while the delete's watch event is on its
    /// way.
    evicted: BTreeSet<String>,
    /// When the node's pods must be evaluated again: the earliest pending
    /// deadline, or an eviction retry.
    wake: Option<Timestamp>,
}

impl NodeState {
    fn is_empty(&self) -> bool {
        self.first_seen.is_empty()
            && self.scheduled.is_empty()
            && self.evicted.is_empty()
            && self.wake.is_none()
    }

    fn wake_at(&mut self, at: Timestamp) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }
}

/// What one evaluation of a node's pods decided.
#[derive(Debug, Default)]
struct Plan {
    /// Pods to evict now.
    evict: Vec<Arc<Pod>>,
    /// Pods whose timed eviction no longer applies.
    cancel: Vec<Arc<Pod>>,
    /// The node's state afterwards.
    state: NodeState,
}

fn who(pod: &Pod) -> String {
    crate::namespaced_name(&pod.metadata)
}

/// Evaluates the pods bound to one node with the node's `NoExecute`
/// `taints` (empty: untainted or gone), given the node's state from the
/// last evaluation.
fn plan_node(taints: &[Taint], pods: &[Arc<Pod>], old: &NodeState, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let state = &mut plan.state;
    for pod in pods {
        if taints.is_empty() || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if old.evicted.contains(&uid) {
            state.evicted.insert(uid);
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let verdict = evaluate(tolerations, taints, |t| match &t.time_added {
            Some(ta) => ta.0,
            None => {
                let key = (uid.clone(), taint_id(t));
                let seen = old.first_seen.get(&key).copied().unwrap_or(now);
                *state.first_seen.entry(key).or_insert(seen)
            }
        });
        match verdict {
            Verdict::Keep => {}
            Verdict::At(at) if at > now => {
                debug!(pod = %who(pod), %at, "eviction scheduled");
                state.scheduled.insert(uid, who(pod));
                state.wake_at(at);
            }
            Verdict::Now | Verdict::At(_) => plan.evict.push(pod.clone()),
        }
    }
    // Pods that had a timed eviction and no longer have one (taint gone,
    // toleration changed) — unless they are gone, being deleted or being
    // evicted now.
    for uid in old.scheduled.keys() {
        if state.scheduled.contains_key(uid) {
            continue;
        }
        let pod = pods
            .iter()
            .find(|p| p.metadata.uid.as_deref() == Some(uid.as_str()));
        if let Some(pod) = pod
            && pod.metadata.deletion_timestamp.is_none()
            && !plan.evict.iter().any(|e| Arc::ptr_eq(e, pod))
        {
            plan.cancel.push(pod.clone());
        }
    }
    plan
}

/// The pods by node, kept from the pod watch events.
#[derive(Debug, Default)]
struct PodIndex {
    by_node: HashMap<String, HashSet<ObjectRef<Pod>>>,
    node_of: HashMap<ObjectRef<Pod>, String>,
}

impl PodIndex {
    /// Records that the pod under `key` is now bound to `node` (`None`:
    /// gone or not bound), adding the nodes whose pods changed (the old
    /// one and the new one) to `touched`.
    fn update(&mut self, key: ObjectRef<Pod>, node: Option<&str>, touched: &mut BTreeSet<String>) {
        if let Some(old) = self.node_of.remove(&key) {
            if let Some(pods) = self.by_node.get_mut(&old) {
                pods.remove(&key);
                if pods.is_empty() {
                    self.by_node.remove(&old);
                }
            }
            touched.insert(old);
        }
        if let Some(node) = node {
            self.by_node
                .entry(node.to_string())
                .or_default()
                .insert(key.clone());
            self.node_of.insert(key, node.to_string());
            touched.insert(node.to_string());
        }
    }

    fn pods_on(&self, node: &str) -> impl Iterator<Item = &ObjectRef<Pod>> {
        self.by_node.get(node).into_iter().flatten()
    }
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// What the watch tasks report between passes.
#[derive(Debug, Default)]
struct Dirty {
    /// Pods added, modified or deleted (already applied to the store).
    pods: HashSet<ObjectRef<Pod>>,
    /// Nodes added, modified or deleted.
    nodes: HashSet<String>,
    /// A reflector re-listed: its store was replaced without per-object
    /// events.
    relisted: bool,
}

/// The dirty set's lock; a panic while holding it leaves plain data, so a
/// poisoned lock is still usable.
fn lock(dirty: &Mutex<Dirty>) -> std::sync::MutexGuard<'_, Dirty> {
    dirty.lock().unwrap_or_else(|p| p.into_inner())
}

/// The informer callback of this loop: an event marks `dirty` (through
/// `mark`, or as a re-list) and wakes the loop.
fn marking<K: 'static>(
    notify: Arc<Notify>,
    dirty: Arc<Mutex<Dirty>>,
    mark: fn(&mut Dirty, &K),
) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |ev| {
        match ev {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => mark(&mut lock(&dirty), o),
            watcher::Event::InitDone => lock(&dirty).relisted = true,
            watcher::Event::Init | watcher::Event::InitApply(_) => return,
        }
        notify.notify_one();
    }
}

/// How long the loop waits between being woken and its pass, so that a
/// burst of events is served by one pass.
const REST: Duration = Duration::from_millis(100);

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let dirty = Arc::new(Mutex::new(Dirty::default()));
    let nodes = informer::spawn(
        Api::all(client.clone()),
        "nodes",
        &stop,
        marking(notify.clone(), dirty.clone(), |d, n: &Node| {
            d.nodes.insert(n.metadata.name.clone().unwrap_or_default());
        }),
    );
    let pods = informer::spawn(
        Api::all(client.clone()),
        "pods",
        &stop,
        marking(notify.clone(), dirty.clone(), |d, p: &Pod| {
            d.pods.insert(ObjectRef::from_obj(p));
        }),
    );
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { let _ = nodes.wait_until_ready().await; let _ = pods.wait_until_ready().await; } => {}
    }
    info!("taint eviction controller started");
    // The first pass builds the index whether or not the watch tasks have
    // reported their initial lists yet.
    lock(&dirty).relisted = true;
    let mut te = TaintEviction {
        client,
        nodes,
        pods,
        dirty,
        index: PodIndex::default(),
        states: BTreeMap::new(),
    };
    // The first pass is due at once.
    let mut next = Some(Timestamp::now());
    loop {
        let wait = next
            .map(|d| {
                let ms = d.duration_since(Timestamp::now()).as_millis().max(0) as u64;
                Duration::from_millis(ms.min(60_000))
            })
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // The events that follow the first one within the rest are served
        // by the same pass.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REST) => {}
        }
        next = te.pass().await;
    }
}

/// The loop and its memory between passes.
struct TaintEviction {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    dirty: Arc<Mutex<Dirty>>,
    index: PodIndex,
    /// Per node with `NoExecute` taints or something pending.
    states: BTreeMap<String, NodeState>,
}

impl TaintEviction {
    /// Evaluates the pods of every node touched since the last pass;
    /// returns the earliest pending deadline.
    async fn pass(&mut self) -> Option<Timestamp> {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let now = Timestamp::now();
        let mut touched: BTreeSet<String> = dirty.nodes.into_iter().collect();
        if dirty.relisted {
            self.index = PodIndex::default();
            for pod in self.pods.state() {
                let key = ObjectRef::from_obj(pod.as_ref());
                self.index.update(key, node_name(&pod), &mut touched);
            }
            touched.extend(
                self.nodes
                    .state()
                    .iter()
                    .filter_map(|n| n.metadata.name.clone()),
            );
            touched.extend(self.states.keys().cloned());
        } else {
            for key in dirty.pods {
                let pod = self.pods.get(&key);
                let node = pod.as_deref().and_then(node_name);
                self.index.update(key, node, &mut touched);
            }
        }
        touched.extend(
            self.states
                .iter()
                .filter(|(_, s)| s.wake.is_some_and(|w| w <= now))
                .map(|(n, _)| n.clone()),
        );
        for node in touched {
            self.evaluate(&node, now).await;
        }
        self.states.values().filter_map(|s| s.wake).min()
    }

    /// Evaluates the pods bound to `node` and acts on the verdicts.
    async fn evaluate(&mut self, node: &str, now: Timestamp) {
        let taints: Vec<Taint> = self
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.spec.as_ref()?.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == NO_EXECUTE)
            .collect();
        let old = self.states.remove(node).unwrap_or_default();
        if taints.is_empty() && old.is_empty() {
            return;
        }
        let pods: Vec<Arc<Pod>> = self
            .index
            .pods_on(node)
            .filter_map(|k| self.pods.get(k))
            .collect();
        let plan = plan_node(&taints, &pods, &old, now);
        for pod in &plan.cancel {
            let who = who(pod);
            info!(pod = %who, "taint eviction cancelled");
            let _ = record_event(
                &self.client,
                pod,
                &format!("Cancelling deletion of Pod {who}"),
            )
            .await;
        }
        let mut state = plan.state;
        for pod in &plan.evict {
            match evict(&self.client, pod).await {
                Ok(()) => {
                    state
                        .evicted
                        .insert(pod.metadata.uid.clone().unwrap_or_default());
                }
                Err(e) => {
                    warn!(pod = %who(pod), error = %e, "taint eviction failed; retrying");
                    state.wake_at(now.checked_add(SignedDuration::from_secs(1)).unwrap_or(now));
                }
            }
        }
        if !state.is_empty() {
            self.states.insert(node.to_string(), state);
        }
    }
}

async fn record_event(client: &kube::Client, pod: &Pod, message: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let event: Event = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}.{:x}", now.as_nanosecond()),
            "namespace": ns,
        },
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        },
        "reason": EVICTION_REASON,
        "message": message,
        "type": "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": "",
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    }))
    .expect("event literal");
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// Marks, records and deletes one pod.
async fn evict(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let who = format!("{ns}/{name}");
    info!(pod = %who, "evicting pod from a NoExecute-tainted node");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(&condition),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => debug!(pod = %who, error = %e, "could not add the DisruptionTarget condition"),
    }
    if let Err(e) = record_event(client, pod, &format!("Marking for deletion Pod {who}")).await {
        debug!(pod = %who, error = %e, "could not record the eviction event");
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
        secs: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: secs,
        }
    }

    #[test]
    fn toleration_matching() {
        let t = taint("k", Some("v"), NO_EXECUTE);
        assert!(tolerates(&tol(Some("k"), None, Some("v"), None, None), &t));
        assert!(tolerates(
            &tol(Some("k"), Some("Equal"), Some("v"), Some(NO_EXECUTE), None),
            &t
        ));
        assert!(!tolerates(
            &tol(Some("k"), Some("Equal"), Some("w"), None, None),
            &t
        ));
        assert!(tolerates(
            &tol(Some("k"), Some("Exists"), None, None, None),
            &t
        ));
        assert!(!tolerates(
            &tol(Some("k"), Some("Exists"), None, Some("NoSchedule"), None),
            &t
        ));
        assert!(tolerates(&tol(None, Some("Exists"), None, None, None), &t));
        assert!(!tolerates(
            &tol(Some("other"), Some("Exists"), None, None, None),
            &t
        ));
        let bare = taint("k", None, "NoSchedule");
        assert!(tolerates(&tol(Some("k"), None, None, None, None), &bare));
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000 + s).unwrap()
    }

    fn pod(name: &str, node: &str, tolerations: Vec<Toleration>) -> Arc<Pod> {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": []},
        }))
        .unwrap();
        p.spec.as_mut().unwrap().tolerations = Some(tolerations);
        Arc::new(p)
    }

    fn deleting(p: &Arc<Pod>) -> Arc<Pod> {
        let mut p = Pod::clone(p);
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        Arc::new(p)
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    fn evict_tol(secs: Option<i64>) -> Vec<Toleration> {
        vec![tol(Some("k"), Some("Exists"), None, None, secs)]
    }

    #[test]
    fn a_node_plan_evicts_schedules_and_keeps() {
        let mut ne = taint("k", None, NO_EXECUTE);
        ne.time_added = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        let victim = pod("victim", "n", vec![]);
        let tolerant = pod("tolerant", "n", evict_tol(None));
        let timed = pod("timed", "n", evict_tol(Some(10)));
        let expired = pod("expired", "n", evict_tol(Some(3)));
        let going = deleting(&pod("going", "n", vec![]));
        let pods = [victim, tolerant, timed, expired, going];
        let plan = plan_node(&[ne.clone()], &pods, &NodeState::default(), at(5));
        assert_eq!(names(&plan.evict), ["victim", "expired"]);
        assert!(plan.cancel.is_empty());
        assert_eq!(
            plan.state.scheduled,
            BTreeMap::from([("uid-timed".to_string(), "ns/timed".to_string())])
        );
        assert_eq!(plan.state.wake, Some(at(10)));
        // Untainted: nothing, and nothing to remember.
        let plan = plan_node(&[], &pods, &NodeState::default(), at(5));
        assert!(plan.evict.is_empty() && plan.cancel.is_empty() && plan.state.is_empty());
    }

    #[test]
    fn a_node_plan_cancels_what_no_longer_applies() {
        let ne = taint("k", None, NO_EXECUTE);
        let timed = pod("timed", "n", evict_tol(Some(10)));
        let also = pod("also", "n", evict_tol(Some(10)));
        let pods = [timed.clone(), also.clone()];
        let first = plan_node(&[ne], &pods, &NodeState::default(), at(0));
        assert_eq!(first.state.scheduled.len(), 2);
        // The taint goes while `also` is being deleted: only `timed` gets
        // a cancellation; nothing is remembered.
        let pods = [timed, deleting(&also)];
        let plan = plan_node(&[], &pods, &first.state, at(1));
        assert_eq!(names(&plan.cancel), ["timed"]);
        assert!(plan.evict.is_empty() && plan.state.is_empty());
        // A pod gone is not cancelled either.
        let plan = plan_node(&[], &[], &first.state, at(1));
        assert!(plan.cancel.is_empty());
    }

    #[test]
    fn a_node_plan_keeps_first_sight_times_of_present_pods() {
        // No timeAdded: the clock starts when the loop first saw the taint.
        let ne = taint("k", None, NO_EXECUTE);
        let timed = pod("timed", "n", evict_tol(Some(10)));
        let other = pod("other", "n", evict_tol(Some(10)));
        let first = plan_node(
            std::slice::from_ref(&ne),
            &[timed.clone(), other],
            &NodeState::default(),
            at(0),
        );
        assert_eq!(first.state.first_seen.len(), 2);
        // Later, `other` gone: timed keeps its start, other's is dropped.
        let later = plan_node(
            std::slice::from_ref(&ne),
            std::slice::from_ref(&timed),
            &first.state,
            at(4),
        );
        assert_eq!(later.state.wake, Some(at(10)));
        assert_eq!(
            later
                .state
                .first_seen
                .keys()
                .map(|k| k.0.as_str())
                .collect::<Vec<_>>(),
            ["uid-timed"]
        );
        let due = plan_node(&[ne], &[timed], &later.state, at(10));
        assert_eq!(names(&due.evict), ["timed"]);
    }

    #[test]
    fn an_evicted_pod_is_not_evicted_twice() {
        let ne = taint("k", None, NO_EXECUTE);
        let victim = pod("victim", "n", vec![]);
        let mut state = NodeState::default();
        state.evicted.insert("uid-victim".into());
        let plan = plan_node(std::slice::from_ref(&ne), &[victim], &state, at(0));
        assert!(plan.evict.is_empty());
        assert_eq!(plan.state.evicted, state.evicted);
        // Forgotten once the pod is gone from the node.
        assert!(plan_node(&[ne], &[], &state, at(0)).state.is_empty());
    }

    #[test]
    fn the_pod_index_reports_the_nodes_touched() {
        let mut index = PodIndex::default();
        let key = |name: &str| ObjectRef::<Pod>::new(name).within("ns");
        let mut touched = BTreeSet::new();
        index.update(key("a"), Some("n1"), &mut touched);
        index.update(key("b"), Some("n1"), &mut touched);
        index.update(key("c"), None, &mut touched);
        assert_eq!(touched, BTreeSet::from(["n1".to_string()]));
        assert_eq!(index.pods_on("n1").count(), 2);
        // A pod gone touches its node; an unbound one touches nothing.
        let mut touched = BTreeSet::new();
        index.update(key("a"), None, &mut touched);
        index.update(key("c"), None, &mut touched);
        assert_eq!(touched, BTreeSet::from(["n1".to_string()]));
        // Re-created under the same name on another node: both nodes.
        let mut touched = BTreeSet::new();
        index.update(key("b"), Some("n2"), &mut touched);
        assert_eq!(
            touched,
            BTreeSet::from(["n1".to_string(), "n2".to_string()])
        );
        assert_eq!(index.pods_on("n1").count(), 0);
        index.update(key("b"), None, &mut BTreeSet::new());
        assert!(index.by_node.is_empty() && index.node_of.is_empty());
    }

    #[test]
    fn verdicts() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let start = |_: &Taint| t0;
        let at = |s| Verdict::At(Timestamp::from_second(s).unwrap());
        let ne = taint("k", None, NO_EXECUTE);
        let ns = taint("s", None, "NoSchedule");
        let other = taint("o", None, NO_EXECUTE);
        let forever = tol(Some("k"), Some("Exists"), None, None, None);
        let ten = tol(Some("k"), Some("Exists"), None, None, Some(10));
        let zero = tol(Some("k"), Some("Exists"), None, None, Some(0));
        let five = tol(Some("o"), Some("Exists"), None, None, Some(5));
        let cases: Vec<(Vec<Toleration>, Vec<Taint>, Verdict)> = vec![
            (vec![], vec![ns], Verdict::Keep),
            (vec![], vec![ne.clone()], Verdict::Now),
            (vec![forever], vec![ne.clone()], Verdict::Keep),
            (vec![ten.clone()], vec![ne.clone()], at(1_010)),
            (vec![zero], vec![ne.clone()], Verdict::Now),
            // one tolerated taint, one not: now.
            (
                vec![ten.clone()],
                vec![ne.clone(), other.clone()],
                Verdict::Now,
            ),
            // the earliest deadline over the taints.
            (vec![ten, five], vec![ne, other], at(1_005)),
        ];
        for (tols, taints, want) in cases {
            assert_eq!(evaluate(&tols, &taints, start), want, "{tols:?} {taints:?}");
        }
    }
}
