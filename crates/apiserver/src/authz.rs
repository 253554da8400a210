//! Authorization: `system:masters` may do everything (including
//! `pods/log`, `pods/exec` and `pods/attach`); a node (`system:node:<name>`
//! in group `system:nodes`) only what upstream's Node authorizer and the
//! kubelet's RBAC rules give it, and only as itself — never logs, exec or
//! attach. Everyone else gets what RBAC ([`crate::rbac`]) grants, after
//! the Node authorizer, as kube-apiserver chains them. Impersonation
//! headers are checked and applied by [`impersonate`].
//!
//! Path-level rules live here ([`decide`]); whether a Secret, ConfigMap,
//! ServiceAccount or Pod is related to the node (referenced by a pod bound
//! to it) is [`crate::node_authorizer`]'s; rules that need the stored or
//! the new object (a pod must be bound to the node, a node may not change
//! its taints) are checked by the handlers through
//! [`Decision::NodeScoped`] and [`crate::node_restriction`].

use rke2_apimachinery::selectors::parse_field_selector;

use crate::request::{Query, ResourcePath};
use crate::status::ApiError;
use crate::{ApiState, Identity};

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Anything.
    Allow,
    /// Allowed for this node, subject to object-level checks in handlers.
    NodeScoped(String),
    /// Allowed for `node` only if the object `name` (of the path's type
    /// and namespace) is related to it: referenced by one of its pods, or
    /// (for pods) bound to it. For lists and watches the name comes from a
    /// `metadata.name=` field selector, as in upstream's request info.
    NodeRelated {
        /// The node asking.
        node: String,
        /// The object it asks for.
        name: String,
    },
    /// Refused; the reason (possibly empty) is appended to the message.
    Deny(String),
    /// Refused with this whole message (NodeRestriction's own wording).
    Refuse(String),
}

fn deny(reason: impl Into<String>) -> Decision {
    Decision::Deny(reason.into())
}

/// The node name of a node identity.
pub fn node_name(id: &Identity) -> Option<&str> {
    if !id.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    id.user
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

/// Whether a node may create this review (`tokenreviews`,
/// `subjectaccessreviews`, `localsubjectaccessreviews`): the kubelet's
/// static rules in upstream's Node authorizer, so a node can delegate the
/// authentication and authorization of its own API (10250).
pub fn node_may_review(id: &Identity, resource: &str) -> bool {
    node_name(id).is_some()
        && matches!(
            resource,
            "tokenreviews" | "subjectaccessreviews" | "localsubjectaccessreviews"
        )
}

/// The name a list or watch is narrowed to by a `metadata.name=` (or `==`)
/// field selector, as upstream's request info takes it for authorization.
fn selected_name(query: &Query) -> Option<String> {
    let sel = parse_field_selector(query.get("fieldSelector")?).ok()?;
    sel.exact_value("metadata.name")
        .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
        .map(str::to_string)
}

/// Decides a request by identity, verb, path and query (field selectors).
pub fn decide(id: &Identity, verb: &str, path: &ResourcePath, query: &Query) -> Decision {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Decision::Allow;
    }
    let Some(node) = node_name(id) else {
        return deny("");
    };
    // Nodes never stream logs or run commands in pods through the API:
    // that is the apiserver's privilege towards nodes, not the reverse.
    if crate::proxy::PodStream::of(path).is_some() {
        return deny("");
    }
    decide_node(node, verb, path, query)
}

