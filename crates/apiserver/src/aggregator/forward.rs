//! Talking to extension apiservers: the Service of an APIService is
//! resolved to one Ready endpoint from its EndpointSlices by the
//! apiserver itself (upstream's `ResolveEndpoint`; the node's service
//! proxy is not involved), then the request goes there over TLS —
//! verified with `caBundle` for `<service>.<namespace>.svc`, or not at all
//! with `insecureSkipTLSVerify` — presenting the front-proxy client
//! certificate, with the caller in `X-Remote-User`/`X-Remote-Group`.
//! Bodies stream both ways (a watch stays open as long as both ends do);
//! an upgrade is relayed byte for byte after the server's 101.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tracing::debug;

use super::{AggregatorConfig, ServiceRef, get_object, list_objects};
use crate::registry;
use crate::{ApiState, Identity};

/// How long TCP connect plus TLS handshake to an extension server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an extension server may take to send its answer's head (a
/// watch's body then streams on).
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a Service could not be resolved to an endpoint; the text is
/// upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No such Service.
    #[error("service \"{0}\" not found")]
    ServiceNotFound(String),
    /// ExternalName and other types cannot be resolved to endpoints.
    #[error("unsupported service type \"{0}\"")]
    UnsupportedType(String),
    /// The Service has no port with the APIService's number.
    #[error("no service port {port} found for service \"{name}\"")]
    NoPort {
        /// The port asked for.
        port: u16,
        /// The Service.
        name: String,
    },
    /// No Ready address on that port.
    #[error("no endpoints available for service \"{0}\"")]
    NoEndpoints(String),
    /// Reading the objects failed.
    #[error("{0}")]
    Store(String),
}

/// The port name of the Service port numbered `port`, or `None` when the
/// Service has none.
pub fn service_port_name(service: &Value, port: u16) -> Option<String> {
    service["spec"]["ports"]
        .as_array()?
        .iter()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
}

/// The Ready addresses (with their target port) of the slices for the
/// Service port named `port_name` (upstream: an endpoint counts unless
/// `conditions.ready` is false).
pub fn ready_addresses(slices: &[Arc<Value>], port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let Some(port) = s["ports"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["name"].as_str().unwrap_or("") == port_name)
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == Value::Bool(false) {
                continue;
            }
            for a in e["addresses"].as_array().into_iter().flatten() {
                if let Some(ip) = a.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out
}

/// The EndpointSlices of a Service (label `kubernetes.io/service-name`).
pub async fn slices_of(
    state: &ApiState,
    svc: &ServiceRef,
) -> Result<Vec<Arc<Value>>, ResolveError> {
    let rt = registry::find("discovery.k8s.io", "v1", "endpointslices").expect("registered");
    let all = list_objects(state, rt, Some(&svc.namespace))
        .await
        .map_err(|e| ResolveError::Store(e.message))?;
    Ok(all
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc.name.as_str())
        .collect())
}

/// The Service an APIService names, if it exists.
pub async fn service_of(
    state: &ApiState,
    svc: &ServiceRef,
) -> Result<Option<Arc<Value>>, ResolveError> {
    let rt = registry::find("", "v1", "services").expect("registered");
    get_object(state, rt, Some(&svc.namespace), &svc.name)
        .await
        .map_err(|e| ResolveError::Store(e.message))
}

/// One Ready endpoint of the Service (picked at random among them).
pub async fn resolve(state: &ApiState, svc: &ServiceRef) -> Result<SocketAddr, ResolveError> {
    let service = service_of(state, svc)
        .await?
        .ok_or_else(|| ResolveError::ServiceNotFound(svc.name.clone()))?;
    let ty = service["spec"]["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(ResolveError::UnsupportedType(ty.to_string()));
    }
    let port_name = service_port_name(&service, svc.port).ok_or_else(|| ResolveError::NoPort {
        port: svc.port,
        name: svc.name.clone(),
    })?;
    let addrs = ready_addresses(&slices_of(state, svc).await?, &port_name);
    if addrs.is_empty() {
        return Err(ResolveError::NoEndpoints(svc.name.clone()));
    }
    Ok(addrs[rand::random_range(0..addrs.len())])
}

