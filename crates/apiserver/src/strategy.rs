//! Per-kind behaviour of the served types, kube-apiserver's
//! `RESTStrategy` and its companions: every registry entry names one
//! [`Strategy`], and the verbs call its hooks (defaulting, validation,
//! update rules, per-path update preparation, admission that needs the
//! object's kind, address allocation, graceful or custom deletion, the
//! watch cache's index). No verb branches on a kind's name; a type with
//! nothing special uses [`Plain`], whose hooks do nothing.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::objects::{self, MAX_DATA_BYTES, name_of, quoted, too_long};
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};
use crate::{ApiState, Identity};

/// One field error: (field, type, detail), as `ApiError::invalid` takes.
pub type Cause = (String, String, String);

/// A deletion that is a process of its own (a Namespace empties itself
/// before it goes): takes the stored object and its revision, answers
/// the object as the client sees it.
pub type DeleteFn = for<'a> fn(&'a ApiState, Value, i64) -> BoxFuture<'a, ApiResult<Value>>;

/// What an update through a path knows besides the objects.
#[derive(Clone, Copy)]
pub struct UpdateAt<'a> {
    /// The type.
    pub rt: &'a ResourceType,
    /// Shared server state (admission that reads other objects).
    pub state: &'a ApiState,
    /// Who sent the update.
    pub identity: &'a Identity,
    /// The subresource written (`None` for the object itself).
    pub subresource: Option<&'a str>,
}

/// A secondary index of a type's watch cache.
#[derive(Debug, Clone, Copy)]
pub struct WatchIndex {
    /// The field selector label whose watches the index serves as
    /// triggers (`spec.nodeName`), if any; `metadata.name` always is one.
    pub field: Option<&'static str>,
    /// The values an object is filed under.
    pub values: fn(&Value) -> Vec<String>,
}

/// Where the `scale` subresource of a type reads and writes (simple
/// JSONPaths, as a CRD's `subresources.scale` names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSpec {
    /// The desired replicas (`.spec.replicas`).
    pub spec_replicas: String,
    /// The observed replicas (`.status.replicas`).
    pub status_replicas: String,
    /// A label selector in string form (`.status.selector`); `None`
    /// reads `spec.selector.matchLabels` as the built-in workloads have it.
    pub label_selector: Option<String>,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        Self {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        }
    }
}

/// The hooks of one served type. Every hook has a default that does
/// nothing special, so a type overrides only what it has.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// What is wrong with `name` as an object name of this type
    /// (default: a DNS subdomain, upstream's `NameIsDNSSubdomain`).
    fn name_problems(&self, name: &str) -> Vec<String> {
        rke2_apimachinery::validation::validate_object_name(true, name)
    }

    /// The fields of a written object its type does not know (dropped,
    /// warned about or refused per `fieldValidation`), or why the object
    /// cannot be decoded as the type at all.
    fn unknown_fields(
        &self,
        rt: &ResourceType,
        obj: &Value,
    ) -> Result<Vec<crate::schema::FieldPath>, crate::schema::TypeError> {
        (rt.schema)(obj)
    }

    /// Whether an update changes what `metadata.generation` counts.
    fn bumps_generation(&self, old: &Value, new: &Value) -> bool {
        old["spec"] != new["spec"]
    }

    /// Where the `scale` subresource reads and writes.
    fn scale(&self) -> ScaleSpec {
        ScaleSpec::default()
    }

    /// How server-side apply merges the list at `path` (property names
    /// from the root), when the type knows (a CRD's
    /// `x-kubernetes-list-type`/`-list-map-keys`); `None` leaves it to the
    /// built-in patch strategies.
    fn apply_list_strategy(
        &self,
        _path: &[&str],
    ) -> Option<rke2_apimachinery::strategic_merge::ListStrategy> {
        None
    }

    /// Whether strategic merge patches are served (upstream refuses them
    /// for custom resources, whose Go types carry no patch strategies).
    fn strategic_merge_patch(&self) -> bool {
        true
    }

    /// The OpenAPI v3 schema of the type for `/openapi/v3`, when it has
    /// one to publish (custom types).
    fn openapi_schema(&self) -> Option<Value> {
        None
    }

    /// Fills in the defaults kube-apiserver applies (create and update).
    fn defaults(&self, _rt: &ResourceType, _obj: &mut Value) {}

    /// The type's own validation of a whole object.
    fn validate(&self, _rt: &ResourceType, _obj: &Value, _causes: &mut Vec<Cause>) {}

    /// The rules comparing an update with the stored object.
    fn validate_update(
        &self,
        _rt: &ResourceType,
        _old: &Value,
        _new: &Value,
        _causes: &mut Vec<Cause>,
    ) {
    }

    /// What an update keeps from the stored object besides the generic
    /// server-owned metadata.
    fn carry_over(&self, _old: &Value, _new: &mut Value) {}

    /// Fields a create takes from the requester (after the generic
    /// preparation, before validation).
    fn prepare_create(&self, _obj: &mut Value, _requester: &Identity) {}

    /// Admission of a create that only needs the object (after validation).
    fn admit_create(&self, _rt: &ResourceType, _obj: &Value) -> ApiResult<()> {
        Ok(())
    }

    /// Admission of a create that reads other objects and may change this
    /// one (after the namespace check).
    fn admit_create_with<'a>(
        &'a self,
        _state: &'a ApiState,
        _obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Claims what a new object holds (addresses, ports) before it is
    /// stored; the claim keys are released if the store refuses it.
    fn allocate<'a>(
        &'a self,
        _state: &'a ApiState,
        _obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Whether objects of this type hold claims [`Strategy::release`]
    /// gives back (saves decoding objects that hold none).
    fn holds_allocations(&self) -> bool {
        false
    }

    /// Releases what a deleted object held.
    fn release<'a>(&'a self, _state: &'a ApiState, _obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Carries the server-owned fields of `old` into an update through
    /// `at.subresource` (the object itself or `status`), and runs what a
    /// path of its own needs.
    fn prepare_update<'a>(
        &'a self,
        at: UpdateAt<'a>,
        old: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        objects::prepare_update(at.rt, old, new, at.subresource == Some("status"));
        Box::pin(async { Ok(()) })
    }

    /// The grace period a deletion waits for (the object stays, marked,
    /// meanwhile), or `None` to delete at once; `opts` is the
    /// DeleteOptions body, `query` the `gracePeriodSeconds` parameter.
    fn grace_period(&self, _obj: &Value, _opts: &Value, _query: Option<&str>) -> Option<i64> {
        None
    }

    /// Whether the stored object may be deleted at all (objects the system
    /// needs refuse, before anything is written).
    fn admit_delete(&self, _obj: &Value) -> ApiResult<()> {
        Ok(())
    }

    /// A deletion of its own, replacing the generic one (and the garbage
    /// collector's finalizers).
    fn custom_delete(&self) -> Option<DeleteFn> {
        None
    }

    /// The secondary index of the type's watch cache, if it has one.
    fn watch_index(&self) -> Option<WatchIndex> {
        None
    }

    /// Whether the type is served through a watch cache.
    fn watch_cached(&self) -> bool {
        true
    }

    /// The `group/version` objects are stored in, when it may differ from
    /// the version served (custom types: the CRD's storage version).
    fn storage_api_version(&self) -> Option<&str> {
        None
    }

    /// The webhook that converts stored objects to the version served and
    /// back (a CRD's `Webhook` conversion); `None` converts by rewriting
    /// `apiVersion`.
    fn conversion_webhook(&self) -> Option<&crate::crd::conversion::Webhook> {
        None
    }

    /// The built-in conversion of a type served in more versions than
    /// the one it is stored in (HorizontalPodAutoscalers): converts an
    /// object to the given `group/version` in place.
    fn convert_version(&self) -> Option<ConvertFn> {
        None
    }
}

