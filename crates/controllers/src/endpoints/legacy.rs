//! What the Endpoints controller writes for one Service: the pure part of
//! kube-controller-manager's endpoint controller. The core/v1 Endpoints
//! object named after the Service lists each pod address once per port
//! set, ready pods under `addresses`, the others under
//! `notReadyAddresses` (terminating pods only when the Service publishes
//! not-ready addresses, then as ready), repacked so that addresses
//! serving the same ports share a subset; past 1000 addresses it is
//! truncated and annotated `endpoints.kubernetes.io/over-capacity:
//! truncated`, as upstream.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pods;
use super::slices::{HEADLESS_LABEL, TRIGGER_TIME_ANNOTATION};

/// Annotation set when the Endpoints were cut to [`MAX_CAPACITY`].
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
/// The most addresses one Endpoints object carries (upstream's
/// `maxCapacity`).
pub const MAX_CAPACITY: usize = 1000;

/// The address of a pod for the Service's IP family; `None` when the pod
/// has no such address.
fn pod_address(svc: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let want_v6 = super::slices::address_types(svc).first() == Some(&"IPv6");
    let ip = pods::ips(pod)
        .into_iter()
        .find(|ip| ip.contains(':') == want_v6)?;
    Some(EndpointAddress {
        ip,
        hostname: pods::hostname_for(pod, svc),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

/// A port's identity: name, number, protocol, app protocol (`-1` for
/// the port-less entry of a headless Service).
type PortKey = (String, i32, String, String);
/// An address's identity: IP and pod uid.
type AddrKey = (String, String);
/// The addresses serving one port, and whether each is ready there.
type Addrs = BTreeMap<AddrKey, (EndpointAddress, bool)>;
/// One subset in the making: its ports and its addresses with readiness.
type Group = (Vec<EndpointPort>, Vec<(EndpointAddress, bool)>);

fn port_key(p: &Option<EndpointPort>) -> PortKey {
    match p {
        None => (String::new(), -1, String::new(), String::new()),
        Some(p) => (
            p.name.clone().unwrap_or_default(),
            p.port,
            p.protocol.clone().unwrap_or_default(),
            p.app_protocol.clone().unwrap_or_default(),
        ),
    }
}

fn address_key(a: &EndpointAddress) -> AddrKey {
    let uid = a
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    (a.ip.clone(), uid)
}

/// The subsets of a Service's Endpoints, repacked (upstream's
/// `RepackSubsets`: one subset per set of addresses sharing the same
/// ports; an address both ready and not for a port counts as not ready)
/// and sorted.
pub fn subsets(svc: &Service, selected: &[&Pod]) -> Vec<EndpointSubset> {
    let spec = svc.spec.as_ref();
    let publish = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let svc_ports: &[k8s_openapi::api::core::v1::ServicePort] =
        spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
    let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    // port → address key → (address, ready)
    let mut by_port: BTreeMap<PortKey, (Option<EndpointPort>, Addrs)> = BTreeMap::new();
    let mut add = |port: Option<EndpointPort>, addr: &EndpointAddress, ready: bool| {
        let entry = by_port
            .entry(port_key(&port))
            .or_insert_with(|| (port, BTreeMap::new()));
        let slot = entry
            .1
            .entry(address_key(addr))
            .or_insert_with(|| (addr.clone(), ready));
        // Not ready wins over ready.
        slot.1 &= ready;
    };
    for pod in selected {
        if !pods::should_be_in_endpoints(pod, publish) {
            continue;
        }
        let Some(addr) = pod_address(svc, pod) else {
            continue;
        };
        let ready = publish || pods::is_ready(pod);
        if svc_ports.is_empty() {
            // A headless Service may have no ports.
            if headless {
                add(None, &addr, ready);
            }
            continue;
        }
        for sp in svc_ports {
            let Some(port) = pods::find_port(pod, sp) else {
                continue;
            };
            add(
                Some(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port,
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                }),
                &addr,
                ready,
            );
        }
    }
    // Group the ports by the exact set of addresses (and readiness) that
    // serve them.
    let mut groups: BTreeMap<Vec<(AddrKey, bool)>, Group> = BTreeMap::new();
    for (_, (port, addrs)) in by_port {
        let key: Vec<(AddrKey, bool)> = addrs.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
        let group = groups
            .entry(key)
            .or_insert_with(|| (Vec::new(), addrs.into_values().collect()));
        if let Some(p) = port {
            group.0.push(p);
        }
    }
    let mut out: Vec<EndpointSubset> = groups
        .into_values()
        .map(|(ports, addrs)| {
            let (ready, not_ready): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|(_, r)| *r);
            let list = |v: Vec<(EndpointAddress, bool)>| {
                let v: Vec<EndpointAddress> = v.into_iter().map(|(a, _)| a).collect();
                (!v.is_empty()).then_some(v)
            };
            EndpointSubset {
                addresses: list(ready),
                not_ready_addresses: list(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    out.sort_by_key(|s| {
        let first = |v: &Option<Vec<EndpointAddress>>| {
            v.as_ref()
                .and_then(|a| a.first())
                .map(address_key)
                .unwrap_or_default()
        };
        let ports: Vec<(String, i32)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect();
        (first(&s.addresses), first(&s.not_ready_addresses), ports)
    });
    out
}

/// upstream's `truncateEndpoints`: past [`MAX_CAPACITY`] addresses, keep
/// a share of each subset proportional to its size — of the ready ones
/// if they alone are too many (dropping every not-ready one), else of the
/// not-ready ones. Whether it cut anything.
pub fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let len = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| len(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| len(&s.not_ready_addresses)).sum();
    if ready + not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = ready > MAX_CAPACITY;
    let (max, total) = if truncate_ready {
        (MAX_CAPACITY, ready)
    } else {
        (MAX_CAPACITY - ready, not_ready)
    };
    let mut can_add = max;
    for s in subsets.iter_mut() {
        let n = if truncate_ready {
            len(&s.addresses)
        } else {
            len(&s.not_ready_addresses)
        };
        let share = (n as f64 / total as f64 * max as f64).ceil() as usize;
        let keep = share.min(can_add);
        let cut = |v: &mut Option<Vec<EndpointAddress>>| {
            if let Some(v) = v.as_mut() {
                v.truncate(keep);
            }
        };
        if truncate_ready {
            cut(&mut s.addresses);
            s.not_ready_addresses = None;
            can_add -= len(&s.addresses);
        } else {
            cut(&mut s.not_ready_addresses);
            can_add -= len(&s.not_ready_addresses);
        }
    }
    true
}

/// The Endpoints to write for a Service, or `None` when `current`
/// already says it (subsets, labels and the capacity annotation; a new
/// trigger time alone is no reason to write, as upstream).
pub fn desired(
    svc: &Service,
    selected: &[&Pod],
    current: Option<&Endpoints>,
    trigger_time: Option<&str>,
) -> Option<Endpoints> {
    let mut subsets = subsets(svc, selected);
    let truncated = truncate(&mut subsets);
    let mut labels: BTreeMap<String, String> = svc.metadata.labels.clone().unwrap_or_default();
    if pods::has_cluster_ip(svc) {
        labels.remove(HEADLESS_LABEL);
    } else {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    if let Some(cur) = current {
        let cur_subsets = cur.subsets.clone().unwrap_or_default();
        let cur_labels = cur.metadata.labels.clone().unwrap_or_default();
        let cur_truncated = cur
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(OVER_CAPACITY_ANNOTATION));
        if cur_subsets == subsets && cur_labels == labels && cur_truncated == truncated {
            return None;
        }
    }
    let mut ep = current.cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            ..Default::default()
        },
        subsets: None,
    });
    ep.subsets = (!subsets.is_empty()).then_some(subsets);
    ep.metadata.labels = Some(labels);
    let annotations = ep.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match trigger_time {
        Some(t) => {
            annotations.insert(TRIGGER_TIME_ANNOTATION.into(), t.to_string());
        }
        None => {
            annotations.remove(TRIGGER_TIME_ANNOTATION);
        }
    }
    if truncated {
        annotations.insert(OVER_CAPACITY_ANNOTATION.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY_ANNOTATION);
    }
    Some(ep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(extra: serde_json::Value) -> Service {
        let mut spec = json!({"clusterIP": "10.43.0.20", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                      {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
            "spec": spec}))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        v.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_share_a_subset_per_port_set() {
        let a = pod("a", "10.42.0.1", true, 8080);
        let b = pod("b", "10.42.0.2", false, 8080);
        let c = pod("c", "10.42.0.3", true, 9090);
        let s = subsets(&svc(json!({})), &[&a, &b, &c]);
        // 9100 is served by all three, the named port by a and b on 8080
        // and by c on 9090: three address sets, three subsets.
        assert_eq!(s.len(), 3, "{s:?}");
        let with_port = |n: i32| {
            s.iter()
                .find(|x| x.ports.iter().flatten().any(|p| p.port == n))
                .unwrap()
        };
        assert_eq!(ips(&with_port(9100).addresses), ["10.42.0.1", "10.42.0.3"]);
        assert_eq!(ips(&with_port(9100).not_ready_addresses), ["10.42.0.2"]);
        assert_eq!(ips(&with_port(8080).addresses), ["10.42.0.1"]);
        assert_eq!(ips(&with_port(8080).not_ready_addresses), ["10.42.0.2"]);
        assert_eq!(ips(&with_port(9090).addresses), ["10.42.0.3"]);
        let only_http = svc(
            json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}),
        );
        let s = subsets(&only_http, &[&a, &b]);
        assert_eq!(s.len(), 1);
        let addr = &s[0].addresses.as_ref().unwrap()[0];
        assert_eq!(addr.node_name.as_deref(), Some("n1"));
        assert_eq!(
            addr.target_ref.as_ref().unwrap().uid.as_deref(),
            Some("uid-a")
        );
        // Terminating pods leave, unless not-ready addresses are published.
        let mut t = pod("t", "10.42.0.9", true, 8080);
        t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(subsets(&svc(json!({})), &[&t]).is_empty());
        let s = subsets(&svc(json!({"publishNotReadyAddresses": true})), &[&t, &b]);
        assert_eq!(ips(&s[0].addresses), ["10.42.0.2", "10.42.0.9"]);
    }

    #[test]
    fn steady_state_writes_nothing_and_labels_follow_the_service() {
        let a = pod("a", "10.42.0.1", true, 8080);
        let s = svc(json!({}));
        let first = desired(&s, &[&a], None, Some("2024-01-01T00:00:00Z")).unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("web"));
        assert_eq!(first.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(
            first.metadata.annotations.as_ref().unwrap()[TRIGGER_TIME_ANNOTATION],
            "2024-01-01T00:00:00Z"
        );
        assert!(desired(&s, &[&a], Some(&first), None).is_none());
        let emptied = desired(&s, &[], Some(&first), None).unwrap();
        assert!(emptied.subsets.is_none());
        assert!(
            !emptied
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(TRIGGER_TIME_ANNOTATION)
        );
        let headless = svc(json!({"clusterIP": "None"}));
        let h = desired(&headless, &[&a], Some(&first), None).unwrap();
        assert_eq!(h.metadata.labels.as_ref().unwrap()[HEADLESS_LABEL], "");
    }

    #[test]
    fn over_a_thousand_addresses_are_truncated_and_annotated() {
        let pods: Vec<Pod> = (0..1200)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.42.{}.{}", i / 250, i % 250 + 1),
                    i % 4 != 0,
                    8080,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let s = svc(json!({}));
        let ep = desired(&s, &refs, None, None).unwrap();
        let subsets = ep.subsets.as_ref().unwrap();
        let ready: usize = subsets
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum();
        let not_ready: usize = subsets
            .iter()
            .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
            .sum();
        assert_eq!((ready, not_ready), (900, 100));
        assert_eq!(
            ep.metadata.annotations.as_ref().unwrap()[OVER_CAPACITY_ANNOTATION],
            "truncated"
        );
        assert!(
            desired(&s, &refs, Some(&ep), None).is_none(),
            "truncated state is steady"
        );
    }
}
