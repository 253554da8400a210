//! Running the Pods bound to this node, the way a kubelet does: watch
//! them through the API, give each its own worker ([`worker::Worker`]),
//! and sweep sandboxes whose Pod is gone (deleted while this node role
//! was down, or mid-start).

pub mod dns;
pub mod phase;
pub mod probes;
pub mod resize;
pub mod spec;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::watcher;
use rke2_runtime::cri::{Cri, api};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use spec::PodPaths;

/// How often the node lists every container and sandbox (kubelet's
/// "PLEG relist") to wake the workers whose containers changed state; one
/// CRI list for the node instead of one per pod.
const RELIST: Duration = Duration::from_secs(1);
/// How often sandboxes without a Pod are looked for.
const SWEEP: Duration = Duration::from_secs(10);

/// What every pod worker of this node shares.
pub struct PodContext {
    /// The API client (as the node's identity).
    pub client: kube::Client,
    /// The runtime.
    pub cri: Cri,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (the Pods' hostIP; their IP with hostNetwork).
    pub node_ip: String,
    /// Where per-pod files and logs go.
    pub paths: PodPaths,
    /// The cluster DNS service IP (`cluster-dns`).
    pub cluster_dns: String,
    /// The cluster domain (`cluster-domain`).
    pub cluster_domain: String,
    /// The host resolv.conf pods with `dnsPolicy: Default` get (chosen
    /// by `dns::locate_resolv_conf`; read at each sandbox, as kubelet).
    pub resolv_conf: std::path::PathBuf,
    /// `default/kubernetes` as (ip, port) for the service variables.
    pub kubernetes_service: Option<(String, i32)>,
    /// The image of this binary, built and imported when a pod first
    /// needs it (the bundled addons' image; no registry serves it).
    pub addon_image: Arc<rke2_runtime::addon_image::AddonImage>,
    /// The node's pressure conditions, for the admission of new pods.
    pub pressure: Arc<crate::eviction::Pressure>,
}

impl PodContext {
    /// The DNS settings of `pod`'s sandbox, per its `dnsPolicy`.
    pub fn pod_dns(&self, pod: &Pod) -> rke2_runtime::cri::api::DnsConfig {
        dns::pod_dns_config(
            pod,
            &self.cluster_dns,
            &self.cluster_domain,
            &dns::HostDns::read(&self.resolv_conf),
        )
    }

    /// Records an event about `pod` from this node (best effort).
    pub async fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        // Reasons are keyed per container in the worker ("Started/c");
        // only the part before the slash is the event reason.
        let reason = reason.split('/').next().unwrap_or(reason);
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = chrono::Utc::now();
        let ev: Result<Event, _> = serde_json::from_value(json!({
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                "uid": pod.metadata.uid, "apiVersion": "v1",
                "resourceVersion": pod.metadata.resource_version},
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "lastTimestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "count": 1,
        }));
        let Ok(ev) = ev else { return };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            debug!(error = %e, %reason, "recording a pod event");
        }
    }
}

enum Msg {
    Pod(Box<Pod>),
    /// Evict the pod (node pressure or a local storage limit).
    Evict(crate::eviction::Eviction),
    /// The node's relist saw one of its containers or sandboxes change.
    Wake,
    Gone,
}

/// Runs the pods of this node until `stop`. Containers keep running
/// when it stops (a restart adopts them), as with a kubelet.
pub async fn run(
    ctx: Arc<PodContext>,
    mut evictions: mpsc::UnboundedReceiver<crate::eviction::Eviction>,
    stop: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", ctx.node_name))
        // Like client-go informers (and so the kubelet): the initial list
        // may come from the apiserver's watch cache (resourceVersion=0)
        // instead of a read through every pod in etcd.
        .any_semantic();
    let mut stream = watcher::watcher(pods, cfg).boxed();
    let mut workers: HashMap<String, mpsc::UnboundedSender<Msg>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listed: Option<HashSet<String>> = None;
    let mut synced = false;
    let mut sweep = tokio::time::interval(SWEEP);
    let mut relist = tokio::time::interval(RELIST);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(uid) = done_rx.recv() => { workers.remove(&uid); }
            Some(e) = evictions.recv() => {
                if let Some(tx) = workers.get(&e.uid) {
                    let _ = tx.send(Msg::Evict(e));
                }
            }
            _ = relist.tick() => {
                for uid in relist_changes(&ctx, &mut seen).await {
                    if let Some(tx) = workers.get(&uid) {
                        let _ = tx.send(Msg::Wake);
                    }
                }
            }
            _ = sweep.tick() => {
                if synced {
                    sweep_orphans(&ctx, &workers).await;
                }
            }
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                match ev {
                    Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                    Ok(watcher::Event::InitApply(pod)) => {
                        if let Some(l) = listed.as_mut() {
                            l.insert(pod.metadata.uid.clone().unwrap_or_default());
                        }
                        deliver(&ctx, &mut workers, &done_tx, &stop, pod);
                    }
                    Ok(watcher::Event::InitDone) => {
                        // Pods deleted while the watch was away.
                        if let Some(l) = listed.take() {
                            for (uid, tx) in &workers {
                                if !l.contains(uid) {
                                    let _ = tx.send(Msg::Gone);
                                }
                            }
                        }
                        if !synced {
                            info!(pods = workers.len(), "pods of this node listed");
                        }
                        synced = true;
                    }
                    Ok(watcher::Event::Apply(pod)) => deliver(&ctx, &mut workers, &done_tx, &stop, pod),
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(tx) = workers.get(pod.metadata.uid.as_deref().unwrap_or("")) {
                            let _ = tx.send(Msg::Gone);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "pod watch error; the watcher retries");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
}

fn deliver(
    ctx: &Arc<PodContext>,
    workers: &mut HashMap<String, mpsc::UnboundedSender<Msg>>,
    done: &mpsc::UnboundedSender<String>,
    stop: &CancellationToken,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(tx) = workers.get(&uid)
        && tx.send(Msg::Pod(Box::new(pod.clone()))).is_ok()
    {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    workers.insert(uid.clone(), tx);
    tokio::spawn(work(ctx.clone(), pod, rx, done.clone(), stop.clone()));
}

async fn work(
    ctx: Arc<PodContext>,
    pod: Pod,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    done: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    );
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    // Admission, as kubelet's eviction manager admits a pod new to the
    // node: one that never ran is refused under pressure.
    let refused = if never_ran(&pod) {
        crate::eviction::admit(&pod, &ctx.pressure.conditions()).err()
    } else {
        None
    };
    let mut w = worker::Worker::new(ctx, pod);
    if let Some(message) = refused {
        info!(pod = %name, %message, "pod not admitted under node pressure");
        w.reject("Evicted", message).await;
    }
    loop {
        if w.sync().await == worker::Next::Done {
            info!(pod = %name, "pod terminated and removed");
            break;
        }
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = rx.recv() => m,
            _ = tokio::time::sleep(w.next_wake()) => continue,
        };
        match msg {
            Some(Msg::Wake) => {}
            Some(Msg::Evict(e)) => w.evict(e).await,
            Some(Msg::Pod(p)) => {
                // Several updates may be queued; only the newest counts
                // (a Gone behind them still ends the worker).
                let mut p = p;
                let mut gone = false;
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Pod(next) => p = next,
                        Msg::Wake => {}
                        Msg::Evict(e) => w.evict(e).await,
                        Msg::Gone => gone = true,
                    }
                }
                w.update(*p);
                if gone {
                    w.gone(grace.clamp(0, 2)).await;
                    info!(pod = %name, "pod removed from the API; its containers are stopped");
                    break;
                }
            }
            Some(Msg::Gone) | None => {
                // Deleted from the API without this node's say (force
                // delete): stop everything, with a short grace.
                w.gone(grace.clamp(0, 2)).await;
                info!(pod = %name, "pod removed from the API; its containers are stopped");
                break;
            }
        }
    }
    let _ = done.send(uid);
}

