//! Object rules of `rbac.authorization.k8s.io/v1` Role, ClusterRole,
//! RoleBinding and ClusterRoleBinding: upstream's defaulting and
//! validation (`pkg/apis/rbac/validation`), with its field paths and
//! messages. `objects.rs` calls in here for these four kinds.

use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::schema::go_quote;

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

type Cause = (String, String, String);

fn is_binding(rt: &ResourceType) -> bool {
    matches!(rt.kind.as_str(), "RoleBinding" | "ClusterRoleBinding")
}

/// Upstream's `ValidateRBACName` (`path.IsValidPathSegmentName`): role and
/// binding names only need to be usable as one URL path segment, so
/// `system:controller:x` is a valid name.
pub fn name_problems(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// Go's `%#v` of a `[]string` (how upstream prints a list as the bad value).
fn go_string_slice(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| go_quote(s.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    format!("[]string{{{}}}", items.join(", "))
}

fn supported(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| go_quote(v))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_supported(field: String, value: &str, values: &[&str]) -> Cause {
    (
        field,
        "Unsupported value".into(),
        format!(
            "{}: supported values: {}",
            go_quote(value),
            supported(values)
        ),
    )
}

fn required(field: String, detail: &str) -> Cause {
    (field, "Required value".into(), detail.into())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn len_of(v: &Value, key: &str) -> usize {
    v.get(key).and_then(Value::as_array).map_or(0, Vec::len)
}

/// Fills in upstream's defaults: a binding's `roleRef.apiGroup` and each
/// subject's `apiGroup` (`rbac.authorization.k8s.io` for User and Group,
/// empty for ServiceAccount) when unset.
pub fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    if !is_binding(rt) {
        return;
    }
    if let Some(role_ref) = obj.get_mut("roleRef").and_then(Value::as_object_mut)
        && role_ref
            .get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        role_ref.insert("apiGroup".into(), json!(GROUP));
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
            if s.get("apiGroup")
                .and_then(Value::as_str)
                .is_some_and(|g| !g.is_empty())
            {
                continue;
            }
            match s.get("kind").and_then(Value::as_str) {
                Some("User") | Some("Group") => {
                    s.insert("apiGroup".into(), json!(GROUP));
                }
                _ => {}
            }
        }
    }
}

