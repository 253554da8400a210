//! StatefulSets: pods with stable names and storage, as
//! kube-controller-manager's statefulset controller.
//!
//! A `kube` Controller over StatefulSets, triggered by their pods. Each
//! reconcile lists the set's ControllerRevisions, pods and claims afresh
//! (consistent reads, so no expectations against a lagging cache), records
//! the template as the update revision ([`crate::revisions`]) and computes
//! a [`Plan`] with the pure [`plan`]:
//!
//! * pod `<set>-<ordinal>` for every ordinal in
//!   `[start, start+replicas)` (`spec.ordinals.start`), with `hostname` =
//!   its name and `subdomain` = `serviceName` (so the governing headless
//!   Service gives it a DNS name), the labels `controller-revision-hash`
//!   (the revision's name), `statefulset.kubernetes.io/pod-name` and
//!   `apps.kubernetes.io/pod-index`, and a volume per claim template
//!   naming the claim `<template>-<set>-<ordinal>`, which is created first;
//! * ordinals below the partition are made from the current revision,
//!   the others from the update revision (upstream's
//!   `newVersionedStatefulSetPod`);
//! * `OrderedReady`: one step at a time, in ordinal order; a pod is only
//!   created once every lower one is Running and available (Ready for
//!   `minReadySeconds`); scale-down removes the highest ordinal first, one
//!   at a time, while the others are healthy. `Parallel` creates and
//!   deletes without waiting;
//! * `Failed`/`Succeeded` pods are deleted and made again;
//! * `RollingUpdate`: outdated pods with ordinal ≥ partition are deleted
//!   from the highest ordinal down, at most `maxUnavailable` (default 1)
//!   unavailable at once; `OnDelete` replaces only the pods users delete;
//! * `persistentVolumeClaimRetentionPolicy`: `whenDeleted: Delete` gives
//!   every claim an ownerReference to the set (the garbage collector
//!   deletes them with it), `whenScaled: Delete` makes the claims of
//!   condemned ordinals owned by their pod alone (they go with it);
//!   `Retain` removes those references.
//!
//! Status: `replicas`, `readyReplicas`, `availableReplicas`,
//! `currentReplicas`, `updatedReplicas`, `currentRevision`,
//! `updateRevision`, `observedGeneration`, `collisionCount`; the current
//! revision becomes the update revision once every pod is updated and
//! Ready (RollingUpdate).
//!
//! Pods are claimed as upstream's `ControllerRefManager.ClaimPods` does
//! ([`claim_pods`]): of the pods in the namespace, an orphan (no
//! controller reference) that matches the selector and is named like a
//! member (`<set>-<digits>`, upstream's `isMemberOf`) is adopted — the
//! set's controller reference added, after a fresh read of the set
//! confirmed it is the same one (uid) and not being deleted; a pod the set
//! controls that no longer matches is released (reference removed). So
//! `kubectl delete sts x --cascade=orphan` and a recreation of `x` keep
//! the running pods. Claims of the templates follow the retention policy
//! for every pod the set has, adopted ones included; a reference to an
//! earlier set of the same name (another uid) is replaced.
//!
//! Not done: the `StatefulSetStartOrdinal` rename of pods when
//! `ordinals.start` changes (pods outside the range are simply condemned).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod,
    PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use rke2_apimachinery::selectors::{LabelSelector, label_selector_from_json};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::daemonset::{pod_available, pod_ready};
use crate::revisions;

/// Label with the name of the revision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Label with the pod's own name (selects one pod of the set).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

const COMPONENT: &str = "statefulset-controller";

/// A revision as the plan sees it: its name and template.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The ControllerRevision's name (the pods' `controller-revision-hash`).
    pub name: String,
    /// The pod template it holds.
    pub template: PodTemplateSpec,
}

/// One change a reconcile makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create a claim.
    CreateClaim(Box<PersistentVolumeClaim>),
    /// Set a claim's ownerReferences (retention policy).
    SetClaimOwners(String, Vec<OwnerReference>),
    /// Create a pod.
    CreatePod(Box<Pod>),
    /// Delete a pod (name, uid).
    DeletePod(String, String),
}

