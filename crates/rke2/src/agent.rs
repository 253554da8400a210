//! `rke2 agent`: register this machine with the cluster and run its node
//! role, reaching the servers through local load balancers.
//!
//! Steps, each named in errors: 1. the server CA, checked against the
//! token's hash (cached after the first start, so a restart works while the
//! registration address is down); 2. local load balancers to the
//! supervisors and apiservers, seeded with the `server` URL and refreshed
//! from the live apiserver list; 3. the node password and the node's
//! certificates from the supervisor; 4. the node role.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rke2_config::Config;
use rke2_loadbalancer::{HealthCheck, LoadBalancer, LoadBalancerConfig};
use rke2_supervisor::client::SupervisorClient;
use rke2_trust::Token;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the node password lives: RKE2's `/etc/rancher/node/password` for
/// the default data dir, else under the data dir (several agents on one
/// machine, tests).
pub(crate) fn node_password_path(cfg: &Config) -> PathBuf {
    if cfg.data_dir == Path::new(rke2_config::DEFAULT_DATA_DIR) {
        PathBuf::from("/etc/rancher/node/password")
    } else {
        cfg.data_dir.join("etc/rancher/node/password")
    }
}

/// The trimmed content of `path`, written with `make()` (mode 0600) when
/// missing or empty.
pub(crate) fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let v = make();
    rke2_trust::write_file_atomic(path, format!("{v}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(v)
}

/// `host:port` of a URL with the port replaced.
fn host_with_port(url: &str, port: u16) -> Result<String> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("server URL {url:?} must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(end) = authority.strip_prefix('[').and_then(|a| a.find(']')) {
        &authority[..end + 2]
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    Ok(format!("{host}:{port}"))
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(mut cfg: Config) -> Result<()> {
    let started = std::time::Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let server = cfg
        .server
        .clone()
        .context("an agent needs `server` (the registration address)")?;
    let given = cfg
        .token
        .as_deref()
        .context("an agent needs the cluster `token`")?;
    let token = Token::parse(given).context("parsing the token (config key `token`)")?;
    let agent_dir = cfg.data_dir.join("agent");
    let ca_path = agent_dir.join("server-ca.crt");
    let ips: Vec<IpAddr> = if cfg.node_ips.is_empty() {
        vec![crate::server::detect_node_ip()]
    } else {
        cfg.node_ips.clone()
    };
    // Before writing anything (exit 2): the profile's requirements, the
    // balancers' and node API's ports.
    crate::preflight::profile(&cfg)?;
    crate::preflight::check_ports(&crate::preflight::agent_listens(&cfg, ips[0])).await?;

    // Step 1: the CA. A cached CA is used only while it still matches the
    // token, so a token for another cluster is refused either way.
    let cached = std::fs::read(&ca_path)
        .ok()
        .filter(|ca| token.ca_hash.is_none() || token.ca_matches(ca));
    let ca = match cached {
        Some(ca) => ca,
        None => {
            let ca = crate::cluster::retry_transient("agent step 1 (fetch CA)", || {
                rke2_supervisor::client::fetch_cacerts(&server)
            })
            .await?;
            rke2_supervisor::client::verify_ca(&token, &ca)
                .context("agent step 1 (verify CA hash from token)")?;
            ca
        }
    };
    let user = token
        .user
        .clone()
        .unwrap_or_else(|| rke2_trust::NODE_USER.to_string());
    // Check the credentials against the registration address before
    // writing anything: a wrong token must leave no trace.
    // The same answer carries the cluster's networks, against which this
    // agent's cluster-dns is checked, also before anything is written.
    if !ca_path.exists() {
        let direct = SupervisorClient::new(&server, &ca, &user, &token.password)
            .context("agent: supervisor client")?;
        let cluster =
            crate::cluster::retry_transient("agent step 1 (check token)", || direct.config())
                .await?;
        adopt_cluster_config(&mut cfg, &cluster)?;
    }
    rke2_trust::write_file_if_changed(&ca_path, &ca, 0o644)
        .with_context(|| format!("writing {}", ca_path.display()))?;

    // Step 2: load balancers.
    let lb_host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let sup_port = cfg.lb_server_port;
    let api_port = sup_port
        .checked_sub(1)
        .context("lb-server-port must be above 1")?;
    let sup_lb = std::sync::Arc::new(
        LoadBalancer::start(LoadBalancerConfig {
            name: "supervisor".into(),
            listen: SocketAddr::new(lb_host, sup_port),
            state_file: agent_dir.join("etc/supervisor-lb.json"),
            default_servers: vec![host_with_port(&server, 9345)?],
            health: HealthCheck::Https {
                path: "/ping".into(),
                ca_pem: ca.clone(),
                server_name: String::new(),
            },
        })
        .await
        .context("agent step 2 (supervisor load balancer)")?,
    );
    let api_lb = std::sync::Arc::new(
        LoadBalancer::start(LoadBalancerConfig {
            name: "apiserver".into(),
            listen: SocketAddr::new(lb_host, api_port),
            state_file: agent_dir.join("etc/apiserver-lb.json"),
            default_servers: vec![host_with_port(&server, 6443)?],
            health: HealthCheck::Https {
                path: "/readyz".into(),
                ca_pem: ca.clone(),
                server_name: String::new(),
            },
        })
        .await
        .context("agent step 2 (apiserver load balancer)")?,
    );
    let sup_url = format!("https://127.0.0.1:{sup_port}");
    let sup = SupervisorClient::new(&sup_url, &ca, &user, &token.password)
        .context("agent: supervisor client")?;
    // The cluster's networks come from the servers, as in RKE2: an
    // agent's own cluster-cidr/service-cidr/cluster-domain are defaults.
    match sup.config().await {
        Ok(cluster) => adopt_cluster_config(&mut cfg, &cluster)?,
        Err(e) => warn!(error = %e, "reading the cluster configuration; using this agent's own"),
    }

    // Step 3: identity.
    let mut node_name = cfg.node_name.clone();
    if cfg.with_node_id {
        let id = read_or_create(&agent_dir.join("node-id"), || {
            hex::encode(rand::random::<[u8; 4]>())
        })?;
        node_name = format!("{node_name}-{id}");
    }
    let password = read_or_create(&node_password_path(&cfg), || {
        hex::encode(rand::random::<[u8; 16]>())
    })?;
    let ip_strings: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    let client_cert =
        crate::cluster::retry_transient("agent step 3 (node client certificate)", || {
            sup.kubelet_cert("client", &node_name, &password, &ip_strings)
        })
        .await?;
    let serving =
        crate::cluster::retry_transient("agent step 3 (node serving certificate)", || {
            sup.kubelet_cert("serving", &node_name, &password, &ip_strings)
        })
        .await?;
    for (name, bytes, mode) in [
        ("client-kubelet.crt", client_cert.cert.as_bytes(), 0o644),
        ("client-kubelet.key", client_cert.key.as_bytes(), 0o600),
        ("serving-kubelet.crt", serving.cert.as_bytes(), 0o644),
        ("serving-kubelet.key", serving.key.as_bytes(), 0o600),
    ] {
        let p = agent_dir.join(name);
        rke2_trust::write_file_if_changed(&p, bytes, mode)
            .with_context(|| format!("writing {}", p.display()))?;
    }

    // Step 4: the node role, through the apiserver load balancer.
    let api_url = format!("https://127.0.0.1:{api_port}");
    let client = crate::server::kube_client(
        &api_url,
        &ca,
        client_cert.cert.as_bytes(),
        client_cert.key.as_bytes(),
    )
    .await
    .context("agent API client")?;
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    labels.extend(cfg.node_labels.iter().cloned());
    let stop = CancellationToken::new();
    let workloads = rke2_node::workloads::Workloads::start(
        client.clone(),
        crate::server::workload_config(&cfg, ips[0]),
        stop.clone(),
    )
    .await
    .context("agent step 4 (container runtime)")?;
    let node_cfg = rke2_node::NodeConfig {
        name: node_name.clone(),
        labels,
        taints: cfg
            .node_taints
            .iter()
            .map(|t| {
                (
                    t.key.clone(),
                    t.value.clone(),
                    t.effect.as_str().to_string(),
                )
            })
            .collect(),
        addresses: ips.clone(),
        kubelet_version: rke2_apiserver::discovery::git_version(),
        runtime: Some(workloads.cri.clone()),
        pressure: workloads.pressure.clone(),
    };
    // The node API reviews tokens and access under the node's identity.
    let node_api_client = client.clone();
    let node = tokio::spawn(rke2_node::run(client, node_cfg, stop.clone()));
    if let Some(facts) = crate::server::service_proxy_facts(&cfg, &node_name, &ips) {
        let pair = crate::cluster::retry_transient(
            "agent: the service proxy's client certificate",
            || sup.kube_proxy_cert(),
        )
        .await?;
        for (name, bytes, mode) in [
            ("client-kube-proxy.crt", pair.cert.as_bytes(), 0o644),
            ("client-kube-proxy.key", pair.key.as_bytes(), 0o600),
        ] {
            let p = agent_dir.join(name);
            rke2_trust::write_file_if_changed(&p, bytes, mode)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        let proxy_client =
            crate::server::kube_client(&api_url, &ca, pair.cert.as_bytes(), pair.key.as_bytes())
                .await
                .context("agent: the service proxy's API client")?;
        tokio::spawn(rke2_service_proxy::runner::run(
            proxy_client,
            rke2_service_proxy::runner::ProxyConfig::new(facts),
            stop.clone(),
        ));
    }
    let refresh = tokio::spawn(refresh_servers(
        sup,
        api_lb.clone(),
        sup_lb.clone(),
        stop.clone(),
    ));
    crate::server::spawn_node_api(
        ips[0],
        serving.cert.as_bytes(),
        serving.key.as_bytes(),
        client_cert.ca.as_bytes(),
        rke2_node::api::NodeApiConfig {
            cri: Some(workloads.cri.clone()),
            node_name: node_name.clone(),
            data_dir: cfg.data_dir.clone(),
            webhook: Some(rke2_node::api::auth::Webhook::new(
                node_api_client,
                node_name.clone(),
            )),
            metrics: Some(crate::cert_monitor::metrics_source(cfg.data_dir.clone())),
        },
        stop.clone(),
    )?;
    info!(node = %node_name, elapsed = ?started.elapsed(), "rke2 agent is up");
    crate::systemd::ready("rke2 agent is up");

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM received; shutting down"),
        _ = sigint.recv() => info!("SIGINT received; shutting down"),
    }
    crate::systemd::stopping();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
    workloads.stop().await;
    let _ = refresh.await;
    // Dropping the last handle stops each balancer.
    drop(api_lb);
    drop(sup_lb);
    Ok(())
}

/// Takes `cluster-cidr`, `service-cidr` and `cluster-domain` from the
/// servers' `/v1-rke2/config`; `cluster-dns` follows the service CIDR
/// unless this agent set it, and must then be a Service address of the
/// cluster's `service-cidr` ([`Refused`](crate::preflight::Refused) if not:
/// the agent's pods would get a DNS server no Service can hold).
fn adopt_cluster_config(
    cfg: &mut Config,
    cluster: &serde_json::Value,
) -> Result<(), crate::preflight::Refused> {
    let default_dns = rke2_config::nth_address(&cfg.service_cidr, 10);
    if let Some(c) = cluster["cluster-cidr"]
        .as_str()
        .and_then(|v| v.parse().ok())
    {
        cfg.cluster_cidr = c;
    }
    if let Some(c) = cluster["service-cidr"]
        .as_str()
        .and_then(|v| v.parse().ok())
    {
        cfg.service_cidr = c;
    }
    if let Some(d) = cluster["cluster-domain"].as_str() {
        cfg.cluster_domain = d.to_string();
    }
    if cfg.cluster_dns == default_dns {
        cfg.cluster_dns = rke2_config::nth_address(&cfg.service_cidr, 10);
    }
    rke2_config::check_cluster_dns(cfg.cluster_dns, &cfg.service_cidr).map_err(|reason| {
        crate::preflight::Refused(format!(
            "invalid value {:?} for cluster-dns: {reason} (the cluster's service-cidr, from the servers); set cluster-dns to an address in it, or leave it unset",
            cfg.cluster_dns.to_string()
        ))
    })
}

/// Every 10 s: learn the live apiservers and point both load balancers at
/// them (supervisors run beside each apiserver).
async fn refresh_servers(
    sup: SupervisorClient,
    api_lb: std::sync::Arc<LoadBalancer>,
    sup_lb: std::sync::Arc<LoadBalancer>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sup.apiservers().await {
            Ok(list) if !list.is_empty() => {
                let sups: Vec<String> = list
                    .iter()
                    .filter_map(|a| a.rsplit_once(':').map(|(h, _)| format!("{h}:9345")))
                    .collect();
                api_lb.update_servers(list);
                sup_lb.update_servers(sups);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "refreshing the server list"),
        }
    }
}
