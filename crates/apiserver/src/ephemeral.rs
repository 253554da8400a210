//! Ephemeral containers (`kubectl debug`): added to a running pod through
//! the `pods/ephemeralcontainers` subresource only, never changed or
//! removed once there, never set on create; upstream's validation texts.

use serde_json::Value;

type Cause = (String, String, String);

/// Container fields an ephemeral container may not set (upstream's
/// `validateEphemeralContainers`: they make no sense for a container that
/// is never restarted and serves nothing).
const FORBIDDEN: [&str; 6] = [
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
];

/// The update through `pods/ephemeralcontainers`: `old` with only the
/// request's `spec.ephemeralContainers` (and identity) taken, as
/// upstream's `dropNonEphemeralContainerUpdates`.
pub fn take_ephemeral_containers(old: &Value, new: &mut Value) {
    let mut out = old.clone();
    for k in ["name", "namespace", "resourceVersion", "uid"] {
        if let Some(v) = new["metadata"].get(k) {
            out["metadata"][k] = v.clone();
        }
    }
    match new["spec"].get("ephemeralContainers") {
        Some(v) => out["spec"]["ephemeralContainers"] = v.clone(),
        None => {
            if let Some(m) = out["spec"].as_object_mut() {
                m.remove("ephemeralContainers");
            }
        }
    }
    *new = out;
}

/// Causes against `spec.ephemeralContainers` of an update from `old_spec`
/// to `new_spec`: existing ones unchanged and kept, new ones valid.
pub fn update_causes(old_spec: &Value, new_spec: &Value) -> Vec<Cause> {
    let list = |s: &Value| {
        s["ephemeralContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (old, new) = (list(old_spec), list(new_spec));
    let mut causes = Vec::new();
    for o in &old {
        let name = o["name"].as_str().unwrap_or("");
        match new.iter().find(|n| n["name"] == o["name"]) {
            None => causes.push((
                "spec.ephemeralContainers".into(),
                "Forbidden".into(),
                format!("existing ephemeral containers \"{name}\" may not be removed\n"),
            )),
            Some(n) if n != o => causes.push((
                "spec.ephemeralContainers".into(),
                "Forbidden".into(),
                format!("existing ephemeral containers \"{name}\" may not be changed\n"),
            )),
            Some(_) => {}
        }
    }
    let mut names: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| new_spec[*k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let regular: Vec<&str> = new_spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, c) in new.iter().enumerate() {
        let at = format!("spec.ephemeralContainers[{i}]");
        let name = c["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push((format!("{at}.name"), "Required value".into(), String::new()));
        } else if names.iter().any(|n| n == name) {
            causes.push((
                format!("{at}.name"),
                "Duplicate value".into(),
                format!("\"{name}\""),
            ));
        } else {
            names.push(name.to_string());
        }
        if c["image"].as_str().unwrap_or("").is_empty() {
            causes.push((
                format!("{at}.image"),
                "Required value".into(),
                String::new(),
            ));
        }
        for f in FORBIDDEN {
            if c.get(f)
                .is_some_and(|v| !v.is_null() && *v != Value::Object(Default::default()))
            {
                causes.push((
                    format!("{at}.{f}"),
                    "Forbidden".into(),
                    "cannot be set for an Ephemeral Container".into(),
                ));
            }
        }
        if let Some(t) = c["targetContainerName"].as_str()
            && !t.is_empty()
            && !regular.contains(&t)
        {
            causes.push((
                format!("{at}.targetContainerName"),
                "Not found".into(),
                format!("\"{t}\""),
            ));
        }
    }
    causes
}

/// Whether `spec.ephemeralContainers` differs between two pod specs
/// (absent, null and empty all mean none).
pub fn changed(old_spec: &Value, new_spec: &Value) -> bool {
    let list = |s: &Value| {
        s["ephemeralContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    list(old_spec) != list(new_spec)
}

/// A create may not carry ephemeral containers.
pub fn create_causes(spec: &Value) -> Vec<Cause> {
    match spec["ephemeralContainers"].as_array() {
        Some(l) if !l.is_empty() => vec![(
            "spec.ephemeralContainers".into(),
            "Forbidden".into(),
            "cannot be set on create".into(),
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_additions_of_valid_containers() {
        let old = json!({"containers": [{"name": "app", "image": "x"}],
            "ephemeralContainers": [{"name": "d1", "image": "busybox"}]});
        let mut new = old.clone();
        new["ephemeralContainers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "d2", "image": "busybox", "targetContainerName": "app"}));
        assert!(update_causes(&old, &new).is_empty());
        let mut changed = new.clone();
        changed["ephemeralContainers"][0]["image"] = json!("other");
        assert_eq!(
            update_causes(&old, &changed)[0].2,
            "existing ephemeral containers \"d1\" may not be changed\n"
        );
        let removed = json!({"containers": [{"name": "app", "image": "x"}]});
        assert_eq!(
            update_causes(&old, &removed)[0].2,
            "existing ephemeral containers \"d1\" may not be removed\n"
        );
        let bad = json!({"containers": [{"name": "app", "image": "x"}],
            "ephemeralContainers": [{"name": "app", "ports": [{"containerPort": 80}], "targetContainerName": "nope"}]});
        let causes: Vec<(String, String)> = update_causes(&json!({}), &bad)
            .into_iter()
            .map(|(f, t, _)| (f, t))
            .collect();
        assert_eq!(
            causes,
            [
                (
                    "spec.ephemeralContainers[0].name".into(),
                    "Duplicate value".into()
                ),
                (
                    "spec.ephemeralContainers[0].image".into(),
                    "Required value".into()
                ),
                (
                    "spec.ephemeralContainers[0].ports".into(),
                    "Forbidden".into()
                ),
                (
                    "spec.ephemeralContainers[0].targetContainerName".into(),
                    "Not found".into()
                ),
            ]
        );
    }

    #[test]
    fn the_subresource_takes_only_ephemeral_containers() {
        let old = json!({"metadata": {"name": "p", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}, "status": {"phase": "Running"}});
        let mut new = json!({"metadata": {"name": "p", "labels": {"a": "2"}, "resourceVersion": "7"},
            "spec": {"containers": [{"name": "app", "image": "y"}],
                "ephemeralContainers": [{"name": "d", "image": "busybox"}]}});
        take_ephemeral_containers(&old, &mut new);
        assert_eq!(new["metadata"]["labels"]["a"], "1");
        assert_eq!(new["metadata"]["resourceVersion"], "7");
        assert_eq!(new["spec"]["containers"][0]["image"], "x");
        assert_eq!(new["spec"]["ephemeralContainers"][0]["name"], "d");
        assert_eq!(new["status"]["phase"], "Running");
    }
}
