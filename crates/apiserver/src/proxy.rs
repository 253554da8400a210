//! `pods/log`, `pods/exec` and `pods/attach`: the apiserver side of the
//! node API proxy (upstream's `LogLocation`/`ExecLocation` and the
//! upgrade-aware proxy).
//!
//! A request is first resolved without IO on the node: the pod must exist,
//! the container is the `container` parameter or the pod's only container,
//! the pod must be bound (`spec.nodeName`), and the Node gives the address
//! (`InternalIP`, then `ExternalIP`, of `status.addresses`) and port
//! (`status.daemonEndpoints.kubeletEndpoint.Port`, default 10250). Then it
//! is forwarded to the node API over TLS: the node's serving certificate
//! must chain to the server CA and name the node's IP, and the apiserver
//! presents its kubelet-client certificate (`CN=system:apiserver,
//! O=system:masters`, see [`NodeClientTls`]).
//!
//! * `log` → `GET /containerLogs/<ns>/<pod>/<container>?...`; the node's
//!   body is streamed to the client frame by frame, never buffered, so
//!   `kubectl logs -f` sees lines as they come, and a client that goes away
//!   closes the node connection.
//! * `exec`/`attach` → `/exec|attach/<ns>/<pod>/<container>?...` as the
//!   client's upgrade, WebSocket or SPDY/3.1 (kubectl 1.29 and older); the
//!   node answers the protocol negotiation (`Sec-WebSocket-Protocol` or
//!   `X-Stream-Protocol-Version`: `v5.channel.k8s.io`, ...) and its 101 is
//!   relayed to the client, after which bytes are copied both ways until
//!   either side closes. Frames are not parsed.
//!
//! Errors: a node that cannot be reached gives 503 naming the node and
//! address; a node's non-2xx answer is relayed with its code (a Status body
//! as is, any other text wrapped into a Status).
//!
//! Architecture invariant: the rules ([`PodStream`], [`LogOptions`],
//! [`ExecOptions`], [`resolve_container`], [`node_address`]) do no IO and
//! are unit-tested; only [`forward_stream`] and [`forward_upgrade`] talk to
//! a node.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tracing::debug;

use crate::ApiState;
use crate::objects;
use crate::registry::{self, ResourceType};
use crate::request::ResourcePath;
use crate::status::{ApiError, ApiResult};

/// The node API port when a Node does not publish
/// `status.daemonEndpoints.kubeletEndpoint.Port`.
pub const DEFAULT_NODE_PORT: u16 = 10250;

/// How long TCP connect plus TLS handshake to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node may take to answer with a status line and headers
/// (the body of a followed log may then stream forever).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a node's error body that is read to build the Status.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Errors building the proxy's node client.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The CA, certificate or key could not be turned into a TLS client
    /// configuration.
    #[error("node API client TLS configuration: {0}")]
    Tls(#[source] rke2_trust::TrustError),
}

/// How the apiserver talks TLS to node APIs: it trusts only the server CA
/// (RKE2's `--kubelet-certificate-authority`) and presents its
/// kubelet-client certificate (`--kubelet-client-certificate`/`-key`).
#[derive(Clone)]
pub struct NodeClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl NodeClientTls {
    /// Builds the client configuration from the server CA (PEM) and the
    /// apiserver's client certificate and key (PEM); HTTP/1.1 is offered by
    /// ALPN because WebSocket upgrades need it.
    pub fn from_pem(
        server_ca_pem: &[u8],
        client_cert_pem: &[u8],
        client_key_pem: &[u8],
    ) -> Result<Self, ProxyError> {
        let base =
            rke2_trust::client_tls_config(server_ca_pem, Some((client_cert_pem, client_key_pem)))
                .map_err(ProxyError::Tls)?;
        let mut config = (*base).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl NodeClientTls {
    /// The apiserver's client certificate as a resolver, for the other
    /// TLS clients that present it (admission webhooks).
    pub fn client_cert_resolver(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        self.config.client_auth_cert_resolver.clone()
    }
}

impl std::fmt::Debug for NodeClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds a private key: never print it.
        f.debug_struct("NodeClientTls").finish_non_exhaustive()
    }
}

/// Which pod subresource is streamed from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodStream {
    /// `pods/log` → `/containerLogs/...`.
    Log,
    /// `pods/exec` → `/exec/...` (WebSocket).
    Exec,
    /// `pods/attach` → `/attach/...` (WebSocket).
    Attach,
    /// `pods/portforward` → `/portForward/<ns>/<pod>` (SPDY, or SPDY
    /// tunnelled in a WebSocket for kubectl >= 1.31).
    PortForward,
}

