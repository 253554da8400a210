//! Bootstrap data: the shared secrets every server of a cluster must hold
//! identically (DESIGN.md section 4).
//!
//! The document is `{"<path relative to server/tls>": {"timestamp":
//! "<RFC3339 mtime>", "content": "<base64>"}}` with the five CA
//! certificate/key pairs, `service.key`, and a [`PASSWD_ENTRY`] holding the
//! supervisor passwords. It travels unencrypted over TLS from
//! `/v1-rke2/server-bootstrap` (as in k3s) and is stored in etcd encrypted
//! with the token password ([`encrypt`], [`storage_key`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use rke2_trust::{CA_FILES, PUBLIC_MODE, SECRET_MODE, SERVICE_ACCOUNT_KEY_FILE, TrustError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the document entry holding the supervisor passwords. It is not
/// a file under `server/tls`: [`unpack`] returns it instead of writing it,
/// because the binary owns the token files.
pub const PASSWD_ENTRY: &str = "passwd";

/// PBKDF2-HMAC-SHA256 iterations for the storage key.
///
/// Measured: 100 000 took 240-280 ms per derivation in a debug build on the
/// 2-core test machine (ring's Rust code is unoptimised in dev builds), over
/// the 200 ms budget, so it is halved; still far above k3s's 4096
/// (PBKDF2-SHA1). Part of the stored format: changing it makes existing
/// bootstrap data undecryptable (it would read as a wrong token).
pub const PBKDF2_ITERATIONS: u32 = 50_000;

const SALT_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Everything that can go wrong with bootstrap data.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The stored data does not decrypt with this token's password. The
    /// text is the one RKE2 operators know and search for.
    #[error("bootstrap data already found and encrypted with a different token")]
    WrongToken,
    /// The stored or received document is not what it should be.
    #[error("malformed bootstrap data: {0}")]
    Malformed(String),
    /// An entry would be written outside the TLS directory.
    #[error(
        "refusing bootstrap entry {0:?}: the path must be relative and stay inside the TLS directory"
    )]
    UnsafePath(String),
    /// A file that must be in the document is missing from it.
    #[error("bootstrap data lacks {0}")]
    Missing(String),
    /// Reading a file to pack failed.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed, or a certificate/key in the document does not
    /// parse.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// The supervisor passwords (basic-auth users of DESIGN.md section 3).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwd {
    /// Password of user `server`: the token password; may bootstrap servers.
    pub server: String,
    /// Password of user `node`: the agent-token password (or the same as
    /// `server` when no agent token is set); may only register agents.
    pub node: String,
}

// Never print passwords, even in debug logs.
impl fmt::Debug for Passwd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwd")
            .field("server", &"<redacted>")
            .field("node", &"<redacted>")
            .finish()
    }
}

/// One entry of the document.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// RFC 3339 modification time of the file when packed. Informational:
    /// kept so a future reconcile can prefer the newer side, as k3s does.
    #[serde(default)]
    timestamp: String,
    /// The file bytes, base64 (standard alphabet, padded).
    content: String,
}

/// Every file of the document, relative to the TLS dir: CA pairs, then the
/// service-account key.
fn required_files() -> impl Iterator<Item = &'static str> {
    CA_FILES
        .iter()
        .flat_map(|(c, k)| [*c, *k])
        .chain(std::iter::once(SERVICE_ACCOUNT_KEY_FILE))
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Pack the shared secrets under `tls_dir` and the supervisor passwords
/// into the bootstrap JSON document.
pub fn pack(tls_dir: &Path, passwd: &Passwd) -> Result<Vec<u8>, BootstrapError> {
    let mut doc = BTreeMap::new();
    for rel in required_files() {
        let path = tls_dir.join(rel);
        let read_err = |source| BootstrapError::Read {
            path: path.clone(),
            source,
        };
        let bytes = fs::read(&path).map_err(read_err)?;
        let mtime = fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(read_err)?;
        doc.insert(
            rel.to_string(),
            Entry {
                timestamp: rfc3339(mtime),
                content: B64.encode(bytes),
            },
        );
    }
    let passwd_json = serde_json::to_vec(passwd).expect("Passwd serializes");
    doc.insert(
        PASSWD_ENTRY.to_string(),
        Entry {
            timestamp: rfc3339(std::time::SystemTime::now()),
            content: B64.encode(passwd_json),
        },
    );
    Ok(serde_json::to_vec(&doc).expect("bootstrap document serializes"))
}

