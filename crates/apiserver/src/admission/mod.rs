//! Dynamic admission: MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration (`admissionregistration.k8s.io/v1`).
//!
//! The verbs call in here at two points, in upstream's order: [`mutate`]
//! after the type's own defaulting and before validation (mutating
//! webhooks, ordered by configuration name then webhook order; a webhook
//! with `reinvocationPolicy: IfNeeded` is called once more when a later
//! webhook changed the object), and [`validate`] after the built-in
//! validation and admission, just before the object is stored
//! (validating webhooks, called in parallel). A delete calls
//! [`admit_delete`]. Webhooks are never called for the
//! `admissionregistration.k8s.io` objects themselves (a broken webhook
//! could otherwise never be removed).
//!
//! [`matching`] decides which webhooks a request concerns (rules,
//! scope, namespace and object selectors), [`review`] encodes the
//! AdmissionReview and checks the answer, [`client`] reaches the webhook
//! (URL or Service) over TLS, and [`config`] holds the configurations'
//! defaults and validation.

pub mod client;
pub mod config;
pub mod expr;
pub mod matching;
pub mod policy;
pub mod review;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::warn;

use crate::handlers::Ctx;
use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};
use client::Endpoint;
use matching::{Attributes, Rule};
use review::{ReviewRequest, Verdict};

/// The admission operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A create (also server-side apply creating an object).
    Create,
    /// An update or patch.
    Update,
    /// A delete.
    Delete,
}

impl Operation {
    /// The operation as AdmissionReview and rules spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }

    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        }
    }
}

/// One webhook of a configuration, as the chain uses it.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The configuration's name (mutating webhooks run in its order).
    pub configuration: String,
    /// The webhook's name.
    pub name: String,
    /// Which requests it concerns.
    pub rules: Vec<Rule>,
    /// `failurePolicy: Ignore`.
    pub ignore_failures: bool,
    /// `namespaceSelector`.
    pub namespace_selector: Value,
    /// `objectSelector`.
    pub object_selector: Value,
    /// Whether a dry-run request may call it (`sideEffects` None or
    /// NoneOnDryRun).
    pub dry_run_safe: bool,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `reinvocationPolicy: IfNeeded`.
    pub reinvoke: bool,
    /// Where it is called.
    pub endpoint: Endpoint,
    /// The decoded `caBundle` (PEM), empty for the system roots.
    pub ca_bundle: Vec<u8>,
    /// `matchConditions` (CEL), all of which must hold for a call.
    pub match_conditions: Value,
}

