//! Writes as upstream's controllers make them: `update` (PUT with the
//! read resourceVersion), which their RBAC roles grant, rather than
//! `patch`, which they do not for their own objects and statuses. A
//! merge patch is applied to the object read, and the result PUT;
//! a conflict (someone wrote in between) reads and applies again.

use kube::api::{Api, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Attempts before a conflict is returned to the caller (whose reconcile
/// loop retries later).
const ATTEMPTS: usize = 3;

async fn merge_update<K, F, Fut>(
    api: &Api<K>,
    name: &str,
    patch: &Value,
    put: F,
) -> Result<K, kube::Error>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    F: Fn(K) -> Fut,
    Fut: std::future::Future<Output = Result<K, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = api.get(name).await?;
        let mut doc = serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
        json_patch::merge(&mut doc, patch);
        let next: K = serde_json::from_value(doc).map_err(kube::Error::SerdeError)?;
        match put(next).await {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => continue,
            other => return other,
        }
    }
}

/// Applies a merge patch to `name` and writes it with an update.
pub async fn merge_into<K>(api: &Api<K>, name: &str, patch: &Value) -> Result<K, kube::Error>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    merge_update(api, name, patch, |next| async move {
        api.replace(name, &PostParams::default(), &next).await
    })
    .await
}

/// Applies a merge patch (`{"status": ...}`) to `name` and writes it to the
/// status subresource with an update.
pub async fn merge_into_status<K>(api: &Api<K>, name: &str, patch: &Value) -> Result<K, kube::Error>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    merge_update(api, name, patch, |next| async move {
        api.replace_status(name, &PostParams::default(), &next)
            .await
    })
    .await
}
