//! Typed checks of objects against the served version's schema (the
//! k8s-openapi types), and the `fieldValidation` directive.
//!
//! kube-apiserver decodes every written object into its Go type, so a
//! value of the wrong type is refused and an unknown field is dropped (or
//! reported, or refused: `fieldValidation=Ignore|Warn|Strict`). Objects
//! here stay JSON values, so the same decode is done against the
//! k8s-openapi struct of the type: a decode error becomes the refusal, and
//! the fields the typed decode skipped are the unknown fields.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::status::ApiError;

/// How unknown and duplicate fields in a write are handled
/// (`fieldValidation`; upstream's default is `Warn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Dropped silently.
    Ignore,
    /// Dropped, with a `Warning` header per field.
    #[default]
    Warn,
    /// The request is refused.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; unknown values are refused as
    /// upstream's options validation does.
    pub fn parse(value: Option<&str>, options_kind: &str) -> Result<Self, ApiError> {
        match value {
            None | Some("") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{options_kind}.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: {}: supported values: \"Ignore\", \"Strict\", \"Warn\"",
                    go_quote(other)
                ),
            )),
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A struct field or map key.
    Key(String),
    /// A list element.
    Index(usize),
}

/// A path from the object root, printed as upstream prints field paths
/// (`spec.template.spec.containers[0].foo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(pub Vec<Step>);

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl FieldPath {
    fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        let mut steps = Vec::new();
        let mut cur = path;
        loop {
            match cur {
                serde_ignored::Path::Root => break,
                serde_ignored::Path::Seq { parent, index } => {
                    steps.push(Step::Index(*index));
                    cur = parent;
                }
                serde_ignored::Path::Map { parent, key } => {
                    steps.push(Step::Key(key.clone()));
                    cur = parent;
                }
                serde_ignored::Path::Some { parent }
                | serde_ignored::Path::NewtypeStruct { parent }
                | serde_ignored::Path::NewtypeVariant { parent } => cur = parent,
            }
        }
        steps.reverse();
        Self(steps)
    }

    /// The value at this path, if present.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(root, |v, step| match step {
            Step::Key(k) => v.get(k.as_str()),
            Step::Index(i) => v.get(*i),
        })
    }

    /// Removes the value at this path (nothing when absent).
    pub fn remove(&self, root: &mut Value) {
        let Some((last, parents)) = self.0.split_last() else {
            return;
        };
        let parent = parents.iter().try_fold(root, |v, step| match step {
            Step::Key(k) => v.get_mut(k.as_str()),
            Step::Index(i) => v.get_mut(*i),
        });
        if let (Some(Value::Object(m)), Step::Key(k)) = (parent, last) {
            m.shift_remove(k);
        }
    }
}

/// A value the type's schema refuses: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    /// Where the decode failed (`spec.replicas`).
    pub path: String,
    /// The decoder's complaint (`invalid type: string "three", expected i32`).
    pub message: String,
}

impl std::fmt::Display for TypeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() || self.path == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The typed check of one served type: `Ok` lists the unknown fields.
pub type Check = fn(&Value) -> Result<Vec<FieldPath>, TypeError>;

/// Decodes `obj` as `T`, as kube-apiserver decodes into the Go type.
pub fn typed<T: DeserializeOwned>(obj: &Value) -> Result<Vec<FieldPath>, TypeError> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result: Result<T, _> = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(obj, &mut track),
        |p| unknown.push(FieldPath::from_ignored(&p)),
    );
    match result {
        Ok(_) => Ok(unknown),
        Err(e) => Err(TypeError {
            path: track.path().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Keys that occur more than once in one JSON object of `body`, by path;
/// empty when the body is not JSON (its parser reported that already).
pub fn duplicate_fields(body: &[u8]) -> Vec<FieldPath> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = serde::de::DeserializeSeed::deserialize(
        DupSeed {
            path: &mut Vec::new(),
            found: &mut found,
        },
        &mut de,
    );
    found
}

struct DupSeed<'a> {
    path: &'a mut Vec<Step>,
    found: &'a mut Vec<FieldPath>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DupSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DupSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.path.push(Step::Index(i));
            let more = seq.next_element_seed(DupSeed {
                path: self.path,
                found: self.found,
            })?;
            self.path.pop();
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            self.path.push(Step::Key(key.clone()));
            if !seen.insert(key) {
                self.found.push(FieldPath(self.path.clone()));
            }
            map.next_value_seed(DupSeed {
                path: self.path,
                found: self.found,
            })?;
            self.path.pop();
        }
        Ok(())
    }
}

