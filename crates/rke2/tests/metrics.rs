//! Resource metrics for real on a two-node bed (a server and an agent,
//! each in its own network namespace): the bundled `rke2-metrics-server`
//! runs on the addon image with no registry, its APIService turns
//! Available, and `kubectl top nodes` (both nodes), `top pods -A` and
//! `top pod --containers` show figures (a busy container on the agent
//! well above zero CPU) within 60 s of the pods running, with the oldest
//! and newest kubectl. The agent's node API serves `/stats/summary` and
//! `/metrics/resource` to a ServiceAccount token and to a client
//! certificate user once RBAC grants `nodes/stats` and `nodes/metrics`
//! (403 before), and
//! through the apiserver's `nodes/proxy`; `kubectl top` as a user without
//! the metrics reader role is refused; TokenReview answers.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd,
//! nftables (scripts/install.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs the node, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);
/// The issue's promise: figures within 60 s of the pods running.
const FIGURES_WITHIN: Duration = Duration::from_secs(60);

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

/// Millicores of a `kubectl top` CPU cell (`250m`, `1`).
fn millicores(cell: &str) -> Option<u64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<u64>().ok().map(|c| c * 1000),
    }
}

/// Bytes of a `kubectl top` memory cell (`12Mi`).
fn mebibytes(cell: &str) -> Option<u64> {
    cell.strip_suffix("Mi").and_then(|m| m.parse().ok())
}

/// The row of `name` in a `kubectl top` table: its cells.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table.lines().skip(1).find_map(|l| {
        let cells: Vec<String> = l.split_whitespace().map(str::to_string).collect();
        cells.iter().any(|c| c == name).then_some(cells)
    })
}

/// GET over TLS verified against `ca_pem`, with an optional bearer
/// token: (status, body).
async fn https_get(addr: &str, ca_pem: &[u8], token: Option<&str>, path: &str) -> (u16, String) {
    https_get_as(addr, ca_pem, None, token, path).await
}

