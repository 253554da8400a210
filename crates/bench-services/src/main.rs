//! Load generator of `bench/services.sh`: Services on a real cluster.
//!
//! Starts a two-node cluster on the network-namespace bed (one server
//! `s1`, one agent `a1`, real containerd, the busybox test image) and two
//! outside hosts: `x1` routes the service network and `a1`'s pod CIDR via
//! `a1`, `x2` routes the service network via `s1`. One pod `web` on `a1`
//! runs busybox `httpd` behind a ClusterIP Service and a NodePort Service;
//! its readiness probe is an HTTP GET of `/ready`, a file that `kubectl
//! exec` removes and creates again.
//!
//! Two parts, each printing a Markdown table on stdout:
//!
//! * `ready`: rounds of not-Ready -> Ready. The moment the bench's own
//!   watch of the pod delivers `Ready=True` is the start; the end is the
//!   first HTTP answer through each path (ClusterIP via the pod's node and
//!   via the other node, NodePort on both nodes), probed from the outside
//!   hosts every few ms since before the file came back. The reference is
//!   the same measurement against the pod IP, probed from the same moment
//!   the watch delivers Ready (the pod serves all along, so it is the
//!   floor of the method: watch delivery to us plus one request).
//! * `tcp`: connect + `GET /` + response until the server closes, one
//!   request at a time, alternating between the ClusterIP and the pod IP
//!   (both from `x1` via `a1`, so both cross the same node and only the
//!   proxy's NAT differs), then requests/s with `--concurrency` clients
//!   per path for `--seconds`, in alternating order per run.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd,
//! nftables and kubectl (scripts/install.sh).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use rke2_testbed::netbed::{Host, NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;
use tokio::sync::mpsc;

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(
    about = "Services on a real two-node cluster: endpoint Ready to traffic, and ClusterIP vs pod IP"
)]
struct Args {
    /// The rke2 binary the nodes run.
    #[arg(long)]
    rke2: PathBuf,
    /// kubectl (default: the newest of rke2_testbed::kubectls(), else
    /// `kubectl` on PATH).
    #[arg(long)]
    kubectl: Option<PathBuf>,
    /// Parts to run: ready, tcp.
    #[arg(long, value_delimiter = ',', default_value = "ready,tcp")]
    parts: Vec<String>,
    /// Not-Ready -> Ready rounds of the ready part.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Runs of the tcp part (the ratios are medians of per-run ratios).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sequential requests per path per run (latency).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Seconds per path per run (throughput).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Clients per path in the throughput phase, each one request at a
    /// time, a new connection per request.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// On an error, keep the bed (nodes, namespaces) this many seconds
    /// before removing it, to look at it by hand.
    #[arg(long, default_value_t = 0)]
    hold_on_error: u64,
}

/// Generous: a busy 2-core machine runs two nodes, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);
/// Pause between two probes of one path while it does not answer.
const PROBE_GAP: Duration = Duration::from_millis(5);
/// Timeout of one probe attempt (connect, request, answer).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The Services' addresses (fixed, so the outside hosts' routes and the
/// probes need no lookup).
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 77, 80);
const NODE_PORT: u16 = 30080;

/// Runs `f` on a new thread inside the network namespace of the file
/// `ns` (`/run/netns/<name>`, `/proc/<pid>/ns/net`); sockets it opens
/// live there for good.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    let path = ns.to_string();
    let fd = File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    }))
}

/// Waits for a thread without blocking the runtime.
async fn join<T: Send + 'static>(h: std::thread::JoinHandle<T>) -> Result<T> {
    tokio::task::spawn_blocking(move || h.join())
        .await?
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))
}

/// One HTTP/1.0 request on a new connection: connect, `GET /`, read until
/// the server closes. Ok when the answer is a 200.
fn request(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut buf = Vec::with_capacity(512);
    s.read_to_end(&mut buf)?;
    if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "answer {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(40)])
        )))
    }
}

/// A way a client reaches the pod: from which host, to which address.
#[derive(Clone)]
struct Target {
    label: &'static str,
    /// The network namespace (file) the client runs in.
    from: String,
    to: SocketAddr,
}

/// What one prober saw: the first answer (if any before the deadline),
/// and when the attempts that timed out (rather than being refused) had
/// started.
struct Probe {
    first_ok: Option<Instant>,
    timeouts: Vec<Instant>,
}

