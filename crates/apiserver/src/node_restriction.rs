//! Upstream's NodeRestriction admission: what a node may write, judged on
//! the objects themselves (the path-level rules are in [`crate::authz`]).
//!
//! A node may create and update only its own Node and Lease; it may not
//! register with, add, change or remove labels outside the kubelet's set
//! ([`rke2_apimachinery::node_labels`]) — `node-role.kubernetes.io/*`
//! included — nor change its taints or set a `configSource`; it may
//! update the status of, and delete, only pods bound to it. Refusals are
//! 403 Forbidden in upstream's words.

use std::collections::BTreeSet;

use rke2_apimachinery::node_labels::node_may_set;
use serde_json::Value;

use crate::objects::name_of;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

fn forbidden(rt: &ResourceType, name: &str, why: String) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("{} \"{name}\" is forbidden: {why}", rt.qualified()),
    )
}

fn is(rt: &ResourceType, group: &str, plural: &str) -> bool {
    rt.group == group && rt.plural == plural
}

/// The label keys added, removed or changed between two label maps.
fn modified_labels(new: &Value, old: &Value) -> BTreeSet<String> {
    let empty = serde_json::Map::new();
    let new = new.as_object().unwrap_or(&empty);
    let old = old.as_object().unwrap_or(&empty);
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .chain(old.iter().filter(|(k, v)| new.get(*k) != Some(v)))
        .map(|(k, _)| k.clone())
        .collect()
}

fn forbidden_labels(new: &Value, old: &Value) -> Vec<String> {
    modified_labels(new, old)
        .into_iter()
        .filter(|k| !node_may_set(k))
        .collect()
}

