//! etcd cluster membership: joining as a learner, promotion by the
//! leader's server, removal, and the member list for `/db/info`.

use std::time::{Duration, Instant};

use etcd_client::MemberAddOptions;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member id.
    pub id: u64,
    /// Member name (`<node>-<8 hex>`); empty until the member has started.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs (empty until started).
    pub client_urls: Vec<String>,
    /// Whether it is a non-voting learner.
    pub is_learner: bool,
}

impl Member {
    /// The `/db/info` JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": format!("{:x}", self.id),
            "name": self.name,
            "peerURLs": self.peer_urls,
            "clientURLs": self.client_urls,
            "isLearner": self.is_learner,
        })
    }
}

fn member(m: &etcd_client::Member) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

impl Store {
    /// The current members.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let resp = self
            .call(|mut c| async move { c.member_list().await })
            .await?;
        Ok(resp.members().iter().map(member).collect())
    }

    /// The status of the member this handle talks to: `(member id, leader
    /// id, raft index)` (`rke2 status` compares raft indexes for lag).
    pub async fn member_raft_status(&self) -> Result<(u64, u64, u64), StoreError> {
        let st = self.call(|mut c| async move { c.status().await }).await?;
        let me = st.header().map(|h| h.member_id()).unwrap_or(0);
        Ok((me, st.leader(), st.raft_index()))
    }

    /// This endpoint's member id and the leader's member id.
    pub async fn member_and_leader(&self) -> Result<(u64, u64), StoreError> {
        let st = self.call(|mut c| async move { c.status().await }).await?;
        let me = st.header().map(|h| h.member_id()).unwrap_or(0);
        Ok((me, st.leader()))
    }

    /// Adds a learner with this peer URL, retrying while etcd refuses a
    /// second learner (etcd 3.4 allows one at a time, so parallel joins
    /// queue here until the previous learner is promoted). Returns the
    /// member list including the new learner. A member with the same peer
    /// URL already present (a join interrupted after this step) is reused.
    pub async fn add_learner(
        &self,
        peer_url: &str,
        timeout: Duration,
    ) -> Result<Vec<Member>, StoreError> {
        let start = Instant::now();
        loop {
            let existing = self.members().await?;
            if existing
                .iter()
                .any(|m| m.peer_urls.iter().any(|u| u == peer_url))
            {
                info!(%peer_url, "etcd member with this peer URL already present; reusing it");
                return Ok(existing);
            }
            match self
                .call(|mut c| async move {
                    c.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
                        .await
                })
                .await
            {
                Ok(resp) => return Ok(resp.member_list().iter().map(member).collect()),
                Err(e) => {
                    let msg = e.to_string();
                    // Busy clusters time out or refuse for a while (one
                    // learner at a time, leader changes); a timed-out add
                    // may have landed, which the member check above finds.
                    let retry = msg.contains("too many learner")
                        || msg.contains("unhealthy")
                        || msg.contains("not ready")
                        || msg.contains("Timeout")
                        || msg.contains("timed out")
                        || msg.contains("deadline")
                        || msg.contains("leader")
                        || msg.contains("unavailable")
                        || msg.contains("Unavailable");
                    if !retry || start.elapsed() > timeout {
                        return Err(StoreError::Etcd(e));
                    }
                    info!(error = %msg, "etcd did not add the learner yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Promotes every learner that etcd considers caught up; removes
    /// learners that have not started for longer than `stall` since
    /// `first_seen` said so. Meant to run on the leader's server only.
    pub async fn promote_learners(
        &self,
        first_seen: &mut std::collections::HashMap<u64, Instant>,
        stall: Duration,
    ) -> Result<(), StoreError> {
        let members = self.members().await?;
        first_seen.retain(|id, _| members.iter().any(|m| m.id == *id && m.is_learner));
        for m in members.iter().filter(|m| m.is_learner) {
            let seen = *first_seen.entry(m.id).or_insert_with(Instant::now);
            let id = m.id;
            match self
                .call(|mut c| async move { c.member_promote(id).await })
                .await
            {
                Ok(_) => {
                    info!(member = %m.name, id = format!("{:x}", m.id), "promoted etcd learner to voter");
                    first_seen.remove(&m.id);
                }
                Err(e) => {
                    if seen.elapsed() > stall {
                        warn!(member = %m.name, "etcd learner stalled; removing it");
                        let _ = self
                            .call(|mut c| async move { c.member_remove(id).await })
                            .await;
                        first_seen.remove(&m.id);
                    } else if !e.to_string().contains("not in sync")
                        && !e.to_string().contains("not ready")
                    {
                        warn!(member = %m.name, error = %e, "promoting etcd learner failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the member with this id. Which member may go (never the
    /// last voter, never a joining learner) is the caller's decision.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.member_remove(id).await })
            .await?;
        Ok(())
    }

    /// Adds client endpoints the connection does not use yet (members that
    /// joined after this process connected).
    pub async fn add_endpoints(&self, urls: &[String]) {
        for u in urls {
            if self.note_endpoint(u) {
                info!(endpoint = %u, "using new etcd endpoint");
            }
        }
    }
}

impl Store {
    /// Keeps `key = value` in etcd for as long as this process renews it:
    /// the key is attached to a lease of `ttl` that is kept alive every
    /// `ttl / 4`; if this process (or its connection) dies, etcd deletes the
    /// key when the lease expires. Runs until `stop` is cancelled, then
    /// revokes the lease so the key disappears at once.
    pub async fn keep_registered(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let ttl_secs = ttl.as_secs().max(2) as i64;
        loop {
            let granted = self
                .call(
                    |mut c| async move { c.lease_grant(ttl_secs, None).await.map(|l| (c, l.id())) },
                )
                .await;
            let (mut c, lease) = match granted {
                Ok(x) => x,
                Err(e) => {
                    warn!(%key, error = %e, "granting a registration lease failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let put = c
                .put(
                    key.as_str(),
                    value.clone(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await;
            if let Err(e) = put {
                warn!(%key, error = %e, "registering failed; retrying");
                continue;
            }
            let Ok((mut keeper, mut responses)) = c.lease_keep_alive(lease).await else {
                continue;
            };
            let mut tick = tokio::time::interval(Duration::from_secs((ttl_secs as u64 / 4).max(1)));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = c.lease_revoke(lease).await;
                        return;
                    }
                    _ = tick.tick() => {
                        if keeper.keep_alive().await.is_err() { break; }
                        match tokio::time::timeout(Duration::from_secs(ttl_secs as u64), responses.message()).await {
                            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                            // Expired (ttl 0) or the stream broke: register anew.
                            _ => break,
                        }
                    }
                }
            }
        }
    }

    /// The values of every key under a prefix.
    pub async fn values_under(&self, prefix: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let page = self.list(prefix, None, 0, 0).await?;
        Ok(page.items.into_iter().map(|kv| kv.value).collect())
    }
}