impl PodStream {
    /// The stream a resource path names, if it is one of the proxied pod
    /// subresources.
    pub fn of(path: &ResourcePath) -> Option<Self> {
        if !path.rt.group.is_empty() || path.rt.plural != "pods" || path.name.is_none() {
            return None;
        }
        match path.subresource.as_deref()? {
            "log" => Some(Self::Log),
            "exec" => Some(Self::Exec),
            "attach" => Some(Self::Attach),
            "portforward" => Some(Self::PortForward),
            _ => None,
        }
    }

    /// The first path segment of the node API route.
    pub fn node_route(self) -> &'static str {
        match self {
            Self::Log => "containerLogs",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portForward",
        }
    }

    /// The options kind upstream validates the query as (used in Status
    /// messages).
    pub fn options_kind(self) -> &'static str {
        match self {
            Self::Log => "PodLogOptions",
            Self::Exec => "PodExecOptions",
            Self::Attach => "PodAttachOptions",
            Self::PortForward => "PodPortForwardOptions",
        }
    }
}

/// The decoded query of a request, keeping repeated keys (`command`) and
/// their order.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The first value of a key, as upstream's query decoding reads it.
fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A boolean parameter as upstream decodes it: absent is false; present is
/// true unless it is `0` or `false` (any case).
fn flag(pairs: &[(String, String)], key: &str) -> bool {
    match first(pairs, key) {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

/// An integer parameter; empty counts as absent, anything unparsable is 400.
fn int(pairs: &[(String, String)], key: &str) -> ApiResult<Option<i64>> {
    match first(pairs, key) {
        None | Some("") => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid value for {key}: {v:?} is not an integer"))
        }),
    }
}

/// The container parameter; empty counts as absent.
fn container_param(pairs: &[(String, String)]) -> Option<String> {
    first(pairs, "container")
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// The options of a `pods/log` request, decoded and validated as
/// kube-apiserver does (`ValidatePodLogOptions`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// The `container` parameter, if given.
    pub container: Option<String>,
    /// Keep streaming new lines.
    pub follow: bool,
    /// Logs of the previous instance of the container.
    pub previous: bool,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// Only lines newer than this time (RFC 3339, normalised to UTC).
    pub since_time: Option<String>,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
}

impl LogOptions {
    /// Decodes and validates the query of `pods/<pod>/log`: 400 for
    /// unparsable values, 422 `PodLogOptions "<pod>" is invalid` for values
    /// out of range.
    pub fn parse(pairs: &[(String, String)], pod: &str) -> ApiResult<Self> {
        let since_time = match first(pairs, "sinceTime").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                chrono::DateTime::parse_from_rfc3339(v)
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "invalid value for sinceTime: {v:?} is not an RFC 3339 time: {e}"
                        ))
                    })?
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        };
        let opts = Self {
            container: container_param(pairs),
            follow: flag(pairs, "follow"),
            previous: flag(pairs, "previous"),
            timestamps: flag(pairs, "timestamps"),
            since_seconds: int(pairs, "sinceSeconds")?,
            since_time,
            tail_lines: int(pairs, "tailLines")?,
            limit_bytes: int(pairs, "limitBytes")?,
        };
        let mut causes = Vec::new();
        let invalid = |field: &str, value: i64, detail: &str| {
            (
                field.to_string(),
                "Invalid value".to_string(),
                format!("{value}: {detail}"),
            )
        };
        if let Some(n) = opts.tail_lines.filter(|n| *n < 0) {
            causes.push(invalid(
                "tailLines",
                n,
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = opts.limit_bytes.filter(|n| *n < 1) {
            causes.push(invalid("limitBytes", n, "must be greater than 0"));
        }
        match (opts.since_seconds, &opts.since_time) {
            (Some(_), Some(_)) => causes.push((
                String::new(),
                "Forbidden".to_string(),
                "at most one of `sinceTime` or `sinceSeconds` may be specified".to_string(),
            )),
            (Some(n), None) if n < 1 => {
                causes.push(invalid("sinceSeconds", n, "must be greater than 0"))
            }
            _ => {}
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                PodStream::Log.options_kind(),
                pod,
                pods(),
                &causes,
            ));
        }
        Ok(opts)
    }

    /// The query sent to the node's `/containerLogs/...` (only the options
    /// that are set; booleans as `true`).
    pub fn node_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (key, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                q.append_pair(key, "true");
            }
        }
        if let Some(n) = self.since_seconds {
            q.append_pair("sinceSeconds", &n.to_string());
        }
        if let Some(t) = &self.since_time {
            q.append_pair("sinceTime", t);
        }
        if let Some(n) = self.tail_lines {
            q.append_pair("tailLines", &n.to_string());
        }
        if let Some(n) = self.limit_bytes {
            q.append_pair("limitBytes", &n.to_string());
        }
        q.finish()
    }
}

