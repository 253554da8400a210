//! `networking.k8s.io/v1` Ingress and IngressClass: upstream's
//! validation (`ValidateIngressCreate`, `ValidateIngressClass`) with its
//! field paths and messages, the `DefaultIngressClass` admission plugin,
//! and the Table cells kubectl prints (NAME CLASS HOSTS ADDRESS PORTS AGE;
//! NAME CONTROLLER PARAMETERS AGE).

use std::net::IpAddr;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::ApiState;
use crate::registry::{self, ResourceType};
use crate::status::ApiResult;
use crate::strategy::{Cause, Strategy};

/// The annotation marking the IngressClass an Ingress without a class
/// gets (`networking.IngressClassDefaultAnnotation`).
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The legacy class annotation (`kubernetes.io/ingress.class`): an
/// Ingress carrying it is left alone by the default class admission and
/// may not also set `spec.ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The most characters of an IngressClass `spec.controller`.
const MAX_CONTROLLER_LEN: usize = 250;

/// The path types an Ingress path may have (`supportedPathTypes`, as
/// upstream lists them in its message).
const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];

/// Ingress objects: upstream's spec validation and the default class
/// admission.
#[derive(Debug)]
pub struct Ingress;

impl Strategy for Ingress {
    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_ingress(obj, causes);
    }

    fn admit_create_with<'a>(
        &'a self,
        state: &'a ApiState,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(admit_default_class(state, obj))
    }
}

/// IngressClass objects: a controller that is a domain-prefixed path,
/// fixed after creation, and well-formed parameters.
#[derive(Debug)]
pub struct IngressClass;

impl Strategy for IngressClass {
    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_ingress_class(obj, causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        if old["spec"]["controller"] != new["spec"]["controller"] {
            causes.push(cause(
                "spec.controller",
                "Invalid value",
                format!(
                    "{}: field is immutable",
                    q(new["spec"]["controller"].as_str().unwrap_or(""))
                ),
            ));
        }
    }
}

fn cause(field: impl Into<String>, ty: &str, detail: impl Into<String>) -> Cause {
    (field.into(), ty.into(), detail.into())
}

