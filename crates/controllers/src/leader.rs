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

/// Gives up the lease `name` if `identity` holds it, as client-go's
/// `ReleaseOnCancel`: no holder, a one-second duration, renewed now, so
/// another candidate takes it at its next attempt instead of once the
/// lease has run out. Whether it was ours to release.
pub async fn release(
    client: &kube::Client,
    name: &str,
    identity: &str,
) -> Result<bool, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let Some(mut current) = leases.get_opt(name).await? else {
        return Ok(false);
    };
    let spec = current.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    // The resourceVersion read above: a holder that changed meanwhile
    // makes this a 409, and nothing of theirs is touched.
    leases
        .replace(name, &PostParams::default(), &current)
        .await?;
    Ok(true)
}

/// Runs `lead` whenever this process holds the lease `name`, until `stop`.
///
/// `lead` gets a token that is cancelled when leadership is lost (a
/// renewal failed for longer than the lease duration), so a deposed leader
/// stops its work before another can have started for long. On `stop`,
/// a leader waits for `lead` to finish, then [`release`]s the lease.
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
        // Stopping (not deposed): hand the lease over at once.
        match tokio::time::timeout(RELEASE_TIMEOUT, release(&client, &name, &identity)).await {
            Ok(Ok(true)) => info!(lease = %name, %identity, "released leadership"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => debug!(lease = %name, error = %e, "releasing the lease failed"),
            Err(_) => debug!(lease = %name, "releasing the lease timed out"),
        }
    }
}

/// How long a stopping leader tries to release its lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
