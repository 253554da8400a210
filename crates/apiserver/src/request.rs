//! Parsing of API request paths, query parameters and bodies.

use std::collections::HashMap;

use serde_json::Value;

use std::sync::Arc;

use crate::registry::{Registry, ResourceType};
use crate::status::ApiError;

/// The most a request body may hold (kube-apiserver's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request against a resource path.
#[derive(Debug, Clone)]
pub struct ResourcePath {
    /// The resource type.
    pub rt: Arc<ResourceType>,
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
pub fn parse_path(path: &str, registry: &Registry) -> Result<Route, ApiError> {
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
    let find = |plural: &str| {
        registry
            .resolve(group, version, plural)
            .ok_or_else(ApiError::no_route)
    };
    let rp = |rt: Arc<ResourceType>, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
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
        ["namespaces", ns, plural] if registry.resolve(group, version, plural).is_some() => {
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
        // `pods|services/<id>/proxy/<path...>`: the rest is the backend's
        // (`workload_proxy`).
        ["namespaces", ns, plural, name, "proxy", _, ..] => {
            let rt = find(plural)?;
            if !rt.namespaced || !rt.has_subresource("proxy") {
                return Err(ApiError::no_route());
            }
            rp(rt, Some(ns), Some(name), Some("proxy"))
        }
        ["namespaces", ns, plural, name, sub] => {
            let rt = find(plural)?;
            if !rt.namespaced || !rt.has_subresource(sub) {
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
        // `nodes/<n>/proxy/<path...>`: the rest of the path is the node
        // API's (`proxy::node_proxy`).
        [plural, name, "proxy", _, ..] => {
            let rt = find(plural)?;
            if rt.namespaced || !rt.has_subresource("proxy") {
                return Err(ApiError::no_route());
            }
            rp(rt, None, Some(name), Some("proxy"))
        }
        [plural, name, sub] => {
            let rt = find(plural)?;
            if rt.namespaced || !rt.has_subresource(sub) {
                return Err(ApiError::no_route());
            }
            rp(rt, None, Some(name), Some(sub))
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Decoded query parameters: every value of every key, in order.
/// Single-valued parameters read the first value, as upstream's
/// parameter codec does (`Convert_Slice_string_To_*`).
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, Vec<String>>);

/// Integer parameters of the options kinds the served verbs decode
/// (`ListOptions`, `DeleteOptions`); a malformed one is a 400 whatever
/// the verb, as the codec decodes the whole query.
const INTEGER_PARAMS: &[&str] = &["limit", "timeoutSeconds", "gracePeriodSeconds"];

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned() {
            map.entry(k).or_default().push(v);
        }
        Query(map)
    }

    /// A parameter's (first) value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.first()).map(String::as_str)
    }

    /// Every value a parameter was given.
    pub fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Sets a parameter to one value.
    pub fn set(&mut self, k: &str, v: &str) {
        self.0.insert(k.to_string(), vec![v.to_string()]);
    }

    /// Removes a parameter.
    pub fn remove(&mut self, k: &str) {
        self.0.remove(k);
    }

    /// A boolean parameter as apimachinery decodes query booleans: absent
    /// is false; present is true unless it is `0` or `false` in any case
    /// (so the Python client's `watch=True` is a watch).
    pub fn flag(&self, k: &str) -> bool {
        match self.get(k) {
            None => false,
            Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
        }
    }

    /// An integer parameter, parsed as Go's `strconv.ParseInt` (base 10,
    /// optional sign); an empty value counts as absent. 400 with
    /// strconv's message, after the parameter's name, when malformed.
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => parse_go_int(v)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("invalid value for {k}: {e}"))),
        }
    }

    /// Checks every typed parameter the verbs read, before anything is
    /// done: integers must parse (400), `dryRun` may only be `All` (422
    /// naming `options_kind`, for the write verbs that carry it).
    pub fn check(&self, options_kind: Option<&str>) -> Result<(), ApiError> {
        for k in INTEGER_PARAMS {
            self.int(k)?;
        }
        if let Some(kind) = options_kind {
            let values: Vec<&str> = self.all("dryRun").iter().map(String::as_str).collect();
            check_dry_run(&values, kind)?;
        }
        Ok(())
    }

    /// Whether the request asks for a dry run (`dryRun=All`; checked by
    /// [`Query::check`]).
    pub fn dry_run(&self) -> bool {
        self.all("dryRun").iter().any(|v| v == "All")
    }
}

