//! Preemption, as upstream's `DefaultPreemption` plugin decides it: when a
//! pod fits no node, find on each node the smallest set of lower-priority
//! pods whose removal lets it fit, and pick the node where that hurts
//! least — fewest PodDisruptionBudgets broken, then the lowest
//! highest-priority victim, the smallest sum of victim priorities, the
//! fewest victims, the latest start among the highest-priority victims.
//!
//! Pure functions over the scheduler's own view ([`NodeInfo`], the pods on
//! each node, the budgets); the scheduling loop does the API writes
//! (`nominatedNodeName`, the victims' `DisruptionTarget` condition, their
//! graceful deletion and `Preempted` events).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use rke2_apimachinery::selectors::{LabelSelector, label_selector_from_json};

use crate::predicates::{self, Footprint, NodeInfo};

/// The message upstream's FitError ends with when the pod may not preempt.
pub const NOT_ELIGIBLE_NEVER: &str = "preemption: not eligible due to preemptionPolicy=Never.";
/// The same, while victims chosen earlier are still terminating.
pub const NOT_ELIGIBLE_TERMINATING: &str =
    "preemption: not eligible due to a terminating pod on the nominated node.";

/// A pod's priority (`spec.priority`, 0 when unset).
pub fn priority_of(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// When the pod started (`status.startTime`); a pod not started yet
/// counts as starting now, later than any that did, as upstream's
/// `GetPodStartTime` has it.
pub fn start_of(pod: &Pod) -> Timestamp {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(Timestamp::MAX)
}

/// Upstream's `MoreImportantPod` as a sort key: higher priority first,
/// then the one that started earlier; the key last, for a stable order.
fn importance<'a>(p: &OnNode<'a>) -> (std::cmp::Reverse<i32>, Timestamp, &'a str) {
    (
        std::cmp::Reverse(priority_of(p.pod)),
        start_of(p.pod),
        p.key,
    )
}

/// What one victim adds to [`Victims::sum`]: its priority shifted by
/// 2^31 so every term is positive, as upstream sums them — otherwise more
/// victims of a negative priority would look cheaper than fewer.
fn sum_term(priority: i32) -> i64 {
    i64::from(priority) + (1i64 << 31)
}

/// Whether the pod's policy lets it preempt others at all.
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

/// One PodDisruptionBudget as preemption weighs it: which pods it
/// covers and how many of them may still go.
#[derive(Debug, Clone)]
pub struct Budget {
    namespace: String,
    selector: LabelSelector,
    allowed: i32,
    /// Pods the disruption controller already counts as disrupted.
    disrupted: Vec<String>,
}

impl Budget {
    /// The budget of `pdb`; `None` for one selecting nothing (a null
    /// selector in `policy/v1`) or with a selector that does not parse.
    pub fn of(pdb: &PodDisruptionBudget) -> Option<Self> {
        let spec = pdb.spec.as_ref()?;
        let selector = serde_json::to_value(spec.selector.as_ref()?).ok()?;
        let status = pdb.status.as_ref();
        Some(Budget {
            namespace: pdb.metadata.namespace.clone().unwrap_or_default(),
            selector: label_selector_from_json(&selector).ok()?,
            allowed: status.map(|s| s.disruptions_allowed).unwrap_or(0),
            disrupted: status
                .and_then(|s| s.disrupted_pods.as_ref())
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        })
    }

    fn covers(&self, pod: &Pod) -> bool {
        let empty = BTreeMap::new();
        pod.metadata.namespace.as_deref().unwrap_or("") == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
    }
}

/// A pod on a node that preemption may consider.
#[derive(Debug, Clone, Copy)]
pub struct OnNode<'a> {
    /// `<namespace>/<name>`.
    pub key: &'a str,
    /// The pod.
    pub pod: &'a Pod,
    /// What it adds to the node's [`NodeInfo`].
    pub footprint: &'a Footprint,
}

/// The pods to remove from one node so the preemptor fits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victims {
    /// The node.
    pub node: String,
    /// Keys of the victims, highest priority first.
    pub pods: Vec<String>,
    /// How many victims break a PodDisruptionBudget.
    pub pdb_violations: usize,
    /// The highest victim priority.
    pub highest: i32,
    /// The sum of victim priorities, each shifted by 2^31 as upstream's
    /// `minSumPrioritiesScoreFunc` does.
    pub sum: i64,
    /// The earliest start among the victims of the highest priority
    /// (upstream's `GetEarliestPodStartTime`); [`Timestamp::MAX`] when
    /// none has started.
    pub earliest_start: Timestamp,
}

