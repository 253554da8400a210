//! The EndpointSlice and Endpoints controllers (kube-controller-manager's
//! `endpointslice` and `endpoint` controllers), sharing one set of
//! informers as kube-controller-manager's controllers share theirs, each
//! writing under its own identity (`endpointslice-controller`,
//! `endpoint-controller`).
//!
//! For every Service with a selector (not ExternalName) they keep the
//! Service's EndpointSlices ([`slices::plan`]) and its core/v1 Endpoints
//! ([`legacy::desired`]) in step with the pods the selector matches.
//!
//! Incremental: the informers feed one index — pods by namespace, and for
//! each pod the Services that selected it at its last event — so a pod
//! event queues only the Services that select it before or after the
//! change, and only when something an endpoint shows changed (addresses,
//! readiness, deletion, labels, node, hostname, ports); a sync computes
//! from the index and writes only the objects whose content differs, so a
//! steady state writes nothing. The controllers' own writes go into the
//! index at once (by resourceVersion: an older event never overwrites a
//! newer copy), so the next sync never works from a copy older than what
//! it wrote; the watch's echo of a write is recognised by its
//! resourceVersion and queues nothing. Slices are removed with their
//! Service by the garbage collector (owner reference), Endpoints by this
//! controller.

pub mod legacy;
pub mod pods;
pub mod slices;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PartialObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct EndpointsConfig {
    /// `--max-endpoints-per-slice` (upstream's default 100).
    pub max_endpoints_per_slice: usize,
    /// Services synced at once (upstream's `--concurrent-service-endpoint-syncs`
    /// and `--concurrent-endpoint-syncs`, 5).
    pub workers: usize,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        Self {
            max_endpoints_per_slice: slices::MAX_ENDPOINTS_PER_SLICE,
            workers: 5,
        }
    }
}

/// The API clients of the two controllers.
#[derive(Clone)]
pub struct EndpointsClients {
    /// `kube-system:endpointslice-controller`: reads the informers' types
    /// and writes EndpointSlices.
    pub slices: kube::Client,
    /// `kube-system:endpoint-controller`: writes Endpoints.
    pub endpoints: kube::Client,
}

/// Which informers have delivered their first full list.
const SYNCED_ALL: u8 = 0b11111;
const SYNCED_PODS: u8 = 1;
const SYNCED_SERVICES: u8 = 2;
const SYNCED_NODES: u8 = 4;
const SYNCED_SLICES: u8 = 8;
const SYNCED_ENDPOINTS: u8 = 16;

/// The controllers' view of the cluster, kept by the informers.
#[derive(Default)]
struct Index {
    services: HashMap<String, Arc<Service>>,
    services_by_ns: HashMap<String, BTreeSet<String>>,
    /// Pods by namespace, then name.
    pods: HashMap<String, BTreeMap<String, Arc<Pod>>>,
    /// For each pod (`ns/name`), the Services (`ns/name`) that selected
    /// it at its last event.
    pod_services: HashMap<String, BTreeSet<String>>,
    /// Node zones (`topology.kubernetes.io/zone`).
    zones: HashMap<String, String>,
    /// Managed slices by Service (`ns/name`), then slice name.
    slices: HashMap<String, BTreeMap<String, Arc<EndpointSlice>>>,
    endpoints: HashMap<String, Arc<Endpoints>>,
    synced: u8,
    /// Last-change trigger times seen, by Service.
    triggers: HashMap<String, TriggerState>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    crate::namespaced_name(meta)
}

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The facts of a pod that an endpoint shows: a pod event that changes
/// none of them (a status heartbeat, an annotation) queues nothing.
fn pod_facts(pod: &Pod) -> serde_json::Value {
    let spec = pod.spec.as_ref();
    let ports: Vec<_> = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.name.clone(), p.container_port, p.protocol.clone()))
        .collect();
    serde_json::json!([
        pod.metadata.labels,
        pods::ips(pod),
        pods::is_ready(pod),
        pods::ready_transition(pod).map(|t| t.to_string()),
        pod.metadata.deletion_timestamp.is_some(),
        pod.status.as_ref().and_then(|s| s.phase.clone()),
        spec.and_then(|s| s.node_name.clone()),
        spec.and_then(|s| s.hostname.clone()),
        spec.and_then(|s| s.subdomain.clone()),
        ports,
    ])
}

