//! In-place pod resize (`pods/resize`, GA in Kubernetes 1.35): the one
//! path on which a pod's containers' cpu and memory requests and limits
//! may change. Upstream's `dropNonResizeUpdates` and `ValidatePodResize`
//! with their messages; the node applies what is allowed here.

use serde_json::{Value, json};

use rke2_apimachinery::quantity::parse_quantity;

type Cause = (String, String, String);

/// The resources a resize may change.
const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// Where a resize's `new` is marked between [`take_resize`] and the
/// validation (`Strategy::validate_update` is told no path); removed again
/// before anything is stored.
pub(crate) const RESIZE_MARK: &str = "__rke2Resize";

/// The update through `pods/resize`: `old` with only the request's
/// `resources` and `resizePolicy` of its containers and init containers
/// taken, by position (upstream's `dropNonResizeUpdates`). Containers
/// added, removed, renamed or reordered leave the request as it is, for
/// the validation to refuse.
pub fn take_resize(old: &Value, new: &mut Value) {
    let same_names = |key: &str| {
        let names = |v: &Value| -> Vec<Value> {
            v["spec"][key]
                .as_array()
                .map(|a| a.iter().map(|c| c["name"].clone()).collect())
                .unwrap_or_default()
        };
        names(old) == names(new)
    };
    if same_names("containers") && same_names("initContainers") {
        let mut out = old.clone();
        for k in ["name", "namespace", "resourceVersion", "uid"] {
            if let Some(v) = new["metadata"].get(k) {
                out["metadata"][k] = v.clone();
            }
        }
        for key in ["containers", "initContainers"] {
            let taken: Vec<(Option<Value>, Option<Value>)> = new["spec"][key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c.get("resources").cloned(), c.get("resizePolicy").cloned()))
                .collect();
            if let Some(list) = out["spec"][key].as_array_mut() {
                for (c, (res, pol)) in list.iter_mut().zip(taken) {
                    set_or_remove(c, "resources", res);
                    set_or_remove(c, "resizePolicy", pol);
                }
            }
        }
        *new = out;
    }
    new[RESIZE_MARK] = json!(true);
}

fn set_or_remove(c: &mut Value, key: &str, v: Option<Value>) {
    match v {
        Some(v) => c[key] = v,
        None => {
            if let Some(m) = c.as_object_mut() {
                m.remove(key);
            }
        }
    }
}

/// Whether `new` is an update through `pods/resize` (see [`RESIZE_MARK`]).
pub fn is_resize(new: &Value) -> bool {
    new.get(RESIZE_MARK).is_some()
}

/// Removes the mark [`take_resize`] left.
pub fn unmark(new: &mut Value) {
    if let Some(m) = new.as_object_mut() {
        m.remove(RESIZE_MARK);
    }
}

/// The amount of a quantity value (string or number), `None` when unset or
/// unparsable.
fn amount(v: &Value) -> Option<i128> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    parse_quantity(&s).ok().map(|q| q.as_nanos())
}

