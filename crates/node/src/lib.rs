//! The node role: this machine as a Kubernetes Node.
//!
//! It registers the Node (labels, taints, addresses, capacity read from
//! the machine), keeps its conditions current, and renews its Lease in
//! `kube-node-lease` every 10 s, which is what the node lifecycle loop
//! watches. It talks to the API only through the `kube` client, like
//! any kubelet.

pub mod api;
pub mod eviction;
pub mod image_gc;
pub mod network;
pub mod pods;
pub mod workloads;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration written into the Lease.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the runtime's readiness is checked.
pub const RUNTIME_CHECK: Duration = Duration::from_millis(500);
/// How often the Node status (conditions, heartbeat) is written; also
/// how soon a node marked `Unknown` while cut off reports `Ready` again.
pub const STATUS_REFRESH: Duration = Duration::from_secs(20);

/// What this node is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node name.
    pub name: String,
    /// Labels to set (role labels and `node-label` values).
    pub labels: BTreeMap<String, String>,
    /// Taints as (key, value, effect).
    pub taints: Vec<(String, Option<String>, String)>,
    /// Node IPs (the first is the InternalIP used by others).
    pub addresses: Vec<IpAddr>,
    /// The version reported as kubeletVersion.
    pub kubelet_version: String,
    /// The container runtime, whose readiness the Ready condition
    /// reports (as a kubelet's does); `None` reports Ready unconditionally.
    pub runtime: Option<rke2_runtime::cri::Cri>,
    /// The pressure conditions the eviction loop finds
    /// ([`eviction::Pressure`]); a change is reported at once.
    pub pressure: std::sync::Arc<eviction::Pressure>,
}

/// What the container runtime says about itself, for the Node status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeState {
    /// `containerd://<version>`, or empty when unknown.
    pub version: String,
    /// Runtime and pod network both ready.
    pub ready: bool,
    /// Why not, in kubelet's words.
    pub message: String,
}

/// Asks the runtime whether it and its pod network are ready.
pub async fn runtime_state(cri: &rke2_runtime::cri::Cri) -> RuntimeState {
    let version = cri.version().await.unwrap_or_default();
    match cri.ready().await {
        Ok((true, true, _)) => RuntimeState {
            version,
            ready: true,
            message: String::new(),
        },
        Ok((true, false, why)) => RuntimeState {
            version,
            ready: false,
            message: format!("container runtime network not ready: {why}"),
        },
        Ok((false, _, why)) => RuntimeState {
            version,
            ready: false,
            message: format!("container runtime not ready: {why}"),
        },
        Err(e) => RuntimeState {
            version,
            ready: false,
            message: format!("container runtime is down: {e}"),
        },
    }
}

/// Errors of the node role.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API refused or failed a request.
    #[error("{step}: {source}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// The client error.
        source: kube::Error,
    },
}

