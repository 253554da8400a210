//! `rke2 server`: trust material, etcd, the API, the kubeconfig and this
//! server's own node, started in that order and stopped in reverse.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rke2_config::Config;
use rke2_datastore::store::StoreTls;
use rke2_datastore::{EtcdConfig, EtcdProcess, Store};
use rke2_trust::{ServerTrust, ServerTrustParams, Token};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The first non-loopback IPv4 address of an interface that is up, else
/// 127.0.0.1: what `node-ip` defaults to.
pub fn detect_node_ip() -> IpAddr {
    use nix::net::if_::InterfaceFlags;
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if !a.flags.contains(InterfaceFlags::IFF_UP)
                || a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            {
                continue;
            }
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                return IpAddr::V4(sin.ip());
            }
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// The node IPs: `node-ip`, else `advertise-address`, else a specific
/// `bind-address`, else the machine's first address.
fn node_ips(cfg: &Config) -> Vec<IpAddr> {
    if !cfg.node_ips.is_empty() {
        return cfg.node_ips.clone();
    }
    if let Some(a) = cfg.advertise_address {
        return vec![a];
    }
    if let Some(b) = cfg.bind_address.filter(|b| !b.is_unspecified()) {
        return vec![b];
    }
    vec![detect_node_ip()]
}

fn first_service_ip(cidr: &ipnet::IpNet) -> Option<IpAddr> {
    rke2_apiserver::allocator::nth_ip(cidr, 1)
}

/// Reads the persisted etcd member name, or makes and persists a new one
/// (`<node>-<8 hex>`).
fn member_name(db_dir: &Path, node: &str) -> Result<String> {
    let path = db_dir.join("name");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let suffix: [u8; 4] = rand::random();
    let name = format!("{node}-{}", hex::encode(suffix));
    rke2_trust::write_file_atomic(&path, name.as_bytes(), 0o600)
        .with_context(|| format!("writing the etcd member name to {}", path.display()))?;
    Ok(name)
}

fn url_host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Resolves the cluster token: the given one (its CA hash must match ours),
/// else the stored one, else a new one. A given token is not written
/// here: the token files are written only once etcd confirmed the
/// bootstrap data (see [`write_tokens`]), so a refused token never
/// replaces the stored one. A new one is written at once (`server/token`).
fn resolve_token(cfg: &Config, server_dir: &Path, trust: &ServerTrust) -> Result<Token> {
    let ca = trust.server_ca.cert_pem.as_bytes();
    let token_path = server_dir.join("token");
    let password = match &cfg.token {
        Some(given) => {
            let t = Token::parse(given).context("parsing the token (config key `token`)")?;
            if t.ca_hash.is_some() && !t.ca_matches(ca) {
                bail!(
                    "the token's CA hash does not match this server's CA ({}): the token belongs to another cluster",
                    trust.server_ca.cert_path.display()
                );
            }
            t.password
        }
        None => match std::fs::read_to_string(&token_path) {
            Ok(s) if !s.trim().is_empty() => {
                Token::parse(s.trim())
                    .with_context(|| format!("parsing the stored token {}", token_path.display()))?
                    .password
            }
            _ => {
                // A generated password is kept before etcd sees it: a
                // start killed after storing the bootstrap data (sealed
                // with it) but before `write_tokens` would otherwise
                // generate another and find that data unreadable.
                let password = rke2_trust::generate_password();
                let text = format!("{}\n", Token::server(ca, &password));
                rke2_trust::write_file_atomic(&token_path, text.as_bytes(), 0o600)
                    .with_context(|| format!("writing {}", token_path.display()))?;
                password
            }
        },
    };
    Ok(Token::server(ca, &password))
}

