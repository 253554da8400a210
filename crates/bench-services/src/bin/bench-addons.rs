//! Load-free figures of the bundled addons (bench/addons.sh): one server
//! on the network-namespace bed (crates/testbed/src/netbed.rs, real
//! containerd, images and helm seeded as a user's air-gap folder and
//! `scripts/install.sh --data-dir` would), every bundled addon enabled.
//! Measures, per run: process start → node Ready, node Ready → every
//! kube-system pod Running and Ready (helm Jobs Succeeded) with each
//! expected addon present; then, after `--idle` seconds, the memory of
//! the addon pods: the sums of the resident set (VmRSS) and the
//! proportional set (PSS) of the processes in each pod's cgroup, and the cgroup's working set (memory.current
//! minus inactive_file, as kubelet reports it). Prints one
//! tab-separated RESULT line per figure for the script's table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_PAUSE_IMAGE, eventually};

#[derive(Parser, Debug)]
#[command(about = "fresh server -> bundled addons running, and their idle memory")]
struct Args {
    /// The rke2 binary under test.
    #[arg(long)]
    rke2: PathBuf,
    /// Fresh servers started one after another.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Seconds the cluster idles before memory is read.
    #[arg(long, default_value_t = 30)]
    idle: u64,
    /// Pod name prefixes that must be Running (comma separated).
    #[arg(
        long,
        default_value = "rke2-coredns-rke2-coredns,rke2-ingress-nginx,rke2-metrics-server"
    )]
    expect: String,
}

const LONG: Duration = Duration::from_secs(300);

fn log(msg: &str) {
    eprintln!("[bench-addons] {msg}");
}

fn pod_done(p: &Pod) -> bool {
    let Some(st) = &p.status else { return false };
    match st.phase.as_deref() {
        Some("Succeeded") => true,
        Some("Running") => st
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        _ => false,
    }
}

/// Kilobytes of the field `key` (`VmRSS:` in status, `Pss:` in
/// smaps_rollup) of a process (0 when it is gone).
fn proc_kib(pid: &str, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory of a cgroup tree: (sum of VmRSS in KiB, sum of PSS in KiB,
/// working set in bytes). RSS counts the pages of the rke2 binary that
/// every addon process maps once per process; PSS shares them out.
fn cgroup_memory(dir: &Path) -> (u64, u64, u64) {
    let (mut rss, mut pss) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines() {
                rss += proc_kib(pid, "status", "VmRSS:");
                pss += proc_kib(pid, "smaps_rollup", "Pss:");
            }
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    // cgroup v2 names them memory.current / inactive_file, v1 (its memory
    // controller's hierarchy) memory.usage_in_bytes / total_inactive_file.
    let v2 = dir.join("memory.current").exists();
    let (usage_file, inactive_key) = if v2 {
        ("memory.current", "inactive_file ")
    } else {
        ("memory.usage_in_bytes", "total_inactive_file ")
    };
    let current: u64 = read(usage_file).trim().parse().unwrap_or(0);
    let inactive: u64 = read("memory.stat")
        .lines()
        .find_map(|l| l.strip_prefix(inactive_key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (rss, pss, current.saturating_sub(inactive))
}

/// The memory cgroup of a pod (cgroupfs layout, `/kubepods/pod<uid>`), on
/// the unified (v2) hierarchy or v1's memory controller.
fn pod_cgroup(uid: &str) -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"]
        .iter()
        .map(|root| Path::new(root).join("kubepods").join(format!("pod{uid}")))
        .find(|d| d.join("memory.stat").exists())
}

/// The workload a pod belongs to: its DaemonSet, or the Deployment of its
/// ReplicaSet (the ReplicaSet's name without its hash), else its name.
fn workload_of(p: &Pod) -> String {
    let owner = p.metadata.owner_references.as_ref().and_then(|o| o.first());
    match owner {
        Some(o) if o.kind == "ReplicaSet" => o
            .name
            .rsplit_once('-')
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| o.name.clone()),
        Some(o) => o.name.clone(),
        None => p.metadata.name.clone().unwrap_or_default(),
    }
}

async fn one_run(args: &Args, run: u32, expect: &[&str]) -> Result<()> {
    let mut bed = NetBed::new().context("the bed needs root and iproute2 (scripts/install.sh)")?;
    let s1 = bed.add_host("s1")?;
    let cfg = format!("token: bench-secret\npause-image: {TEST_PAUSE_IMAGE}\n");
    let mut ps = NodeProc::new(&bed, &args.rke2, &s1, "server", &cfg, &[])?;
    rke2_testbed::seed_images(&ps.data_dir())?;
    rke2_testbed::seed_helm(&ps.data_dir())?;
    let started = Instant::now();
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
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "node Ready", || async {
        let n = nodes.get_opt("s1").await.ok()??;
        n.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await
    .with_context(|| ps.log())?;
    let ready_at = started.elapsed();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let all = eventually(LONG, "every kube-system pod Running", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        let present = expect
            .iter()
            .all(|e| list.iter().any(|p| name(p).starts_with(e) && pod_done(p)));
        (present && list.iter().all(pod_done)).then_some(list)
    })
    .await
    .with_context(|| ps.log())?;
    let running_at = started.elapsed();
    log(&format!(
        "run {run}: Ready after {:.2} s, all {} kube-system pods done {:.2} s later",
        ready_at.as_secs_f64(),
        all.len(),
        (running_at - ready_at).as_secs_f64()
    ));
    println!(
        "RESULT\tready\t{run}\t{:.3}\nRESULT\tready-to-addons\t{run}\t{:.3}",
        ready_at.as_secs_f64(),
        (running_at - ready_at).as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let list = pods.list(&ListParams::default()).await?.items;
    let mut per_addon: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for p in &list {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
            continue;
        }
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let Some(dir) = pod_cgroup(&uid) else {
            bail!(
                "no memory cgroup kubepods/pod{uid} for pod {:?}",
                p.metadata.name
            );
        };
        let (rss, pss, ws) = cgroup_memory(&dir);
        let e = per_addon.entry(workload_of(p)).or_default();
        e.0 += rss;
        e.1 += pss;
        e.2 += ws;
    }
    let (mut rss_total, mut pss_total, mut ws_total) = (0, 0, 0);
    for (name, (rss, pss, ws)) in &per_addon {
        println!(
            "RESULT\tpod\t{run}\t{name}\t{:.1}\t{:.1}\t{:.1}",
            *rss as f64 / 1024.0,
            *pss as f64 / 1024.0,
            *ws as f64 / 1048576.0
        );
        rss_total += rss;
        pss_total += pss;
        ws_total += ws;
    }
    println!(
        "RESULT\tmemory\t{run}\t{:.1}\t{:.1}\t{:.1}",
        rss_total as f64 / 1024.0,
        pss_total as f64 / 1024.0,
        ws_total as f64 / 1048576.0
    );
    drop(ps);
    drop(bed);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.rke2.is_file() {
        bail!("{}: no such binary", args.rke2.display());
    }
    let expect: Vec<&str> = args.expect.split(',').filter(|s| !s.is_empty()).collect();
    for run in 1..=args.runs {
        one_run(&args, run, &expect).await?;
    }
    Ok(())
}
