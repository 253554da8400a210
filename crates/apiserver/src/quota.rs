//! ResourceQuota and LimitRange (`v1`): their strategies (defaults,
//! validation with upstream's messages, quantities checked at decode time
//! as upstream's decoder does), the ResourceQuota Table, and the two
//! admission plugins kube-apiserver runs:
//!
//! * LimitRanger ([`admit_limits`]): a created pod gets the Container
//!   defaults of its namespace's LimitRanges and must fit their
//!   Container/Pod `min`/`max`/`maxLimitRequestRatio`; a created or
//!   updated claim their PersistentVolumeClaim `min`/`max`. Refusals are
//!   403 `pods "x" is forbidden: maximum cpu usage per Container is 500m,
//!   but limit is 1`.
//! * ResourceQuota ([`admit_quota`], after the validating webhooks):
//!   every create in a namespace (and a Service or claim update that
//!   grows) is charged against the quotas that match it (their
//!   `status.hard`, scopes), refused with upstream's `exceeded quota`
//!   or `must specify` 403, and the new `status.used` is written with
//!   the quota's resourceVersion as the optimistic lock: a conflict
//!   (another create, on this or another apiserver) re-reads the quotas
//!   from etcd and checks again. Creates in one namespace are serialised
//!   per apiserver so they do not collide with each other.
//!
//! The arithmetic is `rke2_apimachinery::quota`'s, shared with the quota
//! controller, which recomputes `status.used` from the live objects.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use chrono::Utc;
use rke2_apimachinery::quantity::parse_quantity;
use rke2_apimachinery::quota as q;
use serde_json::{Value, json};

use crate::ApiState;
use crate::objects::{self, name_of};
use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, Strategy};
use rke2_datastore::StoreError;

const QUANTITY_FORMAT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

fn cause(field: impl Into<String>, ty: &str, detail: impl Into<String>) -> Cause {
    (field.into(), ty.into(), detail.into())
}

/// The first quantity under `maps` (objects of name → quantity) that does
/// not parse: upstream's decoder refuses the whole body with the
/// quantity's own error (a 400, before any validation).
fn bad_quantity(maps: &[&Value]) -> Option<crate::schema::TypeError> {
    for m in maps {
        for v in m.as_object().into_iter().flat_map(|m| m.values()) {
            let err = match v {
                Value::String(s) => parse_quantity(s).err().map(|e| e.to_string()),
                Value::Number(n) => parse_quantity(&n.to_string()).err().map(|e| e.to_string()),
                Value::Null => None,
                _ => Some(QUANTITY_FORMAT.to_string()),
            };
            if let Some(message) = err {
                return Some(crate::schema::TypeError {
                    path: String::new(),
                    message,
                });
            }
        }
    }
    None
}

/// A pod whose containers' requests, limits or overhead hold a quantity
/// that does not parse is refused at decode, as upstream's decoder does.
pub fn pod_bad_quantity(pod: &Value) -> Option<crate::schema::TypeError> {
    let spec = &pod["spec"];
    let mut maps = vec![&spec["overhead"]];
    for key in ["containers", "initContainers"] {
        for c in spec[key].as_array().into_iter().flatten() {
            maps.push(&c["resources"]["requests"]);
            maps.push(&c["resources"]["limits"]);
        }
    }
    bad_quantity(&maps)
}

/// `[]core.ResourceQuotaScope{"A", "B"}`, Go's `%#v` of the scopes.
fn go_scopes(scopes: &[&str]) -> String {
    let items: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    format!("[]core.ResourceQuotaScope{{{}}}", items.join(", "))
}

/// upstream's `validateResourceName`, with `standard` the type's list.
fn resource_name_problems(
    name: &str,
    field: &str,
    standard: impl Fn(&str) -> bool,
    standard_msg: &str,
    causes: &mut Vec<Cause>,
) {
    let problems = rke2_apimachinery::validation::validate_label_key(name);
    if !problems.is_empty() {
        for p in problems {
            causes.push(cause(field, "Invalid value", format!("{name}: {p}")));
        }
        return;
    }
    if !name.contains('/') && !standard(name) {
        causes.push(cause(
            field,
            "Invalid value",
            format!("{name}: {standard_msg}"),
        ));
    }
}

