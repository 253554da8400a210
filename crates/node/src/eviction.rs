//! Node-pressure eviction, as kubelet's eviction manager does it for
//! memory: every [`MONITOR_PERIOD`] the node compares `memory.available`
//! with its hard threshold (`kubelet-arg: [eviction-hard=…]`, default
//! `memory.available<100Mi`). While it is met the Node reports
//! `MemoryPressure=True` (the node lifecycle controller then taints it
//! `node.kubernetes.io/memory-pressure:NoSchedule`) and one pod per period
//! is evicted: those using more memory than they request first (so
//! BestEffort ones), then lower priority, then the largest use above the
//! request; critical pods (priority of `system-cluster-critical` and up)
//! never. The evicted pod's containers are killed at once (a hard
//! threshold has no grace) and it ends `Failed` with reason `Evicted` and
//! kubelet's message.
//!
//! `memory.available` is the kernel's `MemAvailable` (kubelet subtracts
//! the root cgroup's working set from the capacity; both mean "what can
//! still be had without swapping"). Filesystem and PID thresholds are
//! parsed but not enforced.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use rke2_apimachinery::eviction::Threshold;
use rke2_runtime::cri::api;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pods::PodContext;

/// How often pressure is looked at (kubelet's
/// `evictionMonitoringPeriod`).
pub const MONITOR_PERIOD: Duration = Duration::from_secs(10);

/// Pods at or above this priority are never evicted (kubelet's
/// `IsCriticalPod`: `scheduling.SystemCriticalPriority`).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// The node's pressure conditions, shared by the eviction loop (which
/// sets them) and the node status writer (which reports them).
#[derive(Debug, Default)]
pub struct Pressure {
    memory: AtomicBool,
    changed: Notify,
}

impl Pressure {
    /// Whether a memory threshold is met.
    pub fn memory(&self) -> bool {
        self.memory.load(Ordering::Relaxed)
    }

    /// Records the memory pressure; wakes the status writer on a change.
    pub fn set_memory(&self, on: bool) {
        if self.memory.swap(on, Ordering::Relaxed) != on {
            self.changed.notify_one();
        }
    }

    /// Resolves when a condition changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

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

/// A bytes amount as kubelet prints quantities (`1536Ki`, `100Mi`).
pub fn format_bytes(b: i128) -> String {
    for (unit, size) in [("Gi", 1i128 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b != 0 && b % size == 0 {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

/// A pod as the ranking sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The pod's uid.
    pub uid: String,
    /// `namespace/name`, for logs.
    pub name: String,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// Sum of the containers' memory requests, bytes.
    pub request: i128,
    /// Working set now, bytes.
    pub usage: i128,
    /// Per container: (name, usage, request), for the message.
    pub containers: Vec<(String, i128, i128)>,
}

/// The order kubelet evicts in under memory pressure
/// (`rankMemoryPressure`): usage above requests first, then lower
/// priority, then more memory above the request. Critical pods are not
/// candidates at all.
pub fn rank(mut pods: Vec<Candidate>) -> Vec<Candidate> {
    pods.retain(|p| p.priority < SYSTEM_CRITICAL_PRIORITY);
    pods.sort_by(|a, b| {
        let exceeds = |p: &Candidate| p.usage > p.request;
        exceeds(b)
            .cmp(&exceeds(a))
            .then(a.priority.cmp(&b.priority))
            .then((b.usage - b.request).cmp(&(a.usage - a.request)))
    });
    pods
}

/// kubelet's eviction message for memory.
pub fn message(threshold: &Threshold, available: i128, victim: &Candidate) -> String {
    let mut m = format!(
        "The node was low on resource: memory. Threshold quantity: {}, available: {}. ",
        threshold.text,
        format_bytes(available)
    );
    for (name, usage, request) in &victim.containers {
        if usage > request {
            m.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of memory. ",
                format_bytes(*usage),
                if *request == 0 {
                    "0".to_string()
                } else {
                    format_bytes(*request)
                }
            ));
        }
    }
    m
}

fn memory_request(c: &k8s_openapi::api::core::v1::Container) -> i128 {
    let r = c.resources.as_ref();
    let q = r
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get("memory"))
        .or_else(|| {
            r.and_then(|r| r.limits.as_ref())
                .and_then(|m| m.get("memory"))
        });
    q.and_then(|q| rke2_apimachinery::quantity::parse_quantity(&q.0).ok())
        .map(|q| q.value())
        .unwrap_or(0)
}

/// The pods of this node that may be evicted, with their memory use.
async fn candidates(ctx: &PodContext) -> Vec<Candidate> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let Ok(list) = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name)))
        .await
    else {
        return Vec::new();
    };
    let mut rt = ctx.cri.runtime();
    let (Ok(ctrs), Ok(stats)) = (
        rt.list_containers(api::ListContainersRequest { filter: None })
            .await,
        rt.list_container_stats(api::ListContainerStatsRequest { filter: None })
            .await,
    ) else {
        return Vec::new();
    };
    let working: HashMap<String, i128> = stats
        .into_inner()
        .stats
        .into_iter()
        .filter_map(|s| {
            let id = s.attributes?.id;
            let ws = s.memory?.working_set_bytes?.value;
            Some((id, i128::from(ws)))
        })
        .collect();
    // (pod uid, container name) -> working set of its running container.
    let mut usage: HashMap<(String, String), i128> = HashMap::new();
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
        if let Some(ws) = working.get(&c.id) {
            *usage.entry((uid.clone(), name.clone())).or_default() += ws;
        }
    }
    let mut out = Vec::new();
    for p in list.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let spec = p.spec.clone().unwrap_or_default();
        let containers: Vec<(String, i128, i128)> = spec
            .containers
            .iter()
            .map(|c| {
                let used = usage
                    .get(&(uid.clone(), c.name.clone()))
                    .copied()
                    .unwrap_or(0);
                (c.name.clone(), used, memory_request(c))
            })
            .collect();
        out.push(Candidate {
            name: format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or(""),
                p.metadata.name.as_deref().unwrap_or("")
            ),
            uid,
            priority: spec.priority.unwrap_or(0),
            request: containers.iter().map(|c| c.2).sum(),
            usage: containers.iter().map(|c| c.1).sum(),
            containers,
        });
    }
    out
}

