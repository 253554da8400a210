//! The contract of [`ObjectStore`], as runnable checks.
//!
//! The same checks run against [`crate::MemoryStore`] (its unit tests)
//! and against a real etcd through [`crate::Store`]
//! (`tests/etcd_contract.rs`), so the in-memory store the verbs' unit
//! tests use cannot drift from what etcd does. Each check panics with a
//! message naming the broken rule. They need a store of their own (no
//! other writers: revisions are checked to move by exactly one per
//! write), and [`compaction`] compacts the whole keyspace.

use std::time::Duration;

use futures::StreamExt;

use crate::object_store::{ObjectStore, WatchStream};
use crate::store::{StoreError, WatchEvent, WatchEventKind};

/// How long a watch may take to deliver an event that already happened.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Runs every check, each under its own key prefix below `/contract/`.
pub async fn run_all(store: &dyn ObjectStore) {
    assert!(store.healthy().await, "a fresh store is healthy");
    revisions(store, "/contract/revisions/").await;
    create_update_delete(store, "/contract/writes/").await;
    list_pages(store, "/contract/list/").await;
    list_at_revision(store, "/contract/history/").await;
    watch_events(store, "/contract/watch/").await;
    too_large(store, "/contract/large/").await;
    concurrent_writers(store, "/contract/race/").await;
    registration(store, "/contract/registered/").await;
    // Last: it drops history for every prefix.
    compaction(store, "/contract/compact/").await;
}

async fn next_event(stream: &mut WatchStream, what: &str) -> Result<WatchEvent, StoreError> {
    loop {
        let ev = tokio::time::timeout(EVENT_WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no watch event in time: {what}"))
            .unwrap_or_else(|| panic!("the watch ended early: {what}"));
        // etcd may interleave progress notifications; they carry no change.
        if !matches!(&ev, Ok(e) if e.kind == WatchEventKind::Progress) {
            return ev;
        }
    }
}

/// One global revision: every write moves it by exactly one and returns
/// it; a key's mod revision is the revision of its last write.
pub async fn revisions(store: &dyn ObjectStore, p: &str) {
    let r0 = store.current_revision().await.expect("current revision");
    assert!(r0 >= 1, "revisions start at 1, got {r0}");
    let a = format!("{p}a");
    let b = format!("{p}b");
    let r1 = store.create(&a, b"1".to_vec()).await.expect("create a");
    assert_eq!(r1, r0 + 1, "a create takes the next revision");
    let r2 = store.create(&b, b"1".to_vec()).await.expect("create b");
    assert_eq!(r2, r1 + 1, "writes to different keys share one revision");
    let r3 = store.update(&a, b"2".to_vec(), r1).await.expect("update a");
    assert_eq!(r3, r2 + 1);
    assert_eq!(store.current_revision().await.unwrap(), r3);
    let kv = store.get(&a).await.unwrap().expect("a present");
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
        (a.as_str(), &b"2"[..], r3)
    );
    let kv = store.get(&b).await.unwrap().expect("b present");
    assert_eq!(kv.mod_revision, r2, "b's mod revision is its own write's");
    assert_eq!(store.get(&format!("{p}absent")).await.unwrap(), None);
    // Reads do not move the revision.
    store.list(p, None, 0, 0).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), r3);
}

/// Create fails when present; update and delete compare the mod revision.
pub async fn create_update_delete(store: &dyn ObjectStore, p: &str) {
    let k = format!("{p}k");
    let r1 = store.create(&k, b"one".to_vec()).await.expect("create");
    for bytes in [&b"other"[..], &b"one"[..]] {
        let again = store.create(&k, bytes.to_vec()).await;
        assert!(
            matches!(again, Err(StoreError::AlreadyExists)),
            "a second create fails even with the same bytes: {again:?}"
        );
    }
    let stale = store.update(&k, b"two".to_vec(), r1 - 1).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { expected, current }) if expected == r1 - 1 && current == r1),
        "an update at a stale revision is a conflict naming the current one: {stale:?}"
    );
    let r2 = store.update(&k, b"two".to_vec(), r1).await.expect("update");
    assert!(r2 > r1);
    assert_eq!(store.get(&k).await.unwrap().unwrap().value, b"two");
    let stale = store.delete(&k, r1).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { expected, current }) if expected == r1 && current == r2),
        "a delete at a stale revision is a conflict: {stale:?}"
    );
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().value,
        b"two",
        "a refused delete changes nothing"
    );
    let r3 = store.delete(&k, r2).await.expect("delete");
    assert_eq!(r3, r2 + 1, "a delete takes the next revision");
    assert_eq!(store.get(&k).await.unwrap(), None);
    let gone = store.delete(&k, r2).await;
    assert!(
        matches!(gone, Err(StoreError::NotFound)),
        "deleting a deleted key: {gone:?}"
    );
    let gone = store.update(&k, b"x".to_vec(), r2).await;
    assert!(
        matches!(gone, Err(StoreError::NotFound)),
        "updating a deleted key: {gone:?}"
    );
    // Revision 0 means "absent" (etcd's comparison): deleting an absent
    // key at 0 writes nothing, updating one at 0 creates it.
    assert_eq!(store.delete(&k, 0).await.expect("delete absent at 0"), r3);
    assert_eq!(
        store.current_revision().await.unwrap(),
        r3,
        "deleting nothing takes no revision"
    );
    let r4 = store
        .update(&k, b"new".to_vec(), 0)
        .await
        .expect("update absent at 0");
    assert_eq!(r4, r3 + 1);
    let again = store.update(&k, b"newer".to_vec(), 0).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { current, .. }) if current == r4),
        "an update at 0 of a present key is a conflict: {again:?}"
    );
    // A re-created key starts a new life: its first write is a creation.
    let mut w = store.watch(p, r3).await.expect("watch");
    let ev = next_event(&mut w, "the update at 0").await.unwrap();
    assert_eq!(
        (ev.kind, ev.revision, ev.prev_value),
        (WatchEventKind::Created, r4, None)
    );
}

