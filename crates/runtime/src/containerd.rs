//! Debian's `containerd` as a supervised child process of the node role.
//!
//! Everything it keeps lives under the agent data dir: config, root,
//! state, the runc root and the CRI socket; never the machine's own
//! `/run/containerd/containerd.sock`, so several nodes can share one
//! machine (tests) and a machine-wide containerd is left alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::RuntimeError;

/// Where the runtime keeps its files and what it runs with.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// The containerd binary (Debian's `/usr/bin/containerd` by default).
    pub binary: PathBuf,
    /// `<data-dir>/agent/containerd`: config, root, state, socket, log.
    pub dir: PathBuf,
    /// The pod sandbox ("pause") image (`pause-image`).
    pub sandbox_image: String,
    /// Where the CNI plugin binaries are (Debian: `/usr/lib/cni`).
    pub cni_bin_dir: PathBuf,
    /// Where the node role writes its CNI network config.
    pub cni_conf_dir: PathBuf,
    /// Extra environment for containerd (`CONTAINERD_HTTP_PROXY` and
    /// friends become `HTTP_PROXY`..., as in RKE2).
    pub env: Vec<(String, String)>,
}

impl ContainerdConfig {
    /// The defaults for a node whose agent data dir is `agent_dir`.
    pub fn for_agent_dir(agent_dir: &Path, sandbox_image: &str) -> ContainerdConfig {
        let mut env = Vec::new();
        for (from, to) in [
            ("CONTAINERD_HTTP_PROXY", "HTTP_PROXY"),
            ("CONTAINERD_HTTPS_PROXY", "HTTPS_PROXY"),
            ("CONTAINERD_NO_PROXY", "NO_PROXY"),
        ] {
            if let Ok(v) = std::env::var(from) {
                env.push((to.to_string(), v));
            }
        }
        ContainerdConfig {
            binary: PathBuf::from("containerd"),
            dir: agent_dir.join("containerd"),
            sandbox_image: sandbox_image.to_string(),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            cni_conf_dir: agent_dir.join("etc/cni/net.d"),
            env,
        }
    }

    /// The CRI (and containerd API) socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's state dir (task state, shim pid files, netns pins).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// containerd's root dir (content, snapshots, metadata).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// containerd's own log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The config file (containerd config version 2).
    pub fn render(&self) -> String {
        let q = |p: &Path| toml_string(&p.to_string_lossy());
        format!(
            r#"# Written by rke2 at every start; edits are overwritten.
version = 2
root = {root}
state = {state}
# Snapshotters and plugins this node never uses: skipping them keeps
# start-up quick and the log quiet.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = {restrict_oom}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc}

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
"#,
            root = q(&self.root_dir()),
            state = q(&self.state_dir()),
            sock = q(&self.socket()),
            ttrpc = q(&self.dir.join("containerd.sock.ttrpc")),
            pause = toml_string(&self.sandbox_image),
            runc = q(&self.state_dir().join("runc")),
            cni_bin = q(&self.cni_bin_dir),
            cni_conf = q(&self.cni_conf_dir),
            restrict_oom = !can_lower_oom_score_adj(),
        )
    }
}