/// [`request`] on tokio: the same bytes, the same check.
async fn request_async(to: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").await?;
    let mut buf = Vec::with_capacity(512);
    s.read_to_end(&mut buf).await?;
    if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200"))
    }
}

/// Starts an attempt on `path` every [`PROBE_GAP`], without waiting for
/// the earlier ones, until one answers, `stop` is set or `deadline`
/// passes. Not waiting matters: a node answers a SYN to a Service without
/// endpoints with an ICMP error, which the kernel rate-limits per
/// destination (about one per second after a short burst), so most
/// refused attempts are silently dropped and would hang until their
/// timeout; one stuck attempt must not delay the next.
fn prober(
    path: &Target,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> Result<std::thread::JoinHandle<Probe>> {
    let to = path.to;
    in_ns(&path.from, move || {
        // A runtime on this thread: every socket is opened here, in the
        // namespace this thread entered.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for a prober");
        rt.block_on(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Instant>, bool)>();
            let mut tick = tokio::time::interval(PROBE_GAP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut timeouts = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                            return Probe { first_ok: None, timeouts };
                        }
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let t = Instant::now();
                            let r = tokio::time::timeout(PROBE_TIMEOUT, request_async(to)).await;
                            let _ = match r {
                                Ok(Ok(())) => tx.send((t, Some(Instant::now()), false)),
                                Ok(Err(_)) => tx.send((t, None, false)),
                                Err(_) => tx.send((t, None, true)),
                            };
                        });
                    }
                    Some((t, ok, timed_out)) = rx.recv() => {
                        if ok.is_some() {
                            return Probe { first_ok: ok, timeouts };
                        }
                        if timed_out {
                            timeouts.push(t);
                        }
                    }
                }
            }
        })
    })
}

/// Whether `path` answers one request now.
async fn answers(path: &Target) -> Result<bool> {
    let to = path.to;
    join(in_ns(&path.from, move || {
        request(to, PROBE_TIMEOUT).is_ok()
    })?)
    .await
}

