//! `rke2 certificate check|rotate|rotate-ca`: RKE2's certificate
//! maintenance commands.
//!
//! `check` lists every certificate of the node (server and agent) with its
//! expiry; `rotate` backs up `server/tls` and removes the leaf certificates
//! of the named services (all when none is named), which the next start of
//! `rke2 server`/`rke2 agent` issues again. CAs are never touched: a leaf
//! re-issued by the same CA needs no change anywhere else.
//!
//! `rotate-ca` replaces the CAs: it checks a directory of new CA files
//! (present, keys matching, cross-signed by the current CAs unless
//! `--force`) and sends them to a server's supervisor, which checks them
//! again and stores them in the bootstrap data in etcd; every server takes
//! them at its next start (ARCHITECTURE.md, "CA rotation").

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Arg, ArgAction, Command};

/// Within this many days of expiry a certificate is reported as WARNING
/// (RKE2's threshold, also that of the expiry Events).
pub const WARN_DAYS: i64 = 90;

/// Services as RKE2 names them, with the leaf certificate files of each,
/// relative to the data dir (without `.crt`/`.key`). Services whose
/// certificates live only in memory (issued at every start) have none.
const SERVICES: &[(&str, &[&str])] = &[
    ("admin", &["server/tls/client-admin"]),
    (
        "api-server",
        &[
            "server/tls/serving-kube-apiserver",
            "server/tls/client-kube-apiserver",
        ],
    ),
    ("auth-proxy", &["server/tls/client-auth-proxy"]),
    ("cloud-controller", &[]),
    ("controller-manager", &[]),
    (
        "etcd",
        &[
            "server/tls/etcd/server-client",
            "server/tls/etcd/peer-server-client",
            "server/tls/etcd/client",
        ],
    ),
    (
        "kubelet",
        &["agent/client-kubelet", "agent/serving-kubelet"],
    ),
    ("kube-proxy", &["agent/client-kube-proxy"]),
    ("rke2-controller", &[]),
    ("rke2-server", &["server/tls/client-supervisor"]),
    ("scheduler", &[]),
];

