use std::net::Ipv4Addr;

use super::*;
use crate::model::{Endpoint, NodeFacts, Protocol, ServicePort};

pub(crate) fn node() -> NodeFacts {
    NodeFacts {
        name: "n1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 77, 2)],
        cluster_cidr: Some("10.42.0.0/16".parse().unwrap()),
        service_cidr: Some("10.43.0.0/16".parse().unwrap()),
    }
}

fn ep(a: [u8; 4], port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(a),
        port,
        local,
    }
}

pub(crate) fn port(name: &str, ip: [u8; 4], eps: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        service: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        cluster_ip: Ipv4Addr::from(ip),
        port: 80,
        node_port: None,
        external_ips: vec![],
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        endpoints: eps,
    }
}

fn el<'a>(r: &'a Ruleset, map: &str, key: &str) -> Option<&'a str> {
    r.elements[map].get(key).map(String::as_str)
}

fn rules<'a>(r: &'a Ruleset, chain: &str) -> &'a [String] {
    &r.chains
        .get(chain)
        .unwrap_or_else(|| panic!("no chain {chain}"))
        .rules
}

#[test]
fn a_cluster_ip_goes_to_a_random_endpoint_through_per_endpoint_chains() {
    let sp = port(
        "web",
        [10, 43, 0, 20],
        vec![
            ep([10, 42, 0, 5], 8080, true),
            ep([10, 42, 1, 5], 8080, false),
        ],
    );
    let r = generate(&node(), std::slice::from_ref(&sp));
    let id = port_id(&sp);
    assert_eq!(
        el(&r, SERVICE_IPS, "10.43.0.20 . tcp . 80"),
        Some(format!("goto service-{id}").as_str())
    );
    assert!(r.elements[CLUSTER_IPS].contains_key("10.43.0.20"));
    let e0 = endpoint_id(&sp, &sp.endpoints[0]);
    let e1 = endpoint_id(&sp, &sp.endpoints[1]);
    assert_eq!(
        rules(&r, &format!("service-{id}")),
        [format!(
            "numgen random mod 2 vmap {{ 0 : goto endpoint-{e0} , 1 : goto endpoint-{e1} }}"
        )]
    );
    // Hairpin (the endpoint reaching itself) is masqueraded, then DNAT.
    assert_eq!(
        rules(&r, &format!("endpoint-{e0}")),
        [
            "ip saddr 10.42.0.5 jump mark-for-masquerade".to_string(),
            "meta l4proto tcp dnat to 10.42.0.5:8080".to_string()
        ]
    );
    assert!(r.elements[SERVICE_NODEPORTS].is_empty());
    assert!(r.elements[NO_ENDPOINT_SERVICES].is_empty());
    // ClusterIP traffic from outside the cluster CIDR is masqueraded.
    assert!(rules(&r, "services").contains(
        &"ip daddr @cluster-ips ip saddr != 10.42.0.0/16 jump mark-for-masquerade".to_string()
    ));
    // Names are stable and short enough for nft.
    assert!(r.chains.keys().all(|k| k.len() < 256));
    assert_eq!(generate(&node(), &[sp]), r);
}

#[test]
fn a_port_without_endpoints_is_rejected_not_routed() {
    let mut sp = port("empty", [10, 43, 0, 21], vec![]);
    sp.node_port = Some(30021);
    sp.external_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
    let r = generate(&node(), &[sp.clone()]);
    assert_eq!(
        el(&r, NO_ENDPOINT_SERVICES, "10.43.0.21 . tcp . 80"),
        Some("goto reject-chain")
    );
    assert_eq!(
        el(&r, NO_ENDPOINT_SERVICES, "192.0.2.1 . tcp . 80"),
        Some("goto reject-chain")
    );
    assert_eq!(
        el(&r, NO_ENDPOINT_NODEPORTS, "tcp . 30021"),
        Some("goto reject-chain")
    );
    assert!(r.elements[SERVICE_IPS].is_empty() && r.elements[SERVICE_NODEPORTS].is_empty());
    assert!(
        !r.chains
            .keys()
            .any(|k| k.starts_with("service-") && k != "service-endpoints-check")
    );
    // A reject answers new connections in the filter hooks.
    assert_eq!(rules(&r, "reject-chain"), ["reject".to_string()]);
    assert!(
        rules(&r, "filter-output")
            .iter()
            .any(|x| x.contains("service-endpoints-check"))
    );
    assert!(
        rules(&r, "filter-input")
            .iter()
            .any(|x| x.contains("nodeport-endpoints-check"))
    );
}

