//! Tests of CA/leaf management, kubeconfig and TLS handshakes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::*;

fn params(dir: &Path, extra_san: Option<&str>) -> ServerTrustParams {
    let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
    let tls_sans: Vec<String> = extra_san.into_iter().map(String::from).collect();
    ServerTrustParams {
        data_dir: dir.to_path_buf(),
        node_name: "node-a".into(),
        serving_sans: serving_sans(
            "node-a",
            &ips,
            "cluster.local",
            Some("10.43.0.1".parse().unwrap()),
            &tls_sans,
        ),
        etcd_sans: etcd_sans("node-a", &ips),
    }
}

/// (bytes, mtime) of every file under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let m = fs::metadata(&p).unwrap().modified().unwrap();
                out.insert(p.clone(), (fs::read(&p).unwrap(), m));
            }
        }
    }
    out
}

fn parse(pem: &str) -> Vec<u8> {
    crate::pki::first_cert_der(pem).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn serving_sans_order_and_dedupe() {
    let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap()];
    let sans = serving_sans(
        "node-a",
        &ips,
        "cluster.local",
        Some("10.43.0.1".parse().unwrap()),
        &[
            "LOCALHOST".into(),
            "lb.example.com".into(),
            "10.0.0.5".into(),
        ],
    );
    assert_eq!(
        sans,
        [
            "node-a",
            "10.0.0.5",
            "127.0.0.1",
            "::1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.43.0.1",
            "lb.example.com",
        ]
    );
    assert_eq!(
        etcd_sans("n", &["10.0.0.5".parse().unwrap()]),
        ["localhost", "127.0.0.1", "::1", "10.0.0.5", "n"]
    );
}

#[test]
fn ensure_is_idempotent_and_sets_modes() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(dir.path(), None);
    let t1 = ensure_server_trust(&p).unwrap();
    let snap1 = snapshot(dir.path());
    // 5 CAs x 2 + service.key + 8 leaves x 2 (with the front proxy's)
    assert_eq!(snap1.len(), 27, "{:?}", snap1.keys().collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(20));
    let t2 = ensure_server_trust(&p).unwrap();
    assert_eq!(t1, t2);
    assert_eq!(snap1, snapshot(dir.path()));

    for path in snap1.keys() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(path), want, "{}", path.display());
    }
    let tls = dir.path().join("server/tls");
    for f in [
        "server-ca.crt",
        "client-ca.key",
        "request-header-ca.crt",
        "etcd/server-ca.key",
        "etcd/peer-ca.crt",
        "service.key",
        "serving-kube-apiserver.crt",
        "client-admin.key",
        "client-supervisor.crt",
        "client-kube-apiserver.crt",
        "client-kube-apiserver.key",
        "etcd/server-client.crt",
        "etcd/peer-server-client.key",
        "etcd/client.crt",
    ] {
        assert!(tls.join(f).exists(), "{f}");
    }
    assert_eq!(t1.serving.cert_path, tls.join("serving-kube-apiserver.crt"));
}

