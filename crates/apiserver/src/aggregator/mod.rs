//! API aggregation (kube-aggregator): `apiregistration.k8s.io/v1`
//! APIServices, and the requests for a group/version that an extension
//! apiserver serves, proxied to it.
//!
//! * **APIService objects** ([`ApiServiceStrategy`]): cluster-scoped,
//!   named `<version>.<group>`, validated as upstream
//!   (`validation.ValidateAPIService`); a `service` reference makes the
//!   group/version *remote*, none makes it *local* (served here).
//! * **Local APIServices** ([`ensure_builtin`]): every built-in
//!   group/version gets one at start, as kube-apiserver's autoregister
//!   controller creates them (`v1.`, `v1.apps`, ...; upstream's
//!   priorities; label `kube-aggregator.kubernetes.io/automanaged:
//!   onstart`; `Available=True`, reason `Local`).
//! * **`kube-system/extension-apiserver-authentication`**
//!   ([`ensure_builtin`]): the client CA and the request-header settings
//!   extension apiservers read to trust the front-proxy headers.
//! * **Routing** ([`serve`]): a request under `/apis/<g>/<v>` for a remote
//!   APIService is authorized here (resource attributes parsed from the
//!   path as upstream's `RequestInfoFactory`), then proxied
//!   ([`forward`]); `/apis/<g>` of a remote group is answered from the
//!   APIServices; `/apis` lists remote groups after the local ones
//!   ([`merge_groups`]).
//! * **Availability** ([`available`]): every apiserver checks each remote
//!   APIService (Service, Ready endpoints, a discovery GET) and writes
//!   `status.conditions[Available]` with upstream's reasons.
//!
//! Architecture invariant: only [`forward`] and [`available`] talk to
//! extension servers; everything else is rules over objects, unit-tested.

pub mod available;
pub mod forward;

use std::sync::Arc;

use serde_json::{Value, json};

use crate::objects::{self, name_of};
use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, Strategy};
use crate::{ApiState, Identity};

/// The API group of APIServices.
pub const GROUP: &str = "apiregistration.k8s.io";

/// The user name of the front-proxy client certificate (RKE2's
/// `--requestheader-allowed-names=system:auth-proxy`).
pub const AUTH_PROXY_USER: &str = "system:auth-proxy";

/// The request headers carrying the user, groups and extras to an
/// extension apiserver (RKE2's `--requestheader-*-headers`).
pub const USER_HEADER: &str = "X-Remote-User";
/// See [`USER_HEADER`].
pub const GROUP_HEADER: &str = "X-Remote-Group";
/// See [`USER_HEADER`].
pub const EXTRA_HEADER_PREFIX: &str = "X-Remote-Extra-";

/// Label of the APIServices this server keeps for its own groups.
pub const AUTOMANAGED_LABEL: &str = "kube-aggregator.kubernetes.io/automanaged";

/// What the aggregator needs besides the object store: the front-proxy
/// client certificate it presents to extension servers, the CAs it
/// publishes for them, and what their discovery last answered.
#[derive(Clone)]
pub struct AggregatorConfig {
    /// `client-auth-proxy.crt` (request-header CA, `CN=system:auth-proxy`).
    pub proxy_cert_pem: String,
    /// `client-auth-proxy.key`.
    pub proxy_key_pem: String,
    /// The client CA (PEM): `client-ca-file` of the published ConfigMap.
    pub client_ca_pem: String,
    /// The request-header CA (PEM): `requestheader-client-ca-file`.
    pub request_header_ca_pem: String,
    /// The `APIResourceList` each remote APIService's server last
    /// answered to the availability check, by APIService name; feeds
    /// aggregated (v2) discovery.
    pub discovered: Arc<DiscoveryCache>,
}

/// Resource lists of remote group/versions, by APIService name.
#[derive(Debug, Default)]
pub struct DiscoveryCache(std::sync::RwLock<std::collections::HashMap<String, Value>>);

