//! What the EndpointSlice controller writes for one Service: the pure
//! part of kube-controller-manager's endpointslice reconciler. Given the
//! Service, its selected pods, the nodes' zones and the slices this
//! controller already manages for it, [`plan`] says which slices to
//! create, update and delete so that every ready-or-not pod with an IP is
//! an endpoint exactly once, in a slice whose ports are that pod's
//! resolved ports, with at most `max_endpoints_per_slice` per slice —
//! and nothing at all when the slices already say so.
//!
//! As upstream: existing slices keep the endpoints still desired (an
//! endpoint is identified by its addresses, hostname and target pod);
//! changed endpoints are updated in place; new endpoints first fill the
//! slices that are being updated anyway (fullest first), then one
//! unchanged slice that can take them all, then new slices; slices left
//! empty are deleted, except that a Service without endpoints keeps one
//! empty placeholder slice; a delete and a create of the same address
//! type become one update of the deleted slice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::pods;

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Label set on the slices (and Endpoints) of a Service without a cluster IP.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Annotation with the time of the change that led to this write.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// kube-controller-manager's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The zone label of a Node, copied to its pods' endpoints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The writes that bring a Service's slices to the desired state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// New slices (with `generateName`, no name).
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (name and resourceVersion kept).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl Plan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// What [`plan`] reads besides the Service and its slices.
pub struct Inputs<'a> {
    /// The pods the Service's selector matches (any state).
    pub pods: &'a [&'a Pod],
    /// The zone of a node (`None` when the node has no zone label).
    pub zone: &'a dyn Fn(&str) -> Option<String>,
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// The `last-change-trigger-time` to put on written slices, if any.
    pub trigger_time: Option<String>,
}

/// The address types a Service's slices carry: its IP families, else the
/// family of its cluster IP, else IPv4.
pub fn address_types(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.as_ref();
    let families: Vec<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if !families.is_empty() {
        return families;
    }
    match spec
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    {
        Some(std::net::IpAddr::V6(_)) => vec!["IPv6"],
        _ => vec!["IPv4"],
    }
}

/// Whether a slice's owner reference names this Service as controller.
fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == svc.metadata.uid.as_ref())
}

/// The identity of an endpoint across syncs (upstream's `hashEndpoint`):
/// addresses, hostname and target pod.
fn endpoint_key(ep: &Endpoint) -> String {
    let mut addrs = ep.addresses.clone();
    addrs.sort();
    let (ns, name) = ep
        .target_ref
        .as_ref()
        .map(|r| {
            (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    format!(
        "{}|{}|{ns}/{name}",
        addrs.join(","),
        ep.hostname.as_deref().unwrap_or("")
    )
}

/// The identity of a port set, order-free (upstream's `PortMapKey`).
fn ports_key(ports: &[EndpointPort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or(""),
                p.port.map(|n| n.to_string()).unwrap_or_default(),
                p.app_protocol.as_deref().unwrap_or("")
            )
        })
        .collect();
    parts.sort();
    parts.join(";")
}

/// The Service's ports as this pod serves them; a port whose named
/// target the pod lacks is left out (upstream logs and skips it).
fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            let port = pods::find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint of a pod for an address type (upstream's `podToEndpoint`);
/// `None` when the pod has no address of that type.
pub fn pod_endpoint(
    svc: &Service,
    pod: &Pod,
    address_type: &str,
    zone: Option<String>,
) -> Option<Endpoint> {
    let addresses: Vec<String> = pods::ips(pod)
        .into_iter()
        .filter(|ip| match address_type {
            "IPv6" => ip.contains(':'),
            _ => !ip.contains(':'),
        })
        .collect();
    if addresses.is_empty() {
        return None;
    }
    let serving = pods::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // A terminating pod is never "ready", unless the Service publishes
    // not-ready addresses.
    let ready = publish_not_ready || (serving && !terminating);
    let spec = pod.spec.as_ref();
    Some(Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        zone,
        hostname: pods::hostname_for(pod, svc),
        ..Default::default()
    })
}

/// The labels of a Service's slices: the Service's own (without the
/// reserved keys), the headless marker, the Service name and manager.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                SERVICE_NAME_LABEL | MANAGED_BY_LABEL | HEADLESS_LABEL
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !pods::has_cluster_ip(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    labels
}

/// `<service>-` as the slices' `generateName`, or `endpointslice-` when
/// that would not make a valid name.
fn generate_name(svc: &Service) -> String {
    let prefix = format!("{}-", svc.metadata.name.as_deref().unwrap_or(""));
    let body = prefix.trim_end_matches('-');
    if !body.is_empty()
        && rke2_apimachinery::validation::validate_dns1123_subdomain(body).is_empty()
        && prefix.len() <= 253
    {
        prefix
    } else {
        "endpointslice-".into()
    }
}

/// A new, empty slice of the Service for one port set and address type.
fn new_slice(svc: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(svc)),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(svc)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: svc.metadata.name.clone().unwrap_or_default(),
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Vec::new(),
        ports: Some(ports.to_vec()),
    }
}

