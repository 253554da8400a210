//! The node API on port 10250: what the apiserver proxies `kubectl logs`,
//! `kubectl exec` and `kubectl attach` to, on kubelet's own paths.
//!
//! * `GET /containerLogs/{namespace}/{pod}/{container}` — the container's
//!   CRI log file as plain text ([`logs`] does the parsing), streamed
//!   while `follow=true` until the container has exited and its file is
//!   read to the end.
//! * `/exec/{namespace}/{pod}/{container}?command=...` and
//!   `/attach/{namespace}/{pod}/{container}` (also with the pod uid
//!   before the container, as kubelet) — a WebSocket relayed to the
//!   runtime's streaming server (see `exec.rs`).
//! * `GET /stats/summary` (`?only_cpu_and_memory=true`) and
//!   `GET /metrics/resource` — kubelet's Summary and resource metrics
//!   (see `stats.rs`).
//! * `/healthz` — open to anyone.
//!
//! Containers are found through CRI by the labels the node role puts on
//! them (`io.kubernetes.pod.*`, `io.kubernetes.container.name`); the
//! attempt number tells the current container from the previous one.
//! Clients whose certificate carries the group `system:masters` (the
//! apiserver's kubelet-client certificate) may use everything. With a
//! [`auth::Webhook`] (kubelet's `--authentication-token-webhook` and
//! `--authorization-mode=Webhook`), other certificate users and bearer
//! tokens (a pod's ServiceAccount token, checked by TokenReview) are
//! authorized by SubjectAccessReview; without one, they are refused.

pub mod auth;
mod exec;
pub mod logs;
mod spdy;
pub mod stats;

use std::future::Future;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path as UrlPath, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use chrono::Utc;
use http::{StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use rke2_runtime::cri::Cri;
use rke2_runtime::cri::api;

use logs::{Assembler, Line, LogOptions, Renderer, TailBuffer};

/// CRI label: the pod's name.
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// CRI label: the pod's namespace.
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// CRI label: the pod's uid.
const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// CRI label: the container's name in the pod.
const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// The group allowed to use the node API.
const MASTERS: &str = "system:masters";

/// How often a followed log file is checked for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// How often, while a followed file does not grow, the container's state
/// is asked of CRI (it decides when following ends).
const STATE_CHECK: Duration = Duration::from_millis(500);
/// How much of a log file is read at a time.
const READ_CHUNK: usize = 64 * 1024;
/// How far back from the end `tailLines` searches before reading the file
/// from the start instead (memory stays bounded either way).
const MAX_TAIL_SCAN: u64 = 16 * 1024 * 1024;

/// The client, from its TLS certificate (subject CN and O values).
/// [`serve`] puts it into each request's extensions; requests without
/// it are refused (401), as are clients outside `system:masters` (403).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The user name (CN).
    pub user: String,
    /// The groups (O).
    pub groups: Vec<String>,
}

#[derive(Clone)]
struct NodeApi {
    metrics: Option<MetricsSource>,
    cri: Option<Cri>,
    stats: stats::Collector,
}

/// What a node API serves from: the runtime, the node's name and data dir
/// (for its figures), and the delegated authenticator/authorizer.
#[derive(Clone)]
pub struct NodeApiConfig {
    /// The container runtime; `None` on a node without one (503s).
    pub cri: Option<Cri>,
    /// This node's name (the `nodes/<name>` a SubjectAccessReview names).
    pub node_name: String,
    /// The node's data dir (its filesystem figures).
    pub data_dir: PathBuf,
    /// Token and access reviews for clients outside `system:masters`.
    pub webhook: Option<auth::Webhook>,
    /// The node's own Prometheus text for `GET /metrics` (rke2's
    /// certificate expiry gauge), rendered at each scrape; `None` answers
    /// 404 there.
    pub metrics: Option<MetricsSource>,
}

/// Renders the Prometheus text of `GET /metrics` at each scrape.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A failed request: a status and a plain-text message, as kubelet
/// answers.
#[derive(Debug)]
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

fn bad_request(msg: impl std::fmt::Display) -> Failure {
    Failure(StatusCode::BAD_REQUEST, msg.to_string())
}

fn cri_failure(call: &str, s: tonic::Status) -> Failure {
    let code = match s.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Failure(code, format!("container runtime: {call}: {}", s.message()))
}

/// The node API with logs, exec and attach served from `cri`, for
/// `system:masters` only.
pub fn router(cri: Cri) -> Router {
    router_with(NodeApiConfig {
        cri: Some(cri),
        node_name: String::new(),
        data_dir: "/".into(),
        webhook: None,
        metrics: None,
    })
}

