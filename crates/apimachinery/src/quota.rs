//! Resource quota and limit range arithmetic as kube-apiserver's
//! `ResourceQuota` and `LimitRanger` admission plugins and
//! kube-controller-manager's quota controller compute it: resource lists,
//! the usage of an object (pods, services, claims, object counts), quota
//! scopes, and LimitRange defaults and constraints, with upstream's
//! messages. Pure functions over JSON objects, shared by the apiserver
//! (admission) and the controllers (`status.used`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::quantity::{Quantity, parse_quantity};

/// Resource name → quantity (upstream's `ResourceList`), sorted by name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// The quantities of a JSON resource list; unparsable ones are skipped
/// (stored objects were checked when written).
pub fn list_of(v: &Value) -> ResourceList {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, q)| Some((k.clone(), quantity_of(q)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A quantity from JSON (a string or a number).
pub fn quantity_of(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => parse_quantity(s).ok(),
        Value::Number(n) => parse_quantity(&n.to_string()).ok(),
        _ => None,
    }
}

/// A resource list as JSON, each quantity in canonical form.
pub fn to_json(l: &ResourceList) -> Value {
    Value::Object(
        l.iter()
            .map(|(k, q)| (k.clone(), json!(q.canonical())))
            .collect::<Map<_, _>>(),
    )
}

/// `a + b` key by key (upstream's `quota.Add`).
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, q) in b {
        let sum = match out.get(k) {
            Some(x) => x.add(q),
            None => q.clone(),
        };
        out.insert(k.clone(), sum);
    }
    out
}

/// `a - b` for the keys of `a`, never below zero
/// (upstream's `SubtractWithNonNegativeResult`).
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    a.iter()
        .map(|(k, q)| {
            let d = match b.get(k) {
                Some(x) => q.sub(x),
                None => q.clone(),
            };
            let d = if d.as_nanos() < 0 {
                Quantity::from_nanos(0, d.format())
            } else {
                d
            };
            (k.clone(), d)
        })
        .collect()
}

/// `l` limited to `names` (upstream's `quota.Mask`).
pub fn mask<'a>(l: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    let keep: BTreeSet<&String> = names.into_iter().collect();
    l.iter()
        .filter(|(k, _)| keep.contains(k))
        .map(|(k, q)| (k.clone(), q.clone()))
        .collect()
}

/// Whether every quantity of `a` is at most `b`'s of the same name, and
/// the names that are not (upstream's `quota.LessThanOrEqual`).
pub fn less_than_or_equal(a: &ResourceList, b: &ResourceList) -> (bool, Vec<String>) {
    let exceeded: Vec<String> = a
        .iter()
        .filter(|(k, q)| b.get(*k).is_some_and(|h| *q > h))
        .map(|(k, _)| k.clone())
        .collect();
    (exceeded.is_empty(), exceeded)
}

/// Whether every quantity is zero.
pub fn is_zero(l: &ResourceList) -> bool {
    l.values().all(Quantity::is_zero)
}

/// `a=1,b=2Gi` in name order (upstream's `prettyPrint`).
pub fn pretty(l: &ResourceList) -> String {
    l.iter()
        .map(|(k, q)| format!("{k}={}", q.canonical()))
        .collect::<Vec<_>>()
        .join(",")
}

/// How the quota system counts one resource type: `group`/`plural`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evaluator {
    Pods,
    Services,
    Claims,
    /// Object counts only; `true` when the type also has a legacy name
    /// (`configmaps` besides `count/configmaps`).
    Count(bool),
}

fn evaluator(group: &str, plural: &str) -> Evaluator {
    match (group, plural) {
        ("", "pods") => Evaluator::Pods,
        ("", "services") => Evaluator::Services,
        ("", "persistentvolumeclaims") => Evaluator::Claims,
        ("", "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => {
            Evaluator::Count(true)
        }
        _ => Evaluator::Count(false),
    }
}

/// `count/<plural>.<group>` (`count/<plural>` in the core group).
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

