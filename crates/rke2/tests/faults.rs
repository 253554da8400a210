//! A linearizability-style checker under faults: three servers behind
//! HAProxy (network namespaces), writers doing compare-and-swap updates of
//! ConfigMaps through the LB, a watcher recording what it sees, and a fault
//! injector that kills a server, kills only a server's etcd child, or cuts
//! a server off the network, one server at a time, waiting for three
//! healthy etcd members between rounds.
//!
//! Checked at the end: no acknowledged write lost, no value or
//! resourceVersion going backwards (in the watch and in the writers' own
//! reads), every acknowledged update seen by the watch (or covered by a
//! re-list after 410 Expired), no value nobody wrote, and the watch ends
//! where the objects are.
//!
//! The fault schedule is drawn from a seed printed in the output; replay it
//! with `FAULTS_SEED=<seed>` and the same `FAULTS_ROUNDS=<n>` (the number
//! of rounds, default 4, the CI length). A 409 answered for a write that
//! had applied counts as a violation too (a client told "not applied" when
//! it was); `FAULTS_STRICT=0` only reports those. `bench/faults.sh` runs
//! the long version.
//!
//! Needs root (namespaces), HAProxy and etcd/etcdctl (scripts/install.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use rke2_testbed::eventually;
use rke2_testbed::netbed::{Host, NetBed};
use serde_json::json;

