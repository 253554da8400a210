//! ServiceAccounts on the API side: the admission of new pods (their
//! account must exist; its token, the cluster CA and the namespace are
//! mounted at [`TOKEN_MOUNT_PATH`]) and the `serviceaccounts/<name>/token`
//! subresource (TokenRequest) that issues bound tokens.
//!
//! Both follow kube-apiserver: the `ServiceAccount` admission plugin with
//! its `kube-api-access-<random>` projected volume, and the TokenRequest
//! REST storage with its validation and Status messages.

use std::time::Duration;

use serde_json::{Value, json};

use crate::ApiState;
use crate::objects::{random_suffix, rfc3339};
use crate::registry::{self, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::tokens::{self, Claims, KubeClaims, ObjectRef, TokenError};

/// Where every container finds its account's token, `ca.crt` and `namespace`.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ConfigMap in every namespace that holds the cluster CA (`ca.crt`).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// The prefix of the admission-made token volume's name.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// The lifetime of the projected token the admission plugin asks for
/// (upstream's one hour and seven seconds).
pub const PROJECTED_TOKEN_SECONDS: i64 = 3607;

fn core(plural: &str) -> &'static ResourceType {
    registry::find("", "v1", plural).expect("core type registered")
}

fn store_error(e: TokenError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// The ServiceAccount `name` of `namespace`, as the admission plugin looks
/// it up: the watch cache, else etcd; the `default` account is awaited a
/// little (10 tries, 100–200 ms apart), because its controller creates it
/// just after the namespace.
async fn find_account(state: &ApiState, namespace: &str, name: &str) -> ApiResult<Option<Value>> {
    let rt = core("serviceaccounts");
    let tries = if name == "default" { 10 } else { 1 };
    for i in 0..tries {
        if i > 0 {
            let ms = 100 + rand::random_range(0..100u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(sa) = tokens::current_object(state, rt, Some(namespace), name, None)
            .await
            .map_err(store_error)?
        {
            return Ok(Some(sa));
        }
    }
    Ok(None)
}

/// Admits a new pod: defaults `serviceAccountName` to `default`, refuses a
/// pod whose account does not exist, copies the account's
/// `imagePullSecrets`, and mounts the token volume into every container
/// unless automounting is off (pod first, then account) or a container
/// already mounts something at [`TOKEN_MOUNT_PATH`].
pub async fn admit_pod(state: &ApiState, pod: &mut Value) -> ApiResult<()> {
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let spec = &mut pod["spec"];
    let name = match spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        Some(n) => n.to_string(),
        None => "default".to_string(),
    };
    spec["serviceAccountName"] = json!(name);
    // The deprecated alias, kept equal as upstream's defaulting does.
    spec["serviceAccount"] = json!(name);
    let Some(account) = find_account(state, &namespace, &name).await? else {
        let meta = &pod["metadata"];
        let shown = meta["generateName"]
            .as_str()
            .or(meta["name"].as_str())
            .unwrap_or("");
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "pods \"{shown}\" is forbidden: error looking up service account {namespace}/{name}: serviceaccount \"{name}\" not found"
            ),
        ));
    };
    let spec = &mut pod["spec"];
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or(account["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if automount {
        mount_token(spec);
    }
    let has_pull_secrets = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !has_pull_secrets && let Some(secrets) = account["imagePullSecrets"].as_array() {
        let refs: Vec<Value> = secrets
            .iter()
            .filter_map(|s| s["name"].as_str())
            .map(|n| json!({"name": n}))
            .collect();
        if !refs.is_empty() {
            spec["imagePullSecrets"] = json!(refs);
        }
    }
    Ok(())
}

/// The projected volume of an account token, the cluster CA and the
/// namespace, as upstream's admission plugin builds it.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": PROJECTED_TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Adds the token volume and a read-only mount of it to every container
/// (init, regular and ephemeral) that has nothing at [`TOKEN_MOUNT_PATH`].
fn mount_token(spec: &mut Value) {
    let existing = spec["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
            .map(str::to_string)
    });
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", random_suffix(5)));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(cs) = spec[key].as_array_mut() else {
            continue;
        };
        for c in cs {
            let mounted = c["volumeMounts"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH));
            if mounted {
                continue;
            }
            if !c["volumeMounts"].is_array() {
                c["volumeMounts"] = json!([]);
            }
            if let Some(ms) = c["volumeMounts"].as_array_mut() {
                ms.push(mount.clone());
            }
            needed = true;
        }
    }
    if needed && existing.is_none() {
        if !spec["volumes"].is_array() {
            spec["volumes"] = json!([]);
        }
        if let Some(vs) = spec["volumes"].as_array_mut() {
            vs.push(token_volume(&volume));
        }
    }
}

fn invalid(name: &str, field: &str, ty: &str, detail: String) -> ApiError {
    ApiError::invalid(
        "TokenRequest.authentication.k8s.io",
        name,
        core("serviceaccounts"),
        &[(field.to_string(), ty.to_string(), detail)],
    )
}

