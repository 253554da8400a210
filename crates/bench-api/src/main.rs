//! Load generator of `bench/api.sh`: the same work against raw etcd and
//! through the rke2 API, in one run, against the same etcd member.
//!
//! Raw side: etcd-client with the server's etcd client certificate, keys
//! under `--raw-prefix`. API side: a kube-rs client with the admin
//! kubeconfig (HTTP/1.1 over TLS, one pooled connection per concurrent
//! request), answers read as text and not decoded, so both sides stop the
//! clock when the bytes have arrived.
//!
//! Every phase prints one line on stdout:
//! `RESULT <phase> <side> <n> <ops/s> <p50 ms> <p99 ms> <max ms>
//! <server CPU µs/op> <etcd CPU µs/op> <client CPU µs/op> <note>`
//! (tab-separated); the fan-out phase adds single figures as
//! `VALUE <key> <side> <number> <note>`. Progress goes to stderr.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use etcd_client::{
    Certificate, Client as Etcd, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, Identity, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client as Kube;
use kube::api::{Api, GetParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::Request;
use serde_json::{Value, json};

mod custom;
mod fanout;
mod rbac;

/// Command line of the load generator.
#[derive(Parser, Debug, Clone)]
#[command(about = "raw etcd vs the rke2 API: same work, same etcd, same concurrency")]
struct Args {
    /// etcd client URL of the server's own etcd member.
    #[arg(long)]
    etcd_endpoint: String,
    /// Directory with server-ca.crt, client.crt and client.key for etcd
    /// (`<data-dir>/server/tls/etcd`).
    #[arg(long)]
    etcd_tls_dir: PathBuf,
    /// Admin kubeconfig of the server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Requests in flight at any time in the closed-loop phases.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Operations per closed-loop phase (and events in the watch phase).
    #[arg(long, default_value_t = 3000)]
    ops: usize,
    /// GETs per side in the get phase (default: --ops), spread over the
    /// --ops objects of the create phase.
    #[arg(long)]
    get_ops: Option<usize>,
    /// Bytes of ConfigMap data per object.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Objects in the listed namespace / keys in the listed range.
    #[arg(long, default_value_t = 1000)]
    list_objects: usize,
    /// Lists per side in the list phase.
    #[arg(long, default_value_t = 100)]
    list_ops: usize,
    /// Requests per second in the paced (open-loop) GET phase.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of the paced GET phase (per side).
    #[arg(long, default_value_t = 10)]
    paced_seconds: u64,
    /// Namespace prefix of the API objects (`<ns>`, `<ns>-list`, `<ns>-watch`).
    #[arg(long, default_value = "bench-api")]
    namespace: String,
    /// Key prefix of the raw etcd keys (deleted at the end).
    #[arg(long, default_value = "/bench/raw/")]
    raw_prefix: String,
    /// pid of the rke2 server, for its CPU time per operation.
    #[arg(long)]
    server_pid: Option<u32>,
    /// pid of its etcd, for etcd's CPU time per operation.
    #[arg(long)]
    etcd_pid: Option<u32>,
    /// Watchers of the fan-out phase: as many API watches (each its own
    /// connection) and, as the reference, as many etcd watches. 0 skips
    /// the phase.
    #[arg(long, default_value_t = 2000)]
    watchers: usize,
    /// Writes delivered to the watchers in the fan-out phase.
    #[arg(long, default_value_t = 200)]
    fanout_writes: usize,
    /// Writes per second in the fan-out phase (paced, so that it measures
    /// delivery rather than write throughput). With 2,000 watchers, 50/s
    /// asks for 75,000 deliveries/s: more than etcd's own watches deliver
    /// over one connection on 2 CPUs, and at the edge of what the API
    /// does there, so both sides would measure their queue.
    #[arg(long, default_value_t = 10)]
    fanout_rate: u64,
    /// etcd connections the reference's etcd watches are spread over
    /// (etcd-client multiplexes all watches of one client over its one
    /// HTTP/2 connection; 1 is what an apiserver without a watch cache
    /// would do).
    #[arg(long, default_value_t = 1)]
    etcd_watch_conns: usize,
    /// Phases to run (for profiling one of them): create, get, update,
    /// list, watch, paced, fanout, rbac (not by default: `bench/rbac.sh`),
    /// custom (not by default: `bench/crd.sh`).
    /// get, update, paced and rbac need the objects of create, which then
    /// runs too.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "create,get,update,list,watch,paced,fanout"
    )]
    phases: Vec<String>,
    /// The rbac phase: RoleBinding counts to measure at, in order
    /// (bindings are added between counts).
    #[arg(long, value_delimiter = ',', default_value = "10,10000")]
    rbac_bindings: Vec<usize>,
    /// The rbac phase: admin/user pairs of paced phases per RoleBinding
    /// count (phases `rbac@<count>/<run>`); odd runs measure the admin
    /// first, even runs the user first, so neither side always runs on
    /// a server the other has just warmed.
    #[arg(long, default_value_t = 1)]
    rbac_runs: usize,
    /// The custom phase: ConfigMap/custom-object pairs of create phases
    /// (phases `custom@<run>`; odd runs create ConfigMaps first).
    #[arg(long, default_value_t = 1)]
    custom_runs: usize,
    /// The rbac phase: directory with client-ca.crt and client-ca.key
    /// (`<data-dir>/server/tls`), to issue the measured user's certificate.
    #[arg(long)]
    client_ca_dir: Option<PathBuf>,
}

