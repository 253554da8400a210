//! Snapshots in an S3-compatible bucket (`etcd-s3*`), through the
//! `rust-s3` client: objects `<folder>/<name>` with their checksum
//! sidecars `<folder>/<name>.sha256`.

use std::path::Path;

use rke2_config::S3Config;
use s3::Bucket;
use s3::creds::Credentials;
use s3::region::Region;

use super::{
    CHECKSUM_EXTENSION, SnapshotError, SnapshotInfo, checksum_line, created_from_name,
    parse_checksum,
};

/// An open bucket with the settings it came from.
pub struct S3Store {
    bucket: Box<Bucket>,
    cfg: S3Config,
}

impl S3Store {
    /// Prepares the client and checks that the bucket answers to these
    /// credentials (a listing of the folder), so a wrong key fails
    /// before anything is written anywhere.
    pub async fn open(cfg: &S3Config) -> Result<Self, SnapshotError> {
        if cfg.endpoint_ca.is_some() {
            return Err(SnapshotError::S3(format!(
                "etcd-s3-endpoint-ca is not supported by this build: its S3 client verifies {} against the public web PKI only; use a publicly trusted certificate, or etcd-s3-skip-ssl-verify",
                cfg.endpoint
            )));
        }
        let scheme = if cfg.insecure { "http" } else { "https" };
        let region = Region::Custom {
            region: cfg.region.clone(),
            endpoint: format!("{scheme}://{}", cfg.endpoint),
        };
        let creds = match (&cfg.access_key, &cfg.secret_key) {
            (Some(a), Some(s)) => Credentials::new(Some(a), Some(s), None, None, None)
                .map_err(|e| SnapshotError::S3(format!("S3 credentials: {e}")))?,
            _ => Credentials::anonymous()
                .map_err(|e| SnapshotError::S3(format!("S3 credentials: {e}")))?,
        };
        let mut bucket = Bucket::new(&cfg.bucket, region, creds)
            .map_err(|e| SnapshotError::S3(describe(cfg, "opening", &e)))?
            .with_path_style();
        if cfg.skip_ssl_verify {
            bucket = Box::new(
                bucket
                    .set_dangerous_config(true, true)
                    .map_err(|e| SnapshotError::S3(describe(cfg, "configuring", &e)))?,
            );
        }
        bucket = bucket
            .with_request_timeout(cfg.timeout)
            .map_err(|e| SnapshotError::S3(describe(cfg, "configuring", &e)))?;
        let store = Self {
            bucket,
            cfg: cfg.clone(),
        };
        store
            .bucket
            .list(store.key(""), None)
            .await
            .map_err(|e| SnapshotError::S3(describe(cfg, "listing", &e)))?;
        Ok(store)
    }