/// A built-in conversion: the object, the `group/version` wanted.
pub type ConvertFn = fn(&mut Value, &str);

/// A type with no behaviour of its own.
#[derive(Debug)]
pub struct Plain;
impl Strategy for Plain {}

/// Events: not worth a watch cache (many, short-lived, rarely watched).
#[derive(Debug)]
pub struct Event;
impl Strategy for Event {
    fn watch_cached(&self) -> bool {
        false
    }
}

/// Namespaces: label names, the `kubernetes` finalizer, the
/// `kubernetes.io/metadata.name` label, and a deletion that empties the
/// namespace first ([`crate::namespaces`]).
#[derive(Debug)]
pub struct Namespace;
impl Strategy for Namespace {
    fn name_problems(&self, name: &str) -> Vec<String> {
        rke2_apimachinery::validation::validate_object_name(false, name)
    }

    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if !obj["spec"]["finalizers"].is_array() {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
        }
        if !obj["status"]["phase"].is_string() {
            obj["status"]["phase"] = json!("Active");
        }
        let name = name_of(obj).to_string();
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }

    fn carry_over(&self, old: &Value, new: &mut Value) {
        new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name_of(old));
    }

    fn custom_delete(&self) -> Option<DeleteFn> {
        Some(|state, ns, rev| Box::pin(crate::namespaces::begin_delete(state, ns, rev)))
    }
}

/// Nodes: pod CIDRs are only ever set, never changed.
#[derive(Debug)]
pub struct Node;
impl Strategy for Node {
    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        const FORBIDDEN: &str = "node updates may not change podCIDR except from \"\" to valid";
        let forbidden = || {
            (
                "spec.podCIDRs".to_string(),
                "Forbidden".to_string(),
                FORBIDDEN.to_string(),
            )
        };
        let old_cidrs = pod_cidrs(old);
        let new_cidrs = pod_cidrs(new);
        if !old_cidrs.is_empty() {
            // Upstream reports a length change once, else every changed
            // entry.
            let before = causes.len();
            if old_cidrs.len() != new_cidrs.len() {
                causes.push(forbidden());
            } else {
                for (o, n) in old_cidrs.iter().zip(&new_cidrs) {
                    if o != n {
                        causes.push(forbidden());
                    }
                }
            }
            // Upstream derives podCIDR from podCIDRs[0]; a stored object
            // must not say two different things.
            let single = new["spec"]["podCIDR"].as_str().unwrap_or("");
            if causes.len() == before && !single.is_empty() && Some(&single) != new_cidrs.first() {
                causes.push(forbidden());
            }
        }
    }
}

/// Pods: defaults, a spec fixed after creation, the service account
/// admission, graceful deletion, and the watch index by node.
#[derive(Debug)]
pub struct Pod;
impl Strategy for Pod {
    fn unknown_fields(
        &self,
        rt: &ResourceType,
        obj: &Value,
    ) -> Result<Vec<crate::schema::FieldPath>, crate::schema::TypeError> {
        if let Some(e) = crate::quota::pod_bad_quantity(obj) {
            return Err(e);
        }
        (rt.schema)(obj)
    }

    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        default_pod_spec(&mut obj["spec"]);
        default_requests_to_limits(&mut obj["spec"]);
        crate::resize::default_resize_policy(&mut obj["spec"]);
        if !obj["status"]["phase"].is_string() {
            obj["status"]["phase"] = json!("Pending");
        }
        // Recorded at create, as upstream's PrepareForCreate does.
        if !obj["status"]["qosClass"].is_string() {
            obj["status"]["qosClass"] = json!(rke2_apimachinery::qos::qos_class(&obj["spec"]));
        }
        if !obj["spec"]["serviceAccountName"].is_string() {
            obj["spec"]["serviceAccountName"] = json!("default");
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        if obj["spec"]["containers"]
            .as_array()
            .map(|c| c.is_empty())
            .unwrap_or(true)
        {
            causes.push(("spec.containers".into(), "Required value".into(), "".into()));
        }
    }