/// The node API of a node without a container runtime: `/healthz`, and
/// 503 for logs, exec and attach.
pub fn router_without_runtime() -> Router {
    router_with(NodeApiConfig {
        cri: None,
        node_name: String::new(),
        data_dir: "/".into(),
        webhook: None,
        metrics: None,
    })
}

/// The node API as `cfg` says.
pub fn router_with(cfg: NodeApiConfig) -> Router {
    let protected = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", any(exec))
        .route("/exec/{ns}/{pod}/{uid}/{container}", any(exec_uid))
        .route("/attach/{ns}/{pod}/{container}", any(attach))
        .route("/attach/{ns}/{pod}/{uid}/{container}", any(attach_uid))
        .route("/portForward/{ns}/{pod}", any(port_forward))
        .route("/portForward/{ns}/{pod}/{uid}", any(port_forward_uid))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/resource", get(resource_metrics))
        .route("/metrics", get(node_metrics))
        .route_layer(middleware::from_fn_with_state(
            cfg.webhook.clone(),
            authorize,
        ))
        .with_state(NodeApi {
            metrics: cfg.metrics,
            cri: cfg.cri,
            stats: stats::Collector::new(cfg.node_name, cfg.data_dir),
        });
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(protected)
        .fallback(|| async { Failure(StatusCode::NOT_FOUND, "404 page not found".into()) })
}

async fn authorize(
    State(webhook): State<Option<auth::Webhook>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = match req.extensions().get::<Peer>().cloned() {
        Some(p) => p,
        None => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_string())
                .filter(|t| !t.is_empty());
            match (token, &webhook) {
                (Some(t), Some(w)) => match w.authenticate(&t).await {
                    Ok(p) => p,
                    Err(auth::Refusal::Unauthenticated) => {
                        return Failure(StatusCode::UNAUTHORIZED, "Unauthorized".into())
                            .into_response();
                    }
                    Err(e) => {
                        warn!(error = %e, "node API: cannot review a bearer token");
                        return Failure(StatusCode::UNAUTHORIZED, "Unauthorized".into())
                            .into_response();
                    }
                },
                _ => {
                    return Failure(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized: a client certificate or a bearer token is required".into(),
                    )
                    .into_response();
                }
            }
        }
    };
    if peer.groups.iter().any(|g| g == MASTERS) {
        return next.run(req).await;
    }
    let attrs = auth::attributes(req.method(), req.uri().path());
    let Some(w) = webhook else {
        return Failure(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, groups={:?}): only members of {MASTERS} may use the node API",
                peer.user, peer.groups
            ),
        )
        .into_response();
    };
    match w.authorize(&peer, &attrs).await {
        Ok(true) => next.run(req).await,
        Ok(false) => Failure(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])",
                peer.user, attrs.verb, attrs.subresource
            ),
        )
        .into_response(),
        Err(e) => {
            warn!(error = %e, "node API: cannot authorize a request");
            Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Authorization error (user={}, verb={}, resource=nodes, subresource(s)=[{}]): {e}", peer.user, attrs.verb, attrs.subresource),
            )
            .into_response()
        }
    }
}

