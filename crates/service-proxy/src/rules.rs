//! The rule generator: service ports and node facts → the desired
//! contents of the proxy's table ([`Ruleset`]), and the nft scripts that
//! write it whole ([`Ruleset::render_full`]) or change one ruleset into
//! another ([`Ruleset::render_diff`]).
//!
//! The layout follows kube-proxy's nftables mode, so the cost per packet
//! and per sync does not grow with the number of Services:
//!
//! * base chains hooked at prerouting/output (dnat) and postrouting
//!   (snat) jump to `services`, which looks the packet up in two verdict
//!   maps: `service-ips` (`ipv4_addr . inet_proto . inet_service`: the
//!   ClusterIPs, external and load-balancer IPs) and, for destinations in
//!   `nodeport-ips` (this node's addresses), `service-nodeports`
//!   (`inet_proto . inet_service`);
//! * a chain per service port (`service-…`, all endpoints; `local-…`,
//!   this node's, for the `Local` policies; `external-…`, the entry for
//!   traffic from outside) picks an endpoint with `numgen random mod N
//!   vmap`, after the ClientIP affinity sets;
//! * a chain per endpoint (`endpoint-…`) marks hairpin traffic for
//!   masquerade, records affinity and DNATs;
//! * filter chains reject new connections to service ports without
//!   endpoints (`no-endpoint-services`, `no-endpoint-nodeports`), drop
//!   external traffic of `externalTrafficPolicy: Local` ports where this
//!   node has no endpoint, and reject ports a ClusterIP does not serve;
//! * `masquerading` (postrouting) masquerades what carries the mark bit:
//!   ClusterIP traffic from outside the cluster CIDR, external traffic of
//!   `Cluster` policy ports, and hairpin traffic.
//!
//! Names of per-port objects start with a hash of the full port (or
//! endpoint) identity, followed by a readable part, so they are unique
//! and stable across syncs: a sync after one endpoint change rewrites one
//! service chain and adds or deletes one endpoint chain.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::TABLE;
use crate::model::{Endpoint, NodeFacts, ServicePort};

/// The mark bit that asks `masquerading` to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: &str = "0x00004000";

/// A set or map declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecl {
    /// `set` or `map`.
    pub kind: &'static str,
    /// The body between braces, e.g. `type ipv4_addr ;`.
    pub body: String,
}

/// A chain: its hook declaration (base chains) and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// `type nat hook prerouting priority dstnat ; policy accept ;` for a
    /// base chain.
    pub hook: Option<String>,
    /// The rules, in order.
    pub rules: Vec<String>,
}

/// The desired contents of the proxy's table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Sets and maps by name.
    pub sets: BTreeMap<String, SetDecl>,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Elements of each set or map: key → value (`""` in a set).
    pub elements: BTreeMap<String, BTreeMap<String, String>>,
}

/// Names of the table's fixed sets and maps.
pub mod names {
    /// Set of the ClusterIPs in use.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// Set of the addresses NodePorts answer on.
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// Verdict map of ClusterIP, external and load-balancer IP ports.
    pub const SERVICE_IPS: &str = "service-ips";
    /// Verdict map of NodePorts.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// Verdict map of service IP ports without endpoints (reject or drop).
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// Verdict map of NodePorts without endpoints (reject or drop).
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
}
use names::*;

const ADDR_PROTO_PORT: &str = "type ipv4_addr . inet_proto . inet_service : verdict ;";
const PROTO_PORT: &str = "type inet_proto . inet_service : verdict ;";

/// A name fragment safe in an nft identifier: Kubernetes names already
/// are; anything else becomes `_`, and the length is bounded (nft names
/// hold at most 255 bytes; the hash keeps truncated names unique).
fn readable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}

fn hash8(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().fold(String::new(), |mut o, b| {
        let _ = write!(o, "{b:02X}");
        o
    })
}