impl DiscoveryCache {
    /// Keeps the latest `APIResourceList` of an APIService.
    pub fn put(&self, apiservice: &str, list: Value) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(apiservice.to_string(), list);
    }

    /// The latest `APIResourceList` of an APIService, if any.
    pub fn get(&self, apiservice: &str) -> Option<Value> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(apiservice)
            .cloned()
    }
}

impl std::fmt::Debug for AggregatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds a private key: never print it.
        f.debug_struct("AggregatorConfig").finish_non_exhaustive()
    }
}

/// The registry entry of APIServices.
pub fn apiservices() -> &'static ResourceType {
    registry::find(GROUP, "v1", "apiservices").expect("apiservices are registered")
}

// ------------------------------------------------------------ the type

/// APIServices: upstream's defaulting (`service.port` 443) and validation.
#[derive(Debug)]
pub struct ApiServiceStrategy;

impl Strategy for ApiServiceStrategy {
    fn name_problems(&self, name: &str) -> Vec<String> {
        // Upstream checks the path segment first; that the name is
        // `<version>.<group>` needs the spec, see `validate`.
        crate::rbac_objects::name_problems(name)
    }

    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if obj["spec"]["service"].is_object() && obj["spec"]["service"]["port"].is_null() {
            obj["spec"]["service"]["port"] = json!(443);
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_apiservice(obj, causes);
    }
}

fn invalid(field: &str, value: String, detail: &str) -> Cause {
    (
        field.to_string(),
        "Invalid value".to_string(),
        format!("{value}: {detail}"),
    )
}

/// Upstream's `ValidateAPIService` (the metadata checks besides the name
/// are the generic ones).
pub fn validate_apiservice(obj: &Value, causes: &mut Vec<Cause>) {
    use rke2_apimachinery::validation as v;
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let version = spec["version"].as_str().unwrap_or("");
    let name = name_of(obj);
    let required = format!("{version}.{group}");
    if !name.is_empty() && crate::rbac_objects::name_problems(name).is_empty() && name != required {
        causes.push(invalid(
            "metadata.name",
            objects::quoted(name),
            &format!(
                "must be `spec.version+\".\"+spec.group`: {}",
                objects::quoted(&required)
            ),
        ));
    }
    if group.is_empty() && version != "v1" {
        causes.push((
            "spec.group".into(),
            "Required value".into(),
            "only v1 may have an empty group and it better be legacy kube".into(),
        ));
    }
    if !group.is_empty() {
        for msg in v::validate_dns1123_subdomain(group) {
            causes.push(invalid("spec.group", objects::quoted(group), &msg));
        }
    }
    for msg in v::validate_dns1035_label(version) {
        causes.push(invalid("spec.version", objects::quoted(version), &msg));
    }
    let group_priority = spec["groupPriorityMinimum"].as_i64().unwrap_or(0);
    if group_priority <= 0 || group_priority > 20000 {
        causes.push(invalid(
            "spec.groupPriorityMinimum",
            group_priority.to_string(),
            "must be positive and less than 20000",
        ));
    }
    let version_priority = spec["versionPriority"].as_i64().unwrap_or(0);
    if version_priority <= 0 || version_priority > 1000 {
        causes.push(invalid(
            "spec.versionPriority",
            version_priority.to_string(),
            "must be positive and less than 1000",
        ));
    }
    let ca_len = ca_bundle(obj).map(|b| b.len()).unwrap_or(0);
    let insecure = spec["insecureSkipTLSVerify"].as_bool().unwrap_or(false);
    let service = &spec["service"];
    if !service.is_object() {
        if ca_len != 0 {
            causes.push(invalid(
                "spec.caBundle",
                objects::quoted(&format!("{ca_len} bytes")),
                "local APIServices may not have a caBundle",
            ));
        }
        if insecure {
            causes.push(invalid(
                "spec.insecureSkipTLSVerify",
                "true".into(),
                "local APIServices may not have insecureSkipTLSVerify",
            ));
        }
        return;
    }
    for field in ["namespace", "name"] {
        if service[field].as_str().unwrap_or("").is_empty() {
            causes.push((
                format!("spec.service.{field}"),
                "Required value".into(),
                String::new(),
            ));
        }
    }
    if insecure && ca_len > 0 {
        causes.push(invalid(
            "spec.insecureSkipTLSVerify",
            "true".into(),
            "may not be true if caBundle is present",
        ));
    }
}