fn decide_node(node: &str, verb: &str, path: &ResourcePath, query: &Query) -> Decision {
    let read = matches!(verb, "get" | "list" | "watch");
    let sub = path.subresource.as_deref();
    let scoped = Decision::NodeScoped(node.to_string());
    // The object a request names: the path's, or for a list or watch the
    // one its field selector pins.
    let name = match verb {
        "list" | "watch" => selected_name(query),
        _ => path.name.clone(),
    };
    let related = |name: Option<String>| match name {
        Some(name) => Decision::NodeRelated {
            node: node.to_string(),
            name,
        },
        None => deny("No Object name found"),
    };
    match (path.rt.group.as_str(), path.rt.plural.as_str()) {
        // Upstream's authorizeReadNamespacedObject.
        ("", "secrets" | "configmaps") => {
            if !read {
                deny("can only read resources of this type")
            } else if sub.is_some() {
                deny("cannot read subresource")
            } else if path.namespace.is_none() {
                deny("can only read namespaced object of this type")
            } else {
                related(name)
            }
        }
        // Upstream's authorizeCreateToken; the handler then checks the
        // token is bound to a pod on this node (NodeRestriction).
        ("", "serviceaccounts") => {
            if verb != "create" || path.name.is_none() {
                deny("can only create tokens for individual service accounts")
            } else if sub != Some("token") {
                deny("can only create token subresource of serviceaccount")
            } else {
                related(path.name.clone())
            }
        }
        ("", "pods") => match (sub, verb) {
            (None, "get") => related(path.name.clone()),
            (None, "list" | "watch") => {
                let own = parse_field_selector(query.get("fieldSelector").unwrap_or(""))
                    .ok()
                    .is_some_and(|s| s.exact_value("spec.nodeName") == Some(node));
                if own {
                    scoped
                } else if name.is_some() {
                    related(name)
                } else {
                    deny("can only list/watch pods with spec.nodeName field selector")
                }
            }
            // Its own pods, once they ended (NodeRestriction checks the
            // stored pod's spec.nodeName).
            (None, "delete") => scoped,
            (Some("status"), "update" | "patch") => scoped,
            // Mirror pods (upstream's only pods a node may create) are
            // not supported.
            _ => deny(""),
        },
        // Every node may read Nodes: the pod network's route sync runs
        // under the node's identity here (flannel's job, with its own
        // account, in RKE2). Writes: only its own Node (NodeRestriction).
        ("", "nodes") => match (sub, verb) {
            (None, "get" | "list" | "watch") => scoped,
            (None, "create") => scoped,
            (None | Some("status"), "update" | "patch") => {
                let target = path.name.as_deref().unwrap_or("");
                if target == node {
                    scoped
                } else {
                    Decision::Refuse(format!(
                        "nodes \"{target}\" is forbidden: node \"{node}\" is not allowed to modify node \"{target}\""
                    ))
                }
            }
            _ => deny(""),
        },
        // Upstream's authorizeLease.
        ("coordination.k8s.io", "leases") => {
            if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                deny("can only get, create, update, patch, or delete a node lease")
            } else if path.namespace.as_deref() != Some("kube-node-lease") {
                deny("can only access leases in the \"kube-node-lease\" system namespace")
            } else if verb != "create" && path.name.as_deref() != Some(node) {
                deny("can only access node lease with the same name as the requesting node")
            } else {
                scoped
            }
        }
        // Upstream's authorizeGet of claims and volumes: those the
        // node's pods use (pod -> pvc -> pv).
        ("", "persistentvolumeclaims" | "persistentvolumes") => {
            if verb != "get" || sub.is_some() {
                deny("can only get individual resources of this type")
            } else {
                related(path.name.clone())
            }
        }
        // The kubelet's static rules (upstream's NodeRules).
        ("", "events") if matches!(verb, "create" | "update" | "patch") => scoped,
        ("", "services") if read => scoped,
        ("", "endpoints") if verb == "get" => scoped,
        _ => deny(""),
    }
}

