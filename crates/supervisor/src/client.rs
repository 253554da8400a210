//! The joiner's side of the supervisor: fetch `/cacerts` unverified, check
//! it against the token's CA hash, then talk TLS pinned to that CA.
//!
//! One request per connection (hyper http1 over tokio-rustls): joins make a
//! handful of requests, so connection reuse is not worth a pool.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rke2_trust::{Token, TrustError};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Time allowed for one whole request: connect, handshake, answer, body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted; bootstrap data is a few tens of KiB.
const MAX_BODY: usize = 16 << 20;

/// Everything that can go wrong while joining through the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server URL cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TCP connection, TLS handshake or HTTP exchange failed.
    #[error("{url}: {message}")]
    Transport {
        /// The request: method and full URL (`GET https://…`).
        url: String,
        /// What failed.
        message: String,
    },
    /// The request did not complete within 10 s.
    #[error("{url}: no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// The request: method and full URL (`GET https://…`).
        url: String,
    },
    /// The supervisor answered 401.
    #[error(
        "{url}: HTTP 401 Unauthorized: the server refused the token password (check token / agent-token)"
    )]
    Unauthorized {
        /// The request: method and full URL (`GET https://…`).
        url: String,
    },
    /// The supervisor answered 403.
    #[error("{url}: HTTP 403 Forbidden: {message}")]
    Forbidden {
        /// The request: method and full URL (`GET https://…`).
        url: String,
        /// The server's explanation.
        message: String,
    },
    /// Any other non-success status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The request: method and full URL (`GET https://…`).
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer body.
        body: String,
    },
    /// The answer body is not what the route promises.
    #[error("{url}: unexpected answer: {message}")]
    Decode {
        /// The request: method and full URL (`GET https://…`).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The CA served by the supervisor is not the one the token pins.
    #[error(
        "the CA hash from the token ({token_hash}) does not match the server's CA (sha256 {server_hash}): \
         the token belongs to another cluster, or something is intercepting the connection"
    )]
    CaMismatch {
        /// The hash in the token.
        token_hash: String,
        /// The hash of the CA the server sent.
        server_hash: String,
    },
    /// A critical setting differs between this server and the cluster.
    #[error(
        "critical configuration mismatch: {key} is {local} on this server but {remote} on the cluster"
    )]
    CriticalMismatch {
        /// The configuration key.
        key: String,
        /// This server's value, rendered for humans.
        local: String,
        /// The cluster's value, rendered for humans.
        remote: String,
    },
    /// A TLS configuration could not be built from the CA.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Where to connect, parsed once from the server URL.
#[derive(Clone, Debug)]
struct Target {
    /// `https://host:port` without trailing slash, for error messages.
    base: String,
    /// Host as used for DNS / IP connect (IPv6 without brackets).
    host: String,
    port: u16,
    /// `host:port` for the Host header (IPv6 with brackets).
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, JoinError> {
        let bad = |reason: &str| JoinError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the supervisor URL must start with https://"));
        }
        let auth = uri.authority().ok_or_else(|| bad("missing host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("user info in the URL is not supported; use the token"));
        }
        let host = auth.host();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = auth.port_u16().unwrap_or(443);
        let authority = format!("{host}:{port}");
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Target {
            base: format!("https://{authority}"),
            host,
            port,
            authority,
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>, JoinError> {
        ServerName::try_from(self.host.clone()).map_err(|e| JoinError::InvalidUrl {
            url: self.base.clone(),
            reason: format!("host is not a valid TLS server name: {e}"),
        })
    }
}

fn insecure_tls_config() -> Result<Arc<rustls::ClientConfig>, JoinError> {
    let provider = rke2_trust::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Tls {
            step: "client TLS protocol versions",
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(provider))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pinned_tls_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, JoinError> {
    let mut config = (*rke2_trust::client_tls_config(ca_pem, None)?).clone();
    // The server offers h2 and http/1.1; we speak http/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Aborts the hyper connection task when the request is done or dropped
/// (timeout), so no connection outlives its request.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TLS handshake error, explained when the certificate was refused:
/// rustls says "BadSignature" or "UnknownIssuer", which does not tell an
/// operator what to fix.
struct HandshakeError(std::io::Error);

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let cert_refused = self
            .0
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
        if cert_refused {
            f.write_str(
                " (the server certificate is not signed by the cluster's server CA, or its \
                 SANs do not include this host: add the registration address to tls-san)",
            )?;
        }
        Ok(())
    }
}

/// One GET over a fresh TLS connection; returns status and body.
async fn get_once(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, String)],
) -> Result<(StatusCode, Bytes), JoinError> {
    request_once(
        target,
        tls,
        http::Method::GET,
        path,
        auth,
        extra,
        Bytes::new(),
    )
    .await
}

