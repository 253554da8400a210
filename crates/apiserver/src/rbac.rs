//! The RBAC authorizer, as kube-apiserver's: a request is allowed when a
//! rule of a role bound to the user (or one of its groups, or its
//! service account) allows it. ClusterRoleBindings apply everywhere,
//! RoleBindings in their namespace. Bindings are found through the watch
//! caches' subject index ([`subject_keys`]), so a request costs the
//! bindings of its user, not all bindings.
//!
//! Also here: the rules a user holds ([`rules_for`], for
//! SelfSubjectRulesReview and escalation checks), rule coverage
//! ([`covers`]) and the escalation prevention of role and binding writes
//! ([`admit_write`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::{self, ResourceType};
use crate::status::ApiError;
use crate::{ApiState, Identity};

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a request asks to do, as the authorizers see it (upstream's
/// `authorizer.Attributes`).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The verb: `get`, `list`, `create`, ... for resources; the lower-case
    /// HTTP method for non-resource paths.
    pub verb: &'a str,
    /// What it acts on.
    pub target: Target<'a>,
}

/// The object of a request.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An API resource.
    Resource {
        /// API group ("" for core).
        group: &'a str,
        /// Plural resource name.
        resource: &'a str,
        /// Subresource ("" for none).
        subresource: &'a str,
        /// Namespace ("" for cluster scope).
        namespace: &'a str,
        /// Object name ("" for collections).
        name: &'a str,
    },
    /// A path outside the resource API (`/healthz`, `/version`, ...).
    NonResource {
        /// The URL path.
        path: &'a str,
    },
}

impl Request<'_> {
    fn namespace(&self) -> Option<&str> {
        match self.target {
            Target::Resource { namespace, .. } if !namespace.is_empty() => Some(namespace),
            _ => None,
        }
    }
}

/// One rule of a role (`PolicyRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Verbs, `*` for all.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups, `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`), `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Non-resource paths, a trailing `*` a prefix match.
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether a JSON list holds `want` or `*`.
fn value_has(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
}

/// Whether a rule (a `PolicyRule` as stored) allows `req` (upstream's
/// `RuleAllows`). Reads the stored JSON in place: no allocation, no
/// decoding per request.
pub fn rule_allows(rule: &Value, req: &Request) -> bool {
    if !value_has(&rule["verbs"], req.verb) {
        return false;
    }
    let strings = |k: &str| {
        rule[k]
            .as_array()
            .map(|l| l.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
    };
    match req.target {
        Target::Resource {
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            value_has(&rule["apiGroups"], group)
                && strings("resources").any(|r| {
                    r == "*"
                        || (subresource.is_empty() && r == resource)
                        || (!subresource.is_empty()
                            && (r.strip_prefix("*/") == Some(subresource)
                                || r.split_once('/') == Some((resource, subresource))))
                })
                && rule["resourceNames"]
                    .as_array()
                    .is_none_or(|names| names.is_empty() || names.iter().any(|n| n == name))
        }
        Target::NonResource { path } => strings("nonResourceURLs").any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        }),
    }
}

fn rbac_type(plural: &str) -> &'static ResourceType {
    registry::find(GROUP, "v1", plural).expect("the RBAC types are registered")
}

