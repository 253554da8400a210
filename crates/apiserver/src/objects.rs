//! Per-type defaulting and validation of objects, and the metadata the
//! server owns (uid, creationTimestamp, generation, resourceVersion).

use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::status::ApiError;

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format(RFC3339_SECONDS).to_string()
}

/// Unix seconds as an API timestamp (`2024-05-01T10:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format(RFC3339_SECONDS).to_string())
        .unwrap_or_default()
}

/// The API's timestamp format: RFC 3339 in UTC, whole seconds.
const RFC3339_SECONDS: &str = "%Y-%m-%dT%H:%M:%SZ";

/// `metadata.name` of an object ("" when absent).
pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// Sets `metadata.resourceVersion` and the type fields on a stored object.
/// The version served is written over the stored one (`None` conversion),
/// unless a conversion (a webhook, a built-in one) must see the stored
/// one: then the handler converts ([`crate::crd::conversion`]).
pub fn decorate(rt: &ResourceType, obj: &mut Value, rv: i64) {
    let webhook =
        rt.strategy.conversion_webhook().is_some() || rt.strategy.convert_version().is_some();
    if let Some(m) = obj.as_object_mut() {
        if !(webhook && m.get("apiVersion").is_some_and(Value::is_string)) {
            m.insert("apiVersion".into(), json!(rt.api_version()));
        }
        m.insert("kind".into(), json!(rt.kind));
    }
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

/// Parses stored bytes into an object with its resourceVersion.
pub fn from_stored(rt: &ResourceType, bytes: &[u8], rv: i64) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("corrupt stored object: {e}")))?;
    decorate(rt, &mut obj, rv);
    Ok(obj)
}

/// The bytes stored for an object (no resourceVersion: etcd holds it).
pub fn to_stored(obj: &Value) -> Vec<u8> {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).unwrap_or_default()
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<(String, String, String)>) -> ApiError {
    ApiError::invalid(&rt.kind, name, rt, &causes)
}

/// Checks the body's type fields against the URL and fills them in.
pub fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let api_version = rt.api_version();
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    if obj["metadata"].is_null() {
        obj["metadata"] = json!({});
    }
    check_shape(rt, obj)
}

/// Fields the server reads or defaults must be objects (or lists) when
/// present: like kube-apiserver's decoder, a string where a map belongs is
/// a 400 naming the field, never a crash later on.
fn check_shape(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    const MAPS: &[&str] = &[
        "metadata",
        "metadata.labels",
        "metadata.annotations",
        "spec",
        "status",
        "data",
        "stringData",
        "binaryData",
        "spec.selector",
        "spec.template",
        "spec.template.metadata",
        "spec.template.metadata.labels",
        "spec.template.spec",
        "spec.strategy",
        "spec.updateStrategy",
        "spec.nodeSelector",
        "spec.securityContext",
    ];
    const LISTS: &[&str] = &[
        "spec.containers",
        "spec.template.spec.containers",
        "spec.ports",
    ];
    let kind_of = |v: &Value| match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Object(_) => "object",
        Value::Null => "null",
    };
    let at = |path: &str| path.split('.').try_fold(obj, |cur, part| cur.get(part));
    let wrong = MAPS
        .iter()
        .filter_map(|p| {
            at(p)
                .filter(|v| !v.is_null() && !v.is_object())
                .map(|v| (*p, "object", kind_of(v)))
        })
        .chain(LISTS.iter().filter_map(|p| {
            at(p)
                .filter(|v| !v.is_null() && !v.is_array())
                .map(|v| (*p, "list", kind_of(v)))
        }))
        .next();
    match wrong {
        None => Ok(()),
        Some((path, want, got)) => Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {path}: expected {want}, got {got}",
            kind = rt.kind,
            v = rt.version
        ))),
    }
}