/// Authorizes a resource request: `Ok(None)` for anyone allowed
/// everything, `Ok(Some(node))` for a node (handlers then check the
/// objects), else the 403 in upstream's words.
pub async fn authorize(
    state: &ApiState,
    id: &Identity,
    verb: &str,
    path: &ResourcePath,
    query: &Query,
) -> Result<Option<String>, ApiError> {
    let forbidden = |path: &ResourcePath, reason: &str| {
        let mut e = ApiError::forbidden_path(&id.user, verb, path);
        if !reason.is_empty() {
            e.message = format!("{}: {reason}", e.message);
        }
        e
    };
    // Upstream's chain: the Node authorizer, then RBAC; `system:masters`
    // passes before either.
    let rbac = |path: &ResourcePath| {
        let name = match (&path.name, verb) {
            (Some(n), _) => n.clone(),
            (None, "list" | "watch") => selected_name(query).unwrap_or_default(),
            (None, _) => String::new(),
        };
        let path = path.clone();
        async move {
            let req = crate::rbac::Request {
                verb,
                target: crate::rbac::Target::Resource {
                    group: &path.rt.group,
                    resource: &path.rt.plural,
                    subresource: path.subresource.as_deref().unwrap_or(""),
                    namespace: path
                        .namespace
                        .as_deref()
                        .filter(|_| path.rt.namespaced)
                        .unwrap_or(""),
                    name: &name,
                },
            };
            crate::rbac::allows(state, id, &req).await
        }
    };
    match decide(id, verb, path, query) {
        Decision::Allow => Ok(None),
        Decision::NodeScoped(node) => Ok(Some(node)),
        Decision::NodeRelated { node, name } => {
            let ns = path.namespace.as_deref().unwrap_or("");
            // Related to the node, or allowed by RBAC (still held to
            // NodeRestriction as a node).
            let related = if path.rt.plural == "persistentvolumes" {
                crate::node_authorizer::related_volume(state, &node, &name).await
            } else {
                crate::node_authorizer::related(state, &node, &path.rt.plural, ns, &name).await
            };
            if related || rbac(path).await {
                Ok(Some(node))
            } else {
                let mut named = path.clone();
                named.name = Some(name);
                Err(forbidden(
                    &named,
                    &format!("no relationship found between node '{node}' and this object"),
                ))
            }
        }
        Decision::Deny(reason) => {
            if rbac(path).await {
                // A node allowed by RBAC is still held to NodeRestriction.
                Ok(node_name(id).map(str::to_string))
            } else {
                Err(forbidden(path, &reason))
            }
        }
        Decision::Refuse(message) => Err(ApiError::new(403, "Forbidden", message)),
    }
}

/// One thing an impersonating request asks to act as, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// `users`, `groups`, `serviceaccounts`, `uids` or `userextras`.
    pub resource: &'static str,
    /// The extra's key for `userextras`, else empty.
    pub subresource: String,
    /// `""` or `authentication.k8s.io`.
    pub group: &'static str,
    /// The service account's namespace, else empty.
    pub namespace: String,
    /// The user, group, account, uid or extra value.
    pub name: String,
}

