//! One pod on this node: its sandbox, init containers, containers,
//! restarts with back-off, probes, graceful termination and status.
//!
//! A worker is level-triggered: every turn (`sync`) it compares what the
//! Pod asks for with what the runtime has (found by CRI labels, so a
//! restarted node role adopts what is running instead of starting it
//! again) and makes one step towards it, then writes the Pod status if
//! it changed. Where the pod is in its life (no sandbox yet, running,
//! finished, terminating, ...) is its [`Phase`], whose transitions are
//! all in [`super::phase`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use rke2_runtime::RuntimeError;
use rke2_runtime::cri::api;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::PodContext;
use super::phase::{Event, Phase, Sandbox};
use super::probes::{self, Outcome, ProbeState};
use super::resize::{self, Fit};
use super::spec::{self, LABEL_CONTAINER_KIND, LABEL_CONTAINER_NAME, LABEL_POD_UID};
use super::volumes::{self, VolumeError};

/// First restart delay after the first quick restart; doubles up to
/// [`MAX_BACKOFF`], as kubelet's.
const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// The longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long resets its back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The longest a steady pod's worker sleeps; the node's relist wakes it
/// sooner when one of its containers changes state.
const STEADY_RESYNC: Duration = Duration::from_secs(10);
/// How often configMap/secret volumes are rewritten from the API.
const VOLUME_REFRESH: Duration = Duration::from_secs(30);

/// What a worker wants next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Keep going.
    Continue,
    /// The pod is gone and everything of it is cleaned up.
    Done,
}

/// Why a turn stopped before it was done (logged; the next turn tries
/// again).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    /// A CRI call failed.
    #[error("{call}: {}", .status.message())]
    Cri {
        /// The CRI method.
        call: &'static str,
        /// The runtime's answer.
        status: tonic::Status,
    },
    /// The last sandbox creation failed and its back-off has not passed.
    #[error("waiting to retry the sandbox")]
    SandboxBackoff,
    /// The pod's log or state directory could not be made.
    #[error("creating {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime refused the sandbox (kubelet's `FailedCreatePodSandBox`
    /// wording).
    #[error("Failed to create pod sandbox: {}", .0.message())]
    CreateSandbox(tonic::Status),
    /// A volume could not be set up.
    #[error(transparent)]
    Volumes(#[from] VolumeError),
}

/// Why a container's image is not there to run; the message is
/// kubelet's, the reason ([`ImageError::reason`]) the container's waiting
/// reason.
#[derive(Debug, thiserror::Error)]
enum ImageError {
    /// The runtime could not say whether the image is present.
    #[error("{}", .0.message())]
    Lookup(RuntimeError),
    /// This binary's own image could not be built.
    #[error("Failed to build image {image:?}: {}", .source.message())]
    Build {
        /// The image reference.
        image: String,
        /// Why.
        source: RuntimeError,
    },
    /// Absent, and the pull policy is `Never`.
    #[error("Container image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
    /// The last pull failed and its back-off has not passed.
    #[error("Back-off pulling image {0:?}")]
    BackOff(String),
    /// The pull failed.
    #[error("Failed to pull image {image:?}: {}", .source.message())]
    Pull {
        /// The image reference.
        image: String,
        /// Why.
        source: RuntimeError,
    },
}

impl ImageError {
    fn reason(&self) -> &'static str {
        match self {
            ImageError::NeverPull(_) => "ErrImageNeverPull",
            ImageError::BackOff(_) => "ImagePullBackOff",
            ImageError::Lookup(_) | ImageError::Build { .. } | ImageError::Pull { .. } => {
                "ErrImagePull"
            }
        }
    }
}

/// Why a container could not be started; shown as its waiting reason
/// ([`StartError::reason`]) and message.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// Its image is not there.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Its environment or mounts cannot be made.
    #[error(transparent)]
    Config(VolumeError),
    /// An ephemeral container's target does not run.
    #[error("target container {0:?} is not running")]
    TargetNotRunning(String),
    /// CRI CreateContainer failed.
    #[error("{}", .0.message())]
    Create(tonic::Status),
    /// CRI StartContainer failed.
    #[error("{}", .0.message())]
    Run(tonic::Status),
}

impl StartError {
    fn reason(&self) -> &'static str {
        match self {
            StartError::Image(e) => e.reason(),
            StartError::Config(_) | StartError::TargetNotRunning(_) => "CreateContainerConfigError",
            StartError::Create(_) => "CreateContainerError",
            StartError::Run(_) => "RunContainerError",
        }
    }
}

/// Why a container waits, as its status shows it.
#[derive(Clone, Debug, PartialEq)]
struct Waiting {
    reason: &'static str,
    message: String,
}

impl Waiting {
    fn new(reason: &'static str, message: impl Into<String>) -> Waiting {
        Waiting {
            reason,
            message: message.into(),
        }
    }
}

impl From<&StartError> for Waiting {
    fn from(e: &StartError) -> Waiting {
        Waiting::new(e.reason(), e.to_string())
    }
}

/// Per-container memory of the worker (lost on restart, by design:
/// restart counts come from the runtime's attempt numbers).
#[derive(Default)]
struct ContainerMemory {
    backoff: Option<Duration>,
    backoff_until: Option<Instant>,
    /// The id of the exited container the back-off was computed for.
    backoff_for: String,
    /// What to show while no container exists or it waits.
    waiting: Option<Waiting>,
    /// Probe states belong to one container id.
    probed_id: String,
    startup: Option<ProbeState>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
    pull_backoff_until: Option<Instant>,
    pull_failures: u32,
}

/// What the runtime has for one container name.
#[derive(Clone, Debug)]
struct Found {
    latest: api::ContainerStatus,
    previous: Option<api::ContainerStatus>,
}

/// The worker of one pod.
pub struct Worker {
    ctx: Arc<PodContext>,
    pod: Pod,
    uid: String,
    /// Where the pod is in its life; changed only through [`Worker::fire`].
    phase: Phase,
    mem: HashMap<String, ContainerMemory>,
    volumes: Option<HashMap<String, std::path::PathBuf>>,
    volumes_at: Option<Instant>,
    /// Service-account tokens of the pod's projected volumes.
    tokens: volumes::TokenCache,
    last_status: Option<Value>,
    last_events: HashMap<String, (String, Instant)>,
    start_time: Option<String>,
    /// Containers read by the last step when it changed nothing, reused
    /// for the status.
    last_found: Option<HashMap<String, Found>>,
    /// A probe killed a container after the last read.
    acted_since_read: bool,
    /// In-place resize: the cpu/memory requests and limits this node
    /// admitted per regular container (what its containers are created
    /// with; [`resize::of_container`] shape).
    allocated: HashMap<String, Value>,
    /// In-place resize: what the running container of each name was
    /// created with or last updated to, with its CRI id.
    actuated: HashMap<String, (String, Value)>,
    /// A resize that does not fit: (reason, message) of the
    /// `PodResizePending` condition.
    resize_pending: Option<(&'static str, String)>,
    /// Why the last attempt to apply an admitted resize failed.
    resize_error: Option<String>,
}

fn key(init: bool, name: &str) -> String {
    if init {
        format!("init/{name}")
    } else {
        name.to_string()
    }
}

/// What a container is to its pod: how it is keyed, labelled and run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// An init container: runs to completion, in order, first.
    Init,
    /// A regular container.
    Regular,
    /// An ephemeral container (`kubectl debug`): started once, never
    /// restarted, optionally in the process namespace of `target`.
    Ephemeral {
        /// The container whose processes it sees.
        target: Option<String>,
    },
}

impl Kind {
    fn of(init: bool) -> Kind {
        if init { Kind::Init } else { Kind::Regular }
    }

    fn is_init(&self) -> bool {
        *self == Kind::Init
    }

    fn key(&self, name: &str) -> String {
        match self {
            Kind::Ephemeral { .. } => ephemeral_key(name),
            k => key(k.is_init(), name),
        }
    }
}

fn ephemeral_key(name: &str) -> String {
    format!("ephemeral/{name}")
}

