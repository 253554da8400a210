//! kube-controller-manager's HorizontalPodAutoscaler settings
//! (`--horizontal-pod-autoscaler-*`, RKE2's `kube-controller-manager-arg:
//! [horizontal-pod-autoscaler-sync-period=30s, …]`) with upstream's
//! defaults: read by the config crate, used by the HPA controller.

use std::time::Duration;

use crate::duration::parse_go_duration;

/// The HPA controller's cluster-wide settings.
#[derive(Clone, Debug, PartialEq)]
pub struct HpaSettings {
    /// `horizontal-pod-autoscaler-sync-period` (15s): how often every HPA
    /// is reconciled.
    pub sync_period: Duration,
    /// `horizontal-pod-autoscaler-tolerance` (0.1): the metric ratio
    /// distance from 1 under which nothing is scaled (an HPA's
    /// `behavior.scaleUp/scaleDown.tolerance` overrides it per direction).
    pub tolerance: f64,
    /// `horizontal-pod-autoscaler-downscale-stabilization` (5m0s): the
    /// scale-down window of an HPA without `behavior`.
    pub downscale_stabilization: Duration,
    /// `horizontal-pod-autoscaler-cpu-initialization-period` (5m0s): after
    /// a pod's start, CPU samples of unready pods (or taken before a full
    /// window since the last readiness change) are not trusted.
    pub cpu_initialization_period: Duration,
    /// `horizontal-pod-autoscaler-initial-readiness-delay` (30s): a pod
    /// that turned unready within this long of its start counts as never
    /// ready yet.
    pub initial_readiness_delay: Duration,
}

// `tolerance` is never NaN: [`HpaSettings::apply`] refuses it.
impl Eq for HpaSettings {}

impl Default for HpaSettings {
    fn default() -> Self {
        HpaSettings {
            sync_period: Duration::from_secs(15),
            tolerance: 0.1,
            downscale_stabilization: Duration::from_secs(300),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// A Go duration that may be zero (`0`, `0s`), as kube-controller-manager's
/// duration flags take them; never negative.
fn duration_or_zero(value: &str) -> Result<Duration, String> {
    let t = value.trim();
    if t.is_empty() {
        return Err("an empty value is not a duration such as 5m0s, 30s or 1h".into());
    }
    match parse_go_duration(t) {
        Ok(d) => Ok(d),
        Err(e) => {
            // A valid zero duration plus one nanosecond is one nanosecond;
            // anything malformed stays malformed.
            match parse_go_duration(&format!("{t}1ns")) {
                Ok(d) if d <= Duration::from_nanos(1) => Ok(Duration::ZERO),
                _ => Err(e),
            }
        }
    }
}

impl HpaSettings {
    /// Applies one `name=value` flag (without its leading dashes):
    /// `Ok(false)` when the flag is not one of the HPA's, an error naming
    /// the flag for a value it does not take.
    pub fn apply(&mut self, name: &str, value: &str) -> Result<bool, String> {
        let duration = |v: &str| duration_or_zero(v).map_err(|e| format!("{name}: {e}"));
        match name {
            "horizontal-pod-autoscaler-sync-period" => {
                let d = duration(value)?;
                if d.is_zero() {
                    return Err(format!("{name}: must be greater than 0"));
                }
                self.sync_period = d;
            }
            "horizontal-pod-autoscaler-tolerance" => {
                let t: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: {value:?} is not a number such as 0.1"))?;
                if !t.is_finite() || t < 0.0 {
                    return Err(format!("{name}: must be greater than or equal to 0"));
                }
                self.tolerance = t;
            }
            "horizontal-pod-autoscaler-downscale-stabilization" => {
                self.downscale_stabilization = duration(value)?
            }
            "horizontal-pod-autoscaler-cpu-initialization-period" => {
                self.cpu_initialization_period = duration(value)?
            }
            "horizontal-pod-autoscaler-initial-readiness-delay" => {
                self.initial_readiness_delay = duration(value)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_apply_with_upstream_defaults() {
        let mut s = HpaSettings::default();
        assert_eq!(s.sync_period, Duration::from_secs(15));
        assert_eq!(s.tolerance, 0.1);
        assert_eq!(
            s.apply("horizontal-pod-autoscaler-sync-period", "30s"),
            Ok(true)
        );
        assert_eq!(
            s.apply("horizontal-pod-autoscaler-tolerance", "0.05"),
            Ok(true)
        );
        assert_eq!(
            s.apply("horizontal-pod-autoscaler-downscale-stabilization", "0s"),
            Ok(true)
        );
        assert_eq!(
            s.apply(
                "horizontal-pod-autoscaler-cpu-initialization-period",
                "1m30s"
            ),
            Ok(true)
        );
        assert_eq!(
            s.apply("horizontal-pod-autoscaler-initial-readiness-delay", "0"),
            Ok(true)
        );
        assert_eq!(
            s,
            HpaSettings {
                sync_period: Duration::from_secs(30),
                tolerance: 0.05,
                downscale_stabilization: Duration::ZERO,
                cpu_initialization_period: Duration::from_secs(90),
                initial_readiness_delay: Duration::ZERO,
            }
        );
        assert_eq!(s.apply("node-monitor-grace-period", "40s"), Ok(false));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let mut s = HpaSettings::default();
        for (name, value, needle) in [
            (
                "horizontal-pod-autoscaler-sync-period",
                "0s",
                "must be greater than 0",
            ),
            (
                "horizontal-pod-autoscaler-sync-period",
                "fast",
                "not a duration",
            ),
            (
                "horizontal-pod-autoscaler-sync-period",
                "-5s",
                "not a duration",
            ),
            ("horizontal-pod-autoscaler-tolerance", "ten", "not a number"),
            (
                "horizontal-pod-autoscaler-tolerance",
                "-0.1",
                "greater than or equal to 0",
            ),
            (
                "horizontal-pod-autoscaler-tolerance",
                "NaN",
                "greater than or equal to 0",
            ),
            (
                "horizontal-pod-autoscaler-downscale-stabilization",
                "",
                "not a duration",
            ),
            (
                "horizontal-pod-autoscaler-initial-readiness-delay",
                "30",
                "not a duration",
            ),
        ] {
            let e = s.apply(name, value).unwrap_err();
            assert!(
                e.starts_with(name) && e.contains(needle),
                "{name}={value}: {e}"
            );
        }
        assert_eq!(s, HpaSettings::default(), "nothing half-applied");
    }
}
