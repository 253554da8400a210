//! The HelmChart controller end to end, on a one-host bed (a real server
//! in its own network namespace, so pods reach the API through the
//! service proxy), with real containerd, kubectl and helm: a chart
//! dropped into `server/manifests/` as a HelmChart with `chartContent`
//! installs and its Job's log is helm's; the bundled DNS chart's Job
//! completes, its pods run and a HelmChartConfig changes its value and a
//! user chart's; a chart from a repository the test serves installs; a broken
//! chart fails with a status and Events while the others are unaffected;
//! deleting a HelmChart uninstalls it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use rke2_testbed::eventually;
use rke2_testbed::netbed::{NetBed, NodeProc};
use serde_json::json;

const LONG: Duration = Duration::from_secs(240);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn helm() -> &'static str {
    assert!(
        Path::new(rke2_testbed::HELM).is_file(),
        "no helm at {}: run `bash scripts/install.sh`",
        rke2_testbed::HELM
    );
    rke2_testbed::HELM
}

/// A process killed by its pid and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a chart (`Chart.yaml`, `values.yaml`, one ConfigMap template
/// showing `.Values.message`) and packages it with helm; the .tgz path.
fn package_chart(dir: &Path, name: &str, version: &str, template_extra: &str) -> PathBuf {
    let src = dir.join("src").join(name);
    std::fs::create_dir_all(src.join("templates")).unwrap();
    std::fs::write(
        src.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\ndescription: a test chart\n"),
    )
    .unwrap();
    std::fs::write(src.join("values.yaml"), "message: from-chart\n").unwrap();
    std::fs::write(
        src.join("templates/configmap.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-cm\ndata:\n  message: {{{{ .Values.message | quote }}}}\n{template_extra}"
        ),
    )
    .unwrap();
    let out = dir.join("packages");
    std::fs::create_dir_all(&out).unwrap();
    rke2_testbed::run_ok(
        Command::new(helm())
            .env("HOME", dir)
            .args(["package", "--destination"])
            .arg(&out)
            .arg(&src),
    )
    .unwrap();
    out.join(format!("{name}-{version}.tgz"))
}

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

