//! Trust material of an rke2 cluster: certificate authorities, leaf
//! certificates, join tokens, kubeconfig files and crash-safe secret-file
//! writing. See DESIGN.md section 3.
//!
//! All cryptography uses the `ring` provider explicitly; nothing here relies
//! on a process-wide default rustls `CryptoProvider`.

mod bundle;
mod csr;
mod error;
mod expiry;
mod fsutil;
mod kubeconfig;
mod pki;
mod server;
mod tls;
mod token;

pub use bundle::{
    PemBlock, RotationError, bundle_hash, ca_hash_matches, cert_blocks, chain_pem,
    validate_ca_rotation,
};
pub use csr::{
    CertificateRequest, CsrError, SignError, first_pem_block, is_certificate_der, pem_blocks,
};
pub use error::TrustError;
pub use expiry::{CertInfo, describe_cert_file, describe_certs};
pub use fsutil::{PUBLIC_MODE, SECRET_MODE, write_file_atomic, write_file_if_changed};
pub use kubeconfig::{parse_mode, render_kubeconfig, write_kubeconfig};
pub use pki::{
    CA_VALIDITY, CertAuthority, CertPair, LEAF_VALIDITY, LeafSpec, RENEW_BEFORE, Usage,
    cert_san_strings, etcd_sans, issue_client_cert, issue_kubelet_client_cert, serving_sans,
};
pub use server::{
    CA_FILES, SERVICE_ACCOUNT_KEY_FILE, ServerTrust, ServerTrustParams, ensure_server_trust,
    tls_dir,
};
pub use tls::{
    AcceptAnyServerCert, client_tls_config, parse_certs, parse_key, peer_identity, provider,
    server_tls_config,
};
pub use token::{
    NODE_USER, SERVER_USER, TOKEN_PREFIX, Token, ca_hash, constant_time_eq, generate_password,
};

/// Re-export so callers can name key pairs without depending on rcgen.
pub use rcgen::KeyPair;

#[cfg(test)]
mod tests;
