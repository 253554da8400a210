//! Node-pressure eviction, as kubelet's eviction manager does it: every
//! [`MONITOR_PERIOD`] the node observes its signals (`memory.available`
//! from `MemAvailable`; `nodefs.available`/`nodefs.inodesFree` from
//! `statvfs` of the agent dir; `imagefs.*` likewise of containerd's root;
//! `pid.available` as the smaller of `kernel.pid_max` and
//! `kernel.threads-max` less the tasks that exist) and compares them with
//! the hard and soft thresholds (`kubelet-arg: [eviction-hard=…,
//! eviction-soft=…]`, RKE2's defaults without them: disk at 5%).
//!
//! [`Manager::sync`] is the pure part, kubelet's `synchronize`: a
//! threshold met stays met until its signal is `eviction-minimum-reclaim`
//! above it; a soft one counts only after it was met without a break for
//! its grace period; the conditions (`MemoryPressure`, `DiskPressure`,
//! `PIDPressure`) stay True for `eviction-pressure-transition-period`
//! after their last threshold recovered (the node lifecycle controller
//! taints the node `node.kubernetes.io/<…>-pressure:NoSchedule`). While a
//! threshold counts, the node records the `EvictionThresholdMet` Warning
//! event on the Node ("Attempting to reclaim <resource>") and evicts one
//! pod per period, ranked as kubelet ranks for the resource ([`rank`]):
//! critical pods (priority of `system-cluster-critical` and up) never.
//! The pod is killed at once for a hard threshold, with
//! min(`terminationGracePeriodSeconds`, `eviction-max-pod-grace-period`)
//! for a soft one, and ends `Failed`, reason `Evicted`, kubelet's message.
//!
//! Before a pod is evicted for the disk, every unused image is removed
//! ([`crate::image_gc`], kubelet's node-level reclaim); if that resolves
//! the threshold no pod goes. Images are also collected by the
//! `image-gc-high-threshold`/`image-gc-low-threshold` settings.
//!
//! Each period also enforces the local storage limits before anything
//! else (kubelet's `localStorageEviction`, [`local_storage_violation`]):
//! an emptyDir over its `sizeLimit`, a pod over the sum of its
//! containers' `ephemeral-storage` limits, a container over its own;
//! such a pod is killed at once with kubelet's message (no
//! `DisruptionTarget` condition), and the period evicts nothing else.
//!
//! A pod new to the node is admitted as kubelet's eviction manager
//! admits it ([`admit`]): under memory pressure alone a BestEffort pod is
//! refused, under disk or PID pressure every pod, critical pods never
//! (`Failed`, reason `Evicted`, `Pod was rejected: The node had
//! condition: [DiskPressure]. `).
//!
//! Not done: dead-container garbage collection in the node-level reclaim.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use rke2_apimachinery::eviction::{
    EvictionConfig, Reserved, Threshold, ThresholdValue, value_quantity,
};
use rke2_runtime::cri::api;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pods::PodContext;

/// How often pressure is looked at (kubelet's
/// `evictionMonitoringPeriod`).
pub const MONITOR_PERIOD: Duration = Duration::from_secs(10);

/// Pods at or above this priority are never evicted (kubelet's
/// `IsCriticalPod`: `scheduling.SystemCriticalPriority`).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A node condition eviction reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// `MemoryPressure`.
    Memory,
    /// `DiskPressure`.
    Disk,
    /// `PIDPressure`.
    Pid,
}

impl Condition {
    /// The node condition type (`MemoryPressure`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Condition::Memory => "MemoryPressure",
            Condition::Disk => "DiskPressure",
            Condition::Pid => "PIDPressure",
        }
    }
}

/// What a threshold's pods are ranked and measured by (kubelet's
/// `signalToResource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `memory`.
    Memory,
    /// `ephemeral-storage`, on the filesystem the signal is about.
    Storage(Fs),
    /// `inodes`, on the filesystem the signal is about.
    Inodes(Fs),
    /// `pids`.
    Pids,
}

/// Which filesystem a disk signal observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// The agent dir (pod volumes, logs).
    Node,
    /// containerd's root (images, writable layers).
    Image,
}

impl Resource {
    /// The resource of a signal.
    pub fn of(signal: &str) -> Resource {
        match signal {
            "nodefs.available" => Resource::Storage(Fs::Node),
            "nodefs.inodesFree" => Resource::Inodes(Fs::Node),
            "imagefs.available" | "containerfs.available" => Resource::Storage(Fs::Image),
            "imagefs.inodesFree" | "containerfs.inodesFree" => Resource::Inodes(Fs::Image),
            "pid.available" => Resource::Pids,
            _ => Resource::Memory,
        }
    }

    /// kubelet's name for it (events and messages).
    pub fn name(&self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Storage(_) => "ephemeral-storage",
            Resource::Inodes(_) => "inodes",
            Resource::Pids => "pids",
        }
    }

    /// The condition it reports.
    pub fn condition(&self) -> Condition {
        match self {
            Resource::Memory => Condition::Memory,
            Resource::Storage(_) | Resource::Inodes(_) => Condition::Disk,
            Resource::Pids => Condition::Pid,
        }
    }

    fn is_bytes(&self) -> bool {
        matches!(self, Resource::Memory | Resource::Storage(_))
    }
}

/// The node's pressure conditions and eviction facts, shared by the
/// eviction loop (which sets them) and the node status writer (which
/// reports them).
#[derive(Debug, Default)]
pub struct Pressure {
    memory: AtomicBool,
    disk: AtomicBool,
    pid: AtomicBool,
    facts: Mutex<NodeFacts>,
    changed: Notify,
}

/// What the node status needs from the eviction side: the size of the
/// node filesystem and what the reservations and hard thresholds hold
/// back from pods.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeFacts {
    /// `kube-reserved` and `system-reserved` together.
    pub reserved: Reserved,
    /// The node filesystem's size, bytes (`capacity.ephemeral-storage`).
    pub ephemeral_storage: Option<i128>,
    /// The hard `memory.available` threshold (kubelet subtracts it from
    /// the allocatable memory).
    pub memory_threshold: Option<ThresholdValue>,
    /// The hard `nodefs.available` threshold (subtracted from the
    /// allocatable ephemeral storage).
    pub nodefs_threshold: Option<ThresholdValue>,
}

impl NodeFacts {
    /// `status.allocatable` from `capacity` as kubelet's node allocatable:
    /// the capacity less `kube-reserved`, less `system-reserved`, less the
    /// hard eviction threshold (memory and the node filesystem), never
    /// below zero; (cpu millicores, memory bytes, ephemeral-storage
    /// bytes).
    pub fn allocatable(&self, cpu_milli: i128, memory: i128, storage: i128) -> (i128, i128, i128) {
        let less = |cap: i128, reserved: i128, t: &Option<ThresholdValue>| {
            (cap - reserved - t.as_ref().map(|t| value_quantity(t, cap)).unwrap_or(0)).max(0)
        };
        (
            less(cpu_milli, self.reserved.cpu_milli, &None),
            less(memory, self.reserved.memory, &self.memory_threshold),
            less(
                storage,
                self.reserved.ephemeral_storage,
                &self.nodefs_threshold,
            ),
        )
    }
}

impl Pressure {
    /// Whether a memory threshold is met.
    pub fn memory(&self) -> bool {
        self.memory.load(Ordering::Relaxed)
    }

