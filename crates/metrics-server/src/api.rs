//! The `metrics.k8s.io/v1beta1` objects: NodeMetrics and PodMetrics as
//! metrics-server writes them (CPU as a decimal quantity of nanocores,
//! memory as a binary quantity of bytes, `window` as a Go duration,
//! `timestamp` the newer sample's time), and their Table form.

use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};

use crate::storage::Usage;

/// CPU nanocores as the canonical quantity Kubernetes prints for
/// `NewScaledQuantity(n, Nano)`: `250m`, `1`, `12345n`.
pub fn cpu_quantity(nano: u64) -> String {
    match nano {
        0 => "0".into(),
        n if n.is_multiple_of(1_000_000_000) => format!("{}", n / 1_000_000_000),
        n if n.is_multiple_of(1_000_000) => format!("{}m", n / 1_000_000),
        n if n.is_multiple_of(1_000) => format!("{}u", n / 1_000),
        n => format!("{n}n"),
    }
}

/// Bytes as the canonical binary quantity: `12Ki`, `3Mi`, `1000`.
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    let mut n = bytes;
    let mut suffix = "";
    for s in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
        if !n.is_multiple_of(1024) {
            break;
        }
        n /= 1024;
        suffix = s;
    }
    format!("{n}{suffix}")
}

/// A duration as Go's `time.Duration.String()`: `15.012s`, `1m5s`.
pub fn go_duration(d: Duration) -> String {
    let total_ns = d.as_nanos();
    if total_ns == 0 {
        return "0s".into();
    }
    let h = total_ns / 3_600_000_000_000;
    let m = (total_ns / 60_000_000_000) % 60;
    let s_ns = total_ns % 60_000_000_000;
    let secs = format!("{}.{:09}", s_ns / 1_000_000_000, s_ns % 1_000_000_000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

fn rfc3339_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn usage(u: &Usage) -> Value {
    json!({"cpu": cpu_quantity(u.cpu_nano_cores), "memory": memory_quantity(u.memory_bytes)})
}

/// One NodeMetrics.
pub fn node_metrics(name: &str, labels: Option<&Value>, u: &Usage) -> Value {
    let mut meta = json!({"name": name, "creationTimestamp": now()});
    if let Some(l) = labels.filter(|l| l.as_object().is_some_and(|o| !o.is_empty())) {
        meta["labels"] = l.clone();
    }
    json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": meta,
        "timestamp": rfc3339_ms(u.ts_ms),
        "window": go_duration(u.window),
        "usage": usage(u),
    })
}

/// One PodMetrics.
pub fn pod_metrics(
    namespace: &str,
    name: &str,
    labels: Option<&Value>,
    containers: &[(String, Usage)],
) -> Value {
    let mut meta = json!({"name": name, "namespace": namespace, "creationTimestamp": now()});
    if let Some(l) = labels.filter(|l| l.as_object().is_some_and(|o| !o.is_empty())) {
        meta["labels"] = l.clone();
    }
    let first = containers.first().map(|(_, u)| u);
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": meta,
        "timestamp": first.map(|u| rfc3339_ms(u.ts_ms)),
        "window": first.map(|u| go_duration(u.window)),
        "containers": containers
            .iter()
            .map(|(n, u)| json!({"name": n, "usage": usage(u)}))
            .collect::<Vec<_>>(),
    })
}

/// A list of `kind` items.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": items,
    })
}

/// The Table form of a metrics object or list (`kubectl get
/// nodes.metrics.k8s.io`): name, CPU, memory, window.
pub fn table(v: &Value) -> Value {
    let items: Vec<&Value> = match v["items"].as_array() {
        Some(a) => a.iter().collect(),
        None => vec![v],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|it| {
            let (cpu, mem) = if it["kind"] == "PodMetrics" {
                // A pod's usage is its containers' sum.
                let mut cpu = 0u64;
                let mut mem = 0u64;
                for c in it["containers"].as_array().into_iter().flatten() {
                    cpu += parse_cpu(c["usage"]["cpu"].as_str().unwrap_or("0"));
                    mem += parse_mem(c["usage"]["memory"].as_str().unwrap_or("0"));
                }
                (cpu_quantity(cpu), memory_quantity(mem))
            } else {
                (
                    it["usage"]["cpu"].as_str().unwrap_or("").to_string(),
                    it["usage"]["memory"].as_str().unwrap_or("").to_string(),
                )
            };
            json!({
                "cells": [it["metadata"]["name"], cpu, mem, it["window"]],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": it["metadata"]},
            })
        })
        .collect();
    let col = |name: &str, format: &str, desc: &str| json!({"name": name, "type": "string", "format": format, "description": desc, "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [
            col("Name", "name", "Name must be unique within a namespace."),
            col("CPU", "", "CPU usage"),
            col("Memory", "", "Memory usage"),
            col("Window", "", "Time window of the usage"),
        ],
        "rows": rows,
    })
}

fn parse_cpu(q: &str) -> u64 {
    let (n, mult) = match q.char_indices().last() {
        Some((i, 'n')) => (&q[..i], 1),
        Some((i, 'u')) => (&q[..i], 1_000),
        Some((i, 'm')) => (&q[..i], 1_000_000),
        _ => (q, 1_000_000_000),
    };
    n.parse::<u64>().unwrap_or(0) * mult
}

fn parse_mem(q: &str) -> u64 {
    for (i, s) in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().enumerate() {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<u64>().unwrap_or(0) << (10 * (i + 1));
        }
    }
    q.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_canonical() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(123_456_789), "123456789n");
        assert_eq!(cpu_quantity(5_000), "5u");
        assert_eq!(memory_quantity(12 * 1024), "12Ki");
        assert_eq!(memory_quantity(3 << 20), "3Mi");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(parse_cpu("250m") + parse_cpu("5u"), 250_005_000);
        assert_eq!(parse_mem("3Mi"), 3 << 20);
    }

    #[test]
    fn durations_as_go_prints_them() {
        assert_eq!(go_duration(Duration::from_millis(15_012)), "15.012s");
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_secs(65)), "1m5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn objects_and_tables() {
        let u = Usage {
            ts_ms: 1_700_000_000_000,
            window: Duration::from_secs(15),
            cpu_nano_cores: 250_000_000,
            memory_bytes: 4 << 20,
        };
        let n = node_metrics("n1", Some(&json!({"a": "b"})), &u);
        assert_eq!(n["usage"], json!({"cpu": "250m", "memory": "4Mi"}));
        assert_eq!(n["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(n["window"], "15s");
        assert_eq!(n["metadata"]["labels"]["a"], "b");
        let p = pod_metrics("ns", "p", None, &[("a".into(), u.clone()), ("b".into(), u)]);
        let t = table(&list("PodMetricsList", vec![p]));
        assert_eq!(t["rows"][0]["cells"], json!(["p", "500m", "8Mi", "15s"]));
    }
}