/// Validates names, labels and the per-type rules; 422 naming each field.
pub fn validate(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    use rke2_apimachinery::validation as v;
    let name = name_of(obj);
    let mut causes: Vec<(String, String, String)> = Vec::new();
    if name.is_empty() {
        causes.push((
            "metadata.name".into(),
            "Required value".into(),
            "name or generateName is required".into(),
        ));
    } else {
        let problems = rt.strategy.name_problems(name);
        for msg in problems {
            causes.push((
                "metadata.name".into(),
                "Invalid value".into(),
                format!("\"{name}\": {msg}"),
            ));
        }
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, val) in labels {
            for msg in v::validate_label_key(k) {
                causes.push((
                    "metadata.labels".into(),
                    "Invalid value".into(),
                    format!("\"{k}\": {msg}"),
                ));
            }
            match val.as_str() {
                Some(s) => {
                    for msg in v::validate_label_value(s) {
                        causes.push((
                            format!("metadata.labels[{k}]"),
                            "Invalid value".into(),
                            format!("\"{s}\": {msg}"),
                        ));
                    }
                }
                None => causes.push((
                    format!("metadata.labels[{k}]"),
                    "Invalid value".into(),
                    "label values must be strings".into(),
                )),
            }
        }
    }
    validate_annotations(obj, &mut causes);
    validate_owners_and_finalizers(obj, &mut causes);
    validate_managed_fields(obj, &mut causes);
    if let Some(found) = obj.get(UPDATE_VIOLATIONS).and_then(Value::as_array) {
        for c in found {
            let part = |i: usize| c[i].as_str().unwrap_or("").to_string();
            causes.push((part(0), part(1), part(2)));
        }
    }
    rt.strategy.validate(rt, obj, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(rt, name, causes))
    }
}

/// The most all annotations of an object may hold together (key and
/// value bytes), upstream's `TotalAnnotationSizeLimitB`.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// The most a ConfigMap's or Secret's data may hold (`MaxSecretSize`).
pub(crate) const MAX_DATA_BYTES: usize = 1024 * 1024;

/// The longest field manager name (`FieldManagerMaxLength`).
const MAX_FIELD_MANAGER: usize = 128;

/// upstream's `TooLong` detail.
pub(crate) fn too_long(max: usize) -> String {
    format!("may not be more than {max} bytes")
}

pub(crate) fn quoted(s: &str) -> String {
    crate::schema::go_quote(s)
}

