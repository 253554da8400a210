//! CEL as kube-apiserver uses it, on top of cel-rust.
//!
//! kube-apiserver type-checks an expression against declared variables
//! (`self`/`oldSelf` for CRD rules; `object`, `request`, `params`, ... for
//! admission), refuses one whose *estimated* cost is over budget, and stops
//! one whose *actual* cost passes the per-call limit. cel-rust is an
//! interpreter without a checker or cost tracking, so this crate adds:
//!
//! * [`Program::compile`]: parse, then refuse references to undeclared
//!   variables and unknown functions, with upstream's `compilation failed:
//!   ERROR: <input>:L:C: ...` text and caret snippet;
//! * a static cost estimate over the AST using the declared [`Ty`] bounds
//!   (comprehensions multiply by the most elements their range can hold);
//! * a runtime budget: the program is rewritten so every comprehension
//!   iteration charges a counter, and evaluation stops with upstream's
//!   `operation cancelled: actual cost limit exceeded`;
//! * the Kubernetes libraries cel-rust lacks (lists, regex `find`/
//!   `findAll`), registered in the [`Env`];
//! * conversion of variables from and results to `serde_json::Value`;
//! * no panics: parsing and evaluation run under `catch_unwind`.

mod check;
mod convert;
mod cost;
mod library;
mod types;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use cost::cost_error_message;
pub use types::{MAX_REQUEST_SIZE_BYTES, Ty, escape_property, unescape_property};

/// Upstream's per-expression limit on the estimated cost
/// (`StaticEstimatedCostLimit`).
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// Upstream's limit on the estimated cost of all rules of one CRD schema
/// (`StaticEstimatedCRDCostLimit`).
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// Upstream's runtime limit on one evaluation (`PerCallLimit`).
pub const PER_CALL_LIMIT: u64 = 1_000_000;

/// The text upstream's runtime cost tracker cancels evaluation with.
pub const COST_LIMIT_EXCEEDED: &str = "operation cancelled: actual cost limit exceeded";

/// Why an expression did not compile or evaluate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CelError {
    /// Syntax error, undeclared reference or unknown function: the text
    /// is upstream's (`compilation failed: ERROR: <input>:1:1: ...`).
    #[error("{0}")]
    Compile(String),
    /// The static estimate is over the budget the [`Env`] was given.
    #[error("{message}")]
    CostEstimate {
        /// Estimated cost.
        cost: u64,
        /// Budget it was checked against.
        limit: u64,
        /// Upstream's wording, for the estimated rule cost.
        message: String,
    },
    /// Evaluation passed the runtime budget.
    #[error("operation cancelled: actual cost limit exceeded")]
    CostLimit,
    /// Evaluation failed (`no such key: x`, `division by zero`, ...).
    #[error("{0}")]
    Eval(String),
    /// The result had another type than the caller asked for.
    #[error("{0}")]
    Type(String),
}

/// The declarations an expression is compiled against, and the CEL
/// environment (functions) it runs in.
#[derive(Clone)]
pub struct Env {
    vars: BTreeMap<String, Ty>,
    budget: Option<u64>,
    runtime_limit: u64,
    cel: Arc<cel::Env>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("vars", &self.vars)
            .field("budget", &self.budget)
            .field("runtime_limit", &self.runtime_limit)
            .finish()
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// An environment with no variables, the Kubernetes libraries, upstream's
    /// per-expression estimated-cost budget and per-call runtime limit.
    pub fn new() -> Env {
        Env {
            vars: BTreeMap::new(),
            budget: Some(STATIC_ESTIMATED_COST_LIMIT),
            runtime_limit: PER_CALL_LIMIT,
            cel: library::shared_env(),
        }
    }

    /// The environment of CRD `x-kubernetes-validations` rules: `self` and
    /// `oldSelf` of type `ty`.
    pub fn crd_rule(ty: Ty) -> Env {
        Env::new()
            .with_variable("self", ty.clone())
            .with_variable("oldSelf", ty)
    }

