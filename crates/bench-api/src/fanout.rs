//! The watch fan-out phase: one stream of writes delivered to many
//! watchers at once, through the API (every watch its own HTTP/1.1
//! connection, all served by the apiserver's watch cache) and, as the
//! reference, directly from etcd (as many etcd watch streams, which
//! etcd-client multiplexes over one HTTP/2 connection per client;
//! `--etcd-watch-conns` clients).
//!
//! Half the watchers take every write; the other half select a share of
//! them: on the API a label selector, on etcd a narrower key prefix, so
//! both sides deliver the same (write, watcher) pairs.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{EventType, WatchOptions, WatchStream};
use futures::io::{AsyncBufRead, AsyncBufReadExt};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams, WatchParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Bench, Cpu, Samples, cm_path, connect_etcd, connect_kube};

/// Label of the fan-out writes; the selecting watchers ask for `a`.
const LABEL: &str = "bench-fan";
/// Watches opened at the same time (TLS handshakes, etcd watch creations).
const OPEN_PARALLEL: usize = 64;
/// How long opening all watches may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(120);
/// How long a single write may take before the phase fails.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long after the last write's answer every watcher must have every
/// event it should see.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

/// Watcher `k` selects (sees only writes with `bench-fan=a`) when odd.
fn selecting(k: usize) -> bool {
    k % 2 == 1
}

/// Write `i` carries `bench-fan=a` (and lands under `.../fan/a/`) when
/// even: the selecting watchers see half of the writes.
fn group(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "a" } else { "b" }
}

fn sees(k: usize, i: usize) -> bool {
    !selecting(k) || group(i) == "a"
}

fn fan_name(i: usize) -> String {
    format!("fan-{i:06}")
}

