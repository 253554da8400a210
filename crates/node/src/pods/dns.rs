//! A pod's resolv.conf, as kubelet writes it for each `dnsPolicy`
//! (kubelet's `pkg/kubelet/network/dns`), and which host resolv.conf the
//! node uses, as RKE2 chooses it (`resolv-conf`, else the first of
//! `/etc/resolv.conf` and `/run/systemd/resolve/resolv.conf` whose
//! nameservers are all global unicast, so a loopback stub such as
//! systemd-resolved's 127.0.0.53 is replaced by its upstreams).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use rke2_runtime::cri::api;

/// At most this many nameservers reach a pod (glibc reads three).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (kubelet's `MaxDNSSearchPaths`).
pub const MAX_SEARCH_PATHS: usize = 32;
/// At most this many characters of search domains, spaces included
/// (kubelet's `MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// The host's resolver settings, as kubelet reads them from its
/// `--resolv-conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDns {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<String>,
    /// The last `search` line's domains, without trailing dots or `.`.
    pub searches: Vec<String>,
    /// `options`, one entry per option name (a later one replaces).
    pub options: Vec<String>,
}

impl HostDns {
    /// Parses resolv.conf text as kubelet does: comments (`#`, `;`)
    /// skipped, only `nameserver`, `search` and `options` read.
    pub fn parse(text: &str) -> HostDns {
        let mut h = HostDns::default();
        for line in text.lines() {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first().copied() {
                Some("nameserver") if f.len() >= 2 => h.nameservers.push(f[1].to_string()),
                Some("search") => {
                    h.searches = f[1..]
                        .iter()
                        .filter(|s| **s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    for o in &f[1..] {
                        set_option(&mut h.options, o);
                    }
                }
                _ => {}
            }
        }
        h
    }

    /// Reads and parses `path`; an unreadable file gives no settings (and
    /// a warning), as a pod must still start.
    pub fn read(path: &Path) -> HostDns {
        match std::fs::read_to_string(path) {
            Ok(t) => HostDns::parse(&t),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the host resolv.conf");
                HostDns::default()
            }
        }
    }
}

/// Sets option `o` (`name` or `name:value`), replacing one of the same name.
fn set_option(options: &mut Vec<String>, o: &str) {
    let name = o.split(':').next().unwrap_or(o);
    match options
        .iter_mut()
        .find(|x| x.split(':').next() == Some(name))
    {
        Some(x) => *x = o.to_string(),
        None => options.push(o.to_string()),
    }
}

/// Whether a resolv.conf is fit for pods: at least one nameserver, and
/// every nameserver a global unicast address (no loopback stub, link-local
/// or multicast), as RKE2 checks.
pub fn usable_resolv_conf(text: &str) -> bool {
    let mut found = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("nameserver") {
            continue;
        }
        let Some(ip) = f.next().and_then(|s| s.parse::<IpAddr>().ok()) else {
            return false;
        };
        if !global_unicast(&ip) {
            return false;
        }
        found = true;
    }
    found
}

/// Go's `net.IP.IsGlobalUnicast`: not unspecified, loopback, multicast,
/// link-local or the IPv4 broadcast address.
fn global_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_link_local()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unicast_link_local())
        }
    }
}

/// The resolv.conf the node hands pods with `dnsPolicy: Default` (and the
/// DNS addon, which runs with it): `resolv-conf` when set; else the first
/// usable of `candidates` (`/etc/resolv.conf`,
/// `/run/systemd/resolve/resolv.conf`); else, as RKE2, a file under
/// `<agent>/etc/resolv.conf` with `nameserver 8.8.8.8`, and a warning.
pub fn locate_resolv_conf(
    explicit: Option<&Path>,
    candidates: &[&Path],
    agent_dir: &Path,
) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    for c in candidates {
        if std::fs::read_to_string(c).is_ok_and(|t| usable_resolv_conf(&t)) {
            return c.to_path_buf();
        }
    }
    let generated = agent_dir.join("etc").join("resolv.conf");
    let written = std::fs::create_dir_all(agent_dir.join("etc"))
        .and_then(|_| std::fs::write(&generated, "nameserver 8.8.8.8\n"));
    match written {
        Ok(()) => tracing::warn!(
            "host resolv.conf includes loopback or multicast nameservers - pods will use autogenerated {} with nameserver 8.8.8.8",
            generated.display()
        ),
        Err(e) => tracing::error!("writing {}: {e}", generated.display()),
    }
    generated
}

