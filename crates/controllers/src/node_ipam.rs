//! Node IPAM: every Node gets one pod CIDR block out of `cluster-cidr`, as
//! kube-controller-manager's range allocator does (`spec.podCIDR` and
//! `spec.podCIDRs`, /24 blocks for IPv4, /64 for IPv6).
//!
//! ## The Node objects are the record
//!
//! Nothing is stored besides the Nodes themselves: the loop watches every
//! Node and counts each CIDR a node holds as used (also ones outside the
//! usual block shape, e.g. set by hand), so a new leader, or the same one
//! after a restart, rebuilds the allocation from the initial list before
//! it hands anything out. A CIDR is free again once its Node is gone.
//!
//! Every write is a merge patch carrying the `resourceVersion` the decision
//! was made from, and it only ever fills an empty `spec.podCIDR`: two
//! writers racing on one node cannot both succeed (the loser gets a 409,
//! reads the node again and sees the CIDR), and the apiserver refuses to
//! change a podCIDR once set.
//!
//! Blocks this loop has just written are remembered until the watch shows
//! them (or the node is deleted): a watch event from before the write must
//! not make a block look free and hand it to a second node.
//!
//! Two leaders at once (a lease lost while a pass is running) could in
//! principle hand one block to two different nodes; like upstream, this
//! relies on leader election being exclusive, and the pass is short.
//!
//! When the range is exhausted, the node is named in a warning and gets a
//! `CIDRNotAvailable` event (upstream's reason and wording); every later
//! watch event — a deleted node in particular — retries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Event, Node};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Prefix length of the block each node gets from an IPv4 cluster CIDR
/// (kube-controller-manager's `--node-cidr-mask-size-ipv4` default).
pub const IPV4_NODE_MASK: u8 = 24;
/// Prefix length of the block each node gets from an IPv6 cluster CIDR
/// (`--node-cidr-mask-size-ipv6` default).
pub const IPV6_NODE_MASK: u8 = 64;
/// Event reason when no block is left for a node (upstream's).
pub const REASON_CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
/// The event source component, as upstream's range allocator names it.
pub const COMPONENT: &str = "cidrAllocator";

/// How long to wait before retrying after a failed write.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Why pod CIDRs cannot be allocated at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// The cluster CIDR holds less than one node block.
    #[error(
        "cluster-cidr {cidr} is smaller than one node pod CIDR block (/{mask}); \
         use a cluster-cidr with a prefix of at most /{mask}"
    )]
    TooSmall {
        /// The configured cluster CIDR.
        cidr: IpNet,
        /// The node block size.
        mask: u8,
    },
}

/// The blocks of one cluster CIDR, numbered from 0 at its start: the pure
/// part of the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrSet {
    cluster: IpNet,
    mask: u8,
}

