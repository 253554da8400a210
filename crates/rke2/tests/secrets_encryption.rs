//! Secrets encryption at rest on a three-server cluster (loopback
//! addresses), checked by reading etcd directly with etcdctl and the
//! server's etcd client certificate:
//! - a Secret written through the API is stored with
//!   `k8s:enc:aescbc:v1:aescbckey:` (a ConfigMap stays plaintext), reads
//!   the same through every server, and every server holds the same
//!   `server/cred/encryption-config.json` (0600); `secrets-encrypt
//!   status` prints k3s's report;
//! - `secrets-encrypt` with a wrong token is refused (401) and changes
//!   nothing;
//! - `rotate-keys` (sent to the second server): while it runs, Secrets
//!   are read and written through all three servers without an error;
//!   afterwards every Secret in etcd carries the new key's name, the old
//!   key is gone from the status and from every server's file;
//! - a server restarted after the rotation starts and reads Secrets;
//! - `disable` + `reencrypt` leaves plaintext in etcd, still readable;
//! - `enable` + `reencrypt` encrypts again; k3s's step by step rotation
//!   (`prepare`, `rotate`, `reencrypt`) leaves every Secret under a third
//!   key and only that key listed;
//! - a malformed encryption configuration (wrong key length, bad base64,
//!   unknown provider) refuses the start naming the file and the field,
//!   with a non-zero exit code and the file left as it was.
//!
//! Needs root and etcd (scripts/install.sh).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(150);
const ROTATION: Duration = Duration::from_secs(400);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn encrypt_cmd(s: &Server, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("secrets-encrypt")
        .args(args)
        .arg("--server")
        .arg(format!("https://{}:9345", s.ip))
        .arg("--data-dir")
        .arg(&s.data_dir)
        .output()
        .unwrap()
}

