//! Sync-time benchmark of the service proxy (run by `bench/proxy.sh`):
//! in a private network namespace (so the machine's own tables are not
//! touched), N Services × M endpoints are written by a full sync, then
//! single-endpoint changes by partial syncs; the reference is raw
//! `nft -f` of the same full script (the kernel's and nft's own cost of
//! loading that ruleset). Needs root and Debian's nftables.
//!
//! Usage: proxy_bench [SERVICES] [ENDPOINTS] [ROUNDS]   (default 1000 10 5)

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rke2_service_proxy::apply::{self, Applier};
use rke2_service_proxy::model::{Endpoint, NodeFacts, Protocol, ServicePort};
use rke2_service_proxy::rules;

fn ports(n: usize, m: usize, salt: u32) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            namespace: "bench".into(),
            service: format!("svc-{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(0x0a2b_0000u32 + 10 + i as u32),
            port: 80,
            node_port: Some(30000 + (i % 2768) as u16),
            external_ips: vec![],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            endpoints: (0..m)
                .map(|j| Endpoint {
                    ip: Ipv4Addr::from(0x0a2a_0000u32 + ((i * m + j) as u32 + salt) % 65000 + 2),
                    port: 8080,
                    local: false,
                })
                .collect(),
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let n = args.first().copied().unwrap_or(1000);
    let m = args.get(1).copied().unwrap_or(10);
    let rounds = args.get(2).copied().unwrap_or(5).max(1);
    // SAFETY: detaches this (single-threaded) process into a new network
    // namespace; nft runs as its child there.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) needs root: {}",
        std::io::Error::last_os_error()
    );
    let node = NodeFacts {
        name: "bench".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 77, 2)],
        cluster_cidr: Some("10.42.0.0/16".parse().unwrap()),
        service_cidr: Some("10.43.0.0/16".parse().unwrap()),
    };
    let base = ports(n, m, 0);
    let started = Instant::now();
    let desired = rules::generate(&node, &base);
    let generate = started.elapsed();
    let script = desired.render_full();
    let full_lines = script.lines().count();

    let mut full = Vec::new();
    let mut raw = Vec::new();
    let mut partial = Vec::new();
    let mut partial_lines = 0;
    for r in 0..rounds {
        let _ = apply::delete_table();
        let t = Instant::now();
        apply::apply_script(&script, "raw").expect("raw nft -f");
        raw.push(t.elapsed());
        let _ = apply::delete_table();
        let mut applier = Applier::new();
        let t = Instant::now();
        let rep = applier
            .sync(rules::generate(&node, &base))
            .expect("full sync");
        full.push(t.elapsed());
        assert!(rep.full);
        // One endpoint of one Service replaced.
        let mut changed = base.clone();
        let k = (r * 7919) % n;
        changed[k].endpoints[0].ip = Ipv4Addr::new(10, 42, 255, 1 + r as u8);
        let t = Instant::now();
        let rep = applier
            .sync(rules::generate(&node, &changed))
            .expect("partial sync");
        partial.push(t.elapsed());
        assert!(!rep.full);
        partial_lines = rep.lines;
    }
    let _ = apply::delete_table();
    let (f, p, rw) = (median(full), median(partial), median(raw));
    println!("| figure | median (ms) | script lines |");
    println!("|---|---|---|");
    println!(
        "| generate {n} Services x {m} endpoints (in memory) | {} | |",
        ms(generate)
    );
    println!(
        "| full sync (generate + nft -f, one transaction) | {} | {full_lines} |",
        ms(f)
    );
    println!(
        "| reference: raw `nft -f` of the same full script | {} | {full_lines} |",
        ms(rw)
    );
    println!(
        "| sync after one endpoint change (generate + diff + nft -f) | {} | {partial_lines} |",
        ms(p)
    );
    println!(
        "| ratio partial / full | {:.3} | |",
        p.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "| ratio full / raw nft | {:.3} | |",
        f.as_secs_f64() / rw.as_secs_f64()
    );
    println!();
    println!("rounds: {rounds}");
}
