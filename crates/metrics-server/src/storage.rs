//! The last two samples of every node and container, and the usage
//! derived from them as metrics-server derives it: CPU is the rate of the
//! cumulative CPU time between the two samples (`window` is the time
//! between them), memory is the newest working set. A counter that went
//! back or a container whose start time changed (a restart) starts over.
//! A container that started after the previous scrape (and less than one
//! resolution ago) is rated from its start time with zero CPU, so a new
//! pod shows figures after one scrape. A pod is reported only when every
//! container of its newest scrape has a rate.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::prom::Sample;

/// One cumulative sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// When it was taken (ms since the epoch).
    pub ts_ms: i64,
    /// Cumulative CPU time in seconds.
    pub cpu_seconds: f64,
    /// Working set in bytes.
    pub memory_bytes: f64,
}

/// CPU and memory usage over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The newer sample's time (ms).
    pub ts_ms: i64,
    /// Time between the two samples.
    pub window: Duration,
    /// CPU in nanocores.
    pub cpu_nano_cores: u64,
    /// Working set in bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Default)]
struct Series {
    prev: Option<Point>,
    last: Option<Point>,
    start_s: Option<f64>,
}

impl Series {
    fn push(&mut self, p: Point, start_s: Option<f64>, resolution: Duration) {
        let restarted =
            matches!((self.start_s, start_s), (Some(a), Some(b)) if (a - b).abs() > 0.001);
        match self.last {
            Some(last)
                if !restarted && p.ts_ms > last.ts_ms && p.cpu_seconds >= last.cpu_seconds =>
            {
                self.prev = Some(last);
                self.last = Some(p);
            }
            // The same sample again: nothing learnt.
            Some(last) if !restarted && p.ts_ms == last.ts_ms => {}
            _ => {
                self.prev = None;
                self.last = Some(p);
            }
        }
        self.start_s = start_s;
        // A fresh container: its start is the first point, at zero CPU.
        if self.prev.is_none()
            && let Some(start) = start_s
        {
            let start_ms = (start * 1000.0) as i64;
            let age_ms = p.ts_ms - start_ms;
            if age_ms >= 1000 && age_ms < resolution.as_millis() as i64 {
                self.prev = Some(Point {
                    ts_ms: start_ms,
                    cpu_seconds: 0.0,
                    memory_bytes: 0.0,
                });
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        let (prev, last) = (self.prev?, self.last?);
        let dt_ms = last.ts_ms - prev.ts_ms;
        if dt_ms <= 0 || last.cpu_seconds < prev.cpu_seconds {
            return None;
        }
        let rate = (last.cpu_seconds - prev.cpu_seconds) / (dt_ms as f64 / 1000.0);
        Some(Usage {
            ts_ms: last.ts_ms,
            window: Duration::from_millis(dt_ms as u64),
            cpu_nano_cores: (rate * 1e9).round() as u64,
            memory_bytes: last.memory_bytes.max(0.0) as u64,
        })
    }
}

/// A pod's key: (namespace, name).
pub type PodKey = (String, String);

#[derive(Debug, Default)]
struct NodeEntry {
    node: Series,
    /// Pod → container → series, as of this node's newest scrape.
    pods: HashMap<PodKey, BTreeMap<String, Series>>,
}

/// Usage of every node and pod the last scrapes saw.
#[derive(Debug, Default)]
pub struct Storage {
    nodes: HashMap<String, NodeEntry>,
    resolution: Duration,
}

/// What one node's `/metrics/resource` held, by series.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scrape {
    /// The node's own sample.
    pub node: Option<Point>,
    /// Container samples with their start time (s), by pod.
    pub containers: BTreeMap<PodKey, BTreeMap<String, (Point, Option<f64>)>>,
}

/// Reads the samples of one scrape; series without a timestamp or with
/// CPU but no memory (or the reverse) are left out, as metrics-server
/// does.
pub fn decode(samples: &[Sample]) -> Scrape {
    let mut node_cpu = None;
    let mut node_mem = None;
    type Key = (String, String, String);
    let mut cpu: BTreeMap<Key, (f64, i64)> = BTreeMap::new();
    let mut mem: BTreeMap<Key, (f64, i64)> = BTreeMap::new();
    let mut start: BTreeMap<Key, f64> = BTreeMap::new();
    for s in samples {
        let key = || -> Option<Key> {
            Some((
                s.labels.get("namespace")?.clone(),
                s.labels.get("pod")?.clone(),
                s.labels.get("container")?.clone(),
            ))
        };
        match s.name.as_str() {
            "node_cpu_usage_seconds_total" => node_cpu = s.timestamp_ms.map(|t| (s.value, t)),
            "node_memory_working_set_bytes" => node_mem = s.timestamp_ms.map(|t| (s.value, t)),
            "container_cpu_usage_seconds_total" => {
                if let (Some(k), Some(t)) = (key(), s.timestamp_ms) {
                    cpu.insert(k, (s.value, t));
                }
            }
            "container_memory_working_set_bytes" => {
                if let (Some(k), Some(t)) = (key(), s.timestamp_ms) {
                    mem.insert(k, (s.value, t));
                }
            }
            "container_start_time_seconds" => {
                if let Some(k) = key() {
                    start.insert(k, s.value);
                }
            }
            _ => {}
        }
    }
    let mut out = Scrape {
        node: match (node_cpu, node_mem) {
            (Some((c, t)), Some((m, _))) => Some(Point {
                ts_ms: t,
                cpu_seconds: c,
                memory_bytes: m,
            }),
            _ => None,
        },
        containers: BTreeMap::new(),
    };
    for (k, (c, t)) in cpu {
        let Some((m, _)) = mem.get(&k) else { continue };
        let p = Point {
            ts_ms: t,
            cpu_seconds: c,
            memory_bytes: *m,
        };
        out.containers
            .entry((k.0.clone(), k.1.clone()))
            .or_default()
            .insert(k.2.clone(), (p, start.get(&k).copied()));
    }
    out
}

impl Storage {
    /// Storage for scrapes every `resolution`.
    pub fn new(resolution: Duration) -> Self {
        Storage {
            nodes: HashMap::new(),
            resolution,
        }
    }

