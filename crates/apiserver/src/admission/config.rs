//! `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration as stored objects: upstream's defaults
//! (`SetDefaults_*Webhook`, `SetDefaults_Rule`, `SetDefaults_ServiceReference`)
//! and validation (`ValidateMutatingWebhookConfiguration`), with its field
//! paths and messages.

use base64::Engine;
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::schema::go_quote;
use crate::strategy::{Cause, Strategy};

/// The strategy of MutatingWebhookConfiguration.
#[derive(Debug)]
pub struct MutatingWebhooks;

/// The strategy of ValidatingWebhookConfiguration.
#[derive(Debug)]
pub struct ValidatingWebhooks;

impl Strategy for MutatingWebhooks {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        default_webhooks(obj, true);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_webhooks(obj, true, causes);
    }
}

impl Strategy for ValidatingWebhooks {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        default_webhooks(obj, false);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_webhooks(obj, false, causes);
    }
}

fn set_if_absent(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_string(), value);
    }
}

/// Upstream's v1 defaults of every webhook in a configuration.
pub fn default_webhooks(obj: &mut Value, mutating: bool) {
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for h in hooks.iter_mut().filter(|h| h.is_object()) {
        set_if_absent(h, "failurePolicy", json!("Fail"));
        set_if_absent(h, "matchPolicy", json!("Equivalent"));
        set_if_absent(h, "namespaceSelector", json!({}));
        set_if_absent(h, "objectSelector", json!({}));
        set_if_absent(h, "timeoutSeconds", json!(10));
        if mutating {
            set_if_absent(h, "reinvocationPolicy", json!("Never"));
        }
        if let Some(rules) = h.get_mut("rules").and_then(Value::as_array_mut) {
            for r in rules.iter_mut().filter(|r| r.is_object()) {
                set_if_absent(r, "scope", json!("*"));
            }
        }
        if let Some(svc) = h.pointer_mut("/clientConfig/service")
            && svc.is_object()
        {
            set_if_absent(svc, "port", json!(443));
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn required(field: String, detail: &str) -> Cause {
    (field, "Required value".into(), detail.into())
}

fn invalid(field: String, value: &str, detail: &str) -> Cause {
    (
        field,
        "Invalid value".into(),
        format!("{}: {detail}", go_quote(value)),
    )
}

fn not_supported(field: String, value: &str, values: &[&str]) -> Cause {
    let list: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    (
        field,
        "Unsupported value".into(),
        format!("{}: supported values: {}", go_quote(value), list.join(", ")),
    )
}

/// Go's `%#v` of a `[]string`, how upstream prints a list as a bad value.
fn go_slice(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[]string{{{}}}", q.join(", "))
}

/// Upstream's `IsFullyQualifiedName`: a DNS subdomain with at least three
/// dot-separated segments.
fn fully_qualified_name_problems(name: &str) -> Vec<String> {
    let mut out = rke2_apimachinery::validation::validate_object_name(true, name);
    if out.is_empty() && name.split('.').count() < 3 {
        out.push("should be a domain with at least three segments separated by dots".into());
    }
    out
}

/// Validates the `webhooks` of a Mutating- or ValidatingWebhookConfiguration.
pub fn validate_webhooks(obj: &Value, mutating: bool, causes: &mut Vec<Cause>) {
    let Some(hooks) = obj.get("webhooks").and_then(Value::as_array) else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for (i, h) in hooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let name = str_at(h, "name").unwrap_or("");
        if name.is_empty() {
            causes.push(required(format!("{at}.name"), ""));
        } else {
            for msg in fully_qualified_name_problems(name) {
                causes.push(invalid(format!("{at}.name"), name, &msg));
            }
            if !seen.insert(name.to_string()) {
                causes.push((
                    format!("{at}.name"),
                    "Duplicate value".into(),
                    go_quote(name),
                ));
            }
        }
        validate_webhook(h, &at, mutating, causes);
    }
}

fn validate_webhook(h: &Value, at: &str, mutating: bool, causes: &mut Vec<Cause>) {
    if let Some(rules) = h.get("rules").and_then(Value::as_array) {
        for (j, r) in rules.iter().enumerate() {
            validate_rule(r, &format!("{at}.rules[{j}]"), causes);
        }
    }
    let field = |f: &str| format!("{at}.{f}");
    if let Some(p) = str_at(h, "failurePolicy")
        && !matches!(p, "Fail" | "Ignore")
    {
        causes.push(not_supported(
            field("failurePolicy"),
            p,
            &["Fail", "Ignore"],
        ));
    }
    if let Some(p) = str_at(h, "matchPolicy")
        && !matches!(p, "Exact" | "Equivalent")
    {
        causes.push(not_supported(
            field("matchPolicy"),
            p,
            &["Equivalent", "Exact"],
        ));
    }
    match str_at(h, "sideEffects") {
        None => causes.push(required(
            field("sideEffects"),
            "must specify one of None, NoneOnDryRun",
        )),
        Some("None" | "NoneOnDryRun") => {}
        Some(other) => causes.push(not_supported(
            field("sideEffects"),
            other,
            &["None", "NoneOnDryRun"],
        )),
    }
    if mutating
        && let Some(p) = str_at(h, "reinvocationPolicy")
        && !matches!(p, "Never" | "IfNeeded")
    {
        causes.push(not_supported(
            field("reinvocationPolicy"),
            p,
            &["IfNeeded", "Never"],
        ));
    }
    if let Some(t) = h.get("timeoutSeconds").and_then(Value::as_i64)
        && !(1..=30).contains(&t)
    {
        causes.push((
            field("timeoutSeconds"),
            "Invalid value".into(),
            format!("{t}: the timeout value must be between 1 and 30 seconds"),
        ));
    }
    let versions = strings(h, "admissionReviewVersions");
    if versions.is_empty() {
        causes.push(required(
            field("admissionReviewVersions"),
            "must specify one of v1, v1beta1",
        ));
    } else {
        let mut seen = std::collections::HashSet::new();
        for (k, v) in versions.iter().enumerate() {
            if !seen.insert(v) {
                causes.push((
                    format!("{at}.admissionReviewVersions[{k}]"),
                    "Invalid value".into(),
                    format!("{}: duplicate version", go_quote(v)),
                ));
            }
        }
        if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            causes.push((
                field("admissionReviewVersions"),
                "Invalid value".into(),
                format!(
                    "{}: must include at least one of v1, v1beta1",
                    go_slice(&versions)
                ),
            ));
        }
    }
    for sel in ["namespaceSelector", "objectSelector"] {
        if let Some(s) = h.get(sel).filter(|s| s.is_object()) {
            crate::rbac_objects::validate_label_selector(s, &field(sel), causes);
        }
    }
    validate_client_config(h.get("clientConfig"), &field("clientConfig"), causes);
    if let Some(mc) = h.get("matchConditions") {
        super::expr::validate_match_conditions(mc, &field("matchConditions"), causes);
    }
}

const OPERATIONS: &[&str] = &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];

