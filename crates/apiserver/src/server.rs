//! The HTTPS listener: TLS with optional client certificates, request
//! authentication, and the top-level routing of API paths.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::handlers::{self, Answer, Ctx};
use crate::request::{self, MAX_BODY, Query, Route};
use crate::status::ApiError;
use crate::table::IncludeObject;
use crate::{ApiState, Identity, discovery};

fn json(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// The router of the API (without TLS), for embedding and tests.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(entry).with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_router(listener, tls, router(state), shutdown).await
}

/// Time bounds on a connection before it carries a request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionBounds {
    /// The TLS handshake and the first request's headers must arrive
    /// within this; then the socket is closed. Later requests on an
    /// HTTP/1.1 connection have the same bound for their headers.
    pub first_request: Duration,
}

impl Default for ConnectionBounds {
    /// kube-apiserver's `ReadHeaderTimeout` (32 s, "just shy of the
    /// request timeout upper bound"), which Go also applies to the TLS
    /// handshake.
    fn default() -> Self {
        Self {
            first_request: Duration::from_secs(32),
        }
    }
}

/// Serves any router over TLS until `shutdown` resolves. Each request
/// carries an `Option<Identity>` extension from the client certificate.
/// Also used for the supervisor port, which shares the serving cert.
pub async fn serve_router(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_router_with(listener, tls, app, ConnectionBounds::default(), shutdown).await
}

/// [`serve_router`] with explicit connection bounds. A client that opens
/// a socket and then stalls (no handshake, no request) would otherwise
/// hold a task and a file descriptor forever.
pub async fn serve_router_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    bounds: ConnectionBounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let deadline = tokio::time::Instant::now() + bounds.first_request;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake not done in time; closing");
                    return;
                }
            };
            let identity: Option<Identity> = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| rke2_trust::peer_identity(der.as_ref()).ok())
                .map(|(user, groups)| Identity { user, groups });
            // Set when a request's headers have arrived: the watchdog
            // below then lets the connection live as long as it is used.
            let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = started.clone();
            let svc = tower::ServiceExt::map_request(
                app,
                move |mut req: Request<hyper::body::Incoming>| {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    req.extensions_mut().insert(identity.clone());
                    req.extensions_mut().insert(PeerAddr(peer));
                    req.map(Body::new)
                },
            );
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(bounds.first_request);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc));
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = &mut conn => Some(r),
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let ended = match ended {
                Some(r) => r,
                None if !started.load(std::sync::atomic::Ordering::Relaxed) => {
                    debug!(%peer, "no request in time; closing");
                    return;
                }
                None => conn.await,
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

async fn health(state: &ApiState, path: &str) -> Response {
    if path.starts_with("/readyz") && !state.store.healthy().await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]etcd failed: reason withheld\nreadyz check failed\n",
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok",
    )
        .into_response()
}

/// How long a refused request's unread body is read and discarded, so
/// that the client (mid-upload, over HTTP/1.1 or HTTP/2) sees the answer
/// instead of a reset stream.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The client's address, as a request extension (the audit's `sourceIPs`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

async fn entry(State(state): State<ApiState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let audit_id = crate::audit::new_audit_id();
    let mut pending = None;
    let mut resp = route(&state, parts, &mut body, &audit_id, &mut pending).await;
    if let (Some(p), Some(log)) = (pending, state.config().audit.as_ref()) {
        log.record(&p, resp.status().as_u16());
    }
    if let Ok(v) = http::HeaderValue::from_str(&audit_id) {
        resp.headers_mut().insert("audit-id", v);
    }
    if let Some(unread) = body.take()
        && !hyper::body::Body::is_end_stream(&unread)
    {
        let _ = tokio::time::timeout(DRAIN_WAIT, drain(unread)).await;
    }
    resp
}