/// Pages in key order with `more`/`remaining`, continuing from a start key.
pub async fn list_pages(store: &dyn ObjectStore, p: &str) {
    let dir = format!("{p}dir/");
    for name in ["c", "a", "e", "b", "d"] {
        store
            .create(&format!("{dir}{name}"), name.as_bytes().to_vec())
            .await
            .unwrap();
    }
    // Neighbours outside the prefix: a sibling sharing its first bytes,
    // and a key just past its end.
    store
        .create(&format!("{p}dir0"), b"x".to_vec())
        .await
        .unwrap();
    store
        .create(&format!("{p}dis"), b"x".to_vec())
        .await
        .unwrap();
    store
        .create(&format!("{p}di"), b"x".to_vec())
        .await
        .unwrap();
    let rev = store.current_revision().await.unwrap();
    let all = store.list(&dir, None, 0, 0).await.expect("list");
    let names: Vec<&str> = all
        .items
        .iter()
        .map(|kv| kv.key.trim_start_matches(&dir))
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c", "d", "e"],
        "every key under the prefix, in key order"
    );
    assert!(!all.more);
    assert_eq!(all.remaining, 0);
    assert_eq!(all.revision, rev, "a read now is at the current revision");
    assert_eq!(all.items[0].value, b"a");

    let first = store.list(&dir, None, 2, 0).await.unwrap();
    let names: Vec<&str> = first
        .items
        .iter()
        .map(|kv| kv.key.trim_start_matches(&dir))
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(first.more, "keys remain after a full page");
    assert_eq!(first.remaining, 3);
    let after = format!("{}\0", first.items[1].key);
    let second = store
        .list(&dir, Some(&after), 2, first.revision)
        .await
        .unwrap();
    let names: Vec<&str> = second
        .items
        .iter()
        .map(|kv| kv.key.trim_start_matches(&dir))
        .collect();
    assert_eq!(names, ["c", "d"]);
    assert_eq!(
        (second.more, second.remaining, second.revision),
        (true, 1, first.revision)
    );
    let from_d = store
        .list(&dir, Some(&format!("{dir}d")), 5, 0)
        .await
        .unwrap();
    let names: Vec<&str> = from_d
        .items
        .iter()
        .map(|kv| kv.key.trim_start_matches(&dir))
        .collect();
    assert_eq!(names, ["d", "e"], "the start key is inclusive");
    assert!(!from_d.more, "a page that reaches the end has no more");
    let exact = store.list(&dir, None, 5, 0).await.unwrap();
    assert!(!exact.more, "a page holding exactly the rest has no more");
    let empty = store.list(&format!("{p}none/"), None, 10, 0).await.unwrap();
    assert!(empty.items.is_empty() && !empty.more);
    let values = store.values_under(&dir).await.unwrap();
    assert_eq!(values.len(), 5);
}

