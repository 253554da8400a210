//! Upgrades: three servers of the previous release (dist/previous-release,
//! built by scripts/build-previous-release.sh, which scripts/test.sh runs
//! first) are upgraded one at a time to the current build, as an operator
//! upgrades RKE2 servers: stop one, replace the binary, start it, wait for
//! it to be Ready and a voting etcd member again, go on. A writer creates
//! ConfigMaps through every server the whole time; every write the API
//! acknowledged must be readable through every server at the end, and
//! writes must keep succeeding while each server is down.
//!
//! Then the storage format record: the current servers record theirs in
//! etcd (`/rke2/storage-format`); a record of a newer format (as a newer
//! release would leave it) makes a server refuse to start, naming both
//! formats and the release that wrote it, while the others keep serving.
//!
//! Needs root-free loopback servers, etcd and etcdctl (scripts/install.sh)
//! and the previous release's binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// `<target>/previous-release/rke2`, next to the `debug` directory that
/// holds the current binary.
fn previous_release() -> PathBuf {
    let target = bin()
        .parent()
        .and_then(Path::parent)
        .expect("the rke2 binary sits in <target>/debug");
    let p = target.join("previous-release/rke2");
    assert!(
        p.exists(),
        "{} is missing: build the previous release with scripts/build-previous-release.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

const LONG: Duration = Duration::from_secs(240);

/// What the writer saw: names the API acknowledged, with when.
#[derive(Default)]
struct Writes {
    acked: Vec<(String, Instant)>,
    failed: usize,
}

fn voters(s: &Server) -> usize {
    let o = rke2_testbed::etcdctl(&s.data_dir, &s.ip, &["member", "list"]);
    rke2_testbed::started_voters(&o.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_upgraded_one_at_a_time_lose_no_acknowledged_write() {
    let previous = previous_release();
    let v = std::process::Command::new(&previous)
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success(), "{} --version", previous.display());

    let mut s1 = Server::start(
        &previous,
        ServerOpts {
            config_yaml: Some("token: upgrade-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    s1.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s1.log_text()));
    let joiner = |first: &Server| ServerOpts {
        config_yaml: Some(format!(
            "server: https://{}:9345\ntoken: upgrade-secret\n",
            first.ip
        )),
        ..Default::default()
    };
    let mut s2 = Server::start(&previous, joiner(&s1)).unwrap();
    s2.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s2.log_text()));
    let mut s3 = Server::start(&previous, joiner(&s1)).unwrap();
    s3.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s3.log_text()));
    eventually(LONG, "three etcd voters", || async {
        (voters(&s1) == 3).then_some(())
    })
    .await
    .unwrap();

    // One client per server, kept across its restarts (each request dials
    // again when the connection is gone).
    let mut clients = Vec::new();
    for s in [&s1, &s2, &s3] {
        clients.push(s.client().await.unwrap());
    }
    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let writes = writes.clone();
        let stop = stop.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let c = clients[(n % 3) as usize].clone();
                let name = format!("w-{n}");
                n += 1;
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name}, "data": {"n": n.to_string()}
                }))
                .unwrap();
                let api = Api::<ConfigMap>::namespaced(c, "default");
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    api.create(&PostParams::default(), &cm),
                )
                .await;
                {
                    let mut w = writes.lock().unwrap();
                    match r {
                        Ok(Ok(_)) => w.acked.push((name, Instant::now())),
                        _ => w.failed += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut servers = [s1, s2, s3];
    for (i, s) in servers.iter_mut().enumerate() {
        let down_at = Instant::now();
        let st = s
            .stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
            .unwrap();
        assert!(
            st.success(),
            "server {i} on the previous release stopped with {st}"
        );
        s.set_binary(bin());
        s.spawn().unwrap();
        s.wait_ready(LONG)
            .await
            .unwrap_or_else(|e| panic!("upgrading server {i}: {e}\n{}", s.log_text()));
        let s = &*s;
        eventually(LONG, "three started etcd voters", || async {
            (voters(s) == 3).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("after upgrading server {i}: {e}"));
        // Writes went on while this server was down and starting.
        let during = writes
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|(_, at)| *at > down_at)
            .count();
        assert!(
            during > 0,
            "no write succeeded while server {i} was upgraded"
        );
    }
    // A few more writes with every server upgraded.
    let settled = writes.lock().unwrap().acked.len();
    eventually(LONG, "writes after the upgrade", || async {
        (writes.lock().unwrap().acked.len() >= settled + 9).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    writer.await.unwrap();

    let (acked, failed) = {
        let w = writes.lock().unwrap();
        (
            w.acked
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<BTreeSet<_>>(),
            w.failed,
        )
    };
    eprintln!(
        "{} writes acknowledged, {failed} refused or timed out",
        acked.len()
    );
    for (i, s) in servers.iter().enumerate() {
        let c = s.client().await.unwrap();
        let got: BTreeSet<String> = Api::<ConfigMap>::namespaced(c, "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|cm| cm.metadata.name)
            .collect();
        let lost: Vec<_> = acked.difference(&got).collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes missing through server {i}: {lost:?}"
        );
    }

    // The current release recorded its storage format.
    let o = rke2_testbed::etcdctl(
        &servers[0].data_dir,
        &servers[0].ip,
        &["get", "--print-value-only", "/rke2/storage-format"],
    );
    let record: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(record["format"], 2, "{record}");
    assert!(
        record["writtenBy"]
            .as_str()
            .is_some_and(|v| v.contains("rke2")),
        "{record}"
    );

    // A newer release's record: a restarting server refuses, the others
    // serve on.
    let newer = r#"{"format":99,"writtenBy":"v9.9.9+rke2r1 (rke2-rs 9.9.9)"}"#;
    let o = rke2_testbed::etcdctl(
        &servers[0].data_dir,
        &servers[0].ip,
        &["put", "/rke2/storage-format", newer],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = &mut servers[2];
    s.stop_with(nix::sys::signal::Signal::SIGTERM, LONG)
        .unwrap();
    let log_before = s.log_text().len();
    s.spawn().unwrap();
    let st = s.wait_exit(LONG).unwrap();
    assert!(!st.success(), "a server started on a newer storage format");
    let log = s.log_text();
    let tail = &log[log_before.min(log.len())..];
    assert!(
        tail.contains("storage format 99")
            && tail.contains("v9.9.9+rke2r1")
            && tail.contains("reads formats up to 2"),
        "{tail}"
    );
    let c = servers[0].client().await.unwrap();
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "after-refusal"}, "data": {"k": "v"}
    }))
    .unwrap();
    eventually(LONG, "a write through a server still running", || {
        let api = Api::<ConfigMap>::namespaced(c.clone(), "default");
        let cm = cm.clone();
        async move { api.create(&PostParams::default(), &cm).await.ok() }
    })
    .await
    .unwrap();
    // The record put back as this release wrote it: the server starts.
    let o = rke2_testbed::etcdctl(
        &servers[0].data_dir,
        &servers[0].ip,
        &["put", "/rke2/storage-format", &record.to_string()],
    );
    assert!(o.status.success());
    let s = &mut servers[2];
    s.spawn().unwrap();
    s.wait_ready(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
}