/// The standard places of the host's resolv.conf, in RKE2's order.
pub const HOST_RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The pod's DNS settings as kubelet passes them to the runtime:
/// * `ClusterFirst` (the default; `Default` for a hostNetwork pod) and
///   `ClusterFirstWithHostNet`: the cluster DNS server, search
///   `<ns>.svc.<domain> svc.<domain> <domain>` then the host's, `ndots:5`;
/// * `Default`: the host's resolv.conf;
/// * `None`: nothing but the pod's `dnsConfig`;
///
/// and then the pod's `dnsConfig` appended (nameservers and searches
/// without duplicates, options by name), cut to 3 nameservers and 32
/// search domains of at most 2048 characters.
pub fn pod_dns_config(
    pod: &Pod,
    cluster_dns: &str,
    cluster_domain: &str,
    host: &HostDns,
) -> api::DnsConfig {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_net = spec.and_then(|s| s.host_network).unwrap_or(false);
    let cluster = match policy {
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!host_net),
        "None" => None,
        _ => Some(false),
    };
    let mut cfg = match cluster {
        None => api::DnsConfig::default(),
        Some(false) => api::DnsConfig {
            servers: host.nameservers.clone(),
            searches: host.searches.clone(),
            options: host.options.clone(),
        },
        Some(true) => {
            let mut searches = Vec::new();
            if !cluster_domain.is_empty() {
                searches.push(format!("{ns}.svc.{cluster_domain}"));
                searches.push(format!("svc.{cluster_domain}"));
                searches.push(cluster_domain.to_string());
            }
            searches.extend(host.searches.iter().cloned());
            api::DnsConfig {
                servers: vec![cluster_dns.to_string()],
                searches: dedup(searches),
                options: vec!["ndots:5".into()],
            }
        }
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        cfg.servers
            .extend(extra.nameservers.clone().unwrap_or_default());
        cfg.servers = dedup(std::mem::take(&mut cfg.servers));
        cfg.searches
            .extend(extra.searches.clone().unwrap_or_default());
        cfg.searches = dedup(std::mem::take(&mut cfg.searches));
        for o in extra.options.as_deref().unwrap_or_default() {
            let name = o.name.clone().unwrap_or_default();
            match &o.value {
                Some(v) => set_option(&mut cfg.options, &format!("{name}:{v}")),
                None => set_option(&mut cfg.options, &name),
            }
        }
    }
    cfg.servers.truncate(MAX_NAMESERVERS);
    cfg.searches = fit_searches(cfg.searches);
    cfg
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Kubelet's `formDNSSearchFitsLimits`: the first 32 domains, without
/// those longer than 253 characters (glibc aborts on them), then domains
/// dropped from the end until the line fits 2048 characters.
fn fit_searches(mut s: Vec<String>) -> Vec<String> {
    s.truncate(MAX_SEARCH_PATHS);
    s.retain(|d| d.len() <= 253);
    while !s.is_empty() && s.join(" ").len() > MAX_SEARCH_CHARS {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn host() -> HostDns {
        HostDns::parse(
            "# comment\nnameserver 10.0.0.2\nsearch old.example\nsearch corp.example. .\noptions ndots:2 edns0\noptions ndots:3\nnameserver 10.0.0.3\n",
        )
    }

    #[test]
    fn host_resolv_conf_is_parsed_as_kubelet_does() {
        assert_eq!(
            host(),
            HostDns {
                nameservers: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                searches: vec!["corp.example".into()],
                options: vec!["ndots:3".into(), "edns0".into()],
            }
        );
    }

    #[test]
    fn cluster_first_gets_the_cluster_server_and_search_path() {
        let p =
            pod(serde_json::json!({"metadata": {"namespace": "team"}, "spec": {"containers": []}}));
        let d = pod_dns_config(&p, "10.43.0.10", "cluster.local", &host());
        assert_eq!(d.servers, ["10.43.0.10"]);
        assert_eq!(
            d.searches,
            [
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(d.options, ["ndots:5"]);
        // With hostNetwork, ClusterFirst is Default; ClusterFirstWithHostNet
        // keeps the cluster's.
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "hostNetwork": true}}));
        let d = pod_dns_config(&p, "10.43.0.10", "cluster.local", &host());
        assert_eq!(d.servers, ["10.0.0.2", "10.0.0.3"]);
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}}));
        let d = pod_dns_config(&p, "10.43.0.10", "cluster.local", &host());
        assert_eq!(d.servers, ["10.43.0.10"]);
    }

    #[test]
    fn default_is_the_hosts_and_none_only_the_pods() {
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "dnsPolicy": "Default"}}));
        let d = pod_dns_config(&p, "10.43.0.10", "cluster.local", &host());
        assert_eq!(d.servers, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(d.searches, ["corp.example"]);
        assert_eq!(d.options, ["ndots:3", "edns0"]);
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "1"}, {"name": "rotate"}]}}}));
        let d = pod_dns_config(&p, "10.43.0.10", "cluster.local", &host());
        assert_eq!(d.servers, ["1.2.3.4"]);
        assert_eq!(d.searches, ["a.example"]);
        assert_eq!(d.options, ["ndots:1", "rotate"]);
    }

    #[test]
    fn dns_config_is_appended_without_duplicates_and_cut_to_the_limits() {
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "dnsConfig": {
                "nameservers": ["10.43.0.10", "1.1.1.1", "2.2.2.2", "3.3.3.3"],
                "searches": ["svc.cluster.local", "x.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}}));
        let d = pod_dns_config(&p, "10.43.0.10", "cluster.local", &HostDns::default());
        assert_eq!(d.servers, ["10.43.0.10", "1.1.1.1", "2.2.2.2"]);
        assert_eq!(
            d.searches,
            [
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "x.example"
            ]
        );
        assert_eq!(d.options, ["ndots:2", "edns0"]);
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "dnsPolicy": "None", "dnsConfig": {"searches": many}}}));
        let d = pod_dns_config(&p, "", "cluster.local", &HostDns::default());
        assert_eq!(d.searches.len(), 32);
        let long: Vec<String> = (0..30).map(|i| format!("{i}{}", "x".repeat(100))).collect();
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"},
            "spec": {"containers": [], "dnsPolicy": "None", "dnsConfig": {"searches": long}}}));
        let d = pod_dns_config(&p, "", "cluster.local", &HostDns::default());
        assert!(d.searches.join(" ").len() <= 2048);
        // 19 domains take 1946 characters, 20 would take 2049.
        assert_eq!(d.searches.len(), 19);
    }

    #[test]
    fn a_loopback_stub_resolv_conf_is_passed_over() {
        assert!(usable_resolv_conf("nameserver 10.0.0.2\n"));
        assert!(!usable_resolv_conf(
            "nameserver 127.0.0.53\noptions edns0\n"
        ));
        assert!(!usable_resolv_conf("nameserver 10.0.0.2\nnameserver ::1\n"));
        assert!(!usable_resolv_conf("nameserver fe80::1\n"));
        assert!(!usable_resolv_conf("search example.com\n"));
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\n").unwrap();
        let real = dir.path().join("real.conf");
        std::fs::write(&real, "nameserver 192.0.2.53\n").unwrap();
        let agent = dir.path().join("agent");
        assert_eq!(locate_resolv_conf(None, &[&stub, &real], &agent), real);
        let explicit = dir.path().join("mine.conf");
        assert_eq!(
            locate_resolv_conf(Some(&explicit), &[&stub, &real], &agent),
            explicit
        );
        let got = locate_resolv_conf(None, &[&stub, &dir.path().join("missing")], &agent);
        assert_eq!(got, agent.join("etc/resolv.conf"));
        assert_eq!(
            std::fs::read_to_string(got).unwrap(),
            "nameserver 8.8.8.8\n"
        );
    }
}
