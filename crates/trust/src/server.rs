//! All trust material of a server node under `<data-dir>/server/tls`.

use std::path::{Path, PathBuf};

use rcgen::KeyPair;

use crate::TrustError;
use crate::fsutil::{SECRET_MODE, read_string, write_file_atomic};
use crate::pki::{CertAuthority, CertPair, LEAF_VALIDITY, LeafSpec, Usage};

/// Input of [`ensure_server_trust`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTrustParams {
    /// The rke2 data dir (`/var/lib/rancher/rke2`).
    pub data_dir: PathBuf,
    pub node_name: String,
    /// SANs of the API / supervisor serving certificate (see
    /// [`crate::serving_sans`]).
    pub serving_sans: Vec<String>,
    /// SANs of the etcd server and peer certificates (see
    /// [`crate::etcd_sans`]).
    pub etcd_sans: Vec<String>,
}

/// Everything [`ensure_server_trust`] made sure exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTrust {
    /// `<data-dir>/server/tls`.
    pub tls_dir: PathBuf,
    pub server_ca: CertAuthority,
    pub client_ca: CertAuthority,
    pub request_header_ca: CertAuthority,
    pub etcd_server_ca: CertAuthority,
    pub etcd_peer_ca: CertAuthority,
    /// `service.key`: the service-account token signing key (ECDSA P-256,
    /// PKCS#8 PEM).
    pub service_account_key_path: PathBuf,
    pub service_account_key_pem: String,
    /// `serving-kube-apiserver.crt/.key` (server-ca; 6443 and 9345).
    pub serving: CertPair,
    /// `client-admin.crt/.key`: `CN=system:admin, O=system:masters`.
    pub admin: CertPair,
    /// `client-supervisor.crt/.key`: `CN=system:rke2-supervisor, O=system:masters`.
    pub supervisor: CertPair,
    /// `client-kube-apiserver.crt/.key`: `CN=system:apiserver,
    /// O=system:masters`; the apiserver's client certificate towards node
    /// APIs on 10250 (`pods/log`, `pods/exec`, `pods/attach`), RKE2's
    /// `--kubelet-client-certificate`.
    pub kube_apiserver_client: CertPair,
    /// `client-auth-proxy.crt/.key`: `CN=system:auth-proxy`, signed by the
    /// request-header CA; the front-proxy certificate the apiserver
    /// presents to extension apiservers (RKE2's `--proxy-client-cert-file`).
    pub auth_proxy: CertPair,
    /// `etcd/server-client.crt/.key` (etcd server-ca, server+client auth).
    pub etcd_server: CertPair,
    /// `etcd/peer-server-client.crt/.key` (etcd peer-ca, server+client auth).
    pub etcd_peer: CertPair,
    /// `etcd/client.crt/.key` (etcd server-ca, `CN=etcd-client`, client auth).
    pub etcd_client: CertPair,
}

/// Paths of the CA files under a data dir, relative to `server/tls`, in the
/// order: server, client, request-header, etcd server, etcd peer. Useful
/// to pack and unpack bootstrap data.
pub const CA_FILES: [(&str, &str); 5] = [
    ("server-ca.crt", "server-ca.key"),
    ("client-ca.crt", "client-ca.key"),
    ("request-header-ca.crt", "request-header-ca.key"),
    ("etcd/server-ca.crt", "etcd/server-ca.key"),
    ("etcd/peer-ca.crt", "etcd/peer-ca.key"),
];

/// File name of the service-account signing key under `server/tls`.
pub const SERVICE_ACCOUNT_KEY_FILE: &str = "service.key";

/// `<data-dir>/server/tls`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("tls")
}

fn ca(tls: &Path, idx: usize, cn_prefix: &str) -> Result<CertAuthority, TrustError> {
    let (c, k) = CA_FILES[idx];
    CertAuthority::ensure(&tls.join(c), &tls.join(k), cn_prefix)
}

/// Load or create the service-account signing key.
fn ensure_service_key(path: &Path) -> Result<String, TrustError> {
    if path.exists() {
        let pem = read_string(path, "read service-account key")?;
        KeyPair::from_pem(&pem)
            .map_err(|e| TrustError::cert("parse service-account key", path, e))?;
        return Ok(pem);
    }
    let key = KeyPair::generate()
        .map_err(|e| TrustError::cert("generate service-account key", path, e))?;
    let pem = key.serialize_pem();
    write_file_atomic(path, pem.as_bytes(), SECRET_MODE)?;
    Ok(pem)
}

/// Create what is missing, load what exists, re-issue leaf certificates
/// that are about to expire or no longer match the wanted subject/SANs.
///
/// Idempotent: a second call with the same parameters writes nothing.
/// CAs are never regenerated once present.
pub fn ensure_server_trust(p: &ServerTrustParams) -> Result<ServerTrust, TrustError> {
    let tls = tls_dir(&p.data_dir);
    let server_ca = ca(&tls, 0, "rke2-server-ca")?;
    let client_ca = ca(&tls, 1, "rke2-client-ca")?;
    let request_header_ca = ca(&tls, 2, "rke2-request-header-ca")?;
    let etcd_server_ca = ca(&tls, 3, "etcd-server-ca")?;
    let etcd_peer_ca = ca(&tls, 4, "etcd-peer-ca")?;
    let service_account_key_path = tls.join(SERVICE_ACCOUNT_KEY_FILE);
    let service_account_key_pem = ensure_service_key(&service_account_key_path)?;

    let leaf = |ca: &CertAuthority, name: &str, spec: LeafSpec| {
        ca.ensure_leaf(
            &tls.join(format!("{name}.crt")),
            &tls.join(format!("{name}.key")),
            &spec,
        )
    };

    let serving = leaf(
        &server_ca,
        "serving-kube-apiserver",
        LeafSpec::server("kube-apiserver", p.serving_sans.clone()),
    )?;
    let admin = leaf(
        &client_ca,
        "client-admin",
        LeafSpec::client("system:admin", &["system:masters"]),
    )?;
    let supervisor = leaf(
        &client_ca,
        "client-supervisor",
        LeafSpec::client("system:rke2-supervisor", &["system:masters"]),
    )?;
    let kube_apiserver_client = leaf(
        &client_ca,
        "client-kube-apiserver",
        LeafSpec::client("system:apiserver", &["system:masters"]),
    )?;
    let auth_proxy = leaf(
        &request_header_ca,
        "client-auth-proxy",
        LeafSpec::client("system:auth-proxy", &[]),
    )?;
    let etcd_spec = |cn: &str| LeafSpec {
        cn: cn.to_string(),
        orgs: Vec::new(),
        sans: p.etcd_sans.clone(),
        usage: Usage::ServerClient,
        validity: LEAF_VALIDITY,
    };
    let etcd_server = leaf(
        &etcd_server_ca,
        "etcd/server-client",
        etcd_spec("etcd-server"),
    )?;
    let etcd_peer = leaf(
        &etcd_peer_ca,
        "etcd/peer-server-client",
        etcd_spec("etcd-peer"),
    )?;
    let etcd_client = leaf(
        &etcd_server_ca,
        "etcd/client",
        LeafSpec::client("etcd-client", &[]),
    )?;

    Ok(ServerTrust {
        tls_dir: tls,
        server_ca,
        client_ca,
        request_header_ca,
        etcd_server_ca,
        etcd_peer_ca,
        service_account_key_path,
        service_account_key_pem,
        serving,
        admin,
        supervisor,
        kube_apiserver_client,
        auth_proxy,
        etcd_server,
        etcd_peer,
        etcd_client,
    })
}
