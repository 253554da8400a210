//! Resource usage of the node, its pods and their containers: kubelet's
//! `GET /stats/summary` (the `stats/v1alpha1` Summary) and
//! `GET /metrics/resource` (the Prometheus text the metrics server
//! scrapes).
//!
//! The node's figures come from the host: CPU time from the root cgroup's
//! `cpu.stat` on cgroup v2 (else cgroup v1's `cpuacct.usage`, else
//! `/proc/stat`), memory from `/proc/meminfo` and, on cgroup v2, the root
//! `memory.stat` (working set = usage - inactive file pages, usage =
//! total - free, as runc reports the root cgroup), network from
//! `/proc/net/dev`, the filesystem from `statvfs` of the node's data dir.
//! Pods' and containers' come from CRI (`ListPodSandbox`, `ListContainers`,
//! `ListContainerStats`): a pod's CPU and memory are the sums of its
//! running containers'. `usageNanoCores` is the rate between this sample
//! and the one before (kept per container and for the node), as kubelet
//! derives it.
//!
//! The parsers and the renderers do no IO and are unit-tested.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Serialize;

use rke2_runtime::cri::{Cri, api};

use super::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// kubelet's `stats/v1alpha1` Summary.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// The node's figures.
    pub node: NodeStats,
    /// Every pod with a ready sandbox on this node.
    pub pods: Vec<PodStats>,
}

/// `NodeStats`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The Node's name.
    pub node_name: String,
    /// Kubelet lists its own cgroups here; this node has none of its own.
    pub system_containers: Vec<serde_json::Value>,
    /// Boot time of the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Network interfaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// The filesystem of the node's data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    /// The container runtime's filesystems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
}

/// `RuntimeStats`: where images live.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// The filesystem of containerd's root (images and writable layers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
}

/// `CPUStats`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When the sample was taken (RFC 3339).
    pub time: String,
    /// Average usage since the previous sample, in nanocores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time, in core-nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
    #[serde(skip)]
    time_ns: i64,
}

/// `MemoryStats`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When the sample was taken (RFC 3339).
    pub time: String,
    /// Memory available for use (node: `MemAvailable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Total memory in use, including caches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// Usage minus inactive file pages: what the OOM killer looks at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory and swap cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Cumulative page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    /// Cumulative major page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
    #[serde(skip)]
    time_ns: i64,
}

/// `NetworkStats`: the first interface's figures, and every interface.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    /// When the sample was taken.
    pub time: String,
    /// The default interface's name.
    pub name: String,
    /// Its received bytes.
    pub rx_bytes: u64,
    /// Its receive errors.
    pub rx_errors: u64,
    /// Its sent bytes.
    pub tx_bytes: u64,
    /// Its send errors.
    pub tx_errors: u64,
    /// All interfaces but loopback and pods' veth ends.
    pub interfaces: Vec<InterfaceStats>,
}

/// `InterfaceStats`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    /// Interface name.
    pub name: String,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Sent bytes.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
}

/// `FsStats`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When the sample was taken.
    pub time: String,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Size of the filesystem.
    pub capacity_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Free inodes.
    pub inodes_free: u64,
    /// All inodes.
    pub inodes: u64,
    /// Inodes in use.
    pub inodes_used: u64,
}

/// `PodReference`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodReference {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
}

/// `PodStats`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodReference,
    /// When its sandbox was created.
    pub start_time: String,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// Sum of its containers' CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Sum of its containers' memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// `ContainerStats`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name in the pod.
    pub name: String,
    /// When it was created (RFC 3339).
    pub start_time: String,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip)]
    start_ns: i64,
}

fn rfc3339(ns: i64) -> String {
    Utc.timestamp_nanos(ns)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

// ------------------------------------------------------------ host figures

/// Cumulative busy CPU time in nanoseconds from `/proc/stat`'s `cpu` line
/// (user, nice, system, irq, softirq, steal; guest time is already in
/// user), with `ticks_per_second` jiffies a second.
pub fn parse_proc_stat_cpu(text: &str, ticks_per_second: u64) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 || ticks_per_second == 0 {
        return None;
    }
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(busy.saturating_mul(1_000_000_000) / ticks_per_second)
}

