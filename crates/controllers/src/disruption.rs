//! PodDisruptionBudget status, as kube-controller-manager's disruption
//! controller computes it; the eviction subresource of the apiserver
//! reads it to allow or refuse a voluntary disruption.
//!
//! A `kube` Controller over PDBs, triggered by every pod change in their
//! namespace (and every 30 s, for scale changes). Each reconcile lists the
//! pods the selector matches and computes ([`compute`]):
//!
//! * `expectedPods` and `desiredHealthy`: `minAvailable` as a number →
//!   the matched pods and that number; as a percentage or with
//!   `maxUnavailable` → the sum of the scales of the pods' controllers
//!   (a ReplicaSet's Deployment, a ReplicaSet, a StatefulSet, through
//!   their `scale` subresource), the value resolved against it (rounded
//!   up, as upstream) and `desiredHealthy = expected - maxUnavailable`;
//! * `currentHealthy`: Ready pods not being deleted and not in
//!   `disruptedPods` (evicted, awaiting deletion, for up to 2 minutes);
//! * `disruptionsAllowed = max(0, currentHealthy - desiredHealthy)`, the
//!   condition `DisruptionAllowed` (`SufficientPods` / `InsufficientPods`,
//!   or `SyncFailed` when the scale cannot be found: then nothing is
//!   allowed, with a Warning Event), `observedGeneration`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use rke2_apimachinery::selectors::label_selector_from_json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::replicaset::record_event;

/// How long an evicted pod stays out of `currentHealthy` while its
/// deletion has not been seen (upstream's `DeletionTimeout`).
pub const DELETION_TIMEOUT: i64 = 120;
const COMPONENT: &str = "controllermanager";

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `value` of `total`: a number as is, a percentage rounded up.
pub fn scaled(value: &IntOrString, total: i32) -> Result<i32, String> {
    match value {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            Ok(((pct * total as i64) as f64 / 100.0).ceil() as i32)
        }
    }
}

/// The new status from the matched pods and the controllers' total scale
/// (`Err`: it could not be found).
pub fn compute(
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
    scale: Option<Result<i32, String>>,
    now: Timestamp,
) -> (PodDisruptionBudgetStatus, Option<String>) {
    let spec = pdb.spec.clone().unwrap_or_default();
    let old = pdb.status.clone().unwrap_or_default();
    let mut st = old.clone();
    // Evicted pods stay counted out until deleted or timed out.
    let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
    for (name, t) in old.disrupted_pods.clone().unwrap_or_default() {
        let alive = pods.iter().any(|p| {
            p.metadata.name.as_deref() == Some(&name) && p.metadata.deletion_timestamp.is_none()
        });
        if alive && t.0.as_second() + DELETION_TIMEOUT > now.as_second() {
            disrupted.insert(name, t);
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && is_ready(p)
                && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
        })
        .count() as i32;
    let counts = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => Ok((pods.len() as i32, *n)),
        (Some(v @ IntOrString::String(_)), _) => match scale.clone() {
            Some(Ok(total)) => scaled(v, total).map(|d| (total, d)),
            Some(Err(e)) => Err(e),
            None => Err("found no controllers for pods".into()),
        },
        (None, Some(v)) => match scale.clone() {
            Some(Ok(total)) => scaled(v, total).map(|m| (total, (total - m).max(0))),
            Some(Err(e)) => Err(e),
            None => Err("found no controllers for pods".into()),
        },
        (None, None) => Ok((pods.len() as i32, 0)),
    };
    let mut error = None;
    let (expected, desired, allowed, cond) = match counts {
        Ok((expected, desired)) => {
            let allowed = (healthy - desired).max(0);
            let cond = if allowed > 0 {
                ("True", "SufficientPods", String::new())
            } else {
                ("False", "InsufficientPods", String::new())
            };
            (expected, desired, allowed, cond)
        }
        Err(e) => {
            error = Some(e.clone());
            (
                old.expected_pods,
                old.desired_healthy,
                0,
                ("False", "SyncFailed", e),
            )
        }
    };
    st.current_healthy = healthy;
    st.desired_healthy = desired;
    st.expected_pods = expected;
    st.disruptions_allowed = allowed;
    st.observed_generation = pdb.metadata.generation;
    st.disrupted_pods = (!disrupted.is_empty()).then_some(disrupted);
    let mut conds = old.conditions.clone().unwrap_or_default();
    let (status, reason, message) = cond;
    match conds.iter_mut().find(|c| c.type_ == "DisruptionAllowed") {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = pdb.metadata.generation;
        }
        None => conds.push(Condition {
            type_: "DisruptionAllowed".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: Time(now),
            observed_generation: pdb.metadata.generation,
        }),
    }
    st.conditions = Some(conds);
    (st, error)
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: kube::Client,
}

fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// The total scale of the controllers of `pods` (each counted once).
async fn total_scale(client: &kube::Client, ns: &str, pods: &[Pod]) -> Result<i32, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for p in pods {
        let Some((kind, name)) = controller_of(&p.metadata) else {
            return Err(format!(
                "found no controller ref for pod {:?}",
                p.metadata.name.as_deref().unwrap_or_default()
            ));
        };
        let (kind, name) = if kind == "ReplicaSet" {
            let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            match rs.get(&name).await {
                Ok(r) => match controller_of(&r.metadata) {
                    Some((k, n)) if k == "Deployment" => (k, n),
                    _ => (kind, name),
                },
                Err(e) => return Err(e.to_string()),
            }
        } else {
            (kind, name)
        };
        if !seen.insert((kind.clone(), name.clone())) {
            continue;
        }
        let scale = match kind.as_str() {
            "Deployment" => {
                Api::<Deployment>::namespaced(client.clone(), ns)
                    .get_scale(&name)
                    .await
            }
            "ReplicaSet" => {
                Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get_scale(&name)
                    .await
            }
            "StatefulSet" => {
                Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .get_scale(&name)
                    .await
            }
            other => return Err(format!("found no controllers for pod kind {other:?}")),
        }
        .map_err(|e| e.to_string())?;
        total += scale.spec.and_then(|s| s.replicas).unwrap_or(0);
    }
    Ok(total)
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = match &spec.selector {
        // A null selector selects nothing.
        None => Vec::new(),
        Some(sel) => {
            let json = serde_json::to_value(sel).unwrap_or_default();
            match label_selector_from_json(&json) {
                Ok(sel) => {
                    pods_api
                        .list(&ListParams::default().labels(&sel.to_string()))
                        .await?
                        .items
                }
                Err(_) => Vec::new(),
            }
        }
    };
    let needs_scale = matches!(spec.min_available, Some(IntOrString::String(_)))
        || (spec.min_available.is_none() && spec.max_unavailable.is_some());
    let scale = if needs_scale {
        Some(total_scale(&ctx.client, &ns, &pods).await)
    } else {
        None
    };
    let (st, error) = compute(&pdb, &pods, scale, Timestamp::now());
    if let Some(e) = &error {
        record_event(
            &ctx.client,
            COMPONENT,
            &ObjectReference {
                api_version: Some("policy/v1".into()),
                kind: Some("PodDisruptionBudget".into()),
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: pdb.metadata.uid.clone(),
                ..ObjectReference::default()
            },
            "Warning",
            "CalculateExpectedPodCountFailed",
            format!("Failed to calculate the number of expected pods: {e}"),
        )
        .await;
    }
    if pdb.status.as_ref() != Some(&st) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        let mut next = PodDisruptionBudget::clone(&pdb);
        next.status = Some(st);
        match api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(pdb = ?pdb.metadata.name, namespace = ?pdb.metadata.namespace, error = %e, "disruption reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let pdbs: Api<PodDisruptionBudget> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    info!("disruption controller started");
    let controller = Controller::new(pdbs, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let ns = pod.metadata.namespace.clone();
            store
                .state()
                .into_iter()
                .filter(|p| p.metadata.namespace == ns)
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(5))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "p", "generation": 2}, "spec": spec}))
            .unwrap()
    }

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    #[test]
    fn min_available_number() {
        let now = Timestamp::now();
        let (st, err) = compute(
            &pdb(json!({"minAvailable": 2})),
            &[pod("a", true), pod("b", true), pod("c", false)],
            None,
            now,
        );
        assert!(err.is_none());
        assert_eq!(
            (
                st.current_healthy,
                st.desired_healthy,
                st.expected_pods,
                st.disruptions_allowed
            ),
            (2, 2, 3, 0)
        );
        assert_eq!(st.observed_generation, Some(2));
        let c = &st.conditions.unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InsufficientPods")
        );
    }

    #[test]
    fn max_unavailable_through_scale() {
        let now = Timestamp::now();
        let pods = [pod("a", true), pod("b", true), pod("c", true)];
        let (st, _) = compute(
            &pdb(json!({"maxUnavailable": "50%"})),
            &pods,
            Some(Ok(3)),
            now,
        );
        // 50% of 3 rounds up to 2 unavailable: 1 must stay healthy.
        assert_eq!(
            (st.desired_healthy, st.expected_pods, st.disruptions_allowed),
            (1, 3, 2)
        );
        let (st, err) = compute(
            &pdb(json!({"maxUnavailable": 1})),
            &pods,
            Some(Err("gone".into())),
            now,
        );
        assert_eq!(err.as_deref(), Some("gone"));
        assert_eq!(st.disruptions_allowed, 0);
        assert_eq!(st.conditions.unwrap()[0].reason, "SyncFailed");
    }

    #[test]
    fn disrupted_pods_are_not_healthy_until_they_expire() {
        let now = Timestamp::now();
        let mut p = pdb(json!({"minAvailable": 1}));
        p.status = Some(serde_json::from_value(json!({"currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2,
            "disruptionsAllowed": 0, "disruptedPods": {"a": now.to_string(), "gone": now.to_string()}})).unwrap());
        let (st, _) = compute(&p, &[pod("a", true), pod("b", true)], None, now);
        assert_eq!((st.current_healthy, st.disruptions_allowed), (1, 0));
        assert_eq!(st.disrupted_pods.as_ref().unwrap().len(), 1);
        let later = Timestamp::from_second(now.as_second() + DELETION_TIMEOUT + 1).unwrap();
        let (st, _) = compute(&p, &[pod("a", true), pod("b", true)], None, later);
        assert_eq!((st.current_healthy, st.disruptions_allowed), (2, 1));
        assert!(st.disrupted_pods.is_none());
    }
}
