//! `rke2-hollow-nodes`: N simulated node identities in one process, like
//! kubemark's hollow nodes, for scale benchmarks (`bench/scale.sh`).
//!
//! Each node registers (Node with labels, capacity cpu 4 / memory 16Gi /
//! pods 110, Ready condition, an InternalIP from 10.250.0.0/16), creates
//! its Lease in `kube-node-lease` and renews it every `--lease-interval`
//! (10 s; the nodes' renewals are spread evenly over the interval, not
//! sent in one burst), and patches its status heartbeat every
//! `--status-interval` (60 s, spread likewise).
//!
//! Pods: ONE watch on all pods for all hollow nodes (`spec.nodeName` is
//! matched client-side against the nodes of this process). A newly bound
//! pod is reported Running and Ready through `pods/status` (podIP from the
//! node's podCIDR when it has one, else a fake /24 per node); a pod marked
//! for graceful deletion is deleted with grace 0 and a uid precondition,
//! as a kubelet does once its containers stopped.
//!
//! All writes share one semaphore (`--concurrency`) and are retried with
//! back-off. A summary goes to stderr every `--summary-interval`; `RESULT`
//! lines (per write kind: n, errors, p50, p99, max in ms) and `COUNT`
//! lines go to stdout on SIGUSR1 (for the period since the previous mark)
//! and at exit (the last period and the total). SIGINT/SIGTERM stop;
//! with `--cleanup` the nodes (and their Leases) are deleted first.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use rke2_hollow_nodes::{
    Recorder, Stats, api_code, backoff, clients, install_crypto, merged, now_micro, now_time,
    retryable, terminated, timed,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "rke2-hollow-nodes",
    about = "simulated nodes (like kubemark's hollow nodes) for scale benchmarks"
)]
struct Args {
    /// Admin kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Node name prefix (names are <prefix><index>, zero-padded).
    #[arg(long, default_value = "hollow-")]
    prefix: String,
    /// Server URLs to spread the nodes over, round-robin (default: the
    /// kubeconfig's server). The pod watch uses the first.
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Writes in flight at most (all kinds together).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds between Lease renewals of one node.
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
    /// Seconds between status heartbeats of one node.
    #[arg(long, default_value_t = 60)]
    status_interval: u64,
    /// Seconds between summaries on stderr.
    #[arg(long, default_value_t = 10)]
    summary_interval: u64,
    /// Seconds a single request may take before it counts as failed.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Extra node label key=value (repeatable); every node also carries
    /// rke2.io/hollow-node=true.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// On SIGINT/SIGTERM, delete the nodes (and their Leases) first.
    #[arg(long)]
    cleanup: bool,
}

/// The label every hollow node carries (workloads select on it).
const HOLLOW_LABEL: &str = "rke2.io/hollow-node";

/// One simulated node.
struct NodeState {
    name: String,
    index: usize,
    ip: Ipv4Addr,
    /// First address of the node's pod range (its podCIDR once assigned).
    pod_base: Mutex<Ipv4Addr>,
    next_pod_ip: AtomicU32,
    /// Whether the Node was read back for its podCIDR (once, at the first
    /// pod, when registration came before the node IPAM).
    cidr_checked: AtomicBool,
    /// Set once registered (node, status and lease written).
    registered: AtomicBool,
    /// Time of registration (`lastTransitionTime` of the conditions).
    since: Mutex<String>,
}

#[derive(Default)]
struct Counters {
    registered: AtomicUsize,
    lease_ok: AtomicU64,
    lease_failed: AtomicU64,
    heartbeat_ok: AtomicU64,
    heartbeat_failed: AtomicU64,
    pods_reported: AtomicU64,
    pods_report_failed: AtomicU64,
    pods_deleted: AtomicU64,
}

struct Hollow {
    args: Args,
    clients: Vec<kube::Client>,
    rec: Recorder,
    sem: Semaphore,
    nodes: Vec<NodeState>,
    by_name: HashMap<String, usize>,
    c: Counters,
    /// Pods (uid) whose Running status is written or being written.
    reporting: Mutex<HashSet<String>>,
    /// Pods (uid) whose final delete is under way.
    deleting: Mutex<HashSet<String>>,
    stop: watch::Receiver<bool>,
    timeout: Duration,
}