/// Boot time (Unix seconds), `/proc/stat`'s `btime`.
pub fn parse_proc_stat_btime(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in nanoseconds.
pub fn parse_cpu_stat_usage(text: &str) -> Option<u64> {
    flat_keyed(text, "usage_usec").map(|us| us.saturating_mul(1000))
}

/// The value of `key` in a flat-keyed cgroup file (`cpu.stat`,
/// `memory.stat`: one `key value` per line).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// A `/proc/meminfo` field in bytes (`MemTotal:  16 kB`).
pub fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, rest) = l.split_once(':')?;
        if k != key {
            return None;
        }
        let mut it = rest.split_whitespace();
        let n: u64 = it.next()?.parse().ok()?;
        Some(match it.next() {
            Some("kB") => n * 1024,
            _ => n,
        })
    })
}

/// Node memory from `/proc/meminfo` and, when there is one, the root
/// cgroup's `memory.stat` (cgroup v2): usage = total - free, working set =
/// usage - inactive file pages, RSS = anonymous pages.
pub fn node_memory(meminfo_text: &str, root_memory_stat: Option<&str>) -> Option<MemoryStats> {
    let total = meminfo(meminfo_text, "MemTotal")?;
    let free = meminfo(meminfo_text, "MemFree")?;
    let usage = total.saturating_sub(free);
    let (inactive_file, anon, faults, major) = match root_memory_stat {
        Some(stat) => (
            flat_keyed(stat, "inactive_file"),
            flat_keyed(stat, "anon"),
            flat_keyed(stat, "pgfault"),
            flat_keyed(stat, "pgmajfault"),
        ),
        None => (None, None, None, None),
    };
    let inactive_file = inactive_file.or_else(|| meminfo(meminfo_text, "Inactive(file)"))?;
    let rss = anon.or_else(|| meminfo(meminfo_text, "AnonPages"));
    Some(MemoryStats {
        available_bytes: meminfo(meminfo_text, "MemAvailable"),
        usage_bytes: Some(usage),
        working_set_bytes: Some(usage.saturating_sub(inactive_file)),
        rss_bytes: rss,
        page_faults: faults,
        major_page_faults: major,
        ..Default::default()
    })
}

/// Interfaces of `/proc/net/dev` but loopback and pods' veth ends.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.starts_with("veth") {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 11 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_errors: v[10],
            })
        })
        .collect()
}

fn fs_stats(path: &Path, time: &str) -> Option<FsStats> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given; the path is a
    // valid NUL-terminated string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    let capacity = s.f_blocks as u64 * frsize;
    let free = s.f_bfree as u64 * frsize;
    Some(FsStats {
        time: time.to_string(),
        available_bytes: s.f_bavail as u64 * frsize,
        capacity_bytes: capacity,
        used_bytes: capacity.saturating_sub(free),
        inodes_free: s.f_ffree as u64,
        inodes: s.f_files as u64,
        inodes_used: (s.f_files as u64).saturating_sub(s.f_ffree as u64),
    })
}

/// Where the host figures are read (tests point it at fixtures).
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// `/proc`.
    pub proc: PathBuf,
    /// `/sys/fs/cgroup`.
    pub cgroup: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            proc: "/proc".into(),
            cgroup: "/sys/fs/cgroup".into(),
        }
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Cumulative node CPU time (ns): cgroup v2 root `cpu.stat`, else cgroup
/// v1 `cpuacct.usage`, else `/proc/stat`.
fn node_cpu_ns(paths: &HostPaths) -> Option<u64> {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    if let Some(ns) = read(paths.cgroup.join("cpu.stat")).and_then(|t| parse_cpu_stat_usage(&t)) {
        return Some(ns);
    }
    if let Some(ns) =
        read(paths.cgroup.join("cpuacct/cpuacct.usage")).and_then(|t| t.trim().parse::<u64>().ok())
    {
        return Some(ns);
    }
    read(paths.proc.join("stat")).and_then(|t| parse_proc_stat_cpu(&t, clock_ticks()))
}

// ------------------------------------------------------------ collection

/// The previous cumulative CPU sample of the node and of each container,
/// from which `usageNanoCores` is derived.
#[derive(Debug, Default)]
struct Previous {
    node: Option<(i64, u64)>,
    containers: HashMap<String, (i64, u64)>,
}

/// Collects [`Summary`]s: the node's name, its data dir, and the last CPU
/// samples. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Collector {
    node_name: String,
    data_dir: PathBuf,
    paths: HostPaths,
    previous: Arc<Mutex<Previous>>,
}

