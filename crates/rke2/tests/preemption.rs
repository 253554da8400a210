//! Priorities and preemption for real (one server that is also the node,
//! its containerd running the pods; real kubectl): PriorityClass bad input
//! refused with upstream's messages, `kubectl get pc` columns, the
//! Priority admission of pods, and a high-priority pod preempting a
//! low-priority one on a node whose CPU is full — `nominatedNodeName`,
//! the victim's `DisruptionTarget` condition and `Preempted` event, the
//! preemptor Running, the pod a PodDisruptionBudget protects spared —
//! while a pod with `preemptionPolicy: Never` waits.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs the node, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);

/// Runs kubectl with `stdin` as its standard input; stdout+stderr and
/// whether it succeeded.
fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// CPU in millicores (`2`, `1500m`, `0.5`).
fn millicpu(q: &str) -> i64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0) as i64,
    }
}

fn pod_cpu(p: &Pod) -> i64 {
    p.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
                .map(|q| millicpu(&q.0))
                .sum()
        })
        .unwrap_or(0)
}

fn sleeper(name: &str, class: &str, cpu_m: i64, grace: i64) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"test": "preemption", "app": name}},
        "spec": {
            "priorityClassName": class,
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "c", "image": TEST_BUSYBOX_IMAGE,
                "command": ["sh", "-c", "while true; do sleep 1; done"],
                "resources": {"requests": {"cpu": format!("{cpu_m}m")}},
            }],
        },
    }))
    .unwrap()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn scheduled_message(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
        .message
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_a_low_one_on_a_full_node() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: prio-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
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
    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually(LONG, "a Ready node", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let node_name = node.metadata.name.clone().unwrap();
    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // The system classes exist from the start; `kubectl get pc` prints
    // upstream's columns.
    let (ok, out) = kubectl(&k, &kubeconfig, &["get", "pc"], "");
    assert!(ok, "{out}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"],
        "{out}"
    );
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let cells = row("system-node-critical");
    assert_eq!(&cells[1..3], ["2000001000", "false"], "{out}");
    assert_eq!(cells[4], "PreemptLowerPriority", "{out}");
    assert_eq!(&row("system-cluster-critical")[1..2], ["2000000000"]);
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["delete", "pc", "system-node-critical"],
        "",
    );
    assert!(!ok);
    assert!(
        out.contains("Error from server (Forbidden): priorityclasses.scheduling.k8s.io \"system-node-critical\" is forbidden: this is a system priority class and cannot be deleted"),
        "{out}"
    );

    // Bad input: upstream's statuses and messages, nothing stored.
    let pc = |name: &str, extra: &str| {
        format!(
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {name}\n{extra}"
        )
    };
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["create", "-f", "-"],
        &pc("system-mine", "value: 5\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("The PriorityClass \"system-mine\" is invalid: metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class"),
        "{out}"
    );
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["create", "-f", "-"],
        &pc("too-high", "value: 1000000001\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("The PriorityClass \"too-high\" is invalid: value: Forbidden: maximum allowed value of a user defined priority is 1000000000"),
        "{out}"
    );
    for (name, extra) in [
        ("low", "value: 10\n"),
        ("high", "value: 1000\n"),
        ("high-never", "value: 1000\npreemptionPolicy: Never\n"),
        ("default-one", "value: 5\nglobalDefault: true\n"),
    ] {
        let (ok, out) = kubectl(&k, &kubeconfig, &["create", "-f", "-"], &pc(name, extra));
        assert!(ok, "{name}: {out}");
    }
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["create", "-f", "-"],
        &pc("default-two", "value: 6\nglobalDefault: true\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("Error from server (Forbidden)")
            && out.contains("priorityclasses.scheduling.k8s.io \"default-two\" is forbidden: PriorityClass default-one is already marked as default. Only one default can exist"),
        "{out}"
    );
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["patch", "pc", "low", "-p", "{\"value\": 11}"],
        "",
    );
    assert!(!ok);
    assert!(
        out.contains("The PriorityClass \"low\" is invalid: value: Forbidden: may not be changed in an update."),
        "{out}"
    );
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["get", "pc", "too-high", "system-mine", "default-two"],
        "",
    );
    assert!(!ok && out.matches("NotFound").count() == 3, "{out}");

    // Priority admission: the class gives priority and policy; the
    // global default applies to a pod without class; an unknown class and
    // a disagreeing priority are refused (403).
    let pod_yaml = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra}  containers:\n  - name: c\n    image: {TEST_BUSYBOX_IMAGE}\n"
        )
    };
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["create", "-f", "-"],
        &pod_yaml("unknown", "  priorityClassName: foo\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("Error from server (Forbidden)")
            && out.contains(
                "pods \"unknown\" is forbidden: no PriorityClass with name foo was found"
            ),
        "{out}"
    );
    let (ok, out) = kubectl(
        &k,
        &kubeconfig,
        &["create", "-f", "-"],
        &pod_yaml("disagrees", "  priorityClassName: low\n  priority: 7\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("pods \"disagrees\" is forbidden: the integer value of priority (7) must not be provided in pod spec; priority admission controller computed 10 from the given PriorityClass name"),
        "{out}"
    );
    let admitted = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &serde_json::from_value(json!({
                "metadata": {"name": "defaulted"},
                "spec": {"containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let spec = admitted.spec.unwrap();
    assert_eq!(spec.priority_class_name.as_deref(), Some("default-one"));
    assert_eq!(spec.priority, Some(5));
    assert_eq!(
        spec.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );
    let (ok, out) = kubectl(&k, &kubeconfig, &["delete", "pc", "default-one"], "");
    assert!(ok, "{out}");

    // Fill the node's CPU with two low-priority pods.
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("cpu"))
        .map(|q| millicpu(&q.0))
        .unwrap();
    let all_pods: Api<Pod> = Api::all(client.clone());
    let used: i64 = all_pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .map(pod_cpu)
        .sum();
    let half = (allocatable - used) / 2;
    assert!(half > 100, "allocatable {allocatable}m, used {used}m");
    for name in ["low-a", "low-b"] {
        pods.create(&PostParams::default(), &sleeper(name, "low", half, 3))
            .await
            .unwrap();
    }
    for name in ["low-a", "low-b"] {
        eventually(LONG, &format!("{name} Running"), || async {
            let p = pods.get(name).await.ok()?;
            (phase(&p) == "Running").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    }

    // `preemptionPolicy: Never`: the pod waits, nothing is preempted.
    pods.create(
        &PostParams::default(),
        &sleeper("never", "high-never", half, 1),
    )
    .await
    .unwrap();
    let message = eventually(LONG, "never unschedulable", || async {
        scheduled_message(&pods.get("never").await.ok()?)
    })
    .await
    .unwrap();
    assert_eq!(
        message,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    );
    let never = pods.get("never").await.unwrap();
    assert_eq!(never.spec.as_ref().unwrap().priority, Some(1000));
    assert!(never.status.as_ref().unwrap().nominated_node_name.is_none());
    for name in ["low-a", "low-b"] {
        let p = pods.get(name).await.unwrap();
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{name} was preempted by a Never pod"
        );
    }
    pods.delete("never", &Default::default()).await.unwrap();
    eventually(LONG, "never gone", || async {
        pods.get_opt("never").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();

    // A budget protects low-b: without it, low-b would be the victim (of
    // equal priorities, upstream's order puts back first the one that
    // started earlier, low-a, or in the same second the first name).
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    pdbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "keep-b"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "low-b"}}},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    eventually(LONG, "the budget's status", || async {
        let st = pdbs.get("keep-b").await.ok()?.status?;
        (st.current_healthy == 1 && st.disruptions_allowed == 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));

    // A high-priority pod preempts one of them.
    let high = pods
        .create(&PostParams::default(), &sleeper("high", "high", half, 1))
        .await
        .unwrap();
    let high_uid = high.metadata.uid.clone().unwrap();
    // The victim is marked before it goes (its grace period is 3 s).
    let (victim, condition) = eventually(LONG, "a victim marked DisruptionTarget", || async {
        for name in ["low-a", "low-b"] {
            let Ok(Some(p)) = pods.get_opt(name).await else {
                continue;
            };
            let c = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget"))
                .cloned();
            if let Some(c) = c {
                return Some((name.to_string(), c));
            }
        }
        None
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(victim, "low-a", "the budget of low-b was not respected");
    assert_eq!(condition.status, "True");
    assert_eq!(condition.reason.as_deref(), Some("PreemptionByScheduler"));
    assert_eq!(
        condition.message.as_deref(),
        Some("default-scheduler: preempting to accommodate a higher priority pod")
    );
    let nominated = eventually(LONG, "nominatedNodeName", || async {
        pods.get("high")
            .await
            .ok()?
            .status?
            .nominated_node_name
            .filter(|n| !n.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(nominated, node_name);
    eventually(LONG, "the victim gone", || async {
        pods.get_opt(&victim).await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    eventually(LONG, "high Running", || async {
        let p = pods.get("high").await.ok()?;
        (phase(&p) == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let survivor = if victim == "low-a" { "low-b" } else { "low-a" };
    let s = pods.get(survivor).await.unwrap();
    assert_eq!(phase(&s), "Running");
    assert!(
        s.metadata.deletion_timestamp.is_none(),
        "only one victim was needed"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let preempted = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={victim}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("Preempted"))
        .unwrap_or_else(|| panic!("no Preempted event for {victim}"));
    assert_eq!(
        preempted.message.as_deref(),
        Some(format!("Preempted by pod {high_uid} on node {node_name}").as_str())
    );
    assert_eq!(preempted.type_.as_deref(), Some("Normal"));

    for name in ["high", survivor] {
        pods.delete(name, &Default::default()).await.unwrap();
    }
    pdbs.delete("keep-b", &Default::default()).await.unwrap();
    for name in ["low", "high", "high-never"] {
        let (ok, out) = kubectl(&k, &kubeconfig, &["delete", "pc", name], "");
        assert!(ok, "{out}");
    }
    drop(s1);
    drop(bed);
}
