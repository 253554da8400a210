//! Leader election through `coordination.k8s.io/v1` Leases, as
//! client-go's leaderelection does: one holder at a time; a holder that
//! stops renewing is replaced once `lease_duration` has passed.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Timing of an election.
#[derive(Debug, Clone, Copy)]
pub struct ElectionTiming {
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry_period: Duration,
}

impl Default for ElectionTiming {
    /// 8 s lease, 2 s retries: a dead holder is replaced within ~10 s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(8),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.as_millisecond()).unwrap_or_default()
}

fn micro(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Leading,
    /// Someone else holds a valid lease.
    Following(String),
}

/// Tries once to acquire or renew `kube-system/<name>` for `identity`.
pub async fn try_acquire(
    client: &kube::Client,
    name: &str,
    identity: &str,
    timing: ElectionTiming,
) -> Result<Attempt, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let now = Utc::now();
    let spec = |transitions: i32, acquire: String| {
        json!({
            "holderIdentity": identity,
            "leaseDurationSeconds": timing.lease_duration.as_secs(),
            "acquireTime": acquire,
            "renewTime": micro(now),
            "leaseTransitions": transitions,
        })
    };
    let Some(current) = leases.get_opt(name).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": spec(0, micro(now)),
        }))
        .expect("lease literal");
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following(String::new())),
            Err(e) => Err(e),
        };
    };
    let cur = current.spec.clone().unwrap_or_default();
    let holder = cur.holder_identity.clone().unwrap_or_default();
    let duration = cur
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(timing.lease_duration);
    let renewed = cur.renew_time.as_ref().map(|t| to_chrono(&t.0));
    let expired = match renewed {
        Some(t) => {
            let age = now.signed_duration_since(t).to_std().unwrap_or_default();
            age > duration
        }
        None => true,
    };
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(Attempt::Following(holder));
    }
    let transitions = cur.lease_transitions.unwrap_or(0) + if holder == identity { 0 } else { 1 };
    let acquire = if holder == identity {
        cur.acquire_time
            .as_ref()
            .map(|t| micro(to_chrono(&t.0)))
            .unwrap_or_else(|| micro(now))
    } else {
        micro(now)
    };
    let mut updated = current.clone();
    updated.spec =
        Some(serde_json::from_value(spec(transitions, acquire)).expect("lease spec literal"));
    // replace carries the resourceVersion we read: a concurrent taker
    // makes this a 409 and we stay a follower.
    match leases.replace(name, &PostParams::default(), &updated).await {
        Ok(_) => Ok(Attempt::Leading),
        // Our own renewal conflicting (an earlier one that timed out on
        // the way back, then applied) is no sign of another holder: an
        // error, so the leader keeps leading until its lease would have
        // run out, and the next attempt reads the lease again.
        Err(kube::Error::Api(s)) if s.code == 409 && holder != identity => {
            Ok(Attempt::Following(holder))
        }
        Err(e) => Err(e),
    }
}

/// Runs `lead` whenever this process holds the lease `name`, until `stop`.
///
/// `lead` gets a token that is cancelled when leadership is lost (a
/// renewal failed for longer than the lease duration), so a deposed leader
/// stops its work before another can have started for long.
pub async fn run_elected<F, Fut>(
    client: kube::Client,
    name: String,
    identity: String,
    timing: ElectionTiming,
    stop: CancellationToken,
    lead: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut leading: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        match try_acquire(&client, &name, &identity, timing).await {
            Ok(Attempt::Leading) => {
                last_ok = tokio::time::Instant::now();
                if leading.is_none() {
                    info!(lease = %name, %identity, "became leader");
                    let token = stop.child_token();
                    let handle = tokio::spawn(lead(token.clone()));
                    leading = Some((token, handle));
                }
            }
            Ok(Attempt::Following(holder)) => {
                if let Some((token, _)) = leading.take() {
                    warn!(lease = %name, %holder, "lost leadership");
                    token.cancel();
                }
                debug!(lease = %name, %holder, "following");
            }
            Err(e) => {
                debug!(lease = %name, error = %e, "leader election attempt failed");
                if leading.is_some()
                    && last_ok.elapsed() > timing.lease_duration
                    && let Some((token, _)) = leading.take()
                {
                    warn!(lease = %name, "could not renew leadership in time; stepping down");
                    token.cancel();
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(timing.retry_period) => {}
        }
    }
    if let Some((token, handle)) = leading.take() {
        token.cancel();
        let _ = handle.await;
    }
}
