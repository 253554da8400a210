//! The pure part of the HPA controller: kube-controller-manager's replica
//! calculator (resource metrics, utilization and average value targets,
//! the tolerance, unready and missing pods) and the normalization of a
//! recommendation (stabilization windows, scaling policies, min/max).
//! Times are milliseconds since the Unix epoch, passed in.

use std::collections::{BTreeMap, BTreeSet};

/// The tolerances of one HPA (upstream's `Tolerances`): the cluster's
/// `--horizontal-pod-autoscaler-tolerance` in both directions unless the
/// HPA's `behavior.scaleDown/scaleUp.tolerance` sets its own
/// (HPAConfigurableTolerance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// How far below 1 the metric ratio may fall without a scale-down.
    pub scale_down: f64,
    /// How far above 1 it may rise without a scale-up.
    pub scale_up: f64,
}

impl Tolerances {
    /// Whether `ratio` (current / target) calls for no change.
    pub fn is_within(&self, ratio: f64) -> bool {
        1.0 - self.scale_down <= ratio && ratio <= 1.0 + self.scale_up
    }
}

/// What the calculation and normalization of one HPA are tuned by:
/// kube-controller-manager's `--horizontal-pod-autoscaler-*` flags (see
/// `rke2_apimachinery::autoscaling::HpaSettings`) and the HPA's own
/// tolerances. Times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// The tolerances.
    pub tolerances: Tolerances,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub cpu_initialization_period_ms: i64,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub initial_readiness_delay_ms: i64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`: the window
    /// of an HPA without `behavior`.
    pub downscale_stabilization_ms: i64,
}

impl Default for Tuning {
    /// Upstream's defaults: 10 % tolerance, 5 min CPU initialization
    /// period, 30 s initial readiness delay, 5 min downscale window.
    fn default() -> Self {
        Tuning {
            tolerances: Tolerances {
                scale_down: 0.1,
                scale_up: 0.1,
            },
            cpu_initialization_period_ms: 5 * 60 * 1000,
            initial_readiness_delay_ms: 30 * 1000,
            downscale_stabilization_ms: 5 * 60 * 1000,
        }
    }
}

/// What the calculator needs of one pod the target's selector matches.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Pod name (the key of its metric).
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The `Ready` condition: (is True, lastTransitionTime).
    pub ready: Option<(bool, i64)>,
    /// `status.startTime`.
    pub start_time: Option<i64>,
    /// The sum of the containers' requests of the resource in
    /// milli-units, or the name of the first container without one.
    pub request: Result<i64, String>,
}

/// One pod's usage of a resource from the metrics API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMetric {
    /// Milli-units (millicores, millibytes) summed over the containers.
    pub value: i64,
    /// When the sample was taken.
    pub timestamp: i64,
    /// Over how long it was measured.
    pub window: i64,
}

/// The pods split as upstream's `groupPods`.
#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn group_pods(
    t: &Tuning,
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    cpu: bool,
    now: i64,
) -> Groups {
    let mut g = Groups::default();
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            g.ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            g.unready.insert(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            g.missing.insert(p.name.clone());
            continue;
        };
        if cpu {
            let unready = match (p.ready, p.start_time) {
                (Some((ready, transition)), Some(start)) => {
                    if start + t.cpu_initialization_period_ms > now {
                        // Still initializing: unready, or no full window
                        // measured since the last transition.
                        !ready || m.timestamp < transition + m.window
                    } else {
                        // Unready and never ready since it started.
                        !ready && start + t.initial_readiness_delay_ms > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(p.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// Upstream's `GetResourceUtilizationRatio`: (ratio, utilization %,
/// average raw usage).
fn utilization_ratio(
    metrics: &BTreeMap<String, PodMetric>,
    requests: &BTreeMap<String, i64>,
    target: i64,
) -> Result<(f64, i64, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (name, m) in metrics {
        if let Some(r) = requests.get(name) {
            used += m.value;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = used * 100 / requested;
    Ok((utilization as f64 / target as f64, utilization, used / n))
}

/// The result of a calculation: the proposal and what was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// Proposed replica count.
    pub replicas: i32,
    /// The current utilization in percent of the requests (utilization
    /// targets only).
    pub utilization: Option<i64>,
    /// The average usage per pod in milli-units.
    pub average: i64,
}

/// Upstream's `GetResourceReplicas`: the replicas that bring the average
/// utilization (usage / requests, in percent) to `target`.
pub fn resource_replicas(
    t: &Tuning,
    current: i32,
    target: i64,
    resource: &str,
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    now: i64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(t, pods, metrics, resource == "cpu", now);
    let mut metrics: BTreeMap<String, PodMetric> = metrics
        .iter()
        .filter(|(n, _)| !g.ignored.contains(*n) && !g.unready.contains(*n))
        .map(|(n, m)| (n.clone(), *m))
        .collect();
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = BTreeMap::new();
    for p in pods {
        match &p.request {
            Ok(r) => {
                requests.insert(p.name.clone(), *r);
            }
            Err(container) => {
                return Err(format!(
                    "missing request for {resource} in container {container} of Pod {}",
                    p.name
                ));
            }
        }
    }
    let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target)?;
    let done = |replicas: i32| Proposal {
        replicas,
        utilization: Some(utilization),
        average: raw,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if t.tolerances.is_within(ratio) {
            return Ok(done(current));
        }
        return Ok(done((ratio * g.ready as f64).ceil() as i32));
    }
    if !g.missing.is_empty() {
        // Conservative: on a scale-down missing pods count as using
        // 100 % (or the target, when above), on a scale-up as 0 %.
        let fallback = target.max(100);
        if ratio != 1.0 {
            assume(&mut metrics, &g.missing, now, |name| {
                if ratio < 1.0 {
                    requests.get(name).copied().unwrap_or(0) * fallback / 100
                } else {
                    0
                }
            });
        }
    }
    if scale_up_with_unready {
        assume(&mut metrics, &g.unready, now, |_| 0);
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
    Ok(done(settle(t, current, ratio, new_ratio, metrics.len())))
}

/// The second pass shared by both calculators: no change within the
/// tolerance or when the direction flipped.
/// Adds an assumed sample (`value_of` the pod, taken `now`) for each of
/// `names`: kube-controller-manager's conservative stand-ins for pods
/// without a usable metric.
fn assume<'a>(
    metrics: &mut BTreeMap<String, PodMetric>,
    names: impl IntoIterator<Item = &'a String>,
    now: i64,
    value_of: impl Fn(&str) -> i64,
) {
    for name in names {
        metrics.insert(
            name.clone(),
            PodMetric {
                value: value_of(name),
                timestamp: now,
                window: 0,
            },
        );
    }
}

fn settle(t: &Tuning, current: i32, ratio: f64, new_ratio: f64, counted: usize) -> i32 {
    if t.tolerances.is_within(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let replicas = (new_ratio * counted as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return current;
    }
    replicas
}

/// Upstream's `GetRawResourceReplicas` (`calcPlainMetricReplicas`): the
/// replicas that bring the average usage per pod to `target` (milli-units).
pub fn raw_resource_replicas(
    t: &Tuning,
    current: i32,
    target: i64,
    resource: &str,
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    now: i64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(t, pods, metrics, resource == "cpu", now);
    let mut metrics: BTreeMap<String, PodMetric> = metrics
        .iter()
        .filter(|(n, _)| !g.ignored.contains(*n) && !g.unready.contains(*n))
        .map(|(n, m)| (n.clone(), *m))
        .collect();
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let usage_ratio = |m: &BTreeMap<String, PodMetric>| {
        let avg = m.values().map(|x| x.value).sum::<i64>() / m.len() as i64;
        (avg as f64 / target as f64, avg)
    };
    let (ratio, usage) = usage_ratio(&metrics);
    let done = |replicas: i32| Proposal {
        replicas,
        utilization: None,
        average: usage,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if t.tolerances.is_within(ratio) {
            return Ok(done(current));
        }
        return Ok(done((ratio * g.ready as f64).ceil() as i32));
    }
    assume(&mut metrics, &g.missing, now, |_| {
        if ratio < 1.0 { target } else { 0 }
    });
    if scale_up_with_unready {
        assume(&mut metrics, &g.unready, now, |_| 0);
    }
    let (new_ratio, _) = usage_ratio(&metrics);
    Ok(done(settle(t, current, ratio, new_ratio, metrics.len())))
}

/// `selectPolicy` of a scaling direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the biggest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One scaling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `Pods` (true) or `Percent` (false).
    pub pods: bool,
    /// The number of pods or the percentage.
    pub value: i32,
    /// Over how long the change is counted.
    pub period_secs: i64,
}

/// The rules of one direction (`behavior.scaleUp` / `scaleDown`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `stabilizationWindowSeconds`.
    pub window_secs: i64,
    /// `selectPolicy`.
    pub select: Select,
    /// `policies`.
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Upstream's default scale-up rules: no window, the larger of 4 pods
    /// or 100 % per 15 s.
    pub fn default_up() -> Self {
        Rules {
            window_secs: 0,
            select: Select::Max,
            policies: vec![
                Policy {
                    pods: true,
                    value: 4,
                    period_secs: 15,
                },
                Policy {
                    pods: false,
                    value: 100,
                    period_secs: 15,
                },
            ],
        }
    }

    /// Upstream's default scale-down rules: 300 s window, 100 % per 15 s.
    pub fn default_down() -> Self {
        Rules {
            window_secs: 300,
            select: Select::Max,
            policies: vec![Policy {
                pods: false,
                value: 100,
                period_secs: 15,
            }],
        }
    }
}

/// `spec.behavior`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    /// Scale-up rules.
    pub up: Rules,
    /// Scale-down rules.
    pub down: Rules,
}

/// One applied scale change, remembered for the policies' periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: i32,
    at: i64,
    outdated: bool,
}

/// What the controller remembers of one HPA between syncs.
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: Vec<(i64, i32)>,
    up: Vec<ScaleEvent>,
    down: Vec<ScaleEvent>,
}

/// A condition the normalization sets: (reason, message).
pub type Why = (&'static str, &'static str);

/// The result of [`normalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalized {
    /// The replica count to apply.
    pub replicas: i32,
    /// `AbleToScale` (status True): why.
    pub able: Why,
    /// `ScalingLimited`: whether limited, and why.
    pub limited: (bool, Why),
}

