//! Persistent storage: PersistentVolume, PersistentVolumeClaim (core/v1)
//! and StorageClass (`storage.k8s.io/v1`). Upstream's defaulting and
//! validation with its field paths and messages (`ValidatePersistentVolume`,
//! `ValidatePersistentVolumeClaim(Update)`, `ValidateStorageClass(Update)`),
//! the `DefaultStorageClass` and `PersistentVolumeClaimResize` admission
//! plugins, and the Table cells `kubectl get pv,pvc,sc` prints.

use futures::future::BoxFuture;
use rke2_apimachinery::quantity::{Quantity, parse_quantity};
use serde_json::{Value, json};

use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, Strategy, UpdateAt};
use crate::{ApiState, objects};

/// The annotation marking the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// The beta form of [`DEFAULT_CLASS_ANNOTATION`], still honoured upstream.
const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// The access modes a volume or claim may name, in upstream's order of
/// its "supported values" list.
const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The finalizer that keeps a claim while a pod uses it
/// (`StorageObjectInUseProtection`).
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer that keeps a volume while a claim is bound to it.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// The `StorageObjectInUseProtection` admission plugin: a new claim or
/// volume carries its protection finalizer.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let list = &mut obj["metadata"]["finalizers"];
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(l) = list.as_array_mut()
        && !l.iter().any(|f| f == finalizer)
    {
        l.push(json!(finalizer));
    }
}

/// The forbidden message of the resize admission plugin.
pub const RESIZE_FORBIDDEN: &str = "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";

/// PersistentVolume objects.
#[derive(Debug)]
pub struct PersistentVolume;

impl Strategy for PersistentVolume {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if spec.is_object() {
            if spec["persistentVolumeReclaimPolicy"].is_null() {
                spec["persistentVolumeReclaimPolicy"] = json!("Retain");
            }
            if spec["volumeMode"].is_null() {
                spec["volumeMode"] = json!("Filesystem");
            }
        }
        if obj["status"]["phase"].is_null() {
            obj["status"]["phase"] = json!("Pending");
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_pv(obj, causes);
    }

    fn admit_create_with<'a>(
        &'a self,
        _state: &'a ApiState,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        add_finalizer(obj, PV_PROTECTION);
        Box::pin(async { Ok(()) })
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        validate_pv_update(old, new, causes);
    }
}

/// PersistentVolumeClaim objects.
#[derive(Debug)]
pub struct PersistentVolumeClaim;

impl Strategy for PersistentVolumeClaim {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if obj["spec"].is_object() && obj["spec"]["volumeMode"].is_null() {
            obj["spec"]["volumeMode"] = json!("Filesystem");
        }
        if obj["status"]["phase"].is_null() {
            obj["status"]["phase"] = json!("Pending");
        }
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_pvc_spec(&obj["spec"], causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        validate_pvc_update(old, new, causes);
    }

    fn admit_create_with<'a>(
        &'a self,
        state: &'a ApiState,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        add_finalizer(obj, PVC_PROTECTION);
        Box::pin(admit_default_class(state, obj))
    }

    fn prepare_update<'a>(
        &'a self,
        at: UpdateAt<'a>,
        old: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        let status_only = at.subresource == Some("status");
        objects::prepare_update(at.rt, old, new, status_only);
        Box::pin(async move {
            if status_only {
                return Ok(());
            }
            admit_resize(at.state, old, new).await
        })
    }
}

/// StorageClass objects.
#[derive(Debug)]
pub struct StorageClass;

impl Strategy for StorageClass {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        if obj["reclaimPolicy"].is_null() {
            obj["reclaimPolicy"] = json!("Delete");
        }
        if obj["volumeBindingMode"].is_null() {
            obj["volumeBindingMode"] = json!("Immediate");
        }
    }

    fn bumps_generation(&self, _old: &Value, _new: &Value) -> bool {
        false
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validate_storage_class(obj, causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        for (field, what) in [
            ("parameters", "parameters"),
            ("provisioner", "provisioner"),
            ("reclaimPolicy", "reclaimPolicy"),
        ] {
            if old[field] != new[field] {
                causes.push(cause(
                    field,
                    "Forbidden",
                    format!("updates to {what} are forbidden."),
                ));
            }
        }
        if old["volumeBindingMode"] != new["volumeBindingMode"] {
            causes.push(cause(
                "volumeBindingMode",
                "Invalid value",
                format!(
                    "{}: field is immutable",
                    q(new["volumeBindingMode"].as_str().unwrap_or(""))
                ),
            ));
        }
    }
}