const POD_COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// The names among `hard` that objects of `group`/`plural` are charged
/// for (upstream's `MatchingResources` of the type's evaluator).
pub fn matching_resources<'a>(group: &str, plural: &str, hard: &'a [String]) -> Vec<&'a String> {
    let count = count_name(group, plural);
    hard.iter()
        .filter(|n| {
            let n = n.as_str();
            n == count
                || match evaluator(group, plural) {
                    Evaluator::Pods => {
                        n == "pods"
                            || POD_COMPUTE.contains(&n)
                            || n.starts_with("hugepages-")
                            || n.starts_with("requests.hugepages-")
                            || (n.starts_with("requests.") && n.contains('/'))
                    }
                    Evaluator::Services => {
                        matches!(
                            n,
                            "services" | "services.nodeports" | "services.loadbalancers"
                        )
                    }
                    Evaluator::Claims => {
                        matches!(n, "persistentvolumeclaims" | "requests.storage")
                            || n.split_once(STORAGE_CLASS_SUFFIX).is_some_and(|(_, r)| {
                                matches!(r, "persistentvolumeclaims" | "requests.storage")
                            })
                    }
                    Evaluator::Count(legacy) => legacy && n == plural,
                }
        })
        .collect()
}

fn containers<'a>(spec: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    spec[key].as_array().into_iter().flatten()
}

fn add_into(into: &mut ResourceList, l: &ResourceList) {
    *into = add(into, l);
}

fn max_into(into: &mut ResourceList, l: &ResourceList) {
    for (k, q) in l {
        if into.get(k).is_none_or(|x| q > x) {
            into.insert(k.clone(), q.clone());
        }
    }
}

/// A pod's effective requests or limits (`what` = `requests`/`limits`):
/// the containers' sum, at least every init container's need (sidecars,
/// `restartPolicy: Always`, run beside them), plus the overhead
/// (upstream's `PodRequests`/`PodLimits`).
pub fn pod_resources(pod: &Value, what: &str) -> ResourceList {
    let spec = &pod["spec"];
    let mut total = ResourceList::new();
    for c in containers(spec, "containers") {
        add_into(&mut total, &list_of(&c["resources"][what]));
    }
    let mut sidecars = ResourceList::new();
    let mut init = ResourceList::new();
    for c in containers(spec, "initContainers") {
        let own = list_of(&c["resources"][what]);
        let need = if c["restartPolicy"] == "Always" {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            sidecars.clone()
        } else {
            add(&own, &sidecars)
        };
        max_into(&mut init, &need);
    }
    max_into(&mut total, &init);
    if !spec["overhead"].is_null() {
        add_into(&mut total, &list_of(&spec["overhead"]));
    }
    total
}

/// The quota names a set of requests and limits is charged under
/// (upstream's `podComputeUsageHelper`).
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), Quantity::from_units(1));
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.into(), q.clone());
            out.insert(format!("requests.{r}"), q.clone());
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), q.clone());
        }
    }
    for (k, q) in requests {
        if k.starts_with("hugepages-") {
            out.insert(k.clone(), q.clone());
            out.insert(format!("requests.{k}"), q.clone());
        } else if k.contains('/') && !k.starts_with("kubernetes.io/") {
            out.insert(format!("requests.{k}"), q.clone());
        }
    }
    out
}

/// Whether a pod still counts against compute quota at `now` (seconds
/// since the epoch): not finished, and not stuck terminating past its
/// grace period (upstream's `QuotaV1Pod`).
pub fn pod_counts(pod: &Value, now: i64) -> bool {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    let meta = &pod["metadata"];
    if let (Some(ts), Some(grace)) = (
        meta["deletionTimestamp"].as_str(),
        meta["deletionGracePeriodSeconds"].as_i64(),
    ) && let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts)
        && now > t.timestamp() + grace
    {
        return false;
    }
    true
}