/// Answers one request; takes `body` only when the request is admitted
/// far enough to read it.
async fn route(
    state: &ApiState,
    parts: http::request::Parts,
    body: &mut Option<Body>,
    audit_id: &str,
    audit: &mut Option<crate::audit::Pending>,
) -> Response {
    let received = std::time::SystemTime::now();
    let state = state.clone();
    let path = parts.uri.path().to_string();
    if is_public(&path) {
        if path == "/version" {
            return json(StatusCode::OK, &discovery::version());
        }
        return health(&state, &path).await;
    }
    let identity = match parts
        .extensions
        .get::<Option<Identity>>()
        .cloned()
        .flatten()
    {
        Some(id) => id,
        // No client certificate: a service-account bearer token, else 401.
        None => match crate::tokens::bearer(&parts.headers) {
            Some(token) => match crate::tokens::authenticate(&state, token).await {
                Ok(id) => id,
                Err(e) => {
                    debug!(error = %e, "bearer token rejected");
                    return ApiError::unauthorized().into_response();
                }
            },
            None => return ApiError::unauthorized().into_response(),
        },
    };
    // Every authenticated user is in `system:authenticated`, as upstream's
    // authenticators add it (RBAC's bootstrap bindings name that group).
    let mut identity = identity;
    if !identity.groups.iter().any(|g| g == "system:authenticated") {
        identity.groups.push("system:authenticated".into());
    }
    let authenticated = identity.clone();
    let identity = match crate::authz::impersonate(&state, identity, &parts.headers).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if state.config().audit.is_some() {
        let header = |h: http::header::HeaderName| {
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        *audit = Some(crate::audit::Pending {
            id: audit_id.to_string(),
            received,
            impersonated: (identity != authenticated)
                .then(|| (identity.user.clone(), identity.groups.clone())),
            user: (authenticated.user, authenticated.groups),
            verb: parts.method.as_str().to_ascii_lowercase(),
            object: None,
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            source_ip: parts
                .extensions
                .get::<PeerAddr>()
                .map(|p| p.0.ip().to_string()),
            user_agent: header(http::header::USER_AGENT),
            streaming: false,
        });
    }
    let query = Query::parse(parts.uri.query());
    // API aggregation (aggregator/mod.rs): a group/version an extension
    // apiserver serves is authorized there and proxied.
    let mut parts = parts;
    if let Some(resp) = crate::aggregator::serve(&state, &identity, &mut parts, body).await {
        return resp;
    }
    if path == crate::tokens::TOKEN_REVIEW_PATH {
        if parts.method != http::Method::POST {
            return ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource (tokenreviews)"
                    .to_string(),
            )
            .into_response();
        }
        let may = crate::rbac::Request {
            verb: "create",
            target: crate::rbac::Target::Resource {
                group: "authentication.k8s.io",
                resource: "tokenreviews",
                subresource: "",
                namespace: "",
                name: "",
            },
        };
        if !crate::authz::node_may_review(&identity, "tokenreviews")
            && !crate::rbac::can(&state, &identity, &may).await
        {
            return ApiError::new(
                403,
                "Forbidden",
                format!(
                    "tokenreviews.authentication.k8s.io is forbidden: User \"{}\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
                    identity.user
                ),
            )
            .into_response();
        }
        let bytes = match read_limited(body.take().unwrap_or_default()).await {
            Some(b) => b,
            None => return ApiError::too_large(MAX_BODY).into_response(),
        };
        return match crate::tokens::review(&state, &bytes).await {
            Ok(v) => json(StatusCode::CREATED, &v),
            Err(e) => e.into_response(),
        };
    }
    if let Some((plural, kind, ns)) = crate::access_review::route(&path) {
        if parts.method != http::Method::POST {
            return ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({plural})"
                ),
            )
            .into_response();
        }
        let bytes = match read_limited(body.take().unwrap_or_default()).await {
            Some(b) => b,
            None => return ApiError::too_large(MAX_BODY).into_response(),
        };
        let review = crate::access_review::Body {
            bytes: &bytes,
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        };
        return match crate::access_review::handle(
            &state,
            &identity,
            plural,
            kind,
            ns.as_deref(),
            &review,
        )
        .await
        {
            Ok(v) => json(StatusCode::CREATED, &v),
            Err(e) => e.into_response(),
        };
    }
    // Non-resource paths (discovery, OpenAPI) are authorized by RBAC as
    // upstream's: the bootstrap policy's `system:discovery` grants them to
    // every authenticated user; a path that is a resource is authorized
    // below, with its verb.
    let resource_path = matches!(
        request::parse_path(&path, &state.registry),
        Ok(Route::Resource(_))
    );
    if !resource_path && path != SELF_SUBJECT_REVIEW {
        let verb = parts.method.as_str().to_ascii_lowercase();
        let req = crate::rbac::Request {
            verb: if verb == "head" { "get" } else { &verb },
            target: crate::rbac::Target::NonResource { path: &path },
        };
        if !crate::rbac::can(&state, &identity, &req).await {
            return ApiError::new(
                403,
                "Forbidden",
                format!(
                    "forbidden: User \"{}\" cannot {} path \"{path}\"",
                    identity.user, req.verb
                ),
            )
            .into_response();
        }
    }
    let route = match path.as_str() {
        SELF_SUBJECT_REVIEW if parts.method == http::Method::POST => {
            return json(StatusCode::CREATED, &self_subject_review(&identity));
        }
        "/openapi/v2" => {
            // An empty protobuf document is a valid, empty spec: kubectl
            // then validates nothing client-side and uses its compiled-in
            // schemas for strategic merge patches.
            return (
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/octet-stream")],
                Vec::<u8>::new(),
            )
                .into_response();
        }
        "/openapi/v3" => return json(StatusCode::OK, &crate::openapi::index(&state.registry)),
        p if p.starts_with("/openapi/v3/") => {
            return match crate::openapi::document(&state.registry, &p["/openapi/v3/".len()..]) {
                Some(doc) => json(StatusCode::OK, &doc),
                None => ApiError::no_route().into_response(),
            };
        }
        _ => match request::parse_path(&path, &state.registry) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        },
    };
    let accept = parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let aggregated = crate::discovery::aggregated_version(accept);
    match route {
        Route::CoreVersions | Route::Groups if aggregated.is_some() => {
            let version = aggregated.unwrap_or("v2");
            let core = matches!(route, Route::CoreVersions);
            let mut doc = discovery::aggregated(&state.registry, core, version);
            if !core && let Some(items) = doc["items"].as_array_mut() {
                // API aggregation: remote groups follow the local ones.
                items.extend(crate::aggregator::discovery_v2_items(&state).await);
            }
            (
                StatusCode::OK,
                [(
                    http::header::CONTENT_TYPE,
                    discovery::aggregated_content_type(version),
                )],
                serde_json::to_vec(&doc).unwrap_or_default(),
            )
                .into_response()
        }
        Route::CoreVersions => {
            let addr = format!(
                "{}:{}",
                state.config().advertise_address,
                state.config().port
            );
            json(StatusCode::OK, &discovery::core_versions(&addr))
        }
        // API aggregation: remote groups follow the local ones.
        Route::Groups => json(
            StatusCode::OK,
            &crate::aggregator::merge_groups(&state, discovery::groups(&state.registry)).await,
        ),
        Route::Group(g) => match discovery::group(&state.registry, &g) {
            Some(v) => json(StatusCode::OK, &v),
            None => ApiError::no_route().into_response(),
        },
        Route::ResourceList(g, v) => match discovery::resource_list(&state.registry, &g, &v) {
            Some(v) => json(StatusCode::OK, &v),
            None => ApiError::no_route().into_response(),
        },
        Route::Resource(rp) => {
            let verb = match crate::proxy::PodStream::of(&rp) {
                // Upstream authorizes exec/attach as `create` even when the
                // WebSocket upgrade arrives as a GET.
                Some(
                    crate::proxy::PodStream::Exec
                    | crate::proxy::PodStream::Attach
                    | crate::proxy::PodStream::PortForward,
                ) => "create",
                _ if crate::workload_proxy::serves(&rp) => {
                    crate::workload_proxy::verb(&parts.method)
                }
                _ => verb_of(&parts.method, rp.name.is_some(), &query),
            };
            if let Some(p) = audit.as_mut() {
                p.verb = verb.to_string();
                p.object = Some((
                    rp.rt.group.to_string(),
                    rp.rt.version.to_string(),
                    rp.rt.plural.to_string(),
                    rp.subresource.clone(),
                    rp.namespace.clone(),
                    rp.name.clone(),
                ));
                p.streaming = verb == "watch" || crate::proxy::PodStream::of(&rp).is_some();
            }
            let node_scope =
                match crate::authz::authorize(&state, &identity, verb, &rp, &query).await {
                    Ok(scope) => scope,
                    Err(e) => return e.into_response(),
                };
            if rp.subresource.as_deref() == Some("proxy") && rp.rt.plural == "nodes" {
                let mut parts = parts;
                return crate::proxy::node_proxy(
                    &state,
                    rp.name.as_deref().unwrap_or(""),
                    &path,
                    &mut parts,
                    body.take(),
                )
                .await;
            }
            if crate::workload_proxy::serves(&rp) {
                let mut parts = parts;
                return crate::workload_proxy::serve(&state, &rp, &mut parts, body.take()).await;
            }
            if let Some(stream) = crate::proxy::PodStream::of(&rp) {
                // Streams from the node API; the body is not read (exec and
                // attach upgrade the connection, log is a GET).
                let mut parts = parts;
                return crate::proxy::handle(&state, &rp, stream, &mut parts).await;
            }
            let accept = parts
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let as_ = match request::answer_as(accept) {
                Ok(a) => a,
                Err(e) => return e.into_response(),
            };
            let Some(include) = IncludeObject::parse(query.get("includeObject")) else {
                return ApiError::bad_request(format!(
                    "invalid includeObject: {:?}",
                    query.get("includeObject").unwrap_or("")
                ))
                .into_response();
            };
            if let Some(len) = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                && len > MAX_BODY
            {
                return ApiError::too_large(MAX_BODY).into_response();
            }
            let body = match read_limited(body.take().unwrap_or_default()).await {
                Some(b) => b,
                None => return ApiError::too_large(MAX_BODY).into_response(),
            };
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let ctx = Ctx {
                state: &state,
                path: rp,
                query,
                answer: Answer { as_, include },
                node_scope,
                identity,
                warnings: Default::default(),
            };
            handlers::handle(ctx, parts.method, content_type, body).await
        }
    }
}

/// `kubectl auth whoami`'s endpoint; every authenticated user may ask who
/// they are (upstream's `system:basic-user`).
const SELF_SUBJECT_REVIEW: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

/// The SelfSubjectReview answer: the identity this request authenticated as.
fn self_subject_review(id: &Identity) -> serde_json::Value {
    serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": id.user, "groups": id.groups}},
    })
}

fn verb_of(method: &http::Method, named: bool, q: &Query) -> &'static str {
    match *method {
        http::Method::GET if q.flag("watch") => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes; `None` when it is larger
/// (the rest is drained so the client sees the 413 instead of a reset).
async fn read_limited(body: Body) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Some(buf.freeze());
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                drain(body).await;
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

/// Discards up to 64 MiB of a refused body so the client can read the answer.
async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(d) = frame.into_data() {
            seen += d.len();
        }
        if seen > 64 * 1024 * 1024 {
            break;
        }
    }
}
