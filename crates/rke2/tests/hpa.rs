//! HorizontalPodAutoscaling for real on one server in its own network
//! namespace (the bundled `rke2-metrics-server` scrapes the node at its
//! address): a Deployment whose pod burns CPU (busybox `sh` spinning,
//! 100m requested) is autoscaled with `kubectl autoscale
//! --cpu-percent=50 --min=1 --max=3`, scales up to 3 and, once the burn
//! is switched off (`kubectl set env BURN=0` rolls idle pods), back down
//! to 1 (a 10 s scale-down window set through `behavior`); `kubectl get
//! hpa` shows `cpu: N%/50%`, the events say why, the object reads the
//! same through `autoscaling/v1`. A second kubectl autoscales a
//! Deployment without CPU requests: `ScalingActive` False with upstream's
//! reason and message, `<unknown>/50%`. Bad input is refused with
//! upstream's messages.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd,
//! nftables (scripts/install.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::{Value, json};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs the node, etcd and containerd,
/// and the HPA syncs every 15 s on metrics scraped every 15 s.
const LONG: Duration = Duration::from_secs(300);

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn kubectl_stdin(
    k: &Path,
    kubeconfig: &Path,
    args: &[&str],
    input: &Value,
) -> std::process::Output {
    let mut child = Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
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

/// The cells of `name`'s row in a `kubectl get` table.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table.lines().skip(1).find_map(|l| {
        let cells: Vec<String> = l.split_whitespace().map(str::to_string).collect();
        (cells.first().map(String::as_str) == Some(name)).then_some(cells)
    })
}

/// The utilization shown in a TARGETS cell pair `cpu:` `N%/50%`.
fn current_percent(cells: &[String]) -> Option<i64> {
    let i = cells.iter().position(|c| c == "cpu:")?;
    cells
        .get(i + 1)?
        .split('/')
        .next()?
        .strip_suffix('%')?
        .parse()
        .ok()
}

fn deployment(name: &str, burn: bool, cpu_request: Option<&str>) -> Value {
    let mut container = json!({
        "name": "burn",
        "image": TEST_BUSYBOX_IMAGE,
        "command": ["sh", "-c", "if [ \"$BURN\" = 1 ]; then while :; do :; done; else exec sleep 100000; fi"],
        "env": [{"name": "BURN", "value": if burn { "1" } else { "0" }}],
    });
    if let Some(cpu) = cpu_request {
        container["resources"] = json!({"requests": {"cpu": cpu}});
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
            },
        },
    })
}

async fn replicas(deploys: &Api<Deployment>, name: &str) -> Option<i32> {
    deploys.get(name).await.ok()?.spec?.replicas
}

