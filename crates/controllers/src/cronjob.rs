//! CronJobs: Jobs created on a cron schedule, as kube-controller-manager's
//! cronjob controller (v2).
//!
//! A `kube` Controller over CronJobs, triggered by the Jobs they own and
//! by itself at the next scheduled time. Each reconcile lists the Jobs of
//! the namespace that the CronJob controls and:
//!
//! * brings `status.active` up to date (finished or vanished Jobs leave
//!   it, running owned Jobs join it; a Job that completed sets
//!   `lastSuccessfulTime`);
//! * deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit`
//!   (default 3) and `failedJobsHistoryLimit` (default 1);
//! * unless `suspend`, finds the most recent scheduled time not after now
//!   ([`most_recent`]: from `lastScheduleTime`, or the creation time,
//!   bounded by `startingDeadlineSeconds`; the schedule is evaluated in
//!   `timeZone`, UTC without one) that has no Job yet and starts one:
//!   `<cronjob>-<scheduled minutes since the epoch>` with the annotation
//!   `batch.kubernetes.io/cronjob-scheduled-timestamp`, a controller
//!   ownerReference, the template's labels and annotations; a time older
//!   than `startingDeadlineSeconds` is skipped (`MissSchedule` event);
//!   `concurrencyPolicy: Forbid` skips while a Job is active
//!   (`JobAlreadyActive`), `Replace` deletes the active ones first;
//! * requeues itself for the next scheduled time.
//!
//! An unparseable schedule or unknown time zone (stored before the
//! apiserver validated them) is reported as a Warning Event
//! (`UnparseableSchedule`, `UnknownTimeZone`) and the CronJob rests.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replicaset::record_event;

/// Annotation with the scheduled time a Job was created for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
const COMPONENT: &str = "cronjob-controller";

/// A schedule bound to its time zone.
pub struct Zoned {
    schedule: rke2_apimachinery::cron::Schedule,
    tz: chrono_tz::Tz,
}

/// Why a CronJob cannot be scheduled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule does not parse (Event `UnparseableSchedule`).
    #[error("unparseable schedule: {schedule:?} : {reason}")]
    Unparseable {
        /// The schedule.
        schedule: String,
        /// The parser's message.
        reason: String,
    },
    /// The time zone is unknown (Event `UnknownTimeZone`).
    #[error("invalid timeZone: {0:?}")]
    UnknownTimeZone(String),
}

impl Zoned {
    /// The schedule of a CronJob's spec.
    pub fn of(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match time_zone {
            Some(z) => z
                .parse::<chrono_tz::Tz>()
                .map_err(|_| ScheduleError::UnknownTimeZone(z.to_string()))?,
            None => chrono_tz::UTC,
        };
        let schedule =
            rke2_apimachinery::cron::parse(schedule).map_err(|e| ScheduleError::Unparseable {
                schedule: schedule.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self { schedule, tz })
    }

    /// The first scheduled instant strictly after `t`.
    pub fn next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(d) = self.schedule.every() {
            // robfig/cron's constant delay: the whole second of `t` plus
            // the delay.
            return Some(t.with_nanosecond(0)? + chrono::Duration::from_std(d).ok()?);
        }
        let mut civil: NaiveDateTime = t.with_timezone(&self.tz).naive_local();
        // A civil minute that does not exist (skipped by a DST change) is
        // passed over, as robfig/cron does.
        for _ in 0..4 {
            let n = self.schedule.next(civil)?;
            if let Some(at) = self.tz.from_local_datetime(&n).earliest() {
                let at = at.with_timezone(&Utc);
                if at > t {
                    return Some(at);
                }
            }
            civil = n;
        }
        None
    }