    fn validate_update(
        &self,
        rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        if crate::resize::is_resize(new) {
            causes.extend(crate::resize::validate(old, new));
            return;
        }
        if old["spec"] != new["spec"] {
            // With today's defaults, as `new` has them.
            let mut old = old.clone();
            self.defaults(rt, &mut old);
            if let Some(cause) = pod_spec_update(&old["spec"], &new["spec"]) {
                causes.push(cause);
            }
            causes.extend(crate::ephemeral::update_causes(&old["spec"], &new["spec"]));
        }
    }

    fn prepare_update<'a>(
        &'a self,
        at: UpdateAt<'a>,
        old: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        if at.subresource == Some("ephemeralcontainers") {
            crate::ephemeral::take_ephemeral_containers(old, new);
        }
        let resize = at.subresource == Some("resize");
        if resize {
            crate::resize::take_resize(old, new);
        }
        objects::prepare_update(at.rt, old, new, at.subresource == Some("status"));
        if resize {
            crate::resize::unmark(new);
        }
        if at.subresource.is_none() {
            refuse_ephemeral_change(self, at.rt, old, new);
        }
        Box::pin(async { Ok(()) })
    }

    fn admit_create_with<'a>(
        &'a self,
        state: &'a ApiState,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            crate::serviceaccounts::admit_pod(state, obj).await?;
            crate::scheduling::admit_pod(state, obj).await
        })
    }

    fn admit_create(&self, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
        let causes = crate::ephemeral::create_causes(&obj["spec"]);
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid(&rt.kind, name_of(obj), rt, &causes))
    }

    fn grace_period(&self, obj: &Value, opts: &Value, query: Option<&str>) -> Option<i64> {
        pod_grace_period(obj, opts, query)
    }

    fn watch_index(&self) -> Option<WatchIndex> {
        Some(WatchIndex {
            field: Some("spec.nodeName"),
            values: |o| {
                o["spec"]["nodeName"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(|n| vec![n.to_string()])
                    .unwrap_or_default()
            },
        })
    }
}

/// The grace period a pod deletion waits for, or `None` when the pod is
/// to be removed at once: upstream's rules — the request's
/// `gracePeriodSeconds` (body or query), else the pod's
/// `terminationGracePeriodSeconds` (30); zero for pods not bound to a
/// node (nothing runs them) and for pods already finished.
fn pod_grace_period(pod: &Value, opts: &Value, query: Option<&str>) -> Option<i64> {
    let requested = opts["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| query.and_then(|q| q.parse().ok()));
    let unscheduled = pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        return None;
    }
    let grace = requested.unwrap_or_else(|| {
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30)
    });
    // A negative request means "as short as possible" but still graceful.
    let grace = if grace < 0 { 1 } else { grace };
    (grace > 0).then_some(grace)
}

/// Services: DNS-1035 names, defaults, [`crate::services`]' rules, and a
/// ClusterIP and NodePorts claimed on create ([`crate::allocator`]).
#[derive(Debug)]
pub struct Service;
impl Strategy for Service {
    fn name_problems(&self, name: &str) -> Vec<String> {
        // upstream's `ValidateServiceName`: a DNS-1035 label (it becomes a
        // DNS name and an environment variable prefix).
        rke2_apimachinery::validation::validate_dns1035_label(name)
    }

    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if !spec.is_object() {
            *spec = json!({});
        }
        if let Some(m) = spec.as_object_mut() {
            default_str(m, "type", "ClusterIP");
            default_str(m, "sessionAffinity", "None");
            default_str(m, "internalTrafficPolicy", "Cluster");
            if let Some(ports) = m.get_mut("ports").and_then(|p| p.as_array_mut()) {
                for p in ports {
                    if let Some(pm) = p.as_object_mut() {
                        default_str(pm, "protocol", "TCP");
                        if pm.get("targetPort").map(|t| t.is_null()).unwrap_or(true) {
                            let port = pm.get("port").cloned().unwrap_or(json!(0));
                            pm.insert("targetPort".into(), port);
                        }
                    }
                }
            }
        }
        if !obj["status"].is_object() {
            obj["status"] = json!({"loadBalancer": {}});
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        crate::services::validate_service(obj, causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        crate::services::validate_service_update(old, new, causes);
    }

    fn allocate<'a>(
        &'a self,
        state: &'a ApiState,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<Vec<String>>> {
        Box::pin(crate::allocator::allocate_service(state, obj))
    }

    fn holds_allocations(&self) -> bool {
        true
    }

    fn release<'a>(&'a self, state: &'a ApiState, obj: &'a Value) -> BoxFuture<'a, ()> {
        Box::pin(crate::allocator::release_service(state, obj))
    }
}

/// EndpointSlices: [`crate::services`]' defaults and rules.
#[derive(Debug)]
pub struct EndpointSlice;
impl Strategy for EndpointSlice {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        crate::services::default_endpoint_slice(obj);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        crate::services::validate_endpoint_slice(obj, false, causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        crate::services::validate_endpoint_slice_update(old, new, causes);
    }
}

/// ConfigMaps: keys that become file names, and the 1 MiB bound.
#[derive(Debug)]
pub struct ConfigMap;
impl Strategy for ConfigMap {
    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_config_map(obj, causes);
    }
}

/// Secrets: `stringData` folded into `data`, the `Opaque` type, base64
/// values, keys and the 1 MiB bound.
#[derive(Debug)]
pub struct Secret;
impl Strategy for Secret {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(string_data) = obj
            .as_object_mut()
            .and_then(|m| m.remove("stringData"))
            .and_then(|s| s.as_object().cloned())
        {
            use base64::Engine;
            for (k, v) in string_data {
                let enc = base64::engine::general_purpose::STANDARD
                    .encode(v.as_str().unwrap_or("").as_bytes());
                obj["data"][k] = json!(enc);
            }
        }
        if !obj["type"].is_string() {
            obj["type"] = json!("Opaque");
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_secret(obj, causes);
    }
}

