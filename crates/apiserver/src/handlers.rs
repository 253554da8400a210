//! The verbs on resources: get, list, watch, create, update, patch, delete,
//! and the `status`, `binding` and `finalize` subresources.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, StatusCode};
use rke2_apimachinery::selectors::{FieldSelector, LabelSelector};
use rke2_datastore::{KeyValue, StoreError, WatchEventKind};
use serde_json::{Value, json};

use crate::objects::{self, name_of};
use crate::registry::{self, ResourceType};
use crate::request::{AnswerAs, BodyType, Query, ResourcePath, decode_body};
use crate::schema::{self, FieldValidation, StrictFindings};
use crate::status::{ApiError, ApiResult, success_status};
use crate::table::{self, IncludeObject};
use crate::watch_cache::{CachedEvent, Subscription, Trigger};
use crate::{ApiState, Identity};

/// How a handler shapes its answer.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// Object, Table or metadata.
    pub as_: AnswerAs,
    /// Row objects of a Table.
    pub include: IncludeObject,
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn shape_one(rt: &ResourceType, obj: Value, ans: Answer) -> Value {
    match ans.as_ {
        AnswerAs::Object => obj,
        AnswerAs::PartialMetadata => table::partial_metadata(&obj),
        AnswerAs::Table => {
            let rv = obj["metadata"]["resourceVersion"].clone();
            table::table(
                rt,
                &[obj],
                json!({"resourceVersion": rv}),
                ans.include,
                true,
            )
        }
    }
}

/// Everything one resource request needs.
pub struct Ctx<'a> {
    /// Shared server state.
    pub state: &'a ApiState,
    /// What the path named.
    pub path: ResourcePath,
    /// Query parameters.
    pub query: Query,
    /// Answer shape.
    pub answer: Answer,
    /// The node this request acts for, when a node (not an admin) sent it:
    /// handlers then check the object belongs to that node.
    pub node_scope: Option<String>,
    /// Who sent the request (after impersonation): admission that depends
    /// on the user (RBAC escalation prevention) reads it.
    pub identity: Identity,
    /// `Warning` headers for the answer (unknown or duplicate fields under
    /// `fieldValidation=Warn`).
    pub warnings: Warnings,
}

/// Texts the answer carries as `Warning: 299 - "<text>"` headers.
#[derive(Debug, Default)]
pub struct Warnings(std::sync::Mutex<Vec<String>>);

impl Warnings {
    pub(crate) fn push(&self, text: String) {
        if let Ok(mut w) = self.0.lock() {
            w.push(text);
        }
    }

    fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}

impl Ctx<'_> {
    fn rt(&self) -> &'static ResourceType {
        self.path.rt
    }

    fn ns(&self) -> Option<&str> {
        if self.path.rt.namespaced {
            self.path.namespace.as_deref()
        } else {
            None
        }
    }

    fn key(&self, name: &str) -> String {
        self.rt().key(self.ns(), name)
    }

    fn dry_run(&self) -> bool {
        self.query.dry_run()
    }

    /// Checks the query's typed parameters and folds a delete body's
    /// `dryRun` into the query, so every verb reads one dry-run switch
    /// (kubectl's `delete --dry-run=server` sends it in the body only).
    fn settle_options(
        &mut self,
        method: &Method,
        content_type: Option<&str>,
        body: &[u8],
    ) -> ApiResult<()> {
        let options_kind = match *method {
            Method::POST => Some("CreateOptions"),
            Method::PUT => Some("UpdateOptions"),
            Method::PATCH => Some("PatchOptions"),
            Method::DELETE => Some("DeleteOptions"),
            _ => None,
        };
        self.query.check(options_kind)?;
        if *method == Method::DELETE && !body.is_empty() {
            let ty = crate::request::body_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
            let opts = decode_body(body, ty)?;
            let dry = match &opts["dryRun"] {
                Value::Null => Vec::new(),
                Value::Array(a) if a.iter().all(Value::is_string) => {
                    a.iter().filter_map(Value::as_str).collect()
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: dryRun: expected a list of strings, got {other}"
                    )));
                }
            };
            crate::request::check_dry_run(&dry, "DeleteOptions")?;
            if !dry.is_empty() {
                self.query.set("dryRun", "All");
            }
        }
        Ok(())
    }
}

/// Dispatches a resource request by method.
pub async fn handle(
    mut ctx: Ctx<'_>,
    method: Method,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    if let Err(e) = ctx.settle_options(&method, content_type.as_deref(), &body) {
        return e.into_response();
    }
    let result = match (
        &method,
        ctx.path.name.is_some(),
        ctx.path.subresource.as_deref(),
    ) {
        (&Method::GET, false, None) => {
            if ctx.path.legacy_watch || ctx.query.flag("watch") {
                return watch(ctx).await.unwrap_or_else(|e| e.into_response());
            }
            list(&ctx).await
        }
        (&Method::GET, true, None | Some("status") | Some("approval")) => {
            if ctx.path.legacy_watch || ctx.query.flag("watch") {
                return ApiError::bad_request(
                    "watch of a single object: use fieldSelector=metadata.name=<name>",
                )
                .into_response();
            }
            get(&ctx).await
        }
        (&Method::POST, false, None) => create(&ctx, content_type, &body).await,
        (&Method::POST, true, Some("binding")) => bind(&ctx, content_type, &body).await,
        // Only ServiceAccounts list `token` (`request` refuses the rest).
        (&Method::POST, true, Some("token")) => token_request(&ctx, content_type, &body).await,
        (&Method::GET | &Method::PUT | &Method::PATCH, true, Some("scale")) => {
            scale(&ctx, &method, content_type, &body).await
        }
        (&Method::PUT, true, None | Some("status") | Some("finalize") | Some("approval")) => {
            update(&ctx, content_type, &body).await
        }
        (&Method::PATCH, true, None | Some("status") | Some("approval")) => {
            patch(&ctx, content_type, &body).await
        }
        (&Method::DELETE, true, None) => delete(&ctx, content_type, &body).await,
        (&Method::DELETE, false, None) => delete_collection(&ctx, content_type, &body).await,
        _ => Err(ApiError::method_not_allowed(method.as_str(), ctx.rt())),
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    for text in ctx.warnings.take() {
        let value = format!("299 - {}", crate::schema::go_quote(&text));
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            resp.headers_mut().append(http::header::WARNING, v);
        }
    }
    resp
}