fn read_file(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn machine_memory_kib() -> u64 {
    read_file("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read_file("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn kernel_version() -> String {
    read_file("/proc/sys/kernel/osrelease").trim().to_string()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The `status` of this node now: capacity, addresses, conditions, info.
pub fn node_status(cfg: &NodeConfig, now: &str, rt: Option<&RuntimeState>) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = machine_memory_kib();
    let facts = cfg.pressure.facts();
    let storage = facts.ephemeral_storage.unwrap_or(0);
    let (alloc_cpu, alloc_mem, alloc_storage) =
        facts.allocatable(cpus as i128 * 1000, i128::from(mem_kib) * 1024, storage);
    let mut capacity =
        json!({"cpu": cpus.to_string(), "memory": format!("{mem_kib}Ki"), "pods": "110"});
    // As kubelet: allocatable is the capacity less kube-reserved and
    // system-reserved, less the hard eviction thresholds of memory and
    // the node filesystem; the filesystem's size is known once the
    // eviction loop looked at it.
    let mut allocatable = capacity.clone();
    allocatable["cpu"] = json!(if alloc_cpu % 1000 == 0 {
        (alloc_cpu / 1000).to_string()
    } else {
        format!("{alloc_cpu}m")
    });
    allocatable["memory"] = json!(eviction::format_bytes(alloc_mem));
    if facts.ephemeral_storage.is_some() {
        capacity["ephemeral-storage"] = json!(eviction::format_bytes(storage));
        allocatable["ephemeral-storage"] = json!(eviction::format_bytes(alloc_storage));
    }
    let mut addresses: Vec<Value> = cfg
        .addresses
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": cfg.name}));
    let cond = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "addresses": addresses,
        "conditions": [
            if cfg.pressure.memory() {
                cond("MemoryPressure", "True", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
            } else {
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available")
            },
            if cfg.pressure.disk() {
                cond("DiskPressure", "True", "KubeletHasDiskPressure", "kubelet has disk pressure")
            } else {
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure")
            },
            if cfg.pressure.pid() {
                cond("PIDPressure", "True", "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
            } else {
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available")
            },
            match rt {
                Some(rt) if !rt.ready => cond("Ready", "False", "KubeletNotReady", &rt.message),
                _ => cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            },
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": read_file("/etc/machine-id").trim(),
            "systemUUID": "",
            "bootID": read_file("/proc/sys/kernel/random/boot_id").trim(),
            "kernelVersion": kernel_version(),
            "osImage": os_image(),
            "containerRuntimeVersion": rt.map(|r| r.version.as_str()).unwrap_or(""),
            "kubeletVersion": cfg.kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// Labels every node carries, plus the configured ones.
pub fn node_labels(cfg: &NodeConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/arch".into(), arch().into());
    l.insert("beta.kubernetes.io/arch".into(), arch().into());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    l.insert("node.kubernetes.io/instance-type".into(), "rke2".into());
    l.extend(cfg.labels.clone());
    l
}

fn taints_json(cfg: &NodeConfig) -> Value {
    Value::Array(
        cfg.taints
            .iter()
            .map(|(k, v, e)| {
                let mut t = json!({"key": k, "effect": e});
                if let Some(v) = v {
                    t["value"] = json!(v);
                }
                t
            })
            .collect(),
    )
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn micro_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Creates or updates the Node object; returns its uid.
pub async fn register(client: &kube::Client, cfg: &NodeConfig) -> Result<String, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = node_labels(cfg);
    let existing = nodes
        .get_opt(&cfg.name)
        .await
        .map_err(|source| NodeError::Api {
            step: "reading the node",
            source,
        })?;
    let node = match existing {
        None => {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": cfg.name, "labels": labels,
                             "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"taints": taints_json(cfg)},
            }))
            .expect("node literal is a valid Node");
            match nodes.create(&PostParams::default(), &node).await {
                Ok(n) => {
                    info!(node = %cfg.name, "node registered");
                    n
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    nodes
                        .get(&cfg.name)
                        .await
                        .map_err(|source| NodeError::Api {
                            step: "reading the node",
                            source,
                        })?
                }
                Err(source) => {
                    return Err(NodeError::Api {
                        step: "creating the node",
                        source,
                    });
                }
            }
        }
        Some(existing) => {
            // Configured labels win over what is stored; other labels
            // stay. Taints are only added: taints set since
            // registration (by users, or the node lifecycle loop's
            // unreachable taints, which it removes itself once this
            // node renews its Lease) are left alone, as a kubelet does.
            let mut taints: Vec<Value> = existing
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .collect();
            let before = taints.len();
            for t in taints_json(cfg).as_array().cloned().unwrap_or_default() {
                if !taints
                    .iter()
                    .any(|x| x["key"] == t["key"] && x["effect"] == t["effect"])
                {
                    taints.push(t);
                }
            }
            let labels_only = json!({"metadata": {"labels": labels}});
            let mut patch = labels_only.clone();
            if taints.len() != before {
                patch["spec"] = json!({"taints": taints});
            }
            let pp = PatchParams::default();
            match nodes.patch(&cfg.name, &pp, &Patch::Merge(&patch)).await {
                Ok(n) => n,
                // A node may not change its own taints after it
                // registered (NodeRestriction); an admin can.
                Err(kube::Error::Api(s)) if s.code == 403 && taints.len() != before => {
                    warn!(node = %cfg.name, reason = %s.message,
                            "node-taint values added since registration were not applied; set them with kubectl taint");
                    nodes
                        .patch(&cfg.name, &pp, &Patch::Merge(&labels_only))
                        .await
                        .map_err(|source| NodeError::Api {
                            step: "updating the node",
                            source,
                        })?
                }
                Err(source) => {
                    return Err(NodeError::Api {
                        step: "updating the node",
                        source,
                    });
                }
            }
        }
    };
    update_status(client, cfg).await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Writes the node's status (conditions, capacity, addresses).
pub async fn update_status(client: &kube::Client, cfg: &NodeConfig) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let rt = match &cfg.runtime {
        Some(cri) => Some(runtime_state(cri).await),
        None => None,
    };
    let patch = json!({"status": node_status(cfg, &now(), rt.as_ref())});
    nodes
        .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeError::Api {
            step: "updating the node status",
            source,
        })?;
    Ok(())
}

/// Creates or renews the node's Lease.
pub async fn renew_lease(
    client: &kube::Client,
    cfg: &NodeConfig,
    node_uid: &str,
) -> Result<(), NodeError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let spec = json!({"holderIdentity": cfg.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": micro_now()});
    match leases
        .patch(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.name, "uid": node_uid}]},
                "spec": spec,
            }))
            .expect("lease literal is a valid Lease");
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
                .map_err(|source| NodeError::Api {
                    step: "creating the node lease",
                    source,
                })
        }
        Err(source) => Err(NodeError::Api {
            step: "renewing the node lease",
            source,
        }),
    }
}

