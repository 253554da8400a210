//! HorizontalPodAutoscalers, as kube-controller-manager's HPA controller
//! computes them on resource metrics.
//!
//! Every sync period (`--horizontal-pod-autoscaler-sync-period`, 15 s;
//! this and the other `--horizontal-pod-autoscaler-*` flags come through
//! `kube-controller-manager-arg`, see
//! `rke2_apimachinery::autoscaling::HpaSettings`) each HPA is read
//! (`autoscaling/v2`) and reconciled:
//!
//! * the target's `scale` subresource gives the current replicas and the
//!   pods' selector (`FailedGetScale` / `InvalidSelector` otherwise);
//! * a target outside `[minReplicas, maxReplicas]` is brought back first;
//! * else every `Resource` metric (cpu, memory; `Utilization` against the
//!   containers' requests, or `AverageValue`) is computed from the pods'
//!   `metrics.k8s.io/v1beta1` PodMetrics with [`calc`] (the tolerance,
//!   10 % or the flag's, or per direction the HPA's
//!   `behavior.scaleUp/scaleDown.tolerance`; unready and missing pods
//!   counted conservatively); the
//!   largest proposal wins; metric errors become the `ScalingActive`
//!   condition and Warning events (`FailedGetResourceMetric`,
//!   `FailedComputeMetricsReplicas`);
//! * the proposal is normalized ([`calc::normalize`]: stabilization
//!   windows, `behavior` policies, min/max), the scale written when it
//!   changes (`SuccessfulRescale` "New size: N; reason: …"), and the
//!   status (`currentReplicas`, `desiredReplicas`, `currentMetrics`,
//!   `lastScaleTime`, conditions `AbleToScale`, `ScalingActive`,
//!   `ScalingLimited`) patched when it differs.
//!
//! Recommendations and scale events live in memory, as upstream's: a
//! new leader starts with none.

pub mod calc;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use rke2_apimachinery::quantity::{Format, Quantity, parse_quantity};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::replicaset::{api_message, record_event};
use calc::{Behavior, History, PodInfo, PodMetric, Policy, Rules, Select, Tolerances, Tuning};
use rke2_apimachinery::autoscaling::HpaSettings;

const COMPONENT: &str = "horizontal-pod-autoscaler";

/// Runs the controller with `settings` (kube-controller-manager's
/// `--horizontal-pod-autoscaler-*` flags) until `stop`.
pub async fn run(client: kube::Client, settings: HpaSettings, stop: CancellationToken) {
    info!(?settings, "horizontal pod autoscaler controller started");
    let hpas: Api<HorizontalPodAutoscaler> = Api::all(client.clone());
    let mut histories: HashMap<String, History> = HashMap::new();
    let mut tick = tokio::time::interval(settings.sync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let list = match hpas.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing HorizontalPodAutoscalers");
                continue;
            }
        };
        let mut seen = Vec::new();
        for hpa in &list.items {
            let uid = hpa.metadata.uid.clone().unwrap_or_default();
            seen.push(uid.clone());
            let h = histories.entry(uid).or_default();
            if let Err(e) = reconcile(&client, &settings, hpa, h).await {
                debug!(hpa = %crate::namespaced_name(&hpa.metadata), error = %e, "hpa sync");
            }
        }
        histories.retain(|uid, _| seen.contains(uid));
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Sets a condition as upstream's `setCondition`: the transition time
/// moves only when the status changes.
pub fn set_condition(conds: &mut Vec<Value>, ty: &str, status: bool, reason: &str, message: &str) {
    let status = if status { "True" } else { "False" };
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now_rfc3339());
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conds.push(json!({
            "type": ty, "status": status, "lastTransitionTime": now_rfc3339(),
            "reason": reason, "message": message,
        })),
    }
}