fn q(s: &str) -> String {
    crate::schema::go_quote(s)
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// upstream's `ValidateIngressSpec` (metadata is checked by
/// `objects::validate`).
pub fn validate_ingress(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let rules = arr(&spec["rules"]);
    if rules.is_empty() && spec["defaultBackend"].is_null() {
        causes.push(cause(
            "spec",
            "Invalid value",
            "[]networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified",
        ));
    }
    if spec["defaultBackend"].is_object() {
        validate_backend(&spec["defaultBackend"], "spec.defaultBackend", causes);
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if let Some(host) = rule["host"].as_str().filter(|h| !h.is_empty()) {
            for msg in host_problems(host) {
                causes.push(cause(
                    format!("{path}.host"),
                    "Invalid value",
                    format!("{}: {msg}", q(host)),
                ));
            }
        }
        if rule["http"].is_object() {
            let paths = arr(&rule["http"]["paths"]);
            if paths.is_empty() {
                causes.push(cause(format!("{path}.http.paths"), "Required value", ""));
            }
            for (j, p) in paths.iter().enumerate() {
                validate_path(p, &format!("{path}.http.paths[{j}]"), causes);
            }
        }
    }
    for (i, tls) in arr(&spec["tls"]).iter().enumerate() {
        for (j, host) in arr(&tls["hosts"]).iter().enumerate() {
            let host = host.as_str().unwrap_or("");
            let problems = if let Some(rest) = host.strip_prefix("*.") {
                wildcard_problems(rest, host)
            } else {
                rke2_apimachinery::validation::validate_dns1123_subdomain(host)
            };
            for msg in problems {
                causes.push(cause(
                    format!("spec.tls[{i}].hosts[{j}]"),
                    "Invalid value",
                    format!("{}: {msg}", q(host)),
                ));
            }
        }
        if let Some(secret) = tls["secretName"].as_str().filter(|s| !s.is_empty()) {
            for msg in rke2_apimachinery::validation::validate_dns1123_subdomain(secret) {
                causes.push(cause(
                    format!("spec.tls[{i}].secretName"),
                    "Invalid value",
                    format!("{}: {msg}", q(secret)),
                ));
            }
        }
    }
    if let Some(class) = spec["ingressClassName"].as_str() {
        for msg in rke2_apimachinery::validation::validate_dns1123_subdomain(class) {
            causes.push(cause(
                "spec.ingressClassName",
                "Invalid value",
                format!("{}: {msg}", q(class)),
            ));
        }
        if obj["metadata"]["annotations"][LEGACY_CLASS_ANNOTATION].is_string() {
            causes.push(cause(
                format!("metadata.annotations[{LEGACY_CLASS_ANNOTATION}]"),
                "Invalid value",
                format!(
                    "{}: can not be set when the class field is also set",
                    q(obj["metadata"]["annotations"][LEGACY_CLASS_ANNOTATION]
                        .as_str()
                        .unwrap_or(""))
                ),
            ));
        }
    }
}

/// What is wrong with a rule's host: an IP address, a malformed DNS
/// name, or a wildcard anywhere but the whole first label.
pub fn host_problems(host: &str) -> Vec<String> {
    if host.parse::<IpAddr>().is_ok() {
        return vec!["must be a DNS name, not an IP address".into()];
    }
    match host.strip_prefix("*.") {
        Some(rest) => wildcard_problems(rest, host),
        None => rke2_apimachinery::validation::validate_dns1123_subdomain(host),
    }
}

/// `IsWildcardDNS1123Subdomain`: `*.` then a DNS subdomain.
fn wildcard_problems(rest: &str, whole: &str) -> Vec<String> {
    let mut out = Vec::new();
    if whole.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !rke2_apimachinery::validation::validate_dns1123_subdomain(rest).is_empty() {
        out.push(
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string(),
        );
    }
    out
}

/// `validateHTTPIngressPath`: a path type, an absolute clean path for
/// `Exact`/`Prefix`, and a backend.
fn validate_path(p: &Value, path: &str, causes: &mut Vec<Cause>) {
    let value = p["path"].as_str().unwrap_or("");
    match p["pathType"].as_str() {
        None => causes.push(cause(
            format!("{path}.pathType"),
            "Required value",
            "pathType must be specified",
        )),
        Some("Exact" | "Prefix") => {
            if !value.starts_with('/') {
                causes.push(cause(
                    format!("{path}.path"),
                    "Invalid value",
                    format!("{}: must be an absolute path", q(value)),
                ));
            }
            for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                if value.contains(bad) {
                    causes.push(cause(
                        format!("{path}.path"),
                        "Invalid value",
                        format!("{}: must not contain '{bad}'", q(value)),
                    ));
                }
            }
            for bad in ["/..", "/."] {
                if value.ends_with(bad) {
                    causes.push(cause(
                        format!("{path}.path"),
                        "Invalid value",
                        format!("{}: cannot end with '{bad}'", q(value)),
                    ));
                }
            }
        }
        Some("ImplementationSpecific") => {
            if !value.is_empty() && !value.starts_with('/') {
                causes.push(cause(
                    format!("{path}.path"),
                    "Invalid value",
                    format!("{}: must be an absolute path", q(value)),
                ));
            }
        }
        Some(other) => causes.push(cause(
            format!("{path}.pathType"),
            "Unsupported value",
            format!(
                "{}: supported values: {}",
                q(other),
                PATH_TYPES
                    .iter()
                    .map(|s| q(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
    if p["backend"].is_object() {
        validate_backend(&p["backend"], &format!("{path}.backend"), causes);
    } else {
        causes.push(cause(format!("{path}.backend"), "Required value", ""));
    }
}

/// `validateIngressBackend`: exactly one of a Service (a DNS-1035 name
/// and a port name or number) or a typed resource reference.
fn validate_backend(b: &Value, path: &str, causes: &mut Vec<Cause>) {
    let has_service = b["service"].is_object();
    let has_resource = b["resource"].is_object();
    match (has_service, has_resource) {
        (true, true) => causes.push(cause(
            path,
            "Invalid value",
            "cannot set both resource and service backends",
        )),
        (false, false) => causes.push(cause(
            path,
            "Invalid value",
            "either `resource` or `service` must be specified",
        )),
        (false, true) => {
            let r = &b["resource"];
            if r["kind"].as_str().unwrap_or("").is_empty() {
                causes.push(cause(format!("{path}.resource.kind"), "Required value", ""));
            }
            if r["name"].as_str().unwrap_or("").is_empty() {
                causes.push(cause(format!("{path}.resource.name"), "Required value", ""));
            }
        }
        (true, false) => {
            let svc = &b["service"];
            let name = svc["name"].as_str().unwrap_or("");
            if name.is_empty() {
                causes.push(cause(format!("{path}.service.name"), "Required value", ""));
            } else {
                for msg in rke2_apimachinery::validation::validate_dns1035_label(name) {
                    causes.push(cause(
                        format!("{path}.service.name"),
                        "Invalid value",
                        format!("{}: {msg}", q(name)),
                    ));
                }
            }
            let port = &svc["port"];
            let port_name = port["name"].as_str().filter(|s| !s.is_empty());
            let number = port["number"].as_i64().filter(|n| *n != 0);
            match (port_name, number) {
                (Some(_), Some(_)) => causes.push(cause(
                    format!("{path}.service.port"),
                    "Invalid value",
                    "cannot set both port name & port number",
                )),
                (Some(n), None) => {
                    for msg in crate::services::port_name_problems(n) {
                        causes.push(cause(
                            format!("{path}.service.port.name"),
                            "Invalid value",
                            format!("{}: {msg}", q(n)),
                        ));
                    }
                }
                (None, Some(n)) => {
                    if !(1..=65535).contains(&n) {
                        causes.push(cause(
                            format!("{path}.service.port.number"),
                            "Invalid value",
                            format!("{n}: must be between 1 and 65535, inclusive"),
                        ));
                    }
                }
                (None, None) => causes.push(cause(
                    format!("{path}.service.port"),
                    "Required value",
                    "port name or number is required",
                )),
            }
        }
    }
}

/// upstream's `ValidateIngressClassSpec`.
pub fn validate_ingress_class(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let controller = spec["controller"].as_str().unwrap_or("");
    if controller.is_empty() {
        causes.push(cause("spec.controller", "Required value", ""));
    } else if controller.len() > MAX_CONTROLLER_LEN {
        causes.push(cause(
            "spec.controller",
            "Too long",
            format!("may not be more than {MAX_CONTROLLER_LEN} bytes"),
        ));
    } else if let Some(msg) = domain_prefixed_path_problem(controller) {
        causes.push(cause(
            "spec.controller",
            "Invalid value",
            format!("{}: {msg}", q(controller)),
        ));
    }
    let p = &spec["parameters"];
    if p.is_object() {
        if p["kind"].as_str().unwrap_or("").is_empty() {
            causes.push(cause("spec.parameters.kind", "Required value", ""));
        }
        if p["name"].as_str().unwrap_or("").is_empty() {
            causes.push(cause("spec.parameters.name", "Required value", ""));
        }
        match (p["scope"].as_str(), p["namespace"].as_str()) {
            (Some("Namespace"), None) => causes.push(cause(
                "spec.parameters.namespace",
                "Required value",
                "`parameters.scope` is set to 'Namespace'",
            )),
            (Some("Cluster") | None, Some(_)) => causes.push(cause(
                "spec.parameters.namespace",
                "Forbidden",
                "`parameters.scope` is set to 'Cluster'",
            )),
            (Some(s), _) if s != "Namespace" && s != "Cluster" => causes.push(cause(
                "spec.parameters.scope",
                "Unsupported value",
                format!("{}: supported values: \"Cluster\", \"Namespace\"", q(s)),
            )),
            _ => {}
        }
    }
}

/// `ValidateDomainPrefixedPath`'s first failing check, if any.
fn domain_prefixed_path_problem(s: &str) -> Option<String> {
    let Some((domain, path)) = s.split_once('/') else {
        return Some("must be a domain-prefixed path (such as \"acme.io/foo\")".into());
    };
    if let Some(msg) = rke2_apimachinery::validation::validate_dns1123_subdomain(domain)
        .into_iter()
        .next()
    {
        return Some(msg);
    }
    let ok = path
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&c));
    (!ok).then(|| "must be a valid path".into())
}

/// The `DefaultIngressClass` admission plugin: an Ingress created with
/// neither `spec.ingressClassName` nor the legacy class annotation gets
/// the IngressClass annotated as the default (the newest one when
/// several are).
pub async fn admit_default_class(state: &ApiState, obj: &mut Value) -> ApiResult<()> {
    if obj["spec"]["ingressClassName"].is_string()
        || obj["metadata"]["annotations"][LEGACY_CLASS_ANNOTATION].is_string()
    {
        return Ok(());
    }
    let classes = registry::find("networking.k8s.io", "v1", "ingressclasses")
        .expect("ingressclasses registered");
    let prefix = classes.prefix(None);
    let all: Vec<Value> = match state
        .caches
        .running(classes)
        .and_then(|c| c.snapshot(&prefix))
    {
        Some(snap) => snap.objects.iter().map(|o| Value::clone(o)).collect(),
        None => state
            .store
            .list(&prefix, None, 0, 0)
            .await?
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect(),
    };
    if let Some(name) = default_class(&all) {
        obj["spec"]["ingressClassName"] = json!(name);
    }
    Ok(())
}

/// The default IngressClass among `classes`: those annotated
/// `is-default-class: "true"`, the newest (then first by name) winning.
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| c["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
        .max_by(|a, b| {
            let ts = |o: &Value| {
                o["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            ts(a).cmp(&ts(b)).then_with(|| {
                b["metadata"]["name"]
                    .as_str()
                    .cmp(&a["metadata"]["name"].as_str())
            })
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_string))
}

/// The extra columns of an Ingress Table (between NAME and AGE).
pub fn ingress_columns() -> Vec<Value> {
    let col = |name: &str, description: &str| json!({"name": name, "type": "string", "format": "", "description": description, "priority": 0});
    vec![
        col(
            "Class",
            "The name of the IngressClass resource that should be used",
        ),
        col(
            "Hosts",
            "Hosts that incoming requests are matched against before the ingress rule",
        ),
        col(
            "Address",
            "Address is a list containing ingress points for the load-balancer",
        ),
        col("Ports", "Ports of TLS configurations that open"),
    ]
}

/// The CLASS HOSTS ADDRESS PORTS cells of an Ingress, as upstream's
/// `printIngress` (ADDRESS cut to 16 characters).
pub fn ingress_cells(obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let class = spec["ingressClassName"].as_str().unwrap_or("<none>");
    let rules = arr(&spec["rules"]);
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if hosts.len() == 3 {
            more = true;
        }
        if !more && let Some(h) = r["host"].as_str().filter(|h| !h.is_empty()) {
            hosts.push(h);
        }
    }
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if more {
        format!("{} + {} more...", hosts.join(","), rules.len() - 3)
    } else {
        hosts.join(",")
    };
    let mut addrs: Vec<&str> = Vec::new();
    for i in arr(&obj["status"]["loadBalancer"]["ingress"]) {
        if let Some(ip) = i["ip"].as_str().filter(|s| !s.is_empty()) {
            addrs.push(ip);
        } else if let Some(h) = i["hostname"].as_str().filter(|s| !s.is_empty()) {
            addrs.push(h);
        }
    }
    let mut address = addrs.join(",");
    if address.len() > 16 {
        address = format!("{}...", &address[..13]);
    }
    let ports = if arr(&spec["tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![json!(class), json!(hosts), json!(address), json!(ports)]
}

/// The extra columns of an IngressClass Table.
pub fn ingress_class_columns() -> Vec<Value> {
    let col = |name: &str, description: &str| json!({"name": name, "type": "string", "format": "", "description": description, "priority": 0});
    vec![
        col(
            "Controller",
            "Controller that is responsible for handling this class",
        ),
        col(
            "Parameters",
            "A reference to a resource with additional parameters",
        ),
    ]
}

/// The CONTROLLER PARAMETERS cells of an IngressClass.
pub fn ingress_class_cells(obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let p = &spec["parameters"];
    let params = if p.is_object() {
        let mut s = p["kind"].as_str().unwrap_or("").to_string();
        if let Some(g) = p["apiGroup"].as_str() {
            s = format!("{s}.{g}");
        }
        format!("{s}/{}", p["name"].as_str().unwrap_or(""))
    } else {
        "<none>".to_string()
    };
    vec![
        json!(spec["controller"].as_str().unwrap_or("")),
        json!(params),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ing(spec: Value) -> Vec<Cause> {
        let mut c = Vec::new();
        validate_ingress(&json!({"metadata": {"name": "x"}, "spec": spec}), &mut c);
        c
    }

    fn svc(name: &str, port: u16) -> Value {
        json!({"service": {"name": name, "port": {"number": port}}})
    }

    #[test]
    fn a_well_formed_ingress_passes() {
        let c = ing(json!({"rules": [{"host": "*.a.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": svc("web", 80)},
            {"path": "/x", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
            {"pathType": "ImplementationSpecific", "backend": svc("web", 80)},
        ]}}], "tls": [{"hosts": ["*.a.test"], "secretName": "tls"}]}));
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn upstream_checks_name_the_field() {
        let c = ing(json!({}));
        assert_eq!(c[0].0, "spec");
        assert!(
            c[0].2
                .contains("either `defaultBackend` or `rules` must be specified")
        );

        let c = ing(json!({"rules": [{"host": "a.*.test", "http": {"paths": [
            {"path": "/", "backend": svc("web", 80)},
            {"path": "x", "pathType": "Prefix", "backend": svc("web", 80)},
            {"path": "/", "pathType": "Regex", "backend": svc("web", 80)},
            {"path": "/", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "pathType": "Exact", "backend": {}},
        ]}}]}));
        let fields: Vec<(&str, &str)> = c.iter().map(|c| (c.0.as_str(), c.1.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("spec.rules[0].host", "Invalid value"),
                ("spec.rules[0].http.paths[0].pathType", "Required value"),
                ("spec.rules[0].http.paths[1].path", "Invalid value"),
                ("spec.rules[0].http.paths[2].pathType", "Unsupported value"),
                (
                    "spec.rules[0].http.paths[3].backend.service.port",
                    "Required value"
                ),
                ("spec.rules[0].http.paths[4].backend", "Invalid value"),
            ]
        );
        assert_eq!(c[1].2, "pathType must be specified");
        assert_eq!(c[2].2, "\"x\": must be an absolute path");
        assert_eq!(
            c[3].2,
            "\"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""
        );
        assert_eq!(
            host_problems("10.0.0.1"),
            ["must be a DNS name, not an IP address"]
        );
        let c = ing(
            json!({"defaultBackend": svc("web", 80), "tls": [{"hosts": ["A_B"], "secretName": "Bad_Name"}]}),
        );
        assert_eq!(c[0].0, "spec.tls[0].hosts[0]");
        assert_eq!(c[1].0, "spec.tls[0].secretName");
    }

    #[test]
    fn classes_validate_and_the_newest_default_wins() {
        let mut c = Vec::new();
        validate_ingress_class(&json!({"spec": {"controller": "nginx"}}), &mut c);
        assert_eq!(c[0].0, "spec.controller");
        c.clear();
        validate_ingress_class(
            &json!({"spec": {"controller": "k8s.io/ingress-nginx"}}),
            &mut c,
        );
        assert!(c.is_empty());
        let class = |n: &str, ts: &str, default: bool| {
            json!({"metadata": {"name": n, "creationTimestamp": ts,
                "annotations": if default { json!({DEFAULT_CLASS_ANNOTATION: "true"}) } else { json!({}) }}})
        };
        assert_eq!(
            default_class(&[class("a", "2024-01-01T00:00:00Z", false)]),
            None
        );
        assert_eq!(
            default_class(&[
                class("a", "2024-01-01T00:00:00Z", true),
                class("b", "2024-02-01T00:00:00Z", true),
                class("c", "2024-03-01T00:00:00Z", false),
            ]),
            Some("b".into())
        );
    }

    #[test]
    fn table_cells_as_kubectl_prints_them() {
        let obj = json!({"spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.test"]}],
            "rules": [{"host": "a.test"}, {"host": "b.test"}, {}, {"host": "c.test"}, {"host": "d.test"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}}});
        assert_eq!(
            ingress_cells(&obj),
            [
                json!("nginx"),
                json!("a.test,b.test,c.test + 2 more..."),
                json!("10.0.0.1,10.0..."),
                json!("80, 443")
            ]
        );
        assert_eq!(
            ingress_cells(&json!({"spec": {}})),
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }
}
