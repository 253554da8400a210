//! From a Pod to CRI configs: the sandbox, each container's command,
//! environment, mounts and resources, and the labels that let the node
//! role find its own sandboxes and containers again after a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use rke2_runtime::cri::api;

/// CRI label: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// CRI label: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// CRI label: the pod's uid (how sandboxes and containers are adopted).
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// CRI label: the container's name in the pod.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// CRI label: "init" for init containers.
pub const LABEL_CONTAINER_KIND: &str = "rke2.io/container-kind";

/// Where a node keeps per-pod files.
#[derive(Debug, Clone)]
pub struct PodPaths {
    /// `<agent>/pods`: volumes and per-pod files, one dir per uid.
    pub pods_dir: PathBuf,
    /// `<agent>/logs/pods`: container logs, as kubelet's `/var/log/pods`.
    pub logs_dir: PathBuf,
}

impl PodPaths {
    /// The per-pod directory.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// The directory of one volume.
    pub fn volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(volume)
    }

    /// The pod's log directory (`<ns>_<name>_<uid>`).
    pub fn log_dir(&self, pod: &Pod) -> PathBuf {
        let m = &pod.metadata;
        self.logs_dir.join(format!(
            "{}_{}_{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or(""),
            m.uid.as_deref().unwrap_or("")
        ))
    }
}

/// Labels every sandbox of `pod` carries.
pub fn pod_labels(pod: &Pod) -> std::collections::HashMap<String, String> {
    let m = &pod.metadata;
    let mut l = std::collections::HashMap::new();
    l.insert(LABEL_POD_NAME.into(), m.name.clone().unwrap_or_default());
    l.insert(
        LABEL_POD_NAMESPACE.into(),
        m.namespace.clone().unwrap_or_default(),
    );
    l.insert(LABEL_POD_UID.into(), m.uid.clone().unwrap_or_default());
    l
}

/// Whether the pod uses the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The cgroup parent of the pod: one cgroup per pod under `/kubepods`,
/// as the cgroupfs driver lays it out (QoS classes are not separated).
pub fn cgroup_parent(uid: &str) -> String {
    format!("/kubepods/pod{uid}")
}

/// The CRI sandbox config of `pod`.
pub fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    paths: &PodPaths,
    dns: api::DnsConfig,
) -> api::PodSandboxConfig {
    let m = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let host_net = host_network(pod);
    let uid = m.uid.clone().unwrap_or_default();
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| m.name.clone().unwrap_or_default());
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.clone().unwrap_or_default() {
            if let Some(hp) = p.host_port.filter(|hp| *hp > 0) {
                port_mappings.push(api::PortMapping {
                    protocol: match p.protocol.as_deref() {
                        Some("UDP") => api::Protocol::Udp as i32,
                        Some("SCTP") => api::Protocol::Sctp as i32,
                        _ => api::Protocol::Tcp as i32,
                    },
                    container_port: p.container_port,
                    host_port: hp,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
    }
    let mut annotations = std::collections::HashMap::new();
    for (k, v) in m.annotations.clone().unwrap_or_default() {
        annotations.insert(k, v);
    }
    let ns_mode = |host: bool| {
        if host {
            api::NamespaceMode::Node as i32
        } else {
            api::NamespaceMode::Pod as i32
        }
    };
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: m.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            namespace: m.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname: if host_net { String::new() } else { hostname },
        log_directory: paths.log_dir(pod).to_string_lossy().into_owned(),
        dns_config: Some(dns),
        port_mappings,
        labels: pod_labels(pod),
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(&uid),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: ns_mode(host_net),
                    pid: if spec.host_pid.unwrap_or(false) {
                        api::NamespaceMode::Node as i32
                    } else if spec.share_process_namespace.unwrap_or(false) {
                        api::NamespaceMode::Pod as i32
                    } else {
                        api::NamespaceMode::Container as i32
                    },
                    ipc: ns_mode(spec.host_ipc.unwrap_or(false)),
                    ..Default::default()
                }),
                privileged: spec.containers.iter().any(privileged),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

fn privileged(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

/// Expands `$(VAR)` references in a command or argument as Kubernetes
/// does: `$$` escapes, unknown references are left as written.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// A cpu quantity in millicores ("500m", "2", "0.5").
pub fn millicores(q: &str) -> Option<i64> {
    rke2_apimachinery::quantity::parse_quantity(q)
        .ok()
        .map(|v| v.as_milli() as i64)
}

/// Bytes of a memory quantity ("64Mi", "1G", "1000").
pub fn bytes(q: &str) -> Option<i64> {
    rke2_apimachinery::quantity::parse_quantity(q)
        .ok()
        .map(|v| v.value() as i64)
}

/// CRI resources for a container from its requests and limits (cpu
/// shares from the request, CFS quota and memory limit from the limits).
pub fn resources(c: &Container) -> api::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let get =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
    let mut out = api::LinuxContainerResources::default();
    let req_cpu = get(&r.requests, "cpu")
        .or_else(|| get(&r.limits, "cpu"))
        .and_then(|q| millicores(&q));
    out.cpu_shares = req_cpu.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    if let Some(lim) = get(&r.limits, "cpu").and_then(|q| millicores(&q)) {
        out.cpu_period = 100_000;
        out.cpu_quota = (lim * 100_000 / 1000).max(1000);
    }
    if let Some(mem) = get(&r.limits, "memory").and_then(|q| bytes(&q)) {
        out.memory_limit_in_bytes = mem;
    }
    out
}

/// A mount from a volume dir into the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Path on the node.
    pub host_path: PathBuf,
    /// Path in the container.
    pub container_path: String,
    /// Read-only.
    pub readonly: bool,
}

