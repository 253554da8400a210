//! The resource registry: one table entry per served type drives
//! discovery, routing, storage keys, selectors and Table printing. The
//! built-in types are a fixed table; custom types (CRDs) come and go in
//! the [`Registry`] while serving.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock};

/// How objects of a type are printed as Table rows (kubectl `get`).
#[derive(Debug, Clone, PartialEq)]
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
    /// NAME READY AGE (+ wide CONTAINERS IMAGES).
    StatefulSet,
    /// NAME CONTROLLER REVISION AGE.
    ControllerRevision,
    /// NAME STATUS COMPLETIONS DURATION AGE.
    Job,
    /// NAME ROLE AGE (+ wide USERS GROUPS SERVICEACCOUNTS): RoleBindings
    /// and ClusterRoleBindings.
    RoleBinding,
    /// NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION.
    CertificateSigningRequest,
    /// NAME SERVICE AVAILABLE AGE (API aggregation, `aggregator`).
    ApiService,
    /// NAME CLASS HOSTS ADDRESS PORTS AGE (`networking`).
    Ingress,
    /// NAME CONTROLLER PARAMETERS AGE (`networking`).
    IngressClass,
    /// NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE (`batch`).
    CronJob,
    /// NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE
    /// (`disruption`).
    PodDisruptionBudget,
    /// NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS
    /// VOLUMEATTRIBUTESCLASS REASON AGE (`storage`).
    PersistentVolume,
    /// NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS
    /// VOLUMEATTRIBUTESCLASS AGE (`storage`).
    PersistentVolumeClaim,
    /// NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE
    /// ALLOWVOLUMEEXPANSION AGE (`storage`).
    StorageClass,
    /// NAME VALUE GLOBAL-DEFAULT AGE PREEMPTIONPOLICY (`scheduling`).
    PriorityClass,
    /// NAME AGE REQUEST LIMIT (`quota`).
    ResourceQuota,
    /// NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE (`autoscaling`).
    HorizontalPodAutoscaler,
    /// NAME, the given columns (a CRD's `additionalPrinterColumns`; AGE
    /// is one of them by default).
    Columns(Vec<PrinterColumn>),
}

/// One column of a Table printed from JSON paths
/// (`additionalPrinterColumns` of a CustomResourceDefinition).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header (`name`).
    pub name: String,
    /// OpenAPI type of the column (`string`, `integer`, `number`,
    /// `boolean`, `date`).
    pub type_: String,
    /// OpenAPI format (`name` marks the column that holds the name).
    pub format: String,
    /// Description shown by `kubectl get -o wide` headers' docs.
    pub description: String,
    /// 0 = always shown, higher = `-o wide` only.
    pub priority: i32,
    /// The simple JSONPath (`.spec.replicas`) the cell is read from.
    pub json_path: String,
}

/// One served resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name used in URLs.
    pub plural: String,
    /// Singular name (discovery).
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Subresources served (`status`, `binding`, `log`, `exec`, ...).
    pub subresources: Vec<String>,
    /// Field selector labels accepted besides metadata.name/namespace.
    pub field_labels: Vec<String>,
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
    pub strategy: Arc<dyn crate::strategy::Strategy>,
    /// The CustomResourceDefinition that defines the type (`None` for
    /// the built-in types).
    pub defined_by: Option<String>,
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

    /// The etcd key prefix of every object of this type (optionally in one
    /// namespace). Every version of a group shares it, as upstream's.
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
            || self.field_labels.iter().any(|f| f == field)
    }

    /// Whether the type serves the subresource `sub`.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }
}

macro_rules! rt {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr,
     short: [$($short:expr),*], cat: [$($cat:expr),*], sub: [$($sub:expr),*],
     fields: [$($field:expr),*], $printer:expr, status: $status:expr, gen: $gen:expr,
     typed: $typed:ty, strategy: $strategy:expr) => {
        Arc::new(ResourceType {
            group: $group.to_string(),
            version: $version.to_string(),
            kind: $kind.to_string(),
            plural: $plural.to_string(),
            singular: $singular.to_string(),
            namespaced: $ns,
            short_names: vec![$($short.to_string()),*],
            categories: vec![$($cat.to_string()),*],
            subresources: vec![$($sub.to_string()),*],
            field_labels: vec![$($field.to_string()),*],
            printer: $printer,
            status_subresource: $status,
            tracks_generation: $gen,
            schema: crate::schema::typed::<$typed>,
            strategy: Arc::new($strategy),
            defined_by: None,
        })
    };
}

