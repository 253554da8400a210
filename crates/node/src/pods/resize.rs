//! In-place resize of a running pod's containers (`pods/resize`), the
//! decisions only: what a container's cpu/memory requests and limits are,
//! whether a resize fits the node now, later or never (upstream kubelet's
//! `canResizePod`: `Infeasible`, `Deferred`), and whether applying it
//! restarts the container (its `resizePolicy`). The worker
//! ([`super::worker`]) applies them through CRI and reports them.

use k8s_openapi::api::core::v1::{Container, Pod};
use rke2_runtime::cri::api;
use serde_json::{Map, Value, json};

/// The resources a resize changes.
pub const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// A container's cpu and memory requests and limits as the API spells
/// them: `{"requests": {...}, "limits": {...}}` with only cpu and memory
/// (empty maps left out).
pub fn of_container(c: &Container) -> Value {
    let v = serde_json::to_value(c.resources.clone().unwrap_or_default()).unwrap_or_default();
    only_cpu_memory(&v)
}

/// `res` (a `ResourceRequirements`) with only cpu and memory kept.
pub fn only_cpu_memory(res: &Value) -> Value {
    let mut out = Map::new();
    for bag in ["requests", "limits"] {
        let m: Map<String, Value> = RESIZABLE
            .iter()
            .filter_map(|r| res[bag].get(*r).map(|v| (r.to_string(), v.clone())))
            .collect();
        if !m.is_empty() {
            out.insert(bag.into(), Value::Object(m));
        }
    }
    Value::Object(out)
}

/// The amount of `res[bag][r]`: millicores for cpu, bytes for memory.
pub fn amount(res: &Value, bag: &str, r: &str) -> Option<i128> {
    let s = match &res[bag][r] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let q = rke2_apimachinery::quantity::parse_quantity(&s).ok()?;
    Some(if r == "cpu" { q.as_milli() } else { q.value() })
}

/// The resources (of [`RESIZABLE`]) whose request or limit differs
/// between `a` and `b`, compared by amount.
pub fn changed(a: &Value, b: &Value) -> Vec<&'static str> {
    RESIZABLE
        .into_iter()
        .filter(|r| {
            ["requests", "limits"]
                .iter()
                .any(|bag| amount(a, bag, r) != amount(b, bag, r))
        })
        .collect()
}

/// Whether applying a change of `resources` restarts container `c` (its
/// `resizePolicy` says `RestartContainer` for one of them; the default
/// is `NotRequired`).
pub fn restart_needed(c: &Container, resources: &[&str]) -> bool {
    c.resize_policy.iter().flatten().any(|p| {
        p.restart_policy == "RestartContainer" && resources.contains(&p.resource_name.as_str())
    })
}

/// The CRI resources of container `c` run with `res` (cpu shares from the
/// request, CFS quota and memory limit from the limits).
pub fn linux(c: &Container, res: &Value) -> api::LinuxContainerResources {
    let mut c = c.clone();
    c.resources = serde_json::from_value(res.clone()).ok();
    super::spec::resources(&c)
}

/// (cpu millicores, memory bytes) requested by the containers `res`.
pub fn requests<'a>(res: impl IntoIterator<Item = &'a Value>) -> (i128, i128) {
    res.into_iter().fold((0, 0), |(cpu, mem), r| {
        (
            cpu + amount(r, "requests", "cpu").unwrap_or(0),
            mem + amount(r, "requests", "memory").unwrap_or(0),
        )
    })
}

/// Whether the pod's resize was found never to fit (its
/// `PodResizePending` condition says `Infeasible`).
fn infeasible(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "PodResizePending" && c.reason.as_deref() == Some("Infeasible"))
}

/// (cpu millicores, memory bytes) another pod holds on the node: per
/// container the largest of what its spec asks, what its node allocated
/// (`status.containerStatuses[].allocatedResources`) and what it runs
/// with (`.resources`), leaving the spec out while its resize is
/// infeasible (upstream's `PodRequests` with status resources).
pub fn held_by(pod: &Pod) -> (i128, i128) {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let never = infeasible(pod);
    let mut total = (0, 0);
    for c in pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
    {
        let spec = of_container(c);
        let status = statuses.iter().find(|s| s.name == c.name);
        let alloc = status
            .and_then(|s| s.allocated_resources.as_ref())
            .map(|a| json!({"requests": a}));
        let actual = status
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| serde_json::to_value(r).ok());
        let (scpu, smem) = requests([&spec]);
        let (cpu, mem) = if alloc.is_none() && actual.is_none() {
            (scpu, smem)
        } else {
            let (acpu, amem) = requests(alloc.as_ref());
            let (rcpu, rmem) = requests(actual.as_ref());
            let (cpu, mem) = (acpu.max(rcpu), amem.max(rmem));
            if never {
                (cpu, mem)
            } else {
                (scpu.max(cpu), smem.max(mem))
            }
        };
        total.0 += cpu;
        total.1 += mem;
    }
    total
}

