//! Human-readable durations as printed in kubectl's AGE columns
//! (upstream: apimachinery `pkg/util/duration.HumanDuration`).

use std::time::Duration;

/// Formats a non-negative age the way kubectl's AGE / LAST SEEN columns do
/// (`90s`, `5m30s`, `3h20m`, `2d5h`, `30d`, `2y10d`).
pub fn human_duration(d: Duration) -> String {
    human_duration_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Same as [`human_duration`] but for a signed number of whole seconds, so
/// callers computing `now - creationTimestamp` can pass clock skew through:
/// up to one second in the future prints `0s`, more prints `<invalid>`,
/// exactly like upstream.
pub fn human_duration_secs(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        return format!("{hours}h{m}m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        return format!("{}d{h}h", hours / 24);
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        return format!("{}y{dy}d", hours / 24 / 365);
    }
    format!("{}y", hours / 24 / 365)
}

/// A Go duration as `time.ParseDuration` reads it (`5m0s`, `30s`,
/// `1h30m`, `250ms`), positive: the `etcd-s3-timeout` flag, `@every`
/// schedules.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{t:?} is not a duration such as 5m0s, 30s or 1h");
    let mut rest = t;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "\u{b5}s" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    if total <= 0.0 {
        return Err(format!("{t:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(secs: u64) -> String {
        human_duration(Duration::from_secs(secs))
    }

    #[test]
    fn seconds_band() {
        assert_eq!(h(0), "0s");
        assert_eq!(h(90), "90s");
        assert_eq!(h(119), "119s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1s");
    }

    #[test]
    fn negative_skew() {
        assert_eq!(human_duration_secs(-1), "0s");
        assert_eq!(human_duration_secs(-2), "<invalid>");
    }

    #[test]
    fn minutes_with_seconds_band() {
        assert_eq!(h(120), "2m");
        assert_eq!(h(330), "5m30s");
        assert_eq!(h(599), "9m59s");
    }

    #[test]
    fn minutes_band() {
        assert_eq!(h(600), "10m");
        assert_eq!(h(15 * 60 + 59), "15m");
        assert_eq!(h(179 * 60), "179m");
    }

    #[test]
    fn hours_with_minutes_band() {
        assert_eq!(h(3 * 3600), "3h");
        assert_eq!(h(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(h(8 * 3600 - 1), "7h59m");
    }

    #[test]
    fn hours_band() {
        assert_eq!(h(8 * 3600), "8h");
        assert_eq!(h(47 * 3600 + 3599), "47h");
    }

    #[test]
    fn days_with_hours_band() {
        assert_eq!(h(48 * 3600), "2d");
        assert_eq!(h(53 * 3600), "2d5h");
        assert_eq!(h(8 * 86400 - 1), "7d23h");
    }

    #[test]
    fn days_band() {
        assert_eq!(h(8 * 86400), "8d");
        assert_eq!(h(30 * 86400), "30d");
        assert_eq!(h(729 * 86400), "729d");
    }

    #[test]
    fn years_with_days_band() {
        assert_eq!(h(730 * 86400), "2y");
        assert_eq!(h(740 * 86400), "2y10d");
    }

    #[test]
    fn years_band() {
        assert_eq!(h(365 * 8 * 86400), "8y");
        assert_eq!(h(365 * 20 * 86400 + 5 * 86400), "20y");
    }
}