#[test]
fn node_ports_answer_on_every_node_address_and_are_masqueraded() {
    let mut sp = port("np", [10, 43, 0, 22], vec![ep([10, 42, 1, 5], 8080, false)]);
    sp.node_port = Some(30080);
    let mut n = node();
    n.addresses.push(Ipv4Addr::new(10, 0, 0, 9));
    let r = generate(&n, &[sp.clone()]);
    let id = port_id(&sp);
    assert_eq!(
        el(&r, SERVICE_NODEPORTS, "tcp . 30080"),
        Some(format!("goto external-{id}").as_str())
    );
    let ips: Vec<&String> = r.elements[NODEPORT_IPS].keys().collect();
    assert_eq!(ips, ["10.0.0.9", "192.168.77.2"]);
    assert_eq!(
        rules(&r, &format!("external-{id}")),
        [
            "jump mark-for-masquerade".to_string(),
            format!("goto service-{id}")
        ]
    );
    assert_eq!(
        rules(&r, "masquerading").last().unwrap(),
        "masquerade fully-random"
    );
}

#[test]
fn client_ip_affinity_uses_a_timed_set_per_endpoint() {
    let mut sp = port(
        "sticky",
        [10, 43, 0, 23],
        vec![ep([10, 42, 0, 5], 80, true), ep([10, 42, 0, 6], 80, true)],
    );
    sp.affinity_timeout = Some(60);
    let r = generate(&node(), &[sp.clone()]);
    let id = port_id(&sp);
    let e0 = endpoint_id(&sp, &sp.endpoints[0]);
    let set = &r.sets[&format!("affinity-{e0}")];
    assert_eq!(
        set.body,
        "type ipv4_addr ; flags dynamic,timeout ; timeout 60s ;"
    );
    let svc = rules(&r, &format!("service-{id}"));
    assert_eq!(
        svc[0],
        format!("ip saddr @affinity-{e0} goto endpoint-{e0}")
    );
    assert!(svc[2].starts_with("numgen random mod 2"));
    assert_eq!(
        rules(&r, &format!("endpoint-{e0}"))[1],
        format!("update @affinity-{e0} {{ ip saddr }}")
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_source_and_drops_without_a_local_endpoint() {
    let mut sp = port(
        "loc",
        [10, 43, 0, 24],
        vec![ep([10, 42, 0, 5], 80, true), ep([10, 42, 1, 5], 80, false)],
    );
    sp.node_port = Some(30024);
    sp.external_local = true;
    sp.external_ips = vec![Ipv4Addr::new(192, 168, 77, 2)];
    let r = generate(&node(), &[sp.clone()]);
    let id = port_id(&sp);
    let local = endpoint_id(&sp, &sp.endpoints[0]);
    assert_eq!(
        rules(&r, &format!("external-{id}")),
        [
            format!("ip saddr 10.42.0.0/16 goto service-{id}"),
            "fib saddr type local jump mark-for-masquerade".to_string(),
            format!("fib saddr type local goto service-{id}"),
            format!("goto local-{id}"),
        ]
    );
    assert_eq!(
        rules(&r, &format!("local-{id}")),
        [format!(
            "numgen random mod 1 vmap {{ 0 : goto endpoint-{local} }}"
        )]
    );
    // The ClusterIP still reaches every endpoint.
    assert_eq!(
        el(&r, SERVICE_IPS, "10.43.0.24 . tcp . 80"),
        Some(format!("goto service-{id}").as_str())
    );
    assert!(r.elements[NO_ENDPOINT_NODEPORTS].is_empty());

    // No local endpoint: outside traffic is dropped, pods still served.
    sp.endpoints = vec![ep([10, 42, 1, 5], 80, false)];
    let r = generate(&node(), &[sp.clone()]);
    assert_eq!(el(&r, NO_ENDPOINT_NODEPORTS, "tcp . 30024"), Some("drop"));
    assert_eq!(
        el(&r, NO_ENDPOINT_SERVICES, "192.168.77.2 . tcp . 80"),
        Some("drop")
    );
    assert_eq!(
        el(&r, SERVICE_NODEPORTS, "tcp . 30024"),
        Some(format!("goto external-{id}").as_str())
    );
    assert!(
        !rules(&r, &format!("external-{id}"))
            .iter()
            .any(|x| x.contains("local-"))
    );
}

#[test]
fn internal_traffic_policy_local_uses_only_local_endpoints() {
    let mut sp = port(
        "itp",
        [10, 43, 0, 25],
        vec![ep([10, 42, 0, 5], 80, true), ep([10, 42, 1, 5], 80, false)],
    );
    sp.internal_local = true;
    let r = generate(&node(), &[sp.clone()]);
    let id = port_id(&sp);
    assert_eq!(
        el(&r, SERVICE_IPS, "10.43.0.25 . tcp . 80"),
        Some(format!("goto local-{id}").as_str())
    );
    assert!(rules(&r, &format!("local-{id}"))[0].contains("mod 1"));
    sp.endpoints.retain(|e| !e.local);
    let r = generate(&node(), &[sp]);
    assert_eq!(
        el(&r, NO_ENDPOINT_SERVICES, "10.43.0.25 . tcp . 80"),
        Some("drop")
    );
    assert!(r.elements[SERVICE_IPS].is_empty());
}

#[test]
fn load_balancer_addresses_are_routed_like_external_ips() {
    let mut sp = port("lb", [10, 43, 0, 26], vec![ep([10, 42, 0, 5], 80, true)]);
    sp.external_ips = vec![Ipv4Addr::new(192, 168, 77, 2)];
    sp.node_port = Some(30026);
    let r = generate(&node(), &[sp.clone()]);
    let id = port_id(&sp);
    assert_eq!(
        el(&r, SERVICE_IPS, "192.168.77.2 . tcp . 80"),
        Some(format!("goto external-{id}").as_str())
    );
}

#[test]
fn a_key_claimed_twice_keeps_its_first_owner() {
    let a = port("a", [10, 43, 0, 27], vec![ep([10, 42, 0, 5], 80, true)]);
    let b = port("b", [10, 43, 0, 27], vec![ep([10, 42, 0, 6], 80, true)]);
    let r = generate(&node(), &[a.clone(), b]);
    assert_eq!(
        el(&r, SERVICE_IPS, "10.43.0.27 . tcp . 80"),
        Some(format!("goto service-{}", port_id(&a)).as_str())
    );
    assert_eq!(
        r.chains
            .keys()
            .filter(|k| k.starts_with("service-") && *k != "service-endpoints-check")
            .count(),
        1
    );
}

fn many(n: u16, eps: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| {
            let e = (0..eps)
                .map(|j| ep([10, 42, (i % 250) as u8, j as u8 + 1], 8080, false))
                .collect();
            let mut p = port(
                &format!("s{i}"),
                [10, 43, (i / 250) as u8, (i % 250) as u8 + 1],
                e,
            );
            p.node_port = Some(30000 + i);
            p
        })
        .collect()
}

#[test]
fn one_endpoint_change_is_a_small_diff_whatever_the_number_of_services() {
    let old_ports = many(300, 10);
    let old = generate(&node(), &old_ports);
    let mut new_ports = old_ports.clone();
    new_ports[7].endpoints[3].ip = Ipv4Addr::new(10, 42, 200, 1);
    let new = generate(&node(), &new_ports);
    let diff = new.render_diff(&old).unwrap();
    let lines: Vec<&str> = diff.lines().collect();
    // add chain, its 2 rules, flush + refill of the service chain,
    // flush + delete of the old endpoint chain.
    assert_eq!(lines.len(), 7, "{diff}");
    let id = port_id(&new_ports[7]);
    assert!(diff.contains(&format!("flush chain ip {TABLE} service-{id}")));
    assert!(diff.contains("dnat to 10.42.200.1:8080"));
    assert_eq!(diff.matches("delete chain").count(), 1);
    assert_eq!(new.render_diff(&new).unwrap(), "");
    // The full script is much bigger.
    assert!(new.render_full().lines().count() > 100 * lines.len());
}

#[test]
fn a_diff_removes_what_went_and_adds_what_came() {
    let a = port("a", [10, 43, 0, 40], vec![ep([10, 42, 0, 5], 80, true)]);
    let mut b = port("b", [10, 43, 0, 41], vec![ep([10, 42, 0, 6], 80, true)]);
    b.affinity_timeout = Some(10);
    let old = generate(&node(), &[a.clone(), b.clone()]);
    let new = generate(&node(), &[a]);
    let diff = new.render_diff(&old).unwrap();
    let eb = endpoint_id(&b, &b.endpoints[0]);
    assert!(
        diff.contains("delete element ip rke2-proxy cluster-ips { 10.43.0.41 }"),
        "{diff}"
    );
    assert!(diff.contains("delete element ip rke2-proxy service-ips { 10.43.0.41 . tcp . 80 }"));
    assert!(diff.contains(&format!("delete chain ip rke2-proxy endpoint-{eb}")));
    assert!(diff.contains(&format!("delete set ip rke2-proxy affinity-{eb}")));
    // Elements go before the chains they name, chains before their sets.
    let at = |s: &str| diff.find(s).unwrap();
    assert!(at("delete element ip rke2-proxy service-ips") < at("delete chain"));
    assert!(at("delete chain") < at("delete set"));
    // Back again: the chains and elements come back.
    let back = old.render_diff(&new).unwrap();
    assert!(back.contains(&format!("add set ip rke2-proxy affinity-{eb}")));
    assert!(
        back.contains(
            "add element ip rke2-proxy service-ips { 10.43.0.41 . tcp . 80 : goto service-"
        )
    );
    // A changed declaration (the affinity timeout) needs a full sync.
    let mut b2 = b.clone();
    b2.affinity_timeout = Some(20);
    let changed = generate(&node(), &[b2]);
    assert!(changed.render_diff(&generate(&node(), &[b])).is_none());
}

#[test]
fn the_full_script_replaces_the_table_in_one_go() {
    let r = generate(&node(), &many(3, 2));
    let s = r.render_full();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "add table ip rke2-proxy");
    assert_eq!(lines[1], "delete table ip rke2-proxy");
    // Every chain is declared before the first rule.
    let first_rule = lines
        .iter()
        .position(|l| l.starts_with("add rule"))
        .unwrap();
    let last_chain = lines
        .iter()
        .rposition(|l| l.starts_with("add chain"))
        .unwrap();
    assert!(last_chain < first_rule);
}