    /// Whether a disk threshold is met.
    pub fn disk(&self) -> bool {
        self.disk.load(Ordering::Relaxed)
    }

    /// Whether the PID threshold is met.
    pub fn pid(&self) -> bool {
        self.pid.load(Ordering::Relaxed)
    }

    /// Records the memory pressure; wakes the status writer on a change.
    pub fn set_memory(&self, on: bool) {
        self.set(Condition::Memory, on);
    }

    /// Records one condition; wakes the status writer on a change.
    pub fn set(&self, c: Condition, on: bool) {
        let flag = match c {
            Condition::Memory => &self.memory,
            Condition::Disk => &self.disk,
            Condition::Pid => &self.pid,
        };
        if flag.swap(on, Ordering::Relaxed) != on {
            self.changed.notify_one();
        }
    }

    /// The eviction facts for the node status.
    pub fn facts(&self) -> NodeFacts {
        self.facts.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Records the eviction facts; wakes the status writer on a change.
    pub fn set_facts(&self, f: NodeFacts) {
        if let Ok(mut cur) = self.facts.lock()
            && *cur != f
        {
            *cur = f;
            self.changed.notify_one();
        }
    }

    /// The pressure conditions that are True now, in kubelet's order.
    pub fn conditions(&self) -> Vec<Condition> {
        [Condition::Memory, Condition::Disk, Condition::Pid]
            .into_iter()
            .filter(|c| pressure_of(self, *c))
            .collect()
    }

    /// Resolves when a condition changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// One signal observed: what is left and of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Available now (bytes, inodes or pids).
    pub available: i128,
    /// The capacity it is a share of.
    pub capacity: i128,
}

/// The signals observed in one period, by signal name.
pub type Observations = HashMap<String, Observation>;

/// The memory signal now: (available, capacity) in bytes, from
/// `/proc/meminfo`.
pub fn memory_observation() -> Option<(i128, i128)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<(i128, i128)> {
    let field = |name: &str| -> Option<i128> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: i128 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// `statvfs` of `path`: ((available bytes, size bytes), (free inodes,
/// inodes), device).
pub fn fs_observation(path: &Path) -> Option<(Observation, Observation, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given; the path is a
    // valid NUL-terminated string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as i128;
    Some((
        Observation {
            available: s.f_bavail as i128 * frsize,
            capacity: s.f_blocks as i128 * frsize,
        },
        Observation {
            available: s.f_ffree as i128,
            capacity: s.f_files as i128,
        },
        dev,
    ))
}

/// `pid.available` now: the smaller of `pid_max` and `threads-max`, less
/// the tasks (threads) that exist, as kubelet's `pidlimit` reads them.
pub fn pid_observation() -> Option<Observation> {
    let read = |p: &str| -> Option<i128> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let mut max = read("/proc/sys/kernel/pid_max")?;
    if let Some(t) = read("/proc/sys/kernel/threads-max") {
        max = max.min(t);
    }
    // SAFETY: sysinfo fills the zeroed struct it is given.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return None;
    }
    Some(Observation {
        available: max - i128::from(si.procs),
        capacity: max,
    })
}

/// A bytes amount as kubelet prints quantities (`1536Ki`, `100Mi`).
pub fn format_bytes(b: i128) -> String {
    for (unit, size) in [
        ("Ti", 1i128 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if b != 0 && b % size == 0 {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

fn format_amount(r: Resource, v: i128) -> String {
    if r.is_bytes() {
        format_bytes(v)
    } else {
        v.to_string()
    }
}

/// One threshold the manager watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    /// The threshold.
    pub threshold: Threshold,
    /// `None` for a hard threshold; the grace period of a soft one.
    pub grace: Option<Duration>,
    /// `eviction-minimum-reclaim` of its signal.
    pub min_reclaim: Option<ThresholdValue>,
}

impl Watched {
    /// The resource it is about.
    pub fn resource(&self) -> Resource {
        Resource::of(&self.threshold.signal)
    }

    /// Whether `obs` meets it; `reclaim` adds the minimum reclaim (a
    /// threshold already met is resolved only that far above it).
    fn met(&self, obs: &Observations, reclaim: bool) -> bool {
        let Some(o) = obs.get(&self.threshold.signal) else {
            return false;
        };
        let mut q = self.threshold.quantity(o.capacity);
        if reclaim && let Some(m) = &self.min_reclaim {
            q += value_quantity(m, o.capacity);
        }
        o.available < q
    }
}

/// What one period decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The conditions to report True.
    pub conditions: BTreeSet<Condition>,
    /// The threshold to reclaim for now (index into
    /// [`Manager::watched`]), if any counts.
    pub reclaim: Option<usize>,
}

/// kubelet's eviction manager state, without I/O.
#[derive(Debug)]
pub struct Manager {
    /// The thresholds, hard ones first.
    pub watched: Vec<Watched>,
    transition: Duration,
    /// Thresholds that counted last period (met past their grace).
    met: BTreeSet<usize>,
    first_observed: HashMap<usize, Instant>,
    condition_last_observed: HashMap<Condition, Instant>,
}

impl Manager {
    /// A manager for `cfg`.
    pub fn new(cfg: &EvictionConfig) -> Manager {
        let min = |t: &Threshold| cfg.minimum_reclaim.get(&t.signal).cloned();
        let mut watched: Vec<Watched> = cfg
            .hard
            .iter()
            .map(|t| Watched {
                threshold: t.clone(),
                grace: None,
                min_reclaim: min(t),
            })
            .collect();
        watched.extend(cfg.soft.iter().map(|(t, g)| Watched {
            threshold: t.clone(),
            grace: Some(*g),
            min_reclaim: min(t),
        }));
        Manager {
            watched,
            transition: cfg.pressure_transition_period,
            met: BTreeSet::new(),
            first_observed: HashMap::new(),
            condition_last_observed: HashMap::new(),
        }
    }

    /// One period (kubelet's `synchronize` before the ranking).
    pub fn sync(&mut self, obs: &Observations, now: Instant) -> Decision {
        // Met now, or met before and not yet `minimum-reclaim` above.
        let seen: BTreeSet<usize> = (0..self.watched.len())
            .filter(|&i| {
                self.watched[i].met(obs, false)
                    || (self.met.contains(&i) && self.watched[i].met(obs, true))
            })
            .collect();
        self.first_observed.retain(|i, _| seen.contains(i));
        for &i in &seen {
            self.first_observed.entry(i).or_insert(now);
        }
        let mut conditions = BTreeSet::new();
        for &i in &seen {
            let c = self.watched[i].resource().condition();
            self.condition_last_observed.insert(c, now);
            conditions.insert(c);
        }
        // A condition stays for the transition period after its last
        // sighting (kubelet keeps it for `< period`; a period of 0 then
        // reports nothing at all, here it follows the signal).
        self.condition_last_observed
            .retain(|_, at| now.duration_since(*at) < self.transition);
        conditions.extend(self.condition_last_observed.keys().copied());
        self.met = seen
            .into_iter()
            .filter(|i| match self.watched[*i].grace {
                None => true,
                Some(g) => now.duration_since(self.first_observed[i]) >= g,
            })
            .collect();
        // kubelet's `byEvictionPriority`: memory first, then in order.
        let reclaim = self
            .met
            .iter()
            .copied()
            .min_by_key(|&i| (self.watched[i].resource() != Resource::Memory, i));
        Decision {
            conditions,
            reclaim,
        }
    }
}

/// A pod as the ranking sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// The pod's uid.
    pub uid: String,
    /// `namespace/name`, for logs.
    pub name: String,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// `spec.terminationGracePeriodSeconds` (30 when unset).
    pub grace_seconds: i64,
    /// Sum of the containers' memory requests, bytes.
    pub request: i128,
    /// Working set now, bytes.
    pub usage: i128,
    /// Per container: (name, memory usage, memory request), for the
    /// message.
    pub containers: Vec<(String, i128, i128)>,
    /// Sum of the containers' `ephemeral-storage` requests, bytes.
    pub storage_request: i128,
    /// Disk use on each filesystem part.
    pub disk: DiskUsage,
    /// Per container: (name, writable layer + logs bytes, its
    /// ephemeral-storage request), for the message.
    pub container_storage: Vec<(String, i128, i128)>,
    /// Processes (tasks) in the pod's cgroup.
    pub processes: i128,
}

/// A pod's disk use, by what kubelet measures separately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskUsage {
    /// The containers' writable layers (on the image filesystem).
    pub root: (i128, i128),
    /// The containers' logs (on the node filesystem).
    pub logs: (i128, i128),
    /// Disk-backed emptyDirs (on the node filesystem).
    pub volumes: (i128, i128),
}

impl DiskUsage {
    /// (bytes, inodes) that count for a signal on `fs`: with a dedicated
    /// image filesystem, nodefs counts logs and volumes and imagefs the
    /// writable layers; on one filesystem everything counts
    /// (kubelet's `fsStatsToMeasure`).
    pub fn measured(&self, fs: Fs, dedicated_imagefs: bool) -> (i128, i128) {
        let parts: Vec<&(i128, i128)> = match (dedicated_imagefs, fs) {
            (false, _) => vec![&self.root, &self.logs, &self.volumes],
            (true, Fs::Node) => vec![&self.logs, &self.volumes],
            (true, Fs::Image) => vec![&self.root],
        };
        parts
            .into_iter()
            .fold((0, 0), |(b, i), p| (b + p.0, i + p.1))
    }
}

/// The order kubelet evicts in for `resource`, critical pods left out:
/// memory as `rankMemoryPressure` (usage above requests first, then
/// lower priority, then more above the request); storage and inodes as
/// `rankDiskPressureFunc` (the same on the measured disk use against the
/// `ephemeral-storage` request, an inode request being 0); pids as
/// `rankPIDPressure` (lower priority, then more processes).
pub fn rank(
    mut pods: Vec<Candidate>,
    resource: Resource,
    dedicated_imagefs: bool,
) -> Vec<Candidate> {
    pods.retain(|p| p.priority < SYSTEM_CRITICAL_PRIORITY);
    let usage = |p: &Candidate| -> (i128, i128) {
        match resource {
            Resource::Memory => (p.usage, p.request),
            Resource::Storage(fs) => (p.disk.measured(fs, dedicated_imagefs).0, p.storage_request),
            Resource::Inodes(fs) => (p.disk.measured(fs, dedicated_imagefs).1, 0),
            Resource::Pids => (p.processes, 0),
        }
    };
    pods.sort_by(|a, b| {
        let (ua, ra) = usage(a);
        let (ub, rb) = usage(b);
        if resource == Resource::Pids {
            return a.priority.cmp(&b.priority).then(ub.cmp(&ua));
        }
        (ub > rb)
            .cmp(&(ua > ra))
            .then(a.priority.cmp(&b.priority))
            .then((ub - rb).cmp(&(ua - ra)))
    });
    pods
}

/// kubelet's eviction message: the resource, the threshold and what is
/// left, and the containers using more than they request.
pub fn message(w: &Watched, obs: Observation, victim: &Candidate) -> String {
    let r = w.resource();
    let quantity = match w.threshold.value {
        ThresholdValue::Quantity(_) => w.threshold.text.clone(),
        ThresholdValue::Percentage(_) => format_amount(r, w.threshold.quantity(obs.capacity)),
    };
    let mut m = format!(
        "The node was low on resource: {}. Threshold quantity: {quantity}, available: {}. ",
        r.name(),
        format_amount(r, obs.available)
    );
    let per_container = match r {
        Resource::Memory => &victim.containers,
        Resource::Storage(_) => &victim.container_storage,
        _ => return m,
    };
    for (name, usage, request) in per_container {
        if usage > request {
            m.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of {}. ",
                format_bytes(*usage),
                if *request == 0 {
                    "0".to_string()
                } else {
                    format_bytes(*request)
                },
                r.name()
            ));
        }
    }
    m
}

