//! `rke2 etcd-snapshot save|ls|list|delete|prune`, with RKE2's flags.
//!
//! The command reads the server's configuration (`--config`, its drop-ins,
//! `RKE2_*` environment) as `rke2 server` does, so the `etcd-snapshot-*`
//! and `etcd-s3-*` keys of the config file apply; its own flags (`--dir`,
//! `--name`, `--snapshot-compress`, `--snapshot-retention`, `--s3*`, and
//! the server's long names) override them. It talks to this node's etcd
//! member with the server's etcd client certificate and updates the
//! node's `ETCDSnapshotFile` records through the API with the admin
//! certificate, when the server runs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use rke2_config::{ConfigError, Role};

use super::local::{self, EtcdEndpoint};
use super::{S3Failure, SnapshotInfo, Target, retention_prefix};

const USAGE: &str = "USAGE:
  rke2 etcd-snapshot save   [flags]          take a snapshot now
  rke2 etcd-snapshot ls|list [flags] [-o table|json]
                                             list snapshots (local and S3)
  rke2 etcd-snapshot delete [flags] NAME...  delete snapshots (local and S3)
  rke2 etcd-snapshot prune  [flags]          delete snapshots of --name over --snapshot-retention

FLAGS:
  -c, --config FILE                 server config file (default /etc/rancher/rke2/config.yaml)
  -d, --data-dir DIR                server data directory (default /var/lib/rancher/rke2)
      --node-name NAME              this server's node name
      --dir, --etcd-snapshot-dir DIR
                                    snapshot directory (default ${data-dir}/server/db/snapshots)
      --name NAME                   snapshot base name (default on-demand)
      --snapshot-compress, --etcd-snapshot-compress
                                    zip the snapshot
      --snapshot-retention, --etcd-snapshot-retention N
                                    snapshots of --name to keep (default 5)
      --s3, --etcd-s3               also store in S3
      --s3-endpoint, --s3-endpoint-ca, --s3-skip-ssl-verify, --s3-access-key,
      --s3-secret-key, --s3-bucket, --s3-region, --s3-folder, --s3-insecure,
      --s3-timeout                  S3 settings (also as --etcd-s3-...)
  -o, --output FORMAT               ls output: table (default) or json";

/// The base name of on-demand snapshots when no `--name` is given (k3s's).
pub const ON_DEMAND_NAME: &str = "on-demand";

/// The bool flags among the server keys this command takes.
const BOOLS: &[&str] = &[
    "debug",
    "etcd-snapshot-compress",
    "etcd-s3",
    "etcd-s3-skip-ssl-verify",
    "etcd-s3-insecure",
];

/// Maps one of this command's flag names to the server config key.
fn key_of(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "c" | "config" => "config",
        "d" | "data-dir" => "data-dir",
        "node-name" => "node-name",
        "debug" => "debug",
        "dir" | "etcd-snapshot-dir" => "etcd-snapshot-dir",
        "name" | "etcd-snapshot-name" => "etcd-snapshot-name",
        "compress" | "snapshot-compress" | "etcd-snapshot-compress" => "etcd-snapshot-compress",
        "retention" | "snapshot-retention" | "etcd-snapshot-retention" => "etcd-snapshot-retention",
        "s3" | "etcd-s3" => "etcd-s3",
        other => {
            let rest = other
                .strip_prefix("etcd-s3-")
                .or_else(|| other.strip_prefix("s3-"))?;
            match rest {
                "endpoint" => "etcd-s3-endpoint",
                "endpoint-ca" => "etcd-s3-endpoint-ca",
                "skip-ssl-verify" => "etcd-s3-skip-ssl-verify",
                "access-key" => "etcd-s3-access-key",
                "secret-key" => "etcd-s3-secret-key",
                "bucket" => "etcd-s3-bucket",
                "region" => "etcd-s3-region",
                "folder" => "etcd-s3-folder",
                "insecure" => "etcd-s3-insecure",
                "timeout" => "etcd-s3-timeout",
                _ => return None,
            }
        }
    })
}

