//! What the apiserver needs of object storage, as a trait.
//!
//! The verbs of the Kubernetes API only need etcd's data model: string
//! keys, byte values, one global revision that every write increments,
//! compare-on-revision writes, paged range reads at a revision, and
//! watches that replay history from a revision. [`ObjectStore`] names
//! exactly that, so the verbs run over the real etcd ([`crate::Store`])
//! in a server and over [`crate::MemoryStore`] in unit tests. etcd's
//! cluster membership is not part of it: the supervisor keeps the
//! concrete [`crate::Store`] for that.
//!
//! The semantics (checked for both implementations by
//! [`crate::contract`]):
//! - The revision starts at 1 on an empty store; every successful write
//!   (create, update, delete of a present key) makes it one higher and
//!   returns it, and the key's `mod_revision` becomes that revision.
//! - `create` fails with [`StoreError::AlreadyExists`] when the key is
//!   present. `update` and `delete` compare the key's `mod_revision` with
//!   `expected` (0 meaning "absent"): a mismatch is
//!   [`StoreError::Conflict`] with the current revision, or
//!   [`StoreError::NotFound`] when the key is absent.
//! - `list` reads keys under a prefix in key order from `start`
//!   (inclusive), at most `limit` (0 = all), consistent at `revision`
//!   (0 = now); `more`/`remaining` tell what is left. A revision older
//!   than the compaction point is [`StoreError::Compacted`], a revision
//!   not reached yet [`StoreError::FutureRevision`].
//! - `watch` yields every change under a prefix after `after_revision`,
//!   in revision order, with the previous value; a start older than the
//!   compaction point yields [`StoreError::Compacted`] as the stream's
//!   first item.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::store::{KeyValue, ListPage, Store, StoreError, WatchEvent};

/// The changes a watch yields; it ends after an error.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// An object store shared by every request of an apiserver.
pub type SharedStore = Arc<dyn ObjectStore>;

/// Revision-checked key-value storage with etcd's semantics (see the
/// module documentation). Methods return boxed futures so the trait can
/// be used as `dyn ObjectStore`.
pub trait ObjectStore: Send + Sync + 'static {
    /// Whether the store answers a linearizable read now.
    fn healthy(&self) -> BoxFuture<'_, bool>;

    /// The current revision of the whole keyspace.
    fn current_revision(&self) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Reads one key.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;

    /// Creates a key that must not exist yet; returns the new revision.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>)
    -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Replaces a key whose mod revision must equal `expected`; returns
    /// the new revision.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Deletes a key whose mod revision must equal `expected`; returns the
    /// revision of the deletion.
    fn delete<'a>(&'a self, key: &'a str, expected: i64) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Reads up to `limit` keys (0 = all) under `prefix`, starting at
    /// `start` (inclusive; `None` = the prefix itself), consistent at
    /// `revision` (0 = now).
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start: Option<&'a str>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>>;

    /// Watches every key under `prefix` for changes after
    /// `after_revision`; events carry the previous value, and deletions
    /// the last value.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>>;

    /// Like [`ObjectStore::watch`], but events carry no previous value and
    /// deletions no value (for watchers that keep the values themselves).
    fn watch_without_prev<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>>;

    /// Keeps `key = value` present while this process lives and until
    /// `stop` is cancelled; then the key goes. etcd binds the key to a
    /// lease of `ttl`, so a dead process's key expires too.
    fn keep_registered(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
        stop: CancellationToken,
    ) -> BoxFuture<'_, ()>;

    /// Drops the history before `revision`: reads at older revisions and
    /// watches from before it answer [`StoreError::Compacted`]. The
    /// apiserver never calls it (etcd compacts itself every 5 minutes);
    /// it is how tests reach the "too old resource version" paths.
    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The values of every key under a prefix.
    fn values_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let page = self.list(prefix, None, 0, 0).await?;
            Ok(page.items.into_iter().map(|kv| kv.value).collect())
        })
    }
}

impl ObjectStore for Store {
    fn healthy(&self) -> BoxFuture<'_, bool> {
        Box::pin(Store::healthy(self))
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(Store::current_revision(self))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(Store::get(self, key))
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(Store::create(self, key, value))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(Store::update(self, key, value, expected))
    }

    fn delete<'a>(&'a self, key: &'a str, expected: i64) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(Store::delete(self, key, expected))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start: Option<&'a str>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        Box::pin(Store::list(self, prefix, start, limit, revision))
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move { Ok(Store::watch(self, prefix, after_revision).await?.boxed()) })
    }

    fn watch_without_prev<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            Ok(Store::watch_without_prev(self, prefix, after_revision)
                .await?
                .boxed())
        })
    }

    fn keep_registered(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
        stop: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(Store::keep_registered(self, key, value, ttl, stop))
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::compact(self, revision))
    }

    fn values_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>> {
        Box::pin(Store::values_under(self, prefix))
    }
}
