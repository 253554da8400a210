//! Node-pressure eviction on a real node (one server in its own network
//! namespace): with `kubelet-arg: [eviction-hard=memory.available<X]`, X
//! set 3 GiB below what the machine has free now, a BestEffort pod that
//! fills 5 GiB of a memory-backed emptyDir puts the node under memory
//! pressure (`MemoryPressure=True` on the Node); the node evicts that pod
//! (phase Failed, reason `Evicted`, kubelet's message, a `DisruptionTarget`
//! condition) and not the Burstable and Guaranteed pods beside it, which
//! keep running; the pressure then ends. A bad `eviction-hard` is refused
//! at start with exit 2.
//!
//! Then disk pressure without filling the disk: the server restarts with
//! `eviction-hard=nodefs.available<Y%`, Y a little above the share of
//! its filesystem free now (read with statvfs); `DiskPressure=True`, the
//! `EvictionThresholdMet` event on the Node, and a BestEffort pod that
//! wrote 64 MiB into a disk-backed emptyDir is evicted for
//! ephemeral-storage before any other pod. The Node reports
//! `capacity.ephemeral-storage` and an allocatable less the thresholds.
//! Under that disk pressure a pod bound to the node is refused at
//! admission (`Pod was rejected: The node had condition:
//! [DiskPressure]. `) and a `system-node-critical` one is admitted.
//!
//! In the memory part the node also has `kube-reserved` and
//! `system-reserved`, which its allocatable cpu, memory and
//! ephemeral-storage leave out (a bad one is refused at start with exit
//! 2), and a pod writing 4 MiB into an emptyDir of `sizeLimit: 1Mi` is
//! evicted with kubelet's message.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh) and 6 GiB of free memory.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

const LONG: Duration = Duration::from_secs(180);

fn mem_available_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .unwrap();
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn memory_pressure(n: &Node) -> Option<String> {
    condition(n, "MemoryPressure")
}

fn condition(n: &Node, t: &str) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

/// The share of `path`'s filesystem free for unprivileged use, percent
/// (kubelet's `nodefs.available` against the size).
fn free_percent(path: &Path) -> f64 {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %b"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    v[0] * 100.0 / v[1]
}

