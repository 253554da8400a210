//! The pure part of scheduling: which nodes a pod fits (filters), which of
//! those is best (score), and the upstream-worded message when none fits.
//!
//! Filters run in kube-scheduler's default plugin order — NodeUnschedulable,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit — and a node
//! is reported with the reasons of the *first* filter that rejects it, as
//! upstream does; so a tainted node that also lacks CPU counts as a taint
//! failure. Nothing here does IO, so every rule is unit-tested.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use rke2_apimachinery::selectors::{LabelOperator, Requirement};

/// Taint the NodeUnschedulable filter lets a pod ignore `spec.unschedulable`
/// with (upstream `v1.TaintNodeUnschedulable`).
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Taint of a node whose Ready condition is False (or missing).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// NodeUnschedulable's reason (upstream `ErrReasonUnschedulable`).
pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// NodeAffinity's reason, for nodeSelector and required affinity alike.
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// NodePorts' reason.
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
/// NodeResourcesFit's reason when the node's `pods` allocatable is used up.
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// Preemption summary for nodes where evicting pods could not help.
const PREEMPTION_NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// Preemption summary for nodes that lack resources: upstream would look
/// for lower-priority victims; this scheduler does not preempt, so there
/// never are any.
const PREEMPTION_NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// The upstream reason of a taint the pod does not tolerate.
pub fn untolerated_taint_reason(taint: &Taint) -> String {
    format!(
        "node(s) had untolerated taint {{{}: {}}}",
        taint.key,
        taint.value.as_deref().unwrap_or("")
    )
}

/// Whether one toleration tolerates one taint (upstream
/// `Toleration.ToleratesTaint`): an empty effect matches every effect, an
/// empty key matches every key, `Exists` ignores the value and `Equal` (or
/// no operator) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn tolerations_of(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// The status of the node's Ready condition (`None` when it has none).
pub fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// The node's taints as the scheduler sees them: `spec.taints`, plus the
/// `not-ready`/`unreachable` `NoSchedule` taint a node that is not Ready
/// gets from upstream's node lifecycle controller (TaintNodesByCondition)
/// when it does not carry it yet — so a not-ready node is avoided exactly
/// like upstream, and pods tolerating that taint (DaemonSets) still fit.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let implied = match ready_status(node) {
        Some("True") => None,
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => Some(TAINT_NOT_READY),
    };
    if let Some(key) = implied
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(Taint {
            key: key.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        });
    }
    taints
}

/// TaintToleration filter: the first `NoSchedule`/`NoExecute` taint the pod
/// does not tolerate, as its reason.
pub fn check_taints(pod: &Pod, node: &Node) -> Result<(), String> {
    taints_fit(tolerations_of(pod), &effective_taints(node))
}

fn taints_fit(tolerations: &[Toleration], taints: &[Taint]) -> Result<(), String> {
    for taint in taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerated(tolerations, taint)
        {
            return Err(untolerated_taint_reason(taint));
        }
    }
    Ok(())
}

/// How many `PreferNoSchedule` taints of the node the pod does not
/// tolerate (upstream TaintToleration score: fewer is better).
pub fn untolerated_prefer_no_schedule(pod: &Pod, node: &Node) -> usize {
    count_prefer_no_schedule(tolerations_of(pod), &effective_taints(node))
}

fn count_prefer_no_schedule(tolerations: &[Toleration], taints: &[Taint]) -> usize {
    taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tolerations, t))
        .count()
}

/// NodeUnschedulable filter: a cordoned node only takes pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn check_unschedulable(pod: &Pod, node: &Node) -> Result<(), String> {
    cordon_fits(tolerations_of(pod), is_cordoned(node))
}

fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn cordon_fits(tolerations: &[Toleration], cordoned: bool) -> Result<(), String> {
    if !cordoned {
        return Ok(());
    }
    let taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerated(tolerations, &taint) {
        Ok(())
    } else {
        Err(REASON_UNSCHEDULABLE.into())
    }
}

fn operator(op: &str) -> Option<LabelOperator> {
    Some(match op {
        "In" => LabelOperator::In,
        "NotIn" => LabelOperator::NotIn,
        "Exists" => LabelOperator::Exists,
        "DoesNotExist" => LabelOperator::DoesNotExist,
        "Gt" => LabelOperator::GreaterThan,
        "Lt" => LabelOperator::LessThan,
        _ => return None,
    })
}

/// Whether one node selector requirement holds for `labels`. A malformed
/// requirement (unknown operator, Gt with a non-integer, ...) matches
/// nothing, as upstream's lazy-error selector does.
fn requirement_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let Some(op) = operator(&req.operator) else {
        return false;
    };
    match Requirement::new(&req.key, op, req.values.clone().unwrap_or_default()) {
        Ok(r) => r.matches(labels),
        Err(_) => false,
    }
}

/// Whether one node selector term holds: every `matchExpressions` entry
/// against the labels and every `matchFields` entry against the node's
/// fields (only `metadata.name` exists). A term with neither matches
/// nothing (upstream).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let node_fields: BTreeMap<String, String> = [(
        "metadata.name".to_string(),
        node.metadata.name.clone().unwrap_or_default(),
    )]
    .into();
    exprs.iter().all(|r| requirement_matches(r, labels))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, &node_fields)
        })
}

