//! CronJobs (`batch/v1`): upstream's defaults and validation (the
//! schedule through `rke2_apimachinery::cron`, whose error texts are the
//! ones kube-apiserver answers; `timeZone` against the IANA database of
//! chrono-tz) and the Table columns kubectl prints; and the Job spec
//! checks Jobs and CronJob templates share ([`validate_job_spec`]:
//! `successPolicy`, `backoffLimitPerIndex`, `maxFailedIndexes`, index
//! formats, pod failure policy actions; [`validate_job_update`]: the
//! fields fixed at creation).

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
    validate_job_spec(
        &spec["jobTemplate"]["spec"],
        "spec.jobTemplate.spec",
        causes,
    );
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

// Jobs: the parts of upstream's `validateJobSpec` about indexes (success
// policies, per-index backoff limits) and pod failure policy actions.

/// Upstream's cap on `parallelism` of an Indexed Job (and on
/// `maxFailedIndexes`).
const MAX_INDEXED: i64 = 100_000;
/// Above this many completions a per-index limit needs `maxFailedIndexes`.
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
/// `parallelism` and `maxFailedIndexes` cap above the soft limit.
const LIMIT_FOR_HIGH_COMPLETIONS: i64 = 10_000;
/// At most this many success policy rules.
const MAX_SUCCESS_POLICY_RULES: usize = 20;
/// At most this long a rule's `succeededIndexes`.
const MAX_SUCCEEDED_INDEXES_LEN: usize = 64 * 1024;
/// The pod failure policy actions, sorted as upstream lists them.
const ACTIONS: [&str; 4] = ["Count", "FailIndex", "FailJob", "Ignore"];

/// A JSON value as upstream's field errors print it (strings quoted,
/// objects as JSON).
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Upstream's `validateIndexesFormat`: `1,3-5` with every index below
/// `completions` and increasing; answers how many indexes it names.
pub fn validate_indexes_format(s: &str, completions: i64) -> Result<i64, String> {
    if s.is_empty() {
        return Ok(0);
    }
    let mut last: Option<i64> = None;
    let mut total = 0;
    for part in s.split(',') {
        let limits: Vec<&str> = part.split('-').collect();
        if limits.len() > 2 {
            return Err(format!(
                "the fragment {} violates the requirement that an index interval can have at most two parts separated by '-'",
                quoted(part)
            ));
        }
        let num = |t: &str| -> Result<i64, String> {
            let n: i64 = t.parse().map_err(|_| {
                format!("cannot convert string to integer for index: {}", quoted(t))
            })?;
            if n >= completions {
                return Err(format!("too large index: {}", quoted(t)));
            }
            Ok(n)
        };
        let x = num(limits[0])?;
        let y = match limits.get(1) {
            Some(t) => {
                let y = num(t)?;
                if x >= y {
                    return Err(format!("non-increasing order, previous: {x}, current: {y}"));
                }
                y
            }
            None => x,
        };
        if let Some(l) = last
            && l >= x
        {
            return Err(format!("non-increasing order, previous: {l}, current: {x}"));
        }
        total += y - x + 1;
        last = Some(y);
    }
    Ok(total)
}

