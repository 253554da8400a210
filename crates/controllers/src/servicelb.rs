//! ServiceLB (`enable-servicelb`): RKE2's stand-in for a cloud load
//! balancer. Every `LoadBalancer` Service without a
//! `spec.loadBalancerClass` gets the nodes' addresses in
//! `status.loadBalancer.ingress` (each node's ExternalIP if it has one,
//! else its InternalIP), as RKE2's ServiceLB reports the nodes its
//! load-balancer pods run on. The service proxy on every node then routes
//! the service port on those addresses, so no per-Service pods are needed.
//!
//! Runs as `kube-system:service-controller`, whose bootstrap role grants
//! reading Services and Nodes and writing `services/status`. One pass over
//! every Service follows any change of a Service or Node (level
//! triggered; only the status that differs is written).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer;

/// The addresses LoadBalancer Services get: per node its ExternalIP, or
/// its InternalIP when it has none; sorted, without duplicates; nodes
/// being deleted left out.
pub fn ingress_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            let of = |ty: &str| {
                addrs
                    .iter()
                    .find(|a| a.type_ == ty)
                    .map(|a| a.address.clone())
            };
            of("ExternalIP").or_else(|| of("InternalIP"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `svc` is one ServiceLB answers for.
pub fn handled(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

/// The ingress IPs `svc` reports now.
fn current(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

/// Runs until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let on_event = {
        let wake = wake.clone();
        move |_: &kube::runtime::watcher::Event<Service>| wake.notify_one()
    };
    let services = informer::spawn(
        Api::<Service>::all(client.clone()),
        "services",
        &stop,
        on_event,
    );
    let on_node = {
        let wake = wake.clone();
        move |_: &kube::runtime::watcher::Event<Node>| wake.notify_one()
    };
    let nodes = informer::spawn(Api::<Node>::all(client.clone()), "nodes", &stop, on_node);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            // A failed write is tried again.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        if services.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
        let ips = ingress_addresses(nodes.state().iter().map(|n| n.as_ref()));
        for svc in services.state() {
            if !handled(&svc) || current(&svc) == ips {
                continue;
            }
            let (Some(ns), Some(name)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let ingress: Vec<serde_json::Value> =
                ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
            let api: Api<Service> = Api::namespaced(client.clone(), ns);
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(service = %format!("{ns}/{name}"), ingress = ?ips, "servicelb: load balancer status set")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    debug!(service = %format!("{ns}/{name}"), "servicelb: service gone")
                }
                Err(e) => {
                    warn!(service = %format!("{ns}/{name}"), error = %e, "servicelb: setting the load balancer status")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(addrs: serde_json::Value, deleting: bool) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"addresses": addrs}
        }))
        .unwrap();
        if deleting {
            n.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        n
    }

    #[test]
    fn nodes_give_their_external_ip_else_their_internal_ip() {
        let nodes = [
            node(
                json!([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "a"}]),
                false,
            ),
            node(
                json!([{"type": "InternalIP", "address": "10.0.0.3"}, {"type": "ExternalIP", "address": "203.0.113.3"}]),
                false,
            ),
            node(
                json!([{"type": "InternalIP", "address": "10.0.0.1"}]),
                false,
            ),
            node(
                json!([{"type": "InternalIP", "address": "10.0.0.1"}]),
                false,
            ),
            node(json!([{"type": "InternalIP", "address": "10.0.0.9"}]), true),
            node(json!([]), false),
        ];
        assert_eq!(
            ingress_addresses(&nodes),
            ["10.0.0.1", "10.0.0.2", "203.0.113.3"]
        );
    }

    #[test]
    fn only_load_balancers_without_a_class_are_handled() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec})).unwrap()
        };
        assert!(handled(&svc(json!({"type": "LoadBalancer"}))));
        assert!(!handled(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "x.io/lb"})
        )));
        assert!(!handled(&svc(json!({"type": "NodePort"}))));
    }
}
