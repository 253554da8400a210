//! Kubernetes strategic merge patch (`application/strategic-merge-patch+json`).
//!
//! Semantics follow apimachinery `pkg/util/strategicpatch/patch.go` as
//! described in `reference/kube-wire.md` section 8: maps merge recursively,
//! `null` deletes, lists merge element-wise by a merge key taken from a
//! [`MergeSchema`], and the `$patch`, `$setElementOrder/`,
//! `$deleteFromPrimitiveList/` and `$retainKeys` directives are honoured and
//! never survive into the result.

use serde_json::{Map, Value};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// How a list-valued field is patched; the Go struct tags
/// `patchStrategy`/`patchMergeKey` carry the same information upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch list replaces the original list (JSON merge patch behaviour).
    Atomic,
    /// Lists of objects merged element-wise; elements are matched by this key.
    MergeByKey(String),
    /// Lists of primitives merged as a set (union, e.g. `metadata.finalizers`).
    SetMerge,
}

/// Supplies the patch strategy of list fields. The path holds the map keys
/// from the object root to the list field; list elements add nothing to the
/// path, so a container's env is `["spec","containers","env"]` in a Pod.
pub trait MergeSchema {
    /// Strategy for the list found at `path`.
    fn list_strategy(&self, path: &[&str]) -> ListStrategy;
}

/// A schema where every list is atomic: the behaviour for kinds whose
/// schema is unknown (custom resources).
impl MergeSchema for () {
    fn list_strategy(&self, _path: &[&str]) -> ListStrategy {
        ListStrategy::Atomic
    }
}

/// Why a strategic merge patch could not be applied; maps to a 400/422 in
/// the API server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document (or the original object) is not a JSON object.
    #[error("{0}")]
    NotAnObject(String),
    /// A `$patch` directive with an unsupported value.
    #[error("unknown patch type: {patch_type} in map: {map}")]
    BadPatchType {
        /// The offending `$patch` value.
        patch_type: String,
        /// The map (element) that carried it, as JSON.
        map: String,
    },
    /// A patch element of a merge-keyed list lacks the merge key.
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey {
        /// The element, as JSON.
        map: String,
        /// The merge key expected from the schema.
        key: String,
    },
    /// A directive whose value has the wrong shape (e.g. `$retainKeys` not a list).
    #[error("invalid {directive} directive: {message}")]
    BadDirectiveValue {
        /// The directive name.
        directive: String,
        /// What was wrong.
        message: String,
    },
    /// A `$retainKeys` that is not a list of strings, or that leaves out a
    /// field the same patch sets (upstream's wording).
    #[error("invalid patch format of retainKeys")]
    BadRetainKeys,
    /// `{"$patch":"merge"}` inside a list, which upstream rejects too.
    #[error("merging lists cannot yet be specified in the patch")]
    ListMergeDirective,
}

/// Applies `patch` (a strategic merge patch document) to `original`,
/// returning the merged object. `original` may be `null` (treated as `{}`).
pub fn apply(
    original: &Value,
    patch: &Value,
    schema: &dyn MergeSchema,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject(
            "strategic merge patch must be a JSON object".to_string(),
        ));
    };
    let original = match original {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => {
            return Err(PatchError::NotAnObject(
                "original object must be a JSON object".to_string(),
            ));
        }
    };
    let mut m = Merger {
        schema,
        path: Vec::new(),
    };
    // A top-level `$patch: delete` leaves an empty object, as upstream does.
    Ok(Value::Object(
        m.merge_map(original, patch)?.unwrap_or_default(),
    ))
}

struct Merger<'s, 'p> {
    schema: &'s dyn MergeSchema,
    path: Vec<&'p str>,
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE
        || k == RETAIN_KEYS
        || k.starts_with(SET_ELEMENT_ORDER)
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn map_json(m: &Map<String, Value>) -> String {
    compact(&Value::Object(m.clone()))
}

impl<'s, 'p> Merger<'s, 'p> {
    /// Merges a patch map into an original map. `None` means the map is
    /// deleted (`$patch: delete`).
    fn merge_map(
        &mut self,
        original: Map<String, Value>,
        patch: &'p Map<String, Value>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        match patch.get(DIRECTIVE) {
            None => self.merge_fields(original, patch).map(Some),
            Some(Value::String(d)) if d == "merge" => self.merge_fields(original, patch).map(Some),
            // Replace: the patch map is the result; merging it into nothing
            // still strips nested directives and nulls.
            Some(Value::String(d)) if d == "replace" => {
                self.merge_fields(Map::new(), patch).map(Some)
            }
            Some(Value::String(d)) if d == "delete" => Ok(None),
            Some(other) => Err(PatchError::BadPatchType {
                patch_type: other
                    .as_str()
                    .map_or_else(|| compact(other), str::to_string),
                map: map_json(patch),
            }),
        }
    }

