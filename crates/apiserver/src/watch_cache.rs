//! The watch cache: one etcd watch per resource type per apiserver, fanned
//! out to every client watch of that type.
//!
//! Without it each client watch is its own etcd watch, and every event is
//! decoded once per watcher; 2,000 nodes watching their pods would be
//! 2,000 etcd watches. Here a resource's cache lists the whole type once,
//! then follows one etcd watch: it keeps the current objects (decoded once,
//! shared) and a window of recent events, and broadcasts each event to the
//! subscribed client watches, which only filter and encode.
//!
//! Correctness rules, the same as kube-apiserver's cacher:
//! - A watch from revision `r` is served from the cache only when the
//!   window holds every event after `r`; otherwise the handler falls back
//!   to its own etcd watch (which answers 410 Expired when etcd compacted
//!   that history). Replay and subscription happen under one lock, so a
//!   subscriber sees each later event exactly once, in revision order.
//! - A subscriber that falls behind the broadcast buffer is ended, not
//!   skipped: its client re-watches from the last revision it received.
//! - Lists with `resourceVersion=0` ("any") are answered from the cache;
//!   everything that asks for the current state still reads etcd.
//! - When the cache itself loses history (its etcd watch was compacted
//!   away), it re-lists and ends every subscriber.
//!
//! Two things keep the fan-out from costing O(events x watchers), as in
//! kube-apiserver's cacher:
//! - Each event is serialized once ([`CachedEvent::object_json`],
//!   [`CachedEvent::metadata_json`]), by the first watcher that needs it;
//!   the others only wrap those bytes in their event line.
//! - A watch whose field selector pins an indexed field to one value
//!   ([`Trigger`]: `metadata.name` on every type, `spec.nodeName` on
//!   pods) subscribes to a channel of that value only, so a kubelet's pod
//!   watch is not woken for the pods of the 999 other nodes. An event goes
//!   to the channels of its object's value and of the previous object's
//!   (a change of the value must reach the watch that stops matching too).
//!
//! Every type but Events gets its cache when the apiserver starts (Events,
//! as in kube-apiserver, are not cached: many, short-lived, rarely
//! watched); requests that arrive before a cache is synced wait for it a
//! moment, then use etcd. Caches stop with the [`WatchCaches`] that owns
//! them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rke2_apimachinery::selectors::{FieldSelector, field_text};
use rke2_datastore::{SharedStore, StoreError, WatchEventKind};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tracing::{debug, info, warn};

use crate::objects;
use crate::registry::ResourceType;

/// How many recent events each cache keeps for watches that start from
/// an older revision (a client re-watching after a reconnect).
pub const WINDOW: usize = 8192;
/// How many events a slow subscriber may fall behind before it is ended.
const BROADCAST_CAPACITY: usize = 4096;
/// The same for the channel of one trigger value. Smaller, because a
/// broadcast channel allocates its whole buffer up front and there is one
/// channel per watched node or name (thousands), each carrying the events
/// of a few objects only.
const INDEXED_CAPACITY: usize = 128;
/// Trigger channels whose watches all ended are dropped when an event for
/// them finds no receiver, and in a sweep once the index has grown to
/// twice its size after the last sweep (at least this many), which keeps
/// subscribing O(1) amortized.
const PRUNE_MIN: usize = 64;
/// Pause before a failed list or watch of etcd is retried.
const RETRY: Duration = Duration::from_millis(500);
/// Keys per page of the cache's initial list.
const LIST_PAGE: i64 = 1000;
/// How long a request waits for a cache that is not synced yet.
const SYNC_WAIT: Duration = Duration::from_secs(3);

/// One change, decoded once and shared by every subscriber.
#[derive(Debug)]
pub struct CachedEvent {
    /// What happened (`Progress` carries only a revision).
    pub kind: WatchEventKind,
    /// The etcd key.
    pub key: String,
    /// The object after the change; for deletions the last state, with
    /// the deletion's resourceVersion.
    pub object: Arc<Value>,
    /// The object before the change, when there was one.
    pub prev: Option<Arc<Value>>,
    /// The revision of the change.
    pub revision: i64,
    json: OnceLock<Bytes>,
    metadata_json: OnceLock<Bytes>,
}

impl CachedEvent {
    /// A change whose encodings are not computed yet.
    pub(crate) fn new(
        kind: WatchEventKind,
        key: String,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
        revision: i64,
    ) -> Self {
        Self {
            kind,
            key,
            object,
            prev,
            revision,
            json: OnceLock::new(),
            metadata_json: OnceLock::new(),
        }
    }

    /// [`CachedEvent::object`] as compact JSON. Serialized by the first
    /// watcher that sends it and shared by the rest: serializing once per
    /// watcher was most of the fan-out's cost.
    pub fn object_json(&self) -> &Bytes {
        self.json.get_or_init(|| to_json(&self.object))
    }

    /// The object's PartialObjectMetadata as compact JSON, shared the same
    /// way: the garbage collector watches every type metadata-only.
    pub fn metadata_json(&self) -> &Bytes {
        self.metadata_json
            .get_or_init(|| to_json(&crate::table::partial_metadata(&self.object)))
    }
}