/// The options of a `pods/exec` or `pods/attach` request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// The `container` parameter, if given.
    pub container: Option<String>,
    /// The command and its arguments (`command`, repeated; exec only).
    pub command: Vec<String>,
    /// Attach the client's stdin.
    pub stdin: bool,
    /// Stream the container's stdout.
    pub stdout: bool,
    /// Stream the container's stderr.
    pub stderr: bool,
    /// Allocate (exec) or expect (attach) a TTY.
    pub tty: bool,
}

impl ExecOptions {
    /// Decodes the query of `pods/<pod>/exec` or `.../attach`; `command` is
    /// only read for exec.
    pub fn parse(pairs: &[(String, String)], stream: PodStream) -> Self {
        let command = if stream == PodStream::Exec {
            pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            Vec::new()
        };
        Self {
            container: container_param(pairs),
            command,
            stdin: flag(pairs, "stdin"),
            stdout: flag(pairs, "stdout"),
            stderr: flag(pairs, "stderr"),
            tty: flag(pairs, "tty"),
        }
    }

    /// The query sent to the node: `command` repeated in order, then the
    /// stream flags that are set (as `true`).
    pub fn node_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for c in &self.command {
            q.append_pair("command", c);
        }
        for (key, on) in [
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("stderr", self.stderr),
            ("tty", self.tty),
        ] {
            if on {
                q.append_pair(key, "true");
            }
        }
        q.finish()
    }
}

fn pods() -> &'static ResourceType {
    registry::find("", "v1", "pods").expect("pods are registered")
}

fn nodes() -> &'static ResourceType {
    registry::find("", "v1", "nodes").expect("nodes are registered")
}

/// The names of a pod's containers of one list (`containers`,
/// `initContainers`, `ephemeralContainers`), in order.
fn container_names<'a>(pod: &'a Value, list: &str) -> Vec<&'a str> {
    pod["spec"][list]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// Picks the container a request is for, with upstream's rules and
/// messages: a named container must exist among the containers, init
/// containers or ephemeral containers (else 400 `container <c> is not valid
/// for pod <p>`); an unnamed one is the pod's only container, or 400 `a
/// container name must be specified for pod <p>, choose one of: [a b]`
/// (logs list every container, init ones first; exec and attach list the
/// containers and then `or one of the init containers: [...]`).
pub fn resolve_container(
    pod: &Value,
    requested: Option<&str>,
    stream: PodStream,
) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let containers = container_names(pod, "containers");
    let init = container_names(pod, "initContainers");
    let ephemeral = container_names(pod, "ephemeralContainers");
    if let Some(c) = requested.filter(|c| !c.is_empty()) {
        if containers
            .iter()
            .chain(&init)
            .chain(&ephemeral)
            .any(|n| *n == c)
        {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    match containers.as_slice() {
        [only] => Ok(only.to_string()),
        [] => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}"
        ))),
        _ => {
            let message = match stream {
                PodStream::Log => {
                    let all: Vec<&str> = init
                        .iter()
                        .chain(&containers)
                        .chain(&ephemeral)
                        .copied()
                        .collect();
                    format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        all.join(" ")
                    )
                }
                PodStream::Exec | PodStream::Attach | PodStream::PortForward => {
                    let mut m = format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        containers.join(" ")
                    );
                    if !init.is_empty() {
                        m.push_str(&format!(
                            " or one of the init containers: [{}]",
                            init.join(" ")
                        ));
                    }
                    m
                }
            };
            Err(ApiError::bad_request(message))
        }
    }
}

/// The node API address of a Node: its first `InternalIP` (else
/// `ExternalIP`) in `status.addresses` and
/// `status.daemonEndpoints.kubeletEndpoint.Port` (else
/// [`DEFAULT_NODE_PORT`]). 503 naming the node when it has no usable
/// address.
pub fn node_address(node: &Value) -> ApiResult<SocketAddr> {
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let addresses = node["status"]["addresses"].as_array();
    let find = |ty: &str| {
        addresses?
            .iter()
            .filter(|a| a["type"].as_str() == Some(ty))
            .find_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
    };
    let ip = find("InternalIP").or_else(|| find("ExternalIP")).ok_or_else(|| {
        ApiError::unavailable(format!(
            "node {name:?} has no InternalIP or ExternalIP address in status.addresses; cannot reach its node API"
        ))
    })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_NODE_PORT);
    Ok(SocketAddr::new(ip, port))
}

