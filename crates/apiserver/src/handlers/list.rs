//! Reads: `get` of one object and `list`, from etcd or the watch cache,
//! with selectors, paging (`continue`) and resourceVersion semantics.

use super::*;

pub(super) async fn get(ctx: &Ctx<'_>) -> ApiResult<Response> {
    let name = ctx.path.name.as_deref().unwrap_or("");
    let min = minimum_revision(&ctx.query);
    if min > 0 {
        wait_until_fresh(ctx, min).await?;
    }
    let (obj, _) = read_object(ctx, name).await?;
    Ok(json_response(
        StatusCode::OK,
        &shape_one(ctx.rt(), obj, ctx.answer),
    ))
}

pub(super) struct Filters {
    pub(super) labels: Option<LabelSelector>,
    pub(super) fields: Option<FieldSelector>,
}

impl Filters {
    pub(super) fn from_query(rt: &ResourceType, q: &Query) -> ApiResult<Self> {
        let labels = match q.get("labelSelector").filter(|s| !s.is_empty()) {
            Some(s) => Some(
                rke2_apimachinery::selectors::parse_label_selector(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            None => None,
        };
        let fields = match q.get("fieldSelector").filter(|s| !s.is_empty()) {
            Some(s) => {
                let f = rke2_apimachinery::selectors::parse_field_selector(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                for field in f.fields() {
                    if !rt.supports_field(field) {
                        return Err(ApiError::bad_request(format!(
                            "field label not supported: {field}"
                        )));
                    }
                }
                Some(f)
            }
            None => None,
        };
        Ok(Self { labels, fields })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        if let Some(l) = &self.labels
            && !l.matches_value(obj["metadata"].get("labels"))
        {
            return false;
        }
        if let Some(f) = &self.fields
            && !f.matches(obj)
        {
            return false;
        }
        true
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

pub(super) fn encode_continue(rv: i64, start: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).unwrap_or_default())
}

pub(super) fn decode_continue(s: &str) -> ApiResult<ContinueToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))
}

/// How long a read waits for the store to reach a resourceVersion a
/// client asked for (upstream's watch cache blocks 3 s).
pub(super) const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The revision a read must not be older than: `resourceVersion=N` with
/// `NotOlderThan` or `Exact`, or without a match on a whole list (N > 0).
pub(super) fn minimum_revision(q: &Query) -> i64 {
    let rv = q
        .get("resourceVersion")
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    match q.get("resourceVersionMatch").filter(|s| !s.is_empty()) {
        None | Some("NotOlderThan") | Some("Exact") => rv.max(0),
        Some(_) => 0,
    }
}

