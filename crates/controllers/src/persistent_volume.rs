//! The PersistentVolume binder (kube-controller-manager's
//! `persistentvolume-binder`): binds claims to volumes and follows the
//! phases of both.
//!
//! * A claim without a volume gets the smallest Available volume that
//!   fits it (same class and volume mode, its access modes, at least its
//!   storage request, its selector, and for a claim whose class is
//!   `WaitForFirstConsumer` a volume usable on the node the scheduler
//!   chose, `volume.kubernetes.io/selected-node`). A claim whose class is
//!   `WaitForFirstConsumer` waits for that annotation before anything.
//! * No volume fits and the class has a provisioner: the claim is
//!   annotated `volume.kubernetes.io/storage-provisioner` (and the beta
//!   key) for that provisioner to create one, pre-bound to the claim.
//! * Binding writes the volume's `claimRef` first, then its phase, then
//!   the claim's `volumeName` with `pv.kubernetes.io/bind-completed`,
//!   then the claim's status (phase, capacity, access modes): each step
//!   is found done or redone on the next pass, so a crash between two
//!   writes leaves nothing half bound for good.
//! * A bound volume whose claim is gone is `Released`; with reclaim
//!   policy `Retain` it stays so. `Delete` is the provisioner's to carry
//!   out (the local-path provisioner, `local_path`); a `Delete` volume no
//!   provisioner made is `Failed` (`VolumeFailedDelete`), as upstream has
//!   no deleter for it. A bound claim whose volume is gone is `Lost`.
//!
//! Runs as `kube-system:persistent-volume-binder` (upstream's bootstrap
//! role: volumes and claims read and updated, no patch). Level
//! triggered: every change of a volume, claim, class or node runs one
//! pass over all claims and volumes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use rke2_apimachinery::quantity::{Quantity, parse_quantity};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer;
use crate::replicaset::record_event;

/// Set on a claim once the binder finished binding it.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on a volume or claim the binder (not a user) bound.
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The node the scheduler chose for a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner asked to create a volume for a claim.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The beta form of [`STORAGE_PROVISIONER`], still written upstream.
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The provisioner that created a volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The class provisioner that means "no dynamic provisioning".
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

const COMPONENT: &str = "persistentvolume-controller";

/// The storage a claim requests or a volume offers.
pub fn storage(
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Option<Quantity> {
    q.and_then(|q| parse_quantity(&q.0).ok())
}

fn claim_request(pvc: &PersistentVolumeClaim) -> Option<Quantity> {
    storage(
        pvc.spec
            .as_ref()?
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage"),
    )
}

fn volume_capacity(pv: &PersistentVolume) -> Option<Quantity> {
    storage(pv.spec.as_ref()?.capacity.as_ref()?.get("storage"))
}

/// The class a claim asks for (`""` for none).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| {
            pvc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class").cloned())
        })
        .unwrap_or_default()
}

fn volume_class(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn key_of(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether `pv`'s claimRef names `pvc` (a ref without a uid is a
/// pre-binding to whatever claim has that name).
pub fn refers_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.namespace == pvc.metadata.namespace
        && r.name == pvc.metadata.name
        && (r.uid.as_deref().is_none_or(str::is_empty) || r.uid == pvc.metadata.uid)
}

fn phase_of_pv(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn phase_of_pvc(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn label_selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    if let Some(ml) = &sel.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|g| vals.contains(g)),
            "NotIn" => got.is_none_or(|g| !vals.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    })
}

/// Whether `pv` could serve `pvc` (ignoring who holds it): class,
/// volume mode, access modes, capacity, selector, and the node the claim
/// is meant for.
pub fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, node: Option<&Node>) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() || volume_class(pv) != claim_class(pvc) {
        return false;
    }
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    if mode(&vs.volume_mode) != mode(&cs.volume_mode) {
        return false;
    }
    let offered = vs.access_modes.clone().unwrap_or_default();
    if !cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m))
    {
        return false;
    }
    match (volume_capacity(pv), claim_request(pvc)) {
        (Some(have), Some(want)) if have >= want => {}
        _ => return false,
    }
    if let Some(sel) = &cs.selector {
        let empty = BTreeMap::new();
        if !label_selector_matches(sel, pv.metadata.labels.as_ref().unwrap_or(&empty)) {
            return false;
        }
    }
    node.is_none_or(|n| rke2_scheduler::predicates::volume_fits_node(pv, n))
}

