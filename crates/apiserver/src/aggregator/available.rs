//! The `Available` condition of remote APIServices (upstream's
//! `AvailableConditionController`): the Service must exist; for a
//! ClusterIP Service the APIService's port must be one of its ports and
//! its EndpointSlices must hold a Ready address for that port; then a GET
//! of `/apis/<group>/<version>` from one endpoint, as
//! `system:kube-aggregator` in `system:masters` with the front-proxy
//! certificate (server certificate not verified, as upstream), must
//! answer 2xx within 5 s. The outcome is written with upstream's reasons
//! and messages, only when it changed; `lastTransitionTime` moves only
//! when the status does.
//!
//! Every apiserver runs the loop, as every kube-apiserver runs the
//! controller: a pass every [`PERIOD`], and sooner (within a second)
//! when an APIService, Service or EndpointSlice the checks read changes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::forward::{self, ResolveError};
use super::{ServiceRef, apiservices, available_condition, list_objects};
use crate::objects;
use crate::{ApiState, registry};

/// Full passes at least this often (upstream resyncs every 30 s; the
/// discovery check is what notices an extension server that hangs).
pub const PERIOD: Duration = Duration::from_secs(10);

/// How often the inputs are looked at for a change.
const POLL: Duration = Duration::from_secs(1);

/// The discovery GET's deadline (upstream's client timeout).
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One check's result: status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// Upstream's reason (`Passed`, `ServiceNotFound`, ...).
    pub reason: &'static str,
    /// Upstream's message.
    pub message: String,
}

impl Outcome {
    fn fail(reason: &'static str, message: String) -> Self {
        Self {
            status: "False",
            reason,
            message,
        }
    }
}

/// The checks that need no network: `Ok(Some(port name))` when the
/// endpoint checks passed for a ClusterIP Service, `Ok(None)` when the
/// type has none (the discovery GET decides), `Err` with the outcome
/// otherwise.
pub fn service_checks(
    svc: &ServiceRef,
    service: Option<&Value>,
    slices: &[Arc<Value>],
) -> Result<Option<String>, Outcome> {
    let Some(service) = service else {
        return Err(Outcome::fail(
            "ServiceNotFound",
            format!("service/{} in {:?} is not present", svc.name, svc.namespace),
        ));
    };
    if service["spec"]["type"].as_str().unwrap_or("ClusterIP") != "ClusterIP" {
        return Ok(None);
    }
    let Some(port_name) = forward::service_port_name(service, svc.port) else {
        return Err(Outcome::fail(
            "ServicePortError",
            format!(
                "service/{} in {:?} is not listening on port {}",
                svc.name, svc.namespace, svc.port
            ),
        ));
    };
    if slices.is_empty() {
        return Err(Outcome::fail(
            "EndpointsNotFound",
            format!(
                "cannot find endpointslices for service/{} in {:?}",
                svc.name, svc.namespace
            ),
        ));
    }
    if forward::ready_addresses(slices, &port_name).is_empty() {
        return Err(Outcome::fail(
            "MissingEndpoints",
            format!(
                "endpointslices for service/{} in {:?} have no addresses with port name {:?}",
                svc.name, svc.namespace, port_name
            ),
        ));
    }
    Ok(Some(port_name))
}

