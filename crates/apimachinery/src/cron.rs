//! CronJob schedules: the standard 5-field cron syntax and the `@hourly`
//! style descriptors, with the semantics and the error texts of the
//! parser kube-apiserver validates `spec.schedule` with and the CronJob
//! controller schedules by (robfig/cron v3 `ParseStandard`).
//!
//! Hand-written rather than taken from a cron crate because the API must
//! answer upstream's exact messages (`expected exactly 5 fields, found 1:
//! [x]`) and keep its day rule: when both day-of-month and day-of-week are
//! restricted (neither starts with `*` or `?`) a day matching either one
//! fires, otherwise both must match.
//!
//! Times are civil (wall-clock) times; the caller maps them to and from
//! an instant in the CronJob's `timeZone` (chrono-tz in the controller).

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// The bit set when a field was `*` or `?` (day rule above).
const STAR: u64 = 1 << 63;

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// The IANA zone of a `TZ=`/`CRON_TZ=` prefix (upstream refuses it in
    /// `spec.schedule`, the validation reports it by itself).
    pub zone: Option<String>,
    /// `@every <duration>`: a constant delay instead of the fields.
    every: Option<std::time::Duration>,
}

/// Why a schedule does not parse; `Display` is upstream's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

fn err(s: String) -> CronError {
    CronError(s)
}

/// Go's `strconv.Atoi` error text for `s`.
fn atoi(s: &str) -> Result<i64, CronError> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing \"{s}\": invalid syntax"
        )));
    }
    s.parse::<i64>().map_err(|_| {
        err(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing \"{s}\": value out of range"
        ))
    })
}

fn must_parse_int(s: &str) -> Result<u32, CronError> {
    let n = atoi(s)?;
    if n < 0 {
        return Err(err(format!("negative number ({n}) not allowed: {s}")));
    }
    Ok(n.min(u32::MAX as i64) as u32)
}

fn int_or_name(s: &str, b: &Bounds) -> Result<u32, CronError> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    must_parse_int(s)
}

fn bits(min: u32, max: u32, step: u32) -> u64 {
    let mut out = 0u64;
    let mut i = min;
    while i <= max && i < 63 {
        out |= 1 << i;
        i += step;
    }
    out
}

fn range(expr: &str, b: &Bounds) -> Result<u64, CronError> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_high.len() == 1;
    let (start, mut end, mut extra);
    if low_high[0] == "*" || low_high[0] == "?" {
        start = b.min;
        end = b.max;
        extra = STAR;
    } else {
        extra = 0;
        start = int_or_name(low_high[0], b)?;
        end = match low_high.len() {
            1 => start,
            2 => int_or_name(low_high[1], b)?,
            _ => return Err(err(format!("too many hyphens: {expr}"))),
        };
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = must_parse_int(range_and_step[1])?;
            // "N/step" means "N-max/step".
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(err(format!("too many slashes: {expr}"))),
    };
    if start < b.min {
        return Err(err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        )));
    }
    if end > b.max {
        return Err(err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        )));
    }
    if start > end {
        return Err(err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(err(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    Ok(bits(start, end, step) | extra)
}

fn field(f: &str, b: &Bounds) -> Result<u64, CronError> {
    let mut out = 0;
    for expr in f.split(',').filter(|s| !s.is_empty()) {
        out |= range(expr, b)?;
    }
    Ok(out)
}

/// Parses a schedule as upstream's `cron.ParseStandard` does.
pub fn parse(spec: &str) -> Result<Schedule, CronError> {
    if spec.is_empty() {
        return Err(err("empty spec string".into()));
    }
    let mut spec = spec;
    let mut zone = None;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let eq = spec.find('=').unwrap_or(0);
        let Some(sp) = spec.find(' ') else {
            return Err(err(format!(
                "provided bad location {}: unknown time zone {}",
                &spec[eq + 1..],
                &spec[eq + 1..]
            )));
        };
        zone = Some(spec[eq + 1..sp].to_string());
        spec = spec[sp..].trim();
    }
    let all = |b: &Bounds| bits(b.min, b.max, 1) | STAR;
    if spec.starts_with('@') {
        let one = |v: u32| 1u64 << v;
        let (minute, hour, dom, month, dow) = match spec {
            "@yearly" | "@annually" => (one(0), one(0), one(1), one(1), all(&DOW)),
            "@monthly" => (one(0), one(0), one(1), all(&MONTHS), all(&DOW)),
            "@weekly" => (one(0), one(0), all(&DOM), all(&MONTHS), one(0)),
            "@daily" | "@midnight" => (one(0), one(0), all(&DOM), all(&MONTHS), all(&DOW)),
            "@hourly" => (one(0), all(&HOURS), all(&DOM), all(&MONTHS), all(&DOW)),
            _ if spec.starts_with("@every ") => {
                let d = crate::duration::parse_go_duration(&spec["@every ".len()..])
                    .map_err(|e| err(format!("failed to parse duration {spec}: {e}")))?;
                // robfig/cron: whole seconds, at least one.
                let d = std::time::Duration::from_secs(d.as_secs().max(1));
                return Ok(Schedule {
                    minute: 0,
                    hour: 0,
                    dom: 0,
                    month: 0,
                    dow: 0,
                    zone,
                    every: Some(d),
                });
            }
            _ => return Err(err(format!("unrecognized descriptor: {spec}"))),
        };
        return Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            zone,
            every: None,
        });
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        )));
    }
    Ok(Schedule {
        minute: field(fields[0], &MINUTES)?,
        hour: field(fields[1], &HOURS)?,
        dom: field(fields[2], &DOM)?,
        month: field(fields[3], &MONTHS)?,
        dow: field(fields[4], &DOW)?,
        zone,
        every: None,
    })
}

