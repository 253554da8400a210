//! `rke2 ingress-controller`: the ingress controller, what the
//! `rke2-ingress-nginx` addon's pods run (see `rke2-ingress`). Its flags
//! are ingress-nginx's names for the same settings.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The flags of `rke2 ingress-controller`.
#[derive(Parser, Debug)]
#[command(
    name = "rke2 ingress-controller",
    about = "Route HTTP and HTTPS by the Ingresses of one class to endpoint addresses (the rke2-ingress-nginx addon)"
)]
pub struct Args {
    /// The IngressClass name served (and legacy `kubernetes.io/ingress.class` value).
    #[arg(long, default_value = "nginx")]
    ingress_class: String,
    /// IngressClasses whose `spec.controller` is this are served.
    #[arg(long, default_value = "k8s.io/ingress-nginx")]
    controller_class: String,
    /// The Lease (in the pod's namespace) electing the status writer.
    #[arg(long, default_value = "ingress-nginx-leader")]
    election_id: String,
    /// Address the listeners bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Plain HTTP port.
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    /// HTTPS port.
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// Port of `GET /healthz` (0 to disable).
    #[arg(long, default_value_t = 10254)]
    healthz_port: u16,
    /// `namespace/name` of a TLS Secret served to clients whose SNI names
    /// no Ingress TLS host; without it, a self-signed certificate.
    #[arg(long)]
    default_ssl_certificate: Option<String>,
    /// Addresses written to `status.loadBalancer` instead of the nodes'
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    publish_status_address: Vec<String>,
    /// kubeconfig to reach the API; without it, the in-cluster service
    /// account (or $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Log at debug level.
    #[arg(long)]
    debug: bool,
}

/// Runs `rke2 ingress-controller` with the arguments after the subcommand;
/// the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let args = match Args::try_parse_from(
        std::iter::once(std::ffi::OsString::from("rke2 ingress-controller"))
            .chain(args.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    crate::init_logging(args.debug);
    crate::raise_open_files_limit();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 ingress-controller: starting the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(async move {
        match run(args).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("rke2 ingress-controller: {e:#}");
                1
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

fn config(args: &Args) -> rke2_ingress::Config {
    let pod = match (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) {
        (Ok(n), Ok(ns)) if !n.is_empty() && !ns.is_empty() => Some((n, ns)),
        _ => None,
    };
    rke2_ingress::Config {
        http_listen: SocketAddr::new(args.bind_address, args.http_port),
        https_listen: SocketAddr::new(args.bind_address, args.https_port),
        health_listen: (args.healthz_port != 0)
            .then(|| SocketAddr::new(args.bind_address, args.healthz_port)),
        settings: rke2_ingress::controller::Settings {
            class: rke2_ingress::Class {
                name: args.ingress_class.clone(),
                controller: args.controller_class.clone(),
            },
            election_id: args.election_id.clone(),
            pod,
            publish_addresses: args
                .publish_status_address
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
        },
        default_ssl_certificate: args.default_ssl_certificate.clone(),
    }
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
    rke2_ingress::run(config(&args), client, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_as_ingress_nginx_names_them() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["x"]).unwrap();
        let c = config(&a);
        assert_eq!(c.http_listen.to_string(), "0.0.0.0:80");
        assert_eq!(c.https_listen.to_string(), "0.0.0.0:443");
        assert_eq!(c.settings.class.name, "nginx");
        assert_eq!(c.settings.class.controller, "k8s.io/ingress-nginx");
        let a = Args::try_parse_from([
            "x",
            "--ingress-class=public",
            "--http-port=8080",
            "--default-ssl-certificate=kube-system/tls",
            "--publish-status-address=10.0.0.1,10.0.0.2",
        ])
        .unwrap();
        let c = config(&a);
        assert_eq!(c.http_listen.port(), 8080);
        assert_eq!(
            c.default_ssl_certificate.as_deref(),
            Some("kube-system/tls")
        );
        assert_eq!(c.settings.publish_addresses, ["10.0.0.1", "10.0.0.2"]);
        assert!(Args::try_parse_from(["x", "--http-port=nope"]).is_err());
    }
}