/// `GET /stats/summary`: kubelet's Summary as JSON.
async fn stats_summary(
    State(st): State<NodeApi>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let only = query_pairs(raw.as_deref())
        .iter()
        .any(|(k, v)| k == "only_cpu_and_memory" && v == "true");
    let cri = st.cri()?;
    let summary = st
        .stats
        .summary(cri, !only)
        .await
        .map_err(|s| cri_failure("ListContainerStats", s))?;
    let summary = if only {
        stats::only_cpu_and_memory(summary)
    } else {
        summary
    };
    let body = serde_json::to_vec(&summary)
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /metrics`: the node's own gauges (kubelet's endpoint), when the
/// binary gave a source.
async fn node_metrics(State(st): State<NodeApi>) -> Response {
    match &st.metrics {
        Some(render) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(),
        )
            .into_response(),
        None => Failure(StatusCode::NOT_FOUND, "404 page not found".into()).into_response(),
    }
}

/// `GET /metrics/resource`: the Prometheus text the metrics server
/// scrapes; a runtime that does not answer gives `resource_scrape_error 1`.
async fn resource_metrics(State(st): State<NodeApi>) -> Response {
    let summary = match st.cri() {
        Ok(cri) => match st.stats.summary(cri, false).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "node API: resource metrics: CRI stats failed");
                None
            }
        },
        Err(_) => None,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        stats::render_resource_metrics(summary.as_ref()),
    )
        .into_response()
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves; each
/// request carries the client's [`Peer`] when it presented a certificate
/// (the TLS config decides whether one is required and which CA signs
/// it). HTTP/1.1 upgrades and HTTP/2 extended CONNECT are both served,
/// so WebSockets work either way.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "node API: accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(peer = %peer_addr, error = %e, "node API: TLS handshake failed");
                    return;
                }
            };
            let peer: Option<Peer> = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| rke2_trust::peer_identity(der.as_ref()).ok())
                .map(|(user, groups)| Peer { user, groups });
            let svc = tower::ServiceExt::map_request(
                app,
                move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(p) = &peer {
                        req.extensions_mut().insert(p.clone());
                    }
                    req.map(Body::new)
                },
            );
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().enable_connect_protocol();
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
                .await
            {
                debug!(peer = %peer_addr, error = %e, "node API: connection ended with an error");
            }
        });
    }
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

impl NodeApi {
    fn cri(&self) -> Result<&Cri, Failure> {
        self.cri.as_ref().ok_or_else(|| {
            Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node runs no container runtime".into(),
            )
        })
    }
}

/// The containers of one name in a pod, newest attempt first.
struct Found {
    current: api::Container,
    previous: Option<api::Container>,
}

fn container_name(c: &api::Container) -> &str {
    c.labels
        .get(LABEL_CONTAINER_NAME)
        .map(String::as_str)
        .or(c.metadata.as_ref().map(|m| m.name.as_str()))
        .unwrap_or_default()
}

fn attempt(c: &api::Container) -> u32 {
    c.metadata.as_ref().map(|m| m.attempt).unwrap_or_default()
}

/// Finds container `name` of pod `ns/pod` (of pod `uid` when given, else
/// of the newest pod of that name: a deleted and re-created pod keeps
/// its name but not its uid).
async fn find_container(
    cri: &Cri,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
    name: &str,
) -> Result<Found, Failure> {
    let sandboxes = cri
        .runtime()
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .map_err(|s| cri_failure("ListPodSandbox", s))?
        .into_inner()
        .items;
    let mut sandboxes: Vec<api::PodSandbox> = sandboxes
        .into_iter()
        .filter(|s| {
            s.metadata.as_ref().is_some_and(|m| {
                m.name == pod && m.namespace == ns && uid.is_none_or(|u| u == m.uid)
            })
        })
        .collect();
    let mut selector = std::collections::HashMap::new();
    selector.insert(LABEL_POD_NAME.to_string(), pod.to_string());
    selector.insert(LABEL_POD_NAMESPACE.to_string(), ns.to_string());
    if let Some(u) = uid {
        selector.insert(LABEL_POD_UID.to_string(), u.to_string());
    }
    let containers = cri
        .runtime()
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| cri_failure("ListContainers", s))?
        .into_inner()
        .containers;
    // The pod's uid: the ready sandbox's, else the newest sandbox's, else
    // the newest container's.
    sandboxes.sort_by_key(|s| {
        (
            s.state == api::PodSandboxState::SandboxReady as i32,
            s.created_at,
        )
    });
    let pod_uid = sandboxes
        .last()
        .and_then(|s| s.metadata.as_ref().map(|m| m.uid.clone()))
        .or_else(|| {
            containers
                .iter()
                .max_by_key(|c| c.created_at)
                .and_then(|c| c.labels.get(LABEL_POD_UID).cloned())
        });
    let Some(pod_uid) = pod_uid else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("pod {pod:?} in namespace {ns:?} does not exist on this node"),
        ));
    };
    let sandbox_ids: Vec<&str> = sandboxes
        .iter()
        .filter(|s| s.metadata.as_ref().is_some_and(|m| m.uid == pod_uid))
        .map(|s| s.id.as_str())
        .collect();
    let mut mine: Vec<api::Container> = containers
        .into_iter()
        .filter(|c| {
            container_name(c) == name
                && (c.labels.get(LABEL_POD_UID) == Some(&pod_uid)
                    || sandbox_ids.contains(&c.pod_sandbox_id.as_str()))
        })
        .collect();
    mine.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
    let mut mine = mine.into_iter();
    let Some(current) = mine.next() else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!(
                "container {name:?} in pod {pod:?} not found on this node (not created yet, or no such container)"
            ),
        ));
    };
    Ok(Found {
        current,
        previous: mine.next(),
    })
}

async fn container_status(cri: &Cri, id: &str) -> Result<api::ContainerStatus, Failure> {
    cri.runtime()
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .map_err(|s| cri_failure("ContainerStatus", s))?
        .into_inner()
        .status
        .ok_or_else(|| {
            Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("container runtime: ContainerStatus of {id} returned no status"),
            )
        })
}

async fn container_logs(
    State(st): State<NodeApi>,
    UrlPath((ns, pod, name)): UrlPath<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Failure> {
    let opts = LogOptions::parse(&query_pairs(raw.as_deref())).map_err(bad_request)?;
    let cri = st.cri()?.clone();
    let found = find_container(&cri, &ns, &pod, None, &name).await?;
    let container = if opts.previous {
        found.previous.ok_or_else(|| {
            bad_request(format!(
                "previous terminated container {name:?} in pod {pod:?} not found"
            ))
        })?
    } else {
        found.current
    };
    let status = container_status(&cri, &container.id).await?;
    if status.state == api::ContainerState::ContainerCreated as i32 {
        return Err(bad_request(format!(
            "container {name:?} in pod {pod:?} is waiting to start: ContainerCreating"
        )));
    }
    if status.log_path.is_empty() {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("container {name:?} in pod {pod:?} has no log file"),
        ));
    }
    let path = PathBuf::from(&status.log_path);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Failure(
            if e.kind() == std::io::ErrorKind::NotFound {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            format!("opening the log file {}: {e}", path.display()),
        )
    })?;
    let since = opts
        .since
        .as_ref()
        .map(|s| s.resolve(Utc::now().fixed_offset()));
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let reader = LogReader {
        file,
        path,
        opts,
        since,
        cri,
        container_id: container.id,
        tx,
    };
    tokio::spawn(reader.run());
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Reads one container's log file into the response body.
struct LogReader {
    file: tokio::fs::File,
    path: PathBuf,
    opts: LogOptions,
    since: Option<chrono::DateTime<chrono::FixedOffset>>,
    cri: Cri,
    container_id: String,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

/// Where lines go: into the tail buffer until the first end of file,
/// then through the renderer.
struct Sink {
    tail: Option<TailBuffer>,
    renderer: Renderer,
    out: Vec<u8>,
}

impl Sink {
    fn line(&mut self, line: Line) {
        match &mut self.tail {
            Some(t) => {
                if self.renderer.wants_stream(&line) {
                    t.push(line)
                }
            }
            None => self.renderer.render(&line, &mut self.out),
        }
    }

    fn end_tail(&mut self) {
        if let Some(t) = self.tail.take() {
            for l in t.into_lines() {
                self.renderer.render(&l, &mut self.out);
            }
        }
    }
}

impl LogReader {
    async fn run(self) {
        let path = self.path.clone();
        let tx = self.tx.clone();
        if let Err(e) = self.stream().await {
            warn!(path = %path.display(), error = %e, "reading a container log failed");
            // The status line is long gone; ending the body with an error
            // makes the client see a broken stream, not a clean end.
            let _ = tx
                .send(Err(std::io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                )))
                .await;
        }
    }

    /// Sends what the sink holds; false when the client went away.
    async fn flush(&self, sink: &mut Sink) -> bool {
        if sink.out.is_empty() {
            return true;
        }
        let chunk = Bytes::from(std::mem::take(&mut sink.out));
        self.tx.send(Ok(chunk)).await.is_ok()
    }

    async fn stream(mut self) -> std::io::Result<()> {
        let start = match self.opts.tail_lines {
            Some(n) => tail_offset(&mut self.file, n, self.opts.stream).await?,
            None => 0,
        };
        self.file.seek(SeekFrom::Start(start)).await?;
        let mut sink = Sink {
            tail: self.opts.tail_lines.map(TailBuffer::new),
            renderer: Renderer::new(&self.opts, self.since),
            out: Vec::new(),
        };
        let mut asm = Assembler::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        // Following ends once the container has exited and one more look
        // after a poll interval found nothing new (the runtime may still
        // be copying the last output when it reports the exit).
        let mut exited = false;
        let mut quiet_after_exit = false;
        let mut last_check: Option<tokio::time::Instant> = None;
        loop {
            let n = self.file.read(&mut chunk).await?;
            if n > 0 {
                quiet_after_exit = false;
                pending.extend_from_slice(&chunk[..n]);
                let used = logs::for_each_record(&pending, |r| {
                    if let Some(rec) = logs::parse_record(r)
                        && let Some(line) = asm.push(&rec)
                    {
                        sink.line(line);
                    }
                });
                pending.drain(..used);
                if !self.flush(&mut sink).await || sink.renderer.done() {
                    return Ok(());
                }
                continue;
            }
            // End of file (for now).
            let finished = !self.opts.follow || (exited && quiet_after_exit);
            if finished {
                // A last record without its newline is still shown, as
                // kubelet does; so are lines left unfinished.
                if let Some(rec) = logs::parse_record(&pending)
                    && let Some(line) = asm.push(&rec)
                {
                    sink.line(line);
                }
                for line in asm.finish() {
                    sink.line(line);
                }
                sink.end_tail();
                self.flush(&mut sink).await;
                return Ok(());
            }
            sink.end_tail();
            if !self.flush(&mut sink).await || sink.renderer.done() {
                return Ok(());
            }
            if exited {
                quiet_after_exit = true;
            } else if last_check.is_none_or(|t| t.elapsed() >= STATE_CHECK) {
                last_check = Some(tokio::time::Instant::now());
                if self.container_exited().await {
                    exited = true;
                    // Read again at once: the file may have grown since.
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }

    /// Whether the container is gone or has exited. A runtime that does
    /// not answer counts as "still running": following goes on.
    async fn container_exited(&self) -> bool {
        match self
            .cri
            .runtime()
            .container_status(api::ContainerStatusRequest {
                container_id: self.container_id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r.into_inner().status.is_none_or(|s| {
                s.state == api::ContainerState::ContainerExited as i32
                    || s.state == api::ContainerState::ContainerUnknown as i32
            }),
            Err(s) if s.code() == tonic::Code::NotFound => true,
            Err(s) => {
                debug!(container = %self.container_id, error = %s.message(), "container state unknown; still following");
                false
            }
        }
    }
}

/// Where reading must start to show the last `n` lines: searches
/// backwards from the end in growing windows.
async fn tail_offset(
    file: &mut tokio::fs::File,
    n: usize,
    stream: Option<logs::Stream>,
) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    let mut window = READ_CHUNK as u64;
    loop {
        let from = len.saturating_sub(window);
        file.seek(SeekFrom::Start(from)).await?;
        let mut buf = vec![0u8; (len - from) as usize];
        file.read_exact(&mut buf).await?;
        if let Some(off) = logs::tail_start(&buf, n, from == 0, stream) {
            return Ok(from + off as u64);
        }
        if from == 0 || window >= MAX_TAIL_SCAN {
            // Read from the start; the tail buffer keeps the last n.
            return Ok(0);
        }
        window *= 4;
    }
}

/// What `exec` and `attach` were asked for.
#[derive(Debug, Default, PartialEq)]
struct StreamOptions {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl StreamOptions {
    fn parse(pairs: &[(String, String)], exec: bool) -> Result<StreamOptions, logs::QueryError> {
        let o = StreamOptions {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: logs::flag(pairs, "stdin")?,
            stdout: logs::flag(pairs, "stdout")?,
            stderr: logs::flag(pairs, "stderr")?,
            tty: logs::flag(pairs, "tty")?,
        };
        if exec && o.command.is_empty() {
            return Err(logs::QueryError::NoCommand);
        }
        if !o.stdin && !o.stdout && !o.stderr {
            return Err(logs::QueryError::NoStreams);
        }
        Ok(o)
    }
}

async fn exec(
    st: State<NodeApi>,
    UrlPath((ns, pod, name)): UrlPath<(String, String, String)>,
    q: RawQuery,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    stream(st, ns, pod, None, name, q, up, true).await
}

async fn exec_uid(
    st: State<NodeApi>,
    UrlPath((ns, pod, uid, name)): UrlPath<(String, String, String, String)>,
    q: RawQuery,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    stream(st, ns, pod, Some(uid), name, q, up, true).await
}

async fn attach(
    st: State<NodeApi>,
    UrlPath((ns, pod, name)): UrlPath<(String, String, String)>,
    q: RawQuery,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    stream(st, ns, pod, None, name, q, up, false).await
}

async fn attach_uid(
    st: State<NodeApi>,
    UrlPath((ns, pod, uid, name)): UrlPath<(String, String, String, String)>,
    q: RawQuery,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    stream(st, ns, pod, Some(uid), name, q, up, false).await
}

async fn port_forward(
    st: State<NodeApi>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    forward_ports(st, ns, pod, None, up).await
}

async fn port_forward_uid(
    st: State<NodeApi>,
    UrlPath((ns, pod, uid)): UrlPath<(String, String, String)>,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    forward_ports(st, ns, pod, Some(uid), up).await
}

/// The ready sandbox of pod `ns/pod` (of `uid` when given).
async fn find_sandbox(
    cri: &Cri,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
) -> Result<String, Failure> {
    let mut sandboxes: Vec<api::PodSandbox> = cri
        .runtime()
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .map_err(|s| cri_failure("ListPodSandbox", s))?
        .into_inner()
        .items
        .into_iter()
        .filter(|s| {
            s.state == api::PodSandboxState::SandboxReady as i32
                && s.metadata.as_ref().is_some_and(|m| {
                    m.name == pod && m.namespace == ns && uid.is_none_or(|u| u == m.uid)
                })
        })
        .collect();
    sandboxes.sort_by_key(|s| s.created_at);
    sandboxes.pop().map(|s| s.id).ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("pod {pod:?} in namespace {ns:?} has no running sandbox on this node"),
        )
    })
}

/// `port-forward`: the runtime's streaming server speaks kubelet's SPDY
/// `portforward.k8s.io` protocol, so a SPDY client is passed through as
/// exec's SPDY clients are; a WebSocket client offering the tunnelling
/// subprotocol (kubectl >= 1.31) carries the same SPDY bytes in binary
/// messages and is relayed message by message. Any other WebSocket is
/// 400, on which kubectl falls back to SPDY.
async fn forward_ports(
    State(st): State<NodeApi>,
    ns: String,
    pod: String,
    uid: Option<String>,
    up: ClientUpgrade,
) -> Result<Response, Failure> {
    let offered_ws = match &up {
        ClientUpgrade::WebSocket(ws) => ws
            .requested_protocols()
            .filter_map(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    match &up {
        ClientUpgrade::Refused(e) => {
            return Err(bad_request(format!(
                "port-forward is served over SPDY/3.1 ({}) or a WebSocket tunnel ({}): {e}",
                exec::PORT_FORWARD_PROTOCOL,
                exec::PORT_FORWARD_TUNNEL
            )));
        }
        ClientUpgrade::WebSocket(_)
            if !offered_ws.iter().any(|p| p == exec::PORT_FORWARD_TUNNEL) =>
        {
            return Err(bad_request(format!(
                "port-forward over WebSocket needs the subprotocol {} (offered {offered_ws:?})",
                exec::PORT_FORWARD_TUNNEL
            )));
        }
        _ => {}
    }
    let cri = st.cri()?;
    let sandbox = find_sandbox(cri, &ns, &pod, uid.as_deref()).await?;
    let url = cri
        .runtime()
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: sandbox,
            port: Vec::new(),
        })
        .await
        .map_err(|s| cri_failure("PortForward", s))?
        .into_inner()
        .url;
    match up {
        ClientUpgrade::Spdy { on, offered } => {
            let offered = if offered.is_empty() {
                vec![exec::PORT_FORWARD_PROTOCOL.to_string()]
            } else {
                offered
            };
            let runtime = spdy::upgrade(&url, &offered)
                .await
                .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
            h.insert(
                header::UPGRADE,
                header::HeaderValue::from_static("SPDY/3.1"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&runtime.protocol) {
                h.insert("x-stream-protocol-version", v);
            }
            tokio::spawn(exec::relay_bytes(on, runtime));
            Ok(resp)
        }
        ClientUpgrade::WebSocket(ws) => {
            let runtime = spdy::upgrade(&url, &[exec::PORT_FORWARD_PROTOCOL.to_string()])
                .await
                .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(ws
                .protocols([exec::PORT_FORWARD_TUNNEL])
                .on_failed_upgrade(|e| debug!(error = %e, "node API: WebSocket upgrade failed"))
                .on_upgrade(move |socket| exec::relay_tunnel(socket, runtime)))
        }
        ClientUpgrade::Refused(_) => unreachable!("answered above"),
    }
}

/// How a client asked to stream exec or attach.
enum ClientUpgrade {
    /// A WebSocket handshake.
    WebSocket(WebSocketUpgrade),
    /// A SPDY/3.1 upgrade offering these remote-command protocols.
    Spdy {
        on: hyper::upgrade::OnUpgrade,
        offered: Vec<String>,
    },
    /// Neither (why, for the 400).
    Refused(String),
}

impl<S: Send + Sync> FromRequestParts<S> for ClientUpgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let spdy = parts.headers.get_all(header::UPGRADE).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("spdy/3.1"))
        });
        if spdy {
            let offered = parts
                .headers
                .get_all("x-stream-protocol-version")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            return Ok(
                match parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
                    Some(on) => ClientUpgrade::Spdy { on, offered },
                    None => ClientUpgrade::Refused("this connection cannot be upgraded".into()),
                },
            );
        }
        Ok(
            match WebSocketUpgrade::from_request_parts(parts, state).await {
                Ok(ws) => ClientUpgrade::WebSocket(ws),
                Err(e) => ClientUpgrade::Refused(e.body_text()),
            },
        )
    }
}

/// A [`ClientUpgrade`] the node will serve.
enum Accepted {
    /// A WebSocket with its negotiated subprotocol.
    WebSocket(WebSocketUpgrade, exec::Negotiated),
    /// A SPDY upgrade with the protocols it offers.
    Spdy(hyper::upgrade::OnUpgrade, Vec<String>),
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    State(st): State<NodeApi>,
    ns: String,
    pod: String,
    uid: Option<String>,
    name: String,
    RawQuery(raw): RawQuery,
    up: ClientUpgrade,
    is_exec: bool,
) -> Result<Response, Failure> {
    let opts = StreamOptions::parse(&query_pairs(raw.as_deref()), is_exec).map_err(bad_request)?;
    let accepted = match up {
        ClientUpgrade::Refused(e) => {
            return Err(bad_request(format!(
                "exec and attach are served over WebSocket (subprotocols {}) or SPDY/3.1: {e}",
                exec::CLIENT_PROTOCOLS.join(", ")
            )));
        }
        ClientUpgrade::Spdy { offered, .. } if offered.is_empty() => {
            return Err(bad_request(
                "a SPDY/3.1 upgrade must offer X-Stream-Protocol-Version (v4.channel.k8s.io, ...)",
            ));
        }
        ClientUpgrade::Spdy { on, offered } => Accepted::Spdy(on, offered),
        ClientUpgrade::WebSocket(ws) => {
            let offered: Vec<String> = ws
                .requested_protocols()
                .filter_map(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            Accepted::WebSocket(ws, exec::negotiate(&offered).map_err(bad_request)?)
        }
    };
    let cri = st.cri()?;
    let found = find_container(cri, &ns, &pod, uid.as_deref(), &name).await?;
    let c = found.current;
    if c.state != api::ContainerState::ContainerRunning as i32 {
        let state = api::ContainerState::try_from(c.state)
            .map(|s| s.as_str_name())
            .unwrap_or("unknown");
        return Err(bad_request(format!(
            "container {name:?} in pod {pod:?} is not running (state {state})"
        )));
    }
    let url = if is_exec {
        cri.runtime()
            .exec(api::ExecRequest {
                container_id: c.id.clone(),
                cmd: opts.command,
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                // With a TTY the runtime merges stderr into it and refuses
                // both at once.
                stderr: opts.stderr && !opts.tty,
            })
            .await
            .map_err(|s| cri_failure("Exec", s))?
            .into_inner()
            .url
    } else {
        cri.runtime()
            .attach(api::AttachRequest {
                container_id: c.id.clone(),
                stdin: opts.stdin,
                tty: opts.tty,
                stdout: opts.stdout,
                stderr: opts.stderr && !opts.tty,
            })
            .await
            .map_err(|s| cri_failure("Attach", s))?
            .into_inner()
            .url
    };
    // Connected before answering the client, so that a failure is an
    // HTTP error it can show rather than a stream that just closes.
    let (ws, negotiated) = match accepted {
        Accepted::WebSocket(ws, n) => (ws, n),
        Accepted::Spdy(on, offered) => {
            // SPDY clients (kubectl <= 1.29) speak the runtime's own
            // protocol: the upgrade is passed on, then bytes, as kubelet's
            // upgrade-aware proxy does.
            let runtime = spdy::upgrade(&url, &offered)
                .await
                .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
            h.insert(
                header::UPGRADE,
                header::HeaderValue::from_static("SPDY/3.1"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&runtime.protocol) {
                h.insert("x-stream-protocol-version", v);
            }
            tokio::spawn(exec::relay_bytes(on, runtime));
            return Ok(resp);
        }
    };
    let ws = match negotiated.client {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    if negotiated.is_v5() {
        let streams = spdy::Streams {
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr && !opts.tty,
            resize: opts.tty,
        };
        let (tx, rx) = spdy::connect(&url, streams)
            .await
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        return Ok(ws
            .on_failed_upgrade(|e| debug!(error = %e, "node API: WebSocket upgrade failed"))
            .on_upgrade(move |socket| exec::relay_spdy(socket, tx, rx)));
    }
    let runtime = exec::connect_runtime(&url, negotiated.runtime)
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(ws
        .on_failed_upgrade(|e| debug!(error = %e, "node API: WebSocket upgrade failed"))
        .on_upgrade(move |socket| exec::relay(socket, runtime)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: Router, uri: &str, peer: Option<Peer>) -> (StatusCode, String) {
        let mut req = http::Request::get(uri).body(Body::empty()).unwrap();
        if let Some(p) = peer {
            req.extensions_mut().insert(p);
        }
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn peer(groups: &[&str]) -> Peer {
        Peer {
            user: "someone".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn healthz_is_open() {
        let (code, body) = call(router_without_runtime(), "/healthz", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn only_system_masters_get_in() {
        let app = router_without_runtime();
        let uri = "/containerLogs/default/web/app";
        let (code, _) = call(app.clone(), uri, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, body) = call(app.clone(), uri, Some(peer(&["system:nodes"]))).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(
            body.contains("someone") && body.contains("system:masters"),
            "{body}"
        );
        let (code, body) = call(app.clone(), uri, Some(peer(&["system:masters"]))).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (code, _) = call(app, "/exec/default/web/app?command=ls&stdout=1", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn bad_queries_are_400_naming_the_parameter() {
        let app = router_without_runtime();
        let m = Some(peer(&["system:masters"]));
        let (code, body) = call(app.clone(), "/containerLogs/d/p/c?tailLines=-3", m.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("tailLines"), "{body}");
        let (code, body) = call(
            app.clone(),
            "/exec/d/p/c?command=ls&stdout=perhaps",
            m.clone(),
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("stdout"), "{body}");
        let (code, body) = call(app.clone(), "/exec/d/p/c?stdout=true", m.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("command"), "{body}");
        // Not a WebSocket (SPDY or plain GET): said so.
        let (code, body) = call(app.clone(), "/attach/d/p/c?stdout=true", m.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("WebSocket"), "{body}");
        let (code, _) = call(app, "/nothing/here", m).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    /// Sends a GET over TLS (HTTP/1.1), returns the status code.
    async fn tls_get(
        addr: std::net::SocketAddr,
        client: Arc<rustls::ClientConfig>,
        path: &str,
    ) -> u16 {
        use tokio::io::AsyncWriteExt;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // The server may close without close_notify once it has answered.
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"))
    }

    #[tokio::test]
    async fn tls_clients_are_identified_by_their_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rke2_trust::CertAuthority::ensure(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            "test-ca",
        )
        .unwrap();
        let (cert, key) = ca
            .issue(&rke2_trust::LeafSpec::server(
                "node",
                vec!["127.0.0.1".into()],
            ))
            .unwrap();
        let tls = rke2_trust::server_tls_config(
            cert.as_bytes(),
            key.as_bytes(),
            Some(ca.cert_pem.as_bytes()),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, tls, router_without_runtime(), {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        }));
        let client = |who: Option<(&str, &[&str])>| {
            let pair =
                who.map(|(cn, orgs)| ca.issue(&rke2_trust::LeafSpec::client(cn, orgs)).unwrap());
            rke2_trust::client_tls_config(
                ca.cert_pem.as_bytes(),
                pair.as_ref().map(|(c, k)| (c.as_bytes(), k.as_bytes())),
            )
            .unwrap()
        };
        let logs = "/containerLogs/default/web/app";
        let apiserver = client(Some(("system:apiserver", &["system:masters"])));
        // Through: no runtime behind this router, hence 503.
        assert_eq!(tls_get(addr, apiserver, logs).await, 503);
        let node = client(Some(("system:node:n1", &["system:nodes"])));
        assert_eq!(tls_get(addr, node, logs).await, 403);
        let anonymous = client(None);
        assert_eq!(tls_get(addr, anonymous.clone(), logs).await, 401);
        assert_eq!(tls_get(addr, anonymous, "/healthz").await, 200);
        stop.cancel();
        server.await.unwrap();
    }

    #[test]
    fn stream_options_parse() {
        let q: Vec<(String, String)> = form_urlencoded::parse(
            b"command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=1&tty=true",
        )
        .into_owned()
        .collect();
        let o = StreamOptions::parse(&q, true).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo a&b"]);
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        let e = StreamOptions::parse(&[("command".into(), "ls".into())], true).unwrap_err();
        assert_eq!(e, logs::QueryError::NoStreams);
        // attach takes no command.
        assert!(StreamOptions::parse(&[("stdout".into(), "true".into())], false).is_ok());
    }
}
