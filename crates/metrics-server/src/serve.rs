//! The HTTPS side: who is asking (authentication), may they
//! (authorization), and the `metrics.k8s.io/v1beta1` answers.
//!
//! Authentication, as a delegated extension apiserver does it: a client
//! certificate signed by the request-header CA of
//! `kube-system/extension-apiserver-authentication` whose CN is one of
//! `requestheader-allowed-names` (the aggregator's front-proxy
//! certificate) names the user in `X-Remote-User`, the groups in
//! `X-Remote-Group` and extras in `X-Remote-Extra-*`; a certificate of
//! the client CA names the user itself (CN, O); a bearer token is checked
//! with a TokenReview. `/healthz`, `/livez` and `/readyz` are open.
//! Authorization: `system:masters` passes; anyone else by a
//! SubjectAccessReview (resource attributes for `nodes`/`pods` of
//! `metrics.k8s.io`, non-resource ones for discovery), cached 10 s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Shared;

/// The API group served.
pub const GROUP: &str = "metrics.k8s.io";
/// Its version.
pub const VERSION: &str = "v1beta1";
const DECISION_TTL: Duration = Duration::from_secs(10);
const TOKEN_TTL: Duration = Duration::from_secs(10);

/// The request-header settings of `extension-apiserver-authentication`.
#[derive(Debug, Clone, Default)]
pub struct RequestHeader {
    /// The request-header CA certificates (DER).
    pub ca_ders: Vec<Vec<u8>>,
    /// Allowed front-proxy certificate CNs (empty: any).
    pub allowed_names: Vec<String>,
    /// Headers naming the user.
    pub user_headers: Vec<String>,
    /// Headers naming the groups.
    pub group_headers: Vec<String>,
    /// Prefixes of the headers carrying extras.
    pub extra_prefixes: Vec<String>,
}

fn json_list(v: Option<&String>) -> Vec<String> {
    v.and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
        .unwrap_or_default()
}

impl RequestHeader {
    /// From the ConfigMap's data; `Err` names what is missing or bad.
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let pem = data
            .get("requestheader-client-ca-file")
            .ok_or("requestheader-client-ca-file is missing")?;
        let ca_ders = rke2_trust::parse_certs(pem.as_bytes())
            .map_err(|e| format!("requestheader-client-ca-file: {e}"))?
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        Ok(RequestHeader {
            ca_ders,
            allowed_names: json_list(data.get("requestheader-allowed-names")),
            user_headers: json_list(data.get("requestheader-username-headers")),
            group_headers: json_list(data.get("requestheader-group-headers")),
            extra_prefixes: json_list(data.get("requestheader-extra-headers-prefix")),
        })
    }

    /// Whether `leaf` (DER) is a front-proxy certificate: signed by a
    /// request-header CA, with an allowed CN.
    pub fn is_front_proxy(&self, leaf: &[u8]) -> bool {
        let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
            return false;
        };
        if !signed_by(leaf, &self.ca_ders) {
            return false;
        }
        if self.allowed_names.is_empty() {
            return true;
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default();
        self.allowed_names.iter().any(|n| n == cn)
    }

    /// The user the front proxy names in `headers`.
    pub fn user(&self, headers: &HeaderMap) -> Option<User> {
        let name = self
            .user_headers
            .iter()
            .find_map(|h| headers.get(h.as_str())?.to_str().ok())
            .filter(|u| !u.is_empty())?
            .to_string();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in headers {
            for p in &self.extra_prefixes {
                if let Some(key) = k.as_str().strip_prefix(&p.to_ascii_lowercase())
                    && let Ok(v) = v.to_str()
                {
                    let key = percent_decode(key);
                    extra.entry(key).or_default().push(v.to_string());
                }
            }
        }
        Some(User {
            name,
            groups,
            extra,
        })
    }
}

/// Whether `leaf` (DER) carries a signature of one of `cas` (DER).
pub fn signed_by(leaf: &[u8], cas: &[Vec<u8>]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return false;
    };
    cas.iter().any(|ca| {
        X509Certificate::from_der(ca)
            .ok()
            .is_some_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extras.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The TLS client certificate of a connection (DER), if any.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Vec<u8>);

/// What a request asks, for authorization.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// A resource request.
    Resource {
        /// get, list, watch.
        verb: &'static str,
        /// nodes or pods.
        resource: &'static str,
        /// Namespace of a pod request.
        namespace: Option<String>,
        /// Name of a get.
        name: Option<String>,
    },
    /// Anything else (discovery).
    NonResource {
        /// The path.
        path: String,
    },
}