/// Writes `server/token`, `server/node-token` (and `server/agent-token`),
/// all 0600.
fn write_tokens(cfg: &Config, server_dir: &Path, trust: &ServerTrust, token: &Token) -> Result<()> {
    let ca = trust.server_ca.cert_pem.as_bytes();
    let text = format!("{token}\n");
    for name in ["token", "node-token"] {
        let p = server_dir.join(name);
        rke2_trust::write_file_if_changed(&p, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(agent) = &cfg.agent_token {
        let t =
            Token::parse(agent).context("parsing the agent token (config key `agent-token`)")?;
        let p = server_dir.join("agent-token");
        let text = format!("{}\n", Token::agent(ca, &t.password));
        rke2_trust::write_file_if_changed(&p, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// An API client for `url` with the given CA and client certificate (the
/// server's own loops, and the agent's node role through its balancer).
/// The kube crate's default retry is off: it retries every 429 and 503
/// up to 15 times with a backoff growing to minutes (a refused eviction
/// took six minutes to come back); client-go retries only when the server
/// sends `Retry-After`, and the loops here requeue on errors themselves.
pub async fn kube_client(
    url: &str,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<kube::Client> {
    let text = rke2_trust::render_kubeconfig(url, ca_pem, cert_pem, key_pem);
    let kc =
        kube::config::Kubeconfig::from_yaml(&text).context("building the internal kubeconfig")?;
    let conf =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("loading the internal kubeconfig")?;
    let mut conf = conf;
    conf.default_retry = false;
    kube::Client::try_from(conf).context("building the internal API client")
}

async fn wait_healthy(store: &Store, etcd: &EtcdProcess, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if store.healthy().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "etcd did not become healthy within {timeout:?}; see its log at {}",
        etcd.log_file().display()
    )
}

/// The file that says etcd's data dir was created by a first start that
/// has not yet seen etcd healthy.
fn first_start_marker(etcd_data: &Path) -> PathBuf {
    etcd_data.with_file_name("etcd-first-start-pending")
}

/// etcd killed during its very first start can leave a WAL without the
/// cluster's membership; restarted on it, etcd never elects a leader and
/// hangs forever. Nothing of ours was written before etcd was healthy, so
/// such a data dir is discarded and the first start (or join) runs again.
fn discard_interrupted_first_start(etcd_data: &Path) -> Result<()> {
    let marker = first_start_marker(etcd_data);
    if !marker.exists() {
        return Ok(());
    }
    let member = etcd_data.join("member");
    if member.exists() {
        warn!(
            dir = %member.display(),
            "etcd's first start was interrupted before it became healthy; its data is discarded and the first start runs again"
        );
        std::fs::remove_dir_all(&member)
            .with_context(|| format!("removing {}", member.display()))?;
    }
    std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    let started = Instant::now();
    // Fail before writing anything when etcd is not installed.
    rke2_datastore::etcd::find_binary(&cfg.etcd_binary)?;
    let data_dir = &cfg.data_dir;
    let server_dir = data_dir.join("server");
    let ips = node_ips(&cfg);
    let node_ip = ips[0];
    let etcd_data = server_dir.join("db").join("etcd");
    discard_interrupted_first_start(&etcd_data)?;
    let mut has_etcd_data = etcd_data.join("member").exists();
    // Also before writing anything (exit 2): a token pinning a CA this
    // server will not have, and addresses we cannot listen on.
    // Without etcd data, a joining server gets its CA from the cluster
    // and a restoring one from the snapshot: a pinned hash is checked there.
    let ca_from_elsewhere = !has_etcd_data
        && (cfg.server.is_some()
            || (cfg.cluster_reset && cfg.cluster_reset_restore_path.is_some()));
    crate::preflight::server_tokens(&cfg, ca_from_elsewhere)?;
    crate::preflight::profile(&cfg)?;
    let snapshot_schedule = crate::preflight::etcd_snapshots(&cfg)?;
    let pod_security = crate::preflight::pod_security(&cfg)?;
    let audit = crate::preflight::audit(&cfg)?.map(std::sync::Arc::new);
    let encryption_file = crate::preflight::secrets_encryption(&cfg)?;
    crate::preflight::check_ports(&crate::preflight::server_listens(&cfg, node_ip)).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;

    // `--cluster-reset`: the snapshot to restore is found and verified
    // before anything is moved.
    let reset_snapshot = if cfg.cluster_reset {
        crate::etcd_snapshot::restore::prepare(&cfg, &etcd_data).await?
    } else {
        None
    };
    // A server whose cluster was reset (or that was removed) is no longer
    // in the member list the cluster reports: its old database is moved
    // aside and it joins again.
    if let (Some(url), true, false) = (&cfg.server, has_etcd_data, cfg.cluster_reset) {
        let peer = format!("https://{}:2380", url_host(&node_ip));
        if crate::etcd_snapshot::restore::removed_from_cluster(&cfg, url, &etcd_data, &peer).await {
            let old = crate::etcd_snapshot::restore::move_aside(&etcd_data)?;
            warn!(
                server = %url,
                old = %old.display(),
                "this server is no longer a member of its cluster (the cluster was reset or it was removed): its old database is kept aside and it joins again"
            );
            has_etcd_data = false;
        }
    }
    // A server with `server:` and no etcd data yet joins that cluster; once
    // etcd has data, the URL no longer matters for membership.
    let join = match (&cfg.server, has_etcd_data) {
        (Some(url), false) if !cfg.cluster_reset => {
            info!(server = %url, "joining an existing cluster");
            Some(crate::cluster::prepare_join(&cfg, url, &rke2_trust::tls_dir(data_dir)).await?)
        }
        _ => None,
    };
    let mut tls_sans = cfg.tls_san.clone();
    if let Some(b) = cfg.bind_address.filter(|b| !b.is_unspecified()) {
        tls_sans.push(b.to_string());
    }
    // A fresh server restoring a snapshot takes the cluster's CAs from it
    // (read and checked with the token by `prepare`) before any
    // certificate is issued, as a joining server takes them from the
    // cluster.
    let restored_passwd = match reset_snapshot.as_ref().and_then(|s| s.bootstrap.as_ref()) {
        Some(doc) => Some(
            rke2_supervisor::bootstrap::unpack(doc, &rke2_trust::tls_dir(data_dir))
                .context("writing the cluster's CA material from the snapshot")?,
        ),
        None => None,
    };
    let trust = rke2_trust::ensure_server_trust(&ServerTrustParams {
        data_dir: data_dir.clone(),
        node_name: cfg.node_name.clone(),
        serving_sans: rke2_trust::serving_sans(
            &cfg.node_name,
            &ips,
            &cfg.cluster_domain,
            first_service_ip(&cfg.service_cidr),
            &tls_sans,
        ),
        etcd_sans: rke2_trust::etcd_sans(&cfg.node_name, &ips),
    })
    .context("preparing certificates")?;
    let token = resolve_token(&cfg, &server_dir, &trust)?;
    let passwd = match (&join, restored_passwd) {
        (Some(plan), _) => plan.passwd.clone(),
        (None, Some(restored)) => restored,
        (None, None) => rke2_supervisor::bootstrap::Passwd {
            server: token.password.clone(),
            // Without `agent-token`, agents use the server password (as
            // k3s); a given one was checked at load and is never replaced.
            node: match cfg.agent_token.as_deref() {
                Some(t) => {
                    Token::parse(t)
                        .context("parsing the agent token (config key `agent-token`)")?
                        .password
                }
                None => token.password.clone(),
            },
        },
    };

    // etcd listens on the node IP (and loopback when the node IP is not).
    std::fs::create_dir_all(&etcd_data)
        .with_context(|| format!("creating {}", etcd_data.display()))?;
    let name = member_name(&etcd_data, &cfg.node_name)?;
    let client_url = format!("https://{}:2379", url_host(&node_ip));
    let peer_url = format!("https://{}:2380", url_host(&node_ip));
    let mut listen = vec![client_url.clone()];
    if !node_ip.is_loopback() {
        listen.push("https://127.0.0.1:2379".into());
    }
    let store_tls = StoreTls {
        ca_pem: trust.etcd_server_ca.cert_pem.clone(),
        cert_pem: trust.etcd_client.cert_pem.clone(),
        key_pem: trust.etcd_client.key_pem.clone(),
    };
    let (initial_cluster, initial_state, endpoints) = match &join {
        Some(plan) => {
            // Join step 4: add ourselves as a learner through the voters.
            let started_join = Instant::now();
            let remote = Store::connect(&plan.voter_client_urls, Some(&store_tls))
                .await
                .context("join step 4: connecting to the cluster's etcd")?;
            let members = remote
                .add_learner(&peer_url, Duration::from_secs(600))
                .await
                .context("join step 4: adding this server as an etcd learner")?;
            crate::cluster::log_joined(&name, started_join);
            let initial: Vec<String> = members
                .iter()
                .filter_map(|m| {
                    let peer = m.peer_urls.first()?;
                    let n = if m.name.is_empty() || *peer == peer_url {
                        name.clone()
                    } else {
                        m.name.clone()
                    };
                    Some(format!("{n}={peer}"))
                })
                .collect();
            (
                initial.join(","),
                "existing",
                plan.voter_client_urls.clone(),
            )
        }
        None => (
            format!("{name}={peer_url}"),
            "new",
            vec![client_url.clone()],
        ),
    };
    let mut reset_old_db = None;
    if let Some(snap) = &reset_snapshot {
        reset_old_db =
            crate::etcd_snapshot::restore::restore_into(snap, &etcd_data, &name, &peer_url)?;
        info!(snapshot = %snap.source, old = ?reset_old_db, "etcd database restored from the snapshot");
    }
    if !etcd_data.join("member").exists() {
        rke2_trust::write_file_atomic(&first_start_marker(&etcd_data), b"", 0o600)
            .context("marking etcd's first start")?;
    }
    let etcd = EtcdProcess::start(EtcdConfig {
        binary: cfg.etcd_binary.clone(),
        name: name.clone(),
        data_dir: etcd_data.clone(),
        log_file: data_dir.join("agent/logs/etcd.log"),
        listen_client_urls: listen,
        advertise_client_url: client_url.clone(),
        peer_url: peer_url.clone(),
        initial_cluster,
        initial_cluster_state: initial_state.into(),
        trusted_ca_file: trust.etcd_server_ca.cert_path.clone(),
        cert_file: trust.etcd_server.cert_path.clone(),
        key_file: trust.etcd_server.key_path.clone(),
        peer_trusted_ca_file: trust.etcd_peer_ca.cert_path.clone(),
        peer_cert_file: trust.etcd_peer.cert_path.clone(),
        peer_key_file: trust.etcd_peer.key_path.clone(),
        force_new_cluster: cfg.cluster_reset && reset_snapshot.is_none(),
    })?;
    let ctx = Running {
        reset: cfg.cluster_reset.then(|| {
            crate::etcd_snapshot::restore::next_steps(
                &cfg,
                reset_snapshot.as_ref().map(|s| s.source.as_str()),
                reset_old_db.as_deref(),
            )
        }),
        snapshot_schedule,
        cfg: &cfg,
        trust: &trust,
        etcd: &etcd,
        endpoints,
        store_tls,
        node_ip,
        ips: &ips,
        started,
        token,
        passwd,
        pod_security,
        audit,
        encryption_file,
    };
    let result = run_with_etcd(ctx, &mut sigterm, &mut sigint).await;
    info!("stopping etcd");
    etcd.stop().await;
    if let Err(e) = &result
        && let Some(rotated) = e.downcast_ref::<crate::cluster::CaRotated>()
    {
        info!(files = ?rotated.files, backup = %rotated.backup, "the cluster's CA certificates were rotated; starting again with them");
        return Err(restart_self());
    }
    result
}

/// Set in the environment of the start that follows a CA rotation, so a
/// second rotation found by it (which cannot happen unless writing the
/// files failed unnoticed) stops instead of looping.
const CA_RESTART_ENV: &str = "RKE2_CA_ROTATION_RESTART";

/// Replaces this process with a fresh start of the same command (same
/// PID, so a service manager and `Type=notify` see one start): after a CA
/// rotation every certificate and connection is set up again from the
/// files. Returns only when the exec failed.
fn restart_self() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow::Error::new(e).context("finding this executable to start again"),
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(CA_RESTART_ENV, "1")
        .exec();
    anyhow::Error::new(err).context(format!("starting {} again", exe.display()))
}

/// What the server holds once etcd runs.
struct Running<'a> {
    /// The scheduled etcd snapshots, unless `etcd-disable-snapshots`.
    snapshot_schedule: Option<crate::etcd_snapshot::schedule::Schedule>,
    /// `--cluster-reset`: the next steps to print once etcd runs alone.
    reset: Option<String>,
    cfg: &'a Config,
    trust: &'a ServerTrust,
    etcd: &'a EtcdProcess,
    endpoints: Vec<String>,
    store_tls: StoreTls,
    node_ip: IpAddr,
    ips: &'a [IpAddr],
    started: Instant,
    token: Token,
    passwd: rke2_supervisor::bootstrap::Passwd,
    pod_security: rke2_apiserver::pod_security::PodSecurityConfig,
    audit: Option<std::sync::Arc<rke2_apiserver::audit::AuditLog>>,
    encryption_file: Option<rke2_datastore::EncryptionConfiguration>,
}

async fn run_with_etcd(
    ctx: Running<'_>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    let Running {
        cfg,
        trust,
        etcd,
        endpoints,
        store_tls,
        node_ip,
        ips,
        started,
        token,
        passwd,
        pod_security,
        audit,
        snapshot_schedule,
        reset,
        encryption_file,
    } = ctx;
    let own_client_url = format!("https://{}:2379", url_host(&node_ip));
    let store = Store::connect(&endpoints, Some(&store_tls))
        .await
        .context("connecting to etcd")?;
    tokio::select! {
        r = wait_healthy(&store, etcd, Duration::from_secs(600)) => r?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    }
    info!(elapsed = ?started.elapsed(), "etcd is healthy");
    let marker = first_start_marker(&cfg.data_dir.join("server/db/etcd"));
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", marker.display()));
        }
        _ => {}
    }
    // `rke2 etcd-snapshot` reaches this member without the server's flags.
    rke2_trust::write_file_atomic(
        &crate::etcd_snapshot::local::endpoint_file(&cfg.data_dir),
        own_client_url.as_bytes(),
        0o644,
    )
    .context("recording the etcd client URL for rke2 etcd-snapshot")?;
    crate::cluster::check_storage_format(&store, crate::VERSION).await?;
    crate::cluster::ensure_bootstrap_data(&store, &token.password, &trust.tls_dir, &passwd).await?;
    // `rke2 certificate rotate-ca` stored new CAs: take them, and start
    // again so every leaf (etcd's too) is issued by them. Not in a
    // cluster-reset run, which stops right after (the next start takes
    // them) and must not be repeated by the restart.
    if !cfg.cluster_reset
        && let Some(rotated) =
            crate::cluster::apply_stored_ca(&store, &token.password, &trust.tls_dir).await?
    {
        if std::env::var_os(CA_RESTART_ENV).is_some() {
            bail!(
                "{rotated}, but this start already followed a CA rotation: refusing to start again in a loop"
            );
        }
        return Err(rotated.into());
    }
    write_tokens(cfg, &cfg.data_dir.join("server"), trust, &token)?;
    let encryption = crate::secrets_encrypt::Manager::start(
        &store,
        &token.password,
        &cfg.data_dir,
        &cfg.node_name,
        cfg.secrets_encryption,
        &cfg.secrets_encryption_provider,
        encryption_file,
    )
    .await
    .context("secrets encryption")?;
    if let Some(steps) = reset {
        // etcd now runs alone with the bootstrap data checked: the reset
        // is done; the server stops, as RKE2's does.
        for line in steps.lines() {
            info!("{line}");
        }
        println!("{steps}");
        return Ok(());
    }
    let stop = CancellationToken::new();
    tokio::spawn(crate::cluster::run_membership(
        store.clone(),
        own_client_url.clone(),
        stop.clone(),
    ));

    let advertise = cfg.advertise_address.unwrap_or(node_ip);
    let state = rke2_apiserver::ApiState::with_shared_store(
        rke2_apiserver::ApiConfig {
            service_cidr: cfg.service_cidr,
            advertise_address: advertise,
            port: cfg.https_listen_port,
            node_port_range: cfg.service_node_port_range,
            // pods/log, exec, attach: verify nodes against the server CA,
            // authenticate as system:apiserver (system:masters).
            node_client: rke2_apiserver::proxy::NodeClientTls::from_pem(
                trust.server_ca.cert_pem.as_bytes(),
                trust.kube_apiserver_client.cert_pem.as_bytes(),
                trust.kube_apiserver_client.key_pem.as_bytes(),
            )
            .context("building the node API client for pods/log, exec and attach")?,
            tokens: std::sync::Arc::new(
                rke2_apiserver::tokens::TokenIssuer::from_pem(&trust.service_account_key_pem)
                    .map_err(|e| {
                        anyhow::anyhow!("{}: {e}", trust.service_account_key_path.display())
                    })?,
            ),
            pod_security,
            audit,
            // API aggregation: the front-proxy certificate and the CAs
            // extension apiservers are told to trust.
            aggregator: Some(std::sync::Arc::new(
                rke2_apiserver::aggregator::AggregatorConfig {
                    proxy_cert_pem: trust.auth_proxy.cert_pem.clone(),
                    proxy_key_pem: trust.auth_proxy.key_pem.clone(),
                    client_ca_pem: trust.client_ca.cert_pem.clone(),
                    request_header_ca_pem: trust.request_header_ca.cert_pem.clone(),
                    discovered: Default::default(),
                },
            )),
        },
        encryption.store(),
    );
    rke2_apiserver::bootstrap::ensure_builtin_objects(&state)
        .await
        .map_err(|e| anyhow::anyhow!("creating built-in objects: {}", e.message))?;
    // API aggregation: local APIServices, the authentication ConfigMap,
    // and the Available checks of remote APIServices.
    rke2_apiserver::aggregator::ensure_builtin(&state)
        .await
        .map_err(|e| anyhow::anyhow!("creating built-in APIServices: {}", e.message))?;
    tokio::spawn(rke2_apiserver::aggregator::available::run(
        state.clone(),
        stop.clone(),
    ));
    {
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = rke2_apiserver::namespaces::resume_pending(&st).await {
                warn!(error = %e.message, "resuming namespace deletions");
            }
        });
    }
    tokio::spawn(rke2_apiserver::bootstrap::run_registration(
        state.clone(),
        stop.clone(),
    ));

    let bind_ip = cfg
        .bind_address
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(bind_ip, cfg.https_listen_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} for the Kubernetes API"))?;
    let tls = rke2_trust::server_tls_config(
        trust.serving.cert_pem.as_bytes(),
        trust.serving.key_pem.as_bytes(),
        Some(trust.client_ca.cert_pem.as_bytes()),
    )
    .context("building the API TLS configuration")?;
    let api_stop = stop.clone();
    let api = tokio::spawn(rke2_apiserver::serve(
        listener,
        tls.clone(),
        state.clone(),
        async move { api_stop.cancelled().await },
    ));
    info!(%addr, "Kubernetes API listening");

    let local_host = if bind_ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bind_ip
    };
    let local_url = format!(
        "https://{}:{}",
        url_host(&local_host),
        cfg.https_listen_port
    );
    let client = kube_client(
        &local_url,
        trust.server_ca.cert_pem.as_bytes(),
        trust.supervisor.cert_pem.as_bytes(),
        trust.supervisor.key_pem.as_bytes(),
    )
    .await?;

    // This server's node password is recorded before the supervisor
    // serves agents, as an agent's is at its registration: the agent
    // token then cannot obtain a kubelet certificate for this node's name.
    record_node_password(cfg, &client).await?;
    encryption.set_client(client.clone());
    tokio::spawn(encryption.clone().run(stop.clone()));

    // The supervisor (9345) shares the API's serving certificate.
    let sup_addr = SocketAddr::new(bind_ip, cfg.supervisor_port);
    let sup_listener = tokio::net::TcpListener::bind(sup_addr)
        .await
        .with_context(|| format!("listening on {sup_addr} for the supervisor"))?;
    let sup_state = Arc::new(rke2_supervisor::server::SupervisorState {
        server_ca_pem: trust.server_ca.cert_pem.clone(),
        passwd: std::sync::RwLock::new(passwd.clone()),
        cluster_config: crate::cluster::critical_config(cfg),
        tls_dir: trust.tls_dir.clone(),
        info: crate::cluster::cluster_info(
            store.clone(),
            state.clone(),
            client.clone(),
            cfg.data_dir.join("server"),
            trust.server_ca.cert_pem.clone(),
            encryption.clone(),
        ),
    });
    let sup_stop = stop.clone();
    tokio::spawn(rke2_apiserver::serve_router(
        sup_listener,
        tls,
        rke2_supervisor::server::router(sup_state),
        async move { sup_stop.cancelled().await },
    ));
    info!(addr = %sup_addr, "supervisor listening");

    let mode = cfg.write_kubeconfig_mode.unwrap_or(0o600);
    rke2_trust::write_kubeconfig(
        &cfg.write_kubeconfig,
        &local_url,
        trust.server_ca.cert_pem.as_bytes(),
        trust.admin.cert_pem.as_bytes(),
        trust.admin.key_pem.as_bytes(),
        mode,
    )
    .with_context(|| format!("writing the kubeconfig {}", cfg.write_kubeconfig.display()))?;
    info!(path = %cfg.write_kubeconfig.display(), mode = format!("{mode:04o}"), "wrote kubeconfig");

    // Every server snapshots its own member on the schedule (RKE2's), and
    // keeps the ETCDSnapshotFile records of its snapshots; the CRD is
    // there even with scheduled snapshots off, for `rke2 etcd-snapshot`.
    {
        let target = crate::etcd_snapshot::Target {
            cfg: cfg.etcd_snapshot.clone(),
            node: cfg.node_name.clone(),
        };
        let etcd = crate::etcd_snapshot::local::EtcdEndpoint {
            url: own_client_url.clone(),
            ca_pem: trust.etcd_server_ca.cert_pem.clone(),
            cert_pem: trust.etcd_client.cert_pem.clone(),
            key_pem: trust.etcd_client.key_pem.clone(),
        };
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::select! {
                r = crate::etcd_snapshot::records::ensure_crd(&client, Duration::from_secs(600)) => r,
                _ = stop.cancelled() => return,
            } {
                warn!(error = %e, "creating the ETCDSnapshotFile CRD; snapshots are taken without records");
            }
            match snapshot_schedule {
                Some(schedule) => {
                    crate::etcd_snapshot::schedule::run(target, schedule, etcd, client, stop).await
                }
                None => {
                    let s3 = target.open_s3().await.unwrap_or_else(|e| {
                        warn!(error = %e, "S3 snapshot store unavailable");
                        None
                    });
                    target.sync_records(&client, s3.as_ref()).await;
                }
            }
        });
    }

    // The node role acts as this node (`system:node:<name>`), as an
    // agent's does, so the node authorizer and NodeRestriction bound it;
    // the role labels, which a node may not set on itself, are the
    // supervisor's to add (as RKE2's supervisor does).
    let node_client = {
        let (cert, key) = trust
            .client_ca
            .issue(&rke2_trust::LeafSpec::client(
                &format!("system:node:{}", cfg.node_name),
                &["system:nodes"],
            ))
            .context("issuing this server's kubelet client certificate")?;
        kube_client(
            &local_url,
            trust.server_ca.cert_pem.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )
        .await?
    };
    tokio::spawn(label_server_node(
        client.clone(),
        cfg.node_name.clone(),
        stop.clone(),
    ));
    tokio::spawn(crate::cert_monitor::run(
        client.clone(),
        cfg.data_dir.clone(),
        cfg.node_name.clone(),
        stop.clone(),
    ));
    let mut labels = BTreeMap::new();
    labels.extend(cfg.node_labels.iter().cloned());
    // Bundled addons go into the auto-deploy directory unless disabled.
    let manifests_dir = cfg.data_dir.join("server/manifests");
    let addon_values = rke2_controllers::addons::AddonValues {
        cluster_dns: cfg.cluster_dns.to_string(),
        cluster_domain: cfg.cluster_domain.clone(),
        addon_image: rke2_runtime::addon_image::reference(),
    };
    rke2_controllers::addons::write_bundled(&manifests_dir, &cfg.disable, &addon_values)
        .with_context(|| {
            format!(
                "writing bundled addon manifests to {}",
                manifests_dir.display()
            )
        })?;
    let workloads = rke2_node::workloads::Workloads::start(
        node_client.clone(),
        workload_config(cfg, node_ip),
        stop.clone(),
    )
    .await
    .context("starting the container runtime")?;
    // A server runs the bundled addons: their image is made now, in the
    // background, rather than when the first addon pod asks for it. Not on
    // a loopback node (a single-machine test set-up, as for the proxy and
    // the egress rule), where a pod that wants it still gets it.
    if !cfg.disable.iter().any(|d| d == "rke2-coredns") && !node_ip.is_loopback() {
        let image = workloads.addon_image.clone();
        tokio::spawn(async move {
            if let Err(e) = image.ensure().await {
                warn!(error = %e, "making the addon image; retried when a pod needs it");
            }
        });
    }
    let node_cfg = rke2_node::NodeConfig {
        name: cfg.node_name.clone(),
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
        addresses: ips.to_vec(),
        kubelet_version: rke2_apiserver::discovery::git_version(),
        runtime: Some(workloads.cri.clone()),
        pressure: workloads.pressure.clone(),
    };
    // The node API reviews tokens and access under the node's identity.
    let node_api_client = node_client.clone();
    let node = tokio::spawn(rke2_node::run(node_client, node_cfg, stop.clone()));
    if let Some(facts) = service_proxy_facts(cfg, &cfg.node_name, ips) {
        let (cert, key) = trust
            .client_ca
            .issue(&rke2_trust::LeafSpec::client(SERVICE_PROXY_USER, &[]))
            .context("issuing the service proxy's client certificate")?;
        let proxy_client = kube_client(
            &local_url,
            trust.server_ca.cert_pem.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )
        .await?;
        tokio::spawn(rke2_service_proxy::runner::run(
            proxy_client,
            rke2_service_proxy::runner::ProxyConfig::new(facts),
            stop.clone(),
        ));
    }
    // The node API: this server is a node too.
    let mut node_sans = vec![cfg.node_name.clone(), "localhost".to_string()];
    node_sans.extend(ips.iter().map(|i| i.to_string()));
    let (node_cert, node_key) = trust
        .server_ca
        .issue(&rke2_trust::LeafSpec::server(&cfg.node_name, node_sans))
        .context("issuing the node API serving certificate")?;
    spawn_node_api(
        node_ip,
        node_cert.as_bytes(),
        node_key.as_bytes(),
        trust.client_ca.cert_pem.as_bytes(),
        rke2_node::api::NodeApiConfig {
            cri: Some(workloads.cri.clone()),
            node_name: cfg.node_name.clone(),
            data_dir: cfg.data_dir.clone(),
            webhook: Some(rke2_node::api::auth::Webhook::new(
                node_api_client,
                cfg.node_name.clone(),
            )),
            metrics: Some(crate::cert_monitor::metrics_source(cfg.data_dir.clone())),
        },
        stop.clone(),
    )?;
    // The control plane stops first, on its own token, while the
    // apiserver still answers: its leaders release their leases.
    let control_plane_stop = CancellationToken::new();
    let control_plane_done = spawn_control_plane(
        ControlPlane {
            url: local_url.clone(),
            ca_pem: trust.server_ca.cert_pem.clone(),
            cert_pem: trust.supervisor.cert_pem.clone(),
            key_pem: trust.supervisor.key_pem.clone(),
            identities: ControlPlaneIdentities::issue(&trust.client_ca)?,
            node_name: cfg.node_name.clone(),
            store: store.clone(),
            manifests: manifests_dir,
            disabled_addons: (cfg.disable.clone(), addon_values),
            cluster_cidr: cfg.cluster_cidr,
            signers: rke2_controllers::csr_signing::Signers {
                client_ca: trust.client_ca.clone(),
                server_ca: trust.server_ca.clone(),
                duration: rke2_controllers::csr_signing::CLUSTER_SIGNING_DURATION,
            },
            enable_servicelb: cfg.enable_servicelb,
            hpa: cfg.hpa.clone(),
            local_path: rke2_controllers::local_path::Settings {
                path: cfg.default_local_storage_path.clone(),
                helper_image: rke2_runtime::addon_image::reference(),
            },
            helm_jobs: rke2_controllers::helm::JobSettings {
                default_image: rke2_runtime::addon_image::reference(),
                // A bootstrap chart's Job runs on a server's host network
                // and talks to the apiserver there, as upstream's
                // KUBERNETES_SERVICE_HOST=127.0.0.1 (this server's own
                // address when it listens on one).
                bootstrap_api: (
                    cfg.bind_address
                        .filter(|b| !b.is_unspecified())
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "127.0.0.1".into()),
                    cfg.https_listen_port,
                ),
            },
        },
        control_plane_stop.clone(),
    )?;
    info!(elapsed = ?started.elapsed(), "rke2 server is up");
    crate::systemd::ready("rke2 server is up");

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM received; shutting down"),
        _ = sigint.recv() => info!("SIGINT received; shutting down"),
    }
    crate::systemd::stopping();
    control_plane_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), control_plane_done).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
    workloads.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    Ok(())
}

