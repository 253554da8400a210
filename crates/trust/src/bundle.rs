//! CA bundles: the files a CA rotation (`rke2 certificate rotate-ca`)
//! leaves behind, and how tokens pin them.
//!
//! A rotated CA file is a bundle: the new issuing CA first, then the
//! certificates that link it to the roots clients already trust (a new
//! root, the new root cross-signed by the old root, the old root). The
//! issuing CA is the first certificate, its key the first key of the key
//! file. Leaf certificates carry the non-self-signed certificates of the
//! bundle after them, so a client that trusts only the old root builds
//! leaf -> new CA -> cross-signed new root -> old root.

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// One `CERTIFICATE` block of a PEM bundle: its exact text (from the
/// BEGIN line to the end of the END line and its newline, as in the file)
/// and its DER.
#[derive(Clone, Debug)]
pub struct PemBlock {
    /// The block's text exactly as in the bundle.
    pub text: String,
    /// The certificate's DER.
    pub der: Vec<u8>,
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The `CERTIFICATE` blocks of `pem`, in order, with their exact text.
/// Blocks that do not decode are skipped.
pub fn cert_blocks(pem: &str) -> Vec<PemBlock> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else { break };
        let mut stop = end + END.len();
        if after[stop..].starts_with("\r\n") {
            stop += 2;
        } else if after[stop..].starts_with('\n') {
            stop += 1;
        }
        let text = &after[..stop];
        if let Ok(der) = crate::pki::first_cert_der(text) {
            out.push(PemBlock {
                text: text.to_string(),
                der,
            });
        }
        rest = &after[stop..];
    }
    out
}

/// True when `child` names `parent` as issuer and `parent`'s key verifies
/// its signature.
fn issued_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

fn self_signed(c: &X509Certificate<'_>) -> bool {
    issued_by(c, c)
}

