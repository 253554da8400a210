//! The volume binding plugin: what a pod's PersistentVolumeClaims say
//! about where it may run.
//!
//! * A claim that is missing or being deleted keeps the pod pending.
//! * A bound claim limits the pod to the nodes its volume's
//!   `nodeAffinity` allows (a local-path volume lives on one node).
//! * An unbound claim whose class binds `Immediate` keeps the pod pending
//!   until the binder has bound it.
//! * An unbound claim whose class is `WaitForFirstConsumer` is the
//!   scheduler's to place: once a node is chosen the claim is annotated
//!   `volume.kubernetes.io/selected-node` (before the pod is bound, as
//!   upstream's PreBind), and the provisioner makes its volume there.
//!
//! Claims, volumes and classes are read when a pod that has claims is
//! tried (such pods are few; the API server's watch cache answers).

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The annotation naming the node chosen for a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// What a pod's claims require of its node.
#[derive(Debug, Default)]
pub struct VolumePlan {
    /// The volumes of bound claims: a node must fit every one.
    pub bound: Vec<PersistentVolume>,
    /// Claims (`namespace`, `name`) to annotate with the chosen node.
    pub to_select: Vec<(String, String)>,
}

impl VolumePlan {
    /// Whether `node` fits every bound volume.
    pub fn allows(&self, node: &Node) -> bool {
        self.bound
            .iter()
            .all(|pv| crate::predicates::volume_fits_node(pv, node))
    }
}

fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .collect()
}

/// Reads what `pod`'s claims require; `Err` is why it cannot be placed
/// now (upstream's words, without the node count).
pub async fn plan(client: &kube::Client, pod: &Pod) -> Result<VolumePlan, String> {
    let names = claim_names(pod);
    let mut out = VolumePlan::default();
    if names.is_empty() {
        return Ok(out);
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let mut unbound_immediate = false;
    for name in names {
        let claim = claims
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading persistentvolumeclaim {name:?}: {e}"))?
            .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
        }
        let spec = claim.spec.clone().unwrap_or_default();
        if let Some(vn) = spec.volume_name.filter(|v| !v.is_empty()) {
            let pv = volumes
                .get_opt(&vn)
                .await
                .map_err(|e| format!("reading persistentvolume {vn:?}: {e}"))?
                .ok_or_else(|| format!("persistentvolume {vn:?} not found"))?;
            out.bound.push(pv);
            continue;
        }
        let class = match spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => classes
                .get_opt(c)
                .await
                .map_err(|e| format!("reading storageclass {c:?}: {e}"))?,
            None => None,
        };
        let wait = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        if wait {
            out.to_select.push((ns.clone(), name));
        } else {
            unbound_immediate = true;
        }
    }
    if unbound_immediate {
        return Err("pod has unbound immediate PersistentVolumeClaims".into());
    }
    Ok(out)
}

/// Annotates the claims of `plan` with the chosen `node` (a claim that
/// already names a node keeps it).
pub async fn select_node(
    client: &kube::Client,
    plan: &VolumePlan,
    node: &str,
) -> Result<(), kube::Error> {
    for (ns, name) in &plan.to_select {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let current = api.get(name).await?;
        let has = current
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(SELECTED_NODE));
        if has {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}