/// The discovery path an APIService must serve.
pub fn discovery_path(apiservice: &Value) -> String {
    let group = apiservice["spec"]["group"].as_str().unwrap_or("");
    let version = apiservice["spec"]["version"].as_str().unwrap_or("");
    if super::name_of(apiservice) == "v1." {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// Checks one remote APIService.
pub async fn check(state: &ApiState, apiservice: &Value) -> Outcome {
    let Some(svc) = ServiceRef::of(apiservice) else {
        return Outcome {
            status: "True",
            reason: "Local",
            message: "Local APIServices are always available".into(),
        };
    };
    let service = match forward::service_of(state, &svc).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                status: "Unknown",
                reason: "ServiceAccessError",
                message: format!(
                    "service/{} in {:?} cannot be checked due to: {e}",
                    svc.name, svc.namespace
                ),
            };
        }
    };
    let slices = match forward::slices_of(state, &svc).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                status: "Unknown",
                reason: "EndpointsAccessError",
                message: format!(
                    "service/{} in {:?} cannot be checked due to: {e}",
                    svc.name, svc.namespace
                ),
            };
        }
    };
    if let Err(outcome) = service_checks(&svc, service.as_deref(), &slices) {
        return outcome;
    }
    match discovery_get(state, apiservice, &svc).await {
        Ok(()) => Outcome {
            status: "True",
            reason: "Passed",
            message: "all checks passed".into(),
        },
        Err(message) => Outcome::fail("FailedDiscoveryCheck", message),
    }
}

/// The discovery GET; `Err` carries upstream's message.
async fn discovery_get(
    state: &ApiState,
    apiservice: &Value,
    svc: &ServiceRef,
) -> Result<(), String> {
    let addr = forward::resolve(state, svc).await.map_err(|e| match e {
        ResolveError::Store(m) => m,
        other => other.to_string(),
    })?;
    let url = format!("https://{addr}{}", discovery_path(apiservice));
    let failing = |e: String| format!("failing or missing response from {url}: {e}");
    let Some(cfg) = state.config().aggregator.as_ref() else {
        return Err(failing(
            "API aggregation is not configured on this server".into(),
        ));
    };
    let tls = forward::client_config(cfg, apiservice, true).map_err(|e| failing(e.to_string()))?;
    let mut req = Request::get(discovery_path(apiservice))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| failing(e.to_string()))?;
    forward::set_identity_headers(
        req.headers_mut(),
        "system:kube-aggregator",
        &["system:masters".to_string()],
    );
    let sent = tokio::time::timeout(
        DISCOVERY_TIMEOUT,
        forward::send(tls, addr, &svc.server_name(), req, DISCOVERY_TIMEOUT),
    )
    .await;
    let resp = match sent {
        Err(_) => return Err(format!("timed out waiting for {url}")),
        Ok(Err(e)) => return Err(failing(format!("Get \"{url}\": {e}"))),
        Ok(Ok(r)) => r,
    };
    let code = resp.status().as_u16();
    if !(200..300).contains(&code) {
        return Err(failing(format!("bad status from {url}: {code}")));
    }
    // Keep the resource list for aggregated discovery; a body that is
    // not one (or too slow, or too big) does not fail the check, as
    // upstream's check reads no body.
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_DISCOVERY_BODY);
    if let Ok(Ok(body)) = tokio::time::timeout(DISCOVERY_TIMEOUT, limited.collect()).await
        && let Ok(list) = serde_json::from_slice::<Value>(&body.to_bytes())
        && list["kind"] == "APIResourceList"
    {
        cfg.discovered.put(super::name_of(apiservice), list);
    }
    Ok(())
}

/// The most of a discovery answer that is read.
const MAX_DISCOVERY_BODY: usize = 4 * 1024 * 1024;

/// The conditions after `outcome` (upstream's `SetAPIServiceCondition`):
/// a changed status replaces the condition with a new transition time; a
/// same status only takes the new reason and message. `None` when
/// nothing changes.
pub fn updated_conditions(apiservice: &Value, outcome: &Outcome, now: &str) -> Option<Value> {
    let fresh = json!({
        "type": "Available",
        "status": outcome.status,
        "lastTransitionTime": now,
        "reason": outcome.reason,
        "message": outcome.message,
    });
    let mut conditions: Vec<Value> = apiservice["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conditions.iter_mut().find(|c| c["type"] == "Available") {
        None => conditions.push(fresh),
        Some(c) => {
            if c["status"] == outcome.status
                && c["reason"] == outcome.reason
                && c["message"] == outcome.message.as_str()
            {
                return None;
            }
            if c["status"] != outcome.status {
                *c = fresh;
            } else {
                c["reason"] = json!(outcome.reason);
                c["message"] = json!(outcome.message);
            }
        }
    }
    Some(Value::Array(conditions))
}

