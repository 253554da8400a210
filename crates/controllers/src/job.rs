//! Jobs: pods run to completion, as kube-controller-manager's job
//! controller (NonIndexed and Indexed completion modes).
//!
//! A `kube` Controller over Jobs, triggered by their pods. Each reconcile
//! lists the Job's pods afresh (its selector, filtered to pods it controls)
//! and computes a [`Plan`]:
//!
//! * counts: `succeeded` / `failed` are the pods in phase `Succeeded` /
//!   `Failed` (never lower than what the status already says, so pods
//!   deleted after being counted stay counted; upstream tracks this with
//!   the `batch.kubernetes.io/job-tracking` pod finalizer, not done here);
//!   `active` = the other pods not being deleted; `ready` = active pods
//!   with `Ready=True`; `terminating` = pods being deleted;
//! * a Job ends in two steps as upstream's: the interim condition
//!   (`FailureTarget` or `SuccessCriteriaMet`) is set and the active pods
//!   deleted, then the final one (`Failed` or `Complete`, same reason and
//!   message; `completionTime` for `Complete`) once no pod of the Job runs
//!   or terminates;
//! * failures, first match wins: a `FailJob` rule (`PodFailurePolicy`),
//!   `failed > backoffLimit` (default 6, unlimited with
//!   `backoffLimitPerIndex`; `BackoffLimitExceeded`),
//!   `activeDeadlineSeconds` past `startTime` (`DeadlineExceeded`), more
//!   failed indexes than `maxFailedIndexes` (`MaxFailedIndexesExceeded`),
//!   every index finished with some failed (`FailedIndexes`);
//! * success: a `successPolicy` rule met ([`success_policy_match`],
//!   reason `SuccessPolicy`, message `Matched rules at index N`), or
//!   `succeeded >= completions` (or, without `completions`, one success
//!   and no active pod; reason `CompletionsReached`);
//! * otherwise active pods are brought to `min(parallelism, completions -
//!   succeeded)` (without `completions`: `parallelism` until the first
//!   success, then no new pods);
//! * `suspend: true` deletes the active pods and sets `Suspended`.
//!
//! `startTime` is set on the first unsuspended reconcile. A finished Job
//! (`Complete` or `Failed` True) is left alone. Pods are `<job>-<random5>`
//! (generateName) with the template's labels (the apiserver defaults
//! `batch.kubernetes.io/controller-uid` / `job-name` into them) and a
//! controller ownerReference with `blockOwnerDeletion`.
//!
//! `completionMode: Indexed`: one pod per index `0..completions` not yet
//! done (lowest first, at most `parallelism` at once), each with the
//! annotation and label `batch.kubernetes.io/job-completion-index`,
//! `JOB_COMPLETION_INDEX` from that annotation in every container and
//! hostname `<job>-<index>`; `status.completedIndexes` (`0-2,5`) counts
//! as `succeeded`, and the Job completes when every index is done.
//!
//! `backoffLimitPerIndex` (Indexed only): each index has its own limit.
//! A replacement pod carries the failures of its index so far in the
//! annotations `batch.kubernetes.io/job-index-failure-count` (and
//! `…-ignored-failure-count` for failures a policy ignored); a counted
//! failure of a pod whose count already reached the limit, or a
//! `FailIndex` rule, fails the index: it is not run again and shows in
//! `status.failedIndexes` (upstream's compressed form, [`Intervals`]).
//!
//! `podFailurePolicy` ([`failure_rule`]): the first rule whose
//! `onExitCodes` (non-zero exit codes of the named or any container) or
//! `onPodConditions` matches a failed pod decides: `Ignore` leaves the
//! failure out of `failed` (a replacement is made), `FailJob` fails the
//! Job at once (reason `PodFailurePolicy`, upstream's message),
//! `FailIndex` fails the pod's index, `Count` counts it as usual.
//!
//! `ttlSecondsAfterFinished` is [`run_ttl`] (upstream's
//! ttl-after-finished controller, under its own account): a finished Job
//! is deleted (foreground) that many seconds after its `Complete` or
//! `Failed` condition.
//!
//! Not done: backoff delays between re-creations, `podReplacementPolicy`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use rke2_apimachinery::selectors::label_selector_from_json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Reason of the success conditions.
pub const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";
/// Message of the success conditions.
pub const MESSAGE_COMPLETIONS_REACHED: &str = "Reached expected number of completions";
/// Reason of the failure conditions when too many pods failed.
pub const REASON_BACKOFF_LIMIT: &str = "BackoffLimitExceeded";
/// Message of the failure conditions when too many pods failed.
pub const MESSAGE_BACKOFF_LIMIT: &str = "Job has reached the specified backoff limit";
/// Reason of the failure conditions when the deadline passed.
pub const REASON_DEADLINE: &str = "DeadlineExceeded";

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the Job has a `Complete` or `Failed` condition that is True.
pub fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Annotation (and label) with the completion index of a pod of an
/// `Indexed` Job.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Reason of the failure conditions when a `FailJob` rule matched.
pub const REASON_POD_FAILURE_POLICY: &str = "PodFailurePolicy";

/// The completion index of a pod (its annotation).
pub fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
        .filter(|i: &i32| *i >= 0)
}

/// A set of completion indexes as ordered, disjoint, non-adjacent
/// intervals (upstream's `orderedIntervals`): what `completedIndexes`,
/// `failedIndexes` and a success policy's `succeededIndexes` hold. Kept as
/// intervals so `0-99999` costs one entry, not a hundred thousand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i32, i32)>);