/// `nft -c` (check only, nothing applied) accepts what the generator
/// writes. Needs Debian's nftables (scripts/install.sh) and CAP_NET_ADMIN.
pub(crate) fn nft_accepts(script: &str) {
    if let Err(e) = crate::apply::check_script(script) {
        panic!("nft -c refused the script: {e}\n{script}");
    }
}

#[test]
fn nft_accepts_every_feature() {
    let mut ports = many(5, 3);
    ports[0].affinity_timeout = Some(30);
    ports[1].external_local = true;
    ports[1].endpoints[0].local = true;
    ports[1].external_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
    ports[2].internal_local = true;
    ports[3].endpoints.clear();
    ports[4].protocol = Protocol::Udp;
    let mut sctp = port("sctp", [10, 43, 9, 9], vec![ep([10, 42, 9, 9], 9, false)]);
    sctp.protocol = Protocol::Sctp;
    ports.push(sctp);
    let r = generate(&node(), &ports);
    nft_accepts(&r.render_full());
}

mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model;

    fn arb_service() -> impl Strategy<Value = (serde_json::Value, serde_json::Value)> {
        (
            0u8..4,
            prop::sample::select(vec!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Weird"]),
            prop::option::of(prop::sample::select(vec!["10.43.0.1", "10.43.0.2", "None", "", "fd00::1", "junk"])),
            prop::collection::vec((0i32..70000, prop::option::of("[a-z]{0,3}"), prop::sample::select(vec!["TCP", "UDP", "SCTP", "ICMP"]), prop::option::of(-5i32..40000)), 0..4),
            any::<bool>(),
            prop::option::of(-10i32..100000),
            prop::sample::select(vec!["Local", "Cluster", "x"]),
            prop::sample::select(vec!["Local", "Cluster"]),
            prop::collection::vec(prop::sample::select(vec!["192.0.2.1", "10.43.0.1", "bad", " 192.0.2.2"]), 0..3),
            prop::collection::vec((prop::sample::select(vec!["10.42.0.5", "10.42.0.6", "10.42.0.5", "x", "fd00::2"]), prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), prop::option::of(prop::sample::select(vec!["n1", "n2"]))), 0..6),
            prop::collection::vec((prop::option::of("[a-z]{0,3}"), prop::option::of(-1i32..70000), prop::sample::select(vec!["TCP", "UDP", "SCTP"])), 0..4),
        )
            .prop_map(|(n, ty, ip, ports, affinity, timeout, etp, itp, ext, eps, sports)| {
                let name = format!("s{n}");
                let ports: Vec<_> = ports
                    .into_iter()
                    .map(|(port, pname, proto, np)| json!({"port": port, "name": pname, "protocol": proto, "nodePort": np}))
                    .collect();
                let mut spec = json!({
                    "type": ty, "ports": ports, "externalTrafficPolicy": etp,
                    "internalTrafficPolicy": itp, "externalIPs": ext,
                    "sessionAffinity": if affinity { "ClientIP" } else { "None" },
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}},
                });
                if let Some(ip) = ip {
                    spec["clusterIP"] = json!(ip);
                }
                let svc = json!({
                    "metadata": {"namespace": "ns", "name": name},
                    "spec": spec,
                    "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
                });
                let endpoints: Vec<_> = eps
                    .into_iter()
                    .map(|(a, ready, term, node)| json!({"addresses": [a], "nodeName": node,
                        "conditions": {"ready": ready, "serving": true, "terminating": term}}))
                    .collect();
                let sports: Vec<_> = sports
                    .into_iter()
                    .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
                    .collect();
                let slice = json!({
                    "metadata": {"namespace": "ns", "name": format!("{name}-x"),
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "endpoints": endpoints, "ports": sports
                });
                (svc, slice)
            })
    }

    fn ruleset(objs: &[(serde_json::Value, serde_json::Value)]) -> Ruleset {
        let svcs: Vec<k8s_openapi::api::core::v1::Service> = objs
            .iter()
            .map(|(s, _)| serde_json::from_value(s.clone()).unwrap())
            .collect();
        let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> = objs
            .iter()
            .map(|(_, e)| serde_json::from_value(e.clone()).unwrap())
            .collect();
        generate(&node(), &model::build(&svcs, &slices, "n1"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Random Services and slices: never a panic, always a script
        /// nft accepts, and a diff between two random states exists
        /// unless a declaration changed.
        #[test]
        fn random_services_give_scripts_nft_accepts(
            a in prop::collection::vec(arb_service(), 0..6),
            b in prop::collection::vec(arb_service(), 0..6),
        ) {
            let ra = ruleset(&a);
            let rb = ruleset(&b);
            nft_accepts(&ra.render_full());
            let _ = rb.render_diff(&ra);
            prop_assert_eq!(ra.render_diff(&ra), Some(String::new()));
        }
    }
}
