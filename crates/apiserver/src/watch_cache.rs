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
//! Every type but Events gets its cache when the apiserver starts (Events,
//! as in kube-apiserver, are not cached: many, short-lived, rarely
//! watched); requests that arrive before a cache is synced wait for it a
//! moment, then use etcd. Caches stop with the [`WatchCaches`] that owns
//! them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use rke2_datastore::{Store, StoreError, WatchEventKind};
use serde_json::Value;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::objects;
use crate::registry::ResourceType;

/// How many recent events each cache keeps for watches that start from
/// an older revision (a client re-watching after a reconnect).
pub const WINDOW: usize = 8192;
/// How many events a slow subscriber may fall behind before it is ended.
const BROADCAST_CAPACITY: usize = 4096;
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
}

/// What a client watch gets from [`ResourceCache::subscribe`].
pub struct Subscription {
    /// Events after the requested revision that the window already held,
    /// in order.
    pub replay: Vec<Arc<CachedEvent>>,
    /// Every later event.
    pub live: broadcast::Receiver<Arc<CachedEvent>>,
    /// The revision the cache had reached when subscribing.
    pub revision: i64,
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
    tx: broadcast::Sender<Arc<CachedEvent>>,
}

/// The cache of one resource type (all namespaces).
pub struct ResourceCache {
    rt: &'static ResourceType,
    state: Mutex<CacheState>,
    synced: tokio::sync::watch::Sender<bool>,
}

