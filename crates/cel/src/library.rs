//! The CEL environment: cel-rust's standard library and extensions, plus
//! the Kubernetes library functions cel-rust lacks (lists: `isSorted`,
//! `sum`, `min`, `max`, `indexOf`, `lastIndexOf`; regex: `find`,
//! `findAll`).

use std::cmp::Ordering;
use std::sync::{Arc, OnceLock};

use cel::common::types::{DYN_TYPE, INT_TYPE, LIST_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{ExecutionError, Value};

/// Upstream bounds the regexes it compiles; so does this.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One environment shared by every program: building it registers a few
/// hundred overloads.
pub(crate) fn shared_env() -> Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(build().unwrap_or_else(|_| cel::Env::stdlib())))
        .clone()
}

fn build() -> Result<cel::Env, cel::DeclarationError> {
    let mut env = cel::Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    env.add_extension(cel::extensions::lists)?;
    env.add_extension(cel::extensions::math)?;
    env.add_extension(cel::extensions::encoders)?;
    env.add_member_overload("isSorted", "list_is_sorted", LIST_TYPE, vec![], is_sorted)?;
    env.add_member_overload("sum", "list_sum", LIST_TYPE, vec![], sum)?;
    env.add_member_overload("min", "list_min", LIST_TYPE, vec![], min)?;
    env.add_member_overload("max", "list_max", LIST_TYPE, vec![], max)?;
    env.add_member_overload(
        "indexOf",
        "list_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of,
    )?;
    env.add_member_overload("find", "string_find", STRING_TYPE, vec![STRING_TYPE], find)?;
    env.add_member_overload(
        "findAll",
        "string_find_all",
        STRING_TYPE,
        vec![STRING_TYPE],
        find_all,
    )?;
    env.add_member_overload(
        "findAll",
        "string_find_all_n",
        STRING_TYPE,
        vec![STRING_TYPE, INT_TYPE],
        find_all_n,
    )?;
    add_quantity(&mut env)?;
    add_url(&mut env)?;
    Ok(env)
}

fn values(args: &[CowVal<'_, '_>]) -> Result<Vec<Value>, ExecutionError> {
    args.iter()
        .map(|a| Value::try_from(a.as_ref() as &dyn Val))
        .collect()
}

fn out<'b, 'v>(v: Value) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let boxed: Box<dyn Val> = Box::<dyn Val>::try_from(v)?;
    Ok(CowVal::from(boxed))
}

fn list_of(v: &Value, function: &str) -> Result<Arc<Vec<Value>>, ExecutionError> {
    match v {
        Value::List(l) => Ok(l.clone()),
        _ => Err(ExecutionError::no_such_member_overload(
            function,
            vec![format!("{v:?}")],
        )),
    }
}

/// Orders two values of one comparable type (numbers across int, uint
/// and double, as CEL does).
fn compare(a: &Value, b: &Value, function: &str) -> Result<Ordering, ExecutionError> {
    let num = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    let ord = match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::UInt(x), Value::UInt(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Bytes(x), Value::Bytes(y)) => Some(x.cmp(y)),
        (Value::Duration(x), Value::Duration(y)) => Some(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) => Some(x.cmp(y)),
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
    };
    ord.ok_or_else(|| {
        ExecutionError::function_error(function, format!("no such overload: {a:?} < {b:?}"))
    })
}

fn is_sorted<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let v = values(&args)?;
    let list = list_of(&v[0], "isSorted")?;
    for w in list.windows(2) {
        if compare(&w[0], &w[1], "isSorted")? == Ordering::Greater {
            return out(Value::Bool(false));
        }
    }
    out(Value::Bool(true))
}

fn sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let v = values(&args)?;
    let list = list_of(&v[0], "sum")?;
    let mut acc = match list.first() {
        None => return out(Value::Int(0)),
        Some(Value::Int(_)) => Value::Int(0),
        Some(Value::UInt(_)) => Value::UInt(0),
        Some(Value::Float(_)) => Value::Float(0.0),
        Some(Value::Duration(_)) => Value::Duration(Default::default()),
        Some(other) => {
            return Err(ExecutionError::function_error(
                "sum",
                format!("no such overload: sum of {other:?}"),
            ));
        }
    };
    for item in list.iter() {
        acc = match (&acc, item) {
            (Value::Int(a), Value::Int(b)) => Value::Int(
                a.checked_add(*b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (Value::UInt(a), Value::UInt(b)) => {
                Value::UInt(a.checked_add(*b).ok_or_else(|| {
                    ExecutionError::function_error("sum", "unsigned integer overflow")
                })?)
            }
            (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
            (Value::Duration(a), Value::Duration(b)) => Value::Duration(
                a.checked_add(b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "duration overflow"))?,
            ),
            (_, other) => {
                return Err(ExecutionError::function_error(
                    "sum",
                    format!("no such overload: sum of mixed types ({other:?})"),
                ));
            }
        };
    }
    out(acc)
}

fn extreme<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    function: &str,
    keep: Ordering,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let v = values(&args)?;
    let list = list_of(&v[0], function)?;
    let mut best = list.first().cloned().ok_or_else(|| {
        ExecutionError::function_error(function, format!("{function} called on empty list"))
    })?;
    for item in list.iter().skip(1) {
        if compare(item, &best, function)? == keep {
            best = item.clone();
        }
    }
    out(best)
}

