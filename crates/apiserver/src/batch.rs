//! CronJobs (`batch/v1`): upstream's defaults and validation (the
//! schedule through `rke2_apimachinery::cron`, whose error texts are the
//! ones kube-apiserver answers; `timeZone` against the IANA database of
//! chrono-tz) and the Table columns kubectl prints.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::objects::quoted;
use crate::registry::ResourceType;
use crate::strategy::{Cause, Strategy};

/// CronJob names leave room for the 11 characters of the Job suffix
/// (`-<minutes>`) within a DNS label.
const MAX_NAME: usize = 52;

/// CronJobs: defaults and validation.
#[derive(Debug)]
pub struct CronJob;

fn default_val(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).map(|x| x.is_null()).unwrap_or(true) {
        m.insert(k.into(), v);
    }
}

impl Strategy for CronJob {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(m) = obj["spec"].as_object_mut() {
            default_val(m, "concurrencyPolicy", json!("Allow"));
            default_val(m, "suspend", json!(false));
            default_val(m, "successfulJobsHistoryLimit", json!(3));
            default_val(m, "failedJobsHistoryLimit", json!(1));
        }
        crate::strategy::default_pod_spec(
            &mut obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        );
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate(obj, causes);
    }
}

fn invalid(field: &str, value: String, detail: impl Into<String>) -> Cause {
    (
        field.into(),
        "Invalid value".into(),
        format!("{value}: {}", detail.into()),
    )
}