/// Watches memory against `thresholds` until `stop`, reporting pressure
/// to `pressure` and sending (pod uid, message) for each pod to evict.
pub async fn run(
    ctx: Arc<PodContext>,
    thresholds: Vec<Threshold>,
    pressure: Arc<Pressure>,
    evict: mpsc::UnboundedSender<(String, String)>,
    stop: CancellationToken,
) {
    let Some(threshold) = thresholds
        .into_iter()
        .find(|t| t.signal == "memory.available")
    else {
        return;
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
        let Some((available, capacity)) = memory_observation() else {
            continue;
        };
        let met = available < threshold.quantity(capacity);
        if met != pressure.memory() {
            if met {
                warn!(threshold = %threshold, available = %format_bytes(available), "eviction threshold met: attempting to reclaim memory");
            } else {
                info!(available = %format_bytes(available), "memory pressure over");
            }
        }
        pressure.set_memory(met);
        if !met {
            last = None;
            continue;
        }
        let ranked = rank(candidates(&ctx).await);
        let Some(victim) = ranked
            .into_iter()
            .find(|c| last.as_deref() != Some(c.uid.as_str()))
        else {
            continue;
        };
        let msg = message(&threshold, available, &victim);
        info!(pod = %victim.name, usage = %format_bytes(victim.usage), "evicting a pod under memory pressure");
        last = Some(victim.uid.clone());
        let _ = evict.send((victim.uid, msg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(uid: &str, priority: i32, request: i128, usage: i128) -> Candidate {
        Candidate {
            uid: uid.into(),
            name: uid.into(),
            priority,
            request,
            usage,
            containers: vec![("c".into(), usage, request)],
        }
    }

    #[test]
    fn ranking_is_kubelets() {
        let ranked = rank(vec![
            cand("guaranteed", 0, 100 << 20, 50 << 20),
            cand("critical", SYSTEM_CRITICAL_PRIORITY, 0, 500 << 20),
            cand("besteffort-small", 0, 0, 1 << 20),
            cand("burstable-over", 0, 10 << 20, 300 << 20),
            cand("besteffort-high", 1000, 0, 900 << 20),
        ]);
        let order: Vec<&str> = ranked.iter().map(|c| c.uid.as_str()).collect();
        assert_eq!(
            order,
            [
                "burstable-over",
                "besteffort-small",
                "besteffort-high",
                "guaranteed"
            ]
        );
    }

    #[test]
    fn message_and_meminfo() {
        let t = rke2_apimachinery::eviction::parse_thresholds("memory.available<100Mi").unwrap();
        let m = message(&t[0], 1536 * 1024, &cand("p", 0, 0, 12 << 20));
        assert_eq!(
            m,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 1536Ki. Container c was using 12Mi, request is 0, has larger consumption of memory. "
        );
        let (avail, total) =
            parse_meminfo("MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   1000 kB\n")
                .unwrap();
        assert_eq!((avail, total), (1000 * 1024, 24_000_000 * 1024));
    }
}