/// The index values of a binding: one per subject, `User:<name>` for a
/// user (and for a service account, as the user name its tokens carry,
/// `system:serviceaccount:<ns>:<name>`), `Group:<name>` for a group.
pub fn subject_keys(binding: &Value) -> Vec<String> {
    let own_ns = binding["metadata"]["namespace"].as_str().unwrap_or("");
    let mut keys: Vec<String> = binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s["name"].as_str().filter(|n| !n.is_empty())?;
            match s["kind"].as_str()? {
                "User" => Some(format!("User:{name}")),
                "Group" => Some(format!("Group:{name}")),
                "ServiceAccount" => {
                    let ns = s["namespace"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .unwrap_or(own_ns);
                    (!ns.is_empty()).then(|| format!("User:system:serviceaccount:{ns}:{name}"))
                }
                _ => None,
            }
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The index values a user's bindings are filed under.
fn user_keys(id: &Identity) -> Vec<String> {
    std::iter::once(format!("User:{}", id.user))
        .chain(id.groups.iter().map(|g| format!("Group:{g}")))
        .collect()
}

/// The bindings of `id`: cluster-wide ones, and those of `namespace`.
async fn bindings_of(
    state: &ApiState,
    id: &Identity,
    namespace: Option<&str>,
) -> Result<Vec<Arc<Value>>, ApiError> {
    let mut out = Vec::new();
    let mut kinds = vec![rbac_type("clusterrolebindings")];
    if namespace.is_some() {
        kinds.push(rbac_type("rolebindings"));
    }
    for rt in kinds {
        let cache = state.caches.ready(rt).await.ok_or_else(|| {
            ApiError::unavailable(format!("the {} cache is not ready", rt.plural))
        })?;
        let mut seen = std::collections::HashSet::new();
        for key in user_keys(id) {
            for b in cache.indexed(&key).unwrap_or_default() {
                if rt.namespaced && b["metadata"]["namespace"].as_str() != namespace {
                    continue;
                }
                let id = (
                    b["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    b["metadata"]["name"].as_str().unwrap_or("").to_string(),
                );
                if seen.insert(id) {
                    out.push(b);
                }
            }
        }
    }
    Ok(out)
}

/// The rules of the role a binding refers to (none if it is missing).
async fn role_rules(state: &ApiState, binding: &Value) -> Result<Vec<Rule>, ApiError> {
    let name = binding["roleRef"]["name"].as_str().unwrap_or("");
    let (rt, ns) = match binding["roleRef"]["kind"].as_str() {
        Some("ClusterRole") => (rbac_type("clusterroles"), None),
        Some("Role") => (
            rbac_type("roles"),
            binding["metadata"]["namespace"].as_str(),
        ),
        _ => return Ok(Vec::new()),
    };
    let cache =
        state.caches.ready(rt).await.ok_or_else(|| {
            ApiError::unavailable(format!("the {} cache is not ready", rt.plural))
        })?;
    Ok(cache
        .get(&rt.key(ns, name))
        .map(|(role, _)| rules_of(&role))
        .unwrap_or_default())
}

/// The rules of a role object (unparsable rules are skipped).
pub fn rules_of(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| serde_json::from_value(r.clone()).ok())
        .collect()
}

/// Whether RBAC allows `req` for `id`: the bindings of the user and its
/// groups (cluster-wide, then in the request's namespace) through the
/// subject index, each role's stored rules read in place. Errors (a
/// cache that is not ready) count as a refusal: authorization fails
/// closed.
pub async fn allows(state: &ApiState, id: &Identity, req: &Request<'_>) -> bool {
    let ns = req.namespace();
    let cache = |plural| state.caches.ready(rbac_type(plural));
    let (Some(crbs), Some(clusterroles)) = (
        cache("clusterrolebindings").await,
        cache("clusterroles").await,
    ) else {
        return false;
    };
    let namespaced = match ns {
        Some(_) => match (cache("rolebindings").await, cache("roles").await) {
            (Some(rbs), Some(roles)) => Some((rbs, roles)),
            _ => return false,
        },
        None => None,
    };
    let role_allows = |binding: &Value| {
        let name = binding["roleRef"]["name"].as_str().unwrap_or("");
        let role = match binding["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => clusterroles.get(&rbac_type("clusterroles").key(None, name)),
            Some("Role") => namespaced.as_ref().and_then(|(_, roles)| {
                roles.get(&rbac_type("roles").key(binding["metadata"]["namespace"].as_str(), name))
            }),
            _ => None,
        };
        role.is_some_and(|(role, _)| {
            role["rules"]
                .as_array()
                .is_some_and(|rules| rules.iter().any(|r| rule_allows(r, req)))
        })
    };
    for key in user_keys(id) {
        if crbs
            .indexed(&key)
            .unwrap_or_default()
            .iter()
            .any(|b| role_allows(b))
        {
            return true;
        }
        if let Some((rbs, _)) = &namespaced
            && rbs
                .indexed(&key)
                .unwrap_or_default()
                .iter()
                .filter(|b| b["metadata"]["namespace"].as_str() == ns)
                .any(|b| role_allows(b))
        {
            return true;
        }
    }
    false
}

/// Every rule `id` holds in `namespace` (cluster-wide ones included), as
/// upstream's `RulesFor`.
pub async fn rules_for(
    state: &ApiState,
    id: &Identity,
    namespace: Option<&str>,
) -> Result<Vec<Rule>, ApiError> {
    let mut rules = Vec::new();
    for b in bindings_of(state, id, namespace).await? {
        rules.extend(role_rules(state, &b).await?);
    }
    Ok(rules)
}

/// Whether `id` is a cluster admin by group (bypasses RBAC as upstream's
/// `system:masters` privileged group).
pub fn is_master(id: &Identity) -> bool {
    id.groups.iter().any(|g| g == "system:masters")
}

/// Whether `id` may do `req`: masters always, others by RBAC.
pub async fn can(state: &ApiState, id: &Identity, req: &Request<'_>) -> bool {
    is_master(id) || allows(state, id, req).await
}

// ------------------------------------------------------------ coverage

/// One permission: a single verb on a single resource (and name) or path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Atom {
    verb: String,
    group: String,
    resource: String,
    name: String,
    url: String,
}

/// Breaks a rule into single permissions (upstream's `BreakdownRule`).
fn atoms(rule: &Rule) -> Vec<Atom> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for group in &rule.api_groups {
            for resource in &rule.resources {
                if rule.resource_names.is_empty() {
                    out.push(Atom {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        name: String::new(),
                        url: String::new(),
                    });
                }
                for name in &rule.resource_names {
                    out.push(Atom {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        name: name.clone(),
                        url: String::new(),
                    });
                }
            }
        }
        for url in &rule.non_resource_urls {
            out.push(Atom {
                verb: verb.clone(),
                group: String::new(),
                resource: String::new(),
                name: String::new(),
                url: url.clone(),
            });
        }
    }
    out
}