const READY_FOR_NEW_SCALE: Why = ("ReadyForNewScale", "recommended size matches current size");
const DOWN_STABILIZED: Why = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const UP_STABILIZED: Why = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const WITHIN_RANGE: Why = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const TOO_FEW: Why = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);
const TOO_MANY: Why = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const UP_LIMIT: Why = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const DOWN_LIMIT: Why = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);

/// Upstream's `normalizeDesiredReplicas` (no `behavior`: a 5 min
/// downscale window, scale-up capped at max(2×current, 4)) and
/// `normalizeDesiredReplicasWithBehaviors`.
// Upstream's inputs one by one, as the tests read them.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    t: &Tuning,
    h: &mut History,
    behavior: Option<&Behavior>,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    now: i64,
) -> Normalized {
    match behavior {
        None => {
            let stabilized = stabilize(h, t.downscale_stabilization_ms, desired, now);
            let able = if stabilized != desired {
                DOWN_STABILIZED
            } else {
                READY_FOR_NEW_SCALE
            };
            let up_limit = (2 * current).max(4);
            let (max_allowed, limit_why) = if max > up_limit {
                (up_limit, UP_LIMIT)
            } else {
                (max, TOO_MANY)
            };
            let (replicas, why) = if stabilized < min {
                (min, TOO_FEW)
            } else if stabilized > max_allowed {
                (max_allowed, limit_why)
            } else {
                (stabilized, WITHIN_RANGE)
            };
            Normalized {
                replicas,
                able,
                limited: (replicas != stabilized, why),
            }
        }
        Some(b) => {
            let (stabilized, why) = stabilize_with_behavior(h, b, current, desired, now);
            let able = if stabilized != desired {
                why
            } else {
                READY_FOR_NEW_SCALE
            };
            let (replicas, why) = rate_limit(h, b, current, stabilized, min, max, now);
            Normalized {
                replicas,
                able,
                limited: (replicas != stabilized, why),
            }
        }
    }
}

