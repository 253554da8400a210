//! `rke2 token rotate` on a three-server cluster (loopback addresses):
//! a wrong current token, a malformed new token and a new token for
//! another CA are refused with nothing changed; a rotation re-encrypts the
//! bootstrap data (one record in etcd, under the new token) and rewrites
//! `server/token`; a server restarted with the old token is refused with
//! RKE2's message, and every server restarted with the new token comes
//! back, the cluster serving reads and writes afterwards.
//!
//! Needs root and etcd (scripts/install.sh).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually};
use serde_json::json;

const READY: Duration = Duration::from_secs(150);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn rotate(s: &Server, old: &str, new: &str) -> Output {
    Command::new(bin())
        .args(["token", "rotate", "--token", old, "--new-token", new])
        .arg("--server")
        .arg(format!("https://{}:9345", s.ip))
        .arg("--data-dir")
        .arg(&s.data_dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn bootstrap_keys(s: &Server) -> Vec<String> {
    let out = rke2_testbed::etcdctl(
        &s.data_dir,
        &s.ip,
        &["get", "--prefix", "/bootstrap/", "--keys-only"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn token_file(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir.join("server/token")).unwrap()
}

async fn restart(s: &mut Server, config: String) -> kube::Client {
    s.stop_with(nix::sys::signal::Signal::SIGTERM, READY)
        .unwrap();
    s.opts.config_yaml = Some(config);
    s.spawn().unwrap();
    s.wait_ready(READY)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_then_restart_every_server() {
    let mut s1 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: old-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    s1.wait_ready(READY).await.unwrap();
    let joiner = |token: &str, first: &Server| {
        format!("server: https://{}:9345\ntoken: {token}\n", first.ip)
    };
    let mut s2 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some(joiner("old-secret", &s1)),
            ..Default::default()
        },
    )
    .unwrap();
    let mut s3 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some(joiner("old-secret", &s1)),
            ..Default::default()
        },
    )
    .unwrap();
    s2.wait_ready(READY).await.unwrap();
    s3.wait_ready(READY).await.unwrap();
    let full_old = token_file(&s1).trim().to_string();
    let keys_before = bootstrap_keys(&s1);
    assert_eq!(keys_before.len(), 1, "{keys_before:?}");

    // Bad input: each refused, nothing changed.
    let o = rotate(&s1, "wrong-secret", "new-secret");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("401 Unauthorized"), "{}", text(&o));
    let o = rotate(&s1, &full_old, "has a space");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the new token (--new-token)"),
        "{}",
        text(&o)
    );
    let foreign = format!("K10{}::server:new-secret", "0".repeat(64));
    let o = rotate(&s1, &full_old, &foreign);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the new token's CA hash does not match this cluster's server CA"),
        "{}",
        text(&o)
    );
    let o = rotate(&s1, &full_old, "old-secret");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the new token is the current token"),
        "{}",
        text(&o)
    );
    assert_eq!(bootstrap_keys(&s1), keys_before);
    assert_eq!(token_file(&s1).trim(), full_old);

    // The rotation, through the second server's supervisor.
    let o = rotate(&s2, &full_old, "new-secret");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Token rotated, restart rke2 nodes with new token"),
        "{}",
        text(&o)
    );
    let keys_after = bootstrap_keys(&s1);
    assert_eq!(keys_after.len(), 1, "{keys_after:?}");
    assert_ne!(keys_after, keys_before, "bootstrap data not re-keyed");
    let s2_token = token_file(&s2);
    assert!(
        s2_token.trim().ends_with("::server:new-secret"),
        "{s2_token}"
    );
    // The old token no longer authenticates at the server that rotated.
    let o = rotate(&s2, &full_old, "third-secret");
    assert!(text(&o).contains("401 Unauthorized"), "{}", text(&o));

    // A restart with the old token is refused with RKE2's message.
    s3.stop_with(nix::sys::signal::Signal::SIGTERM, READY)
        .unwrap();
    s3.spawn().unwrap();
    let status = s3.wait_exit(READY).unwrap();
    assert!(!status.success());
    assert!(
        s3.log_text()
            .contains("bootstrap data already found and encrypted with a different token"),
        "{}",
        s3.log_text()
    );

    // Every server restarted with the new token comes back.
    s3.opts.config_yaml = Some(joiner("new-secret", &s1));
    s3.spawn().unwrap();
    let c3 = s3
        .wait_ready(READY)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s3.log_text()));
    let c1 = restart(&mut s1, "token: new-secret\n".into()).await;
    let _c2 = restart(&mut s2, joiner("new-secret", &s1)).await;
    assert!(token_file(&s1).trim().ends_with("::server:new-secret"));
    assert!(token_file(&s3).trim().ends_with("::server:new-secret"));
    let nodes: Api<Node> = Api::all(c1.clone());
    eventually(READY, "three Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 3).then_some(())
    })
    .await
    .unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "after-rotation"}, "data": {"k": "v"}}))
            .unwrap();
    Api::<ConfigMap>::namespaced(c3, "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let got = Api::<ConfigMap>::namespaced(c1, "default")
        .get("after-rotation")
        .await
        .unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");
}
