//! The ReplicaSet controller, as kube-controller-manager's: every
//! ReplicaSet keeps `spec.replicas` pods that match its selector and that
//! it controls (an ownerReference with `controller: true`).
//!
//! Per reconcile (a `kube::runtime::Controller` over ReplicaSets, triggered
//! by pod changes too) the loop reads the ReplicaSet live and its pods from
//! a [`PodIndex`] the controller keeps from its own pod watch (as
//! kube-controller-manager reads its informer): the pods it controls by
//! uid, plus the namespace's orphans. Listing pods from the API per sync
//! cost O(pods) per reconcile, O(pods²) per roll-out, which stalled the
//! 20,000-pod scale run. What the index may not show yet of the
//! controller's own creates and deletes, its expectations add:
//!
//! * pods being deleted, `Succeeded` or `Failed` do not count;
//! * orphans (no controller) whose labels match the selector are adopted
//!   (ownerReference added with a `resourceVersion` precondition); owned
//!   pods that stopped matching are released;
//! * missing pods are created from the template (`generateName: <rs>-`, in
//!   slow-start batches 1, 2, 4, ...; a failure stops the remaining
//!   batches), surplus pods deleted in upstream's order (unscheduled before
//!   scheduled, Pending before Unknown before Running, not ready before
//!   ready, lower `controller.kubernetes.io/pod-deletion-cost` first,
//!   ready for a shorter time, more restarts, newer first); each with a
//!   `SuccessfulCreate` / `SuccessfulDelete` event (`FailedCreate` /
//!   `FailedDelete` warnings on errors);
//! * status (`replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//!   `availableReplicas` — ready for at least `minReadySeconds` —, and
//!   `observedGeneration`) is written through `/status` when it changed.
//!
//! This module also holds what the Deployment controller shares with it:
//! ownerReference helpers, adoption/release and event recording.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The component name on events this controller records.
pub const COMPONENT: &str = "replicaset-controller";
/// Pods with a lower cost are deleted first when scaling down.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Largest number of pods created or deleted in one reconcile.
const BURST: usize = 500;

/// Errors of a reconcile; the controller retries after a short delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The object cannot be acted on as it is (logged, retried slowly).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether this is a 409 Conflict (a concurrent write).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

pub(crate) fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// Shared state of a controller's reconciles.
pub(crate) struct Ctx {
    pub(crate) client: kube::Client,
    expectations: PodExpectations,
    pods: Arc<PodIndex>,
}

impl Ctx {
    pub(crate) fn new(client: kube::Client) -> Self {
        Self {
            client,
            expectations: PodExpectations::default(),
            pods: Arc::default(),
        }
    }
}

/// The pods the controller's watch has delivered, indexed by controlling
/// owner uid, with the orphans of each namespace (the adoption
/// candidates). A re-list (the watch's `Init` .. `InitDone`) replaces it
/// whole, so pods deleted while the watch was down leave it too.
#[derive(Default)]
pub(crate) struct PodIndex {
    state: Mutex<PodIndexState>,
}

#[derive(Default)]
struct PodIndexState {
    /// By `namespace/name`.
    pods: HashMap<String, Arc<Pod>>,
    /// Controlling owner uid to the keys of its pods.
    by_owner: HashMap<String, HashSet<String>>,
    /// Namespace to the keys of its pods without a controller.
    orphans: HashMap<String, HashSet<String>>,
    /// Pods of a re-list in progress.
    relist: Option<HashMap<String, Arc<Pod>>>,
    /// Whether a first list has completed. Before it the index knows
    /// nothing, and a reconcile acting on it would create every pod again
    /// (which a new leader did at scale, many times over).
    synced: bool,
}

fn pod_key(p: &Pod) -> String {
    crate::namespaced_name(&p.metadata)
}

impl PodIndexState {
    /// Where `pod` is filed: under its controller's uid, else with its
    /// namespace's orphans.
    fn bucket_of(&mut self, pod: &Pod) -> (&mut HashMap<String, HashSet<String>>, String) {
        match controller_ref(&pod.metadata) {
            Some(r) => (&mut self.by_owner, r.uid.clone()),
            None => (
                &mut self.orphans,
                pod.metadata.namespace.clone().unwrap_or_default(),
            ),
        }
    }

