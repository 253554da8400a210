//! Runs and watches the real etcd binary as a child process.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// Errors from starting or supervising etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The etcd binary is not installed.
    #[error(
        "etcd binary '{0}' not found in PATH: install the Debian package etcd-server (apt-get install etcd-server)"
    )]
    BinaryMissing(String),
    /// A file or directory etcd needs could not be prepared.
    #[error("preparing etcd {what} at {path}: {source}")]
    Io {
        /// What was being prepared.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// etcd did not become healthy in time.
    #[error("etcd did not become healthy within {0:?}; see its log at {1}")]
    NotHealthy(Duration, PathBuf),
}

/// Everything needed to run one etcd member.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `etcd` or a path to it.
    pub binary: String,
    /// The member name (`<node>-<8 hex>`).
    pub name: String,
    /// The data directory (`<data-dir>/server/db/etcd`).
    pub data_dir: PathBuf,
    /// Where etcd's own output goes.
    pub log_file: PathBuf,
    /// URLs etcd listens on for clients.
    pub listen_client_urls: Vec<String>,
    /// The client URL advertised to other members.
    pub advertise_client_url: String,
    /// The peer URL (listen and advertise).
    pub peer_url: String,
    /// `--initial-cluster` (`name=peerURL,...`).
    pub initial_cluster: String,
    /// `new` or `existing`.
    pub initial_cluster_state: String,
    /// CA that signs client-port certificates (etcd server-ca).
    pub trusted_ca_file: PathBuf,
    /// Serving certificate of the client port.
    pub cert_file: PathBuf,
    /// Key of the client-port certificate.
    pub key_file: PathBuf,
    /// CA of the peer port (etcd peer-ca).
    pub peer_trusted_ca_file: PathBuf,
    /// Certificate of the peer port.
    pub peer_cert_file: PathBuf,
    /// Key of the peer-port certificate.
    pub peer_key_file: PathBuf,
    /// `--force-new-cluster`: drop every other member from the existing
    /// data and form a cluster of one (`rke2 server --cluster-reset`).
    pub force_new_cluster: bool,
}

impl EtcdConfig {
    fn args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", p(&self.data_dir)),
            format!("--listen-client-urls={}", self.listen_client_urls.join(",")),
            format!("--advertise-client-urls={}", self.advertise_client_url),
            format!("--listen-peer-urls={}", self.peer_url),
            format!("--initial-advertise-peer-urls={}", self.peer_url),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={}", self.initial_cluster_state),
            "--client-cert-auth=true".into(),
            format!("--trusted-ca-file={}", p(&self.trusted_ca_file)),
            format!("--cert-file={}", p(&self.cert_file)),
            format!("--key-file={}", p(&self.key_file)),
            "--peer-client-cert-auth=true".into(),
            format!("--peer-trusted-ca-file={}", p(&self.peer_trusted_ca_file)),
            format!("--peer-cert-file={}", p(&self.peer_cert_file)),
            format!("--peer-key-file={}", p(&self.peer_key_file)),
            // kube-apiserver compacts every 5 minutes; periodic compaction
            // in etcd itself gives the same history window without a loop here.
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=5m".into(),
            "--quota-backend-bytes=2147483648".into(),
            format!("--max-request-bytes={MAX_REQUEST_BYTES}"),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
            "--heartbeat-interval=200".into(),
            "--election-timeout=2000".into(),
        ];
        if self.force_new_cluster {
            args.push("--force-new-cluster".into());
        }
        args
    }
}

/// The most one request to etcd may carry (etcd's own default, given
/// explicitly so that the store's size check and etcd agree).
pub const MAX_REQUEST_BYTES: usize = 1_572_864;

