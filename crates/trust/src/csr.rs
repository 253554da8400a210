//! PKCS#10 certificate signing requests: reading them as kube-apiserver
//! does (the first PEM block, which must be a `CERTIFICATE REQUEST` whose
//! signature verifies) and signing them with a [`CertAuthority`] as
//! kube-controller-manager's csrsigning controller does.
//!
//! The certificate is written here rather than through rcgen: the subject,
//! the public key and the subject alternative names are carried over from
//! the request byte for byte (rcgen keeps one value per attribute type,
//! and a user certificate may name any number of groups as `O`).

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{KeyPair, SigningKey};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};
use yasna::models::ObjectIdentifier;

use crate::pki::{CertAuthority, first_cert_der};

/// Why a request is refused, in the words of Go's libraries (kube-apiserver
/// puts them into its `spec.request` validation error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// No PEM block, or the first block is not a `CERTIFICATE REQUEST`.
    #[error("PEM block type must be CERTIFICATE REQUEST")]
    NotARequest,
    /// The block does not hold a PKCS#10 request.
    #[error("x509: malformed certificate request")]
    Malformed,
    /// The request's own signature does not verify.
    #[error("{0}")]
    BadSignature(&'static str),
}

/// A parsed and verified certificate signing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    /// The request's DER.
    der: Vec<u8>,
    /// Subject common name ("" when absent).
    pub common_name: String,
    /// Subject organizations, in order.
    pub organizations: Vec<String>,
    /// Requested DNS names.
    pub dns_names: Vec<String>,
    /// Requested IP addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// Requested e-mail addresses.
    pub email_addresses: Vec<String>,
    /// Requested URIs.
    pub uris: Vec<String>,
}

/// The first PEM block of `data` as (label, bytes), as Go's `pem.Decode`
/// finds it: a `-----BEGIN <label>-----` line, optional headers, base64
/// and the matching END line; a block that does not decode is skipped.
pub fn first_pem_block(data: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(data);
    next_pem_block(&text).map(|(label, bytes, _)| (label, bytes))
}

/// Every PEM block of `data`, in order (Go's `pem.Decode` in a loop).
pub fn pem_blocks(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(data);
    let mut rest: &str = &text;
    let mut out = Vec::new();
    while let Some((label, bytes, after)) = next_pem_block(rest) {
        out.push((label, bytes));
        rest = after;
    }
    out
}

/// Whether `der` is one X.509 certificate.
pub fn is_certificate_der(der: &[u8]) -> bool {
    matches!(X509Certificate::from_der(der), Ok((rest, _)) if rest.is_empty())
}

fn next_pem_block(mut rest: &str) -> Option<(String, Vec<u8>, &str)> {
    use base64::Engine;
    loop {
        let at = rest.find("-----BEGIN ")?;
        // Go only takes a BEGIN line at the start of the data or a line.
        if at > 0 && !rest[..at].ends_with('\n') {
            rest = &rest[at + 11..];
            continue;
        }
        let after = &rest[at + 11..];
        let label_end = after.find("-----")?;
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            rest = body_start;
            continue;
        };
        let body = &body_start[..end];
        let tail = &body_start[end + end_marker.len()..];
        // Headers (`Key: value` lines) end at the first blank line.
        let body = if body.lines().any(|l| l.contains(':')) {
            body.split_once("\n\n").map_or("", |(_, b)| b)
        } else {
            body
        };
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) if !label.contains('\n') => return Some((label.to_string(), bytes, tail)),
            _ => rest = tail,
        }
    }
}

