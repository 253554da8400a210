//! PodDisruptionBudgets (`policy/v1`): upstream's validation and Table
//! columns. The eviction subresource that honours them is
//! `handlers/eviction.rs`; their status comes from the disruption
//! controller (`rke2-controllers::disruption`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::strategy::{Cause, Strategy};

/// PodDisruptionBudgets: validation.
#[derive(Debug)]
pub struct PodDisruptionBudget;

impl Strategy for PodDisruptionBudget {
    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate(obj, causes);
    }
}

/// How apimachinery prints an `intstr.IntOrString` as an invalid value
/// (`%#v` of the struct).
fn int_or_string_go(v: &Value) -> String {
    match v {
        Value::String(s) => format!(
            "intstr.IntOrString{{Type:1, IntVal:0, StrVal:{}}}",
            crate::objects::quoted(s)
        ),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%' or '93%', regex used for validation is '[0-9]+%')";

/// Upstream's `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent`.
fn int_or_percent(field: &str, v: &Value, causes: &mut Vec<Cause>) {
    let invalid = |detail: &str| {
        (
            field.to_string(),
            "Invalid value".to_string(),
            format!("{}: {detail}", int_or_string_go(v)),
        )
    };
    match v {
        Value::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                causes.push(invalid(PERCENT_MSG));
            } else if digits.parse::<u64>().map(|n| n > 100).unwrap_or(true) {
                causes.push(invalid("must not be greater than 100%"));
            }
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64()
                && i < 0
            {
                causes.push((
                    field.to_string(),
                    "Invalid value".into(),
                    format!("{i}: must be greater than or equal to 0"),
                ));
            }
        }
        _ => {}
    }
}

/// Upstream's `ValidatePodDisruptionBudget` (spec part).
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let min = &spec["minAvailable"];
    let max = &spec["maxUnavailable"];
    if !min.is_null() && !max.is_null() {
        causes.push((
            "spec".into(),
            "Invalid value".into(),
            format!(
                "policy.PodDisruptionBudgetSpec{{MinAvailable:{}, MaxUnavailable:{}}}: minAvailable and maxUnavailable cannot be both set",
                int_or_string_go(min),
                int_or_string_go(max)
            ),
        ));
    }
    if !min.is_null() {
        int_or_percent("spec.minAvailable", min, causes);
    }
    if !max.is_null() {
        int_or_percent("spec.maxUnavailable", max, causes);
    }
    if spec["selector"].is_object()
        && let Err(e) = rke2_apimachinery::selectors::label_selector_from_json(&spec["selector"])
    {
        causes.push((
            "spec.selector".into(),
            "Invalid value".into(),
            e.to_string(),
        ));
    }
    match spec["unhealthyPodEvictionPolicy"].as_str() {
        None | Some("IfHealthyBudget") | Some("AlwaysAllow") => {}
        Some(other) => causes.push((
            "spec.unhealthyPodEvictionPolicy".into(),
            "Unsupported value".into(),
            format!(
                "{}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\"",
                crate::objects::quoted(other)
            ),
        )),
    }
}

/// Columns between NAME and AGE.
pub fn columns() -> Vec<Value> {
    let col = |name: &str, ty: &str, description: &str| json!({"name": name, "type": ty, "format": "", "description": description, "priority": 0});
    vec![
        col(
            "Min Available",
            "string",
            "An eviction is allowed if at least \"minAvailable\" pods selected by \"selector\" will still be available after the eviction, i.e. even in the absence of the evicted pod.  So for example you can prevent all voluntary evictions by specifying \"100%\".",
        ),
        col(
            "Max Unavailable",
            "string",
            "An eviction is allowed if at most \"maxUnavailable\" pods selected by \"selector\" are unavailable after the eviction, i.e. even in absence of the evicted pod. For example, one can prevent all voluntary evictions by specifying 0. This is a mutually exclusive setting with \"minAvailable\".",
        ),
        col(
            "Allowed Disruptions",
            "integer",
            "Number of pod disruptions that are currently allowed.",
        ),
    ]
}

/// Cells matching [`columns`].
pub fn cells(obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let show = |v: &Value| match v {
        Value::Null => "N/A".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    vec![
        json!(show(&obj["spec"]["minAvailable"])),
        json!(show(&obj["spec"]["maxUnavailable"])),
        json!(obj["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(spec: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(
            &json!({"metadata": {"name": "p"}, "spec": spec}),
            &mut causes,
        );
        causes
            .into_iter()
            .map(|(f, t, d)| format!("{f}: {t}: {d}"))
            .collect()
    }

    #[test]
    fn upstream_messages() {
        assert!(
            problems(json!({"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}))
                .is_empty()
        );
        assert!(problems(json!({"maxUnavailable": "50%"})).is_empty());
        assert_eq!(
            problems(json!({"minAvailable": "abc"})),
            vec![format!(
                "spec.minAvailable: Invalid value: intstr.IntOrString{{Type:1, IntVal:0, StrVal:\"abc\"}}: {PERCENT_MSG}"
            )]
        );
        assert_eq!(
            problems(json!({"maxUnavailable": "150%"})),
            vec![
                "spec.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"150%\"}: must not be greater than 100%"
            ]
        );
        assert_eq!(
            problems(json!({"minAvailable": -1})),
            vec!["spec.minAvailable: Invalid value: -1: must be greater than or equal to 0"]
        );
        assert_eq!(
            problems(json!({"minAvailable": 1, "maxUnavailable": 1})).len(),
            1
        );
    }
}
