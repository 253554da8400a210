//! `rke2 metrics-server`: the resource metrics server, what the
//! `rke2-metrics-server` addon's pod runs (see `rke2-metrics-server`).
//! Flags follow metrics-server's where they overlap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Where a pod finds its ServiceAccount's token and CA.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The flags of `rke2 metrics-server`.
#[derive(Parser, Debug)]
#[command(
    name = "rke2 metrics-server",
    about = "Scrape every node's /metrics/resource and serve metrics.k8s.io/v1beta1 (kubectl top) behind the API aggregator"
)]
pub struct Args {
    /// Address of the HTTPS listener.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// Port of the HTTPS listener.
    #[arg(long, default_value_t = 10250)]
    secure_port: u16,
    /// How often nodes are scraped (a Go-style duration: 15s, 1m).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    metric_resolution: Duration,
    /// How long a node may take to answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    kubelet_request_timeout: Duration,
    /// Node address types to try, in order.
    #[arg(
        long,
        default_value = "InternalIP,ExternalIP,Hostname",
        value_delimiter = ','
    )]
    kubelet_preferred_address_types: Vec<String>,
    /// Node API port.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Use the port each Node publishes (`daemonEndpoints`) instead of
    /// --kubelet-port.
    #[arg(long)]
    kubelet_use_node_status_port: bool,
    /// CA of node serving certificates (default: the ServiceAccount's ca.crt).
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// Do not verify node serving certificates.
    #[arg(long)]
    kubelet_insecure_tls: bool,
    /// Bearer token file sent to nodes (default: the ServiceAccount's token).
    #[arg(long)]
    kubelet_token_file: Option<PathBuf>,
    /// kubeconfig to reach the API; without it, the in-cluster service
    /// account (or $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Accepted for compatibility with metrics-server's arguments; the
    /// serving certificate is kept in memory.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Log at debug level.
    #[arg(long)]
    debug: bool,
    /// Log verbosity as metrics-server's `--v`: 4 and above is debug.
    #[arg(long = "v", short = 'v', default_value_t = 0)]
    verbosity: u8,
    /// metrics-server's serving TLS cipher suites: accepted and ignored
    /// (a warning says so), as are the flags below, so charts passing
    /// them keep working.
    #[arg(long, hide = true)]
    tls_cipher_suites: Option<String>,
    /// Ignored (see `tls_cipher_suites`).
    #[arg(long, hide = true)]
    tls_min_version: Option<String>,
    /// Ignored (see `tls_cipher_suites`): `/livez`, `/readyz` and
    /// `/healthz` are always open.
    #[arg(long, hide = true)]
    authorization_always_allow_paths: Option<String>,
    /// Ignored (see `tls_cipher_suites`): logs go to stderr.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    logtostderr: Option<String>,
}

impl Args {
    /// The ignored flags that were given.
    fn ignored(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.tls_cipher_suites.is_some() {
            out.push("--tls-cipher-suites");
        }
        if self.tls_min_version.is_some() {
            out.push("--tls-min-version");
        }
        if self.authorization_always_allow_paths.is_some() {
            out.push("--authorization-always-allow-paths");
        }
        if self.logtostderr.is_some() {
            out.push("--logtostderr");
        }
        out
    }
}

/// `15s`, `1m`, `500ms`, `1m30s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{s:?}: a unit (ms, s, m, h) is required"))?;
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("{s:?}: not a duration"))?;
        rest = &rest[n_end..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(format!("{s:?}: unknown unit"));
        };
        rest = &rest[len..];
        total += Duration::from_secs_f64(n * unit);
    }
    if total.is_zero() {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(total)
}

/// Runs `rke2 metrics-server` with the arguments after the subcommand;
/// the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let args = match Args::try_parse_from(
        std::iter::once(std::ffi::OsString::from("rke2 metrics-server"))
            .chain(args.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    crate::init_logging(args.debug || args.verbosity >= 4);
    for flag in args.ignored() {
        tracing::warn!("{flag} is accepted for compatibility with metrics-server and ignored");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One worker: a scrape every 15 s and a few requests a minute.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 metrics-server: starting the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(async move {
        match run(args).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("rke2 metrics-server: {e:#}");
                1
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
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
    let sa = PathBuf::from(SA_DIR);
    let token_file = args
        .kubelet_token_file
        .or_else(|| Some(sa.join("token")).filter(|p| p.exists()));
    let cfg = rke2_metrics_server::Config {
        listen: SocketAddr::new(args.bind_address, args.secure_port),
        resolution: args.metric_resolution,
        kubelet_ca: (!args.kubelet_insecure_tls).then(|| {
            args.kubelet_certificate_authority
                .clone()
                .unwrap_or_else(|| sa.join("ca.crt"))
        }),
        token_file,
        address_types: args.kubelet_preferred_address_types,
        kubelet_port: args.kubelet_port,
        use_node_status_port: args.kubelet_use_node_status_port,
        kubelet_timeout: args.kubelet_request_timeout,
        serving_names: vec![
            "rke2-metrics-server".into(),
            "rke2-metrics-server.kube-system".into(),
            "rke2-metrics-server.kube-system.svc".into(),
            "localhost".into(),
        ],
    };
    match rke2_metrics_server::run(cfg, client, stop).await {
        Ok(()) | Err(rke2_metrics_server::Error::Stopped) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_with_metrics_servers_defaults() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["rke2 metrics-server"]).unwrap();
        assert_eq!(a.secure_port, 10250);
        assert_eq!(a.metric_resolution, Duration::from_secs(15));
        assert_eq!(
            a.kubelet_preferred_address_types,
            ["InternalIP", "ExternalIP", "Hostname"]
        );
        let a = Args::try_parse_from([
            "rke2 metrics-server",
            "--metric-resolution=1m30s",
            "--kubelet-preferred-address-types=InternalIP",
            "--cert-dir=/tmp",
        ])
        .unwrap();
        assert_eq!(a.metric_resolution, Duration::from_secs(90));
        assert_eq!(a.kubelet_preferred_address_types, ["InternalIP"]);
        assert!(Args::try_parse_from(["rke2 metrics-server", "--metric-resolution=15"]).is_err());
        // What charts commonly pass.
        let a = Args::try_parse_from([
            "rke2 metrics-server",
            "--kubelet-insecure-tls",
            "--kubelet-use-node-status-port",
            "--v=4",
            "--tls-cipher-suites=TLS_AES_128_GCM_SHA256",
            "--authorization-always-allow-paths=/livez,/readyz",
            "--logtostderr",
        ])
        .unwrap();
        assert!(a.kubelet_insecure_tls && a.kubelet_use_node_status_port);
        assert_eq!(a.verbosity, 4);
        assert_eq!(
            a.ignored(),
            [
                "--tls-cipher-suites",
                "--authorization-always-allow-paths",
                "--logtostderr"
            ]
        );
        assert!(Args::try_parse_from(["rke2 metrics-server", "--no-such-flag"]).is_err());
        assert!(Args::try_parse_from(["rke2 metrics-server", "--metric-resolution=0s"]).is_err());
    }
}
