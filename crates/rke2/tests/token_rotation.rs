//! `rke2 token rotate` on a three-server cluster (loopback addresses):
//! a wrong current token, a malformed new token and a new token for
//! another CA are refused with nothing changed; a rotation re-encrypts the
//! bootstrap data (one record in etcd, under the new token) and rewrites
//! `server/token`; a server restarted with the old token is refused with
//! RKE2's message, and every server restarted with the new token comes
//! back, the cluster serving reads and writes afterwards. On the same bed
//! `rke2 status` (json and text) reports three healthy voters, one leader,
//! every apiserver and supervisor ready and exit code 0; with one server
//! stopped it names that member and exits 1. It also shows Secrets
//! encryption as `secrets-encrypt status` does (enabled, stage, current
//! key), the CA files, and the cluster's storage format, failing when that
//! is newer than the binary's.
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
async fn rotate_then_restart_every_server_and_status() {
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

    // `rke2 status` on the first server: all well.
    let status = |s: &Server, json: bool| {
        let mut c = Command::new(bin());
        c.arg("status")
            .arg("--config")
            .arg(s.dir.path().join("config.yaml"))
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--bind-address", &s.ip, "--node-name", &s.node_name]);
        if json {
            c.args(["-o", "json"]);
        }
        c.output().unwrap()
    };
    let report = eventually(READY, "rke2 status healthy", || async {
        let o = status(&s1, true);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (o.status.success() && v["healthyVoters"] == 3).then_some(v)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", text(&status(&s1, true))));
    assert_eq!(report["voters"], 3, "{report}");
    assert_eq!(report["failuresTolerated"], 1, "{report}");
    let members = report["etcdMembers"].as_array().unwrap();
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{report}"
    );
    assert!(
        members
            .iter()
            .all(|m| m["raftIndex"].as_u64().is_some_and(|i| i > 0)),
        "{report}"
    );
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3, "{report}");
    let checks = report["checks"].as_array().unwrap();
    for kind in ["apiserver ", "supervisor "] {
        let ok = checks
            .iter()
            .filter(|c| c["what"].as_str().unwrap().starts_with(kind) && c["health"] == "ok")
            .count();
        assert_eq!(ok, 3, "{kind}: {report}");
    }
    // Secrets encryption (on by default, as RKE2) as `secrets-encrypt
    // status` reports it; the storage format this build writes; the CAs.
    let enc = &report["secretsEncryption"];
    assert_eq!(enc["enable"], true, "{report}");
    assert_eq!(enc["stage"], "start", "{report}");
    assert_eq!(enc["hashMatch"], true, "{report}");
    let active = enc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["active"] == true)
        .unwrap_or_else(|| panic!("no active key: {report}"));
    assert_eq!(active["type"], "AES-CBC", "{report}");
    let key_name = active["name"].as_str().unwrap().to_string();
    assert!(key_name.starts_with("aescbckey"), "{report}");
    let storage = &report["storageFormat"];
    assert_eq!(storage["format"], storage["binaryFormat"], "{report}");
    assert!(storage["format"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        storage["writtenBy"].as_str().unwrap().starts_with('v'),
        "{report}"
    );
    let cas = report["caBundles"].as_array().unwrap();
    assert!(
        cas.iter()
            .any(|b| b["file"] == "server/tls/server-ca.crt" && b["certificates"] == 1),
        "{report}"
    );
    let check_of = |v: &serde_json::Value, what: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["what"] == what)
            .unwrap_or_else(|| panic!("no {what} check: {v}"))
            .clone()
    };
    assert_eq!(check_of(&report, "storage format")["health"], "ok");
    assert_eq!(check_of(&report, "secrets encryption")["health"], "ok");
    let plain = status(&s1, false);
    let shown = String::from_utf8_lossy(&plain.stdout).to_string();
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(!shown.contains('\x1b'), "colour codes when piped:\n{shown}");
    assert!(
        shown.contains("3 voters, 3 healthy, 1 more may fail"),
        "{shown}"
    );
    assert!(shown.contains("Encryption Status: Enabled"), "{shown}");
    assert!(shown.contains("Current Rotation Stage: start"), "{shown}");
    assert!(shown.contains(&key_name), "{shown}");
    assert!(shown.contains("Storage format: "), "{shown}");
    assert!(shown.contains("server/tls/server-ca.crt"), "{shown}");

    // A storage format newer than this binary's (as a newer release would
    // leave it) is named as a problem, with exit code 1.
    let newer = storage["binaryFormat"].as_u64().unwrap() + 1;
    let put = rke2_testbed::etcdctl(
        &s1.data_dir,
        &s1.ip,
        &[
            "put",
            "/rke2/storage-format",
            &format!(r#"{{"format":{newer},"writtenBy":"v99.0.0"}}"#),
        ],
    );
    assert!(put.status.success(), "{put:?}");
    let o = status(&s1, true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["storageFormat"]["format"], newer, "{v}");
    let c = check_of(&v, "storage format");
    assert_eq!(c["health"], "fail", "{v}");
    assert!(
        c["detail"].as_str().unwrap().contains("written by v99.0.0"),
        "{v}"
    );
    let put = rke2_testbed::etcdctl(
        &s1.data_dir,
        &s1.ip,
        &[
            "put",
            "/rke2/storage-format",
            &json!({"format": storage["format"], "writtenBy": storage["writtenBy"]}).to_string(),
        ],
    );
    assert!(put.status.success(), "{put:?}");

    // One server down: named, and the exit code says so.
    s3.stop_with(nix::sys::signal::Signal::SIGTERM, READY)
        .unwrap();
    let o = status(&s1, true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["healthyVoters"], 2, "{v}");
    assert_eq!(v["failuresTolerated"], 0, "{v}");
    assert_eq!(v["healthy"], false, "{v}");
    let down = v["etcdMembers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["error"].is_string())
        .unwrap_or_else(|| panic!("no failed member: {v}"));
    assert!(down["clientUrl"].as_str().unwrap().contains(&s3.ip), "{v}");
    let plain = status(&s1, false);
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("FAIL"),
        "{}",
        text(&plain)
    );
}