impl Hook {
    /// Reads one webhook of a (validated, defaulted) configuration.
    pub fn parse(configuration: &str, h: &Value) -> Hook {
        let s = |k: &str| h[k].as_str().unwrap_or("");
        let (endpoint, ca_bundle) = Endpoint::of_client_config(&h["clientConfig"]);
        Hook {
            configuration: configuration.to_string(),
            name: s("name").to_string(),
            rules: h["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Rule::parse)
                .collect(),
            ignore_failures: s("failurePolicy") == "Ignore",
            namespace_selector: h["namespaceSelector"].clone(),
            object_selector: h["objectSelector"].clone(),
            dry_run_safe: matches!(s("sideEffects"), "None" | "NoneOnDryRun"),
            timeout: Duration::from_secs(h["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30)),
            reinvoke: s("reinvocationPolicy") == "IfNeeded",
            endpoint,
            ca_bundle,
            match_conditions: h["matchConditions"].clone(),
        }
    }
}

/// Whether requests on `rt` skip webhooks: the admission configuration
/// objects themselves, as upstream.
fn exempt(rt: &ResourceType) -> bool {
    rt.group == "admissionregistration.k8s.io"
}

/// The webhooks of every configuration of `plural`, configurations in
/// name order, webhooks in their order.
async fn load(ctx: &Ctx<'_>, plural: &str) -> Vec<Hook> {
    let Some(rt) = registry::find("admissionregistration.k8s.io", "v1", plural) else {
        return Vec::new();
    };
    let prefix = rt.prefix(None);
    let configs: Vec<Value> = match ctx
        .state
        .caches
        .ready(rt)
        .await
        .and_then(|c| c.snapshot(&prefix))
    {
        Some(snap) => snap.objects.iter().map(|o| Value::clone(o)).collect(),
        None => match ctx.state.store.list(&prefix, None, 0, 0).await {
            Ok(page) => page
                .items
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect(),
            Err(e) => {
                warn!(error = %e, "admission: could not list {plural}");
                Vec::new()
            }
        },
    };
    let mut out = Vec::new();
    // The snapshot is in key order, which is name order.
    for c in &configs {
        let name = c["metadata"]["name"].as_str().unwrap_or("");
        for h in c["webhooks"].as_array().into_iter().flatten() {
            out.push(Hook::parse(name, h));
        }
    }
    out
}

/// The namespace of a namespaced request as stored (`namespaceObject` of
/// CEL expressions); `None` for cluster-scoped requests.
pub(crate) async fn namespace_object(ctx: &Ctx<'_>) -> Option<Value> {
    let rt = &*ctx.path.rt;
    if !rt.namespaced {
        return None;
    }
    let ns = ctx.path.namespace.as_deref().unwrap_or("");
    let nsrt = registry::find("", "v1", "namespaces")?;
    let key = nsrt.key(None, ns);
    if let Some((o, _)) = ctx.state.caches.running(nsrt).and_then(|c| c.get(&key)) {
        return Some(Value::clone(&o));
    }
    match ctx.state.store.get(&key).await {
        Ok(Some(kv)) => serde_json::from_slice::<Value>(&kv.value).ok(),
        _ => None,
    }
}

/// The namespace labels a `namespaceSelector` is matched against (none
/// for cluster-scoped objects other than Namespaces, which match any
/// selector).
async fn namespace_labels(
    ctx: &Ctx<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Option<BTreeMap<String, String>> {
    let rt = &*ctx.path.rt;
    let labels_of = |o: &Value| -> BTreeMap<String, String> {
        o["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if rt.group.is_empty() && rt.plural == "namespaces" {
        return obj.or(old).map(labels_of).or_else(|| Some(BTreeMap::new()));
    }
    if !rt.namespaced {
        return None;
    }
    let ns = ctx.path.namespace.as_deref().unwrap_or("");
    let nsrt = registry::find("", "v1", "namespaces")?;
    let key = nsrt.key(None, ns);
    if let Some((o, _)) = ctx.state.caches.running(nsrt).and_then(|c| c.get(&key)) {
        return Some(labels_of(&o));
    }
    match ctx.state.store.get(&key).await {
        Ok(Some(kv)) => serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .map(|o| labels_of(&o)),
        _ => Some(BTreeMap::new()),
    }
}

/// The AdmissionReview of this request with `uid`, as webhooks receive
/// it (its `request` is also the `request` of CEL expressions).
pub(crate) fn review_json(
    ctx: &Ctx<'_>,
    op: Operation,
    old: Option<&Value>,
    obj: Option<&Value>,
    uid: &str,
) -> Value {
    let rt = &*ctx.path.rt;
    let name = obj
        .or(old)
        .and_then(|o| o["metadata"]["name"].as_str())
        .or(ctx.path.name.as_deref())
        .unwrap_or("");
    let namespace = if rt.namespaced {
        ctx.path.namespace.as_deref().unwrap_or("")
    } else {
        ""
    };
    let request = ReviewRequest {
        uid: uid.to_string(),
        kind: (&rt.group, &rt.version, &rt.kind),
        resource: (&rt.group, &rt.version, &rt.plural),
        sub_resource: ctx.path.subresource.as_deref().unwrap_or(""),
        name,
        namespace,
        operation: op.as_str(),
        username: &ctx.identity.user,
        groups: &ctx.identity.groups,
        object: obj,
        old_object: old,
        dry_run: ctx.query.dry_run(),
        options: options(ctx, op),
    };
    let mut review = request.to_json();
    // The server's own bookkeeping key never leaves the server.
    for k in ["object", "oldObject"] {
        if let Some(m) = review["request"][k].as_object_mut() {
            m.remove(crate::objects::UPDATE_VIOLATIONS);
        }
    }
    review
}

/// The options object of the request, as AdmissionReview carries it.
fn options(ctx: &Ctx<'_>, op: Operation) -> Value {
    let mut o = json!({"kind": op.options_kind(), "apiVersion": "meta.k8s.io/v1"});
    if ctx.query.dry_run() {
        o["dryRun"] = json!(["All"]);
    }
    if op != Operation::Delete {
        if let Some(m) = ctx.query.get("fieldManager") {
            o["fieldManager"] = json!(m);
        }
        if let Some(v) = ctx.query.get("fieldValidation") {
            o["fieldValidation"] = json!(v);
        }
    }
    o
}

/// How a webhook call ended when it did not produce an answer.
fn call_failure(hook: &Hook, reason: &str) -> ApiError {
    ApiError::internal(format!(
        "Internal error occurred: failed calling webhook {:?}: {reason}",
        hook.name
    ))
}

/// Upstream's `ToStatusErr`: a denial as the Status the client sees.
fn denial(hook: &Hook, status: Option<&Value>) -> ApiError {
    let empty = json!({});
    let st = status.unwrap_or(&empty);
    let by = format!("admission webhook {:?} denied the request", hook.name);
    let message = st["message"].as_str().unwrap_or("");
    let reason = st["reason"].as_str().unwrap_or("");
    let text = if !message.is_empty() {
        format!("{by}: {message}")
    } else if !reason.is_empty() {
        format!("{by}: {reason}")
    } else {
        format!("{by} without explanation")
    };
    let code = st["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(400);
    let mut e = ApiError::new(code, static_reason(reason), text);
    if let Some(d) = st.get("details").filter(|d| d.is_object()) {
        e.details = Some(d.clone());
    }
    e
}

/// The reason of a webhook's Status as one of the API's reasons (the
/// reason field is a fixed set; an unknown one is left empty, which
/// clients print as a plain `Error from server`).
fn static_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Forbidden",
        "Invalid",
        "BadRequest",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Unauthorized",
        "TooManyRequests",
        "InternalError",
        "ServiceUnavailable",
        "Timeout",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "Gone",
        "Expired",
    ];
    KNOWN.iter().copied().find(|k| *k == reason).unwrap_or("")
}

/// One call of one webhook: the AdmissionReview out, the checked answer
/// back, within the webhook's timeout. The error is upstream's reason
/// after `failed calling webhook "<name>": `; `None` when the
/// webhook's matchConditions do not hold (it is not called).
async fn call(
    ctx: &Ctx<'_>,
    hook: &Hook,
    op: Operation,
    old: Option<&Value>,
    obj: Option<&Value>,
    mutating: bool,
) -> Result<Option<Verdict>, Failure> {
    let uid = uuid::Uuid::new_v4().to_string();
    let review = review_json(ctx, op, old, obj, &uid);
    if hook
        .match_conditions
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        let inputs = expr::Inputs {
            object: review["request"]["object"].clone(),
            old_object: review["request"]["oldObject"].clone(),
            request: review["request"].clone(),
            ..Default::default()
        };
        match expr::match_conditions(&hook.match_conditions, &inputs) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => return Err(Failure::Condition(e)),
        }
    }
    let body =
        bytes::Bytes::from(serde_json::to_vec(&review).map_err(|e| Failure::Call(e.to_string()))?);
    let url = hook.endpoint.url_for(hook.timeout);
    let exchange = async {
        let target = hook.endpoint.resolve(ctx.state, hook.timeout).await?;
        client::post(ctx.state, &target, &hook.ca_bundle, body).await
    };
    let (status, answer) = match tokio::time::timeout(hook.timeout, exchange).await {
        Err(_) => {
            return Err(Failure::Call(format!(
                "failed to call webhook: Post {url:?}: context deadline exceeded"
            )));
        }
        Ok(Err(e)) => {
            return Err(Failure::Call(format!(
                "failed to call webhook: Post {url:?}: {e}"
            )));
        }
        Ok(Ok(x)) => x,
    };
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&answer[..answer.len().min(256)]).into_owned();
        return Err(Failure::Call(format!(
            "failed to call webhook: an error on the server ({text:?}) has prevented the request from succeeding (post with status {status})"
        )));
    }
    review::decode_response(&answer, &uid, mutating)
        .map(Some)
        .map_err(|e| Failure::Call(format!("received invalid webhook response: {e}")))
}

