//! The simple JSONPath of CRD printer columns and selectable fields
//! (`.status.conditions[?(@.type=="Ready")].status`): field steps,
//! bracketed names, indexes, `[*]` and equality filters. Only the first
//! match is ever needed (upstream prints the first result too).

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.a.b=="v")]` (or `!=`): elements whose field path compares.
    Filter {
        path: Vec<String>,
        equal: bool,
        value: Value,
    },
}

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported JSONPath {path:?}: {why}")]
pub struct PathError {
    /// The path.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

fn parse(path: &str) -> Result<Vec<Step>, PathError> {
    let err = |why: &str| PathError {
        path: path.to_string(),
        why: why.to_string(),
    };
    let body = path.trim();
    let body = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(body);
    let body = body.strip_prefix('$').unwrap_or(body);
    if !body.starts_with('.') && !body.starts_with('[') {
        return Err(err("must start with '.'"));
    }
    let chars: Vec<char> = body.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                    j += 1;
                }
                let name: String = chars[start..j].iter().collect();
                if name.is_empty() {
                    return Err(err("empty field name"));
                }
                steps.push(Step::Field(name));
                i = j;
            }
            '[' => {
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .map(|p| p + i)
                    .ok_or_else(|| err("unclosed '['"))?;
                let inner: String = chars[i + 1..close].iter().collect();
                let inner = inner.trim();
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                    steps.push(parse_filter(f).ok_or_else(|| err("unsupported filter"))?);
                } else if let Some(q) = inner
                    .strip_prefix('\'')
                    .and_then(|q| q.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
                {
                    steps.push(Step::Field(q.to_string()));
                } else {
                    let n: usize = inner.parse().map_err(|_| err("unsupported index"))?;
                    steps.push(Step::Index(n));
                }
                i = close + 1;
            }
            _ => return Err(err("unexpected character")),
        }
    }
    Ok(steps)
}

fn parse_filter(f: &str) -> Option<Step> {
    let (lhs, rhs, equal) = if let Some((l, r)) = f.split_once("==") {
        (l, r, true)
    } else {
        let (l, r) = f.split_once("!=")?;
        (l, r, false)
    };
    let path: Vec<String> = lhs
        .trim()
        .strip_prefix("@.")?
        .split('.')
        .map(str::to_string)
        .collect();
    let rhs = rhs.trim();
    let value = if let Some(s) = rhs
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| rhs.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
    {
        Value::String(s.to_string())
    } else {
        serde_json::from_str(rhs).ok()?
    };
    Some(Step::Filter { path, equal, value })
}

/// Checks that `path` is a JSONPath this module evaluates.
pub fn check(path: &str) -> Result<(), PathError> {
    parse(path).map(|_| ())
}

/// The first value `path` selects in `obj`, if any (an unparsable path
/// selects nothing).
pub fn first<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let steps = parse(path).ok()?;
    walk(obj, &steps)
}

fn walk<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    match step {
        Step::Field(name) => walk(v.as_object()?.get(name)?, rest),
        Step::Index(n) => walk(v.as_array()?.get(*n)?, rest),
        Step::All => v.as_array()?.iter().find_map(|e| walk(e, rest)),
        Step::Filter { path, equal, value } => v.as_array()?.iter().find_map(|e| {
            let mut cur = e;
            for p in path {
                cur = cur.get(p)?;
            }
            if (cur == value) == *equal {
                walk(e, rest)
            } else {
                None
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_select_what_printer_columns_use() {
        let obj = json!({
            "spec": {"replicas": 3, "a.b": "dotted", "list": [1, 2]},
            "status": {"conditions": [
                {"type": "Synced", "status": "False"},
                {"type": "Ready", "status": "True", "n": 1}
            ]}
        });
        assert_eq!(first(&obj, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(first(&obj, ".spec['a.b']"), Some(&json!("dotted")));
        assert_eq!(first(&obj, ".spec.list[1]"), Some(&json!(2)));
        assert_eq!(first(&obj, ".spec.list[*]"), Some(&json!(1)));
        assert_eq!(
            first(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(
            first(&obj, r#".status.conditions[?(@.type!="Synced")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(
            first(&obj, r#".status.conditions[?(@.n==1)].type"#),
            Some(&json!("Ready"))
        );
        assert_eq!(first(&obj, ".spec.missing"), None);
        assert_eq!(first(&obj, "{.spec.replicas}"), Some(&json!(3)));
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["spec", ".spec[", ".spec[x]", ".a..b", ".a[?(@.x>1)]"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check(".status.conditions[?(@.type==\"Ready\")].status").is_ok());
    }
}