/// The decoded `spec.caBundle` (base64 in JSON, PEM inside), if any.
pub fn ca_bundle(obj: &Value) -> Option<Vec<u8>> {
    use base64::Engine;
    let s = obj["spec"]["caBundle"].as_str().filter(|s| !s.is_empty())?;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Where a remote APIService sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port (default 443).
    pub port: u16,
}

impl ServiceRef {
    /// The `spec.service` of an APIService; `None` for a local one.
    pub fn of(apiservice: &Value) -> Option<Self> {
        let s = apiservice["spec"]["service"].as_object()?;
        Some(Self {
            namespace: s.get("namespace")?.as_str()?.to_string(),
            name: s.get("name")?.as_str()?.to_string(),
            port: s
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443),
        })
    }

    /// The DNS name the extension server's certificate must carry
    /// (`<service>.<namespace>.svc`, upstream's `ServerName`).
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

/// The `Available` condition of an APIService, if it has one.
pub fn available_condition(apiservice: &Value) -> Option<&Value> {
    apiservice["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Available")
}

/// Whether the APIService's `Available` condition is `True`.
pub fn is_available(apiservice: &Value) -> bool {
    available_condition(apiservice).is_some_and(|c| c["status"] == "True")
}

// ------------------------------------------------------------ printing

/// The SERVICE and AVAILABLE columns of APIServices (upstream's
/// convertor prints NAME SERVICE AVAILABLE AGE).
pub fn table_columns() -> Vec<Value> {
    let col = |name: &str, description: &str| json!({"name": name, "type": "string", "format": "", "description": description, "priority": 0});
    vec![
        col(
            "Service",
            "The reference to the service that hosts this API endpoint.",
        ),
        col("Available", "Whether this service is available."),
    ]
}

/// The SERVICE and AVAILABLE cells: `Local` or `<ns>/<name>`; the
/// condition's status, with its reason in parentheses when not `True`.
pub fn table_cells(obj: &Value) -> (String, String) {
    let service = match ServiceRef::of(obj) {
        Some(s) => format!("{}/{}", s.namespace, s.name),
        None => "Local".to_string(),
    };
    let available = match available_condition(obj) {
        None => "Unknown".to_string(),
        Some(c) => {
            let status = c["status"].as_str().unwrap_or("");
            let reason = c["reason"].as_str().unwrap_or("");
            if status == "True" || reason.is_empty() {
                status.to_string()
            } else {
                format!("{status} ({reason})")
            }
        }
    };
    (service, available)
}

// ------------------------------------------------------------ local APIServices

/// Upstream's `apiVersionPriorities` (group minimum, version) of the
/// group/versions this server serves; a group/version missing here gets
/// no APIService, as upstream skips unknown ones.
const PRIORITIES: &[(&str, &str, i64, i64)] = &[
    ("", "v1", 18000, 1),
    ("apps", "v1", 17800, 15),
    ("authentication.k8s.io", "v1", 17700, 15),
    ("authorization.k8s.io", "v1", 17600, 15),
    ("autoscaling", "v1", 17500, 15),
    ("autoscaling", "v2", 17500, 30),
    ("batch", "v1", 17400, 15),
    ("networking.k8s.io", "v1", 17200, 15),
    ("certificates.k8s.io", "v1", 17300, 15),
    ("policy", "v1", 17100, 15),
    ("rbac.authorization.k8s.io", "v1", 17000, 15),
    ("storage.k8s.io", "v1", 16800, 15),
    ("admissionregistration.k8s.io", "v1", 16700, 15),
    ("apiextensions.k8s.io", "v1", 16700, 15),
    ("scheduling.k8s.io", "v1", 16600, 15),
    ("coordination.k8s.io", "v1", 16500, 15),
    ("discovery.k8s.io", "v1", 16200, 15),
    // The aggregator's own group; upstream lists it first in `/apis`.
    (GROUP, "v1", 18000, 15),
];

