//! The Deployment controller, following kube-controller-manager's.
//!
//! A Deployment owns one ReplicaSet per pod-template revision, named
//! `<deployment>-<hash>` where the hash is FNV-1a (32 bit) of the
//! template's JSON (plus `status.collisionCount`), printed in decimal and
//! mapped onto upstream's "safe" alphabet (`bcdfghjklmnpqrstvwxz2456789`),
//! like `rand.SafeEncodeString`. The hash is also the `pod-template-hash`
//! label on the ReplicaSet, its selector and its template.
//!
//! The ReplicaSet whose template equals the Deployment's (ignoring the
//! hash label) is the *new* one; the others are *old*. The new one's
//! `deployment.kubernetes.io/revision` is one more than the largest old
//! revision: a rollback (`kubectl rollout undo` patches the template back)
//! finds the old ReplicaSet, gives it the next revision and records its
//! former one in `deployment.kubernetes.io/revision-history`. The
//! Deployment carries the new ReplicaSet's revision too.
//!
//! Per reconcile (ReplicaSets are listed live; the controller owns them):
//!
//! * adopt orphan ReplicaSets matching the selector, release non-matching;
//! * paused (`spec.paused`), or a *scaling event* (an active ReplicaSet's
//!   `desired-replicas` annotation differs from `spec.replicas`): only
//!   scale — the one active ReplicaSet, or proportionally across several
//!   (upstream's `scale`); no new ReplicaSet while paused;
//! * `RollingUpdate`: scale the new ReplicaSet up within
//!   `replicas + maxSurge`, then old ones down while keeping
//!   `replicas - maxUnavailable` available (unhealthy old replicas first);
//! * `Recreate`: scale every old ReplicaSet to 0, wait until their pods are
//!   gone, then create/scale the new one to `replicas`;
//! * once complete, delete old ReplicaSets with 0 replicas beyond
//!   `revisionHistoryLimit` (lowest revisions first);
//! * status: replicas, updatedReplicas, readyReplicas, availableReplicas,
//!   unavailableReplicas, observedGeneration, collisionCount and the
//!   `Available` / `Progressing` conditions with upstream's reasons and
//!   messages (`kubectl rollout status` reads them), including
//!   `ProgressDeadlineExceeded` after `progressDeadlineSeconds`.
//!
//! `ScalingReplicaSet` events (`Scaled up replica set web-abc from 0 to 3`)
//! are recorded on the Deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replicaset::{
    Ctx, Error, api_err, claim, controller_ref, now, owner_ref, record_event, selector_of,
};

/// The component name on events this controller records.
pub const COMPONENT: &str = "deployment-controller";
/// Revision of a ReplicaSet / Deployment.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Former revisions of a ReplicaSet that was rolled back to.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last scaled the ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last scaled the ReplicaSet.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the ReplicaSets of one Deployment apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Annotations of the Deployment never copied onto its ReplicaSets.
const SKIP_COPY: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// Longest `revision-history` annotation, as upstream's default.
const REVISION_HISTORY_LIMIT_CHARS: usize = 2000;

const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";

// ---------------------------------------------------------------------------
// Pure logic.

/// Upstream's `rand.SafeEncodeString`: every byte onto an alphabet without
/// vowels (and without 0, 1 and 3), so hashes never spell words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// FNV-1a, 32 bits.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template (without that label) and the
/// Deployment's collision count.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// A template without the `pod-template-hash` label (an emptied label map
/// counts as none).
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut()
        && let Some(l) = m.labels.as_mut()
    {
        l.remove(POD_TEMPLATE_HASH);
        if l.is_empty() {
            m.labels = None;
        }
    }
    t
}

/// Whether two templates are equal ignoring the hash label (upstream's
/// `EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let (a, b) = (without_hash(a), without_hash(b));
    // Compare the JSON forms: absent and empty collections are the same.
    normalize(serde_json::to_value(&a).unwrap_or_default())
        == normalize(serde_json::to_value(&b).unwrap_or_default())
}

fn normalize(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::Object(o) => !o.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// An int-or-percent scaled against `total` (upstream's
/// `GetScaledValueFromIntOrPercent`); a plain numeric string counts as an int.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            if let Some(p) = s.strip_suffix('%') {
                let p: i64 = p.trim().parse().unwrap_or(0);
                let prod = p * i64::from(total);
                let v = if round_up {
                    (prod + 99).div_euclid(100)
                } else {
                    prod.div_euclid(100)
                };
                v as i32
            } else {
                s.trim().parse().unwrap_or(0)
            }
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `desired` replicas: surge rounds up,
/// unavailable down, both default to 25%, and when both are 0 one pod may
/// be unavailable (upstream's `ResolveFenceposts`).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let pct = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&pct), desired, true).max(0);
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&pct), desired, false).max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired(d),
    )
}

/// The Deployment's max surge (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if is_recreate(d) { 0 } else { fenceposts(d).0 }
}

/// The Deployment's max unavailable (0 for Recreate or 0 replicas; never
/// more than `replicas`).
pub fn max_unavailable(d: &Deployment) -> i32 {
    let want = desired(d);
    if is_recreate(d) || want == 0 {
        return 0;
    }
    fenceposts(d).1.min(want)
}

