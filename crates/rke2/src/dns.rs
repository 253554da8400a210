//! `rke2 dns`: the cluster DNS server, what the `rke2-coredns` addon's pods
//! run (see `rke2-dns`). It reads no config.yaml: its settings are flags,
//! as a container's arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The flags of `rke2 dns`.
#[derive(Parser, Debug)]
#[command(
    name = "rke2 dns",
    about = "Serve cluster DNS (Kubernetes DNS-based service discovery) from a watch of Services and EndpointSlices; forward other names to the resolvers of --resolv-conf"
)]
pub struct Args {
    /// Address to serve DNS on, over UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain served.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// resolv.conf whose nameservers get every name outside the cluster domain.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// kubeconfig to reach the API; without it, the in-cluster service
    /// account (or $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address of the liveness endpoint `GET /health` ("" to disable).
    #[arg(long, default_value = "0.0.0.0:8080", value_parser = optional_addr)]
    health_listen: MaybeAddr,
    /// Address of the readiness endpoint `GET /ready`, 200 once the
    /// first lists are in ("" to disable).
    #[arg(long, default_value = "0.0.0.0:8181", value_parser = optional_addr)]
    ready_listen: MaybeAddr,
    /// Log at debug level.
    #[arg(long)]
    debug: bool,
}

/// An address, or none when the flag is given as "" (clap would read a
/// bare `Option` as "the flag may be absent").
#[derive(Debug, Clone, Copy)]
struct MaybeAddr(Option<SocketAddr>);

fn optional_addr(s: &str) -> Result<MaybeAddr, String> {
    if s.is_empty() {
        return Ok(MaybeAddr(None));
    }
    s.parse()
        .map(|a| MaybeAddr(Some(a)))
        .map_err(|e| format!("{e}"))
}

/// Runs `rke2 dns` with the arguments after the subcommand; the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let args = match Args::try_parse_from(
        std::iter::once(std::ffi::OsString::from("rke2 dns")).chain(args.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    crate::init_logging(args.debug);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 dns: starting the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(async move {
        match run(args).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("rke2 dns: {e:#}");
                1
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

async fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = crate::addon_client(args.kubeconfig.as_deref()).await?;
    let stop = CancellationToken::new();
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let s = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        s.cancel();
    });
    rke2_dns::run(
        rke2_dns::Config {
            listen: args.listen,
            cluster_domain: args.cluster_domain,
            resolv_conf: args.resolv_conf,
            health_listen: args.health_listen.0,
            ready_listen: args.ready_listen.0,
            udp_workers: 2,
        },
        client,
        stop,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_with_their_defaults_and_empty_addresses() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["rke2 dns"]).unwrap();
        assert_eq!(a.listen.to_string(), "0.0.0.0:53");
        assert_eq!(a.cluster_domain, "cluster.local");
        assert_eq!(a.health_listen.0.unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(a.ready_listen.0.unwrap().to_string(), "0.0.0.0:8181");
        let a =
            Args::try_parse_from(["rke2 dns", "--health-listen=", "--ready-listen=127.0.0.1:9"])
                .unwrap();
        assert!(a.health_listen.0.is_none());
        assert_eq!(a.ready_listen.0.unwrap().to_string(), "127.0.0.1:9");
        assert!(Args::try_parse_from(["rke2 dns", "--listen=nope"]).is_err());
    }
}