fn validate_rule(r: &Value, at: &str, causes: &mut Vec<Cause>) {
    let ops = strings(r, "operations");
    if ops.is_empty() {
        causes.push(required(format!("{at}.operations"), ""));
    }
    if ops.len() > 1 && ops.iter().any(|o| o == "*") {
        causes.push((
            format!("{at}.operations"),
            "Invalid value".into(),
            format!(
                "{}: if '*' is present, must not specify other operations",
                go_slice(&ops)
            ),
        ));
    }
    for (k, op) in ops.iter().enumerate() {
        if !OPERATIONS.contains(&op.as_str()) {
            causes.push(not_supported(
                format!("{at}.operations[{k}]"),
                op,
                OPERATIONS,
            ));
        }
    }
    for (key, what) in [("apiGroups", "API groups"), ("apiVersions", "API versions")] {
        let items = strings(r, key);
        if items.is_empty() {
            causes.push(required(format!("{at}.{key}"), ""));
        }
        if items.len() > 1 && items.iter().any(|g| g == "*") {
            causes.push((
                format!("{at}.{key}"),
                "Invalid value".into(),
                format!(
                    "{}: if '*' is present, must not specify other {what}",
                    go_slice(&items)
                ),
            ));
        }
        if key == "apiVersions" {
            for (k, v) in items.iter().enumerate() {
                if v.is_empty() {
                    causes.push(required(
                        format!("{at}.apiVersions[{k}]"),
                        "version must be non-empty",
                    ));
                }
            }
        }
    }
    let resources = strings(r, "resources");
    if resources.is_empty() {
        causes.push(required(format!("{at}.resources"), ""));
    }
    for (k, res) in resources.iter().enumerate() {
        let f = format!("{at}.resources[{k}]");
        if res.is_empty() {
            causes.push(required(f, ""));
            continue;
        }
        let parts: Vec<&str> = res.split('/').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            causes.push(invalid(
                f,
                res,
                "must be of the form <resource> or <resource>/<subresource>",
            ));
        }
    }
    let all_sub = resources.iter().any(|r| r == "*/*");
    if resources.len() > 1 && (all_sub || resources.iter().any(|r| r == "*")) {
        let which = if all_sub { "*/*" } else { "*" };
        causes.push((
            format!("{at}.resources"),
            "Invalid value".into(),
            format!(
                "{}: if '{which}' is present, must not specify other resources",
                go_slice(&resources)
            ),
        ));
    }
    if let Some(s) = str_at(r, "scope")
        && !matches!(s, "*" | "Cluster" | "Namespaced")
    {
        causes.push(not_supported(
            format!("{at}.scope"),
            s,
            &["*", "Cluster", "Namespaced"],
        ));
    }
}