/// A relative path that cannot leave the directory it is joined to: only
/// normal components, no `..`, no root, no `.`-only or empty path.
fn safe_relative(name: &str) -> Result<PathBuf, BootstrapError> {
    let p = Path::new(name);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(BootstrapError::UnsafePath(name.to_string()));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(BootstrapError::UnsafePath(name.to_string()));
    }
    Ok(out)
}

/// Write the files of a bootstrap document under `tls_dir` and return the
/// supervisor passwords it carries.
///
/// The whole document is checked before anything is written (every path
/// stays inside `tls_dir`, every required file is present, certificates
/// and keys parse), so a bad document leaves the directory untouched.
/// Keys (`*.key`) get mode 0600, everything else 0644. Files already
/// holding the same bytes are not rewritten (only their mode is fixed).
pub fn unpack(doc: &[u8], tls_dir: &Path) -> Result<Passwd, BootstrapError> {
    let entries: BTreeMap<String, Entry> = serde_json::from_slice(doc)
        .map_err(|e| BootstrapError::Malformed(format!("not a bootstrap JSON document: {e}")))?;
    let decode = |name: &str, e: &Entry| {
        B64.decode(e.content.as_bytes())
            .map_err(|err| BootstrapError::Malformed(format!("content of {name}: {err}")))
    };

    let passwd_entry = entries
        .get(PASSWD_ENTRY)
        .ok_or_else(|| BootstrapError::Missing(PASSWD_ENTRY.to_string()))?;
    let passwd: Passwd = serde_json::from_slice(&decode(PASSWD_ENTRY, passwd_entry)?)
        .map_err(|e| BootstrapError::Malformed(format!("{PASSWD_ENTRY}: {e}")))?;

    for rel in required_files() {
        if !entries.contains_key(rel) {
            return Err(BootstrapError::Missing(rel.to_string()));
        }
    }

    let mut files = Vec::with_capacity(entries.len());
    for (name, entry) in &entries {
        if name == PASSWD_ENTRY {
            continue;
        }
        let rel = safe_relative(name)?;
        let bytes = decode(name, entry)?;
        let is_key = name.ends_with(".key");
        // Catch a truncated or garbled document before it replaces good
        // trust material.
        if is_key {
            rke2_trust::parse_key(&bytes)?;
        } else if name.ends_with(".crt") {
            rke2_trust::parse_certs(&bytes)?;
        }
        let mode = if is_key { SECRET_MODE } else { PUBLIC_MODE };
        files.push((tls_dir.join(rel), bytes, mode));
    }
    for (path, bytes, mode) in files {
        rke2_trust::write_file_if_changed(&path, &bytes, mode)?;
    }
    Ok(passwd)
}

