//! OpenAPI v3 validation of a custom object, as kube-openapi's validator
//! and apiextensions' conversion of its errors word it
//! (`spec.replicas in body must be of type integer: "string"`), then the
//! list-type checks (`Duplicate value`) and embedded resources'
//! `apiVersion`/`kind`.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::{Map, Value};

use crate::{FieldError, Node, child, index};

/// The OpenAPI type name of a JSON value.
pub(crate) fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                "integer"
            } else {
                "number"
            }
        }
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64()
                || n.is_u64()
                || n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => false,
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        _ => true,
    }
}

/// A float as Go's `%v` prints it.
fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Validates `v` at `path` against `node`. `structural` nodes check their
/// type; nested value validations (under allOf/anyOf/oneOf/not) only what
/// they state.
pub(crate) fn validate(
    node: &Node,
    v: &Value,
    path: &str,
    is_root: bool,
    errs: &mut Vec<FieldError>,
) {
    validate_node(node, v, None, path, is_root, true, errs)
}

/// Validation of an update with ratcheting (upstream's
/// `CRDValidationRatcheting`): a value equal to the old value it correlates
/// with (same property, same map-list key) is not checked again, so data
/// stored under an older schema can still be updated elsewhere.
pub(crate) fn validate_update(node: &Node, v: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    validate_node(node, v, Some(old), "", true, true, errs)
}

/// The old item correlating with `item` in a list of `node`: by the map
/// keys of a map list; nothing for other lists.
pub(crate) fn correlated_item<'a>(
    node: &Node,
    item: &Value,
    old: Option<&'a Value>,
) -> Option<&'a Value> {
    if node.list_type.as_deref() != Some("map") {
        return None;
    }
    old?.as_array()?
        .iter()
        .find(|o| node.list_map_keys.iter().all(|k| o.get(k) == item.get(k)))
}

