//! Snapshots on this node's disk: taking one from etcd into
//! `etcd-snapshot-dir`, listing, deleting and pruning them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::{
    CHECKSUM_EXTENSION, COMPRESSED_EXTENSION, SnapshotError, SnapshotInfo, checksum_line,
    created_from_name, parse_checksum, sha256_file,
};

/// How to reach this node's etcd member.
#[derive(Clone, Debug)]
pub struct EtcdEndpoint {
    /// `https://<ip>:2379`.
    pub url: String,
    /// The etcd server CA (PEM).
    pub ca_pem: String,
    /// The etcd client certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
}

impl EtcdEndpoint {
    /// The member of the server whose data dir this is: its client URL
    /// as the server recorded it at start, and the etcd client
    /// certificate under `server/tls/etcd`.
    pub fn of_data_dir(data_dir: &Path) -> Result<Self, SnapshotError> {
        let tls = rke2_trust::tls_dir(data_dir).join("etcd");
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| SnapshotError::Io {
                what: "reading the etcd client credentials",
                path: p,
                source,
            })
        };
        let url_file = endpoint_file(data_dir);
        let url = match std::fs::read_to_string(&url_file) {
            Ok(s) => s.trim().to_string(),
            Err(_) => "https://127.0.0.1:2379".into(),
        };
        Ok(Self {
            url,
            ca_pem: read(tls.join("server-ca.crt"))?,
            cert_pem: read(tls.join("client.crt"))?,
            key_pem: read(tls.join("client.key"))?,
        })
    }

    async fn connect(&self) -> Result<Client, SnapshotError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&self.ca_pem))
                    .identity(Identity::from_pem(&self.cert_pem, &self.key_pem)),
            );
        Client::connect([self.url.as_str()], Some(opts))
            .await
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Etcd {
            endpoint: self.url.clone(),
            message: e.to_string(),
        }
    }
}

/// Where the server records its own etcd client URL for `rke2
/// etcd-snapshot` (which may run without the server's flags).
pub fn endpoint_file(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("etcd-client-url")
}

/// Creates `dir` (0700) when missing.
fn ensure_dir(dir: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SnapshotError::io("creating the snapshot directory", dir))
}

fn create_secret(path: &Path) -> Result<std::fs::File, SnapshotError> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(SnapshotError::io("creating", path))
}

/// Takes a snapshot of the member at `etcd` into `dir/<name>` (or
/// `<name>.zip` when `compress`), with its `.sha256` sidecar. The bytes go
/// to a hidden temporary file first and are renamed into place only when
/// complete and synced, so a failed or interrupted snapshot never leaves
/// a file that looks like a snapshot. Files are 0600 (the snapshot holds
/// every Secret of the cluster).
pub async fn save(
    etcd: &EtcdEndpoint,
    dir: &Path,
    name: &str,
    node: &str,
    compress: bool,
) -> Result<SnapshotInfo, SnapshotError> {
    ensure_dir(dir)?;
    let part = dir.join(format!(".{name}.part"));
    let result = save_inner(etcd, dir, name, node, compress, &part).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(dir.join(format!(".{name}{COMPRESSED_EXTENSION}.part")));
    }
    result
}

async fn save_inner(
    etcd: &EtcdEndpoint,
    dir: &Path,
    name: &str,
    node: &str,
    compress: bool,
    part: &Path,
) -> Result<SnapshotInfo, SnapshotError> {
    let created = super::created_from_name(name).unwrap_or_else(|| chrono::Utc::now().timestamp());
    let mut client = etcd.connect().await?;
    let mut stream = client.snapshot().await.map_err(|e| etcd.err(e))?;
    let mut file = create_secret(part)?;
    while let Some(msg) = stream.message().await.map_err(|e| etcd.err(e))? {
        file.write_all(msg.blob())
            .map_err(SnapshotError::io("writing", part))?;
    }
    file.sync_all()
        .map_err(SnapshotError::io("syncing", part))?;
    drop(file);
    // An interrupted stream ends without an error on some paths; the
    // trailing hash tells.
    super::check_etcd_snapshot(part)
        .map_err(|reason| etcd.err(format!("the snapshot stream was incomplete: {reason}")))?;
    let (final_name, tmp) = if compress {
        let zipped_name = format!("{name}{COMPRESSED_EXTENSION}");
        let zpart = dir.join(format!(".{zipped_name}.part"));
        zip_single(part, name, &zpart)?;
        let _ = std::fs::remove_file(part);
        (zipped_name, zpart)
    } else {
        (name.to_string(), part.to_path_buf())
    };
    let sha = sha256_file(&tmp)?;
    let size = std::fs::metadata(&tmp)
        .map_err(SnapshotError::io("reading", &tmp))?
        .len();
    let path = dir.join(&final_name);
    // The sidecar first: a snapshot is never seen without its checksum.
    write_sidecar(&path, &final_name, &sha)?;
    std::fs::rename(&tmp, &path).map_err(SnapshotError::io("renaming into", &path))?;
    sync_dir(dir);
    Ok(SnapshotInfo {
        location: location_of(&path),
        name: final_name,
        size,
        created,
        node: node.to_string(),
        sha256: Some(sha),
        s3: false,
    })
}