/// Why a webhook gave no answer.
#[derive(Debug)]
enum Failure {
    /// The call failed (upstream's reason after `failed calling webhook`).
    Call(String),
    /// A matchCondition could not be evaluated.
    Condition(String),
}

impl Failure {
    fn text(&self) -> &str {
        match self {
            Failure::Call(s) | Failure::Condition(s) => s,
        }
    }

    /// The error a failure is under `failurePolicy: Fail`.
    fn into_error(self, ctx: &Ctx<'_>, hook: &Hook) -> ApiError {
        match self {
            Failure::Call(reason) => call_failure(hook, &reason),
            Failure::Condition(e) => ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} {:?} is forbidden: {e}",
                    ctx.path.rt.qualified(),
                    ctx.path.name.as_deref().unwrap_or("")
                ),
            ),
        }
    }
}

fn attributes<'a>(ctx: &'a Ctx<'_>, op: Operation) -> Attributes<'a> {
    Attributes {
        operation: op.as_str(),
        group: &ctx.path.rt.group,
        version: &ctx.path.rt.version,
        resource: &ctx.path.rt.plural,
        subresource: ctx.path.subresource.as_deref().unwrap_or(""),
        namespaced: ctx.path.rt.namespaced,
    }
}

/// A hook the request calls on a dry run: only webhooks without side
/// effects; any other refuses the dry run (upstream's message).
fn check_dry_run(ctx: &Ctx<'_>, hook: &Hook) -> ApiResult<()> {
    if ctx.query.dry_run() && !hook.dry_run_safe {
        return Err(ApiError::bad_request(format!(
            "admission webhook {:?} does not support dry run",
            hook.name
        )));
    }
    Ok(())
}

