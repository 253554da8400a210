//! The test bed: real `rke2 server` processes with real etcd, each in its
//! own temporary data dir and on its own loopback address (127.x.y.z), so
//! tests run in parallel without port clashes; and the real kubectl
//! binaries the compatibility tests drive.
//!
//! Every process started here is stopped by its pid when its handle is
//! dropped; nothing is ever killed by name.

pub mod kubectl;
pub mod netbed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A loopback address no other server of this test process uses.
pub fn unique_loopback() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        10 + (pid % 200),
        (pid / 200) % 250,
        2 + n % 250
    )
}

/// Options for one server.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    /// Extra command-line flags.
    pub args: Vec<String>,
    /// Contents of `config.yaml` (written to `<dir>/config.yaml`).
    pub config_yaml: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Seed the data dir before the first start ([`seed_images`]: the
    /// test pause and busybox images, and helm), so pods run; the config
    /// should then name `pause-image: rke2.test/pause:1`.
    pub seed: bool,
}

/// A running `rke2 server`.
pub struct Server {
    /// Temporary root holding the data dir, config and kubeconfig.
    pub dir: tempfile::TempDir,
    /// The loopback address it binds.
    pub ip: String,
    /// `<dir>/data`.
    pub data_dir: PathBuf,
    /// The admin kubeconfig it writes.
    pub kubeconfig: PathBuf,
    /// Its combined stdout/stderr.
    pub log: PathBuf,
    /// The node name.
    pub node_name: String,
    binary: PathBuf,
    /// The options; change them and call [`Server::spawn`] to restart differently.
    pub opts: ServerOpts,
    child: Option<Child>,
}

impl Server {
    /// Runs `binary` from the next [`Server::spawn`] on (an upgrade or a
    /// downgrade of a stopped server).
    pub fn set_binary(&mut self, binary: &Path) {
        self.binary = binary.to_path_buf();
    }

