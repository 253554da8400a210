//! The part of the Prometheus text format the metrics server reads: the
//! samples of kubelet's `/metrics/resource` (`name{labels} value
//! [timestamp-ms]`). Comments, blank lines and families it does not use
//! are skipped; a malformed sample line is an error naming the line.

use std::collections::BTreeMap;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
    /// Timestamp in milliseconds, when given.
    pub timestamp_ms: Option<i64>,
}

/// A line that is not a sample.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    // `s` starts after '{'.
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(name, value);
        rest = &rest[end + 1..];
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

/// The samples of `text` whose name `wanted` accepts.
pub fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !wanted(name) {
            continue;
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| err(format!("{name}: no value")))?;
        let timestamp_ms = match fields.next() {
            None => None,
            Some(t) => Some(
                t.parse()
                    .map_err(|_| err(format!("{name}: bad timestamp {t:?}")))?,
            ),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
            timestamp_ms,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_text_parses() {
        let text = "# HELP node_cpu_usage_seconds_total [STABLE] x\n# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total 123.45 1700000100000\ncontainer_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"we\\\"b\"} 2.5e+00 1700000100000\ncontainer_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1.7000000015e+09\nother_metric{a=\"b\"} 1\nresource_scrape_error 0\n";
        let s = parse(text, |n| n != "other_metric").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "node_cpu_usage_seconds_total");
        assert_eq!(s[0].value, 123.45);
        assert_eq!(s[0].timestamp_ms, Some(1_700_000_100_000));
        assert_eq!(s[1].labels["pod"], "we\"b");
        assert_eq!(s[1].labels["container"], "app");
        assert_eq!(s[1].value, 2.5);
        assert_eq!(s[2].value, 1_700_000_001.5);
        assert_eq!(s[2].timestamp_ms, None);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let e = parse("a 1\nb{x=\"1} 2\n", |_| true).unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("a one\n", |_| true).unwrap_err();
        assert!(e.reason.contains("no value"), "{e}");
        let e = parse("a 1 soon\n", |_| true).unwrap_err();
        assert!(e.reason.contains("timestamp"), "{e}");
    }
}
