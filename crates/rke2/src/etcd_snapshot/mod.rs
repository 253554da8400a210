//! etcd snapshots as RKE2 takes them: on demand (`rke2 etcd-snapshot
//! save|ls|list|delete|prune`) and on a cron schedule inside every server,
//! written to `etcd-snapshot-dir` and optionally to an S3 bucket, each with
//! a SHA-256 sidecar (`<snapshot>.sha256`), recorded as `ETCDSnapshotFile`
//! objects (`k3s.cattle.io/v1`), and pruned per node and per location to
//! `etcd-snapshot-retention`.
//!
//! The snapshot itself is etcd's maintenance `Snapshot` stream from this
//! node's member: byte for byte what `etcdctl snapshot save` writes (the
//! bbolt database followed by etcd's own SHA-256 of it), zipped when
//! `etcd-snapshot-compress` is set.

pub mod cli;
pub mod local;
pub mod records;
pub mod restore;
pub mod s3;
pub mod schedule;

use std::io::Read;
use std::path::{Path, PathBuf};

use rke2_config::EtcdSnapshotConfig;
use sha2::{Digest, Sha256};

/// The extension of a compressed snapshot (k3s's).
pub const COMPRESSED_EXTENSION: &str = ".zip";
/// The extension of the checksum sidecar of a snapshot.
pub const CHECKSUM_EXTENSION: &str = ".sha256";

/// Errors of taking, storing, listing and checking snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// etcd refused or broke the snapshot stream.
    #[error("etcd snapshot from {endpoint}: {message}")]
    Etcd {
        /// The member asked.
        endpoint: String,
        /// etcd's error.
        message: String,
    },
    /// The S3 store failed; the message names the bucket and endpoint.
    #[error("{0}")]
    S3(String),
    /// The snapshot does not match its checksum or is not an etcd
    /// snapshot at all.
    #[error("snapshot {}: {reason}", path.display())]
    Invalid {
        /// The snapshot file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
}

impl SnapshotError {
    fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
        move |source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One snapshot in one location, as `ls` prints it and as an
/// `ETCDSnapshotFile` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The file (or object) name, `<name>-<node>-<unix time>[.zip]`.
    pub name: String,
    /// `file:///<dir>/<name>` or `s3://<bucket>/<folder>/<name>`.
    pub location: String,
    /// Bytes stored.
    pub size: u64,
    /// When it was taken (unix seconds).
    pub created: i64,
    /// The node that took it.
    pub node: String,
    /// The hex SHA-256 of the stored bytes, when its sidecar was found.
    pub sha256: Option<String>,
    /// Whether it lives in S3 (else on this node's disk).
    pub s3: bool,
}

impl SnapshotInfo {
    /// Whether the stored bytes are zipped.
    pub fn compressed(&self) -> bool {
        self.name.ends_with(COMPRESSED_EXTENSION)
    }
}

/// The file name of a new snapshot: `<base>-<node>-<unix time>`, as RKE2
/// names them (the node name keeps snapshots of different servers apart
/// in a shared bucket).
pub fn snapshot_name(base: &str, node: &str, unix: i64) -> String {
    format!("{base}-{node}-{unix}")
}

/// The prefix retention counts by: snapshots of this base name taken by
/// this node.
pub fn retention_prefix(base: &str, node: &str) -> String {
    format!("{base}-{node}-")
}

/// The unix time a snapshot name ends with (`...-<unix>[.zip]`).
pub fn created_from_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(COMPRESSED_EXTENSION).unwrap_or(name);
    let (_, t) = stem.rsplit_once('-')?;
    t.parse().ok().filter(|t: &i64| *t > 0)
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, SnapshotError> {
    let mut f = std::fs::File::open(path).map_err(SnapshotError::io("reading", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(SnapshotError::io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The sidecar line for a snapshot, in `sha256sum`'s format so that
/// `sha256sum -c` checks it too.
pub fn checksum_line(sha: &str, name: &str) -> String {
    format!("{sha}  {name}\n")
}

/// The checksum a sidecar holds (the first word, 64 hex digits).
pub fn parse_checksum(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    (word.len() == 64 && word.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| word.to_ascii_lowercase())
}

/// Checks a snapshot before it is used: its SHA-256 against the sidecar's
/// (when `expected` is given), then, after unzipping when it is a `.zip`,
/// that it is an etcd snapshot whose own trailing SHA-256 matches its
/// database, as `etcdutl snapshot restore` checks it. Returns the path of
/// the plain database snapshot (the unzipped copy lives in `scratch`).
pub fn verify(
    path: &Path,
    expected: Option<&str>,
    scratch: &Path,
) -> Result<PathBuf, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(want) = expected {
        let got = sha256_file(path)?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(invalid(format!(
                "SHA-256 {got} does not match the recorded {want}: the file is truncated, changed or not the snapshot it claims to be"
            )));
        }
    }
    let db = if path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(COMPRESSED_EXTENSION))
    {
        let out = scratch.join(
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(COMPRESSED_EXTENSION))
                .unwrap_or("snapshot"),
        );
        local::unzip_single(path, &out).map_err(|e| match e {
            SnapshotError::Io { .. } => e,
            other => invalid(other.to_string()),
        })?;
        out
    } else {
        path.to_path_buf()
    };
    check_etcd_snapshot(&db).map_err(invalid)?;
    Ok(db)
}

