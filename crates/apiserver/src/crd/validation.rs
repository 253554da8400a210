//! Defaulting and validation of CustomResourceDefinition objects, with
//! upstream's field paths and messages (apiextensions' `ValidateCustomResourceDefinition`).

use serde_json::{Value, json};

use crate::strategy::Cause;
use rke2_apimachinery::validation::{is_dns1035_label, validate_dns1123_subdomain};

fn is_dns1123_subdomain(v: &str) -> bool {
    validate_dns1123_subdomain(v).is_empty()
}

fn cause(field: impl Into<String>, ty: &str, detail: impl Into<String>) -> Cause {
    (field.into(), ty.to_string(), detail.into())
}

fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Upstream's defaults: conversion `None`, singular and listKind names
/// in status only (spec keeps what the user wrote).
pub fn defaults(crd: &mut Value) {
    if !crd["spec"]["conversion"].is_object() {
        crd["spec"]["conversion"] = json!({"strategy": "None"});
    }
    if let Some(versions) = crd["spec"]["versions"].as_array_mut() {
        for v in versions {
            if let Some(cols) = v["additionalPrinterColumns"].as_array_mut() {
                for c in cols {
                    if c.get("priority").is_none() {
                        // Upstream omits a zero priority; nothing to add.
                    }
                }
            }
        }
    }
}

const COLUMN_TYPES: &[&str] = &["integer", "number", "string", "boolean", "date"];

