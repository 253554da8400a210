//! The resource metrics server, run as `rke2 metrics-server` by the
//! `rke2-metrics-server` addon: what `kubectl top` and the HPA read.
//!
//! * [`scrape`]: every `resolution` (15 s) each Node's
//!   `/metrics/resource` on its InternalIP:10250, over TLS verified
//!   against the kubelet CA (the ServiceAccount's `ca.crt`: the cluster's
//!   server CA signs node serving certificates), with the
//!   ServiceAccount's token; nodes concurrently, each with a timeout.
//! * [`prom`] reads the Prometheus text, [`storage`] keeps the last two
//!   samples per node and container and derives usage (CPU rate over the
//!   window, newest working set) as metrics-server does.
//! * [`serve`] answers `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics:
//!   get, list, label selectors, all namespaces, Tables) over HTTPS with a
//!   self-signed certificate, authenticating the aggregator's front-proxy
//!   requests by the request-header CA of
//!   `kube-system/extension-apiserver-authentication` and authorizing the
//!   user it names with SubjectAccessReviews. [`api`] renders the objects.
//!
//! Objects are listed for their labels from reflectors over Nodes and Pods
//! trimmed to metadata and addresses; a pod is served only while it
//! exists and has figures for every container.

pub mod api;
pub mod prom;
pub mod scrape;
pub mod serve;
pub mod storage;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rke2_apimachinery::selectors::LabelSelector;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The metrics server's settings (its flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where HTTPS is served.
    pub listen: SocketAddr,
    /// How often nodes are scraped.
    pub resolution: Duration,
    /// CA that signs node serving certificates; `None` does not verify
    /// them (`--kubelet-insecure-tls`).
    pub kubelet_ca: Option<PathBuf>,
    /// Bearer token sent to nodes (re-read at each scrape); none sends none.
    pub token_file: Option<PathBuf>,
    /// Node address types, in order of preference.
    pub address_types: Vec<String>,
    /// Node API port (unless `use_node_status_port`).
    pub kubelet_port: u16,
    /// Use the port a Node publishes in `daemonEndpoints`.
    pub use_node_status_port: bool,
    /// Longest a node may take to answer.
    pub kubelet_timeout: Duration,
    /// DNS names of the self-signed serving certificate.
    pub serving_names: Vec<String>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file.
    #[error("{0}")]
    Io(String),
    /// TLS material.
    #[error("{0}")]
    Tls(String),
    /// Stopped before it could start.
    #[error("stopped")]
    Stopped,
}

/// State shared by the scraper and the request handlers.
pub struct Shared {
    storage: Mutex<storage::Storage>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    auth: serve::Auth,
    ready: AtomicBool,
}