/// What the leader-elected loops need to run.
struct ControlPlane {
    url: String,
    ca_pem: String,
    /// The supervisor's own (`system:masters`) certificate: for the loops
    /// that are RKE2's supervisor rather than kube-controller-manager
    /// (addons, server removal), as RKE2 runs them with admin rights.
    cert_pem: String,
    key_pem: String,
    identities: ControlPlaneIdentities,
    node_name: String,
    store: Store,
    manifests: PathBuf,
    /// `disable`d addons and what their manifests are filled with: their
    /// objects are deleted.
    disabled_addons: (Vec<String>, rke2_controllers::addons::AddonValues),
    cluster_cidr: ipnet::IpNet,
    /// The CAs that sign approved CertificateSigningRequests.
    signers: rke2_controllers::csr_signing::Signers,
    /// `enable-servicelb`: run ServiceLB.
    enable_servicelb: bool,
    /// `kube-controller-manager-arg`'s HPA settings.
    hpa: rke2_apimachinery::autoscaling::HpaSettings,
    /// The built-in local-path provisioner (off with `disable: local-storage`).
    local_path: rke2_controllers::local_path::Settings,
    /// What the HelmChart controller's Jobs run with.
    helm_jobs: rke2_controllers::helm::JobSettings,
}

/// Worker threads of the control-plane runtime.
const CONTROL_PLANE_THREADS: usize = 2;

