//! The resource registry: one table entry per served type drives
//! discovery, routing, storage keys, selectors and Table printing.

/// How objects of a type are printed as Table rows (kubectl `get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printer {
    /// Name and age only.
    Default,
    /// NAME STATUS AGE.
    Namespace,
    /// NAME STATUS ROLES AGE VERSION (+ wide columns).
    Node,
    /// NAME READY STATUS RESTARTS AGE (+ wide columns).
    Pod,
    /// NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE.
    Service,
    /// NAME ENDPOINTS AGE.
    Endpoints,
    /// NAME ADDRESSTYPE PORTS ENDPOINTS AGE.
    EndpointSlice,
    /// NAME DATA AGE.
    ConfigMap,
    /// NAME TYPE DATA AGE.
    Secret,
    /// NAME SECRETS AGE.
    ServiceAccount,
    /// LAST SEEN TYPE REASON OBJECT MESSAGE.
    Event,
    /// NAME HOLDER AGE.
    Lease,
    /// NAME READY UP-TO-DATE AVAILABLE AGE.
    Deployment,
    /// NAME DESIRED CURRENT READY AGE.
    ReplicaSet,
    /// NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE.
    DaemonSet,
    /// NAME STATUS COMPLETIONS DURATION AGE.
    Job,
    /// NAME ROLE AGE (+ wide USERS GROUPS SERVICEACCOUNTS): RoleBindings
    /// and ClusterRoleBindings.
    RoleBinding,
    /// NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION.
    CertificateSigningRequest,
    /// NAME SERVICE AVAILABLE AGE (API aggregation, `aggregator`).
    ApiService,
}

/// One served resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name used in URLs.
    pub plural: &'static str,
    /// Singular name (discovery).
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `binding`, `log`, `exec`, ...).
    pub subresources: &'static [&'static str],
    /// Field selector labels accepted besides metadata.name/namespace.
    pub field_labels: &'static [&'static str],
    /// Table printer.
    pub printer: Printer,
    /// Whether the status is only written through the `status` subresource.
    pub status_subresource: bool,
    /// Whether `metadata.generation` tracks spec changes.
    pub tracks_generation: bool,
    /// The typed check of an object of this type against its schema.
    pub schema: crate::schema::Check,
    /// The type's own behaviour: defaulting, validation, update rules,
    /// admission, allocation, deletion, watch index.
    pub strategy: &'static dyn crate::strategy::Strategy,
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `<Kind>List`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `resource` or `resource.group`, as used in Status messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The etcd key prefix of every object of this type (optionally in one namespace).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}{ns}/"),
            _ => base,
        }
    }

    /// The etcd key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.prefix(namespace), name)
    }

    /// The verbs served on the main resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// Whether a field selector label is supported for this type.
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (self.namespaced && field == "metadata.namespace")
            || self.field_labels.contains(&field)
    }
}

macro_rules! rt {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr,
     short: [$($short:expr),*], cat: [$($cat:expr),*], sub: [$($sub:expr),*],
     fields: [$($field:expr),*], $printer:expr, status: $status:expr, gen: $gen:expr,
     typed: $typed:ty, strategy: $strategy:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: &[$($sub),*],
            field_labels: &[$($field),*],
            printer: $printer,
            status_subresource: $status,
            tracks_generation: $gen,
            schema: crate::schema::typed::<$typed>,
            strategy: &$strategy,
        }
    };
}

use crate::strategy;
use k8s_openapi::api;

