//! What an operator needs to know about the certificates on disk: who each
//! one is for, what it may be used for and when it expires
//! (`rke2 certificate check`, the expiry warnings).

use std::path::Path;

use x509_parser::prelude::*;

use crate::TrustError;

/// One certificate of a PEM file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The subject's common name (or the whole subject when it has none).
    pub subject: String,
    /// Extended key usages as Go's x509 names them (`ServerAuth`,
    /// `ClientAuth`), and `CertSign` for a CA.
    pub usages: Vec<&'static str>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

/// Every certificate in the PEM file `path`, in file order.
pub fn describe_cert_file(path: &Path) -> Result<Vec<CertInfo>, TrustError> {
    let pem = std::fs::read(path).map_err(|e| TrustError::cert("read certificate", path, e))?;
    describe_certs(&pem).map_err(|e| TrustError::cert("parse certificate", path, e))
}

/// Every certificate in a PEM bundle, in order.
pub fn describe_certs(pem: &[u8]) -> Result<Vec<CertInfo>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut out = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| e.to_string())?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| cert.subject().to_string());
        let is_ca = cert.is_ca();
        let mut usages = Vec::new();
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            if eku.value.server_auth {
                usages.push("ServerAuth");
            }
            if eku.value.client_auth {
                usages.push("ClientAuth");
            }
        }
        if is_ca {
            usages.push("CertSign");
        }
        out.push(CertInfo {
            subject,
            usages,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca,
        });
    }
    if out.is_empty() {
        return Err("no certificate found in PEM".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertAuthority, LeafSpec};

    #[test]
    fn leaves_and_cas_are_described() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::ensure(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            "test-ca",
        )
        .unwrap();
        let (leaf, _) = ca
            .issue(&LeafSpec::client("system:admin", &["system:masters"]))
            .unwrap();
        let bundle = format!("{leaf}{}", ca.cert_pem);
        let infos = describe_certs(bundle.as_bytes()).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].subject, "system:admin");
        assert_eq!(infos[0].usages, vec!["ClientAuth"]);
        assert!(!infos[0].is_ca);
        assert!(infos[0].not_after > infos[0].not_before);
        assert!(infos[1].is_ca);
        assert_eq!(infos[1].usages, vec!["CertSign"]);
        assert!(infos[1].subject.starts_with("test-ca"));
        assert!(describe_certs(b"garbage").is_err());
        let err = describe_cert_file(&dir.path().join("missing.crt")).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }
}
