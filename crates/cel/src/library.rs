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
