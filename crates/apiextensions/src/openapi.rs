//! The schema as kube-apiserver publishes it in `/openapi/v3` for a custom
//! resource: the CRD's schema, `metadata` referring to ObjectMeta, the type
//! meta described, and `x-kubernetes-group-version-kind`, so `kubectl
//! explain` and kubectl's client-side validation find it.

use serde_json::{Value, json};

use crate::JSONSchemaProps;

/// The name of ObjectMeta's schema in the same document's components.
pub const OBJECT_META_REF: &str =
    "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

pub(crate) fn schema(raw: &JSONSchemaProps, group: &str, version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(raw).unwrap_or_else(|_| json!({}));
    if !v.is_object() {
        v = json!({});
    }
    let obj = v.as_object_mut().expect("made an object above");
    obj.entry("type").or_insert_with(|| json!("object"));
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    if let Some(props) = props.as_object_mut() {
        props.insert(
            "apiVersion".into(),
            json!({
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                "type": "string"
            }),
        );
        props.insert(
            "kind".into(),
            json!({
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "type": "string"
            }),
        );
        props.insert(
            "metadata".into(),
            json!({
                "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                "allOf": [{"$ref": OBJECT_META_REF}]
            }),
        );
    }
    obj.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([{"group": group, "kind": kind, "version": version}]),
    );
    v
}