/// Node name of index `i` among `n`.
fn node_name(prefix: &str, i: usize, n: usize) -> String {
    let width = (n.saturating_sub(1)).to_string().len().max(4);
    format!("{prefix}{i:0width$}")
}

/// The fake InternalIP of node `i`: 10.250.x.y, y in 1..=250.
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// A fake pod range for node `i` until it has a podCIDR: 10.(128+a).b.0/24.
fn fake_pod_base(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + ((i / 256) % 64) as u8, (i % 256) as u8, 0)
}

/// Completes once the stop flag is set (the `Ref` of `wait_for` is not
/// `Send`, so it must not live across an await in a spawned task).
async fn until_stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The first slot at or after `now` of a schedule `slot0 + k * period`.
fn next_slot(slot0: Instant, period: Duration, now: Instant) -> Instant {
    if now <= slot0 {
        return slot0;
    }
    let k = (now - slot0).as_nanos() / period.as_nanos().max(1) + 1;
    slot0 + period * k as u32
}

/// 64 hex digits derived from `s` (fake container IDs).
fn hex64(s: &str) -> String {
    let mut out = String::with_capacity(64);
    let mut h: u64 = 0xcbf29ce484222325;
    for round in 0..4u64 {
        for b in s.bytes().chain(round.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

/// Upstream's QoS class from the containers' requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    let (mut any, mut guaranteed) = (false, true);
    for c in containers {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            if !req[r].is_null() || !lim[r].is_null() {
                any = true;
            }
            if lim[r].is_null() || (!req[r].is_null() && req[r] != lim[r]) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn running_and_ready(p: &Pod) -> bool {
    let Some(st) = &p.status else { return false };
    st.phase.as_deref() == Some("Running")
        && st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

impl Hollow {
    fn client(&self, node: usize) -> kube::Client {
        self.clients[node % self.clients.len()].clone()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d` unless stopped first; false when stopped.
    async fn nap(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = until_stopped(&mut stop) => false,
            _ = tokio::time::sleep(d) => !self.stopped(),
        }
    }

    /// One write: waits for a permit, then times the request.
    async fn once<T>(
        &self,
        kind: &'static str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        let _permit = self.sem.acquire().await.expect("semaphore open");
        timed(&self.rec, kind, self.timeout, fut).await
    }

    /// One read (not recorded), under the same permit.
    async fn read<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        let _permit = self.sem.acquire().await.expect("semaphore open");
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(rke2_hollow_nodes::timeout_error(self.timeout)),
        }
    }

    fn conditions(&self, n: &NodeState) -> Value {
        let now = now_time();
        let since = n.since.lock().expect("lock").clone();
        let cond = |t: &str, status: &str, reason: &str, message: &str| {
            json!({"type": t, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": since})
        };
        json!([
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available"
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure"
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available"
            ),
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status (hollow node)"
            ),
        ])
    }

    fn full_status(&self, n: &NodeState) -> Value {
        let capacity =
            json!({"cpu": "4", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": n.ip.to_string()},
                {"type": "Hostname", "address": n.name},
            ],
            "conditions": self.conditions(n),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": hex64(&n.name)[..32],
                "systemUUID": "",
                "bootID": hex64(&format!("boot-{}", n.name))[..32],
                "kernelVersion": "6.1.0-hollow",
                "osImage": "Hollow Node",
                "containerRuntimeVersion": "hollow://1.0.0",
                "kubeletVersion": "v1.35.0",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        })
    }

    /// Notes the node's podCIDR from a Node answer.
    fn learn_cidr(&self, n: &NodeState, node: &Node) {
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
        if let Some(base) = cidr
            .and_then(|c| c.split('/').next())
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        {
            *n.pod_base.lock().expect("lock") = base;
        }
    }

    fn labels(&self, n: &NodeState) -> Value {
        let mut l = json!({
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/hostname": n.name,
            "node.kubernetes.io/instance-type": "hollow",
            HOLLOW_LABEL: "true",
        });
        for kv in &self.args.labels {
            if let Some((k, v)) = kv.split_once('=') {
                l[k] = json!(v);
            }
        }
        l
    }

    /// Node, status and Lease; retried until done or stopped.
    async fn register(&self, i: usize) -> Option<Lease> {
        let n = &self.nodes[i];
        *n.since.lock().expect("lock") = now_time();
        let nodes: Api<Node> = Api::all(self.client(i));
        let body: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": self.labels(n),
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {},
        }))
        .expect("a valid Node");
        let mut attempt = 0;
        // The Node.
        let uid = loop {
            attempt += 1;
            match self
                .once("node-create", nodes.create(&PostParams::default(), &body))
                .await
            {
                Ok(node) => break node.metadata.uid.unwrap_or_default(),
                Err(e) if api_code(&e) == Some(409) => match self.read(nodes.get(&n.name)).await {
                    Ok(node) => break node.metadata.uid.unwrap_or_default(),
                    Err(e) => debug!(node = %n.name, error = %e, "reading existing node"),
                },
                Err(e) if retryable(&e) => debug!(node = %n.name, error = %e, "node create"),
                Err(e) => warn!(node = %n.name, error = %e, "node create refused; retrying"),
            }
            if !self.nap(backoff(attempt)).await {
                return None;
            }
        };
        // Its status (Ready).
        let patch = json!({"status": self.full_status(n)});
        attempt = 0;
        loop {
            attempt += 1;
            match self
                .once(
                    "node-status",
                    nodes.patch_status(&n.name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
            {
                Ok(node) => {
                    self.learn_cidr(n, &node);
                    break;
                }
                Err(e) => debug!(node = %n.name, error = %e, "node status"),
            }
            if !self.nap(backoff(attempt)).await {
                return None;
            }
        }
        // Its Lease.
        let leases: Api<Lease> = Api::namespaced(self.client(i), "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": n.name, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": n.name, "uid": uid}]},
            "spec": {"holderIdentity": n.name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }))
        .expect("a valid Lease");
        attempt = 0;
        let lease = loop {
            attempt += 1;
            match self
                .once(
                    "lease-create",
                    leases.create(&PostParams::default(), &lease),
                )
                .await
            {
                Ok(l) => break l,
                Err(e) if api_code(&e) == Some(409) => {
                    if let Ok(l) = self.read(leases.get(&n.name)).await {
                        break l;
                    }
                }
                Err(e) => debug!(node = %n.name, error = %e, "lease create"),
            }
            if !self.nap(backoff(attempt)).await {
                return None;
            }
        };
        n.registered.store(true, Ordering::SeqCst);
        let done = self.c.registered.fetch_add(1, Ordering::SeqCst) + 1;
        if done == self.nodes.len() {
            info!(nodes = done, "all hollow nodes registered");
        }
        Some(lease)
    }

    /// One renewal: update with the last Lease seen (as a kubelet does),
    /// re-read on a conflict, re-create when gone; retried until the next
    /// renewal is due.
    async fn renew(&self, i: usize, lease: &mut Option<Lease>) -> bool {
        let n = &self.nodes[i];
        let leases: Api<Lease> = Api::namespaced(self.client(i), "kube-node-lease");
        let deadline = Instant::now() + Duration::from_secs(self.args.lease_interval);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = now_micro();
            let r = match lease.take() {
                Some(l) => {
                    let mut v = serde_json::to_value(&l).expect("a Lease serializes");
                    v["spec"]["renewTime"] = json!(now);
                    v["spec"]["holderIdentity"] = json!(n.name);
                    v["spec"]["leaseDurationSeconds"] = json!(40);
                    let l: Lease = serde_json::from_value(v).expect("a valid Lease");
                    self.once(
                        "lease-update",
                        leases.replace(&n.name, &PostParams::default(), &l),
                    )
                    .await
                }
                None => {
                    let l: Lease = serde_json::from_value(json!({
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": n.name, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": n.name, "leaseDurationSeconds": 40, "renewTime": now},
                    }))
                    .expect("a valid Lease");
                    self.once("lease-create", leases.create(&PostParams::default(), &l))
                        .await
                }
            };
            match r {
                Ok(l) => {
                    *lease = Some(l);
                    return true;
                }
                Err(e) if api_code(&e) == Some(409) => {
                    // Stale resourceVersion (or created meanwhile): re-read.
                    if let Ok(l) = self.read(leases.get(&n.name)).await {
                        *lease = Some(l);
                        continue;
                    }
                }
                Err(e) if api_code(&e) == Some(404) => {
                    *lease = None;
                    continue;
                }
                Err(e) => debug!(node = %n.name, error = %e, "lease renewal"),
            }
            let wait = backoff(attempt);
            if Instant::now() + wait >= deadline || !self.nap(wait).await {
                return false;
            }
        }
    }

    /// The status heartbeat: the conditions with a new heartbeat time.
    async fn heartbeat(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        let nodes: Api<Node> = Api::all(self.client(i));
        let deadline = Instant::now() + Duration::from_secs(self.args.status_interval);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let patch = json!({"status": {"conditions": self.conditions(n)}});
            match self
                .once(
                    "node-status",
                    nodes.patch_status(&n.name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
            {
                Ok(node) => {
                    self.learn_cidr(n, &node);
                    return true;
                }
                Err(e) if api_code(&e) == Some(404) => {
                    warn!(node = %n.name, "node deleted from the API; not re-registering");
                    return false;
                }
                Err(e) => debug!(node = %n.name, error = %e, "node heartbeat"),
            }
            let wait = backoff(attempt);
            if Instant::now() + wait >= deadline || !self.nap(wait).await {
                return false;
            }
        }
    }

    /// Registers node `i`, then renews its Lease and heartbeats its
    /// status in its own slots until stopped.
    async fn run_node(self: Arc<Self>, i: usize, start: Instant) {
        let Some(lease) = self.register(i).await else {
            return;
        };
        let mut lease = Some(lease);
        let n = self.nodes.len().max(1) as u32;
        let lp = Duration::from_secs(self.args.lease_interval.max(1));
        let sp = Duration::from_secs(self.args.status_interval.max(1));
        let lease_slot0 = start + lp * i as u32 / n;
        let status_slot0 = start + sp * i as u32 / n;
        let now = Instant::now();
        let mut lease_tick = tokio::time::interval_at(next_slot(lease_slot0, lp, now), lp);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut status_tick =
            tokio::time::interval_at(next_slot(status_slot0, sp, now + sp / 2), sp);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = until_stopped(&mut stop) => return,
                _ = lease_tick.tick() => {
                    if self.renew(i, &mut lease).await {
                        self.c.lease_ok.fetch_add(1, Ordering::Relaxed);
                    } else if !self.stopped() {
                        self.c.lease_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = status_tick.tick() => {
                    if self.heartbeat(i).await {
                        self.c.heartbeat_ok.fetch_add(1, Ordering::Relaxed);
                    } else if !self.stopped() {
                        self.c.heartbeat_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------- pods --

    /// One watch on all pods; pods of this process's nodes are handled.
    async fn watch_pods(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.clients[0].clone());
        let stream = watcher(pods, watcher::Config::default().any_semantic()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut stop = self.stop.clone();
        loop {
            let ev = tokio::select! {
                _ = until_stopped(&mut stop) => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => self.on_pod(p),
                Some(Ok(watcher::Event::Delete(p))) => {
                    if let Some(uid) = &p.metadata.uid {
                        self.reporting.lock().expect("lock").remove(uid);
                        self.deleting.lock().expect("lock").remove(uid);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => warn!(error = %e, "pod watch failed; it is restarted"),
            }
        }
    }

    fn on_pod(self: &Arc<Self>, p: Pod) {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            return;
        };
        let Some(&i) = self.by_name.get(node) else {
            return;
        };
        let Some(uid) = p.metadata.uid.clone() else {
            return;
        };
        if p.metadata.deletion_timestamp.is_some() {
            if self.deleting.lock().expect("lock").insert(uid) {
                let me = self.clone();
                tokio::spawn(async move { me.finish_deletion(p).await });
            }
            return;
        }
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) || running_and_ready(&p) {
            return;
        }
        if self.reporting.lock().expect("lock").insert(uid) {
            let me = self.clone();
            tokio::spawn(async move { me.report_running(i, p).await });
        }
    }

    fn pod_status(&self, i: usize, p: &Pod) -> Value {
        let n = &self.nodes[i];
        let v = serde_json::to_value(p).unwrap_or_default();
        let spec = &v["spec"];
        let now = now_time();
        let pod_ip = if spec["hostNetwork"] == json!(true) {
            n.ip
        } else {
            let base = u32::from(*n.pod_base.lock().expect("lock"));
            let k = n.next_pod_ip.fetch_add(1, Ordering::Relaxed) % 250;
            Ipv4Addr::from(base + 2 + k)
        };
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let scheduled = v["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
            .unwrap_or_else(|| cond("PodScheduled"));
        let status_of = |c: &Value, init: bool| {
            let name = c["name"].as_str().unwrap_or("");
            let state = if init {
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                    "containerID": format!("containerd://{}", hex64(&format!("{uid}/{name}")))}})
            } else {
                json!({"running": {"startedAt": now}})
            };
            json!({
                "name": name,
                "image": c["image"],
                "imageID": format!("{}@sha256:{}", c["image"].as_str().unwrap_or(""), hex64(c["image"].as_str().unwrap_or(""))),
                "containerID": format!("containerd://{}", hex64(&format!("{uid}/{name}"))),
                "ready": !init,
                "started": !init,
                "restartCount": 0,
                "state": state,
                "lastState": {},
            })
        };
        let containers: Vec<Value> = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| status_of(c, false))
            .collect();
        let mut st = json!({
            "phase": "Running",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                           cond("ContainersReady"), scheduled],
            "hostIP": n.ip.to_string(),
            "hostIPs": [{"ip": n.ip.to_string()}],
            "podIP": pod_ip.to_string(),
            "podIPs": [{"ip": pod_ip.to_string()}],
            "startTime": now,
            "containerStatuses": containers,
            "qosClass": qos_class(spec),
        });
        if let Some(init) = spec["initContainers"].as_array().filter(|a| !a.is_empty()) {
            st["initContainerStatuses"] =
                Value::Array(init.iter().map(|c| status_of(c, true)).collect());
        }
        st
    }

    /// Reports a newly bound pod Running and Ready.
    async fn report_running(self: Arc<Self>, i: usize, p: Pod) {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client(i), &ns);
        let n = &self.nodes[i];
        if !n.cidr_checked.swap(true, Ordering::SeqCst) {
            // The node IPAM usually assigns the podCIDR after registration;
            // the heartbeats bring it too, but only every minute.
            let nodes: Api<Node> = Api::all(self.client(i));
            if let Ok(node) = self.read(nodes.get(&n.name)).await {
                self.learn_cidr(n, &node);
            }
        }
        let patch = json!({"status": self.pod_status(i, &p)});
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .once(
                    "pod-status",
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
            {
                Ok(_) => {
                    self.c.pods_reported.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if api_code(&e) == Some(404) => return,
                Err(e) if retryable(&e) && attempt < 20 => {
                    debug!(pod = %format!("{ns}/{name}"), error = %e, "pod status")
                }
                Err(e) => {
                    warn!(pod = %format!("{ns}/{name}"), error = %e, "pod status not written");
                    self.c.pods_report_failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(uid) = &p.metadata.uid {
                        self.reporting.lock().expect("lock").remove(uid);
                    }
                    return;
                }
            }
            if !self.nap(backoff(attempt)).await {
                return;
            }
        }
    }

    /// The kubelet's last step of a graceful deletion: delete with grace 0
    /// (uid precondition, so a new pod of the same name is never hit).
    async fn finish_deletion(self: Arc<Self>, p: Pod) {
        let Some(&i) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| self.by_name.get(n))
        else {
            return;
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client(i), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: p.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.once("pod-delete", api.delete(&name, &dp)).await {
                Ok(_) => {
                    self.c.pods_deleted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Gone, or another pod of that name now.
                Err(e) if matches!(api_code(&e), Some(404 | 409)) => return,
                Err(e) if retryable(&e) && attempt < 20 => {
                    debug!(pod = %format!("{ns}/{name}"), error = %e, "pod delete")
                }
                Err(e) => {
                    warn!(pod = %format!("{ns}/{name}"), error = %e, "pod not deleted");
                    if let Some(uid) = &p.metadata.uid {
                        self.deleting.lock().expect("lock").remove(uid);
                    }
                    return;
                }
            }
            if !self.nap(backoff(attempt)).await {
                return;
            }
        }
    }

    // ------------------------------------------------------ reporting --

    fn summary(&self, elapsed: Duration) {
        let w = self.rec.take_window();
        let all = merged(&w).stats();
        let per: Vec<String> = w
            .iter()
            .map(|(k, s)| {
                let st = s.stats();
                format!("{k} {}/{:.0}ms", st.n, st.p99_ms)
            })
            .collect();
        let c = &self.c;
        eprintln!(
            "[hollow] {:>5.0}s nodes {}/{} registered; leases ok {} failed {}; heartbeats ok {} failed {}; pods reported {} (failed {}), deleted {}; writes last {}s: {} ({})",
            elapsed.as_secs_f64(),
            c.registered.load(Ordering::Relaxed),
            self.nodes.len(),
            c.lease_ok.load(Ordering::Relaxed),
            c.lease_failed.load(Ordering::Relaxed),
            c.heartbeat_ok.load(Ordering::Relaxed),
            c.heartbeat_failed.load(Ordering::Relaxed),
            c.pods_reported.load(Ordering::Relaxed),
            c.pods_report_failed.load(Ordering::Relaxed),
            c.pods_deleted.load(Ordering::Relaxed),
            self.args.summary_interval,
            all.human(),
            per.join(", "),
        );
    }

    /// `RESULT <label> <kind> n errors p50 p99 max` for each kind and
    /// `all-writes`, plus `COUNT <label> <name> <value>` lines, on stdout.
    fn results(
        &self,
        label: &str,
        m: &std::collections::BTreeMap<&'static str, rke2_hollow_nodes::Samples>,
    ) {
        let line = |kind: &str, s: Stats| println!("RESULT\t{label}\t{kind}\t{}", s.tsv());
        line("all-writes", merged(m).stats());
        for (k, s) in m {
            line(k, s.stats());
        }
        let c = &self.c;
        for (name, v) in [
            ("nodes", self.nodes.len() as u64),
            ("registered", c.registered.load(Ordering::Relaxed) as u64),
            ("lease_ok", c.lease_ok.load(Ordering::Relaxed)),
            ("lease_failed", c.lease_failed.load(Ordering::Relaxed)),
            ("heartbeat_ok", c.heartbeat_ok.load(Ordering::Relaxed)),
            (
                "heartbeat_failed",
                c.heartbeat_failed.load(Ordering::Relaxed),
            ),
            ("pods_reported", c.pods_reported.load(Ordering::Relaxed)),
            (
                "pods_report_failed",
                c.pods_report_failed.load(Ordering::Relaxed),
            ),
            ("pods_deleted", c.pods_deleted.load(Ordering::Relaxed)),
        ] {
            println!("COUNT\t{label}\t{name}\t{v}");
        }
    }

    /// Deletes the registered nodes and their Leases.
    async fn cleanup(self: Arc<Self>) {
        let mut tasks = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].registered.load(Ordering::SeqCst) {
                continue;
            }
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let name = me.nodes[i].name.clone();
                let leases: Api<Lease> = Api::namespaced(me.client(i), "kube-node-lease");
                let nodes: Api<Node> = Api::all(me.client(i));
                for attempt in 1..=5 {
                    match me
                        .once(
                            "lease-delete",
                            leases.delete(&name, &DeleteParams::default()),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if api_code(&e) == Some(404) => break,
                        Err(_) => tokio::time::sleep(backoff(attempt)).await,
                    }
                }
                for attempt in 1..=5 {
                    match me
                        .once("node-delete", nodes.delete(&name, &DeleteParams::default()))
                        .await
                    {
                        Ok(_) => return true,
                        Err(e) if api_code(&e) == Some(404) => return true,
                        Err(e) => {
                            debug!(node = %name, error = %e, "node delete");
                            tokio::time::sleep(backoff(attempt)).await
                        }
                    }
                }
                false
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            if t.await.unwrap_or(false) {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        eprintln!("[hollow] cleanup: {ok} nodes deleted, {failed} failed");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.nodes == 0 || args.nodes > 64_000 {
        bail!("--nodes must be between 1 and 64000");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be positive");
    }
    install_crypto();
    let clients = clients(&args.kubeconfig, &args.servers).await?;
    let nodes: Vec<NodeState> = (0..args.nodes)
        .map(|i| NodeState {
            name: node_name(&args.prefix, i, args.nodes),
            index: i,
            ip: node_ip(i),
            pod_base: Mutex::new(fake_pod_base(i)),
            next_pod_ip: AtomicU32::new(0),
            cidr_checked: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            since: Mutex::new(now_time()),
        })
        .collect();
    let by_name = nodes.iter().map(|n| (n.name.clone(), n.index)).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let h = Arc::new(Hollow {
        sem: Semaphore::new(args.concurrency),
        timeout: Duration::from_secs(args.request_timeout.max(1)),
        args,
        clients,
        rec: Recorder::default(),
        nodes,
        by_name,
        c: Counters::default(),
        reporting: Mutex::new(HashSet::new()),
        deleting: Mutex::new(HashSet::new()),
        stop: stop_rx,
    });
    eprintln!(
        "[hollow] {} nodes {}..{} over {} server(s), {} writes in flight at most",
        h.nodes.len(),
        h.nodes[0].name,
        h.nodes[h.nodes.len() - 1].name,
        h.clients.len(),
        h.args.concurrency
    );
    let start = Instant::now();
    tokio::spawn(h.clone().watch_pods());
    for i in 0..h.nodes.len() {
        tokio::spawn(h.clone().run_node(i, start));
    }
    let mut summary = tokio::time::interval_at(
        start + Duration::from_secs(h.args.summary_interval.max(1)),
        Duration::from_secs(h.args.summary_interval.max(1)),
    );
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut period = 0;
    let term = terminated();
    tokio::pin!(term);
    loop {
        tokio::select! {
            _ = &mut term => break,
            _ = summary.tick() => h.summary(start.elapsed()),
            _ = usr1.recv() => {
                let p = h.rec.take_period();
                h.results(&format!("period{period}"), &p);
                eprintln!("[hollow] period {period} ended at {:.1}s: writes {}", start.elapsed().as_secs_f64(), merged(&p).stats().human());
                period += 1;
            }
        }
    }
    eprintln!("[hollow] stopping");
    let _ = stop_tx.send(true);
    if h.args.cleanup {
        h.clone().cleanup().await;
    }
    h.summary(start.elapsed());
    let p = h.rec.take_period();
    h.results(&format!("period{period}"), &p);
    h.results("total", &h.rec.total());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ips_and_slots() {
        assert_eq!(node_name("hollow-", 7, 500), "hollow-0007");
        assert_eq!(node_name("h-", 7, 20_000), "h-00007");
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(node_ip(250), Ipv4Addr::new(10, 250, 1, 1));
        assert_eq!(node_ip(1999), Ipv4Addr::new(10, 250, 7, 250));
        assert_eq!(fake_pod_base(257), Ipv4Addr::new(10, 129, 1, 0));
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        assert_eq!(next_slot(t0, p, t0), t0);
        assert_eq!(next_slot(t0, p, t0 + Duration::from_secs(1)), t0 + p);
        assert_eq!(
            next_slot(t0, p, t0 + Duration::from_secs(25)),
            t0 + Duration::from_secs(30)
        );
        assert_eq!(hex64("x").len(), 64);
        assert_ne!(hex64("a"), hex64("b"));
    }

    #[test]
    fn qos() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "10m"}}}]})),
            "Burstable"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
    }
}
