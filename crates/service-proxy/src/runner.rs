//! The proxy as a node-side loop: reflectors over Services and
//! EndpointSlices (lists from the watch cache, as client-go's informers),
//! and one sync loop that turns their current state into the table.
//! Syncs are debounced (at most one per [`ProxyConfig::min_interval`], so
//! a burst of changes is one transaction and an endpoint change reaches
//! the kernel within that interval plus the sync), failed syncs are
//! retried with back-off as full syncs, and a full sync runs every
//! [`ProxyConfig::full_resync`] to repair what anything else changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::apply::Applier;
use crate::model::{self, NodeFacts};
use crate::rules;

/// How the proxy runs on this node.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This node's facts.
    pub node: NodeFacts,
    /// The least time between two syncs.
    pub min_interval: Duration,
    /// How often the whole table is rewritten even without errors.
    pub full_resync: Duration,
}

impl ProxyConfig {
    /// The defaults: syncs at most every 100 ms, a full one every hour
    /// (kube-proxy's `syncPeriod` for nftables).
    pub fn new(node: NodeFacts) -> ProxyConfig {
        ProxyConfig {
            node,
            min_interval: Duration::from_millis(100),
            full_resync: Duration::from_secs(3600),
        }
    }
}

/// Turns on IPv4 forwarding (traffic to pods and Services on other nodes
/// is routed through this host; a fresh host or network namespace has it
/// off) and makes bridged pod traffic pass the `ip` family hooks (the
/// kernel's `bridge-nf-call-iptables`), so a pod that reaches a Service
/// whose endpoint is on its own bridge gets the reply un-DNATed;
/// kube-proxy needs the same. Per network namespace; a missing file (no
/// br_netfilter) is logged.
pub fn prepare_host() {
    let forward = "/proc/sys/net/ipv4/ip_forward";
    match std::fs::read_to_string(forward) {
        Ok(v) if v.trim() == "1" => {}
        _ => {
            if let Err(e) = std::fs::write(forward, "1") {
                warn!(error = %e, "enabling net.ipv4.ip_forward; pods on other nodes may be unreachable");
            }
        }
    }
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => {
            if let Err(e) = std::fs::write(path, "1") {
                warn!(error = %e, "enabling bridge-nf-call-iptables; pods may not reach Services with endpoints on their own node");
            }
        }
        Err(e) => {
            warn!(error = %e, "br_netfilter is not available; pods may not reach Services with endpoints on their own node")
        }
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    what: &'static str,
    changed: Arc<Notify>,
    unavailable: Arc<AtomicBool>,
    stop: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).default_backoff(),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
        let mut logged = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    unavailable.store(false, Ordering::Relaxed);
                    changed.notify_one();
                }
                Err(e) => {
                    let not_served = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 404
                    );
                    if not_served && !unavailable.swap(true, Ordering::Relaxed) {
                        // Let the sync loop go on without this resource.
                        changed.notify_one();
                    }
                    if !logged {
                        warn!(resource = what, error = %e, "service proxy: watch failed; retrying with back-off (logged once)");
                        logged = true;
                    } else {
                        debug!(resource = what, error = %e, "service proxy: watch failed; retrying");
                    }
                }
            }
        }
    });
    reader
}

/// Runs the proxy until `stop`. `client` must be allowed to list and
/// watch Services and EndpointSlices (the `system:kube-proxy` identity,
/// which the bootstrap policy binds to `system:node-proxier`). The table
/// is left in place when stopping, so Services keep working across a
/// restart; `rke2 killall` removes it.
pub async fn run(client: kube::Client, cfg: ProxyConfig, stop: CancellationToken) {
    prepare_host();
    let changed = Arc::new(Notify::new());
    let services_missing = Arc::new(AtomicBool::new(false));
    let slices_missing = Arc::new(AtomicBool::new(false));
    let services: Store<Service> = spawn_reflector(
        Api::all(client.clone()),
        "services",
        changed.clone(),
        services_missing.clone(),
        &stop,
    );
    let slices: Store<EndpointSlice> = spawn_reflector(
        Api::all(client),
        "endpointslices",
        changed.clone(),
        slices_missing.clone(),
        &stop,
    );
    let mut applier = Applier::new();
    let mut last_ports: Vec<model::ServicePort> = Vec::new();
    let mut last_sync: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut retry_in = Duration::from_secs(1);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut warned_partial = false;
    loop {
        let wake = retry_at.unwrap_or_else(|| {
            tokio::time::Instant::now() + cfg.full_resync.saturating_sub(last_full.elapsed())
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        // Nothing is written before the first complete lists (a partial
        // view would reject Services whose endpoints are not in yet),
        // except that a resource the API does not serve counts as empty.
        let services_ready = services.wait_until_ready().now_or_never_ready()
            || services_missing.load(Ordering::Relaxed);
        let slices_ready = slices.wait_until_ready().now_or_never_ready()
            || slices_missing.load(Ordering::Relaxed);
        if !services_ready || !slices_ready {
            continue;
        }
        if slices_missing.load(Ordering::Relaxed) && !warned_partial {
            warn!(
                "service proxy: EndpointSlices are not served; Services are proxied without endpoints"
            );
            warned_partial = true;
        }
        if let Some(at) = last_sync {
            let since = at.elapsed();
            if since < cfg.min_interval {
                tokio::time::sleep(cfg.min_interval - since).await;
            }
        }
        let svcs = services.state();
        let eps = slices.state();
        let ports = model::build(
            svcs.iter().map(|s| s.as_ref()),
            eps.iter().map(|s| s.as_ref()),
            &cfg.node.name,
        );
        let desired = rules::generate(&cfg.node, &ports);
        if last_full.elapsed() >= cfg.full_resync {
            applier.force_full();
        }
        let (back, result) = tokio::task::spawn_blocking(move || {
            let r = applier.sync(desired);
            (applier, r)
        })
        .await
        .expect("sync task");
        applier = back;
        last_sync = Some(Instant::now());
        match result {
            Ok(report) => {
                retry_at = None;
                retry_in = Duration::from_secs(1);
                if report.full {
                    last_full = Instant::now();
                    info!(ports = ports.len(), lines = report.lines, took = ?report.took, "service proxy: full sync");
                } else {
                    debug!(ports = ports.len(), lines = report.lines, took = ?report.took, "service proxy: sync");
                }
                let stale = crate::conntrack::stale_flows(&last_ports, &ports);
                if !stale.is_empty() {
                    let errors =
                        tokio::task::spawn_blocking(move || crate::conntrack::delete(&stale))
                            .await
                            .unwrap_or_default();
                    for e in errors {
                        warn!(error = %e, "service proxy: deleting stale UDP flows");
                    }
                }
                last_ports = ports;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?retry_in, "service proxy: sync failed; the next one rewrites the whole table");
                retry_at = Some(tokio::time::Instant::now() + retry_in);
                retry_in = (retry_in * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Whether a future is ready at its first poll.
trait NowOrNever {
    fn now_or_never_ready(self) -> bool;
}

impl<F: std::future::Future> NowOrNever for F {
    fn now_or_never_ready(self) -> bool {
        futures::FutureExt::now_or_never(self).is_some()
    }
}
