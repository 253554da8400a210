//! Storage object in-use protection (kube-controller-manager's
//! `pvc-protection` and `pv-protection` controllers): the apiserver gives
//! every new claim the finalizer `kubernetes.io/pvc-protection` and every
//! new volume `kubernetes.io/pv-protection`; these loops take it off a
//! deleted claim once no pod that has not ended uses it, and off a deleted
//! volume once it is no longer `Bound`. So deleting a claim a pod still
//! mounts leaves it `Terminating` (and its volume, and the data, in
//! place) until that pod is gone.
//!
//! Each runs under its upstream account (`kube-system:pvc-protection-controller`,
//! `kube-system:pv-protection-controller`), level triggered.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::informer;

/// The claim finalizer.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The volume finalizer.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// Whether `pod` (of the claim's namespace) uses claim `name` and has not
/// ended.
pub fn uses(pod: &Pod, namespace: &str, name: &str) -> bool {
    if pod.metadata.namespace.as_deref() != Some(namespace) {
        return false;
    }
    let ended = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !ended
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == name)
            })
}

fn without(finalizers: &Option<Vec<String>>, f: &str) -> Option<Vec<String>> {
    finalizers
        .as_ref()
        .map(|l| l.iter().filter(|x| *x != f).cloned().collect())
}

fn has(finalizers: &Option<Vec<String>>, f: &str) -> bool {
    finalizers
        .as_ref()
        .is_some_and(|l| l.iter().any(|x| x == f))
}

fn waker(stop: &CancellationToken) -> (Arc<Notify>, CancellationToken) {
    (Arc::new(Notify::new()), stop.clone())
}

/// Runs the claim protection loop until `stop`.
pub async fn run_claims(client: kube::Client, stop: CancellationToken) {
    let (wake, stop) = waker(&stop);
    let w = wake.clone();
    let claims = informer::spawn(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        "persistentvolumeclaims",
        &stop,
        move |_: &kube::runtime::watcher::Event<PersistentVolumeClaim>| w.notify_one(),
    );
    let w = wake.clone();
    let pods = informer::spawn(
        Api::<Pod>::all(client.clone()),
        "pods",
        &stop,
        move |_: &kube::runtime::watcher::Event<Pod>| w.notify_one(),
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        if claims.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
            return;
        }
        let all_pods = pods.state();
        for pvc in claims.state() {
            if pvc.metadata.deletion_timestamp.is_none()
                || !has(&pvc.metadata.finalizers, PVC_PROTECTION)
            {
                continue;
            }
            let ns = pvc.metadata.namespace.clone().unwrap_or_default();
            let name = pvc.metadata.name.clone().unwrap_or_default();
            if all_pods.iter().any(|p| uses(p, &ns, &name)) {
                continue;
            }
            let mut new = (*pvc).clone();
            new.metadata.finalizers = without(&pvc.metadata.finalizers, PVC_PROTECTION);
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            match api.replace(&name, &PostParams::default(), &new).await {
                Ok(_) => {
                    info!(claim = %format!("{ns}/{name}"), "pvc-protection: no pod uses the claim; finalizer removed")
                }
                Err(e) => {
                    debug!(claim = %format!("{ns}/{name}"), error = %e, "pvc-protection: removing the finalizer")
                }
            }
        }
    }
}

/// Runs the volume protection loop until `stop`.
pub async fn run_volumes(client: kube::Client, stop: CancellationToken) {
    let (wake, stop) = waker(&stop);
    let w = wake.clone();
    let volumes = informer::spawn(
        Api::<PersistentVolume>::all(client.clone()),
        "persistentvolumes",
        &stop,
        move |_: &kube::runtime::watcher::Event<PersistentVolume>| w.notify_one(),
    );
    let api: Api<PersistentVolume> = Api::all(client.clone());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        if volumes.wait_until_ready().await.is_err() {
            return;
        }
        for pv in volumes.state() {
            let bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            if pv.metadata.deletion_timestamp.is_none()
                || !has(&pv.metadata.finalizers, PV_PROTECTION)
                || bound
            {
                continue;
            }
            let name = pv.metadata.name.clone().unwrap_or_default();
            let mut new = (*pv).clone();
            new.metadata.finalizers = without(&pv.metadata.finalizers, PV_PROTECTION);
            match api.replace(&name, &PostParams::default(), &new).await {
                Ok(_) => {
                    info!(volume = %name, "pv-protection: volume not bound; finalizer removed")
                }
                Err(e) => {
                    debug!(volume = %name, error = %e, "pv-protection: removing the finalizer")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_running_pods_of_the_namespace_use_a_claim() {
        let pod = |ns: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns},
                "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
                "status": {"phase": phase}}))
            .unwrap()
        };
        assert!(uses(&pod("a", "Running"), "a", "data"));
        assert!(uses(&pod("a", "Pending"), "a", "data"));
        assert!(!uses(&pod("a", "Succeeded"), "a", "data"));
        assert!(!uses(&pod("b", "Running"), "a", "data"));
        assert!(!uses(&pod("a", "Running"), "a", "other"));
        let f = Some(vec![PVC_PROTECTION.to_string(), "x".to_string()]);
        assert_eq!(without(&f, PVC_PROTECTION), Some(vec!["x".to_string()]));
        assert!(has(&f, PVC_PROTECTION));
    }
}