/// How many replicas the new ReplicaSet should have (upstream's
/// `NewRSNewReplicas`): for a rolling update, up to `desired + max_surge`
/// pods in total; for Recreate, `desired`.
pub fn new_rs_new_replicas(
    recreate: bool,
    desired: i32,
    max_surge: i32,
    current_total: i32,
    new_rs_replicas: i32,
) -> i32 {
    if recreate {
        return desired;
    }
    let max_total = desired + max_surge;
    if current_total >= max_total {
        return new_rs_replicas;
    }
    let up = (max_total - current_total).min(desired - new_rs_replicas);
    new_rs_replicas + up.max(0)
}

/// Target sizes of the old ReplicaSets (oldest first, as `(spec replicas,
/// available)`) in one rolling-update step: upstream's
/// `reconcileOldReplicaSets` — unhealthy old replicas go first, then
/// available ones while `desired - max_unavailable` stay available.
pub fn plan_old_scale_down(
    old: &[(i32, i32)],
    new: (i32, i32),
    desired: i32,
    max_unavailable: i32,
) -> Vec<i32> {
    let mut targets: Vec<i32> = old.iter().map(|(r, _)| *r).collect();
    let old_total: i32 = targets.iter().sum();
    if old_total == 0 {
        return targets;
    }
    let all_total = old_total + new.0;
    let min_available = desired - max_unavailable;
    let new_unavailable = new.0 - new.1;
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return targets;
    }
    // Unhealthy replicas first.
    let mut cleaned = 0;
    for (i, (r, avail)) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        if *r == 0 || *r == *avail {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(r - avail);
        targets[i] = r - down;
        cleaned += down;
    }
    // Then available ones, keeping the minimum available.
    let available: i32 = old.iter().map(|(_, a)| *a).sum::<i32>() + new.1;
    if available <= min_available {
        return targets;
    }
    let total_down = available - min_available;
    let mut done = 0;
    for t in targets.iter_mut() {
        if done >= total_down {
            break;
        }
        if *t == 0 {
            continue;
        }
        let down = (*t).min(total_down - done);
        *t -= down;
        done += down;
    }
    targets
}

/// Proportional scaling of several active ReplicaSets (upstream's
/// `scale`): `sets` are `(spec replicas, max-replicas annotation)`, already
/// ordered (larger first; for growth newer first, else older first).
/// Returns the new sizes.
pub fn plan_proportional(
    sets: &[(i32, Option<i32>)],
    desired: i32,
    max_surge: i32,
    status_replicas: i32,
) -> Vec<i32> {
    let current: i32 = sets.iter().map(|(r, _)| *r).sum();
    let allowed = if desired > 0 { desired + max_surge } else { 0 };
    let to_add = allowed - current;
    let mut sizes: Vec<i32> = sets.iter().map(|(r, _)| *r).collect();
    if to_add == 0 || sets.is_empty() {
        return sizes;
    }
    let mut added = 0;
    for (i, (r, ann)) in sets.iter().enumerate() {
        if *r == 0 || to_add == added {
            continue;
        }
        let fraction = if desired == 0 {
            -r
        } else {
            let annotated = ann.unwrap_or(status_replicas);
            if annotated == 0 {
                0
            } else {
                let size = f64::from(*r) * f64::from(desired + max_surge) / f64::from(annotated);
                size.round() as i32 - r
            }
        };
        let allowed_left = to_add - added;
        let p = if to_add > 0 {
            fraction.min(allowed_left)
        } else {
            fraction.max(allowed_left)
        };
        sizes[i] += p;
        added += p;
    }
    sizes[0] = (sizes[0] + to_add - added).max(0);
    sizes
}

/// Upstream's `SetNewReplicaSetAnnotations`: copies the Deployment's
/// annotations, raises the revision to `new_revision` when lower (keeping
/// the former one in the history), and for a ReplicaSet about to be
/// created sets the replica annotations. Returns whether anything changed.
pub fn set_new_rs_annotations(
    deployment_annotations: &BTreeMap<String, String>,
    rs: &mut BTreeMap<String, String>,
    new_revision: i64,
    exists: bool,
    desired: i32,
    max_replicas: i32,
) -> bool {
    let mut changed = false;
    for (k, v) in deployment_annotations {
        if SKIP_COPY.contains(&k.as_str()) {
            continue;
        }
        if rs.get(k) != Some(v) {
            rs.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    let old = rs.get(REVISION).cloned();
    let old_int: i64 = match old.as_deref() {
        None | Some("") => 0,
        Some(s) => match s.parse() {
            Ok(v) => v,
            Err(_) => return changed,
        },
    };
    if old_int < new_revision {
        rs.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = rs.get(REVISION_HISTORY).cloned().unwrap_or_default();
            if history.is_empty() {
                rs.insert(REVISION_HISTORY.into(), old);
            } else {
                let mut parts: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > REVISION_HISTORY_LIMIT_CHARS && start < parts.len() {
                    total -= parts[start].len() + 1;
                    start += 1;
                }
                if total <= REVISION_HISTORY_LIMIT_CHARS {
                    parts = parts.split_off(start);
                    parts.push(&old);
                    rs.insert(REVISION_HISTORY.into(), parts.join(","));
                }
            }
        }
    }
    if !exists {
        for (k, v) in [
            (DESIRED_REPLICAS, desired.to_string()),
            (MAX_REPLICAS, max_replicas.to_string()),
        ] {
            if rs.get(k) != Some(&v) {
                rs.insert(k.into(), v);
                changed = true;
            }
        }
    }
    changed
}

/// The revision annotation of an object (0 when absent or invalid).
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

fn annotation_int(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key).and_then(|v| v.parse().ok())
}

