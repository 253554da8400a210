//! Garbage collection by ownerReferences, as kube-controller-manager's
//! garbage collector.
//!
//! The loop keeps reflectors over the [`WATCHED`] kinds (pods, replicasets,
//! deployments, daemonsets, jobs, configmaps, secrets) and every other
//! served resource discovery lists as listable, watchable and deletable
//! (less [`SKIPPED`]: events, leases), indexes them by uid and by owner
//! (owner uid → dependents), and makes passes that apply the rules below.
//! A pass after changes examines only what they can affect: the changed
//! objects, the dependents of changed or deleted objects, and the deleting
//! owners named by any of those (see `Index::select`); every [`RESYNC`] a
//! pass rebuilds the index from the reflectors and examines everything,
//! as does the pass after a re-list (whose removals come without events).
//! Events are coalesced: the watch tasks only mark keys dirty, and the
//! loop rests between passes, so a burst of events is one pass. An
//! examination that could not conclude (an owner lookup or a write failed
//! with anything but 404/409, which no watch event will answer) is
//! repeated after a short delay.
//!
//! The rules:
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
//! was decided on; conflicts and 404s are dropped and the pass that the
//! object's watch event triggers decides again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
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
use kube::runtime::reflector::{self, ObjectRef, Store};
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

/// Where a watched object lives: its kind (an index into the watched
/// kinds), namespace and name — the reflector's key, without the
/// `ApiResource` an `ObjectRef` would clone per event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: usize,
    ns: Option<String>,
    name: String,
}

/// What the watch tasks report between two passes.
#[derive(Debug, Default)]
struct Dirty {
    /// Objects added, modified or deleted (the reflector has applied the
    /// event when its key lands here).
    keys: HashSet<Key>,
    /// Uids of deleted objects: an object created and deleted between two
    /// passes leaves no trace in the index, yet its dependents must be
    /// looked at.
    deleted: HashSet<String>,
    /// A reflector re-listed: its store was replaced wholesale, without
    /// per-object events.
    relisted: bool,
}

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
    fn key(&self) -> Key {
        Key {
            kind: self.kind,
            ns: self.obj.metadata.namespace.clone(),
            name: self.name().to_string(),
        }
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
    /// An owner being deleted whose dependents the collector must handle
    /// first (orphan or foreground).
    fn is_deleting_owner(&self) -> bool {
        self.deleting()
            && (self.has_finalizer(ORPHAN_FINALIZER) || self.has_finalizer(FOREGROUND_FINALIZER))
    }
    /// An object that may have to go (or lose references) with its owners.
    fn is_dependent(&self) -> bool {
        !self.deleting() && !self.owners().is_empty()
    }
    fn who(&self) -> String {
        match self.ns() {
            Some(ns) => format!("{}/{ns}/{}", self.kind_name, self.name()),
            None => self.name().to_string(),
        }
    }
}

/// The collector's picture of the watched objects: by uid, and who refers
/// to whom. Kept up to date from the watch events between full rebuilds,
/// so a pass costs what changed, not what exists.
#[derive(Default)]
struct Index {
    by_uid: HashMap<String, Entry>,
    by_key: HashMap<Key, String>,
    /// Owner uid -> uids of the objects with an ownerReference to it,
    /// whether or not the owner itself is indexed.
    dependents: HashMap<String, HashSet<String>>,
}

/// What the index saw change since the last pass.
#[derive(Debug, Default)]
struct Changes {
    /// Objects added, modified or removed.
    uids: HashSet<String>,
    /// Owners named by the old or the new version of a changed object: a
    /// dependent that dropped its reference (or went) is no longer listed
    /// under the owner, which must still hear of it.
    owners: HashSet<String>,
}

/// The objects one pass looks at.
#[derive(Debug, Default, PartialEq, Eq)]
struct Selection {
    /// Owners being deleted with the orphan or foreground finalizer.
    owners: BTreeSet<String>,
    /// Objects not being deleted that have owners.
    dependents: BTreeSet<String>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.dependents.is_empty()
    }
    fn extend(&mut self, other: Selection) {
        self.owners.extend(other.owners);
        self.dependents.extend(other.dependents);
    }
}