fn is_standard_resource(name: &str) -> bool {
    q::is_standard_quota_resource(name) || name == "storage"
}

fn validate_quota_list(list: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (k, v) in list.as_object().into_iter().flatten() {
        let field = format!("{path}[{k}]");
        resource_name_problems(
            k,
            &field,
            is_standard_resource,
            "must be a standard resource type or fully qualified",
            causes,
        );
        if !k.contains('/') && !q::is_standard_quota_resource(k) {
            causes.push(cause(
                &field,
                "Invalid value",
                format!("{k}: must be a standard resource for quota"),
            ));
        }
        let Some(qty) = q::quantity_of(v) else {
            continue;
        };
        if qty.as_nanos() < 0 {
            causes.push(cause(
                &field,
                "Invalid value",
                format!("{:?}: must be greater than or equal to 0", qty.canonical()),
            ));
        }
        if q::is_integer_resource(k) && qty.as_milli() % 1000 != 0 {
            causes.push(cause(
                &field,
                "Invalid value",
                format!("{:?}: must be an integer", qty.canonical()),
            ));
        }
    }
}

const SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
    "VolumeAttributesClass",
];

/// upstream's `ValidateResourceQuotaSpec` and `ValidateResourceQuotaStatus`.
pub fn validate_quota(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    validate_quota_list(&spec["hard"], "spec.hard", causes);
    let hard: BTreeSet<&str> = spec["hard"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let scopes: Vec<&str> = spec["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for s in &scopes {
        if !SCOPES.contains(s) {
            causes.push(cause(
                "spec.scopes",
                "Invalid value",
                format!("{}: unsupported scope", go_scopes(&scopes)),
            ));
        }
        for k in &hard {
            if q::is_standard_quota_resource(k) && !q::scope_valid_for(s, k) {
                causes.push(cause(
                    "spec.scopes",
                    "Invalid value",
                    format!(
                        "{}: unsupported scope applied to resource",
                        go_scopes(&scopes)
                    ),
                ));
            }
        }
    }
    for pair in [
        ["BestEffort", "NotBestEffort"],
        ["Terminating", "NotTerminating"],
    ] {
        if pair.iter().all(|p| scopes.contains(p)) {
            causes.push(cause(
                "spec.scopes",
                "Invalid value",
                format!("{}: conflicting scopes", go_scopes(&scopes)),
            ));
        }
    }
    let path = "spec.scopeSelector.matchExpressions";
    for e in spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let scope = e["scopeName"].as_str().unwrap_or("");
        let op = e["operator"].as_str().unwrap_or("");
        let values = e["values"].as_array().map(Vec::len).unwrap_or(0);
        if !SCOPES.contains(&scope) {
            causes.push(cause(
                format!("{path}.scopeName"),
                "Invalid value",
                format!("{scope:?}: unsupported scope"),
            ));
        }
        if matches!(
            scope,
            "BestEffort"
                | "NotBestEffort"
                | "Terminating"
                | "NotTerminating"
                | "CrossNamespacePodAffinity"
        ) && op != "Exists"
        {
            causes.push(cause(format!("{path}.operator"), "Invalid value", format!("{op:?}: must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity")));
        }
        match op {
            "In" | "NotIn" if values == 0 => causes.push(cause(
                format!("{path}.values"),
                "Required value",
                "must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
            )),
            "Exists" | "DoesNotExist" if values != 0 => causes.push(cause(
                format!("{path}.values"),
                "Invalid value",
                format!(
                    "{}: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
                    e["values"]
                ),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(cause(
                format!("{path}.operator"),
                "Invalid value",
                format!("{other:?}: not a valid selector operator"),
            )),
        }
    }
    validate_quota_list(&obj["status"]["hard"], "status.hard", causes);
    validate_quota_list(&obj["status"]["used"], "status.used", causes);
}

/// ResourceQuota objects: status cleared on create (the quota controller
/// fills it), quantities checked at decode, upstream's validation.
#[derive(Debug)]
pub struct ResourceQuota;

impl Strategy for ResourceQuota {
    fn unknown_fields(
        &self,
        rt: &ResourceType,
        obj: &Value,
    ) -> Result<Vec<crate::schema::FieldPath>, crate::schema::TypeError> {
        if let Some(e) = bad_quantity(&[
            &obj["spec"]["hard"],
            &obj["status"]["hard"],
            &obj["status"]["used"],
        ]) {
            return Err(e);
        }
        (rt.schema)(obj)
    }

    fn prepare_create(&self, obj: &mut Value, _requester: &crate::Identity) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_quota(obj, causes);
    }
}

fn is_standard_limit_type(t: &str) -> bool {
    matches!(t, "Pod" | "Container" | "PersistentVolumeClaim")
}

fn is_container_resource(n: &str) -> bool {
    matches!(n, "cpu" | "memory" | "ephemeral-storage") || n.starts_with("hugepages-")
}

/// upstream's `ValidateLimitRange` (the spec part).
pub fn validate_limit_range(obj: &Value, causes: &mut Vec<Cause>) {
    let mut types = BTreeSet::new();
    for (i, item) in obj["spec"]["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.limits[{i}]");
        let ty = item["type"].as_str().unwrap_or("");
        let problems = rke2_apimachinery::validation::validate_label_key(ty);
        if !problems.is_empty() {
            for p in problems {
                causes.push(cause(
                    format!("{at}.type"),
                    "Invalid value",
                    format!("{ty:?}: {p}"),
                ));
            }
        } else if !ty.contains('/') && !is_standard_limit_type(ty) {
            causes.push(cause(
                format!("{at}.type"),
                "Invalid value",
                format!("{ty:?}: must be a standard limit type or fully qualified"),
            ));
        }
        if !types.insert(ty.to_string()) {
            causes.push(cause(
                format!("{at}.type"),
                "Duplicate value",
                format!("{ty:?}"),
            ));
        }
        let container_like = matches!(ty, "Pod" | "Container");
        for key in [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            if ty == "Pod" && matches!(key, "default" | "defaultRequest") {
                if item[key].as_object().is_some_and(|m| !m.is_empty()) {
                    causes.push(cause(
                        format!("{at}.{key}"),
                        "Forbidden",
                        "may not be specified when `type` is 'Pod'",
                    ));
                }
                continue;
            }
            for k in item[key].as_object().into_iter().flat_map(|m| m.keys()) {
                let field = format!("{at}.{key}[{k}]");
                if container_like {
                    resource_name_problems(
                        k,
                        &field,
                        is_container_resource,
                        "must be a standard resource for containers",
                        causes,
                    );
                } else {
                    resource_name_problems(
                        k,
                        &field,
                        is_standard_resource,
                        "must be a standard resource type or fully qualified",
                        causes,
                    );
                }
            }
        }
        if ty == "PersistentVolumeClaim"
            && item["min"]["storage"].is_null()
            && item["max"]["storage"].is_null()
        {
            causes.push(cause(
                format!("{at}.limits"),
                "Required value",
                "either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        let get = |key: &str, r: &str| q::quantity_of(&item[key][r]);
        let keys: BTreeSet<String> = [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ]
        .iter()
        .flat_map(|k| {
            item[*k]
                .as_object()
                .into_iter()
                .flat_map(|m| m.keys().cloned())
        })
        .collect();
        for k in keys {
            let (min, max, def, defreq, ratio) = (
                get("min", &k),
                get("max", &k),
                get("default", &k).filter(|_| ty != "Pod"),
                get("defaultRequest", &k).filter(|_| ty != "Pod"),
                get("maxLimitRequestRatio", &k),
            );
            let c = |x: &rke2_apimachinery::Quantity| x.canonical();
            if let (Some(mn), Some(mx)) = (&min, &max)
                && mn > mx
            {
                causes.push(cause(
                    format!("{at}.min[{k}]"),
                    "Invalid value",
                    format!(
                        "{:?}: min value {} is greater than max value {}",
                        c(mn),
                        c(mn),
                        c(mx)
                    ),
                ));
            }
            if let (Some(dr), Some(mn)) = (&defreq, &min)
                && mn > dr
            {
                causes.push(cause(
                    format!("{at}.defaultRequest[{k}]"),
                    "Invalid value",
                    format!(
                        "{:?}: min value {} is greater than default request value {}",
                        c(dr),
                        c(mn),
                        c(dr)
                    ),
                ));
            }
            if let (Some(dr), Some(mx)) = (&defreq, &max)
                && dr > mx
            {
                causes.push(cause(
                    format!("{at}.defaultRequest[{k}]"),
                    "Invalid value",
                    format!(
                        "{:?}: default request value {} is greater than max value {}",
                        c(dr),
                        c(dr),
                        c(mx)
                    ),
                ));
            }
            if let (Some(dr), Some(d)) = (&defreq, &def)
                && dr > d
            {
                causes.push(cause(
                    format!("{at}.defaultRequest[{k}]"),
                    "Invalid value",
                    format!(
                        "{:?}: default request value {} is greater than default limit value {}",
                        c(dr),
                        c(dr),
                        c(d)
                    ),
                ));
            }
            if let (Some(d), Some(mn)) = (&def, &min)
                && mn > d
            {
                causes.push(cause(
                    format!("{at}.default[{k}]"),
                    "Invalid value",
                    format!(
                        "{:?}: min value {} is greater than default value {}",
                        c(mn),
                        c(mn),
                        c(d)
                    ),
                ));
            }
            if let (Some(d), Some(mx)) = (&def, &max)
                && d > mx
            {
                causes.push(cause(
                    format!("{at}.default[{k}]"),
                    "Invalid value",
                    format!(
                        "{:?}: default value {} is greater than max value {}",
                        c(mx),
                        c(d),
                        c(mx)
                    ),
                ));
            }
            if let Some(r) = &ratio
                && r.as_nanos() < 1_000_000_000
            {
                causes.push(cause(
                    format!("{at}.maxLimitRequestRatio[{k}]"),
                    "Invalid value",
                    format!("{:?}: ratio {} is less than 1", c(r), c(r)),
                ));
            }
            if let (Some(r), Some(mn), Some(mx)) = (&ratio, &min, &max)
                && mn.as_milli() > 0
            {
                let limit = mx.as_milli() as f64 / mn.as_milli() as f64;
                let ratio = r.as_milli() as f64 / 1000.0;
                if ratio > limit {
                    causes.push(cause(
                        format!("{at}.maxLimitRequestRatio[{k}]"),
                        "Invalid value",
                        format!(
                            "{:?}: ratio {} is greater than max/min = {limit:.6}",
                            c(r),
                            c(r)
                        ),
                    ));
                }
            }
        }
    }
}

/// LimitRange objects: upstream's item defaults and validation,
/// quantities checked at decode.
#[derive(Debug)]
pub struct LimitRange;

impl Strategy for LimitRange {
    fn unknown_fields(
        &self,
        rt: &ResourceType,
        obj: &Value,
    ) -> Result<Vec<crate::schema::FieldPath>, crate::schema::TypeError> {
        for item in obj["spec"]["limits"].as_array().into_iter().flatten() {
            let maps: Vec<&Value> = [
                "max",
                "min",
                "default",
                "defaultRequest",
                "maxLimitRequestRatio",
            ]
            .iter()
            .map(|k| &item[*k])
            .collect();
            if let Some(e) = bad_quantity(&maps) {
                return Err(e);
            }
        }
        (rt.schema)(obj)
    }

    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(items) = obj["spec"]["limits"].as_array_mut() {
            items.iter_mut().for_each(q::default_limit_range_item);
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_limit_range(obj, causes);
    }
}

/// The Table columns of a ResourceQuota between NAME and the end: AGE
/// REQUEST LIMIT (kubectl's `printResourceQuota`).
pub fn columns() -> Vec<Value> {
    vec![
        json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}),
        json!({"name": "Request", "type": "string", "format": "", "description": "Request represents a minimum amount of cpu/memory that a container may consume.", "priority": 0}),
        json!({"name": "Limit", "type": "string", "format": "", "description": "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.", "priority": 0}),
    ]
}

/// REQUEST and LIMIT cells: `name: used/hard` for each hard resource by
/// name, the `limits.*` ones under LIMIT.
pub fn cells(obj: &Value) -> (Value, Value) {
    let hard = q::list_of(&obj["spec"]["hard"]);
    let used = q::list_of(&obj["status"]["used"]);
    let mut req = Vec::new();
    let mut lim = Vec::new();
    for (name, h) in &hard {
        let u = used
            .get(name)
            .map(|u| u.canonical())
            .unwrap_or_else(|| "0".into());
        let cell = format!("{name}: {u}/{}", h.canonical());
        if name.split('.').count() > 1 && name.starts_with("limits.") {
            lim.push(cell);
        } else {
            req.push(cell);
        }
    }
    (json!(req.join(", ")), json!(lim.join(", ")))
}

fn forbidden(rt: &ResourceType, obj: &Value, msg: impl std::fmt::Display) -> ApiError {
    let name = name_of(obj);
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!("{} \"{name}\" is forbidden: {msg}", rt.qualified()),
    );
    e.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
    e
}

