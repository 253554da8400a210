//! DaemonSets: one pod per eligible node, as kube-controller-manager's
//! daemonset controller.
//!
//! A `kube` Controller over DaemonSets, triggered by their pods (owner
//! references) and by every Node change. Each reconcile lists the Nodes
//! and the DaemonSet's pods afresh (a consistent read, so no "expectations"
//! bookkeeping is needed against a lagging cache) and computes a [`Plan`]:
//!
//! * **eligibility** ([`node_should_run`]): the template's `nodeSelector`
//!   and required node affinity match the node, and every `NoSchedule` /
//!   `NoExecute` taint is tolerated by the template's tolerations plus the
//!   automatic DaemonSet tolerations ([`daemon_tolerations`]). A node whose
//!   only untolerated taints are `NoSchedule` keeps an existing pod
//!   (upstream's `shouldContinueRunning`);
//! * a missing pod is created with `spec.nodeName` preset (upstream sets a
//!   `metadata.name` node affinity and lets the scheduler bind; the
//!   scheduler skips pods that already have a node);
//! * pods on nodes that are gone or no longer eligible, `Failed` pods and
//!   duplicates (all but the oldest) are deleted;
//! * rolling update (the default strategy): pods whose
//!   `controller-revision-hash` label differs from the template's hash are
//!   deleted, unavailable ones first, then available ones while fewer than
//!   `maxUnavailable` (default 1) nodes lack an available pod; the next
//!   reconcile creates their replacements. With `maxSurge` > 0 the new
//!   pod starts beside the old one instead (on at most `maxSurge` nodes at
//!   once) and the old one goes when the new one is available.
//!   `OnDelete` leaves outdated pods alone;
//! * every template is recorded as a ControllerRevision
//!   `<ds>-<hash>` ([`crate::revisions`]), which `kubectl rollout
//!   history|undo` read; history beyond `revisionHistoryLimit` that no pod
//!   uses is deleted.
//!
//! Pods are named `<ds>-<random5>` (generateName), carry the template's
//! labels plus `controller-revision-hash` and `pod-template-generation`,
//! and a controller ownerReference with `blockOwnerDeletion`.
//!
//! Status (only written when it changes): `desiredNumberScheduled`,
//! `currentNumberScheduled`, `numberMisscheduled`, `numberReady`,
//! `numberAvailable` (Ready for `minReadySeconds`), `numberUnavailable`,
//! `updatedNumberScheduled`, `observedGeneration`.
//!
//! Not done: adopting matching orphan pods; the revision hash is computed
//! from the template (not upstream's hash of the revision with the
//! collision count).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, NodeSelector, Pod, PodTemplateSpec, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use rke2_apimachinery::selectors::{LabelOperator, Requirement, label_selector_from_json};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::taint_eviction::tolerated;

/// Label with the hash of the template a pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// Label with the DaemonSet generation a pod was made at.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// The tolerations upstream adds to every DaemonSet pod
/// (`util.AddOrUpdateDaemonPodTolerations`), without the
/// `network-unavailable` one that only host-network pods get.
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    };
    let mut out = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// `tolerations` plus the automatic ones it does not already contain.
pub fn with_daemon_tolerations(tolerations: &[Toleration], host_network: bool) -> Vec<Toleration> {
    let mut out = tolerations.to_vec();
    for t in daemon_tolerations(host_network) {
        if !out
            .iter()
            .any(|o| o.key == t.key && o.effect == t.effect && o.operator == t.operator)
        {
            out.push(t);
        }
    }
    out
}

fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// Whether `node` satisfies a required node selector (terms are ORed; the
/// expressions and fields of one term are ANDed; an empty term matches
/// nothing), as upstream's `nodeaffinity.NodeSelector`.
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    let labels = node_labels(node);
    let name = node.metadata.name.clone().unwrap_or_default();
    sel.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        let op = |o: &str| match o {
            "In" => Some(LabelOperator::In),
            "NotIn" => Some(LabelOperator::NotIn),
            "Exists" => Some(LabelOperator::Exists),
            "DoesNotExist" => Some(LabelOperator::DoesNotExist),
            "Gt" => Some(LabelOperator::GreaterThan),
            "Lt" => Some(LabelOperator::LessThan),
            _ => None,
        };
        let exprs_ok = exprs.iter().all(|e| {
            op(&e.operator)
                .and_then(|o| {
                    Requirement::new(&e.key, o, e.values.clone().unwrap_or_default()).ok()
                })
                .is_some_and(|r| r.matches(&labels))
        });
        let fields_ok = fields.iter().all(|f| {
            let values = f.values.clone().unwrap_or_default();
            f.key == "metadata.name"
                && match f.operator.as_str() {
                    "In" => values.contains(&name),
                    "NotIn" => !values.contains(&name),
                    _ => false,
                }
        });
        exprs_ok && fields_ok
    })
}

/// Upstream's `NodeShouldRunDaemonPod`: (should run, should continue
/// running) for a pod made from `template` on `node`.
pub fn node_should_run(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let spec = template.spec.clone().unwrap_or_default();
    let labels = node_labels(node);
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return (false, false);
    }
    if let Some(req) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        && !node_selector_matches(req, node)
    {
        return (false, false);
    }
    let tolerations = with_daemon_tolerations(
        spec.tolerations.as_deref().unwrap_or_default(),
        spec.host_network.unwrap_or(false),
    );
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut should_run = true;
    for taint in &taints {
        if tolerated(&tolerations, taint) {
            continue;
        }
        match taint.effect.as_str() {
            "NoExecute" => return (false, false),
            "NoSchedule" => should_run = false,
            _ => {}
        }
    }
    (should_run, true)
}

/// A short stable hash of the pod template (FNV-1a over its JSON).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:x}", h & 0xff_ffff_ffff)
}

fn is_owned_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Whether a pod is Ready.
pub fn pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH)
        })
}

/// Whether a pod has been Ready for `min_ready` seconds at `now`.
pub fn pod_available(pod: &Pod, min_ready: i64, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(since) => since
            .checked_add(SignedDuration::from_secs(min_ready))
            .is_ok_and(|t| t <= now),
    }
}

/// What one reconcile does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Nodes to create a pod on.
    pub create_on: Vec<String>,
    /// Pods (names) to delete.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: DaemonSetStatus,
    /// When availability may change by itself (minReadySeconds).
    pub recheck_after: Option<Duration>,
}

