//! Garbage collection by ownerReferences, as kube-controller-manager's
//! garbage collector.
//!
//! The loop keeps reflectors over the [`WATCHED`] kinds (pods, replicasets,
//! deployments, daemonsets, jobs, configmaps, secrets) and every other
//! served resource discovery lists as listable, watchable and deletable
//! (less [`SKIPPED`]: events, leases), indexes them by uid
//! and, on every change (and every [`RESYNC`]), makes one pass:
//!
//! * **orphan** — an owner with a `deletionTimestamp` and the `orphan`
//!   finalizer: the ownerReferences to it are removed from its dependents;
//!   once no dependent refers to it any more, the finalizer is removed (and
//!   the apiserver deletes the owner, its finalizers being empty);
//! * **foreground** — an owner with a `deletionTimestamp` and the
//!   `foregroundDeletion` finalizer: each dependent not already being
//!   deleted is deleted — with `propagationPolicy: Foreground` when it has
//!   dependents of its own (so it waits for them), else `Background` —
//!   except that a dependent with another live
//!   owner only loses its reference to this one; once no dependent with
//!   `blockOwnerDeletion: true` remains, the finalizer is removed. The
//!   others are then collected in the background like any orphan;
//! * **background** — an object not being deleted whose owners are all
//!   absent is deleted (`propagationPolicy: Background`, its uid as
//!   precondition). When only some owners are absent, the dangling
//!   references are removed instead. "Absent" is never decided from the
//!   cache alone: an owner not in the index is looked up live (by its
//!   apiVersion/kind, resolved through discovery, and name) and counts as
//!   absent only on a 404 or a different uid — a just-created owner the
//!   watch has not delivered yet is safe, and so are owners of kinds that
//!   are not watched.
//!
//! Every write carries the resourceVersion (patches) or uid (deletes) it
//! was decided on; conflicts and 404s are dropped and the next pass
//! decides again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    Preconditions, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::discovery::{ApiCapabilities, Scope};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The finalizer asking for the dependents to be orphaned.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer asking for the dependents to be deleted first.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// How often a full pass runs without any change.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How long a live lookup that found an owner is trusted.
const ALIVE_TTL: Duration = Duration::from_secs(30);

/// The watched kinds.
pub fn watched() -> Vec<(ApiResource, bool)> {
    vec![
        (ApiResource::erase::<Pod>(&()), true),
        (ApiResource::erase::<ReplicaSet>(&()), true),
        (ApiResource::erase::<Deployment>(&()), true),
        (ApiResource::erase::<DaemonSet>(&()), true),
        (ApiResource::erase::<Job>(&()), true),
        (ApiResource::erase::<ConfigMap>(&()), true),
        (ApiResource::erase::<Secret>(&()), true),
    ]
}

/// Resources never watched: high churn, never owners or dependents in
/// practice (the apiserver would still add a GC finalizer to one deleted
/// with `propagationPolicy` Foreground/Orphan; nothing would remove it).
pub const SKIPPED: [&str; 2] = ["events", "leases"];

/// The kinds to watch: every served resource that can be listed, watched
/// and deleted (preferred version of each group, as discovery gives it),
/// less [`SKIPPED`]; always including [`watched`]. Falls back to
/// [`watched`] alone when discovery fails.
async fn kinds_to_watch(client: &kube::Client) -> Vec<(ApiResource, bool)> {
    use kube::discovery::verbs;
    let mut kinds = watched();
    match kube::discovery::Discovery::new(client.clone()).run().await {
        Ok(d) => {
            for group in d.groups() {
                for (ar, caps) in group.recommended_resources() {
                    let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                        .iter()
                        .all(|v| caps.supports_operation(v));
                    let known = kinds
                        .iter()
                        .any(|(k, _)| k.group == ar.group && k.plural == ar.plural);
                    if usable && !known && !SKIPPED.contains(&ar.plural.as_str()) {
                        kinds.push((ar, caps.scope == Scope::Namespaced));
                    }
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "discovery failed; collecting only the built-in workload kinds")
        }
    }
    debug!(kinds = ?kinds.iter().map(|(k, _)| k.plural.as_str()).collect::<Vec<_>>(), "garbage collector kinds");
    kinds
}

/// Names of the always-watched kinds, for documentation and logs.
pub const WATCHED: [&str; 7] = [
    "pods",
    "replicasets",
    "deployments",
    "daemonsets",
    "jobs",
    "configmaps",
    "secrets",
];

/// One object of the index.
#[derive(Clone)]
struct Entry {
    kind: usize,
    obj: Arc<PartialObjectMeta<DynamicObject>>,
    /// The object's kind (metadata-only objects arrive typed as
    /// `PartialObjectMeta`).
    kind_name: Arc<str>,
}

impl Entry {
    fn ns(&self) -> Option<&str> {
        self.obj.metadata.namespace.as_deref()
    }
    fn name(&self) -> &str {
        self.obj.metadata.name.as_deref().unwrap_or("")
    }
    fn uid(&self) -> &str {
        self.obj.metadata.uid.as_deref().unwrap_or("")
    }
    fn deleting(&self) -> bool {
        self.obj.metadata.deletion_timestamp.is_some()
    }
    fn has_finalizer(&self, f: &str) -> bool {
        self.obj
            .metadata
            .finalizers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|x| x == f)
    }
    fn owners(&self) -> &[OwnerReference] {
        self.obj
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
    }
    fn who(&self) -> String {
        match self.ns() {
            Some(ns) => format!("{}/{ns}/{}", self.kind_name, self.name()),
            None => self.name().to_string(),
        }
    }
}