/// Deployments: defaults and the workload rules.
#[derive(Debug)]
pub struct Deployment;
impl Strategy for Deployment {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if let Some(m) = spec.as_object_mut() {
            default_val(m, "replicas", json!(1));
            default_val(m, "revisionHistoryLimit", json!(10));
            default_val(m, "progressDeadlineSeconds", json!(600));
            if m.get("strategy")
                .map(|s| s.is_null() || s.as_object().map(|o| o.is_empty()).unwrap_or(false))
                .unwrap_or(true)
            {
                m.insert(
                    "strategy".into(),
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
            }
        }
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_workload(obj, causes);
    }
}

/// ReplicaSets: defaults and the workload rules.
#[derive(Debug)]
pub struct ReplicaSet;
impl Strategy for ReplicaSet {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(m) = obj["spec"].as_object_mut() {
            default_val(m, "replicas", json!(1));
        }
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_workload(obj, causes);
    }
}

/// DaemonSets: defaults and the workload rules.
#[derive(Debug)]
pub struct DaemonSet;
impl Strategy for DaemonSet {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(m) = obj["spec"].as_object_mut() {
            default_val(m, "revisionHistoryLimit", json!(10));
            default_val(
                m,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
        }
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_workload(obj, causes);
    }
}

/// StatefulSets: upstream's defaults (`SetDefaults_StatefulSet`), the
/// workload rules plus the StatefulSet ones, and the update rule that
/// only a few spec fields may change.
#[derive(Debug)]
pub struct StatefulSet;

/// Upstream's message for an update of a StatefulSet spec field that is
/// fixed once created (`ValidateStatefulSetUpdate`).
pub const STATEFULSET_SPEC_FORBIDDEN: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

