//! HorizontalPodAutoscalers (`autoscaling/v2` and `autoscaling/v1`):
//! upstream's defaulting, validation, the conversion between the two
//! versions and kubectl's Table columns. Both versions share one storage
//! (objects are kept in `autoscaling/v2`, upstream's storage version);
//! the handlers convert through [`convert`] on every read, write and watch
//! event. The controller computing the status and scaling the targets is
//! `rke2-controllers::hpa`.
//!
//! v1 has one metric, `targetCPUUtilizationPercentage` (and
//! `currentCPUUtilizationPercentage` in the status). What else a v2
//! object holds rides in annotations when it is read as v1, as upstream's
//! conversion keeps it (`autoscaling.alpha.kubernetes.io/metrics`,
//! `…/current-metrics`, `…/behavior`, `…/conditions`), so a v1 client's
//! read-modify-write loses nothing; those annotations hold the v2 shapes
//! and never appear on a v2 object.

use chrono::{DateTime, Utc};
use rke2_apimachinery::quantity::parse_quantity;
use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::strategy::{Cause, Strategy};

/// The group/version objects are stored in.
pub const STORAGE_VERSION: &str = "autoscaling/v2";
/// The served v1 group/version.
pub const V1: &str = "autoscaling/v1";

/// The annotation carrying a v2 object's metrics other than the CPU
/// utilization when it is read as v1.
pub const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// Likewise for the status's current metrics.
pub const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// Likewise for `spec.behavior`.
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
/// Likewise for `status.conditions`.
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";

/// The utilization target an HPA with no metrics gets (upstream's
/// `DefaultCPUUtilization`).
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

/// HorizontalPodAutoscalers in one served version.
#[derive(Debug)]
pub struct HorizontalPodAutoscaler;

impl Strategy for HorizontalPodAutoscaler {
    fn name_problems(&self, name: &str) -> Vec<String> {
        // Upstream's ValidateReplicationControllerName: a DNS subdomain.
        rke2_apimachinery::validation::validate_object_name(true, name)
    }

    fn defaults(&self, rt: &ResourceType, obj: &mut Value) {
        if rt.version == "v1" {
            defaults_v1(obj);
        } else {
            defaults_v2(obj);
        }
    }

    fn validate(&self, rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_served(rt, obj, 1, causes);
    }

    fn validate_update(
        &self,
        rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        // An object that already has minReplicas 0 may keep it.
        if old["spec"]["minReplicas"].as_i64() == Some(0) {
            causes.retain(|c| c.0 != "spec.minReplicas");
            let mut again = Vec::new();
            validate_served(rt, new, 0, &mut again);
            for c in again {
                if c.0 == "spec.minReplicas" {
                    causes.push(c);
                }
            }
        }
    }

    fn watch_cached(&self) -> bool {
        // The cache holds one version; two are served from one prefix.
        false
    }

    fn storage_api_version(&self) -> Option<&str> {
        Some(STORAGE_VERSION)
    }

    fn convert_version(&self) -> Option<crate::strategy::ConvertFn> {
        Some(convert)
    }
}

fn validate_served(rt: &ResourceType, obj: &Value, min_bound: i64, causes: &mut Vec<Cause>) {
    if rt.version == "v1" {
        let mut v2 = obj.clone();
        convert(&mut v2, STORAGE_VERSION);
        // v1's one metric is checked under its own name.
        if let Some(t) = obj["spec"]["targetCPUUtilizationPercentage"].as_i64()
            && t < 1
        {
            causes.push(invalid(
                "spec.targetCPUUtilizationPercentage",
                t.to_string(),
                "must be greater than 0",
            ));
            v2["spec"]["metrics"] = json!([]);
        }
        validate(&v2, min_bound, causes);
    } else {
        validate(obj, min_bound, causes);
    }
}

fn defaults_v1(obj: &mut Value) {
    // Not an object: the type check refuses it; nothing to default.
    if !obj.is_object() {
        return;
    }
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    if obj["spec"]["minReplicas"].is_null() {
        obj["spec"]["minReplicas"] = json!(1);
    }
}

