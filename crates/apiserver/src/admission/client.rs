//! The HTTPS client that calls admission webhooks.
//!
//! A webhook is reached at its `clientConfig.url`, or at a Service: the
//! apiserver resolves the Service port to a Ready endpoint of the
//! Service's EndpointSlices itself (so admission does not depend on the
//! node's service proxy) and verifies the serving certificate against
//! `caBundle` for the DNS name `<service>.<namespace>.svc`. The apiserver
//! presents its client certificate (the kubelet-client one of
//! [`crate::proxy::NodeClientTls`]). Connections are kept and reused per
//! (address, server name, CA bundle).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::seq::IndexedRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::ApiState;
use crate::registry;

/// The most of a webhook's answer that is read.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Idle connections kept per target.
const MAX_IDLE: usize = 16;

/// Where a webhook is called, as its configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `clientConfig.url`.
    Url(String),
    /// `clientConfig.service`.
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The URL path (default `/`).
        path: String,
        /// The Service port (default 443).
        port: u16,
    },
}

impl Endpoint {
    /// The endpoint and decoded `caBundle` (PEM; empty for the system
    /// roots) of a webhook `clientConfig`, as admission webhooks and CRD
    /// conversion webhooks both have it (validated before it is stored).
    pub fn of_client_config(cc: &Value) -> (Endpoint, Vec<u8>) {
        use base64::Engine;
        let endpoint = match cc["url"].as_str() {
            Some(u) => Endpoint::Url(u.to_string()),
            None => Endpoint::Service {
                namespace: cc["service"]["namespace"].as_str().unwrap_or("").into(),
                name: cc["service"]["name"].as_str().unwrap_or("").into(),
                path: cc["service"]["path"].as_str().unwrap_or("/").into(),
                port: cc["service"]["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(443),
            },
        };
        let ca_bundle = cc["caBundle"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        (endpoint, ca_bundle)
    }
}

/// The certificates of a PEM bundle (none when it holds none).
pub fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// A resolved call target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address dialled.
    pub addr: SocketAddr,
    /// The name the serving certificate must carry.
    pub server_name: String,
    /// The `Host` header.
    pub host: String,
    /// Path and query of the POST.
    pub path_and_query: String,
}

impl Endpoint {
    /// The URL as upstream prints it in errors (`Post "<url>": ...`),
    /// with the `timeout` query it sends.
    pub fn url_for(&self, timeout: Duration) -> String {
        let t = timeout.as_secs();
        match self {
            Endpoint::Url(u) => format!("{u}?timeout={t}s"),
            Endpoint::Service {
                namespace,
                name,
                path,
                port,
            } => format!("https://{name}.{namespace}.svc:{port}{path}?timeout={t}s"),
        }
    }

    /// Resolves the target: the URL's host, or a Ready endpoint of the
    /// Service port.
    pub async fn resolve(&self, state: &ApiState, timeout: Duration) -> Result<Target, String> {
        let query = format!("timeout={}s", timeout.as_secs());
        match self {
            Endpoint::Url(u) => {
                let parsed = url::Url::parse(u).map_err(|e| e.to_string())?;
                let host = parsed.host_str().unwrap_or("").to_string();
                let port = parsed.port_or_known_default().unwrap_or(443);
                let bare = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let addr = tokio::net::lookup_host((bare.as_str(), port))
                    .await
                    .map_err(|e| format!("dial tcp: lookup {bare}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("dial tcp: lookup {bare}: no such host"))?;
                Ok(Target {
                    addr,
                    server_name: bare,
                    host: match parsed.port() {
                        Some(p) => format!("{host}:{p}"),
                        None => host.clone(),
                    },
                    path_and_query: format!("{}?{query}", parsed.path()),
                })
            }
            Endpoint::Service {
                namespace,
                name,
                path,
                port,
            } => {
                let addr = service_endpoint(state, namespace, name, *port).await?;
                let dns = format!("{name}.{namespace}.svc");
                Ok(Target {
                    addr,
                    host: format!("{dns}:{port}"),
                    server_name: dns,
                    path_and_query: format!("{path}?{query}"),
                })
            }
        }
    }
}

async fn read_one(
    state: &ApiState,
    rt: &'static registry::ResourceType,
    key: &str,
) -> Option<Value> {
    if let Some((obj, _)) = state.caches.running(rt).and_then(|c| c.get(key)) {
        return Some(Value::clone(&obj));
    }
    let kv = state.store.get(key).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// A Ready endpoint address of the Service port, from the Service's
/// EndpointSlices (upstream's endpoint service resolver).
async fn service_endpoint(
    state: &ApiState,
    namespace: &str,
    name: &str,
    port: u16,
) -> Result<SocketAddr, String> {
    let svc_rt = registry::find("", "v1", "services").ok_or("services are not served")?;
    let svc = read_one(state, svc_rt, &svc_rt.key(Some(namespace), name))
        .await
        .ok_or_else(|| format!("service \"{name}\" not found"))?;
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        })
        .ok_or_else(|| format!("no service port {port} found for service \"{name}\""))?;
    let port_name = svc_port["name"].as_str().unwrap_or("");
    let eps_rt = registry::find("discovery.k8s.io", "v1", "endpointslices")
        .ok_or("endpointslices are not served")?;
    let prefix = eps_rt.prefix(Some(namespace));
    let slices: Vec<Value> = match state
        .caches
        .ready(eps_rt)
        .await
        .and_then(|c| c.snapshot(&prefix))
    {
        Some(snap) => snap.objects.iter().map(|o| Value::clone(o)).collect(),
        None => state
            .store
            .list(&prefix, None, 0, 0)
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect(),
    };
    let mut ready = Vec::new();
    for s in slices
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == name)
    {
        let Some(p) = s["ports"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["name"].as_str().unwrap_or("") == port_name)
            })
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == Value::Bool(false) {
                continue;
            }
            if let Some(ip) = e["addresses"][0].as_str().and_then(|a| a.parse().ok()) {
                ready.push(SocketAddr::new(ip, p));
            }
        }
    }
    ready
        .choose(&mut rand::rng())
        .copied()
        .ok_or_else(|| format!("no endpoints available for service \"{name}\""))
}

