//! ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding
//! (`admissionregistration.k8s.io/v1`): the objects' defaults and
//! validation, and their evaluation in the validating phase (before the
//! validating webhooks, as upstream orders its plugins).
//!
//! Each binding names a policy; a request is checked when the policy's
//! `matchConstraints` (and the binding's `matchResources`, if any) cover
//! it and its `matchConditions` hold. With a `paramKind`, the binding's
//! `paramRef` names one object (or selects several) of that kind as
//! `params`; none found is denied or allowed as
//! `parameterNotFoundAction` says. `variables` are evaluated in order,
//! then every `validations` entry: a false one is a violation with its
//! `message`, `messageExpression` or `failed expression: <expr>`, and the
//! binding's `validationActions` decide (Deny refuses with the reason's
//! code, Warn adds a `Warning` header; Audit has no audit annotation
//! here and is accepted only). An expression that fails to evaluate is
//! a violation under `failurePolicy: Fail` and skipped under Ignore.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::expr::{self, Inputs};
use super::matching::{Attributes, Rule};
use crate::handlers::Ctx;
use crate::registry::{self, ResourceType};
use crate::schema::go_quote;
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, Strategy};

/// The strategy of ValidatingAdmissionPolicy.
#[derive(Debug)]
pub struct Policies;

/// The strategy of ValidatingAdmissionPolicyBinding.
#[derive(Debug)]
pub struct Bindings;

fn set_if_absent(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_string(), value);
    }
}

fn default_match_resources(m: &mut Value) {
    if !m.is_object() {
        return;
    }
    set_if_absent(m, "matchPolicy", json!("Equivalent"));
    set_if_absent(m, "namespaceSelector", json!({}));
    set_if_absent(m, "objectSelector", json!({}));
    for key in ["resourceRules", "excludeResourceRules"] {
        if let Some(rules) = m.get_mut(key).and_then(Value::as_array_mut) {
            for r in rules.iter_mut().filter(|r| r.is_object()) {
                set_if_absent(r, "scope", json!("*"));
            }
        }
    }
}

impl Strategy for Policies {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
            set_if_absent(spec, "failurePolicy", json!("Fail"));
            if let Some(m) = spec.get_mut("matchConstraints") {
                default_match_resources(m);
            }
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_policy(&obj["spec"], causes);
    }
}

impl Strategy for Bindings {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(m) = obj.pointer_mut("/spec/matchResources") {
            default_match_resources(m);
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_binding(&obj["spec"], causes);
    }
}

fn required(field: &str, detail: &str) -> Cause {
    (field.to_string(), "Required value".into(), detail.into())
}

fn not_supported(field: String, value: &str, values: &[&str]) -> Cause {
    let list: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    (
        field,
        "Unsupported value".into(),
        format!("{}: supported values: {}", go_quote(value), list.join(", ")),
    )
}

fn validate_match_resources(m: &Value, at: &str, require_rules: bool, causes: &mut Vec<Cause>) {
    let rules = m["resourceRules"].as_array().map_or(0, Vec::len);
    if require_rules && rules == 0 {
        causes.push(required(&format!("{at}.resourceRules"), ""));
    }
    for key in ["resourceRules", "excludeResourceRules"] {
        for (i, r) in m[key].as_array().into_iter().flatten().enumerate() {
            let f = format!("{at}.{key}[{i}]");
            for (k, what) in [
                ("operations", "operations"),
                ("apiGroups", "apiGroups"),
                ("apiVersions", "apiVersions"),
                ("resources", "resources"),
            ] {
                if r[k].as_array().is_none_or(Vec::is_empty) {
                    causes.push(required(&format!("{f}.{what}"), ""));
                }
            }
            if let Some(s) = r["scope"].as_str()
                && !matches!(s, "*" | "Cluster" | "Namespaced")
            {
                causes.push(not_supported(
                    format!("{f}.scope"),
                    s,
                    &["*", "Cluster", "Namespaced"],
                ));
            }
        }
    }
    if let Some(p) = m["matchPolicy"].as_str()
        && !matches!(p, "Exact" | "Equivalent")
    {
        causes.push(not_supported(
            format!("{at}.matchPolicy"),
            p,
            &["Equivalent", "Exact"],
        ));
    }
    for sel in ["namespaceSelector", "objectSelector"] {
        if m[sel].is_object() {
            crate::rbac_objects::validate_label_selector(&m[sel], &format!("{at}.{sel}"), causes);
        }
    }
}

