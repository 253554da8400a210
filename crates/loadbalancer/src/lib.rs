//! The client-side load balancer of rke2 agents (DESIGN.md section 8).
//!
//! An agent reaches the apiservers and supervisors through local TCP
//! listeners (`127.0.0.1:6443` -> `ip:6443`, `127.0.0.1:6444` ->
//! `ip:9345`). The proxy is layer 4: TLS passes through untouched, so
//! clients verify the real server certificate (whose SANs include
//! `127.0.0.1`).
//!
//! What it does better than the original (whose users report a server that
//! accepts TCP but cannot serve keeping traffic for a minute, and no
//! fail-back):
//!
//! * active health checks every second per backend ([`CHECK_INTERVAL`]),
//!   each bounded by [`CHECK_TIMEOUT`]; an HTTPS check needs a verified
//!   handshake and a 2xx answer, so a hanging server counts as down;
//! * [`FAILURE_THRESHOLD`] consecutive failures mark a backend unhealthy
//!   and close every open proxied connection to it, so long-lived clients
//!   (watches) reconnect at once instead of hanging;
//! * new connections go to the first healthy backend in list order
//!   (sticky, like k3s), and go back to an earlier backend as soon as it
//!   passes one check again (fail-back);
//! * the server list is persisted, so a restart works while the
//!   registration address is down.

mod health;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::health::Prober;

/// Time between the starts of two health checks of one backend.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Upper bound of one health check (connect, handshake and answer).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed checks (or dials) that mark a backend unhealthy.
/// Two rather than one so a single lost packet does not cut every watch.
pub const FAILURE_THRESHOLD: u32 = 2;
/// Upper bound of one dial to a backend for a client connection; after it
/// the next candidate is tried within the same client connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// What to start a [`LoadBalancer`] with.
#[derive(Clone, Debug)]
pub struct LoadBalancerConfig {
    /// `"apiserver"` or `"supervisor"`; used in logs only.
    pub name: String,
    /// Where clients connect, e.g. `127.0.0.1:6443`.
    pub listen: SocketAddr,
    /// The persisted server list (JSON), written atomically with mode 0600.
    pub state_file: PathBuf,
    /// Seeds (`host:port`), e.g. from the `server` URL. They stay in the
    /// list after every [`LoadBalancer::update_servers`], after the
    /// learned servers, so they are the last resort rather than the
    /// preferred target.
    pub default_servers: Vec<String>,
    /// How backends are health-checked.
    pub health: HealthCheck,
}

/// How backends are health-checked.
#[derive(Clone, Debug)]
pub enum HealthCheck {
    /// HTTPS `GET path`; healthy means a handshake verified against
    /// `ca_pem` and a 2xx answer within [`CHECK_TIMEOUT`].
    Https {
        /// `/readyz` for apiservers, `/ping` for supervisors.
        path: String,
        /// The CA (PEM) the backends' serving certificates chain to.
        ca_pem: Vec<u8>,
        /// The name (SNI and verification) to check the certificate
        /// against. Empty: the backend's own host (IP or DNS name), which
        /// our serving certificates carry as a SAN.
        server_name: String,
    },
    /// Healthy means a TCP connect succeeds within [`CHECK_TIMEOUT`].
    /// Weaker: cannot see a server that accepts but does not serve.
    Tcp,
}

/// Why a [`LoadBalancer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The listen address could not be bound (in use, not local, ...).
    #[error("load balancer {name}: bind {addr}: {source}")]
    Bind {
        /// The balancer's name.
        name: String,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The health check's CA could not be turned into a TLS configuration.
    #[error("load balancer health check TLS configuration: {source}")]
    Tls {
        /// What was wrong with the CA.
        #[source]
        source: rke2_trust::TrustError,
    },
    /// Not called from within a tokio runtime.
    #[error("load balancer {name}: must be started inside a tokio runtime")]
    NoRuntime {
        /// The balancer's name.
        name: String,
    },
}

