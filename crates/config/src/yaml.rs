//! Reading one config file into ordered `(key, value, line)` entries.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::ConfigError;

/// One top-level `key: value` of a config file.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub value: Value,
    /// 1-based line of the value (of the key for scalars on the same line).
    pub line: usize,
    /// The raw source text of a scalar value, when it could be recovered
    /// (used so that `0644` stays `0644` whatever YAML thinks it is).
    pub raw: Option<String>,
}

struct Entries(Vec<(String, Spanned<Value>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of flag names to values")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Value>()? {
                    let key = match k {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    let v = map.next_value::<Spanned<Value>>()?;
                    out.push((key, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the text of a config file. Errors carry the parser's line/column.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
    {
        return Ok(Vec::new());
    }
    let entries: Entries = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let rendered = e.to_string();
        let message = rendered.lines().next().unwrap_or("invalid YAML").trim();
        let message = strip_position(message.strip_prefix("error:").unwrap_or(message).trim());
        ConfigError::Yaml {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    })?;
    Ok(entries
        .0
        .into_iter()
        .map(|(key, sv)| {
            let loc = sv.referenced;
            let raw = match (&sv.value, loc.span().byte_offset(), loc.span().byte_len()) {
                (Value::Number(_), Some(off), Some(len)) => text
                    .get(off as usize..(off + len) as usize)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
                _ => None,
            };
            let line = if loc.line() > 0 {
                loc.line() as usize
            } else {
                key_line(text, &key).unwrap_or(0)
            };
            Entry {
                key,
                value: sv.value,
                line,
                raw,
            }
        })
        .collect())
}

/// Line (1-based) of the first top-level line starting with `key:` / `key+:`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start_matches(['"', '\'']);
            l.strip_prefix(key)
                .map(|rest| {
                    let rest = rest.trim_start_matches(['"', '\'']);
                    rest.starts_with(':') || rest.starts_with("+:")
                })
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}

/// Line (1-based) of a list item: the first line at or after `from` that
/// contains `item`; `from` when none does.
pub(crate) fn item_line(text: &str, from: usize, item: &str) -> usize {
    if from == 0 {
        return 0;
    }
    text.lines()
        .enumerate()
        .skip(from - 1)
        .find(|(_, l)| l.contains(item))
        .map(|(i, _)| i + 1)
        .unwrap_or(from)
}

/// Drops a leading `line N column M:` (we print the position ourselves).
fn strip_position(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((pos, tail)) = rest.split_once(':')
        && pos
            .split_whitespace()
            .all(|w| w == "column" || w.chars().all(|c| c.is_ascii_digit()))
    {
        return tail.trim().to_string();
    }
    msg.to_string()
}
