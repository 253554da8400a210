//! An in-memory [`ObjectStore`] with etcd's semantics, for unit tests of
//! the verbs without an etcd process.
//!
//! It keeps the current keys in a `BTreeMap` (key order, as etcd's range
//! reads) and every change since the compaction point in a history: reads
//! at an older revision roll the current state back through it, watches
//! replay it and then receive live changes. [`ObjectStore::compact`] moves
//! the compaction point, so the "too old resource version" paths can be
//! tested. The contract it shares with [`crate::Store`] is checked by
//! [`crate::contract`] against both.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::object_store::{ObjectStore, WatchStream};
use crate::store::{
    KeyValue, ListPage, StoreError, WatchEvent, WatchEventKind, check_size, prefix_end,
};

/// The in-memory store; clones share the same keyspace.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    mod_revision: i64,
    create_revision: i64,
}

/// One revision's change of one key.
#[derive(Debug, Clone)]
struct Change {
    revision: i64,
    key: String,
    /// The entry before the change, if the key was present.
    prev: Option<Entry>,
    /// The entry after the change; `None` for a deletion.
    now: Option<Entry>,
}

struct Watcher {
    prefix: String,
    /// Changes at or before this revision were replayed already (or were
    /// not asked for).
    after: i64,
    with_prev: bool,
    tx: mpsc::UnboundedSender<Result<WatchEvent, StoreError>>,
}

struct State {
    revision: i64,
    /// Reads below this revision and watches starting below it fail.
    compacted: i64,
    keys: BTreeMap<String, Entry>,
    /// Every change at or after `compacted`, oldest first.
    history: VecDeque<Change>,
    watchers: Vec<Watcher>,
}

impl Default for State {
    fn default() -> Self {
        // etcd's revision is 1 before the first write.
        Self {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            history: VecDeque::new(),
            watchers: Vec::new(),
        }
    }
}

impl Change {
    fn event(&self, with_prev: bool) -> WatchEvent {
        let prev_value = self
            .prev
            .as_ref()
            .filter(|_| with_prev)
            .map(|p| p.value.clone());
        match &self.now {
            Some(now) => WatchEvent {
                kind: if now.create_revision == now.mod_revision {
                    WatchEventKind::Created
                } else {
                    WatchEventKind::Modified
                },
                key: self.key.clone(),
                value: now.value.clone(),
                revision: self.revision,
                prev_value,
            },
            None => WatchEvent {
                kind: WatchEventKind::Deleted,
                key: self.key.clone(),
                value: prev_value.clone().unwrap_or_default(),
                revision: self.revision,
                prev_value,
            },
        }
    }
}

/// Whether `key` lies in the range a read or watch of `prefix` covers
/// (etcd's `[prefix, prefix_end(prefix))`).
fn in_range(key: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (key.as_bytes() >= prefix.as_bytes() && key.as_bytes() < prefix_end(prefix).as_slice())
}

impl State {
    /// Applies one change at the next revision and tells the watchers.
    fn apply(&mut self, key: &str, value: Option<Vec<u8>>) -> i64 {
        self.revision += 1;
        let revision = self.revision;
        let prev = self.keys.get(key).cloned();
        let now = value.map(|value| Entry {
            value,
            mod_revision: revision,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
        });
        match &now {
            Some(e) => {
                self.keys.insert(key.to_string(), e.clone());
            }
            None => {
                self.keys.remove(key);
            }
        }
        let change = Change {
            revision,
            key: key.to_string(),
            prev,
            now,
        };
        self.watchers.retain(|w| {
            if w.tx.is_closed() {
                return false;
            }
            if revision <= w.after || !in_range(key, &w.prefix) {
                return true;
            }
            w.tx.send(Ok(change.event(w.with_prev))).is_ok()
        });
        self.history.push_back(change);
        revision
    }

