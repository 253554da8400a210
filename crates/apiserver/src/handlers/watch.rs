//! `watch`: from the watch cache or an etcd watch, with selectors applied
//! per event, bookmarks and the object, Table or metadata encodings.

use super::*;

/// Serializes one watch event as a line.
pub(super) fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The same line as [`event_line`] around an object already serialized
/// (once per event by the watch cache, for all its watchers). `kind` is
/// one of the fixed event types, which need no JSON escaping.
pub(super) fn event_line_with(kind: &str, object_json: &[u8]) -> Bytes {
    const HEAD: &[u8] = b"{\"type\":\"";
    const MID: &[u8] = b"\",\"object\":";
    const TAIL: &[u8] = b"}\n";
    let mut line =
        Vec::with_capacity(HEAD.len() + kind.len() + MID.len() + object_json.len() + TAIL.len());
    line.extend_from_slice(HEAD);
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(MID);
    line.extend_from_slice(object_json);
    line.extend_from_slice(TAIL);
    Bytes::from(line)
}

pub(super) struct WatchEncoder {
    rt: Arc<ResourceType>,
    answer: Answer,
    sent_columns: bool,
}

impl WatchEncoder {
    pub(super) fn encode(&mut self, kind: &str, obj: &Value) -> Bytes {
        match self.answer.as_ {
            AnswerAs::Table if kind != "BOOKMARK" && kind != "ERROR" => {
                let rv = obj["metadata"]["resourceVersion"].clone();
                let t = table::table(
                    &self.rt,
                    std::slice::from_ref(obj),
                    json!({"resourceVersion": rv}),
                    self.answer.include,
                    !self.sent_columns,
                );
                self.sent_columns = true;
                event_line(kind, &t)
            }
            AnswerAs::PartialMetadata if kind != "ERROR" => {
                event_line(kind, &table::partial_metadata(obj))
            }
            _ => event_line(kind, obj),
        }
    }

    /// [`WatchEncoder::encode`] for an event of the watch cache, reusing
    /// its shared serialization where the answer allows.
    pub(super) fn encode_cached(&mut self, kind: &str, ev: &CachedEvent) -> Bytes {
        match self.answer.as_ {
            // Rows depend on the watch (columns sent once, includeObject).
            AnswerAs::Table => self.encode(kind, &ev.object),
            AnswerAs::PartialMetadata => event_line_with(kind, ev.metadata_json()),
            AnswerAs::Object => event_line_with(kind, ev.object_json()),
        }
    }

    pub(super) fn bookmark(&self, rv: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}),
        )
    }
}