/// Whether a resize fits: now, later (another pod must go first) or
/// never (more than the node's allocatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Allocate it now.
    Fits,
    /// `PodResizePending` reason `Deferred`, with kubelet's message.
    Deferred(String),
    /// `PodResizePending` reason `Infeasible`, with kubelet's message.
    Infeasible(String),
}

/// Upstream kubelet's `canResizePod` for a pod that would request `want`
/// (cpu millicores, memory bytes) on a node with `allocatable` where the
/// other pods hold `others`.
pub fn fit(want: (i128, i128), others: (i128, i128), allocatable: (i128, i128)) -> Fit {
    if want.0 > allocatable.0 || want.1 > allocatable.1 {
        let what = if want.1 > allocatable.1 {
            format!("memory, requested: {}, capacity: {}", want.1, allocatable.1)
        } else {
            format!("cpu, requested: {}, capacity: {}", want.0, allocatable.0)
        };
        return Fit::Infeasible(format!("Node didn't have enough capacity: {what}"));
    }
    for (name, w, used, cap) in [
        ("cpu", want.0, others.0, allocatable.0),
        ("memory", want.1, others.1, allocatable.1),
    ] {
        if w + used > cap {
            return Fit::Deferred(format!(
                "Node didn't have enough resource: {name}, requested: {w}, used: {used}, capacity: {cap}"
            ));
        }
    }
    Fit::Fits
}

/// The message of a memory limit decrease left undone because the
/// container uses more (kubelet's best-effort check before lowering a
/// limit, 1.34+).
pub fn below_usage(container: &str, limit: i128, usage: i128) -> String {
    format!(
        "attempting to set container {container:?} memory limit ({limit}) below current usage ({usage})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn amounts_and_changes() {
        let a = json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "64Mi"}});
        let mut b = a.clone();
        b["limits"]["cpu"] = json!("1000m");
        assert!(changed(&a, &b).is_empty());
        b["limits"]["memory"] = json!("128Mi");
        assert_eq!(changed(&a, &b), vec!["memory"]);
        assert_eq!(requests([&a, &b]), (200, 64 << 20));
        let c = container(json!({"name": "c", "resources": b,
            "resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]}));
        assert!(restart_needed(&c, &["memory"]));
        assert!(!restart_needed(&c, &["cpu"]));
        let l = linux(&c, &a);
        assert_eq!(l.memory_limit_in_bytes, 64 << 20);
        assert_eq!(l.cpu_quota, 100_000);
        assert_eq!(l.cpu_shares, 102);
        assert_eq!(
            of_container(&container(
                json!({"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}}})
            )),
            json!({"limits": {"memory": "1Gi"}})
        );
    }

    #[test]
    fn fit_is_kubelets() {
        let gi = 1i128 << 30;
        assert_eq!(fit((1000, gi), (500, gi), (2000, 4 * gi)), Fit::Fits);
        assert_eq!(
            fit((1000, 100 * gi), (0, 0), (2000, 4 * gi)),
            Fit::Infeasible(format!(
                "Node didn't have enough capacity: memory, requested: {}, capacity: {}",
                100 * gi,
                4 * gi
            ))
        );
        assert_eq!(
            fit((3000, gi), (0, 0), (2000, 4 * gi)),
            Fit::Infeasible(
                "Node didn't have enough capacity: cpu, requested: 3000, capacity: 2000".into()
            )
        );
        assert_eq!(
            fit((1500, gi), (1000, gi), (2000, 4 * gi)),
            Fit::Deferred("Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000".into())
        );
    }

    #[test]
    fn other_pods_hold_the_larger_of_spec_and_allocation() {
        let pod = |cond: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]},
                "status": {"conditions": [{"type": "PodResizePending", "status": "True", "reason": cond}],
                    "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                        "allocatedResources": {"cpu": "1", "memory": "2Gi"}}]}}))
            .unwrap()
        };
        assert_eq!(held_by(&pod("Deferred")), (2000, 2 << 30));
        assert_eq!(held_by(&pod("Infeasible")), (1000, 2 << 30));
    }
}