type Sender = SendRequest<Full<Bytes>>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    server_name: String,
    ca: Vec<u8>,
    client: usize,
}

fn pool() -> &'static Mutex<HashMap<PoolKey, Vec<Sender>>> {
    static POOL: OnceLock<Mutex<HashMap<PoolKey, Vec<Sender>>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

fn tls_config(
    ca_pem: &[u8],
    client: Arc<dyn rustls::client::ResolvesClientCert>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_pem.is_empty() {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
    } else {
        for c in pem_certs(ca_pem) {
            roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(rke2_trust::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = builder.with_client_cert_resolver(client);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Go's wording of the common dial and TLS failures, so messages read as
/// upstream's (`dial tcp 127.0.0.1:1: connect: connection refused`).
fn dial_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let what = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        _ => format!("connect: {e}"),
    };
    format!("dial tcp {addr}: {what}")
}

async fn connect(target: &Target, config: Arc<rustls::ClientConfig>) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| dial_error(target.addr, &e))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(target.server_name.clone())
        .map_err(|e| format!("invalid server name {:?}: {e}", target.server_name))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// POSTs `body` to the target; answers the HTTP status and body. The
/// caller bounds the whole call with the webhook's timeout.
pub async fn post(
    state: &ApiState,
    target: &Target,
    ca_pem: &[u8],
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let resolver = state.config().node_client.client_cert_resolver();
    let key = PoolKey {
        addr: target.addr,
        server_name: target.server_name.clone(),
        ca: ca_pem.to_vec(),
        client: Arc::as_ptr(&resolver) as *const () as usize,
    };
    let reused = {
        let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
        let list = p.entry(key.clone()).or_default();
        let mut found = None;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                found = Some(s);
                break;
            }
        }
        found
    };
    let request = || {
        http::Request::post(target.path_and_query.as_str())
            .header(http::header::HOST, target.host.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, */*")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())
    };
    // A kept connection the webhook closed meanwhile (its idle timeout)
    // fails before any answer: the request goes again on a new one.
    let kept = match reused {
        Some(mut s) => match s.ready().await {
            Ok(()) => match s.send_request(request()?).await {
                Ok(resp) => Some((s, resp)),
                Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => None,
                Err(e) => return Err(e.to_string()),
            },
            Err(_) => None,
        },
        None => None,
    };
    let (sender, resp) = match kept {
        Some(x) => x,
        None => {
            let mut s = connect(target, tls_config(ca_pem, resolver)?).await?;
            s.ready().await.map_err(|e| e.to_string())?;
            let resp = s
                .send_request(request()?)
                .await
                .map_err(|e| e.to_string())?;
            (s, resp)
        }
    };
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    let list = p.entry(key).or_default();
    if list.len() < MAX_IDLE && !sender.is_closed() {
        list.push(sender);
    }
    Ok((status, bytes))
}