/// What the pass decided about one owner reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not waiting for its dependents.
    Alive,
    /// The owner exists, is being deleted in the foreground.
    DeletingForeground,
    /// The owner is gone (404 or another uid under that name).
    Absent,
    /// Could not tell (lookup failed, unknown kind).
    Unknown,
}

/// What to do with an object given the states of its owner references
/// (in order), upstream's `attemptToDeleteItem` in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Keep,
    /// Delete it (background).
    Delete,
    /// Remove the references with these uids.
    RemoveRefs(Vec<String>),
}

/// Decides for an object not being deleted with the given owners.
pub fn decide(owners: &[(String, OwnerState)]) -> Decision {
    if owners.is_empty() || owners.iter().any(|(_, s)| *s == OwnerState::Unknown) {
        return Decision::Keep;
    }
    let absent: Vec<String> = owners
        .iter()
        .filter(|(_, s)| *s == OwnerState::Absent)
        .map(|(u, _)| u.clone())
        .collect();
    if absent.len() == owners.len() {
        return Decision::Delete;
    }
    if !absent.is_empty() {
        return Decision::RemoveRefs(absent);
    }
    Decision::Keep
}

struct Gc {
    client: kube::Client,
    kinds: Vec<(ApiResource, bool)>,
    stores: Vec<Store<PartialObjectMeta<DynamicObject>>>,
    /// GVK -> resource and whether namespaced (discovery results).
    resolved: HashMap<(String, String), Option<(ApiResource, bool)>>,
    /// Owner uids found alive by a live lookup, and when.
    alive: HashMap<String, Instant>,
}

/// The shortest rest between two passes.
const MIN_REST: Duration = Duration::from_millis(100);
/// The longest rest between two passes.
const MAX_REST: Duration = Duration::from_secs(5);

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let kinds = tokio::select! {
        _ = stop.cancelled() => return,
        k = kinds_to_watch(&client) => k,
    };
    let mut stores = Vec::new();
    for (ar, _) in &kinds {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), ar);
        let writer = reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(ar.clone());
        let reader = writer.as_reader();
        // Metadata only: the collector needs owners, uids and finalizers,
        // and decoding whole objects (ConfigMap data, Pod specs) per event
        // was a share of the server's CPU under write load.
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        );
        let notify = notify.clone();
        let stop = stop.clone();
        let plural = ar.plural.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => notify.notify_one(),
                    Err(e) => debug!(resource = %plural, error = %e, "watch failed; retrying"),
                }
            }
        });
        stores.push(reader);
    }
    for s in &stores {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = s.wait_until_ready() => {}
        }
    }
    info!("garbage collector started");
    let mut gc = Gc {
        client,
        kinds,
        stores,
        resolved: HashMap::new(),
        alive: HashMap::new(),
    };
    loop {
        let started = Instant::now();
        gc.pass().await;
        // A pass looks at every object, so running one per watch event
        // made the collector most of the server's CPU under write load
        // (bench/api.sh). Events that arrive while it rests are served
        // by one pass: the rest grows with the pass's own cost, which
        // keeps the collector to about a fifth of a core.
        let rest = (started.elapsed() * 4).clamp(MIN_REST, MAX_REST);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rest) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn has_block(dep: &Entry, owner_uid: &str) -> bool {
    dep.owners()
        .iter()
        .any(|r| r.uid == owner_uid && r.block_owner_deletion == Some(true))
}