/// The group/versions served here: the registry's, the answered-only
/// groups of discovery, and the token and review endpoints.
pub fn local_group_versions() -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "v1".to_string())];
    // The built-in types only: CRD groups come and go while serving.
    let groups = crate::discovery::groups(&crate::registry::Registry::new());
    for g in groups["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or("");
        for v in g["versions"].as_array().into_iter().flatten() {
            let version = v["version"].as_str().unwrap_or("");
            out.push((name.to_string(), version.to_string()));
        }
    }
    // `serviceaccounts/token`, selfsubjectreviews and tokenreviews live
    // here (discovery lists the group; kept for safety).
    let authn = ("authentication.k8s.io".to_string(), "v1".to_string());
    if !out.contains(&authn) {
        out.push(authn);
    }
    out
}

/// Whether `group`/`version` is served by this server (never proxied).
pub fn is_local(reg: &crate::registry::Registry, group: &str, version: &str) -> bool {
    reg.all()
        .iter()
        .any(|t| t.group == group && t.version == version)
        || crate::discovery::group(reg, group).is_some_and(|g| {
            g["versions"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|v| v["version"] == version))
        })
        || (group, version) == ("authentication.k8s.io", "v1")
}

/// The APIService kube-apiserver's autoregister controller keeps for a
/// local group/version, or `None` when upstream has no priority for it.
pub fn local_apiservice(group: &str, version: &str) -> Option<Value> {
    let (_, _, group_priority, version_priority) = PRIORITIES
        .iter()
        .find(|(g, v, _, _)| *g == group && *v == version)?;
    Some(json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {
            "name": format!("{version}.{group}"),
            "labels": {AUTOMANAGED_LABEL: "onstart"},
        },
        "spec": {
            "group": group,
            "version": version,
            "groupPriorityMinimum": group_priority,
            "versionPriority": version_priority,
            "service": null,
        },
        "status": {"conditions": [local_available_condition(&objects::now_rfc3339())]},
    }))
}

/// The condition upstream's local availability controller sets.
fn local_available_condition(now: &str) -> Value {
    json!({
        "type": "Available",
        "status": "True",
        "lastTransitionTime": now,
        "reason": "Local",
        "message": "Local APIServices are always available",
    })
}

/// The `kube-system/extension-apiserver-authentication` data, as
/// kube-apiserver publishes it (the request-header settings are JSON
/// lists).
pub fn authentication_configmap_data(cfg: &AggregatorConfig) -> Value {
    let list = |s: &str| serde_json::to_string(&[s]).unwrap_or_default();
    json!({
        "client-ca-file": cfg.client_ca_pem,
        "requestheader-client-ca-file": cfg.request_header_ca_pem,
        "requestheader-allowed-names": list(AUTH_PROXY_USER),
        "requestheader-username-headers": list(USER_HEADER),
        "requestheader-group-headers": list(GROUP_HEADER),
        "requestheader-extra-headers-prefix": list(EXTRA_HEADER_PREFIX),
    })
}

/// Name of the ConfigMap extension apiservers read (in `kube-system`).
pub const AUTHENTICATION_CONFIGMAP: &str = "extension-apiserver-authentication";

