//! Taint-based eviction, as kube-controller-manager's
//! `taint-eviction-controller` (the former NoExecuteTaintManager) does.
//!
//! A pod bound to a node (`spec.nodeName`) with `NoExecute` taints is
//! evicted:
//!
//! * at once when one of those taints is not tolerated by any of the pod's
//!   tolerations;
//! * otherwise, when every taint is tolerated but some tolerating
//!   toleration has `tolerationSeconds`, at the earliest
//!   `start(taint) + tolerationSeconds` over the taints, where `start` is
//!   the taint's `timeAdded` or, without one, when this loop first saw the
//!   taint on the node for that pod (upstream uses the latter always);
//!   `tolerationSeconds <= 0` means at once. As upstream, the toleration
//!   used for a taint is the *first* one that tolerates it.
//!
//! Evicting = a `DisruptionTarget` condition (reason
//! `DeletionByTaintManager`) on the pod's status, a Normal Event
//! `TaintManagerEviction` / `Marking for deletion Pod <ns>/<name>`, then a
//! delete with the pod's uid as precondition. A scheduled eviction that
//! stops applying (taint removed, toleration added) gets the event
//! `Cancelling deletion of Pod <ns>/<name>`.
//!
//! The loop keeps reflectors over Nodes and Pods and re-evaluates every
//! pod on a `NoExecute`-tainted node on each change, and when the earliest
//! pending deadline comes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Taint, Toleration};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The effect whose taints evict running pods.
pub const NO_EXECUTE: &str = "NoExecute";
/// Reason of the eviction events.
pub const EVICTION_REASON: &str = "TaintManagerEviction";
/// The component named in the events.
pub const COMPONENT: &str = "taint-eviction-controller";

/// Upstream `Toleration.ToleratesTaint`.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = tol.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("") {
        "" | "Equal" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether some toleration tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// What to do with one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No `NoExecute` taint, or all tolerated forever.
    Keep,
    /// Evict now.
    Now,
    /// Evict at this time (if still tainted then).
    At(Timestamp),
}

/// Decides for a pod with `tolerations` on a node with `taints` (only the
/// `NoExecute` ones count). `start` gives when each taint's toleration
/// clock started.
pub fn evaluate(
    tolerations: &[Toleration],
    taints: &[Taint],
    mut start: impl FnMut(&Taint) -> Timestamp,
) -> Verdict {
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        let Some(tol) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Verdict::Now;
        };
        let Some(secs) = tol.toleration_seconds else {
            continue;
        };
        if secs <= 0 {
            return Verdict::Now;
        }
        let at = start(taint)
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap_or(Timestamp::MAX);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    match deadline {
        Some(d) => Verdict::At(d),
        None => Verdict::Keep,
    }
}

fn taint_id(t: &Taint) -> String {
    format!(
        "{}={}:{}",
        t.key,
        t.value.as_deref().unwrap_or(""),
        t.effect
    )
}

/// The loop's memory between passes.
#[derive(Debug, Default)]
struct State {
    /// (pod uid, taint id) -> when first seen (taints without timeAdded).
    first_seen: BTreeMap<(String, String), Timestamp>,
    /// Pods with a pending (timed) eviction: uid -> "ns/name".
    scheduled: BTreeMap<String, String>,
}

fn spawn_reflector<K>(api: Api<K>, stop: CancellationToken, notify: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => debug!(error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let nodes = spawn_reflector::<Node>(Api::all(client.clone()), stop.clone(), notify.clone());
    let pods = spawn_reflector::<Pod>(Api::all(client.clone()), stop.clone(), notify.clone());
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { let _ = nodes.wait_until_ready().await; let _ = pods.wait_until_ready().await; } => {}
    }
    info!("taint eviction controller started");
    let mut state = State::default();
    loop {
        let next = pass(&client, &nodes, &pods, &mut state).await;
        let wait = next
            .map(|d| {
                let ms = d.duration_since(Timestamp::now()).as_millis().max(0) as u64;
                Duration::from_millis(ms.min(60_000))
            })
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One evaluation of every pod on a `NoExecute`-tainted node; returns the
/// earliest pending deadline.
async fn pass(
    client: &kube::Client,
    nodes: &Store<Node>,
    pods: &Store<Pod>,
    state: &mut State,
) -> Option<Timestamp> {
    let now = Timestamp::now();
    let tainted: BTreeMap<String, Vec<Taint>> = nodes
        .state()
        .iter()
        .filter_map(|n| {
            let taints: Vec<Taint> = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == NO_EXECUTE)
                .collect();
            (!taints.is_empty()).then(|| (n.metadata.name.clone().unwrap_or_default(), taints))
        })
        .collect();
    let mut next: Option<Timestamp> = None;
    let mut live_keys: BTreeSet<(String, String)> = BTreeSet::new();
    let mut still_scheduled: BTreeMap<String, String> = BTreeMap::new();
    for pod in pods.state() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(taints) = tainted.get(node) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let verdict = evaluate(&tolerations, taints, |t| match &t.time_added {
            Some(ta) => ta.0,
            None => {
                let key = (uid.clone(), taint_id(t));
                live_keys.insert(key.clone());
                *state.first_seen.entry(key).or_insert(now)
            }
        });
        let when = match verdict {
            Verdict::Keep => continue,
            Verdict::Now => None,
            Verdict::At(at) if at <= now => None,
            Verdict::At(at) => Some(at),
        };
        if let Some(at) = when {
            debug!(pod = %format!("{ns}/{name}"), %at, "eviction scheduled");
            still_scheduled.insert(uid, format!("{ns}/{name}"));
            next = Some(next.map_or(at, |n: Timestamp| n.min(at)));
            continue;
        }
        state.scheduled.remove(&uid);
        if let Err(e) = evict(client, &pod).await {
            warn!(pod = %format!("{ns}/{name}"), error = %e, "taint eviction failed; retrying");
            let retry = now.checked_add(SignedDuration::from_secs(1)).unwrap_or(now);
            next = Some(next.map_or(retry, |n| n.min(retry)));
        }
    }
    state.first_seen.retain(|k, _| live_keys.contains(k));
    // Pods that had a timed eviction and no longer have one (taint gone,
    // toleration changed) — unless they are gone or evicted.
    let live_pods: BTreeMap<String, Arc<Pod>> = pods
        .state()
        .into_iter()
        .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p))
        .collect();
    for (uid, who) in std::mem::take(&mut state.scheduled) {
        if still_scheduled.contains_key(&uid) {
            continue;
        }
        if let Some(pod) = live_pods.get(&uid)
            && pod.metadata.deletion_timestamp.is_none()
        {
            info!(pod = %who, "taint eviction cancelled");
            let _ = record_event(client, pod, &format!("Cancelling deletion of Pod {who}")).await;
        }
    }
    state.scheduled = still_scheduled;
    next
}