    /// Starts a server with `binary` (the `rke2` executable).
    pub fn start(binary: &Path, opts: ServerOpts) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("rke2-test-").tempdir()?;
        let ip = unique_loopback();
        let node_name = format!("node-{}", ip.replace('.', "-"));
        let mut s = Server {
            data_dir: dir.path().join("data"),
            kubeconfig: dir.path().join("rke2.yaml"),
            log: dir.path().join("server.log"),
            dir,
            ip,
            node_name,
            binary: binary.to_path_buf(),
            opts,
            child: None,
        };
        if s.opts.seed {
            seed_images(&s.data_dir)?;
        }
        s.spawn()?;
        Ok(s)
    }

    /// The command line the server runs with.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--write-kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--bind-address")
            .arg(&self.ip)
            .arg("--node-name")
            .arg(&self.node_name)
            .args(&self.opts.args);
        let cfg = self.dir.path().join("config.yaml");
        cmd.arg("--config").arg(&cfg);
        for (k, v) in OFFLINE_ENV {
            cmd.env(k, v);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// (Re)starts the process, appending to the log.
    pub fn spawn(&mut self) -> Result<()> {
        let cfg = self.dir.path().join("config.yaml");
        let text = self.opts.config_yaml.clone().unwrap_or_default();
        std::fs::write(&cfg, &text)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the kubeconfig exists, `/readyz` answers through it and
    /// the `default` namespace has its `default` ServiceAccount (which the
    /// service-account controller creates shortly after start; pods are
    /// refused until it exists, as upstream's).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<kube::Client> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "server exited early with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if self.kubeconfig.exists()
                && let Ok(client) = self.client().await
            {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                let sa = http::Request::get("/api/v1/namespaces/default/serviceaccounts/default")
                    .body(Vec::new())?;
                if client
                    .request_text(req)
                    .await
                    .map(|t| t == "ok")
                    .unwrap_or(false)
                    && client.request_text(sa).await.is_ok()
                {
                    return Ok(client);
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "server not ready within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A kube client from the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Sends a signal and waits for the process to exit.
    pub fn stop_with(
        &mut self,
        sig: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("server not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("server did not exit within {timeout:?} after {sig}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself (a refused start).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("server not running")?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if start.elapsed() > timeout {
                bail!(
                    "server still running after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A kubectl command against this server.
    pub fn kubectl(&self, kubectl: &Path) -> Command {
        let mut cmd = Command::new(kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }
}

/// Environment every node under test gets: containerd's registry traffic
/// goes to a closed local port, so an image that is not in the air-gap
/// folder fails at once (`ErrImagePull`) and nothing leaves the machine.
pub const OFFLINE_ENV: [(&str, &str); 2] = [
    ("CONTAINERD_HTTP_PROXY", "http://127.0.0.1:9"),
    ("CONTAINERD_HTTPS_PROXY", "http://127.0.0.1:9"),
];

/// Ends the containers a node under `data_dir` started (they outlive the
/// node role by design) and unmounts what they left: what `rke2 killall`
/// does. Only pids recorded in that node's containerd state are touched.
pub fn kill_node_containers(data_dir: &Path) -> rke2_runtime::cleanup::Cleaned {
    let agent = data_dir.join("agent");
    rke2_runtime::cleanup::kill_all(
        &agent.join("containerd"),
        &[agent.join("containerd"), agent.join("pods")],
    )
}

/// Builds an image tarball with `scripts/mkimage.py` (from Debian's
/// busybox-static) at `out`, tagged `reference`; `pause` makes a pod
/// sandbox image.
pub fn make_image(out: &Path, reference: &str, pause: bool) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage.py");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(out).arg(reference);
    if pause {
        cmd.arg("--pause");
    }
    run_ok(&mut cmd).with_context(|| {
        format!("building image {reference} (needs python3 and Debian's busybox-static; scripts/install.sh installs both)")
    })?;
    Ok(())
}

/// The sandbox image tests use.
pub const TEST_PAUSE_IMAGE: &str = "rke2.test/pause:1";
/// The busybox image tests run.
pub const TEST_BUSYBOX_IMAGE: &str = "rke2.test/busybox:1";

/// Puts the test pause and busybox images into `<data_dir>/agent/images`
/// (the air-gap folder) before the node starts, and helm at
/// `<data_dir>/bin/helm` when the install script put it on the machine
/// (as `scripts/install.sh --data-dir` does for a real data dir), so the
/// addon image carries it and HelmChart Jobs run.
pub fn seed_images(data_dir: &Path) -> Result<()> {
    let dir = data_dir.join("agent/images");
    make_image(&dir.join("pause.tar"), TEST_PAUSE_IMAGE, true)?;
    make_image(&dir.join("busybox.tar"), TEST_BUSYBOX_IMAGE, false)?;
    if Path::new(HELM).is_file() {
        seed_helm(data_dir)?;
    }
    Ok(())
}

/// Where `scripts/install.sh` puts helm.
pub const HELM: &str = "/usr/local/lib/rke2-test/helm";

/// Copies the installed helm to `<data_dir>/bin/helm`; fails naming the
/// install script when there is none.
pub fn seed_helm(data_dir: &Path) -> Result<()> {
    if !Path::new(HELM).is_file() {
        bail!("no helm at {HELM}: run `bash scripts/install.sh` first");
    }
    let bin = data_dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(HELM, bin.join("helm")).with_context(|| format!("copying {HELM}"))?;
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_clean();
    }
}

impl Server {
    fn stop_and_clean(&mut self) {
        self.stop_process();
        kill_node_containers(&self.data_dir);
    }

    fn stop_process(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fake Ready node (created through the API), with a Lease a fake
/// kubelet keeps renewing every 2 s until `stop`, so the server's node
/// lifecycle loop leaves it alone. Nothing runs its pods: tests move them
/// through their states with status patches, and
/// [`finalize_terminating_pods`] plays the kubelet's last step.
pub async fn fake_node(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
    stop: &tokio_util::sync::CancellationToken,
) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use serde_json::json;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .expect("a valid Node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("creating a fake node");
    let now = Timestamp::now().to_string();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await
        .expect("marking a fake node Ready");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let name = name.to_string();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let micro = Timestamp::from_microsecond(Timestamp::now().as_microsecond())
                .expect("a valid timestamp");
            let spec = json!({"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro.to_string()});
            let patched = leases
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": spec})),
                )
                .await;
            if let Err(kube::Error::Api(s)) = patched
                && s.code == 404
            {
                let lease: Lease = serde_json::from_value(
                    json!({"metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec}),
                )
                .expect("a valid Lease");
                let _ = leases.create(&PostParams::default(), &lease).await;
            }
        }
    });
}

/// Plays a kubelet's last step for fake nodes until `stop`: a pod bound
/// to a node whose name starts with `node_prefix` and marked for graceful
/// deletion is deleted with grace 0 (what a real node does once its
/// containers have stopped; without it such pods stay Terminating).
pub async fn finalize_terminating_pods(
    client: kube::Client,
    node_prefix: String,
    stop: tokio_util::sync::CancellationToken,
) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, ListParams, Preconditions};
    let all: Api<Pod> = Api::all(client.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(list) = all.list(&ListParams::default()).await else {
            continue;
        };
        for p in list.items {
            let on_fake = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n.starts_with(&node_prefix));
            if !on_fake || p.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: p.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let _ = api
                .delete(p.metadata.name.as_deref().unwrap_or(""), &dp)
                .await;
        }
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let conf =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let mut conf = conf;
    // A test sees the server's answer (a 429, a 503) as it is.
    conf.default_retry = false;
    Ok(kube::Client::try_from(conf)?)
}

/// Writes to `out` a kubeconfig for the first cluster of `admin` (its
/// server and CA) that authenticates with the bearer `token` only, no
/// client certificate: what a pod's in-cluster config amounts to.
pub fn token_kubeconfig(admin: &Path, token: &str, out: &Path) -> Result<()> {
    let kc = kube::config::Kubeconfig::read_from(admin)?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("no cluster in the admin kubeconfig")?;
    let mut c = serde_json::json!({"server": cluster.server});
    if let Some(ca) = cluster.certificate_authority_data {
        c["certificate-authority-data"] = serde_json::json!(ca);
    }
    if let Some(ca) = cluster.certificate_authority {
        c["certificate-authority"] = serde_json::json!(ca);
    }
    // JSON is YAML: kubectl and kube read it as a kubeconfig.
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": c}],
        "users": [{"name": "t", "user": {"token": token}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    });
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Where the install script puts the test kubectl binaries.
pub const KUBECTL_DIR: &str = "/usr/local/lib/rke2-test/kubectl";

/// The real kubectl binaries available, as (minor version, path), oldest
/// first. Fails, naming the install script, when fewer than two exist.
pub fn kubectls() -> Result<Vec<(u32, PathBuf)>> {
    let dir = std::env::var("RKE2_TEST_KUBECTL_DIR").unwrap_or_else(|_| KUBECTL_DIR.to_string());
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(minor) = name
                .strip_prefix("kubectl-1.")
                .and_then(|m| m.parse::<u32>().ok())
            {
                out.push((minor, e.path()));
            }
        }
    }
    out.sort();
    if out.len() < 2 {
        bail!(
            "need at least two kubectl versions in {dir} (found {}); run `bash scripts/install.sh` first",
            out.len()
        );
    }
    Ok(out)
}

/// Runs a command, failing with its output when it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pid of the `etcd` child of a server process, if one runs.
pub fn etcd_child(server_pid: u32) -> Option<i32> {
    child_named(server_pid, "etcd")
}

/// The pid of the direct child of `parent` whose command name is `comm`
/// (e.g. the containerd a node started), found through `/proc`.
pub fn child_named(parent: u32, comm_name: &str) -> Option<i32> {
    let server_pid = parent;
    let rd = std::fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit(')').next().unwrap_or("");
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if ppid == server_pid && comm.trim() == comm_name {
            return Some(pid);
        }
    }
    None
}

/// Runs `etcdctl` (v3 API) against `https://<ip>:2379` with the etcd
/// client certificate a server keeps under `data_dir`.
pub fn etcdctl(data_dir: &Path, ip: &str, args: &[&str]) -> std::process::Output {
    let tls = data_dir.join("server/tls/etcd");
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{ip}:2379"))
        .arg(format!("--cacert={}", tls.join("server-ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .args(args)
        .output()
        .expect("etcdctl from Debian etcd-client (scripts/install.sh)")
}

/// How many started voting members an `etcdctl member list` shows.
pub fn started_voters(member_list: &[u8]) -> usize {
    String::from_utf8_lossy(member_list)
        .lines()
        .filter(|l| l.contains(", started,") && l.trim_end().ends_with("false"))
        .count()
}