fn defaults_v2(obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec["minReplicas"].is_null() {
        spec["minReplicas"] = json!(1);
    }
    if spec["metrics"].as_array().is_none_or(|m| m.is_empty()) {
        spec["metrics"] = json!([cpu_utilization_metric(DEFAULT_CPU_UTILIZATION)]);
    }
    if spec["behavior"].is_object() {
        default_rules(&mut spec["behavior"]["scaleUp"], true);
        default_rules(&mut spec["behavior"]["scaleDown"], false);
    }
}

/// Upstream's `GenerateHPAScaleUpRules` / `GenerateHPAScaleDownRules`:
/// unset fields of a rule take the defaults of its direction.
fn default_rules(rules: &mut Value, up: bool) {
    if !rules.is_object() {
        *rules = json!({});
    }
    if rules["stabilizationWindowSeconds"].is_null() {
        rules["stabilizationWindowSeconds"] = json!(if up { 0 } else { 300 });
    }
    if rules["selectPolicy"].is_null() {
        rules["selectPolicy"] = json!("Max");
    }
    if rules["policies"].as_array().is_none_or(|p| p.is_empty()) {
        rules["policies"] = if up {
            json!([
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ])
        } else {
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}])
        };
    }
}

/// The v2 metric of a CPU utilization target.
pub fn cpu_utilization_metric(percent: i64) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}})
}

fn cause(field: &str, ty: &str, detail: impl Into<String>) -> Cause {
    (field.to_string(), ty.to_string(), detail.into())
}

fn invalid(field: &str, value: String, msg: &str) -> Cause {
    cause(field, "Invalid value", format!("{value}: {msg}"))
}

fn not_supported(field: &str, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    cause(
        field,
        "Unsupported value",
        format!(
            "{}: supported values: {}",
            crate::schema::go_quote(value.as_str().unwrap_or("")),
            list.join(", ")
        ),
    )
}

fn path_segment_problems(name: &str) -> Vec<String> {
    crate::rbac_objects::name_problems(name)
}