/// The request a path names.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// `/apis/metrics.k8s.io/v1beta1`.
    Resources,
    /// `/apis/metrics.k8s.io`.
    Group,
    /// `/apis`.
    Groups,
    /// Nodes: one or all.
    Nodes(Option<String>),
    /// Pods: a namespace or all, one or all.
    Pods(Option<String>, Option<String>),
}

/// Parses a path under `/apis`.
pub fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["apis"] => Some(Route::Groups),
        ["apis", GROUP] => Some(Route::Group),
        ["apis", GROUP, VERSION] => Some(Route::Resources),
        ["apis", GROUP, VERSION, "nodes"] => Some(Route::Nodes(None)),
        ["apis", GROUP, VERSION, "nodes", n] => Some(Route::Nodes(Some(n.to_string()))),
        ["apis", GROUP, VERSION, "pods"] => Some(Route::Pods(None, None)),
        ["apis", GROUP, VERSION, "namespaces", ns, "pods"] => {
            Some(Route::Pods(Some(ns.to_string()), None))
        }
        ["apis", GROUP, VERSION, "namespaces", ns, "pods", n] => {
            Some(Route::Pods(Some(ns.to_string()), Some(n.to_string())))
        }
        _ => None,
    }
}

/// The authorization attributes of `route` with `watch`.
pub fn ask(route: &Route, path: &str, watch: bool) -> Ask {
    let verb = |named: bool| {
        if watch {
            "watch"
        } else if named {
            "get"
        } else {
            "list"
        }
    };
    match route {
        Route::Nodes(n) => Ask::Resource {
            verb: verb(n.is_some()),
            resource: "nodes",
            namespace: None,
            name: n.clone(),
        },
        Route::Pods(ns, n) => Ask::Resource {
            verb: verb(n.is_some()),
            resource: "pods",
            namespace: ns.clone(),
            name: n.clone(),
        },
        _ => Ask::NonResource {
            path: path.to_string(),
        },
    }
}

/// What clients are trusted by: the front-proxy settings, the client CA,
/// and the TLS configuration that accepts certificates of both. Replaced
/// whole when `extension-apiserver-authentication` changes.
pub struct Trust {
    /// Front-proxy settings.
    pub request_header: RequestHeader,
    /// Client CA certificates (DER).
    pub client_ca_ders: Vec<Vec<u8>>,
    /// The serving TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// The ConfigMap data this was built from.
    pub source: BTreeMap<String, String>,
}

/// Authentication and authorization state.
pub struct Auth {
    client: kube::Client,
    /// The current [`Trust`].
    pub trust: arc_swap::ArcSwap<Trust>,
    decisions: Mutex<HashMap<String, (Instant, bool)>>,
    tokens: Mutex<HashMap<String, (Instant, Option<User>)>>,
}

impl Auth {
    /// Reviews through `client`, clients trusted as `trust` says.
    pub fn new(client: kube::Client, trust: Trust) -> Self {
        Auth {
            client,
            trust: arc_swap::ArcSwap::from_pointee(trust),
            decisions: Default::default(),
            tokens: Default::default(),
        }
    }