fn status(s: &Server) -> Value {
    let o = encrypt_cmd(s, &["status", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// The raw value of every Secret in etcd, by key.
fn raw_secrets(s: &Server) -> BTreeMap<String, Vec<u8>> {
    let o = rke2_testbed::etcdctl(
        &s.data_dir,
        &s.ip,
        &["get", "--prefix", "/registry/secrets/", "-w", "json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                String::from_utf8(b64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap(),
                b64.decode(kv["value"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn raw(s: &Server, key: &str) -> Vec<u8> {
    raw_secrets(s)
        .remove(key)
        .unwrap_or_else(|| panic!("{key} not in etcd"))
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"password": value},
    }))
    .unwrap()
}

async fn read(c: &kube::Client, name: &str) -> Result<String, kube::Error> {
    let s = Api::<Secret>::namespaced(c.clone(), "default")
        .get(name)
        .await?;
    let data = s.data.unwrap_or_default();
    Ok(String::from_utf8_lossy(
        &data
            .get("password")
            .cloned()
            .unwrap_or(ByteString(vec![]))
            .0,
    )
    .into())
}

fn config_file(s: &Server) -> std::path::PathBuf {
    s.data_dir.join("server/cred/encryption-config.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_encrypted_rotated_disabled_across_three_servers() {
    let mut s1 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: enc-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let c1 = s1.wait_ready(READY).await.unwrap();
    let joiner = format!("server: https://{}:9345\ntoken: enc-secret\n", s1.ip);
    let mut s2 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some(joiner.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut s3 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some(joiner.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let c2 = s2.wait_ready(READY).await.unwrap();
    let mut c3 = s3.wait_ready(READY).await.unwrap();

    // Encrypted at rest with RKE2's first key; ConfigMaps untouched.
    Api::<Secret>::namespaced(c1.clone(), "default")
        .create(&PostParams::default(), &secret("enc-a", "topsecret-a"))
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "plain"}, "data": {"k": "visible-value"}}),
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(c1.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let stored = raw(&s1, "/registry/secrets/default/enc-a");
    assert!(
        stored.starts_with(b"k8s:enc:aescbc:v1:aescbckey:"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    assert!(!String::from_utf8_lossy(&stored).contains("enc-a"));
    let o = rke2_testbed::etcdctl(
        &s1.data_dir,
        &s1.ip,
        &[
            "get",
            "/registry/configmaps/default/plain",
            "--print-value-only",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("visible-value"));
    for c in [&c1, &c2, &c3] {
        assert_eq!(read(c, "enc-a").await.unwrap(), "topsecret-a");
    }
    let file1 = std::fs::read(config_file(&s1)).unwrap();
    for s in [&s1, &s2, &s3] {
        let meta = std::fs::metadata(config_file(s)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(config_file(s)).unwrap(), file1);
    }
    let v: Value = serde_json::from_slice(&file1).unwrap();
    assert_eq!(v["kind"], "EncryptionConfiguration");
    assert_eq!(v["resources"][0]["resources"], json!(["secrets"]));

    // Every server reports the configuration it runs. The check covers
    // the Nodes labelled as servers, so it waits for all three labels: a
    // joiner labelled after a passing check has not annotated yet.
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(c1.clone());
    eventually(READY, "all server hashes match", || async {
        let servers = nodes
            .list(
                &kube::api::ListParams::default()
                    .labels("node-role.kubernetes.io/control-plane=true"),
            )
            .await
            .ok()?;
        (servers.items.len() == 3 && status(&s1)["hashMatch"] == true).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", status(&s1)));
    let o = encrypt_cmd(&s1, &["status"]);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    for line in [
        "Encryption Status: Enabled",
        "Current Rotation Stage: start",
        "Server Encryption Hashes: All hashes match",
        "AES-CBC",
        "aescbckey",
    ] {
        assert!(shown.contains(line), "{line:?} missing:\n{shown}");
    }

    // A wrong token is refused and changes nothing.
    for args in [
        &["status", "--token", "wrong"][..],
        &["rotate-keys", "--token", "wrong"],
    ] {
        let o = encrypt_cmd(&s2, args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("401"), "{}", text(&o));
    }
    assert_eq!(std::fs::read(config_file(&s2)).unwrap(), file1);
    assert_eq!(status(&s1)["stage"], "start");

    // A step out of order is refused with the stage named.
    let o = encrypt_cmd(&s1, &["rotate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("cannot rotate at stage start"),
        "{}",
        text(&o)
    );

    // rotate-keys, with reads and writes through every server throughout.
    let o = encrypt_cmd(&s2, &["rotate-keys"]);
    assert!(o.status.success(), "{}", text(&o));
    let clients = [c1.clone(), c2.clone(), c3.clone()];
    let mut written = vec!["enc-a".to_string()];
    let mut i = 0usize;
    let deadline = std::time::Instant::now() + ROTATION;
    let mut stages = Vec::new();
    loop {
        let st = status(&s1);
        let stage = st["stage"].as_str().unwrap().to_string();
        if stages.last() != Some(&stage) {
            stages.push(stage.clone());
        }
        if stage == "reencrypt_finished" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation stuck at {st}\n{}",
            s2.log_text()
        );
        let c = &clients[i % 3];
        let name = format!("during-{i}");
        Api::<Secret>::namespaced(c.clone(), "default")
            .create(&PostParams::default(), &secret(&name, &format!("v{i}")))
            .await
            .unwrap_or_else(|e| panic!("write {name} through server {}: {e}", i % 3 + 1));
        written.push(name);
        for (j, c) in clients.iter().enumerate() {
            for n in [&written[0], written.last().unwrap()] {
                read(c, n).await.unwrap_or_else(|e| {
                    panic!("read {n} through server {} at {stage}: {e}", j + 1)
                });
            }
        }
        i += 1;
    }
    eprintln!(
        "rotate-keys: stages seen {stages:?}, {i} writes and {} reads during it",
        i * 6
    );
    let st = status(&s1);
    let keys = st["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "old key not dropped: {st}");
    let new_name = keys[0]["name"].as_str().unwrap().to_string();
    assert!(new_name.starts_with("aescbckey-"), "{st}");
    let prefix = format!("k8s:enc:aescbc:v1:{new_name}:");
    let all = raw_secrets(&s1);
    assert!(all.len() >= written.len());
    for (k, v) in &all {
        assert!(
            v.starts_with(prefix.as_bytes()),
            "{k} not under the new key: {}",
            String::from_utf8_lossy(&v[..v.len().min(60)])
        );
    }
    for c in &clients {
        for n in &written {
            read(c, n).await.unwrap_or_else(|e| panic!("read {n}: {e}"));
        }
        assert_eq!(read(c, "enc-a").await.unwrap(), "topsecret-a");
    }
    eventually(
        READY,
        "every server's file has only the new key",
        || async {
            [&s1, &s2, &s3]
                .iter()
                .all(|s| {
                    let t = std::fs::read_to_string(config_file(s)).unwrap_or_default();
                    t.contains(&new_name) && !t.contains("\"aescbckey\"")
                })
                .then_some(())
        },
    )
    .await
    .unwrap();

    // A server restarted after the rotation starts and reads Secrets.
    s3.stop_with(nix::sys::signal::Signal::SIGTERM, READY)
        .unwrap();
    s3.spawn().unwrap();
    c3 = s3
        .wait_ready(READY)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s3.log_text()));
    assert_eq!(read(&c3, "enc-a").await.unwrap(), "topsecret-a");

    // disable + reencrypt: plaintext in etcd, still readable.
    eventually(READY, "hashes match after the restart", || async {
        (status(&s1)["hashMatch"] == true).then_some(())
    })
    .await
    .unwrap();
    let o = encrypt_cmd(&s1, &["disable"]);
    assert!(o.status.success(), "{}", text(&o));
    eventually(READY, "hashes match after disable", || async {
        (status(&s1)["hashMatch"] == true).then_some(())
    })
    .await
    .unwrap();
    let st = status(&s1);
    assert_eq!(st["enable"], false, "{st}");
    let o = encrypt_cmd(&s1, &["status"]);
    assert!(
        text(&o).contains("Encryption Status: Disabled"),
        "{}",
        text(&o)
    );
    let o = encrypt_cmd(&s1, &["reencrypt"]);
    assert!(o.status.success(), "{}", text(&o));
    eventually(ROTATION, "reencrypt_finished after disable", || async {
        (status(&s1)["stage"] == "reencrypt_finished").then_some(())
    })
    .await
    .unwrap();
    let stored = raw(&s1, "/registry/secrets/default/enc-a");
    assert!(!stored.starts_with(b"k8s:enc:"), "still encrypted");
    assert!(String::from_utf8_lossy(&stored).contains("enc-a"));
    for c in [&c1, &c2, &c3] {
        assert_eq!(read(c, "enc-a").await.unwrap(), "topsecret-a");
    }

    // enable + reencrypt, then k3s's step by step rotation: prepare,
    // rotate, reencrypt (each accepted once every server runs the last).
    let step = |args: &'static [&'static str]| {
        let s1 = &s1;
        async move {
            eventually(READY, "hashes match", || async {
                (status(s1)["hashMatch"] == true).then_some(())
            })
            .await
            .unwrap();
            let o = encrypt_cmd(s1, args);
            assert!(o.status.success(), "{args:?}: {}", text(&o));
            if args[0] == "reencrypt" {
                eventually(ROTATION, "reencrypt_finished", || async {
                    (status(s1)["stage"] == "reencrypt_finished").then_some(())
                })
                .await
                .unwrap();
            }
        }
    };
    step(&["enable"]).await;
    step(&["reencrypt"]).await;
    let stored = raw(&s1, "/registry/secrets/default/enc-a");
    assert!(
        stored.starts_with(prefix.as_bytes()),
        "not re-encrypted after enable"
    );
    step(&["prepare"]).await;
    assert_eq!(status(&s1)["keys"].as_array().unwrap().len(), 2);
    step(&["rotate"]).await;
    step(&["reencrypt"]).await;
    let st = status(&s1);
    let keys = st["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{st}");
    let third = keys[0]["name"].as_str().unwrap();
    assert_ne!(third, new_name);
    let prefix = format!("k8s:enc:aescbc:v1:{third}:");
    for (k, v) in raw_secrets(&s1) {
        assert!(v.starts_with(prefix.as_bytes()), "{k} not under {third}");
    }
    for c in [&c1, &c2, &c3] {
        assert_eq!(read(c, "enc-a").await.unwrap(), "topsecret-a");
    }

    // Bad input at start: named file and field, non-zero exit, file kept.
    s3.stop_with(nix::sys::signal::Signal::SIGTERM, READY)
        .unwrap();
    let good = std::fs::read(config_file(&s3)).unwrap();
    use base64::Engine;
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 20]);
    let bad = |providers: Value| {
        serde_json::to_vec(&json!({
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": providers}],
        }))
        .unwrap()
    };
    for (content, want) in [
        (
            bad(json!([{"aescbc": {"keys": [{"name": "k", "secret": short}]}}])),
            "resources[0].providers[0].aescbc.keys[0].secret: the key is 20 bytes",
        ),
        (
            bad(json!([{"aescbc": {"keys": [{"name": "k", "secret": "not*base64"}]}}])),
            "resources[0].providers[0].aescbc.keys[0].secret: not valid base64",
        ),
        (
            bad(json!([{"kms": {"name": "x"}}, {"identity": {}}])),
            "resources[0].providers[0]: unknown provider \"kms\"",
        ),
    ] {
        std::fs::write(config_file(&s3), &content).unwrap();
        s3.spawn().unwrap();
        let exit = s3.wait_exit(READY).unwrap();
        assert_eq!(exit.code(), Some(2), "started with a bad configuration");
        let log = s3.log_text();
        assert!(log.contains(want), "{want:?} not in:\n{log}");
        assert!(
            log.contains(&config_file(&s3).display().to_string()),
            "file not named:\n{log}"
        );
        assert_eq!(std::fs::read(config_file(&s3)).unwrap(), content);
    }
    std::fs::write(config_file(&s3), &good).unwrap();
    assert_eq!(status(&s1)["stage"], "reencrypt_finished");
    drop((s1, s2, s3));
}

/// `secrets-encryption-provider: secretbox` stores Secrets with NaCl's
/// secretbox under RKE2's key name; `secrets-encryption: false` stores
/// them as they are and `status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_choice_and_encryption_off() {
    for (config, want) in [
        (
            "secrets-encryption-provider: secretbox\n",
            Some("k8s:enc:secretbox:v1:secretboxkey:"),
        ),
        ("secrets-encryption: false\n", None),
    ] {
        let mut s = Server::start(
            bin(),
            ServerOpts {
                config_yaml: Some(config.into()),
                ..Default::default()
            },
        )
        .unwrap();
        let c = s
            .wait_ready(READY)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
        Api::<Secret>::namespaced(c.clone(), "default")
            .create(&PostParams::default(), &secret("p", "pv"))
            .await
            .unwrap();
        assert_eq!(read(&c, "p").await.unwrap(), "pv");
        let stored = raw(&s, "/registry/secrets/default/p");
        match want {
            Some(prefix) => {
                assert!(
                    stored.starts_with(prefix.as_bytes()),
                    "{}",
                    String::from_utf8_lossy(&stored[..stored.len().min(60)])
                );
                let o = encrypt_cmd(&s, &["status"]);
                assert!(text(&o).contains("XSalsa20-POLY1305"), "{}", text(&o));
            }
            None => {
                assert!(!stored.starts_with(b"k8s:enc:"));
                assert!(!config_file(&s).exists());
                let o = encrypt_cmd(&s, &["status"]);
                assert!(o.status.success(), "{}", text(&o));
                assert!(
                    text(&o).contains("Encryption Status: Disabled, no configuration file found"),
                    "{}",
                    text(&o)
                );
            }
        }
        drop(s);
    }
}