fn disruption_time(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .and_then(|c| c.last_transition_time.as_ref())
        .and_then(|t| serde_json::to_value(t).ok()?.as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_evicts_best_effort_first() {
    let free = mem_available_mib();
    assert!(
        free > 6 * 1024,
        "this test needs 6 GiB of free memory (MemAvailable is {free} MiB)"
    );
    let threshold = format!("{}Mi", free - 3 * 1024);

    // Bad input first: refused at load, nothing started.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "kubelet-arg: [\"eviction-hard=memory.available>1Gi\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["server", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("kubelet-arg") && err.contains("invalid eviction threshold syntax"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing written");
    std::fs::write(&cfg, "kubelet-arg: [\"kube-reserved=memory=lots\"]\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["server", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("kube-reserved: failed to parse quantity \"lots\" for \"memory\" resource"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing written");

    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: eviction-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n  - rke2-coredns\nkubelet-arg:\n  - eviction-hard=memory.available<{threshold}\n  - eviction-pressure-transition-period=0s\n  - kube-reserved=cpu=500m,memory=1Gi,ephemeral-storage=1Gi,pid=100\n  - system-reserved=memory=512Mi\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc = s1.dir.join("rke2.yaml");
    eventually(LONG, "kubeconfig", || async { kc.exists().then_some(()) })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubeconfig = s1.kubeconfig_at_ip().unwrap();
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "the node without memory pressure", || async {
        let n = nodes.get_opt("s1").await.ok()??;
        (memory_pressure(&n).as_deref() == Some("False")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sleeper = |name: &str, resources: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"],
                "resources": resources}]}
        }))
        .unwrap()
    };
    for p in [
        sleeper(
            "guaranteed",
            json!({"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"cpu": "10m", "memory": "64Mi"}}),
        ),
        sleeper("burstable", json!({"requests": {"memory": "16Mi"}})),
    ] {
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    eventually(LONG, "the two pods running", || async {
        let g = pods.get("guaranteed").await.ok()?;
        let b = pods.get("burstable").await.ok()?;
        (phase(&g) == "Running" && phase(&b) == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));

    // The hog: 5 GiB in a memory-backed emptyDir, then it waits.
    let hog: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hog"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "fill", "emptyDir": {"medium": "Memory"}}],
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE,
                "command": ["sh", "-c", "dd if=/dev/zero of=/fill/f bs=1048576 count=5120; sleep 3600"],
                "volumeMounts": [{"name": "fill", "mountPath": "/fill"}]}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &hog).await.unwrap();
    assert_eq!(
        created.status.and_then(|s| s.qos_class).as_deref(),
        Some("BestEffort")
    );
    eventually(LONG, "MemoryPressure=True on the node", || async {
        let n = nodes.get("s1").await.ok()?;
        (memory_pressure(&n).as_deref() == Some("True")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let evicted = eventually(LONG, "the hog evicted", || async {
        let p = pods.get("hog").await.ok()?;
        (phase(&p) == "Failed").then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let st = evicted.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    let message = st.message.unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: memory. Threshold quantity: {threshold}, available: "
        )) && message.contains("Container c was using "),
        "{message}"
    );
    let target = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("a DisruptionTarget condition");
    assert_eq!(target.reason.as_deref(), Some("TerminationByKubelet"));
    // The memory is back: the pressure ends, the others ran through it.
    eventually(LONG, "MemoryPressure=False again", || async {
        let n = nodes.get("s1").await.ok()?;
        (memory_pressure(&n).as_deref() == Some("False")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    for name in ["guaranteed", "burstable"] {
        let p = pods.get(name).await.unwrap();
        assert_eq!(phase(&p), "Running", "{name} kept");
        let restarts = p.status.unwrap().container_statuses.unwrap()[0].restart_count;
        assert_eq!(restarts, 0, "{name} never restarted");
    }
    // The node's pressure taint, if the lifecycle loop set it, is gone.
    eventually(LONG, "no memory-pressure taint", || async {
        let n = nodes.get("s1").await.ok()?;
        let tainted = n
            .spec?
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/memory-pressure");
        (!tainted).then_some(())
    })
    .await
    .unwrap();

    // The node reports its filesystem and what the thresholds hold back.
    let n = nodes.get("s1").await.unwrap();
    let st = n.status.clone().unwrap();
    let cap = st.capacity.clone().unwrap();
    let alloc = st.allocatable.clone().unwrap();
    assert!(
        cap.contains_key("ephemeral-storage") && cap["ephemeral-storage"].0 != "0",
        "{cap:?}"
    );
    let bytes = |q: &str| {
        rke2_apimachinery::quantity::parse_quantity(q)
            .unwrap()
            .value()
    };
    assert_eq!(
        bytes(&cap["memory"].0) - bytes(&alloc["memory"].0),
        bytes(&threshold) + (1 << 30) + (512 << 20),
        "allocatable memory is the capacity less kube-reserved, system-reserved and the hard threshold"
    );
    let milli = |q: &str| {
        rke2_apimachinery::quantity::parse_quantity(q)
            .unwrap()
            .as_milli()
    };
    assert_eq!(
        milli(&cap["cpu"].0) - milli(&alloc["cpu"].0),
        500,
        "allocatable cpu is the capacity less kube-reserved: {cap:?} {alloc:?}"
    );
    // Only memory has a threshold here: the filesystem less kube-reserved.
    assert_eq!(
        bytes(&cap["ephemeral-storage"].0) - bytes(&alloc["ephemeral-storage"].0),
        1 << 30
    );

    // Local storage limits: an emptyDir written past its sizeLimit gets
    // its pod evicted at once, with kubelet's message and no
    // DisruptionTarget condition (no node pressure here).
    let overflow: Pod = serde_json::from_value(json!({
        "metadata": {"name": "overflow"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Mi"}}],
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE,
                "command": ["sh", "-c", "dd if=/dev/zero of=/v/f bs=1048576 count=4; sleep 3600"],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &overflow)
        .await
        .unwrap();
    let evicted = eventually(LONG, "the emptyDir over its limit evicted", || async {
        let p = pods.get("overflow").await.ok()?;
        (phase(&p) == "Failed").then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let st = evicted.status.clone().unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        st.message.as_deref(),
        Some("Usage of EmptyDir volume \"v\" exceeds the limit \"1Mi\". ")
    );
    assert_eq!(disruption_time(&evicted), None);
    pods.delete("overflow", &Default::default()).await.unwrap();

    // Disk pressure. A BestEffort pod writes 64 MiB into an emptyDir on
    // disk (it lives on; the other two have next to nothing on disk).
    let writer: Pod = serde_json::from_value(json!({
        "metadata": {"name": "writer"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "w", "image": TEST_BUSYBOX_IMAGE,
                "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1048576 count=64; sleep 3600"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &writer).await.unwrap();
    eventually(LONG, "the writer running", || async {
        let p = pods.get("writer").await.ok()?;
        (phase(&p) == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let scratch = s1.data_dir().join("agent/pods");
    eventually(LONG, "64 MiB written", || async {
        let out = std::process::Command::new("du")
            .args(["-s", "-m"])
            .arg(&scratch)
            .output()
            .ok()?;
        let mib: u64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        (mib >= 64).then_some(())
    })
    .await
    .unwrap();
    // A threshold 3 points above the free share now: met at once, whatever
    // else the machine writes meanwhile, without filling anything.
    let free = free_percent(&s1.data_dir());
    let pct = (free + 3.0).min(100.0).ceil();
    assert!(pct < 100.0, "the disk is almost empty ({free:.1}% free)");
    s1.kill9();
    std::fs::write(
        s1.dir.join("config.yaml"),
        format!(
            "token: eviction-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n  - rke2-coredns\nkubelet-arg:\n  - eviction-hard=nodefs.available<{pct}%\n"
        ),
    )
    .unwrap();
    s1.start(&bed).unwrap();
    eventually(LONG, "DiskPressure=True on the node", || async {
        let n = nodes.get("s1").await.ok()?;
        (condition(&n, "DiskPressure").as_deref() == Some("True")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let evicted = eventually(LONG, "the writer evicted", || async {
        let p = pods.get("writer").await.ok()?;
        (phase(&p) == "Failed").then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let st = evicted.status.clone().unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    let message = st.message.unwrap_or_default();
    assert!(
        message
            .starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: "),
        "{message}"
    );
    // The others go after it, if at all (one pod per period).
    let writer_at = disruption_time(&evicted).expect("a DisruptionTarget condition");
    for name in ["guaranteed", "burstable"] {
        let p = pods.get(name).await.unwrap();
        if phase(&p) != "Running" {
            let at = disruption_time(&p).unwrap_or_default();
            assert!(
                at > writer_at,
                "{name} evicted at {at}, the writer at {writer_at}"
            );
        }
    }
    // Admission under disk pressure: a pod bound to the node is refused
    // (it never starts); a critical one is admitted.
    let bound = |name: &str, priority_class: Option<&str>| -> Pod {
        let mut p = json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "s1", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE,
                    "command": ["sleep", "3600"],
                    "resources": {"requests": {"memory": "8Mi"}}}]}
        });
        if let Some(pc) = priority_class {
            p["spec"]["priorityClassName"] = json!(pc);
        }
        serde_json::from_value(p).unwrap()
    };
    pods.create(&PostParams::default(), &bound("late", None))
        .await
        .unwrap();
    let refused = eventually(LONG, "the late pod refused", || async {
        let p = pods.get("late").await.ok()?;
        (phase(&p) == "Failed").then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let st = refused.status.clone().unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        st.message.as_deref(),
        Some("Pod was rejected: The node had condition: [DiskPressure]. ")
    );
    assert!(
        st.container_statuses.unwrap_or_default().iter().all(|c| c
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_none()),
        "nothing of it ran"
    );
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    system
        .create(
            &PostParams::default(),
            &bound("critical-late", Some("system-node-critical")),
        )
        .await
        .unwrap();
    eventually(LONG, "the critical pod admitted and running", || async {
        let p = system.get("critical-late").await.ok()?;
        (phase(&p) == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    system
        .delete("critical-late", &Default::default())
        .await
        .unwrap();

    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    eventually(
        LONG,
        "the EvictionThresholdMet event on the Node",
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("EvictionThresholdMet")
                        && e.type_.as_deref() == Some("Warning")
                        && e.involved_object.kind.as_deref() == Some("Node")
                        && e.message.as_deref() == Some("Attempting to reclaim ephemeral-storage")
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    let n = nodes.get("s1").await.unwrap();
    let st = n.status.unwrap();
    let cap = bytes(&st.capacity.unwrap()["ephemeral-storage"].0);
    let alloc = bytes(&st.allocatable.unwrap()["ephemeral-storage"].0);
    let held = (cap as f64 * pct / 100.0) as i128;
    assert!(
        (cap - alloc - held).abs() <= 1024,
        "allocatable ephemeral-storage {alloc} = capacity {cap} less {pct}%"
    );
    drop(s1);
    drop(bed);
}
