//! Service ClusterIP and NodePort allocation.
//!
//! Each allocated IP or port is claimed by creating a key under
//! `/registry/ranges/` in the same etcd, so two apiservers can never hand
//! out the same address: the create transaction is the lock.

use std::net::IpAddr;

use rke2_datastore::StoreError;
use serde_json::{Value, json};

use crate::ApiState;
use crate::status::{ApiError, ApiResult};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The claim key of a ClusterIP.
pub fn ip_key(ip: &IpAddr) -> String {
    format!("{IP_PREFIX}{ip}")
}

fn port_key(port: i64) -> String {
    format!("{PORT_PREFIX}{port}")
}

/// The `n`th address of a network.
pub fn nth_ip(net: &ipnet::IpNet, n: u128) -> Option<IpAddr> {
    match net {
        ipnet::IpNet::V4(v4) => {
            let base = u32::from(v4.network()) as u128;
            let size = 1u128 << (32 - v4.prefix_len());
            (n < size).then(|| IpAddr::V4(std::net::Ipv4Addr::from((base + n) as u32)))
        }
        ipnet::IpNet::V6(v6) => {
            let base = u128::from(v6.network());
            let bits = 128 - v6.prefix_len() as u32;
            (bits >= 128 || n < (1u128 << bits))
                .then(|| IpAddr::V6(std::net::Ipv6Addr::from(base + n)))
        }
    }
}

fn net_size(net: &ipnet::IpNet) -> u128 {
    let bits = match net {
        ipnet::IpNet::V4(v4) => 32 - v4.prefix_len() as u32,
        ipnet::IpNet::V6(v6) => (128 - v6.prefix_len() as u32).min(64),
    };
    1u128 << bits
}

async fn claim(state: &ApiState, key: &str) -> ApiResult<bool> {
    match state.store.create(key, b"1".to_vec()).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Allocates (or claims the requested) ClusterIP and NodePorts of a new
/// Service; returns the claim keys so a failed create can release them.
pub async fn allocate_service(state: &ApiState, svc: &mut Value) -> ApiResult<Vec<String>> {
    let mut claims = Vec::new();
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let spec = &mut svc["spec"];
    let requested = spec["clusterIP"].as_str().unwrap_or("").to_string();
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let invalid = |field: &str, detail: String| {
        ApiError::new(
            422,
            "Invalid",
            format!("Service \"{name}\" is invalid: {field}: Invalid value: {detail}"),
        )
    };
    if ty != "ExternalName" && requested != "None" {
        let ip = if requested.is_empty() {
            let size = net_size(&state.service_cidr);
            let mut found = None;
            // Random probing, then a linear sweep, skipping network, .1
            // (the kubernetes service) and broadcast.
            let start = 2 + (rand::random::<u64>() as u128 % size.saturating_sub(3).max(1));
            for i in 0..size.saturating_sub(3) {
                let n = 2 + ((start - 2 + i) % size.saturating_sub(3).max(1));
                let Some(ip) = nth_ip(&state.service_cidr, n) else {
                    continue;
                };
                if claim(state, &ip_key(&ip)).await? {
                    found = Some(ip);
                    break;
                }
            }
            found.ok_or_else(|| {
                ApiError::internal(format!(
                    "failed to allocate a serviceIP: range {} is full",
                    state.service_cidr
                ))
            })?
        } else {
            let ip: IpAddr = requested.parse().map_err(|_| {
                invalid(
                    "spec.clusterIPs[0]",
                    format!("\"{requested}\": must be a valid IP address"),
                )
            })?;
            if !state.service_cidr.contains(&ip) {
                return Err(invalid(
                    "spec.clusterIPs[0]",
                    format!(
                        "\"{requested}\": failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                        state.service_cidr
                    ),
                ));
            }
            if !claim(state, &ip_key(&ip)).await? {
                return Err(invalid(
                    "spec.clusterIPs[0]",
                    format!(
                        "\"{requested}\": failed to allocate IP {requested}: provided IP is already allocated"
                    ),
                ));
            }
            ip
        };
        claims.push(ip_key(&ip));
        spec["clusterIP"] = json!(ip.to_string());
        spec["clusterIPs"] = json!([ip.to_string()]);
        spec["ipFamilies"] = json!([if ip.is_ipv4() { "IPv4" } else { "IPv6" }]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    } else if requested == "None" {
        spec["clusterIPs"] = json!(["None"]);
    }
    if (ty == "NodePort" || ty == "LoadBalancer")
        && let Some(ports) = spec["ports"].as_array_mut()
    {
        let (lo, hi) = state.config().node_port_range;
        for (i, p) in ports.iter_mut().enumerate() {
            let want = p["nodePort"].as_i64().unwrap_or(0);
            if want > 0 && (want < lo as i64 || want > hi as i64) {
                release(state, &claims).await;
                return Err(invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    format!(
                        "{want}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                    ),
                ));
            }
            let port = if want > 0 {
                if !claim(state, &port_key(want)).await? {
                    release(state, &claims).await;
                    return Err(invalid(
                        "spec.ports[0].nodePort",
                        format!("{want}: provided port is already allocated"),
                    ));
                }
                want
            } else {
                let span = (hi - lo + 1) as i64;
                let start = rand::random::<u64>() as i64 % span;
                let mut got = None;
                for i in 0..span {
                    let cand = lo as i64 + (start + i) % span;
                    if claim(state, &port_key(cand)).await? {
                        got = Some(cand);
                        break;
                    }
                }
                match got {
                    Some(g) => g,
                    None => {
                        release(state, &claims).await;
                        return Err(ApiError::internal(
                            "failed to allocate a nodePort: range is full",
                        ));
                    }
                }
            };
            claims.push(port_key(port));
            p["nodePort"] = json!(port);
        }
    }
    Ok(claims)
}

/// Releases claims (best effort: a leaked claim only wastes one address).
pub async fn release(state: &ApiState, claims: &[String]) {
    for k in claims {
        if let Ok(Some(kv)) = state.store.get(k).await {
            let _ = state.store.delete(k, kv.mod_revision).await;
        }
    }
}

/// Releases what a deleted Service held (its IP and NodePorts).
pub async fn release_service(state: &ApiState, obj: &Value) {
    let mut claims = Vec::new();
    if let Some(ip) = obj["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
    {
        claims.push(ip_key(&ip));
    }
    for p in obj["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(np) = p["nodePort"].as_i64().filter(|n| *n > 0) {
            claims.push(port_key(np));
        }
    }
    release(state, &claims).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_ip_counts_from_the_network_address() {
        let net: ipnet::IpNet = "10.43.0.0/16".parse().unwrap();
        assert_eq!(nth_ip(&net, 1).unwrap().to_string(), "10.43.0.1");
        assert_eq!(nth_ip(&net, 256).unwrap().to_string(), "10.43.1.0");
        assert!(nth_ip(&net, 65536).is_none());
        assert_eq!(net_size(&net), 65536);
    }
}