/// Runs the mutating webhooks over `obj` (CREATE, UPDATE); `old` is the
/// stored object on an update. Answers whether a webhook changed `obj`.
pub async fn mutate(
    ctx: &Ctx<'_>,
    op: Operation,
    old: Option<&Value>,
    obj: &mut Value,
) -> ApiResult<bool> {
    if exempt(&ctx.path.rt) {
        return Ok(false);
    }
    let hooks = load(ctx, "mutatingwebhookconfigurations").await;
    if hooks.is_empty() {
        return Ok(false);
    }
    let mut changed = false;
    let attrs = attributes(ctx, op);
    let ns_labels = namespace_labels(ctx, Some(obj), old).await;
    // For each webhook: whether the object changed after its last call
    // (IfNeeded webhooks are called once more then).
    let mut changed_after: Vec<Option<bool>> = vec![None; hooks.len()];
    for round in 0..2 {
        for (i, hook) in hooks.iter().enumerate() {
            if round == 1 && !(hook.reinvoke && changed_after[i] == Some(true)) {
                continue;
            }
            if !matching::matches(hook, &attrs, ns_labels.as_ref(), old, Some(obj)) {
                continue;
            }
            check_dry_run(ctx, hook)?;
            let verdict = match call(ctx, hook, op, old, Some(obj), true).await {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(f) if hook.ignore_failures => {
                    warn!(webhook = %hook.name, reason = f.text(), "failed calling webhook, failing open");
                    continue;
                }
                Err(f) => return Err(f.into_error(ctx, hook)),
            };
            for w in &verdict.warnings {
                ctx.warnings.push(w.clone());
            }
            if !verdict.allowed {
                return Err(denial(hook, verdict.status.as_ref()));
            }
            changed_after[i] = Some(false);
            if let Some(patch) = verdict.patch {
                let mut patched = obj.clone();
                if let Err(e) = json_patch::patch(&mut patched, &patch) {
                    let reason = format!(
                        "received invalid webhook response: the JSON patch could not be applied: {e}"
                    );
                    if hook.ignore_failures {
                        warn!(webhook = %hook.name, %reason, "failed calling webhook, failing open");
                        continue;
                    }
                    return Err(call_failure(hook, &reason));
                }
                if patched != *obj {
                    *obj = patched;
                    changed = true;
                    for (j, c) in changed_after.iter_mut().enumerate() {
                        if j != i && c.is_some() {
                            *c = Some(true);
                        }
                    }
                }
            }
        }
    }
    // The patched object must still be one of its type.
    if let Err(e) = (ctx.path.rt.schema)(obj) {
        return Err(ApiError::internal(format!(
            "Internal error occurred: admission webhooks produced an invalid {}: {e}",
            ctx.path.rt.kind
        )));
    }
    Ok(changed)
}