fn labels_value(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<Value> {
    labels.map(|l| serde_json::to_value(l).unwrap_or_default())
}

impl Shared {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// NodeMetrics: node `name`'s (`Err(name)` when it has none) or a
    /// list of those matching `selector`.
    fn node_metrics(
        &self,
        name: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> Result<Value, String> {
        let st = self.storage.lock().unwrap_or_else(|e| e.into_inner());
        let one = |n: &Node| -> Option<Value> {
            let name = n.metadata.name.as_deref()?;
            let u = st.node(name)?;
            Some(api::node_metrics(
                name,
                labels_value(n.metadata.labels.as_ref()).as_ref(),
                &u,
            ))
        };
        if let Some(name) = name {
            let node = self
                .nodes
                .get(&reflector::ObjectRef::new(name))
                .ok_or_else(|| name.to_string())?;
            return one(&node).ok_or_else(|| name.to_string());
        }
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let items = nodes
            .iter()
            .filter(|n| {
                selector.is_none_or(|s| s.matches(&n.metadata.labels.clone().unwrap_or_default()))
            })
            .filter_map(|n| one(n))
            .collect();
        Ok(api::list("NodeMetricsList", items))
    }

    /// PodMetrics: pod `ns/name`'s, or a list (of namespace `ns`, or all)
    /// matching `selector`.
    fn pod_metrics(
        &self,
        ns: Option<&str>,
        name: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> Result<Value, String> {
        let st = self.storage.lock().unwrap_or_else(|e| e.into_inner());
        let one = |p: &Pod| -> Option<Value> {
            let pns = p.metadata.namespace.as_deref()?;
            let pname = p.metadata.name.as_deref()?;
            let cs = st.pod(&(pns.to_string(), pname.to_string()))?;
            Some(api::pod_metrics(
                pns,
                pname,
                labels_value(p.metadata.labels.as_ref()).as_ref(),
                &cs,
            ))
        };
        if let (Some(ns), Some(name)) = (ns, name) {
            let pod = self
                .pods
                .get(&reflector::ObjectRef::new(name).within(ns))
                .ok_or_else(|| name.to_string())?;
            return one(&pod).ok_or_else(|| name.to_string());
        }
        let mut pods = self.pods.state();
        pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let items = pods
            .iter()
            .filter(|p| ns.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)))
            .filter(|p| {
                selector.is_none_or(|s| s.matches(&p.metadata.labels.clone().unwrap_or_default()))
            })
            .filter_map(|p| one(p))
            .collect();
        Ok(api::list("PodMetricsList", items))
    }
}

const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

/// How often `extension-apiserver-authentication` is read again.
const TRUST_REFRESH: Duration = Duration::from_secs(60);

/// The serving certificate and key (PEM).
struct Serving {
    cert_pem: String,
    key_pem: String,
}

/// Builds the [`serve::Trust`] of the ConfigMap's `data`; `Err` names
/// what is missing or bad.
fn build_trust(serving: &Serving, data: BTreeMap<String, String>) -> Result<serve::Trust, String> {
    let request_header = serve::RequestHeader::from_configmap(&data)?;
    let client_ca = data.get("client-ca-file").cloned().unwrap_or_default();
    let mut client_cas = String::new();
    for der in &request_header.ca_ders {
        client_cas.push_str(&pem_of(der));
    }
    client_cas.push_str(&client_ca);
    let client_ca_ders: Vec<Vec<u8>> = if client_ca.trim().is_empty() {
        Vec::new()
    } else {
        rke2_trust::parse_certs(client_ca.as_bytes())
            .map_err(|e| format!("client-ca-file: {e}"))?
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect()
    };
    let tls = rke2_trust::server_tls_config(
        serving.cert_pem.as_bytes(),
        serving.key_pem.as_bytes(),
        Some(client_cas.as_bytes()),
    )
    .map_err(|e| format!("serving TLS: {e}"))?;
    Ok(serve::Trust {
        request_header,
        client_ca_ders,
        tls,
        source: data,
    })
}

/// Reads `extension-apiserver-authentication` until it yields a
/// [`serve::Trust`].
async fn first_trust(
    client: &kube::Client,
    serving: &Serving,
    stop: &CancellationToken,
) -> Result<serve::Trust, Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let mut logged = false;
    loop {
        let why = match cms.get(AUTH_CONFIGMAP).await {
            Ok(cm) => match build_trust(serving, cm.data.unwrap_or_default()) {
                Ok(t) => return Ok(t),
                Err(e) => format!("kube-system/{AUTH_CONFIGMAP}: {e}"),
            },
            Err(e) => format!("reading kube-system/{AUTH_CONFIGMAP}: {e}"),
        };
        if !logged {
            warn!("{why}; retrying");
            logged = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(Error::Stopped),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Re-reads `extension-apiserver-authentication` every
/// [`TRUST_REFRESH`] and swaps in a new [`serve::Trust`] when its data
/// changed (CA rotation); a bad new version is logged and the old kept.
async fn refresh_trust(
    client: kube::Client,
    shared: Arc<Shared>,
    serving: Serving,
    stop: CancellationToken,
) {
    let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRUST_REFRESH) => {}
        }
        let data = match cms.get(AUTH_CONFIGMAP).await {
            Ok(cm) => cm.data.unwrap_or_default(),
            Err(e) => {
                debug!(error = %e, "reading kube-system/{AUTH_CONFIGMAP}");
                continue;
            }
        };
        if shared.auth.trust.load().source == data {
            continue;
        }
        match build_trust(&serving, data) {
            Ok(t) => {
                info!("kube-system/{AUTH_CONFIGMAP} changed: client trust reloaded");
                shared.auth.trust.store(Arc::new(t));
            }
            Err(e) => warn!(
                "kube-system/{AUTH_CONFIGMAP} changed but is not usable, keeping the previous trust: {e}"
            ),
        }
    }
}

