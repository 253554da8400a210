//! TLS for clients: the certificate of each Ingress TLS host from its
//! `kubernetes.io/tls` Secret, chosen by SNI from the current routing
//! table at every handshake, and a default certificate for everything
//! else (`--default-ssl-certificate`, or a self-signed one made at start
//! as ingress-nginx's "Kubernetes Ingress Controller Fake Certificate").

use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::Table;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The Secret lacks `tls.crt` or `tls.key`.
    #[error("has no {0}")]
    Missing(&'static str),
    /// The PEM does not hold what it should.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the key.
    #[error("unusable private key: {0}")]
    Key(String),
    /// Making the self-signed certificate failed.
    #[error("generating the default certificate: {0}")]
    Generate(String),
}

/// A signing key for a PEM certificate chain and private key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("tls.crt: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("tls.crt holds no certificate".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Pem(format!("tls.key: {e}")))?
        .ok_or_else(|| TlsError::Pem("tls.key holds no private key".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(certs, signer))
}

/// The key of a `kubernetes.io/tls` Secret.
pub fn certified_key_of_secret(s: &Secret) -> Result<CertifiedKey, TlsError> {
    let data = s.data.as_ref();
    let crt = data
        .and_then(|d| d.get("tls.crt"))
        .ok_or(TlsError::Missing("tls.crt"))?;
    let key = data
        .and_then(|d| d.get("tls.key"))
        .ok_or(TlsError::Missing("tls.key"))?;
    certified_key(&crt.0, &key.0)
}

/// A self-signed certificate as ingress-nginx's default one.
pub fn self_signed() -> Result<CertifiedKey, TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Kubernetes Ingress Controller Fake Certificate",
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme Co");
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

/// Chooses the certificate by SNI from the current table.
#[derive(Debug)]
pub struct SniResolver {
    table: Arc<ArcSwap<Table>>,
    default: Arc<ArcSwap<CertifiedKey>>,
}

impl SniResolver {
    /// A resolver over the live table, with `default` for unknown names.
    pub fn new(table: Arc<ArcSwap<Table>>, default: Arc<ArcSwap<CertifiedKey>>) -> Self {
        Self { table, default }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.table.load().cert(n))
            .or_else(|| Some(self.default.load_full()))
    }
}

/// The server configuration of the HTTPS listener: SNI certificates,
/// ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<SniResolver>) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}