fn min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme(args, "min", Ordering::Less)
}

fn max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme(args, "max", Ordering::Greater)
}

fn position<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    function: &str,
    last: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let v = values(&args)?;
    let list = list_of(&v[0], function)?;
    let needle = v.get(1).cloned().unwrap_or(Value::Null);
    let found = if last {
        list.iter().rposition(|x| *x == needle)
    } else {
        list.iter().position(|x| *x == needle)
    };
    out(Value::Int(found.map(|i| i as i64).unwrap_or(-1)))
}

fn index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position(args, "indexOf", false)
}

fn last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position(args, "lastIndexOf", true)
}

fn regex_args(
    args: &[CowVal<'_, '_>],
    function: &str,
) -> Result<(String, regex::Regex), ExecutionError> {
    let v = values(args)?;
    let (Some(Value::String(s)), Some(Value::String(re))) = (v.first(), v.get(1)) else {
        return Err(ExecutionError::no_such_member_overload(
            function,
            vec!["string".into(), "string".into()],
        ));
    };
    let re = regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ExecutionError::function_error(function, e.to_string()))?;
    Ok((s.to_string(), re))
}

fn find<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (s, re) = regex_args(&args, "find")?;
    let found = re
        .find(&s)
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    out(Value::String(Arc::new(found)))
}

fn find_all_limited<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    limit: Option<i64>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (s, re) = regex_args(&args, "findAll")?;
    let limit = match limit {
        Some(0) => return out(Value::List(Arc::new(Vec::new()))),
        Some(n) if n > 0 => n as usize,
        _ => usize::MAX,
    };
    let found: Vec<Value> = re
        .find_iter(&s)
        .take(limit)
        .map(|m| Value::String(Arc::new(m.as_str().to_string())))
        .collect();
    out(Value::List(Arc::new(found)))
}

fn find_all<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    find_all_limited(args, None)
}

fn find_all_n<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let n = match args.get(2).map(|a| Value::try_from(a.as_ref() as &dyn Val)) {
        Some(Ok(Value::Int(n))) => n,
        _ => -1,
    };
    find_all_limited(args, Some(n))
}

/// The name CEL knows Kubernetes quantities by.
const QUANTITY: &str = "kubernetes.Quantity";

/// A resource quantity (`quantity('1.5Gi')`), held exactly in nano-units.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Quantity {
    nanos: i128,
}

impl cel::objects::Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        QUANTITY
    }
}

fn quantity_type() -> cel::common::types::Type {
    cel::common::types::Type::new_opaque_type(QUANTITY)
}

/// Registers the quantity library: `quantity`, `isQuantity` and the
/// methods of a quantity.
pub(crate) fn add_quantity(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    let q = quantity_type;
    env.add_overload("quantity", "quantity_string", vec![STRING_TYPE], quantity)?;
    env.add_overload(
        "isQuantity",
        "is_quantity_string",
        vec![STRING_TYPE],
        is_quantity,
    )?;
    env.add_member_overload(
        "isInteger",
        "quantity_is_integer",
        q(),
        vec![],
        q_is_integer,
    )?;
    env.add_member_overload(
        "asInteger",
        "quantity_as_integer",
        q(),
        vec![],
        q_as_integer,
    )?;
    env.add_member_overload(
        "asApproximateFloat",
        "quantity_as_approximate_float",
        q(),
        vec![],
        q_as_float,
    )?;
    env.add_member_overload("sign", "quantity_sign", q(), vec![], q_sign)?;
    env.add_member_overload("add", "quantity_add", q(), vec![q()], q_add)?;
    env.add_member_overload("add", "quantity_add_int", q(), vec![INT_TYPE], q_add)?;
    env.add_member_overload("sub", "quantity_sub", q(), vec![q()], q_sub)?;
    env.add_member_overload("sub", "quantity_sub_int", q(), vec![INT_TYPE], q_sub)?;
    env.add_member_overload(
        "compareTo",
        "quantity_compare_to",
        q(),
        vec![q()],
        q_compare,
    )?;
    env.add_member_overload(
        "isGreaterThan",
        "quantity_is_greater_than",
        q(),
        vec![q()],
        q_greater,
    )?;
    env.add_member_overload(
        "isLessThan",
        "quantity_is_less_than",
        q(),
        vec![q()],
        q_less,
    )?;
    Ok(())
}