/// `POST .../serviceaccounts/<name>/token`: issues a token for the account,
/// bound to a Pod when `spec.boundObjectRef` names one. A node (its name in
/// `node`) may only ask for tokens bound to pods that run on it under this
/// account, as upstream's NodeRestriction admission. Returns the
/// TokenRequest with `status.token` and `status.expirationTimestamp`.
pub async fn token_request(
    state: &ApiState,
    namespace: &str,
    name: &str,
    node: Option<&str>,
    mut request: Value,
) -> ApiResult<Value> {
    if let Some(kind) = request["kind"].as_str().filter(|k| *k != "TokenRequest") {
        return Err(ApiError::bad_request(format!(
            "the body of a serviceaccounts/token request must be a TokenRequest, not {kind}"
        )));
    }
    let spec = &request["spec"];
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect(),
        _ => tokens::API_AUDIENCES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => tokens::DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            invalid(
                name,
                "spec.expirationSeconds",
                "Invalid value",
                format!("{v}: must be an integer"),
            )
        })?,
    };
    if seconds < tokens::MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            "Invalid value",
            format!("{seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > tokens::MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            "Invalid value",
            format!("{seconds}: may not specify a duration larger than 2^32 seconds"),
        ));
    }
    let account =
        tokens::current_object(state, core("serviceaccounts"), Some(namespace), name, None)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(core("serviceaccounts"), name))?;
    let mut kube = KubeClaims {
        namespace: namespace.to_string(),
        serviceaccount: ObjectRef {
            name: name.to_string(),
            uid: account["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        },
        pod: None,
        node: None,
    };
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or("");
        let api_version = bound["apiVersion"].as_str().unwrap_or("v1");
        if kind != "Pod" || api_version != "v1" {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to an object of kind {kind:?} (apiVersion {api_version:?}): only v1 Pods are supported"
            )));
        }
        let pod_name = bound["name"].as_str().unwrap_or("");
        if pod_name.is_empty() {
            return Err(invalid(
                name,
                "spec.boundObjectRef.name",
                "Required value",
                "the name of the object to bind to".into(),
            ));
        }
        let pod = tokens::current_object(state, core("pods"), Some(namespace), pod_name, None)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(core("pods"), pod_name))?;
        if pod["spec"]["serviceAccountName"].as_str() != Some(name) {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
            )));
        }
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on Pod \"{pod_name}\": the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        if let Some(node) = node
            && node_name != node
        {
            return Err(node_forbidden(
                node,
                name,
                namespace,
                "a pod that is not bound to it",
            ));
        }
        if !node_name.is_empty() {
            let node_uid = tokens::current_object(state, core("nodes"), None, &node_name, None)
                .await
                .map_err(store_error)?
                .and_then(|n| n["metadata"]["uid"].as_str().map(str::to_string));
            if let Some(uid) = node_uid {
                kube.node = Some(ObjectRef {
                    name: node_name,
                    uid,
                });
            }
        }
        kube.pod = Some(ObjectRef {
            name: pod_name.to_string(),
            uid,
        });
        request["spec"]["boundObjectRef"]["uid"] = json!(kube.pod.as_ref().map(|p| &p.uid));
        request["spec"]["boundObjectRef"]["apiVersion"] = json!("v1");
    } else if let Some(node) = node {
        return Err(node_forbidden(
            node,
            name,
            namespace,
            "a token not bound to one of its pods",
        ));
    }
    let now = tokens::unix_now();
    let claims = Claims::new(audiences.clone(), now, seconds, kube);
    let token = state.config().tokens.sign(&claims);
    request["kind"] = json!("TokenRequest");
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["metadata"] = json!({
        "name": name,
        "namespace": namespace,
        "creationTimestamp": rfc3339(now),
    });
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(seconds);
    request["status"] = json!({"token": token, "expirationTimestamp": rfc3339(claims.exp)});
    Ok(request)
}

fn node_forbidden(node: &str, account: &str, namespace: &str, what: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "serviceaccounts \"{account}\" is forbidden: User \"system:node:{node}\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"{namespace}\": a node may only request {what}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts_of(spec: &Value, key: &str, i: usize) -> Vec<Value> {
        spec[key][i]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn token_volume_mounted_into_every_container() {
        let mut spec = json!({
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        });
        mount_token(&mut spec);
        let vols = spec["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().unwrap();
        assert!(
            name.starts_with(TOKEN_VOLUME_PREFIX) && name.len() == TOKEN_VOLUME_PREFIX.len() + 5
        );
        let sources = vols[1]["projected"]["sources"].as_array().unwrap();
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], ROOT_CA_CONFIG_MAP);
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(vols[1]["projected"]["defaultMode"], 420);
        // Init container and `a` get the mount; `b` keeps its own.
        let i = mounts_of(&spec, "initContainers", 0);
        assert_eq!(i[0]["name"], name);
        assert_eq!(i[0]["readOnly"], true);
        assert_eq!(mounts_of(&spec, "containers", 0).len(), 2);
        let b = mounts_of(&spec, "containers", 1);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["name"], "mine");
        // Admitting again (an already mounted spec) adds nothing.
        let before = spec.clone();
        mount_token(&mut spec);
        assert_eq!(spec, before);
    }

    #[test]
    fn no_volume_when_every_container_has_its_own_mount() {
        let mut spec = json!({
            "containers": [{"name": "a", "volumeMounts": [{"name": "x", "mountPath": TOKEN_MOUNT_PATH}]}],
        });
        mount_token(&mut spec);
        assert!(spec["volumes"].is_null());
    }
}
