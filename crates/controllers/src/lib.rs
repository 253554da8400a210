//! Control-plane loops of an rke2 server.
//!
//! Every loop runs on exactly one server at a time, chosen through a Lease
//! in `kube-system` ([`leader`]). Loops are API clients (the `kube`
//! crate); they never reach into etcd's object keyspace.
//!
//! Architecture invariant: reconcilers are idempotent — they are not told
//! what changed and may run again after a leader change.

pub mod addons;
pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod csr_signing;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod garbage_collector;
pub mod helm;
pub mod hpa;
pub mod informer;
pub mod job;
pub mod leader;
pub mod local_path;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod persistent_volume;
pub mod replicaset;
pub mod resourcequota;
pub mod revisions;
pub mod root_ca;
pub mod server_removal;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod taint_eviction;
pub mod update;
pub mod volume_protection;

/// `namespace/name` of an object: how the loops key and log namespaced
/// objects (client-go's `cache.MetaNamespaceKeyFunc`).
pub(crate) fn namespaced_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The Lease held by the server running the controllers.
pub const CONTROLLERS_LEASE: &str = "kube-controller-manager";