/// The service accounts of kube-system that upstream's controllers act as
/// (kube-controller-manager's `--use-service-account-credentials`, which
/// RKE2 sets); the bootstrap policy binds each its
/// `system:controller:<name>` role and the informers' reads.
use rke2_apiserver::bootstrap_policy::CONTROLLER_ACCOUNTS;

/// Client certificates (PEM pairs) of the control plane's own identities,
/// issued in memory by the client CA at every start: the scheduler as
/// `system:kube-scheduler`, leader election of the controllers as
/// `system:kube-controller-manager`, each controller as its service
/// account (`system:serviceaccount:kube-system:<name>` in the account's
/// groups) for what it writes and gets, and as kube-controller-manager for
/// its lists and watches (`informer_reads`, as upstream's shared
/// informers), so RBAC's bootstrap policy is what lets them work.
struct ControlPlaneIdentities {
    scheduler: (String, String),
    controller_manager: (String, String),
    controllers: std::collections::HashMap<&'static str, (String, String)>,
}

impl ControlPlaneIdentities {
    fn issue(ca: &rke2_trust::CertAuthority) -> Result<Self> {
        let issue = |cn: &str, orgs: &[&str]| {
            ca.issue(&rke2_trust::LeafSpec::client(cn, orgs))
                .with_context(|| format!("issuing the client certificate of {cn}"))
        };
        let mut controllers = std::collections::HashMap::new();
        for name in CONTROLLER_ACCOUNTS {
            controllers.insert(
                *name,
                issue(
                    &format!("system:serviceaccount:kube-system:{name}"),
                    &[
                        "system:serviceaccounts",
                        "system:serviceaccounts:kube-system",
                    ],
                )?,
            );
        }
        Ok(Self {
            scheduler: issue("system:kube-scheduler", &[])?,
            controller_manager: issue("system:kube-controller-manager", &[])?,
            controllers,
        })
    }
}