/// The persisted form of the server list. The field name follows k3s's
/// `*-load-balancer.json` so an operator recognises it.
#[derive(Serialize, Deserialize, Default)]
struct StateFile {
    #[serde(rename = "ServerAddresses", default)]
    server_addresses: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    // Order matters: candidates are sorted by it (healthy first, then not
    // yet checked, then known bad).
    Healthy,
    Unknown,
    Unhealthy,
}

struct Backend {
    /// Distinguishes a re-added address from its removed predecessor, so a
    /// stale checker cannot report into the new entry.
    id: u64,
    addr: String,
    health: Health,
    failures: u32,
    /// Every proxied connection to this backend waits on this token; it is
    /// cancelled (and replaced) when the backend turns unhealthy or is
    /// removed, which closes those connections.
    conns: CancellationToken,
    /// Stops this backend's health-check loop.
    checker: CancellationToken,
}

/// One entry of the ordered list a new connection tries.
struct Candidate {
    id: u64,
    addr: String,
    conns: CancellationToken,
}

struct Inner {
    name: String,
    state_file: PathBuf,
    defaults: Vec<String>,
    prober: Prober,
    runtime: Handle,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    next_id: AtomicU64,
    backends: Mutex<Vec<Backend>>,
    /// The learned list as last written to `state_file`, to skip rewriting
    /// (and fsync-ing) an unchanged list on every refresh.
    persisted: Mutex<Vec<String>>,
}

/// A running local TCP load balancer. Dropping it without
/// [`LoadBalancer::stop`] also stops it, without waiting.
pub struct LoadBalancer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl LoadBalancer {
    /// Bind `cfg.listen`, load the persisted list (falling back to
    /// `cfg.default_servers` when there is none), start a health check per
    /// backend and start accepting.
    ///
    /// Backends start "unknown": until their first check they rank after
    /// healthy ones but before unhealthy ones, so the balancer serves at
    /// once instead of waiting a check round.
    pub async fn start(cfg: LoadBalancerConfig) -> Result<LoadBalancer, LbError> {
        let runtime = Handle::try_current().map_err(|_| LbError::NoRuntime {
            name: cfg.name.clone(),
        })?;
        let prober = Prober::new(&cfg.health)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| LbError::Bind {
                name: cfg.name.clone(),
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| LbError::Bind {
            name: cfg.name.clone(),
            addr: cfg.listen,
            source,
        })?;
        let persisted = load_state(&cfg.name, &cfg.state_file);
        let inner = Arc::new(Inner {
            name: cfg.name,
            state_file: cfg.state_file,
            defaults: dedupe(cfg.default_servers),
            prober,
            runtime,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_id: AtomicU64::new(1),
            backends: Mutex::new(Vec::new()),
            persisted: Mutex::new(persisted.clone()),
        });
        inner.set_list(&persisted);
        info!(
            lb = %inner.name,
            listen = %local_addr,
            servers = ?inner.addrs(),
            "load balancer started"
        );
        let acceptor = inner.clone();
        inner.tasks.spawn(accept_loop(acceptor, listener));
        Ok(LoadBalancer { inner, local_addr })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replace the learned server list (`host:port` entries, in order of
    /// preference). The default seeds stay, after the learned servers, as
    /// in k3s. Backends already known keep their health state and
    /// connections; removed backends have their connections closed
    /// (a server leaving the cluster should not keep clients). An empty
    /// list is ignored: it is never a true picture of a running cluster
    /// and would strand the agent on the seeds.
    ///
    /// The learned list is persisted atomically (0600) when it changed;
    /// a write failure is logged, the in-memory list still changes.
    pub fn update_servers(&self, servers: Vec<String>) {
        let learned = dedupe(servers);
        if learned.is_empty() {
            debug!(lb = %self.inner.name, "ignoring an empty server list");
            return;
        }
        self.inner.set_list(&learned);
        let mut persisted = lock(&self.inner.persisted);
        if *persisted != learned {
            let state = StateFile {
                server_addresses: learned.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&state).expect("string list serialises");
            match rke2_trust::write_file_atomic(&self.inner.state_file, &bytes, 0o600) {
                Ok(()) => *persisted = learned,
                Err(e) => warn!(
                    lb = %self.inner.name,
                    file = %self.inner.state_file.display(),
                    error = %e,
                    "could not persist the server list"
                ),
            }
        }
    }

    /// Every backend in list order with whether it is healthy now
    /// (not-yet-checked backends report `false`).
    pub fn servers(&self) -> Vec<(String, bool)> {
        lock(&self.inner.backends)
            .iter()
            .map(|b| (b.addr.clone(), b.health == Health::Healthy))
            .collect()
    }

    /// The backend a new connection would try first now: the first healthy
    /// one in list order or, when none is healthy, the first one tried
    /// anyway. `None` only when the list is empty.
    pub fn active(&self) -> Option<String> {
        self.inner.candidates().into_iter().next().map(|c| c.addr)
    }

    /// Stop accepting, close every proxied connection, stop the health
    /// checks and wait until all of it has finished (the listen address is
    /// free again when this returns).
    pub async fn stop(self) {
        self.shutdown().await;
    }

    /// [`LoadBalancer::stop`] through a shared reference, for callers that
    /// keep the balancer in an `Arc` (the agent's refresh loop holds one).
    /// Idempotent; after it, the balancer accepts nothing and
    /// [`LoadBalancer::update_servers`] starts no checks.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        info!(lb = %self.inner.name, "load balancer stopped");
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        // Tasks hold `Arc<Inner>`, so without this they would run forever.
        self.inner.shutdown.cancel();
    }
}

impl Inner {
    fn addrs(&self) -> Vec<String> {
        lock(&self.backends)
            .iter()
            .map(|b| b.addr.clone())
            .collect()
    }