/// Runs the node role until `stop` is cancelled: registers, then renews
/// the Lease every 10 s and refreshes the status every minute. Failures
/// are logged and retried; the role never gives up while the server runs.
pub async fn run(client: kube::Client, cfg: NodeConfig, stop: CancellationToken) {
    let uid = loop {
        match register(&client, &cfg).await {
            Ok(uid) => break uid,
            Err(e) => warn!(error = %e, "node registration failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REFRESH);
    status_tick.tick().await;
    // Runtime readiness is looked at often, and a change is reported at
    // once: a node turns Ready as soon as its pod network is configured.
    let mut runtime_tick = tokio::time::interval(RUNTIME_CHECK);
    let mut last_rt: Option<RuntimeState> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = runtime_tick.tick(), if cfg.runtime.is_some() => {
                let Some(cri) = &cfg.runtime else { continue };
                let now_rt = runtime_state(cri).await;
                if last_rt.as_ref() != Some(&now_rt) {
                    if let Err(e) = update_status(&client, &cfg).await {
                        warn!(error = %e, "node status update failed");
                    } else {
                        last_rt = Some(now_rt);
                    }
                }
            }
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &cfg, &uid).await {
                    warn!(error = %e, "lease renewal failed");
                }
            }
            _ = status_tick.tick() => {
                if let Err(e) = update_status(&client, &cfg).await {
                    warn!(error = %e, "node status update failed");
                }
            }
            _ = cfg.pressure.changed() => {
                if let Err(e) = update_status(&client, &cfg).await {
                    warn!(error = %e, "node status update failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig {
            name: "s1".into(),
            labels: BTreeMap::from([(
                "node-role.kubernetes.io/master".to_string(),
                "true".to_string(),
            )]),
            taints: vec![(
                "CriticalAddonsOnly".into(),
                Some("true".into()),
                "NoExecute".into(),
            )],
            addresses: vec!["10.0.0.5".parse().unwrap()],
            kubelet_version: "v1.35.0+rke2r1".into(),
            runtime: None,
            pressure: Default::default(),
        }
    }

    #[test]
    fn status_reports_machine_capacity_and_ready() {
        let s = node_status(&cfg(), "2024-01-01T00:00:00Z", None);
        assert!(
            s["capacity"]["cpu"]
                .as_str()
                .unwrap()
                .parse::<u32>()
                .unwrap()
                >= 1
        );
        assert!(s["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
        assert_ne!(s["capacity"]["memory"], "0Ki");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(s["addresses"][0]["address"], "10.0.0.5");
        // The literal must deserialize as a real Node status.
        let _: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(s).unwrap();
    }

    #[test]
    fn status_reports_pressure_and_allocatable() {
        let c = cfg();
        c.pressure.set(eviction::Condition::Disk, true);
        c.pressure.set_facts(eviction::NodeFacts {
            reserved: rke2_apimachinery::eviction::Reserved {
                cpu_milli: 250,
                memory: 1 << 30,
                ephemeral_storage: 1 << 30,
                pid: 0,
            },
            ephemeral_storage: Some(100 << 30),
            memory_threshold: Some(rke2_apimachinery::eviction::ThresholdValue::Quantity(
                100 << 20,
            )),
            nodefs_threshold: Some(rke2_apimachinery::eviction::ThresholdValue::Percentage(
                10.0,
            )),
        });
        let s = node_status(&c, "2024-01-01T00:00:00Z", None);
        let cond = |t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(cond("DiskPressure")["status"], "True");
        assert_eq!(cond("DiskPressure")["reason"], "KubeletHasDiskPressure");
        assert_eq!(cond("PIDPressure")["status"], "False");
        assert_eq!(cond("MemoryPressure")["status"], "False");
        assert_eq!(s["capacity"]["ephemeral-storage"], "100Gi");
        assert_eq!(s["allocatable"]["ephemeral-storage"], "89Gi");
        let cpus: i128 = s["capacity"]["cpu"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            s["allocatable"]["cpu"],
            format!("{}m", cpus * 1000 - 250),
            "capacity less kube-reserved and system-reserved"
        );
        let kib: i128 = s["capacity"]["memory"]
            .as_str()
            .unwrap()
            .trim_end_matches("Ki")
            .parse()
            .unwrap();
        assert_eq!(
            s["allocatable"]["memory"],
            eviction::format_bytes(kib * 1024 - (1 << 30) - (100 << 20))
        );
    }

    #[test]
    fn labels_and_taints() {
        let l = node_labels(&cfg());
        assert_eq!(l["kubernetes.io/hostname"], "s1");
        assert_eq!(l["node-role.kubernetes.io/master"], "true");
        assert_eq!(
            taints_json(&cfg())[0],
            json!({"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"})
        );
    }
}
