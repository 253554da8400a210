//! Built-in objects every cluster has: the system namespaces, the RBAC
//! bootstrap policy (`bootstrap_policy`), and the `default/kubernetes`
//! Service with Endpoints and an EndpointSlice naming the live apiservers.

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
    crate::bootstrap_policy::reconcile(state).await?;
    crate::scheduling::ensure_system_classes(state).await?;
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

/// Where each live apiserver keeps its `ip:port`, attached to an etcd
/// lease it renews (see `Store::keep_registered`).
pub const APISERVERS_PREFIX: &str = "/rke2/apiservers/";

/// This apiserver's registration key.
pub fn apiserver_key(state: &ApiState) -> String {
    format!("{APISERVERS_PREFIX}{}", self_address(state))
}

/// `ip:port` of this apiserver.
pub fn self_address(state: &ApiState) -> String {
    let ip = state.config().advertise_address;
    let host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("{host}:{}", state.config().port)
}

/// `ip:port` of every live apiserver, sorted.
pub async fn live_apiservers(state: &ApiState) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = state
        .store
        .values_under(APISERVERS_PREFIX)
        .await?
        .into_iter()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Makes `default/kubernetes` Endpoints and EndpointSlice list exactly
/// the live apiservers (always including this one), as kube-apiserver's
/// lease endpoint reconciler does: the Endpoints labelled
/// `endpointslice.kubernetes.io/skip-mirror`, the slice named after the
/// Service with only the `kubernetes.io/service-name` label (no
/// managed-by: no controller owns it). Every server runs it; writes are
/// revision-checked, so concurrent reconcilers converge.
pub async fn update_endpoints(state: &ApiState) -> ApiResult<()> {
    let me = state.config().advertise_address.to_string();
    let port = state.config().port;
    let mut ips: Vec<String> = live_apiservers(state)
        .await?
        .iter()
        .filter_map(|a| {
            a.rsplit_once(':')
                .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .collect();
    if !ips.contains(&me) {
        ips.push(me);
    }
    ips.sort();
    ips.dedup();
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let subsets = json!([{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
    reconcile(
        state,
        registry::find("", "v1", "endpoints").expect("registered"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": subsets,
        }),
        &["subsets"],
    )
    .await?;
    // Upstream's adapter: IPv6 only when every address is IPv6.
    let all_v6 = ips
        .iter()
        .all(|ip| matches!(ip.parse(), Ok(std::net::IpAddr::V6(_))));
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    reconcile(
        state,
        registry::find("discovery.k8s.io", "v1", "endpointslices").expect("registered"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": if all_v6 { "IPv6" } else { "IPv4" },
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }),
        &["addressType", "endpoints", "ports"],
    )
    .await
}

/// Creates `default/<name>` of `rt` as `want`, or sets the `fields` (and
/// the labels `want` names) of the stored one to `want`'s; nothing is
/// written when they already agree.
async fn reconcile(
    state: &ApiState,
    rt: &registry::ResourceType,
    want: Value,
    fields: &[&str],
) -> ApiResult<()> {
    let key = rt.key(Some("default"), objects::name_of(&want));
    for _ in 0..5 {
        let Some(kv) = state.store.get(&key).await? else {
            let mut obj = want.clone();
            objects::check_type(rt, &mut obj)?;
            objects::prepare_create(rt, &mut obj, Some("default"))?;
            match state.store.create(&key, objects::to_stored(&obj)).await {
                Ok(_) => return Ok(()),
                Err(rke2_datastore::StoreError::AlreadyExists) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let before = obj.clone();
        for f in fields {
            obj[*f] = want[*f].clone();
        }
        for (k, v) in want["metadata"]["labels"].as_object().into_iter().flatten() {
            obj["metadata"]["labels"][k] = v.clone();
        }
        if obj == before {
            return Ok(());
        }
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
    Ok(())
}

/// Registers this apiserver as live and keeps the `kubernetes` Endpoints
/// in line with the live set, every 2 s, until `stop`.
pub async fn run_registration(state: ApiState, stop: tokio_util::sync::CancellationToken) {
    let reg = {
        let store = state.store.clone();
        let key = apiserver_key(&state);
        let value = self_address(&state).into_bytes();
        let stop = stop.clone();
        tokio::spawn(async move {
            store
                .keep_registered(key, value, std::time::Duration::from_secs(8), stop)
                .await
        })
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = update_endpoints(&state).await {
                    tracing::debug!(error = %e.message, "reconciling kubernetes endpoints");
                }
            }
        }
    }
    let _ = reg.await;
}
