//! Server joins on loopback addresses: refusals that must happen before
//! anything is written, a bootstrap-data token check, and a three-server
//! cluster formed by joins started at the same moment.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Node};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rke2_testbed::{Server, ServerOpts, eventually};
use serde_json::json;

const READY: Duration = Duration::from_secs(120);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn joiner(first: &Server, token: &str, extra: &str) -> ServerOpts {
    ServerOpts {
        config_yaml: Some(format!(
            "server: https://{}:9345\ntoken: \"{token}\"\n{extra}",
            first.ip
        )),
        ..Default::default()
    }
}

/// Wrong password, wrong CA hash, an agent token, a differing
/// cluster-cidr: each refused with a message naming the check, and the
/// joiner's data dir holds nothing afterwards. Restarting the first server
/// with another token is refused by the bootstrap data check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refusals_write_nothing() {
    let mut first = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: my-shared-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    first.wait_ready(READY).await.unwrap();
    let token = std::fs::read_to_string(first.data_dir.join("server/token"))
        .unwrap()
        .trim()
        .to_string();
    let hash = token
        .strip_prefix("K10")
        .unwrap()
        .split("::")
        .next()
        .unwrap()
        .to_string();
    let bad_hash = format!("K10{}::server:my-shared-secret", "0".repeat(64));
    let cases = [
        (
            "wrong-password",
            format!("K10{hash}::server:not-the-secret"),
            "",
            "token password",
        ),
        (
            "wrong-ca-hash",
            bad_hash,
            "",
            "does not match the server's CA",
        ),
        (
            "agent-token",
            format!("K10{hash}::node:my-shared-secret"),
            "",
            "agent token",
        ),
        (
            "cidr-mismatch",
            token.clone(),
            "cluster-cidr: 10.99.0.0/16\n",
            "cluster-cidr",
        ),
    ];
    for (what, tok, extra, needle) in cases {
        let mut j = Server::start(bin(), joiner(&first, &tok, extra)).unwrap();
        let st = j.wait_exit(Duration::from_secs(60)).unwrap();
        assert!(!st.success(), "{what}: joiner exited successfully");
        let log = j.log_text();
        assert!(
            log.contains(needle),
            "{what}: {needle:?} not in log:\n{log}"
        );
        assert!(
            !j.data_dir.join("server/tls").exists(),
            "{what}: trust material written"
        );
        assert!(
            !j.data_dir.join("server/db").exists(),
            "{what}: etcd data dir created"
        );
        assert!(!j.kubeconfig.exists(), "{what}: kubeconfig written");
    }
    // The critical-config refusal names both values.
    // (the message is checked above for the key; the values follow it)
    // Restart the first server with another token: refused, token file kept.
    first
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    first.opts.config_yaml = Some("token: another-secret\n".into());
    first.spawn().unwrap();
    let st = first.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(!st.success());
    assert!(
        first
            .log_text()
            .contains("bootstrap data already found and encrypted with a different token"),
        "{}",
        first.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(first.data_dir.join("server/token"))
            .unwrap()
            .trim(),
        token
    );
}