impl Index {
    /// The Services of a namespace whose selector matches a pod.
    fn selecting(&self, pod: &Pod) -> BTreeSet<String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        self.services_by_ns
            .get(&ns)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let key = format!("{ns}/{name}");
                let svc = self.services.get(&key)?;
                pods::selector(svc)
                    .filter(|sel| pods::selects(sel, pod))
                    .map(|_| key)
            })
            .collect()
    }

    fn apply_pod(&mut self, pod: Pod, queue: &mut Vec<String>) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let in_ns = self.pods.entry(ns).or_default();
        let old = in_ns.get(&name).cloned();
        if old
            .as_ref()
            .is_some_and(|o| rv(&o.metadata) > rv(&pod.metadata))
        {
            return;
        }
        let changed = old.as_ref().is_none_or(|o| pod_facts(o) != pod_facts(&pod));
        let now = self.selecting(&pod);
        self.pods
            .get_mut(pod.metadata.namespace.as_deref().unwrap_or(""))
            .expect("inserted above")
            .insert(name, Arc::new(pod));
        let before = self.pod_services.remove(&key).unwrap_or_default();
        if changed || before != now {
            queue.extend(before.union(&now).cloned());
        }
        if !now.is_empty() {
            self.pod_services.insert(key, now);
        }
    }

    fn delete_pod(&mut self, pod: &Pod, queue: &mut Vec<String>) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some(m) = self.pods.get_mut(&ns) {
            m.remove(&name);
            if m.is_empty() {
                self.pods.remove(&ns);
            }
        }
        queue.extend(
            self.pod_services
                .remove(&format!("{ns}/{name}"))
                .unwrap_or_default(),
        );
    }

    /// Re-evaluates which pods of the namespace one Service selects.
    fn reselect(&mut self, ns: &str, key: &str) {
        let selector = self
            .services
            .get(key)
            .and_then(|s| pods::selector(s).cloned());
        for (name, pod) in self.pods.get(ns).into_iter().flatten() {
            let pk = format!("{ns}/{name}");
            let selects = selector.as_ref().is_some_and(|s| pods::selects(s, pod));
            if selects {
                self.pod_services
                    .entry(pk)
                    .or_default()
                    .insert(key.to_string());
            } else if let Some(set) = self.pod_services.get_mut(&pk) {
                set.remove(key);
                if set.is_empty() {
                    self.pod_services.remove(&pk);
                }
            }
        }
    }

    fn apply_service(&mut self, svc: Service, queue: &mut Vec<String>) {
        let key = key_of(&svc.metadata);
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let old = self.services.get(&key).cloned();
        if old
            .as_ref()
            .is_some_and(|o| rv(&o.metadata) > rv(&svc.metadata))
        {
            return;
        }
        let selector_changed =
            old.as_ref().map(|o| pods::selector(o).cloned()) != Some(pods::selector(&svc).cloned());
        self.services_by_ns
            .entry(ns.clone())
            .or_default()
            .insert(svc.metadata.name.clone().unwrap_or_default());
        self.services.insert(key.clone(), Arc::new(svc));
        if selector_changed {
            self.reselect(&ns, &key);
        }
        queue.push(key);
    }

    fn delete_service(&mut self, svc: &Service, queue: &mut Vec<String>) {
        let key = key_of(&svc.metadata);
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        self.services.remove(&key);
        if let Some(set) = self.services_by_ns.get_mut(&ns) {
            set.remove(svc.metadata.name.as_deref().unwrap_or(""));
        }
        self.reselect(&ns, &key);
        queue.push(key);
    }

    fn apply_node(&mut self, node: &PartialObjectMeta<Node>, queue: &mut Vec<String>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(slices::ZONE_LABEL))
            .cloned();
        if self.zones.get(&name) == zone.as_ref() {
            return;
        }
        match zone {
            Some(z) => self.zones.insert(name.clone(), z),
            None => self.zones.remove(&name),
        };
        // A zone changes rarely: requeue the Services of the node's pods.
        for (ns, in_ns) in &self.pods {
            for (pod_name, pod) in in_ns {
                if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()) {
                    queue.extend(
                        self.pod_services
                            .get(&format!("{ns}/{pod_name}"))
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                }
            }
        }
    }

    fn slice_service(slice: &EndpointSlice) -> String {
        format!(
            "{}/{}",
            slice.metadata.namespace.as_deref().unwrap_or(""),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(slices::SERVICE_NAME_LABEL))
                .map(String::as_str)
                .unwrap_or("")
        )
    }

    /// Records a slice (from the watch or from a write); whether it is
    /// news (not older than or equal to the copy held).
    fn put_slice(&mut self, slice: EndpointSlice) -> Option<String> {
        let svc = Self::slice_service(&slice);
        let name = slice.metadata.name.clone().unwrap_or_default();
        let held = self.slices.entry(svc.clone()).or_default();
        if held
            .get(&name)
            .is_some_and(|o| rv(&o.metadata) >= rv(&slice.metadata))
        {
            return None;
        }
        held.insert(name, Arc::new(slice));
        Some(svc)
    }

    fn drop_slice(&mut self, svc: &str, name: &str) -> bool {
        let Some(held) = self.slices.get_mut(svc) else {
            return false;
        };
        let found = held.remove(name).is_some();
        if held.is_empty() {
            self.slices.remove(svc);
        }
        found
    }

    fn put_endpoints(&mut self, ep: Endpoints) -> Option<String> {
        let key = key_of(&ep.metadata);
        if self
            .endpoints
            .get(&key)
            .is_some_and(|o| rv(&o.metadata) >= rv(&ep.metadata))
        {
            return None;
        }
        self.endpoints.insert(key.clone(), Arc::new(ep));
        Some(key)
    }

    fn all_services(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }
}

