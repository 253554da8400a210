//! Certificate maintenance on a real server: `rke2 certificate check`
//! (text, table and json) lists every certificate with its expiry; leaf
//! certificates forced to expire while the server was down (RKE2's
//! rke2#8318) are shown EXPIRED and renewed by the next start, which comes
//! up and serves; `rke2 certificate rotate --service api-server` backs up
//! `server/tls` and removes only that service's leaves, which the next
//! start issues again with the same CA; an unknown service is refused with
//! nothing changed.
//!
//! Needs root and etcd (scripts/install.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use rke2_testbed::{Server, ServerOpts};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

const LONG: Duration = Duration::from_secs(120);

fn certificate(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("certificate")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("running rke2 certificate")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Re-signs the leaf `name` (under server/tls, with its key) by `ca` so
/// that it expired a day ago.
fn expire(tls: &Path, name: &str, ca: &str) {
    let cert_pem = std::fs::read_to_string(tls.join(format!("{name}.crt"))).unwrap();
    let key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(tls.join(format!("{name}.key"))).unwrap(),
    )
    .unwrap();
    // The same subject, SANs and usages as the original: only the dates move.
    let info = &rke2_trust::describe_certs(cert_pem.as_bytes()).unwrap()[0];
    let mut params =
        rcgen::CertificateParams::new(rke2_trust::cert_san_strings(&cert_pem).unwrap()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, info.subject.as_str());
    params.extended_key_usages = info
        .usages
        .iter()
        .filter_map(|u| match *u {
            "ServerAuth" => Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth),
            "ClientAuth" => Some(rcgen::ExtendedKeyUsagePurpose::ClientAuth),
            _ => None,
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = |t: i64| {
        x509_parser::time::ASN1Time::from_timestamp(t)
            .unwrap()
            .to_datetime()
    };
    params.not_before = at(now - 3 * 86_400);
    params.not_after = at(now - 86_400);
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join(format!("{ca}.key"))).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(tls.join(format!("{ca}.crt"))).unwrap(),
        ca_key,
    )
    .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(tls.join(format!("{name}.crt")), cert.pem()).unwrap();
}