/// Upstream's `validateHorizontalPodAutoscalerSpec` on a v2 object;
/// `min_bound` is the lowest `minReplicas` allowed (1, or 0 for an
/// object that already had 0).
pub fn validate(obj: &Value, min_bound: i64, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let min = spec["minReplicas"].as_i64();
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    if let Some(m) = min
        && m < min_bound
    {
        causes.push(invalid(
            "spec.minReplicas",
            m.to_string(),
            &format!("must be greater than or equal to {min_bound}"),
        ));
    }
    if max < 1 {
        causes.push(invalid(
            "spec.maxReplicas",
            max.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(m) = min
        && max < m
    {
        causes.push(invalid(
            "spec.maxReplicas",
            max.to_string(),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    validate_ref(&spec["scaleTargetRef"], "spec.scaleTargetRef", causes);
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    for (i, m) in metrics.iter().enumerate() {
        validate_metric(m, &format!("spec.metrics[{i}]"), causes);
    }
    if min == Some(0)
        && !metrics
            .iter()
            .any(|m| matches!(m["type"].as_str(), Some("Object" | "External")))
    {
        causes.push(cause(
            "spec.metrics",
            "Forbidden",
            "must specify at least one Object or External metric to support scaling to zero replicas",
        ));
    }
    if spec["behavior"].is_object() {
        for dir in ["scaleUp", "scaleDown"] {
            let rules = &spec["behavior"][dir];
            if rules.is_object() {
                validate_rules(rules, &format!("spec.behavior.{dir}"), causes);
            }
        }
    }
}

fn validate_ref(r: &Value, path: &str, causes: &mut Vec<Cause>) {
    for key in ["kind", "name"] {
        let field = format!("{path}.{key}");
        match r[key].as_str().unwrap_or("") {
            "" => causes.push(cause(&field, "Required value", "")),
            v => {
                for msg in path_segment_problems(v) {
                    causes.push(invalid(&field, crate::schema::go_quote(v), &msg));
                }
            }
        }
    }
}

fn validate_rules(rules: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(w) = rules["stabilizationWindowSeconds"].as_i64() {
        let field = format!("{path}.stabilizationWindowSeconds");
        if w < 0 {
            causes.push(invalid(
                &field,
                w.to_string(),
                "must be greater than or equal to zero",
            ));
        }
        if w > 3600 {
            causes.push(invalid(
                &field,
                w.to_string(),
                "must be less than or equal to 3600",
            ));
        }
    }
    // HPAConfigurableTolerance (beta, on by default in 1.35).
    let tolerance = &rules["tolerance"];
    if !tolerance.is_null() {
        let text = quantity_text(tolerance);
        if parse_quantity(&text).is_ok_and(|q| q.as_nanos() < 0) {
            causes.push(invalid(
                &format!("{path}.tolerance"),
                text,
                "must be greater than or equal to 0",
            ));
        }
    }
    let select = &rules["selectPolicy"];
    if !select.is_null() && !matches!(select.as_str(), Some("Max" | "Min" | "Disabled")) {
        causes.push(not_supported(
            &format!("{path}.selectPolicy"),
            select,
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = rules["policies"].as_array().cloned().unwrap_or_default();
    if policies.is_empty() {
        causes.push(cause(
            &format!("{path}.policies"),
            "Required value",
            "must specify at least one Policy",
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let at = format!("{path}.policies[{i}]");
        if !matches!(p["type"].as_str(), Some("Pods" | "Percent")) {
            causes.push(not_supported(
                &format!("{at}.type"),
                &p["type"],
                &["Percent", "Pods"],
            ));
        }
        let value = p["value"].as_i64().unwrap_or(0);
        if value <= 0 {
            causes.push(invalid(
                &format!("{at}.value"),
                value.to_string(),
                "must be greater than zero",
            ));
        }
        let period = p["periodSeconds"].as_i64().unwrap_or(0);
        if period <= 0 {
            causes.push(invalid(
                &format!("{at}.periodSeconds"),
                period.to_string(),
                "must be greater than zero",
            ));
        }
        if period > 1800 {
            causes.push(invalid(
                &format!("{at}.periodSeconds"),
                period.to_string(),
                "must be less than or equal to 1800",
            ));
        }
    }
}

const SOURCE_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];

fn validate_metric(m: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ty = m["type"].as_str().unwrap_or("");
    if ty.is_empty() {
        causes.push(cause(
            &format!("{path}.type"),
            "Required value",
            "must specify a metric source type",
        ));
    }
    if !SOURCE_TYPES.contains(&ty) {
        causes.push(not_supported(
            &format!("{path}.type"),
            &json!(ty),
            SOURCE_TYPES,
        ));
    }
    let present: Vec<&str> = [
        "object",
        "external",
        "pods",
        "resource",
        "containerResource",
    ]
    .into_iter()
    .filter(|k| m[*k].is_object())
    .collect();
    if let Some(first) = present.first() {
        let at = format!("{path}.{first}");
        let src = &m[*first];
        match *first {
            "resource" | "containerResource" => {
                if src["name"].as_str().unwrap_or("").is_empty() {
                    causes.push(cause(
                        &format!("{at}.name"),
                        "Required value",
                        "must specify a resource name",
                    ));
                }
                if *first == "containerResource"
                    && src["container"].as_str().unwrap_or("").is_empty()
                {
                    causes.push(cause(
                        &format!("{at}.container"),
                        "Required value",
                        "must specify a container",
                    ));
                }
                let t = &src["target"];
                validate_target(t, &format!("{at}.target"), causes);
                if t["averageUtilization"].is_null() && t["averageValue"].is_null() {
                    causes.push(cause(
                        &format!("{at}.target.averageUtilization"),
                        "Required value",
                        "must set either a target raw value or a target utilization",
                    ));
                }
                if !t["averageUtilization"].is_null() && !t["averageValue"].is_null() {
                    causes.push(cause(
                        &format!("{at}.target.averageValue"),
                        "Forbidden",
                        "may not set both a target raw value and a target utilization",
                    ));
                }
            }
            "pods" => {
                validate_identifier(&src["metric"], &format!("{at}.metric"), causes);
                validate_target(&src["target"], &format!("{at}.target"), causes);
                if src["target"]["averageValue"].is_null() {
                    causes.push(cause(
                        &format!("{at}.target.averageValue"),
                        "Required value",
                        "must specify a positive target averageValue",
                    ));
                }
            }
            "object" => {
                validate_ref(
                    &src["describedObject"],
                    &format!("{at}.describedObject"),
                    causes,
                );
                validate_identifier(&src["metric"], &format!("{at}.metric"), causes);
                validate_target(&src["target"], &format!("{at}.target"), causes);
                if src["target"]["value"].is_null() && src["target"]["averageValue"].is_null() {
                    causes.push(cause(
                        &format!("{at}.target.averageValue"),
                        "Required value",
                        "must set either a target value or averageValue",
                    ));
                }
            }
            _ => {
                validate_identifier(&src["metric"], &format!("{at}.metric"), causes);
                validate_target(&src["target"], &format!("{at}.target"), causes);
                let t = &src["target"];
                if t["value"].is_null() && t["averageValue"].is_null() {
                    causes.push(cause(
                        &format!("{at}.target.averageValue"),
                        "Required value",
                        "must set either a target value for metric or a per-pod target",
                    ));
                }
                if !t["value"].is_null() && !t["averageValue"].is_null() {
                    causes.push(cause(
                        &format!("{at}.target.value"),
                        "Forbidden",
                        "may not set both a target value for metric and a per-pod target",
                    ));
                }
            }
        }
    }
    let expected = match ty {
        "Object" => "object",
        "Pods" => "pods",
        "Resource" => "resource",
        "External" => "external",
        "ContainerResource" => "containerResource",
        _ => "",
    };
    if !expected.is_empty() && !m[expected].is_object() {
        causes.push(cause(
            &format!("{path}.{expected}"),
            "Required value",
            "must populate information for the given metric source",
        ));
    }
    if present.len() != 1 {
        for p in present.into_iter().filter(|p| *p != expected) {
            causes.push(cause(
                &format!("{path}.{p}"),
                "Forbidden",
                "must populate the given metric source only",
            ));
        }
    }
}

fn validate_identifier(id: &Value, path: &str, causes: &mut Vec<Cause>) {
    if id["name"].as_str().unwrap_or("").is_empty() {
        causes.push(cause(
            &format!("{path}.name"),
            "Required value",
            "must specify a metric name",
        ));
    }
}

fn validate_target(t: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ty = t["type"].as_str().unwrap_or("");
    if ty.is_empty() {
        causes.push(cause(
            &format!("{path}.type"),
            "Required value",
            "must specify a metric target type",
        ));
    }
    if !matches!(ty, "Utilization" | "Value" | "AverageValue") {
        causes.push(invalid(
            &format!("{path}.type"),
            crate::schema::go_quote(ty),
            "must be either Utilization, Value, or AverageValue",
        ));
    }
    for key in ["value", "averageValue"] {
        let text = match &t[key] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if let Some(text) = text {
            let positive = parse_quantity(&text).is_ok_and(|q| q.as_nanos() > 0);
            if !positive {
                causes.push(invalid(&format!("{path}.{key}"), text, "must be positive"));
            }
        }
    }
    if let Some(u) = t["averageUtilization"].as_i64()
        && u < 1
    {
        causes.push(invalid(
            &format!("{path}.averageUtilization"),
            u.to_string(),
            "must be greater than 0",
        ));
    }
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["averageUtilization"].is_i64()
}

fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    // `get_mut`, not indexing: indexing a missing key inserts a null.
    let meta = obj.get_mut("metadata")?.as_object_mut()?;
    let ann = meta.get_mut("annotations")?.as_object_mut()?;
    let v = ann.remove(key)?;
    if ann.is_empty() {
        meta.remove("annotations");
    }
    v.as_str().and_then(|s| serde_json::from_str(s).ok())
}

fn put_annotation(obj: &mut Value, key: &str, value: &Value) {
    // Indexing to assign panics on anything but an object (or null): a
    // malformed body's `metadata` is left for validation to refuse.
    let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    if !ann.is_object() {
        *ann = json!({});
    }
    ann[key] = json!(value.to_string());
}

/// Converts an HPA between `autoscaling/v1` and `autoscaling/v2` in place
/// (to `desired`; an object already there is left as is).
pub fn convert(obj: &mut Value, desired: &str) {
    let from = obj["apiVersion"].as_str().unwrap_or("").to_string();
    // Not an object (a malformed body, refused by the type check): there
    // is nothing to convert.
    if from == desired || !obj.is_object() {
        return;
    }
    if desired == V1 {
        to_v1(obj);
    } else {
        to_v2(obj);
    }
    obj["apiVersion"] = json!(desired);
}

fn to_v1(obj: &mut Value) {
    let spec = obj["spec"].as_object().cloned().unwrap_or_default();
    let status = obj["status"].as_object().cloned();
    let mut v1 = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v1.insert(k.into(), v.clone());
        }
    }
    let metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut others = Vec::new();
    for m in metrics {
        if is_cpu_utilization(&m) && !v1.contains_key("targetCPUUtilizationPercentage") {
            v1.insert(
                "targetCPUUtilizationPercentage".into(),
                m["resource"]["target"]["averageUtilization"].clone(),
            );
        } else {
            others.push(m);
        }
    }
    if !others.is_empty() {
        put_annotation(obj, METRICS_ANNOTATION, &Value::Array(others));
    }
    if let Some(b) = spec.get("behavior").filter(|b| !b.is_null()) {
        put_annotation(obj, BEHAVIOR_ANNOTATION, b);
    }
    obj["spec"] = Value::Object(v1);
    if let Some(st) = status {
        let mut s1 = Map::new();
        for k in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = st.get(k) {
                s1.insert(k.into(), v.clone());
            }
        }
        s1.entry("currentReplicas").or_insert(json!(0));
        s1.entry("desiredReplicas").or_insert(json!(0));
        let mut others = Vec::new();
        for m in st
            .get("currentMetrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let util = &m["resource"]["current"]["averageUtilization"];
            if m["type"] == "Resource"
                && m["resource"]["name"] == "cpu"
                && util.is_i64()
                && !s1.contains_key("currentCPUUtilizationPercentage")
            {
                s1.insert("currentCPUUtilizationPercentage".into(), util.clone());
            } else {
                others.push(m);
            }
        }
        if !others.is_empty() {
            put_annotation(obj, CURRENT_METRICS_ANNOTATION, &Value::Array(others));
        }
        if let Some(c) = st
            .get("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            put_annotation(obj, CONDITIONS_ANNOTATION, c);
        }
        obj["status"] = Value::Object(s1);
    }
}

fn to_v2(obj: &mut Value) {
    let spec = obj["spec"].as_object().cloned().unwrap_or_default();
    let mut v2 = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v2.insert(k.into(), v.clone());
        }
    }
    let mut metrics = Vec::new();
    if let Some(t) = spec
        .get("targetCPUUtilizationPercentage")
        .and_then(Value::as_i64)
    {
        metrics.push(cpu_utilization_metric(t));
    }
    if let Some(Value::Array(more)) = take_annotation(obj, METRICS_ANNOTATION) {
        metrics.extend(more);
    }
    if metrics.is_empty() {
        metrics.push(cpu_utilization_metric(DEFAULT_CPU_UTILIZATION));
    }
    v2.insert("metrics".into(), Value::Array(metrics));
    if let Some(b) = take_annotation(obj, BEHAVIOR_ANNOTATION) {
        v2.insert("behavior".into(), b);
    }
    obj["spec"] = Value::Object(v2);
    let current = take_annotation(obj, CURRENT_METRICS_ANNOTATION);
    let conditions = take_annotation(obj, CONDITIONS_ANNOTATION);
    if let Some(st) = obj["status"].as_object().cloned() {
        let mut s2 = Map::new();
        for k in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = st.get(k) {
                s2.insert(k.into(), v.clone());
            }
        }
        let mut cur = Vec::new();
        if let Some(u) = st
            .get("currentCPUUtilizationPercentage")
            .and_then(Value::as_i64)
        {
            cur.push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}));
        }
        if let Some(Value::Array(more)) = current {
            cur.extend(more);
        }
        if !cur.is_empty() {
            s2.insert("currentMetrics".into(), Value::Array(cur));
        }
        if let Some(c) = conditions {
            s2.insert("conditions".into(), c);
        }
        obj["status"] = Value::Object(s2);
    }
}