/// Replaces the given files (paths relative to the TLS dir, as in the
/// document) in a bootstrap document, keeping every other entry and the
/// passwords: the stored side of `rke2 certificate rotate-ca`. Only the
/// document's own files may be replaced.
pub fn replace_files(doc: &[u8], files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, BootstrapError> {
    let mut entries: BTreeMap<String, Entry> = serde_json::from_slice(doc)
        .map_err(|e| BootstrapError::Malformed(format!("not a bootstrap JSON document: {e}")))?;
    let now = rfc3339(std::time::SystemTime::now());
    for (name, bytes) in files {
        if !required_files().any(|r| r == name) {
            return Err(BootstrapError::UnsafePath(name.clone()));
        }
        entries.insert(
            name.clone(),
            Entry {
                timestamp: now.clone(),
                content: B64.encode(bytes),
            },
        );
    }
    Ok(serde_json::to_vec(&entries).expect("bootstrap document serializes"))
}

/// Replaces the supervisor passwords of a bootstrap document, keeping its
/// files: a token rotation re-encrypts what is stored (which may hold a CA
/// rotation no server has taken yet) rather than what one server has on
/// disk.
pub fn set_passwd(doc: &[u8], passwd: &Passwd) -> Result<Vec<u8>, BootstrapError> {
    let mut entries: BTreeMap<String, Entry> = serde_json::from_slice(doc)
        .map_err(|e| BootstrapError::Malformed(format!("not a bootstrap JSON document: {e}")))?;
    let passwd_json = serde_json::to_vec(passwd).expect("Passwd serializes");
    entries.insert(
        PASSWD_ENTRY.to_string(),
        Entry {
            timestamp: rfc3339(std::time::SystemTime::now()),
            content: B64.encode(passwd_json),
        },
    );
    Ok(serde_json::to_vec(&entries).expect("bootstrap document serializes"))
}

/// How the files of a bootstrap document compare with those on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Files whose stored content differs and is newer than the file under
    /// the TLS dir (or the file is missing): what a server restarted after
    /// `rke2 certificate rotate-ca` takes from etcd.
    pub take: Vec<String>,
    /// Files that differ but were changed on disk after the stored copy:
    /// kept (an operator's doing), and worth a warning, as k3s warns of
    /// files newer on disk than in the datastore.
    pub newer_on_disk: Vec<String>,
}

/// Compares the files of a bootstrap document with those under `tls_dir`
/// by content, and by the entry's timestamp against the file's mtime.
pub fn compare_files(doc: &[u8], tls_dir: &Path) -> Result<Comparison, BootstrapError> {
    let entries: BTreeMap<String, Entry> = serde_json::from_slice(doc)
        .map_err(|e| BootstrapError::Malformed(format!("not a bootstrap JSON document: {e}")))?;
    let mut out = Comparison::default();
    for rel in required_files() {
        let e = entries
            .get(rel)
            .ok_or_else(|| BootstrapError::Missing(rel.to_string()))?;
        let want = B64
            .decode(e.content.as_bytes())
            .map_err(|err| BootstrapError::Malformed(format!("content of {rel}: {err}")))?;
        let path = tls_dir.join(rel);
        if fs::read(&path).ok().as_deref() == Some(want.as_slice()) {
            continue;
        }
        let stored_at = chrono::DateTime::parse_from_rfc3339(&e.timestamp)
            .ok()
            .map(std::time::SystemTime::from);
        let disk_at = fs::metadata(&path).and_then(|m| m.modified()).ok();
        match (stored_at, disk_at) {
            (Some(s), Some(d)) if d > s => out.newer_on_disk.push(rel.to_string()),
            _ => out.take.push(rel.to_string()),
        }
    }
    Ok(out)
}

/// Writes the named entries of a bootstrap document under `tls_dir`
/// (keys 0600, certificates 0644), after checking every one of them
/// parses, so a bad document writes nothing.
pub fn write_entries(doc: &[u8], tls_dir: &Path, names: &[String]) -> Result<(), BootstrapError> {
    let entries: BTreeMap<String, Entry> = serde_json::from_slice(doc)
        .map_err(|e| BootstrapError::Malformed(format!("not a bootstrap JSON document: {e}")))?;
    let mut files = Vec::new();
    for name in names {
        let e = entries
            .get(name)
            .ok_or_else(|| BootstrapError::Missing(name.clone()))?;
        let rel = safe_relative(name)?;
        let bytes = B64
            .decode(e.content.as_bytes())
            .map_err(|err| BootstrapError::Malformed(format!("content of {name}: {err}")))?;
        let is_key = name.ends_with(".key");
        if is_key {
            rke2_trust::parse_key(&bytes)?;
        } else {
            rke2_trust::parse_certs(&bytes)?;
        }
        let mode = if is_key { SECRET_MODE } else { PUBLIC_MODE };
        files.push((tls_dir.join(rel), bytes, mode));
    }
    for (path, bytes, mode) in files {
        rke2_trust::write_file_if_changed(&path, &bytes, mode)?;
    }
    Ok(())
}