impl Intervals {
    /// Parses `1,3-5` leniently as the controller does: a malformed part is
    /// skipped, parsing stops at the first index `>= completions` and an
    /// interval running past `completions` is cut there (the apiserver
    /// refuses malformed strings in the spec; the status is ours).
    pub fn parse(s: &str, completions: i32) -> Self {
        let mut out = Intervals::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let mut limits = part.split('-');
            let Some(Ok(first)) = limits.next().map(str::parse::<i32>) else {
                continue;
            };
            if first >= completions {
                break;
            }
            let last = match limits.next() {
                Some(b) => match b.parse::<i32>() {
                    Ok(b) => b.min(completions - 1),
                    Err(_) => continue,
                },
                None => first,
            };
            if first < 0 || last < first {
                continue;
            }
            out = out.merge(&Intervals(vec![(first, last)]));
        }
        out
    }

    /// The set of the given indexes (any order, repeats allowed).
    pub fn from_indexes(it: impl IntoIterator<Item = i32>) -> Self {
        let set: std::collections::BTreeSet<i32> = it.into_iter().collect();
        let mut v: Vec<(i32, i32)> = Vec::new();
        for i in set {
            match v.last_mut() {
                Some(last) if last.1 + 1 == i => last.1 = i,
                _ => v.push((i, i)),
            }
        }
        Intervals(v)
    }

    /// The union with `other`.
    pub fn merge(&self, other: &Intervals) -> Self {
        let mut all: Vec<(i32, i32)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut v: Vec<(i32, i32)> = Vec::with_capacity(all.len());
        for (a, b) in all {
            match v.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => v.push((a, b)),
            }
        }
        Intervals(v)
    }

    /// Whether index `i` is in the set.
    pub fn has(&self, i: i32) -> bool {
        let at = self.0.partition_point(|&(_, last)| last < i);
        self.0.get(at).is_some_and(|&(first, _)| first <= i)
    }

    /// How many indexes the set holds.
    pub fn total(&self) -> i64 {
        self.0
            .iter()
            .map(|&(a, b)| i64::from(b) - i64::from(a) + 1)
            .sum()
    }

    /// How many indexes the set shares with `other`.
    pub fn overlap(&self, other: &Intervals) -> i64 {
        let (mut i, mut j, mut n) = (0, 0, 0i64);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if hi >= lo {
                n += i64::from(hi) - i64::from(lo) + 1;
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        n
    }

    /// The first `count` indexes below `completions` not in the set.
    pub fn first_missing(&self, count: usize, completions: i32) -> Vec<i32> {
        let mut out = Vec::new();
        let mut candidate = 0;
        for &(first, last) in &self.0 {
            while candidate < completions && out.len() < count && candidate < first {
                out.push(candidate);
                candidate += 1;
            }
            candidate = candidate.max(last.saturating_add(1));
        }
        while candidate < completions && out.len() < count {
            out.push(candidate);
            candidate += 1;
        }
        out
    }
}

impl std::fmt::Display for Intervals {
    /// Upstream's text: `a-b` for three or more consecutive indexes, a
    /// pair as `a,b` (`0,1` and `0-2`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, &(a, b)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
            if b == a + 1 {
                write!(f, ",{b}")?;
            } else if b > a {
                write!(f, "-{b}")?;
            }
        }
        Ok(())
    }
}

/// What the Job's `podFailurePolicy` says of a failed pod: the action of
/// the first matching rule and its index, or `None`.
pub fn failure_rule(job: &Job, pod: &Pod) -> Option<(String, usize, String)> {
    let rules = job
        .spec
        .as_ref()?
        .pod_failure_policy
        .as_ref()?
        .rules
        .clone();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let pname = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(req) = &rule.on_exit_codes {
            let statuses = status
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(
                    status
                        .and_then(|s| s.init_container_statuses.clone())
                        .unwrap_or_default(),
                );
            for cs in statuses {
                if req.container_name.as_ref().is_some_and(|n| *n != cs.name) {
                    continue;
                }
                let Some(code) = cs
                    .state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                // Exit code 0 never matches (upstream).
                if code == 0 {
                    continue;
                }
                let inside = req.values.contains(&code);
                let hit = match req.operator.as_str() {
                    "In" => inside,
                    "NotIn" => !inside,
                    _ => false,
                };
                if hit {
                    let msg = format!(
                        "Container {} for pod {ns}/{pname} failed with exit code {code} matching {} rule at index {i}",
                        cs.name, rule.action
                    );
                    return Some((rule.action.clone(), i, msg));
                }
            }
        }
        if let Some(conds) = &rule.on_pod_conditions {
            let pod_conds = status
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            for want in conds {
                let want_status = want.status.as_deref().unwrap_or("True");
                if let Some(c) = pod_conds
                    .iter()
                    .find(|c| c.type_ == want.type_ && c.status == want_status)
                {
                    let msg = format!(
                        "Pod {ns}/{pname} has condition {} matching {} rule at index {i}",
                        c.type_, rule.action
                    );
                    return Some((rule.action.clone(), i, msg));
                }
            }
        }
    }
    None
}

/// What one reconcile does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// How many pods to create.
    pub create: usize,
    /// The completion indexes of the pods to create (`Indexed` Jobs; as
    /// many as `create`).
    pub indexes: Vec<i32>,
    /// With `backoffLimitPerIndex`: the failures (counted, ignored) of an
    /// index before its new pod, for the pod's annotations.
    pub index_failures: std::collections::BTreeMap<i32, (i32, i32)>,
    /// Pods (names) to delete.
    pub delete: Vec<String>,
    /// The new status.
    pub status: JobStatus,
    /// When to look again by itself (activeDeadlineSeconds).
    pub recheck_after: Option<Duration>,
}

fn set_condition(
    conds: &mut Vec<JobCondition>,
    ty: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == ty) {
        if c.status != "True" {
            c.status = "True".into();
            c.last_transition_time = Some(Time(now));
        }
        c.last_probe_time = Some(Time(now));
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        return;
    }
    conds.push(JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

fn true_condition<'a>(conds: &'a [JobCondition], ty: &str) -> Option<&'a JobCondition> {
    conds.iter().find(|c| c.type_ == ty && c.status == "True")
}

