//! Answering one question from a zone snapshot: which records, and whether
//! a missing answer is NXDOMAIN (no such name) or NODATA (the name exists
//! with other types), with the zone's SOA in the authority section for
//! both, as CoreDNS's `kubernetes` plugin answers.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{Node, Place, Zone, undashed};

/// The TTL of every record we serve (RKE2's Corefile: `ttl 30`).
pub const TTL: u32 = 30;

/// What the zone says about one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The name exists and has records of the type (or a CNAME).
    Found {
        /// Answer section.
        answers: Vec<Record>,
        /// Additional section (addresses of SRV and NS targets).
        additionals: Vec<Record>,
        /// A CNAME target outside the zone whose records the caller should
        /// add from upstream (ExternalName Services).
        chase: Option<Name>,
    },
    /// The name exists, but not with this type: NOERROR, no answer, SOA.
    NoData(Record),
    /// The name does not exist: NXDOMAIN with the SOA.
    NxDomain(Record),
    /// Not the zone's (nor a reverse name it knows): forward upstream.
    Outside,
}

/// Answers `qname`/`qtype` from `zone`. `rotate` turns address lists so
/// successive answers start at different records (CoreDNS's
/// `loadbalance`, which RKE2's Corefile enables).
pub fn lookup(zone: &Zone, qname: &Name, qtype: RecordType, rotate: usize) -> Lookup {
    match zone.place(qname) {
        Place::Outside => reverse(zone, qname, qtype),
        Place::InsideInvalid => Lookup::NxDomain(soa(zone)),
        Place::Inside(rel) => inside(zone, qname, &rel, qtype, rotate),
    }
}

/// PTR for the cluster's own addresses; every other reverse name falls
/// through to upstream (RKE2's `fallthrough in-addr.arpa ip6.arpa`).
fn reverse(zone: &Zone, qname: &Name, qtype: RecordType) -> Lookup {
    if qtype != RecordType::PTR {
        return Lookup::Outside;
    }
    let Some(ip) = arpa_ip(qname) else {
        return Lookup::Outside;
    };
    match zone.reverse(&ip) {
        Some(targets) => Lookup::Found {
            answers: targets
                .iter()
                .map(|t| record(qname, RData::PTR(PTR(t.clone()))))
                .collect(),
            additionals: Vec::new(),
            chase: None,
        },
        None => Lookup::Outside,
    }
}

/// The address a full reverse name (`4.3.2.1.in-addr.arpa.`, or 32
/// nibbles under `ip6.arpa.`) stands for.
pub fn arpa_ip(qname: &Name) -> Option<IpAddr> {
    let mut fqdn = qname.clone();
    fqdn.set_fqdn(true);
    let net = fqdn.parse_arpa_name().ok()?;
    if net.prefix_len() != net.max_prefix_len() {
        return None;
    }
    Some(net.addr())
}

fn inside(zone: &Zone, qname: &Name, rel: &str, qtype: RecordType, rotate: usize) -> Lookup {
    if rel.is_empty() {
        return apex(zone, qname, qtype);
    }
    if let Some(pod) = pod(zone, qname, rel, qtype) {
        return pod;
    }
    let Some(node) = zone.get(rel) else {
        return Lookup::NxDomain(soa(zone));
    };
    at_node(zone, qname, node, qtype, rotate, 0)
}

fn at_node(
    zone: &Zone,
    qname: &Name,
    node: &Node,
    qtype: RecordType,
    rotate: usize,
    depth: u8,
) -> Lookup {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    if let Some(target) = &node.cname {
        answers.push(record(qname, RData::CNAME(CNAME(target.clone()))));
        if qtype == RecordType::CNAME {
            return found(answers, additionals, None);
        }
        // A target inside the zone is answered here (what it holds of the
        // type, if anything); one outside is resolved upstream by the
        // caller.
        return match zone.place(target) {
            Place::Inside(rel) if depth < 8 => {
                let more = zone
                    .get(&rel)
                    .map(|n| at_node(zone, target, n, qtype, rotate, depth + 1));
                match more {
                    Some(Lookup::Found {
                        answers: more,
                        additionals,
                        chase,
                    }) => {
                        answers.extend(more);
                        found(answers, additionals, chase)
                    }
                    _ => found(answers, additionals, None),
                }
            }
            Place::Inside(_) | Place::InsideInvalid => found(answers, additionals, None),
            Place::Outside => found(answers, additionals, Some(target.clone())),
        };
    }
    let any = qtype == RecordType::ANY;
    if qtype == RecordType::A || any {
        answers.extend(rotated(&node.a, rotate).map(|ip| record(qname, RData::A(A(ip)))));
    }
    if qtype == RecordType::AAAA || any {
        answers.extend(rotated(&node.aaaa, rotate).map(|ip| record(qname, RData::AAAA(AAAA(ip)))));
    }
    if qtype == RecordType::SRV || any {
        for (port, weight, target) in &node.srv {
            answers.push(record(
                qname,
                RData::SRV(SRV::new(0, *weight, *port, target.clone())),
            ));
            if let Place::Inside(rel) = zone.place(target)
                && let Some(t) = zone.get(&rel)
            {
                for ip in &t.a {
                    let r = record(target, RData::A(A(*ip)));
                    if !additionals.contains(&r) {
                        additionals.push(r);
                    }
                }
                for ip in &t.aaaa {
                    let r = record(target, RData::AAAA(AAAA(*ip)));
                    if !additionals.contains(&r) {
                        additionals.push(r);
                    }
                }
            }
        }
    }
    if qtype == RecordType::TXT || any {
        for t in &node.txt {
            answers.push(record(qname, RData::TXT(TXT::new(vec![t.clone()]))));
        }
    }
    if answers.is_empty() {
        return Lookup::NoData(soa(zone));
    }
    found(answers, additionals, None)
}

