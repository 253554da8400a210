//! The Kubernetes API of an rke2 server (port 6443).
//!
//! Layering: [`server`] accepts TLS connections and identifies the client
//! from its certificate; [`request`] parses paths, queries and bodies;
//! [`handlers`] implements the verbs over an
//! [`rke2_datastore::ObjectStore`] (etcd in a server, in memory in unit
//! tests);
//! [`registry`] is the one table of served types that drives discovery,
//! routing, storage keys and [`table`] printing, each entry naming its
//! [`strategy`] (the per-kind hooks the verbs call); [`proxy`] forwards
//! `pods/log`, `pods/exec` and `pods/attach` to the node API on 10250;
//! [`watch_cache`] follows one etcd watch per resource type and fans it
//! out to client watches; [`tokens`] issues and checks service-account
//! tokens; [`authz`], [`node_authorizer`] and [`node_restriction`] decide
//! what a caller may do (nodes only as themselves); [`pod_security`] is
//! the PodSecurity admission; [`services`] validates Services and
//! EndpointSlices; [`aggregator`] serves APIServices and proxies the
//! group/versions of extension apiservers.
//!
//! Architecture invariant: this crate is the only one that reads or writes
//! the object keyspace (`/registry/...`) in etcd. Everything else —
//! controllers, the node role, tests — is a client of this API.

pub mod access_review;
pub mod admission;
pub mod aggregator;
pub mod allocator;
pub mod audit;
pub mod authz;
pub mod autoscaling;
pub mod batch;
pub mod bootstrap;
pub mod bootstrap_policy;
pub mod crd;
pub mod csr;
pub mod discovery;
pub mod disruption;
pub mod ephemeral;
pub mod handlers;
pub mod jsonpath;
pub mod namespaces;
pub mod networking;
pub mod node_authorizer;
pub mod node_restriction;
pub mod objects;
pub mod openapi;
pub mod pod_security;
pub mod proxy;
pub mod proxy_rewrite;
pub mod quota;
pub mod rbac;
pub mod rbac_objects;
pub mod registry;
pub mod request;
pub mod resize;
pub mod scheduling;
pub mod schema;
pub mod server;
pub mod serviceaccounts;
pub mod services;
pub mod ssa;
pub mod status;
pub mod storage;
pub mod strategy;
pub mod table;
pub mod tokens;
pub mod watch_cache;
pub mod workload_proxy;

use std::net::IpAddr;
use std::sync::Arc;

pub use server::{serve, serve_router};

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The Service network (ClusterIPs come from here; .1 is `kubernetes`).
    pub service_cidr: ipnet::IpNet,
    /// The address other nodes and clients reach this apiserver on.
    pub advertise_address: IpAddr,
    /// The API port.
    pub port: u16,
    /// `service-node-port-range`: NodePorts are allocated from, and
    /// requested ones must lie in, this range (inclusive).
    pub node_port_range: (u16, u16),
    /// TLS towards node APIs (`pods/log`, `pods/exec`, `pods/attach`):
    /// the server CA and the apiserver's kubelet-client certificate.
    pub node_client: proxy::NodeClientTls,
    /// Signs and verifies service-account tokens (`service.key`).
    pub tokens: Arc<tokens::TokenIssuer>,
    /// PodSecurity admission's cluster defaults and exemptions.
    pub pod_security: pod_security::PodSecurityConfig,
    /// The audit log, when a policy records anything.
    pub audit: Option<Arc<audit::AuditLog>>,
    /// API aggregation's front-proxy certificate and published CAs;
    /// `None` serves APIServices but proxies nothing.
    pub aggregator: Option<Arc<aggregator::AggregatorConfig>>,
}

/// State shared by every request; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<ApiConfig>,
    /// The object store: etcd in a server, [`rke2_datastore::MemoryStore`]
    /// in unit tests of the verbs.
    pub store: rke2_datastore::SharedStore,
    /// Service network, copied for quick access.
    pub service_cidr: ipnet::IpNet,
    /// The watch caches (one etcd watch per resource type, fanned out).
    pub caches: Arc<watch_cache::WatchCaches>,
    /// The served types, built-in and custom.
    pub registry: Arc<registry::Registry>,
}

impl ApiState {
    /// Creates the state and starts the watch caches and the CRD follower
    /// (inside a tokio runtime; without one caches stay off and requests
    /// use etcd).
    pub fn new(config: ApiConfig, store: impl rke2_datastore::ObjectStore) -> Self {
        Self::with_shared_store(config, Arc::new(store))
    }

    /// [`ApiState::new`] over a store that is shared already.
    pub fn with_shared_store(config: ApiConfig, store: rke2_datastore::SharedStore) -> Self {
        let registry = Arc::new(registry::Registry::new());
        let caches = Arc::new(watch_cache::WatchCaches::new(
            store.clone(),
            registry.clone(),
        ));
        let state = Self {
            service_cidr: config.service_cidr,
            inner: Arc::new(config),
            caches,
            registry,
            store,
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            state.caches.start();
            // Every apiserver serves every established CRD.
            tokio::spawn(crd::follow(state.clone()));
        }
        state
    }

    /// The configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner
    }
}

/// Who sent a request, from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (certificate CN).
    pub user: String,
    /// The groups (certificate O).
    pub groups: Vec<String>,
}