/// The objects of `rt` in `ns`, read from etcd.
async fn list_in(state: &ApiState, rt: &ResourceType, ns: &str) -> ApiResult<Vec<(Value, i64)>> {
    let page = state.store.list(&rt.prefix(Some(ns)), None, 0, 0).await?;
    page.items
        .iter()
        .map(|kv| {
            Ok((
                objects::from_stored(rt, &kv.value, kv.mod_revision)?,
                kv.mod_revision,
            ))
        })
        .collect()
}

/// LimitRanger admission of a created pod or claim, or an updated claim
/// (`old` set): defaults filled into pods, constraints checked.
pub async fn admit_limits(
    state: &ApiState,
    rt: &ResourceType,
    old: Option<&Value>,
    obj: &mut Value,
) -> ApiResult<()> {
    if rt.plural == "pods" && old.is_some() {
        return Ok(());
    }
    limit_ranger(state, rt, obj, old.is_none()).await
}

/// Admission of a pod resize (`pods/resize`): LimitRange constraints
/// checked against the new resources (nothing defaulted), then the
/// growth charged to the namespace's quotas.
pub async fn admit_pod_resize(
    state: &ApiState,
    rt: &ResourceType,
    old: &Value,
    new: &mut Value,
    dry_run: bool,
) -> ApiResult<()> {
    limit_ranger(state, rt, new, false).await?;
    charge_quota(state, rt, Some(old), new, dry_run, true).await
}