/// What the impersonation headers of a request ask for: the identity to
/// act as, and each thing that needs the `impersonate` verb. `None`
/// without such headers; 400 for malformed ones.
pub fn impersonation(
    headers: &http::HeaderMap,
) -> Result<Option<(Identity, Vec<Asked>)>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let users = values("impersonate-user");
    let groups = values("impersonate-group");
    let uids = values("impersonate-uid");
    let mut extras: Vec<(String, String)> = headers
        .keys()
        .filter_map(|k| {
            k.as_str()
                .strip_prefix("impersonate-extra-")
                .map(|key| (k.as_str().to_string(), percent_decode(key)))
        })
        .collect();
    extras.sort();
    if users.is_empty() && groups.is_empty() && uids.is_empty() && extras.is_empty() {
        return Ok(None);
    }
    let user = match users.as_slice() {
        [u] if !u.is_empty() => u.clone(),
        [] => {
            return Err(ApiError::bad_request(
                "Impersonate-Group, Impersonate-Uid and Impersonate-Extra- headers need an Impersonate-User header",
            ));
        }
        [_] => return Err(ApiError::bad_request("Impersonate-User: must not be empty")),
        _ => {
            return Err(ApiError::bad_request(
                "Impersonate-User: only one user may be impersonated",
            ));
        }
    };
    if uids.len() > 1 {
        return Err(ApiError::bad_request(
            "Impersonate-Uid: only one uid may be impersonated",
        ));
    }
    let asked_one = |resource, subresource: &str, group, namespace: &str, name: &str| Asked {
        resource,
        subresource: subresource.to_string(),
        group,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let mut asked = Vec::new();
    let service_account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains(':'))
        .map(|(ns, n)| (ns.to_string(), n.to_string()));
    match &service_account {
        Some((ns, n)) => asked.push(asked_one("serviceaccounts", "", "", ns, n)),
        None => asked.push(asked_one("users", "", "", "", &user)),
    }
    for g in &groups {
        asked.push(asked_one("groups", "", "", "", g));
    }
    for (header, key) in &extras {
        for v in values(header) {
            asked.push(asked_one(
                "userextras",
                key,
                "authentication.k8s.io",
                "",
                &v,
            ));
        }
    }
    for u in &uids {
        asked.push(asked_one("uids", "", "authentication.k8s.io", "", u));
    }
    let mut as_groups = groups;
    if let Some((ns, _)) = &service_account {
        for g in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !as_groups.contains(&g) {
                as_groups.push(g);
            }
        }
    }
    if user != "system:anonymous" && !as_groups.iter().any(|g| g == "system:authenticated") {
        as_groups.push("system:authenticated".into());
    }
    Ok(Some((
        Identity {
            user,
            groups: as_groups,
        },
        asked,
    )))
}

/// Applies impersonation (`Impersonate-User`, `-Group`, `-Uid`,
/// `-Extra-*`, as `kubectl --as`/`--as-group` send them): each thing
/// asked for needs the `impersonate` verb on it (users, groups,
/// serviceaccounts, uids, userextras/<key>), checked for the caller, with
/// upstream's 403 otherwise; the request then acts as the impersonated
/// user, who gets `system:authenticated` (and a service account its
/// groups) as upstream adds them. Without the headers the caller is
/// returned unchanged.
pub async fn impersonate(
    state: &ApiState,
    id: Identity,
    headers: &http::HeaderMap,
) -> Result<Identity, ApiError> {
    let Some((as_id, asked)) = impersonation(headers)? else {
        return Ok(id);
    };
    for a in &asked {
        let req = crate::rbac::Request {
            verb: "impersonate",
            target: crate::rbac::Target::Resource {
                group: a.group,
                resource: a.resource,
                subresource: &a.subresource,
                namespace: &a.namespace,
                name: &a.name,
            },
        };
        if !crate::rbac::can(state, &id, &req).await {
            return Err(impersonation_forbidden(&id, a));
        }
    }
    tracing::info!(impersonator = %id.user, user = %as_id.user, "request impersonates");
    Ok(as_id)
}

/// Upstream's 403 for an impersonation the caller may not do.
fn impersonation_forbidden(id: &Identity, a: &Asked) -> ApiError {
    let shown = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let qualified = if a.group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{qualified} \"{}\" is forbidden: User \"{}\" cannot impersonate resource \"{shown}\" in API group \"{}\" {scope}",
            a.name, id.user, a.group
        ),
    )
}