    fn unlink(&mut self, key: &str) -> Option<Arc<Pod>> {
        let old = self.pods.remove(key)?;
        let (buckets, at) = self.bucket_of(&old);
        if let Some(b) = buckets.get_mut(&at) {
            b.remove(key);
            // Owners come and go: their empty buckets go with them.
            if b.is_empty() {
                buckets.remove(&at);
            }
        }
        Some(old)
    }

    fn link(&mut self, key: String, pod: Arc<Pod>) {
        self.unlink(&key);
        let (buckets, at) = self.bucket_of(&pod);
        buckets.entry(at).or_default().insert(key.clone());
        self.pods.insert(key, pod);
    }
}

impl PodIndex {
    /// Follows one event of the pod watch.
    pub(crate) fn apply(&self, ev: &watcher::Event<Pod>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            watcher::Event::Init => st.relist = Some(HashMap::new()),
            watcher::Event::InitApply(p) => {
                let key = pod_key(p);
                st.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key, Arc::new(p.clone()));
            }
            watcher::Event::InitDone => {
                let listed = st.relist.take().unwrap_or_default();
                *st = PodIndexState {
                    synced: true,
                    ..Default::default()
                };
                for (k, p) in listed {
                    st.link(k, p);
                }
            }
            watcher::Event::Apply(p) => st.link(pod_key(p), Arc::new(p.clone())),
            watcher::Event::Delete(p) => {
                st.unlink(&pod_key(p));
            }
        }
    }

    /// The pods a ReplicaSet's claim looks at: those controlled by
    /// `owner_uid` (matching its selector or not, so non-matching ones are
    /// released) and the orphans of `ns` (adopted when they match);
    /// `None` until the first list is in.
    pub(crate) fn candidates(&self, ns: &str, owner_uid: &str) -> Option<Vec<Pod>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.synced {
            return None;
        }
        let owned = st.by_owner.get(owner_uid).into_iter().flatten();
        let orphans = st.orphans.get(ns).into_iter().flatten();
        Some(
            owned
                .chain(orphans)
                .filter_map(|k| st.pods.get(k))
                .map(|p| Pod::clone(p))
                .collect(),
        )
    }
}

/// Pod creations and deletions of each ReplicaSet that its pod list may
/// not show yet (kube's "expectations").
#[derive(Default)]
struct PodExpectations {
    by_rs: Mutex<HashMap<String, Expectations>>,
}

impl PodExpectations {
    /// `listed` corrected by what this controller did that the list (read
    /// from the apiserver's watch cache, so possibly a moment old) may not
    /// show yet: pods it created are added, pods it deleted removed. An
    /// expectation ends once the list shows it, or after a minute.
    fn apply(&self, rs: &str, mut listed: Vec<Pod>) -> Vec<Pod> {
        let mut all = self.by_rs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(exp) = all.get_mut(rs) else {
            return listed;
        };
        let names: HashSet<String> = listed.iter().map(|p| p.name_any()).collect();
        exp.created
            .retain(|(p, t)| t.elapsed() < EXPECTATION_TTL && !names.contains(&p.name_any()));
        exp.deleted
            .retain(|(n, t)| t.elapsed() < EXPECTATION_TTL && names.contains(n));
        listed.retain(|p| !exp.deleted.iter().any(|(n, _)| *n == p.name_any()));
        listed.extend(exp.created.iter().map(|(p, _)| p.clone()));
        if exp.created.is_empty() && exp.deleted.is_empty() {
            all.remove(rs);
        }
        listed
    }

    fn created(&self, rs: &str, pod: Pod) {
        let mut all = self.by_rs.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(rs.to_string())
            .or_default()
            .created
            .push((pod, Instant::now()));
    }

    fn deleted(&self, rs: &str, name: String) {
        let mut all = self.by_rs.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(rs.to_string())
            .or_default()
            .deleted
            .push((name, Instant::now()));
    }
}