/// `spec.behavior` with upstream's defaults for what is unset.
pub fn behavior_of(spec: &Value) -> Option<Behavior> {
    let b = spec.get("behavior").filter(|b| b.is_object())?;
    let rules = |v: &Value, default: Rules| {
        if !v.is_object() {
            return default;
        }
        let policies: Vec<Policy> = v["policies"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| Policy {
                        pods: p["type"] == "Pods",
                        value: p["value"].as_i64().unwrap_or(0) as i32,
                        period_secs: p["periodSeconds"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .filter(|ps: &Vec<Policy>| !ps.is_empty())
            .unwrap_or(default.policies);
        Rules {
            window_secs: v["stabilizationWindowSeconds"]
                .as_i64()
                .unwrap_or(default.window_secs),
            select: match v["selectPolicy"].as_str() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            policies,
        }
    };
    Some(Behavior {
        up: rules(&b["scaleUp"], Rules::default_up()),
        down: rules(&b["scaleDown"], Rules::default_down()),
    })
}

/// The calculation's tuning for one HPA: the controller's settings, with
/// the tolerances of `spec.behavior.scaleUp/scaleDown.tolerance` where
/// set (upstream's `tolerancesForHpa`; HPAConfigurableTolerance is on by
/// default in 1.35).
pub fn tuning_of(settings: &HpaSettings, spec: &Value) -> Tuning {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let tolerance = |rules: &Value| {
        let text = match &rules["tolerance"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        parse_quantity(&text)
            .ok()
            .map(|q| q.as_nanos() as f64 / 1e9)
            .filter(|t| *t >= 0.0)
    };
    let b = &spec["behavior"];
    Tuning {
        tolerances: Tolerances {
            scale_down: tolerance(&b["scaleDown"]).unwrap_or(settings.tolerance),
            scale_up: tolerance(&b["scaleUp"]).unwrap_or(settings.tolerance),
        },
        cpu_initialization_period_ms: ms(settings.cpu_initialization_period),
        initial_readiness_delay_ms: ms(settings.initial_readiness_delay),
        downscale_stabilization_ms: ms(settings.downscale_stabilization),
    }
}

fn milli(q: &Value) -> Option<i64> {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    parse_quantity(&text).ok().map(|q| q.as_milli() as i64)
}

fn milli_quantity(m: i64) -> String {
    Quantity::from_nanos(i128::from(m) * 1_000_000, Format::DecimalSi).canonical()
}

/// A Go duration (`15s`, `1m0.5s`, `500ms`) in milliseconds.
fn go_duration_ms(s: &str) -> i64 {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' {
                break;
            }
            unit.push(n);
            chars.next();
        }
        let v: f64 = num.parse().unwrap_or(0.0);
        num.clear();
        total += v * match unit.as_str() {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => 0.0,
        };
    }
    total as i64
}

fn ts_ms(s: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// What the calculator needs of a pod.
pub fn pod_info(pod: &Pod, resource: &str) -> PodInfo {
    let st = pod.status.clone().unwrap_or_default();
    let ready = st.conditions.as_ref().and_then(|cs| {
        cs.iter().find(|c| c.type_ == "Ready").map(|c| {
            (
                c.status == "True",
                c.last_transition_time
                    .as_ref()
                    .map(|t| t.0.as_millisecond())
                    .unwrap_or(0),
            )
        })
    });
    let mut request = Ok(0i64);
    for c in pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
    {
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| parse_quantity(&q.0).ok());
        match (r, &mut request) {
            (Some(q), Ok(sum)) => *sum += q.as_milli() as i64,
            (None, Ok(_)) => request = Err(c.name.clone()),
            _ => {}
        }
    }
    PodInfo {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: st.phase.unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: st.start_time.map(|t| t.0.as_millisecond()),
        request,
    }
}

/// The pods' usage of `resource` from a PodMetricsList: pods missing the
/// resource in one container are left out, as upstream's client does.
pub fn pod_metrics(list: &Value, resource: &str) -> BTreeMap<String, PodMetric> {
    let mut out = BTreeMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut sum = 0;
        let mut complete = true;
        for c in item["containers"].as_array().into_iter().flatten() {
            match milli(&c["usage"][resource]) {
                Some(v) => sum += v,
                None => complete = false,
            }
        }
        if complete && !name.is_empty() {
            out.insert(
                name,
                PodMetric {
                    value: sum,
                    timestamp: ts_ms(item["timestamp"].as_str()).unwrap_or(0),
                    window: go_duration_ms(item["window"].as_str().unwrap_or("")),
                },
            );
        }
    }
    out
}

