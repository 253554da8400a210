//! Namespace deletion.
//!
//! Deleting a namespace marks it `Terminating`, then removes every object
//! inside it and finally the namespace itself. Until a namespace
//! controller exists (scheduling issue), the apiserver runs this cleanup
//! itself in a background task; it is idempotent, so a restart that finds
//! a `Terminating` namespace simply runs it again.

use serde_json::{Value, json};
use tracing::warn;

use crate::ApiState;
use crate::objects::{self, name_of};
use crate::registry;
use crate::status::{ApiError, ApiResult};

/// Marks a namespace as terminating and starts emptying it.
pub async fn begin_delete(state: &ApiState, mut ns: Value, rev: i64) -> ApiResult<Value> {
    let rt = registry::find("", "v1", "namespaces").expect("namespaces registered");
    let name = name_of(&ns).to_string();
    if matches!(name.as_str(), "default" | "kube-system" | "kube-public") {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        ));
    }
    if !ns["metadata"]["deletionTimestamp"].is_string() {
        ns["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
        ns["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        ns["status"]["phase"] = json!("Terminating");
        let key = rt.key(None, &name);
        match state.store.update(&key, objects::to_stored(&ns), rev).await {
            Ok(r) => objects::decorate(rt, &mut ns, r),
            Err(rke2_datastore::StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict(rt, &name));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let st = state.clone();
    tokio::spawn(async move {
        if let Err(e) = finish_delete(&st, &name).await {
            warn!(namespace = %name, error = %e.message, "namespace cleanup failed; it is retried at the next start");
        }
    });
    Ok(ns)
}

/// Deletes everything in the namespace, then the namespace.
pub async fn finish_delete(state: &ApiState, name: &str) -> ApiResult<()> {
    let mut seen = std::collections::HashSet::new();
    // Custom types too; the versions of one type share their keys.
    for rt in state.registry.all().iter().filter(|t| t.namespaced) {
        let prefix = rt.prefix(Some(name));
        if !seen.insert(prefix.clone()) {
            continue;
        }
        loop {
            let page = state.store.list(&prefix, None, 500, 0).await?;
            for kv in &page.items {
                let _ = state.store.delete(&kv.key, kv.mod_revision).await;
                if rt.strategy.holds_allocations()
                    && let Ok(obj) = serde_json::from_slice::<Value>(&kv.value)
                {
                    rt.strategy.release(state, &obj).await;
                }
            }
            if !page.more {
                break;
            }
        }
    }
    let rt = registry::find("", "v1", "namespaces").expect("namespaces registered");
    if let Some(kv) = state.store.get(&rt.key(None, name)).await? {
        let _ = state.store.delete(&kv.key, kv.mod_revision).await;
    }
    Ok(())
}

/// Resumes cleanups that a previous run left unfinished.
pub async fn resume_pending(state: &ApiState) -> ApiResult<()> {
    let rt = registry::find("", "v1", "namespaces").expect("namespaces registered");
    let page = state.store.list(&rt.prefix(None), None, 0, 0).await?;
    for kv in page.items {
        let Ok(ns) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        if ns["metadata"]["deletionTimestamp"].is_string() {
            finish_delete(state, name_of(&ns)).await?;
        }
    }
    Ok(())
}