impl CertificateRequest {
    /// Parses a PEM request as upstream's `ParseCSR` and checks its
    /// signature as `CheckSignature`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CsrError> {
        let (label, der) = first_pem_block(pem).ok_or(CsrError::NotARequest)?;
        if label != "CERTIFICATE REQUEST" {
            return Err(CsrError::NotARequest);
        }
        Self::from_der(der)
    }

    fn from_der(der: Vec<u8>) -> Result<Self, CsrError> {
        let (rest, req) =
            X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed);
        }
        req.verify_signature().map_err(|e| {
            use x509_parser::error::X509Error;
            let key_alg = req
                .certification_request_info
                .subject_pki
                .algorithm
                .algorithm
                .to_id_string();
            CsrError::BadSignature(match e {
                X509Error::SignatureUnsupportedAlgorithm => {
                    "x509: cannot verify signature: algorithm unimplemented"
                }
                _ if key_alg == "1.2.840.10045.2.1" => "x509: ECDSA verification failure",
                _ if key_alg == "1.3.101.112" => "x509: Ed25519 verification failure",
                _ => "crypto/rsa: verification error",
            })
        })?;
        let info = &req.certification_request_info;
        let attr = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >|
         -> Result<Vec<String>, CsrError> {
            it.map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .map_err(|_| CsrError::Malformed)
            })
            .collect()
        };
        let common_name = attr(&mut info.subject.iter_common_name())?
            .into_iter()
            .next()
            .unwrap_or_default();
        let organizations = attr(&mut info.subject.iter_organization())?;
        let mut out = CertificateRequest {
            der: Vec::new(),
            common_name,
            organizations,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            email_addresses: Vec::new(),
            uris: Vec::new(),
        };
        if let Some(exts) = req.requested_extensions() {
            for ext in exts {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => out.dns_names.push(d.to_string()),
                            GeneralName::RFC822Name(m) => out.email_addresses.push(m.to_string()),
                            GeneralName::URI(u) => out.uris.push(u.to_string()),
                            GeneralName::IPAddress(b) => {
                                if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                    out.ip_addresses.push(IpAddr::from(a));
                                } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                    out.ip_addresses.push(IpAddr::from(a));
                                } else {
                                    return Err(CsrError::Malformed);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        out.der = der;
        Ok(out)
    }
}

/// An error while signing a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A usage is not one of the certificates API's key usages.
    #[error("unrecognized usage values: {0:?}")]
    UnknownUsages(Vec<String>),
    /// The CA can no longer sign (upstream's policy check).
    #[error("the signer has expired: NotAfter={0}")]
    SignerExpired(String),
    /// The CA's certificate or key could not be used.
    #[error("{0}")]
    Ca(String),
}

/// How the csrsigning controller shapes a certificate: upstream's
/// `PermissiveSigningPolicy` with its fixed backdate and short-lived
/// threshold.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const SHORT: Duration = Duration::from_secs(8 * 60 * 60);

/// A key usage of the certificates API as (key usage bit or extended key
/// usage OID).
enum UsageBit {
    Key(u8),
    Ext(&'static [u64]),
}

fn usage_bit(usage: &str) -> Option<UsageBit> {
    use UsageBit::*;
    Some(match usage {
        "signing" | "digital signature" => Key(0),
        "content commitment" => Key(1),
        "key encipherment" => Key(2),
        "data encipherment" => Key(3),
        "key agreement" => Key(4),
        "cert sign" => Key(5),
        "crl sign" => Key(6),
        "encipher only" => Key(7),
        "decipher only" => Key(8),
        "any" => Ext(&[2, 5, 29, 37, 0]),
        "server auth" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 1]),
        "client auth" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 2]),
        "code signing" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 3]),
        "email protection" | "s/mime" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 4]),
        "ipsec end system" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 5]),
        "ipsec tunnel" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 6]),
        "ipsec user" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 7]),
        "timestamping" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 8]),
        "ocsp signing" => Ext(&[1, 3, 6, 1, 5, 5, 7, 3, 9]),
        "microsoft sgc" => Ext(&[1, 3, 6, 1, 4, 1, 311, 10, 3, 3]),
        "netscape sgc" => Ext(&[2, 16, 840, 1, 113730, 4, 1]),
        _ => return None,
    })
}

/// The extended key usages in Go's `ExtKeyUsage` order (how upstream sorts
/// them before writing).
const EXT_ORDER: &[&[u64]] = &[
    &[2, 5, 29, 37, 0],
    &[1, 3, 6, 1, 5, 5, 7, 3, 1],
    &[1, 3, 6, 1, 5, 5, 7, 3, 2],
    &[1, 3, 6, 1, 5, 5, 7, 3, 3],
    &[1, 3, 6, 1, 5, 5, 7, 3, 4],
    &[1, 3, 6, 1, 5, 5, 7, 3, 5],
    &[1, 3, 6, 1, 5, 5, 7, 3, 6],
    &[1, 3, 6, 1, 5, 5, 7, 3, 7],
    &[1, 3, 6, 1, 5, 5, 7, 3, 8],
    &[1, 3, 6, 1, 5, 5, 7, 3, 9],
    &[1, 3, 6, 1, 4, 1, 311, 10, 3, 3],
    &[2, 16, 840, 1, 113730, 4, 1],
];