    fn merge_fields(
        &mut self,
        mut original: Map<String, Value>,
        patch: &'p Map<String, Value>,
    ) -> Result<Map<String, Value>, PatchError> {
        // Upstream prunes the original by $retainKeys before merging, so the
        // patch's own keys (always a subset in kubectl's patches) survive.
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let list = retain.as_array().ok_or(PatchError::BadRetainKeys)?;
            let keep: Vec<&str> = list
                .iter()
                .map(|v| v.as_str().ok_or(PatchError::BadRetainKeys))
                .collect::<Result<_, _>>()?;
            // Upstream's check: every field the patch sets must be one the
            // directive retains, or the patch contradicts itself.
            let contradicts = patch.iter().any(|(k, v)| {
                !v.is_null()
                    && k != RETAIN_KEYS
                    && !k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
                    && !k.starts_with(SET_ELEMENT_ORDER)
                    && !keep.contains(&k.as_str())
            });
            if contradicts {
                return Err(PatchError::BadRetainKeys);
            }
            original.retain(|k, _| keep.contains(&k.as_str()));
        }

        for (k, v) in patch {
            let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
                continue;
            };
            let remove = v
                .as_array()
                .ok_or_else(|| bad_directive(k, "must be a list"))?;
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|e| !remove.contains(e));
            }
        }

        for (k, v) in patch {
            if is_directive_key(k) {
                continue;
            }
            self.path.push(k);
            let order = self.element_order(patch, k)?;
            if v.is_null() {
                original.shift_remove(k);
            } else {
                let orig = original.get_mut(k.as_str()).map(Value::take);
                match self.merge_value(orig, v, order)? {
                    Some(merged) => {
                        // Insert keeps the key's position when it already exists.
                        original.insert(k.clone(), merged);
                    }
                    None => {
                        original.shift_remove(k);
                    }
                }
            }
            self.path.pop();
        }

        // `$setElementOrder/x` may come without `x` (a pure reorder).
        for (k, v) in patch {
            let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) else {
                continue;
            };
            if patch.contains_key(field) {
                continue;
            }
            let order = v
                .as_array()
                .ok_or_else(|| bad_directive(k, "must be a list"))?;
            self.path.push(field);
            let strategy = self.schema.list_strategy(&self.path);
            self.path.pop();
            let key = match &strategy {
                ListStrategy::Atomic => continue,
                ListStrategy::MergeByKey(key) => Some(key.as_str()),
                ListStrategy::SetMerge => None,
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                let server = list.clone();
                let items = std::mem::take(list);
                *list = normalize_order(items, order, &server, key);
            }
        }
        Ok(original)
    }

    fn element_order(
        &self,
        patch: &'p Map<String, Value>,
        field: &str,
    ) -> Result<Option<&'p [Value]>, PatchError> {
        let name = format!("{SET_ELEMENT_ORDER}{field}");
        match patch.get(&name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(_) => Err(bad_directive(&name, "must be a list")),
        }
    }

    /// Merges one field's patch value into its original value (absent =
    /// `None`). Returns `None` when the field is to be removed.
    fn merge_value(
        &mut self,
        original: Option<Value>,
        patch: &'p Value,
        order: Option<&'p [Value]>,
    ) -> Result<Option<Value>, PatchError> {
        match patch {
            Value::Object(pm) => {
                // A type change (or a new field) replaces: merge into nothing.
                let om = match original {
                    Some(Value::Object(om)) => om,
                    _ => Map::new(),
                };
                Ok(self.merge_map(om, pm)?.map(Value::Object))
            }
            Value::Array(pa) => {
                let ol = match original {
                    Some(Value::Array(ol)) => ol,
                    _ => Vec::new(),
                };
                match self.schema.list_strategy(&self.path) {
                    ListStrategy::Atomic => Ok(Some(patch.clone())),
                    ListStrategy::SetMerge => {
                        Ok(Some(Value::Array(merge_primitive_list(ol, pa, order))))
                    }
                    ListStrategy::MergeByKey(key) => {
                        // Upstream merges primitive lists as sets even when a
                        // merge key is declared.
                        let all_maps = ol.iter().chain(pa.iter()).all(Value::is_object);
                        if !all_maps {
                            return Ok(Some(Value::Array(merge_primitive_list(ol, pa, order))));
                        }
                        self.merge_keyed_list(ol, pa, &key, order)
                            .map(|l| Some(Value::Array(l)))
                    }
                }
            }
            _ => Ok(Some(patch.clone())),
        }
    }

    fn merge_keyed_list(
        &mut self,
        original: Vec<Value>,
        patch: &'p [Value],
        key: &str,
        order: Option<&'p [Value]>,
    ) -> Result<Vec<Value>, PatchError> {
        let server_order = original.clone();
        let mut current = original;
        let mut plain: Vec<&'p Map<String, Value>> = Vec::new();
        let mut replace = false;
        for el in patch {
            let Value::Object(m) = el else { continue };
            match m.get(DIRECTIVE) {
                None => plain.push(m),
                Some(Value::String(d)) if d == "delete" => {
                    let Some(kv) = m.get(key) else {
                        return Err(PatchError::NoMergeKey {
                            map: map_json(m),
                            key: key.to_string(),
                        });
                    };
                    current.retain(|e| e.get(key) != Some(kv));
                }
                Some(Value::String(d)) if d == "replace" => replace = true,
                Some(Value::String(d)) if d == "merge" => {
                    return Err(PatchError::ListMergeDirective);
                }
                Some(other) => {
                    return Err(PatchError::BadPatchType {
                        patch_type: other
                            .as_str()
                            .map_or_else(|| compact(other), str::to_string),
                        map: map_json(m),
                    });
                }
            }
        }
        if replace {
            current.clear();
        }
        let after_deletes = current.clone();
        for m in plain {
            let Some(kv) = m.get(key) else {
                return Err(PatchError::NoMergeKey {
                    map: map_json(m),
                    key: key.to_string(),
                });
            };
            match current.iter().position(|e| e.get(key) == Some(kv)) {
                Some(i) => {
                    let Value::Object(om) = current[i].take() else {
                        unreachable!("checked all_maps")
                    };
                    match self.merge_map(om, m)? {
                        Some(merged) => current[i] = Value::Object(merged),
                        None => {
                            current.remove(i);
                        }
                    }
                }
                None => {
                    if let Some(new) = self.merge_map(Map::new(), m)? {
                        current.push(Value::Object(new));
                    }
                }
            }
        }
        let mut merged = normalize_order(current, patch, &after_deletes, Some(key));
        if let Some(order) = order {
            merged = normalize_order(merged, order, &server_order, Some(key));
        }
        Ok(merged)
    }
}