/// Runs the metrics server until `stop`.
pub async fn run(cfg: Config, client: kube::Client, stop: CancellationToken) -> Result<(), Error> {
    let kubelet_tls = match &cfg.kubelet_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Io(format!("reading the kubelet CA {}: {e}", path.display()))
            })?;
            rke2_trust::client_tls_config(&pem, None)
                .map_err(|e| Error::Tls(format!("kubelet CA {}: {e}", path.display())))?
        }
        None => {
            warn!("--kubelet-insecure-tls: node serving certificates are not verified");
            scrape::insecure_tls()
        }
    };

    // The serving certificate: self-signed, as metrics-server's
    // `--cert-dir` default (the APIService skips verification).
    let cert = rcgen::generate_simple_self_signed(cfg.serving_names.clone())
        .map_err(|e| Error::Tls(format!("self-signed serving certificate: {e}")))?;
    let serving = Serving {
        cert_pem: cert.cert.pem(),
        key_pem: cert.signing_key.serialize_pem(),
    };
    let trust = first_trust(&client, &serving, &stop).await?;

    // Reflectors trimmed to what is served: names, labels, addresses.
    let (nodes, node_writer) = reflector::store();
    let node_stream = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).modify(
            |n: &mut Node| {
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
                n.spec = None;
                if let Some(s) = n.status.as_mut() {
                    s.images = None;
                    s.conditions = None;
                    s.capacity = None;
                    s.allocatable = None;
                    s.node_info = None;
                }
            },
        ),
    );
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).modify(
            |p: &mut Pod| {
                p.metadata.managed_fields = None;
                p.metadata.annotations = None;
                p.metadata.owner_references = None;
                p.spec = None;
                p.status = None;
            },
        ),
    );
    for (what, stream) in [
        ("nodes", node_stream.map(|r| r.map(|_| ())).boxed()),
        ("pods", pod_stream.map(|r| r.map(|_| ())).boxed()),
    ] {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    next = stream.next() => match next {
                        None => return,
                        Some(Err(e)) => debug!(error = %e, "watching {what}"),
                        Some(Ok(())) => {}
                    }
                }
            }
        });
    }

    let shared = Arc::new(Shared {
        storage: Mutex::new(storage::Storage::new(cfg.resolution)),
        nodes: nodes.clone(),
        pods,
        auth: serve::Auth::new(client.clone(), trust),
        ready: AtomicBool::new(false),
    });
    let scraper = scrape::Scraper::new(
        kubelet_tls,
        cfg.token_file.clone(),
        cfg.address_types.clone(),
        cfg.kubelet_port,
        cfg.use_node_status_port,
        cfg.kubelet_timeout,
    );
    tokio::spawn(scrape_loop(
        shared.clone(),
        scraper,
        cfg.resolution,
        stop.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Io(format!("listening on {}: {e}", cfg.listen)))?;
    info!(listen = %cfg.listen, resolution = ?cfg.resolution, "metrics server serving metrics.k8s.io/v1beta1");
    tokio::spawn(refresh_trust(client, shared.clone(), serving, stop.clone()));
    serve_tls(listener, shared, stop).await;
    Ok(())
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

async fn scrape_loop(
    shared: Arc<Shared>,
    scraper: scrape::Scraper,
    resolution: Duration,
    stop: CancellationToken,
) {
    // The node list must be in before the first round.
    tokio::select! {
        _ = stop.cancelled() => return,
        r = shared.nodes.wait_until_ready() => if r.is_err() { return },
    }
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nodes = shared.nodes.state();
        let rounds = nodes.iter().map(|n| {
            let scraper = scraper.clone();
            let n = n.clone();
            async move {
                let name = n.metadata.name.clone().unwrap_or_default();
                let result = async {
                    let (host, port) = scraper.address(&n).map_err(|e| e.to_string())?;
                    let text = scraper
                        .get(&host, port, "/metrics/resource")
                        .await
                        .map_err(|e| e.to_string())?;
                    let samples = prom::parse(&text, |name| {
                        name.starts_with("node_") || name.starts_with("container_")
                    })
                    .map_err(|e| format!("parsing /metrics/resource: {e}"))?;
                    Ok::<_, String>(storage::decode(&samples))
                }
                .await;
                (name, result)
            }
        });
        let results = futures::future::join_all(rounds).await;
        let mut st = shared.storage.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        st.retain_nodes(|n| names.iter().any(|m| m == n));
        let mut ok = 0;
        for (name, r) in results {
            match r {
                Ok(scrape) => {
                    st.store(&name, scrape);
                    ok += 1;
                }
                Err(e) => {
                    warn!(node = %name, error = %e, "scraping the node failed");
                    st.forget(&name);
                }
            }
        }
        drop(st);
        debug!(nodes = names.len(), ok, "scrape round done");
        shared.ready.store(true, Ordering::Relaxed);
    }
}

