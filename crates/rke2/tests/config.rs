//! Configuration refused before anything is written: the real binary with
//! a bad node name (given, or the host name it defaults to), malformed
//! tokens, overlapping networks, a cluster DNS address outside the
//! Service network, and ports already in use. Every case: exit code 2, a
//! message naming the key (and the file where it is set), and no data dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rke2_testbed::{Server, ServerOpts, unique_loopback};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

const SUBDOMAIN_MSG: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Runs `cmd` to its end (killed after a minute: a start that was not
/// refused fails the test instead of hanging it); exit code and stderr.
fn run(mut cmd: Command) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after 60 s: {cmd:?}\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&err_path).unwrap())
}

/// A temp dir with `config.yaml`; the data dir and kubeconfig paths in it
/// are never created by a refused start.
struct Case {
    dir: tempfile::TempDir,
    ip: String,
}

impl Case {
    fn new(yaml: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        Case {
            dir,
            ip: unique_loopback(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("rke2.yaml")
    }

    /// `rke2 server` on its own loopback address (as the testbed runs
    /// servers), with `extra` flags.
    fn server(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("server")
            .arg("--config")
            .arg(self.config())
            .arg("--data-dir")
            .arg(self.data())
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .args(["--bind-address", &self.ip])
            .args(extra);
        cmd
    }

    fn agent(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("agent")
            .arg("--config")
            .arg(self.config())
            .arg("--data-dir")
            .arg(self.data())
            .args(["--node-ip", &self.ip])
            .args(extra);
        cmd
    }

    /// Exit 2, every needle in stderr, none of `secret`, nothing written.
    fn assert_refused(&self, what: &str, cmd: Command, needles: &[&str], secret: Option<&str>) {
        let (code, err) = run(cmd);
        assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {n:?} not in stderr:\n{err}");
        }
        if let Some(s) = secret {
            assert!(!err.contains(s), "{what}: the secret is shown:\n{err}");
        }
        assert!(
            !self.data().exists(),
            "{what}: the data dir was created: {:?}",
            list(&self.data())
        );
        assert!(!self.kubeconfig().exists(), "{what}: kubeconfig written");
        let left: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["config.yaml"], "{what}: files were written");
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            out.extend(list(&e.path()));
        }
    }
    out
}

/// `yaml` with `node-name: <name>` appended unless it sets one (a flag
/// would override the file's value under test).
fn with_node_name(yaml: &str, name: &str) -> String {
    if yaml.contains("node-name") {
        yaml.to_string()
    } else {
        format!("{yaml}node-name: {name}\n")
    }
}

fn hash() -> String {
    "0123456789abcdef".repeat(4)
}