/// Whether `pod` never ran: Pending (or no phase yet) with no container
/// that started. Only such a pod goes through admission; a running one
/// found again after a node role restart is kept.
fn never_ran(pod: &Pod) -> bool {
    let Some(st) = &pod.status else { return true };
    if !matches!(st.phase.as_deref(), None | Some("Pending")) {
        return false;
    }
    st.container_statuses
        .iter()
        .chain(st.init_container_statuses.iter())
        .flatten()
        .all(|c| {
            c.state
                .as_ref()
                .is_none_or(|s| s.running.is_none() && s.terminated.is_none())
                && c.last_state.as_ref().is_none_or(|s| s.terminated.is_none())
        })
}

/// Lists every container and sandbox once and returns the pod uids whose
/// set of (id, state) changed since the last call.
async fn relist_changes(
    ctx: &PodContext,
    seen: &mut HashMap<String, Vec<(String, i32)>>,
) -> Vec<String> {
    let mut rt = ctx.cri.runtime();
    let Ok(ctrs) = rt
        .list_containers(api::ListContainersRequest { filter: None })
        .await
    else {
        return Vec::new();
    };
    let Ok(sbs) = rt
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
    else {
        return Vec::new();
    };
    let mut now: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    for c in ctrs.into_inner().containers {
        if let Some(uid) = c.labels.get(spec::LABEL_POD_UID) {
            now.entry(uid.clone()).or_default().push((c.id, c.state));
        }
    }
    for sb in sbs.into_inner().items {
        if let Some(uid) = sb.labels.get(spec::LABEL_POD_UID) {
            now.entry(uid.clone())
                .or_default()
                .push((sb.id, 100 + sb.state));
        }
    }
    for v in now.values_mut() {
        v.sort();
    }
    let mut changed: Vec<String> = now
        .iter()
        .filter(|(uid, v)| seen.get(*uid) != Some(*v))
        .map(|(uid, _)| uid.clone())
        .collect();
    changed.extend(seen.keys().filter(|uid| !now.contains_key(*uid)).cloned());
    *seen = now;
    changed
}

/// Stops and removes sandboxes (and so their containers) of pods this
/// node no longer has.
async fn sweep_orphans(ctx: &PodContext, workers: &HashMap<String, mpsc::UnboundedSender<Msg>>) {
    let mut rt = ctx.cri.runtime();
    let Ok(list) = rt
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
    else {
        return;
    };
    for sb in list.into_inner().items {
        let uid = sb
            .labels
            .get(spec::LABEL_POD_UID)
            .cloned()
            .unwrap_or_default();
        if workers.contains_key(&uid) {
            continue;
        }
        let name = sb
            .metadata
            .as_ref()
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_default();
        info!(sandbox = %sb.id, pod = %name, "removing the sandbox of a pod this node no longer has");
        let ctrs = rt
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    pod_sandbox_id: sb.id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default();
        for c in ctrs {
            let _ = rt
                .stop_container(api::StopContainerRequest {
                    container_id: c.id.clone(),
                    timeout: 2,
                })
                .await;
        }
        if let Err(s) = rt
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await
        {
            warn!(sandbox = %sb.id, error = %s.message(), "stopping an orphaned sandbox");
            continue;
        }
        let _ = rt
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await;
        let dir = ctx.paths.pod_dir(&uid);
        if !uid.is_empty() && dir.exists() {
            rke2_runtime::cleanup::unmount_under(std::slice::from_ref(&dir));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
