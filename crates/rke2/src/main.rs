//! The `rke2` binary: `rke2 server`, `rke2 agent`, and the addons'
//! subcommands (`rke2 dns`, `rke2 dns-autoscaler`, `rke2 ingress-controller`,
//! `rke2 metrics-server`, `rke2 helm-job`).

mod agent;
mod cert_monitor;
mod certificate;
mod cluster;
mod dns;
mod dns_autoscaler;
mod etcd_snapshot;
mod helm_job;
mod informer_reads;
mod ingress;
mod metrics_server;
mod preflight;
mod server;
mod status;
mod systemd;
mod token_cmd;

use std::collections::HashMap;
use std::ffi::OsString;

use rke2_config::{ConfigError, Role};

// glibc's allocator returned and re-faulted pages on every burst of API
// requests (page faults and malloc were a fifth of the server's CPU under
// bench/api.sh's create load); mimalloc keeps per-thread free lists.
// Built with `no_thp`: mimalloc 3 otherwise asks for transparent huge pages,
// and every 2 MiB region it touches becomes resident (idle server RSS 66 MB
// with them, 38 MB without).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version printed by `rke2 --version`.
pub const VERSION: &str = concat!("v1.35.0+rke2r1 (rke2-rs ", env!("CARGO_PKG_VERSION"), ")");

fn usage() -> String {
    format!(
        "rke2 {VERSION}\n\nUSAGE:\n  rke2 server [flags]   run a server: etcd, the Kubernetes API and the control plane\n  rke2 agent [flags]    run an agent node\n  rke2 killall [--data-dir DIR]\n                        stop every container this node started and unmount its volumes\n  rke2 etcd-snapshot <save|ls|list|delete|prune> [flags]\n                        take, list, delete and prune etcd snapshots (local and S3)\n  rke2 certificate <check|rotate> [flags]\n                        show certificate expiry; back up and remove leaf certificates to renew them at the next start\n  rke2 token rotate --token OLD --new-token NEW [--server URL]\n                        rotate the cluster token (then restart every server with it)\n  rke2 status [-o json] [server flags]\n                        this server's view of the cluster: etcd, apiservers, supervisors, certificates, snapshots, nodes\n  rke2 dns [flags]      serve cluster DNS (the rke2-coredns addon's pods run this)\n  rke2 dns-autoscaler [flags]\n                        scale cluster DNS with the nodes (the rke2-coredns addon's autoscaler runs this)\n  rke2 helm-job <install|delete>\n                        run helm for a HelmChart (its helm-install-/helm-delete- Jobs run this)\n  rke2 ingress-controller [flags]\n                        route HTTP and HTTPS by Ingress rules (the rke2-ingress-nginx addon's pods run this)\n  rke2 metrics-server [flags]\n                        serve resource metrics for kubectl top (the rke2-metrics-server addon runs this)\n  rke2 local-path-helper teardown <dir>\n                        remove a local-path volume's directory (the provisioner's helper pods run this)\n  rke2 --version\n\nRun `rke2 server --help` for the server's flags."
    )
}

/// `rke2 local-path-helper teardown <dir>`: what the local-path
/// provisioner's helper pod runs on the volume's node.
fn local_path_helper(args: &[OsString]) -> i32 {
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    match args.as_slice() {
        ["teardown", dir] => {
            match rke2_controllers::local_path::teardown(std::path::Path::new(dir)) {
                Ok(()) => {
                    println!("removed {dir}");
                    0
                }
                Err(e) => {
                    eprintln!("rke2 local-path-helper: {e}");
                    1
                }
            }
        }
        _ => {
            eprintln!("usage: rke2 local-path-helper teardown <dir>");
            2
        }
    }
}

/// Raises the soft limit on open files to the hard one: every client watch
/// and every node is a connection, and the default soft limit (1024) is
/// reached long before the hard one (RKE2's unit sets `LimitNOFILE` for
/// the same reason).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        _ => {}
    }
}

/// The API client of an addon subcommand (`rke2 dns`, `rke2
/// dns-autoscaler`): from `kubeconfig` when given, else the pod's
/// in-cluster service account (or `$KUBECONFIG`, `~/.kube/config`).
async fn addon_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig and no in-cluster configuration")?,
    };
    let mut config = config;
    config.default_retry = false;
    kube::Client::try_from(config).context("building the API client")
}

