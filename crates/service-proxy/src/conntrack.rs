//! Stale UDP flows. A UDP "connection" lives in conntrack for as long as
//! packets keep coming, so a client that keeps sending to a Service whose
//! endpoint went away would keep reaching the dead address: when an
//! endpoint of a UDP port goes, its flows are deleted with Debian's
//! `conntrack`, as kube-proxy does. Flows of a UDP port that had no
//! endpoints are deleted when it gets some (they were answered by the
//! reject rule and would otherwise stick).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{Protocol, ServicePort};

/// One `conntrack -D` invocation's arguments.
pub type Deletion = Vec<String>;

type PortKey<'a> = (&'a str, &'a str, &'a str);

fn key(sp: &ServicePort) -> PortKey<'_> {
    (&sp.namespace, &sp.service, &sp.port_name)
}

/// The `conntrack -D` argument lists that remove the flows made stale by
/// going from `old` to `new` (UDP ports only).
pub fn stale_flows(old: &[ServicePort], new: &[ServicePort]) -> Vec<Deletion> {
    let udp = |ports: &[ServicePort]| -> BTreeMap<(String, String, String), ServicePort> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| {
                let (a, b, c) = key(p);
                ((a.to_string(), b.to_string(), c.to_string()), p.clone())
            })
            .collect()
    };
    let (old, new) = (udp(old), udp(new));
    let mut out: BTreeSet<Deletion> = BTreeSet::new();
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (k, o) in &old {
        let kept: BTreeSet<Ipv4Addr> = new
            .get(k)
            .map(|n| n.endpoints.iter().map(|e| e.ip).collect())
            .unwrap_or_default();
        for ep in &o.endpoints {
            if kept.contains(&ep.ip) {
                continue;
            }
            let ep = ep.ip.to_string();
            for ip in std::iter::once(&o.cluster_ip).chain(&o.external_ips) {
                out.insert(args(&[
                    "-D",
                    "-p",
                    "udp",
                    "--orig-dst",
                    &ip.to_string(),
                    "--dst-nat",
                    &ep,
                ]));
            }
            if let Some(np) = o.node_port {
                out.insert(args(&[
                    "-D",
                    "-p",
                    "udp",
                    "--orig-port-dst",
                    &np.to_string(),
                    "--dst-nat",
                    &ep,
                ]));
            }
        }
    }
    for (k, n) in &new {
        let had = old.get(k).is_some_and(|o| !o.endpoints.is_empty());
        if had || n.endpoints.is_empty() {
            continue;
        }
        for ip in std::iter::once(&n.cluster_ip).chain(&n.external_ips) {
            out.insert(args(&[
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                &ip.to_string(),
                "--orig-port-dst",
                &n.port.to_string(),
            ]));
        }
        if let Some(np) = n.node_port {
            out.insert(args(&[
                "-D",
                "-p",
                "udp",
                "--orig-port-dst",
                &np.to_string(),
            ]));
        }
    }
    out.into_iter().collect()
}

/// Runs `conntrack` for each deletion; returns the failures (a deletion
/// that matched nothing is not one).
pub fn delete(deletions: &[Deletion]) -> Vec<String> {
    let mut errors = Vec::new();
    for d in deletions {
        match std::process::Command::new("conntrack")
            .args(d)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // conntrack exits 1 when nothing matched ("0 flow entries
                // have been deleted"): nothing was stale.
                if !out.status.success() && !stderr.contains("flow entries have been deleted") {
                    errors.push(format!("conntrack {}: {}", d.join(" "), stderr.trim()));
                }
            }
            Err(e) => errors.push(format!(
                "conntrack {}: {e} (is Debian's conntrack package installed?)",
                d.join(" ")
            )),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    fn port(proto: Protocol, eps: &[[u8; 4]]) -> ServicePort {
        ServicePort {
            namespace: "ns".into(),
            service: "dns".into(),
            port_name: "dns".into(),
            protocol: proto,
            cluster_ip: Ipv4Addr::new(10, 43, 0, 10),
            port: 53,
            node_port: Some(30053),
            external_ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            endpoints: eps
                .iter()
                .map(|a| Endpoint {
                    ip: Ipv4Addr::from(*a),
                    port: 53,
                    local: false,
                })
                .collect(),
        }
    }

    #[test]
    fn a_udp_endpoint_that_goes_has_its_flows_deleted() {
        let old = [port(Protocol::Udp, &[[10, 42, 0, 5], [10, 42, 1, 5]])];
        let new = [port(Protocol::Udp, &[[10, 42, 1, 5]])];
        let d: Vec<String> = stale_flows(&old, &new)
            .iter()
            .map(|d| d.join(" "))
            .collect();
        assert_eq!(
            d,
            vec![
                "-D -p udp --orig-dst 10.43.0.10 --dst-nat 10.42.0.5",
                "-D -p udp --orig-dst 192.0.2.1 --dst-nat 10.42.0.5",
                "-D -p udp --orig-port-dst 30053 --dst-nat 10.42.0.5",
            ]
        );
        // A whole Service going takes all its endpoints' flows.
        assert_eq!(stale_flows(&old, &[]).len(), 6);
    }

    #[test]
    fn tcp_ports_and_unchanged_endpoints_leave_flows_alone() {
        let old = [port(Protocol::Tcp, &[[10, 42, 0, 5]])];
        assert!(stale_flows(&old, &[]).is_empty());
        let same = [port(Protocol::Udp, &[[10, 42, 0, 5]])];
        assert!(stale_flows(&same, &same).is_empty());
    }

    #[test]
    fn a_udp_port_getting_its_first_endpoint_clears_its_flows() {
        let old = [port(Protocol::Udp, &[])];
        let new = [port(Protocol::Udp, &[[10, 42, 0, 5]])];
        let d: Vec<String> = stale_flows(&old, &new)
            .iter()
            .map(|d| d.join(" "))
            .collect();
        assert_eq!(
            d,
            vec![
                "-D -p udp --orig-dst 10.43.0.10 --orig-port-dst 53",
                "-D -p udp --orig-dst 192.0.2.1 --orig-port-dst 53",
                "-D -p udp --orig-port-dst 30053",
            ]
        );
    }
}