/// Waits until the store has reached revision `min`, at most
/// [`FRESHNESS_WAIT`]; then answers as upstream does for a revision
/// ahead of the store: 504 "Too large resource version", never an older
/// state.
pub(super) async fn wait_until_fresh(ctx: &Ctx<'_>, min: i64) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
    loop {
        let current = ctx.state.store.current_revision().await?;
        if current >= min {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::too_large_resource_version(min, current));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The objects of one list request, with the list metadata; a list whose
/// resourceVersion is ahead of the store waits for it (see
/// [`wait_until_fresh`]).
pub(super) async fn list_objects(
    ctx: &Ctx<'_>,
    filters: &Filters,
) -> ApiResult<(Vec<Value>, Value)> {
    let min = if ctx.query.get("continue").is_some_and(|c| !c.is_empty()) {
        0
    } else {
        minimum_revision(&ctx.query)
    };
    let (items, meta) = match list_objects_once(ctx, filters).await {
        Err(e) if e.reason == "FutureRevision" => {
            wait_until_fresh(ctx, min).await?;
            return list_objects_once(ctx, filters).await;
        }
        other => other?,
    };
    let listed = meta["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    if listed >= min {
        return Ok((items, meta));
    }
    wait_until_fresh(ctx, min).await?;
    list_objects_once(ctx, filters).await
}

pub(super) async fn list_objects_once(
    ctx: &Ctx<'_>,
    filters: &Filters,
) -> ApiResult<(Vec<Value>, Value)> {
    let rt = ctx.rt();
    let q = &ctx.query;
    let prefix = rt.prefix(ctx.ns());
    let limit = q.int("limit")?.unwrap_or(0).max(0);
    let rv_param = q.get("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = q.get("resourceVersionMatch").filter(|s| !s.is_empty());
    let (mut revision, mut start) = (0i64, prefix.clone());
    if let Some(c) = q.get("continue").filter(|s| !s.is_empty()) {
        if rv_param.is_some() && rv_param != Some("0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let tok = decode_continue(c)?;
        revision = tok.rv;
        start = format!("{prefix}{}", tok.start);
    } else {
        let rv: Option<i64> = match rv_param {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
            ),
            None => None,
        };
        if rv_match.is_some() && rv.is_none() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        match (rv_match, rv) {
            (Some("Exact"), Some(0)) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            (Some("Exact"), Some(n)) => revision = n,
            (None, Some(n)) if n > 0 && limit > 0 => revision = n,
            (Some("NotOlderThan") | None, _) => {}
            (Some(other), _) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("resourceVersionMatch: Unsupported value: \"{other}\""),
                ));
            }
        }
    }
    // resourceVersion=0 asks for any recent state: served from the watch
    // cache once it is synced, whole (kube-apiserver ignores `limit` there
    // too; clients see no `continue` and take the list as complete).
    if rv_param == Some("0")
        && q.get("continue").is_none_or(|c| c.is_empty())
        && let Some(cache) = ctx.state.caches.ready(rt).await
        && let Some(snap) = cache.snapshot(&prefix)
    {
        let items = snap
            .objects
            .iter()
            .filter(|o| filters.matches(o))
            .map(|o| Value::clone(o))
            .collect();
        return Ok((items, json!({"resourceVersion": snap.revision.to_string()})));
    }
    let mut items = Vec::new();
    let mut more;
    let mut remaining;
    let mut last_key: Option<String> = None;
    loop {
        let page = ctx
            .state
            .store
            .list(&prefix, Some(&start), if limit > 0 { limit } else { 0 }, revision)
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } if q.get("continue").is_some() => ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."),
                other => other.into(),
            })?;
        revision = page.revision;
        more = page.more;
        remaining = page.remaining;
        let mut objs = Vec::with_capacity(page.items.len());
        let mut keys = Vec::with_capacity(page.items.len());
        for KeyValue {
            key,
            value,
            mod_revision,
        } in page.items
        {
            objs.push(objects::from_stored(rt, &value, mod_revision)?);
            keys.push(key);
        }
        // Selectors see the version requested, as upstream's do.
        to_served(ctx, &mut objs).await?;
        for (key, obj) in keys.into_iter().zip(objs) {
            last_key = Some(key);
            if filters.matches(&obj) {
                items.push(obj);
                if limit > 0 && items.len() as i64 >= limit {
                    break;
                }
            }
        }
        let full = limit > 0 && items.len() as i64 >= limit;
        if !more || full || limit == 0 {
            if full {
                // There may be more after the last key we returned.
                more = more || remaining > 0;
            }
            break;
        }
        start = format!("{}\u{0}", last_key.clone().unwrap_or_default());
    }
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if limit > 0
        && more
        && let Some(k) = &last_key
    {
        let rel = k.strip_prefix(&prefix).unwrap_or(k);
        meta["continue"] = json!(encode_continue(revision, &format!("{rel}\u{0}")));
        if filters.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok((items, meta))
}

pub(super) async fn list(ctx: &Ctx<'_>) -> ApiResult<Response> {
    let rt = ctx.rt();
    let filters = Filters::from_query(rt, &ctx.query)?;
    let (items, meta) = list_objects(ctx, &filters).await?;
    let body = match ctx.answer.as_ {
        AnswerAs::Table => table::table(rt, &items, meta, ctx.answer.include, true),
        AnswerAs::PartialMetadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "items": items.iter().map(table::partial_metadata).collect::<Vec<_>>(),
        }),
        AnswerAs::Object => json!({
            "kind": rt.list_kind(),
            "apiVersion": rt.api_version(),
            "metadata": meta,
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "a\u{0}");
        let d = decode_continue(&t).unwrap();
        assert_eq!(
            (d.rv, d.start.as_str(), d.v.as_str()),
            (42, "a\u{0}", "meta.k8s.io/v1")
        );
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
    }
}
