//! A pod's QoS class (`status.qosClass`), by upstream's `GetPodQOS`: it
//! decides which pods a node evicts first under memory pressure, and the
//! apiserver records it at create.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::parse_quantity;

/// The compute resources the class is decided on.
const RESOURCES: [&str; 2] = ["cpu", "memory"];

/// `BestEffort` (no container requests or limits cpu or memory),
/// `Guaranteed` (every container limits both, and requests equal limits)
/// or `Burstable`. Quantities compare by value (`1` = `1000m`); zero ones
/// count as unset; a request left out is the limit, as defaulting makes
/// it.
pub fn qos_class(spec: &Value) -> &'static str {
    // Sums in nano-units, by resource.
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    let containers = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten());
    for c in containers {
        let quantity = |bag: &str, r: &str| {
            c["resources"][bag][r]
                .as_str()
                .map(str::to_string)
                .or_else(|| c["resources"][bag][r].as_i64().map(|n| n.to_string()))
                .and_then(|s| parse_quantity(&s).ok())
                .filter(|q| !q.is_zero())
        };
        let mut limited = 0;
        for r in RESOURCES {
            let limit = quantity("limits", r);
            let request = quantity("requests", r).or_else(|| limit.clone());
            if let Some(q) = request {
                *requests.entry(r).or_default() += q.as_nanos();
            }
            if let Some(q) = limit {
                limited += 1;
                *limits.entry(r).or_default() += q.as_nanos();
            }
        }
        if limited != RESOURCES.len() {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(resources: Value) -> &'static str {
        qos_class(&json!({"containers": [{"name": "c", "resources": resources}]}))
    }

    #[test]
    fn classes_as_upstream() {
        assert_eq!(class(json!({})), "BestEffort");
        assert_eq!(class(json!({"requests": {"cpu": "0"}})), "BestEffort");
        assert_eq!(class(json!({"requests": {"cpu": "100m"}})), "Burstable");
        assert_eq!(
            class(json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
            "Guaranteed"
        );
        assert_eq!(
            class(
                json!({"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1024Mi"}})
            ),
            "Guaranteed"
        );
        assert_eq!(
            class(
                json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
            ),
            "Burstable"
        );
        assert_eq!(class(json!({"limits": {"cpu": "1"}})), "Burstable");
        // One container without limits makes the pod Burstable.
        let spec = json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b"}]});
        assert_eq!(qos_class(&spec), "Burstable");
    }
}
