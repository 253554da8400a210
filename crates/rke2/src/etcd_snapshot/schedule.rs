//! The scheduled snapshots every server takes (`etcd-snapshot-schedule-cron`).
//!
//! The schedule is read as RKE2 reads it (robfig/cron's standard parser):
//! five fields (minute hour day-of-month month day-of-week), the
//! descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly`, and `@every <duration>` (`@every 30s`), in the
//! server's local time zone.

use std::time::Duration;

use chrono::{DateTime, Local};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{S3Failure, Target, local::EtcdEndpoint};

/// A parsed `etcd-snapshot-schedule-cron`.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A five-field cron expression or a descriptor.
    Cron(Box<croner::Cron>),
    /// `@every <duration>`.
    Every(Duration),
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong in the words of
    /// the key.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let t = spec.trim();
        if let Some(d) = t.strip_prefix("@every ") {
            let d = rke2_config::parse_go_duration(d)
                .map_err(|e| format!("etcd-snapshot-schedule-cron {t:?}: {e}"))?;
            if d < Duration::from_secs(1) {
                return Err(format!(
                    "etcd-snapshot-schedule-cron {t:?}: the interval must be at least 1s"
                ));
            }
            return Ok(Schedule::Every(d));
        }
        let fields = t.split_whitespace().count();
        if !t.starts_with('@') && fields != 5 {
            return Err(format!(
                "etcd-snapshot-schedule-cron {t:?}: expected exactly 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            ));
        }
        croner::parser::CronParser::new()
            .parse(t)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| format!("etcd-snapshot-schedule-cron {t:?}: {e}"))
    }

    /// The first run strictly after `now`.
    pub fn next_after(&self, now: DateTime<Local>) -> Option<DateTime<Local>> {
        match self {
            Schedule::Every(d) => chrono::Duration::from_std(*d).ok().map(|d| now + d),
            Schedule::Cron(c) => c.find_next_occurrence(&now, false).ok(),
        }
    }
}

/// Takes snapshots on `schedule` until `stop`, each pruned to the
/// retention and recorded. A failed snapshot is logged and the schedule
/// goes on.
pub async fn run(
    target: Target,
    schedule: Schedule,
    etcd: EtcdEndpoint,
    client: kube::Client,
    stop: CancellationToken,
) {
    // Records of what is already on disk (a restarted server, snapshots
    // taken while it was down by `rke2 etcd-snapshot`).
    let s3 = target.open_s3().await.unwrap_or_else(|e| {
        warn!(error = %e, "S3 snapshot store unavailable");
        None
    });
    target.sync_records(&client, s3.as_ref()).await;
    loop {
        let now = Local::now();
        let Some(next) = schedule.next_after(now) else {
            warn!("the snapshot schedule has no next run; scheduled snapshots stop");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        match target
            .save(&etcd, &target.cfg.name, Some(&client), S3Failure::KeepLocal)
            .await
        {
            Ok((saved, s3_error)) => {
                for s in &saved {
                    info!(snapshot = %s.name, location = %s.location, size = s.size, elapsed = ?started.elapsed(), "scheduled etcd snapshot saved");
                }
                if let Some(e) = s3_error {
                    warn!(error = %e, "scheduled etcd snapshot not stored in S3");
                }
            }
            Err(e) => warn!(error = %e, "scheduled etcd snapshot failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn rke2_default_and_descriptors_parse() {
        let s = Schedule::parse("0 */12 * * *").unwrap();
        let now = Local.with_ymd_and_hms(2026, 1, 1, 1, 30, 0).unwrap();
        let next = s.next_after(now).unwrap();
        assert_eq!(next, Local.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap());
        let s = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            s.next_after(now).unwrap(),
            Local.with_ymd_and_hms(2026, 1, 1, 1, 31, 0).unwrap()
        );
        assert!(Schedule::parse("@hourly").is_ok());
        match Schedule::parse("@every 5s").unwrap() {
            Schedule::Every(d) => assert_eq!(d, Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_schedules_say_why() {
        let e = Schedule::parse("*/5 * * * * *").unwrap_err();
        assert!(e.contains("expected exactly 5 fields"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(e.contains("etcd-snapshot-schedule-cron"), "{e}");
        let e = Schedule::parse("@every soon").unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
    }
}