impl Strategy for StatefulSet {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if let Some(m) = obj["spec"].as_object_mut() {
            default_val(m, "replicas", json!(1));
            default_val(m, "revisionHistoryLimit", json!(10));
            default_str(m, "podManagementPolicy", "OrderedReady");
            if m.get("updateStrategy")
                .map(|s| s.as_object().map(|o| o.is_empty()).unwrap_or(true))
                .unwrap_or(true)
            {
                m.insert("updateStrategy".into(), json!({"type": "RollingUpdate"}));
            }
            if let Some(us) = m.get_mut("updateStrategy").and_then(|u| u.as_object_mut()) {
                default_str(us, "type", "RollingUpdate");
                if us.get("type").and_then(|t| t.as_str()) == Some("RollingUpdate") {
                    default_val(us, "rollingUpdate", json!({}));
                    if let Some(ru) = us.get_mut("rollingUpdate").and_then(|r| r.as_object_mut()) {
                        default_val(ru, "partition", json!(0));
                    }
                }
            }
            default_val(
                m,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            if let Some(p) = m
                .get_mut("persistentVolumeClaimRetentionPolicy")
                .and_then(|p| p.as_object_mut())
            {
                default_str(p, "whenDeleted", "Retain");
                default_str(p, "whenScaled", "Retain");
            }
            if let Some(claims) = m
                .get_mut("volumeClaimTemplates")
                .and_then(|c| c.as_array_mut())
            {
                for c in claims {
                    let Some(cm) = c.as_object_mut() else {
                        continue;
                    };
                    default_str(cm, "apiVersion", "v1");
                    default_str(cm, "kind", "PersistentVolumeClaim");
                    if let Some(cs) = cm.get_mut("spec").and_then(|s| s.as_object_mut()) {
                        default_str(cs, "volumeMode", "Filesystem");
                    }
                    default_val(cm, "status", json!({"phase": "Pending"}));
                }
            }
        }
        // Upstream copies the template's labels to a StatefulSet without any.
        if obj["metadata"]["labels"]
            .as_object()
            .map(|l| l.is_empty())
            .unwrap_or(true)
            && let Some(l) = obj["spec"]["template"]["metadata"]["labels"].as_object()
            && !l.is_empty()
        {
            obj["metadata"]["labels"] = Value::Object(l.clone());
        }
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_workload(obj, causes);
        let spec = &obj["spec"];
        let unsupported = |field: &str, v: &Value, ok: &[&str], causes: &mut Vec<Cause>| {
            if let Some(s) = v.as_str()
                && !ok.contains(&s)
            {
                causes.push((
                    field.into(),
                    "Unsupported value".into(),
                    format!(
                        "{}: supported values: {}",
                        quoted(s),
                        ok.iter().map(|o| quoted(o)).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        };
        unsupported(
            "spec.podManagementPolicy",
            &spec["podManagementPolicy"],
            &["OrderedReady", "Parallel"],
            causes,
        );
        let us = &spec["updateStrategy"];
        unsupported(
            "spec.updateStrategy.type",
            &us["type"],
            &["RollingUpdate", "OnDelete"],
            causes,
        );
        if us["type"] == "OnDelete" && us["rollingUpdate"].is_object() {
            causes.push((
                "spec.updateStrategy.rollingUpdate".into(),
                "Invalid value".into(),
                "only allowed for updateStrategy 'RollingUpdate'".into(),
            ));
        }
        if let Some(p) = us["rollingUpdate"]["partition"].as_i64()
            && p < 0
        {
            causes.push((
                "spec.updateStrategy.rollingUpdate.partition".into(),
                "Invalid value".into(),
                format!("{p}: must be greater than or equal to 0"),
            ));
        }
        match &us["rollingUpdate"]["maxUnavailable"] {
            Value::Number(n) if n.as_i64().unwrap_or(0) < 1 => causes.push((
                "spec.updateStrategy.rollingUpdate.maxUnavailable".into(),
                "Invalid value".into(),
                format!("{n}: must be greater than 0"),
            )),
            Value::String(s)
                if s.strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|p| p == 0 || p > 100) =>
            {
                causes.push((
                    "spec.updateStrategy.rollingUpdate.maxUnavailable".into(),
                    "Invalid value".into(),
                    format!("{}: must be a positive percentage up to 100%", quoted(s)),
                ))
            }
            _ => {}
        }
        for key in ["whenDeleted", "whenScaled"] {
            unsupported(
                &format!("spec.persistentVolumeClaimRetentionPolicy.{key}"),
                &spec["persistentVolumeClaimRetentionPolicy"][key],
                &["Retain", "Delete"],
                causes,
            );
        }
        if let Some(m) = spec["minReadySeconds"].as_i64()
            && m < 0
        {
            causes.push((
                "spec.minReadySeconds".into(),
                "Invalid value".into(),
                format!("{m}: must be greater than or equal to 0"),
            ));
        }
        if let Some(o) = spec["ordinals"]["start"].as_i64()
            && o < 0
        {
            causes.push((
                "spec.ordinals.start".into(),
                "Invalid value".into(),
                format!("{o}: must be greater than or equal to 0"),
            ));
        }
        unsupported(
            "spec.template.spec.restartPolicy",
            &spec["template"]["spec"]["restartPolicy"],
            &["Always"],
            causes,
        );
        if let Some(t) = spec["template"]["spec"]["activeDeadlineSeconds"].as_i64() {
            causes.push((
                "spec.template.spec.activeDeadlineSeconds".into(),
                "Forbidden".into(),
                format!("{t}: activeDeadlineSeconds in StatefulSet is not Supported"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in spec["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let n = c["metadata"]["name"].as_str().unwrap_or("");
            if n.is_empty() {
                causes.push((
                    format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                    "Required value".into(),
                    "name or generateName is required".into(),
                ));
            } else if !names.insert(n.to_string()) {
                causes.push((
                    format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                    "Duplicate value".into(),
                    quoted(n),
                ));
            }
        }
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        let mut fixed_new = new["spec"].clone();
        if !fixed_new.is_object() || !old["spec"].is_object() {
            if fixed_new != old["spec"] {
                causes.push((
                    "spec".into(),
                    "Forbidden".into(),
                    STATEFULSET_SPEC_FORBIDDEN.into(),
                ));
            }
            return;
        }
        for key in [
            "replicas",
            "ordinals",
            "template",
            "updateStrategy",
            "revisionHistoryLimit",
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
        ] {
            match old["spec"].get(key) {
                Some(v) => fixed_new[key] = v.clone(),
                None => {
                    if let Some(m) = fixed_new.as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        }
        if fixed_new != old["spec"] {
            causes.push((
                "spec".into(),
                "Forbidden".into(),
                STATEFULSET_SPEC_FORBIDDEN.into(),
            ));
        }
    }
}

/// ControllerRevisions: a revision's `data` never changes (upstream's
/// `ValidateControllerRevisionUpdate`), and `revision` is not negative.
#[derive(Debug)]
pub struct ControllerRevision;
impl Strategy for ControllerRevision {
    fn bumps_generation(&self, _old: &Value, _new: &Value) -> bool {
        false
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        if let Some(r) = obj["revision"].as_i64()
            && r < 0
        {
            causes.push((
                "revision".into(),
                "Invalid value".into(),
                format!("{r}: must be greater than or equal to 0"),
            ));
        }
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        if old["data"] != new["data"] {
            causes.push((
                "data".into(),
                "Invalid value".into(),
                "field is immutable".into(),
            ));
        }
    }
}

/// Jobs: defaults (the controller's unique selector label included) and
/// a template with containers.
#[derive(Debug)]
pub struct Job;
impl Strategy for Job {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        // The Job controller's selector: a unique label on its pods.
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if let Some(m) = obj["spec"].as_object_mut() {
            default_val(m, "completions", json!(1));
            default_val(m, "parallelism", json!(1));
            // Upstream: no global limit when each index has its own.
            let limit = if m.get("backoffLimitPerIndex").is_some_and(|v| !v.is_null()) {
                i32::MAX
            } else {
                6
            };
            default_val(m, "backoffLimit", json!(limit));
            default_str(m, "completionMode", "NonIndexed");
            default_val(m, "suspend", json!(false));
        }
        if !uid.is_empty() && !obj["spec"]["selector"].is_object() {
            obj["spec"]["selector"] =
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            let name = name_of(obj).to_string();
            let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
            labels["batch.kubernetes.io/controller-uid"] = json!(uid);
            labels["batch.kubernetes.io/job-name"] = json!(name);
            labels["controller-uid"] = json!(uid);
            labels["job-name"] = json!(name);
        }
        if !obj["spec"]["template"]["spec"]["restartPolicy"].is_string() {
            obj["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        }
        default_pod_spec(&mut obj["spec"]["template"]["spec"]);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        crate::batch::validate_job_update(old, new, causes);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        crate::batch::validate_job_spec(&obj["spec"], "spec", causes);
        if obj["spec"]["completionMode"] == "Indexed" && !obj["spec"]["completions"].is_i64() {
            causes.push((
                "spec.completions".into(),
                "Required value".into(),
                "when completion mode is Indexed".into(),
            ));
        }
        if obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(|c| c.is_empty())
            .unwrap_or(true)
        {
            causes.push((
                "spec.template.spec.containers".into(),
                "Required value".into(),
                "".into(),
            ));
        }
    }
}

/// Roles and ClusterRoles ([`crate::rbac_objects`]): path-segment names
/// and the policy rules.
#[derive(Debug)]
pub struct RbacRole;
impl Strategy for RbacRole {
    fn name_problems(&self, name: &str) -> Vec<String> {
        crate::rbac_objects::name_problems(name)
    }

    fn defaults(&self, rt: &ResourceType, obj: &mut Value) {
        crate::rbac_objects::apply_defaults(rt, obj);
    }

    fn validate(&self, rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        crate::rbac_objects::validate(rt, obj, causes);
    }

    fn validate_update(
        &self,
        rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        causes.extend(crate::rbac_objects::validate_update(rt, old, new));
    }
}

/// RoleBindings and ClusterRoleBindings ([`crate::rbac_objects`]): as
/// [`RbacRole`], plus a fixed `roleRef` and the watch index by subject
/// the authorizer reads.
#[derive(Debug)]
pub struct RbacBinding;
impl Strategy for RbacBinding {
    fn name_problems(&self, name: &str) -> Vec<String> {
        RbacRole.name_problems(name)
    }

    fn defaults(&self, rt: &ResourceType, obj: &mut Value) {
        RbacRole.defaults(rt, obj);
    }

    fn validate(&self, rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        RbacRole.validate(rt, obj, causes);
    }

    fn validate_update(
        &self,
        rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        RbacRole.validate_update(rt, old, new, causes);
    }

    fn watch_index(&self) -> Option<WatchIndex> {
        Some(WatchIndex {
            field: None,
            values: crate::rbac::subject_keys,
        })
    }
}

/// CertificateSigningRequests ([`crate::csr`]): free names, the
/// requester's identity recorded on create, signer admission, and an
/// update strategy per path (`status`, `approval`).
#[derive(Debug)]
pub struct CertificateSigningRequest;
impl Strategy for CertificateSigningRequest {
    fn name_problems(&self, name: &str) -> Vec<String> {
        // upstream's `ValidateCertificateRequestName` allows anything a
        // path segment allows.
        crate::rbac_objects::name_problems(name)
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        crate::csr::validate(obj, causes);
    }

    fn prepare_create(&self, obj: &mut Value, requester: &Identity) {
        crate::csr::prepare_create(obj, requester);
    }

    fn admit_create(&self, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
        crate::csr::admit_create(rt, obj)
    }

    fn prepare_update<'a>(
        &'a self,
        at: UpdateAt<'a>,
        old: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            use crate::csr::UpdatePath;
            let rt = at.rt;
            let path = UpdatePath::of(at.subresource);
            // The generic step keeps the old status outside `status`;
            // `approval` takes its conditions from the request.
            let requested = new["status"].clone();
            objects::prepare_update(rt, old, new, path == UpdatePath::Status);
            if path == UpdatePath::Approval {
                new["status"] = requested;
            }
            let causes = crate::csr::prepare_update(old, new, path, &objects::now_rfc3339());
            if !causes.is_empty() {
                return Err(ApiError::invalid(&rt.kind, name_of(old), rt, &causes));
            }
            crate::csr::admit_update(at.state, at.identity, rt, path, old, new).await
        })
    }
}

// Helpers of the strategies above.

/// Keys that become file names in a volume, and the 1 MiB bound.
fn validate_config_map(obj: &Value, causes: &mut Vec<(String, String, String)>) {
    use base64::Engine;
    let mut total = 0;
    for bag in ["data", "binaryData"] {
        let Some(m) = obj[bag].as_object() else {
            continue;
        };
        for (k, v) in m {
            for msg in rke2_apimachinery::validation::validate_config_map_key(k) {
                causes.push((
                    format!("{bag}[{k}]"),
                    "Invalid value".into(),
                    format!("{}: {msg}", quoted(k)),
                ));
            }
            if bag == "data" && obj["binaryData"].get(k).is_some() {
                causes.push((
                    format!("data[{k}]"),
                    "Invalid value".into(),
                    format!("{}: duplicate of key present in binaryData", quoted(k)),
                ));
            }
            let s = v.as_str().unwrap_or("");
            total += match bag {
                "binaryData" => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_or(s.len(), |b| b.len()),
                _ => s.len(),
            };
        }
    }
    if total > MAX_DATA_BYTES {
        // Upstream names no field: the bound is the whole object's.
        causes.push(("[]".into(), "Too long".into(), too_long(MAX_DATA_BYTES)));
    }
}

/// Base64 values, config keys and the 1 MiB bound on the decoded data.
fn validate_secret(obj: &Value, causes: &mut Vec<(String, String, String)>) {
    use base64::Engine;
    let Some(data) = obj["data"].as_object() else {
        return;
    };
    let mut total = 0;
    for (k, val) in data {
        for msg in rke2_apimachinery::validation::validate_config_map_key(k) {
            causes.push((
                format!("data[{k}]"),
                "Invalid value".into(),
                format!("{}: {msg}", quoted(k)),
            ));
        }
        match val
            .as_str()
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
        {
            Some(Ok(bytes)) => total += bytes.len(),
            _ => causes.push((
                format!("data[{k}]"),
                "Invalid value".into(),
                "must be base64-encoded bytes".into(),
            )),
        }
    }
    if total > MAX_DATA_BYTES {
        causes.push(("data".into(), "Too long".into(), too_long(MAX_DATA_BYTES)));
    }
}

fn validate_workload(obj: &Value, causes: &mut Vec<(String, String, String)>) {
    let spec = &obj["spec"];
    if let Some(r) = spec["replicas"].as_i64()
        && r < 0
    {
        causes.push((
            "spec.replicas".into(),
            "Invalid value".into(),
            format!("{r}: must be greater than or equal to 0"),
        ));
    }
    let selector = &spec["selector"];
    if !selector.is_object()
        || (selector["matchLabels"]
            .as_object()
            .map(|m| m.is_empty())
            .unwrap_or(true)
            && selector["matchExpressions"]
                .as_array()
                .map(|m| m.is_empty())
                .unwrap_or(true))
    {
        causes.push(("spec.selector".into(), "Required value".into(), "".into()));
        return;
    }
    let labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    match rke2_apimachinery::selectors::label_selector_from_json(selector) {
        Ok(sel) => {
            if !sel.matches_value(Some(&labels)) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    "Invalid value".into(),
                    format!(
                        "{}: `selector` does not match template `labels`",
                        serde_json::to_string(&labels).unwrap_or_default()
                    ),
                ));
            }
        }
        Err(e) => causes.push((
            "spec.selector".into(),
            "Invalid value".into(),
            e.to_string(),
        )),
    }
    if spec["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        causes.push((
            "spec.template.spec.containers".into(),
            "Required value".into(),
            "".into(),
        ));
    }
}

fn default_str(m: &mut Map<String, Value>, k: &str, v: &str) {
    if !m.get(k).map(|x| x.is_string()).unwrap_or(false) {
        m.insert(k.into(), json!(v));
    }
}

fn default_val(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).map(|x| x.is_null()).unwrap_or(true) {
        m.insert(k.into(), v);
    }
}

fn default_container(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    default_str(m, "terminationMessagePath", "/dev/termination-log");
    default_str(m, "terminationMessagePolicy", "File");
    let image = m.get("image").and_then(|i| i.as_str()).unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    let pull = if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
        "IfNotPresent"
    } else {
        "Always"
    };
    default_str(m, "imagePullPolicy", pull);
    default_val(m, "resources", json!({}));
    if let Some(ports) = m.get_mut("ports").and_then(|p| p.as_array_mut()) {
        for p in ports {
            if let Some(pm) = p.as_object_mut() {
                default_str(pm, "protocol", "TCP");
            }
        }
    }
}