/// Unset and empty are the same list of taints.
fn taints(node: &Value) -> &[Value] {
    node["spec"]["taints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn config_source(node: &Value) -> Option<&Value> {
    node["spec"].get("configSource").filter(|v| !v.is_null())
}

/// Checks a node's write against the object it acts on: for a create the
/// new object, for update, patch and delete the stored one. `node` is the
/// node the request acts for (`None`: not a node, nothing to check).
pub fn check_scope(
    node: Option<&str>,
    rt: &ResourceType,
    obj: &Value,
    verb: &str,
) -> ApiResult<()> {
    let Some(node) = node else {
        return Ok(());
    };
    let name = name_of(obj);
    if is(rt, "", "nodes") {
        if name != node {
            return Err(forbidden(
                rt,
                name,
                format!("node \"{node}\" is not allowed to modify node \"{name}\""),
            ));
        }
        if verb == "create" {
            if config_source(obj).is_some() {
                return Err(forbidden(
                    rt,
                    name,
                    format!(
                        "node \"{node}\" is not allowed to create pods with a non-nil configSource"
                    ),
                ));
            }
            let bad = forbidden_labels(&obj["metadata"]["labels"], &Value::Null);
            if !bad.is_empty() {
                return Err(forbidden(
                    rt,
                    name,
                    format!(
                        "node \"{node}\" is not allowed to set the following labels: {}",
                        bad.join(", ")
                    ),
                ));
            }
        }
    } else if is(rt, "coordination.k8s.io", "leases") {
        if name != node {
            return Err(forbidden(
                rt,
                name,
                "can only access node lease with the same name as the requesting node".into(),
            ));
        }
    } else if is(rt, "", "pods") && obj["spec"]["nodeName"].as_str() != Some(node) {
        let what = match verb {
            "delete" => "delete pods",
            "create" => "create pods",
            _ => "update pod status for pods",
        };
        return Err(forbidden(
            rt,
            name,
            format!("node \"{node}\" can only {what} with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

/// Checks a node's update of its own Node (`old` → `new`): no new
/// `configSource`, the same taints, and label changes only within the
/// kubelet's set.
pub fn admit_update(
    node: Option<&str>,
    rt: &ResourceType,
    old: &Value,
    new: &Value,
) -> ApiResult<()> {
    let Some(node) = node else {
        return Ok(());
    };
    if !is(rt, "", "nodes") {
        return Ok(());
    }
    let name = name_of(old);
    if let Some(cs) = config_source(new)
        && Some(cs) != config_source(old)
    {
        return Err(forbidden(
            rt,
            name,
            format!(
                "node \"{node}\" is not allowed to update configSource to a new non-nil configSource"
            ),
        ));
    }
    if taints(new) != taints(old) {
        return Err(forbidden(
            rt,
            name,
            format!("node \"{node}\" is not allowed to modify taints"),
        ));
    }
    let bad = forbidden_labels(&new["metadata"]["labels"], &old["metadata"]["labels"]);
    if !bad.is_empty() {
        return Err(forbidden(
            rt,
            name,
            format!("is not allowed to modify labels: {}", bad.join(", ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes() -> &'static ResourceType {
        crate::registry::find("", "v1", "nodes").unwrap()
    }

    fn node(labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": "a", "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn a_node_registers_only_itself_with_kubelet_labels() {
        let ok = node(
            json!({"kubernetes.io/hostname": "a", "tier": "web", "node.kubernetes.io/x": "1"}),
            json!([]),
        );
        assert!(check_scope(Some("a"), nodes(), &ok, "create").is_ok());
        assert!(check_scope(None, nodes(), &json!({"metadata": {"name": "b"}}), "create").is_ok());
        let e = check_scope(Some("b"), nodes(), &ok, "create").unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"a\" is forbidden: node \"b\" is not allowed to modify node \"a\""
        );
        let role = node(
            json!({"node-role.kubernetes.io/master": "true", "node-restriction.kubernetes.io/x": ""}),
            json!([]),
        );
        let e = check_scope(Some("a"), nodes(), &role, "create").unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "nodes \"a\" is forbidden: node \"a\" is not allowed to set the following labels: node-restriction.kubernetes.io/x, node-role.kubernetes.io/master"
        );
        let mut cs = ok.clone();
        cs["spec"]["configSource"] = json!({"configMap": {"name": "x"}});
        assert!(check_scope(Some("a"), nodes(), &cs, "create").is_err());
    }

    #[test]
    fn a_node_keeps_its_taints_and_restricted_labels() {
        let old = node(
            json!({"node-role.kubernetes.io/etcd": "true", "tier": "web"}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        // Status-like updates and free labels pass.
        let mut new = old.clone();
        new["metadata"]["labels"]["tier"] = json!("db");
        new["metadata"]["labels"]["kubernetes.io/hostname"] = json!("a");
        assert!(admit_update(Some("a"), nodes(), &old, &new).is_ok());
        // A role label may be neither added, changed nor removed.
        for labels in [
            json!({"node-role.kubernetes.io/etcd": "true", "node-role.kubernetes.io/x": ""}),
            json!({"node-role.kubernetes.io/etcd": "false"}),
            json!({"tier": "web"}),
        ] {
            let mut new = old.clone();
            new["metadata"]["labels"] = labels.clone();
            let e = admit_update(Some("a"), nodes(), &old, &new).unwrap_err();
            assert!(
                e.message
                    .starts_with("nodes \"a\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/"),
                "{labels}: {}",
                e.message
            );
        }
        let mut new = old.clone();
        new["spec"]["taints"] = json!([]);
        let e = admit_update(Some("a"), nodes(), &old, &new).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"a\" is forbidden: node \"a\" is not allowed to modify taints"
        );
        // Unset and empty taints are the same.
        let bare = json!({"metadata": {"name": "a"}, "spec": {}});
        let empty = json!({"metadata": {"name": "a"}, "spec": {"taints": []}});
        assert!(admit_update(Some("a"), nodes(), &bare, &empty).is_ok());
        // Admins may do all of it.
        assert!(admit_update(None, nodes(), &old, &new).is_ok());
    }

    #[test]
    fn pods_and_leases_of_other_nodes_are_refused() {
        let pods = crate::registry::find("", "v1", "pods").unwrap();
        let p = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "b"}});
        let e = check_scope(Some("a"), pods, &p, "delete").unwrap_err();
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: node \"a\" can only delete pods with spec.nodeName set to itself"
        );
        assert!(check_scope(Some("b"), pods, &p, "delete").is_ok());
        let e = check_scope(Some("a"), pods, &p, "patch").unwrap_err();
        assert!(
            e.message.contains("can only update pod status"),
            "{}",
            e.message
        );
        let leases = crate::registry::find("coordination.k8s.io", "v1", "leases").unwrap();
        let e = check_scope(
            Some("a"),
            leases,
            &json!({"metadata": {"name": "b"}}),
            "create",
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "leases.coordination.k8s.io \"b\" is forbidden: can only access node lease with the same name as the requesting node"
        );
    }
}