// ------------------------------------------------------------ TLS

/// Errors building the TLS client towards an extension server.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The front-proxy certificate or the caBundle did not parse.
    #[error("{0}")]
    Trust(#[from] rke2_trust::TrustError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The system trust roots, for an APIService with neither `caBundle` nor
/// `insecureSkipTLSVerify` (upstream: "If unspecified, system trust roots
/// on the apiserver are used").
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client configuration for one APIService: its trust (caBundle,
/// system roots, or none with `insecureSkipTLSVerify`) and the
/// front-proxy client certificate; HTTP/1.1 by ALPN.
pub fn client_config(
    cfg: &AggregatorConfig,
    apiservice: &Value,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cert = rke2_trust::parse_certs(cfg.proxy_cert_pem.as_bytes())?;
    let key = rke2_trust::parse_key(cfg.proxy_key_pem.as_bytes())?;
    let mut config = if insecure {
        let provider = rke2_trust::provider();
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(provider))
            .with_client_auth_cert(cert, key)?
    } else {
        let ca = match super::ca_bundle(apiservice) {
            Some(pem) => pem,
            None => std::fs::read(SYSTEM_ROOTS).unwrap_or_default(),
        };
        let pem = String::from_utf8_lossy(&ca).into_owned();
        let client = (cfg.proxy_cert_pem.as_bytes(), cfg.proxy_key_pem.as_bytes());
        (*rke2_trust::client_tls_config(pem.as_bytes(), Some(client))?).clone()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// ------------------------------------------------------------ sending

/// Why a request to an extension server failed before its answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect failed.
    #[error("dial tcp {0}: {1}")]
    Connect(SocketAddr, #[source] std::io::Error),
    /// Connect plus handshake took too long.
    #[error("dial tcp {0}: i/o timeout")]
    ConnectTimeout(SocketAddr),
    /// The TLS handshake failed (an unverifiable certificate lands here).
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    /// HTTP failed.
    #[error("{0}")]
    Http(#[source] hyper::Error),
    /// No answer head in time.
    #[error("timeout awaiting response headers")]
    HeadTimeout,
    /// The server name is not a DNS name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// Sends `req` on a fresh TLS connection to `addr` (certificate checked
/// for `server_name`) and returns the answer's head; the body streams on.
pub async fn send(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    req: Request<Body>,
    head_timeout: Duration,
) -> Result<hyper::Response<hyper::body::Incoming>, SendError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| SendError::ServerName(server_name.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| SendError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await.map_err(SendError::Tls)
    })
    .await
    .map_err(|_| SendError::ConnectTimeout(addr))??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "extension apiserver connection ended with an error");
        }
    });
    tokio::time::timeout(head_timeout, sender.send_request(req))
        .await
        .map_err(|_| SendError::HeadTimeout)?
        .map_err(SendError::Http)
}

/// Hop-by-hop headers, which belong to one connection only.
pub(crate) fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Request headers forwarded: not hop-by-hop, not the caller's
/// credentials (used here already), not identity headers a caller might
/// forge.
fn forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(hop_by_hop(name)
        || n == "host"
        || n == "authorization"
        || n.starts_with("impersonate-")
        || n.starts_with("x-remote-"))
}

/// Sets the front-proxy identity headers (upstream's
/// `SetAuthProxyHeaders`): one `X-Remote-Group` per group.
pub fn set_identity_headers(headers: &mut HeaderMap, user: &str, groups: &[String]) {
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-remote-"))
        .cloned()
        .collect();
    for k in drop {
        headers.remove(k);
    }
    if let Ok(v) = HeaderValue::from_str(user) {
        headers.insert(HeaderName::from_static("x-remote-user"), v);
    }
    for g in groups {
        if let Ok(v) = HeaderValue::from_str(g) {
            headers.append(HeaderName::from_static("x-remote-group"), v);
        }
    }
}