/// The identity of a service port in object names.
pub fn port_id(sp: &ServicePort) -> String {
    let full = format!(
        "{}/{}/{}/{}",
        sp.namespace,
        sp.service,
        sp.protocol.nft(),
        sp.port_name
    );
    format!("{}-{}", hash8(&full), readable(&full))
}

/// The identity of an endpoint of a service port in object names.
pub fn endpoint_id(sp: &ServicePort, ep: &Endpoint) -> String {
    let full = format!(
        "{}/{}/{}/{}__{}/{}",
        sp.namespace,
        sp.service,
        sp.protocol.nft(),
        sp.port_name,
        ep.ip,
        ep.port
    );
    format!("{}-{}", hash8(&full), readable(&full))
}

fn base(node: &NodeFacts) -> Ruleset {
    let mut r = Ruleset::default();
    let set = |body: &str| SetDecl {
        kind: "set",
        body: body.to_string(),
    };
    let map = |body: &str| SetDecl {
        kind: "map",
        body: body.to_string(),
    };
    r.sets.insert(CLUSTER_IPS.into(), set("type ipv4_addr ;"));
    r.sets.insert(NODEPORT_IPS.into(), set("type ipv4_addr ;"));
    r.sets.insert(SERVICE_IPS.into(), map(ADDR_PROTO_PORT));
    r.sets.insert(SERVICE_NODEPORTS.into(), map(PROTO_PORT));
    r.sets
        .insert(NO_ENDPOINT_SERVICES.into(), map(ADDR_PROTO_PORT));
    r.sets.insert(NO_ENDPOINT_NODEPORTS.into(), map(PROTO_PORT));
    for name in r.sets.keys() {
        r.elements.insert(name.clone(), BTreeMap::new());
    }
    let mut chain = |name: &str, hook: Option<&str>, rules: &[String]| {
        r.chains.insert(
            name.to_string(),
            Chain {
                hook: hook.map(str::to_string),
                rules: rules.to_vec(),
            },
        );
    };
    let s = |x: &str| x.to_string();
    chain(
        "nat-prerouting",
        Some("type nat hook prerouting priority dstnat ; policy accept ;"),
        &[s("jump services")],
    );
    chain(
        "nat-output",
        Some("type nat hook output priority -100 ; policy accept ;"),
        &[s("jump services")],
    );
    chain(
        "nat-postrouting",
        Some("type nat hook postrouting priority srcnat ; policy accept ;"),
        &[s("jump masquerading")],
    );
    chain(
        "filter-input",
        Some("type filter hook input priority 0 ; policy accept ;"),
        &[
            s("ct state new jump nodeport-endpoints-check"),
            s("ct state new jump service-endpoints-check"),
        ],
    );
    chain(
        "filter-forward",
        Some("type filter hook forward priority 0 ; policy accept ;"),
        &[
            s("ct state new jump service-endpoints-check"),
            s("ct state new jump cluster-ips-check"),
        ],
    );
    chain(
        "filter-output",
        Some("type filter hook output priority 0 ; policy accept ;"),
        &[
            s("ct state new jump service-endpoints-check"),
            s("ct state new jump cluster-ips-check"),
        ],
    );
    let mut services = Vec::new();
    if let Some(cidr) = node.cluster_cidr {
        services.push(format!(
            "ip daddr @{CLUSTER_IPS} ip saddr != {cidr} jump mark-for-masquerade"
        ));
    }
    services.push(format!(
        "ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"
    ));
    services.push(format!(
        "ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"
    ));
    chain("services", None, &services);
    chain(
        "mark-for-masquerade",
        None,
        &[format!("meta mark set meta mark | {MASQUERADE_MARK}")],
    );
    chain(
        "masquerading",
        None,
        &[
            format!("meta mark & {MASQUERADE_MARK} == 0 return"),
            format!("meta mark set meta mark ^ {MASQUERADE_MARK}"),
            s("masquerade fully-random"),
        ],
    );
    chain(
        "service-endpoints-check",
        None,
        &[format!(
            "ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
        )],
    );
    chain(
        "nodeport-endpoints-check",
        None,
        &[format!(
            "ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
        )],
    );
    let mut check = vec![format!("ip daddr @{CLUSTER_IPS} reject")];
    if let Some(cidr) = node.service_cidr {
        check.push(format!("ip daddr {cidr} drop"));
    }
    chain("cluster-ips-check", None, &check);
    chain("reject-chain", None, &[s("reject")]);
    let mut addrs = node.addresses.clone();
    addrs.sort();
    addrs.dedup();
    for a in addrs {
        r.elements
            .get_mut(NODEPORT_IPS)
            .expect("base set")
            .insert(a.to_string(), String::new());
    }
    r
}