/// `...fan-000042...` -> 42: the first `fan-` followed by six digits.
fn fan_index(s: &[u8]) -> Option<usize> {
    let at = memmem(s, b"fan-")?;
    let digits = s.get(at + 4..at + 10)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// Resident set size of a process in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// A `VALUE <key> <side> <number> <note>` line (tab-separated): a single
/// figure of the fan-out phase, not a latency distribution.
fn value(key: &str, side: &str, v: Option<f64>, note: &str) {
    let v = v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
    println!(
        "VALUE\t{key}\t{side}\t{v}\t{}",
        if note.is_empty() { "-" } else { note }
    );
    eprintln!("[bench-api]   {key:<14} {side:<10} {v:>12}  {note}");
}

/// Arrival times (ns after the phase's base instant, 0 = not yet) of the
/// writes at one watcher, and what keeps its watch open.
struct Watched<K> {
    arrived: Vec<u64>,
    _keep: K,
}

/// Per watcher: how many of its events have arrived (for the report when
/// the deadline passes).
type Progress = Arc<Vec<AtomicU32>>;

type ApiLines = Pin<Box<dyn AsyncBufRead + Send>>;

impl Bench {
    /// Delivery of paced writes to `--watchers` API watches vs as many
    /// etcd watches; API first, so etcd's memory figure of the API phase
    /// does not carry the raw phase's watchers.
    pub(crate) async fn fanout(&self) -> Result<()> {
        let n = self.args.watchers;
        let w = self.args.fanout_writes;
        let ns = format!("{}-fan", self.args.namespace);
        self.settle("fan-out").await;
        let base_watchers = self.etcd_metric("etcd_debugging_mvcc_watcher_total").await;
        value(
            "etcd-watchers",
            "before",
            base_watchers.as_ref().ok().copied(),
            &err_note(&base_watchers),
        );
        value(
            "rke2-rss",
            "before",
            self.args.server_pid.and_then(rss_mib),
            "MiB",
        );
        value(
            "etcd-rss",
            "before",
            self.args.etcd_pid.and_then(rss_mib),
            "MiB",
        );
        // Other work on the machine moves these figures more than any
        // other phase's: the deliveries need the CPUs all at once.
        let load = std::fs::read_to_string("/proc/loadavg").ok();
        value(
            "loadavg",
            "before",
            load.as_deref()
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
            "1-minute load average as the fan-out phase starts",
        );

        // API: creates of labelled ConfigMaps, watched through the API.
        {
            // A client of its own, so that its N connections close with
            // the phase instead of idling in the shared pool.
            let kube = connect_kube(&self.args).await?;
            let l: Value = serde_json::from_str(
                &kube
                    .request_text(cm_path(&ns).list(&ListParams::default().limit(1))?)
                    .await?,
            )?;
            let rv = l["metadata"]["resourceVersion"]
                .as_str()
                .context("list without a resourceVersion")?
                .to_string();
            let t0 = Instant::now();
            let streams: Vec<(usize, ApiLines)> = self
                .open(n, "API", |k| {
                    let kube = kube.clone();
                    let mut wp = WatchParams::default().timeout(290);
                    if selecting(k) {
                        wp = wp.labels(&format!("{LABEL}=a"));
                    }
                    let req = cm_path(&ns).watch(&wp, &rv);
                    async move {
                        // The answer's headers come once the server has
                        // subscribed the watch.
                        let s = kube.request_stream(req?).await?;
                        Ok(Box::pin(s) as ApiLines)
                    }
                })
                .await?;
            let opened = t0.elapsed();
            value(
                "fanout-open",
                "api",
                Some(opened.as_secs_f64()),
                &format!("s to open {n} API watches, {OPEN_PARALLEL} at a time"),
            );
            self.open_figures("api").await;

            let base = Instant::now();
            let progress: Progress = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
            let handles: Vec<_> = streams
                .into_iter()
                .map(|(k, s)| tokio::spawn(api_watcher(k, s, w, base, progress.clone())))
                .collect();
            let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
                (0..w)
                    .map(|i| self.fan_body(&ns, i))
                    .collect::<Result<_>>()?,
            );
            let c0 = self.cpu();
            let (args, nsc) = (self.args.clone(), ns.clone());
            let acks = own_thread(move || api_writes(args, nsc, bodies, base))
                .await
                .context("fan-out, API creates")
                .inspect_err(|_| abort_all(&handles))?;
            let watched = collect("API", handles, &progress, w, base, &acks).await?;
            let c1 = self.cpu();
            // Measured before the watches close: the server still holds
            // every subscription and connection.
            value(
                "rke2-rss",
                "api-after",
                self.args.server_pid.and_then(rss_mib),
                &format!("MiB, {n} API watches open, after the writes"),
            );
            self.fan_report("API", n, &acks, &watched, c0, c1);
            drop(watched);
        }

        // raw: puts of the same bodies, watched directly on etcd.
        {
            self.settle("fan-out, raw").await;
            // Clients of their own: the watch traffic must not queue the
            // puts' requests on the same connection.
            let mut clients = Vec::new();
            for _ in 0..self.args.etcd_watch_conns {
                clients.push(connect_etcd(&self.args).await?);
            }
            let all = self.raw("fan");
            let t0 = Instant::now();
            let streams: Vec<(usize, WatchStream)> = self
                .open(n, "etcd", |k| {
                    let mut etcd = clients[k % clients.len()].clone();
                    let prefix = if selecting(k) {
                        format!("{all}a/")
                    } else {
                        all.clone()
                    };
                    async move {
                        let mut ws = etcd
                            .watch(prefix, Some(WatchOptions::new().with_prefix()))
                            .await?;
                        let first = ws.message().await?.context("etcd watch ended at once")?;
                        if !first.created() {
                            bail!("etcd watch: first answer is not the creation");
                        }
                        Ok(ws)
                    }
                })
                .await?;
            let opened = t0.elapsed();
            value(
                "fanout-open",
                "raw",
                Some(opened.as_secs_f64()),
                &format!("s to open {n} etcd watches, {OPEN_PARALLEL} at a time"),
            );
            self.open_figures("raw").await;

            let base = Instant::now();
            let progress: Progress = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
            let handles: Vec<_> = streams
                .into_iter()
                .map(|(k, s)| tokio::spawn(etcd_watcher(k, s, w, base, progress.clone())))
                .collect();
            let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
                (0..w)
                    .map(|i| self.fan_body(&ns, i))
                    .collect::<Result<_>>()?,
            );
            let c0 = self.cpu();
            let (args, prefix) = (self.args.clone(), all.clone());
            let acks = own_thread(move || raw_writes(args, prefix, bodies, base))
                .await
                .context("fan-out, raw puts")
                .inspect_err(|_| abort_all(&handles))?;
            let watched = collect("etcd", handles, &progress, w, base, &acks).await?;
            let c1 = self.cpu();
            self.fan_report("raw", n, &acks, &watched, c0, c1);
            drop(watched);
            drop(clients);
        }
        Ok(())
    }

    /// The ConfigMap of fan-out write `i` (also the raw put's value).
    fn fan_body(&self, ns: &str, i: usize) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": fan_name(i), "namespace": ns, "labels": {LABEL: group(i)}},
            "data": {"payload": self.payload},
        }))?)
    }

    /// Opens `n` watches, [`OPEN_PARALLEL`] at a time, within
    /// [`OPEN_DEADLINE`].
    async fn open<T, F, Fut>(&self, n: usize, side: &str, f: F) -> Result<Vec<(usize, T)>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        eprintln!("[bench-api] fan-out: opening {n} {side} watches");
        let opening = futures::stream::iter(0..n)
            .map(|k| {
                let fut = f(k);
                async move {
                    fut.await
                        .map(|t| (k, t))
                        .with_context(|| format!("opening {side} watch {k}"))
                }
            })
            .buffer_unordered(OPEN_PARALLEL)
            .try_collect::<Vec<_>>();
        match tokio::time::timeout(OPEN_DEADLINE, opening).await {
            Ok(r) => {
                // In watcher order: the reports pair watcher k with entry k.
                let mut v = r?;
                v.sort_unstable_by_key(|(k, _)| *k);
                Ok(v)
            }
            Err(_) => bail!(
                "fan-out: {n} {side} watches not open within {} s",
                OPEN_DEADLINE.as_secs()
            ),
        }
    }

    /// etcd's watcher count and the memory of both processes, with one
    /// side's watches open and idle.
    async fn open_figures(&self, side: &str) {
        let n = self.args.watchers;
        // etcd updates its gauges as watchers register; give the last
        // ones a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = self.etcd_metric("etcd_debugging_mvcc_watcher_total").await;
        let what = if side == "api" { "API" } else { "etcd" };
        value(
            "etcd-watchers",
            side,
            m.as_ref().ok().copied(),
            &format!("{n} {what} watches open{}", err_note(&m)),
        );
        // The raw phase does not involve rke2 (and its allocator keeps
        // what the API phase freed), so its RSS is only the API side's.
        if side == "api" {
            value(
                "rke2-rss",
                side,
                self.args.server_pid.and_then(rss_mib),
                &format!("MiB, {n} {what} watches open"),
            );
        }
        value(
            "etcd-rss",
            side,
            self.args.etcd_pid.and_then(rss_mib),
            &format!("MiB, {n} {what} watches open"),
        );
    }

    fn fan_report<K>(
        &self,
        side: &str,
        n: usize,
        acks: &[(u64, u64)],
        watched: &[Watched<K>],
        c0: Cpu,
        c1: Cpu,
    ) {
        let (mut lat, mut from_sent) = (Vec::new(), Vec::new());
        let (mut early, mut last) = (0usize, 0u64);
        for (k, wd) in watched.iter().enumerate() {
            for (i, &(sent, ack)) in acks.iter().enumerate() {
                if !sees(k, i) {
                    continue;
                }
                let t = wd.arrived[i];
                last = last.max(t);
                if t < ack {
                    early += 1;
                }
                lat.push(Duration::from_nanos(t.saturating_sub(ack)));
                from_sent.push(Duration::from_nanos(t.saturating_sub(sent)));
            }
        }
        let first_sent = acks.iter().map(|a| a.0).min().unwrap_or(0);
        let last_ack = acks.iter().map(|a| a.1).max().unwrap_or(0);
        // Throughput: deliveries / (first write sent -> last delivery).
        let wall = Duration::from_nanos(last.saturating_sub(first_sent).max(1));
        let (w, rate) = (self.args.fanout_writes, self.args.fanout_rate);
        let api = side == "API";
        let (what, conns) = if api {
            ("creates", String::new())
        } else {
            let c = self.args.etcd_watch_conns;
            let plural = if c == 1 { "" } else { "s" };
            (
                "raw puts",
                format!("; the watches share {c} etcd connection{plural}"),
            )
        };
        let mut s = Samples::new(lat, wall);
        s.note = format!(
            "{n} watchers ({} select {LABEL}=a{}, half the writes); {w} {what} at {rate}/s{conns}; \
             {early} of {} deliveries arrived before their write's answer (counted as 0)",
            n / 2,
            if api { "" } else { " by key prefix" },
            s.lat.len(),
        );
        let mut sent = Samples::new(from_sent, wall);
        sent.note = "latency: write sent -> event (write latency included)".into();
        let (label, e2e) = if api {
            (
                format!("API watches ({n})"),
                format!("API POST -> {n} API watches"),
            )
        } else {
            (
                format!("etcd watches ({n})"),
                format!("raw put -> {n} etcd watches"),
            )
        };
        self.report("fanout", &label, &s, c0, c1);
        self.report("fanout-e2e", &e2e, &sent, c0, c1);
        value(
            "fanout-last",
            if api { "api" } else { "raw" },
            Some(last.saturating_sub(last_ack) as f64 / 1e6),
            "ms from the last write's answer until the last watcher had every event",
        );
    }

    /// One value of etcd's own Prometheus metrics (`/metrics` on its client
    /// URL, with the server's etcd client certificate).
    async fn etcd_metric(&self, name: &str) -> Result<f64> {
        let body = tokio::time::timeout(Duration::from_secs(10), self.etcd_metrics_text())
            .await
            .context("etcd /metrics: no answer within 10 s")??;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .with_context(|| format!("etcd /metrics has no {name}"))
    }

    async fn etcd_metrics_text(&self) -> Result<String> {
        let dir = &self.args.etcd_tls_dir;
        let read = |f: &str| {
            std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read("server-ca.crt")?) {
            roots.add(c?)?;
        }
        let chain =
            CertificateDer::pem_slice_iter(&read("client.crt")?).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&read("client.key")?)?;
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let hostport = self
            .args
            .etcd_endpoint
            .strip_prefix("https://")
            .context("--etcd-endpoint is not https://")?
            .trim_end_matches('/');
        let (host, _) = hostport
            .rsplit_once(':')
            .context("--etcd-endpoint without a port")?;
        let tcp = tokio::net::TcpStream::connect(hostport).await?;
        let server = ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(server, tcp)
            .await?;
        // HTTP/1.0: the answer is the plain body up to the close, never
        // chunked.
        tls.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if !text.starts_with("HTTP/1.") || !text[..text.len().min(16)].contains(" 200") {
            bail!(
                "etcd /metrics answered {:?}",
                text.lines().next().unwrap_or("")
            );
        }
        Ok(text)
    }
}

