//! JSON in, JSON out, and upstream's wording of evaluation errors.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use cel::objects::{Key, Map};
use cel::{ExecutionError, Value};

use crate::types::Ty;

/// A JSON value as CEL sees it; `ty` turns integers into doubles where a
/// `number` is declared (upstream converts by schema type too).
pub(crate) fn from_json(v: &serde_json::Value, ty: &Ty) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if matches!(ty, Ty::Double) {
                return Value::Float(n.as_f64().unwrap_or(0.0));
            }
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            let item_ty = ty.element();
            Value::List(Arc::new(
                items.iter().map(|i| from_json(i, &item_ty)).collect(),
            ))
        }
        serde_json::Value::Object(fields) => {
            let declared = |k: &str| match ty {
                Ty::Object { properties, .. } => properties.contains_key(k),
                _ => false,
            };
            // Declared properties are reached by their escaped names
            // (`__namespace__`), as upstream; map keys stay as they are.
            let map: HashMap<Key, Value> = fields
                .iter()
                .filter_map(|(k, v)| {
                    let name = if declared(k) {
                        crate::types::escape_property(k)?
                    } else {
                        k.clone()
                    };
                    Some((Key::String(Arc::new(name)), from_json(v, &ty.field(k))))
                })
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A CEL value as JSON.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::UInt(u) => (*u).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::Bytes(b) => {
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&**b))
        }
        Value::List(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => {
            let mut entries: Vec<(String, serde_json::Value)> = m
                .map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Key::String(s) => s.to_string(),
                        Key::Int(i) => i.to_string(),
                        Key::Uint(u) => u.to_string(),
                        Key::Bool(b) => b.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().collect())
        }
        Value::Duration(d) => {
            serde_json::Value::String(format!("{}s", d.num_milliseconds() as f64 / 1000.0))
        }
        Value::Timestamp(t) => serde_json::Value::String(t.to_rfc3339()),
        Value::Opaque(o) => match crate::library::opaque_text(o.as_ref()) {
            Some(s) => serde_json::Value::String(s),
            None => serde_json::Value::Null,
        },
        other => serde_json::Value::String(format!("{other:?}")),
    }
}

/// The CEL type name of a value, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null_type",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Duration(_) => "google.protobuf.Duration",
        Value::Timestamp(_) => "google.protobuf.Timestamp",
        _ => "dyn",
    }
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        other => format!("{other:?}"),
    }
}

/// An evaluation error in cel-go's words where they are known
/// (kube-apiserver matches on `no such overload`, and users see the rest).
pub(crate) fn eval_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::IndexOutOfBounds(i) => format!("index out of bounds: {}", key_text(i)),
        ExecutionError::DivisionByZero(_) => "division by zero".into(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".into(),
        ExecutionError::Overflow(..) => "integer overflow".into(),
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnexpectedType { .. } => format!("no such overload: {e}"),
        ExecutionError::UndeclaredReference(r) => {
            format!("no such attribute: undeclared reference to '{r}'")
        }
        ExecutionError::FunctionError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