fn validate_node(
    node: &Node,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    is_root: bool,
    structural: bool,
    errs: &mut Vec<FieldError>,
) {
    if v.is_null() && node.nullable {
        return;
    }
    if old == Some(v) {
        return;
    }
    // go-openapi names the field before "in body" (nothing at the root).
    let ib = if path.is_empty() {
        "in body".to_string()
    } else {
        format!("{path} in body")
    };
    // Type.
    if node.int_or_string {
        if !(is_integer(v) || v.is_string()) {
            errs.push(FieldError {
                field: path.to_string(),
                kind: "Invalid value".into(),
                detail: format!(
                    "{}: {ib} must be of type integer,string: {}",
                    crate::go_quote(type_of(v)),
                    crate::go_quote(type_of(v))
                ),
            });
            return;
        }
    } else if let Some(ty) = node.ty.as_deref()
        && !type_matches(ty, v)
    {
        errs.push(FieldError {
            field: path.to_string(),
            kind: "Invalid value".into(),
            detail: format!(
                "{}: {ib} must be of type {ty}: {}",
                crate::go_quote(type_of(v)),
                crate::go_quote(type_of(v))
            ),
        });
        return;
    }
    if v.is_null() && node.ty.is_none() && !structural {
        return;
    }

    // Format (the ones upstream keeps), on strings.
    if let (Some(format), Value::String(s)) = (node.format.as_deref(), v)
        && !format_ok(format, s)
    {
        errs.push(FieldError::invalid(
            path,
            v,
            &format!("{ib} must be of type {format}: {}", crate::go_quote(s)),
        ));
    }

    // Enum.
    if let Some(values) = &node.enum_
        && !values.iter().any(|e| json_eq(e, v))
    {
        let supported: Vec<String> = values
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        errs.push(FieldError::not_supported(path, v, &supported));
    }

    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if let Some(min) = node.minimum {
                if node.exclusive_minimum && f <= min {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{ib} should be greater than {}", go_float(min)),
                    ));
                } else if f < min {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{ib} should be greater than or equal to {}", go_float(min)),
                    ));
                }
            }
            if let Some(max) = node.maximum {
                if node.exclusive_maximum && f >= max {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{ib} should be less than {}", go_float(max)),
                    ));
                } else if f > max {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{ib} should be less than or equal to {}", go_float(max)),
                    ));
                }
            }
            if let Some(m) = node.multiple_of
                && m > 0.0
            {
                let q = f / m;
                if (q - q.round()).abs() > 1e-9 {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{ib} should be a multiple of {}", go_float(m)),
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as i64;
            if let Some(max) = node.max_length
                && len > max
            {
                errs.push(FieldError {
                    field: path.to_string(),
                    kind: "Too long".into(),
                    detail: format!(
                        "may not be more than {max} {}",
                        if max == 1 { "byte" } else { "bytes" }
                    ),
                });
            }
            if let Some(min) = node.min_length
                && len < min
            {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    &format!("{ib} should be at least {min} chars long"),
                ));
            }
            if let Some((p, re)) = &node.pattern
                && !re.is_match(s)
            {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    &format!("{ib} should match '{p}'"),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as i64;
            if let Some(max) = node.max_items
                && n > max
            {
                errs.push(FieldError {
                    field: path.to_string(),
                    kind: "Too many".into(),
                    detail: format!("{n}: must have at most {max} items"),
                });
            }
            if let Some(min) = node.min_items
                && n < min
            {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    &format!("{ib} should have at least {min} items"),
                ));
            }
            if node.unique_items {
                let mut seen = BTreeSet::new();
                if !items.iter().all(|i| seen.insert(canonical(i))) {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{ib} shouldn't contain duplicates"),
                    ));
                }
            }
            if let Some(item_node) = node.items.as_deref() {
                for (i, item) in items.iter().enumerate() {
                    let old_item = correlated_item(node, item, old);
                    validate_node(
                        item_node,
                        item,
                        old_item,
                        &index(path, i),
                        false,
                        structural,
                        errs,
                    );
                }
            }
            if structural {
                list_type_checks(node, items, path, errs);
            }
        }
        Value::Object(obj) => {
            let n = obj.len() as i64;
            if let Some(max) = node.max_properties
                && n > max
            {
                errs.push(FieldError {
                    field: path.to_string(),
                    kind: "Too many".into(),
                    detail: format!("{n}: must have at most {max} items"),
                });
            }
            if let Some(min) = node.min_properties
                && n < min
            {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    &format!("{ib} should have at least {min} properties"),
                ));
            }
            for r in &node.required {
                if !obj.contains_key(r) {
                    errs.push(FieldError::required(&child(path, r), ""));
                }
            }
            let old_obj = old.and_then(|o| o.as_object());
            for (k, val) in obj {
                let old_val = old_obj.and_then(|o| o.get(k));
                if is_root && structural && (k == "metadata" || k == "apiVersion" || k == "kind") {
                    // ObjectMeta and type meta are the apiserver's to check;
                    // the schema may only restrict name/generateName.
                    if let Some(p) = node.properties.get(k.as_str()) {
                        validate_node(p, val, old_val, &child(path, k), false, structural, errs);
                    }
                    continue;
                }
                if let Some(p) = node.properties.get(k.as_str()) {
                    validate_node(p, val, old_val, &child(path, k), false, structural, errs);
                } else if let Some(a) = node.additional.as_deref() {
                    validate_node(a, val, old_val, &child(path, k), false, structural, errs);
                }
            }
            if structural && node.embedded {
                embedded_checks(obj, path, errs);
            }
        }
        _ => {}
    }

    // Junctors.
    for sub in &node.all_of {
        validate_node(sub, v, None, path, false, false, errs);
    }
    if !node.any_of.is_empty() && !node.any_of.iter().any(|s| valid(s, v, path)) {
        errs.push(FieldError::invalid(
            path,
            &Value::String(String::new()),
            &format!("{ib} must validate at least one schema (anyOf)"),
        ));
    }
    if !node.one_of.is_empty() {
        let n = node.one_of.iter().filter(|s| valid(s, v, path)).count();
        if n != 1 {
            errs.push(FieldError::invalid(
                path,
                &Value::String(String::new()),
                &format!("{ib} must validate one and only one schema (oneOf)"),
            ));
        }
    }
    if let Some(not) = node.not.as_deref()
        && valid(not, v, path)
    {
        errs.push(FieldError::invalid(
            path,
            &Value::String(String::new()),
            &format!("{ib} must not validate the schema (not)"),
        ));
    }
}