async fn record_event(client: &kube::Client, pod: &Pod, message: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let event: Event = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}.{:x}", now.as_nanosecond()),
            "namespace": ns,
        },
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        },
        "reason": EVICTION_REASON,
        "message": message,
        "type": "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": "",
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    }))
    .expect("event literal");
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// Marks, records and deletes one pod.
async fn evict(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let who = format!("{ns}/{name}");
    info!(pod = %who, "evicting pod from a NoExecute-tainted node");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(&condition),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => debug!(pod = %who, error = %e, "could not add the DisruptionTarget condition"),
    }
    if let Err(e) = record_event(client, pod, &format!("Marking for deletion Pod {who}")).await {
        debug!(pod = %who, error = %e, "could not record the eviction event");
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
        secs: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: secs,
        }
    }

    #[test]
    fn toleration_matching() {
        let t = taint("k", Some("v"), NO_EXECUTE);
        assert!(tolerates(&tol(Some("k"), None, Some("v"), None, None), &t));
        assert!(tolerates(
            &tol(Some("k"), Some("Equal"), Some("v"), Some(NO_EXECUTE), None),
            &t
        ));
        assert!(!tolerates(
            &tol(Some("k"), Some("Equal"), Some("w"), None, None),
            &t
        ));
        assert!(tolerates(
            &tol(Some("k"), Some("Exists"), None, None, None),
            &t
        ));
        assert!(!tolerates(
            &tol(Some("k"), Some("Exists"), None, Some("NoSchedule"), None),
            &t
        ));
        assert!(tolerates(&tol(None, Some("Exists"), None, None, None), &t));
        assert!(!tolerates(
            &tol(Some("other"), Some("Exists"), None, None, None),
            &t
        ));
        let bare = taint("k", None, "NoSchedule");
        assert!(tolerates(&tol(Some("k"), None, None, None, None), &bare));
    }

    #[test]
    fn verdicts() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let start = |_: &Taint| t0;
        let at = |s| Verdict::At(Timestamp::from_second(s).unwrap());
        let ne = taint("k", None, NO_EXECUTE);
        let ns = taint("s", None, "NoSchedule");
        let other = taint("o", None, NO_EXECUTE);
        let forever = tol(Some("k"), Some("Exists"), None, None, None);
        let ten = tol(Some("k"), Some("Exists"), None, None, Some(10));
        let zero = tol(Some("k"), Some("Exists"), None, None, Some(0));
        let five = tol(Some("o"), Some("Exists"), None, None, Some(5));
        let cases: Vec<(Vec<Toleration>, Vec<Taint>, Verdict)> = vec![
            (vec![], vec![ns], Verdict::Keep),
            (vec![], vec![ne.clone()], Verdict::Now),
            (vec![forever], vec![ne.clone()], Verdict::Keep),
            (vec![ten.clone()], vec![ne.clone()], at(1_010)),
            (vec![zero], vec![ne.clone()], Verdict::Now),
            // one tolerated taint, one not: now.
            (
                vec![ten.clone()],
                vec![ne.clone(), other.clone()],
                Verdict::Now,
            ),
            // the earliest deadline over the taints.
            (vec![ten, five], vec![ne, other], at(1_005)),
        ];
        for (tols, taints, want) in cases {
            assert_eq!(evaluate(&tols, &taints, start), want, "{tols:?} {taints:?}");
        }
    }
}
