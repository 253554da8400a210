//! Built-in objects every cluster has: the system namespaces, and the
//! `default/kubernetes` Service with Endpoints naming this apiserver.

use serde_json::{Value, json};

use crate::ApiState;
use crate::objects;
use crate::registry;
use crate::status::ApiResult;

/// Namespaces that always exist.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn create_if_absent(
    state: &ApiState,
    plural: &str,
    ns: Option<&str>,
    mut obj: Value,
) -> ApiResult<()> {
    let rt = registry::find("", "v1", plural).expect("registered");
    let name = objects::name_of(&obj).to_string();
    if state.store.get(&rt.key(ns, &name)).await?.is_some() {
        return Ok(());
    }
    objects::check_type(rt, &mut obj)?;
    objects::prepare_create(rt, &mut obj, ns)?;
    match state
        .store
        .create(&rt.key(ns, &name), objects::to_stored(&obj))
        .await
    {
        Ok(_) | Err(rke2_datastore::StoreError::AlreadyExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the built-in objects if absent and points the `kubernetes`
/// Endpoints at this apiserver. Idempotent; run at every start.
pub async fn ensure_builtin_objects(state: &ApiState) -> ApiResult<()> {
    for ns in SYSTEM_NAMESPACES {
        create_if_absent(state, "namespaces", None, json!({"metadata": {"name": ns}})).await?;
    }
    let first_ip = crate::allocator::nth_ip(&state.service_cidr, 1)
        .expect("service CIDR holds at least two addresses");
    // The claim is shared by every server; AlreadyExists is expected.
    let _ = state
        .store
        .create(&crate::allocator::ip_key(&first_ip), b"1".to_vec())
        .await;
    let port = state.config().port;
    create_if_absent(
        state,
        "services",
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": first_ip.to_string(),
                "clusterIPs": [first_ip.to_string()],
                "ipFamilies": [if first_ip.is_ipv4() { "IPv4" } else { "IPv6" }],
                "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                "sessionAffinity": "None",
            }
        }),
    )
    .await?;
    update_endpoints(state).await
}

/// Makes `default/kubernetes` Endpoints list this apiserver.
pub async fn update_endpoints(state: &ApiState) -> ApiResult<()> {
    let rt = registry::find("", "v1", "endpoints").expect("registered");
    let key = rt.key(Some("default"), "kubernetes");
    let me = state.config().advertise_address.to_string();
    let port = state.config().port;
    for _ in 0..5 {
        match state.store.get(&key).await? {
            None => {
                create_if_absent(
                    state,
                    "endpoints",
                    Some("default"),
                    json!({
                        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                        "subsets": [{"addresses": [{"ip": me}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
                    }),
                )
                .await?;
                return Ok(());
            }
            Some(kv) => {
                let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                let mut addrs: Vec<Value> = obj["subsets"][0]["addresses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if addrs.iter().any(|a| a["ip"] == me.as_str()) {
                    return Ok(());
                }
                addrs.push(json!({"ip": me}));
                obj["subsets"] = json!([{"addresses": addrs, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
                match state
                    .store
                    .update(&key, objects::to_stored(&obj), kv.mod_revision)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(rke2_datastore::StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}
