//! Pod networking of a node: the CNI config containerd's CRI plugin runs
//! for every pod sandbox, and the routes that carry pod traffic to the
//! other nodes' pod CIDRs.
//!
//! The pod network is deliberately plain: each node bridges its pods on
//! its own podCIDR (assigned by the controllers' node IPAM loop) and every
//! node routes each other node's podCIDR via that node's InternalIP. No
//! encapsulation and no masquerading between pods, so pods see each
//! other's real addresses; it needs the nodes to share one L2 segment (or
//! a router that knows the pod CIDRs), as the multi-host test bed has.
//!
//! Routes are written with the `ip` command (iproute2) and marked with a
//! routing protocol number of their own ([`ROUTE_PROTO`]): the kernel's
//! table is the record of what this module added, so a restarted node
//! still finds and removes its stale routes, and never touches anyone
//! else's.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The `name` of the CNI network.
pub const CONFLIST_NAME: &str = "rke2-pods";
/// The file the CNI config is written to in the CNI conf dir (containerd
/// loads the alphabetically first config there).
pub const CONFLIST_FILE: &str = "10-rke2.conflist";
/// The CNI spec version of the config: Debian's containernetworking-plugins
/// 1.1.x and containerd 1.6's libcni both speak 1.0.0.
pub const CNI_VERSION: &str = "1.0.0";
/// The routing protocol number the pod routes carry, so that
/// `ip route show proto 250` lists exactly the routes this module owns.
/// Numbers above 245 are unassigned in iproute2's `rt_protos`.
pub const ROUTE_PROTO: u8 = 250;

/// How long node changes must settle before routes are synced: a burst of
/// watch events (the initial list, a node re-registering) is one sync.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often routes are re-checked without any node change, repairing
/// routes someone else removed.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed sync is retried.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Errors of the pod network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A pod CIDR that is not an IP network.
    #[error("invalid pod CIDR {cidr:?}: {reason}")]
    InvalidPodCidr {
        /// The value given.
        cidr: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command could not be started.
    #[error("running `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A command's output could not be understood.
    #[error("unexpected output of `{command}`: {reason}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// Parses a node's pod CIDR, ignoring host bits (`10.42.1.7/24` is
/// `10.42.1.0/24`, as the API would never store but a user might pass).
fn parse_cidr(pod_cidr: &str) -> Result<IpNet, NetworkError> {
    pod_cidr
        .trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| NetworkError::InvalidPodCidr {
            cidr: pod_cidr.to_string(),
            reason: e.to_string(),
        })
}

/// The CNI network config (a conflist) for pods on this node: a `bridge`
/// named `bridge` acting as the pods' gateway, `host-local` IPAM handing
/// out `pod_cidr` with its first address as the gateway and its state in
/// `ipam_data_dir`, and `portmap` for hostPorts.
///
/// `ipMasq` is off because pod-to-pod traffic between nodes must keep the
/// pods' source addresses; the IPAM state is kept per node (never the
/// machine-wide `/var/lib/cni`) because test beds run several nodes on
/// one machine. A `pod_cidr` that does not parse yields a config without
/// an explicit gateway (host-local then picks the first address itself);
/// [`write_cni_config`] refuses such a CIDR.
pub fn cni_conflist(pod_cidr: &str, bridge: &str, ipam_data_dir: &Path, mtu: Option<u32>) -> Value {
    let mut range = json!({"subnet": pod_cidr.trim()});
    if let Ok(net) = parse_cidr(pod_cidr) {
        range["subnet"] = json!(net.to_string());
        if let Some(gw) = net.hosts().next() {
            range["gateway"] = json!(gw.to_string());
        }
    }
    let default_route = match pod_cidr.parse::<IpNet>() {
        Ok(IpNet::V6(_)) => "::/0",
        _ => "0.0.0.0/0",
    };
    let mut bridge_conf = json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[range]],
            "routes": [{"dst": default_route}],
            "dataDir": ipam_data_dir.to_string_lossy(),
        },
    });
    if let Some(mtu) = mtu {
        bridge_conf["mtu"] = json!(mtu);
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": CONFLIST_NAME,
        "plugins": [
            bridge_conf,
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Writes [`cni_conflist`] as `conf_dir/10-rke2.conflist` (creating the
/// directory), atomically: containerd watches the directory and must never
/// load a half-written file. Returns whether the file changed; an
/// unchanged config is not rewritten.
pub fn write_cni_config(
    conf_dir: &Path,
    pod_cidr: &str,
    bridge: &str,
    ipam_data_dir: &Path,
    mtu: Option<u32>,
) -> Result<bool, NetworkError> {
    parse_cidr(pod_cidr)?;
    let conf = cni_conflist(pod_cidr, bridge, ipam_data_dir, mtu);
    let mut text = serde_json::to_string_pretty(&conf).unwrap_or_default();
    text.push('\n');
    let path = conf_dir.join(CONFLIST_FILE);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| NetworkError::Io {
            action,
            path,
            source,
        }
    };
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(conf_dir).map_err(io("creating", conf_dir))?;
    // The temp name has no .conf/.conflist/.json extension, so containerd
    // ignores it even if it looks while it is being written.
    let tmp = conf_dir.join(format!(".{CONFLIST_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
    Ok(true)
}

/// One route to another node's pods: `cidr via via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The other node's pod CIDR.
    pub cidr: Ipv4Net,
    /// The other node's InternalIP.
    pub via: Ipv4Addr,
}

/// What a route sync changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to add or to point at a new gateway (`ip route replace`).
    pub replace: Vec<Route>,
    /// Own routes to delete: their node is gone or lost its pod CIDR.
    pub remove: Vec<Ipv4Net>,
}

impl RoutePlan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.remove.is_empty()
    }
}