/// Runs one side's writes on a thread and runtime of their own: the
/// generator's thousands of watcher tasks must not delay a write's start
/// or the moment its answer is seen, which the latencies count from.
async fn own_thread<Fut>(make: impl FnOnce() -> Fut + Send + 'static) -> Result<Vec<(u64, u64)>>
where
    Fut: Future<Output = Result<Vec<(u64, u64)>>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fanout-writer".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(make()));
            let _ = tx.send(r);
        })?;
    rx.await.context("the writer thread died")?
}

/// The API side's creates, with a client of the writer thread's own (its
/// connections then live on that thread's runtime).
async fn api_writes(
    args: crate::Args,
    ns: String,
    bodies: Arc<Vec<Vec<u8>>>,
    base: Instant,
) -> Result<Vec<(u64, u64)>> {
    let kube = connect_kube(&args).await?;
    // A few pooled connections up front: a TLS handshake in the first
    // writes would count as delivery time.
    futures::future::try_join_all((0..4).map(|_| {
        let (kube, req) = (
            kube.clone(),
            cm_path(&ns).list(&ListParams::default().limit(1)),
        );
        async move { anyhow::Ok(kube.request_text(req?).await?) }
    }))
    .await?;
    paced_writes(base, &args, move |i| {
        let kube = kube.clone();
        let req = cm_path(&ns).create(&PostParams::default(), bodies[i].clone());
        async move {
            kube.request_text(req?).await?;
            Ok(())
        }
    })
    .await
}

