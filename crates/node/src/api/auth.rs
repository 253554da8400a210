//! Kubelet's webhook authentication and authorization for the node API:
//! a bearer token is checked with a TokenReview, and any client but
//! `system:masters` is authorized with a SubjectAccessReview on the
//! `nodes` resource, named after this node, with kubelet's subresource
//! for the path and verb for the method ([`attributes`]). Answers are
//! cached as kubelet caches them (tokens 2 min, allowed 5 min, denied
//! 30 s), so a metrics scraper every 15 s costs the API one review pair
//! per cache period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::Digest;

use super::Peer;

/// How long a TokenReview's answer is reused.
const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long an allowed SubjectAccessReview is reused.
const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a denied one is reused.
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Most entries a cache keeps before it is emptied.
const CACHE_MAX: usize = 4096;

/// What a request asks of the node, as kubelet maps it for authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, `update`, `patch`, `delete`.
    pub verb: &'static str,
    /// `stats`, `metrics`, `log`, `checkpoint`, `configz`, `healthz`,
    /// `pods` or `proxy`.
    pub subresource: &'static str,
}

fn is_subpath(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.starts_with('/'))
}

/// Kubelet's authorization attributes of `method path` (its
/// `GetRequestAttributes`): the verb from the method, the subresource from
/// the path (`/stats`, `/metrics`, `/logs`, `/checkpoint`, `/configz`,
/// `/healthz`, `/pods`; `proxy` for everything else, `/containerLogs`,
/// `/exec`, `/attach` included).
pub fn attributes(method: &http::Method, path: &str) -> Attributes {
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let subresource = [
        ("/stats", "stats"),
        ("/metrics", "metrics"),
        ("/logs", "log"),
        ("/checkpoint", "checkpoint"),
        ("/configz", "configz"),
        ("/healthz", "healthz"),
        ("/pods", "pods"),
    ]
    .iter()
    .find(|(p, _)| is_subpath(path, p))
    .map(|(_, s)| *s)
    .unwrap_or("proxy");
    Attributes { verb, subresource }
}

/// An answer and when it was had.
type Cached<T> = (Instant, T);

/// Users of tokens, by the token's SHA-256.
type TokenCache = HashMap<[u8; 32], Cached<Option<Peer>>>;

/// The delegated authenticator and authorizer of one node's API.
#[derive(Clone)]
pub struct Webhook {
    client: kube::Client,
    node_name: String,
    tokens: Arc<Mutex<TokenCache>>,
    decisions: Arc<Mutex<HashMap<String, Cached<bool>>>>,
}

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The token is not valid (401).
    #[error("Unauthorized")]
    Unauthenticated,
    /// The review could not be asked (the API is unreachable).
    #[error("{0}")]
    Unavailable(String),
}

impl Webhook {
    /// Reviews through `client` (the node's own identity, allowed to
    /// create both reviews) for node `node_name`.
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        Webhook {
            client,
            node_name: node_name.into(),
            tokens: Default::default(),
            decisions: Default::default(),
        }
    }

    /// The user of a bearer token, from a TokenReview (cached).
    pub async fn authenticate(&self, token: &str) -> Result<Peer, Refusal> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((at, peer)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < TOKEN_TTL
        {
            return peer.clone().ok_or(Refusal::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview failed: {e}")))?;
        let peer = answer.status.and_then(|s| {
            if s.authenticated != Some(true) {
                return None;
            }
            let u = s.user?;
            Some(Peer {
                user: u.username.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            })
        });
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), peer.clone()));
        peer.ok_or(Refusal::Unauthenticated)
    }

    /// Whether `peer` may do `attrs` on this node, from a
    /// SubjectAccessReview (cached).
    pub async fn authorize(&self, peer: &Peer, attrs: &Attributes) -> Result<bool, Refusal> {
        let key = format!(
            "{}\0{}\0{}\0{}",
            peer.user,
            peer.groups.join(","),
            attrs.verb,
            attrs.subresource
        );
        if let Some((at, allowed)) = self
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < if *allowed { ALLOWED_TTL } else { DENIED_TTL }
        {
            return Ok(*allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(peer.user.clone()),
                groups: Some(peer.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attrs.verb.to_string()),
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(attrs.subresource.to_string()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("SubjectAccessReview failed: {e}")))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut cache = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), allowed));
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_kubelets_subresources() {
        let get = http::Method::GET;
        let a = |m: &http::Method, p: &str| {
            let a = attributes(m, p);
            (a.verb, a.subresource)
        };
        assert_eq!(a(&get, "/stats/summary"), ("get", "stats"));
        assert_eq!(a(&get, "/stats"), ("get", "stats"));
        assert_eq!(a(&get, "/metrics/resource"), ("get", "metrics"));
        assert_eq!(a(&get, "/metrics"), ("get", "metrics"));
        // Not a sub-path of /metrics.
        assert_eq!(a(&get, "/metricsfoo"), ("get", "proxy"));
        assert_eq!(a(&get, "/containerLogs/ns/p/c"), ("get", "proxy"));
        assert_eq!(a(&http::Method::POST, "/exec/ns/p/c"), ("create", "proxy"));
        assert_eq!(a(&get, "/logs/syslog"), ("get", "log"));
        assert_eq!(a(&get, "/pods"), ("get", "pods"));
        assert_eq!(a(&http::Method::DELETE, "/x"), ("delete", "proxy"));
    }
}