/// How long an expectation may wait for the pod index to show it; as
/// kube-controller-manager's `ExpectationsTimeout`. Long, because ending one
/// early makes the controller create or delete again what it already did.
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Expectations {
    created: Vec<(Pod, Instant)>,
    deleted: Vec<(String, Instant)>,
}

// ---------------------------------------------------------------------------
// Helpers shared with the Deployment controller.

/// The controlling ownerReference of an object, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controlling ownerReference to `owner` (`controller` and
/// `blockOwnerDeletion` true), as upstream's controllers write.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A label selector as a matcher; `None` for an empty or invalid selector
/// (which selects nothing for a controller, as upstream).
pub fn selector_of(sel: &LabelSelector) -> Option<Selector> {
    let empty_labels = sel
        .match_labels
        .as_ref()
        .map(|m| m.is_empty())
        .unwrap_or(true);
    let empty_exprs = sel
        .match_expressions
        .as_ref()
        .map(|m| m.is_empty())
        .unwrap_or(true);
    if empty_labels && empty_exprs {
        return None;
    }
    Selector::try_from(sel.clone()).ok()
}

/// Now, as an API timestamp.
pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// Events one source may record about one object in a burst, then one per
/// [`EVENT_REFILL`]: client-go's `EventSourceObjectSpamFilter` (burst 25,
/// 1 per 5 minutes), which keeps a controller creating 50 pods for one
/// ReplicaSet from writing 50 events in the same second.
const EVENT_BURST: f64 = 25.0;
/// How long one more event of a throttled source and object waits.
const EVENT_REFILL: Duration = Duration::from_secs(300);
/// Objects whose event budget is remembered; the fullest bucket is
/// forgotten first (client-go keeps an LRU of 4096).
const EVENT_BUCKETS: usize = 4096;