fn ready_of(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The cluster, the outside hosts and the pod, ready to measure.
struct Cluster {
    // Field order is drop order: the nodes' handles before the bed, whose
    // Drop stops every process and deletes the namespaces.
    _s1: NodeProc,
    _a1: NodeProc,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    client: kube::Client,
    x1: Host,
    x2: Host,
    s1: Host,
    a1: Host,
    pod_ip: Ipv4Addr,
    /// The network namespace of pod idle-s1 (the only pod on s1).
    s1_pod_ns: String,
    /// The network namespace of pod web (the only pod on a1).
    web_ns: String,
    bed: NetBed,
}

/// The namespace file of a bed host.
fn ns_of(h: &Host) -> String {
    format!("/run/netns/{}", h.netns)
}

/// The network namespace of the only pod on a node: every task its
/// containerd runs (the sandbox and the container) shares it.
fn only_pod_netns(data_dir: &Path) -> Result<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(data_dir.join("agent/containerd/containerd.sock"))
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()
        .context("running ctr (containerd's client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .skip(1)
        .filter(|l| l.contains("RUNNING"))
        .find_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .with_context(|| format!("no running task in ctr tasks ls: {text}"))?;
    Ok(format!("/proc/{pid}/ns/net"))
}

fn ip_in(host: &Host, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(&host.netns)
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {} {}: {}",
            host.netns,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn log(msg: &str) {
    eprintln!("[bench-services] {msg}");
}

async fn setup(args: &Args) -> Result<Cluster> {
    let kubectl = match &args.kubectl {
        Some(k) => k.clone(),
        None => rke2_testbed::kubectls()
            .ok()
            .and_then(|v| v.last().map(|x| x.1.clone()))
            .unwrap_or_else(|| PathBuf::from("kubectl")),
    };
    let mut bed = NetBed::new().context("the bed needs root and iproute2 (scripts/install.sh)")?;
    let s1 = bed.add_host("s1")?;
    let a1 = bed.add_host("a1")?;
    let x1 = bed.add_host("x1")?;
    let x2 = bed.add_host("x2")?;
    let common = format!("token: bench-secret\npause-image: {TEST_PAUSE_IMAGE}\n");
    // No bundled addons: their images are not in the air-gap folder, and
    // they would only load the two CPUs.
    let server_cfg = format!(
        "{common}disable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut ps = NodeProc::new(&bed, &args.rke2, &s1, "server", &server_cfg, &[])?;
    let agent_cfg = format!("server: https://{}:9345\n{common}", s1.ip);
    let mut pa = NodeProc::new(&bed, &args.rke2, &a1, "agent", &agent_cfg, &[])?;
    rke2_testbed::seed_images(&ps.data_dir())?;
    rke2_testbed::seed_images(&pa.data_dir())?;
    log("starting the server");
    ps.start(&bed)?;
    let kc = ps.dir.join("rke2.yaml");
    eventually(LONG, "server kubeconfig", || async {
        kc.exists().then_some(())
    })
    .await
    .with_context(|| ps.log())?;
    let kubeconfig = ps.kubeconfig_at_ip()?;
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await?;
    log("starting the agent");
    pa.start(&bed)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pod_cidr = eventually(LONG, "two Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        let cidr = list
            .items
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some("a1"))?
            .spec
            .as_ref()?
            .pod_cidr
            .clone()?;
        (ready == 2).then_some(cidr)
    })
    .await
    .with_context(|| format!("server:\n{}\nagent:\n{}", ps.log(), pa.log()))?;
    // The outside hosts reach the service network (and x1 the agent's
    // pods) through a node, as a router in front of a cluster would.
    let svc_cidr = "10.43.0.0/16";
    ip_in(&x1, &["route", "add", svc_cidr, "via", &a1.ip.to_string()])?;
    ip_in(&x1, &["route", "add", &pod_cidr, "via", &a1.ip.to_string()])?;
    ip_in(&x2, &["route", "add", svc_cidr, "via", &s1.ip.to_string()])?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "a1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": TEST_BUSYBOX_IMAGE,
                "command": ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && echo ok > /www/ready && exec httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080},
                    "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1, "timeoutSeconds": 1}
            }]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    // A pod on the server too, as a real server has (its DNS, its
    // ingress): the CNI bridge plugin enables IPv4 forwarding when it
    // sets up a node's first pod, and rke2 does not enable it otherwise,
    // so a node without pods would not forward Service traffic to the
    // pods of other nodes.
    let idle: Pod = serde_json::from_value(json!({
        "metadata": {"name": "idle-s1"},
        "spec": {
            "nodeName": "s1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "86400"]}]
        }
    }))?;
    pods.create(&PostParams::default(), &idle).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for svc in [
        json!({"metadata": {"name": "web"}, "spec": {"clusterIP": CLUSTER_IP.to_string(),
            "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"metadata": {"name": "web-np"}, "spec": {"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": NODE_PORT}]}}),
    ] {
        let svc: Service = serde_json::from_value(svc)?;
        services.create(&PostParams::default(), &svc).await?;
    }
    eventually(LONG, "pod idle-s1 Ready", || async {
        ready_of(&pods.get("idle-s1").await.ok()?).then_some(())
    })
    .await
    .with_context(|| format!("server:\n{}", ps.log()))?;
    let pod_ip = eventually(LONG, "pod web Running and Ready", || async {
        let p = pods.get("web").await.ok()?;
        if !ready_of(&p) {
            return None;
        }
        p.status?.pod_ip?.parse::<Ipv4Addr>().ok()
    })
    .await
    .with_context(|| format!("agent:\n{}", pa.log()))?;
    log(&format!(
        "pod web Ready at {pod_ip} on a1 (pod CIDR {pod_cidr})"
    ));
    let s1_pod_ns = only_pod_netns(&ps.data_dir())?;
    let web_ns = only_pod_netns(&pa.data_dir())?;
    Ok(Cluster {
        web_ns,
        s1_pod_ns,
        _s1: ps,
        _a1: pa,
        kubeconfig,
        kubectl,
        client,
        x1,
        x2,
        s1,
        a1,
        pod_ip,
        bed,
    })
}

impl Cluster {
    fn pod_path(&self) -> Target {
        Target {
            label: "pod IP (reference)",
            from: ns_of(&self.x1),
            to: SocketAddr::V4(SocketAddrV4::new(self.pod_ip, 8080)),
        }
    }

    fn cluster_ip_path(&self) -> Target {
        Target {
            label: "ClusterIP via the pod's node",
            from: ns_of(&self.x1),
            to: SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, 80)),
        }
    }

    fn service_paths(&self) -> Vec<Target> {
        vec![
            self.cluster_ip_path(),
            Target {
                label: "ClusterIP via the other node",
                from: ns_of(&self.x2),
                to: SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, 80)),
            },
            Target {
                label: "NodePort on the pod's node",
                from: ns_of(&self.x1),
                to: SocketAddr::V4(SocketAddrV4::new(self.a1.ip, NODE_PORT)),
            },
            Target {
                label: "NodePort on the other node",
                from: ns_of(&self.x1),
                to: SocketAddr::V4(SocketAddrV4::new(self.s1.ip, NODE_PORT)),
            },
        ]
    }

    /// `kubectl exec web -- sh -c SCRIPT`, checked.
    async fn exec(&self, script: &str) -> Result<()> {
        let out = tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["exec", "web", "--", "sh", "-c", script])
            .output()
            .await
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl exec web -- sh -c {script:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Watches pod `web` and sends (when seen, Ready) for every event.
fn watch_ready(client: kube::Client) -> mpsc::UnboundedReceiver<(Instant, bool)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=web");
        let mut s = std::pin::pin!(watcher(pods, cfg));
        while let Some(ev) = s.next().await {
            let now = Instant::now();
            let pod = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                Ok(_) => continue,
                Err(e) => {
                    if tx.is_closed() {
                        return;
                    }
                    log(&format!("watch: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if tx.send((now, ready_of(&pod))).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the first watch event saying Ready == `want`.
async fn seen(rx: &mut mpsc::UnboundedReceiver<(Instant, bool)>, want: bool) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((t, r))) if r == want => return Ok(t),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the pod watch ended"),
            Err(_) => bail!("pod web not Ready={want} within {LONG:?}"),
        }
    }
}

fn ms(secs: f64) -> String {
    format!("{:.1}", secs * 1000.0)
}

async fn ready_part(c: &Cluster, rounds: usize) -> Result<()> {
    let mut rx = watch_ready(c.client.clone());
    let paths = c.service_paths();
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut reference = Vec::new();
    let mut timeouts = vec![0usize; paths.len()];
    for round in 0..rounds {
        // Not Ready, and every Service path refusing.
        c.exec("rm -f /www/ready").await?;
        seen(&mut rx, false).await?;
        for p in &paths {
            eventually(LONG, "path refusing once not Ready", || async {
                (!answers(p).await.ok()?).then_some(())
            })
            .await
            .with_context(|| {
                format!("{} still answers with its only endpoint not Ready", p.label)
            })?;
        }
        while rx.try_recv().is_ok() {}
        // Probers from before the file comes back; the Ready the watch
        // delivers is the start of every figure.
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + LONG;
        let probes = paths
            .iter()
            .map(|p| prober(p, stop.clone(), deadline))
            .collect::<Result<Vec<_>>>()?;
        let result = async {
            c.exec("echo ok > /www/ready").await?;
            let t0 = seen(&mut rx, true).await?;
            let direct = join(prober(&c.pod_path(), stop.clone(), deadline)?).await?;
            Ok::<_, anyhow::Error>((t0, direct))
        }
        .await;
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let mut firsts = Vec::new();
        for h in probes {
            firsts.push(join(h).await?);
        }
        let (t0, direct) = result?;
        let since = |t: Instant| {
            if t >= t0 {
                t.duration_since(t0).as_secs_f64()
            } else {
                -(t0.duration_since(t).as_secs_f64())
            }
        };
        reference.push(since(direct.first_ok.context("the pod IP did not answer")?));
        let mut line = format!(
            "round {}: pod IP {}",
            round + 1,
            ms(*reference.last().unwrap())
        );
        for (i, (p, f)) in paths.iter().zip(firsts).enumerate() {
            let t = f.first_ok.with_context(|| {
                format!("{} did not answer within {LONG:?} after Ready", p.label)
            })?;
            lat[i].push(since(t));
            // Attempts dropped while the Service had no endpoint are the
            // ICMP rate limit at work; only those started after Ready say
            // something about the path.
            let late: Vec<String> = f
                .timeouts
                .iter()
                .filter(|x| **x >= t0)
                .map(|x| ms(since(*x)))
                .collect();
            timeouts[i] += late.len();
            line += &format!(", {} {}", p.label, ms(since(t)));
            if !late.is_empty() {
                line += &format!(
                    " (attempts timed out after Ready, started at +{})",
                    late.join(" +")
                );
            }
        }
        log(&format!("{line} (ms)"));
    }
    let mut refs = reference.clone();
    refs.sort_by(f64::total_cmp);
    let (r50, r99) = (pct(&refs, 50.0), pct(&refs, 99.0));
    println!("## Endpoint Ready -> first answer through the Service");
    println!();
    println!(
        "{rounds} rounds; ms from the watch delivering the pod's Ready=True until the first HTTP answer. p99 is nearest-rank (with fewer than 100 rounds: the worst round)."
    );
    println!();
    println!(
        "| figure | p50 (ms) | p99 (ms) | max (ms) | min (ms) | attempts timed out after Ready | ratio p99 / pod IP p99 | target |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    println!(
        "| Ready -> answer, pod IP (reference) | {} | {} | {} | {} | - | 1.00 | reference |",
        ms(r50),
        ms(r99),
        ms(*refs.last().unwrap()),
        ms(refs[0]),
    );
    let mut worst = 0f64;
    for (i, p) in paths.iter().enumerate() {
        let mut v = lat[i].clone();
        v.sort_by(f64::total_cmp);
        let p99 = pct(&v, 99.0);
        worst = worst.max(p99);
        println!(
            "| Ready -> answer, {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            p.label,
            ms(pct(&v, 50.0)),
            ms(p99),
            ms(*v.last().unwrap()),
            ms(v[0]),
            timeouts[i],
            p99 / r99,
            if p99 <= 1.0 {
                "p99 <= 1 s: met"
            } else {
                "p99 <= 1 s: **NOT met**"
            }
        );
    }
    println!();
    println!(
        "worst p99 of the Service paths: {} ms ({})",
        ms(worst),
        if worst <= 1.0 {
            "target p99 <= 1 s met"
        } else {
            "target p99 <= 1 s **NOT met**"
        }
    );
    println!();
    Ok(())
}

/// Sequential requests alternating between `paths`, from one thread in
/// `from`: per path, the latencies in seconds, and the failures.
fn alternate(
    from: &str,
    paths: Vec<SocketAddr>,
    n: usize,
    first: usize,
) -> Result<std::thread::JoinHandle<(Vec<Vec<f64>>, usize)>> {
    in_ns(from, move || {
        let k = paths.len();
        let mut out = vec![Vec::with_capacity(n); k];
        let mut failed = 0;
        // Warm-up: ARP, conntrack, the server's first forks.
        for i in 0..50 * k {
            let _ = request(paths[i % k], Duration::from_secs(2));
        }
        for i in 0..n * k {
            let j = (i + first) % k;
            let t = Instant::now();
            match request(paths[j], Duration::from_secs(2)) {
                Ok(()) => out[j].push(t.elapsed().as_secs_f64()),
                Err(_) => failed += 1,
            }
        }
        (out, failed)
    })
}

/// Waits (at most 70 s: TIME_WAIT lasts 60 s) until the namespace `ns`
/// holds fewer than 100 sockets in TIME_WAIT.
async fn wait_tw_drained(ns: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let tw = join(in_ns(ns, || {
            let text =
                std::fs::read_to_string("/proc/thread-self/net/sockstat").unwrap_or_default();
            text.lines().find(|l| l.starts_with("TCP:")).and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "tw")
                    .and_then(|i| w.get(i + 1)?.parse::<u64>().ok())
            })
        })?)
        .await?
        .context("no TCP tw count in /proc/thread-self/net/sockstat")?;
        if tw < 100 {
            if t.elapsed() > Duration::from_secs(1) {
                log(&format!(
                    "waited {:.0} s for the server's TIME_WAIT sockets to expire",
                    t.elapsed().as_secs_f64()
                ));
            }
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(70) {
            bail!("{tw} sockets still in TIME_WAIT after 70 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Requests/s through `to` from `clients` threads in `from` for `secs`.
async fn throughput(from: &str, to: SocketAddr, clients: usize, secs: u64) -> Result<(f64, usize)> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut hs = Vec::new();
    let t = Instant::now();
    for _ in 0..clients {
        hs.push(in_ns(from, move || {
            let (mut ok, mut failed) = (0usize, 0usize);
            while Instant::now() < until {
                match request(to, Duration::from_secs(2)) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })?);
    }
    let (mut ok, mut failed) = (0, 0);
    for h in hs {
        let (o, f) = join(h).await?;
        ok += o;
        failed += f;
    }
    Ok((ok as f64 / t.elapsed().as_secs_f64(), failed))
}

/// The tcp part for one client: `from` (a namespace file) to `svc` and
/// `pod`; rows labelled with `prefix`.
#[allow(clippy::too_many_arguments)]
async fn tcp_client(
    args: &Args,
    from: &str,
    server_ns: &str,
    svc: SocketAddr,
    pod: SocketAddr,
    prefix: &str,
    heading: &str,
    about: &str,
) -> Result<()> {
    struct Run {
        s50: f64,
        s99: f64,
        p50: f64,
        p99: f64,
        srps: f64,
        prps: f64,
        failed: usize,
    }
    // Every latency run first (a few thousand connections each, from a
    // clean start), then the throughput phases, each once the server's TIME_WAIT sockets of the previous phase are gone:
    // a phase of thousands of connections leaves the pod holding their
    // 4-tuples for 60 s, and a new connection that the proxy's NAT maps
    // onto one of them is refused by PAWS (its timestamps come from
    // another clock) and waits a 1 s SYN retransmit. Within a phase that
    // is what such a client meets; carried into the next phase it would
    // only measure the phase before.
    let mut lats = Vec::new();
    wait_tw_drained(server_ns).await?;
    for run in 0..args.runs {
        let (lat, failed) = join(alternate(from, vec![svc, pod], args.requests, run % 2)?).await?;
        lats.push((lat, failed));
    }
    let mut runs = Vec::new();
    for (run, (lat, mut failed)) in lats.into_iter().enumerate() {
        let mut s = lat[0].clone();
        let mut p = lat[1].clone();
        s.sort_by(f64::total_cmp);
        p.sort_by(f64::total_cmp);
        // Throughput: the order alternates between runs.
        let mut rps = [0f64; 2];
        for k in 0..2 {
            let j = (k + run) % 2;
            let to = if j == 0 { svc } else { pod };
            wait_tw_drained(server_ns).await?;
            let (r, f) = throughput(from, to, args.concurrency, args.seconds).await?;
            rps[j] = r;
            failed += f;
        }
        let r = Run {
            s50: pct(&s, 50.0),
            s99: pct(&s, 99.0),
            p50: pct(&p, 50.0),
            p99: pct(&p, 99.0),
            srps: rps[0],
            prps: rps[1],
            failed,
        };
        log(&format!(
            "{prefix}run {}: ClusterIP p50 {} p99 {} ms, {:.0}/s; pod IP p50 {} p99 {} ms, {:.0}/s; {} failed",
            run + 1,
            ms(r.s50),
            ms(r.s99),
            r.srps,
            ms(r.p50),
            ms(r.p99),
            r.prps,
            r.failed
        ));
        runs.push(r);
    }
    let col = |f: &dyn Fn(&Run) -> f64, fmt: &dyn Fn(f64) -> String| -> String {
        let cells: Vec<String> = runs.iter().map(|r| fmt(f(r))).collect();
        format!(
            "{} | {}",
            fmt(median(runs.iter().map(f).collect())),
            cells.join(" | ")
        )
    };
    let msf = |x: f64| format!("{:.3}", x * 1000.0);
    let rate = |x: f64| format!("{x:.0}");
    let ratio = |x: f64| format!("{x:.2}");
    println!("### {heading}");
    println!();
    println!(
        "{about} One request = connect, `GET /` (HTTP/1.0), read until busybox httpd in the pod closes. Latency: {} requests per path per run, one at a time, alternating paths. Throughput: {} clients per path, each one request at a time, for {} s per path, order alternating between runs. Ratios: median of the per-run ratios.",
        args.requests, args.concurrency, args.seconds
    );
    println!();
    let runs_head: Vec<String> = (1..=runs.len()).map(|i| format!("run {i}")).collect();
    println!("| figure | median | {} | target |", runs_head.join(" | "));
    println!(
        "| --- | ---: | {} | --- |",
        vec!["---:"; runs.len()].join(" | ")
    );
    let lat_ratio = median(runs.iter().map(|r| r.s99 / r.p99).collect());
    let p50_ratio = median(runs.iter().map(|r| r.s50 / r.p50).collect());
    println!(
        "| {prefix}ClusterIP p50 (ms) | {} | - |",
        col(&|r| r.s50, &msf)
    );
    println!(
        "| {prefix}pod IP p50 (ms) | {} | reference |",
        col(&|r| r.p50, &msf)
    );
    println!(
        "| {prefix}ratio ClusterIP / pod IP p50 | {} | {} |",
        col(&|r| r.s50 / r.p50, &ratio),
        if p50_ratio <= 1.1 {
            "<= 1.1: met"
        } else {
            "<= 1.1: **NOT met**"
        }
    );
    println!(
        "| {prefix}ClusterIP p99 (ms) | {} | - |",
        col(&|r| r.s99, &msf)
    );
    println!(
        "| {prefix}pod IP p99 (ms) | {} | reference |",
        col(&|r| r.p99, &msf)
    );
    println!(
        "| {prefix}ratio ClusterIP / pod IP p99 | {} | {} |",
        col(&|r| r.s99 / r.p99, &ratio),
        if lat_ratio <= 1.1 {
            "<= 1.1: met"
        } else {
            "<= 1.1: **NOT met**"
        }
    );
    println!(
        "| {prefix}ClusterIP requests/s | {} | - |",
        col(&|r| r.srps, &rate)
    );
    println!(
        "| {prefix}pod IP requests/s | {} | reference |",
        col(&|r| r.prps, &rate)
    );
    println!(
        "| {prefix}ratio ClusterIP / pod IP requests/s | {} | context |",
        col(&|r| r.srps / r.prps, &ratio)
    );
    println!(
        "| {prefix}failed requests | {} | - |",
        col(&|r| r.failed as f64, &rate)
    );
    println!();
    Ok(())
}

async fn tcp_part(c: &Cluster, args: &Args) -> Result<()> {
    println!("## TCP connect + request latency and throughput: ClusterIP vs pod IP");
    println!();
    let svc = c.cluster_ip_path().to;
    let pod = c.pod_path().to;
    tcp_client(
        args,
        &c.s1_pod_ns,
        &c.web_ns,
        svc,
        pod,
        "",
        "From a pod (idle-s1, on the other node)",
        "The client runs in the network namespace of pod idle-s1 on s1; both paths leave s1 for a1 (the ClusterIP is DNATed by s1's proxy; a pod's traffic is not masqueraded), so they differ only by the DNAT.",
    )
    .await?;
    tcp_client(
        args,
        &ns_of(&c.x1),
        &c.web_ns,
        svc,
        pod,
        "outside: ",
        "From outside the cluster (host x1, via the pod's node)",
        "The client runs on outside host x1, whose routes send both the service network and the pod's CIDR via a1, so both paths cross the same node; the ClusterIP is DNATed and, coming from outside the cluster CIDR, masqueraded to a1's address (random ports).",
    )
    .await
}

async fn run(args: Args) -> Result<()> {
    for p in &args.parts {
        if p != "ready" && p != "tcp" {
            bail!("unknown part {p:?} (ready, tcp)");
        }
    }
    if args.rounds == 0 || args.runs == 0 || args.requests == 0 || args.concurrency == 0 {
        bail!("--rounds, --runs, --requests and --concurrency must be at least 1");
    }
    let c = setup(&args).await?;
    log(&format!("bed {} ready", c.bed.prefix()));
    let r = async {
        let from_pod = [c.cluster_ip_path(), c.pod_path()].map(|mut t| {
            t.from = c.s1_pod_ns.clone();
            t.label = "a path from pod idle-s1";
            t
        });
        for p in c
            .service_paths()
            .iter()
            .chain([&c.pod_path()])
            .chain(&from_pod)
        {
            eventually(LONG, p.label, || async {
                answers(p).await.ok()?.then_some(())
            })
            .await
            .with_context(|| format!("{} ({}) does not answer", p.label, p.to))?;
        }
        if args.parts.iter().any(|p| p == "tcp") {
            tcp_part(&c, &args).await?;
        }
        if args.parts.iter().any(|p| p == "ready") {
            ready_part(&c, args.rounds).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &r
        && args.hold_on_error > 0
    {
        log(&format!(
            "{e:#}\nkeeping bed {} for {} s (--hold-on-error)",
            c.bed.prefix(),
            args.hold_on_error
        ));
        tokio::time::sleep(Duration::from_secs(args.hold_on_error)).await;
    }
    r
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !Path::new(&args.rke2).is_file() {
        bail!("{}: no such binary", args.rke2.display());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // On a signal the work is dropped: the bed's Drop stops the nodes and
    // removes the namespaces before the process exits.
    tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}