/// The volume `pvc` should bind to among `pvs`: one pre-bound to it
/// first, else the smallest free one that fits.
pub fn find_match<'a>(
    pvs: &'a [Arc<PersistentVolume>],
    pvc: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let candidates = pvs.iter().map(Arc::as_ref).filter(|pv| fits(pv, pvc, node));
    let mut pre_bound = None;
    let mut best: Option<&PersistentVolume> = None;
    for pv in candidates {
        let claimed = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some();
        if refers_to(pv, pvc) {
            pre_bound = Some(pv);
        } else if !claimed
            && matches!(phase_of_pv(pv), "Available" | "Pending" | "")
            && best.is_none_or(|b| volume_capacity(pv) < volume_capacity(b))
        {
            best = Some(pv);
        }
    }
    pre_bound.or(best)
}

fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

struct Binder {
    client: kube::Client,
    pvs: Api<PersistentVolume>,
}

impl Binder {
    fn claims(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn set_pv_phase(&self, pv: &PersistentVolume, phase: &str, message: Option<String>) {
        if phase_of_pv(pv) == phase {
            return;
        }
        let mut new = pv.clone();
        let st = new
            .status
            .get_or_insert_with(PersistentVolumeStatus::default);
        st.phase = Some(phase.into());
        st.message = message;
        let name = pv.metadata.name.clone().unwrap_or_default();
        match self
            .pvs
            .replace_status(&name, &PostParams::default(), &new)
            .await
        {
            Ok(_) => info!(volume = %name, phase, "persistentvolume: phase set"),
            Err(e) => debug!(volume = %name, error = %e, "persistentvolume: setting the phase"),
        }
    }

    async fn event(&self, obj: &ObjectReference, type_: &str, reason: &str, message: String) {
        record_event(&self.client, COMPONENT, obj, type_, reason, message).await;
    }

    async fn sync_volume(
        &self,
        pv: &PersistentVolume,
        claims: &HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    ) {
        let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            self.set_pv_phase(pv, "Available", None).await;
            return;
        };
        let key = (
            r.namespace.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        );
        let claim = claims.get(&key).filter(|c| refers_to(pv, c));
        match claim {
            None if r.uid.as_deref().is_none_or(str::is_empty) => {
                // Pre-bound to a claim that does not exist yet.
                self.set_pv_phase(pv, "Available", None).await;
            }
            None => {
                if matches!(phase_of_pv(pv), "Released" | "Failed") {
                    return;
                }
                let delete = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                    == Some("Delete");
                if delete && annotation(&pv.metadata, PROVISIONED_BY).is_none() {
                    // Nothing here can delete a volume no provisioner made.
                    let name = pv.metadata.name.clone().unwrap_or_default();
                    let msg = format!(
                        "error getting deleter volume plugin for volume {name:?}: no deletable volume plugin matched"
                    );
                    self.set_pv_phase(pv, "Failed", Some(msg.clone())).await;
                    let me = ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("PersistentVolume".into()),
                        name: pv.metadata.name.clone(),
                        uid: pv.metadata.uid.clone(),
                        ..Default::default()
                    };
                    self.event(&me, "Warning", "VolumeFailedDelete", msg).await;
                } else {
                    self.set_pv_phase(pv, "Released", None).await;
                }
            }
            Some(c) => {
                let claimed = c
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .filter(|v| !v.is_empty());
                if claimed == pv.metadata.name.as_deref() {
                    self.set_pv_phase(pv, "Bound", None).await;
                } else if claimed.is_some()
                    && annotation(&pv.metadata, BOUND_BY_CONTROLLER).is_some()
                {
                    // The claim went to another volume (a binder racing
                    // this one): what the binder reserved here is undone.
                    self.unbind(pv).await;
                }
            }
        }
    }

    async fn unbind(&self, pv: &PersistentVolume) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let mut new = pv.clone();
        if let Some(spec) = new.spec.as_mut() {
            spec.claim_ref = None;
        }
        if let Some(a) = new.metadata.annotations.as_mut() {
            a.remove(BOUND_BY_CONTROLLER);
        }
        match self.pvs.replace(&name, &PostParams::default(), &new).await {
            Ok(v) => {
                info!(volume = %name, "persistentvolume: reservation for another claim's volume undone");
                self.set_pv_phase(&v, "Available", None).await;
            }
            Err(e) => debug!(volume = %name, error = %e, "persistentvolume: unbinding"),
        }
    }

    async fn bind(
        &self,
        pv: &PersistentVolume,
        pvc: &PersistentVolumeClaim,
    ) -> Result<(), kube::Error> {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let (ns, claim_name) = key_of(&pvc.metadata);
        let mut pv = pv.clone();
        let has_uid = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid == pvc.metadata.uid);
        if !has_uid {
            let spec = pv.spec.get_or_insert_with(Default::default);
            if spec.claim_ref.is_none() {
                pv.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            pv.spec.get_or_insert_with(Default::default).claim_ref = Some(claim_ref(pvc));
            pv = self
                .pvs
                .replace(&pv_name, &PostParams::default(), &pv)
                .await?;
        }
        if phase_of_pv(&pv) != "Bound" {
            pv.status.get_or_insert_with(Default::default).phase = Some("Bound".into());
            pv = self
                .pvs
                .replace_status(&pv_name, &PostParams::default(), &pv)
                .await?;
        }
        let api = self.claims(&ns);
        let mut pvc = pvc.clone();
        let spec = pvc.spec.get_or_insert_with(Default::default);
        let annotations = pvc
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if spec.volume_name.as_deref() != Some(pv_name.as_str())
            || !annotations.contains_key(BIND_COMPLETED)
        {
            if spec.volume_name.is_none() {
                annotations.insert(BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            annotations.insert(BIND_COMPLETED.into(), "yes".into());
            spec.volume_name = Some(pv_name.clone());
            pvc = api
                .replace(&claim_name, &PostParams::default(), &pvc)
                .await?;
        }
        let vs = pv.spec.clone().unwrap_or_default();
        let want = PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            capacity: vs.capacity.clone(),
            access_modes: vs.access_modes.clone(),
            ..pvc.status.clone().unwrap_or_default()
        };
        if pvc.status.as_ref() != Some(&want) {
            pvc.status = Some(want);
            api.replace_status(&claim_name, &PostParams::default(), &pvc)
                .await?;
            info!(claim = %format!("{ns}/{claim_name}"), volume = %pv_name, "persistentvolume: claim bound");
        }
        Ok(())
    }

    async fn sync_claim(
        &self,
        pvc: &PersistentVolumeClaim,
        pvs: &[Arc<PersistentVolume>],
        classes: &Store<StorageClass>,
        nodes: &Store<Node>,
    ) {
        let (ns, name) = key_of(&pvc.metadata);
        let me = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            uid: pvc.metadata.uid.clone(),
            ..Default::default()
        };
        let volume_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
        if let Some(vn) = volume_name.filter(|v| !v.is_empty()) {
            let pv = pvs
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(vn.as_str()));
            match pv {
                None => {
                    if phase_of_pvc(pvc) == "Bound" {
                        self.set_claim_lost(pvc).await;
                        self.event(&me, "Warning", "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into()).await;
                    }
                }
                Some(pv) => {
                    let free = pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_none();
                    if free || refers_to(pv, pvc) {
                        if let Err(e) = self.bind(pv, pvc).await {
                            debug!(claim = %format!("{ns}/{name}"), error = %e, "persistentvolume: binding (will retry)");
                        }
                    } else if phase_of_pvc(pvc) != "Bound" {
                        self.event(
                            &me,
                            "Warning",
                            "FailedBinding",
                            format!("volume {vn:?} already bound to a different claim."),
                        )
                        .await;
                    }
                }
            }
            return;
        }
        if pvc.metadata.deletion_timestamp.is_some() {
            return;
        }
        let class_name = claim_class(pvc);
        let class = classes
            .state()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(class_name.as_str()));
        let wait = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        let selected = annotation(&pvc.metadata, SELECTED_NODE).map(str::to_string);
        if wait && selected.is_none() {
            self.event(
                &me,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".into(),
            )
            .await;
            return;
        }
        let node = selected.as_ref().and_then(|n| {
            nodes
                .state()
                .into_iter()
                .find(|x| x.metadata.name.as_deref() == Some(n.as_str()))
        });
        if let Some(pv) = find_match(pvs, pvc, node.as_deref()) {
            if let Err(e) = self.bind(pv, pvc).await {
                debug!(claim = %format!("{ns}/{name}"), error = %e, "persistentvolume: binding (will retry)");
            }
            return;
        }
        let provisioner = class
            .as_ref()
            .map(|c| c.provisioner.clone())
            .filter(|p| !p.is_empty() && p != NO_PROVISIONER);
        match provisioner {
            Some(p) => {
                if annotation(&pvc.metadata, STORAGE_PROVISIONER) != Some(p.as_str()) {
                    let mut new = pvc.clone();
                    let a = new
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default);
                    a.insert(STORAGE_PROVISIONER.into(), p.clone());
                    a.insert(BETA_STORAGE_PROVISIONER.into(), p.clone());
                    if let Err(e) = self
                        .claims(&ns)
                        .replace(&name, &PostParams::default(), &new)
                        .await
                    {
                        debug!(claim = %format!("{ns}/{name}"), error = %e, "persistentvolume: annotating the provisioner");
                    }
                }
                self.event(&me, "Normal", "ExternalProvisioning", format!("Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.")).await;
            }
            None if class_name.is_empty() => {
                self.event(
                    &me,
                    "Normal",
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set"
                        .into(),
                )
                .await;
            }
            None if class.is_none() => {
                self.event(
                    &me,
                    "Warning",
                    "ProvisioningFailed",
                    format!("storageclass.storage.k8s.io {class_name:?} not found"),
                )
                .await;
            }
            None => {}
        }
    }

    async fn set_claim_lost(&self, pvc: &PersistentVolumeClaim) {
        let (ns, name) = key_of(&pvc.metadata);
        let mut new = pvc.clone();
        new.status.get_or_insert_with(Default::default).phase = Some("Lost".into());
        if let Err(e) = self
            .claims(&ns)
            .replace_status(&name, &PostParams::default(), &new)
            .await
        {
            debug!(claim = %format!("{ns}/{name}"), error = %e, "persistentvolume: marking lost");
        }
    }
}

