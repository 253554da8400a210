//! Service-account tokens: the JWTs that `serviceaccounts/<name>/token`
//! (TokenRequest) issues and that bearer-token authentication accepts.
//!
//! Tokens are ES256 JWTs signed with the cluster's `service.key` (every
//! server has the same key through the bootstrap data, so a token issued
//! by one server is accepted by all). Their claims follow kube-apiserver's
//! bound tokens: `iss`, `aud`, `sub = system:serviceaccount:<ns>:<name>`,
//! `iat`/`nbf`/`exp`, `jti`, and a `kubernetes.io` claim that names the
//! ServiceAccount and the Pod the token is bound to, with their uids. A
//! token is accepted only while that ServiceAccount and Pod exist with
//! those uids and are not past their deletion time, so deleting a pod
//! revokes the tokens its node requested for it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::registry::{self, ResourceType};
use crate::{ApiState, Identity};

/// The issuer (`iss`) of every token, RKE2's `--service-account-issuer`.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The audiences the API accepts (RKE2's `--api-audiences`); also the
/// audiences of a TokenRequest that names none.
pub const API_AUDIENCES: &[&str] = &[ISSUER, "rke2"];

/// `spec.expirationSeconds` of a TokenRequest that gives none.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The shortest lifetime a TokenRequest may ask for (upstream's 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// The longest lifetime a TokenRequest may ask for (upstream's 2^32 s).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Clock skew tolerated on `nbf` and `exp`, as go-jose's default leeway.
const LEEWAY_SECONDS: i64 = 60;

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a token was not accepted (logged at debug; clients only see 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// Another algorithm or key id than ours.
    #[error("token not signed by this cluster's service-account key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// Another issuer.
    #[error("token issued by {0:?}, not {ISSUER}")]
    WrongIssuer(String),
    /// No audience the API accepts.
    #[error("token audiences {0:?} are not accepted by this API")]
    WrongAudience(Vec<String>),
    /// Past `exp`.
    #[error("service account token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("service account token is not valid yet")]
    NotYetValid,
    /// The ServiceAccount or bound object is gone, recreated or deleted.
    #[error("service account token has been invalidated: {0}")]
    Invalidated(String),
    /// The store could not be read.
    #[error("looking up the token's objects: {0}")]
    Store(String),
}

/// A named object with its uid, as the `kubernetes.io` claim carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectRef,
    /// The Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The node of that Pod, when it was bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// The claims of a service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Issuer.
    pub iss: String,
    /// Unique token id.
    pub jti: String,
    /// Kubernetes' own claims.
    #[serde(rename = "kubernetes.io")]
    pub kube: KubeClaims,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
}

impl Claims {
    /// Claims for a token of `account` valid from `now` for `seconds`.
    pub fn new(audiences: Vec<String>, now: i64, seconds: i64, kube: KubeClaims) -> Claims {
        Claims {
            sub: service_account_user(&kube.namespace, &kube.serviceaccount.name),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            iss: ISSUER.to_string(),
            jti: uuid::Uuid::new_v4().to_string(),
            kube,
        }
    }
}