fn bad_directive(directive: &str, message: &str) -> PatchError {
    PatchError::BadDirectiveValue {
        directive: directive.to_string(),
        message: message.to_string(),
    }
}

/// Set-merge of primitive lists: original then patch values, deduplicated,
/// ordered like upstream.
fn merge_primitive_list(
    original: Vec<Value>,
    patch: &[Value],
    order: Option<&[Value]>,
) -> Vec<Value> {
    let server_order = original.clone();
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for v in original.into_iter().chain(patch.iter().cloned()) {
        if !merged.contains(&v) {
            merged.push(v);
        }
    }
    let mut merged = normalize_order(merged, patch, &server_order, None);
    if let Some(order) = order {
        merged = normalize_order(merged, order, &server_order, None);
    }
    merged
}

/// Position of `item` in `list`, comparing by merge key for maps and by
/// value for primitives.
fn index_of(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    match key {
        Some(key) => {
            let kv = item.get(key)?;
            list.iter().position(|e| e.get(key) == Some(kv))
        }
        None => list.iter().position(|e| e == item),
    }
}

/// Upstream `normalizeElementOrder`: the items mentioned in `order` take
/// that relative order, the others keep their relative order from `server`,
/// and the two runs are interleaved by their positions in `server`
/// (`mergeSortedSlice`). Note that an item absent from the server wins ties,
/// so new items land before server-only items, exactly as upstream.
fn normalize_order(
    items: Vec<Value>,
    order: &[Value],
    server: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut patch_items, mut server_only): (Vec<Value>, Vec<Value>) = items
        .into_iter()
        .partition(|e| index_of(order, e, key).is_some());
    patch_items.sort_by_key(|e| index_of(order, e, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|e| index_of(server, e, key).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let less = match (index_of(server, l, key), index_of(server, r, key)) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                };
                if less {
                    out.extend(left.next());
                } else {
                    out.extend(right.next());
                }
            }
        }
    }
    out
}