#[test]
fn certificates_have_expected_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();

    let der = parse(&t.server_ca.cert_pem);
    let (_, ca) = X509Certificate::from_der(&der).unwrap();
    assert!(ca.is_ca());
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
        / (365 * 86400);
    assert!(years >= 9, "{years}");
    assert!(
        ca.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("rke2-server-ca@")
    );

    let check = |pair: &CertPair, server: bool, client: bool, ca: &CertAuthority| {
        let der = parse(&pair.cert_pem);
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert!(!c.is_ca());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(eku.server_auth, server, "{}", pair.cert_path.display());
        assert_eq!(eku.client_auth, client, "{}", pair.cert_path.display());
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        let ca_der = parse(&ca.cert_pem);
        let (_, cac) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(c.issuer(), cac.subject());
        let days =
            (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400;
        assert!((365..=366).contains(&days), "{days}");
    };
    check(&t.serving, true, false, &t.server_ca);
    check(&t.admin, false, true, &t.client_ca);
    check(&t.supervisor, false, true, &t.client_ca);
    check(&t.kube_apiserver_client, false, true, &t.client_ca);
    check(&t.etcd_server, true, true, &t.etcd_server_ca);
    check(&t.etcd_peer, true, true, &t.etcd_peer_ca);
    check(&t.etcd_client, false, true, &t.etcd_server_ca);

    assert_eq!(
        peer_identity(&parse(&t.admin.cert_pem)).unwrap(),
        (
            "system:admin".to_string(),
            vec!["system:masters".to_string()]
        )
    );
    assert_eq!(
        peer_identity(&parse(&t.supervisor.cert_pem)).unwrap(),
        (
            "system:rke2-supervisor".to_string(),
            vec!["system:masters".to_string()]
        )
    );
    assert_eq!(
        peer_identity(&parse(&t.kube_apiserver_client.cert_pem)).unwrap(),
        (
            "system:apiserver".to_string(),
            vec!["system:masters".to_string()]
        )
    );
    assert_eq!(
        peer_identity(&parse(&t.etcd_client.cert_pem)).unwrap().0,
        "etcd-client"
    );
    let sans = cert_san_strings(&t.etcd_peer.cert_pem).unwrap();
    for s in ["localhost", "127.0.0.1", "::1", "10.0.0.5", "node-a"] {
        assert!(sans.iter().any(|x| x == s), "{s} in {sans:?}");
    }
    let sans = cert_san_strings(&t.serving.cert_pem).unwrap();
    for s in [
        "kubernetes.default.svc.cluster.local",
        "10.43.0.1",
        "node-a",
    ] {
        assert!(sans.iter().any(|x| x == s), "{s} in {sans:?}");
    }

    let (cert, key) = issue_kubelet_client_cert(&t.client_ca, "worker-1").unwrap();
    assert!(KeyPair::from_pem(&key).is_ok());
    assert_eq!(
        peer_identity(&parse(&cert)).unwrap(),
        (
            "system:node:worker-1".to_string(),
            vec!["system:nodes".to_string()]
        )
    );
    let (cert, _) = issue_client_cert(&t.client_ca, "u", &["g1", "g2"]).unwrap();
    assert_eq!(
        peer_identity(&parse(&cert)).unwrap().1,
        vec!["g1".to_string(), "g2".to_string()]
    );
    assert!(issue_client_cert(&t.client_ca, "u", &["a", "b", "c"]).is_err());
}

#[test]
fn adding_a_san_reissues_only_the_serving_cert() {
    let dir = tempfile::tempdir().unwrap();
    ensure_server_trust(&params(dir.path(), None)).unwrap();
    let before = snapshot(dir.path());
    std::thread::sleep(Duration::from_millis(20));
    let t = ensure_server_trust(&params(dir.path(), Some("lb.example.com"))).unwrap();
    let after = snapshot(dir.path());
    let changed: Vec<_> = before
        .keys()
        .filter(|k| before[*k] != after[*k])
        .map(|k| k.strip_prefix(dir.path()).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        changed,
        [PathBuf::from("server/tls/serving-kube-apiserver.crt")]
    );
    let der = parse(&t.serving.cert_pem);
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap().value;
    assert!(san.general_names.iter().any(|n| matches!(
        n,
        x509_parser::extensions::GeneralName::DNSName("lb.example.com")
    )));
    // IP SANs are IP entries.
    assert!(san.general_names.iter().any(|n| matches!(
        n,
        x509_parser::extensions::GeneralName::IPAddress([10, 43, 0, 1])
    )));
}

