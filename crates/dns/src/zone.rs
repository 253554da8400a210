//! The record store: one immutable snapshot of every name the cluster zone
//! holds, built from Services and EndpointSlices as the Kubernetes
//! DNS-based service discovery specification (schema 1.1.0, as CoreDNS's
//! `kubernetes` plugin) lays them out. A snapshot is rebuilt as a whole
//! when the watched objects change and swapped in; queries only read.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service whose ClusterIP is the zone's name server (`ns.dns.<zone>`),
/// RKE2's name for the DNS Service.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "rke2-coredns-rke2-coredns");

/// The schema version in `dns-version.<zone>` TXT (CoreDNS's).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// What one name of the zone holds. A node with nothing in it is an empty
/// non-terminal (an ancestor of real names, such as `<ns>.svc.<zone>`):
/// it exists, so other types get NODATA rather than NXDOMAIN.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Node {
    /// A records.
    pub a: Vec<Ipv4Addr>,
    /// AAAA records.
    pub aaaa: Vec<Ipv6Addr>,
    /// SRV records: (port, weight, target).
    pub srv: Vec<(u16, u16, Name)>,
    /// The CNAME of an ExternalName Service.
    pub cname: Option<Name>,
    /// TXT strings (only `dns-version`).
    pub txt: Vec<String>,
}

/// An immutable snapshot of the cluster zone.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The cluster domain's labels, lowercase (`["cluster", "local"]`).
    labels: Vec<Vec<u8>>,
    /// The cluster domain as a name (`cluster.local.`).
    origin: Name,
    /// Every name of the zone, keyed by its lowercase labels below the
    /// zone joined with dots (`web.default.svc`); the apex is `""`.
    names: HashMap<Box<str>, Node>,
    /// PTR targets by address (ClusterIPs and headless endpoints).
    reverse: HashMap<IpAddr, Vec<Name>>,
    /// The SOA serial: when this snapshot was built (Unix seconds).
    pub serial: u32,
}

/// Where a name falls relative to the cluster zone.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    /// Inside the zone: the lowercase relative key (`web.default.svc`, or
    /// `""` for the apex).
    Inside(String),
    /// Inside the zone, but with a label no Kubernetes object can have
    /// (a dot or a byte outside printable ASCII inside a label): it
    /// cannot exist.
    InsideInvalid,
    /// Outside the zone.
    Outside,
}

