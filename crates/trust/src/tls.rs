//! rustls configurations (ring provider, never the process default).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TrustError;

/// The crypto provider used by every configuration of this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parse every certificate of a PEM bundle.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::tls("parse certificate PEM", e))?;
    if certs.is_empty() {
        return Err(TrustError::tls(
            "parse certificate PEM",
            "no certificate found",
        ));
    }
    Ok(certs)
}

/// Parse a private key (PKCS#8, SEC1 or PKCS#1 PEM).
pub fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TrustError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TrustError::tls("parse private key PEM", e))
}

fn root_store(ca_pem: &[u8]) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem)? {
        roots
            .add(c)
            .map_err(|e| TrustError::tls("add CA certificate", e))?;
    }
    Ok(roots)
}

/// A server configuration presenting `cert_pem` (leaf first, then any
/// chain) with `key_pem`. With `client_ca_pem`, client certificates are
/// verified against that CA when presented, but clients without a
/// certificate are accepted too (the HTTP layer answers 401). ALPN offers
/// `h2` then `http/1.1`.
pub fn server_tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, TrustError> {
    let provider = provider();
    let chain = parse_certs(cert_pem)?;
    let key = parse_key(key_pem)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::tls("server TLS protocol versions", e))?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TrustError::tls("client certificate verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TrustError::tls("server certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting only `ca_pem`, optionally presenting a
/// client certificate `(cert_pem, key_pem)`. No ALPN is set.
pub fn client_tls_config(
    ca_pem: &[u8],
    client_cert: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::tls("client TLS protocol versions", e))?
        .with_root_certificates(root_store(ca_pem)?);
    let config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(parse_certs(cert)?, parse_key(key)?)
            .map_err(|e| TrustError::tls("client certificate", e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The Kubernetes user (subject CN) and groups (subject O values) of a
/// client certificate in DER form, e.g. from
/// `ServerConnection::peer_certificates()[0]`.
pub fn peer_identity(cert_der: &[u8]) -> Result<(String, Vec<String>), TrustError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| TrustError::tls("parse peer certificate", e))?;
    crate::pki::identity_of(&cert).map_err(|e| TrustError::tls("peer certificate identity", e))
}
