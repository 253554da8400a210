//! PodSecurity admission against the real binary, with every real kubectl:
//! namespace labels that enforce and warn, the messages kubectl prints
//! (kube-apiserver's wording), workloads warned about but never refused,
//! label validation and the warnings about existing pods, pod updates that
//! are and are not checked; the cluster default and exemptions from
//! `pod-security-admission-config-file`; `profile: cis` (its machine
//! requirements, or its `restricted` default); a bad configuration file or
//! profile refusing the start.
//!
//! Pods carry `schedulerName: nobody`: no scheduler binds them, so nothing
//! runs.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rke2_testbed::{Server, ServerOpts, kubectls};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

async fn start(opts: ServerOpts) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(bin(), opts).expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    server
}

/// A pod with one container `c` and the given container securityContext
/// and volumes (YAML flow text).
fn pod(name: &str, security_context: &str, volumes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  schedulerName: nobody\n  volumes: {volumes}\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {security_context}\n"
    )
}

fn privileged_pod(name: &str) -> String {
    pod(name, "{privileged: true}", "[]")
}

fn host_path_pod(name: &str) -> String {
    pod(name, "{}", "[{name: h, hostPath: {path: /etc}}]")
}

/// What `restricted` asks for, as the Kubernetes docs show it.
fn compliant_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  schedulerName: nobody\n  securityContext:\n    runAsNonRoot: true\n    runAsUser: 1000\n    seccompProfile: {{type: RuntimeDefault}}\n  containers:\n  - name: c\n    image: busybox\n    securityContext:\n      allowPrivilegeEscalation: false\n      capabilities: {{drop: [ALL]}}\n"
    )
}

fn privileged_deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      schedulerName: nobody\n      containers:\n      - name: c\n        image: busybox\n        securityContext: {{privileged: true}}\n"
    )
}

/// kube-apiserver's findings for `privileged_pod` at `restricted`.
const PRIVILEGED_RESTRICTED: &str = r#"privileged (container "c" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#;

struct Kubectl<'a> {
    server: &'a Server,
    bin: PathBuf,
    dir: PathBuf,
    minor: u32,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.server
            .kubectl(&self.bin)
            .env("HOME", &self.dir)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// `kubectl create -f` of `manifest` (written to a file first).
    fn create(&self, file: &str, manifest: &str, ns: &str) -> Output {
        let path = self.dir.join(file);
        std::fs::write(&path, manifest).unwrap();
        self.run(&["create", "-n", ns, "-f", path.to_str().unwrap()])
    }

    fn ok(&self, what: &str, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "1.{}: {what} failed: {stderr}",
            self.minor
        );
        stderr
    }

    fn refused(&self, what: &str, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "1.{}: {what} succeeded: {stderr}",
            self.minor
        );
        stderr
    }
}

