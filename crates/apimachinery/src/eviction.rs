//! kubelet's eviction settings (`--eviction-hard`, `--eviction-soft`,
//! `--eviction-soft-grace-period`, `--eviction-minimum-reclaim`,
//! `--eviction-max-pod-grace-period`,
//! `--eviction-pressure-transition-period`; RKE2's `kubelet-arg:
//! [eviction-hard=…]`): `<signal><value>` pairs such as
//! `memory.available<100Mi` or `nodefs.available<10%`, `<signal>=<value>`
//! pairs for grace periods and minimum reclaims, parsed with kubelet's
//! signal names, defaults and messages.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::quantity::parse_quantity;

/// The signals kubelet knows (`evictionapi.Signal`).
pub const SIGNALS: [&str; 9] = [
    "memory.available",
    "allocatableMemory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
];

/// RKE2's (k3s's) default `eviction-hard`, which it passes to every
/// kubelet instead of kubelet's own (`memory.available<100Mi`,
/// `nodefs.available<10%`, `imagefs.available<15%`, inodes 5%): disk
/// only, at 5%. Used when `eviction-hard` is not given; given, it replaces
/// all of them, as kubelet does.
pub const DEFAULT_HARD: &str = "imagefs.available<5%,nodefs.available<5%";

/// RKE2's (k3s's) default `eviction-minimum-reclaim`, replaced as a whole
/// by a given one.
pub const DEFAULT_MINIMUM_RECLAIM: &str = "imagefs.available=10%,nodefs.available=10%";

/// A threshold's value: an amount, or a share of the capacity.
#[derive(Debug, Clone, PartialEq)]
pub enum ThresholdValue {
    /// An amount (bytes for memory and filesystems, a count otherwise).
    Quantity(i128),
    /// A percentage of the capacity (0 < p <= 100).
    Percentage(f64),
}

// Percentages are never NaN (parsing refuses what is not in (0, 100]).
impl Eq for ThresholdValue {}

/// One hard eviction threshold: the signal falls below the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    /// The signal, one of [`SIGNALS`].
    pub signal: String,
    /// Below what it is met.
    pub value: ThresholdValue,
    /// The value as written (for messages: `Threshold quantity: 100Mi`).
    pub text: String,
}

impl Threshold {
    /// The amount below which the signal meets the threshold, for a
    /// resource of `capacity`.
    pub fn quantity(&self, capacity: i128) -> i128 {
        value_quantity(&self.value, capacity)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}<{}", self.signal, self.text)
    }
}

/// Parses a comma-separated threshold list; the error names the pair and
/// what is wrong with it, in kubelet's words.
pub fn parse_thresholds(s: &str) -> Result<Vec<Threshold>, String> {
    let mut out: Vec<Threshold> = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((signal, value)) = pair.split_once('<') else {
            return Err(format!(
                "invalid eviction threshold syntax {pair:?}, expected <signal><operator><value>"
            ));
        };
        if !SIGNALS.contains(&signal) {
            return Err(format!("unsupported eviction signal {signal:?}"));
        }
        if out.iter().any(|t| t.signal == signal) {
            return Err(format!(
                "found duplicate eviction threshold for signal {signal:?}"
            ));
        }
        // kubelet ignores 0% and 100% (kind turns the disk signals off
        // with `nodefs.available<0%`).
        if value == "0%" || value == "100%" {
            continue;
        }
        let parsed = if let Some(p) = value.strip_suffix('%') {
            match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => ThresholdValue::Percentage(p),
                _ => {
                    return Err(format!(
                        "eviction percentage threshold {signal} must be > 0% and <= 100%: {value}"
                    ));
                }
            }
        } else {
            let q =
                parse_quantity(value).map_err(|e| format!("eviction threshold {pair:?}: {e}"))?;
            if q.as_nanos() <= 0 {
                return Err(format!(
                    "eviction threshold {signal} must be positive: {value}"
                ));
            }
            ThresholdValue::Quantity(q.value())
        };
        out.push(Threshold {
            signal: signal.to_string(),
            value: parsed,
            text: value.to_string(),
        });
    }
    Ok(out)
}

/// The default hard thresholds ([`DEFAULT_HARD`]).
pub fn default_hard() -> Vec<Threshold> {
    parse_thresholds(DEFAULT_HARD).expect("the defaults parse")
}

/// The default minimum reclaims ([`DEFAULT_MINIMUM_RECLAIM`]).
pub fn default_minimum_reclaim() -> BTreeMap<String, ThresholdValue> {
    parse_minimum_reclaims(DEFAULT_MINIMUM_RECLAIM).expect("the defaults parse")
}