    /// Make the backend list `learned` followed by the default seeds.
    fn set_list(self: &Arc<Self>, learned: &[String]) {
        let mut wanted: Vec<String> = learned.to_vec();
        for d in &self.defaults {
            if !wanted.contains(d) {
                wanted.push(d.clone());
            }
        }
        let mut backends = lock(&self.backends);
        let mut old = std::mem::take(&mut *backends);
        for addr in wanted {
            if let Some(pos) = old.iter().position(|b| b.addr == addr) {
                backends.push(old.remove(pos));
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let checker = self.shutdown.child_token();
            debug!(lb = %self.name, server = %addr, "adding server");
            self.tasks.spawn_on(
                check_loop(self.clone(), id, addr.clone(), checker.clone()),
                &self.runtime,
            );
            backends.push(Backend {
                id,
                addr,
                health: Health::Unknown,
                failures: 0,
                conns: CancellationToken::new(),
                checker,
            });
        }
        for b in old {
            info!(lb = %self.name, server = %b.addr, "removing server and closing its connections");
            b.checker.cancel();
            b.conns.cancel();
        }
    }

    /// Backends in the order a new connection tries them: healthy, then
    /// unchecked, then unhealthy, each group in list order.
    fn candidates(&self) -> Vec<Candidate> {
        let backends = lock(&self.backends);
        let mut order: Vec<(Health, usize)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.health, i))
            .collect();
        order.sort();
        order
            .into_iter()
            .map(|(_, i)| Candidate {
                id: backends[i].id,
                addr: backends[i].addr.clone(),
                conns: backends[i].conns.clone(),
            })
            .collect()
    }

