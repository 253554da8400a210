//! Agents on loopback addresses: node passwords, `with-node-id`, and the
//! refusals of a wrong token or a token from another cluster.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::Api;
use rke2_testbed::{Server, ServerOpts, eventually, unique_loopback};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

struct Agent {
    dir: tempfile::TempDir,
    child: Child,
}

impl Agent {
    fn start(server: &Server, token: &str, name: &str, lb_port: u16, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("server: https://{}:9345\ntoken: \"{token}\"\n", server.ip),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin())
            .arg("agent")
            .arg("--config")
            .arg(dir.path().join("config.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--node-name",
                name,
                "--node-ip",
                &unique_loopback(),
                "--lb-server-port",
                &lb_port.to_string(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { dir, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < timeout,
                "agent still running; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Bind :0 on 127.0.0.1, where the agent's balancers listen, and give
    // the port back; the next one down must be free too.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_with_node_passwords_and_bad_tokens_are_refused() {
    let mut server = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: agent-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let client = server.wait_ready(Duration::from_secs(90)).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let token = std::fs::read_to_string(server.data_dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();

    // A registers "worker"; its node password is recorded.
    let a = Agent::start(&server, &token, "worker", free_port(), &[]);
    eventually(Duration::from_secs(60), "worker Ready", || {
        ready(&nodes, "worker")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    assert!(
        secrets
            .get_opt("worker.node-password.rke2")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        std::fs::read_to_string(a.dir.path().join("data/etc/rancher/node/password"))
            .unwrap()
            .trim()
            .len(),
        32
    );

    // B claims the same name with another password: 403 naming with-node-id.
    let mut b = Agent::start(&server, &token, "worker", free_port(), &[]);
    assert!(!b.wait_exit(Duration::from_secs(60)).success());
    assert!(b.log().contains("with-node-id"), "{}", b.log());

    // C, the same name with with-node-id: its own node `worker-<8 hex>`.
    let c = Agent::start(&server, &token, "worker", free_port(), &["--with-node-id"]);
    let id = eventually(Duration::from_secs(60), "node id written", || async {
        std::fs::read_to_string(c.dir.path().join("data/agent/node-id"))
            .ok()
            .map(|s| s.trim().to_string())
    })
    .await
    .unwrap();
    assert_eq!(id.len(), 8);
    let with_id = format!("worker-{id}");
    eventually(Duration::from_secs(60), "worker-<id> Ready", || {
        ready(&nodes, &with_id)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));

    // A node may act only as itself: worker's credentials cannot touch C's node.
    let kc = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: d\nclusters: [{{name: d, cluster: {{server: \"https://{}:6443\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: d, user: {{client-certificate: \"{}\", client-key: \"{}\"}}}}]\ncontexts: [{{name: d, context: {{cluster: d, user: d}}}}]\n",
        server.ip,
        a.dir.path().join("data/agent/server-ca.crt").display(),
        a.dir.path().join("data/agent/client-kubelet.crt").display(),
        a.dir.path().join("data/agent/client-kubelet.key").display(),
    );
    let kc_path = a.dir.path().join("node.yaml");
    std::fs::write(&kc_path, kc).unwrap();
    let as_worker = rke2_testbed::client_from_kubeconfig(&kc_path)
        .await
        .unwrap();
    let worker_nodes: Api<Node> = Api::all(as_worker);
    assert!(
        worker_nodes.get("worker").await.is_ok(),
        "a node may read nodes"
    );
    let patch = serde_json::json!({"metadata": {"labels": {"hijacked": "yes"}}});
    match worker_nodes
        .patch(
            &format!("worker-{id}"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("node patched another node: {other:?}"),
    }
    assert!(
        worker_nodes
            .patch(
                "worker",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch)
            )
            .await
            .is_ok()
    );

    // Wrong password, and a token of another cluster: refused, no node, no files.
    let hash = token
        .strip_prefix("K10")
        .unwrap()
        .split("::")
        .next()
        .unwrap();
    for (what, tok, needle) in [
        (
            "wrong-password",
            format!("K10{hash}::server:wrong"),
            "token password",
        ),
        (
            "other-cluster",
            format!("K10{}::server:agent-secret", "ab".repeat(32)),
            "does not match the server's CA",
        ),
    ] {
        let mut bad = Agent::start(&server, &tok, &format!("bad-{what}"), free_port(), &[]);
        assert!(!bad.wait_exit(Duration::from_secs(60)).success(), "{what}");
        assert!(bad.log().contains(needle), "{what}: {}", bad.log());
        assert!(
            !bad.dir.path().join("data/agent").exists(),
            "{what}: wrote agent files"
        );
        assert!(
            nodes
                .get_opt(&format!("bad-{what}"))
                .await
                .unwrap()
                .is_none(),
            "{what}: node written"
        );
    }
    drop(server.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30)));
}
