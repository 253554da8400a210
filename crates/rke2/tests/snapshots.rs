//! etcd snapshots against a real `rke2 server` (real etcd) and a real
//! S3-compatible server (`s3s-fs`, from scripts/install.sh) on loopback:
//! scheduled snapshots on a cron schedule kept to the retention, `rke2
//! etcd-snapshot save|ls|list|prune|delete` on disk and in S3, the SHA-256
//! sidecars (checked with `sha256sum -c`), snapshots etcd's own tools read
//! (`etcdctl snapshot status`), `ETCDSnapshotFile` records listed with
//! kubectl, a wrong S3 credential refused with nothing changed, and
//! scheduled snapshots whose upload failed (the S3 server stopped)
//! recorded as failed `ETCDSnapshotFile`s, bounded by the retention; the
//! same store behind TLS (HAProxy with a test CA's certificate):
//! `etcd-s3-endpoint-ca` trusted, an unknown certificate refused naming
//! the endpoint, `etcd-s3-skip-ssl-verify`, a bad CA file refused.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rke2_testbed::{Server, ServerOpts, eventually, kubectls};
use serde_json::Value;

/// Generous deadline for anything that converges (a busy 2-core box).
const DEADLINE: Duration = Duration::from_secs(120);
const BUCKET: &str = "snapshots";
const FOLDER: &str = "cluster-a";
const ACCESS_KEY: &str = "rke2-test-access";
const SECRET_KEY: &str = "rke2-test-secret-0123456789";

/// An `s3s-fs` process serving a temporary directory on a loopback port;
/// killed by its pid when dropped.
struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    endpoint: String,
}

impl S3Server {
    fn start() -> Result<Self> {
        let root = tempfile::Builder::new().prefix("rke2-s3-").tempdir()?;
        std::fs::create_dir_all(root.path().join(BUCKET))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs (installed by scripts/install.sh)")?;
        Ok(Self {
            child,
            root,
            endpoint: format!("127.0.0.1:{port}"),
        })
    }

