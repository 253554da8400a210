//! The RBAC API with every real kubectl (`rke2_testbed::kubectls()`)
//! against a real `rke2 server`: the bootstrap policy as kubectl lists it,
//! `kubectl create role|clusterrole|rolebinding|clusterrolebinding`, the
//! binding columns of `-o wide`, upstream's refusal of a changed roleRef,
//! ClusterRole aggregation into `view`/`edit`/`admin`, and the bootstrap
//! reconciliation at a restart (a deleted role comes back, an
//! `autoupdate: "false"` role keeps its edits, a trimmed one is restored).
//!
//! One server per test function; objects carry the kubectl minor
//! (`-v32`, ...) so the versions never touch each other's objects.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rke2_testbed::{Server, ServerOpts, eventually, kubectls};
use serde_json::Value;

/// Generous deadline for anything that converges (2 busy cores).
const DEADLINE: Duration = Duration::from_secs(60);

async fn start_server() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(Path::new(env!("CARGO_BIN_EXE_rke2")), ServerOpts::default())
        .expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    server
}

fn log_tail(server: &Server, n: usize) -> String {
    let text = server.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
    bin: PathBuf,
    minor: u32,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args);
        c
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("spawning kubectl")?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        Ok(child.wait_with_output()?)
    }

    /// Runs and returns stdout; fails with stderr on a non-zero exit.
    fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_in(args, None)
    }

    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl 1.{} {args:?} failed: {}",
                self.minor,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&all)?)?)
    }
}

fn kubectl_for(server: &Server, minor: u32, bin: PathBuf) -> Kubectl {
    let home = server.dir.path().join(format!("home-1.{minor}"));
    std::fs::create_dir_all(&home).expect("kubectl home");
    Kubectl {
        kubeconfig: server.kubeconfig.clone(),
        home,
        bin,
        minor,
    }
}

/// The cells of the row whose first column is `name`, split on runs of
/// two or more spaces (kubectl's column gap), with the header's.
fn row<'a>(table: &'a str, name: &str) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let split = |l: &'a str| -> Vec<&'a str> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    };
    let mut lines = table.lines();
    let header = split(lines.next()?);
    lines
        .map(split)
        .find(|cells| cells.first() == Some(&name))
        .map(|cells| (header, cells))
}

fn has_rule(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|r| {
        let has = |k: &str, v: &str| {
            r[k].as_array()
                .is_some_and(|a| a.iter().any(|x| x == v || x == "*"))
        };
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
    })
}