/// Upstream's `ValidateCronJob` (create and update share it here).
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.len() > MAX_NAME {
        causes.push(invalid(
            "metadata.name",
            quoted(name),
            format!("must be no more than {MAX_NAME} characters"),
        ));
    }
    let spec = &obj["spec"];
    let tz = spec["timeZone"].as_str();
    match spec["schedule"].as_str().unwrap_or("") {
        "" => causes.push(("spec.schedule".into(), "Required value".into(), "".into())),
        schedule => {
            if let Err(e) = rke2_apimachinery::cron::parse(schedule) {
                causes.push(invalid("spec.schedule", quoted(schedule), e.to_string()));
            }
            if schedule.contains("TZ") {
                let detail = if tz.is_some() {
                    "cannot use both timeZone field and TZ or CRON_TZ in schedule"
                } else {
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                };
                causes.push(invalid("spec.schedule", quoted(schedule), detail));
            }
        }
    }
    if let Some(tz) = tz {
        validate_time_zone(tz, causes);
    }
    if let Some(d) = spec["startingDeadlineSeconds"].as_i64()
        && d < 0
    {
        causes.push(invalid(
            "spec.startingDeadlineSeconds",
            d.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    match spec["concurrencyPolicy"].as_str().unwrap_or("") {
        "Allow" | "Forbid" | "Replace" => {}
        "" => causes.push((
            "spec.concurrencyPolicy".into(),
            "Required value".into(),
            "".into(),
        )),
        other => causes.push((
            "spec.concurrencyPolicy".into(),
            "Unsupported value".into(),
            format!(
                "{}: supported values: \"Allow\", \"Forbid\", \"Replace\"",
                quoted(other)
            ),
        )),
    }
    for key in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        if let Some(n) = spec[key].as_i64()
            && n < 0
        {
            causes.push(invalid(
                &format!("spec.{key}"),
                n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
    if pod["containers"]
        .as_array()
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        causes.push((
            "spec.jobTemplate.spec.template.spec.containers".into(),
            "Required value".into(),
            "".into(),
        ));
    }
    match pod["restartPolicy"].as_str().unwrap_or("") {
        "OnFailure" | "Never" => {}
        other => causes.push((
            "spec.jobTemplate.spec.template.spec.restartPolicy".into(),
            "Unsupported value".into(),
            format!(
                "{}: supported values: \"OnFailure\", \"Never\"",
                quoted(other)
            ),
        )),
    }
}

/// Upstream's `validateTimeZone`: an IANA name Go's `time.LoadLocation`
/// finds, not `Local`.
fn validate_time_zone(tz: &str, causes: &mut Vec<Cause>) {
    let field = "spec.timeZone";
    if tz.is_empty() {
        causes.push(invalid(
            field,
            quoted(tz),
            "unknown time zone, must be a valid IANA time zone",
        ));
        return;
    }
    if tz.eq_ignore_ascii_case("local") {
        causes.push(invalid(
            field,
            quoted(tz),
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
        return;
    }
    if tz.parse::<chrono_tz::Tz>().is_err() {
        causes.push(invalid(
            field,
            quoted(tz),
            format!("unknown time zone {tz}"),
        ));
    }
}

/// Columns between NAME and AGE, then the wide ones.
pub fn columns() -> (Vec<Value>, Vec<Value>) {
    let col = |name: &str, description: &str, priority: i32| json!({"name": name, "type": "string", "format": "", "description": description, "priority": priority});
    (
        vec![
            col(
                "Schedule",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
                0,
            ),
            col(
                "Timezone",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones",
                0,
            ),
            col(
                "Suspend",
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
                0,
            ),
            json!({"name": "Active", "type": "integer", "format": "", "description": "A list of pointers to currently running jobs.", "priority": 0}),
            col(
                "Last Schedule",
                "Information when was the last time the job was successfully scheduled.",
                0,
            ),
        ],
        vec![
            col("Containers", "Names of each container in the template.", 1),
            col(
                "Images",
                "Images referenced by each container in the template.",
                1,
            ),
            col(
                "Selector",
                "A label query over pods that should match the pod count.",
                1,
            ),
        ],
    )
}

/// Cells matching [`columns`]: (middle, wide).
pub fn cells(obj: &Value, now: DateTime<Utc>) -> (Vec<Value>, Vec<Value>) {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let last = match status["lastScheduleTime"].as_str() {
        Some(t) => crate::table::age(t, now),
        None => "<none>".into(),
    };
    let tspec = &spec["jobTemplate"]["spec"]["template"]["spec"];
    let join = |field: &str| {
        tspec["containers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c[field].as_str().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let selector = spec["jobTemplate"]["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into());
    (
        vec![
            json!(spec["schedule"].as_str().unwrap_or("")),
            json!(spec["timeZone"].as_str().unwrap_or("<none>")),
            json!(if spec["suspend"].as_bool().unwrap_or(false) {
                "True"
            } else {
                "False"
            }),
            json!(status["active"].as_array().map(|a| a.len()).unwrap_or(0)),
            json!(last),
        ],
        vec![json!(join("name")), json!(join("image")), json!(selector)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(&obj, &mut causes);
        causes
            .into_iter()
            .map(|(f, t, d)| format!("{f}: {t}: {d}"))
            .collect()
    }

    fn cj(schedule: &str, extra: Value) -> Value {
        let mut o = json!({"metadata": {"name": "c"}, "spec": {"schedule": schedule,
            "concurrencyPolicy": "Allow",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "i"}]}}}}}});
        for (k, v) in extra.as_object().unwrap() {
            o["spec"][k] = v.clone();
        }
        o
    }

    #[test]
    fn upstream_messages() {
        assert!(problems(cj("*/1 * * * *", json!({}))).is_empty());
        assert!(problems(cj("@hourly", json!({"timeZone": "Europe/Berlin"}))).is_empty());
        assert_eq!(
            problems(cj("bad", json!({}))),
            vec![
                "spec.schedule: Invalid value: \"bad\": expected exactly 5 fields, found 1: [bad]"
            ]
        );
        assert_eq!(
            problems(cj("* * * * *", json!({"timeZone": "Mars/Olympus"}))),
            vec!["spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"]
        );
        assert_eq!(
            problems(cj("* * * * *", json!({"concurrencyPolicy": "Sometimes"}))),
            vec![
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\""
            ]
        );
        assert_eq!(
            problems(cj("TZ=UTC * * * * *", json!({}))),
            vec![
                "spec.schedule: Invalid value: \"TZ=UTC * * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
        let mut long = cj("* * * * *", json!({}));
        long["metadata"]["name"] = json!("x".repeat(53));
        assert_eq!(problems(long).len(), 1);
    }
}