/// Merge strategies of the built-in Kubernetes kinds, keyed by the object's
/// kind (what the Go struct tags say upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinSchema {
    kind: String,
    /// False for kinds outside the built-in API groups (custom resources):
    /// those get JSON-merge-patch list semantics.
    known: bool,
}

/// API groups served by kube-apiserver itself; objects in other groups are
/// custom resources whose list strategies we cannot know.
const BUILTIN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "certificates.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "resource.k8s.io",
];

/// Returns the merge schema for an object of the given `apiVersion` and
/// `kind`; kinds outside the built-in API groups get all-atomic lists.
pub fn builtin_schema(api_version: &str, kind: &str) -> BuiltinSchema {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    BuiltinSchema {
        kind: kind.to_string(),
        known: BUILTIN_GROUPS.contains(&group),
    }
}

impl BuiltinSchema {
    /// Where the PodSpec lives in this kind, if it has one.
    fn pod_spec_prefix(&self) -> Option<&'static [&'static str]> {
        match self.kind.as_str() {
            "Pod" => Some(&["spec"]),
            "PodTemplate" => Some(&["template", "spec"]),
            "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "ReplicationController" => Some(&["spec", "template", "spec"]),
            "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
            _ => None,
        }
    }
}

fn by(key: &str) -> ListStrategy {
    ListStrategy::MergeByKey(key.to_string())
}

/// List strategies inside a PodSpec, `rel` being the path below it.
fn pod_spec_list(rel: &[&str]) -> ListStrategy {
    const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    match rel {
        [c] if CONTAINER_LISTS.contains(c) => by("name"),
        ["volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims"] => by("name"),
        ["hostAliases"] => by("ip"),
        ["topologySpreadConstraints"] => by("topologyKey"),
        [c, field] if CONTAINER_LISTS.contains(c) => match *field {
            "env" => by("name"),
            "ports" => by("containerPort"),
            "volumeMounts" => by("mountPath"),
            "volumeDevices" => by("devicePath"),
            _ => ListStrategy::Atomic,
        },
        _ => ListStrategy::Atomic,
    }
}

