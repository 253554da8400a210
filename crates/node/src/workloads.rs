//! The workload side of a node, shared by `rke2 server` and `rke2 agent`:
//! containerd, air-gap images, the pod network config and routes, and
//! the pod workers.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rke2_runtime::RuntimeError;
use rke2_runtime::addon_image::AddonImage;
use rke2_runtime::containerd::{Containerd, ContainerdConfig};
use rke2_runtime::cri::Cri;
use rke2_runtime::images::ImageImporter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pods::{PodContext, PodPaths};

/// The CNI bridge every node's pods attach to.
pub const BRIDGE: &str = "cni0";

/// What the workload side needs to know.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
    /// This node's name.
    pub node_name: String,
    /// This node's IP.
    pub node_ip: IpAddr,
    /// The sandbox image (`pause-image`).
    pub pause_image: String,
    /// The cluster DNS IP.
    pub cluster_dns: IpAddr,
    /// The cluster domain.
    pub cluster_domain: String,
    /// `resolv-conf`: the host resolv.conf for pods with `dnsPolicy:
    /// Default`; without it, RKE2's choice (`pods::dns::locate_resolv_conf`).
    pub resolv_conf: Option<PathBuf>,
    /// The cluster's pod network (`cluster-cidr`): traffic to it keeps
    /// pod source IPs, traffic elsewhere is masqueraded.
    pub cluster_cidr: ipnet::IpNet,
    /// The `kubernetes` service (first IP of service-cidr, 443).
    pub kubernetes_service: Option<(String, i32)>,
    /// Node-pressure eviction settings (`kubelet-arg: [eviction-…]`).
    pub eviction: rke2_apimachinery::eviction::EvictionConfig,
    /// Where the eviction loop reports pressure (the node status reads it).
    pub pressure: Arc<crate::eviction::Pressure>,
}

impl WorkloadConfig {
    /// The air-gap images folder.
    pub fn images_dir(&self) -> PathBuf {
        self.agent_dir.join("images")
    }
}

/// The running workload side.
pub struct Workloads {
    containerd: Containerd,
    /// The CRI client (for the node status and the node API).
    pub cri: Cri,
    /// This binary's addon image, made on first need.
    pub addon_image: Arc<AddonImage>,
    /// The pressure the eviction loop reports (for the Node status).
    pub pressure: Arc<crate::eviction::Pressure>,
}

impl Workloads {
    /// Starts containerd and imports the air-gap images (before any pod
    /// is started, so a pod never pulls an image that is in the folder),
    /// then starts the image watcher, the pod network set-up and the pod
    /// workers, which run until `stop`.
    pub async fn start(
        client: kube::Client,
        cfg: WorkloadConfig,
        stop: CancellationToken,
    ) -> Result<Workloads, RuntimeError> {
        let started = std::time::Instant::now();
        let ccfg = ContainerdConfig::for_agent_dir(&cfg.agent_dir, &cfg.pause_image);
        let conf_dir = ccfg.cni_conf_dir.clone();
        let containerd = Containerd::start(ccfg.clone()).await?;
        let cri = Cri::connect(&ccfg.socket())?;
        let imported_refs = rke2_runtime::images::ImportedRefs::default();
        let mut importer = ImageImporter::new(&cfg.images_dir(), &ccfg.socket())
            .with_imported(imported_refs.clone());
        let imported = importer.scan().await;
        info!(files = imported.len(), took = ?started.elapsed(), "container runtime up; air-gap images imported");
        tokio::spawn(importer.run(stop.clone()));

        // The pod network: once the controllers gave this node a pod
        // CIDR, write the CNI config (containerd picks it up by itself)
        // and keep routes to the other nodes' pod CIDRs.
        {
            let client = client.clone();
            let node = cfg.node_name.clone();
            let stop = stop.clone();
            let ipam_dir = cfg.agent_dir.join("cni/networks");
            let cluster_cidr = cfg.cluster_cidr.to_string();
            let loopback = cfg.node_ip.is_loopback();
            tokio::spawn(async move {
                let Some(cidr) =
                    crate::network::own_pod_cidr(client.clone(), &node, stop.clone()).await
                else {
                    return;
                };
                match crate::network::write_cni_config(&conf_dir, &cidr, BRIDGE, &ipam_dir, None) {
                    Ok(_) => info!(pod_cidr = %cidr, "pod network configured"),
                    Err(e) => warn!(error = %e, "writing the CNI config"),
                }
                // A node on a loopback address is a single-machine test
                // set-up sharing the machine's tables: no egress rule there.
                if !loopback
                    && let Err(e) = crate::network::ensure_egress_masquerade(&cidr, &cluster_cidr)
                {
                    warn!(error = %e, "adding the pod egress masquerade rule; pods cannot reach outside the cluster");
                }
                crate::network::run_routes(client, node, stop).await;
            });
        }

        let pods_dir = cfg.agent_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|e| RuntimeError::Io {
            action: "creating",
            path: pods_dir.clone(),
            source: e,
        })?;
        // Secrets are written under it: only root may look.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&pods_dir, std::fs::Permissions::from_mode(0o700));
        }
        // helm sits beside kubectl in the data dir (`<data-dir>/bin/helm`,
        // where scripts/install.sh --data-dir puts it).
        let helm = cfg
            .agent_dir
            .parent()
            .unwrap_or(std::path::Path::new("/"))
            .join("bin/helm");
        let addon_image = Arc::new(
            AddonImage::new(&ccfg.socket(), &cfg.agent_dir.join("addon-image")).with_helm(helm),
        );
        let ctx = Arc::new(PodContext {
            client,
            cri: cri.clone(),
            node_name: cfg.node_name.clone(),
            node_ip: cfg.node_ip.to_string(),
            paths: PodPaths {
                pods_dir,
                logs_dir: cfg.agent_dir.join("logs/pods"),
            },
            cluster_dns: cfg.cluster_dns.to_string(),
            cluster_domain: cfg.cluster_domain.clone(),
            resolv_conf: crate::pods::dns::locate_resolv_conf(
                cfg.resolv_conf.as_deref(),
                &crate::pods::dns::HOST_RESOLV_CONFS.map(std::path::Path::new),
                &cfg.agent_dir,
            ),
            kubernetes_service: cfg.kubernetes_service.clone(),
            addon_image: addon_image.clone(),
            pressure: cfg.pressure.clone(),
        });
        let (evict_tx, evict_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(crate::eviction::run(
            ctx.clone(),
            cfg.eviction.clone(),
            crate::eviction::FsPaths {
                node: cfg.agent_dir.clone(),
                image: ccfg.root_dir(),
            },
            crate::image_gc::Protected {
                references: vec![
                    cfg.pause_image.clone(),
                    rke2_runtime::addon_image::reference(),
                ],
                imported: imported_refs,
            },
            cfg.pressure.clone(),
            evict_tx,
            stop.clone(),
        ));
        tokio::spawn(crate::pods::run(ctx, evict_rx, stop));
        Ok(Workloads {
            containerd,
            cri,
            addon_image,
            pressure: cfg.pressure.clone(),
        })
    }

    /// Stops containerd; containers keep running in their shims.
    pub async fn stop(self) {
        self.containerd.stop().await;
    }
}
