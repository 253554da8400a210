//! `pods/<id>/proxy/<path>` and `services/<id>/proxy/<path>`: the
//! apiserver itself connects to a pod IP (for a Service: one Ready
//! endpoint of the named port, picked at random) and relays the request,
//! any method, body and upgrade included, as kube-apiserver's
//! `ProxyREST` does. `<id>` is `[scheme:]name[:port]` (scheme `http` or
//! `https`; the pod's certificate is not checked, as upstream's proxy
//! transport does not). The caller's credentials are not passed on. A
//! redirect's `Location` and the links of an HTML answer are rewritten
//! under the proxy path as upstream's proxy transport does
//! ([`crate::proxy_rewrite`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header;
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tracing::debug;

use crate::ApiState;
use crate::aggregator::forward::{
    backend_request, hop_by_hop, is_upgrade, ready_addresses, switch_protocols,
};
use crate::aggregator::{ServiceRef, get_object};
use crate::registry::{self, ResourceType};
use crate::request::ResourcePath;
use crate::status::{ApiError, ApiResult};

/// How long TCP connect (plus TLS) to a pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a pod may take to send its answer's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A proxy target id: `[scheme:]name[:port]` (upstream's
/// `SplitSchemeNamePort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyId {
    /// `""`, `http` or `https`.
    pub scheme: String,
    /// The pod's or Service's name.
    pub name: String,
    /// The port (number or name); empty when none was given.
    pub port: String,
}

impl ProxyId {
    /// Splits an id; `None` when it has more than three parts, an empty
    /// name or an unknown scheme.
    pub fn parse(id: &str) -> Option<Self> {
        let parts: Vec<&str> = id.split(':').collect();
        let (scheme, name, port) = match parts.as_slice() {
            [name] => ("", *name, ""),
            [name, port] => ("", *name, *port),
            [scheme, name, port] => (*scheme, *name, *port),
            _ => return None,
        };
        (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then(|| Self {
            scheme: scheme.to_string(),
            name: name.to_string(),
            port: port.to_string(),
        })
    }
}

/// Whether a path is a pods or services proxy path this module serves.
pub fn serves(rp: &ResourcePath) -> bool {
    rp.subresource.as_deref() == Some("proxy")
        && rp.rt.group.is_empty()
        && matches!(rp.rt.plural.as_str(), "pods" | "services")
}

/// The authorization verb of a proxy request: by method only, as
/// upstream's request info does for connect subresources.
pub fn verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// Splits the raw request path into the proxy prefix
/// (`/api/v1/namespaces/<ns>/<plural>/<id>/proxy`) and the rest (`None`
/// when nothing follows `proxy`, not even `/`).
pub fn split_path(raw: &str) -> Option<(&str, Option<&str>)> {
    // The prefix has seven segments; the eighth `/` starts the rest.
    let Some((at, _)) = raw.match_indices('/').nth(7) else {
        return raw.ends_with("/proxy").then_some((raw, None));
    };
    let (prefix, rest) = raw.split_at(at);
    prefix.ends_with("/proxy").then_some((prefix, Some(rest)))
}

/// The pod IP and port a `pods/<id>/proxy` request goes to: the port
/// given (a number, or a container port's name), else the first declared
/// container port, else none (the scheme's default).
pub fn pod_location(pod: &Value, id: &ProxyId) -> ApiResult<(IpAddr, Option<u16>)> {
    let ip = pod["status"]["podIP"]
        .as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
        .ok_or_else(|| ApiError::bad_request("address not allowed"))?;
    let ports = || {
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
    };
    let port = if id.port.is_empty() {
        ports().find_map(|p| p["containerPort"].as_u64())
    } else if let Ok(n) = id.port.parse::<u16>() {
        Some(u64::from(n))
    } else {
        let named = ports()
            .find(|p| p["name"].as_str() == Some(id.port.as_str()))
            .and_then(|p| p["containerPort"].as_u64());
        Some(named.ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid pod request {:?}: no container port named {:?}",
                format!("{}:{}", id.name, id.port),
                id.port
            ))
        })?)
    };
    Ok((ip, port.and_then(|p| u16::try_from(p).ok())))
}