/// Checks a whole CRD.
pub fn validate(crd: &Value, causes: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = names["plural"].as_str().unwrap_or_default();
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(cause(
            "metadata.name",
            "Invalid value",
            format!(
                "{}: must be spec.names.plural+\".\"+spec.group",
                quoted(&json!(name))
            ),
        ));
    }
    if group.is_empty() {
        causes.push(cause("spec.group", "Required value", ""));
    } else if !is_dns1123_subdomain(group) {
        causes.push(cause(
            "spec.group",
            "Invalid value",
            format!("{}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", quoted(&json!(group))),
        ));
    } else if !group.contains('.') {
        causes.push(cause(
            "spec.group",
            "Invalid value",
            format!(
                "{}: should be a domain with at least one dot",
                quoted(&json!(group))
            ),
        ));
    }
    match spec["scope"].as_str() {
        Some("Cluster" | "Namespaced") => {}
        None | Some("") => causes.push(cause("spec.scope", "Required value", "")),
        Some(other) => causes.push(cause(
            "spec.scope",
            "Unsupported value",
            format!("{other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
    }
    for (key, label) in [
        ("plural", true),
        ("singular", true),
        ("kind", false),
        ("listKind", false),
    ] {
        let v = names[key].as_str().unwrap_or_default();
        let field = format!("spec.names.{key}");
        if v.is_empty() {
            if key == "plural" || key == "kind" {
                causes.push(cause(field, "Required value", ""));
            }
            continue;
        }
        if label && !is_dns1035_label(v) {
            causes.push(cause(
                field.clone(),
                "Invalid value",
                format!("{}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')", quoted(&json!(v))),
            ));
        }
        if !label && !is_dns1035_label(&v.to_lowercase()) {
            causes.push(cause(
                field,
                "Invalid value",
                format!("{}: may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?", quoted(&json!(v))),
            ));
        }
    }
    if names["kind"].is_string() && names["kind"] == names["listKind"] {
        causes.push(cause(
            "spec.names.listKind",
            "Invalid value",
            format!(
                "{}: kind and listKind may not be the same",
                quoted(&names["listKind"])
            ),
        ));
    }
    for (i, s) in names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let v = s.as_str().unwrap_or_default();
        if !is_dns1035_label(v) {
            causes.push(cause(
                format!("spec.names.shortNames[{i}]"),
                "Invalid value",
                format!("{}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')", quoted(s)),
            ));
        }
    }
    validate_versions(spec, causes);
    match spec["conversion"]["strategy"].as_str() {
        None | Some("None") => {}
        Some("Webhook") => {
            let webhook = &spec["conversion"]["webhook"];
            if !webhook.is_object() {
                causes.push(cause(
                    "spec.conversion.webhook",
                    "Required value",
                    "must not be empty if spec.conversion.strategy is set to Webhook",
                ));
            } else if webhook["conversionReviewVersions"]
                .as_array()
                .is_none_or(|a| !a.iter().any(|v| v == "v1" || v == "v1beta1"))
            {
                causes.push(cause(
                    "spec.conversion.webhook.conversionReviewVersions",
                    "Invalid value",
                    format!(
                        "{}: must include at least one of v1, v1beta1",
                        webhook["conversionReviewVersions"]
                    ),
                ));
            }
        }
        Some(other) => causes.push(cause(
            "spec.conversion.strategy",
            "Unsupported value",
            format!("{other:?}: supported values: \"None\", \"Webhook\""),
        )),
    }
}

fn validate_versions(spec: &Value, causes: &mut Vec<Cause>) {
    let Some(versions) = spec["versions"].as_array().filter(|v| !v.is_empty()) else {
        causes.push(cause(
            "spec.versions",
            "Invalid value",
            "null: must have exactly one version marked as storage version",
        ));
        return;
    };
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if storage != 1 {
        causes.push(cause(
            "spec.versions",
            "Invalid value",
            format!(
                "{}: must have exactly one version marked as storage version",
                json!(
                    versions
                        .iter()
                        .map(|v| v["name"].clone())
                        .collect::<Vec<_>>()
                )
            ),
        ));
    }
    if !versions.iter().any(|v| v["served"] == true) {
        causes.push(cause(
            "spec.versions",
            "Invalid value",
            format!(
                "{}: must have at least one version served",
                json!(
                    versions
                        .iter()
                        .map(|v| v["name"].clone())
                        .collect::<Vec<_>>()
                )
            ),
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let name = v["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(cause(format!("{at}.name"), "Required value", ""));
        } else if !is_dns1035_label(name) {
            causes.push(cause(
                format!("{at}.name"),
                "Invalid value",
                format!("{}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')", quoted(&v["name"])),
            ));
        } else if seen.contains(&name) {
            causes.push(cause(
                format!("{at}.name"),
                "Duplicate value",
                quoted(&v["name"]),
            ));
        }
        seen.push(name);
        let schema = &v["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            causes.push(cause(
                format!("{at}.schema.openAPIV3Schema"),
                "Required value",
                "schemas are required",
            ));
        } else if let Err(errs) = super::custom::compile_schema(schema) {
            for (field, ty, detail) in errs {
                let field = if field.is_empty() {
                    format!("{at}.schema.openAPIV3Schema")
                } else if field.starts_with("spec.") {
                    field
                } else {
                    format!("{at}.schema.openAPIV3Schema.{field}")
                };
                causes.push((field, ty, detail));
            }
        }
        for (j, c) in v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cat = format!("{at}.additionalPrinterColumns[{j}]");
            if c["name"].as_str().is_none_or(str::is_empty) {
                causes.push(cause(format!("{cat}.name"), "Required value", ""));
            }
            match c["type"].as_str() {
                None | Some("") => causes.push(cause(format!("{cat}.type"), "Required value", "")),
                Some(t) if !COLUMN_TYPES.contains(&t) => causes.push(cause(
                    format!("{cat}.type"),
                    "Unsupported value",
                    format!("{t:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""),
                )),
                _ => {}
            }
            match c["jsonPath"].as_str() {
                None | Some("") => {
                    causes.push(cause(format!("{cat}.jsonPath"), "Required value", ""))
                }
                Some(p) => {
                    if let Err(e) = crate::jsonpath::check(p) {
                        causes.push(cause(
                            format!("{cat}.jsonPath"),
                            "Invalid value",
                            format!("{}: {}", quoted(&c["jsonPath"]), e.why),
                        ));
                    }
                }
            }
        }
        let fields = v["selectableFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if fields.len() > 8 {
            causes.push(cause(
                format!("{at}.selectableFields"),
                "Too many",
                format!("{}: must have at most 8 items", fields.len()),
            ));
        }
        for (j, f) in fields.iter().enumerate() {
            let p = f["jsonPath"].as_str().unwrap_or_default();
            let fat = format!("{at}.selectableFields[{j}].jsonPath");
            if p.is_empty() {
                causes.push(cause(fat, "Required value", ""));
            } else if !p.starts_with('.') || p.contains('[') {
                causes.push(cause(
                    fat,
                    "Invalid value",
                    format!(
                        "{}: must be a simple json path starting with .",
                        quoted(&f["jsonPath"])
                    ),
                ));
            }
        }
        let scale = &v["subresources"]["scale"];
        if scale.is_object() {
            for key in ["specReplicasPath", "statusReplicasPath"] {
                let p = scale[key].as_str().unwrap_or_default();
                let fat = format!("{at}.subresources.scale.{key}");
                if p.is_empty() {
                    causes.push(cause(fat, "Required value", ""));
                } else if key == "specReplicasPath" && !p.starts_with(".spec.") {
                    causes.push(cause(
                        fat,
                        "Invalid value",
                        format!("{p:?}: should be a json path under .spec"),
                    ));
                } else if key == "statusReplicasPath" && !p.starts_with(".status.") {
                    causes.push(cause(
                        fat,
                        "Invalid value",
                        format!("{p:?}: should be a json path under .status"),
                    ));
                }
            }
        }
    }
}

/// The rules an update of a CRD must keep.
pub fn validate_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    for (path, field) in [
        (&["spec", "group"][..], "spec.group"),
        (&["spec", "names", "plural"][..], "spec.names.plural"),
    ] {
        let get = |v: &Value| path.iter().fold(v.clone(), |cur, k| cur[*k].clone());
        if get(old) != get(new) {
            causes.push(cause(
                field,
                "Invalid value",
                format!("{}: field is immutable", quoted(&get(new))),
            ));
        }
    }
    if old["spec"]["scope"] != new["spec"]["scope"] {
        causes.push(cause(
            "spec.scope",
            "Invalid value",
            format!("{}: field is immutable", quoted(&new["spec"]["scope"])),
        ));
    }
    // A version still holding stored objects may not be removed.
    let names: Vec<&Value> = new["spec"]["versions"]
        .as_array()
        .map(|vs| vs.iter().map(|v| &v["name"]).collect())
        .unwrap_or_default();
    for (i, stored) in new["status"]["storedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !names.contains(&stored) {
            causes.push(cause(
                format!("status.storedVersions[{i}]"),
                "Invalid value",
                format!("{}: must appear in spec.versions", quoted(stored)),
            ));
        }
    }
}