/// kubelet's default `--eviction-pressure-transition-period`.
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);

/// The node-pressure eviction settings of a node, as kubelet's eviction
/// manager takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionConfig {
    /// Hard thresholds: met, a pod is killed at once.
    pub hard: Vec<Threshold>,
    /// Soft thresholds, each with the grace period it must be met for
    /// (without a break) before pods are evicted.
    pub soft: Vec<(Threshold, Duration)>,
    /// `eviction-max-pod-grace-period`: the longest termination grace a
    /// pod evicted for a soft threshold gets (kubelet's default 0: the
    /// pod's own `terminationGracePeriodSeconds` is capped at 0 seconds,
    /// i.e. it is killed at once, unless this is set).
    pub max_pod_grace_period_seconds: i64,
    /// `eviction-pressure-transition-period`: how long a pressure
    /// condition stays True after its signal recovered.
    pub pressure_transition_period: Duration,
    /// `eviction-minimum-reclaim` per signal: once met, a threshold stays
    /// met until the signal is this much above it.
    pub minimum_reclaim: BTreeMap<String, ThresholdValue>,
    /// `kube-reserved`: held back from pods for the node's own agents
    /// (allocatable is the capacity less this, `system-reserved` and the
    /// hard eviction thresholds).
    pub kube_reserved: Reserved,
    /// `system-reserved`: held back from pods for the operating system.
    pub system_reserved: Reserved,
    /// `image-gc-high-threshold`: image filesystem use (percent) at which
    /// unused images are garbage-collected.
    pub image_gc_high_threshold: u8,
    /// `image-gc-low-threshold`: the use (percent) image garbage
    /// collection frees down to.
    pub image_gc_low_threshold: u8,
}

/// kubelet's default `image-gc-high-threshold`.
pub const DEFAULT_IMAGE_GC_HIGH: u8 = 85;
/// kubelet's default `image-gc-low-threshold`.
pub const DEFAULT_IMAGE_GC_LOW: u8 = 80;

/// A reservation (`kube-reserved`, `system-reserved`): what is held back
/// from pods, per resource; zero where not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// `cpu`, millicores.
    pub cpu_milli: i128,
    /// `memory`, bytes.
    pub memory: i128,
    /// `ephemeral-storage`, bytes.
    pub ephemeral_storage: i128,
    /// `pid`, processes.
    pub pid: i128,
}

impl Reserved {
    /// Both reservations together.
    pub fn plus(&self, o: &Reserved) -> Reserved {
        Reserved {
            cpu_milli: self.cpu_milli + o.cpu_milli,
            memory: self.memory + o.memory,
            ephemeral_storage: self.ephemeral_storage + o.ephemeral_storage,
            pid: self.pid + o.pid,
        }
    }
}

/// Parses a reservation as kubelet's `--kube-reserved`/`--system-reserved`
/// (`cpu=500m,memory=1Gi,ephemeral-storage=1Gi,pid=100`), with kubelet's
/// messages: only those four resources, non-negative quantities.
pub fn parse_reserved(s: &str) -> Result<Reserved, String> {
    let mut r = Reserved::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("malformed pair {pair:?}, expect string=string"));
        };
        let (k, v) = (k.trim(), v.trim());
        if seen.contains(&k) {
            return Err(format!("duplicate reservation of {k:?}"));
        }
        seen.push(k);
        let slot = match k {
            "cpu" => &mut r.cpu_milli,
            "memory" => &mut r.memory,
            "ephemeral-storage" => &mut r.ephemeral_storage,
            "pid" => &mut r.pid,
            _ => return Err(format!("cannot reserve {k:?} resource")),
        };
        let q = parse_quantity(v)
            .map_err(|e| format!("failed to parse quantity {v:?} for {k:?} resource: {e}"))?;
        if q.as_nanos() < 0 {
            return Err(format!(
                "resource quantity for {k:?} cannot be negative: {v}"
            ));
        }
        *slot = if k == "cpu" { q.as_milli() } else { q.value() };
    }
    Ok(r)
}

