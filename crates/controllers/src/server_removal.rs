//! Server removal: deleting a server's Node removes its etcd member.
//!
//! Two paths, both on the server holding the controllers' lease:
//!
//! - events: the loop watches Nodes carrying the etcd role label; on a
//!   deletion it removes that node's member at once (never the last voter);
//! - reconciliation: when the loop starts (a server took the lease) and
//!   every [`RemovalConfig::period`], etcd voters are compared with Nodes.
//!   A voter whose Node has been missing for longer than
//!   [`RemovalConfig::grace`] is removed. This catches deletions no watch
//!   delivered: made while the lease changed hands (a stopped holder keeps
//!   it until it expires, and the next holder's watch starts with a list,
//!   which has no deleted objects in it), or a removal that failed.
//!
//! The grace protects a joining server: its member votes a little before
//! its Node is registered. Learners, this server's own member and the last
//! voter are never removed by reconciliation.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The label that marks a server (etcd) node.
pub const ETCD_ROLE_LABEL: &str = "node-role.kubernetes.io/etcd";

/// One etcd member, as far as removal needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    /// Member id.
    pub id: u64,
    /// Member name, `<node>-<8 hex digits>`; empty until the member has
    /// started.
    pub name: String,
    /// Whether it is a non-voting learner.
    pub is_learner: bool,
}

impl EtcdMember {
    /// The node a member belongs to: its name without the `-<8 hex>`
    /// suffix. `None` for unstarted members and foreign names.
    pub fn node(&self) -> Option<&str> {
        let (node, suffix) = self.name.rsplit_once('-')?;
        (!node.is_empty() && suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()))
            .then_some(node)
    }
}

/// etcd membership as the loop reaches it. Members are not API objects,
/// so the server running the loop provides this from its datastore.
pub trait Membership: Send + Sync {
    /// The current members.
    fn members(&self) -> BoxFuture<'_, Result<Vec<EtcdMember>, String>>;
    /// Removes the member with this id.
    fn remove(&self, id: u64) -> BoxFuture<'_, Result<(), String>>;
}

/// Timing of the reconciliation.
#[derive(Debug, Clone, Copy)]
pub struct RemovalConfig {
    /// How often voters are compared with Nodes.
    pub period: Duration,
    /// How long a voter's Node must have been seen missing before the
    /// voter is removed.
    pub grace: Duration,
}

impl Default for RemovalConfig {
    /// Every 30 s; removal after a Node has been missing for 60 s (a
    /// joining server registers its Node within seconds of voting).
    fn default() -> Self {
        Self {
            period: Duration::from_secs(30),
            grace: Duration::from_secs(60),
        }
    }
}

/// The member to remove for a deleted Node: the member named after it,
/// unless that is the last voter.
pub fn member_of_deleted_node<'a>(
    members: &'a [EtcdMember],
    node: &str,
) -> Result<Option<&'a EtcdMember>, &'a EtcdMember> {
    let voters = members.iter().filter(|m| !m.is_learner).count();
    match members.iter().find(|m| m.node() == Some(node)) {
        Some(m) if !m.is_learner && voters <= 1 => Err(m),
        found => Ok(found),
    }
}

/// A voter reconciliation removes, and for how long its Node was missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The member.
    pub member: EtcdMember,
    /// Time since this loop first saw its Node missing.
    pub missing_for: Duration,
}

/// What one reconciliation decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Voters to remove now.
    pub remove: Vec<Orphan>,
    /// When the next voter whose Node is missing passes the grace.
    pub next_due: Option<Instant>,
}

/// Decides which voters to remove: started voters of another node whose
/// Node is in `missing` (nodes confirmed to have no Node object) and has
/// been since `first_missing` recorded it more than `grace` ago, keeping at
/// least one voter. `first_missing` is updated: members that are gone,
/// learners, or whose Node exists again are forgotten, so their grace
/// starts over.
pub fn decide(
    members: &[EtcdMember],
    missing: &BTreeSet<String>,
    own_node: &str,
    first_missing: &mut HashMap<u64, Instant>,
    now: Instant,
    grace: Duration,
) -> Decision {
    let candidate = |m: &EtcdMember| {
        !m.is_learner
            && m.node()
                .is_some_and(|n| n != own_node && missing.contains(n))
    };
    first_missing.retain(|id, _| members.iter().any(|m| m.id == *id && candidate(m)));
    let mut voters = members.iter().filter(|m| !m.is_learner).count();
    let mut d = Decision::default();
    for m in members.iter().filter(|m| candidate(m)) {
        let since = *first_missing.entry(m.id).or_insert(now);
        let missing_for = now.saturating_duration_since(since);
        if missing_for > grace && voters > 1 {
            voters -= 1;
            d.remove.push(Orphan {
                member: m.clone(),
                missing_for,
            });
        } else if missing_for <= grace {
            let due = since + grace + Duration::from_millis(1);
            d.next_due = Some(d.next_due.map_or(due, |t| t.min(due)));
        }
    }
    d
}