use crate::strategy;
use k8s_openapi::api;

fn builtin_table() -> Vec<Arc<ResourceType>> {
    vec![
        rt!("", "v1", "Namespace", "namespaces", "namespace", false, short: ["ns"], cat: [], sub: ["status", "finalize"], fields: ["status.phase"], Printer::Namespace, status: true, gen: false, typed: api::core::v1::Namespace, strategy: strategy::Namespace),
        rt!("", "v1", "Node", "nodes", "node", false, short: ["no"], cat: [], sub: ["status", "proxy"], fields: ["spec.unschedulable"], Printer::Node, status: true, gen: false, typed: api::core::v1::Node, strategy: strategy::Node),
        rt!("", "v1", "Pod", "pods", "pod", true, short: ["po"], cat: ["all"], sub: ["status", "binding", "log", "exec", "attach", "portforward", "eviction", "proxy", "ephemeralcontainers", "resize"], fields: ["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"], Printer::Pod, status: true, gen: true, typed: api::core::v1::Pod, strategy: strategy::Pod),
        rt!("", "v1", "Service", "services", "service", true, short: ["svc"], cat: ["all"], sub: ["status", "proxy"], fields: ["spec.clusterIP", "spec.type"], Printer::Service, status: true, gen: false, typed: api::core::v1::Service, strategy: strategy::Service),
        rt!("", "v1", "Endpoints", "endpoints", "endpoints", true, short: ["ep"], cat: [], sub: [], fields: [], Printer::Endpoints, status: false, gen: false, typed: api::core::v1::Endpoints, strategy: strategy::Plain),
        rt!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, short: [], cat: [], sub: [], fields: [], Printer::EndpointSlice, status: false, gen: false, typed: api::discovery::v1::EndpointSlice, strategy: strategy::EndpointSlice),
        rt!("", "v1", "ConfigMap", "configmaps", "configmap", true, short: ["cm"], cat: [], sub: [], fields: [], Printer::ConfigMap, status: false, gen: false, typed: api::core::v1::ConfigMap, strategy: strategy::ConfigMap),
        rt!("", "v1", "Secret", "secrets", "secret", true, short: [], cat: [], sub: [], fields: ["type"], Printer::Secret, status: false, gen: false, typed: api::core::v1::Secret, strategy: strategy::Secret),
        rt!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, short: ["sa"], cat: [], sub: ["token"], fields: [], Printer::ServiceAccount, status: false, gen: false, typed: api::core::v1::ServiceAccount, strategy: strategy::Plain),
        rt!("", "v1", "Event", "events", "event", true, short: ["ev"], cat: [], sub: [], fields: ["involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"], Printer::Event, status: false, gen: false, typed: api::core::v1::Event, strategy: strategy::Event),
        rt!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true, short: ["ing"], cat: [], sub: ["status"], fields: [], Printer::Ingress, status: true, gen: true, typed: api::networking::v1::Ingress, strategy: crate::networking::Ingress),
        rt!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false, short: [], cat: [], sub: [], fields: [], Printer::IngressClass, status: false, gen: true, typed: api::networking::v1::IngressClass, strategy: crate::networking::IngressClass),
        rt!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, short: [], cat: [], sub: [], fields: [], Printer::Lease, status: false, gen: false, typed: api::coordination::v1::Lease, strategy: strategy::Plain),
        rt!("apps", "v1", "Deployment", "deployments", "deployment", true, short: ["deploy"], cat: ["all"], sub: ["status", "scale"], fields: [], Printer::Deployment, status: true, gen: true, typed: api::apps::v1::Deployment, strategy: strategy::Deployment),
        rt!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, short: ["rs"], cat: ["all"], sub: ["status", "scale"], fields: ["status.replicas"], Printer::ReplicaSet, status: true, gen: true, typed: api::apps::v1::ReplicaSet, strategy: strategy::ReplicaSet),
        rt!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, short: ["ds"], cat: ["all"], sub: ["status"], fields: [], Printer::DaemonSet, status: true, gen: true, typed: api::apps::v1::DaemonSet, strategy: strategy::DaemonSet),
        rt!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true, short: ["sts"], cat: ["all"], sub: ["status", "scale"], fields: [], Printer::StatefulSet, status: true, gen: true, typed: api::apps::v1::StatefulSet, strategy: strategy::StatefulSet),
        rt!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, short: [], cat: [], sub: [], fields: [], Printer::ControllerRevision, status: false, gen: false, typed: api::apps::v1::ControllerRevision, strategy: strategy::ControllerRevision),
        rt!("batch", "v1", "Job", "jobs", "job", true, short: [], cat: ["all"], sub: ["status"], fields: ["status.successful"], Printer::Job, status: true, gen: true, typed: api::batch::v1::Job, strategy: strategy::Job),
        rt!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, short: ["cj"], cat: ["all"], sub: ["status"], fields: [], Printer::CronJob, status: true, gen: true, typed: api::batch::v1::CronJob, strategy: crate::batch::CronJob),
        rt!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", true, short: ["pdb"], cat: [], sub: ["status"], fields: [], Printer::PodDisruptionBudget, status: true, gen: true, typed: api::policy::v1::PodDisruptionBudget, strategy: crate::disruption::PodDisruptionBudget),
        rt!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, short: [], cat: [], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::rbac::v1::ClusterRole, strategy: strategy::RbacRole),
        rt!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, short: [], cat: [], sub: [], fields: [], Printer::RoleBinding, status: false, gen: false, typed: api::rbac::v1::ClusterRoleBinding, strategy: strategy::RbacBinding),
        rt!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, short: [], cat: [], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::rbac::v1::Role, strategy: strategy::RbacRole),
        rt!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, short: [], cat: [], sub: [], fields: [], Printer::RoleBinding, status: false, gen: false, typed: api::rbac::v1::RoleBinding, strategy: strategy::RbacBinding),
        rt!("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", "mutatingwebhookconfiguration", false, short: [], cat: ["api-extensions"], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::admissionregistration::v1::MutatingWebhookConfiguration, strategy: crate::admission::config::MutatingWebhooks),
        rt!("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", "validatingwebhookconfiguration", false, short: [], cat: ["api-extensions"], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::admissionregistration::v1::ValidatingWebhookConfiguration, strategy: crate::admission::config::ValidatingWebhooks),
        rt!("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", "validatingadmissionpolicy", false, short: [], cat: ["api-extensions"], sub: ["status"], fields: [], Printer::Default, status: true, gen: true, typed: api::admissionregistration::v1::ValidatingAdmissionPolicy, strategy: crate::admission::policy::Policies),
        rt!("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings", "validatingadmissionpolicybinding", false, short: [], cat: ["api-extensions"], sub: [], fields: [], Printer::Default, status: false, gen: true, typed: api::admissionregistration::v1::ValidatingAdmissionPolicyBinding, strategy: crate::admission::policy::Bindings),
        // API aggregation (aggregator/mod.rs).
        rt!("apiregistration.k8s.io", "v1", "APIService", "apiservices", "apiservice", false, short: [], cat: ["api-extensions"], sub: ["status"], fields: [], Printer::ApiService, status: true, gen: false, typed: k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService, strategy: crate::aggregator::ApiServiceStrategy),
        rt!("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", false, short: ["crd", "crds"], cat: ["api-extensions"], sub: ["status"], fields: [], Printer::Default, status: true, gen: true, typed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition, strategy: crate::crd::CrdStrategy),
        rt!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", false, short: ["pv"], cat: [], sub: ["status"], fields: [], Printer::PersistentVolume, status: true, gen: false, typed: api::core::v1::PersistentVolume, strategy: crate::storage::PersistentVolume),
        rt!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, short: ["pvc"], cat: [], sub: ["status"], fields: [], Printer::PersistentVolumeClaim, status: true, gen: false, typed: api::core::v1::PersistentVolumeClaim, strategy: crate::storage::PersistentVolumeClaim),
        rt!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true, short: ["quota"], cat: [], sub: ["status"], fields: [], Printer::ResourceQuota, status: true, gen: false, typed: api::core::v1::ResourceQuota, strategy: crate::quota::ResourceQuota),
        rt!("", "v1", "LimitRange", "limitranges", "limitrange", true, short: ["limits"], cat: [], sub: [], fields: [], Printer::Default, status: false, gen: false, typed: api::core::v1::LimitRange, strategy: crate::quota::LimitRange),
        rt!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false, short: ["sc"], cat: [], sub: [], fields: [], Printer::StorageClass, status: false, gen: false, typed: api::storage::v1::StorageClass, strategy: crate::storage::StorageClass),
        rt!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", false, short: ["pc"], cat: [], sub: [], fields: [], Printer::PriorityClass, status: false, gen: false, typed: api::scheduling::v1::PriorityClass, strategy: crate::scheduling::PriorityClass),
        // One storage (autoscaling/v2), two served versions (autoscaling.rs).
        rt!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, short: ["hpa"], cat: ["all"], sub: ["status"], fields: [], Printer::HorizontalPodAutoscaler, status: true, gen: true, typed: api::autoscaling::v2::HorizontalPodAutoscaler, strategy: crate::autoscaling::HorizontalPodAutoscaler),
        rt!("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, short: ["hpa"], cat: ["all"], sub: ["status"], fields: [], Printer::HorizontalPodAutoscaler, status: true, gen: true, typed: api::autoscaling::v1::HorizontalPodAutoscaler, strategy: crate::autoscaling::HorizontalPodAutoscaler),
        rt!("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", false, short: ["csr"], cat: [], sub: ["status", "approval"], fields: ["spec.signerName"], Printer::CertificateSigningRequest, status: true, gen: false, typed: api::certificates::v1::CertificateSigningRequest, strategy: strategy::CertificateSigningRequest),
    ]
}