fn parse_all(blocks: &[PemBlock]) -> Option<Vec<X509Certificate<'_>>> {
    blocks
        .iter()
        .map(|b| X509Certificate::from_der(&b.der).ok().map(|(_, c)| c))
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The CA hash a full token carries for this CA file (k3s's rule): for a
/// single certificate, the SHA-256 of the file's bytes (so tokens of
/// clusters that never rotated keep their hash); for a bundle, the
/// SHA-256 of the DER of the self-signed root the first certificate chains
/// to within the bundle (the new root after a rotation). A bundle whose
/// first certificate reaches no root hashes as bytes.
pub fn bundle_hash(pem: &[u8]) -> String {
    let bytes = sha256_hex(pem);
    let Ok(text) = std::str::from_utf8(pem) else {
        return bytes;
    };
    let blocks = cert_blocks(text);
    if blocks.len() < 2 {
        return bytes;
    }
    let Some(certs) = parse_all(&blocks) else {
        return bytes;
    };
    let mut cur = 0;
    for _ in 0..certs.len() {
        if self_signed(&certs[cur]) {
            return sha256_hex(&blocks[cur].der);
        }
        let issuers: Vec<usize> = (0..certs.len())
            .filter(|&i| i != cur && issued_by(&certs[cur], &certs[i]))
            .collect();
        // A self-signed issuer ends the walk; a cross-signed one continues.
        match issuers
            .iter()
            .find(|&&i| self_signed(&certs[i]))
            .or(issuers.first())
        {
            Some(&i) => cur = i,
            None => break,
        }
    }
    bytes
}

/// The indexes of the certificates of the bundle that the first one chains
/// to (itself included): every certificate whose key signed one already
/// in the set.
fn ancestors(certs: &[X509Certificate<'_>]) -> Vec<bool> {
    let mut inside = vec![false; certs.len()];
    if certs.is_empty() {
        return inside;
    }
    inside[0] = true;
    loop {
        let mut grew = false;
        for x in 0..certs.len() {
            if inside[x] {
                continue;
            }
            if (0..certs.len()).any(|y| inside[y] && issued_by(&certs[y], &certs[x])) {
                inside[x] = true;
                grew = true;
            }
        }
        if !grew {
            return inside;
        }
    }
}

/// Does the CA file `pem` match a token's CA `hash`?
///
/// * the SHA-256 of exactly these bytes (a cluster that never rotated);
/// * for a bundle, [`bundle_hash`] (the new root, k3s's rule), or the
///   SHA-256 of the exact PEM text or DER of any certificate the bundle's
///   first certificate chains to: a token made before a cross-signed
///   rotation pins the old CA file, whose text the bundle carries, so old
///   tokens keep joining.
///
/// The bundle rules also require every certificate of the bundle to be one
/// the first chains to (verified signatures): a bundle padded with a
/// foreign CA, which a client would then trust, matches no token by them.
pub fn ca_hash_matches(pem: &[u8], hash: &str) -> bool {
    let eq = |h: &str| crate::constant_time_eq(h.as_bytes(), hash.as_bytes());
    if eq(&sha256_hex(pem)) {
        return true;
    }
    let Ok(text) = std::str::from_utf8(pem) else {
        return false;
    };
    let blocks = cert_blocks(text);
    if blocks.len() < 2 {
        return false;
    }
    let Some(certs) = parse_all(&blocks) else {
        return false;
    };
    let inside = ancestors(&certs);
    if inside.iter().any(|i| !i) {
        return false;
    }
    if eq(&bundle_hash(pem)) {
        return true;
    }
    blocks
        .iter()
        .any(|b| eq(&sha256_hex(b.text.as_bytes())) || eq(&sha256_hex(&b.der)))
}

/// The certificates a leaf issued by the CA file `pem` carries after
/// itself: every certificate of a bundle that is not self-signed (the
/// issuing CA and cross-signed roots), as PEM; empty for a single
/// certificate.
pub fn chain_pem(pem: &str) -> String {
    let blocks = cert_blocks(pem);
    if blocks.len() < 2 {
        return String::new();
    }
    let Some(certs) = parse_all(&blocks) else {
        return String::new();
    };
    let mut out = String::new();
    for (b, c) in blocks.iter().zip(&certs) {
        if !self_signed(c) {
            out.push_str(b.text.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Why a CA directory cannot replace the current CAs.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RotationError {
    /// The file (relative to the directory) at fault.
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

fn refuse(file: &str, message: impl Into<String>) -> RotationError {
    RotationError {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Checks new CA material against the current one, as `rke2 certificate
/// rotate-ca` does before anything is stored. `read_new(rel)` and
/// `read_current(rel)` give a file's bytes (relative to the TLS dir, e.g.
/// `etcd/peer-ca.crt`), `None` when absent.
///
/// For each of the five CAs: the certificate and key exist, the first
/// certificate is a CA whose key is the first key of the key file, and,
/// unless `force`, it chains (through the bundle's own certificates,
/// verified signatures) to a certificate of the current CA file, so
/// everything that trusts the current CA trusts leaves of the new one.
/// `service.key` must be a P-256 PKCS#8 key (the service-account signing
/// key). Returns the files to store, relative to the TLS dir.
pub fn validate_ca_rotation(
    read_new: &dyn Fn(&str) -> Option<Vec<u8>>,
    read_current: &dyn Fn(&str) -> Option<Vec<u8>>,
    force: bool,
) -> Result<Vec<(String, Vec<u8>)>, RotationError> {
    let mut files = Vec::new();
    for (crt, key) in crate::CA_FILES {
        let cert_bytes = read_new(crt).ok_or_else(|| refuse(crt, "file is missing"))?;
        let key_bytes = read_new(key).ok_or_else(|| refuse(key, "file is missing"))?;
        let cert_text = std::str::from_utf8(&cert_bytes)
            .map_err(|_| refuse(crt, "not a PEM file"))?
            .to_string();
        let key_text =
            std::str::from_utf8(&key_bytes).map_err(|_| refuse(key, "not a PEM file"))?;
        let blocks = cert_blocks(&cert_text);
        if blocks.is_empty() {
            return Err(refuse(crt, "no certificate found in the file"));
        }
        let certs =
            parse_all(&blocks).ok_or_else(|| refuse(crt, "a certificate does not parse"))?;
        let first = &certs[0];
        if !first.is_ca() {
            return Err(refuse(
                crt,
                "the first certificate is not a CA (basicConstraints CA:TRUE)",
            ));
        }
        let now = crate::pki::now_unix();
        if first.validity().not_after.timestamp() <= now {
            return Err(refuse(crt, "the first certificate has expired"));
        }
        let kp = rcgen::KeyPair::from_pem(key_text).map_err(|e| {
            refuse(
                key,
                format!(
                    "the first key does not parse ({e}); keys must be PKCS#8 PEM (BEGIN PRIVATE KEY), convert with `openssl pkcs8 -topk8 -nocrypt`"
                ),
            )
        })?;
        if first.tbs_certificate.subject_pki.raw
            != rcgen::PublicKeyData::subject_public_key_info(&kp).as_slice()
        {
            return Err(refuse(
                key,
                format!("the first key does not match the first certificate of {crt}"),
            ));
        }
        if !force {
            let current = read_current(crt).ok_or_else(|| {
                refuse(crt, "the current CA certificate is missing on this server")
            })?;
            let current_text = String::from_utf8_lossy(&current).to_string();
            let current_blocks = cert_blocks(&current_text);
            let current_certs = parse_all(&current_blocks)
                .ok_or_else(|| refuse(crt, "the current CA certificate does not parse"))?;
            let trusted = ancestors(&certs).iter().enumerate().any(|(i, inside)| {
                *inside
                    && current_certs.iter().any(|cur| {
                        certs[i].tbs_certificate.subject_pki.raw
                            == cur.tbs_certificate.subject_pki.raw
                            && certs[i].subject().as_raw() == cur.subject().as_raw()
                    })
            });
            if !trusted {
                return Err(refuse(
                    crt,
                    "the new CA certificate does not chain to the current CA (it is not cross-signed by it); \
                     clients that trust the current CA would refuse it. Cross-sign it, or use --force to replace the CA anyway \
                     (every node then needs the new CA and token)",
                ));
            }
        }
        files.push((crt.to_string(), cert_bytes));
        files.push((key.to_string(), key_bytes));
    }
    let sa = crate::SERVICE_ACCOUNT_KEY_FILE;
    let sa_bytes = read_new(sa).ok_or_else(|| refuse(sa, "file is missing"))?;
    let kp = std::str::from_utf8(&sa_bytes)
        .ok()
        .and_then(|t| rcgen::KeyPair::from_pem(t).ok())
        .ok_or_else(|| refuse(sa, "not a PKCS#8 PEM private key"))?;
    if kp.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(refuse(
            sa,
            "the service-account key must be an ECDSA P-256 key (service-account tokens are ES256)",
        ));
    }
    files.push((sa.to_string(), sa_bytes));
    Ok(files)
}