pub(super) async fn watch(ctx: Ctx<'_>) -> ApiResult<Response> {
    let rt = ctx.rt();
    let q = &ctx.query;
    let filters = Filters::from_query(rt, q)?;
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true");
    let bookmarks = q.flag("allowWatchBookmarks");
    let rv_param = q.get("resourceVersion").filter(|s| !s.is_empty());
    if send_initial.is_some() {
        if !bookmarks || q.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::new(
                422,
                "Invalid",
                "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled and allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
            ));
        }
    } else if q.get("resourceVersionMatch").is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch",
        ));
    }
    let timeout = match q.int("timeoutSeconds")? {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    let mut enc = WatchEncoder {
        rt: ctx.path.rt.clone(),
        answer: ctx.answer,
        sent_columns: false,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    // Initial state: a list (RV unset/"0" or sendInitialEvents=true), else
    // only changes after the given revision.
    let explicit_rv: Option<i64> = match rv_param {
        Some("0") | None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let prefix = rt.prefix(ctx.ns());
    let cache = ctx.state.caches.ready(rt).await;
    let trigger = filters.fields.as_ref().and_then(|f| Trigger::of(rt, f));
    let mut initial: Vec<Arc<Value>> = Vec::new();
    let mut subscription = None;
    let start_rev;
    if send_initial == Some(true) || explicit_rv.is_none() && send_initial != Some(false) {
        // resourceVersion=0 means "any state": the cache's, taken together
        // with the subscription so nothing falls between them. Otherwise
        // the initial state is a consistent read of etcd.
        let cached = match (rv_param, &cache) {
            (Some("0"), Some(cache)) => cache.snapshot_and_subscribe(&prefix, trigger.as_ref()),
            _ => None,
        };
        if let Some((snap, sub)) = cached {
            start_rev = snap.revision;
            initial = snap
                .objects
                .into_iter()
                .filter(|o| filters.matches(o))
                .collect();
            subscription = Some(sub);
        } else {
            let mut lq = q.clone();
            for k in [
                "limit",
                "continue",
                "resourceVersion",
                "resourceVersionMatch",
                "watch",
            ] {
                lq.remove(k);
            }
            let listing = Ctx {
                state: ctx.state,
                path: ctx.path.clone(),
                query: lq,
                answer: ctx.answer,
                node_scope: ctx.node_scope.clone(),
                identity: ctx.identity.clone(),
                warnings: Warnings::default(),
            };
            let (items, meta) = list_objects(&listing, &filters).await?;
            start_rev = meta["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            initial = items.into_iter().map(Arc::new).collect();
        }
    } else {
        start_rev = match explicit_rv {
            Some(rv) => rv,
            None => ctx.state.store.current_revision().await?,
        };
    }
    for obj in &initial {
        let _ = tx.try_send(Ok(enc.encode("ADDED", obj)));
    }
    if send_initial == Some(true) {
        let _ = tx.try_send(Ok(enc.bookmark(start_rev, true)));
    }
    let subscription = subscription.or_else(|| {
        cache
            .as_ref()
            .and_then(|c| c.subscribe(start_rev, trigger.as_ref()))
    });
    let out = WatchOut {
        tx,
        enc,
        filters,
        prefix: prefix.clone(),
        bookmarks,
        timeout,
        last_rev: start_rev,
        converts: (rt.strategy.conversion_webhook().is_some()
            || rt.strategy.convert_version().is_some())
        .then(|| ctx.state.clone()),
    };
    match subscription {
        Some(sub) => {
            tokio::spawn(out.serve_from_cache(sub));
        }
        None => {
            // The cache cannot serve this revision (not synced yet, or
            // older than its window): a watch of etcd's own history, which
            // answers 410 when that history is compacted.
            let stream = ctx.state.store.watch(&prefix, start_rev).await?;
            tokio::spawn(out.serve_from_etcd(stream));
        }
    }
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_default())
}

/// The watch event type a client sees for a change, given whether the
/// object matches its selectors after and before; `None` when the change
/// is invisible to it.
pub(super) fn visible_kind(kind: WatchEventKind, now: bool, before: bool) -> Option<&'static str> {
    match kind {
        WatchEventKind::Created if now => Some("ADDED"),
        WatchEventKind::Modified if now && before => Some("MODIFIED"),
        WatchEventKind::Modified if now => Some("ADDED"),
        WatchEventKind::Modified if before => Some("DELETED"),
        WatchEventKind::Deleted if now => Some("DELETED"),
        _ => None,
    }
}

/// The sending half of one client watch.
pub(super) struct WatchOut {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>,
    enc: WatchEncoder,
    filters: Filters,
    /// Keys outside it (other namespaces) are not this watch's.
    prefix: String,
    bookmarks: bool,
    timeout: Duration,
    last_rev: i64,
    /// The server, when each event read from etcd goes through the type's
    /// conversion webhook first.
    converts: Option<ApiState>,
}

impl WatchOut {
    /// Sends one change if this watch sees it; `false` once the client is
    /// gone. `cached` is the watch cache's event for it, whose shared
    /// serialization is reused.
    pub(super) async fn send_change(
        &mut self,
        kind: WatchEventKind,
        key: &str,
        obj: &Value,
        before: Option<&Value>,
        revision: i64,
        cached: Option<&CachedEvent>,
    ) -> bool {
        if revision <= self.last_rev || !key.starts_with(&self.prefix) {
            return true;
        }
        self.last_rev = revision;
        let now = self.filters.matches(obj);
        let before = before.map(|b| self.filters.matches(b)).unwrap_or(false);
        let Some(kind) = visible_kind(kind, now, before) else {
            return true;
        };
        let line = match cached {
            Some(ev) => self.enc.encode_cached(kind, ev),
            None => self.enc.encode(kind, obj),
        };
        self.tx.send(Ok(line)).await.is_ok()
    }

    /// Handles one event of the cache; `false` once the client is gone.
    pub(super) async fn send_cached(&mut self, ev: &CachedEvent) -> bool {
        if ev.kind == WatchEventKind::Progress {
            self.last_rev = self.last_rev.max(ev.revision);
            return true;
        }
        self.send_change(
            ev.kind,
            &ev.key,
            &ev.object,
            ev.prev.as_deref(),
            ev.revision,
            Some(ev),
        )
        .await
    }

    pub(super) async fn serve_from_cache(mut self, mut sub: Subscription) {
        use tokio::sync::broadcast::error::RecvError;
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        // Frequent bookmarks keep a client's resourceVersion recent even when
        // its selector matches nothing, so its next watch (kube-rs ends one
        // every 290 s) starts inside the cache's window instead of falling
        // back to an etcd watch of its own.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        for ev in std::mem::take(&mut sub.replay) {
            if !self.send_cached(&ev).await {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = tick.tick(), if self.bookmarks => {
                    // A watch with a trigger gets no progress events and
                    // few others: bookmark the cache's revision, once the
                    // events up to it are handled.
                    let Some((events, revision)) = sub.catch_up() else { break };
                    let mut open = true;
                    for ev in events {
                        open = self.send_cached(&ev).await;
                        if !open {
                            break;
                        }
                    }
                    self.last_rev = self.last_rev.max(revision);
                    if !open || self.tx.send(Ok(self.enc.bookmark(self.last_rev, false))).await.is_err() { break; }
                }
                _ = self.tx.closed() => break,
                ev = sub.live.recv() => match ev {
                    Ok(ev) => {
                        if !self.send_cached(&ev).await {
                            break;
                        }
                    }
                    // Fell behind the broadcast, or the cache re-listed:
                    // end the watch; the client re-watches from the last
                    // revision it got.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => break,
                },
            }
        }
    }

    pub(super) async fn serve_from_etcd(
        mut self,
        stream: impl futures::Stream<Item = Result<rke2_datastore::WatchEvent, StoreError>>,
    ) {
        let rt = self.enc.rt.clone();
        let mut stream = Box::pin(stream);
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = tick.tick(), if self.bookmarks => {
                    if self.tx.send(Ok(self.enc.bookmark(self.last_rev, false))).await.is_err() { break; }
                }
                _ = self.tx.closed() => break,
                ev = stream.next() => {
                    let Some(ev) = ev else { break };
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(StoreError::Compacted { requested, compacted }) => {
                            let st = ApiError::expired(format!("too old resource version: {requested} ({compacted})")).to_status();
                            let _ = self.tx.send(Ok(event_line("ERROR", &st))).await;
                            break;
                        }
                        Err(e) => {
                            let st = ApiError::internal(format!("watch of etcd failed: {e}")).to_status();
                            let _ = self.tx.send(Ok(event_line("ERROR", &st))).await;
                            break;
                        }
                    };
                    if ev.kind == WatchEventKind::Progress {
                        self.last_rev = self.last_rev.max(ev.revision);
                        continue;
                    }
                    let Ok(mut obj) = serde_json::from_slice::<Value>(&ev.value) else { continue };
                    objects::decorate(&rt, &mut obj, ev.revision);
                    let mut before = ev.prev_value.as_ref().and_then(|p| serde_json::from_slice::<Value>(p).ok());
                    if let Some(state) = &self.converts {
                        // The previous value only decides selector matches:
                        // it is converted with the object, in one call.
                        let mut objs = vec![obj];
                        if let Some(mut b) = before.take() {
                            objects::decorate(&rt, &mut b, ev.revision);
                            objs.push(b);
                        }
                        let desired = rt.api_version();
                        if let Err(e) = crate::crd::conversion::convert_for(state, &rt, &mut objs, &desired).await {
                            let _ = self.tx.send(Ok(event_line("ERROR", &e.to_status()))).await;
                            break;
                        }
                        let mut objs = objs.into_iter();
                        obj = match objs.next() { Some(o) => o, None => break };
                        before = objs.next();
                    }
                    if !self.send_change(ev.kind, &ev.key, &obj, before.as_ref(), ev.revision, None).await {
                        break;
                    }
                }
            }
        }
    }
}