/// Address bits of `net`'s family.
fn bits(net: &IpNet) -> u32 {
    match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl CidrSet {
    /// Blocks of the default node size (/24 for IPv4, /64 for IPv6) in
    /// `cluster` (host bits are ignored, as `10.42.7.0/16` means
    /// `10.42.0.0/16`).
    pub fn new(cluster: IpNet) -> Result<Self, IpamError> {
        let mask = match cluster {
            IpNet::V4(_) => IPV4_NODE_MASK,
            IpNet::V6(_) => IPV6_NODE_MASK,
        };
        Self::with_mask(cluster, mask)
    }

    /// Blocks of prefix length `mask` in `cluster`.
    pub fn with_mask(cluster: IpNet, mask: u8) -> Result<Self, IpamError> {
        let cluster = cluster.trunc();
        let diff = u32::from(mask).checked_sub(u32::from(cluster.prefix_len()));
        // More than 2^64 blocks would overflow the index arithmetic; no
        // real configuration (an IPv6 /0 cut into /65s) asks for that.
        if u32::from(mask) > bits(&cluster) || diff.is_none_or(|d| d > 64) {
            return Err(IpamError::TooSmall {
                cidr: cluster,
                mask,
            });
        }
        Ok(Self { cluster, mask })
    }

    /// The cluster CIDR (host bits cleared).
    pub fn cluster(&self) -> IpNet {
        self.cluster
    }

    /// The prefix length of each block.
    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many blocks there are.
    pub fn size(&self) -> u128 {
        1u128 << (self.mask - self.cluster.prefix_len())
    }

    fn shift(&self) -> u32 {
        bits(&self.cluster) - u32::from(self.mask)
    }

    /// Block number `index`, `None` past the end.
    pub fn block(&self, index: u128) -> Option<IpNet> {
        if index >= self.size() {
            return None;
        }
        let start = to_u128(self.cluster.network()) + (index << self.shift());
        let addr = match self.cluster {
            IpNet::V4(_) => IpAddr::V4(u32::try_from(start).ok()?.into()),
            IpNet::V6(_) => IpAddr::V6(start.into()),
        };
        IpNet::new(addr, self.mask).ok()
    }

    /// The first and last block numbers `net` overlaps, `None` when it
    /// lies outside the cluster CIDR (or is of the other family).
    fn overlap(&self, net: &IpNet) -> Option<(u128, u128)> {
        if bits(net) != bits(&self.cluster) {
            return None;
        }
        let net = net.trunc();
        let (a, b) = (to_u128(net.network()), to_u128(net.broadcast()));
        let (c, d) = (
            to_u128(self.cluster.network()),
            to_u128(self.cluster.broadcast()),
        );
        let (lo, hi) = (a.max(c), b.min(d));
        (lo <= hi).then(|| ((lo - c) >> self.shift(), (hi - c) >> self.shift()))
    }

    /// The first block not overlapping any of `used`, searching from
    /// block `start` to the end and then from the beginning (a rotating
    /// start, like upstream's, keeps a just-freed block unused for a
    /// while so stale routes to it can go first). Returns its number and
    /// the block; `None` when every block is used.
    pub fn next_free(&self, used: &[IpNet], start: u128) -> Option<(u128, IpNet)> {
        let mut taken: Vec<(u128, u128)> = used.iter().filter_map(|n| self.overlap(n)).collect();
        taken.sort_unstable();
        let size = self.size();
        let start = start % size;
        let index = first_free(&taken, start, size).or_else(|| first_free(&taken, 0, start))?;
        Some((index, self.block(index)?))
    }
}

/// The first number in `from..limit` not inside any of the sorted
/// (possibly overlapping) ranges `taken`.
fn first_free(taken: &[(u128, u128)], from: u128, limit: u128) -> Option<u128> {
    let mut candidate = from;
    for &(lo, hi) in taken {
        if lo > candidate {
            break;
        }
        if hi >= candidate {
            candidate = hi + 1;
        }
    }
    (candidate < limit).then_some(candidate)
}

/// The CIDRs `node` holds (`spec.podCIDRs` and `spec.podCIDR`); values
/// that do not parse are skipped (nothing can be allocated from them
/// anyway).
pub fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<IpNet> = Vec::new();
    for s in spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.as_ref())
    {
        match s.parse::<IpNet>() {
            Ok(n) if !out.contains(&n) => out.push(n),
            Ok(_) => {}
            Err(_) => debug!(
                node = node.metadata.name.as_deref().unwrap_or(""),
                cidr = %s,
                "node holds a pod CIDR that does not parse; ignored"
            ),
        }
    }
    out
}

/// Whether `node` already has a pod CIDR (so it must not get another).
pub fn has_pod_cidr(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|s| {
        s.pod_cidr.as_deref().is_some_and(|c| !c.is_empty())
            || s.pod_cidrs.as_ref().is_some_and(|c| !c.is_empty())
    })
}

/// The allocator's view: the watched nodes and its own recent writes.
struct Allocator {
    set: CidrSet,
    nodes: BTreeMap<String, Node>,
    /// The list being received after a (re)list, swapped in at its end.
    relist: Option<BTreeMap<String, Node>>,
    /// Blocks written by this loop that the watch has not shown yet, by
    /// node name, with the node's uid.
    written: BTreeMap<String, (Option<String>, IpNet)>,
    /// Nodes already told there is no block left (told again once they
    /// got one and lost it, or after a leader change).
    reported: BTreeSet<String>,
    next: u128,
    synced: bool,
}

enum Outcome {
    Done,
    Retry,
}

impl Allocator {
    fn new(set: CidrSet) -> Self {
        Self {
            set,
            nodes: BTreeMap::new(),
            relist: None,
            written: BTreeMap::new(),
            reported: BTreeSet::new(),
            next: 0,
            synced: false,
        }
    }