fn created(p: &Pod) -> Timestamp {
    p.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Computes the plan for `ds` given every node and its (owned, live) pods.
pub fn plan(ds: &DaemonSet, nodes: &[Node], pods: &[Pod], now: Timestamp) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let template = spec.template.clone();
    let hash = template_hash(&template);
    let min_ready = spec.min_ready_seconds.unwrap_or(0) as i64;
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            by_node.entry(n).or_default().push(p);
        }
    }
    for v in by_node.values_mut() {
        v.sort_by_key(|p| (created(p), p.metadata.name.clone()));
    }
    let mut out = Plan::default();
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        ..DaemonSetStatus::default()
    };
    let mut outdated_unavailable: Vec<String> = Vec::new();
    let mut outdated_available: Vec<String> = Vec::new();
    let mut unavailable = 0i32;
    let mut seen_nodes = std::collections::BTreeSet::new();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let desired_nodes = nodes
        .iter()
        .filter(|n| node_should_run(&template, n).0)
        .count() as i64;
    let scaled = |v: Option<IntOrString>, default: i32| match v {
        None => default,
        Some(IntOrString::Int(n)) => n,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * desired_nodes + 99) / 100) as i32
        }
    };
    let rolling_update = strategy.rolling_update.clone().unwrap_or_default();
    let surge = if rolling {
        scaled(rolling_update.max_surge.clone(), 0).max(0)
    } else {
        0
    };
    let mut surging = 0i32;
    // Nodes whose only pod is outdated (and whether it is available).
    let mut surge_candidates: Vec<(String, bool)> = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        seen_nodes.insert(name.clone());
        let (should_run, should_continue) = node_should_run(&template, node);
        let daemon_pods = by_node.get(&name).cloned().unwrap_or_default();
        if should_run {
            st.desired_number_scheduled += 1;
        }
        if !should_continue {
            if !daemon_pods.is_empty() {
                st.number_misscheduled += 1;
            }
            out.delete
                .extend(daemon_pods.iter().filter_map(|p| p.metadata.name.clone()));
            continue;
        }
        if !should_run && !daemon_pods.is_empty() {
            st.number_misscheduled += 1;
        }
        let (failed, running): (Vec<&Pod>, Vec<&Pod>) = daemon_pods
            .iter()
            .partition(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
        out.delete
            .extend(failed.iter().filter_map(|p| p.metadata.name.clone()));
        if running.is_empty() {
            if should_run {
                out.create_on.push(name.clone());
                unavailable += 1;
            }
            continue;
        }
        if !should_run {
            // Keep the oldest; delete duplicates.
            out.delete
                .extend(running[1..].iter().filter_map(|p| p.metadata.name.clone()));
            continue;
        }
        st.current_number_scheduled += 1;
        let is_updated = |p: &Pod| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_HASH_LABEL))
                == Some(&hash)
        };
        // With a surge, a node may run its old pod and its new one side by
        // side until the new one is available.
        let (pod, old_kept) = if surge > 0 {
            let (new, old): (Vec<&Pod>, Vec<&Pod>) = running.iter().partition(|p| is_updated(p));
            match new.first() {
                Some(n) => {
                    out.delete
                        .extend(new[1..].iter().filter_map(|p| p.metadata.name.clone()));
                    if pod_available(n, min_ready, now) || old.is_empty() {
                        out.delete
                            .extend(old.iter().filter_map(|p| p.metadata.name.clone()));
                        (*n, None)
                    } else {
                        surging += 1;
                        out.delete
                            .extend(old[1..].iter().filter_map(|p| p.metadata.name.clone()));
                        (*n, Some(old[0]))
                    }
                }
                None => {
                    out.delete
                        .extend(old[1..].iter().filter_map(|p| p.metadata.name.clone()));
                    let o = old[0];
                    surge_candidates.push((name.clone(), pod_available(o, min_ready, now)));
                    (o, None)
                }
            }
        } else {
            out.delete
                .extend(running[1..].iter().filter_map(|p| p.metadata.name.clone()));
            (running[0], None)
        };
        let available = pod_available(pod, min_ready, now)
            || old_kept.is_some_and(|o| pod_available(o, min_ready, now));
        if pod_ready(pod) || old_kept.is_some_and(pod_ready) {
            st.number_ready += 1;
        }
        for p in std::iter::once(pod).chain(old_kept) {
            if pod_ready(p)
                && !pod_available(p, min_ready, now)
                && let Some(since) = ready_since(p)
            {
                let due = since.as_second() + min_ready - now.as_second();
                let due = Duration::from_secs(due.max(1) as u64);
                out.recheck_after = Some(out.recheck_after.map_or(due, |d| d.min(due)));
            }
        }
        if available {
            st.number_available = Some(st.number_available.unwrap_or(0) + 1);
        } else {
            unavailable += 1;
        }
        if is_updated(pod) {
            st.updated_number_scheduled = Some(st.updated_number_scheduled.unwrap_or(0) + 1);
        } else if let Some(n) = pod.metadata.name.clone() {
            if available {
                outdated_available.push(n);
            } else {
                outdated_unavailable.push(n);
            }
        }
    }
    for (node, daemon_pods) in &by_node {
        if !seen_nodes.contains(node) {
            out.delete
                .extend(daemon_pods.iter().filter_map(|p| p.metadata.name.clone()));
        }
    }
    if rolling && surge > 0 {
        // Upstream's surge: a new pod beside the old one, on at most
        // `maxSurge` nodes at once; a node whose old pod is unavailable
        // gets its new pod at once.
        for (node, old_available) in surge_candidates {
            if !old_available {
                out.create_on.push(node);
            } else if surging < surge {
                surging += 1;
                out.create_on.push(node);
            }
        }
    } else if rolling {
        let max_unavailable = scaled(rolling_update.max_unavailable.clone(), 1).max(1);
        out.delete.extend(outdated_unavailable);
        let budget = (max_unavailable - unavailable).max(0) as usize;
        out.delete
            .extend(outdated_available.into_iter().take(budget));
    }
    let available = st.number_available.unwrap_or(0);
    // Zeros are written explicitly: a merge patch omitting a field would
    // leave the old value in place.
    st.number_unavailable = Some((st.desired_number_scheduled - available).max(0));
    st.number_available = Some(available);
    st.updated_number_scheduled = Some(st.updated_number_scheduled.unwrap_or(0));
    st.collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    st.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    out.status = st;
    out.delete.sort();
    out.delete.dedup();
    out
}

