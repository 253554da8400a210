//! The seed page on several hosts: network namespaces on a bridge, HAProxy
//! as the fixed registration address, three servers (two joining at the
//! same moment through HAProxy) and two agents; then servers killed, the
//! registration address stopped, agents restarted.
//!
//! Needs root (namespaces), HAProxy and etcd (scripts/install.sh).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::eventually;
use rke2_testbed::netbed::{Host, NetBed};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

struct Proc {
    host: Host,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    fn new(bed: &NetBed, host: &Host, role: &str, config: &str, extra: &[&str]) -> Proc {
        let dir = bed.dir().join(&host.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let mut args: Vec<String> = vec![
            role.into(),
            "--config".into(),
            dir.join("config.yaml").display().to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--node-name".into(),
            host.name.clone(),
            "--node-ip".into(),
            host.ip.to_string(),
        ];
        if role == "server" {
            args.push("--write-kubeconfig".into());
            args.push(dir.join("rke2.yaml").display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc {
            host: host.clone(),
            dir,
            args,
            child: None,
        }
    }

    fn start(&mut self, bed: &NetBed) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(bed.spawn_in(&self.host, &mut cmd).unwrap());
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                start.elapsed() < timeout,
                "still running; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The seed page's kubeconfig edit: server 1's rke2.yaml pointed at the LB.
fn lb_kubeconfig(s1: &Proc, lb: Ipv4Addr) -> PathBuf {
    let text = std::fs::read_to_string(s1.dir.join("rke2.yaml")).unwrap();
    let edited = text.replace("https://127.0.0.1:6443", &format!("https://{lb}:6443"));
    assert_ne!(text, edited, "kubeconfig server not found");
    let p = s1.dir.join("rke2-lb.yaml");
    std::fs::write(&p, edited).unwrap();
    p
}

async fn ready_nodes(nodes: &Api<Node>) -> Option<BTreeMap<String, Node>> {
    let list = nodes.list(&ListParams::default()).await.ok()?;
    Some(
        list.items
            .into_iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|n| (n.metadata.name.clone().unwrap(), n))
            .collect(),
    )
}

async fn lease_time(leases: &Api<Lease>, name: &str) -> Option<String> {
    let l = leases.get(name).await.ok()?;
    Some(format!("{:?}", l.spec?.renew_time?))
}

fn newest_kubectl() -> Option<PathBuf> {
    rke2_testbed::kubectls()
        .ok()
        .and_then(|v| v.last().map(|(_, p)| p.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_cluster_through_haproxy_with_agents_and_failures() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root for network namespaces"
    );
    let mut bed = NetBed::new().unwrap();
    let lb = bed.add_host("lb").unwrap();
    let hs: Vec<Host> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| bed.add_host(n).unwrap())
        .collect();
    let ha: Vec<Host> = ["a1", "a2"]
        .iter()
        .map(|n| bed.add_host(n).unwrap())
        .collect();
    let mut haproxy = bed
        .start_haproxy(&lb, &hs.iter().map(|h| h.ip).collect::<Vec<_>>())
        .unwrap();

    let first = format!(
        "token: my-shared-secret\ntls-san:\n  - {}\nnode-taint:\n  - \"CriticalAddonsOnly=true:NoExecute\"\npause-image: {}\n",
        lb.ip,
        rke2_testbed::TEST_PAUSE_IMAGE
    );
    let joiner = format!("server: https://{}:9345\n{first}", lb.ip);
    let mut s: Vec<Proc> = vec![
        Proc::new(&bed, &hs[0], "server", &first, &[]),
        Proc::new(&bed, &hs[1], "server", &joiner, &[]),
        Proc::new(&bed, &hs[2], "server", &joiner, &[]),
    ];
    // The bundled DNS chart's helm Job runs as a pod on a server: images
    // and helm in the data dirs.
    for p in &s {
        rke2_testbed::seed_images(&p.dir.join("data")).unwrap();
    }
    s[0].start(&bed);
    eventually(Duration::from_secs(120), "server 1 kubeconfig", || async {
        s[0].dir.join("rke2.yaml").exists().then_some(())
    })
    .await
    .unwrap();
    // Servers 2 and 3 at the same moment: etcd takes one learner at a time.
    s[1].start(&bed);
    s[2].start(&bed);
    let kubeconfig = lb_kubeconfig(&s[0], lb.ip);
    let client = rke2_testbed::client_from_kubeconfig(&kubeconfig)
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        Duration::from_secs(240),
        "three Ready servers through the LB",
        || async {
            let r = ready_nodes(&nodes).await?;
            (["s1", "s2", "s3"].iter().all(|n| r.contains_key(*n))).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\ns2 log:\n{}\ns3 log:\n{}", s[1].log(), s[2].log()));
    // Taints from config, server roles.
    let s1 = nodes.get("s1").await.unwrap();
    let taints = s1.spec.unwrap().taints.unwrap();
    assert!(taints.iter().any(|t| t.key == "CriticalAddonsOnly"
        && t.value.as_deref() == Some("true")
        && t.effect == "NoExecute"));
    // Real kubectl through the LB, TLS verified (no insecure flag).
    if let Some(k) = newest_kubectl() {
        let out = Command::new(k)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "nodes"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(" Ready ") && l.contains("control-plane,etcd,master"))
                .count(),
            3,
            "{text}"
        );
    }

    // Seed page 2a: with every server tainted CriticalAddonsOnly, the
    // bundled addons stay Pending, and say why: their HelmCharts' helm Jobs
    // (not bootstrap charts) wait for an untainted node, as RKE2's.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let events: Api<Event> = Api::namespaced(client.clone(), "kube-system");
    let pending = eventually(
        Duration::from_secs(120),
        "metrics-server's helm-install pod Pending with FailedScheduling",
        || async {
            let p = pods
                .list(
                    &ListParams::default()
                        .labels("helmcharts.helm.cattle.io/chart=rke2-metrics-server"),
                )
                .await
                .ok()?
                .items
                .into_iter()
                .next()?;
            if p.spec.as_ref()?.node_name.is_some() {
                return None;
            }
            let name = p.metadata.name.clone()?;
            let evs = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
                .await
                .ok()?;
            evs.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.message
                            .as_deref()
                            .unwrap_or("")
                            .contains("CriticalAddonsOnly")
                })
                .then_some(name)
        },
    )
    .await
    .unwrap();
    // Cluster DNS tolerates the taint and is bound to a server.
    eventually(
        Duration::from_secs(120),
        "coredns bound to a server",
        || async {
            let p = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=rke2-coredns"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()?;
            p.spec?.node_name.filter(|n| n.starts_with('s'))
        },
    )
    .await
    .unwrap();

