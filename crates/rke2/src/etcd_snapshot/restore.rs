//! `rke2 server --cluster-reset [--cluster-reset-restore-path=…]`, and
//! the other side of it: a server that finds it is no longer a member of
//! its cluster moves its database aside and joins again.
//!
//! Nothing is moved before the snapshot is checked (its SHA-256 sidecar,
//! then etcd's own hash); the old database is renamed to
//! `<data-dir>/server/db/etcd-old-<unix time>`, never deleted.
//!
//! On a fresh server (no etcd data, no CAs) the snapshot also supplies the
//! cluster's trust: its bootstrap data (CAs, service-account key,
//! supervisor passwords) is sealed with the cluster token, so it is read
//! from a throwaway etcd started on a scratch copy of the snapshot and
//! opened with the given `token` before anything is written under the
//! data dir; the server then writes those CAs instead of generating its
//! own (k3s likewise reads bootstrap data through a temporary etcd).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rke2_config::Config;
use tracing::{info, warn};

use super::{CHECKSUM_EXTENSION, parse_checksum, verify};

/// A snapshot that passed its checks, ready to restore; its scratch
/// directory (a downloaded or unzipped copy) is removed on drop.
pub struct VerifiedSnapshot {
    /// The plain etcd snapshot to restore from.
    pub db: PathBuf,
    /// Where it came from, for messages.
    pub source: String,
    /// On a server without etcd data: the cluster's bootstrap document
    /// (plain JSON, `rke2_supervisor::bootstrap`) read from the snapshot
    /// and opened with the token, already checked to unpack; the server
    /// writes its files into `server/tls` before issuing any certificate.
    pub bootstrap: Option<Vec<u8>>,
    scratch: PathBuf,
}