#[test]
fn short_lived_leaf_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(dir.path(), None);
    let t = ensure_server_trust(&p).unwrap();
    // Replace the admin cert by one with 30 days of validity (same key).
    let key = KeyPair::from_pem(&t.admin.key_pem).unwrap();
    let mut spec = LeafSpec::client("system:admin", &["system:masters"]);
    spec.validity = Duration::from_secs(30 * 86400);
    let short = t.client_ca.issue_for_key(&spec, &key).unwrap();
    write_file_atomic(&t.admin.cert_path, short.as_bytes(), PUBLIC_MODE).unwrap();
    assert!(!t.client_ca.leaf_is_current(&short, &key, &spec));

    let t2 = ensure_server_trust(&p).unwrap();
    assert_ne!(t2.admin.cert_pem, short);
    let der = parse(&t2.admin.cert_pem);
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    let left = c.validity().not_after.timestamp()
        - SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!(left > 300 * 86400, "{left}");
    // Key reused, CA untouched.
    assert_eq!(t2.admin.key_pem, t.admin.key_pem);
    assert_eq!(t2.client_ca, t.client_ca);
}

#[test]
fn leaf_signed_by_another_ca_or_with_other_key_is_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(dir.path(), None);
    let t = ensure_server_trust(&p).unwrap();
    // The admin cert signed by the server CA instead of the client CA.
    let key = KeyPair::from_pem(&t.admin.key_pem).unwrap();
    let spec = LeafSpec::client("system:admin", &["system:masters"]);
    let wrong = t.server_ca.issue_for_key(&spec, &key).unwrap();
    write_file_atomic(&t.admin.cert_path, wrong.as_bytes(), PUBLIC_MODE).unwrap();
    let t2 = ensure_server_trust(&p).unwrap();
    assert!(t.client_ca.leaf_is_current(&t2.admin.cert_pem, &key, &spec));
    // A key that no longer matches the certificate.
    let other = KeyPair::generate().unwrap();
    write_file_atomic(
        &t.admin.key_path,
        other.serialize_pem().as_bytes(),
        SECRET_MODE,
    )
    .unwrap();
    let t3 = ensure_server_trust(&p).unwrap();
    assert!(
        t.client_ca
            .leaf_is_current(&t3.admin.cert_pem, &other, &spec)
    );
}

#[test]
fn ca_with_missing_key_is_an_error_and_never_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(dir.path(), None);
    let t = ensure_server_trust(&p).unwrap();
    fs::remove_file(&t.client_ca.key_path).unwrap();
    let err = ensure_server_trust(&p).unwrap_err().to_string();
    assert!(err.contains("client-ca.key"), "{err}");
    assert_eq!(
        fs::read_to_string(&t.client_ca.cert_path).unwrap(),
        t.client_ca.cert_pem
    );
}

#[test]
fn kubeconfig_mode_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();
    let path = dir.path().join("etc/rke2.yaml");
    let w = |mode| {
        write_kubeconfig(
            &path,
            "https://127.0.0.1:6443",
            t.server_ca.cert_pem.as_bytes(),
            t.admin.cert_pem.as_bytes(),
            t.admin.key_pem.as_bytes(),
            mode,
        )
        .unwrap()
    };
    w(0o600);
    assert_eq!(mode(&path), 0o600);
    w(0o644);
    assert_eq!(mode(&path), 0o644);

    let text = fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(v["current-context"], "default");
    assert_eq!(v["clusters"][0]["name"], "default");
    assert_eq!(
        v["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    use base64::Engine;
    let dec = |s: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    assert_eq!(
        dec(&v["clusters"][0]["cluster"]["certificate-authority-data"]),
        t.server_ca.cert_pem.as_bytes()
    );
    assert_eq!(
        dec(&v["users"][0]["user"]["client-key-data"]),
        t.admin.key_pem.as_bytes()
    );
    assert_eq!(v["contexts"][0]["context"]["user"], "default");

    assert_eq!(parse_mode("0644").unwrap(), 0o644);
    assert_eq!(parse_mode("600").unwrap(), 0o600);
    assert!(parse_mode("9").is_err());
    assert!(parse_mode("").is_err());
}

type Identity = (String, Vec<String>);

/// Run one TLS connection: server thread accepts, reads "ping", records
/// the peer identity and ALPN, answers "pong".
fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (Option<Identity>, Option<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let id = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| peer_identity(c).unwrap());
        let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"pong").unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
        (id, alpn)
    });
    let sock = TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    srv.join().unwrap()
}