fn service_names() -> String {
    SERVICES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn command() -> Command {
    let common = |c: Command| {
        c.arg(
            Arg::new("data-dir")
                .long("data-dir")
                .short('d')
                .env("RKE2_DATA_DIR")
                .help("Folder to hold state (default: data-dir of the config file, else /var/lib/rancher/rke2)"),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .short('c')
                .env("RKE2_CONFIG_FILE")
                .default_value(rke2_config::DEFAULT_CONFIG_FILE)
                .help("Load configuration from FILE (only data-dir is read)"),
        )
        .arg(
            Arg::new("service")
                .long("service")
                .short('s')
                .action(ArgAction::Append)
                .value_delimiter(',')
                .help("Certificates of these services only (default: all)"),
        )
    };
    Command::new("rke2 certificate")
        .about("Manage RKE2 certificates")
        .subcommand_required(true)
        .subcommand(
            common(Command::new("check").about("Check the expiry of the node's certificates")).arg(
                Arg::new("output")
                    .long("output")
                    .short('o')
                    .default_value("text")
                    .value_parser(["text", "table", "json"])
                    .help("Format: text, table or json"),
            ),
        )
        .subcommand(common(Command::new("rotate").about(
            "Back up server/tls and remove leaf certificates; the next start issues new ones",
        )))
        .subcommand(
            Command::new("rotate-ca")
                .about("Write updated cluster CA certificates and keys to the datastore")
                .arg(
                    Arg::new("path")
                        .long("path")
                        .required(true)
                        .help("Path to directory containing the updated CA certificates and keys (server-ca.crt/.key, client-ca, request-header-ca, etcd/server-ca, etcd/peer-ca, service.key)"),
                )
                .arg(
                    Arg::new("force")
                        .long("force")
                        .action(ArgAction::SetTrue)
                        .help("Force certificate replacement, even if consistency checks fail"),
                )
                .arg(
                    Arg::new("server")
                        .long("server")
                        .short('s')
                        .env("RKE2_URL")
                        .default_value("https://127.0.0.1:9345")
                        .help("Server to connect to"),
                )
                .arg(
                    Arg::new("token")
                        .long("token")
                        .short('t')
                        .env("RKE2_TOKEN")
                        .help("Token to use for authentication (default: the data dir's server/token)"),
                )
                .arg(
                    Arg::new("data-dir")
                        .long("data-dir")
                        .short('d')
                        .env("RKE2_DATA_DIR")
                        .help("Folder to hold state (default: data-dir of the config file, else /var/lib/rancher/rke2)"),
                )
                .arg(
                    Arg::new("config")
                        .long("config")
                        .short('c')
                        .env("RKE2_CONFIG_FILE")
                        .default_value(rke2_config::DEFAULT_CONFIG_FILE)
                        .help("Load configuration from FILE (only data-dir is read)"),
                ),
        )
}

/// Runs `rke2 certificate <args>`; returns the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let mut argv = vec![std::ffi::OsString::from("rke2 certificate")];
    argv.extend(args.iter().cloned());
    let matches = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let (sub, m) = matches.subcommand().expect("subcommand_required");
    if sub == "rotate-ca" {
        return rotate_ca_main(m);
    }
    let result = (|| -> Result<i32> {
        let data_dir = data_dir(
            m.get_one::<String>("data-dir").map(PathBuf::from),
            Path::new(m.get_one::<String>("config").expect("default")),
        )?;
        let services: Vec<String> = m
            .get_many::<String>("service")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        for s in &services {
            if !SERVICES.iter().any(|(n, _)| n == s) {
                bail!(
                    "unknown service {s:?}: valid services are {}",
                    service_names()
                );
            }
        }
        match sub {
            "check" => check(
                &data_dir,
                &services,
                m.get_one::<String>("output").expect("default"),
            ),
            "rotate" => rotate(&data_dir, &services),
            _ => unreachable!("clap knows the subcommands"),
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rke2 certificate {sub}: {e:#}");
            1
        }
    }
}

/// `--data-dir`, else the config file's `data-dir`, else RKE2's default.
fn data_dir(flag: Option<PathBuf>, config: &Path) -> Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d);
    }
    if config.exists() {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        let doc: serde_json::Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("parsing {}", config.display()))?;
        if let Some(d) = doc.get("data-dir").and_then(|d| d.as_str()) {
            return Ok(PathBuf::from(d));
        }
    }
    Ok(PathBuf::from(rke2_config::DEFAULT_DATA_DIR))
}