fn request_of(c: &k8s_openapi::api::core::v1::Container, resource: &str) -> i128 {
    let r = c.resources.as_ref();
    let q = r
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get(resource))
        .or_else(|| {
            r.and_then(|r| r.limits.as_ref())
                .and_then(|m| m.get(resource))
        });
    q.and_then(|q| rke2_apimachinery::quantity::parse_quantity(&q.0).ok())
        .map(|q| q.value())
        .unwrap_or(0)
}

/// (bytes, inodes) under `dir`, not following links nor crossing into
/// other filesystems (a memory-backed emptyDir is a tmpfs mount).
fn du(dir: &Path) -> (i128, i128) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut inodes) = (0i128, 0i128);
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != top.dev() {
                continue;
            }
            inodes += 1;
            bytes += i128::from(m.blocks()) * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// Tasks in the pod's cgroup (`pids.current`, cgroup v1 or v2).
fn pod_processes(uid: &str) -> i128 {
    let parent = crate::pods::spec::cgroup_parent(uid);
    for root in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
    ] {
        let p = PathBuf::from(format!("{root}{parent}/pids.current"));
        if let Some(n) = std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return n;
        }
    }
    0
}

/// Per (pod uid, container name): the running container's (working set,
/// writable layer bytes, writable layer inodes), from CRI
/// `ListContainerStats` (containerd reports the writable layer from its
/// snapshotter).
type RuntimeUsage = HashMap<(String, String), (i128, i128, i128)>;

async fn runtime_usage(ctx: &PodContext) -> Option<RuntimeUsage> {
    let mut rt = ctx.cri.runtime();
    let (Ok(ctrs), Ok(stats)) = (
        rt.list_containers(api::ListContainersRequest { filter: None })
            .await,
        rt.list_container_stats(api::ListContainerStatsRequest { filter: None })
            .await,
    ) else {
        return None;
    };
    let measured: HashMap<String, (i128, i128, i128)> = stats
        .into_inner()
        .stats
        .into_iter()
        .filter_map(|s| {
            let id = s.attributes?.id;
            let ws = s
                .memory
                .and_then(|m| m.working_set_bytes)
                .map(|v| i128::from(v.value))
                .unwrap_or(0);
            let (wb, wi) = s
                .writable_layer
                .map(|w| {
                    (
                        w.used_bytes.map(|v| i128::from(v.value)).unwrap_or(0),
                        w.inodes_used.map(|v| i128::from(v.value)).unwrap_or(0),
                    )
                })
                .unwrap_or((0, 0));
            Some((id, (ws, wb, wi)))
        })
        .collect();
    let mut usage = RuntimeUsage::new();
    for c in ctrs.into_inner().containers {
        if c.state != api::ContainerState::ContainerRunning as i32 {
            continue;
        }
        let (Some(uid), Some(name)) = (
            c.labels.get(crate::pods::spec::LABEL_POD_UID),
            c.labels.get(crate::pods::spec::LABEL_CONTAINER_NAME),
        ) else {
            continue;
        };
        if let Some(m) = measured.get(&c.id) {
            let e = usage.entry((uid.clone(), name.clone())).or_default();
            e.0 += m.0;
            e.1 += m.1;
            e.2 += m.2;
        }
    }
    Some(usage)
}