fn to_json(v: &Value) -> Bytes {
    // Serializing a Value cannot fail (its keys are strings); `null` keeps
    // the event line valid JSON if it ever did.
    Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()))
}

/// A field of a watch's selector that must have one exact value, by which
/// the cache routes events to the watch (kube-apiserver's trigger
/// functions): only events whose object (or previous object) has that
/// value wake it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trigger {
    field: &'static str,
    value: String,
}

impl Trigger {
    /// The trigger of a watch of `rt` with field selector `fields`, if it
    /// pins an indexed field. `metadata.name` wins over `spec.nodeName`:
    /// it matches at most one object per namespace.
    pub fn of(rt: &ResourceType, fields: &FieldSelector) -> Option<Self> {
        let indexed = rt.strategy.watch_index().and_then(|i| i.field);
        std::iter::once("metadata.name")
            .chain(indexed)
            .find_map(|field| {
                fields.exact_value(field).map(|v| Self {
                    field,
                    value: v.to_string(),
                })
            })
    }

    /// Whether the event may concern a watch with this trigger. A watch's
    /// selector can only match an object whose field has the trigger's
    /// value, so this never drops an event the watch would show.
    fn hits(&self, ev: &CachedEvent) -> bool {
        field_text(&ev.object, self.field) == self.value.as_str()
            || ev
                .prev
                .as_ref()
                .is_some_and(|p| field_text(p, self.field) == self.value.as_str())
    }
}

/// What a client watch gets from [`ResourceCache::subscribe`].
pub struct Subscription {
    /// Events after the requested revision that the window already held,
    /// in order.
    pub replay: Vec<Arc<CachedEvent>>,
    /// Every later event (with a trigger: every later event of its value).
    pub live: broadcast::Receiver<Arc<CachedEvent>>,
    /// The revision the cache had reached when subscribing.
    pub revision: i64,
    /// Weak so a watch does not keep a stopped cache (and so its senders,
    /// whose drop ends the watch) alive.
    state: Weak<Mutex<CacheState>>,
}

impl Subscription {
    /// The events waiting in [`Subscription::live`], and a revision `r`
    /// such that every event up to `r` for this watch is among them or
    /// was received before: a watch that handles them may bookmark
    /// `r`. Without this an indexed watch, which sees only its own
    /// value's events, would keep bookmarking the revision of the last
    /// one, and its client's next watch would fall out of the window.
    /// `None` when the subscription is over (cache stopped or re-listed,
    /// or the watch fell behind).
    pub fn catch_up(&mut self) -> Option<(Vec<Arc<CachedEvent>>, i64)> {
        // The revision first: the cache sends every event before it
        // publishes the event's revision (both under its lock), so the
        // events up to `revision` are in the channel by now.
        let state = self.state.upgrade()?;
        let revision = lock(&state).revision;
        drop(state);
        let mut events = Vec::new();
        loop {
            match self.live.try_recv() {
                Ok(ev) => events.push(ev),
                Err(TryRecvError::Empty) => return Some((events, revision)),
                Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => return None,
            }
        }
    }
}

/// A consistent snapshot of the cached objects of one type.
pub struct Snapshot {
    /// The objects under the requested prefix, in key order.
    pub objects: Vec<Arc<Value>>,
    /// The revision the snapshot is consistent at.
    pub revision: i64,
}

struct CacheState {
    synced: bool,
    objects: BTreeMap<String, Arc<Value>>,
    /// Recent events, oldest first; together with `oldest` they hold every
    /// event after `oldest`.
    events: VecDeque<Arc<CachedEvent>>,
    oldest: i64,
    /// Every event up to here has been applied.
    revision: i64,
    /// The watches without a trigger.
    tx: broadcast::Sender<Arc<CachedEvent>>,
    /// The watches with a trigger: by field, then value.
    index: HashMap<&'static str, HashMap<String, broadcast::Sender<Arc<CachedEvent>>>>,
    /// The index size at which subscribing sweeps it.
    prune_at: usize,
    /// A secondary index for the types that have one ([`crate::strategy::Strategy::watch_index`]): the
    /// keys of the objects filed under each value. Pods by node, for the
    /// node authorizer; RBAC bindings by subject, for the RBAC authorizer.
    by_value: Option<(IndexFn, HashMap<String, BTreeSet<String>>)>,
}

/// The values an object is filed under in its cache's secondary index.
type IndexFn = fn(&Value) -> Vec<String>;

impl CacheState {
    /// A receiver for a new watch with `trigger` (all events without).
    fn receiver(&mut self, trigger: Option<&Trigger>) -> broadcast::Receiver<Arc<CachedEvent>> {
        let Some(t) = trigger else {
            return self.tx.subscribe();
        };
        self.prune();
        let senders = self.index.entry(t.field).or_default();
        if let Some(tx) = senders.get(&t.value) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(INDEXED_CAPACITY);
        senders.insert(t.value.clone(), tx);
        rx
    }