/// The work queue: Service keys, each at most once, and the signal.
#[derive(Default)]
struct Queue {
    pending: Mutex<BTreeSet<String>>,
    ready: Notify,
}

impl Queue {
    /// Queues `keys` and wakes the dispatcher — also when they were all
    /// queued already: keys queued before the informers had all listed
    /// are still waiting, and the last list must wake them.
    fn add(&self, keys: impl IntoIterator<Item = String>) {
        let mut p = self.pending.lock().expect("queue lock");
        let mut any = false;
        for k in keys {
            p.insert(k);
            any = true;
        }
        if any {
            self.ready.notify_one();
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().expect("queue lock"))
            .into_iter()
            .collect()
    }
}

struct Shared {
    index: Mutex<Index>,
    queue: Queue,
    clients: EndpointsClients,
    config: EndpointsConfig,
}

/// A change an informer saw.
enum Change<K> {
    Applied(K),
    Deleted(K),
    /// A full (re)list: everything there is now.
    Listed(Vec<K>),
}

/// Feeds one watch stream into the index until `stop`.
async fn consume<K, S>(
    stream: S,
    what: &'static str,
    bit: u8,
    shared: Arc<Shared>,
    stop: CancellationToken,
    apply: fn(&mut Index, Change<K>, &mut Vec<String>),
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
    let mut listing: Vec<K> = Vec::new();
    while let Some(ev) = stream.next().await {
        let change = match ev {
            Ok(watcher::Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(k)) => {
                listing.push(k);
                continue;
            }
            Ok(watcher::Event::InitDone) => Change::Listed(std::mem::take(&mut listing)),
            Ok(watcher::Event::Apply(k)) => Change::Applied(k),
            Ok(watcher::Event::Delete(k)) => Change::Deleted(k),
            Err(e) => {
                debug!(resource = what, error = %e, "watch failed; retrying");
                continue;
            }
        };
        let mut queue = Vec::new();
        {
            let mut index = shared.index.lock().expect("index lock");
            let listed = matches!(change, Change::Listed(_));
            apply(&mut index, change, &mut queue);
            if listed {
                index.synced |= bit;
                // After a (re)list, everything is checked again, as an
                // informer's resync would.
                queue = index.all_services();
            }
        }
        shared.queue.add(queue);
    }
}