    /// The object key of a snapshot name.
    fn key(&self, name: &str) -> String {
        if self.cfg.folder.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.cfg.folder)
        }
    }

    fn location(&self, name: &str) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.key(name))
    }

    fn err(&self, what: &str, e: &s3::error::S3Error) -> SnapshotError {
        SnapshotError::S3(describe(&self.cfg, what, e))
    }

    /// Uploads a local snapshot and its checksum sidecar (the sidecar
    /// first: an object is never listed without its checksum).
    pub async fn upload(
        &self,
        path: &Path,
        info: &SnapshotInfo,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let sha = match &info.sha256 {
            Some(s) => s.clone(),
            None => super::sha256_file(path)?,
        };
        self.bucket
            .put_object(
                self.key(&format!("{}{CHECKSUM_EXTENSION}", info.name)),
                checksum_line(&sha, &info.name).as_bytes(),
            )
            .await
            .map_err(|e| self.err("uploading the checksum of a snapshot to", &e))?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(SnapshotError::io("reading", path))?;
        self.bucket
            .put_object_stream(&mut file, self.key(&info.name))
            .await
            .map_err(|e| self.err("uploading a snapshot to", &e))?;
        Ok(SnapshotInfo {
            location: self.location(&info.name),
            s3: true,
            sha256: Some(sha),
            ..info.clone()
        })
    }

    /// The snapshots in the folder (sidecars read for their checksums),
    /// oldest first. Objects in deeper folders are not ours.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let prefix = if self.cfg.folder.is_empty() {
            String::new()
        } else {
            format!("{}/", self.cfg.folder)
        };
        let pages = self
            .bucket
            .list(prefix.clone(), Some("/".into()))
            .await
            .map_err(|e| self.err("listing", &e))?;
        let objects: Vec<(String, u64, String)> = pages
            .into_iter()
            .flat_map(|p| p.contents)
            .filter_map(|o| {
                let name = o.key.strip_prefix(&prefix)?.to_string();
                (!name.is_empty() && !name.contains('/')).then_some((name, o.size, o.last_modified))
            })
            .collect();
        let mut out = Vec::new();
        for (name, size, modified) in &objects {
            if name.ends_with(CHECKSUM_EXTENSION) || name.starts_with('.') {
                continue;
            }
            let side = format!("{name}{CHECKSUM_EXTENSION}");
            let sha256 = if objects.iter().any(|(n, _, _)| *n == side) {
                self.bucket
                    .get_object(self.key(&side))
                    .await
                    .ok()
                    .and_then(|r| parse_checksum(&String::from_utf8_lossy(r.as_slice())))
            } else {
                None
            };
            let created = created_from_name(name).unwrap_or_else(|| {
                chrono::DateTime::parse_from_rfc3339(modified)
                    .map(|t| t.timestamp())
                    .unwrap_or(0)
            });
            out.push(SnapshotInfo {
                location: self.location(name),
                name: name.clone(),
                size: *size,
                created,
                node: "s3".into(),
                sha256,
                s3: true,
            });
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// Deletes a snapshot object and its sidecar; `Ok(false)` when absent.
    pub async fn delete(&self, name: &str) -> Result<bool, SnapshotError> {
        let present = self.list().await?.iter().any(|s| s.name == name);
        if !present {
            return Ok(false);
        }
        self.bucket
            .delete_object(self.key(name))
            .await
            .map_err(|e| self.err("deleting a snapshot from", &e))?;
        let _ = self
            .bucket
            .delete_object(self.key(&format!("{name}{CHECKSUM_EXTENSION}")))
            .await;
        Ok(true)
    }

    /// Keeps the newest `retention` snapshots named with `prefix` (one
    /// node's snapshots of one base name) and deletes the rest.
    pub async fn prune(
        &self,
        prefix: &str,
        retention: usize,
    ) -> Result<Vec<String>, SnapshotError> {
        let mine: Vec<SnapshotInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|s| s.name.starts_with(prefix) && created_from_name(&s.name).is_some())
            .collect();
        let excess = mine.len().saturating_sub(retention);
        let mut deleted = Vec::new();
        for s in mine.into_iter().take(excess) {
            if self.delete(&s.name).await? {
                deleted.push(s.name);
            }
        }
        Ok(deleted)
    }

    /// Downloads a snapshot to `out` (0600) and returns the checksum its
    /// sidecar records, if any.
    pub async fn download(&self, name: &str, out: &Path) -> Result<Option<String>, SnapshotError> {
        use std::os::unix::fs::OpenOptionsExt;
        let sha = self
            .bucket
            .get_object(self.key(&format!("{name}{CHECKSUM_EXTENSION}")))
            .await
            .ok()
            .and_then(|r| parse_checksum(&String::from_utf8_lossy(r.as_slice())));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(out)
            .map_err(SnapshotError::io("creating", out))?;
        let mut f = tokio::fs::File::from_std(f);
        self.bucket
            .get_object_to_writer(self.key(name), &mut f)
            .await
            .map_err(|e| self.err("downloading a snapshot from", &e))?;
        Ok(sha)
    }
}

/// An S3 failure with the bucket and endpoint it concerns, and the
/// credential problem spelled out for the usual 403.
fn describe(cfg: &S3Config, what: &str, e: &s3::error::S3Error) -> String {
    let scheme = if cfg.insecure { "http" } else { "https" };
    let hint = match e {
        s3::error::S3Error::HttpFailWithBody(403, _) => {
            ": access denied (check etcd-s3-access-key and etcd-s3-secret-key)"
        }
        s3::error::S3Error::HttpFailWithBody(404, _) => ": no such bucket",
        _ => "",
    };
    let detail = match e {
        s3::error::S3Error::HttpFailWithBody(code, body) => {
            let code_text = body
                .split("<Code>")
                .nth(1)
                .and_then(|r| r.split("</Code>").next())
                .unwrap_or("");
            format!("HTTP {code} {code_text}")
        }
        other => other.to_string(),
    };
    format!(
        "S3 {what} bucket {:?} at {scheme}://{}: {detail}{hint}",
        cfg.bucket, cfg.endpoint
    )
}
