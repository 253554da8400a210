//! Access reviews (`authorization.k8s.io/v1`): "may this user do that?"
//! answered by the same authorizer chain that guards requests.
//! `SelfSubjectAccessReview` (`kubectl auth can-i`) and
//! `SelfSubjectRulesReview` (`kubectl auth can-i --list`) ask for the
//! caller; `SubjectAccessReview` and `LocalSubjectAccessReview` for anyone,
//! and need `create` on them (upstream's `system:auth-delegator`).

use serde_json::{Value, json};

use crate::rbac::{self, Request, Rule, Target};
use crate::status::ApiError;
use crate::{ApiState, Identity};

/// The API group and version of the reviews.
pub const GROUP_VERSION: &str = "authorization.k8s.io/v1";

/// The review kinds: (plural, kind, namespaced).
pub const KINDS: &[(&str, &str, bool)] = &[
    (
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview", false),
    ("subjectaccessreviews", "SubjectAccessReview", false),
];

/// Which review a path names, and its namespace for the local one.
pub fn route(path: &str) -> Option<(&'static str, &'static str, Option<String>)> {
    let rest = path.strip_prefix("/apis/authorization.k8s.io/v1/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    let (plural, ns) = match segs.as_slice() {
        [p] => (*p, None),
        ["namespaces", ns, p] if !ns.is_empty() => (*p, Some(ns.to_string())),
        _ => return None,
    };
    let (plural, kind, namespaced) = KINDS.iter().find(|(p, _, _)| *p == plural)?;
    (ns.is_some() == *namespaced).then_some((*plural, *kind, ns))
}

fn invalid(kind: &str, causes: &[(&str, &str)]) -> ApiError {
    let parts: Vec<String> = causes.iter().map(|(f, d)| format!("{f}: {d}")).collect();
    let joined = match parts.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", parts.join(", ")),
    };
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{kind}.authorization.k8s.io \"\" is invalid: {joined}"),
    );
    e.details = Some(json!({
        "group": "authorization.k8s.io",
        "kind": kind,
        "causes": causes.iter().map(|(f, d)| json!({"field": f, "message": d})).collect::<Vec<_>>(),
    }));
    e
}

/// A review body: JSON, YAML or protobuf (kubectl sends protobuf), with
/// its media type.
pub struct Body<'a> {
    /// The bytes.
    pub bytes: &'a [u8],
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
}

/// Decodes a review body as its typed struct (400 as any typed body).
fn typed<T: serde::de::DeserializeOwned>(kind: &str, body: &Body) -> Result<Value, ApiError> {
    let ty = crate::request::body_type(body.content_type)
        .filter(|t| {
            matches!(
                t,
                crate::request::BodyType::Json
                    | crate::request::BodyType::Yaml
                    | crate::request::BodyType::Protobuf
            )
        })
        .ok_or_else(|| {
            ApiError::unsupported_media(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf",
            )
        })?;
    let v = crate::request::decode_body(body.bytes, ty).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {}",
            e.message
        ))
    })?;
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(&v) {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {}: {}",
            e.path(),
            e.inner()
        )));
    }
    if let Some(av) = v["apiVersion"].as_str().filter(|a| *a != GROUP_VERSION) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({GROUP_VERSION})"
        )));
    }
    Ok(v)
}

