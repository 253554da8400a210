//! PriorityClasses (`scheduling.k8s.io/v1`) and the `Priority` admission
//! plugin, as kube-apiserver has them: upstream's validation (reserved
//! `system-` names, the highest user-definable value, immutable `value`
//! and `preemptionPolicy`), one `globalDefault` at most, the two system
//! classes created at start and never deleted, and pods given `spec.priority` and
//! `spec.preemptionPolicy` from their class on create.
//!
//! Upstream limited the critical classes to `kube-system` from 1.11 to
//! 1.16; since 1.17 any namespace may use them (a cluster that wants the
//! limit configures a ResourceQuota scope), so neither does this.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::ApiState;
use crate::objects::{self, quoted};
use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, Strategy, UpdateAt};

/// Names starting with this are reserved for the system classes.
pub const SYSTEM_PREFIX: &str = "system-";
/// The highest `value` a user-defined class may have.
pub const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
/// `system-cluster-critical`'s value (upstream's `SystemCriticalPriority`).
pub const SYSTEM_CRITICAL: i64 = 2_000_000_000;
/// The preemption policy a class (and a pod without class) gets by default.
pub const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";

/// The system classes every cluster has: name, value, description.
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        SYSTEM_CRITICAL + 1000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        SYSTEM_CRITICAL,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// PriorityClass objects.
#[derive(Debug)]
pub struct PriorityClass;

impl Strategy for PriorityClass {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if obj["preemptionPolicy"].is_null() {
            obj["preemptionPolicy"] = json!(PREEMPT_LOWER_PRIORITY);
        }
    }

    fn bumps_generation(&self, _old: &Value, _new: &Value) -> bool {
        false
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate(obj, causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        validate_update(old, new, causes);
    }

    fn admit_create_with<'a>(
        &'a self,
        state: &'a ApiState,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move { admit_default(state, obj, true).await })
    }

    fn admit_delete(&self, obj: &Value) -> ApiResult<()> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        if SYSTEM_CLASSES.iter().any(|(n, ..)| *n == name) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "priorityclasses.scheduling.k8s.io {} is forbidden: this is a system priority class and cannot be deleted",
                    quoted(name)
                ),
            ));
        }
        Ok(())
    }

    fn prepare_update<'a>(
        &'a self,
        at: UpdateAt<'a>,
        old: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        objects::prepare_update(at.rt, old, new, at.subresource == Some("status"));
        Box::pin(async move { admit_default(at.state, new, false).await })
    }
}

/// Upstream's `IsKnownSystemPriorityClass`: why `name`/`value`/
/// `globalDefault` is not one of the system classes, if it is not.
fn known_system_class(name: &str, value: i64, global_default: bool) -> Result<(), String> {
    match SYSTEM_CLASSES.iter().find(|(n, ..)| *n == name) {
        None => Err(format!("{name} is not a known system priority class")),
        Some((n, v, _)) if *v != value => Err(format!("value of {n} PriorityClass must be {v}")),
        Some((n, ..)) if global_default => {
            Err(format!("globalDefault of {n} PriorityClass must be false"))
        }
        Some(_) => Ok(()),
    }
}

fn validate_policy(field: &str, v: &Value, causes: &mut Vec<Cause>) {
    match v.as_str() {
        None | Some("Never") | Some(PREEMPT_LOWER_PRIORITY) => {}
        Some(other) => causes.push((
            field.into(),
            "Unsupported value".into(),
            format!(
                "{}: supported values: \"Never\", \"PreemptLowerPriority\"",
                quoted(other)
            ),
        )),
    }
}

/// Upstream's `ValidatePriorityClass`.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let value = obj["value"].as_i64().unwrap_or(0);
    if name.starts_with(SYSTEM_PREFIX) {
        let global = obj["globalDefault"].as_bool().unwrap_or(false);
        if let Err(e) = known_system_class(name, value, global) {
            causes.push((
                "metadata.name".into(),
                "Forbidden".into(),
                format!(
                    "priority class names with '{SYSTEM_PREFIX}' prefix are reserved for system use only. error: {e}"
                ),
            ));
        }
    } else if value > HIGHEST_USER_DEFINABLE {
        causes.push((
            "value".into(),
            "Forbidden".into(),
            format!("maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"),
        ));
    }
    validate_policy("preemptionPolicy", &obj["preemptionPolicy"], causes);
}