/// DER of an ASN.1 time: UTCTime through 2049, GeneralizedTime after, as
/// Go writes certificate validity.
fn der_time(unix: i64) -> Result<Vec<u8>, SignError> {
    let t = x509_parser::time::ASN1Time::from_timestamp(unix)
        .map_err(|e| SignError::Ca(e.to_string()))?
        .to_datetime();
    let (tag, text) = if (1950..2050).contains(&t.year()) {
        (
            0x17u8,
            format!(
                "{:02}{:02}{:02}{:02}{:02}{:02}Z",
                t.year() % 100,
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
        )
    } else {
        (
            0x18u8,
            format!(
                "{:04}{:02}{:02}{:02}{:02}{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
        )
    };
    let mut out = vec![tag, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// The AlgorithmIdentifier of the signatures `key` makes.
fn signature_algorithm(key: &KeyPair) -> Result<(&'static [u64], bool), SignError> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok((&[1, 2, 840, 10045, 4, 3, 2], false))
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok((&[1, 2, 840, 10045, 4, 3, 3], false))
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        Ok((&[1, 2, 840, 113549, 1, 1, 11], true))
    } else if alg == &rcgen::PKCS_ED25519 {
        Ok((&[1, 3, 101, 112], false))
    } else {
        Err(SignError::Ca("unsupported CA key algorithm".into()))
    }
}

fn write_alg(w: yasna::DERWriter<'_>, alg: (&[u64], bool)) {
    w.write_sequence(|w| {
        w.next().write_oid(&ObjectIdentifier::from_slice(alg.0));
        if alg.1 {
            w.next().write_null();
        }
    });
}

fn write_ext(w: &mut yasna::DERWriterSeq<'_>, oid: &[u64], critical: bool, value: &[u8]) {
    w.next().write_sequence(|w| {
        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
        if critical {
            w.next().write_bool(true);
        }
        w.next().write_bytes(value);
    });
}

impl CertAuthority {
    /// Signs `req` as kube-controller-manager's csrsigning controller: the
    /// request's subject, public key and subject alternative names; the
    /// given usages (key usage bits and extended key usages); not a CA;
    /// valid from 5 minutes ago for `ttl` (less the backdate when
    /// `ttl` is 8 hours or more), never past the CA's own expiry. Returns
    /// the certificate as PEM.
    pub fn sign_request(
        &self,
        req: &CertificateRequest,
        usages: &[String],
        ttl: Duration,
    ) -> Result<String, SignError> {
        self.sign_request_at(req, usages, ttl, crate::pki::now_unix())
    }

    fn sign_request_at(
        &self,
        req: &CertificateRequest,
        usages: &[String],
        ttl: Duration,
        now: i64,
    ) -> Result<String, SignError> {
        let mut key_bits: u16 = 0;
        let mut ext: Vec<&'static [u64]> = Vec::new();
        let mut unknown = Vec::new();
        for u in usages {
            match usage_bit(u) {
                Some(UsageBit::Key(b)) => key_bits |= 1 << b,
                Some(UsageBit::Ext(oid)) => {
                    if !ext.contains(&oid) {
                        ext.push(oid);
                    }
                }
                None => unknown.push(u.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(SignError::UnknownUsages(unknown));
        }
        ext.sort_by_key(|o| EXT_ORDER.iter().position(|x| x == o));

        let ca_err = |e: String| SignError::Ca(e);
        let ca_der = first_cert_der(&self.cert_pem).map_err(ca_err)?;
        let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| ca_err(e.to_string()))?;
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|e| ca_err(e.to_string()))?;
        let alg = signature_algorithm(&ca_key)?;
        let signer_not_after = ca.validity().not_after.timestamp();

        let ttl = ttl.as_secs() as i64;
        let not_before = now - BACKDATE.as_secs() as i64;
        let mut not_after = if ttl < SHORT.as_secs() as i64 {
            now + ttl
        } else {
            now + ttl - BACKDATE.as_secs() as i64
        };
        not_after = not_after.min(signer_not_after);
        if not_before >= signer_not_after || now >= signer_not_after {
            return Err(SignError::SignerExpired(
                ca.validity().not_after.to_string(),
            ));
        }

        let (_, csr) =
            X509CertificationRequest::from_der(&req.der).map_err(|e| ca_err(e.to_string()))?;
        let info = &csr.certification_request_info;
        let san = info
            .iter_attributes()
            .find_map(|a| match a.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(r) => r
                    .extensions
                    .iter()
                    .find(|e| e.oid.to_id_string() == "2.5.29.17")
                    .map(|e| e.value.to_vec()),
                _ => None,
            });
        let aki = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            });
        let serial: [u8; 16] = rand::random();
        let (nb, na) = (der_time(not_before)?, der_time(not_after)?);
        let subject_empty = info.subject.iter().next().is_none();

        let tbs = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next()
                    .write_tagged(yasna::Tag::context(0), |w| w.write_u8(2));
                w.next().write_bigint_bytes(&serial, true);
                write_alg(w.next(), alg);
                w.next().write_der(ca.subject().as_raw());
                w.next().write_sequence(|w| {
                    w.next().write_der(&nb);
                    w.next().write_der(&na);
                });
                w.next().write_der(info.subject.as_raw());
                w.next().write_der(info.subject_pki.raw);
                w.next().write_tagged(yasna::Tag::context(3), |w| {
                    w.write_sequence(|w| {
                        if key_bits != 0 {
                            // A BIT STRING of the usage bits, without
                            // trailing zero bits (DER).
                            let len = 16 - key_bits.reverse_bits().trailing_zeros() as usize;
                            let bytes = key_bits.reverse_bits().to_be_bytes();
                            let value = yasna::construct_der(|w| {
                                w.write_bitvec_bytes(&bytes[..len.div_ceil(8)], len)
                            });
                            write_ext(w, &[2, 5, 29, 15], true, &value);
                        }
                        if !ext.is_empty() {
                            let value = yasna::construct_der(|w| {
                                w.write_sequence(|w| {
                                    for oid in &ext {
                                        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                                    }
                                })
                            });
                            write_ext(w, &[2, 5, 29, 37], false, &value);
                        }
                        let basic = yasna::construct_der(|w| w.write_sequence(|_| {}));
                        write_ext(w, &[2, 5, 29, 19], true, &basic);
                        if let Some(aki) = &aki {
                            let value = yasna::construct_der(|w| {
                                w.write_sequence(|w| {
                                    w.next().write_tagged_implicit(yasna::Tag::context(0), |w| {
                                        w.write_bytes(aki)
                                    })
                                })
                            });
                            write_ext(w, &[2, 5, 29, 35], false, &value);
                        }
                        if let Some(san) = &san {
                            write_ext(w, &[2, 5, 29, 17], subject_empty, san);
                        }
                    })
                });
            })
        });
        let signature = ca_key.sign(&tbs).map_err(|e| ca_err(e.to_string()))?;
        let cert = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_der(&tbs);
                write_alg(w.next(), alg);
                w.next().write_bitvec_bytes(&signature, signature.len() * 8);
            })
        });
        Ok(pem_encode("CERTIFICATE", &cert))
    }
}