/// `ValidateDryRun`: every value must be `All`; 422 on the options kind.
pub fn check_dry_run(values: &[&str], options_kind: &str) -> Result<(), ApiError> {
    if values.iter().all(|v| *v == "All") {
        return Ok(());
    }
    let shown: Vec<String> = values.iter().map(|v| crate::schema::go_quote(v)).collect();
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "{options_kind}.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{{{}}}: supported values: \"All\"",
            shown.join(", ")
        ),
    ))
}

/// `strconv.ParseInt(v, 10, 64)`, with its error text.
fn parse_go_int(v: &str) -> Result<i64, String> {
    use std::num::IntErrorKind;
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.ParseInt: parsing {}: invalid syntax",
            crate::schema::go_quote(v)
        ));
    }
    v.parse::<i64>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => {
            format!(
                "strconv.ParseInt: parsing {}: value out of range",
                crate::schema::go_quote(v)
            )
        }
        _ => format!(
            "strconv.ParseInt: parsing {}: invalid syntax",
            crate::schema::go_quote(v)
        ),
    })
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
mod query_tests {
    use super::*;

    #[test]
    fn booleans_as_apimachinery_decodes_them() {
        for (raw, want) in [
            ("watch=true", true),
            ("watch=True", true),
            ("watch=TRUE", true),
            ("watch=1", true),
            ("watch=t", true),
            ("watch=", true),
            ("watch=yes", true),
            ("watch=false", false),
            ("watch=False", false),
            ("watch=FALSE", false),
            ("watch=0", false),
            ("other=1", false),
            // The first value counts, as upstream's codec reads it.
            ("watch=false&watch=true", false),
        ] {
            assert_eq!(Query::parse(Some(raw)).flag("watch"), want, "{raw}");
        }
    }

    #[test]
    fn integers_as_strconv_parses_them() {
        let q = |raw: &str| Query::parse(Some(raw)).int("limit");
        assert_eq!(q("limit=5").unwrap(), Some(5));
        assert_eq!(q("limit=%2B5").unwrap(), Some(5));
        assert_eq!(q("limit=-5").unwrap(), Some(-5));
        assert_eq!(q("limit=").unwrap(), None);
        assert_eq!(q("x=1").unwrap(), None);
        let e = q("limit=five").unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "invalid value for limit: strconv.ParseInt: parsing \"five\": invalid syntax"
        );
        for bad in [
            "limit=1.5",
            "limit=+5",
            "limit=%205",
            "limit=0x10",
            "limit=%2B",
            "limit=1_000",
        ] {
            assert_eq!(q(bad).unwrap_err().code, 400, "{bad}");
        }
        let e = q("limit=99999999999999999999").unwrap_err();
        assert!(e.message.ends_with("value out of range"), "{}", e.message);
    }

    #[test]
    fn dry_run_only_all() {
        let check = |raw: &str| Query::parse(Some(raw)).check(Some("CreateOptions"));
        assert!(check("dryRun=All").is_ok());
        assert!(check("dryRun=All&dryRun=All").is_ok());
        assert!(check("").is_ok());
        let e = check("dryRun=all").unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"all\"}: supported values: \"All\""
        );
        assert_eq!(check("dryRun=All&dryRun=x").unwrap_err().code, 422);
        assert!(Query::parse(Some("dryRun=All")).dry_run());
        assert!(!Query::parse(Some("dryRun=")).dry_run());
        // Reads carry no dryRun; integers are checked on every verb.
        assert!(Query::parse(Some("dryRun=x")).check(None).is_ok());
        assert_eq!(
            Query::parse(Some("timeoutSeconds=x"))
                .check(None)
                .unwrap_err()
                .code,
            400
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse_path(path, &crate::registry::Registry::new()).unwrap() {
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
        assert!(parse_path("/api/v1/widgets", &crate::registry::Registry::new()).is_err());
        assert!(
            parse_path(
                "/api/v1/namespaces/default/configmaps/x/status",
                &crate::registry::Registry::new()
            )
            .is_err()
        );
        assert!(parse_path("/api/v1/configmaps/x", &crate::registry::Registry::new()).is_err());
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