    /// The directory holding the objects of the snapshot folder.
    fn folder(&self) -> PathBuf {
        self.root.path().join(BUCKET).join(FOLDER)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rke2 etcd-snapshot <args>` for `server`'s data dir, config and node.
fn snapshot(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rke2"))
        .arg("etcd-snapshot")
        .args(args)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .arg("--config")
        .arg(server.dir.path().join("config.yaml"))
        .args(["--node-name", &server.node_name])
        .output()
        .expect("running rke2 etcd-snapshot")
}

fn ok(out: Output, what: &str) -> Result<String> {
    ensure!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Snapshot files (not sidecars, not temporaries) in `dir` starting with `prefix`.
fn files(dir: &Path, prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.starts_with(prefix) && !n.ends_with(".sha256") && !n.ends_with(".part")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn kubectl_json(server: &Server, kubectl: &Path, args: &[&str]) -> Result<Value> {
    let out = server
        .kubectl(kubectl)
        .args(args)
        .args(["-o", "json"])
        .output()?;
    let text = ok(out, &format!("kubectl {args:?}"))?;
    Ok(serde_json::from_str(&text)?)
}

/// The ETCDSnapshotFile records by spec.snapshotName (`s3:`-prefixed for S3 ones).
fn records(server: &Server, kubectl: &Path) -> Result<std::collections::BTreeMap<String, Value>> {
    let list = kubectl_json(server, kubectl, &["get", "etcdsnapshotfiles"])?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let name = r["spec"]["snapshotName"].as_str().unwrap_or_default();
            let key = if r["spec"]["s3"].is_object() {
                format!("s3:{name}")
            } else {
                name.to_string()
            };
            (key, r)
        })
        .collect())
}

/// The CA, a CA that has nothing to do with the endpoint, and the
/// endpoint's certificate (for 127.0.0.1, signed by the CA) with its key,
/// as PEM: `(ca, other_ca, server_cert_and_key)`.
fn test_pki() -> Result<(String, String, String)> {
    let ca_params = |cn: &str| -> Result<rcgen::CertificateParams> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        Ok(p)
    };
    let ca = rcgen::CertifiedIssuer::self_signed(
        ca_params("rke2 test S3 CA")?,
        rcgen::KeyPair::generate()?,
    )?;
    let other = rcgen::CertifiedIssuer::self_signed(
        ca_params("rke2 test unrelated CA")?,
        rcgen::KeyPair::generate()?,
    )?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "s3 endpoint");
    let cert = params.signed_by(&key, &ca)?;
    Ok((
        ca.pem(),
        other.pem(),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    ))
}

/// HAProxy terminating TLS (the test CA's certificate for 127.0.0.1) in
/// front of the S3 server, as an operator puts one in front of a plain
/// HTTP store; killed by its pid when dropped.
struct TlsFront {
    child: Child,
    endpoint: String,
}

impl TlsFront {
    async fn start(dir: &Path, cert_and_key: &Path, backend: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = dir.join("haproxy-s3.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 256\n\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 5m\n    timeout server 5m\n\n\
                 frontend s3-tls\n    bind 127.0.0.1:{port} ssl crt {}\n    default_backend s3\n\n\
                 backend s3\n    server s3s-fs {backend}\n",
                cert_and_key.display()
            ),
        )?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy (scripts/install.sh)")?;
        let front = Self {
            child,
            endpoint: format!("127.0.0.1:{port}"),
        };
        let addr = front.endpoint.clone();
        eventually(DEADLINE, "HAProxy's TLS frontend accepts", || {
            let up = std::net::TcpStream::connect(&addr).is_ok();
            async move { up.then_some(()) }
        })
        .await?;
        Ok(front)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rke2 etcd-snapshot <args>` with another config file.
fn snapshot_with(server: &Server, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rke2"))
        .arg("etcd-snapshot")
        .args(args)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .arg("--config")
        .arg(config)
        .args(["--node-name", &server.node_name])
        .output()
        .expect("running rke2 etcd-snapshot")
}

/// The snapshot name `save` printed.
fn saved_name(out: &str) -> Result<String> {
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("Snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .with_context(|| format!("no snapshot name in {out:?}"))?
        .to_string())
}

/// The S3 store over HTTPS: `etcd-s3-endpoint-ca` trusted for the endpoint
/// (save, ls, delete), refused without it (the certificate and endpoint
/// named, nothing written) or with a CA that did not sign it,
/// `etcd-s3-skip-ssl-verify` accepted, and a CA file that is missing or
/// no PEM refused naming the key and the file.
async fn s3_over_tls(server: &Server, s3: &S3Server, dir: &Path, plain_config: &str) -> Result<()> {
    let pki = tempfile::Builder::new().prefix("rke2-s3-tls-").tempdir()?;
    let (ca, other_ca, cert_and_key) = test_pki()?;
    let ca_file = pki.path().join("ca.pem");
    let other_file = pki.path().join("other-ca.pem");
    let cert_file = pki.path().join("s3.pem");
    let garbled = pki.path().join("garbled.pem");
    std::fs::write(&ca_file, ca)?;
    std::fs::write(&other_file, other_ca)?;
    std::fs::write(&cert_file, cert_and_key)?;
    std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n")?;
    let front = TlsFront::start(pki.path(), &cert_file, &s3.endpoint).await?;
    // The server's config with the endpoint behind TLS (no etcd-s3-insecure).
    let config = pki.path().join("config.yaml");
    let text: String = plain_config
        .lines()
        .filter(|l| !l.starts_with("etcd-s3-insecure"))
        .map(|l| {
            if l.starts_with("etcd-s3-endpoint:") {
                format!("etcd-s3-endpoint: {}\n", front.endpoint)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&config, text)?;
    let https = format!("https://{}", front.endpoint);
    let ca_arg = ca_file.to_str().context("temp path")?;

    // With the CA: save, ls and delete work over HTTPS.
    let out = ok(
        snapshot_with(
            server,
            &config,
            &["save", "--name", "tls", "--s3-endpoint-ca", ca_arg],
        ),
        "etcd-snapshot save over https with etcd-s3-endpoint-ca",
    )?;
    let name = saved_name(&out)?;
    ensure!(
        std::fs::read(dir.join(&name))? == std::fs::read(s3.folder().join(&name))?,
        "the S3 copy of {name} differs"
    );
    let table = ok(
        snapshot_with(server, &config, &["ls", "--s3-endpoint-ca", ca_arg]),
        "etcd-snapshot ls over https",
    )?;
    let remote = format!("s3://{BUCKET}/{FOLDER}/{name}");
    ensure!(
        table
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(remote.as_str())),
        "no S3 row {remote} in\n{table}"
    );
    ok(
        snapshot_with(
            server,
            &config,
            &["delete", &name, "--s3-endpoint-ca", ca_arg],
        ),
        "etcd-snapshot delete over https",
    )?;
    ensure!(
        !s3.folder().join(&name).exists() && !dir.join(&name).exists(),
        "{name} left after delete"
    );

    // Without the CA (the system's roots) and with a CA that did not sign
    // the endpoint's certificate: refused, the certificate and the
    // endpoint named, nothing written locally or in the bucket.
    for (label, extra) in [
        ("no CA", vec![]),
        (
            "another CA",
            vec!["--s3-endpoint-ca", other_file.to_str().context("path")?],
        ),
    ] {
        let mut args = vec!["save", "--name", "untrusted"];
        args.extend(extra);
        let bad = snapshot_with(server, &config, &args);
        let err = String::from_utf8_lossy(&bad.stderr);
        ensure!(!bad.status.success(), "{label}: {bad:?}");
        ensure!(
            err.contains("certificate") && err.contains(&https),
            "{label}: {err}"
        );
        ensure!(
            files(dir, "untrusted-").is_empty() && files(&s3.folder(), "untrusted-").is_empty(),
            "{label}: a file was written"
        );
    }
    let bad = snapshot_with(
        server,
        &config,
        &[
            "save",
            "--name",
            "untrusted",
            "--s3-endpoint-ca",
            other_file.to_str().context("path")?,
        ],
    );
    ensure!(
        String::from_utf8_lossy(&bad.stderr)
            .contains(&format!("etcd-s3-endpoint-ca ({})", other_file.display())),
        "{bad:?}"
    );

    // etcd-s3-skip-ssl-verify: no verification, the upload goes through.
    let out = ok(
        snapshot_with(
            server,
            &config,
            &["save", "--name", "tlsskip", "--s3-skip-ssl-verify"],
        ),
        "etcd-snapshot save with etcd-s3-skip-ssl-verify",
    )?;
    let name = saved_name(&out)?;
    ensure!(s3.folder().join(&name).exists(), "{name} not in the bucket");
    ok(
        snapshot_with(server, &config, &["delete", &name, "--s3-skip-ssl-verify"]),
        "etcd-snapshot delete with etcd-s3-skip-ssl-verify",
    )?;
    ensure!(
        files(&s3.folder(), "tlsskip-").is_empty(),
        "tlsskip left in the bucket"
    );

    // A CA file that is missing or not PEM: refused naming the key and
    // the file, nothing written.
    let missing = pki.path().join("missing.pem");
    for file in [&missing, &garbled] {
        let path = file.to_str().context("path")?;
        let bad = snapshot_with(
            server,
            &config,
            &["save", "--name", "badca", "--s3-endpoint-ca", path],
        );
        let err = String::from_utf8_lossy(&bad.stderr);
        ensure!(!bad.status.success(), "{bad:?}");
        ensure!(
            err.contains("etcd-s3-endpoint-ca") && err.contains(path),
            "{err}"
        );
        ensure!(
            files(dir, "badca-").is_empty() && files(&s3.folder(), "badca-").is_empty(),
            "a file was written"
        );
        // And `rke2 server` refuses it at load (exit 2), before writing.
        let never = pki.path().join("never");
        let start = Command::new(env!("CARGO_BIN_EXE_rke2"))
            .args(["server", "--etcd-s3", "--etcd-s3-bucket", BUCKET])
            .args([
                "--etcd-s3-endpoint",
                &front.endpoint,
                "--etcd-s3-endpoint-ca",
                path,
            ])
            .arg("--data-dir")
            .arg(&never)
            .output()?;
        let err = String::from_utf8_lossy(&start.stderr);
        ensure!(start.status.code() == Some(2), "{start:?}");
        ensure!(
            err.contains("etcd-s3-endpoint-ca") && err.contains(path),
            "{err}"
        );
        ensure!(!never.exists(), "data dir written");
    }
    drop(front);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_on_disk_and_in_s3_scheduled_recorded_and_pruned() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s3 = S3Server::start().context("starting the S3 server")?;
    let config = format!(
        "etcd-snapshot-schedule-cron: \"@every 3s\"\n\
         etcd-snapshot-retention: 2\n\
         etcd-s3: true\n\
         etcd-s3-endpoint: {}\n\
         etcd-s3-insecure: true\n\
         etcd-s3-bucket: {BUCKET}\n\
         etcd-s3-folder: {FOLDER}\n\
         etcd-s3-access-key: {ACCESS_KEY}\n\
         etcd-s3-secret-key: {SECRET_KEY}\n",
        s3.endpoint
    );
    let mut server = Server::start(
        Path::new(env!("CARGO_BIN_EXE_rke2")),
        ServerOpts {
            config_yaml: Some(config.clone()),
            ..Default::default()
        },
    )
    .context("starting the server")?;
    server
        .wait_ready(Duration::from_secs(180))
        .await
        .context("server ready")?;
    let kubectl = kubectls()?
        .pop()
        .context("no kubectl under /usr/local/lib/rke2-test (scripts/install.sh)")?
        .1;
    let dir = server.data_dir.join("server/db/snapshots");
    let node = server.node_name.clone();

    // Scheduled snapshots: several are taken, never more than the
    // retention (plus the one being taken) are kept, on disk and in S3.
    let scheduled = format!("etcd-snapshot-{node}-");
    let mut seen = BTreeSet::new();
    let mut most_local = 0;
    eventually(DEADLINE, "4 scheduled snapshots, 2 kept", || {
        let now = files(&dir, &scheduled);
        most_local = most_local.max(now.len());
        seen.extend(now.iter().cloned());
        let in_s3 = files(&s3.folder(), &scheduled).len();
        let done = seen.len() >= 4 && now.len() == 2 && in_s3 == 2;
        async move { done.then_some(()) }
    })
    .await?;
    ensure!(
        most_local <= 3,
        "retention 2 kept up to {most_local} scheduled snapshots"
    );

    // On demand: two plain and one compressed snapshot named `manual`.
    let mut manual = Vec::new();
    for extra in [&[][..], &[][..], &["--snapshot-compress"][..]] {
        // The config's retention (2) would prune the first of the three.
        let mut args = vec!["save", "--name", "manual", "--snapshot-retention", "5"];
        args.extend_from_slice(extra);
        let out = ok(snapshot(&server, &args), "etcd-snapshot save")?;
        let name = out
            .lines()
            .find_map(|l| l.strip_prefix("Snapshot "))
            .and_then(|l| l.split_whitespace().next())
            .with_context(|| format!("no snapshot name in {out:?}"))?
            .to_string();
        ensure!(name.starts_with(&format!("manual-{node}-")), "{name}");
        manual.push(name);
    }
    ensure!(manual[2].ends_with(".zip"), "compressed: {}", manual[2]);
    ensure!(
        manual.iter().collect::<BTreeSet<_>>().len() == 3,
        "distinct names: {manual:?}"
    );
    for name in &manual {
        let path = dir.join(name);
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(mode == 0o600, "{name} has mode {mode:o}");
        let side_mode = std::fs::metadata(dir.join(format!("{name}.sha256")))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(side_mode == 0o600, "{name}.sha256 has mode {side_mode:o}");
        // The sidecar is sha256sum's format and matches.
        let check = Command::new("sha256sum")
            .args(["-c", &format!("{name}.sha256")])
            .current_dir(&dir)
            .output()?;
        ok(check, &format!("sha256sum -c {name}.sha256"))?;
        // The object in S3 is the same bytes, with the same sidecar.
        ensure!(
            std::fs::read(&path)? == std::fs::read(s3.folder().join(name))?,
            "S3 copy of {name} differs"
        );
        ensure!(
            std::fs::read(dir.join(format!("{name}.sha256")))?
                == std::fs::read(s3.folder().join(format!("{name}.sha256")))?,
            "S3 sidecar of {name} differs"
        );
    }
    // etcd's own tool reads the plain snapshot (hash and all).
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(dir.join(&manual[0]))
        .output()?;
    let status: Value = serde_json::from_str(&ok(status, "etcdctl snapshot status")?)?;
    ensure!(
        status["totalKey"].as_u64().unwrap_or(0) > 100,
        "etcdctl sees {status}"
    );

    // ls: k3s's columns; local and S3 rows for each snapshot.
    let table = ok(snapshot(&server, &["ls"]), "etcd-snapshot ls")?;
    let mut lines = table.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(head == ["Name", "Location", "Size", "Created"], "{table}");
    for name in &manual {
        let size = std::fs::metadata(dir.join(name))?.len().to_string();
        let local = format!("file://{}", dir.join(name).display());
        let remote = format!("s3://{BUCKET}/{FOLDER}/{name}");
        for loc in [&local, &remote] {
            ensure!(
                table.lines().any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() == 4 && cols[0] == name && cols[1] == loc && cols[2] == size
                }),
                "no row {name} {loc} {size} in\n{table}"
            );
        }
    }
    let list = ok(
        snapshot(&server, &["list", "-o", "json"]),
        "etcd-snapshot list -o json",
    )?;
    let list: Value = serde_json::from_str(&list)?;
    ensure!(
        list.as_array()
            .is_some_and(|a| a.iter().any(|s| s["name"] == manual[2].as_str()
                && s["compressed"] == true
                && s["sha256"].as_str().is_some_and(|h| h.len() == 64))),
        "json list: {list}"
    );

    // ETCDSnapshotFile records, local and S3, as kubectl lists them.
    let recs = records(&server, &kubectl)?;
    for name in &manual {
        let size = std::fs::metadata(dir.join(name))?.len();
        let sidecar = std::fs::read_to_string(dir.join(format!("{name}.sha256")))?;
        let sha = sidecar.split_whitespace().next().unwrap_or_default();
        for key in [name.clone(), format!("s3:{name}")] {
            let r = recs
                .get(&key)
                .with_context(|| format!("no ETCDSnapshotFile for {key}: {:?}", recs.keys()))?;
            ensure!(r["spec"]["nodeName"] == node.as_str(), "{r}");
            ensure!(r["status"]["readyToUse"] == true, "{r}");
            ensure!(r["status"]["size"] == size.to_string().as_str(), "{r}");
            ensure!(
                r["metadata"]["annotations"]["etcd.rke2.cattle.io/snapshot-sha256"] == sha,
                "{r}"
            );
        }
        ensure!(
            recs[&format!("s3:{name}")]["metadata"]["labels"]["etcd.rke2.cattle.io/snapshot-storage-node"]
                == "s3"
        );
    }
    let printed = ok(
        server
            .kubectl(&kubectl)
            .args(["get", "etcdsnapshotfiles"])
            .output()?,
        "kubectl get etcdsnapshotfiles",
    )?;
    let cols: Vec<&str> = printed
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        cols == [
            "NAME",
            "SNAPSHOTNAME",
            "NODE",
            "LOCATION",
            "SIZE",
            "CREATIONTIME"
        ],
        "{printed}"
    );