/// Measures `pod`'s local storage: writable layers from `usage`, logs and
/// emptyDirs by walking their directories.
fn pod_storage(ctx: &PodContext, pod: &Pod, usage: &RuntimeUsage) -> PodStorage {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let log_dir = ctx.paths.log_dir(pod);
    let mut out = PodStorage::default();
    for c in &spec.containers {
        let (_, wb, wi) = usage
            .get(&(uid.clone(), c.name.clone()))
            .copied()
            .unwrap_or_default();
        out.containers
            .push((c.name.clone(), (wb, wi), du(&log_dir.join(&c.name))));
    }
    for v in spec.volumes.iter().flatten() {
        let Some(e) = &v.empty_dir else { continue };
        out.empty_dirs.push((
            v.name.clone(),
            e.medium.as_deref() == Some("Memory"),
            du(&ctx.paths.volume_dir(&uid, &v.name)),
        ));
    }
    out
}

/// The pods of this node that are neither finished nor being deleted.
async fn active_pods(ctx: &PodContext) -> Option<Vec<Pod>> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name)))
        .await
        .ok()?;
    Some(
        list.items
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect(),
    )
}

/// The pods of this node that may be evicted, measured for `resource`.
async fn candidates(ctx: &PodContext, resource: Resource) -> Vec<Candidate> {
    let Some(pods) = active_pods(ctx).await else {
        return Vec::new();
    };
    let Some(usage) = runtime_usage(ctx).await else {
        return Vec::new();
    };
    let disk = matches!(resource, Resource::Storage(_) | Resource::Inodes(_));
    let mut out = Vec::new();
    for p in pods {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let spec = p.spec.clone().unwrap_or_default();
        let get = |c: &str| {
            usage
                .get(&(uid.clone(), c.to_string()))
                .copied()
                .unwrap_or_default()
        };
        let containers: Vec<(String, i128, i128)> = spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), get(&c.name).0, request_of(c, "memory")))
            .collect();
        let mut cand = Candidate {
            name: format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or(""),
                p.metadata.name.as_deref().unwrap_or("")
            ),
            uid: uid.clone(),
            priority: if is_critical(&p) {
                SYSTEM_CRITICAL_PRIORITY
            } else {
                spec.priority.unwrap_or(0)
            },
            grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
            request: containers.iter().map(|c| c.2).sum(),
            usage: containers.iter().map(|c| c.1).sum(),
            containers,
            storage_request: spec
                .containers
                .iter()
                .map(|c| request_of(c, "ephemeral-storage"))
                .sum(),
            ..Default::default()
        };
        if disk {
            let st = pod_storage(ctx, &p, &usage);
            for (c, (name, root, logs)) in spec.containers.iter().zip(&st.containers) {
                cand.disk.root.0 += root.0;
                cand.disk.root.1 += root.1;
                cand.disk.logs.0 += logs.0;
                cand.disk.logs.1 += logs.1;
                cand.container_storage.push((
                    name.clone(),
                    root.0 + logs.0,
                    request_of(c, "ephemeral-storage"),
                ));
            }
            for (_, memory, u) in &st.empty_dirs {
                if !memory {
                    cand.disk.volumes.0 += u.0;
                    cand.disk.volumes.1 += u.1;
                }
            }
        }
        if resource == Resource::Pids {
            cand.processes = pod_processes(&uid);
        }
        out.push(cand);
    }
    out
}

/// The pods over a local storage limit ([`local_storage_violation`]),
/// critical ones left out: (uid, name, message).
async fn local_storage_evictions(
    ctx: &PodContext,
    dedicated_imagefs: bool,
) -> Vec<(String, String, String)> {
    let Some(pods) = active_pods(ctx).await else {
        return Vec::new();
    };
    let limited: Vec<Pod> = pods
        .into_iter()
        .filter(|p| !is_critical(p) && p.spec.as_ref().is_some_and(has_storage_limits))
        .collect();
    if limited.is_empty() {
        return Vec::new();
    }
    let Some(usage) = runtime_usage(ctx).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in limited {
        let st = pod_storage(ctx, &p, &usage);
        let spec = p.spec.clone().unwrap_or_default();
        if let Some(msg) = local_storage_violation(&spec, &st, dedicated_imagefs) {
            out.push((
                p.metadata.uid.clone().unwrap_or_default(),
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or("")
                ),
                msg,
            ));
        }
    }
    out
}

/// Whether kubelet counts `pod` as critical (`IsCriticalPod`): a mirror
/// or static pod, or one of priority `system-cluster-critical` and up.
/// Critical pods are admitted under pressure and never evicted.
pub fn is_critical(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let static_or_mirror = annotations.is_some_and(|a| {
        a.contains_key("kubernetes.io/config.mirror")
            || a.get("kubernetes.io/config.source")
                .is_some_and(|s| s != "api")
    });
    static_or_mirror
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// Whether `pod` tolerates the `node.kubernetes.io/memory-pressure:NoSchedule`
/// taint.
fn tolerates_memory_pressure(pod: &Pod) -> bool {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    tolerations.into_iter().flatten().any(|t| {
        let effect_ok = matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
        let key = t.key.as_deref().unwrap_or("");
        match t.operator.as_deref() {
            Some("Exists") => {
                effect_ok && (key.is_empty() || key == "node.kubernetes.io/memory-pressure")
            }
            _ => {
                effect_ok
                    && key == "node.kubernetes.io/memory-pressure"
                    && t.value.as_deref().unwrap_or("").is_empty()
            }
        }
    })
}

/// kubelet's eviction admission (`Admit`) of a pod new to the node under
/// the pressure `conditions`: critical pods are admitted; under memory
/// pressure alone every pod but a BestEffort one (unless it tolerates
/// the memory-pressure taint); under any other pressure none. The error
/// is kubelet's message (`The node had condition: [DiskPressure]. `).
pub fn admit(pod: &Pod, conditions: &[Condition]) -> Result<(), String> {
    if conditions.is_empty() || is_critical(pod) {
        return Ok(());
    }
    if conditions == [Condition::Memory] {
        let best_effort = pod
            .spec
            .as_ref()
            .is_some_and(|s| crate::pods::worker::qos_class(s) == "BestEffort");
        if !best_effort || tolerates_memory_pressure(pod) {
            return Ok(());
        }
    }
    let names: Vec<&str> = conditions.iter().map(Condition::name).collect();
    Err(format!("The node had condition: [{}]. ", names.join(" ")))
}

/// (bytes, inodes) of one part of a pod's storage.
pub type Usage = (i128, i128);

/// A pod's local storage as measured now (kubelet's pod stats).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodStorage {
    /// Per container: (name, writable layer (bytes, inodes), logs (bytes,
    /// inodes)).
    pub containers: Vec<(String, Usage, Usage)>,
    /// Per emptyDir volume: (name, memory-backed, (bytes, inodes)).
    pub empty_dirs: Vec<(String, bool, Usage)>,
}