/// The parsed command line.
struct Invocation {
    action: String,
    names: Vec<String>,
    server_args: Vec<OsString>,
    cli_name: Option<String>,
    output: String,
}

fn parse(args: &[OsString]) -> Result<Invocation, String> {
    let mut inv = Invocation {
        action: String::new(),
        names: Vec::new(),
        server_args: Vec::new(),
        cli_name: None,
        output: "table".into(),
    };
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            if inv.action.is_empty() {
                inv.action = a;
            } else {
                inv.names.push(a);
            }
            continue;
        };
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if flag == "h" || flag == "help" {
            return Err(String::new());
        }
        if flag == "o" || flag == "output" {
            inv.output = match inline.or_else(|| it.next()) {
                Some(v) => v,
                None => return Err("--output needs a value".into()),
            };
            continue;
        }
        let key = key_of(&flag).ok_or_else(|| format!("unknown flag --{flag}"))?;
        if BOOLS.contains(&key) {
            let on = match inline.as_deref() {
                None | Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(v) => return Err(format!("--{flag}: {v:?} is not true or false")),
            };
            if on {
                inv.server_args.push(format!("--{key}").into());
            }
            continue;
        }
        let value = match inline.or_else(|| it.next()) {
            Some(v) => v,
            None => return Err(format!("--{flag} needs a value")),
        };
        if key == "etcd-snapshot-name" {
            inv.cli_name = Some(value.clone());
        }
        inv.server_args.push(format!("--{key}").into());
        inv.server_args.push(value.into());
    }
    if inv.action.is_empty() {
        // `rke2 etcd-snapshot --name x` saves, as RKE2's deprecated form.
        inv.action = "save".into();
    }
    Ok(inv)
}

/// Runs `rke2 etcd-snapshot`; returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let inv = match parse(args) {
        Ok(i) => i,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("rke2 etcd-snapshot: {e}\n\n{USAGE}");
            return 2;
        }
    };
    if !["save", "ls", "list", "delete", "prune"].contains(&inv.action.as_str()) {
        eprintln!(
            "rke2 etcd-snapshot: unknown command {:?}\n\n{USAGE}",
            inv.action
        );
        return 2;
    }
    if inv.action == "delete" && inv.names.is_empty() {
        eprintln!("rke2 etcd-snapshot delete: name the snapshots to delete\n\n{USAGE}");
        return 2;
    }
    if !["table", "json"].contains(&inv.output.as_str()) {
        eprintln!(
            "rke2 etcd-snapshot: --output {:?}: use table or json",
            inv.output
        );
        return 2;
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let loaded = match rke2_config::load(Role::Server, &inv.server_args, &env) {
        Ok(l) => l,
        Err(ConfigError::Display(text)) => {
            println!("{text}");
            return 0;
        }
        Err(e) => {
            eprintln!("rke2 etcd-snapshot: {e}");
            return e.exit_code();
        }
    };
    crate::init_logging(loaded.config.debug);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 etcd-snapshot: starting the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run(inv, loaded.config))
}

async fn run(inv: Invocation, cfg: rke2_config::Config) -> i32 {
    let mut snap = cfg.etcd_snapshot.clone();
    // On-demand snapshots are `on-demand-<node>-<time>` unless a name is
    // given on the command line or in the config file.
    if inv.cli_name.is_none() && snap.name == "etcd-snapshot" {
        snap.name = ON_DEMAND_NAME.into();
    }
    let target = Target {
        cfg: snap,
        node: cfg.node_name.clone(),
    };
    match inv.action.as_str() {
        "save" => save(&target, &cfg).await,
        "ls" | "list" => list(&target, &inv.output).await,
        "delete" => delete(&target, &cfg, &inv.names).await,
        _ => prune(&target, &cfg).await,
    }
}