    // prune: the newest `manual` is kept, locally and in S3, and the
    // records follow.
    let pruned = ok(
        snapshot(
            &server,
            &["prune", "--name", "manual", "--snapshot-retention", "1"],
        ),
        "etcd-snapshot prune",
    )?;
    let left = files(&dir, "manual-");
    ensure!(
        left == BTreeSet::from([manual[2].clone()]),
        "after prune: {left:?}\n{pruned}"
    );
    ensure!(
        files(&s3.folder(), "manual-") == left,
        "S3 after prune: {:?}",
        files(&s3.folder(), "manual-")
    );
    ensure!(
        !dir.join(format!("{}.sha256", manual[0])).exists(),
        "sidecar left"
    );
    let recs = records(&server, &kubectl)?;
    ensure!(
        !recs.contains_key(&manual[0]) && !recs.contains_key(&format!("s3:{}", manual[1])),
        "records of pruned snapshots: {:?}",
        recs.keys()
    );
    // Scheduled snapshots are not touched by a prune of another name.
    ensure!(!files(&dir, &scheduled).is_empty());

    // delete: gone from disk, S3 and the records; a missing name fails.
    ok(
        snapshot(&server, &["delete", &manual[2]]),
        "etcd-snapshot delete",
    )?;
    ensure!(files(&dir, "manual-").is_empty() && files(&s3.folder(), "manual-").is_empty());
    let recs = records(&server, &kubectl)?;
    ensure!(
        !recs.keys().any(|k| k.contains("manual-")),
        "{:?}",
        recs.keys()
    );
    let missing = snapshot(&server, &["delete", "manual-nosuch-1"]);
    ensure!(missing.status.code() == Some(1), "{missing:?}");
    ensure!(
        String::from_utf8_lossy(&missing.stderr).contains("snapshot manual-nosuch-1 not found"),
        "{missing:?}"
    );