impl Drop for VerifiedSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn scratch_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("rke2-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Checks what `--cluster-reset` may do here and, with a restore path,
/// finds the snapshot (a file, else an object of that name in the
/// `etcd-s3` bucket) and verifies it. Writes nothing under the data dir.
pub async fn prepare(cfg: &Config, etcd_data: &Path) -> Result<Option<VerifiedSnapshot>> {
    let has_data = etcd_data.join("member").exists();
    let Some(spec) = &cfg.cluster_reset_restore_path else {
        if !has_data {
            bail!(
                "--cluster-reset: there is no etcd database at {} to reset; give --cluster-reset-restore-path to restore a snapshot",
                etcd_data.display()
            );
        }
        return Ok(None);
    };
    find_etcdctl()?;
    let scratch = scratch_dir()?;
    let mut verified = VerifiedSnapshot {
        db: PathBuf::new(),
        source: spec.clone(),
        bootstrap: None,
        scratch: scratch.clone(),
    };
    let path = Path::new(spec);
    let (file, expected) = if path.is_file() {
        let side = super::local::sidecar(path);
        let expected = match std::fs::read_to_string(&side) {
            Ok(text) => Some(
                parse_checksum(&text)
                    .with_context(|| format!("{}: not a SHA-256 checksum file", side.display()))?,
            ),
            Err(_) => {
                warn!(snapshot = %path.display(), "no {CHECKSUM_EXTENSION} sidecar: only etcd's own hash is checked");
                None
            }
        };
        (path.to_path_buf(), expected)
    } else if let Some(s3cfg) = &cfg.etcd_snapshot.s3 {
        let store = super::s3::S3Store::open(s3cfg).await?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("cluster-reset-restore-path: not a file or snapshot name")?;
        if !store.list().await?.iter().any(|s| s.name == name) {
            bail!(
                "cluster-reset-restore-path {spec}: no such file, and no snapshot {name} in S3 bucket {:?} at {}",
                s3cfg.bucket,
                s3cfg.endpoint
            );
        }
        let out = scratch.join(name);
        let expected = store.download(name, &out).await?;
        verified.source = format!("s3://{}/{name}", s3cfg.bucket);
        (out, expected)
    } else {
        bail!("cluster-reset-restore-path {spec}: no such file");
    };
    verified.db = verify(&file, expected.as_deref(), &scratch)
        .with_context(|| format!("refusing to restore {}", verified.source))?;
    info!(snapshot = %verified.source, "snapshot verified");
    if !has_data {
        verified.bootstrap = Some(open_bootstrap(cfg, &verified, etcd_data).await?);
    }
    Ok(Some(verified))
}

/// A fresh server's restore: the snapshot's bootstrap data, opened with
/// the configured token and checked to unpack (into the scratch dir), or
/// a refusal naming why. Writes nothing under the data dir.
async fn open_bootstrap(
    cfg: &Config,
    snap: &VerifiedSnapshot,
    etcd_data: &Path,
) -> Result<Vec<u8>> {
    use rke2_supervisor::bootstrap;
    let Some(given) = cfg.token.as_deref() else {
        bail!(
            "--cluster-reset-restore-path on a server without etcd data ({}): the cluster's `token` is needed: the snapshot's bootstrap data (the cluster's CAs and keys) is encrypted with it and cannot be read without it; give the token of the cluster the snapshot was taken from (config key `token`)",
            etcd_data.display()
        );
    };
    let token =
        rke2_trust::Token::parse(given).context("parsing the token (config key `token`)")?;
    let sealed = read_bootstrap_keys(cfg, snap).await?;
    if sealed.is_empty() {
        bail!(
            "{}: the snapshot holds no rke2 bootstrap data (no /bootstrap/ key): it was not taken from an rke2 cluster, and a fresh server cannot get the cluster's certificates from it",
            snap.source
        );
    }
    let key = bootstrap::storage_key(&token.password);
    let wrong = || {
        anyhow::anyhow!(
            "{}: {}: the snapshot's bootstrap data was sealed with another token than the configured one; give the `token` of the cluster the snapshot was taken from (nothing was written)",
            snap.source,
            bootstrap::BootstrapError::WrongToken
        )
    };
    let Some((_, value)) = sealed.iter().find(|(k, _)| *k == key) else {
        return Err(wrong());
    };
    let doc = bootstrap::decrypt(&token.password, &String::from_utf8_lossy(value))
        .map_err(|_| wrong())?;
    // Unpacked once into the scratch dir: the whole document is checked
    // (every CA and key parses) before the data dir sees any of it.
    let check = snap.scratch.join("tls");
    bootstrap::unpack(&doc, &check)
        .with_context(|| format!("{}: the bootstrap data in the snapshot", snap.source))?;
    if token.ca_hash.is_some() {
        let ca = std::fs::read(check.join("server-ca.crt"))
            .context("reading the snapshot's server CA")?;
        if !token.ca_matches(&ca) {
            bail!(
                "{}: the token's CA hash (K10<hash>::…) is not the hash of the server CA in the snapshot: the token belongs to another cluster",
                snap.source
            );
        }
    }
    info!(snapshot = %snap.source, "the cluster's bootstrap data was read from the snapshot with the configured token");
    Ok(doc)
}

/// The `/bootstrap/` keys of a verified snapshot, read through a
/// throwaway etcd (plain HTTP on loopback ports, its data a restore of
/// the snapshot in the scratch dir): etcd's database format is read by
/// etcd. The etcd is stopped before returning.
async fn read_bootstrap_keys(
    cfg: &Config,
    snap: &VerifiedSnapshot,
) -> Result<Vec<(String, Vec<u8>)>> {
    use std::time::{Duration, Instant};
    let etcd = rke2_datastore::etcd::find_binary(&cfg.etcd_binary)?;
    let etcdctl = find_etcdctl()?;
    let free_port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port for the snapshot's etcd")?
            .port())
    };
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let name = "rke2-restore-check";
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let data = snap.scratch.join("bootstrap-etcd");
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(&snap.db)
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={name}={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .output()
        .context("running etcdctl snapshot restore")?;
    if !out.status.success() {
        bail!(
            "{}: etcdctl snapshot restore (into a scratch dir, to read the bootstrap data): {}",
            snap.source,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let log_path = snap.scratch.join("bootstrap-etcd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(&etcd);
    cmd.arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={name}={peer}"))
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe: a killed server does not leave
    // this etcd behind.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} on the snapshot", etcd.display()))?;
    let result = async {
        let store = rke2_datastore::Store::connect(std::slice::from_ref(&client), None)
            .await
            .context("connecting to the snapshot's etcd")?;
        let started = Instant::now();
        while !store.healthy().await {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "the etcd started on the snapshot (to read its bootstrap data) exited with {st}; its log: {}",
                    log_path.display()
                );
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the etcd started on the snapshot (to read its bootstrap data) was not healthy within 120 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let page = store
            .list("/bootstrap/", None, 0, 0)
            .await
            .context("reading the bootstrap data from the snapshot's etcd")?;
        Ok(page
            .items
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect())
    }
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

fn find_etcdctl() -> Result<PathBuf> {
    rke2_datastore::etcd::find_binary("etcdctl").map_err(|_| {
        anyhow::anyhow!(
            "etcdctl not found in PATH: restoring a snapshot needs it (Debian package etcd-client)"
        )
    })
}

/// Renames an etcd data directory to `etcd-old-<unix time>` beside it and
/// returns the new path.
pub fn move_aside(etcd_data: &Path) -> Result<PathBuf> {
    let mut unix = chrono::Utc::now().timestamp();
    let mut old = etcd_data.with_file_name(format!("etcd-old-{unix}"));
    while old.exists() {
        unix += 1;
        old = etcd_data.with_file_name(format!("etcd-old-{unix}"));
    }
    std::fs::rename(etcd_data, &old)
        .with_context(|| format!("moving {} aside to {}", etcd_data.display(), old.display()))?;
    Ok(old)
}

/// Restores `snap` as the data of a one-member cluster (`name` at
/// `peer_url`) in `etcd_data`, the old data moved aside first; on failure
/// the old data is put back. Returns where the old data went (`None` on a
/// fresh server, which had no database: its etcd dir held at most the
/// member name, which is written again).
pub fn restore_into(
    snap: &VerifiedSnapshot,
    etcd_data: &Path,
    name: &str,
    peer_url: &str,
) -> Result<Option<PathBuf>> {
    let etcdctl = find_etcdctl()?;
    let old = if etcd_data.join("member").exists() {
        Some(move_aside(etcd_data)?)
    } else {
        // etcdctl refuses an existing data dir.
        match std::fs::remove_dir_all(etcd_data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", etcd_data.display()));
            }
            _ => None,
        }
    };
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(&snap.db)
        .arg(format!("--data-dir={}", etcd_data.display()))
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={name}={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .output();
    let failed = match &out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = failed {
        let _ = std::fs::remove_dir_all(etcd_data);
        if let Some(old) = &old {
            std::fs::rename(old, etcd_data).with_context(|| {
                format!(
                    "putting the old database back from {} after a failed restore",
                    old.display()
                )
            })?;
        }
        bail!(
            "restoring {}: etcdctl snapshot restore: {reason}",
            snap.source
        );
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(etcd_data, std::fs::Permissions::from_mode(0o700));
    }
    rke2_trust::write_file_atomic(&etcd_data.join("name"), name.as_bytes(), 0o600)
        .context("writing the etcd member name")?;
    Ok(old)
}

/// The next steps printed once the reset is done, as RKE2 prints them
/// (with what this build does for the other servers).
pub fn next_steps(cfg: &Config, restored: Option<&str>, old: Option<&Path>) -> String {
    let mut text = String::new();
    match restored {
        Some(src) => text.push_str(&format!(
            "Etcd is restored from {src}; managed etcd cluster membership has been reset, restart without --cluster-reset flag now.\n"
        )),
        None => text.push_str(
            "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now.\n",
        ),
    }
    if let Some(old) = old {
        text.push_str(&format!(
            "The database before the restore is kept in {}.\n",
            old.display()
        ));
    }
    text.push_str(&format!(
        "Then start the other servers with their configuration unchanged (server: pointing at this one or the registration address): each finds it is no longer a member, moves its database aside to <data-dir>/server/db/etcd-old-<unix time> and joins again. Their old databases are kept; delete them once the cluster is healthy.\nThis server's data dir: {}\n",
        cfg.data_dir.display()
    ));
    text
}

/// Whether the cluster this server joined through `server_url` answers
/// with a member list that no longer has this server (its member name
/// and its peer URL are both missing): the cluster was reset or this
/// server was removed. Any failure to ask answers `false`: only a
/// positive answer moves data.
pub async fn removed_from_cluster(
    cfg: &Config,
    server_url: &str,
    etcd_data: &Path,
    peer_url: &str,
) -> bool {
    let Ok(name) = std::fs::read_to_string(etcd_data.join("name")) else {
        return false;
    };
    let name = name.trim().to_string();
    let Some(token) = cfg
        .token
        .as_deref()
        .and_then(|t| rke2_trust::Token::parse(t).ok())
    else {
        return false;
    };
    let Ok(ca) = std::fs::read(rke2_trust::tls_dir(&cfg.data_dir).join("server-ca.crt")) else {
        return false;
    };
    let Ok(sup) =
        rke2_supervisor::client::SupervisorClient::new(server_url, &ca, "server", &token.password)
    else {
        return false;
    };
    // Short: a restart while the cluster is unreachable must not wait
    // long for an answer that only matters after a reset.
    let mut info = None;
    for _ in 0..3 {
        match tokio::time::timeout(std::time::Duration::from_secs(3), sup.db_info()).await {
            Ok(Ok(v)) => {
                info = Some(v);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
    let Some(info) = info else {
        return false;
    };
    let Some(members) = info["members"].as_array().filter(|m| !m.is_empty()) else {
        return false;
    };
    let present = members.iter().any(|m| {
        m["name"].as_str() == Some(name.as_str())
            || m["peerURLs"]
                .as_array()
                .is_some_and(|p| p.iter().any(|u| u.as_str() == Some(peer_url)))
    });
    !present
}