/// A resource list with cpu and memory as `old_list` has them (upstream's
/// `dropCPUMemoryResourcesFromContainer`): `None` when `old_list` is unset.
fn with_old_cpu_memory(list: &Value, old_list: &Value) -> Value {
    if !old_list.is_object() {
        return Value::Null;
    }
    let mut out = list.as_object().cloned().unwrap_or_default();
    for r in RESIZABLE {
        out.remove(r);
        if let Some(v) = old_list.get(r) {
            out.insert(r.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// Resource maps equal by amount (`1Gi` = `1073741824`).
fn same_resources(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| -> Option<std::collections::BTreeMap<String, Option<i128>>> {
        let m = v.as_object()?;
        if m.is_empty() {
            return None;
        }
        Some(m.iter().map(|(k, v)| (k.clone(), amount(v))).collect())
    };
    norm(a) == norm(b)
}

/// `c` with its cpu and memory requests and limits those of `old`, and
/// empty resource maps dropped (they mean nothing).
fn without_cpu_memory_changes(c: &Value, old: &Value) -> Value {
    let mut c = c.clone();
    let lim = with_old_cpu_memory(&c["resources"]["limits"], &old["resources"]["limits"]);
    let req = with_old_cpu_memory(&c["resources"]["requests"], &old["resources"]["requests"]);
    let mut res = serde_json::Map::new();
    if lim.as_object().is_some_and(|m| !m.is_empty()) {
        res.insert("limits".into(), lim);
    }
    if req.as_object().is_some_and(|m| !m.is_empty()) {
        res.insert("requests".into(), req);
    }
    if let Some(cm) = c.as_object_mut() {
        cm.remove("resources");
        if !res.is_empty() {
            cm.insert("resources".into(), Value::Object(res));
        }
    }
    c
}

/// A container as compared by the "only cpu and memory" rule: resource
/// quantities by amount, empty resources as none.
fn comparable(c: &Value) -> Value {
    let mut c = c.clone();
    let mut res = serde_json::Map::new();
    for bag in ["limits", "requests"] {
        if let Some(m) = c["resources"][bag].as_object().filter(|m| !m.is_empty()) {
            let m: serde_json::Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), json!(amount(v).map(|n| n.to_string()))))
                .collect();
            res.insert(bag.into(), Value::Object(m));
        }
    }
    if let Some(cm) = c.as_object_mut() {
        cm.remove("resources");
        if !res.is_empty() {
            cm.insert("resources".into(), Value::Object(res));
        }
    }
    c
}

/// Whether a resource named in `old_list` is missing from `list`.
fn removed(list: &Value, old_list: &Value) -> bool {
    old_list
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, _)| list.get(k).is_none())
}

fn is_sidecar(c: &Value) -> bool {
    c["restartPolicy"] == "Always"
}

/// Upstream's `ValidatePodResize` of an update from `old` to `new` (both
/// whole pods, `new` prepared by [`take_resize`]).
pub fn validate(old: &Value, new: &Value) -> Vec<Cause> {
    let forbidden =
        |field: &str, msg: &str| (field.to_string(), "Forbidden".to_string(), msg.to_string());
    let pod_level = |p: &Value| {
        ["requests", "limits"].iter().any(|b| {
            p["spec"]["resources"][*b]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        })
    };
    if pod_level(old) || pod_level(new) {
        return vec![forbidden(
            "",
            "pods with pod-level resources cannot be resized",
        )];
    }
    if old["metadata"]["annotations"]
        .get("kubernetes.io/config.mirror")
        .is_some()
    {
        return vec![forbidden("", "static pods cannot be resized")];
    }
    if old["spec"]["os"]["name"] == "windows" {
        return vec![forbidden("", "windows pods cannot be resized")];
    }
    let mut causes = Vec::new();
    let old_qos = old["status"]["qosClass"]
        .as_str()
        .unwrap_or_else(|| rke2_apimachinery::qos::qos_class(&old["spec"]));
    if old_qos != rke2_apimachinery::qos::qos_class(&new["spec"]) {
        let shown = new["status"]["qosClass"].as_str().unwrap_or("");
        causes.push((
            "spec".into(),
            "Invalid value".into(),
            format!(
                "{}: Pod QOS Class may not change as a result of resizing",
                crate::schema::go_quote(shown)
            ),
        ));
    }
    // Upstream's version-skew rule: a node that reports no `resources`
    // for its running containers cannot resize.
    let first_running = old["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["state"]["running"].is_object());
    if first_running.is_some_and(|s| !s["resources"].is_object()) {
        causes.push(forbidden(
            "spec",
            "Pod running on node without support for resize",
        ));
    }
    let list = |p: &Value, key: &str| p["spec"][key].as_array().cloned().unwrap_or_default();
    let (old_inits, new_inits) = (list(old, "initContainers"), list(new, "initContainers"));
    let (old_cs, new_cs) = (list(old, "containers"), list(new, "containers"));
    let same_shape = |a: &[Value], b: &[Value]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x["name"] == y["name"])
    };
    if !same_shape(&old_cs, &new_cs) || !same_shape(&old_inits, &new_inits) {
        causes.push(forbidden(
            "spec",
            "only cpu and memory resources are mutable",
        ));
        return causes;
    }
    let removals = |causes: &mut Vec<Cause>, at: String, n: &Value, o: &Value| {
        if removed(&n["resources"]["requests"], &o["resources"]["requests"]) {
            causes.push(forbidden(
                &format!("{at}.requests"),
                "resource requests cannot be removed",
            ));
        }
        if removed(&n["resources"]["limits"], &o["resources"]["limits"]) {
            causes.push(forbidden(
                &format!("{at}.limits"),
                "resource limits cannot be removed",
            ));
        }
    };
    for (i, (o, n)) in old_inits.iter().zip(&new_inits).enumerate() {
        if is_sidecar(o) {
            removals(
                &mut causes,
                format!("spec.initContainers[{i}].resources"),
                n,
                o,
            );
        }
    }
    for (i, (o, n)) in old_cs.iter().zip(&new_cs).enumerate() {
        removals(&mut causes, format!("spec.containers[{i}].resources"), n, o);
    }
    for (o, n) in old_cs.iter().zip(&new_cs) {
        if comparable(&without_cpu_memory_changes(n, o)) != comparable(o) {
            causes.push(forbidden(
                "spec",
                "only cpu and memory resources are mutable",
            ));
        }
    }
    for (o, n) in old_inits.iter().zip(&new_inits) {
        if is_sidecar(o) {
            if comparable(&without_cpu_memory_changes(n, o)) != comparable(o) {
                causes.push(forbidden(
                    "spec",
                    "only cpu and memory resources for sidecar containers are mutable",
                ));
            }
        } else if comparable(n) != comparable(o) {
            causes.push(forbidden(
                "spec",
                "resources for non-sidecar init containers are immutable",
            ));
        }
    }
    if causes.is_empty() {
        // Anything else of the spec (only a request that changed the
        // containers' shape gets here with more than resources changed).
        let mut a = new["spec"].clone();
        let mut b = old["spec"].clone();
        for s in [&mut a, &mut b] {
            if let Some(m) = s.as_object_mut() {
                m.remove("containers");
                m.remove("initContainers");
            }
        }
        if a != b {
            causes.push(forbidden(
                "spec",
                "only cpu and memory resources are mutable",
            ));
        }
    }
    causes
}