/// [`https_get`] presenting a client certificate `(cert, key)` PEM.
async fn https_get_as(
    addr: &str,
    ca_pem: &[u8],
    cert: Option<(&[u8], &[u8])>,
    token: Option<&str>,
    path: &str,
) -> (u16, String) {
    let tls = rke2_trust::client_tls_config(ca_pem, cert).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ip: std::net::IpAddr = addr.rsplit_once(':').unwrap().0.parse().unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
        .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
        .await
        .expect("the node API's certificate verifies against the server CA");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_shows_node_and_pod_figures() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let ha = bed.add_host("a1").unwrap();
    let cfg = format!(
        "token: metrics-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-coredns\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    let agent_cfg = format!(
        "server: https://{}:9345\ntoken: metrics-secret\npause-image: {TEST_PAUSE_IMAGE}\n",
        hs.ip
    );
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
    eventually(LONG, "both nodes Ready", || async {
        for name in ["s1", "a1"] {
            let n = nodes.get_opt(name).await.ok()??;
            n.status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                .then_some(())?;
        }
        Some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let kubectls = rke2_testbed::kubectls().unwrap();
    let k = kubectls.last().unwrap().1.clone();
    let diagnose = |k: &PathBuf| {
        let pods = kubectl(k, &kubeconfig, &["get", "pods", "-A", "-o", "wide"]);
        let api = kubectl(
            k,
            &kubeconfig,
            &["get", "apiservice", "v1beta1.metrics.k8s.io", "-o", "yaml"],
        );
        let logs = kubectl(
            k,
            &kubeconfig,
            &[
                "-n",
                "kube-system",
                "logs",
                "deploy/rke2-metrics-server",
                "--tail=50",
            ],
        );
        format!("{}\n{}\n{}", text(&pods), text(&api), text(&logs))
    };

    // A busy pod: one container spinning, one asleep.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let busy: Pod = serde_json::from_value(json!({
        "metadata": {"name": "busy", "labels": {"app": "busy"}},
        "spec": {
            "nodeName": "a1",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "spin", "image": TEST_BUSYBOX_IMAGE, "command": ["sh", "-c", "while :; do :; done"]},
                {"name": "idle", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"]}
            ]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &busy).await.unwrap();

    // The addon: Running and Ready on the addon image, then Available.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    eventually(
        LONG,
        "the rke2-metrics-server pod Running and Ready",
        || async {
            let list = system
                .list(&ListParams::default().labels("app=rke2-metrics-server"))
                .await
                .ok()?;
            list.items.iter().any(running_ready).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\nserver:\n{}", diagnose(&k), s1.log()));
    eventually(LONG, "the busy pod Running", || async {
        let p = pods.get("busy").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&k)));
    let running_at = Instant::now();
    let apiservices: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
        )),
    );
    eventually(
        LONG,
        "APIService v1beta1.metrics.k8s.io Available",
        || async {
            let a = apiservices.get("v1beta1.metrics.k8s.io").await.ok()?;
            a.data["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&k)));

    // kubectl top, oldest and newest kubectl.
    let oldest = kubectls.first().unwrap().clone();
    let newest = kubectls.last().unwrap().clone();
    for (minor, k) in [oldest, newest] {
        let nodes_table = eventually(
            FIGURES_WITHIN,
            "kubectl top nodes shows s1 and a1",
            || async {
                let o = kubectl(&k, &kubeconfig, &["top", "nodes"]);
                let t = text(&o);
                for node in ["s1", "a1"] {
                    let r = row(&t, node)?;
                    // NAME CPU(cores) CPU% MEMORY(bytes) MEMORY%
                    (millicores(&r[1])? > 0 && mebibytes(&r[3])? > 0).then_some(())?;
                }
                Some(t)
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "kubectl 1.{minor}: {e} ({:?} after the pods ran)\n{}",
                running_at.elapsed(),
                diagnose(&k)
            )
        });
        let pods_table = eventually(FIGURES_WITHIN, "kubectl top pods -A shows busy", || async {
            let o = kubectl(&k, &kubeconfig, &["top", "pods", "-A"]);
            let t = text(&o);
            let r = row(&t, "busy")?;
            // NAMESPACE NAME CPU(cores) MEMORY(bytes)
            (millicores(&r[2])? >= 100 && row(&t, "kube-system").is_some()).then_some(t)
        })
        .await
        .unwrap_or_else(|e| {
            let o = kubectl(&k, &kubeconfig, &["top", "pods", "-A"]);
            panic!(
                "kubectl 1.{minor}: {e} ({:?} after the pods ran)\n{}\n{}",
                running_at.elapsed(),
                text(&o),
                diagnose(&k)
            )
        });
        let o = kubectl(&k, &kubeconfig, &["top", "pod", "busy", "--containers"]);
        let containers = text(&o);
        assert!(o.status.success(), "kubectl 1.{minor}: {containers}");
        // POD NAME CPU(cores) MEMORY(bytes)
        let spin = row(&containers, "spin").unwrap_or_else(|| panic!("{containers}"));
        let idle = row(&containers, "idle").unwrap_or_else(|| panic!("{containers}"));
        assert!(millicores(&spin[2]).unwrap() >= 100, "{containers}");
        assert!(
            millicores(&idle[2]).unwrap() < millicores(&spin[2]).unwrap(),
            "{containers}"
        );
        let o = kubectl(&k, &kubeconfig, &["top", "pods", "-l", "app=busy"]);
        assert!(text(&o).contains("busy"), "label selector: {}", text(&o));
        let o = kubectl(&k, &kubeconfig, &["top", "pods", "-l", "app=nothing"]);
        assert!(!text(&o).contains("busy"), "label selector: {}", text(&o));
        println!(
            "kubectl 1.{minor}: figures {:?} after the pods ran\n{nodes_table}{pods_table}{containers}",
            running_at.elapsed()
        );
    }
    // The objects themselves, through the aggregator.
    let k = &newest_path(&kubectls);
    let o = kubectl(
        k,
        &kubeconfig,
        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/s1"],
    );
    let nm: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(nm["kind"], "NodeMetrics");
    assert!(nm["window"].as_str().unwrap().ends_with('s'), "{nm}");
    let o = kubectl(
        k,
        &kubeconfig,
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("not found"),
        "{}",
        text(&o)
    );
    let o = kubectl(k, &kubeconfig, &["get", "nodes.metrics.k8s.io"]);
    assert!(
        o.status.success() && text(&o).contains("s1"),
        "{}",
        text(&o)
    );

    // A user without the metrics reader role is refused; `view` (which
    // aggregates system:aggregated-metrics-reader) lets it in.
    let sa = "system:serviceaccount:default:reader";
    kubectl(k, &kubeconfig, &["create", "serviceaccount", "reader"]);
    let o = kubectl(k, &kubeconfig, &["top", "pods", "--as", sa]);
    assert!(
        !o.status.success() && text(&o).to_lowercase().contains("forbidden"),
        "{}",
        text(&o)
    );
    let o = kubectl(
        k,
        &kubeconfig,
        &[
            "create",
            "rolebinding",
            "reader-view",
            "--clusterrole=view",
            "--serviceaccount=default:reader",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    eventually(Duration::from_secs(30), "top pods as a viewer", || async {
        let o = kubectl(k, &kubeconfig, &["top", "pods", "--as", sa]);
        (o.status.success() && text(&o).contains("busy")).then_some(())
    })
    .await
    .unwrap();

    // The node API directly, with a ServiceAccount token: 403 without
    // RBAC, then the Summary and the resource metrics once granted.
    let o = kubectl(k, &kubeconfig, &["create", "token", "reader"]);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // The agent's node API (where the busy pod runs): its serving
    // certificate is the supervisor's, signed by the server CA.
    let ca = std::fs::read(s1.data_dir().join("server/tls/server-ca.crt")).unwrap();
    let addr = format!("{}:10250", ha.ip);
    let (code, body) = https_get(&addr, &ca, Some(&token), "/stats/summary").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subresource(s)=[stats]"), "{body}");
    let (code, _) = https_get(&addr, &ca, Some("not-a-token"), "/metrics/resource").await;
    assert_eq!(code, 401);
    let (code, _) = https_get(&addr, &ca, None, "/metrics/resource").await;
    assert_eq!(code, 401);
    let o = kubectl(
        k,
        &kubeconfig,
        &[
            "create",
            "clusterrolebinding",
            "reader-kubelet",
            "--clusterrole=system:kubelet-api-admin",
            "--serviceaccount=default:reader",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Denials are cached 30 s, as kubelet's.
    let summary: Value = eventually(
        Duration::from_secs(60),
        "/stats/summary with the token",
        || {
            let (addr, ca, token) = (addr.clone(), ca.clone(), token.clone());
            async move {
                let (code, body) = https_get(&addr, &ca, Some(&token), "/stats/summary").await;
                (code == 200).then(|| serde_json::from_str(&body).unwrap())
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(summary["node"]["nodeName"], "a1");
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(summary["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    assert!(
        summary["node"]["runtime"]["imageFs"]["capacityBytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{summary}"
    );
    let pods_stats = summary["pods"].as_array().unwrap();
    let busy_stats = pods_stats
        .iter()
        .find(|p| p["podRef"]["name"] == "busy")
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(busy_stats["containers"].as_array().unwrap().len(), 2);
    assert!(busy_stats["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0);
    // The metrics server's own pod, on whichever node runs it.
    let mut all_pods = pods_stats.clone();
    let o = kubectl(
        k,
        &kubeconfig,
        &["get", "--raw", "/api/v1/nodes/s1/proxy/stats/summary"],
    );
    let s1_summary: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    all_pods.extend(s1_summary["pods"].as_array().unwrap().iter().cloned());
    let ms = all_pods
        .iter()
        .find(|p| {
            p["podRef"]["namespace"] == "kube-system"
                && p["podRef"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("rke2-metrics-server")
        })
        .unwrap_or_else(|| panic!("{all_pods:?}"));
    println!(
        "rke2-metrics-server pod memory: working set {} bytes, RSS {} bytes",
        ms["memory"]["workingSetBytes"], ms["memory"]["rssBytes"]
    );
    let (code, metrics) = https_get(&addr, &ca, Some(&token), "/metrics/resource").await;
    assert_eq!(code, 200);
    assert!(
        metrics
            .contains("# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total "),
        "{metrics}"
    );
    assert!(
        metrics.contains("container_cpu_usage_seconds_total{container=\"spin\",namespace=\"default\",pod=\"busy\"} "),
        "{metrics}"
    );
    assert!(metrics.ends_with("resource_scrape_error 0\n"), "{metrics}");

    // A client certificate of the client CA for a user outside
    // system:masters: authorized by SubjectAccessReview too.
    let tls_dir = s1.data_dir().join("server/tls");
    let client_ca = rke2_trust::CertAuthority::ensure(
        &tls_dir.join("client-ca.crt"),
        &tls_dir.join("client-ca.key"),
        "rke2-client",
    )
    .unwrap();
    let (cert, key) = client_ca
        .issue(&rke2_trust::LeafSpec::client("carol", &["devs"]))
        .unwrap();
    let carol = Some((cert.as_bytes(), key.as_bytes()));
    let (code, body) = https_get_as(&addr, &ca, carol, None, "/metrics/resource").await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("user=carol") && body.contains("subresource(s)=[metrics]"),
        "{body}"
    );
    let o = kubectl(
        k,
        &kubeconfig,
        &[
            "create",
            "clusterrolebinding",
            "carol-kubelet",
            "--clusterrole=system:kubelet-api-admin",
            "--user=carol",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    eventually(
        Duration::from_secs(60),
        "/metrics/resource as carol",
        || {
            let (addr, ca, cert, key) = (addr.clone(), ca.clone(), cert.clone(), key.clone());
            async move {
                let (code, _) = https_get_as(
                    &addr,
                    &ca,
                    Some((cert.as_bytes(), key.as_bytes())),
                    None,
                    "/metrics/resource",
                )
                .await;
                (code == 200).then_some(())
            }
        },
    )
    .await
    .unwrap();

    // The same through the apiserver's nodes/proxy, for whoever may `get
    // nodes/proxy` (the node lets the apiserver in; the user was
    // authorized there).
    let o = kubectl(
        k,
        &kubeconfig,
        &["get", "--raw", "/api/v1/nodes/s1/proxy/stats/summary"],
    );
    let via: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(via["node"]["nodeName"], "s1");
    let o = kubectl(
        k,
        &kubeconfig,
        &["get", "--raw", "/api/v1/nodes/a1/proxy/metrics/resource"],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"busy\"} "),
        "{}",
        text(&o)
    );
    let o = kubectl(
        k,
        &kubeconfig,
        &[
            "get",
            "--raw",
            "/api/v1/nodes/s1/proxy/stats/summary",
            "--as",
            "system:serviceaccount:default:nobody",
        ],
    );
    assert!(
        !o.status.success() && text(&o).to_lowercase().contains("forbidden"),
        "{}",
        text(&o)
    );

    // TokenReview, what the node API asked: the reader's token is
    // authenticated as its ServiceAccount, a forged one is not.
    let review = |t: &str| {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}});
        let mut child = Command::new(k)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["create", "-o", "json", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.to_string().as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        serde_json::from_slice::<Value>(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)))
    };
    let good = review(&token);
    assert_eq!(good["status"]["authenticated"], true, "{good}");
    assert_eq!(good["status"]["user"]["username"], sa, "{good}");
    let bad = review("a.b.c");
    assert_ne!(bad["status"]["authenticated"], true, "{bad}");
    assert!(bad["status"]["error"].is_string(), "{bad}");
    drop(a1);
    drop(s1);
}

fn newest_path(kubectls: &[(u32, PathBuf)]) -> PathBuf {
    kubectls.last().unwrap().1.clone()
}