    /// The keys as they were at `revision` (at least the compaction
    /// point, at most the current revision).
    fn keys_at(&self, revision: i64) -> BTreeMap<String, Entry> {
        let mut keys = self.keys.clone();
        for change in self.history.iter().rev() {
            if change.revision <= revision {
                break;
            }
            match &change.prev {
                Some(p) => {
                    keys.insert(change.key.clone(), p.clone());
                }
                None => {
                    keys.remove(&change.key);
                }
            }
        }
        keys
    }

    fn check_read_revision(&self, revision: i64) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
            });
        }
        if revision > 0 && revision < self.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // change is applied in one step), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create_now(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        check_size(key, &value)?;
        let mut st = self.lock();
        if st.keys.contains_key(key) {
            return Err(StoreError::AlreadyExists);
        }
        Ok(st.apply(key, Some(value)))
    }

    fn update_now(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        check_size(key, &value)?;
        let mut st = self.lock();
        // etcd compares the mod revision, which is 0 for an absent key:
        // an update expecting 0 creates the key, as etcd's transaction.
        match st.keys.get(key).map(|e| e.mod_revision).unwrap_or(0) {
            current if current == expected => Ok(st.apply(key, Some(value))),
            0 => Err(StoreError::NotFound),
            current => Err(StoreError::Conflict { expected, current }),
        }
    }

    fn delete_now(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let mut st = self.lock();
        match st.keys.get(key).map(|e| e.mod_revision).unwrap_or(0) {
            // Deleting nothing writes nothing: no new revision (etcd).
            0 if expected == 0 => Ok(st.revision),
            current if current == expected => Ok(st.apply(key, None)),
            0 => Err(StoreError::NotFound),
            current => Err(StoreError::Conflict { expected, current }),
        }
    }

    fn list_now(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: i64,
        revision: i64,
    ) -> Result<ListPage, StoreError> {
        let st = self.lock();
        st.check_read_revision(revision)?;
        let at = if revision > 0 { revision } else { st.revision };
        let snapshot;
        let keys = if at == st.revision {
            &st.keys
        } else {
            snapshot = st.keys_at(at);
            &snapshot
        };
        let from = start.unwrap_or(prefix);
        let in_page = keys
            .range(from.to_string()..)
            .filter(|(k, _)| in_range(k, prefix));
        let total = in_page.clone().count() as i64;
        let take = if limit > 0 {
            limit as usize
        } else {
            usize::MAX
        };
        let items: Vec<KeyValue> = in_page
            .take(take)
            .map(|(k, e)| KeyValue {
                key: k.clone(),
                value: e.value.clone(),
                mod_revision: e.mod_revision,
            })
            .collect();
        let remaining = (total - items.len() as i64).max(0);
        Ok(ListPage {
            more: remaining > 0,
            remaining,
            items,
            revision: at,
        })
    }

    fn watch_now(&self, prefix: &str, after_revision: i64, with_prev: bool) -> WatchStream {
        let mut st = self.lock();
        // etcd: a watch starting (after_revision + 1) before the
        // compaction point has lost history.
        if after_revision + 1 < st.compacted {
            let err = StoreError::Compacted {
                requested: after_revision,
                compacted: st.compacted,
            };
            return futures::stream::once(async move { Err(err) }).boxed();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        for change in st
            .history
            .iter()
            .filter(|c| c.revision > after_revision && in_range(&c.key, prefix))
        {
            let _ = tx.send(Ok(change.event(with_prev)));
        }
        let after = after_revision.max(st.revision);
        st.watchers.push(Watcher {
            prefix: prefix.to_string(),
            after,
            with_prev,
            tx,
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    fn compact_now(&self, revision: i64) -> Result<(), StoreError> {
        let mut st = self.lock();
        if revision > st.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
            });
        }
        if revision <= st.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: st.compacted,
            });
        }
        st.compacted = revision;
        while st.history.front().is_some_and(|c| c.revision < revision) {
            st.history.pop_front();
        }
        Ok(())
    }

    /// Writes `key` without a revision check (a lease-bound registration).
    fn put_now(&self, key: &str, value: Vec<u8>) {
        self.lock().apply(key, Some(value));
    }

    fn remove_if(&self, key: &str, value: &[u8]) {
        let mut st = self.lock();
        if st.keys.get(key).is_some_and(|e| e.value == value) {
            st.apply(key, None);
        }
    }
}