fn kubectl_for(server: &Server, minor: u32, bin: PathBuf) -> Kubectl<'_> {
    let dir = server.dir.path().join(format!("kubectl-1.{minor}"));
    std::fs::create_dir_all(&dir).unwrap();
    Kubectl {
        server,
        bin,
        dir,
        minor,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_labels_enforce_and_warn_with_every_kubectl() {
    let server = start(ServerOpts::default()).await;
    for (minor, bin) in kubectls().expect("kubectl binaries") {
        let k = kubectl_for(&server, minor, bin);
        let (r, w) = (format!("r{minor}"), format!("w{minor}"));

        // enforce=restricted, set by `kubectl label` (a patch).
        k.ok("create namespace", &k.run(&["create", "namespace", &r]));
        k.ok(
            "label",
            &k.run(&[
                "label",
                "namespace",
                &r,
                "pod-security.kubernetes.io/enforce=restricted",
            ]),
        );
        let err = k.refused(
            "a privileged pod",
            &k.create("priv.yaml", &privileged_pod("priv"), &r),
        );
        assert!(
            err.contains(&format!(
                r#"Error from server (Forbidden): error when creating "{}": pods "priv" is forbidden: violates PodSecurity "restricted:latest": {PRIVILEGED_RESTRICTED}"#,
                k.dir.join("priv.yaml").display()
            )),
            "1.{minor}: {err}"
        );
        let err = k.ok(
            "a compliant pod",
            &k.create("ok.yaml", &compliant_pod("ok"), &r),
        );
        assert!(!err.contains("Warning"), "1.{minor}: {err}");

        // A workload's template is warned about (enforce also warns), never refused.
        let err = k.ok(
            "a privileged deployment",
            &k.create("deploy.yaml", &privileged_deployment("d"), &r),
        );
        assert!(
            err.contains(&format!(
                r#"Warning: would violate PodSecurity "restricted:latest": {PRIVILEGED_RESTRICTED}"#
            )),
            "1.{minor}: {err}"
        );
        k.ok(
            "get deployment",
            &k.run(&["get", "deployment", "d", "-n", &r]),
        );

        // warn=baseline, set at creation.
        let ns = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {w}\n  labels:\n    pod-security.kubernetes.io/warn: baseline\n"
        );
        k.ok(
            "create warn namespace",
            &k.create("ns.yaml", &ns, "default"),
        );
        let err = k.ok(
            "a hostPath pod",
            &k.create("hostpath.yaml", &host_path_pod("hostpath"), &w),
        );
        assert!(
            err.contains(r#"Warning: would violate PodSecurity "baseline:latest": hostPath volumes (volume "h")"#),
            "1.{minor}: {err}"
        );

        // Label values are validated.
        let err = k.refused(
            "a bad level",
            &k.run(&[
                "label",
                "namespace",
                &w,
                "pod-security.kubernetes.io/enforce=strict",
            ]),
        );
        assert!(
            err.contains(&format!(
                r#"Namespace "{w}" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#
            )),
            "1.{minor}: {err}"
        );

        // Tightening enforce names the existing pods it would refuse.
        let err = k.ok(
            "enforce baseline",
            &k.run(&[
                "label",
                "namespace",
                &w,
                "pod-security.kubernetes.io/enforce=baseline",
            ]),
        );
        assert!(
            err.contains(&format!(
                r#"Warning: existing pods in namespace "{w}" violate the new PodSecurity enforce level "baseline:latest""#
            )) && err.contains("Warning: hostpath: hostPath volumes"),
            "1.{minor}: {err}"
        );

        // The existing pod may still be relabelled, but not given a new image.
        k.ok(
            "relabel the violating pod",
            &k.run(&["label", "pod", "hostpath", "-n", &w, "x=y"]),
        );
        let err = k.refused(
            "a new image",
            &k.run(&["set", "image", "pod/hostpath", "c=busybox:2", "-n", &w]),
        );
        assert!(
            err.contains(r#"pods "hostpath" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "h")"#),
            "1.{minor}: {err}"
        );
        // A dry run is checked as well.
        let path = k.dir.join("priv.yaml");
        let err = k.refused(
            "a server-side dry run",
            &k.run(&[
                "create",
                "--dry-run=server",
                "-n",
                &r,
                "-f",
                path.to_str().unwrap(),
            ]),
        );
        assert!(
            err.contains(r#"violates PodSecurity "restricted:latest""#),
            "1.{minor}: {err}"
        );
    }
}

/// An `AdmissionConfiguration` enforcing `restricted` everywhere but in
/// `kube-system` and `exempt`, and not for the user `ci-bot`.
const RESTRICTED_CONFIG: &str = r#"apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: "restricted"
      enforce-version: "latest"
    exemptions:
      usernames: [ci-bot]
      runtimeClasses: []
      namespaces: [kube-system, exempt]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_the_default_and_exemptions() {
    let files = tempfile::tempdir().unwrap();
    let psa = files.path().join("psa.yaml");
    std::fs::write(&psa, RESTRICTED_CONFIG).unwrap();
    let server = start(ServerOpts {
        config_yaml: Some(format!(
            "pod-security-admission-config-file: {}\n",
            psa.display()
        )),
        ..ServerOpts::default()
    })
    .await;
    let (minor, bin) = kubectls()
        .expect("kubectl binaries")
        .pop()
        .expect("a kubectl");
    let k = kubectl_for(&server, minor, bin);

    let err = k.refused(
        "a privileged pod in default",
        &k.create("priv.yaml", &privileged_pod("priv"), "default"),
    );
    assert!(
        err.contains(&format!(
            r#"pods "priv" is forbidden: violates PodSecurity "restricted:latest": {PRIVILEGED_RESTRICTED}"#
        )),
        "{err}"
    );
    k.ok(
        "a compliant pod in default",
        &k.create("ok.yaml", &compliant_pod("ok"), "default"),
    );
    // An exempt user (here by impersonation) is not checked.
    let path = k.dir.join("priv.yaml");
    k.ok(
        "a privileged pod by an exempt user",
        &k.run(&[
            "create",
            "--as=ci-bot",
            "--as-group=system:masters",
            "-n",
            "default",
            "-f",
            path.to_str().unwrap(),
        ]),
    );

    // The exempt namespace takes anything; labels on it are pointed out.
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: exempt\n  labels:\n    pod-security.kubernetes.io/enforce: baseline\n";
    let err = k.ok("create exempt", &k.create("ns.yaml", ns, "default"));
    assert!(
        err.contains(r#"Warning: namespace "exempt" is exempt from Pod Security, and the policy (enforce=baseline:latest) will be ignored"#),
        "{err}"
    );
    k.ok(
        "a privileged pod in an exempt namespace",
        &k.create("priv.yaml", &privileged_pod("priv"), "exempt"),
    );

    // A namespace label overrides the default.
    k.ok("create open", &k.run(&["create", "namespace", "open"]));
    k.ok(
        "label open",
        &k.run(&[
            "label",
            "namespace",
            "open",
            "pod-security.kubernetes.io/enforce=privileged",
        ]),
    );
    k.ok(
        "a privileged pod in a privileged namespace",
        &k.create("priv.yaml", &privileged_pod("priv"), "open"),
    );
}

/// What RKE2 refuses `profile: cis` for on this machine: kernel
/// parameters of the CIS guide that differ, a missing `etcd` user or group.
fn cis_problems() -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in [
        ("vm.overcommit_memory", 1),
        ("vm.panic_on_oom", 0),
        ("kernel.panic", 10),
        ("kernel.panic_on_oops", 1),
    ] {
        let got: i64 = std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if got != want {
            out.push(format!(
                "invalid kernel parameter value {name}={got} - expected {want}"
            ));
        }
    }
    let has = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("etcd:"))
    };
    if !has("/etc/passwd") {
        out.push("missing required: user: unknown user etcd".into());
    }
    if !has("/etc/group") {
        out.push("missing required: group: unknown group etcd".into());
    }
    out
}

/// `profile: cis` on a machine that meets it enforces `restricted` outside
/// the system namespaces; on one that does not, the start is refused
/// naming every unmet requirement (this machine decides which is tested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cis_profile_checks_the_machine_and_enforces_restricted() {
    let opts = ServerOpts {
        config_yaml: Some("profile: cis\n".into()),
        ..ServerOpts::default()
    };
    let problems = cis_problems();
    if !problems.is_empty() {
        let mut server = Server::start(bin(), opts).expect("spawning rke2 server");
        let status = server
            .wait_exit(Duration::from_secs(60))
            .expect("a refused start exits");
        let log = server.log_text();
        assert_eq!(status.code(), Some(2), "{log}");
        let want = format!(
            "profile cis: this machine does not meet the profile's requirements:\n{}",
            problems.join("\n")
        );
        assert!(log.contains(&want), "want {want:?} in:\n{log}");
        assert!(!server.data_dir.exists(), "the data dir was written");
        return;
    }
    let server = start(opts).await;
    let (minor, bin) = kubectls()
        .expect("kubectl binaries")
        .pop()
        .expect("a kubectl");
    let k = kubectl_for(&server, minor, bin);
    let err = k.refused(
        "a privileged pod in default",
        &k.create("priv.yaml", &privileged_pod("priv"), "default"),
    );
    assert!(
        err.contains(r#"violates PodSecurity "restricted:latest""#),
        "{err}"
    );
    k.ok(
        "a privileged pod in kube-system",
        &k.create("priv.yaml", &privileged_pod("priv"), "kube-system"),
    );
}

#[test]
fn a_bad_config_file_refuses_the_start() {
    let files = tempfile::tempdir().unwrap();
    let bad_level = files.path().join("bad-level.yaml");
    std::fs::write(
        &bad_level,
        RESTRICTED_CONFIG.replace("\"restricted\"", "\"strict\""),
    )
    .unwrap();
    let not_yaml = files.path().join("not-yaml.yaml");
    std::fs::write(&not_yaml, "plugins: [\n  - {name: PodSecurity\n").unwrap();
    let missing = files.path().join("missing.yaml");
    let cases = [
        (
            format!("pod-security-admission-config-file: {}\n", bad_level.display()),
            format!(
                r#"pod-security-admission-config-file: {}: plugins[PodSecurity].configuration: defaults.enforce: Invalid value: "strict": must be one of privileged, baseline, restricted"#,
                bad_level.display()
            ),
        ),
        (
            format!("pod-security-admission-config-file: {}\n", not_yaml.display()),
            format!(
                "pod-security-admission-config-file: {}: invalid YAML",
                not_yaml.display()
            ),
        ),
        (
            format!("pod-security-admission-config-file: {}\n", missing.display()),
            format!(
                "pod-security-admission-config-file: cannot read {}",
                missing.display()
            ),
        ),
        (
            "profile: cis-1.6\n".to_string(),
            "invalid value \"cis-1.6\" for profile: invalid value provided for --profile flag (valid items: cis, etcd)".to_string(),
        ),
    ];
    for (yaml, want) in cases {
        let mut server = Server::start(
            bin(),
            ServerOpts {
                config_yaml: Some(yaml.clone()),
                ..ServerOpts::default()
            },
        )
        .expect("spawning rke2 server");
        let status = server
            .wait_exit(Duration::from_secs(60))
            .expect("a refused start exits");
        let log = server.log_text();
        assert_eq!(status.code(), Some(2), "{yaml}: {log}");
        assert!(log.contains(&want), "{yaml}: want {want:?} in:\n{log}");
        assert!(
            !server.data_dir.exists(),
            "{yaml}: the data dir was written"
        );
    }
}