/// Writes the outcome if it changes the stored conditions.
async fn record(state: &ApiState, name: &str, outcome: &Outcome) {
    let rt = apiservices();
    let key = rt.key(None, name);
    let kv = match state.store.get(&key).await {
        Ok(Some(kv)) => kv,
        Ok(None) => return,
        Err(e) => {
            warn!(apiservice = name, error = %e, "reading an APIService for its status");
            return;
        }
    };
    let Ok(mut obj) = objects::from_stored(rt, &kv.value, kv.mod_revision) else {
        return;
    };
    let Some(conditions) = updated_conditions(&obj, outcome, &objects::now_rfc3339()) else {
        return;
    };
    let before = available_condition(&obj).map(|c| c["status"].clone());
    obj["status"]["conditions"] = conditions;
    match state
        .store
        .update(&key, objects::to_stored(&obj), kv.mod_revision)
        .await
    {
        Ok(_) => {
            if before.as_ref().and_then(Value::as_str) != Some(outcome.status) {
                info!(
                    apiservice = name,
                    status = outcome.status,
                    reason = outcome.reason,
                    message = %outcome.message,
                    "changing APIService availability"
                );
            }
        }
        // Changed meanwhile (another apiserver, a user): the next pass
        // looks again.
        Err(rke2_datastore::StoreError::Conflict { .. })
        | Err(rke2_datastore::StoreError::NotFound) => {}
        Err(e) => warn!(apiservice = name, error = %e, "writing an APIService's status"),
    }
}

/// One pass over every remote APIService.
pub async fn pass(state: &ApiState) {
    let all = match list_objects(state, apiservices(), None).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e.message, "listing APIServices");
            return;
        }
    };
    let checks = all
        .iter()
        .filter(|a| ServiceRef::of(a).is_some())
        .map(|a| async move {
            let outcome = check(state, a).await;
            record(state, super::name_of(a), &outcome).await;
        });
    futures::future::join_all(checks).await;
}

/// A digest of what the checks read (the remote APIServices' specs, the
/// Services and EndpointSlices they name), to notice changes cheaply.
async fn inputs_digest(state: &ApiState) -> u64 {
    let mut h = DefaultHasher::new();
    let Ok(all) = list_objects(state, apiservices(), None).await else {
        return 0;
    };
    let services = registry::find("", "v1", "services").expect("registered");
    let slices = registry::find("discovery.k8s.io", "v1", "endpointslices").expect("registered");
    for a in all.iter() {
        let Some(svc) = ServiceRef::of(a) else {
            continue;
        };
        a["metadata"]["resourceVersion"].to_string().hash(&mut h);
        if let Ok(Some(s)) =
            super::get_object(state, services, Some(&svc.namespace), &svc.name).await
        {
            s["metadata"]["resourceVersion"].to_string().hash(&mut h);
        }
        if let Ok(list) = list_objects(state, slices, Some(&svc.namespace)).await {
            for s in list.iter().filter(|s| {
                s["metadata"]["labels"]["kubernetes.io/service-name"] == svc.name.as_str()
            }) {
                s["metadata"]["resourceVersion"].to_string().hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Runs the availability checks until `stop`.
pub async fn run(state: ApiState, stop: CancellationToken) {
    let mut last_digest = None;
    let mut last_pass: Option<Instant> = None;
    loop {
        let digest = inputs_digest(&state).await;
        let due = last_pass.is_none_or(|t| t.elapsed() >= PERIOD);
        if due || last_digest != Some(digest) {
            pass(&state).await;
            last_pass = Some(Instant::now());
            // The pass's own status writes change the digest: take it
            // after, so they do not trigger another pass.
            last_digest = Some(inputs_digest(&state).await);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}