/// Whether an owner rule covers one permission (upstream's `ruleCovers`
/// on a broken-down rule: wildcards only count on the owner's side).
fn rule_covers(owner: &Rule, a: &Atom) -> bool {
    if !has(&owner.verbs, &a.verb) {
        return false;
    }
    if !a.url.is_empty() {
        return owner.non_resource_urls.iter().any(|u| {
            u == "*" || *u == a.url || u.strip_suffix('*').is_some_and(|p| a.url.starts_with(p))
        });
    }
    let resource_ok = owner.resources.iter().any(|r| {
        r == "*"
            || *r == a.resource
            || (r
                .strip_prefix("*/")
                .is_some_and(|sub| a.resource.split_once('/').map(|(_, s)| s) == Some(sub)))
    });
    has(&owner.api_groups, &a.group)
        && resource_ok
        && (owner.resource_names.is_empty()
            || (!a.name.is_empty() && owner.resource_names.contains(&a.name)))
}

/// Whether `owner` covers every rule of `wanted`; the permissions it
/// lacks, compacted into rules as upstream prints them.
pub fn covers(owner: &[Rule], wanted: &[Rule]) -> (bool, Vec<Rule>) {
    let mut missing: Vec<Atom> = wanted
        .iter()
        .flat_map(atoms)
        .filter(|a| !owner.iter().any(|o| rule_covers(o, a)))
        .collect();
    missing.sort();
    missing.dedup();
    // Compact: one rule per (group, resource, name, url), verbs merged.
    let mut compact: Vec<Rule> = Vec::new();
    for a in missing {
        let rule = Rule {
            verbs: vec![a.verb.clone()],
            api_groups: if a.url.is_empty() {
                vec![a.group.clone()]
            } else {
                vec![]
            },
            resources: if a.url.is_empty() {
                vec![a.resource.clone()]
            } else {
                vec![]
            },
            resource_names: if a.name.is_empty() {
                vec![]
            } else {
                vec![a.name.clone()]
            },
            non_resource_urls: if a.url.is_empty() {
                vec![]
            } else {
                vec![a.url.clone()]
            },
        };
        match compact.iter_mut().find(|r| {
            r.api_groups == rule.api_groups
                && r.resources == rule.resources
                && r.resource_names == rule.resource_names
                && r.non_resource_urls == rule.non_resource_urls
        }) {
            Some(r) => r.verbs.push(a.verb),
            None => compact.push(rule),
        }
    }
    (compact.is_empty(), compact)
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| crate::schema::go_quote(s)).collect();
    format!("[{}]", parts.join(" "))
}