/// Whether a PersistentVolume may be used on `node`: its
/// `spec.nodeAffinity.required` (any term matches), or no affinity at all
/// (upstream's `CheckNodeAffinity` of the volume binding plugin).
pub fn volume_fits_node(pv: &k8s_openapi::api::core::v1::PersistentVolume, node: &Node) -> bool {
    let Some(required) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    required
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// NodeAffinity filter: `spec.nodeSelector` (every label equal) and the
/// required node affinity (any term matches).
pub fn check_node_affinity(pod: &Pod, node: &Node) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|required| {
            required
                .node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    if selector_ok && affinity_ok {
        Ok(())
    } else {
        Err(REASON_NODE_AFFINITY.into())
    }
}

/// Resource amounts by name: CPU in millicores, everything else in whole
/// units (bytes for memory and storage), so sums and comparisons are exact
/// integers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources(pub BTreeMap<String, i128>);

impl Resources {
    /// Reads a `requests`/`allocatable` map; unparsable quantities count as
    /// zero (the apiserver validates them, so this is only defensive).
    pub fn from_map(
        map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Self {
        let mut out = Resources::default();
        for (name, q) in map.into_iter().flatten() {
            let amount = match rke2_apimachinery::parse_quantity(&q.0) {
                Ok(q) if name == "cpu" => q.as_milli(),
                Ok(q) => q.value(),
                Err(_) => 0,
            };
            out.0.insert(name.clone(), amount);
        }
        out
    }

    /// The amount of `name` (zero when absent).
    pub fn get(&self, name: &str) -> i128 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Resources) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }

    /// Takes `other` out of `self` again (the inverse of [`Resources::add`]).
    pub fn sub(&mut self, other: &Resources) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() -= v;
        }
    }

    /// Raises every amount of `self` to at least `other`'s.
    pub fn max_with(&mut self, other: &Resources) {
        for (k, v) in &other.0 {
            let e = self.0.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// What a pod asks for (upstream `resource.PodRequests`): the sum of its
/// containers, or the largest init-container step if that is more, where
/// sidecars (init containers with `restartPolicy: Always`) keep running and
/// so add to everything after them; plus `spec.overhead`.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    // An in-place resize (`pods/resize`): until the node applied it, the
    // pod holds the larger of its spec and what its node allocated and
    // runs; a resize the node found infeasible never applies, so only
    // the latter count (upstream's `PodRequests` with status resources).
    let infeasible = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "PodResizePending" && c.reason.as_deref() == Some("Infeasible"));
    let mut total = Resources::default();
    for c in &spec.containers {
        let status = statuses.iter().find(|s| s.name == c.name);
        let mut held = Resources::default();
        if let Some(s) = status {
            held.max_with(&Resources::from_map(s.allocated_resources.as_ref()));
            held.max_with(&Resources::from_map(
                s.resources.as_ref().and_then(|r| r.requests.as_ref()),
            ));
        }
        if status.is_none() || held.0.is_empty() {
            total.add(&requests(c));
        } else {
            if !infeasible {
                held.max_with(&requests(c));
            }
            total.add(&held);
        }
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            total.add(&r);
            sidecars.add(&r);
            init_peak.max_with(&sidecars);
        } else {
            let mut step = r;
            step.add(&sidecars);
            init_peak.max_with(&step);
        }
    }
    total.max_with(&init_peak);
    total.add(&Resources::from_map(spec.overhead.as_ref()));
    total
}

/// Whether a pod has finished (its resources are free again).
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The uid of the pod's controlling owner (a ReplicaSet, Job, ...), whose
/// replicas the score spreads.
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// A host port a container claims: (protocol, hostIP, port).
pub type HostPort = (String, String, i32);

fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty());
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip.unwrap_or_else(|| "0.0.0.0".into()),
                port,
            ))
        })
        .collect()
}

fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

/// What one pod adds to its node's [`NodeInfo`], derived once from its
/// spec: a cache that later removes the pod takes away exactly what it
/// added, even if the pod object it sees then reads differently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Its requests ([`pod_requests`]).
    pub requests: Resources,
    /// The uid of its controlling owner ([`controller_uid`]).
    pub owner: Option<String>,
    /// The host ports its containers claim.
    pub host_ports: Vec<HostPort>,
}

impl Footprint {
    /// The footprint of `pod`.
    pub fn of(pod: &Pod) -> Self {
        Footprint {
            requests: pod_requests(pod),
            owner: controller_uid(pod).map(str::to_string),
            host_ports: host_ports(pod),
        }
    }
}

/// What is already on one node: the pods that count against it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Pods bound to the node that have not terminated.
    pub pods: usize,
    /// The sum of their requests.
    pub requested: Resources,
    /// How many of them each controlling owner uid has.
    pub owners: BTreeMap<String, usize>,
    /// Host ports they claim.
    pub host_ports: Vec<HostPort>,
}

impl NodeInfo {
    /// Counts `pod` as running on this node.
    pub fn add_pod(&mut self, pod: &Pod) {
        self.add(&Footprint::of(pod));
    }

