//! `x-kubernetes-validations`: each rule runs with `self` bound to the value
//! at its schema node (and `oldSelf` to the correlated old value for
//! transition rules); failures are reported as upstream's CEL validator
//! reports them.

use rke2_cel::{CelError, Vars};
use serde_json::{Map, Value};

use crate::build::parse_field_path;
use crate::{FieldError, Node, Rule, child, go_quote, index, key};

/// Upstream's runtime budget for all rules of one object
/// (`RuntimeCELCostBudget`).
const RUNTIME_BUDGET: u64 = 10_000_000;

/// Upstream's limit on an evaluated messageExpression.
const MAX_MESSAGE_EXPRESSION_BYTES: usize = 5 * 1024;

struct Walker {
    errors: Vec<FieldError>,
    remaining: u64,
    stopped: bool,
}

pub(crate) fn validate(root: &Node, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut w = Walker {
        errors: Vec::new(),
        remaining: RUNTIME_BUDGET,
        stopped: false,
    };
    w.walk(root, new, old, "", true);
    w.errors
}

/// A resource's `self` shows `metadata.name` and `metadata.generateName`
/// only, as upstream.
fn resource_view(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(obj) = v.as_object_mut()
        && let Some(Value::Object(meta)) = obj.get("metadata")
    {
        let mut kept = Map::new();
        for k in ["name", "generateName"] {
            if let Some(x) = meta.get(k) {
                kept.insert(k.to_string(), x.clone());
            }
        }
        obj.insert("metadata".into(), Value::Object(kept));
    }
    v
}

impl Walker {
    fn walk(&mut self, node: &Node, v: &Value, old: Option<&Value>, path: &str, resource: bool) {
        if self.stopped || v.is_null() {
            return;
        }
        if !node.rules.is_empty() {
            let (new_view, old_view) = if resource {
                (resource_view(v), old.map(resource_view))
            } else {
                (v.clone(), old.cloned())
            };
            for rule in &node.rules {
                self.eval(node, rule, &new_view, old_view.as_ref(), path);
                if self.stopped {
                    return;
                }
            }
        }
        match v {
            Value::Object(obj) => {
                let correlatable = matches!(
                    node.map_type.as_deref(),
                    None | Some("") | Some("granular") | Some("atomic")
                );
                let old_obj = old.and_then(|o| o.as_object()).filter(|_| correlatable);
                for (k, val) in obj {
                    let old_val = old_obj.and_then(|o| o.get(k));
                    if let Some(p) = node.properties.get(k.as_str()) {
                        self.walk(p, val, old_val, &child(path, k), p.embedded);
                    } else if let Some(a) = node.additional.as_deref() {
                        self.walk(a, val, old_val, &key(path, k), a.embedded);
                    }
                    if self.stopped {
                        return;
                    }
                }
            }
            Value::Array(items) => {
                let Some(item_node) = node.items.as_deref() else {
                    return;
                };
                for (i, item) in items.iter().enumerate() {
                    // Only map lists correlate old and new items (by key).
                    let old_item = crate::validate::correlated_item(node, item, old);
                    self.walk(
                        item_node,
                        item,
                        old_item,
                        &index(path, i),
                        item_node.embedded,
                    );
                    if self.stopped {
                        return;
                    }
                }
            }
            _ => {}
        }
    }

