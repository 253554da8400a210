//! `rke2 dns-autoscaler`: the DNS autoscaler addon (what RKE2 ships as the
//! cluster-proportional-autoscaler in linear mode beside CoreDNS). Every
//! poll period it counts the schedulable nodes and their cores, computes
//! the replicas from the ConfigMap's `linear` parameters and sets the
//! target's `scale` when it differs. Its flags are the upstream tool's.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;

/// The linear mode's parameters (the ConfigMap's `linear` key, JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Linear {
    /// One replica per this many schedulable cores (0: not used).
    #[serde(default)]
    pub cores_per_replica: f64,
    /// One replica per this many schedulable nodes (0: not used).
    #[serde(default)]
    pub nodes_per_replica: f64,
    /// Lower bound (0: none).
    #[serde(default)]
    pub min: u32,
    /// Upper bound (0: none).
    #[serde(default)]
    pub max: u32,
    /// At least 2 replicas once there is more than one node.
    #[serde(default)]
    pub prevent_single_point_failure: bool,
    /// Count unschedulable nodes too.
    #[serde(default)]
    pub include_unschedulable_nodes: bool,
}

/// RKE2's defaults (its chart's `autoscaler` values).
pub const DEFAULT_LINEAR: &str = r#"{"coresPerReplica":256,"nodesPerReplica":16,"preventSinglePointFailure":true,"includeUnschedulableNodes":false}"#;

impl Linear {
    /// Parses the `linear` value; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Linear, String> {
        let l: Linear = serde_json::from_str(text).map_err(|e| format!("linear: {e}"))?;
        if l.cores_per_replica < 0.0 || l.nodes_per_replica < 0.0 {
            return Err("linear: coresPerReplica and nodesPerReplica must not be negative".into());
        }
        if l.cores_per_replica == 0.0 && l.nodes_per_replica == 0.0 {
            return Err("linear: either coresPerReplica or nodesPerReplica must be set".into());
        }
        if l.max != 0 && l.min > l.max {
            return Err(format!("linear: min ({}) is above max ({})", l.min, l.max));
        }
        Ok(l)
    }

    fn replicas_for(&self, count: f64, per_replica: f64) -> u32 {
        if per_replica == 0.0 {
            return 1;
        }
        let mut r = (count / per_replica).ceil();
        if self.max != 0 {
            r = r.min(f64::from(self.max));
        }
        r.max(f64::from(self.min)) as u32
    }

    /// The replicas for `nodes` nodes with `cores` cores between them.
    pub fn replicas(&self, nodes: u32, cores: f64) -> u32 {
        let from_cores = self.replicas_for(cores, self.cores_per_replica);
        let mut from_nodes = self.replicas_for(f64::from(nodes), self.nodes_per_replica);
        if self.prevent_single_point_failure && nodes > 1 && from_nodes < 2 {
            from_nodes = 2;
        }
        from_cores.max(from_nodes)
    }
}

/// Counts the nodes and their allocatable cores, schedulable ones only
/// unless `include_unschedulable`.
pub fn count(nodes: &[Node], include_unschedulable: bool) -> (u32, f64) {
    let mut n = 0;
    let mut cores = 0.0;
    for node in nodes {
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if unschedulable && !include_unschedulable {
            continue;
        }
        n += 1;
        if let Some(q) = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            && let Ok(parsed) = rke2_apimachinery::quantity::parse_quantity(&q.0)
        {
            cores += parsed.as_milli() as f64 / 1000.0;
        }
    }
    (n, cores)
}

/// The flags of `rke2 dns-autoscaler` (the upstream tool's names).
#[derive(clap::Parser, Debug)]
#[command(
    name = "rke2 dns-autoscaler",
    about = "Scale a Deployment with the cluster's schedulable nodes and cores (cluster-proportional-autoscaler, linear mode)"
)]
pub struct Args {
    /// Namespace of the target and the ConfigMap.
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    /// The ConfigMap holding the `linear` parameters (created with the
    /// defaults when missing).
    #[arg(long)]
    configmap: String,
    /// The target, as `deployment/<name>`.
    #[arg(long)]
    target: String,
    /// Seconds between two looks.
    #[arg(long, default_value_t = 10)]
    poll_period_seconds: u64,
    /// The parameters used when the ConfigMap does not exist, as JSON of
    /// `{"linear": {...}}`.
    #[arg(long)]
    default_params: Option<String>,
    /// kubeconfig; without it, the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
}

/// Runs `rke2 dns-autoscaler` with the arguments after the subcommand;
/// the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    use clap::Parser;
    let args = match Args::try_parse_from(
        std::iter::once(std::ffi::OsString::from("rke2 dns-autoscaler"))
            .chain(args.iter().cloned()),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    crate::init_logging(false);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 dns-autoscaler: starting the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        match run(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rke2 dns-autoscaler: {e:#}");
                1
            }
        }
    })
}