    fn event(&mut self, ev: watcher::Event<Node>) {
        match ev {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(n) => {
                if let (Some(list), Some(name)) = (self.relist.as_mut(), n.metadata.name.clone()) {
                    list.insert(name, n);
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.relist.take() {
                    self.nodes = list;
                }
                self.synced = true;
            }
            watcher::Event::Apply(n) => {
                if let Some(name) = n.metadata.name.clone() {
                    self.nodes.insert(name, n);
                }
            }
            watcher::Event::Delete(n) => {
                if let Some(name) = n.metadata.name.as_ref() {
                    self.nodes.remove(name);
                    self.written.remove(name);
                    self.reported.remove(name);
                }
            }
        }
    }

    /// Forgets own writes the watch now shows, and those of nodes gone or
    /// replaced by a new node of the same name.
    fn prune_written(&mut self) {
        let nodes = &self.nodes;
        self.written.retain(|name, (uid, _)| {
            nodes
                .get(name)
                .is_some_and(|n| n.metadata.uid == *uid && !has_pod_cidr(n))
        });
        self.reported.retain(|name| nodes.contains_key(name));
    }

    /// Gives a block to every node that lacks one.
    async fn pass(&mut self, api: &Api<Node>, client: &kube::Client) -> Outcome {
        self.prune_written();
        let mut used: Vec<IpNet> = self.nodes.values().flat_map(node_cidrs).collect();
        used.extend(self.written.values().map(|(_, c)| *c));
        let mut waiting: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| {
                !has_pod_cidr(n)
                    && n.metadata.deletion_timestamp.is_none()
                    && n.metadata
                        .name
                        .as_ref()
                        .is_some_and(|name| !self.written.contains_key(name))
            })
            .collect();
        if waiting.is_empty() {
            return Outcome::Done;
        }
        // Oldest first, so the first server gets the first block.
        waiting.sort_by_key(|n| {
            (
                n.metadata.creation_timestamp.as_ref().map(|t| t.0),
                n.metadata.name.clone(),
            )
        });
        let waiting: Vec<Node> = waiting.into_iter().cloned().collect();
        let mut outcome = Outcome::Done;
        for node in waiting {
            let name = node.metadata.name.clone().unwrap_or_default();
            let Some((index, cidr)) = self.set.next_free(&used, self.next) else {
                if self.reported.insert(name.clone()) {
                    warn!(
                        node = %name,
                        cluster_cidr = %self.set.cluster(),
                        node_mask = self.set.mask(),
                        "no free pod CIDR left in cluster-cidr for node; retrying when nodes are deleted"
                    );
                    if let Err(e) = record_not_available(client, &name).await {
                        warn!(node = %name, error = %e, "recording the CIDRNotAvailable event failed");
                    }
                }
                continue;
            };
            match assign(api, node, cidr).await {
                Ok(Assigned::Written(updated)) => {
                    info!(node = %name, pod_cidr = %cidr, "assigned pod CIDR to node");
                    used.push(cidr);
                    self.next = index + 1;
                    self.reported.remove(&name);
                    self.written
                        .insert(name.clone(), (updated.metadata.uid.clone(), cidr));
                    self.nodes.insert(name, updated);
                }
                Ok(Assigned::AlreadySet(current)) => {
                    debug!(node = %name, "node got a pod CIDR from another writer");
                    used.extend(node_cidrs(&current));
                    self.nodes.insert(name, current);
                }
                Ok(Assigned::Gone) => {
                    self.nodes.remove(&name);
                }
                Ok(Assigned::StillChanging) => {
                    debug!(node = %name, "node kept changing while its pod CIDR was being set; retrying");
                    outcome = Outcome::Retry;
                }
                Err(e) => {
                    warn!(node = %name, pod_cidr = %cidr, error = %e, "assigning pod CIDR failed; retrying");
                    outcome = Outcome::Retry;
                }
            }
        }
        outcome
    }
}

enum Assigned {
    Written(Node),
    AlreadySet(Node),
    Gone,
    /// Changed under every one of several attempts: left for the retry.
    StillChanging,
}

/// Sets `cidr` on `node` unless it got one meanwhile: a merge patch
/// guarded by the node's resourceVersion, re-read and retried on 409.
async fn assign(api: &Api<Node>, mut node: Node, cidr: IpNet) -> Result<Assigned, kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    for _ in 0..5 {
        if has_pod_cidr(&node) {
            return Ok(Assigned::AlreadySet(node));
        }
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => return Ok(Assigned::Written(updated)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Assigned::Gone),
            // 409: someone else wrote the node since it was read; 422:
            // someone set a podCIDR the apiserver will not let us change.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                node = match api.get_opt(&name).await? {
                    Some(n) => n,
                    None => return Ok(Assigned::Gone),
                };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Assigned::StillChanging)
}