/// The first IPv4 InternalIP of `node`.
fn internal_ipv4(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

/// The IPv4 pod CIDR of `node` (from `spec.podCIDRs`, else `spec.podCIDR`).
fn pod_cidr_v4(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.as_ref())
        .find_map(|c| match c.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => Some(n.trunc()),
            _ => None,
        })
}

/// The routes this node should have: one per *other* node that has an
/// IPv4 pod CIDR and an IPv4 InternalIP. Nothing when this node's own
/// address is on loopback, and no route via another node's loopback
/// address: those are several nodes sharing one network namespace (the
/// single-machine test bed), where such routes would capture traffic that
/// belongs to the local bridge.
pub fn desired_routes(own_node: &str, nodes: &[Node]) -> Vec<Route> {
    let own = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(own_node));
    let own_ip = own.and_then(internal_ipv4);
    if let Some(ip) = own_ip.filter(|ip| ip.is_loopback()) {
        debug!(node = own_node, ip = %ip, "own node address is on loopback; no pod routes");
        return Vec::new();
    }
    let own_cidr = own.and_then(pod_cidr_v4);
    let mut by_cidr: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    let mut others: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(own_node))
        .collect();
    // Deterministic choice if two nodes claim one CIDR (IPAM never does).
    others.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for node in others {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let (Some(cidr), Some(via)) = (pod_cidr_v4(node), internal_ipv4(node)) else {
            continue;
        };
        if via.is_loopback() || via.is_unspecified() {
            debug!(node = name, ip = %via, "node address is not routable from here; no pod route to it");
            continue;
        }
        if own_cidr == Some(cidr) {
            warn!(node = name, pod_cidr = %cidr, "node claims this node's own pod CIDR; no route to it");
            continue;
        }
        if let Some(first) = by_cidr.get(&cidr) {
            warn!(node = name, pod_cidr = %cidr, kept_via = %first, "pod CIDR claimed by two nodes; keeping the first");
            continue;
        }
        by_cidr.insert(cidr, via);
    }
    by_cidr
        .into_iter()
        .map(|(cidr, via)| Route { cidr, via })
        .collect()
}

/// What turns the `current` own routes into the `desired` ones.
pub fn plan_routes(desired: &[Route], current: &[Route]) -> RoutePlan {
    let mut have: BTreeMap<Ipv4Net, Vec<Ipv4Addr>> = BTreeMap::new();
    for r in current {
        have.entry(r.cidr).or_default().push(r.via);
    }
    let mut plan = RoutePlan::default();
    for r in desired {
        // Anything but exactly one route via the wanted gateway (missing,
        // another gateway, a leftover multipath) is replaced.
        if have.get(&r.cidr).map(Vec::as_slice) != Some(&[r.via][..]) {
            plan.replace.push(*r);
        }
    }
    for cidr in have.keys() {
        if !desired.iter().any(|r| r.cidr == *cidr) {
            plan.remove.push(*cidr);
        }
    }
    plan
}