    /// The caller of a request, or the 401 message.
    pub async fn authenticate(
        &self,
        cert: Option<&ClientCert>,
        headers: &HeaderMap,
    ) -> Result<User, String> {
        if let Some(ClientCert(der)) = cert {
            let trust = self.trust.load();
            if trust.request_header.is_front_proxy(der) {
                return trust
                    .request_header
                    .user(headers)
                    .ok_or_else(|| "the front proxy named no user".to_string());
            }
            // TLS accepted a certificate of either CA: one of the
            // request-header CA with another CN is nobody.
            if !signed_by(der, &trust.client_ca_ders) {
                return Err(
                    "a request-header certificate with a CN not in requestheader-allowed-names"
                        .into(),
                );
            }
            let (name, groups) = rke2_trust::peer_identity(der).map_err(|e| e.to_string())?;
            return Ok(User {
                name,
                groups,
                extra: BTreeMap::new(),
            });
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "no client certificate and no bearer token".to_string())?;
        if let Some((at, u)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&token)
            && at.elapsed() < TOKEN_TTL
        {
            return u.clone().ok_or_else(|| "invalid bearer token".into());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.clone()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let user = answer.status.and_then(|s| {
            (s.authenticated == Some(true)).then_some(())?;
            let u = s.user?;
            Some(User {
                name: u.username.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default().into_iter().collect(),
            })
        });
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(token, (Instant::now(), user.clone()));
        user.ok_or_else(|| "invalid bearer token".into())
    }

    /// Whether `user` may `ask`.
    pub async fn authorize(&self, user: &User, ask: &Ask) -> Result<bool, String> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(true);
        }
        let key = format!("{user:?}\0{ask:?}");
        if let Some((at, ok)) = self
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < DECISION_TTL
        {
            return Ok(*ok);
        }
        let (resource_attributes, non_resource_attributes) = match ask {
            Ask::Resource {
                verb,
                resource,
                namespace,
                name,
            } => (
                Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    version: Some(VERSION.into()),
                    resource: Some(resource.to_string()),
                    verb: Some(verb.to_string()),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    ..Default::default()
                }),
                None,
            ),
            Ask::NonResource { path } => (
                None,
                Some(NonResourceAttributes {
                    path: Some(path.clone()),
                    verb: Some("get".into()),
                }),
            ),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
                resource_attributes,
                non_resource_attributes,
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview failed: {e}"))?;
        let ok = answer.status.is_some_and(|s| s.allowed);
        let mut cache = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), ok));
        Ok(ok)
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// Handles one request.
pub async fn handle(shared: Arc<Shared>, req: http::Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match path.as_str() {
        "/healthz" | "/livez" => return (StatusCode::OK, "ok").into_response(),
        "/readyz" => {
            return if shared.is_ready() {
                (StatusCode::OK, "ok").into_response()
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metric storage not ready",
                )
                    .into_response()
            };
        }
        _ => {}
    }
    let cert = req.extensions().get::<ClientCert>().cloned();
    let user = match shared.auth.authenticate(cert.as_ref(), req.headers()).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "request not authenticated");
            return status(401, "Unauthorized", "Unauthorized".into());
        }
    };
    let route = route(&path);
    let watch = q("watch").is_some_and(|v| v == "true" || v == "1");
    let asked = match &route {
        Some(r) => ask(r, &path, watch),
        None => Ask::NonResource { path: path.clone() },
    };
    match shared.auth.authorize(&user, &asked).await {
        Ok(true) => {}
        Ok(false) => {
            let msg = match &asked {
                Ask::Resource {
                    verb,
                    resource,
                    namespace,
                    name,
                } => format!(
                    "{resource}.{GROUP}{} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{GROUP}\" {}",
                    name.as_ref()
                        .map(|n| format!(" \"{n}\""))
                        .unwrap_or_default(),
                    user.name,
                    match namespace {
                        Some(ns) => format!("in the namespace \"{ns}\""),
                        None => "at the cluster scope".into(),
                    }
                ),
                Ask::NonResource { path } => {
                    format!(
                        "forbidden: User \"{}\" cannot get path \"{path}\"",
                        user.name
                    )
                }
            };
            return status(403, "Forbidden", msg);
        }
        Err(e) => return status(500, "InternalError", e),
    }
    if *req.method() != Method::GET && *req.method() != Method::HEAD {
        return status(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({path})"),
        );
    }
    let Some(route) = route else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    };
    if watch {
        return status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource (watch)".into(),
        );
    }
    let selector = match q("labelSelector").map(rke2_apimachinery::selectors::parse_label_selector)
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            return status(
                400,
                "BadRequest",
                format!("unable to parse requirement: {}", e.0),
            );
        }
    };
    let table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let answer = match route {
        Route::Groups => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]}),
        Route::Group => group(),
        Route::Resources => resources(),
        Route::Nodes(name) => match shared.node_metrics(name.as_deref(), selector.as_ref()) {
            Ok(v) => v,
            Err(name) => {
                return status(
                    404,
                    "NotFound",
                    format!("nodemetrics.{GROUP} \"{name}\" not found"),
                );
            }
        },
        Route::Pods(ns, name) => {
            match shared.pod_metrics(ns.as_deref(), name.as_deref(), selector.as_ref()) {
                Ok(v) => v,
                Err(name) => {
                    return status(
                        404,
                        "NotFound",
                        format!("podmetrics.{GROUP} \"{name}\" not found"),
                    );
                }
            }
        }
    };
    if table
        && answer["kind"]
            .as_str()
            .is_some_and(|k| k.ends_with("Metrics") || k.ends_with("MetricsList"))
    {
        return json_response(StatusCode::OK, &crate::api::table(&answer));
    }
    json_response(StatusCode::OK, &answer)
}