/// The admin API client of this server, when its API answers.
async fn api_client(
    cfg: &rke2_config::Config,
    etcd: Option<&EtcdEndpoint>,
) -> Option<kube::Client> {
    let tls = rke2_trust::tls_dir(&cfg.data_dir);
    let read = |n: &str| std::fs::read(tls.join(n)).ok();
    let (ca, cert, key) = (
        read("server-ca.crt")?,
        read("client-admin.crt")?,
        read("client-admin.key")?,
    );
    // The API listens where etcd does (the node address), on its port.
    let host = etcd
        .and_then(|e| e.url.strip_prefix("https://"))
        .and_then(|h| h.rsplit_once(':'))
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let url = format!("https://{host}:{}", cfg.https_listen_port);
    let client = crate::server::kube_client(&url, &ca, &cert, &key)
        .await
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Some(client),
        _ => {
            eprintln!(
                "rke2 etcd-snapshot: the API at {url} does not answer; ETCDSnapshotFile records are updated by the server later"
            );
            None
        }
    }
}

async fn sync(
    target: &Target,
    cfg: &rke2_config::Config,
    etcd: Option<&EtcdEndpoint>,
    s3: Option<&super::s3::S3Store>,
) {
    if let Some(client) = api_client(cfg, etcd).await
        && tokio::time::timeout(Duration::from_secs(60), target.sync_records(&client, s3))
            .await
            .is_err()
    {
        eprintln!("rke2 etcd-snapshot: updating the ETCDSnapshotFile records timed out");
    }
}

async fn save(target: &Target, cfg: &rke2_config::Config) -> i32 {
    let etcd = match EtcdEndpoint::of_data_dir(&cfg.data_dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "rke2 etcd-snapshot save: {e} (is {} a server's data dir?)",
                cfg.data_dir.display()
            );
            return 1;
        }
    };
    let client = api_client(cfg, Some(&etcd)).await;
    match target
        .save(&etcd, &target.cfg.name, client.as_ref(), S3Failure::Abort)
        .await
    {
        Ok((saved, _)) => {
            for s in &saved {
                println!(
                    "Snapshot {} saved to {} ({} bytes, sha256 {}).",
                    s.name,
                    s.location,
                    s.size,
                    s.sha256.as_deref().unwrap_or("-")
                );
            }
            0
        }
        Err(e) => {
            eprintln!("rke2 etcd-snapshot save: {e}");
            1
        }
    }
}

async fn list(target: &Target, output: &str) -> i32 {
    let mut all = match local::list(&target.cfg.dir, &target.node) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rke2 etcd-snapshot ls: {e}");
            return 1;
        }
    };
    match target.open_s3().await {
        Ok(Some(store)) => match store.list().await {
            Ok(l) => all.extend(l),
            Err(e) => {
                eprintln!("rke2 etcd-snapshot ls: {e}");
                return 1;
            }
        },
        Ok(None) => {}
        Err(e) => {
            eprintln!("rke2 etcd-snapshot ls: {e}");
            return 1;
        }
    }
    if output == "json" {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "location": s.location, "size": s.size,
                    "createdAt": created_text(s), "nodeName": s.node,
                    "sha256": s.sha256, "compressed": s.compressed(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
        return 0;
    }
    print!("{}", table(&all));
    0
}

