//! Keeping the zone current: reflectors over Services and EndpointSlices
//! (kube-runtime watches, lists from the apiserver's watch cache), and
//! one loop that rebuilds the snapshot after changes and publishes it.
//! Queries never call the API.
//!
//! State: the loop waits until both first lists are in (the server
//! answers SERVFAIL for cluster names until then), then rebuilds after
//! every wake-up; wake-ups that arrive during a rebuild fold into one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::server::Dns;
use crate::zone::{SERVICE_NAME_LABEL, Zone};

#[derive(Default)]
struct Flags {
    services_listed: AtomicBool,
    slices_listed: AtomicBool,
    /// The apiserver has no EndpointSlice API (404): headless Services
    /// get no endpoint records, but everything else is served.
    slices_absent: AtomicBool,
}

/// Starts the watches and the rebuild loop; they run until `stop`.
pub fn spawn(client: kube::Client, dns: Arc<Dns>, domain: String, stop: CancellationToken) {
    let flags = Arc::new(Flags::default());
    let wake = Arc::new(Notify::new());

    // Only what the zone needs is kept: no managed fields, annotations or
    // other labels (1,000 Services then cost well under a megabyte).
    let services = reflect(
        Api::<Service>::all(client.clone()),
        "services",
        |s: &mut Service| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
            s.metadata.labels = None;
            s.status = None;
        },
        &stop,
        wake.clone(),
        flags.clone(),
        false,
    );
    let slices = reflect(
        Api::<EndpointSlice>::all(client),
        "endpointslices",
        |s: &mut EndpointSlice| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
            if let Some(l) = &mut s.metadata.labels {
                l.retain(|k, _| k == SERVICE_NAME_LABEL);
            }
        },
        &stop,
        wake.clone(),
        flags.clone(),
        true,
    );

    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
            }
            let services_ready = flags.services_listed.load(Ordering::Acquire);
            let slices_ready = flags.slices_listed.load(Ordering::Acquire)
                || flags.slices_absent.load(Ordering::Acquire);
            if !(services_ready && slices_ready) {
                continue;
            }
            let serial = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0);
            match Zone::build(&domain, &services.state(), &slices.state(), serial) {
                Ok(zone) => {
                    if !dns.synced() {
                        tracing::info!(names = zone.len(), "cluster zone synced");
                    }
                    dns.publish(zone);
                }
                Err(e) => tracing::error!(error = %e, "building the zone"),
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn reflect<K, F>(
    api: Api<K>,
    what: &'static str,
    trim: F,
    stop: &CancellationToken,
    wake: Arc<Notify>,
    flags: Arc<Flags>,
    slices: bool,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(&mut K) + Send + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(trim),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    if slices {
                        flags.slices_listed.store(true, Ordering::Release);
                        flags.slices_absent.store(false, Ordering::Release);
                    } else {
                        flags.services_listed.store(true, Ordering::Release);
                    }
                    wake.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => wake.notify_one(),
                Err(watcher::Error::InitialListFailed(kube::Error::Api(s)))
                    if slices && s.code == 404 =>
                {
                    if !flags.slices_absent.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            "the apiserver serves no discovery.k8s.io/v1 EndpointSlices; headless Services get no endpoint records"
                        );
                    }
                    wake.notify_one();
                }
                Err(e) => tracing::debug!(resource = what, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}