fn found(answers: Vec<Record>, additionals: Vec<Record>, chase: Option<Name>) -> Lookup {
    Lookup::Found {
        answers,
        additionals,
        chase,
    }
}

/// The zone apex: SOA and NS (`ns.dns.<zone>`, whose address is the DNS
/// Service's ClusterIP).
fn apex(zone: &Zone, qname: &Name, qtype: RecordType) -> Lookup {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    let any = qtype == RecordType::ANY;
    if qtype == RecordType::SOA || any {
        let mut s = soa(zone);
        s.name = qname.clone();
        answers.push(s);
    }
    if qtype == RecordType::NS || any {
        let ns = ns_name(zone);
        answers.push(record(qname, RData::NS(NS(ns.clone()))));
        if let Some(n) = zone.get("ns.dns") {
            additionals.extend(n.a.iter().map(|ip| record(&ns, RData::A(A(*ip)))));
            additionals.extend(n.aaaa.iter().map(|ip| record(&ns, RData::AAAA(AAAA(*ip)))));
        }
    }
    if answers.is_empty() {
        return Lookup::NoData(soa(zone));
    }
    found(answers, additionals, None)
}

/// `<a-b-c-d>.<ns>.pod.<zone>`: any well-formed address in any namespace
/// (`pods insecure`, RKE2's setting: no check that such a pod exists).
/// `None` when `rel` is not under `pod`.
fn pod(zone: &Zone, qname: &Name, rel: &str, qtype: RecordType) -> Option<Lookup> {
    let labels: Vec<&str> = rel.split('.').collect();
    if labels.last() != Some(&"pod") {
        return None;
    }
    Some(match labels.len() {
        1 | 2 => Lookup::NoData(soa(zone)),
        3 => match undashed(labels[0]) {
            None => Lookup::NxDomain(soa(zone)),
            Some(ip) => {
                let rdata = match ip {
                    IpAddr::V4(v4) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                        RData::A(A(v4))
                    }
                    IpAddr::V6(v6) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                        RData::AAAA(AAAA(v6))
                    }
                    _ => return Some(Lookup::NoData(soa(zone))),
                };
                found(vec![record(qname, rdata)], Vec::new(), None)
            }
        },
        _ => Lookup::NxDomain(soa(zone)),
    })
}

fn rotated<T: Copy>(v: &[T], by: usize) -> impl Iterator<Item = T> + '_ {
    let n = v.len().max(1);
    let k = by % n;
    v[k..].iter().chain(v[..k].iter()).copied()
}

fn record(name: &Name, rdata: RData) -> Record {
    Record::from_rdata(name.clone(), TTL, rdata)
}

fn ns_name(zone: &Zone) -> Name {
    zone.absolute("ns.dns")
        .unwrap_or_else(|| zone.origin().clone())
}

/// The zone's SOA, as CoreDNS's: `ns.dns.<zone>`, `hostmaster.<zone>`,
/// the snapshot's serial, 7200 1800 86400, and the TTL as minimum.
pub fn soa(zone: &Zone) -> Record {
    let mbox = zone
        .absolute("hostmaster")
        .unwrap_or_else(|| zone.origin().clone());
    Record::from_rdata(
        zone.origin().clone(),
        TTL,
        RData::SOA(SOA::new(
            ns_name(zone),
            mbox,
            zone.serial,
            7200,
            1800,
            86400,
            TTL,
        )),
    )
}