/// The rules that pick one of `eps`: affinity first (a client seen within
/// the timeout goes back to its endpoint), then a random one.
fn pick(sp: &ServicePort, eps: &[&Endpoint]) -> Vec<String> {
    let mut rules = Vec::new();
    if sp.affinity_timeout.is_some() {
        for ep in eps {
            let id = endpoint_id(sp, ep);
            rules.push(format!("ip saddr @affinity-{id} goto endpoint-{id}"));
        }
    }
    let mut vmap = String::new();
    for (i, ep) in eps.iter().enumerate() {
        if i > 0 {
            vmap.push_str(" , ");
        }
        let _ = write!(vmap, "{i} : goto endpoint-{}", endpoint_id(sp, ep));
    }
    rules.push(format!("numgen random mod {} vmap {{ {vmap} }}", eps.len()));
    rules
}

/// The desired table for `ports` on the node `node`.
pub fn generate(node: &NodeFacts, ports: &[ServicePort]) -> Ruleset {
    let mut r = base(node);
    for sp in ports {
        add_port(&mut r, node, sp);
    }
    r
}

fn add_port(r: &mut Ruleset, node: &NodeFacts, sp: &ServicePort) {
    let id = port_id(sp);
    let proto = sp.protocol.nft();
    let key = |ip: &std::net::Ipv4Addr, port: u16| format!("{ip} . {proto} . {port}");
    // Keys already taken by another port (bad input: two Services
    // claiming one address and port) keep their first owner.
    let free = |r: &Ruleset, map: &str, k: &str| !r.elements[map].contains_key(k);
    let put = |r: &mut Ruleset, map: &str, k: String, v: String| {
        r.elements
            .get_mut(map)
            .expect("base map")
            .entry(k)
            .or_insert(v);
    };
    let cluster_key = key(&sp.cluster_ip, sp.port);
    if !free(r, SERVICE_IPS, &cluster_key) || !free(r, NO_ENDPOINT_SERVICES, &cluster_key) {
        return;
    }
    put(r, CLUSTER_IPS, sp.cluster_ip.to_string(), String::new());

    let all: Vec<&Endpoint> = sp.endpoints.iter().collect();
    let local: Vec<&Endpoint> = sp.endpoints.iter().filter(|e| e.local).collect();
    let service_chain = format!("service-{id}");
    let local_chain = format!("local-{id}");
    let external_chain = format!("external-{id}");
    let no_endpoints = if all.is_empty() {
        "goto reject-chain"
    } else {
        "drop"
    };

    // Endpoint chains (shared by the cluster and local chains).
    for ep in &all {
        let eid = endpoint_id(sp, ep);
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(t) = sp.affinity_timeout {
            r.sets.insert(
                format!("affinity-{eid}"),
                SetDecl {
                    kind: "set",
                    body: format!("type ipv4_addr ; flags dynamic,timeout ; timeout {t}s ;"),
                },
            );
            rules.push(format!("update @affinity-{eid} {{ ip saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        r.chains
            .insert(format!("endpoint-{eid}"), Chain { hook: None, rules });
    }
    if !all.is_empty() {
        r.chains.insert(
            service_chain.clone(),
            Chain {
                hook: None,
                rules: pick(sp, &all),
            },
        );
    }
    let uses_local = sp.internal_local || (sp.external_local && sp.has_external());
    if uses_local && !local.is_empty() {
        r.chains.insert(
            local_chain.clone(),
            Chain {
                hook: None,
                rules: pick(sp, &local),
            },
        );
    }

    // Traffic from inside: the ClusterIP.
    let internal = if sp.internal_local {
        (!local.is_empty()).then(|| local_chain.clone())
    } else {
        (!all.is_empty()).then(|| service_chain.clone())
    };
    match internal {
        Some(chain) => put(r, SERVICE_IPS, cluster_key, format!("goto {chain}")),
        None => put(r, NO_ENDPOINT_SERVICES, cluster_key, no_endpoints.into()),
    }

    // Traffic from outside: NodePort, external and load-balancer IPs.
    if !sp.has_external() {
        return;
    }
    let external_ok = if sp.external_local {
        !local.is_empty()
    } else {
        !all.is_empty()
    };
    if !all.is_empty() {
        let mut rules = Vec::new();
        if sp.external_local {
            // Pods and the node itself are not "external": they get the
            // cluster-wide endpoints, the node's traffic masqueraded.
            if let Some(cidr) = node.cluster_cidr {
                rules.push(format!("ip saddr {cidr} goto {service_chain}"));
            }
            rules.push("fib saddr type local jump mark-for-masquerade".to_string());
            rules.push(format!("fib saddr type local goto {service_chain}"));
            if !local.is_empty() {
                rules.push(format!("goto {local_chain}"));
            }
        } else {
            rules.push("jump mark-for-masquerade".to_string());
            rules.push(format!("goto {service_chain}"));
        }
        r.chains
            .insert(external_chain.clone(), Chain { hook: None, rules });
    }
    let verdict_none = if all.is_empty() {
        "goto reject-chain"
    } else {
        "drop"
    };
    for ip in &sp.external_ips {
        let k = key(ip, sp.port);
        if !free(r, SERVICE_IPS, &k) || !free(r, NO_ENDPOINT_SERVICES, &k) {
            continue;
        }
        if !all.is_empty() {
            put(r, SERVICE_IPS, k.clone(), format!("goto {external_chain}"));
        }
        if !external_ok {
            put(r, NO_ENDPOINT_SERVICES, k, verdict_none.into());
        }
    }
    if let Some(np) = sp.node_port {
        let k = format!("{proto} . {np}");
        if free(r, SERVICE_NODEPORTS, &k) && free(r, NO_ENDPOINT_NODEPORTS, &k) {
            if !all.is_empty() {
                put(
                    r,
                    SERVICE_NODEPORTS,
                    k.clone(),
                    format!("goto {external_chain}"),
                );
            }
            if !external_ok {
                put(r, NO_ENDPOINT_NODEPORTS, k, verdict_none.into());
            }
        }
    }
}

fn element(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} : {value}")
    }
}

/// Elements per `add element` command: keeps lines short without one
/// command per element.
const ELEMENTS_PER_COMMAND: usize = 512;

impl Ruleset {
    /// The script that replaces the whole table with this ruleset in one
    /// transaction (`nft -f -`).
    pub fn render_full(&self) -> String {
        let t = format!("ip {TABLE}");
        let mut o = String::with_capacity(256 * (self.chains.len() + 16));
        // `add` then `delete` works whether or not the table exists.
        let _ = writeln!(o, "add table {t}");
        let _ = writeln!(o, "delete table {t}");
        let _ = writeln!(o, "add table {t} {{ comment \"rke2 service proxy\" ; }}");
        for (name, s) in &self.sets {
            let _ = writeln!(o, "add {} {t} {name} {{ {} }}", s.kind, s.body);
        }
        // Every chain exists before any rule jumps to one.
        for (name, c) in &self.chains {
            match &c.hook {
                Some(h) => {
                    let _ = writeln!(o, "add chain {t} {name} {{ {h} }}");
                }
                None => {
                    let _ = writeln!(o, "add chain {t} {name}");
                }
            }
        }
        for (name, c) in &self.chains {
            for rule in &c.rules {
                let _ = writeln!(o, "add rule {t} {name} {rule}");
            }
        }
        for (set, elems) in &self.elements {
            let items: Vec<String> = elems.iter().map(|(k, v)| element(k, v)).collect();
            for chunk in items.chunks(ELEMENTS_PER_COMMAND) {
                let _ = writeln!(o, "add element {t} {set} {{ {} }}", chunk.join(" , "));
            }
        }
        o
    }

    /// The script that turns `old` (what the kernel holds) into `self` in
    /// one transaction, touching only what changed; `None` when a
    /// declaration changed (a base chain's hook, a set's type or timeout)
    /// and only a full sync can apply it. An empty string means nothing
    /// to do.
    pub fn render_diff(&self, old: &Ruleset) -> Option<String> {
        let t = format!("ip {TABLE}");
        for (name, s) in &self.sets {
            if old.sets.get(name).is_some_and(|o| o != s) {
                return None;
            }
        }
        for (name, c) in &self.chains {
            if old.chains.get(name).is_some_and(|o| o.hook != c.hook) {
                return None;
            }
        }
        let mut o = String::new();
        // 1. New sets and chains, so rules and elements may refer to them.
        for (name, s) in &self.sets {
            if !old.sets.contains_key(name) {
                let _ = writeln!(o, "add {} {t} {name} {{ {} }}", s.kind, s.body);
            }
        }
        for (name, c) in &self.chains {
            if !old.chains.contains_key(name) {
                match &c.hook {
                    Some(h) => {
                        let _ = writeln!(o, "add chain {t} {name} {{ {h} }}");
                    }
                    None => {
                        let _ = writeln!(o, "add chain {t} {name}");
                    }
                }
            }
        }
        // 2. Rules of new and changed chains.
        for (name, c) in &self.chains {
            match old.chains.get(name) {
                Some(prev) if prev.rules == c.rules => continue,
                Some(_) => {
                    let _ = writeln!(o, "flush chain {t} {name}");
                }
                None => {}
            }
            for rule in &c.rules {
                let _ = writeln!(o, "add rule {t} {name} {rule}");
            }
        }
        // 3. Elements: stale and changed ones out, new and changed in.
        let empty = BTreeMap::new();
        for (set, elems) in &self.elements {
            let prev = old.elements.get(set).unwrap_or(&empty);
            let gone: Vec<&String> = prev
                .iter()
                .filter(|(k, v)| elems.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            for chunk in gone.chunks(ELEMENTS_PER_COMMAND) {
                let keys: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
                let _ = writeln!(o, "delete element {t} {set} {{ {} }}", keys.join(" , "));
            }
            let new: Vec<String> = elems
                .iter()
                .filter(|(k, v)| prev.get(*k) != Some(*v))
                .map(|(k, v)| element(k, v))
                .collect();
            for chunk in new.chunks(ELEMENTS_PER_COMMAND) {
                let _ = writeln!(o, "add element {t} {set} {{ {} }}", chunk.join(" , "));
            }
        }
        // 4. Chains no longer wanted: emptied first (they may jump to
        // each other), then deleted; then the sets their rules used.
        let stale: Vec<&String> = old
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for name in &stale {
            let _ = writeln!(o, "flush chain {t} {name}");
        }
        for name in &stale {
            let _ = writeln!(o, "delete chain {t} {name}");
        }
        for (name, s) in &old.sets {
            if !self.sets.contains_key(name) {
                let _ = writeln!(o, "delete {} {t} {name}", s.kind);
            }
        }
        Some(o)
    }
}

#[cfg(test)]
mod tests;