/// `%XX` escapes of an `Impersonate-Extra-` key (upstream unescapes them).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (
                (b[i + 1] as char).to_digit(16),
                (b[i + 2] as char).to_digit(16),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Route, parse_path};

    fn path(p: &str) -> ResourcePath {
        match parse_path(p, &crate::registry::Registry::new()).unwrap() {
            Route::Resource(r) => r,
            _ => panic!(),
        }
    }

    fn node(n: &str) -> Identity {
        Identity {
            user: format!("system:node:{n}"),
            groups: vec!["system:nodes".into()],
        }
    }

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    fn d(id: &Identity, verb: &str, p: &str) -> Decision {
        decide(id, verb, &path(p), &Query::default())
    }

    fn scoped(n: &str) -> Decision {
        Decision::NodeScoped(n.into())
    }

    fn related(n: &str, name: &str) -> Decision {
        Decision::NodeRelated {
            node: n.into(),
            name: name.into(),
        }
    }

    fn denied(x: Decision) -> bool {
        matches!(x, Decision::Deny(_) | Decision::Refuse(_))
    }

    #[test]
    fn nodes_act_only_as_themselves() {
        let a = node("a");
        assert_eq!(d(&a, "patch", "/api/v1/nodes/a/status"), scoped("a"));
        assert_eq!(
            d(&a, "patch", "/api/v1/nodes/b/status"),
            Decision::Refuse(
                "nodes \"b\" is forbidden: node \"a\" is not allowed to modify node \"b\"".into()
            )
        );
        assert!(denied(d(&a, "update", "/api/v1/nodes/b")));
        let lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
        assert_eq!(d(&a, "update", &format!("{lease}/a")), scoped("a"));
        assert_eq!(d(&a, "create", lease), scoped("a"));
        assert!(denied(d(&a, "update", &format!("{lease}/b"))));
        assert!(denied(d(&a, "list", lease)));
        assert!(denied(d(
            &a,
            "update",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/a"
        )));
        assert!(denied(d(&a, "create", "/api/v1/namespaces/default/pods")));
        assert!(denied(d(&a, "delete", "/api/v1/nodes/a")));
        assert!(denied(d(&a, "list", "/apis/apps/v1/deployments")));
        assert!(denied(d(&a, "list", "/api/v1/namespaces")));
        assert!(denied(d(&a, "list", "/api/v1/events")));
        assert_eq!(
            d(&a, "create", "/api/v1/namespaces/default/events"),
            scoped("a")
        );
        assert_eq!(d(&a, "watch", "/api/v1/services"), scoped("a"));
        let masters = Identity {
            user: "x".into(),
            groups: vec!["system:masters".into()],
        };
        assert_eq!(d(&masters, "delete", "/api/v1/nodes/a"), Decision::Allow);
        for (verb, sub) in [
            ("get", "log"),
            ("get", "exec"),
            ("create", "exec"),
            ("get", "attach"),
            ("create", "attach"),
        ] {
            let p = format!("/api/v1/namespaces/default/pods/p/{sub}");
            assert_eq!(d(&masters, verb, &p), Decision::Allow, "{verb} {sub}");
            assert!(denied(d(&a, verb, &p)), "{verb} {sub}");
        }
        let nobody = Identity {
            user: "system:node:a".into(),
            groups: vec![],
        };
        assert!(denied(d(&nobody, "get", "/api/v1/nodes/a")));
    }

    #[test]
    fn nodes_read_single_secrets_and_configmaps_only() {
        let a = node("a");
        let secrets = "/api/v1/namespaces/default/secrets";
        assert_eq!(d(&a, "get", &format!("{secrets}/s")), related("a", "s"));
        assert_eq!(
            d(&a, "get", "/api/v1/namespaces/default/configmaps/c"),
            related("a", "c")
        );
        assert_eq!(
            d(&a, "list", secrets),
            Decision::Deny("No Object name found".into())
        );
        assert_eq!(
            d(&a, "list", "/api/v1/secrets"),
            Decision::Deny("can only read namespaced object of this type".into())
        );
        assert_eq!(
            decide(
                &a,
                "watch",
                &path(secrets),
                &q("watch=true&fieldSelector=metadata.name%3Ds")
            ),
            related("a", "s")
        );
        assert_eq!(
            decide(
                &a,
                "list",
                &path(secrets),
                &q("fieldSelector=metadata.name%3D%3Ds,type%3Dx")
            ),
            related("a", "s")
        );
        assert_eq!(
            decide(
                &a,
                "list",
                &path(secrets),
                &q("fieldSelector=metadata.name!%3Ds")
            ),
            Decision::Deny("No Object name found".into())
        );
        assert_eq!(
            d(&a, "delete", &format!("{secrets}/s")),
            Decision::Deny("can only read resources of this type".into())
        );
        assert!(denied(d(
            &a,
            "get",
            "/api/v1/namespaces/default/serviceaccounts/x"
        )));
        assert_eq!(
            d(
                &a,
                "create",
                "/api/v1/namespaces/default/serviceaccounts/x/token"
            ),
            related("a", "x")
        );
    }

    #[test]
    fn nodes_list_only_their_own_pods() {
        let a = node("a");
        let pods = "/api/v1/pods";
        assert_eq!(
            decide(
                &a,
                "watch",
                &path(pods),
                &q("fieldSelector=spec.nodeName%3Da")
            ),
            scoped("a")
        );
        assert_eq!(
            d(&a, "list", pods),
            Decision::Deny("can only list/watch pods with spec.nodeName field selector".into())
        );
        assert!(denied(decide(
            &a,
            "list",
            &path(pods),
            &q("fieldSelector=spec.nodeName%3Db")
        )));
        assert_eq!(
            d(&a, "get", "/api/v1/namespaces/default/pods/p"),
            related("a", "p")
        );
        assert_eq!(
            d(&a, "patch", "/api/v1/namespaces/default/pods/p/status"),
            scoped("a")
        );
        assert_eq!(
            d(&a, "delete", "/api/v1/namespaces/default/pods/p"),
            scoped("a")
        );
        assert!(denied(d(&a, "patch", "/api/v1/namespaces/default/pods/p")));
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn impersonation_headers_as_upstream() {
        let bob = Identity {
            user: "bob".into(),
            groups: vec!["system:authenticated".into()],
        };
        assert!(
            impersonation(&headers(&[("accept", "x")]))
                .unwrap()
                .is_none()
        );
        let (as_id, asked) = impersonation(&headers(&[
            ("Impersonate-User", "system:serviceaccount:kube-system:x"),
            ("Impersonate-Group", "devs"),
            ("Impersonate-Extra-Scope%2Fx", "v"),
            ("Impersonate-Uid", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(as_id.user, "system:serviceaccount:kube-system:x");
        assert_eq!(
            as_id.groups,
            vec![
                "devs",
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated"
            ]
        );
        let said: Vec<String> = asked
            .iter()
            .map(|a| impersonation_forbidden(&bob, a).message)
            .collect();
        assert_eq!(
            said,
            vec![
                "serviceaccounts \"x\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"kube-system\"",
                "groups \"devs\" is forbidden: User \"bob\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope",
                "userextras.authentication.k8s.io \"v\" is forbidden: User \"bob\" cannot impersonate resource \"userextras/scope/x\" in API group \"authentication.k8s.io\" at the cluster scope",
                "uids.authentication.k8s.io \"1234\" is forbidden: User \"bob\" cannot impersonate resource \"uids\" in API group \"authentication.k8s.io\" at the cluster scope",
            ]
        );
        let (as_id, asked) = impersonation(&headers(&[("Impersonate-User", "alice")]))
            .unwrap()
            .unwrap();
        assert_eq!(as_id.groups, vec!["system:authenticated"]);
        assert_eq!(asked[0].resource, "users");
        for bad in [
            vec![("Impersonate-Group", "devs")],
            vec![("Impersonate-User", "")],
            vec![("Impersonate-User", "a"), ("Impersonate-User", "b")],
            vec![
                ("Impersonate-User", "a"),
                ("Impersonate-Uid", "1"),
                ("Impersonate-Uid", "2"),
            ],
        ] {
            let e = impersonation(&headers(&bad)).unwrap_err();
            assert_eq!(e.code, 400, "{bad:?}");
            assert!(e.message.contains("Impersonate-"), "{}", e.message);
        }
    }
}
