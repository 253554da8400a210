//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): the CRD type
//! itself ([`CrdStrategy`]), the follower every apiserver runs that turns
//! CRDs into served types in the [`crate::registry::Registry`] and keeps
//! their `NamesAccepted`/`Established` conditions ([`follow`]), the
//! behaviour of the custom objects ([`CustomStrategy`]), and the cleanup
//! a CRD deletion runs (the `customresourcecleanup` finalizer).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::ApiState;
use crate::objects::{self, name_of};
use crate::registry::{self, Printer, PrinterColumn, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{Cause, DeleteFn, ScaleSpec, Strategy};

pub mod conversion;
mod custom;
mod validation;

pub use custom::CustomStrategy;

/// The finalizer a CRD deletion waits on while its objects are removed.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The group of the CRD type.
pub const GROUP: &str = "apiextensions.k8s.io";

/// The CRD type's own behaviour.
#[derive(Debug)]
pub struct CrdStrategy;

impl Strategy for CrdStrategy {
    fn defaults(&self, _rt: &ResourceType, obj: &mut Value) {
        validation::defaults(obj);
    }

    fn validate(&self, _rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate(obj, causes);
    }

    fn validate_update(
        &self,
        _rt: &ResourceType,
        old: &Value,
        new: &Value,
        causes: &mut Vec<Cause>,
    ) {
        validation::validate_update(old, new, causes);
    }

    fn custom_delete(&self) -> Option<DeleteFn> {
        Some(|state, crd, rev| Box::pin(begin_delete(state, crd, rev)))
    }

    fn watch_cached(&self) -> bool {
        // The follower watches etcd itself; CRDs are few.
        false
    }
}

fn crd_type() -> &'static ResourceType {
    registry::find(GROUP, "v1", "customresourcedefinitions").expect("CRDs are served")
}

/// A CRD deletion: the CRD stays, terminating, with the cleanup finalizer,
/// until the follower has deleted every object of its type.
async fn begin_delete(state: &ApiState, mut crd: Value, rev: i64) -> ApiResult<Value> {
    let rt = crd_type();
    let name = name_of(&crd).to_string();
    if !crd["metadata"]["deletionTimestamp"].is_string() {
        crd["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
    }
    let mut finalizers: Vec<Value> = crd["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
        finalizers.push(json!(CLEANUP_FINALIZER));
    }
    crd["metadata"]["finalizers"] = json!(finalizers);
    set_condition(
        &mut crd,
        "Terminating",
        "True",
        "InstanceDeletionPending",
        "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
    );
    let new_rev = state
        .store
        .update(&rt.key(None, &name), objects::to_stored(&crd), rev)
        .await
        .map_err(|e| match e {
            rke2_datastore::StoreError::Conflict { .. } => ApiError::conflict(rt, &name),
            other => other.into(),
        })?;
    objects::decorate(rt, &mut crd, new_rev);
    Ok(crd)
}

fn set_condition(crd: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    let now = objects::now_rfc3339();
    let mut conds: Vec<Value> = crd["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conds.push(
            json!({"type": ty, "status": status, "lastTransitionTime": now,
            "reason": reason, "message": message}),
        ),
    }
    crd["status"]["conditions"] = json!(conds);
}

fn condition_true(crd: &Value, ty: &str) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// The served types of a CRD (one per served version), or why it serves
/// nothing.
pub fn types_of(crd: &Value) -> Result<Vec<Arc<ResourceType>>, String> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = spec["group"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    let plural = names["plural"].as_str().unwrap_or_default();
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Err("names are incomplete".into());
    }
    let singular = names["singular"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let served: Vec<&Value> = versions.iter().filter(|v| v["served"] == true).collect();
    let storage = versions
        .iter()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let terminating = crd["metadata"]["deletionTimestamp"].is_string();
    let webhook = conversion::Webhook::of(&spec["conversion"]).map(Arc::new);
    let mut out = Vec::new();
    for v in &served {
        let version = v["name"].as_str().unwrap_or_default().to_string();
        let subs = &v["subresources"];
        let status = subs.get("status").is_some_and(Value::is_object);
        let scale = subs
            .get("scale")
            .filter(|s| s.is_object())
            .map(|s| ScaleSpec {
                spec_replicas: s["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                status_replicas: s["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .to_string(),
                label_selector: s["labelSelectorPath"].as_str().map(str::to_string),
            });
        let mut subresources = Vec::new();
        if status {
            subresources.push("status".to_string());
        }
        if scale.is_some() {
            subresources.push("scale".to_string());
        }
        let columns: Vec<PrinterColumn> = match v["additionalPrinterColumns"].as_array() {
            Some(cols) => cols
                .iter()
                .map(|c| PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    format: c["format"].as_str().unwrap_or_default().to_string(),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0) as i32,
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                })
                .collect(),
            // Upstream's default: an Age column.
            None => vec![PrinterColumn {
                name: "Age".into(),
                type_: "date".into(),
                format: String::new(),
                description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata".into(),
                priority: 0,
                json_path: ".metadata.creationTimestamp".into(),
            }],
        };
        let field_labels: Vec<String> = v["selectableFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["jsonPath"].as_str())
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        let schema = custom::compile_schema(&v["schema"]["openAPIV3Schema"]).ok();
        let strategy = CustomStrategy {
            crd: name_of(crd).to_string(),
            status_subresource: status,
            scale: scale.clone(),
            terminating,
            // Objects of one version only can be shared through one cache
            // (the cache decorates objects with the version it serves);
            // a webhook converts each read, which a cache cannot share.
            cached: served.len() == 1 && version == storage && webhook.is_none(),
            storage_api_version: format!("{group}/{storage}"),
            conversion: webhook.clone(),
            schema,
            raw_schema: v["schema"]["openAPIV3Schema"].clone(),
        };
        out.push(Arc::new(ResourceType {
            group: group.to_string(),
            version,
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: singular.clone(),
            namespaced: spec["scope"] == "Namespaced",
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            subresources,
            field_labels,
            printer: Printer::Columns(columns),
            status_subresource: status,
            tracks_generation: true,
            schema: custom::no_typed_check,
            strategy: Arc::new(strategy),
            defined_by: Some(name_of(crd).to_string()),
        }));
    }
    Ok(out)
}

