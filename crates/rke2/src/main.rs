//! The `rke2` binary: `rke2 server` (and, later, `rke2 agent`).

mod agent;
mod cluster;
mod server;

use std::collections::HashMap;
use std::ffi::OsString;

use rke2_config::{ConfigError, Role};

/// The version printed by `rke2 --version`.
pub const VERSION: &str = concat!("v1.35.0+rke2r1 (rke2-rs ", env!("CARGO_PKG_VERSION"), ")");

fn usage() -> String {
    format!(
        "rke2 {VERSION}\n\nUSAGE:\n  rke2 server [flags]   run a server: etcd, the Kubernetes API and the control plane\n  rke2 agent [flags]    run an agent node\n  rke2 --version\n\nRun `rke2 server --help` for the server's flags."
    )
}

fn main() {
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
                    1
                }
            },
            Role::Agent => match agent::run(loaded.config).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("rke2: {e:#}");
                    1
                }
            },
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
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
