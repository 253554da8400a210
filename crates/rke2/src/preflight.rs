//! Checks of the machine and the data dir against the config, run after
//! the config loaded and before anything is written: every address the
//! process will listen on can be bound, and a token that pins a CA fits the
//! CA this server has or will get. A failure is a [`Refused`]: exit 2,
//! the data dir untouched.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rke2_apiserver::pod_security::PodSecurityConfig;
use rke2_config::{Config, Profile};
use rke2_trust::Token;

/// A start refused because of the configuration (or what it points at):
/// the binary exits 2, as for an invalid config file. Raised before
/// anything is written, except the agent's `cluster-dns` check, which
/// needs the servers' `service-cidr` (see `agent.rs`).
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The process exit code for an error of `server::run` / `agent::run`:
/// 2 when the configuration was refused, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Refused>().is_some() {
        2
    } else {
        1
    }
}

/// PodSecurity admission's configuration, as RKE2 picks it: the
/// `pod-security-admission-config-file` when given (one that cannot be
/// read or is not a valid configuration refuses the start), else RKE2's
/// `rke2-pss.yaml` for the profile: `restricted` with system namespaces
/// exempt under `profile: cis`, everything `privileged` otherwise.
pub fn pod_security(cfg: &Config) -> Result<PodSecurityConfig, Refused> {
    match &cfg.pod_security_admission_config_file {
        Some(path) => PodSecurityConfig::load(path)
            .map_err(|e| Refused(format!("pod-security-admission-config-file: {e}"))),
        None if cfg.profile == Some(Profile::Cis) => Ok(PodSecurityConfig::rke2_cis()),
        None => Ok(PodSecurityConfig::default()),
    }
}

/// The secrets encryption configuration this server was left with
/// (`<data-dir>/server/cred/encryption-config.json`), checked before
/// anything is written: a malformed one refuses the start, naming the
/// file and the field.
pub fn secrets_encryption(
    cfg: &Config,
) -> Result<Option<rke2_datastore::EncryptionConfiguration>, Refused> {
    crate::secrets_encrypt::load_local(&cfg.data_dir)
        .map_err(|e| Refused(format!("secrets encryption configuration: {e}")))
}

/// The audit log as RKE2 sets it up: the policy from `audit-policy-file`
/// (or `/etc/rancher/rke2/audit-policy.yaml` when that exists; one that
/// cannot be read or parsed refuses the start, naming the file and the
/// field), events to `<data-dir>/server/logs/audit.log`. `None` when there
/// is no policy or it records nothing.
pub fn audit(cfg: &Config) -> Result<Option<rke2_apiserver::audit::AuditLog>, Refused> {
    let path = match &cfg.audit_policy_file {
        Some(p) => p.clone(),
        None => {
            let p = std::path::PathBuf::from(rke2_config::DEFAULT_AUDIT_POLICY_FILE);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Refused(format!("audit-policy-file: {}: {e}", path.display())))?;
    let policy = rke2_apiserver::audit::Policy::parse(&text)
        .map_err(|e| Refused(format!("audit-policy-file: {}: {e}", path.display())))?;
    if policy.records_nothing() {
        return Ok(None);
    }
    Ok(Some(rke2_apiserver::audit::AuditLog::new(
        policy,
        &cfg.data_dir.join("server/logs/audit.log"),
    )))
}

/// Kernel parameters `profile: cis` requires, with their values (RKE2's
/// list, from the CIS hardening guide).
const CIS_KERNEL_PARAMETERS: &[(&str, i64)] = &[
    ("vm.overcommit_memory", 1),
    ("vm.panic_on_oom", 0),
    ("kernel.panic", 10),
    ("kernel.panic_on_oops", 1),
];

/// What RKE2 checks for `profile`: under `cis` the kernel parameters of
/// the CIS guide; under `cis` and `etcd` on a server, an `etcd` user and
/// group. Every unmet requirement is named, one per line.
pub fn profile(cfg: &Config) -> Result<(), Refused> {
    let Some(profile) = cfg.profile else {
        return Ok(());
    };
    let mut problems = Vec::new();
    if profile == Profile::Cis {
        for (name, want) in CIS_KERNEL_PARAMETERS {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| t.trim().parse::<i64>().map_err(|e| e.to_string()))
            {
                Ok(got) if got == *want => {}
                Ok(got) => problems.push(format!(
                    "invalid kernel parameter value {name}={got} - expected {want}"
                )),
                Err(e) => problems.push(format!("cannot read {path}: {e}")),
            }
        }
    }
    if cfg.role == rke2_config::Role::Server {
        if !names_in("/etc/passwd", "etcd") {
            problems.push("missing required: user: unknown user etcd".into());
        }
        if !names_in("/etc/group", "etcd") {
            problems.push("missing required: group: unknown group etcd".into());
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Refused(format!(
        "profile {}: this machine does not meet the profile's requirements:\n{}",
        profile.as_str(),
        problems.join("\n")
    )))
}

/// Whether a `passwd`/`group`-style file has an entry named `name`.
fn names_in(file: &str, name: &str) -> bool {
    std::fs::read_to_string(file)
        .map(|t| t.lines().any(|l| l.split(':').next() == Some(name)))
        .unwrap_or(false)
}

/// One address the process will listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// The address.
    pub addr: SocketAddr,
    /// What listens there, with the setting behind it.
    pub what: String,
    /// Which settings move it, if any do.
    pub remedy: Option<&'static str>,
}

