//! The proxy: HTTP/1.1 and HTTP/2 from clients (TLS by SNI on the HTTPS
//! listener), each request routed by the table current when it arrives
//! and sent to one endpoint of its backend over a keep-alive pool
//! (hyper-util's client), with ingress-nginx's headers and annotations.
//! A table swap affects requests that arrive after it; a request or an
//! upgraded connection in flight keeps the backend it was given.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::annotations::BackendProtocol;
use crate::routes::{Table, Target};

/// Errors of a body in either direction.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type passed through the proxy.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a backend connection may take to open (ingress-nginx's
/// `proxy-connect-timeout`, 5 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that belong to one connection, never forwarded
/// (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

// The forwarding headers, parsed once.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The proxy's shared state: the live table and the backend pools.
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    pool: Arc<crate::pool::Pool>,
    https: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    h2c: Client<HttpConnector, Body>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c.enforce_http(false);
    c
}

impl Proxy {
    /// A proxy routing by `table`.
    pub fn new(table: Arc<ArcSwap<Table>>) -> Self {
        let pool = |b: &mut hyper_util::client::legacy::Builder| {
            b.pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(1024);
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        // ingress-nginx's default `proxy-ssl-verify: off` for HTTPS
        // backends: an endpoint address's certificate names a Service at best.
        .dangerous()
        .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(
            rke2_trust::provider(),
        ))
        .with_no_client_auth();
        let https_conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(connector());
        let mut b = Client::builder(TokioExecutor::new());
        pool(&mut b);
        let https = b.build(https_conn);
        let mut b = Client::builder(TokioExecutor::new());
        pool(&mut b);
        b.http2_only(true);
        let h2c = b.build(connector());
        Self {
            table,
            pool: Arc::default(),
            https,
            h2c,
        }
    }

    /// The table requests are routed by now.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    /// `http` or `https` (X-Forwarded-Proto, redirects).
    pub scheme: &'static str,
    /// The port clients connected to (X-Forwarded-Port).
    pub port: u16,
}

/// Serves plain HTTP connections from `listener` until `stop`.
pub async fn serve_http(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    at: Listener,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(serve_connection(TokioIo::new(tcp), peer, proxy, at, false));
    }
}

/// Serves TLS connections from `listener` until `stop`.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    proxy: Arc<Proxy>,
    at: Listener,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve_connection(TokioIo::new(tls), peer, proxy, at, h2).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves one client connection: HTTP/2 when TLS negotiated `h2`, else
/// HTTP/1.1 with upgrades (plain HTTP is HTTP/1.1 only, as ingress-nginx's
/// port 80).
async fn serve_connection<I>(io: I, peer: SocketAddr, proxy: Arc<Proxy>, at: Listener, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(handle(&proxy, req, peer, at).await) }
    });
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "client connection");
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{body}\n")))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The request's host without port, lower case, and as given (for the
/// Host header sent on).
fn request_host(req: &Request<Incoming>) -> (String, String) {
    let given = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let bare = if given.starts_with('[') {
        given
            .find(']')
            .map(|i| &given[..=i])
            .unwrap_or(given.as_str())
    } else {
        given.split(':').next().unwrap_or("")
    };
    (bare.trim_end_matches('.').to_ascii_lowercase(), given)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the hop-by-hop headers and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

fn client_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        ip => ip,
    }
}