    /// Records node `name`'s scrape: its pods become exactly those of
    /// this scrape.
    pub fn store(&mut self, name: &str, scrape: Scrape) {
        let res = self.resolution;
        let entry = self.nodes.entry(name.to_string()).or_default();
        match scrape.node {
            Some(p) => entry.node.push(p, None, res),
            None => entry.node = Series::default(),
        }
        let mut pods = HashMap::new();
        for (pod, containers) in scrape.containers {
            let mut old = entry.pods.remove(&pod).unwrap_or_default();
            let mut new = BTreeMap::new();
            for (c, (p, start)) in containers {
                let mut s = old.remove(&c).unwrap_or_default();
                s.push(p, start, res);
                new.insert(c, s);
            }
            pods.insert(pod, new);
        }
        entry.pods = pods;
    }

    /// Forgets node `name` (its scrape failed, or it is gone).
    pub fn forget(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Keeps only the nodes `keep` says to.
    pub fn retain_nodes(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|n, _| keep(n));
    }

    /// Node `name`'s usage, once it has two samples.
    pub fn node(&self, name: &str) -> Option<Usage> {
        self.nodes.get(name)?.node.usage()
    }

    /// A pod's containers' usage, once every container has one.
    pub fn pod(&self, key: &PodKey) -> Option<Vec<(String, Usage)>> {
        let containers = self.nodes.values().find_map(|n| n.pods.get(key))?;
        containers
            .iter()
            .map(|(name, s)| s.usage().map(|u| (name.clone(), u)))
            .collect()
    }

    /// Every pod with figures.
    pub fn pods(&self) -> Vec<(PodKey, Vec<(String, Usage)>)> {
        let mut keys: Vec<&PodKey> = self.nodes.values().flat_map(|n| n.pods.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| self.pod(k).map(|u| (k.clone(), u)))
            .collect()
    }