fn limit_of(
    r: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
    resource: &str,
) -> Option<rke2_apimachinery::quantity::Quantity> {
    let q = r?.limits.as_ref()?.get(resource)?;
    rke2_apimachinery::quantity::parse_quantity(&q.0).ok()
}

/// kubelet's local storage limits (`localStorageEviction`), in its order:
/// an emptyDir over its `sizeLimit`, the pod over the sum of its
/// containers' `ephemeral-storage` limits (writable layers, logs and
/// disk-backed emptyDirs), a container whose logs (and writable layer,
/// unless the image filesystem is its own) are over its limit. The
/// message of the first one broken, as kubelet words it.
pub fn local_storage_violation(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    usage: &PodStorage,
    dedicated_imagefs: bool,
) -> Option<String> {
    use rke2_apimachinery::quantity::{Quantity, parse_quantity};
    for v in spec.volumes.iter().flatten() {
        let Some(size) = v
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.as_ref())
            .and_then(|q| parse_quantity(&q.0).ok())
        else {
            continue;
        };
        let used = usage
            .empty_dirs
            .iter()
            .find(|(n, _, _)| *n == v.name)
            .map(|(_, _, u)| u.0);
        if let Some(used) = used
            && size.as_nanos() > 0
            && used > size.value()
        {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                v.name,
                size.canonical()
            ));
        }
    }
    // The pod's limit: the containers' summed, at least any init
    // container's (upstream's `PodLimits`).
    let mut pod_limit: Option<Quantity> = None;
    for c in &spec.containers {
        if let Some(l) = limit_of(c.resources.as_ref(), "ephemeral-storage") {
            pod_limit = Some(match pod_limit {
                Some(p) => p.add(&l),
                None => l,
            });
        }
    }
    for c in spec.init_containers.iter().flatten() {
        if let Some(l) = limit_of(c.resources.as_ref(), "ephemeral-storage")
            && pod_limit.as_ref().is_none_or(|p| l > *p)
        {
            pod_limit = Some(l);
        }
    }
    if let Some(limit) = pod_limit {
        let used: i128 = usage
            .containers
            .iter()
            .map(|(_, root, logs)| root.0 + logs.0)
            .sum::<i128>()
            + usage
                .empty_dirs
                .iter()
                .filter(|(_, memory, _)| !memory)
                .map(|(_, _, u)| u.0)
                .sum::<i128>();
        if used > limit.value() {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                limit.canonical()
            ));
        }
    }
    for c in &spec.containers {
        let Some(limit) = limit_of(c.resources.as_ref(), "ephemeral-storage") else {
            continue;
        };
        if limit.is_zero() {
            continue;
        }
        let Some((_, root, logs)) = usage.containers.iter().find(|(n, _, _)| *n == c.name) else {
            continue;
        };
        let used = logs.0 + if dedicated_imagefs { 0 } else { root.0 };
        if used > limit.value() {
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {:?}. ",
                c.name,
                limit.canonical()
            ));
        }
    }
    None
}

/// Whether kubelet would measure `pod` for its local storage limits at
/// all: an emptyDir `sizeLimit` or an `ephemeral-storage` limit.
fn has_storage_limits(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    spec.volumes
        .iter()
        .flatten()
        .any(|v| v.empty_dir.as_ref().is_some_and(|e| e.size_limit.is_some()))
        || spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| limit_of(c.resources.as_ref(), "ephemeral-storage").is_some())
}

/// Where the node's filesystems are.
#[derive(Debug, Clone)]
pub struct FsPaths {
    /// The agent dir (`nodefs`).
    pub node: PathBuf,
    /// containerd's root (`imagefs`).
    pub image: PathBuf,
}

/// Observes every signal now; the bool says whether the image filesystem
/// is a filesystem of its own.
pub fn observe(paths: &FsPaths) -> (Observations, bool) {
    let mut obs = Observations::new();
    if let Some((available, capacity)) = memory_observation() {
        obs.insert(
            "memory.available".into(),
            Observation {
                available,
                capacity,
            },
        );
    }
    let node = fs_observation(&paths.node);
    if let Some((bytes, inodes, _)) = node {
        obs.insert("nodefs.available".into(), bytes);
        obs.insert("nodefs.inodesFree".into(), inodes);
    }
    // Not made yet, the image store is on the filesystem it will be in.
    let image = fs_observation(&paths.image).or(node);
    let mut dedicated = false;
    if let Some((bytes, inodes, dev)) = image {
        dedicated = node.is_some_and(|n| n.2 != dev);
        for p in ["imagefs", "containerfs"] {
            obs.insert(format!("{p}.available"), bytes);
            obs.insert(format!("{p}.inodesFree"), inodes);
        }
    }
    if let Some(p) = pid_observation() {
        obs.insert("pid.available".into(), p);
    }
    (obs, dedicated)
}

/// The `EvictionThresholdMet` Warning event on the Node, one per
/// resource and pressure episode, its count raised each period after.
struct NodeEvents {
    client: kube::Client,
    node: String,
    /// resource -> (event name, count).
    open: HashMap<&'static str, (String, i32)>,
}

impl NodeEvents {
    async fn record(&mut self, resource: &'static str) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        if let Some((name, count)) = self.open.get_mut(resource) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": now});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                Err(e) => debug!(error = %e, "raising the EvictionThresholdMet event's count"),
            }
        }
        let name = format!(
            "{}.{:x}",
            self.node,
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let ev: Result<Event, _> = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": self.node, "uid": self.node},
            "reason": "EvictionThresholdMet",
            "message": format!("Attempting to reclaim {resource}"),
            "type": "Warning",
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        }));
        let Ok(ev) = ev else { return };
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                self.open.insert(resource, (name, 1));
            }
            Err(e) => debug!(error = %e, "recording the EvictionThresholdMet event"),
        }
    }
}

/// An eviction for the pod workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    /// The pod's uid.
    pub uid: String,
    /// kubelet's message (the pod's `status.message`).
    pub message: String,
    /// The termination grace, seconds.
    pub grace: i64,
    /// Whether the pod gets the `DisruptionTarget` condition (node
    /// pressure: yes; a local storage limit: no, as kubelet).
    pub disruption_condition: bool,
}

/// How many monitoring periods between image garbage collection rounds
/// below the high threshold (which only keep the images' last use
/// current): one a minute.
const IMAGE_GC_EVERY: u32 = 6;