    /// Counts a pod with footprint `f` as running on this node.
    pub fn add(&mut self, f: &Footprint) {
        self.pods += 1;
        self.requested.add(&f.requests);
        if let Some(uid) = &f.owner {
            *self.owners.entry(uid.clone()).or_default() += 1;
        }
        self.host_ports.extend(f.host_ports.iter().cloned());
    }

    /// Stops counting a pod [`NodeInfo::add`]ed with footprint `f`.
    pub fn remove(&mut self, f: &Footprint) {
        self.pods = self.pods.saturating_sub(1);
        self.requested.sub(&f.requests);
        if let Some(uid) = &f.owner
            && let Some(n) = self.owners.get_mut(uid)
        {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(uid);
            }
        }
        // Only one entry per port of `f`: pods with a preset nodeName skip
        // the NodePorts filter, so two of them may hold the same entry, and
        // the other's claim must stay.
        for port in &f.host_ports {
            if let Some(i) = self.host_ports.iter().position(|h| h == port) {
                self.host_ports.swap_remove(i);
            }
        }
    }

    /// Whether no pod counts against the node any more.
    pub fn is_empty(&self) -> bool {
        self.pods == 0
    }
}

/// Groups bound, non-terminated pods by `spec.nodeName`.
pub fn node_infos<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<String, NodeInfo> {
    let mut out: BTreeMap<String, NodeInfo> = BTreeMap::new();
    for pod in pods {
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if is_terminated(pod) {
            continue;
        }
        out.entry(node.to_string()).or_default().add_pod(pod);
    }
    out
}

/// NodePorts filter: no host port of the pod may be claimed on the node.
pub fn check_host_ports(pod: &Pod, info: &NodeInfo) -> Result<(), String> {
    ports_fit(&host_ports(pod), info)
}

fn ports_fit(wanted: &[HostPort], info: &NodeInfo) -> Result<(), String> {
    if wanted
        .iter()
        .any(|w| info.host_ports.iter().any(|h| ports_conflict(w, h)))
    {
        return Err(REASON_NODE_PORTS.into());
    }
    Ok(())
}

/// The requested amounts in the order upstream reports shortages: cpu,
/// memory, then the others by name; `pods` is counted separately.
fn report_order(requests: &Resources) -> Vec<(String, i128)> {
    let mut out: Vec<(String, i128)> = requests
        .0
        .iter()
        .filter(|(k, _)| *k != "pods")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    out.sort_by(|(a, _), (b, _)| {
        let rank = |n: &str| match n {
            "cpu" => 0,
            "memory" => 1,
            _ => 2,
        };
        (rank(a), a).cmp(&(rank(b), b))
    });
    out
}

/// NodeResourcesFit filter (upstream `fitsRequest`): every reason at once —
/// `Too many pods`, then `Insufficient <resource>` for cpu, memory and the
/// rest in name order. A resource the pod does not request never fails,
/// even on an overcommitted node; one the node does not report counts as
/// zero allocatable.
pub fn check_resources(pod: &Pod, node: &Node, info: &NodeInfo) -> Result<(), Vec<String>> {
    resources_fit(
        &report_order(&pod_requests(pod)),
        &allocatable_of(node),
        info,
    )
}

fn allocatable_of(node: &Node) -> Resources {
    Resources::from_map(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

fn resources_fit(
    wanted: &[(String, i128)],
    allocatable: &Resources,
    info: &NodeInfo,
) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if info.pods as i128 + 1 > allocatable.get("pods") {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    for (name, req) in wanted {
        if *req > 0 && *req > allocatable.get(name) - info.requested.get(name) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Why one node was rejected: the reasons of the first failing filter, and
/// whether preemption (evicting other pods) could in principle have made
/// room — only resource and port shortages qualify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Upstream-worded reasons.
    pub reasons: Vec<String>,
    /// True for NodePorts/NodeResourcesFit failures.
    pub resolvable: bool,
}

/// What the filters derive from a Node, computed once per node version
/// instead of once per pod tried against it (parsing allocatable and
/// building the effective taints dominated a scheduling pass).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// `status.allocatable`, parsed.
    pub allocatable: Resources,
    /// [`effective_taints`].
    pub taints: Vec<Taint>,
    /// `spec.unschedulable`.
    pub cordoned: bool,
}

impl NodeFacts {
    /// The facts of `node`.
    pub fn of(node: &Node) -> Self {
        NodeFacts {
            allocatable: allocatable_of(node),
            taints: effective_taints(node),
            cordoned: is_cordoned(node),
        }
    }
}

/// The pod side of the filters, derived once per scheduling attempt.
struct Wanted<'a> {
    pod: &'a Pod,
    tolerations: &'a [Toleration],
    owner: Option<&'a str>,
    host_ports: Vec<HostPort>,
    requests: Vec<(String, i128)>,
}

impl<'a> Wanted<'a> {
    fn new(pod: &'a Pod) -> Self {
        Wanted {
            pod,
            tolerations: tolerations_of(pod),
            owner: controller_uid(pod),
            host_ports: host_ports(pod),
            requests: report_order(&pod_requests(pod)),
        }
    }

    fn filter(&self, node: &Node, facts: &NodeFacts, info: &NodeInfo) -> Result<(), Rejection> {
        let hard = |r: String| Rejection {
            reasons: vec![r],
            resolvable: false,
        };
        cordon_fits(self.tolerations, facts.cordoned).map_err(hard)?;
        taints_fit(self.tolerations, &facts.taints).map_err(hard)?;
        check_node_affinity(self.pod, node).map_err(hard)?;
        ports_fit(&self.host_ports, info).map_err(|r| Rejection {
            reasons: vec![r],
            resolvable: true,
        })?;
        resources_fit(&self.requests, &facts.allocatable, info).map_err(|reasons| Rejection {
            reasons,
            resolvable: true,
        })
    }

    /// [`Score`]'s fields, borrowing the name: comparing these for every
    /// feasible node must not allocate.
    fn rank<'n>(
        &self,
        node: &'n Node,
        facts: &NodeFacts,
        info: &NodeInfo,
    ) -> (usize, usize, usize, &'n str) {
        (
            count_prefer_no_schedule(self.tolerations, &facts.taints),
            self.owner
                .and_then(|uid| info.owners.get(uid).copied())
                .unwrap_or(0),
            info.pods,
            node.metadata.name.as_deref().unwrap_or(""),
        )
    }
}