    /// Whether any node has figures.
    pub fn has_nodes(&self) -> bool {
        self.nodes.values().any(|n| n.node.usage().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ts_s: i64, cpu: f64, mem: f64) -> Point {
        Point {
            ts_ms: ts_s * 1000,
            cpu_seconds: cpu,
            memory_bytes: mem,
        }
    }

    fn one(pod: &str, c: &str, pt: Point, start: Option<f64>) -> Scrape {
        let mut s = Scrape {
            node: Some(pt),
            containers: BTreeMap::new(),
        };
        s.containers
            .entry(("ns".into(), pod.into()))
            .or_default()
            .insert(c.into(), (pt, start));
        s
    }

    #[test]
    fn cpu_is_the_rate_between_two_scrapes() {
        let mut st = Storage::new(Duration::from_secs(15));
        st.store("n1", one("web", "app", p(100, 10.0, 1000.0), Some(0.0)));
        assert!(st.node("n1").is_none(), "one sample is no rate");
        assert!(st.pods().is_empty());
        st.store("n1", one("web", "app", p(115, 13.0, 2048.0), Some(0.0)));
        let u = st.node("n1").unwrap();
        assert_eq!(u.cpu_nano_cores, 200_000_000);
        assert_eq!(u.window, Duration::from_secs(15));
        assert_eq!(u.memory_bytes, 2048);
        assert_eq!(u.ts_ms, 115_000);
        let pods = st.pods();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].1[0].0, "app");
        assert_eq!(pods[0].1[0].1.cpu_nano_cores, 200_000_000);
    }

    #[test]
    fn a_restart_or_a_counter_going_back_starts_over() {
        let mut st = Storage::new(Duration::from_secs(15));
        st.store("n1", one("web", "app", p(100, 10.0, 1.0), Some(0.0)));
        st.store("n1", one("web", "app", p(115, 13.0, 1.0), Some(0.0)));
        assert!(st.pod(&("ns".into(), "web".into())).is_some());
        // Restarted at t=50 (long ago relative to the scrape): no rate yet.
        st.store("n1", one("web", "app", p(130, 1.0, 1.0), Some(50.0)));
        assert!(st.pod(&("ns".into(), "web".into())).is_none());
        assert!(st.node("n1").is_none(), "the node counter went back too");
    }

    #[test]
    fn a_fresh_container_is_rated_from_its_start() {
        let mut st = Storage::new(Duration::from_secs(15));
        // Started 5 s before its first scrape, 1 s of CPU since.
        st.store("n1", one("new", "app", p(105, 1.0, 10.0), Some(100.0)));
        let u = st.pod(&("ns".into(), "new".into())).unwrap();
        assert_eq!(u[0].1.cpu_nano_cores, 200_000_000);
        assert_eq!(u[0].1.window, Duration::from_secs(5));
    }

    #[test]
    fn pods_follow_the_newest_scrape_and_need_every_container() {
        let mut st = Storage::new(Duration::from_secs(15));
        let mut s = one("web", "app", p(100, 1.0, 1.0), Some(0.0));
        s.containers
            .get_mut(&("ns".into(), "web".into()))
            .unwrap()
            .insert("side".into(), (p(100, 1.0, 1.0), Some(0.0)));
        st.store("n1", s);
        let mut s = one("web", "app", p(115, 2.0, 1.0), Some(0.0));
        // "side" restarted: no rate, so no pod.
        s.containers
            .get_mut(&("ns".into(), "web".into()))
            .unwrap()
            .insert("side".into(), (p(115, 0.1, 1.0), Some(60.0)));
        st.store("n1", s);
        assert!(st.pods().is_empty());
        // A scrape without the pod drops it.
        st.store(
            "n1",
            Scrape {
                node: Some(p(130, 3.0, 1.0)),
                containers: BTreeMap::new(),
            },
        );
        assert!(st.pod(&("ns".into(), "web".into())).is_none());
        st.forget("n1");
        assert!(st.node("n1").is_none());
    }

    #[test]
    fn decode_pairs_cpu_and_memory() {
        let text = "node_cpu_usage_seconds_total 10 1000\nnode_memory_working_set_bytes 5 1000\ncontainer_cpu_usage_seconds_total{container=\"a\",namespace=\"ns\",pod=\"p\"} 1 1000\ncontainer_memory_working_set_bytes{container=\"a\",namespace=\"ns\",pod=\"p\"} 7 1000\ncontainer_start_time_seconds{container=\"a\",namespace=\"ns\",pod=\"p\"} 0.5\ncontainer_cpu_usage_seconds_total{container=\"b\",namespace=\"ns\",pod=\"p\"} 1 1000\n";
        let s = decode(&crate::prom::parse(text, |_| true).unwrap());
        assert_eq!(
            s.node,
            Some(Point {
                ts_ms: 1000,
                cpu_seconds: 10.0,
                memory_bytes: 5.0
            })
        );
        let c = &s.containers[&("ns".to_string(), "p".to_string())];
        assert_eq!(c.len(), 1, "b has no memory sample");
        assert_eq!(c["a"].1, Some(0.5));
    }
}