impl MergeSchema for BuiltinSchema {
    fn list_strategy(&self, path: &[&str]) -> ListStrategy {
        if !self.known {
            return ListStrategy::Atomic;
        }
        // ObjectMeta, both the object's own and pod templates'.
        if let [.., "metadata", field] = path {
            return match *field {
                "finalizers" => ListStrategy::SetMerge,
                "ownerReferences" => by("uid"),
                _ => ListStrategy::Atomic,
            };
        }
        if let Some(prefix) = self.pod_spec_prefix()
            && let Some(rel) = path.strip_prefix(prefix)
        {
            return pod_spec_list(rel);
        }
        match (self.kind.as_str(), path) {
            (_, ["status", "conditions"]) => by("type"),
            ("Pod", ["status", "podIPs" | "hostIPs"]) => by("ip"),
            ("Node", ["status", "addresses"]) => by("type"),
            ("Node", ["spec", "podCIDRs"]) => ListStrategy::SetMerge,
            ("Service", ["spec", "ports"]) => by("port"),
            ("ServiceAccount", ["secrets" | "imagePullSecrets"]) => by("name"),
            _ => ListStrategy::Atomic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": containers}
                }
            }
        })
    }

    fn apply_deploy(original: &Value, patch: Value) -> Value {
        apply(original, &patch, &builtin_schema("apps/v1", "Deployment")).unwrap()
    }

    fn containers(v: &Value) -> &Value {
        &v["spec"]["template"]["spec"]["containers"]
    }

    #[test]
    fn kubectl_apply_image_change() {
        let orig = deploy(json!([
            {"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "busybox"}
        ]));
        // Exactly what kubectl apply sends for an image change.
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"nginx"},{"name":"sidecar"}],
            "containers":[{"image":"nginx:1.27","name":"nginx"}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(
            containers(&out),
            &json!([
                {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "busybox"}
            ])
        );
        assert_eq!(out["spec"]["replicas"], 1);
    }

    #[test]
    fn kubectl_apply_container_removal() {
        let orig = deploy(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]));
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"a"}],
            "containers":[{"$patch":"delete","name":"b"}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(containers(&out), &json!([{"name": "a", "image": "x"}]));
    }

    #[test]
    fn kubectl_apply_add_container_with_order() {
        let orig = deploy(json!([{"name": "a", "image": "x"}]));
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"a"},{"name":"b"}],
            "containers":[{"name":"b","image":"y"}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(
            containers(&out),
            &json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])
        );
    }

    #[test]
    fn set_element_order_reorders() {
        let orig = deploy(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"c"},{"name":"b"},{"name":"a"}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(
            containers(&out),
            &json!([{"name": "c"}, {"name": "b"}, {"name": "a"}])
        );
    }

    #[test]
    fn set_element_order_keeps_server_only_items() {
        // An injected sidecar unknown to the client stays, interleaved by its
        // server position.
        let orig = deploy(json!([{"name": "a"}, {"name": "injected"}, {"name": "b"}]));
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"a"},{"name":"b"}],
            "containers":[{"name":"b","image":"new"}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(
            containers(&out),
            &json!([{"name": "a"}, {"name": "injected"}, {"name": "b", "image": "new"}])
        );
    }

    #[test]
    fn env_merge_by_name() {
        let orig = deploy(json!([{"name": "app", "env": [
            {"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]));
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"app",
            "$setElementOrder/env":[{"name":"A"},{"name":"B"},{"name":"C"}],
            "env":[{"name":"B","value":"20"},{"name":"C","value":"3"}]}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}])
        );
    }

    #[test]
    fn env_entry_delete_and_value_from_replaced_by_null() {
        let orig = deploy(json!([{"name": "app", "env": [
            {"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}]));
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"app",
            "env":[{"name":"A","$patch":"delete"},{"name":"B","value":"2","valueFrom":null}]}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "B", "value": "2"}])
        );
    }

    #[test]
    fn new_element_without_order_goes_first_like_upstream() {
        let orig = deploy(json!([{"name": "a"}]));
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"name":"b"}]}}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(containers(&out), &json!([{"name": "b"}, {"name": "a"}]));
    }

    #[test]
    fn null_deletes_keys() {
        let orig =
            json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": null});
        let out = apply(&orig, &patch, &builtin_schema("v1", "ConfigMap")).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"name": "x", "labels": {"b": "2", "c": "3"}}})
        );
    }

    #[test]
    fn nulls_in_new_subtrees_are_dropped() {
        let orig = json!({"metadata": {"name": "x"}});
        let patch = json!({"metadata": {"annotations": {"a": "1", "b": null}}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "ConfigMap")).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"name": "x", "annotations": {"a": "1"}}})
        );
    }

    #[test]
    fn finalizers_delete_from_primitive_list() {
        let orig = json!({"metadata": {"name": "x", "finalizers": ["a/one", "b/two", "c/three"]}});
        let patch = json!({"metadata": {
            "$setElementOrder/finalizers": ["a/one", "c/three"],
            "$deleteFromPrimitiveList/finalizers": ["b/two"]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a/one", "c/three"]));
    }

    #[test]
    fn finalizers_set_merge() {
        let orig = json!({"metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["a", "b", "c"], "finalizers": ["b", "c"]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Namespace")).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
    }

    #[test]
    fn retain_keys_on_strategy() {
        let orig = deploy(json!([{"name": "a"}]));
        // kubectl apply switching RollingUpdate -> Recreate.
        let patch = json!({"spec":{"strategy":{"$retainKeys":["type"],"rollingUpdate":null,"type":"Recreate"}}});
        let out = apply_deploy(&orig, patch);
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn retain_keys_on_volume_source_change() {
        let orig = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}});
        let patch = json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["hostPath", "name"],
            "hostPath": {"path": "/data"}}]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/data"}}])
        );
    }

    #[test]
    fn replace_directive_on_map() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"c": "3"}}}));
    }

    #[test]
    fn replace_directive_in_list() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}});
        let patch =
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c", "image": "z"}]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "z"}])
        );
    }

    #[test]
    fn delete_directive_on_map() {
        let orig = json!({"spec": {"affinity": {"nodeAffinity": {}}, "nodeName": "n1"}});
        let patch = json!({"spec": {"affinity": {"$patch": "delete"}}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(out, json!({"spec": {"nodeName": "n1"}}));
    }

    #[test]
    fn atomic_lists_replace() {
        let orig = json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "command": ["a", "b"]}]}});
        let patch = json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "command": ["z"]}]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "command": ["z"]}])
        );
    }

    #[test]
    fn unknown_kind_lists_are_atomic() {
        let orig = json!({"spec": {"containers": [{"name": "a"}], "x": 1}});
        let patch = json!({"spec": {"containers": [{"name": "b"}]}});
        let out = apply(&orig, &patch, &builtin_schema("example.com/v1", "Widget")).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "b"}], "x": 1}})
        );
    }

    #[test]
    fn container_ports_and_mounts_by_key() {
        let orig = json!({"spec": {"containers": [{"name": "a",
            "ports": [{"containerPort": 80, "name": "http"}],
            "volumeMounts": [{"mountPath": "/a", "name": "v1"}]}]}});
        let patch = json!({"spec": {"containers": [{"name": "a",
            "ports": [{"containerPort": 80, "name": "web"}],
            "volumeMounts": [{"mountPath": "/a", "readOnly": true}]}]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(
            out["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "web"}])
        );
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{"mountPath": "/a", "name": "v1", "readOnly": true}])
        );
    }

    #[test]
    fn node_status_conditions_by_type() {
        let orig = json!({"status": {"conditions": [
            {"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}],
            "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
            "addresses": [{"type": "Hostname", "address": "n1"}],
            "$setElementOrder/addresses": [{"type": "InternalIP"}, {"type": "Hostname"}]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Node")).unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}])
        );
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}])
        );
    }

    #[test]
    fn service_ports_by_port() {
        let orig = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}],
            "$setElementOrder/ports": [{"port": 80}, {"port": 443}]}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Service")).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn owner_references_by_uid() {
        let orig = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "1", "controller": true}]}});
        let out = apply(&orig, &patch, &builtin_schema("apps/v1", "ReplicaSet")).unwrap();
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "1", "name": "a", "controller": true}])
        );
    }

    #[test]
    fn cronjob_pod_template_path() {
        let orig = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "z"}]}}}}}});
        let out = apply(&orig, &patch, &builtin_schema("batch/v1", "CronJob")).unwrap();
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}])
        );
    }

    #[test]
    fn directives_never_leak_into_new_fields() {
        let orig = json!({"spec": {}});
        let patch = json!({"spec": {"containers": [{"name": "a", "$setElementOrder/env": [{"name": "X"}],
            "env": [{"name": "X", "value": "1"}, {"name": "Y", "$patch": "delete"}]}],
            "affinity": {"$patch": "delete"}}});
        let out = apply(&orig, &patch, &builtin_schema("v1", "Pod")).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}})
        );
    }

    #[test]
    fn errors() {
        let s = builtin_schema("v1", "Pod");
        let orig = json!({"spec": {"containers": [{"name": "a"}]}});
        let e = apply(
            &orig,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            &s,
        )
        .unwrap_err();
        assert!(matches!(e, PatchError::NoMergeKey { .. }), "{e}");
        let e = apply(&orig, &json!({"spec": {"$patch": "bogus"}}), &s).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unknown patch type: bogus in map: {"$patch":"bogus"}"#
        );
        assert!(apply(&orig, &json!([1]), &s).is_err());
        let e = apply(
            &orig,
            &json!({"spec": {"containers": [{"$patch": "merge"}]}}),
            &s,
        )
        .unwrap_err();
        assert_eq!(e, PatchError::ListMergeDirective);
    }

    #[test]
    fn key_order_is_preserved() {
        let orig = json!({"a": 1, "b": 2, "c": 3});
        let out = apply(&orig, &json!({"a": 10, "b": null}), &()).unwrap();
        assert_eq!(serde_json::to_string(&out).unwrap(), r#"{"a":10,"c":3}"#);
    }
}