/// The Service port name a `services/<id>/proxy` request means: the id's
/// port by name, or the name of the port with that number; the Service's
/// only port when none was given.
pub fn service_port_name(service: &Value, id: &ProxyId) -> ApiResult<String> {
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Ok(n) = id.port.parse::<u64>() {
        return ports
            .iter()
            .find(|p| p["port"].as_u64() == Some(n))
            .map(|p| p["name"].as_str().unwrap_or("").to_string())
            .ok_or_else(|| {
                ApiError::unavailable(format!(
                    "no service port {n} found for service {:?}",
                    id.name
                ))
            });
    }
    Ok(id.port.clone())
}

fn rt(plural: &str) -> &'static ResourceType {
    registry::find("", "v1", plural).expect("core types are registered")
}

async fn object(state: &ApiState, plural: &str, ns: &str, name: &str) -> ApiResult<Arc<Value>> {
    let rt = rt(plural);
    get_object(state, rt, Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found(rt, name))
}

/// Where the request goes: scheme, address, and the name for TLS.
async fn locate(state: &ApiState, rp: &ResourcePath, id: &ProxyId) -> ApiResult<SocketAddr> {
    let ns = rp.namespace.as_deref().unwrap_or("default");
    if rp.rt.plural == "pods" {
        let pod = object(state, "pods", ns, &id.name).await?;
        let (ip, port) = pod_location(&pod, id)?;
        let default = if id.scheme == "https" { 443 } else { 80 };
        return Ok(SocketAddr::new(ip, port.unwrap_or(default)));
    }
    let service = object(state, "services", ns, &id.name).await?;
    let port_name = service_port_name(&service, id)?;
    let svc = ServiceRef {
        namespace: ns.to_string(),
        name: id.name.clone(),
        port: 0,
    };
    let slices = crate::aggregator::forward::slices_of(state, &svc)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let addrs = ready_addresses(&slices, &port_name);
    if addrs.is_empty() {
        return Err(ApiError::unavailable(format!(
            "no endpoints available for service {:?}",
            id.name
        )));
    }
    Ok(addrs[rand::random_range(0..addrs.len())])
}

/// Opens a connection to the backend (TLS without verification for
/// `https`, as upstream's proxy transport) and sends `req`.
async fn send(
    addr: SocketAddr,
    tls: bool,
    req: Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
        .map_err(|e| format!("dial tcp {addr}: connect: {}", os_error_text(&e)))?;
    let _ = tcp.set_nodelay(true);
    macro_rules! exchange {
        ($stream:expr) => {{
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(%addr, error = %e, "proxied connection ended with an error");
                }
            });
            tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(req))
                .await
                .map_err(|_| "timeout awaiting response headers".to_string())?
                .map_err(|e| e.to_string())
        }};
    }
    if tls {
        let provider = rke2_trust::provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(provider))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
            .map_err(|e| format!("tls: {e}"))?;
        exchange!(stream)
    } else {
        exchange!(tcp)
    }
}

/// An OS error as Go words it (`connection refused`).
fn os_error_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::HostUnreachable => "no route to host".into(),
        ErrorKind::NetworkUnreachable => "network is unreachable".into(),
        ErrorKind::TimedOut => "connection timed out".into(),
        _ => e.to_string(),
    }
}