async fn api_for_one_kubectl(k: &Kubectl) -> Result<()> {
    let v = format!("v{}", k.minor);
    let ns = format!("rbac-{v}");

    // The bootstrap policy, as `kubectl get` prints it.
    let roles = k.ok(&["get", "clusterroles"])?;
    let (header, cells) = row(&roles, "cluster-admin").context("cluster-admin listed")?;
    ensure!(header == ["NAME", "CREATED AT"], "{roles}");
    ensure!(cells[1].ends_with('Z') && cells[1].contains('T'), "{roles}");
    for name in [
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node",
        "system:node-proxier",
        "system:kube-dns",
        "system:monitoring",
        "system:auth-delegator",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:volume-scheduler",
        "system:certificates.k8s.io:kube-apiserver-client-approver",
        "system:controller:clusterrole-aggregation-controller",
        "system:controller:job-controller",
    ] {
        ensure!(row(&roles, name).is_some(), "{name} missing:\n{roles}");
    }
    let crbs = k.ok(&["get", "clusterrolebindings", "-o", "wide"])?;
    let (header, cells) = row(&crbs, "cluster-admin").context("cluster-admin binding")?;
    ensure!(
        header == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"],
        "{crbs}"
    );
    ensure!(
        cells[1] == "ClusterRole/cluster-admin" && cells[3] == "system:masters",
        "{crbs}"
    );
    let (_, cells) =
        row(&crbs, "system:controller:job-controller").context("controller binding")?;
    ensure!(
        cells.last() == Some(&"kube-system/job-controller"),
        "{crbs}"
    );
    let leader = k.ok(&["get", "rolebindings", "-n", "kube-system"])?;
    ensure!(
        row(&leader, "system::leader-locking-kube-scheduler").is_some(),
        "{leader}"
    );

    // Creating each kind the way users do.
    k.ok(&["create", "namespace", &ns])?;
    k.ok(&[
        "create",
        "role",
        &format!("pod-reader-{v}"),
        "--verb=get,list,watch",
        "--resource=pods,pods/log",
        "-n",
        &ns,
    ])?;
    k.ok(&[
        "create",
        "clusterrole",
        &format!("deploy-scaler-{v}"),
        "--verb=get,update",
        "--resource=deployments.apps/scale",
    ])?;
    k.ok(&[
        "create",
        "rolebinding",
        &format!("readers-{v}"),
        &format!("--role=pod-reader-{v}"),
        "--user=alice",
        "--user=bob",
        "--group=devs",
        &format!("--serviceaccount={ns}:default"),
        "-n",
        &ns,
    ])?;
    k.ok(&[
        "create",
        "clusterrolebinding",
        &format!("scalers-{v}"),
        &format!("--clusterrole=deploy-scaler-{v}"),
        "--group=ops",
    ])?;
    let role = k.json(&["get", "role", &format!("pod-reader-{v}"), "-n", &ns])?;
    ensure!(has_rule(&role, "", "pods/log", "watch"), "{role}");
    let wide = k.ok(&[
        "get",
        "rolebinding",
        &format!("readers-{v}"),
        "-n",
        &ns,
        "-o",
        "wide",
    ])?;
    let (header, cells) = row(&wide, &format!("readers-{v}")).context("binding row")?;
    ensure!(
        header == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"],
        "{wide}"
    );
    ensure!(cells[1] == format!("Role/pod-reader-{v}"), "{wide}");
    ensure!(cells[3] == "alice, bob" && cells[4] == "devs", "{wide}");
    ensure!(cells[5] == format!("{ns}/default"), "{wide}");
    let rb = k.json(&["get", "rolebinding", &format!("readers-{v}"), "-n", &ns])?;
    ensure!(
        rb["subjects"][0]["apiGroup"] == "rbac.authorization.k8s.io"
            && rb["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io",
        "{rb}"
    );

    // A roleRef never changes: upstream's refusal, through apply.
    let binding = |role: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: moving-{v}\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}\nsubjects:\n- kind: User\n  name: carol\n  apiGroup: rbac.authorization.k8s.io\n"
        )
    };
    k.ok_in(&["apply", "-f", "-"], Some(&binding("edit")))?;
    let out = k.run(&["apply", "-f", "-"], Some(&binding("view")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "roleRef change accepted");
    ensure!(
        stderr.contains(&format!("The RoleBinding \"moving-{v}\" is invalid: roleRef: Invalid value: rbac.RoleRef{{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"view\"}}: cannot change roleRef")),
        "{stderr}"
    );
    // A bad binding is refused naming the field.
    let bad = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: bad-{v}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: view\nsubjects:\n- kind: ServiceAccount\n  name: x\n"
    );
    let out = k.run(&["create", "-f", "-"], Some(&bad))?;
    ensure!(!out.status.success(), "SA without namespace accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("subjects[0].namespace: Required value"),
        "{stderr}"
    );

    // Aggregation: a role labelled for `view` adds its rules to view, and
    // through view's own label to edit and then admin.
    let widgets = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widgets-{v}\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [\"example.com\"]\n  resources: [\"widgets-{v}\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n"
    );
    k.ok_in(&["apply", "-f", "-"], Some(&widgets))?;
    let resource = format!("widgets-{v}");
    for aggregate in ["view", "edit", "admin"] {
        eventually(DEADLINE, &format!("{resource} in {aggregate}"), || async {
            let role = k.json(&["get", "clusterrole", aggregate]).ok()?;
            has_rule(&role, "example.com", &resource, "watch").then_some(())
        })
        .await?;
    }
    let view = k.json(&["get", "clusterrole", "view"])?;
    ensure!(
        has_rule(&view, "", "pods", "get"),
        "view lacks pods: {view}"
    );
    ensure!(
        !has_rule(&view, "", "secrets", "get"),
        "view reads secrets: {view}"
    );
    let edit = k.json(&["get", "clusterrole", "edit"])?;
    ensure!(has_rule(&edit, "", "secrets", "create"), "{edit}");
    // Removing the label takes the rules away again.
    k.ok(&[
        "label",
        "clusterrole",
        &format!("widgets-{v}"),
        "rbac.authorization.k8s.io/aggregate-to-view-",
    ])?;
    eventually(DEADLINE, &format!("{resource} gone from view"), || async {
        let role = k.json(&["get", "clusterrole", "view"]).ok()?;
        (!has_rule(&role, "example.com", &resource, "watch")).then_some(())
    })
    .await?;

    k.ok(&["delete", "namespace", &ns, "--wait=false"])?;
    for (kind, name) in [
        ("clusterrole", format!("deploy-scaler-{v}")),
        ("clusterrole", format!("widgets-{v}")),
        ("clusterrolebinding", format!("scalers-{v}")),
    ] {
        k.ok(&["delete", kind, &name])?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_api_with_every_kubectl() {
    let server = start_server().await;
    let versions = kubectls().expect("kubectl binaries");
    assert!(
        versions.len() >= 2,
        "need two kubectl minors, got {versions:?}"
    );
    for (minor, bin) in versions {
        let k = kubectl_for(&server, minor, bin);
        let started = std::time::Instant::now();
        if let Err(e) = api_for_one_kubectl(&k).await {
            panic!(
                "kubectl 1.{minor}: {e:#}\n--- server log tail ---\n{}",
                log_tail(&server, 40)
            );
        }
        eprintln!("kubectl 1.{minor}: ok in {:?}", started.elapsed());
    }
}

/// The reconciliation at start: a deleted bootstrap role is recreated, a
/// trimmed one gets its rules back (keeping an admin's extra rule), and
/// one marked `autoupdate: "false"` keeps exactly what the admin left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_policy_is_reconciled_at_restart() {
    let mut server = start_server().await;
    let (minor, bin) = kubectls()
        .expect("kubectl binaries")
        .pop()
        .expect("a kubectl");
    let k = kubectl_for(&server, minor, bin);
    let run = async {
        k.ok(&["delete", "clusterrole", "system:heapster"])?;
        k.ok(&["delete", "clusterrolebinding", "system:kube-dns"])?;
        // Trimmed, with an extra rule of the admin's.
        k.ok(&[
            "patch", "clusterrole", "system:node-proxier", "--type=merge", "-p",
            r#"{"rules":[{"apiGroups":[""],"resources":["nodes"],"verbs":["get"]},{"apiGroups":["example.com"],"resources":["gadgets"],"verbs":["get"]}]}"#,
        ])?;
        // Protected from the reconciliation.
        k.ok(&[
            "patch", "clusterrole", "system:kube-dns", "--type=merge", "-p",
            r#"{"metadata":{"annotations":{"rbac.authorization.kubernetes.io/autoupdate":"false"}},"rules":[{"apiGroups":[""],"resources":["services"],"verbs":["get"]}]}"#,
        ])?;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = run.await {
        panic!("{e:#}\n{}", log_tail(&server, 40));
    }
    let st = server
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))
        .expect("stopping");
    assert!(st.success(), "exit status {st}");
    server.spawn().expect("restarting");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready after restart");

    let check = async {
        let heapster = k.json(&["get", "clusterrole", "system:heapster"])?;
        ensure!(has_rule(&heapster, "", "pods", "list"), "{heapster}");
        ensure!(
            heapster["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"]
                == "true",
            "{heapster}"
        );
        let dns_binding = k.json(&["get", "clusterrolebinding", "system:kube-dns"])?;
        ensure!(
            dns_binding["subjects"][0]["name"] == "kube-dns",
            "{dns_binding}"
        );
        let proxier = k.json(&["get", "clusterrole", "system:node-proxier"])?;
        ensure!(has_rule(&proxier, "", "endpoints", "watch"), "{proxier}");
        ensure!(
            has_rule(&proxier, "discovery.k8s.io", "endpointslices", "list"),
            "{proxier}"
        );
        ensure!(
            has_rule(&proxier, "example.com", "gadgets", "get"),
            "extra rule lost: {proxier}"
        );
        let dns = k.json(&["get", "clusterrole", "system:kube-dns"])?;
        ensure!(
            dns["rules"]
                == serde_json::json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]),
            "autoupdate=false role changed: {dns}"
        );
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = check.await {
        panic!("{e:#}\n{}", log_tail(&server, 40));
    }
    let _ = server.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60));
}
