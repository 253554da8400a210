//! Writes as upstream's controllers make them: `update` (PUT with the
//! read resourceVersion), which their RBAC roles grant, rather than
//! `patch`, which they do not for their own objects and statuses. A
//! merge patch is applied to the object as read (raw JSON, so nothing the
//! typed struct does not know is lost or reshaped, and an unchanged spec
//! stays byte-equal, keeping `metadata.generation`), and the result PUT;
//! a conflict (someone wrote in between) reads and applies again.

use kube::api::Api;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Attempts before a conflict is returned to the caller (whose reconcile
/// loop retries later).
const ATTEMPTS: usize = 3;

async fn merge_update<K>(
    api: &Api<K>,
    name: &str,
    patch: &Value,
    subresource: &str,
) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let client = api.clone().into_client();
    let object_url = format!("{}/{name}", api.resource_url());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let get = http::Request::get(&object_url)
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        let mut doc: Value = client.request(get).await?;
        json_patch::merge(&mut doc, patch);
        let put = http::Request::put(format!("{object_url}{subresource}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&doc).map_err(kube::Error::SerdeError)?)
            .map_err(kube::Error::HttpError)?;
        match client.request::<K>(put).await {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => continue,
            other => return other,
        }
    }
}

/// Applies a merge patch to `name` and writes it with an update.
pub async fn merge_into<K>(api: &Api<K>, name: &str, patch: &Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    merge_update(api, name, patch, "").await
}

/// Applies a merge patch (`{"status": ...}`) to `name` and writes it to the
/// status subresource with an update.
pub async fn merge_into_status<K>(api: &Api<K>, name: &str, patch: &Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    merge_update(api, name, patch, "/status").await
}
