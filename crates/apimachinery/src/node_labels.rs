//! Which Node labels a kubelet may set on its own Node: the rule shared by
//! the apiserver's NodeRestriction admission (a node's create or update
//! of its Node) and the `node-label` config check (a kubelet refuses such
//! `--node-labels` at start).
//!
//! Labels under `kubernetes.io` and `k8s.io` (and their subdomains) are
//! reserved: a node may set only the well-known set a kubelet reports
//! itself and keys under `kubelet.kubernetes.io` or `node.kubernetes.io`.
//! `node-role.kubernetes.io/*` is not among them (a node that could give
//! itself a role could steer privileged workloads to itself), and
//! `node-restriction.kubernetes.io` is refused by name. Other prefixes are
//! the node's own business.

/// The reserved-namespace label keys a kubelet may set (upstream's
/// `kubeletapis.KubeletLabels()`, sorted).
pub const KUBELET_LABELS: &[&str] = &[
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Label key namespaces (and their subdomains) a kubelet may use.
pub const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Labels of this namespace (or a subdomain) are only ever set by admins:
/// workloads select nodes by them precisely because a node cannot.
pub const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";

/// The prefix of a label key (`a.b/c` → `a.b`), empty without one.
fn namespace(key: &str) -> &str {
    key.split_once('/').map(|(ns, _)| ns).unwrap_or("")
}

fn in_namespace(ns: &str, domain: &str) -> bool {
    ns == domain
        || ns
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

/// Whether a key lies in the reserved `kubernetes.io` / `k8s.io` namespaces.
pub fn is_kubernetes_label(key: &str) -> bool {
    let ns = namespace(key);
    in_namespace(ns, "kubernetes.io") || in_namespace(ns, "k8s.io")
}

/// Whether a kubelet may set `key` on its own Node (upstream's
/// `IsKubeletLabel`).
pub fn is_kubelet_label(key: &str) -> bool {
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|d| in_namespace(namespace(key), d))
}

/// Whether a node may add, change or remove `key` on its own Node
/// (NodeRestriction's rule): not a `node-restriction.kubernetes.io` key,
/// and not a reserved key outside the kubelet set.
pub fn node_may_set(key: &str) -> bool {
    !in_namespace(namespace(key), NODE_RESTRICTION_NAMESPACE)
        && (!is_kubernetes_label(key) || is_kubelet_label(key))
}

/// Why a kubelet refuses `key` in its `--node-labels` at start, in the
/// words of upstream's flag check; `None` when the key is allowed.
pub fn kubelet_flag_refusal(key: &str) -> Option<String> {
    if is_kubernetes_label(key) && !is_kubelet_label(key) {
        Some(format!(
            "unknown 'kubernetes.io' or 'k8s.io' label {key:?}: labels in the 'kubernetes.io' namespace must begin with an allowed prefix ({}) or be in the specifically allowed set ({})",
            KUBELET_LABEL_NAMESPACES.join(", "),
            KUBELET_LABELS.join(", ")
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_set_and_namespaces_are_allowed() {
        for k in KUBELET_LABELS {
            assert!(node_may_set(k), "{k}");
            assert!(kubelet_flag_refusal(k).is_none(), "{k}");
        }
        for k in [
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "kubelet.kubernetes.io/x",
            "a.kubelet.kubernetes.io/x",
            "sub.node.kubernetes.io/y",
            "tier",
            "example.com/role",
            "rke2.io/hostname",
            "notkubernetes.io/x",
        ] {
            assert!(node_may_set(k), "{k}");
            assert!(kubelet_flag_refusal(k).is_none(), "{k}");
        }
    }

    #[test]
    fn roles_and_other_reserved_keys_are_refused() {
        for k in [
            "node-role.kubernetes.io/master",
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/etcd",
            "kubernetes.io/role",
            "k8s.io/x",
            "x.k8s.io/y",
            "app.kubernetes.io/name",
            "node-restriction.kubernetes.io/pci",
            "a.node-restriction.kubernetes.io/pci",
            "topology.kubernetes.io/other",
        ] {
            assert!(!node_may_set(k), "{k}");
            assert!(
                kubelet_flag_refusal(k).is_some_and(|m| m.contains(k)),
                "{k}"
            );
        }
    }
}
