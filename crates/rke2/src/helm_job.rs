//! `rke2 helm-job`: what a HelmChart's `helm-install-<name>` and
//! `helm-delete-<name>` Jobs run on the addon image (the role of RKE2's
//! klipper-helm image). It reads what the controller put in its
//! environment (`NAME`, `CHART`, `REPO`, `TARGET_NAMESPACE`,
//! `FAILURE_POLICY`, ...) and files (`/chart/<name>.tgz.base64`,
//! `/config/values-*.yaml`, `/config/ca-file.pem`, `/auth/`), decides
//! between install, upgrade, reinstall and uninstall from the release's
//! status, and runs the real `helm` for each step. Every helm command is
//! printed before it runs and helm's own output goes straight to the
//! container's log, so `kubectl logs job/helm-install-<name>` shows it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;

/// Where the addon image carries helm.
const HELM: &str = "/bin/helm";
/// The label helm puts on the release with the inputs' hash.
const CONFIG_HASH_KEY: &str = "helmcharts.helm.cattle.io/configHash";

/// The job's inputs.
struct Job {
    helm: PathBuf,
    env: HashMap<String, String>,
    /// `install` or `delete`.
    action: String,
    /// The arguments after the action (`--namespace`, `--set`, ...).
    extra: Vec<String>,
    /// Directory of the values files and `ca-file.pem`.
    config_dir: PathBuf,
    /// Directory of `<name>.tgz.base64`.
    chart_dir: PathBuf,
    /// Directory of the repository credentials.
    auth_dir: PathBuf,
    /// Directory of more CA files.
    ca_dir: PathBuf,
    /// Scratch space (an emptyDir in the Job).
    tmp: PathBuf,
}

/// An error of the job: printed, exit code 1.
struct Fail(String);

