//! The root CA publisher: every active namespace has a ConfigMap
//! `kube-root-ca.crt` whose `ca.crt` is the CA that signed the API's
//! serving certificate, as kube-controller-manager's root-ca-cert-publisher
//! keeps it. Pods read it from their service-account volume to verify the
//! API they talk to.
//!
//! The loop is a `kube` Controller over Namespaces that also watches the
//! ConfigMaps of that name (a deleted or edited one re-triggers its
//! namespace). A missing ConfigMap is created, one with other content is
//! put back; `AlreadyExists`, `Conflict` and `Forbidden` (the namespace
//! started terminating) answers are retried by the next event or ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::serviceaccount::{namespace_active, run_per_namespace};

/// The ConfigMap every namespace gets.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// Its description annotation, worded as upstream's.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Ctx {
    client: kube::Client,
    ca_pem: String,
}

fn wanted_data(ca_pem: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])
}

fn config_map(namespace: &str, ca_pem: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(ROOT_CA_CONFIG_MAP.into());
    cm.metadata.namespace = Some(namespace.into());
    cm.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/description".to_string(),
        DESCRIPTION.to_string(),
    )]));
    cm.data = Some(wanted_data(ca_pem));
    cm
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    if !namespace_active(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let result = match api.get_opt(ROOT_CA_CONFIG_MAP).await? {
        Some(cm) if cm.data.as_ref() == Some(&wanted_data(&ctx.ca_pem)) => {
            return Ok(Action::await_change());
        }
        Some(cm) => {
            let mut fixed = cm.clone();
            fixed.data = Some(wanted_data(&ctx.ca_pem));
            fixed.binary_data = None;
            api.replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &fixed)
                .await
                .map(|_| info!(namespace = %name, "restored {ROOT_CA_CONFIG_MAP}"))
        }
        None => api
            .create(&PostParams::default(), &config_map(&name, &ctx.ca_pem))
            .await
            .map(|_| debug!(namespace = %name, "published {ROOT_CA_CONFIG_MAP}")),
    };
    match result {
        Ok(()) => Ok(Action::await_change()),
        // A concurrent writer: its event brings the namespace back.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::requeue(Duration::from_secs(1))),
        // The namespace is terminating.
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// Publishes `ca_pem` into every namespace until `stop`.
pub async fn run(client: kube::Client, ca_pem: String, stop: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ca_pem,
    });
    run_per_namespace::<ConfigMap, _, _, _>(
        client,
        ROOT_CA_CONFIG_MAP,
        ctx,
        reconcile,
        "root CA publish",
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_shape() {
        let cm = config_map("ns", "PEM");
        assert_eq!(cm.metadata.name.as_deref(), Some(ROOT_CA_CONFIG_MAP));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(cm.data.unwrap()["ca.crt"], "PEM");
        assert!(
            cm.metadata.annotations.unwrap()["kubernetes.io/description"]
                .starts_with("Contains a CA bundle")
        );
    }
}