/// How long a port held by someone else is waited for: the etcd child of
/// a server that was just killed dies with it (parent-death signal) but
/// may hold its ports for a moment after a quick restart.
const PORT_GRACE: Duration = Duration::from_secs(3);

/// What `rke2 server` listens on (`node_ip` is where etcd and the node API
/// listen, `server::node_ips`).
pub fn server_listens(cfg: &Config, node_ip: IpAddr) -> Vec<Listen> {
    let bind = cfg
        .bind_address
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let node = Some("node-ip (or bind-address, which it defaults to)");
    let mut out = vec![
        Listen {
            addr: SocketAddr::new(bind, cfg.https_listen_port),
            what: format!(
                "the Kubernetes API (https-listen-port {})",
                cfg.https_listen_port
            ),
            remedy: Some("https-listen-port or bind-address"),
        },
        Listen {
            addr: SocketAddr::new(bind, cfg.supervisor_port),
            what: format!("the supervisor (supervisor-port {})", cfg.supervisor_port),
            remedy: Some("supervisor-port or bind-address"),
        },
        Listen {
            addr: SocketAddr::new(node_ip, 2379),
            what: "etcd's clients (port 2379, on the node IP)".into(),
            remedy: node,
        },
        Listen {
            addr: SocketAddr::new(node_ip, 2380),
            what: "etcd's peers (port 2380, on the node IP)".into(),
            remedy: node,
        },
        Listen {
            addr: SocketAddr::new(node_ip, 10250),
            what: "the node API (port 10250, on the node IP)".into(),
            remedy: node,
        },
    ];
    if !node_ip.is_loopback() {
        out.push(Listen {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2379),
            what: "etcd's local clients (port 2379 on 127.0.0.1, beside the node IP)".into(),
            remedy: None,
        });
    }
    out
}

/// What `rke2 agent` listens on: its two local load balancers and the node
/// API on `node_ip`.
pub fn agent_listens(cfg: &Config, node_ip: IpAddr) -> Vec<Listen> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut out = vec![Listen {
        addr: SocketAddr::new(lo, cfg.lb_server_port),
        what: format!(
            "the supervisor load balancer (lb-server-port {})",
            cfg.lb_server_port
        ),
        remedy: Some("lb-server-port"),
    }];
    // Config refuses lb-server-port < 2 for agents.
    if let Some(api) = cfg.lb_server_port.checked_sub(1) {
        out.push(Listen {
            addr: SocketAddr::new(lo, api),
            what: format!(
                "the apiserver load balancer (lb-server-port {} minus 1)",
                cfg.lb_server_port
            ),
            remedy: Some("lb-server-port"),
        });
    }
    out.push(Listen {
        addr: SocketAddr::new(node_ip, 10250),
        what: "the node API (port 10250, on the node IP)".into(),
        remedy: Some("node-ip"),
    });
    out
}

/// Whether two listeners would take the same port (Linux: a wildcard
/// address covers its family, and `[::]` covers IPv4 too).
fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    x == y
        || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified()))
        || (x.is_ipv6() && x.is_unspecified())
        || (y.is_ipv6() && y.is_unspecified())
}

