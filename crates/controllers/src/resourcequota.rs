//! The resource quota controller, as kube-controller-manager's: keeps
//! every ResourceQuota's `status.hard` equal to its `spec.hard` and its
//! `status.used` equal to what the live objects of its namespace use, so
//! deletions give usage back (admission in the apiserver only ever adds).
//!
//! A `kube` Controller over ResourceQuotas, triggered by their own
//! changes and by every change of pods, services, claims, ConfigMaps and
//! Secrets in their namespace; other counted types (`count/<resource>.<group>`)
//! are recounted every minute, everything every 5 minutes (upstream's
//! `--resource-quota-sync-period`). Each reconcile lists, per type the
//! quota limits, the namespace's objects and adds up
//! `rke2_apimachinery::quota::usage` of those its scopes match; the
//! status is written with the quota's resourceVersion, so a charge the
//! apiserver made meanwhile is not overwritten (the write conflicts and
//! the quota is counted again), and a count that gives usage back is
//! taken twice, a second apart, since the apiserver charges a create
//! just before it stores the object.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use rke2_apimachinery::quota as q;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A counted type is not served.
    #[error("resource {0} is not served")]
    Unknown(String),
}

struct Ctx {
    client: kube::Client,
}

/// The types whose changes trigger a recount at once.
const WATCHED: &[&str] = &[
    "pods",
    "services",
    "persistentvolumeclaims",
    "configmaps",
    "secrets",
];

/// The (group, plural) of every type a quota with these hard names
/// counts.
pub fn counted_types(hard: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        "pods",
        "services",
        "persistentvolumeclaims",
        "configmaps",
        "secrets",
        "replicationcontrollers",
        "resourcequotas",
    ]
    .iter()
    .map(|p| (String::new(), p.to_string()))
    .collect();
    for h in hard {
        if let Some(rest) = h.strip_prefix("count/") {
            let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
            let t = (group.to_string(), plural.to_string());
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out.retain(|(g, p)| !q::matching_resources(g, p, hard).is_empty());
    out
}

/// The usage of `objects` of `group`/`plural` that `quota` counts: each
/// resource it limits for the type starts at zero.
pub fn usage_of(
    quota: &Value,
    group: &str,
    plural: &str,
    objects: &[Value],
    now: i64,
) -> q::ResourceList {
    let hard: Vec<String> = q::list_of(&quota["spec"]["hard"]).into_keys().collect();
    let names: Vec<String> = q::matching_resources(group, plural, &hard)
        .into_iter()
        .cloned()
        .collect();
    let mut used: q::ResourceList = names
        .iter()
        .map(|n| (n.clone(), rke2_apimachinery::Quantity::from_units(0)))
        .collect();
    for o in objects {
        if q::scopes_match(quota, group, plural, o) {
            used = q::add(&used, &q::mask(&q::usage(group, plural, o, now), &names));
        }
    }
    used
}

async fn list_values<K>(api: Api<K>) -> Result<Vec<Value>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

/// The served version of `group` (its preferred one).
async fn api_resource(
    client: &kube::Client,
    group: &str,
    plural: &str,
) -> Result<ApiResource, Error> {
    if group.is_empty() {
        return Ok(ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
        });
    }
    let groups = client.list_api_groups().await?;
    let g = groups
        .groups
        .iter()
        .find(|g| g.name == group)
        .ok_or_else(|| Error::Unknown(format!("{plural}.{group}")))?;
    let gv = g
        .preferred_version
        .as_ref()
        .or(g.versions.first())
        .ok_or_else(|| Error::Unknown(format!("{plural}.{group}")))?;
    Ok(ApiResource {
        group: group.into(),
        version: gv.version.clone(),
        api_version: gv.group_version.clone(),
        kind: String::new(),
        plural: plural.into(),
    })
}

async fn objects_of(
    client: &kube::Client,
    ns: &str,
    group: &str,
    plural: &str,
) -> Result<Vec<Value>, Error> {
    let c = client.clone();
    Ok(match (group, plural) {
        ("", "pods") => list_values(Api::<Pod>::namespaced(c, ns)).await?,
        ("", "services") => list_values(Api::<Service>::namespaced(c, ns)).await?,
        ("", "persistentvolumeclaims") => {
            list_values(Api::<PersistentVolumeClaim>::namespaced(c, ns)).await?
        }
        _ => {
            // Counted by name only.
            let ar = api_resource(client, group, plural).await?;
            let api: Api<DynamicObject> = Api::namespaced_with(c, ns, &ar);
            api.list_metadata(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|o| json!({"metadata": serde_json::to_value(&o.metadata).unwrap_or_default()}))
                .collect()
        }
    })
}