/// API clients of the control plane, one per identity.
#[derive(Clone)]
struct ControlPlaneClients {
    supervisor: kube::Client,
    scheduler: kube::Client,
    controller_manager: kube::Client,
    controllers: std::collections::HashMap<&'static str, kube::Client>,
}

impl ControlPlaneClients {
    async fn connect(cp: &ControlPlane) -> Result<Self> {
        let ca = cp.ca_pem.as_bytes();
        let client = |pair: &(String, String)| {
            let (cert, key) = pair.clone();
            async move { kube_client(&cp.url, ca, cert.as_bytes(), key.as_bytes()).await }
        };
        let controller_manager = client(&cp.identities.controller_manager).await?;
        let mut controllers = std::collections::HashMap::new();
        for (name, pair) in &cp.identities.controllers {
            controllers.insert(
                *name,
                crate::informer_reads::reads_as(controller_manager.clone(), client(pair).await?),
            );
        }
        Ok(Self {
            supervisor: client(&(cp.cert_pem.clone(), cp.key_pem.clone())).await?,
            scheduler: client(&cp.identities.scheduler).await?,
            controller_manager,
            controllers,
        })
    }

    /// The client of a controller's service account.
    fn of(&self, account: &str) -> kube::Client {
        self.controllers
            .get(account)
            .cloned()
            .unwrap_or_else(|| panic!("no identity for controller account {account}"))
    }
}