/// Where a request goes on a node API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    /// The Node's name (for messages).
    pub node: String,
    /// The node API address.
    pub addr: SocketAddr,
    /// Path and query on the node API, e.g.
    /// `/containerLogs/default/web/nginx?follow=true`.
    pub path_and_query: String,
}

impl NodeTarget {
    /// The target of `stream` for a container of a pod (names from the
    /// stored pod, so they are valid path segments) with an encoded query.
    pub fn new(
        node: &str,
        addr: SocketAddr,
        stream: PodStream,
        namespace: &str,
        pod: &str,
        container: &str,
        query: &str,
    ) -> Self {
        let mut path_and_query = if stream == PodStream::PortForward {
            // A pod's ports, not a container's.
            format!(
                "/{}/{}/{}",
                stream.node_route(),
                segment(namespace),
                segment(pod)
            )
        } else {
            format!(
                "/{}/{}/{}/{}",
                stream.node_route(),
                segment(namespace),
                segment(pod),
                segment(container)
            )
        };
        if !query.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Self {
            node: node.to_string(),
            addr,
            path_and_query,
        }
    }
}

/// Percent-encodes what is not an unreserved URL character (names are
/// DNS labels in practice; this only guards against surprises).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Serves one `pods/<p>/log|exec|attach` request (authorization already
/// decided): resolves pod, container and node, then forwards to the node.
/// `parts` gives the method, query, headers and, for exec and attach, the
/// client connection's pending upgrade.
pub async fn handle(
    state: &ApiState,
    path: &ResourcePath,
    stream: PodStream,
    parts: &mut http::request::Parts,
) -> Response {
    match serve(state, path, stream, parts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &ApiState,
    path: &ResourcePath,
    stream: PodStream,
    parts: &mut http::request::Parts,
) -> ApiResult<Response> {
    let allowed = match stream {
        PodStream::Log => parts.method == Method::GET,
        PodStream::Exec | PodStream::Attach | PodStream::PortForward => {
            parts.method == Method::GET || parts.method == Method::POST
        }
    };
    if !allowed {
        return Err(ApiError::method_not_allowed(parts.method.as_str(), pods()));
    }
    let name = path.name.as_deref().unwrap_or("");
    let namespace = path.namespace.as_deref().unwrap_or("");
    let pairs = query_pairs(parts.uri.query());
    let (requested, query) = match stream {
        PodStream::Log => {
            let o = LogOptions::parse(&pairs, name)?;
            (o.container.clone(), o.node_query())
        }
        PodStream::Exec | PodStream::Attach => {
            let o = ExecOptions::parse(&pairs, stream);
            (o.container.clone(), o.node_query())
        }
        PodStream::PortForward => (None, port_forward_query(&pairs)?),
    };
    let pod = read(state, pods(), Some(namespace), name).await?;
    let container = if stream == PodStream::PortForward {
        String::new()
    } else {
        resolve_container(&pod, requested.as_deref(), stream)?
    };
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let node = read(state, nodes(), None, node_name).await?;
    let addr = node_address(&node)?;
    let target = NodeTarget::new(
        node_name,
        addr,
        stream,
        pod["metadata"]["namespace"].as_str().unwrap_or(namespace),
        pod["metadata"]["name"].as_str().unwrap_or(name),
        &container,
        &query,
    );
    let tls = &state.config().node_client;
    match stream {
        PodStream::Log => forward_stream(tls, &target).await,
        PodStream::Exec | PodStream::Attach | PodStream::PortForward => {
            let protocol = stream_upgrade(&parts.headers)?;
            let Some(upgrade) = parts.extensions.remove::<OnUpgrade>() else {
                return Err(ApiError::bad_request(
                    "this connection cannot be upgraded: streaming needs HTTP/1.1",
                ));
            };
            forward_upgrade(
                tls,
                &target,
                &parts.method,
                &parts.headers,
                protocol,
                upgrade,
            )
            .await
        }
    }
}

/// The `ports` of a port-forward request (repeated or comma separated, as
/// upstream's `PodPortForwardOptions`), each 1-65535, passed on to the node;
/// a bad one is 400 naming it.
fn port_forward_query(pairs: &[(String, String)]) -> ApiResult<String> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => {
                    q.append_pair(k, p);
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid port {p:?}: must be an integer from 1 to 65535"
                    )));
                }
            }
        }
    }
    Ok(q.finish())
}

/// The node API path of a `nodes/<name>/proxy/<path>` request path: what
/// follows `/proxy` (`/` when nothing does).
pub fn node_proxy_path(request_path: &str, node: &str) -> Option<String> {
    let rest = request_path.strip_prefix(&format!("/api/v1/nodes/{node}/proxy"))?;
    match rest {
        "" => Some("/".into()),
        r if r.starts_with('/') => Some(r.to_string()),
        _ => None,
    }
}