fn derive_key(password: &str, salt: &[u8]) -> LessSafeKey {
    let mut key = [0u8; KEY_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero"),
        salt,
        password.as_bytes(),
        &mut key,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte AES-256 key"))
}

/// Encrypt bootstrap data with the token password for storage in etcd.
///
/// AES-256-GCM with a key from PBKDF2-HMAC-SHA256 ([`PBKDF2_ITERATIONS`])
/// over the password and a random 16-byte salt; the result is
/// `base64(salt) ":" base64(nonce || ciphertext || tag)`. A fresh salt per
/// call means a fresh key, so the random 96-bit nonce is never reused.
pub fn encrypt(password: &str, plaintext: &[u8]) -> String {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).expect("system random");
    rng.fill(&mut nonce).expect("system random");
    let key = derive_key(password, &salt);
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut sealed,
    )
    .expect("AES-GCM seal of an in-memory buffer");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    format!("{}:{}", B64.encode(salt), B64.encode(out))
}

/// Decrypt what [`encrypt`] produced. A wrong password (or tampered data:
/// GCM cannot tell them apart) gives [`BootstrapError::WrongToken`].
pub fn decrypt(password: &str, stored: &str) -> Result<Vec<u8>, BootstrapError> {
    let stored = stored.trim();
    let (salt_b64, body_b64) = stored.split_once(':').ok_or_else(|| {
        BootstrapError::Malformed("stored bootstrap data has no ':' after the salt".into())
    })?;
    let salt = B64
        .decode(salt_b64)
        .map_err(|e| BootstrapError::Malformed(format!("salt: {e}")))?;
    let body = B64
        .decode(body_b64)
        .map_err(|e| BootstrapError::Malformed(format!("ciphertext: {e}")))?;
    if salt.len() != SALT_LEN || body.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(BootstrapError::Malformed(format!(
            "salt of {} bytes (want {SALT_LEN}) and ciphertext of {} bytes (want at least {})",
            salt.len(),
            body.len(),
            NONCE_LEN + AES_256_GCM.tag_len()
        )));
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce length checked");
    let key = derive_key(password, &salt);
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::empty(), &mut buf)
        .map_err(|_| BootstrapError::WrongToken)?;
    Ok(plain.to_vec())
}