/// Checks the image garbage collection thresholds as kubelet validates
/// its configuration.
pub fn check_image_gc(high: i64, low: i64) -> Result<(), String> {
    if !(0..=100).contains(&high) {
        return Err(format!(
            "imageGCHighThresholdPercent (--image-gc-high-threshold) {high} must be between 0 and 100, inclusive"
        ));
    }
    if !(0..=100).contains(&low) {
        return Err(format!(
            "imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be between 0 and 100, inclusive"
        ));
    }
    if low >= high {
        return Err(format!(
            "imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) {high}"
        ));
    }
    Ok(())
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            hard: default_hard(),
            soft: Vec::new(),
            max_pod_grace_period_seconds: 0,
            pressure_transition_period: DEFAULT_PRESSURE_TRANSITION_PERIOD,
            minimum_reclaim: default_minimum_reclaim(),
            kube_reserved: Reserved::default(),
            system_reserved: Reserved::default(),
            image_gc_high_threshold: DEFAULT_IMAGE_GC_HIGH,
            image_gc_low_threshold: DEFAULT_IMAGE_GC_LOW,
        }
    }
}

impl EvictionConfig {
    /// Puts the parsed flags together as kubelet's `ParseThresholdConfig`
    /// does: every soft threshold needs a grace period.
    pub fn new(
        hard: Vec<Threshold>,
        soft: Vec<Threshold>,
        grace: BTreeMap<String, Duration>,
        minimum_reclaim: BTreeMap<String, ThresholdValue>,
    ) -> Result<EvictionConfig, String> {
        let mut with_grace = Vec::new();
        for t in soft {
            let Some(g) = grace.get(&t.signal) else {
                return Err(format!(
                    "grace period must be specified for the soft eviction threshold {}",
                    t.signal
                ));
            };
            with_grace.push((t, *g));
        }
        Ok(EvictionConfig {
            hard,
            soft: with_grace,
            minimum_reclaim,
            ..Default::default()
        })
    }
}