/// Serves `/api/v1/nodes/<name>/proxy/<path>` (authorized already, the
/// verb from the method as upstream's): the node API's answer for `<path>`
/// and the query, streamed, as the apiserver's kubelet client (so the node
/// lets it in; the user was authorized here). Every method is passed on
/// with its body and `Content-Type`, and a WebSocket or SPDY upgrade (an
/// exec, attach or port-forward on the node's own paths) is relayed as
/// `pods/exec` is.
pub async fn node_proxy(
    state: &ApiState,
    name: &str,
    request_path: &str,
    parts: &mut http::request::Parts,
    body: Option<Body>,
) -> Response {
    let serve = async {
        let path = node_proxy_path(request_path, name).ok_or_else(ApiError::no_route)?;
        let node = read(state, nodes(), None, name).await?;
        let addr = node_address(&node)?;
        let mut path_and_query = path;
        if let Some(q) = parts.uri.query().filter(|q| !q.is_empty()) {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let target = NodeTarget {
            node: name.to_string(),
            addr,
            path_and_query,
        };
        let tls = &state.config().node_client;
        if parts.headers.contains_key(header::UPGRADE) {
            let protocol = stream_upgrade(&parts.headers)?;
            let client = parts
                .extensions
                .remove::<OnUpgrade>()
                .ok_or_else(|| ApiError::bad_request("the connection cannot be upgraded"))?;
            return forward_upgrade(
                tls,
                &target,
                &parts.method,
                &parts.headers,
                protocol,
                client,
            )
            .await;
        }
        // Links in an HTML answer stay under the proxy, as upstream's
        // node proxy transport has them.
        let links = crate::proxy_rewrite::LinkRewriter {
            prefix: format!("/api/v1/nodes/{name}/proxy"),
            backend: addr.to_string(),
            own_host: parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string(),
        };
        if parts.method == Method::GET {
            return Ok(links
                .rewrite_response(forward_stream(tls, &target).await?)
                .await);
        }
        let mut req = request(&parts.method, &target);
        for name in [header::CONTENT_TYPE, header::ACCEPT] {
            if let Some(v) = parts.headers.get(&name) {
                req = req.header(name, v);
            }
        }
        let req = req
            .body(body.unwrap_or_default())
            .map_err(|e| ApiError::internal(format!("building the node request: {e}")))?;
        let resp = send(tls, &target, req)
            .await
            .map_err(|e| e.into_api(&target))?;
        if !resp.status().is_success() {
            return Ok(node_error(&target, resp).await);
        }
        let (head, incoming) = resp.into_parts();
        let mut out = Response::new(Body::new(incoming));
        *out.status_mut() = head.status;
        if let Some(ct) = head.headers.get(header::CONTENT_TYPE) {
            out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        Ok(links.rewrite_response(out).await)
    };
    match serve.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn read(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Value> {
    match state.store.get(&rt.key(namespace, name)).await? {
        Some(kv) => objects::from_stored(rt, &kv.value, kv.mod_revision),
        None => Err(ApiError::not_found(rt, name)),
    }
}

/// The streaming protocols exec and attach are served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    /// WebSocket (kubectl >= 1.30): `Sec-WebSocket-*` headers.
    WebSocket,
    /// SPDY/3.1 (kubectl <= 1.29): `X-Stream-Protocol-Version` headers.
    Spdy,
}

impl StreamProtocol {
    /// The `Upgrade` token sent to the node.
    fn token(self) -> &'static str {
        match self {
            StreamProtocol::WebSocket => "websocket",
            StreamProtocol::Spdy => "SPDY/3.1",
        }
    }

    /// The handshake headers passed from the client to the node.
    fn headers(self) -> &'static [&'static str] {
        match self {
            StreamProtocol::WebSocket => &[
                "sec-websocket-key",
                "sec-websocket-version",
                "sec-websocket-protocol",
                "sec-websocket-extensions",
            ],
            StreamProtocol::Spdy => &["x-stream-protocol-version"],
        }
    }
}

/// Which upgrade an exec/attach request asks for: no upgrade is 400
/// `Upgrade request required` (as upstream), an unknown one 400 naming it.
pub fn stream_upgrade(headers: &HeaderMap) -> ApiResult<StreamProtocol> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let upgrade: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if upgrade.is_empty() || !has_token(header::CONNECTION, "upgrade") {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    if upgrade.iter().any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Ok(StreamProtocol::WebSocket);
    }
    if upgrade.iter().any(|t| t.eq_ignore_ascii_case("spdy/3.1")) {
        return Ok(StreamProtocol::Spdy);
    }
    Err(ApiError::bad_request(format!(
        "unsupported upgrade protocol {:?}: websocket and SPDY/3.1 are served",
        upgrade.join(", ")
    )))
}