/// One request on a fresh connection, within [`REQUEST_TIMEOUT`].
async fn request_once(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    method: http::Method,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, String)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), JoinError> {
    let url = format!("{method} {}{path}", target.base);
    let transport = |what: &str, e: &dyn std::fmt::Display| JoinError::Transport {
        url: url.clone(),
        message: format!("{what}: {e}"),
    };
    let server_name = target.server_name()?;
    let work = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| transport("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| transport("TLS handshake", &HandshakeError(e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport("HTTP handshake", &e))?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &target.authority)
            .header(header::USER_AGENT, "rke2-supervisor-client");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| transport("build request", &e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport("request", &e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| transport("read answer", &*e))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(JoinError::Timeout { url }),
    }
}

fn body_text(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 500 {
        format!("{}...", s.chars().take(500).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Turn a non-2xx answer into the error that explains it.
fn check_status(url: String, status: StatusCode, body: &[u8]) -> Result<(), JoinError> {
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED => Err(JoinError::Unauthorized { url }),
        StatusCode::FORBIDDEN => Err(JoinError::Forbidden {
            url,
            message: body_text(body),
        }),
        s => Err(JoinError::Status {
            url,
            status: s.as_u16(),
            body: body_text(body),
        }),
    }
}

/// GET `<server_url>/cacerts` without verifying the server certificate.
///
/// This is the bootstrap step of a join: the answer is trusted only after
/// [`verify_ca`] checks it against the token.
pub async fn fetch_cacerts(server_url: &str) -> Result<Vec<u8>, JoinError> {
    let target = Target::parse(server_url)?;
    let (status, body) = get_once(&target, insecure_tls_config()?, "/cacerts", None, &[]).await?;
    check_status(format!("GET {}/cacerts", target.base), status, &body)?;
    if body.is_empty() {
        return Err(JoinError::Decode {
            url: format!("GET {}/cacerts", target.base),
            message: "empty CA bundle".into(),
        });
    }
    Ok(body.to_vec())
}

/// Check CA bytes from [`fetch_cacerts`] against the token.
///
/// A full `K10` token must carry the SHA-256 of exactly these bytes. A
/// bare-password token cannot check anything: it is accepted with a loud
/// warning, as RKE2 does.
pub fn verify_ca(token: &Token, ca_pem: &[u8]) -> Result<(), JoinError> {
    match &token.ca_hash {
        None => {
            tracing::warn!(
                "the token is a bare password without a CA hash: the server is NOT authenticated \
                 and a man in the middle could impersonate it; use the full K10 token from \
                 server/token"
            );
            Ok(())
        }
        Some(h) if token.ca_matches(ca_pem) => {
            tracing::debug!(ca_hash = %h, "server CA matches the token");
            Ok(())
        }
        Some(h) => Err(JoinError::CaMismatch {
            token_hash: h.clone(),
            server_hash: rke2_trust::bundle_hash(ca_pem),
        }),
    }
}

/// A supervisor client pinned to the cluster's server CA, authenticating
/// with basic auth (`server` or `node` and the token password).
///
/// The server certificate's SANs must include the URL host; that holds
/// when users list the registration address in `tls-san`, as the HA
/// install page says.
#[derive(Clone)]
pub struct SupervisorClient {
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    auth: String,
}

impl std::fmt::Debug for SupervisorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Authorization header holds the password: leave it out.
        f.debug_struct("SupervisorClient")
            .field("server", &self.target.base)
            .finish_non_exhaustive()
    }
}

impl SupervisorClient {
    /// A client for `server_url` (`https://host:9345`) trusting only
    /// `ca_pem`.
    pub fn new(
        server_url: &str,
        ca_pem: &[u8],
        user: &str,
        password: &str,
    ) -> Result<SupervisorClient, JoinError> {
        let target = Target::parse(server_url)?;
        target.server_name()?;
        Ok(SupervisorClient {
            tls: pinned_tls_config(ca_pem)?,
            auth: format!("Basic {}", B64.encode(format!("{user}:{password}"))),
            target,
        })
    }

    /// The server URL this client talks to (`https://host:port`).
    pub fn server_url(&self) -> &str {
        &self.target.base
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), JoinError> {
        get_once(&self.target, self.tls.clone(), path, Some(&self.auth), &[]).await
    }

    /// Asks the server to rotate the cluster token to `new_token` (`PUT
    /// /v1-rke2/token`, as `server` with the current token): it re-encrypts
    /// the bootstrap data and answers once that is stored.
    pub async fn rotate_token(&self, new_token: &str) -> Result<(), JoinError> {
        let path = "/v1-rke2/token";
        let body = serde_json::to_vec(&serde_json::json!({ "token": new_token }))
            .expect("JSON value serializes");
        let (status, answer) = request_once(
            &self.target,
            self.tls.clone(),
            http::Method::PUT,
            path,
            Some(&self.auth),
            &[("content-type", "application/json".to_string())],
            Bytes::from(body),
        )
        .await?;
        check_status(format!("PUT {}{path}", self.target.base), status, &answer)
    }

    /// Asks the server to store new CA certificates and keys (`PUT
    /// /v1-rke2/cert/cacerts`, k3s's `/v1-k3s/cert/cacerts`; `rke2
    /// certificate rotate-ca`). `files` maps paths relative to
    /// `server/tls` to their bytes; the server checks them again and
    /// stores them in the bootstrap data, which every server applies at
    /// its next start.
    pub async fn rotate_ca(
        &self,
        files: &[(String, Vec<u8>)],
        force: bool,
    ) -> Result<(), JoinError> {
        use base64::Engine;
        let path = "/v1-rke2/cert/cacerts";
        let files: serde_json::Map<String, serde_json::Value> = files
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "force": force, "files": files }))
            .expect("JSON value serializes");
        let (status, answer) = request_once(
            &self.target,
            self.tls.clone(),
            http::Method::PUT,
            path,
            Some(&self.auth),
            &[("content-type", "application/json".to_string())],
            Bytes::from(body),
        )
        .await?;
        check_status(format!("PUT {}{path}", self.target.base), status, &answer)
    }

    /// The secrets encryption state (`GET /v1-rke2/encrypt/status`).
    pub async fn encrypt_status(&self) -> Result<serde_json::Value, JoinError> {
        self.get_json("/v1-rke2/encrypt/status").await
    }

    /// Sends a secrets encryption command (`PUT /v1-rke2/encrypt/config`);
    /// returns the server's answer text.
    pub async fn encrypt_command(&self, request: &serde_json::Value) -> Result<String, JoinError> {
        let path = "/v1-rke2/encrypt/config";
        let body = serde_json::to_vec(request).expect("JSON value serializes");
        let (status, answer) = request_once(
            &self.target,
            self.tls.clone(),
            http::Method::PUT,
            path,
            Some(&self.auth),
            &[("content-type", "application/json".to_string())],
            Bytes::from(body),
        )
        .await?;
        check_status(self.url(path), status, &answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    async fn get_ok(&self, path: &str) -> Result<Bytes, JoinError> {
        let (status, body) = self.get(path).await?;
        check_status(self.url(path), status, &body)?;
        Ok(body)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, JoinError> {
        let body = self.get_ok(path).await?;
        serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
            url: self.url(path),
            message: format!("invalid JSON: {e}"),
        })
    }

    /// Fetches a kubelet certificate (`kind` = `client` or `serving`) for
    /// `node`, proving the node's identity with its password.
    pub async fn kubelet_cert(
        &self,
        kind: &str,
        node: &str,
        password: &str,
        ips: &[String],
    ) -> Result<KubeletCert, JoinError> {
        let path = format!("/v1-rke2/{kind}-kubelet.crt");
        let extra = [
            (crate::server::NODE_NAME_HEADER, node.to_string()),
            (crate::server::NODE_PASSWORD_HEADER, password.to_string()),
            (crate::server::NODE_IP_HEADER, ips.join(",")),
        ];
        let (status, body) = get_once(
            &self.target,
            self.tls.clone(),
            &path,
            Some(&self.auth),
            &extra,
        )
        .await?;
        check_status(self.url(&path), status, &body)?;
        serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
            url: self.url(&path),
            message: format!("invalid JSON: {e}"),
        })
    }

    /// Fetches the service proxy's client certificate
    /// (`CN=system:kube-proxy`).
    pub async fn kube_proxy_cert(&self) -> Result<KubeletCert, JoinError> {
        let path = "/v1-rke2/client-kube-proxy.crt";
        let (status, body) =
            get_once(&self.target, self.tls.clone(), path, Some(&self.auth), &[]).await?;
        check_status(self.url(path), status, &body)?;
        serde_json::from_slice(&body).map_err(|e| JoinError::Decode {
            url: self.url(path),
            message: format!("invalid JSON: {e}"),
        })
    }

    /// How errors name a GET of `path`.
    fn url(&self, path: &str) -> String {
        format!("GET {}{path}", self.target.base)
    }

    /// `/v1-rke2/config`: the cluster's non-secret configuration.
    pub async fn config(&self) -> Result<Value, JoinError> {
        self.get_json("/v1-rke2/config").await
    }

    /// `/v1-rke2/server-bootstrap`: the bootstrap document for
    /// [`crate::unpack`] (user `server` only).
    pub async fn server_bootstrap(&self) -> Result<Vec<u8>, JoinError> {
        Ok(self.get_ok("/v1-rke2/server-bootstrap").await?.to_vec())
    }

    /// `/db/info`: the etcd member list (user `server` only).
    pub async fn db_info(&self) -> Result<Value, JoinError> {
        self.get_json("/db/info").await
    }

    /// `/v1-rke2/apiservers`: `ip:port` of the live apiservers.
    pub async fn apiservers(&self) -> Result<Vec<String>, JoinError> {
        self.get_json("/v1-rke2/apiservers").await
    }

    /// `/v1-rke2/readyz`: `Ok(true)` on 200, `Ok(false)` on 503 (the API is
    /// not ready yet); anything else, including no answer, is an error.
    pub async fn readyz(&self) -> Result<bool, JoinError> {
        let path = "/v1-rke2/readyz";
        let (status, body) = self.get(path).await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Ok(false);
        }
        check_status(self.url(path), status, &body)?;
        Ok(true)
    }
}

