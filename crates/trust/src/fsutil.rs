//! Crash-safe file writing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::TrustError;

/// Mode of secret files: private keys, tokens, kubeconfigs.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of public files: certificates.
pub const PUBLIC_MODE: u32 = 0o644;

/// Write `bytes` to `path` so that a crash at any moment leaves either the
/// old content or the new content, never a mix.
///
/// Parent directories are created. The data goes to a temporary file in the
/// same directory, created with `mode` (and then chmod-ed to exactly `mode`,
/// whatever the umask), fsync-ed, renamed over `path`, and the directory is
/// fsync-ed. The resulting file has mode `mode` even if `path` existed with
/// another one.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| TrustError::io("create directory", dir, e))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            TrustError::io(
                "write file",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
            )
        })?
        .to_string_lossy()
        .into_owned();

    // Find a free temporary name (create_new refuses existing files).
    let mut attempt = 0u32;
    let (tmp_path, mut file) = loop {
        let suffix: u64 = rand::random();
        let tmp = dir.join(format!(
            ".{file_name}.tmp.{}.{suffix:016x}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(e) => return Err(TrustError::io("create temporary file", tmp, e)),
        }
    };

    let result = (|| {
        // The umask may have removed bits; set exactly the requested mode
        // before any content is written.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| TrustError::io("chmod temporary file", &tmp_path, e))?;
        file.write_all(bytes)
            .map_err(|e| TrustError::io("write temporary file", &tmp_path, e))?;
        file.sync_all()
            .map_err(|e| TrustError::io("fsync temporary file", &tmp_path, e))?;
        drop(file);
        fs::rename(&tmp_path, path).map_err(|e| TrustError::io("rename into place", path, e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
        return result;
    }
    fsync_dir(dir)
}

/// Write `bytes` to `path` only when the file does not already hold exactly
/// these bytes; in every case make sure its mode is `mode`. Returns `true`
/// when the content was (re)written.
pub fn write_file_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, TrustError> {
    match fs::read(path) {
        Ok(existing) if existing == bytes => {
            let meta = fs::metadata(path).map_err(|e| TrustError::io("stat file", path, e))?;
            if meta.permissions().mode() & 0o7777 != mode & 0o7777 {
                fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| TrustError::io("chmod file", path, e))?;
            }
            Ok(false)
        }
        _ => {
            write_file_atomic(path, bytes, mode)?;
            Ok(true)
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<(), TrustError> {
    let d = File::open(dir).map_err(|e| TrustError::io("open directory for fsync", dir, e))?;
    d.sync_all()
        .map_err(|e| TrustError::io("fsync directory", dir, e))
}

/// Read a file to a string, mapping errors with the path.
pub(crate) fn read_string(path: &Path, step: &'static str) -> Result<String, TrustError> {
    fs::read_to_string(path).map_err(|e| TrustError::io(step, path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/secret");
        write_file_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_file_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn if_changed_only_chmods_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_file_if_changed(&p, b"x", 0o600).unwrap());
        assert!(!write_file_if_changed(&p, b"x", 0o644).unwrap());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(write_file_if_changed(&p, b"y", 0o644).unwrap());
    }
}
