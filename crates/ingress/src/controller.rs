//! Keeping the table current and reporting back: reflectors over
//! Ingresses, IngressClasses, Services, EndpointSlices and Secrets; one
//! loop rebuilding the table after changes (wake-ups during a rebuild
//! fold into one) and swapping it in; Warning Events for what is wrong
//! with an Ingress (once per distinct problem); and, on the replica
//! holding the election Lease, `status.loadBalancer.ingress` of every
//! Ingress of the class set to the addresses of the nodes running the
//! controller.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::routes::{Class, Inputs, Problem, Table};

/// What the controller needs besides the client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The class served.
    pub class: Class,
    /// The election Lease's name (`--election-id`).
    pub election_id: String,
    /// This replica's identity (the pod name) and namespace; status is
    /// written only when both are known.
    pub pod: Option<(String, String)>,
    /// Addresses to publish instead of the nodes' (`--publish-status-address`).
    pub publish_addresses: Vec<String>,
}

/// Set once the first table from complete lists is in place.
#[derive(Debug, Default)]
pub struct Synced(AtomicBool);

impl Synced {
    /// Whether the first complete table is serving.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Starts the watches, the rebuild loop and the status writer.
pub fn spawn(
    client: kube::Client,
    settings: Settings,
    table: Arc<ArcSwap<Table>>,
    synced: Arc<Synced>,
    stop: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let listed: Arc<[AtomicBool; 5]> = Arc::new(Default::default());
    let ingresses = reflect(
        Api::<Ingress>::all(client.clone()),
        |i: &mut Ingress| i.metadata.managed_fields = None,
        &stop,
        wake.clone(),
        listed.clone(),
        0,
    );
    let classes = reflect(
        Api::<IngressClass>::all(client.clone()),
        |c: &mut IngressClass| c.metadata.managed_fields = None,
        &stop,
        wake.clone(),
        listed.clone(),
        1,
    );
    let services = reflect(
        Api::<Service>::all(client.clone()),
        |s: &mut Service| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
            s.status = None;
        },
        &stop,
        wake.clone(),
        listed.clone(),
        2,
    );
    let slices = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        |s: &mut EndpointSlice| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
        },
        &stop,
        wake.clone(),
        listed.clone(),
        3,
    );
    // Only TLS Secrets are kept: the others are dropped as they arrive.
    let secrets = reflect(
        Api::<Secret>::all(client.clone()),
        |s: &mut Secret| {
            s.metadata.managed_fields = None;
            s.metadata.annotations = None;
            if s.type_.as_deref() != Some("kubernetes.io/tls") {
                s.data = None;
                s.string_data = None;
            }
        },
        &stop,
        wake.clone(),
        listed.clone(),
        4,
    );
    let status_wake = Arc::new(Notify::new());
    let events_api: Api<Event> = Api::all(client.clone());
    let reporter = settings
        .pod
        .as_ref()
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "rke2-ingress".into());
    let class = settings.class.clone();
    {
        let stop = stop.clone();
        let table = table.clone();
        let status_wake = status_wake.clone();
        let ingresses = ingresses.clone();
        tokio::spawn(async move {
            let mut reported: HashSet<Problem> = HashSet::new();
            let keys = crate::routes::KeyCache::default();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake.notified() => {}
                }
                if !listed.iter().all(|l| l.load(Ordering::Acquire)) {
                    continue;
                }
                let ing = ingresses.state();
                let cls = classes.state();
                let svc = services.state();
                let sl = slices.state();
                let sec = secrets.state();
                let built = Table::build(
                    &class,
                    &Inputs {
                        ingresses: &ing,
                        classes: &cls,
                        services: &svc,
                        slices: &sl,
                        secrets: &sec,
                        keys: Some(&keys),
                    },
                );
                keys.retain_used();
                let problems = built.problems.clone();
                table.store(Arc::new(built));
                if !synced.0.swap(true, Ordering::AcqRel) {
                    tracing::info!("routing table synced");
                }
                status_wake.notify_one();
                for p in &problems {
                    if reported.insert(p.clone()) {
                        tracing::warn!(ingress = %format!("{}/{}", p.namespace, p.name), reason = %p.reason, "{}", p.message);
                        let uid = ing
                            .iter()
                            .find(|i| {
                                i.metadata.namespace.as_deref() == Some(&p.namespace)
                                    && i.metadata.name.as_deref() == Some(&p.name)
                            })
                            .and_then(|i| i.metadata.uid.clone());
                        warn_event(&events_api, &reporter, p, uid).await;
                    }
                }
                // A problem fixed and back later is reported again.
                let now: HashSet<&Problem> = problems.iter().collect();
                reported.retain(|p| now.contains(p));
            }
        });
    }
    if let Some((pod, namespace)) = settings.pod.clone() {
        tokio::spawn(status_loop(
            client,
            settings,
            pod,
            namespace,
            table,
            ingresses,
            status_wake,
            stop,
        ));
    }
}