    fn indexed(&self) -> usize {
        self.index.values().map(HashMap::len).sum()
    }

    /// Moves `key` in the secondary index from the values of `before` to
    /// those of `after` (`None`: not there).
    fn reindex(&mut self, key: &str, before: Option<&Value>, after: Option<&Value>) {
        let Some((of, by_value)) = &mut self.by_value else {
            return;
        };
        let of: IndexFn = *of;
        let old = before.map(of).unwrap_or_default();
        let new = after.map(of).unwrap_or_default();
        if old == new {
            return;
        }
        for v in &old {
            if let Some(keys) = by_value.get_mut(v) {
                keys.remove(key);
                if keys.is_empty() {
                    by_value.remove(v);
                }
            }
        }
        for v in new {
            by_value.entry(v).or_default().insert(key.to_string());
        }
    }

    /// Drops the trigger channels nobody listens to any more, once the
    /// index has doubled since the last sweep.
    fn prune(&mut self) {
        if self.indexed() < self.prune_at {
            return;
        }
        for senders in self.index.values_mut() {
            senders.retain(|_, tx| tx.receiver_count() > 0);
        }
        self.prune_at = (2 * self.indexed()).max(PRUNE_MIN);
    }

    /// Sends an event to the watches without a trigger and to those of the
    /// object's and the previous object's trigger values.
    fn publish(&mut self, ev: &Arc<CachedEvent>) {
        let _ = self.tx.send(ev.clone());
        for (field, senders) in &mut self.index {
            if senders.is_empty() {
                continue;
            }
            let now = field_text(&ev.object, field);
            deliver(senders, &now, ev);
            if let Some(prev) = &ev.prev {
                let before = field_text(prev, field);
                if before != now {
                    deliver(senders, &before, ev);
                }
            }
        }
    }
}

/// Sends to the channel of `value`, dropping it when its watches are gone.
fn deliver(
    senders: &mut HashMap<String, broadcast::Sender<Arc<CachedEvent>>>,
    value: &str,
    ev: &Arc<CachedEvent>,
) {
    if let Some(tx) = senders.get(value)
        && tx.send(ev.clone()).is_err()
    {
        senders.remove(value);
    }
}

/// The cache of one resource type (all namespaces).
pub struct ResourceCache {
    rt: Arc<ResourceType>,
    /// In an Arc so a [`Subscription`] can read the revision (weakly).
    state: Arc<Mutex<CacheState>>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Set when the type stops being served: the follower ends.
    stopped: tokio::sync::watch::Sender<bool>,
}