impl ObjectStore for MemoryStore {
    fn healthy(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move { Ok(self.lock().revision) })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            Ok(self.lock().keys.get(key).map(|e| KeyValue {
                key: key.to_string(),
                value: e.value.clone(),
                mod_revision: e.mod_revision,
            }))
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move { self.create_now(key, value) })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move { self.update_now(key, value, expected) })
    }

    fn delete<'a>(&'a self, key: &'a str, expected: i64) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move { self.delete_now(key, expected) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start: Option<&'a str>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        Box::pin(async move { self.list_now(prefix, start, limit, revision) })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move { Ok(self.watch_now(prefix, after_revision, true)) })
    }

    fn watch_without_prev<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move { Ok(self.watch_now(prefix, after_revision, false)) })
    }

    fn keep_registered(
        &self,
        key: String,
        value: Vec<u8>,
        _ttl: Duration,
        stop: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        // No lease to expire: the key lives until `stop`, which is all a
        // single process can observe of etcd's lease.
        Box::pin(async move {
            self.put_now(&key, value.clone());
            stop.cancelled().await;
            self.remove_if(&key, &value);
        })
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.compact_now(revision) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// The shared contract, as etcd passes it (tests/etcd_contract.rs).
    #[test]
    fn memory_store_keeps_the_contract() {
        rt().block_on(crate::contract::run_all(&MemoryStore::new()));
    }

    /// History before the compaction point is gone from the in-memory
    /// history itself, not just hidden (the store does not grow forever
    /// in long tests that compact).
    #[test]
    fn compaction_drops_history() {
        rt().block_on(async {
            let s = MemoryStore::new();
            for i in 0..10 {
                s.create(&format!("/k/{i}"), vec![1]).await.unwrap();
            }
            let rev = s.current_revision().await.unwrap();
            s.compact(rev - 2).await.unwrap();
            assert_eq!(s.lock().history.len(), 3);
            // The state at the compaction point is still readable.
            let page = s.list("/k/", None, 0, rev - 2).await.unwrap();
            assert_eq!(page.items.len(), 8);
        });
    }

    /// A watcher whose stream is dropped is forgotten at the next write.
    #[test]
    fn dropped_watchers_are_forgotten() {
        rt().block_on(async {
            let s = MemoryStore::new();
            let w = s.watch("/a/", 1).await.unwrap();
            assert_eq!(s.lock().watchers.len(), 1);
            drop(w);
            s.create("/a/x", vec![1]).await.unwrap();
            assert!(s.lock().watchers.is_empty());
        });
    }

    /// A registration holds its key until stopped, then removes it.
    #[test]
    fn registration_lives_until_stopped() {
        rt().block_on(async {
            let s = MemoryStore::new();
            let stop = CancellationToken::new();
            let reg = {
                let s = s.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    s.keep_registered(
                        "/r/me".into(),
                        b"1.2.3.4:6443".to_vec(),
                        Duration::from_secs(8),
                        stop,
                    )
                    .await
                })
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while s.values_under("/r/").await.unwrap().is_empty() {
                assert!(tokio::time::Instant::now() < deadline, "registered in time");
                tokio::task::yield_now().await;
            }
            assert_eq!(
                s.values_under("/r/").await.unwrap(),
                vec![b"1.2.3.4:6443".to_vec()]
            );
            stop.cancel();
            reg.await.unwrap();
            assert!(s.get("/r/me").await.unwrap().is_none());
        });
    }
}