fn reflect<K, F>(
    api: Api<K>,
    trim: F,
    stop: &CancellationToken,
    wake: Arc<Notify>,
    listed: Arc<[AtomicBool; 5]>,
    index: usize,
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
                    listed[index].store(true, Ordering::Release);
                    wake.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::debug!(kind = %K::kind(&()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    reader
}

async fn warn_event(api: &Api<Event>, reporter: &str, p: &Problem, uid: Option<String>) {
    let now = Timestamp::now();
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", p.name)),
            namespace: Some(p.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            uid,
            ..Default::default()
        },
        reason: Some(p.reason.clone()),
        message: Some(p.message.clone()),
        type_: Some("Warning".into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None::<MicroTime>,
        reporting_component: Some("ingress-nginx-controller".into()),
        reporting_instance: Some(reporter.to_string()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("nginx-ingress-controller".into()),
            host: None,
        }),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(api.clone().into_client(), &p.namespace);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %e, "recording a Warning Event");
    }
}

/// How long a held election Lease lasts without renewal.
const LEASE_SECONDS: i32 = 30;

/// Holds or waits for the election Lease; the holder writes status after
/// every table swap and every renewal.
#[allow(clippy::too_many_arguments)]
async fn status_loop(
    client: kube::Client,
    settings: Settings,
    pod: String,
    namespace: String,
    table: Arc<ArcSwap<Table>>,
    ingresses: Store<Ingress>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let mut leader = false;
    loop {
        match try_lead(&leases, &settings.election_id, &pod).await {
            Ok(l) => {
                if l != leader {
                    tracing::info!(leader = l, lease = %settings.election_id, "election");
                }
                leader = l;
            }
            Err(e) => {
                tracing::debug!(error = %e, "election lease");
                leader = false;
            }
        }
        if leader {
            let addresses = if settings.publish_addresses.is_empty() {
                node_addresses(&client, &namespace, &pod).await
            } else {
                Ok(settings.publish_addresses.clone())
            };
            match addresses {
                Ok(a) => write_status(&client, &table.load(), &ingresses, &a).await,
                Err(e) => tracing::warn!(error = %e, "finding the controller's nodes"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(LEASE_SECONDS as u64 / 3)) => {}
        }
    }
}

/// Takes or renews the Lease; whether this replica holds it.
async fn try_lead(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec = |acquire: Option<Timestamp>, transitions: i32| {
        serde_json::json!({
            "holderIdentity": me,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(now),
            "acquireTime": acquire.map(MicroTime),
            "leaseTransitions": transitions,
        })
    };
    let Some(lease) = api.get_opt(name).await? else {
        let l: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": spec(Some(now), 0),
        }))
        .expect("a Lease");
        return match api.create(&PostParams::default(), &l).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let s = lease.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.clone().unwrap_or_default();
    let expired = s
        .renew_time
        .as_ref()
        .map(|t| {
            t.0.as_second() + i64::from(s.lease_duration_seconds.unwrap_or(LEASE_SECONDS))
                < now.as_second()
        })
        .unwrap_or(true);
    if holder != me && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let (acquire, transitions) = if holder == me {
        (
            s.acquire_time.map(|t| t.0),
            s.lease_transitions.unwrap_or(0),
        )
    } else {
        (Some(now), s.lease_transitions.unwrap_or(0) + 1)
    };
    let mut l = lease.clone();
    l.spec = Some(serde_json::from_value(spec(acquire, transitions)).expect("a LeaseSpec"));
    match api.replace(name, &PostParams::default(), &l).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The addresses of the nodes running a replica of this controller (its
/// pod's siblings by label): each node's ExternalIP, else InternalIP.
async fn node_addresses(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let me = pods.get(pod).await?;
    let selector = me
        .metadata
        .labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            k != "controller-revision-hash"
                && k != "pod-template-generation"
                && k != "pod-template-hash"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let siblings = pods.list(&ListParams::default().labels(&selector)).await?;
    let node_names: BTreeSet<String> = siblings
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    for n in node_names {
        let Some(node) = nodes.get_opt(&n).await? else {
            continue;
        };
        let addrs = node.status.and_then(|s| s.addresses).unwrap_or_default();
        let pick = addrs
            .iter()
            .find(|a| a.type_ == "ExternalIP")
            .or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"));
        if let Some(a) = pick {
            out.push(a.address.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn write_status(
    client: &kube::Client,
    table: &Table,
    ingresses: &Store<Ingress>,
    addresses: &[String],
) {
    let want: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| {
            if a.parse::<std::net::IpAddr>().is_ok() {
                serde_json::json!({"ip": a})
            } else {
                serde_json::json!({"hostname": a})
            }
        })
        .collect();
    let state = ingresses.state();
    let by_name: std::collections::HashMap<(&str, &str), &Ingress> = state
        .iter()
        .filter_map(|i| {
            Some((
                (
                    i.metadata.namespace.as_deref()?,
                    i.metadata.name.as_deref()?,
                ),
                &**i,
            ))
        })
        .collect();
    for (ns, name) in &table.ingresses {
        let current = by_name
            .get(&(ns.as_str(), name.as_str()))
            .and_then(|i| i.status.clone())
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .map(|v| serde_json::to_value(v).unwrap_or_default())
            .unwrap_or(serde_json::json!([]));
        if current == serde_json::Value::Array(want.clone()) {
            continue;
        }
        let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": want}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(ingress = %format!("{ns}/{name}"), addresses = ?addresses, "status updated")
            }
            Err(e) => {
                tracing::warn!(ingress = %format!("{ns}/{name}"), error = %e, "updating status")
            }
        }
    }
}