/// An ephemeral container as the container it runs as (the fields they
/// share; `targetContainerName` is the worker's business).
fn ephemeral_as_container(ec: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(ec).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("targetContainerName");
    }
    serde_json::from_value(v).unwrap_or_default()
}

fn rfc3339_from_nanos(ns: i64) -> Option<String> {
    if ns <= 0 {
        return None;
    }
    let secs = ns / 1_000_000_000;
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Worker {
    /// A worker for `pod`.
    pub fn new(ctx: Arc<PodContext>, pod: Pod) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        // What an earlier run of this node role admitted, as the status
        // it wrote says (kubelet keeps a checkpoint; the API is ours).
        let allocated = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|cs| {
                let r = cs.resources.as_ref()?;
                Some((
                    cs.name.clone(),
                    resize::only_cpu_memory(&serde_json::to_value(r).ok()?),
                ))
            })
            .collect();
        Worker {
            ctx,
            pod,
            uid,
            phase: Phase::new(),
            mem: HashMap::new(),
            volumes: None,
            volumes_at: None,
            tokens: Default::default(),
            last_status: None,
            last_events: HashMap::new(),
            start_time,
            last_found: None,
            acted_since_read: false,
            allocated,
            actuated: HashMap::new(),
            resize_pending: None,
            resize_error: None,
        }
    }

    /// Moves the pod to the phase `event` leads to; returns the phase it
    /// left, or `None` when `event` means nothing in the current phase
    /// (which then stays).
    fn fire(&mut self, event: Event) -> Option<Phase> {
        match self.phase.on(event.clone()) {
            Some(next) => {
                if std::mem::discriminant(&next) != std::mem::discriminant(&self.phase) {
                    debug!(pod = %self.name(), from = ?self.phase, to = ?next, "pod worker phase");
                }
                Some(std::mem::replace(&mut self.phase, next))
            }
            None => {
                debug!(pod = %self.name(), phase = ?self.phase, ?event, "event ignored in this phase");
                None
            }
        }
    }

    /// Something is to be done: the next turn comes in a second.
    fn unsettle(&mut self) {
        if self.phase.steady() {
            self.fire(Event::Steady(false));
        }
    }

    /// The pod's IP while it has one.
    fn pod_ip(&self) -> String {
        self.phase.pod_ip().unwrap_or_default().to_string()
    }

    /// The newest Pod object from the API.
    pub fn update(&mut self, pod: Pod) {
        self.pod = pod;
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn namespace(&self) -> String {
        self.pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    fn spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.clone().unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.spec()
            .restart_policy
            .unwrap_or_else(|| "Always".into())
    }

    /// Records an event on the pod (the same reason and message at most
    /// once a minute).
    fn event(&mut self, type_: &str, reason: &str, message: String) {
        let k = reason.to_string();
        if let Some((m, at)) = self.last_events.get(&k)
            && *m == message
            && at.elapsed() < Duration::from_secs(60)
        {
            return;
        }
        self.last_events
            .insert(k, (message.clone(), Instant::now()));
        let ctx = self.ctx.clone();
        let pod = self.pod.clone();
        let type_ = type_.to_string();
        let reason = reason.to_string();
        tokio::spawn(async move { ctx.event(&pod, &type_, &reason, &message).await });
    }

    /// How long the worker may sleep before its next turn, unless woken:
    /// a second while anything is starting, restarting or waiting;
    /// when steady, until the next probe is due, at most [`STEADY_RESYNC`].
    pub fn next_wake(&self) -> Duration {
        if !self.phase.steady() {
            return Duration::from_secs(1);
        }
        let now = Instant::now();
        self.mem
            .values()
            .flat_map(|m| [&m.startup, &m.liveness, &m.readiness])
            .flatten()
            .map(|p| p.next.saturating_duration_since(now))
            .fold(STEADY_RESYNC, Duration::min)
            .max(Duration::from_millis(100))
    }

    /// One turn.
    pub async fn sync(&mut self) -> Next {
        if self.pod.metadata.deletion_timestamp.is_some() {
            self.fire(Event::Deleting);
        } else if self.phase.runs() {
            let phase = self
                .pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                self.fire(Event::Completed);
            }
        }
        match &self.phase {
            Phase::NoSandbox { .. } | Phase::Running { .. } => {
                if let Err(e) = self.step().await {
                    debug!(pod = %self.name(), error = %e, "pod sync step");
                }
                self.write_status().await
            }
            Phase::Finished {
                sandboxes_stopped: false,
                ..
            } => {
                // The sandbox is stopped (its IP goes back) but kept with
                // its exited containers, so `kubectl logs` still reads
                // them, until the pod is deleted. This also covers
                // sandboxes found after a node role restart.
                let mut stopped = true;
                for id in self.sandboxes_of_pod().await {
                    if let Err(s) = self
                        .ctx
                        .cri
                        .runtime()
                        .stop_pod_sandbox(api::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await
                    {
                        warn!(sandbox = %id, error = %s.message(), "stopping the sandbox of a finished pod");
                        stopped = false;
                    }
                }
                if stopped {
                    self.fire(Event::SandboxesStopped);
                }
                Next::Continue
            }
            Phase::Finished { .. } => Next::Continue,
            Phase::Terminating { .. } => {
                let grace = self
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0);
                self.kill_all(grace, self.pod_ip()).await;
                self.fire(Event::ContainersStopped);
                if self.phase == Phase::Done {
                    return Next::Done;
                }
                self.finalize().await
            }
            Phase::Terminated => self.finalize().await,
            Phase::Done => Next::Done,
        }
    }

    /// Finds or creates the sandbox; starts what should run.
    async fn step(&mut self) -> Result<(), SyncError> {
        self.unsettle();
        self.last_found = None;
        let Sandbox {
            id: sandbox_id,
            ip: pod_ip,
        } = self.ensure_sandbox().await?;
        self.ensure_volumes().await?;
        let found = self.find_containers().await?;
        let running = |f: Option<&Found>| {
            f.is_some_and(|f| f.latest.state == api::ContainerState::ContainerRunning as i32)
        };
        let inits_done = self
            .spec()
            .init_containers
            .unwrap_or_default()
            .iter()
            .all(|c| {
                found.get(&key(true, &c.name)).is_some_and(|f| {
                    f.latest.state == api::ContainerState::ContainerExited as i32
                        && f.latest.exit_code == 0
                })
            });
        let all_running = self
            .spec()
            .containers
            .iter()
            .all(|c| running(found.get(&key(false, &c.name))));
        let ephemerals = self.spec().ephemeral_containers.unwrap_or_default();
        let all_running = all_running
            && ephemerals
                .iter()
                .all(|ec| found.contains_key(&ephemeral_key(&ec.name)));
        if inits_done && all_running {
            // Only probes can act now; the containers read are current.
            self.fire(Event::Steady(true));
            self.last_found = Some(found.clone());
        }
        // Init containers, one at a time, in order.
        let inits = self.spec().init_containers.unwrap_or_default();
        for c in &inits {
            match found.get(&key(true, &c.name)).map(|f| &f.latest) {
                Some(st)
                    if st.state == api::ContainerState::ContainerExited as i32
                        && st.exit_code == 0 =>
                {
                    continue;
                }
                Some(st) if st.state == api::ContainerState::ContainerRunning as i32 => {
                    return Ok(());
                }
                Some(st) if st.state == api::ContainerState::ContainerExited as i32 => {
                    if self.restart_policy() == "Never" {
                        return Ok(());
                    }
                    let st = st.clone();
                    self.maybe_restart(c, true, &st, &sandbox_id, &pod_ip).await;
                    return Ok(());
                }
                Some(st) if st.state == api::ContainerState::ContainerCreated as i32 => {
                    let id = st.id.clone();
                    self.start_created(c, &Kind::Init, &id).await;
                    return Ok(());
                }
                _ => {
                    self.start(c, &Kind::Init, 0, &sandbox_id, &pod_ip).await;
                    return Ok(());
                }
            }
        }
        for c in &self.spec().containers {
            let f = found.get(&key(false, &c.name)).cloned();
            match f.as_ref().map(|f| &f.latest) {
                None => self.start(c, &Kind::Regular, 0, &sandbox_id, &pod_ip).await,
                Some(st) if st.state == api::ContainerState::ContainerRunning as i32 => {
                    let st = st.clone();
                    self.probe(c, &st, &pod_ip).await;
                }
                Some(st) if st.state == api::ContainerState::ContainerCreated as i32 => {
                    let id = st.id.clone();
                    self.start_created(c, &Kind::Regular, &id).await;
                }
                Some(st) => {
                    let st = st.clone();
                    if self.should_restart(st.exit_code) {
                        self.maybe_restart(c, false, &st, &sandbox_id, &pod_ip)
                            .await;
                    }
                }
            }
        }
        if inits_done {
            self.resize(&found).await;
        }
        // Ephemeral containers: started once, after the pod runs; one that
        // exited stays exited.
        if inits_done {
            for ec in &ephemerals {
                let f = found
                    .get(&ephemeral_key(&ec.name))
                    .map(|f| f.latest.clone());
                let kind = Kind::Ephemeral {
                    target: ec.target_container_name.clone(),
                };
                let c = ephemeral_as_container(ec);
                match f {
                    None => self.start(&c, &kind, 0, &sandbox_id, &pod_ip).await,
                    Some(st) if st.state == api::ContainerState::ContainerCreated as i32 => {
                        self.start_created(&c, &kind, &st.id).await;
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// In-place resize: admits a change of the regular containers'
    /// cpu/memory (when it fits the node, else records why it is
    /// pending), then applies what is admitted to the running containers
    /// through CRI `UpdateContainerResources`, or restarts a container
    /// whose `resizePolicy` asks for it. The pod cgroup has no limits of
    /// its own here (only the containers' cgroups do), so nothing else
    /// changes.
    async fn resize(&mut self, found: &HashMap<String, Found>) {
        let spec = self.spec();
        let desired: Vec<(String, Value)> = spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), resize::of_container(c)))
            .collect();
        for (name, d) in &desired {
            self.allocated
                .entry(name.clone())
                .or_insert_with(|| d.clone());
        }
        let wanted = desired
            .iter()
            .any(|(name, d)| !resize::changed(&self.allocated[name], d).is_empty());
        if !wanted {
            self.resize_pending = None;
        } else {
            match self.resize_fit(&desired).await {
                Ok(Fit::Fits) => {
                    info!(pod = %self.name(), "resize admitted");
                    self.allocated.extend(desired);
                    self.resize_pending = None;
                }
                Ok(Fit::Deferred(m)) => self.resize_pending = Some(("Deferred", m)),
                Ok(Fit::Infeasible(m)) => self.resize_pending = Some(("Infeasible", m)),
                Err(e) => debug!(pod = %self.name(), error = %e, "cannot judge a resize"),
            }
        }
        self.resize_error = None;
        for c in &spec.containers {
            let Some(f) = found.get(&key(false, &c.name)) else {
                continue;
            };
            if f.latest.state != api::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let id = f.latest.id.clone();
            let alloc = self.allocated[&c.name].clone();
            let applied = match self.actuated.get(&c.name) {
                Some((aid, r)) if *aid == id => Some(r.clone()),
                _ => None,
            };
            let changes = applied
                .as_ref()
                .map(|a| resize::changed(a, &alloc))
                .unwrap_or_default();
            if applied.is_some() && changes.is_empty() {
                continue;
            }
            if resize::restart_needed(c, &changes) {
                // Its successor is created with the allocation.
                self.actuated.remove(&c.name);
                self.kill_for_restart(c, &id, "needs a restart to be resized")
                    .await;
                continue;
            }
            // Kubelet's best effort against an OOM kill: a memory limit
            // is not lowered below what the container uses.
            if let (Some(a), Some(limit)) = (&applied, resize::amount(&alloc, "limits", "memory"))
                && resize::amount(a, "limits", "memory").is_none_or(|old| limit < old)
                && let Some(usage) = self.memory_usage(&id).await
                && usage > limit
            {
                self.resize_error = Some(resize::below_usage(&c.name, limit, usage));
                continue;
            }
            let req = api::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(resize::linux(c, &alloc)),
                ..Default::default()
            };
            match self.ctx.cri.runtime().update_container_resources(req).await {
                Ok(_) => {
                    if applied.is_some() {
                        info!(pod = %self.name(), container = %c.name, "container resized");
                    }
                    self.actuated.insert(c.name.clone(), (id, alloc));
                }
                Err(s) => {
                    self.resize_error = Some(format!(
                        "updating the resources of container {:?}: {}",
                        c.name,
                        s.message()
                    ));
                }
            }
        }
        if self.resize_error.is_some() {
            self.unsettle();
        }
    }

    /// Whether the containers' resources `desired` fit this node: the
    /// node's allocatable against the other pods bound to it.
    async fn resize_fit(&self, desired: &[(String, Value)]) -> Result<Fit, kube::Error> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.ctx.client.clone());
        let node = nodes.get(&self.ctx.node_name).await?;
        let alloc = node.status.and_then(|s| s.allocatable).unwrap_or_default();
        let alloc = serde_json::to_value(alloc).unwrap_or_default();
        let allocatable = (
            resize::amount(&json!({"r": alloc}), "r", "cpu").unwrap_or(0),
            resize::amount(&json!({"r": alloc}), "r", "memory").unwrap_or(0),
        );
        let want = resize::requests(desired.iter().map(|(_, d)| d));
        if want.0 > allocatable.0 || want.1 > allocatable.1 {
            return Ok(resize::fit(want, (0, 0), allocatable));
        }
        let pods: Api<Pod> = Api::all(self.ctx.client.clone());
        let lp = kube::api::ListParams::default()
            .fields(&format!("spec.nodeName={}", self.ctx.node_name));
        let mut others = (0, 0);
        for p in pods.list(&lp).await? {
            let done = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if done || p.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                continue;
            }
            let (cpu, mem) = resize::held_by(&p);
            others.0 += cpu;
            others.1 += mem;
        }
        Ok(resize::fit(want, others, allocatable))
    }

    /// The memory container `id` uses now, as the runtime measures it.
    async fn memory_usage(&self, id: &str) -> Option<i128> {
        let st = self
            .ctx
            .cri
            .runtime()
            .container_stats(api::ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await
            .ok()?
            .into_inner();
        st.stats?.memory?.usage_bytes.map(|u| i128::from(u.value))
    }

    fn should_restart(&self, exit_code: i32) -> bool {
        match self.restart_policy().as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        }
    }

    /// The pod's ready sandbox: the one it has if still ready, else one
    /// adopted (after a node role restart) or created.
    async fn ensure_sandbox(&mut self) -> Result<Sandbox, SyncError> {
        let cri = self.ctx.cri.clone();
        let mut rt = cri.runtime();
        if let Some(sb) = self.phase.sandbox().cloned() {
            // Still ready? A sandbox that died takes its network with it.
            let st = rt
                .pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: sb.id.clone(),
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().status.map(|s| s.state))
                .unwrap_or(None);
            if st == Some(api::PodSandboxState::SandboxReady as i32) {
                return Ok(sb);
            }
            warn!(pod = %self.name(), sandbox = %sb.id, "pod sandbox is no longer ready; recreating it");
            self.stop_sandbox(&sb.id).await;
            self.fire(Event::SandboxLost);
        }
        // Adopt a ready sandbox of this pod (after a node role restart).
        let list = rt
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: [(LABEL_POD_UID.to_string(), self.uid.clone())].into(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|status| SyncError::Cri {
                call: "ListPodSandbox",
                status,
            })?
            .into_inner()
            .items;
        let mut attempt = 0;
        let mut adopted = None;
        for sb in &list {
            let a = sb.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            attempt = attempt.max(a + 1);
            if sb.state == api::PodSandboxState::SandboxReady as i32 && adopted.is_none() {
                let ip = self.sandbox_ip(&sb.id).await;
                info!(pod = %self.name(), sandbox = %sb.id, "adopted running pod sandbox");
                adopted = Some(Sandbox {
                    id: sb.id.clone(),
                    ip,
                });
            }
        }
        if let Some(sb) = adopted {
            self.fire(Event::SandboxReady(sb.clone()));
            return Ok(sb);
        }
        // Stale (not ready) sandboxes of this pod go first.
        for sb in &list {
            self.stop_sandbox(&sb.id).await;
        }
        if let Phase::NoSandbox {
            retry_at: Some(t), ..
        } = self.phase
            && Instant::now() < t
        {
            return Err(SyncError::SandboxBackoff);
        }
        let paths = &self.ctx.paths;
        let log_dir = paths.log_dir(&self.pod);
        let pod_dir = paths.pod_dir(&self.uid);
        for d in [&log_dir, &pod_dir] {
            std::fs::create_dir_all(d).map_err(|source| SyncError::Dir {
                path: d.clone(),
                source,
            })?;
        }
        let cfg = spec::sandbox_config(&self.pod, attempt, paths, self.ctx.pod_dns(&self.pod));
        let started = Instant::now();
        match rt
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
        {
            Ok(r) => {
                let id = r.into_inner().pod_sandbox_id;
                let ip = self.sandbox_ip(&id).await;
                debug!(pod = %self.name(), sandbox = %id, %ip, took = ?started.elapsed(), "pod sandbox running");
                let sb = Sandbox { id, ip };
                self.fire(Event::SandboxReady(sb.clone()));
                Ok(sb)
            }
            Err(s) => {
                self.fire(Event::SandboxFailed { at: Instant::now() });
                let e = SyncError::CreateSandbox(s);
                warn!(pod = %self.name(), error = %e, "pod sandbox");
                self.event("Warning", "FailedCreatePodSandBox", e.to_string());
                Err(e)
            }
        }
    }

    async fn sandbox_ip(&self, id: &str) -> String {
        if spec::host_network(&self.pod) {
            return self.ctx.node_ip.clone();
        }
        self.ctx
            .cri
            .runtime()
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().status)
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// Ids of every sandbox of this pod, ready or not.
    async fn sandboxes_of_pod(&self) -> Vec<String> {
        self.ctx
            .cri
            .runtime()
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: [(LABEL_POD_UID.to_string(), self.uid.clone())].into(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().items.into_iter().map(|s| s.id).collect())
            .unwrap_or_default()
    }

    async fn stop_sandbox(&self, id: &str) {
        let mut rt = self.ctx.cri.runtime();
        if let Err(s) = rt
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
        {
            warn!(sandbox = %id, error = %s.message(), "stopping pod sandbox");
        }
        if let Err(s) = rt
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
        {
            warn!(sandbox = %id, error = %s.message(), "removing pod sandbox");
        }
    }

    async fn ensure_volumes(&mut self) -> Result<(), SyncError> {
        if self.volumes.is_some()
            && self
                .volumes_at
                .is_some_and(|t| t.elapsed() < VOLUME_REFRESH)
        {
            return Ok(());
        }
        let client = self.ctx.client.clone();
        let mut sources = volumes::Sources::new(&client, &self.namespace());
        match volumes::prepare(&mut sources, &self.pod, &self.ctx.paths, &mut self.tokens).await {
            Ok(v) => {
                self.volumes = Some(v);
                self.volumes_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                self.event("Warning", "FailedMount", e.to_string());
                if self.volumes.is_some() {
                    // Keep serving the last good content.
                    self.volumes_at = Some(Instant::now());
                    return Ok(());
                }
                for c in self.all_containers() {
                    self.mem.entry(key(c.1, &c.0.name)).or_default().waiting =
                        Some(Waiting::new("ContainerCreating", ""));
                }
                Err(e.into())
            }
        }
    }

    fn all_containers(&self) -> Vec<(Container, bool)> {
        let s = self.spec();
        s.init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, true))
            .chain(s.containers.into_iter().map(|c| (c, false)))
            .collect()
    }

    /// The newest and the one-before container of each name.
    async fn find_containers(&self) -> Result<HashMap<String, Found>, SyncError> {
        let mut rt = self.ctx.cri.runtime();
        let list = rt
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    label_selector: [(LABEL_POD_UID.to_string(), self.uid.clone())].into(),
                    pod_sandbox_id: self
                        .phase
                        .sandbox()
                        .map(|s| s.id.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|status| SyncError::Cri {
                call: "ListContainers",
                status,
            })?
            .into_inner()
            .containers;
        let mut by_name: HashMap<String, Vec<api::Container>> = HashMap::new();
        for c in list {
            let kind = c.labels.get(LABEL_CONTAINER_KIND).map(String::as_str);
            let name = c
                .labels
                .get(LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            let k = match kind {
                Some("ephemeral") => ephemeral_key(&name),
                k => key(k == Some("init"), &name),
            };
            by_name.entry(k).or_default().push(c);
        }
        let mut out = HashMap::new();
        for (k, mut v) in by_name {
            v.sort_by_key(|c| {
                std::cmp::Reverse(c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0))
            });
            let status = |id: String| {
                let mut rt = rt.clone();
                async move {
                    rt.container_status(api::ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status)
                }
            };
            let Some(latest) = status(v[0].id.clone()).await else {
                continue;
            };
            let previous = match v.get(1) {
                Some(p) => status(p.id.clone()).await,
                None => None,
            };
            // Older attempts than the previous one are garbage.
            for old in v.iter().skip(2) {
                let _ = rt
                    .remove_container(api::RemoveContainerRequest {
                        container_id: old.id.clone(),
                    })
                    .await;
            }
            out.insert(k, Found { latest, previous });
        }
        Ok(out)
    }

    async fn ensure_image(&mut self, c: &Container, k: &str) -> Result<String, ImageError> {
        let image = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            let tag = image.rsplit('/').next().unwrap_or("");
            if image.contains('@') || (tag.contains(':') && !tag.ends_with(":latest")) {
                "IfNotPresent".into()
            } else {
                "Always".into()
            }
        });
        let present = self
            .ctx
            .cri
            .image_id(&image)
            .await
            .map_err(ImageError::Lookup)?;
        if present.is_some() && policy != "Always" {
            self.event(
                "Normal",
                &format!("Pulled/{k}"),
                format!("Container image {image:?} already present on machine"),
            );
            return Ok(image);
        }
        if image == rke2_runtime::addon_image::reference() {
            // This binary's own image: made here, never pulled.
            return match self.ctx.addon_image.ensure().await {
                Ok(_) => Ok(image),
                Err(source) => {
                    let e = ImageError::Build { image, source };
                    self.event("Warning", &format!("Failed/{k}"), e.to_string());
                    Err(e)
                }
            };
        }
        if policy == "Never" {
            return Err(ImageError::NeverPull(image));
        }
        let m = self.mem.entry(k.to_string()).or_default();
        if let Some(t) = m.pull_backoff_until
            && Instant::now() < t
        {
            return Err(ImageError::BackOff(image));
        }
        self.event(
            "Normal",
            &format!("Pulling/{k}"),
            format!("Pulling image {image:?}"),
        );
        match self.ctx.cri.pull(&image).await {
            Ok(_) => {
                let m = self.mem.entry(k.to_string()).or_default();
                m.pull_failures = 0;
                m.pull_backoff_until = None;
                Ok(image)
            }
            Err(source) => {
                let m = self.mem.entry(k.to_string()).or_default();
                m.pull_failures += 1;
                m.pull_backoff_until =
                    Some(Instant::now() + Duration::from_secs(5 << m.pull_failures.min(6)));
                let e = ImageError::Pull { image, source };
                self.event("Warning", &format!("Failed/{k}"), e.to_string());
                Err(e)
            }
        }
    }

    async fn start(
        &mut self,
        c: &Container,
        kind: &Kind,
        attempt: u32,
        sandbox_id: &str,
        pod_ip: &str,
    ) {
        let k = kind.key(&c.name);
        let image = match self.ensure_image(c, &k).await {
            Ok(i) => i,
            Err(e) => {
                self.wait(k, &e.into());
                return;
            }
        };
        let client = self.ctx.client.clone();
        let mut sources = volumes::Sources::new(&client, &self.namespace());
        let mut pod = self.pod.clone();
        if let Some(st) = pod.status.as_mut() {
            st.pod_ip = Some(pod_ip.to_string());
            st.host_ip = Some(self.ctx.node_ip.clone());
        }
        let svc = self.ctx.kubernetes_service.clone();
        let env = volumes::resolve_env(
            &mut sources,
            &pod,
            c,
            svc.as_ref().map(|(ip, port)| (ip.as_str(), *port)),
        )
        .await;
        let (env, order) = match env {
            Ok(e) => e,
            Err(e) => {
                let e = StartError::Config(e);
                self.event("Warning", &format!("Failed/{k}"), format!("Error: {e}"));
                self.wait(k, &e);
                return;
            }
        };
        let mounts = match volumes::mounts(
            &self.pod,
            c,
            self.volumes.as_ref().unwrap_or(&HashMap::new()),
            &env,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.wait(k, &StartError::Config(e));
                return;
            }
        };
        let sandbox_cfg =
            spec::sandbox_config(&self.pod, 0, &self.ctx.paths, self.ctx.pod_dns(&self.pod));
        let mut cfg = spec::container_config(
            &self.pod,
            c,
            attempt,
            &image,
            &env,
            &order,
            &mounts,
            kind.is_init(),
        );
        // A regular container runs with what this node admitted for it,
        // which differs from its spec while a resize is pending.
        let admitted = (*kind == Kind::Regular).then(|| {
            self.allocated
                .entry(c.name.clone())
                .or_insert_with(|| resize::of_container(c))
                .clone()
        });
        if let (Some(res), Some(l)) = (&admitted, cfg.linux.as_mut()) {
            l.resources = Some(resize::linux(c, res));
        }
        if let Kind::Ephemeral { target } = kind {
            cfg.labels
                .insert(LABEL_CONTAINER_KIND.into(), "ephemeral".into());
            if let Some(target) = target {
                // The target's processes, as kubelet's `--target`: its PID
                // namespace.
                let Some(target_id) = self.running_container_id(target).await else {
                    self.wait(k, &StartError::TargetNotRunning(target.clone()));
                    return;
                };
                if let Some(ns) = cfg
                    .linux
                    .as_mut()
                    .and_then(|l| l.security_context.as_mut())
                    .and_then(|sc| sc.namespace_options.as_mut())
                {
                    ns.pid = api::NamespaceMode::Target as i32;
                    ns.target_id = target_id;
                }
            }
        }
        let mut rt = self.ctx.cri.runtime();
        let id = match rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(cfg),
                sandbox_config: Some(sandbox_cfg),
            })
            .await
        {
            Ok(r) => r.into_inner().container_id,
            Err(s) => {
                let e = StartError::Create(s);
                self.event("Warning", &format!("Failed/{k}"), format!("Error: {e}"));
                self.wait(k, &e);
                return;
            }
        };
        self.event(
            "Normal",
            &format!("Created/{k}"),
            format!("Created container {}", c.name),
        );
        if let Some(res) = admitted {
            self.actuated.insert(c.name.clone(), (id.clone(), res));
        }
        self.start_created(c, kind, &id).await;
    }

    /// Shows why container `k` waits.
    fn wait(&mut self, k: String, e: &StartError) {
        self.mem.entry(k).or_default().waiting = Some(e.into());
    }

    /// The CRI id of regular container `name` when it runs.
    async fn running_container_id(&self, name: &str) -> Option<String> {
        let found = self.find_containers().await.ok()?;
        let f = found.get(&key(false, name))?;
        (f.latest.state == api::ContainerState::ContainerRunning as i32)
            .then(|| f.latest.id.clone())
    }

    async fn start_created(&mut self, c: &Container, kind: &Kind, id: &str) {
        let k = kind.key(&c.name);
        let mut rt = self.ctx.cri.runtime();
        match rt
            .start_container(api::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
        {
            Ok(_) => {
                self.event(
                    "Normal",
                    &format!("Started/{k}"),
                    format!("Started container {}", c.name),
                );
                if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    // As kubelet: a failing postStart kills the container,
                    // which then restarts by its policy.
                    let pod_ip = self.pod_ip();
                    let probe = hook_as_probe(hook, 30);
                    if let Outcome::Failure(msg) =
                        probes::run(&self.ctx.cri, c, id, &pod_ip, &probe).await
                    {
                        self.event(
                            "Warning",
                            &format!("FailedPostStartHook/{k}"),
                            format!("PostStartHook failed: {msg}"),
                        );
                        let _ = self
                            .ctx
                            .cri
                            .runtime()
                            .stop_container(api::StopContainerRequest {
                                container_id: id.to_string(),
                                timeout: 0,
                            })
                            .await;
                    }
                }
                let m = self.mem.entry(k).or_default();
                m.waiting = None;
            }
            Err(s) => {
                let e = StartError::Run(s);
                warn!(pod = %self.name(), container = %c.name, error = %e, "container did not start");
                self.event("Warning", &format!("Failed/{k}"), format!("Error: {e}"));
                let m = self.mem.entry(k).or_default();
                m.waiting = Some((&e).into());
                // A container that cannot start counts as one that exited:
                // the next start waits out the back-off.
                let next = m
                    .backoff
                    .map(|b| (b * 2).min(MAX_BACKOFF))
                    .unwrap_or(INITIAL_BACKOFF);
                m.backoff = Some(next);
                m.backoff_until = Some(Instant::now() + next);
                m.backoff_for = id.to_string();
            }
        }
    }

    async fn maybe_restart(
        &mut self,
        c: &Container,
        init: bool,
        st: &api::ContainerStatus,
        sandbox_id: &str,
        pod_ip: &str,
    ) {
        let k = key(init, &c.name);
        let attempt = st.metadata.as_ref().map(|m| m.attempt).unwrap_or(0) + 1;
        let ran = Duration::from_nanos((st.finished_at - st.started_at).max(0) as u64);
        let name = self.name();
        let uid = self.uid.clone();
        let ns = self.namespace();
        let m = self.mem.entry(k.clone()).or_default();
        if m.backoff_for != st.id {
            // A newly exited container: compute the wait before its
            // successor. The very first restart is immediate.
            if ran > BACKOFF_RESET {
                m.backoff = None;
            }
            let wait = match m.backoff {
                None => {
                    m.backoff = Some(INITIAL_BACKOFF);
                    Duration::ZERO
                }
                Some(b) => {
                    m.backoff = Some((b * 2).min(MAX_BACKOFF));
                    b
                }
            };
            m.backoff_for = st.id.clone();
            m.backoff_until = Some(Instant::now() + wait);
        }
        if let Some(t) = m.backoff_until
            && Instant::now() < t
        {
            let secs = m.backoff.map(|b| b.as_secs() / 2).unwrap_or(10).max(10);
            let msg = format!(
                "back-off {secs}s restarting failed container={} pod={name}_{ns}({uid})",
                c.name
            );
            if !matches!(m.waiting.as_ref(), Some(w) if w.reason == "RunContainerError") {
                m.waiting = Some(Waiting::new("CrashLoopBackOff", msg));
            }
            self.event(
                "Warning",
                &format!("BackOff/{k}"),
                "Back-off restarting failed container".into(),
            );
            return;
        }
        self.start(c, &Kind::of(init), attempt, sandbox_id, pod_ip)
            .await;
    }

    async fn probe(&mut self, c: &Container, st: &api::ContainerStatus, pod_ip: &str) {
        let k = key(false, &c.name);
        let started_at = Instant::now()
            - Duration::from_nanos(
                (chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) - st.started_at).max(0)
                    as u64,
            );
        {
            let m = self.mem.entry(k.clone()).or_default();
            if m.probed_id != st.id {
                m.probed_id = st.id.clone();
                m.startup = c
                    .startup_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, started_at, false));
                m.liveness = c
                    .liveness_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, started_at, true));
                m.readiness = c
                    .readiness_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, started_at, false));
            }
        }
        let now = Instant::now();
        let cri = self.ctx.cri.clone();
        // Startup first: liveness and readiness wait until it passes.
        if let (Some(p), Some(s)) = (
            &c.startup_probe,
            self.mem.get(&k).and_then(|m| m.startup.clone()),
        ) && !s.passing
        {
            {
                if now < s.next {
                    return;
                }
                let out = probes::run(&cri, c, &st.id, pod_ip, p).await;
                let mut s = s;
                s.record(p, out == Outcome::Success, Instant::now());
                let failed_out = s.failures >= p.failure_threshold.unwrap_or(3).max(1);
                if let Some(m) = self.mem.get_mut(&k) {
                    m.startup = Some(s);
                }
                if let Outcome::Failure(msg) = out {
                    self.event(
                        "Warning",
                        &format!("Unhealthy/startup/{k}"),
                        format!("Startup probe failed: {msg}"),
                    );
                    if failed_out {
                        self.kill_for_restart(c, &st.id, "failed startup probe")
                            .await;
                    }
                }
                return;
            }
        }
        if let (Some(p), Some(mut s)) = (
            &c.liveness_probe,
            self.mem.get(&k).and_then(|m| m.liveness.clone()),
        ) && now >= s.next
        {
            let out = probes::run(&cri, c, &st.id, pod_ip, p).await;
            let changed = s.record(p, out == Outcome::Success, Instant::now());
            let passing = s.passing;
            if let Some(m) = self.mem.get_mut(&k) {
                m.liveness = Some(s);
            }
            if let Outcome::Failure(msg) = &out {
                self.event(
                    "Warning",
                    &format!("Unhealthy/liveness/{k}"),
                    format!("Liveness probe failed: {msg}"),
                );
            }
            if changed && !passing {
                self.kill_for_restart(c, &st.id, "failed liveness probe")
                    .await;
                return;
            }
        }
        if let (Some(p), Some(mut s)) = (
            &c.readiness_probe,
            self.mem.get(&k).and_then(|m| m.readiness.clone()),
        ) && now >= s.next
        {
            let out = probes::run(&cri, c, &st.id, pod_ip, p).await;
            s.record(p, out == Outcome::Success, Instant::now());
            if let Some(m) = self.mem.get_mut(&k) {
                m.readiness = Some(s);
            }
            if let Outcome::Failure(msg) = out {
                self.event(
                    "Warning",
                    &format!("Unhealthy/readiness/{k}"),
                    format!("Readiness probe failed: {msg}"),
                );
            }
        }
    }

    async fn kill_for_restart(&mut self, c: &Container, id: &str, why: &str) {
        self.acted_since_read = true;
        self.unsettle();
        let grace = self
            .spec()
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0);
        self.event(
            "Normal",
            &format!("Killing/{}", c.name),
            format!("Container {} {why}, will be restarted", c.name),
        );
        let _ = self
            .ctx
            .cri
            .runtime()
            .stop_container(api::StopContainerRequest {
                container_id: id.to_string(),
                timeout: grace,
            })
            .await;
    }

    /// The pod is gone from the API (force deleted, or deleted while this
    /// node was away): every container is stopped with `grace` and
    /// everything of the pod removed; the worker is then done.
    pub async fn gone(&mut self, grace: i64) {
        if self.fire(Event::Gone).is_none() {
            return;
        }
        self.kill_all(grace, self.pod_ip()).await;
        self.fire(Event::ContainersStopped);
    }

    /// Stops every container (SIGTERM, then SIGKILL after `grace`
    /// seconds, all at once; pre-stop hooks first, reaching the pod's IP
    /// while it has one) and removes the sandboxes and the pod's files.
    async fn kill_all(&mut self, grace: i64, pod_ip: String) {
        let mut rt = self.ctx.cri.runtime();
        let list = rt
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    label_selector: [(LABEL_POD_UID.to_string(), self.uid.clone())].into(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default();
        let running: Vec<_> = list
            .into_iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .collect();
        if !running.is_empty() {
            let names: Vec<String> = running
                .iter()
                .filter_map(|c| c.labels.get(LABEL_CONTAINER_NAME).cloned())
                .collect();
            for n in &names {
                self.event(
                    "Normal",
                    &format!("Killing/{n}"),
                    format!("Stopping container {n}"),
                );
            }
        }
        let spec = self.spec();
        let cri = self.ctx.cri.clone();
        let stops = running.iter().map(|c| {
            let mut rt = rt.clone();
            let id = c.id.clone();
            let name = c
                .labels
                .get(LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            let container = spec.containers.iter().find(|x| x.name == name).cloned();
            let cri = cri.clone();
            let pod_ip = pod_ip.clone();
            async move {
                // preStop runs first, inside the grace period; whatever it
                // leaves of the period is the SIGTERM-to-SIGKILL wait.
                let started = Instant::now();
                let mut left = grace;
                if let Some(c) = &container
                    && let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
                {
                    let probe = hook_as_probe(hook, grace);
                    let run = probes::run(&cri, c, &id, &pod_ip, &probe);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(grace.max(0) as u64), run).await;
                    left = (grace - started.elapsed().as_secs() as i64)
                        .max(2)
                        .min(grace.max(0));
                }
                let _ = rt
                    .stop_container(api::StopContainerRequest {
                        container_id: id,
                        timeout: left,
                    })
                    .await;
            }
        });
        futures::future::join_all(stops).await;
        let sandboxes = rt
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: [(LABEL_POD_UID.to_string(), self.uid.clone())].into(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for sb in sandboxes {
            self.stop_sandbox(&sb.id).await;
        }
        let dir = self.ctx.paths.pod_dir(&self.uid);
        if dir.exists() {
            // Memory-backed emptyDirs are mounts.
            rke2_runtime::cleanup::unmount_under(std::slice::from_ref(&dir));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Merges `st` into the pod's stored status; once stored, the answer
    /// becomes `self.pod` and `st` what was last written (so an
    /// unchanged status is not written again).
    async fn patch_status(&mut self, st: Value) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        self.pod = api
            .patch_status(
                &self.name(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": &st })),
            )
            .await?;
        self.last_status = Some(st);
        Ok(())
    }

    /// Refuses the pod at admission (kubelet's `rejectPod`): nothing of it
    /// starts; it ends `Failed` with `reason` and `Pod was rejected:
    /// <message>`, and a Warning event `reason` with `message`.
    pub async fn reject(&mut self, reason: &str, message: String) {
        if self.fire(Event::Rejected).is_none() {
            return;
        }
        self.event("Warning", reason, message.clone());
        let st = json!({
            "phase": "Failed",
            "reason": reason,
            "message": format!("Pod was rejected: {message}"),
            "qosClass": qos_class(&self.spec()),
        });
        if let Err(e) = self.patch_status(st).await {
            warn!(pod = %self.name(), error = %e, "recording a rejection failed");
        }
    }

    /// Evicts the pod (`grace` seconds: 0 for a hard threshold or a local
    /// storage limit): its containers are stopped and it ends `Failed`
    /// with reason `Evicted`, kubelet's message and, under node pressure,
    /// a `DisruptionTarget` condition (`TerminationByKubelet`); its
    /// controller replaces it.
    pub async fn evict(&mut self, e: crate::eviction::Eviction) {
        let crate::eviction::Eviction {
            message,
            grace,
            disruption_condition,
            ..
        } = e;
        let Some(before) = self.fire(Event::Evicted) else {
            return;
        };
        self.event("Warning", "Evicted", message.clone());
        // The pre-stop hooks see the IP the pod had.
        self.kill_all(grace, before.pod_ip().unwrap_or_default().to_string())
            .await;
        let found = self.find_containers().await.unwrap_or_default();
        let mut st = self.status(&found);
        st["phase"] = json!("Failed");
        st["reason"] = json!("Evicted");
        st["message"] = json!(message);
        if let Some(conds) = st["conditions"].as_array_mut() {
            for c in conds.iter_mut() {
                if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                    c["status"] = json!("False");
                    c["reason"] = json!("PodFailed");
                }
            }
            if disruption_condition {
                conds.push(json!({"type": "DisruptionTarget", "status": "True",
                    "reason": "TerminationByKubelet", "message": message,
                    "lastProbeTime": null, "lastTransitionTime": now()}));
            }
        }
        match self.patch_status(st).await {
            Ok(()) => {
                info!(pod = %format!("{}/{}", self.namespace(), self.name()), "pod evicted")
            }
            Err(e) => warn!(pod = %self.name(), error = %e, "recording an eviction failed"),
        }
    }

    /// After termination: the API object goes (grace 0, only this uid).
    async fn finalize(&mut self) -> Next {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name(), &dp).await {
            Ok(_) => {
                self.fire(Event::Removed);
                Next::Done
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                self.fire(Event::Removed);
                Next::Done
            }
            Err(e) => {
                warn!(pod = %self.name(), error = %e, "deleting the terminated pod; retrying");
                Next::Continue
            }
        }
    }

    fn container_state(
        &self,
        c: &Container,
        init: bool,
        f: Option<&Found>,
    ) -> (Value, bool, bool, u32, String, String) {
        // (state json, running, ready, restartCount, containerID, imageID)
        let k = key(init, &c.name);
        let m = self.mem.get(&k);
        let waiting = |reason: &str, message: &str| {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        };
        let Some(f) = f else {
            let w = m.and_then(|m| m.waiting.clone()).unwrap_or_else(|| {
                Waiting::new(
                    if init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    },
                    "",
                )
            });
            return (
                waiting(w.reason, &w.message),
                false,
                false,
                0,
                String::new(),
                String::new(),
            );
        };
        let st = &f.latest;
        let restarts = st.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
        let cid = format!("containerd://{}", st.id);
        let running = st.state == api::ContainerState::ContainerRunning as i32;
        let state = if running {
            json!({"running": {"startedAt": rfc3339_from_nanos(st.started_at)}})
        } else if st.state == api::ContainerState::ContainerExited as i32 {
            let terminated = terminated_json(st);
            let restarting = if init {
                st.exit_code != 0 && self.restart_policy() != "Never"
            } else {
                self.should_restart(st.exit_code)
            };
            if restarting {
                let w = m
                    .and_then(|m| m.waiting.clone())
                    .unwrap_or_else(|| Waiting::new("CrashLoopBackOff", ""));
                waiting(w.reason, &w.message)
            } else {
                json!({"terminated": terminated})
            }
        } else {
            let w = m
                .and_then(|m| m.waiting.clone())
                .unwrap_or_else(|| Waiting::new("ContainerCreating", ""));
            waiting(w.reason, &w.message)
        };
        // A probe's verdict counts only for the container it was made on.
        let verdict = |probe: bool, state: Option<&ProbeState>| {
            !probe || (m.is_some_and(|m| m.probed_id == st.id) && state.is_some_and(|s| s.passing))
        };
        let ready = running
            && verdict(
                c.startup_probe.is_some(),
                m.and_then(|m| m.startup.as_ref()),
            )
            && verdict(
                c.readiness_probe.is_some(),
                m.and_then(|m| m.readiness.as_ref()),
            );
        (state, running, ready, restarts, cid, st.image_ref.clone())
    }

    /// `ephemeralContainerStatuses`: never ready, never restarted.
    fn ephemeral_statuses(
        &self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        found: &HashMap<String, Found>,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for ec in spec.ephemeral_containers.iter().flatten() {
            let k = ephemeral_key(&ec.name);
            let st = found.get(&k).map(|f| &f.latest);
            let state = match st {
                Some(st) if st.state == api::ContainerState::ContainerRunning as i32 => {
                    json!({"running": {"startedAt": rfc3339_from_nanos(st.started_at)}})
                }
                Some(st) if st.state == api::ContainerState::ContainerExited as i32 => {
                    json!({"terminated": terminated_json(st)})
                }
                _ => {
                    let Waiting { reason, message } = self
                        .mem
                        .get(&k)
                        .and_then(|m| m.waiting.clone())
                        .unwrap_or_else(|| Waiting::new("ContainerCreating", ""));
                    let mut w = json!({"reason": reason});
                    if !message.is_empty() {
                        w["message"] = json!(message);
                    }
                    json!({"waiting": w})
                }
            };
            let mut s = json!({"name": ec.name, "image": ec.image, "ready": false,
                "restartCount": 0, "state": state, "lastState": {},
                "imageID": st.map(|st| st.image_ref.clone()).unwrap_or_default()});
            if let Some(st) = st {
                s["containerID"] = json!(format!("containerd://{}", st.id));
            }
            out.push(s);
        }
        out
    }

    /// The status this worker sees now.
    fn status(&self, found: &HashMap<String, Found>) -> Value {
        let spec = self.spec();
        let old = self.pod.status.clone().unwrap_or_default();
        let old_cond = |t: &str| {
            old.conditions
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == t)
        };
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let since = old_cond(t)
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time)
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(now);
            let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(r) = reason.filter(|_| !ok) {
                c["reason"] = json!(r);
            }
            c
        };
        let mut init_statuses = Vec::new();
        let mut initialized = true;
        let mut init_failed = false;
        for c in spec.init_containers.clone().unwrap_or_default() {
            let f = found.get(&key(true, &c.name));
            let (state, _running, _ready, restarts, cid, image_id) =
                self.container_state(&c, true, f);
            let done = f.is_some_and(|f| {
                f.latest.state == api::ContainerState::ContainerExited as i32
                    && f.latest.exit_code == 0
            });
            if f.is_some_and(|f| {
                f.latest.state == api::ContainerState::ContainerExited as i32
                    && f.latest.exit_code != 0
            }) && self.restart_policy() == "Never"
            {
                init_failed = true;
            }
            initialized &= done;
            let mut s = json!({"name": c.name, "image": c.image, "imageID": image_id, "ready": done,
                "restartCount": restarts, "state": state, "started": false});
            if !cid.is_empty() {
                s["containerID"] = json!(cid);
            }
            if let Some(p) = f.and_then(|f| f.previous.as_ref()) {
                s["lastState"] = json!({"terminated": terminated_json(p)});
            } else {
                s["lastState"] = json!({});
            }
            init_statuses.push(s);
        }
        let mut statuses = Vec::new();
        let mut resizing = false;
        let (mut any_running, mut all_ready, mut never_ran, mut waiting_restart) =
            (false, true, false, false);
        let (mut succeeded, mut failed) = (0, 0);
        for c in &spec.containers {
            let f = found.get(&key(false, &c.name));
            let (state, running, ready, restarts, cid, image_id) =
                self.container_state(c, false, f);
            any_running |= running;
            all_ready &= ready;
            if state.get("waiting").is_some() {
                if f.is_none()
                    || f.is_some_and(|f| {
                        f.previous.is_none()
                            && f.latest.state != api::ContainerState::ContainerExited as i32
                    })
                {
                    never_ran = true;
                } else {
                    waiting_restart = true;
                }
            }
            if let Some(t) = state.get("terminated") {
                if t["exitCode"] == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
            let started = running
                && (c.startup_probe.is_none()
                    || self
                        .mem
                        .get(&c.name)
                        .and_then(|m| m.startup.as_ref())
                        .is_some_and(|s| s.passing));
            let mut s = json!({"name": c.name, "image": c.image, "imageID": image_id, "ready": ready,
                "restartCount": restarts, "state": state, "started": started});
            if !cid.is_empty() {
                s["containerID"] = json!(cid);
            }
            let last = match f {
                Some(f)
                    if f.latest.state == api::ContainerState::ContainerExited as i32
                        && state.get("waiting").is_some() =>
                {
                    json!({"terminated": terminated_json(&f.latest)})
                }
                Some(f) => f
                    .previous
                    .as_ref()
                    .map(|p| json!({"terminated": terminated_json(p)}))
                    .unwrap_or(json!({})),
                None => json!({}),
            };
            s["lastState"] = last;
            if let Some(f) = f {
                // What this node admitted (requests) and what the
                // container runs with now.
                let alloc = self
                    .allocated
                    .get(&c.name)
                    .cloned()
                    .unwrap_or_else(|| resize::of_container(c));
                let applied = match self.actuated.get(&c.name) {
                    Some((id, r)) if *id == f.latest.id => Some(r.clone()),
                    _ => None,
                };
                let running = f.latest.state == api::ContainerState::ContainerRunning as i32;
                if running
                    && applied
                        .as_ref()
                        .is_none_or(|r| !resize::changed(r, &alloc).is_empty())
                {
                    resizing = true;
                }
                let actual = applied.unwrap_or_else(|| alloc.clone());
                if let Some(req) = alloc.get("requests") {
                    s["allocatedResources"] = req.clone();
                }
                s["resources"] = actual;
            }
            statuses.push(s);
        }
        let phase = if init_failed {
            "Failed"
        } else if !initialized || never_ran {
            "Pending"
        } else if any_running || waiting_restart {
            "Running"
        } else if failed == 0 && succeeded > 0 {
            "Succeeded"
        } else if failed > 0 {
            "Failed"
        } else {
            "Pending"
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        let containers_ready = all_ready && initialized && !terminal && !spec.containers.is_empty();
        let sandbox_ready = self.phase.sandbox().is_some();
        let pod_ip = self
            .phase
            .sandbox()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let scheduled = old_cond("PodScheduled")
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .unwrap_or_else(|| cond("PodScheduled", true, None));
        let mut conditions = vec![
            cond("PodReadyToStartContainers", sandbox_ready, None),
            cond("Initialized", initialized, Some("ContainersNotInitialized")),
            cond("Ready", containers_ready, Some("ContainersNotReady")),
            cond(
                "ContainersReady",
                containers_ready,
                Some("ContainersNotReady"),
            ),
            scheduled,
        ];
        // In-place resize (upstream 1.35's conditions).
        let generation = self.pod.metadata.generation;
        if let Some((reason, message)) = &self.resize_pending {
            let mut c = cond("PodResizePending", true, None);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            c["observedGeneration"] = json!(generation);
            conditions.push(c);
        }
        if (resizing || self.resize_error.is_some()) && !terminal {
            let mut c = cond("PodResizeInProgress", true, None);
            c["observedGeneration"] = json!(generation);
            if let Some(e) = &self.resize_error {
                c["reason"] = json!("Error");
                c["message"] = json!(e);
            }
            conditions.push(c);
        }
        if terminal {
            for c in conditions.iter_mut() {
                if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                    c["reason"] = json!("PodCompleted");
                }
            }
        }
        let mut st = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.node_ip,
            "hostIPs": [{"ip": self.ctx.node_ip}],
            "startTime": self.start_time.clone().unwrap_or_else(now),
            "containerStatuses": statuses,
            "qosClass": qos_class(&spec),
        });
        if let Some(g) = generation {
            st["observedGeneration"] = json!(g);
        }
        if !init_statuses.is_empty() {
            st["initContainerStatuses"] = json!(init_statuses);
        }
        let ephemeral = self.ephemeral_statuses(&spec, found);
        if !ephemeral.is_empty() {
            st["ephemeralContainerStatuses"] = json!(ephemeral);
        }
        if !pod_ip.is_empty() {
            st["podIP"] = json!(pod_ip);
            st["podIPs"] = json!([{"ip": pod_ip}]);
        }
        st
    }

    async fn write_status(&mut self) -> Next {
        let reuse = self.last_found.take();
        let found = match reuse {
            Some(f) if !self.acted_since_read => Ok(f),
            _ => self.find_containers().await,
        };
        self.acted_since_read = false;
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                debug!(pod = %self.name(), error = %e, "cannot read containers for status");
                return Next::Continue;
            }
        };
        if self.start_time.is_none() {
            self.start_time = Some(now());
        }
        let st = self.status(&found);
        // lastTransitionTime of an unchanged condition is kept from the
        // stored status, so comparing whole values is enough.
        if self.last_status.as_ref() == Some(&st) {
            return Next::Continue;
        }
        let phase = st["phase"].clone();
        let phase_changed = phase
            != self
                .pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .map(Value::from)
                .unwrap_or(Value::Null);
        match self.patch_status(st).await {
            Ok(()) => {
                if phase_changed {
                    info!(pod = %format!("{}/{}", self.namespace(), self.name()), phase = %phase, "pod phase");
                }
                Next::Continue
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // Gone from the API (force deleted): nothing may keep running.
                self.gone(2).await;
                Next::Done
            }
            Err(e) => {
                debug!(pod = %self.name(), error = %e, "pod status write failed");
                Next::Continue
            }
        }
    }
}

