//! Pruning: fields the structural schema does not specify are dropped,
//! except under `x-kubernetes-preserve-unknown-fields` (or
//! `additionalProperties: true`), and a resource's `apiVersion`, `kind` and
//! `metadata` (at the root and in embedded resources).

use serde_json::Value;

use crate::{Node, child, index};

pub(crate) fn prune(root: &Node, obj: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, obj, "", true, &mut out);
    out
}

/// Prunes a value of `node` (a default), giving the removed paths.
pub(crate) fn prune_at(node: &Node, v: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(node, v, "", node.embedded, &mut out);
    out
}

fn walk(node: &Node, v: &mut Value, path: &str, resource: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            let keep_unknown = node.preserve_unknown || node.additional_allowed;
            let mut removed = Vec::new();
            for (k, val) in obj.iter_mut() {
                if resource && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                if let Some(p) = node.properties.get(k.as_str()) {
                    walk(p, val, &child(path, k), p.embedded, out);
                } else if let Some(a) = node.additional.as_deref() {
                    walk(a, val, &child(path, k), a.embedded, out);
                } else if !keep_unknown {
                    removed.push(k.clone());
                }
            }
            for k in removed {
                obj.remove(&k);
                out.push(child(path, &k));
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.items.as_deref() {
                for (i, val) in items.iter_mut().enumerate() {
                    walk(item, val, &index(path, i), item.embedded, out);
                }
            }
        }
        _ => {}
    }
}