/// The request a review's spec asks about; 422 unless it names exactly
/// one of resource and non-resource attributes, with a verb.
fn attributes<'a>(kind: &str, spec: &'a Value) -> Result<(Request<'a>, &'a str), ApiError> {
    let res = &spec["resourceAttributes"];
    let non = &spec["nonResourceAttributes"];
    match (res.is_object(), non.is_object()) {
        (true, true) => Err(invalid(
            kind,
            &[(
                "spec.nonResourceAttributes",
                "Invalid value: \"null\": cannot be specified in combination with resourceAttributes",
            )],
        )),
        (false, false) => Err(invalid(
            kind,
            &[(
                "spec.resourceAttributes",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
        (true, false) => {
            let s = |k: &str| res[k].as_str().unwrap_or("");
            let verb = s("verb");
            if verb.is_empty() {
                return Err(invalid(
                    kind,
                    &[("spec.resourceAttributes.verb", "Required value")],
                ));
            }
            Ok((
                Request {
                    verb,
                    target: Target::Resource {
                        group: s("group"),
                        resource: s("resource"),
                        subresource: s("subresource"),
                        namespace: s("namespace"),
                        name: s("name"),
                    },
                },
                s("namespace"),
            ))
        }
        (false, true) => {
            let verb = non["verb"].as_str().unwrap_or("");
            let path = non["path"].as_str().unwrap_or("");
            let mut causes = Vec::new();
            if verb.is_empty() {
                causes.push(("spec.nonResourceAttributes.verb", "Required value"));
            }
            if path.is_empty() {
                causes.push(("spec.nonResourceAttributes.path", "Required value"));
            }
            if !causes.is_empty() {
                return Err(invalid(kind, &causes));
            }
            Ok((
                Request {
                    verb,
                    target: Target::NonResource { path },
                },
                "",
            ))
        }
    }
}

/// The answer object: the review with its status, as created.
fn answer(mut review: Value, kind: &str, status: Value) -> Value {
    review["kind"] = json!(kind);
    review["apiVersion"] = json!(GROUP_VERSION);
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["status"] = status;
    review
}

/// Whether `id` may do `req`: the privileged group, then RBAC.
async fn decide(state: &ApiState, id: &Identity, req: &Request<'_>) -> Value {
    if rbac::is_master(id) || rbac::allows(state, id, req).await {
        json!({"allowed": true})
    } else {
        json!({"allowed": false})
    }
}

/// Answers a review `kind` POSTed by `caller` (namespace from the path for
/// the local review).
pub async fn handle(
    state: &ApiState,
    caller: &Identity,
    plural: &str,
    kind: &str,
    path_ns: Option<&str>,
    body: &Body<'_>,
) -> Result<Value, ApiError> {
    use k8s_openapi::api::authorization::v1 as authz;
    match kind {
        "SelfSubjectAccessReview" => {
            let review = typed::<authz::SelfSubjectAccessReview>(kind, body)?;
            let (req, _) = attributes(kind, &review["spec"])?;
            let status = decide(state, caller, &req).await;
            Ok(answer(review.clone(), kind, status))
        }
        "SelfSubjectRulesReview" => {
            let review = typed::<authz::SelfSubjectRulesReview>(kind, body)?;
            let ns = review["spec"]["namespace"].as_str().unwrap_or("");
            let rules = rbac::rules_for(state, caller, Some(ns).filter(|n| !n.is_empty())).await?;
            Ok(answer(review.clone(), kind, rules_status(&rules)))
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let may = Request {
                verb: "create",
                target: Target::Resource {
                    group: "authorization.k8s.io",
                    resource: plural,
                    subresource: "",
                    namespace: path_ns.unwrap_or(""),
                    name: "",
                },
            };
            if !crate::authz::node_may_review(caller, plural)
                && !rbac::can(state, caller, &may).await
            {
                let scope = match path_ns {
                    Some(ns) => format!("in the namespace \"{ns}\""),
                    None => "at the cluster scope".into(),
                };
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{plural}.authorization.k8s.io is forbidden: User \"{}\" cannot create resource \"{plural}\" in API group \"authorization.k8s.io\" {scope}",
                        caller.user
                    ),
                ));
            }
            let review = if kind == "SubjectAccessReview" {
                typed::<authz::SubjectAccessReview>(kind, body)?
            } else {
                typed::<authz::LocalSubjectAccessReview>(kind, body)?
            };
            let spec = &review["spec"];
            let user = spec["user"].as_str().unwrap_or("");
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect();
            if user.is_empty() && groups.is_empty() {
                return Err(invalid(
                    kind,
                    &[(
                        "spec.user",
                        "Invalid value: \"\": at least one of user or group must be specified",
                    )],
                ));
            }
            let (req, ns) = attributes(kind, spec)?;
            if let Some(path_ns) = path_ns
                && ns != path_ns
            {
                return Err(invalid(
                    kind,
                    &[(
                        "spec.resourceAttributes.namespace",
                        "Invalid value: \"\": must match metadata.namespace",
                    )],
                ));
            }
            let subject = Identity {
                user: user.to_string(),
                groups,
            };
            let status = decide(state, &subject, &req).await;
            Ok(answer(review.clone(), kind, status))
        }
        _ => Err(ApiError::no_route()),
    }
}

/// A rules review's status: resource and non-resource rules as held.
fn rules_status(rules: &[Rule]) -> Value {
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in rules {
        if !r.resources.is_empty() {
            let mut e =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                e["resourceNames"] = json!(r.resource_names);
            }
            resource.push(e);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").map(|r| r.1),
            Some("SelfSubjectAccessReview")
        );
        assert_eq!(
            route("/apis/authorization.k8s.io/v1/namespaces/ns/localsubjectaccessreviews"),
            Some((
                "localsubjectaccessreviews",
                "LocalSubjectAccessReview",
                Some("ns".into())
            ))
        );
        assert!(route("/apis/authorization.k8s.io/v1/localsubjectaccessreviews").is_none());
        assert!(
            route("/apis/authorization.k8s.io/v1/namespaces/ns/subjectaccessreviews").is_none()
        );
        assert!(route("/apis/authorization.k8s.io/v1/widgets").is_none());
    }

    #[test]
    fn attributes_need_exactly_one_kind() {
        let k = "SelfSubjectAccessReview";
        assert_eq!(attributes(k, &json!({})).unwrap_err().code, 422);
        let both = json!({"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"verb": "get", "path": "/"}});
        assert_eq!(attributes(k, &both).unwrap_err().code, 422);
        let e = attributes(k, &json!({"resourceAttributes": {"resource": "pods"}})).unwrap_err();
        assert!(
            e.message
                .contains("spec.resourceAttributes.verb: Required value"),
            "{}",
            e.message
        );
        let e = attributes(k, &json!({"nonResourceAttributes": {"verb": "get"}})).unwrap_err();
        assert!(
            e.message.contains("spec.nonResourceAttributes.path"),
            "{}",
            e.message
        );
        let spec =
            json!({"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "x"}});
        let (req, ns) = attributes(k, &spec).unwrap();
        assert_eq!((req.verb, ns), ("list", "x"));
        let body = Body {
            bytes: br#"{"spec": {"resourceAttributes": {"verb": 5}}}"#,
            content_type: Some("application/json"),
        };
        let e = typed::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(k, &body)
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("spec.resourceAttributes.verb"),
            "{}",
            e.message
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any body, in any of the media types, is decoded or refused
        /// with a 4xx; any decoded spec gives attributes or a 422.
        #[test]
        fn review_bodies_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            ct in 0usize..4,
            verb in "[a-z*]{0,6}",
            res in proptest::option::of("[a-z/*]{0,10}"),
            sub in proptest::option::of("[a-z]{0,5}"),
            path in proptest::option::of("[a-z/*]{0,10}"),
        ) {
            let content_type = ["application/json", "application/yaml",
                "application/vnd.kubernetes.protobuf", "text/plain"][ct];
            let body = Body { bytes: &bytes, content_type: Some(content_type) };
            let k = "SubjectAccessReview";
            if let Err(e) = typed::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(k, &body) {
                proptest::prop_assert!((400..500).contains(&e.code), "{}", e.code);
            }
            let mut spec = json!({});
            if let Some(r) = &res {
                spec["resourceAttributes"] = json!({"verb": verb, "resource": r, "subresource": sub});
            }
            if let Some(p) = &path {
                spec["nonResourceAttributes"] = json!({"verb": verb, "path": p});
            }
            let json_body = serde_json::to_vec(&json!({"apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview", "spec": spec})).unwrap();
            let body = Body { bytes: &json_body, content_type: Some("application/json") };
            let decoded = typed::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(k, &body);
            proptest::prop_assert!(decoded.is_ok(), "{:?}", decoded.err().map(|e| e.message));
            match attributes(k, &spec) {
                Ok((req, _)) => proptest::prop_assert_eq!(req.verb, verb.as_str()),
                Err(e) => proptest::prop_assert_eq!(e.code, 422),
            }
        }
    }
}
