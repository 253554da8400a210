//! The structural schema of a CustomResourceDefinition version, and what
//! the apiserver does with it, independent of the apiserver:
//!
//! * [`Schema::compile`]: upstream's structural-schema and CRD-schema
//!   checks (the `NonStructuralSchema` condition / 422 texts, with field
//!   paths relative to `spec.versions[i].schema.openAPIV3Schema`), and the
//!   compilation of `x-kubernetes-validations` rules with their cost limits;
//! * [`Schema::prune`]: unknown fields dropped, their paths returned for the
//!   `unknown field "..."` warnings;
//! * [`Schema::apply_defaults`]: structural defaulting;
//! * [`Schema::validate`]: OpenAPI v3 validation with upstream's field
//!   paths and messages;
//! * [`Schema::validate_rules`]: the CEL rules, with transition rules;
//! * [`Schema::list_kind_at`]: list types for server-side apply;
//! * [`Schema::openapi_v3_schema`]: the published schema for `kubectl
//!   explain`.

mod build;
mod defaults;
mod openapi;
pub use openapi::OBJECT_META_REF;
mod prune;
mod rules;
mod validate;

use std::collections::BTreeMap;

pub use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;

/// One validation failure, as upstream's `field.Error`: the field path, the
/// error type's text and the detail (which, for types that show the
/// value, starts with the value: `"string": spec.x in body must be ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path (`spec.replicas`, `properties[spec].type`).
    pub field: String,
    /// `Invalid value`, `Required value`, `Unsupported value`, `Duplicate
    /// value`, `Forbidden`, `Too long`, `Too many`, `Internal error`.
    pub kind: String,
    /// What follows the type (may be empty).
    pub detail: String,
}

impl FieldError {
    fn new(field: &str, kind: &str, detail: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            kind: kind.to_string(),
            detail: detail.into(),
        }
    }

    /// `Invalid value: <value>: <detail>`.
    pub(crate) fn invalid(field: &str, value: &Value, detail: &str) -> FieldError {
        FieldError::new(
            field,
            "Invalid value",
            format!("{}: {detail}", go_value(value)),
        )
    }

    /// `Required value` with an optional detail.
    pub(crate) fn required(field: &str, detail: &str) -> FieldError {
        FieldError::new(field, "Required value", detail)
    }

    /// `Forbidden: <detail>`.
    pub(crate) fn forbidden(field: &str, detail: &str) -> FieldError {
        FieldError::new(field, "Forbidden", detail)
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub(crate) fn not_supported(field: &str, value: &Value, supported: &[String]) -> FieldError {
        let mut detail = go_value(value);
        if !supported.is_empty() {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            detail.push_str(&format!(": supported values: {}", quoted.join(", ")));
        }
        FieldError::new(field, "Unsupported value", detail)
    }

    /// `Duplicate value: <value>`.
    pub(crate) fn duplicate(field: &str, value: &Value) -> FieldError {
        FieldError::new(field, "Duplicate value", go_value(value))
    }

    /// The same error with its path under `prefix`, e.g.
    /// `spec.versions[0].schema.openAPIV3Schema`.
    pub fn under(&self, prefix: &str) -> FieldError {
        FieldError {
            field: join_path(prefix, &self.field),
            ..self.clone()
        }
    }

    /// The `(field, type, detail)` triple the apiserver's `ApiError::invalid`
    /// takes.
    pub fn to_cause(&self) -> (String, String, String) {
        (self.field.clone(), self.kind.clone(), self.detail.clone())
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}: {}", self.field, self.kind)
        } else {
            write!(f, "{}: {}: {}", self.field, self.kind, self.detail)
        }
    }
}

/// `prefix` then `rest`, with a dot between unless `rest` starts an index.
fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// `path.name` (or `name` at the root).
pub(crate) fn child(path: &str, name: &str) -> String {
    join_path(path, name)
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `path[key]`, as upstream's `Path.Key`.
pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// A string as Go's `%q` prints it.
pub(crate) fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// A value as upstream's `field.Error` prints it: strings quoted, numbers
/// and booleans bare, anything else as JSON.
pub(crate) fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// How server-side apply merges a list (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole (the default).
    Atomic,
    /// Merged as a set of scalars.
    Set,
    /// Merged by the values of these keys (`x-kubernetes-list-map-keys`).
    Map(Vec<String>),
}

/// One compiled `x-kubernetes-validations` rule.
pub(crate) struct Rule {
    pub(crate) rule: String,
    pub(crate) program: rke2_cel::Program,
    pub(crate) message: Option<String>,
    pub(crate) message_expression: Option<rke2_cel::Program>,
    pub(crate) reason: Option<String>,
    pub(crate) field_path: Option<String>,
    pub(crate) optional_old_self: bool,
    pub(crate) transition: bool,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule").field("rule", &self.rule).finish()
    }
}