async fn read_object(ctx: &Ctx<'_>, name: &str) -> ApiResult<(Value, i64)> {
    let rt = ctx.rt();
    match ctx.state.store.get(&ctx.key(name)).await? {
        Some(kv) => Ok((
            objects::from_stored(rt, &kv.value, kv.mod_revision)?,
            kv.mod_revision,
        )),
        None => Err(ApiError::not_found(rt, name)),
    }
}

/// The object as the watch cache has it, when the cache is running and
/// (if `at` is given) has it at exactly that resourceVersion. Only for
/// reads before a write: the write compares the revision, so a stale
/// object turns into a conflict, never into a lost update.
fn cached_object(ctx: &Ctx<'_>, name: &str, at: Option<i64>) -> Option<(Value, i64)> {
    let (obj, rev) = ctx.state.caches.running(ctx.rt())?.get(&ctx.key(name))?;
    if at.is_some_and(|want| want != rev) {
        return None;
    }
    Some((Value::clone(&obj), rev))
}

async fn get(ctx: &Ctx<'_>) -> ApiResult<Response> {
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

struct Filters {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl Filters {
    fn from_query(rt: &ResourceType, q: &Query) -> ApiResult<Self> {
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

    fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    fn matches(&self, obj: &Value) -> bool {
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
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> ApiResult<ContinueToken> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))
}

/// How long a read waits for the store to reach a resourceVersion a
/// client asked for (upstream's watch cache blocks 3 s).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The revision a read must not be older than: `resourceVersion=N` with
/// `NotOlderThan` or `Exact`, or without a match on a whole list (N > 0).
fn minimum_revision(q: &Query) -> i64 {
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
async fn wait_until_fresh(ctx: &Ctx<'_>, min: i64) -> ApiResult<()> {
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
async fn list_objects(ctx: &Ctx<'_>, filters: &Filters) -> ApiResult<(Vec<Value>, Value)> {
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

async fn list_objects_once(ctx: &Ctx<'_>, filters: &Filters) -> ApiResult<(Vec<Value>, Value)> {
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
        for KeyValue {
            key,
            value,
            mod_revision,
        } in page.items
        {
            let obj = objects::from_stored(rt, &value, mod_revision)?;
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

async fn list(ctx: &Ctx<'_>) -> ApiResult<Response> {
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

/// Decodes a create or update body and checks it against the type's
/// schema: a value of the wrong type is a 400 as upstream's decoder gives,
/// unknown and duplicate fields go by `fieldValidation`.
fn read_body(
    ctx: &Ctx<'_>,
    content_type: Option<&str>,
    body: &[u8],
    options_kind: &str,
) -> ApiResult<Value> {
    let rt = ctx.rt();
    let ty = crate::request::body_type(content_type).ok_or_else(|| {
        ApiError::unsupported_media(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        )
    })?;
    if !matches!(ty, BodyType::Json | BodyType::Yaml | BodyType::Protobuf) {
        return Err(ApiError::unsupported_media(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ));
    }
    let mode = ctx.write_options(options_kind)?;
    let mut obj = decode_body(body, ty)?;
    objects::check_type(rt, &mut obj)?;
    let cannot_handle = |msg: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {msg}",
            kind = rt.kind,
            v = rt.version
        ))
    };
    let unknown = (rt.schema)(&obj).map_err(|e| cannot_handle(e.to_string()))?;
    let (duplicate, other) = match (mode, ty) {
        (FieldValidation::Ignore, _) | (_, BodyType::Protobuf) => (Vec::new(), Vec::new()),
        _ => (
            schema::duplicate_fields(body),
            crate::request::yaml_duplicate_keys(body)
                .into_iter()
                .collect(),
        ),
    };
    let findings = StrictFindings {
        unknown,
        duplicate,
        other,
    };
    ctx.settle_fields(&mut obj, mode, findings, cannot_handle)?;
    Ok(obj)
}

impl Ctx<'_> {
    /// The write options every create, update and patch carries:
    /// `fieldManager` (at most 128 printable characters, as upstream's
    /// `ValidateFieldManager`) and `fieldValidation`.
    fn write_options(&self, options_kind: &str) -> ApiResult<FieldValidation> {
        if let Some(manager) = self.query.get("fieldManager") {
            let causes = objects::field_manager_problems(manager, "fieldManager");
            if !causes.is_empty() {
                return Err(objects::options_invalid(options_kind, &causes));
            }
        }
        FieldValidation::parse(self.query.get("fieldValidation"), options_kind)
    }

    /// Applies `fieldValidation` to what a write's field check found:
    /// `Strict` refuses (worded by `refuse`), `Warn` adds a warning per
    /// field; unknown fields are dropped from `obj` either way, as the
    /// typed decode upstream drops them.
    fn settle_fields(
        &self,
        obj: &mut Value,
        mode: FieldValidation,
        findings: StrictFindings,
        refuse: impl FnOnce(String) -> ApiError,
    ) -> ApiResult<()> {
        if findings.is_empty() {
            return Ok(());
        }
        match mode {
            FieldValidation::Strict => return Err(refuse(findings.strict_error())),
            FieldValidation::Warn => findings
                .messages()
                .into_iter()
                .for_each(|m| self.warnings.push(m)),
            FieldValidation::Ignore => {}
        }
        for path in &findings.unknown {
            path.remove(obj);
        }
        Ok(())
    }
}

async fn ensure_namespace(ctx: &Ctx<'_>) -> ApiResult<()> {
    let Some(ns) = ctx.ns() else { return Ok(()) };
    let nsrt = registry::find("", "v1", "namespaces").expect("namespaces registered");
    let key = nsrt.key(None, ns);
    // An active namespace in the cache is enough, as in kube-apiserver's
    // NamespaceLifecycle admission (a cache that lags a deletion lets a
    // create through; the namespace controller deletes it with the rest).
    // Anything else is checked against etcd: the cache may not have seen
    // a namespace created a moment ago.
    if let Some((obj, _)) = ctx.state.caches.running(nsrt).and_then(|c| c.get(&key))
        && !obj["metadata"]["deletionTimestamp"].is_string()
    {
        return Ok(());
    }
    match ctx.state.store.get(&key).await? {
        None => Err(ApiError::not_found(nsrt, ns)),
        Some(kv) => {
            let obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if obj["metadata"]["deletionTimestamp"].is_string() {
                Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        ctx.rt().qualified(),
                        ""
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

async fn create(ctx: &Ctx<'_>, content_type: Option<String>, body: &[u8]) -> ApiResult<Response> {
    let rt = ctx.rt();
    let obj = read_body(ctx, content_type.as_deref(), body, "CreateOptions")?;
    let created = create_object(ctx, obj).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &shape_one(rt, created, ctx.answer),
    ))
}

/// A node may only touch its own Node and Lease, and pods bound to it
/// (NodeRestriction, in [`crate::node_restriction`]).
fn check_node_scope(ctx: &Ctx<'_>, obj: &Value, verb: &str) -> ApiResult<()> {
    crate::node_restriction::check_scope(ctx.node_scope.as_deref(), ctx.rt(), obj, verb)
}

/// How many names a create with `generateName` tries before it answers
/// 409 (upstream's RetryGenerateName, GA in 1.32, makes eight attempts).
const GENERATE_NAME_ATTEMPTS: usize = 8;

/// Validates, defaults and stores a new object; returns it as stored.
async fn create_object(ctx: &Ctx<'_>, mut obj: Value) -> ApiResult<Value> {
    let rt = ctx.rt();
    check_node_scope(ctx, &obj, "create")?;
    let generated = obj["metadata"]["name"].as_str().unwrap_or("").is_empty()
        && obj["metadata"]["generateName"].is_string();
    objects::prepare_create(rt, &mut obj, ctx.ns())?;
    rt.strategy.prepare_create(&mut obj, &ctx.identity);
    objects::validate(rt, &obj)?;
    rt.strategy.admit_create(rt, &obj)?;
    crate::rbac::admit_write(ctx.state, &ctx.identity, rt, &obj).await?;
    ensure_namespace(ctx).await?;
    rt.strategy.admit_create_with(ctx.state, &mut obj).await?;
    crate::pod_security::admit(ctx, None, &obj).await?;
    if ctx.dry_run() {
        return Ok(obj);
    }
    let claims = rt.strategy.allocate(ctx.state, &mut obj).await?;
    let stored = store_new(&mut obj, generated, |name, bytes| {
        let key = ctx.key(name);
        async move { ctx.state.store.create(&key, bytes).await }
    })
    .await;
    match stored {
        Ok(rev) => {
            objects::decorate(rt, &mut obj, rev);
            Ok(obj)
        }
        Err(e) => {
            crate::allocator::release(ctx.state, &claims).await;
            Err(match e {
                StoreError::AlreadyExists => ApiError::already_exists(rt, name_of(&obj)),
                other => other.into(),
            })
        }
    }
}

/// Stores a new object through `create` (name, bytes); a generated name
/// that collides is drawn again, up to [`GENERATE_NAME_ATTEMPTS`] names:
/// the client asked for any name, not this one.
async fn store_new<F, Fut>(obj: &mut Value, generated: bool, create: F) -> Result<i64, StoreError>
where
    F: Fn(&str, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<i64, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match create(name_of(obj), objects::to_stored(obj)).await {
            Err(StoreError::AlreadyExists) if generated && attempt < GENERATE_NAME_ATTEMPTS => {
                attempt += 1;
                objects::generate_name(obj);
            }
            other => return other,
        }
    }
}

/// Writes `new` over the object at revision `rev`, finishing a pending
/// deletion once the last finalizer is gone.
async fn store_update(ctx: &Ctx<'_>, name: &str, mut new: Value, rev: i64) -> ApiResult<Value> {
    let rt = ctx.rt();
    objects::validate(rt, &new)?;
    crate::rbac::admit_write(ctx.state, &ctx.identity, rt, &new).await?;
    if ctx.dry_run() {
        return Ok(new);
    }
    let finalizers_empty = new["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.is_empty())
        .unwrap_or(true);
    let key = ctx.key(name);
    // A graceful deletion still running (a pod whose node has not yet
    // stopped its containers) keeps the object until the grace is 0.
    let grace_pending = new["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(0)
        > 0;
    if new["metadata"]["deletionTimestamp"].is_string() && finalizers_empty && !grace_pending {
        return match ctx.state.store.delete(&key, rev).await {
            Ok(r) => {
                rt.strategy.release(ctx.state, &new).await;
                objects::decorate(rt, &mut new, r);
                Ok(new)
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
            Err(StoreError::NotFound) => Err(ApiError::not_found(rt, name)),
            Err(e) => Err(e.into()),
        };
    }
    match ctx
        .state
        .store
        .update(&key, objects::to_stored(&new), rev)
        .await
    {
        Ok(r) => {
            objects::decorate(rt, &mut new, r);
            Ok(new)
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, name)),
        Err(StoreError::NotFound) => Err(ApiError::not_found(rt, name)),
        Err(e) => Err(e.into()),
    }
}

fn expected_rv(obj: &Value) -> ApiResult<Option<i64>> {
    match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}"))),
    }
}

async fn update(ctx: &Ctx<'_>, content_type: Option<String>, body: &[u8]) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let mut new = read_body(ctx, content_type.as_deref(), body, "UpdateOptions")?;
    let body_name = name_of(&new).to_string();
    if body_name.is_empty() {
        new["metadata"]["name"] = json!(name);
    } else if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let want = expected_rv(&new)?;
    let (old, rev) = match want.and_then(|w| cached_object(ctx, &name, Some(w))) {
        Some(x) => x,
        None => read_object(ctx, &name).await?,
    };
    check_node_scope(ctx, &old, "update")?;
    if let Some(want) = want
        && want != rev
    {
        return Err(ApiError::conflict(rt, &name));
    }
    keep_identity(ctx, &old, &mut new)?;
    if ctx.path.subresource.as_deref() == Some("finalize") {
        let finalizers = new["spec"]["finalizers"].clone();
        new = old.clone();
        new["spec"]["finalizers"] = finalizers;
    } else {
        prepare_for_path(ctx, &old, &mut new).await?;
    }
    crate::node_restriction::admit_update(ctx.node_scope.as_deref(), rt, &old, &new)?;
    crate::pod_security::admit(ctx, Some(&old), &new).await?;
    let stored = store_update(ctx, &name, new, rev).await?;
    Ok(json_response(
        StatusCode::OK,
        &shape_one(rt, stored, ctx.answer),
    ))
}

/// Carries the server-owned fields of `old` into an update through the
/// request's path (the object or a subresource), as the type's strategy
/// does it.
async fn prepare_for_path(ctx: &Ctx<'_>, old: &Value, new: &mut Value) -> ApiResult<()> {
    let at = crate::strategy::UpdateAt {
        rt: ctx.rt(),
        state: ctx.state,
        identity: &ctx.identity,
        subresource: ctx.path.subresource.as_deref(),
    };
    ctx.rt().strategy.prepare_update(at, old, new).await
}

/// A patch whose result the type's schema refuses: upstream's 422 with the
/// field `patch` and the patched object as the value.
fn patch_invalid(patched: &Value, msg: &str) -> ApiError {
    let json = serde_json::to_string(patched).unwrap_or_default();
    let detail = format!("{}: {msg}", schema::go_quote(&json));
    ApiError::new(
        422,
        "Invalid",
        format!(" \"\" is invalid: patch: Invalid value: {detail}"),
    )
    .with_causes(&[("patch", "Invalid value", &detail)])
}

/// The typed check of an apply configuration, as server-side apply's
/// conversion to a typed object does it: a wrong type or a field the
/// schema does not declare refuses the apply, whatever `fieldValidation`
/// says.
fn check_apply_config(rt: &ResourceType, applied: &Value) -> ApiResult<()> {
    let typed_err = |msg: String| {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "failed to create typed patch object ({}, Kind={}): {msg}",
                rt.api_version(),
                rt.kind
            ),
        )
    };
    let unknown = (rt.schema)(applied).map_err(|e| typed_err(format!(".{e}")))?;
    match unknown.first() {
        None => Ok(()),
        Some(p) => Err(typed_err(format!(".{p}: field not declared in schema"))),
    }
}

/// A JSON patch's own operations under `fieldValidation`: fields other
/// than `op`, `path`, `from` and `value`, and fields given twice.
fn json_patch_findings(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(body) {
        for op in &ops {
            for k in op.as_object().into_iter().flat_map(|m| m.keys()) {
                if !matches!(k.as_str(), "op" | "path" | "from" | "value") {
                    out.push(format!("json patch unknown field {}", schema::go_quote(k)));
                }
            }
        }
    }
    for dup in schema::duplicate_fields(body) {
        if let [schema::Step::Index(_), schema::Step::Key(k)] = dup.0.as_slice() {
            out.push(format!(
                "json patch duplicate field {}",
                schema::go_quote(k)
            ));
        }
    }
    out
}

fn apply_patch(
    ctx: &Ctx<'_>,
    ty: BodyType,
    current: &Value,
    patch_body: &[u8],
) -> ApiResult<Value> {
    let rt = ctx.rt();
    let patch_err = |e: String| ApiError::new(422, "Invalid", e);
    match ty {
        BodyType::JsonPatch => {
            let p: json_patch::Patch = serde_json::from_slice(patch_body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &p)
                .map_err(|e| patch_err(format!("the JSON patch could not be applied: {e}")))?;
            Ok(doc)
        }
        BodyType::MergePatch => {
            let p: Value = decode_body(patch_body, BodyType::Json)?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        BodyType::StrategicMergePatch => {
            let p: Value = decode_body(patch_body, BodyType::Json)?;
            let schema =
                rke2_apimachinery::strategic_merge::builtin_schema(&rt.api_version(), rt.kind);
            rke2_apimachinery::strategic_merge::apply(current, &p, &schema).map_err(|e| {
                patch_err(format!(
                    "the strategic merge patch could not be applied: {e}"
                ))
            })
        }
        BodyType::ApplyPatch => {
            let applied = decode_body(patch_body, BodyType::ApplyPatch)?;
            if ctx.path.subresource.as_deref() != Some("scale") {
                check_apply_config(rt, &applied)?;
            }
            let schema =
                rke2_apimachinery::strategic_merge::builtin_schema(&rt.api_version(), rt.kind);
            let mut merged = rke2_apimachinery::strategic_merge::apply(current, &applied, &schema)
                .map_err(|e| {
                    patch_err(format!("the apply configuration could not be merged: {e}"))
                })?;
            crate::ssa::apply_ownership(
                current,
                &mut merged,
                &applied,
                ctx.query.get("fieldManager").unwrap_or("unknown"),
                &rt.api_version(),
                ctx.query.flag("force"),
                &objects::now_rfc3339(),
            )?;
            Ok(merged)
        }
        _ => Err(ApiError::unsupported_media(
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
        )),
    }
}

/// The identity of an object stays what it is (upstream's
/// `EnsureObjectNamespaceMatchesRequestNamespace` and the immutable
/// `metadata.uid`): a namespace other than the request's is a 400, an
/// empty one is the request's, a cluster-scoped object has none; a uid
/// may be omitted but not changed. `creationTimestamp` and the other
/// server-owned fields are carried over by `prepare_update`.
fn keep_identity(ctx: &Ctx<'_>, old: &Value, new: &mut Value) -> ApiResult<()> {
    let rt = ctx.rt();
    if rt.namespaced {
        let want = old["metadata"]["namespace"].clone();
        match new["metadata"]["namespace"].as_str() {
            None | Some("") => new["metadata"]["namespace"] = want,
            Some(ns) if Some(ns) == want.as_str() => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    match (
        new["metadata"]["uid"].as_str(),
        old["metadata"]["uid"].as_str(),
    ) {
        (None | Some(""), _) => Ok(()),
        (Some(n), Some(o)) if n == o => Ok(()),
        (Some(n), _) => Err(ApiError::invalid(
            rt.kind,
            name_of(old),
            rt,
            &[(
                "metadata.uid".into(),
                "Invalid value".into(),
                format!("{}: field is immutable", schema::go_quote(n)),
            )],
        )),
    }
}

async fn patch(ctx: &Ctx<'_>, content_type: Option<String>, body: &[u8]) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let ty = crate::request::body_type(content_type.as_deref())
        .filter(|t| matches!(t, BodyType::JsonPatch | BodyType::MergePatch | BodyType::StrategicMergePatch | BodyType::ApplyPatch))
        .ok_or_else(|| ApiError::unsupported_media("application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"))?;
    if ty == BodyType::ApplyPatch && ctx.query.get("fieldManager").unwrap_or("").is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    if ty != BodyType::ApplyPatch && ctx.query.get("force").is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    let mode = ctx.write_options("PatchOptions")?;
    // What the patch document itself holds twice (or, for a JSON patch,
    // what its operations hold that they should not).
    let (duplicate, other) = match (mode, ty) {
        (FieldValidation::Ignore, _) => (Vec::new(), Vec::new()),
        (_, BodyType::JsonPatch) => (Vec::new(), json_patch_findings(body)),
        (_, BodyType::MergePatch | BodyType::StrategicMergePatch) => {
            (schema::duplicate_fields(body), Vec::new())
        }
        (_, _) => (
            Vec::new(),
            crate::request::yaml_duplicate_keys(body)
                .into_iter()
                .collect(),
        ),
    };
    if ty == BodyType::ApplyPatch && mode == FieldValidation::Strict && !other.is_empty() {
        return Err(ApiError::bad_request(format!(
            "error strict decoding YAML: {}",
            other.join(", ")
        )));
    }
    // Only a resourceVersion the client put in the patch is a
    // precondition; the patched object always carries the stored one.
    let precondition = match ty {
        BodyType::JsonPatch => None,
        _ => decode_body(body, ty)
            .ok()
            .as_ref()
            .map(expected_rv)
            .transpose()?
            .flatten(),
    };
    // A patch without a resourceVersion precondition is retried on
    // conflict, as kube-apiserver does. The first attempt starts from the
    // watch cache's copy; a stale copy fails the revision compare and the
    // retry reads etcd.
    for attempt in 0..5 {
        // A retry reports the fields of its own attempt only.
        ctx.warnings.take();
        let cached = match attempt {
            0 => cached_object(ctx, &name, precondition),
            _ => None,
        };
        let read = match cached {
            Some(x) => Ok(x),
            None => read_object(ctx, &name).await,
        };
        let (old, rev) = match read {
            Ok(x) => x,
            Err(e)
                if e.code == 404
                    && ty == BodyType::ApplyPatch
                    && ctx.path.subresource.is_none() =>
            {
                let mut obj = decode_body(body, BodyType::ApplyPatch)?;
                check_apply_config(rt, &obj)?;
                objects::check_type(rt, &mut obj)?;
                if name_of(&obj) != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        name_of(&obj)
                    )));
                }
                let applied = obj.clone();
                crate::ssa::apply_ownership(
                    &json!({"metadata": {}}),
                    &mut obj,
                    &applied,
                    ctx.query.get("fieldManager").unwrap_or("unknown"),
                    &rt.api_version(),
                    ctx.query.flag("force"),
                    &objects::now_rfc3339(),
                )?;
                let created = create_object(ctx, obj).await?;
                return Ok(json_response(
                    StatusCode::CREATED,
                    &shape_one(rt, created, ctx.answer),
                ));
            }
            Err(e) => return Err(e),
        };
        check_node_scope(ctx, &old, "patch")?;
        let mut new = apply_patch(ctx, ty, &old, body)?;
        // The patched object must decode as the type (upstream decodes it
        // into the Go struct); fields it does not know are new ones from
        // this patch (reported by fieldValidation) or old ones stored
        // before they were checked (dropped silently).
        let unknown = (rt.schema)(&new).map_err(|e| patch_invalid(&new, &e.to_string()))?;
        let (fresh, stale): (Vec<_>, Vec<_>) =
            unknown.into_iter().partition(|p| p.get(&old).is_none());
        let findings = StrictFindings {
            unknown: fresh,
            duplicate: duplicate.clone(),
            other: other.clone(),
        };
        let patched_json = new.clone();
        ctx.settle_fields(&mut new, mode, findings, |msg| {
            patch_invalid(&patched_json, &msg)
        })?;
        for p in &stale {
            p.remove(&mut new);
        }
        if name_of(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new)
            )));
        }
        keep_identity(ctx, &old, &mut new)?;
        if let Some(want) = precondition
            && want != rev
        {
            return Err(ApiError::conflict(rt, &name));
        }
        objects::check_type(rt, &mut new)?;
        prepare_for_path(ctx, &old, &mut new).await?;
        crate::node_restriction::admit_update(ctx.node_scope.as_deref(), rt, &old, &new)?;
        crate::pod_security::admit(ctx, Some(&old), &new).await?;
        match store_update(ctx, &name, new, rev).await {
            Ok(stored) => {
                return Ok(json_response(
                    StatusCode::OK,
                    &shape_one(rt, stored, ctx.answer),
                ));
            }
            Err(e) if e.reason == "Conflict" && precondition.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rt, &name))
}

