//! Certificate authorities and leaf certificates.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TrustError;
use crate::fsutil::{PUBLIC_MODE, SECRET_MODE, read_string, write_file_atomic};

const DAY: u64 = 24 * 60 * 60;
/// Validity of certificate authorities: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// Validity of leaf certificates: 1 year.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// Leaf certificates with less than this left are re-issued.
pub const RENEW_BEFORE: Duration = Duration::from_secs(120 * DAY);
/// Certificates start being valid a little before "now" to absorb clock skew
/// between nodes.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A certificate and its private key, on disk and in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority able to sign leaf certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertAuthority {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The CA certificate (PEM), as stored in the file.
    pub cert_pem: String,
    /// The CA private key (PKCS#8 PEM), as stored in the file.
    pub key_pem: String,
}

/// What a leaf certificate is used for (sets key usage and extended key
/// usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
    /// Both (etcd certificates).
    ServerClient,
}

/// Description of a wanted leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject common name (the Kubernetes user for client certs).
    pub cn: String,
    /// Subject organizations (Kubernetes groups). At most two.
    pub orgs: Vec<String>,
    /// Subject alternative names; an entry that parses as an IP address is
    /// an IP SAN, anything else a DNS SAN.
    pub sans: Vec<String>,
    pub usage: Usage,
    pub validity: Duration,
}

impl LeafSpec {
    /// A client certificate spec valid for [`LEAF_VALIDITY`].
    pub fn client(cn: &str, orgs: &[&str]) -> LeafSpec {
        LeafSpec {
            cn: cn.to_string(),
            orgs: orgs.iter().map(|s| s.to_string()).collect(),
            sans: Vec::new(),
            usage: Usage::Client,
            validity: LEAF_VALIDITY,
        }
    }

    /// A serving certificate spec valid for [`LEAF_VALIDITY`].
    pub fn server(cn: &str, sans: Vec<String>) -> LeafSpec {
        LeafSpec {
            cn: cn.to_string(),
            orgs: Vec::new(),
            sans,
            usage: Usage::Server,
            validity: LEAF_VALIDITY,
        }
    }
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), String> {
    let now = now_unix();
    let from = x509_parser::time::ASN1Time::from_timestamp(now - BACKDATE.as_secs() as i64)
        .map_err(|e| e.to_string())?;
    let to = x509_parser::time::ASN1Time::from_timestamp(now + validity.as_secs() as i64)
        .map_err(|e| e.to_string())?;
    params.not_before = from.to_datetime();
    params.not_after = to.to_datetime();
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive and without a leading zero byte.
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&b)
}

fn build_params(spec: &LeafSpec) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(spec.sans.clone()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.cn.as_str());
    match spec.orgs.as_slice() {
        [] => {}
        [o] => params
            .distinguished_name
            .push(DnType::OrganizationName, o.as_str()),
        [o1, o2] => {
            params
                .distinguished_name
                .push(DnType::OrganizationName, o1.as_str());
            // rcgen keeps one value per attribute type; a custom type with
            // the organizationName OID (2.5.4.10) adds a second O.
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 10]), o2.as_str());
        }
        _ => return Err("at most two organizations are supported".into()),
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match spec.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, spec.validity)?;
    Ok(params)
}

