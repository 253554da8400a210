//! The behaviour of custom objects: their CRD version's structural schema
//! prunes, defaults and validates them (OpenAPI and CEL rules), the
//! `status` and `scale` subresources follow the CRD, and a terminating
//! CRD takes no new objects.

use std::sync::Arc;

use serde_json::Value;

use crate::registry::ResourceType;
use crate::schema::{FieldPath, Step, TypeError};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, ScaleSpec, Strategy};

/// The compiled schema of one CRD version.
pub use rke2_apiextensions::Schema;

/// Compiles a version's `openAPIV3Schema`; the causes name the fields
/// relative to the schema root.
pub fn compile_schema(schema: &Value) -> Result<Arc<Schema>, Vec<Cause>> {
    let props: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps =
        serde_json::from_value(schema.clone()).map_err(|e| {
            vec![(
                String::new(),
                "Invalid value".to_string(),
                format!("the schema does not decode: {e}"),
            )]
        })?;
    Schema::compile(&props).map(Arc::new).map_err(|errs| {
        errs.into_iter()
            .map(|e| (e.field, e.kind, e.detail))
            .collect()
    })
}

/// Custom objects are not decoded into a typed struct: their schema
/// prunes them ([`CustomStrategy::unknown_fields`]).
pub fn no_typed_check(_obj: &Value) -> Result<Vec<FieldPath>, TypeError> {
    Ok(Vec::new())
}

/// How the objects of one CRD version behave.
#[derive(Debug)]
pub struct CustomStrategy {
    /// The CRD's name.
    pub crd: String,
    /// Whether `status` is a subresource (then writes of the object keep
    /// the stored status, and spec changes alone bump the generation).
    pub status_subresource: bool,
    /// The `scale` subresource, if served.
    pub scale: Option<ScaleSpec>,
    /// Whether the CRD is being deleted (creates are refused).
    pub terminating: bool,
    /// Whether the version is served through a watch cache.
    pub cached: bool,
    /// The CRD's storage version as `group/version`.
    pub storage_api_version: String,
    /// The CRD's conversion webhook (`None` conversion without).
    pub conversion: Option<Arc<super::conversion::Webhook>>,
    /// The version's schema (`None` when it did not compile: nothing is
    /// pruned or checked then, as the CRD's own validation refused it).
    pub schema: Option<Arc<Schema>>,
    /// The version's `openAPIV3Schema` as the CRD has it.
    pub raw_schema: Value,
}

/// The paths present in `before` and missing in `after`.
fn removed_paths(before: &Value, after: &Value, at: &mut Vec<Step>, out: &mut Vec<FieldPath>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in b {
                at.push(Step::Key(k.clone()));
                match a.get(k) {
                    Some(av) => removed_paths(v, av, at, out),
                    None => out.push(FieldPath(at.clone())),
                }
                at.pop();
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                at.push(Step::Index(i));
                removed_paths(bv, av, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

impl Strategy for CustomStrategy {
    fn unknown_fields(&self, _rt: &ResourceType, obj: &Value) -> Result<Vec<FieldPath>, TypeError> {
        let Some(schema) = &self.schema else {
            return Ok(Vec::new());
        };
        let mut pruned = obj.clone();
        schema.prune(&mut pruned);
        let mut out = Vec::new();
        removed_paths(obj, &pruned, &mut Vec::new(), &mut out);
        Ok(out)
    }

    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(schema) = &self.schema {
            // Pruning happens before defaulting upstream too; a path the
            // request left unknown is gone by now (settled per
            // fieldValidation), this only drops what defaulting would not.
            schema.prune(obj);
            schema.apply_defaults(obj);
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        let Some(schema) = &self.schema else { return };
        for e in schema.validate(obj) {
            causes.push((e.field, e.kind, e.detail));
        }
        if causes.is_empty() {
            for e in schema.validate_rules(obj, None) {
                causes.push((e.field, e.kind, e.detail));
            }
        }
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        let Some(schema) = &self.schema else { return };
        // The whole-object rules run with oldSelf here (transition rules);
        // `validate` runs them without, so only the transition ones add.
        if schema.validate(new).is_empty() {
            let without: Vec<_> = schema.validate_rules(new, None);
            for e in schema.validate_rules(new, Some(old)) {
                if !without
                    .iter()
                    .any(|w| w.field == e.field && w.detail == e.detail)
                {
                    causes.push((e.field, e.kind, e.detail));
                }
            }
        }
    }

    fn bumps_generation(&self, old: &Value, new: &Value) -> bool {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("apiVersion");
                m.remove("kind");
                if self.status_subresource {
                    m.remove("status");
                }
            }
            v
        };
        strip(old) != strip(new)
    }

    fn scale(&self) -> ScaleSpec {
        self.scale.clone().unwrap_or_default()
    }

    fn admit_create(&self, _rt: &ResourceType, _obj: &Value) -> ApiResult<()> {
        if self.terminating {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "create not allowed while custom resource definition is terminating",
            ));
        }
        Ok(())
    }

    fn watch_cached(&self) -> bool {
        self.cached
    }

    fn storage_api_version(&self) -> Option<&str> {
        Some(&self.storage_api_version)
    }

    fn conversion_webhook(&self) -> Option<&super::conversion::Webhook> {
        self.conversion.as_deref()
    }

    fn apply_list_strategy(
        &self,
        path: &[&str],
    ) -> Option<rke2_apimachinery::strategic_merge::ListStrategy> {
        use rke2_apiextensions::ListKind;
        use rke2_apimachinery::strategic_merge::ListStrategy;
        Some(match self.schema.as_ref()?.list_kind_at(path)? {
            ListKind::Atomic => ListStrategy::Atomic,
            ListKind::Set => ListStrategy::SetMerge,
            // Elements are matched on the first key (the merge of
            // rke2-apimachinery keys on one field).
            ListKind::Map(keys) => ListStrategy::MergeByKey(keys.first()?.clone()),
        })
    }

    fn strategic_merge_patch(&self) -> bool {
        false
    }

    fn openapi_schema(&self) -> Option<Value> {
        Some(self.raw_schema.clone())
    }
}
