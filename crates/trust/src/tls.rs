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

/// A server-certificate verifier that accepts any certificate, for the
/// few clients whose trust comes from elsewhere or is not wanted: the
/// join's `/cacerts` fetch (the token's CA hash authenticates the answer),
/// HTTPS probes (kubelet does not verify them), `insecureSkipTLSVerify`
/// APIServices and backends, `--kubelet-insecure-tls`. Handshake
/// signatures are still verified, so the peer at least holds the key of
/// the certificate it shows.
#[derive(Debug)]
pub struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl AcceptAnyServerCert {
    /// A verifier checking handshake signatures with `provider`'s
    /// algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(AcceptAnyServerCert(provider))
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
