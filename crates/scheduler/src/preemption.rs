//! Preemption, as upstream's `DefaultPreemption` plugin decides it: when a
//! pod fits no node, find on each node the smallest set of lower-priority
//! pods whose removal lets it fit, and pick the node where that hurts
//! least — fewest PodDisruptionBudgets broken, then the lowest
//! highest-priority victim, the smallest sum of victim priorities, the
//! fewest victims.
//!
//! Pure functions over the scheduler's own view ([`NodeInfo`], the pods on
//! each node, the budgets); the scheduling loop does the API writes
//! (`nominatedNodeName`, the victims' `DisruptionTarget` condition, their
//! graceful deletion and `Preempted` events).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
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
    /// The sum of victim priorities.
    pub sum: i64,
}

/// Upstream's `selectVictimsOnNode`: every lower-priority pod removed,
/// does the preemptor fit? If so, put back as many as possible — those
/// whose eviction would break a budget first, then the others, each group
/// highest priority first — and the ones that cannot come back are the
/// victims. `None` when removing all of them is not enough (or there are
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
    lower.sort_by_key(|p| (std::cmp::Reverse(priority_of(p.pod)), p.key));
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
    victims.sort_by_key(|p| (std::cmp::Reverse(priority_of(p.pod)), p.key));
    Some(Victims {
        node: node.metadata.name.clone().unwrap_or_default(),
        highest: victims.first().map(|p| priority_of(p.pod)).unwrap_or(0),
        sum: victims.iter().map(|p| i64::from(priority_of(p.pod))).sum(),
        pods: victims.iter().map(|p| p.key.to_string()).collect(),
        pdb_violations,
    })
}

/// Upstream's `pickOneNodeForPreemption` (without the start-time
/// tie-breaks): fewest budget violations, then the lowest
/// highest-priority victim, the smallest priority sum, the fewest
/// victims; the node name last, so the choice is deterministic.
pub fn pick(candidates: Vec<Victims>) -> Option<Victims> {
    candidates.into_iter().min_by(|a, b| {
        (a.pdb_violations, a.highest, a.sum, a.pods.len(), &a.node).cmp(&(
            b.pdb_violations,
            b.highest,
            b.sum,
            b.pods.len(),
            &b.node,
        ))
    })
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
        assert_eq!((v.highest, v.sum, v.pdb_violations), (0, 0, 0));
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

    #[test]
    fn the_node_hurt_least_is_picked() {
        let v = |node: &str, pdb: usize, highest: i32, sum: i64, n: usize| Victims {
            node: node.into(),
            pods: (0..n).map(|i| format!("p{i}")).collect(),
            pdb_violations: pdb,
            highest,
            sum,
        };
        let pick_name = |c: Vec<Victims>| pick(c).map(|v| v.node);
        assert_eq!(
            pick_name(vec![v("a", 1, 0, 0, 1), v("b", 0, 50, 50, 1)]),
            Some("b".into())
        );
        assert_eq!(
            pick_name(vec![v("a", 0, 50, 50, 1), v("b", 0, 10, 30, 3)]),
            Some("b".into())
        );
        assert_eq!(
            pick_name(vec![v("a", 0, 10, 20, 2), v("b", 0, 10, 10, 1)]),
            Some("b".into())
        );
        assert_eq!(
            pick_name(vec![v("b", 0, 0, 0, 2), v("a", 0, 0, 0, 1)]),
            Some("a".into())
        );
        assert_eq!(pick_name(vec![]), None);
    }

    #[test]
    fn never_policy_does_not_preempt() {
        let mut p = pod("p", 10, "1", json!({}));
        assert!(may_preempt(&p));
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(!may_preempt(&p));
    }
}