/// Whether a slice is the empty placeholder of an address type.
fn is_placeholder(slice: &EndpointSlice, address_type: &str) -> bool {
    slice.address_type == address_type
        && slice.endpoints.is_empty()
        && slice.ports.as_ref().is_none_or(|p| p.is_empty())
}

/// Desired endpoints of one port set, by identity, with the ports.
struct Group {
    ports: Vec<EndpointPort>,
    endpoints: BTreeMap<String, Endpoint>,
}

/// The slice writes for one Service (see the module doc). `existing` are
/// the slices this controller manages for the Service's name.
pub fn plan(svc: &Service, existing: &[&EndpointSlice], inputs: &Inputs<'_>) -> Plan {
    let types = address_types(svc);
    let mut out = Plan::default();
    // Slices of an address type the Service no longer has go.
    for s in existing {
        if !types.contains(&s.address_type.as_str()) {
            out.delete.push(s.metadata.name.clone().unwrap_or_default());
        }
    }
    for address_type in types {
        let mine: Vec<&EndpointSlice> = existing
            .iter()
            .copied()
            .filter(|s| s.address_type == address_type)
            .collect();
        plan_address_type(svc, address_type, &mine, inputs, &mut out);
    }
    if let Some(t) = &inputs.trigger_time {
        for s in out.create.iter_mut().chain(out.update.iter_mut()) {
            s.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(TRIGGER_TIME_ANNOTATION.into(), t.clone());
        }
    }
    out
}

fn plan_address_type(
    svc: &Service,
    address_type: &str,
    existing: &[&EndpointSlice],
    inputs: &Inputs<'_>,
    out: &mut Plan,
) {
    let max = inputs.max_endpoints_per_slice.max(1);
    // Desired state: endpoints grouped by the ports their pod resolves.
    let mut desired: BTreeMap<String, Group> = BTreeMap::new();
    for pod in inputs.pods {
        if !pods::should_be_in_slices(pod) {
            continue;
        }
        let zone = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| (inputs.zone)(n));
        let Some(ep) = pod_endpoint(svc, pod, address_type, zone) else {
            continue;
        };
        let ports = endpoint_ports(svc, pod);
        desired
            .entry(ports_key(&ports))
            .or_insert_with(|| Group {
                ports,
                endpoints: BTreeMap::new(),
            })
            .endpoints
            .insert(endpoint_key(&ep), ep);
    }
    let labels = slice_labels(svc);
    // Existing slices by port set; slices of another owner go.
    let mut by_ports: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    let mut delete: Vec<&EndpointSlice> = Vec::new();
    for s in existing {
        if owned_by(s, svc) {
            by_ports
                .entry(ports_key(s.ports.as_deref().unwrap_or(&[])))
                .or_default()
                .push(s);
        } else {
            delete.push(s);
        }
    }
    let mut create: Vec<EndpointSlice> = Vec::new();
    let mut update: Vec<EndpointSlice> = Vec::new();
    for (key, group) in desired {
        let slices = by_ports.remove(&key).unwrap_or_default();
        plan_port_set(
            svc,
            address_type,
            &labels,
            slices,
            group,
            max,
            &mut create,
            &mut update,
            &mut delete,
        );
    }
    // Port sets no longer desired.
    delete.extend(by_ports.into_values().flatten());
    // A Service without endpoints keeps one empty placeholder slice.
    if existing.len() == delete.len() && create.is_empty() {
        if delete.len() == 1 && is_placeholder(delete[0], address_type) && owned_by(delete[0], svc)
        {
            let keep = delete.pop().expect("one slice");
            if keep.metadata.labels.as_ref() != Some(&labels) {
                let mut s = keep.clone();
                s.metadata.labels = Some(labels.clone());
                update.push(s);
            }
        } else {
            create.push(new_slice(svc, &[], address_type));
        }
    }
    // A delete and a create of this address type: reuse the deleted
    // slice's name instead (one update rather than two writes) — only a
    // slice of this Service, never one awaiting garbage collection for an
    // older Service of the same name.
    let mut i = 0;
    while !create.is_empty() && i < delete.len() {
        if !owned_by(delete[i], svc) {
            i += 1;
            continue;
        }
        let gone = delete.remove(i);
        let mut reused = create.pop().expect("non-empty");
        reused.metadata.name = gone.metadata.name.clone();
        reused.metadata.generate_name = gone.metadata.generate_name.clone();
        reused.metadata.resource_version = gone.metadata.resource_version.clone();
        reused.metadata.uid = gone.metadata.uid.clone();
        reused.metadata.creation_timestamp = gone.metadata.creation_timestamp.clone();
        reused.metadata.annotations = gone.metadata.annotations.clone();
        update.push(reused);
    }
    out.create.extend(create);
    out.update.extend(update);
    out.delete.extend(
        delete
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default()),
    );
}