/// One certificate as `check` reports it.
#[derive(serde::Serialize)]
struct Row {
    filename: String,
    #[serde(flatten)]
    info: rke2_trust::CertInfo,
    status: &'static str,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn status(info: &rke2_trust::CertInfo, now: i64) -> &'static str {
    if now >= info.not_after {
        "EXPIRED"
    } else if now < info.not_before {
        "NOT YET VALID"
    } else if info.not_after - now < WARN_DAYS * 86_400 {
        "WARNING"
    } else {
        "OK"
    }
}

/// The certificate files of the node: the leaf files of `services` (all
/// when empty) and, when no service is named, every other `.crt` under
/// `server/tls` and `agent` (the CAs).
pub(crate) fn cert_files(data_dir: &Path, services: &[String]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if services.is_empty() {
        for dir in ["server/tls", "server/tls/etcd", "agent"] {
            let Ok(entries) = std::fs::read_dir(data_dir.join(dir)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            found.sort();
            files.extend(found);
        }
    } else {
        for (name, leaves) in SERVICES {
            if services.iter().any(|s| s == name) {
                files.extend(
                    leaves
                        .iter()
                        .map(|l| data_dir.join(format!("{l}.crt")))
                        .filter(|p| p.exists()),
                );
            }
        }
    }
    files
}

/// `Jan 02, 2006 15:04 UTC`, as RKE2 prints expiry dates.
fn expires(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%b %d, %Y %H:%M UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A rough "1 year", "89 days", "5 hours" until `t`.
fn residual(t: i64, now: i64) -> String {
    let left = t - now;
    if left <= 0 {
        return "0s".into();
    }
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match left {
        l if l >= 365 * 86_400 => plural(l / (365 * 86_400), "year"),
        l if l >= 86_400 => plural(l / 86_400, "day"),
        l if l >= 3_600 => plural(l / 3_600, "hour"),
        l => plural(l.max(60) / 60, "minute"),
    }
}

fn check(data_dir: &Path, services: &[String], output: &str) -> Result<i32> {
    let files = cert_files(data_dir, services);
    if files.is_empty() {
        bail!(
            "no certificates under {} (is the data dir right, and has rke2 run there?)",
            data_dir.display()
        );
    }
    let now = now();
    let mut rows = Vec::new();
    for f in &files {
        let name = f.strip_prefix(data_dir).unwrap_or(f).display().to_string();
        for info in rke2_trust::describe_cert_file(f)? {
            let status = status(&info, now);
            rows.push(Row {
                filename: name.clone(),
                info,
                status,
            });
        }
    }
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        "table" => {
            let cells: Vec<[String; 6]> = rows
                .iter()
                .map(|r| {
                    [
                        r.filename.clone(),
                        r.info.subject.clone(),
                        r.info.usages.join(","),
                        expires(r.info.not_after),
                        residual(r.info.not_after, now),
                        r.status.to_string(),
                    ]
                })
                .collect();
            let head = [
                "FILENAME",
                "SUBJECT",
                "USAGES",
                "EXPIRES",
                "RESIDUAL TIME",
                "STATUS",
            ];
            let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
            for c in &cells {
                for (i, v) in c.iter().enumerate() {
                    width[i] = width[i].max(v.len());
                }
            }
            let line = |vals: Vec<String>| {
                let parts: Vec<String> = vals
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v:<w$}", w = width[i]))
                    .collect();
                println!("{}", parts.join("  ").trim_end());
            };
            line(head.iter().map(|h| h.to_string()).collect());
            line(head.iter().map(|h| "-".repeat(h.len())).collect());
            for c in cells {
                line(c.to_vec());
            }
        }
        _ => {
            for r in &rows {
                let at = chrono::DateTime::from_timestamp(r.info.not_after, 0)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default();
                let what = match r.status {
                    "EXPIRED" => format!("expired at {at}"),
                    "NOT YET VALID" => "is not yet valid".to_string(),
                    "WARNING" => format!("will expire within {WARN_DAYS} days at {at}"),
                    _ => format!("is ok, expires at {at}"),
                };
                println!("{}: certificate {} {what}", r.filename, r.info.subject);
            }
        }
    }
    Ok(0)
}

fn rotate(data_dir: &Path, services: &[String]) -> Result<i32> {
    let tls = data_dir.join("server/tls");
    let agent = data_dir.join("agent");
    if !tls.is_dir() && !agent.is_dir() {
        bail!(
            "no certificates under {} (is the data dir right, and has rke2 run there?)",
            data_dir.display()
        );
    }
    let chosen: Vec<&(&str, &[&str])> = SERVICES
        .iter()
        .filter(|(n, _)| services.is_empty() || services.iter().any(|s| s == n))
        .collect();
    // The backup comes first: if it fails, nothing is removed.
    if tls.is_dir() {
        let backup = data_dir.join(format!("server/tls-{}", now()));
        copy_dir(&tls, &backup)
            .with_context(|| format!("backing up {} to {}", tls.display(), backup.display()))?;
        println!("Certificates backed up to {}", backup.display());
    }
    let mut removed = 0;
    for (name, leaves) in &chosen {
        for leaf in leaves.iter() {
            for ext in ["crt", "key"] {
                let p = data_dir.join(format!("{leaf}.{ext}"));
                match std::fs::remove_file(&p) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
                }
            }
        }
        if leaves.is_empty() {
            println!("{name}: certificates are issued in memory at every start");
        }
    }
    println!("{removed} files removed; restart rke2 server or agent to rotate the certificates");
    Ok(0)
}