/// Why the names of `crd` conflict with another CRD's in its group, if
/// they do: (reason, message) as upstream's naming controller says it.
fn names_conflict(crd: &Value, others: &[Value]) -> Option<(String, String)> {
    let group = &crd["spec"]["group"];
    let names = &crd["spec"]["names"];
    for other in others {
        if name_of(other) == name_of(crd) || &other["spec"]["group"] != group {
            continue;
        }
        let accepted = &other["status"]["acceptedNames"];
        if accepted["kind"].is_string() && accepted["kind"] == names["kind"] {
            return Some((
                "KindConflict".into(),
                format!(
                    "{:?} is already in use",
                    names["kind"].as_str().unwrap_or_default()
                ),
            ));
        }
        let theirs: Vec<&Value> = accepted["shortNames"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        if let Some(s) = names["shortNames"]
            .as_array()
            .and_then(|a| a.iter().find(|s| theirs.contains(s)))
        {
            return Some((
                "ShortNamesConflict".into(),
                format!("{:?} is already in use", s.as_str().unwrap_or_default()),
            ));
        }
    }
    None
}

/// The status `crd` should have: accepted names and the two conditions,
/// and the storage version among `storedVersions`.
fn wanted_status(crd: &Value, others: &[Value]) -> Value {
    let mut want = crd.clone();
    match names_conflict(crd, others) {
        Some((reason, message)) => {
            set_condition(&mut want, "NamesAccepted", "False", &reason, &message);
            set_condition(
                &mut want,
                "Established",
                "False",
                "NotAccepted",
                "not all names are accepted",
            );
        }
        None => {
            let mut accepted = crd["spec"]["names"].clone();
            if accepted["singular"].as_str().is_none_or(str::is_empty) {
                accepted["singular"] =
                    json!(accepted["kind"].as_str().unwrap_or_default().to_lowercase());
            }
            if accepted["listKind"].as_str().is_none_or(str::is_empty) {
                accepted["listKind"] = json!(format!(
                    "{}List",
                    accepted["kind"].as_str().unwrap_or_default()
                ));
            }
            want["status"]["acceptedNames"] = accepted;
            set_condition(
                &mut want,
                "NamesAccepted",
                "True",
                "NoConflicts",
                "no conflicts found",
            );
            set_condition(
                &mut want,
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            );
        }
    }
    if let Some(storage) = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .and_then(|v| v["name"].as_str())
    {
        let mut stored: Vec<Value> = crd["status"]["storedVersions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !stored.iter().any(|s| s == storage) {
            stored.push(json!(storage));
        }
        want["status"]["storedVersions"] = json!(stored);
    }
    want
}

/// Whether two statuses differ beyond the conditions' transition times.
fn status_differs(a: &Value, b: &Value) -> bool {
    let strip = |s: &Value| {
        let mut s = s.clone();
        if let Some(cs) = s["conditions"].as_array_mut() {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastTransitionTime");
                }
            }
        }
        s
    };
    strip(&a["status"]) != strip(&b["status"])
}