fn on_pod(ix: &mut Index, c: Change<Pod>, q: &mut Vec<String>) {
    match c {
        Change::Applied(p) => ix.apply_pod(p, q),
        Change::Deleted(p) => ix.delete_pod(&p, q),
        Change::Listed(all) => {
            ix.pods.clear();
            ix.pod_services.clear();
            for p in all {
                ix.apply_pod(p, q);
            }
        }
    }
}

fn on_service(ix: &mut Index, c: Change<Service>, q: &mut Vec<String>) {
    match c {
        Change::Applied(s) => ix.apply_service(s, q),
        Change::Deleted(s) => ix.delete_service(&s, q),
        Change::Listed(all) => {
            let gone: Vec<Arc<Service>> = ix.services.values().cloned().collect();
            for s in gone {
                ix.delete_service(&s, q);
            }
            for s in all {
                ix.apply_service(s, q);
            }
        }
    }
}

fn on_node(ix: &mut Index, c: Change<PartialObjectMeta<Node>>, q: &mut Vec<String>) {
    match c {
        Change::Applied(n) => ix.apply_node(&n, q),
        Change::Deleted(n) => {
            ix.zones.remove(n.metadata.name.as_deref().unwrap_or(""));
        }
        Change::Listed(all) => {
            ix.zones.clear();
            for n in all {
                ix.apply_node(&n, q);
            }
        }
    }
}

fn on_slice(ix: &mut Index, c: Change<EndpointSlice>, q: &mut Vec<String>) {
    match c {
        Change::Applied(s) => q.extend(ix.put_slice(s)),
        Change::Deleted(s) => {
            let svc = Index::slice_service(&s);
            if ix.drop_slice(&svc, s.metadata.name.as_deref().unwrap_or("")) {
                q.push(svc);
            }
        }
        Change::Listed(all) => {
            ix.slices.clear();
            for s in all {
                ix.put_slice(s);
            }
        }
    }
}

/// Endpoints changes queue their Service only when it exists: an
/// Endpoints object without a Service is the user's (upstream deletes one
/// only when its Service goes).
fn on_endpoints(ix: &mut Index, c: Change<Endpoints>, q: &mut Vec<String>) {
    match c {
        Change::Applied(e) => {
            if let Some(key) = ix.put_endpoints(e)
                && ix.services.contains_key(&key)
            {
                q.push(key);
            }
        }
        Change::Deleted(e) => {
            let key = key_of(&e.metadata);
            if ix.endpoints.remove(&key).is_some() && ix.services.contains_key(&key) {
                q.push(key);
            }
        }
        Change::Listed(all) => {
            ix.endpoints.clear();
            for e in all {
                ix.put_endpoints(e);
            }
        }
    }
}

/// upstream's `TriggerTimeTracker` state for one Service.
#[derive(Debug, Default, Clone)]
struct TriggerState {
    pods: HashMap<String, Timestamp>,
    service: Option<Timestamp>,
}