pub(super) fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line around the cache's shared serialization is byte for byte
    /// the line of the per-watcher encoding, for every answer.
    #[test]
    fn cached_event_lines_are_the_per_watcher_lines() {
        let rt = registry::builtin_arc("", "v1", "configmaps").unwrap();
        let obj = json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {
                "name": "a", "namespace": "ns", "resourceVersion": "12",
                "labels": {"z": "1", "a": "2"},
                "annotations": {"q": "\"quoted\" \\ back\nslash \u{1}", "u": "ünï 🚀"},
                "ownerReferences": [{"kind": "X", "name": "o", "uid": "u", "apiVersion": "v1"}],
            },
            "data": {"n": "1.5e3", "e": "", "nested": "{\"k\":[1,2]}"},
            "binaryData": null,
            "immutable": false,
            "extra": {"num": 1.25, "neg": -7, "big": 18446744073709551615u64, "arr": [null, true, {}]},
        });
        let ev = CachedEvent::new(
            WatchEventKind::Modified,
            "/registry/configmaps/ns/a".into(),
            Arc::new(obj.clone()),
            None,
            12,
        );
        for kind in ["ADDED", "MODIFIED", "DELETED"] {
            assert_eq!(
                event_line_with(kind, ev.object_json()),
                event_line(kind, &obj)
            );
            for (as_, include) in [
                (AnswerAs::Object, IncludeObject::Object),
                (AnswerAs::PartialMetadata, IncludeObject::Object),
                (AnswerAs::Table, IncludeObject::Metadata),
            ] {
                let answer = Answer { as_, include };
                let mut per_watcher = WatchEncoder {
                    rt: rt.clone(),
                    answer,
                    sent_columns: false,
                };
                let mut cached = WatchEncoder {
                    rt: rt.clone(),
                    answer,
                    sent_columns: false,
                };
                let (a, b) = (
                    per_watcher.encode(kind, &obj),
                    cached.encode_cached(kind, &ev),
                );
                if matches!(as_, AnswerAs::Table) {
                    // Table cells hold ages, which may tick between the two.
                    let strip = |l: &Bytes| {
                        let mut v: Value = serde_json::from_slice(l).unwrap();
                        v["object"]["rows"][0]["cells"] = Value::Null;
                        v
                    };
                    assert_eq!(strip(&a), strip(&b));
                } else {
                    assert_eq!(a, b, "{kind} {as_:?}");
                }
                assert!(b.ends_with(b"}\n") && !b[..b.len() - 1].contains(&b'\n'));
            }
        }
    }
}