/// `system:serviceaccount:<namespace>:<name>`, the user of a token.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Signs and verifies service-account tokens with one P-256 key.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds a private key: only the public key id is printed.
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// The issuer for a PKCS#8 PEM P-256 key (`server/tls/service.key`).
    pub fn from_pem(pem: &str) -> Result<TokenIssuer, String> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("service-account key is not PEM: {e}"))?;
        Self::from_pkcs8(&der)
    }

    /// The issuer for a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<TokenIssuer, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("service-account key is not a PKCS#8 P-256 key: {e}"))?;
        // kube-apiserver's key id: the SHA-256 of the public key's PKIX DER.
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        let kid = B64.encode(sha2::Sha256::digest(&spki));
        Ok(TokenIssuer { key, kid, rng })
    }

    /// A fresh random key (tests).
    pub fn generate() -> TokenIssuer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generating a P-256 key");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a generated key parses")
    }

    /// The key id (`kid`) in the tokens' header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
        let mut out = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims).unwrap_or_default()));
        // Signing only fails when the system RNG does, which ring treats
        // as unrecoverable elsewhere too.
        let sig = self
            .key
            .sign(&self.rng, out.as_bytes())
            .expect("ECDSA signing");
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        out
    }

    /// Checks signature, issuer, audience and validity period at `now`
    /// (Unix seconds) and returns the claims. Whether the ServiceAccount and
    /// the bound object still exist is [`authenticate`]'s part.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header["alg"] != "ES256" || header["kid"].as_str().is_some_and(|k| k != self.kid) {
            return Err(TokenError::UnknownKey);
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let signed = &token[..h.len() + 1 + c.len()];
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::WrongIssuer(claims.iss));
        }
        if !claims
            .aud
            .iter()
            .any(|a| API_AUDIENCES.contains(&a.as_str()))
        {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        if now > claims.exp + LEEWAY_SECONDS {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY_SECONDS < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub
            != service_account_user(&claims.kube.namespace, &claims.kube.serviceaccount.name)
        {
            return Err(TokenError::Malformed);
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn core(plural: &str) -> &'static ResourceType {
    registry::find("", "v1", plural).expect("core type registered")
}

/// The current object `name` in `namespace`, from the watch cache when it
/// holds it with uid `uid`, else from etcd (the cache may lag a create or
/// a re-create; etcd decides).
pub async fn current_object(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
    uid: Option<&str>,
) -> Result<Option<Value>, TokenError> {
    let key = rt.key(namespace, name);
    if let Some((obj, _)) = state.caches.running(rt).and_then(|c| c.get(&key))
        && uid.is_none_or(|u| obj["metadata"]["uid"] == u)
    {
        return Ok(Some(Value::clone(&obj)));
    }
    match state.store.get(&key).await {
        Ok(Some(kv)) => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| TokenError::Store(format!("decoding {key}: {e}"))),
        Ok(None) => Ok(None),
        Err(e) => Err(TokenError::Store(e.to_string())),
    }
}

/// Whether `obj` exists with `uid` and is not past its deletion time.
fn still_valid(obj: Option<&Value>, uid: &str, what: &str, now: i64) -> Result<(), TokenError> {
    let Some(obj) = obj else {
        return Err(TokenError::Invalidated(format!("{what} not found")));
    };
    if obj["metadata"]["uid"] != uid {
        return Err(TokenError::Invalidated(format!(
            "{what} was deleted and recreated (uid {} is not the token's {uid})",
            obj["metadata"]["uid"]
        )));
    }
    if let Some(ts) = obj["metadata"]["deletionTimestamp"].as_str()
        && chrono::DateTime::parse_from_rfc3339(ts).is_ok_and(|t| t.timestamp() < now)
    {
        return Err(TokenError::Invalidated(format!("{what} is being deleted")));
    }
    Ok(())
}

/// Authenticates a bearer token: a valid service-account token whose
/// ServiceAccount (and bound Pod) still exist yields the account's identity.
pub async fn authenticate(state: &ApiState, token: &str) -> Result<Identity, TokenError> {
    let now = unix_now();
    let claims = state.config().tokens.verify(token, now)?;
    let k = &claims.kube;
    let ns = k.namespace.as_str();
    let sa = current_object(
        state,
        core("serviceaccounts"),
        Some(ns),
        &k.serviceaccount.name,
        Some(&k.serviceaccount.uid),
    )
    .await?;
    let what = format!("serviceaccount {ns}/{}", k.serviceaccount.name);
    still_valid(sa.as_ref(), &k.serviceaccount.uid, &what, now)?;
    if let Some(pod) = &k.pod {
        let obj = current_object(state, core("pods"), Some(ns), &pod.name, Some(&pod.uid)).await?;
        still_valid(
            obj.as_ref(),
            &pod.uid,
            &format!("pod {ns}/{}", pod.name),
            now,
        )?;
    }
    Ok(Identity {
        user: claims.sub.clone(),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_string(),
        ],
    })
}