/// The CRI container config.
#[allow(clippy::too_many_arguments)]
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    image: &str,
    env: &BTreeMap<String, String>,
    env_order: &[String],
    mounts: &[Mount],
    init: bool,
) -> api::ContainerConfig {
    let mut labels = pod_labels(pod);
    labels.remove(LABEL_POD_NAME);
    labels.insert(
        LABEL_POD_NAME.into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_CONTAINER_NAME.into(), c.name.clone());
    if init {
        labels.insert(LABEL_CONTAINER_KIND.into(), "init".into());
    }
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(
        "io.kubernetes.container.restartCount".to_string(),
        attempt.to_string(),
    );
    let sc = c.security_context.clone().unwrap_or_default();
    let pod_sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    let run_as_group = sc.run_as_group.or(pod_sc.run_as_group);
    let caps = sc.capabilities.clone().unwrap_or_default();
    let pid_mode = if pod.spec.as_ref().and_then(|s| s.host_pid).unwrap_or(false) {
        api::NamespaceMode::Node
    } else if pod
        .spec
        .as_ref()
        .and_then(|s| s.share_process_namespace)
        .unwrap_or(false)
    {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: c
            .command
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| expand(s, env))
            .collect(),
        args: c
            .args
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| expand(s, env))
            .collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env_order
            .iter()
            .filter_map(|k| {
                env.get(k).map(|v| api::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
            })
            .collect(),
        mounts: mounts
            .iter()
            .map(|m| api::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.readonly,
                ..Default::default()
            })
            .collect(),
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(api::LinuxContainerSecurityContext {
                capabilities: Some(api::Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    ..Default::default()
                }),
                privileged: sc.privileged.unwrap_or(false),
                namespace_options: Some(api::NamespaceOption {
                    network: if host_network(pod) {
                        api::NamespaceMode::Node as i32
                    } else {
                        api::NamespaceMode::Pod as i32
                    },
                    pid: pid_mode as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                run_as_user: run_as_user.map(|v| api::Int64Value { value: v }),
                run_as_group: run_as_group.map(|v| api::Int64Value { value: v }),
                // The pod's supplemental groups and its fsGroup, as kubelet
                // adds the fsGroup so the container can use its volumes.
                supplemental_groups: pod_sc
                    .supplemental_groups
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(pod_sc.fs_group)
                    .collect(),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// True for a path that stays inside its base after joining (no `..`,
/// not absolute): subPath and item paths must not escape their volume.
pub fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("é$(A)", &env), "é1");
    }

    #[test]
    fn quantities() {
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("1.5"), Some(1500));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
    }

    #[test]
    fn subpaths_cannot_escape() {
        assert!(safe_relative("a/b"));
        assert!(!safe_relative("../a"));
        assert!(!safe_relative("/etc"));
        assert!(!safe_relative(""));
    }
}