/// Annotation keys are qualified names (checked lower-cased, as upstream)
/// and all annotations together stay within 256 KiB.
fn validate_annotations(obj: &Value, causes: &mut Vec<(String, String, String)>) {
    let Some(annotations) = obj["metadata"]["annotations"].as_object() else {
        return;
    };
    let mut total = 0;
    for (k, v) in annotations {
        for msg in rke2_apimachinery::validation::validate_label_key(&k.to_lowercase()) {
            causes.push((
                "metadata.annotations".into(),
                "Invalid value".into(),
                format!("{}: {msg}", quoted(k)),
            ));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > MAX_ANNOTATIONS_BYTES {
        causes.push((
            "metadata.annotations".into(),
            "Too long".into(),
            too_long(MAX_ANNOTATIONS_BYTES),
        ));
    }
}

/// Owner references name an owner fully (the garbage collector deletes
/// what a dangling reference points from) with at most one controller, and
/// finalizers are qualified names (upstream's `ValidateOwnerReferences`,
/// `ValidateFinalizers`).
fn validate_owners_and_finalizers(obj: &Value, causes: &mut Vec<(String, String, String)>) {
    let meta = &obj["metadata"];
    let mut controllers = Vec::new();
    for r in meta["ownerReferences"].as_array().into_iter().flatten() {
        let field = |k: &str| r[k].as_str().unwrap_or("");
        let version = field("apiVersion").rsplit('/').next().unwrap_or("");
        for (key, empty, what) in [
            ("apiVersion", version.is_empty(), "version"),
            ("kind", field("kind").is_empty(), "kind"),
            ("name", field("name").is_empty(), "name"),
            ("uid", field("uid").is_empty(), "uid"),
        ] {
            if empty {
                causes.push((
                    format!("metadata.ownerReferences.{key}"),
                    "Invalid value".into(),
                    format!("{}: {what} must not be empty", quoted(field(key))),
                ));
            }
        }
        if r["controller"].as_bool() == Some(true) {
            controllers.push(format!("{}/{}", field("kind"), field("name")));
        }
    }
    if controllers.len() > 1 {
        causes.push((
            "metadata.ownerReferences".into(),
            "Invalid value".into(),
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
    for f in meta["finalizers"].as_array().into_iter().flatten() {
        let f = f.as_str().unwrap_or("");
        for msg in rke2_apimachinery::validation::validate_label_key(f) {
            causes.push((
                "metadata.finalizers".into(),
                "Invalid value".into(),
                format!("{}: {msg}", quoted(f)),
            ));
        }
    }
}

/// A field manager name: at most 128 bytes of printable characters
/// (upstream's `ValidateFieldManager`), as causes at `field`.
pub fn field_manager_problems(manager: &str, field: &str) -> Vec<(String, String, String)> {
    let mut causes = Vec::new();
    if manager.len() > MAX_FIELD_MANAGER {
        causes.push((field.into(), "Too long".into(), too_long(MAX_FIELD_MANAGER)));
    }
    for (i, c) in manager.char_indices() {
        // Go's unicode.IsPrint: no controls, and no spaces but ' '.
        if c != ' ' && (c.is_control() || c.is_whitespace()) {
            causes.push((
                field.into(),
                "Invalid value".into(),
                format!(
                    "{}: invalid character U+{:04X} (at position {i})",
                    quoted(manager),
                    c as u32
                ),
            ));
        }
    }
    causes
}

/// 422 for bad write options (`CreateOptions.meta.k8s.io "" is invalid: ...`).
pub fn options_invalid(options_kind: &str, causes: &[(String, String, String)]) -> ApiError {
    let parts: Vec<String> = causes
        .iter()
        .map(|(f, t, d)| format!("{f}: {t}: {d}"))
        .collect();
    let joined = match parts.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", parts.join(", ")),
    };
    ApiError::new(
        422,
        "Invalid",
        format!("{options_kind}.meta.k8s.io \"\" is invalid: {joined}"),
    )
}

/// `managedFields` a client sent: operations `Apply` or `Update`,
/// `fieldsType` `FieldsV1`, valid manager names, short subresources
/// (upstream's `ValidateManagedFields`).
fn validate_managed_fields(obj: &Value, causes: &mut Vec<(String, String, String)>) {
    let Some(entries) = obj["metadata"]["managedFields"].as_array() else {
        return;
    };
    for (i, e) in entries.iter().enumerate() {
        let at = format!("metadata.managedFields[{i}]");
        let op = e["operation"].as_str().unwrap_or("");
        if !matches!(op, "Apply" | "Update") {
            causes.push((
                format!("{at}.operation"),
                "Invalid value".into(),
                format!("{}: must be `Apply` or `Update`", quoted(op)),
            ));
        }
        let ty = e["fieldsType"].as_str().unwrap_or("");
        if !ty.is_empty() && ty != "FieldsV1" {
            causes.push((
                format!("{at}.fieldsType"),
                "Invalid value".into(),
                format!("{}: must be `FieldsV1`", quoted(ty)),
            ));
        }
        causes.extend(field_manager_problems(
            e["manager"].as_str().unwrap_or(""),
            &format!("{at}.manager"),
        ));
        if e["subresource"].as_str().map_or(0, str::len) > 256 {
            causes.push((
                format!("{at}.subresource"),
                "Too long".into(),
                too_long(256),
            ));
        }
    }
}

/// Fills in the per-type defaults kube-apiserver applies (the type's
/// [`crate::strategy::Strategy::defaults`]).
pub fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    rt.strategy.defaults(rt, obj);
}

/// Sets `metadata.name` from `generateName` plus five random characters,
/// the prefix cut to 58 characters so the name fits 63 (upstream's
/// `SimpleNameGenerator`). Does nothing without a `generateName`.
pub fn generate_name(obj: &mut Value) {
    const MAX_PREFIX: usize = 63 - 5;
    let meta = &mut obj["metadata"];
    let Some(prefix) = meta["generateName"].as_str() else {
        return;
    };
    let cut = prefix
        .char_indices()
        .nth(MAX_PREFIX)
        .map_or(prefix, |(i, _)| &prefix[..i]);
    meta["name"] = json!(format!("{cut}{}", random_suffix(5)));
}

/// Prepares a new object for storage: generateName, uid, timestamps.
pub fn prepare_create(
    rt: &ResourceType,
    obj: &mut Value,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    // Only the server may set it (see `UPDATE_VIOLATIONS`).
    if let Some(m) = obj.as_object_mut() {
        m.remove(UPDATE_VIOLATIONS);
    }
    if obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
        generate_name(obj);
    }
    let meta = &mut obj["metadata"];
    if rt.namespaced {
        let ns = namespace.unwrap_or("default");
        match meta["namespace"].as_str() {
            None | Some("") => meta["namespace"] = json!(ns),
            Some(n) if n == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if rt.tracks_generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    apply_defaults(rt, obj);
    Ok(())
}

/// Carries the server-owned fields of `old` into an update, and bumps the
/// generation when the spec changed. `status_only` keeps everything but
/// the status (the `status` subresource); otherwise a type with a status
/// subresource keeps its old status.
pub fn prepare_update(rt: &ResourceType, old: &Value, new: &mut Value, status_only: bool) {
    // Only the server may set it (see `UPDATE_VIOLATIONS`).
    if let Some(m) = new.as_object_mut() {
        m.remove(UPDATE_VIOLATIONS);
    }
    if status_only {
        let status = new["status"].clone();
        *new = old.clone();
        new["status"] = status;
        return;
    }
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old["metadata"].get(k) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    rt.strategy.carry_over(old, new);
    if rt.status_subresource {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    apply_defaults(rt, new);
    if rt.tracks_generation && rt.strategy.bumps_generation(old, new) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    let violations = validate_update(rt, old, new);
    if !violations.is_empty() {
        new[UPDATE_VIOLATIONS] = json!(
            violations
                .into_iter()
                .map(|(f, t, d)| json!([f, t, d]))
                .collect::<Vec<_>>()
        );
    }
}

/// Adds a cause to the update rules `new` breaks (see
/// [`UPDATE_VIOLATIONS`]) for a rule a strategy can only judge in its
/// `prepare_update`, unless the same cause is there already.
pub(crate) fn add_update_violation(new: &mut Value, (f, t, d): (String, String, String)) {
    let cause = json!([f, t, d]);
    if !new.is_object() {
        // Refused by the type check anyway.
        return;
    }
    if !new[UPDATE_VIOLATIONS].is_array() {
        new[UPDATE_VIOLATIONS] = json!([]);
    }
    if let Some(list) = new[UPDATE_VIOLATIONS].as_array_mut()
        && !list.contains(&cause)
    {
        list.push(cause);
    }
}

/// Where [`prepare_update`] leaves the update rules an object broke for
/// [`validate`] to report: every update path runs `prepare_update` (which
/// cannot fail) and then `validate` (which only sees the new object), so
/// this is how a rule comparing old and new becomes the 422. An object
/// carrying it is always refused, so it never reaches storage or a client.
pub(crate) const UPDATE_VIOLATIONS: &str = "__rke2UpdateViolations";

/// The rules that compare an update with the stored object (upstream's
/// `ValidateUpdate`), as the type's
/// [`crate::strategy::Strategy::validate_update`] has them.
pub fn validate_update(
    rt: &ResourceType,
    old: &Value,
    new: &Value,
) -> Vec<(String, String, String)> {
    let mut causes = Vec::new();
    rt.strategy.validate_update(rt, old, new, &mut causes);
    causes
}

pub(crate) fn random_suffix(n: usize) -> String {
    use rand::Rng;
    // Same alphabet as apimachinery's utilrand: no vowels, no confusables.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn deployment_selector_must_match_template() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let e = validate(rt, &d).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("spec.template.metadata.labels"),
            "{}",
            e.message
        );
        let d2 = json!({"metadata": {"name": "web"}, "spec": {"replicas": -1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let e = validate(rt, &d2).unwrap_err();
        assert!(e.message.contains("spec.replicas"), "{}", e.message);
    }

    #[test]
    fn pod_spec_is_fixed_but_for_images_deadlines_and_tolerations() {
        let rt = find("", "v1", "pods").unwrap();
        let old = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "a:1"}],
            "initContainers": [{"name": "i", "image": "b:1"}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": []}}]}});
        let update = |f: &dyn Fn(&mut Value)| {
            let mut new = old.clone();
            f(&mut new);
            prepare_update(rt, &old, &mut new, false);
            validate(rt, &new)
        };
        // Allowed: images, a deadline, one more toleration, metadata.
        update(&|p| {
            p["spec"]["containers"][0]["image"] = json!("a:2");
            p["spec"]["initContainers"][0]["image"] = json!("b:2");
            p["spec"]["activeDeadlineSeconds"] = json!(30);
            p["spec"]["tolerations"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": "j", "operator": "Exists"}));
            p["metadata"]["labels"] = json!({"x": "y"});
        })
        .unwrap();
        // Refused: a dropped volume (a replace without the admission's
        // token volume), a changed command, a removed toleration.
        for (what, f) in [
            (
                "volumes",
                &(|p: &mut Value| p["spec"]["volumes"] = json!([])) as &dyn Fn(&mut Value),
            ),
            ("command", &|p: &mut Value| {
                p["spec"]["containers"][0]["command"] = json!(["sh"])
            }),
            ("tolerations", &|p: &mut Value| {
                p["spec"]["tolerations"] = json!([])
            }),
        ] {
            let e = update(f).unwrap_err();
            assert_eq!(e.code, 422, "{what}");
            assert!(
                e.message
                    .contains("spec: Forbidden: pod updates may not change fields"),
                "{what}: {}",
                e.message
            );
        }
    }

    #[test]
    fn invalid_name_is_422_naming_metadata_name() {
        let rt = find("", "v1", "configmaps").unwrap();
        let e = validate(rt, &json!({"metadata": {"name": "Bad_Name"}})).unwrap_err();
        assert!(
            e.message
                .starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name"),
            "{}",
            e.message
        );
    }

    #[test]
    fn update_keeps_uid_and_bumps_generation_on_spec_change() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "a", "uid": "u1", "generation": 3, "creationTimestamp": "t"}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "a", "uid": "other"}, "spec": {"replicas": 2}, "status": {"replicas": 9}});
        prepare_update(rt, &old, &mut new, false);
        assert_eq!(new["metadata"]["uid"], "u1");
        assert_eq!(new["metadata"]["generation"], 4);
        assert_eq!(new["status"]["replicas"], 1);
    }

    #[test]
    fn node_pod_cidr_may_be_set_once_but_not_changed() {
        let rt = find("", "v1", "nodes").unwrap();
        let node = |spec: Value| json!({"metadata": {"name": "n1", "uid": "u"}, "spec": spec});
        let update = |old: &Value, mut new: Value| {
            prepare_update(rt, old, &mut new, false);
            validate(rt, &new)
        };
        let unset = node(json!({}));
        let set = node(json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}));
        // "" -> valid, and unchanged, are fine; nothing is left behind.
        let mut ok = set.clone();
        prepare_update(rt, &unset, &mut ok, false);
        assert!(ok.get(UPDATE_VIOLATIONS).is_none());
        assert!(validate(rt, &ok).is_ok());
        assert!(update(&set, set.clone()).is_ok());
        assert!(
            update(
                &set,
                node(json!({"podCIDRs": ["10.42.1.0/24"], "taints": []}))
            )
            .is_ok()
        );
        for changed in [
            json!({"podCIDR": "10.42.2.0/24", "podCIDRs": ["10.42.2.0/24"]}),
            json!({}),
            json!({"podCIDR": "10.42.2.0/24", "podCIDRs": ["10.42.1.0/24"]}),
            json!({"podCIDRs": ["10.42.1.0/24", "fd00::/64"]}),
        ] {
            let e = update(&set, node(changed.clone())).unwrap_err();
            assert_eq!(e.code, 422, "{changed}");
            assert_eq!(
                e.message,
                "Node \"n1\" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
                "{changed}"
            );
        }
        // A client cannot smuggle the marker in.
        let mut forged = set.clone();
        forged[UPDATE_VIOLATIONS] = json!([["spec", "Forbidden", "x"]]);
        assert!(update(&set, forged).is_ok());
        // Only the singular field stored: still counts as set.
        let legacy = node(json!({"podCIDR": "10.42.1.0/24"}));
        assert!(update(&legacy, node(json!({"podCIDR": "10.42.3.0/24"}))).is_err());
        // The status subresource cannot touch spec at all.
        let mut status = node(json!({}));
        prepare_update(rt, &set, &mut status, true);
        assert!(validate(rt, &status).is_ok());
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let rt = find("", "v1", "secrets").unwrap();
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}});
        prepare_create(rt, &mut s, Some("default")).unwrap();
        assert_eq!(s["data"]["a"], "Yg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }
}