/// The `last-change-trigger-time` of a sync (upstream's
/// `ComputeEndpointLastChangeTriggerTime`): the earliest of the pods'
/// Ready transitions and the Service's creation that are newer than at
/// the previous sync; none on the first sync of a Service.
fn trigger_time(
    states: &mut HashMap<String, TriggerState>,
    key: &str,
    svc: &Service,
    selected: &[&Pod],
) -> Option<Timestamp> {
    let known = states.contains_key(key);
    let state = states.entry(key.to_string()).or_default();
    let mut min: Option<Timestamp> = None;
    let mut earliest = |t: Timestamp| min = Some(min.map_or(t, |m| m.min(t)));
    let mut seen = HashMap::new();
    for pod in selected {
        let Some(t) = pods::ready_transition(pod) else {
            continue;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        if state.pods.get(&name).is_none_or(|old| t > *old) {
            earliest(t);
        }
        seen.insert(name, t);
    }
    let created = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if let Some(c) = created
        && state.service.is_none_or(|old| c > old)
    {
        earliest(c);
    }
    state.pods = seen;
    state.service = created;
    if known { min } else { None }
}

/// What a sync reads from the index.
struct Snapshot {
    svc: Option<Arc<Service>>,
    pods: Vec<Arc<Pod>>,
    zones: HashMap<String, String>,
    slices: Vec<Arc<EndpointSlice>>,
    endpoints: Option<Arc<Endpoints>>,
    trigger: Option<Timestamp>,
}

fn snapshot(shared: &Shared, key: &str) -> Snapshot {
    let mut ix = shared.index.lock().expect("index lock");
    let svc = ix.services.get(key).cloned();
    let ns = key.split('/').next().unwrap_or("");
    let pods: Vec<Arc<Pod>> = match svc.as_deref().and_then(pods::selector) {
        Some(sel) => ix
            .pods
            .get(ns)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|p| pods::selects(sel, p))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let zones = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter_map(|n| ix.zones.get(&n).map(|z| (n, z.clone())))
        .collect();
    let slices = ix
        .slices
        .get(key)
        .into_iter()
        .flat_map(|m| m.values().cloned())
        .collect();
    let endpoints = ix.endpoints.get(key).cloned();
    let trigger = match &svc {
        Some(s) if pods::selector(s).is_some() => {
            let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
            let mut states = std::mem::take(&mut ix.triggers);
            let t = trigger_time(&mut states, key, s, &refs);
            ix.triggers = states;
            t
        }
        _ => {
            ix.triggers.remove(key);
            None
        }
    };
    Snapshot {
        svc,
        pods,
        zones,
        slices,
        endpoints,
        trigger,
    }
}

/// Brings one Service's slices and Endpoints to the desired state.
async fn sync(shared: &Shared, key: &str) -> Result<(), kube::Error> {
    let snap = snapshot(shared, key);
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(svc) = snap.svc else {
        // The Service is gone (only its deletion and its pods queue a
        // missing Service): its slices go with it (owner reference); its
        // Endpoints are this controller's to delete, as upstream's.
        if snap.endpoints.is_some() {
            let api: Api<Endpoints> = Api::namespaced(shared.clients.endpoints.clone(), ns);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            shared
                .index
                .lock()
                .expect("index lock")
                .endpoints
                .remove(key);
        }
        return Ok(());
    };
    if pods::selector(&svc).is_none() {
        // Without a selector the endpoints are the user's to write.
        return Ok(());
    }
    let pods: Vec<&Pod> = snap.pods.iter().map(|p| p.as_ref()).collect();
    let trigger = snap.trigger.map(|t| t.to_string());
    let zone = |node: &str| snap.zones.get(node).cloned();
    let existing: Vec<&EndpointSlice> = snap.slices.iter().map(|s| s.as_ref()).collect();
    let plan = slices::plan(
        &svc,
        &existing,
        &slices::Inputs {
            pods: &pods,
            zone: &zone,
            max_endpoints_per_slice: shared.config.max_endpoints_per_slice,
            trigger_time: trigger.clone(),
        },
    );
    let slice_api: Api<EndpointSlice> = Api::namespaced(shared.clients.slices.clone(), ns);
    let pp = PostParams::default();
    // Creates first, then updates, then deletes: the Service's endpoints
    // are never momentarily missing.
    for s in &plan.create {
        let made = slice_api.create(&pp, s).await?;
        shared.index.lock().expect("index lock").put_slice(made);
    }
    for s in &plan.update {
        let name = s.metadata.name.clone().unwrap_or_default();
        let written = slice_api.replace(&name, &pp, s).await?;
        shared.index.lock().expect("index lock").put_slice(written);
    }
    for gone in &plan.delete {
        match slice_api.delete(gone, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        shared
            .index
            .lock()
            .expect("index lock")
            .drop_slice(key, gone);
    }
    if !plan.is_empty() {
        debug!(
            service = key,
            created = plan.create.len(),
            updated = plan.update.len(),
            deleted = plan.delete.len(),
            "endpoint slices written"
        );
    }
    if let Some(ep) = legacy::desired(&svc, &pods, snap.endpoints.as_deref(), trigger.as_deref()) {
        let api: Api<Endpoints> = Api::namespaced(shared.clients.endpoints.clone(), ns);
        let written = if snap.endpoints.is_some() {
            api.replace(name, &pp, &ep).await?
        } else {
            api.create(&pp, &ep).await?
        };
        shared
            .index
            .lock()
            .expect("index lock")
            .put_endpoints(written);
    }
    Ok(())
}

/// Runs the two controllers until `stop`.
pub async fn run(clients: EndpointsClients, config: EndpointsConfig, stop: CancellationToken) {
    let shared = Arc::new(Shared {
        index: Mutex::new(Index::default()),
        queue: Queue::default(),
        clients: clients.clone(),
        config,
    });
    let cfg = || watcher::Config::default().any_semantic();
    let c = clients.slices.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consume(
        watcher(Api::<Pod>::all(c.clone()), cfg()).default_backoff(),
        "pods",
        SYNCED_PODS,
        shared.clone(),
        stop.clone(),
        on_pod,
    ));
    tasks.spawn(consume(
        watcher(Api::<Service>::all(c.clone()), cfg()).default_backoff(),
        "services",
        SYNCED_SERVICES,
        shared.clone(),
        stop.clone(),
        on_service,
    ));
    tasks.spawn(consume(
        watcher(Api::<PartialObjectMeta<Node>>::all(c.clone()), cfg()).default_backoff(),
        "nodes",
        SYNCED_NODES,
        shared.clone(),
        stop.clone(),
        on_node,
    ));
    tasks.spawn(consume(
        watcher(
            Api::<EndpointSlice>::all(c.clone()),
            cfg().labels(&format!(
                "{}={}",
                slices::MANAGED_BY_LABEL,
                slices::CONTROLLER_NAME
            )),
        )
        .default_backoff(),
        "endpointslices",
        SYNCED_SLICES,
        shared.clone(),
        stop.clone(),
        on_slice,
    ));
    tasks.spawn(consume(
        watcher(Api::<Endpoints>::all(clients.endpoints.clone()), cfg()).default_backoff(),
        "endpoints",
        SYNCED_ENDPOINTS,
        shared.clone(),
        stop.clone(),
        on_endpoints,
    ));
    info!("endpoint and endpointslice controllers started");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = shared.queue.ready.notified() => {}
        }
        // No sync acts on a partial picture.
        if shared.index.lock().expect("index lock").synced != SYNCED_ALL {
            continue;
        }
        let batch = shared.queue.take();
        futures::stream::iter(batch)
            .for_each_concurrent(shared.config.workers.max(1), |key| {
                let shared = shared.clone();
                let stop = stop.clone();
                async move {
                    if let Err(e) = sync(&shared, &key).await {
                        warn!(service = %key, error = %e, "syncing endpoints; retrying");
                        // Retried after a pause (the watch catches up with
                        // whatever made the write conflict meanwhile).
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = tokio::time::sleep(Duration::from_secs(1)) => shared.queue.add([key]),
                            }
                        });
                    }
                }
            })
            .await;
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, selector: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": "1",
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"selector": selector, "clusterIP": "10.43.0.5",
                     "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}]}}))
        .unwrap()
    }

    fn pod(name: &str, app: &str, rv: u32, ready: bool, since: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": rv.to_string(),
                         "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.1",
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                                       "lastTransitionTime": since}]}}))
        .unwrap()
    }

    #[test]
    fn a_pod_event_queues_only_the_services_selecting_it_before_or_after() {
        let mut ix = Index::default();
        let mut q = Vec::new();
        ix.apply_service(svc("a", json!({"app": "a"})), &mut q);
        ix.apply_service(svc("b", json!({"app": "b"})), &mut q);
        ix.apply_service(svc("other", json!({"app": "zzz"})), &mut q);
        q.clear();
        ix.apply_pod(pod("p", "a", 2, true, "2024-01-01T00:00:00Z"), &mut q);
        assert_eq!(q, ["ns/a"]);
        q.clear();
        // A heartbeat that changes nothing an endpoint shows: no work.
        let mut same = pod("p", "a", 3, true, "2024-01-01T00:00:00Z");
        same.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        ix.apply_pod(same, &mut q);
        assert!(q.is_empty());
        // Relabelled from a to b: both Services.
        ix.apply_pod(pod("p", "b", 4, true, "2024-01-01T00:00:00Z"), &mut q);
        q.sort();
        assert_eq!(q, ["ns/a", "ns/b"]);
        q.clear();
        // An event older than the copy held is ignored.
        ix.apply_pod(pod("p", "a", 3, false, "2024-01-01T00:00:00Z"), &mut q);
        assert!(q.is_empty());
        ix.delete_pod(&pod("p", "b", 5, true, "2024-01-01T00:00:00Z"), &mut q);
        assert_eq!(q, ["ns/b"]);
        // A selector change re-evaluates the namespace's pods.
        q.clear();
        ix.apply_pod(pod("r", "c", 6, true, "2024-01-01T00:00:00Z"), &mut q);
        assert!(q.is_empty());
        let mut moved = svc("other", json!({"app": "c"}));
        moved.metadata.resource_version = Some("7".into());
        ix.apply_service(moved, &mut q);
        assert_eq!(
            ix.pod_services["ns/r"],
            BTreeSet::from(["ns/other".to_string()])
        );
        // Endpoints of no Service are the user's: no work; a foreign
        // change to a Service's Endpoints is re-checked.
        q.clear();
        let ep = |name: &str, rv: &str| -> Endpoints {
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}),
            )
            .unwrap()
        };
        on_endpoints(&mut ix, Change::Applied(ep("mine", "8")), &mut q);
        assert!(q.is_empty());
        on_endpoints(&mut ix, Change::Applied(ep("a", "9")), &mut q);
        assert_eq!(q, ["ns/a"]);
        q.clear();
        on_endpoints(&mut ix, Change::Applied(ep("a", "9")), &mut q);
        assert!(q.is_empty(), "the echo of a write already held");
    }

    #[test]
    fn trigger_time_is_the_earliest_new_ready_transition() {
        let mut states = HashMap::new();
        let s = svc("a", json!({"app": "a"}));
        let p1 = pod("p1", "a", 1, true, "2024-01-01T00:00:10Z");
        assert_eq!(
            trigger_time(&mut states, "ns/a", &s, &[&p1]),
            None,
            "first sync"
        );
        assert_eq!(
            trigger_time(&mut states, "ns/a", &s, &[&p1]),
            None,
            "nothing new"
        );
        let p1b = pod("p1", "a", 2, false, "2024-01-01T00:00:30Z");
        let p2 = pod("p2", "a", 2, true, "2024-01-01T00:00:20Z");
        assert_eq!(
            trigger_time(&mut states, "ns/a", &s, &[&p1b, &p2]).map(|t| t.to_string()),
            Some("2024-01-01T00:00:20Z".to_string())
        );
    }
}