async fn run(args: Args) -> Result<()> {
    let Some(target) = args.target.strip_prefix("deployment/") else {
        bail!("--target: want deployment/<name>, got {:?}", args.target);
    };
    let default_linear = match &args.default_params {
        Some(p) => {
            let v: serde_json::Value =
                serde_json::from_str(p).context("--default-params is not JSON")?;
            let linear = v["linear"].to_string();
            Linear::parse(&linear).map_err(|e| anyhow::anyhow!("--default-params: {e}"))?;
            linear
        }
        None => DEFAULT_LINEAR.to_string(),
    };
    let client = crate::addon_client(args.kubeconfig.as_deref()).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
    let deployments: Api<Deployment> = Api::namespaced(client, &args.namespace);
    let period = Duration::from_secs(args.poll_period_seconds.max(1));
    let mut last_error = String::new();
    loop {
        match once(
            &nodes,
            &maps,
            &deployments,
            &args.configmap,
            target,
            &default_linear,
        )
        .await
        {
            Ok(Some((from, to))) => {
                tracing::info!(target, from, to, "scaled");
                last_error.clear();
            }
            Ok(None) => last_error.clear(),
            Err(e) => {
                let e = format!("{e:#}");
                if e != last_error {
                    tracing::warn!(error = %e, "autoscaling");
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// One look: `Some((from, to))` when the target was scaled.
async fn once(
    nodes: &Api<Node>,
    maps: &Api<ConfigMap>,
    deployments: &Api<Deployment>,
    configmap: &str,
    target: &str,
    default_linear: &str,
) -> Result<Option<(i32, i32)>> {
    let text = match maps
        .get_opt(configmap)
        .await
        .context("reading the ConfigMap")?
    {
        Some(cm) => cm
            .data
            .and_then(|d| d.get("linear").cloned())
            .with_context(|| format!("ConfigMap {configmap} has no `linear` key"))?,
        None => {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": configmap},
                "data": {"linear": default_linear},
            }))?;
            maps.create(&PostParams::default(), &cm)
                .await
                .context("creating the ConfigMap with the default parameters")?;
            default_linear.to_string()
        }
    };
    let linear = Linear::parse(&text).map_err(|e| anyhow::anyhow!("ConfigMap {configmap}: {e}"))?;
    let list = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    let (n, cores) = count(&list.items, linear.include_unschedulable_nodes);
    let want = linear.replicas(n, cores) as i32;
    let scale = deployments
        .get_scale(target)
        .await
        .with_context(|| format!("reading the scale of deployment {target}"))?;
    let have = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
    if have == want {
        return Ok(None);
    }
    deployments
        .patch_scale(
            target,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": want}})),
        )
        .await
        .with_context(|| format!("scaling deployment {target}"))?;
    Ok(Some((have, want)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_as_the_upstream_linear_mode() {
        let l = Linear::parse(DEFAULT_LINEAR).unwrap();
        // One node: one replica; two nodes: two (no single point of failure).
        assert_eq!(l.replicas(1, 2.0), 1);
        assert_eq!(l.replicas(2, 4.0), 2);
        assert_eq!(l.replicas(16, 64.0), 2);
        assert_eq!(l.replicas(17, 68.0), 2);
        assert_eq!(l.replicas(33, 132.0), 3);
        // Cores win when they ask for more.
        assert_eq!(l.replicas(3, 1000.0), 4);
        let bounded = Linear::parse(r#"{"nodesPerReplica":1,"min":2,"max":3}"#).unwrap();
        assert_eq!(bounded.replicas(1, 1.0), 2);
        assert_eq!(bounded.replicas(10, 1.0), 3);
        // No nodes at all: the resource that is not used still gives one.
        assert_eq!(
            Linear::parse(r#"{"nodesPerReplica":16}"#)
                .unwrap()
                .replicas(0, 0.0),
            1
        );
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        for (text, needle) in [
            ("{", "linear:"),
            (r#"{"coresPerReplica":-1}"#, "negative"),
            (r#"{"min":1}"#, "either"),
            (r#"{"nodesPerReplica":1,"min":3,"max":2}"#, "above max"),
            (r#"{"nodesPerReplica":1,"colour":1}"#, "colour"),
        ] {
            let e = Linear::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn unschedulable_nodes_are_left_out_unless_asked() {
        let node = |cpu: &str, unschedulable: bool| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n"},
                "spec": {"unschedulable": unschedulable},
                "status": {"allocatable": {"cpu": cpu}},
            }))
            .unwrap()
        };
        let nodes = vec![node("2", false), node("1500m", false), node("4", true)];
        assert_eq!(count(&nodes, false), (2, 3.5));
        assert_eq!(count(&nodes, true), (3, 7.5));
    }
}