fn created_key(rs: &ReplicaSet) -> (i64, String) {
    (
        rs.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_microsecond())
            .unwrap_or(0),
        rs.name_any(),
    )
}

fn condition<'a>(s: &'a DeploymentStatus, ty: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
}

fn remove_condition(s: &mut DeploymentStatus, ty: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != ty);
    }
}

fn new_condition(ty: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let t = now();
    DeploymentCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(t.clone()),
        last_transition_time: Some(t),
    }
}

/// Upstream's `SetDeploymentCondition`: no change when status and reason
/// are the same; the transition time is kept when only the reason changed.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(s, &c.type_.clone());
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

/// Whether the status shows a finished rollout (upstream's `DeploymentComplete`).
pub fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = desired(d);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over `old` (upstream's `DeploymentProgressing`).
pub fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let o_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let n_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || n_old < o_old
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

// ---------------------------------------------------------------------------
// The loop.

/// Reconciles running at once (kube-controller-manager's `--concurrent-deployment-syncs`
/// default). Unbounded, a burst of owners floods the apiserver with writes
/// and every other client's requests queue behind them.
const WORKERS: u16 = 5;

/// Runs the Deployment controller until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let rss: Api<ReplicaSet> = Api::all(client.clone());
    let ctx = Arc::new(Ctx::new(client));
    let stream = Controller::new(deployments, watcher::Config::default())
        .owns(rss, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(WORKERS))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "deployment reconcile failed");
            }
        });
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = stream => {}
    }
}