fn main() {
    systemd::take_socket();
    let args: Vec<OsString> = std::env::args_os().collect();
    let sub = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let rest = args.get(2..).map(|r| r.to_vec()).unwrap_or_default();
    let role = match sub {
        "--version" | "-v" | "version" => {
            println!("rke2 version {VERSION}");
            return;
        }
        "server" => Role::Server,
        "agent" => Role::Agent,
        "killall" => std::process::exit(killall(&rest)),
        "etcd-snapshot" => std::process::exit(etcd_snapshot::cli::main(&rest)),
        "certificate" => std::process::exit(certificate::main(&rest)),
        "token" => std::process::exit(token_cmd::main(&rest)),
        "status" => std::process::exit(status::main(&rest)),
        "dns" => std::process::exit(dns::main(&rest)),
        "dns-autoscaler" => std::process::exit(dns_autoscaler::main(&rest)),
        "helm-job" => std::process::exit(helm_job::main(&rest)),
        "local-path-helper" => std::process::exit(local_path_helper(&rest)),
        "metrics-server" => std::process::exit(metrics_server::main(&rest)),
        "ingress-controller" => std::process::exit(ingress::main(&rest)),
        "" | "--help" | "-h" | "help" => {
            println!("{}", usage());
            return;
        }
        other => {
            eprintln!("rke2: unknown command {other:?}\n\n{}", usage());
            std::process::exit(2);
        }
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let loaded = match rke2_config::load(role, &rest, &env) {
        Ok(l) => l,
        Err(ConfigError::Display(text)) => {
            println!("{text}");
            return;
        }
        Err(e) => {
            eprintln!("rke2: {e}");
            std::process::exit(e.exit_code());
        }
    };
    init_logging(loaded.config.debug);
    raise_open_files_limit();
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // One crypto provider for the whole process: kube, tonic and our own
    // listeners all pick this up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match role {
            Role::Server => match server::run(loaded.config).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("rke2: {e:#}");
                    preflight::exit_code(&e)
                }
            },
            Role::Agent => match agent::run(loaded.config).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("rke2: {e:#}");
                    preflight::exit_code(&e)
                }
            },
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}

/// `rke2 killall`: containers outlive `rke2 server`/`agent` on purpose
/// (a restart adopts them), as with RKE2's `rke2-killall.sh`; this ends
/// them. Only processes recorded in the node's own containerd state are
/// signalled. Run it after the server or agent has stopped.
fn killall(args: &[OsString]) -> i32 {
    let mut data_dir = std::path::PathBuf::from(rke2_config::DEFAULT_DATA_DIR);
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        match a {
            "--data-dir" | "-d" => match it.next() {
                Some(v) => data_dir = v.into(),
                None => {
                    eprintln!("rke2 killall: --data-dir needs a value");
                    return 2;
                }
            },
            other if other.starts_with("--data-dir=") => {
                data_dir = other.trim_start_matches("--data-dir=").into();
            }
            other => {
                eprintln!(
                    "rke2 killall: unknown argument {other:?} (usage: rke2 killall [--data-dir DIR])"
                );
                return 2;
            }
        }
    }
    let agent = data_dir.join("agent");
    let done = rke2_runtime::cleanup::kill_all(
        &agent.join("containerd"),
        &[agent.join("containerd"), agent.join("pods")],
    );
    let rules = rke2_node::network::remove_egress_masquerade().unwrap_or_else(|e| {
        eprintln!("rke2 killall: removing the pod egress rule: {e}");
        0
    });
    // The service proxy's rules, all in one table.
    let proxy_tables = match rke2_service_proxy::remove_table() {
        Ok(existed) => usize::from(existed),
        Err(e) => {
            eprintln!("rke2 killall: removing the service proxy's nftables table: {e}");
            0
        }
    };
    // Routes and bridge last: the pods' network namespaces, unmounted
    // above, held the other ends of the bridge's veths.
    let (routes, bridge) = rke2_node::network::remove_pod_network(rke2_node::workloads::BRIDGE)
        .unwrap_or_else(|e| {
            eprintln!("rke2 killall: removing the pod routes and bridge: {e}");
            (0, false)
        });
    println!(
        "rke2 killall: {} processes killed, {} mounts removed under {}, {} egress rules removed, {} service proxy tables removed, {} pod routes removed, bridge {} {}",
        done.killed.len(),
        done.unmounted.len(),
        agent.display(),
        rules,
        proxy_tables,
        routes,
        rke2_node::workloads::BRIDGE,
        if bridge { "removed" } else { "absent" }
    );
    0
}

fn init_logging(debug: bool) {
    let default = if debug {
        "debug,h2=info,hyper=info,tower=info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RKE2_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
