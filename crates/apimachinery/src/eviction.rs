//! kubelet's hard eviction thresholds (`--eviction-hard`, RKE2's
//! `kubelet-arg: [eviction-hard=…]`): `<signal><value>` pairs such as
//! `memory.available<100Mi` or `nodefs.available<10%`, parsed with
//! kubelet's signal names and defaults.

use std::fmt;

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

/// kubelet's defaults on Linux, used when `eviction-hard` is not given
/// (given, it replaces all of them, as kubelet does).
pub const DEFAULT_HARD: &str = "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%,imagefs.inodesFree<5%";

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
        match self.value {
            ThresholdValue::Quantity(q) => q,
            ThresholdValue::Percentage(p) => (capacity as f64 * p / 100.0) as i128,
        }
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
            if q.as_nanos() < 0 {
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

/// kubelet's default hard thresholds.
pub fn default_hard() -> Vec<Threshold> {
    parse_thresholds(DEFAULT_HARD).expect("the defaults parse")
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
        assert_eq!(default_hard().len(), 5);
        for (bad, want) in [
            ("memory.available>1Gi", "invalid eviction threshold syntax"),
            (
                "memory.free<1Gi",
                "unsupported eviction signal \"memory.free\"",
            ),
            ("nodefs.available<0%", "must be > 0% and <= 100%"),
            (
                "memory.available<lots",
                "eviction threshold \"memory.available<lots\"",
            ),
            ("memory.available<1Gi,memory.available<2Gi", "duplicate"),
        ] {
            let e = parse_thresholds(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