/// The events about HPA `name`: "reason: message" lines.
fn hpa_events(k: &Path, kubeconfig: &Path, name: &str) -> String {
    let o = kubectl(
        k,
        kubeconfig,
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.type} {.reason}: {.message}{\"\\n\"}{end}",
        ],
    );
    text(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_a_cpu_burner_up_and_back_down() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: hpa-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-coredns\n"
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
    eventually(LONG, "node Ready", || async {
        let n = nodes.get_opt("s1").await.ok()??;
        n.status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubectls = rke2_testbed::kubectls().unwrap();
    let (old_minor, old_k) = kubectls.first().unwrap().clone();
    let (new_minor, new_k) = kubectls.last().unwrap().clone();
    let kc = kubeconfig.clone();
    let diagnose = |k: &PathBuf| {
        let pods = kubectl(k, &kc, &["get", "pods", "-A", "-o", "wide"]);
        let hpa = kubectl(k, &kc, &["get", "hpa", "-o", "yaml"]);
        let top = kubectl(k, &kc, &["top", "pods"]);
        format!("{}\n{}\n{}", text(&pods), text(&hpa), text(&top))
    };

    // Bad input, through both versions: upstream's messages.
    let bad = |api: &str, spec: Value| json!({"apiVersion": api, "kind": "HorizontalPodAutoscaler", "metadata": {"name": "bad"}, "spec": spec});
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"});
    let cases = [
        (
            bad(
                "autoscaling/v2",
                json!({"scaleTargetRef": target, "minReplicas": 0, "maxReplicas": 3}),
            ),
            "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
        ),
        (
            bad(
                "autoscaling/v2",
                json!({"scaleTargetRef": target, "minReplicas": 4, "maxReplicas": 3}),
            ),
            "spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`",
        ),
        (
            bad("autoscaling/v2", json!({"maxReplicas": 3})),
            // kubectl prints several causes as a list.
            "* spec.scaleTargetRef.kind: Required value\n* spec.scaleTargetRef.name: Required value",
        ),
        (
            bad(
                "autoscaling/v1",
                json!({"scaleTargetRef": target, "maxReplicas": 3, "targetCPUUtilizationPercentage": 0}),
            ),
            "spec.targetCPUUtilizationPercentage: Invalid value: 0: must be greater than 0",
        ),
        (
            bad(
                "autoscaling/v2",
                json!({"scaleTargetRef": target, "maxReplicas": 3,
                "behavior": {"scaleDown": {"selectPolicy": "Most", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 0}]}}}),
            ),
            "spec.behavior.scaleDown.selectPolicy: Unsupported value: \"Most\": supported values: \"Disabled\", \"Max\", \"Min\"",
        ),
    ];
    for (body, want) in &cases {
        let o = kubectl_stdin(&new_k, &kubeconfig, &["create", "-f", "-"], body);
        let t = text(&o);
        assert!(!o.status.success(), "accepted: {body}\n{t}");
        assert!(
            t.contains("The HorizontalPodAutoscaler \"bad\" is invalid: ") && t.contains(want),
            "{body}\nwant {want}\ngot {t}"
        );
    }

    // The burner, and a Deployment without CPU requests.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    for (name, body) in [
        ("burn", deployment("burn", true, Some("100m"))),
        ("norequest", deployment("norequest", false, None)),
    ] {
        let d: Deployment = serde_json::from_value(body).unwrap();
        deploys
            .create(&PostParams::default(), &d)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }

    // The metrics pipeline: the addon Running, its APIService Available.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    eventually(LONG, "rke2-metrics-server Running and Ready", || async {
        let list = system
            .list(&ListParams::default().labels("app=rke2-metrics-server"))
            .await
            .ok()?;
        list.items.iter().any(running_ready).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", diagnose(&new_k), s1.log()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually(LONG, "the burner Running and Ready", || async {
        let list = pods
            .list(&ListParams::default().labels("app=burn"))
            .await
            .ok()?;
        list.items.iter().any(running_ready).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&new_k)));

    // kubectl autoscale with the oldest kubectl: which version it posts.
    let started = Instant::now();
    let o = kubectl(
        &old_k,
        &kubeconfig,
        &[
            "autoscale",
            "deploy/burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
            "-v=6",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "kubectl 1.{old_minor} autoscale: {t}");
    let posted = |version: &str| {
        let path =
            format!("/apis/autoscaling/{version}/namespaces/default/horizontalpodautoscalers");
        t.lines()
            .any(|l| l.contains("POST") && l.contains(&path) && l.contains("201"))
    };
    let (posted_v2, posted_v1) = (posted("v2"), posted("v1"));
    assert!(posted_v1 || posted_v2, "{t}");
    println!(
        "kubectl 1.{old_minor} autoscale posts autoscaling/{}",
        if posted_v2 { "v2" } else { "v1" }
    );
    // A short scale-down window, so the test is not 5 minutes long.
    let o = kubectl(
        &new_k,
        &kubeconfig,
        &[
            "patch",
            "hpa",
            "burn",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":10}}}}"#,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = kubectl(&new_k, &kubeconfig, &["get", "hpa", "burn", "-o", "json"]);
    let hpa: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
    );
    // Defaults filled in for the unset direction, as upstream.
    assert_eq!(
        hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"], 0,
        "{hpa}"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max",
        "{hpa}"
    );

    // Up to the maximum.
    eventually(LONG, "burn scaled up to 3", || async {
        (replicas(&deploys, "burn").await? == 3).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            diagnose(&new_k),
            hpa_events(&new_k, &kubeconfig, "burn")
        )
    });
    println!("scaled up {:?} after kubectl autoscale", started.elapsed());
    let events = hpa_events(&new_k, &kubeconfig, "burn");
    assert!(
        events.contains("Normal SuccessfulRescale: New size: 3; reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    for (minor, k) in [(old_minor, &old_k), (new_minor, &new_k)] {
        let table = eventually(LONG, "get hpa shows the burn above target", || async {
            let t = text(&kubectl(k, &kubeconfig, &["get", "hpa"]));
            let r = row(&t, "burn")?;
            (current_percent(&r)? > 50 && r.last_chunk::<4>()?[2] == "3").then_some(t)
        })
        .await
        .unwrap_or_else(|e| panic!("kubectl 1.{minor}: {e}\n{}", diagnose(k)));
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE"
            ],
            "{table}"
        );
        let r = row(&table, "burn").unwrap();
        assert_eq!(r[1], "Deployment/burn", "{table}");
        assert!(r[3].ends_with("/50%"), "{table}");
        assert_eq!(&r[4..7], ["1", "3", "3"], "{table}");
        println!("kubectl 1.{minor}:\n{table}");
    }
    let o = kubectl(&new_k, &kubeconfig, &["get", "hpa", "burn", "-o", "json"]);
    let hpa: Value = serde_json::from_slice(&o.stdout).unwrap();
    let conds = hpa["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cond = |ty: &str| {
        conds
            .iter()
            .find(|c| c["type"] == ty)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(cond("ScalingActive")["status"], "True", "{hpa}");
    assert_eq!(cond("ScalingActive")["reason"], "ValidMetricFound", "{hpa}");
    assert_eq!(cond("AbleToScale")["status"], "True", "{hpa}");
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
    // The same object through autoscaling/v1.
    let o = kubectl(
        &new_k,
        &kubeconfig,
        &[
            "get",
            "--raw",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/burn",
        ],
    );
    let v1: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(v1["apiVersion"], "autoscaling/v1", "{v1}");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50, "{v1}");
    assert!(
        v1["status"]["currentCPUUtilizationPercentage"]
            .as_i64()
            .unwrap_or(0)
            > 50,
        "{v1}"
    );
    assert!(
        v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/behavior"].is_string(),
        "{v1}"
    );

    // The burn off: idle pods roll in, and the HPA scales back down.
    let o = kubectl(
        &new_k,
        &kubeconfig,
        &["set", "env", "deploy/burn", "BURN=0"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let stopped = Instant::now();
    eventually(LONG, "burn scaled back down to 1", || async {
        (replicas(&deploys, "burn").await? == 1).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            diagnose(&new_k),
            hpa_events(&new_k, &kubeconfig, "burn")
        )
    });
    println!("scaled down {:?} after the burn stopped", stopped.elapsed());
    let events = hpa_events(&new_k, &kubeconfig, "burn");
    assert!(
        events.contains("Normal SuccessfulRescale: New size: 1; reason: All metrics below target"),
        "{events}"
    );
    let t = text(&kubectl(&new_k, &kubeconfig, &["get", "hpa", "burn"]));
    let r = row(&t, "burn").unwrap_or_else(|| panic!("{t}"));
    assert!(current_percent(&r).is_some_and(|p| p < 50), "{t}");

    // A target whose pods request no CPU, autoscaled by the newest kubectl.
    let o = kubectl(
        &new_k,
        &kubeconfig,
        // The newest kubectl's own flag (`--cpu-percent` is deprecated there).
        &[
            "autoscale",
            "deployment",
            "norequest",
            "--cpu=50%",
            "--min=1",
            "--max=2",
            "-v=6",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "kubectl 1.{new_minor} autoscale: {t}");
    // Sent as protobuf, in autoscaling/v2.
    assert!(
        t.lines().any(|l| l.contains("POST")
            && l.contains("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers")
            && l.contains("201")),
        "{t}"
    );
    println!("kubectl 1.{new_minor} autoscale posts autoscaling/v2");
    let hpas: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
        )),
    );
    let active = eventually(LONG, "norequest's ScalingActive False", || async {
        let h = hpas.get("norequest").await.ok()?;
        h.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ScalingActive" && c["status"] == "False")
            .cloned()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&new_k)));
    assert_eq!(active["reason"], "FailedGetResourceMetric", "{active}");
    let msg = active["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container burn of Pod norequest-"),
        "{active}"
    );
    let t = text(&kubectl(&new_k, &kubeconfig, &["get", "hpa", "norequest"]));
    let r = row(&t, "norequest").unwrap_or_else(|| panic!("{t}"));
    assert_eq!(&r[2..4], ["cpu:", "<unknown>/50%"], "{t}");
    let events = hpa_events(&new_k, &kubeconfig, "norequest");
    assert!(events.contains("Warning FailedGetResourceMetric: failed to get cpu utilization: missing request for cpu"), "{events}");
    assert_eq!(replicas(&deploys, "norequest").await, Some(1));

    // A target that does not exist, created through autoscaling/v1.
    let ghost = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ghost"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nothing"},
                 "maxReplicas": 2, "targetCPUUtilizationPercentage": 60}});
    let o = kubectl_stdin(&old_k, &kubeconfig, &["create", "-f", "-"], &ghost);
    assert!(o.status.success(), "{}", text(&o));
    let g = hpas.get("ghost").await.unwrap();
    assert_eq!(
        g.data["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}])
    );
    assert_eq!(g.data["spec"]["minReplicas"], 1);
    let able = eventually(LONG, "ghost's AbleToScale False", || async {
        let h = hpas.get("ghost").await.ok()?;
        h.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "AbleToScale" && c["status"] == "False")
            .cloned()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&new_k)));
    assert_eq!(able["reason"], "FailedGetScale", "{able}");
    assert_eq!(
        able["message"],
        "the HPA controller was unable to get the target's current scale: deployments.apps \"nothing\" not found",
        "{able}"
    );
    for name in ["burn", "norequest", "ghost"] {
        kubectl(&new_k, &kubeconfig, &["delete", "hpa", name]);
    }
    for name in ["burn", "norequest"] {
        kubectl(&new_k, &kubeconfig, &["delete", "deploy", name]);
    }
    drop(s1);
}
