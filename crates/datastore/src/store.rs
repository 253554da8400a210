//! Revision-checked access to etcd's keyspace.
//!
//! Every write is one etcd transaction that compares a key's mod revision
//! before writing, so concurrent writers never overwrite each other
//! silently: the loser learns the current value and revision instead.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::Stream;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A create found the key already present.
    #[error("key already exists")]
    AlreadyExists,
    /// The key is absent.
    #[error("key not found")]
    NotFound,
    /// The key's revision differs from the expected one.
    #[error("revision conflict: expected {expected}, current {current}")]
    Conflict {
        /// The revision the caller based its change on.
        expected: i64,
        /// The revision currently stored.
        current: i64,
    },
    /// The requested revision has been compacted away.
    #[error("required revision {requested} has been compacted (oldest available {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction revision reported by etcd (0 when unknown).
        compacted: i64,
    },
    /// etcd could not be reached or answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A read at a revision the store has not reached yet.
    #[error("required revision {requested} is a future revision")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
    },
    /// A write larger than etcd accepts in one request; refused before it
    /// is sent, since etcd's own refusal reads as an outage to clients.
    #[error("the write is {size} bytes; etcd accepts at most {limit} bytes per request")]
    TooLarge {
        /// The bytes the request would carry (key and value).
        size: usize,
        /// What the request may carry at most.
        limit: usize,
    },
    /// A stored value that the encryption configuration cannot read
    /// (see [`crate::encryption`]).
    #[error("{key}: {message}")]
    Transform {
        /// The etcd key.
        key: String,
        /// Why it cannot be read.
        message: String,
    },
}

/// The most a response from etcd may hold. etcd sends lists and watch
/// batches of any size its members hold; the gRPC default of 4 MiB would
/// turn a list of a few large objects into an error (kube-apiserver also
/// lifts the limit).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// Refuses a put of `value` at `key` that etcd would refuse as too large.
/// The transaction sends the key three times (compare, put, read-back)
/// plus framing, which the margin covers.
pub(crate) fn check_size(key: &str, value: &[u8]) -> Result<(), StoreError> {
    let size = value.len() + 3 * key.len() + 1024;
    let limit = crate::etcd::MAX_REQUEST_BYTES;
    if size > limit {
        return Err(StoreError::TooLarge { size, limit });
    }
    Ok(())
}

impl StoreError {
    fn from_etcd(e: etcd_client::Error, requested: i64) -> Self {
        let text = e.to_string();
        if text.contains("compacted") {
            StoreError::Compacted {
                requested,
                compacted: 0,
            }
        } else if text.contains("future revision") {
            StoreError::FutureRevision { requested }
        } else {
            StoreError::Etcd(e)
        }
    }
}

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The revision of the last change to this key.
    pub mod_revision: i64,
}

/// One page of a range read.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The keys in this page, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the whole read is consistent at.
    pub revision: i64,
    /// Whether keys remain after this page.
    pub more: bool,
    /// How many keys in the range remain after this page.
    pub remaining: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The key was created.
    Created,
    /// The key was changed.
    Modified,
    /// The key was deleted.
    Deleted,
    /// No change; the watch has seen everything up to `revision`.
    Progress,
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchEventKind,
    /// The key (empty for progress).
    pub key: String,
    /// The new value, or for deletes the last value before deletion.
    pub value: Vec<u8>,
    /// The revision of this change.
    pub revision: i64,
    /// The value before this change, when there was one.
    pub prev_value: Option<Vec<u8>>,
}

/// TLS material for talking to etcd.
#[derive(Debug, Clone)]
pub struct StoreTls {
    /// The etcd server CA (PEM).
    pub ca_pem: String,
    /// Client certificate (PEM).
    pub cert_pem: String,
    /// Client key (PEM).
    pub key_pem: String,
}

/// A handle to etcd's keyspace; cheap to clone.
///
/// It keeps one connection per etcd member and sends each request to the
/// member that answered last, moving on to the next member when one is
/// unreachable or has no leader. (etcd-client's own balancing keeps
/// routing to a dead member, which would fail a share of all requests
/// while any one server is down.)
#[derive(Clone)]
pub struct Store {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    tls: Option<StoreTls>,
    endpoints: std::sync::Mutex<Vec<Endpoint>>,
    current: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
struct Endpoint {
    url: String,
    client: Option<Client>,
}

/// Whether a failed request may be sent to another member: the member was
/// unreachable, is a learner, or has no leader.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC codes: 2 Unknown, 4 DeadlineExceeded, 14 Unavailable.
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code() as i32, 2 | 4 | 14) || s.message().contains("learner")
        }
        _ => false,
    }
}

fn kv(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        mod_revision: k.mod_revision(),
    }
}