/// Runs `ip args...`, returning its stdout.
async fn ip(args: &[String]) -> Result<String, NetworkError> {
    let command = format!("ip {}", args.join(" "));
    let out = tokio::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a program (synchronously; iptables calls are short), returning
/// its stdout.
fn run(program: &str, args: &[String]) -> Result<String, NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The comment that marks this node's egress rule, so it can be found
/// and removed again (`rke2 killall`).
pub const EGRESS_COMMENT: &str = "rke2 pod egress";

/// The iptables rule (without -A/-C/-D) that masquerades traffic from
/// this node's pods to anything outside the cluster's pod network: pods
/// reach other pods with their own IPs, and the world with the node's.
pub fn egress_rule(pod_cidr: &str, cluster_cidr: &str) -> Vec<String> {
    args(&[
        "POSTROUTING",
        "-s",
        pod_cidr,
        "!",
        "-d",
        cluster_cidr,
        "-m",
        "comment",
        "--comment",
        EGRESS_COMMENT,
        "-j",
        "MASQUERADE",
    ])
}

/// Adds [`egress_rule`] to the nat table unless it is there.
pub fn ensure_egress_masquerade(pod_cidr: &str, cluster_cidr: &str) -> Result<bool, NetworkError> {
    parse_cidr(pod_cidr)?;
    parse_cidr(cluster_cidr)?;
    let rule = egress_rule(pod_cidr, cluster_cidr);
    let with = |op: &str| {
        let mut a = args(&["-w", "5", "-t", "nat", op]);
        a.extend(rule.iter().cloned());
        a
    };
    if run("iptables", &with("-C")).is_ok() {
        return Ok(false);
    }
    run("iptables", &with("-A"))?;
    Ok(true)
}

/// Removes what the pod network left on the host once its pods are gone
/// (`rke2 killall`, uninstall): the routes to other nodes' pod CIDRs
/// (protocol [`ROUTE_PROTO`]) and the pods' bridge `bridge`. Returns how
/// many routes went and whether the bridge existed.
pub fn remove_pod_network(bridge: &str) -> Result<(usize, bool), NetworkError> {
    let proto = ROUTE_PROTO.to_string();
    let listing = run("ip", &args(&["-4", "route", "show", "proto", &proto]))?;
    let routes = listing.lines().filter(|l| !l.trim().is_empty()).count();
    if routes > 0 {
        run("ip", &args(&["-4", "route", "flush", "proto", &proto]))?;
    }
    let exists = std::path::Path::new("/sys/class/net").join(bridge).exists();
    if exists {
        run("ip", &args(&["link", "delete", bridge]))?;
    }
    Ok((routes, exists))
}

/// Removes every rule carrying [`EGRESS_COMMENT`] from the nat table;
/// returns how many.
pub fn remove_egress_masquerade() -> Result<usize, NetworkError> {
    let listing = run(
        "iptables",
        &args(&["-w", "5", "-t", "nat", "-S", "POSTROUTING"]),
    )?;
    let mut removed = 0;
    for line in listing.lines() {
        if !line.starts_with("-A POSTROUTING") || !line.contains(EGRESS_COMMENT) {
            continue;
        }
        // `-S` prints the rule as it was added; quoted comment aside, its
        // words are the arguments of the matching -D.
        let mut words: Vec<String> = Vec::new();
        let mut rest = line.trim_start_matches("-A ");
        while !rest.is_empty() {
            rest = rest.trim_start();
            if let Some(q) = rest.strip_prefix('"') {
                let end = q.find('"').unwrap_or(q.len());
                words.push(q[..end].to_string());
                rest = q.get(end + 1..).unwrap_or("");
            } else {
                let end = rest.find(' ').unwrap_or(rest.len());
                words.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
        let mut a = args(&["-w", "5", "-t", "nat", "-D"]);
        a.extend(words);
        run("iptables", &a)?;
        removed += 1;
    }
    Ok(removed)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Parses `ip -j -4 route show` output into routes; routes without a
/// single IPv4 gateway (not ones this module writes) come back with the
/// unspecified address so a plan replaces or removes them.
fn parse_routes(command: &str, json_text: &str) -> Result<Vec<Route>, NetworkError> {
    let bad = |reason: String| NetworkError::Output {
        command: command.to_string(),
        reason,
    };
    if json_text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Value> =
        serde_json::from_str(json_text).map_err(|e| bad(format!("not a JSON list: {e}")))?;
    let mut routes = Vec::new();
    for e in entries {
        let dst = e["dst"].as_str().unwrap_or("");
        let cidr = match dst {
            "default" => Ipv4Net::default(),
            d if d.contains('/') => d
                .parse::<Ipv4Net>()
                .map_err(|err| bad(format!("route destination {d:?}: {err}")))?,
            d => Ipv4Net::new(
                d.parse::<Ipv4Addr>()
                    .map_err(|err| bad(format!("route destination {d:?}: {err}")))?,
                32,
            )
            .map_err(|err| bad(format!("route destination {d:?}: {err}")))?,
        };
        let via = e["gateway"]
            .as_str()
            .and_then(|g| g.parse::<Ipv4Addr>().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        routes.push(Route { cidr, via });
    }
    Ok(routes)
}

/// The routes this module owns in the current network namespace (main
/// table, protocol [`ROUTE_PROTO`]).
pub async fn current_routes() -> Result<Vec<Route>, NetworkError> {
    let a = args(&[
        "-j",
        "-4",
        "route",
        "show",
        "proto",
        &ROUTE_PROTO.to_string(),
    ]);
    let out = ip(&a).await?;
    parse_routes(&format!("ip {}", a.join(" ")), &out)
}

/// Makes the current network namespace route every other node's pod CIDR
/// via its InternalIP ([`desired_routes`]) and removes the routes it added
/// earlier for nodes that are gone or changed. Every change is attempted;
/// the first failure is returned. Returns what was changed.
pub async fn sync_routes(own_node: &str, nodes: &[Node]) -> Result<RoutePlan, NetworkError> {
    let desired = desired_routes(own_node, nodes);
    if desired.is_empty() && own_is_loopback(own_node, nodes) {
        return Ok(RoutePlan::default());
    }
    let current = current_routes().await?;
    let plan = plan_routes(&desired, &current);
    let proto = ROUTE_PROTO.to_string();
    let mut first_err = None;
    for cidr in &plan.remove {
        let c = cidr.to_string();
        match ip(&args(&["-4", "route", "del", &c, "proto", &proto])).await {
            Ok(_) => info!(pod_cidr = %c, "removed pod route of a node that is gone or changed"),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    for r in &plan.replace {
        let (c, v) = (r.cidr.to_string(), r.via.to_string());
        match ip(&args(&[
            "-4", "route", "replace", &c, "via", &v, "proto", &proto,
        ]))
        .await
        {
            Ok(_) => info!(pod_cidr = %c, via = %v, "pod route to node set"),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(plan),
    }
}

fn own_is_loopback(own_node: &str, nodes: &[Node]) -> bool {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(own_node))
        .and_then(internal_ipv4)
        .is_some_and(|ip| ip.is_loopback())
}

/// Keeps this node's pod routes in line with the cluster's Nodes until
/// `stop`: watches all Nodes and runs [`sync_routes`] when the routes they
/// call for change (debounced), every 30 s regardless, and again 5 s after
/// a failure.
pub async fn run_routes(client: kube::Client, own_node: String, stop: CancellationToken) {
    let api: Api<Node> = Api::all(client);
    // resourceVersion=0: every node lists every Node from the apiserver's
    // cache, not from etcd, as a kubelet's informer does.
    let mut stream = watcher(api, watcher::Config::default().any_semantic()).boxed();
    // Only each Node's route facts (see `route_facts`): deep copies of
    // whole Nodes per event cost O(nodes) per heartbeat at scale.
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Node>> = None;
    let mut synced_list = false;
    // What the last successful sync made true, to skip the `ip` calls on
    // the frequent node status updates that change no route.
    let mut applied: Option<Vec<Route>> = None;
    let mut due: Option<tokio::time::Instant> = None;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait_due = async {
            match due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = resync.tick() => {
                if synced_list {
                    applied = None;
                    due.get_or_insert_with(tokio::time::Instant::now);
                }
                continue;
            }
            _ = wait_due => {}
            ev = stream.next() => {
                match ev {
                    Some(Ok(ev)) => {
                        let mut changed = apply_event(&mut nodes, &mut relist, &mut synced_list, ev);
                        while let Some(Some(Ok(ev))) = stream.next().now_or_never() {
                            changed |= apply_event(&mut nodes, &mut relist, &mut synced_list, ev);
                        }
                        // Most node events are status heartbeats that
                        // change no route: only a change of the route facts
                        // costs a recomputation over every node.
                        if changed && synced_list {
                            let list: Vec<Node> = nodes.values().cloned().collect();
                            if applied.as_deref() != Some(&desired_routes(&own_node, &list)[..]) {
                                due = Some(tokio::time::Instant::now() + DEBOUNCE);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "node watch for pod routes failed; the watcher retries");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    None => return,
                }
                continue;
            }
        }
        due = None;
        let list: Vec<Node> = nodes.values().cloned().collect();
        let sync = sync_routes(&own_node, &list);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = sync => r,
        };
        match result {
            Ok(_) => applied = Some(desired_routes(&own_node, &list)),
            Err(e) => {
                warn!(error = %e, "syncing pod routes failed; retrying");
                applied = None;
                due = Some(tokio::time::Instant::now() + RETRY_AFTER);
            }
        }
    }
}

/// What of a Node the pod routes depend on: its name, pod CIDRs and
/// addresses.
fn route_facts(n: Node) -> Node {
    Node {
        metadata: kube::api::ObjectMeta {
            name: n.metadata.name,
            ..Default::default()
        },
        spec: n.spec.map(|s| k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..Default::default()
        }),
        status: n.status.map(|s| k8s_openapi::api::core::v1::NodeStatus {
            addresses: s.addresses,
            ..Default::default()
        }),
    }
}

/// Follows one watch event; whether the route facts of the nodes changed
/// (a completed re-list always counts as a change).
fn apply_event(
    nodes: &mut BTreeMap<String, Node>,
    relist: &mut Option<BTreeMap<String, Node>>,
    synced: &mut bool,
    ev: watcher::Event<Node>,
) -> bool {
    match ev {
        watcher::Event::Init => {
            *relist = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(n) => {
            if let (Some(list), Some(name)) = (relist.as_mut(), n.metadata.name.clone()) {
                list.insert(name, route_facts(n));
            }
            false
        }
        watcher::Event::InitDone => {
            if let Some(list) = relist.take() {
                *nodes = list;
            }
            *synced = true;
            true
        }
        watcher::Event::Apply(n) => {
            let Some(name) = n.metadata.name.clone() else {
                return false;
            };
            let facts = route_facts(n);
            if nodes.get(&name) == Some(&facts) {
                return false;
            }
            nodes.insert(name, facts);
            true
        }
        watcher::Event::Delete(n) => match n.metadata.name.as_ref() {
            Some(name) => nodes.remove(name).is_some(),
            None => false,
        },
    }
}

/// Waits until Node `node_name` has a `spec.podCIDR` and returns it; `None`
/// when `stop` fires first. The CNI config cannot be written before the
/// controllers' node IPAM loop has assigned the CIDR.
pub async fn own_pod_cidr(
    client: kube::Client,
    node_name: &str,
    stop: CancellationToken,
) -> Option<String> {
    let api: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut stream = watcher(api, cfg).boxed();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return None,
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => {
                let cidr = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty());
                if cidr.is_some() {
                    return cidr;
                }
                debug!(node = node_name, "node has no pod CIDR yet; waiting");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                warn!(node = node_name, error = %e, "watching own node for its pod CIDR failed; the watcher retries");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            None => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: Option<&str>, cidr: Option<&str>) -> Node {
        let addresses: Vec<Value> = ip
            .map(|ip| {
                vec![
                    json!({"type": "Hostname", "address": name}),
                    json!({"type": "InternalIP", "address": ip}),
                ]
            })
            .unwrap_or_default();
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": cidr.map(|c| vec![c])},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    fn route(cidr: &str, via: &str) -> Route {
        Route {
            cidr: cidr.parse().unwrap(),
            via: via.parse().unwrap(),
        }
    }

    #[test]
    fn only_route_facts_count_as_node_changes() {
        let (mut nodes, mut relist, mut synced) = (BTreeMap::new(), None, false);
        let mut apply = |ev| apply_event(&mut nodes, &mut relist, &mut synced, ev);
        assert!(!apply(watcher::Event::Init));
        assert!(!apply(watcher::Event::InitApply(node(
            "a",
            Some("10.0.0.1"),
            Some("10.42.0.0/24")
        ))));
        assert!(apply(watcher::Event::InitDone));
        // A heartbeat: new conditions, labels and a resourceVersion, the
        // same CIDR and addresses.
        let mut beat = node("a", Some("10.0.0.1"), Some("10.42.0.0/24"));
        beat.metadata.resource_version = Some("99".into());
        beat.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        beat.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({"type": "Ready", "status": "True"})).unwrap(),
        ]);
        assert!(!apply(watcher::Event::Apply(beat)));
        assert!(apply(watcher::Event::Apply(node(
            "b",
            Some("10.0.0.2"),
            None
        ))));
        assert!(apply(watcher::Event::Apply(node(
            "b",
            Some("10.0.0.2"),
            Some("10.42.1.0/24")
        ))));
        assert!(apply(watcher::Event::Delete(node("b", None, None))));
        assert!(!apply(watcher::Event::Delete(node("zz", None, None))));
        // What is kept is just the facts, and routes come out of them.
        assert!(nodes["a"].status.as_ref().unwrap().conditions.is_none());
        let list: Vec<Node> = nodes.values().cloned().collect();
        assert!(desired_routes("b", &list) == [route("10.42.0.0/24", "10.0.0.1")]);
    }

    #[test]
    fn conflist_has_bridge_host_local_and_portmap() {
        let conf = cni_conflist(
            "10.42.3.0/24",
            "rke2br0",
            Path::new("/tmp/n1/cni-ipam"),
            Some(1450),
        );
        // Round-trip through text: what containerd reads.
        let conf: Value = serde_json::from_str(&conf.to_string()).unwrap();
        assert_eq!(conf["cniVersion"], CNI_VERSION);
        assert_eq!(conf["name"], "rke2-pods");
        let plugins = conf["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2, "{conf:#}");
        let b = &plugins[0];
        assert_eq!(b["type"], "bridge");
        assert_eq!(b["bridge"], "rke2br0");
        assert_eq!(b["isGateway"], true);
        assert_eq!(b["ipMasq"], false);
        assert_eq!(b["hairpinMode"], true);
        assert_eq!(b["mtu"], 1450);
        let ipam = &b["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.42.3.0/24", "gateway": "10.42.3.1"}]])
        );
        assert_eq!(ipam["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(ipam["dataDir"], "/tmp/n1/cni-ipam");
        assert_eq!(plugins[1]["type"], "portmap");
        assert_eq!(plugins[1]["capabilities"], json!({"portMappings": true}));
    }

    #[test]
    fn conflist_without_mtu_or_with_bad_cidr_still_is_a_conflist() {
        let conf = cni_conflist("10.42.3.0/24", "cni0", Path::new("/x"), None);
        assert!(conf["plugins"][0].get("mtu").is_none());
        let bad = cni_conflist("not a cidr", "cni0", Path::new("/x"), None);
        assert_eq!(
            bad["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "not a cidr"
        );
        assert!(
            bad["plugins"][0]["ipam"]["ranges"][0][0]
                .get("gateway")
                .is_none()
        );
    }

    #[test]
    fn write_cni_config_is_atomic_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        let ipam = dir.path().join("ipam");
        assert!(write_cni_config(&conf_dir, "10.42.0.0/24", "cni0", &ipam, None).unwrap());
        assert!(!write_cni_config(&conf_dir, "10.42.0.0/24", "cni0", &ipam, None).unwrap());
        assert!(write_cni_config(&conf_dir, "10.42.1.0/24", "cni0", &ipam, None).unwrap());
        let names: Vec<String> = std::fs::read_dir(&conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [CONFLIST_FILE], "no temp file left behind");
        let text = std::fs::read_to_string(conf_dir.join(CONFLIST_FILE)).unwrap();
        let conf: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.1.0/24"
        );
        let err = write_cni_config(&conf_dir, "10.42.0.0/33", "cni0", &ipam, None).unwrap_err();
        assert!(err.to_string().contains("10.42.0.0/33"), "{err}");
    }

    #[test]
    fn desired_routes_cover_other_nodes_with_cidr_and_address() {
        let nodes = [
            node("a", Some("10.0.0.1"), Some("10.42.0.0/24")),
            node("b", Some("10.0.0.2"), Some("10.42.1.0/24")),
            node("c", Some("10.0.0.3"), None),
            node("d", None, Some("10.42.3.0/24")),
            node("e", Some("127.0.0.5"), Some("10.42.4.0/24")),
            node("f", Some("fd00::5"), Some("10.42.5.0/24")),
            node("g", Some("10.0.0.7"), Some("fd00:42::/64")),
        ];
        assert_eq!(
            desired_routes("a", &nodes),
            [route("10.42.1.0/24", "10.0.0.2")]
        );
    }

    #[test]
    fn no_routes_when_own_address_is_loopback() {
        let nodes = [
            node("a", Some("127.0.0.2"), Some("10.42.0.0/24")),
            node("b", Some("10.0.0.2"), Some("10.42.1.0/24")),
        ];
        assert!(desired_routes("a", &nodes).is_empty());
        assert!(own_is_loopback("a", &nodes));
    }

    #[test]
    fn a_cidr_claimed_twice_gets_one_route() {
        let nodes = [
            node("a", Some("10.0.0.1"), Some("10.42.0.0/24")),
            node("c", Some("10.0.0.3"), Some("10.42.1.0/24")),
            node("b", Some("10.0.0.2"), Some("10.42.1.0/24")),
            node("x", Some("10.0.0.9"), Some("10.42.0.0/24")),
        ];
        assert_eq!(
            desired_routes("a", &nodes),
            [route("10.42.1.0/24", "10.0.0.2")]
        );
    }

    #[test]
    fn plan_adds_changes_and_removes() {
        let desired = [
            route("10.42.1.0/24", "10.0.0.2"),
            route("10.42.2.0/24", "10.0.0.9"),
            route("10.42.4.0/24", "10.0.0.4"),
        ];
        let current = [
            route("10.42.1.0/24", "10.0.0.2"),
            route("10.42.2.0/24", "10.0.0.3"),
            route("10.42.3.0/24", "10.0.0.3"),
        ];
        let plan = plan_routes(&desired, &current);
        assert_eq!(
            plan.replace,
            [
                route("10.42.2.0/24", "10.0.0.9"),
                route("10.42.4.0/24", "10.0.0.4")
            ]
        );
        assert_eq!(plan.remove, ["10.42.3.0/24".parse::<Ipv4Net>().unwrap()]);
        assert!(plan_routes(&desired, &desired).is_empty());
        assert_eq!(plan_routes(&[], &current).remove.len(), 3);
    }

    #[test]
    fn parse_ip_json_routes() {
        let text = r#"[{"dst":"10.42.1.0/24","gateway":"10.99.0.2","dev":"v0","flags":[]},
                       {"dst":"10.42.9.9","dev":"v0","flags":[]}]"#;
        assert_eq!(
            parse_routes("ip", text).unwrap(),
            [
                route("10.42.1.0/24", "10.99.0.2"),
                route("10.42.9.9/32", "0.0.0.0")
            ]
        );
        assert!(parse_routes("ip", "").unwrap().is_empty());
        let err = parse_routes("ip -j route", "{oops").unwrap_err();
        assert!(err.to_string().contains("ip -j route"), "{err}");
        assert!(parse_routes("ip", r#"[{"dst":"nope"}]"#).is_err());
    }

    /// A network namespace of its own, deleted on drop.
    struct NetNs(String);

    impl NetNs {
        fn new() -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let name = format!("rke2-test-{}-{nanos:x}", std::process::id());
            let ns = NetNs(name);
            ns.host_ip(&["netns", "add", &ns.0]);
            ns
        }

        fn host_ip(&self, a: &[&str]) -> String {
            let out = std::process::Command::new("ip").args(a).output().unwrap();
            assert!(
                out.status.success(),
                "ip {a:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        fn ip(&self, a: &[&str]) -> String {
            let mut full = vec!["-n", &self.0];
            full.extend_from_slice(a);
            self.host_ip(&full)
        }

        /// Runs `f` on a thread that entered this namespace; `ip` children
        /// inherit the thread's namespace.
        fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/run/netns/{}", self.0);
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                let file = std::fs::File::open(&path).unwrap();
                // SAFETY: setns on a valid namespace fd; it changes only
                // this thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        }
    }

    impl Drop for NetNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    fn sync_in(ns: &NetNs, own: &str, nodes: Vec<Node>) -> Result<RoutePlan, NetworkError> {
        let own = own.to_string();
        ns.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(sync_routes(&own, &nodes))
        })
    }

    fn routes_in(ns: &NetNs, proto: Option<&str>) -> Vec<Route> {
        let mut a = vec!["-j", "-4", "route", "show"];
        if let Some(p) = proto {
            a.extend(["proto", p]);
        }
        let mut r = parse_routes("ip", &ns.ip(&a)).unwrap();
        r.sort();
        r
    }

    #[test]
    fn egress_masquerade_is_added_once_and_removed_in_a_network_namespace() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test needs root: it creates a network namespace and changes its nat table"
        );
        let ns = NetNs::new();
        let (added, again, listing, removed, after) = ns.run(|| {
            let added = ensure_egress_masquerade("10.42.3.0/24", "10.42.0.0/16").unwrap();
            let again = ensure_egress_masquerade("10.42.3.0/24", "10.42.0.0/16").unwrap();
            let listing = run("iptables", &args(&["-t", "nat", "-S", "POSTROUTING"])).unwrap();
            let removed = remove_egress_masquerade().unwrap();
            let after = run("iptables", &args(&["-t", "nat", "-S", "POSTROUTING"])).unwrap();
            (added, again, listing, removed, after)
        });
        assert!(added && !again, "added {added}, again {again}");
        assert_eq!(listing.matches(EGRESS_COMMENT).count(), 1, "{listing}");
        assert!(
            listing.contains("-s 10.42.3.0/24 ! -d 10.42.0.0/16"),
            "{listing}"
        );
        assert_eq!(removed, 1);
        assert!(!after.contains(EGRESS_COMMENT), "{after}");
        assert!(ensure_egress_masquerade("nope", "10.42.0.0/16").is_err());
    }

    #[test]
    fn sync_routes_in_a_network_namespace() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test needs root: it creates a network namespace (`ip netns add`) and changes routes in it"
        );
        let ns = NetNs::new();
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "v0"]);
        ns.ip(&["link", "set", "v0", "up"]);
        ns.ip(&["link", "set", "v1", "up"]);
        // Someone else's route: must survive every sync.
        ns.ip(&["route", "add", "10.50.0.0/24", "via", "10.99.0.9"]);
        let a = || node("a", Some("10.99.0.1"), Some("10.42.0.0/24"));

        let plan = sync_in(
            &ns,
            "a",
            vec![
                a(),
                node("b", Some("10.99.0.2"), Some("10.42.1.0/24")),
                node("c", Some("10.99.0.3"), Some("10.42.2.0/24")),
                node("d", Some("127.0.0.4"), Some("10.42.3.0/24")),
            ],
        )
        .unwrap();
        assert_eq!(plan.replace.len(), 2, "{plan:?}");
        let p = ROUTE_PROTO.to_string();
        assert_eq!(
            routes_in(&ns, Some(&p)),
            [
                route("10.42.1.0/24", "10.99.0.2"),
                route("10.42.2.0/24", "10.99.0.3")
            ]
        );

        // b moved to another address, c is gone.
        let nodes = vec![a(), node("b", Some("10.99.0.4"), Some("10.42.1.0/24"))];
        let plan = sync_in(&ns, "a", nodes.clone()).unwrap();
        assert_eq!(plan.replace, [route("10.42.1.0/24", "10.99.0.4")]);
        assert_eq!(plan.remove, ["10.42.2.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(
            routes_in(&ns, Some(&p)),
            [route("10.42.1.0/24", "10.99.0.4")]
        );
        assert!(sync_in(&ns, "a", nodes).unwrap().is_empty());
        assert!(
            routes_in(&ns, None).contains(&route("10.50.0.0/24", "10.99.0.9")),
            "a foreign route was touched"
        );

        // A gateway that is not on any link: the error names the command
        // and carries ip's complaint.
        let err = sync_in(
            &ns,
            "a",
            vec![a(), node("z", Some("192.0.2.77"), Some("10.42.9.0/24"))],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ip -4 route replace 10.42.9.0/24 via 192.0.2.77")
                && text.contains("failed"),
            "{text}"
        );
        // The failure did not stop the removal of b's route.
        assert!(routes_in(&ns, Some(&p)).is_empty());
    }
}