#[test]
fn bad_server_config_exits_2_naming_the_key_and_writes_nothing() {
    let h = hash();
    let cases: Vec<(&str, String, Vec<String>, Option<&str>)> = vec![
        (
            "node name",
            "node-name: Bad_Name\n".into(),
            vec![
                "config.yaml line 1".into(),
                "node-name".into(),
                "Bad_Name".into(),
                SUBDOMAIN_MSG.into(),
            ],
            None,
        ),
        (
            "short CA hash",
            "token: K10abc::server:hunter2-secret\n".into(),
            vec!["config.yaml line 1: invalid token".into(), "64 hex".into()],
            Some("hunter2-secret"),
        ),
        (
            "hash without '::'",
            format!("token: K10{h}server:hunter2-secret\n"),
            vec!["invalid token".into(), "missing '::'".into()],
            Some("hunter2-secret"),
        ),
        (
            "empty password",
            format!("token: \"K10{h}::server:\"\n"),
            vec!["invalid token".into(), "password must not be empty".into()],
            None,
        ),
        (
            "whitespace",
            "token: \"hunter2-secret and more\"\n".into(),
            vec!["invalid token".into(), "whitespace".into()],
            Some("hunter2-secret"),
        ),
        (
            "agent token as the server's token",
            format!("token: K10{h}::node:hunter2-secret\n"),
            vec!["invalid token".into(), "agent token".into()],
            Some("hunter2-secret"),
        ),
        (
            "server token as agent-token",
            format!("token: one\nagent-token: K10{h}::server:hunter2-secret\n"),
            vec![
                "config.yaml line 2: invalid agent-token".into(),
                "user `node`".into(),
            ],
            Some("hunter2-secret"),
        ),
        (
            "agent-token equal to token",
            "token: hunter2-secret\nagent-token: hunter2-secret\n".into(),
            vec!["invalid agent-token".into(), "must differ".into()],
            Some("hunter2-secret"),
        ),
        (
            "overlapping networks",
            "cluster-cidr: 10.42.0.0/16\nservice-cidr: 10.42.128.0/20\n".into(),
            vec![
                "config.yaml line 2: invalid value \"10.42.128.0/20\" for service-cidr".into(),
                "overlaps cluster-cidr 10.42.0.0/16".into(),
            ],
            None,
        ),
        (
            "cluster-dns outside service-cidr",
            "service-cidr: 10.96.0.0/16\ncluster-dns: 10.43.0.10\n".into(),
            vec![
                "config.yaml line 2: invalid value \"10.43.0.10\" for cluster-dns".into(),
                "not in service-cidr 10.96.0.0/16".into(),
            ],
            None,
        ),
        (
            "API and supervisor on one port",
            "supervisor-port: 6443\n".into(),
            vec!["invalid value \"6443\" for supervisor-port".into()],
            None,
        ),
        // Checked against the data dir, not the file: a new cluster gets a
        // new CA, which a hash given in advance cannot match.
        (
            "CA hash on a new cluster",
            format!("token: K10{h}::server:hunter2-secret\n"),
            vec![
                "token: it pins a cluster CA".into(),
                "`server` is not set".into(),
            ],
            Some("hunter2-secret"),
        ),
    ];
    for (what, yaml, needles, secret) in cases {
        let c = Case::new(&with_node_name(&yaml, "n1"));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        // The last case is well formed: its refusal comes from the start-up
        // check of the data dir, which must run before trust material.
        c.assert_refused(what, c.server(&[]), &needles, secret);
    }
    // A token file holding two lines: the file is named, not its content.
    let c = Case::new("");
    let tf = c.dir.path().join("token");
    std::fs::write(&tf, "hunter2-secret\nhunter3-secret\n").unwrap();
    let (code, err) = run(c.server(&["--token-file", tf.to_str().unwrap()]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "flag --token-file: invalid token (the content of {})",
            tf.display()
        )) && err.contains("a line break"),
        "{err}"
    );
    assert!(!err.contains("hunter2-secret"), "{err}");
    assert!(!c.data().exists());
}

/// The default node name is the host name; a host name that is no valid
/// Node name is refused naming the key to set. Run in a UTS namespace of
/// its own so the machine's host name stays as it is.
#[test]
fn invalid_host_name_as_default_node_name_names_the_key_to_set() {
    let c = Case::new("token: t\n");
    let server = c.server(&[]);
    let mut cmd = Command::new("unshare");
    // hostname(1) refuses an underscore; the kernel takes any bytes.
    cmd.args([
        "--uts",
        "sh",
        "-c",
        "printf Bad_Host > /proc/sys/kernel/hostname && exec \"$0\" \"$@\"",
    ])
    .arg(server.get_program())
    .args(server.get_args());
    c.assert_refused(
        "host name",
        cmd,
        &[
            "default (the host name): invalid value \"bad_host\" for node-name",
            SUBDOMAIN_MSG,
            "set node-name (flag --node-name, env RKE2_NODE_NAME",
        ],
        None,
    );
}

/// Each port the server listens on, held by someone else on the server's
/// address: refused naming the address, what wanted it and the setting,
/// before trust material or etcd data exist.
#[test]
fn ports_in_use_are_refused_before_anything_is_written() {
    for (port, extra, needles) in [
        (
            6443,
            vec![],
            vec![
                "the Kubernetes API (https-listen-port 6443)",
                "https-listen-port",
            ],
        ),
        (
            16443,
            vec!["--https-listen-port", "16443"],
            vec!["the Kubernetes API (https-listen-port 16443)"],
        ),
        (
            9345,
            vec![],
            vec!["the supervisor (supervisor-port 9345)", "supervisor-port"],
        ),
        (2379, vec![], vec!["etcd's clients (port 2379", "node-ip"]),
        (2380, vec![], vec!["etcd's peers (port 2380", "node-ip"]),
        (10250, vec![], vec!["the node API (port 10250", "node-ip"]),
    ] {
        let c = Case::new("token: t\n");
        let addr = format!("{}:{port}", c.ip);
        let _held = TcpListener::bind(&addr).unwrap();
        let mut args = vec!["--node-name", "n1"];
        args.extend(extra);
        let mut want = vec![format!("cannot listen on {addr}"), "in use".to_string()];
        want.extend(needles.iter().map(|s| s.to_string()));
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        c.assert_refused(&addr, c.server(&args), &want, None);
    }
    // node-ip not of this machine: named before etcd would retry on it.
    let c = Case::new("token: t\n");
    c.assert_refused(
        "foreign node-ip",
        c.server(&["--node-name", "n1", "--node-ip", "192.0.2.1"]),
        &[
            "cannot listen on 192.0.2.1:",
            "not an address of this machine",
        ],
        None,
    );
}

fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p > 1024 && TcpListener::bind(("127.0.0.1", p - 1)).is_ok() {
            return p;
        }
    }
}

/// Agents: the same load-time checks (node name, token, a token at all)
/// and their own ports (load balancers, node API) before anything is
/// written; nothing needs a server for these.
#[test]
fn bad_agent_config_exits_2_and_writes_nothing() {
    let url = "server: https://127.0.0.1:1\n";
    let h = hash();
    for (what, yaml, needles, secret) in [
        (
            "node name",
            format!("{url}token: t\nnode-name: -bad\n"),
            vec!["node-name", SUBDOMAIN_MSG],
            None,
        ),
        (
            "no token",
            url.to_string(),
            vec!["token is required for rke2 agent", "RKE2_TOKEN"],
            None,
        ),
        (
            "malformed token",
            format!("{url}token: K10{}::node:hunter2-secret\n", &h[..60]),
            vec!["config.yaml line 2: invalid token", "64 hex"],
            Some("hunter2-secret"),
        ),
        (
            "unknown user",
            format!("{url}token: K10{h}::admin:hunter2-secret\n"),
            vec!["invalid token", "`server` or `node`"],
            Some("hunter2-secret"),
        ),
        (
            "restricted node label",
            format!(
                "{url}token: t\nnode-label:\n  - tier=web\n  - node-role.kubernetes.io/worker=true\n"
            ),
            vec![
                "node-label",
                "node-role.kubernetes.io/worker",
                "kubelet.kubernetes.io",
            ],
            None,
        ),
        (
            "lb-server-port 1",
            format!("{url}token: t\nlb-server-port: 1\n"),
            vec!["for lb-server-port", "port below it"],
            None,
        ),
    ] {
        let c = Case::new(&with_node_name(&yaml, "a1"));
        c.assert_refused(what, c.agent(&[]), &needles, secret);
    }
    let lb = free_port_pair();
    for (port, needle) in [
        (lb, "the supervisor load balancer (lb-server-port"),
        (lb - 1, "the apiserver load balancer (lb-server-port"),
    ] {
        let c = Case::new(&format!("{url}token: t\n"));
        let addr = format!("127.0.0.1:{port}");
        let _held = TcpListener::bind(&addr).unwrap();
        c.assert_refused(
            &addr,
            c.agent(&["--node-name", "a1", "--lb-server-port", &lb.to_string()]),
            &[&format!("cannot listen on {addr}"), needle, "in use"],
            None,
        );
    }
    let c = Case::new(&format!("{url}token: t\n"));
    let addr = format!("{}:10250", c.ip);
    let _held = TcpListener::bind(&addr).unwrap();
    c.assert_refused(
        "agent node API",
        c.agent(&[
            "--node-name",
            "a1",
            "--lb-server-port",
            &free_port_pair().to_string(),
        ]),
        &[
            &format!("cannot listen on {addr}"),
            "the node API",
            "node-ip",
        ],
        None,
    );
}

/// An agent's `cluster-dns` can only be judged against the cluster's
/// `service-cidr`, which the servers tell it: an address outside is
/// refused with exit 2 before the agent writes anything (its first
/// contact with the supervisor carries the networks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cluster_dns_outside_the_clusters_service_cidr_is_refused() {
    let mut server = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: dns-secret\nservice-cidr: 10.96.0.0/16\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    server.wait_ready(Duration::from_secs(90)).await.unwrap();
    let token = std::fs::read_to_string(server.data_dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();
    let c = Case::new(&format!(
        "server: https://{}:9345\ntoken: \"{token}\"\ncluster-dns: 10.44.0.10\n",
        server.ip
    ));
    let lb = free_port_pair().to_string();
    let agent = c.agent(&["--node-name", "dns-agent", "--lb-server-port", &lb]);
    let (code, err) = tokio::task::spawn_blocking(move || run(agent))
        .await
        .unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "invalid value \"10.44.0.10\" for cluster-dns: not in service-cidr 10.96.0.0/16"
        ),
        "{err}"
    );
    assert!(
        !c.data().exists(),
        "agent data dir created: {:?}",
        list(&c.data())
    );
}