/// What a write's field check found that `fieldValidation` decides about.
#[derive(Debug, Default)]
pub struct StrictFindings {
    /// Fields the type does not know.
    pub unknown: Vec<FieldPath>,
    /// Keys given twice in the request body.
    pub duplicate: Vec<FieldPath>,
    /// Findings worded already (a JSON patch's own operations).
    pub other: Vec<String>,
}

impl StrictFindings {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.unknown.is_empty() && self.duplicate.is_empty() && self.other.is_empty()
    }

    /// Upstream's strict-decoding texts, in its order (the patch's own,
    /// unknown, then duplicate fields), one per field.
    pub fn messages(&self) -> Vec<String> {
        self.other
            .iter()
            .cloned()
            .chain(
                self.unknown
                    .iter()
                    .map(|p| format!("unknown field {}", go_quote(&p.to_string()))),
            )
            .chain(
                self.duplicate
                    .iter()
                    .map(|p| format!("duplicate field {}", go_quote(&p.to_string()))),
            )
            .collect()
    }

    /// `strict decoding error: unknown field "spec.x", ...`.
    pub fn strict_error(&self) -> String {
        format!("strict decoding error: {}", self.messages().join(", "))
    }
}

/// A string as Go's `%q` prints it (close enough for field names and
/// values: JSON string escaping).
pub fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    #[test]
    fn wrong_types_are_refused_with_their_path() {
        let e = typed::<Deployment>(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"}, "spec": {"replicas": "three"}}))
        .unwrap_err();
        assert_eq!(e.path, "spec.replicas");
        assert!(e.message.contains("expected i32"), "{}", e.message);
        let e = typed::<ConfigMap>(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"a": {}}}))
        .unwrap_err();
        assert_eq!(e.to_string(), format!("data.a: {}", e.message));
        let e = typed::<Deployment>(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1.5}]}]}}}}))
        .unwrap_err();
        assert_eq!(
            e.path,
            "spec.template.spec.containers[0].ports[0].containerPort"
        );
    }

    #[test]
    fn unknown_fields_are_listed_with_full_paths() {
        let unknown = typed::<Deployment>(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "bogus": 1},
            "spec": {"unknown1": "x", "template": {"spec": {"containers": [{"name": "a"}, {"name": "b", "unknownNested": 1}]}}}}))
        .unwrap();
        let paths: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert_eq!(
            paths,
            [
                "metadata.bogus",
                "spec.unknown1",
                "spec.template.spec.containers[1].unknownNested"
            ]
        );
        let mut obj = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b", "unknownNested": 1}]}}}});
        unknown[2].remove(&mut obj);
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][1],
            json!({"name": "b"})
        );
        // Map values are data, not fields: nothing is unknown in them.
        assert!(
            typed::<ConfigMap>(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"any-key": "v"}})
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn duplicates_are_found_at_any_depth() {
        let body = br#"{"spec": {"paused": true, "paused": false, "c": [{"a": 1, "a": 2}], "d": {"a": 1}, "e": {"a": 2}}}"#;
        let d: Vec<String> = duplicate_fields(body)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(d, ["spec.paused", "spec.c[0].a"]);
        assert!(duplicate_fields(b"not json").is_empty());
    }

    #[test]
    fn field_validation_values() {
        assert_eq!(
            FieldValidation::parse(None, "CreateOptions").unwrap(),
            FieldValidation::Warn
        );
        assert_eq!(
            FieldValidation::parse(Some("Strict"), "CreateOptions").unwrap(),
            FieldValidation::Strict
        );
        let e = FieldValidation::parse(Some("strict"), "PatchOptions").unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"strict\": supported values: \"Ignore\", \"Strict\", \"Warn\""
        );
    }
}
