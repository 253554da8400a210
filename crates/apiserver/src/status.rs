//! Kubernetes `Status` errors, with kube-apiserver's reasons and messages.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::registry::ResourceType;

/// An API error answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human-readable message, as kube-apiserver words it.
    pub message: String,
    /// `details` of the Status (name, group, kind, causes).
    pub details: Option<Value>,
}

/// Result type of API handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The `reason` of a Status cause for a field error type as printed
/// (`Required value` → `FieldValueRequired`, upstream's `CauseType`).
fn cause_reason(ty: &str) -> String {
    match ty {
        "Required value" => "FieldValueRequired".into(),
        "Invalid value" => "FieldValueInvalid".into(),
        "Unsupported value" => "FieldValueNotSupported".into(),
        "Duplicate value" => "FieldValueDuplicate".into(),
        "Not found" => "FieldValueNotFound".into(),
        "Too long" => "FieldValueTooLong".into(),
        "Too many" => "FieldValueTooMany".into(),
        "Internal error" => "InternalError".into(),
        other => format!("FieldValue{}", other.replace(' ', "")),
    }
}

impl ApiError {
    /// A plain error with a code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    /// Adds field causes `(field, type, detail)` to the Status details.
    pub fn with_causes(mut self, causes: &[(&str, &str, &str)]) -> Self {
        let causes: Vec<Value> = causes
            .iter()
            .map(|(field, ty, detail)| {
                json!({"reason": cause_reason(ty), "message": format!("{ty}: {detail}"), "field": field})
            })
            .collect();
        let mut details = self.details.take().unwrap_or_else(|| json!({}));
        details["causes"] = Value::Array(causes);
        self.details = Some(details);
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden worded as kube-apiserver's authorizer does for a
    /// resource path: `pods "p" is forbidden: User "u" cannot create
    /// resource "pods/exec" in API group "" in the namespace "default"`.
    pub fn forbidden_path(user: &str, verb: &str, path: &crate::request::ResourcePath) -> Self {
        let rt = &path.rt;
        let subject = match &path.name {
            Some(n) => format!("{} \"{n}\"", rt.qualified()),
            None => rt.qualified(),
        };
        let resource = match &path.subresource {
            Some(sub) => format!("{}/{sub}", rt.plural),
            None => rt.plural.to_string(),
        };
        let scope = match path.namespace.as_deref().filter(|_| rt.namespaced) {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                rt.group
            ),
        )
    }

    /// 404 NotFound for an object.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
        )
        .with_details(rt, name)
    }

    /// 404 for a path that names no resource.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(verb: &str, rt: &ResourceType) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind \"{}\"",
                rt.qualified()
            ),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
        )
        .with_details(rt, name)
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .with_details(rt, name)
    }

    /// 409 Conflict with a free-form message.
    pub fn conflict_msg(rt: &ResourceType, name: &str, msg: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                rt.qualified()
            ),
        )
        .with_details(rt, name)
    }

    /// 410 Expired.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 504 Timeout for a read at a resourceVersion the store has not
    /// reached within the wait (upstream's `NewTooLargeResourceVersionError`:
    /// clients such as reflectors recognise the cause and retry).
    pub fn too_large_resource_version(requested: i64, current: i64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        e.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }));
        e
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media(accepted: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
        )
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable() -> Self {
        Self::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/yaml",
        )
    }

    /// 422 Invalid with field causes `(field, type, detail)`.
    pub fn invalid(
        kind: &str,
        name: &str,
        rt: &ResourceType,
        causes: &[(String, String, String)],
    ) -> Self {
        // Upstream's `field.Error` prints no `: ` after the type when
        // there is no detail (`roleRef.name: Required value`).
        let body = |ty: &str, detail: &str| {
            if detail.is_empty() {
                ty.to_string()
            } else {
                format!("{ty}: {detail}")
            }
        };
        let parts: Vec<String> = causes
            .iter()
            .map(|(field, ty, detail)| format!("{field}: {}", body(ty, detail)))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|(field, ty, detail)| {
                json!({"reason": cause_reason(ty), "message": body(ty, detail), "field": field})
            })
            .collect();
        Self {
            code: 422,
            reason: "Invalid",
            // Upstream names the kind with its group (`GroupKind.String()`:
            // `RoleBinding.rbac.authorization.k8s.io "x" is invalid`).
            message: if kind == rt.kind && !rt.group.is_empty() {
                format!("{kind}.{} \"{name}\" is invalid: {joined}", rt.group)
            } else {
                format!("{kind} \"{name}\" is invalid: {joined}")
            },
            details: Some(
                json!({"name": name, "group": rt.group, "kind": kind, "causes": causes_json}),
            ),
        }
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 503 ServiceUnavailable (etcd unreachable).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The Status object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // An unknown reason is omitted, as Go's `omitempty` does.
        if self.reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<rke2_datastore::StoreError> for ApiError {
    fn from(e: rke2_datastore::StoreError) -> Self {
        use rke2_datastore::StoreError as E;
        match e {
            E::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            E::Etcd(e) => ApiError::unavailable(format!("etcd unavailable: {e}")),
            // Only a read at a future revision fails so; the handlers wait
            // for it and answer `too_large_resource_version`.
            E::FutureRevision { requested } => ApiError::new(
                504,
                "FutureRevision",
                format!("Too large resource version: {requested}"),
            ),
            // Not worth a retry: the same object will never fit.
            E::TooLarge { size, limit } => ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!(
                    "Request entity too large: the object would be stored as {size} bytes, limit is {limit}"
                ),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// A success Status (used by deletecollection and some deletes).
pub fn success_status(rt: &ResourceType, name: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": rt.group, "kind": rt.plural},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn messages_match_kube_apiserver() {
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            ApiError::not_found(cm, "x").message,
            "configmaps \"x\" not found"
        );
        let d = find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            ApiError::already_exists(d, "w").message,
            "deployments.apps \"w\" already exists"
        );
        let e = ApiError::invalid(
            "ConfigMap",
            "Bad_",
            cm,
            &[(
                "metadata.name".into(),
                "Invalid value".into(),
                "\"Bad_\": x".into(),
            )],
        );
        assert_eq!(
            e.message,
            "ConfigMap \"Bad_\" is invalid: metadata.name: Invalid value: \"Bad_\": x"
        );
        assert_eq!(e.to_status()["code"], 422);
    }

    #[test]
    fn forbidden_names_object_and_subresource() {
        let route = |p: &str| match crate::request::parse_path(p, &crate::registry::Registry::new())
            .unwrap()
        {
            crate::request::Route::Resource(r) => r,
            _ => panic!("{p}"),
        };
        assert_eq!(
            ApiError::forbidden_path(
                "system:node:a",
                "create",
                &route("/api/v1/namespaces/default/pods/web/exec")
            )
            .message,
            "pods \"web\" is forbidden: User \"system:node:a\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            ApiError::forbidden_path("u", "list", &route("/apis/apps/v1/deployments")).message,
            "deployments.apps is forbidden: User \"u\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
    }
}