const NANOS: i128 = 1_000_000_000;

fn quantity_value(nanos: i128) -> Value {
    Value::Opaque(Arc::new(Quantity { nanos }))
}

/// The quantities (or ints, in nano-units) among `args`.
fn quantities(args: &[CowVal<'_, '_>], function: &str) -> Result<Vec<i128>, ExecutionError> {
    values(args)?
        .iter()
        .map(|v| match v {
            Value::Opaque(o) => o
                .downcast_ref::<Quantity>()
                .map(|q| q.nanos)
                .ok_or_else(|| ExecutionError::function_error(function, "no such overload")),
            Value::Int(i) => Ok(i128::from(*i) * NANOS),
            _ => Err(ExecutionError::function_error(function, "no such overload")),
        })
        .collect()
}

fn parse_quantity(args: &[CowVal<'_, '_>]) -> Result<Result<i128, String>, ExecutionError> {
    match values(args)?.first() {
        Some(Value::String(s)) => Ok(rke2_apimachinery::quantity::parse_quantity(s)
            .map(|q| q.as_nanos())
            .map_err(|e| e.to_string())),
        _ => Err(ExecutionError::function_error(
            "quantity",
            "no such overload",
        )),
    }
}

fn quantity<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    match parse_quantity(&args)? {
        Ok(n) => out(quantity_value(n)),
        Err(e) => Err(ExecutionError::function_error("quantity", e)),
    }
}

fn is_quantity<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    out(Value::Bool(parse_quantity(&args)?.is_ok()))
}

fn q_is_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = quantities(&args, "isInteger")?;
    let n = q[0];
    out(Value::Bool(
        n % NANOS == 0 && i64::try_from(n / NANOS).is_ok(),
    ))
}

fn q_as_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let n = quantities(&args, "asInteger")?[0];
    if n % NANOS != 0 {
        return Err(ExecutionError::function_error(
            "asInteger",
            "cannot convert value to integer",
        ));
    }
    i64::try_from(n / NANOS)
        .map(Value::Int)
        .map_err(|_| ExecutionError::function_error("asInteger", "cannot convert value to integer"))
        .and_then(out)
}

fn q_as_float<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let n = quantities(&args, "asApproximateFloat")?[0];
    out(Value::Float(n as f64 / NANOS as f64))
}

fn q_sign<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let n = quantities(&args, "sign")?[0];
    out(Value::Int(n.signum() as i64))
}

fn q_add<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = quantities(&args, "add")?;
    q[0].checked_add(q[1])
        .map(quantity_value)
        .ok_or_else(|| ExecutionError::function_error("add", "quantity overflow"))
        .and_then(out)
}

fn q_sub<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = quantities(&args, "sub")?;
    q[0].checked_sub(q[1])
        .map(quantity_value)
        .ok_or_else(|| ExecutionError::function_error("sub", "quantity overflow"))
        .and_then(out)
}

fn q_compare<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = quantities(&args, "compareTo")?;
    out(Value::Int(match q[0].cmp(&q[1]) {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }))
}

fn q_greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = quantities(&args, "isGreaterThan")?;
    out(Value::Bool(q[0] > q[1]))
}

fn q_less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = quantities(&args, "isLessThan")?;
    out(Value::Bool(q[0] < q[1]))
}

/// The text of a library value (a quantity's canonical form in whole or
/// milli units), for JSON output.
pub(crate) fn opaque_text(o: &dyn cel::objects::Opaque) -> Option<String> {
    let q = o.downcast_ref::<Quantity>()?;
    Some(if q.nanos % NANOS == 0 {
        format!("{}", q.nanos / NANOS)
    } else if q.nanos % 1_000_000 == 0 {
        format!("{}m", q.nanos / 1_000_000)
    } else {
        format!("{}n", q.nanos)
    })
}

/// The name CEL knows URLs by.
const URL: &str = "kubernetes.URL";

/// A parsed URL (`url('https://example.com:80/path?q=1')`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

impl cel::objects::Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        URL
    }
}

