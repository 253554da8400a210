//! Shared parts of the scale bench binaries (`bench/scale.sh`):
//! `rke2-hollow-nodes` (many simulated nodes in one process, like
//! kubemark's hollow nodes) and `rke2-scale-load` (the load generator).
//!
//! Here: API clients from an admin kubeconfig (optionally one per server
//! URL), latency recording with nearest-rank percentiles, retry back-off,
//! error classification, and CPU readings from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Installs the one rustls crypto provider (ring) for this process.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One kube client per server URL (all with the kubeconfig's credentials
/// and CA), or a single one for the kubeconfig's own server when
/// `servers` is empty.
pub async fn clients(kubeconfig: &Path, servers: &[String]) -> Result<Vec<kube::Client>> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let base =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("kubeconfig")?;
    let mut out = Vec::new();
    if servers.is_empty() {
        out.push(kube::Client::try_from(base)?);
    } else {
        for s in servers {
            let mut c = base.clone();
            c.cluster_url = s.parse().with_context(|| format!("server URL {s}"))?;
            out.push(kube::Client::try_from(c)?);
        }
    }
    Ok(out)
}

/// The HTTP status of an API error answer (`None` for transport errors).
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Whether a failed write is worth retrying: transport errors, timeouts,
/// 409 conflicts, 429 and 5xx.
pub fn retryable(e: &kube::Error) -> bool {
    match api_code(e) {
        None => true,
        Some(c) => c == 409 || c == 429 || c >= 500,
    }
}

/// The error a timed-out request is reported as.
pub fn timeout_error(after: Duration) -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {after:?}"),
    )))
}

/// Cheap jitter in `0..max_ms` ms (no random number generator needed for
/// spreading retries).
pub fn jitter(max_ms: u64) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_millis(n.wrapping_mul(2654435761) % max_ms.max(1))
}

/// Back-off before retry number `attempt` (1-based): 100 ms doubling up
/// to 5 s, plus up to 100 ms of jitter.
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_millis(base.min(5_000)) + jitter(100)
}

/// Latencies (µs) and error count of one kind of request.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// One entry per answered or failed request, in µs.
    pub lat_us: Vec<u32>,
    /// Requests that failed (error answer, transport error, timeout).
    pub errors: u64,
}

impl Samples {
    /// Adds one request.
    pub fn add(&mut self, d: Duration, ok: bool) {
        self.lat_us.push(d.as_micros().min(u32::MAX as u128) as u32);
        if !ok {
            self.errors += 1;
        }
    }

    /// Appends another set.
    pub fn extend(&mut self, o: &Samples) {
        self.lat_us.extend_from_slice(&o.lat_us);
        self.errors += o.errors;
    }

    /// Count and percentiles.
    pub fn stats(&self) -> Stats {
        let mut v = self.lat_us.clone();
        v.sort_unstable();
        let q = |q: f64| quantile_us(&v, q) as f64 / 1000.0;
        Stats {
            n: v.len() as u64,
            errors: self.errors,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: q(1.0),
        }
    }
}

/// Nearest-rank quantile of sorted values (0 when empty).
pub fn quantile_us(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Nearest-rank quantile of sorted durations (zero when empty).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Summary of a [`Samples`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Requests.
    pub n: u64,
    /// Failed requests among them.
    pub errors: u64,
    /// Median latency (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Slowest (ms).
    pub max_ms: f64,
}

impl Stats {
    /// `RESULT` line fields after the label: n, errors, p50, p99, max.
    pub fn tsv(&self) -> String {
        format!(
            "{}\t{}\t{:.2}\t{:.2}\t{:.2}",
            self.n, self.errors, self.p50_ms, self.p99_ms, self.max_ms
        )
    }

    /// Short human form.
    pub fn human(&self) -> String {
        format!(
            "n {} err {} p50 {:.1} ms p99 {:.1} ms max {:.0} ms",
            self.n, self.errors, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Request latencies per kind, kept three ways: since the last summary
/// (window), since the last period mark, and since the start.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<RecInner>,
}

#[derive(Default)]
struct RecInner {
    window: BTreeMap<&'static str, Samples>,
    period: BTreeMap<&'static str, Samples>,
    total: BTreeMap<&'static str, Samples>,
}

impl Recorder {
    /// Records one request of `kind`.
    pub fn add(&self, kind: &'static str, d: Duration, ok: bool) {
        let mut g = self.inner.lock().expect("recorder lock");
        g.window.entry(kind).or_default().add(d, ok);
        g.period.entry(kind).or_default().add(d, ok);
        g.total.entry(kind).or_default().add(d, ok);
    }

    /// Takes the samples since the last call (for periodic summaries).
    pub fn take_window(&self) -> BTreeMap<&'static str, Samples> {
        std::mem::take(&mut self.inner.lock().expect("recorder lock").window)
    }

    /// Takes the samples since the last period mark.
    pub fn take_period(&self) -> BTreeMap<&'static str, Samples> {
        std::mem::take(&mut self.inner.lock().expect("recorder lock").period)
    }

    /// All samples since the start.
    pub fn total(&self) -> BTreeMap<&'static str, Samples> {
        self.inner.lock().expect("recorder lock").total.clone()
    }
}

/// All kinds merged into one.
pub fn merged(m: &BTreeMap<&'static str, Samples>) -> Samples {
    let mut all = Samples::default();
    for s in m.values() {
        all.extend(s);
    }
    all
}

/// Runs `fut` with a deadline, records its latency under `kind` and
/// returns its result (a timeout becomes [`timeout_error`]).
pub async fn timed<T>(
    rec: &Recorder,
    kind: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let t = Instant::now();
    let r = match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error(limit)),
    };
    rec.add(kind, t.elapsed(), r.is_ok());
    r
}

/// utime + stime of a process in clock ticks (0 when unreadable).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): utime is
    // field 14, stime 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Ticks per second of `/proc` times (USER_HZ, 100 on every common build).
pub const TICKS_PER_SEC: f64 = 100.0;

/// The machine's (busy, total) jiffies from `/proc/stat`.
pub fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Current UTC time as the API writes `Time` values.
pub fn now_time() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Current UTC time as the API writes `MicroTime` values.
pub fn now_micro() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// A future that completes once SIGINT or SIGTERM arrives.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, only Ctrl-C through tokio's fallback.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile_us(&v, 0.5), 50);
        assert_eq!(quantile_us(&v, 0.99), 99);
        assert_eq!(quantile_us(&v, 1.0), 100);
        assert_eq!(quantile_us(&[], 0.5), 0);
        assert_eq!(quantile_us(&[7], 0.99), 7);
    }

    #[test]
    fn recorder_windows_and_periods() {
        let r = Recorder::default();
        r.add("lease", Duration::from_millis(2), true);
        r.add("lease", Duration::from_millis(4), false);
        let w = r.take_window();
        assert_eq!(w["lease"].lat_us.len(), 2);
        assert_eq!(w["lease"].errors, 1);
        assert!(r.take_window().is_empty());
        r.add("pod-status", Duration::from_millis(1), true);
        let p = r.take_period();
        assert_eq!(merged(&p).lat_us.len(), 3);
        assert_eq!(merged(&r.total()).stats().max_ms, 4.0);
        assert!(r.take_period().is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(201));
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_millis(5_100));
    }
}