/// Whether a file is an etcd v3 snapshot with an intact trailing hash:
/// a bbolt file (its magic at offset 16) whose last 32 bytes are the
/// SHA-256 of everything before them (etcd writes database pages, so the
/// database part is a multiple of 512 bytes).
pub fn check_etcd_snapshot(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("reading: {e}"))?;
    let len = f.metadata().map_err(|e| format!("reading: {e}"))?.len();
    if len < 4096 + 32 || (len - 32) % 512 != 0 {
        return Err(format!(
            "{len} bytes is not the size of an etcd snapshot (database pages followed by a 32-byte SHA-256): truncated or not an etcd snapshot"
        ));
    }
    let mut h = Sha256::new();
    let mut remaining = len - 32;
    let mut buf = vec![0u8; 1 << 16];
    let mut first = true;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..want])
            .map_err(|e| format!("reading: {e}"))?;
        if first {
            // bbolt's meta page: magic 0xED0CDAED (little endian) at 16.
            if buf[16..20] != [0xED, 0xDA, 0x0C, 0xED] {
                return Err("not an etcd snapshot (no bolt database header)".into());
            }
            first = false;
        }
        h.update(&buf[..want]);
        remaining -= want as u64;
    }
    let mut trailer = [0u8; 32];
    f.read_exact(&mut trailer)
        .map_err(|e| format!("reading: {e}"))?;
    if h.finalize().as_slice() != trailer {
        return Err(
            "etcd's own SHA-256 at the end of the snapshot does not match its database: truncated or corrupted"
                .into(),
        );
    }
    Ok(())
}

/// Where snapshots of this configuration go and how they are named.
#[derive(Clone, Debug)]
pub struct Target {
    /// The snapshot settings (dir, name, compression, retention, S3).
    pub cfg: EtcdSnapshotConfig,
    /// This node's name.
    pub node: String,
}

/// What to do when the S3 store cannot be opened while saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Failure {
    /// Fail before anything is written (`rke2 etcd-snapshot save`).
    Abort,
    /// Keep the local snapshot and report the S3 error (the schedule:
    /// a bucket that is down must not stop local snapshots).
    KeepLocal,
}

impl Target {
    /// Opens the S3 store when `etcd-s3` is set.
    pub async fn open_s3(&self) -> Result<Option<s3::S3Store>, SnapshotError> {
        match &self.cfg.s3 {
            Some(c) => Ok(Some(s3::S3Store::open(c).await?)),
            None => Ok(None),
        }
    }