fn write_sidecar(snapshot: &Path, name: &str, sha: &str) -> Result<(), SnapshotError> {
    let side = sidecar(snapshot);
    let tmp = side.with_file_name(format!(".{name}{CHECKSUM_EXTENSION}.part"));
    let mut f = create_secret(&tmp)?;
    f.write_all(checksum_line(sha, name).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(SnapshotError::io("writing", &tmp))?;
    std::fs::rename(&tmp, &side).map_err(SnapshotError::io("renaming into", &side))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The checksum sidecar of a snapshot file.
pub fn sidecar(snapshot: &Path) -> PathBuf {
    let mut s = snapshot.as_os_str().to_os_string();
    s.push(CHECKSUM_EXTENSION);
    PathBuf::from(s)
}

/// The `file://` location of a local snapshot, as k3s records it.
pub fn location_of(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Zips `src` as the single entry `entry` into `out` (0600), as k3s's
/// `etcd-snapshot-compress` does.
fn zip_single(src: &Path, entry: &str, out: &Path) -> Result<(), SnapshotError> {
    let file = create_secret(out)?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true)
        .unix_permissions(0o600);
    let zerr = |e: zip::result::ZipError| SnapshotError::Io {
        what: "compressing into",
        path: out.to_path_buf(),
        source: std::io::Error::other(e),
    };
    zip.start_file(entry, opts).map_err(zerr)?;
    let mut input = std::fs::File::open(src).map_err(SnapshotError::io("reading", src))?;
    std::io::copy(&mut input, &mut zip).map_err(SnapshotError::io("compressing into", out))?;
    let file = zip.finish().map_err(zerr)?;
    file.sync_all().map_err(SnapshotError::io("syncing", out))
}

/// Unzips the single entry of a compressed snapshot into `out` (0600).
pub fn unzip_single(src: &Path, out: &Path) -> Result<(), SnapshotError> {
    let file = std::fs::File::open(src).map_err(SnapshotError::io("reading", src))?;
    let invalid = |reason: String| SnapshotError::Invalid {
        path: src.to_path_buf(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| invalid(format!("not a readable zip archive: {e}")))?;
    if zip.len() != 1 {
        return Err(invalid(format!(
            "a compressed snapshot holds one file; this archive holds {}",
            zip.len()
        )));
    }
    let mut entry = zip
        .by_index(0)
        .map_err(|e| invalid(format!("reading the archive: {e}")))?;
    let mut f = create_secret(out)?;
    std::io::copy(&mut entry, &mut f).map_err(|e| invalid(format!("decompressing: {e}")))?;
    f.sync_all().map_err(SnapshotError::io("syncing", out))
}

/// Whether a directory entry is a snapshot (not a sidecar, temporary
/// file or anything hidden).
fn is_snapshot_name(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(CHECKSUM_EXTENSION) && !name.ends_with(".part")
}

/// The snapshots in `dir` (none when it does not exist), oldest first.
/// `node` is recorded as their node: this directory is this node's.
pub fn list(dir: &Path, node: &str) -> Result<Vec<SnapshotInfo>, SnapshotError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(SnapshotError::Io {
                what: "listing",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || !is_snapshot_name(&name) {
            continue;
        }
        let path = entry.path();
        let created = created_from_name(&name).unwrap_or_else(|| {
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
        let sha256 = std::fs::read_to_string(sidecar(&path))
            .ok()
            .and_then(|t| parse_checksum(&t));
        out.push(SnapshotInfo {
            location: location_of(&path),
            name,
            size: meta.len(),
            created,
            node: node.to_string(),
            sha256,
            s3: false,
        });
    }
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(out)
}

/// Deletes a snapshot and its sidecar; `Ok(false)` when it is not there.
pub fn delete(dir: &Path, name: &str) -> Result<bool, SnapshotError> {
    if name.contains('/') || !is_snapshot_name(name) {
        return Ok(false);
    }
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(SnapshotError::Io {
                what: "deleting",
                path,
                source: e,
            });
        }
    }
    let _ = std::fs::remove_file(sidecar(&path));
    Ok(true)
}

/// Keeps the newest `retention` snapshots whose name starts with `prefix`
/// (this node's snapshots of one base name) and deletes the rest; returns
/// the names deleted. Other files are never touched.
pub fn prune(dir: &Path, prefix: &str, retention: usize) -> Result<Vec<String>, SnapshotError> {
    let mine: Vec<SnapshotInfo> = list(dir, "")?
        .into_iter()
        .filter(|s| s.name.starts_with(prefix) && created_from_name(&s.name).is_some())
        .collect();
    let excess = mine.len().saturating_sub(retention);
    let mut deleted = Vec::new();
    for s in mine.into_iter().take(excess) {
        if delete(dir, &s.name)? {
            deleted.push(s.name);
        }
    }
    Ok(deleted)
}