/// A rule as upstream's `CompactString` prints it.
pub fn compact_string(r: &Rule) -> String {
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:{}", go_quoted_list(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:{}", go_quoted_list(&r.resources)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!(
            "NonResourceURLs:{}",
            go_quoted_list(&r.non_resource_urls)
        ));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!(
            "ResourceNames:{}",
            go_quoted_list(&r.resource_names)
        ));
    }
    if !r.verbs.is_empty() {
        parts.push(format!("Verbs:{}", go_quoted_list(&r.verbs)));
    }
    format!("{{{}}}", parts.join(", "))
}

// ------------------------------------------------------------ escalation

/// Escalation prevention for writes of roles and bindings (upstream's
/// policy-based RBAC storage): a Role or ClusterRole may only grant what
/// its writer holds, unless the writer may `escalate` it; a binding may
/// only bind a role whose rules its writer holds, unless the writer may
/// `bind` it. `obj` is the object as it would be stored.
pub async fn admit_write(
    state: &ApiState,
    id: &Identity,
    rt: &ResourceType,
    obj: &Value,
) -> Result<(), ApiError> {
    if rt.group != GROUP || is_master(id) {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .filter(|_| rt.namespaced);
    let (wanted, permission) = match rt.plural.as_str() {
        "roles" | "clusterroles" => (
            rules_of(obj),
            Request {
                verb: "escalate",
                target: Target::Resource {
                    group: GROUP,
                    resource: &rt.plural,
                    subresource: "",
                    namespace: ns.unwrap_or(""),
                    name,
                },
            },
        ),
        "rolebindings" | "clusterrolebindings" => {
            let role_kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
            let role_name = obj["roleRef"]["name"].as_str().unwrap_or("");
            let resource = if role_kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            let bind = Request {
                verb: "bind",
                target: Target::Resource {
                    group: GROUP,
                    resource,
                    subresource: "",
                    namespace: ns.unwrap_or(""),
                    name: role_name,
                },
            };
            if allows(state, id, &bind).await {
                return Ok(());
            }
            let role_rt = rbac_type(resource);
            let role_ns = if role_kind == "Role" { ns } else { None };
            let cache = state.caches.ready(role_rt).await.ok_or_else(|| {
                ApiError::unavailable(format!("the {} cache is not ready", role_rt.plural))
            })?;
            let Some((role, _)) = cache.get(&role_rt.key(role_ns, role_name)) else {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: {} \"{role_name}\" not found",
                        rt.qualified(),
                        role_rt.qualified()
                    ),
                ));
            };
            (rules_of(&role), bind)
        }
        _ => return Ok(()),
    };
    if permission.verb == "escalate" && allows(state, id, &permission).await {
        return Ok(());
    }
    let held = rules_for(state, id, ns).await?;
    let (ok, missing) = covers(&held, &wanted);
    if ok {
        return Ok(());
    }
    let mut lines: Vec<String> = missing.iter().map(compact_string).collect();
    lines.sort();
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} \"{name}\" is forbidden: user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            rt.qualified(),
            crate::schema::go_quote(&id.user),
            go_quoted_list(&id.groups),
            lines.join("\n")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        serde_json::from_value(v).unwrap()
    }

    /// A stored rule, for [`rule_allows`].
    struct Stored(Value);

    impl Stored {
        fn allows(&self, req: &Request) -> bool {
            rule_allows(&self.0, req)
        }
    }

    fn res<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        name: &'a str,
    ) -> Request<'a> {
        Request {
            verb,
            target: Target::Resource {
                group,
                resource,
                subresource: sub,
                namespace: "default",
                name,
            },
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let pods = Stored(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}),
        );
        assert!(pods.allows(&res("get", "", "pods", "", "p")));
        assert!(pods.allows(&res("get", "", "pods", "log", "p")));
        assert!(!pods.allows(&res("create", "", "pods", "exec", "p")));
        assert!(!pods.allows(&res("get", "apps", "pods", "", "p")));
        assert!(!pods.allows(&res("delete", "", "pods", "", "p")));
        let scale = Stored(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(scale.allows(&res("patch", "apps", "deployments", "scale", "d")));
        assert!(!scale.allows(&res("patch", "apps", "deployments", "", "d")));
        let named = Stored(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s"]}),
        );
        assert!(named.allows(&res("get", "", "secrets", "", "s")));
        assert!(!named.allows(&res("get", "", "secrets", "", "t")));
        assert!(!named.allows(&res("get", "", "secrets", "", "")));
        let urls = Stored(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        let path = |p| Request {
            verb: "get",
            target: Target::NonResource { path: p },
        };
        assert!(urls.allows(&path("/healthz")));
        assert!(urls.allows(&path("/apis/apps/v1")));
        assert!(!urls.allows(&path("/api")));
        assert!(
            !urls.allows(&res("get", "", "pods", "", "")),
            "URL rules never grant resources"
        );
    }

    #[test]
    fn subjects_are_indexed_as_users_and_groups() {
        let b = json!({"metadata": {"name": "b", "namespace": "team"}, "subjects": [
            {"kind": "User", "name": "alice"},
            {"kind": "Group", "name": "devs"},
            {"kind": "ServiceAccount", "name": "bot"},
            {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"},
            {"kind": "Robot", "name": "x"},
        ]});
        assert_eq!(
            subject_keys(&b),
            vec![
                "Group:devs",
                "User:alice",
                "User:system:serviceaccount:team:bot",
                "User:system:serviceaccount:tools:ci",
            ]
        );
        let id = Identity {
            user: "system:serviceaccount:team:bot".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        assert!(user_keys(&id).contains(&"User:system:serviceaccount:team:bot".to_string()));
    }

    #[test]
    fn coverage_and_upstream_wording() {
        let owner = vec![
            rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]})),
            rule(json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*"]})),
        ];
        let fine = vec![rule(
            json!({"verbs": ["get"], "apiGroups": ["", "apps"], "resources": ["pods"]}),
        )];
        assert!(covers(&owner, &fine).0);
        let more = vec![rule(
            json!({"verbs": ["get", "delete", "list"], "apiGroups": [""], "resources": ["pods", "secrets"]}),
        )];
        let (ok, missing) = covers(&owner, &more);
        assert!(!ok);
        let printed: Vec<String> = missing.iter().map(compact_string).collect();
        assert_eq!(
            printed,
            vec![
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["delete" "get" "list"]}"#,
            ]
        );
        // A wildcard is only covered by a wildcard.
        let star = vec![rule(
            json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        assert!(!covers(&owner, &star).0);
        // Names: an owner limited to names covers only those names.
        let named_owner = vec![rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"]}),
        )];
        assert!(covers(&named_owner, &[rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"]}))]).0);
        assert!(
            !covers(
                &named_owner,
                &[rule(
                    json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]})
                )]
            )
            .0
        );
        // Subresources by `*/sub`.
        let sub_owner = vec![rule(
            json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
        )];
        assert!(covers(&sub_owner, &[rule(json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments/scale"]}))]).0);
        // Non-resource URLs by prefix.
        let url_owner = vec![rule(
            json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
        )];
        assert!(
            covers(
                &url_owner,
                &[rule(
                    json!({"verbs": ["get"], "nonResourceURLs": ["/apis/apps"]})
                )]
            )
            .0
        );
        assert!(
            !covers(
                &url_owner,
                &[rule(json!({"verbs": ["get"], "nonResourceURLs": ["/api"]}))]
            )
            .0
        );
    }
}