/// Watches the signals against `cfg` until `stop`, reporting pressure to
/// `pressure` and sending an [`Eviction`] for each pod to evict; collects
/// unused images (never `protected_images`) by the image GC thresholds.
pub async fn run(
    ctx: Arc<PodContext>,
    cfg: EvictionConfig,
    paths: FsPaths,
    protected_images: crate::image_gc::Protected,
    pressure: Arc<Pressure>,
    evict: mpsc::UnboundedSender<Eviction>,
    stop: CancellationToken,
) {
    let mut manager = Manager::new(&cfg);
    let mut gc = crate::image_gc::ImageGc::new(protected_images);
    let mut periods: u32 = 0;
    let hard = |s: &str| {
        cfg.hard
            .iter()
            .find(|t| t.signal == s)
            .map(|t| t.value.clone())
    };
    let mut events = NodeEvents {
        client: ctx.client.clone(),
        node: ctx.node_name.clone(),
        open: HashMap::new(),
    };
    let mut tick = tokio::time::interval(MONITOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The pod last evicted, which gets a period to go before the next.
    let mut last: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (mut obs, mut dedicated) = observe(&paths);
        // Image garbage collection by its thresholds (kubelet runs it on
        // its own period; here with the monitoring).
        let want = obs.get("imagefs.available").map_or(0, |o| {
            crate::image_gc::bytes_to_free(
                o.capacity,
                o.available,
                cfg.image_gc_high_threshold,
                cfg.image_gc_low_threshold,
            )
        });
        if want > 0 || periods.is_multiple_of(IMAGE_GC_EVERY) {
            if want > 0 {
                info!(
                    bytes = want,
                    high = cfg.image_gc_high_threshold,
                    "image filesystem over the image GC high threshold"
                );
            }
            if gc.collect(&ctx.cri, want).await > 0 {
                (obs, dedicated) = observe(&paths);
            }
        }
        periods = periods.wrapping_add(1);
        pressure.set_facts(NodeFacts {
            reserved: cfg.kube_reserved.plus(&cfg.system_reserved),
            ephemeral_storage: obs.get("nodefs.available").map(|o| o.capacity),
            memory_threshold: hard("memory.available"),
            nodefs_threshold: hard("nodefs.available"),
        });
        let d = manager.sync(&obs, Instant::now());
        for c in [Condition::Memory, Condition::Disk, Condition::Pid] {
            let on = d.conditions.contains(&c);
            if on != pressure_of(&pressure, c) {
                if on {
                    warn!(condition = ?c, "node under pressure");
                } else {
                    info!(condition = ?c, "pressure over");
                }
            }
            pressure.set(c, on);
        }
        // Local storage limits first; a period that evicts for them does
        // nothing else (kubelet's `localStorageEviction`).
        let local = local_storage_evictions(&ctx, dedicated).await;
        if !local.is_empty() {
            for (uid, name, message) in local {
                info!(pod = %name, %message, "evicting a pod over its local storage limit");
                let _ = evict.send(Eviction {
                    uid,
                    message,
                    grace: 0,
                    disruption_condition: false,
                });
            }
            continue;
        }
        let Some(i) = d.reclaim else {
            last = None;
            events.open.clear();
            continue;
        };
        let w = manager.watched[i].clone();
        let resource = w.resource();
        // Node-level reclaim before a pod goes (kubelet's
        // `reclaimNodeLevelResources`): for the disk, every unused image.
        if matches!(resource, Resource::Storage(_) | Resource::Inodes(_))
            && gc.collect(&ctx.cri, i128::MAX).await > 0
        {
            let (again, _) = observe(&paths);
            if !w.met(&again, false) {
                info!(threshold = %w.threshold, "disk pressure relieved by removing unused images; no pod evicted");
                continue;
            }
            obs = again;
        }
        let o = obs[&w.threshold.signal];
        warn!(threshold = %w.threshold, available = %format_amount(resource, o.available), "eviction threshold met: attempting to reclaim {}", resource.name());
        events.record(resource.name()).await;
        let ranked = rank(candidates(&ctx, resource).await, resource, dedicated);
        let Some(victim) = ranked
            .into_iter()
            .find(|c| last.as_deref() != Some(c.uid.as_str()))
        else {
            continue;
        };
        let msg = message(&w, o, &victim);
        // A hard threshold kills at once; a soft one gives the pod its
        // grace, up to `eviction-max-pod-grace-period`.
        let grace = match w.grace {
            None => 0,
            Some(_) => victim
                .grace_seconds
                .min(cfg.max_pod_grace_period_seconds)
                .max(0),
        };
        info!(pod = %victim.name, resource = resource.name(), grace, "evicting a pod under node pressure");
        last = Some(victim.uid.clone());
        let _ = evict.send(Eviction {
            uid: victim.uid,
            message: msg,
            grace,
            disruption_condition: true,
        });
    }
}