// ------------------------------------------------------------ measuring --

/// Latencies of one phase and its wall time.
struct Samples {
    lat: Vec<Duration>,
    wall: Duration,
    /// Extra words for the note column.
    note: String,
}

impl Samples {
    fn new(mut lat: Vec<Duration>, wall: Duration) -> Self {
        lat.sort_unstable();
        Self {
            lat,
            wall,
            note: String::new(),
        }
    }

    /// Nearest-rank quantile.
    fn q(&self, q: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((q * self.lat.len() as f64).ceil() as usize).clamp(1, self.lat.len());
        self.lat[i - 1]
    }
}

/// CPU time (clock ticks) of the server, its etcd and this process.
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: u64,
    etcd: u64,
    client: u64,
}

/// utime + stime of a process in clock ticks (0 when unreadable).
fn ticks(pid: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Linux reports process times in USER_HZ, 100 on every common build.
const TICK_US: f64 = 10_000.0;

struct Bench {
    args: Args,
    etcd: Etcd,
    kube: Kube,
    payload: String,
    payload2: String,
}

impl Bench {
    fn cpu(&self) -> Cpu {
        let of = |p: Option<u32>| p.map(|p| ticks(&p.to_string())).unwrap_or(0);
        Cpu {
            server: of(self.args.server_pid),
            etcd: of(self.args.etcd_pid),
            client: ticks("self"),
        }
    }

    /// Waits (at most 20 s) until the server and its etcd are idle
    /// (under 15 % of one CPU over 300 ms), so that one phase's
    /// aftermath (watch fan-out, controllers) does not land in the next.
    async fn settle(&self, before: &str) {
        if self.args.server_pid.is_none() && self.args.etcd_pid.is_none() {
            return;
        }
        let start = Instant::now();
        let busy = |c: Cpu| c.server + c.etcd;
        loop {
            let c0 = busy(self.cpu());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let used = (busy(self.cpu()) - c0) as f64 * TICK_US / 300_000.0;
            if used < 0.15 {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                eprintln!(
                    "[bench-api] server still busy ({:.0} % CPU) after 20 s; starting {before} anyway",
                    used * 100.0
                );
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "[bench-api]   (waited {:.1} s for the server to go idle before {before})",
                start.elapsed().as_secs_f64()
            );
        }
    }

    fn report(&self, phase: &str, side: &str, s: &Samples, c0: Cpu, c1: Cpu) {
        let n = s.lat.len().max(1) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 * TICK_US / n;
        let cpu = |a: u64, b: u64, known: bool| {
            if known {
                format!("{:.0}", per(a, b))
            } else {
                "n/a".to_string()
            }
        };
        println!(
            "RESULT\t{phase}\t{side}\t{}\t{:.0}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}",
            s.lat.len(),
            s.lat.len() as f64 / s.wall.as_secs_f64(),
            ms(s.q(0.5)),
            ms(s.q(0.99)),
            ms(s.q(1.0)),
            cpu(c0.server, c1.server, self.args.server_pid.is_some()),
            cpu(c0.etcd, c1.etcd, self.args.etcd_pid.is_some()),
            cpu(c0.client, c1.client, true),
            if s.note.is_empty() { "-" } else { &s.note },
        );
        eprintln!(
            "[bench-api]   {phase:<8} {side:<26} {:>7.0} ops/s  p50 {:>7.3} ms  p99 {:>7.3} ms  {}",
            s.lat.len() as f64 / s.wall.as_secs_f64(),
            ms(s.q(0.5)),
            ms(s.q(0.99)),
            s.note
        );
    }

    /// Runs `f(0..n)` with `concurrency` requests in flight, timing each.
    async fn closed<T, F, Fut>(&self, n: usize, f: F) -> Result<(Samples, Vec<(usize, T)>)>
    where
        T: Send + 'static,
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let f = Arc::new(f);
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..self.args.concurrency {
            let f = f.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    let v = f(i).await.with_context(|| format!("operation {i}"))?;
                    out.push((t.elapsed(), i, v));
                }
                anyhow::Ok(out)
            }));
        }
        let mut lat = Vec::with_capacity(n);
        let mut outs = Vec::with_capacity(n);
        for t in tasks {
            for (d, i, v) in t.await?? {
                lat.push(d);
                outs.push((i, v));
            }
        }
        let wall = start.elapsed();
        Ok((Samples::new(lat, wall), outs))
    }

    /// A measured closed-loop phase: runs, prints its line, returns the outputs.
    async fn phase<T, F, Fut>(
        &self,
        phase: &str,
        side: &str,
        n: usize,
        f: F,
    ) -> Result<Vec<(usize, T)>>
    where
        T: Send + 'static,
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.settle(&format!("{phase}, {side}")).await;
        let c0 = self.cpu();
        let (s, outs) = self
            .closed(n, f)
            .await
            .with_context(|| format!("{phase}, {side}"))?;
        let c1 = self.cpu();
        self.report(phase, side, &s, c0, c1);
        Ok(outs)
    }

    /// Open loop: request `i` is started at `i / rate` s whether or not
    /// earlier ones have answered. Latency runs from the request's start.
    async fn paced<F, Fut>(&self, phase: &str, side: &str, f: F) -> Result<()>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let rate = self.args.rate.max(1);
        let n = (rate * self.args.paced_seconds.max(1)) as usize;
        let interval = Duration::from_nanos(1_000_000_000 / rate);
        let f = Arc::new(f);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.settle(&format!("{phase}, {side}")).await;
        let c0 = self.cpu();
        let start = tokio::time::Instant::now() + Duration::from_millis(5);
        let mut max_lag = Duration::ZERO;
        for i in 0..n {
            let at = start + interval * i as u32;
            tokio::time::sleep_until(at).await;
            max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(at));
            let f = f.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = f(i).await.map(|_| t.elapsed());
                let _ = tx.send(r);
            });
        }
        drop(tx);
        let mut lat = Vec::with_capacity(n);
        while let Some(r) = rx.recv().await {
            lat.push(r.with_context(|| format!("{phase}, {side}"))?);
        }
        let wall = start.elapsed();
        let c1 = self.cpu();
        let mut s = Samples::new(lat, wall);
        s.note = format!(
            "open loop {rate}/s for {} s; starts at most {:.1} ms late",
            self.args.paced_seconds,
            max_lag.as_secs_f64() * 1000.0
        );
        self.report(phase, side, &s, c0, c1);
        Ok(())
    }

    fn cm_body(&self, ns: &str, name: &str, payload: &str, rv: Option<i64>) -> Vec<u8> {
        let mut meta = json!({"name": name, "namespace": ns});
        if let Some(rv) = rv {
            meta["resourceVersion"] = json!(rv.to_string());
        }
        serde_json::to_vec(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {"payload": payload},
        }))
        .expect("JSON")
    }

    fn raw(&self, part: &str) -> String {
        format!("{}{part}/", self.args.raw_prefix)
    }
}