/// A lifecycle hook run with the probe machinery (exec, httpGet,
/// tcpSocket); `sleep` hooks become an exec of `sleep`.
fn hook_as_probe(
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    timeout_seconds: i64,
) -> k8s_openapi::api::core::v1::Probe {
    let exec = hook.exec.clone().or_else(|| {
        hook.sleep
            .as_ref()
            .map(|s| k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["sleep".into(), s.seconds.to_string()]),
            })
    });
    k8s_openapi::api::core::v1::Probe {
        exec,
        http_get: hook.http_get.clone(),
        tcp_socket: hook.tcp_socket.clone(),
        timeout_seconds: Some(timeout_seconds.clamp(1, i32::MAX as i64) as i32),
        ..Default::default()
    }
}

fn terminated_json(st: &api::ContainerStatus) -> Value {
    let reason = if !st.reason.is_empty() {
        st.reason.clone()
    } else if st.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    let mut t = json!({
        "exitCode": st.exit_code,
        "reason": reason,
        "containerID": format!("containerd://{}", st.id),
    });
    if let Some(s) = rfc3339_from_nanos(st.started_at) {
        t["startedAt"] = json!(s);
    }
    if let Some(s) = rfc3339_from_nanos(st.finished_at) {
        t["finishedAt"] = json!(s);
    }
    if !st.message.is_empty() {
        t["message"] = json!(st.message);
    }
    t
}