fn error_policy(d: Arc<Deployment>, err: &Error, _: Arc<Ctx>) -> Action {
    if err.is_conflict() {
        // Someone wrote the object since we read it: decide again at once.
        debug!(deployment = %d.name_any(), error = %err, "deployment sync hit a conflict; retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(deployment = %d.name_any(), namespace = ?d.namespace(), error = %err, "deployment sync failed; retrying");
    match err {
        Error::Invalid(_) => Action::requeue(Duration::from_secs(30)),
        Error::Api { .. } => Action::requeue(Duration::from_secs(1)),
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_else(|| "default".into());
    let name = d.name_any();
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(d) = d_api
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading deployment {ns}/{name}")))?
    else {
        return Ok(Action::await_change());
    };
    let mut sync = Sync {
        client: ctx.client.clone(),
        rs_api: Api::namespaced(ctx.client.clone(), &ns),
        d_ref: d.object_ref(&()),
        status: d.status.clone().unwrap_or_default(),
        orig: d.status.clone().unwrap_or_default(),
        d_api,
        ns,
        name,
        d,
        all: Vec::new(),
        new: None,
    };
    sync.run().await
}

struct Sync {
    client: kube::Client,
    d: Deployment,
    d_api: Api<Deployment>,
    rs_api: Api<ReplicaSet>,
    d_ref: ObjectReference,
    ns: String,
    name: String,
    /// The status being built (conditions set along the way).
    status: DeploymentStatus,
    /// The status as read.
    orig: DeploymentStatus,
    /// Every ReplicaSet the Deployment controls.
    all: Vec<ReplicaSet>,
    /// Index of the new one in `all`.
    new: Option<usize>,
}

const RESYNC: Duration = Duration::from_secs(300);

impl Sync {
    async fn run(&mut self) -> Result<Action, Error> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let Some(selector) = selector_of(&spec.selector) else {
            record_event(
                &self.client,
                COMPONENT,
                &self.d_ref,
                "Warning",
                "SelectingAll",
                "This deployment will select all pods. A non-empty selector is required.".into(),
            )
            .await;
            if self.orig.observed_generation < self.d.metadata.generation {
                self.status.observed_generation = self.d.metadata.generation;
                self.write_status(self.status.clone()).await?;
            }
            return Ok(Action::await_change());
        };
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let listed = self
            .rs_api
            .list(&ListParams::default())
            .await
            .map_err(api_err(format!("listing replicasets of {}", self.ns)))?
            .items;
        let me = owner_ref(&self.d);
        self.all = claim(&self.rs_api, &me, deleting, Some(&selector), listed).await;
        self.all.sort_by_key(created_key);
        self.find_new();

        if deleting {
            self.sync_status().await?;
            return Ok(Action::await_change());
        }
        self.check_paused_conditions();
        if spec.paused == Some(true) || self.is_scaling_event() {
            return self.sync_only().await;
        }
        if is_recreate(&self.d) {
            self.rollout_recreate().await
        } else {
            self.rollout_rolling().await
        }
    }

    fn find_new(&mut self) {
        let template = self.d.spec.clone().unwrap_or_default().template;
        self.new = self.all.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(|t| equal_ignore_hash(t, &template))
                .unwrap_or(false)
        });
    }

    fn old_indices(&self) -> Vec<usize> {
        (0..self.all.len())
            .filter(|i| Some(*i) != self.new)
            .collect()
    }

    fn is_scaling_event(&self) -> bool {
        let want = desired(&self.d);
        self.all
            .iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .filter_map(|rs| annotation_int(rs, DESIRED_REPLICAS))
            .any(|d| d != want)
    }

    /// Upstream's `checkPausedConditions`.
    fn check_paused_conditions(&mut self) {
        if progress_deadline(&self.d).is_none() {
            return;
        }
        let cur = condition(&self.status, PROGRESSING);
        if cur.and_then(|c| c.reason.as_deref()) == Some(TIMED_OUT) {
            return;
        }
        let paused_cond = cur.and_then(|c| c.reason.as_deref()) == Some(PAUSED);
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        if paused && !paused_cond {
            set_condition(
                &mut self.status,
                new_condition(
                    PROGRESSING,
                    "Unknown",
                    PAUSED,
                    "Deployment is paused".into(),
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                &mut self.status,
                new_condition(
                    PROGRESSING,
                    "Unknown",
                    RESUMED,
                    "Deployment is resumed".into(),
                ),
            );
        }
    }

    /// Syncs the new ReplicaSet's revision (and creates it when `create`
    /// and missing). `Ok(false)`: a hash collision was recorded; retry.
    async fn sync_revision(&mut self, create: bool) -> Result<bool, Error> {
        let max_old = self
            .old_indices()
            .iter()
            .map(|i| revision_of(&self.all[*i].metadata))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let d_ann = self.d.annotations().clone();
        let want = desired(&self.d);
        let max_replicas = want + max_surge(&self.d);
        let has_deadline = progress_deadline(&self.d).is_some();
        if let Some(i) = self.new {
            let rs = &self.all[i];
            let mut ann = rs.annotations().clone();
            let changed =
                set_new_rs_annotations(&d_ann, &mut ann, new_revision, true, want, max_replicas);
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if changed || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0) {
                let patch = json!({
                    "metadata": {"annotations": ann, "resourceVersion": rs.metadata.resource_version},
                    "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
                });
                let rs_name = rs.name_any();
                let updated = self
                    .rs_api
                    .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!(
                        "updating replicaset {}/{rs_name}",
                        self.ns
                    )))?;
                if revision_of(&updated.metadata) != revision_of(&self.all[i].metadata) {
                    info!(deployment = %self.name, replicaset = %rs_name, revision = revision_of(&updated.metadata), "new replica set revision");
                }
                self.all[i] = updated;
            }
            let rev = revision_of(&self.all[i].metadata);
            self.set_deployment_revision(rev).await?;
            if has_deadline && condition(&self.status, PROGRESSING).is_none() {
                let msg = format!("Found new replica set \"{}\"", self.all[i].name_any());
                set_condition(
                    &mut self.status,
                    new_condition(PROGRESSING, "True", FOUND_NEW_RS, msg),
                );
            }
            return Ok(true);
        }
        if !create {
            return Ok(true);
        }
        // Create the new ReplicaSet.
        let spec = self.d.spec.clone().unwrap_or_default();
        let hash = pod_template_hash(&spec.template, self.status.collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let total: i32 = self.all.iter().map(rs_replicas).sum();
        let replicas =
            new_rs_new_replicas(is_recreate(&self.d), want, max_surge(&self.d), total, 0);
        let mut ann = BTreeMap::new();
        set_new_rs_annotations(&d_ann, &mut ann, new_revision, false, want, max_replicas);
        let rs_name = format!("{}-{hash}", self.name);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.ns.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(ann),
                owner_references: Some(vec![owner_ref(&self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match self.rs_api.create(&PostParams::default(), &rs).await {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = self
                    .rs_api
                    .get_opt(&rs_name)
                    .await
                    .map_err(api_err(format!("reading replicaset {}/{rs_name}", self.ns)))?;
                let ours = existing.as_ref().is_some_and(|e| {
                    controller_ref(&e.metadata).map(|r| r.uid.as_str())
                        == self.d.metadata.uid.as_deref()
                        && e.spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .map(|t| equal_ignore_hash(t, &spec.template))
                            .unwrap_or(false)
                });
                if ours {
                    // Our own, listed before it existed: retry from the top.
                    return Ok(false);
                }
                // A different object holds the name: change the hash.
                let count = self.status.collision_count.unwrap_or(0) + 1;
                warn!(deployment = %self.name, replicaset = %rs_name, count, "pod-template-hash collision");
                self.status.collision_count = Some(count);
                let mut st = self.status.clone();
                st.collision_count = Some(count);
                self.write_status(st).await?;
                return Ok(false);
            }
            Err(e) => {
                return Err(api_err(format!(
                    "creating replicaset {}/{rs_name}",
                    self.ns
                ))(e));
            }
        };
        info!(deployment = %self.name, replicaset = %rs_name, replicas, revision = new_revision, "created new replica set");
        if replicas > 0 {
            record_event(
                &self.client,
                COMPONENT,
                &self.d_ref,
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
            )
            .await;
        }
        if has_deadline {
            set_condition(
                &mut self.status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set \"{rs_name}\""),
                ),
            );
        }
        self.all.push(created);
        self.new = Some(self.all.len() - 1);
        self.set_deployment_revision(new_revision).await?;
        Ok(true)
    }

    async fn set_deployment_revision(&mut self, rev: i64) -> Result<(), Error> {
        if rev <= 0 || revision_of(&self.d.metadata) == rev {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        self.d = crate::update::merge_into(&self.d_api, &self.name, &patch)
            .await
            .map_err(api_err(format!(
                "annotating deployment {}/{}",
                self.ns, self.name
            )))?;
        Ok(())
    }

    /// Sets a ReplicaSet's size and replica annotations; true when the size
    /// changed (with a `ScalingReplicaSet` event).
    async fn scale(&mut self, i: usize, to: i32) -> Result<bool, Error> {
        let rs = &self.all[i];
        let from = rs_replicas(rs);
        let want = desired(&self.d);
        let max = want + max_surge(&self.d);
        let ann_ok = annotation_int(rs, DESIRED_REPLICAS) == Some(want)
            && annotation_int(rs, MAX_REPLICAS) == Some(max);
        if from == to && ann_ok {
            return Ok(false);
        }
        let rs_name = rs.name_any();
        let patch = json!({
            "metadata": {
                "resourceVersion": rs.metadata.resource_version,
                "annotations": {DESIRED_REPLICAS: want.to_string(), MAX_REPLICAS: max.to_string()},
            },
            "spec": {"replicas": to},
        });
        self.all[i] = self
            .rs_api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("scaling replicaset {}/{rs_name}", self.ns)))?;
        if from != to {
            let op = if from < to { "up" } else { "down" };
            info!(deployment = %self.name, replicaset = %rs_name, from, to, "scaled {op} replica set");
            record_event(
                &self.client,
                COMPONENT,
                &self.d_ref,
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled {op} replica set {rs_name} from {from} to {to}"),
            )
            .await;
        }
        Ok(from != to)
    }

    /// Upstream's `sync`: scaling only (paused, or a scaling event).
    async fn sync_only(&mut self) -> Result<Action, Error> {
        if !self.sync_revision(false).await? {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        self.scale_all().await?;
        if self.d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            self.cleanup().await?;
        }
        self.sync_status().await?;
        Ok(Action::requeue(RESYNC))
    }

    /// Upstream's `scale`.
    async fn scale_all(&mut self) -> Result<(), Error> {
        let want = desired(&self.d);
        let active: Vec<usize> = (0..self.all.len())
            .filter(|i| rs_replicas(&self.all[*i]) > 0)
            .collect();
        // One active (or, with none, the latest) ReplicaSet takes it all.
        let single = match active.len() {
            0 => self.new.or_else(|| self.all.len().checked_sub(1)),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = single {
            self.scale(i, want).await?;
            return Ok(());
        }
        // Saturated new ReplicaSet: the old ones go.
        if let Some(n) = self.new {
            let rs = &self.all[n];
            if annotation_int(rs, DESIRED_REPLICAS) == Some(want)
                && rs_replicas(rs) == want
                && rs_status(rs).2 == want
            {
                for i in self.old_indices() {
                    if rs_replicas(&self.all[i]) > 0 {
                        self.scale(i, 0).await?;
                    }
                }
                return Ok(());
            }
        }
        if is_recreate(&self.d) {
            return Ok(());
        }
        let surge = max_surge(&self.d);
        let current: i32 = active.iter().map(|i| rs_replicas(&self.all[*i])).sum();
        let allowed = if want > 0 { want + surge } else { 0 };
        let grow = allowed > current;
        let mut order = active.clone();
        order.sort_by(|a, b| {
            let (ra, rb) = (&self.all[*a], &self.all[*b]);
            rs_replicas(rb).cmp(&rs_replicas(ra)).then_with(|| {
                if grow {
                    created_key(rb).cmp(&created_key(ra))
                } else {
                    created_key(ra).cmp(&created_key(rb))
                }
            })
        });
        let sets: Vec<(i32, Option<i32>)> = order
            .iter()
            .map(|i| {
                (
                    rs_replicas(&self.all[*i]),
                    annotation_int(&self.all[*i], MAX_REPLICAS),
                )
            })
            .collect();
        let sizes = plan_proportional(&sets, want, surge, self.orig.replicas.unwrap_or(0));
        for (i, size) in order.into_iter().zip(sizes) {
            self.scale(i, size).await?;
        }
        Ok(())
    }

    async fn rollout_rolling(&mut self) -> Result<Action, Error> {
        if !self.sync_revision(true).await? {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        let Some(n) = self.new else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let want = desired(&self.d);
        // Scale the new ReplicaSet up (or down to the desired size).
        let new_replicas = rs_replicas(&self.all[n]);
        let target = if new_replicas > want {
            want
        } else {
            let total: i32 = self.all.iter().map(rs_replicas).sum();
            new_rs_new_replicas(false, want, max_surge(&self.d), total, new_replicas)
        };
        if target != new_replicas && self.scale(n, target).await? {
            return self.sync_rollout_status().await;
        }
        // Scale old ones down.
        let old = self.old_indices();
        let pairs: Vec<(i32, i32)> = old
            .iter()
            .map(|i| (rs_replicas(&self.all[*i]), rs_status(&self.all[*i]).2))
            .collect();
        let new_pair = (rs_replicas(&self.all[n]), rs_status(&self.all[n]).2);
        let targets = plan_old_scale_down(&pairs, new_pair, want, max_unavailable(&self.d));
        let mut scaled = false;
        for (i, t) in old.into_iter().zip(targets) {
            if t != rs_replicas(&self.all[i]) {
                scaled |= self.scale(i, t).await?;
            }
        }
        if scaled {
            return self.sync_rollout_status().await;
        }
        if deployment_complete(&self.d, &self.orig) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    async fn rollout_recreate(&mut self) -> Result<Action, Error> {
        if !self.sync_revision(false).await? {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        let mut scaled = false;
        for i in self.old_indices() {
            if rs_replicas(&self.all[i]) > 0 {
                scaled |= self.scale(i, 0).await?;
            }
        }
        if scaled {
            return self.sync_rollout_status().await;
        }
        if self.old_pods_running().await? {
            self.sync_rollout_status().await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if self.new.is_none() && !self.sync_revision(true).await? {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        if let Some(n) = self.new {
            let want = desired(&self.d);
            if rs_replicas(&self.all[n]) != want {
                self.scale(n, want).await?;
            }
        }
        if deployment_complete(&self.d, &self.orig) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    /// Whether pods of old ReplicaSets still exist (Recreate waits for them).
    async fn old_pods_running(&self) -> Result<bool, Error> {
        let old = self.old_indices();
        if old.iter().any(|i| rs_status(&self.all[*i]).0 > 0) {
            return Ok(true);
        }
        let uids: BTreeSet<String> = old
            .iter()
            .filter_map(|i| self.all[*i].metadata.uid.clone())
            .collect();
        if uids.is_empty() {
            return Ok(false);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(api_err(format!("listing pods of {}", self.ns)))?;
        Ok(list.items.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Failed") | Some("Succeeded"))
                && controller_ref(&p.metadata).is_some_and(|r| uids.contains(&r.uid))
        }))
    }

    /// Deletes old ReplicaSets with no replicas beyond `revisionHistoryLimit`.
    async fn cleanup(&mut self) -> Result<(), Error> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<usize> = self
            .old_indices()
            .into_iter()
            .filter(|i| self.all[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit.max(0));
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|i| {
            (
                revision_of(&self.all[*i].metadata),
                created_key(&self.all[*i]),
            )
        });
        let mut gone = Vec::new();
        for i in cleanable.into_iter().take(diff as usize) {
            let rs = &self.all[i];
            let st = rs.status.clone().unwrap_or_default();
            if st.replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > st.observed_generation.unwrap_or(0)
            {
                continue;
            }
            let rs_name = rs.name_any();
            match self.rs_api.delete(&rs_name, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(deployment = %self.name, replicaset = %rs_name, "deleted old replica set");
                    gone.push(i);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => gone.push(i),
                Err(e) => {
                    return Err(api_err(format!(
                        "deleting replicaset {}/{rs_name}",
                        self.ns
                    ))(e));
                }
            }
        }
        if !gone.is_empty() {
            let new_uid = self.new.and_then(|n| self.all[n].metadata.uid.clone());
            let mut idx = 0;
            self.all.retain(|_| {
                let keep = !gone.contains(&idx);
                idx += 1;
                keep
            });
            self.new = new_uid.and_then(|u| {
                self.all
                    .iter()
                    .position(|rs| rs.metadata.uid.as_deref() == Some(u.as_str()))
            });
        }
        Ok(())
    }

    /// Upstream's `calculateStatus` (counts and the Available condition).
    fn calculate_status(&self) -> DeploymentStatus {
        let mut s = self.status.clone();
        let available: i32 = self.all.iter().map(|rs| rs_status(rs).2).sum();
        let total: i32 = self.all.iter().map(rs_replicas).sum();
        s.observed_generation = self.d.metadata.generation;
        s.replicas = Some(self.all.iter().map(|rs| rs_status(rs).0).sum());
        s.updated_replicas = Some(self.new.map(|n| rs_status(&self.all[n]).0).unwrap_or(0));
        s.ready_replicas = Some(self.all.iter().map(|rs| rs_status(rs).1).sum());
        s.available_replicas = Some(available);
        s.unavailable_replicas = Some((total - available).max(0));
        if available >= desired(&self.d) - max_unavailable(&self.d) {
            set_condition(
                &mut s,
                new_condition(
                    AVAILABLE,
                    "True",
                    MIN_AVAILABLE,
                    "Deployment has minimum availability.".into(),
                ),
            );
        } else {
            set_condition(
                &mut s,
                new_condition(
                    AVAILABLE,
                    "False",
                    MIN_UNAVAILABLE,
                    "Deployment does not have minimum availability.".into(),
                ),
            );
        }
        s
    }

    async fn sync_status(&mut self) -> Result<(), Error> {
        let s = self.calculate_status();
        self.write_status(s).await
    }

    /// Upstream's `syncRolloutStatus`: counts plus the Progressing condition.
    async fn sync_rollout_status(&mut self) -> Result<Action, Error> {
        let mut s = self.calculate_status();
        let deadline = progress_deadline(&self.d);
        if deadline.is_none() {
            remove_condition(&mut s, PROGRESSING);
        }
        let cur = condition(&s, PROGRESSING).cloned();
        let complete_already = s.replicas == s.updated_replicas
            && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
        let what = match self.new {
            Some(n) => format!("ReplicaSet \"{}\"", self.all[n].name_any()),
            None => format!("Deployment \"{}\"", self.name),
        };
        if deadline.is_some() && !complete_already {
            if deployment_complete(&self.d, &s) {
                set_condition(
                    &mut s,
                    new_condition(
                        PROGRESSING,
                        "True",
                        NEW_RS_AVAILABLE,
                        format!("{what} has successfully progressed."),
                    ),
                );
            } else if deployment_progressing(&self.orig, &s) {
                let mut c = new_condition(
                    PROGRESSING,
                    "True",
                    RS_UPDATED,
                    format!("{what} is progressing."),
                );
                if let Some(cur) = &cur
                    && cur.status == "True"
                {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut s, PROGRESSING);
                set_condition(&mut s, c);
            } else if self.timed_out(&s) {
                set_condition(
                    &mut s,
                    new_condition(
                        PROGRESSING,
                        "False",
                        TIMED_OUT,
                        format!("{what} has timed out progressing."),
                    ),
                );
            }
        }
        let action = self.requeue_stuck(&s);
        self.write_status(s).await?;
        Ok(action)
    }

    fn timed_out(&self, s: &DeploymentStatus) -> bool {
        let Some(deadline) = progress_deadline(&self.d) else {
            return false;
        };
        let Some(c) = condition(s, PROGRESSING) else {
            return false;
        };
        match c.reason.as_deref() {
            Some(NEW_RS_AVAILABLE) => false,
            Some(TIMED_OUT) => true,
            _ => c.last_update_time.as_ref().is_some_and(|t| {
                t.0.as_second() + i64::from(deadline) < Timestamp::now().as_second()
            }),
        }
    }

    /// When to look again at a rollout that may time out.
    fn requeue_stuck(&self, s: &DeploymentStatus) -> Action {
        let (Some(deadline), Some(c)) = (progress_deadline(&self.d), condition(s, PROGRESSING))
        else {
            return Action::requeue(RESYNC);
        };
        if deployment_complete(&self.d, s) || c.reason.as_deref() == Some(TIMED_OUT) {
            return Action::requeue(RESYNC);
        }
        let from = c
            .last_update_time
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or_else(|| Timestamp::now().as_second());
        let after = from + i64::from(deadline) - Timestamp::now().as_second();
        Action::requeue(Duration::from_secs(
            after.clamp(1, RESYNC.as_secs() as i64) as u64
        ))
    }

    async fn write_status(&mut self, s: DeploymentStatus) -> Result<(), Error> {
        if s == self.orig {
            return Ok(());
        }
        let patch = json!({"status": s});
        let d = crate::update::merge_into_status(&self.d_api, &self.name, &patch)
            .await
            .map_err(api_err(format!(
                "writing status of deployment {}/{}",
                self.ns, self.name
            )))?;
        self.orig = d.status.clone().unwrap_or_default();
        self.status = self.orig.clone();
        Ok(())
    }
}

/// A Time as text, for tests.
#[cfg(test)]
fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ios(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn safe_encode_matches_upstream_alphabet() {
        // '0' is 48, 48 % 27 = 21 -> '4'; '9' is 57 -> 3 -> 'f'.
        assert_eq!(safe_encode("09"), "4f");
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "busybox", "image": "busybox"}]}
        }))
        .unwrap();
        let h = pod_template_hash(&t, None);
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_eq!(h, pod_template_hash(&t, None), "deterministic");
        assert_ne!(
            h,
            pod_template_hash(&t, Some(1)),
            "collision count changes it"
        );
        let mut t2 = t.clone();
        t2.spec.as_mut().unwrap().containers[0].image = Some("busybox:1.36".into());
        assert_ne!(h, pod_template_hash(&t2, None));
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
    }

    #[test]
    fn equal_ignoring_hash_label() {
        let a: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        assert!(equal_ignore_hash(&a, &b));
        let c: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "y"}]}
        }))
        .unwrap();
        assert!(!equal_ignore_hash(&a, &c));
    }

    #[test]
    fn percentages_and_fenceposts() {
        assert_eq!(scaled_value(&ios("25%"), 10, true), 3);
        assert_eq!(scaled_value(&ios("25%"), 10, false), 2);
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, false), 4);
        assert_eq!(resolve_fenceposts(None, None, 3), (1, 0));
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
            (0, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&ios("50%")), Some(&ios("0%")), 5),
            (3, 0)
        );
    }

    #[test]
    fn new_replica_set_scale_up_within_surge() {
        // 3 desired, surge 1, old has 3: new may get 1.
        assert_eq!(new_rs_new_replicas(false, 3, 1, 3, 0), 1);
        // At the ceiling: no change.
        assert_eq!(new_rs_new_replicas(false, 3, 1, 4, 1), 1);
        // Never beyond desired.
        assert_eq!(new_rs_new_replicas(false, 3, 5, 0, 0), 3);
        assert_eq!(new_rs_new_replicas(true, 3, 1, 3, 0), 3);
    }

    #[test]
    fn old_scale_down_keeps_minimum_available() {
        // desired 10, maxUnavailable 2: old 10 all available, new 3 none available.
        assert_eq!(plan_old_scale_down(&[(10, 10)], (3, 0), 10, 2), vec![8]);
        // Nothing available on the new side and at the minimum: no change.
        assert_eq!(plan_old_scale_down(&[(8, 8)], (5, 0), 10, 2), vec![8]);
        // Unhealthy old replicas go first, even below minAvailable budget.
        assert_eq!(
            plan_old_scale_down(&[(5, 0), (5, 5)], (3, 3), 10, 2),
            vec![0, 5]
        );
        // Oldest first.
        assert_eq!(
            plan_old_scale_down(&[(2, 2), (2, 2)], (4, 4), 4, 1),
            vec![0, 0]
        );
    }

    /// A whole rolling update where replica sets become available at once
    /// never leaves the bounds and ends with only the new one.
    #[test]
    fn simulated_rolling_update_converges_within_bounds() {
        for (want, surge, unavail) in [(3, 1, 0), (10, 3, 2), (5, 0, 1), (1, 1, 0), (7, 2, 7)] {
            let mut old = vec![(want, want)];
            let mut new = (0, 0);
            for _ in 0..100 {
                let total: i32 = old.iter().map(|x| x.0).sum::<i32>() + new.0;
                let up = new_rs_new_replicas(false, want, surge, total, new.0);
                if up != new.0 {
                    new.0 = up;
                } else {
                    let t = plan_old_scale_down(&old, new, want, unavail);
                    for (o, t) in old.iter_mut().zip(t) {
                        o.0 = t;
                    }
                }
                let total: i32 = old.iter().map(|x| x.0).sum::<i32>() + new.0;
                assert!(total <= want + surge, "{want}/{surge}/{unavail}: {total}");
                let available: i32 = old.iter().map(|x| x.0.min(x.1)).sum::<i32>() + new.1;
                assert!(available >= want - unavail, "{available}");
                // Pods become available.
                for o in old.iter_mut() {
                    o.1 = o.0;
                }
                new.1 = new.0;
                if new == (want, want) && old.iter().all(|o| o.0 == 0) {
                    break;
                }
            }
            assert_eq!(new, (want, want), "{want}/{surge}/{unavail}");
            assert!(old.iter().all(|o| o.0 == 0));
        }
    }

    #[test]
    fn proportional_scaling() {
        // 10 desired (surge 3) spread 7 new + 6 old, scaled to 20 (surge 5):
        // annotations say max 13.
        let sizes = plan_proportional(&[(7, Some(13)), (6, Some(13))], 20, 5, 13);
        assert_eq!(sizes.iter().sum::<i32>(), 25);
        assert_eq!(sizes, vec![13, 12]);
        // Scale to 0.
        assert_eq!(
            plan_proportional(&[(3, Some(4)), (1, Some(4))], 0, 0, 4),
            vec![0, 0]
        );
    }

    #[test]
    fn revision_bookkeeping() {
        let d_ann: BTreeMap<String, String> = [
            ("kubernetes.io/change-cause".to_string(), "v2".to_string()),
            (REVISION.to_string(), "2".to_string()),
        ]
        .into();
        // A new ReplicaSet.
        let mut ann = BTreeMap::new();
        assert!(set_new_rs_annotations(&d_ann, &mut ann, 3, false, 3, 4));
        assert_eq!(ann.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(ann.get(DESIRED_REPLICAS).map(String::as_str), Some("3"));
        assert_eq!(ann.get(MAX_REPLICAS).map(String::as_str), Some("4"));
        assert_eq!(
            ann.get("kubernetes.io/change-cause").map(String::as_str),
            Some("v2")
        );
        // Nothing to do the second time.
        assert!(!set_new_rs_annotations(&d_ann, &mut ann, 3, true, 3, 4));
        // A rollback to revision 1 makes it 3 and remembers 1.
        let mut old: BTreeMap<String, String> = [(REVISION.to_string(), "1".to_string())].into();
        assert!(set_new_rs_annotations(
            &BTreeMap::new(),
            &mut old,
            3,
            true,
            3,
            4
        ));
        assert_eq!(old.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(old.get(REVISION_HISTORY).map(String::as_str), Some("1"));
        assert!(set_new_rs_annotations(
            &BTreeMap::new(),
            &mut old,
            5,
            true,
            3,
            4
        ));
        assert_eq!(old.get(REVISION_HISTORY).map(String::as_str), Some("1,3"));
        // Never lowered.
        assert!(!set_new_rs_annotations(
            &BTreeMap::new(),
            &mut old,
            4,
            true,
            3,
            4
        ));
        assert_eq!(old.get(REVISION).map(String::as_str), Some("5"));
    }

    #[test]
    fn completeness_and_progress() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3, "selector": {}, "template": {}}
        }))
        .unwrap();
        let st = |r, u, a, g| DeploymentStatus {
            replicas: Some(r),
            updated_replicas: Some(u),
            available_replicas: Some(a),
            observed_generation: Some(g),
            ..Default::default()
        };
        assert!(deployment_complete(&d, &st(3, 3, 3, 2)));
        assert!(!deployment_complete(&d, &st(3, 3, 3, 1)));
        assert!(!deployment_complete(&d, &st(4, 3, 3, 2)));
        assert!(deployment_progressing(&st(3, 0, 3, 2), &st(4, 1, 3, 2)));
        assert!(!deployment_progressing(&st(4, 1, 3, 2), &st(4, 1, 3, 2)));
        assert_eq!(max_unavailable(&d), 0);
        assert_eq!(max_surge(&d), 1);
    }

    #[test]
    fn conditions_keep_transition_time_on_same_status() {
        let mut s = DeploymentStatus::default();
        let mut c = new_condition(PROGRESSING, "True", NEW_RS_CREATED, "a".into());
        c.last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2020-01-01T00:00:00Z".parse().unwrap(),
        ));
        set_condition(&mut s, c);
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, "b".into()),
        );
        let c = condition(&s, PROGRESSING).unwrap();
        assert_eq!(c.reason.as_deref(), Some(NEW_RS_AVAILABLE));
        assert_eq!(
            ts(c.last_transition_time.as_ref().unwrap()),
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(s.conditions.as_ref().unwrap().len(), 1);
    }
}