fn lock(m: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResourceCache {
    fn new(rt: Arc<ResourceType>) -> Self {
        let by_value = rt
            .strategy
            .watch_index()
            .map(|i| (i.values, HashMap::new()));
        Self {
            rt,
            state: Arc::new(Mutex::new(CacheState {
                synced: false,
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                oldest: 0,
                revision: 0,
                tx: broadcast::channel(BROADCAST_CAPACITY).0,
                index: HashMap::new(),
                prune_at: PRUNE_MIN,
                by_value,
            })),
            synced: tokio::sync::watch::channel(false).0,
            stopped: tokio::sync::watch::channel(false).0,
        }
    }

    /// The revision the cache has reached (0 before it is synced).
    pub fn revision(&self) -> i64 {
        lock(&self.state).revision
    }

    /// Subscribes a watch that wants every event after `after` (with a
    /// trigger: every such event of the trigger's value); `None` when the
    /// cache cannot serve it (not synced, or `after` is older than the
    /// window).
    pub fn subscribe(&self, after: i64, trigger: Option<&Trigger>) -> Option<Subscription> {
        let mut st = lock(&self.state);
        if !st.synced || after < st.oldest {
            return None;
        }
        let replay = st
            .events
            .iter()
            .filter(|e| e.revision > after && trigger.is_none_or(|t| t.hits(e)))
            .cloned()
            .collect();
        Some(Subscription {
            replay,
            live: st.receiver(trigger),
            revision: st.revision,
            state: Arc::downgrade(&self.state),
        })
    }

    /// The cached objects under `prefix` plus a subscription for every
    /// event after them (of the trigger's value, with one), atomically;
    /// `None` when not synced.
    pub fn snapshot_and_subscribe(
        &self,
        prefix: &str,
        trigger: Option<&Trigger>,
    ) -> Option<(Snapshot, Subscription)> {
        let mut st = lock(&self.state);
        if !st.synced {
            return None;
        }
        let snap = Snapshot {
            objects: range(&st.objects, prefix),
            revision: st.revision,
        };
        let sub = Subscription {
            replay: Vec::new(),
            live: st.receiver(trigger),
            revision: st.revision,
            state: Arc::downgrade(&self.state),
        };
        Some((snap, sub))
    }

    /// The cached objects under `prefix`; `None` when not synced.
    pub fn snapshot(&self, prefix: &str) -> Option<Snapshot> {
        let st = lock(&self.state);
        st.synced.then(|| Snapshot {
            objects: range(&st.objects, prefix),
            revision: st.revision,
        })
    }

    /// The cached object at `key` and its resourceVersion, if synced and
    /// present. It may be stale: callers use it only where a stale answer
    /// is caught (a write that compares the revision).
    pub fn get(&self, key: &str) -> Option<(Arc<Value>, i64)> {
        let st = lock(&self.state);
        if !st.synced {
            return None;
        }
        st.objects.get(key).map(|o| (o.clone(), rv_of(o)))
    }

    /// The pods bound to `node` (pods cache only; `None` when not synced
    /// or not the pods cache). As fresh as the cache: a pod bound a moment
    /// ago may not be here yet.
    pub fn pods_on_node(&self, node: &str) -> Option<Vec<Arc<Value>>> {
        let by_node = self.rt.strategy.watch_index().and_then(|i| i.field);
        if by_node != Some("spec.nodeName") {
            return None;
        }
        self.indexed(node)
    }

    /// The objects filed under `value` in this cache's secondary index
    /// (pods by node name, RBAC bindings by [`crate::rbac::subject_keys`]);
    /// `None` when not synced or the type has no index.
    pub fn indexed(&self, value: &str) -> Option<Vec<Arc<Value>>> {
        let st = lock(&self.state);
        let (_, by_value) = st.by_value.as_ref().filter(|_| st.synced)?;
        Some(
            by_value
                .get(value)
                .into_iter()
                .flatten()
                .filter_map(|k| st.objects.get(k).cloned())
                .collect(),
        )
    }

    /// Loads the state: everything under the type's prefix at one revision.
    fn reset(&self, objects: BTreeMap<String, Arc<Value>>, revision: i64) {
        let mut st = lock(&self.state);
        if let Some((of, by_value)) = &mut st.by_value {
            by_value.clear();
            for (k, o) in &objects {
                for v in of(o) {
                    by_value.entry(v).or_default().insert(k.clone());
                }
            }
        }
        st.objects = objects;
        st.events.clear();
        st.oldest = revision;
        st.revision = revision;
        st.synced = true;
        // New senders end every current subscriber, indexed ones too: the
        // history they expect is gone from this cache.
        st.tx = broadcast::channel(BROADCAST_CAPACITY).0;
        st.index.clear();
        st.prune_at = PRUNE_MIN;
        self.synced.send_replace(true);
    }

    fn apply(&self, ev: rke2_datastore::WatchEvent) {
        let mut st = lock(&self.state);
        if ev.revision <= st.revision && ev.kind != WatchEventKind::Progress {
            return;
        }
        let cached = match ev.kind {
            WatchEventKind::Progress => {
                st.revision = st.revision.max(ev.revision);
                // Only the watches without a trigger get progress: the
                // indexed ones learn the revision from
                // [`Subscription::catch_up`] instead of one send per value.
                let e = Arc::new(CachedEvent::new(
                    ev.kind,
                    String::new(),
                    Arc::new(Value::Null),
                    None,
                    st.revision,
                ));
                let _ = st.tx.send(e);
                return;
            }
            WatchEventKind::Deleted => {
                // The cache's etcd watch carries no previous values: the
                // deleted object's last state is the cached one.
                let Some(prev) = st.objects.remove(&ev.key) else {
                    st.revision = ev.revision;
                    return;
                };
                st.reindex(&ev.key, Some(&prev), None);
                let mut object = Value::clone(&prev);
                objects::decorate(&self.rt, &mut object, ev.revision);
                Arc::new(CachedEvent::new(
                    WatchEventKind::Deleted,
                    ev.key,
                    Arc::new(object),
                    Some(prev),
                    ev.revision,
                ))
            }
            kind => {
                let object = match objects::from_stored(&self.rt, &ev.value, ev.revision) {
                    Ok(o) => Arc::new(o),
                    Err(e) => {
                        warn!(key = %ev.key, error = %e.message, "watch cache skips an undecodable object");
                        st.revision = ev.revision;
                        return;
                    }
                };
                // The cache's etcd watch carries no previous values; the
                // cached object is the state before this change.
                let prev = st.objects.get(&ev.key).cloned();
                st.objects.insert(ev.key.clone(), object.clone());
                st.reindex(&ev.key, prev.as_deref(), Some(&object));
                Arc::new(CachedEvent::new(kind, ev.key, object, prev, ev.revision))
            }
        };
        st.revision = cached.revision;
        if st.events.len() >= WINDOW
            && let Some(old) = st.events.pop_front()
        {
            st.oldest = old.revision;
        }
        st.events.push_back(cached.clone());
        st.publish(&cached);
    }
}

fn range(objects: &BTreeMap<String, Arc<Value>>, prefix: &str) -> Vec<Arc<Value>> {
    objects
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v.clone())
        .collect()
}

fn rv_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The caches of one apiserver, by resource type.
pub struct WatchCaches {
    store: SharedStore,
    registry: Arc<crate::registry::Registry>,
    caches: Mutex<HashMap<String, Arc<ResourceCache>>>,
}

