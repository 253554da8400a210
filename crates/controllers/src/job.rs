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
//! * `failed > backoffLimit` (default 6) → conditions `FailureTarget` and
//!   `Failed` (reason `BackoffLimitExceeded`) and the active pods are
//!   deleted; likewise `activeDeadlineSeconds` past `startTime` (reason
//!   `DeadlineExceeded`);
//! * `succeeded >= completions` (or, without `completions`, one success
//!   and no active pod) → conditions `SuccessCriteriaMet` and `Complete`
//!   (reason `CompletionsReached`), `completionTime`, leftover active pods
//!   deleted;
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
//! `podFailurePolicy` ([`failure_rule`]): the first rule whose
//! `onExitCodes` (non-zero exit codes of the named or any container) or
//! `onPodConditions` matches a failed pod decides: `Ignore` leaves the
//! failure out of `failed` (a replacement is made), `FailJob` fails the
//! Job at once (reason `PodFailurePolicy`, upstream's message), `Count`
//! counts it as usual.
//!
//! `ttlSecondsAfterFinished` is [`run_ttl`] (upstream's
//! ttl-after-finished controller, under its own account): a finished Job
//! is deleted (foreground) that many seconds after its `Complete` or
//! `Failed` condition.
//!
//! Not done: success policies, `backoffLimitPerIndex` and `FailIndex`,
//! backoff delays between re-creations, `podReplacementPolicy`.

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

/// Parses `status.completedIndexes` (`1,3-5`).
pub fn parse_indexes(s: &str) -> std::collections::BTreeSet<i32> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as upstream's `completedIndexes` (runs of consecutive
/// values as `a-b`).
pub fn format_indexes(set: &std::collections::BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        if end == start {
            parts.push(start.to_string());
        } else {
            parts.push(format!("{start}-{end}"));
        }
    }
    parts.join(",")
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

/// Computes the plan for `job` given the pods it controls.
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
    let mut done_indexes = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
    if indexed {
        let completions = spec.completions.unwrap_or(0);
        done_indexes.extend(
            live.iter()
                .filter(|p| phase(p) == "Succeeded")
                .filter_map(|p| index_of(p))
                .filter(|i| *i < completions),
        );
        st.completed_indexes = Some(format_indexes(&done_indexes));
    }
    let succeeded = if indexed {
        done_indexes.len() as i32
    } else {
        live.iter().filter(|p| phase(p) == "Succeeded").count() as i32
    };
    // podFailurePolicy: `Ignore` failures do not count, a `FailJob` one
    // fails the Job.
    let mut fail_job: Option<String> = None;
    let failed = live
        .iter()
        .filter(|p| phase(p) == "Failed")
        .filter(|p| match failure_rule(job, p) {
            Some((action, _, msg)) => match action.as_str() {
                "Ignore" => false,
                "FailJob" => {
                    fail_job.get_or_insert(msg);
                    true
                }
                _ => true,
            },
            None => true,
        })
        .count() as i32;
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
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend.unwrap_or(false);
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    st.terminating = Some(terminating);
    let keep_active;
    if suspended {
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
        if fail_job.is_some()
            || failed > backoff_limit
            || past_on_failure
            || deadline_passed.is_some()
        {
            let (reason, message) = if let Some(msg) = &fail_job {
                (REASON_POD_FAILURE_POLICY, msg.as_str())
            } else if failed > backoff_limit || past_on_failure {
                (REASON_BACKOFF_LIMIT, MESSAGE_BACKOFF_LIMIT)
            } else {
                (
                    REASON_DEADLINE,
                    "Job was active longer than specified deadline",
                )
            };
            set_condition(&mut conds, "FailureTarget", reason, message, now);
            set_condition(&mut conds, "Failed", reason, message, now);
            out.delete = names(&active);
            keep_active = 0;
            out.recheck_after = None;
        } else if complete {
            set_condition(
                &mut conds,
                "SuccessCriteriaMet",
                REASON_COMPLETIONS_REACHED,
                MESSAGE_COMPLETIONS_REACHED,
                now,
            );
            set_condition(
                &mut conds,
                "Complete",
                REASON_COMPLETIONS_REACHED,
                MESSAGE_COMPLETIONS_REACHED,
                now,
            );
            st.completion_time = Some(Time(now));
            out.delete = names(&active);
            keep_active = 0;
            out.recheck_after = None;
        } else if indexed {
            // One active pod per index not yet done, lowest first.
            let completions = spec.completions.unwrap_or(0);
            let mut seen = std::collections::BTreeSet::new();
            let mut keep: Vec<&Pod> = Vec::new();
            let mut extra: Vec<&Pod> = Vec::new();
            for p in &active {
                match index_of(p) {
                    Some(i) if i < completions && !done_indexes.contains(&i) && seen.insert(i) => {
                        keep.push(p)
                    }
                    _ => extra.push(p),
                }
            }
            let room = (parallelism as usize).saturating_sub(keep.len());
            out.indexes = (0..completions)
                .filter(|i| !done_indexes.contains(i) && !seen.contains(i))
                .take(room)
                .collect();
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
        match pods_api
            .create(
                &PostParams::default(),
                &new_pod(&job, plan.indexes.get(n).copied()),
            )
            .await
        {
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
            cond(&p.status, "Failed").unwrap().reason.as_deref(),
            Some(REASON_BACKOFF_LIMIT)
        );
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
        let failed = cond(&p.status, "Failed").unwrap();
        assert_eq!(failed.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
        assert!(cond(&p.status, "FailureTarget").is_some());
        assert_eq!(p.delete, vec!["c"]);
        assert_eq!(p.create, 0);
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
        assert_eq!(parse_indexes("1,3-5"), [1, 3, 4, 5].into());
        assert_eq!(format_indexes(&[1, 3, 4, 5, 7].into()), "1,3-5,7");
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