fn nonnegative(spec: &Value, path: &str, key: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = spec[key].as_i64()
        && n < 0
    {
        causes.push(invalid(
            &format!("{path}.{key}"),
            n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// Upstream's checks of a Job spec at `path` (`spec`, or
/// `spec.jobTemplate.spec` of a CronJob) for the index features:
/// `backoffLimitPerIndex`, `maxFailedIndexes`, `successPolicy`, the
/// pod failure policy's actions.
pub fn validate_job_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    for key in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        nonnegative(spec, path, key, causes);
    }
    let per_index = spec["backoffLimitPerIndex"].as_i64();
    let max_failed = spec["maxFailedIndexes"].as_i64();
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64();
    if max_failed.is_some() && per_index.is_none() {
        causes.push((
            format!("{path}.backoffLimitPerIndex"),
            "Required value".into(),
            "when maxFailedIndexes is specified".into(),
        ));
    }
    let mode = spec["completionMode"].as_str();
    match mode {
        None | Some("NonIndexed") | Some("Indexed") => {}
        Some(other) => causes.push((
            format!("{path}.completionMode"),
            "Unsupported value".into(),
            format!(
                "{}: supported values: \"NonIndexed\", \"Indexed\"",
                quoted(other)
            ),
        )),
    }
    let indexed = mode == Some("Indexed");
    if indexed {
        if let Some(p) = parallelism
            && p > MAX_INDEXED
        {
            causes.push(invalid(
                &format!("{path}.parallelism"),
                p.to_string(),
                format!(
                    "must be less than or equal to {MAX_INDEXED} when completion mode is Indexed"
                ),
            ));
        }
        if let (Some(c), Some(m)) = (completions, max_failed)
            && m > c
        {
            causes.push(invalid(
                &format!("{path}.maxFailedIndexes"),
                m.to_string(),
                "must be less than or equal to completions",
            ));
        }
        if let Some(m) = max_failed
            && m > MAX_INDEXED
        {
            causes.push(invalid(
                &format!("{path}.maxFailedIndexes"),
                m.to_string(),
                format!("must be less than or equal to {MAX_INDEXED}"),
            ));
        }
        if let Some(c) = completions
            && c > COMPLETIONS_SOFT_LIMIT
            && per_index.is_some()
        {
            let high = format!(
                "must be less than or equal to {LIMIT_FOR_HIGH_COMPLETIONS} when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
            );
            match max_failed {
                None => causes.push((
                    format!("{path}.maxFailedIndexes"),
                    "Required value".into(),
                    format!("must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"),
                )),
                Some(m) if m > LIMIT_FOR_HIGH_COMPLETIONS => causes.push(invalid(
                    &format!("{path}.maxFailedIndexes"),
                    m.to_string(),
                    high.clone(),
                )),
                Some(_) => {}
            }
            if let Some(p) = parallelism
                && p > LIMIT_FOR_HIGH_COMPLETIONS
            {
                causes.push(invalid(&format!("{path}.parallelism"), p.to_string(), high));
            }
        }
    } else {
        if let Some(b) = per_index {
            causes.push(invalid(
                &format!("{path}.backoffLimitPerIndex"),
                b.to_string(),
                "requires indexed completion mode",
            ));
        }
        if let Some(m) = max_failed {
            causes.push(invalid(
                &format!("{path}.maxFailedIndexes"),
                m.to_string(),
                "requires indexed completion mode",
            ));
        }
    }
    if let Some(rules) = spec["podFailurePolicy"]["rules"].as_array() {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{path}.podFailurePolicy.rules[{i}].action");
            match rule["action"].as_str().unwrap_or("") {
                "" => causes.push((
                    at,
                    "Required value".into(),
                    format!("valid values: [{}]", ACTIONS.map(quoted).join(" ")),
                )),
                "FailIndex" if per_index.is_none() => causes.push(invalid(
                    &at,
                    quoted("FailIndex"),
                    "requires the backoffLimitPerIndex to be set",
                )),
                a if ACTIONS.contains(&a) => {}
                a => causes.push((
                    at,
                    "Unsupported value".into(),
                    format!(
                        "{}: supported values: {}",
                        quoted(a),
                        ACTIONS.map(quoted).join(", ")
                    ),
                )),
            }
        }
    }
    let policy = &spec["successPolicy"];
    if policy.is_null() {
        return;
    }
    let at = format!("{path}.successPolicy");
    if !indexed {
        causes.push(invalid(
            &at,
            shown(policy),
            "requires indexed completion mode",
        ));
        return;
    }
    let rules = policy["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() {
        causes.push((
            format!("{at}.rules"),
            "Required value".into(),
            "at least one rules must be specified when the successPolicy is specified".into(),
        ));
    }
    if rules.len() > MAX_SUCCESS_POLICY_RULES {
        causes.push((
            format!("{at}.rules"),
            "Too many".into(),
            format!(
                "{}: must have at most {MAX_SUCCESS_POLICY_RULES} items",
                rules.len()
            ),
        ));
    }
    let completions = completions.unwrap_or(0);
    for (i, rule) in rules.iter().enumerate() {
        let rule_at = format!("{at}.rules[{i}]");
        let indexes = rule["succeededIndexes"].as_str();
        let count = rule["succeededCount"].as_i64();
        if indexes.is_none() && count.is_none() {
            causes.push((
                rule_at.clone(),
                "Required value".into(),
                "at least one of succeededCount or succeededIndexes must be specified".into(),
            ));
        }
        let mut total = 0;
        if let Some(s) = indexes {
            let f = format!("{rule_at}.succeededIndexes");
            if s.len() > MAX_SUCCEEDED_INDEXES_LEN {
                causes.push((
                    f.clone(),
                    "Too long".into(),
                    format!("may not be more than {MAX_SUCCEEDED_INDEXES_LEN} bytes"),
                ));
            }
            match validate_indexes_format(s, completions) {
                Ok(n) => total = n,
                Err(e) => causes.push(invalid(
                    &f,
                    quoted(s),
                    format!("error parsing succeededIndexes: {e}"),
                )),
            }
        }
        if let Some(c) = count {
            let f = format!("{rule_at}.succeededCount");
            if c < 0 {
                causes.push(invalid(
                    &f,
                    c.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            if c > completions {
                causes.push(invalid(
                    &f,
                    c.to_string(),
                    format!("must be less than or equal to {completions} (the number of specified completions)"),
                ));
            }
            if indexes.is_some() && c > total {
                causes.push(invalid(
                    &f,
                    c.to_string(),
                    format!("must be less than or equal to {total} (the number of indexes in the specified succeededIndexes field)"),
                ));
            }
        }
    }
}

/// Upstream's `ValidateJobSpecUpdate` for the fields a Job keeps from its
/// creation on (the template and selector are checked elsewhere).
pub fn validate_job_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    for key in [
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "successPolicy",
    ] {
        if old["spec"][key] != new["spec"][key] {
            causes.push(invalid(
                &format!("spec.{key}"),
                shown(&new["spec"][key]),
                "field is immutable",
            ));
        }
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;

    fn causes_of(spec: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate_job_spec(&spec, "spec", &mut causes);
        causes
            .into_iter()
            .map(|(f, t, d)| format!("{f}: {t}: {d}"))
            .collect()
    }

    #[test]
    fn indexes_format_as_upstream() {
        assert_eq!(validate_indexes_format("", 5), Ok(0));
        assert_eq!(validate_indexes_format("0,2-4", 5), Ok(4));
        assert_eq!(
            validate_indexes_format("1-2-3", 5).unwrap_err(),
            "the fragment \"1-2-3\" violates the requirement that an index interval can have at most two parts separated by '-'"
        );
        assert_eq!(
            validate_indexes_format("a", 5).unwrap_err(),
            "cannot convert string to integer for index: \"a\""
        );
        assert_eq!(
            validate_indexes_format("1,5", 5).unwrap_err(),
            "too large index: \"5\""
        );
        assert_eq!(
            validate_indexes_format("3,1", 5).unwrap_err(),
            "non-increasing order, previous: 3, current: 1"
        );
        assert_eq!(
            validate_indexes_format("3-1", 5).unwrap_err(),
            "non-increasing order, previous: 3, current: 1"
        );
    }

    #[test]
    fn success_policy_and_per_index_limits() {
        let indexed = |extra: Value| {
            let mut s = json!({"completionMode": "Indexed", "completions": 5});
            for (k, v) in extra.as_object().unwrap() {
                s[k] = v.clone();
            }
            s
        };
        assert!(causes_of(indexed(json!({"successPolicy": {"rules": [{"succeededIndexes": "0-2", "succeededCount": 2}]},
            "backoffLimitPerIndex": 1, "maxFailedIndexes": 2}))).is_empty());
        assert_eq!(
            causes_of(json!({"successPolicy": {"rules": []}})),
            ["spec.successPolicy: Invalid value: {\"rules\":[]}: requires indexed completion mode"]
        );
        assert_eq!(
            causes_of(indexed(json!({"successPolicy": {"rules": []}}))),
            [
                "spec.successPolicy.rules: Required value: at least one rules must be specified when the successPolicy is specified"
            ]
        );
        assert_eq!(
            causes_of(indexed(json!({"successPolicy": {"rules": [{}]}}))),
            [
                "spec.successPolicy.rules[0]: Required value: at least one of succeededCount or succeededIndexes must be specified"
            ]
        );
        assert_eq!(
            causes_of(indexed(
                json!({"successPolicy": {"rules": [{"succeededIndexes": "0,7"}]}})
            )),
            [
                "spec.successPolicy.rules[0].succeededIndexes: Invalid value: \"0,7\": error parsing succeededIndexes: too large index: \"7\""
            ]
        );
        assert_eq!(
            causes_of(indexed(
                json!({"successPolicy": {"rules": [{"succeededIndexes": "0-1", "succeededCount": 6}]}})
            )),
            [
                "spec.successPolicy.rules[0].succeededCount: Invalid value: 6: must be less than or equal to 5 (the number of specified completions)",
                "spec.successPolicy.rules[0].succeededCount: Invalid value: 6: must be less than or equal to 2 (the number of indexes in the specified succeededIndexes field)"
            ]
        );
        assert_eq!(
            causes_of(json!({"backoffLimitPerIndex": 1, "maxFailedIndexes": 1})),
            [
                "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
                "spec.maxFailedIndexes: Invalid value: 1: requires indexed completion mode"
            ]
        );
        assert_eq!(
            causes_of(indexed(json!({"maxFailedIndexes": 6}))),
            [
                "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
                "spec.maxFailedIndexes: Invalid value: 6: must be less than or equal to completions"
            ]
        );
        assert_eq!(
            causes_of(indexed(json!({"backoffLimitPerIndex": -1}))),
            ["spec.backoffLimitPerIndex: Invalid value: -1: must be greater than or equal to 0"]
        );
        assert_eq!(
            causes_of(
                json!({"completionMode": "Indexed", "completions": 200000, "backoffLimitPerIndex": 1})
            ),
            [
                "spec.maxFailedIndexes: Required value: must be specified when completions is above 100000"
            ]
        );
        assert_eq!(
            causes_of(
                json!({"podFailurePolicy": {"rules": [{"action": "FailIndex"}, {"action": "Nope"}, {}]}})
            ),
            [
                "spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set",
                "spec.podFailurePolicy.rules[1].action: Unsupported value: \"Nope\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
                "spec.podFailurePolicy.rules[2].action: Required value: valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]"
            ]
        );
        let mut causes = Vec::new();
        validate_job_update(
            &json!({"spec": {"successPolicy": {"rules": [{"succeededCount": 1}]}}}),
            &json!({"spec": {"successPolicy": {"rules": [{"succeededCount": 2}]}}}),
            &mut causes,
        );
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].0, "spec.successPolicy");
    }
}