fn signal_pairs(s: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((signal, value)) = pair.split_once('=') else {
            return Err(format!(
                "invalid eviction {what} syntax {pair:?}, expected <signal>=<value>"
            ));
        };
        if !SIGNALS.contains(&signal) {
            return Err(format!("unsupported eviction signal {signal:?}"));
        }
        if out.iter().any(|(s, _)| s == signal) {
            return Err(format!("duplicate eviction {what} for signal {signal:?}"));
        }
        out.push((signal.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Parses `eviction-soft-grace-period` (`memory.available=1m30s,…`) with
/// `duration` reading each value (a Go duration).
pub fn parse_grace_periods(
    s: &str,
    duration: impl Fn(&str) -> Result<Duration, String>,
) -> Result<BTreeMap<String, Duration>, String> {
    let mut out = BTreeMap::new();
    for (signal, value) in signal_pairs(s, "grace period")? {
        let d = duration(&value).map_err(|e| format!("eviction grace period {signal}: {e}"))?;
        if d.is_zero() {
            return Err(format!(
                "eviction grace period must be positive: {signal}={value}"
            ));
        }
        out.insert(signal, d);
    }
    Ok(out)
}

/// Parses `eviction-minimum-reclaim` (`memory.available=0Mi,nodefs.available=500Mi,imagefs.available=2%`).
pub fn parse_minimum_reclaims(s: &str) -> Result<BTreeMap<String, ThresholdValue>, String> {
    let mut out = BTreeMap::new();
    for (signal, value) in signal_pairs(s, "minimum reclaim")? {
        let v = if let Some(p) = value.strip_suffix('%') {
            match p.parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => ThresholdValue::Percentage(p),
                _ => {
                    return Err(format!(
                        "eviction minimum reclaim {signal} must be >= 0% and <= 100%: {value}"
                    ));
                }
            }
        } else {
            let q = parse_quantity(&value)
                .map_err(|e| format!("eviction minimum reclaim {signal}={value}: {e}"))?;
            if q.as_nanos() < 0 {
                return Err(format!(
                    "negative reclaim defined for signal {signal}: {value}"
                ));
            }
            ThresholdValue::Quantity(q.value())
        };
        out.insert(signal, v);
    }
    Ok(out)
}

/// The amount `value` stands for against `capacity`.
pub fn value_quantity(value: &ThresholdValue, capacity: i128) -> i128 {
    match value {
        ThresholdValue::Quantity(q) => *q,
        ThresholdValue::Percentage(p) => (capacity as f64 * p / 100.0) as i128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_kubelet() {
        let t = parse_thresholds("memory.available<1Gi, nodefs.available<10%").unwrap();
        assert_eq!(t[0].value, ThresholdValue::Quantity(1 << 30));
        assert_eq!(t[0].to_string(), "memory.available<1Gi");
        assert_eq!(t[1].quantity(1000), 100);
        assert_eq!(default_hard().len(), 2);
        assert_eq!(default_minimum_reclaim().len(), 2);
        for (bad, want) in [
            ("memory.available>1Gi", "invalid eviction threshold syntax"),
            (
                "memory.free<1Gi",
                "unsupported eviction signal \"memory.free\"",
            ),
            ("nodefs.available<101%", "must be > 0% and <= 100%"),
            (
                "memory.available<lots",
                "eviction threshold \"memory.available<lots\"",
            ),
            ("memory.available<1Gi,memory.available<2Gi", "duplicate"),
            ("memory.available<0", "must be positive"),
        ] {
            let e = parse_thresholds(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn zero_and_full_percentages_are_ignored_as_kubelet() {
        let t =
            parse_thresholds("memory.available<100Mi,nodefs.available<0%,imagefs.available<100%")
                .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].signal, "memory.available");
    }

    fn secs(s: &str) -> Result<Duration, String> {
        s.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is not a duration"))
    }

    #[test]
    fn soft_thresholds_need_grace_periods() {
        let soft = parse_thresholds("memory.available<1Gi,nodefs.available<20%").unwrap();
        let grace = parse_grace_periods("memory.available=30s", secs).unwrap();
        let e =
            EvictionConfig::new(default_hard(), soft.clone(), grace, BTreeMap::new()).unwrap_err();
        assert_eq!(
            e,
            "grace period must be specified for the soft eviction threshold nodefs.available"
        );
        let grace =
            parse_grace_periods("memory.available=30s, nodefs.available=90s", secs).unwrap();
        let c = EvictionConfig::new(default_hard(), soft, grace, BTreeMap::new()).unwrap();
        assert_eq!(c.soft[1].1, Duration::from_secs(90));
        assert_eq!(c.pressure_transition_period, Duration::from_secs(300));
        for (bad, want) in [
            (
                "memory.available:30s",
                "invalid eviction grace period syntax",
            ),
            ("memory.free=30s", "unsupported eviction signal"),
            (
                "memory.available=soon",
                "eviction grace period memory.available",
            ),
            ("memory.available=0s", "must be positive"),
            ("memory.available=1s,memory.available=2s", "duplicate"),
        ] {
            let e = parse_grace_periods(bad, secs).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn reservations_parse_as_kubelet() {
        let r = parse_reserved("cpu=500m, memory=1Gi,ephemeral-storage=1Gi,pid=100").unwrap();
        assert_eq!(
            r,
            Reserved {
                cpu_milli: 500,
                memory: 1 << 30,
                ephemeral_storage: 1 << 30,
                pid: 100
            }
        );
        let s = parse_reserved("cpu=1,memory=512Mi").unwrap();
        assert_eq!(r.plus(&s).cpu_milli, 1500);
        assert_eq!(r.plus(&s).memory, (1 << 30) + (512 << 20));
        assert_eq!(parse_reserved("").unwrap(), Reserved::default());
        for (bad, want) in [
            ("memory", "malformed pair \"memory\", expect string=string"),
            ("gpu=1", "cannot reserve \"gpu\" resource"),
            (
                "memory=lots",
                "failed to parse quantity \"lots\" for \"memory\" resource",
            ),
            (
                "cpu=-1",
                "resource quantity for \"cpu\" cannot be negative: -1",
            ),
            ("cpu=1,cpu=2", "duplicate reservation of \"cpu\""),
        ] {
            let e = parse_reserved(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn image_gc_thresholds_are_checked() {
        assert!(check_image_gc(85, 80).is_ok());
        assert!(
            check_image_gc(101, 80)
                .unwrap_err()
                .contains("--image-gc-high-threshold) 101 must be between 0 and 100")
        );
        assert!(
            check_image_gc(85, -1)
                .unwrap_err()
                .contains("low-threshold) -1")
        );
        assert!(
            check_image_gc(80, 80)
                .unwrap_err()
                .contains("80 must be less than imageGCHighThresholdPercent")
        );
    }

    #[test]
    fn minimum_reclaims_parse() {
        let m = parse_minimum_reclaims(
            "memory.available=0Mi,nodefs.available=500Mi,imagefs.available=2%",
        )
        .unwrap();
        assert_eq!(m["nodefs.available"], ThresholdValue::Quantity(500 << 20));
        assert_eq!(value_quantity(&m["imagefs.available"], 1000), 20);
        for (bad, want) in [
            (
                "nodefs.available<1Gi",
                "invalid eviction minimum reclaim syntax",
            ),
            ("nodefs.available=101%", "must be >= 0% and <= 100%"),
            ("nodefs.available=-1Gi", "negative reclaim"),
            (
                "nodefs.available=lots",
                "eviction minimum reclaim nodefs.available=lots",
            ),
        ] {
            let e = parse_minimum_reclaims(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