#[allow(clippy::too_many_arguments)]
fn plan_port_set<'a>(
    svc: &Service,
    address_type: &str,
    labels: &BTreeMap<String, String>,
    slices: Vec<&'a EndpointSlice>,
    mut group: Group,
    max: usize,
    create: &mut Vec<EndpointSlice>,
    update: &mut Vec<EndpointSlice>,
    delete: &mut Vec<&'a EndpointSlice>,
) {
    // 1. Keep what is still desired, in place; note changed endpoints.
    let mut to_update: Vec<EndpointSlice> = Vec::new();
    let mut unchanged: Vec<&EndpointSlice> = Vec::new();
    for s in slices {
        let mut kept: Vec<Endpoint> = Vec::new();
        let mut changed = false;
        for ep in &s.endpoints {
            if let Some(want) = group.endpoints.remove(&endpoint_key(ep)) {
                changed |= &want != ep;
                kept.push(want);
            }
        }
        let labels_changed = s.metadata.labels.as_ref() != Some(labels);
        if changed || kept.len() != s.endpoints.len() {
            if kept.is_empty() {
                delete.push(s);
            } else {
                let mut n = s.clone();
                n.endpoints = kept;
                n.metadata.labels = Some(labels.clone());
                to_update.push(n);
            }
        } else if labels_changed {
            let mut n = s.clone();
            n.metadata.labels = Some(labels.clone());
            to_update.push(n);
        } else {
            unchanged.push(s);
        }
    }
    let mut remaining: Vec<Endpoint> = group.endpoints.into_values().collect();
    remaining.reverse(); // popped from the end: in key order
    // 2. Fill the slices being written anyway, fullest first.
    to_update.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
    for s in to_update.iter_mut() {
        while s.endpoints.len() < max
            && let Some(ep) = remaining.pop()
        {
            s.endpoints.push(ep);
        }
    }
    // 3. The rest: into one unchanged slice that can take them all (the
    // fullest such), else new slices.
    while !remaining.is_empty() {
        let fill = if remaining.len() < max {
            unchanged
                .iter()
                .enumerate()
                .filter(|(_, s)| s.endpoints.len() + remaining.len() <= max)
                .max_by_key(|(_, s)| s.endpoints.len())
                .map(|(i, _)| i)
        } else {
            None
        };
        let mut slice = match fill {
            Some(i) => unchanged.remove(i).clone(),
            None => new_slice(svc, &group.ports, address_type),
        };
        while slice.endpoints.len() < max
            && let Some(ep) = remaining.pop()
        {
            slice.endpoints.push(ep);
        }
        if slice.metadata.name.is_some() {
            to_update.push(slice);
        } else {
            create.push(slice);
        }
    }
    update.extend(to_update);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"app": "web"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web() -> Service {
        svc(
            json!({"clusterIP": "10.43.0.20", "selector": {"app": "web"},
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}),
        )
    }

    fn pod(name: &str, ip: &str, ready: bool, container_port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                     "ports": [{"name": "http", "containerPort": container_port}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn no_zone(_: &str) -> Option<String> {
        None
    }

    fn inputs<'a>(pods: &'a [&'a Pod]) -> Inputs<'a> {
        Inputs {
            pods,
            zone: &no_zone,
            max_endpoints_per_slice: MAX_ENDPOINTS_PER_SLICE,
            trigger_time: None,
        }
    }

    /// Applies a plan as the apiserver would (names for creates).
    fn apply(existing: &mut Vec<EndpointSlice>, plan: Plan, next: &mut usize) {
        existing.retain(|s| !plan.delete.contains(s.metadata.name.as_ref().unwrap()));
        for u in plan.update {
            let i = existing
                .iter()
                .position(|s| s.metadata.name == u.metadata.name)
                .unwrap();
            existing[i] = u;
        }
        for mut c in plan.create {
            *next += 1;
            c.metadata.name = Some(format!(
                "{}{next}",
                c.metadata.generate_name.clone().unwrap()
            ));
            existing.push(c);
        }
    }

    fn converge(svc: &Service, pods: &[&Pod], existing: &mut Vec<EndpointSlice>) {
        let mut next = existing.len();
        let p = plan(svc, &existing.iter().collect::<Vec<_>>(), &inputs(pods));
        apply(existing, p, &mut next);
        let again = plan(svc, &existing.iter().collect::<Vec<_>>(), &inputs(pods));
        assert!(again.is_empty(), "a second pass writes nothing: {again:?}");
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let a = pod("a", "10.42.0.1", true, 8080);
        let b = pod("b", "10.42.0.2", true, 8080);
        let c = pod("c", "10.42.0.3", true, 9090);
        let mut slices = Vec::new();
        converge(&web(), &[&a, &b, &c], &mut slices);
        assert_eq!(slices.len(), 2);
        let by_port = |n: i32| {
            slices
                .iter()
                .find(|s| s.ports.as_ref().unwrap()[0].port == Some(n))
                .unwrap()
        };
        let s8080 = by_port(8080);
        assert_eq!(s8080.endpoints.len(), 2);
        assert_eq!(
            s8080.ports.as_ref().unwrap()[0].name.as_deref(),
            Some("http")
        );
        assert_eq!(by_port(9090).endpoints[0].addresses, ["10.42.0.3"]);
        let meta = &s8080.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("web-"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert_eq!(labels["app"], "web");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-uid")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        let ep = &s8080.endpoints[0];
        assert_eq!(ep.node_name.as_deref(), Some("n1"));
        assert_eq!(ep.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
        // A pod without the named port serves nothing for it.
        let mut nameless = pod("d", "10.42.0.4", true, 1);
        nameless.spec.as_mut().unwrap().containers[0].ports = None;
        let mut slices = Vec::new();
        converge(&web(), &[&nameless], &mut slices);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].ports.as_ref().unwrap().is_empty());
        assert_eq!(slices[0].endpoints.len(), 1);
    }

    #[test]
    fn two_hundred_fifty_pods_fill_three_slices_and_one_change_writes_one() {
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.42.{}.{}", i / 200, i % 200 + 1),
                    true,
                    8080,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut slices = Vec::new();
        converge(&web(), &refs, &mut slices);
        let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [50, 100, 100]);
        // One pod turns unready: exactly one slice is updated.
        let mut changed = pods.clone();
        changed[123]
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let refs: Vec<&Pod> = changed.iter().collect();
        let p = plan(&web(), &slices.iter().collect::<Vec<_>>(), &inputs(&refs));
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        let ep = p.update[0]
            .endpoints
            .iter()
            .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some("p123"))
            .unwrap();
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(false));
        // One pod goes away and a new one comes: one update, no create.
        let mut next = 10;
        apply(&mut slices, p, &mut next);
        let mut swapped = changed.clone();
        swapped.remove(0);
        swapped.push(pod("new", "10.42.9.9", true, 8080));
        let refs: Vec<&Pod> = swapped.iter().collect();
        let p = plan(&web(), &slices.iter().collect::<Vec<_>>(), &inputs(&refs));
        assert_eq!(
            (p.create.len(), p.update.len(), p.delete.len()),
            (0, 1, 0),
            "{p:?}"
        );
    }

    #[test]
    fn readiness_terminating_and_publish_not_ready() {
        let mut p = pod("a", "10.42.0.1", true, 8080);
        let cond = |p: &Pod, svc: &Service| {
            pod_endpoint(svc, p, "IPv4", None)
                .unwrap()
                .conditions
                .unwrap()
        };
        let c = cond(&p, &web());
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        let c = cond(&p, &web());
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        // Terminating pods stay in the slices, not ready.
        let mut slices = Vec::new();
        converge(&web(), &[&p], &mut slices);
        assert_eq!(slices[0].endpoints.len(), 1);
        let mut publish = web();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let unready = pod("b", "10.42.0.2", false, 8080);
        let c = cond(&unready, &publish);
        assert_eq!((c.ready, c.serving), (Some(true), Some(false)));
        assert_eq!(cond(&p, &publish).ready, Some(true));
        // Pods without an IP or finished are no endpoints.
        let mut done = pod("c", "10.42.0.3", false, 8080);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut pending = pod("d", "", false, 8080);
        pending.status.as_mut().unwrap().pod_ips = None;
        let mut slices = Vec::new();
        converge(&web(), &[&done, &pending], &mut slices);
        assert_eq!(slices.len(), 1, "the placeholder");
        assert!(is_placeholder(&slices[0], "IPv4"));
    }

    #[test]
    fn scaling_to_zero_leaves_one_placeholder_and_keeps_it() {
        let pods: Vec<Pod> = (0..150)
            .map(|i| pod(&format!("p{i}"), &format!("10.42.1.{}", i + 1), true, 8080))
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut slices = Vec::new();
        converge(&web(), &refs, &mut slices);
        assert_eq!(slices.len(), 2);
        let names: Vec<String> = slices
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        converge(&web(), &[], &mut slices);
        assert_eq!(slices.len(), 1);
        assert!(is_placeholder(&slices[0], "IPv4"));
        assert!(
            names.contains(slices[0].metadata.name.as_ref().unwrap()),
            "reused, not recreated"
        );
    }

    #[test]
    fn hostname_zone_headless_and_foreign_slices() {
        let mut headless =
            svc(json!({"clusterIP": "None", "selector": {"app": "web"}, "ports": []}));
        headless.metadata.labels = None;
        let mut p = pod("a", "10.42.0.1", true, 8080);
        p.spec.as_mut().unwrap().hostname = Some("a0".into());
        p.spec.as_mut().unwrap().subdomain = Some("web".into());
        let zone = |n: &str| (n == "n1").then(|| "zone-a".to_string());
        let refs = [&p];
        let inputs = Inputs {
            pods: &refs,
            zone: &zone,
            max_endpoints_per_slice: 100,
            trigger_time: Some("2024-01-01T00:00:00Z".into()),
        };
        let out = plan(&headless, &[], &inputs);
        let s = &out.create[0];
        assert_eq!(s.endpoints[0].hostname.as_deref(), Some("a0"));
        assert_eq!(s.endpoints[0].zone.as_deref(), Some("zone-a"));
        assert_eq!(s.metadata.labels.as_ref().unwrap()[HEADLESS_LABEL], "");
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[TRIGGER_TIME_ANNOTATION],
            "2024-01-01T00:00:00Z"
        );
        // A slice owned by an older Service of the same name is replaced,
        // not reused.
        let mut old = s.clone();
        old.metadata.name = Some("web-old".into());
        old.metadata.owner_references.as_mut().unwrap()[0].uid = "gone".into();
        let out = plan(&headless, &[&old], &inputs);
        assert_eq!((out.create.len(), out.update.len()), (1, 0), "{out:?}");
        assert_eq!(out.delete, ["web-old"]);
        assert_eq!(
            out.create[0].metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
    }
}