/// A node of the compiled schema: the structural part (type, properties,
/// items, additionalProperties, extensions, default) and the value
/// validations that apply at it.
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) ty: Option<String>,
    pub(crate) nullable: bool,
    pub(crate) format: Option<String>,
    pub(crate) properties: BTreeMap<String, Node>,
    /// `additionalProperties` with a schema.
    pub(crate) additional: Option<Box<Node>>,
    /// `additionalProperties: true` (keep unknown fields).
    pub(crate) additional_allowed: bool,
    pub(crate) items: Option<Box<Node>>,
    pub(crate) required: Vec<String>,
    pub(crate) preserve_unknown: bool,
    pub(crate) embedded: bool,
    pub(crate) int_or_string: bool,
    pub(crate) list_type: Option<String>,
    pub(crate) list_map_keys: Vec<String>,
    pub(crate) map_type: Option<String>,
    pub(crate) default: Option<Value>,
    pub(crate) enum_: Option<Vec<Value>>,
    pub(crate) maximum: Option<f64>,
    pub(crate) exclusive_maximum: bool,
    pub(crate) minimum: Option<f64>,
    pub(crate) exclusive_minimum: bool,
    pub(crate) multiple_of: Option<f64>,
    pub(crate) max_length: Option<i64>,
    pub(crate) min_length: Option<i64>,
    pub(crate) pattern: Option<(String, regex::Regex)>,
    pub(crate) max_items: Option<i64>,
    pub(crate) min_items: Option<i64>,
    pub(crate) unique_items: bool,
    pub(crate) max_properties: Option<i64>,
    pub(crate) min_properties: Option<i64>,
    pub(crate) all_of: Vec<Node>,
    pub(crate) any_of: Vec<Node>,
    pub(crate) one_of: Vec<Node>,
    pub(crate) not: Option<Box<Node>>,
    pub(crate) rules: Vec<Rule>,
}

/// The compiled schema of one CRD version.
#[derive(Debug)]
pub struct Schema {
    pub(crate) root: Node,
    pub(crate) raw: JSONSchemaProps,
}

impl Schema {
    /// Checks `props` as kube-apiserver checks a CRD version's
    /// `openAPIV3Schema` and compiles it. The errors' paths are relative
    /// to the schema (`properties[spec].type`); put them
    /// [`under`](FieldError::under) `spec.versions[i].schema.openAPIV3Schema`.
    pub fn compile(props: &JSONSchemaProps) -> Result<Schema, Vec<FieldError>> {
        build::compile(props)
    }

    /// Removes the fields the schema does not know (kept: the root's
    /// `apiVersion`, `kind` and `metadata`, an embedded resource's too, and
    /// whatever sits under `x-kubernetes-preserve-unknown-fields`). Gives
    /// the removed fields' paths (`spec.foo`, `spec.list[0].bar`), which
    /// kube-apiserver reports as `unknown field "spec.foo"`.
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        prune::prune(&self.root, obj)
    }

    /// Sets the schema's defaults where fields are missing (or null and not
    /// nullable), inside objects, array items and additionalProperties.
    pub fn apply_defaults(&self, obj: &mut Value) {
        defaults::apply(&self.root, obj)
    }

    /// OpenAPI v3 validation of `obj` with upstream's paths and messages.
    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate::validate(&self.root, obj, "", true, &mut errs);
        errs
    }

    /// OpenAPI validation of an update, ratcheted as upstream
    /// (`CRDValidationRatcheting`): values equal to the old value they
    /// correlate with (same property path, same map-list keys) are not
    /// checked, so objects stored under an older schema stay updatable.
    pub fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate::validate_update(&self.root, new, old, &mut errs);
        errs
    }

    /// The `x-kubernetes-validations` rules on `new`; `old` is the stored
    /// object on update: transition rules run only where an old value
    /// correlates, and rules without `oldSelf` are ratcheted (skipped where
    /// the value is unchanged).
    pub fn validate_rules(&self, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
        rules::validate(&self.root, new, old)
    }

    /// Whether the schema has any `x-kubernetes-validations` rule.
    pub fn has_rules(&self) -> bool {
        fn any(n: &Node) -> bool {
            !n.rules.is_empty()
                || n.properties.values().any(any)
                || n.items.as_deref().is_some_and(any)
                || n.additional.as_deref().is_some_and(any)
        }
        any(&self.root)
    }

    /// The list type of the array at `path` (property names from the root;
    /// array items are stepped into without naming them).
    pub fn list_kind_at(&self, path: &[&str]) -> Option<ListKind> {
        let node = self.node_at(path)?;
        if node.ty.as_deref() != Some("array") {
            return None;
        }
        Some(match node.list_type.as_deref() {
            Some("set") => ListKind::Set,
            Some("map") => ListKind::Map(node.list_map_keys.clone()),
            _ => ListKind::Atomic,
        })
    }

    /// Whether the object at `path` is an atomic map
    /// (`x-kubernetes-map-type: atomic`: server-side apply replaces it
    /// whole); `None` when `path` names no object.
    pub fn map_is_atomic_at(&self, path: &[&str]) -> Option<bool> {
        let node = self.node_at(path)?;
        (node.ty.as_deref() == Some("object")).then(|| node.map_type.as_deref() == Some("atomic"))
    }

    fn node_at(&self, path: &[&str]) -> Option<&Node> {
        let mut node = &self.root;
        for seg in path {
            while node.ty.as_deref() == Some("array") {
                node = node.items.as_deref()?;
            }
            node = node.properties.get(*seg).or(node.additional.as_deref())?;
        }
        Some(node)
    }

    /// The schema as published at `/openapi/v3/apis/<group>/<version>`
    /// (a `components.schemas` entry), with `x-kubernetes-group-version-kind`.
    pub fn openapi_v3_schema(&self, group: &str, version: &str, kind: &str) -> Value {
        openapi::schema(&self.raw, group, version, kind)
    }
}

#[cfg(test)]
mod tests;