/// The rate in nanocores between two cumulative samples `(time ns,
/// cpu ns)`; none when time did not advance or the counter went back.
pub fn nano_cores(prev: (i64, u64), now: (i64, u64)) -> Option<u64> {
    let dt = now.0.checked_sub(prev.0).filter(|d| *d > 0)? as u128;
    let dc = now.1.checked_sub(prev.1)? as u128;
    Some((dc * 1_000_000_000 / dt) as u64)
}

fn uv(v: &Option<api::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

impl Collector {
    /// A collector for node `node_name` whose data lives in `data_dir`.
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Collector {
            node_name: node_name.into(),
            data_dir: data_dir.into(),
            paths: HostPaths::default(),
            previous: Default::default(),
        }
    }

    /// The node's own figures at this moment.
    pub fn node(&self, with_fs_and_network: bool) -> NodeStats {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let t = now_ns();
        let time = rfc3339(t);
        let proc_stat = read(self.paths.proc.join("stat"));
        let cpu = node_cpu_ns(&self.paths).map(|ns| {
            let mut prev = self.previous.lock().unwrap_or_else(|e| e.into_inner());
            let rate = prev.node.and_then(|p| nano_cores(p, (t, ns)));
            prev.node = Some((t, ns));
            CpuStats {
                time: time.clone(),
                usage_nano_cores: rate,
                usage_core_nano_seconds: Some(ns),
                time_ns: t,
            }
        });
        let memory = read(self.paths.proc.join("meminfo")).and_then(|m| {
            let stat = read(self.paths.cgroup.join("memory.stat"));
            node_memory(&m, stat.as_deref()).map(|mut s| {
                s.time = time.clone();
                s.time_ns = t;
                s
            })
        });
        let (network, fs) = if with_fs_and_network {
            let network = read(self.paths.proc.join("net/dev")).and_then(|t| {
                let ifs = parse_net_dev(&t);
                let first = ifs.first()?.clone();
                Some(NetworkStats {
                    time: time.clone(),
                    name: first.name,
                    rx_bytes: first.rx_bytes,
                    rx_errors: first.rx_errors,
                    tx_bytes: first.tx_bytes,
                    tx_errors: first.tx_errors,
                    interfaces: ifs,
                })
            });
            (network, fs_stats(&self.data_dir, &time))
        } else {
            (None, None)
        };
        let runtime = with_fs_and_network.then(|| RuntimeStats {
            image_fs: fs_stats(&self.data_dir.join("agent/containerd"), &time),
        });
        NodeStats {
            node_name: self.node_name.clone(),
            system_containers: vec![],
            start_time: proc_stat
                .as_deref()
                .and_then(parse_proc_stat_btime)
                .map(|b| rfc3339(b * 1_000_000_000)),
            cpu,
            memory,
            network,
            fs,
            runtime,
        }
    }

    /// The whole summary: the node, then every pod with a ready sandbox
    /// and its running containers, from CRI.
    pub async fn summary(
        &self,
        cri: &Cri,
        with_fs_and_network: bool,
    ) -> Result<Summary, tonic::Status> {
        let node = self.node(with_fs_and_network);
        let mut rt = cri.runtime();
        let sandboxes = rt
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        let containers = rt
            .list_containers(api::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        let stats = rt
            .list_container_stats(api::ListContainerStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats;
        Ok(Summary {
            pods: self.pods(&sandboxes, &containers, &stats, now_ns()),
            node,
        })
    }

    /// Assembles pods from CRI's answers (no IO; `now` in ns stands in
    /// for samples without a timestamp).
    fn pods(
        &self,
        sandboxes: &[api::PodSandbox],
        containers: &[api::Container],
        stats: &[api::ContainerStats],
        now: i64,
    ) -> Vec<PodStats> {
        let by_id: HashMap<&str, &api::ContainerStats> = stats
            .iter()
            .filter_map(|s| s.attributes.as_ref().map(|a| (a.id.as_str(), s)))
            .collect();
        let mut prev = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = Vec::new();
        let mut pods = Vec::new();
        for sb in sandboxes {
            if sb.state != api::PodSandboxState::SandboxReady as i32 {
                continue;
            }
            let Some(meta) = sb.metadata.as_ref() else {
                continue;
            };
            let label = |k: &str, fallback: &str| {
                sb.labels
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| fallback.to_string())
            };
            let pod_ref = PodReference {
                name: label(LABEL_POD_NAME, &meta.name),
                namespace: label(LABEL_POD_NAMESPACE, &meta.namespace),
                uid: label(LABEL_POD_UID, &meta.uid),
            };
            let mut cs = Vec::new();
            for c in containers.iter().filter(|c| {
                c.pod_sandbox_id == sb.id && c.state == api::ContainerState::ContainerRunning as i32
            }) {
                let name = c
                    .labels
                    .get(LABEL_CONTAINER_NAME)
                    .cloned()
                    .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
                    .unwrap_or_default();
                let s = by_id.get(c.id.as_str());
                let cpu = s.and_then(|s| s.cpu.as_ref()).and_then(|u| {
                    let total = uv(&u.usage_core_nano_seconds)?;
                    let t = if u.timestamp > 0 { u.timestamp } else { now };
                    let rate = uv(&u.usage_nano_cores).filter(|r| *r > 0).or_else(|| {
                        prev.containers
                            .get(&c.id)
                            .and_then(|p| nano_cores(*p, (t, total)))
                    });
                    prev.containers.insert(c.id.clone(), (t, total));
                    Some(CpuStats {
                        time: rfc3339(t),
                        usage_nano_cores: rate,
                        usage_core_nano_seconds: Some(total),
                        time_ns: t,
                    })
                });
                let memory = s.and_then(|s| s.memory.as_ref()).and_then(|m| {
                    let t = if m.timestamp > 0 { m.timestamp } else { now };
                    Some(MemoryStats {
                        time: rfc3339(t),
                        available_bytes: uv(&m.available_bytes),
                        usage_bytes: uv(&m.usage_bytes),
                        working_set_bytes: Some(uv(&m.working_set_bytes)?),
                        rss_bytes: uv(&m.rss_bytes),
                        page_faults: uv(&m.page_faults),
                        major_page_faults: uv(&m.major_page_faults),
                        time_ns: t,
                    })
                });
                seen.push(c.id.clone());
                cs.push(ContainerStats {
                    name,
                    start_time: rfc3339(c.created_at),
                    cpu,
                    memory,
                    start_ns: c.created_at,
                });
            }
            cs.sort_by(|a, b| a.name.cmp(&b.name));
            pods.push(PodStats {
                cpu: sum_cpu(&cs),
                memory: sum_memory(&cs),
                pod_ref,
                start_time: rfc3339(sb.created_at),
                containers: cs,
            });
        }
        prev.containers.retain(|id, _| seen.contains(id));
        pods.sort_by(|a, b| a.pod_ref.cmp(&b.pod_ref));
        pods
    }
}

fn sum_cpu(cs: &[ContainerStats]) -> Option<CpuStats> {
    let all: Vec<&CpuStats> = cs.iter().filter_map(|c| c.cpu.as_ref()).collect();
    if all.is_empty() {
        return None;
    }
    let t = all.iter().map(|c| c.time_ns).max().unwrap_or_default();
    let rates: Option<u64> = all.iter().map(|c| c.usage_nano_cores).sum();
    Some(CpuStats {
        time: rfc3339(t),
        usage_nano_cores: rates,
        usage_core_nano_seconds: all.iter().map(|c| c.usage_core_nano_seconds).sum(),
        time_ns: t,
    })
}

fn sum_memory(cs: &[ContainerStats]) -> Option<MemoryStats> {
    let all: Vec<&MemoryStats> = cs.iter().filter_map(|c| c.memory.as_ref()).collect();
    if all.is_empty() {
        return None;
    }
    let t = all.iter().map(|c| c.time_ns).max().unwrap_or_default();
    let sum = |f: fn(&MemoryStats) -> Option<u64>| all.iter().map(|m| f(m)).sum::<Option<u64>>();
    Some(MemoryStats {
        time: rfc3339(t),
        available_bytes: None,
        usage_bytes: sum(|m| m.usage_bytes),
        working_set_bytes: sum(|m| m.working_set_bytes),
        rss_bytes: sum(|m| m.rss_bytes),
        page_faults: sum(|m| m.page_faults),
        major_page_faults: sum(|m| m.major_page_faults),
        time_ns: t,
    })
}

/// Drops network and filesystem figures (`only_cpu_and_memory=true`).
pub fn only_cpu_and_memory(mut s: Summary) -> Summary {
    s.node.network = None;
    s.node.fs = None;
    s.node.runtime = None;
    s
}

// ------------------------------------------------------------ Prometheus

/// A float as Prometheus' Go client writes it (`strconv.FormatFloat(f,
/// 'g', -1, 64)`): the shortest digits that read back the same, in
/// exponent form when the exponent is below -4 or at least 6 (Go's rule
/// for the shortest precision: 1048576 is `1.048576e+06`).
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return "0".into();
    }
    // `{:e}` gives the shortest round-tripping digits: "1.2345e7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    // Plain decimal: Rust's Display is also shortest round-trip.
    format!("{f}")
}