/// What an object of `group`/`plural` uses of quota (upstream's
/// evaluators' `Usage`); `now` in seconds since the epoch.
pub fn usage(group: &str, plural: &str, obj: &Value, now: i64) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert(count_name(group, plural), Quantity::from_units(1));
    match evaluator(group, plural) {
        Evaluator::Pods => {
            if pod_counts(obj, now) {
                let req = pod_resources(obj, "requests");
                let lim = pod_resources(obj, "limits");
                out = add(&out, &compute_usage(&req, &lim));
            }
        }
        Evaluator::Services => {
            let spec = &obj["spec"];
            out.insert("services".into(), Quantity::from_units(1));
            let ports = spec["ports"].as_array().map(Vec::len).unwrap_or(0) as i64;
            match spec["type"].as_str() {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), Quantity::from_units(ports));
                }
                Some("LoadBalancer") => {
                    let node_ports = if spec["allocateLoadBalancerNodePorts"] == false {
                        containers(spec, "ports")
                            .filter(|p| p["nodePort"].as_i64().unwrap_or(0) != 0)
                            .count() as i64
                    } else {
                        ports
                    };
                    out.insert(
                        "services.nodeports".into(),
                        Quantity::from_units(node_ports),
                    );
                    out.insert("services.loadbalancers".into(), Quantity::from_units(1));
                }
                _ => {}
            }
        }
        Evaluator::Claims => {
            out.insert("persistentvolumeclaims".into(), Quantity::from_units(1));
            let class = obj["spec"]["storageClassName"].as_str().unwrap_or("");
            if !class.is_empty() {
                out.insert(
                    format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
                    Quantity::from_units(1),
                );
            }
            // The larger of the request and what was allocated.
            let mut storage = quantity_of(&obj["spec"]["resources"]["requests"]["storage"]);
            if let Some(a) = quantity_of(&obj["status"]["allocatedResources"]["storage"])
                && storage.as_ref().is_none_or(|s| a > *s)
            {
                storage = Some(a);
            }
            if let Some(s) = storage {
                out.insert("requests.storage".into(), s.clone());
                if !class.is_empty() {
                    out.insert(format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"), s);
                }
            }
        }
        Evaluator::Count(legacy) => {
            if legacy {
                out.insert(plural.to_string(), Quantity::from_units(1));
            }
        }
    }
    out
}

/// A pod's QoS class is BestEffort: no container requests or limits CPU
/// or memory (upstream's `GetPodQOS`, [`crate::qos`]).
pub fn is_best_effort(pod: &Value) -> bool {
    crate::qos::qos_class(&pod["spec"]) == "BestEffort"
}

/// The scope requirements of a quota: `spec.scopes` (as `Exists`) and
/// `spec.scopeSelector.matchExpressions`, as (scope, operator, values).
fn scope_requirements(quota: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s.as_str()?.to_string(), "Exists".into(), Vec::new())))
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let values = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        out.push((
            e["scopeName"].as_str().unwrap_or("").to_string(),
            e["operator"].as_str().unwrap_or("").to_string(),
            values,
        ));
    }
    out
}