/// The QoS class of a pod, by upstream's rules
/// ([`rke2_apimachinery::qos::qos_class`]).
pub fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    rke2_apimachinery::qos::qos_class(&serde_json::to_value(spec).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos() {
        let spec = |res: Value| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(json!({"containers": [{"name": "c", "resources": res}]}))
                .unwrap()
        };
        assert_eq!(qos_class(&spec(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
    }

    /// A container's waiting reason comes from the kind of failure, its
    /// message is kubelet's.
    #[test]
    fn waiting_reasons_and_messages() {
        let w = |e: StartError| Waiting::from(&e);
        assert_eq!(
            w(ImageError::NeverPull("x:1".into()).into()),
            Waiting::new(
                "ErrImageNeverPull",
                "Container image \"x:1\" is not present with pull policy of Never"
            )
        );
        assert_eq!(
            w(ImageError::BackOff("x:1".into()).into()),
            Waiting::new("ImagePullBackOff", "Back-off pulling image \"x:1\"")
        );
        let pull = ImageError::Pull {
            image: "x:1".into(),
            source: RuntimeError::Cri {
                call: "PullImage",
                code: tonic::Code::NotFound,
                message: "not found".into(),
            },
        };
        assert_eq!(
            w(pull.into()),
            Waiting::new("ErrImagePull", "Failed to pull image \"x:1\": not found")
        );
        assert_eq!(
            w(StartError::Config(VolumeError::NotFound {
                kind: volumes::ObjectKind::Secret,
                name: "s".into(),
            })),
            Waiting::new("CreateContainerConfigError", "secret \"s\" not found")
        );
        assert_eq!(
            w(StartError::TargetNotRunning("app".into())),
            Waiting::new(
                "CreateContainerConfigError",
                "target container \"app\" is not running"
            )
        );
        assert_eq!(
            w(StartError::Create(tonic::Status::unknown("no such file"))),
            Waiting::new("CreateContainerError", "no such file")
        );
        assert_eq!(
            w(StartError::Run(tonic::Status::unknown("exec failed"))),
            Waiting::new("RunContainerError", "exec failed")
        );
        assert_eq!(
            SyncError::CreateSandbox(tonic::Status::unknown("no IP")).to_string(),
            "Failed to create pod sandbox: no IP"
        );
    }

    #[test]
    fn nanos_to_rfc3339() {
        assert_eq!(rfc3339_from_nanos(0), None);
        assert_eq!(
            rfc3339_from_nanos(1_700_000_000_000_000_000).unwrap(),
            "2023-11-14T22:13:20Z"
        );
    }
}