/// Brings the registry and the CRD's status in line with one stored CRD.
async fn reconcile(state: &ApiState, crd: &Value, rev: i64, all: &[Value]) {
    let name = name_of(crd).to_string();
    let rt = crd_type();
    let terminating = crd["metadata"]["deletionTimestamp"].is_string();
    if !terminating {
        let want = wanted_status(crd, all);
        if status_differs(crd, &want) {
            match state
                .store
                .update(&rt.key(None, &name), objects::to_stored(&want), rev)
                .await
            {
                // The write comes back as an event; serve from it then.
                Ok(_) => return,
                Err(rke2_datastore::StoreError::Conflict { .. }) => return,
                Err(e) => warn!(crd = %name, error = %e, "writing the CRD status failed"),
            }
        }
    }
    if condition_true(crd, "Established") || terminating {
        match types_of(crd) {
            Ok(types) => {
                for old in state.registry.custom_of(&name) {
                    state.caches.forget(&old);
                }
                state.registry.set_custom(&name, types);
            }
            Err(e) => debug!(crd = %name, error = %e, "CRD serves nothing"),
        }
    }
    if terminating {
        cleanup(state, crd).await;
    }
}

/// Deletes every object of a terminating CRD, then lets the CRD go.
async fn cleanup(state: &ApiState, crd: &Value) {
    let name = name_of(crd).to_string();
    let Some(rt) = state.registry.custom_of(&name).into_iter().next() else {
        return;
    };
    let prefix = rt.prefix(None);
    loop {
        let page = match state.store.list(&prefix, None, 500, 0).await {
            Ok(p) => p,
            Err(e) => {
                warn!(crd = %name, error = %e, "listing custom objects to delete failed");
                return;
            }
        };
        for kv in &page.items {
            let _ = state.store.delete(&kv.key, kv.mod_revision).await;
        }
        if !page.more {
            break;
        }
    }
    // Remove the finalizer from the current CRD (and the CRD itself when
    // it was the last one).
    let crt = crd_type();
    let key = crt.key(None, &name);
    for _ in 0..5 {
        let Ok(Some(kv)) = state.store.get(&key).await else {
            return;
        };
        let Ok(mut cur) = serde_json::from_slice::<Value>(&kv.value) else {
            return;
        };
        let rest: Vec<Value> = cur["metadata"]["finalizers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|f| *f != CLEANUP_FINALIZER)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let result = if rest.is_empty() {
            state.store.delete(&key, kv.mod_revision).await.map(|_| ())
        } else {
            cur["metadata"]["finalizers"] = json!(rest);
            set_condition(
                &mut cur,
                "Terminating",
                "True",
                "InstanceDeletionCompleted",
                "removed all instances",
            );
            state
                .store
                .update(&key, objects::to_stored(&cur), kv.mod_revision)
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                info!(crd = %name, "custom objects deleted; CRD released");
                return;
            }
            Err(rke2_datastore::StoreError::Conflict { .. }) => continue,
            Err(e) => {
                warn!(crd = %name, error = %e, "releasing the CRD failed");
                return;
            }
        }
    }
}

/// Follows the CRDs in etcd for as long as the apiserver runs: every
/// apiserver serves every established CRD, within a moment of its
/// creation.
pub async fn follow(state: ApiState) {
    let rt = crd_type();
    let prefix = rt.prefix(None);
    loop {
        let page = match state.store.list(&prefix, None, 0, 0).await {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "listing CRDs failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut all: Vec<(Value, i64)> = page
            .items
            .iter()
            .filter_map(|kv| {
                serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .map(|v| (v, kv.mod_revision))
            })
            .collect();
        // Types served for CRDs that are gone now.
        let present: Vec<String> = all.iter().map(|(c, _)| name_of(c).to_string()).collect();
        for t in state.registry.all() {
            if let Some(crd) = &t.defined_by
                && !present.contains(crd)
            {
                state.caches.forget(&t);
                state.registry.remove_custom(crd);
            }
        }
        let objs: Vec<Value> = all.iter().map(|(c, _)| c.clone()).collect();
        for (crd, rev) in &all {
            reconcile(&state, crd, *rev, &objs).await;
        }
        let stream = match state.store.watch_without_prev(&prefix, page.revision).await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "watching CRDs failed; re-listing");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = Box::pin(stream);
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { break };
            match ev.kind {
                rke2_datastore::WatchEventKind::Deleted => {
                    let name = ev.key.rsplit('/').next().unwrap_or_default().to_string();
                    for old in state.registry.custom_of(&name) {
                        state.caches.forget(&old);
                    }
                    state.registry.remove_custom(&name);
                    all.retain(|(c, _)| name_of(c) != name);
                }
                rke2_datastore::WatchEventKind::Progress => {}
                _ => {
                    let Ok(crd) = serde_json::from_slice::<Value>(&ev.value) else {
                        continue;
                    };
                    all.retain(|(c, _)| name_of(c) != name_of(&crd));
                    all.push((crd.clone(), ev.revision));
                    let objs: Vec<Value> = all.iter().map(|(c, _)| c.clone()).collect();
                    reconcile(&state, &crd, ev.revision, &objs).await;
                }
            }
        }
    }
}
