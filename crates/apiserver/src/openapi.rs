//! `/openapi/v3`: the index of group/version documents and one OpenAPI 3
//! document per group/version of the custom types, built from their
//! CRDs' schemas, so `kubectl explain` works for them. Built-in types have
//! no document (kubectl uses its compiled-in knowledge of them).
//!
//! Documents are addressed by a hash of their content, as kube-apiserver
//! does, so clients may cache them for as long as the hash stays.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use crate::registry::{Registry, ResourceType};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// The schema name of a type: reversed group, version, kind
/// (`io.rke2.test.v1.Widget`), as upstream names CRD schemas.
fn schema_name(rt: &ResourceType, kind: &str) -> String {
    let mut parts: Vec<&str> = rt.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{kind}", parts.join("."), rt.version)
}

fn object_meta() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "name": s("Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically."),
            "generateName": s("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "namespace": s("Namespace defines the space within which each name must be unique."),
            "uid": s("UID is the unique in time and space value for this object."),
            "resourceVersion": s("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64", "description": "Number of seconds allowed for this object to gracefully terminate before it will be removed from the system."},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize (scope and select) objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object"}, "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object"}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."},
        },
    })
}

fn list_meta() -> Value {
    json!({
        "description": "ListMeta describes metadata that synthetic resources must have, including lists and various status objects.",
        "type": "object",
        "properties": {
            "continue": {"type": "string", "description": "continue may be set if the user set a limit on the number of items returned."},
            "remainingItemCount": {"type": "integer", "format": "int64"},
            "resourceVersion": {"type": "string", "description": "String that identifies the server's internal version of this object."},
        },
    })
}

/// The schema of one custom type as a components entry: the CRD's schema
/// with `apiVersion`, `kind` and `metadata` described and the GVK named.
fn type_schema(rt: &ResourceType, raw: &Value) -> Value {
    let mut s = if raw.is_object() {
        raw.clone()
    } else {
        json!({"type": "object"})
    };
    let props = s
        .as_object_mut()
        .map(|m| m.entry("properties").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut);
    if let Some(props) = props {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
        props.insert("metadata".into(), json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    }
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": rt.group, "kind": rt.kind, "version": rt.version}]);
    s
}

/// The document of one group/version, if custom types serve it.
pub fn group_version_doc(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for rt in reg.all() {
        if rt.group != group || rt.version != version {
            continue;
        }
        let Some(raw) = rt.strategy.openapi_schema() else {
            continue;
        };
        let name = schema_name(&rt, &rt.kind);
        schemas.insert(name.clone(), type_schema(&rt, &raw));
        // kubectl explain finds a resource's kind through the GET
        // operations of its paths.
        let base = if rt.namespaced {
            format!(
                "/apis/{group}/{version}/namespaces/{{namespace}}/{}",
                rt.plural
            )
        } else {
            format!("/apis/{group}/{version}/{}", rt.plural)
        };
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let op = |action: &str, schema: &str| {
            json!({"get": {
                "operationId": format!("{action}{}", rt.kind),
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            }})
        };
        paths.insert(base.clone(), op("list", &schema_name(&rt, &rt.list_kind())));
        paths.insert(format!("{base}/{{name}}"), op("get", &name));
        schemas.insert(
            schema_name(&rt, &rt.list_kind()),
            json!({
                "description": format!("{} is a list of {}", rt.list_kind(), rt.kind),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                    "metadata": {"allOf": [{"$ref": format!("#/components/schemas/{LIST_META}")}]},
                },
                "x-kubernetes-group-version-kind": [{"group": rt.group, "kind": rt.list_kind(), "version": rt.version}],
            }),
        );
    }
    if schemas.is_empty() {
        return None;
    }
    schemas.insert(OBJECT_META.into(), object_meta());
    schemas.insert(LIST_META.into(), list_meta());
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash(doc: &Value) -> String {
    let digest = Sha512::digest(serde_json::to_vec(doc).unwrap_or_default());
    hex::encode_upper(&digest[..32])
}

/// `/openapi/v3`: every group/version with a document.
pub fn index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.group_versions() {
        for v in versions {
            if let Some(doc) = group_version_doc(reg, &group, &v) {
                let path = format!("apis/{group}/{v}");
                paths.insert(
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&doc))}),
                );
            }
        }
    }
    json!({"paths": paths})
}

/// The document at `/openapi/v3/<path>` (`apis/<group>/<version>`).
pub fn document(reg: &Registry, path: &str) -> Option<Value> {
    let rest = path.strip_prefix("apis/")?;
    let (group, version) = rest.split_once('/')?;
    group_version_doc(reg, group, version)
}
