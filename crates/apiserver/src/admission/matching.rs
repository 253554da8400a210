//! Which webhooks a request concerns: `rules` (operations, API groups,
//! versions, resources with `*` and `resource/subresource`, scope),
//! `namespaceSelector` (the namespace's labels; cluster-scoped objects
//! other than Namespaces always match) and `objectSelector` (the new or
//! the old object's labels).
//!
//! `matchPolicy` makes no difference here: every resource is served in
//! one version only, so `Equivalent` finds no other version to convert to.

use std::collections::BTreeMap;

use rke2_apimachinery::selectors::label_selector_from_json;
use serde_json::Value;

use super::Hook;

/// One `rules` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// `operations`.
    pub operations: Vec<String>,
    /// `apiGroups`.
    pub api_groups: Vec<String>,
    /// `apiVersions`.
    pub api_versions: Vec<String>,
    /// `resources`.
    pub resources: Vec<String>,
    /// `scope`: `*`, `Cluster` or `Namespaced`.
    pub scope: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    /// Reads a `rules` entry.
    pub fn parse(v: &Value) -> Rule {
        Rule {
            operations: strings(&v["operations"]),
            api_groups: strings(&v["apiGroups"]),
            api_versions: strings(&v["apiVersions"]),
            resources: strings(&v["resources"]),
            scope: v["scope"].as_str().unwrap_or("*").to_string(),
        }
    }

    /// Whether the rule covers the request.
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let scope = match self.scope.as_str() {
            "Cluster" => !a.namespaced,
            "Namespaced" => a.namespaced,
            _ => true,
        };
        scope
            && any(&self.operations, a.operation)
            && any(&self.api_groups, a.group)
            && any(&self.api_versions, a.version)
            && self.resources.iter().any(|r| {
                let (res, sub) = r.split_once('/').unwrap_or((r, ""));
                (res == "*" || res == a.resource) && (sub == "*" || sub == a.subresource)
            })
    }
}

/// What rules are matched against.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// CREATE, UPDATE, DELETE.
    pub operation: &'a str,
    /// API group.
    pub group: &'a str,
    /// API version.
    pub version: &'a str,
    /// Plural resource.
    pub resource: &'a str,
    /// Subresource ("" for the object).
    pub subresource: &'a str,
    /// Whether the resource is namespaced.
    pub namespaced: bool,
}

fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        Value::Null => true,
        s => label_selector_from_json(s)
            // A selector that does not parse was refused on write; should
            // one be stored anyway it matches nothing, as upstream's.
            .map(|sel| sel.matches(labels))
            .unwrap_or(false),
    }
}