/// One metric's outcome: the proposal, its name for events, its status.
struct MetricResult {
    replicas: i32,
    name: String,
    status: Value,
}

/// One metric's failure: the condition reason and the error.
struct MetricError {
    reason: String,
    error: String,
}

async fn resource_metric(
    t: &Tuning,
    client: &kube::Client,
    ns: &str,
    selector: &str,
    spec: &Value,
    current: i32,
) -> Result<MetricResult, MetricError> {
    let resource = spec["resource"]["name"].as_str().unwrap_or("").to_string();
    let target = &spec["resource"]["target"];
    let fail = |error: String| MetricError {
        reason: "FailedGetResourceMetric".into(),
        error,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            fail(format!(
                "unable to get pods while calculating replica count: {}",
                api_message(&e)
            ))
        })?;
    let metrics = fetch_pod_metrics(client, ns, selector).await.map_err(|e| {
        fail(format!(
            "unable to get metrics for resource {resource}: {e}"
        ))
    })?;
    let metrics = pod_metrics(&metrics, &resource);
    if metrics.is_empty() {
        return Err(fail(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        )));
    }
    let infos: Vec<PodInfo> = pods.items.iter().map(|p| pod_info(p, &resource)).collect();
    let now = now_ms();
    if let Some(avg) = milli(&target["averageValue"]) {
        let p = calc::raw_resource_replicas(t, current, avg, &resource, &infos, &metrics, now)
            .map_err(|e| fail(format!("failed to get {resource} usage: {e}")))?;
        return Ok(MetricResult {
            replicas: p.replicas,
            name: format!("{resource} resource"),
            status: json!({"type": "Resource", "resource": {"name": resource, "current": {"averageValue": milli_quantity(p.average)}}}),
        });
    }
    let Some(util) = target["averageUtilization"].as_i64() else {
        return Err(fail("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into()));
    };
    let p = calc::resource_replicas(t, current, util, &resource, &infos, &metrics, now)
        .map_err(|e| fail(format!("failed to get {resource} utilization: {e}")))?;
    Ok(MetricResult {
        replicas: p.replicas,
        name: format!("{resource} resource utilization (percentage of request)"),
        status: json!({"type": "Resource", "resource": {"name": resource, "current": {
            "averageUtilization": p.utilization.unwrap_or(0), "averageValue": milli_quantity(p.average)}}}),
    })
}

async fn fetch_pod_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<Value, String> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!(
                "unable to fetch metrics from resource metrics API: {}",
                api_message(&e)
            )
        })?;
    let items: Vec<Value> = list
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    Ok(json!({"items": items}))
}

/// The target's API through its `scale` subresource.
async fn scale_api(
    client: &kube::Client,
    ns: &str,
    target: &Value,
) -> Result<Api<DynamicObject>, String> {
    let api_version = target["apiVersion"].as_str().unwrap_or("");
    let kind = target["kind"].as_str().unwrap_or("");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None if !api_version.is_empty() => ("", api_version),
        None => {
            return Err(format!(
                "invalid API version in scale target reference: {api_version:?}"
            ));
        }
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("unable to determine resource for scale target reference: {e}"))?;
    Ok(Api::namespaced_with(client.clone(), ns, &ar))
}