/// Annotation of a pod of a Job with `backoffLimitPerIndex`: how many
/// failures of its index counted before it.
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Annotation: how many failures of its index a pod failure policy
/// ignored before it.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// Reason of the conditions of a Job whose success policy matched.
pub const REASON_SUCCESS_POLICY: &str = "SuccessPolicy";
/// Reason of the failure conditions when more indexes failed than
/// `maxFailedIndexes`.
pub const REASON_MAX_FAILED_INDEXES: &str = "MaxFailedIndexesExceeded";
/// Message of the failure conditions when more indexes failed than
/// `maxFailedIndexes`.
pub const MESSAGE_MAX_FAILED_INDEXES: &str =
    "Job has exceeded the specified maximal number of failed indexes";
/// Reason of the failure conditions when every index finished and some
/// failed.
pub const REASON_FAILED_INDEXES: &str = "FailedIndexes";
/// Message of the failure conditions when every index finished and some
/// failed.
pub const MESSAGE_FAILED_INDEXES: &str = "Job has failed indexes";

fn annotation_count(p: &Pod, key: &str) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(0)
}

/// The first rule of the success policy that the succeeded indexes meet,
/// as upstream's message (`Matched rules at index 0`).
pub fn success_policy_match(job: &Job, succeeded: &Intervals) -> Option<String> {
    let spec = job.spec.as_ref()?;
    let policy = spec.success_policy.as_ref()?;
    let completions = spec.completions.unwrap_or(0);
    if succeeded.total() == 0 {
        return None;
    }
    for (n, rule) in policy.rules.iter().enumerate() {
        let hit = match &rule.succeeded_indexes {
            Some(s) => {
                let wanted = Intervals::parse(s, completions);
                if wanted.total() == 0 {
                    continue;
                }
                let have = wanted.overlap(succeeded);
                have == wanted.total() || rule.succeeded_count.is_some_and(|c| have >= i64::from(c))
            }
            None => rule
                .succeeded_count
                .is_some_and(|c| succeeded.total() >= i64::from(c)),
        };
        if hit {
            return Some(format!("Matched rules at index {n}"));
        }
    }
    None
}