/// Creates or corrects the local APIServices and the
/// `extension-apiserver-authentication` ConfigMap. Idempotent; run at
/// every start (every server does, as every kube-apiserver does).
pub async fn ensure_builtin(state: &ApiState) -> ApiResult<()> {
    let rt = apiservices();
    let wanted_names: Vec<String> = local_group_versions()
        .iter()
        .filter_map(|(g, v)| local_apiservice(g, v))
        .map(|a| name_of(&a).to_string())
        .collect();
    // Upstream's autoregister removes the APIServices it made at an
    // earlier start for group/versions no longer served.
    for a in list_objects(state, rt, None).await? {
        let name = name_of(&a);
        if a["metadata"]["labels"][AUTOMANAGED_LABEL] == "onstart"
            && !wanted_names.iter().any(|w| w == name)
        {
            let key = rt.key(None, name);
            if let Ok(Some(kv)) = state.store.get(&key).await {
                let _ = state.store.delete(&key, kv.mod_revision).await;
                tracing::info!(
                    apiservice = name,
                    "removed an APIService of a group/version no longer served"
                );
            }
        }
    }
    for (group, version) in local_group_versions() {
        let Some(wanted) = local_apiservice(&group, &version) else {
            continue;
        };
        let name = name_of(&wanted).to_string();
        let key = rt.key(None, &name);
        match state.store.get(&key).await? {
            None => {
                let mut obj = wanted;
                objects::prepare_create(rt, &mut obj, None)?;
                match state.store.create(&key, objects::to_stored(&obj)).await {
                    Ok(_) | Err(rke2_datastore::StoreError::AlreadyExists) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(kv) => {
                let mut obj = objects::from_stored(rt, &kv.value, kv.mod_revision)?;
                // Autoregister "on start": the spec is ours; a status that
                // is not Local-available is set back.
                let spec_ok = obj["spec"] == wanted["spec"];
                let status_ok = available_condition(&obj)
                    .is_some_and(|c| c["status"] == "True" && c["reason"] == "Local");
                if spec_ok && status_ok {
                    continue;
                }
                obj["spec"] = wanted["spec"].clone();
                if !status_ok {
                    obj["status"] = wanted["status"].clone();
                }
                match state
                    .store
                    .update(&key, objects::to_stored(&obj), kv.mod_revision)
                    .await
                {
                    // Another server corrected it at the same moment.
                    Ok(_) | Err(rke2_datastore::StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if let Some(cfg) = state.config().aggregator.as_ref() {
        publish_authentication_configmap(state, cfg).await?;
    }
    Ok(())
}

async fn publish_authentication_configmap(
    state: &ApiState,
    cfg: &AggregatorConfig,
) -> ApiResult<()> {
    let rt = registry::find("", "v1", "configmaps").expect("configmaps are registered");
    let key = rt.key(Some("kube-system"), AUTHENTICATION_CONFIGMAP);
    let data = authentication_configmap_data(cfg);
    match state.store.get(&key).await? {
        None => {
            let mut obj = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": AUTHENTICATION_CONFIGMAP, "namespace": "kube-system"},
                "data": data,
            });
            objects::prepare_create(rt, &mut obj, Some("kube-system"))?;
            match state.store.create(&key, objects::to_stored(&obj)).await {
                Ok(_) | Err(rke2_datastore::StoreError::AlreadyExists) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Some(kv) => {
            let mut obj = objects::from_stored(rt, &kv.value, kv.mod_revision)?;
            if obj["data"] == data {
                return Ok(());
            }
            obj["data"] = data;
            match state
                .store
                .update(&key, objects::to_stored(&obj), kv.mod_revision)
                .await
            {
                Ok(_) | Err(rke2_datastore::StoreError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

// ------------------------------------------------------------ reading objects

/// Every object of a type (optionally in one namespace), from the watch
/// cache when it is synced, else from etcd.
pub(crate) async fn list_objects(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<&str>,
) -> ApiResult<Vec<Arc<Value>>> {
    let prefix = rt.prefix(namespace);
    if let Some(cache) = state.caches.ready(rt).await
        && let Some(snap) = cache.snapshot(&prefix)
    {
        return Ok(snap.objects);
    }
    let mut out = Vec::new();
    let mut start = prefix.clone();
    loop {
        let page = state.store.list(&prefix, Some(&start), 500, 0).await?;
        let mut last = None;
        for kv in page.items {
            if let Ok(o) = objects::from_stored(rt, &kv.value, kv.mod_revision) {
                out.push(Arc::new(o));
            }
            last = Some(kv.key);
        }
        match (page.more, last) {
            (true, Some(k)) => start = format!("{k}\0"),
            _ => return Ok(out),
        }
    }
}

/// One object, from the watch cache when it is synced, else from etcd.
pub(crate) async fn get_object(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Option<Arc<Value>>> {
    let key = rt.key(namespace, name);
    if let Some(cache) = state.caches.ready(rt).await {
        return Ok(cache.get(&key).map(|(o, _)| o));
    }
    Ok(match state.store.get(&key).await? {
        Some(kv) => Some(Arc::new(objects::from_stored(
            rt,
            &kv.value,
            kv.mod_revision,
        )?)),
        None => None,
    })
}

/// The remote APIServices, sorted as upstream sorts them for discovery
/// (group priority high to low, then group name; version priority high
/// to low, then version).
pub async fn remote_apiservices(state: &ApiState) -> ApiResult<Vec<Arc<Value>>> {
    let mut all: Vec<Arc<Value>> = list_objects(state, apiservices(), None)
        .await?
        .into_iter()
        .filter(|a| ServiceRef::of(a).is_some())
        .collect();
    sort_for_discovery(&mut all);
    Ok(all)
}

fn sort_for_discovery(all: &mut [Arc<Value>]) {
    let key = |a: &Value| {
        (
            -a["spec"]["groupPriorityMinimum"].as_i64().unwrap_or(0),
            a["spec"]["group"].as_str().unwrap_or("").to_string(),
            -a["spec"]["versionPriority"].as_i64().unwrap_or(0),
            a["spec"]["version"].as_str().unwrap_or("").to_string(),
        )
    };
    all.sort_by_key(|a| key(a));
}

// ------------------------------------------------------------ discovery

/// The `APIGroup` discovery entries of the remote groups (upstream's
/// `convertToDiscoveryAPIGroup`: the first version by priority is the
/// preferred one). Listed whether available or not, as upstream does.
pub fn remote_groups(reg: &crate::registry::Registry, apiservices: &[Arc<Value>]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for a in apiservices {
        let group = a["spec"]["group"].as_str().unwrap_or("");
        let version = a["spec"]["version"].as_str().unwrap_or("");
        if group.is_empty() || is_local(reg, group, version) {
            continue;
        }
        let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
        match out.iter_mut().find(|g| g["name"] == group) {
            Some(g) => {
                if let Some(vs) = g["versions"].as_array_mut() {
                    vs.push(gv);
                }
            }
            None => {
                out.push(json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv}))
            }
        }
    }
    out
}

/// The aggregated (`apidiscovery.k8s.io/v2`) resources of one legacy
/// `APIResourceList` (upstream's `ConvertGroupVersionIntoToDiscovery`):
/// `a/b` entries become subresources of `a`.
pub fn v2_resources(list: &Value, group: &str, version: &str) -> Vec<Value> {
    let entries: Vec<&Value> = list["resources"].as_array().into_iter().flatten().collect();
    let kind_of = |e: &Value| {
        json!({
            "group": e["group"].as_str().filter(|g| !g.is_empty()).unwrap_or(group),
            "version": e["version"].as_str().filter(|v| !v.is_empty()).unwrap_or(version),
            "kind": e["kind"].as_str().unwrap_or(""),
        })
    };
    let mut out: Vec<Value> = Vec::new();
    for e in &entries {
        let name = e["name"].as_str().unwrap_or("");
        if name.is_empty() || name.contains('/') {
            continue;
        }
        let mut r = json!({
            "resource": name,
            "responseKind": kind_of(e),
            "scope": if e["namespaced"].as_bool().unwrap_or(false) { "Namespaced" } else { "Cluster" },
            "singularResource": e["singularName"].as_str().unwrap_or(""),
            "verbs": e["verbs"].clone(),
        });
        for key in ["shortNames", "categories"] {
            if e[key].as_array().is_some_and(|a| !a.is_empty()) {
                r[key] = e[key].clone();
            }
        }
        out.push(r);
    }
    for e in &entries {
        let Some((parent, sub)) = e["name"].as_str().and_then(|n| n.split_once('/')) else {
            continue;
        };
        if let Some(p) = out.iter_mut().find(|r| r["resource"] == parent) {
            let entry = json!({"subresource": sub, "responseKind": kind_of(e), "verbs": e["verbs"].clone()});
            match p["subresources"].as_array_mut() {
                Some(subs) => subs.push(entry),
                None => p["subresources"] = json!([entry]),
            }
        }
    }
    out
}

/// The `APIGroupDiscovery` items of the remote groups for aggregated
/// discovery: each version's resources as its server last listed them;
/// `Stale` when the APIService is not available (clients then treat the
/// group/version as failed), as upstream marks a failed download.
pub fn v2_groups(
    reg: &crate::registry::Registry,
    apiservices: &[Arc<Value>],
    discovered: &DiscoveryCache,
) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for a in apiservices {
        let group = a["spec"]["group"].as_str().unwrap_or("");
        let version = a["spec"]["version"].as_str().unwrap_or("");
        if group.is_empty() || is_local(reg, group, version) {
            continue;
        }
        let resources = discovered
            .get(name_of(a))
            .map(|l| v2_resources(&l, group, version))
            .unwrap_or_default();
        let v = json!({
            "version": version,
            "resources": resources,
            "freshness": if is_available(a) { "Current" } else { "Stale" },
        });
        match out.iter_mut().find(|g| g["metadata"]["name"] == group) {
            Some(g) => {
                if let Some(vs) = g["versions"].as_array_mut() {
                    vs.push(v);
                }
            }
            None => out.push(
                json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": [v]}),
            ),
        }
    }
    out
}

/// The remote groups' items for an aggregated `APIGroupDiscoveryList` of
/// `/apis` (to append after the local ones).
pub async fn discovery_v2_items(state: &ApiState) -> Vec<Value> {
    let Some(cfg) = state.config().aggregator.as_ref() else {
        return Vec::new();
    };
    match remote_apiservices(state).await {
        Ok(remote) => v2_groups(&state.registry, &remote, &cfg.discovered),
        Err(e) => {
            tracing::warn!(error = %e.message, "listing APIServices for discovery");
            Vec::new()
        }
    }
}

/// `/apis` with the remote groups appended to the local `groups`
/// document (a group served here is never listed twice).
pub async fn merge_groups(state: &ApiState, mut groups: Value) -> Value {
    let remote = match remote_apiservices(state).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e.message, "listing APIServices for discovery");
            return groups;
        }
    };
    if let Some(list) = groups["groups"].as_array_mut() {
        for g in remote_groups(&state.registry, &remote) {
            if !list.iter().any(|l| l["name"] == g["name"]) {
                list.push(g);
            }
        }
    }
    groups
}

// ------------------------------------------------------------ routing

/// The request attributes the authorizer sees for a path under
/// `/apis/<g>/<v>` (upstream's `RequestInfoFactory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The verb (`get`, `list`, `watch`, `create`, ...), or the
    /// lower-cased method for a non-resource path.
    pub verb: String,
    /// Whether the path names a resource (else it is discovery).
    pub resource_request: bool,
    /// The API group.
    pub group: String,
    /// The resource (plural).
    pub resource: String,
    /// The subresource, if any.
    pub subresource: String,
    /// The namespace, if any.
    pub namespace: String,
    /// The object name, if any.
    pub name: String,
}

/// Parses the attributes of a request for `/apis/<group>/<version>/<rest>`.
pub fn request_info(
    method: &http::Method,
    group: &str,
    rest: &[&str],
    query: &crate::request::Query,
) -> RequestInfo {
    let mut info = RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        resource_request: false,
        group: group.to_string(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
    };
    let mut parts: Vec<&str> = rest.iter().copied().filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        if info.verb == "head" {
            info.verb = "get".into();
        }
        return info;
    }
    info.resource_request = true;
    let mut legacy_watch = false;
    if parts[0] == "watch" {
        legacy_watch = true;
        parts.remove(0);
    }
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        info.namespace = parts[1].to_string();
        // `namespaces/<n>/status|finalize` are the namespace itself.
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts.drain(..2);
        }
    }
    info.resource = parts.first().map(|s| s.to_string()).unwrap_or_default();
    info.name = parts.get(1).map(|s| s.to_string()).unwrap_or_default();
    info.subresource = parts.get(2).map(|s| s.to_string()).unwrap_or_default();
    let named = !info.name.is_empty();
    info.verb = match *method {
        http::Method::GET | http::Method::HEAD if legacy_watch || query.flag("watch") => "watch",
        http::Method::GET | http::Method::HEAD if named => "get",
        http::Method::GET | http::Method::HEAD => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "unknown",
    }
    .to_string();
    info
}

/// Upstream's 403 for `info` (`forbidden` for a path, the resource form
/// otherwise).
pub fn forbidden(user: &str, info: &RequestInfo, path: &str) -> ApiError {
    if !info.resource_request {
        return ApiError::new(
            403,
            "Forbidden",
            format!(
                "forbidden: User \"{user}\" cannot {} path \"{path}\"",
                info.verb
            ),
        );
    }
    let qualified = format!("{}.{}", info.resource, info.group);
    let subject = if info.name.is_empty() {
        qualified.clone()
    } else {
        format!("{qualified} \"{}\"", info.name)
    };
    let resource = if info.subresource.is_empty() {
        info.resource.clone()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    };
    let scope = if info.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", info.namespace)
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            info.verb, info.group
        ),
    );
    e.details = Some(json!({"name": info.name, "group": info.group, "kind": info.resource}));
    e
}

/// Answers a request for a remote group/version: `/apis/<g>` from the
/// APIServices, anything under `/apis/<g>/<v>` authorized and proxied.
/// `None` when the path is not one (served here as usual).
pub async fn serve(
    state: &ApiState,
    identity: &Identity,
    parts: &mut http::request::Parts,
    body: &mut Option<axum::body::Body>,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    // Most requests are for local group/versions: decided without
    // allocating.
    {
        let mut segs = parts.uri.path().trim_start_matches('/').split('/');
        if segs.next() != Some("apis") {
            return None;
        }
        let group = segs.next().filter(|g| !g.is_empty())?;
        match segs.next().filter(|v| !v.is_empty()) {
            Some(v) if is_local(&state.registry, group, v) => return None,
            None if crate::discovery::group(&state.registry, group).is_some() => return None,
            _ => {}
        }
    }
    let path = parts.uri.path().to_string();
    let path = path.as_str();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["apis", g, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let version = rest.first().copied().filter(|v| !v.is_empty());
    let remote = match remote_apiservices(state).await {
        Ok(r) => r,
        Err(e) => return Some(e.into_response()),
    };
    let Some(version) = version else {
        // `/apis/<g>`: the group document, from its APIServices.
        let groups = remote_groups(&state.registry, &remote);
        let mut g = groups.into_iter().find(|g| g["name"] == group)?;
        if !crate::rbac::can(
            state,
            identity,
            &crate::rbac::Request {
                verb: "get",
                target: crate::rbac::Target::NonResource { path },
            },
        )
        .await
        {
            let info = request_info(&http::Method::GET, group, &[], &Default::default());
            return Some(forbidden(&identity.user, &info, path).into_response());
        }
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        return Some(
            (
                http::StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&g).unwrap_or_default(),
            )
                .into_response(),
        );
    };
    let apiservice = remote
        .iter()
        .find(|a| a["spec"]["group"] == group && a["spec"]["version"] == version)?
        .clone();
    let query = crate::request::Query::parse(parts.uri.query());
    let info = request_info(&parts.method, group, &rest[1..], &query);
    let target = if info.resource_request {
        crate::rbac::Target::Resource {
            group: &info.group,
            resource: &info.resource,
            subresource: &info.subresource,
            namespace: &info.namespace,
            name: &info.name,
        }
    } else {
        crate::rbac::Target::NonResource { path }
    };
    let allowed = crate::rbac::can(
        state,
        identity,
        &crate::rbac::Request {
            verb: &info.verb,
            target,
        },
    )
    .await;
    if !allowed {
        return Some(forbidden(&identity.user, &info, path).into_response());
    }
    Some(forward::proxy(state, identity, &apiservice, parts, body.take()).await)
}

#[cfg(test)]
mod tests;
