//! Small helpers used by the generated per-type converters (`generated.rs`).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_pb as pb;
use serde_json::{Map, Value};

use crate::ProtoError;

/// How a field is emitted when it is unset or holds its zero value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Required in the JSON schema (no `omitempty`): always emitted, zero when unset.
    Req,
    /// Go pointer (`*int32`, `*bool`, `*string`): emitted whenever set, zero included.
    Ptr,
    /// Go value field with `omitempty`: omitted when unset or zero.
    Omit,
}

/// Scalar protobuf field types that map to a JSON scalar.
pub(crate) trait Scalar: Clone + Default + PartialEq + Into<Value> {}
impl Scalar for String {}
impl Scalar for bool {}
impl Scalar for i32 {}
impl Scalar for i64 {}
impl Scalar for f64 {}

pub(crate) fn scalar<T: Scalar>(o: &mut Map<String, Value>, k: &str, v: &Option<T>, mode: Mode) {
    match v {
        Some(x) if mode == Mode::Omit && *x == T::default() => {}
        Some(x) => {
            o.insert(k.to_owned(), x.clone().into());
        }
        None if mode == Mode::Req => {
            o.insert(k.to_owned(), T::default().into());
        }
        None => {}
    }
}

pub(crate) fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

pub(crate) fn bytes(o: &mut Map<String, Value>, k: &str, v: &Option<Vec<u8>>, mode: Mode) {
    match v {
        Some(x) if mode == Mode::Omit && x.is_empty() => {}
        Some(x) => {
            o.insert(k.to_owned(), b64(x));
        }
        None if mode == Mode::Req => {
            o.insert(k.to_owned(), b64(&[]));
        }
        None => {}
    }
}

pub(crate) fn list<T>(
    o: &mut Map<String, Value>,
    k: &str,
    v: &[T],
    f: impl Fn(&T) -> Value,
    mode: Mode,
) {
    if v.is_empty() && mode != Mode::Req {
        return;
    }
    o.insert(k.to_owned(), Value::Array(v.iter().map(f).collect()));
}

pub(crate) fn map<T>(
    o: &mut Map<String, Value>,
    k: &str,
    v: &BTreeMap<String, T>,
    f: impl Fn(&T) -> Value,
    mode: Mode,
) {
    if v.is_empty() && mode != Mode::Req {
        return;
    }
    let m: Map<String, Value> = v.iter().map(|(k, x)| (k.clone(), f(x))).collect();
    o.insert(k.to_owned(), Value::Object(m));
}

/// A nested message. Present messages are emitted even when empty (Go has no
/// `omitempty` for structs: `"resources": {}`); absent ones only when required.
pub(crate) fn msg<T: Default>(
    o: &mut Map<String, Value>,
    k: &str,
    v: Option<&T>,
    f: fn(&T) -> Value,
    mode: Mode,
) {
    match v {
        Some(x) => {
            o.insert(k.to_owned(), f(x));
        }
        None if mode == Mode::Req => {
            o.insert(k.to_owned(), f(&T::default()));
        }
        None => {}
    }
}

/// A message with a custom JSON form (Time, Quantity, IntOrString, ...);
/// `f` returns `None` for a value that Go would omit (the zero Time).
pub(crate) fn special<T: Default>(
    o: &mut Map<String, Value>,
    k: &str,
    v: Option<&T>,
    f: fn(&T) -> Option<Value>,
    mode: Mode,
) {
    let val = match v {
        Some(x) => f(x),
        None if mode == Mode::Req => f(&T::default()),
        None => None,
    };
    if let Some(val) = val {
        o.insert(k.to_owned(), val);
    }
}

/// A Go embedded struct (`json:",inline"`): its fields join the parent's.
pub(crate) fn inline(o: &mut Map<String, Value>, v: Option<Value>) {
    if let Some(Value::Object(m)) = v {
        o.extend(m);
    }
}

/// Decodes a top-level object and sets `kind` / `apiVersion` first, as Go does.
pub(crate) fn root<T: prost::Message + Default>(
    raw: &[u8],
    api_version: &str,
    kind: &str,
    f: fn(&T) -> Value,
) -> Result<Value, ProtoError> {
    let m = T::decode(raw).map_err(|source| ProtoError::Body {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        source,
    })?;
    let mut o = Map::new();
    o.insert("kind".into(), kind.into());
    o.insert("apiVersion".into(), api_version.into());
    if let Value::Object(rest) = f(&m) {
        o.extend(rest);
    }
    Ok(Value::Object(o))
}

