//! Pods run for real on a two-host bed (one server, one agent, each in
//! its own network namespace with its own containerd): images from the
//! air-gap folder, a Deployment across both nodes reaching Ready behind a
//! readiness probe, logs and exec through real kubectl, Pod-to-Pod traffic
//! across nodes by IP, restart back-off, a missing image, graceful
//! deletion, adoption of running containers after the agent is killed,
//! and no leftovers after deletes.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs two nodes, etcd and containerd.
const LONG: Duration = Duration::from_secs(120);

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

/// Runs kubectl with `input` on its stdin (then closed); fails the test
/// if it has not finished within [`LONG`].
fn kubectl_with_stdin(
    k: &Path,
    kubeconfig: &Path,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running kubectl");
    let mut stdin = child.stdin.take().expect("kubectl stdin");
    stdin.write_all(input).expect("writing kubectl's stdin");
    drop(stdin);
    let deadline = std::time::Instant::now() + LONG;
    while child.try_wait().expect("waiting for kubectl").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().expect("kubectl output");
            panic!(
                "kubectl {args:?} did not finish within {LONG:?}: {}",
                text(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("kubectl output")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Container ids known to a node's containerd (`ctr`, over its socket).
fn containers_of(node: &NodeProc) -> Vec<String> {
    let sock = node.data_dir().join("agent/containerd/containerd.sock");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["-n", "k8s.io", "containers", "ls", "-q"])
        .output()
        .expect("running ctr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// IPs host-local still holds for a node's pods.
fn reserved_ips(node: &NodeProc) -> Vec<String> {
    let dir = node.data_dir().join("agent/cni/networks/rke2-pods");
    std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn pod(pods: &Api<Pod>, name: &str) -> Option<Pod> {
    pods.get_opt(name).await.ok().flatten()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn container_status(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_across_two_nodes() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let ha = bed.add_host("a1").unwrap();
    let common = format!("token: pods-secret\npause-image: {TEST_PAUSE_IMAGE}\n");
    // No bundled addons: their images are not in the folder, and this
    // test counts every container and pod IP.
    let server_cfg = format!(
        "{common}disable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &server_cfg, &[]).unwrap();
    let agent_cfg = format!("server: https://{}:9345\n{common}", hs.ip);
    let mut a1 = NodeProc::new(&bed, bin(), &ha, "agent", &agent_cfg, &[]).unwrap();
    // The air-gap folder is filled before the nodes start.
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

    // Both nodes Ready, each with its own pod CIDR and the runtime named.
    let nodes: Api<Node> = Api::all(client.clone());
    let cidrs = eventually(LONG, "two Ready nodes with pod CIDRs", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let mut cidrs = Vec::new();
        for n in &list.items {
            let st = n.status.as_ref()?;
            let ready = st
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let rt = st.node_info.as_ref()?.container_runtime_version.clone();
            if !ready || !rt.starts_with("containerd://") {
                return None;
            }
            cidrs.push(n.spec.as_ref()?.pod_cidr.clone()?);
        }
        (cidrs.len() == 2).then_some(cidrs)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    assert_ne!(cidrs[0], cidrs[1], "each node has its own pod CIDR");
    // Traffic leaving the cluster's pod network is masqueraded, on each node.
    for h in [&hs, &ha] {
        let rules = || {
            let mut cmd = bed.command_in(h, "iptables").unwrap();
            cmd.args(["-t", "nat", "-S", "POSTROUTING"]);
            String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
        };
        eventually(LONG, "the pod egress masquerade rule", || async {
            let r = rules();
            (r.contains("rke2 pod egress") && r.contains("! -d 10.42.0.0/16")).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}: {}", h.name, rules()));
    }

    // A Deployment of the busybox image: an HTTP server that is Ready
    // only once /tmp/ready exists (a readiness probe gates Ready).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": TEST_BUSYBOX_IMAGE,
                        "command": ["sh", "-c", "mkdir -p /www && echo \"hello from $POD_NAME on $NODE\" > /www/index.html && echo started $POD_NAME && exec httpd -f -p 8080 -h /www"],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                        ],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
                        // These must pass, or the restart counts checked
                        // below would grow.
                        "startupProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
                        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2}
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = eventually(LONG, "two web pods Running on two nodes", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        let nodes: std::collections::BTreeSet<_> = running
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        (running.len() == 2 && nodes.len() == 2).then_some(running)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", a1.log()));
    let names: Vec<String> = running
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let ips: Vec<String> = running
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    for (p, ip) in running.iter().zip(&ips) {
        let st = p.status.as_ref().unwrap();
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
        let node_ip = if node == "s1" { hs.ip } else { ha.ip };
        assert_eq!(st.host_ip.as_deref(), Some(node_ip.to_string().as_str()));
        let net: ipnet::Ipv4Net = nodes
            .get(&node)
            .await
            .unwrap()
            .spec
            .unwrap()
            .pod_cidr
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            net.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "pod IP {ip} in {net}"
        );
        // Not Ready while the probe fails.
        assert!(
            !ready(p),
            "{} is Ready before its probe passes",
            p.metadata.name.as_deref().unwrap()
        );
    }

    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();
    // exec (WebSocket v5 through the apiserver to the node) opens the gate.
    for n in &names {
        let o = kubectl(&k, &kubeconfig, &["exec", n, "--", "touch", "/tmp/ready"]);
        assert!(o.status.success(), "exec touch: {}", text(&o));
    }
    for n in &names {
        eventually(LONG, "pod Ready after the probe passes", || async {
            pod(&pods, n).await.filter(ready).map(|_| ())
        })
        .await
        .unwrap();
    }
    eventually(LONG, "deployment available", || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.available_replicas? == 2).then_some(())
    })
    .await
    .unwrap();

    // The addon image: no tarball holds it and no registry serves it; the
    // agent makes it from its own binary when a pod first needs it.
    let addon_ref = rke2_runtime::addon_image::reference();
    let addon_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "addon-image"},
        "spec": {
            "nodeName": "a1",
            "restartPolicy": "Never",
            "containers": [{"name": "rke2", "image": addon_ref, "args": ["--version"]}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &addon_pod)
        .await
        .unwrap();
    eventually(LONG, "the addon image's pod Succeeded", || async {
        let p = pod(&pods, "addon-image").await?;
        (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let o = kubectl(&k, &kubeconfig, &["describe", "pod", "addon-image"]);
        panic!("{e}\n{}\nagent log:\n{}", text(&o), a1.log())
    });
    let o = kubectl(&k, &kubeconfig, &["logs", "addon-image"]);
    assert!(
        text(&o).contains(&format!("(rke2-rs {})", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&o)
    );
    pods.delete("addon-image", &Default::default())
        .await
        .unwrap();

    // Pod-to-Pod across nodes, by IP (busybox nc: the static busybox's
    // wget needs glibc's NSS modules, which an image of one binary lacks).
    for (from, to) in [(0, 1), (1, 0)] {
        let get = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 8080",
            ips[to]
        );
        let o = kubectl(
            &k,
            &kubeconfig,
            &["exec", &names[from], "--", "sh", "-c", &get],
        );
        assert!(
            text(&o).contains(&format!("hello from {}", names[to])),
            "{} -> {}: {}",
            names[from],
            ips[to],
            text(&o)
        );
    }

    // Exit codes and stdin-less output through exec.
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "exec",
            &names[0],
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err"));
    // Piped stdin ends: `kubectl exec -i ... < file` finishes with the
    // file, with every kubectl (1.29 over SPDY, passed through to the
    // runtime; later ones over WebSocket v5, relayed to it over SPDY).
    for (minor, kv) in rke2_testbed::kubectls().unwrap() {
        let o = kubectl(
            &kv,
            &kubeconfig,
            &["exec", &names[0], "--", "sh", "-c", "echo out; exit 4"],
        );
        assert_eq!(
            o.status.code(),
            Some(4),
            "kubectl 1.{minor} exec: {}",
            text(&o)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "out\n",
            "kubectl 1.{minor}"
        );
        let o = kubectl_with_stdin(
            &kv,
            &kubeconfig,
            &["exec", "-i", &names[0], "--", "wc", "-l"],
            b"one\ntwo\nthree\n",
        );
        assert!(
            o.status.success(),
            "kubectl 1.{minor} exec -i: {}",
            text(&o)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "3",
            "kubectl 1.{minor}"
        );
    }

    // Logs with every installed kubectl.
    for (_, kv) in rke2_testbed::kubectls().unwrap() {
        let o = kubectl(&kv, &kubeconfig, &["logs", &names[1]]);
        assert!(
            text(&o).contains(&format!("started {}", names[1])),
            "{}: {}",
            kv.display(),
            text(&o)
        );
    }

    // The startup (httpGet) and liveness (tcpSocket) probes pass: nothing
    // was restarted, and both containers count as started.
    for n in &names {
        let cs = container_status(&pod(&pods, n).await.unwrap()).unwrap();
        assert_eq!(cs.restart_count, 0, "{n} restarted: {cs:?}");
        assert_eq!(cs.started, Some(true), "{n}: {cs:?}");
    }

    // Restart back-off, logs --previous, exit codes in the status.
    let crash: Pod = serde_json::from_value(json!({
        "metadata": {"name": "crash"},
        "spec": {"containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE,
            "command": ["sh", "-c", "echo attempt; exit 7"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &crash).await.unwrap();
    let st = eventually(
        LONG,
        "crash pod in CrashLoopBackOff after a restart",
        || async {
            let cs = container_status(&pod(&pods, "crash").await?)?;
            let waiting = cs.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            (cs.restart_count >= 1 && waiting == "CrashLoopBackOff").then_some(cs)
        },
    )
    .await
    .unwrap();
    let last = st.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 7);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    let o = kubectl(&k, &kubeconfig, &["logs", "crash", "--previous"]);
    assert!(text(&o).contains("attempt"), "{}", text(&o));
    // The back-off holds the next start for ~10 s: the count does not jump.
    let before = st.restart_count;
    tokio::time::sleep(Duration::from_secs(3)).await; // an observation window, not synchronisation
    let now = container_status(&pod(&pods, "crash").await.unwrap())
        .unwrap()
        .restart_count;
    assert!(
        now <= before + 1,
        "restarts {before} -> {now} within 3 s: no back-off"
    );

    // A pod that finishes: Succeeded, its log still readable afterwards.
    let done: Pod = serde_json::from_value(json!({
        "metadata": {"name": "done"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE,
            "command": ["sh", "-c", "echo finished work"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &done).await.unwrap();
    eventually(LONG, "done Succeeded", || async {
        let p = pod(&pods, "done").await?;
        (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await
    .unwrap();
    let o = eventually(LONG, "logs of a finished pod", || async {
        let o = kubectl(&k, &kubeconfig, &["logs", "done"]);
        o.status.success().then_some(o)
    })
    .await
    .unwrap();
    assert!(text(&o).contains("finished work"), "{}", text(&o));

    // A command that does not exist, and an image that is nowhere.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "nocmd"},
        "spec": {"containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["/no/such/binary"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &bad).await.unwrap();
    let missing: Pod = serde_json::from_value(json!({
        "metadata": {"name": "noimage"},
        "spec": {"containers": [{"name": "c", "image": "rke2.test/missing:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &missing).await.unwrap();
    let (reason, msg) = eventually(LONG, "nocmd waiting with the runtime's message", || async {
        let w = container_status(&pod(&pods, "nocmd").await?)?
            .state?
            .waiting?;
        let r = w.reason?;
        (r == "RunContainerError" || r == "CrashLoopBackOff")
            .then_some((r, w.message.unwrap_or_default()))
    })
    .await
    .unwrap();
    assert!(
        reason == "CrashLoopBackOff" || msg.contains("/no/such/binary"),
        "{reason}: {msg}"
    );
    let msg = eventually(
        LONG,
        "noimage waiting in ErrImagePull/ImagePullBackOff",
        || async {
            let w = container_status(&pod(&pods, "noimage").await?)?
                .state?
                .waiting?;
            let r = w.reason?;
            (r == "ErrImagePull" || r == "ImagePullBackOff")
                .then_some(w.message.unwrap_or_default())
        },
    )
    .await
    .unwrap();
    assert!(msg.contains("rke2.test/missing:1"), "{msg}");

    // The agent's node role is killed and restarted: its running pod is
    // adopted (same container, no restart), not started again.
    let on_agent = running
        .iter()
        .find(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("a1"))
        .unwrap()
        .metadata
        .name
        .clone()
        .unwrap();
    let cid = container_status(&pod(&pods, &on_agent).await.unwrap())
        .unwrap()
        .container_id
        .unwrap();
    a1.kill9();
    a1.start(&bed).unwrap();
    eventually(LONG, "agent back (node API answers exec)", || async {
        let o = kubectl(&k, &kubeconfig, &["exec", &on_agent, "--", "true"]);
        o.status.success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a1.log()));
    let cs = container_status(&pod(&pods, &on_agent).await.unwrap()).unwrap();
    assert_eq!(
        cs.container_id.as_deref(),
        Some(cid.as_str()),
        "container replaced after agent restart"
    );
    assert_eq!(cs.restart_count, 0);
    assert!(
        a1.log().contains("adopted running pod sandbox"),
        "{}",
        a1.log()
    );

    // The agent's air-gap folder, while it runs: a corrupt tarball is
    // named in the log, a new image is imported without a restart.
    let images = a1.data_dir().join("agent/images");
    std::fs::write(images.join("broken.tar"), b"this is not a tarball").unwrap();
    rke2_testbed::make_image(&images.join("late.tar"), "rke2.test/late:1", false).unwrap();
    eventually(
        LONG,
        "the corrupt tarball named in the agent log",
        || async {
            let log = a1.log();
            (log.contains("broken.tar") && log.contains("image tarball not imported")).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a1.log()));

    // Init container, emptyDir, configMap/secret volumes and env,
    // downward API, hostPath and a liveness probe, with the late image.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "settings"},
            "data": {"greeting": "hi there", "file.txt": "from a configmap"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "creds"},
                "stringData": {"password": "s3cret"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let host_dir = bed.dir().join("a1-host");
    let features: Pod = serde_json::from_value(json!({
        "metadata": {"name": "features"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "a1"},
            "terminationGracePeriodSeconds": 2,
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "proj", "projected": {"sources": [
                    {"configMap": {"name": "settings", "items": [{"key": "greeting", "path": "g.txt"}]}},
                    {"secret": {"name": "creds", "items": [{"key": "password", "path": "p.txt"}]}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                ]}},
                {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "sec", "secret": {"secretName": "creds"}},
                {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "host", "hostPath": {"path": host_dir.display().to_string(), "type": "DirectoryOrCreate"}}
            ],
            "initContainers": [{"name": "init", "image": "rke2.test/late:1",
                "command": ["sh", "-c", "echo from-init > /work/init.txt"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "main", "image": "rke2.test/late:1",
                "command": ["sh", "-c", "cat /work/init.txt /cfg/file.txt /sec/password /info/name; echo; echo GREETING=$GREETING PASSWORD=$PASSWORD; echo x > /host/written; grep ' /mem tmpfs ' /proc/mounts | grep -q size=16384k && echo MEM=tmpfs16M; echo PROJ=$(cat /proj/g.txt)/$(cat /proj/p.txt)/$(cat /proj/ns); echo SETUP-DONE; touch /tmp/alive; exec sleep 3600"],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}
                ],
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "mem", "mountPath": "/mem"},
                    {"name": "proj", "mountPath": "/proj"},
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "sec", "mountPath": "/sec", "readOnly": true},
                    {"name": "info", "mountPath": "/info"},
                    {"name": "host", "mountPath": "/host"}
                ],
                "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2},
                "lifecycle": {
                    "postStart": {"exec": {"command": ["sh", "-c", "echo started >> /host/poststart"]}},
                    "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /host/prestop"]}}
                }}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &features)
        .await
        .unwrap();
    let p = eventually(LONG, "features pod Ready", || async {
        pod(&pods, "features").await.filter(ready)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a1.log()));
    let init = &p
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    let logs = eventually(LONG, "features logs complete", || async {
        let o = kubectl(&k, &kubeconfig, &["logs", "features", "-c", "main"]);
        let t = text(&o);
        t.contains("SETUP-DONE").then_some(t)
    })
    .await
    .unwrap();
    for want in [
        "from-init",
        "from a configmap",
        "s3cret",
        "features",
        "GREETING=hi there PASSWORD=s3cret",
        "MEM=tmpfs16M",
        "PROJ=hi there/s3cret/default",
    ] {
        assert!(logs.contains(want), "{want:?} missing in {logs}");
    }
    assert_eq!(
        std::fs::read_to_string(host_dir.join("written")).unwrap(),
        "x\n"
    );
    // The service-account volume the admission added: a token of
    // default/default bound to this pod, requested by the agent, the
    // cluster CA and the namespace.
    let sa_file = |f: &str| {
        let path = format!("/var/run/secrets/kubernetes.io/serviceaccount/{f}");
        let o = kubectl(
            &k,
            &kubeconfig,
            &["exec", "features", "-c", "main", "--", "cat", &path],
        );
        assert!(o.status.success(), "cat {path}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let token = sa_file("token");
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    assert_eq!(sa_file("namespace"), "default");
    let server_ca =
        std::fs::read_to_string(s1.data_dir().join("server/tls/server-ca.crt")).unwrap();
    assert_eq!(sa_file("ca.crt"), server_ca);
    let token_kc = s1.dir.join("features-token.yaml");
    rke2_testbed::token_kubeconfig(&kubeconfig, &token, &token_kc).unwrap();
    let whoami = || kubectl(&k, &token_kc, &["auth", "whoami", "-o", "json"]);
    let o = whoami();
    assert!(
        o.status.success(),
        "whoami with the pod's token: {}",
        text(&o)
    );
    let me: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:default:default"
    );
    assert!(
        std::fs::read_to_string(host_dir.join("poststart"))
            .unwrap_or_default()
            .contains("started"),
        "postStart hook did not run"
    );
    // Liveness: the probe's file goes, the container is restarted.
    let o = kubectl(
        &k,
        &kubeconfig,
        &["exec", "features", "-c", "main", "--", "rm", "/tmp/alive"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cs = eventually(
        LONG,
        "restarted after failing its liveness probe",
        || async {
            let cs = container_status(&pod(&pods, "features").await?)?;
            (cs.restart_count >= 1 && cs.state.as_ref()?.running.is_some()).then_some(cs)
        },
    )
    .await
    .unwrap();
    assert!(cs.last_state.unwrap().terminated.is_some());

    // containerd killed under the agent: it is restarted, the running
    // container is untouched, and new work still runs.
    let agent_pid = a1.pid().unwrap();
    let old = rke2_testbed::child_named(agent_pid, "containerd").expect("the agent's containerd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(LONG, "a new containerd under the agent", || async {
        rke2_testbed::child_named(agent_pid, "containerd").filter(|p| *p != old)
    })
    .await
    .unwrap();
    let cid = cs.container_id.clone().unwrap();
    eventually(
        LONG,
        "exec works again after the containerd restart",
        || async {
            let o = kubectl(
                &k,
                &kubeconfig,
                &["exec", "features", "-c", "main", "--", "true"],
            );
            o.status.success().then_some(())
        },
    )
    .await
    .unwrap();
    let now = container_status(&pod(&pods, "features").await.unwrap()).unwrap();
    assert_eq!(
        now.container_id.as_deref(),
        Some(cid.as_str()),
        "container replaced by a containerd restart"
    );
    // A pod deleted while it starts leaves nothing behind (checked below).
    let quick: Pod = serde_json::from_value(json!({
        "metadata": {"name": "quick"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "a1"},
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &quick).await.unwrap();
    eventually(LONG, "quick bound", || async {
        pod(&pods, "quick").await?.spec?.node_name.map(|_| ())
    })
    .await
    .unwrap();
    pods.delete("quick", &DeleteParams::default())
        .await
        .unwrap();
    pods.delete("features", &DeleteParams::default())
        .await
        .unwrap();
    // The node role killed while a pod starts, then restarted: the pod
    // runs, and after its delete nothing is left (checked below).
    let midstart: Pod = serde_json::from_value(json!({
        "metadata": {"name": "midstart"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "a1"}, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &midstart)
        .await
        .unwrap();
    eventually(LONG, "midstart bound", || async {
        pod(&pods, "midstart").await?.spec?.node_name.map(|_| ())
    })
    .await
    .unwrap();
    a1.kill9();
    a1.start(&bed).unwrap();
    let cs = eventually(
        LONG,
        "midstart running after the node role restart",
        || async {
            let cs = container_status(&pod(&pods, "midstart").await?)?;
            cs.state.as_ref()?.running.as_ref()?;
            Some(cs)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a1.log()));
    // containerd dies with the node role (parent-death signal): a kill
    // that lands inside its StartContainer leaves that attempt exited, and
    // the restarted node runs the next one, as kubelet would after a
    // runtime crash. Never more than that one.
    assert!(
        cs.restart_count <= 1,
        "midstart restarted {} times after one node role restart",
        cs.restart_count
    );
    pods.delete("midstart", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        LONG,
        "the preStop hook of the deleted features pod ran",
        || async {
            std::fs::read_to_string(host_dir.join("prestop"))
                .ok()
                .filter(|t| t.contains("stopping"))
        },
    )
    .await
    .unwrap();

    // Graceful deletion, then nothing left: containers, pod dirs, IPs.
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    for n in ["crash", "nocmd", "noimage", "done"] {
        pods.delete(n, &DeleteParams::default()).await.unwrap();
    }
    eventually(LONG, "every pod gone", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await
    .unwrap();
    // The features pod is gone, and with it its token.
    let o = whoami();
    assert!(
        !o.status.success() && text(&o).contains("Unauthorized"),
        "the token of a deleted pod still works: {}",
        text(&o)
    );
    for node in [&s1, &a1] {
        let name = node.host.name.clone();
        eventually(LONG, "no containers, pod dirs or pod IPs left", || async {
            let c = containers_of(node);
            let ips = reserved_ips(node);
            // Pod network namespaces are pinned here
            // (netns_mounts_under_state_dir).
            let netns: Vec<PathBuf> = std::fs::read_dir(
                node.data_dir()
                    .join("agent/containerd/state/io.containerd.grpc.v1.cri/netns"),
            )
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
            let dirs: Vec<PathBuf> = std::fs::read_dir(node.data_dir().join("agent/pods"))
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            (c.is_empty() && ips.is_empty() && dirs.is_empty() && netns.is_empty()).then_some(())
        })
        .await
        .unwrap_or_else(|e| {
            let list = |d: PathBuf| -> Vec<PathBuf> {
                std::fs::read_dir(d)
                    .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                    .unwrap_or_default()
            };
            panic!(
                "{name}: {e}: containers {:?}, ips {:?}, netns {:?}, pod dirs {:?}\n{}",
                containers_of(node),
                reserved_ips(node),
                list(
                    node.data_dir()
                        .join("agent/containerd/state/io.containerd.grpc.v1.cri/netns")
                ),
                list(node.data_dir().join("agent/pods")),
                node.log()
            )
        });
    }
    drop(bed);
}