/// A pod's (not a template's) containers that set a limit but no
/// request get the limit as request (upstream's `SetDefaults_Pod`).
fn default_requests_to_limits(spec: &mut Value) {
    for key in ["containers", "initContainers"] {
        for c in spec[key].as_array_mut().into_iter().flatten() {
            let limits = c["resources"]["limits"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if limits.is_empty() {
                continue;
            }
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            for (k, v) in limits {
                if c["resources"]["requests"].get(&k).is_none() {
                    c["resources"]["requests"][&k] = v;
                }
            }
        }
    }
}

/// Pod spec defaults (also used for templates).
pub(crate) fn default_pod_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    default_str(m, "restartPolicy", "Always");
    default_val(m, "terminationGracePeriodSeconds", json!(30));
    default_str(m, "dnsPolicy", "ClusterFirst");
    default_val(m, "securityContext", json!({}));
    default_str(m, "schedulerName", "default-scheduler");
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = m.get_mut(key).and_then(|c| c.as_array_mut()) {
            cs.iter_mut().for_each(default_container);
        }
    }
}

/// Upstream's rule for pod updates: a pod's spec is fixed once created but
/// for container and init container images, `activeDeadlineSeconds`,
/// added tolerations and removed scheduling gates. (`spec.nodeName` is set
/// through the `binding` subresource, which does not come here.)
fn pod_spec_update(old: &Value, new: &Value) -> Option<(String, String, String)> {
    // `old` with every change the rule allows taken from `new`: whatever
    // still differs was not allowed.
    let mut allowed = old.clone();
    let take = |to: &mut Value, from: &Value, key: &str| match from.get(key) {
        Some(v) => to[key] = v.clone(),
        None => {
            if let Some(m) = to.as_object_mut() {
                m.remove(key);
            }
        }
    };
    for list in ["containers", "initContainers"] {
        if let (Some(a), Some(n)) = (allowed[list].as_array_mut(), new[list].as_array())
            && a.len() == n.len()
        {
            for (c, nc) in a.iter_mut().zip(n) {
                take(c, nc, "image");
            }
        }
    }
    take(&mut allowed, new, "activeDeadlineSeconds");
    // Judged by `crate::ephemeral::update_causes` (through the
    // subresource) or refused in `Pod::prepare_update` (a plain update).
    take(&mut allowed, new, "ephemeralContainers");
    let items = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let old_tolerations = items(old, "tolerations");
    if old_tolerations
        .iter()
        .all(|t| items(new, "tolerations").contains(t))
    {
        take(&mut allowed, new, "tolerations");
    }
    let new_gates = items(new, "schedulingGates");
    if new_gates
        .iter()
        .all(|g| items(old, "schedulingGates").contains(g))
    {
        take(&mut allowed, new, "schedulingGates");
    }
    (allowed != *new).then(pod_spec_forbidden)
}