/// Records the recommendation; the highest of the window's (upstream's
/// `stabilizeRecommendation`).
fn stabilize(h: &mut History, window_ms: i64, desired: i32, now: i64) -> i32 {
    let cutoff = now - window_ms;
    let mut best = desired;
    let mut old = None;
    for (i, (at, rec)) in h.recommendations.iter().enumerate() {
        if *at < cutoff {
            old = Some(i);
        } else if *rec > best {
            best = *rec;
        }
    }
    record(h, old, desired, now);
    best
}

fn record(h: &mut History, old: Option<usize>, desired: i32, now: i64) {
    match old {
        Some(i) => h.recommendations[i] = (now, desired),
        None => h.recommendations.push((now, desired)),
    }
}

/// Upstream's `stabilizeRecommendationWithBehaviors`: the recommendation
/// kept between the lowest of the scale-up window and the highest of the
/// scale-down window.
fn stabilize_with_behavior(
    h: &mut History,
    b: &Behavior,
    current: i32,
    desired: i32,
    now: i64,
) -> (i32, Why) {
    let up_cutoff = now - b.up.window_secs * 1000;
    let down_cutoff = now - b.down.window_secs * 1000;
    let (mut up, mut down) = (desired, desired);
    let mut old = None;
    for (i, (at, rec)) in h.recommendations.iter().enumerate() {
        if *at > up_cutoff {
            up = up.min(*rec);
        }
        if *at > down_cutoff {
            down = down.max(*rec);
        }
        if *at < up_cutoff && *at < down_cutoff {
            old = Some(i);
        }
    }
    let mut recommendation = current;
    if recommendation < up {
        recommendation = up;
    }
    if recommendation > down {
        recommendation = down;
    }
    record(h, old, desired, now);
    let why = if desired >= current {
        UP_STABILIZED
    } else {
        DOWN_STABILIZED
    };
    (recommendation, why)
}

