//! `rke2 token rotate`: replaces the cluster token (RKE2's command of the
//! same name). The server re-encrypts the bootstrap data in etcd with the
//! new token and rewrites its `server/token` and `server/node-token`;
//! every server must then be restarted with the new token (one started
//! with the old token is refused: its token no longer opens the bootstrap
//! data), and agents that joined with the server token need the new one.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Arg, Command};
use rke2_trust::Token;

fn command() -> Command {
    Command::new("rke2 token")
        .about("Manage tokens")
        .subcommand_required(true)
        .subcommand(
            Command::new("rotate")
                .about("Rotate the cluster (server) token")
                .arg(
                    Arg::new("token")
                        .long("token")
                        .short('t')
                        .env("RKE2_TOKEN")
                        .required(true)
                        .help("The current token (full K10 form verifies the server's CA)"),
                )
                .arg(
                    Arg::new("new-token")
                        .long("new-token")
                        .env("RKE2_NEW_TOKEN")
                        .required(true)
                        .help("The new token (a password, or a full K10 server token of this cluster)"),
                )
                .arg(
                    Arg::new("server")
                        .long("server")
                        .short('s')
                        .env("RKE2_URL")
                        .default_value("https://127.0.0.1:9345")
                        .help("Supervisor URL of a server"),
                )
                .arg(
                    Arg::new("data-dir")
                        .long("data-dir")
                        .short('d')
                        .env("RKE2_DATA_DIR")
                        .default_value(rke2_config::DEFAULT_DATA_DIR)
                        .help("Data dir whose server CA is trusted when the current token is a bare password"),
                ),
        )
}

/// Runs `rke2 token <args>`; returns the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let mut argv = vec![std::ffi::OsString::from("rke2 token")];
    argv.extend(args.iter().cloned());
    let matches = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let (_, m) = matches.subcommand().expect("subcommand_required");
    let get = |k: &str| {
        m.get_one::<String>(k)
            .cloned()
            .expect("required or defaulted")
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 token rotate: {e}");
            return 1;
        }
    };
    match runtime.block_on(rotate(
        &get("token"),
        &get("new-token"),
        &get("server"),
        PathBuf::from(get("data-dir")),
    )) {
        Ok(()) => {
            println!("Token rotated, restart rke2 nodes with new token");
            0
        }
        Err(e) => {
            eprintln!("rke2 token rotate: {e:#}");
            1
        }
    }
}

async fn rotate(old: &str, new: &str, server: &str, data_dir: PathBuf) -> Result<()> {
    let old = Token::parse(old.trim()).context("the current token (--token)")?;
    let new_parsed = rke2_config::check_server_token(new.trim())
        .map_err(|e| anyhow::anyhow!("the new token (--new-token): {e}"))?;
    if new_parsed.password == old.password {
        bail!("the new token is the current token");
    }
    let local_ca = data_dir.join("server/tls/server-ca.crt");
    let ca = if old.ca_hash.is_some() {
        let ca = rke2_supervisor::fetch_cacerts(server).await?;
        rke2_supervisor::verify_ca(&old, &ca)?;
        ca
    } else if local_ca.exists() {
        std::fs::read(&local_ca).with_context(|| format!("reading {}", local_ca.display()))?
    } else {
        bail!(
            "cannot authenticate {server}: the current token is a bare password and {} does not exist; give the full K10 token from server/token",
            local_ca.display()
        );
    };
    let client = rke2_supervisor::SupervisorClient::new(
        server,
        &ca,
        rke2_trust::SERVER_USER,
        &old.password,
    )?;
    client
        .rotate_token(new.trim())
        .await
        .with_context(|| format!("rotating the token at {server}"))?;
    Ok(())
}
