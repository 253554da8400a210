//! ServiceAccounts: every active namespace has a `default` ServiceAccount,
//! as kube-controller-manager's serviceaccount controller ensures.
//!
//! The loop is a `kube` Controller over Namespaces that also watches
//! ServiceAccounts named `default` (a deleted one re-triggers its
//! namespace). Reconciling a namespace that is `Active` and not being
//! deleted creates `default` when it is missing; an `AlreadyExists`
//! answer (a concurrent creator) and a `Forbidden` one (the namespace
//! started terminating) are fine.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Whether a namespace should have its default ServiceAccount.
pub fn namespace_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Active")
}

struct Ctx {
    client: kube::Client,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    if !namespace_active(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT_SERVICE_ACCOUNT).await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": name},
    }))
    .expect("service account literal");
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => info!(namespace = %name, "created the default ServiceAccount"),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 => {
            debug!(namespace = %name, reason = %s.reason, "default ServiceAccount not created")
        }
        Err(e) => return Err(e),
    }
    Ok(Action::await_change())
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    run_per_namespace::<ServiceAccount, _, _, _>(
        client,
        DEFAULT_SERVICE_ACCOUNT,
        ctx,
        reconcile,
        "serviceaccount reconcile",
        stop,
    )
    .await;
}

/// Runs `reconcile` for every Namespace, and again for a namespace whenever
/// its object `name` of kind `K` changes or goes: the loops that keep one
/// object in every namespace (ServiceAccount `default`, ConfigMap
/// `kube-root-ca.crt`). One reconcile at a time, as kube-controller-manager
/// runs these controllers with one worker; a failed one is retried after
/// 2 s, logged as `what`.
pub(crate) async fn run_per_namespace<K, C, R, F>(
    client: kube::Client,
    name: &str,
    ctx: Arc<C>,
    reconcile: R,
    what: &'static str,
    stop: CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    C: Send + Sync + 'static,
    R: FnMut(Arc<Namespace>, Arc<C>) -> F,
    F: std::future::Future<Output = Result<Action, kube::Error>> + Send + 'static,
{
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let watched: Api<K> = Api::all(client);
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            watched,
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            |o: K| {
                o.meta()
                    .namespace
                    .clone()
                    .map(|ns| ObjectRef::<Namespace>::new(&ns))
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .with_config(controller::Config::default().concurrency(1))
        .run(
            reconcile,
            move |ns: Arc<Namespace>, e: &kube::Error, _| {
                warn!(namespace = ?ns.metadata.name, error = %e, "{what} failed; retrying");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_namespaces() {
        let ns = |phase: Option<&str>, deleting: bool| -> Namespace {
            serde_json::from_value(json!({
                "metadata": {"name": "x", "deletionTimestamp": if deleting { json!("2024-01-01T00:00:00Z") } else { json!(null) }},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        assert!(namespace_active(&ns(Some("Active"), false)));
        assert!(namespace_active(&ns(None, false)));
        assert!(!namespace_active(&ns(Some("Terminating"), false)));
        assert!(!namespace_active(&ns(Some("Active"), true)));
    }
}