/// Serves HTTPS until `stop`; the client certificate, when one was
/// presented (and verified), rides in each request's extensions.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The trust of the moment: a reload applies to new connections.
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.auth.trust.load().tls.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| serve::ClientCert(c.as_ref().to_vec()));
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    if let Some(c) = &cert {
                        req.extensions_mut().insert(c.clone());
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            serve::handle(shared, req.map(axum::body::Body::new)).await,
                        )
                    }
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_from_the_authentication_configmap() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = |n: &str| {
            rke2_trust::CertAuthority::ensure(
                &dir.path().join(format!("{n}.crt")),
                &dir.path().join(format!("{n}.key")),
                n,
            )
            .unwrap()
        };
        let (rh, client) = (ca("rh"), ca("client"));
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let serving = Serving {
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
        };
        let mut data: BTreeMap<String, String> = [
            ("client-ca-file", client.cert_pem.clone()),
            ("requestheader-client-ca-file", rh.cert_pem.clone()),
            (
                "requestheader-allowed-names",
                "[\"system:auth-proxy\"]".into(),
            ),
            (
                "requestheader-username-headers",
                "[\"X-Remote-User\"]".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t = build_trust(&serving, data.clone()).unwrap();
        assert_eq!(t.request_header.allowed_names, ["system:auth-proxy"]);
        assert_eq!(t.client_ca_ders.len(), 1);
        assert_eq!(t.source, data);
        data.insert("client-ca-file".into(), "not a certificate".into());
        let e = build_trust(&serving, data.clone()).err().unwrap();
        assert!(e.contains("client-ca-file"), "{e}");
        // None at all: front-proxy requests only.
        data.insert("client-ca-file".into(), String::new());
        assert!(
            build_trust(&serving, data.clone())
                .unwrap()
                .client_ca_ders
                .is_empty()
        );
        data.remove("requestheader-client-ca-file");
        let e = build_trust(&serving, data).err().unwrap();
        assert!(e.contains("requestheader-client-ca-file"), "{e}");
    }
}