/// The raw side's puts of the same bodies, on an etcd client of the
/// writer thread's own.
async fn raw_writes(
    args: crate::Args,
    prefix: String,
    bodies: Arc<Vec<Vec<u8>>>,
    base: Instant,
) -> Result<Vec<(u64, u64)>> {
    let etcd = connect_etcd(&args).await?;
    etcd.clone().get(prefix.clone(), None).await?;
    paced_writes(base, &args, move |i| {
        let mut etcd = etcd.clone();
        let key = format!("{prefix}{}/{}", group(i), fan_name(i));
        let body = bodies[i].clone();
        async move {
            etcd.put(key, body, None).await?;
            Ok(())
        }
    })
    .await
}

/// `--fanout-writes` writes, write `i` started at `i / --fanout-rate` s
/// whatever the earlier ones do. Returns (sent, answered) per write, in ns
/// after `base`.
async fn paced_writes<F, Fut>(base: Instant, args: &crate::Args, f: F) -> Result<Vec<(u64, u64)>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let w = args.fanout_writes;
    let interval = Duration::from_nanos(1_000_000_000 / args.fanout_rate.max(1));
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::with_capacity(w);
    for i in 0..w {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let fut = f(i);
        tasks.push(tokio::spawn(async move {
            let sent = now_ns(base);
            match tokio::time::timeout(WRITE_DEADLINE, fut).await {
                Ok(r) => r.with_context(|| format!("write {i}"))?,
                Err(_) => bail!(
                    "write {i} not answered within {} s",
                    WRITE_DEADLINE.as_secs()
                ),
            }
            Ok((sent, now_ns(base)))
        }));
    }
    let mut acks = Vec::with_capacity(w);
    for t in tasks {
        acks.push(t.await??);
    }
    Ok(acks)
}

