//! Air-gap images: tarballs dropped into `<data-dir>/agent/images/` are
//! imported into containerd's `k8s.io` namespace (the only one CRI sees)
//! when the node role starts and whenever a file appears or changes.
//!
//! `.tar` is imported as is; `.tar.gz`/`.tgz` and `.tar.zst`/`.tzst` are
//! streamed through `gzip -dc` / `zstd -dc`. A bad file is logged with
//! its name and skipped; the others are still imported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::RuntimeError;

/// How often the folder is looked at for new files.
pub const RESCAN: Duration = Duration::from_secs(2);

/// Imports the tarballs of one folder, remembering what it did.
pub struct ImageImporter {
    dir: PathBuf,
    socket: PathBuf,
    ctr: PathBuf,
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    imported: Option<ImportedRefs>,
}

/// The image references imported from the air-gap folder, shared with the
/// node's image garbage collection, which keeps them (as RKE2 pins
/// imported images: no registry may serve them again).
pub type ImportedRefs = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// The outcome of importing one file.
#[derive(Debug)]
pub struct Imported {
    /// The tarball.
    pub file: PathBuf,
    /// The image references it held, or why it failed.
    pub result: Result<Vec<String>, RuntimeError>,
}

fn decompressor(name: &str) -> Option<Option<&'static str>> {
    if name.ends_with(".tar") {
        Some(None)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(Some("gzip"))
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Some(Some("zstd"))
    } else {
        None
    }
}

impl ImageImporter {
    /// An importer for `dir` into the containerd at `socket`.
    pub fn new(dir: &Path, socket: &Path) -> ImageImporter {
        ImageImporter {
            dir: dir.to_path_buf(),
            socket: socket.to_path_buf(),
            ctr: PathBuf::from("ctr"),
            seen: HashMap::new(),
            imported: None,
        }
    }

    /// Records every reference imported into `refs` as well.
    pub fn with_imported(mut self, refs: ImportedRefs) -> ImageImporter {
        self.imported = Some(refs);
        self
    }

    /// Imports every file that is new or changed since the last call.
    /// A missing folder is no error (nothing to import).
    pub async fn scan(&mut self) -> Vec<Imported> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(decomp) = decompressor(&name) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let stamp = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            if self.seen.get(&file) == Some(&stamp) {
                continue;
            }
            // A file still being copied in changes size between two looks;
            // it is imported on a later scan once it is still.
            if meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age < Duration::from_millis(500))
            {
                continue;
            }
            let result = self.import(&file, decomp).await;
            match &result {
                Ok(refs) => {
                    info!(file = %file.display(), images = ?refs, "imported images");
                    if let Some(set) = &self.imported
                        && let Ok(mut set) = set.lock()
                    {
                        set.extend(refs.iter().cloned());
                    }
                }
                Err(e) => warn!(file = %file.display(), error = %e, "image tarball not imported"),
            }
            self.seen.insert(file.clone(), stamp);
            out.push(Imported { file, result });
        }
        out
    }

    /// Imports one archive now (a `.tar`, or compressed as the folder's
    /// files may be), returning the image references it held.
    pub async fn import_file(&self, file: &Path) -> Result<Vec<String>, RuntimeError> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.import(file, decompressor(&name).unwrap_or(None)).await
    }

    async fn import(
        &self,
        file: &Path,
        decomp: Option<&'static str>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.socket)
            .args([
                "--namespace",
                "k8s.io",
                "images",
                "import",
                "--no-unpack=false",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!("ctr images import {}", file.display());
        let mut feeder = None;
        match decomp {
            None => {
                cmd.arg(file).stdin(Stdio::null());
            }
            Some(tool) => {
                let mut d = std::process::Command::new(tool);
                d.arg("-dc")
                    .arg(file)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = d.spawn().map_err(|e| RuntimeError::Command {
                    command: format!("{tool} -dc {}", file.display()),
                    message: format!("cannot run {tool}: {e}"),
                })?;
                let stdout = child.stdout.take().expect("piped stdout");
                cmd.arg("-").stdin(Stdio::from(stdout));
                feeder = Some((tool, child));
            }
        }
        let out = cmd.output().await.map_err(|e| RuntimeError::Command {
            command: shown.clone(),
            message: format!("cannot run ctr: {e}"),
        })?;
        if let Some((tool, mut child)) = feeder {
            let status = child.wait().map_err(|e| RuntimeError::Command {
                command: format!("{tool} -dc {}", file.display()),
                message: e.to_string(),
            })?;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(RuntimeError::Command {
                    command: format!("{tool} -dc {}", file.display()),
                    message: format!("{status}: {}", err.trim()),
                });
            }
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(RuntimeError::Command {
                command: shown,
                message: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        // "unpacking docker.io/library/busybox:1 (sha256:...)...done"
        Ok(stdout
            .lines()
            .filter_map(|l| l.strip_prefix("unpacking "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Rescans every [`RESCAN`] until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RESCAN) => {}
            }
            self.scan().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_extensions() {
        assert_eq!(decompressor("a.tar"), Some(None));
        assert_eq!(decompressor("a.tar.gz"), Some(Some("gzip")));
        assert_eq!(decompressor("a.tgz"), Some(Some("gzip")));
        assert_eq!(decompressor("a.tar.zst"), Some(Some("zstd")));
        assert_eq!(decompressor("a.txt"), None);
        assert_eq!(decompressor("README"), None);
    }
}