/// The path of TokenReview (`authentication.k8s.io/v1`), what delegated
/// authenticators (the node API, extension apiservers) ask.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Answers a TokenReview body (JSON): `status.authenticated` with the
/// token's user, or `false` with the reason in `status.error`, as
/// kube-apiserver's TokenReview REST does. `spec.audiences`, when given,
/// must share one with the API's audiences; `status.audiences` are those
/// shared (the API's own when none were asked for).
pub async fn review(state: &ApiState, body: &[u8]) -> Result<Value, crate::status::ApiError> {
    use crate::status::ApiError;
    let typed: k8s_openapi::api::authentication::v1::TokenReview = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("TokenReview: {e}")))?;
    let mut out = serde_json::to_value(&typed)
        .map_err(|e| ApiError::bad_request(format!("TokenReview: {e}")))?;
    out["apiVersion"] = "authentication.k8s.io/v1".into();
    out["kind"] = "TokenReview".into();
    if out["metadata"].is_null() {
        out["metadata"] = serde_json::json!({});
    }
    out["metadata"]["creationTimestamp"] = Value::Null;
    let token = typed.spec.token.clone().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value"
                .to_string(),
        ));
    }
    let asked = typed.spec.audiences.clone().unwrap_or_default();
    let shared: Vec<String> = if asked.is_empty() {
        API_AUDIENCES.iter().map(|a| a.to_string()).collect()
    } else {
        asked
            .iter()
            .filter(|a| API_AUDIENCES.contains(&a.as_str()))
            .cloned()
            .collect()
    };
    let status = if shared.is_empty() {
        serde_json::json!({
            "authenticated": false,
            "user": {},
            "error": format!("[invalid bearer token, token audiences {API_AUDIENCES:?} is invalid for the target audiences {asked:?}]"),
        })
    } else {
        match authenticate(state, &token).await {
            Ok(id) => serde_json::json!({
                "authenticated": true,
                "user": {"username": id.user, "groups": id.groups},
                "audiences": shared,
            }),
            Err(e) => serde_json::json!({
                "authenticated": false,
                "user": {},
                "error": format!("[invalid bearer token, {e}]"),
            }),
        }
    };
    out["status"] = status;
    Ok(out)
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube() -> KubeClaims {
        KubeClaims {
            namespace: "ns".into(),
            serviceaccount: ObjectRef {
                name: "default".into(),
                uid: "sa-uid".into(),
            },
            pod: Some(ObjectRef {
                name: "p".into(),
                uid: "pod-uid".into(),
            }),
            node: None,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let issuer = TokenIssuer::generate();
        let claims = Claims::new(vec![ISSUER.into()], 1_000, 3600, kube());
        let token = issuer.sign(&claims);
        assert_eq!(token.split('.').count(), 3);
        let got = issuer.verify(&token, 1_100).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.sub, "system:serviceaccount:ns:default");
        // The header names the algorithm and our key id.
        let header: Value =
            serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], issuer.key_id());
    }

    #[test]
    fn rejects_tampering_other_keys_and_time() {
        let issuer = TokenIssuer::generate();
        let claims = Claims::new(vec!["rke2".into()], 1_000, 3600, kube());
        let token = issuer.sign(&claims);
        // Another cluster's key (same shape, different kid and signature).
        let other = TokenIssuer::generate();
        assert_eq!(other.verify(&token, 1_100), Err(TokenError::UnknownKey));
        // Claims swapped for another account, signature kept.
        let mut forged = claims.clone();
        forged.kube.serviceaccount.name = "admin".into();
        forged.sub = service_account_user("ns", "admin");
        let parts: Vec<&str> = token.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert_eq!(
            issuer.verify(&swapped, 1_100),
            Err(TokenError::BadSignature)
        );
        assert_eq!(issuer.verify("a.b", 1_100), Err(TokenError::Malformed));
        assert_eq!(issuer.verify("", 1_100), Err(TokenError::Malformed));
        // Expiry and not-before with a minute of leeway.
        assert!(issuer.verify(&token, 1_000 + 3600 + 60).is_ok());
        assert_eq!(
            issuer.verify(&token, 1_000 + 3600 + 61),
            Err(TokenError::Expired)
        );
        assert_eq!(issuer.verify(&token, 900), Err(TokenError::NotYetValid));
        // Audiences the API does not accept.
        let vault = issuer.sign(&Claims::new(vec!["vault".into()], 1_000, 3600, kube()));
        assert_eq!(
            issuer.verify(&vault, 1_100),
            Err(TokenError::WrongAudience(vec!["vault".into()]))
        );
    }

    #[test]
    fn key_from_pem() {
        // A PKCS#8 PEM P-256 key (the shape rke2-trust writes) loads, and
        // the key id is stable for the same key.
        let pem = pkcs8_pem();
        let a = TokenIssuer::from_pem(&pem).unwrap();
        let b = TokenIssuer::from_pem(&pem).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let t = a.sign(&Claims::new(vec![ISSUER.into()], 5, 600, kube()));
        assert!(b.verify(&t, 10).is_ok());
        assert!(
            TokenIssuer::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }

    fn pkcs8_pem() -> String {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<String> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn bearer_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer abc.def".parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