/// The per-kind rules (names are checked by the caller with
/// [`name_problems`]): policy rules, the aggregation rule, a binding's
/// role reference and subjects.
pub fn validate(rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
    match rt.kind.as_str() {
        "Role" | "ClusterRole" => {
            let namespaced = rt.kind == "Role";
            if let Some(rules) = obj.get("rules").and_then(Value::as_array) {
                for (i, rule) in rules.iter().enumerate() {
                    validate_rule(rule, namespaced, &format!("rules[{i}]"), causes);
                }
            }
            if !namespaced && let Some(agg) = obj.get("aggregationRule").filter(|a| !a.is_null()) {
                validate_aggregation(agg, causes);
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let namespaced = rt.kind == "RoleBinding";
            let role_ref = obj.get("roleRef").cloned().unwrap_or(json!({}));
            let group = str_of(&role_ref, "apiGroup");
            if group != GROUP {
                causes.push(not_supported("roleRef.apiGroup".into(), group, &[GROUP]));
            }
            let kind = str_of(&role_ref, "kind");
            let kinds: &[&str] = if namespaced {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !kinds.contains(&kind) {
                causes.push(not_supported("roleRef.kind".into(), kind, kinds));
            }
            let name = str_of(&role_ref, "name");
            if name.is_empty() {
                causes.push(required("roleRef.name".into(), ""));
            } else {
                for msg in name_problems(name) {
                    causes.push((
                        "roleRef.name".into(),
                        "Invalid value".into(),
                        format!("{}: {msg}", go_quote(name)),
                    ));
                }
            }
            if let Some(subjects) = obj.get("subjects").and_then(Value::as_array) {
                for (i, s) in subjects.iter().enumerate() {
                    validate_subject(s, namespaced, &format!("subjects[{i}]"), causes);
                }
            }
        }
        _ => {}
    }
}

/// Upstream's `ValidatePolicyRule`.
fn validate_rule(rule: &Value, namespaced: bool, path: &str, causes: &mut Vec<Cause>) {
    if len_of(rule, "verbs") == 0 {
        causes.push(required(
            format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    if len_of(rule, "nonResourceURLs") > 0 {
        let urls = go_string_slice(&rule["nonResourceURLs"]);
        if namespaced {
            causes.push((
                format!("{path}.nonResourceURLs"),
                "Invalid value".into(),
                format!("{urls}: namespaced rules cannot apply to non-resource URLs"),
            ));
        }
        if len_of(rule, "apiGroups") > 0
            || len_of(rule, "resources") > 0
            || len_of(rule, "resourceNames") > 0
        {
            causes.push((
                format!("{path}.nonResourceURLs"),
                "Invalid value".into(),
                format!(
                    "{urls}: rules cannot apply to both regular resources and non-resource URLs"
                ),
            ));
        }
        return;
    }
    if len_of(rule, "apiGroups") == 0 {
        causes.push(required(
            format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if len_of(rule, "resources") == 0 {
        causes.push(required(
            format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
}

/// Upstream's aggregation rule check: at least one selector, each a valid
/// label selector (`ValidateLabelSelector`).
fn validate_aggregation(agg: &Value, causes: &mut Vec<Cause>) {
    const BASE: &str = "aggregationRule.clusterRoleSelectors";
    let selectors = agg
        .get("clusterRoleSelectors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if selectors.is_empty() {
        causes.push(required(
            BASE.into(),
            "at least one clusterRoleSelector required if aggregationRule is non-nil",
        ));
    }
    for (i, sel) in selectors.iter().enumerate() {
        validate_label_selector(sel, &format!("{BASE}[{i}]"), causes);
    }
}

/// Upstream's `ValidateLabelSelector`: requirement operators, their
/// values, and label keys and values.
pub fn validate_label_selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    use rke2_apimachinery::validation as v;
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for (j, e) in exprs.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{j}]");
            let op = str_of(e, "operator");
            let values = len_of(e, "values");
            match op {
                "In" | "NotIn" if values == 0 => causes.push(required(
                    format!("{at}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )),
                "Exists" | "DoesNotExist" if values > 0 => causes.push((
                    format!("{at}.values"),
                    "Forbidden".into(),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'".into(),
                )),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => causes.push(not_supported(
                    format!("{at}.operator"),
                    other,
                    &["In", "NotIn", "Exists", "DoesNotExist"],
                )),
            }
            let key = str_of(e, "key");
            for msg in v::validate_label_key(key) {
                causes.push((
                    format!("{at}.key"),
                    "Invalid value".into(),
                    format!("{}: {msg}", go_quote(key)),
                ));
            }
        }
    }
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, val) in labels {
            for msg in v::validate_label_key(k) {
                causes.push((
                    format!("{path}.matchLabels"),
                    "Invalid value".into(),
                    format!("{}: {msg}", go_quote(k)),
                ));
            }
            let s = val.as_str().unwrap_or("");
            for msg in v::validate_label_value(s) {
                causes.push((
                    format!("{path}.matchLabels"),
                    "Invalid value".into(),
                    format!("{}: {msg}", go_quote(s)),
                ));
            }
        }
    }
}

/// Upstream's `ValidateRoleBindingSubject`.
fn validate_subject(s: &Value, namespaced: bool, path: &str, causes: &mut Vec<Cause>) {
    let name = str_of(s, "name");
    let group = str_of(s, "apiGroup");
    if name.is_empty() {
        causes.push(required(format!("{path}.name"), ""));
    }
    match str_of(s, "kind") {
        "ServiceAccount" => {
            if !name.is_empty() {
                for msg in rke2_apimachinery::validation::validate_dns1123_subdomain(name) {
                    causes.push((
                        format!("{path}.name"),
                        "Invalid value".into(),
                        format!("{}: {msg}", go_quote(name)),
                    ));
                }
            }
            if !group.is_empty() {
                causes.push(not_supported(format!("{path}.apiGroup"), group, &[""]));
            }
            if !namespaced && str_of(s, "namespace").is_empty() {
                causes.push(required(format!("{path}.namespace"), ""));
            }
        }
        "User" | "Group" => {
            if group != GROUP {
                causes.push(not_supported(format!("{path}.apiGroup"), group, &[GROUP]));
            }
        }
        other => causes.push(not_supported(
            format!("{path}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// Go's `%#v` of upstream's internal `rbac.RoleRef`, the bad value in the
/// `cannot change roleRef` message.
fn role_ref_go(r: &Value) -> String {
    format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        go_quote(str_of(r, "apiGroup")),
        go_quote(str_of(r, "kind")),
        go_quote(str_of(r, "name"))
    )
}

/// The update rule: a binding's `roleRef` never changes (upstream's
/// `cannot change roleRef`; delete and recreate the binding instead).
pub fn validate_update(rt: &ResourceType, old: &Value, new: &Value) -> Vec<Cause> {
    if !is_binding(rt) {
        return Vec::new();
    }
    let fields = |r: &Value| {
        (
            str_of(r, "apiGroup").to_string(),
            str_of(r, "kind").to_string(),
            str_of(r, "name").to_string(),
        )
    };
    let null = Value::Null;
    let old_ref = old.get("roleRef").unwrap_or(&null);
    let new_ref = new.get("roleRef").unwrap_or(&null);
    if fields(old_ref) == fields(new_ref) {
        return Vec::new();
    }
    vec![(
        "roleRef".into(),
        "Invalid value".into(),
        format!("{}: cannot change roleRef", role_ref_go(new_ref)),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects;
    use crate::registry::find;

    fn rt(plural: &str) -> &'static ResourceType {
        find(GROUP, "v1", plural).unwrap()
    }

    /// The 422 message `objects::validate` gives after defaulting, or "".
    fn message(plural: &str, mut obj: Value) -> String {
        let rt = rt(plural);
        objects::apply_defaults(rt, &mut obj);
        match objects::validate(rt, &obj) {
            Ok(()) => String::new(),
            Err(e) => {
                assert_eq!(e.code, 422);
                e.message
            }
        }
    }

    #[test]
    fn names_only_need_to_be_path_segments() {
        let role = |name: &str| json!({"metadata": {"name": name, "namespace": "d"}, "rules": []});
        assert_eq!(message("roles", role("system:controller:x")), "");
        assert_eq!(message("clusterroles", role("Weird_Name")), "");
        assert_eq!(
            message("roles", role("a/b%")),
            "Role.rbac.authorization.k8s.io \"a/b%\" is invalid: [metadata.name: Invalid value: \"a/b%\": may not contain '/', metadata.name: Invalid value: \"a/b%\": may not contain '%']"
        );
        assert_eq!(name_problems(".."), vec!["may not be '..'"]);
    }

    #[test]
    fn rules_need_verbs_and_resources_or_urls() {
        let cr = |rules: Value| json!({"metadata": {"name": "c"}, "rules": rules});
        assert_eq!(
            message(
                "clusterroles",
                cr(json!([{"apiGroups": [""], "resources": ["pods"]}]))
            ),
            "ClusterRole.rbac.authorization.k8s.io \"c\" is invalid: rules[0].verbs: Required value: verbs must contain at least one value"
        );
        assert_eq!(
            message("clusterroles", cr(json!([{"verbs": ["get"]}]))),
            "ClusterRole.rbac.authorization.k8s.io \"c\" is invalid: [rules[0].apiGroups: Required value: resource rules must supply at least one api group, rules[0].resources: Required value: resource rules must supply at least one resource]"
        );
        assert_eq!(
            message(
                "clusterroles",
                cr(
                    json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/livez"], "resources": ["pods"]}])
                )
            ),
            "ClusterRole.rbac.authorization.k8s.io \"c\" is invalid: rules[0].nonResourceURLs: Invalid value: []string{\"/healthz\", \"/livez\"}: rules cannot apply to both regular resources and non-resource URLs"
        );
        let role = json!({"metadata": {"name": "r", "namespace": "d"},
            "rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        assert_eq!(
            message("roles", role),
            "Role.rbac.authorization.k8s.io \"r\" is invalid: rules[0].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs"
        );
        assert_eq!(
            message(
                "clusterroles",
                cr(json!([{"verbs": ["get"], "nonResourceURLs": ["/metrics"]},
                          {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]))
            ),
            ""
        );
    }

    #[test]
    fn aggregation_rules_need_valid_selectors() {
        let cr = |agg: Value| json!({"metadata": {"name": "c"}, "aggregationRule": agg});
        assert_eq!(
            message("clusterroles", cr(json!({}))),
            "ClusterRole.rbac.authorization.k8s.io \"c\" is invalid: aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
        );
        assert_eq!(
            message(
                "clusterroles",
                cr(
                    json!({"clusterRoleSelectors": [{"matchExpressions": [{"key": "a", "operator": "Is"}]}]})
                )
            ),
            "ClusterRole.rbac.authorization.k8s.io \"c\" is invalid: aggregationRule.clusterRoleSelectors[0].matchExpressions[0].operator: Unsupported value: \"Is\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
        );
        assert_eq!(
            message(
                "clusterroles",
                cr(
                    json!({"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-x": "true"}}]})
                )
            ),
            ""
        );
    }

    #[test]
    fn bindings_check_role_ref_and_subjects() {
        let rb = |role_ref: Value, subjects: Value| json!({"metadata": {"name": "b", "namespace": "d"}, "roleRef": role_ref, "subjects": subjects});
        // Defaults fill both API groups; a namespace-less ServiceAccount is
        // fine in a RoleBinding.
        assert_eq!(
            message(
                "rolebindings",
                rb(
                    json!({"kind": "ClusterRole", "name": "view"}),
                    json!([{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                           {"kind": "ServiceAccount", "name": "default"}])
                )
            ),
            ""
        );
        assert_eq!(
            message(
                "rolebindings",
                rb(
                    json!({"apiGroup": "rbac", "kind": "Rol", "name": ""}),
                    json!([{"kind": "Robot", "name": "r"},
                           {"kind": "ServiceAccount", "name": "Bad_Name", "apiGroup": "v1"},
                           {"kind": "User", "name": "", "apiGroup": "x"}])
                )
            ),
            "RoleBinding.rbac.authorization.k8s.io \"b\" is invalid: [roleRef.apiGroup: Unsupported value: \"rbac\": supported values: \"rbac.authorization.k8s.io\", roleRef.kind: Unsupported value: \"Rol\": supported values: \"Role\", \"ClusterRole\", roleRef.name: Required value, subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\", subjects[1].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'), subjects[1].apiGroup: Unsupported value: \"v1\": supported values: \"\", subjects[2].name: Required value, subjects[2].apiGroup: Unsupported value: \"x\": supported values: \"rbac.authorization.k8s.io\"]"
        );
        let crb = json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "x"},
            "subjects": [{"kind": "ServiceAccount", "name": "default"}]});
        assert_eq!(
            message("clusterrolebindings", crb),
            "ClusterRoleBinding.rbac.authorization.k8s.io \"b\" is invalid: [roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\", subjects[0].namespace: Required value]"
        );
    }

    #[test]
    fn subjects_get_their_api_group_by_kind() {
        let mut rb = json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "v"},
            "subjects": [{"kind": "User", "name": "a"}, {"kind": "ServiceAccount", "name": "s"},
                         {"kind": "Group", "name": "g", "apiGroup": "kept"}]});
        apply_defaults(rt("clusterrolebindings"), &mut rb);
        assert_eq!(rb["roleRef"]["apiGroup"], GROUP);
        assert_eq!(rb["subjects"][0]["apiGroup"], GROUP);
        assert!(rb["subjects"][1].get("apiGroup").is_none());
        assert_eq!(rb["subjects"][2]["apiGroup"], "kept");
    }

    #[test]
    fn role_ref_cannot_change() {
        let rt = rt("rolebindings");
        let old = json!({"metadata": {"name": "b", "namespace": "d", "uid": "u", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "edit"}, "subjects": []});
        let mut new = old.clone();
        new["subjects"] = json!([{"kind": "User", "name": "bob"}]);
        objects::prepare_update(rt, &old, &mut new, false);
        assert!(objects::validate(rt, &new).is_ok());
        let mut new = old.clone();
        new["roleRef"]["name"] = json!("view");
        objects::prepare_update(rt, &old, &mut new, false);
        assert_eq!(
            objects::validate(rt, &new).unwrap_err().message,
            "RoleBinding.rbac.authorization.k8s.io \"b\" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"view\"}: cannot change roleRef"
        );
    }
}