/// Upstream's ValidatePodUpdate does not let a plain update (PUT, PATCH,
/// apply of the pod) touch `spec.ephemeralContainers`: only the
/// `ephemeralcontainers` subresource may. `validate_update` cannot tell
/// the two paths apart, so the plain path records the violation here.
fn refuse_ephemeral_change(pod: &Pod, rt: &ResourceType, old: &Value, new: &mut Value) {
    let mut old = old.clone();
    pod.defaults(rt, &mut old);
    if crate::ephemeral::changed(&old["spec"], &new["spec"]) {
        // The subresource's own rules (`may not be removed`) are not
        // upstream's answer to a plain update: this one is.
        if let Some(list) = new
            .get_mut(objects::UPDATE_VIOLATIONS)
            .and_then(Value::as_array_mut)
        {
            list.retain(|c| {
                !c[0]
                    .as_str()
                    .is_some_and(|f| f.starts_with("spec.ephemeralContainers"))
            });
        }
        objects::add_update_violation(new, pod_spec_forbidden());
    }
}

/// Upstream's cause for a pod update that changes what it may not.
fn pod_spec_forbidden() -> (String, String, String) {
    (
        "spec".to_string(),
        "Forbidden".to_string(),
        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".to_string(),
    )
}

/// A Node's pod CIDRs as upstream's internal object has them:
/// `spec.podCIDRs`, else `[spec.podCIDR]` when that alone is set.
fn pod_cidrs(node: &Value) -> Vec<&str> {
    let list: Vec<&str> = node["spec"]["podCIDRs"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    if !list.is_empty() {
        return list;
    }
    match node["spec"]["podCIDR"].as_str() {
        Some(c) if !c.is_empty() => vec![c],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn entries_bring_their_own_hooks() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            pods.strategy.watch_index().and_then(|i| i.field),
            Some("spec.nodeName")
        );
        let pod = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert_eq!(pods.strategy.grace_period(&pod, &json!({}), None), Some(30));
        assert_eq!(
            pods.strategy.grace_period(&pod, &json!({}), Some("0")),
            None
        );
        let cms = find("", "v1", "configmaps").unwrap();
        assert_eq!(cms.strategy.grace_period(&pod, &json!({}), None), None);
        assert!(cms.strategy.custom_delete().is_none());
        let ns = find("", "v1", "namespaces").unwrap();
        assert!(ns.strategy.custom_delete().is_some());
        // Namespaces are labels, not subdomains.
        assert!(!ns.strategy.name_problems("a.b").is_empty());
        assert!(cms.strategy.name_problems("a.b").is_empty());
        assert!(!find("", "v1", "events").unwrap().strategy.watch_cached());
        assert!(
            find("", "v1", "services")
                .unwrap()
                .strategy
                .holds_allocations()
        );
        let rb = find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        assert!(rb.strategy.watch_index().is_some_and(|i| i.field.is_none()));
    }

    #[test]
    fn ephemeral_containers_change_only_through_their_subresource() {
        let rt = find("", "v1", "pods").unwrap();
        let mut old = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "containers": [{"name": "c", "image": "i:1"}]}});
        rt.strategy.defaults(rt, &mut old);
        let mut added = old.clone();
        added["spec"]["ephemeralContainers"] =
            json!([{"name": "dbg", "image": "busybox", "stdin": true}]);
        rt.strategy.defaults(rt, &mut added);
        let violations = |new: &Value| new[objects::UPDATE_VIOLATIONS].clone();

        // A plain update adding one: upstream's pod-update 422.
        let mut plain = added.clone();
        objects::prepare_update(rt, &old, &mut plain, false);
        refuse_ephemeral_change(&Pod, rt, &old, &mut plain);
        let (f, t, d) = pod_spec_forbidden();
        assert_eq!(violations(&plain), json!([[f, t, d]]));
        let e = objects::validate(rt, &plain).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .contains("spec: Forbidden: pod updates may not change fields other than"),
            "{}",
            e.message
        );

        // The same change through the subresource (what `prepare_update`
        // does for it) is fine.
        let mut sub = added.clone();
        crate::ephemeral::take_ephemeral_containers(&old, &mut sub);
        objects::prepare_update(rt, &old, &mut sub, false);
        assert!(violations(&sub).is_null(), "{}", violations(&sub));

        // Unchanged ones (absent and empty alike) pass a plain update, as
        // does a change that is allowed (an image).
        let mut image = added.clone();
        image["spec"]["containers"][0]["image"] = json!("i:2");
        objects::prepare_update(rt, &added, &mut image, false);
        refuse_ephemeral_change(&Pod, rt, &added, &mut image);
        assert!(violations(&image).is_null(), "{}", violations(&image));
        let mut empty = old.clone();
        empty["spec"]["ephemeralContainers"] = json!([]);
        refuse_ephemeral_change(&Pod, rt, &old, &mut empty);
        assert!(violations(&empty).is_null());

        // Removing one by a plain update is refused the same way, once.
        let mut removed = old.clone();
        objects::prepare_update(rt, &added, &mut removed, false);
        refuse_ephemeral_change(&Pod, rt, &added, &mut removed);
        assert_eq!(violations(&removed).as_array().map(Vec::len), Some(1));

        // A body that is not an object is left for the type check.
        let mut junk = json!("x");
        refuse_ephemeral_change(&Pod, rt, &added, &mut junk);
        assert_eq!(junk, json!("x"));
    }

    #[test]
    fn statefulsets_default_validate_and_fix_their_spec() {
        let rt = find("apps", "v1", "statefulsets").unwrap();
        let mut sts = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "w"}},
            "serviceName": "web",
            "template": {"metadata": {"labels": {"app": "w"}},
                         "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
        }});
        rt.strategy.defaults(rt, &mut sts);
        let spec = &sts["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(sts["metadata"]["labels"], json!({"app": "w"}));
        let mut causes = Vec::new();
        rt.strategy.validate(rt, &sts, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let mut bad = sts.clone();
        bad["spec"]["podManagementPolicy"] = json!("Random");
        bad["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(-1);
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        rt.strategy.validate(rt, &bad, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.podManagementPolicy",
                "spec.updateStrategy.rollingUpdate.partition",
                "spec.template.spec.restartPolicy"
            ]
        );
        assert_eq!(
            causes[0].2,
            r#""Random": supported values: "OrderedReady", "Parallel""#
        );

        // Updates: replicas, template, strategy and the rest of the list
        // may change; claim templates and serviceName may not.
        let mut causes = Vec::new();
        let mut ok = sts.clone();
        ok["spec"]["replicas"] = json!(5);
        ok["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i:2");
        ok["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        ok["spec"]["minReadySeconds"] = json!(3);
        rt.strategy.validate_update(rt, &sts, &ok, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        for (path, value) in [
            ("volumeClaimTemplates", json!([])),
            ("serviceName", json!("other")),
            ("podManagementPolicy", json!("Parallel")),
        ] {
            let mut changed = sts.clone();
            changed["spec"][path] = value;
            rt.strategy.validate_update(rt, &sts, &changed, &mut causes);
            assert_eq!(
                causes.pop(),
                Some((
                    "spec".to_string(),
                    "Forbidden".to_string(),
                    STATEFULSET_SPEC_FORBIDDEN.to_string()
                )),
                "{path}"
            );
        }
    }

    #[test]
    fn controller_revision_data_is_immutable() {
        let rt = find("apps", "v1", "controllerrevisions").unwrap();
        let old = json!({"metadata": {"name": "r"}, "revision": 1, "data": {"a": 1}});
        let mut causes = Vec::new();
        let mut renumbered = old.clone();
        renumbered["revision"] = json!(2);
        rt.strategy
            .validate_update(rt, &old, &renumbered, &mut causes);
        assert!(causes.is_empty());
        let mut changed = old.clone();
        changed["data"] = json!({"a": 2});
        rt.strategy.validate_update(rt, &old, &changed, &mut causes);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].0, "data");
    }
}