    // A wrong S3 secret: exit 1, the bucket and endpoint named, nothing
    // written on disk or in the bucket.
    let before_s3 = files(&s3.folder(), "");
    let bad = snapshot(
        &server,
        &[
            "save",
            "--name",
            "badcred",
            "--s3-secret-key",
            "not-the-secret",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(bad.status.code() == Some(1), "{bad:?}");
    ensure!(
        err.contains(&format!("bucket \"{BUCKET}\"")) && err.contains(&s3.endpoint),
        "{err}"
    );
    ensure!(err.contains("access denied"), "{err}");
    ensure!(
        files(&dir, "badcred-").is_empty(),
        "a local file was written"
    );
    let after_s3: BTreeSet<String> = files(&s3.folder(), "")
        .into_iter()
        .filter(|n| !n.starts_with(&scheduled))
        .collect();
    let before_s3: BTreeSet<String> = before_s3
        .into_iter()
        .filter(|n| !n.starts_with(&scheduled))
        .collect();
    ensure!(after_s3 == before_s3, "{before_s3:?} -> {after_s3:?}");

    // The same store behind TLS, with the endpoint's CA, without it, and
    // with verification off.
    s3_over_tls(&server, &s3, &dir, &config)
        .await
        .context("S3 over TLS")?;

    // The bucket goes away: scheduled snapshots go on locally, and each
    // failed upload is recorded as k3s records it (an S3 ETCDSnapshotFile,
    // readyToUse false, status.error with the message and time), never
    // more of them than the retention.
    let endpoint = s3.endpoint.clone();
    drop(s3);
    let mut failed_seen = BTreeSet::new();
    let mut most_failed = 0;
    let mut last = None;
    eventually(DEADLINE, "3 failed S3 snapshots recorded, 2 kept", || {
        let failed: Vec<Value> = records(&server, &kubectl)
            .map(|r| {
                r.into_values()
                    .filter(|r| r["status"]["error"].is_object())
                    .collect()
            })
            .unwrap_or_default();
        most_failed = most_failed.max(failed.len());
        failed_seen.extend(failed.iter().map(|r| {
            r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }));
        last = failed.last().cloned();
        let done = failed_seen.len() >= 3;
        async move { done.then_some(()) }
    })
    .await?;
    ensure!(
        most_failed <= 2,
        "{most_failed} failed records kept, retention 2"
    );
    let rec = last.context("no failed record")?;
    ensure!(rec["status"]["readyToUse"] == false, "{rec}");
    ensure!(rec["spec"]["s3"]["bucket"] == BUCKET, "{rec}");
    ensure!(rec["spec"]["nodeName"] == node.as_str(), "{rec}");
    ensure!(
        rec["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("s3-etcd-snapshot-"),
        "{rec}"
    );
    let message = rec["status"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    ensure!(message.contains(&endpoint), "{rec}");
    ensure!(
        chrono::DateTime::parse_from_rfc3339(
            rec["status"]["error"]["time"].as_str().unwrap_or_default()
        )
        .is_ok(),
        "{rec}"
    );
    // Local snapshots are unaffected and their records ready.
    let recs = records(&server, &kubectl)?;
    ensure!(
        recs.iter()
            .any(|(k, r)| k.starts_with(&scheduled) && r["status"]["readyToUse"] == true),
        "{:?}",
        recs.keys()
    );

    // A bad schedule is refused at start (exit 2), before anything runs.
    let bad_cron = Command::new(env!("CARGO_BIN_EXE_rke2"))
        .args(["server", "--etcd-snapshot-schedule-cron", "*/5 * * *"])
        .arg("--data-dir")
        .arg(server.dir.path().join("never"))
        .output()?;
    ensure!(bad_cron.status.code() == Some(2), "{bad_cron:?}");
    ensure!(
        String::from_utf8_lossy(&bad_cron.stderr).contains("etcd-snapshot-schedule-cron"),
        "{bad_cron:?}"
    );
    ensure!(
        !server.dir.path().join("never").exists(),
        "data dir written"
    );

    if let Err(e) = server.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60)) {
        bail!("stopping the server: {e}");
    }
    Ok(())
}

fn joiner(first: &Server, token: &str) -> ServerOpts {
    ServerOpts {
        config_yaml: Some(format!(
            "server: https://{}:9345\ntoken: \"{token}\"\netcd-disable-snapshots: true\n",
            first.ip
        )),
        ..Default::default()
    }
}

fn etcd_old_dirs(server: &Server) -> Vec<PathBuf> {
    std::fs::read_dir(server.data_dir.join("server/db"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("etcd-old-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn configmap(
    client: &kube::Client,
    name: &str,
) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    kube::api::Api::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

async fn put_configmap(client: &kube::Client, name: &str) -> Result<()> {
    use kube::api::{Api, PostParams};
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": name}, "data": {"k": name}}),
    )?;
    Api::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}

/// Runs `server` once with extra flags until it exits by itself; its
/// exit code and the log written meanwhile.
fn run_once(server: &mut Server, extra: &[&str]) -> Result<(Option<i32>, String)> {
    let before = server.log_text().len();
    let saved = server.opts.args.clone();
    server.opts.args.extend(extra.iter().map(|s| s.to_string()));
    server.spawn()?;
    let st = server.wait_exit(Duration::from_secs(300));
    server.opts.args = saved;
    let st = st?;
    Ok((st.code(), server.log_text()[before..].to_string()))
}

/// Three servers; a snapshot; a write after it; all stopped. Bad restore
/// paths (missing, truncated, foreign) are refused with nothing moved;
/// the snapshot is restored with `--cluster-reset`, the write after it is
/// gone and the one before it is there, the old database kept aside; the
/// other two servers, started again unchanged, move their databases aside
/// and re-join by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reset_restores_a_snapshot_and_the_others_rejoin() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = Path::new(env!("CARGO_BIN_EXE_rke2"));
    let token = "reset-test-secret";
    let mut a = Server::start(
        bin,
        ServerOpts {
            config_yaml: Some(format!("token: {token}\netcd-disable-snapshots: true\n")),
            ..Default::default()
        },
    )?;
    let ca = a
        .wait_ready(Duration::from_secs(180))
        .await
        .context("a ready")?;
    let mut b = Server::start(bin, joiner(&a, token))?;
    let mut c = Server::start(bin, joiner(&a, token))?;
    b.wait_ready(Duration::from_secs(300))
        .await
        .context("b ready")?;
    c.wait_ready(Duration::from_secs(300))
        .await
        .context("c ready")?;
    let voters = |s: &Server| {
        rke2_testbed::started_voters(
            &rke2_testbed::etcdctl(&s.data_dir, &s.ip, &["member", "list"]).stdout,
        )
    };
    eventually(DEADLINE, "three etcd voters", || {
        let n = voters(&a);
        async move { (n == 3).then_some(()) }
    })
    .await?;

    put_configmap(&ca, "before-snapshot").await?;
    let out = ok(snapshot(&a, &["save", "--name", "pre-reset"]), "save")?;
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("Snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .context("snapshot name")?
        .to_string();
    let snap = a.data_dir.join("server/db/snapshots").join(&name);
    // The restore itself is from a zipped snapshot taken at the same point.
    let out = ok(
        snapshot(
            &a,
            &["save", "--name", "pre-reset-zip", "--snapshot-compress"],
        ),
        "save --snapshot-compress",
    )?;
    let zipped = out
        .lines()
        .find_map(|l| l.strip_prefix("Snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .context("zipped snapshot name")?
        .to_string();
    let zipped = a.data_dir.join("server/db/snapshots").join(zipped);
    // Scheduled snapshots are off here; the CRD and the records are not.
    let kubectl = kubectls()?.pop().context("no kubectl")?.1;
    let recs = records(&a, &kubectl)?;
    ensure!(
        recs.contains_key(&name),
        "no record of {name}: {:?}",
        recs.keys()
    );
    put_configmap(&ca, "after-snapshot").await?;
    for s in [&mut b, &mut c, &mut a] {
        s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))?;
    }

    // Refusals: nothing moved, exit 1, the reason named.
    let scratch = tempfile::tempdir()?;
    let truncated = scratch.path().join(&name);
    let bytes = std::fs::read(&snap)?;
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    std::fs::copy(
        snap.with_file_name(format!("{name}.sha256")),
        scratch.path().join(format!("{name}.sha256")),
    )?;
    let unsummed = scratch.path().join("unsummed");
    std::fs::write(&unsummed, &bytes[..bytes.len() - 4096])?;
    let foreign = scratch.path().join("foreign.db");
    std::fs::write(&foreign, vec![0x5au8; 64 * 1024 + 32])?;
    let missing = scratch.path().join("missing.db");
    let cases = [
        (missing.clone(), "no such file"),
        (truncated.clone(), "does not match the recorded"),
        (unsummed.clone(), "etcd's own SHA-256"),
        (foreign.clone(), "not an etcd snapshot"),
    ];
    for (path, needle) in cases {
        let flag = format!("--cluster-reset-restore-path={}", path.display());
        let (code, log) = run_once(&mut a, &["--cluster-reset", &flag])?;
        ensure!(code == Some(1), "{}: exit {code:?}\n{log}", path.display());
        ensure!(
            log.contains(needle),
            "{}: {needle:?} not in\n{log}",
            path.display()
        );
        ensure!(
            etcd_old_dirs(&a).is_empty(),
            "{}: a database was moved",
            path.display()
        );
    }

    // The restore.
    let flag = format!("--cluster-reset-restore-path={}", zipped.display());
    let (code, log) = run_once(&mut a, &["--cluster-reset", &flag])?;
    ensure!(code == Some(0), "restore: exit {code:?}\n{log}");
    ensure!(
        log.contains("restart without --cluster-reset flag now"),
        "no next steps in\n{log}"
    );
    let old_a = etcd_old_dirs(&a);
    ensure!(
        old_a.len() == 1 && old_a[0].join("member").exists(),
        "{old_a:?}"
    );

    a.spawn()?;
    let ca = a
        .wait_ready(Duration::from_secs(180))
        .await
        .context("a after restore")?;
    ensure!(
        configmap(&ca, "before-snapshot").await.is_some(),
        "write before the snapshot lost"
    );
    ensure!(
        configmap(&ca, "after-snapshot").await.is_none(),
        "write after the snapshot kept"
    );
    ensure!(voters(&a) == 1, "a alone after the restore");

    // The others, unchanged, notice and re-join.
    b.spawn()?;
    c.spawn()?;
    let cb = b
        .wait_ready(Duration::from_secs(300))
        .await
        .context("b re-joined")?;
    c.wait_ready(Duration::from_secs(300))
        .await
        .context("c re-joined")?;
    eventually(DEADLINE, "three etcd voters after the re-joins", || {
        let n = voters(&a);
        async move { (n == 3).then_some(()) }
    })
    .await?;
    for s in [&b, &c] {
        let old = etcd_old_dirs(s);
        ensure!(old.len() == 1, "{}: old databases {old:?}", s.node_name);
        ensure!(
            s.log_text().contains("no longer a member of its cluster"),
            "{}",
            s.node_name
        );
    }
    ensure!(configmap(&cb, "before-snapshot").await.is_some());
    ensure!(configmap(&cb, "after-snapshot").await.is_none());

    // A plain `--cluster-reset` keeps this server's data and drops the
    // other members; they re-join again, each keeping one more old db.
    put_configmap(&ca, "before-plain-reset").await?;
    for s in [&mut b, &mut c, &mut a] {
        s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))?;
    }
    let (code, log) = run_once(&mut a, &["--cluster-reset"])?;
    ensure!(code == Some(0), "plain reset: exit {code:?}\n{log}");
    ensure!(
        log.contains("Managed etcd cluster membership has been reset"),
        "{log}"
    );
    ensure!(etcd_old_dirs(&a).len() == 1, "a plain reset moved the db");
    a.spawn()?;
    let ca = a
        .wait_ready(Duration::from_secs(180))
        .await
        .context("a after reset")?;
    ensure!(
        configmap(&ca, "before-plain-reset").await.is_some(),
        "data lost by the reset"
    );
    ensure!(voters(&a) == 1, "a alone after the reset");
    b.spawn()?;
    c.spawn()?;
    b.wait_ready(Duration::from_secs(300))
        .await
        .context("b re-joined again")?;
    c.wait_ready(Duration::from_secs(300))
        .await
        .context("c re-joined again")?;
    eventually(
        DEADLINE,
        "three etcd voters after the second re-joins",
        || {
            let n = voters(&a);
            async move { (n == 3).then_some(()) }
        },
    )
    .await?;
    for s in [&b, &c] {
        ensure!(etcd_old_dirs(s).len() == 2, "{}", s.node_name);
    }
    for s in [&mut b, &mut c, &mut a] {
        s.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))?;
    }
    Ok(())
}

