//! CEL in admission: webhook `matchConditions` and the expressions of
//! ValidatingAdmissionPolicies, on `rke2-cel`'s admission environment
//! (`object`, `oldObject`, `request`, `params`, `namespaceObject`,
//! `variables`). Compiled programs are kept by source text, so a request
//! does not compile what an earlier one did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rke2_cel::{CelError, Env, Program, Vars};
use serde_json::Value;

/// How many compiled expressions are kept (the cache is emptied past it).
const CACHE_LIMIT: usize = 4096;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(Env::admission)
}

/// The compiled `expr` (from the cache when it was compiled before).
pub fn compile(expr: &str) -> Result<Arc<Program>, CelError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Program>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(expr) {
        return Ok(p.clone());
    }
    let p = Arc::new(Program::compile(expr, env())?);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_LIMIT {
        c.clear();
    }
    c.insert(expr.to_string(), p.clone());
    Ok(p)
}

/// The values the expressions of one request see.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `object` (null on DELETE).
    pub object: Value,
    /// `oldObject` (null on CREATE).
    pub old_object: Value,
    /// `request`: the AdmissionReview request.
    pub request: Value,
    /// `params` (null without a paramKind).
    pub params: Value,
    /// `namespaceObject` (null for cluster-scoped objects).
    pub namespace_object: Value,
    /// `variables`: the policy's variables evaluated so far.
    pub variables: Value,
}

impl Inputs {
    /// The CEL variables.
    pub fn vars(&self) -> Vars {
        Vars::new()
            .json("object", &self.object)
            .json("oldObject", &self.old_object)
            .json("request", &self.request)
            .json("params", &self.params)
            .json("namespaceObject", &self.namespace_object)
            .json("variables", &self.variables)
    }
}

/// Evaluates a boolean expression.
pub fn eval_bool(expr: &str, inputs: &Inputs) -> Result<bool, CelError> {
    compile(expr)?.eval_bool(&inputs.vars())
}

/// Evaluates a string expression (a `messageExpression`).
pub fn eval_string(expr: &str, inputs: &Inputs) -> Result<String, CelError> {
    compile(expr)?.eval_string(&inputs.vars())
}

/// Evaluates any expression to JSON (a policy variable).
pub fn eval_value(expr: &str, inputs: &Inputs) -> Result<Value, CelError> {
    compile(expr)?.eval_value(&inputs.vars())
}

/// Validates a list of `matchConditions` (names unique and qualified,
/// expressions that compile), as upstream's `validateMatchConditions`.
pub fn validate_match_conditions(list: &Value, at: &str, causes: &mut Vec<crate::strategy::Cause>) {
    let Some(items) = list.as_array() else { return };
    if items.len() > 64 {
        causes.push((
            at.to_string(),
            "Too many".into(),
            format!("{}: must have at most 64 items", items.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in items.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or("");
        let f = format!("{at}[{i}]");
        if name.is_empty() {
            causes.push((format!("{f}.name"), "Required value".into(), String::new()));
        } else {
            for msg in rke2_apimachinery::validation::validate_label_key(name) {
                causes.push((
                    format!("{f}.name"),
                    "Invalid value".into(),
                    format!("{}: {msg}", crate::schema::go_quote(name)),
                ));
            }
            if !seen.insert(name) {
                causes.push((
                    format!("{f}.name"),
                    "Duplicate value".into(),
                    crate::schema::go_quote(name),
                ));
            }
        }
        validate_expression(&c["expression"], &format!("{f}.expression"), causes);
    }
}

/// A required expression that must compile.
pub fn validate_expression(expr: &Value, at: &str, causes: &mut Vec<crate::strategy::Cause>) {
    match expr.as_str().unwrap_or("") {
        "" => causes.push((at.to_string(), "Required value".into(), String::new())),
        e => {
            if let Err(err) = compile(e) {
                causes.push((
                    at.to_string(),
                    "Invalid value".into(),
                    format!("{}: {}", crate::schema::go_quote(e), compile_text(&err)),
                ));
            }
        }
    }
}

/// `compilation failed: ...` as upstream prefixes it.
fn compile_text(err: &CelError) -> String {
    let s = err.to_string();
    if s.starts_with("compilation failed") {
        s
    } else {
        format!("compilation failed: {s}")
    }
}

/// Evaluates `matchConditions` in order: `Ok(false)` when one is false
/// (the webhook or policy is skipped), an error naming the condition that
/// failed to evaluate.
pub fn match_conditions(list: &Value, inputs: &Inputs) -> Result<bool, String> {
    for c in list.as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        match eval_bool(c["expression"].as_str().unwrap_or(""), inputs) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                return Err(format!("failed to evaluate match condition {name:?}: {e}"));
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn match_conditions_select_and_report_errors() {
        let inputs = Inputs {
            object: json!({"metadata": {"name": "a", "labels": {"x": "1"}}}),
            request: json!({"operation": "CREATE", "userInfo": {"username": "me"}}),
            ..Default::default()
        };
        let conds = json!([
            {"name": "is-create", "expression": "request.operation == 'CREATE'"},
            {"name": "labelled", "expression": "has(object.metadata.labels) && 'x' in object.metadata.labels"},
        ]);
        assert_eq!(match_conditions(&conds, &inputs), Ok(true));
        let conds = json!([{"name": "not-me", "expression": "request.userInfo.username != 'me'"}]);
        assert_eq!(match_conditions(&conds, &inputs), Ok(false));
        let conds = json!([{"name": "broken", "expression": "object.spec.replicas > 1"}]);
        let err = match_conditions(&conds, &inputs).unwrap_err();
        assert!(
            err.starts_with("failed to evaluate match condition \"broken\": "),
            "{err}"
        );

        let mut causes = Vec::new();
        validate_match_conditions(
            &json!([{"name": "a", "expression": "1 +"}, {"name": "a", "expression": "true"}, {"name": "", "expression": ""}]),
            "webhooks[0].matchConditions",
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "webhooks[0].matchConditions[0].expression",
                "webhooks[0].matchConditions[1].name",
                "webhooks[0].matchConditions[2].name",
                "webhooks[0].matchConditions[2].expression"
            ],
            "{causes:?}"
        );
        assert!(causes[0].2.contains("compilation failed"), "{causes:?}");
    }
}