fn pod_matches_scope(scope: &str, op: &str, values: &[String], pod: &Value) -> bool {
    let spec = &pod["spec"];
    let terminating = spec["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|d| d >= 0);
    match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = spec["priorityClassName"].as_str().unwrap_or("");
            match op {
                "Exists" => !class.is_empty(),
                "In" => values.iter().any(|v| v == class),
                "NotIn" => !values.iter().any(|v| v == class),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => {
            let aff = &spec["affinity"];
            ["podAffinity", "podAntiAffinity"].iter().any(|k| {
                let a = &aff[*k];
                [
                    "requiredDuringSchedulingIgnoredDuringExecution",
                    "preferredDuringSchedulingIgnoredDuringExecution",
                ]
                .iter()
                .flat_map(|w| a[*w].as_array().into_iter().flatten())
                .any(|t| {
                    let t = if t["podAffinityTerm"].is_object() {
                        &t["podAffinityTerm"]
                    } else {
                        t
                    };
                    t["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                        || !t["namespaceSelector"].is_null()
                })
            })
        }
        _ => false,
    }
}

/// Whether `quota` constrains `obj` of `group`/`plural`: it limits at least
/// one resource the object is charged for (in `status.hard`, as
/// upstream's admission reads it) and every scope matches (scopes only
/// ever match pods).
pub fn quota_matches(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let hard: Vec<String> = list_of(&quota["status"]["hard"]).into_keys().collect();
    if matching_resources(group, plural, &hard).is_empty() {
        return false;
    }
    let is_pod = evaluator(group, plural) == Evaluator::Pods;
    scope_requirements(quota)
        .iter()
        .all(|(s, op, v)| is_pod && pod_matches_scope(s, op, v, obj))
}

/// Scope matching of a quota against a pod for the controller, which
/// counts by `spec.hard` (see [`quota_matches`]).
pub fn scopes_match(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let is_pod = evaluator(group, plural) == Evaluator::Pods;
    scope_requirements(quota)
        .iter()
        .all(|(s, op, v)| is_pod && pod_matches_scope(s, op, v, obj))
}

const EXPLICIT: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// A quota that tracks CPU or memory needs every container to say how
/// much (upstream's pod evaluator `Constraints`): `Err` is
/// `must specify limits.cpu for: c; requests.memory for: c,d`.
pub fn pod_constraints(required: &[&String], pod: &Value) -> Result<(), String> {
    let required: BTreeSet<&str> = required
        .iter()
        .map(|s| s.as_str())
        .filter(|s| EXPLICIT.contains(s))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = &pod["spec"];
    for c in containers(spec, "containers").chain(containers(spec, "initContainers")) {
        let have = compute_usage(
            &list_of(&c["resources"]["requests"]),
            &list_of(&c["resources"]["limits"]),
        );
        for r in &required {
            if !have.contains_key(*r) {
                missing
                    .entry(r)
                    .or_default()
                    .insert(c["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// The resource names of a quota standard to Kubernetes (upstream's
/// `IsStandardQuotaResourceName`).
pub fn is_standard_quota_resource(name: &str) -> bool {
    matches!(
        name,
        "pods"
            | "services"
            | "replicationcontrollers"
            | "resourcequotas"
            | "secrets"
            | "configmaps"
            | "persistentvolumeclaims"
            | "services.nodeports"
            | "services.loadbalancers"
            | "requests.storage"
    ) || POD_COMPUTE.contains(&name)
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
}

/// Quota resources whose values must be whole numbers (object counts).
pub fn is_integer_resource(name: &str) -> bool {
    matches!(
        name,
        "pods"
            | "services"
            | "replicationcontrollers"
            | "resourcequotas"
            | "secrets"
            | "configmaps"
            | "persistentvolumeclaims"
            | "services.nodeports"
            | "services.loadbalancers"
    ) || name.starts_with("count/")
}

/// Whether `scope` may be applied to the standard resource `name`
/// (upstream's `IsResourceQuotaScopeValidForResource`).
pub fn scope_valid_for(scope: &str, name: &str) -> bool {
    let pod_objects = matches!(name, "pods" | "count/pods");
    let pod_compute = POD_COMPUTE.contains(&name)
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-");
    match scope {
        "BestEffort" => pod_objects,
        "Terminating"
        | "NotTerminating"
        | "NotBestEffort"
        | "PriorityClass"
        | "CrossNamespacePodAffinity" => pod_objects || pod_compute,
        "VolumeAttributesClass" => {
            matches!(
                name,
                "persistentvolumeclaims" | "count/persistentvolumeclaims" | "requests.storage"
            )
        }
        _ => true,
    }
}

// ---- LimitRange -----------------------------------------------------

/// upstream's `SetDefaults_LimitRangeItem`: a Container item's default
/// limit is its max, its default request its default limit, else its min.
pub fn default_limit_range_item(item: &mut Value) {
    if item["type"] != "Container" {
        return;
    }
    let copy_missing = |item: &mut Value, from: &str, to: &str| {
        let src = item[from].as_object().cloned().unwrap_or_default();
        if src.is_empty() {
            return;
        }
        if !item[to].is_object() {
            item[to] = json!({});
        }
        for (k, v) in src {
            if item[to].get(&k).is_none() {
                item[to][&k] = v;
            }
        }
    };
    copy_missing(item, "max", "default");
    copy_missing(item, "default", "defaultRequest");
    copy_missing(item, "min", "defaultRequest");
}

/// The defaults of the Container items of one LimitRange: (requests,
/// limits) as JSON maps.
fn container_defaults(lr: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let mut req = Map::new();
    let mut lim = Map::new();
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"] == "Container" {
            for (k, v) in item["defaultRequest"].as_object().into_iter().flatten() {
                req.insert(k.clone(), v.clone());
            }
            for (k, v) in item["default"].as_object().into_iter().flatten() {
                lim.insert(k.clone(), v.clone());
            }
        }
    }
    (req, lim)
}

/// Fills a pod's containers' missing requests and limits from a
/// LimitRange's Container defaults and notes what it set in the
/// `kubernetes.io/limit-ranger` annotation (upstream's
/// `PodMutateLimitFunc`).
pub fn default_pod(lr: &Value, pod: &mut Value) {
    let (req, lim) = container_defaults(lr);
    if req.is_empty() && lim.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (key, what) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(cs) = pod["spec"][key].as_array_mut() else {
            continue;
        };
        for c in cs {
            let name = c["name"].as_str().unwrap_or("").to_string();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let mut set = |field: &str, defaults: &Map<String, Value>| {
                let mut set = Vec::new();
                if !c["resources"][field].is_object() {
                    c["resources"][field] = json!({});
                }
                for (k, v) in defaults {
                    if c["resources"][field].get(k).is_none() {
                        c["resources"][field][k] = v.clone();
                        set.push(k.clone());
                    }
                }
                if c["resources"][field].as_object().is_some_and(Map::is_empty)
                    && let Some(m) = c["resources"].as_object_mut()
                {
                    m.remove(field);
                }
                set.sort();
                set
            };
            let set_req = set("requests", &req);
            let set_lim = set("limits", &lim);
            if !set_req.is_empty() {
                notes.push(format!("{} request for {what} {name}", set_req.join(", ")));
            }
            if !set_lim.is_empty() {
                notes.push(format!("{} limit for {what} {name}", set_lim.join(", ")));
            }
        }
    }
    if !notes.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

const MAX_MILLI: i128 = i64::MAX as i128 / 1000;

/// upstream's `requestLimitEnforcedValues`: milli-units when all three
/// fit, else whole units.
fn enforced_values(
    req: Option<&Quantity>,
    lim: Option<&Quantity>,
    enf: &Quantity,
) -> (i128, i128, i128) {
    let v = |q: Option<&Quantity>| q.map(Quantity::value).unwrap_or(0);
    let m = |q: Option<&Quantity>| q.map(Quantity::as_milli).unwrap_or(0);
    if v(req) <= MAX_MILLI && v(lim) <= MAX_MILLI && enf.value() <= MAX_MILLI {
        (m(req), m(lim), enf.as_milli())
    } else {
        (v(req), v(lim), enf.value())
    }
}

fn min_constraint(
    ty: &str,
    r: &str,
    enf: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let (rq, lq) = (req.get(r), lim.get(r));
    let (ov, ol, e) = enforced_values(rq, lq, enf);
    let enf = enf.canonical();
    match rq {
        None => Some(format!(
            "minimum {r} usage per {ty} is {enf}.  No request is specified"
        )),
        Some(q) if ov < e => Some(format!(
            "minimum {r} usage per {ty} is {enf}, but request is {}",
            q.canonical()
        )),
        _ => match lq {
            Some(l) if ol < e => Some(format!(
                "minimum {r} usage per {ty} is {enf}, but limit is {}",
                l.canonical()
            )),
            _ => None,
        },
    }
}

fn max_constraint(
    ty: &str,
    r: &str,
    enf: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let (rq, lq) = (req.get(r), lim.get(r));
    let (ov, ol, e) = enforced_values(rq, lq, enf);
    let enf = enf.canonical();
    match lq {
        None => Some(format!(
            "maximum {r} usage per {ty} is {enf}.  No limit is specified"
        )),
        Some(l) if ol > e => Some(format!(
            "maximum {r} usage per {ty} is {enf}, but limit is {}",
            l.canonical()
        )),
        _ => match rq {
            Some(q) if ov > e => Some(format!(
                "maximum {r} usage per {ty} is {enf}, but request is {}",
                q.canonical()
            )),
            _ => None,
        },
    }
}

fn max_request_constraint(ty: &str, r: &str, enf: &Quantity, req: &ResourceList) -> Option<String> {
    let rq = req.get(r);
    let (ov, _, e) = enforced_values(rq, None, enf);
    let enf = enf.canonical();
    match rq {
        None => Some(format!(
            "maximum {r} usage per {ty} is {enf}.  No request is specified"
        )),
        Some(q) if ov > e => Some(format!(
            "maximum {r} usage per {ty} is {enf}, but request is {}",
            q.canonical()
        )),
        _ => None,
    }
}

fn ratio_constraint(
    ty: &str,
    r: &str,
    enf: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let (rq, lq) = (req.get(r), lim.get(r));
    let (ov, ol, _) = enforced_values(rq, lq, enf);
    let shown = enf.canonical();
    if rq.is_none() || ov == 0 {
        return Some(format!(
            "{r} max limit to request ratio per {ty} is {shown}, but no request is specified or request is 0"
        ));
    }
    if lq.is_none() || ol == 0 {
        return Some(format!(
            "{r} max limit to request ratio per {ty} is {shown}, but no limit is specified or limit is 0"
        ));
    }
    let observed = ol as f64 / ov as f64;
    let (mut cmp, max) = if enf.value() <= MAX_MILLI {
        (observed * 1000.0, enf.as_milli() as f64)
    } else {
        (observed, enf.value() as f64)
    };
    if cmp.is_nan() {
        cmp = 0.0;
    }
    (cmp > max).then(|| {
        format!("{r} max limit to request ratio per {ty} is {shown}, but provided ratio is {observed:.6}")
    })
}

fn check_item(
    item: &Value,
    ty: &str,
    req: &ResourceList,
    lim: &ResourceList,
    errs: &mut Vec<String>,
) {
    for (r, q) in list_of(&item["min"]) {
        errs.extend(min_constraint(ty, &r, &q, req, lim));
    }
    for (r, q) in list_of(&item["max"]) {
        errs.extend(max_constraint(ty, &r, &q, req, lim));
    }
    for (r, q) in list_of(&item["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(ty, &r, &q, req, lim));
    }
}

/// What a pod breaks of a LimitRange's Container and Pod items
/// (upstream's `PodValidateLimitFunc`).
pub fn validate_pod(lr: &Value, pod: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("Container") => {
                let spec = &pod["spec"];
                for c in containers(spec, "containers").chain(containers(spec, "initContainers")) {
                    let req = list_of(&c["resources"]["requests"]);
                    let lim = list_of(&c["resources"]["limits"]);
                    check_item(item, "Container", &req, &lim, &mut errs);
                }
            }
            Some("Pod") => {
                let req = pod_resources(pod, "requests");
                let lim = pod_resources(pod, "limits");
                check_item(item, "Pod", &req, &lim, &mut errs);
            }
            _ => {}
        }
    }
    errs
}

/// What a claim breaks of a LimitRange's PersistentVolumeClaim items
/// (upstream's `PersistentVolumeClaimValidateLimitFunc`).
pub fn validate_claim(lr: &Value, pvc: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let req = list_of(&pvc["spec"]["resources"]["requests"]);
    let ty = "PersistentVolumeClaim";
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"] != ty {
            continue;
        }
        for (r, q) in list_of(&item["min"]) {
            errs.extend(min_constraint(ty, &r, &q, &req, &ResourceList::new()));
        }
        for (r, q) in list_of(&item["max"]) {
            errs.extend(max_request_constraint(ty, &r, &q, &req));
        }
    }
    errs
}

/// Several errors as upstream's `utilerrors.NewAggregate` prints them: one
/// alone, else `[a, b]`.
pub fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: Value) -> ResourceList {
        list_of(&v)
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "x"}, "spec": {"containers": containers}, "status": {"phase": "Pending"}})
    }

    #[test]
    fn pod_usage_and_exceeded_message() {
        let p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1500m", "memory": "512Mi"}}}
        ]));
        let u = usage("", "pods", &p, 0);
        assert_eq!(u["requests.cpu"].canonical(), "2");
        assert_eq!(u["cpu"].canonical(), "2");
        assert_eq!(u["memory"].canonical(), "1536Mi");
        assert_eq!(u["limits.cpu"].canonical(), "1");
        assert_eq!(u["pods"].canonical(), "1");
        assert_eq!(u["count/pods"].canonical(), "1");
        let hard = l(json!({"cpu": "2", "pods": "10"}));
        let used = l(json!({"cpu": "1", "pods": "1"}));
        let requested = mask(&u, hard.keys());
        let new = add(&used, &requested);
        let (ok, exceeded) = less_than_or_equal(&mask(&new, requested.keys()), &hard);
        assert!(!ok);
        assert_eq!(exceeded, vec!["cpu".to_string()]);
        assert_eq!(
            format!(
                "requested: {}, used: {}, limited: {}",
                pretty(&mask(&requested, &exceeded)),
                pretty(&mask(&used, &exceeded)),
                pretty(&mask(&hard, &exceeded))
            ),
            "requested: cpu=2, used: cpu=1, limited: cpu=2"
        );
    }

    #[test]
    fn finished_pods_only_count_as_objects() {
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        p["status"]["phase"] = json!("Succeeded");
        let u = usage("", "pods", &p, 0);
        assert_eq!(u.keys().collect::<Vec<_>>(), vec!["count/pods"]);
    }

    #[test]
    fn init_containers_and_sidecars() {
        let p = json!({"spec": {
        "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}],
        "initContainers": [
            {"name": "i", "resources": {"requests": {"cpu": "3"}}},
            {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}}
        ]}});
        // max(1 + 0.5 sidecar, 3 init) = 3
        assert_eq!(pod_resources(&p, "requests")["cpu"].canonical(), "3");
    }

    #[test]
    fn must_specify() {
        let p = pod(
            json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}},
                           {"name": "d", "resources": {}}]),
        );
        let hard = [
            "limits.cpu".to_string(),
            "requests.cpu".to_string(),
            "pods".to_string(),
        ];
        let req: Vec<&String> = hard.iter().collect();
        assert_eq!(
            pod_constraints(&req, &p).unwrap_err(),
            "must specify limits.cpu for: c,d; requests.cpu for: d"
        );
    }

    #[test]
    fn services_and_counts() {
        let svc = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &svc, 0);
        assert_eq!(u["services.nodeports"].canonical(), "2");
        assert_eq!(u["services.loadbalancers"].canonical(), "1");
        let hard = [
            "configmaps".to_string(),
            "count/deployments.apps".to_string(),
        ];
        assert_eq!(matching_resources("", "configmaps", &hard).len(), 1);
        assert_eq!(matching_resources("apps", "deployments", &hard).len(), 1);
        assert!(matching_resources("", "secrets", &hard).is_empty());
        assert!(usage("apps", "deployments", &json!({}), 0).contains_key("count/deployments.apps"));
    }

    #[test]
    fn scopes() {
        let q =
            |scopes: Value| json!({"spec": {"scopes": scopes}, "status": {"hard": {"pods": "2"}}});
        let be = pod(json!([{"name": "a"}]));
        let burst = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        assert!(quota_matches(&q(json!(["BestEffort"])), "", "pods", &be));
        assert!(!quota_matches(
            &q(json!(["BestEffort"])),
            "",
            "pods",
            &burst
        ));
        assert!(quota_matches(
            &q(json!(["NotBestEffort"])),
            "",
            "pods",
            &burst
        ));
        let mut term = be.clone();
        term["spec"]["activeDeadlineSeconds"] = json!(30);
        assert!(quota_matches(&q(json!(["Terminating"])), "", "pods", &term));
        assert!(!quota_matches(&q(json!(["Terminating"])), "", "pods", &be));
        let mut hi = be.clone();
        hi["spec"]["priorityClassName"] = json!("high");
        let sel = json!({"spec": {"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}},
                         "status": {"hard": {"pods": "2"}}});
        assert!(quota_matches(&sel, "", "pods", &hi));
        assert!(!quota_matches(&sel, "", "pods", &be));
        // A quota whose status has no hard limits yet constrains nothing.
        assert!(!quota_matches(&json!({"spec": {}}), "", "pods", &be));
    }

    #[test]
    fn limit_range_defaults_and_limits() {
        let mut item =
            json!({"type": "Container", "max": {"cpu": "500m"}, "min": {"memory": "10Mi"}});
        default_limit_range_item(&mut item);
        assert_eq!(item["default"]["cpu"], "500m");
        assert_eq!(item["defaultRequest"]["cpu"], "500m");
        assert_eq!(item["defaultRequest"]["memory"], "10Mi");
        let lr = json!({"spec": {"limits": [item]}});
        let mut p = pod(json!([{"name": "c", "resources": {"limits": {"memory": "20Mi"}}}]));
        default_pod(&lr, &mut p);
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "500m"
        );
        assert_eq!(
            p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu, memory request for container c; cpu limit for container c"
        );
        assert!(validate_pod(&lr, &p).is_empty());
        let big = pod(
            json!([{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "20Mi"}, "requests": {"cpu": "100m", "memory": "20Mi"}}}]),
        );
        assert_eq!(
            aggregate(&validate_pod(&lr, &big)),
            "maximum cpu usage per Container is 500m, but limit is 1"
        );
        let small = pod(
            json!([{"name": "c", "resources": {"limits": {"cpu": "100m"}, "requests": {"cpu": "100m", "memory": "1Mi"}}}]),
        );
        assert_eq!(
            validate_pod(&lr, &small),
            vec!["minimum memory usage per Container is 10Mi, but request is 1Mi".to_string()]
        );
        let ratio = json!({"spec": {"limits": [{"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}]}});
        let p = pod(
            json!([{"name": "c", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "250m"}}}]),
        );
        assert_eq!(
            validate_pod(&ratio, &p),
            vec![
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"
                    .to_string()
            ]
        );
        let pvc_lr = json!({"spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "1Gi"}}]}});
        let pvc = json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}});
        assert_eq!(
            validate_claim(&pvc_lr, &pvc),
            vec![
                "maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 2Gi"
                    .to_string()
            ]
        );
    }
}