    fn eval(&mut self, node: &Node, rule: &Rule, v: &Value, old: Option<&Value>, path: &str) {
        if rule.transition && old.is_none() && !rule.optional_old_self {
            return;
        }
        // Ratcheting: a rule without oldSelf does not fail an unchanged value.
        if !rule.transition && old == Some(v) {
            return;
        }
        let mut vars = Vars::new().json("self", v);
        if rule.transition {
            vars = if rule.optional_old_self {
                vars.optional_json("oldSelf", old)
            } else {
                vars.json("oldSelf", old.unwrap_or(&Value::Null))
            };
        }
        let ty = type_name(node);
        let rule_string = rule
            .message
            .as_deref()
            .map(str::trim)
            .unwrap_or_else(|| rule.rule.trim())
            .to_string();
        let (result, cost) = rule.program.eval_cel_with_cost(&vars);
        if cost > self.remaining {
            self.push_invalid(
                path,
                &ty,
                "validation failed due to running out of cost budget, no further validation rules will be run",
            );
            self.stopped = true;
            return;
        }
        self.remaining -= cost;
        let passed = match result {
            Ok(rke2_cel::CelValue::Bool(b)) => b,
            Ok(other) => {
                self.push_invalid(
                    path,
                    &ty,
                    &format!(
                        "rule did not evaluate to a bool but to {} evaluating rule: {rule_string}",
                        describe(&other)
                    ),
                );
                return;
            }
            Err(CelError::CostLimit) => {
                self.push_invalid(
                    path,
                    &ty,
                    &format!(
                        "'{}': no further validation rules will be run due to call cost exceeds limit for rule: {rule_string}",
                        rke2_cel::COST_LIMIT_EXCEEDED
                    ),
                );
                self.stopped = true;
                return;
            }
            Err(e) => {
                let text = e.to_string();
                let detail = if text.starts_with("no such overload") {
                    format!(
                        "'{text}': call arguments did not match a supported operator, function or macro signature for rule: {rule_string}"
                    )
                } else {
                    format!("{text} evaluating rule: {rule_string}")
                };
                self.push_invalid(path, &ty, &detail);
                return;
            }
        };
        if passed {
            return;
        }
        let default_message = match &rule.message {
            Some(m) => m.trim().to_string(),
            None => format!("failed rule: {rule_string}"),
        };
        let message = match &rule.message_expression {
            Some(me) => match me.eval_cel_with_cost(&vars) {
                (Err(CelError::CostLimit), _) => {
                    self.push_invalid(
                        path,
                        &ty,
                        &format!(
                            "no further validation rules will be run due to call cost exceeds limit for messageExpression: {}",
                            go_quote(me.source())
                        ),
                    );
                    self.stopped = true;
                    return;
                }
                (Ok(rke2_cel::CelValue::String(s)), c) => {
                    self.remaining = self.remaining.saturating_sub(c);
                    let t = s.trim();
                    if t.is_empty() || t.contains('\n') || t.len() > MAX_MESSAGE_EXPRESSION_BYTES {
                        default_message
                    } else {
                        t.to_string()
                    }
                }
                (_, c) => {
                    self.remaining = self.remaining.saturating_sub(c);
                    default_message
                }
            },
            None => default_message,
        };
        let field = match rule.field_path.as_deref().and_then(parse_field_path) {
            Some(segments) => segments.iter().fold(path.to_string(), |p, s| child(&p, s)),
            None => path.to_string(),
        };
        let err = match rule.reason.as_deref() {
            Some("FieldValueForbidden") => FieldError::forbidden(&field, &message),
            Some("FieldValueRequired") => FieldError::required(&field, &message),
            Some("FieldValueDuplicate") => FieldError::duplicate(&field, &Value::String(ty)),
            _ => FieldError::invalid(&field, &Value::String(ty), &message),
        };
        self.errors.push(err);
    }

    fn push_invalid(&mut self, path: &str, ty: &str, detail: &str) {
        self.errors.push(FieldError::invalid(
            path,
            &Value::String(ty.to_string()),
            detail,
        ));
    }
}

/// The schema type upstream shows as the value of a failed rule.
fn type_name(node: &Node) -> String {
    node.ty.clone().unwrap_or_default()
}

fn describe(v: &rke2_cel::CelValue) -> &'static str {
    match v {
        rke2_cel::CelValue::Int(_) => "int",
        rke2_cel::CelValue::UInt(_) => "uint",
        rke2_cel::CelValue::Float(_) => "double",
        rke2_cel::CelValue::String(_) => "string",
        rke2_cel::CelValue::List(_) => "list",
        rke2_cel::CelValue::Map(_) => "map",
        rke2_cel::CelValue::Null => "null",
        _ => "a value",
    }
}