/// The proxy's plain-text error (upstream's `http.Error`).
fn text_error(code: StatusCode, msg: &str) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{msg}\n"),
    )
        .into_response()
}

/// Whether the request asks to switch protocols (WebSocket, SPDY): a
/// `Connection` header naming `upgrade` and an `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Proxies one authorized request to the APIService's Service. An
/// upgrade is passed on; on the server's 101 the client gets it and the
/// bytes are relayed both ways until either side closes.
pub async fn proxy(
    state: &ApiState,
    identity: &Identity,
    apiservice: &Value,
    parts: &mut http::request::Parts,
    body: Option<Body>,
) -> Response {
    let upgrade = is_upgrade(&parts.headers)
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let Some(svc) = ServiceRef::of(apiservice) else {
        return text_error(StatusCode::NOT_FOUND, "");
    };
    // Upstream refuses until the availability check has passed.
    if !super::is_available(apiservice) {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    let Some(cfg) = state.config().aggregator.as_ref() else {
        return text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "API aggregation is not configured on this server",
        );
    };
    let insecure = apiservice["spec"]["insecureSkipTLSVerify"]
        .as_bool()
        .unwrap_or(false);
    let tls = match client_config(cfg, apiservice, insecure) {
        Ok(t) => t,
        Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let addr = match resolve(state, &svc).await {
        Ok(a) => a,
        Err(e) => {
            debug!(service = %format!("{}/{}", svc.namespace, svc.name), error = %e, "resolving an APIService's endpoint");
            return text_error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let builder = backend_request(parts, path_and_query, addr, upgrade.is_some());
    let mut req = match builder.body(body.unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    set_identity_headers(req.headers_mut(), &identity.user, &identity.groups);
    let resp = match send(tls, addr, &svc.server_name(), req, HEAD_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            // Upstream's proxy answers 503 with the transport's error.
            return text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("error trying to reach service: {e}"),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = upgrade
    {
        return switch_protocols(resp, client, addr);
    }
    let (head, incoming) = resp.into_parts();
    let mut out = Response::new(Body::new(incoming));
    *out.status_mut() = head.status;
    for (k, v) in &head.headers {
        if !hop_by_hop(k) {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}

/// The request to a backend at `addr` for the caller's `parts`: its
/// method, `path_and_query`, the headers that may be forwarded, the
/// caller's address in `X-Forwarded-For`, and the upgrade it asks for when
/// `upgrading`.
pub(crate) fn backend_request(
    parts: &http::request::Parts,
    path_and_query: String,
    addr: SocketAddr,
    upgrading: bool,
) -> http::request::Builder {
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .header(header::HOST, addr.to_string());
    for (k, v) in &parts.headers {
        if forwarded(k) {
            builder = builder.header(k, v);
        }
    }
    if let Some(peer) = parts.extensions.get::<crate::server::PeerAddr>() {
        builder = builder.header("x-forwarded-for", peer.0.ip().to_string());
    }
    if upgrading && let Some(protocol) = parts.headers.get(header::UPGRADE) {
        builder = builder
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, protocol);
    }
    builder
}

/// The client's 101 for a backend's, with the backend's headers; a task
/// then relays bytes between the two upgraded connections.
pub(crate) fn switch_protocols(
    resp: hyper::Response<hyper::body::Incoming>,
    client: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) -> Response {
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    let server = hyper::upgrade::on(resp);
    tokio::spawn(relay(client, server, addr));
    out
}

/// Copies bytes between an upgraded client connection and the extension
/// server's.
async fn relay(
    client: hyper::upgrade::OnUpgrade,
    server: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%addr, error = %e, "aggregated upgrade did not complete");
            return;
        }
    };
    let carried = rke2_relay::splice(
        TokioIo::new(client),
        TokioIo::new(server),
        rke2_relay::LINGER,
    )
    .await;
    debug!(%addr, up = carried.up, down = carried.down, "upgraded stream closed");
}