const NS: &str = "faults";
/// Every API request of the writers and the watcher is bounded by this;
/// past it the outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(8);
/// A watch with no event for this long is re-opened from its last RV.
const WATCH_IDLE: Duration = Duration::from_secs(8);
const WRITERS: usize = 3;
/// Objects each writer creates before the faults start.
const INITIAL_OBJECTS: usize = 3;
/// At most this many objects per writer.
const MAX_OBJECTS: usize = 6;
/// The run must acknowledge at least this many operations.
const MIN_ACKED: usize = 60;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// A server or agent process in a host of the bed (as in multihost.rs).
struct Proc {
    host: Host,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    fn new(bed: &NetBed, host: &Host, config: &str) -> Proc {
        let dir = bed.dir().join(&host.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let args: Vec<String> = vec![
            "server".into(),
            "--config".into(),
            dir.join("config.yaml").display().to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--node-name".into(),
            host.name.clone(),
            "--node-ip".into(),
            host.ip.to_string(),
            "--write-kubeconfig".into(),
            dir.join("rke2.yaml").display().to_string(),
        ];
        Proc {
            host: host.clone(),
            dir,
            args,
            child: None,
        }
    }

    fn start(&mut self, bed: &NetBed) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(bed.spawn_in(&self.host, &mut cmd).unwrap());
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Fails (with the log) when the process has exited by itself.
    fn check_running(&mut self) -> Result<(), String> {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.child = None;
            return Err(format!(
                "{} exited with {st}; log tail:\n{}",
                self.host.name,
                self.log_tail(60)
            ));
        }
        Ok(())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// splitmix64: a tiny seeded generator, so a printed seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Server 1's rke2.yaml pointed at `addr` (the LB or one server).
fn kubeconfig_at(s1: &Proc, addr: Ipv4Addr, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(s1.dir.join("rke2.yaml")).unwrap();
    let edited = text.replace("https://127.0.0.1:6443", &format!("https://{addr}:6443"));
    assert_ne!(text, edited, "kubeconfig server not found");
    let p = s1.dir.join(name);
    std::fs::write(&p, edited).unwrap();
    p
}

/// etcdctl against the three members with server 1's etcd client cert.
fn etcdctl(s1_dir: &Path, ips: &[Ipv4Addr], args: &[&str]) -> Result<String, String> {
    let tls = s1_dir.join("data/server/tls/etcd");
    let endpoints = ips
        .iter()
        .map(|ip| format!("https://{ip}:2379"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", tls.join("server-ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s"])
        .args(args)
        .output()
        .map_err(|e| format!("etcdctl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Three started voting members, each answering a health check.
fn etcd_whole(s1_dir: &Path, ips: &[Ipv4Addr]) -> Result<(), String> {
    etcdctl(s1_dir, ips, &["endpoint", "health"])?;
    let members = etcdctl(s1_dir, ips, &["member", "list"])?;
    let voters = members
        .lines()
        .filter(|l| l.contains(", started, ") && l.trim_end().ends_with(", false"))
        .count();
    if voters != 3 {
        return Err(format!("not three started voters:\n{members}"));
    }
    Ok(())
}

async fn readyz(client: &Client) -> bool {
    let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(3), client.request_text(req)).await,
        Ok(Ok(t)) if t.trim() == "ok"
    )
}

/// Waits until every member is a healthy voter and every apiserver and the
/// LB answer /readyz; fails after `timeout` with the servers' log tails.
async fn wait_whole(
    servers: &mut [Proc],
    ips: &[Ipv4Addr],
    direct: &[Client],
    lb: &Client,
    timeout: Duration,
    what: &str,
) {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        for s in servers.iter_mut() {
            if let Err(e) = s.check_running() {
                panic!("{what}: {e}");
            }
        }
        let s1_dir = servers[0].dir.clone();
        let ips2 = ips.to_vec();
        let etcd = tokio::task::spawn_blocking(move || etcd_whole(&s1_dir, &ips2))
            .await
            .unwrap();
        match etcd {
            Ok(()) => {
                let mut all = true;
                for (i, c) in direct.iter().enumerate() {
                    if !readyz(c).await {
                        last = format!("apiserver of s{} not ready", i + 1);
                        all = false;
                    }
                }
                if all && readyz(lb).await {
                    return;
                }
                if all {
                    last = "LB not ready".into();
                }
            }
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            let logs: Vec<String> = servers
                .iter()
                .map(|s| format!("--- {} ---\n{}", s.host.name, s.log_tail(40)))
                .collect();
            panic!(
                "{what}: cluster not whole after {timeout:?}: {last}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------
// What the writers record.

#[derive(Debug, Clone)]
struct Ack {
    name: String,
    counter: u64,
    rv: i64,
    create: bool,
}

#[derive(Default)]
struct WriteLog {
    acked: Vec<Ack>,
    /// (name, counter, create, why): may or may not have applied.
    unknown: Vec<(String, u64, bool, String)>,
    /// Every (name, counter) any request tried to write.
    attempted: BTreeSet<(String, u64)>,
    conflicts: u64,
    /// 409s for writes that had applied after all (seen on the re-read).
    false_conflicts: Vec<String>,
    /// Definite refusals other than 409 (4xx).
    rejected: Vec<String>,
    read_failures: u64,
    /// Failure kinds of writes and reads, counted.
    failures: BTreeMap<String, u64>,
    violations: Vec<String>,
}

enum Outcome<T> {
    Ok(T),
    Conflict,
    Unknown(String),
    Rejected(String),
}

fn classify<T>(r: Result<Result<T, kube::Error>, tokio::time::error::Elapsed>) -> Outcome<T> {
    match r {
        Ok(Ok(v)) => Outcome::Ok(v),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Outcome::Conflict,
        Ok(Err(kube::Error::Api(s))) if s.code >= 500 || s.code == 429 => {
            Outcome::Unknown(format!("{} {}", s.code, s.reason))
        }
        Ok(Err(kube::Error::Api(s))) => {
            Outcome::Rejected(format!("{} {}: {}", s.code, s.reason, s.message))
        }
        Ok(Err(e)) => Outcome::Unknown(format!("transport: {}", short(&e.to_string()))),
        Err(_) => Outcome::Unknown("timeout".into()),
    }
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

fn counter_of(cm: &ConfigMap) -> Option<u64> {
    cm.data.as_ref()?.get("counter")?.parse().ok()
}

fn rv_of(cm: &ConfigMap) -> Option<i64> {
    cm.metadata.resource_version.as_ref()?.parse().ok()
}

fn config_map(name: &str, counter: u64) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"test": "faults"}},
        "data": {"counter": counter.to_string()}
    }))
    .unwrap()
}

/// One writer: owns the ConfigMaps `w<id>-<n>`, updates them by
/// compare-and-swap (counter + 1 at the RV just read) and now and then
/// creates a new one.
async fn writer(
    id: usize,
    client: Client,
    seed: u64,
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    log: Arc<Mutex<WriteLog>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let mut rng = Rng(seed);
    let mut owned: Vec<String> = Vec::new();
    let mut creates = 0usize;
    // Per object: the highest acknowledged RV (reads must not be older).
    let mut acked_rv: BTreeMap<String, i64> = BTreeMap::new();
    let pace = Duration::from_millis(20);
    let backoff = Duration::from_millis(250);
    while !stop.load(Ordering::SeqCst) {
        let want_create =
            owned.len() < INITIAL_OBJECTS || (owned.len() < MAX_OBJECTS && rng.below(25) == 0);
        if want_create {
            let name = format!("w{id}-{creates}");
            creates += 1;
            log.lock().unwrap().attempted.insert((name.clone(), 0));
            let r = tokio::time::timeout(
                OP_TIMEOUT,
                api.create(&PostParams::default(), &config_map(&name, 0)),
            )
            .await;
            {
                let mut l = log.lock().unwrap();
                match classify(r) {
                    Outcome::Ok(cm) => {
                        let rv = rv_of(&cm).unwrap_or(0);
                        l.acked.push(Ack {
                            name: name.clone(),
                            counter: 0,
                            rv,
                            create: true,
                        });
                        acked_rv.insert(name.clone(), rv);
                        owned.push(name);
                    }
                    Outcome::Conflict => {
                        // The name was never used before: the create applied
                        // and a retry inside the server then found it.
                        l.conflicts += 1;
                        let during = phase.lock().unwrap().clone();
                        l.false_conflicts.push(format!(
                            "create {name}: 409 AlreadyExists for a first create ({during})"
                        ));
                    }
                    Outcome::Unknown(why) => {
                        *l.failures.entry(format!("create {why}")).or_default() += 1;
                        l.unknown.push((name, 0, true, why));
                    }
                    Outcome::Rejected(why) => l.rejected.push(format!("create {name}: {why}")),
                }
            }
            tokio::time::sleep(pace).await;
            continue;
        }
        let name = owned[rng.below(owned.len() as u64) as usize].clone();
        let got = match classify(tokio::time::timeout(OP_TIMEOUT, api.get(&name)).await) {
            Outcome::Ok(cm) => cm,
            Outcome::Conflict => unreachable!("a GET answered 409"),
            Outcome::Unknown(why) | Outcome::Rejected(why) => {
                {
                    let mut l = log.lock().unwrap();
                    l.read_failures += 1;
                    *l.failures.entry(format!("get {why}")).or_default() += 1;
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let (Some(rv), Some(counter)) = (rv_of(&got), counter_of(&got)) else {
            log.lock()
                .unwrap()
                .violations
                .push(format!("{name}: unreadable object {got:?}"));
            continue;
        };
        if let Some(&a) = acked_rv.get(&name)
            && rv < a
        {
            log.lock().unwrap().violations.push(format!(
                "stale read: GET {name} returned rv {rv} (counter {counter}) after rv {a} was acknowledged"
            ));
        }
        let next = counter + 1;
        let mut new = got.clone();
        new.data
            .get_or_insert_with(Default::default)
            .insert("counter".into(), next.to_string());
        log.lock().unwrap().attempted.insert((name.clone(), next));
        let r = tokio::time::timeout(OP_TIMEOUT, api.replace(&name, &PostParams::default(), &new))
            .await;
        match classify(r) {
            Outcome::Ok(cm) => {
                let new_rv = rv_of(&cm).unwrap_or(0);
                let mut l = log.lock().unwrap();
                if new_rv <= rv || counter_of(&cm) != Some(next) {
                    l.violations.push(format!(
                        "update of {name} at rv {rv} acknowledged with rv {new_rv}, counter {:?} (wrote {next})",
                        counter_of(&cm)
                    ));
                }
                l.acked.push(Ack {
                    name: name.clone(),
                    counter: next,
                    rv: new_rv,
                    create: false,
                });
                acked_rv.insert(name, new_rv);
            }
            Outcome::Conflict => {
                let earlier_unknown = {
                    let mut l = log.lock().unwrap();
                    l.conflicts += 1;
                    l.unknown
                        .iter()
                        .any(|(n, c, _, _)| *n == name && *c == next)
                };
                // Only this writer writes the object: if the re-read shows
                // our value and no earlier attempt of it is in doubt, the
                // 409 was for a write that had applied.
                if !earlier_unknown
                    && let Ok(Ok(cm)) = tokio::time::timeout(OP_TIMEOUT, api.get(&name)).await
                    && counter_of(&cm) == Some(next)
                {
                    let during = phase.lock().unwrap().clone();
                    log.lock().unwrap().false_conflicts.push(format!(
                        "update {name} {counter}->{next} at rv {rv}: 409, but the object holds {next} at rv {:?} ({during})",
                        rv_of(&cm)
                    ));
                }
            }
            Outcome::Unknown(why) => {
                {
                    let mut l = log.lock().unwrap();
                    *l.failures.entry(format!("update {why}")).or_default() += 1;
                    l.unknown.push((name, next, false, why));
                }
                tokio::time::sleep(backoff).await;
            }
            Outcome::Rejected(why) => {
                log.lock()
                    .unwrap()
                    .rejected
                    .push(format!("update {name}: {why}"));
                tokio::time::sleep(backoff).await;
            }
        }
        tokio::time::sleep(pace).await;
    }
}

// ---------------------------------------------------------------------------
// What the watcher records.

#[derive(Debug, Clone)]
enum Seen {
    Event {
        kind: &'static str,
        name: String,
        counter: Option<u64>,
        rv: i64,
    },
    /// A list (the first one, or after a 410), at its RV.
    Relist {
        rv: i64,
        after_410: bool,
        items: Vec<(String, Option<u64>, i64)>,
    },
}

#[derive(Default)]
struct WatchLog {
    seen: Vec<Seen>,
    last_rv: i64,
    gone_410: u64,
    /// Watches re-opened: stream ended, idle, error events, failed opens.
    rewatches: BTreeMap<String, u64>,
}

fn note(map: &mut BTreeMap<String, u64>, k: impl Into<String>) {
    *map.entry(k.into()).or_default() += 1;
}

/// Watches the namespace's ConfigMaps from a list's RV, re-watching from the
/// last seen RV when a stream ends and re-listing after 410. Returns once
/// it has seen `target` (set by the test at the end) or `abort` is set.
/// Leaves out the namespace's `kube-root-ca.crt` (the root CA publisher's,
/// not a counter of this checker).
const NOT_ROOT_CA: &str = "metadata.name!=kube-root-ca.crt";

async fn watcher(
    client: Client,
    target: Arc<AtomicI64>,
    abort: Arc<AtomicBool>,
    log: Arc<Mutex<WatchLog>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let mut need_list = true;
    let mut after_410 = false;
    let done = |log: &Arc<Mutex<WatchLog>>| {
        abort.load(Ordering::SeqCst) || log.lock().unwrap().last_rv >= target.load(Ordering::SeqCst)
    };
    while !done(&log) {
        if need_list {
            match tokio::time::timeout(
                OP_TIMEOUT,
                api.list(&ListParams::default().fields(NOT_ROOT_CA)),
            )
            .await
            {
                Ok(Ok(list)) => {
                    let rv: i64 = list
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let items = list
                        .items
                        .iter()
                        .map(|cm| {
                            (
                                cm.metadata.name.clone().unwrap_or_default(),
                                counter_of(cm),
                                rv_of(cm).unwrap_or(0),
                            )
                        })
                        .collect();
                    let mut l = log.lock().unwrap();
                    l.seen.push(Seen::Relist {
                        rv,
                        after_410,
                        items,
                    });
                    l.last_rv = l.last_rv.max(rv);
                    need_list = false;
                    after_410 = false;
                }
                _ => {
                    note(&mut log.lock().unwrap().rewatches, "list failed");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
        }
        let from = log.lock().unwrap().last_rv.to_string();
        let wp = WatchParams::default().fields(NOT_ROOT_CA).timeout(20);
        let stream = match tokio::time::timeout(OP_TIMEOUT, api.watch(&wp, &from)).await {
            Ok(Ok(s)) => s,
            Ok(Err(kube::Error::Api(s))) if s.code == 410 => {
                let mut l = log.lock().unwrap();
                l.gone_410 += 1;
                need_list = true;
                after_410 = true;
                continue;
            }
            _ => {
                note(&mut log.lock().unwrap().rewatches, "watch open failed");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut stream = Box::pin(stream);
        let mut idle = Duration::ZERO;
        loop {
            if done(&log) {
                return;
            }
            let ev = match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Err(_) => {
                    idle += Duration::from_secs(1);
                    if idle >= WATCH_IDLE {
                        note(&mut log.lock().unwrap().rewatches, "idle");
                        break;
                    }
                    continue;
                }
                Ok(None) => {
                    note(&mut log.lock().unwrap().rewatches, "stream ended");
                    break;
                }
                Ok(Some(Err(e))) => {
                    note(
                        &mut log.lock().unwrap().rewatches,
                        format!("stream error {}", short(&e.to_string())),
                    );
                    break;
                }
                Ok(Some(Ok(ev))) => ev,
            };
            idle = Duration::ZERO;
            let mut l = log.lock().unwrap();
            let (kind, cm) = match ev {
                WatchEvent::Added(cm) => ("ADDED", cm),
                WatchEvent::Modified(cm) => ("MODIFIED", cm),
                WatchEvent::Deleted(cm) => ("DELETED", cm),
                WatchEvent::Bookmark(b) => {
                    if let Ok(rv) = b.metadata.resource_version.parse::<i64>() {
                        l.last_rv = l.last_rv.max(rv);
                    }
                    continue;
                }
                WatchEvent::Error(s) if s.code == 410 => {
                    l.gone_410 += 1;
                    need_list = true;
                    after_410 = true;
                    break;
                }
                WatchEvent::Error(s) => {
                    note(
                        &mut l.rewatches,
                        format!("ERROR event {} {}", s.code, short(&s.message)),
                    );
                    break;
                }
            };
            let rv = rv_of(&cm).unwrap_or(0);
            l.seen.push(Seen::Event {
                kind,
                name: cm.metadata.name.clone().unwrap_or_default(),
                counter: counter_of(&cm),
                rv,
            });
            l.last_rv = l.last_rv.max(rv);
        }
    }
}

// ---------------------------------------------------------------------------
// The checks.

struct Report {
    violations: Vec<String>,
    covered_by_relist: usize,
}

fn check(
    writes: &WriteLog,
    watch: &WatchLog,
    fin: &BTreeMap<String, (Option<u64>, i64)>,
) -> Report {
    let mut v: Vec<String> = writes.violations.clone();
    let mut covered_by_relist = 0;
    // 1. No acknowledged write lost.
    let mut max_acked: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for a in &writes.acked {
        let e = max_acked.entry(&a.name).or_insert((0, 0));
        e.0 = e.0.max(a.counter);
        e.1 = e.1.max(a.rv);
    }
    for (name, (c, rv)) in &max_acked {
        match fin.get(*name) {
            None => v.push(format!(
                "lost: {name} (acknowledged up to counter {c}) is gone"
            )),
            Some((fc, frv)) => {
                if fc.is_none_or(|fc| fc < *c) || frv < rv {
                    v.push(format!(
                        "lost: {name} holds counter {fc:?} at rv {frv}, but counter {c} at rv {rv} was acknowledged"
                    ));
                }
            }
        }
    }
    // 2. Nothing goes backwards in the watch; nothing appears that nobody
    // wrote; an acknowledged RV carries the acknowledged value.
    let ack_at: BTreeMap<(&str, i64), u64> = writes
        .acked
        .iter()
        .map(|a| ((a.name.as_str(), a.rv), a.counter))
        .collect();
    let mut last: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut global = 0i64;
    let mut seen_rv: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut relist_410_rvs: Vec<i64> = Vec::new();
    for s in &watch.seen {
        match s {
            Seen::Event {
                kind,
                name,
                counter,
                rv,
            } => {
                if *kind == "DELETED" {
                    v.push(format!("watch: unexpected DELETED {name} at rv {rv}"));
                }
                let Some(c) = *counter else {
                    v.push(format!("watch: {name} at rv {rv} has no counter"));
                    continue;
                };
                if *rv < global {
                    v.push(format!(
                        "watch: rv went back from {global} to {rv} ({kind} {name})"
                    ));
                }
                global = global.max(*rv);
                if let Some(&(c0, r0)) = last.get(name) {
                    if *rv <= r0 {
                        v.push(format!("watch: {name} rv {r0} then {rv}"));
                    }
                    if c < c0 {
                        v.push(format!(
                            "watch: {name} counter went back {c0} -> {c} (rv {r0} -> {rv})"
                        ));
                    }
                }
                last.insert(name.clone(), (c, *rv));
                if !writes.attempted.contains(&(name.clone(), c)) {
                    v.push(format!(
                        "watch: {name} counter {c} at rv {rv} was never written"
                    ));
                }
                if let Some(&ac) = ack_at.get(&(name.as_str(), *rv))
                    && ac != c
                {
                    v.push(format!(
                        "watch: {name} at rv {rv} holds {c}, but {ac} was acknowledged at that rv"
                    ));
                }
                seen_rv.insert((name.clone(), *rv));
            }
            Seen::Relist {
                rv,
                after_410,
                items,
            } => {
                if *rv < global {
                    v.push(format!(
                        "re-list at rv {rv} is older than the watch's {global}"
                    ));
                }
                global = global.max(*rv);
                if *after_410 {
                    relist_410_rvs.push(*rv);
                }
                for (name, counter, irv) in items {
                    let Some(c) = *counter else { continue };
                    if let Some(&(c0, r0)) = last.get(name)
                        && (c < c0 || *irv < r0)
                    {
                        v.push(format!(
                            "re-list: {name} at counter {c} rv {irv}, after the watch saw {c0} at rv {r0}"
                        ));
                    }
                    last.insert(name.clone(), (c, *irv));
                    seen_rv.insert((name.clone(), *irv));
                }
            }
        }
    }
    // 3. Every acknowledged write seen by the watch, or covered by a
    // re-list after 410.
    for a in &writes.acked {
        if seen_rv.contains(&(a.name.clone(), a.rv)) {
            continue;
        }
        if relist_410_rvs.iter().any(|&r| r >= a.rv) {
            covered_by_relist += 1;
            continue;
        }
        v.push(format!(
            "watch missed acknowledged {} of {} (counter {}, rv {})",
            if a.create { "create" } else { "update" },
            a.name,
            a.counter,
            a.rv
        ));
    }
    // The watch ends where the objects are.
    for (name, (fc, frv)) in fin {
        match last.get(name) {
            Some(&(c, rv)) if Some(c) == *fc && rv == *frv => {}
            other => v.push(format!(
                "watch ended at {other:?} for {name}, which holds counter {fc:?} at rv {frv}"
            )),
        }
    }
    Report {
        violations: v,
        covered_by_relist,
    }
}

// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillServer,
    KillEtcd,
    Partition,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_configmaps_under_faults() {
    let t0 = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root for network namespaces"
    );
    let seed: u64 = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    let rounds: usize = std::env::var("FAULTS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    println!(
        "faults: seed={seed} rounds={rounds} (replay with FAULTS_SEED={seed} FAULTS_ROUNDS={rounds})"
    );
    let mut rng = Rng(seed);

    let mut bed = NetBed::new().unwrap();
    let lb = bed.add_host("lb").unwrap();
    let hs: Vec<Host> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| bed.add_host(n).unwrap())
        .collect();
    let ips: Vec<Ipv4Addr> = hs.iter().map(|h| h.ip).collect();
    let _haproxy = bed.start_haproxy(&lb, &ips).unwrap();
    let first = format!("token: faults-secret\ntls-san:\n  - {}\n", lb.ip);
    let joiner = format!("server: https://{}:9345\n{first}", lb.ip);
    let mut s: Vec<Proc> = vec![
        Proc::new(&bed, &hs[0], &first),
        Proc::new(&bed, &hs[1], &joiner),
        Proc::new(&bed, &hs[2], &joiner),
    ];
    s[0].start(&bed);
    eventually(Duration::from_secs(120), "server 1 kubeconfig", || async {
        s[0].dir.join("rke2.yaml").exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s[0].log_tail(60)));
    s[1].start(&bed);
    s[2].start(&bed);
    let lb_kc = kubeconfig_at(&s[0], lb.ip, "rke2-lb.yaml");
    let lb_client = rke2_testbed::client_from_kubeconfig(&lb_kc).await.unwrap();
    let mut direct = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let kc = kubeconfig_at(&s[0], *ip, &format!("rke2-s{}.yaml", i + 1));
        direct.push(rke2_testbed::client_from_kubeconfig(&kc).await.unwrap());
    }
    wait_whole(
        &mut s,
        &ips,
        &direct,
        &lb_client,
        Duration::from_secs(180),
        "bring-up",
    )
    .await;
    println!("faults: cluster whole after {:?}", t0.elapsed());
    let nss: Api<Namespace> = Api::all(lb_client.clone());
    eventually(Duration::from_secs(30), "namespace created", || async {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
        match nss.create(&PostParams::default(), &ns).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await
    .unwrap();

    // Writers and the watcher, each with its own client (own connections
    // through the LB, so they spread over the servers).
    let writes = Arc::new(Mutex::new(WriteLog::default()));
    let watch = Arc::new(Mutex::new(WatchLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(Mutex::new(String::from("before the faults")));
    let target = Arc::new(AtomicI64::new(i64::MAX));
    let abort_watch = Arc::new(AtomicBool::new(false));
    let watch_task = tokio::spawn(watcher(
        rke2_testbed::client_from_kubeconfig(&lb_kc).await.unwrap(),
        target.clone(),
        abort_watch.clone(),
        watch.clone(),
    ));
    eventually(
        Duration::from_secs(30),
        "the watcher's first list",
        || async { (!watch.lock().unwrap().seen.is_empty()).then_some(()) },
    )
    .await
    .unwrap();
    let mut writer_tasks = Vec::new();
    for id in 0..WRITERS {
        writer_tasks.push(tokio::spawn(writer(
            id,
            rke2_testbed::client_from_kubeconfig(&lb_kc).await.unwrap(),
            seed.wrapping_add(1 + id as u64),
            stop.clone(),
            phase.clone(),
            writes.clone(),
        )));
    }
    eventually(
        Duration::from_secs(30),
        "initial objects acknowledged",
        || async {
            let l = writes.lock().unwrap();
            (l.acked.iter().filter(|a| a.create).count() >= WRITERS * INITIAL_OBJECTS).then_some(())
        },
    )
    .await
    .unwrap();

    // The faults: every kind at least once (shuffled), the rest at random;
    // one server at a time.
    let mut plan: Vec<Fault> = vec![Fault::KillServer, Fault::KillEtcd, Fault::Partition];
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i as u64 + 1) as usize);
    }
    plan.truncate(rounds);
    while plan.len() < rounds {
        plan.push([Fault::KillServer, Fault::KillEtcd, Fault::Partition][rng.below(3) as usize]);
    }
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let acked_at = |w: &Arc<Mutex<WriteLog>>| w.lock().unwrap().acked.len();
    for (round, fault) in plan.iter().enumerate() {
        let victim = rng.below(3) as usize;
        let hold = Duration::from_millis(2000 + rng.below(3000));
        // Let the writers run on a whole cluster first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = acked_at(&writes);
        let started = Instant::now();
        *phase.lock().unwrap() = format!(
            "round {round}, {fault:?} on s{}, {:.1}s into the run",
            victim + 1,
            t0.elapsed().as_secs_f64()
        );
        match fault {
            Fault::KillServer => {
                s[victim].kill9();
                tokio::time::sleep(hold).await;
                s[victim].start(&bed);
            }
            Fault::KillEtcd => {
                let pid = s[victim].pid().unwrap();
                let etcd = eventually(Duration::from_secs(30), "the etcd child", || async {
                    rke2_testbed::etcd_child(pid)
                })
                .await
                .unwrap();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(etcd),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                // The server restarts it by itself: a new etcd child.
                eventually(
                    Duration::from_secs(30),
                    "etcd restarted by the server",
                    || async { rke2_testbed::etcd_child(pid).filter(|p| *p != etcd) },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", s[victim].log_tail(40)));
            }
            Fault::Partition => {
                bed.link_down(&hs[victim]).unwrap();
                tokio::time::sleep(hold).await;
                bed.link_up(&hs[victim]).unwrap();
            }
        }
        *injected.entry(*fault).or_default() += 1;
        wait_whole(
            &mut s,
            &ips,
            &direct,
            &lb_client,
            Duration::from_secs(120),
            &format!("round {round} ({fault:?} s{})", victim + 1),
        )
        .await;
        *phase.lock().unwrap() = format!("after round {round}");
        let held = if *fault == Fault::KillEtcd {
            String::new()
        } else {
            format!(" for {hold:?}")
        };
        println!(
            "faults: round {round}: {fault:?} on s{}{held}: whole again after {:?}, {} ops acknowledged meanwhile",
            victim + 1,
            started.elapsed(),
            acked_at(&writes) - before
        );
    }
    // A little more load on the whole cluster, then stop the writers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for t in writer_tasks {
        t.await.unwrap();
    }
    // The watch must catch up with every acknowledged write.
    let max_rv = writes
        .lock()
        .unwrap()
        .acked
        .iter()
        .map(|a| a.rv)
        .max()
        .unwrap_or(0);
    target.store(max_rv, Ordering::SeqCst);
    let caught_up = tokio::time::timeout(Duration::from_secs(30), watch_task).await;
    if caught_up.is_err() {
        abort_watch.store(true, Ordering::SeqCst);
    }
    // Final state, read through the LB.
    let api: Api<ConfigMap> = Api::namespaced(lb_client.clone(), NS);
    let fin: BTreeMap<String, (Option<u64>, i64)> = eventually(
        Duration::from_secs(30),
        "final list through the LB",
        || async {
            let list = api
                .list(&ListParams::default().fields(NOT_ROOT_CA))
                .await
                .ok()?;
            Some(
                list.items
                    .iter()
                    .filter(|cm| {
                        cm.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with('w'))
                    })
                    .map(|cm| {
                        (
                            cm.metadata.name.clone().unwrap(),
                            (counter_of(cm), rv_of(cm).unwrap_or(0)),
                        )
                    })
                    .collect(),
            )
        },
    )
    .await
    .unwrap();

    let w = writes.lock().unwrap();
    let wl = watch.lock().unwrap();
    let mut report = check(&w, &wl, &fin);
    if caught_up.is_err() {
        report.violations.push(format!(
            "the watch did not reach rv {max_rv} within 30 s after the writers stopped (at {})",
            wl.last_rv
        ));
    }
    // A 409 for a write that applied is a wrong answer too (clients told
    // "not applied" when it was).
    if std::env::var("FAULTS_STRICT").as_deref() != Ok("0") {
        for f in &w.false_conflicts {
            report.violations.push(format!("false conflict: {f}"));
        }
    }
    let events = wl
        .seen
        .iter()
        .filter(|s| matches!(s, Seen::Event { .. }))
        .count();
    println!("faults: write failures: {:?}", w.failures);
    println!("faults: re-watches: {:?}", wl.rewatches);
    for f in &w.false_conflicts {
        println!("faults: FALSE CONFLICT {f}");
    }
    for r in &w.rejected {
        println!("faults: REJECTED {r}");
    }
    for x in &report.violations {
        println!("faults: VIOLATION {x}");
    }
    println!(
        "faults: SUMMARY seed={seed} rounds={rounds} faults={{kill-server: {}, kill-etcd: {}, partition: {}}} \
         acked={} (creates {}) unknown={} conflicts={} false-conflicts={} rejected={} read-failures={} \
         watch-events={} 410-relists={} covered-by-relist={} objects={} violations={} elapsed={:?}",
        injected.get(&Fault::KillServer).unwrap_or(&0),
        injected.get(&Fault::KillEtcd).unwrap_or(&0),
        injected.get(&Fault::Partition).unwrap_or(&0),
        w.acked.len(),
        w.acked.iter().filter(|a| a.create).count(),
        w.unknown.len(),
        w.conflicts,
        w.false_conflicts.len(),
        w.rejected.len(),
        w.read_failures,
        events,
        wl.gone_410,
        report.covered_by_relist,
        fin.len(),
        report.violations.len(),
        t0.elapsed()
    );
    assert!(
        w.acked.len() >= MIN_ACKED,
        "only {} operations acknowledged (want >= {MIN_ACKED})",
        w.acked.len()
    );
    assert_eq!(
        report.violations.len(),
        0,
        "violations (seed {seed}):\n{}",
        report.violations.join("\n")
    );
    drop(w);
    drop(wl);
    for p in s.iter_mut() {
        p.kill9();
    }
}