/// Runs the validating webhooks (in parallel) over the request: `obj` is
/// the object to store (none on DELETE), `old` the stored one.
pub async fn validate(
    ctx: &Ctx<'_>,
    op: Operation,
    old: Option<&Value>,
    obj: Option<&Value>,
) -> ApiResult<()> {
    if exempt(&ctx.path.rt) {
        return Ok(());
    }
    policy::validate(ctx, op, old, obj).await?;
    let hooks = load(ctx, "validatingwebhookconfigurations").await;
    if hooks.is_empty() {
        return Ok(());
    }
    // Built-in validation comes first: a webhook sees only valid objects.
    if let Some(o) = obj {
        crate::objects::validate(&ctx.path.rt, o)?;
    }
    let attrs = attributes(ctx, op);
    let ns_labels = namespace_labels(ctx, obj, old).await;
    let mut chosen = Vec::new();
    for hook in &hooks {
        if matching::matches(hook, &attrs, ns_labels.as_ref(), old, obj) {
            check_dry_run(ctx, hook)?;
            chosen.push(hook);
        }
    }
    let results =
        futures::future::join_all(chosen.iter().map(|h| call(ctx, h, op, old, obj, false))).await;
    let mut first_error = None;
    for (hook, result) in chosen.iter().zip(results) {
        let err = match result {
            Ok(None) => continue,
            Ok(Some(v)) => {
                for w in &v.warnings {
                    ctx.warnings.push(w.clone());
                }
                if v.allowed {
                    continue;
                }
                denial(hook, v.status.as_ref())
            }
            Err(f) if hook.ignore_failures => {
                warn!(webhook = %hook.name, reason = f.text(), "failed calling webhook, failing open");
                continue;
            }
            Err(f) => f.into_error(ctx, hook),
        };
        first_error.get_or_insert(err);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Admission of a delete of `old`: mutating webhooks are called (a patch
/// has no object to apply to and is ignored), then validating ones.
pub async fn admit_delete(ctx: &Ctx<'_>, old: &Value) -> ApiResult<()> {
    if exempt(&ctx.path.rt) {
        return Ok(());
    }
    let hooks = load(ctx, "mutatingwebhookconfigurations").await;
    if !hooks.is_empty() {
        let attrs = attributes(ctx, Operation::Delete);
        let ns_labels = namespace_labels(ctx, None, Some(old)).await;
        for hook in &hooks {
            if !matching::matches(hook, &attrs, ns_labels.as_ref(), Some(old), None) {
                continue;
            }
            check_dry_run(ctx, hook)?;
            match call(ctx, hook, Operation::Delete, Some(old), None, true).await {
                Ok(None) => {}
                Ok(Some(v)) if !v.allowed => return Err(denial(hook, v.status.as_ref())),
                Ok(Some(v)) => v.warnings.into_iter().for_each(|w| ctx.warnings.push(w)),
                Err(f) if hook.ignore_failures => {
                    warn!(webhook = %hook.name, reason = f.text(), "failed calling webhook, failing open");
                }
                Err(f) => return Err(f.into_error(ctx, hook)),
            }
        }
    }
    validate(ctx, Operation::Delete, Some(old), None).await
}