fn lock(m: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResourceCache {
    fn new(rt: &'static ResourceType) -> Self {
        Self {
            rt,
            state: Mutex::new(CacheState {
                synced: false,
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                oldest: 0,
                revision: 0,
                tx: broadcast::channel(BROADCAST_CAPACITY).0,
            }),
            synced: tokio::sync::watch::channel(false).0,
        }
    }

    /// The revision the cache has reached (0 before it is synced).
    pub fn revision(&self) -> i64 {
        lock(&self.state).revision
    }

    /// Subscribes a watch that wants every event after `after`; `None`
    /// when the cache cannot serve it (not synced, or `after` is older
    /// than the window).
    pub fn subscribe(&self, after: i64) -> Option<Subscription> {
        let st = lock(&self.state);
        if !st.synced || after < st.oldest {
            return None;
        }
        Some(Subscription {
            replay: st
                .events
                .iter()
                .filter(|e| e.revision > after)
                .cloned()
                .collect(),
            live: st.tx.subscribe(),
            revision: st.revision,
        })
    }

    /// The cached objects under `prefix` plus a subscription for every
    /// event after them, atomically; `None` when not synced.
    pub fn snapshot_and_subscribe(&self, prefix: &str) -> Option<(Snapshot, Subscription)> {
        let st = lock(&self.state);
        if !st.synced {
            return None;
        }
        let snap = Snapshot {
            objects: range(&st.objects, prefix),
            revision: st.revision,
        };
        let sub = Subscription {
            replay: Vec::new(),
            live: st.tx.subscribe(),
            revision: st.revision,
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

    /// Loads the state: everything under the type's prefix at one revision.
    fn reset(&self, objects: BTreeMap<String, Arc<Value>>, revision: i64) {
        let mut st = lock(&self.state);
        st.objects = objects;
        st.events.clear();
        st.oldest = revision;
        st.revision = revision;
        st.synced = true;
        // A new sender ends every current subscriber: the history they
        // expect is gone from this cache.
        st.tx = broadcast::channel(BROADCAST_CAPACITY).0;
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
                let e = Arc::new(CachedEvent {
                    kind: ev.kind,
                    key: String::new(),
                    object: Arc::new(Value::Null),
                    prev: None,
                    revision: st.revision,
                });
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
                let mut object = Value::clone(&prev);
                objects::decorate(self.rt, &mut object, ev.revision);
                Arc::new(CachedEvent {
                    kind: WatchEventKind::Deleted,
                    key: ev.key,
                    object: Arc::new(object),
                    prev: Some(prev),
                    revision: ev.revision,
                })
            }
            kind => {
                let object = match objects::from_stored(self.rt, &ev.value, ev.revision) {
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
                Arc::new(CachedEvent {
                    kind,
                    key: ev.key,
                    object,
                    prev,
                    revision: ev.revision,
                })
            }
        };
        st.revision = cached.revision;
        if st.events.len() >= WINDOW
            && let Some(old) = st.events.pop_front()
        {
            st.oldest = old.revision;
        }
        st.events.push_back(cached.clone());
        let _ = st.tx.send(cached);
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
    store: Store,
    caches: Mutex<HashMap<String, Arc<ResourceCache>>>,
}

/// Whether a type is served through a cache.
fn cached(rt: &ResourceType) -> bool {
    !(rt.group.is_empty() && rt.plural == "events")
}

impl WatchCaches {
    /// No caches yet; [`WatchCaches::start`] starts them.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the cache of every cached type (needs a tokio runtime).
    pub fn start(&self) {
        for rt in crate::registry::all() {
            self.of(rt);
        }
    }

    /// The cache of `rt`, started now if it was not running; `None` for
    /// types that are not cached.
    fn of(&self, rt: &'static ResourceType) -> Option<Arc<ResourceCache>> {
        if !cached(rt) {
            return None;
        }
        let prefix = rt.prefix(None);
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = caches.get(&prefix) {
            return Some(c.clone());
        }
        let cache = Arc::new(ResourceCache::new(rt));
        caches.insert(prefix.clone(), cache.clone());
        tokio::spawn(follow(self.store.clone(), Arc::downgrade(&cache), prefix));
        Some(cache)
    }

    /// The cache of `rt` once it is synced, waiting a moment for a cache
    /// that is still loading; `None` when the type is not cached or the
    /// cache is not ready (callers use etcd then).
    pub async fn ready(&self, rt: &'static ResourceType) -> Option<Arc<ResourceCache>> {
        let cache = self.of(rt)?;
        let mut synced = cache.synced.subscribe();
        match tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Some(cache),
            _ => None,
        }
    }

    /// The cache of `rt` if it is running, synced or not.
    pub fn running(&self, rt: &'static ResourceType) -> Option<Arc<ResourceCache>> {
        let caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        caches.get(&rt.prefix(None)).cloned()
    }
}

/// Lists, then follows etcd for one cache until the cache is dropped.
async fn follow(store: Store, cache: Weak<ResourceCache>, prefix: String) {
    'relist: loop {
        let Some(c) = cache.upgrade() else { return };
        let (objects, revision) = match list_all(&store, c.rt, &prefix).await {
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
            while let Some(ev) = stream.next().await {
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
    store: &Store,
    rt: &'static ResourceType,
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

    fn cms() -> &'static ResourceType {
        crate::registry::find("", "v1", "configmaps").unwrap()
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

    #[test]
    fn not_synced_serves_nothing() {
        let c = ResourceCache::new(cms());
        assert!(c.subscribe(0).is_none());
        assert!(c.snapshot("/registry/configmaps/").is_none());
        assert!(c.get("/registry/configmaps/ns/a").is_none());
    }

    #[test]
    fn replay_holds_exactly_the_events_after_the_revision() {
        let c = synced_cache();
        c.apply(put("a", 11, true, "1"));
        c.apply(put("b", 12, true, "1"));
        c.apply(put("a", 13, false, "2"));
        let sub = c.subscribe(11).unwrap();
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
        assert_eq!(c.subscribe(10).unwrap().replay.len(), 3);
        assert!(c.subscribe(9).is_none());
        // A revision from the future gets no replay but a subscription.
        assert!(c.subscribe(50).unwrap().replay.is_empty());
    }

    #[test]
    fn window_forgets_the_oldest_events() {
        let c = synced_cache();
        for i in 0..(WINDOW as i64 + 5) {
            c.apply(put("a", 11 + i, i == 0, &i.to_string()));
        }
        // Events 11..=15 fell out: a watch from 10..=14 must use etcd.
        assert!(c.subscribe(14).is_none());
        let sub = c.subscribe(15).unwrap();
        assert_eq!(sub.replay.len(), WINDOW);
        assert_eq!(sub.replay[0].revision, 16);
    }

    #[test]
    fn live_events_follow_the_replay_without_gaps_or_duplicates() {
        let c = synced_cache();
        c.apply(put("a", 11, true, "1"));
        let mut sub = c.subscribe(10).unwrap();
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
        let ev = c.subscribe(12).unwrap().replay.pop().unwrap();
        assert_eq!(ev.kind, WatchEventKind::Deleted);
        assert_eq!(ev.object["metadata"]["resourceVersion"], "13");
        assert_eq!(c.get("/registry/configmaps/ns/b").unwrap().1, 12);
    }

    #[test]
    fn relist_ends_subscribers() {
        let c = synced_cache();
        let mut sub = c.subscribe(10).unwrap();
        c.reset(BTreeMap::new(), 40);
        assert!(matches!(
            sub.live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert!(c.subscribe(39).is_none());
    }
}