/// Serves one authorized pods/services proxy request.
pub async fn serve(
    state: &ApiState,
    rp: &ResourcePath,
    parts: &mut http::request::Parts,
    body: Option<Body>,
) -> Response {
    let result = async {
        let raw = parts.uri.path().to_string();
        let id_text = rp.name.clone().unwrap_or_default();
        let Some(id) = ProxyId::parse(&id_text) else {
            let what = if rp.rt.plural == "pods" {
                "pod"
            } else {
                "service"
            };
            return Err(ApiError::bad_request(format!(
                "invalid {what} request {id_text:?}"
            )));
        };
        let (prefix, rest) = split_path(&raw).ok_or_else(ApiError::no_route)?;
        let Some(rest) = rest else {
            // Upstream redirects an empty path to the one with a slash.
            let location = match parts.uri.query() {
                Some(q) => format!("{raw}/?{q}"),
                None => format!("{raw}/"),
            };
            return Ok((
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, location)],
            )
                .into_response());
        };
        let addr = locate(state, rp, &id).await?;
        let upgrade = is_upgrade(&parts.headers)
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let req = backend_request(parts, path_and_query, addr, upgrade.is_some())
            .body(body.unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let resp = send(addr, id.scheme == "https", req)
            .await
            .map_err(|e| ApiError::unavailable(format!("error trying to reach service: {e}")))?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client) = upgrade
        {
            return Ok(switch_protocols(resp, client, addr));
        }
        let own = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (head, incoming) = resp.into_parts();
        let mut out = Response::new(Body::new(incoming));
        *out.status_mut() = head.status;
        for (k, v) in &head.headers {
            if !hop_by_hop(k) {
                out.headers_mut().append(k.clone(), v.clone());
            }
        }
        let links = crate::proxy_rewrite::LinkRewriter {
            prefix: prefix.to_string(),
            backend: addr.to_string(),
            own_host: own,
        };
        Ok(links.rewrite_response(out).await)
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_split_as_upstream() {
        let id = ProxyId::parse("https:web:8443").unwrap();
        assert_eq!(
            (id.scheme.as_str(), id.name.as_str(), id.port.as_str()),
            ("https", "web", "8443")
        );
        let id = ProxyId::parse("web:http").unwrap();
        assert_eq!((id.scheme.as_str(), id.port.as_str()), ("", "http"));
        assert_eq!(ProxyId::parse("web").unwrap().port, "");
        assert!(ProxyId::parse("ftp:web:21").is_none());
        assert!(ProxyId::parse("a:b:c:d").is_none());
        assert!(ProxyId::parse(":80").is_none());
    }

    #[test]
    fn paths_split_after_proxy() {
        assert_eq!(
            split_path("/api/v1/namespaces/d/pods/p:80/proxy/a/b"),
            Some(("/api/v1/namespaces/d/pods/p:80/proxy", Some("/a/b")))
        );
        assert_eq!(
            split_path("/api/v1/namespaces/d/pods/p/proxy/"),
            Some(("/api/v1/namespaces/d/pods/p/proxy", Some("/")))
        );
        assert_eq!(
            split_path("/api/v1/namespaces/d/services/s/proxy"),
            Some(("/api/v1/namespaces/d/services/s/proxy", None))
        );
        assert_eq!(split_path("/api/v1/namespaces/d/pods/p/log/x"), None);
    }

    #[test]
    fn pod_ports_resolve_by_number_name_or_first_declared() {
        let pod = json!({"status": {"podIP": "10.42.0.7"}, "spec": {"containers": [
            {"name": "a"},
            {"name": "b", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}]}]}});
        let at = |id: &str| pod_location(&pod, &ProxyId::parse(id).unwrap());
        assert_eq!(at("p").unwrap().1, Some(8080));
        assert_eq!(at("p:9090").unwrap().1, Some(9090));
        assert_eq!(at("p:http").unwrap().1, Some(8080));
        assert_eq!(at("p:nope").unwrap_err().code, 400);
        let no_ip = json!({"spec": {}});
        let e = pod_location(&no_ip, &ProxyId::parse("p").unwrap()).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (400, "address not allowed"));
    }

    #[test]
    fn service_ports_by_number_are_named() {
        let svc = json!({"spec": {"ports": [{"name": "http", "port": 80}]}});
        let name = |id: &str| service_port_name(&svc, &ProxyId::parse(id).unwrap());
        assert_eq!(name("s:80").unwrap(), "http");
        assert_eq!(name("s:http").unwrap(), "http");
        let e = name("s:81").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (503, "no service port 81 found for service \"s\"")
        );
    }
}