/// Checks that every address in `listens` can be listened on, all at once
/// (so two of ours on one port are caught too), then lets them go. A port
/// another process holds is waited for up to a few seconds, then refused
/// naming the address, what wanted it and the settings that move it.
pub async fn check_ports(listens: &[Listen]) -> Result<(), Refused> {
    for (i, a) in listens.iter().enumerate() {
        if let Some(b) = listens[..i].iter().find(|b| clash(&a.addr, &b.addr)) {
            let mut settings: Vec<&str> = [b.remedy, a.remedy].into_iter().flatten().collect();
            settings.dedup();
            return Err(Refused(format!(
                "{} and {} both want port {} ({} and {}): change {}",
                b.what,
                a.what,
                a.addr.port(),
                b.addr,
                a.addr,
                settings.join(" or ")
            )));
        }
    }
    let deadline = Instant::now() + PORT_GRACE;
    loop {
        match bind_all(listens) {
            Ok(held) => {
                drop(held);
                return Ok(());
            }
            Err((l, e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline {
                    return Err(Refused(format!(
                        "cannot listen on {} for {}: {e}; the port is in use: stop what listens there{}",
                        l.addr,
                        l.what,
                        l.remedy
                            .map(|r| format!(" or change {r}"))
                            .unwrap_or_default()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((l, e)) => {
                let change = l
                    .remedy
                    .map(|r| format!("; change {r}"))
                    .unwrap_or_default();
                let hint = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                    format!("; {} is not an address of this machine", l.addr.ip())
                } else {
                    String::new()
                };
                return Err(Refused(format!(
                    "cannot listen on {} for {}: {e}{hint}{change}",
                    l.addr, l.what
                )));
            }
        }
    }
}

fn bind_all(listens: &[Listen]) -> Result<Vec<TcpListener>, (&Listen, std::io::Error)> {
    listens
        .iter()
        .map(|l| TcpListener::bind(l.addr).map_err(|e| (l, e)))
        .collect()
}

/// A `token` or `agent-token` that pins a CA (`K10<hash>::...`) must fit
/// the CA this server will use: the one in its data dir, or, when there is
/// none and `ca_from_elsewhere`, the one of the cluster it joins or of the
/// snapshot it restores (checked by the join or the restore itself). A
/// new cluster gets a new CA, which no given hash can match; refusing that
/// now spares writing trust material that the token check would refuse
/// afterwards.
pub fn server_tokens(cfg: &Config, ca_from_elsewhere: bool) -> Result<(), Refused> {
    let ca_path = rke2_trust::tls_dir(&cfg.data_dir).join("server-ca.crt");
    let ca = match std::fs::read(&ca_path) {
        Ok(ca) => Some(ca),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Refused(format!(
                "cannot read the server CA {}: {e}",
                ca_path.display()
            )));
        }
    };
    for (key, given) in [("token", &cfg.token), ("agent-token", &cfg.agent_token)] {
        // Config already parsed both; a parse error here would be a bug
        // there, and is refused the same way.
        let Some(given) = given else { continue };
        let t = Token::parse(given).map_err(|e| Refused(format!("{key}: {e}")))?;
        if t.ca_hash.is_none() {
            continue;
        }
        match &ca {
            Some(ca) if !t.ca_matches(ca) => {
                return Err(Refused(format!(
                    "{key}: its CA hash is not the hash of this server's CA {}: the token belongs to another cluster",
                    ca_path.display()
                )));
            }
            Some(_) => {}
            None if ca_from_elsewhere => {}
            None => {
                return Err(Refused(format!(
                    "{key}: it pins a cluster CA (K10<hash>::...), but {} holds no CA and `server` is not set: a new cluster gets a new CA, which no hash given in advance matches; give only the password (the part after the last ':'), or set `server` to join the cluster the token belongs to",
                    cfg.data_dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// The etcd snapshot settings that need more than the config crate can
/// check: the schedule parses (RKE2's cron syntax) and the S3 endpoint's CA
/// file (`etcd-s3-endpoint-ca`) holds certificates. `None` when `etcd-disable-snapshots`.
pub fn etcd_snapshots(
    cfg: &Config,
) -> Result<Option<crate::etcd_snapshot::schedule::Schedule>, Refused> {
    let snap = &cfg.etcd_snapshot;
    // The CA file of the S3 endpoint reads as PEM certificates now, not
    // at the first scheduled upload hours later.
    if let Some(s3) = &snap.s3
        && let Some(ca) = &s3.endpoint_ca
        && !s3.skip_ssl_verify
    {
        crate::etcd_snapshot::s3::endpoint_ca_roots(ca).map_err(Refused)?;
    }
    if snap.disable {
        return Ok(None);
    }
    crate::etcd_snapshot::schedule::Schedule::parse(&snap.schedule_cron)
        .map(Some)
        .map_err(Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(addr: &str, what: &str) -> Listen {
        Listen {
            addr: addr.parse().unwrap(),
            what: what.into(),
            remedy: Some("x-port"),
        }
    }

    #[test]
    fn clashes_follow_linux_bind_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clash(&a("0.0.0.0:1"), &a("127.0.0.5:1")));
        assert!(clash(&a("127.0.0.5:1"), &a("127.0.0.5:1")));
        assert!(!clash(&a("127.0.0.5:1"), &a("127.0.0.6:1")));
        assert!(!clash(&a("127.0.0.5:1"), &a("127.0.0.5:2")));
        assert!(clash(&a("[::]:1"), &a("127.0.0.5:1")));
        assert!(!clash(&a("0.0.0.0:1"), &a("[::1]:1")));
    }

    #[tokio::test]
    async fn a_port_in_use_is_refused_naming_address_and_setting() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let started = Instant::now();
        let e = check_ports(&[listen(&addr.to_string(), "the thing (x-port)")])
            .await
            .unwrap_err();
        let t = e.to_string();
        assert!(
            t.contains(&format!("cannot listen on {addr} for the thing (x-port)")),
            "{t}"
        );
        assert!(t.contains("in use") && t.contains("change x-port"), "{t}");
        // It waited for the port before giving up.
        assert!(started.elapsed() >= PORT_GRACE);
        drop(held);
        check_ports(&[listen(&addr.to_string(), "the thing")])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn two_of_ours_on_one_port_are_named() {
        let e = check_ports(&[listen("0.0.0.0:7", "A"), listen("127.0.0.9:7", "B")])
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("A and B both want port 7"), "{e}");
    }

    #[tokio::test]
    async fn an_address_not_of_this_machine_is_named() {
        // TEST-NET-1: never assigned to this machine.
        let e = check_ports(&[listen("192.0.2.1:7", "C")])
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("192.0.2.1 is not an address of this machine"),
            "{e}"
        );
    }
    fn config(data_dir: &std::path::Path, extra: &[&str]) -> Config {
        let mut args: Vec<std::ffi::OsString> = ["--config", "/dev/null", "--node-name", "n1"]
            .iter()
            .map(Into::into)
            .collect();
        args.push("--data-dir".into());
        args.push(data_dir.into());
        args.extend(extra.iter().map(Into::into));
        rke2_config::load(rke2_config::Role::Server, &args, &Default::default())
            .unwrap()
            .config
    }

    #[test]
    fn a_ca_pinning_token_must_fit_the_data_dirs_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n";
        let ours = format!("K10{}::server:pw", rke2_trust::ca_hash(ca));
        let theirs = format!("K10{}::server:pw", "ab".repeat(32));
        // No CA yet: only a joining server may hold a pinning token.
        let e = server_tokens(&config(dir.path(), &["--token", &ours]), false).unwrap_err();
        assert!(
            e.to_string().starts_with("token: it pins a cluster CA"),
            "{e}"
        );
        server_tokens(&config(dir.path(), &["--token", &ours]), true).unwrap();
        server_tokens(&config(dir.path(), &["--token", "bare"]), false).unwrap();
        // With a CA: its hash, or refused naming the CA file.
        let tls = rke2_trust::tls_dir(dir.path());
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("server-ca.crt"), ca).unwrap();
        server_tokens(&config(dir.path(), &["--token", &ours]), false).unwrap();
        let e = server_tokens(&config(dir.path(), &["--token", &theirs]), false).unwrap_err();
        assert!(e.to_string().contains("belongs to another cluster"), "{e}");
        assert!(e.to_string().contains("server-ca.crt"), "{e}");
        let agent = format!("K10{}::node:other", "ab".repeat(32));
        let e = server_tokens(
            &config(dir.path(), &["--token", "bare", "--agent-token", &agent]),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("agent-token: its CA hash"), "{e}");
    }

    #[test]
    fn pod_security_follows_rke2_defaults_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            pod_security(&config(dir.path(), &[])).unwrap(),
            PodSecurityConfig::default()
        );
        assert_eq!(
            pod_security(&config(dir.path(), &["--profile", "cis"])).unwrap(),
            PodSecurityConfig::rke2_cis()
        );
        assert_eq!(
            pod_security(&config(dir.path(), &["--profile", "etcd"])).unwrap(),
            PodSecurityConfig::default()
        );
        // The file wins over the profile's default.
        let file = dir.path().join("psa.yaml");
        std::fs::write(
            &file,
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins: []\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        assert_eq!(
            pod_security(&config(
                dir.path(),
                &[
                    "--profile",
                    "cis",
                    "--pod-security-admission-config-file",
                    file_arg
                ]
            ))
            .unwrap(),
            PodSecurityConfig::default()
        );
        std::fs::write(&file, "kind: [").unwrap();
        let e = pod_security(&config(
            dir.path(),
            &["--pod-security-admission-config-file", file_arg],
        ))
        .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "pod-security-admission-config-file: {file_arg}: invalid YAML"
            )),
            "{e}"
        );
    }

    #[test]
    fn listens_cover_what_server_and_agent_bind() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["--bind-address", "127.0.0.7"]);
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let addrs: Vec<String> = server_listens(&cfg, ip)
            .iter()
            .map(|l| l.addr.to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.7:6443",
                "127.0.0.7:9345",
                "10.0.0.5:2379",
                "10.0.0.5:2380",
                "10.0.0.5:10250",
                "127.0.0.1:2379"
            ]
        );
        let addrs: Vec<String> = agent_listens(&cfg, ip)
            .iter()
            .map(|l| l.addr.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:6444", "127.0.0.1:6443", "10.0.0.5:10250"]
        );
    }
}