    // Agents join through the LB.
    let agent_cfg = format!(
        "server: https://{}:9345\ntoken: my-shared-secret\nnode-label:\n  - tier=web\npause-image: {}\n",
        lb.ip,
        rke2_testbed::TEST_PAUSE_IMAGE
    );
    let mut a: Vec<Proc> = ha
        .iter()
        .map(|h| Proc::new(&bed, h, "agent", &agent_cfg, &[]))
        .collect();
    // The addons' helm Jobs run on the agents: images and helm there too.
    for p in &a {
        rke2_testbed::seed_images(&p.dir.join("data")).unwrap();
    }
    let join_start = Instant::now();
    for p in a.iter_mut() {
        p.start(&bed);
    }
    eventually(Duration::from_secs(120), "two Ready agents", || async {
        let r = ready_nodes(&nodes).await?;
        (r.contains_key("a1") && r.contains_key("a2")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\na1 log:\n{}", a[0].log()));
    println!("agents joined to Ready in {:?}", join_start.elapsed());
    // As soon as untainted agents are there, the addons' helm Jobs are
    // bound to them, and install the addons there.
    eventually(
        Duration::from_secs(120),
        "metrics-server's helm-install pod bound to an agent",
        || async {
            let p = pods.get(&pending).await.ok()?;
            p.spec?.node_name.filter(|n| n.starts_with('a'))
        },
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(120),
        "ingress DaemonSet on both agents only",
        || async {
            let ps = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=rke2-ingress-nginx"))
                .await
                .ok()?;
            let mut on: Vec<String> = ps
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            on.sort();
            (on == ["a1", "a2"]).then_some(())
        },
    )
    .await
    .unwrap();
    let a1 = nodes.get("a1").await.unwrap();
    let labels = a1.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("tier").map(String::as_str), Some("web"));
    assert!(
        !labels
            .keys()
            .any(|k| k.starts_with("node-role.kubernetes.io/")),
        "agent has a role label"
    );
    assert!(a1.spec.unwrap().taints.unwrap_or_default().is_empty());
    node_identity_is_narrowed(&client, &a[0], &lb, &hs[0])
        .await
        .unwrap_or_else(|e| panic!("{e}\na1 log:\n{}", a[0].log()));

    // An agent with a wrong token is refused and writes no node.
    let bad = bed.add_host("a3").unwrap();
    let mut a3 = Proc::new(
        &bed,
        &bad,
        "agent",
        &format!("server: https://{}:9345\ntoken: not-the-secret\n", lb.ip),
        &[],
    );
    a3.start(&bed);
    assert!(!a3.wait_exit(Duration::from_secs(60)).success());
    assert!(
        a3.log().contains("401") || a3.log().contains("token password"),
        "{}",
        a3.log()
    );
    assert!(nodes.get_opt("a3").await.unwrap().is_none());

    // Kill -9 server 1 (etcd with it): writes through the LB go on, no
    // acknowledged write is lost, every other node stays Ready.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut acked: Vec<String> = Vec::new();
    let write = |name: String| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": "1"}}))
                    .unwrap();
            tokio::time::timeout(
                Duration::from_secs(20),
                cms.create(&PostParams::default(), &cm),
            )
            .await
        }
    };
    for i in 0..5 {
        let n = format!("before-{i}");
        write(n.clone()).await.unwrap().unwrap();
        acked.push(n);
    }
    // A joined server's etcd member is a learner until s1 (whose member
    // leads) promotes it; killing s1 before that leaves one of two voters,
    // no quorum. HA starts once all three vote.
    eventually(Duration::from_secs(90), "three etcd voters", || async {
        let out = rke2_testbed::etcdctl(
            &s[0].dir.join("data"),
            &s[0].host.ip.to_string(),
            &["member", "list"],
        );
        (rke2_testbed::started_voters(&out.stdout) == 3).then_some(())
    })
    .await
    .unwrap();
    let a1_lease_before = lease_time(&leases, "a1").await.unwrap();
    let killed_at = Instant::now();
    s[0].kill9();
    let mut first_ok = None;
    for i in 0..20 {
        let n = format!("during-{i}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match write(n.clone()).await {
                Ok(Ok(_)) => {
                    acked.push(n.clone());
                    first_ok.get_or_insert(killed_at.elapsed());
                    break;
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    // An earlier attempt landed after all: it counts.
                    acked.push(n.clone());
                    break;
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => {
                    let tail = |p: &Proc| {
                        let log = p.log();
                        let lines: Vec<&str> = log.lines().collect();
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    };
                    panic!(
                        "write {n} failed for 60 s after killing s1: {other:?}\n--- s1 log tail ---\n{}\n--- s2 log tail ---\n{}\n--- s3 log tail ---\n{}",
                        tail(&s[0]),
                        tail(&s[1]),
                        tail(&s[2])
                    )
                }
            }
        }
    }
    println!(
        "first write through the LB after killing s1: {:?}",
        first_ok.unwrap()
    );
    let ready_after = eventually(
        Duration::from_secs(60),
        "a1 lease renewed after the kill",
        || async {
            let t = lease_time(&leases, "a1").await?;
            (t != a1_lease_before).then_some(killed_at.elapsed())
        },
    )
    .await
    .unwrap();
    println!("agent a1 renewed its lease {ready_after:?} after s1 was killed");
    let r = ready_nodes(&nodes).await.unwrap();
    for n in ["s2", "s3", "a1", "a2"] {
        assert!(r.contains_key(n), "{n} not Ready after s1 died");
    }