/// Records upstream's `CIDRNotAvailable` Node event (in `default`, where
/// cluster-scoped objects' events go; the uid is the node name, as
/// upstream's node event references have it).
async fn record_not_available(client: &kube::Client, node: &str) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": format!("{node}.{:x}", now.as_nanosecond()), "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
        "reason": REASON_CIDR_NOT_AVAILABLE,
        "message": format!("Node {node} status is now: {REASON_CIDR_NOT_AVAILABLE}"),
        "type": "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": "",
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    }))
    .map_err(kube::Error::SerdeError)?;
    Api::<Event>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// Runs the node IPAM loop until `stop`: watches Nodes and gives each one
/// without `spec.podCIDR` a free block of `cluster_cidr`. A cluster CIDR
/// smaller than one block is logged as an error and nothing is allocated.
pub async fn run(client: kube::Client, cluster_cidr: IpNet, stop: CancellationToken) {
    let set = match CidrSet::new(cluster_cidr) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "node IPAM disabled: nodes get no pod CIDR");
            return;
        }
    };
    info!(cluster_cidr = %set.cluster(), node_mask = set.mask(), blocks = set.size(), "node IPAM loop started");
    let api: Api<Node> = Api::all(client.clone());
    let mut alloc = Allocator::new(set);
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = retry => retry_at = None,
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    alloc.event(ev);
                    // Take every event already delivered before deciding,
                    // so a burst (the initial list) is one pass.
                    while let Some(Some(Ok(ev))) = stream.next().now_or_never() {
                        alloc.event(ev);
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "node watch failed; the watcher retries");
                    // The watcher backs off by itself only when asked to;
                    // keep a failing apiserver from being hammered.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                None => return,
            },
        }
        if !alloc.synced {
            continue;
        }
        let pass = alloc.pass(&api, &client);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            o = pass => o,
        };
        if let Outcome::Retry = outcome {
            retry_at.get_or_insert_with(|| tokio::time::Instant::now() + RETRY_AFTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn first_block_of_the_default_cluster_cidr() {
        let set = CidrSet::new(net("10.42.0.0/16")).unwrap();
        assert_eq!(set.size(), 256);
        assert_eq!(set.next_free(&[], 0), Some((0, net("10.42.0.0/24"))));
    }

    #[test]
    fn used_blocks_are_skipped() {
        let set = CidrSet::new(net("10.42.0.0/16")).unwrap();
        let used = nets(&["10.42.0.0/24", "10.42.1.0/24", "10.42.3.0/24"]);
        assert_eq!(set.next_free(&used, 0), Some((2, net("10.42.2.0/24"))));
        assert_eq!(set.next_free(&used, 3), Some((4, net("10.42.4.0/24"))));
    }

    #[test]
    fn search_wraps_around_to_freed_blocks() {
        let set = CidrSet::new(net("10.42.0.0/22")).unwrap();
        let used = nets(&["10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
        assert_eq!(set.next_free(&used, 2), Some((0, net("10.42.0.0/24"))));
        // A start past the end counts from the beginning.
        assert_eq!(set.next_free(&used, 9), Some((0, net("10.42.0.0/24"))));
    }

    #[test]
    fn exhausted_range_gives_none() {
        let set = CidrSet::new(net("10.42.0.0/23")).unwrap();
        let used = nets(&["10.42.0.0/24", "10.42.1.0/24"]);
        assert_eq!(set.next_free(&used, 0), None);
        assert_eq!(set.next_free(&used, 1), None);
    }

    #[test]
    fn odd_shaped_and_foreign_cidrs_block_what_they_overlap() {
        let set = CidrSet::new(net("10.42.0.0/16")).unwrap();
        // A /23 set by hand covers two blocks; a /26 one block; CIDRs
        // outside the range or of the other family nothing.
        let used = nets(&["10.42.0.0/23", "10.42.2.64/26", "10.43.0.0/24", "fd00::/64"]);
        assert_eq!(set.next_free(&used, 0), Some((3, net("10.42.3.0/24"))));
        // A supernet of the whole range uses it all.
        assert_eq!(set.next_free(&nets(&["10.0.0.0/8"]), 0), None);
    }

    #[test]
    fn host_bits_of_the_cluster_cidr_are_ignored() {
        let set = CidrSet::new(net("10.42.7.9/16")).unwrap();
        assert_eq!(set.cluster(), net("10.42.0.0/16"));
        assert_eq!(set.block(255), Some(net("10.42.255.0/24")));
        assert_eq!(set.block(256), None);
    }

    #[test]
    fn cluster_cidr_smaller_than_one_block_is_refused() {
        let err = CidrSet::new(net("10.42.0.0/25")).unwrap_err();
        assert_eq!(
            err,
            IpamError::TooSmall {
                cidr: net("10.42.0.0/25"),
                mask: 24
            }
        );
        assert!(err.to_string().contains("10.42.0.0/25"), "{err}");
        // Exactly one block is fine.
        let one = CidrSet::new(net("10.42.0.0/24")).unwrap();
        assert_eq!(one.next_free(&[], 5), Some((0, net("10.42.0.0/24"))));
        assert!(CidrSet::new(net("fd00::/65")).is_err());
        assert!(CidrSet::with_mask(net("10.0.0.0/8"), 33).is_err());
    }

    #[test]
    fn ipv6_blocks_are_64s() {
        let set = CidrSet::new(net("fd00:42::/56")).unwrap();
        assert_eq!(set.size(), 256);
        let used = nets(&["fd00:42::/64"]);
        assert_eq!(set.next_free(&used, 0), Some((1, net("fd00:42:0:1::/64"))));
        // The largest index range still works without overflow.
        let huge = CidrSet::new(net("::/0")).unwrap();
        assert_eq!(huge.size(), 1u128 << 64);
        assert_eq!(
            huge.block((1u128 << 64) - 1),
            Some(net("ffff:ffff:ffff:ffff::/64"))
        );
    }

    #[test]
    fn node_cidrs_reads_both_fields_and_skips_garbage() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24", "fd00::/64", "nonsense"]},
        }))
        .unwrap();
        assert_eq!(node_cidrs(&node), nets(&["10.42.1.0/24", "fd00::/64"]));
        assert!(has_pod_cidr(&node));
        let bare: Node =
            serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {"podCIDR": ""}}))
                .unwrap();
        assert!(!has_pod_cidr(&bare));
        assert!(node_cidrs(&bare).is_empty());
    }

    fn node(name: &str, uid: &str, cidr: Option<&str>) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": uid},
            "spec": {"podCIDR": cidr},
        }))
        .unwrap()
    }

    #[test]
    fn own_writes_count_until_the_watch_shows_them() {
        let mut a = Allocator::new(CidrSet::new(net("10.42.0.0/16")).unwrap());
        a.event(watcher::Event::Init);
        a.event(watcher::Event::InitApply(node("n1", "u1", None)));
        a.event(watcher::Event::InitDone);
        a.written
            .insert("n1".into(), (Some("u1".into()), net("10.42.0.0/24")));
        // A stale event without the CIDR keeps the record.
        a.event(watcher::Event::Apply(node("n1", "u1", None)));
        a.prune_written();
        assert!(a.written.contains_key("n1"));
        // Seen with its CIDR: the node itself is the record now.
        a.event(watcher::Event::Apply(node(
            "n1",
            "u1",
            Some("10.42.0.0/24"),
        )));
        a.prune_written();
        assert!(a.written.is_empty());
        // A node replaced under the same name (missed delete) drops it.
        a.written
            .insert("n1".into(), (Some("u1".into()), net("10.42.0.0/24")));
        a.event(watcher::Event::Apply(node("n1", "u2", None)));
        a.prune_written();
        assert!(a.written.is_empty());
    }

    #[test]
    fn relist_replaces_the_node_set() {
        let mut a = Allocator::new(CidrSet::new(net("10.42.0.0/16")).unwrap());
        a.event(watcher::Event::Apply(node(
            "gone",
            "u0",
            Some("10.42.0.0/24"),
        )));
        a.event(watcher::Event::Init);
        assert!(!a.synced);
        a.event(watcher::Event::InitApply(node("n1", "u1", None)));
        a.event(watcher::Event::InitDone);
        assert!(a.synced);
        assert_eq!(a.nodes.keys().collect::<Vec<_>>(), ["n1"]);
    }
}