/// Computes the plan for `job` given the pods it controls.
///
/// A Job ends in two steps, as upstream's: the interim condition
/// (`SuccessCriteriaMet` or `FailureTarget`) is set and the pods still
/// running deleted; the final one (`Complete` or `Failed`, same reason and
/// message) once none of its pods runs or terminates any more.
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let mut out = Plan::default();
    if finished(job) {
        out.status = old;
        return out;
    }
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut active: Vec<&Pod> = live
        .iter()
        .copied()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    // Newest last, so extras are taken from the end.
    active.sort_by_key(|p| {
        (
            p.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::UNIX_EPOCH),
            p.metadata.name.clone(),
        )
    });
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(0);
    let per_index = spec.backoff_limit_per_index.filter(|_| indexed);
    let mut done_indexes = Intervals::default();
    if indexed {
        done_indexes =
            Intervals::parse(old.completed_indexes.as_deref().unwrap_or(""), completions).merge(
                &Intervals::from_indexes(
                    live.iter()
                        .filter(|p| phase(p) == "Succeeded")
                        .filter_map(|p| index_of(p))
                        .filter(|i| *i < completions),
                ),
            );
        st.completed_indexes = Some(done_indexes.to_string());
    }
    let succeeded = if indexed {
        done_indexes.total().min(i64::from(i32::MAX)) as i32
    } else {
        live.iter().filter(|p| phase(p) == "Succeeded").count() as i32
    };
    // podFailurePolicy: `Ignore` failures do not count, a `FailJob` one
    // fails the Job, a `FailIndex` one fails its index. With
    // `backoffLimitPerIndex` an index fails once a counted failure had
    // that many before it; its replacement carries the counts.
    let mut fail_job: Option<String> = None;
    let mut failed = 0;
    let mut newly_failed_indexes = Vec::new();
    for p in live.iter().filter(|p| phase(p) == "Failed") {
        let action = failure_rule(job, p).map(|(action, _, msg)| {
            if action == "FailJob" {
                fail_job.get_or_insert(msg);
            }
            action
        });
        let counted = action.as_deref() != Some("Ignore");
        if counted {
            failed += 1;
        }
        let (Some(limit), Some(i)) = (per_index, index_of(p)) else {
            continue;
        };
        if i >= completions {
            continue;
        }
        let index_failed = action.as_deref() == Some("FailIndex")
            || (counted && annotation_count(p, INDEX_FAILURE_COUNT) >= limit);
        if index_failed {
            newly_failed_indexes.push(i);
        }
        // What the next pod of this index is told: the counts of its
        // latest failure plus this one.
        let before = (
            annotation_count(p, INDEX_FAILURE_COUNT),
            annotation_count(p, INDEX_IGNORED_FAILURE_COUNT),
        );
        let after = if counted {
            (before.0 + 1, before.1)
        } else {
            (before.0, before.1 + 1)
        };
        let e = out.index_failures.entry(i).or_insert(after);
        if after.0 + after.1 > e.0 + e.1 {
            *e = after;
        }
    }
    let mut failed_indexes = Intervals::default();
    if per_index.is_some() {
        let prev = Intervals::parse(old.failed_indexes.as_deref().unwrap_or(""), completions);
        let new = Intervals::from_indexes(
            newly_failed_indexes
                .into_iter()
                .filter(|i| !done_indexes.has(*i)),
        );
        failed_indexes = prev.merge(&new);
        st.failed_indexes = Some(failed_indexes.to_string());
    }
    let terminating = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .count() as i32;
    let succeeded = succeeded.max(old.succeeded.unwrap_or(0));
    let failed = failed.max(old.failed.unwrap_or(0));
    let names = |ps: &[&Pod]| -> Vec<String> {
        ps.iter().filter_map(|p| p.metadata.name.clone()).collect()
    };
    let mut conds = old.conditions.clone().unwrap_or_default();
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    // Upstream's default: no global limit when indexes have their own.
    let backoff_limit =
        spec.backoff_limit
            .unwrap_or(if per_index.is_some() { i32::MAX } else { 6 });
    let suspended = spec.suspend.unwrap_or(false);
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    st.terminating = Some(terminating);
    let keep_active;
    let interim_success = true_condition(&conds, "SuccessCriteriaMet").map(|c| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    });
    let interim_failure = true_condition(&conds, "FailureTarget").map(|c| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    });
    if suspended && interim_success.is_none() && interim_failure.is_none() {
        out.delete = names(&active);
        keep_active = 0;
        set_condition(
            &mut conds,
            "Suspended",
            "JobSuspended",
            "Job suspended",
            now,
        );
    } else {
        if let Some(c) = conds
            .iter_mut()
            .find(|c| c.type_ == "Suspended" && c.status == "True")
        {
            c.status = "False".into();
            c.reason = Some("JobResumed".into());
            c.message = Some("Job resumed".into());
            c.last_transition_time = Some(Time(now));
            c.last_probe_time = Some(Time(now));
        }
        let start = match &st.start_time {
            Some(t) => t.0,
            None => {
                st.start_time = Some(Time(now));
                now
            }
        };
        let deadline_passed = spec.active_deadline_seconds.and_then(|d| {
            let left = start.as_second() + d - now.as_second();
            if left <= 0 {
                Some(true)
            } else {
                out.recheck_after = Some(Duration::from_secs(left as u64));
                None
            }
        });
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        // With `restartPolicy: OnFailure` a failed run restarts its
        // container in place: those restarts count against the limit
        // (upstream's pastBackoffLimitOnFailure).
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restarts: i32 = if on_failure {
            active
                .iter()
                .filter(|p| matches!(phase(p), "Running" | "Pending"))
                .flat_map(|p| {
                    let st = p.status.as_ref();
                    st.and_then(|s| s.init_container_statuses.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .chain(
                            st.and_then(|s| s.container_statuses.clone())
                                .unwrap_or_default(),
                        )
                })
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let past_on_failure = on_failure
            && if backoff_limit == 0 {
                restarts > 0
            } else {
                restarts >= backoff_limit
            };
        // Which end, if any, in upstream's order: an interim condition
        // already set wins, then the failures, then success.
        let ending: Option<(bool, String, String)> = if let Some((r, m)) = interim_success {
            Some((true, r, m))
        } else if let Some((r, m)) = interim_failure {
            Some((false, r, m))
        } else if let Some(msg) = &fail_job {
            Some((false, REASON_POD_FAILURE_POLICY.into(), msg.clone()))
        } else if failed > backoff_limit || past_on_failure {
            Some((
                false,
                REASON_BACKOFF_LIMIT.into(),
                MESSAGE_BACKOFF_LIMIT.into(),
            ))
        } else if deadline_passed.is_some() {
            Some((
                false,
                REASON_DEADLINE.into(),
                "Job was active longer than specified deadline".into(),
            ))
        } else if per_index.is_some()
            && spec
                .max_failed_indexes
                .is_some_and(|m| failed_indexes.total() > i64::from(m))
        {
            Some((
                false,
                REASON_MAX_FAILED_INDEXES.into(),
                MESSAGE_MAX_FAILED_INDEXES.into(),
            ))
        } else if per_index.is_some()
            && failed_indexes.total() > 0
            && failed_indexes.total() + done_indexes.total() >= i64::from(completions)
        {
            Some((
                false,
                REASON_FAILED_INDEXES.into(),
                MESSAGE_FAILED_INDEXES.into(),
            ))
        } else if let Some(msg) = indexed
            .then(|| success_policy_match(job, &done_indexes))
            .flatten()
        {
            Some((true, REASON_SUCCESS_POLICY.into(), msg))
        } else if complete {
            Some((
                true,
                REASON_COMPLETIONS_REACHED.into(),
                MESSAGE_COMPLETIONS_REACHED.into(),
            ))
        } else {
            None
        };
        if let Some((success, reason, message)) = ending {
            let (interim, last) = if success {
                ("SuccessCriteriaMet", "Complete")
            } else {
                ("FailureTarget", "Failed")
            };
            set_condition(&mut conds, interim, &reason, &message, now);
            // The final condition once nothing of the Job runs any more.
            if active.is_empty() && terminating == 0 {
                set_condition(&mut conds, last, &reason, &message, now);
                if success {
                    st.completion_time = Some(Time(now));
                }
            }
            out.delete = names(&active);
            keep_active = 0;
            out.recheck_after = None;
        } else if indexed {
            // One active pod per index not yet done nor failed, lowest
            // first.
            let mut seen = std::collections::BTreeSet::new();
            let mut keep: Vec<&Pod> = Vec::new();
            let mut extra: Vec<&Pod> = Vec::new();
            for p in &active {
                match index_of(p) {
                    Some(i)
                        if i < completions
                            && !done_indexes.has(i)
                            && !failed_indexes.has(i)
                            && seen.insert(i) =>
                    {
                        keep.push(p)
                    }
                    _ => extra.push(p),
                }
            }
            let room = (parallelism as usize).saturating_sub(keep.len());
            let busy = done_indexes
                .merge(&failed_indexes)
                .merge(&Intervals::from_indexes(seen.iter().copied()));
            out.indexes = busy.first_missing(room, completions);
            out.create = out.indexes.len();
            out.delete = names(&extra);
            keep_active = keep.len() + out.create;
            active = keep;
        } else {
            let want = match spec.completions {
                Some(c) => parallelism.min(c - succeeded).max(0) as usize,
                None if succeeded > 0 => active.len().min(parallelism as usize),
                None => parallelism as usize,
            };
            if active.len() > want {
                out.delete = names(&active[want..]);
                keep_active = want;
            } else {
                out.create = want - active.len();
                keep_active = want;
            }
        }
    }
    if per_index.is_some() {
        let wanted: std::collections::BTreeSet<i32> = out.indexes.iter().copied().collect();
        out.index_failures.retain(|i, _| wanted.contains(i));
        for i in &out.indexes {
            out.index_failures.entry(*i).or_insert((0, 0));
        }
    } else {
        out.index_failures.clear();
    }
    let kept = &active[..keep_active.min(active.len())];
    st.active = Some(keep_active as i32);
    st.ready = Some(kept.iter().filter(|p| is_ready(p)).count() as i32);
    st.conditions = (!conds.is_empty()).then_some(conds);
    out.status = st;
    out
}

/// A new pod for `job` (with its completion index for an `Indexed` Job:
/// annotation, label, `JOB_COMPLETION_INDEX` from the annotation in every
/// container, hostname `<job>-<index>`).
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job.spec.clone().unwrap_or_default().template;
    let mut meta = template.metadata.unwrap_or_default();
    let mut pod_spec = template.spec;
    meta.name = None;
    meta.generate_name = Some(format!("{name}-"));
    if let Some(i) = index {
        meta.generate_name = Some(format!("{name}-{i}-"));
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if let Some(ps) = pod_spec.as_mut() {
            ps.hostname = Some(format!("{name}-{i}"));
            let env = k8s_openapi::api::core::v1::EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            let containers = ps.containers.iter_mut();
            let inits = ps.init_containers.iter_mut().flatten();
            for c in containers.chain(inits) {
                let envs = c.env.get_or_insert_with(Vec::new);
                if !envs.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    envs.push(env.clone());
                }
            }
        }
    }
    meta.namespace = job.metadata.namespace.clone();
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name,
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Pod {
        metadata: meta,
        spec: pod_spec,
        status: None,
    }
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The Job's selector is malformed.
    #[error("invalid selector: {0}")]
    Selector(String),
}

