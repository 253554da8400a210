//! Tests of the record store and of answering, through the packet path a
//! client's query takes (bytes in, bytes out).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use serde_json::json;

use crate::forward::{Forwarder, nameservers};
use crate::server::{Dns, Handled};
use crate::zone::Zone;

fn svc(v: serde_json::Value) -> Arc<Service> {
    Arc::new(serde_json::from_value(v).unwrap())
}

fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
    Arc::new(serde_json::from_value(v).unwrap())
}

/// A cluster with: a ClusterIP Service with two ports (one named), a
/// dual-stack one, a headless one with three endpoints (one with a
/// hostname, one without, one not ready), a headless one with no ready
/// endpoint, two ExternalName ones (outside and inside the zone), and the
/// DNS Service itself.
fn cluster() -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let services = vec![
        svc(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]}})),
        svc(json!({"metadata": {"name": "dual", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.30", "clusterIPs": ["10.43.0.30", "fd00:43::30"],
                "ports": [{"port": 8080}]}})),
        svc(json!({"metadata": {"name": "hl", "namespace": "team"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                "ports": [{"name": "web", "port": 8080}]}})),
        svc(json!({"metadata": {"name": "empty", "namespace": "team"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}})),
        svc(json!({"metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "www.example.com"}})),
        svc(
            json!({"metadata": {"name": "alias", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
        ),
        svc(
            json!({"metadata": {"name": "rke2-coredns-rke2-coredns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
                "ports": [{"name": "udp-53", "port": 53, "protocol": "UDP"}]}}),
        ),
    ];
    let slices = vec![
        slice(json!({"metadata": {"name": "hl-abc", "namespace": "team",
                "labels": {"kubernetes.io/service-name": "hl"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "pet-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.7"], "hostname": "sick", "conditions": {"ready": false}}],
            "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}]})),
        slice(json!({"metadata": {"name": "empty-x", "namespace": "team",
                "labels": {"kubernetes.io/service-name": "empty"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.9"], "conditions": {"ready": false}}]})),
        // A slice whose Service does not exist: no records.
        slice(json!({"metadata": {"name": "orphan", "namespace": "team",
                "labels": {"kubernetes.io/service-name": "gone"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.99"]}]})),
    ];
    (services, slices)
}

fn dns_with(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Dns {
    let dns = Dns::new(
        Zone::empty("cluster.local").unwrap(),
        Forwarder::new(vec!["127.0.0.1:9".parse().unwrap()]),
    );
    dns.publish(Zone::build("cluster.local", services, slices, 1234).unwrap());
    dns
}

fn dns() -> Dns {
    let (s, e) = cluster();
    dns_with(&s, &e)
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

/// What the server answers `name`/`qtype` from the zone (panics if the
/// question would go upstream).
fn ask(dns: &Dns, name: &str, qtype: RecordType) -> Message {
    let q = query(name, qtype);
    match dns.handle(&q.to_vec().unwrap(), false) {
        Handled::Reply(b) => {
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.metadata.id, q.metadata.id);
            m
        }
        Handled::Drop => panic!("{name}: dropped"),
        Handled::Forward(_) => panic!("{name}: forwarded"),
    }
}

fn forwarded(dns: &Dns, name: &str, qtype: RecordType) -> bool {
    matches!(
        dns.handle(&query(name, qtype).to_vec().unwrap(), false),
        Handled::Forward(_)
    )
}

/// The answer section as `name ttl type data` lines.
fn lines(rs: &[Record]) -> Vec<String> {
    rs.iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn cluster_ip_service_has_a_srv_and_ptr() {
    let d = dns();
    let m = ask(&d, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert_eq!(
        lines(&m.answers),
        ["web.default.svc.cluster.local. 30 A 10.43.0.20"]
    );

    let m = ask(
        &d,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        lines(&m.answers),
        [
            "_http._tcp.web.default.svc.cluster.local. 30 SRV 0 100 80 web.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        lines(&m.additionals),
        ["web.default.svc.cluster.local. 30 A 10.43.0.20"]
    );
    let m = ask(
        &d,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.answers.len(), 1);
    // The wrong protocol is no such name.
    let m = ask(
        &d,
        "_dns._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // SRV at the Service name: every port.
    let m = ask(&d, "web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        sorted(lines(&m.answers)),
        [
            "web.default.svc.cluster.local. 30 SRV 0 50 53 web.default.svc.cluster.local.",
            "web.default.svc.cluster.local. 30 SRV 0 50 80 web.default.svc.cluster.local.",
        ]
    );

    let m = ask(&d, "20.0.43.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["20.0.43.10.in-addr.arpa. 30 PTR web.default.svc.cluster.local."]
    );
}

#[test]
fn dual_stack_service_has_a_and_aaaa_and_unnamed_ports_no_srv_name() {
    let d = dns();
    let m = ask(&d, "dual.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["dual.default.svc.cluster.local. 30 A 10.43.0.30"]
    );
    let m = ask(&d, "dual.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(
        lines(&m.answers),
        ["dual.default.svc.cluster.local. 30 AAAA fd00:43::30"]
    );
    let ptr = "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa.";
    let m = ask(&d, ptr, RecordType::PTR);
    assert_eq!(m.answers.len(), 1, "{:?}", m.answers);
    // The unnamed port has no `_<port>._<proto>` name (only SRV at the
    // Service name).
    let names = d.zone().all_names();
    assert!(!names.iter().any(|n| n.contains("_tcp.dual")), "{names:?}");
}

#[test]
fn names_are_case_insensitive_and_answers_keep_the_question_case() {
    let d = dns();
    let m = ask(&d, "WEB.Default.SVC.Cluster.LOCAL.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["WEB.Default.SVC.Cluster.LOCAL. 30 A 10.43.0.20"]
    );
    let m = ask(
        &d,
        "_HTTP._Tcp.web.DEFAULT.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn nxdomain_for_missing_names_and_nodata_for_existing_ones() {
    let d = dns();
    for name in [
        "missing.default.svc.cluster.local.",
        "web.nope.svc.cluster.local.",
        // What a resolver's search path makes of a full name.
        "web.default.svc.cluster.local.default.svc.cluster.local.",
        "web.default.svc.cluster.local.svc.cluster.local.",
        "x.web.default.svc.cluster.local.",
        "nope.cluster.local.",
    ] {
        let m = ask(&d, name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty(), "{name}");
        assert_eq!(m.authorities.len(), 1, "{name}");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{name}");
        assert_eq!(m.authorities[0].name.to_string(), "cluster.local.");
    }
    for (name, t) in [
        ("web.default.svc.cluster.local.", RecordType::AAAA),
        ("web.default.svc.cluster.local.", RecordType::TXT),
        ("web.default.svc.cluster.local.", RecordType::MX),
        ("default.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ("cluster.local.", RecordType::A),
    ] {
        let m = ask(&d, name, t);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {t}"
        );
        assert!(m.answers.is_empty(), "{name} {t}");
        assert_eq!(
            m.authorities[0].record_type(),
            RecordType::SOA,
            "{name} {t}"
        );
    }
}

#[test]
fn zone_apex_has_soa_and_ns_and_the_schema_version() {
    let d = dns();
    let m = ask(&d, "cluster.local.", RecordType::SOA);
    assert_eq!(
        lines(&m.answers),
        [
            "cluster.local. 30 SOA ns.dns.cluster.local. hostmaster.cluster.local. 1234 7200 1800 86400 30"
        ]
    );
    let m = ask(&d, "cluster.local.", RecordType::NS);
    assert_eq!(
        lines(&m.answers),
        ["cluster.local. 30 NS ns.dns.cluster.local."]
    );
    assert_eq!(
        lines(&m.additionals),
        ["ns.dns.cluster.local. 30 A 10.43.0.10"]
    );
    let m = ask(&d, "ns.dns.cluster.local.", RecordType::A);
    assert_eq!(lines(&m.answers), ["ns.dns.cluster.local. 30 A 10.43.0.10"]);
    let m = ask(&d, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(
        lines(&m.answers),
        ["dns-version.cluster.local. 30 TXT 1.1.0"]
    );
}

#[test]
fn headless_service_answers_ready_endpoints_with_their_hostnames() {
    let d = dns();
    let m = ask(&d, "hl.team.svc.cluster.local.", RecordType::A);
    assert_eq!(
        sorted(lines(&m.answers)),
        [
            "hl.team.svc.cluster.local. 30 A 10.42.0.5",
            "hl.team.svc.cluster.local. 30 A 10.42.0.6",
        ]
    );
    let m = ask(&d, "pet-0.hl.team.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["pet-0.hl.team.svc.cluster.local. 30 A 10.42.0.5"]
    );
    // An endpoint without a hostname is named by its dashed address.
    let m = ask(&d, "10-42-0-6.hl.team.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    // Not ready: no record anywhere.
    let m = ask(&d, "sick.hl.team.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&d, "_web._tcp.hl.team.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        sorted(lines(&m.answers)),
        [
            "_web._tcp.hl.team.svc.cluster.local. 30 SRV 0 50 8080 10-42-0-6.hl.team.svc.cluster.local.",
            "_web._tcp.hl.team.svc.cluster.local. 30 SRV 0 50 8080 pet-0.hl.team.svc.cluster.local.",
        ]
    );
    assert_eq!(m.additionals.len(), 2);
    let m = ask(&d, "5.0.42.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["5.0.42.10.in-addr.arpa. 30 PTR pet-0.hl.team.svc.cluster.local."]
    );
    // A reverse name the cluster does not know falls through upstream.
    assert!(forwarded(&d, "7.0.42.10.in-addr.arpa.", RecordType::PTR));
    assert!(forwarded(&d, "99.0.42.10.in-addr.arpa.", RecordType::PTR));
}

#[test]
fn headless_service_without_ready_endpoints_is_nxdomain() {
    let d = dns();
    let m = ask(&d, "empty.team.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&d, "gone.team.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn publish_not_ready_addresses_is_what_the_slice_says() {
    // The EndpointSlice controller marks not-ready pods ready when the
    // Service publishes them; the zone follows the slice.
    let (s, mut e) = cluster();
    e[1] = slice(json!({"metadata": {"name": "empty-x", "namespace": "team",
            "labels": {"kubernetes.io/service-name": "empty"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.42.0.9"], "conditions": {"ready": true}}]}));
    let d = dns_with(&s, &e);
    let m = ask(&d, "empty.team.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["empty.team.svc.cluster.local. 30 A 10.42.0.9"]
    );
}

#[test]
fn external_name_is_a_cname_chased_upstream_or_in_the_zone() {
    let d = dns();
    let m = ask(&d, "ext.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(
        lines(&m.answers),
        ["ext.default.svc.cluster.local. 30 CNAME www.example.com."]
    );
    // An A question needs the target's addresses from upstream.
    assert!(forwarded(
        &d,
        "ext.default.svc.cluster.local.",
        RecordType::A
    ));
    // A target inside the zone is answered at once.
    let m = ask(&d, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        [
            "alias.default.svc.cluster.local. 30 CNAME web.default.svc.cluster.local.",
            "web.default.svc.cluster.local. 30 A 10.43.0.20",
        ]
    );
}

#[test]
fn pod_names_resolve_any_well_formed_address() {
    let d = dns();
    let m = ask(&d, "10-42-1-5.default.pod.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["10-42-1-5.default.pod.cluster.local. 30 A 10.42.1.5"]
    );
    let m = ask(&d, "10-42-1-5.default.pod.cluster.local.", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let m = ask(&d, "fd00-42--5.any.pod.cluster.local.", RecordType::AAAA);
    assert_eq!(
        lines(&m.answers),
        ["fd00-42--5.any.pod.cluster.local. 30 AAAA fd00:42::5"]
    );
    for bad in [
        "10-42-1-500.default.pod.cluster.local.",
        "web.default.pod.cluster.local.",
        "a.10-42-1-5.default.pod.cluster.local.",
    ] {
        let m = ask(&d, bad, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{bad}");
    }
    let m = ask(&d, "default.pod.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn names_outside_the_zone_go_upstream() {
    let d = dns();
    assert!(forwarded(&d, "example.com.", RecordType::A));
    assert!(forwarded(&d, "local.", RecordType::A));
    assert!(forwarded(&d, "cluster.local.example.com.", RecordType::A));
}

#[test]
fn cluster_names_are_servfail_until_the_first_sync() {
    let d = Dns::new(
        Zone::empty("cluster.local").unwrap(),
        Forwarder::new(vec![]),
    );
    let m = ask(&d, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(forwarded(&d, "example.com.", RecordType::A));
    d.publish(Zone::empty("cluster.local").unwrap());
    let m = ask(&d, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn address_answers_rotate() {
    let d = dns();
    let first: Vec<String> = (0..2)
        .map(|_| lines(&ask(&d, "hl.team.svc.cluster.local.", RecordType::A).answers)[0].clone())
        .collect();
    assert_ne!(first[0], first[1]);
}

#[test]
fn another_cluster_domain() {
    let (s, e) = cluster();
    let z = Zone::build("Corp.Example.", &s, &e, 1).unwrap();
    let d = Dns::new(Zone::empty("corp.example").unwrap(), Forwarder::new(vec![]));
    d.publish(z);
    let m = ask(&d, "web.default.svc.corp.example.", RecordType::A);
    assert_eq!(m.answers.len(), 1);
    assert!(forwarded(
        &d,
        "web.default.svc.cluster.local.",
        RecordType::A
    ));
}

fn reply(d: &Dns, bytes: &[u8]) -> Option<Message> {
    match d.handle(bytes, false) {
        Handled::Reply(b) => Some(Message::from_vec(&b).expect("our answers decode")),
        Handled::Drop => None,
        Handled::Forward(_) => panic!("forwarded"),
    }
}

#[test]
fn bad_packets_get_error_codes_or_are_dropped() {
    let d = dns();
    // Too short for a header, or a response: dropped.
    assert!(reply(&d, &[]).is_none());
    assert!(reply(&d, &[1, 2, 3]).is_none());
    let mut resp = query("web.default.svc.cluster.local.", RecordType::A);
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(reply(&d, &resp.to_vec().unwrap()).is_none());

    // A header announcing a question that is not there: FORMERR, same id.
    let m = reply(&d, &[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(m.metadata.id, 0xabcd);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.metadata.recursion_desired);
    // A label longer than 63 bytes.
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 64];
    p.extend(std::iter::repeat_n(b'a', 64));
    p.extend([0, 0, 1, 0, 1]);
    assert_eq!(
        reply(&d, &p).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // A compression pointer loop.
    let p = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    assert_eq!(
        reply(&d, &p).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    // An oversized packet of garbage after a valid header.
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    p.extend(std::iter::repeat_n(0xff, 65000));
    assert_eq!(
        reply(&d, &p).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );

    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    q.metadata.op_code = OpCode::Notify;
    let m = reply(&d, &q.to_vec().unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    q.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    let m = reply(&d, &q.to_vec().unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    q.queries.clear();
    let m = reply(&d, &q.to_vec().unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    let mut e = Edns::new();
    e.set_version(1);
    q.set_edns(e);
    let m = reply(&d, &q.to_vec().unwrap()).unwrap();
    // BADVERS shares code 16 with BADSIG, which is how it decodes.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.map(|e| e.version()), Some(0));

    let mut q = query("web.default.svc.cluster.local.", RecordType::A);
    q.queries[0].set_query_class(DNSClass::CH);
    let m = reply(&d, &q.to_vec().unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    let q = query("cluster.local.", RecordType::AXFR);
    let m = reply(&d, &q.to_vec().unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let (mut s, mut e) = cluster();
    s.push(svc(
        json!({"metadata": {"name": "big", "namespace": "default"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}),
    ));
    let eps: Vec<_> = (0..100)
        .map(|i| json!({"addresses": [format!("10.42.{}.{}", i / 250, i % 250 + 1)]}))
        .collect();
    e.push(slice(
        json!({"metadata": {"name": "big-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "endpoints": eps}),
    ));
    let d = dns_with(&s, &e);
    let q = query("big.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let Handled::Reply(b) = d.handle(&q, false) else {
        panic!()
    };
    assert!(b.len() <= 512);
    let m = Message::from_vec(&b).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let Handled::Reply(b) = d.handle(&q, true) else {
        panic!()
    };
    let m = Message::from_vec(&b).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    // Names are compressed: 16 bytes a record.
    assert!(b.len() < 1700, "{} bytes", b.len());
    // With EDNS, up to the client's size.
    let mut q = query("big.default.svc.cluster.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let Handled::Reply(b) = d.handle(&q.to_vec().unwrap(), false) else {
        panic!()
    };
    let m = Message::from_vec(&b).unwrap();
    assert!(!m.metadata.truncation, "{} bytes", b.len());
    assert_eq!(m.answers.len(), 100);
    assert!(m.edns.is_some());
}

#[test]
fn resolv_conf_nameservers() {
    let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\nnameserver bogus\noptions ndots:2\nnameserver 1.1.1.1 # comment\n";
    assert_eq!(
        nameservers(text),
        [
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "[fe80::1]:53".parse().unwrap(),
            "1.1.1.1:53".parse().unwrap(),
        ]
    );
}

/// A tiny upstream on a loopback port: answers every A question with
/// 192.0.2.1 (TTL 300), except `big.test.` whose UDP answer is truncated
/// (its TCP answer is whole) and `none.test.` which is NXDOMAIN.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    // The same port for UDP and TCP: a random UDP port's TCP twin may be
    // taken by another socket on a busy machine, so try a few.
    let mut tries = 0;
    let (udp, addr, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(e) if tries < 20 => {
                tries += 1;
                let _ = e;
            }
            Err(e) => panic!("no port free for both UDP and TCP after 20 tries: {e}"),
        }
    };
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let answer = move |b: &[u8], tcp: bool| {
        let q = Message::from_vec(b).unwrap();
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.metadata.recursion_available = true;
        r.queries = q.queries.clone();
        let name = q.queries[0].name().clone();
        if name.to_string() == "big.test." && !tcp {
            r.metadata.truncation = true;
        } else if name.to_string() == "none.test." {
            r.metadata.response_code = ResponseCode::NXDomain;
            r.add_authority(Record::from_rdata(
                Name::from_ascii("test.").unwrap(),
                600,
                RData::SOA(hickory_proto::rr::rdata::SOA::new(
                    Name::from_ascii("ns.test.").unwrap(),
                    Name::from_ascii("h.test.").unwrap(),
                    1,
                    1,
                    1,
                    1,
                    20,
                )),
            ));
        } else {
            r.add_answer(Record::from_rdata(
                name,
                300,
                RData::A(hickory_proto::rr::rdata::A([192, 0, 2, 1].into())),
            ));
        }
        r.to_vec().unwrap()
    };
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                r = udp.recv_from(&mut buf) => {
                    let (n, peer) = r.unwrap();
                    c.fetch_add(1, Ordering::SeqCst);
                    udp.send_to(&answer(&buf[..n], false), peer).await.unwrap();
                }
                r = tcp.accept() => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut s, _) = r.unwrap();
                    let len = s.read_u16().await.unwrap();
                    let mut b = vec![0u8; len as usize];
                    s.read_exact(&mut b).await.unwrap();
                    let a = answer(&b, true);
                    s.write_u16(a.len() as u16).await.unwrap();
                    s.write_all(&a).await.unwrap();
                }
            }
        }
    });
    (addr, count, task)
}

#[tokio::test]
async fn forwarding_caches_for_at_most_30s_and_retries_truncated_answers_over_tcp() {
    let (addr, count, task) = upstream().await;
    let d = Dns::new(
        Zone::empty("cluster.local").unwrap(),
        Forwarder::new(vec![addr]),
    );
    d.publish(Zone::empty("cluster.local").unwrap());
    let ask_up = |name: &'static str| {
        let q = query(name, RecordType::A).to_vec().unwrap();
        let d = &d;
        async move { Message::from_vec(&d.answer(&q, false).await.unwrap()).unwrap() }
    };
    let m = ask_up("www.example.com.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.metadata.authoritative);
    assert_eq!(lines(&m.answers), ["www.example.com. 30 A 192.0.2.1"]);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // From the cache, case-insensitively.
    let m = ask_up("WWW.example.com.").await;
    assert_eq!(m.answers.len(), 1);
    assert!(m.answers[0].ttl <= 30);
    assert_eq!(count.load(Ordering::SeqCst), 1);

    let m = ask_up("big.test.").await;
    assert!(!m.metadata.truncation);
    assert_eq!(lines(&m.answers), ["big.test. 30 A 192.0.2.1"]);

    let m = ask_up("none.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1);

    // An ExternalName Service's target comes from upstream.
    let (s, e) = cluster();
    d.publish(Zone::build("cluster.local", &s, &e, 1).unwrap());
    let m = ask_up("ext.default.svc.cluster.local.").await;
    assert!(m.metadata.authoritative);
    assert_eq!(
        lines(&m.answers),
        [
            "ext.default.svc.cluster.local. 30 CNAME www.example.com.",
            "www.example.com. 30 A 192.0.2.1",
        ]
    );
    task.abort();
}

#[tokio::test]
async fn no_upstream_answering_is_servfail() {
    // A port nobody listens on: the ICMP error ends the exchange at once.
    let unused = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let d = Dns::new(
        Zone::empty("cluster.local").unwrap(),
        Forwarder::new(vec![addr]),
    );
    let q = query("example.com.", RecordType::A).to_vec().unwrap();
    let m = Message::from_vec(&d.answer(&q, false).await.unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

fn valid_queries() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (n, t) in [
        ("web.default.svc.cluster.local.", RecordType::A),
        ("_web._tcp.hl.team.svc.cluster.local.", RecordType::SRV),
        ("5.0.42.10.in-addr.arpa.", RecordType::PTR),
        ("10-42-1-5.default.pod.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::ANY),
    ] {
        let mut q = query(n, t);
        v.push(q.to_vec().unwrap());
        q.set_edns(Edns::new());
        v.push(q.to_vec().unwrap());
    }
    v
}

/// Whatever the bytes: no panic, and either nothing or an answer that
/// decodes, carries the packet's id and is a response.
fn check_any_packet(d: &Dns, bytes: &[u8]) -> Result<(), TestCaseError> {
    match d.handle(bytes, false) {
        Handled::Drop => prop_assert!(bytes.len() < 12 || bytes[2] & 0x80 != 0),
        Handled::Reply(b) => {
            prop_assert!(b.len() <= 4096);
            let m = Message::from_vec(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
            prop_assert_eq!(
                m.metadata.message_type,
                hickory_proto::op::MessageType::Response
            );
        }
        Handled::Forward(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let d = dns();
        check_any_packet(&d, &bytes)?;
    }

    #[test]
    fn mutated_queries_never_panic(
        which in 0usize..10,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let d = dns();
        let mut p = valid_queries()[which].clone();
        for (at, b) in flips {
            let i = at % p.len();
            p[i] = b;
        }
        if let Some(c) = cut {
            p.truncate(c % (p.len() + 1));
        }
        p.extend(tail);
        check_any_packet(&d, &p)?;
    }
}
