//! The built-in local-path provisioner, as k3s ships Rancher's
//! `local-path-provisioner`: the default StorageClass `local-path`
//! (provisioner `rancher.io/local-path`, `WaitForFirstConsumer`, reclaim
//! `Delete`) and a directory per volume on the node the scheduler chose.
//!
//! * A claim the binder handed to `rancher.io/local-path`
//!   (`volume.kubernetes.io/storage-provisioner`) that carries
//!   `volume.kubernetes.io/selected-node` gets a PersistentVolume
//!   `pvc-<claim uid>`: a `hostPath` (`DirectoryOrCreate`) at
//!   `<default-local-storage-path>/pvc-<uid>_<namespace>_<name>`, node
//!   affinity on that node's `kubernetes.io/hostname`, the class's reclaim
//!   policy, and a `claimRef` pre-binding it to the claim; the binder then
//!   binds both. The node creates the directory when it mounts it.
//! * A `Released` volume of ours with reclaim `Delete` is removed by a
//!   helper pod on its node, as k3s's provisioner does it: the addon image
//!   runs `rke2 local-path-helper teardown <dir>` with the storage path
//!   mounted, and once that pod Succeeded the volume object is deleted. A
//!   failed helper is reported (`VolumeFailedDelete`) and tried again, so
//!   no volume object goes before its data.
//!
//! Runs with the supervisor's rights, as k3s runs its provisioner with its
//! own account. Level triggered, like the binder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer;
use crate::persistent_volume::{PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER};
use crate::replicaset::record_event;

/// The provisioner name of the built-in class.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The default StorageClass the server creates.
pub const CLASS: &str = "local-path";
/// The annotation naming the node a volume's directory is on (k3s's).
pub const VOLUME_NODE: &str = "local.path.provisioner/selected-node";
/// The namespace helper pods run in.
const HELPER_NAMESPACE: &str = "kube-system";
/// Where a helper pod sees the storage path.
const HELPER_MOUNT: &str = "/data";
const COMPONENT: &str = "rancher.io/local-path_rke2";

/// What the provisioner needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `default-local-storage-path`: the directory on every node that
    /// holds the volumes.
    pub path: PathBuf,
    /// The image helper pods run (the addon image: `/bin/rke2`).
    pub helper_image: String,
}

/// The StorageClass `local-path` as k3s deploys it.
pub fn default_class() -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }))
    .expect("a valid StorageClass")
}

/// The directory name of a claim's volume: `pvc-<uid>_<namespace>_<name>`.
pub fn volume_dir_name(pvc: &PersistentVolumeClaim) -> String {
    format!(
        "pvc-{}_{}_{}",
        pvc.metadata.uid.as_deref().unwrap_or_default(),
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
        pvc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The PersistentVolume for `pvc` on `node`, in class `class`.
pub fn volume_for(
    pvc: &PersistentVolumeClaim,
    node: &Node,
    class: &StorageClass,
    base: &Path,
) -> PersistentVolume {
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let hostname = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/hostname").cloned())
        .unwrap_or_else(|| node_name.clone());
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("pvc-{}", pvc.metadata.uid.as_deref().unwrap_or_default()),
            "annotations": {PROVISIONED_BY: PROVISIONER, VOLUME_NODE: node_name},
        },
        "spec": {
            "capacity": {"storage": request},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.metadata.name,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "hostPath": {
                "path": base.join(volume_dir_name(pvc)).to_string_lossy(),
                "type": "DirectoryOrCreate",
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}
            ]}]}},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace,
                "name": pvc.metadata.name,
                "uid": pvc.metadata.uid,
                "resourceVersion": pvc.metadata.resource_version,
            },
        },
    }))
    .expect("a valid PersistentVolume")
}

/// The helper pod that removes `pv`'s directory on its node, or `None`
/// when the volume is not one of ours with a path under `base`.
pub fn delete_helper(pv: &PersistentVolume, settings: &Settings) -> Option<Pod> {
    let name = pv.metadata.name.as_deref()?;
    let node = pv.metadata.annotations.as_ref()?.get(VOLUME_NODE)?;
    let path = PathBuf::from(&pv.spec.as_ref()?.host_path.as_ref()?.path);
    if path.parent()? != settings.path {
        return None;
    }
    let dir = path.file_name()?.to_str()?;
    Some(
        serde_json::from_value(json!({
            "metadata": {
                "name": helper_name(name),
                "namespace": HELPER_NAMESPACE,
                "labels": {"app.kubernetes.io/name": "local-path-helper"},
            },
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "helper-pod",
                    "image": settings.helper_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/rke2", "local-path-helper", "teardown", format!("{HELPER_MOUNT}/{dir}")],
                    "volumeMounts": [{"name": "data", "mountPath": HELPER_MOUNT}],
                }],
                "volumes": [{"name": "data", "hostPath": {
                    "path": settings.path.to_string_lossy(), "type": "DirectoryOrCreate"}}],
            },
        }))
        .expect("a valid Pod"),
    )
}