/// The timed LIST of the list phase: every ConfigMap of the namespace but
/// the root CA publisher's `kube-root-ca.crt`, so both sides return the
/// same 1,000 objects.
fn bench_list() -> ListParams {
    ListParams::default().fields("metadata.name!=kube-root-ca.crt")
}

fn cm_path(ns: &str) -> Request {
    Request::new(format!("/api/v1/namespaces/{ns}/configmaps"))
}

/// The store's write: `Compare(mod_revision == rev) -> Put else Get`, the
/// same transaction `crates/datastore` sends (rev 0: create if absent).
async fn put_if_revision(
    etcd: &mut etcd_client::Client,
    key: String,
    value: Vec<u8>,
    rev: i64,
) -> Result<()> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
        .and_then([TxnOp::put(key.clone(), value, None)])
        .or_else([TxnOp::get(key, None)]);
    if !etcd.txn(txn).await?.succeeded() {
        bail!(if rev == 0 {
            "key exists"
        } else {
            "revision conflict"
        });
    }
    Ok(())
}

fn name(i: usize) -> String {
    format!("cm-{i:06}")
}

/// A deterministic alphanumeric string of `len` bytes.
fn payload(len: usize, seed: u64) -> String {
    const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ABC[((x >> 33) % ABC.len() as u64) as usize] as char
        })
        .collect()
}