/// Parses an absolute URI or an absolute path, as upstream's `url()`
/// accepts (Go's `url.ParseRequestURI`).
fn parse_url(s: &str) -> Option<Url> {
    let (before_fragment, _) = s.split_once('#').unwrap_or((s, ""));
    let (scheme, rest) = if before_fragment.starts_with('/') {
        (String::new(), before_fragment)
    } else {
        let (scheme, rest) = before_fragment.split_once(':')?;
        let mut chars = scheme.chars();
        let first = chars.next()?;
        if !first.is_ascii_alphabetic()
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return None;
        }
        (scheme.to_string(), rest)
    };
    let (host, rest) = match rest.strip_prefix("//") {
        Some(r) => {
            let end = r.find(['/', '?']).unwrap_or(r.len());
            let authority = &r[..end];
            let host = authority
                .rsplit_once('@')
                .map(|(_, h)| h)
                .unwrap_or(authority);
            (host.to_string(), &r[end..])
        }
        None if scheme.is_empty() => (String::new(), rest),
        // `mailto:x`: opaque URIs are not request URIs unless a path.
        None if rest.starts_with('/') => (String::new(), rest),
        None => return None,
    };
    if host.chars().any(|c| c.is_whitespace()) {
        return None;
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    Some(Url {
        scheme,
        host,
        path: path.to_string(),
        query: query.to_string(),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn url_arg(args: &[CowVal<'_, '_>], function: &str) -> Result<Url, ExecutionError> {
    match values(args)?.first() {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Url>()
            .cloned()
            .ok_or_else(|| ExecutionError::function_error(function, "no such overload")),
        _ => Err(ExecutionError::function_error(function, "no such overload")),
    }
}

fn string_value(s: impl Into<String>) -> Value {
    Value::String(Arc::new(s.into()))
}

fn url_fn<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let Some(Value::String(s)) = values(&args)?.first().cloned() else {
        return Err(ExecutionError::function_error("url", "no such overload"));
    };
    match parse_url(&s) {
        Some(u) => out(Value::Opaque(Arc::new(u))),
        None => Err(ExecutionError::function_error(
            "url",
            format!(
                "URL parse error during conversion from string: parse {}: invalid URI",
                s
            ),
        )),
    }
}

fn is_url<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let ok = matches!(values(&args)?.first(), Some(Value::String(s)) if parse_url(s).is_some());
    out(Value::Bool(ok))
}

fn url_scheme<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    out(string_value(url_arg(&args, "getScheme")?.scheme))
}

fn url_host<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    out(string_value(url_arg(&args, "getHost")?.host))
}

/// Host and port of a host (`[::1]:80`, `a:80`, `a`).
fn split_host(host: &str) -> (String, String) {
    if let Some(rest) = host.strip_prefix('[') {
        let (h, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (
            h.to_string(),
            after.strip_prefix(':').unwrap_or("").to_string(),
        );
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h.to_string(), p.to_string()),
        _ => (host.to_string(), String::new()),
    }
}

fn url_hostname<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    out(string_value(
        split_host(&url_arg(&args, "getHostname")?.host).0,
    ))
}

fn url_port<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    out(string_value(split_host(&url_arg(&args, "getPort")?.host).1))
}

fn url_path<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    out(string_value(url_arg(&args, "getEscapedPath")?.path))
}

fn url_query<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let u = url_arg(&args, "getQuery")?;
    let mut map: std::collections::HashMap<cel::objects::Key, Vec<Value>> = Default::default();
    for pair in u.query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(cel::objects::Key::String(Arc::new(percent_decode(k))))
            .or_default()
            .push(string_value(percent_decode(v)));
    }
    let map = map
        .into_iter()
        .map(|(k, v)| (k, Value::List(Arc::new(v))))
        .collect();
    out(Value::Map(cel::objects::Map { map: Arc::new(map) }))
}

/// Registers the URL library: `url`, `isURL` and a URL's getters.
pub(crate) fn add_url(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    let u = || cel::common::types::Type::new_opaque_type(URL);
    env.add_overload("url", "string_to_url", vec![STRING_TYPE], url_fn)?;
    env.add_overload("isURL", "is_url_string", vec![STRING_TYPE], is_url)?;
    env.add_member_overload("getScheme", "url_get_scheme", u(), vec![], url_scheme)?;
    env.add_member_overload("getHost", "url_get_host", u(), vec![], url_host)?;
    env.add_member_overload("getHostname", "url_get_hostname", u(), vec![], url_hostname)?;
    env.add_member_overload("getPort", "url_get_port", u(), vec![], url_port)?;
    env.add_member_overload(
        "getEscapedPath",
        "url_get_escaped_path",
        u(),
        vec![],
        url_path,
    )?;
    env.add_member_overload("getQuery", "url_get_query", u(), vec![], url_query)?;
    Ok(())
}