/// A critical value normalised for comparison and rendered for humans:
/// strings trimmed; `disable` as a sorted, de-duplicated list (a
/// comma-separated string counts as a list, as on the command line).
fn normalise(key: &str, v: Option<&Value>) -> (Value, String) {
    let v = v.unwrap_or(&Value::Null);
    if key == "disable" {
        let mut items: Vec<String> = match v {
            Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.trim().to_string(),
                    other => other.to_string(),
                })
                .collect(),
            Value::String(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
            Value::Null => Vec::new(),
            other => vec![other.to_string()],
        };
        items.retain(|s| !s.is_empty());
        items.sort();
        items.dedup();
        let shown = format!("[{}]", items.join(", "));
        return (Value::from(items), shown);
    }
    match v {
        Value::String(s) => (Value::String(s.trim().to_string()), s.trim().to_string()),
        Value::Null => (Value::Null, "unset".to_string()),
        other => (other.clone(), other.to_string()),
    }
}

/// Compare the critical settings of this server's configuration (`local`,
/// an object whose keys are the flags marked critical in the config
/// crate's flag table) with the cluster's (`remote`, from
/// `/v1-rke2/config`). The first difference is an error naming the key and
/// both values.
pub fn compare_critical(local: &Value, remote: &Value) -> Result<(), JoinError> {
    let keys = local
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    for key in keys.iter().map(String::as_str) {
        let (l, l_shown) = normalise(key, local.get(key));
        let (r, r_shown) = normalise(key, remote.get(key));
        if l != r {
            return Err(JoinError::CriticalMismatch {
                key: key.to_string(),
                local: l_shown,
                remote: r_shown,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Value {
        json!({
            "cluster-cidr": "10.42.0.0/16",
            "service-cidr": "10.43.0.0/16",
            "cluster-domain": "cluster.local",
            "disable": ["rke2-ingress-nginx", "rke2-metrics-server"],
        })
    }

    #[test]
    fn critical_equal() {
        let mut r = cfg();
        r["disable"] = json!(["rke2-metrics-server", "rke2-ingress-nginx"]);
        // A key only the cluster publishes (a newer server's) is not ours to compare.
        r["other"] = json!("different");
        compare_critical(&cfg(), &r).unwrap();
        r["disable"] = json!("rke2-metrics-server, rke2-ingress-nginx");
        compare_critical(&cfg(), &r).unwrap();
        compare_critical(&json!({"disable": []}), &json!({})).unwrap();
    }

    #[test]
    fn critical_mismatch_messages() {
        let mut r = cfg();
        r["cluster-cidr"] = json!("10.99.0.0/16");
        assert_eq!(
            compare_critical(&cfg(), &r).unwrap_err().to_string(),
            "critical configuration mismatch: cluster-cidr is 10.42.0.0/16 on this server but 10.99.0.0/16 on the cluster"
        );
        let mut r = cfg();
        r["service-cidr"] = json!("10.96.0.0/12");
        assert_eq!(
            compare_critical(&cfg(), &r).unwrap_err().to_string(),
            "critical configuration mismatch: service-cidr is 10.43.0.0/16 on this server but 10.96.0.0/12 on the cluster"
        );
        let mut r = cfg();
        r["cluster-domain"] = json!("example.org");
        assert_eq!(
            compare_critical(&cfg(), &r).unwrap_err().to_string(),
            "critical configuration mismatch: cluster-domain is cluster.local on this server but example.org on the cluster"
        );
        let mut r = cfg();
        r["disable"] = json!(["rke2-ingress-nginx"]);
        assert_eq!(
            compare_critical(&cfg(), &r).unwrap_err().to_string(),
            "critical configuration mismatch: disable is [rke2-ingress-nginx, rke2-metrics-server] on this server but [rke2-ingress-nginx] on the cluster"
        );
        let mut r = cfg();
        r.as_object_mut().unwrap().remove("cluster-domain");
        assert_eq!(
            compare_critical(&cfg(), &r).unwrap_err().to_string(),
            "critical configuration mismatch: cluster-domain is cluster.local on this server but unset on the cluster"
        );
    }

    #[test]
    fn url_parsing() {
        let t = Target::parse("https://10.0.0.1:9345/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.1", 9345));
        assert_eq!(t.base, "https://10.0.0.1:9345");
        let t = Target::parse("https://[fd00::1]:9345").unwrap();
        assert_eq!(t.host, "fd00::1");
        assert_eq!(t.authority, "[fd00::1]:9345");
        t.server_name().unwrap();
        let t = Target::parse("https://rke2.example.com").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("rke2.example.com", 443));
        for bad in [
            "http://10.0.0.1:9345",
            "10.0.0.1:9345",
            "https://",
            "https://u:p@h:1",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(matches!(e, JoinError::InvalidUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn verify_ca_hashes() {
        let ca = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
        verify_ca(&Token::server(ca, "pw"), ca).unwrap();
        verify_ca(&Token::parse("bare-password").unwrap(), ca).unwrap();
        let other = Token::server(b"other", "pw");
        let e = verify_ca(&other, ca).unwrap_err().to_string();
        assert!(e.contains(&rke2_trust::ca_hash(b"other")), "{e}");
        assert!(e.contains(&rke2_trust::ca_hash(ca)), "{e}");
        assert!(
            e.contains("CA hash from the token") && e.contains("does not match the server's CA"),
            "{e}"
        );
    }
}

/// A certificate issued by the supervisor for a node.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct KubeletCert {
    /// Certificate (PEM).
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
    /// The issuing CA (PEM).
    pub ca: String,
}