    /// The scheduled instant as the annotation shows it (RFC 3339 in the
    /// CronJob's zone).
    pub fn format(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// The latest scheduled time in `(earliest, now]` and how many were
/// passed over, or `None` when none is due.
pub fn most_recent(
    z: &Zoned,
    earliest: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, usize)> {
    // Bounded: a minute schedule over a year is ~525k steps; further back
    // than that only the recent past matters.
    let start = earliest.max(now - chrono::Duration::days(366));
    let mut t = z.next(start)?;
    if t > now {
        return None;
    }
    if let Some(d) = z.schedule.every() {
        // Counted rather than stepped: `@every 1s` over a year.
        let d = chrono::Duration::from_std(d).ok()?;
        let missed = (now - t).num_seconds() / d.num_seconds().max(1);
        return Some((t + d * i32::try_from(missed).ok()?, missed as usize));
    }
    let mut missed = 0usize;
    loop {
        match z.next(t) {
            Some(n) if n <= now => {
                t = n;
                missed += 1;
            }
            _ => return Some((t, missed)),
        }
    }
}

/// `<cronjob>-<minutes since the epoch>`: one name per scheduled time, so
/// two controllers (or two passes) never start the same run twice.
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp() / 60)
}

fn to_chrono(t: &Time) -> DateTime<Utc> {
    Utc.timestamp_opt(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .single()
        .unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Whether a Job finished, and whether it succeeded.
pub fn finished(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for c in conds {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" => return Some(true),
                "Failed" => return Some(false),
                _ => {}
            }
        }
    }
    None
}

/// The Job of one scheduled run.
pub fn new_job(cj: &CronJob, z: &Zoned, scheduled: DateTime<Utc>) -> Job {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), z.format(scheduled));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn cronjob_ref(cj: &CronJob) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("CronJob".into()),
        name: cj.metadata.name.clone(),
        namespace: cj.metadata.namespace.clone(),
        uid: cj.metadata.uid.clone(),
        ..ObjectReference::default()
    }
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