/// Runs every filter on one node, stopping at the first that rejects.
pub fn filter(pod: &Pod, node: &Node, info: &NodeInfo) -> Result<(), Rejection> {
    Wanted::new(pod).filter(node, &NodeFacts::of(node), info)
}

/// A feasible node's rank; smaller is better, and the derived order
/// compares the fields top to bottom.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    /// Untolerated `PreferNoSchedule` taints: first, because upstream
    /// weighs TaintToleration (3) above spreading (2), so a replica avoids
    /// such a node even if that stacks it with a sibling.
    pub prefer_no_schedule: usize,
    /// Pods of the same controlling owner already there (spreads replicas).
    pub same_owner: usize,
    /// All pods already there (balances load).
    pub pods: usize,
    /// The node name, so equal nodes are chosen deterministically.
    pub name: String,
}

/// Ranks one feasible node for `pod`.
pub fn score(pod: &Pod, node: &Node, info: &NodeInfo) -> Score {
    let (prefer_no_schedule, same_owner, pods, name) =
        Wanted::new(pod).rank(node, &NodeFacts::of(node), info);
    Score {
        prefer_no_schedule,
        same_owner,
        pods,
        name: name.to_string(),
    }
}

/// Why no node fits: per-reason node counts, rendered like upstream's
/// `FitError` (including the preemption summary).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FitError {
    /// How many nodes were considered.
    pub num_nodes: usize,
    /// Nodes per filter reason (a node with two resource shortages counts
    /// under both).
    pub reasons: BTreeMap<String, usize>,
    /// Nodes where preemption is not helpful / found no victims.
    pub preemption: BTreeMap<&'static str, usize>,
}

fn histogram<K: fmt::Display>(counts: &BTreeMap<K, usize>) -> String {
    // Upstream sorts the formatted "<count> <reason>" strings.
    let mut parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.sort();
    parts.join(", ")
}

/// The filter reason of a node the pod's bound volumes may not be used on
/// (upstream's `ErrReasonNodeConflict`).
pub const REASON_VOLUME_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";

impl FitError {
    /// Counts `nodes` more nodes, filtered out for `reason` where
    /// preemption cannot help (a filter outside [`select_among_first`]).
    pub fn add_unresolvable(&mut self, reason: &str, nodes: usize) {
        if nodes == 0 {
            return;
        }
        self.num_nodes += nodes;
        *self.reasons.entry(reason.to_string()).or_default() += nodes;
        *self.preemption.entry(PREEMPTION_NOT_HELPFUL).or_default() += nodes;
    }

    /// A failure before any node is filtered (upstream's PreFilter):
    /// `why` for all `nodes`.
    pub fn pre_filter(why: &str, nodes: usize) -> String {
        format!(
            "0/{nodes} nodes are available: {why}. preemption: 0/{nodes} nodes are available: {nodes} {PREEMPTION_NOT_HELPFUL}."
        )
    }
}

impl FitError {
    /// The message with `post_filter` in place of the preemption summary
    /// (upstream's `PostFilterMsg`): empty when preemption nominated a
    /// node, a reason when the pod may not preempt.
    pub fn with_post_filter(&self, post_filter: &str) -> String {
        if self.num_nodes == 0 {
            return self.to_string();
        }
        let mut out = format!(
            "0/{} nodes are available: {}.",
            self.num_nodes,
            histogram(&self.reasons)
        );
        if !post_filter.is_empty() {
            out.push(' ');
            out.push_str(post_filter);
        }
        out
    }

    /// Whether removing pods could make room on some node (a resource or
    /// host port shortage there).
    pub fn preemption_may_help(&self) -> bool {
        self.preemption.contains_key(PREEMPTION_NO_VICTIMS)
    }
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            // Upstream ErrNoNodesAvailable.
            return f.write_str("no nodes available to schedule pods");
        }
        let n = self.num_nodes;
        write!(
            f,
            "0/{n} nodes are available: {}. preemption: 0/{n} nodes are available: {}.",
            histogram(&self.reasons),
            histogram(&self.preemption)
        )
    }
}

