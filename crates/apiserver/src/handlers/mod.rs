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

mod delete;
mod eviction;
mod list;
mod patch;
mod subresources;
mod watch;
mod write;

use self::delete::*;
use self::eviction::*;
use self::list::*;
use self::patch::*;
use self::subresources::*;
use self::watch::*;
use self::write::*;
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
    fn rt(&self) -> &ResourceType {
        &self.path.rt
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
        (
            &Method::GET,
            true,
            None | Some("status") | Some("approval") | Some("ephemeralcontainers") | Some("resize"),
        ) => {
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
        (&Method::POST, true, Some("eviction")) => evict(&ctx, content_type, &body).await,
        // Only ServiceAccounts list `token` (`request` refuses the rest).
        (&Method::POST, true, Some("token")) => token_request(&ctx, content_type, &body).await,
        (&Method::GET | &Method::PUT | &Method::PATCH, true, Some("scale")) => {
            scale(&ctx, &method, content_type, &body).await
        }
        (
            &Method::PUT,
            true,
            None
            | Some("status")
            | Some("finalize")
            | Some("approval")
            | Some("ephemeralcontainers")
            | Some("resize"),
        ) => update(&ctx, content_type, &body).await,
        (
            &Method::PATCH,
            true,
            None | Some("status") | Some("approval") | Some("ephemeralcontainers") | Some("resize"),
        ) => patch(&ctx, content_type, &body).await,
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
        Some(kv) => {
            let mut obj = objects::from_stored(rt, &kv.value, kv.mod_revision)?;
            to_served(ctx, std::slice::from_mut(&mut obj)).await?;
            Ok((obj, kv.mod_revision))
        }
        None => Err(ApiError::not_found(rt, name)),
    }
}

/// Converts objects read from storage to the version of the request
/// (custom types whose CRD converts through a webhook, built-in types
/// served in several versions; the rest are already in it).
async fn to_served(ctx: &Ctx<'_>, objs: &mut [Value]) -> ApiResult<()> {
    let rt = ctx.rt();
    if rt.strategy.conversion_webhook().is_some() || rt.strategy.convert_version().is_some() {
        crate::crd::conversion::convert_for(ctx.state, rt, objs, &rt.api_version()).await
    } else {
        Ok(())
    }
}

/// Converts an object about to be written to the storage version of its
/// type (custom types), answering the version it was in.
async fn to_storage(ctx: &Ctx<'_>, obj: &mut Value) -> ApiResult<()> {
    let rt = ctx.rt();
    match rt.strategy.storage_api_version() {
        Some(storage) => {
            crate::crd::conversion::convert_for(ctx.state, rt, std::slice::from_mut(obj), storage)
                .await
        }
        None => Ok(()),
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