/// Whether `name`'s Node reports Ready=True.
async fn node_ready(client: &kube::Client, name: &str) -> Option<()> {
    let node: k8s_openapi::api::core::v1::Node = kube::api::Api::all(client.clone())
        .get_opt(name)
        .await
        .ok()
        .flatten()?;
    node.status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        .then_some(())
}

/// A fresh server (a new data dir: no etcd data, no CAs) restores the
/// snapshot of another one, with that cluster's token: refused without a
/// token and with a wrong one (exit 1, the reason named, no CA or etcd
/// data written); with the right token, from the S3 name, it ends with
/// the old cluster's CAs (same bytes), prints the next steps, and after
/// the normal start that follows serves the objects from before the
/// snapshot and its node is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_restores_a_snapshot_with_the_clusters_token() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = Path::new(env!("CARGO_BIN_EXE_rke2"));
    let s3 = S3Server::start().context("starting the S3 server")?;
    let s3_keys = format!(
        "etcd-disable-snapshots: true\n\
         etcd-s3: true\n\
         etcd-s3-endpoint: {}\n\
         etcd-s3-insecure: true\n\
         etcd-s3-bucket: {BUCKET}\n\
         etcd-s3-folder: {FOLDER}\n\
         etcd-s3-access-key: {ACCESS_KEY}\n\
         etcd-s3-secret-key: {SECRET_KEY}\n",
        s3.endpoint
    );
    let token = "fresh-restore-secret";
    let mut a = Server::start(
        bin,
        ServerOpts {
            config_yaml: Some(format!("token: {token}\n{s3_keys}")),
            ..Default::default()
        },
    )?;
    let ca = a
        .wait_ready(Duration::from_secs(180))
        .await
        .context("a ready")?;
    put_configmap(&ca, "before-snapshot").await?;
    let out = ok(snapshot(&a, &["save", "--name", "fresh"]), "save")?;
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("Snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .context("snapshot name")?
        .to_string();
    let file = a.data_dir.join("server/db/snapshots").join(&name);
    ensure!(
        s3.folder().join(&name).is_file(),
        "{name} not uploaded to S3"
    );
    put_configmap(&ca, "after-snapshot").await?;
    let tls_a = a.data_dir.join("server/tls");
    a.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))?;

    // The fresh server: first without a token, from the S3 name.
    let reset = |path: &str| {
        vec![
            "--cluster-reset".to_string(),
            format!("--cluster-reset-restore-path={path}"),
        ]
    };
    let mut f = Server::start(
        bin,
        ServerOpts {
            args: reset(&name),
            config_yaml: Some(s3_keys.clone()),
            ..Default::default()
        },
    )?;
    let nothing_written = |f: &Server, case: &str| -> Result<()> {
        for p in [
            "server/tls/server-ca.crt",
            "server/tls",
            "server/db/etcd/member",
        ] {
            ensure!(
                !f.data_dir.join(p).exists(),
                "{case}: {p} was written\n{}",
                f.log_text()
            );
        }
        ensure!(etcd_old_dirs(f).is_empty(), "{case}: a database was moved");
        Ok(())
    };
    let code = f.wait_exit(Duration::from_secs(300))?.code();
    let log = f.log_text();
    ensure!(code == Some(1), "no token: exit {code:?}\n{log}");
    ensure!(
        log.contains("the cluster's `token` is needed"),
        "no token: reason not named\n{log}"
    );
    nothing_written(&f, "no token")?;

    // A wrong token, from the file.
    f.opts.config_yaml = Some(format!("token: not-{token}\n{s3_keys}"));
    f.opts.args = reset(&file.display().to_string());
    let (code, log) = run_once(&mut f, &[])?;
    ensure!(code == Some(1), "wrong token: exit {code:?}\n{log}");
    ensure!(
        log.contains("encrypted with a different token"),
        "wrong token: reason not named\n{log}"
    );
    nothing_written(&f, "wrong token")?;

    // The cluster's token, from the S3 name: the restore.
    f.opts.config_yaml = Some(format!("token: {token}\n{s3_keys}"));
    f.opts.args = reset(&name);
    let (code, log) = run_once(&mut f, &[])?;
    ensure!(code == Some(0), "restore: exit {code:?}\n{log}");
    ensure!(
        log.contains(&format!(
            "Etcd is restored from s3://{BUCKET}/{name}; managed etcd cluster membership has been reset, restart without --cluster-reset flag now."
        )),
        "no next steps in\n{log}"
    );
    let tls_f = f.data_dir.join("server/tls");
    for file in [
        "server-ca.crt",
        "client-ca.crt",
        "etcd/server-ca.crt",
        "service.key",
    ] {
        ensure!(
            std::fs::read(tls_f.join(file)).ok() == Some(std::fs::read(tls_a.join(file))?),
            "{file} is not the old cluster's"
        );
    }
    ensure!(
        etcd_old_dirs(&f).is_empty(),
        "a fresh server had no database to keep"
    );

    // The normal start that follows.
    f.opts.args.clear();
    f.spawn()?;
    let cf = f
        .wait_ready(Duration::from_secs(180))
        .await
        .context("the fresh server after the restore")?;
    ensure!(
        configmap(&cf, "before-snapshot").await.is_some(),
        "write before the snapshot lost"
    );
    ensure!(
        configmap(&cf, "after-snapshot").await.is_none(),
        "write after the snapshot kept"
    );
    let node = f.node_name.clone();
    eventually(DEADLINE, "the fresh server's node Ready", || {
        let cf = cf.clone();
        let node = node.clone();
        async move { node_ready(&cf, &node).await }
    })
    .await?;
    f.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))?;
    Ok(())
}