impl std::error::Error for FitError {}

/// One node as [`select_among`] weighs it: the Node, its [`NodeFacts`] and
/// what is already on it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The Node object (labels and name for node affinity).
    pub node: &'a Node,
    /// Its derived facts, current for this version of `node`.
    pub facts: &'a NodeFacts,
    /// The pods counting against it.
    pub info: &'a NodeInfo,
}

/// Picks the node for `pod` among `nodes`, given every pod already bound
/// (or assumed bound) in `bound`; the best-scoring feasible node's name, or
/// why none fits.
///
/// Derives everything from scratch, so it costs O(nodes + bound pods);
/// a caller scheduling many pods keeps [`NodeFacts`] and [`NodeInfo`]s up
/// to date instead and calls [`select_among`].
pub fn select_node<'a>(
    pod: &Pod,
    nodes: impl IntoIterator<Item = &'a Node>,
    bound: impl IntoIterator<Item = &'a Pod>,
) -> Result<String, FitError> {
    let infos = node_infos(bound);
    let empty = NodeInfo::default();
    let nodes: Vec<(&Node, NodeFacts)> = nodes.into_iter().map(|n| (n, NodeFacts::of(n))).collect();
    select_among(
        pod,
        nodes.iter().map(|(node, facts)| Candidate {
            node,
            facts,
            info: infos
                .get(node.metadata.name.as_deref().unwrap_or(""))
                .unwrap_or(&empty),
        }),
    )
}

/// Picks the node for `pod` among `candidates` (every node the scheduler
/// knows, with facts and pods already derived): the best-scoring feasible
/// node's name, or why none fits. Costs O(candidates).
pub fn select_among<'a>(
    pod: &Pod,
    candidates: impl IntoIterator<Item = Candidate<'a>>,
) -> Result<String, FitError> {
    select_among_first(pod, candidates, usize::MAX).0
}

/// How many feasible nodes the scheduler looks for before it stops
/// filtering, as upstream's adaptive `percentageOfNodesToScore`: every
/// node below 100, else 50 % less 1 % per 125 nodes (at least 5 %), never
/// fewer than 100. At 2,000 nodes that is 680: filtering every node for
/// every pod was most of a server's CPU in the scale runs.
pub fn feasible_nodes_to_find(all: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if all < MIN_FEASIBLE {
        return all;
    }
    let percent = 50usize.saturating_sub(all / 125).max(5);
    (all * percent / 100).max(MIN_FEASIBLE)
}