fn owned_by(job: &Job, uid: &str) -> bool {
    job.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<bool, kube::Error> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Finished Jobs beyond the history limits, oldest first.
pub fn beyond_history(cj: &CronJob, jobs: &[Job]) -> Vec<String> {
    let spec = cj.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (success, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .filter(|j| finished(j) == Some(success) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .or(j.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0)
                    .unwrap_or(Timestamp::UNIX_EPOCH),
                j.metadata.name.clone(),
            )
        });
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        out.extend(done[..extra].iter().filter_map(|j| j.metadata.name.clone()));
    }
    out
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let who = format!("{ns}/{name}");
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| owned_by(j, &uid))
        .collect();
    let spec = cj.spec.clone().unwrap_or_default();
    let old = cj.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let now = Utc::now();

    // status.active: what is still running.
    let mut active: Vec<ObjectReference> = Vec::new();
    for job in &jobs {
        match finished(job) {
            None if job.metadata.deletion_timestamp.is_none() => active.push(reference(job)),
            Some(true) => {
                let done = job
                    .status
                    .as_ref()
                    .and_then(|s| s.completion_time.as_ref())
                    .map(to_chrono);
                if let Some(done) = done
                    && st
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|t| to_chrono(t) < done)
                {
                    st.last_successful_time = Some(to_time(done));
                }
                let was_active = old
                    .active
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.uid == job.metadata.uid);
                if was_active {
                    record_event(
                        &ctx.client,
                        COMPONENT,
                        &cronjob_ref(&cj),
                        "Normal",
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: Complete",
                            job.metadata.name.as_deref().unwrap_or_default()
                        ),
                    )
                    .await;
                }
            }
            _ => {}
        }
    }
    active.sort_by(|a, b| a.name.cmp(&b.name));

    for job in beyond_history(&cj, &jobs) {
        if delete_job(&jobs_api, &job).await? {
            record_event(
                &ctx.client,
                COMPONENT,
                &cronjob_ref(&cj),
                "Normal",
                "SuccessfulDelete",
                format!("Deleted job {job}"),
            )
            .await;
        }
    }

    let mut requeue = None;
    if cj.metadata.deletion_timestamp.is_none() && !spec.suspend.unwrap_or(false) {
        match Zoned::of(&spec.schedule, spec.time_zone.as_deref()) {
            Err(e) => {
                let reason = match e {
                    ScheduleError::Unparseable { .. } => "UnparseableSchedule",
                    ScheduleError::UnknownTimeZone(_) => "UnknownTimeZone",
                };
                record_event(
                    &ctx.client,
                    COMPONENT,
                    &cronjob_ref(&cj),
                    "Warning",
                    reason,
                    e.to_string(),
                )
                .await;
            }
            Ok(z) => {
                let created = cj
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(to_chrono)
                    .unwrap_or(now);
                let mut earliest = st
                    .last_schedule_time
                    .as_ref()
                    .map(to_chrono)
                    .unwrap_or(created);
                if let Some(d) = spec.starting_deadline_seconds {
                    let bound = now - chrono::Duration::seconds(d);
                    if bound > earliest {
                        earliest = bound;
                    }
                }
                // Wake 100ms after the next time, so its minute has begun.
                requeue = z
                    .next(now)
                    .map(|n| (n - now).to_std().unwrap_or_default() + Duration::from_millis(100));
                if let Some((scheduled, missed)) = most_recent(&z, earliest, now) {
                    if missed > 100 {
                        record_event(
                            &ctx.client,
                            COMPONENT,
                            &cronjob_ref(&cj),
                            "Warning",
                            "TooManyMissedTimes",
                            format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
                        )
                        .await;
                    }
                    let job_name = job_name(&name, scheduled);
                    let already = st
                        .last_schedule_time
                        .as_ref()
                        .is_some_and(|t| to_chrono(t) >= scheduled)
                        || jobs
                            .iter()
                            .any(|j| j.metadata.name.as_deref() == Some(&job_name));
                    let too_late = spec
                        .starting_deadline_seconds
                        .is_some_and(|d| scheduled + chrono::Duration::seconds(d) < now);
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    if already {
                    } else if too_late {
                        record_event(
                            &ctx.client,
                            COMPONENT,
                            &cronjob_ref(&cj),
                            "Warning",
                            "MissSchedule",
                            format!(
                                "Missed scheduled time to start a job: {}",
                                scheduled.to_rfc2822()
                            ),
                        )
                        .await;
                    } else if policy == "Forbid" && !active.is_empty() {
                        debug!(cronjob = %who, "not starting job: a prior one is still running (Forbid)");
                        record_event(
                            &ctx.client,
                            COMPONENT,
                            &cronjob_ref(&cj),
                            "Normal",
                            "JobAlreadyActive",
                            "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                        )
                        .await;
                    } else {
                        if policy == "Replace" {
                            for r in std::mem::take(&mut active) {
                                let n = r.name.unwrap_or_default();
                                if delete_job(&jobs_api, &n).await? {
                                    record_event(
                                        &ctx.client,
                                        COMPONENT,
                                        &cronjob_ref(&cj),
                                        "Normal",
                                        "SuccessfulDelete",
                                        format!("Deleted job {n}"),
                                    )
                                    .await;
                                }
                            }
                        }
                        match jobs_api
                            .create(&PostParams::default(), &new_job(&cj, &z, scheduled))
                            .await
                        {
                            Ok(job) => {
                                info!(cronjob = %who, job = %job_name, "created scheduled job");
                                record_event(
                                    &ctx.client,
                                    COMPONENT,
                                    &cronjob_ref(&cj),
                                    "Normal",
                                    "SuccessfulCreate",
                                    format!("Created job {job_name}"),
                                )
                                .await;
                                active.push(reference(&job));
                            }
                            // Created by an earlier pass whose status write
                            // was lost: it is the run of this time.
                            Err(kube::Error::Api(s)) if s.code == 409 => {}
                            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
                                record_event(
                                    &ctx.client,
                                    COMPONENT,
                                    &cronjob_ref(&cj),
                                    "Warning",
                                    "FailedCreate",
                                    format!("Error creating job: {}", s.message),
                                )
                                .await;
                                return Ok(Action::requeue(Duration::from_secs(10)));
                            }
                            Err(e) => return Err(e.into()),
                        }
                        st.last_schedule_time = Some(to_time(scheduled));
                    }
                }
            }
        }
    }
    st.active = (!active.is_empty()).then_some(active);
    if st != old {
        let mut next = CronJob::clone(&cj);
        next.status = Some(st);
        match cj_api
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
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

fn error_policy(cj: Arc<CronJob>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(cronjob = ?cj.metadata.name, namespace = ?cj.metadata.namespace, error = %e, "cronjob reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let cronjobs: Api<CronJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    info!("cronjob controller started");
    Controller::new(cronjobs, watcher::Config::default())
        .owns(jobs, watcher::Config::default())
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

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn most_recent_and_names() {
        let z = Zoned::of("*/1 * * * *", None).unwrap();
        let (t, missed) =
            most_recent(&z, utc("2024-01-01T10:00:30Z"), utc("2024-01-01T10:03:10Z")).unwrap();
        assert_eq!(t, utc("2024-01-01T10:03:00Z"));
        assert_eq!(missed, 2);
        assert!(
            most_recent(&z, utc("2024-01-01T10:03:00Z"), utc("2024-01-01T10:03:59Z")).is_none()
        );
        assert_eq!(job_name("c", t), format!("c-{}", t.timestamp() / 60));
    }

    #[test]
    fn every_is_a_constant_delay_counted_not_stepped() {
        let z = Zoned::of("@every 90s", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            z.next(utc("2024-01-01T10:00:00.700Z")),
            Some(utc("2024-01-01T10:01:30Z"))
        );
        let (t, missed) =
            most_recent(&z, utc("2024-01-01T10:00:00Z"), utc("2024-01-01T10:05:00Z")).unwrap();
        // 10:01:30, 10:03:00, 10:04:30: the last, two passed over.
        assert_eq!((t, missed), (utc("2024-01-01T10:04:30Z"), 2));
        assert!(
            most_recent(&z, utc("2024-01-01T10:04:30Z"), utc("2024-01-01T10:05:59Z")).is_none()
        );
        // A second's schedule over a year is counted at once.
        let z = Zoned::of("@every 1s", None).unwrap();
        let (_, missed) =
            most_recent(&z, utc("2023-01-01T00:00:00Z"), utc("2024-01-01T00:00:00Z")).unwrap();
        // 2023 has 365 days: fires at 00:00:01 .. 2024-01-01T00:00:00.
        assert_eq!(missed, 365 * 86400 - 1);
    }

    #[test]
    fn time_zones() {
        // 02:30 in Berlin (winter, UTC+1) is 01:30 UTC.
        let z = Zoned::of("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            z.next(utc("2024-01-01T00:00:00Z")),
            Some(utc("2024-01-01T01:30:00Z"))
        );
        assert_eq!(
            z.format(utc("2024-01-01T01:30:00Z")),
            "2024-01-01T02:30:00+01:00"
        );
        // 2024-03-31 02:30 does not exist in Berlin: the next day's runs.
        assert_eq!(
            z.next(utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-04-01T00:30:00Z"))
        );
        assert!(matches!(
            Zoned::of("* * * * *", Some("Mars/Olympus")),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
        assert!(matches!(
            Zoned::of("bad", None),
            Err(ScheduleError::Unparseable { .. })
        ));
    }

    #[test]
    fn history_limits() {
        let cj: CronJob = serde_json::from_value(json!({"metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0,
                     "jobTemplate": {"spec": {"template": {}}}}})).unwrap();
        let job = |n: &str, start: &str, cond: Option<&str>| -> Job {
            let conds = cond
                .map(|c| json!([{"type": c, "status": "True"}]))
                .unwrap_or(json!([]));
            serde_json::from_value(json!({"metadata": {"name": n},
                "status": {"startTime": start, "conditions": conds}}))
            .unwrap()
        };
        let jobs = vec![
            job("a", "2024-01-01T00:01:00Z", Some("Complete")),
            job("b", "2024-01-01T00:02:00Z", Some("Complete")),
            job("c", "2024-01-01T00:03:00Z", Some("Failed")),
            job("d", "2024-01-01T00:04:00Z", None),
        ];
        assert_eq!(beyond_history(&cj, &jobs), vec!["a", "c"]);
    }

    #[test]
    fn job_from_template() {
        let cj: CronJob = serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "n", "uid": "u"},
            "spec": {"schedule": "* * * * *",
                     "jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"template": {}}}}})).unwrap();
        let z = Zoned::of("* * * * *", None).unwrap();
        let t = utc("2024-01-01T00:05:00Z");
        let j = new_job(&cj, &z, t);
        assert_eq!(
            j.metadata.name.as_deref(),
            Some(format!("c-{}", t.timestamp() / 60).as_str())
        );
        assert_eq!(
            j.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP],
            "2024-01-01T00:05:00Z"
        );
        assert_eq!(j.metadata.labels.unwrap()["a"], "b");
        let r = &j.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str(), r.controller),
            ("CronJob", "u", Some(true))
        );
    }
}