/// The `autoscaling/v1 Scale` view of a workload.
fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// GET/PUT/PATCH of the `scale` subresource: reads or sets spec.replicas.
async fn scale(
    ctx: &Ctx<'_>,
    method: &Method,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    for _ in 0..5 {
        let (old, rev) = read_object(ctx, &name).await?;
        let current = scale_of(&old);
        if method == Method::GET {
            return Ok(json_response(StatusCode::OK, &current));
        }
        let wanted = if method == Method::PUT {
            let ty = crate::request::body_type(content_type.as_deref())
                .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
            decode_body(body, ty)?
        } else {
            let ty = crate::request::body_type(content_type.as_deref())
                .ok_or_else(|| ApiError::unsupported_media("application/merge-patch+json"))?;
            apply_patch(ctx, ty, &current, body)?
        };
        // The Scale must decode as one: a replicas beyond int32 would be
        // stored into a workload no client could read back.
        schema::typed::<k8s_openapi::api::autoscaling::v1::Scale>(&wanted).map_err(|e| {
            ApiError::bad_request(format!(
                "Scale in version \"v1\" cannot be handled as a Scale: {e}"
            ))
        })?;
        if let Some(want) = expected_rv(&wanted)?
            && want != rev
        {
            return Err(ApiError::conflict(rt, &name));
        }
        let replicas = wanted["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                &name,
                rt,
                &[("spec.replicas".into(), "Required value".into(), "".into())],
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                &name,
                rt,
                &[(
                    "spec.replicas".into(),
                    "Invalid value".into(),
                    format!("{replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        objects::prepare_update(rt, &old, &mut new, false);
        match store_update(ctx, &name, new, rev).await {
            Ok(stored) => return Ok(json_response(StatusCode::OK, &scale_of(&stored))),
            Err(e) if e.reason == "Conflict" && expected_rv(&wanted)?.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(rt, &name))
}

/// `serviceaccounts/<name>/token`: a TokenRequest in, the same with its
/// token out (nothing is stored).
async fn token_request(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let ty = crate::request::body_type(content_type.as_deref())
        .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
    let request = decode_body(body, ty)?;
    let name = ctx.path.name.clone().unwrap_or_default();
    let ns = ctx.ns().unwrap_or("default");
    let answer = crate::serviceaccounts::token_request(
        ctx.state,
        ns,
        &name,
        ctx.node_scope.as_deref(),
        request,
    )
    .await?;
    Ok(json_response(StatusCode::CREATED, &answer))
}

async fn bind(ctx: &Ctx<'_>, content_type: Option<String>, body: &[u8]) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let ty = crate::request::body_type(content_type.as_deref())
        .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
    let binding = decode_body(body, ty)?;
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("Binding \"{name}\" is invalid: target.name: Required value"),
        ));
    }
    let (old, rev) = read_object(ctx, &name).await?;
    if let Some(current) = old["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    if old["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    let mut new = old.clone();
    new["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = new["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now_rfc3339()}));
    new["status"]["conditions"] = Value::Array(conditions);
    store_update(ctx, &name, new, rev).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &success_status(rt, &name),
    ))
}