fn abort_all<T>(handles: &[tokio::task::JoinHandle<T>]) {
    for h in handles {
        h.abort();
    }
}

fn err_note<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => format!(" (scrape failed: {e:#})"),
    }
}

/// Reads one API watch until it has every event its selector lets through,
/// then hands the stream back so the watch stays open until the phase ends.
async fn api_watcher(
    k: usize,
    mut s: ApiLines,
    w: usize,
    base: Instant,
    progress: Progress,
) -> Result<Watched<ApiLines>> {
    let want = (0..w).filter(|&i| sees(k, i)).count();
    let mut arrived = vec![0u64; w];
    let (mut seen, mut line) = (0usize, Vec::with_capacity(4096));
    while seen < want {
        line.clear();
        if s.read_until(b'\n', &mut line).await? == 0 {
            bail!("API watch {k} ended after {seen} of {want} events");
        }
        let t = now_ns(base);
        // Only the event type and the object's name are needed: a full
        // decode per line would put the client's CPU into the figure.
        let kind = line
            .strip_prefix(b"{\"type\":\"")
            .and_then(|r| r.split(|&b| b == b'"').next())
            .unwrap_or_default();
        match kind {
            b"ADDED" => {}
            b"BOOKMARK" => continue,
            b"ERROR" => bail!(
                "API watch {k}: {}",
                String::from_utf8_lossy(&line[..line.len().min(300)])
            ),
            other => bail!(
                "API watch {k}: unexpected {} event",
                String::from_utf8_lossy(other)
            ),
        }
        let Some(i) = fan_index(&line).filter(|&i| i < w) else {
            bail!("API watch {k}: an event without a fan-out object's name");
        };
        if !sees(k, i) {
            bail!("API watch {k} (selecting {LABEL}=a) got write {i}, which is {LABEL}=b");
        }
        if arrived[i] == 0 {
            arrived[i] = t;
            seen += 1;
            progress[k].fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(Watched { arrived, _keep: s })
}

/// Reads one etcd watch until it has every put under its prefix.
async fn etcd_watcher(
    k: usize,
    mut ws: WatchStream,
    w: usize,
    base: Instant,
    progress: Progress,
) -> Result<Watched<WatchStream>> {
    let want = (0..w).filter(|&i| sees(k, i)).count();
    let mut arrived = vec![0u64; w];
    let mut seen = 0usize;
    while seen < want {
        let Some(resp) = ws.message().await? else {
            bail!("etcd watch {k} ended after {seen} of {want} events");
        };
        let t = now_ns(base);
        if resp.canceled() {
            bail!("etcd watch {k} canceled: {}", resp.cancel_reason());
        }
        for e in resp.events() {
            if e.event_type() != EventType::Put {
                continue;
            }
            let Some(i) = e.kv().and_then(|kv| fan_index(kv.key())).filter(|&i| i < w) else {
                continue;
            };
            if !sees(k, i) {
                bail!("etcd watch {k} (prefix .../a/) got write {i}, which is under .../b/");
            }
            if arrived[i] == 0 {
                arrived[i] = t;
                seen += 1;
                progress[k].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Watched { arrived, _keep: ws })
}

/// Waits until every watcher has all its events, at most
/// [`DELIVERY_DEADLINE`] after the last write's answer.
async fn collect<K: Send + 'static>(
    side: &str,
    handles: Vec<tokio::task::JoinHandle<Result<Watched<K>>>>,
    progress: &Progress,
    w: usize,
    base: Instant,
    acks: &[(u64, u64)],
) -> Result<Vec<Watched<K>>> {
    let last_ack = base + Duration::from_nanos(acks.iter().map(|a| a.1).max().unwrap_or(0));
    // Dropping a JoinHandle does not stop its task.
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let all = futures::future::try_join_all(
        handles
            .into_iter()
            .map(|h| async move { h.await.context("watcher task")? }),
    );
    let r = tokio::time::timeout_at((last_ack + DELIVERY_DEADLINE).into(), all).await;
    let out = match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.context(format!("fan-out, {side} watches"))),
        Err(_) => {
            let short: Vec<(usize, u32, usize)> = progress
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let want = (0..w).filter(|&i| sees(k, i)).count();
                    (k, p.load(Ordering::Relaxed), want)
                })
                .filter(|&(_, got, want)| (got as usize) < want)
                .collect();
            let worst = short.iter().min_by_key(|s| s.1);
            Err(anyhow::anyhow!(
                "fan-out, {side}: {} of {} watchers still missing events {} s after the last \
                 write's answer (worst: watcher {} with {} of {})",
                short.len(),
                progress.len(),
                DELIVERY_DEADLINE.as_secs(),
                worst.map_or(0, |s| s.0),
                worst.map_or(0, |s| s.1),
                worst.map_or(0, |s| s.2),
            ))
        }
    };
    if out.is_err() {
        for a in aborts {
            a.abort();
        }
    }
    out
}