fn labels_of(o: &Value) -> BTreeMap<String, String> {
    o["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `hook` is called for the request: a rule covers it, the
/// namespace's labels (`None` for cluster-scoped objects) match the
/// namespace selector, and the new or old object's labels match the
/// object selector.
pub fn matches(
    hook: &Hook,
    a: &Attributes<'_>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    old: Option<&Value>,
    obj: Option<&Value>,
) -> bool {
    hook.rules.iter().any(|r| r.matches(a))
        && selectors_match(
            &hook.namespace_selector,
            &hook.object_selector,
            namespace_labels,
            old,
            obj,
        )
}

/// Whether the namespace selector matches the namespace's labels (`None`
/// for cluster-scoped objects: always) and the object selector the new or
/// the old object's labels.
pub fn selectors_match(
    namespace_selector: &Value,
    object_selector: &Value,
    namespace_labels: Option<&BTreeMap<String, String>>,
    old: Option<&Value>,
    obj: Option<&Value>,
) -> bool {
    if let Some(labels) = namespace_labels
        && !selector_matches(namespace_selector, labels)
    {
        return false;
    }
    let objects: Vec<&Value> = [obj, old].into_iter().flatten().collect();
    objects.is_empty()
        || objects
            .iter()
            .any(|o| selector_matches(object_selector, &labels_of(o)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(op: &'a str, resource: &'a str, sub: &'a str, namespaced: bool) -> Attributes<'a> {
        Attributes {
            operation: op,
            group: "",
            version: "v1",
            resource,
            subresource: sub,
            namespaced,
        }
    }

    fn rule(v: Value) -> Rule {
        Rule::parse(&v)
    }

    #[test]
    fn rules_match_operations_groups_versions_resources_and_scope() {
        let r = rule(
            json!({"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}),
        );
        assert_eq!(r.scope, "*");
        assert!(r.matches(&attrs("CREATE", "configmaps", "", true)));
        assert!(r.matches(&attrs("UPDATE", "configmaps", "", true)));
        assert!(!r.matches(&attrs("DELETE", "configmaps", "", true)));
        assert!(!r.matches(&attrs("CREATE", "secrets", "", true)));
        // A plain resource does not cover its subresources.
        assert!(!r.matches(&attrs("UPDATE", "configmaps", "status", true)));
        let mut apps = attrs("CREATE", "configmaps", "", true);
        apps.group = "apps";
        assert!(!r.matches(&apps));

        let star = rule(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}),
        );
        assert!(star.matches(&apps));
        assert!(!star.matches(&attrs("UPDATE", "pods", "status", true)));
        let all = rule(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]}),
        );
        assert!(all.matches(&attrs("UPDATE", "pods", "status", true)));
        assert!(all.matches(&attrs("UPDATE", "pods", "", true)));
        let pods_sub = rule(
            json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/status"]}),
        );
        assert!(pods_sub.matches(&attrs("UPDATE", "pods", "status", true)));
        assert!(!pods_sub.matches(&attrs("UPDATE", "pods", "", true)));
        assert!(!pods_sub.matches(&attrs("UPDATE", "pods", "binding", true)));
        let any_scale = rule(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/scale"]}),
        );
        assert!(any_scale.matches(&attrs("UPDATE", "deployments", "scale", true)));
        assert!(!any_scale.matches(&attrs("UPDATE", "deployments", "", true)));

        let cluster = rule(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}),
        );
        assert!(cluster.matches(&attrs("CREATE", "namespaces", "", false)));
        assert!(!cluster.matches(&attrs("CREATE", "configmaps", "", true)));
        let namespaced = rule(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Namespaced"}),
        );
        assert!(!namespaced.matches(&attrs("CREATE", "nodes", "", false)));
        assert!(namespaced.matches(&attrs("CREATE", "configmaps", "", true)));
    }

    fn hook(ns_sel: Value, obj_sel: Value) -> Hook {
        Hook::parse(
            "c",
            &json!({
                "name": "h.example.com",
                "clientConfig": {"url": "https://127.0.0.1/"},
                "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}],
                "namespaceSelector": ns_sel,
                "objectSelector": obj_sel,
                "sideEffects": "None",
            }),
        )
    }

    #[test]
    fn selectors_match_namespace_and_object_labels() {
        let a = attrs("CREATE", "configmaps", "", true);
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let h = hook(json!({"matchLabels": {"team": "a"}}), json!({}));
        assert!(matches(&h, &a, Some(&labels(&[("team", "a")])), None, None));
        assert!(!matches(
            &h,
            &a,
            Some(&labels(&[("team", "b")])),
            None,
            None
        ));
        // Cluster-scoped objects have no namespace to select on.
        assert!(matches(
            &h,
            &attrs("CREATE", "nodes", "", false),
            None,
            None,
            None
        ));

        let h = hook(
            json!({}),
            json!({"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]}),
        );
        let with = json!({"metadata": {"labels": {"skip": "yes"}}});
        let without = json!({"metadata": {}});
        assert!(matches(&h, &a, Some(&labels(&[])), None, Some(&without)));
        assert!(!matches(&h, &a, Some(&labels(&[])), None, Some(&with)));
        // Either the old or the new object matching is enough.
        assert!(matches(
            &h,
            &a,
            Some(&labels(&[])),
            Some(&without),
            Some(&with)
        ));
        assert!(!matches(
            &h,
            &a,
            Some(&labels(&[])),
            Some(&with),
            Some(&with)
        ));
    }

    #[test]
    fn hooks_parse_their_configuration() {
        let h = Hook::parse(
            "cfg",
            &json!({
                "name": "m.example.com",
                "clientConfig": {"service": {"namespace": "ns", "name": "svc", "path": "/m"}, "caBundle": "YWJj"},
                "failurePolicy": "Ignore",
                "sideEffects": "Some",
                "timeoutSeconds": 99,
                "reinvocationPolicy": "IfNeeded",
            }),
        );
        assert!(h.ignore_failures && h.reinvoke && !h.dry_run_safe);
        assert_eq!(h.timeout.as_secs(), 30);
        assert_eq!(h.ca_bundle, b"abc");
        assert_eq!(
            h.endpoint,
            super::super::client::Endpoint::Service {
                namespace: "ns".into(),
                name: "svc".into(),
                path: "/m".into(),
                port: 443
            }
        );
        assert_eq!(
            h.endpoint.url_for(h.timeout),
            "https://svc.ns.svc:443/m?timeout=30s"
        );
    }
}