/// Upstream's `ValidatePriorityClassUpdate`: `value` and
/// `preemptionPolicy` never change.
pub fn validate_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    if old["value"] != new["value"] {
        causes.push((
            "value".into(),
            "Forbidden".into(),
            "may not be changed in an update.".into(),
        ));
    }
    // Compared after defaulting, as upstream compares the internal objects.
    let policy = |o: &Value| {
        o["preemptionPolicy"]
            .as_str()
            .unwrap_or(PREEMPT_LOWER_PRIORITY)
            .to_string()
    };
    if policy(old) != policy(new) {
        causes.push((
            "preemptionPolicy".into(),
            "Invalid value".into(),
            format!("{}: field is immutable", quoted(&policy(new))),
        ));
    }
}

/// Every stored PriorityClass (from the watch cache when it runs).
pub async fn list_classes(state: &ApiState) -> ApiResult<Vec<Value>> {
    let rt = registry::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses served");
    let prefix = rt.prefix(None);
    if let Some(snap) = state.caches.running(rt).and_then(|c| c.snapshot(&prefix)) {
        return Ok(snap.objects.iter().map(|o| Value::clone(o)).collect());
    }
    Ok(state
        .store
        .list(&prefix, None, 0, 0)
        .await?
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// The global default class: of several (a race of two creates), the
/// one with the lowest value, as upstream picks.
fn default_class(classes: &[Value]) -> Option<&Value> {
    classes
        .iter()
        .filter(|c| c["globalDefault"] == true)
        .min_by_key(|c| c["value"].as_i64().unwrap_or(0))
}

/// The `Priority` plugin's check of a class: a class marked
/// `globalDefault` while another one is already is refused (403).
async fn admit_default(state: &ApiState, obj: &Value, create: bool) -> ApiResult<()> {
    if obj["globalDefault"] != true {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let classes = list_classes(state).await?;
    match default_class(&classes) {
        Some(d) if create || d["metadata"]["name"] != name => {
            let existing = d["metadata"]["name"].as_str().unwrap_or("");
            Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "priorityclasses.scheduling.k8s.io {} is forbidden: PriorityClass {existing} is already marked as default. Only one default can exist",
                    quoted(name)
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The `Priority` plugin on a pod create: the pod's class (or the global
/// default) gives `spec.priority` and `spec.preemptionPolicy`; an unknown
/// class, or a priority or policy in the pod that disagrees with its
/// class, is refused (403).
pub async fn admit_pod(state: &ApiState, pod: &mut Value) -> ApiResult<()> {
    let shown = {
        let meta = &pod["metadata"];
        meta["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .or(meta["generateName"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let forbid = |msg: String| {
        ApiError::new(
            403,
            "Forbidden",
            format!("pods {} is forbidden: {msg}", quoted(&shown)),
        )
    };
    let classes = list_classes(state).await?;
    let wanted = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let (class_name, priority, policy) = match &wanted {
        Some(name) => {
            let Some(class) = classes.iter().find(|c| c["metadata"]["name"] == *name) else {
                return Err(forbid(format!(
                    "no PriorityClass with name {name} was found"
                )));
            };
            (
                Some(name.clone()),
                class["value"].as_i64().unwrap_or(0),
                class["preemptionPolicy"]
                    .as_str()
                    .unwrap_or(PREEMPT_LOWER_PRIORITY)
                    .to_string(),
            )
        }
        None => match default_class(&classes) {
            Some(d) => (
                d["metadata"]["name"].as_str().map(str::to_string),
                d["value"].as_i64().unwrap_or(0),
                d["preemptionPolicy"]
                    .as_str()
                    .unwrap_or(PREEMPT_LOWER_PRIORITY)
                    .to_string(),
            ),
            None => (None, 0, PREEMPT_LOWER_PRIORITY.to_string()),
        },
    };
    let spec = &mut pod["spec"];
    if let Some(given) = spec["priority"].as_i64()
        && given != priority
    {
        return Err(forbid(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
        )));
    }
    if let Some(given) = spec["preemptionPolicy"].as_str()
        && given != policy
    {
        return Err(forbid(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        )));
    }
    if let Some(name) = class_name {
        spec["priorityClassName"] = json!(name);
    }
    spec["priority"] = json!(priority);
    spec["preemptionPolicy"] = json!(policy);
    Ok(())
}

/// Creates the system classes that are missing, as kube-apiserver's
/// post-start hook does (run at every start; one left by an older
/// version stays as it is).
pub async fn ensure_system_classes(state: &ApiState) -> ApiResult<()> {
    let rt = registry::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses served");
    for (name, value, description) in SYSTEM_CLASSES {
        let key = rt.key(None, name);
        if state.store.get(&key).await?.is_some() {
            continue;
        }
        let mut obj = json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value, "description": description,
            "preemptionPolicy": PREEMPT_LOWER_PRIORITY,
        });
        objects::check_type(rt, &mut obj)?;
        objects::prepare_create(rt, &mut obj, None)?;
        match state.store.create(&key, objects::to_stored(&obj)).await {
            Ok(_) | Err(rke2_datastore::StoreError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Columns between NAME and the end, as kubectl prints them: VALUE
/// GLOBAL-DEFAULT AGE PREEMPTIONPOLICY (AGE is upstream's fourth column
/// here, so it is part of this list).
pub fn columns() -> Vec<Value> {
    let col = |name: &str, ty: &str, description: &str| json!({"name": name, "type": ty, "format": "", "description": description, "priority": 0});
    vec![
        col(
            "Value",
            "integer",
            "value represents the integer value of this priority class. This is the actual priority that pods receive when they have the name of this class in their pod spec.",
        ),
        col(
            "Global-Default",
            "boolean",
            "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class. Only one PriorityClass can be marked as `globalDefault`. However, if more than one PriorityClasses exists with their `globalDefault` field set to true, the smallest value of such global default PriorityClasses will be used as the default priority.",
        ),
        col(
            "Age",
            "string",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        ),
        col(
            "PreemptionPolicy",
            "string",
            "preemptionPolicy is the Policy for preempting pods with lower priority. One of Never, PreemptLowerPriority. Defaults to PreemptLowerPriority if unset.",
        ),
    ]
}

/// The cells matching [`columns`]; `age` is the AGE cell.
pub fn cells(obj: &Value, age: Value) -> Vec<Value> {
    vec![
        json!(obj["value"].as_i64().unwrap_or(0)),
        json!(obj["globalDefault"] == true),
        age,
        json!(
            obj["preemptionPolicy"]
                .as_str()
                .unwrap_or(PREEMPT_LOWER_PRIORITY)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(obj: Value) -> Vec<String> {
        let mut c = Vec::new();
        validate(&obj, &mut c);
        c.into_iter()
            .map(|(f, t, d)| format!("{f}: {t}: {d}"))
            .collect()
    }

    #[test]
    fn system_names_are_reserved() {
        assert_eq!(
            errs(json!({"metadata": {"name": "system-foo"}, "value": 5})),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-foo is not a known system priority class"
            ]
        );
        assert_eq!(
            errs(json!({"metadata": {"name": "system-node-critical"}, "value": 5})),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: value of system-node-critical PriorityClass must be 2000001000"
            ]
        );
        assert!(
            errs(json!({"metadata": {"name": "system-cluster-critical"}, "value": 2000000000}))
                .is_empty()
        );
    }

    #[test]
    fn user_values_are_capped() {
        assert_eq!(
            errs(json!({"metadata": {"name": "high"}, "value": 1000000001})),
            ["value: Forbidden: maximum allowed value of a user defined priority is 1000000000"]
        );
        assert!(errs(json!({"metadata": {"name": "high"}, "value": 1000000000})).is_empty());
        assert_eq!(
            errs(json!({"metadata": {"name": "p"}, "value": 1, "preemptionPolicy": "Sometimes"})),
            [
                "preemptionPolicy: Unsupported value: \"Sometimes\": supported values: \"Never\", \"PreemptLowerPriority\""
            ]
        );
    }

    #[test]
    fn value_and_policy_are_immutable() {
        let old = json!({"metadata": {"name": "p"}, "value": 1, "preemptionPolicy": "Never"});
        let mut c = Vec::new();
        validate_update(
            &old,
            &json!({"metadata": {"name": "p"}, "value": 2, "preemptionPolicy": "Never"}),
            &mut c,
        );
        assert_eq!(c[0].2, "may not be changed in an update.");
        c.clear();
        validate_update(
            &old,
            &json!({"metadata": {"name": "p"}, "value": 1}),
            &mut c,
        );
        assert_eq!(c[0].0, "preemptionPolicy");
        c.clear();
        validate_update(
            &old,
            &json!({"metadata": {"name": "p"}, "value": 1, "description": "x", "preemptionPolicy": "Never"}),
            &mut c,
        );
        assert!(c.is_empty());
    }

    #[test]
    fn the_lowest_default_wins() {
        let classes = vec![
            json!({"metadata": {"name": "a"}, "value": 10, "globalDefault": true}),
            json!({"metadata": {"name": "b"}, "value": 5, "globalDefault": true}),
            json!({"metadata": {"name": "c"}, "value": 1}),
        ];
        assert_eq!(default_class(&classes).unwrap()["metadata"]["name"], "b");
    }
}