fn group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [gv], "preferredVersion": gv})
}

/// The `APIResourceList` of `metrics.k8s.io/v1beta1`.
pub fn resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_and_ask_as_an_apiserver_would() {
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/nodes"),
            Some(Route::Nodes(None))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods/p"),
            Some(Route::Pods(Some("ns".into()), Some("p".into())))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/pods"),
            Some(Route::Pods(None, None))
        );
        assert_eq!(
            route("/apis/metrics.k8s.io/v1beta1/"),
            Some(Route::Resources)
        );
        assert_eq!(route("/apis/metrics.k8s.io/v1/nodes"), None);
        let r = route("/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods").unwrap();
        assert_eq!(
            ask(&r, "", false),
            Ask::Resource {
                verb: "list",
                resource: "pods",
                namespace: Some("ns".into()),
                name: None
            }
        );
        let r = route("/apis/metrics.k8s.io/v1beta1/nodes/n1").unwrap();
        assert!(matches!(
            ask(&r, "", false),
            Ask::Resource {
                verb: "get",
                name: Some(_),
                ..
            }
        ));
        assert!(matches!(
            ask(&Route::Resources, "/apis/metrics.k8s.io/v1beta1", false),
            Ask::NonResource { .. }
        ));
    }

    #[test]
    fn front_proxy_certificates_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        let rh_ca = rke2_trust::CertAuthority::ensure(
            &dir.path().join("rh.crt"),
            &dir.path().join("rh.key"),
            "rh-ca",
        )
        .unwrap();
        let other = rke2_trust::CertAuthority::ensure(
            &dir.path().join("c.crt"),
            &dir.path().join("c.key"),
            "client-ca",
        )
        .unwrap();
        let data: BTreeMap<String, String> = [
            ("requestheader-client-ca-file", rh_ca.cert_pem.clone()),
            (
                "requestheader-allowed-names",
                "[\"system:auth-proxy\"]".into(),
            ),
            (
                "requestheader-username-headers",
                "[\"X-Remote-User\"]".into(),
            ),
            ("requestheader-group-headers", "[\"X-Remote-Group\"]".into()),
            (
                "requestheader-extra-headers-prefix",
                "[\"X-Remote-Extra-\"]".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let rh = RequestHeader::from_configmap(&data).unwrap();
        let der = |pem: &str| {
            rke2_trust::parse_certs(pem.as_bytes()).unwrap()[0]
                .as_ref()
                .to_vec()
        };
        let (proxy, _) = rh_ca
            .issue(&rke2_trust::LeafSpec::client("system:auth-proxy", &[]))
            .unwrap();
        let (wrong_cn, _) = rh_ca
            .issue(&rke2_trust::LeafSpec::client("mallory", &[]))
            .unwrap();
        let (other_ca, _) = other
            .issue(&rke2_trust::LeafSpec::client("system:auth-proxy", &[]))
            .unwrap();
        assert!(rh.is_front_proxy(&der(&proxy)));
        assert!(!rh.is_front_proxy(&der(&wrong_cn)));
        assert!(!rh.is_front_proxy(&der(&other_ca)));
        assert!(signed_by(&der(&other_ca), &[der(&other.cert_pem)]));
        assert!(!signed_by(&der(&wrong_cn), &[der(&other.cert_pem)]));
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "devs".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        h.insert("x-remote-extra-scopes%2Fa", "x".parse().unwrap());
        let u = rh.user(&h).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["devs", "system:authenticated"]);
        assert_eq!(u.extra["scopes/a"], ["x"]);
        assert!(rh.user(&HeaderMap::new()).is_none());
        assert!(
            RequestHeader::from_configmap(&BTreeMap::new())
                .unwrap_err()
                .contains("requestheader-client-ca-file")
        );
    }
}
