//! `rke2-scale-load`: the load generator of `bench/scale.sh`.
//!
//! Ramp: creates `--pods` pods as ReplicaSets of `--pods-per-rs` replicas
//! (a nodeSelector keeps them on the hollow nodes), `--concurrency`
//! creates in flight, and follows the pods through one watch on the
//! namespace until all are Running and Ready. Meanwhile a paced probe of
//! mutating calls (`--probe-rate` per second, each a ConfigMap create,
//! merge patch and delete, open loop) samples the API's write latency
//! under the load.
//!
//! Watch fan-out (`--watchers W`): W watches on one namespace's
//! ConfigMaps, then `--watch-events` creates there at `--watch-rate`/s;
//! latency = arrival at a watcher minus the moment its create was sent
//! (the answer often arrives after the events: the server sends both at
//! once), so it includes the write itself.
//!
//! Output on stdout, tab-separated: `VALUE <name> <value>` and
//! `LAT <name> <n> <errors> <p50 ms> <p99 ms> <max ms>`; progress on
//! stderr. CPU seconds per phase of the processes named by `--pid`
//! (`label=pid`) and of the machine as a whole are VALUE lines too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use rke2_hollow_nodes::{
    Recorder, Stats, TICKS_PER_SEC, api_code, backoff, clients, cpu_ticks, install_crypto,
    machine_ticks, quantile, retryable, terminated, timed,
};
use serde_json::json;

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(name = "rke2-scale-load", about = "load generator of bench/scale.sh")]
struct Args {
    /// Admin kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Server URLs to spread requests over (default: the kubeconfig's).
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Namespace of the pods (created; `<ns>-probe` and `<ns>-watch` too).
    #[arg(long, default_value = "scale")]
    namespace: String,
    /// Pods to create (0: skip the ramp).
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Replicas per ReplicaSet.
    #[arg(long, default_value_t = 50)]
    pods_per_rs: usize,
    /// ReplicaSet creates in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// nodeSelector of the pods (key=value).
    #[arg(long, default_value = "rke2.io/hollow-node=true")]
    node_selector: String,
    /// Probes per second during the ramp (each: create, patch, delete).
    #[arg(long, default_value_t = 10.0)]
    probe_rate: f64,
    /// Seconds the ramp may take.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Watches of the fan-out phase (0: skip it).
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// Events written in the fan-out phase.
    #[arg(long, default_value_t = 50)]
    watch_events: usize,
    /// Events per second in the fan-out phase.
    #[arg(long, default_value_t = 5.0)]
    watch_rate: f64,
    /// A process to account CPU for, as label=pid (repeatable).
    #[arg(long = "pid")]
    pids: Vec<String>,
}

fn value(name: &str, v: impl std::fmt::Display) {
    println!("VALUE\t{name}\t{v}");
}

fn lat(name: &str, s: Stats) {
    println!("LAT\t{name}\t{}", s.tsv());
    eprintln!("[load]   {name:<28} {}", s.human());
}

/// Durations as a `Stats` (no errors).
fn stats_of(mut v: Vec<Duration>) -> Stats {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Stats {
        n: v.len() as u64,
        errors: 0,
        p50_ms: ms(quantile(&v, 0.5)),
        p99_ms: ms(quantile(&v, 0.99)),
        max_ms: ms(quantile(&v, 1.0)),
    }
}

/// CPU readings at the start of a phase.
struct Cpu {
    procs: Vec<(String, u32, u64)>,
    machine: (u64, u64),
    at: Instant,
}