/// Upstream's `selectVictimsOnNode`: every lower-priority pod removed,
/// does the preemptor fit? If so, put back as many as possible — those
/// whose eviction would break a budget first, then the others, each group
/// most important first (higher priority, then earlier start) — and the
/// ones that cannot come back are the victims. `None` when removing all of them is not enough (or there are
/// none).
pub fn select_victims(
    preemptor: &Pod,
    node: &Node,
    info: &NodeInfo,
    on_node: &[OnNode<'_>],
    budgets: &[Budget],
) -> Option<Victims> {
    let priority = priority_of(preemptor);
    let mut lower: Vec<&OnNode<'_>> = on_node
        .iter()
        .filter(|p| priority_of(p.pod) < priority && p.pod.metadata.deletion_timestamp.is_none())
        .collect();
    if lower.is_empty() {
        return None;
    }
    lower.sort_by_key(|p| importance(p));
    let mut info = info.clone();
    for p in &lower {
        info.remove(p.footprint);
    }
    predicates::filter(preemptor, node, &info).ok()?;
    // Which of them a budget protects, in priority order: each budget
    // lets `allowed` of its pods go, the rest would break it.
    let mut allowed: Vec<i32> = budgets.iter().map(|b| b.allowed).collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for p in lower {
        let name = p.pod.metadata.name.as_deref().unwrap_or("");
        let mut breaks = false;
        for (b, left) in budgets.iter().zip(allowed.iter_mut()) {
            if b.covers(p.pod) && !b.disrupted.iter().any(|d| d == name) {
                *left -= 1;
                breaks |= *left < 0;
            }
        }
        if breaks {
            violating.push(p);
        } else {
            fine.push(p);
        }
    }
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (group, breaks) in [(violating, true), (fine, false)] {
        for p in group {
            info.add(p.footprint);
            if predicates::filter(preemptor, node, &info).is_err() {
                info.remove(p.footprint);
                victims.push(p);
                pdb_violations += usize::from(breaks);
            }
        }
    }
    victims.sort_by_key(|p| importance(p));
    let highest = victims.first().map(|p| priority_of(p.pod)).unwrap_or(0);
    Some(Victims {
        node: node.metadata.name.clone().unwrap_or_default(),
        highest,
        sum: victims.iter().map(|p| sum_term(priority_of(p.pod))).sum(),
        earliest_start: victims
            .iter()
            .filter(|p| priority_of(p.pod) == highest)
            .map(|p| start_of(p.pod))
            .min()
            .unwrap_or(Timestamp::MAX),
        pods: victims.iter().map(|p| p.key.to_string()).collect(),
        pdb_violations,
    })
}

/// Upstream's `pickOneNodeForPreemption`: fewest budget violations, then
/// the lowest highest-priority victim, the smallest priority sum, the
/// fewest victims, then the latest start among the highest-priority
/// victims (the youngest work is lost); upstream takes "the first" node
/// of what is left, here the smallest name, so the choice is
/// deterministic.
pub fn pick(candidates: Vec<Victims>) -> Option<Victims> {
    candidates.into_iter().min_by(|a, b| {
        let order = |v: &Victims| {
            (
                v.pdb_violations,
                v.highest,
                v.sum,
                v.pods.len(),
                std::cmp::Reverse(v.earliest_start),
            )
        };
        order(a).cmp(&order(b)).then_with(|| a.node.cmp(&b.node))
    })
}

/// Upstream's `getLowerPriorityNominatedPods`: of the pods nominated
/// (`nominated`: key → node), those on `node` with a priority below
/// `priority`. When a preemptor is nominated there, their nomination is
/// cleared so they look for room elsewhere instead of waiting for room
/// that will go to the preemptor.
pub fn lower_priority_nominated<'a>(
    nominated: impl IntoIterator<Item = (&'a str, &'a str, &'a Pod)>,
    node: &str,
    priority: i32,
) -> Vec<&'a str> {
    nominated
        .into_iter()
        .filter(|(_, n, pod)| *n == node && priority_of(pod) < priority)
        .map(|(key, _, _)| key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, priority: i32, cpu: &str, labels: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"priority": priority, "nodeName": "n1", "containers": [{
                "name": "c", "image": "i",
                "resources": {"requests": {"cpu": cpu}},
            }]},
        }))
        .unwrap()
    }

    fn node(name: &str, cpu: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "10Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    /// Runs [`select_victims`] for `preemptor` on `node` holding `pods`.
    fn victims(preemptor: &Pod, node: &Node, pods: &[Pod], budgets: &[Budget]) -> Option<Victims> {
        let keys: Vec<String> = pods
            .iter()
            .map(|p| format!("default/{}", p.metadata.name.as_deref().unwrap()))
            .collect();
        let prints: Vec<Footprint> = pods.iter().map(Footprint::of).collect();
        let mut info = NodeInfo::default();
        for f in &prints {
            info.add(f);
        }
        let on: Vec<OnNode<'_>> = pods
            .iter()
            .zip(&keys)
            .zip(&prints)
            .map(|((pod, key), footprint)| OnNode {
                key,
                pod,
                footprint,
            })
            .collect();
        select_victims(preemptor, node, &info, &on, budgets)
    }

    fn budget(selector: Value, allowed: i32) -> Budget {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "b", "namespace": "default"},
            "spec": {"selector": selector, "minAvailable": 1},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0},
        }))
        .unwrap();
        Budget::of(&pdb).unwrap()
    }

    #[test]
    fn the_fewest_lowest_priority_pods_go() {
        let n = node("n1", "4");
        let pods = [
            pod("low-a", 0, "1", json!({})),
            pod("low-b", 0, "1", json!({})),
            pod("mid", 500, "1", json!({})),
            pod("peer", 1000, "1", json!({})),
        ];
        let high = pod("high", 1000, "1", json!({}));
        let v = victims(&high, &n, &pods, &[]).unwrap();
        // One cpu is enough: the mid pod is put back first (highest
        // priority), then one of the low ones; the other one goes.
        assert_eq!(v.pods, ["default/low-b"]);
        assert_eq!((v.highest, v.sum, v.pdb_violations), (0, 1 << 31, 0));
        // Two cpus: both low ones go, the mid one stays.
        let big = pod("big", 1000, "2", json!({}));
        assert_eq!(
            victims(&big, &n, &pods, &[]).unwrap().pods,
            ["default/low-a", "default/low-b"]
        );
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims() {
        let n = node("n1", "2");
        let pods = [
            pod("peer", 100, "1", json!({})),
            pod("low", 0, "1", json!({})),
        ];
        let p = pod("p", 100, "2", json!({}));
        // Removing every lower-priority pod is not enough.
        assert_eq!(victims(&p, &n, &pods, &[]), None);
        let small = pod("s", 100, "1", json!({}));
        assert_eq!(
            victims(&small, &n, &pods, &[]).unwrap().pods,
            ["default/low"]
        );
    }

    #[test]
    fn terminating_pods_are_not_chosen_again() {
        let n = node("n1", "1");
        let mut going = pod("going", 0, "1", json!({}));
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert_eq!(
            victims(&pod("p", 10, "1", json!({})), &n, &[going], &[]),
            None
        );
    }

    #[test]
    fn budgets_protect_where_possible() {
        let n = node("n1", "3");
        let pods = [
            pod("z-guarded", 0, "1", json!({"app": "db"})),
            pod("free", 0, "1", json!({"app": "web"})),
            pod("other", 0, "1", json!({"app": "web"})),
        ];
        let b = [budget(json!({"matchLabels": {"app": "db"}}), 0)];
        // Without the budget, name order puts the others back first, so
        // the victim is "z-guarded"; with it, "z-guarded" goes back first.
        let p = pod("p", 10, "1", json!({}));
        assert_eq!(
            victims(&p, &n, &pods, &[]).unwrap().pods,
            ["default/z-guarded"]
        );
        let v = victims(&p, &n, &pods, &b).unwrap();
        assert_eq!(v.pdb_violations, 0);
        assert_eq!(v.pods, ["default/other"]);
        // All three must go: the violation is counted.
        let all = pod("all", 10, "3", json!({}));
        assert_eq!(victims(&all, &n, &pods, &b).unwrap().pdb_violations, 1);
        // A budget with room left is not violated.
        let roomy = [budget(json!({"matchLabels": {"app": "db"}}), 1)];
        assert_eq!(victims(&all, &n, &pods, &roomy).unwrap().pdb_violations, 0);
    }

    /// Candidate victims on `node`: `n` pods, the highest of priority
    /// `highest`, priorities summing (unshifted) to `sum`.
    fn v(node: &str, pdb: usize, highest: i32, sum: i64, n: usize) -> Victims {
        Victims {
            node: node.into(),
            pods: (0..n).map(|i| format!("p{i}")).collect(),
            pdb_violations: pdb,
            highest,
            sum: sum + i64::try_from(n).unwrap() * (1 << 31),
            earliest_start: Timestamp::MAX,
        }
    }

    fn pick_name(c: Vec<Victims>) -> Option<String> {
        pick(c).map(|v| v.node)
    }

    #[test]
    fn fewest_budget_violations_first() {
        // b is worse on every later criterion and still wins.
        assert_eq!(
            pick_name(vec![v("a", 1, 0, 0, 1), v("b", 0, 50, 150, 3)]),
            Some("b".into())
        );
        assert_eq!(pick_name(vec![]), None);
    }

    #[test]
    fn then_the_lowest_highest_victim_priority() {
        assert_eq!(
            pick_name(vec![v("a", 0, 50, 50, 1), v("b", 0, 10, 30, 3)]),
            Some("b".into())
        );
    }

    #[test]
    fn then_the_smallest_sum_of_priorities() {
        assert_eq!(
            pick_name(vec![v("a", 0, 10, 20, 2), v("b", 0, 10, 10, 1)]),
            Some("b".into())
        );
        // Upstream shifts every priority by 2^31 before summing: two
        // victims of -10 cost more than one, though -20 < -10.
        assert_eq!(
            pick_name(vec![v("a", 0, -10, -20, 2), v("b", 0, -10, -10, 1)]),
            Some("b".into())
        );
    }

    #[test]
    fn then_the_fewest_victims() {
        // Shifted sums tie only at the edges of the range: victims
        // {MAX, MIN} against {MAX} both sum to 2^32 - 1.
        let mut a = v("a", 0, i32::MAX, 0, 2);
        a.sum = sum_term(i32::MAX) + sum_term(i32::MIN);
        let mut b = v("b", 0, i32::MAX, 0, 1);
        b.sum = sum_term(i32::MAX);
        assert_eq!(a.sum, b.sum);
        assert_eq!(pick_name(vec![a, b]), Some("b".into()));
    }

    #[test]
    fn then_the_latest_start_of_the_highest_priority_victims() {
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let mut old = v("a", 0, 10, 10, 1);
        old.earliest_start = at(1_000);
        let mut young = v("b", 0, 10, 10, 1);
        young.earliest_start = at(2_000);
        assert_eq!(
            pick_name(vec![young.clone(), old.clone()]),
            Some("b".into())
        );
        // Not started at all counts as now: younger than any.
        let mut pending = v("c", 0, 10, 10, 1);
        pending.earliest_start = Timestamp::MAX;
        assert_eq!(pick_name(vec![old, young, pending]), Some("c".into()));
        // A full tie: the first name.
        assert_eq!(
            pick_name(vec![v("z", 0, 0, 0, 1), v("m", 0, 0, 0, 1)]),
            Some("m".into())
        );
    }

    fn started(mut p: Pod, second: i64) -> Pod {
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(second).unwrap(),
            )),
            ..Default::default()
        });
        p
    }

    #[test]
    fn victims_record_the_earliest_start_of_their_highest_priority() {
        let n = node("n1", "3");
        let pods = [
            started(pod("a", 5, "1", json!({})), 3_000),
            started(pod("b", 5, "1", json!({})), 2_000),
            started(pod("c", 1, "1", json!({})), 1_000),
        ];
        let all = pod("all", 10, "3", json!({}));
        let got = victims(&all, &n, &pods, &[]).unwrap();
        // Priority 5 is the highest; of those, b started first. The
        // older priority-1 pod does not count.
        assert_eq!(got.earliest_start, Timestamp::from_second(2_000).unwrap());
        // Most important first: priority, then the earlier start.
        assert_eq!(got.pods, ["default/b", "default/a", "default/c"]);
        assert_eq!(got.sum, 11 + 3 * (1 << 31));
    }

    #[test]
    fn the_younger_of_equal_priority_pods_is_the_victim() {
        // Upstream puts back the more important pod first: of two of the
        // same priority, the one that started earlier stays, whatever
        // the names say.
        let n = node("n1", "2");
        let pods = [
            started(pod("a-young", 0, "1", json!({})), 5_000),
            started(pod("b-old", 0, "1", json!({})), 1_000),
        ];
        let p = pod("p", 10, "1", json!({}));
        assert_eq!(
            victims(&p, &n, &pods, &[]).unwrap().pods,
            ["default/a-young"]
        );
    }

    #[test]
    fn lower_priority_nominations_on_the_node_are_found() {
        let low = pod("low", 5, "1", json!({}));
        let peer = pod("peer", 10, "1", json!({}));
        let elsewhere = pod("elsewhere", 1, "1", json!({}));
        let nominated = [
            ("default/low", "n1", &low),
            ("default/peer", "n1", &peer),
            ("default/elsewhere", "n2", &elsewhere),
        ];
        assert_eq!(
            lower_priority_nominated(nominated, "n1", 10),
            ["default/low"]
        );
        assert!(lower_priority_nominated(nominated, "n1", 5).is_empty());
    }

    #[test]
    fn never_policy_does_not_preempt() {
        let mut p = pod("p", 10, "1", json!({}));
        assert!(may_preempt(&p));
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(!may_preempt(&p));
    }
}