/// LimitRanger: pods (defaulted first when `default_pod`) and claims
/// checked against the namespace's LimitRanges.
async fn limit_ranger(
    state: &ApiState,
    rt: &ResourceType,
    obj: &mut Value,
    default_pod: bool,
) -> ApiResult<()> {
    if !rt.group.is_empty() {
        return Ok(());
    }
    let pod = match rt.plural.as_str() {
        "pods" => true,
        "persistentvolumeclaims" => false,
        _ => return Ok(()),
    };
    let Some(lrt) = registry::find("", "v1", "limitranges") else {
        return Ok(());
    };
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let ranges = list_in(state, lrt, &ns).await?;
    if ranges.is_empty() {
        return Ok(());
    }
    let mut errs = Vec::new();
    for (lr, _) in &ranges {
        if pod && default_pod {
            q::default_pod(lr, obj);
        }
    }
    for (lr, _) in &ranges {
        if pod {
            errs.extend(q::validate_pod(lr, obj));
        } else {
            errs.extend(q::validate_claim(lr, obj));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(forbidden(rt, obj, q::aggregate(&errs)))
    }
}

/// Per-namespace locks: creates in one namespace charge its quotas one
/// at a time on this apiserver (upstream batches them per namespace), so
/// they do not conflict with each other; other apiservers are kept in
/// line by the revision compare.
static NAMESPACE_LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn namespace_lock(ns: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = NAMESPACE_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(ns.to_string()).or_default().clone()
}

/// How many times a charge re-reads the quotas after a conflict.
const CHARGE_ATTEMPTS: usize = 20;

/// Types quota never counts (upstream's ignored resources).
fn ignored(rt: &ResourceType) -> bool {
    rt.plural == "events" || !rt.namespaced
}

/// ResourceQuota admission of a create (`old` `None`) or an update of a
/// Service or claim: refuses what would exceed a matching quota and
/// charges the rest into the quotas' `status.used` (not on a dry run).
pub async fn admit_quota(
    state: &ApiState,
    rt: &ResourceType,
    old: Option<&Value>,
    obj: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    charge_quota(state, rt, old, obj, dry_run, false).await
}

/// [`admit_quota`], and for `resize` also an update of a pod.
async fn charge_quota(
    state: &ApiState,
    rt: &ResourceType,
    old: Option<&Value>,
    obj: &Value,
    dry_run: bool,
    resize: bool,
) -> ApiResult<()> {
    if ignored(rt) {
        return Ok(());
    }
    if old.is_some()
        && !resize
        && !(rt.group.is_empty()
            && matches!(rt.plural.as_str(), "services" | "persistentvolumeclaims"))
    {
        return Ok(());
    }
    let Some(qrt) = registry::find("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // Most namespaces have no quota: the cache says so without a read.
    if let Some(snap) = state
        .caches
        .running(qrt)
        .and_then(|c| c.snapshot(&qrt.prefix(Some(&ns))))
        && snap.objects.is_empty()
    {
        return Ok(());
    }
    let now = Utc::now().timestamp();
    let mut delta = q::usage(&rt.group, &rt.plural, obj, now);
    if let Some(old) = old {
        delta = q::subtract_non_negative(&delta, &q::usage(&rt.group, &rt.plural, old, now));
        if q::is_zero(&delta) {
            return Ok(());
        }
    }
    let lock = namespace_lock(&ns);
    let _held = lock.lock().await;
    let mut charged: BTreeSet<String> = BTreeSet::new();
    for attempt in 0..CHARGE_ATTEMPTS {
        let quotas = list_in(state, qrt, &ns).await?;
        let mut updates = Vec::new();
        for (quota, rev) in quotas {
            let qname = name_of(&quota).to_string();
            if charged.contains(&qname) || !q::quota_matches(&quota, &rt.group, &rt.plural, obj) {
                continue;
            }
            let hard = q::list_of(&quota["status"]["hard"]);
            let hard_names: Vec<String> = hard.keys().cloned().collect();
            let restricted = q::matching_resources(&rt.group, &rt.plural, &hard_names);
            if rt.group.is_empty() && rt.plural == "pods" {
                q::pod_constraints(&restricted, obj)
                    .map_err(|e| forbidden(rt, obj, format!("failed quota: {qname}: {e}")))?;
            }
            let used = q::list_of(&quota["status"]["used"]);
            if restricted.iter().any(|r| !used.contains_key(*r)) {
                let names: Vec<&str> = restricted.iter().map(|s| s.as_str()).collect();
                return Err(forbidden(
                    rt,
                    obj,
                    format!(
                        "status unknown for quota: {qname}, resources: {}",
                        names.join(",")
                    ),
                ));
            }
            let requested = q::mask(&delta, hard.keys());
            let new_usage = q::add(&used, &requested);
            let (ok, exceeded) =
                q::less_than_or_equal(&q::mask(&new_usage, requested.keys()), &hard);
            if !ok {
                return Err(forbidden(
                    rt,
                    obj,
                    format!(
                        "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                        q::pretty(&q::mask(&requested, &exceeded)),
                        q::pretty(&q::mask(&used, &exceeded)),
                        q::pretty(&q::mask(&hard, &exceeded)),
                    ),
                ));
            }
            if !requested.is_empty() {
                let mut next = quota.clone();
                next["status"]["used"] = q::to_json(&new_usage);
                updates.push((qname, rev, next));
            }
        }
        if dry_run || updates.is_empty() {
            return Ok(());
        }
        let mut conflicted = false;
        for (qname, rev, next) in updates {
            match state
                .store
                .update(&qrt.key(Some(&ns), &qname), objects::to_stored(&next), rev)
                .await
            {
                Ok(_) => {
                    charged.insert(qname);
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound) => {
                    conflicted = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !conflicted {
            return Ok(());
        }
        // Another apiserver (or the controller) wrote the quota: back off
        // a little, differently per request, and check again.
        let jitter = rand_jitter(attempt);
        tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
    }
    Err(ApiError::conflict(qrt, "quota"))
}

fn rand_jitter(attempt: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (attempt as u64 + 1) * 5 + u64::from(nanos % 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_validation() {
        let mut causes = Vec::new();
        validate_quota(
            &json!({"spec": {"hard": {"pods": "1500m", "cpu": "-1", "limits.pods": "1"},
                              "scopes": ["BestEffort", "NotBestEffort"]}}),
            &mut causes,
        );
        let msgs: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}: {}", c.0, c.1, c.2))
            .collect();
        assert!(
            msgs.contains(
                &"spec.hard[pods]: Invalid value: \"1500m\": must be an integer".to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(
                &"spec.hard[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
                    .to_string()
            ),
            "{msgs:?}"
        );
        assert!(msgs.contains(&"spec.hard[limits.pods]: Invalid value: limits.pods: must be a standard resource type or fully qualified".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.hard[limits.pods]: Invalid value: limits.pods: must be a standard resource for quota".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: conflicting scopes".to_string()), "{msgs:?}");
    }

    #[test]
    fn bad_quantities_fail_decoding() {
        let obj = json!({"spec": {"hard": {"cpu": "abc"}}});
        let e = bad_quantity(&[&obj["spec"]["hard"]]).unwrap();
        assert_eq!(e.to_string(), QUANTITY_FORMAT);
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1GB"}}}]}});
        assert_eq!(
            pod_bad_quantity(&pod).unwrap().to_string(),
            "unable to parse quantity's suffix"
        );
        assert!(pod_bad_quantity(&json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 2}}}]}})).is_none());
    }

    #[test]
    fn limit_range_validation() {
        let mut causes = Vec::new();
        validate_limit_range(
            &json!({"spec": {"limits": [{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}},
                                        {"type": "Pod", "default": {"cpu": "1"}}]}}),
            &mut causes,
        );
        let msgs: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}: {}", c.0, c.1, c.2))
            .collect();
        assert!(msgs.contains(&"spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1".to_string()), "{msgs:?}");
        assert!(
            msgs.contains(
                &"spec.limits[1].default: Forbidden: may not be specified when `type` is 'Pod'"
                    .to_string()
            ),
            "{msgs:?}"
        );
    }

    #[test]
    fn table_cells() {
        let (req, lim) = cells(
            &json!({"spec": {"hard": {"requests.cpu": "1", "limits.cpu": "2", "pods": "10"}},
                                        "status": {"used": {"requests.cpu": "500m", "pods": "1"}}}),
        );
        assert_eq!(req, "pods: 1/10, requests.cpu: 500m/1");
        assert_eq!(lim, "limits.cpu: 0/2");
    }
}