/// Finds an executable in PATH (or checks an explicit path).
pub fn find_binary(name: &str) -> Result<PathBuf, EtcdError> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(EtcdError::BinaryMissing(name.to_string()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
        .ok_or_else(|| EtcdError::BinaryMissing(name.to_string()))
}

/// A supervised etcd child process.
///
/// Dropping it does not stop etcd; call [`EtcdProcess::stop`], which the
/// server does on SIGTERM/SIGINT. If the server dies hard, the kernel kills
/// etcd through the parent-death signal.
pub struct EtcdProcess {
    stop: Arc<Notify>,
    done: watch::Receiver<bool>,
    pid: watch::Receiver<Option<u32>>,
    log_file: PathBuf,
}

impl EtcdProcess {
    /// Starts etcd and a task that restarts it whenever it exits unexpectedly.
    pub fn start(cfg: EtcdConfig) -> Result<Self, EtcdError> {
        let binary = find_binary(&cfg.binary)?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| EtcdError::Io {
            what: "data directory",
            path: cfg.data_dir.clone(),
            source,
        })?;
        // etcd refuses a data dir readable by others.
        set_mode(&cfg.data_dir, 0o700).map_err(|source| EtcdError::Io {
            what: "data directory permissions",
            path: cfg.data_dir.clone(),
            source,
        })?;
        if let Some(dir) = cfg.log_file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| EtcdError::Io {
                what: "log directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let stop = Arc::new(Notify::new());
        let (done_tx, done) = watch::channel(false);
        let (pid_tx, pid) = watch::channel(None);
        let child = spawn(&binary, &cfg)?;
        pid_tx.send_replace(child.id());
        let log_file = cfg.log_file.clone();
        tokio::spawn(supervise(binary, cfg, child, stop.clone(), done_tx, pid_tx));
        Ok(Self {
            stop,
            done,
            pid,
            log_file,
        })
    }

    /// The pid of the current etcd child, if one runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// Where etcd's output is written.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s) and waits until it is gone.
    pub async fn stop(&self) {
        self.stop.notify_one();
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn spawn(binary: &Path, cfg: &EtcdConfig) -> Result<Child, EtcdError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log_file)
        .map_err(|source| EtcdError::Io {
            what: "log file",
            path: cfg.log_file.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| EtcdError::Io {
        what: "log file",
        path: cfg.log_file.clone(),
        source,
    })?;
    let mut cmd = std::process::Command::new(binary);
    cmd.args(cfg.args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe. prctl asks
    // the kernel to kill this child when its parent dies, so etcd never
    // outlives us; if the parent died before prctl ran (a kill -9 between
    // fork and here), the signal would never come, so exit at once.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| EtcdError::Io {
            what: "process",
            path: binary.to_path_buf(),
            source,
        })?;
    info!(pid = child.id(), name = %cfg.name, "etcd started");
    Ok(child)
}

async fn supervise(
    binary: PathBuf,
    cfg: EtcdConfig,
    mut child: Child,
    stop: Arc<Notify>,
    done: watch::Sender<bool>,
    pid: watch::Sender<Option<u32>>,
) {
    loop {
        tokio::select! {
            status = child.wait() => {
                warn!(?status, log = %cfg.log_file.display(), "etcd exited; restarting in 1s");
                pid.send_replace(None);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.notified() => break,
                }
                match spawn(&binary, &cfg) {
                    Ok(c) => {
                        pid.send_replace(c.id());
                        child = c;
                    }
                    Err(e) => {
                        warn!(error = %e, "restarting etcd failed; retrying");
                        // A failed spawn leaves no child; wait and retry.
                        loop {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                                _ = stop.notified() => {
                                    done.send_replace(true);
                                    return;
                                }
                            }
                            if let Ok(c) = spawn(&binary, &cfg) {
                                pid.send_replace(c.id());
                                child = c;
                                break;
                            }
                        }
                    }
                }
            }
            _ = stop.notified() => {
                terminate(&mut child).await;
                break;
            }
        }
    }
    pid.send_replace(None);
    done.send_replace(true);
}

async fn terminate(child: &mut Child) {
    if let Some(id) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(id as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            info!(pid = id, "etcd stopped");
            return;
        }
        warn!(pid = id, "etcd ignored SIGTERM for 10s; killing");
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_package() {
        let err = find_binary("etcd-definitely-not-here").unwrap_err();
        assert!(err.to_string().contains("etcd-server"), "{err}");
        let err = find_binary("/nonexistent/etcd").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/etcd"), "{err}");
    }

    #[test]
    fn args_carry_tls_and_cluster_state() {
        let cfg = EtcdConfig {
            binary: "etcd".into(),
            name: "n1-0123abcd".into(),
            data_dir: "/d".into(),
            log_file: "/l".into(),
            listen_client_urls: vec!["https://127.0.0.1:2379".into()],
            advertise_client_url: "https://127.0.0.1:2379".into(),
            peer_url: "https://127.0.0.1:2380".into(),
            initial_cluster: "n1-0123abcd=https://127.0.0.1:2380".into(),
            initial_cluster_state: "new".into(),
            trusted_ca_file: "/ca".into(),
            cert_file: "/c".into(),
            key_file: "/k".into(),
            peer_trusted_ca_file: "/pca".into(),
            peer_cert_file: "/pc".into(),
            peer_key_file: "/pk".into(),
            force_new_cluster: false,
        };
        let args = cfg.args();
        assert!(args.contains(&"--client-cert-auth=true".to_string()));
        assert!(args.contains(&"--initial-cluster-state=new".to_string()));
        assert!(args.contains(&"--peer-trusted-ca-file=/pca".to_string()));
    }
}