/// The key just after every key with this prefix (etcd's range end).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store {
    /// Prepares connections to etcd at the given endpoints (in order of
    /// preference). Connections are made on first use, so members that are
    /// down now are simply skipped until they come back.
    pub async fn connect(endpoints: &[String], tls: Option<&StoreTls>) -> Result<Self, StoreError> {
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                tls: tls.cloned(),
                endpoints: std::sync::Mutex::new(
                    endpoints
                        .iter()
                        .map(|u| Endpoint {
                            url: u.clone(),
                            client: None,
                        })
                        .collect(),
                ),
                current: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    async fn client_at(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let url = {
            let eps = self.inner.endpoints.lock().expect("endpoint lock");
            let ep = &eps[i % eps.len()];
            if let Some(c) = &ep.client {
                return Ok(c.clone());
            }
            ep.url.clone()
        };
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(15))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(t) = &self.inner.tls {
            opts = opts.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&t.ca_pem))
                    .identity(Identity::from_pem(&t.cert_pem, &t.key_pem)),
            );
        }
        let client = Client::connect([url.as_str()], Some(opts)).await?;
        let mut eps = self.inner.endpoints.lock().expect("endpoint lock");
        if let Some(ep) = eps.iter_mut().find(|e| e.url == url) {
            ep.client = Some(client.clone());
        }
        Ok(client)
    }

    /// Runs `f` against the current member, failing over to the others.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        use std::sync::atomic::Ordering;
        let n = self
            .inner
            .endpoints
            .lock()
            .expect("endpoint lock")
            .len()
            .max(1);
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last = None;
        // Two rounds: a leader election in progress fails every member for
        // a moment; the pause between rounds lets it finish.
        for attempt in 0..2 * n {
            if attempt == n {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let i = (start + attempt) % n;
            let client = match self.client_at(i).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match f(client).await {
                Ok(v) => {
                    if i != start {
                        self.inner.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if retryable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoints".into())))
    }

    /// Makes `url` the preferred member (this server's own, once it votes).
    pub fn prefer(&self, url: &str) {
        let eps = self.inner.endpoints.lock().expect("endpoint lock");
        if let Some(i) = eps.iter().position(|e| e.url == url) {
            self.inner
                .current
                .store(i, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether etcd answers a linearizable read now.
    pub async fn healthy(&self) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(3),
                self.call(|mut c| async move { c.get("health", None).await })
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The current revision of the whole keyspace.
    pub async fn current_revision(&self) -> Result<i64, StoreError> {
        let resp = self
            .call(|mut c| async move {
                c.get("/", Some(GetOptions::new().with_count_only().with_limit(1)))
                    .await
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .call(|mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.kvs().first().map(kv))
    }

    /// Creates a key that must not exist yet; returns the new revision.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        check_size(key, &value)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let resp = self
            .call(|mut c| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            // A retried request whose first attempt committed (the answer
            // was lost with its etcd member) finds its own bytes: success.
            // Only after a retry: on a first attempt, equal bytes are
            // another writer's (claim keys all hold the same bytes).
            if attempts.into_inner() > 1
                && let Some(rev) = own_write(&resp.op_responses(), &value)
            {
                return Ok(rev);
            }
            return Err(StoreError::AlreadyExists);
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Replaces a key whose mod revision must equal `expected`; returns the
    /// new revision. On a mismatch the caller gets the current revision.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> Result<i64, StoreError> {
        check_size(key, &value)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let resp = self
            .call(|mut c| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        // See `create`: our own write, committed by an earlier attempt.
        if attempts.into_inner() > 1
            && let Some(rev) = own_write(&resp.op_responses(), &value)
        {
            return Ok(rev);
        }
        match current_of(&resp.op_responses()) {
            Some(current) => Err(StoreError::Conflict { expected, current }),
            None => Err(StoreError::NotFound),
        }
    }

    /// Deletes a key whose mod revision must equal `expected`; returns the
    /// revision of the deletion.
    pub async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        match current_of(&resp.op_responses()) {
            Some(current) => Err(StoreError::Conflict { expected, current }),
            None => Err(StoreError::NotFound),
        }
    }

    /// Reads up to `limit` keys (0 = all) under `prefix`, starting at
    /// `start` (inclusive; `None` = the prefix itself), consistent at
    /// `revision` (0 = now).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: i64,
        revision: i64,
    ) -> Result<ListPage, StoreError> {
        let from = start.unwrap_or(prefix);
        let mut opts = GetOptions::new().with_range(prefix_end(prefix));
        if limit > 0 {
            opts = opts.with_limit(limit);
        }
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = self
            .call(|c| {
                let opts = opts.clone();
                async move {
                    c.kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .get(from, Some(opts))
                        .await
                }
            })
            .await
            .map_err(|e| StoreError::from_etcd(e, revision))?;
        let items: Vec<KeyValue> = resp.kvs().iter().map(kv).collect();
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let remaining = (resp.count() - items.len() as i64).max(0);
        Ok(ListPage {
            more: resp.more(),
            remaining,
            items,
            revision: if revision > 0 { revision } else { rev },
        })
    }

    /// Watches every key under `prefix` for changes after `after_revision`.
    ///
    /// The stream ends with `Err(Compacted)` when that history is gone, or
    /// with `Err(Etcd)` when the connection breaks; callers re-list then.
    pub async fn watch(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> Result<impl Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static, StoreError>
    {
        self.watch_with(prefix, after_revision, true).await
    }

    /// Like [`Store::watch`], but events carry no previous value, and
    /// deletions no value at all: for a watcher that keeps the current
    /// values itself (etcd then need not read the old value per event).
    pub async fn watch_without_prev(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> Result<impl Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static, StoreError>
    {
        self.watch_with(prefix, after_revision, false).await
    }

    async fn watch_with(
        &self,
        prefix: &str,
        after_revision: i64,
        prev: bool,
    ) -> Result<impl Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static, StoreError>
    {
        let mut opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after_revision + 1)
            .with_progress_notify();
        if prev {
            opts = opts.with_prev_key();
        }
        let stream = self
            .call(|c| {
                let opts = opts.clone();
                async move {
                    c.watch_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .watch(prefix, Some(opts))
                        .await
                }
            })
            .await?;
        let (_sender, responses) = stream.split();
        let state = (responses, std::collections::VecDeque::new(), false, _sender);
        Ok(futures::stream::unfold(
            state,
            move |(mut responses, mut pending, ended, sender)| async move {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (responses, pending, ended, sender)));
                }
                if ended {
                    return None;
                }
                loop {
                    match responses.message().await {
                        Ok(Some(resp)) => {
                            if resp.compact_revision() > 0 {
                                let err = StoreError::Compacted {
                                    requested: after_revision,
                                    compacted: resp.compact_revision(),
                                };
                                return Some((Err(err), (responses, pending, true, sender)));
                            }
                            if resp.canceled() {
                                let err = StoreError::Etcd(etcd_client::Error::WatchError(
                                    format!("watch canceled: {}", resp.cancel_reason()),
                                ));
                                return Some((Err(err), (responses, pending, true, sender)));
                            }
                            let header_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                            if resp.events().is_empty() {
                                if resp.created() {
                                    continue;
                                }
                                let ev = WatchEvent {
                                    kind: WatchEventKind::Progress,
                                    key: String::new(),
                                    value: Vec::new(),
                                    revision: header_rev,
                                    prev_value: None,
                                };
                                return Some((Ok(ev), (responses, pending, false, sender)));
                            }
                            for e in resp.events() {
                                let Some(k) = e.kv() else { continue };
                                let ev = match e.event_type() {
                                    EventType::Put => WatchEvent {
                                        kind: if k.create_revision() == k.mod_revision() {
                                            WatchEventKind::Created
                                        } else {
                                            WatchEventKind::Modified
                                        },
                                        key: String::from_utf8_lossy(k.key()).into_owned(),
                                        value: k.value().to_vec(),
                                        revision: k.mod_revision(),
                                        prev_value: e.prev_kv().map(|p| p.value().to_vec()),
                                    },
                                    EventType::Delete => WatchEvent {
                                        kind: WatchEventKind::Deleted,
                                        key: String::from_utf8_lossy(k.key()).into_owned(),
                                        value: e
                                            .prev_kv()
                                            .map(|p| p.value().to_vec())
                                            .unwrap_or_default(),
                                        revision: k.mod_revision(),
                                        prev_value: e.prev_kv().map(|p| p.value().to_vec()),
                                    },
                                };
                                pending.push_back(ev);
                            }
                            if let Some(ev) = pending.pop_front() {
                                return Some((Ok(ev), (responses, pending, false, sender)));
                            }
                        }
                        Ok(None) => return None,
                        Err(e) => {
                            return Some((
                                Err(StoreError::Etcd(e)),
                                (responses, pending, true, sender),
                            ));
                        }
                    }
                }
            },
        ))
    }

    /// Compacts etcd's history up to `revision` and waits until the
    /// compaction is applied: reads at older revisions and watches from
    /// before it then answer [`StoreError::Compacted`].
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            c.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        })
        .await
        .map_err(|e| StoreError::from_etcd(e, revision))?;
        Ok(())
    }

    /// Adds a member's client URL to the ones this store may use; `false`
    /// when it was known already.
    pub(crate) fn note_endpoint(&self, url: &str) -> bool {
        let mut eps = self.inner.endpoints.lock().expect("endpoint lock");
        if eps.iter().any(|e| e.url == url) {
            return false;
        }
        eps.push(Endpoint {
            url: url.to_string(),
            client: None,
        });
        true
    }
}

/// The revision of the current value when it is exactly `value`.
fn own_write(ops: &[TxnOpResponse], value: &[u8]) -> Option<i64> {
    ops.iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .filter(|k| k.value() == value)
            .map(|k| k.mod_revision()),
        _ => None,
    })
}

fn current_of(ops: &[TxnOpResponse]) -> Option<i64> {
    ops.iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(|k| k.mod_revision()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
    }
}