/// Upstream's `ValidateWebhookURL`/`ValidateWebhookService`, and a
/// `caBundle` that must hold at least one PEM certificate.
fn validate_client_config(cc: Option<&Value>, at: &str, causes: &mut Vec<Cause>) {
    let cc = cc.filter(|c| c.is_object()).unwrap_or(&Value::Null);
    let url = str_at(cc, "url");
    let svc = cc.get("service").filter(|s| s.is_object());
    match (url, svc) {
        (Some(_), Some(_)) | (None, None) => causes.push(required(
            at.to_string(),
            "exactly one of url or service is required",
        )),
        (Some(u), None) => validate_url(u, &format!("{at}.url"), causes),
        (None, Some(s)) => {
            let f = |k: &str| format!("{at}.service.{k}");
            if str_at(s, "name").unwrap_or("").is_empty() {
                causes.push(required(f("name"), "service name is required"));
            }
            if str_at(s, "namespace").unwrap_or("").is_empty() {
                causes.push(required(f("namespace"), "service namespace is required"));
            }
            if let Some(p) = str_at(s, "path")
                && !p.is_empty()
            {
                if !p.starts_with('/') {
                    causes.push(invalid(f("path"), p, "must start with a '/'"));
                } else if p.contains("//") {
                    causes.push(invalid(f("path"), p, "segment[1] may not be empty"));
                }
            }
            if let Some(port) = s.get("port").and_then(Value::as_i64)
                && !(1..=65535).contains(&port)
            {
                causes.push((
                    f("port"),
                    "Invalid value".into(),
                    format!("{port}: port is not valid: must be between 1 and 65535, inclusive"),
                ));
            }
        }
    }
    if let Some(ca) = str_at(cc, "caBundle")
        && !ca.is_empty()
    {
        let pem_ok = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .ok()
            .is_some_and(|pem| !super::client::pem_certs(&pem).is_empty());
        if !pem_ok {
            causes.push((
                format!("{at}.caBundle"),
                "Invalid value".into(),
                "must be base64 of a PEM bundle with at least one certificate".into(),
            ));
        }
    }
}