    // Server 1 comes back (restart, no re-join) and the cluster is whole.
    s[0].start(&bed);
    eventually(Duration::from_secs(180), "s1 serving again", || async {
        let c = rke2_testbed::client_from_kubeconfig(&s[0].dir.join("rke2-lb.yaml"))
            .await
            .ok()?;
        let _ = c;
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}:2379", hs[0].ip))
            .arg(format!(
                "--cacert={}",
                s[0].dir
                    .join("data/server/tls/etcd/server-ca.crt")
                    .display()
            ))
            .arg(format!(
                "--cert={}",
                s[0].dir.join("data/server/tls/etcd/client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                s[0].dir.join("data/server/tls/etcd/client.key").display()
            ))
            .args(["endpoint", "health"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s[0].log()));

    // Two of three servers down: writes fail with an error (no hang
    // forever, nothing corrupted); one back: writes work again.
    s[1].kill9();
    s[2].kill9();
    let failed = write("quorum-lost".into()).await;
    assert!(
        !matches!(failed, Ok(Ok(_))),
        "a write succeeded without quorum"
    );
    s[1].start(&bed);
    eventually(
        Duration::from_secs(180),
        "writes after quorum returns",
        || async {
            matches!(write(format!("back-{}", rand_suffix())).await, Ok(Ok(_))).then_some(())
        },
    )
    .await
    .unwrap();
    for n in &acked {
        assert!(
            cms.get_opt(n).await.unwrap().is_some(),
            "acknowledged write {n} lost"
        );
    }
    s[2].start(&bed);

    // Kill an agent: after the grace period (40 s) its node is Unknown with
    // both unreachable taints; restarted, it is Ready again, same object.
    let uid_before = nodes.get("a1").await.unwrap().metadata.uid;
    let killed = Instant::now();
    a[0].kill9();
    eventually(
        Duration::from_secs(150),
        "a1 Unknown with unreachable taints",
        || async {
            let n = nodes.get("a1").await.ok()?;
            let ready = n
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            let taints = n.spec?.taints.unwrap_or_default();
            let has = |e: &str| {
                taints
                    .iter()
                    .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == e)
            };
            (ready.status == "Unknown" && has("NoSchedule") && has("NoExecute")).then_some(())
        },
    )
    .await
    .unwrap();
    let unknown_after = killed.elapsed();
    assert!(
        unknown_after >= Duration::from_secs(35),
        "a1 marked Unknown after only {unknown_after:?}"
    );
    println!("killed agent marked Unknown after {unknown_after:?}");
    a[0].start(&bed);
    eventually(
        Duration::from_secs(120),
        "a1 Ready again without unreachable taints",
        || async {
            let n = nodes.get("a1").await.ok()?;
            let ready = n
                .status
                .clone()?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            let taints = n.spec.clone()?.taints.unwrap_or_default();
            (ready.status == "True"
                && !taints
                    .iter()
                    .any(|t| t.key == "node.kubernetes.io/unreachable"))
            .then_some(n)
        },
    )
    .await
    .map(|n| {
        assert_eq!(
            n.metadata.uid, uid_before,
            "the restarted agent created a new node object"
        )
    })
    .unwrap();

    // The registration address goes away for good: agents keep working
    // through their own balancers, also across an agent restart.
    haproxy.stop().unwrap();
    let direct = {
        let text = std::fs::read_to_string(s[0].dir.join("rke2.yaml"))
            .unwrap()
            .replace(
                "https://127.0.0.1:6443",
                &format!("https://{}:6443", hs[0].ip),
            );
        let p = s[0].dir.join("rke2-direct.yaml");
        std::fs::write(&p, text).unwrap();
        rke2_testbed::client_from_kubeconfig(&p).await.unwrap()
    };
    let dleases: Api<Lease> = Api::namespaced(direct.clone(), "kube-node-lease");
    a[1].kill9();
    let before = lease_time(&dleases, "a2").await.unwrap_or_default();
    a[1].start(&bed);
    eventually(
        Duration::from_secs(90),
        "a2 back without the LB",
        || async {
            let t = lease_time(&dleases, "a2").await?;
            (t != before).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a[1].log()));
    let dnodes: Api<Node> = Api::all(direct);
    let r = ready_nodes(&dnodes).await.unwrap();
    assert!(r.contains_key("a1") && r.contains_key("a2"));
    for p in s.iter_mut().chain(a.iter_mut()) {
        p.kill9();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// An agent's own credentials act only as that node (upstream's Node
/// authorizer and NodeRestriction): its kubelet certificate reads only the
/// Secrets its pods use, one by one; it may not give itself a role or
/// touch another node; and the agent token cannot get a kubelet
/// certificate for a server's name or for another machine's address.
async fn node_identity_is_narrowed(
    admin: &kube::Client,
    agent: &Proc,
    lb: &Host,
    server: &Host,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    let data = agent.dir.join("data");
    let kc = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: d\nclusters: [{{name: d, cluster: {{server: \"https://{}:6443\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: d, user: {{client-certificate: \"{}\", client-key: \"{}\"}}}}]\ncontexts: [{{name: d, context: {{cluster: d, user: d}}}}]\n",
        lb.ip,
        data.join("agent/server-ca.crt").display(),
        data.join("agent/client-kubelet.crt").display(),
        data.join("agent/client-kubelet.key").display(),
    );
    let kc_path = agent.dir.join("kubelet.yaml");
    std::fs::write(&kc_path, kc).map_err(|e| e.to_string())?;
    let node = rke2_testbed::client_from_kubeconfig(&kc_path)
        .await
        .map_err(|e| e.to_string())?;
    let name = agent.host.name.as_str();

    // A Secret used by a pod bound to this node, and one nobody uses.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    for s in ["used-by-a1", "not-used"] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": s}, "stringData": {"k": "v"}}))
                .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| format!("creating secret {s}: {e}"))?;
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "uses-a-secret"},
        "spec": {"nodeName": name,
                 "containers": [{"name": "c", "image": "rke2.test/none:1",
                                 "envFrom": [{"secretRef": {"name": "used-by-a1"}}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|e| format!("creating the pod: {e}"))?;

    let forbidden = |what: &str, r: Result<String, kube::Error>, needle: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(needle) => Ok(()),
        other => Err(format!("{what}: want 403 with {needle:?}, got {other:?}")),
    };
    let as_node: Api<Secret> = Api::namespaced(node.clone(), "default");
    let all: Api<Secret> = Api::all(node.clone());
    forbidden(
        "list all secrets",
        all.list(&ListParams::default())
            .await
            .map(|l| format!("{} secrets", l.items.len())),
        "can only read namespaced object of this type",
    )?;
    forbidden(
        "list a namespace's secrets",
        as_node
            .list(&ListParams::default())
            .await
            .map(|l| format!("{} secrets", l.items.len())),
        "No Object name found",
    )?;
    forbidden(
        "get a secret no pod of the node uses",
        as_node.get("not-used").await.map(|_| "read".into()),
        &format!(
            "secrets \"not-used\" is forbidden: User \"system:node:{name}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node '{name}' and this object"
        ),
    )?;
    let got = as_node
        .get("used-by-a1")
        .await
        .map_err(|e| format!("get the secret its pod uses: {e}"))?;
    if got
        .data
        .unwrap_or_default()
        .get("k")
        .map(|b| b.0.as_slice())
        != Some(b"v")
    {
        return Err("the secret read back without its data".into());
    }
    // The kubelet's way to follow one object: a list pinned by name.
    let one = as_node
        .list(&ListParams::default().fields("metadata.name=used-by-a1"))
        .await
        .map_err(|e| format!("list one secret by name: {e}"))?;
    if one.items.len() != 1 {
        return Err(format!("list by name gave {} items", one.items.len()));
    }
    forbidden(
        "list a secret it may not read by name",
        as_node
            .list(&ListParams::default().fields("metadata.name=not-used"))
            .await
            .map(|l| format!("{} secrets", l.items.len())),
        "no relationship found",
    )?;
    // A watch pinned to that one Secret, as a kubelet follows it.
    {
        use futures::StreamExt;
        let wp = kube::api::WatchParams::default().fields("metadata.name=used-by-a1");
        let stream = as_node
            .watch(&wp, "0")
            .await
            .map_err(|e| format!("watch one secret by name: {e}"))?;
        let first = tokio::time::timeout(Duration::from_secs(10), stream.boxed().next())
            .await
            .map_err(|_| "no event on the pinned secret watch".to_string())?;
        match first {
            Some(Ok(kube::api::WatchEvent::Added(s)))
                if s.metadata.name.as_deref() == Some("used-by-a1") => {}
            other => return Err(format!("pinned secret watch: {other:?}")),
        }
    }
    // Other nodes' pods stay out of sight.
    let elsewhere: Pod = serde_json::from_value(json!({
        "metadata": {"name": "on-a-server"},
        "spec": {"nodeName": server.name,
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "c", "image": "rke2.test/none:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &elsewhere)
        .await
        .map_err(|e| format!("creating a pod on {}: {e}", server.name))?;
    let node_pods_ns: Api<Pod> = Api::namespaced(node.clone(), "default");
    node_pods_ns
        .get("uses-a-secret")
        .await
        .map_err(|e| format!("get its own pod: {e}"))?;
    forbidden(
        "get another node's pod",
        node_pods_ns.get("on-a-server").await.map(|_| "read".into()),
        "no relationship found",
    )?;
    let node_pods: Api<Pod> = Api::all(node.clone());
    forbidden(
        "list every pod",
        node_pods
            .list(&ListParams::default())
            .await
            .map(|l| format!("{} pods", l.items.len())),
        "can only list/watch pods with spec.nodeName field selector",
    )?;

    // Its own Node: free labels yes, a role or another node no.
    let nodes: Api<Node> = Api::all(node.clone());
    let pp = PatchParams::default();
    nodes
        .patch(
            name,
            &pp,
            &Patch::Merge(&json!({"metadata": {"labels": {"rack": "r1"}}})),
        )
        .await
        .map_err(|e| format!("a free label on its own node: {e}"))?;
    forbidden(
        "give itself a role",
        nodes
            .patch(
                name,
                &pp,
                &Patch::Merge(
                    &json!({"metadata": {"labels": {"node-role.kubernetes.io/x": "true"}}}),
                ),
            )
            .await
            .map(|_| "labelled".into()),
        &format!(
            "nodes \"{name}\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/x"
        ),
    )?;
    forbidden(
        "patch another node",
        nodes
            .patch(
                &server.name,
                &pp,
                &Patch::Merge(&json!({"metadata": {"labels": {"rack": "r1"}}})),
            )
            .await
            .map(|_| "patched".into()),
        &format!(
            "node \"{name}\" is not allowed to modify node \"{}\"",
            server.name
        ),
    )?;
    // kubectl with the node's kubeconfig says the same.
    if let Some(k) = newest_kubectl() {
        let out = Command::new(k)
            .arg("--kubeconfig")
            .arg(&kc_path)
            .args(["label", "node", name, "node-role.kubernetes.io/worker=true"])
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("(Forbidden)") {
            return Err(format!("kubectl label as the node: {err}"));
        }
    }

    // The supervisor, with the agent token and this node's password.
    let password = std::fs::read_to_string(data.join("etc/rancher/node/password"))
        .map_err(|e| e.to_string())?;
    let ask = |kind: &str, node_name: &str, ips: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(data.join("agent/server-ca.crt"))
            .args(["-u", "node:my-shared-secret"])
            .arg("-H")
            .arg(format!("rke2-node-name: {node_name}"))
            .arg("-H")
            .arg(format!("rke2-node-password: {}", password.trim()))
            .arg("-H")
            .arg(format!("rke2-node-ip: {ips}"))
            .arg(format!("https://{}:9345/v1-rke2/{kind}-kubelet.crt", lb.ip))
            .output()
            .expect("curl (scripts/install.sh)");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let checks = [
        ("serving", name, agent.host.ip.to_string(), "200"),
        ("client", server.name.as_str(), server.ip.to_string(), "403"),
        ("serving", name, server.ip.to_string(), "403"),
        ("serving", name, "kubernetes.default.svc".to_string(), "400"),
    ];
    for (kind, who, ips, want) in checks {
        let got = ask(kind, who, &ips);
        if got != want {
            return Err(format!(
                "{kind} certificate for {who} at {ips}: {got}, want {want}"
            ));
        }
    }

    for p in ["uses-a-secret", "on-a-server"] {
        pods.delete(p, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    for s in ["used-by-a1", "not-used"] {
        secrets
            .delete(s, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
