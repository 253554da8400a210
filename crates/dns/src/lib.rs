//! `rke2-dns`: the cluster DNS server, run as the `rke2-coredns` addon
//! (`rke2 dns`). It serves the Kubernetes DNS-based service discovery
//! records of the cluster domain from an in-memory snapshot kept current
//! by watches of Services and EndpointSlices, and forwards every other
//! name to the upstream resolvers of a resolv.conf.
//!
//! Layers, bottom up: [`zone`] (the snapshot: names and records built
//! from API objects) → [`answer`] (one question against a snapshot:
//! records, NODATA or NXDOMAIN) → [`forward`] (upstream resolvers and
//! their cache) → [`server`] (packets in and out over UDP and TCP) →
//! [`watch`] (the API side) → [`run`] (all of it plus the health and
//! readiness endpoints). The DNS wire format is hickory-proto's.

pub mod answer;
pub mod forward;
pub mod server;
pub mod watch;
pub mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// What `rke2 dns` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where DNS is served, over UDP and TCP (`0.0.0.0:53`).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The resolv.conf whose nameservers get every other name.
    pub resolv_conf: PathBuf,
    /// Where `GET /health` answers (CoreDNS's `health`, `:8080`).
    pub health_listen: Option<SocketAddr>,
    /// Where `GET /ready` answers once the zone is synced (CoreDNS's
    /// `ready`, `:8181`).
    pub ready_listen: Option<SocketAddr>,
    /// UDP receive loops on the one socket.
    pub udp_workers: usize,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster domain is not a DNS name.
    #[error("invalid cluster domain {domain:?}: {source}")]
    Domain {
        /// The value given.
        domain: String,
        /// Why.
        source: hickory_proto::ProtoError,
    },
    /// The resolv.conf could not be used.
    #[error(transparent)]
    ResolvConf(#[from] forward::ResolvConfError),
    /// A listen address could not be bound.
    #[error("listening on {what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the DNS server until `stop`: binds every listener first (an
/// error then means nothing was started), then serves while the watches
/// fill the zone.
pub async fn run(cfg: Config, client: kube::Client, stop: CancellationToken) -> Result<(), Error> {
    let empty = zone::Zone::empty(&cfg.cluster_domain).map_err(|source| Error::Domain {
        domain: cfg.cluster_domain.clone(),
        source,
    })?;
    let mut upstreams = forward::read_upstreams(&cfg.resolv_conf)?;
    // Forwarding to ourselves would send each outside name round in a
    // loop until the forward limit refuses it (CoreDNS's `loop` plugin
    // stops the server instead).
    upstreams.retain(|u| {
        let own = *u == cfg.listen;
        if own {
            tracing::warn!(upstream = %u, "the resolv.conf names this server itself; not forwarding to it");
        }
        !own
    });
    let bind_err = |what, addr| move |source| Error::Bind { what, addr, source };
    let udp = UdpSocket::bind(cfg.listen)
        .await
        .map_err(bind_err("dns/udp", cfg.listen))?;
    let tcp = TcpListener::bind(cfg.listen)
        .await
        .map_err(bind_err("dns/tcp", cfg.listen))?;
    let mut http = Vec::new();
    for (what, addr) in [("health", cfg.health_listen), ("ready", cfg.ready_listen)] {
        if let Some(addr) = addr {
            let l = TcpListener::bind(addr)
                .await
                .map_err(bind_err(what, addr))?;
            http.push(l);
        }
    }
    tracing::info!(
        listen = %cfg.listen,
        zone = %cfg.cluster_domain,
        upstreams = ?upstreams,
        "cluster DNS serving"
    );
    let dns = Arc::new(server::Dns::new(empty, forward::Forwarder::new(upstreams)));
    watch::spawn(
        client,
        dns.clone(),
        cfg.cluster_domain.clone(),
        stop.clone(),
    );
    for l in http {
        let router = health_router(dns.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    let udp_task = tokio::spawn(server::serve_udp(
        dns.clone(),
        Arc::new(udp),
        cfg.udp_workers,
        stop.clone(),
    ));
    server::serve_tcp(dns, tcp, stop).await;
    let _ = udp_task.await;
    Ok(())
}

/// `/health` (alive: 200 `OK`) and `/ready` (200 `OK` once the zone is
/// synced from the API, else 503), as CoreDNS's plugins answer.
pub fn health_router(dns: Arc<server::Dns>) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "OK" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let dns = dns.clone();
                async move {
                    if dns.synced() {
                        (StatusCode::OK, "OK")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "zone not synced")
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests;