/// Reads at an older revision see the keyspace as it was.
pub async fn list_at_revision(store: &dyn ObjectStore, p: &str) {
    let a = format!("{p}a");
    let b = format!("{p}b");
    let ra = store.create(&a, b"a1".to_vec()).await.unwrap();
    let rb = store.create(&b, b"b1".to_vec()).await.unwrap();
    let before = store.current_revision().await.unwrap();
    let ra2 = store.update(&a, b"a2".to_vec(), ra).await.unwrap();
    store.delete(&b, rb).await.unwrap();
    store
        .create(&format!("{p}c"), b"c1".to_vec())
        .await
        .unwrap();

    let now = store.list(p, None, 0, 0).await.unwrap();
    let seen: Vec<(&str, &[u8], i64)> = now
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
        .collect();
    assert_eq!(seen[0], (a.as_str(), &b"a2"[..], ra2));
    assert_eq!(seen.len(), 2, "b deleted, c created: {seen:?}");

    let then = store
        .list(p, None, 0, before)
        .await
        .expect("read at an older revision");
    assert_eq!(then.revision, before);
    let seen: Vec<(&str, &[u8], i64)> = then
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
        .collect();
    assert_eq!(
        seen,
        [(a.as_str(), &b"a1"[..], ra), (b.as_str(), &b"b1"[..], rb)],
        "the old values, the deleted key, not the later key"
    );
    let paged = store.list(p, None, 1, before).await.unwrap();
    assert_eq!(
        (paged.items.len(), paged.more, paged.remaining),
        (1, true, 1)
    );

    let future = store.current_revision().await.unwrap() + 100;
    let r = store.list(p, None, 0, future).await;
    assert!(
        matches!(r, Err(StoreError::FutureRevision { requested }) if requested == future),
        "a read at a revision not reached yet: {r:?}"
    );
}

/// Watches replay history after a revision with previous values, then
/// follow live changes; only keys under the prefix.
pub async fn watch_events(store: &dyn ObjectStore, p: &str) {
    let dir = format!("{p}dir/");
    let k = format!("{dir}k");
    let start = store.current_revision().await.unwrap();
    let r1 = store.create(&k, b"v1".to_vec()).await.unwrap();
    store
        .create(&format!("{p}dir0"), b"outside".to_vec())
        .await
        .unwrap();
    let r2 = store.update(&k, b"v2".to_vec(), r1).await.unwrap();
    let r3 = store.delete(&k, r2).await.unwrap();

    let mut w = store.watch(&dir, start).await.expect("watch");
    let ev = next_event(&mut w, "replayed create").await.unwrap();
    assert_eq!(
        (
            ev.kind,
            ev.key.as_str(),
            ev.value.as_slice(),
            ev.revision,
            ev.prev_value.as_deref()
        ),
        (WatchEventKind::Created, k.as_str(), &b"v1"[..], r1, None)
    );
    let ev = next_event(&mut w, "replayed update").await.unwrap();
    assert_eq!(
        (
            ev.kind,
            ev.value.as_slice(),
            ev.revision,
            ev.prev_value.as_deref()
        ),
        (WatchEventKind::Modified, &b"v2"[..], r2, Some(&b"v1"[..]))
    );
    let ev = next_event(&mut w, "replayed delete").await.unwrap();
    assert_eq!(
        (
            ev.kind,
            ev.value.as_slice(),
            ev.revision,
            ev.prev_value.as_deref()
        ),
        (WatchEventKind::Deleted, &b"v2"[..], r3, Some(&b"v2"[..])),
        "a deletion carries the last value"
    );
    // Live: a change after the watch started.
    let r4 = store
        .create(&format!("{dir}live"), b"l".to_vec())
        .await
        .unwrap();
    let ev = next_event(&mut w, "live create").await.unwrap();
    assert_eq!((ev.kind, ev.revision), (WatchEventKind::Created, r4));

    // From the middle of the history: only what came after.
    let mut w = store.watch(&dir, r2).await.unwrap();
    let ev = next_event(&mut w, "after r2").await.unwrap();
    assert_eq!((ev.kind, ev.revision), (WatchEventKind::Deleted, r3));

    // Without previous values: none on changes, no value on deletions.
    let mut w = store.watch_without_prev(&dir, r1).await.unwrap();
    let ev = next_event(&mut w, "update without prev").await.unwrap();
    assert_eq!(
        (ev.kind, ev.value.as_slice(), ev.prev_value),
        (WatchEventKind::Modified, &b"v2"[..], None)
    );
    let ev = next_event(&mut w, "delete without prev").await.unwrap();
    assert_eq!(
        (ev.kind, ev.value.is_empty(), ev.prev_value),
        (WatchEventKind::Deleted, true, None)
    );

    // A watch from a revision not reached yet starts there.
    let now = store.current_revision().await.unwrap();
    let mut w = store.watch(&dir, now + 2).await.unwrap();
    for i in 0..3 {
        store.create(&format!("{dir}f{i}"), vec![i]).await.unwrap();
    }
    let ev = next_event(&mut w, "future start").await.unwrap();
    assert_eq!(
        (ev.revision, ev.value.as_slice()),
        (now + 3, &[2][..]),
        "only changes after the start"
    );

    // A watch from the current revision sees only later changes, in order.
    let now = store.current_revision().await.unwrap();
    let mut w = store.watch(&dir, now).await.unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(store.create(&format!("{dir}n{i}"), vec![i]).await.unwrap());
    }
    for (i, rev) in written.iter().enumerate() {
        let ev = next_event(&mut w, "live sequence").await.unwrap();
        assert_eq!(
            (ev.revision, ev.value.as_slice()),
            (*rev, &[i as u8][..]),
            "live events in revision order"
        );
    }
}