    /// The environment of admission expressions (webhook matchConditions,
    /// ValidatingAdmissionPolicy validations): `object`, `oldObject`,
    /// `request`, `params`, `namespaceObject`, `authorizer`, `variables`.
    /// They are untyped here, so nothing bounds a loop statically: no
    /// estimated-cost budget, only the runtime limit.
    pub fn admission() -> Env {
        let mut env = Env::new().with_cost_budget(None);
        for name in [
            "object",
            "oldObject",
            "request",
            "params",
            "namespaceObject",
            "authorizer",
            "variables",
        ] {
            env = env.with_variable(name, Ty::Dyn);
        }
        env
    }

    /// Declares a variable.
    pub fn with_variable(mut self, name: &str, ty: Ty) -> Env {
        self.vars.insert(name.to_string(), ty);
        self
    }

    /// Sets the estimated-cost budget [`Program::compile`] refuses above;
    /// `None` compiles whatever the estimate (the caller checks
    /// [`Program::estimated_cost`] itself, e.g. times a cardinality).
    pub fn with_cost_budget(mut self, budget: Option<u64>) -> Env {
        self.budget = budget;
        self
    }

    /// Sets the runtime cost limit of one evaluation.
    pub fn with_runtime_limit(mut self, limit: u64) -> Env {
        self.runtime_limit = limit;
        self
    }

    /// The declared variables.
    pub fn variables(&self) -> &BTreeMap<String, Ty> {
        &self.vars
    }
}

/// A compiled expression, ready to evaluate many times.
pub struct Program {
    /// Stack evaluation may take (see `compile_here`).
    stack_need: usize,
    source: String,
    /// The parsed AST with cost charges inserted.
    instrumented: cel::IdedExpr,
    /// Cost charged before evaluation: the work outside any loop.
    base_cost: u64,
    estimated_cost: u64,
    runtime_limit: u64,
    cel: Arc<cel::Env>,
    vars: BTreeMap<String, Ty>,
    referenced: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("source", &self.source)
            .field("estimated_cost", &self.estimated_cost)
            .finish()
    }
}