/// Why a node could not be talked to.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("TCP connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connect and TLS handshake timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("no answer within {0:?}")]
    HeadTimeout(Duration),
}

impl DialError {
    fn into_api(self, target: &NodeTarget) -> ApiError {
        ApiError::unavailable(format!(
            "error talking to node {:?} at {}: {self}",
            target.node, target.addr
        ))
    }
}

/// Sends one request on a fresh TLS connection to the node and returns its
/// answer head (the body streams on). The connection task lives until the
/// body or upgrade is done with.
async fn send<B>(
    tls: &NodeClientTls,
    target: &NodeTarget,
    req: Request<B>,
) -> Result<hyper::Response<hyper::body::Incoming>, DialError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let name = ServerName::IpAddress(target.addr.ip().into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(DialError::Connect)?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await.map_err(DialError::Tls)
    })
    .await
    .map_err(|_| DialError::ConnectTimeout(CONNECT_TIMEOUT))??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(DialError::Http)?;
    let node = target.node.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%node, error = %e, "node API connection ended with an error");
        }
    });
    tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| DialError::HeadTimeout(HEAD_TIMEOUT))?
        .map_err(DialError::Http)
}

fn request(method: &Method, target: &NodeTarget) -> http::request::Builder {
    Request::builder()
        .method(method.clone())
        .uri(target.path_and_query.as_str())
        .header(header::HOST, target.addr.to_string())
}

/// Forwards a GET to the node and streams a 2xx answer to the client as it
/// arrives (Content-Type kept, `text/plain` when the node sent none).
pub async fn forward_stream(tls: &NodeClientTls, target: &NodeTarget) -> ApiResult<Response> {
    let req = request(&Method::GET, target)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(format!("building the node request: {e}")))?;
    let resp = send(tls, target, req)
        .await
        .map_err(|e| e.into_api(target))?;
    if !resp.status().is_success() {
        return Ok(node_error(target, resp).await);
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/plain"));
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(out)
}

/// Forwards a WebSocket or SPDY upgrade to the node. On the node's 101
/// the client gets a 101 with the node's headers (its
/// `Sec-WebSocket-Accept` and chosen `Sec-WebSocket-Protocol`, or its
/// `X-Stream-Protocol-Version`), and a task relays bytes between the two
/// upgraded connections until either side closes. Any other answer is
/// relayed as an error.
pub async fn forward_upgrade(
    tls: &NodeClientTls,
    target: &NodeTarget,
    method: &Method,
    client_headers: &HeaderMap,
    protocol: StreamProtocol,
    client_upgrade: OnUpgrade,
) -> ApiResult<Response> {
    let mut builder = request(method, target)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, protocol.token());
    for name in protocol.headers().iter().copied() {
        for v in client_headers.get_all(name) {
            builder = builder.header(name, v);
        }
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(format!("building the node request: {e}")))?;
    let resp = send(tls, target, req)
        .await
        .map_err(|e| e.into_api(target))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        if resp.status().is_success() {
            return Err(ApiError::unavailable(format!(
                "node {:?} at {} answered {} instead of switching protocols",
                target.node,
                target.addr,
                resp.status()
            )));
        }
        return Ok(node_error(target, resp).await);
    }
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    let node_upgrade = hyper::upgrade::on(resp);
    tokio::spawn(relay(client_upgrade, node_upgrade, target.clone()));
    Ok(out)
}

/// Copies bytes between the upgraded client and node connections.
async fn relay(client: OnUpgrade, node: OnUpgrade, target: NodeTarget) {
    let (client, node) = match tokio::try_join!(client, node) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(node = %target.node, error = %e, "stream upgrade did not complete");
            return;
        }
    };
    let carried =
        rke2_relay::splice(TokioIo::new(client), TokioIo::new(node), rke2_relay::LINGER).await;
    debug!(node = %target.node, path = %target.path_and_query, up = carried.up, down = carried.down, "stream closed");
}