/// Of concurrent creates of one key exactly one wins, and of concurrent
/// updates from the same revision exactly one lands.
pub async fn concurrent_writers(store: &dyn ObjectStore, p: &str) {
    let k = format!("{p}k");
    let creates = (0..8u8).map(|i| store.create(&k, vec![i]));
    let results = futures::future::join_all(creates).await;
    let won: Vec<usize> = (0..results.len()).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(won.len(), 1, "one create wins: {results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(StoreError::AlreadyExists))),
        "the others find it present: {results:?}"
    );
    let kv = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        kv.value,
        vec![won[0] as u8],
        "the winner's bytes are stored"
    );
    let updates = (0..8u8).map(|i| store.update(&k, vec![100 + i], kv.mod_revision));
    let results = futures::future::join_all(updates).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "one update lands: {results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(StoreError::Conflict { .. }))),
        "the others conflict: {results:?}"
    );
}

/// A registration is present while kept and gone once stopped.
pub async fn registration(store: &dyn ObjectStore, p: &str) {
    let key = format!("{p}me");
    let stop = tokio_util::sync::CancellationToken::new();
    let keep = store.keep_registered(
        key.clone(),
        b"10.0.0.1:6443".to_vec(),
        Duration::from_secs(8),
        stop.clone(),
    );
    let check = async {
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        while store.values_under(p).await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "registered in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            store.values_under(p).await.unwrap(),
            vec![b"10.0.0.1:6443".to_vec()]
        );
        stop.cancel();
    };
    tokio::time::timeout(EVENT_WAIT, futures::future::join(keep, check))
        .await
        .expect("the registration ends once stopped");
    assert_eq!(
        store.get(&key).await.unwrap(),
        None,
        "a stopped registration is gone"
    );
}

/// Writes etcd would refuse as too large are refused before they are sent.
pub async fn too_large(store: &dyn ObjectStore, p: &str) {
    let big = vec![b'x'; crate::etcd::MAX_REQUEST_BYTES];
    let k = format!("{p}big");
    let r = store.create(&k, big.clone()).await;
    assert!(
        matches!(r, Err(StoreError::TooLarge { .. })),
        "an oversized create: {r:?}"
    );
    let r0 = store.create(&k, b"small".to_vec()).await.unwrap();
    let r = store.update(&k, big, r0).await;
    assert!(
        matches!(r, Err(StoreError::TooLarge { .. })),
        "an oversized update: {r:?}"
    );
    // Just under the limit is fine.
    let fits = vec![b'y'; crate::etcd::MAX_REQUEST_BYTES - 4096];
    store
        .update(&k, fits, r0)
        .await
        .expect("a large write within the limit");
}

/// After compaction, older reads and watches answer `Compacted`; newer
/// ones work.
pub async fn compaction(store: &dyn ObjectStore, p: &str) {
    let k = format!("{p}k");
    let r1 = store.create(&k, b"1".to_vec()).await.unwrap();
    let r2 = store.update(&k, b"2".to_vec(), r1).await.unwrap();
    let r3 = store.update(&k, b"3".to_vec(), r2).await.unwrap();
    store.compact(r2).await.expect("compact");

    let r = store.list(p, None, 0, r1).await;
    assert!(
        matches!(r, Err(StoreError::Compacted { requested, .. }) if requested == r1),
        "a read before the compaction point: {r:?}"
    );
    let at = store
        .list(p, None, 0, r2)
        .await
        .expect("a read at the compaction point");
    assert_eq!(at.items[0].value, b"2");
    let mut w = store.watch(p, r1 - 1).await.expect("watch call");
    let first = next_event(&mut w, "compacted watch").await;
    assert!(
        matches!(first, Err(StoreError::Compacted { requested, .. }) if requested == r1 - 1),
        "a watch from before the compaction point ends with Compacted: {first:?}"
    );
    assert!(
        tokio::time::timeout(EVENT_WAIT, w.next())
            .await
            .expect("the watch ends")
            .is_none(),
        "nothing follows the error"
    );
    let mut w = store.watch(p, r2).await.unwrap();
    let ev = next_event(&mut w, "watch after the compaction point")
        .await
        .unwrap();
    assert_eq!(
        (ev.revision, ev.value.as_slice(), ev.prev_value.as_deref()),
        (r3, &b"3"[..], Some(&b"2"[..]))
    );
    let again = store.compact(r1).await;
    assert!(
        matches!(again, Err(StoreError::Compacted { .. })),
        "compacting an older revision: {again:?}"
    );
    let future = store.compact(r3 + 100).await;
    assert!(
        matches!(future, Err(StoreError::FutureRevision { .. })),
        "compacting the future: {future:?}"
    );
}