/// One sync of one HPA.
async fn reconcile(
    client: &kube::Client,
    settings: &HpaSettings,
    hpa: &HorizontalPodAutoscaler,
    h: &mut History,
) -> Result<(), String> {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let obj = serde_json::to_value(hpa).map_err(|e| e.to_string())?;
    let spec = &obj["spec"];
    let old_status = obj["status"].clone();
    let mut conds: Vec<Value> = old_status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let target = &spec["scaleTargetRef"];
    let reference = format!(
        "{}/{}/{}",
        target["kind"].as_str().unwrap_or(""),
        ns,
        target["name"].as_str().unwrap_or("")
    );
    let me = ObjectReference {
        api_version: Some("autoscaling/v2".into()),
        kind: Some("HorizontalPodAutoscaler".into()),
        name: Some(name.clone()),
        namespace: Some(ns.clone()),
        uid: hpa.metadata.uid.clone(),
        resource_version: hpa.metadata.resource_version.clone(),
        ..Default::default()
    };
    let event = |ty: &'static str, reason: &'static str, msg: String| {
        let me = me.clone();
        async move { record_event(client, COMPONENT, &me, ty, reason, msg).await }
    };
    let min = spec["minReplicas"].as_i64().unwrap_or(1) as i32;
    let max = spec["maxReplicas"].as_i64().unwrap_or(1) as i32;
    let mut status = json!({
        "observedGeneration": hpa.metadata.generation,
        "currentReplicas": old_status["currentReplicas"].as_i64().unwrap_or(0),
        "desiredReplicas": old_status["desiredReplicas"].as_i64().unwrap_or(0),
    });
    if let Some(t) = old_status.get("lastScaleTime").filter(|t| !t.is_null()) {
        status["lastScaleTime"] = t.clone();
    }
    if let Some(m) = old_status.get("currentMetrics").filter(|m| !m.is_null()) {
        status["currentMetrics"] = m.clone();
    }

    let scale = match scale_api(client, &ns, target).await {
        Ok(api) => api
            .get_scale(target["name"].as_str().unwrap_or(""))
            .await
            .map(|s| (api, s))
            .map_err(|e| api_message(&e)),
        Err(e) => Err(e),
    };
    let (api, scale) = match scale {
        Ok(x) => x,
        Err(e) => {
            event("Warning", "FailedGetScale", e.clone()).await;
            set_condition(
                &mut conds,
                "AbleToScale",
                false,
                "FailedGetScale",
                &format!("the HPA controller was unable to get the target's current scale: {e}"),
            );
            write_status(client, &obj, status, conds).await;
            return Err(e);
        }
    };
    set_condition(
        &mut conds,
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    );
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    status["currentReplicas"] = json!(current);
    let behavior = behavior_of(spec);
    let tuning = tuning_of(settings, spec);
    let now = now_ms();

    let mut reason = String::new();
    let desired;
    if current == 0 && min != 0 {
        desired = 0;
        set_condition(
            &mut conds,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        );
    } else if let Some((d, why)) = calc::out_of_range(current, min, max) {
        desired = d;
        reason = why.to_string();
    } else {
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let mut proposals: Vec<MetricResult> = Vec::new();
        let mut statuses = Vec::new();
        let mut first_error: Option<MetricError> = None;
        let mut invalid = 0;
        let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
        if selector.is_empty() {
            event("Warning", "SelectorRequired", "selector is required".into()).await;
            set_condition(
                &mut conds,
                "ScalingActive",
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector",
            );
            write_status(client, &obj, status, conds).await;
            return Err("selector is required".into());
        }
        for m in &metrics {
            let result = match m["type"].as_str() {
                Some("Resource") => {
                    resource_metric(&tuning, client, &ns, &selector, m, current).await
                }
                other => {
                    let ty = other.unwrap_or("");
                    Err(MetricError {
                        reason: format!("FailedGet{ty}Metric"),
                        error: format!(
                            "unable to get {} metric: only resource metrics (metrics.k8s.io) are served by this cluster",
                            ty.to_lowercase()
                        ),
                    })
                }
            };
            match result {
                Ok(r) => {
                    statuses.push(r.status.clone());
                    proposals.push(r);
                }
                Err(e) => {
                    event("Warning", leak_reason(&e.reason), e.error.clone()).await;
                    statuses.push(json!({"type": ""}));
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                    invalid += 1;
                }
            }
        }
        let best = proposals.iter().max_by_key(|p| p.replicas);
        let best_replicas = best.map(|p| p.replicas).unwrap_or(0);
        if let Some(e) = first_error
            && (invalid >= metrics.len() || best_replicas < current)
        {
            set_condition(
                &mut conds,
                "ScalingActive",
                false,
                &e.reason,
                &format!(
                    "the HPA was unable to compute the replica count: {}",
                    e.error
                ),
            );
            status["currentMetrics"] = json!(
                statuses
                    .into_iter()
                    .filter(|s| s["type"] != "")
                    .collect::<Vec<_>>()
            );
            write_status(client, &obj, status, conds).await;
            event("Warning", "FailedComputeMetricsReplicas", e.error.clone()).await;
            return Err(format!(
                "failed to compute desired number of replicas based on listed metrics for {reference}: {}",
                e.error
            ));
        }
        let metric_name = best.map(|p| p.name.clone()).unwrap_or_default();
        set_condition(
            &mut conds,
            "ScalingActive",
            true,
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {metric_name}"
            ),
        );
        status["currentMetrics"] = json!(
            statuses
                .into_iter()
                .filter(|s| s["type"] != "")
                .collect::<Vec<_>>()
        );
        let proposed = best_replicas.max(0);
        if proposed > current {
            reason = format!("{metric_name} above target");
        } else if proposed < current {
            reason = "All metrics below target".into();
        }
        let n = calc::normalize(
            &tuning,
            h,
            behavior.as_ref(),
            current,
            proposed,
            min,
            max,
            now,
        );
        set_condition(&mut conds, "AbleToScale", true, n.able.0, n.able.1);
        set_condition(
            &mut conds,
            "ScalingLimited",
            n.limited.0,
            n.limited.1.0,
            n.limited.1.1,
        );
        desired = n.replicas;
    }

    let rescale = desired != current && !(current == 0 && min != 0);
    if rescale {
        // An update of the Scale read above (its resourceVersion guards
        // against a change meanwhile), as upstream writes it.
        let mut updated = scale.clone();
        updated.spec.get_or_insert_with(Default::default).replicas = Some(desired);
        if let Err(e) = api
            .replace_scale(
                target["name"].as_str().unwrap_or(""),
                &PostParams::default(),
                &updated,
            )
            .await
        {
            let e = api_message(&e);
            event(
                "Warning",
                "FailedRescale",
                format!("New size: {desired}; reason: {reason}; error: {e}"),
            )
            .await;
            set_condition(
                &mut conds,
                "AbleToScale",
                false,
                "FailedUpdateScale",
                &format!("the HPA controller was unable to update the target scale: {e}"),
            );
            write_status(client, &obj, status, conds).await;
            return Err(e);
        }
        set_condition(
            &mut conds,
            "AbleToScale",
            true,
            "SucceededRescale",
            &format!("the HPA controller was able to update the target scale to {desired}"),
        );
        event(
            "Normal",
            "SuccessfulRescale",
            format!("New size: {desired}; reason: {reason}"),
        )
        .await;
        calc::store_scale_event(h, behavior.as_ref(), current, desired, now);
        info!(hpa = %format!("{ns}/{name}"), from = current, to = desired, %reason, "rescaled");
        status["lastScaleTime"] = json!(now_rfc3339());
        status["desiredReplicas"] = json!(desired);
    } else {
        status["desiredReplicas"] = json!(current);
    }
    write_status(client, &obj, status, conds).await;
    Ok(())
}