impl Cpu {
    fn start(pids: &[(String, u32)]) -> Cpu {
        Cpu {
            procs: pids
                .iter()
                .map(|(l, p)| (l.clone(), *p, cpu_ticks(*p)))
                .collect(),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    /// VALUE lines `<phase>.cpu.<label>_s` and the machine's busy share.
    fn report(&self, phase: &str) {
        let wall = self.at.elapsed().as_secs_f64();
        for (label, pid, t0) in &self.procs {
            let s = cpu_ticks(*pid).saturating_sub(*t0) as f64 / TICKS_PER_SEC;
            value(&format!("{phase}.cpu.{label}_s"), format!("{s:.1}"));
            eprintln!(
                "[load]   cpu {label:<12} {s:>7.1} s ({:.0} % of one CPU)",
                100.0 * s / wall.max(0.001)
            );
        }
        let me = cpu_ticks(std::process::id()) as f64 / TICKS_PER_SEC;
        value(
            &format!("{phase}.cpu.load-generator-total_s"),
            format!("{me:.1}"),
        );
        let (b1, t1) = machine_ticks();
        let busy = 100.0 * (b1.saturating_sub(self.machine.0)) as f64
            / (t1.saturating_sub(self.machine.1)).max(1) as f64;
        value(
            &format!("{phase}.cpu.machine_busy_pct"),
            format!("{busy:.0}"),
        );
        value(&format!("{phase}.wall_s"), format!("{wall:.1}"));
        eprintln!("[load]   machine busy {busy:.0} % over {wall:.1} s");
    }
}

struct Load {
    args: Args,
    clients: Vec<kube::Client>,
    rec: Recorder,
    timeout: Duration,
    pids: Vec<(String, u32)>,
}

/// What the pod watch saw of one pod.
#[derive(Clone, Copy)]
struct PodSeen {
    seen: Instant,
    bound: Option<Instant>,
    running: Option<Instant>,
}

#[derive(Default)]
struct Tracker {
    pods: HashMap<String, PodSeen>,
    bound: usize,
    running: usize,
}

impl Tracker {
    fn saw(&mut self, p: &Pod) {
        let Some(name) = p.metadata.name.clone() else {
            return;
        };
        let now = Instant::now();
        let e = self.pods.entry(name).or_insert(PodSeen {
            seen: now,
            bound: None,
            running: None,
        });
        if e.bound.is_none()
            && p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty())
        {
            e.bound = Some(now);
            self.bound += 1;
        }
        let ready = p.status.as_ref().is_some_and(|st| {
            st.phase.as_deref() == Some("Running")
                && st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if e.running.is_none() && ready {
            e.running = Some(now);
            self.running += 1;
        }
    }
}

impl Load {
    fn client(&self, i: usize) -> kube::Client {
        self.clients[i % self.clients.len()].clone()
    }

    /// Creates a namespace (an existing one is fine) and waits for its
    /// default ServiceAccount (pods of a brand-new namespace may be
    /// refused before it exists).
    async fn namespace(&self, name: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client(0));
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(409) => {}
            Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
        }
        let sa: Api<ServiceAccount> = Api::namespaced(self.client(0), name);
        let t = Instant::now();
        while sa.get_opt("default").await.ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(60) {
                eprintln!("[load] no default ServiceAccount in {name} after 60 s; going on");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// A write with retries (all attempts recorded under `kind`).
    async fn write<T, F, Fut>(&self, kind: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match timed(&self.rec, kind, self.timeout, f()).await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < 10 => {
                    eprintln!("[load] {kind} failed ({e}); retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e).context(kind),
            }
        }
    }

    fn replicaset(&self, name: &str, replicas: usize) -> Result<ReplicaSet> {
        let (k, v) = self
            .args
            .node_selector
            .split_once('=')
            .context("--node-selector must be key=value")?;
        Ok(serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": self.args.namespace, "labels": {"app": "scale"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "scale", "rs": name}},
                "template": {
                    "metadata": {"labels": {"app": "scale", "rs": name}},
                    "spec": {
                        "nodeSelector": {k: v},
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": "app",
                            "image": "rke2.test/pause:1",
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }],
                    },
                },
            },
        }))?)
    }

    /// The open-loop probe: every 1/rate s a ConfigMap is created, patched
    /// and deleted (each write timed), until `stop`.
    fn probe(self: &Arc<Self>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
        let me = self.clone();
        tokio::spawn(async move {
            if me.args.probe_rate <= 0.0 {
                return 0;
            }
            let ns = format!("{}-probe", me.args.namespace);
            let every = Duration::from_secs_f64(1.0 / me.args.probe_rate);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let in_flight = Arc::new(AtomicUsize::new(0));
            let (mut i, mut skipped) = (0usize, 0usize);
            let mut tasks = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                if in_flight.load(Ordering::SeqCst) >= 300 {
                    skipped += 1;
                    continue;
                }
                i += 1;
                let (me, ns, in_flight) = (me.clone(), ns.clone(), in_flight.clone());
                in_flight.fetch_add(1, Ordering::SeqCst);
                tasks.push(tokio::spawn(async move {
                    let api: Api<ConfigMap> = Api::namespaced(me.client(i), &ns);
                    let server = i % me.clients.len() + 1;
                    let name = format!("probe-{i:06}");
                    let cm: ConfigMap = serde_json::from_value(json!({
                        "metadata": {"name": name},
                        "data": {"payload": "x".repeat(512)},
                    }))
                    .expect("a valid ConfigMap");
                    let t = me.timeout;
                    if probe_write(
                        &me.rec,
                        t,
                        server,
                        "probe-create",
                        api.create(&PostParams::default(), &cm),
                    )
                    .await
                    .is_ok()
                    {
                        let patch = json!({"data": {"patched": "yes"}});
                        let _ = probe_write(
                            &me.rec,
                            t,
                            server,
                            "probe-patch",
                            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                        )
                        .await;
                        let _ = probe_write(
                            &me.rec,
                            t,
                            server,
                            "probe-delete",
                            api.delete(&name, &DeleteParams::default()),
                        )
                        .await;
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            if skipped > 0 {
                eprintln!("[load] probe: {skipped} probes skipped (300 in flight)");
            }
            i
        })
    }

    async fn ramp(self: &Arc<Self>) -> Result<()> {
        let a = &self.args;
        let ns = a.namespace.clone();
        self.namespace(&ns).await?;
        self.namespace(&format!("{ns}-probe")).await?;
        let per = a.pods_per_rs.max(1);
        let n_rs = a.pods.div_ceil(per);
        eprintln!(
            "[load] ramp: {} pods as {n_rs} ReplicaSets of {per}, {} creates in flight, probe {}/s",
            a.pods, a.concurrency, a.probe_rate
        );

        // The pod watch, before any create.
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let watch_task = {
            let tracker = tracker.clone();
            let api: Api<Pod> = Api::namespaced(self.client(0), &ns);
            tokio::spawn(async move {
                let stream =
                    watcher(api, watcher::Config::default().any_semantic()).default_backoff();
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                            tracker.lock().expect("lock").saw(&p)
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("[load] pod watch: {e}; restarting"),
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;

        let stop_probe = Arc::new(AtomicBool::new(false));
        let _ = self.rec.take_period();
        let cpu = Cpu::start(&self.pids);
        let t0 = Instant::now();
        let probe = self.probe(stop_probe.clone());

        // ReplicaSets, `concurrency` creates in flight.
        let next = Arc::new(AtomicUsize::new(0));
        let mut creators = Vec::new();
        for _ in 0..a.concurrency.max(1) {
            let (me, next) = (self.clone(), next.clone());
            creators.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n_rs {
                        return anyhow::Ok(());
                    }
                    let replicas = per.min(me.args.pods - i * per);
                    let name = format!("scale-{i:05}");
                    let rs = me.replicaset(&name, replicas)?;
                    let api: Api<ReplicaSet> = Api::namespaced(me.client(i), &me.args.namespace);
                    let pp = PostParams::default();
                    match me.write("rs-create", || api.create(&pp, &rs)).await {
                        Ok(_) => {}
                        // An earlier attempt went through after all.
                        Err(e)
                            if e.downcast_ref::<kube::Error>().and_then(api_code) == Some(409) => {}
                        Err(e) => return Err(e),
                    }
                }
            }));
        }
        for c in creators {
            c.await??;
        }
        let rs_done = t0.elapsed();
        eprintln!(
            "[load] {n_rs} ReplicaSets created in {:.1} s",
            rs_done.as_secs_f64()
        );

        // Until every pod is Running and Ready (as the watch shows).
        let deadline = t0 + Duration::from_secs(a.timeout);
        let mut last_print = Instant::now();
        loop {
            let (seen, bound, running) = {
                let t = tracker.lock().expect("lock");
                (t.pods.len(), t.bound, t.running)
            };
            if running >= a.pods {
                break;
            }
            if Instant::now() > deadline {
                // Reported, not fatal: the figures so far are the result.
                eprintln!(
                    "[load] ramp not done within {} s: {seen} pods seen, {bound} bound, {running} running",
                    a.timeout
                );
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "[load] {:>6.1}s pods seen {seen}, bound {bound}, running {running}",
                    t0.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let all_running = t0.elapsed();
        let running_at_end = tracker.lock().expect("lock").running;
        stop_probe.store(true, Ordering::SeqCst);
        let probes = probe.await.unwrap_or(0);
        eprintln!(
            "[load] {running_at_end} of {} pods Running after {:.1} s ({probes} probes)",
            a.pods,
            all_running.as_secs_f64()
        );
        cpu.report("ramp");
        watch_task.abort();

        let t = tracker.lock().expect("lock");
        let pods: Vec<PodSeen> = t.pods.values().copied().collect();
        drop(t);
        let last = |f: fn(&PodSeen) -> Option<Instant>| {
            pods.iter()
                .filter_map(f)
                .max()
                .map(|x| (x - t0).as_secs_f64())
                .unwrap_or(0.0)
        };
        let first = |f: fn(&PodSeen) -> Option<Instant>| {
            pods.iter()
                .filter_map(f)
                .min()
                .map(|x| (x - t0).as_secs_f64())
                .unwrap_or(0.0)
        };
        value("ramp.pods", a.pods);
        value("ramp.replicasets", n_rs);
        value("ramp.rs_created_s", format!("{:.2}", rs_done.as_secs_f64()));
        value(
            "ramp.all_created_s",
            format!("{:.2}", last(|p| Some(p.seen))),
        );
        value("ramp.first_bound_s", format!("{:.2}", first(|p| p.bound)));
        value("ramp.all_bound_s", format!("{:.2}", last(|p| p.bound)));
        value("ramp.running_at_end", running_at_end);
        if running_at_end >= a.pods {
            value(
                "ramp.all_running_s",
                format!("{:.2}", all_running.as_secs_f64()),
            );
        } else {
            value("ramp.all_running_s", "n/a");
            value(
                "ramp.timed_out_s",
                format!("{:.2}", all_running.as_secs_f64()),
            );
        }
        let span = |a: f64, b: f64| {
            if b > a {
                (pods.len() as f64) / (b - a)
            } else {
                0.0
            }
        };
        value(
            "ramp.create_rate",
            format!(
                "{:.1}",
                span(first(|p| Some(p.seen)), last(|p| Some(p.seen)))
            ),
        );
        value(
            "ramp.bind_rate",
            format!("{:.1}", span(first(|p| p.bound), last(|p| p.bound))),
        );
        value(
            "ramp.running_rate",
            format!("{:.1}", span(first(|p| p.running), last(|p| p.running))),
        );
        value("ramp.probes", probes);
        lat(
            "ramp.pod-startup",
            stats_of(
                pods.iter()
                    .filter_map(|p| p.running.map(|r| r - p.seen))
                    .collect(),
            ),
        );
        lat(
            "ramp.pod-scheduling",
            stats_of(
                pods.iter()
                    .filter_map(|p| p.bound.map(|b| b - p.seen))
                    .collect(),
            ),
        );
        lat(
            "ramp.bound-to-running",
            stats_of(
                pods.iter()
                    .filter_map(|p| Some(p.running? - p.bound?))
                    .collect(),
            ),
        );
        let period = self.rec.take_period();
        let mut probe_all = rke2_hollow_nodes::Samples::default();
        for (k, s) in &period {
            lat(&format!("ramp.{k}"), s.stats());
            if k.starts_with("probe-") {
                probe_all.extend(s);
            }
        }
        lat("ramp.probe-all-writes", probe_all.stats());
        lat(
            "ramp.all-writes",
            rke2_hollow_nodes::merged(&period).stats(),
        );
        Ok(())
    }

    /// W watchers on one namespace's ConfigMaps, then paced creates there.
    async fn fan_out(self: &Arc<Self>) -> Result<()> {
        let a = &self.args;
        let (w, k) = (a.watchers, a.watch_events.max(1));
        let ns = format!("{}-watch", a.namespace);
        self.namespace(&ns).await?;
        let api0: Api<ConfigMap> = Api::namespaced(self.client(0), &ns);
        let rv = api0
            .list(&ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        eprintln!("[load] fan-out: opening {w} watches on {ns} configmaps");
        let t_open = Instant::now();
        let established = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let mut watchers = Vec::new();
        for i in 0..w {
            let api: Api<ConfigMap> = Api::namespaced(self.client(i), &ns);
            let (rv, established, done) = (rv.clone(), established.clone(), done.clone());
            watchers.push(tokio::spawn(async move {
                let mut got: Vec<(usize, Instant)> = Vec::with_capacity(k);
                let wp = WatchParams::default().timeout(290);
                let mut stream = None;
                for attempt in 1..=5 {
                    match api.watch(&wp, &rv).await {
                        Ok(s) => {
                            stream = Some(s.boxed());
                            break;
                        }
                        Err(_) => tokio::time::sleep(backoff(attempt)).await,
                    }
                }
                let Some(mut stream) = stream else {
                    return got;
                };
                established.fetch_add(1, Ordering::SeqCst);
                while got.len() < k && !done.load(Ordering::SeqCst) {
                    let ev = tokio::select! {
                        ev = stream.next() => ev,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    };
                    match ev {
                        Some(Ok(WatchEvent::Added(cm))) => {
                            let idx = cm
                                .metadata
                                .name
                                .as_deref()
                                .and_then(|n| n.strip_prefix("ev-"))
                                .and_then(|n| n.parse().ok());
                            if let Some(idx) = idx {
                                got.push((idx, Instant::now()));
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
                got
            }));
        }
        let open_deadline = Instant::now() + Duration::from_secs(180);
        while established.load(Ordering::SeqCst) < w && Instant::now() < open_deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let open = established.load(Ordering::SeqCst);
        value("watch.watchers", w);
        value("watch.established", open);
        value(
            "watch.open_s",
            format!("{:.2}", t_open.elapsed().as_secs_f64()),
        );
        eprintln!(
            "[load] {open}/{w} watches open after {:.1} s; writing {k} events at {}/s",
            t_open.elapsed().as_secs_f64(),
            a.watch_rate
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = self.rec.take_period();
        let cpu = Cpu::start(&self.pids);
        // When each create was sent (set once it succeeded).
        let written: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; k]));
        let every = Duration::from_secs_f64(1.0 / a.watch_rate.max(0.01));
        let mut tick = tokio::time::interval(every);
        let mut writers = Vec::new();
        for i in 0..k {
            tick.tick().await;
            let (me, written, ns) = (self.clone(), written.clone(), ns.clone());
            writers.push(tokio::spawn(async move {
                let api: Api<ConfigMap> = Api::namespaced(me.client(i), &ns);
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("ev-{i:05}")},
                    "data": {"payload": "x".repeat(512)},
                }))
                .expect("a valid ConfigMap");
                let sent = Instant::now();
                if timed(
                    &me.rec,
                    "watch-write",
                    me.timeout,
                    api.create(&PostParams::default(), &cm),
                )
                .await
                .is_ok()
                {
                    written.lock().expect("lock")[i] = Some(sent);
                }
            }));
        }
        for t in writers {
            let _ = t.await;
        }
        // Every watcher has all events, or 60 s after the last write.
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && watchers.iter().any(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.store(true, Ordering::SeqCst);
        let written = written.lock().expect("lock").clone();
        let mut deliveries = Vec::new();
        let mut last_per_event: Vec<Option<Instant>> = vec![None; k];
        for t in watchers {
            let got = t.await.unwrap_or_default();
            for (idx, at) in got {
                let Some(Some(wr)) = written.get(idx) else {
                    continue;
                };
                deliveries.push(at.saturating_duration_since(*wr));
                let l = &mut last_per_event[idx];
                *l = Some(l.map_or(at, |x| x.max(at)));
            }
        }
        let writes_ok = written.iter().filter(|x| x.is_some()).count();
        let expected = writes_ok * open;
        value("watch.events", k);
        value("watch.deliveries", deliveries.len());
        value("watch.missing", expected.saturating_sub(deliveries.len()));
        let secs = every.as_secs_f64() * k as f64;
        value(
            "watch.deliveries_per_s",
            format!("{:.0}", deliveries.len() as f64 / secs.max(0.001)),
        );
        lat("watch.delivery", stats_of(deliveries));
        lat(
            "watch.last-watcher",
            stats_of(
                last_per_event
                    .iter()
                    .zip(&written)
                    .filter_map(|(l, w)| Some(l.as_ref()?.saturating_duration_since(*w.as_ref()?)))
                    .collect(),
            ),
        );
        let period = self.rec.take_period();
        for (kind, s) in &period {
            lat(&format!("watch.{kind}"), s.stats());
        }
        cpu.report("watch");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 {
        bail!("--concurrency must be positive");
    }
    let mut pids = Vec::new();
    for p in &args.pids {
        let (l, pid) = p.split_once('=').context("--pid must be label=pid")?;
        pids.push((
            l.to_string(),
            pid.parse::<u32>().context("--pid: not a pid")?,
        ));
    }
    install_crypto();
    let clients = clients(&args.kubeconfig, &args.servers).await?;
    let load = Arc::new(Load {
        timeout: Duration::from_secs(args.request_timeout.max(1)),
        args,
        clients,
        rec: Recorder::default(),
        pids,
    });
    let work = async {
        if load.args.pods > 0 {
            load.ramp().await?;
        }
        if load.args.watchers > 0 {
            load.fan_out().await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = work => r,
        _ = terminated() => bail!("interrupted"),
    }
}

/// Probe writes slower than this are logged with their wall-clock start, so
/// a stall can be matched against the servers' and etcd's logs.
const SLOW_PROBE: Duration = Duration::from_millis(500);

/// Runs a probe write through [`timed`] (recorded under `kind`, bounded by
/// `limit`) and logs it (start time in UTC, server, duration) if it took
/// longer than [`SLOW_PROBE`].
async fn probe_write<T>(
    rec: &Recorder,
    limit: Duration,
    server: usize,
    kind: &'static str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let (wall, t) = (std::time::SystemTime::now(), Instant::now());
    let r = timed(rec, kind, limit, fut).await;
    let took = t.elapsed();
    if took >= SLOW_PROBE {
        let since = wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "[load] slow {kind} via server {server}: {} ms, started at unix {}.{:03}{}",
            took.as_millis(),
            since.as_secs(),
            since.subsec_millis(),
            if r.is_ok() { "" } else { " (failed)" }
        );
    }
    r
}