/// Labels, value and timestamp (ms) of one sample.
type PromSample = (Vec<(&'static str, String)>, f64, Option<i64>);

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<PromSample>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: vec![],
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics/resource`, as kubelet renders it: families sorted by name,
/// samples by label values, CPU and memory with their sample time in
/// milliseconds, and `resource_scrape_error` 0 (1 and nothing else when
/// `summary` is an error).
pub fn render_resource_metrics(summary: Option<&Summary>) -> String {
    let mut container_cpu = Family::new(
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    );
    let mut container_mem = Family::new(
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    );
    let mut container_start = Family::new(
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    );
    let mut node_cpu = Family::new(
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    let mut node_mem = Family::new(
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    );
    let mut pod_cpu = Family::new(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    let mut pod_mem = Family::new(
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    );
    let mut scrape_error = Family::new(
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    let ms = |ns: i64| ns / 1_000_000;
    match summary {
        None => scrape_error.samples.push((vec![], 1.0, None)),
        Some(s) => {
            if let Some(c) = &s.node.cpu
                && let Some(v) = c.usage_core_nano_seconds
            {
                node_cpu
                    .samples
                    .push((vec![], v as f64 / 1e9, Some(ms(c.time_ns))));
            }
            if let Some(m) = &s.node.memory
                && let Some(v) = m.working_set_bytes
            {
                node_mem
                    .samples
                    .push((vec![], v as f64, Some(ms(m.time_ns))));
            }
            for p in &s.pods {
                let pod_labels = vec![
                    ("namespace", p.pod_ref.namespace.clone()),
                    ("pod", p.pod_ref.name.clone()),
                ];
                for c in &p.containers {
                    let labels = vec![
                        ("container", c.name.clone()),
                        ("namespace", p.pod_ref.namespace.clone()),
                        ("pod", p.pod_ref.name.clone()),
                    ];
                    if c.start_ns > 0 {
                        container_start.samples.push((
                            labels.clone(),
                            c.start_ns as f64 / 1e9,
                            None,
                        ));
                    }
                    if let Some(cpu) = &c.cpu
                        && let Some(v) = cpu.usage_core_nano_seconds
                    {
                        container_cpu.samples.push((
                            labels.clone(),
                            v as f64 / 1e9,
                            Some(ms(cpu.time_ns)),
                        ));
                    }
                    if let Some(m) = &c.memory
                        && let Some(v) = m.working_set_bytes
                    {
                        container_mem
                            .samples
                            .push((labels, v as f64, Some(ms(m.time_ns))));
                    }
                }
                if let Some(cpu) = &p.cpu
                    && let Some(v) = cpu.usage_core_nano_seconds
                {
                    pod_cpu.samples.push((
                        pod_labels.clone(),
                        v as f64 / 1e9,
                        Some(ms(cpu.time_ns)),
                    ));
                }
                if let Some(m) = &p.memory
                    && let Some(v) = m.working_set_bytes
                {
                    pod_mem
                        .samples
                        .push((pod_labels, v as f64, Some(ms(m.time_ns))));
                }
            }
            scrape_error.samples.push((vec![], 0.0, None));
        }
    }
    let mut out = String::new();
    for mut f in [
        container_cpu,
        container_mem,
        container_start,
        node_cpu,
        node_mem,
        pod_cpu,
        pod_mem,
        scrape_error,
    ] {
        if f.samples.is_empty() {
            continue;
        }
        f.samples.sort_by(|a, b| {
            let va: Vec<&String> = a.0.iter().map(|(_, v)| v).collect();
            let vb: Vec<&String> = b.0.iter().map(|(_, v)| v).collect();
            va.cmp(&vb)
        });
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {}\n",
            f.name, f.help, f.name, f.kind
        ));
        for (labels, v, ts) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                out.push_str(&format!("{{{}}}", l.join(",")));
            }
            out.push(' ');
            out.push_str(&go_float(*v));
            if let Some(ts) = ts {
                out.push_str(&format!(" {ts}"));
            }
            out.push('\n');
        }
    }
    out
}

/// Parses a time of the Summary back (RFC 3339) — for tests and callers
/// that read a Summary.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "cpu  4705 356 584 3699 23 0 11 7 0 0\ncpu0 1393 0 0 0 0 0 0 0 0 0\nintr 1\nbtime 1700000000\n";

    #[test]
    fn proc_stat_busy_time_and_boot_time() {
        // user+nice+system+irq+softirq+steal = 4705+356+584+0+11+7 jiffies.
        assert_eq!(parse_proc_stat_cpu(PROC_STAT, 100), Some(5663 * 10_000_000));
        assert_eq!(parse_proc_stat_btime(PROC_STAT), Some(1_700_000_000));
        assert_eq!(parse_proc_stat_cpu("intr 1\n", 100), None);
        assert_eq!(parse_proc_stat_cpu("cpu  a b c d\n", 100), None);
    }

    #[test]
    fn cgroup_v2_cpu_stat() {
        let t = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(parse_cpu_stat_usage(t), Some(123_456_000));
        assert_eq!(parse_cpu_stat_usage("user_usec 1\n"), None);
    }

    const MEMINFO: &str = "MemTotal:        2000000 kB\nMemFree:          500000 kB\nMemAvailable:    1200000 kB\nBuffers:           10000 kB\nAnonPages:        300000 kB\nInactive(file):   400000 kB\n";

    #[test]
    fn node_memory_from_meminfo_and_cgroup_v2() {
        let m = node_memory(MEMINFO, None).unwrap();
        assert_eq!(m.usage_bytes, Some(1_500_000 * 1024));
        assert_eq!(m.working_set_bytes, Some(1_100_000 * 1024));
        assert_eq!(m.available_bytes, Some(1_200_000 * 1024));
        assert_eq!(m.rss_bytes, Some(300_000 * 1024));
        // The root memory.stat's figures win where it has them.
        let stat = "anon 1000\nfile 5000\ninactive_file 4096\npgfault 77\npgmajfault 3\n";
        let m = node_memory(MEMINFO, Some(stat)).unwrap();
        assert_eq!(m.working_set_bytes, Some(1_500_000 * 1024 - 4096));
        assert_eq!(m.rss_bytes, Some(1000));
        assert_eq!((m.page_faults, m.major_page_faults), (Some(77), Some(3)));
        assert!(node_memory("MemFree: 1 kB\n", None).is_none());
    }

    #[test]
    fn net_dev_skips_loopback_and_veths() {
        let t = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 5000 10 2 0 0 0 0 0 7000 12 1 0 0 0 0 0\nveth12: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        let ifs = parse_net_dev(t);
        assert_eq!(ifs.len(), 1);
        assert_eq!(
            ifs[0],
            InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 7000,
                tx_errors: 1
            }
        );
    }

    #[test]
    fn rates_need_time_to_advance_and_counters_to_grow() {
        assert_eq!(
            nano_cores((0, 0), (1_000_000_000, 500_000_000)),
            Some(500_000_000)
        );
        assert_eq!(nano_cores((5, 10), (5, 20)), None);
        assert_eq!(nano_cores((0, 20), (10, 10)), None);
    }

    #[test]
    fn floats_as_go_writes_them() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(12.345), "12.345");
        assert_eq!(go_float(14336000.0), "1.4336e+07");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1.2e21), "1.2e+21");
        assert_eq!(go_float(1.7e9), "1.7e+09");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(1700000000.123456), "1.700000000123456e+09");
        assert_eq!(go_float(-2.5e-7), "-2.5e-07");
    }

    fn cri_fixture() -> (
        Vec<api::PodSandbox>,
        Vec<api::Container>,
        Vec<api::ContainerStats>,
    ) {
        let sb = |id: &str, name: &str, ready: bool| api::PodSandbox {
            id: id.into(),
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            state: if ready {
                api::PodSandboxState::SandboxReady as i32
            } else {
                api::PodSandboxState::SandboxNotready as i32
            },
            created_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let c = |id: &str, sb: &str, name: &str| api::Container {
            id: id.into(),
            pod_sandbox_id: sb.into(),
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            state: api::ContainerState::ContainerRunning as i32,
            created_at: 1_700_000_001_500_000_000,
            labels: [(LABEL_CONTAINER_NAME.to_string(), name.to_string())].into(),
            ..Default::default()
        };
        let st = |id: &str, cpu: u64, mem: u64| api::ContainerStats {
            attributes: Some(api::ContainerAttributes {
                id: id.into(),
                ..Default::default()
            }),
            cpu: Some(api::CpuUsage {
                timestamp: 1_700_000_100_000_000_000,
                usage_core_nano_seconds: Some(api::UInt64Value { value: cpu }),
                usage_nano_cores: None,
            }),
            memory: Some(api::MemoryUsage {
                timestamp: 1_700_000_100_000_000_000,
                working_set_bytes: Some(api::UInt64Value { value: mem }),
                ..Default::default()
            }),
            ..Default::default()
        };
        (
            vec![sb("s1", "web", true), sb("s2", "gone", false)],
            vec![
                c("c1", "s1", "app"),
                c("c2", "s1", "side"),
                c("c3", "s2", "x"),
            ],
            vec![
                st("c1", 2_500_000_000, 1 << 20),
                st("c2", 500_000_000, 3 << 20),
            ],
        )
    }

    #[test]
    fn pods_are_their_running_containers_summed() {
        let col = Collector::new("n1", "/");
        let (sbs, cs, st) = cri_fixture();
        let pods = col.pods(&sbs, &cs, &st, 0);
        assert_eq!(pods.len(), 1, "the not-ready sandbox is left out");
        let p = &pods[0];
        assert_eq!(p.pod_ref.name, "web");
        assert_eq!(p.containers.len(), 2);
        assert_eq!(
            p.cpu.as_ref().unwrap().usage_core_nano_seconds,
            Some(3_000_000_000)
        );
        assert_eq!(p.memory.as_ref().unwrap().working_set_bytes, Some(4 << 20));
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(json["podRef"]["uid"], "uid-web");
        assert_eq!(json["containers"][0]["name"], "app");
        assert_eq!(
            json["containers"][0]["cpu"]["usageCoreNanoSeconds"],
            2_500_000_000u64
        );
        assert_eq!(json["containers"][0]["startTime"], "2023-11-14T22:13:21Z");
        assert!(
            json["cpu"].get("usageNanoCores").is_none(),
            "no rate from one sample"
        );
    }

    #[test]
    fn resource_metrics_as_kubelet_renders_them() {
        let col = Collector::new("n1", "/");
        let (sbs, cs, st) = cri_fixture();
        let t = 1_700_000_100_000_000_000;
        let s = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: Some(CpuStats {
                    time: rfc3339(t),
                    usage_nano_cores: None,
                    usage_core_nano_seconds: Some(123_450_000_000),
                    time_ns: t,
                }),
                memory: Some(MemoryStats {
                    time: rfc3339(t),
                    working_set_bytes: Some(1_073_741_824),
                    time_ns: t,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pods: col.pods(&sbs, &cs, &st, 0),
        };
        let text = render_resource_metrics(Some(&s));
        let want = "\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2.5 1700000100000
container_cpu_usage_seconds_total{container=\"side\",namespace=\"default\",pod=\"web\"} 0.5 1700000100000
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"web\"} 1.048576e+06 1700000100000
container_memory_working_set_bytes{container=\"side\",namespace=\"default\",pod=\"web\"} 3.145728e+06 1700000100000
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1.7000000015e+09
container_start_time_seconds{container=\"side\",namespace=\"default\",pod=\"web\"} 1.7000000015e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 123.45 1700000100000
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1.073741824e+09 1700000100000
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 3 1700000100000
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 4.194304e+06 1700000100000
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
";
        assert_eq!(text, want);
        let failed = render_resource_metrics(None);
        assert!(failed.ends_with("resource_scrape_error 1\n"), "{failed}");
        assert!(!failed.contains("node_cpu"), "{failed}");
    }

    #[test]
    fn this_machine_has_node_figures() {
        let n = Collector::new("n1", "/").node(true);
        assert!(n.cpu.unwrap().usage_core_nano_seconds.unwrap() > 0);
        assert!(n.memory.unwrap().working_set_bytes.unwrap() > 0);
        assert!(n.fs.unwrap().capacity_bytes > 0);
        // No containerd root under "/": no image filesystem figures.
        assert_eq!(n.runtime, Some(RuntimeStats { image_fs: None }));
        assert!(n.start_time.is_some());
    }
}