fn valid(node: &Node, v: &Value, path: &str) -> bool {
    let mut e = Vec::new();
    validate_node(node, v, None, path, false, false, &mut e);
    e.is_empty()
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A canonical text of a value, for set membership.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: std::collections::BTreeMap<&String, String> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            format!("{sorted:?}")
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        Value::Number(n) => n
            .as_f64()
            .map(|f| f.to_string())
            .unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

/// `x-kubernetes-list-type: set` items and `map` keys must be unique.
fn list_type_checks(node: &Node, items: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    match node.list_type.as_deref() {
        Some("set") => {
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(canonical(item)) {
                    errs.push(FieldError::duplicate(&index(path, i), item));
                }
            }
        }
        Some("map") => {
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let Value::Object(obj) = item else { continue };
                let mut keys = Map::new();
                for k in &node.list_map_keys {
                    // A key without value takes its default, as upstream
                    // compares after defaulting.
                    let val = obj
                        .get(k)
                        .cloned()
                        .or_else(|| {
                            node.items
                                .as_deref()
                                .and_then(|n| n.properties.get(k))
                                .and_then(|p| p.default.clone())
                        })
                        .unwrap_or(Value::Null);
                    keys.insert(k.clone(), val);
                }
                let keys = Value::Object(keys);
                if !seen.insert(canonical(&keys)) {
                    errs.push(FieldError::duplicate(&index(path, i), &keys));
                }
            }
        }
        _ => {}
    }
}

/// An embedded resource needs `apiVersion` and `kind`.
fn embedded_checks(obj: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    for k in ["apiVersion", "kind"] {
        match obj.get(k) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => errs.push(FieldError::required(&child(path, k), "must not be empty")),
        }
    }
}

/// The string formats kube-apiserver keeps (it strips the others).
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "uuid" | "uuid3" | "uuid4" | "uuid5" => {
            let b = s.as_bytes();
            b.len() == 36
                && b.iter().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                })
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => {
            let Some((ip, bits)) = s.split_once('/') else {
                return false;
            };
            let Ok(bits) = bits.parse::<u8>() else {
                return false;
            };
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => bits <= 32,
                Ok(std::net::IpAddr::V6(_)) => bits <= 128,
                Err(_) => false,
            }
        }
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            matches!(parts.len(), 6 | 8 | 20)
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        }
        "hostname" => {
            !s.is_empty()
                && s.len() <= 255
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        }
        "email" => {
            let Some((local, domain)) = s.rsplit_once('@') else {
                return false;
            };
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        }
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "date-time" | "datetime" => {
            chrono::DateTime::parse_from_rfc3339(s).is_ok()
                || chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
        }
        "duration" => go_duration(s),
        "hexcolor" => {
            s.len() == 7 && s.starts_with('#') && s[1..].chars().all(|c| c.is_ascii_hexdigit())
                || s.len() == 4
                    && s.starts_with('#')
                    && s[1..].chars().all(|c| c.is_ascii_hexdigit())
        }
        _ => true,
    }
}

/// A Go duration (`1h30m`, `-1.5s`), or go-openapi's `<n> <unit>` form.
fn go_duration(s: &str) -> bool {
    let t = s.trim_start_matches(['-', '+']);
    if t == "0" {
        return true;
    }
    let units = ["ns", "us", "µs", "ms", "s", "m", "h", "d", "w"];
    let mut rest = t;
    let mut any = false;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            break;
        }
        let after = rest[num_end..].trim_start();
        let Some(unit) = units
            .iter()
            .filter(|u| after.starts_with(**u))
            .max_by_key(|u| u.len())
        else {
            // go-openapi also accepts words ("3 days").
            let word: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if word.is_empty() {
                return false;
            }
            rest = &after[word.len()..];
            any = true;
            continue;
        };
        rest = &after[unit.len()..];
        any = true;
    }
    any && rest.is_empty()
}
