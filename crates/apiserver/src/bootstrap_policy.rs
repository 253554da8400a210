//! The RBAC policy kube-apiserver creates at start (its
//! `rbac/bootstrap-roles` post-start hook): the default ClusterRoles
//! (`cluster-admin`, the aggregated `admin`/`edit`/`view` and their
//! `system:aggregate-to-*` parts, the `system:*` component roles, one
//! `system:controller:*` role per kube-controller-manager controller), the
//! ClusterRoleBindings that grant them, and the Roles and RoleBindings in
//! `kube-system` and `kube-public`.
//!
//! [`reconcile`] runs at every apiserver start, as upstream's hook does:
//! a missing object is created; an existing one is left alone when its
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is `"false"`,
//! and otherwise gets what it lacks added (rules not covered by its
//! rules, aggregation selectors, subjects, labels and annotations; never
//! removing what an admin added). A binding whose `roleRef` differs is
//! deleted and recreated (a `roleRef` cannot change).
//!
//! The rules are written as upstream states them for the served version
//! (`discovery::KUBE_VERSION`), lists sorted as upstream's rule builder
//! sorts them; `testdata/bootstrappolicy` holds upstream's generated record
//! that a unit test compares with.

use serde_json::{Map, Value, json};

use crate::ApiState;
use crate::objects;
use crate::rbac_objects::GROUP;
use crate::registry;
use crate::status::ApiResult;

/// The annotation whose value `"false"` keeps the server from changing a
/// bootstrap object.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The label every bootstrap object carries.
pub const BOOTSTRAPPING_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");

const READ: &[&str] = &["get", "list", "watch"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

fn sorted(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    v.sort();
    v.dedup();
    v
}

/// A resource rule (lists sorted, as upstream's `RuleOrDie`).
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": sorted(groups), "resources": sorted(resources), "verbs": sorted(verbs)})
}

/// A resource rule limited to some object names.
fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    let mut r = rule(verbs, groups, resources);
    r["resourceNames"] = json!(sorted(names));
    r
}

/// A non-resource URL rule.
fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": sorted(urls), "verbs": sorted(verbs)})
}

/// Writing events, core and `events.k8s.io` (upstream's `eventsRule`).
fn events() -> Value {
    rule(
        &["create", "update", "patch"],
        &["", "events.k8s.io"],
        &["events"],
    )
}

fn bootstrap_meta(name: &str, namespace: Option<&str>, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = Map::new();
    labels.insert(BOOTSTRAPPING_LABEL.0.into(), json!(BOOTSTRAPPING_LABEL.1));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    let mut meta = json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    meta
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": bootstrap_meta(name, None, &[]), "rules": rules})
}

fn labelled_cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": bootstrap_meta(name, None, labels), "rules": rules})
}

/// An aggregated role: its rules are filled by the aggregation controller
/// from the roles labelled `rbac.authorization.k8s.io/aggregate-to-<to>`.
fn aggregated_role(name: &str, labels: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": bootstrap_meta(name, None, labels),
        "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}]}})
}

/// A subject: `User`, `Group` or `ServiceAccount` (in `kube-system`).
fn subject(kind: &str, name: &str) -> Value {
    if kind == "ServiceAccount" {
        json!({"kind": kind, "name": name, "namespace": "kube-system"})
    } else {
        json!({"apiGroup": GROUP, "kind": kind, "name": name})
    }
}

fn cluster_binding(role: &str, subjects: Vec<Value>) -> Value {
    let mut b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": bootstrap_meta(role, None, &[]),
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role}});
    if !subjects.is_empty() {
        b["subjects"] = json!(subjects);
    }
    b
}

fn role(namespace: &str, name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": bootstrap_meta(name, Some(namespace), &[]), "rules": rules})
}

fn role_binding(namespace: &str, name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": bootstrap_meta(name, Some(namespace), &[]),
        "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": role},
        "subjects": subjects})
}

const TO_ADMIN: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-admin", "true");
const TO_EDIT: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-edit", "true");
const TO_VIEW: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-view", "true");