impl WatchCaches {
    /// No caches yet; [`WatchCaches::start`] starts them.
    pub fn new(store: SharedStore, registry: Arc<crate::registry::Registry>) -> Self {
        Self {
            store,
            registry,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the cache of every cached type (needs a tokio runtime).
    pub fn start(&self) {
        for rt in crate::registry::builtin() {
            self.of(rt);
        }
    }

    /// Stops the cache of a type that is no longer served (a deleted
    /// CRD's): its follower ends, and a type served again later under
    /// the same name starts from a fresh list.
    pub fn forget(&self, rt: &ResourceType) {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = caches.remove(&rt.prefix(None)) {
            c.stopped.send_replace(true);
            // Dropping the sender ends every watch served from the cache.
            lock(&c.state).tx = broadcast::channel(1).0;
        }
    }

    /// The cache of `rt`, started now if it was not running; `None` for
    /// types that are not cached.
    fn of(&self, rt: &ResourceType) -> Option<Arc<ResourceCache>> {
        if !rt.strategy.watch_cached() {
            return None;
        }
        let prefix = rt.prefix(None);
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = caches.get(&prefix) {
            return Some(c.clone());
        }
        // The registry's own entry: a type no longer served gets no cache.
        let rt = self.registry.resolve(&rt.group, &rt.version, &rt.plural)?;
        let cache = Arc::new(ResourceCache::new(rt));
        caches.insert(prefix.clone(), cache.clone());
        tokio::spawn(follow(self.store.clone(), Arc::downgrade(&cache), prefix));
        Some(cache)
    }

    /// The cache of `rt` once it is synced, waiting a moment for a cache
    /// that is still loading; `None` when the type is not cached or the
    /// cache is not ready (callers use etcd then).
    pub async fn ready(&self, rt: &ResourceType) -> Option<Arc<ResourceCache>> {
        let cache = self.of(rt)?;
        let mut synced = cache.synced.subscribe();
        match tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Some(cache),
            _ => None,
        }
    }

    /// The cache of `rt` if it is running, synced or not.
    pub fn running(&self, rt: &ResourceType) -> Option<Arc<ResourceCache>> {
        let caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        caches.get(&rt.prefix(None)).cloned()
    }
}

/// Lists, then follows etcd for one cache until the cache is dropped.
async fn follow(store: SharedStore, cache: Weak<ResourceCache>, prefix: String) {
    let Some(mut stopped) = cache.upgrade().map(|c| c.stopped.subscribe()) else {
        return;
    };
    'relist: loop {
        if *stopped.borrow() {
            return;
        }
        let Some(c) = cache.upgrade() else { return };
        let (objects, revision) = match list_all(&store, &c.rt, &prefix).await {
            Ok(x) => x,
            Err(e) => {
                debug!(%prefix, error = %e, "watch cache list failed; retrying");
                drop(c);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let n = objects.len();
        c.reset(objects, revision);
        info!(%prefix, objects = n, revision, "watch cache synced");
        drop(c);
        loop {
            let from = match cache.upgrade() {
                Some(c) => c.revision(),
                None => return,
            };
            let stream = match store.watch_without_prev(&prefix, from).await {
                Ok(s) => s,
                Err(StoreError::Compacted { .. }) => continue 'relist,
                Err(e) => {
                    debug!(%prefix, error = %e, "watch cache watch failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let mut stream = Box::pin(stream);
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let Some(c) = cache.upgrade() else { return };
                match ev {
                    Ok(ev) => c.apply(ev),
                    Err(StoreError::Compacted { .. }) => {
                        warn!(%prefix, "watch cache fell behind etcd's compaction; re-listing");
                        continue 'relist;
                    }
                    Err(e) => {
                        debug!(%prefix, error = %e, "watch cache stream broke; re-watching");
                        break;
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

async fn list_all(
    store: &SharedStore,
    rt: &ResourceType,
    prefix: &str,
) -> Result<(BTreeMap<String, Arc<Value>>, i64), StoreError> {
    let mut objects = BTreeMap::new();
    let mut revision = 0;
    let mut start = prefix.to_string();
    loop {
        let page = store
            .list(prefix, Some(&start), LIST_PAGE, revision)
            .await?;
        revision = page.revision;
        let mut last = None;
        for kv in page.items {
            match objects::from_stored(rt, &kv.value, kv.mod_revision) {
                Ok(o) => {
                    objects.insert(kv.key.clone(), Arc::new(o));
                }
                Err(e) => {
                    warn!(key = %kv.key, error = %e.message, "watch cache skips an undecodable object")
                }
            }
            last = Some(kv.key);
        }
        match (page.more, last) {
            (true, Some(k)) => start = format!("{k}\u{0}"),
            _ => return Ok((objects, revision)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rke2_datastore::WatchEvent;
    use serde_json::json;

    fn cms() -> Arc<ResourceType> {
        crate::registry::builtin_arc("", "v1", "configmaps").unwrap()
    }

    fn put(name: &str, rev: i64, created: bool, v: &str) -> WatchEvent {
        WatchEvent {
            kind: if created {
                WatchEventKind::Created
            } else {
                WatchEventKind::Modified
            },
            key: format!("/registry/configmaps/ns/{name}"),
            value: serde_json::to_vec(
                &json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"v": v}}),
            )
            .unwrap(),
            revision: rev,
            prev_value: None,
        }
    }

    fn synced_cache() -> ResourceCache {
        let c = ResourceCache::new(cms());
        c.reset(BTreeMap::new(), 10);
        c
    }

    fn pods() -> Arc<ResourceType> {
        crate::registry::builtin_arc("", "v1", "pods").unwrap()
    }

    fn synced_pods() -> ResourceCache {
        let c = ResourceCache::new(pods());
        c.reset(BTreeMap::new(), 10);
        c
    }

    /// A pod change; `node` `None` is an unscheduled pod.
    fn pod(name: &str, rev: i64, kind: WatchEventKind, node: Option<&str>) -> WatchEvent {
        let mut obj = json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {}});
        if let Some(n) = node {
            obj["spec"]["nodeName"] = json!(n);
        }
        WatchEvent {
            kind,
            key: format!("/registry/pods/ns/{name}"),
            value: serde_json::to_vec(&obj).unwrap(),
            revision: rev,
            prev_value: None,
        }
    }

    fn on_node(c: &ResourceCache, node: &str) -> Vec<String> {
        c.pods_on_node(node)
            .unwrap()
            .iter()
            .map(|p| name_of_obj(p))
            .collect()
    }

    fn name_of_obj(p: &Value) -> String {
        p["metadata"]["name"].as_str().unwrap().to_string()
    }

    #[test]
    fn node_index_follows_binding_moves_and_deletes() {
        assert!(ResourceCache::new(pods()).pods_on_node("a").is_none());
        assert!(synced_cache().pods_on_node("a").is_none(), "pods only");
        let c = ResourceCache::new(pods());
        let listed = |name: &str, node: &str| {
            (
                format!("/registry/pods/ns/{name}"),
                Arc::new(
                    json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": "5"},
                                "spec": {"nodeName": node}}),
                ),
            )
        };
        c.reset(BTreeMap::from([listed("p0", "a"), listed("q0", "b")]), 10);
        assert_eq!(on_node(&c, "a"), ["p0"]);
        c.apply(pod("p1", 11, WatchEventKind::Created, None));
        assert_eq!(on_node(&c, "a"), ["p0"]);
        c.apply(pod("p1", 12, WatchEventKind::Modified, Some("a")));
        assert_eq!(on_node(&c, "a"), ["p0", "p1"]);
        c.apply(pod("p1", 13, WatchEventKind::Modified, Some("b")));
        assert_eq!(on_node(&c, "a"), ["p0"]);
        assert_eq!(on_node(&c, "b"), ["p1", "q0"]);
        c.apply(pod("p0", 14, WatchEventKind::Deleted, None));
        assert!(on_node(&c, "a").is_empty());
        assert!(on_node(&c, "nobody").is_empty());
        // A re-list rebuilds the index from scratch.
        c.reset(BTreeMap::from([listed("z", "a")]), 20);
        assert_eq!(on_node(&c, "a"), ["z"]);
        assert!(on_node(&c, "b").is_empty());
    }

    fn trigger(rt: &ResourceType, sel: &str) -> Option<Trigger> {
        let f = rke2_apimachinery::selectors::parse_field_selector(sel).unwrap();
        Trigger::of(rt, &f)
    }

    /// The revisions waiting in a subscription.
    fn pending(sub: &mut Subscription) -> Vec<i64> {
        std::iter::from_fn(|| sub.live.try_recv().ok())
            .map(|e| e.revision)
            .collect()
    }

    fn indexed(c: &ResourceCache) -> usize {
        lock(&c.state).indexed()
    }

    #[test]
    fn not_synced_serves_nothing() {
        let c = ResourceCache::new(cms());
        assert!(c.subscribe(0, None).is_none());
        assert!(c.snapshot("/registry/configmaps/").is_none());
        assert!(c.get("/registry/configmaps/ns/a").is_none());
    }

    #[test]
    fn replay_holds_exactly_the_events_after_the_revision() {
        let c = synced_cache();
        c.apply(put("a", 11, true, "1"));
        c.apply(put("b", 12, true, "1"));
        c.apply(put("a", 13, false, "2"));
        let sub = c.subscribe(11, None).unwrap();
        let revs: Vec<i64> = sub.replay.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![12, 13]);
        assert_eq!(sub.revision, 13);
        // The modification knows the object before it, decoded once.
        let m = &sub.replay[1];
        assert_eq!(m.prev.as_ref().unwrap()["data"]["v"], "1");
        assert_eq!(m.object["data"]["v"], "2");
        assert_eq!(m.object["metadata"]["resourceVersion"], "13");
        // From the list revision itself: everything; from before it: the
        // cache cannot know, the caller must go to etcd.
        assert_eq!(c.subscribe(10, None).unwrap().replay.len(), 3);
        assert!(c.subscribe(9, None).is_none());
        // A revision from the future gets no replay but a subscription.
        assert!(c.subscribe(50, None).unwrap().replay.is_empty());
    }

    #[test]
    fn window_forgets_the_oldest_events() {
        let c = synced_cache();
        for i in 0..(WINDOW as i64 + 5) {
            c.apply(put("a", 11 + i, i == 0, &i.to_string()));
        }
        // Events 11..=15 fell out: a watch from 10..=14 must use etcd.
        assert!(c.subscribe(14, None).is_none());
        let sub = c.subscribe(15, None).unwrap();
        assert_eq!(sub.replay.len(), WINDOW);
        assert_eq!(sub.replay[0].revision, 16);
    }

    #[test]
    fn live_events_follow_the_replay_without_gaps_or_duplicates() {
        let c = synced_cache();
        c.apply(put("a", 11, true, "1"));
        let mut sub = c.subscribe(10, None).unwrap();
        c.apply(put("a", 12, false, "2"));
        assert_eq!(sub.replay.len(), 1);
        assert_eq!(sub.live.try_recv().unwrap().revision, 12);
        assert!(sub.live.try_recv().is_err());
        // Stale or repeated events (a re-watch overlapping) are ignored.
        c.apply(put("a", 12, false, "2"));
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn deletes_leave_the_snapshot_and_carry_the_last_state() {
        let c = synced_cache();
        c.apply(put("a", 11, true, "1"));
        c.apply(put("b", 12, true, "1"));
        let mut del = put("a", 13, false, "1");
        del.kind = WatchEventKind::Deleted;
        c.apply(del);
        let snap = c.snapshot("/registry/configmaps/ns/").unwrap();
        assert_eq!(snap.revision, 13);
        let names: Vec<&str> = snap
            .objects
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["b"]);
        assert!(
            c.snapshot("/registry/configmaps/other/")
                .unwrap()
                .objects
                .is_empty()
        );
        let ev = c.subscribe(12, None).unwrap().replay.pop().unwrap();
        assert_eq!(ev.kind, WatchEventKind::Deleted);
        assert_eq!(ev.object["metadata"]["resourceVersion"], "13");
        assert_eq!(c.get("/registry/configmaps/ns/b").unwrap().1, 12);
    }

    #[test]
    fn relist_ends_subscribers() {
        let c = synced_cache();
        let mut sub = c.subscribe(10, None).unwrap();
        c.reset(BTreeMap::new(), 40);
        assert!(matches!(
            sub.live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert!(c.subscribe(39, None).is_none());
    }

    #[test]
    fn triggers_come_from_exact_terms_on_indexed_fields() {
        let t = trigger(&pods(), "spec.nodeName=n1").unwrap();
        assert_eq!((t.field, t.value.as_str()), ("spec.nodeName", "n1"));
        // The name pins at most one object: it wins.
        let t = trigger(&pods(), "spec.nodeName=n1,metadata.name=p").unwrap();
        assert_eq!((t.field, t.value.as_str()), ("metadata.name", "p"));
        // `spec.nodeName=` (unscheduled pods) is an exact value too.
        assert_eq!(trigger(&pods(), "spec.nodeName=").unwrap().value, "");
        assert!(trigger(&pods(), "spec.nodeName!=n1").is_none());
        assert!(trigger(&pods(), "status.phase=Running").is_none());
        assert!(trigger(&cms(), "metadata.name=a").is_some());
    }

    #[test]
    fn indexed_subscribers_get_exactly_the_events_of_their_value() {
        let c = synced_pods();
        let sub = |sel: &str| c.subscribe(10, trigger(&pods(), sel).as_ref()).unwrap();
        let mut on_a = sub("spec.nodeName=a");
        let mut on_b = sub("spec.nodeName=b");
        let mut unscheduled = sub("spec.nodeName=");
        let mut p1 = sub("metadata.name=p1");
        let mut all = c.subscribe(10, None).unwrap();
        use WatchEventKind::*;
        c.apply(pod("p1", 11, Created, None));
        c.apply(pod("p1", 12, Modified, Some("a")));
        c.apply(pod("p2", 13, Created, Some("b")));
        // Moving nodes: the node it left must see it go.
        c.apply(pod("p1", 14, Modified, Some("b")));
        c.apply(pod("p1", 15, Deleted, None));
        c.apply(WatchEvent {
            kind: Progress,
            key: String::new(),
            value: Vec::new(),
            revision: 16,
            prev_value: None,
        });
        assert_eq!(pending(&mut on_a), vec![12, 14]);
        assert_eq!(pending(&mut on_b), vec![13, 14, 15]);
        assert_eq!(pending(&mut unscheduled), vec![11, 12]);
        // The delete reaches the name's watch.
        assert_eq!(pending(&mut p1), vec![11, 12, 14, 15]);
        assert_eq!(pending(&mut all), vec![11, 12, 13, 14, 15, 16]);

        // A replay from the window is filtered the same way.
        let replay =
            |sel: &str| -> Vec<i64> { sub(sel).replay.iter().map(|e| e.revision).collect() };
        assert_eq!(replay("spec.nodeName=a"), vec![12, 14]);
        assert_eq!(replay("spec.nodeName=b"), vec![13, 14, 15]);
        assert_eq!(replay("metadata.name=p2"), vec![13]);
        assert!(replay("metadata.name=nope").is_empty());
        // And the live part follows it without a gap or duplicate.
        let mut late = c
            .subscribe(13, trigger(&pods(), "spec.nodeName=b").as_ref())
            .unwrap();
        assert_eq!(
            late.replay.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![14, 15]
        );
        c.apply(pod("p3", 17, Created, Some("b")));
        c.apply(pod("p4", 18, Created, Some("c")));
        assert_eq!(pending(&mut late), vec![17]);
    }

    #[test]
    fn catch_up_hands_over_the_waiting_events_and_the_cache_revision() {
        let c = synced_pods();
        let t = trigger(&pods(), "spec.nodeName=a");
        let mut on_a = c.subscribe(10, t.as_ref()).unwrap();
        use WatchEventKind::*;
        c.apply(pod("p1", 11, Created, Some("a")));
        c.apply(pod("p2", 12, Created, Some("b")));
        c.apply(pod("p3", 13, Created, Some("b")));
        let (events, rev) = on_a.catch_up().unwrap();
        assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), [11]);
        // 13 is safe to bookmark although this watch never saw it.
        assert_eq!(rev, 13);
        let (events, rev) = on_a.catch_up().unwrap();
        assert!(events.is_empty());
        assert_eq!(rev, 13);
        // A watch that fell behind its channel is over.
        for i in 0..(INDEXED_CAPACITY as i64 + 1) {
            c.apply(pod("p1", 14 + i, Modified, Some("a")));
        }
        assert!(on_a.catch_up().is_none());
    }

    #[test]
    fn indexed_channels_are_dropped_with_their_last_watch() {
        let c = synced_pods();
        let sub = |sel: &str| c.subscribe(10, trigger(&pods(), sel).as_ref()).unwrap();
        let a1 = sub("spec.nodeName=a");
        let a2 = sub("spec.nodeName=a");
        let b = sub("spec.nodeName=b");
        assert_eq!(indexed(&c), 2);
        drop(a1);
        c.apply(pod("p1", 11, WatchEventKind::Created, Some("a")));
        assert_eq!(indexed(&c), 2, "a2 still listens");
        drop(a2);
        drop(b);
        // An event for a channel without watches drops it.
        c.apply(pod("p2", 12, WatchEventKind::Created, Some("a")));
        assert_eq!(indexed(&c), 1);
        // Channels that get no events go in a sweep when the index grows.
        for i in 0..(3 * PRUNE_MIN) {
            drop(sub(&format!("metadata.name=gone{i}")));
        }
        let _kept = sub("metadata.name=kept");
        assert!(indexed(&c) < PRUNE_MIN, "{} channels left", indexed(&c));
        assert_eq!(c.subscribe(10, None).unwrap().replay.len(), 2);
    }

    #[test]
    fn relist_ends_indexed_subscribers() {
        let c = synced_pods();
        let t = trigger(&pods(), "metadata.name=p1");
        let mut sub = c.subscribe(10, t.as_ref()).unwrap();
        let (_, mut snap_sub) = c
            .snapshot_and_subscribe("/registry/pods/", t.as_ref())
            .unwrap();
        c.reset(BTreeMap::new(), 40);
        assert_eq!(indexed(&c), 0);
        for s in [&mut sub, &mut snap_sub] {
            assert!(matches!(
                s.live.try_recv(),
                Err(broadcast::error::TryRecvError::Closed)
            ));
            assert!(s.catch_up().is_none());
        }
        // New watches of the value get a new channel.
        let mut again = c.subscribe(40, t.as_ref()).unwrap();
        c.apply(pod("p1", 41, WatchEventKind::Created, None));
        assert_eq!(pending(&mut again), vec![41]);
    }

    #[test]
    fn a_stopped_cache_ends_catch_up() {
        let c = synced_pods();
        let mut sub = c.subscribe(10, None).unwrap();
        drop(c);
        assert!(sub.catch_up().is_none());
    }

    #[test]
    fn encodings_are_computed_once_per_event() {
        let c = synced_cache();
        c.apply(put("a", 11, true, "1"));
        let ev = c.subscribe(10, None).unwrap().replay.pop().unwrap();
        let json = ev.object_json();
        assert_eq!(serde_json::from_slice::<Value>(json).unwrap(), *ev.object);
        // The second watcher gets the same bytes, not a new serialization.
        assert_eq!(ev.object_json().as_ptr(), json.as_ptr());
        let meta: Value = serde_json::from_slice(ev.metadata_json()).unwrap();
        assert_eq!(meta, crate::table::partial_metadata(&ev.object));
        assert_eq!(ev.metadata_json().as_ptr(), ev.metadata_json().as_ptr());
    }
}