/// What one reconcile does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The changes, in order.
    pub steps: Vec<Step>,
    /// The status to report.
    pub status: StatefulSetStatus,
    /// When availability may change by itself (minReadySeconds).
    pub recheck_after: Option<Duration>,
}

/// Whether `pod` is named as a member of the set `set`: upstream's
/// `isMemberOf`, the name minus a final `-<digits>` is the set's.
pub fn is_member(set: &str, pod: &str) -> bool {
    pod.rsplit_once('-').is_some_and(|(parent, n)| {
        parent == set && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// What claiming does with the pods of the set's namespace.
#[derive(Debug, Default)]
pub struct PodClaims {
    /// Pods the set controls and keeps.
    pub owned: Vec<Pod>,
    /// Orphans to adopt.
    pub adopt: Vec<Pod>,
    /// Pods the set controls that no longer match: to release.
    pub release: Vec<Pod>,
}

/// The controller reference of an object.
fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Upstream's `ClaimPods` decisions for `set` (not being deleted) over
/// `pods`: a pod matches when its labels match `selector` and its name
/// is a member's. Pods controlled by others are left alone, orphans being
/// deleted are not adopted.
pub fn sort_pods(set: &StatefulSet, selector: &LabelSelector, pods: Vec<Pod>) -> PodClaims {
    let name = set_name(set);
    let uid = set.metadata.uid.as_deref().unwrap_or_default();
    let ns = set.metadata.namespace.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let mut out = PodClaims::default();
    for p in pods {
        if p.metadata.namespace.as_deref().unwrap_or_default() != ns {
            continue;
        }
        let matches = selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty))
            && is_member(&name, p.metadata.name.as_deref().unwrap_or_default());
        match controller_of(&p.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    out.owned.push(p);
                } else {
                    out.release.push(p);
                }
            }
            Some(_) => {}
            None if matches && !terminating(&p) => out.adopt.push(p),
            None => {}
        }
    }
    out
}

/// Claims the pods of `set` among `pods` (all of its namespace): releases
/// and adopts as [`sort_pods`] decides and returns the pods the set
/// controls afterwards. Before the first adoption the set is read afresh
/// (upstream's `canAdoptFunc`): gone, replaced (another uid) or being
/// deleted, nothing is adopted and the reconcile fails with the reason.
/// Patches carry the resourceVersion they were decided on; a pod changed
/// or deleted meanwhile is skipped (the next reconcile decides again).
async fn claim_pods(
    client: &kube::Client,
    set: &StatefulSet,
    selector: &LabelSelector,
    pods: Vec<Pod>,
) -> Result<Vec<Pod>, Error> {
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = set_name(set);
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims = sort_pods(set, selector, pods);
    let mut owned = claims.owned;
    for p in claims.release {
        let pname = p.metadata.name.clone().unwrap_or_default();
        let rest: Vec<&OwnerReference> = p
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|r| r.uid != uid)
            .collect();
        let patch = json!({"metadata": {
            "ownerReferences": rest,
            "resourceVersion": p.metadata.resource_version,
        }});
        match api
            .patch(&pname, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(statefulset = %format!("{ns}/{name}"), pod = %pname, "released pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if claims.adopt.is_empty() {
        return Ok(owned);
    }
    can_adopt(client, set)
        .await
        .map_err(|why| Error::Adoption("Pods", why))?;
    for p in claims.adopt {
        let pname = p.metadata.name.clone().unwrap_or_default();
        let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
        refs.push(owner_ref(set, true));
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": p.metadata.resource_version,
        }});
        match api
            .patch(&pname, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(adopted) => {
                info!(statefulset = %format!("{ns}/{name}"), pod = %pname, "adopted pod");
                owned.push(adopted);
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(owned)
}

/// Upstream's `canAdoptFunc`: the set read afresh is still the one we
/// decided for (same uid) and not being deleted; otherwise why not.
async fn can_adopt(client: &kube::Client, set: &StatefulSet) -> Result<(), String> {
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = set_name(set);
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let fresh = match sets.get_opt(&name).await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(format!("original StatefulSet {ns}/{name} is gone")),
        Err(e) => return Err(format!("reading StatefulSet {ns}/{name}: {e}")),
    };
    let fresh_uid = fresh.metadata.uid.clone().unwrap_or_default();
    if fresh_uid != uid {
        return Err(format!(
            "original StatefulSet {ns}/{name} is gone: got uid {fresh_uid}, wanted {uid}"
        ));
    }
    if fresh.metadata.deletion_timestamp.is_some() {
        return Err(format!("{ns}/{name} has just been deleted"));
    }
    Ok(())
}