struct Ctx {
    client: kube::Client,
}

fn controlled_by(p: &Pod, uid: &str) -> bool {
    p.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() || finished(&job) {
        return Ok(Action::await_change());
    }
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let sel_json = serde_json::to_value(job.spec.as_ref().and_then(|s| s.selector.as_ref()))
        .unwrap_or_default();
    let selector =
        label_selector_from_json(&sel_json).map_err(|e| Error::Selector(e.to_string()))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector.to_string()))
        .await?
        .items
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();
    let plan = plan(&job, &pods, Timestamp::now());
    let who = format!("{ns}/{name}");
    for n in 0..plan.create {
        let index = plan.indexes.get(n).copied();
        let mut pod = new_pod(&job, index);
        if let Some((counted, ignored)) = index.and_then(|i| plan.index_failures.get(&i)) {
            let annotations = pod
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert(INDEX_FAILURE_COUNT.into(), counted.to_string());
            if *ignored > 0 {
                annotations.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
            }
        }
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(p) => debug!(job = %who, pod = ?p.metadata.name, "created job pod"),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                debug!(job = %who, "pod creation forbidden: {}", s.message);
                break;
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
            Ok(_) => debug!(job = %who, %pod, "deleted job pod"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if job.status.clone().unwrap_or_default() != plan.status {
        if finished_status(&plan.status) {
            info!(job = %who, succeeded = ?plan.status.succeeded, failed = ?plan.status.failed, "job finished");
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        // An update carries the resourceVersion read: a status computed
        // from a stale Job (e.g. counts) must not overwrite a newer one.
        let mut next = Job::clone(&job);
        next.status = Some(plan.status.clone());
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
    Ok(match plan.recheck_after {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

fn finished_status(st: &JobStatus) -> bool {
    st.conditions.as_ref().is_some_and(|cs| {
        cs.iter()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

fn error_policy(job: Arc<Job>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(job = ?job.metadata.name, namespace = ?job.metadata.namespace, error = %e, "job reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Reconciles running at once (kube-controller-manager's `--concurrent-job-syncs`
/// default). Unbounded, a burst of owners floods the apiserver with writes
/// and every other client's requests queue behind them.
const WORKERS: u16 = 5;

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    info!("job controller started");
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(WORKERS))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// When a finished Job may be deleted (`ttlSecondsAfterFinished` after
/// the transition of its `Complete` or `Failed` condition), or `None`.
pub fn ttl_expiry(job: &Job) -> Option<Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished_at = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?
        .last_transition_time
        .as_ref()?
        .0;
    Timestamp::from_second(finished_at.as_second() + i64::from(ttl.max(0))).ok()
}

async fn reconcile_ttl(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(at) = ttl_expiry(&job) else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    if at > now {
        let left = (at.as_second() - now.as_second()).max(0) as u64;
        return Ok(Action::requeue(
            Duration::from_secs(left) + Duration::from_millis(200),
        ));
    }
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // Foreground, as upstream: the Job goes once its pods have.
    let dp = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: job.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            info!(job = %format!("{ns}/{name}"), "deleted finished job (ttlSecondsAfterFinished)")
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// The ttl-after-finished controller: deletes finished Jobs whose
/// `ttlSecondsAfterFinished` has passed. Runs until `stop`.
pub async fn run_ttl(client: kube::Client, stop: CancellationToken) {
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    info!("ttl-after-finished controller started");
    Controller::new(jobs, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(WORKERS))
        .run(reconcile_ttl, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> Job {
        let mut s = json!({
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
            "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u"}},
                         "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}},
        });
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(
            json!({"metadata": {"name": "j", "namespace": "default", "uid": "u"}, "spec": s}),
        )
        .unwrap()
    }

    fn pod(name: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": format!("2024-01-01T00:00:0{}Z", name.len() % 10)},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn cond<'a>(st: &'a JobStatus, ty: &str) -> Option<&'a JobCondition> {
        st.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
    }

    #[test]
    fn parallelism_and_completions() {
        let j = job(json!({"completions": 3, "parallelism": 2}));
        let now = Timestamp::now();
        let p = plan(&j, &[], now);
        assert_eq!(p.create, 2);
        assert_eq!(p.status.active, Some(2));
        assert!(p.status.start_time.is_some());
        let p = plan(&j, &[pod("a", "Succeeded"), pod("b", "Running")], now);
        assert_eq!(p.create, 1);
        assert_eq!(p.status.succeeded, Some(1));
        let p = plan(
            &j,
            &[
                pod("a", "Succeeded"),
                pod("bb", "Succeeded"),
                pod("c", "Running"),
            ],
            now,
        );
        assert_eq!(p.create, 0);
        assert_eq!(p.status.active, Some(1));
        let p = plan(
            &j,
            &[
                pod("a", "Succeeded"),
                pod("bb", "Succeeded"),
                pod("ccc", "Succeeded"),
            ],
            now,
        );
        assert_eq!(p.create, 0);
        assert_eq!(p.status.succeeded, Some(3));
        assert_eq!(p.status.active, Some(0));
        assert_eq!(cond(&p.status, "Complete").unwrap().status, "True");
        assert_eq!(
            cond(&p.status, "SuccessCriteriaMet")
                .unwrap()
                .reason
                .as_deref(),
            Some(REASON_COMPLETIONS_REACHED)
        );
        assert!(p.status.completion_time.is_some());
    }

    #[test]
    fn restarts_of_an_on_failure_pod_count_against_the_backoff_limit() {
        let mut j = job(json!({"backoffLimit": 2}));
        j.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        let now = Timestamp::now();
        let restarted = |n: i32| {
            let mut p = pod("a", "Running");
            p.status.as_mut().unwrap().container_statuses = Some(vec![
                serde_json::from_value(json!({"name": "c", "image": "i", "imageID": "",
                    "ready": false, "restartCount": n}))
                .unwrap(),
            ]);
            p
        };
        assert!(cond(&plan(&j, &[restarted(1)], now).status, "Failed").is_none());
        let p = plan(&j, &[restarted(2)], now);
        assert_eq!(
            cond(&p.status, "FailureTarget").unwrap().reason.as_deref(),
            Some(REASON_BACKOFF_LIMIT)
        );
        assert!(cond(&p.status, "Failed").is_none(), "its pod still runs");
        assert_eq!(p.delete, vec!["a".to_string()]);
    }

    #[test]
    fn backoff_limit_fails_the_job() {
        let j = job(json!({"backoffLimit": 1, "parallelism": 2, "completions": 5}));
        let now = Timestamp::now();
        let p = plan(&j, &[pod("a", "Failed"), pod("b", "Running")], now);
        assert!(cond(&p.status, "Failed").is_none());
        assert_eq!(p.create, 1);
        let p = plan(
            &j,
            &[pod("a", "Failed"), pod("bb", "Failed"), pod("c", "Running")],
            now,
        );
        let target = cond(&p.status, "FailureTarget").unwrap();
        assert_eq!(target.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
        // Failed only once the running pod is gone.
        assert!(cond(&p.status, "Failed").is_none());
        assert_eq!(p.delete, vec!["c"]);
        assert_eq!(p.create, 0);
        let mut j2 = j.clone();
        j2.status = Some(p.status.clone());
        let mut c = pod("c", "Running");
        c.metadata.deletion_timestamp = Some(Time(now));
        let still = plan(&j2, &[pod("a", "Failed"), pod("bb", "Failed"), c], now);
        assert!(cond(&still.status, "Failed").is_none());
        assert_eq!(still.status.terminating, Some(1));
        let p = plan(&j2, &[pod("a", "Failed"), pod("bb", "Failed")], now);
        let failed = cond(&p.status, "Failed").unwrap();
        assert_eq!(failed.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
        assert_eq!(failed.message.as_deref(), Some(MESSAGE_BACKOFF_LIMIT));
        assert!(p.status.completion_time.is_none());
    }

    #[test]
    fn counts_never_go_down_and_finished_jobs_rest() {
        let mut j = job(json!({"completions": 2}));
        j.status = Some(JobStatus {
            succeeded: Some(1),
            ..JobStatus::default()
        });
        let p = plan(&j, &[], Timestamp::now());
        assert_eq!(p.status.succeeded, Some(1));
        assert_eq!(p.create, 1);
        let done = [pod("x", "Succeeded"), pod("yy", "Succeeded")];
        let p = plan(&j, &done, Timestamp::now());
        assert!(cond(&p.status, "Complete").is_some());
        j.status = Some(p.status);
        let again = plan(&j, &done, Timestamp::now());
        // Once finished nothing changes (no endless status writes).
        assert_eq!(again.status, j.status.clone().unwrap());
        assert_eq!(again.create, 0);
    }

    #[test]
    fn work_queue_and_suspend() {
        let j = job(json!({"parallelism": 3}));
        let p = plan(&j, &[], Timestamp::now());
        assert_eq!(p.create, 3);
        let p = plan(
            &j,
            &[pod("a", "Succeeded"), pod("b", "Running")],
            Timestamp::now(),
        );
        assert_eq!(p.create, 0);
        assert!(cond(&p.status, "Complete").is_none());
        let p = plan(&j, &[pod("a", "Succeeded")], Timestamp::now());
        assert!(cond(&p.status, "Complete").is_some());
        let s = job(json!({"suspend": true, "parallelism": 2}));
        let p = plan(&s, &[pod("a", "Running")], Timestamp::now());
        assert_eq!(p.delete, vec!["a"]);
        assert_eq!(p.create, 0);
        assert!(p.status.start_time.is_none());
        assert_eq!(cond(&p.status, "Suspended").unwrap().status, "True");
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let j = job(json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2}));
        let now = Timestamp::now();
        let p = plan(&j, &[], now);
        assert_eq!(p.indexes, vec![0, 1]);
        let ip = |name: &str, i: i32, phase: &str| {
            let mut p = pod(name, phase);
            p.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), i.to_string())].into());
            p
        };
        let p = plan(&j, &[ip("a", 0, "Succeeded"), ip("b", 1, "Running")], now);
        assert_eq!(p.indexes, vec![2]);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        assert_eq!(p.status.active, Some(2));
        // A failed index is run again.
        let p = plan(
            &j,
            &[
                ip("a", 0, "Succeeded"),
                ip("b", 1, "Failed"),
                ip("c", 3, "Running"),
            ],
            now,
        );
        assert_eq!(p.indexes, vec![1]);
        let all = [
            ip("a", 0, "Succeeded"),
            ip("b", 1, "Succeeded"),
            ip("c", 2, "Succeeded"),
            ip("d", 3, "Succeeded"),
        ];
        let p = plan(&j, &all, now);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0-3"));
        assert_eq!(p.status.succeeded, Some(4));
        assert!(cond(&p.status, "Complete").is_some());
        let pod = new_pod(&j, Some(2));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("j-2-"));
        assert_eq!(pod.metadata.annotations.unwrap()[COMPLETION_INDEX], "2");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("j-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        assert_eq!(Intervals::parse("1,3-5", 10).to_string(), "1,3-5");
        assert_eq!(
            Intervals::from_indexes([7, 1, 3, 4, 5]).to_string(),
            "1,3-5,7"
        );
    }

    #[test]
    fn pod_failure_policy() {
        let j = job(json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]}}));
        let now = Timestamp::now();
        let exited = |name: &str, code: i32| {
            let mut p = pod(name, "Failed");
            p.metadata.namespace = Some("default".into());
            p.status.as_mut().unwrap().container_statuses = Some(vec![
                serde_json::from_value(
                    json!({"name": "c", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": code}}}),
                )
                .unwrap(),
            ]);
            p
        };
        let p = plan(&j, &[exited("a", 1)], now);
        assert!(cond(&p.status, "Failed").is_none());
        assert_eq!(p.status.failed, Some(1));
        let p = plan(&j, &[exited("a", 42)], now);
        let failed = cond(&p.status, "Failed").unwrap();
        assert_eq!(failed.reason.as_deref(), Some(REASON_POD_FAILURE_POLICY));
        assert_eq!(
            failed.message.as_deref(),
            Some(
                "Container c for pod default/a failed with exit code 42 matching FailJob rule at index 0"
            )
        );
        let mut disrupted = exited("b", 137);
        disrupted.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({"type": "DisruptionTarget", "status": "True"})).unwrap(),
        ]);
        let p = plan(&j, &[disrupted], now);
        assert_eq!(p.status.failed, Some(0));
        assert_eq!(p.create, 1);
    }

    #[test]
    fn ttl_counts_from_the_final_condition() {
        let mut j = job(json!({"ttlSecondsAfterFinished": 30}));
        assert!(ttl_expiry(&j).is_none(), "not finished");
        let done = Timestamp::from_second(1_700_000_000).unwrap();
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                last_transition_time: Some(Time(done)),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        assert_eq!(ttl_expiry(&j).map(|t| t.as_second()), Some(1_700_000_030));
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert!(ttl_expiry(&j).is_none(), "no ttl, kept");
    }

    #[test]
    fn intervals_parse_format_and_count() {
        let i = Intervals::parse("1,3-5,7-9", 20);
        assert_eq!(i.to_string(), "1,3-5,7-9");
        assert_eq!(i.total(), 7);
        assert!(i.has(4) && i.has(9) && !i.has(2) && !i.has(6) && !i.has(10));
        // Upstream writes a pair as two indexes, three or more as a range.
        assert_eq!(Intervals::from_indexes([0, 1]).to_string(), "0,1");
        assert_eq!(Intervals::from_indexes([0, 1, 2]).to_string(), "0-2");
        assert_eq!(Intervals::from_indexes([]).to_string(), "");
        // Lenient: adjacent parts join, junk is skipped, indexes at or past
        // completions are cut off.
        assert_eq!(Intervals::parse("0,1,2", 5).to_string(), "0-2");
        assert_eq!(Intervals::parse("x,2,4-9", 6).to_string(), "2,4,5");
        assert_eq!(Intervals::parse("1,7", 5).to_string(), "1");
        let big = Intervals::parse("0-99999", 100_000);
        assert_eq!(big.total(), 100_000);
        assert_eq!(
            Intervals::parse("1-3", 10)
                .merge(&Intervals::parse("4,8", 10))
                .to_string(),
            "1-4,8"
        );
        assert_eq!(
            Intervals::parse("1-5,8-9", 10).overlap(&Intervals::parse("0-2,4,9", 10)),
            4
        );
        assert_eq!(
            Intervals::parse("1-2,5", 10).first_missing(4, 7),
            vec![0, 3, 4, 6]
        );
        assert_eq!(
            Intervals::parse("0-4", 5).first_missing(4, 5),
            Vec::<i32>::new()
        );
    }

    fn ip(name: &str, i: i32, phase: &str) -> Pod {
        let mut p = pod(name, phase);
        p.metadata.namespace = Some("default".into());
        p.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), i.to_string())].into());
        p
    }

    #[test]
    fn success_policy_rules_match_as_upstream() {
        let j = |rules: serde_json::Value| {
            job(json!({"completionMode": "Indexed", "completions": 10,
                       "successPolicy": {"rules": rules}}))
        };
        let done = Intervals::parse("0-2,5", 10);
        // succeededIndexes alone: every listed index.
        assert_eq!(
            success_policy_match(&j(json!([{"succeededIndexes": "0,1"}])), &done).as_deref(),
            Some("Matched rules at index 0")
        );
        assert!(success_policy_match(&j(json!([{"succeededIndexes": "0-3"}])), &done).is_none());
        // succeededCount alone: that many indexes.
        assert!(success_policy_match(&j(json!([{"succeededCount": 5}])), &done).is_none());
        assert_eq!(
            success_policy_match(
                &j(json!([{"succeededCount": 5}, {"succeededCount": 4}])),
                &done
            )
            .as_deref(),
            Some("Matched rules at index 1")
        );
        // Both: that many among the listed ones.
        assert!(
            success_policy_match(
                &j(json!([{"succeededIndexes": "2-6", "succeededCount": 3}])),
                &done
            )
            .is_none()
        );
        assert!(
            success_policy_match(
                &j(json!([{"succeededIndexes": "2-6", "succeededCount": 2}])),
                &done
            )
            .is_some()
        );
        assert!(
            success_policy_match(&j(json!([{"succeededCount": 0}])), &Intervals::default())
                .is_none()
        );
    }

    #[test]
    fn success_policy_ends_the_job_early() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 4,
            "successPolicy": {"rules": [{"succeededIndexes": "0", "succeededCount": 1}]}}),
        );
        let now = Timestamp::now();
        let pods = [
            ip("a", 0, "Succeeded"),
            ip("b", 1, "Running"),
            ip("c", 2, "Running"),
            ip("d", 3, "Pending"),
        ];
        let p = plan(&j, &pods, now);
        let met = cond(&p.status, "SuccessCriteriaMet").unwrap();
        assert_eq!(met.reason.as_deref(), Some(REASON_SUCCESS_POLICY));
        assert_eq!(met.message.as_deref(), Some("Matched rules at index 0"));
        assert!(cond(&p.status, "Complete").is_none());
        assert_eq!(p.delete, vec!["b", "c", "d"]);
        assert_eq!((p.create, p.status.active), (0, Some(0)));
        // Its pods gone (killed ones fail): Complete with the same reason.
        let mut j2 = j.clone();
        j2.status = Some(p.status);
        let p = plan(&j2, &[ip("a", 0, "Succeeded")], now);
        let done = cond(&p.status, "Complete").unwrap();
        assert_eq!(done.reason.as_deref(), Some(REASON_SUCCESS_POLICY));
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0"));
        assert!(p.status.completion_time.is_some());
    }

    #[test]
    fn backoff_limit_per_index_and_fail_index() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 4,
            "backoffLimitPerIndex": 1,
            "podFailurePolicy": {"rules": [
                {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]}}),
        );
        let now = Timestamp::now();
        let fails = |name: &str, i: i32, before: i32, code: i32| {
            let mut p = ip(name, i, "Failed");
            p.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(INDEX_FAILURE_COUNT.into(), before.to_string());
            p.status.as_mut().unwrap().container_statuses = Some(vec![
                serde_json::from_value(
                    json!({"name": "c", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": code}}}),
                )
                .unwrap(),
            ]);
            p
        };
        // First failure of index 1: retried, its pod told one failure.
        let p = plan(
            &j,
            &[
                ip("a", 0, "Running"),
                fails("b", 1, 0, 1),
                ip("c", 2, "Running"),
                ip("d", 3, "Running"),
            ],
            now,
        );
        assert_eq!(p.indexes, vec![1]);
        assert_eq!(p.index_failures.get(&1), Some(&(1, 0)));
        assert_eq!(p.status.failed_indexes.as_deref(), Some(""));
        // Second failure: the index failed, not retried; index 3 fails at
        // once by the FailIndex rule. The Job runs on with index 0 and 2.
        let p = plan(
            &j,
            &[
                ip("a", 0, "Running"),
                fails("b", 1, 0, 1),
                fails("b2", 1, 1, 1),
                ip("c", 2, "Running"),
                fails("d", 3, 0, 3),
            ],
            now,
        );
        assert!(p.indexes.is_empty(), "{:?}", p.indexes);
        assert_eq!(p.status.failed_indexes.as_deref(), Some("1,3"));
        assert_eq!(p.status.failed, Some(3));
        assert!(cond(&p.status, "FailureTarget").is_none());
        // Every index done or failed: FailedIndexes.
        let mut j2 = j.clone();
        j2.status = Some(p.status);
        let p = plan(
            &j2,
            &[ip("a", 0, "Succeeded"), ip("c", 2, "Succeeded")],
            now,
        );
        assert_eq!(p.status.failed_indexes.as_deref(), Some("1,3"));
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0,2"));
        let failed = cond(&p.status, "Failed").unwrap();
        assert_eq!(failed.reason.as_deref(), Some(REASON_FAILED_INDEXES));
        assert_eq!(failed.message.as_deref(), Some(MESSAGE_FAILED_INDEXES));
        assert_eq!(
            cond(&p.status, "FailureTarget").unwrap().reason.as_deref(),
            Some(REASON_FAILED_INDEXES)
        );
        // maxFailedIndexes: a second failed index is one too many.
        let mut m = job(
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 4,
            "backoffLimitPerIndex": 0, "maxFailedIndexes": 1}),
        );
        m.status = Some(JobStatus {
            failed_indexes: Some("1".into()),
            ..JobStatus::default()
        });
        let p = plan(
            &m,
            &[
                ip("a", 0, "Running"),
                fails("c", 2, 0, 1),
                ip("d", 3, "Running"),
            ],
            now,
        );
        assert_eq!(p.status.failed_indexes.as_deref(), Some("1,2"));
        let target = cond(&p.status, "FailureTarget").unwrap();
        assert_eq!(target.reason.as_deref(), Some(REASON_MAX_FAILED_INDEXES));
        assert_eq!(target.message.as_deref(), Some(MESSAGE_MAX_FAILED_INDEXES));
        assert_eq!(p.delete, vec!["a", "d"]);
        // No global backoffLimit by default with per-index limits.
        let many = job(
            json!({"completionMode": "Indexed", "completions": 20, "parallelism": 20,
            "backoffLimitPerIndex": 1}),
        );
        let pods: Vec<Pod> = (0..10).map(|i| fails(&format!("p{i}"), i, 0, 1)).collect();
        let p = plan(&many, &pods, now);
        assert!(cond(&p.status, "FailureTarget").is_none());
        assert_eq!(p.create, 20);
    }

    #[test]
    fn pods_are_owned() {
        let j = job(json!({}));
        let p = new_pod(&j, None);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("j-"));
        let r = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (r.kind.as_str(), r.controller, r.block_owner_deletion),
            ("Job", Some(true), Some(true))
        );
    }
}