impl Gc {
    fn api_for(&self, kind: usize, ns: Option<&str>) -> Api<DynamicObject> {
        let ar = &self.kinds[kind].0;
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    async fn resolve(&mut self, api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.resolved.get(&key) {
            return r.clone();
        }
        if let Some((ar, namespaced)) = self
            .kinds
            .iter()
            .find(|(ar, _)| ar.api_version == api_version && ar.kind == kind)
        {
            let r = Some((ar.clone(), *namespaced));
            self.resolved.insert(key, r.clone());
            return r;
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((ar, caps)) => {
                let caps: ApiCapabilities = caps;
                let r = Some((ar, caps.scope == Scope::Namespaced));
                self.resolved.insert(key, r.clone());
                r
            }
            Err(kube::Error::Discovery(_)) => {
                // Not served: such an owner cannot exist.
                self.resolved.insert(key, None);
                None
            }
            Err(e) => {
                debug!(%api_version, %kind, error = %e, "discovery failed");
                None
            }
        }
    }

    /// Looks an owner up live.
    async fn lookup(&mut self, dep_ns: Option<&str>, r: &OwnerReference) -> OwnerState {
        if let Some(t) = self.alive.get(&r.uid)
            && t.elapsed() < ALIVE_TTL
        {
            return OwnerState::Alive;
        }
        let Some((ar, namespaced)) = self.resolve(&r.api_version, &r.kind).await else {
            // An unserved kind (after discovery said so) has no objects.
            let key = (r.api_version.clone(), r.kind.clone());
            return if self.resolved.get(&key).is_some_and(Option::is_none) {
                OwnerState::Absent
            } else {
                OwnerState::Unknown
            };
        };
        let api: Api<DynamicObject> = match (namespaced, dep_ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            // A cluster-scoped dependent cannot have a namespaced owner.
            (true, None) => return OwnerState::Absent,
            (false, _) => Api::all_with(self.client.clone(), &ar),
        };
        match api.get_opt(&r.name).await {
            Ok(Some(o)) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let fg = o.metadata.deletion_timestamp.is_some()
                    && o.metadata
                        .finalizers
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|f| f == FOREGROUND_FINALIZER);
                if fg {
                    OwnerState::DeletingForeground
                } else {
                    self.alive.insert(r.uid.clone(), Instant::now());
                    OwnerState::Alive
                }
            }
            Ok(_) => OwnerState::Absent,
            Err(e) => {
                debug!(owner = %r.name, error = %e, "owner lookup failed");
                OwnerState::Unknown
            }
        }
    }

    async fn pass(&mut self) {
        self.alive.retain(|_, t| t.elapsed() < ALIVE_TTL);
        let mut by_uid: HashMap<String, Entry> = HashMap::new();
        let mut dependents: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for (kind, store) in self.stores.iter().enumerate() {
            let kind_name: Arc<str> = Arc::from(self.kinds[kind].0.kind.as_str());
            for obj in store.state() {
                let e = Entry {
                    kind,
                    obj,
                    kind_name: kind_name.clone(),
                };
                for r in e.owners() {
                    dependents.entry(r.uid.clone()).or_default().push(e.clone());
                }
                by_uid.insert(e.uid().to_string(), e);
            }
        }
        // Owners being deleted with orphan / foreground finalizers.
        let deleting: Vec<Entry> = by_uid
            .values()
            .filter(|e| {
                e.deleting()
                    && (e.has_finalizer(ORPHAN_FINALIZER) || e.has_finalizer(FOREGROUND_FINALIZER))
            })
            .cloned()
            .collect();
        for owner in deleting {
            let deps = dependents.get(owner.uid()).cloned().unwrap_or_default();
            if owner.has_finalizer(ORPHAN_FINALIZER) {
                for dep in &deps {
                    self.remove_refs(dep, &[owner.uid().to_string()]).await;
                }
                if deps.is_empty() {
                    self.remove_finalizer(&owner, ORPHAN_FINALIZER).await;
                }
                continue;
            }
            let mut blocking = 0;
            for dep in &deps {
                if has_block(dep, owner.uid()) {
                    blocking += 1;
                }
                if dep.deleting() {
                    continue;
                }
                // Another owner that stays: only drop our reference.
                let mut other_alive = false;
                for r in dep.owners().iter().filter(|r| r.uid != owner.uid()) {
                    let st = match by_uid.get(&r.uid) {
                        Some(o) if o.deleting() && o.has_finalizer(FOREGROUND_FINALIZER) => {
                            OwnerState::DeletingForeground
                        }
                        Some(_) => OwnerState::Alive,
                        None => self.lookup(dep.ns(), r).await,
                    };
                    if st == OwnerState::Alive || st == OwnerState::Unknown {
                        other_alive = true;
                    }
                }
                if other_alive {
                    self.remove_refs(dep, &[owner.uid().to_string()]).await;
                } else {
                    // As upstream: Foreground only when the dependent has
                    // dependents of its own, else Background (no finalizer
                    // round trip for leaves).
                    let policy = if dependents.contains_key(dep.uid()) {
                        PropagationPolicy::Foreground
                    } else {
                        PropagationPolicy::Background
                    };
                    self.delete(dep, policy).await;
                }
            }
            if blocking == 0 {
                self.remove_finalizer(&owner, FOREGROUND_FINALIZER).await;
            }
        }
        // Dependents whose owners are gone.
        let candidates: Vec<Entry> = by_uid
            .values()
            .filter(|e| !e.deleting() && !e.owners().is_empty())
            .cloned()
            .collect();
        for dep in candidates {
            let mut states = Vec::new();
            for r in dep.owners() {
                let st = match by_uid.get(&r.uid) {
                    Some(o) if o.deleting() && o.has_finalizer(FOREGROUND_FINALIZER) => {
                        OwnerState::DeletingForeground
                    }
                    Some(_) => OwnerState::Alive,
                    None => self.lookup(dep.ns(), r).await,
                };
                states.push((r.uid.clone(), st));
            }
            match decide(&states) {
                Decision::Keep => {}
                Decision::Delete => {
                    info!(object = %dep.who(), "all owners are gone; deleting");
                    self.delete(&dep, PropagationPolicy::Background).await;
                }
                Decision::RemoveRefs(uids) => {
                    debug!(object = %dep.who(), ?uids, "removing dangling owner references");
                    self.remove_refs(&dep, &uids).await;
                }
            }
        }
    }

    async fn delete(&self, e: &Entry, policy: PropagationPolicy) {
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(e.uid().to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api_for(e.kind, e.ns()).delete(e.name(), &dp).await {
            Ok(_) => debug!(object = %e.who(), "deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(err) => warn!(object = %e.who(), error = %err, "garbage collection delete failed"),
        }
    }

    async fn remove_refs(&self, e: &Entry, uids: &[String]) {
        let kept: Vec<&OwnerReference> = e
            .owners()
            .iter()
            .filter(|r| !uids.contains(&r.uid))
            .collect();
        if kept.len() == e.owners().len() {
            return;
        }
        let refs = if kept.is_empty() {
            json!(null)
        } else {
            json!(kept)
        };
        let body = json!({"metadata": {
            "resourceVersion": e.obj.metadata.resource_version,
            "ownerReferences": refs,
        }});
        self.patch(e, &body).await;
    }

    async fn remove_finalizer(&self, e: &Entry, finalizer: &str) {
        let kept: Vec<&String> = e
            .obj
            .metadata
            .finalizers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        info!(object = %e.who(), %finalizer, "dependents handled; removing finalizer");
        let fins = if kept.is_empty() {
            json!(null)
        } else {
            json!(kept)
        };
        let body = json!({"metadata": {
            "resourceVersion": e.obj.metadata.resource_version,
            "finalizers": fins,
        }});
        self.patch(e, &body).await;
    }

    async fn patch(&self, e: &Entry, body: &serde_json::Value) {
        match self
            .api_for(e.kind, e.ns())
            .patch(e.name(), &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(err) => warn!(object = %e.who(), error = %err, "garbage collection patch failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use OwnerState::*;
        let s = |v: &[(&str, OwnerState)]| -> Vec<(String, OwnerState)> {
            v.iter().map(|(u, s)| (u.to_string(), *s)).collect()
        };
        assert_eq!(decide(&[]), Decision::Keep);
        assert_eq!(decide(&s(&[("a", Alive)])), Decision::Keep);
        assert_eq!(decide(&s(&[("a", Absent)])), Decision::Delete);
        assert_eq!(
            decide(&s(&[("a", Absent), ("b", Absent)])),
            Decision::Delete
        );
        assert_eq!(
            decide(&s(&[("a", Absent), ("b", Alive)])),
            Decision::RemoveRefs(vec!["a".into()])
        );
        assert_eq!(decide(&s(&[("a", Absent), ("b", Unknown)])), Decision::Keep);
        // An owner waiting in the foreground is handled by the owner side.
        assert_eq!(decide(&s(&[("a", DeletingForeground)])), Decision::Keep);
        assert_eq!(
            decide(&s(&[("a", DeletingForeground), ("b", Absent)])),
            Decision::RemoveRefs(vec!["b".into()])
        );
    }

    #[test]
    fn watched_kinds() {
        let w = watched();
        assert_eq!(w.len(), WATCHED.len());
        for ((ar, _), plural) in w.iter().zip(WATCHED) {
            assert_eq!(ar.plural, plural);
        }
    }
}