/// [`select_among`] that stops once `enough` feasible nodes were found;
/// also returns how many candidates it examined (where the next pod's
/// search starts, so the sample rotates over the nodes as upstream's).
/// A pod no node fits is still checked against every candidate, so its
/// [`FitError`] counts them all.
pub fn select_among_first<'a>(
    pod: &Pod,
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    enough: usize,
) -> (Result<String, FitError>, usize) {
    let wanted = Wanted::new(pod);
    let mut err = FitError::default();
    let mut best: Option<(usize, usize, usize, &str)> = None;
    let mut feasible = 0usize;
    for c in candidates {
        if feasible >= enough {
            break;
        }
        err.num_nodes += 1;
        match wanted.filter(c.node, c.facts, c.info) {
            Ok(()) => {
                feasible += 1;
                let s = wanted.rank(c.node, c.facts, c.info);
                if best.is_none_or(|b| s < b) {
                    best = Some(s);
                }
            }
            Err(rej) => {
                for r in rej.reasons {
                    *err.reasons.entry(r).or_default() += 1;
                }
                let p = if rej.resolvable {
                    PREEMPTION_NO_VICTIMS
                } else {
                    PREEMPTION_NOT_HELPFUL
                };
                *err.preemption.entry(p).or_default() += 1;
            }
        }
    }
    let examined = err.num_nodes;
    (best.map(|(.., name)| name.to_string()).ok_or(err), examined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(spec: Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "i"}]);
        }
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    fn taint(v: Value) -> Taint {
        serde_json::from_value(v).unwrap()
    }

    fn tol(v: Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn bound(name: &str, node: &str, requests: Value, owner: Option<&str>) -> Pod {
        let mut p = pod(json!({"nodeName": node, "containers": [
            {"name": "c", "image": "i", "resources": {"requests": requests}}]}));
        p.metadata.name = Some(name.into());
        if let Some(uid) = owner {
            p.metadata.owner_references = Some(vec![
                serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "rs", "uid": uid, "controller": true}))
                .unwrap(),
            ]);
        }
        p
    }

    #[test]
    fn toleration_operators_and_effects() {
        let t = taint(json!({"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}));
        // Exists with the key, any effect.
        assert!(tolerates(
            &tol(json!({"key": "CriticalAddonsOnly", "operator": "Exists"})),
            &t
        ));
        // Exists without a key tolerates everything.
        assert!(tolerates(&tol(json!({"operator": "Exists"})), &t));
        // Equal needs the value.
        assert!(tolerates(
            &tol(json!({"key": "CriticalAddonsOnly", "operator": "Equal", "value": "true"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "CriticalAddonsOnly", "operator": "Equal", "value": "false"})),
            &t
        ));
        // No operator means Equal.
        assert!(tolerates(
            &tol(json!({"key": "CriticalAddonsOnly", "value": "true"})),
            &t
        ));
        // An effect must match when given.
        assert!(!tolerates(
            &tol(
                json!({"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"})
            ),
            &t
        ));
        assert!(tolerates(
            &tol(json!({"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        // Another key does not.
        assert!(!tolerates(
            &tol(json!({"key": "other", "operator": "Exists"})),
            &t
        ));
    }

    #[test]
    fn taint_filter_reports_first_untolerated_hard_taint() {
        let n = node(
            "n",
            json!({}),
            json!([
                {"key": "soft", "effect": "PreferNoSchedule"},
                {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"},
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
            ]),
        );
        let plain = pod(json!({}));
        assert_eq!(
            check_taints(&plain, &n).unwrap_err(),
            "node(s) had untolerated taint {CriticalAddonsOnly: true}"
        );
        let some =
            pod(json!({"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}));
        assert_eq!(
            check_taints(&some, &n).unwrap_err(),
            "node(s) had untolerated taint {dedicated: db}"
        );
        let all = pod(json!({"tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}));
        assert!(check_taints(&all, &n).is_ok());
        // PreferNoSchedule only scores.
        assert_eq!(untolerated_prefer_no_schedule(&all, &n), 1);
    }

    #[test]
    fn not_ready_node_has_implied_taint() {
        let mut n = node("n", json!({}), json!([]));
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert_eq!(
            check_taints(&pod(json!({})), &n).unwrap_err(),
            "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
        );
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
        assert_eq!(
            check_taints(&pod(json!({})), &n).unwrap_err(),
            "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
        );
        let tolerant = pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(check_taints(&tolerant, &n).is_ok());
        n.status = None;
        assert!(check_taints(&pod(json!({})), &n).is_err());
    }

    #[test]
    fn unschedulable_node_unless_tolerated() {
        let mut n = node("n", json!({}), json!([]));
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(
            check_unschedulable(&pod(json!({})), &n).unwrap_err(),
            REASON_UNSCHEDULABLE
        );
        let tolerant = pod(json!({"tolerations": [
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert!(check_unschedulable(&tolerant, &n).is_ok());
    }

    #[test]
    fn node_selector_labels() {
        let n = node("n", json!({"disk": "ssd", "zone": "a"}), json!([]));
        assert!(check_node_affinity(&pod(json!({"nodeSelector": {"disk": "ssd"}})), &n).is_ok());
        assert_eq!(
            check_node_affinity(
                &pod(json!({"nodeSelector": {"disk": "ssd", "zone": "b"}})),
                &n
            )
            .unwrap_err(),
            REASON_NODE_AFFINITY
        );
        assert!(check_node_affinity(&pod(json!({"nodeSelector": {"gpu": "yes"}})), &n).is_err());
    }

    fn affinity(terms: Value) -> Pod {
        pod(json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Value {
        json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
    }

    #[test]
    fn affinity_operators() {
        let n = node("n1", json!({"zone": "b", "gen": "5"}), json!([]));
        let ok = |p: Pod| check_node_affinity(&p, &n).is_ok();
        assert!(ok(affinity(json!([expr("zone", "In", &["a", "b"])]))));
        assert!(!ok(affinity(json!([expr("zone", "In", &["a"])]))));
        assert!(ok(affinity(json!([expr("zone", "NotIn", &["a"])]))));
        assert!(!ok(affinity(json!([expr("zone", "NotIn", &["b"])]))));
        // NotIn holds for a missing label.
        assert!(ok(affinity(json!([expr("gpu", "NotIn", &["x"])]))));
        assert!(ok(affinity(json!([expr("zone", "Exists", &[])]))));
        assert!(!ok(affinity(json!([expr("gpu", "Exists", &[])]))));
        assert!(ok(affinity(json!([expr("gpu", "DoesNotExist", &[])]))));
        assert!(!ok(affinity(json!([expr("zone", "DoesNotExist", &[])]))));
        assert!(ok(affinity(json!([expr("gen", "Gt", &["3"])]))));
        assert!(!ok(affinity(json!([expr("gen", "Gt", &["5"])]))));
        assert!(ok(affinity(json!([expr("gen", "Lt", &["6"])]))));
        assert!(!ok(affinity(json!([expr("gen", "Lt", &["5"])]))));
        // Gt on a non-integer label or value never matches.
        assert!(!ok(affinity(json!([expr("zone", "Gt", &["1"])]))));
        assert!(!ok(affinity(json!([expr("gen", "Gt", &["x"])]))));
        // Terms are ORed, expressions within a term ANDed.
        assert!(ok(affinity(json!([
            expr("zone", "In", &["a"]),
            expr("gen", "Gt", &["1"])
        ]))));
        assert!(!ok(affinity(json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["b"]},
            {"key": "gen", "operator": "Lt", "values": ["2"]}]}]))));
        // An empty term matches nothing; so does an empty list of terms.
        assert!(!ok(affinity(json!([{}]))));
        assert!(!ok(affinity(json!([]))));
        // matchFields on metadata.name.
        let field = |op: &str, v: &str| {
            affinity(
                json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": [v]}]}]),
            )
        };
        assert!(ok(field("In", "n1")));
        assert!(!ok(field("In", "n2")));
        assert!(ok(field("NotIn", "n2")));
        // nodeSelector and affinity must both hold.
        let mut both = affinity(json!([expr("zone", "In", &["b"])]));
        both.spec.as_mut().unwrap().node_selector = Some([("disk".into(), "ssd".into())].into());
        assert!(!ok(both));
    }

    #[test]
    fn requests_with_init_containers_sidecars_and_overhead() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "b", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
            ],
            "initContainers": [
                {"name": "i1", "image": "i", "resources": {"requests": {"cpu": "1", "memory": "100Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }));
        let r = pod_requests(&p);
        // cpu: max(750m, 1000m) + 10m; memory: max(1.5Gi, 100Mi).
        assert_eq!(r.get("cpu"), 1010);
        assert_eq!(r.get("memory"), 1536 * 1024 * 1024);

        let sidecar = pod(json!({
            "containers": [{"name": "a", "image": "i", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "s", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                {"name": "i", "image": "i", "resources": {"requests": {"cpu": "250m"}}},
            ],
        }));
        // Sidecar runs alongside: containers 100m+200m; init step 250m+200m.
        assert_eq!(pod_requests(&sidecar).get("cpu"), 450);
    }

    #[test]
    fn a_pending_resize_counts_the_larger_of_spec_and_allocation() {
        let resized = |cond: Option<&str>| -> Pod {
            let mut p = pod(json!({"containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]}));
            p.status = serde_json::from_value(json!({
                "conditions": cond.map(|r| vec![json!({"type": "PodResizePending", "status": "True", "reason": r})]),
                "containerStatuses": [{"name": "a", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "allocatedResources": {"cpu": "1", "memory": "2Gi"},
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]}))
            .unwrap();
            p
        };
        // Deferred (or not applied yet): max(spec, allocated).
        let r = pod_requests(&resized(Some("Deferred")));
        assert_eq!((r.get("cpu"), r.get("memory")), (2000, 2 << 30));
        // Infeasible: it never applies; what runs counts.
        let r = pod_requests(&resized(Some("Infeasible")));
        assert_eq!((r.get("cpu"), r.get("memory")), (1000, 2 << 30));
    }

    #[test]
    fn resources_against_allocatable() {
        let n = node("n", json!({}), json!([]));
        let existing = [
            bound("a", "n", json!({"cpu": "1500m", "memory": "3Gi"}), None),
            bound("done", "n", json!({"cpu": "2"}), None),
        ];
        let mut done = existing[1].clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let infos = node_infos([&existing[0], &done]);
        let info = &infos["n"];
        assert_eq!(info.pods, 1, "terminated pods do not count");
        let req = |r: Value| {
            pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": r}}]}))
        };
        assert!(check_resources(&req(json!({"cpu": "500m", "memory": "1Gi"})), &n, info).is_ok());
        assert_eq!(
            check_resources(&req(json!({"cpu": "501m"})), &n, info).unwrap_err(),
            vec!["Insufficient cpu"]
        );
        assert_eq!(
            check_resources(&req(json!({"cpu": "1", "memory": "1025Mi"})), &n, info).unwrap_err(),
            vec!["Insufficient cpu", "Insufficient memory"]
        );
        assert_eq!(
            check_resources(&req(json!({"example.com/gpu": "1"})), &n, info).unwrap_err(),
            vec!["Insufficient example.com/gpu"]
        );
        // No requests: only the pod count matters.
        let mut full = NodeInfo {
            pods: 110,
            ..Default::default()
        };
        assert_eq!(
            check_resources(&pod(json!({})), &n, &full).unwrap_err(),
            vec![REASON_TOO_MANY_PODS]
        );
        full.pods = 109;
        assert!(check_resources(&pod(json!({})), &n, &full).is_ok());
    }

    #[test]
    fn host_port_conflicts() {
        let with_port = |ip: Option<&str>, proto: &str| {
            let mut port = json!({"containerPort": 80, "hostPort": 80, "protocol": proto});
            if let Some(ip) = ip {
                port["hostIP"] = json!(ip);
            }
            pod(json!({"containers": [{"name": "c", "image": "i", "ports": [port]}]}))
        };
        let mut info = NodeInfo::default();
        let mut running = with_port(Some("10.0.0.1"), "TCP");
        running.spec.as_mut().unwrap().node_name = Some("n".into());
        info.add_pod(&running);
        assert!(check_host_ports(&with_port(None, "TCP"), &info).is_err());
        assert!(check_host_ports(&with_port(Some("10.0.0.1"), "TCP"), &info).is_err());
        assert!(check_host_ports(&with_port(Some("10.0.0.2"), "TCP"), &info).is_ok());
        assert!(check_host_ports(&with_port(None, "UDP"), &info).is_ok());
        assert!(check_host_ports(&pod(json!({})), &info).is_ok());
    }

    #[test]
    fn node_info_remove_undoes_add() {
        let port = |n: &str| {
            let mut p = bound(
                n,
                "n",
                json!({"cpu": "250m", "memory": "1Gi"}),
                Some("rs-uid"),
            );
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![
                serde_json::from_value(json!({"containerPort": 80, "hostPort": 80})).unwrap(),
            ]);
            Footprint::of(&p)
        };
        let (a, b) = (port("a"), port("b"));
        let mut info = NodeInfo::default();
        info.add(&a);
        info.add(&b);
        assert_eq!(info.pods, 2);
        assert_eq!(info.requested.get("cpu"), 500);
        assert_eq!(info.owners["rs-uid"], 2);
        assert_eq!(info.host_ports.len(), 2);
        info.remove(&a);
        // The other pod still claims the same port.
        assert_eq!(info.host_ports, b.host_ports);
        assert_eq!(info.owners["rs-uid"], 1);
        info.remove(&b);
        assert_eq!(info.pods, 0);
        assert!(info.owners.is_empty() && info.host_ports.is_empty());
        assert_eq!(info.requested.get("cpu"), 0);
        assert_eq!(info.requested.get("memory"), 0);
    }

    #[test]
    fn message_counts_and_sorts_reasons() {
        let critical =
            json!([{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]);
        let nodes = [
            node("s1", json!({}), critical.clone()),
            node("s2", json!({}), critical.clone()),
            node("s3", json!({}), critical),
        ];
        let err = select_node(&pod(json!({})), &nodes, []).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 3 node(s) had untolerated taint {CriticalAddonsOnly: true}. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );

        let mut nodes = nodes.to_vec();
        nodes.push(node("w1", json!({}), json!([])));
        nodes.push(node("w2", json!({}), json!([])));
        let big = pod(json!({"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "3", "memory": "5Gi"}}}]}));
        assert_eq!(
            select_node(&big, &nodes, []).unwrap_err().to_string(),
            "0/5 nodes are available: 2 Insufficient cpu, 2 Insufficient memory, \
             3 node(s) had untolerated taint {CriticalAddonsOnly: true}. \
             preemption: 0/5 nodes are available: 2 No preemption victims found for incoming pod, \
             3 Preemption is not helpful for scheduling."
        );
        let selective = pod(json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            select_node(&selective, &nodes, []).unwrap_err().to_string(),
            "0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, \
             3 node(s) had untolerated taint {CriticalAddonsOnly: true}. \
             preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            select_node(&pod(json!({})), &[], [])
                .unwrap_err()
                .to_string(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn score_spreads_owner_then_balances_then_names() {
        let nodes = [
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node("c", json!({}), json!([])),
        ];
        // Empty cluster: the first name wins.
        assert_eq!(select_node(&pod(json!({})), &nodes, []).unwrap(), "a");
        // Fewer pods wins.
        let on_a = bound("x", "a", json!({}), None);
        assert_eq!(select_node(&pod(json!({})), &nodes, [&on_a]).unwrap(), "b");
        // Same-owner spreading beats total pod count: `a` has two unrelated
        // pods, `b` and `c` one sibling each.
        let others = [
            bound("o1", "a", json!({}), None),
            bound("o2", "a", json!({}), None),
            bound("r1", "b", json!({}), Some("rs-uid")),
            bound("r2", "c", json!({}), Some("rs-uid")),
        ];
        let mut replica = pod(json!({}));
        replica.metadata.owner_references = others[2].metadata.owner_references.clone();
        assert_eq!(select_node(&replica, &nodes, &others).unwrap(), "a");
        // Without an owner the least loaded node wins.
        assert_eq!(select_node(&pod(json!({})), &nodes, &others).unwrap(), "b");
        // An untolerated PreferNoSchedule taint outranks everything else.
        let soft = [
            node(
                "a",
                json!({}),
                json!([{"key": "k", "effect": "PreferNoSchedule"}]),
            ),
            nodes[1].clone(),
        ];
        let busy_b = bound("y", "b", json!({}), None);
        assert_eq!(select_node(&pod(json!({})), &soft, [&busy_b]).unwrap(), "b");
        let tolerant = pod(json!({"tolerations": [{"key": "k", "operator": "Exists"}]}));
        assert_eq!(select_node(&tolerant, &soft, [&busy_b]).unwrap(), "a");
    }

    #[test]
    fn volume_conflicts_join_the_histogram() {
        let mut fit = FitError {
            num_nodes: 1,
            ..Default::default()
        };
        fit.reasons.insert(REASON_NODE_AFFINITY.to_string(), 1);
        fit.preemption.insert(PREEMPTION_NOT_HELPFUL, 1);
        fit.add_unresolvable(REASON_VOLUME_NODE_CONFLICT, 1);
        assert_eq!(
            fit.to_string(),
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had volume node affinity conflict. preemption: 0/2 nodes are available: \
             2 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            FitError::pre_filter("pod has unbound immediate PersistentVolumeClaims", 3),
            "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn volume_node_affinity() {
        let pv: k8s_openapi::api::core::v1::PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "v"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}
        }))
        .unwrap();
        let on = |h: &str| node(h, json!({"kubernetes.io/hostname": h}), json!([]));
        assert!(volume_fits_node(&pv, &on("a")));
        assert!(!volume_fits_node(&pv, &on("b")));
        let free: k8s_openapi::api::core::v1::PersistentVolume =
            serde_json::from_value(json!({"metadata": {"name": "v"}, "spec": {}})).unwrap();
        assert!(volume_fits_node(&free, &on("b")));
    }
}