    /// Record the outcome of a check (or a dial). Returns false when the
    /// backend is no longer in the list.
    fn record(&self, id: u64, outcome: Result<(), String>) -> bool {
        let mut backends = lock(&self.backends);
        let Some(b) = backends.iter_mut().find(|b| b.id == id) else {
            return false;
        };
        match outcome {
            Ok(()) => {
                b.failures = 0;
                if b.health != Health::Healthy {
                    info!(lb = %self.name, server = %b.addr, "server is healthy");
                    b.health = Health::Healthy;
                }
            }
            Err(reason) => {
                b.failures = b.failures.saturating_add(1);
                debug!(lb = %self.name, server = %b.addr, failures = b.failures, %reason, "check failed");
                if b.failures >= FAILURE_THRESHOLD && b.health != Health::Unhealthy {
                    warn!(lb = %self.name, server = %b.addr, %reason, "server is unhealthy; closing its connections");
                    b.health = Health::Unhealthy;
                    // Swap in a fresh token under the lock: connections
                    // dialled from now on (the "try anyway" path when
                    // nothing is healthy) must not be cut by this event.
                    let old = std::mem::take(&mut b.conns);
                    old.cancel();
                }
            }
        }
        true
    }
}

/// Health-check one backend every [`CHECK_INTERVAL`] until removed or
/// stopped.
async fn check_loop(inner: Arc<Inner>, id: u64, addr: String, stop: CancellationToken) {
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = timeout(CHECK_TIMEOUT, inner.prober.probe(&addr)) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            },
        };
        if !inner.record(id, outcome) {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep_until(started + CHECK_INTERVAL) => {}
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                let _ = client.set_nodelay(true);
                inner.tasks.spawn(proxy(inner.clone(), client, peer));
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                warn!(lb = %inner.name, error = %e, "accept failed");
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Serve one client connection: dial the candidates in order until one
/// answers, then copy bytes both ways until either side closes, the
/// backend turns unhealthy, or the balancer stops.
async fn proxy(inner: Arc<Inner>, mut client: TcpStream, peer: SocketAddr) {
    for cand in inner.candidates() {
        let dialled = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            r = timeout(DIAL_TIMEOUT, TcpStream::connect(&cand.addr)) => r,
        };
        let mut upstream = match dialled {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(lb = %inner.name, server = %cand.addr, error = %e, "dial failed");
                inner.record(cand.id, Err(format!("dial: {e}")));
                continue;
            }
            Err(_) => {
                debug!(lb = %inner.name, server = %cand.addr, "dial timed out");
                inner.record(
                    cand.id,
                    Err(format!("dial: no answer within {DIAL_TIMEOUT:?}")),
                );
                continue;
            }
        };
        if cand.conns.is_cancelled() {
            // The backend turned unhealthy (or was removed) while we were
            // dialling; do not hand the client a connection that is about
            // to be cut.
            continue;
        }
        let _ = upstream.set_nodelay(true);
        debug!(lb = %inner.name, %peer, server = %cand.addr, "proxying");
        tokio::select! {
            _ = inner.shutdown.cancelled() => {}
            _ = cand.conns.cancelled() => {
                debug!(lb = %inner.name, %peer, server = %cand.addr, "closing connection to unhealthy server");
            }
            c = rke2_relay::splice(&mut client, &mut upstream, rke2_relay::LINGER) => {
                debug!(lb = %inner.name, %peer, server = %cand.addr, up = c.up, down = c.down, "connection ended");
            }
        }
        // Dropping both streams closes them.
        return;
    }
    warn!(lb = %inner.name, %peer, "no server reachable; closing client connection");
}

/// Read the persisted learned list; a missing or unreadable file means
/// "none" (the seeds are used), never a start failure.
fn load_state(name: &str, path: &Path) -> Vec<String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(lb = %name, file = %path.display(), error = %e, "cannot read the persisted server list");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(s) => dedupe(s.server_addresses),
        Err(e) => {
            warn!(lb = %name, file = %path.display(), error = %e, "ignoring a corrupt persisted server list");
            Vec::new()
        }
    }
}

/// Trim, drop empties and duplicates, keep the first occurrence's order.
fn dedupe(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for s in list {
        let s = s.trim().to_string();
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Lock ignoring poison: the guarded data stays consistent because no
/// critical section can panic halfway through an update we rely on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
