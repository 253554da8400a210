//! Server-side apply: field ownership by manager, conflicts, and removal
//! of fields a manager stopped applying.
//!
//! Field sets are paths to leaves of the applied configuration; maps are
//! walked, while lists and scalars are leaves (a list is owned as a whole,
//! coarser than upstream's keyed list items). Only `Apply` operations
//! record ownership: writes through PUT and non-apply patches do not
//! (yet), so conflicts arise between appliers only.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::status::ApiError;

/// Server-owned metadata that is never part of a field set.
const SERVER_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.creationTimestamp",
    "metadata.deletionTimestamp",
    "metadata.managedFields",
    "metadata.selfLink",
];

/// Leaf paths (`spec.replicas`, `data.a`) of an applied object.
pub fn field_set(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Value::Object(m) = v {
            for (k, val) in m {
                if prefix.is_empty() && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if SERVER_FIELDS.contains(&p.as_str()) {
                    continue;
                }
                match val {
                    Value::Object(inner) if !inner.is_empty() => walk(val, &p, out),
                    _ => {
                        out.insert(p);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

/// The `fieldsV1` form of a field set (`{"f:data":{"f:a":{}}}`).
pub fn to_fields_v1(set: &BTreeSet<String>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for part in path.split('.') {
            cur = cur
                .entry(format!("f:{part}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("field maps are objects");
        }
    }
    Value::Object(root)
}

/// The field set of a `fieldsV1` value.
pub fn from_fields_v1(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !prefix.is_empty() {
            out.insert(prefix.to_string());
            return;
        }
        for (k, val) in m {
            let Some(name) = k.strip_prefix("f:") else {
                continue;
            };
            let p = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            walk(val, &p, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

fn value_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, part| cur.get(part))
}

fn remove_at(v: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().expect("paths are not empty");
    let mut cur = v;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(*last);
    }
}

/// One conflict: a field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its apiVersion.
    pub api_version: String,
    /// The field (`.data.a`).
    pub field: String,
}

/// The 409 for conflicts, worded as kube-apiserver does.
pub fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let message = if conflicts.len() == 1 {
        let c = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            c.manager, c.api_version, c.field
        )
    } else {
        let mut by_manager: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for c in conflicts {
            by_manager
                .entry((c.manager.clone(), c.api_version.clone()))
                .or_default()
                .push(c.field.clone());
        }
        let mut text = format!("Apply failed with {} conflicts:", conflicts.len());
        for ((m, v), fields) in by_manager {
            text.push_str(&format!(" conflicts with \"{m}\" using {v}:"));
            for f in fields {
                text.push_str(&format!("\n- {f}"));
            }
        }
        text
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field}))
        .collect();
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(json!({"causes": causes}));
    e
}

/// Applies ownership to `merged` (the current object with the applied
/// configuration merged in): checks conflicts against other managers
/// (unless `force`, which takes their fields), removes fields this manager
/// applied before but no longer does (when nobody else owns them), and
/// records this manager's new field set.
pub fn apply_ownership(
    current: &Value,
    merged: &mut Value,
    applied: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    now: &str,
) -> Result<(), ApiError> {
    let applied_set = field_set(applied);
    let mut entries: Vec<Value> = current["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mine_before: BTreeSet<String> = entries
        .iter()
        .filter(|e| e["manager"] == manager && e["operation"] == "Apply")
        .flat_map(|e| from_fields_v1(&e["fieldsV1"]))
        .collect();
    let mut conflicts = Vec::new();
    for e in entries
        .iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
    {
        let theirs = from_fields_v1(&e["fieldsV1"]);
        for f in applied_set.intersection(&theirs) {
            if value_at(current, f) != value_at(applied, f) {
                conflicts.push(Conflict {
                    manager: e["manager"].as_str().unwrap_or("").to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                    field: format!(".{f}"),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    // Forced: the other managers lose the fields now applied.
    let mut others_union = BTreeSet::new();
    entries.retain_mut(|e| {
        if e["manager"] == manager && e["operation"] == "Apply" {
            return false;
        }
        let mut theirs = from_fields_v1(&e["fieldsV1"]);
        if force {
            theirs.retain(|f| !applied_set.contains(f));
            e["fieldsV1"] = to_fields_v1(&theirs);
        }
        others_union.extend(theirs.iter().cloned());
        !theirs.is_empty()
    });
    for dropped in mine_before.difference(&applied_set) {
        if !others_union.contains(dropped)
            && !applied_set
                .iter()
                .any(|a| a.starts_with(&format!("{dropped}.")))
        {
            remove_at(merged, dropped);
        }
    }
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(&applied_set),
    }));
    merged["metadata"]["managedFields"] = Value::Array(entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
    }

    #[test]
    fn field_sets_round_trip_and_skip_server_fields() {
        let s = field_set(&cm(json!({"a": "1", "b": "2"})));
        assert_eq!(
            s.iter().cloned().collect::<Vec<_>>(),
            vec!["data.a", "data.b"]
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&s)), s);
        assert_eq!(to_fields_v1(&s), json!({"f:data": {"f:a": {}, "f:b": {}}}));
    }

    #[test]
    fn other_manager_conflicts_unless_forced() {
        let applied1 = cm(json!({"a": "1"}));
        let mut obj = applied1.clone();
        apply_ownership(
            &json!({"metadata": {}}),
            &mut obj,
            &applied1,
            "kubectl",
            "v1",
            false,
            "t",
        )
        .unwrap();
        let applied2 = cm(json!({"a": "3"}));
        let mut merged = cm(json!({"a": "3"}));
        let e =
            apply_ownership(&obj, &mut merged, &applied2, "other", "v1", false, "t").unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.a"
        );
        // Same value: no conflict (shared ownership).
        let mut same = obj.clone();
        apply_ownership(&obj, &mut same, &applied1, "other", "v1", false, "t").unwrap();
        // Forced: ownership moves.
        apply_ownership(&obj, &mut merged, &applied2, "other", "v1", true, "t").unwrap();
        let entries = merged["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["manager"], "other");
    }

    #[test]
    fn fields_no_longer_applied_are_removed() {
        let first = cm(json!({"a": "1", "b": "2"}));
        let mut obj = first.clone();
        apply_ownership(
            &json!({"metadata": {}}),
            &mut obj,
            &first,
            "kubectl",
            "v1",
            false,
            "t",
        )
        .unwrap();
        let second = cm(json!({"a": "1"}));
        let mut merged = obj.clone();
        apply_ownership(&obj, &mut merged, &second, "kubectl", "v1", false, "t").unwrap();
        assert_eq!(merged["data"], json!({"a": "1"}));
    }
}