#[test]
fn tls_handshake_identifies_client_and_allows_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();
    let server = server_tls_config(
        t.serving.cert_pem.as_bytes(),
        t.serving.key_pem.as_bytes(),
        Some(t.client_ca.cert_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        server.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );

    // With the admin client certificate.
    let mut client = (*client_tls_config(
        t.server_ca.cert_pem.as_bytes(),
        Some((t.admin.cert_pem.as_bytes(), t.admin.key_pem.as_bytes())),
    )
    .unwrap())
    .clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let (id, alpn) = handshake(server.clone(), Arc::new(client));
    assert_eq!(
        id,
        Some((
            "system:admin".to_string(),
            vec!["system:masters".to_string()]
        ))
    );
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // Without a client certificate: still accepted, no identity.
    let anon = client_tls_config(t.server_ca.cert_pem.as_bytes(), None).unwrap();
    let (id, _) = handshake(server.clone(), anon);
    assert_eq!(id, None);

    // Server without client CA works too.
    let plain = server_tls_config(
        t.serving.cert_pem.as_bytes(),
        t.serving.key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let anon = client_tls_config(t.server_ca.cert_pem.as_bytes(), None).unwrap();
    assert_eq!(handshake(plain, anon).0, None);
}

#[test]
fn client_cert_from_foreign_ca_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();
    let server = server_tls_config(
        t.serving.cert_pem.as_bytes(),
        t.serving.key_pem.as_bytes(),
        Some(t.client_ca.cert_pem.as_bytes()),
    )
    .unwrap();
    // A cert signed by the server CA (not the client CA).
    let (cert, key) = issue_client_cert(&t.server_ca, "system:admin", &["system:masters"]).unwrap();
    let client = client_tls_config(
        t.server_ca.cert_pem.as_bytes(),
        Some((cert.as_bytes(), key.as_bytes())),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        let mut result = Ok(());
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                result = Err(e);
                break;
            }
        }
        result
    });
    let mut sock = TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(client, name).unwrap();
    // TLS 1.3: the client may finish before the server rejects; try a read.
    let _ = conn.complete_io(&mut sock);
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let _ = tls.write_all(b"ping");
    let mut buf = [0u8; 4];
    let _ = tls.read(&mut buf);
    assert!(srv.join().unwrap().is_err());
}

#[test]
fn ca_pem_hash_matches_token() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();
    let bytes = fs::read(&t.server_ca.cert_path).unwrap();
    let tok = Token::server(&bytes, &generate_password());
    let parsed = Token::parse(&tok.to_string()).unwrap();
    assert!(parsed.ca_matches(t.server_ca.cert_pem.as_bytes()));
    assert!(!parsed.ca_matches(t.client_ca.cert_pem.as_bytes()));
}

/// A CA cert for `key` with `cn`, signed by `issuer` (self-signed when
/// `None`).
fn ca_cert(cn: &str, key: &rcgen::KeyPair, issuer: Option<(&str, &rcgen::KeyPair)>) -> String {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    match issuer {
        None => p.self_signed(key).unwrap().pem(),
        Some((pem, ikey)) => {
            let ikey = rcgen::KeyPair::from_pem(&ikey.serialize_pem()).unwrap();
            let issuer = rcgen::Issuer::from_ca_cert_pem(pem, ikey).unwrap();
            p.signed_by(key, &issuer).unwrap().pem()
        }
    }
}

