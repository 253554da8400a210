//! CA rotation on a real server with an agent (`rke2 certificate
//! rotate-ca`, RKE2's command): `scripts/rotate-default-ca-certs.sh` makes
//! new CAs cross-signed by the current ones; bad directories (a file
//! missing, a key of another certificate, a CA not signed by the current
//! one) are refused naming the file with nothing stored; the good one is
//! stored in the bootstrap data and taken by the server at its restart
//! (old `server/tls` kept aside), which then serves a certificate of the
//! new CA that a client trusting only the old root still verifies (the
//! cross-signed chain); kubectl works with the regenerated kubeconfig; the
//! agent stays Ready without re-registering, and after its own restart
//! holds a kubelet certificate of the new client CA; a new agent joins
//! with the token made before the rotation; a kubeconfig copied before
//! the rotation keeps working; `--force` takes a CA that is not
//! cross-signed. The certificate expiry gauge is scraped through
//! `nodes/<node>/proxy/metrics` before and after. A second test restarts
//! three servers one at a time after a rotation.
//!
//! Needs root, etcd, openssl (scripts/install.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually, unique_loopback};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

const LONG: Duration = Duration::from_secs(180);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    name: String,
    port: u16,
    ip: String,
    token: String,
    server: String,
}

impl Agent {
    fn start(server: &Server, token: &str, name: &str) -> Agent {
        let mut a = Agent {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            name: name.to_string(),
            port: free_port(),
            ip: unique_loopback(),
            token: token.to_string(),
            server: server.ip.clone(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        std::fs::write(
            self.dir.path().join("config.yaml"),
            format!(
                "server: https://{}:9345\ntoken: \"{}\"\n",
                self.server, self.token
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = Command::new(bin())
            .arg("agent")
            .arg("--config")
            .arg(self.dir.path().join("config.yaml"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--node-name",
                &self.name,
                "--node-ip",
                &self.ip,
                "--lb-server-port",
                &self.port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        rke2_testbed::kill_node_containers(&self.dir.path().join("data"));
    }
}

fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p > 1024 && std::net::TcpListener::bind(("127.0.0.1", p - 1)).is_ok() {
            return p;
        }
    }
}

async fn ready(nodes: &Api<Node>, name: &str) -> Option<()> {
    let n = nodes.get(name).await.ok()?;
    n.status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        .then_some(())
}

fn rotate_ca(server: &Server, path: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["certificate", "rotate-ca", "--path"])
        .arg(path)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args(["--server", &format!("https://{}:9345", server.ip)])
        .args(extra)
        .output()
        .unwrap()
}

/// The mod revision of the stored bootstrap data.
fn bootstrap_revision(server: &Server) -> i64 {
    let o = rke2_testbed::etcdctl(
        &server.data_dir,
        &server.ip,
        &["get", "/bootstrap/", "--prefix", "-w", "json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kvs = v["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), 1, "{v}");
    kvs[0]["mod_revision"].as_i64().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The first certificate of a PEM file, as PEM.
fn first_cert(pem: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let i = pem.find(end).unwrap() + end.len();
    format!("{}\n", &pem[..i])
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl")
}

/// `openssl s_client` to `addr` trusting `ca`: (verified, the first
/// certificate the server sent).
fn s_client(addr: &str, ca: &Path) -> (bool, String) {
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-showcerts",
            "-verify_return_error",
        ])
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let verified = out.contains("Verify return code: 0 (ok)");
    let served = out
        .find("-----BEGIN CERTIFICATE-----")
        .map(|i| first_cert(&out[i..]))
        .unwrap_or_default();
    (verified, served)
}

fn scrape(server: &Server, node: &str) -> String {
    let k = rke2_testbed::kubectls().unwrap().pop().unwrap().1;
    let o = server
        .kubectl(&k)
        .args([
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/metrics"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn gauge(metrics: &str, file: &str) -> i64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("rke2_certificate_expiration_seconds{")
                && l.contains(&format!("filename=\"{file}\""))
        })
        .unwrap_or_else(|| panic!("{file} not in the metrics:\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_ca_cross_signed_keeps_the_cluster_and_agents() {
    let mut s = Server::start(bin(), ServerOpts::default()).unwrap();
    let client = s
        .wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let nodes: Api<Node> = Api::all(client.clone());
    let tls = s.data_dir.join("server/tls");
    let old_token = std::fs::read_to_string(s.data_dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();
    let old_ca = tls.join("server-ca.crt");
    let old_ca_copy = s.dir.path().join("old-server-ca.crt");
    std::fs::copy(&old_ca, &old_ca_copy).unwrap();

    let mut a = Agent::start(&s, &old_token, "ca-worker");
    eventually(LONG, "agent Ready", || ready(&nodes, "ca-worker"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));

    // The expiry gauge of the server's own certificates.
    let before = scrape(&s, &s.node_name);
    assert!(
        before.contains("# TYPE rke2_certificate_expiration_seconds gauge"),
        "{before}"
    );
    let leaf = gauge(&before, "server/tls/client-admin.crt");
    assert!((360 * 86_400..=366 * 86_400).contains(&leaf), "{leaf}");
    assert!(gauge(&before, "server/tls/server-ca.crt") > 3600 * 86_400);
    // The agent's too, through its node API.
    let agent_metrics = scrape(&s, "ca-worker");
    assert!(
        gauge(&agent_metrics, "agent/client-kubelet.crt") > 360 * 86_400,
        "{agent_metrics}"
    );

    // New CAs cross-signed by the current ones.
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rotate-default-ca-certs.sh");
    let o = Command::new("bash")
        .arg(&script)
        .env("DATA_DIR", &s.data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let new_dir = s.data_dir.join("server/rotate-ca");
    let script_out = text(&o);
    let new_token_line = script_out
        .lines()
        .find(|l| l.starts_with("Server token after the rotation: "))
        .unwrap_or_else(|| panic!("{script_out}"))
        .trim_start_matches("Server token after the rotation: ")
        .to_string();

    // Bad input: refused naming the file, exit 1, nothing stored.
    let rev = bootstrap_revision(&s);
    let tls_before: Vec<(PathBuf, Vec<u8>)> =
        ["server-ca.crt", "client-ca.crt", "etcd/peer-ca.crt"]
            .iter()
            .map(|f| (tls.join(f), std::fs::read(tls.join(f)).unwrap()))
            .collect();
    let bad = s.dir.path().join("bad");
    copy_dir(&new_dir, &bad);
    std::fs::remove_file(bad.join("etcd/peer-ca.key")).unwrap();
    let o = rotate_ca(&s, &bad, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "{}: file is missing",
            bad.join("etcd/peer-ca.key").display()
        )),
        "{}",
        text(&o)
    );
    std::fs::copy(
        new_dir.join("etcd/peer-ca.key"),
        bad.join("etcd/peer-ca.key"),
    )
    .unwrap();
    std::fs::copy(new_dir.join("server-ca.key"), bad.join("client-ca.key")).unwrap();
    let o = rotate_ca(&s, &bad, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("client-ca.key: the first key does not match"),
        "{}",
        text(&o)
    );
    std::fs::copy(new_dir.join("client-ca.key"), bad.join("client-ca.key")).unwrap();
    // A CA of its own, not signed by the current one.
    let o = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=unrelated-ca",
        "-keyout",
        bad.join("request-header-ca.key").to_str().unwrap(),
        "-out",
        bad.join("request-header-ca.crt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = rotate_ca(&s, &bad, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "request-header-ca.crt: the new CA certificate does not chain to the current CA"
        ) && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    // A wrong token.
    let o = rotate_ca(&s, &new_dir, &["--token", "not-the-token"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        bootstrap_revision(&s),
        rev,
        "bad input changed the bootstrap data"
    );
    for (f, b) in &tls_before {
        assert_eq!(&std::fs::read(f).unwrap(), b, "{}", f.display());
    }

    // The good directory is stored; the running server is unchanged.
    let o = rotate_ca(&s, &new_dir, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("restart rke2 server"), "{}", text(&o));
    assert!(bootstrap_revision(&s) > rev);
    assert_eq!(std::fs::read(&old_ca).unwrap(), tls_before[0].1);

    // Restart: the server takes the stored CAs (keeping the old files
    // aside) and serves certificates of the new CA.
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();
    let old_kubeconfig = s.dir.path().join("old-rke2.yaml");
    std::fs::rename(&s.kubeconfig, &old_kubeconfig).unwrap();
    s.spawn().unwrap();
    let client = s
        .wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let nodes: Api<Node> = Api::all(client.clone());
    for f in [
        "server-ca.crt",
        "client-ca.key",
        "etcd/server-ca.crt",
        "etcd/peer-ca.crt",
        "request-header-ca.crt",
    ] {
        assert_eq!(
            std::fs::read_to_string(tls.join(f)).unwrap(),
            std::fs::read_to_string(new_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    let backups: Vec<_> = std::fs::read_dir(s.data_dir.join("server"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tls-"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        std::fs::read(backups[0].path().join("server-ca.crt")).unwrap(),
        tls_before[0].1
    );
    assert!(
        s.log_text()
            .contains("the cluster's CA certificates were rotated")
    );

    // The serving certificate is the new CA's, and a client trusting only
    // the old root verifies it (the chain through the cross-signed root).
    let new_ca_pem = std::fs::read_to_string(new_dir.join("server-ca.crt")).unwrap();
    let intermediate = s.dir.path().join("new-intermediate.pem");
    std::fs::write(&intermediate, first_cert(&new_ca_pem)).unwrap();
    let serving = std::fs::read_to_string(tls.join("serving-kube-apiserver.crt")).unwrap();
    let leaf_file = s.dir.path().join("leaf.pem");
    std::fs::write(&leaf_file, first_cert(&serving)).unwrap();
    let o = openssl(&[
        "verify",
        "-partial_chain",
        "-CAfile",
        intermediate.to_str().unwrap(),
        leaf_file.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "serving cert not issued by the new CA: {}",
        text(&o)
    );
    let (ok, served) = s_client(&format!("{}:6443", s.ip), &old_ca_copy);
    assert!(ok, "a client trusting the old root refused the new chain");
    assert_eq!(served, first_cert(&serving));
    let (ok, _) = s_client(&format!("{}:6443", s.ip), &tls.join("server-ca.crt"));
    assert!(ok);
    let (ok, _) = s_client(&format!("{}:9345", s.ip), &old_ca_copy);
    assert!(ok, "supervisor");

    // kubectl with the regenerated kubeconfig.
    let k = rke2_testbed::kubectls().unwrap().pop().unwrap().1;
    let o = s.kubectl(&k).args(["get", "nodes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ca-worker"));
    assert_ne!(
        std::fs::read(&s.kubeconfig).unwrap(),
        std::fs::read(&old_kubeconfig).unwrap()
    );
    // A kubeconfig copied before the rotation (old CA, old admin
    // certificate) keeps working.
    let o = s
        .kubectl(&k)
        .env("KUBECONFIG", &old_kubeconfig)
        .args(["get", "nodes"])
        .output()
        .unwrap();
    assert!(o.status.success(), "old kubeconfig: {}", text(&o));

    // The token files carry the new root's hash, as the script said.
    let new_token = std::fs::read_to_string(s.data_dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new_token, old_token);
    assert_eq!(new_token, new_token_line);

    // The agent stays Ready without re-registering; restarted, it gets a
    // kubelet certificate of the new client CA.
    eventually(LONG, "agent Ready after the rotation", || {
        ready(&nodes, "ca-worker")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    a.stop();
    a.spawn();
    let client_ca = std::fs::read_to_string(tls.join("client-ca.crt")).unwrap();
    let client_int = s.dir.path().join("client-intermediate.pem");
    std::fs::write(&client_int, first_cert(&client_ca)).unwrap();
    eventually(LONG, "agent kubelet certificate of the new CA", || {
        let kubelet = a.dir.path().join("data/agent/client-kubelet.crt");
        let client_int = client_int.clone();
        let leaf = s.dir.path().join("kubelet-leaf.pem");
        async move {
            let pem = std::fs::read_to_string(&kubelet).ok()?;
            std::fs::write(&leaf, first_cert(&pem)).ok()?;
            openssl(&[
                "verify",
                "-partial_chain",
                "-CAfile",
                client_int.to_str()?,
                leaf.to_str()?,
            ])
            .status
            .success()
            .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    eventually(LONG, "agent Ready after its restart", || {
        ready(&nodes, "ca-worker")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));

    // A new agent joins with the token made before the rotation.
    let b = Agent::start(&s, &old_token, "ca-late");
    eventually(LONG, "late agent Ready with the old token", || {
        ready(&nodes, "ca-late")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log()));

    // The gauge follows the files: the new CA's remaining lifetime.
    let after = scrape(&s, &s.node_name);
    assert!(gauge(&after, "server/tls/server-ca.crt") > 3600 * 86_400);
    assert!(
        after.contains("subject=\"rke2-server-root@") && !before.contains("rke2-server-root@"),
        "the new root is not in the metrics:\n{after}"
    );

    // --force takes a CA that is not cross-signed (here the unrelated
    // request-header CA refused above), applied at the next start.
    let rev = bootstrap_revision(&s);
    let o = rotate_ca(&s, &bad, &["--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(bootstrap_revision(&s) > rev);
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();
    s.spawn().unwrap();
    s.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(
        std::fs::read_to_string(tls.join("request-header-ca.crt")).unwrap(),
        std::fs::read_to_string(bad.join("request-header-ca.crt")).unwrap()
    );
    let proxy = std::fs::read_to_string(tls.join("client-auth-proxy.crt")).unwrap();
    assert!(issued_by(
        s.dir.path(),
        &proxy,
        &std::fs::read_to_string(bad.join("request-header-ca.crt")).unwrap()
    ));
    let o = s.kubectl(&k).args(["get", "nodes"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    drop(b);
    drop(a);
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();
}

/// True when the first certificate of `leaf_pem` is issued by the first
/// certificate of `ca_pem`.
fn issued_by(dir: &Path, leaf_pem: &str, ca_pem: &str) -> bool {
    let leaf = dir.join("check-leaf.pem");
    let ca = dir.join("check-ca.pem");
    std::fs::write(&leaf, first_cert(leaf_pem)).unwrap();
    std::fs::write(&ca, first_cert(ca_pem)).unwrap();
    openssl(&[
        "verify",
        "-partial_chain",
        "-CAfile",
        ca.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ])
    .status
    .success()
}

/// Three servers (the joiners configured with the full token made before
/// the rotation), rotate-ca through the second, then each server restarted
/// in turn: after each restart a write through every server is read
/// through the others (etcd and the apiservers with mixed CAs), etcd keeps
/// three started voters, and at the end every server holds the new CAs
/// and serves, and peers with, leaves of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_restarted_one_at_a_time() {
    let mut s1 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: ca-shared-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    s1.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s1.log_text()));
    let full = std::fs::read_to_string(s1.data_dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();
    let joiner = |first: &Server| ServerOpts {
        config_yaml: Some(format!(
            "server: https://{}:9345\ntoken: \"{full}\"\n",
            first.ip
        )),
        ..Default::default()
    };
    let mut s2 = Server::start(bin(), joiner(&s1)).unwrap();
    s2.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s2.log_text()));
    let mut s3 = Server::start(bin(), joiner(&s1)).unwrap();
    s3.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s3.log_text()));
    let voters = |s: &Server| {
        let o = rke2_testbed::etcdctl(&s.data_dir, &s.ip, &["member", "list"]);
        rke2_testbed::started_voters(&o.stdout)
    };
    eventually(LONG, "three etcd voters", || async {
        (voters(&s1) == 3).then_some(())
    })
    .await
    .unwrap();

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rotate-default-ca-certs.sh");
    let o = Command::new("bash")
        .arg(&script)
        .env("DATA_DIR", &s2.data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let new_dir = s2.data_dir.join("server/rotate-ca");
    let o = rotate_ca(&s2, &new_dir, &[]);
    assert!(o.status.success(), "{}", text(&o));

    let mut servers = [s1, s2, s3];
    for round in 0..3 {
        let s = &mut servers[round];
        s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
            .unwrap();
        s.spawn().unwrap();
        s.wait_ready(LONG)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", s.log_text()));
        assert!(
            s.log_text()
                .contains("the cluster's CA certificates were rotated"),
            "round {round}"
        );
        eventually(LONG, "three started etcd voters", || async {
            (voters(&servers[round]) == 3).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // A write through each server is read through every other.
        let mut clients = Vec::new();
        for s in &servers {
            clients.push(
                rke2_testbed::client_from_kubeconfig(&s.kubeconfig)
                    .await
                    .unwrap(),
            );
        }
        for (i, c) in clients.iter().enumerate() {
            let name = format!("round-{round}-via-{i}");
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}, "data": {"k": "v"}
            }))
            .unwrap();
            eventually(LONG, "write", || {
                let cm = cm.clone();
                let c = c.clone();
                async move {
                    Api::<ConfigMap>::namespaced(c, "default")
                        .create(&PostParams::default(), &cm)
                        .await
                        .ok()
                }
            })
            .await
            .unwrap_or_else(|e| panic!("round {round} via {i}: {e}"));
            for (j, other) in clients.iter().enumerate() {
                let got = Api::<ConfigMap>::namespaced(other.clone(), "default")
                    .get(&name)
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {name} via {j}: {e}"));
                assert_eq!(got.data.unwrap()["k"], "v");
            }
        }
    }

    let new_server_ca = std::fs::read_to_string(new_dir.join("server-ca.crt")).unwrap();
    let new_peer_ca = std::fs::read_to_string(new_dir.join("etcd/peer-ca.crt")).unwrap();
    for s in &servers {
        let tls = s.data_dir.join("server/tls");
        let read = |f: &str| std::fs::read_to_string(tls.join(f)).unwrap();
        assert_eq!(read("server-ca.crt"), new_server_ca, "{}", s.node_name);
        let dir = s.dir.path();
        assert!(issued_by(
            dir,
            &read("serving-kube-apiserver.crt"),
            &new_server_ca
        ));
        assert!(issued_by(
            dir,
            &read("etcd/peer-server-client.crt"),
            &new_peer_ca
        ));
        let (ok, served) = s_client(&format!("{}:6443", s.ip), &tls.join("server-ca.crt"));
        assert!(ok, "{}", s.node_name);
        assert_eq!(served, first_cert(&read("serving-kube-apiserver.crt")));
    }
    for mut s in servers {
        s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
            .unwrap();
    }
}