impl Index {
    fn insert(&mut self, e: Entry) {
        let uid = e.uid().to_string();
        for r in e.owners() {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.by_key.insert(e.key(), uid.clone());
        self.by_uid.insert(uid, e);
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let uid = self.by_key.remove(key)?;
        let e = self.by_uid.remove(&uid)?;
        for r in e.owners() {
            if let Some(deps) = self.dependents.get_mut(&r.uid) {
                deps.remove(&uid);
                if deps.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
        Some(e)
    }

    /// Replaces what the index holds under `key` with `current` (`None`:
    /// the object is gone), noting both versions in `changes`.
    fn update(&mut self, key: &Key, current: Option<Entry>, changes: &mut Changes) {
        for e in self.remove(key).into_iter().chain(current.clone()) {
            changes.uids.insert(e.uid().to_string());
            changes
                .owners
                .extend(e.owners().iter().map(|r| r.uid.clone()));
        }
        if let Some(e) = current {
            self.insert(e);
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<Entry> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.by_uid.get(d).cloned())
            .collect()
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.dependents.contains_key(uid)
    }

    /// Every object a full pass looks at.
    fn everything(&self) -> Selection {
        let mut sel = Selection::default();
        for (uid, e) in &self.by_uid {
            if e.is_deleting_owner() {
                sel.owners.insert(uid.clone());
            }
            if e.is_dependent() {
                sel.dependents.insert(uid.clone());
            }
        }
        sel
    }

    /// The objects whose decision `changes` may have changed.
    ///
    /// A dependent's decision depends on its own references and on the
    /// state of each owner; so the changed objects and the dependents of
    /// changed or removed ones are looked at. A deleting owner's handling
    /// depends on itself, on its dependents and on the *other* owners of
    /// those dependents (a foreground owner only drops its reference from a
    /// dependent another owner keeps); so the changed owners, the owners
    /// named by a changed object, and the owners of every dependent looked
    /// at are handled again.
    fn select(&self, changes: &Changes) -> Selection {
        let mut touched: HashSet<&str> = changes.uids.iter().map(String::as_str).collect();
        for uid in &changes.uids {
            if let Some(deps) = self.dependents.get(uid) {
                touched.extend(deps.iter().map(String::as_str));
            }
        }
        let mut owners: HashSet<&str> = changes
            .uids
            .iter()
            .chain(&changes.owners)
            .map(String::as_str)
            .collect();
        let mut sel = Selection::default();
        for uid in touched {
            let Some(e) = self.by_uid.get(uid) else {
                continue;
            };
            owners.extend(e.owners().iter().map(|r| r.uid.as_str()));
            if e.is_dependent() {
                sel.dependents.insert(uid.to_string());
            }
        }
        for uid in owners {
            if self.by_uid.get(uid).is_some_and(Entry::is_deleting_owner) {
                sel.owners.insert(uid.to_string());
            }
        }
        sel
    }

    /// The state of the owner `r` as far as the index can tell; `None`
    /// when it is not indexed (and must be looked up live).
    fn owner_state(&self, r: &OwnerReference) -> Option<OwnerState> {
        let o = self.by_uid.get(&r.uid)?;
        Some(if o.deleting() && o.has_finalizer(FOREGROUND_FINALIZER) {
            OwnerState::DeletingForeground
        } else {
            OwnerState::Alive
        })
    }
}

struct Gc {
    client: kube::Client,
    kinds: Vec<(ApiResource, bool)>,
    kind_names: Vec<Arc<str>>,
    stores: Vec<Store<PartialObjectMeta<DynamicObject>>>,
    dirty: Arc<Mutex<Dirty>>,
    index: Index,
    /// Objects whose last examination was inconclusive (an owner lookup or
    /// a write failed without a 404/409, so no watch event will bring them
    /// back), examined again once `retry_due` has come.
    retry: Selection,
    retry_due: Option<Instant>,
    /// GVK -> resource and whether namespaced (discovery results).
    resolved: HashMap<(String, String), Option<(ApiResource, bool)>>,
    /// Owner uids found alive by a live lookup, and when.
    alive: HashMap<String, Instant>,
}

/// The shortest rest between two passes.
const MIN_REST: Duration = Duration::from_millis(100);
/// The longest rest between two passes.
const MAX_REST: Duration = Duration::from_secs(5);
/// How long an inconclusive examination waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let dirty = Arc::new(Mutex::new(Dirty::default()));
    let kinds = tokio::select! {
        _ = stop.cancelled() => return,
        k = kinds_to_watch(&client) => k,
    };
    let mut stores = Vec::new();
    for (kind, (ar, _)) in kinds.iter().enumerate() {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), ar);
        let writer = reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(ar.clone());
        let reader = writer.as_reader();
        // Metadata only: the collector needs owners, uids and finalizers,
        // and decoding whole objects (ConfigMap data, Pod specs) per event
        // was a share of the server's CPU under write load. Lists come
        // from the watch cache: "absent" is never decided from the cache.
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().any_semantic()).default_backoff(),
        );
        let notify = notify.clone();
        let dirty = dirty.clone();
        let stop = stop.clone();
        let plural = ar.plural.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
            while let Some(ev) = stream.next().await {
                let key = |o: &PartialObjectMeta<DynamicObject>| Key {
                    kind,
                    ns: o.metadata.namespace.clone(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                };
                match ev {
                    Ok(watcher::Event::Apply(o)) => {
                        lock(&dirty).keys.insert(key(&o));
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        let mut d = lock(&dirty);
                        d.keys.insert(key(&o));
                        d.deleted.extend(o.metadata.uid.clone());
                    }
                    Ok(watcher::Event::InitDone) => lock(&dirty).relisted = true,
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                    Err(e) => {
                        debug!(resource = %plural, error = %e, "watch failed; retrying");
                        continue;
                    }
                }
                notify.notify_one();
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
    let kind_names = kinds
        .iter()
        .map(|(ar, _)| Arc::from(ar.kind.as_str()))
        .collect();
    let mut gc = Gc {
        client,
        kinds,
        kind_names,
        stores,
        dirty,
        index: Index::default(),
        retry: Selection::default(),
        retry_due: None,
        resolved: HashMap::new(),
        alive: HashMap::new(),
    };
    let mut last_full: Option<Instant> = None;
    let mut rest = Duration::ZERO;
    loop {
        let mut wait = RESYNC.saturating_sub(last_full.map_or(RESYNC, |t| t.elapsed()));
        if let Some(due) = gc.retry_due {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // The rest comes between the first event and the pass, so the
        // events that follow it are served by the same pass (a burst of a
        // thousand is one pass, not a thousand); it grows with the last
        // pass's cost, which keeps the collector to about a fifth of a core
        // even when passes are large.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rest) => {}
        }
        let started = Instant::now();
        let full = last_full.is_none_or(|t| t.elapsed() >= RESYNC);
        gc.pass(full).await;
        if full {
            last_full = Some(started);
        }
        rest = (started.elapsed() * 4).clamp(MIN_REST, MAX_REST);
    }
}

/// The dirty set's lock; a panic while holding it leaves plain data, so a
/// poisoned lock is still usable.
fn lock(dirty: &Mutex<Dirty>) -> std::sync::MutexGuard<'_, Dirty> {
    dirty.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The state of owner `r` of `dep`: from the index when it is there,
    /// else live.
    async fn owner_state(&mut self, dep: &Entry, r: &OwnerReference) -> OwnerState {
        match self.index.owner_state(r) {
            Some(st) => st,
            None => self.lookup(dep.ns(), r).await,
        }
    }

    fn entry(&self, kind: usize, obj: Arc<PartialObjectMeta<DynamicObject>>) -> Entry {
        Entry {
            kind,
            obj,
            kind_name: self.kind_names[kind].clone(),
        }
    }

    /// Brings the index up to date and picks what to examine: everything
    /// on a full pass (and after a re-list, whose removals came without
    /// events), else what the watch events since the last pass touched.
    fn prepare(&mut self, full: bool) -> Selection {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let mut sel = if full || dirty.relisted {
            let mut index = Index::default();
            for (kind, store) in self.stores.iter().enumerate() {
                for obj in store.state() {
                    index.insert(self.entry(kind, obj));
                }
            }
            self.index = index;
            self.index.everything()
        } else {
            let mut changes = Changes::default();
            for key in &dirty.keys {
                let ar = &self.kinds[key.kind].0;
                let mut r = ObjectRef::new_with(&key.name, ar.clone());
                if let Some(ns) = &key.ns {
                    r = r.within(ns);
                }
                let current = self.stores[key.kind]
                    .get(&r)
                    .map(|obj| self.entry(key.kind, obj));
                self.index.update(key, current, &mut changes);
            }
            changes.uids.extend(dirty.deleted);
            // A removed owner found alive by an earlier lookup (before its
            // watch event) must not stay "alive" for the rest of the TTL.
            for uid in &changes.uids {
                if !self.index.by_uid.contains_key(uid) {
                    self.alive.remove(uid);
                }
            }
            self.index.select(&changes)
        };
        if self.retry_due.is_some_and(|d| d <= Instant::now()) {
            sel.extend(std::mem::take(&mut self.retry));
            self.retry_due = None;
        }
        sel
    }

    fn retry_later(&mut self, owner: Option<&str>, dependent: Option<&str>) {
        self.retry.owners.extend(owner.map(str::to_string));
        self.retry.dependents.extend(dependent.map(str::to_string));
        self.retry_due.get_or_insert_with(|| Instant::now() + RETRY);
    }

    async fn pass(&mut self, full: bool) {
        self.alive.retain(|_, t| t.elapsed() < ALIVE_TTL);
        let sel = self.prepare(full);
        if sel.is_empty() {
            return;
        }
        debug!(
            full,
            owners = sel.owners.len(),
            dependents = sel.dependents.len(),
            "garbage collection pass"
        );
        // Owners being deleted with orphan / foreground finalizers.
        for uid in &sel.owners {
            let Some(owner) = self.index.by_uid.get(uid).cloned() else {
                continue;
            };
            if owner.is_deleting_owner() && !self.handle_owner(&owner).await {
                self.retry_later(Some(uid), None);
            }
        }
        // Dependents whose owners are gone.
        for uid in &sel.dependents {
            let Some(dep) = self.index.by_uid.get(uid).cloned() else {
                continue;
            };
            if dep.is_dependent() && !self.handle_dependent(&dep).await {
                self.retry_later(None, Some(uid));
            }
        }
    }

    /// Handles an owner being deleted with the orphan or foreground
    /// finalizer; false when something must be tried again.
    async fn handle_owner(&mut self, owner: &Entry) -> bool {
        let deps = self.index.dependents_of(owner.uid());
        let mut settled = true;
        if owner.has_finalizer(ORPHAN_FINALIZER) {
            for dep in &deps {
                settled &= self.remove_refs(dep, &[owner.uid().to_string()]).await;
            }
            if deps.is_empty() {
                settled &= self.remove_finalizer(owner, ORPHAN_FINALIZER).await;
            }
            return settled;
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
                let st = self.owner_state(dep, r).await;
                if st == OwnerState::Alive || st == OwnerState::Unknown {
                    other_alive = true;
                }
            }
            settled &= if other_alive {
                self.remove_refs(dep, &[owner.uid().to_string()]).await
            } else {
                // As upstream: Foreground only when the dependent has
                // dependents of its own, else Background (no finalizer
                // round trip for leaves).
                let policy = if self.index.has_dependents(dep.uid()) {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                };
                self.delete(dep, policy).await
            };
        }
        if blocking == 0 {
            settled &= self.remove_finalizer(owner, FOREGROUND_FINALIZER).await;
        }
        settled
    }

    /// Collects an object whose owners are gone (or drops the references
    /// to the gone ones); false when something must be tried again.
    async fn handle_dependent(&mut self, dep: &Entry) -> bool {
        let mut states = Vec::new();
        for r in dep.owners() {
            let st = self.owner_state(dep, r).await;
            states.push((r.uid.clone(), st));
        }
        let unknown = states.iter().any(|(_, s)| *s == OwnerState::Unknown);
        let settled = match decide(&states) {
            Decision::Keep => true,
            Decision::Delete => {
                info!(object = %dep.who(), "all owners are gone; deleting");
                self.delete(dep, PropagationPolicy::Background).await
            }
            Decision::RemoveRefs(uids) => {
                debug!(object = %dep.who(), ?uids, "removing dangling owner references");
                self.remove_refs(dep, &uids).await
            }
        };
        settled && !unknown
    }

    /// Deletes `e` on the uid it was decided on; false on a failure that
    /// no watch event will answer (404 and 409 will).
    async fn delete(&self, e: &Entry, policy: PropagationPolicy) -> bool {
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
            Err(err) => {
                warn!(object = %e.who(), error = %err, "garbage collection delete failed");
                return false;
            }
        }
        true
    }

    async fn remove_refs(&self, e: &Entry, uids: &[String]) -> bool {
        let kept: Vec<&OwnerReference> = e
            .owners()
            .iter()
            .filter(|r| !uids.contains(&r.uid))
            .collect();
        if kept.len() == e.owners().len() {
            return true;
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
        self.patch(e, &body).await
    }

    async fn remove_finalizer(&self, e: &Entry, finalizer: &str) -> bool {
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
        self.patch(e, &body).await
    }

    /// Patches `e`; false as [`Gc::delete`].
    async fn patch(&self, e: &Entry, body: &serde_json::Value) -> bool {
        match self
            .api_for(e.kind, e.ns())
            .patch(e.name(), &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
            Err(err) => {
                warn!(object = %e.who(), error = %err, "garbage collection patch failed");
                false
            }
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

    /// An indexed object of kind 0 named after its uid, with owner
    /// references to `owners` (uid, blockOwnerDeletion) and, when
    /// `deleting`, a deletionTimestamp and those finalizers.
    fn entry(uid: &str, owners: &[(&str, bool)], deleting: Option<&[&str]>) -> Entry {
        let refs: Vec<serde_json::Value> = owners
            .iter()
            .map(|(u, block)| {
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": u, "uid": u,
                       "blockOwnerDeletion": block})
            })
            .collect();
        let mut meta = json!({"name": uid, "namespace": "ns", "uid": uid, "ownerReferences": refs});
        if let Some(f) = deleting {
            meta["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            meta["finalizers"] = json!(f);
        }
        Entry {
            kind: 0,
            obj: Arc::new(serde_json::from_value(json!({"metadata": meta})).unwrap()),
            kind_name: Arc::from("ConfigMap"),
        }
    }

    fn index(entries: Vec<Entry>) -> Index {
        let mut i = Index::default();
        for e in entries {
            i.insert(e);
        }
        i
    }

    /// Applies `current` (or the removal of `uid` when `None`) the way a
    /// pass applies a dirty key, and returns what the pass would examine.
    fn change(i: &mut Index, uid: &str, current: Option<Entry>) -> Selection {
        let key = Key {
            kind: 0,
            ns: Some("ns".into()),
            name: uid.into(),
        };
        let mut changes = Changes::default();
        i.update(&key, current, &mut changes);
        i.select(&changes)
    }

    fn set(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|u| u.to_string()).collect()
    }

    fn sel(owners: &[&str], dependents: &[&str]) -> Selection {
        Selection {
            owners: set(owners),
            dependents: set(dependents),
        }
    }

    fn cluster() -> Index {
        index(vec![
            entry("rs1", &[], None),
            entry("p1", &[("rs1", true)], None),
            entry("p2", &[("rs1", true)], None),
            entry("rs2", &[], None),
            entry("p3", &[("rs2", true)], None),
            entry("cm", &[], None),
        ])
    }

    #[test]
    fn a_changed_dependent_is_examined_alone() {
        let mut i = cluster();
        let s = change(&mut i, "p1", Some(entry("p1", &[("rs1", true)], None)));
        assert_eq!(s, sel(&[], &["p1"]));
        // An object without owners, changing, is nobody's business.
        assert!(change(&mut i, "cm", Some(entry("cm", &[], None))).is_empty());
    }

    #[test]
    fn a_removed_owner_selects_its_dependents_only() {
        let mut i = cluster();
        assert_eq!(change(&mut i, "rs1", None), sel(&[], &["p1", "p2"]));
        // The index still knows who referred to it (the owner need not be
        // indexed for its dependents to be found).
        assert_eq!(i.dependents_of("rs1").len(), 2);
        assert!(!i.by_uid.contains_key("rs1"));
    }

    #[test]
    fn an_owner_starting_deletion_is_handled_with_its_dependents() {
        let mut i = cluster();
        let s = change(
            &mut i,
            "rs1",
            Some(entry("rs1", &[], Some(&[FOREGROUND_FINALIZER]))),
        );
        assert_eq!(s, sel(&["rs1"], &["p1", "p2"]));
        // An owner being deleted without GC finalizers is not handled.
        let s = change(&mut i, "rs2", Some(entry("rs2", &[], Some(&["other"]))));
        assert_eq!(s, sel(&[], &["p3"]));
    }

    #[test]
    fn a_deleting_owner_hears_of_dependents_that_go_or_let_go() {
        let mut i = cluster();
        i.insert(entry("rs1", &[], Some(&[ORPHAN_FINALIZER])));
        // A dependent gone: the owner may now drop its finalizer.
        assert_eq!(change(&mut i, "p1", None), sel(&["rs1"], &[]));
        // A dependent that dropped its reference is no longer listed under
        // the owner, which must hear of it all the same.
        assert_eq!(
            change(&mut i, "p2", Some(entry("p2", &[], None))),
            sel(&["rs1"], &[])
        );
        assert!(i.dependents_of("rs1").is_empty());
        assert!(!i.has_dependents("rs1"));
        // A dependent being deleted is not collected again, but its
        // foreground owner still counts it.
        i.insert(entry("rs2", &[], Some(&[FOREGROUND_FINALIZER])));
        let s = change(
            &mut i,
            "p3",
            Some(entry("p3", &[("rs2", true)], Some(&["hold"]))),
        );
        assert_eq!(s, sel(&["rs2"], &[]));
    }

    #[test]
    fn another_owner_changing_reselects_a_foreground_owner() {
        // p has a foreground owner and a second owner: whether the first
        // deletes p or only lets go depends on the second.
        let mut i = index(vec![
            entry("fg", &[], Some(&[FOREGROUND_FINALIZER])),
            entry("keeper", &[], None),
            entry("p", &[("fg", true), ("keeper", false)], None),
            entry("q", &[("keeper", false)], None),
            entry("unrelated", &[("other", false)], None),
        ]);
        assert_eq!(change(&mut i, "keeper", None), sel(&["fg"], &["p", "q"]));
    }

    #[test]
    fn a_name_reused_by_a_new_object_reports_both_uids() {
        let mut i = cluster();
        // rs1 deleted and re-created under the same key between two
        // passes: the old uid's dependents are looked at.
        let key = Key {
            kind: 0,
            ns: Some("ns".into()),
            name: "rs1".into(),
        };
        let mut changes = Changes::default();
        let mut reborn = entry("rs1-new", &[], None);
        Arc::get_mut(&mut reborn.obj).unwrap().metadata.name = Some("rs1".into());
        i.update(&key, Some(reborn), &mut changes);
        assert_eq!(changes.uids, ["rs1", "rs1-new"].map(String::from).into());
        assert_eq!(i.select(&changes), sel(&[], &["p1", "p2"]));
        assert_eq!(i.by_key.get(&key).map(String::as_str), Some("rs1-new"));
    }

    #[test]
    fn the_index_forgets_what_is_removed() {
        let mut i = cluster();
        // Re-applying the same version changes nothing in the index.
        let before = (i.by_uid.len(), i.dependents_of("rs1").len());
        change(&mut i, "p1", Some(entry("p1", &[("rs1", true)], None)));
        assert_eq!((i.by_uid.len(), i.dependents_of("rs1").len()), before);
        for uid in ["rs1", "p1", "p2", "rs2", "p3", "cm"] {
            change(&mut i, uid, None);
        }
        assert!(i.by_uid.is_empty() && i.by_key.is_empty() && i.dependents.is_empty());
    }

    #[test]
    fn a_full_pass_examines_everything() {
        let mut i = cluster();
        i.insert(entry("rs2", &[], Some(&[FOREGROUND_FINALIZER])));
        i.insert(entry("p3", &[("rs2", true)], Some(&[])));
        assert_eq!(i.everything(), sel(&["rs2"], &["p1", "p2"]));
    }

    #[test]
    fn owner_states_from_the_index() {
        let i = index(vec![
            entry("alive", &[], None),
            entry("orphaning", &[], Some(&[ORPHAN_FINALIZER])),
            entry("fg", &[], Some(&[FOREGROUND_FINALIZER])),
        ]);
        let r = |uid: &str| OwnerReference {
            uid: uid.into(),
            ..OwnerReference::default()
        };
        assert_eq!(i.owner_state(&r("alive")), Some(OwnerState::Alive));
        assert_eq!(i.owner_state(&r("orphaning")), Some(OwnerState::Alive));
        assert_eq!(
            i.owner_state(&r("fg")),
            Some(OwnerState::DeletingForeground)
        );
        // Not indexed: looked up live, never taken as absent.
        assert_eq!(i.owner_state(&r("gone")), None);
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