/// Handles one request: routing, the annotations' checks, forwarding.
pub async fn handle(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    at: Listener,
) -> Response<Body> {
    let (host, given_host) = request_host(&req);
    let path = req.uri().path().to_string();
    let table = proxy.table.load();
    let Some(target) = table.route(&host, &path) else {
        return text(StatusCode::NOT_FOUND, "404 Not Found");
    };
    drop(table);
    let opts = target.opts.clone();
    let ip = client_ip(peer);
    if !opts.allow_source.is_empty() && !opts.allow_source.iter().any(|n| n.contains(&ip)) {
        return text(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if at.scheme == "http" && (opts.force_ssl_redirect || (opts.ssl_redirect && target.tls)) {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut r = text(StatusCode::PERMANENT_REDIRECT, "308 Permanent Redirect");
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    if let Some(limit) = opts.proxy_body_size {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "413 Request Entity Too Large",
            );
        }
    }
    if target.backend.endpoints.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Temporarily Unavailable",
        );
    }
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let bodiless = body.is_end_stream();
    let mut body = Some(match opts.proxy_body_size {
        Some(limit) => Limited::new(body, limit as usize).boxed(),
        None => body.map_err(BoxError::from).boxed(),
    });
    let mut headers = std::mem::take(&mut parts.headers);
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(&mut headers);
    // gRPC needs `te: trailers` end to end over HTTP/2.
    if te_trailers && opts.backend_protocol == BackendProtocol::H2c {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade_to.filter(|_| upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
    if let Ok(v) = HeaderValue::from_str(&given_host) {
        headers.insert(header::HOST, v.clone());
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    let ip_value = HeaderValue::from_str(&ip.to_string()).expect("an IP is a header value");
    headers.insert(X_FORWARDED_FOR.clone(), ip_value.clone());
    headers.insert(X_REAL_IP.clone(), ip_value);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(at.scheme),
    );
    headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(at.port));
    headers.insert(
        X_FORWARDED_SCHEME.clone(),
        HeaderValue::from_static(at.scheme),
    );
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let Target { backend, path, .. } = target;
    let scheme = match opts.backend_protocol {
        BackendProtocol::Https => "https",
        _ => "http",
    };
    let mut last_error = String::new();
    // Only a bodiless request is retried on another endpoint; only then
    // are its headers kept for a second try.
    let retries = bodiless && backend.endpoints.len() > 1;
    let mut headers = Some(headers);
    // A request the pool gave back unsent (connect failure): sent as is
    // to the next endpoint, body included.
    let mut unsent: Option<Request<Body>> = None;
    for (ep, authority) in backend.order() {
        let plain = opts.backend_protocol == BackendProtocol::Http;
        let up = match unsent.take() {
            Some(r) => r,
            None => {
                // The pool writes the URI as given: origin form for it,
                // absolute form for hyper-util's client.
                let mut u = String::with_capacity(
                    scheme.len() + 3 + authority.len() + path.len() + query.len(),
                );
                if !plain {
                    for part in [scheme, "://", authority] {
                        u.push_str(part);
                    }
                }
                u.push_str(&path);
                u.push_str(&query);
                let Ok(uri) = Uri::try_from(u) else {
                    return text(StatusCode::BAD_REQUEST, "400 Bad Request");
                };
                let b = match body.take() {
                    Some(b) => b,
                    // A retry: only requests without a body get here.
                    None => Empty::new().map_err(|e| match e {}).boxed(),
                };
                let mut up = Request::new(b);
                *up.method_mut() = parts.method.clone();
                *up.uri_mut() = uri;
                let Some(h) = (if retries {
                    headers.clone()
                } else {
                    headers.take()
                }) else {
                    break;
                };
                *up.headers_mut() = h;
                *up.version_mut() = match opts.backend_protocol {
                    BackendProtocol::H2c => Version::HTTP_2,
                    _ => Version::HTTP_11,
                };
                up
            }
        };
        let failed: Result<Response<Body>, BoxError> = match opts.backend_protocol {
            BackendProtocol::Http => {
                let sent = proxy.pool.send(ep, up, CONNECT_TIMEOUT);
                match tokio::time::timeout(opts.proxy_read_timeout, sent).await {
                    Err(_) => {
                        tracing::info!(backend = %backend.name, endpoint = %ep, "backend timed out");
                        return text(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Time-out");
                    }
                    Ok(Err(crate::pool::SendError::Connect(e, req))) => {
                        tracing::info!(backend = %backend.name, endpoint = %ep, error = %e, "connect failed; trying the next endpoint");
                        last_error = e.to_string();
                        unsent = Some(*req);
                        continue;
                    }
                    Ok(Err(crate::pool::SendError::Request(e))) => Err(e.into()),
                    Ok(Ok(r)) => Ok(r),
                }
            }
            _ => {
                let sent = match opts.backend_protocol {
                    BackendProtocol::Https => proxy.https.request(up),
                    _ => proxy.h2c.request(up),
                };
                match tokio::time::timeout(opts.proxy_read_timeout, sent).await {
                    Err(_) => {
                        tracing::info!(backend = %backend.name, endpoint = %ep, "backend timed out");
                        return text(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Time-out");
                    }
                    Ok(Err(e)) if e.is_connect() && bodiless => {
                        tracing::info!(backend = %backend.name, endpoint = %ep, error = %e, "connect failed; trying the next endpoint");
                        last_error = e.to_string();
                        continue;
                    }
                    Ok(Err(e)) => Err(e.into()),
                    Ok(Ok(r)) => Ok(r.map(|b| b.map_err(BoxError::from).boxed())),
                }
            }
        };
        let res = match failed {
            Ok(r) => r,
            Err(e) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
                while let Some(c) = cause {
                    if c.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        return text(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "413 Request Entity Too Large",
                        );
                    }
                    cause = c.source();
                }
                tracing::info!(backend = %backend.name, endpoint = %ep, error = %e, "backend request failed");
                return text(StatusCode::BAD_GATEWAY, "502 Bad Gateway");
            }
        };
        return respond(res, client_upgrade, &backend.name);
    }
    tracing::info!(backend = %backend.name, error = %last_error, "no endpoint answered");
    text(StatusCode::BAD_GATEWAY, "502 Bad Gateway")
}

fn respond(
    mut res: Response<Body>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    backend: &str,
) -> Response<Body> {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return text(StatusCode::BAD_GATEWAY, "502 Bad Gateway");
        };
        let backend_upgrade = hyper::upgrade::on(&mut res);
        let name = backend.to_string();
        tokio::spawn(async move {
            match futures::future::try_join(client_upgrade, backend_upgrade).await {
                Ok((c, b)) => {
                    let carried =
                        rke2_relay::splice(TokioIo::new(c), TokioIo::new(b), rke2_relay::LINGER)
                            .await;
                    tracing::debug!(backend = %name, up = carried.up, down = carried.down, "upgraded connection closed");
                }
                Err(e) => tracing::debug!(backend = %name, error = %e, "upgrade"),
            }
        });
        let (parts, _) = res.into_parts();
        return Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed());
    }
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}