fn created_text(s: &SnapshotInfo) -> String {
    chrono::DateTime::from_timestamp(s.created, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// k3s's `ls` table: `Name Location Size Created`, columns padded as Go's
/// tabwriter pads them (one space after the widest cell).
pub fn table(all: &[SnapshotInfo]) -> String {
    let mut rows = vec![[
        "Name".to_string(),
        "Location".to_string(),
        "Size".to_string(),
        "Created".to_string(),
    ]];
    for s in all {
        rows.push([
            s.name.clone(),
            s.location.clone(),
            s.size.to_string(),
            created_text(s),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c == 3 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$} ", w = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}

async fn delete(target: &Target, cfg: &rke2_config::Config, names: &[String]) -> i32 {
    let s3 = match target.open_s3().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rke2 etcd-snapshot delete: {e}");
            return 1;
        }
    };
    let mut code = 0;
    for name in names {
        let mut found = false;
        match local::delete(&target.cfg.dir, name) {
            Ok(true) => {
                found = true;
                println!("Removed local snapshot {name}");
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!("rke2 etcd-snapshot delete: {e}");
                code = 1;
            }
        }
        if let Some(store) = &s3 {
            match store.delete(name).await {
                Ok(true) => {
                    found = true;
                    println!("Removed S3 snapshot {name}");
                }
                Ok(false) => {}
                Err(e) => {
                    eprintln!("rke2 etcd-snapshot delete: {e}");
                    code = 1;
                }
            }
        }
        if !found {
            eprintln!(
                "rke2 etcd-snapshot delete: snapshot {name} not found in {}{}",
                target.cfg.dir.display(),
                if s3.is_some() { " or S3" } else { "" }
            );
            code = 1;
        }
    }
    let etcd = EtcdEndpoint::of_data_dir(&cfg.data_dir).ok();
    sync(target, cfg, etcd.as_ref(), s3.as_ref()).await;
    code
}

async fn prune(target: &Target, cfg: &rke2_config::Config) -> i32 {
    let s3 = match target.open_s3().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rke2 etcd-snapshot prune: {e}");
            return 1;
        }
    };
    let prefix = retention_prefix(&target.cfg.name, &target.node);
    let mut code = 0;
    match local::prune(&target.cfg.dir, &prefix, target.cfg.retention) {
        Ok(gone) => gone
            .iter()
            .for_each(|n| println!("Removed local snapshot {n}")),
        Err(e) => {
            eprintln!("rke2 etcd-snapshot prune: {e}");
            code = 1;
        }
    }
    if let Some(store) = &s3 {
        match store.prune(&prefix, target.cfg.retention).await {
            Ok(gone) => gone
                .iter()
                .for_each(|n| println!("Removed S3 snapshot {n}")),
            Err(e) => {
                eprintln!("rke2 etcd-snapshot prune: {e}");
                code = 1;
            }
        }
    }
    let etcd = EtcdEndpoint::of_data_dir(&cfg.data_dir).ok();
    sync(target, cfg, etcd.as_ref(), s3.as_ref()).await;
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rke2_flag_spellings_map_to_server_keys() {
        let args: Vec<OsString> = [
            "save",
            "--dir",
            "/s",
            "--name=n",
            "--snapshot-compress",
            "--s3",
            "--s3-bucket",
            "b",
            "--etcd-s3-endpoint",
            "h:1",
            "--snapshot-retention",
            "3",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let inv = parse(&args).unwrap();
        assert_eq!(inv.action, "save");
        assert_eq!(inv.cli_name.as_deref(), Some("n"));
        let joined: Vec<String> = inv
            .server_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            joined,
            [
                "--etcd-snapshot-dir",
                "/s",
                "--etcd-snapshot-name",
                "n",
                "--etcd-snapshot-compress",
                "--etcd-s3",
                "--etcd-s3-bucket",
                "b",
                "--etcd-s3-endpoint",
                "h:1",
                "--etcd-snapshot-retention",
                "3"
            ]
        );
        assert!(parse(&[OsString::from("--bogus")]).is_err());
    }

    #[test]
    fn the_table_has_k3s_columns() {
        let t = table(&[SnapshotInfo {
            name: "on-demand-n-1700000000".into(),
            location: "file:///s/on-demand-n-1700000000".into(),
            size: 12,
            created: 1_700_000_000,
            node: "n".into(),
            sha256: None,
            s3: false,
        }]);
        let mut lines = t.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(head, ["Name", "Location", "Size", "Created"]);
        assert!(lines.next().unwrap().ends_with("2023-11-14T22:13:20Z"));
    }
}