/// Event reasons are static strings for the recorder.
fn leak_reason(reason: &str) -> &'static str {
    match reason {
        "FailedGetResourceMetric" => "FailedGetResourceMetric",
        "FailedGetPodsMetric" => "FailedGetPodsMetric",
        "FailedGetObjectMetric" => "FailedGetObjectMetric",
        "FailedGetExternalMetric" => "FailedGetExternalMetric",
        "FailedGetContainerResourceMetric" => "FailedGetContainerResourceMetric",
        _ => "FailedGetMetric",
    }
}

/// Updates the status (the `update` the controller's role grants on
/// `horizontalpodautoscalers/status`) when it differs from the stored one.
async fn write_status(client: &kube::Client, obj: &Value, mut status: Value, conds: Vec<Value>) {
    status["conditions"] = json!(conds);
    if status == obj["status"] {
        return;
    }
    let mut updated = obj.clone();
    updated["status"] = status;
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let hpa: HorizontalPodAutoscaler = match serde_json::from_value(updated) {
        Ok(h) => h,
        Err(e) => {
            warn!(hpa = %format!("{ns}/{name}"), error = %e, "encoding HPA status");
            return;
        }
    };
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    if let Err(e) = api.replace_status(name, &PostParams::default(), &hpa).await {
        warn!(hpa = %format!("{ns}/{name}"), error = %e, "updating HPA status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("15s"), 15_000);
        assert_eq!(go_duration_ms("15.012s"), 15_012);
        assert_eq!(go_duration_ms("1m0.5s"), 60_500);
        assert_eq!(go_duration_ms("500ms"), 500);
    }

    #[test]
    fn pod_metrics_sum_containers_and_skip_incomplete_pods() {
        let list = json!({"items": [
            {"metadata": {"name": "a"}, "timestamp": "2024-05-01T10:00:00Z", "window": "15s",
             "containers": [{"name": "x", "usage": {"cpu": "120m", "memory": "10Mi"}}, {"name": "y", "usage": {"cpu": "1", "memory": "1Mi"}}]},
            {"metadata": {"name": "b"}, "timestamp": "2024-05-01T10:00:00Z", "window": "15s",
             "containers": [{"name": "x", "usage": {"memory": "10Mi"}}]},
        ]});
        let m = pod_metrics(&list, "cpu");
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"].value, 1120);
        assert_eq!(m["a"].window, 15_000);
        assert_eq!(
            pod_metrics(&list, "memory")["b"].value,
            10 * 1024 * 1024 * 1000
        );
    }

    #[test]
    fn pod_requests_name_the_container_without_one() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "b"},
            ]},
            "status": {"phase": "Running", "startTime": "2024-05-01T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:00:10Z"}]},
        }))
        .unwrap();
        let info = pod_info(&pod, "cpu");
        assert_eq!(info.request, Err("b".into()));
        assert_eq!(info.ready.map(|r| r.0), Some(true));
        assert!(info.start_time.is_some());
    }

    #[test]
    fn behavior_defaults_for_unset_parts() {
        let b = behavior_of(&json!({"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}))
            .unwrap();
        assert_eq!(b.up, Rules::default_up());
        assert_eq!(b.down.window_secs, 5);
        assert_eq!(b.down.policies, Rules::default_down().policies);
        assert!(behavior_of(&json!({})).is_none());
    }

    #[test]
    fn tuning_takes_the_flags_and_the_hpas_tolerances() {
        let settings = HpaSettings {
            sync_period: Duration::from_secs(5),
            tolerance: 0.2,
            downscale_stabilization: Duration::from_secs(60),
            cpu_initialization_period: Duration::from_secs(120),
            initial_readiness_delay: Duration::from_secs(10),
        };
        let t = tuning_of(&settings, &json!({}));
        assert_eq!(
            t,
            Tuning {
                tolerances: Tolerances {
                    scale_down: 0.2,
                    scale_up: 0.2
                },
                cpu_initialization_period_ms: 120_000,
                initial_readiness_delay_ms: 10_000,
                downscale_stabilization_ms: 60_000,
            }
        );
        // Per direction from spec.behavior (a quantity: "50m" is 0.05).
        let t = tuning_of(
            &settings,
            &json!({"behavior": {"scaleUp": {"tolerance": "50m"}, "scaleDown": {"tolerance": 0.5}}}),
        );
        assert_eq!(
            t.tolerances,
            Tolerances {
                scale_down: 0.5,
                scale_up: 0.05
            }
        );
        let t = tuning_of(
            &HpaSettings::default(),
            &json!({"behavior": {"scaleDown": {"tolerance": "0"}}}),
        );
        assert_eq!(
            t.tolerances,
            Tolerances {
                scale_down: 0.0,
                scale_up: 0.1
            }
        );
        assert_eq!(
            tuning_of(&HpaSettings::default(), &json!({})),
            Tuning::default()
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let mut c = vec![
            json!({"type": "AbleToScale", "status": "True", "lastTransitionTime": "then", "reason": "x", "message": "y"}),
        ];
        set_condition(&mut c, "AbleToScale", true, "ReadyForNewScale", "m");
        assert_eq!(c[0]["lastTransitionTime"], "then");
        assert_eq!(c[0]["reason"], "ReadyForNewScale");
        set_condition(&mut c, "AbleToScale", false, "FailedGetScale", "m");
        assert_ne!(c[0]["lastTransitionTime"], "then");
        set_condition(&mut c, "ScalingActive", true, "ValidMetricFound", "m");
        assert_eq!(c.len(), 2);
    }
}