fn change_in_period(events: &[ScaleEvent], period_secs: i64, now: i64) -> i32 {
    let cutoff = now - period_secs * 1000;
    events
        .iter()
        .filter(|e| e.at > cutoff && !e.outdated)
        .map(|e| e.change)
        .sum()
}

/// Upstream's `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(h: &History, rules: &Rules, current: i32, now: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => i32::min,
        Select::Max => i32::max,
    };
    let mut result = if rules.select == Select::Min {
        i32::MAX
    } else {
        i32::MIN
    };
    for p in &rules.policies {
        let start = current - change_in_period(&h.up, p.period_secs, now)
            + change_in_period(&h.down, p.period_secs, now);
        let proposed = if p.pods {
            start + p.value
        } else {
            (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32
        };
        result = pick(result, proposed);
    }
    result
}

/// Upstream's `calculateScaleDownLimitWithBehaviors` (`Max` picks the
/// policy allowing the most removal: the lowest limit).
fn scale_down_limit(h: &History, rules: &Rules, current: i32, now: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => i32::max,
        Select::Max => i32::min,
    };
    let mut result = if rules.select == Select::Min {
        i32::MIN
    } else {
        i32::MAX
    };
    for p in &rules.policies {
        let start = current - change_in_period(&h.up, p.period_secs, now)
            + change_in_period(&h.down, p.period_secs, now);
        let proposed = if p.pods {
            start - p.value
        } else {
            (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32
        };
        result = pick(result, proposed);
    }
    result
}