/// Upstream's `adoptOrphanRevisions`: ControllerRevisions matching the
/// selector without a controller (left by a set of this name deleted
/// with `--cascade=orphan`) become this set's, so a recreated set finds
/// its history and the revision its pods carry instead of making a new
/// one (which would roll every adopted pod).
async fn adopt_orphan_revisions(
    client: &kube::Client,
    api: &Api<ControllerRevision>,
    set: &StatefulSet,
    selector: &str,
) -> Result<(), Error> {
    let orphans: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_none() && r.metadata.deletion_timestamp.is_none())
        .collect();
    if orphans.is_empty() {
        return Ok(());
    }
    can_adopt(client, set)
        .await
        .map_err(|why| Error::Adoption("ControllerRevisions", why))?;
    for r in orphans {
        let rname = r.metadata.name.clone().unwrap_or_default();
        let mut refs = r.metadata.owner_references.clone().unwrap_or_default();
        refs.push(owner_ref(set, true));
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": r.metadata.resource_version,
        }});
        match api
            .patch(&rname, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(statefulset = %set_name(set), revision = %rname, "adopted ControllerRevision")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The ordinal of `pod` if it is named `<set>-<n>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

fn set_name(set: &StatefulSet) -> String {
    set.metadata.name.clone().unwrap_or_default()
}

/// Name of the claim of template `claim` for ordinal `ord`.
pub fn claim_name(claim: &str, set: &str, ord: i32) -> String {
    format!("{claim}-{set}-{ord}")
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && pod_ready(p) && !terminating(p)
}

fn running_and_available(p: &Pod, min_ready: i64, now: Timestamp) -> bool {
    running_and_ready(p) && pod_available(p, min_ready, now)
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map(|s| s.as_str())
}

fn owner_ref(set: &StatefulSet, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set_name(set),
        uid: set.metadata.uid.clone().unwrap_or_default(),
        controller: controller.then_some(true),
        block_owner_deletion: controller.then_some(true),
    }
}

/// The pod of ordinal `ord` made from `rev` (upstream's `newStatefulSetPod`
/// with its identity and storage).
pub fn new_pod(set: &StatefulSet, rev: &Revision, ord: i32) -> Pod {
    let set_name = set_name(set);
    let spec = set.spec.clone().unwrap_or_default();
    let name = format!("{set_name}-{ord}");
    let mut meta = rev.template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), rev.name.clone());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    meta.labels = Some(labels);
    meta.name = Some(name.clone());
    meta.generate_name = None;
    meta.namespace = set.metadata.namespace.clone();
    meta.owner_references = Some(vec![owner_ref(set, true)]);
    let mut pspec = rev.template.spec.clone().unwrap_or_default();
    pspec.hostname = Some(name.clone());
    if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
        pspec.subdomain = spec.service_name.clone();
    }
    let mut volumes = pspec.volumes.take().unwrap_or_default();
    for claim in spec.volume_claim_templates.as_deref().unwrap_or_default() {
        let cname = claim.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != cname);
        volumes.push(Volume {
            name: cname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&cname, &set_name, ord),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if !volumes.is_empty() {
        pspec.volumes = Some(volumes);
    }
    Pod {
        metadata: meta,
        spec: Some(pspec),
        status: None,
    }
}

fn selector_labels(set: &StatefulSet) -> BTreeMap<String, String> {
    set.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
}

/// The claims pod `ord` needs (upstream's `getPersistentVolumeClaims`):
/// the templates named per ordinal, labelled with the selector's labels.
pub fn new_claims(set: &StatefulSet, ord: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set_name(set);
    let spec = set.spec.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels(set));
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&tname, &set_name, ord)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    ..ObjectMeta::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

fn max_unavailable(set: &StatefulSet, replicas: i32) -> i32 {
    let ru = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref());
    match ru.and_then(|r| r.max_unavailable.clone()) {
        None => 1,
        Some(IntOrString::Int(n)) => n,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * replicas as i64 + 99) / 100) as i32
        }
    }
    .max(1)
}

/// The ownerReferences `claim` should have under the retention policy:
/// its references to others kept, the set's and pods' as the policy says.
fn claim_owners(
    set: &StatefulSet,
    claim: &PersistentVolumeClaim,
    condemned_pod: Option<&Pod>,
    set_pod_uids: &BTreeSet<String>,
) -> Vec<OwnerReference> {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone())
        .unwrap_or_default();
    let set_uid = set.metadata.uid.clone().unwrap_or_default();
    let mut refs: Vec<OwnerReference> = claim
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            // A reference to an earlier set of this name (upstream's
            // `matchesRef` compares names, not uids) is replaced too.
            let to_a_set_so_named = r.kind == "StatefulSet"
                && r.api_version.starts_with("apps/")
                && r.name == set_name(set);
            r.uid != set_uid && !to_a_set_so_named && !set_pod_uids.contains(&r.uid)
        })
        .collect();
    let scaled_away = policy.when_scaled.as_deref() == Some("Delete") && condemned_pod.is_some();
    // A claim scaled away belongs to its pod alone (upstream): with the
    // set as a second owner the garbage collector would keep it.
    if policy.when_deleted.as_deref() == Some("Delete") && !scaled_away {
        refs.push(owner_ref(set, false));
    }
    if scaled_away && let Some(pod) = condemned_pod {
        refs.push(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            controller: None,
            block_owner_deletion: None,
        });
    }
    refs
}

/// Computes the plan for `set` given its (owned) pods, the claims in its
/// namespace and its current and update revisions.
pub fn plan(
    set: &StatefulSet,
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
    current: &Revision,
    update: &Revision,
    now: Timestamp,
) -> Plan {
    let name = set_name(set);
    let spec = set.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0) as i64;
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let mut out = Plan::default();

    let mut slots: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()) else {
            continue;
        };
        if ord >= start && ord < start + replicas {
            slots.insert(ord, p);
        } else {
            condemned.push((ord, p));
        }
    }
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

    // Status from what is there now.
    let mut st = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        current_revision: Some(
            set.status
                .as_ref()
                .and_then(|s| s.current_revision.clone())
                .unwrap_or_else(|| current.name.clone()),
        ),
        update_revision: Some(update.name.clone()),
        ..StatefulSetStatus::default()
    };
    let (mut ready, mut available, mut cur, mut upd) = (0, 0, 0, 0);
    for p in slots.values().chain(condemned.iter().map(|(_, p)| p)) {
        st.replicas += 1;
        if running_and_ready(p) {
            ready += 1;
            if pod_available(p, min_ready, now) {
                available += 1;
            } else if let Some(since) = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
            {
                let due = since.0.as_second() + min_ready - now.as_second();
                let due = Duration::from_secs(due.max(1) as u64);
                out.recheck_after = Some(out.recheck_after.map_or(due, |d| d.min(due)));
            }
        }
        if !terminating(p) {
            if revision_of(p) == Some(current.name.as_str()) {
                cur += 1;
            }
            if revision_of(p) == Some(update.name.as_str()) {
                upd += 1;
            }
        }
    }
    st.ready_replicas = Some(ready);
    st.available_replicas = Some(available);
    st.current_replicas = Some(cur);
    st.updated_replicas = Some(upd);
    if rolling && upd == st.replicas && ready == st.replicas && st.replicas == replicas {
        st.current_revision = Some(update.name.clone());
        st.current_replicas = Some(upd);
    }
    out.status = st;

    // Claims: their owners per the retention policy, for every pod.
    let claim_templates = spec.volume_claim_templates.clone().unwrap_or_default();
    if !claim_templates.is_empty() {
        let pod_uids: BTreeSet<String> =
            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let by_name: BTreeMap<&str, &PersistentVolumeClaim> = claims
            .iter()
            .map(|c| (c.metadata.name.as_deref().unwrap_or_default(), c))
            .collect();
        let ords = slots
            .keys()
            .map(|o| (*o, None))
            .chain(condemned.iter().map(|(o, p)| (*o, Some(*p))));
        for (ord, condemned_pod) in ords {
            for t in &claim_templates {
                let cname = claim_name(t.metadata.name.as_deref().unwrap_or_default(), &name, ord);
                if let Some(c) = by_name.get(cname.as_str()) {
                    let want = claim_owners(set, c, condemned_pod, &pod_uids);
                    if want != c.metadata.owner_references.clone().unwrap_or_default() {
                        out.steps.push(Step::SetClaimOwners(cname, want));
                    }
                }
            }
        }
    }

    let claims_for = |ord: i32, steps: &mut Vec<Step>| {
        for mut c in new_claims(set, ord) {
            let cname = c.metadata.name.clone().unwrap_or_default();
            if claims
                .iter()
                .any(|x| x.metadata.name.as_deref() == Some(&cname))
            {
                continue;
            }
            if spec
                .persistent_volume_claim_retention_policy
                .as_ref()
                .and_then(|p| p.when_deleted.as_deref())
                == Some("Delete")
            {
                c.metadata.owner_references = Some(vec![owner_ref(set, false)]);
            }
            steps.push(Step::CreateClaim(Box::new(c)));
        }
    };

    // Replace pods that finished.
    let mut waiting = false;
    for (ord, p) in &slots {
        if matches!(phase(p), "Failed" | "Succeeded") && !terminating(p) {
            out.steps.push(Step::DeletePod(
                format!("{name}-{ord}"),
                p.metadata.uid.clone().unwrap_or_default(),
            ));
            waiting = true;
        }
    }
    if waiting && monotonic {
        return out;
    }

    // Create what is missing; in order, each after the one before is
    // available, unless Parallel.
    for ord in start..start + replicas {
        match slots.get(&ord) {
            None => {
                let rev = if rolling && ord < start + partition {
                    current
                } else {
                    update
                };
                claims_for(ord, &mut out.steps);
                out.steps
                    .push(Step::CreatePod(Box::new(new_pod(set, rev, ord))));
                if monotonic {
                    return out;
                }
            }
            Some(p) => {
                if matches!(phase(p), "Failed" | "Succeeded") && !terminating(p) {
                    continue;
                }
                if monotonic && !running_and_available(p, min_ready, now) {
                    return out;
                }
            }
        }
    }

    // Scale down, highest ordinal first.
    let unhealthy = |p: &Pod| !running_and_available(p, min_ready, now) || terminating(p);
    for (i, (ord, p)) in condemned.iter().enumerate() {
        if terminating(p) {
            if monotonic {
                return out;
            }
            continue;
        }
        if monotonic {
            // Only while everything else is healthy.
            let others_unhealthy = slots.values().any(|q| unhealthy(q))
                || condemned[i + 1..].iter().any(|(_, q)| unhealthy(q));
            if others_unhealthy {
                return out;
            }
        }
        out.steps.push(Step::DeletePod(
            format!("{name}-{ord}"),
            p.metadata.uid.clone().unwrap_or_default(),
        ));
        if monotonic {
            return out;
        }
    }
    if !condemned.is_empty() && monotonic {
        return out;
    }

    // Rolling update: from the highest ordinal down to the partition.
    if !rolling {
        return out;
    }
    let targets: Vec<(i32, &Pod)> = slots
        .iter()
        .rev()
        .filter(|(o, _)| **o >= start + partition)
        .map(|(o, p)| (*o, *p))
        .collect();
    let mut unavailable = targets.iter().filter(|(_, p)| unhealthy(p)).count() as i32;
    let budget = max_unavailable(set, replicas);
    for (ord, p) in targets {
        if terminating(p) || revision_of(p) == Some(update.name.as_str()) {
            continue;
        }
        let already = unhealthy(p);
        if !already && unavailable >= budget {
            break;
        }
        out.steps.push(Step::DeletePod(
            format!("{name}-{ord}"),
            p.metadata.uid.clone().unwrap_or_default(),
        ));
        if !already {
            unavailable += 1;
        }
    }
    out
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The set's selector is malformed.
    #[error("invalid selector: {0}")]
    Selector(String),
    /// The revision could not be recorded.
    #[error(transparent)]
    Revision(#[from] revisions::Error),
    /// Orphans (of the kind named) may not be adopted: the set is gone,
    /// replaced or being deleted (upstream's `canAdoptFunc`).
    #[error("can't adopt {0}: {1}")]
    Adoption(&'static str, String),
}

struct Ctx {
    client: kube::Client,
}

fn object_ref(set: &StatefulSet) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("StatefulSet".into()),
        name: set.metadata.name.clone(),
        namespace: set.metadata.namespace.clone(),
        uid: set.metadata.uid.clone(),
        resource_version: set.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = set_name(&set);
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let sel_json = serde_json::to_value(&spec.selector).unwrap_or_default();
    let label_selector =
        label_selector_from_json(&sel_json).map_err(|e| Error::Selector(e.to_string()))?;
    let selector = label_selector.to_string();

    // Revisions: the template as the update revision.
    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    adopt_orphan_revisions(client, &revs, &set, &selector).await?;
    let mut history = revisions::list(&revs, &selector, &uid).await?;
    let owner = revisions::Owner {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: name.clone(),
        uid: uid.clone(),
        labels: spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
    };
    let data = revisions::patch_data(&spec.template);
    let mut collisions = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let update_rev = loop {
        let hash = revisions::hash(&data, Some(collisions));
        match revisions::ensure(&revs, &owner, &mut history, &data, &hash).await {
            Ok(r) => break r,
            Err(revisions::Error::Collision(n)) if collisions < 100 => {
                debug!(statefulset = %format!("{ns}/{name}"), revision = %n, "revision hash collision");
                collisions += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let update = Revision {
        name: update_rev.metadata.name.clone().unwrap_or_default(),
        template: spec.template.clone(),
    };
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .and_then(|c| {
            history
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(c))
        })
        .and_then(|r| {
            Some(Revision {
                name: r.metadata.name.clone()?,
                template: revisions::template_of(r)?,
            })
        })
        .unwrap_or_else(|| update.clone());

    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Every pod of the namespace: owned ones that stopped matching the
    // selector are released, matching orphans adopted.
    let in_namespace = pods_api.list(&ListParams::default()).await?.items;
    let pods = claim_pods(client, &set, &label_selector, in_namespace).await?;
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claims = if spec
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        Vec::new()
    } else {
        claims_api.list(&ListParams::default()).await?.items
    };

    let mut plan = plan(&set, &pods, &claims, &current, &update, Timestamp::now());
    // Upstream reports it from the first sync on, zero included.
    plan.status.collision_count = Some(collisions);
    let oref = object_ref(&set);
    for step in &plan.steps {
        match step {
            Step::CreateClaim(c) => {
                let cname = c.metadata.name.clone().unwrap_or_default();
                match claims_api.create(&PostParams::default(), c).await {
                    Ok(_) => {
                        crate::replicaset::record_event(
                            client,
                            COMPONENT,
                            &oref,
                            "Normal",
                            "SuccessfulCreate",
                            format!("create Claim {cname} in StatefulSet {name} success"),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(kube::Error::Api(s)) => {
                        crate::replicaset::record_event(
                            client,
                            COMPONENT,
                            &oref,
                            "Warning",
                            "FailedCreate",
                            format!(
                                "create Claim {cname} for StatefulSet {name} failed error: {}",
                                s.message
                            ),
                        )
                        .await;
                        return Err(kube::Error::Api(s).into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Step::SetClaimOwners(cname, refs) => {
                match crate::update::merge_into(
                    &claims_api,
                    cname,
                    &json!({"metadata": {"ownerReferences": refs}}),
                )
                .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Step::CreatePod(p) => {
                let pname = p.metadata.name.clone().unwrap_or_default();
                match pods_api.create(&PostParams::default(), p).await {
                    Ok(_) => {
                        crate::replicaset::record_event(
                            client,
                            COMPONENT,
                            &oref,
                            "Normal",
                            "SuccessfulCreate",
                            format!("create Pod {pname} in StatefulSet {name} successful"),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("terminat") => {
                        debug!(statefulset = %format!("{ns}/{name}"), "pod creation forbidden: {}", s.message);
                    }
                    Err(kube::Error::Api(s)) => {
                        crate::replicaset::record_event(
                            client,
                            COMPONENT,
                            &oref,
                            "Warning",
                            "FailedCreate",
                            format!(
                                "create Pod {pname} in StatefulSet {name} failed error: {}",
                                s.message
                            ),
                        )
                        .await;
                        return Err(kube::Error::Api(s).into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Step::DeletePod(pname, puid) => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(puid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match pods_api.delete(pname, &dp).await {
                    Ok(_) => {
                        crate::replicaset::record_event(
                            client,
                            COMPONENT,
                            &oref,
                            "Normal",
                            "SuccessfulDelete",
                            format!("delete Pod {pname} in StatefulSet {name} successful"),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    // History beyond revisionHistoryLimit, keeping what pods still use.
    let mut live: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| revision_of(p).map(str::to_string))
        .collect();
    live.insert(update.name.clone());
    live.insert(current.name.clone());
    if let Some(c) = &plan.status.current_revision {
        live.insert(c.clone());
    }
    revisions::truncate(
        &revs,
        &history,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    let current_status = set.status.clone().unwrap_or_default();
    if current_status != plan.status {
        let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let status = serde_json::to_value(&plan.status).unwrap_or_default();
        match crate::update::merge_into_status(&api, &name, &json!({"status": status})).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match plan.recheck_after {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Whether `set` would adopt the orphan `pod` (selector and name).
fn adopts(set: &StatefulSet, pod: &Pod) -> bool {
    let Some(spec) = set.spec.as_ref() else {
        return false;
    };
    let empty = BTreeMap::new();
    serde_json::to_value(&spec.selector)
        .ok()
        .and_then(|v| label_selector_from_json(&v).ok())
        .is_some_and(|sel| sel.matches(pod.metadata.labels.as_ref().unwrap_or(&empty)))
        && is_member(
            &set_name(set),
            pod.metadata.name.as_deref().unwrap_or_default(),
        )
}

fn error_policy(set: Arc<StatefulSet>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(statefulset = ?set.metadata.name, namespace = ?set.metadata.namespace, error = %e, "statefulset reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Reconciles running at once (upstream's `--concurrent-statefulset-syncs`).
const WORKERS: u16 = 5;

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let sets: Api<StatefulSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    info!("statefulset controller started");
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    // A pod wakes the set that controls it, or, an orphan, every set of
    // its namespace that would adopt it (upstream's `getPodStatefulSets`).
    controller
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            match controller_of(&pod.metadata) {
                Some(r) => (r.kind == "StatefulSet" && r.api_version.starts_with("apps/"))
                    .then(|| ObjectRef::new(&r.name).within(&ns))
                    .into_iter()
                    .collect::<Vec<_>>(),
                None => store
                    .state()
                    .iter()
                    .filter(|set| set.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .filter(|set| adopts(set, &pod))
                    .map(|set| ObjectRef::from_obj(set.as_ref()))
                    .collect(),
            }
        })
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(WORKERS))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests;