/// Whether the containers' cpu/memory requests or limits differ between
/// two pod specs (by amount).
pub fn resources_changed(old_spec: &Value, new_spec: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|key| {
        let a = old_spec[*key].as_array().cloned().unwrap_or_default();
        let b = new_spec[*key].as_array().cloned().unwrap_or_default();
        a.iter().zip(&b).any(|(x, y)| {
            ["requests", "limits"]
                .iter()
                .any(|bag| !same_resources(&x["resources"][*bag], &y["resources"][*bag]))
        })
    })
}

/// Upstream's defaulting of `resizePolicy` (`SetDefaults_Pod`): a
/// container (or sidecar) that requests or limits cpu or memory gets
/// `NotRequired` for each of them it names no policy for; not for
/// Windows pods.
pub fn default_resize_policy(spec: &mut Value) {
    if spec["os"]["name"] == "windows" {
        return;
    }
    for key in ["containers", "initContainers"] {
        for c in spec[key].as_array_mut().into_iter().flatten() {
            if key == "initContainers" && !is_sidecar(c) {
                continue;
            }
            for r in RESIZABLE {
                let named = c["resources"]["requests"].get(r).is_some()
                    || c["resources"]["limits"].get(r).is_some();
                let has_policy = c["resizePolicy"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|p| p["resourceName"] == r));
                if named && !has_policy {
                    if !c["resizePolicy"].is_array() {
                        c["resizePolicy"] = json!([]);
                    }
                    if let Some(l) = c["resizePolicy"].as_array_mut() {
                        l.push(json!({"resourceName": r, "restartPolicy": "NotRequired"}));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(res: Value) -> Value {
        json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": res,
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                                 {"resourceName": "memory", "restartPolicy": "NotRequired"}]}]},
            "status": {"qosClass": "Burstable",
                "containerStatuses": [{"name": "c", "state": {"running": {}},
                    "resources": res}]}})
    }

    fn msgs(c: &[Cause]) -> Vec<String> {
        c.iter().map(|(f, t, d)| format!("{f}: {t}: {d}")).collect()
    }

    #[test]
    fn only_resources_are_taken_and_validated() {
        let old = pod(json!({"requests": {"cpu": "100m", "memory": "32Mi"},
                             "limits": {"cpu": "1", "memory": "64Mi"}}));
        // Raising the memory limit (and a label, an image that are dropped).
        let mut new = old.clone();
        new["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("128Mi");
        new["spec"]["containers"][0]["image"] = json!("other");
        new["metadata"]["labels"] = json!({"x": "y"});
        take_resize(&old, &mut new);
        assert!(is_resize(&new));
        assert_eq!(new["spec"]["containers"][0]["image"], "i");
        assert!(new["metadata"]["labels"].is_null());
        assert_eq!(
            new["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "128Mi"
        );
        assert!(
            validate(&old, &new).is_empty(),
            "{:?}",
            validate(&old, &new)
        );
        assert!(resources_changed(&old["spec"], &new["spec"]));
        // 1.35: a memory limit may go down with NotRequired.
        let mut down = old.clone();
        down["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("48Mi");
        take_resize(&old, &mut down);
        assert!(validate(&old, &down).is_empty());
        // Same amounts in another spelling: no change.
        let mut same = old.clone();
        same["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("1000m");
        assert!(!resources_changed(&old["spec"], &same["spec"]));
    }

    #[test]
    fn upstream_refusals() {
        let old = pod(json!({"requests": {"cpu": "100m", "memory": "32Mi"},
                             "limits": {"cpu": "1", "memory": "64Mi"}}));
        let resize = |f: &dyn Fn(&mut Value)| {
            let mut new = old.clone();
            f(&mut new);
            take_resize(&old, &mut new);
            msgs(&validate(&old, &new))
        };
        // Burstable → Guaranteed.
        assert_eq!(
            resize(&|p| {
                p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1", "memory": "64Mi"},
                    "limits": {"cpu": "1", "memory": "64Mi"}});
            }),
            vec![
                "spec: Invalid value: \"Burstable\": Pod QOS Class may not change as a result of resizing"
            ]
        );
        assert_eq!(
            resize(&|p| {
                p["spec"]["containers"][0]["resources"]["limits"]
                    .as_object_mut()
                    .unwrap()
                    .remove("memory");
            }),
            vec![
                "spec.containers[0].resources.limits: Forbidden: resource limits cannot be removed"
            ]
        );
        assert_eq!(
            resize(&|p| {
                p["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"] =
                    json!("1Gi");
            }),
            vec!["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        assert_eq!(
            resize(&|p| {
                p["spec"]["containers"][0]["resizePolicy"][1]["restartPolicy"] =
                    json!("RestartContainer");
            }),
            vec!["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        assert_eq!(
            resize(&|p| {
                p["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "d", "image": "i"}));
            }),
            vec!["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        let mut mirror = old.clone();
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
        assert_eq!(
            msgs(&validate(&mirror, &mirror)),
            vec![": Forbidden: static pods cannot be resized"]
        );
        let mut old_node = old.clone();
        old_node["status"]["containerStatuses"][0]
            .as_object_mut()
            .unwrap()
            .remove("resources");
        assert_eq!(
            msgs(&validate(&old_node, &old_node)),
            vec!["spec: Forbidden: Pod running on node without support for resize"]
        );
        let mut init = old.clone();
        init["spec"]["initContainers"] =
            json!([{"name": "i", "image": "i", "resources": {"requests": {"cpu": "1"}}}]);
        let mut new = init.clone();
        new["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = json!("2");
        take_resize(&init, &mut new);
        assert_eq!(
            msgs(&validate(&init, &new)),
            vec!["spec: Forbidden: resources for non-sidecar init containers are immutable"]
        );
    }

    #[test]
    fn resize_policy_defaults() {
        let mut spec = json!({"containers": [
            {"name": "a", "resources": {"limits": {"memory": "1Gi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1"}},
             "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "RestartContainer"}]},
            {"name": "c"}]});
        default_resize_policy(&mut spec);
        assert_eq!(
            spec["containers"][0]["resizePolicy"],
            json!([{"resourceName": "memory", "restartPolicy": "NotRequired"}])
        );
        assert_eq!(
            spec["containers"][1]["resizePolicy"],
            json!([{"resourceName": "cpu", "restartPolicy": "RestartContainer"}])
        );
        assert!(spec["containers"][2]["resizePolicy"].is_null());
    }
}