fn rotate_ca_main(m: &clap::ArgMatches) -> i32 {
    let result = (|| -> Result<()> {
        let data_dir = data_dir(
            m.get_one::<String>("data-dir").map(PathBuf::from),
            Path::new(m.get_one::<String>("config").expect("default")),
        )?;
        let path = PathBuf::from(m.get_one::<String>("path").expect("required"));
        let force = m.get_flag("force");
        let server = m.get_one::<String>("server").expect("default").clone();
        let token = match m.get_one::<String>("token") {
            Some(t) => t.clone(),
            None => {
                let p = data_dir.join("server/token");
                std::fs::read_to_string(&p)
                    .with_context(|| {
                        format!("reading the token {} (or give --token)", p.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        let files = check_ca_dir(&path, &rke2_trust::tls_dir(&data_dir), force)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(send_rotated_ca(&server, &token, &data_dir, &files, force))
    })();
    match result {
        Ok(()) => {
            println!(
                "certificates saved to datastore; restart rke2 server on every server, one at a time, for them to take effect"
            );
            0
        }
        Err(e) => {
            eprintln!("rke2 certificate rotate-ca: {e:#}");
            1
        }
    }
}

/// The checks of `rotate-ca` on the files of `dir`, against this node's
/// current CAs under `tls` (when it has them; the server checks again
/// against its own). The error names the file.
fn check_ca_dir(dir: &Path, tls: &Path, force: bool) -> Result<Vec<(String, Vec<u8>)>> {
    if !dir.is_dir() {
        bail!("--path {}: not a directory", dir.display());
    }
    let have_current = tls.join("server-ca.crt").exists();
    rke2_trust::validate_ca_rotation(
        &|rel: &str| std::fs::read(dir.join(rel)).ok(),
        &|rel: &str| std::fs::read(tls.join(rel)).ok(),
        force || !have_current,
    )
    .map_err(|e| anyhow::anyhow!("{}: {}", dir.join(&e.file).display(), e.message))
}

async fn send_rotated_ca(
    server: &str,
    token: &str,
    data_dir: &Path,
    files: &[(String, Vec<u8>)],
    force: bool,
) -> Result<()> {
    let token = rke2_trust::Token::parse(token).context("parsing the token")?;
    let local_ca = rke2_trust::tls_dir(data_dir).join("server-ca.crt");
    let ca = if token.ca_hash.is_some() {
        let ca = rke2_supervisor::fetch_cacerts(server).await?;
        rke2_supervisor::verify_ca(&token, &ca)?;
        ca
    } else {
        std::fs::read(&local_ca).with_context(|| {
            format!(
                "the token is a bare password and {} cannot be read; give the full K10 token",
                local_ca.display()
            )
        })?
    };
    let client = rke2_supervisor::SupervisorClient::new(
        server,
        &ca,
        rke2_trust::SERVER_USER,
        &token.password,
    )?;
    client
        .rotate_ca(files, force)
        .await
        .with_context(|| format!("storing the new CA material at {server}"))?;
    Ok(())
}

/// Copies `from` into a new directory `to`, keeping file modes (keys stay
/// 0600); `to` is created 0700.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &dest)?;
            let mode = entry.metadata()?.permissions().mode();
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_times_read_as_rke2_prints_them() {
        assert_eq!(residual(100 + 400 * 86_400, 100), "1 year");
        assert_eq!(residual(89 * 86_400 + 5, 0), "89 days");
        assert_eq!(residual(86_400, 0), "1 day");
        assert_eq!(residual(5 * 3_600, 0), "5 hours");
        assert_eq!(residual(30, 0), "1 minute");
        assert_eq!(residual(0, 10), "0s");
        assert_eq!(expires(0), "Jan 01, 1970 00:00 UTC");
    }

    #[test]
    fn status_follows_the_warning_window() {
        let info = |nb, na| rke2_trust::CertInfo {
            subject: "x".into(),
            usages: vec![],
            not_before: nb,
            not_after: na,
            is_ca: false,
        };
        assert_eq!(status(&info(0, 100), 100), "EXPIRED");
        assert_eq!(status(&info(200, 400 * 86_400), 100), "NOT YET VALID");
        assert_eq!(status(&info(0, 89 * 86_400), 0), "WARNING");
        assert_eq!(status(&info(0, 91 * 86_400), 0), "OK");
    }

    #[test]
    fn every_on_disk_leaf_is_one_the_server_writes() {
        // The names must match what ensure_server_trust and the agent write.
        for (_, leaves) in SERVICES {
            for l in leaves.iter() {
                assert!(
                    l.starts_with("server/tls/") || l.starts_with("agent/"),
                    "{l}"
                );
            }
        }
        assert!(service_names().contains("api-server"));
    }
}