static BUILTIN: LazyLock<Vec<Arc<ResourceType>>> = LazyLock::new(builtin_table);

/// The built-in types (always served).
pub fn builtin() -> &'static [Arc<ResourceType>] {
    &BUILTIN
}

/// Finds a built-in type by group, version and plural (code that needs
/// one of the types it was built with; requests resolve through
/// [`Registry`], which also knows custom types).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    BUILTIN
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
        .map(|t| &**t)
}

/// The shared entry of a built-in type (for holders that keep it).
pub fn builtin_arc(group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
    BUILTIN
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
        .cloned()
}

/// The types served right now: the built-in ones and those the
/// CustomResourceDefinitions define, added and removed while serving.
/// Every change bumps a generation that discovery and the watch caches
/// follow.
#[derive(Debug)]
pub struct Registry {
    /// Custom types by the name of the CRD defining them.
    custom: RwLock<BTreeMap<String, Vec<Arc<ResourceType>>>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry serving the built-in types only.
    pub fn new() -> Self {
        Self {
            custom: RwLock::new(BTreeMap::new()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    fn custom_types(&self) -> Vec<Arc<ResourceType>> {
        self.custom
            .read()
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Every served type: the built-in ones first, in their fixed order,
    /// then the custom ones by CRD name.
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        let mut out: Vec<Arc<ResourceType>> = BUILTIN.clone();
        out.extend(self.custom_types());
        out
    }

    /// The type served at `group/version/plural`.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        if let Some(t) = BUILTIN
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
        {
            return Some(t.clone());
        }
        self.custom
            .read()
            .ok()?
            .values()
            .flatten()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The type of `apiVersion` + `kind`.
    pub fn resolve_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.kind == kind && t.api_version() == api_version)
    }

    /// Serves the types a CRD defines (one per served version), replacing
    /// what it served before.
    pub fn set_custom(&self, crd: &str, types: Vec<Arc<ResourceType>>) {
        if let Ok(mut m) = self.custom.write() {
            if types.is_empty() {
                m.remove(crd);
            } else {
                m.insert(crd.to_string(), types);
            }
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// Stops serving the types of a CRD.
    pub fn remove_custom(&self, crd: &str) {
        self.set_custom(crd, Vec::new());
    }

    /// The types a CRD serves now.
    pub fn custom_of(&self, crd: &str) -> Vec<Arc<ResourceType>> {
        self.custom
            .read()
            .ok()
            .and_then(|m| m.get(crd).cloned())
            .unwrap_or_default()
    }

    /// A receiver that sees every change of the served set.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The served group/versions, in discovery order, core excluded:
    /// built-in groups in their fixed order, then custom groups by name,
    /// each group's versions by Kubernetes version priority.
    pub fn group_versions(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.all() {
            if t.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        for (_, versions) in &mut out {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }
}

/// Kubernetes' version ordering (`v2 > v1 > v1beta2 > v1beta1 >
/// v1alpha1 > foo`), as upstream's `CompareKubeAwareVersionStrings`:
/// GA before beta before alpha, higher numbers first; other strings
/// last, alphabetically.
pub fn version_priority(v: &str) -> (u8, u64, u64, std::cmp::Reverse<String>) {
    let parse = || -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((3, major, 0));
        }
        let (level, num) = if let Some(n) = tail.strip_prefix("beta") {
            (2, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (1, n)
        } else {
            return None;
        };
        Some((level, major, num.parse().ok()?))
    };
    match parse() {
        Some((level, major, minor)) => (level, major, minor, std::cmp::Reverse(String::new())),
        None => (0, 0, 0, std::cmp::Reverse(v.to_string())),
    }
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
        let reg = Registry::new();
        for t in builtin() {
            assert!(Arc::ptr_eq(
                &reg.resolve_kind(&t.api_version(), &t.kind).unwrap(),
                t
            ));
        }
        let groups: Vec<String> = reg.group_versions().into_iter().map(|(g, _)| g).collect();
        assert_eq!(
            groups,
            vec![
                "discovery.k8s.io",
                "networking.k8s.io",
                "coordination.k8s.io",
                "apps",
                "batch",
                "policy",
                "rbac.authorization.k8s.io",
                "admissionregistration.k8s.io",
                "apiregistration.k8s.io",
                "apiextensions.k8s.io",
                "storage.k8s.io",
                "scheduling.k8s.io",
                "autoscaling",
                "certificates.k8s.io",
            ]
        );
        // Two versions of one storage: v2 preferred, as upstream.
        let autoscaling = reg
            .group_versions()
            .into_iter()
            .find(|(g, _)| g == "autoscaling")
            .map(|(_, v)| v);
        assert_eq!(autoscaling, Some(vec!["v2".to_string(), "v1".to_string()]));
    }

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec![
            "v1alpha1", "foo", "v1", "v2beta1", "v1beta2", "v10", "bar", "v1beta1",
        ];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(
            v,
            [
                "v10", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "bar", "foo"
            ]
        );
    }

    #[test]
    fn custom_types_come_and_go() {
        let reg = Registry::new();
        let mut rx = reg.subscribe();
        let cm = find("", "v1", "configmaps").unwrap();
        let custom = Arc::new(ResourceType {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            namespaced: true,
            short_names: vec![],
            categories: vec![],
            subresources: vec![],
            field_labels: vec![],
            printer: Printer::Default,
            status_subresource: false,
            tracks_generation: true,
            schema: cm.schema,
            strategy: Arc::new(crate::strategy::Plain),
            defined_by: Some("widgets.example.com".into()),
        });
        reg.set_custom("widgets.example.com", vec![custom]);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(reg.resolve("example.com", "v1", "widgets").is_some());
        assert_eq!(reg.group_versions().last().unwrap().0, "example.com");
        reg.remove_custom("widgets.example.com");
        assert!(rx.has_changed().unwrap());
        assert!(reg.resolve("example.com", "v1", "widgets").is_none());
    }
}