// ---- special types ----

/// Seconds of Go's zero `time.Time` (0001-01-01T00:00:00Z), which gogo writes
/// for an unset non-pointer `metav1.Time` such as `creationTimestamp`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

fn is_zero_time(s: i64, n: i32) -> bool {
    n == 0 && (s == 0 || s == GO_ZERO_TIME)
}

/// Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 in UTC, seconds precision, or with `frac` fractional digits.
pub(crate) fn rfc3339(secs: i64, nanos: i32, micros: bool) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if micros {
        let us = nanos.max(0) / 1000;
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

pub(crate) fn time(t: &pb::apimachinery::pkg::apis::meta::v1::Time) -> Option<Value> {
    let (s, n) = (t.seconds.unwrap_or(0), t.nanos.unwrap_or(0));
    (!is_zero_time(s, n)).then(|| Value::String(rfc3339(s, n, false)))
}

pub(crate) fn micro_time(t: &pb::apimachinery::pkg::apis::meta::v1::MicroTime) -> Option<Value> {
    let (s, n) = (t.seconds.unwrap_or(0), t.nanos.unwrap_or(0));
    (!is_zero_time(s, n)).then(|| Value::String(rfc3339(s, n, true)))
}

/// Go's `time.Duration.String()`: "1h2m3s", "1.5s", "250ms", "0s".
#[allow(dead_code)]
pub(crate) fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    let frac = |v: u64, unit: u64| -> String {
        let whole = v / unit;
        let rem = v % unit;
        if rem == 0 {
            whole.to_string()
        } else {
            let digits = unit.to_string().len() - 1;
            let f = format!("{rem:0digits$}");
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 1_000));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 1_000_000));
    }
    let secs = u / 1_000_000_000;
    let sub = u % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let s_str = frac(s * 1_000_000_000 + sub, 1_000_000_000);
    if h > 0 {
        format!("{sign}{h}h{m}m{s_str}s")
    } else if m > 0 {
        format!("{sign}{m}m{s_str}s")
    } else {
        format!("{sign}{s_str}s")
    }
}

#[allow(dead_code)] // no covered kind has a metav1.Duration field yet
pub(crate) fn duration(d: &pb::apimachinery::pkg::apis::meta::v1::Duration) -> Option<Value> {
    Some(Value::String(go_duration(d.duration.unwrap_or(0))))
}

pub(crate) fn quantity(q: &pb::apimachinery::pkg::api::resource::Quantity) -> Option<Value> {
    Some(Value::String(
        q.string.clone().unwrap_or_else(|| "0".into()),
    ))
}

pub(crate) fn int_or_string(v: &pb::apimachinery::pkg::util::intstr::IntOrString) -> Option<Value> {
    Some(if v.r#type == Some(1) {
        Value::String(v.str_val.clone().unwrap_or_default())
    } else {
        Value::from(v.int_val.unwrap_or(0))
    })
}

/// Embedded raw JSON (or a nested `k8s\0` protobuf object).
fn raw_json(raw: &[u8]) -> Option<Value> {
    if raw.is_empty() {
        return None;
    }
    if raw.starts_with(crate::MAGIC) {
        return crate::decode(raw).ok().or(Some(Value::Null));
    }
    Some(serde_json::from_slice(raw).unwrap_or(Value::Null))
}

pub(crate) fn fields_v1(v: &pb::apimachinery::pkg::apis::meta::v1::FieldsV1) -> Option<Value> {
    raw_json(v.raw.as_deref().unwrap_or_default())
}

pub(crate) fn raw_extension(v: &pb::apimachinery::pkg::runtime::RawExtension) -> Option<Value> {
    raw_json(v.raw.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0, 0, false), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_704_164_645, 0, false), "2024-01-02T03:04:05Z");
        assert_eq!(
            rfc3339(1_704_164_645, 123_456_789, true),
            "2024-01-02T03:04:05.123456Z"
        );
        assert_eq!(rfc3339(951_782_400, 0, false), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1, 0, false), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(250_000_000), "250ms");
        assert_eq!(go_duration(-90_000_000_000), "-1m30s");
        assert_eq!(go_duration(1_500), "1.5µs");
    }
}