fn has(set: u64, v: u32) -> bool {
    set & (1 << v) != 0
}

impl Schedule {
    /// The delay of an `@every` schedule, which fires that long after the
    /// previous time (whole seconds, time-zone free) rather than on
    /// civil minutes: [`Schedule::matches`] and [`Schedule::next`] do not
    /// apply to it.
    pub fn every(&self) -> Option<std::time::Duration> {
        self.every
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        let dom = has(self.dom, d.day());
        let dow = has(self.dow, d.weekday().num_days_from_sunday());
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether the civil minute `t` is one of the schedule's.
    pub fn matches(&self, t: NaiveDateTime) -> bool {
        has(self.month, t.month())
            && self.day_matches(t.date())
            && has(self.hour, t.hour())
            && has(self.minute, t.minute())
    }

    /// The first civil minute strictly after `t` that the schedule
    /// fires at, searched up to five years ahead (`None` past that, as
    /// for `0 0 30 2 *`).
    pub fn next(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = t.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let limit = t.year() + 5;
        while t.year() <= limit {
            if !has(self.month, t.month()) {
                // First minute of the next month.
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_time(NaiveTime::MIN);
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_time(NaiveTime::MIN);
                continue;
            }
            if !has(self.hour, t.hour()) {
                t = t.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if !has(self.minute, t.minute()) {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_takes_go_durations_in_whole_seconds() {
        assert_eq!(
            parse("@every 1h30m").unwrap().every(),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse("@every 1500ms").unwrap().every(),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(
            parse("@every 10ms").unwrap().every(),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(parse("@hourly").unwrap().every(), None);
        let e = parse("@every soon").unwrap_err().to_string();
        assert!(
            e.starts_with("failed to parse duration @every soon: "),
            "{e}"
        );
    }

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn upstream_messages() {
        let e = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(e("bad"), "expected exactly 5 fields, found 1: [bad]");
        assert_eq!(
            e("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(e(""), "empty spec string");
        assert_eq!(e("@often"), "unrecognized descriptor: @often");
        assert_eq!(e("61 * * * *"), "end of range (61) above maximum (59): 61");
        assert_eq!(
            e("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            e("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            e("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(e("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(
            e("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
    }

    #[test]
    fn next_times() {
        let s = parse("*/1 * * * *").unwrap();
        assert_eq!(s.next(at("2024-01-01 10:00")), Some(at("2024-01-01 10:01")));
        let s = parse("*/15 * * * *").unwrap();
        assert_eq!(s.next(at("2024-01-01 10:14")), Some(at("2024-01-01 10:15")));
        assert_eq!(s.next(at("2024-01-01 10:45")), Some(at("2024-01-01 11:00")));
        let s = parse("@hourly").unwrap();
        assert_eq!(s.next(at("2024-12-31 23:30")), Some(at("2025-01-01 00:00")));
        let s = parse("30 2 * * MON-FRI").unwrap();
        // 2024-01-06 is a Saturday.
        assert_eq!(s.next(at("2024-01-06 00:00")), Some(at("2024-01-08 02:30")));
        // Both days restricted: either fires (the 1st, or a Sunday).
        let s = parse("0 0 1 * 0").unwrap();
        assert_eq!(s.next(at("2024-01-01 00:00")), Some(at("2024-01-07 00:00")));
        assert!(
            parse("0 0 30 2 *")
                .unwrap()
                .next(at("2024-01-01 00:00"))
                .is_none()
        );
        assert_eq!(
            parse("0 0 * jan,Dec *")
                .unwrap()
                .next(at("2024-02-01 00:00")),
            Some(at("2024-12-01 00:00"))
        );
    }
}