/// Runs until `stop`: removes the member of every deleted etcd node, and
/// reconciles voters against Nodes (see the module docs). `own_node` is
/// the node this loop runs on.
pub async fn run(
    client: kube::Client,
    membership: Arc<dyn Membership>,
    own_node: String,
    cfg: RemovalConfig,
    stop: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let wcfg = watcher::Config::default().labels(&format!("{ETCD_ROLE_LABEL}=true"));
    // Nodes as of the last complete list plus later events, and the
    // names seen by a re-list in progress: a Node deleted while the watch
    // was re-listing only shows as missing from the new list.
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut relisted: Option<BTreeSet<String>> = None;
    let mut first_missing: HashMap<u64, Instant> = HashMap::new();
    let mut next_check = Instant::now();
    let mut stream = watcher(nodes.clone(), wcfg).boxed();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_check) => {
                // A deposed leader must not go on removing members.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    next = reconcile(&nodes, membership.as_ref(), &own_node, &cfg, &mut first_missing) => next_check = next,
                }
                continue;
            }
            ev = stream.try_next() => ev,
        };
        match ev {
            Ok(Some(watcher::Event::Apply(n))) => {
                if let Some(name) = n.metadata.name {
                    known.insert(name);
                }
            }
            Ok(Some(watcher::Event::Init)) => relisted = Some(BTreeSet::new()),
            Ok(Some(watcher::Event::InitApply(n))) => {
                if let (Some(name), Some(set)) = (n.metadata.name, relisted.as_mut()) {
                    set.insert(name);
                }
            }
            Ok(Some(watcher::Event::InitDone)) => {
                let fresh = relisted.take().unwrap_or_default();
                let gone: Vec<String> = known.difference(&fresh).cloned().collect();
                known = fresh;
                for name in gone {
                    info!(node = %name, "server node gone while the watch re-listed; removing its etcd member");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = remove_for_deleted(membership.as_ref(), &name) => {}
                    }
                }
            }
            Ok(Some(watcher::Event::Delete(n))) => {
                if let Some(name) = n.metadata.name {
                    known.remove(&name);
                    info!(node = %name, "server node deleted; removing its etcd member");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = remove_for_deleted(membership.as_ref(), &name) => {}
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "node watch failed; the watcher retries");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn remove_for_deleted(membership: &dyn Membership, node: &str) {
    let members = match membership.members().await {
        Ok(m) => m,
        Err(e) => {
            warn!(%node, error = %e, "listing etcd members failed; reconciliation retries later");
            return;
        }
    };
    match member_of_deleted_node(&members, node) {
        Ok(Some(m)) => match membership.remove(m.id).await {
            Ok(()) => info!(%node, member = %m.name, "removed etcd member of deleted node"),
            Err(e) => {
                warn!(%node, member = %m.name, error = %e, "removing etcd member failed; reconciliation retries later")
            }
        },
        Ok(None) => info!(%node, "no etcd member for this node"),
        Err(m) => warn!(%node, member = %m.name, "refusing to remove the last etcd voter"),
    }
}

/// One reconciliation; returns when the next one is due.
async fn reconcile(
    nodes: &Api<Node>,
    membership: &dyn Membership,
    own_node: &str,
    cfg: &RemovalConfig,
    first_missing: &mut HashMap<u64, Instant>,
) -> Instant {
    let retry = Instant::now() + cfg.period.min(Duration::from_secs(5));
    let members = match membership.members().await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "listing etcd members for reconciliation failed");
            return retry;
        }
    };
    // A Node counts as missing only when the API says so; any other
    // answer keeps the voter (and restarts its grace).
    let mut missing = BTreeSet::new();
    for node in members
        .iter()
        .filter(|m| !m.is_learner)
        .filter_map(|m| m.node())
        .filter(|n| *n != own_node)
    {
        match nodes.get_opt(node).await {
            Ok(None) => {
                missing.insert(node.to_string());
            }
            Ok(Some(_)) => {}
            Err(e) => warn!(%node, error = %e, "reading a server's Node for reconciliation failed"),
        }
    }
    let now = Instant::now();
    let d = decide(&members, &missing, own_node, first_missing, now, cfg.grace);
    let mut failed = false;
    for o in &d.remove {
        let node = o.member.node().unwrap_or_default();
        match membership.remove(o.member.id).await {
            Ok(()) => {
                first_missing.remove(&o.member.id);
                info!(
                    %node,
                    member = %o.member.name,
                    missing_for = ?o.missing_for,
                    "removed etcd voter whose Node is gone (its deletion was not seen, or its removal failed)"
                );
            }
            Err(e) => {
                failed = true;
                warn!(
                    %node,
                    member = %o.member.name,
                    error = %e,
                    "removing etcd voter whose Node is gone failed; retrying"
                );
            }
        }
    }
    let mut next = now + cfg.period;
    if let Some(due) = d.next_due {
        next = next.min(due);
    }
    if failed {
        next = next.min(retry);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: u64, name: &str) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            is_learner: false,
        }
    }

    fn learner(id: u64, name: &str) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            is_learner: true,
        }
    }

    fn missing(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn member_node_names() {
        assert_eq!(voter(1, "server-3-0a1b2c3d").node(), Some("server-3"));
        assert_eq!(voter(1, "a-b-c-DEADBEEF").node(), Some("a-b-c"));
        assert_eq!(voter(1, "").node(), None);
        assert_eq!(voter(1, "server-3").node(), None);
        assert_eq!(voter(1, "server-3-0a1b2c3").node(), None);
        assert_eq!(voter(1, "server-3-0a1b2c3g").node(), None);
        assert_eq!(voter(1, "-0a1b2c3d").node(), None);
    }

    #[test]
    fn deleted_node_member_never_the_last_voter() {
        let ms = [voter(1, "s1-00000001"), voter(2, "s2-00000002")];
        assert_eq!(member_of_deleted_node(&ms, "s2"), Ok(Some(&ms[1])));
        assert_eq!(member_of_deleted_node(&ms, "s9"), Ok(None));
        let one = [voter(1, "s1-00000001"), learner(2, "s2-00000002")];
        assert_eq!(member_of_deleted_node(&one, "s1"), Err(&one[0]));
        assert_eq!(member_of_deleted_node(&one, "s2"), Ok(Some(&one[1])));
    }

    #[test]
    fn voter_without_node_removed_only_after_grace() {
        let ms = [
            voter(1, "s1-00000001"),
            voter(2, "s2-00000002"),
            voter(3, "s3-00000003"),
        ];
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let d = decide(&ms, &missing(&["s3"]), "s1", &mut seen, t0, GRACE);
        assert!(d.remove.is_empty());
        assert_eq!(d.next_due, Some(t0 + GRACE + Duration::from_millis(1)));
        let d = decide(&ms, &missing(&["s3"]), "s1", &mut seen, t0 + GRACE, GRACE);
        assert!(d.remove.is_empty(), "exactly the grace is not past it");
        let t = t0 + GRACE + Duration::from_secs(1);
        let d = decide(&ms, &missing(&["s3"]), "s1", &mut seen, t, GRACE);
        assert_eq!(
            d.remove,
            vec![Orphan {
                member: ms[2].clone(),
                missing_for: GRACE + Duration::from_secs(1),
            }]
        );
        assert_eq!(d.next_due, None);
    }

    #[test]
    fn node_coming_back_restarts_the_grace() {
        // A joining server: its member votes before its Node exists.
        let ms = [voter(1, "s1-00000001"), voter(3, "s3-00000003")];
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        decide(&ms, &missing(&["s3"]), "s1", &mut seen, t0, GRACE);
        let t1 = t0 + Duration::from_secs(30);
        let d = decide(&ms, &missing(&[]), "s1", &mut seen, t1, GRACE);
        assert_eq!(d, Decision::default());
        assert!(seen.is_empty());
        let t2 = t0 + Duration::from_secs(70);
        let d = decide(&ms, &missing(&["s3"]), "s1", &mut seen, t2, GRACE);
        assert!(d.remove.is_empty());
        assert_eq!(d.next_due, Some(t2 + GRACE + Duration::from_millis(1)));
    }

    #[test]
    fn learners_own_member_and_unstarted_members_stay() {
        let ms = [
            voter(1, "s1-00000001"),
            learner(2, "s2-00000002"),
            learner(4, ""),
            voter(5, "foreign"),
        ];
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let all = missing(&["s1", "s2", "foreign"]);
        decide(&ms, &all, "s1", &mut seen, t0, GRACE);
        let d = decide(&ms, &all, "s1", &mut seen, t0 + GRACE * 10, GRACE);
        assert_eq!(d, Decision::default());
        assert!(seen.is_empty());
    }

    #[test]
    fn never_below_one_voter() {
        // This server runs on a learner (its own member is not a voter):
        // the two voters both lack Nodes, only one may go.
        let ms = [
            learner(1, "s1-00000001"),
            voter(2, "s2-00000002"),
            voter(3, "s3-00000003"),
        ];
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let both = missing(&["s2", "s3"]);
        decide(&ms, &both, "s1", &mut seen, t0, GRACE);
        let d = decide(&ms, &both, "s1", &mut seen, t0 + GRACE * 2, GRACE);
        assert_eq!(d.remove.len(), 1);
        assert_eq!(d.remove[0].member.id, 2);
        let rest = [learner(1, "s1-00000001"), voter(3, "s3-00000003")];
        let d = decide(&rest, &both, "s1", &mut seen, t0 + GRACE * 3, GRACE);
        assert!(d.remove.is_empty());
    }

    #[test]
    fn removed_or_replaced_members_are_forgotten() {
        let ms = [voter(1, "s1-00000001"), voter(3, "s3-00000003")];
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        decide(&ms, &missing(&["s3"]), "s1", &mut seen, t0, GRACE);
        assert!(seen.contains_key(&3));
        // s3 re-joined with a new member id and its Node is missing again
        // for a moment: the new member gets a grace of its own.
        let again = [voter(1, "s1-00000001"), voter(7, "s3-0000000a")];
        let t1 = t0 + GRACE * 2;
        let d = decide(&again, &missing(&["s3"]), "s1", &mut seen, t1, GRACE);
        assert!(d.remove.is_empty());
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![7]);
    }
}