fn cause(field: impl Into<String>, ty: &str, detail: impl Into<String>) -> Cause {
    (field.into(), ty.into(), detail.into())
}

fn q(s: &str) -> String {
    crate::schema::go_quote(s)
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn supported(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| q(v)).collect();
    format!("supported values: {}", quoted.join(", "))
}

fn validate_access_modes(modes: &Value, path: &str, causes: &mut Vec<Cause>) {
    for m in arr(modes) {
        let s = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&s) {
            causes.push(cause(
                path,
                "Unsupported value",
                format!("{}: {}", q(s), supported(ACCESS_MODES)),
            ));
        }
    }
    let has_pod = arr(modes).iter().any(|m| m == "ReadWriteOncePod");
    if has_pod && arr(modes).len() > 1 {
        causes.push(cause(
            path,
            "Forbidden",
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn validate_class_name(name: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = name.as_str().filter(|n| !n.is_empty()) {
        for msg in rke2_apimachinery::validation::validate_dns1123_subdomain(n) {
            causes.push(cause(path, "Invalid value", format!("{}: {msg}", q(n))));
        }
    }
}

fn validate_volume_mode(mode: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = mode.as_str()
        && m != "Block"
        && m != "Filesystem"
    {
        causes.push(cause(
            path,
            "Unsupported value",
            format!("{}: {}", q(m), supported(&["Block", "Filesystem"])),
        ));
    }
}

fn storage_of(v: &Value) -> Option<Result<Quantity, String>> {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Null => return None,
        other => other.to_string(),
    };
    Some(parse_quantity(&raw).map_err(|_| raw))
}

/// The volume sources a PersistentVolume may have (one of them).
const PV_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

/// upstream's `ValidatePersistentVolumeSpec` (metadata is checked by
/// `objects::validate`).
pub fn validate_pv(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if arr(&spec["accessModes"]).is_empty() {
        causes.push(cause("spec.accessModes", "Required value", ""));
    }
    validate_access_modes(&spec["accessModes"], "spec.accessModes", causes);
    let capacity = spec["capacity"].as_object();
    match capacity {
        None => causes.push(cause("spec.capacity", "Required value", "")),
        Some(c) if c.is_empty() => causes.push(cause("spec.capacity", "Required value", "")),
        Some(c) => {
            if c.len() != 1 || !c.contains_key("storage") {
                let keys: Vec<&str> = c.keys().map(String::as_str).collect();
                causes.push(cause(
                    "spec.capacity",
                    "Unsupported value",
                    format!("{}: {}", q(&keys.join(",")), supported(&["storage"])),
                ));
            }
            if let Some(Err(raw)) = c.get("storage").and_then(storage_of) {
                causes.push(cause(
                    "spec.capacity[storage]",
                    "Invalid value",
                    format!("{}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'", q(&raw)),
                ));
            }
        }
    }
    let present: Vec<&str> = PV_SOURCES
        .iter()
        .copied()
        .filter(|s| spec[*s].is_object())
        .collect();
    match present.as_slice() {
        [] => causes.push(cause(
            "spec",
            "Required value",
            "must specify a volume type",
        )),
        [_] => {}
        [_, rest @ ..] => {
            for s in rest {
                causes.push(cause(
                    format!("spec.{s}"),
                    "Forbidden",
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    for (src, field) in [("hostPath", "path"), ("local", "path")] {
        let v = &spec[src];
        if v.is_object() && v[field].as_str().is_none_or(str::is_empty) {
            causes.push(cause(format!("spec.{src}.{field}"), "Required value", ""));
        }
    }
    if let Some(p) = spec["hostPath"]["path"].as_str()
        && p.split('/').any(|c| c == "..")
    {
        causes.push(cause(
            "spec.hostPath.path",
            "Invalid value",
            format!("{}: must not contain '..'", q(p)),
        ));
    }
    if spec["local"].is_object() && spec["nodeAffinity"].is_null() {
        causes.push(cause(
            "spec.nodeAffinity",
            "Required value",
            "Local volume requires node affinity",
        ));
    }
    if spec["nodeAffinity"].is_object() && !spec["nodeAffinity"]["required"].is_object() {
        causes.push(cause(
            "spec.nodeAffinity.required",
            "Required value",
            "must specify required node constraints",
        ));
    }
    if let Some(p) = spec["persistentVolumeReclaimPolicy"].as_str()
        && !["Delete", "Recycle", "Retain"].contains(&p)
    {
        causes.push(cause(
            "spec.persistentVolumeReclaimPolicy",
            "Unsupported value",
            format!("{}: {}", q(p), supported(&["Delete", "Recycle", "Retain"])),
        ));
    }
    validate_class_name(&spec["storageClassName"], "spec.storageClassName", causes);
    validate_volume_mode(&spec["volumeMode"], "spec.volumeMode", causes);
}

/// upstream's `ValidatePersistentVolumeUpdate`: the source and the volume
/// mode are fixed, node affinity may only be set where there was none.
pub fn validate_pv_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let (o, n) = (&old["spec"], &new["spec"]);
    if PV_SOURCES.iter().any(|s| o[*s] != n[*s]) {
        causes.push(cause(
            "spec.persistentvolumesource",
            "Forbidden",
            "spec.persistentvolumesource is immutable after creation",
        ));
    }
    if o["volumeMode"] != n["volumeMode"] {
        causes.push(cause(
            "spec.volumeMode",
            "Invalid value",
            format!(
                "{}: field is immutable",
                q(n["volumeMode"].as_str().unwrap_or(""))
            ),
        ));
    }
    if !o["nodeAffinity"].is_null() && o["nodeAffinity"] != n["nodeAffinity"] {
        causes.push(cause(
            "nodeAffinity.required.nodeSelectorTerms",
            "Invalid value",
            "field is immutable",
        ));
    }
}

/// upstream's `ValidatePersistentVolumeClaimSpec`.
pub fn validate_pvc_spec(spec: &Value, causes: &mut Vec<Cause>) {
    if arr(&spec["accessModes"]).is_empty() {
        causes.push(cause(
            "spec.accessModes",
            "Required value",
            "at least 1 access mode is required",
        ));
    }
    validate_access_modes(&spec["accessModes"], "spec.accessModes", causes);
    if !spec["selector"].is_null() && !spec["selector"].is_object() {
        causes.push(cause(
            "spec.selector",
            "Invalid value",
            "must be a label selector",
        ));
    }
    match storage_of(&spec["resources"]["requests"]["storage"]) {
        None => causes.push(cause("spec.resources[storage]", "Required value", "")),
        Some(Err(raw)) => causes.push(cause(
            "spec.resources[storage]",
            "Invalid value",
            format!("{}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'", q(&raw)),
        )),
        Some(Ok(qty)) => {
            if qty.is_zero() || qty.as_nanos() < 0 {
                causes.push(cause(
                    "spec.resources[storage]",
                    "Invalid value",
                    format!("{}: must be greater than zero", q(&qty.to_string())),
                ));
            }
        }
    }
    validate_class_name(&spec["storageClassName"], "spec.storageClassName", causes);
    validate_volume_mode(&spec["volumeMode"], "spec.volumeMode", causes);
}

/// upstream's `ValidatePersistentVolumeClaimUpdate`: the spec is fixed
/// except a growing `resources.requests`, the `volumeName` a binder sets
/// on an unbound claim and a class name given to a claim that had none.
pub fn validate_pvc_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let mut o = old["spec"].clone();
    let mut n = new["spec"].clone();
    if o.is_object() && n.is_object() {
        for k in ["resources", "volumeAttributesClassName"] {
            o.as_object_mut().map(|m| m.remove(k));
            n.as_object_mut().map(|m| m.remove(k));
        }
        if o["volumeName"].as_str().is_none_or(str::is_empty) {
            o.as_object_mut().map(|m| m.remove("volumeName"));
            n.as_object_mut().map(|m| m.remove("volumeName"));
        }
        if o["storageClassName"].is_null() {
            o.as_object_mut().map(|m| m.remove("storageClassName"));
            n.as_object_mut().map(|m| m.remove("storageClassName"));
        }
    }
    if o != n {
        causes.push(cause(
            "spec",
            "Forbidden",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let old_size = storage_of(&old["spec"]["resources"]["requests"]["storage"]);
    let new_size = storage_of(&new["spec"]["resources"]["requests"]["storage"]);
    if let (Some(Ok(a)), Some(Ok(b))) = (old_size, new_size)
        && b < a
    {
        causes.push(cause(
            "spec.resources.requests.storage",
            "Forbidden",
            "field can not be less than previous value",
        ));
    }
}

/// upstream's `ValidateStorageClass`.
pub fn validate_storage_class(obj: &Value, causes: &mut Vec<Cause>) {
    match obj["provisioner"].as_str().filter(|p| !p.is_empty()) {
        None => causes.push(cause("provisioner", "Required value", "")),
        Some(p) => {
            for msg in rke2_apimachinery::validation::validate_label_key(&p.to_lowercase()) {
                causes.push(cause(
                    "provisioner",
                    "Invalid value",
                    format!("{}: {msg}", q(p)),
                ));
            }
        }
    }
    if let Some(p) = obj["reclaimPolicy"].as_str()
        && !["Delete", "Retain"].contains(&p)
    {
        causes.push(cause(
            "reclaimPolicy",
            "Unsupported value",
            format!("{}: {}", q(p), supported(&["Delete", "Retain"])),
        ));
    }
    if let Some(m) = obj["volumeBindingMode"].as_str()
        && !["Immediate", "WaitForFirstConsumer"].contains(&m)
    {
        causes.push(cause(
            "volumeBindingMode",
            "Unsupported value",
            format!(
                "{}: {}",
                q(m),
                supported(&["Immediate", "WaitForFirstConsumer"])
            ),
        ));
    }
    if let Some(params) = obj["parameters"].as_object() {
        if params.len() > 512 {
            causes.push(cause(
                "parameters",
                "Too many",
                format!("{}: must have at most 512 items", params.len()),
            ));
        }
        for (k, v) in params {
            if k.is_empty() {
                causes.push(cause(
                    "parameters",
                    "Invalid value",
                    "\"\": field is required",
                ));
            }
            if !v.is_string() {
                causes.push(cause(
                    format!("parameters[{k}]"),
                    "Invalid value",
                    "must be a string",
                ));
            }
        }
    }
}

async fn list_classes(state: &ApiState) -> ApiResult<Vec<Value>> {
    let classes =
        registry::find("storage.k8s.io", "v1", "storageclasses").expect("storageclasses served");
    let prefix = classes.prefix(None);
    if let Some(snap) = state
        .caches
        .running(classes)
        .and_then(|c| c.snapshot(&prefix))
    {
        return Ok(snap.objects.iter().map(|o| Value::clone(o)).collect());
    }
    Ok(state
        .store
        .list(&prefix, None, 0, 0)
        .await?
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Whether `class` is marked as the default StorageClass.
pub fn is_default(class: &Value) -> bool {
    let a = &class["metadata"]["annotations"];
    a[DEFAULT_CLASS_ANNOTATION] == "true" || a[BETA_DEFAULT_CLASS_ANNOTATION] == "true"
}

/// The default StorageClass among `classes`: upstream's `GetDefaultClass`,
/// the newest marked one (then the first by name) winning.
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| is_default(c))
        .max_by(|a, b| {
            let ts = |o: &Value| {
                o["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            ts(a).cmp(&ts(b)).then_with(|| {
                b["metadata"]["name"]
                    .as_str()
                    .cmp(&a["metadata"]["name"].as_str())
            })
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_string))
}

/// The `DefaultStorageClass` admission plugin: a claim that names no
/// class (no `spec.storageClassName`, no beta annotation) gets the
/// default one, when there is one.
pub async fn admit_default_class(state: &ApiState, obj: &mut Value) -> ApiResult<()> {
    if !obj["spec"]["storageClassName"].is_null()
        || obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"].is_string()
    {
        return Ok(());
    }
    if let Some(name) = default_class(&list_classes(state).await?) {
        obj["spec"]["storageClassName"] = json!(name);
    }
    Ok(())
}

/// The `PersistentVolumeClaimResize` admission plugin: a claim may grow
/// only when it is bound and its class allows expansion.
pub async fn admit_resize(state: &ApiState, old: &Value, new: &Value) -> ApiResult<()> {
    let size = |o: &Value| storage_of(&o["spec"]["resources"]["requests"]["storage"]);
    let (Some(Ok(before)), Some(Ok(after))) = (size(old), size(new)) else {
        return Ok(());
    };
    if after <= before {
        return Ok(());
    }
    let name = old["metadata"]["name"].as_str().unwrap_or("");
    let forbid = |msg: &str| {
        ApiError::new(
            403,
            "Forbidden",
            format!("persistentvolumeclaims {} is forbidden: {msg}", q(name)),
        )
    };
    if old["status"]["phase"] != "Bound" {
        return Err(forbid(
            "Only bound persistent volume claims can be expanded",
        ));
    }
    let class = new["spec"]["storageClassName"].as_str().unwrap_or("");
    let allowed = !class.is_empty()
        && list_classes(state)
            .await?
            .iter()
            .any(|c| c["metadata"]["name"] == class && c["allowVolumeExpansion"] == true);
    if allowed {
        Ok(())
    } else {
        Err(forbid(RESIZE_FORBIDDEN))
    }
}

/// upstream's `GetAccessModesAsString`: `RWO,ROX,RWX,RWOP` in that order.
pub fn access_modes_string(modes: &Value) -> String {
    let has = |m: &str| arr(modes).iter().any(|v| v == m);
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, s)| *s)
    .collect::<Vec<_>>()
    .join(",")
}

fn quantity_cell(v: &Value) -> String {
    match storage_of(v) {
        Some(Ok(q)) => q.to_string(),
        Some(Err(raw)) => raw,
        None => String::new(),
    }
}

fn col(name: &str, description: &str, priority: i32) -> Value {
    json!({"name": name, "type": "string", "format": "", "description": description, "priority": priority})
}

fn class_of(obj: &Value) -> String {
    obj["spec"]["storageClassName"]
        .as_str()
        .or(obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"].as_str())
        .unwrap_or("")
        .to_string()
}

fn attributes_class(obj: &Value) -> String {
    obj["spec"]["volumeAttributesClassName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("<unset>")
        .to_string()
}

fn phase(obj: &Value) -> String {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating".into();
    }
    obj["status"]["phase"].as_str().unwrap_or("").to_string()
}

/// The PersistentVolume columns between NAME and AGE (VOLUMEMODE after
/// AGE, wide).
pub fn pv_columns() -> (Vec<Value>, Vec<Value>) {
    (
        vec![
            col(
                "Capacity",
                "The storage capacity of the persistent volume",
                0,
            ),
            col(
                "Access Modes",
                "The access modes of the persistent volume",
                0,
            ),
            col(
                "Reclaim Policy",
                "The reclaim policy of the persistent volume",
                0,
            ),
            col("Status", "The status of the persistent volume", 0),
            col("Claim", "The claim bound to the persistent volume", 0),
            col(
                "StorageClass",
                "The storage class of the persistent volume",
                0,
            ),
            col(
                "VolumeAttributesClass",
                "VolumeAttributesClass of the pv",
                0,
            ),
            col("Reason", "The reason of the persistent volume's status", 0),
        ],
        vec![col(
            "VolumeMode",
            "The volume mode of the persistent volume",
            1,
        )],
    )
}

/// The PersistentVolume cells matching [`pv_columns`].
pub fn pv_cells(obj: &Value) -> (Vec<Value>, Vec<Value>) {
    let spec = &obj["spec"];
    let claim = match (
        spec["claimRef"]["namespace"].as_str(),
        spec["claimRef"]["name"].as_str(),
    ) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => String::new(),
    };
    (
        vec![
            json!(quantity_cell(&spec["capacity"]["storage"])),
            json!(access_modes_string(&spec["accessModes"])),
            json!(spec["persistentVolumeReclaimPolicy"].as_str().unwrap_or("")),
            json!(phase(obj)),
            json!(claim),
            json!(class_of(obj)),
            json!(attributes_class(obj)),
            json!(obj["status"]["reason"].as_str().unwrap_or("")),
        ],
        vec![json!(spec["volumeMode"].as_str().unwrap_or("<unset>"))],
    )
}

/// The PersistentVolumeClaim columns between NAME and AGE (VOLUMEMODE
/// after AGE, wide).
pub fn pvc_columns() -> (Vec<Value>, Vec<Value>) {
    (
        vec![
            col("Status", "The status of the persistent volume claim", 0),
            col("Volume", "The persistent volume bound to the claim", 0),
            col("Capacity", "The capacity of the bound volume", 0),
            col("Access Modes", "The access modes of the bound volume", 0),
            col("StorageClass", "The storage class of the claim", 0),
            col(
                "VolumeAttributesClass",
                "VolumeAttributesClass of the pvc",
                0,
            ),
        ],
        vec![col("VolumeMode", "The volume mode of the claim", 1)],
    )
}

/// The PersistentVolumeClaim cells matching [`pvc_columns`]: capacity and
/// access modes only once a volume is named.
pub fn pvc_cells(obj: &Value) -> (Vec<Value>, Vec<Value>) {
    let spec = &obj["spec"];
    let volume = spec["volumeName"].as_str().unwrap_or("");
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity_cell(&obj["status"]["capacity"]["storage"]),
            access_modes_string(&obj["status"]["accessModes"]),
        )
    };
    (
        vec![
            json!(phase(obj)),
            json!(volume),
            json!(capacity),
            json!(modes),
            json!(class_of(obj)),
            json!(attributes_class(obj)),
        ],
        vec![json!(spec["volumeMode"].as_str().unwrap_or("<unset>"))],
    )
}

/// The StorageClass columns between NAME and AGE.
pub fn class_columns() -> Vec<Value> {
    vec![
        col("Provisioner", "Indicates the type of the provisioner.", 0),
        col(
            "ReclaimPolicy",
            "Indicates the type of the reclaim policy.",
            0,
        ),
        col(
            "VolumeBindingMode",
            "Indicates how PersistentVolumeClaims should be provisioned and bound.",
            0,
        ),
        col(
            "AllowVolumeExpansion",
            "Indicates whether the storage class allow volume expand.",
            0,
        ),
    ]
}

/// The NAME cell of a StorageClass (` (default)` marks the default) and
/// the cells matching [`class_columns`].
pub fn class_cells(obj: &Value) -> (Value, Vec<Value>) {
    let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if is_default(obj) {
        name.push_str(" (default)");
    }
    (
        json!(name),
        vec![
            json!(obj["provisioner"].as_str().unwrap_or("")),
            json!(obj["reclaimPolicy"].as_str().unwrap_or("Delete")),
            json!(obj["volumeBindingMode"].as_str().unwrap_or("Immediate")),
            json!(obj["allowVolumeExpansion"] == true),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(f: impl Fn(&mut Vec<Cause>)) -> Vec<String> {
        let mut c = Vec::new();
        f(&mut c);
        c.into_iter()
            .map(|(f, t, d)| {
                if d.is_empty() {
                    format!("{f}: {t}")
                } else {
                    format!("{f}: {t}: {d}")
                }
            })
            .collect()
    }

    #[test]
    fn claim_needs_modes_and_storage() {
        let e = errs(|c| validate_pvc_spec(&json!({}), c));
        assert_eq!(
            e,
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value"
            ]
        );
        let ok = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        assert!(errs(|c| validate_pvc_spec(&ok, c)).is_empty());
        let zero = json!({"accessModes": ["RWO"], "resources": {"requests": {"storage": "0"}}});
        let e = errs(|c| validate_pvc_spec(&zero, c));
        assert!(
            e[0].starts_with("spec.accessModes: Unsupported value: \"RWO\""),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            "spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
        );
    }

    #[test]
    fn claim_spec_is_fixed_but_grows_and_binds() {
        let old = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "x"}});
        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        grown["spec"]["volumeName"] = json!("pv-1");
        assert!(errs(|c| validate_pvc_update(&old, &grown, c)).is_empty());
        let mut shrunk = old.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("500Mi");
        assert_eq!(
            errs(|c| validate_pvc_update(&old, &shrunk, c)),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
            ]
        );
        let mut modes = old.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(
            errs(|c| validate_pvc_update(&old, &modes, c)),
            [
                "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
            ]
        );
        // A bound claim's volume is fixed.
        let mut rebound = grown.clone();
        rebound["spec"]["volumeName"] = json!("pv-2");
        assert_eq!(errs(|c| validate_pvc_update(&grown, &rebound, c)).len(), 1);
    }

    #[test]
    fn volume_needs_one_source_capacity_and_modes() {
        let e = errs(|c| validate_pv(&json!({"spec": {}}), c));
        assert_eq!(
            e,
            [
                "spec.accessModes: Required value",
                "spec.capacity: Required value",
                "spec: Required value: must specify a volume type"
            ]
        );
        let two = json!({"spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
            "hostPath": {"path": "/x"}, "nfs": {"server": "a", "path": "/"}, "persistentVolumeReclaimPolicy": "Keep"}});
        let e = errs(|c| validate_pv(&two, c));
        assert_eq!(
            e[0],
            "spec.nfs: Forbidden: may not specify more than 1 volume type"
        );
        assert!(
            e[1].starts_with("spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\"")
        );
        let local = json!({"spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}, "local": {"path": "/x"}}});
        assert_eq!(
            errs(|c| validate_pv(&local, c)),
            ["spec.nodeAffinity: Required value: Local volume requires node affinity"]
        );
    }

    #[test]
    fn class_fields_are_fixed() {
        let sc = StorageClass;
        let rt = registry::find("storage.k8s.io", "v1", "storageclasses").unwrap();
        let mut old = json!({"metadata": {"name": "a"}, "provisioner": "rancher.io/local-path"});
        sc.defaults(rt, &mut old);
        assert_eq!(old["reclaimPolicy"], "Delete");
        assert_eq!(old["volumeBindingMode"], "Immediate");
        let mut new = old.clone();
        new["provisioner"] = json!("other.io/x");
        new["volumeBindingMode"] = json!("WaitForFirstConsumer");
        new["allowVolumeExpansion"] = json!(true);
        let e = errs(|c| sc.validate_update(rt, &old, &new, c));
        assert_eq!(
            e,
            [
                "provisioner: Forbidden: updates to provisioner are forbidden.",
                "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable"
            ]
        );
        let e = errs(|c| validate_storage_class(&json!({"reclaimPolicy": "Recycle"}), c));
        assert_eq!(e[0], "provisioner: Required value");
        assert!(e[1].starts_with("reclaimPolicy: Unsupported value: \"Recycle\""));
    }

    #[test]
    fn table_cells() {
        let pv = json!({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany", "ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": {"namespace": "ns", "name": "c"}, "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}});
        let (cells, wide) = pv_cells(&pv);
        assert_eq!(
            cells,
            [
                json!("1Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("ns/c"),
                json!("local-path"),
                json!("<unset>"),
                json!("")
            ]
        );
        assert_eq!(wide, [json!("Filesystem")]);
        let pvc = json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "local-path"}, "status": {"phase": "Pending"}});
        let (cells, _) = pvc_cells(&pvc);
        assert_eq!(
            cells[..4],
            [json!("Pending"), json!(""), json!(""), json!("")]
        );
        let sc = json!({"metadata": {"name": "local-path", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        let (name, cells) = class_cells(&sc);
        assert_eq!(name, "local-path (default)");
        assert_eq!(
            cells,
            [
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
        assert_eq!(
            default_class(std::slice::from_ref(&sc)).as_deref(),
            Some("local-path")
        );
    }
}
