//! Services and DNS for real on a two-node bed (one server, one agent, an
//! outside host with its own resolver): the bundled `rke2-coredns` runs on
//! the addon image with no registry and is scaled by its autoscaler; pods
//! reach a Service by its short name and its full name across nodes,
//! headless Services and `hostname`/`subdomain` pods resolve, outside names
//! are forwarded to the node's upstream resolver, a pod reaches the API at
//! `kubernetes.default.svc`, a NodePort answers on every node's address from
//! outside the nodes, scaling to 0 ends traffic and scaling back restores
//! it, and `rke2 killall` leaves no proxy rules.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd,
//! nftables, conntrack and dnsmasq (scripts/install.sh).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs two nodes, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn running_ready(p: &Pod) -> bool {
    let st = p.status.as_ref();
    st.and_then(|s| s.phase.as_deref()) == Some("Running")
        && st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_route_and_names_resolve_across_nodes() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let ha = bed.add_host("a1").unwrap();
    let hx = bed.add_host("x1").unwrap();

    // The outside world's resolver, on the outside host: the nodes'
    // upstream (their `resolv-conf`).
    let mut dnsmasq = Command::new("dnsmasq");
    dnsmasq.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={}", hx.ip),
        "--address=/outside.test/192.0.2.7",
        "--pid-file=",
        "--user=root",
    ]);
    let mut resolver = bed
        .spawn_in(&hx, &mut dnsmasq)
        .expect("dnsmasq (scripts/install.sh installs dnsmasq-base)");
    let resolv = bed.dir().join("upstream-resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", hx.ip)).unwrap();

    let common = format!(
        "token: svc-secret\npause-image: {TEST_PAUSE_IMAGE}\nresolv-conf: {}\n",
        resolv.display()
    );
    let server_cfg = format!("{common}disable:\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n");
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &server_cfg, &[]).unwrap();
    let agent_cfg = format!("server: https://{}:9345\n{common}", hs.ip);
    let mut a1 = NodeProc::new(&bed, bin(), &ha, "agent", &agent_cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    rke2_testbed::seed_images(&a1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc_path = s1.dir.join("rke2.yaml");
    eventually(LONG, "server kubeconfig", || async {
        kc_path.exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubeconfig = s1.kubeconfig_at_ip().unwrap();
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await
    .unwrap();
    a1.start(&bed).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "two Ready nodes", || async {
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
        (ready == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let ready_at = Instant::now();
    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();

    // Cluster DNS: the bundled addon on the addon image, made by the nodes
    // themselves; two nodes make its autoscaler ask for two replicas.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    eventually(LONG, "an rke2-coredns pod Running and Ready", || async {
        let list = system
            .list(&ListParams::default().labels("app.kubernetes.io/name=rke2-coredns"))
            .await
            .ok()?;
        list.items.iter().any(running_ready).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}", s1.log()));
    println!(
        "rke2-coredns: first replica Running and Ready {:?} after both nodes were Ready",
        ready_at.elapsed()
    );
    eventually(LONG, "two rke2-coredns pods Running and Ready", || async {
        let list = system
            .list(&ListParams::default().labels("app.kubernetes.io/name=rke2-coredns"))
            .await
            .ok()?;
        (list.items.iter().filter(|p| running_ready(p)).count() == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let o = kubectl(&k, &kubeconfig, &["get", "pods", "-A", "-o", "wide"]);
        let d = kubectl(&k, &kubeconfig, &["-n", "kube-system", "describe", "pods"]);
        panic!(
            "{e}\n{}\n{}\nserver:\n{}\nagent:\n{}",
            text(&o),
            text(&d),
            s1.log(),
            a1.log()
        )
    });
    println!(
        "rke2-coredns: 2 replicas Running and Ready {:?} after both nodes were Ready",
        ready_at.elapsed()
    );
    // Nothing on a fresh cluster sits in an error state.
    let all = kubectl(&k, &kubeconfig, &["get", "pods", "-A", "--no-headers"]);
    for line in text(&all).lines() {
        assert!(
            line.contains("Running") || line.contains("Completed"),
            "a pod is not running: {line}\n{}",
            text(&all)
        );
    }

    // A web Deployment on both nodes behind a ClusterIP Service (named
    // target port), a NodePort Service and a headless Service; a pod with
    // hostname/subdomain under the headless one; a client on each node.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}
                    ]}},
                    "containers": [{
                        "name": "web",
                        "image": TEST_BUSYBOX_IMAGE,
                        "command": ["sh", "-c", "mkdir -p /www && echo \"hello from $POD_NAME\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &dep)
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for svc in [
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        json!({"metadata": {"name": "web-np"}, "spec": {"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}}),
        json!({"metadata": {"name": "web-h"}, "spec": {"clusterIP": "None", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 8080}]}}),
    ] {
        let svc: Service = serde_json::from_value(svc).unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node, extra) in [
        ("client-s1", "s1", json!({})),
        ("client-a1", "a1", json!({})),
        ("db-0", "a1", json!({"hostname": "db-0", "subdomain": "db"})),
    ] {
        let mut spec = json!({
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let labels = if name == "db-0" {
            json!({"app": "db"})
        } else {
            json!({"app": "client"})
        };
        let p: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "spec": spec}),
        )
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    // db-0 names the headless Service `db` as its subdomain, which selects
    // it: its record is `db-0.db.default.svc.<domain>`.
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "x", "port": 1}]}}))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let web_ips = eventually(LONG, "web pods and clients Running and Ready", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let ready: Vec<&Pod> = list.items.iter().filter(|p| running_ready(p)).collect();
        let webs: BTreeSet<String> = ready
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str)
                    == Some("web")
            })
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        (ready.len() == 5 && webs.len() == 2).then_some(webs)
    })
    .await
    .unwrap_or_else(|e| {
        let o = kubectl(&k, &kubeconfig, &["get", "pods", "-o", "wide"]);
        panic!("{e}\n{}", text(&o))
    });
    let web_names: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();

    let exec = |pod: &str, script: &str| -> std::process::Output {
        kubectl(&k, &kubeconfig, &["exec", pod, "--", "sh", "-c", script])
    };
    // An HTTP GET with busybox nc (the static busybox's wget crashes in
    // an image of one binary; nc resolves through the search path too).
    let get = |host: &str, port: u16| {
        format!("printf 'GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 3 {host} {port}")
    };
    // By short name (the search path) and by full name, from each node,
    // until both endpoints have answered each client.
    for client_pod in ["client-s1", "client-a1"] {
        for url in ["web", "web.default.svc.cluster.local"] {
            let seen = std::sync::Mutex::new(BTreeSet::new());
            eventually(
                LONG,
                "both endpoints answer through the Service",
                || async {
                    let o = exec(client_pod, &get(url, 80));
                    let out = text(&o);
                    let mut seen = seen.lock().unwrap();
                    for n in &web_names {
                        if out.contains(&format!("hello from {n}")) {
                            seen.insert(n.clone());
                        }
                    }
                    (seen.len() == 2).then_some(())
                },
            )
            .await
            .unwrap_or_else(|e| {
                let o = exec(
                    client_pod,
                    &format!("cat /etc/resolv.conf; {}", get(url, 80)),
                );
                panic!("{client_pod} {url}: {e}: {}", text(&o))
            });
        }
    }

    // Names: the headless Service gives each ready pod; hostname/subdomain
    // gives the pod's own name; an outside name is forwarded to the
    // node's upstream; `kubernetes.default.svc` is the API's ClusterIP.
    let lookup = |name: &str| text(&exec("client-a1", &format!("nslookup {name}")));
    let out = lookup("web-h.default.svc.cluster.local");
    for ip in &web_ips {
        assert!(
            out.contains(ip.as_str()),
            "headless web-h: {ip} not in {out}"
        );
    }
    let db_ip = pods
        .get("db-0")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    let out = lookup("db-0.db.default.svc.cluster.local");
    assert!(out.contains(&db_ip), "hostname/subdomain record: {out}");
    let dashed = db_ip.replace('.', "-");
    let out = lookup(&format!("{dashed}.default.pod.cluster.local"));
    assert!(out.contains(&db_ip), "pod A record: {out}");
    let out = lookup("outside.test");
    assert!(
        out.contains("192.0.2.7"),
        "forwarded to the upstream resolver: {out}"
    );
    let out = lookup("nothing-here.default.svc.cluster.local");
    assert!(
        out.to_ascii_uppercase().contains("NXDOMAIN") || out.contains("can't find"),
        "{out}"
    );
    let out = lookup("kubernetes.default.svc.cluster.local");
    assert!(out.contains("10.43.0.1"), "{out}");
    // The API through its ClusterIP: a TLS handshake answers (nc gets the
    // server's alert or bytes back, not a refusal or a timeout).
    let o = exec(
        "client-s1",
        "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | nc -w 3 kubernetes.default.svc 443 | wc -c",
    );
    let n: usize = text(&o).trim().parse().unwrap_or(0);
    assert!(n > 0, "the API's ClusterIP answered nothing: {}", text(&o));

    // NodePort from outside the nodes, on each node's address.
    for node_ip in [hs.ip, ha.ip] {
        eventually(LONG, "the NodePort answers from outside", || async {
            let mut c = bed.command_in(&hx, "curl").ok()?;
            c.args(["-s", "-m", "3", &format!("http://{node_ip}:30080/")]);
            let o = c.output().ok()?;
            String::from_utf8_lossy(&o.stdout)
                .contains("hello from")
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{node_ip}:30080: {e}"));
    }

    // Scale to 0: traffic ends; back to 2: it comes back, timed from the
    // first endpoint becoming Ready.
    let scale = |n: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch_scale(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
                .unwrap();
        }
    };
    scale(0).await;
    eventually(LONG, "no answer once scaled to 0", || async {
        let o = exec("client-a1", &get("web.default.svc.cluster.local", 80));
        (!text(&o).contains("hello from")).then_some(())
    })
    .await
    .unwrap();
    scale(2).await;
    let first_ready = eventually(LONG, "a web pod Ready again", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        list.items.iter().any(running_ready).then(Instant::now)
    })
    .await
    .unwrap();
    eventually(LONG, "traffic back after scaling up", || async {
        let o = exec("client-a1", &get("web.default.svc.cluster.local", 80));
        text(&o).contains("hello from").then_some(())
    })
    .await
    .unwrap();
    println!(
        "traffic back {:?} after the first endpoint was Ready (kubectl exec round trips included)",
        first_ready.elapsed()
    );

    // `rke2 killall` on the agent leaves no proxy rules.
    let nft_tables = || {
        let mut c = bed.command_in(&ha, "nft").unwrap();
        c.args(["list", "tables"]);
        text(&c.output().unwrap())
    };
    assert!(nft_tables().contains("rke2-proxy"), "{}", nft_tables());
    a1.kill9();
    let mut c = bed.command_in(&ha, bin()).unwrap();
    c.args(["killall", "--data-dir"]).arg(a1.data_dir());
    let o = c.output().unwrap();
    assert!(o.status.success(), "killall: {}", text(&o));
    assert!(!nft_tables().contains("rke2-proxy"), "{}", nft_tables());
    drop(s1);
    let _ = resolver.kill();
    let _ = resolver.wait();
}
