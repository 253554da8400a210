//! A real kubectl binary bound to one server's admin kubeconfig, with its
//! own `HOME` (so each version keeps its own discovery cache), and the
//! table parsing the tests share.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Server;

/// One kubectl version against one server.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The kubeconfig it uses.
    pub kubeconfig: PathBuf,
    /// Its `HOME` (discovery cache).
    pub home: PathBuf,
    /// The binary.
    pub bin: PathBuf,
    /// Its minor version (`32` for 1.32).
    pub minor: u32,
}

impl Kubectl {
    /// kubectl 1.`minor` (`bin`) against `server` as admin.
    pub fn for_server(server: &Server, minor: u32, bin: PathBuf) -> Result<Self> {
        let home = server.dir.path().join(format!("home-1.{minor}"));
        std::fs::create_dir_all(&home).context("kubectl home")?;
        Ok(Self {
            kubeconfig: server.kubeconfig.clone(),
            home,
            bin,
            minor,
        })
    }

    /// The command with the environment set, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args);
        c
    }

    /// Runs with `stdin` and returns the whole output.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
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
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_in(args, None)
    }

    /// Like [`Kubectl::ok`], with `stdin`.
    pub fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
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

    /// Runs expecting failure; returns stderr.
    pub fn fails_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if out.status.success() {
            bail!(
                "kubectl 1.{} {args:?} succeeded, expected a failure: {}",
                self.minor,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `args -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&all)?)?)
    }
}

/// The cells of the row whose first column is `name`, split on runs of
/// two or more spaces (kubectl's column gap), with the header's.
pub fn row<'a>(table: &'a str, name: &str) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
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
