//! Authorization: `system:masters` may do everything (including
//! `pods/log`, `pods/exec` and `pods/attach`); a node (`system:node:<name>`
//! in group `system:nodes`) only what a kubelet needs, and only as itself —
//! never logs, exec or attach. Everyone else is refused until RBAC exists.
//!
//! Path-level rules live here; rules that need the stored object (a pod
//! must be bound to the node) are checked by the handlers through
//! [`Decision::NodeScoped`].

use crate::Identity;
use crate::request::ResourcePath;

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Anything.
    Allow,
    /// Allowed for this node, subject to object-level checks in handlers.
    NodeScoped(String),
    /// Refused.
    Deny,
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

/// Decides a request by identity, verb and path.
pub fn decide(id: &Identity, verb: &str, path: &ResourcePath) -> Decision {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Decision::Allow;
    }
    let Some(node) = node_name(id) else {
        return Decision::Deny;
    };
    let read = matches!(verb, "get" | "list" | "watch");
    let own = path.name.as_deref() == Some(node);
    let sub = path.subresource.as_deref();
    // Nodes never stream logs or run commands in pods through the API:
    // that is the apiserver's privilege towards nodes, not the reverse.
    if crate::proxy::PodStream::of(path).is_some() {
        return Decision::Deny;
    }
    let scoped = Decision::NodeScoped(node.to_string());
    let allowed = match (path.rt.group, path.rt.plural) {
        ("", "nodes") => {
            read || (own && matches!(verb, "update" | "patch"))
                || (verb == "create" && sub.is_none())
        }
        ("coordination.k8s.io", "leases") => {
            path.namespace.as_deref() == Some("kube-node-lease")
                && (own || (verb == "create" && path.name.is_none()))
        }
        ("", "pods") => {
            read || (sub == Some("status") && matches!(verb, "update" | "patch"))
                || (sub.is_none() && verb == "delete")
        }
        ("", "events") => matches!(verb, "create" | "update" | "patch") || read,
        // What a kubelet reads to run its pods. Upstream narrows secrets and
        // configmaps to those of pods bound to the node; not yet here.
        // Tokens for its pods' accounts; the handler checks the token is
        // bound to a pod on this node (upstream's NodeRestriction).
        ("", "serviceaccounts") if sub == Some("token") => verb == "create",
        (
            "",
            "services" | "endpoints" | "namespaces" | "configmaps" | "secrets" | "serviceaccounts",
        ) => read,
        _ => false,
    };
    if allowed { scoped } else { Decision::Deny }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Route, parse_path};

    fn path(p: &str) -> ResourcePath {
        match parse_path(p).unwrap() {
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

    #[test]
    fn nodes_act_only_as_themselves() {
        let a = node("a");
        assert_eq!(
            decide(&a, "patch", &path("/api/v1/nodes/a/status")),
            Decision::NodeScoped("a".into())
        );
        assert_eq!(
            decide(&a, "patch", &path("/api/v1/nodes/b/status")),
            Decision::Deny
        );
        assert_eq!(
            decide(
                &a,
                "update",
                &path("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/a")
            ),
            Decision::NodeScoped("a".into())
        );
        assert_eq!(
            decide(
                &a,
                "update",
                &path("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/b")
            ),
            Decision::Deny
        );
        assert_eq!(
            decide(
                &a,
                "update",
                &path("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/a")
            ),
            Decision::Deny
        );
        assert_eq!(
            decide(&a, "list", &path("/api/v1/pods")),
            Decision::NodeScoped("a".into())
        );
        assert_eq!(
            decide(&a, "create", &path("/api/v1/namespaces/default/pods")),
            Decision::Deny
        );
        assert_eq!(
            decide(&a, "delete", &path("/api/v1/nodes/a")),
            Decision::Deny
        );
        assert_eq!(
            decide(&a, "list", &path("/apis/apps/v1/deployments")),
            Decision::Deny
        );
        let masters = Identity {
            user: "x".into(),
            groups: vec!["system:masters".into()],
        };
        assert_eq!(
            decide(&masters, "delete", &path("/api/v1/nodes/a")),
            Decision::Allow
        );
        for (verb, sub) in [
            ("get", "log"),
            ("get", "exec"),
            ("create", "exec"),
            ("get", "attach"),
            ("create", "attach"),
        ] {
            let p = path(&format!("/api/v1/namespaces/default/pods/p/{sub}"));
            assert_eq!(decide(&masters, verb, &p), Decision::Allow, "{verb} {sub}");
            assert_eq!(decide(&a, verb, &p), Decision::Deny, "{verb} {sub}");
        }
        let nobody = Identity {
            user: "system:node:a".into(),
            groups: vec![],
        };
        assert_eq!(
            decide(&nobody, "get", &path("/api/v1/nodes/a")),
            Decision::Deny
        );
    }
}