/// The resourceVersion in an object's JSON.
fn rv_of(text: &str) -> Result<i64> {
    let v: Value = serde_json::from_str(text)?;
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("answer without a resourceVersion")
}

// --------------------------------------------------------------- phases --

impl Bench {
    async fn create_namespaces(&self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.kube.clone());
        for suffix in ["", "-list", "-watch", "-fan"] {
            let ns: Namespace = serde_json::from_value(json!({
                "metadata": {"name": format!("{}{suffix}", self.args.namespace)}
            }))?;
            api.create(&PostParams::default(), &ns)
                .await
                .with_context(|| format!("creating namespace {}{suffix}", self.args.namespace))?;
        }
        Ok(())
    }

    /// Opens the pool's connections (TLS handshakes) and etcd's, untimed.
    async fn warm_up(&self) -> Result<()> {
        let (kube, etcd) = (self.kube.clone(), self.etcd.clone());
        let n = self.args.concurrency * 8;
        self.closed(n, move |i| {
            let kube = kube.clone();
            let mut etcd = etcd.clone();
            async move {
                if i % 2 == 0 {
                    kube.request_text(
                        Request::new("/api/v1/namespaces").get("default", &GetParams::default())?,
                    )
                    .await?;
                } else {
                    etcd.get("/bench/warm-up", None).await?;
                }
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// raw put vs API create (plus the store's own etcd calls as context).
    /// Returns the mod revisions (raw, API) of the created keys.
    async fn creates(&self) -> Result<(Arc<Vec<AtomicI64>>, Arc<Vec<AtomicI64>>)> {
        let n = self.args.ops;
        let ns = self.args.namespace.clone();
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..n)
                .map(|i| self.cm_body(&ns, &name(i), &self.payload, None))
                .collect(),
        );
        let raw_revs: Arc<Vec<AtomicI64>> = Arc::new((0..n).map(|_| AtomicI64::new(0)).collect());
        let api_revs: Arc<Vec<AtomicI64>> = Arc::new((0..n).map(|_| AtomicI64::new(0)).collect());

        let (etcd, b, revs, prefix) = (
            self.etcd.clone(),
            bodies.clone(),
            raw_revs.clone(),
            self.raw("cm"),
        );
        self.phase("create", "raw etcd put", n, move |i| {
            let mut etcd = etcd.clone();
            let (b, revs, key) = (b.clone(), revs.clone(), format!("{prefix}{}", name(i)));
            async move {
                let r = etcd.put(key, b[i].clone(), None).await?;
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                revs[i].store(rev, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;

        let (kube, b) = (self.kube.clone(), bodies.clone());
        let nsc = ns.clone();
        let outs = self
            .phase("create", "API POST ConfigMap", n, move |i| {
                let kube = kube.clone();
                let req = cm_path(&nsc).create(&PostParams::default(), b[i].clone());
                async move { Ok(kube.request_text(req?).await?) }
            })
            .await?;
        for (i, text) in outs {
            api_revs[i].store(rv_of(&text)?, Ordering::Relaxed);
        }

        // What the store does for a create (the namespace is checked in the
        // watch cache): one transaction Compare(mod_revision == 0) -> Put
        // else Get. The floor for a create that must not overwrite.
        let etcd = self.etcd.clone();
        let (b, prefix) = (bodies.clone(), self.raw("store"));
        self.phase("create", "raw txn (store)", n, move |i| {
            let mut etcd = etcd.clone();
            let (b, key) = (b.clone(), format!("{prefix}{}", name(i)));
            async move { put_if_revision(&mut etcd, key, b[i].clone(), 0).await }
        })
        .await?;
        Ok((raw_revs, api_revs))
    }

    /// The key (object) read by GET number `i`: a fixed scatter over all.
    fn pick(&self, i: usize) -> usize {
        (i.wrapping_mul(7919) + 13) % self.args.ops
    }

    async fn gets(&self) -> Result<()> {
        let n = self.args.get_ops.unwrap_or(self.args.ops);
        let picks: Arc<Vec<usize>> = Arc::new((0..n).map(|i| self.pick(i)).collect());
        let (etcd, p, prefix) = (self.etcd.clone(), picks.clone(), self.raw("cm"));
        self.phase("get", "raw etcd range (1 key)", n, move |i| {
            let mut etcd = etcd.clone();
            let key = format!("{prefix}{}", name(p[i]));
            async move {
                let r = etcd.get(key, None).await?;
                if r.kvs().is_empty() {
                    bail!("key missing");
                }
                Ok(())
            }
        })
        .await?;
        let (kube, p, ns) = (
            self.kube.clone(),
            picks.clone(),
            self.args.namespace.clone(),
        );
        self.phase("get", "API GET ConfigMap", n, move |i| {
            let kube = kube.clone();
            let req = cm_path(&ns).get(&name(p[i]), &GetParams::default());
            async move {
                kube.request_text(req?).await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    async fn updates(
        &self,
        raw_revs: Arc<Vec<AtomicI64>>,
        api_revs: Arc<Vec<AtomicI64>>,
    ) -> Result<()> {
        let n = self.args.ops;
        let ns = self.args.namespace.clone();
        // Each object is updated once, so no two requests race on one key.
        let raw_bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..n)
                .map(|i| self.cm_body(&ns, &name(i), &self.payload2, None))
                .collect(),
        );
        let api_bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..n)
                .map(|i| {
                    let rv = api_revs[i].load(Ordering::Relaxed);
                    self.cm_body(&ns, &name(i), &self.payload2, Some(rv))
                })
                .collect(),
        );
        let (etcd, b, revs, prefix) = (
            self.etcd.clone(),
            raw_bodies.clone(),
            raw_revs.clone(),
            self.raw("cm"),
        );
        self.phase("update", "raw txn (mod_revision ==)", n, move |i| {
            let mut etcd = etcd.clone();
            let (b, key, rev) = (
                b.clone(),
                format!("{prefix}{}", name(i)),
                revs[i].load(Ordering::Relaxed),
            );
            async move { put_if_revision(&mut etcd, key, b[i].clone(), rev).await }
        })
        .await?;
        let (kube, b, nsc) = (self.kube.clone(), api_bodies.clone(), ns.clone());
        self.phase("update", "API PUT ConfigMap (RV)", n, move |i| {
            let kube = kube.clone();
            let req = cm_path(&nsc).replace(&name(i), &PostParams::default(), b[i].clone());
            async move {
                kube.request_text(req?).await?;
                Ok(())
            }
        })
        .await?;
        // What the store does for an update whose object the watch cache
        // does not have at the request's resourceVersion: read it from etcd,
        // then the transaction. (With the cache current it is the raw txn
        // row above.) The keys of the create context row, once each.
        let (etcd, b, prefix) = (self.etcd.clone(), raw_bodies.clone(), self.raw("store"));
        self.phase(
            "update",
            "raw range + txn (store, cache miss)",
            n,
            move |i| {
                let mut etcd = etcd.clone();
                let (b, key) = (b.clone(), format!("{prefix}{}", name(i)));
                async move {
                    let cur = etcd.get(key.clone(), None).await?;
                    let rev = cur.kvs().first().map(|k| k.mod_revision()).unwrap_or(0);
                    put_if_revision(&mut etcd, key, b[i].clone(), rev).await
                }
            },
        )
        .await?;
        Ok(())
    }

    async fn lists(&self) -> Result<()> {
        let m = self.args.list_objects;
        let ns = format!("{}-list", self.args.namespace);
        eprintln!("[bench-api] list: {m} keys and {m} ConfigMaps (untimed)");
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..m)
                .map(|i| self.cm_body(&ns, &name(i), &self.payload, None))
                .collect(),
        );
        let (etcd, b, prefix) = (self.etcd.clone(), bodies.clone(), self.raw("list"));
        self.closed(m, move |i| {
            let mut etcd = etcd.clone();
            let (b, key) = (b.clone(), format!("{prefix}{}", name(i)));
            async move {
                etcd.put(key, b[i].clone(), None).await?;
                Ok(())
            }
        })
        .await?;
        let (kube, b, nsc) = (self.kube.clone(), bodies.clone(), ns.clone());
        self.closed(m, move |i| {
            let kube = kube.clone();
            let req = cm_path(&nsc).create(&PostParams::default(), b[i].clone());
            async move {
                kube.request_text(req?).await?;
                Ok(())
            }
        })
        .await?;

        // Both sides must see exactly m items.
        let raw_prefix = self.raw("list");
        let r = self
            .etcd
            .clone()
            .get(
                raw_prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        let l: Value = serde_json::from_str(
            &self
                .kube
                .request_text(cm_path(&ns).list(&bench_list())?)
                .await?,
        )?;
        let api_n = l["items"].as_array().map(Vec::len).unwrap_or(0);
        if r.count() as usize != m || api_n != m {
            bail!(
                "list setup: {} raw keys and {api_n} ConfigMaps, want {m} each",
                r.count()
            );
        }

        let k = self.args.list_ops;
        let etcd = self.etcd.clone();
        let label = format!("raw etcd range ({m} keys)");
        self.phase("list", &label, k, move |_| {
            let mut etcd = etcd.clone();
            let p = raw_prefix.clone();
            async move {
                let r = etcd.get(p, Some(GetOptions::new().with_prefix())).await?;
                if r.kvs().len() != m {
                    bail!("range returned {} keys", r.kvs().len());
                }
                Ok(())
            }
        })
        .await?;
        let kube = self.kube.clone();
        let label = format!("API LIST ({m} ConfigMaps)");
        self.phase("list", &label, k, move |_| {
            let kube = kube.clone();
            let req = cm_path(&ns).list(&bench_list());
            async move {
                let text = kube.request_text(req?).await?;
                if text.len() < m * 100 {
                    bail!("list answer of {} bytes", text.len());
                }
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// Latency from a write's answer to its event on a watch, with `ops`
    /// writes at the phase concurrency.
    async fn watches(&self) -> Result<()> {
        let n = self.args.ops;
        // raw: a prefix watch on its own keys, written with plain puts
        {
            self.settle("watch, raw").await;
            let prefix = self.raw("watch");
            let mut ws = self
                .etcd
                .clone()
                .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                .await?;
            let first = ws.message().await?.context("etcd watch ended at once")?;
            if !first.created() {
                bail!("etcd watch: first answer is not the creation");
            }
            let base = Instant::now();
            let arrived: Arc<Vec<AtomicU64>> =
                Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
            let a = arrived.clone();
            let p = prefix.clone();
            let watcher = tokio::spawn(async move {
                let mut seen = 0usize;
                while seen < n {
                    let Some(resp) = ws.message().await? else {
                        bail!("etcd watch ended after {seen} events");
                    };
                    let t = base.elapsed().as_nanos() as u64;
                    for e in resp.events() {
                        if e.event_type() != EventType::Put {
                            continue;
                        }
                        let Some(kv) = e.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        if let Some(i) = index_of(key.strip_prefix(&p).unwrap_or(&key))
                            && i < n
                            && a[i].swap(t, Ordering::Relaxed) == 0
                        {
                            seen += 1;
                        }
                    }
                }
                anyhow::Ok(())
            });
            let body = self.cm_body("raw", "w", &self.payload, None);
            let etcd = self.etcd.clone();
            let c0 = self.cpu();
            let (_, acks) = self
                .closed(n, move |i| {
                    let mut etcd = etcd.clone();
                    let (key, body) = (format!("{prefix}{}", name(i)), body.clone());
                    async move {
                        let sent = base.elapsed().as_nanos() as u64;
                        etcd.put(key, body, None).await?;
                        Ok((sent, base.elapsed().as_nanos() as u64))
                    }
                })
                .await?;
            let (s, sent) = self.delivery(acks, &arrived, watcher).await?;
            let c1 = self.cpu();
            self.report("watch", "raw etcd watch (put)", &s, c0, c1);
            self.report("watch-e2e", "raw put -> etcd watch", &sent, c0, c1);
        }
        // API: a watch of the namespace, written with creates
        {
            self.settle("watch, API").await;
            let ns = format!("{}-watch", self.args.namespace);
            let l: Value = serde_json::from_str(
                &self
                    .kube
                    .request_text(cm_path(&ns).list(&ListParams::default().limit(1))?)
                    .await?,
            )?;
            let rv = l["metadata"]["resourceVersion"]
                .as_str()
                .context("list without a resourceVersion")?
                .to_string();
            let req = cm_path(&ns).watch(&WatchParams::default().timeout(290), &rv)?;
            // The answer's headers come once the server's etcd watch exists.
            let stream = self.kube.request_events::<ConfigMap>(req).await?;
            let base = Instant::now();
            let arrived: Arc<Vec<AtomicU64>> =
                Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
            let a = arrived.clone();
            let watcher = tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                let mut seen = 0usize;
                while seen < n {
                    let Some(ev) = stream.next().await else {
                        bail!("API watch ended after {seen} events");
                    };
                    let t = base.elapsed().as_nanos() as u64;
                    match ev? {
                        WatchEvent::Added(cm) | WatchEvent::Modified(cm) => {
                            let nm = cm.metadata.name.unwrap_or_default();
                            if let Some(i) = index_of(&nm)
                                && i < n
                                && a[i].swap(t, Ordering::Relaxed) == 0
                            {
                                seen += 1;
                            }
                        }
                        WatchEvent::Error(e) => bail!("API watch error: {e:?}"),
                        _ => {}
                    }
                }
                anyhow::Ok(())
            });
            let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
                (0..n)
                    .map(|i| self.cm_body(&ns, &name(i), &self.payload, None))
                    .collect(),
            );
            let kube = self.kube.clone();
            let c0 = self.cpu();
            let (_, acks) = self
                .closed(n, move |i| {
                    let kube = kube.clone();
                    let req = cm_path(&ns).create(&PostParams::default(), bodies[i].clone());
                    async move {
                        let sent = base.elapsed().as_nanos() as u64;
                        kube.request_text(req?).await?;
                        Ok((sent, base.elapsed().as_nanos() as u64))
                    }
                })
                .await?;
            let (s, sent) = self.delivery(acks, &arrived, watcher).await?;
            let c1 = self.cpu();
            self.report("watch", "API watch (POST)", &s, c0, c1);
            self.report("watch-e2e", "API POST -> API watch", &sent, c0, c1);
        }
        Ok(())
    }

    /// Waits for the watcher, then pairs acknowledgements with arrivals.
    async fn delivery(
        &self,
        acks: Vec<(usize, (u64, u64))>,
        arrived: &[AtomicU64],
        watcher: tokio::task::JoinHandle<Result<()>>,
    ) -> Result<(Samples, Samples)> {
        match tokio::time::timeout(Duration::from_secs(60), watcher).await {
            Ok(r) => r??,
            Err(_) => {
                let got = arrived
                    .iter()
                    .filter(|a| a.load(Ordering::Relaxed) > 0)
                    .count();
                bail!("only {got} of {} watch events within 60 s", acks.len());
            }
        }
        let (mut lat, mut from_sent) = (Vec::new(), Vec::new());
        let (mut early, mut last, mut first) = (0usize, 0u64, u64::MAX);
        for (i, (sent, ack)) in acks {
            let t = arrived[i].load(Ordering::Relaxed);
            last = last.max(t);
            first = first.min(ack);
            if t < ack {
                early += 1;
            }
            lat.push(Duration::from_nanos(t.saturating_sub(ack)));
            from_sent.push(Duration::from_nanos(t.saturating_sub(sent)));
        }
        // Throughput: events delivered / (first write answered -> last event).
        let wall = Duration::from_nanos(last.saturating_sub(first).max(1));
        let mut s = Samples::new(lat, wall);
        s.note = format!(
            "{early} of {} events arrived before their write's answer (counted as 0)",
            s.lat.len()
        );
        let mut sent = Samples::new(from_sent, wall);
        sent.note = "latency: write sent -> event (write latency included)".into();
        Ok((s, sent))
    }

    async fn paced_gets(&self) -> Result<()> {
        let n = self.args.ops;
        let (etcd, prefix) = (self.etcd.clone(), self.raw("cm"));
        self.paced("get@rate", "raw etcd range (1 key)", move |i| {
            let mut etcd = etcd.clone();
            let key = format!("{prefix}{}", name((i * 7919 + 13) % n));
            async move {
                if etcd.get(key, None).await?.kvs().is_empty() {
                    bail!("key missing");
                }
                Ok(())
            }
        })
        .await?;
        let (kube, ns) = (self.kube.clone(), self.args.namespace.clone());
        self.paced("get@rate", "API GET ConfigMap", move |i| {
            let kube = kube.clone();
            let req = cm_path(&ns).get(&name((i * 7919 + 13) % n), &GetParams::default());
            async move {
                kube.request_text(req?).await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }
}

/// `cm-000042` -> 42.
fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix("cm-")?.parse().ok()
}

/// Raises the soft limit on open files to the hard one: every API watch of
/// the fan-out phase is a connection, and the usual soft limit is 1024.
fn raise_open_files_limit(watchers: usize) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                eprintln!("[bench-api] cannot raise the open files limit {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    // The watches plus the request pool, etcd and the process's own files.
    let need = watchers as u64 + 256;
    if soft < need {
        bail!("open files limit {soft} is below the {need} that {watchers} watchers need");
    }
    Ok(())
}

async fn connect_etcd(args: &Args) -> Result<Etcd> {
    let dir = &args.etcd_tls_dir;
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("reading {}", dir.join(f).display()))
    };
    // The options rke2's store uses: one HTTP/2 connection to one member.
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(15))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("server-ca.crt")?))
                .identity(Identity::from_pem(read("client.crt")?, read("client.key")?)),
        );
    Etcd::connect([args.etcd_endpoint.as_str()], Some(opts))
        .await
        .context("connecting to etcd")
}

async fn connect_kube(args: &Args) -> Result<Kube> {
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(Kube::try_from(cfg)?)
}

async fn run(b: &Bench) -> Result<()> {
    let a = &b.args;
    eprintln!(
        "[bench-api] concurrency {}, {} ops per phase, {} B of data per object, list of {}",
        a.concurrency, a.ops, a.size, a.list_objects
    );
    let on = |p: &str| a.phases.iter().any(|x| x == p);
    for p in &a.phases {
        if ![
            "create", "get", "update", "list", "watch", "paced", "fanout", "rbac", "custom",
        ]
        .contains(&p.as_str())
        {
            bail!("unknown phase {p:?}");
        }
    }
    b.create_namespaces().await?;
    b.warm_up().await?;
    if on("create") || on("get") || on("update") || on("paced") || on("rbac") {
        let (raw_revs, api_revs) = b.creates().await?;
        if on("get") {
            b.gets().await?;
        }
        if on("update") {
            b.updates(raw_revs, api_revs).await?;
        }
    }
    if on("list") {
        b.lists().await?;
    }
    if on("watch") {
        b.watches().await?;
    }
    if on("paced") {
        b.paced_gets().await?;
    }
    if on("rbac") {
        b.rbac().await?;
    }
    if on("custom") {
        b.custom().await?;
    }
    // Last: its thousands of connections and watches would otherwise
    // linger in the server while the other phases run.
    if on("fanout")
        && a.watchers > 0
        && let Err(e) = b.fanout().await
    {
        // The other phases' figures stand: api.sh writes them, shows this
        // failure in the fan-out table and fails after that.
        eprintln!("[bench-api] fan-out phase failed: {e:#}");
        let one_line: String = format!("{e:#}")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        println!("VALUE\tfanout-error\t-\tn/a\t{one_line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.ops == 0 || args.list_objects == 0 || args.list_ops == 0 {
        bail!("--concurrency, --ops, --list-objects and --list-ops must be positive");
    }
    if !args.raw_prefix.starts_with("/bench/") {
        bail!("--raw-prefix must start with /bench/ (its keys are deleted at the end)");
    }
    if args.watchers > 0
        && (args.fanout_writes == 0 || args.fanout_rate == 0 || args.etcd_watch_conns == 0)
    {
        bail!("--fanout-writes, --fanout-rate and --etcd-watch-conns must be positive");
    }
    if args.fanout_writes > 999_999 {
        bail!("--fanout-writes: at most 999999 (six-digit object names)");
    }
    raise_open_files_limit(args.watchers)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let etcd = connect_etcd(&args).await?;
    let kube = connect_kube(&args).await?;
    let b = Bench {
        payload: payload(args.size, 1),
        payload2: payload(args.size, 2),
        args,
        etcd,
        kube,
    };
    let result = run(&b).await;
    // The raw keys go in any case; the API objects go with the server.
    let deleted = b
        .etcd
        .clone()
        .delete(
            b.args.raw_prefix.clone(),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await;
    match &deleted {
        Ok(d) => eprintln!("[bench-api] deleted {} raw keys", d.deleted()),
        Err(e) => eprintln!("[bench-api] deleting the raw keys failed: {e}"),
    }
    result?;
    deleted?;
    Ok(())
}