impl Zone {
    /// An empty zone for `domain` (the apex, `dns-version` and nothing
    /// else). Fails when `domain` is not a valid DNS name.
    pub fn empty(domain: &str) -> Result<Zone, hickory_proto::ProtoError> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.'))?.to_lowercase();
        origin.set_fqdn(true);
        let labels = origin.iter().map(|l| l.to_ascii_lowercase()).collect();
        let mut z = Zone {
            labels,
            origin,
            names: HashMap::new(),
            reverse: HashMap::new(),
            serial: 0,
        };
        z.node_mut("");
        z.node_mut("dns-version")
            .txt
            .push(SCHEMA_VERSION.to_string());
        Ok(z)
    }

    /// The zone's origin (`cluster.local.`).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The name `rel` below the origin (`rel` is a dotted relative key).
    pub fn absolute(&self, rel: &str) -> Option<Name> {
        if rel.is_empty() {
            return Some(self.origin.clone());
        }
        Name::from_ascii(rel).ok()?.append_domain(&self.origin).ok()
    }

    /// Where `name` falls: compares the trailing labels with the zone's,
    /// case-insensitively.
    pub fn place(&self, name: &Name) -> Place {
        let n = name.num_labels() as usize;
        let z = self.labels.len();
        if n < z {
            return Place::Outside;
        }
        let labels: Vec<&[u8]> = name.iter().collect();
        for (i, zl) in self.labels.iter().enumerate() {
            if !labels[n - z + i].eq_ignore_ascii_case(zl) {
                return Place::Outside;
            }
        }
        let mut key = String::with_capacity(name.len());
        for (i, l) in labels[..n - z].iter().enumerate() {
            if l.iter().any(|b| *b == b'.' || !b.is_ascii_graphic()) {
                return Place::InsideInvalid;
            }
            if i > 0 {
                key.push('.');
            }
            for b in l.iter() {
                key.push(b.to_ascii_lowercase() as char);
            }
        }
        Place::Inside(key)
    }

    /// The node at relative key `rel`, if the name exists.
    pub fn get(&self, rel: &str) -> Option<&Node> {
        self.names.get(rel)
    }

    /// The PTR targets of `ip`.
    pub fn reverse(&self, ip: &IpAddr) -> Option<&[Name]> {
        self.reverse.get(ip).map(Vec::as_slice)
    }

    /// How many names the zone holds (for logs).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the zone holds only the apex and `dns-version`.
    pub fn is_empty(&self) -> bool {
        self.names.len() <= 2
    }

    /// The node at `rel`, created with its ancestors (empty non-terminals)
    /// when missing.
    fn node_mut(&mut self, rel: &str) -> &mut Node {
        if !self.names.contains_key(rel) {
            let mut parent = rel;
            while let Some((_, up)) = parent.split_once('.') {
                parent = up;
                if self.names.contains_key(parent) {
                    break;
                }
                self.names.insert(parent.into(), Node::default());
            }
            if !rel.is_empty() {
                self.names.entry("".into()).or_default();
            }
        }
        self.names.entry(rel.into()).or_default()
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &Name) {
        let v = self.reverse.entry(ip).or_default();
        if !v.contains(target) {
            v.push(target.clone());
        }
    }

    fn add_ip(&mut self, rel: &str, ip: IpAddr) {
        let node = self.node_mut(rel);
        match ip {
            IpAddr::V4(v4) if !node.a.contains(&v4) => node.a.push(v4),
            IpAddr::V6(v6) if !node.aaaa.contains(&v6) => node.aaaa.push(v6),
            _ => {}
        }
    }

    /// Builds the snapshot of `domain` from the current Services and
    /// EndpointSlices. Objects that cannot make valid names (which the
    /// apiserver's validation should have refused) are skipped.
    pub fn build(
        domain: &str,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        serial: u32,
    ) -> Result<Zone, hickory_proto::ProtoError> {
        let mut zone = Zone::empty(domain)?;
        zone.serial = serial;
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            let ns = s.metadata.namespace.as_deref().unwrap_or_default();
            let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
        for svc in services {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let slices = by_service.get(&(ns, name)).map(Vec::as_slice);
            zone.add_service(ns, name, svc, slices.unwrap_or_default());
        }
        zone.finish_srv_weights();
        Ok(zone)
    }

    fn add_service(&mut self, ns: &str, name: &str, svc: &Service, slices: &[&EndpointSlice]) {
        if !is_label(ns) || !is_label(name) {
            return;
        }
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let base = format!(
            "{}.{}.svc",
            name.to_ascii_lowercase(),
            ns.to_ascii_lowercase()
        );
        let Some(base_name) = self.absolute(&base) else {
            return;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(target) = spec
                .external_name
                .as_deref()
                .and_then(|t| Name::from_ascii(t.trim_end_matches('.')).ok())
            else {
                return;
            };
            let mut target = target;
            target.set_fqdn(true);
            self.node_mut(&base).cname = Some(target);
            return;
        }
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let headless = spec.cluster_ip.as_deref() == Some("None") || ips.is_empty();
        if !headless {
            for ip in &ips {
                self.add_ip(&base, *ip);
                self.add_ptr(*ip, &base_name);
            }
            for p in spec.ports.as_deref().unwrap_or_default() {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                self.add_srv(&base, p.name.as_deref(), proto, p.port as u16, &base_name);
            }
            if (ns, name) == DNS_SERVICE {
                for ip in ips {
                    self.add_ip("ns.dns", ip);
                }
            }
            return;
        }
        // Headless: the ready endpoints, each under its own hostname too.
        for slice in slices {
            let family_ok = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
            if !family_ok {
                continue;
            }
            let ports = slice.ports.as_deref().unwrap_or_default();
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    let host = match ep.hostname.as_deref() {
                        Some(h) if is_label(h) => h.to_ascii_lowercase(),
                        _ => dashed(&ip),
                    };
                    let host_rel = format!("{host}.{base}");
                    let Some(host_name) = self.absolute(&host_rel) else {
                        continue;
                    };
                    self.add_ip(&base, ip);
                    self.add_ip(&host_rel, ip);
                    self.add_ptr(ip, &host_name);
                    for p in ports {
                        let Some(port) = p.port else { continue };
                        let proto = p.protocol.as_deref().unwrap_or("TCP");
                        self.add_srv(&base, p.name.as_deref(), proto, port as u16, &host_name);
                    }
                }
            }
        }
    }

    /// An SRV record for one port: at `_<port>._<proto>.<base>` for a named
    /// port (the specification's record), and at `<base>` itself for every
    /// port (CoreDNS answers an SRV query for the Service name with all of
    /// them).
    fn add_srv(
        &mut self,
        base: &str,
        port_name: Option<&str>,
        proto: &str,
        port: u16,
        target: &Name,
    ) {
        let rec = (port, 0, target.clone());
        if let Some(pn) = port_name.filter(|n| !n.is_empty() && is_label(n)) {
            let rel = format!(
                "_{}._{}.{base}",
                pn.to_ascii_lowercase(),
                proto.to_ascii_lowercase()
            );
            let node = self.node_mut(&rel);
            if !node.srv.contains(&rec) {
                node.srv.push(rec.clone());
            }
        }
        let node = self.node_mut(base);
        if !node.srv.contains(&rec) {
            node.srv.push(rec);
        }
    }

    /// Sorts every record set (answers do not depend on the order objects
    /// arrived in) and gives SRV records of one name equal weights summing
    /// to about 100, as CoreDNS does.
    fn finish_srv_weights(&mut self) {
        for node in self.names.values_mut() {
            node.a.sort();
            node.aaaa.sort();
            node.srv.sort_by(|x, y| (x.0, &x.2).cmp(&(y.0, &y.2)));
            let n = node.srv.len().max(1) as u16;
            let w = (100 / n).max(1);
            for r in &mut node.srv {
                r.1 = w;
            }
        }
        for v in self.reverse.values_mut() {
            v.sort();
        }
    }

    /// Every name of the zone as an absolute name (for tests and benches).
    pub fn all_names(&self) -> BTreeSet<String> {
        self.names
            .keys()
            .filter_map(|k| self.absolute(k))
            .map(|n| n.to_ascii())
            .collect()
    }
}

/// The label CoreDNS gives an endpoint without a hostname: its address
/// with dots (or colons) as dashes.
pub fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a `<a-b-c-d>.<ns>.pod.<zone>` label names, if any.
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains('.') || label.contains(':') {
        return None;
    }
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// Whether `s` can be one DNS label of ours (RFC 1123 style, 1–63 bytes).
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