/// The Status reason kube-apiserver uses for a code.
fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// Relays a node's non-2xx answer: its code, and its body when that is a
/// Status, else the body text wrapped into a Status.
async fn node_error(target: &NodeTarget, resp: hyper::Response<hyper::body::Incoming>) -> Response {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let room = MAX_ERROR_BODY - buf.len();
                buf.extend_from_slice(&data[..data.len().min(room)]);
                if buf.len() >= MAX_ERROR_BODY {
                    break;
                }
            }
        }
    })
    .await;
    if read.is_err() {
        debug!(node = %target.node, "node error body not complete in time; using what came");
    }
    let is_status = serde_json::from_slice::<Value>(&buf)
        .map(|v| v["kind"] == "Status")
        .unwrap_or(false);
    if is_status {
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(buf),
        )
            .into_response();
    }
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    let message = if text.is_empty() {
        format!(
            "node {:?} at {} answered {status} without a message",
            target.node, target.addr
        )
    } else {
        text
    };
    let mut err = ApiError::new(status.as_u16(), reason_for(status.as_u16()), message);
    // A code that is not an error would confuse clients: keep it an error.
    if !(status.is_client_error() || status.is_server_error()) {
        err.code = 502;
        err.reason = "InternalError";
    }
    err.into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn node_proxy_paths() {
        assert_eq!(
            node_proxy_path("/api/v1/nodes/n1/proxy/stats/summary", "n1").as_deref(),
            Some("/stats/summary")
        );
        assert_eq!(
            node_proxy_path("/api/v1/nodes/n1/proxy", "n1").as_deref(),
            Some("/")
        );
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/proxyx", "n1"), None);
        assert_eq!(node_proxy_path("/api/v1/nodes/n2/proxy/a", "n1"), None);
    }

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(Some(q))
    }

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let list = |names: &[&str]| -> Vec<Value> {
            names
                .iter()
                .map(|n| json!({"name": n, "image": "x"}))
                .collect()
        };
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": list(containers), "initContainers": list(init), "nodeName": "n1"},
        })
    }

    #[test]
    fn the_only_container_is_the_default() {
        assert_eq!(
            resolve_container(&pod(&["nginx"], &[]), None, PodStream::Log).unwrap(),
            "nginx"
        );
        assert_eq!(
            resolve_container(&pod(&["nginx"], &["setup"]), Some(""), PodStream::Exec).unwrap(),
            "nginx"
        );
    }

    #[test]
    fn several_containers_need_a_name() {
        let e = resolve_container(&pod(&["a", "b"], &[]), None, PodStream::Exec).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.reason, "BadRequest");
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [a b]"
        );
        let e = resolve_container(&pod(&["a", "b"], &["i"]), None, PodStream::Attach).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [i]"
        );
        let e = resolve_container(&pod(&["a", "b"], &["i"]), None, PodStream::Log).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod web, choose one of: [i a b]"
        );
        let e = resolve_container(&pod(&[], &[]), None, PodStream::Log).unwrap_err();
        assert_eq!(e.message, "a container name must be specified for pod web");
    }

    #[test]
    fn a_named_container_must_exist() {
        let p = pod(&["a", "b"], &["i"]);
        assert_eq!(
            resolve_container(&p, Some("b"), PodStream::Exec).unwrap(),
            "b"
        );
        assert_eq!(
            resolve_container(&p, Some("i"), PodStream::Log).unwrap(),
            "i"
        );
        let e = resolve_container(&p, Some("c"), PodStream::Log).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.message, "container c is not valid for pod web");
        // A pod with a non-object spec gives a 400, never a panic.
        let odd = json!({"metadata": {"name": "x"}, "spec": "nope"});
        assert_eq!(
            resolve_container(&odd, None, PodStream::Exec)
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn log_options_pass_through() {
        let o = LogOptions::parse(
            &pairs("container=c&follow=true&tailLines=10&timestamps=1&previous=false&limitBytes=500&sinceSeconds=60&pretty=true"),
            "web",
        )
        .unwrap();
        assert_eq!(o.container.as_deref(), Some("c"));
        assert_eq!(
            o.node_query(),
            "follow=true&timestamps=true&sinceSeconds=60&tailLines=10&limitBytes=500"
        );
        let o = LogOptions::parse(
            &pairs("sinceTime=2024-05-01T10:00:00%2B02:00&previous=true"),
            "web",
        )
        .unwrap();
        assert_eq!(
            o.node_query(),
            "previous=true&sinceTime=2024-05-01T08%3A00%3A00Z"
        );
        assert_eq!(LogOptions::parse(&[], "web").unwrap().node_query(), "");
    }

    #[test]
    fn log_options_are_validated_as_upstream() {
        let e = LogOptions::parse(&pairs("tailLines=-1"), "web").unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        let e = LogOptions::parse(&pairs("limitBytes=0"), "web").unwrap_err();
        assert!(e.message.contains("limitBytes"), "{}", e.message);
        let e = LogOptions::parse(&pairs("sinceSeconds=0"), "web").unwrap_err();
        assert!(e.message.contains("sinceSeconds"), "{}", e.message);
        let e = LogOptions::parse(
            &pairs("sinceSeconds=5&sinceTime=2024-05-01T10:00:00Z"),
            "web",
        )
        .unwrap_err();
        assert!(e.message.contains("at most one of"), "{}", e.message);
        let e = LogOptions::parse(&pairs("tailLines=ten"), "web").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("tailLines"), "{}", e.message);
        let e = LogOptions::parse(&pairs("sinceTime=yesterday"), "web").unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn exec_options_keep_the_command_in_order() {
        let o = ExecOptions::parse(
            &pairs(
                "command=sh&command=-c&command=echo+a%26b&container=c&stdin=true&stdout=true&stderr=false&tty=1",
            ),
            PodStream::Exec,
        );
        assert_eq!(o.command, ["sh", "-c", "echo a&b"]);
        assert_eq!(o.container.as_deref(), Some("c"));
        assert_eq!(
            o.node_query(),
            "command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=true&tty=true"
        );
        let a = ExecOptions::parse(
            &pairs("command=ignored&stdout=true&stderr=true"),
            PodStream::Attach,
        );
        assert!(a.command.is_empty());
        assert_eq!(a.node_query(), "stdout=true&stderr=true");
    }

    #[test]
    fn node_address_prefers_internal_ip_and_the_published_port() {
        let n = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalIP", "address": "10.0.0.5"}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}
        }});
        assert_eq!(node_address(&n).unwrap(), "10.0.0.5:11250".parse().unwrap());
        let n = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "ExternalIP", "address": "fd00::5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}
        }});
        assert_eq!(
            node_address(&n).unwrap(),
            "[fd00::5]:10250".parse().unwrap()
        );
        let e = node_address(&json!({"metadata": {"name": "n1"}, "status": {}})).unwrap_err();
        assert_eq!(e.code, 503);
        assert!(e.message.contains("\"n1\""), "{}", e.message);
    }

    #[test]
    fn targets_name_the_node_route() {
        let t = NodeTarget::new(
            "n1",
            "10.0.0.5:10250".parse().unwrap(),
            PodStream::Log,
            "default",
            "web",
            "nginx",
            "follow=true",
        );
        assert_eq!(
            t.path_and_query,
            "/containerLogs/default/web/nginx?follow=true"
        );
        let t = NodeTarget::new(
            "n1",
            "10.0.0.5:10250".parse().unwrap(),
            PodStream::Attach,
            "default",
            "web",
            "nginx",
            "",
        );
        assert_eq!(t.path_and_query, "/attach/default/web/nginx");
    }

    #[test]
    fn websocket_and_spdy_upgrades_are_proxied() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let ws = stream_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]))
        .unwrap();
        assert_eq!(ws, StreamProtocol::WebSocket);
        let spdy = stream_upgrade(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
        ]))
        .unwrap();
        assert_eq!(spdy, StreamProtocol::Spdy);
        assert_eq!(spdy.headers(), &["x-stream-protocol-version"]);
        let e = stream_upgrade(&headers(&[])).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "Upgrade request required")
        );
        let e =
            stream_upgrade(&headers(&[("connection", "Upgrade"), ("upgrade", "h2c")])).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("\"h2c\""), "{}", e.message);
        assert!(stream_upgrade(&headers(&[("upgrade", "websocket")])).is_err());
    }

    #[test]
    fn pod_streams_come_from_pod_subresources() {
        let route = |p: &str| match crate::request::parse_path(p, &crate::registry::Registry::new())
            .unwrap()
        {
            crate::request::Route::Resource(r) => r,
            _ => panic!("{p}"),
        };
        assert_eq!(
            PodStream::of(&route("/api/v1/namespaces/d/pods/p/log")),
            Some(PodStream::Log)
        );
        assert_eq!(
            PodStream::of(&route("/api/v1/namespaces/d/pods/p/exec")),
            Some(PodStream::Exec)
        );
        assert_eq!(
            PodStream::of(&route("/api/v1/namespaces/d/pods/p/attach")),
            Some(PodStream::Attach)
        );
        assert_eq!(
            PodStream::of(&route("/api/v1/namespaces/d/pods/p/status")),
            None
        );
        assert_eq!(PodStream::of(&route("/api/v1/namespaces/d/pods/p")), None);
    }

    #[test]
    fn non_status_reasons_follow_the_code() {
        assert_eq!(reason_for(404), "NotFound");
        assert_eq!(reason_for(500), "InternalError");
        assert_eq!(reason_for(503), "ServiceUnavailable");
    }
}
