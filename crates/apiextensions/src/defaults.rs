//! Structural defaulting: a property's `default` fills it when it is
//! missing, or null where the schema does not allow null; inside objects,
//! array items and additionalProperties, recursively (a default's own
//! content is defaulted too).

use serde_json::Value;

use crate::Node;

pub(crate) fn apply(node: &Node, v: &mut Value) {
    match v {
        Value::Object(obj) => {
            for (k, prop) in &node.properties {
                match obj.get(k) {
                    None => {
                        if let Some(d) = &prop.default {
                            obj.insert(k.clone(), d.clone());
                        }
                    }
                    Some(Value::Null) if !prop.nullable => {
                        if let Some(d) = &prop.default {
                            obj.insert(k.clone(), d.clone());
                        }
                    }
                    _ => {}
                }
                if let Some(val) = obj.get_mut(k) {
                    apply(prop, val);
                }
            }
            if let Some(a) = node.additional.as_deref() {
                for (k, val) in obj.iter_mut() {
                    if node.properties.contains_key(k) {
                        continue;
                    }
                    if val.is_null()
                        && !a.nullable
                        && let Some(d) = &a.default
                    {
                        *val = d.clone();
                    }
                    apply(a, val);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.items.as_deref() {
                for val in items.iter_mut() {
                    if val.is_null()
                        && !item.nullable
                        && let Some(d) = &item.default
                    {
                        *val = d.clone();
                    }
                    apply(item, val);
                }
            }
        }
        _ => {}
    }
}