fn helper_name(pv: &str) -> String {
    format!("helper-pod-delete-{pv}")
}

/// What `rke2 local-path-helper teardown <dir>` does inside the helper
/// pod: removes `<dir>` (a `pvc-*` directory directly under the mount);
/// a directory already gone is done.
pub fn teardown(dir: &Path) -> Result<(), String> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if dir.parent() != Some(Path::new(HELPER_MOUNT)) || !name.starts_with("pvc-") {
        return Err(format!(
            "refusing to remove {}: not a volume directory under {HELPER_MOUNT}",
            dir.display()
        ));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

async fn ensure_class(client: &kube::Client, stop: &CancellationToken) {
    let api: Api<StorageClass> = Api::all(client.clone());
    loop {
        match api.create(&PostParams::default(), &default_class()).await {
            Ok(_) => {
                info!("local-path: StorageClass {CLASS} created");
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(e) => debug!(error = %e, "local-path: creating the StorageClass"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    }
}

fn volume_ref(pv: &PersistentVolume) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: pv.metadata.name.clone(),
        uid: pv.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Runs the provisioner until `stop`.
pub async fn run(client: kube::Client, settings: Settings, stop: CancellationToken) {
    ensure_class(&client, &stop).await;
    let wake = Arc::new(Notify::new());
    macro_rules! watch {
        ($api:expr, $ty:ty, $what:literal) => {{
            let wake = wake.clone();
            informer::spawn(
                $api,
                $what,
                &stop,
                move |_: &kube::runtime::watcher::Event<$ty>| wake.notify_one(),
            )
        }};
    }
    let pvs = watch!(
        Api::all(client.clone()),
        PersistentVolume,
        "persistentvolumes"
    );
    let pvcs = watch!(
        Api::all(client.clone()),
        PersistentVolumeClaim,
        "persistentvolumeclaims"
    );
    let classes = watch!(Api::all(client.clone()), StorageClass, "storageclasses");
    let nodes = watch!(Api::all(client.clone()), Node, "nodes");
    let helpers = watch!(
        Api::namespaced(client.clone(), HELPER_NAMESPACE),
        Pod,
        "pods"
    );
    let pv_api: Api<PersistentVolume> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), HELPER_NAMESPACE);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        for ready in [
            pvs.wait_until_ready().await,
            pvcs.wait_until_ready().await,
            classes.wait_until_ready().await,
            nodes.wait_until_ready().await,
            helpers.wait_until_ready().await,
        ] {
            if ready.is_err() {
                warn!("local-path: informers stopped");
                return;
            }
        }
        let volumes: BTreeMap<String, Arc<PersistentVolume>> = pvs
            .state()
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        // Provisioning.
        for pvc in pvcs.state() {
            let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
            if annotations.get(STORAGE_PROVISIONER).map(String::as_str) != Some(PROVISIONER)
                || pvc.metadata.deletion_timestamp.is_some()
                || pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_ref())
                    .is_some()
            {
                continue;
            }
            let pv_name = format!("pvc-{}", pvc.metadata.uid.as_deref().unwrap_or_default());
            if volumes.contains_key(&pv_name) {
                continue;
            }
            let me = claim_ref(&pvc);
            let class_name = crate::persistent_volume::claim_class(&pvc);
            let Some(class) = classes
                .state()
                .into_iter()
                .find(|c| c.metadata.name.as_deref() == Some(class_name.as_str()))
            else {
                continue;
            };
            let node = annotations.get(SELECTED_NODE).and_then(|n| {
                nodes
                    .state()
                    .into_iter()
                    .find(|x| x.metadata.name.as_deref() == Some(n.as_str()))
            });
            let Some(node) = node else {
                let msg = "failed to provision volume with StorageClass \"".to_string()
                    + &class_name
                    + "\": configuration error, no node was specified";
                record_event(
                    &client,
                    COMPONENT,
                    &me,
                    "Warning",
                    "ProvisioningFailed",
                    msg,
                )
                .await;
                continue;
            };
            let pv = volume_for(&pvc, &node, &class, &settings.path);
            match pv_api.create(&PostParams::default(), &pv).await {
                Ok(_) => {
                    info!(volume = %pv_name, claim = %crate::namespaced_name(&pvc.metadata), "local-path: volume provisioned");
                    record_event(
                        &client,
                        COMPONENT,
                        &me,
                        "Normal",
                        "ProvisioningSucceeded",
                        format!("Successfully provisioned volume {pv_name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    record_event(
                        &client,
                        COMPONENT,
                        &me,
                        "Warning",
                        "ProvisioningFailed",
                        format!("failed to provision volume with StorageClass {class_name:?}: {e}"),
                    )
                    .await;
                }
            }
        }
        // Deletion of released volumes.
        for pv in volumes.values() {
            let ours = pv
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROVISIONED_BY))
                .map(String::as_str)
                == Some(PROVISIONER);
            let spec = pv.spec.clone().unwrap_or_default();
            let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            if !ours
                || !released
                || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete")
                || pv.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let name = pv.metadata.name.clone().unwrap_or_default();
            let helper = helper_name(&name);
            let existing = helpers
                .state()
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some(helper.as_str()));
            let phase = existing
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.clone());
            match (existing.is_some(), phase.as_deref()) {
                (false, _) => {
                    let Some(pod) = delete_helper(pv, &settings) else {
                        record_event(
                            &client,
                            COMPONENT,
                            &volume_ref(pv),
                            "Warning",
                            "VolumeFailedDelete",
                            format!(
                                "volume {name} has no node or its path is not under {}",
                                settings.path.display()
                            ),
                        )
                        .await;
                        continue;
                    };
                    if let Err(e) = pod_api.create(&PostParams::default(), &pod).await {
                        debug!(volume = %name, error = %e, "local-path: creating the delete helper");
                    }
                }
                (true, Some("Succeeded")) => {
                    match pv_api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => info!(volume = %name, "local-path: volume deleted"),
                        Err(e) => {
                            debug!(volume = %name, error = %e, "local-path: deleting the volume")
                        }
                    }
                    let _ = pod_api.delete(&helper, &DeleteParams::default()).await;
                }
                (true, Some("Failed")) => {
                    record_event(&client, COMPONENT, &volume_ref(pv), "Warning", "VolumeFailedDelete",
                        format!("helper pod {HELPER_NAMESPACE}/{helper} failed to remove the volume's directory; retrying")).await;
                    let _ = pod_api.delete(&helper, &DeleteParams::default()).await;
                }
                _ => {}
            }
        }
        // Helpers of volumes that are gone.
        for pod in helpers.state() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if let Some(pv) = name.strip_prefix("helper-pod-delete-")
                && !volumes.contains_key(pv)
                && pod.metadata.deletion_timestamp.is_none()
            {
                let _ = pod_api.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "app", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local-path"}}))
        .unwrap()
    }

    #[test]
    fn volume_is_a_directory_on_the_chosen_node() {
        let node: Node = serde_json::from_value(
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "host-1"}}}),
        )
        .unwrap();
        let pv = volume_for(&claim(), &node, &default_class(), Path::new("/var/lib/s"));
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(v["metadata"]["name"], "pvc-u-1");
        assert_eq!(v["spec"]["hostPath"]["path"], "/var/lib/s/pvc-u-1_app_data");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
            json!(["host-1"])
        );
        assert_eq!(v["spec"]["claimRef"]["uid"], "u-1");
        let settings = Settings {
            path: "/var/lib/s".into(),
            helper_image: "img".into(),
        };
        let helper = serde_json::to_value(delete_helper(&pv, &settings).unwrap()).unwrap();
        assert_eq!(helper["spec"]["nodeName"], "n1");
        assert_eq!(
            helper["spec"]["containers"][0]["command"][3],
            "/data/pvc-u-1_app_data"
        );
        // A volume whose path is elsewhere is never torn down by us.
        let other = Settings {
            path: "/elsewhere".into(),
            helper_image: "img".into(),
        };
        assert!(delete_helper(&pv, &other).is_none());
    }

    #[test]
    fn teardown_only_removes_volume_directories() {
        assert!(teardown(Path::new("/data/../etc")).is_err());
        assert!(teardown(Path::new("/etc/pvc-x")).is_err());
        assert!(teardown(Path::new("/data/other")).is_err());
        // Already gone is done.
        assert!(teardown(Path::new("/data/pvc-does-not-exist-here")).is_ok());
    }
}