impl CertAuthority {
    /// Load an existing CA, or create a self-signed one (valid 10 years)
    /// when the certificate file is absent. An existing CA is never
    /// regenerated. When only the key exists (crash between the two
    /// writes) the certificate is created for that key.
    pub fn ensure(cert_path: &Path, key_path: &Path, cn_prefix: &str) -> Result<Self, TrustError> {
        if cert_path.exists() {
            return Self::load(cert_path, key_path);
        }
        let key = if key_path.exists() {
            let pem = read_string(key_path, "read CA key")?;
            KeyPair::from_pem(&pem).map_err(|e| TrustError::cert("parse CA key", key_path, e))?
        } else {
            let key = KeyPair::generate()
                .map_err(|e| TrustError::cert("generate CA key", key_path, e))?;
            write_file_atomic(key_path, key.serialize_pem().as_bytes(), SECRET_MODE)?;
            key
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cn_prefix}@{}", now_unix()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_VALIDITY)
            .map_err(|e| TrustError::cert("create CA certificate", cert_path, e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| TrustError::cert("create CA certificate", cert_path, e))?;
        let cert_pem = cert.pem();
        write_file_atomic(cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
        Ok(CertAuthority {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Load an existing CA (certificate and key must both exist and match).
    /// The file may be a bundle: the first certificate is the issuing CA,
    /// and its key is the first key of the key file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TrustError> {
        let cert_pem = read_string(cert_path, "read CA certificate")?;
        let key_pem = read_string(key_path, "read CA key")?;
        let ca = CertAuthority {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            cert_pem,
            key_pem,
        };
        let key = KeyPair::from_pem(&ca.key_pem)
            .map_err(|e| TrustError::cert("parse CA key", key_path, e))?;
        let der = first_cert_der(&ca.cert_pem)
            .map_err(|e| TrustError::cert("parse CA certificate", cert_path, e))?;
        let (_, x509) = X509Certificate::from_der(&der)
            .map_err(|e| TrustError::cert("parse CA certificate", cert_path, e))?;
        if x509.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(TrustError::cert(
                "load CA",
                key_path,
                format!("key does not match certificate {}", cert_path.display()),
            ));
        }
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TrustError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| TrustError::cert("parse CA key", &self.key_path, e))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| TrustError::cert("parse CA certificate", &self.cert_path, e))
    }

    /// Issue a leaf certificate with a fresh key. Returns
    /// `(cert_pem, key_pem)`.
    pub fn issue(&self, spec: &LeafSpec) -> Result<(String, String), TrustError> {
        let key = KeyPair::generate()
            .map_err(|e| TrustError::cert("generate key", &self.cert_path, e))?;
        let cert = self.issue_for_key(spec, &key)?;
        Ok((cert, key.serialize_pem()))
    }

    /// Issue a leaf certificate for an existing key pair. When this CA's
    /// file is a bundle (after `rke2 certificate rotate-ca`), the PEM
    /// carries the bundle's non-self-signed certificates after the leaf,
    /// so clients that trust only the previous root can build the chain.
    pub fn issue_for_key(&self, spec: &LeafSpec, key: &KeyPair) -> Result<String, TrustError> {
        let issuer = self.issuer()?;
        let params = build_params(spec)
            .map_err(|e| TrustError::cert("issue certificate", &self.cert_path, e))?;
        let cert = params
            .signed_by(key, &issuer)
            .map_err(|e| TrustError::cert("sign certificate", &self.cert_path, e))?;
        let mut pem = cert.pem();
        pem.push_str(&self.chain_pem());
        Ok(pem)
    }

    /// The certificates a leaf of this CA carries after itself (see
    /// [`crate::bundle::chain_pem`]); empty for a single self-signed CA.
    pub fn chain_pem(&self) -> String {
        crate::bundle::chain_pem(&self.cert_pem)
    }

    /// Make sure `cert_path`/`key_path` hold a certificate matching `spec`
    /// signed by this CA with enough validity left; re-issue it otherwise.
    /// Nothing is written when the existing files are good. An existing
    /// valid key is reused on re-issue.
    pub fn ensure_leaf(
        &self,
        cert_path: &Path,
        key_path: &Path,
        spec: &LeafSpec,
    ) -> Result<CertPair, TrustError> {
        let existing_key = std::fs::read_to_string(key_path)
            .ok()
            .and_then(|pem| KeyPair::from_pem(&pem).ok().map(|k| (pem, k)));
        if let (Some((key_pem, key)), Ok(cert_pem)) =
            (&existing_key, std::fs::read_to_string(cert_path))
            && self.leaf_is_current(&cert_pem, key, spec)
        {
            return Ok(CertPair {
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
                cert_pem,
                key_pem: key_pem.clone(),
            });
        }
        let (key_pem, key) = match existing_key {
            Some(k) => k,
            None => {
                let key = KeyPair::generate()
                    .map_err(|e| TrustError::cert("generate key", key_path, e))?;
                let pem = key.serialize_pem();
                write_file_atomic(key_path, pem.as_bytes(), SECRET_MODE)?;
                (pem, key)
            }
        };
        let cert_pem = self.issue_for_key(spec, &key)?;
        write_file_atomic(cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
        Ok(CertPair {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            cert_pem,
            key_pem,
        })
    }

    /// True when `cert_pem` is a certificate for `key`, issued by this CA,
    /// with the subject and SANs of `spec` and at least [`RENEW_BEFORE`]
    /// validity left.
    pub fn leaf_is_current(&self, cert_pem: &str, key: &KeyPair, spec: &LeafSpec) -> bool {
        let Ok(der) = first_cert_der(cert_pem) else {
            return false;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&der) else {
            return false;
        };
        let Ok(ca_der) = first_cert_der(&self.cert_pem) else {
            return false;
        };
        let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else {
            return false;
        };
        // Key match.
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return false;
        }
        // Issued by this CA: issuer name, and key identifiers when present.
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return false;
        }
        if let (Some(aki), Some(ski)) = (authority_key_id(&cert), subject_key_id(&ca))
            && aki != ski
        {
            return false;
        }
        // Validity.
        let not_after = cert.validity().not_after.timestamp();
        if not_after - now_unix() < RENEW_BEFORE.as_secs() as i64 {
            return false;
        }
        // Subject.
        let Ok((cn, orgs)) = identity_of(&cert) else {
            return false;
        };
        if cn != spec.cn {
            return false;
        }
        let have: BTreeSet<&str> = orgs.iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = spec.orgs.iter().map(String::as_str).collect();
        if have != want {
            return false;
        }
        // SANs (as sets, IPs compared as addresses, DNS case-insensitive).
        let want: BTreeSet<San> = spec.sans.iter().map(|s| San::from_str(s)).collect();
        want == cert_sans(&cert)
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Ip(IpAddr),
    Dns(String),
}

impl San {
    fn from_str(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_ascii_lowercase()),
        }
    }
}