fn rows(data_dir: &Path) -> Vec<serde_json::Value> {
    let o = certificate(data_dir, &["check", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn status_of<'a>(rows: &'a [serde_json::Value], file: &str) -> &'a str {
    rows.iter()
        .find(|r| r["filename"] == file)
        .unwrap_or_else(|| panic!("{file} not in check output: {rows:?}"))["status"]
        .as_str()
        .unwrap()
}

async fn wait_serving(s: &mut Server) -> kube::Client {
    let c = s
        .wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    Api::<Namespace>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("API after start: {e}\n{}", s.log_text()));
    c
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_expired_renewal_and_rotate() {
    let mut s = Server::start(bin(), ServerOpts::default()).unwrap();
    wait_serving(&mut s).await;
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();
    let data = s.data_dir.clone();
    let tls = data.join("server/tls");

    // check: every certificate, in three formats.
    let o = certificate(&data, &["check", "--output", "table"]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let header = table.lines().next().unwrap();
    for col in [
        "FILENAME",
        "SUBJECT",
        "USAGES",
        "EXPIRES",
        "RESIDUAL TIME",
        "STATUS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let admin_line = table
        .lines()
        .find(|l| l.starts_with("server/tls/client-admin.crt"))
        .unwrap_or_else(|| panic!("{table}"));
    for needle in ["system:admin", "ClientAuth", "OK", "UTC"] {
        assert!(admin_line.contains(needle), "{admin_line}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("server/tls/server-ca.crt") && l.contains("CertSign")),
        "{table}"
    );
    assert!(
        table.contains("server/tls/etcd/peer-server-client.crt"),
        "{table}"
    );
    let o = certificate(&data, &["check"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("server/tls/client-admin.crt: certificate system:admin is ok, expires at"),
        "{}",
        text(&o)
    );
    let before = rows(&data);
    assert!(before.iter().all(|r| r["status"] == "OK"), "{before:?}");

    // Leaves expire while the server is down.
    let expired = [
        ("serving-kube-apiserver", "server-ca"),
        ("client-admin", "client-ca"),
        ("client-supervisor", "client-ca"),
        ("etcd/server-client", "etcd/server-ca"),
        ("etcd/peer-server-client", "etcd/peer-ca"),
        ("etcd/client", "etcd/server-ca"),
    ];
    for (name, ca) in expired {
        expire(&tls, name, ca);
    }
    let after = rows(&data);
    for (name, _) in expired {
        assert_eq!(
            status_of(&after, &format!("server/tls/{name}.crt")),
            "EXPIRED"
        );
    }
    let o = certificate(&data, &["check", "--service", "etcd"]);
    let etcd_only = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(etcd_only.lines().count(), 3, "{etcd_only}");
    assert!(etcd_only.contains("expired at"), "{etcd_only}");

    // Bad input: an unknown service changes nothing.
    let listing = files_in(&data.join("server"));
    let o = certificate(&data, &["rotate", "--service", "api-server,nope"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("unknown service \"nope\": valid services are admin, api-server"),
        "{}",
        text(&o)
    );
    assert_eq!(files_in(&data.join("server")), listing);
    assert!(tls.join("serving-kube-apiserver.crt").exists());

    // The next start renews them and serves.
    s.spawn().unwrap();
    wait_serving(&mut s).await;
    let renewed = rows(&data);
    assert!(
        renewed.iter().all(|r| r["status"] == "OK"),
        "after restart: {renewed:?}\n{}",
        s.log_text()
    );
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();

    // rotate one service: backup, only its leaves removed, re-issued at start.
    let serving_before = std::fs::read_to_string(tls.join("serving-kube-apiserver.crt")).unwrap();
    let admin_before = std::fs::read_to_string(tls.join("client-admin.crt")).unwrap();
    let o = certificate(&data, &["rotate", "--service", "api-server"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("4 files removed"), "{out}");
    let backup = files_in(&data.join("server"))
        .into_iter()
        .find(|p| p.to_string_lossy().starts_with("tls-"))
        .unwrap_or_else(|| panic!("no backup dir: {out}"));
    let backup = data.join("server").join(backup);
    assert_eq!(
        std::fs::read_to_string(backup.join("serving-kube-apiserver.crt")).unwrap(),
        serving_before
    );
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(backup.join("serving-kube-apiserver.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "backed-up key mode");
    assert!(!tls.join("serving-kube-apiserver.crt").exists());
    assert!(!tls.join("client-kube-apiserver.key").exists());
    assert!(tls.join("client-admin.crt").exists());
    s.spawn().unwrap();
    wait_serving(&mut s).await;
    let serving_after = std::fs::read_to_string(tls.join("serving-kube-apiserver.crt")).unwrap();
    assert_ne!(
        serving_after, serving_before,
        "serving certificate not re-issued"
    );
    assert_eq!(
        std::fs::read_to_string(tls.join("client-admin.crt")).unwrap(),
        admin_before,
        "a service not named was rotated"
    );

    // A CA within 90 days of its end (CAs are never re-created at start):
    // `check` says WARNING and the server raises a Warning Event on its Node.
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();
    let ca_pem = std::fs::read_to_string(tls.join("server-ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join("server-ca.key")).unwrap())
            .unwrap();
    let info = &rke2_trust::describe_certs(ca_pem.as_bytes()).unwrap()[0];
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, info.subject.as_str());
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = |t: i64| {
        x509_parser::time::ASN1Time::from_timestamp(t)
            .unwrap()
            .to_datetime()
    };
    params.not_before = at(now - 86_400);
    params.not_after = at(now + 30 * 86_400);
    std::fs::write(
        tls.join("server-ca.crt"),
        params.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    assert_eq!(
        status_of(&rows(&data), "server/tls/server-ca.crt"),
        "WARNING"
    );
    s.spawn().unwrap();
    let client = wait_serving(&mut s).await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
    let node = s.node_name.clone();
    let ev = rke2_testbed::eventually(LONG, "CertificateExpirationWarning event", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("CertificateExpirationWarning")
                    && e.involved_object.name.as_deref() == Some(node.as_str())
            })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Node"));
    let message = ev.message.unwrap_or_default();
    assert!(
        message.contains("server/tls/server-ca.crt: certificate rke2-server-ca"),
        "{message}"
    );
    assert!(!message.contains("client-admin"), "{message}");
}