/// Starts the scheduler and the controllers on their own runtime, on
/// threads of their own, with their own API client: upstream runs them as
/// processes apart from kube-apiserver, and here too a busy scheduler or
/// controller pass must not hold up the apiserver's request handling on
/// shared worker threads (the OS shares the CPU between the two runtimes'
/// threads instead). They stop with `stop`; the returned receiver
/// resolves once they have (leases released).
fn spawn_control_plane(
    cp: ControlPlane,
    stop: CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CONTROL_PLANE_THREADS)
        .thread_name("control-plane")
        .enable_all()
        .build()
        .context("starting the control-plane runtime")?;
    std::thread::Builder::new()
        .name("control-plane".into())
        .spawn(move || {
            runtime.block_on(async move {
                let clients = match ControlPlaneClients::connect(&cp).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("control plane not started: {e:#}");
                        return;
                    }
                };
                tokio::join!(
                    run_scheduler(
                        clients.scheduler.clone(),
                        cp.node_name.clone(),
                        stop.clone()
                    ),
                    run_controllers(clients, cp, stop),
                );
            });
            let _ = done_tx.send(());
        })
        .context("starting the control-plane thread")?;
    Ok(done_rx)
}

/// Runs the leader-elected control-plane loops until `stop`: one server at
/// a time runs all of them; another takes over within ~10 s of its death.
async fn run_controllers(clients: ControlPlaneClients, cp: ControlPlane, stop: CancellationToken) {
    let ControlPlane {
        ca_pem: root_ca_pem,
        node_name,
        store,
        manifests,
        disabled_addons,
        cluster_cidr,
        signers,
        enable_servicelb,
        hpa: hpa_settings,
        local_path,
        helm_jobs,
        ..
    } = cp;
    let identity = format!("{node_name}_{:08x}", rand::random::<u32>());
    rke2_controllers::leader::run_elected(
        clients.controller_manager.clone(),
        rke2_controllers::CONTROLLERS_LEASE.to_string(),
        identity,
        rke2_controllers::leader::ElectionTiming::default(),
        stop,
        move |lead: CancellationToken| {
            let clients = clients.clone();
            let client = clients.supervisor.clone();
            let store = store.clone();
            let manifests = manifests.clone();
            let disabled_addons = disabled_addons.clone();
            let node_name = node_name.clone();
            let root_ca_pem = root_ca_pem.clone();
            let signers = signers.clone();
            let helm_jobs = helm_jobs.clone();
            let local_path = local_path.clone();
            let hpa_settings = hpa_settings.clone();
            async move {
                let mut loops = tokio::task::JoinSet::new();
                loops.spawn(rke2_controllers::server_removal::run(
                    client.clone(),
                    Arc::new(crate::cluster::StoreMembership(store)),
                    node_name,
                    rke2_controllers::server_removal::RemovalConfig::default(),
                    lead.clone(),
                ));
                loops.spawn(rke2_controllers::node_lifecycle::run(
                    clients.of("node-controller"),
                    rke2_controllers::node_lifecycle::NodeLifecycleConfig::default(),
                    lead.clone(),
                ));
                loops.spawn(rke2_controllers::node_ipam::run(
                    clients.of("node-controller"),
                    cluster_cidr,
                    lead.clone(),
                ));
                loops.spawn(rke2_controllers::addons::run(
                    client.clone(),
                    manifests,
                    lead.clone(),
                ));
                // The HelmChart controller (RKE2's supervisor runs it with
                // admin rights): its CRDs first, then the loop.
                {
                    let client = client.clone();
                    let lead = lead.clone();
                    loops.spawn(async move {
                        rke2_controllers::helm::crd::ensure(client.clone(), lead.clone()).await;
                        rke2_controllers::helm::run(client, helm_jobs, lead).await;
                    });
                }
                let run_local_path = !disabled_addons.0.iter().any(|d| d == "local-storage");
                loops.spawn(rke2_controllers::addons::remove_disabled(
                    client.clone(),
                    disabled_addons.0,
                    disabled_addons.1,
                    lead.clone(),
                ));
                use rke2_controllers as c;
                loops.spawn(c::replicaset::run(
                    clients.of("replicaset-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::deployment::run(
                    clients.of("deployment-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::daemonset::run(
                    clients.of("daemon-set-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::statefulset::run(
                    clients.of("statefulset-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::job::run(clients.of("job-controller"), lead.clone()));
                loops.spawn(c::cronjob::run(
                    clients.of("cronjob-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::job::run_ttl(
                    clients.of("ttl-after-finished-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::disruption::run(
                    clients.of("disruption-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::hpa::run(
                    clients.of("horizontal-pod-autoscaler"),
                    hpa_settings.clone(),
                    lead.clone(),
                ));
                loops.spawn(c::resourcequota::run(
                    clients.of("resourcequota-controller"),
                    lead.clone(),
                ));
                if enable_servicelb {
                    loops.spawn(c::servicelb::run(
                        clients.of("service-controller"),
                        lead.clone(),
                    ));
                }
                loops.spawn(c::garbage_collector::run(
                    clients.of("generic-garbage-collector"),
                    lead.clone(),
                ));
                loops.spawn(c::serviceaccount::run(
                    clients.of("service-account-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::root_ca::run(
                    clients.of("root-ca-cert-publisher"),
                    root_ca_pem,
                    lead.clone(),
                ));
                // Upstream's taint eviction runs under the node controller's account.
                loops.spawn(c::taint_eviction::run(
                    clients.of("node-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::clusterrole_aggregation::run(
                    clients.of("clusterrole-aggregation-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::endpoints::run(
                    c::endpoints::EndpointsClients {
                        slices: clients.of("endpointslice-controller"),
                        endpoints: clients.of("endpoint-controller"),
                    },
                    c::endpoints::EndpointsConfig::default(),
                    lead.clone(),
                ));
                loops.spawn(c::csr_signing::run(
                    clients.of("certificate-controller"),
                    signers,
                    lead.clone(),
                ));
                loops.spawn(c::persistent_volume::run(
                    clients.of("persistent-volume-binder"),
                    lead.clone(),
                ));
                loops.spawn(c::volume_protection::run_claims(
                    clients.of("pvc-protection-controller"),
                    lead.clone(),
                ));
                loops.spawn(c::volume_protection::run_volumes(
                    clients.of("pv-protection-controller"),
                    lead.clone(),
                ));
                // k3s's `local-storage` component, run by the supervisor.
                if run_local_path {
                    loops.spawn(c::local_path::run(client.clone(), local_path, lead.clone()));
                }
                while loops.join_next().await.is_some() {}
            }
        },
    )
    .await;
}

/// Runs the scheduler under its own Lease (`kube-scheduler`) until `stop`.
async fn run_scheduler(client: kube::Client, node_name: String, stop: CancellationToken) {
    let identity = format!("{node_name}_{:08x}", rand::random::<u32>());
    rke2_controllers::leader::run_elected(
        client.clone(),
        rke2_scheduler::SCHEDULER_LEASE.to_string(),
        identity,
        rke2_controllers::leader::ElectionTiming::default(),
        stop,
        move |lead: CancellationToken| rke2_scheduler::run(client.clone(), lead),
    )
    .await;
}

/// The service proxy's user (kube-proxy's, which the bootstrap policy
/// binds to `system:node-proxier`).
pub const SERVICE_PROXY_USER: &str = "system:kube-proxy";

/// What the service proxy needs to know about this node, or `None` when
/// it does not run here: `disable-kube-proxy` is set, or the node is on a
/// loopback address (a single-machine test set-up whose nodes share the
/// machine's network namespace and so cannot each own its tables).
pub fn service_proxy_facts(
    cfg: &Config,
    node_name: &str,
    ips: &[IpAddr],
) -> Option<rke2_service_proxy::model::NodeFacts> {
    if cfg.disable_kube_proxy {
        info!("disable-kube-proxy is set: no service proxy on this node");
        return None;
    }
    if ips.iter().all(|ip| ip.is_loopback()) {
        info!("node on a loopback address: no service proxy (it would share the machine's tables)");
        return None;
    }
    let v4 = |n: &ipnet::IpNet| match n {
        ipnet::IpNet::V4(n) => Some(*n),
        ipnet::IpNet::V6(_) => None,
    };
    Some(rke2_service_proxy::model::NodeFacts {
        name: node_name.to_string(),
        addresses: ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) if !a.is_loopback() => Some(*a),
                _ => None,
            })
            .collect(),
        cluster_cidr: v4(&cfg.cluster_cidr),
        service_cidr: v4(&cfg.service_cidr),
    })
}

/// What the node's workload side (runtime, pod network, pods) needs from
/// the config; the same for servers and agents.
pub fn workload_config(cfg: &Config, node_ip: IpAddr) -> rke2_node::workloads::WorkloadConfig {
    let first = rke2_config::nth_address(&cfg.service_cidr, 1);
    rke2_node::workloads::WorkloadConfig {
        agent_dir: cfg.data_dir.join("agent"),
        node_name: cfg.node_name.clone(),
        node_ip,
        pause_image: cfg.pause_image.clone(),
        cluster_dns: cfg.cluster_dns,
        cluster_domain: cfg.cluster_domain.clone(),
        resolv_conf: cfg.resolv_conf.clone(),
        cluster_cidr: cfg.cluster_cidr,
        kubernetes_service: Some((first.to_string(), 443)),
        eviction: cfg.eviction.clone(),
        pressure: Default::default(),
    }
}

/// The node API on `<ip>:10250` (HTTPS with the node's serving
/// certificate, clients from the client CA or with a bearer token):
/// `/healthz`, container logs, exec and attach, stats and resource
/// metrics, as `api` says (503 for those without a runtime).
pub fn spawn_node_api(
    ip: IpAddr,
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    api: rke2_node::api::NodeApiConfig,
    stop: CancellationToken,
) -> Result<()> {
    let tls = rke2_trust::server_tls_config(cert_pem, key_pem, Some(client_ca_pem))
        .context("node API TLS configuration")?;
    let addr = SocketAddr::new(ip, 10250);
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                warn!(%addr, error = %e, "node API cannot listen");
                return;
            }
        };
        let app = rke2_node::api::router_with(api);
        rke2_node::api::serve(listener, tls, app, async move { stop.cancelled().await }).await;
    });
    Ok(())
}

/// The labels that say a Node is a server (RKE2's: control plane, etcd
/// and the legacy master role).
pub const SERVER_ROLE_LABELS: [&str; 3] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/etcd",
    "node-role.kubernetes.io/master",
];

/// Adds the server role labels to this server's Node once the node role
/// registered it (NodeRestriction keeps a node from labelling itself so),
/// and again whenever they are found missing, until `stop`.
async fn label_server_node(client: kube::Client, node: String, stop: CancellationToken) {
    use kube::api::{Patch, PatchParams};
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let wanted: BTreeMap<String, String> = SERVER_ROLE_LABELS
        .iter()
        .map(|l| (l.to_string(), "true".to_string()))
        .collect();
    loop {
        let labelled = match nodes.get_opt(&node).await {
            Ok(Some(n)) => {
                let have = n.metadata.labels.unwrap_or_default();
                if wanted.iter().all(|(k, v)| have.get(k) == Some(v)) {
                    true
                } else {
                    let patch = serde_json::json!({"metadata": {"labels": wanted}});
                    match nodes
                        .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            info!(node = %node, "server role labels set");
                            true
                        }
                        Err(e) => {
                            debug!(error = %e, "labelling this server's Node; retrying");
                            false
                        }
                    }
                }
            }
            Ok(None) => false,
            Err(e) => {
                debug!(error = %e, "reading this server's Node; retrying");
                false
            }
        };
        // Quick until the Node is labelled, then a slow check.
        let every = if labelled {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Records this server's node password (`<node>.node-password.rke2`),
/// creating the password file on first start. Another machine that
/// registered this name first keeps it (a warning, as in k3s: this server
/// itself needs no kubelet certificate from the supervisor).
async fn record_node_password(cfg: &Config, client: &kube::Client) -> Result<()> {
    let password = crate::agent::read_or_create(&crate::agent::node_password_path(cfg), || {
        hex::encode(rand::random::<[u8; 16]>())
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match crate::cluster::check_node_password(client, &cfg.node_name, &password).await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains("already registered") => {
                warn!(node = %cfg.node_name, "{e}");
                return Ok(());
            }
            Err(e) if std::time::Instant::now() < deadline => {
                debug!(error = %e, "recording the node password; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("recording this server's node password: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_first_start_is_discarded_and_a_finished_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let etcd_data = dir.path().join("db/etcd");
        std::fs::create_dir_all(etcd_data.join("member/wal")).unwrap();
        std::fs::write(etcd_data.join("member/wal/0.wal"), b"x").unwrap();
        // No marker: a cluster that once was healthy keeps its data.
        discard_interrupted_first_start(&etcd_data).unwrap();
        assert!(etcd_data.join("member/wal/0.wal").exists());
        // A marker left by a first start that never saw etcd healthy.
        std::fs::write(first_start_marker(&etcd_data), b"").unwrap();
        discard_interrupted_first_start(&etcd_data).unwrap();
        assert!(!etcd_data.join("member").exists());
        assert!(!first_start_marker(&etcd_data).exists());
        assert!(etcd_data.exists(), "only etcd's member dir goes");
    }

    /// A generated token survives a start killed before `write_tokens`:
    /// the bootstrap data etcd may already hold is sealed with it.
    #[test]
    fn a_generated_token_is_kept_before_etcd_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_string();
        let load = |extra: &[&str]| {
            let mut args: Vec<std::ffi::OsString> = ["--config", "/dev/null", "--node-name", "n1"]
                .iter()
                .map(Into::into)
                .collect();
            args.push("--data-dir".into());
            args.push(data.clone().into());
            args.extend(extra.iter().map(Into::into));
            rke2_config::load(rke2_config::Role::Server, &args, &Default::default())
                .unwrap()
                .config
        };
        let cfg = load(&[]);
        let trust = rke2_trust::ensure_server_trust(&ServerTrustParams {
            data_dir: cfg.data_dir.clone(),
            node_name: "n1".into(),
            serving_sans: vec!["n1".into()],
            etcd_sans: vec!["n1".into()],
        })
        .unwrap();
        let server_dir = cfg.data_dir.join("server");
        let first = resolve_token(&cfg, &server_dir, &trust).unwrap();
        let path = server_dir.join("token");
        let stored = std::fs::read_to_string(&path).unwrap();
        assert_eq!(stored.trim(), first.to_string());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The restarted start reads it instead of generating another.
        let again = resolve_token(&cfg, &server_dir, &trust).unwrap();
        assert_eq!(again.password, first.password);
        // A given token is not written before etcd confirmed it.
        let given = resolve_token(&load(&["--token", "given-pw"]), &server_dir, &trust).unwrap();
        assert_eq!(given.password, "given-pw");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), stored);
    }
}