fn cert_sans(cert: &X509Certificate<'_>) -> BTreeSet<San> {
    let mut out = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(San::Dns(d.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        out.insert(San::Ip(IpAddr::from(a)));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        out.insert(San::Ip(IpAddr::from(a)));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The SANs of a PEM certificate as strings (IPs in canonical form).
pub fn cert_san_strings(cert_pem: &str) -> Result<Vec<String>, TrustError> {
    let der = first_cert_der(cert_pem).map_err(|e| TrustError::cert("parse certificate", "", e))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| TrustError::cert("parse certificate", "", e))?;
    Ok(cert_sans(&cert)
        .into_iter()
        .map(|s| match s {
            San::Ip(ip) => ip.to_string(),
            San::Dns(d) => d,
        })
        .collect())
}

fn authority_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    use x509_parser::extensions::ParsedExtension;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })
}

fn subject_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    use x509_parser::extensions::ParsedExtension;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        })
}

pub(crate) fn identity_of(cert: &X509Certificate<'_>) -> Result<(String, Vec<String>), String> {
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .ok_or("certificate has no common name")?
        .as_str()
        .map_err(|e| e.to_string())?
        .to_string();
    let orgs = subject
        .iter_organization()
        .map(|o| o.as_str().map(str::to_string).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((cn, orgs))
}

/// DER of the first `CERTIFICATE` block of a PEM string.
pub(crate) fn first_cert_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no certificate found in PEM".to_string())?
        .map(|c| c.to_vec())
        .map_err(|e| e.to_string())
}

/// Issue a client certificate (fresh key, 1 year) with `CN=cn` and the
/// given organizations (Kubernetes groups). Returns `(cert_pem, key_pem)`.
pub fn issue_client_cert(
    ca: &CertAuthority,
    cn: &str,
    orgs: &[&str],
) -> Result<(String, String), TrustError> {
    ca.issue(&LeafSpec::client(cn, orgs))
}

/// Issue a kubelet client certificate `CN=system:node:<name>, O=system:nodes`.
pub fn issue_kubelet_client_cert(
    client_ca: &CertAuthority,
    node_name: &str,
) -> Result<(String, String), TrustError> {
    issue_client_cert(
        client_ca,
        &format!("system:node:{node_name}"),
        &["system:nodes"],
    )
}

fn push_unique(out: &mut Vec<String>, seen: &mut BTreeSet<San>, s: &str) {
    let s = s.trim();
    if s.is_empty() {
        return;
    }
    if seen.insert(San::from_str(s)) {
        out.push(match s.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => s.to_string(),
        });
    }
}

/// The SAN list of the API/supervisor serving certificate, deduplicated,
/// in this order: node name, node IPs, `127.0.0.1`, `::1`, `localhost`,
/// `kubernetes`, `kubernetes.default`, `kubernetes.default.svc`,
/// `kubernetes.default.svc.<domain>`, the first service IP, every tls-san.
pub fn serving_sans(
    node_name: &str,
    node_ips: &[IpAddr],
    cluster_domain: &str,
    service_cidr_first_ip: Option<IpAddr>,
    tls_sans: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    push_unique(&mut out, &mut seen, node_name);
    for ip in node_ips {
        push_unique(&mut out, &mut seen, &ip.to_string());
    }
    for s in [
        "127.0.0.1",
        "::1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
    ] {
        push_unique(&mut out, &mut seen, s);
    }
    let domain = cluster_domain.trim_matches('.');
    if !domain.is_empty() {
        push_unique(
            &mut out,
            &mut seen,
            &format!("kubernetes.default.svc.{domain}"),
        );
    }
    if let Some(ip) = service_cidr_first_ip {
        push_unique(&mut out, &mut seen, &ip.to_string());
    }
    for s in tls_sans {
        push_unique(&mut out, &mut seen, s);
    }
    out
}

/// The SAN list of the etcd server and peer certificates: `localhost`,
/// `127.0.0.1`, `::1`, node IPs, node name (deduplicated).
pub fn etcd_sans(node_name: &str, node_ips: &[IpAddr]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for s in ["localhost", "127.0.0.1", "::1"] {
        push_unique(&mut out, &mut seen, s);
    }
    for ip in node_ips {
        push_unique(&mut out, &mut seen, &ip.to_string());
    }
    push_unique(&mut out, &mut seen, node_name);
    out
}