/// Deletes an object; without a resourceVersion precondition a write that
/// lands between our read and our delete is retried, as kube-apiserver does.
async fn delete(ctx: &Ctx<'_>, content_type: Option<String>, body: &[u8]) -> ApiResult<Response> {
    let mut last = None;
    for attempt in 0..5 {
        match delete_once(ctx, content_type.clone(), body, attempt).await {
            Err(e) if e.reason == "Conflict" && e.message.contains("has been modified") => {
                let preconditioned = !body.is_empty()
                    && crate::request::body_type(content_type.as_deref())
                        .and_then(|ty| decode_body(body, ty).ok())
                        .is_some_and(|o| o["preconditions"]["resourceVersion"].is_string());
                if preconditioned {
                    return Err(e);
                }
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.expect("loop ran"))
}

async fn delete_once(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
    attempt: usize,
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let name = ctx.path.name.clone().unwrap_or_default();
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        let ty = crate::request::body_type(content_type.as_deref())
            .ok_or_else(|| ApiError::unsupported_media("application/json"))?;
        decode_body(body, ty)?
    };
    // The first attempt of a delete without preconditions decides on the
    // watch cache's copy, saving an etcd read: every write below compares
    // the revision, so a stale copy only costs a retry from etcd.
    // Preconditions and a node's scope are checked against etcd, where a
    // stale copy would fail them falsely.
    let preconditioned = opts["preconditions"].is_object();
    let cached = (attempt == 0 && !preconditioned && ctx.node_scope.is_none())
        .then(|| cached_object(ctx, &name, None))
        .flatten();
    let (old, rev) = match cached {
        Some(found) => found,
        None => read_object(ctx, &name).await?,
    };
    check_node_scope(ctx, &old, "delete")?;
    if let Some(uid) = opts["preconditions"]["uid"].as_str()
        && old["metadata"]["uid"] != uid
    {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    if let Some(want) = opts["preconditions"]["resourceVersion"].as_str()
        && want != rev.to_string()
    {
        return Err(ApiError::conflict_msg(
            rt,
            &name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
            ),
        ));
    }
    // Foreground and orphan propagation are carried out by the garbage
    // collector: the owner stays, marked for deletion, with a finalizer the
    // collector removes once dependents are deleted (or orphaned).
    let policy = opts["propagationPolicy"]
        .as_str()
        .or_else(|| ctx.query.get("propagationPolicy"))
        .map(str::to_string)
        .or_else(|| match opts["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            Some(false) => Some("Background".into()),
            None => None,
        });
    let gc_finalizer = match policy.as_deref() {
        None | Some("Background") => None,
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        Some(other) => {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            ));
        }
    };
    let mut old = old;
    let custom_delete = rt.strategy.custom_delete();
    if let Some(f) = gc_finalizer
        && custom_delete.is_none()
        && !ctx.dry_run()
    {
        let list = old["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !list.iter().any(|x| x == f) {
            let mut l = list;
            l.push(json!(f));
            old["metadata"]["finalizers"] = Value::Array(l);
        }
    }
    let has_finalizers = old["metadata"]["finalizers"]
        .as_array()
        .map(|a| !a.is_empty())
        .unwrap_or(false);
    if let Some(delete) = custom_delete {
        let obj = delete(ctx.state, old, rev).await?;
        return Ok(json_response(StatusCode::OK, &obj));
    }
    if ctx.dry_run() {
        return Ok(json_response(StatusCode::OK, &old));
    }
    if let Some(grace) = rt
        .strategy
        .grace_period(&old, &opts, ctx.query.get("gracePeriodSeconds"))
    {
        // Graceful deletion: the object (a pod) stays, marked, until its
        // node has stopped its containers and deletes it with a zero
        // grace period.
        let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if old["metadata"]["deletionTimestamp"].is_string() && current.is_some_and(|c| c <= grace) {
            return Ok(json_response(StatusCode::OK, &old));
        }
        let mut new = old.clone();
        let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
        new["metadata"]["deletionTimestamp"] = json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let stored = store_update(ctx, &name, new, rev).await?;
        return Ok(json_response(StatusCode::OK, &stored));
    }
    if has_finalizers {
        if old["metadata"]["deletionTimestamp"].is_string() && gc_finalizer.is_none() {
            if old["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0
            {
                // The graceful part is over; finalizers still hold it.
                let mut new = old.clone();
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                let stored = store_update(ctx, &name, new, rev).await?;
                return Ok(json_response(StatusCode::OK, &stored));
            }
            return Ok(json_response(StatusCode::OK, &old));
        }
        let mut new = old.clone();
        if !new["metadata"]["deletionTimestamp"].is_string() {
            new["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        let stored = store_update(ctx, &name, new, rev).await?;
        let code = if gc_finalizer == Some("foregroundDeletion") {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return Ok(json_response(code, &stored));
    }
    match ctx.state.store.delete(&ctx.key(&name), rev).await {
        Ok(_) => {
            rt.strategy.release(ctx.state, &old).await;
            Ok(json_response(StatusCode::OK, &old))
        }
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(rt, &name)),
        Err(StoreError::NotFound) => Err(ApiError::not_found(rt, &name)),
        Err(e) => Err(e.into()),
    }
}

async fn delete_collection(
    ctx: &Ctx<'_>,
    content_type: Option<String>,
    body: &[u8],
) -> ApiResult<Response> {
    let rt = ctx.rt();
    let filters = Filters::from_query(rt, &ctx.query)?;
    let mut q = ctx.query.clone();
    q.remove("limit");
    q.remove("continue");
    let listing = Ctx {
        state: ctx.state,
        path: ctx.path.clone(),
        query: q,
        answer: ctx.answer,
        node_scope: ctx.node_scope.clone(),
        identity: ctx.identity.clone(),
        warnings: Warnings::default(),
    };
    let (items, meta) = list_objects(&listing, &filters).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = name_of(&obj).to_string();
        let mut path = ctx.path.clone();
        path.name = Some(name);
        if rt.namespaced {
            path.namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
        }
        let one = Ctx {
            state: ctx.state,
            path,
            query: ctx.query.clone(),
            answer: ctx.answer,
            node_scope: ctx.node_scope.clone(),
            identity: ctx.identity.clone(),
            warnings: Warnings::default(),
        };
        // Each object is deleted with the collection's DeleteOptions, as
        // upstream's DeleteCollection does.
        match delete(&one, content_type.clone(), body).await {
            Ok(_) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta, "items": deleted}),
    ))
}