    /// Takes a snapshot named `<base>-<node>-<now>` into the snapshot
    /// directory and the bucket, prunes both to the retention for `base`
    /// and this node, and brings the node's `ETCDSnapshotFile` records up
    /// to date when `client` is given. Returns the snapshots written and
    /// the S3 error kept under [`S3Failure::KeepLocal`].
    pub async fn save(
        &self,
        etcd: &local::EtcdEndpoint,
        base: &str,
        client: Option<&kube::Client>,
        on_s3_failure: S3Failure,
    ) -> Result<(Vec<SnapshotInfo>, Option<SnapshotError>), SnapshotError> {
        // The bucket first: a wrong credential is found before anything
        // is written.
        let (s3, s3_error) = match self.open_s3().await {
            Ok(s) => (s, None),
            Err(e) if on_s3_failure == S3Failure::KeepLocal => (None, Some(e)),
            Err(e) => return Err(e),
        };
        // Names have one-second resolution: a second snapshot within the
        // same second takes the next free one instead of replacing the
        // first.
        let mut unix = chrono::Utc::now().timestamp();
        let taken = |n: &str| {
            self.cfg.dir.join(n).exists()
                || self
                    .cfg
                    .dir
                    .join(format!("{n}{COMPRESSED_EXTENSION}"))
                    .exists()
        };
        while taken(&snapshot_name(base, &self.node, unix)) {
            unix += 1;
        }
        let name = snapshot_name(base, &self.node, unix);
        // What was attempted, for the record of a failure (k3s records a
        // failed snapshot as an ETCDSnapshotFile with `status.error`).
        let attempted = |s3: bool| SnapshotInfo {
            name: name.clone(),
            location: match (s3, &self.cfg.s3) {
                (true, Some(c)) if c.folder.is_empty() => format!("s3://{}/{name}", c.bucket),
                (true, Some(c)) => format!("s3://{}/{}/{name}", c.bucket, c.folder),
                _ => format!("file://{}", self.cfg.dir.join(&name).display()),
            },
            size: 0,
            created: unix,
            node: self.node.clone(),
            sha256: None,
            s3,
        };
        let mut failed = Vec::new();
        let info =
            match local::save(etcd, &self.cfg.dir, &name, &self.node, self.cfg.compress).await {
                Ok(i) => i,
                Err(e) => {
                    if let Some(c) = client {
                        failed.push(self.failed_record(&attempted(false), &e));
                        self.sync_records_with_failures(c, s3.as_ref(), &failed)
                            .await;
                    }
                    return Err(e);
                }
            };
        let mut out = vec![info.clone()];
        let prefix = retention_prefix(base, &self.node);
        let mut s3_error = s3_error;
        if let Some(e) = &s3_error {
            failed.push(self.failed_record(&attempted(true), e));
        }
        if let Some(store) = &s3 {
            match store.upload(&self.cfg.dir.join(&info.name), &info).await {
                Ok(up) => {
                    out.push(up);
                    if let Err(e) = store.prune(&prefix, self.cfg.retention).await {
                        s3_error = Some(e);
                    }
                }
                Err(e) => {
                    failed.push(self.failed_record(&attempted(true), &e));
                    if on_s3_failure == S3Failure::KeepLocal {
                        s3_error = Some(e);
                    } else {
                        if let Some(c) = client {
                            self.sync_records_with_failures(c, Some(store), &failed)
                                .await;
                        }
                        return Err(e);
                    }
                }
            }
        }
        local::prune(&self.cfg.dir, &prefix, self.cfg.retention)?;
        if let Some(c) = client {
            self.sync_records_with_failures(c, s3.as_ref(), &failed)
                .await;
        }
        Ok((out, s3_error))
    }

    /// The record of a failed attempt.
    fn failed_record(&self, s: &SnapshotInfo, e: &SnapshotError) -> serde_json::Value {
        records::failed_record(
            s,
            &self.node,
            &Default::default(),
            if s.s3 { self.cfg.s3.as_ref() } else { None },
            &e.to_string(),
        )
    }

    /// Brings this node's `ETCDSnapshotFile` records in line with its
    /// snapshot directory and its snapshots in the bucket; failures are
    /// logged (the files are what counts; the next run catches up).
    pub async fn sync_records(&self, client: &kube::Client, s3: Option<&s3::S3Store>) {
        self.sync_records_with_failures(client, s3, &[]).await
    }

    /// [`Self::sync_records`], adding the records of `failed` snapshots
    /// (kept to the retention, newest first).
    pub async fn sync_records_with_failures(
        &self,
        client: &kube::Client,
        s3: Option<&s3::S3Store>,
        failed: &[serde_json::Value],
    ) {
        let local = match local::list(&self.cfg.dir, &self.node) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing snapshots for their records");
                return;
            }
        };
        let remote = match s3 {
            Some(store) => match store.list().await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "listing S3 snapshots for their records");
                    None
                }
            },
            None => None,
        };
        let metadata = records::extra_metadata(client).await;
        let s3_arg = match (&remote, &self.cfg.s3) {
            (Some(l), Some(c)) => Some((l.as_slice(), c)),
            _ => None,
        };
        if let Err(e) = records::reconcile(
            client,
            &self.node,
            &local,
            s3_arg,
            &metadata,
            failed,
            self.cfg.retention.max(1),
        )
        .await
        {
            tracing::warn!(error = %e, "updating the ETCDSnapshotFile records");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times() {
        let n = snapshot_name("etcd-snapshot", "node-a", 1_700_000_000);
        assert_eq!(n, "etcd-snapshot-node-a-1700000000");
        assert_eq!(created_from_name(&n), Some(1_700_000_000));
        assert_eq!(created_from_name(&format!("{n}.zip")), Some(1_700_000_000));
        assert_eq!(created_from_name("foo"), None);
        assert!(n.starts_with(&retention_prefix("etcd-snapshot", "node-a")));
    }

    #[test]
    fn checksum_sidecar_round_trip() {
        let sha = "ab".repeat(32);
        assert_eq!(parse_checksum(&checksum_line(&sha, "x")), Some(sha.clone()));
        assert_eq!(parse_checksum("nothex  x\n"), None);
    }

    #[test]
    fn a_foreign_file_is_not_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 8192 + 32]).unwrap();
        let e = check_etcd_snapshot(&p).unwrap_err();
        assert!(e.contains("no bolt database header"), "{e}");
        std::fs::write(&p, b"short").unwrap();
        let e = check_etcd_snapshot(&p).unwrap_err();
        assert!(e.contains("not the size of an etcd snapshot"), "{e}");
    }
}