/// Upstream's `convertDesiredReplicasWithBehaviorRate`.
fn rate_limit(
    h: &History,
    b: &Behavior,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    now: i64,
) -> (i32, Why) {
    if desired > current {
        let limit = scale_up_limit(h, &b.up, current, now).max(current);
        let (allowed, why) = if max > limit {
            (limit, UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        if desired > allowed {
            return (allowed, why);
        }
    } else if desired < current {
        let limit = scale_down_limit(h, &b.down, current, now).min(current);
        let (allowed, why) = if min < limit {
            (limit, DOWN_LIMIT)
        } else {
            (min, TOO_FEW)
        };
        if desired < allowed {
            return (allowed, why);
        }
    }
    (desired, WITHIN_RANGE)
}

/// Remembers an applied change for the policies' periods (upstream's
/// `storeScaleEvent`; only HPAs with `behavior` keep them).
pub fn store_scale_event(
    h: &mut History,
    behavior: Option<&Behavior>,
    prev: i32,
    new: i32,
    now: i64,
) {
    let Some(b) = behavior else { return };
    let (events, rules, change) = if new > prev {
        (&mut h.up, &b.up, new - prev)
    } else {
        (&mut h.down, &b.down, prev - new)
    };
    let longest = rules
        .policies
        .iter()
        .map(|p| p.period_secs)
        .max()
        .unwrap_or(0);
    let cutoff = now - longest * 1000;
    for e in events.iter_mut() {
        if e.at < cutoff {
            e.outdated = true;
        }
    }
    let ev = ScaleEvent {
        change,
        at: now,
        outdated: false,
    };
    match events.iter().position(|e| e.outdated) {
        Some(i) => events[i] = ev,
        None => events.push(ev),
    }
}

/// Upstream's `convertDesiredReplicasWithRules` limits for a target
/// outside [min, max] before any metric is read.
pub fn out_of_range(current: i32, min: i32, max: i32) -> Option<(i32, &'static str)> {
    if current > max {
        Some((max, "Current number of replicas above Spec.MaxReplicas"))
    } else if current < min {
        Some((min, "Current number of replicas below Spec.MinReplicas"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 10_000_000_000;
    const MIN: i64 = 60_000;

    /// A Running, Ready pod started long ago with `request` millicores.
    fn pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, NOW - 20 * MIN)),
            start_time: Some(NOW - 30 * MIN),
            request: Ok(request),
        }
    }

    fn metric(value: i64) -> PodMetric {
        PodMetric {
            value,
            timestamp: NOW - 5_000,
            window: 15_000,
        }
    }

    fn metrics(v: &[(&str, i64)]) -> BTreeMap<String, PodMetric> {
        v.iter().map(|(n, x)| (n.to_string(), metric(*x))).collect()
    }

    #[test]
    fn utilization_scales_up_by_the_ratio() {
        // 2 pods of 100m request using 150m and 170m: 160 % vs 50 %.
        let pods = [pod("a", 100), pod("b", 100)];
        let p = resource_replicas(
            &Tuning::default(),
            2,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 150), ("b", 170)]),
            NOW,
        )
        .unwrap();
        assert_eq!(
            p,
            Proposal {
                replicas: 7,
                utilization: Some(160),
                average: 160
            }
        );
    }

    #[test]
    fn within_tolerance_keeps_the_count() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 54 %: ratio 1.08, inside 10 %.
        let p = resource_replicas(
            &Tuning::default(),
            2,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 54), ("b", 54)]),
            NOW,
        )
        .unwrap();
        assert_eq!(p.replicas, 2);
        assert_eq!(p.utilization, Some(54));
        // 56 %: ratio 1.12, outside: ceil(1.12 * 2) = 3.
        let p = resource_replicas(
            &Tuning::default(),
            2,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 56), ("b", 56)]),
            NOW,
        )
        .unwrap();
        assert_eq!(p.replicas, 3);
    }

    #[test]
    fn tolerances_apply_per_direction_and_from_the_flags() {
        let pods = [pod("a", 100), pod("b", 100)];
        let at = |t: &Tuning, used: i64| {
            resource_replicas(
                t,
                2,
                50,
                "cpu",
                &pods,
                &metrics(&[("a", used), ("b", used)]),
                NOW,
            )
            .unwrap()
            .replicas
        };
        // A cluster-wide tolerance of 20 % (the flag): 56 % and 44 % of a
        // 50 % target (ratios 1.12 and 0.88) no longer scale.
        let wide = Tuning {
            tolerances: Tolerances {
                scale_down: 0.2,
                scale_up: 0.2,
            },
            ..Tuning::default()
        };
        assert_eq!((at(&wide, 56), at(&wide, 44)), (2, 2));
        // 0 % up, 50 % down (an HPA's behavior): the slightest rise
        // scales up, a fall to 30 % (ratio 0.6) does not scale down.
        let skewed = Tuning {
            tolerances: Tolerances {
                scale_down: 0.5,
                scale_up: 0.0,
            },
            ..Tuning::default()
        };
        assert_eq!(at(&skewed, 51), 3);
        assert_eq!(at(&skewed, 30), 2);
        assert_eq!(at(&skewed, 20), 1, "ratio 0.4 is past 50 %");
        assert!(skewed.tolerances.is_within(1.0));
        // Half the target: at the edge of 50 % (kept), past the default
        // 10 % (halved).
        assert_eq!(at(&skewed, 25), 2);
        assert_eq!(at(&Tuning::default(), 25), 1);
    }

    #[test]
    fn cpu_initialization_and_readiness_delay_come_from_the_flags() {
        // Started 2 min ago, Ready since 1 min, sampled after a full
        // window: with the default 5 min initialization period the pod is
        // still initializing but its sample counts (ready, full window).
        let mut young = pod("a", 100);
        young.start_time = Some(NOW - 2 * MIN);
        young.ready = Some((true, NOW - MIN));
        // Unready, turned so 20 s after its start 10 min ago: never ready
        // with the default 30 s delay, counted as ready (its sample used)
        // with a 10 s delay.
        let mut late = pod("b", 100);
        late.start_time = Some(NOW - 10 * MIN);
        late.ready = Some((false, NOW - 10 * MIN + 20_000));
        let m = metrics(&[("a", 100), ("b", 100)]);
        let d = Tuning::default();
        let g = group_pods(&d, &[young.clone(), late.clone()], &m, true, NOW);
        assert_eq!((g.ready, g.unready.len()), (1, 1));
        assert!(g.unready.contains("b"));
        let short = Tuning {
            initial_readiness_delay_ms: 10_000,
            ..d
        };
        let g = group_pods(&short, &[young.clone(), late.clone()], &m, true, NOW);
        assert_eq!((g.ready, g.unready.len()), (2, 0));
        // A sample taken before a full window since the pod turned Ready
        // is not trusted within the initialization period, and is once
        // the period (1 min by the flag) is over.
        let mut fresh = pod("c", 100);
        fresh.start_time = Some(NOW - 2 * MIN);
        fresh.ready = Some((true, NOW - 10_000));
        let m = metrics(&[("c", 100)]);
        let g = group_pods(&d, std::slice::from_ref(&fresh), &m, true, NOW);
        assert_eq!(g.ready, 0);
        let quick = Tuning {
            cpu_initialization_period_ms: MIN,
            ..d
        };
        let g = group_pods(&quick, std::slice::from_ref(&fresh), &m, true, NOW);
        assert_eq!(g.ready, 1);
    }

    #[test]
    fn downscale_stabilization_comes_from_the_flag() {
        let t = Tuning {
            downscale_stabilization_ms: MIN,
            ..Tuning::default()
        };
        let mut h = History::default();
        normalize(&t, &mut h, None, 3, 3, 1, 10, NOW);
        // 2 min later the 1 min window has forgotten the 3.
        let n = normalize(&t, &mut h, None, 3, 1, 1, 10, NOW + 2 * MIN);
        assert_eq!(n.replicas, 1);
        // The default 5 min window still holds it.
        let mut h = History::default();
        let d = Tuning::default();
        normalize(&d, &mut h, None, 3, 3, 1, 10, NOW);
        let n = normalize(&d, &mut h, None, 3, 1, 1, 10, NOW + 2 * MIN);
        assert_eq!((n.replicas, n.able), (3, DOWN_STABILIZED));
        // A zero window does not stabilize at all.
        let zero = Tuning {
            downscale_stabilization_ms: 0,
            ..d
        };
        let mut h = History::default();
        normalize(&zero, &mut h, None, 3, 3, 1, 10, NOW);
        let n = normalize(&zero, &mut h, None, 3, 1, 1, 10, NOW + 1);
        assert_eq!(n.replicas, 1);
    }

    #[test]
    fn scales_down_when_idle() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        let p = resource_replicas(
            &Tuning::default(),
            3,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 1), ("b", 0), ("c", 2)]),
            NOW,
        )
        .unwrap();
        assert_eq!(p.replicas, 1, "ceil(0.02 * 3)");
        assert_eq!(p.utilization, Some(1));
    }

    #[test]
    fn missing_request_is_an_error_naming_the_container() {
        let mut b = pod("b", 0);
        b.request = Err("burn".into());
        let e = resource_replicas(
            &Tuning::default(),
            2,
            50,
            "cpu",
            &[pod("a", 100), b],
            &metrics(&[("a", 10), ("b", 10)]),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e, "missing request for cpu in container burn of Pod b");
    }

    #[test]
    fn no_pods_or_no_metrics_are_errors() {
        assert_eq!(
            resource_replicas(&Tuning::default(), 1, 50, "cpu", &[], &BTreeMap::new(), NOW)
                .unwrap_err(),
            "no pods returned by selector while calculating replica count"
        );
        let mut p = pod("a", 100);
        p.phase = "Pending".into();
        assert_eq!(
            resource_replicas(
                &Tuning::default(),
                1,
                50,
                "cpu",
                &[p],
                &metrics(&[("a", 10)]),
                NOW
            )
            .unwrap_err(),
            "did not receive metrics for targeted pods (pods might be unready)"
        );
    }

    #[test]
    fn missing_pods_count_conservatively() {
        // Scale-up: the missing pod counts as 0 %, damping the step.
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        let p = resource_replicas(
            &Tuning::default(),
            3,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 100), ("b", 100)]),
            NOW,
        )
        .unwrap();
        // Raw ratio 2.0 over 2 pods; with c at 0: 200/300 → 66 % → 1.33 → ceil(1.33*3) = 4.
        assert_eq!(p.replicas, 4);
        assert_eq!(p.utilization, Some(100));
        // Scale-down: the missing pod counts as 100 %, so no flip to 1.
        let p = resource_replicas(
            &Tuning::default(),
            3,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 10), ("b", 10)]),
            NOW,
        )
        .unwrap();
        // (10+10+100)/300 = 40 % → 0.8 → ceil(0.8*3) = 3: unchanged.
        assert_eq!(p.replicas, 3);
        // A flip of direction keeps the count: 40 % measured, missing at
        // 100 % → 60 % > 50 %.
        let pods = [pod("a", 100), pod("b", 100)];
        let p = resource_replicas(
            &Tuning::default(),
            2,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 40)]),
            NOW,
        )
        .unwrap();
        assert_eq!(p.replicas, 2);
    }

    #[test]
    fn unready_pods_count_as_zero_on_scale_up_only() {
        let mut c = pod("c", 100);
        c.ready = Some((false, NOW - 10_000));
        c.start_time = Some(NOW - 20_000);
        let pods = [pod("a", 100), pod("b", 100), c];
        let m = metrics(&[("a", 100), ("b", 100), ("c", 100)]);
        // 100 % over a and b (ratio 2); c (initializing, unready) at 0:
        // 66 % → ratio 1.33 → ceil(1.33 * 3) = 4.
        let p = resource_replicas(&Tuning::default(), 3, 50, "cpu", &pods, &m, NOW).unwrap();
        assert_eq!(p.replicas, 4);
        // Scale-down ignores the unready pod: 10 % over a and b → ceil(0.2*2) = 1.
        let m = metrics(&[("a", 10), ("b", 10), ("c", 10)]);
        let p = resource_replicas(&Tuning::default(), 3, 50, "cpu", &pods, &m, NOW).unwrap();
        assert_eq!(p.replicas, 1);
    }

    #[test]
    fn cpu_sample_from_before_readiness_is_unready() {
        // Started 1 min ago, Ready 2 s ago: the 15 s window began before it.
        let mut a = pod("a", 100);
        a.start_time = Some(NOW - MIN);
        a.ready = Some((true, NOW - 2_000));
        let g = group_pods(
            &Tuning::default(),
            &[a.clone()],
            &metrics(&[("a", 90)]),
            true,
            NOW,
        );
        assert!(g.unready.contains("a"));
        // Memory does not care.
        let g = group_pods(&Tuning::default(), &[a], &metrics(&[("a", 90)]), false, NOW);
        assert_eq!(g.ready, 1);
        // Long started, unready but was ready once: counted as ready.
        let mut b = pod("b", 100);
        b.ready = Some((false, NOW - 5 * MIN));
        let g = group_pods(&Tuning::default(), &[b], &metrics(&[("b", 90)]), true, NOW);
        assert_eq!(g.ready, 1);
    }

    #[test]
    fn deleted_and_failed_pods_are_ignored() {
        let mut a = pod("a", 100);
        a.deleting = true;
        let mut b = pod("b", 100);
        b.phase = "Failed".into();
        let pods = [a, b, pod("c", 100)];
        let p = resource_replicas(
            &Tuning::default(),
            3,
            50,
            "cpu",
            &pods,
            &metrics(&[("a", 900), ("b", 900), ("c", 50)]),
            NOW,
        )
        .unwrap();
        assert_eq!(p.utilization, Some(50));
        assert_eq!(p.replicas, 3, "within tolerance");
    }

    #[test]
    fn average_value_targets() {
        // Memory 200Mi average vs 100Mi target: double.
        let mi = 1024 * 1024 * 1000;
        let pods = [pod("a", 0), pod("b", 0)];
        let m = metrics(&[("a", 150 * mi), ("b", 250 * mi)]);
        let p = raw_resource_replicas(&Tuning::default(), 2, 100 * mi, "memory", &pods, &m, NOW)
            .unwrap();
        assert_eq!(
            p,
            Proposal {
                replicas: 4,
                utilization: None,
                average: 200 * mi
            }
        );
        // Missing pod on a scale-down counts as the target.
        let pods = [pod("a", 0), pod("b", 0), pod("c", 0)];
        let m = metrics(&[("a", 10 * mi), ("b", 10 * mi)]);
        let p = raw_resource_replicas(&Tuning::default(), 3, 100 * mi, "memory", &pods, &m, NOW)
            .unwrap();
        // (10+10+100)/3 = 40 → 0.4 → ceil(1.2) = 2.
        assert_eq!(p.replicas, 2);
    }

    #[test]
    fn without_behavior_scale_up_is_capped_and_down_stabilized() {
        let mut h = History::default();
        let n = normalize(&Tuning::default(), &mut h, None, 1, 10, 1, 10, NOW);
        assert_eq!(n.replicas, 4, "max(2*1, 4)");
        assert_eq!(n.limited, (true, UP_LIMIT));
        assert_eq!(n.able, READY_FOR_NEW_SCALE);
        // A lower recommendation within 5 minutes keeps the highest.
        let n = normalize(&Tuning::default(), &mut h, None, 4, 2, 1, 10, NOW + MIN);
        assert_eq!(n.replicas, 8, "the recommendation of 10, capped at 2*4");
        assert_eq!(n.able, DOWN_STABILIZED);
        // Past the window, the old recommendations are gone.
        let mut h = History::default();
        normalize(&Tuning::default(), &mut h, None, 3, 3, 1, 10, NOW);
        let n = normalize(&Tuning::default(), &mut h, None, 3, 1, 1, 10, NOW + 6 * MIN);
        assert_eq!(n.replicas, 1);
        assert_eq!(n.limited, (false, WITHIN_RANGE));
        // Below min.
        let n = normalize(
            &Tuning::default(),
            &mut History::default(),
            None,
            3,
            1,
            2,
            10,
            NOW,
        );
        assert_eq!((n.replicas, n.limited), (2, (true, TOO_FEW)));
        // Above max.
        let n = normalize(
            &Tuning::default(),
            &mut History::default(),
            None,
            3,
            6,
            1,
            5,
            NOW,
        );
        assert_eq!((n.replicas, n.limited), (5, (true, TOO_MANY)));
    }

    fn behavior() -> Behavior {
        Behavior {
            up: Rules::default_up(),
            down: Rules::default_down(),
        }
    }

    #[test]
    fn default_behavior_down_window_is_300s_and_up_is_immediate() {
        let b = behavior();
        let mut h = History::default();
        let n = normalize(&Tuning::default(), &mut h, Some(&b), 2, 3, 1, 10, NOW);
        assert_eq!(n.replicas, 3);
        // A drop 60 s later is held by the 300 s window.
        let n = normalize(&Tuning::default(), &mut h, Some(&b), 3, 1, 1, 10, NOW + MIN);
        assert_eq!(n.replicas, 3);
        assert_eq!(n.able, DOWN_STABILIZED);
        // After the window the drop goes through (100 % per 15 s allows it).
        let n = normalize(
            &Tuning::default(),
            &mut h,
            Some(&b),
            3,
            1,
            1,
            10,
            NOW + 6 * MIN + 1000,
        );
        assert_eq!(n.replicas, 1);
        assert_eq!(n.able, READY_FOR_NEW_SCALE);
    }

    #[test]
    fn scale_up_window_takes_the_lowest() {
        let mut b = behavior();
        b.up.window_secs = 60;
        let mut h = History::default();
        normalize(&Tuning::default(), &mut h, Some(&b), 2, 2, 1, 10, NOW);
        let n = normalize(
            &Tuning::default(),
            &mut h,
            Some(&b),
            2,
            5,
            1,
            10,
            NOW + 10_000,
        );
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able, UP_STABILIZED);
    }

    #[test]
    fn policies_limit_the_rate_and_count_recent_events() {
        let mut b = behavior();
        b.up.policies = vec![Policy {
            pods: true,
            value: 1,
            period_secs: 60,
        }];
        let mut h = History::default();
        let n = normalize(&Tuning::default(), &mut h, Some(&b), 2, 6, 1, 10, NOW);
        assert_eq!((n.replicas, n.limited), (3, (true, UP_LIMIT)));
        store_scale_event(&mut h, Some(&b), 2, 3, NOW);
        // 30 s later the period still holds the +1: no more room.
        let n = normalize(
            &Tuning::default(),
            &mut h,
            Some(&b),
            3,
            6,
            1,
            10,
            NOW + 30_000,
        );
        assert_eq!(n.replicas, 3);
        // After the period, one more.
        let n = normalize(
            &Tuning::default(),
            &mut h,
            Some(&b),
            3,
            6,
            1,
            10,
            NOW + 61_000,
        );
        assert_eq!(n.replicas, 4);
    }

    #[test]
    fn select_policy_max_min_disabled() {
        let mut h = History::default();
        let mut b = behavior();
        b.down.window_secs = 0;
        b.down.policies = vec![
            Policy {
                pods: true,
                value: 1,
                period_secs: 15,
            },
            Policy {
                pods: false,
                value: 50,
                period_secs: 15,
            },
        ];
        // Max: the policy allowing the biggest change (50 % of 10 = 5 gone).
        let n = normalize(&Tuning::default(), &mut h, Some(&b), 10, 1, 1, 10, NOW);
        assert_eq!((n.replicas, n.limited), (5, (true, DOWN_LIMIT)));
        b.down.select = Select::Min;
        let n = normalize(
            &Tuning::default(),
            &mut History::default(),
            Some(&b),
            10,
            1,
            1,
            10,
            NOW,
        );
        assert_eq!(n.replicas, 9);
        b.down.select = Select::Disabled;
        let n = normalize(
            &Tuning::default(),
            &mut History::default(),
            Some(&b),
            10,
            1,
            1,
            10,
            NOW,
        );
        assert_eq!(n.replicas, 10);
        // Scale-up Percent: ceil(3 * 1.5) = 5.
        b.up.policies = vec![Policy {
            pods: false,
            value: 50,
            period_secs: 15,
        }];
        let n = normalize(
            &Tuning::default(),
            &mut History::default(),
            Some(&b),
            3,
            9,
            1,
            10,
            NOW,
        );
        assert_eq!(n.replicas, 5);
        // The max bound wins over a generous policy.
        let n = normalize(
            &Tuning::default(),
            &mut History::default(),
            Some(&b),
            3,
            9,
            1,
            4,
            NOW,
        );
        assert_eq!((n.replicas, n.limited), (4, (true, TOO_MANY)));
    }

    #[test]
    fn out_of_range_targets_are_brought_back() {
        assert_eq!(
            out_of_range(5, 1, 3),
            Some((3, "Current number of replicas above Spec.MaxReplicas"))
        );
        assert_eq!(out_of_range(0, 1, 3).map(|x| x.0), Some(1));
        assert_eq!(out_of_range(2, 1, 3), None);
    }
}