/// Token buckets per event source and involved object.
#[derive(Default)]
struct EventSpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl EventSpamFilter {
    /// Whether one more event for `key` may be recorded at `now`.
    fn allow(&mut self, key: &str, now: Instant) -> bool {
        let per_sec = 1.0 / EVENT_REFILL.as_secs_f64();
        if self.buckets.len() >= EVENT_BUCKETS && !self.buckets.contains_key(key) {
            // The fullest bucket carries the least worth remembering.
            let fill = |(tokens, at): &(f64, Instant)| {
                tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec
            };
            if let Some(fullest) = self
                .buckets
                .iter()
                .max_by(|a, b| fill(a.1).total_cmp(&fill(b.1)))
                .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&fullest);
            }
        }
        let (tokens, at) = self
            .buckets
            .entry(key.to_string())
            .or_insert((EVENT_BURST, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(EVENT_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

static EVENT_SPAM_FILTER: Mutex<Option<EventSpamFilter>> = Mutex::new(None);

/// What an API error says, as client-go's error prints it (the Status
/// message alone, e.g. `pods "x" is forbidden: exceeded quota: ...`).
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Records a core/v1 Event about `obj` (best effort: failures are logged).
/// Past a burst of 25 per component and object, events are dropped as
/// client-go's recorder drops them.
pub async fn record_event(
    client: &kube::Client,
    component: &str,
    obj: &ObjectReference,
    type_: &str,
    reason: &str,
    message: String,
) {
    let spam_key = format!(
        "{component}/{}/{}/{}/{}",
        obj.kind.as_deref().unwrap_or_default(),
        obj.namespace.as_deref().unwrap_or_default(),
        obj.name.as_deref().unwrap_or_default(),
        obj.uid.as_deref().unwrap_or_default(),
    );
    let allowed = EVENT_SPAM_FILTER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(EventSpamFilter::default)
        .allow(&spam_key, Instant::now());
    if !allowed {
        debug!(reason, object = %spam_key, "event dropped: too many for this object");
        return;
    }
    let ns = obj.namespace.clone().unwrap_or_else(|| "default".into());
    let t = Timestamp::now();
    let name = format!(
        "{}.{:x}",
        obj.name.clone().unwrap_or_default(),
        t.as_nanosecond() as u128
    );
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: obj.clone(),
        reason: Some(reason.to_string()),
        message: Some(message),
        type_: Some(type_.to_string()),
        source: Some(EventSource {
            component: Some(component.to_string()),
            host: None,
        }),
        first_timestamp: Some(Time(t)),
        last_timestamp: Some(Time(t)),
        count: Some(1),
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(String::new()),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = events.create(&PostParams::default(), &ev).await {
        debug!(error = %e, reason, "recording event failed");
    }
}

/// Adopts orphans matching `selector` and releases owned objects that no
/// longer match; returns the objects `owner` controls afterwards.
///
/// Objects controlled by someone else, and objects being deleted that are
/// not already ours, are left alone. Patches carry the resourceVersion they
/// were computed from; a conflict skips the object (the next reconcile
/// decides again).
pub(crate) async fn claim<C>(
    api: &Api<C>,
    owner: &OwnerReference,
    owner_deleting: bool,
    selector: Option<&Selector>,
    candidates: Vec<C>,
) -> Vec<C>
where
    C: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut owned = Vec::new();
    for c in candidates {
        let labels = c.meta().labels.clone().unwrap_or_default();
        let matches = selector.map(|s| s.matches(&labels)).unwrap_or(false);
        let refs = c.meta().owner_references.clone().unwrap_or_default();
        match controller_ref(c.meta()) {
            Some(r) if r.uid == owner.uid => {
                if matches || owner_deleting {
                    owned.push(c);
                } else {
                    // Release: drop our reference.
                    let rest: Vec<_> = refs.into_iter().filter(|r| r.uid != owner.uid).collect();
                    let patch = json!({"metadata": {
                        "ownerReferences": rest,
                        "resourceVersion": c.meta().resource_version,
                    }});
                    let name = c.name_any();
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            info!(kind = C::kind(&()).as_ref(), %name, owner = %owner.name, "released")
                        }
                        Err(e) => debug!(%name, error = %e, "release failed"),
                    }
                }
            }
            Some(_) => {}
            None => {
                if !matches || owner_deleting || c.meta().deletion_timestamp.is_some() {
                    continue;
                }
                let mut new_refs = refs;
                new_refs.push(owner.clone());
                let patch = json!({"metadata": {
                    "ownerReferences": new_refs,
                    "resourceVersion": c.meta().resource_version,
                }});
                let name = c.name_any();
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(adopted) => {
                        info!(kind = C::kind(&()).as_ref(), %name, owner = %owner.name, "adopted");
                        owned.push(adopted);
                    }
                    Err(e) => debug!(%name, error = %e, "adoption failed"),
                }
            }
        }
    }
    owned
}

// ---------------------------------------------------------------------------
// Pod facts.

/// Whether a pod counts: not being deleted, not Succeeded/Failed.
pub fn is_pod_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// When the pod's Ready condition turned True, if it is ready.
pub fn ready_since(p: &Pod) -> Option<Option<Timestamp>> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod is ready.
pub fn is_pod_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Whether the pod has been ready for `min_ready` seconds at `now`; when
/// ready but not yet long enough, `Err(remaining)`.
pub fn pod_available(p: &Pod, min_ready: i32, now: Timestamp) -> Result<bool, Duration> {
    match ready_since(p) {
        None => Ok(false),
        Some(_) if min_ready <= 0 => Ok(true),
        Some(None) => Ok(true),
        Some(Some(since)) => {
            let until = since.as_second() + i64::from(min_ready);
            if until <= now.as_second() {
                Ok(true)
            } else {
                Err(Duration::from_secs((until - now.as_second()) as u64))
            }
        }
    }
}

/// The sort key of upstream's `ActivePods`: pods sorting first are deleted
/// first.
fn deletion_rank(p: &Pod) -> impl Ord + use<> {
    use std::cmp::Reverse;
    let assigned = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .map(|n| !n.is_empty())
        .unwrap_or(false);
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let ready = ready_since(p);
    let cost: i64 = p
        .annotations()
        .get(POD_DELETION_COST)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ready_time = ready.flatten().map(|t| t.as_millisecond()).unwrap_or(0);
    let restarts: i32 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0);
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
        .unwrap_or(0);
    (
        assigned,
        phase,
        ready.is_some(),
        cost,
        Reverse(ready_time),
        Reverse(restarts),
        Reverse(created),
        p.name_any(),
    )
}