/// The etcd key under which bootstrap data encrypted with `password` is
/// stored: `/bootstrap/` + the first 12 hex characters of sha256(password).
/// Servers started with another token look under another key, which is how
/// "already found with a different token" is detected.
pub fn storage_key(password: &str) -> String {
    let digest = hex::encode(Sha256::digest(password.as_bytes()));
    format!("/bootstrap/{}", &digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn trust(dir: &Path) -> rke2_trust::ServerTrust {
        rke2_trust::ensure_server_trust(&rke2_trust::ServerTrustParams {
            data_dir: dir.to_path_buf(),
            node_name: "n1".into(),
            serving_sans: vec!["127.0.0.1".into()],
            etcd_sans: vec!["127.0.0.1".into()],
        })
        .unwrap()
    }

    fn pw() -> Passwd {
        Passwd {
            server: "s3cret".into(),
            node: "agent-pw".into(),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn pack_unpack_round_trip() {
        let a = tempfile::tempdir().unwrap();
        let t = trust(a.path());
        let doc = pack(&t.tls_dir, &pw()).unwrap();

        // The documented shape: every entry has timestamp + base64 content.
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 12, "{:?}", obj.keys().collect::<Vec<_>>());
        for (name, e) in obj {
            let ts = e["timestamp"].as_str().unwrap();
            chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|_| panic!("{name}: {ts}"));
            assert!(e["content"].is_string());
        }
        assert!(obj.contains_key("etcd/peer-ca.key"));
        assert!(obj.contains_key("service.key"));

        let b = tempfile::tempdir().unwrap();
        let out = b.path().join("server/tls");
        let got = unpack(&doc, &out).unwrap();
        assert_eq!(got, pw());
        for rel in required_files() {
            assert_eq!(
                fs::read(t.tls_dir.join(rel)).unwrap(),
                fs::read(out.join(rel)).unwrap(),
                "{rel}"
            );
            let want = if rel.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode(&out.join(rel)), want, "{rel}");
        }
        assert!(!out.join(PASSWD_ENTRY).exists());
        // Unpacking again is a no-op and still fine.
        assert_eq!(unpack(&doc, &out).unwrap(), pw());
    }

    #[test]
    fn passwd_debug_is_redacted() {
        let s = format!("{:?}", pw());
        assert!(!s.contains("s3cret") && !s.contains("agent-pw"), "{s}");
    }

    fn doc_with(extra: &str) -> Vec<u8> {
        let a = tempfile::tempdir().unwrap();
        let t = trust(a.path());
        let mut v: serde_json::Value =
            serde_json::from_slice(&pack(&t.tls_dir, &pw()).unwrap()).unwrap();
        v[extra] = serde_json::json!({"timestamp": "", "content": B64.encode("x")});
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn path_traversal_refused() {
        for bad in [
            "../evil.crt",
            "etcd/../../evil",
            "/etc/evil",
            "",
            ".",
            "a/../../b",
        ] {
            let doc = doc_with(bad);
            let d = tempfile::tempdir().unwrap();
            let tls = d.path().join("tls");
            let err = unpack(&doc, &tls).unwrap_err();
            assert!(matches!(err, BootstrapError::UnsafePath(_)), "{bad}: {err}");
            assert!(
                err.to_string().contains("inside the TLS directory"),
                "{err}"
            );
            // Nothing was written at all.
            assert!(!tls.exists(), "{bad}");
            assert!(!d.path().join("evil.crt").exists());
        }
    }

    #[test]
    fn missing_and_malformed() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack(b"not json", d.path()),
            Err(BootstrapError::Malformed(_))
        ));
        let a = tempfile::tempdir().unwrap();
        let t = trust(a.path());
        let mut v: serde_json::Value =
            serde_json::from_slice(&pack(&t.tls_dir, &pw()).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("client-ca.key");
        let err = unpack(&serde_json::to_vec(&v).unwrap(), d.path()).unwrap_err();
        assert_eq!(err.to_string(), "bootstrap data lacks client-ca.key");
        v.as_object_mut().unwrap().remove(PASSWD_ENTRY);
        let err = unpack(&serde_json::to_vec(&v).unwrap(), d.path()).unwrap_err();
        assert_eq!(err.to_string(), "bootstrap data lacks passwd");
        // A garbled certificate is refused before anything is written.
        let doc = doc_with("server-ca.crt");
        assert!(matches!(
            unpack(&doc, &d.path().join("x")),
            Err(BootstrapError::Trust(_))
        ));
        assert!(!d.path().join("x").exists());
        // Packing a directory without trust material names the file.
        let err = pack(&d.path().join("none"), &pw()).unwrap_err();
        assert!(err.to_string().contains("server-ca.crt"), "{err}");
    }

    #[test]
    fn encrypt_decrypt_round_trip() {
        let plain = b"{\"hello\":\"world\"}".repeat(100);
        let t0 = std::time::Instant::now();
        let stored = encrypt("token-pw", &plain);
        eprintln!(
            "encrypt with {PBKDF2_ITERATIONS} iterations: {:?}",
            t0.elapsed()
        );
        let (salt, body) = stored.split_once(':').unwrap();
        assert_eq!(B64.decode(salt).unwrap().len(), 16);
        assert_eq!(B64.decode(body).unwrap().len(), 12 + plain.len() + 16);
        assert_eq!(decrypt("token-pw", &stored).unwrap(), plain);
        // Fresh salt and nonce every time.
        assert_ne!(encrypt("token-pw", &plain), stored);
        assert_eq!(decrypt("pw", &encrypt("pw", b"")).unwrap(), b"");
    }

    #[test]
    fn wrong_password_is_wrong_token() {
        let stored = encrypt("right", b"data");
        let err = decrypt("wrong", &stored).unwrap_err();
        assert!(matches!(err, BootstrapError::WrongToken));
        assert_eq!(
            err.to_string(),
            "bootstrap data already found and encrypted with a different token"
        );
        assert!(matches!(
            decrypt("right", "no-colon"),
            Err(BootstrapError::Malformed(_))
        ));
        assert!(matches!(
            decrypt("right", "AAAA:AAAA"),
            Err(BootstrapError::Malformed(_))
        ));
    }

    #[test]
    fn stored_files_newer_than_disk_are_taken_older_kept() {
        let a = tempfile::tempdir().unwrap();
        let t = trust(a.path());
        let doc = pack(&t.tls_dir, &pw()).unwrap();
        assert_eq!(
            compare_files(&doc, &t.tls_dir).unwrap(),
            Comparison::default()
        );
        let b = tempfile::tempdir().unwrap();
        let other = trust(b.path());
        let new = vec![(
            "client-ca.crt".to_string(),
            fs::read(other.tls_dir.join("client-ca.crt")).unwrap(),
        )];
        let doc2 = replace_files(&doc, &new).unwrap();
        let cmp = compare_files(&doc2, &t.tls_dir).unwrap();
        assert_eq!(cmp.take, ["client-ca.crt"]);
        assert!(cmp.newer_on_disk.is_empty());
        write_entries(&doc2, &t.tls_dir, &cmp.take).unwrap();
        assert_eq!(
            compare_files(&doc2, &t.tls_dir).unwrap(),
            Comparison::default()
        );
        // A file changed on disk after the stored copy is kept.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(
            t.tls_dir.join("server-ca.crt"),
            fs::read(other.tls_dir.join("server-ca.crt")).unwrap(),
        )
        .unwrap();
        let cmp = compare_files(&doc2, &t.tls_dir).unwrap();
        assert_eq!(cmp.newer_on_disk, ["server-ca.crt"]);
        assert!(cmp.take.is_empty());
        // A garbled entry writes nothing.
        let mut v: serde_json::Value = serde_json::from_slice(&doc2).unwrap();
        v["client-ca.key"]["content"] = serde_json::json!(B64.encode("junk"));
        let bad = serde_json::to_vec(&v).unwrap();
        let before = fs::read(t.tls_dir.join("client-ca.crt")).unwrap();
        fs::remove_file(t.tls_dir.join("client-ca.crt")).unwrap();
        assert!(
            write_entries(
                &bad,
                &t.tls_dir,
                &["client-ca.crt".into(), "client-ca.key".into()]
            )
            .is_err()
        );
        assert!(!t.tls_dir.join("client-ca.crt").exists());
        fs::write(t.tls_dir.join("client-ca.crt"), before).unwrap();
        // New passwords keep the stored files.
        let other_pw = Passwd {
            server: "new".into(),
            node: "new".into(),
        };
        let doc3 = set_passwd(&doc2, &other_pw).unwrap();
        let c = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&doc3, c.path()).unwrap(), other_pw);
        assert_eq!(
            fs::read(c.path().join("client-ca.crt")).unwrap(),
            fs::read(other.tls_dir.join("client-ca.crt")).unwrap()
        );
        let err = replace_files(&doc, &[("../x".into(), vec![])]).unwrap_err();
        assert!(matches!(err, BootstrapError::UnsafePath(_)), "{err}");
    }

    #[test]
    fn storage_key_format() {
        let k = storage_key("s3cret");
        let h = hex::encode(Sha256::digest(b"s3cret"));
        assert_eq!(k, format!("/bootstrap/{}", &h[..12]));
        assert_eq!(k.len(), "/bootstrap/".len() + 12);
        assert_ne!(storage_key("other"), k);
    }
}