/// Upstream's `validateValidatingAdmissionPolicySpec`, the parts that
/// matter here.
pub fn validate_policy(spec: &Value, causes: &mut Vec<Cause>) {
    let validations = spec["validations"].as_array().map_or(0, Vec::len);
    let audits = spec["auditAnnotations"].as_array().map_or(0, Vec::len);
    if validations == 0 && audits == 0 {
        causes.push(required(
            "spec.validations",
            "validations or auditAnnotations must contain at least one item",
        ));
    }
    match spec.get("matchConstraints").filter(|m| m.is_object()) {
        None => causes.push(required("spec.matchConstraints", "")),
        Some(m) => validate_match_resources(m, "spec.matchConstraints", true, causes),
    }
    if let Some(p) = spec["failurePolicy"].as_str()
        && !matches!(p, "Fail" | "Ignore")
    {
        causes.push(not_supported(
            "spec.failurePolicy".into(),
            p,
            &["Fail", "Ignore"],
        ));
    }
    if let Some(pk) = spec.get("paramKind").filter(|p| p.is_object()) {
        for k in ["apiVersion", "kind"] {
            if pk[k].as_str().unwrap_or("").is_empty() {
                causes.push(required(&format!("spec.paramKind.{k}"), ""));
            }
        }
    }
    if let Some(mc) = spec.get("matchConditions") {
        expr::validate_match_conditions(mc, "spec.matchConditions", causes);
    }
    for (i, v) in spec["variables"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.variables[{i}]");
        let name = v["name"].as_str().unwrap_or("");
        let ident = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if name.is_empty() {
            causes.push(required(&format!("{at}.name"), ""));
        } else if !ident {
            causes.push((
                format!("{at}.name"),
                "Invalid value".into(),
                format!("{}: name is not a valid CEL identifier", go_quote(name)),
            ));
        }
        expr::validate_expression(&v["expression"], &format!("{at}.expression"), causes);
    }
    for (i, v) in spec["validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.validations[{i}]");
        expr::validate_expression(&v["expression"], &format!("{at}.expression"), causes);
        if let Some(m) = v["message"].as_str()
            && m.contains('\n')
        {
            causes.push((
                format!("{at}.message"),
                "Invalid value".into(),
                format!("{}: message must not contain line breaks", go_quote(m)),
            ));
        }
        if v.get("messageExpression").is_some_and(|m| !m.is_null()) {
            expr::validate_expression(
                &v["messageExpression"],
                &format!("{at}.messageExpression"),
                causes,
            );
        }
        if let Some(r) = v["reason"].as_str()
            && !matches!(
                r,
                "Unauthorized" | "Forbidden" | "Invalid" | "RequestEntityTooLarge"
            )
        {
            causes.push(not_supported(
                format!("{at}.reason"),
                r,
                &[
                    "Forbidden",
                    "Invalid",
                    "RequestEntityTooLarge",
                    "Unauthorized",
                ],
            ));
        }
    }
}

