//! Parsing of API request paths, query parameters and bodies.

use std::collections::HashMap;

use serde_json::Value;

use crate::registry::{self, ResourceType};
use crate::status::ApiError;

/// The most a request body may hold (kube-apiserver's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request against a resource path.
#[derive(Debug, Clone)]
pub struct ResourcePath {
    /// The resource type.
    pub rt: &'static ResourceType,
    /// The namespace from the path, if any.
    pub namespace: Option<String>,
    /// The object name, if any.
    pub name: Option<String>,
    /// The subresource, if any.
    pub subresource: Option<String>,
    /// Whether the legacy `/watch/` prefix was used.
    pub legacy_watch: bool,
}

/// What an API path names.
#[derive(Debug)]
pub enum Route {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/api/v1` or `/apis/<g>/<v>`.
    ResourceList(String, String),
    /// `/apis/<g>`.
    Group(String),
    /// A resource request.
    Resource(ResourcePath),
}

/// Parses an API path; `Err` = 404.
pub fn parse_path(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["api", v] => return Ok(Route::ResourceList(String::new(), v.to_string())),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["apis", g, v] => return Ok(Route::ResourceList(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let find = |plural: &str| registry::find(group, version, plural).ok_or_else(ApiError::no_route);
    let rp = |rt, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Ok(Route::Resource(ResourcePath {
            rt,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
            legacy_watch,
        }))
    };
    match rest {
        // Namespaced paths; `namespaces/<n>` and `namespaces/<n>/<sub>`
        // are the namespace object itself when <sub> is not a resource.
        ["namespaces", ns, plural] if registry::find(group, version, plural).is_some() => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return Err(ApiError::no_route());
            }
            rp(rt, Some(ns), None, None)
        }
        ["namespaces", ns, plural, name] => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return Err(ApiError::no_route());
            }
            rp(rt, Some(ns), Some(name), None)
        }
        ["namespaces", ns, plural, name, sub] => {
            let rt = find(plural)?;
            if !rt.namespaced || !rt.subresources.contains(sub) {
                return Err(ApiError::no_route());
            }
            rp(rt, Some(ns), Some(name), Some(sub))
        }
        [plural] => rp(find(plural)?, None, None, None),
        [plural, name] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return Err(ApiError::no_route());
            }
            rp(rt, None, Some(name), None)
        }
        [plural, name, sub] => {
            let rt = find(plural)?;
            if rt.namespaced || !rt.subresources.contains(sub) {
                return Err(ApiError::no_route());
            }
            rp(rt, None, Some(name), Some(sub))
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Decoded query parameters.
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// A parameter's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }

    /// An integer parameter; 400 when unparsable.
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {k}: {v:?} is not an integer"))
            }),
        }
    }
}

/// Media type of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// Kubernetes protobuf.
    Protobuf,
    /// RFC 6902 JSON patch.
    JsonPatch,
    /// RFC 7386 merge patch.
    MergePatch,
    /// Strategic merge patch.
    StrategicMergePatch,
    /// Server-side apply configuration.
    ApplyPatch,
}

/// Classifies a Content-Type header.
pub fn body_type(content_type: Option<&str>) -> Option<BodyType> {
    let ct = content_type.unwrap_or("application/json");
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(match base.as_str() {
        "" | "application/json" | "*/*" => BodyType::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" => BodyType::Yaml,
        "application/vnd.kubernetes.protobuf" => BodyType::Protobuf,
        "application/json-patch+json" => BodyType::JsonPatch,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => BodyType::ApplyPatch,
        _ => return None,
    })
}

/// Decodes a JSON, YAML or protobuf body into a JSON value; 400 names the
/// parser's position, 415 an unknown media type.
pub fn decode_body(bytes: &[u8], ty: BodyType) -> Result<Value, ApiError> {
    match ty {
        BodyType::Protobuf => rke2_kubeproto::decode(bytes).map_err(|e| match e {
            rke2_kubeproto::ProtoError::UnsupportedKind { .. } => {
                ApiError::unsupported_media("application/json, application/yaml")
            }
            other => ApiError::bad_request(format!("error decoding protobuf body: {other}")),
        }),
        BodyType::Yaml | BodyType::ApplyPatch => {
            // YAML is a superset of JSON; parse JSON first for exact errors.
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                return Ok(v);
            }
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?;
            // A repeated key keeps its last value, as upstream's YAML
            // decoder does; `yaml_duplicate_keys` reports it for
            // fieldValidation.
            let options = serde_saphyr::options! {
                duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::LastWins,
            };
            serde_saphyr::from_str_with_options::<Value>(text, options)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))
        }
        _ => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "error decoding JSON body: {e} (line {}, column {})",
                e.line(),
                e.column()
            ))
        }),
    }
}

/// The first repeated mapping key of a YAML body (not JSON), worded by
/// the YAML parser; `None` when there is none.
pub fn yaml_duplicate_keys(bytes: &[u8]) -> Option<String> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
    };
    match serde_saphyr::from_str_with_options::<Value>(text, options) {
        Err(e) if e.to_string().to_ascii_lowercase().contains("duplicate") => Some(e.to_string()),
        _ => None,
    }
}

/// How the client wants the answer shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerAs {
    /// The object(s) themselves.
    Object,
    /// A `meta.k8s.io/v1 Table`.
    Table,
    /// PartialObjectMetadata(List).
    PartialMetadata,
}

/// Reads the Accept header: Table, metadata-only, or plain objects. 406
/// when the client accepts nothing we can write.
pub fn answer_as(accept: Option<&str>) -> Result<AnswerAs, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(AnswerAs::Object);
    };
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<&str> = params.collect();
        let is_json = matches!(
            media.as_str(),
            "application/json" | "*/*" | "application/*" | "application/yaml"
        );
        if !is_json {
            continue;
        }
        if params.contains(&"as=Table") {
            return Ok(AnswerAs::Table);
        }
        if params.contains(&"as=PartialObjectMetadataList")
            || params.contains(&"as=PartialObjectMetadata")
        {
            return Ok(AnswerAs::PartialMetadata);
        }
        return Ok(AnswerAs::Object);
    }
    Err(ApiError::not_acceptable())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse_path(path).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_map_to_resources() {
        let r = res("/api/v1/namespaces/default/configmaps/x");
        assert_eq!(r.rt.plural, "configmaps");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("x"));
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(r.rt.plural, "namespaces");
        assert_eq!(r.name.as_deref(), Some("kube-system"));
        let r = res("/api/v1/namespaces/ns1/status");
        assert_eq!(r.name.as_deref(), Some("ns1"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = res("/api/v1/namespaces/default/pods/p/binding");
        assert_eq!(r.subresource.as_deref(), Some("binding"));
        let r = res("/apis/apps/v1/deployments");
        assert!(r.namespace.is_none() && r.name.is_none());
        let r = res("/api/v1/watch/namespaces/default/pods");
        assert!(r.legacy_watch);
        let r = res("/api/v1/nodes/n1/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert!(parse_path("/api/v1/widgets").is_err());
        assert!(parse_path("/api/v1/namespaces/default/configmaps/x/status").is_err());
        assert!(parse_path("/api/v1/configmaps/x").is_err());
    }

    #[test]
    fn accept_header_selects_table() {
        assert_eq!(
            answer_as(Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")).unwrap(),
            AnswerAs::Table
        );
        assert_eq!(
            answer_as(Some(
                "application/vnd.kubernetes.protobuf, application/json"
            ))
            .unwrap(),
            AnswerAs::Object
        );
        assert_eq!(
            answer_as(Some("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .code,
            406
        );
        assert_eq!(answer_as(None).unwrap(), AnswerAs::Object);
    }

    #[test]
    fn malformed_json_names_the_position() {
        let e = decode_body(b"{\n  \"a\": ,\n}", BodyType::Json).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("line 2"), "{}", e.message);
        let e = decode_body(b"a: [1,\n  b: c", BodyType::Yaml).unwrap_err();
        assert_eq!(e.code, 400);
        // Repeated keys: the last wins, and the duplicate is reported.
        let v = decode_body(b"a: 1\nb: 2\na: 3\n", BodyType::Yaml).unwrap();
        assert_eq!(v, serde_json::json!({"a": 3, "b": 2}));
        let dup = yaml_duplicate_keys(b"a: 1\nb: 2\na: 3\n").unwrap();
        assert!(dup.contains('a'), "{dup}");
        assert!(yaml_duplicate_keys(b"a: 1\nb: 2\n").is_none());
        assert!(yaml_duplicate_keys(br#"{"a": 1, "a": 2}"#).is_none());
    }
}
