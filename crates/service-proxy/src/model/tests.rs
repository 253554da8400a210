use super::*;
use serde_json::json;

pub(crate) fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

pub(crate) fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

fn web() -> Service {
    svc(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                           {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}
    }))
}

fn web_slice(eps: serde_json::Value) -> EndpointSlice {
    slice(json!({
        "metadata": {"namespace": "default", "name": "web-abc",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}]
    }))
}

#[test]
fn ports_take_their_endpoints_by_port_name_and_protocol() {
    let s = web_slice(json!([
        {"addresses": ["10.42.0.5"], "nodeName": "n1"},
        {"addresses": ["10.42.1.5"], "nodeName": "n2", "conditions": {"ready": true}}
    ]));
    let ports = build([&web()], [&s], "n1");
    assert_eq!(ports.len(), 2);
    let dns = &ports[0];
    assert_eq!(
        (dns.port_name.as_str(), dns.protocol),
        ("dns", Protocol::Udp)
    );
    assert_eq!(dns.endpoints[0].port, 5353);
    let http = &ports[1];
    assert_eq!(http.node_port, Some(30080));
    assert_eq!(
        http.endpoints,
        vec![
            Endpoint {
                ip: "10.42.0.5".parse().unwrap(),
                port: 8080,
                local: true
            },
            Endpoint {
                ip: "10.42.1.5".parse().unwrap(),
                port: 8080,
                local: false
            },
        ]
    );
}

#[test]
fn not_ready_endpoints_are_left_out_but_terminating_serving_ones_are_a_fallback() {
    let s = web_slice(json!([
        {"addresses": ["10.42.0.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
        {"addresses": ["10.42.0.7"], "conditions": {"ready": true}}
    ]));
    let ports = build([&web()], [&s], "n1");
    let ips: Vec<String> = ports[1]
        .endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(ips, vec!["10.42.0.7"]);
    let s = web_slice(json!([
        {"addresses": ["10.42.0.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        {"addresses": ["10.42.0.6"], "conditions": {"ready": false}}
    ]));
    let ports = build([&web()], [&s], "n1");
    let ips: Vec<String> = ports[1]
        .endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(ips, vec!["10.42.0.5"]);
}

#[test]
fn slices_of_other_services_namespaces_or_families_are_ignored() {
    let mut other = web_slice(json!([{"addresses": ["10.42.0.9"]}]));
    other.metadata.namespace = Some("other".into());
    let mut v6 = web_slice(json!([{"addresses": ["fd00::1"]}]));
    v6.address_type = "IPv6".into();
    let mut unlabeled = web_slice(json!([{"addresses": ["10.42.0.8"]}]));
    unlabeled.metadata.labels = None;
    let ports = build([&web()], [&other, &v6, &unlabeled], "n1");
    assert!(ports.iter().all(|p| p.endpoints.is_empty()));
}

#[test]
fn headless_external_name_and_ipv6_services_are_not_proxied() {
    for spec in [
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        json!({"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}),
        json!({"clusterIP": "fd00::10", "ports": [{"port": 80}]}),
        json!({"ports": [{"port": 80}]}),
    ] {
        let s = svc(json!({"metadata": {"namespace": "a", "name": "b"}, "spec": spec}));
        assert!(build([&s], [], "n1").is_empty(), "{spec}");
    }
}

#[test]
fn policies_affinity_and_load_balancer_addresses_are_read() {
    let s = svc(json!({
        "metadata": {"namespace": "a", "name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.30",
                 "externalIPs": ["192.0.2.7"],
                 "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                 "sessionAffinity": "ClientIP",
                 "ports": [{"port": 443, "nodePort": 31443}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "x.example"}]}}
    }));
    let p = &build([&s], [], "n1")[0];
    assert!(p.external_local && p.internal_local);
    assert_eq!(p.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
    assert_eq!(
        p.external_ips,
        vec![
            "192.0.2.1".parse::<Ipv4Addr>().unwrap(),
            "192.0.2.7".parse().unwrap()
        ]
    );
    assert_eq!(p.node_port, Some(31443));

    let s = svc(json!({
        "metadata": {"namespace": "a", "name": "c"},
        "spec": {"clusterIP": "10.43.0.31", "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                 "ports": [{"port": 80, "nodePort": 30001}]}
    }));
    let p = &build([&s], [], "n1")[0];
    assert_eq!(p.affinity_timeout, Some(60));
    // A ClusterIP Service's stray nodePort is no NodePort.
    assert_eq!(p.node_port, None);
}