/// Columns between NAME and AGE (upstream's printer).
pub fn columns() -> Vec<Value> {
    let col = |name: &str, ty: &str, description: &str| json!({"name": name, "type": ty, "format": "", "description": description, "priority": 0});
    vec![
        col(
            "Reference",
            "string",
            "scaleTargetRef points to the target resource to scale, and is used to the pods for which metrics should be collected, as well as to actually change the replica count.",
        ),
        col(
            "Targets",
            "string",
            "metrics contains the specifications for which to use to calculate the desired replica count (the maximum replica count across all metrics will be used).  The desired replica count is calculated multiplying the ratio between the target value and the current value by the current number of pods.  Ergo, metrics used must decrease as the pod count is increased, and vice-versa.  See the individual metric source types for more information about how each type of metric must respond. If not set, the default metric will be set to 80% average CPU utilization.",
        ),
        col(
            "MinPods",
            "string",
            "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.  It defaults to 1 pod.  minReplicas is allowed to be 0 if the alpha feature gate HPAScaleToZero is enabled and at least one Object or External metric is configured.  Scaling is active as long as at least one metric value is available.",
        ),
        col(
            "MaxPods",
            "integer",
            "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up. It cannot be less that minReplicas.",
        ),
        col(
            "Replicas",
            "integer",
            "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.",
        ),
    ]
}