/// Runs the binder until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let wake = Arc::new(Notify::new());
    macro_rules! watch {
        ($ty:ty, $what:literal) => {{
            let wake = wake.clone();
            informer::spawn(
                Api::<$ty>::all(client.clone()),
                $what,
                &stop,
                move |_: &kube::runtime::watcher::Event<$ty>| wake.notify_one(),
            )
        }};
    }
    let pvs = watch!(PersistentVolume, "persistentvolumes");
    let pvcs = watch!(PersistentVolumeClaim, "persistentvolumeclaims");
    let classes = watch!(StorageClass, "storageclasses");
    let nodes = watch!(Node, "nodes");
    let binder = Binder {
        client: client.clone(),
        pvs: Api::all(client.clone()),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            // Retries of failed writes.
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        for ready in [
            pvs.wait_until_ready().await,
            pvcs.wait_until_ready().await,
            classes.wait_until_ready().await,
            nodes.wait_until_ready().await,
        ] {
            if ready.is_err() {
                warn!("persistentvolume: informers stopped");
                return;
            }
        }
        let volumes = pvs.state();
        let claims: HashMap<(String, String), Arc<PersistentVolumeClaim>> = pvcs
            .state()
            .into_iter()
            .map(|c| (key_of(&c.metadata), c))
            .collect();
        for pvc in claims.values() {
            binder.sync_claim(pvc, &volumes, &classes, &nodes).await;
        }
        for pv in pvs.state() {
            binder.sync_volume(&pv, &claims).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, class: &str, modes: &[&str]) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
                "capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                "hostPath": {"path": "/x"}}, "status": {"phase": "Available"}}))
            .unwrap(),
        )
    }

    fn pvc(size: &str, class: &str, modes: &[&str]) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": modes, "storageClassName": class,
            "resources": {"requests": {"storage": size}}}}),
        )
        .unwrap()
    }

    #[test]
    fn smallest_fitting_volume_wins() {
        let pvs = vec![
            pv("big", "10Gi", "", &["ReadWriteOnce"]),
            pv("small", "1Gi", "", &["ReadWriteOnce"]),
            pv("tiny", "100Mi", "", &["ReadWriteOnce"]),
            pv("other-class", "1Gi", "fast", &["ReadWriteOnce"]),
            pv("rox", "1Gi", "", &["ReadOnlyMany"]),
        ];
        let c = pvc("500Mi", "", &["ReadWriteOnce"]);
        assert_eq!(
            find_match(&pvs, &c, None).and_then(|p| p.metadata.name.as_deref()),
            Some("small")
        );
        let c = pvc("20Gi", "", &["ReadWriteOnce"]);
        assert!(find_match(&pvs, &c, None).is_none());
    }

    #[test]
    fn pre_bound_volume_wins_and_held_volumes_are_skipped() {
        let mut held = (*pv("held", "1Gi", "", &["ReadWriteOnce"])).clone();
        held.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("ns".into()),
            name: Some("other".into()),
            ..Default::default()
        });
        let mut mine = (*pv("mine", "5Gi", "", &["ReadWriteOnce"])).clone();
        mine.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("ns".into()),
            name: Some("c".into()),
            ..Default::default()
        });
        let pvs = vec![
            Arc::new(held),
            Arc::new(mine),
            pv("free", "1Gi", "", &["ReadWriteOnce"]),
        ];
        let c = pvc("1Gi", "", &["ReadWriteOnce"]);
        assert_eq!(
            find_match(&pvs, &c, None).and_then(|p| p.metadata.name.as_deref()),
            Some("mine")
        );
    }

    #[test]
    fn node_affinity_limits_the_volume() {
        let mut local = (*pv("local", "1Gi", "", &["ReadWriteOnce"])).clone();
        local.spec.as_mut().unwrap().node_affinity = serde_json::from_value(json!({"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}))
        .unwrap();
        let node = |n: &str| -> Node {
            serde_json::from_value(
                json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}}),
            )
            .unwrap()
        };
        let pvs = vec![Arc::new(local)];
        let c = pvc("1Gi", "", &["ReadWriteOnce"]);
        assert!(find_match(&pvs, &c, Some(&node("n1"))).is_some());
        assert!(find_match(&pvs, &c, Some(&node("n2"))).is_none());
    }
}