/// Whether this process may lower an OOM score adjustment (needs
/// CAP_SYS_RESOURCE). Where it may not (some sandboxed machines, this
/// test machine among them), runc fails every pod sandbox with "failed to
/// update /proc/self/oom_score_adj: Permission denied" unless containerd
/// is told to keep scores at or above its own.
pub fn can_lower_oom_score_adj() -> bool {
    let path = "/proc/self/oom_score_adj";
    let Ok(cur) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(cur) = cur.trim().parse::<i32>() else {
        return false;
    };
    if cur <= -1000 {
        return true;
    }
    let lowered = std::fs::write(path, (cur - 1).to_string()).is_ok();
    if lowered {
        // Raising back is always allowed.
        let _ = std::fs::write(path, cur.to_string());
    }
    lowered
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running, supervised containerd.
pub struct Containerd {
    cfg: ContainerdConfig,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Containerd {
    /// Writes the config, starts containerd and waits until its socket
    /// answers; afterwards restarts it whenever it exits, until
    /// [`Containerd::stop`].
    pub async fn start(cfg: ContainerdConfig) -> Result<Containerd, RuntimeError> {
        for d in [&cfg.dir, &cfg.cni_conf_dir] {
            std::fs::create_dir_all(d).map_err(|e| RuntimeError::io("creating", d, e))?;
        }
        let sock = cfg.socket();
        if sock.as_os_str().len() >= 100 {
            return Err(RuntimeError::Config(format!(
                "the containerd socket path {} is too long for a unix socket (108 bytes); use a shorter data-dir",
                sock.display()
            )));
        }
        let path = cfg.config_path();
        let tmp = cfg.dir.join(".config.toml.tmp");
        std::fs::write(&tmp, cfg.render()).map_err(|e| RuntimeError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io("writing", &path, e))?;

        let mut child = spawn(&cfg)?;
        wait_for_socket(&cfg, &mut child, Duration::from_secs(30)).await?;
        info!(socket = %sock.display(), "containerd is up");
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(cfg.clone(), child, stop.clone()));
        Ok(Containerd { cfg, stop, task })
    }

    /// The config it runs with.
    pub fn config(&self) -> &ContainerdConfig {
        &self.cfg
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s). Containers
    /// keep running in their shims, as when a kubelet stops; the next
    /// start adopts them.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn spawn(cfg: &ContainerdConfig) -> Result<tokio::process::Child, RuntimeError> {
    let log_path = cfg.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RuntimeError::io("opening", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| RuntimeError::io("opening", &log_path, e))?;
    // A stale socket from a killed containerd would make it refuse to
    // start ("address already in use").
    let _ = std::fs::remove_file(cfg.socket());
    let mut cmd = Command::new(&cfg.binary);
    cmd.arg("--config")
        .arg(cfg.config_path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(false);
    for (k, v) in &cfg.env {
        cmd.env(k, v);
    }
    // containerd dies with the node role (even on kill -9), as etcd does;
    // the shims it started are not its children in that sense (they
    // re-parent), so running containers survive and are adopted later.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                return Err(std::io::Error::other(
                    "parent exited before containerd started",
                ));
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RuntimeError::Config(format!(
                "the container runtime {} was not found; install Debian's `containerd` package (scripts/install.sh does)",
                cfg.binary.display()
            ))
        } else {
            RuntimeError::io("starting", &cfg.binary, e)
        }
    })
}

async fn wait_for_socket(
    cfg: &ContainerdConfig,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(RuntimeError::Config(format!(
                "containerd exited during start ({status}); see {}",
                cfg.log_path().display()
            )));
        }
        if tokio::net::UnixStream::connect(cfg.socket()).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(RuntimeError::Config(format!(
                "containerd did not open {} within {timeout:?}; see {}",
                cfg.socket().display(),
                cfg.log_path().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn supervise(
    cfg: ContainerdConfig,
    mut child: tokio::process::Child,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            status = child.wait() => {
                warn!(status = ?status.ok(), log = %cfg.log_path().display(), "containerd exited; restarting");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match spawn(&cfg) {
                    Ok(mut c) => {
                        if let Err(e) = wait_for_socket(&cfg, &mut c, Duration::from_secs(30)).await {
                            warn!(error = %e, "containerd restart failed");
                        } else {
                            info!("containerd restarted");
                            backoff = Duration::from_millis(500);
                        }
                        child = c;
                    }
                    // The old child's wait() answers again at once, so
                    // the next turn retries after a longer back-off.
                    Err(e) => warn!(error = %e, "containerd restart failed"),
                }
            }
            _ = stop.cancelled() => {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_the_agent_dir() {
        let cfg = ContainerdConfig::for_agent_dir(Path::new("/d/agent"), "rke2.local/pause:1");
        let text = cfg.render();
        assert!(text.contains("root = \"/d/agent/containerd/root\""));
        assert!(text.contains("state = \"/d/agent/containerd/state\""));
        assert!(text.contains("address = \"/d/agent/containerd/containerd.sock\""));
        assert!(text.contains("Root = \"/d/agent/containerd/state/runc\""));
        assert!(text.contains("conf_dir = \"/d/agent/etc/cni/net.d\""));
        assert!(text.contains("sandbox_image = \"rke2.local/pause:1\""));
        assert!(!text.contains("/run/containerd"));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