fn quantity_text(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    parse_quantity(&text).map(|q| q.canonical()).unwrap_or(text)
}

/// The TARGETS cell (upstream's `formatHPAMetrics`): at most two
/// metrics, `<unknown>` for a current value not yet measured.
pub fn targets(obj: &Value) -> String {
    let specs = obj["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = obj["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let unknown = || "<unknown>".to_string();
    let mut list = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let st = statuses.get(i);
        let cur = |src: &str, key: &str| -> Option<String> {
            st.map(|s| &s[src]["current"][key])
                .filter(|v| !v.is_null())
                .map(quantity_text)
        };
        let item = match spec["type"].as_str() {
            Some(src @ ("Resource" | "ContainerResource")) => {
                let key = if src == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let r = &spec[key];
                let name = r["name"].as_str().unwrap_or("");
                if !r["target"]["averageValue"].is_null() {
                    let current = cur(key, "averageValue").unwrap_or_else(unknown);
                    format!(
                        "{name}: {current}/{}",
                        quantity_text(&r["target"]["averageValue"])
                    )
                } else {
                    let current = st
                        .and_then(|s| s[key]["current"]["averageUtilization"].as_i64())
                        .map_or_else(unknown, |u| format!("{u}%"));
                    let target = r["target"]["averageUtilization"]
                        .as_i64()
                        .map_or("<auto>".to_string(), |u| format!("{u}%"));
                    format!("{name}: {current}/{target}")
                }
            }
            Some("Pods") => format!(
                "{}/{}",
                cur("pods", "averageValue").unwrap_or_else(unknown),
                quantity_text(&spec["pods"]["target"]["averageValue"])
            ),
            Some(src @ ("Object" | "External")) => {
                let key = if src == "Object" {
                    "object"
                } else {
                    "external"
                };
                let t = &spec[key]["target"];
                if !t["averageValue"].is_null() {
                    format!(
                        "{}/{} (avg)",
                        cur(key, "averageValue").unwrap_or_else(unknown),
                        quantity_text(&t["averageValue"])
                    )
                } else {
                    format!(
                        "{}/{}",
                        cur(key, "value").unwrap_or_else(unknown),
                        quantity_text(&t["value"])
                    )
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(item);
    }
    let count = list.len();
    if count > 2 {
        format!("{} + {} more...", list[..2].join(", "), count - 2)
    } else {
        list.join(", ")
    }
}

/// Cells matching [`columns`] (a v1 object is read as v2 first).
pub fn cells(obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let mut o = obj.clone();
    if o["apiVersion"] == V1 {
        convert(&mut o, STORAGE_VERSION);
    }
    let spec = &o["spec"];
    let reference = format!(
        "{}/{}",
        spec["scaleTargetRef"]["kind"].as_str().unwrap_or(""),
        spec["scaleTargetRef"]["name"].as_str().unwrap_or("")
    );
    let min = spec["minReplicas"]
        .as_i64()
        .map_or("<unset>".to_string(), |m| m.to_string());
    vec![
        json!(reference),
        json!(targets(&o)),
        json!(min),
        json!(spec["maxReplicas"].as_i64().unwrap_or(0)),
        json!(o["status"]["currentReplicas"].as_i64().unwrap_or(0)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa_v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 3,
                "metrics": [
                    cpu_utilization_metric(50),
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 120, "averageValue": "120m"}}},
                    {"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "52428800"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
            },
        })
    }

    #[test]
    fn malformed_bodies_do_not_panic() {
        for body in [
            json!([1, 2]),
            json!("x"),
            json!({"metadata": [1], "spec": {"targetCPUUtilizationPercentage": 5}}),
            json!({"metadata": {"annotations": "x"}, "spec": {"metrics": [{"type": "Pods"}]}}),
        ] {
            for desired in [V1, STORAGE_VERSION] {
                let mut o = body.clone();
                convert(&mut o, desired);
            }
            let mut o = body.clone();
            defaults_v1(&mut o);
            defaults_v2(&mut o);
        }
    }

    #[test]
    fn v2_to_v1_and_back_keeps_everything() {
        let orig = hpa_v2();
        let mut o = orig.clone();
        convert(&mut o, V1);
        assert_eq!(o["apiVersion"], V1);
        assert_eq!(o["spec"]["targetCPUUtilizationPercentage"], 50);
        assert!(o["spec"]["metrics"].is_null());
        assert_eq!(o["status"]["currentCPUUtilizationPercentage"], 120);
        assert!(o["metadata"]["annotations"][METRICS_ANNOTATION].is_string());
        assert!(o["metadata"]["annotations"][BEHAVIOR_ANNOTATION].is_string());
        convert(&mut o, STORAGE_VERSION);
        assert!(o["metadata"]["annotations"].is_null(), "{o}");
        assert_eq!(o["spec"], orig["spec"]);
        assert_eq!(o["status"]["conditions"], orig["status"]["conditions"]);
        assert_eq!(
            o["status"]["currentMetrics"][1],
            orig["status"]["currentMetrics"][1]
        );
        // The cpu's current value keeps its utilization.
        assert_eq!(
            o["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            120
        );
    }

    #[test]
    fn v1_without_target_reads_as_the_default_cpu_target() {
        let mut o = json!({"apiVersion": V1, "metadata": {"name": "a"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 2}});
        convert(&mut o, STORAGE_VERSION);
        assert_eq!(o["spec"]["metrics"], json!([cpu_utilization_metric(80)]));
        assert_eq!(o["metadata"], json!({"name": "a"}), "no annotations appear");
    }

    #[test]
    fn defaults_fill_behavior_rules_as_upstream() {
        let mut o = json!({"spec": {"maxReplicas": 2, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}}});
        defaults_v2(&mut o);
        assert_eq!(o["spec"]["minReplicas"], 1);
        assert_eq!(
            o["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"],
            0
        );
        assert_eq!(
            o["spec"]["behavior"]["scaleUp"]["policies"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            o["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            10
        );
        assert_eq!(
            o["spec"]["behavior"]["scaleDown"]["policies"],
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}])
        );
    }

    fn messages(obj: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, 1, &mut causes);
        causes
            .into_iter()
            .map(|(f, t, d)| {
                if d.is_empty() {
                    format!("{f}: {t}")
                } else {
                    format!("{f}: {t}: {d}")
                }
            })
            .collect()
    }

    #[test]
    fn validation_messages_are_upstreams() {
        let mut o = hpa_v2();
        o["spec"]["minReplicas"] = json!(0);
        o["spec"]["maxReplicas"] = json!(0);
        o["spec"]["scaleTargetRef"] = json!({});
        let m = messages(&o);
        assert_eq!(
            m,
            vec![
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
                "spec.maxReplicas: Invalid value: 0: must be greater than 0",
                "spec.scaleTargetRef.kind: Required value",
                "spec.scaleTargetRef.name: Required value",
                "spec.metrics: Forbidden: must specify at least one Object or External metric to support scaling to zero replicas",
            ]
        );
        let mut o = hpa_v2();
        o["spec"]["minReplicas"] = json!(4);
        assert_eq!(
            messages(&o),
            vec![
                "spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`"
            ]
        );
        let mut o = hpa_v2();
        o["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = json!(0);
        o["spec"]["metrics"][1]["resource"]["target"]["averageValue"] = json!("-1");
        o["spec"]["behavior"]["scaleDown"]["selectPolicy"] = json!("Most");
        o["spec"]["behavior"]["scaleDown"]["policies"][0]["periodSeconds"] = json!(0);
        assert_eq!(
            messages(&o),
            vec![
                "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0",
                "spec.metrics[1].resource.target.averageValue: Invalid value: -1: must be positive",
                "spec.behavior.scaleDown.selectPolicy: Unsupported value: \"Most\": supported values: \"Disabled\", \"Max\", \"Min\"",
                "spec.behavior.scaleDown.policies[0].periodSeconds: Invalid value: 0: must be greater than zero",
            ]
        );
        // HPAConfigurableTolerance: a quantity, not negative.
        let mut o = hpa_v2();
        o["spec"]["behavior"]["scaleDown"]["tolerance"] = json!("-50m");
        o["spec"]["behavior"]["scaleUp"] = json!({"tolerance": "0", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]});
        assert_eq!(
            messages(&o),
            vec![
                "spec.behavior.scaleDown.tolerance: Invalid value: -50m: must be greater than or equal to 0"
            ]
        );
        o["spec"]["behavior"]["scaleDown"]["tolerance"] = json!("0.05");
        assert!(messages(&o).is_empty(), "{:?}", messages(&o));
    }

    #[test]
    fn targets_column_as_kubectl_shows_it() {
        let o = hpa_v2();
        assert_eq!(targets(&o), "cpu: 120%/50%, memory: 52428800/100Mi");
        let mut o = hpa_v2();
        o["status"] = json!({});
        assert_eq!(targets(&o), "cpu: <unknown>/50%, memory: <unknown>/100Mi");
        let cells = cells(&hpa_v2(), Utc::now());
        assert_eq!(
            cells,
            vec![
                json!("Deployment/web"),
                json!("cpu: 120%/50%, memory: 52428800/100Mi"),
                json!("1"),
                json!(3),
                json!(2)
            ]
        );
        let mut v1 = hpa_v2();
        convert(&mut v1, V1);
        assert_eq!(
            super::cells(&v1, Utc::now())[1],
            json!("cpu: 120%/50%, memory: 52428800/100Mi")
        );
    }
}