/// The quota as stored now and the status its namespace's objects give
/// it; `true` when a type it counts is only recounted periodically.
async fn count(
    ctx: &Ctx,
    api: &Api<ResourceQuota>,
    ns: &str,
    name: &str,
) -> Result<Option<(ResourceQuota, Value, bool)>, Error> {
    // The newest copy: its resourceVersion guards the status write.
    let fresh = match api.get(name).await {
        Ok(f) => f,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let value = serde_json::to_value(&fresh).unwrap_or_default();
    let hard_list = q::list_of(&value["spec"]["hard"]);
    let hard: Vec<String> = hard_list.keys().cloned().collect();
    let now = chrono::Utc::now().timestamp();
    let mut used = q::ResourceList::new();
    let mut unwatched = false;
    for (group, plural) in counted_types(&hard) {
        unwatched |= !(group.is_empty() && WATCHED.contains(&plural.as_str()));
        let objects = match objects_of(&ctx.client, ns, &group, &plural).await {
            Ok(o) => o,
            Err(Error::Unknown(what)) => {
                warn!(quota = %name, namespace = %ns, resource = %what, "counted resource is not served");
                continue;
            }
            Err(e) => return Err(e),
        };
        used = q::add(&used, &usage_of(&value, &group, &plural, &objects, now));
    }
    let status = json!({"hard": q::to_json(&hard_list), "used": q::to_json(&used)});
    Ok(Some((fresh, status, unwatched)))
}

/// Whether `next` gives back usage `quota`'s status charges.
fn releases(quota: &ResourceQuota, next: &Value) -> bool {
    let value = serde_json::to_value(quota).unwrap_or_default();
    let before = q::list_of(&value["status"]["used"]);
    let after = q::list_of(&next["used"]);
    after
        .iter()
        .any(|(k, v)| before.get(k).is_some_and(|b| v < b))
}

async fn reconcile(quota: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if quota.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = quota.metadata.namespace.clone().unwrap_or_default();
    let name = quota.metadata.name.clone().unwrap_or_default();
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    let Some((mut fresh, mut status, mut unwatched)) = count(&ctx, &api, &ns, &name).await? else {
        return Ok(Action::await_change());
    };
    // The apiserver charges a create before it stores the object: a
    // count that lowers usage may have missed an object being created.
    // Count again a moment later before giving anything back.
    if releases(&fresh, &status) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(again) = count(&ctx, &api, &ns, &name).await? else {
            return Ok(Action::await_change());
        };
        (fresh, status, unwatched) = again;
    }
    let value = serde_json::to_value(&fresh).unwrap_or_default();
    let current = json!({
        "hard": q::to_json(&q::list_of(&value["status"]["hard"])),
        "used": q::to_json(&q::list_of(&value["status"]["used"])),
    });
    if status != current || value["status"]["hard"].is_null() {
        let mut next = fresh.clone();
        next.status = serde_json::from_value(status).ok();
        match api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(if unwatched {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    }))
}

fn error_policy(quota: Arc<ResourceQuota>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(quota = ?quota.metadata.name, namespace = ?quota.metadata.namespace, error = %e, "resource quota sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let quotas: Api<ResourceQuota> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    info!("resource quota controller started");
    let controller = Controller::new(quotas, watcher::Config::default());
    let store = controller.store();
    let in_namespace = move |ns: Option<String>| {
        store
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace == ns)
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    };
    let (a, b, c, d, e) = (
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace,
    );
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |o: Pod| a(o.metadata.namespace),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |o: Service| b(o.metadata.namespace),
        )
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |o: PersistentVolumeClaim| c(o.metadata.namespace),
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
            move |o: ConfigMap| d(o.metadata.namespace),
        )
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
            move |o: Secret| e(o.metadata.namespace),
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(5))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_matching_objects_from_zero() {
        let quota =
            json!({"spec": {"hard": {"requests.cpu": "2", "pods": "5", "configmaps": "3"}}});
        let pods = vec![
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "500m"}}}]}, "status": {"phase": "Running"}}),
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}, "status": {"phase": "Succeeded"}}),
        ];
        let used = usage_of(&quota, "", "pods", &pods, 0);
        assert_eq!(q::pretty(&used), "pods=1,requests.cpu=500m");
        let none = usage_of(&quota, "", "configmaps", &[], 0);
        assert_eq!(q::pretty(&none), "configmaps=0");
        let hard: Vec<String> = vec!["count/deployments.apps".into(), "pods".into()];
        assert_eq!(
            counted_types(&hard),
            vec![
                ("".to_string(), "pods".to_string()),
                ("apps".to_string(), "deployments".to_string())
            ]
        );
    }

    #[test]
    fn scoped_quotas_count_only_matching_pods() {
        let quota = json!({"spec": {"hard": {"pods": "5"}, "scopes": ["BestEffort"]}});
        let pods = vec![
            json!({"spec": {"containers": [{"name": "a"}]}}),
            json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}}]}}),
        ];
        assert_eq!(q::pretty(&usage_of(&quota, "", "pods", &pods, 0)), "pods=1");
    }
}