/// Orders pods so that the ones to delete first come first.
pub fn sort_for_deletion(pods: &mut [Pod]) {
    pods.sort_by_cached_key(deletion_rank);
}

/// A pod from a ReplicaSet's template.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let spec = rs.spec.as_ref();
    let template = spec.and_then(|s| s.template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The status numbers of a ReplicaSet with `pods` (its active pods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RsCounts {
    /// Active pods.
    pub replicas: i32,
    /// Pods carrying every label of the template.
    pub fully_labeled: i32,
    /// Ready pods.
    pub ready: i32,
    /// Pods ready for `minReadySeconds`.
    pub available: i32,
}

/// Counts `pods`; also returns when the next pod becomes available.
pub fn count_pods(
    pods: &[Pod],
    template_labels: &BTreeMap<String, String>,
    min_ready: i32,
    now: Timestamp,
) -> (RsCounts, Option<Duration>) {
    let mut c = RsCounts::default();
    let mut next: Option<Duration> = None;
    for p in pods {
        c.replicas += 1;
        let labels = p.labels();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            c.fully_labeled += 1;
        }
        if is_pod_ready(p) {
            c.ready += 1;
        }
        match pod_available(p, min_ready, now) {
            Ok(true) => c.available += 1,
            Ok(false) => {}
            Err(rem) => next = Some(next.map_or(rem, |n| n.min(rem))),
        }
    }
    (c, next)
}

/// Deletes a pod; a 409 (the pod changed while the apiserver deleted it,
/// e.g. a status update) is retried a few times.
async fn delete_pod(api: &Api<Pod>, name: &str, dp: &DeleteParams) -> Result<(), kube::Error> {
    let mut attempt = 0;
    loop {
        match api.delete(name, dp).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// The loop.

/// Reconciles running at once (kube-controller-manager's `--concurrent-replicaset-syncs`
/// default). Unbounded, a burst of owners floods the apiserver with writes
/// and every other client's requests queue behind them.
const WORKERS: u16 = 5;

/// Runs the ReplicaSet controller until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let rss: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let controller = Controller::new(rss, watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Ctx::new(client));
    let index = ctx.pods.clone();
    // resourceVersion=0: the initial list comes from the apiserver's
    // cache, as a kube-controller-manager informer's does.
    let pod_events = watcher(pods, watcher::Config::default().any_semantic())
        .default_backoff()
        .map_ok(move |ev| {
            index.apply(&ev);
            ev
        })
        .touched_objects();
    let stream = controller
        .watches_stream(pod_events, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            match controller_ref(&pod.metadata) {
                Some(r) => {
                    if r.kind == "ReplicaSet" && r.api_version.starts_with("apps/") {
                        vec![ObjectRef::new(&r.name).within(&ns)]
                    } else {
                        vec![]
                    }
                }
                None => store
                    .state()
                    .iter()
                    .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|rs| {
                        rs.spec
                            .as_ref()
                            .and_then(|s| selector_of(&s.selector))
                            .map(|s| s.matches(pod.labels()))
                            .unwrap_or(false)
                    })
                    .map(|rs| ObjectRef::from_obj(rs.as_ref()))
                    .collect(),
            }
        })
        .with_config(controller::Config::default().concurrency(WORKERS))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "replicaset reconcile failed");
            }
        });
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = stream => {}
    }
}

fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _: Arc<Ctx>) -> Action {
    if err.is_conflict() {
        // Someone wrote the object since we read it: decide again at once.
        debug!(replicaset = %rs.name_any(), error = %err, "replicaset sync hit a conflict; retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(replicaset = %rs.name_any(), namespace = ?rs.namespace(), error = %err, "replicaset sync failed; retrying");
    match err {
        Error::Invalid(_) => Action::requeue(Duration::from_secs(30)),
        Error::Api { .. } => Action::requeue(Duration::from_secs(1)),
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_else(|| "default".into());
    let name = rs.name_any();
    let client = &ctx.client;
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    // Work on the live object: the cache may lag behind our own writes.
    let Some(rs) = rs_api
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading replicaset {ns}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    let spec = rs.spec.clone().unwrap_or_default();
    let Some(selector) = selector_of(&spec.selector) else {
        return Err(Error::Invalid(format!(
            "replicaset {ns}/{name} has an empty or invalid selector"
        )));
    };
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Our pods and the namespace's orphans from the index (possibly a
    // moment behind; the expectations fill in our own recent writes, and
    // every write below carries a precondition).
    let rs_key = format!("{ns}/{name}");
    let Some(listed) = ctx
        .pods
        .candidates(&ns, rs.metadata.uid.as_deref().unwrap_or_default())
    else {
        // kube's Controller starts reconciling before the pod watch's
        // first list is in (kube-controller-manager waits for its caches).
        return Ok(Action::requeue(Duration::from_millis(500)));
    };
    let listed = ctx.expectations.apply(&rs_key, listed);
    let candidates: Vec<Pod> = listed.into_iter().filter(is_pod_active).collect();
    let me = owner_ref(&rs);
    let mut pods = claim(&pod_api, &me, deleting, Some(&selector), candidates).await;
    let rs_ref = rs.object_ref(&());
    let pp = PostParams::default();
    let dp = DeleteParams::default();

    if !deleting && pods.len() < want {
        let missing = (want - pods.len()).min(BURST);
        let template = pod_from_template(&rs);
        let mut created = 0usize;
        let mut batch = 1usize;
        'batches: while created < missing {
            let size = batch.min(missing - created);
            let results =
                futures::future::join_all((0..size).map(|_| pod_api.create(&pp, &template))).await;
            let mut failed = false;
            for r in results {
                match r {
                    Ok(p) => {
                        ctx.expectations.created(&rs_key, p.clone());
                        record_event(
                            client,
                            COMPONENT,
                            &rs_ref,
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        )
                        .await;
                        pods.push(p);
                    }
                    Err(e) => {
                        failed = true;
                        warn!(replicaset = %name, namespace = %ns, error = %e, "creating pod failed");
                        record_event(
                            client,
                            COMPONENT,
                            &rs_ref,
                            "Warning",
                            "FailedCreate",
                            format!("Error creating: {}", api_message(&e)),
                        )
                        .await;
                    }
                }
            }
            created += size;
            if failed {
                break 'batches;
            }
            batch *= 2;
        }
    } else if !deleting && pods.len() > want {
        let surplus = (pods.len() - want).min(BURST);
        sort_for_deletion(&mut pods);
        let doomed: Vec<Pod> = pods.drain(..surplus).collect();
        let names: Vec<String> = doomed.iter().map(|p| p.name_any()).collect();
        let results =
            futures::future::join_all(names.iter().map(|n| delete_pod(&pod_api, n, &dp))).await;
        for (p, r) in doomed.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    ctx.expectations.deleted(&rs_key, p.name_any());
                    record_event(
                        client,
                        COMPONENT,
                        &rs_ref,
                        "Normal",
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", p.name_any()),
                    )
                    .await
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(replicaset = %name, pod = %p.name_any(), error = %e, "deleting pod failed");
                    record_event(
                        client,
                        COMPONENT,
                        &rs_ref,
                        "Warning",
                        "FailedDelete",
                        format!("Error deleting: {e}"),
                    )
                    .await;
                    pods.push(p);
                }
            }
        }
    }

    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (counts, next_available) = count_pods(&pods, &template_labels, min_ready, Timestamp::now());
    let cur = rs.status.clone().unwrap_or_default();
    let observed = rs.metadata.generation;
    let unchanged = cur.replicas == counts.replicas
        && cur.fully_labeled_replicas.unwrap_or(0) == counts.fully_labeled
        && cur.ready_replicas.unwrap_or(0) == counts.ready
        && cur.available_replicas.unwrap_or(0) == counts.available
        && cur.observed_generation == observed;
    if !unchanged {
        let patch = json!({"status": {
            "replicas": counts.replicas,
            "fullyLabeledReplicas": counts.fully_labeled,
            "readyReplicas": counts.ready,
            "availableReplicas": counts.available,
            "observedGeneration": observed,
        }});
        crate::update::merge_into_status(&rs_api, &name, &patch)
            .await
            .map_err(api_err(format!("writing status of replicaset {ns}/{name}")))?;
    }
    Ok(match next_available {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn expectations_fill_in_what_the_list_does_not_show_yet() {
        use super::*;
        let pod = |n: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": n}})).unwrap()
        };
        let names = |v: Vec<Pod>| -> Vec<String> { v.iter().map(|p| p.name_any()).collect() };
        let e = PodExpectations::default();
        // Nothing expected: the list as it is.
        assert_eq!(names(e.apply("ns/rs", vec![pod("a")])), vec!["a"]);
        e.created("ns/rs", pod("b"));
        e.deleted("ns/rs", "a".into());
        // The list lags: b is added, a (deleted by us) taken out.
        assert_eq!(names(e.apply("ns/rs", vec![pod("a")])), vec!["b"]);
        // Other ReplicaSets are not affected.
        assert_eq!(names(e.apply("ns/other", vec![pod("a")])), vec!["a"]);
        // The list caught up: both expectations end, nothing doubled.
        assert_eq!(names(e.apply("ns/rs", vec![pod("b")])), vec!["b"]);
        assert!(e.by_rs.lock().unwrap().is_empty());
        // A later list without b is believed: the expectation ended.
        assert!(names(e.apply("ns/rs", vec![])).is_empty());
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn events_per_object_are_throttled_after_a_burst() {
        let mut f = EventSpamFilter::default();
        let t0 = Instant::now();
        let allowed = (0..50).filter(|_| f.allow("rs/a", t0)).count();
        assert_eq!(allowed, 25, "a burst of 25, then nothing");
        // Another object has its own budget.
        assert!(f.allow("rs/b", t0));
        // One more per five minutes.
        assert!(!f.allow("rs/a", t0 + Duration::from_secs(200)));
        assert!(f.allow("rs/a", t0 + Duration::from_secs(301)));
        assert!(!f.allow("rs/a", t0 + Duration::from_secs(302)));
        // Remembering is bounded: the fullest buckets are forgotten first.
        for i in 0..EVENT_BUCKETS {
            f.allow(&format!("x/{i}"), t0);
        }
        assert!(f.buckets.len() <= EVENT_BUCKETS);
        assert!(
            !f.allow("rs/a", t0 + Duration::from_secs(303)),
            "a throttled object is still remembered"
        );
    }

    #[test]
    fn pod_index_follows_owners_orphans_and_relists() {
        let p = |ns: &str, name: &str, owner: Option<&str>| -> Pod {
            let mut v = json!({"metadata": {"name": name, "namespace": ns}});
            if let Some(uid) = owner {
                v["metadata"]["ownerReferences"] = json!([{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": uid, "controller": true,
                }]);
            }
            serde_json::from_value(v).unwrap()
        };
        let names = |ix: &PodIndex, ns: &str, uid: &str| -> Vec<String> {
            let mut n: Vec<String> = ix
                .candidates(ns, uid)
                .unwrap_or_default()
                .iter()
                .map(|p| p.name_any())
                .collect();
            n.sort();
            n
        };
        let ix = PodIndex::default();
        ix.apply(&watcher::Event::Init);
        ix.apply(&watcher::Event::InitApply(p("a", "owned", Some("u1"))));
        ix.apply(&watcher::Event::InitApply(p("a", "other", Some("u2"))));
        ix.apply(&watcher::Event::InitApply(p("a", "orphan", None)));
        ix.apply(&watcher::Event::InitApply(p("b", "elsewhere", None)));
        // Nothing is known before the first list is complete.
        assert!(ix.candidates("a", "u1").is_none());
        ix.apply(&watcher::Event::InitDone);
        assert!(ix.candidates("c", "u9").is_some_and(|c| c.is_empty()));
        assert_eq!(names(&ix, "a", "u1"), ["orphan", "owned"]);
        assert_eq!(names(&ix, "a", "u2"), ["orphan", "other"]);
        // Adoption moves a pod from the orphans to its owner.
        ix.apply(&watcher::Event::Apply(p("a", "orphan", Some("u2"))));
        assert_eq!(names(&ix, "a", "u1"), ["owned"]);
        assert_eq!(names(&ix, "a", "u2"), ["orphan", "other"]);
        ix.apply(&watcher::Event::Delete(p("a", "owned", Some("u1"))));
        assert!(names(&ix, "a", "u1").is_empty());
        assert!(
            !ix.state.lock().unwrap().by_owner.contains_key("u1"),
            "an owner's emptied bucket is dropped"
        );
        // A re-list replaces everything: what it no longer shows is gone
        // even without a Delete event.
        ix.apply(&watcher::Event::Init);
        ix.apply(&watcher::Event::InitApply(p("a", "new", Some("u1"))));
        ix.apply(&watcher::Event::InitDone);
        assert_eq!(names(&ix, "a", "u1"), ["new"]);
        assert!(names(&ix, "a", "u2").is_empty());
        assert_eq!(names(&ix, "b", "u9"), Vec::<String>::new());
    }

    fn pod(name: &str, v: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(v).unwrap();
        p.metadata.name = Some(name.into());
        p
    }

    #[test]
    fn deletion_order_prefers_unscheduled_pending_unready_newest() {
        let ready = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]);
        let mut pods = vec![
            pod(
                "running-ready-old",
                json!({"metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": ready}}),
            ),
            pod(
                "running-ready-new",
                json!({"metadata": {"creationTimestamp": "2024-01-02T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": ready}}),
            ),
            pod(
                "pending-scheduled",
                json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Pending"}}),
            ),
            pod(
                "unscheduled",
                json!({"spec": {"containers": []}, "status": {"phase": "Pending"}}),
            ),
            pod(
                "running-unready",
                json!({"spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running"}}),
            ),
        ];
        sort_for_deletion(&mut pods);
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending-scheduled",
                "running-unready",
                "running-ready-new",
                "running-ready-old"
            ]
        );
    }

    #[test]
    fn counts_and_min_ready_seconds() {
        let now: Timestamp = "2024-01-01T00:01:00Z".parse().unwrap();
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let pods = vec![
            pod(
                "a",
                json!({"metadata": {"labels": {"app": "web"}}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}),
            ),
            pod(
                "b",
                json!({"metadata": {"labels": {"app": "web"}}, "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:50Z"}]}}),
            ),
            pod(
                "c",
                json!({"metadata": {"labels": {"other": "x"}}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        ];
        let (c, next) = count_pods(&pods, &labels, 0, now);
        assert_eq!(
            c,
            RsCounts {
                replicas: 3,
                fully_labeled: 2,
                ready: 2,
                available: 2
            }
        );
        assert_eq!(next, None);
        let (c, next) = count_pods(&pods, &labels, 30, now);
        assert_eq!(c.available, 1);
        assert_eq!(next, Some(Duration::from_secs(20)));
    }

    #[test]
    fn pod_from_template_is_owned_and_labeled() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "u1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let p = pod_from_template(&rs);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                r.kind.as_str(),
                r.uid.as_str(),
                r.controller,
                r.block_owner_deletion
            ),
            ("ReplicaSet", "u1", Some(true), Some(true))
        );
        assert_eq!(r.api_version, "apps/v1");
    }

    #[test]
    fn empty_selector_selects_nothing() {
        assert!(selector_of(&LabelSelector::default()).is_none());
        let s = selector_of(&serde_json::from_value(json!({"matchLabels": {"a": "b"}})).unwrap())
            .unwrap();
        assert!(s.matches(&[("a".to_string(), "b".to_string())].into()));
    }
}