impl Program {
    /// Parses and checks `expr` against `env`.
    ///
    /// Parsing recurses as deep as the expression nests, so it runs on a
    /// large stack of its own; the AST is then held to [`MAX_AST_DEPTH`],
    /// which bounds the recursion of evaluation (also on a stack of its
    /// own).
    pub fn compile(expr: &str, env: &Env) -> Result<Program, CelError> {
        let size = expr.chars().count();
        if size > MAX_EXPRESSION_CHARS {
            return Err(CelError::Compile(format!(
                "compilation failed: ERROR: <input>:-1:0: expression code point size exceeds limit: size: {size}, limit {MAX_EXPRESSION_CHARS}"
            )));
        }
        stacker::grow(COMPILE_STACK_BYTES, || {
            catch_unwind(AssertUnwindSafe(|| compile_here(expr, env))).unwrap_or_else(|_| {
                Err(CelError::Compile(check::compile_failed(
                    expr,
                    1,
                    1,
                    "internal error",
                )))
            })
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The static cost estimate (upstream's `MaxCost`), before any
    /// multiplication by where in a schema the rule sits.
    pub fn estimated_cost(&self) -> u64 {
        self.estimated_cost
    }

    /// Whether the expression references variable `name` (e.g. `oldSelf`,
    /// which makes a CRD rule a transition rule).
    pub fn uses_variable(&self, name: &str) -> bool {
        self.referenced.contains(name)
    }

    /// Evaluates with `vars`, giving the raw CEL value.
    pub fn eval_cel(&self, vars: &Vars) -> Result<cel::Value, CelError> {
        self.eval_cel_with_cost(vars).0
    }

    /// Evaluates with `vars`; also gives the cost charged (for tests and
    /// accounting).
    pub fn eval_cel_with_cost(&self, vars: &Vars) -> (Result<cel::Value, CelError>, u64) {
        let spent = Arc::new(AtomicU64::new(self.base_cost));
        let exceeded = Arc::new(AtomicBool::new(self.base_cost > self.runtime_limit));
        if exceeded.load(Ordering::Relaxed) {
            return (Err(CelError::CostLimit), self.base_cost);
        }
        let limit = self.runtime_limit;
        let result = stacker::maybe_grow(self.stack_need, EVAL_STACK_BYTES, || {
            catch_unwind(AssertUnwindSafe(|| {
                let mut ctx = cel::Context::with_env(self.cel.clone());
                for (name, value) in &vars.values {
                    let ty = self.vars.get(name).cloned().unwrap_or_default();
                    match value {
                        VarValue::Json(v) => {
                            ctx.add_variable_from_value(name.as_str(), convert::from_json(v, &ty))
                        }
                        VarValue::Optional(v) => {
                            let inner = match v {
                                Some(v) => match Box::<dyn cel::common::value::Val>::try_from(
                                    convert::from_json(v, &ty),
                                ) {
                                    Ok(b) => cel::common::types::CelOptional::of(b),
                                    Err(e) => return Err(CelError::Eval(convert::eval_error(&e))),
                                },
                                None => cel::common::types::CelOptional::none(),
                            };
                            ctx.add_variable_as_val(name.as_str(), Box::new(inner));
                        }
                        VarValue::Cel(v) => ctx.add_variable_from_value(name.as_str(), v.clone()),
                    }
                }
                let (s, e) = (spent.clone(), exceeded.clone());
                ctx.add_function(
                    cost::CHARGE,
                    move |cel::extractors::Arguments(args): cel::extractors::Arguments| {
                        charge(&s, &e, limit, &args)
                    },
                )
                .map_err(|e| CelError::Eval(e.to_string()))?;
                ctx.resolve(&self.instrumented)
                    .map_err(|e| CelError::Eval(convert::eval_error(&e)))
            }))
        });
        let cost = spent.load(Ordering::Relaxed);
        if exceeded.load(Ordering::Relaxed) {
            return (Err(CelError::CostLimit), cost);
        }
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(CelError::Eval(
                "internal error evaluating expression".into(),
            )),
        };
        (result, cost)
    }

    /// Evaluates to JSON (lists, maps, strings, numbers, booleans, null;
    /// durations and timestamps as strings, bytes as base64).
    pub fn eval_value(&self, vars: &Vars) -> Result<serde_json::Value, CelError> {
        self.eval_cel(vars).map(|v| convert::to_json(&v))
    }

    /// Evaluates an expression that must give a `bool`.
    pub fn eval_bool(&self, vars: &Vars) -> Result<bool, CelError> {
        match self.eval_cel(vars)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(CelError::Type(format!(
                "expected boolean, got {}",
                convert::type_name(&other)
            ))),
        }
    }

    /// Evaluates an expression that must give a `string` (e.g. a
    /// `messageExpression`).
    pub fn eval_string(&self, vars: &Vars) -> Result<String, CelError> {
        match self.eval_cel(vars)? {
            cel::Value::String(s) => Ok(s.to_string()),
            other => Err(CelError::Type(format!(
                "expected string, got {}",
                convert::type_name(&other)
            ))),
        }
    }
}

/// The longest expression accepted, in code points (cel-go's default).
pub const MAX_EXPRESSION_CHARS: usize = 100_000;

/// The deepest AST accepted: evaluation recurses once per level, and must
/// fit the stack of whatever thread runs it.
pub const MAX_AST_DEPTH: usize = 200;

/// Stack parsing runs on (the parser recurses per nesting level). Mapped
/// lazily: only what is used costs memory.
const COMPILE_STACK_BYTES: usize = 256 << 20;

/// Stack evaluation runs on: nested comprehensions take tens of KiB per
/// level in a debug build, more than a 2 MiB thread stack holds at
/// [`MAX_AST_DEPTH`].
const EVAL_STACK_BYTES: usize = 64 << 20;

fn compile_here(expr: &str, env: &Env) -> Result<Program, CelError> {
    let program = env
        .cel
        .compile(expr)
        .map_err(|errs| CelError::Compile(check::syntax_errors(expr, &errs)))?;
    let ast = program.expression().clone();
    let (depth, loops) = check::depth(&ast);
    if depth > MAX_AST_DEPTH {
        return Err(CelError::Compile(check::compile_failed(
            expr,
            1,
            1,
            &format!("expression nesting depth {depth} exceeds limit {MAX_AST_DEPTH}"),
        )));
    }
    let referenced =
        check::check(expr, program.source_info(), &ast, &env.vars).map_err(CelError::Compile)?;
    let estimated_cost = cost::estimate(&ast, &env.vars);
    if let Some(limit) = env.budget
        && estimated_cost > limit
    {
        return Err(CelError::CostEstimate {
            cost: estimated_cost,
            limit,
            message: cost_error_message("estimated rule cost", estimated_cost, limit),
        });
    }
    let (instrumented, base_cost) = cost::instrument(ast);
    // A generous bound on the stack evaluation takes, so that it runs in
    // place when the caller's stack has room (mapping a stack of its own
    // costs ~20 µs).
    let stack_need = 256 * 1024 + depth * 16 * 1024 + loops * 128 * 1024;
    Ok(Program {
        stack_need,
        source: expr.to_string(),
        instrumented,
        base_cost,
        estimated_cost,
        runtime_limit: env.runtime_limit,
        cel: env.cel.clone(),
        vars: env.vars.clone(),
        referenced,
    })
}

/// The runtime charge: `@charge(n, v)` adds `n` to the spent cost and gives
/// `v`, or an error once the limit is passed (and every call after).
fn charge(
    spent: &AtomicU64,
    exceeded: &AtomicBool,
    limit: u64,
    args: &[cel::Value],
) -> Result<cel::Value, cel::ExecutionError> {
    let cancelled = || cel::ExecutionError::function_error(cost::CHARGE, COST_LIMIT_EXCEEDED);
    if exceeded.load(Ordering::Relaxed) {
        return Err(cancelled());
    }
    let n = match args.first() {
        Some(cel::Value::Int(n)) => (*n).max(0) as u64,
        _ => 1,
    };
    let total = spent.fetch_add(n, Ordering::Relaxed).saturating_add(n);
    if total > limit {
        exceeded.store(true, Ordering::Relaxed);
        return Err(cancelled());
    }
    Ok(args.get(1).cloned().unwrap_or(cel::Value::Null))
}

/// A variable's value for one evaluation.
#[derive(Debug, Clone)]
enum VarValue {
    Json(serde_json::Value),
    Optional(Option<serde_json::Value>),
    Cel(cel::Value),
}

/// The variables of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: Vec<(String, VarValue)>,
}

impl Vars {
    /// No variables.
    pub fn new() -> Vars {
        Vars::default()
    }

    /// Binds `name` to a JSON value (converted using the declared type:
    /// integers become doubles where a `double` is declared).
    pub fn json(mut self, name: &str, value: &serde_json::Value) -> Vars {
        self.values
            .push((name.to_string(), VarValue::Json(value.clone())));
        self
    }

    /// Binds `name` to an optional value (`optional.of(v)` or
    /// `optional.none()`), as `oldSelf` with `optionalOldSelf`.
    pub fn optional_json(mut self, name: &str, value: Option<&serde_json::Value>) -> Vars {
        self.values
            .push((name.to_string(), VarValue::Optional(value.cloned())));
        self
    }

    /// Binds `name` to a CEL value made by the caller.
    pub fn cel(mut self, name: &str, value: cel::Value) -> Vars {
        self.values.push((name.to_string(), VarValue::Cel(value)));
        self
    }
}

/// The underlying CEL value type, for callers of [`Program::eval_cel`].
pub use cel::Value as CelValue;

#[cfg(test)]
mod tests;