impl Job {
    fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or("")
    }

    fn helm_cmd(&self, args: &[String]) -> Command {
        let mut c = Command::new(&self.helm);
        c.args(args);
        // helm keeps its repositories and cache under these; the image's
        // root is not meant to be written.
        c.env("HELM_CACHE_HOME", self.tmp.join(".cache/helm"))
            .env("HELM_CONFIG_HOME", self.tmp.join(".config/helm"))
            .env("HELM_DATA_HOME", self.tmp.join(".local/share/helm"))
            .env("HOME", &self.tmp);
        if !self.var("HELM_DRIVER").is_empty() {
            c.env("HELM_DRIVER", self.var("HELM_DRIVER"));
        }
        c
    }

    /// Runs helm with `args`, printing the command first; its output goes
    /// to ours. Returns the exit code.
    fn run(&self, args: &[String]) -> Result<i32, Fail> {
        println!("+ helm {}", shown(args));
        let status = self
            .helm_cmd(args)
            .status()
            .map_err(|e| Fail(format!("running {}: {e}", self.helm.display())))?;
        Ok(status.code().unwrap_or(1))
    }

    /// Runs helm and fails the job unless it succeeded.
    fn run_ok(&self, args: &[String]) -> Result<(), Fail> {
        match self.run(args)? {
            0 => Ok(()),
            code => Err(Fail(format!("helm {} exited with code {code}", args[0]))),
        }
    }

    /// The release's (status, revision), or None when there is none.
    fn release(&self) -> Result<Option<(String, i64)>, Fail> {
        let args: Vec<String> = [
            "status",
            "--namespace",
            self.var("TARGET_NAMESPACE"),
            self.var("NAME"),
            "--output",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        println!("+ helm {}", shown(&args));
        let out = self
            .helm_cmd(&args)
            .output()
            .map_err(|e| Fail(format!("running {}: {e}", self.helm.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("not found") {
                println!("no release {} yet", self.var("NAME"));
                return Ok(None);
            }
            eprint!("{err}");
            return Err(Fail(format!(
                "helm status exited with code {}",
                out.status.code().unwrap_or(1)
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| Fail(format!("helm status printed no JSON: {e}")))?;
        let status = v["info"]["status"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        let version = v["version"].as_i64().unwrap_or(0);
        println!(
            "release {} is {status} at revision {version}",
            self.var("NAME")
        );
        Ok(Some((status, version)))
    }

    /// The flags every install/upgrade gets.
    fn common_flags(&self, chart: &str) -> Result<Vec<String>, Fail> {
        let mut f = vec![self.var("NAME").to_string(), chart.to_string()];
        if let Some(ca) = self.ca_file()? {
            f.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        if self.var("INSECURE_SKIP_TLS_VERIFY") == "true" {
            f.push("--insecure-skip-tls-verify".into());
        }
        if self.var("PLAIN_HTTP") == "true" {
            f.push("--plain-http".into());
        }
        if !self.var("TIMEOUT").is_empty() {
            f.extend(["--timeout".into(), self.var("TIMEOUT").into()]);
        }
        if !self.var("CONFIG_HASH").is_empty() {
            f.extend([
                "--labels".into(),
                format!("{CONFIG_HASH_KEY}={}", self.var("CONFIG_HASH")),
            ]);
        }
        for v in values_files(&self.config_dir) {
            f.extend(["--values".into(), v.display().to_string()]);
        }
        Ok(f)
    }

    /// The CA certificates to verify the repository with, gathered into
    /// one file: the chart's `repoCA` and the files of its ConfigMap.
    fn ca_file(&self) -> Result<Option<PathBuf>, Fail> {
        let mut pem = String::new();
        let mut sources = vec![self.config_dir.join("ca-file.pem")];
        if let Ok(rd) = std::fs::read_dir(&self.ca_dir) {
            let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            more.sort();
            sources.extend(more.into_iter().filter(|p| p.is_file()));
        }
        for s in sources {
            if let Ok(text) = std::fs::read_to_string(&s) {
                pem.push('\n');
                pem.push_str(&text);
            }
        }
        if pem.is_empty() {
            return Ok(None);
        }
        let out = self.tmp.join("ca-file.pem");
        std::fs::write(&out, pem).map_err(|e| Fail(format!("writing {}: {e}", out.display())))?;
        Ok(Some(out))
    }

    /// The chart to install: the decoded `chartContent`, else `CHART`
    /// (with `%{KUBERNETES_API}%` replaced, as upstream).
    fn chart(&self) -> Result<String, Fail> {
        let encoded = self
            .chart_dir
            .join(format!("{}.tgz.base64", self.var("NAME")));
        if let Ok(text) = std::fs::read_to_string(&encoded) {
            let cleaned: String = text.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(cleaned)
                .map_err(|e| Fail(format!("spec.chartContent is not base64: {e}")))?;
            let out = self.tmp.join(format!("{}.tgz", self.var("NAME")));
            std::fs::write(&out, bytes)
                .map_err(|e| Fail(format!("writing {}: {e}", out.display())))?;
            return Ok(out.display().to_string());
        }
        let host = self.var("KUBERNETES_SERVICE_HOST");
        let api = if host.contains(':') {
            format!("[{host}]:{}", self.var("KUBERNETES_SERVICE_PORT"))
        } else {
            format!("{host}:{}", self.var("KUBERNETES_SERVICE_PORT"))
        };
        Ok(self.var("CHART").replace("%{KUBERNETES_API}%", &api))
    }

    /// Adds the chart's repository under the chart's name.
    fn repo_init(&self, chart: &str) -> Result<(), Fail> {
        if chart.contains("://") || self.var("REPO").is_empty() || Path::new(chart).is_file() {
            return Ok(());
        }
        let repo_name = self.var("NAME").split('/').next().unwrap_or("").to_string();
        let mut args = vec!["repo".to_string(), "add".into()];
        if let Some(ca) = self.ca_file()? {
            args.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        if self.var("INSECURE_SKIP_TLS_VERIFY") == "true" {
            args.push("--insecure-skip-tls-verify".into());
        }
        let user = std::fs::read_to_string(self.auth_dir.join("username")).ok();
        let password = self.auth_dir.join("password");
        if user.is_some() && self.var("AUTH_PASS_CREDENTIALS") == "true" {
            args.push("--pass-credentials".into());
        }
        args.extend([repo_name, self.var("REPO").to_string()]);
        if let Some(user) = user {
            let pw = std::fs::read_to_string(&password)
                .map_err(|e| Fail(format!("reading {}: {e}", password.display())))?;
            args.extend(["--username".into(), user.trim().to_string()]);
            // The password goes on stdin, never on a command line.
            println!("+ helm {} --password-stdin", shown(&args));
            args.push("--password-stdin".into());
            let mut child = self
                .helm_cmd(&args)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| Fail(format!("running {}: {e}", self.helm.display())))?;
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(pw.trim_end().as_bytes());
            }
            let st = child
                .wait()
                .map_err(|e| Fail(format!("waiting for helm: {e}")))?;
            if !st.success() {
                return Err(Fail("helm repo add failed".into()));
            }
        } else {
            self.run_ok(&args)?;
        }
        self.run_ok(&["repo".into(), "update".into()])
    }

    fn install_args(&self, verb: &str, chart: &str) -> Result<Vec<String>, Fail> {
        let mut a: Vec<String> = vec![verb.into()];
        if verb == "upgrade" {
            a.push("--install".into());
        }
        a.extend(self.common_flags(chart)?);
        a.extend(self.extra.iter().cloned());
        // `--create-namespace` is an install flag helm's upgrade also takes
        // with --install; nothing to drop.
        Ok(a)
    }

    fn uninstall(&self) -> Result<(), Fail> {
        self.run_ok(&[
            "uninstall".into(),
            self.var("NAME").into(),
            "--namespace".into(),
            self.var("TARGET_NAMESPACE").into(),
            "--wait".into(),
        ])
    }

    fn main(&self) -> Result<(), Fail> {
        if self.var("HELM_VERSION") == "v2" {
            return Err(Fail(
                "Helm v2 is EOL effective 2020-11-13; upgrade your chart to helm v3".into(),
            ));
        }
        if !self.helm.is_file() {
            return Err(Fail(format!(
                "the helm binary {} is missing from the addon image: rke2 carries <data-dir>/bin/helm of the node that built the image into it; install helm there (bash scripts/install.sh --data-dir <data-dir>) and restart rke2",
                self.helm.display()
            )));
        }
        let chart = self.chart()?;
        let release = self.release()?;
        if self.action == "delete" {
            let Some(_) = release else {
                println!("No helm chart installed; nothing to delete");
                return Ok(());
            };
            println!("Uninstalling helm chart");
            // As upstream: an uninstall that fails leaves nothing to retry.
            let _ = self.uninstall();
            return Ok(());
        }
        self.repo_init(&chart)?;
        let Some((status, revision)) = release else {
            println!("Installing helm chart");
            return self.run_ok(&self.install_args("install", &chart)?);
        };
        let expected = self.var("EXPECTED_RELEASE_REVISION");
        if !expected.is_empty() && expected != revision.to_string() {
            println!(
                "Current release revision {revision} does not match expected revision {expected}"
            );
            return Ok(());
        }
        match status.as_str() {
            "deployed" => {
                println!("Upgrading helm chart");
                self.run_ok(&self.install_args("upgrade", &chart)?)
            }
            "pending-upgrade" | "superseded" => {
                println!("Previous helm job was interrupted ({status}); retrying the upgrade");
                self.run_ok(&self.install_args("upgrade", &chart)?)
            }
            _ => match self.var("FAILURE_POLICY") {
                "abort" => Err(Fail(format!(
                    "Release status is '{status}' and failure policy is 'abort'; waiting for operator intervention"
                ))),
                "retry" => {
                    println!("Upgrading {} from {status} state", self.var("NAME"));
                    self.run_ok(&self.install_args("upgrade", &chart)?)
                }
                "" | "reinstall" => {
                    println!("Uninstalling {status} helm chart");
                    self.uninstall()?;
                    println!("Installing helm chart");
                    self.run_ok(&self.install_args("install", &chart)?)
                }
                other => Err(Fail(format!("Unknown failure policy '{other}'"))),
            },
        }
    }
}

/// The values files in `dir`, in name order (values-0-* before values-1-*:
/// a HelmChartConfig's over its chart's).
fn values_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "yaml")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("values-"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A command line as printed (arguments with spaces quoted).
fn shown(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `rke2 helm-job <install|delete> [helm flags]`; the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(action) = args.first().filter(|a| *a == "install" || *a == "delete") else {
        eprintln!(
            "usage: rke2 helm-job <install|delete> [helm flags]\nRun by a HelmChart's helm Job; reads NAME, CHART, REPO, TARGET_NAMESPACE, ... from the environment."
        );
        return 2;
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let tmp = PathBuf::from(env.get("HELM_JOB_TMP").cloned().unwrap_or("/tmp".into()));
    let root = PathBuf::from(env.get("HELM_JOB_ROOT").cloned().unwrap_or("/".into()));
    let job = Job {
        helm: PathBuf::from(env.get("HELM_BIN").cloned().unwrap_or(HELM.into())),
        action: action.clone(),
        extra: args[1..].to_vec(),
        config_dir: root.join("config"),
        chart_dir: root.join("chart"),
        auth_dir: root.join("auth"),
        ca_dir: root.join("ca-files"),
        tmp,
        env,
    };
    if job.var("NAME").is_empty() {
        eprintln!("helm-job: NAME is not set: this runs inside a HelmChart's helm Job");
        return 2;
    }
    match job.main() {
        Ok(()) => 0,
        Err(Fail(msg)) => {
            // Not `Error:`: that prefix is helm's, and the controller
            // reports helm's own error line when there is one.
            eprintln!("helm-job: {msg}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_files_come_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "values-1-000-HelmChartConfig-ValuesContent.yaml",
            "values-0-000-HelmChart-ValuesContent.yaml",
            "ca-file.pem",
        ] {
            std::fs::write(d.path().join(n), "a: 1\n").unwrap();
        }
        let names: Vec<String> = values_files(d.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "values-0-000-HelmChart-ValuesContent.yaml",
                "values-1-000-HelmChartConfig-ValuesContent.yaml"
            ]
        );
    }

    #[test]
    fn a_missing_helm_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let job = Job {
            helm: d.path().join("helm"),
            env: [("NAME".to_string(), "x".to_string())].into(),
            action: "install".into(),
            extra: vec![],
            config_dir: d.path().join("config"),
            chart_dir: d.path().join("chart"),
            auth_dir: d.path().join("auth"),
            ca_dir: d.path().join("ca"),
            tmp: d.path().to_path_buf(),
        };
        let Err(Fail(msg)) = job.main() else {
            panic!("ran without helm")
        };
        assert!(
            msg.contains("helm binary") && msg.contains("bin/helm"),
            "{msg}"
        );
    }
}