/// What the rotation script makes from the CA of `old`: (bundle, keys,
/// the new self-signed root).
fn cross_signed(old: &CertAuthority, name: &str) -> (String, String, String) {
    let old_key = rcgen::KeyPair::from_pem(&old.key_pem).unwrap();
    let root_key = rcgen::KeyPair::generate().unwrap();
    let root = ca_cert(&format!("{name}-root"), &root_key, None);
    let xsigned = ca_cert(
        &format!("{name}-root"),
        &root_key,
        Some((&old.cert_pem, &old_key)),
    );
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_cert(&format!("{name}-ca"), &ca_key, Some((&root, &root_key)));
    let bundle = format!("{ca}{root}{xsigned}{}", old.cert_pem);
    let keys = format!("{}{}", ca_key.serialize_pem(), root_key.serialize_pem());
    (bundle, keys, root)
}

/// A rotation directory for `t` (every CA cross-signed), as a map.
fn rotation_files(t: &ServerTrust) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for (i, ca) in [
        &t.server_ca,
        &t.client_ca,
        &t.request_header_ca,
        &t.etcd_server_ca,
        &t.etcd_peer_ca,
    ]
    .into_iter()
    .enumerate()
    {
        let (bundle, keys, _) = cross_signed(ca, &format!("ca{i}"));
        files.insert(CA_FILES[i].0.to_string(), bundle.into_bytes());
        files.insert(CA_FILES[i].1.to_string(), keys.into_bytes());
    }
    files.insert(
        SERVICE_ACCOUNT_KEY_FILE.to_string(),
        t.service_account_key_pem.clone().into_bytes(),
    );
    files
}

#[test]
fn a_cross_signed_bundle_issues_leaves_the_old_root_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();
    let old_ca = t.server_ca.cert_pem.clone();
    let old_token = Token::server(old_ca.as_bytes(), "pw");
    let (bundle, keys, root) = cross_signed(&t.server_ca, "srv");
    fs::write(&t.server_ca.cert_path, &bundle).unwrap();
    fs::write(&t.server_ca.key_path, &keys).unwrap();
    // The client CA too, so the admin certificate comes from a bundle.
    let (cbundle, ckeys, _) = cross_signed(&t.client_ca, "cli");
    fs::write(&t.client_ca.cert_path, &cbundle).unwrap();
    fs::write(&t.client_ca.key_path, &ckeys).unwrap();

    // The next start re-issues every leaf with the new issuing CA, chain
    // attached (issuing CA and cross-signed root), and is stable after.
    let t2 = ensure_server_trust(&params(dir.path(), None)).unwrap();
    assert_ne!(t2.serving.cert_pem, t.serving.cert_pem);
    assert_eq!(cert_blocks(&t2.serving.cert_pem).len(), 3);
    assert_eq!(cert_blocks(&t2.admin.cert_pem).len(), 3);
    let before = snapshot(dir.path());
    ensure_server_trust(&params(dir.path(), None)).unwrap();
    assert_eq!(before, snapshot(dir.path()), "a second start rewrote files");

    // A client that trusts only the old root (an agent, a server not yet
    // restarted) verifies the new serving chain; the new bundle verifies
    // the admin certificate of the new client CA, and old leaves too.
    let server = server_tls_config(
        t2.serving.cert_pem.as_bytes(),
        t2.serving.key_pem.as_bytes(),
        Some(t2.client_ca.cert_pem.as_bytes()),
    )
    .unwrap();
    let old_client = client_tls_config(
        old_ca.as_bytes(),
        Some((t2.admin.cert_pem.as_bytes(), t2.admin.key_pem.as_bytes())),
    )
    .unwrap();
    let (id, _) = handshake(server, old_client);
    assert_eq!(id.unwrap().0, "system:admin");
    let old_server = server_tls_config(
        t.serving.cert_pem.as_bytes(),
        t.serving.key_pem.as_bytes(),
        Some(t2.client_ca.cert_pem.as_bytes()),
    )
    .unwrap();
    let new_client = client_tls_config(
        bundle.as_bytes(),
        Some((t.admin.cert_pem.as_bytes(), t.admin.key_pem.as_bytes())),
    )
    .unwrap();
    let (id, _) = handshake(old_server, new_client);
    assert_eq!(id.unwrap().0, "system:admin");

    // Tokens: the new one pins the new root (k3s's rule), the old one
    // (the old file's bytes) still matches the bundle that carries it.
    let root_der = crate::pki::first_cert_der(&root).unwrap();
    assert_eq!(bundle_hash(bundle.as_bytes()), ca_hash(&root_der));
    assert!(Token::server(bundle.as_bytes(), "pw").ca_matches(bundle.as_bytes()));
    assert!(old_token.ca_matches(bundle.as_bytes()));
    assert!(!old_token.ca_matches(t2.client_ca.cert_pem.as_bytes()));
    // A bundle padded with a foreign CA matches no token by the bundle
    // rules: a client would trust that CA too.
    let foreign = CertAuthority::ensure(
        &dir.path().join("f.crt"),
        &dir.path().join("f.key"),
        "foreign",
    )
    .unwrap();
    let padded = format!("{bundle}{}", foreign.cert_pem);
    assert!(!old_token.ca_matches(padded.as_bytes()));
    assert!(!Token::server(bundle.as_bytes(), "pw").ca_matches(padded.as_bytes()));
    // A single CA file hashes as before.
    assert_eq!(bundle_hash(old_ca.as_bytes()), ca_hash(old_ca.as_bytes()));
}