/// The default ClusterRoles (upstream's `ClusterRoles()`), by name.
pub fn cluster_roles() -> Vec<Value> {
    let storage = "storage.k8s.io";
    let coordination = "coordination.k8s.io";
    let resource = "resource.k8s.io";
    let mut roles = vec![
        aggregated_role("admin", &[]),
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated_role("edit", &[TO_ADMIN]),
        labelled_cluster_role(
            "system:aggregate-to-admin",
            &[TO_ADMIN],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(READ_WRITE, &[GROUP], &["roles", "rolebindings"]),
            ],
        ),
        labelled_cluster_role(
            "system:aggregate-to-edit",
            &[TO_EDIT],
            vec![
                // Secrets and the pod and service proxies are readable only
                // from `edit` up: they can reveal credentials.
                rule(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                    ],
                ),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                        "persistentvolumeclaims",
                        "configmaps",
                        "secrets",
                        "events",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "statefulsets",
                        "statefulsets/scale",
                        "daemonsets",
                        "deployments",
                        "deployments/scale",
                        "deployments/rollback",
                        "replicasets",
                        "replicasets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
                rule(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/scale",
                        "deployments/rollback",
                        "ingresses",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                        "networkpolicies",
                    ],
                ),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["networkpolicies", "ingresses"],
                ),
                rule(READ_WRITE, &[coordination], &["leases"]),
            ],
        ),
        labelled_cluster_role(
            "system:aggregate-to-view",
            &[TO_VIEW],
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "configmaps",
                    ],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "limitranges",
                        "resourcequotas",
                        "bindings",
                        "events",
                        "pods/status",
                        "resourcequotas/status",
                        "namespaces/status",
                        "replicationcontrollers/status",
                        "pods/log",
                    ],
                ),
                // Reading namespaces at the namespace scope shows which
                // namespaces a user can see.
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "statefulsets",
                        "statefulsets/status",
                        "statefulsets/scale",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/status",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/status",
                        "replicasets/scale",
                    ],
                ),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
                ),
                rule(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                        "networkpolicies",
                    ],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["networkpolicies", "ingresses", "ingresses/status"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
    ];
    for signer in [
        "kube-apiserver-client",
        "kube-apiserver-client-kubelet",
        "kubelet-serving",
        "legacy-unknown",
    ] {
        roles.push(cluster_role(
            &format!("system:certificates.k8s.io:{signer}-approver"),
            vec![named(
                &["approve"],
                &["certificates.k8s.io"],
                &["signers"],
                &[&format!("kubernetes.io/{signer}")],
            )],
        ));
    }
    roles.extend([
        cluster_role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        cluster_role(
            "system:heapster",
            vec![
                rule(READ, &[""], &["events", "pods", "nodes", "namespaces"]),
                rule(READ, &["extensions"], &["deployments"]),
            ],
        ),
        cluster_role(
            "system:kube-aggregator",
            vec![rule(READ, &[""], &["services", "endpoints"])],
        ),
        cluster_role(
            "system:kube-controller-manager",
            vec![
                events(),
                // Its own leader lease.
                rule(&["create"], &[coordination], &["leases"]),
                named(
                    &["get", "update"],
                    &[coordination],
                    &["leases"],
                    &["kube-controller-manager"],
                ),
                // Per-controller service accounts and their token secrets.
                rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
                rule(&["delete"], &[""], &["secrets"]),
                rule(
                    &["get"],
                    &[""],
                    &["namespaces", "secrets", "serviceaccounts", "configmaps"],
                ),
                rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
                // Delegated authentication and authorization.
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                // The shared informers.
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            vec![rule(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        cluster_role(
            "system:kube-scheduler",
            vec![
                events(),
                rule(&["create"], &[coordination], &["leases"]),
                named(
                    &["get", "update", "list", "watch"],
                    &[coordination],
                    &["leases"],
                    &["kube-scheduler"],
                ),
                rule(READ_WRITE, &[coordination], &["leasecandidates"]),
                rule(READ, &[""], &["nodes"]),
                rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
                rule(&["create"], &[""], &["pods/binding", "bindings"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                // What the scheduler's plugins read.
                rule(READ, &[""], &["replicationcontrollers", "services"]),
                rule(READ, &["apps", "extensions"], &["replicasets"]),
                rule(READ, &["apps"], &["statefulsets"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    READ,
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(READ, &[storage], &["csinodes"]),
                rule(READ, &[storage], &["volumeattachments"]),
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &[storage], &["csidrivers"]),
                rule(READ, &[storage], &["csistoragecapacities"]),
                // Dynamic resource allocation (GA, on by default).
                rule(READ, &[resource], &["deviceclasses"]),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[resource],
                    &["resourceclaims"],
                ),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[resource],
                    &["resourceclaims/status"],
                ),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["pods/finalizers"],
                ),
                rule(READ, &[resource], &["resourceslices"]),
            ],
        ),
        cluster_role(
            "system:kubelet-api-admin",
            vec![
                rule(READ, &[""], &["nodes"]),
                rule(&["proxy"], &[""], &["nodes"]),
                rule(
                    &["*"],
                    &[""],
                    &["nodes/proxy", "nodes/metrics", "nodes/stats", "nodes/log"],
                ),
            ],
        ),
        cluster_role(
            "system:monitoring",
            vec![urls(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        cluster_role("system:node", node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:node-problem-detector",
            vec![
                rule(&["get"], &[""], &["nodes"]),
                rule(&["patch"], &[""], &["nodes/status"]),
                events(),
            ],
        ),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(&["list", "watch"], &[""], &["services", "endpoints"]),
                rule(READ, &[""], &["nodes"]),
                events(),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role(
            "system:persistent-volume-provisioner",
            vec![
                rule(
                    &["get", "list", "watch", "create", "delete"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                rule(READ, &[storage], &["storageclasses"]),
                rule(&["watch"], &[""], &["events"]),
                events(),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:volume-scheduler",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(READ, &[storage], &["storageclasses"]),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        aggregated_role("view", &[TO_EDIT]),
    ]);
    roles
}

/// What a kubelet needs (`system:node`; the Node authorizer and
/// NodeRestriction narrow it to the node's own objects).
fn node_rules() -> Vec<Value> {
    let storage = "storage.k8s.io";
    vec![
        // Checking API access on its own API (non-mutating creates).
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        // Service environment variables.
        rule(READ, &[""], &["services"]),
        // Registering and updating itself.
        rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        rule(&["update", "patch"], &[""], &["nodes/status"]),
        rule(&["update", "patch"], &[""], &["nodes"]),
        rule(&["create", "update", "patch"], &[""], &["events"]),
        rule(READ, &[""], &["pods"]),
        // Mirror pods.
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        // Volumes, env and image pull secrets.
        rule(READ, &[""], &["secrets", "configmaps"]),
        rule(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["get"], &[""], &["endpoints"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(
            &["delete", "create", "update", "get", "patch"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(&["get"], &[storage], &["volumeattachments"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            &["get", "update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(READ, &[storage], &["csidrivers"]),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[storage],
            &["csinodes"],
        ),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
        rule(&["get"], &["resource.k8s.io"], &["resourceclaims"]),
        rule(
            &["deletecollection"],
            &["resource.k8s.io"],
            &["resourceslices"],
        ),
        // Service account tokens for image credential providers
        // (KubeletServiceAccountTokenForCredentialProviders, beta and on
        // since 1.34).
        rule(&["get"], &[""], &["serviceaccounts"]),
    ]
}

/// The default ClusterRoleBindings (upstream's `ClusterRoleBindings()`).
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        cluster_binding("cluster-admin", vec![subject("Group", "system:masters")]),
        cluster_binding(
            "system:basic-user",
            vec![subject("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:discovery",
            vec![subject("Group", "system:authenticated")],
        ),
        cluster_binding(
            "system:kube-controller-manager",
            vec![subject("User", "system:kube-controller-manager")],
        ),
        cluster_binding(
            "system:kube-dns",
            vec![subject("ServiceAccount", "kube-dns")],
        ),
        cluster_binding(
            "system:kube-scheduler",
            vec![subject("User", "system:kube-scheduler")],
        ),
        cluster_binding(
            "system:monitoring",
            vec![subject("Group", "system:monitoring")],
        ),
        // Bound to no one: nodes are authorized by the Node authorizer,
        // the binding only exists for clusters that add subjects.
        cluster_binding("system:node", vec![]),
        cluster_binding(
            "system:node-proxier",
            vec![subject("User", "system:kube-proxy")],
        ),
        cluster_binding(
            "system:public-info-viewer",
            vec![
                subject("Group", "system:authenticated"),
                subject("Group", "system:unauthenticated"),
            ],
        ),
        cluster_binding(
            "system:service-account-issuer-discovery",
            vec![subject("Group", "system:serviceaccounts")],
        ),
        cluster_binding(
            "system:volume-scheduler",
            vec![subject("User", "system:kube-scheduler")],
        ),
    ]
}

/// One role per kube-controller-manager controller (upstream's
/// `ControllerRoles()`), named `system:controller:<controller>`, each
/// bound to the `kube-system` ServiceAccount of the controller's name.
pub fn controller_roles() -> Vec<Value> {
    let c =
        |name: &str, rules: Vec<Value>| cluster_role(&format!("system:controller:{name}"), rules);
    let storage = "storage.k8s.io";
    let apps_ext = &["apps", "extensions"];
    vec![
        c(
            "attachdetach-controller",
            vec![
                rule(
                    &["list", "watch"],
                    &[""],
                    &["persistentvolumes", "persistentvolumeclaims"],
                ),
                rule(READ, &[""], &["nodes"]),
                rule(&["patch", "update"], &[""], &["nodes/status"]),
                rule(&["list", "watch"], &[""], &["pods"]),
                events(),
                rule(
                    &["get", "create", "delete", "list", "watch"],
                    &[storage],
                    &["volumeattachments"],
                ),
                rule(READ, &[storage], &["csidrivers"]),
                rule(READ, &[storage], &["csinodes"]),
            ],
        ),
        c(
            "certificate-controller",
            vec![
                rule(
                    &["get", "list", "watch", "delete"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                rule(
                    &["update"],
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests/status",
                        "certificatesigningrequests/approval",
                    ],
                ),
                named(
                    &["approve"],
                    &["certificates.k8s.io"],
                    &["signers"],
                    &["kubernetes.io/kube-apiserver-client-kubelet"],
                ),
                named(
                    &["sign"],
                    &["certificates.k8s.io"],
                    &["signers"],
                    &[
                        "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving",
                        "kubernetes.io/legacy-unknown",
                    ],
                ),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                events(),
            ],
        ),
        c(
            "clusterrole-aggregation-controller",
            // `escalate`: it writes rules it does not hold itself.
            vec![rule(
                &["escalate", "get", "list", "watch", "update", "patch"],
                &[GROUP],
                &["clusterroles"],
            )],
        ),
        c(
            "cronjob-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &["batch"],
                    &["cronjobs"],
                ),
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "delete", "patch",
                    ],
                    &["batch"],
                    &["jobs"],
                ),
                rule(&["update"], &["batch"], &["cronjobs/status"]),
                rule(&["update"], &["batch"], &["cronjobs/finalizers"]),
                rule(&["list", "delete"], &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "daemon-set-controller",
            vec![
                rule(READ, apps_ext, &["daemonsets"]),
                rule(&["update"], apps_ext, &["daemonsets/status"]),
                rule(&["update"], apps_ext, &["daemonsets/finalizers"]),
                rule(&["list", "watch"], &[""], &["nodes"]),
                rule(
                    &["list", "watch", "create", "delete", "patch"],
                    &[""],
                    &["pods"],
                ),
                rule(&["create"], &[""], &["pods/binding"]),
                rule(
                    &[
                        "get", "list", "watch", "create", "delete", "update", "patch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        c(
            "deployment-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    apps_ext,
                    &["deployments"],
                ),
                rule(&["update"], apps_ext, &["deployments/status"]),
                rule(&["update"], apps_ext, &["deployments/finalizers"]),
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                    apps_ext,
                    &["replicasets"],
                ),
                // Pods are only read and relabelled, to adopt or release.
                rule(&["get", "list", "watch", "update"], &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "disruption-controller",
            vec![
                rule(READ, apps_ext, &["deployments"]),
                rule(READ, apps_ext, &["replicasets"]),
                rule(READ, &[""], &["replicationcontrollers"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(READ, &["apps"], &["statefulsets"]),
                rule(&["update"], &["policy"], &["poddisruptionbudgets/status"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["get"], &["*"], &["*/scale"]),
                events(),
            ],
        ),
        c(
            "endpoint-controller",
            vec![
                rule(READ, &[""], &["services", "pods"]),
                rule(
                    &["get", "list", "create", "update", "delete"],
                    &[""],
                    &["endpoints"],
                ),
                rule(&["create"], &[""], &["endpoints/restricted"]),
                events(),
            ],
        ),
        c(
            "endpointslice-controller",
            vec![
                rule(READ, &[""], &["services", "pods", "nodes"]),
                // Setting blockOwnerDeletion needs finalizer rights on the
                // owner.
                rule(&["update"], &[""], &["services/finalizers"]),
                rule(
                    &["get", "list", "create", "update", "delete"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        c(
            "endpointslicemirroring-controller",
            vec![
                rule(READ, &[""], &["services", "endpoints"]),
                rule(&["update"], &[""], &["services/finalizers"]),
                rule(&["update"], &[""], &["endpoints/finalizers"]),
                rule(
                    &["get", "list", "create", "update", "delete"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        c(
            "ephemeral-volume-controller",
            vec![
                rule(READ, &[""], &["pods"]),
                rule(&["update"], &[""], &["pods/finalizers"]),
                rule(
                    &["get", "list", "watch", "create"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                events(),
            ],
        ),
        c(
            "expand-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(
                    &["update", "patch"],
                    &[""],
                    &["persistentvolumeclaims/status"],
                ),
                rule(READ, &[""], &["persistentvolumeclaims"]),
                events(),
                rule(&["get"], &[""], &["services"]),
            ],
        ),
        c(
            "generic-garbage-collector",
            vec![
                rule(
                    &["get", "list", "watch", "patch", "update", "delete"],
                    &["*"],
                    &["*"],
                ),
                events(),
            ],
        ),
        c(
            "horizontal-pod-autoscaler",
            vec![
                rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(
                    &["update"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                ),
                rule(&["get", "update"], &["*"], &["*/scale"]),
                rule(&["list"], &[""], &["pods"]),
                rule(&["list"], &["metrics.k8s.io"], &["pods"]),
                rule(&["get", "list"], &["custom.metrics.k8s.io"], &["*"]),
                rule(&["get", "list"], &["external.metrics.k8s.io"], &["*"]),
                events(),
            ],
        ),
        c(
            "job-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["batch"],
                    &["jobs"],
                ),
                rule(&["update"], &["batch"], &["jobs/status"]),
                rule(&["update"], &["batch"], &["jobs/finalizers"]),
                rule(
                    &["list", "watch", "create", "delete", "patch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        c(
            "legacy-service-account-token-cleaner",
            vec![
                named(
                    &["get"],
                    &[""],
                    &["configmaps"],
                    &["kube-apiserver-legacy-service-account-token-tracking"],
                ),
                rule(&["delete", "patch"], &[""], &["secrets"]),
            ],
        ),
        c(
            "namespace-controller",
            vec![
                rule(&["get", "list", "watch", "delete"], &[""], &["namespaces"]),
                rule(
                    &["update"],
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                ),
                rule(
                    &["get", "list", "delete", "deletecollection"],
                    &["*"],
                    &["*"],
                ),
            ],
        ),
        c(
            "node-controller",
            vec![
                rule(
                    &["get", "list", "update", "delete", "patch"],
                    &[""],
                    &["nodes"],
                ),
                rule(&["patch", "update"], &[""], &["nodes/status"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["list", "delete", "get"], &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "persistent-volume-binder",
            vec![
                rule(
                    &["get", "list", "watch", "update", "create", "delete"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(&["update"], &[""], &["persistentvolumes/status"]),
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                rule(&["update"], &[""], &["persistentvolumeclaims/status"]),
                rule(
                    &["list", "watch", "get", "create", "delete"],
                    &[""],
                    &["pods"],
                ),
                rule(READ, &[storage], &["storageclasses"]),
                rule(&["watch", "list"], &[""], &["nodes"]),
                events(),
                rule(&["watch"], &[""], &["events"]),
                rule(&["get"], &[""], &["services"]),
            ],
        ),
        c(
            "pod-garbage-collector",
            vec![
                rule(&["list", "watch", "delete"], &[""], &["pods"]),
                rule(&["get", "list"], &[""], &["nodes"]),
                rule(&["patch"], &[""], &["pods/status"]),
            ],
        ),
        c(
            "pv-protection-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumes"],
                ),
                events(),
            ],
        ),
        c(
            "pvc-protection-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                rule(READ, &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "replicaset-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    apps_ext,
                    &["replicasets"],
                ),
                rule(&["update"], apps_ext, &["replicasets/status"]),
                rule(&["update"], apps_ext, &["replicasets/finalizers"]),
                rule(
                    &["list", "watch", "patch", "create", "delete"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        c(
            "replication-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["replicationcontrollers"],
                ),
                rule(&["update"], &[""], &["replicationcontrollers/status"]),
                rule(&["update"], &[""], &["replicationcontrollers/finalizers"]),
                rule(
                    &["list", "watch", "patch", "create", "delete"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        c(
            "resource-claim-controller",
            vec![
                rule(READ, &[""], &["pods"]),
                rule(&["update"], &[""], &["pods/finalizers"]),
                rule(
                    &["get", "list", "watch", "create", "delete"],
                    &["resource.k8s.io"],
                    &["resourceclaims"],
                ),
                rule(
                    &["update", "patch"],
                    &["resource.k8s.io"],
                    &["resourceclaims", "resourceclaims/status"],
                ),
                rule(&["update", "patch"], &[""], &["pods/status"]),
                events(),
            ],
        ),
        c(
            "resourcequota-controller",
            vec![
                // Quota counts every type.
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(&["update"], &[""], &["resourcequotas/status"]),
                events(),
            ],
        ),
        c(
            "root-ca-cert-publisher",
            vec![
                rule(&["create", "update"], &[""], &["configmaps"]),
                events(),
            ],
        ),
        c(
            "route-controller",
            vec![
                rule(&["list", "watch"], &[""], &["nodes"]),
                rule(&["patch"], &[""], &["nodes/status"]),
                events(),
            ],
        ),
        c(
            "service-account-controller",
            vec![rule(&["create"], &[""], &["serviceaccounts"]), events()],
        ),
        // MultiCIDRServiceAllocator is GA (locked on) since 1.33.
        c(
            "service-cidrs-controller",
            vec![
                rule(
                    &["get", "list", "watch", "patch", "update"],
                    &["networking.k8s.io"],
                    &["servicecidrs"],
                ),
                rule(
                    &["patch", "update"],
                    &["networking.k8s.io"],
                    &["servicecidrs/finalizers"],
                ),
                rule(
                    &["patch", "update"],
                    &["networking.k8s.io"],
                    &["servicecidrs/status"],
                ),
                rule(READ, &["networking.k8s.io"], &["ipaddresses"]),
                events(),
            ],
        ),
        c(
            "service-controller",
            vec![
                rule(READ, &[""], &["services"]),
                rule(&["patch", "update"], &[""], &["services/status"]),
                rule(&["list", "watch"], &[""], &["nodes"]),
                events(),
            ],
        ),
        c(
            "statefulset-controller",
            vec![
                rule(&["list", "watch"], &[""], &["pods"]),
                rule(READ, &["apps"], &["statefulsets"]),
                rule(&["update"], &["apps"], &["statefulsets/status"]),
                rule(&["update"], &["apps"], &["statefulsets/finalizers"]),
                rule(
                    &["get", "create", "delete", "update", "patch"],
                    &[""],
                    &["pods"],
                ),
                rule(
                    &[
                        "get", "create", "delete", "update", "patch", "list", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                rule(
                    &["get", "create", "list", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                events(),
                rule(&["update", "delete"], &[""], &["persistentvolumeclaims"]),
                rule(&["update"], &[""], &["pods/finalizers"]),
            ],
        ),
        c(
            "ttl-after-finished-controller",
            vec![
                rule(&["get", "list", "watch", "delete"], &["batch"], &["jobs"]),
                events(),
            ],
        ),
        c(
            "ttl-controller",
            vec![
                rule(&["update", "patch", "list", "watch"], &[""], &["nodes"]),
                events(),
            ],
        ),
        c(
            "validatingadmissionpolicy-status-controller",
            vec![
                rule(
                    READ,
                    &["admissionregistration.k8s.io"],
                    &["validatingadmissionpolicies"],
                ),
                rule(
                    &["get", "patch", "update"],
                    &["admissionregistration.k8s.io"],
                    &["validatingadmissionpolicies/status"],
                ),
                events(),
            ],
        ),
    ]
}

/// The binding of each controller role to its ServiceAccount.
pub fn controller_role_bindings() -> Vec<Value> {
    controller_roles()
        .iter()
        .map(|r| {
            let name = r["metadata"]["name"].as_str().unwrap_or_default();
            let sa = name.trim_start_matches("system:controller:");
            cluster_binding(name, vec![subject("ServiceAccount", sa)])
        })
        .collect()
}

/// The Roles in `kube-system` and `kube-public` (upstream's
/// `NamespaceRoles()`).
pub fn namespace_roles() -> Vec<Value> {
    let leader_locking = || {
        vec![
            rule(
                &["watch", "get", "list", "create", "update"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
            rule(
                &["watch", "get", "list", "create", "update"],
                &["coordination.k8s.io"],
                &["leasecandidates"],
            ),
        ]
    };
    vec![
        role(
            "kube-public",
            "system:controller:bootstrap-signer",
            vec![
                rule(READ, &[""], &["configmaps"]),
                named(&["update"], &[""], &["configmaps"], &["cluster-info"]),
                events(),
            ],
        ),
        role(
            "kube-system",
            "extension-apiserver-authentication-reader",
            vec![named(
                READ,
                &[""],
                &["configmaps"],
                &["extension-apiserver-authentication"],
            )],
        ),
        role(
            "kube-system",
            "system::leader-locking-kube-controller-manager",
            leader_locking(),
        ),
        role(
            "kube-system",
            "system::leader-locking-kube-scheduler",
            leader_locking(),
        ),
        role(
            "kube-system",
            "system:controller:bootstrap-signer",
            vec![rule(READ, &[""], &["secrets"])],
        ),
        role(
            "kube-system",
            "system:controller:cloud-provider",
            vec![rule(
                &["create", "get", "list", "watch"],
                &[""],
                &["configmaps"],
            )],
        ),
        role(
            "kube-system",
            "system:controller:token-cleaner",
            vec![
                rule(&["delete", "get", "list", "watch"], &[""], &["secrets"]),
                events(),
            ],
        ),
    ]
}

/// The RoleBindings in `kube-system` and `kube-public` (upstream's
/// `NamespaceRoleBindings()`).
pub fn namespace_role_bindings() -> Vec<Value> {
    let sa = |n: &str| subject("ServiceAccount", n);
    vec![
        role_binding(
            "kube-public",
            "system:controller:bootstrap-signer",
            "system:controller:bootstrap-signer",
            vec![sa("bootstrap-signer")],
        ),
        role_binding(
            "kube-system",
            "system::extension-apiserver-authentication-reader",
            "extension-apiserver-authentication-reader",
            vec![
                subject("User", "system:kube-controller-manager"),
                subject("User", "system:kube-scheduler"),
            ],
        ),
        role_binding(
            "kube-system",
            "system::leader-locking-kube-controller-manager",
            "system::leader-locking-kube-controller-manager",
            vec![
                subject("User", "system:kube-controller-manager"),
                sa("kube-controller-manager"),
                sa("leader-election-controller"),
            ],
        ),
        role_binding(
            "kube-system",
            "system::leader-locking-kube-scheduler",
            "system::leader-locking-kube-scheduler",
            vec![
                subject("User", "system:kube-scheduler"),
                sa("kube-scheduler"),
            ],
        ),
        role_binding(
            "kube-system",
            "system:controller:bootstrap-signer",
            "system:controller:bootstrap-signer",
            vec![sa("bootstrap-signer")],
        ),
        role_binding(
            "kube-system",
            "system:controller:cloud-provider",
            "system:controller:cloud-provider",
            vec![sa("cloud-provider")],
        ),
        role_binding(
            "kube-system",
            "system:controller:token-cleaner",
            "system:controller:token-cleaner",
            vec![sa("token-cleaner")],
        ),
    ]
}

/// Every bootstrap object with the plural of its type, in creation order:
/// roles before the bindings that name them.
pub fn all() -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    out.extend(cluster_roles().into_iter().map(|o| ("clusterroles", o)));
    out.extend(controller_roles().into_iter().map(|o| ("clusterroles", o)));
    out.extend(
        cluster_role_bindings()
            .into_iter()
            .map(|o| ("clusterrolebindings", o)),
    );
    out.extend(
        controller_role_bindings()
            .into_iter()
            .map(|o| ("clusterrolebindings", o)),
    );
    out.extend(namespace_roles().into_iter().map(|o| ("roles", o)));
    out.extend(
        namespace_role_bindings()
            .into_iter()
            .map(|o| ("rolebindings", o)),
    );
    out
}

/// The kube-system service accounts our controllers act as (upstream's
/// names for the same controllers, each bound to its
/// `system:controller:<name>` role above).
pub const CONTROLLER_ACCOUNTS: &[&str] = &[
    "node-controller",
    "replicaset-controller",
    "deployment-controller",
    "daemon-set-controller",
    "statefulset-controller",
    "job-controller",
    "cronjob-controller",
    "disruption-controller",
    "horizontal-pod-autoscaler",
    "resourcequota-controller",
    "ttl-after-finished-controller",
    "generic-garbage-collector",
    "service-account-controller",
    "root-ca-cert-publisher",
    "clusterrole-aggregation-controller",
    "certificate-controller",
    "service-controller",
    "endpoint-controller",
    "endpointslice-controller",
    "persistent-volume-binder",
    "pvc-protection-controller",
    "pv-protection-controller",
];

/// Objects an earlier version of this server created and no longer
/// wants (plural, name): removed at start. `system:rke2:controller-informers`
/// granted the controllers' service accounts the reads that the
/// controllers now make as kube-controller-manager, as upstream's do.
pub const RETIRED: &[(&str, &str)] = &[
    ("clusterroles", "system:rke2:controller-informers"),
    ("clusterrolebindings", "system:rke2:controller-informers"),
];

// ---- reconciliation ----

/// What reconciling one bootstrap object against the stored one asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// Nothing to write.
    Keep,
    /// Write this updated object.
    Update(Value),
    /// Delete the stored binding and create the expected one (its
    /// `roleRef` differs and cannot be changed).
    Recreate,
}

fn protected(existing: &Value) -> bool {
    existing["metadata"]["annotations"][AUTOUPDATE].as_str() == Some("false")
}

/// Adds the expected labels and annotations the existing object lacks;
/// its own values win (upstream merges expected, then existing).
fn merge_meta(existing: &mut Value, expected: &Value) -> bool {
    let mut changed = false;
    for field in ["labels", "annotations"] {
        let Some(want) = expected["metadata"][field].as_object() else {
            continue;
        };
        if !existing["metadata"][field].is_object() {
            existing["metadata"][field] = json!({});
        }
        let have = existing["metadata"][field]
            .as_object_mut()
            .expect("made an object");
        for (k, v) in want {
            if !have.contains_key(k) {
                have.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One rule broken into its single-verb, single-resource (or URL) parts,
/// as upstream's `BreakdownRule`.
fn breakdown(rule: &Value) -> Vec<Value> {
    let verbs = strings(rule, "verbs");
    let mut out = Vec::new();
    for group in strings(rule, "apiGroups") {
        for res in strings(rule, "resources") {
            let names = strings(rule, "resourceNames");
            for verb in &verbs {
                if names.is_empty() {
                    out.push(json!({"apiGroups": [group], "resources": [res], "verbs": [verb]}));
                } else {
                    for n in &names {
                        out.push(json!({"apiGroups": [group], "resources": [res],
                            "resourceNames": [n], "verbs": [verb]}));
                    }
                }
            }
        }
    }
    for url in strings(rule, "nonResourceURLs") {
        for verb in &verbs {
            out.push(json!({"nonResourceURLs": [url], "verbs": [verb]}));
        }
    }
    out
}

fn has_or_star(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

/// Whether `owner` allows everything the single-part rule `part` does
/// (upstream's `ruleCovers`: `*` wildcards, `*/sub` subresources, a `*`
/// suffix on URLs, resource names only narrowing).
fn covers(owner: &Value, part: &Value) -> bool {
    let verbs = strings(owner, "verbs");
    if !strings(part, "verbs")
        .iter()
        .all(|v| has_or_star(&verbs, v))
    {
        return false;
    }
    if let Some(url) = strings(part, "nonResourceURLs").first() {
        return strings(owner, "nonResourceURLs").iter().any(|o| {
            o == "*" || o == url || (o.ends_with('*') && url.starts_with(o.trim_end_matches('*')))
        });
    }
    let groups = strings(owner, "apiGroups");
    let resources = strings(owner, "resources");
    let names = strings(owner, "resourceNames");
    let group_ok = strings(part, "apiGroups")
        .iter()
        .all(|g| has_or_star(&groups, g));
    let res_ok = strings(part, "resources").iter().all(|r| {
        has_or_star(&resources, r)
            || r.split_once('/')
                .is_some_and(|(_, sub)| resources.iter().any(|o| o == &format!("*/{sub}")))
    });
    let part_names = strings(part, "resourceNames");
    // A rule limited to names grants nothing for a request without one.
    let names_ok = names.is_empty()
        || (!part_names.is_empty() && part_names.iter().all(|n| names.contains(n)));
    group_ok && res_ok && names_ok
}

/// The single-part rules of `wanted` that no rule of `owned` covers.
pub fn missing_rules(owned: &[Value], wanted: &[Value]) -> Vec<Value> {
    wanted
        .iter()
        .flat_map(breakdown)
        .filter(|part| !owned.iter().any(|o| covers(o, part)))
        .collect()
}

/// Reconciles a Role or ClusterRole (upstream's `computeReconciledRole`
/// without removing extra permissions).
pub fn reconcile_role(expected: &Value, existing: &Value) -> Reconciled {
    if protected(existing) {
        return Reconciled::Keep;
    }
    let mut out = existing.clone();
    let mut changed = merge_meta(&mut out, expected);
    if let Some(want_sel) = expected["aggregationRule"]["clusterRoleSelectors"].as_array() {
        if !out["aggregationRule"].is_object() {
            out["aggregationRule"] = json!({});
        }
        let have = out["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut sel = have.clone();
        for s in want_sel {
            if !sel.contains(s) {
                sel.push(s.clone());
            }
        }
        if sel != have {
            out["aggregationRule"]["clusterRoleSelectors"] = json!(sel);
            changed = true;
        }
    }
    let owned = out["rules"].as_array().cloned().unwrap_or_default();
    let wanted = expected["rules"].as_array().cloned().unwrap_or_default();
    let missing = missing_rules(&owned, &wanted);
    if !missing.is_empty() {
        let mut rules = owned;
        rules.extend(missing);
        out["rules"] = json!(rules);
        changed = true;
    }
    if changed {
        Reconciled::Update(out)
    } else {
        Reconciled::Keep
    }
}

/// Reconciles a RoleBinding or ClusterRoleBinding (upstream's
/// `computeReconciledRoleBinding`, subjects by union).
pub fn reconcile_binding(expected: &Value, existing: &Value) -> Reconciled {
    if protected(existing) {
        return Reconciled::Keep;
    }
    let role_ref = |v: &Value| {
        (
            v["roleRef"]["apiGroup"].clone(),
            v["roleRef"]["kind"].clone(),
            v["roleRef"]["name"].clone(),
        )
    };
    if role_ref(expected) != role_ref(existing) {
        return Reconciled::Recreate;
    }
    let mut out = existing.clone();
    let mut changed = merge_meta(&mut out, expected);
    let have = out["subjects"].as_array().cloned().unwrap_or_default();
    let mut subjects = have.clone();
    for s in expected["subjects"].as_array().into_iter().flatten() {
        // Compare as defaulted: a stored subject may carry the apiGroup the
        // expected one leaves to defaulting, or the reverse.
        let same = |a: &Value, b: &Value| {
            a["kind"] == b["kind"]
                && a["name"] == b["name"]
                && a["namespace"].as_str().unwrap_or("") == b["namespace"].as_str().unwrap_or("")
        };
        if !subjects.iter().any(|h| same(h, s)) {
            subjects.push(s.clone());
        }
    }
    if subjects != have {
        out["subjects"] = json!(subjects);
        changed = true;
    }
    if changed {
        Reconciled::Update(out)
    } else {
        Reconciled::Keep
    }
}

/// Creates or reconciles every bootstrap object (upstream's
/// `rbac/bootstrap-roles` hook). Idempotent; run at every start by every
/// server (writes are revision-checked and retried on a conflict).
pub async fn reconcile(state: &ApiState) -> ApiResult<()> {
    for (plural, name) in RETIRED {
        let rt = registry::find(GROUP, "v1", plural).expect("registered RBAC type");
        let key = rt.key(None, name);
        if let Some(kv) = state.store.get(&key).await? {
            match state.store.delete(&key, kv.mod_revision).await {
                Ok(_) => tracing::info!(kind = rt.kind, name, "removed a retired RBAC object"),
                // Another server removed or changed it first: either way
                // the next start looks again.
                Err(e) => {
                    tracing::debug!(kind = rt.kind, name, error = %e, "removing a retired RBAC object")
                }
            }
        }
    }
    for (plural, expected) in all() {
        let rt = registry::find(GROUP, "v1", plural).expect("registered RBAC type");
        for attempt in 0.. {
            match reconcile_one(state, rt, &expected).await {
                Err(e) if e.code == 409 && attempt < 5 => continue,
                other => {
                    other?;
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn reconcile_one(
    state: &ApiState,
    rt: &'static registry::ResourceType,
    expected: &Value,
) -> ApiResult<()> {
    let name = objects::name_of(expected).to_string();
    let ns = expected["metadata"]["namespace"]
        .as_str()
        .map(str::to_string);
    let key = rt.key(ns.as_deref(), &name);
    let conflict = || crate::status::ApiError::new(409, "Conflict", "changed concurrently");
    let create = || async {
        let mut obj = expected.clone();
        objects::check_type(rt, &mut obj)?;
        objects::prepare_create(rt, &mut obj, ns.as_deref())?;
        objects::validate(rt, &obj)?;
        match state.store.create(&key, objects::to_stored(&obj)).await {
            Ok(_) => {
                tracing::info!(kind = rt.kind, name = %name, "created bootstrap RBAC object");
                Ok(())
            }
            Err(rke2_datastore::StoreError::AlreadyExists) => Err(conflict()),
            Err(e) => Err(e.into()),
        }
    };
    let Some(kv) = state.store.get(&key).await? else {
        return create().await;
    };
    let existing = objects::from_stored(rt, &kv.value, kv.mod_revision)?;
    let verdict = if rt.kind.ends_with("Binding") {
        reconcile_binding(expected, &existing)
    } else {
        reconcile_role(expected, &existing)
    };
    match verdict {
        Reconciled::Keep => Ok(()),
        Reconciled::Update(mut obj) => {
            objects::prepare_update(rt, &existing, &mut obj, false);
            objects::validate(rt, &obj)?;
            match state
                .store
                .update(&key, objects::to_stored(&obj), kv.mod_revision)
                .await
            {
                Ok(_) => {
                    tracing::info!(kind = rt.kind, name = %name, "reconciled bootstrap RBAC object");
                    Ok(())
                }
                Err(rke2_datastore::StoreError::Conflict { .. }) => Err(conflict()),
                Err(e) => Err(e.into()),
            }
        }
        Reconciled::Recreate => {
            match state.store.delete(&key, kv.mod_revision).await {
                Ok(_) | Err(rke2_datastore::StoreError::NotFound) => {}
                Err(rke2_datastore::StoreError::Conflict { .. }) => return Err(conflict()),
                Err(e) => return Err(e.into()),
            }
            create().await
        }
    }
}

#[cfg(test)]
mod tests;