async fn cm_message(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms.get_opt(name).await.ok()??;
    cm.data?.get("message").cloned()
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let (_, bin) = rke2_testbed::kubectls().unwrap().pop().unwrap();
    let out = Command::new(bin)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn events_of(client: &kube::Client, name: &str) -> Vec<(String, String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "kube-system");
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("HelmChart")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn condition(chart: &DynamicObject, ty: &str) -> Option<(String, String)> {
    chart.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_charts_install_upgrade_fail_and_uninstall() {
    helm();
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let h = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: helm-secret\npause-image: {}\n",
        rke2_testbed::TEST_PAUSE_IMAGE
    );
    let mut s1 = NodeProc::new(&bed, bin(), &h, "server", &cfg, &[]).unwrap();
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
    let work = bed.dir().join("charts");
    std::fs::create_dir_all(&work).unwrap();
    let charts: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "kube-system",
        &rke2_controllers::helm::helmchart_resource(),
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), "kube-system");

    // 0. A fresh server: the bundled DNS chart's helm Job completes and
    //    the DNS pods run; a HelmChartConfig tunes the bundled chart.
    eventually(LONG, "helm-install-rke2-coredns Completed", || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let (ok, out) = kubectl(
                &kubeconfig,
                &["get", "pods", "-n", "kube-system", "--no-headers"],
            );
            (ok && out
                .lines()
                .any(|l| l.starts_with("helm-install-rke2-coredns-") && l.contains("Completed")))
            .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let (_, pods) = kubectl(
        &kubeconfig,
        &["get", "pods", "-n", "kube-system", "--no-headers"],
    );
    assert!(
        !pods
            .lines()
            .any(|l| l.starts_with("helm-") && l.contains("Error")),
        "{pods}"
    );
    eventually(LONG, "the DNS pods Running and ready", || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let (ok, out) = kubectl(
                &kubeconfig,
                &[
                    "get",
                    "pods",
                    "-n",
                    "kube-system",
                    "-l",
                    "app.kubernetes.io/name=rke2-coredns",
                    "--no-headers",
                ],
            );
            (ok && !out.trim().is_empty()
                && out
                    .lines()
                    .all(|l| l.contains("Running") && l.contains("1/1")))
            .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    // Every bundled addon comes up on a fresh server with no registry:
    // each kube-system pod Running with all its containers ready, or a
    // Completed helm Job; nothing anywhere in an error state.
    let settled = |out: &str| {
        out.lines().all(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ready = f.get(2).and_then(|r| r.split_once('/'));
            match f.get(3) {
                Some(&"Completed") => true,
                Some(&"Running") => ready.is_some_and(|(a, b)| a == b),
                _ => false,
            }
        })
    };
    eventually(LONG, "every kube-system pod Running or Completed", || {
        let kubeconfig = kubeconfig.clone();
        async move {
            let (ok, out) = kubectl(&kubeconfig, &["get", "pods", "-A", "--no-headers"]);
            let has = |prefix: &str| {
                out.lines().any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|n| n.starts_with(prefix))
                })
            };
            (ok && has("rke2-ingress-nginx-controller-")
                && has("rke2-metrics-server-")
                && has("helm-install-rke2-ingress-nginx-")
                && has("helm-install-rke2-metrics-server-")
                && settled(&out))
            .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| {
        let (_, pods) = kubectl(&kubeconfig, &["get", "pods", "-A", "-o", "wide"]);
        panic!("{e}\n{pods}\n{}", s1.log())
    });
    let dns_config = json!({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig",
        "metadata": {"name": "rke2-coredns", "namespace": "kube-system"},
        "spec": {"valuesContent": "autoscaler:\n  nodesPerReplica: 8\n"}});
    Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "kube-system",
        &rke2_controllers::helm::helmchartconfig_resource(),
    )
    .patch(
        "rke2-coredns",
        &PatchParams::apply("test"),
        &Patch::Apply(&dns_config),
    )
    .await
    .unwrap();
    eventually(
        LONG,
        "the bundled chart's value changed by the HelmChartConfig",
        || {
            let client = client.clone();
            async move {
                let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");
                let cm = cms
                    .get_opt("rke2-coredns-rke2-coredns-autoscaler")
                    .await
                    .ok()??;
                let linear: serde_json::Value =
                    serde_json::from_str(cm.data?.get("linear")?).ok()?;
                (linear["nodesPerReplica"] == 8 && linear["coresPerReplica"] == 256).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));

    // 1. A chart dropped into server/manifests with chartContent.
    let demo = package_chart(&work, "demo", "0.1.0", "");
    let manifest = format!(
        "apiVersion: helm.cattle.io/v1\nkind: HelmChart\nmetadata:\n  name: demo\n  namespace: kube-system\nspec:\n  targetNamespace: demo\n  createNamespace: true\n  valuesContent: |-\n    message: from-values\n  chartContent: {}\n",
        b64(&demo)
    );
    std::fs::write(s1.data_dir().join("server/manifests/demo.yaml"), manifest).unwrap();
    eventually(LONG, "the demo chart's ConfigMap", || {
        let client = client.clone();
        async move {
            (cm_message(&client, "demo", "demo-cm").await.as_deref() == Some("from-values"))
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let (ok, logs) = kubectl(
        &kubeconfig,
        &["logs", "-n", "kube-system", "job/helm-install-demo"],
    );
    assert!(ok, "{logs}");
    assert!(logs.contains("+ helm install"), "{logs}");
    assert!(
        logs.contains("STATUS: deployed"),
        "helm's output in the Job log:\n{logs}"
    );
    let chart = charts.get("demo").await.unwrap();
    assert!(
        chart
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&rke2_controllers::helm::FINALIZER.to_string())
    );
    assert_eq!(chart.data["status"]["jobName"], "helm-install-demo");
    assert_eq!(condition(&chart, "JobCreated").unwrap().0, "True");
    let (ok, table) = kubectl(
        &kubeconfig,
        &["get", "hc", "-n", "kube-system", "-o", "wide"],
    );
    assert!(ok, "{table}");
    assert!(
        table.contains("TARGETNAMESPACE")
            && table.contains("JOB")
            && table.contains("helm-install-demo"),
        "{table}"
    );

    // 2. A HelmChartConfig's values go over the chart's: helm upgrades.
    let config = json!({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig",
        "metadata": {"name": "demo", "namespace": "kube-system"},
        "spec": {"valuesContent": "message: from-config\n"}});
    let configs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "kube-system",
        &rke2_controllers::helm::helmchartconfig_resource(),
    );
    configs
        .patch("demo", &PatchParams::apply("test"), &Patch::Apply(&config))
        .await
        .unwrap();
    eventually(LONG, "the HelmChartConfig's value applied", || {
        let client = client.clone();
        async move {
            (cm_message(&client, "demo", "demo-cm").await.as_deref() == Some("from-config"))
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let (_, logs) = kubectl(
        &kubeconfig,
        &["logs", "-n", "kube-system", "job/helm-install-demo"],
    );
    assert!(logs.contains("+ helm upgrade"), "{logs}");

    // 3. A broken chart: a failed Job, a status and Events that say so.
    let broken = package_chart(
        &work,
        "broken",
        "0.1.0",
        "  other: {{ .Values.message | nosuchfunction }}\n",
    );
    let broken_chart = json!({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
        "metadata": {"name": "broken", "namespace": "kube-system"},
        "spec": {"chartContent": b64(&broken), "targetNamespace": "default", "backOffLimit": 1}});
    charts
        .patch(
            "broken",
            &PatchParams::apply("test"),
            &Patch::Apply(&broken_chart),
        )
        .await
        .unwrap();

    // ... and one that the API refuses (a release left `failed`) with
    // `failurePolicy: abort`: the next run leaves it for the operator.
    let refused = package_chart(
        &work,
        "refused",
        "0.1.0",
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Valid_Name\n",
    );
    let refused_chart = json!({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
        "metadata": {"name": "refused", "namespace": "kube-system"},
        "spec": {"chartContent": b64(&refused), "targetNamespace": "default",
            "backOffLimit": 2, "failurePolicy": "abort"}});
    charts
        .patch(
            "refused",
            &PatchParams::apply("test"),
            &Patch::Apply(&refused_chart),
        )
        .await
        .unwrap();

    // 4. Meanwhile a chart from a repository (helm repo index + tgz over HTTP).
    let repo_dir = work.join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let pkg = package_chart(&work, "fromrepo", "0.2.0", "");
    std::fs::copy(&pkg, repo_dir.join("fromrepo-0.2.0.tgz")).unwrap();
    let gw = bed.subnet_gateway();
    let port = 18_000 + (std::process::id() % 2000) as u16;
    let url = format!("http://{gw}:{port}/");
    rke2_testbed::run_ok(
        Command::new(helm())
            .env("HOME", &work)
            .args(["repo", "index", "--url", &url])
            .arg(&repo_dir),
    )
    .unwrap();
    let _http = Proc(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                &gw.to_string(),
                "--directory",
            ])
            .arg(&repo_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let repo_chart = format!(
        "apiVersion: helm.cattle.io/v1\nkind: HelmChart\nmetadata:\n  name: fromrepo\n  namespace: kube-system\nspec:\n  repo: {url}\n  chart: fromrepo\n  version: 0.2.0\n  targetNamespace: default\n  set:\n    message: from-set\n"
    );
    let (ok, out) = {
        let (_, bin) = rke2_testbed::kubectls().unwrap().pop().unwrap();
        let mut child = Command::new(bin)
            .env("KUBECONFIG", &kubeconfig)
            .args(["apply", "-f", "-"])
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
            .write_all(repo_chart.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    assert!(ok, "{out}");
    eventually(
        LONG,
        "the repository chart installed with its set value",
        || {
            let client = client.clone();
            async move {
                (cm_message(&client, "default", "fromrepo-cm")
                    .await
                    .as_deref()
                    == Some("from-set"))
                .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        let (_, logs) = kubectl(
            &kubeconfig,
            &["logs", "-n", "kube-system", "job/helm-install-fromrepo"],
        );
        panic!("{e}\n{logs}\n{}", s1.log())
    });

    let failed = eventually(LONG, "the broken chart's Failed condition", || {
        let charts = charts.clone();
        async move {
            let c = charts.get("broken").await.ok()?;
            condition(&c, "Failed")
                .filter(|(s, _)| s == "True")
                .map(|(_, m)| m)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert!(
        failed.contains("nosuchfunction"),
        "status names the problem: {failed}"
    );
    let job = jobs.get("helm-install-broken").await.unwrap();
    assert!(
        job.status
            .unwrap()
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True"),
        "the helm Job failed"
    );
    let evs = eventually(LONG, "Warning events about the broken chart", || {
        let client = client.clone();
        async move {
            let evs = events_of(&client, "broken").await;
            evs.iter()
                .any(|(t, r, m)| t == "Warning" && r == "JobFailed" && m.contains("nosuchfunction"))
                .then_some(evs)
        }
    })
    .await
    .unwrap();
    assert!(
        evs.iter()
            .any(|(t, r, _)| t == "Warning" && r == "JobPodFailed"),
        "{evs:?}"
    );
    let aborted = eventually(LONG, "the aborting chart's Failed condition", || {
        let charts = charts.clone();
        async move {
            let c = charts.get("refused").await.ok()?;
            condition(&c, "Failed")
                .filter(|(s, _)| s == "True")
                .map(|(_, m)| m)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert!(
        aborted.contains("failure policy is 'abort'"),
        "status names the policy: {aborted}"
    );
    let evs = events_of(&client, "refused").await;
    assert!(
        evs.iter().any(|(t, r, m)| t == "Warning"
            && r == "JobPodFailed"
            && m.contains("Not_A_Valid_Name")),
        "the first run's error (the API's refusal) reported: {evs:?}"
    );
    // The others are untouched.
    assert_eq!(
        cm_message(&client, "demo", "demo-cm").await.as_deref(),
        Some("from-config")
    );

    // 5. Deleting a HelmChart uninstalls it, then the finalizer goes.
    charts
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        LONG,
        "the demo release uninstalled and its HelmChart gone",
        || {
            let client = client.clone();
            let charts = charts.clone();
            async move {
                let cm_gone = cm_message(&client, "demo", "demo-cm").await.is_none();
                let chart_gone = charts.get_opt("demo").await.ok()?.is_none();
                (cm_gone && chart_gone).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let evs = events_of(&client, "demo").await;
    assert!(
        evs.iter()
            .any(|(_, r, m)| r == "RemoveJob" && m.contains("helm-delete-demo")),
        "{evs:?}"
    );
    drop(bed);
}