fn pressure_of(p: &Pressure, c: Condition) -> bool {
    match c {
        Condition::Memory => p.memory(),
        Condition::Disk => p.disk(),
        Condition::Pid => p.pid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rke2_apimachinery::eviction::{parse_minimum_reclaims, parse_thresholds};

    fn cand(uid: &str, priority: i32, request: i128, usage: i128) -> Candidate {
        Candidate {
            uid: uid.into(),
            name: uid.into(),
            priority,
            request,
            usage,
            containers: vec![("c".into(), usage, request)],
            ..Default::default()
        }
    }

    fn order(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.uid.as_str()).collect()
    }

    #[test]
    fn ranking_is_kubelets() {
        let ranked = rank(
            vec![
                cand("guaranteed", 0, 100 << 20, 50 << 20),
                cand("critical", SYSTEM_CRITICAL_PRIORITY, 0, 500 << 20),
                cand("besteffort-small", 0, 0, 1 << 20),
                cand("burstable-over", 0, 10 << 20, 300 << 20),
                cand("besteffort-high", 1000, 0, 900 << 20),
            ],
            Resource::Memory,
            false,
        );
        assert_eq!(
            order(&ranked),
            [
                "burstable-over",
                "besteffort-small",
                "besteffort-high",
                "guaranteed"
            ]
        );
    }

    fn disk(
        uid: &str,
        priority: i32,
        request: i128,
        root: i128,
        logs: i128,
        vols: i128,
    ) -> Candidate {
        Candidate {
            uid: uid.into(),
            priority,
            storage_request: request,
            disk: DiskUsage {
                root: (root, 1),
                logs: (logs, 2),
                volumes: (vols, 3),
            },
            ..Default::default()
        }
    }

    #[test]
    fn disk_ranking_is_rank_disk_pressure_func() {
        let pods = vec![
            // Within its request.
            disk("requested", 0, 1 << 30, 100 << 20, 0, 100 << 20),
            // Over (no request), little.
            disk("small", 0, 0, 0, 1 << 20, 0),
            // Over, much, in an emptyDir.
            disk("emptydir", 0, 0, 0, 0, 500 << 20),
            // Over, much, but of higher priority.
            disk("important", 100, 0, 900 << 20, 0, 0),
            disk("critical", SYSTEM_CRITICAL_PRIORITY, 0, 0, 0, 900 << 30),
        ];
        let ranked = rank(pods.clone(), Resource::Storage(Fs::Node), false);
        assert_eq!(
            order(&ranked),
            ["emptydir", "small", "important", "requested"]
        );
        // With an image filesystem of its own, nodefs counts logs and
        // volumes only, imagefs the writable layers only.
        let ranked = rank(pods.clone(), Resource::Storage(Fs::Image), true);
        assert_eq!(order(&ranked)[0], "important");
        assert_eq!(pods[0].disk.measured(Fs::Node, true), (100 << 20, 5));
        assert_eq!(pods[0].disk.measured(Fs::Node, false), (200 << 20, 6));
        // Inodes: there is no inode request, so any use is over it; then
        // priority, then the most inodes.
        let ranked = rank(pods, Resource::Inodes(Fs::Node), false);
        assert_eq!(
            order(&ranked),
            ["requested", "small", "emptydir", "important"]
        );
    }

    #[test]
    fn pid_ranking_is_rank_pid_pressure() {
        let p = |uid: &str, priority: i32, processes: i128| Candidate {
            uid: uid.into(),
            priority,
            processes,
            ..Default::default()
        };
        let ranked = rank(
            vec![
                p("few", 0, 3),
                p("many", 0, 300),
                p("high", 10, 1000),
                p("critical", SYSTEM_CRITICAL_PRIORITY, 5000),
            ],
            Resource::Pids,
            false,
        );
        assert_eq!(order(&ranked), ["many", "few", "high"]);
    }

    fn obs(pairs: &[(&str, i128, i128)]) -> Observations {
        pairs
            .iter()
            .map(|(s, a, c)| {
                (
                    s.to_string(),
                    Observation {
                        available: *a,
                        capacity: *c,
                    },
                )
            })
            .collect()
    }

    fn cfg(hard: &str, soft: &str, grace: &str, reclaim: &str, transition: u64) -> EvictionConfig {
        let secs = |s: &str| -> Result<Duration, String> {
            Ok(Duration::from_secs(
                s.trim_end_matches('s').parse().unwrap(),
            ))
        };
        let mut c = EvictionConfig::new(
            parse_thresholds(hard).unwrap(),
            parse_thresholds(soft).unwrap(),
            rke2_apimachinery::eviction::parse_grace_periods(grace, secs).unwrap(),
            parse_minimum_reclaims(reclaim).unwrap(),
        )
        .unwrap();
        c.pressure_transition_period = Duration::from_secs(transition);
        c
    }

    #[test]
    fn conditions_follow_signals_with_the_transition_period() {
        let mut m = Manager::new(&cfg(
            "memory.available<100Mi,nodefs.available<10%,imagefs.inodesFree<5%,pid.available<100",
            "",
            "",
            "",
            300,
        ));
        let t0 = Instant::now();
        let fine = obs(&[
            ("memory.available", 1 << 30, 4 << 30),
            ("nodefs.available", 50, 100),
            ("imagefs.inodesFree", 50, 100),
            ("pid.available", 30000, 32768),
        ]);
        let d = m.sync(&fine, t0);
        assert!(d.conditions.is_empty() && d.reclaim.is_none());
        // Disk: nodefs below 10%.
        let mut low = fine.clone();
        low.get_mut("nodefs.available").unwrap().available = 9;
        low.get_mut("pid.available").unwrap().available = 50;
        let d = m.sync(&low, t0 + Duration::from_secs(10));
        assert_eq!(
            d.conditions,
            BTreeSet::from([Condition::Disk, Condition::Pid])
        );
        assert_eq!(
            m.watched[d.reclaim.unwrap()].threshold.signal,
            "nodefs.available"
        );
        // Memory too: memory is reclaimed first.
        low.get_mut("memory.available").unwrap().available = 50 << 20;
        let d = m.sync(&low, t0 + Duration::from_secs(20));
        assert_eq!(m.watched[d.reclaim.unwrap()].resource(), Resource::Memory);
        // Recovered: nothing to reclaim, but the conditions stay True for
        // the transition period after they were last seen.
        let d = m.sync(&fine, t0 + Duration::from_secs(30));
        assert_eq!(d.reclaim, None);
        assert_eq!(d.conditions.len(), 3);
        let d = m.sync(&fine, t0 + Duration::from_secs(319));
        assert_eq!(d.conditions.len(), 3);
        let d = m.sync(&fine, t0 + Duration::from_secs(320));
        assert!(d.conditions.is_empty(), "{d:?}");
        // With no transition period the condition follows the signal.
        let mut m = Manager::new(&cfg("nodefs.available<10%", "", "", "", 0));
        assert_eq!(
            m.sync(&low, t0).conditions,
            BTreeSet::from([Condition::Disk])
        );
        assert!(
            m.sync(&fine, t0 + Duration::from_secs(10))
                .conditions
                .is_empty()
        );
    }

    #[test]
    fn soft_thresholds_count_after_their_grace_without_a_break() {
        let mut m = Manager::new(&cfg(
            "",
            "nodefs.available<20%",
            "nodefs.available=60s",
            "",
            0,
        ));
        assert_eq!(m.watched[0].grace, Some(Duration::from_secs(60)));
        let t0 = Instant::now();
        let low = obs(&[("nodefs.available", 15, 100)]);
        let fine = obs(&[("nodefs.available", 50, 100)]);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The condition at once, the eviction only after 60 s.
        let d = m.sync(&low, at(0));
        assert_eq!(d.conditions, BTreeSet::from([Condition::Disk]));
        assert_eq!(d.reclaim, None);
        assert_eq!(m.sync(&low, at(50)).reclaim, None);
        // A break starts the clock again.
        m.sync(&fine, at(55));
        assert_eq!(m.sync(&low, at(60)).reclaim, None);
        assert_eq!(m.sync(&low, at(110)).reclaim, None);
        assert_eq!(m.sync(&low, at(120)).reclaim, Some(0));
    }

    #[test]
    fn minimum_reclaim_keeps_a_met_threshold_met() {
        let mut m = Manager::new(&cfg("nodefs.available<10", "", "", "nodefs.available=5", 0));
        let t0 = Instant::now();
        let at = |avail: i128, s: u64| {
            (
                obs(&[("nodefs.available", avail, 100)]),
                t0 + Duration::from_secs(s),
            )
        };
        let (o, t) = at(12, 0);
        assert_eq!(m.sync(&o, t).reclaim, None, "not met: no reclaim asked");
        let (o, t) = at(9, 10);
        assert_eq!(m.sync(&o, t).reclaim, Some(0));
        // Above the threshold, not yet by the minimum reclaim.
        let (o, t) = at(14, 20);
        assert_eq!(m.sync(&o, t).reclaim, Some(0));
        let (o, t) = at(15, 30);
        assert_eq!(m.sync(&o, t).reclaim, None);
        // Not met again until below the threshold itself.
        let (o, t) = at(14, 40);
        assert_eq!(m.sync(&o, t).reclaim, None);
    }

    #[test]
    fn messages_are_kubelets() {
        let m = Manager::new(&cfg(
            "memory.available<100Mi,nodefs.available<10%,pid.available<1000",
            "",
            "",
            "",
            0,
        ));
        let msg = message(
            &m.watched[0],
            Observation {
                available: 1536 * 1024,
                capacity: 1 << 40,
            },
            &cand("p", 0, 0, 12 << 20),
        );
        assert_eq!(
            msg,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 1536Ki. Container c was using 12Mi, request is 0, has larger consumption of memory. "
        );
        let mut v = disk("p", 0, 0, 0, 0, 0);
        v.container_storage = vec![("w".into(), 3 << 20, 0), ("quiet".into(), 1 << 20, 2 << 20)];
        let msg = message(
            &m.watched[1],
            Observation {
                available: 5 << 30,
                capacity: 100 << 30,
            },
            &v,
        );
        assert_eq!(
            msg,
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 5Gi. Container w was using 3Mi, request is 0, has larger consumption of ephemeral-storage. "
        );
        let msg = message(
            &m.watched[2],
            Observation {
                available: 10,
                capacity: 32768,
            },
            &v,
        );
        assert_eq!(
            msg,
            "The node was low on resource: pids. Threshold quantity: 1000, available: 10. "
        );
        let (avail, total) =
            parse_meminfo("MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   1000 kB\n")
                .unwrap();
        assert_eq!((avail, total), (1000 * 1024, 24_000_000 * 1024));
    }

    #[test]
    fn observations_of_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let (o, dedicated) = observe(&FsPaths {
            node: dir.path().to_path_buf(),
            image: dir.path().join("not-yet"),
        });
        assert!(!dedicated);
        for s in [
            "memory.available",
            "nodefs.available",
            "nodefs.inodesFree",
            "imagefs.available",
            "pid.available",
        ] {
            let x = o[s];
            assert!(x.available > 0 && x.available <= x.capacity, "{s}: {x:?}");
        }
        assert_eq!(
            o["imagefs.available"].capacity,
            o["nodefs.available"].capacity
        );
        std::fs::write(dir.path().join("f"), vec![1u8; 64 << 10]).unwrap();
        let (bytes, inodes) = du(dir.path());
        assert!(bytes >= 64 << 10 && inodes == 1, "{bytes} {inodes}");
    }

    #[test]
    fn allocatable_less_the_reservations_and_hard_thresholds() {
        let mut f = NodeFacts {
            ephemeral_storage: Some(100 << 30),
            memory_threshold: Some(ThresholdValue::Quantity(100 << 20)),
            nodefs_threshold: Some(ThresholdValue::Percentage(10.0)),
            ..Default::default()
        };
        assert_eq!(
            f.allocatable(2000, 4 << 30, 100 << 30),
            (2000, (4 << 30) - (100 << 20), 90 << 30)
        );
        assert_eq!(NodeFacts::default().allocatable(3, 5, 7), (3, 5, 7));
        let kube = rke2_apimachinery::eviction::parse_reserved(
            "cpu=500m,memory=1Gi,ephemeral-storage=1Gi,pid=100",
        )
        .unwrap();
        let system = rke2_apimachinery::eviction::parse_reserved("cpu=250m,memory=512Mi").unwrap();
        f.reserved = kube.plus(&system);
        assert_eq!(
            f.allocatable(2000, 4 << 30, 100 << 30),
            (
                1250,
                (4 << 30) - (1 << 30) - (512 << 20) - (100 << 20),
                (90 << 30) - (1 << 30)
            )
        );
        // More reserved than there is: nothing allocatable, not negative.
        assert_eq!(f.allocatable(500, 1 << 20, 1 << 20), (0, 0, 0));
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn admission_under_pressure_is_kubelets() {
        let best_effort = pod(json!({"metadata": {"name": "be"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}));
        let burstable = pod(json!({"metadata": {"name": "b"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"memory": "10Mi"}}}]}}));
        let critical = pod(json!({"metadata": {"name": "k"},
            "spec": {"priority": 2_000_001_000, "containers": [{"name": "c", "image": "i"}]}}));
        let tolerant = pod(json!({"metadata": {"name": "t"},
            "spec": {"tolerations": [{"key": "node.kubernetes.io/memory-pressure",
                "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "i"}]}}));
        let mirror = pod(json!({"metadata": {"name": "m",
                "annotations": {"kubernetes.io/config.mirror": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}));
        for p in [&best_effort, &burstable, &critical] {
            assert_eq!(admit(p, &[]), Ok(()));
        }
        let mem = [Condition::Memory];
        assert_eq!(
            admit(&best_effort, &mem),
            Err("The node had condition: [MemoryPressure]. ".into())
        );
        assert_eq!(admit(&burstable, &mem), Ok(()));
        assert_eq!(admit(&tolerant, &mem), Ok(()));
        assert_eq!(admit(&critical, &mem), Ok(()));
        for conds in [
            &[Condition::Disk][..],
            &[Condition::Pid],
            &[Condition::Memory, Condition::Disk],
        ] {
            for p in [&best_effort, &burstable, &tolerant] {
                assert!(admit(p, conds).is_err(), "{conds:?}");
            }
            assert_eq!(admit(&critical, conds), Ok(()));
            assert_eq!(admit(&mirror, conds), Ok(()));
        }
        assert_eq!(
            admit(&burstable, &[Condition::Disk]),
            Err("The node had condition: [DiskPressure]. ".into())
        );
        assert_eq!(
            admit(&burstable, &[Condition::Memory, Condition::Pid]),
            Err("The node had condition: [MemoryPressure PIDPressure]. ".into())
        );
        let p = Pressure::default();
        p.set(Condition::Pid, true);
        p.set(Condition::Memory, true);
        assert_eq!(p.conditions(), [Condition::Memory, Condition::Pid]);
    }

    #[test]
    fn local_storage_limits_are_kubelets() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
            "volumes": [
                {"name": "v", "emptyDir": {"sizeLimit": "1Mi"}},
                {"name": "ram", "emptyDir": {"medium": "Memory"}},
                {"name": "free", "emptyDir": {}}],
            "initContainers": [{"name": "i", "image": "x",
                "resources": {"limits": {"ephemeral-storage": "1536Ki"}}}],
            "containers": [
                {"name": "a", "image": "x", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                {"name": "b", "image": "x", "resources": {"limits": {"ephemeral-storage": "1024Ki"}}},
                {"name": "c", "image": "x"}]
        }))
        .unwrap();
        let fine = PodStorage {
            containers: vec![
                ("a".into(), (100 << 10, 5), (10 << 10, 1)),
                ("b".into(), (0, 0), (0, 0)),
                ("c".into(), (500 << 10, 9), (0, 0)),
            ],
            empty_dirs: vec![
                ("v".into(), false, (1 << 20, 1)),
                ("ram".into(), true, (900 << 20, 1)),
                ("free".into(), false, (100 << 10, 1)),
            ],
        };
        assert_eq!(local_storage_violation(&spec, &fine, false), None);
        // The emptyDir just over its limit.
        let mut u = fine.clone();
        u.empty_dirs[0].2.0 = (1 << 20) + 1;
        assert_eq!(
            local_storage_violation(&spec, &u, false).as_deref(),
            Some("Usage of EmptyDir volume \"v\" exceeds the limit \"1Mi\". ")
        );
        // The pod over 2Mi (1Mi + 1024Ki, above the init container's
        // 1536Ki): writable layers, logs and disk-backed emptyDirs count,
        // the memory-backed one does not.
        let mut u = fine.clone();
        u.empty_dirs[2].2.0 = 600 << 10;
        assert_eq!(
            local_storage_violation(&spec, &u, false).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ")
        );
        // One container over its own: writable layer + logs, the layer
        // only when the image filesystem is the node's.
        let mut u = fine.clone();
        u.empty_dirs[0].2 = (0, 0);
        u.containers[1].1 = (1 << 20, 3);
        u.containers[1].2 = (1, 1);
        assert_eq!(
            local_storage_violation(&spec, &u, false).as_deref(),
            Some("Container b exceeded its local ephemeral storage limit \"1Mi\". ")
        );
        assert_eq!(local_storage_violation(&spec, &u, true), None);
        // Without limits nothing is measured against anything.
        let plain: k8s_openapi::api::core::v1::PodSpec =
            serde_json::from_value(json!({"containers": [{"name": "c", "image": "x"}],
                "volumes": [{"name": "e", "emptyDir": {}}]}))
            .unwrap();
        assert!(!has_storage_limits(&plain));
        assert!(has_storage_limits(&spec));
        let huge = PodStorage {
            containers: vec![("c".into(), (1 << 40, 1), (1 << 40, 1))],
            empty_dirs: vec![("e".into(), false, (1 << 40, 1))],
        };
        assert_eq!(local_storage_violation(&plain, &huge, false), None);
    }
}