fn validate_url(u: &str, at: &str, causes: &mut Vec<Cause>) {
    let parsed = match url::Url::parse(u) {
        Ok(p) => p,
        Err(e) => {
            causes.push(invalid(
                at.into(),
                u,
                &format!("url must be a valid URL: {e}"),
            ));
            return;
        }
    };
    if parsed.scheme() != "https" {
        causes.push(invalid(
            at.into(),
            u,
            "'https' is the only allowed URL scheme",
        ));
    }
    if parsed.host_str().unwrap_or("").is_empty() {
        causes.push(invalid(at.into(), u, "host must be specified"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        causes.push(invalid(
            at.into(),
            u,
            "user information is not permitted in the URL",
        ));
    }
    if parsed.fragment().is_some() {
        causes.push(invalid(
            at.into(),
            u,
            "fragments are not permitted in the URL",
        ));
    }
    if parsed.query().is_some() {
        causes.push(invalid(
            at.into(),
            u,
            "query parameters are not permitted in the URL",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Value {
        json!({
            "name": "a.example.com",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": "https://127.0.0.1:8443/mutate"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]
        })
    }

    fn problems(h: Value, mutating: bool) -> Vec<String> {
        let mut obj = json!({"webhooks": [h]});
        default_webhooks(&mut obj, mutating);
        let mut causes = Vec::new();
        validate_webhooks(&obj, mutating, &mut causes);
        causes
            .into_iter()
            .map(|(f, t, d)| format!("{f}: {t}: {d}"))
            .collect()
    }

    #[test]
    fn defaults_follow_upstream_v1() {
        let mut obj = json!({"webhooks": [{"name": "a.b.c", "clientConfig": {"service": {"name": "s", "namespace": "n"}}, "rules": [{}]}]});
        default_webhooks(&mut obj, true);
        let h = &obj["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["namespaceSelector"], json!({}));
        assert_eq!(h["rules"][0]["scope"], "*");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        let mut v = json!({"webhooks": [{"name": "a.b.c"}]});
        default_webhooks(&mut v, false);
        assert!(v["webhooks"][0].get("reinvocationPolicy").is_none());
    }

    #[test]
    fn a_good_webhook_passes() {
        assert_eq!(problems(hook(), true), Vec::<String>::new());
    }

    #[test]
    fn bad_webhooks_are_named_as_upstream() {
        let mut h = hook();
        h["name"] = json!("short.name");
        h.as_object_mut().unwrap().remove("sideEffects");
        h["timeoutSeconds"] = json!(31);
        h["admissionReviewVersions"] = json!(["v2"]);
        let p = problems(h, false);
        assert!(p.contains(&"webhooks[0].name: Invalid value: \"short.name\": should be a domain with at least three segments separated by dots".to_string()), "{p:?}");
        assert!(
            p.contains(
                &"webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun"
                    .to_string()
            ),
            "{p:?}"
        );
        assert!(p.contains(&"webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds".to_string()), "{p:?}");
        assert!(p.contains(&"webhooks[0].admissionReviewVersions: Invalid value: []string{\"v2\"}: must include at least one of v1, v1beta1".to_string()), "{p:?}");

        let mut h = hook();
        h["sideEffects"] = json!("Some");
        h["clientConfig"] = json!({"url": "http://x.example/"});
        let p = problems(h, true);
        assert!(p.contains(&"webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\"".to_string()), "{p:?}");
        assert!(p.contains(&"webhooks[0].clientConfig.url: Invalid value: \"http://x.example/\": 'https' is the only allowed URL scheme".to_string()), "{p:?}");

        let mut h = hook();
        h["clientConfig"] =
            json!({"url": "https://x.example/", "service": {"name": "s", "namespace": "n"}});
        let p = problems(h, true);
        assert_eq!(
            p,
            vec![
                "webhooks[0].clientConfig: Required value: exactly one of url or service is required"
            ]
        );

        let mut h = hook();
        h["clientConfig"] = json!({"service": {"name": "", "namespace": "n", "port": 70000, "path": "x"}, "caBundle": "bm90IGEgY2VydA=="});
        let p = problems(h, true);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("webhooks[0].clientConfig.caBundle: Invalid value"))
        );

        let mut h = hook();
        h["rules"] = json!([{"operations": ["*", "CREATE"], "apiGroups": [], "apiVersions": ["v1"], "resources": ["a/b/c"], "scope": "Everywhere"}]);
        let p = problems(h, true);
        assert_eq!(p.len(), 4, "{p:?}");

        let p = {
            let mut obj = json!({"webhooks": [hook(), hook()]});
            let mut causes = Vec::new();
            validate_webhooks(&obj, true, &mut causes);
            default_webhooks(&mut obj, true);
            causes
        };
        assert_eq!(
            p,
            vec![(
                "webhooks[1].name".to_string(),
                "Duplicate value".to_string(),
                "\"a.example.com\"".to_string()
            )]
        );
    }
}