/// A PEM block with 64-character lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for (i, o) in orgs.iter().enumerate() {
            // rcgen keeps one value per type: a custom type with the O OID
            // adds a second one.
            let ty = if i == 0 {
                rcgen::DnType::OrganizationName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
            };
            params.distinguished_name.push(ty, *o);
        }
        let csr = params.serialize_request(&key).unwrap();
        (csr.pem().unwrap(), key)
    }

    fn ca() -> (CertAuthority, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::ensure(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            "test-ca",
        )
        .unwrap();
        (ca, dir)
    }

    #[test]
    fn requests_are_read_as_upstream_reads_them() {
        let (pem, _) = request("jane", &["devs", "ops"], &["jane.example.com", "10.0.0.1"]);
        let r = CertificateRequest::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(r.common_name, "jane");
        assert_eq!(r.organizations, ["devs", "ops"]);
        assert_eq!(r.dns_names, ["jane.example.com"]);
        assert_eq!(r.ip_addresses, [IpAddr::from([10, 0, 0, 1])]);
        // Garbage before the block is skipped, as by Go's pem.Decode.
        let noisy = format!("hello\n{pem}");
        assert!(CertificateRequest::from_pem(noisy.as_bytes()).is_ok());

        for bad in [
            "not a pem".to_string(),
            String::new(),
            pem.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        ] {
            let e = CertificateRequest::from_pem(bad.as_bytes()).unwrap_err();
            assert_eq!(e.to_string(), "PEM block type must be CERTIFICATE REQUEST");
        }
        let junk =
            "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(
            CertificateRequest::from_pem(junk.as_bytes())
                .unwrap_err()
                .to_string(),
            "x509: malformed certificate request"
        );
    }

    #[test]
    fn a_tampered_request_fails_its_signature_check() {
        let (pem, _) = request("jane", &["devs"], &[]);
        let (_, mut der) = first_pem_block(pem.as_bytes()).unwrap();
        // Change one letter of "jane" inside the signed part.
        let at = der.windows(4).position(|w| w == b"jane").unwrap();
        der[at] = b'x';
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        let e = CertificateRequest::from_pem(tampered.as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "x509: ECDSA verification failure");
    }

    #[test]
    fn signed_certificates_carry_the_request_and_the_policy() {
        let (ca, _dir) = ca();
        let (pem, key) = request("jane", &["devs", "ops"], &[]);
        let req = CertificateRequest::from_pem(pem.as_bytes()).unwrap();
        let usages = vec![
            "client auth".to_string(),
            "digital signature".to_string(),
            "key encipherment".to_string(),
        ];
        let now = 1_800_000_000;
        let cert_pem = ca
            .sign_request_at(&req, &usages, Duration::from_secs(3600), now)
            .unwrap();
        let der = first_cert_der(&cert_pem).unwrap();
        let (rest, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(rest.is_empty());
        // Subject: CN and every O, as the apiserver reads identities.
        let (cn, orgs) = crate::pki::identity_of(&cert).unwrap();
        assert_eq!(
            (cn.as_str(), orgs),
            ("jane", vec!["devs".into(), "ops".into()])
        );
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            key.subject_public_key_info().as_slice()
        );
        // Short-lived: not backdated at the end.
        assert_eq!(cert.validity().not_before.timestamp(), now - 300);
        assert_eq!(cert.validity().not_after.timestamp(), now + 3600);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        // Signed by the CA: its signature verifies with the CA's key.
        let ca_der = first_cert_der(&ca.cert_pem).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        // And rustls accepts it as a client certificate of that CA.
        let identity = crate::peer_identity(&der).unwrap();
        assert_eq!(identity.0, "jane");

        // Long-lived: backdated at both ends, never past the CA.
        let year = Duration::from_secs(365 * 24 * 3600);
        let long = ca.sign_request_at(&req, &usages, year, now).unwrap();
        let (_, c) = X509Certificate::from_der(&first_cert_der(&long).unwrap())
            .map(|(r, c)| (r.to_vec(), c.validity().clone()))
            .unwrap();
        assert_eq!(c.not_after.timestamp(), now + year.as_secs() as i64 - 300);
        let forever = ca
            .sign_request_at(&req, &usages, 100 * year, crate::pki::now_unix())
            .unwrap();
        let (_, f) = X509Certificate::from_der(&first_cert_der(&forever).unwrap())
            .map(|(r, c)| (r.to_vec(), c.validity().clone()))
            .unwrap();
        assert_eq!(
            f.not_after.timestamp(),
            ca_cert.validity().not_after.timestamp()
        );

        let e = ca
            .sign_request_at(&req, &["bogus".into()], year, now)
            .unwrap_err();
        assert_eq!(e.to_string(), "unrecognized usage values: [\"bogus\"]");
    }

    #[test]
    fn subject_alternative_names_are_carried_over() {
        let (ca, _dir) = ca();
        let (pem, _) = request("system:node:n1", &["system:nodes"], &["n1", "10.1.2.3"]);
        let req = CertificateRequest::from_pem(pem.as_bytes()).unwrap();
        let cert = ca
            .sign_request(&req, &["server auth".into()], Duration::from_secs(3600))
            .unwrap();
        let sans = crate::cert_san_strings(&cert).unwrap();
        assert_eq!(sans, ["10.1.2.3", "n1"]);
    }
}