/// Three servers on loopback: the first, then two joins started at the
/// same moment (etcd allows one learner at a time, so one of them waits).
/// All become voting members and Ready nodes; both joiners' API serves
/// the same data; endpoints list all three; restarting a joined server
/// does not re-join; deleting a stopped server's Node while no server
/// holds the controllers' lease still removes its etcd member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_join_in_parallel() {
    let mut s1 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: my-shared-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let c1 = s1.wait_ready(READY).await.unwrap();
    let mut s2 = Server::start(bin(), joiner(&s1, "my-shared-secret", "")).unwrap();
    let mut s3 = Server::start(bin(), joiner(&s1, "my-shared-secret", "")).unwrap();
    let c2 = s2.wait_ready(READY).await.unwrap();
    let c3 = s3.wait_ready(READY).await.unwrap();
    let nodes: Api<Node> = Api::all(c1.clone());
    let names = [
        s1.node_name.clone(),
        s2.node_name.clone(),
        s3.node_name.clone(),
    ];
    eventually(Duration::from_secs(90), "three Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| names.contains(n.metadata.name.as_ref().unwrap()))
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
    // Same token and CA everywhere.
    let tok = |s: &Server| std::fs::read_to_string(s.data_dir.join("server/token")).unwrap();
    assert_eq!(tok(&s1), tok(&s2));
    assert_eq!(tok(&s1), tok(&s3));
    // etcd: three voters.
    let etcdctl = |s: &Server, args: &[&str]| {
        String::from_utf8_lossy(&rke2_testbed::etcdctl(&s.data_dir, &s.ip, args).stdout).to_string()
    };
    eventually(Duration::from_secs(90), "three etcd voters", || async {
        let list = etcdctl(&s1, &["member", "list"]);
        (rke2_testbed::started_voters(list.as_bytes()) == 3).then_some(())
    })
    .await
    .unwrap();
    // A write through one server is read through the others.
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "shared"}, "data": {"k": "v"}}))
            .unwrap();
    Api::<ConfigMap>::namespaced(c2.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    for c in [&c1, &c3] {
        let got = Api::<ConfigMap>::namespaced(c.clone(), "default")
            .get("shared")
            .await
            .unwrap();
        assert_eq!(got.data.unwrap()["k"], "v");
    }
    // Server 2's own etcd member dies: its apiserver keeps answering
    // through the other members (every read below must succeed).
    let etcd2 = rke2_testbed::etcd_child(s2.pid().unwrap()).expect("s2's etcd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(etcd2),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let cms2: Api<ConfigMap> = Api::namespaced(c2.clone(), "default");
    for i in 0..10 {
        let got = tokio::time::timeout(Duration::from_secs(20), cms2.get("shared")).await;
        assert!(
            matches!(got, Ok(Ok(_))),
            "read {i} through s2 failed while its etcd was down: {got:?}"
        );
    }
    // The kubernetes endpoints list every apiserver.
    let eps: Api<Endpoints> = Api::namespaced(c1.clone(), "default");
    eventually(
        Duration::from_secs(30),
        "three apiserver endpoints",
        || async {
            let ep = eps.get("kubernetes").await.ok()?;
            let ips: Vec<String> = ep
                .subsets?
                .first()?
                .addresses
                .clone()?
                .into_iter()
                .map(|a| a.ip)
                .collect();
            [&s1.ip, &s2.ip, &s3.ip]
                .iter()
                .all(|ip| ips.contains(ip))
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The controllers' leader dies: another server takes the Lease over.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c1.clone(), "kube-system");
    let holder = eventually(Duration::from_secs(30), "a controllers leader", || async {
        leases
            .get("kube-controller-manager")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await
    .unwrap();
    // Kill the holder, watch the takeover through another server's API,
    // then bring the holder back.
    let holder_is = |s: &Server| holder.starts_with(&format!("{}_", s.node_name));
    let watcher = if holder_is(&s1) {
        c2.clone()
    } else {
        c1.clone()
    };
    let victim = if holder_is(&s1) {
        &mut s1
    } else if holder_is(&s2) {
        &mut s2
    } else {
        &mut s3
    };
    let killed = std::time::Instant::now();
    victim
        .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .unwrap();
    let watch_leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(watcher, "kube-system");
    eventually(
        Duration::from_secs(60),
        "another controllers leader",
        || async {
            let h = watch_leases
                .get("kube-controller-manager")
                .await
                .ok()?
                .spec?
                .holder_identity?;
            (h != holder).then_some(())
        },
    )
    .await
    .unwrap();
    println!(
        "controllers lease taken over {:?} after its holder was killed",
        killed.elapsed()
    );
    victim.spawn().unwrap();
    victim.wait_ready(READY).await.unwrap();
    // A leader stopped with SIGTERM releases its lease: another server
    // takes it before the old lease would have run out.
    let lease = eventually(Duration::from_secs(30), "a controllers leader", || async {
        let l = watch_leases.get("kube-controller-manager").await.ok()?;
        l.spec.as_ref()?.holder_identity.as_ref()?;
        Some(l)
    })
    .await
    .unwrap();
    let holder_is_name = |h: &str, s: &Server| h.starts_with(&format!("{}_", s.node_name));
    let spec = lease.spec.clone().unwrap();
    let holder = spec.holder_identity.clone().unwrap();
    let expires = spec.renew_time.clone().unwrap().0
        + std::time::Duration::from_secs(spec.lease_duration_seconds.unwrap() as u64);
    let (leader, rest): (&mut Server, Vec<&Server>) = if holder_is_name(&holder, &s1) {
        (&mut s1, vec![&s2, &s3])
    } else if holder_is_name(&holder, &s2) {
        (&mut s2, vec![&s1, &s3])
    } else {
        (&mut s3, vec![&s1, &s2])
    };
    let other: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(rest[0].client().await.unwrap(), "kube-system");
    leader
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    let taken = eventually(
        Duration::from_secs(60),
        "the released lease taken over",
        || async {
            let spec = other.get("kube-controller-manager").await.ok()?.spec?;
            let h = spec.holder_identity?;
            (h != holder).then_some(spec.acquire_time?.0)
        },
    )
    .await
    .unwrap();
    // Its own log says the lease was handed over; the takeover time is
    // only printed (how soon the others try again depends on the load).
    let log = leader.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("released leadership") && l.contains("kube-controller-manager")),
        "no lease release in the stopped leader's log:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    println!(
        "released lease taken over at {taken}; unreleased it would have run out after {expires}"
    );
    leader.spawn().unwrap();
    leader.wait_ready(READY).await.unwrap();
    // Restarting a joined server does not re-join: same member name.
    let name_before = std::fs::read_to_string(s3.data_dir.join("server/db/etcd/name")).unwrap();
    s3.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    // Its apiserver leaves the endpoints within seconds.
    eventually(
        Duration::from_secs(30),
        "stopped apiserver leaves endpoints",
        || async {
            let ep = eps.get("kubernetes").await.ok()?;
            let ips: Vec<String> = ep
                .subsets?
                .first()?
                .addresses
                .clone()?
                .into_iter()
                .map(|a| a.ip)
                .collect();
            (!ips.contains(&s3.ip)).then_some(())
        },
    )
    .await
    .unwrap();
    s3.spawn().unwrap();
    s3.wait_ready(READY).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(s3.data_dir.join("server/db/etcd/name")).unwrap(),
        name_before
    );
    assert!(
        !s3.log_text()
            .split("SIGTERM received")
            .nth(1)
            .unwrap_or("")
            .contains("joining an existing cluster")
    );
    // Deleting s3's Node removes its etcd member (after stopping it), even
    // when no server runs the removal loop at that moment: a stopped holder
    // keeps the controllers' lease until it expires, and the next holder's
    // watch starts with a list, which has no deleted Node in it. Handing
    // the lease to an identity no server has makes that gap on purpose:
    // the holder steps down, the Node goes, and only the next holder's
    // reconciliation of voters against Nodes can find the orphaned member.
    s3.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    let gap_holder = "removal-test-gap_00000000";
    let old_holder = eventually(Duration::from_secs(30), "lease handed over", || async {
        let mut lease = leases.get("kube-controller-manager").await.ok()?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        let old = spec.holder_identity.clone().unwrap_or_default();
        spec.holder_identity = Some(gap_holder.to_string());
        spec.lease_duration_seconds = Some(8);
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        // A 409 (the holder renewed in between) is retried.
        leases
            .replace("kube-controller-manager", &PostParams::default(), &lease)
            .await
            .ok()
            .map(|_| old)
    })
    .await
    .unwrap();
    // A live holder stops its loops once it sees the foreign holder (it
    // logs it as the new holder).
    for s in [&s1, &s2] {
        if old_holder.starts_with(&format!("{}_", s.node_name)) {
            eventually(
                Duration::from_secs(30),
                "the holder stepping down",
                || async { s.log_text().contains(gap_holder).then_some(()) },
            )
            .await
            .unwrap();
        }
    }
    nodes
        .delete(&s3.node_name, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = std::time::Instant::now();
    let member = name_before.trim().to_string();
    // Lease expiry (8 s) + takeover (2 s retries) + the removal grace
    // (60 s, counted from the new holder's first look) + its schedule.
    eventually(Duration::from_secs(180), "etcd member removed", || async {
        let list = etcdctl(&s1, &["member", "list"]);
        (!list.is_empty() && !list.contains(&member)).then_some(())
    })
    .await
    .unwrap();
    println!(
        "orphaned member removed {:?} after its Node was deleted in a leadership gap",
        deleted.elapsed()
    );
    assert!(
        [&s1, &s2].iter().any(|s| s
            .log_text()
            .contains("removed etcd voter whose Node is gone")),
        "the removal was not the reconciliation's"
    );
    drop(c2);
    drop(c3);
}

/// Five servers: the first, then four joins one after another (parallel
/// joins are covered with three servers; five at once on two cores mostly
/// measures the machine). All five vote and are Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_join() {
    let mut s1 = Server::start(
        bin(),
        ServerOpts {
            config_yaml: Some("token: five-secret\n".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let c1 = s1.wait_ready(READY).await.unwrap();
    let mut others: Vec<Server> = Vec::new();
    for _ in 0..4 {
        let mut s = Server::start(bin(), joiner(&s1, "five-secret", "")).unwrap();
        s.wait_ready(Duration::from_secs(300)).await.unwrap();
        others.push(s);
    }
    let mut names = vec![s1.node_name.clone()];
    names.extend(others.iter().map(|s| s.node_name.clone()));
    let nodes: Api<Node> = Api::all(c1.clone());
    eventually(Duration::from_secs(120), "five Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| names.contains(n.metadata.name.as_ref().unwrap()))
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 5).then_some(())
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(120), "five etcd voters", || async {
        let out = rke2_testbed::etcdctl(&s1.data_dir, &s1.ip, &["member", "list"]);
        (rke2_testbed::started_voters(&out.stdout) == 5).then_some(())
    })
    .await
    .unwrap();
}