static TYPES: &[ResourceType] = &[
    rt!("", "v1", "Namespace", "namespaces", "namespace", false, short: ["ns"], cat: [], sub: ["status", "finalize"], fields: ["status.phase"], Printer::Namespace, status: true, gen: false, typed: api::core::v1::Namespace, strategy: strategy::Namespace),
    rt!("", "v1", "Node", "nodes", "node", false, short: ["no"], cat: [], sub: ["status"], fields: ["spec.unschedulable"], Printer::Node, status: true, gen: false, typed: api::core::v1::Node, strategy: strategy::Node),
    rt!("", "v1", "Pod", "pods", "pod", true, short: ["po"], cat: ["all"], sub: ["status", "binding", "log", "exec", "attach"], fields: ["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"], Printer::Pod, status: true, gen: false, typed: api::core::v1::Pod, strategy: strategy::Pod),
    rt!("", "v1", "Service", "services", "service", true, short: ["svc"], cat: ["all"], sub: ["status"], fields: ["spec.clusterIP", "spec.type"], Printer::Service, status: true, gen: false, typed: api::core::v1::Service, strategy: strategy::Service),
    rt!("", "v1", "Endpoints", "endpoints", "endpoints", true, short: ["ep"], cat: [], sub: [], fields: [], Printer::Endpoints, status: false, gen: false, typed: api::core::v1::Endpoints, strategy: strategy::Plain),
    rt!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, short: [], cat: [], sub: [], fields: [], Printer::EndpointSlice, status: false, gen: false, typed: api::discovery::v1::EndpointSlice, strategy: strategy::EndpointSlice),
    rt!("", "v1", "ConfigMap", "configmaps", "configmap", true, short: ["cm"], cat: [], sub: [], fields: [], Printer::ConfigMap, status: false, gen: false, typed: api::core::v1::ConfigMap, strategy: strategy::ConfigMap),
    rt!("", "v1", "Secret", "secrets", "secret", true, short: [], cat: [], sub: [], fields: ["type"], Printer::Secret, status: false, gen: false, typed: api::core::v1::Secret, strategy: strategy::Secret),
    rt!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, short: ["sa"], cat: [], sub: ["token"], fields: [], Printer::ServiceAccount, status: false, gen: false, typed: api::core::v1::ServiceAccount, strategy: strategy::Plain),
    rt!("", "v1", "Event", "events", "event", true, short: ["ev"], cat: [], sub: [], fields: ["involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"], Printer::Event, status: false, gen: false, typed: api::core::v1::Event, strategy: strategy::Event),
    rt!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, short: [], cat: [], sub: [], fields: [], Printer::Lease, status: false, gen: false, typed: api::coordination::v1::Lease, strategy: strategy::Plain),
    rt!("apps", "v1", "Deployment", "deployments", "deployment", true, short: ["deploy"], cat: ["all"], sub: ["status", "scale"], fields: [], Printer::Deployment, status: true, gen: true, typed: api::apps::v1::Deployment, strategy: strategy::Deployment),
    rt!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, short: ["rs"], cat: ["all"], sub: ["status", "scale"], fields: ["status.replicas"], Printer::ReplicaSet, status: true, gen: true, typed: api::apps::v1::ReplicaSet, strategy: strategy::ReplicaSet),
    rt!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, short: ["ds"], cat: ["all"], sub: ["status"], fields: [], Printer::DaemonSet, status: true, gen: true, typed: api::apps::v1::DaemonSet, strategy: strategy::DaemonSet),
    rt!("batch", "v1", "Job", "jobs", "job", true, short: [], cat: ["all"], sub: ["status"], fields: ["status.successful"], Printer::Job, status: true, gen: true, typed: api::batch::v1::Job, strategy: strategy::Job),
    rt!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, short: [], cat: [], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::rbac::v1::ClusterRole, strategy: strategy::RbacRole),
    rt!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, short: [], cat: [], sub: [], fields: [], Printer::RoleBinding, status: false, gen: false, typed: api::rbac::v1::ClusterRoleBinding, strategy: strategy::RbacBinding),
    rt!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, short: [], cat: [], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::rbac::v1::Role, strategy: strategy::RbacRole),
    rt!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, short: [], cat: [], sub: [], fields: [], Printer::RoleBinding, status: false, gen: false, typed: api::rbac::v1::RoleBinding, strategy: strategy::RbacBinding),
    rt!("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", false, short: ["csr"], cat: [], sub: ["status", "approval"], fields: ["spec.signerName"], Printer::CertificateSigningRequest, status: true, gen: false, typed: api::certificates::v1::CertificateSigningRequest, strategy: strategy::CertificateSigningRequest),
    // API aggregation (aggregator/mod.rs).
    rt!("apiregistration.k8s.io", "v1", "APIService", "apiservices", "apiservice", false, short: [], cat: ["api-extensions"], sub: ["status"], fields: [], Printer::ApiService, status: true, gen: false, typed: k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService, strategy: crate::aggregator::ApiServiceStrategy),
];

/// Every served type.
pub fn all() -> &'static [ResourceType] {
    TYPES
}

/// Finds a type by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    TYPES
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
}

/// Finds a type by apiVersion and kind.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    TYPES
        .iter()
        .find(|t| t.api_version() == api_version && t.kind == kind)
}

/// The served group/versions, in discovery order, core excluded.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for t in TYPES {
        if !t.group.is_empty() && !out.contains(&(t.group, t.version)) {
            out.push((t.group, t.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_registry_layout() {
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            cm.key(Some("default"), "a"),
            "/registry/configmaps/default/a"
        );
        let d = find("apps", "v1", "deployments").unwrap();
        assert_eq!(d.prefix(None), "/registry/apps/deployments/");
        let n = find("", "v1", "nodes").unwrap();
        assert_eq!(n.key(Some("ignored"), "n1"), "/registry/nodes/n1");
        assert_eq!(d.qualified(), "deployments.apps");
    }

    #[test]
    fn every_kind_is_unique_and_findable() {
        for t in all() {
            assert!(std::ptr::eq(
                find_kind(&t.api_version(), t.kind).unwrap(),
                t
            ));
        }
        assert_eq!(
            group_versions(),
            vec![
                ("discovery.k8s.io", "v1"),
                ("coordination.k8s.io", "v1"),
                ("apps", "v1"),
                ("batch", "v1"),
                ("rbac.authorization.k8s.io", "v1"),
                ("certificates.k8s.io", "v1"),
                ("apiregistration.k8s.io", "v1")
            ]
        );
    }
}
