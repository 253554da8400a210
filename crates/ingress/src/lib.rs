//! The ingress controller of the `rke2-ingress-nginx` addon (`rke2
//! ingress-controller`): Ingress rules of its class routed to endpoint
//! addresses, on hyper and rustls, configured as ingress-nginx is.
//!
//! - [`routes`]: the immutable routing table built from the watched
//!   objects; [`annotations`]: the `nginx.ingress.kubernetes.io/` ones.
//! - [`proxy`]: the HTTP/HTTPS listeners and the forwarding (keep-alive
//!   pools, retries, upgrades); [`tls`]: certificates by SNI.
//! - [`controller`]: the watches, the table swaps, Warning Events, and
//!   the leader-elected status writer.

pub mod annotations;
pub mod controller;
pub mod proxy;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use routes::{Class, Table};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The default certificate could not be made or read.
    #[error("default certificate: {0}")]
    Tls(#[from] tls::TlsError),
    /// The `--default-ssl-certificate` Secret could not be read.
    #[error("default certificate secret {0}: {1}")]
    DefaultSecret(String, String),
}

/// The controller's settings (its flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain HTTP listener.
    pub http_listen: SocketAddr,
    /// HTTPS listener.
    pub https_listen: SocketAddr,
    /// Health endpoint (`/healthz`, 200 once the first table is in).
    pub health_listen: Option<SocketAddr>,
    /// The class served, the election Lease, the pod identity.
    pub settings: controller::Settings,
    /// `namespace/name` of the Secret holding the default certificate.
    pub default_ssl_certificate: Option<String>,
}

/// Runs the controller until `stop`.
pub async fn run(
    config: Config,
    client: kube::Client,
    stop: CancellationToken,
) -> Result<(), Error> {
    let default_key = match &config.default_ssl_certificate {
        Some(name) => {
            let (ns, n) = name.split_once('/').ok_or_else(|| {
                Error::DefaultSecret(name.clone(), "expected namespace/name".into())
            })?;
            let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(client.clone(), ns);
            let s = api
                .get(n)
                .await
                .map_err(|e| Error::DefaultSecret(name.clone(), e.to_string()))?;
            tls::certified_key_of_secret(&s)
                .map_err(|e| Error::DefaultSecret(name.clone(), e.to_string()))?
        }
        None => tls::self_signed()?,
    };
    let table = Arc::new(ArcSwap::from_pointee(Table::default()));
    let synced = Arc::new(controller::Synced::default());
    let (proxy, listeners) = bind(&config, table.clone(), default_key).await?;
    controller::spawn(
        client,
        config.settings.clone(),
        table,
        synced.clone(),
        stop.clone(),
    );
    if let Some(addr) = config.health_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        tokio::spawn(serve_health(l, synced, stop.clone()));
    }
    listeners.serve(proxy, stop).await;
    Ok(())
}

/// The bound listeners of a proxy.
pub struct Listeners {
    http: TcpListener,
    https: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("http", &self.http)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

impl Listeners {
    /// The addresses bound (tests bind port 0).
    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            self.http.local_addr().expect("bound"),
            self.https.local_addr().expect("bound"),
        )
    }

    /// Serves both listeners until `stop`.
    pub async fn serve(self, proxy: Arc<proxy::Proxy>, stop: CancellationToken) {
        let http_port = self.http.local_addr().map(|a| a.port()).unwrap_or(80);
        let https_port = self.https.local_addr().map(|a| a.port()).unwrap_or(443);
        tracing::info!(
            http = ?self.http.local_addr().ok(),
            https = ?self.https.local_addr().ok(),
            "ingress proxy serving"
        );
        tokio::join!(
            proxy::serve_http(
                self.http,
                proxy.clone(),
                proxy::Listener {
                    scheme: "http",
                    port: http_port,
                },
                stop.clone(),
            ),
            proxy::serve_https(
                self.https,
                self.acceptor,
                proxy,
                proxy::Listener {
                    scheme: "https",
                    port: https_port,
                },
                stop,
            ),
        );
    }
}

/// Binds the listeners of a proxy over `table` (the controller, tests
/// and the bench share this).
pub async fn bind(
    config: &Config,
    table: Arc<ArcSwap<Table>>,
    default_key: rustls::sign::CertifiedKey,
) -> Result<(Arc<proxy::Proxy>, Listeners), Error> {
    let resolver = Arc::new(tls::SniResolver::new(
        table.clone(),
        Arc::new(ArcSwap::from_pointee(default_key)),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver)));
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.http_listen,
            source,
        })?;
    let https = TcpListener::bind(config.https_listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.https_listen,
            source,
        })?;
    Ok((
        Arc::new(proxy::Proxy::new(table)),
        Listeners {
            http,
            https,
            acceptor,
        },
    ))
}

async fn serve_health(l: TcpListener, synced: Arc<controller::Synced>, stop: CancellationToken) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut c, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = l.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let ok = synced.get();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            let resp: &[u8] = if ok {
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\nconnection: close\r\n\r\nsyncing\n"
            };
            let _ = c.write_all(resp).await;
        });
    }
}