/// Serializes one watch event as a line.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The same line as [`event_line`] around an object already serialized
/// (once per event by the watch cache, for all its watchers). `kind` is
/// one of the fixed event types, which need no JSON escaping.
fn event_line_with(kind: &str, object_json: &[u8]) -> Bytes {
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

struct WatchEncoder {
    rt: &'static ResourceType,
    answer: Answer,
    sent_columns: bool,
}

impl WatchEncoder {
    fn encode(&mut self, kind: &str, obj: &Value) -> Bytes {
        match self.answer.as_ {
            AnswerAs::Table if kind != "BOOKMARK" && kind != "ERROR" => {
                let rv = obj["metadata"]["resourceVersion"].clone();
                let t = table::table(
                    self.rt,
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
    fn encode_cached(&mut self, kind: &str, ev: &CachedEvent) -> Bytes {
        match self.answer.as_ {
            // Rows depend on the watch (columns sent once, includeObject).
            AnswerAs::Table => self.encode(kind, &ev.object),
            AnswerAs::PartialMetadata => event_line_with(kind, ev.metadata_json()),
            AnswerAs::Object => event_line_with(kind, ev.object_json()),
        }
    }

    fn bookmark(&self, rv: i64, initial_end: bool) -> Bytes {
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

async fn watch(ctx: Ctx<'_>) -> ApiResult<Response> {
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
        rt,
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
fn visible_kind(kind: WatchEventKind, now: bool, before: bool) -> Option<&'static str> {
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
struct WatchOut {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>,
    enc: WatchEncoder,
    filters: Filters,
    /// Keys outside it (other namespaces) are not this watch's.
    prefix: String,
    bookmarks: bool,
    timeout: Duration,
    last_rev: i64,
}

impl WatchOut {
    /// Sends one change if this watch sees it; `false` once the client is
    /// gone. `cached` is the watch cache's event for it, whose shared
    /// serialization is reused.
    async fn send_change(
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
    async fn send_cached(&mut self, ev: &CachedEvent) -> bool {
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

    async fn serve_from_cache(mut self, mut sub: Subscription) {
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

    async fn serve_from_etcd(
        mut self,
        stream: impl futures::Stream<Item = Result<rke2_datastore::WatchEvent, StoreError>>,
    ) {
        let rt = self.enc.rt;
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
                    objects::decorate(rt, &mut obj, ev.revision);
                    let before = ev.prev_value.as_ref().and_then(|p| serde_json::from_slice::<Value>(p).ok());
                    if !self.send_change(ev.kind, &ev.key, &obj, before.as_ref(), ev.revision, None).await {
                        break;
                    }
                }
            }
        }
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A create whose generated names collide draws new ones, and gives
    /// up with the collision after eight names; a given name is never
    /// changed.
    #[tokio::test]
    async fn generated_names_are_drawn_again_on_collision() {
        for (taken, generated, want_ok, want_tries) in [
            (3, true, true, 4),
            (7, true, true, 8),
            (8, true, false, 8),
            (1, false, false, 1),
        ] {
            let mut obj = json!({"metadata": {"name": "", "generateName": "web-"}});
            if generated {
                objects::generate_name(&mut obj);
            } else {
                obj["metadata"]["name"] = json!("fixed");
            }
            let tried = std::sync::Mutex::new(Vec::<String>::new());
            let r = store_new(&mut obj, generated, |name, bytes| {
                let stored: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    stored["metadata"]["name"], name,
                    "bytes carry the name tried"
                );
                let mut t = tried.lock().unwrap();
                t.push(name.to_string());
                let n = t.len();
                async move {
                    if n <= taken {
                        Err(StoreError::AlreadyExists)
                    } else {
                        Ok(7)
                    }
                }
            })
            .await;
            let tried = tried.into_inner().unwrap();
            assert_eq!(r.is_ok(), want_ok, "{taken} taken: {r:?}");
            assert_eq!(tried.len(), want_tries, "{taken} taken: {tried:?}");
            let distinct: std::collections::HashSet<_> = tried.iter().collect();
            assert_eq!(
                distinct.len(),
                tried.len(),
                "a new name each time: {tried:?}"
            );
            if generated {
                assert!(tried.iter().all(|n| n.starts_with("web-") && n.len() == 9));
            }
            assert_eq!(obj["metadata"]["name"], json!(tried.last().unwrap()));
        }
    }

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

    /// The line around the cache's shared serialization is byte for byte
    /// the line of the per-watcher encoding, for every answer.
    #[test]
    fn cached_event_lines_are_the_per_watcher_lines() {
        let rt = registry::find("", "v1", "configmaps").unwrap();
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
                    rt,
                    answer,
                    sent_columns: false,
                };
                let mut cached = WatchEncoder {
                    rt,
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