/// Upstream's `validateValidatingAdmissionPolicyBindingSpec`.
pub fn validate_binding(spec: &Value, causes: &mut Vec<Cause>) {
    if spec["policyName"].as_str().unwrap_or("").is_empty() {
        causes.push(required("spec.policyName", ""));
    }
    let actions: Vec<&str> = spec["validationActions"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    if actions.is_empty() {
        causes.push(required(
            "spec.validationActions",
            "at least one validation action is required",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, a) in actions.iter().enumerate() {
        if !matches!(*a, "Deny" | "Warn" | "Audit") {
            causes.push(not_supported(
                format!("spec.validationActions[{i}]"),
                a,
                &["Audit", "Deny", "Warn"],
            ));
        }
        if !seen.insert(*a) {
            causes.push((
                format!("spec.validationActions[{i}]"),
                "Duplicate value".into(),
                go_quote(a),
            ));
        }
    }
    if actions.contains(&"Deny") && actions.contains(&"Warn") {
        let list: Vec<String> = actions.iter().map(|a| go_quote(a)).collect();
        causes.push((
            "spec.validationActions".into(),
            "Invalid value".into(),
            format!(
                "[]admissionregistration.ValidationAction{{{}}}: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
                list.join(", ")
            ),
        ));
    }
    if let Some(p) = spec.get("paramRef").filter(|p| p.is_object()) {
        let has_name = p["name"].as_str().is_some_and(|n| !n.is_empty());
        let has_selector = p["selector"].is_object();
        if has_name == has_selector {
            causes.push((
                "spec.paramRef.name".into(),
                "Forbidden".into(),
                "name and selector are mutually exclusive".into(),
            ));
        }
        match p["parameterNotFoundAction"].as_str() {
            None => causes.push(required("spec.paramRef.parameterNotFoundAction", "")),
            Some("Allow" | "Deny") => {}
            Some(other) => causes.push(not_supported(
                "spec.paramRef.parameterNotFoundAction".into(),
                other,
                &["Allow", "Deny"],
            )),
        }
    }
    if let Some(m) = spec.get("matchResources").filter(|m| m.is_object()) {
        validate_match_resources(m, "spec.matchResources", false, causes);
    }
}

/// Whether `m` (matchConstraints or matchResources) covers the request.
fn covers(
    m: &Value,
    a: &Attributes<'_>,
    name: &str,
    ns_labels: Option<&BTreeMap<String, String>>,
    old: Option<&Value>,
    obj: Option<&Value>,
) -> bool {
    let rule_covers = |r: &Value| {
        Rule::parse(r).matches(a)
            && r["resourceNames"]
                .as_array()
                .is_none_or(|n| n.is_empty() || n.iter().any(|x| x == name))
    };
    let included = match m["resourceRules"].as_array() {
        Some(rules) => rules.iter().any(rule_covers),
        None => true,
    };
    if !included
        || m["excludeResourceRules"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(rule_covers))
    {
        return false;
    }
    super::matching::selectors_match(
        &m["namespaceSelector"],
        &m["objectSelector"],
        ns_labels,
        old,
        obj,
    )
}

/// A policy violation.
struct Violation {
    message: String,
    code: u16,
    reason: &'static str,
}

fn reason_code(reason: &str) -> (u16, &'static str) {
    match reason {
        "Unauthorized" => (401, "Unauthorized"),
        "Forbidden" => (403, "Forbidden"),
        "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
        _ => (422, "Invalid"),
    }
}

/// Loads the objects of `plural` (cluster-scoped, in name order).
async fn load_all(ctx: &Ctx<'_>, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
    let prefix = rt.prefix(namespace);
    match ctx
        .state
        .caches
        .ready(rt)
        .await
        .and_then(|c| c.snapshot(&prefix))
    {
        Some(snap) => snap.objects.iter().map(|o| Value::clone(o)).collect(),
        None => ctx
            .state
            .store
            .list(&prefix, None, 0, 0)
            .await
            .map(|p| {
                p.items
                    .iter()
                    .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The params a binding gives its policy: `Ok(None)` when the policy takes
/// none, `Ok(Some(list))` otherwise (empty when none was found and the
/// binding allows that), an error message when the binding denies.
async fn params_for(
    ctx: &Ctx<'_>,
    policy: &Value,
    binding: &Value,
) -> Result<Option<Vec<Value>>, String> {
    let Some(pk) = policy["spec"]["paramKind"].as_object() else {
        return Ok(None);
    };
    let api_version = pk.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = pk.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(prt) = ctx.state.registry.resolve_kind(api_version, kind) else {
        return Err(format!(
            "failed to configure policy: failed to find resource referenced by paramKind: '{api_version}, Kind={kind}'"
        ));
    };
    let pref = &binding["spec"]["paramRef"];
    if !pref.is_object() {
        return Err("failed to configure binding: no paramRef specified for the binding of a policy with a paramKind".into());
    }
    let namespace = if prt.namespaced {
        pref["namespace"].as_str().filter(|s| !s.is_empty()).or(ctx
            .path
            .namespace
            .as_deref()
            .filter(|_| ctx.path.rt.namespaced))
    } else {
        None
    };
    if prt.namespaced && namespace.is_none() {
        return Err("failed to configure binding: cannot use a namespaced paramRef without a namespace for a cluster-scoped request".into());
    }
    let found: Vec<Value> = match pref["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => {
            let key = prt.key(namespace, name);
            let cached = ctx.state.caches.running(&prt).and_then(|c| c.get(&key));
            match cached {
                Some((o, _)) => vec![Value::clone(&o)],
                None => match ctx.state.store.get(&key).await {
                    Ok(Some(kv)) => serde_json::from_slice(&kv.value).into_iter().collect(),
                    _ => Vec::new(),
                },
            }
        }
        None => {
            let sel = rke2_apimachinery::selectors::label_selector_from_json(&pref["selector"])
                .map_err(|e| format!("failed to configure binding: {e}"))?;
            load_all(ctx, &prt, namespace)
                .await
                .into_iter()
                .filter(|o| sel.matches_value(o["metadata"].get("labels")))
                .collect()
        }
    };
    if found.is_empty() && pref["parameterNotFoundAction"] == "Deny" {
        return Err("failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction".into());
    }
    Ok(Some(found))
}

/// Evaluates one policy with one params object; the violations found.
fn evaluate(spec: &Value, mut inputs: Inputs) -> Result<Vec<Violation>, String> {
    let fail = spec["failurePolicy"].as_str() != Some("Ignore");
    match expr::match_conditions(&spec["matchConditions"], &inputs) {
        Ok(true) => {}
        Ok(false) => return Ok(Vec::new()),
        Err(e) if fail => return Err(e),
        Err(_) => return Ok(Vec::new()),
    }
    let mut vars = Map::new();
    for v in spec["variables"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        inputs.variables = Value::Object(vars.clone());
        // A variable that fails leaves it unset: an expression using it
        // then fails with the variable named.
        if let Ok(value) = expr::eval_value(v["expression"].as_str().unwrap_or(""), &inputs) {
            vars.insert(name, value);
        }
    }
    inputs.variables = Value::Object(vars);
    let mut out = Vec::new();
    for v in spec["validations"].as_array().into_iter().flatten() {
        let e = v["expression"].as_str().unwrap_or("");
        let (code, reason) = reason_code(v["reason"].as_str().unwrap_or("Invalid"));
        match expr::eval_bool(e, &inputs) {
            Ok(true) => {}
            Ok(false) => {
                let from_expr = v["messageExpression"]
                    .as_str()
                    .and_then(|m| expr::eval_string(m, &inputs).ok())
                    .filter(|m| !m.trim().is_empty() && !m.contains('\n'));
                let message = from_expr
                    .or_else(|| {
                        v["message"]
                            .as_str()
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| format!("failed expression: {e}"));
                out.push(Violation {
                    message,
                    code,
                    reason,
                });
            }
            Err(err) if fail => out.push(Violation {
                message: format!("expression '{e}' resulted in error: {err}"),
                code: 422,
                reason: "Invalid",
            }),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Runs every binding's policy over the request (validating phase).
pub async fn validate(
    ctx: &Ctx<'_>,
    op: super::Operation,
    old: Option<&Value>,
    obj: Option<&Value>,
) -> ApiResult<()> {
    let Some(brt) = registry::find(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicybindings",
    ) else {
        return Ok(());
    };
    let bindings = load_all(ctx, brt, None).await;
    if bindings.is_empty() {
        return Ok(());
    }
    let Some(prt) = registry::find(
        "admissionregistration.k8s.io",
        "v1",
        "validatingadmissionpolicies",
    ) else {
        return Ok(());
    };
    // Built-in validation comes first: a policy sees only valid objects.
    if let Some(o) = obj {
        crate::objects::validate(&ctx.path.rt, o)?;
    }
    let attrs = super::attributes(ctx, op);
    let name = obj
        .or(old)
        .and_then(|o| o["metadata"]["name"].as_str())
        .or(ctx.path.name.as_deref())
        .unwrap_or("")
        .to_string();
    let ns_object = super::namespace_object(ctx).await;
    let ns_labels = super::namespace_labels(ctx, obj, old).await;
    let mut review: Option<Value> = None;
    for binding in &bindings {
        let policy_name = binding["spec"]["policyName"].as_str().unwrap_or("");
        let binding_name = binding["metadata"]["name"].as_str().unwrap_or("");
        let policy = match ctx
            .state
            .caches
            .running(prt)
            .and_then(|c| c.get(&prt.key(None, policy_name)))
        {
            Some((p, _)) => Value::clone(&p),
            None => match ctx.state.store.get(&prt.key(None, policy_name)).await {
                Ok(Some(kv)) => match serde_json::from_slice(&kv.value) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                _ => continue,
            },
        };
        let spec = &policy["spec"];
        if !covers(
            &spec["matchConstraints"],
            &attrs,
            &name,
            ns_labels.as_ref(),
            old,
            obj,
        ) {
            continue;
        }
        if let Some(m) = binding["spec"]
            .get("matchResources")
            .filter(|m| m.is_object())
            && !covers(m, &attrs, &name, ns_labels.as_ref(), old, obj)
        {
            continue;
        }
        let actions: Vec<&str> = binding["spec"]["validationActions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let fail = spec["failurePolicy"].as_str() != Some("Ignore");
        let denied = |message: &str, code: u16, reason: &'static str| {
            ApiError::new(
                code,
                reason,
                format!(
                    "ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {message}"
                ),
            )
        };
        let params = match params_for(ctx, &policy, binding).await {
            Ok(p) => p,
            Err(e) if fail => return Err(denied(&e, 403, "Forbidden")),
            Err(_) => continue,
        };
        let review = review.get_or_insert_with(|| {
            super::review_json(ctx, op, old, obj, &uuid::Uuid::new_v4().to_string())
        });
        let base = Inputs {
            object: review["request"]["object"].clone(),
            old_object: review["request"]["oldObject"].clone(),
            request: review["request"].clone(),
            namespace_object: ns_object.clone().unwrap_or(Value::Null),
            ..Default::default()
        };
        let param_sets = match params {
            None => vec![Value::Null],
            Some(list) => list,
        };
        for p in param_sets {
            let inputs = Inputs {
                params: p,
                ..base.clone()
            };
            let violations = match evaluate(spec, inputs) {
                Ok(v) => v,
                Err(e) => vec![Violation {
                    message: e,
                    code: 403,
                    reason: "Forbidden",
                }],
            };
            for v in violations {
                if actions.contains(&"Warn") {
                    ctx.warnings.push(format!(
                        "Validation failed for ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}': {}",
                        v.message
                    ));
                }
                if actions.contains(&"Deny") {
                    return Err(denied(&v.message, v.code, v.reason));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_causes(spec: Value) -> Vec<String> {
        let mut c = Vec::new();
        validate_policy(&spec, &mut c);
        c.into_iter()
            .map(|(f, t, d)| format!("{f}: {t}: {d}"))
            .collect()
    }

    #[test]
    fn policies_and_bindings_are_validated() {
        let good = json!({
            "matchConstraints": {"resourceRules": [{"operations": ["CREATE"], "apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments"]}]},
            "validations": [{"expression": "object.spec.replicas <= 5"}],
        });
        assert_eq!(policy_causes(good), Vec::<String>::new());
        let bad = json!({
            "validations": [{"expression": "object.spec.replicas <=", "reason": "Teapot"}],
            "variables": [{"name": "1x", "expression": "true"}],
        });
        let c = policy_causes(bad);
        assert!(
            c.contains(&"spec.matchConstraints: Required value: ".to_string()),
            "{c:?}"
        );
        assert!(c.iter().any(|m| m.starts_with("spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": compilation failed")), "{c:?}");
        assert!(c.iter().any(|m| m.starts_with("spec.validations[0].reason: Unsupported value: \"Teapot\"")), "{c:?}");
        assert!(
            c.iter()
                .any(|m| m.starts_with("spec.variables[0].name: Invalid value")),
            "{c:?}"
        );
        assert!(policy_causes(json!({"matchConstraints": {"resourceRules": []}})).contains(
            &"spec.validations: Required value: validations or auditAnnotations must contain at least one item".to_string()
        ));

        let mut c = Vec::new();
        validate_binding(
            &json!({"policyName": "p", "validationActions": ["Deny", "Warn"], "paramRef": {"name": "x"}}),
            &mut c,
        );
        let fields: Vec<&str> = c.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.validationActions",
                "spec.paramRef.parameterNotFoundAction"
            ],
            "{c:?}"
        );
        let mut c = Vec::new();
        validate_binding(&json!({"validationActions": []}), &mut c);
        assert_eq!(c.len(), 2, "{c:?}");
    }

    #[test]
    fn validations_give_messages_as_upstream() {
        let spec = json!({
            "failurePolicy": "Fail",
            "variables": [{"name": "max", "expression": "params != null ? int(params.data.max) : 5"}],
            "validations": [
                {"expression": "object.spec.replicas <= variables.max"},
                {"expression": "object.metadata.name != 'x'", "message": "not x", "reason": "Forbidden"},
                {"expression": "object.metadata.name != 'y'", "messageExpression": "'name ' + object.metadata.name + ' is taken'"},
                {"expression": "object.spec.missing == 1"},
            ],
        });
        let inputs = |name: &str, replicas: i64, params: Value| Inputs {
            object: json!({"metadata": {"name": name}, "spec": {"replicas": replicas, "missing": 1}}),
            params,
            ..Default::default()
        };
        assert!(
            evaluate(&spec, inputs("a", 3, Value::Null))
                .unwrap()
                .is_empty()
        );
        let v = evaluate(&spec, inputs("a", 7, Value::Null)).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].message,
            "failed expression: object.spec.replicas <= variables.max"
        );
        assert_eq!((v[0].code, v[0].reason), (422, "Invalid"));
        assert!(
            evaluate(&spec, inputs("a", 7, json!({"data": {"max": "10"}})))
                .unwrap()
                .is_empty()
        );
        let v = evaluate(&spec, inputs("x", 1, Value::Null)).unwrap();
        assert_eq!((v[0].message.as_str(), v[0].code), ("not x", 403));
        let v = evaluate(&spec, inputs("y", 1, Value::Null)).unwrap();
        assert_eq!(v[0].message, "name y is taken");
        // An evaluation error is a violation under Fail, skipped under Ignore.
        let mut broken = json!({"validations": [{"expression": "object.spec.nothing == 1"}]});
        let v = evaluate(&broken, inputs("a", 1, Value::Null)).unwrap();
        assert!(
            v[0].message
                .starts_with("expression 'object.spec.nothing == 1' resulted in error: "),
            "{}",
            v[0].message
        );
        broken["failurePolicy"] = json!("Ignore");
        assert!(
            evaluate(&broken, inputs("a", 1, Value::Null))
                .unwrap()
                .is_empty()
        );
    }
}
