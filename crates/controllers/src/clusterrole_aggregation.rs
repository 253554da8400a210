//! ClusterRole aggregation, as kube-controller-manager's
//! `clusterrole-aggregation` controller: a ClusterRole with an
//! `aggregationRule` gets as `rules` the union of the rules of every other
//! ClusterRole matching any of its `clusterRoleSelectors` (`admin`, `edit`
//! and `view` are built this way from the `aggregate-to-*` labelled roles).
//!
//! All ClusterRoles are kept in a reflector; any event wakes one pass over
//! every aggregated role, which writes only the roles whose rules changed.
//! Rules keep upstream's order: selectors in order, matching roles by
//! name, their rules in order, a rule equal to one already taken skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The rules an aggregated ClusterRole should have, or `None` when `role`
/// has no aggregation rule (or a selector that does not parse, which
/// validation refuses).
pub fn aggregated_rules(role: &ClusterRole, all: &[ClusterRole]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_ref()?;
    let mut by_name: Vec<&ClusterRole> = all.iter().collect();
    by_name.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for sel in selectors {
        let sel = serde_json::to_value(sel).ok()?;
        let sel = rke2_apimachinery::label_selector_from_json(&sel).ok()?;
        for other in &by_name {
            if other.metadata.name == role.metadata.name {
                continue;
            }
            let labels: BTreeMap<String, String> =
                other.metadata.labels.clone().unwrap_or_default();
            if !sel.matches(&labels) {
                continue;
            }
            for r in other.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    Some(rules)
}

/// One pass: every aggregated role whose rules differ is patched. Returns
/// how many were written.
async fn sync_all(api: &Api<ClusterRole>, all: &[ClusterRole]) -> Result<usize, kube::Error> {
    let mut written = 0;
    for role in all {
        let Some(rules) = aggregated_rules(role, all) else {
            continue;
        };
        if role.rules.clone().unwrap_or_default() == rules {
            continue;
        }
        let name = role.metadata.name.clone().unwrap_or_default();
        // A merge patch replaces the whole list.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": rules})),
        )
        .await?;
        info!(clusterrole = %name, rules = rules.len(), "aggregated ClusterRole rules");
        written += 1;
    }
    Ok(written)
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let api: Api<ClusterRole> = Api::all(client);
    let notify = Arc::new(Notify::new());
    let store = {
        let notify = notify.clone();
        crate::informer::spawn(api.clone(), "clusterroles", &stop, move |_| {
            notify.notify_one()
        })
    };
    // A pass over a partial list would drop rules: wait for the first one.
    tokio::select! {
        _ = stop.cancelled() => return,
        r = store.wait_until_ready() => if r.is_err() { return },
    }
    loop {
        let all: Vec<ClusterRole> = store.state().iter().map(|r| (**r).clone()).collect();
        let retry = match sync_all(&api, &all).await {
            Ok(n) => {
                debug!(written = n, "clusterrole aggregation pass");
                false
            }
            Err(e) => {
                warn!(error = %e, "clusterrole aggregation failed; retrying");
                true
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)), if retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: &[(&str, &str)], rules: serde_json::Value) -> ClusterRole {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "rules": rules}),
        )
        .unwrap()
    }

    fn rule(verb: &str, resource: &str) -> serde_json::Value {
        json!({"apiGroups": [""], "resources": [resource], "verbs": [verb]})
    }

    #[test]
    fn union_in_selector_then_name_order_without_duplicates() {
        let mut view: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"to-view": "true"}},
                {"matchExpressions": [{"key": "extra", "operator": "Exists"}]}]}
        }))
        .unwrap();
        view.metadata.labels = Some([("to-view".to_string(), "true".to_string())].into());
        let all = vec![
            view.clone(),
            role(
                "b",
                &[("to-view", "true")],
                json!([rule("get", "pods"), rule("list", "pods")]),
            ),
            role("a", &[("to-view", "true")], json!([rule("get", "pods")])),
            role(
                "c",
                &[("extra", "x")],
                json!([rule("get", "widgets"), rule("list", "pods")]),
            ),
            role(
                "d",
                &[("to-view", "false")],
                json!([rule("delete", "pods")]),
            ),
        ];
        let got = aggregated_rules(&view, &all).unwrap();
        let want: Vec<PolicyRule> = serde_json::from_value(json!([
            rule("get", "pods"),
            rule("list", "pods"),
            rule("get", "widgets")
        ]))
        .unwrap();
        assert_eq!(got, want);
        assert!(aggregated_rules(&all[1], &all).is_none());
    }
}