/// The pod the DaemonSet runs on `node`.
pub fn new_pod(ds: &DaemonSet, node: &str) -> Pod {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let template = ds.spec.clone().unwrap_or_default().template;
    let mut meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.into(), template_hash(&template));
    labels.insert(
        TEMPLATE_GENERATION_LABEL.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    meta.labels = Some(labels);
    meta.name = None;
    meta.generate_name = Some(format!("{name}-"));
    meta.namespace = ds.metadata.namespace.clone();
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name,
        uid: ds.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(with_daemon_tolerations(
        spec.tolerations.as_deref().unwrap_or_default(),
        spec.host_network.unwrap_or(false),
    ));
    spec.node_name = Some(node.to_string());
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The DaemonSet's selector is malformed.
    #[error("invalid selector: {0}")]
    Selector(String),
    /// The template's revision could not be recorded.
    #[error(transparent)]
    Revision(#[from] crate::revisions::Error),
}

struct Ctx {
    client: kube::Client,
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let sel_json = serde_json::to_value(ds.spec.as_ref().map(|s| &s.selector)).unwrap_or_default();
    let selector =
        label_selector_from_json(&sel_json).map_err(|e| Error::Selector(e.to_string()))?;
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector.to_string()))
        .await?
        .items
        .into_iter()
        .filter(|p| is_owned_by(p, &uid))
        .collect();
    // The template's revision, for `kubectl rollout history|undo`; named
    // by the hash the pods carry.
    let revs: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let mut history = crate::revisions::list(&revs, &selector.to_string(), &uid).await?;
    let template = ds.spec.clone().unwrap_or_default().template;
    let hash = template_hash(&template);
    let owner = crate::revisions::Owner {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: name.clone(),
        uid: uid.clone(),
        labels: template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
    };
    let data = crate::revisions::patch_data(&template);
    crate::revisions::ensure(&revs, &owner, &mut history, &data, &hash).await?;
    let mut live: std::collections::BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_HASH_LABEL))
        .map(|h| format!("{name}-{h}"))
        .collect();
    live.insert(format!("{name}-{hash}"));
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    crate::revisions::truncate(&revs, &history, &live, limit).await?;
    let plan = plan(&ds, &nodes, &pods, Timestamp::now());
    for node in &plan.create_on {
        let pod = new_pod(&ds, node);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                debug!(daemonset = %format!("{ns}/{name}"), pod = ?p.metadata.name, %node, "created daemon pod")
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                // Namespace terminating.
                debug!(daemonset = %format!("{ns}/{name}"), "pod creation forbidden: {}", s.message);
            }
            Err(e) => return Err(e.into()),
        }
    }
    for pod in &plan.delete {
        let uid = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pod))
            .and_then(|p| p.metadata.uid.clone());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods_api.delete(pod, &dp).await {
            Ok(_) => debug!(daemonset = %format!("{ns}/{name}"), %pod, "deleted daemon pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let current = ds.status.clone().unwrap_or_default();
    if current != plan.status {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({"status": plan.status});
        match crate::update::merge_into_status(&api, &name, &body).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match plan.recheck_after {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

fn error_policy(ds: Arc<DaemonSet>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(daemonset = ?ds.metadata.name, namespace = ?ds.metadata.namespace, error = %e, "daemonset reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Reconciles running at once (kube-controller-manager's `--concurrent-daemonset-syncs`
/// default). Unbounded, a burst of owners floods the apiserver with writes
/// and every other client's requests queue behind them.
const WORKERS: u16 = 2;

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let dss: Api<DaemonSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    let controller = Controller::new(dss, watcher::Config::default());
    let store = controller.store();
    info!("daemonset controller started");
    controller
        .owns(pods, watcher::Config::default())
        .watches(nodes, watcher::Config::default(), move |_node| {
            store
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(WORKERS))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    fn ds(template_spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "ds", "namespace": "default", "uid": "ds-uid", "generation": 2},
            "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}}, "spec": template_spec},
            },
        }))
        .unwrap()
    }

    fn pod(ds: &DaemonSet, name: &str, node: &str, ready: bool, current: bool) -> Pod {
        let mut p = new_pod(ds, node);
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("{name}-uid"));
        if !current {
            p.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert(REVISION_HASH_LABEL.into(), "old".into());
        }
        p.status = Some(
            serde_json::from_value(json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                "lastTransitionTime": "2020-01-01T00:00:00Z"}],
            }))
            .unwrap(),
        );
        p
    }

    fn containers() -> serde_json::Value {
        json!({"containers": [{"name": "c", "image": "i"}]})
    }

    #[test]
    fn taints_and_tolerations() {
        let plain = node("a", json!({}), json!([]));
        let tainted = node(
            "b",
            json!({}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        let evicting = node("c", json!({}), json!([{"key": "k", "effect": "NoExecute"}]));
        let not_ready = node(
            "d",
            json!({}),
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                   {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        let t = ds(containers()).spec.unwrap().template;
        assert_eq!(node_should_run(&t, &plain), (true, true));
        assert_eq!(node_should_run(&t, &tainted), (false, true));
        assert_eq!(node_should_run(&t, &evicting), (false, false));
        assert_eq!(node_should_run(&t, &not_ready), (true, true));
        let mut spec = containers();
        spec["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
        let t = ds(spec).spec.unwrap().template;
        assert_eq!(node_should_run(&t, &tainted), (true, true));
        assert_eq!(node_should_run(&t, &evicting), (true, true));
    }

    #[test]
    fn selectors_and_affinity() {
        let a = node("a", json!({"disk": "ssd", "n": "5"}), json!([]));
        let b = node("b", json!({"disk": "hdd"}), json!([]));
        let mut spec = containers();
        spec["nodeSelector"] = json!({"disk": "ssd"});
        let t = ds(spec).spec.unwrap().template;
        assert!(node_should_run(&t, &a).0);
        assert!(!node_should_run(&t, &b).1);
        let mut spec = containers();
        spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "n", "operator": "Gt", "values": ["3"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["zzz"]}]},
        ]}}});
        let t = ds(spec).spec.unwrap().template;
        assert!(node_should_run(&t, &a).0);
        assert!(!node_should_run(&t, &b).0);
        let c = node("zzz", json!({}), json!([]));
        assert!(node_should_run(&t, &c).0);
    }

    #[test]
    fn plan_creates_deletes_and_counts() {
        let d = ds(containers());
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node("c", json!({}), json!([{"key": "k", "effect": "NoExecute"}])),
        ];
        let now = Timestamp::now();
        let pods = vec![
            pod(&d, "p-a", "a", true, true),
            pod(&d, "p-a2", "a", true, true),
            pod(&d, "p-c", "c", true, true),
            pod(&d, "p-gone", "gone", true, true),
        ];
        let p = plan(&d, &nodes, &pods, now);
        assert_eq!(p.create_on, vec!["b".to_string()]);
        assert_eq!(p.delete, vec!["p-a2", "p-c", "p-gone"]);
        assert_eq!(p.status.desired_number_scheduled, 2);
        assert_eq!(p.status.current_number_scheduled, 1);
        assert_eq!(p.status.number_misscheduled, 1);
        assert_eq!(p.status.number_ready, 1);
        assert_eq!(p.status.number_available, Some(1));
        assert_eq!(p.status.number_unavailable, Some(1));
        assert_eq!(p.status.updated_number_scheduled, Some(1));
        assert_eq!(p.status.observed_generation, Some(2));
    }

    #[test]
    fn pods_get_node_and_tolerations() {
        let d = ds(containers());
        let p = new_pod(&d, "a");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("a"));
        assert_eq!(spec.tolerations.unwrap().len(), 6);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("ds-"));
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("DaemonSet", "ds-uid")
        );
        assert_eq!(p.metadata.labels.unwrap()["app"], "d");
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let d = ds(containers());
        let nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let pods = vec![
            pod(&d, "p-a", "a", true, false),
            pod(&d, "p-b", "b", true, false),
            pod(&d, "p-c", "c", false, false),
        ];
        let p = plan(&d, &nodes, &pods, Timestamp::now());
        // p-c is unavailable already: replaced; no budget left for others.
        assert_eq!(p.delete, vec!["p-c"]);
        let pods = vec![
            pod(&d, "p-a", "a", true, false),
            pod(&d, "p-b", "b", true, false),
            pod(&d, "p-c", "c", true, true),
        ];
        let p = plan(&d, &nodes, &pods, Timestamp::now());
        assert_eq!(p.delete, vec!["p-a"]);
        assert_eq!(p.status.updated_number_scheduled, Some(1));
    }

    #[test]
    fn rolling_update_with_surge_keeps_old_pods_until_new_are_available() {
        let mut d = ds(containers());
        d.spec.as_mut().unwrap().update_strategy = Some(
            serde_json::from_value(json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}))
            .unwrap(),
        );
        let nodes: Vec<Node> = ["a", "b"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let now = Timestamp::now();
        let old = vec![
            pod(&d, "p-a", "a", true, false),
            pod(&d, "p-b", "b", true, false),
        ];
        let p = plan(&d, &nodes, &old, now);
        assert_eq!(p.create_on, vec!["a".to_string()]);
        assert!(p.delete.is_empty());
        // The new pod on a is not Ready yet: a keeps its old one, b waits.
        let mut pods = old.clone();
        pods.push(pod(&d, "n-a", "a", false, true));
        let p = plan(&d, &nodes, &pods, now);
        assert!(p.create_on.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(p.status.number_available, Some(2));
        // Ready: the old one on a goes, b surges.
        pods[2] = pod(&d, "n-a", "a", true, true);
        let p = plan(&d, &nodes, &pods, now);
        assert_eq!(p.delete, vec!["p-a"]);
        assert_eq!(p.create_on, vec!["b".to_string()]);
        assert_eq!(p.status.updated_number_scheduled, Some(1));
    }

    #[test]
    fn on_delete_keeps_outdated_pods() {
        let mut d = ds(containers());
        d.spec.as_mut().unwrap().update_strategy =
            Some(serde_json::from_value(json!({"type": "OnDelete"})).unwrap());
        let nodes = vec![node("a", json!({}), json!([]))];
        let p = plan(
            &d,
            &nodes,
            &[pod(&d, "p-a", "a", true, false)],
            Timestamp::now(),
        );
        assert!(p.delete.is_empty() && p.create_on.is_empty());
        assert_eq!(p.status.updated_number_scheduled, Some(0));
    }
}