#[test]
fn rotation_checks_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = ensure_server_trust(&params(dir.path(), None)).unwrap();
    let current = |rel: &str| fs::read(t.tls_dir.join(rel)).ok();
    let good = rotation_files(&t);
    let check = |files: &BTreeMap<String, Vec<u8>>, force: bool| {
        validate_ca_rotation(&|rel: &str| files.get(rel).cloned(), &current, force)
    };
    let ok = check(&good, false).unwrap();
    assert_eq!(ok.len(), 11);

    let mut missing = good.clone();
    missing.remove("etcd/peer-ca.key");
    let e = check(&missing, false).unwrap_err();
    assert_eq!(e.to_string(), "etcd/peer-ca.key: file is missing");

    // A key of another CA.
    let mut swapped = good.clone();
    swapped.insert("client-ca.key".into(), good["server-ca.key"].clone());
    let e = check(&swapped, true).unwrap_err();
    assert_eq!(e.file, "client-ca.key");
    assert!(e.message.contains("does not match"), "{e}");

    // A new self-signed CA: refused unless forced.
    let other = tempfile::tempdir().unwrap();
    let o = ensure_server_trust(&params(other.path(), None)).unwrap();
    let mut foreign = good.clone();
    foreign.insert(
        "server-ca.crt".into(),
        o.server_ca.cert_pem.clone().into_bytes(),
    );
    foreign.insert(
        "server-ca.key".into(),
        o.server_ca.key_pem.clone().into_bytes(),
    );
    let e = check(&foreign, false).unwrap_err();
    assert_eq!(e.file, "server-ca.crt");
    assert!(e.message.contains("--force"), "{e}");
    check(&foreign, true).unwrap();

    // Not a CA, garbage, an RSA-less wrong service key.
    let mut leaf = good.clone();
    leaf.insert(
        "server-ca.crt".into(),
        t.serving.cert_pem.clone().into_bytes(),
    );
    leaf.insert(
        "server-ca.key".into(),
        t.serving.key_pem.clone().into_bytes(),
    );
    assert!(check(&leaf, true).unwrap_err().message.contains("not a CA"));
    let mut junk = good.clone();
    junk.insert(SERVICE_ACCOUNT_KEY_FILE.into(), b"junk".to_vec());
    assert_eq!(check(&junk, false).unwrap_err().file, "service.key");
}
