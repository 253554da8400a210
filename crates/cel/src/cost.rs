//! Cost: the static estimate upstream checks when a rule is written, and
//! the runtime charge that cancels an evaluation over budget.
//!
//! The estimate follows cel-go's model in its main lines: one unit per
//! variable, field selection and call; string and collection operations
//! proportional to the size they may reach (a tenth per character or
//! element); a comprehension costs its body times the most elements its
//! range can hold, from `maxItems`/`maxProperties`/`maxLength` or what fits
//! in a 3 MiB request.
//!
//! At run time the program is rewritten so each comprehension iteration
//! calls the context function [`CHARGE`] with the flat cost of its body;
//! past the limit the call fails and the loop stops.

use std::collections::BTreeMap;

use cel::IdedExpr;
use cel::common::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, LiteralValue};

use crate::types::Ty;

/// The context function charging the runtime cost. Its name cannot be
/// written in CEL source (`@` is not an identifier character).
pub(crate) const CHARGE: &str = "@rke2_charge";

/// Upstream's message for an estimate over budget (`getCostErrorMessage`).
pub fn cost_error_message(cost_name: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit.max(1) as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{cost_name} exceeds budget by factor of {factor} (try simplifying the rule, or adding \
         maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// A tenth of `n`, rounded up: upstream's per-character/element factor.
fn tenth(n: u64) -> u64 {
    n.div_ceil(10)
}

struct Estimate {
    cost: u64,
    ty: Ty,
}

fn est(cost: u64, ty: Ty) -> Estimate {
    Estimate { cost, ty }
}

/// Functions whose cost grows with the receiver's (or first argument's)
/// size.
const SIZED_FUNCTIONS: &[&str] = &[
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "indexOf",
    "lastIndexOf",
    "join",
    "find",
    "findAll",
    "charAt",
    "reverse",
    "format",
    "sum",
    "min",
    "max",
    "isSorted",
    "sort",
    "distinct",
    "flatten",
    "slice",
    "_==_",
    "_!=_",
    "_+_",
    "@in",
    "string",
    "bytes",
];

struct Estimator<'a> {
    vars: &'a BTreeMap<String, Ty>,
}

impl Estimator<'_> {
    fn walk(&self, e: &IdedExpr, scope: &mut Vec<(String, Ty)>) -> Estimate {
        match &e.expr {
            Expr::Literal(lit) => {
                let ty = match lit {
                    LiteralValue::String(s) => Ty::String {
                        max_length: Some(s.inner().chars().count() as u64),
                    },
                    LiteralValue::Int(_) => Ty::Int,
                    LiteralValue::UInt(_) => Ty::UInt,
                    LiteralValue::Double(_) => Ty::Double,
                    LiteralValue::Boolean(_) => Ty::Bool,
                    LiteralValue::Bytes(_) => Ty::Bytes,
                    LiteralValue::Null => Ty::Dyn,
                };
                est(0, ty)
            }
            Expr::Ident(name) => {
                let ty = scope
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.clone())
                    .or_else(|| self.vars.get(name).cloned())
                    .unwrap_or(Ty::Dyn);
                est(1, ty)
            }
            Expr::Select(sel) => {
                let op = self.walk(&sel.operand, scope);
                if sel.test {
                    est(op.cost.saturating_add(1), Ty::Bool)
                } else {
                    est(op.cost.saturating_add(1), op.ty.field(&sel.field))
                }
            }
            Expr::List(list) => {
                let mut cost: u64 = 10;
                let mut item = None;
                for el in &list.elements {
                    let x = self.walk(el, scope);
                    cost = cost.saturating_add(x.cost);
                    item.get_or_insert(x.ty);
                }
                est(
                    cost,
                    Ty::List {
                        items: Box::new(item.unwrap_or(Ty::Dyn)),
                        max_items: Some(list.elements.len() as u64),
                    },
                )
            }
            Expr::Map(map) => {
                let mut cost: u64 = 30;
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        cost = cost
                            .saturating_add(self.walk(&me.key, scope).cost)
                            .saturating_add(self.walk(&me.value, scope).cost);
                    }
                }
                est(
                    cost,
                    Ty::Object {
                        properties: BTreeMap::new(),
                        additional: Some(Box::new(Ty::Dyn)),
                        max_properties: Some(map.entries.len() as u64),
                    },
                )
            }
            Expr::Struct(st) => {
                let mut cost: u64 = 40;
                for entry in &st.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => {
                            cost = cost.saturating_add(self.walk(&f.value, scope).cost)
                        }
                        EntryExpr::MapEntry(me) => {
                            cost = cost
                                .saturating_add(self.walk(&me.key, scope).cost)
                                .saturating_add(self.walk(&me.value, scope).cost)
                        }
                    }
                }
                est(cost, Ty::Dyn)
            }
            Expr::Call(call) => self.call(call, scope),
            Expr::Comprehension(c) => self.comprehension(c, scope),
            Expr::Unspecified => est(0, Ty::Dyn),
        }
    }

    fn call(&self, call: &CallExpr, scope: &mut Vec<(String, Ty)>) -> Estimate {
        let target = call.target.as_ref().map(|t| self.walk(t, scope));
        let args: Vec<Estimate> = call.args.iter().map(|a| self.walk(a, scope)).collect();
        let sum = |v: &[Estimate]| v.iter().fold(0u64, |acc, x| acc.saturating_add(x.cost));
        let target_cost = target.as_ref().map(|t| t.cost).unwrap_or(0);
        let name = call.func_name.as_str();
        match name {
            "_&&_" | "_||_" => return est(sum(&args), Ty::Bool),
            "_?_:_" if args.len() == 3 => {
                let (a, b) = (&args[1], &args[2]);
                let ty = if a.cost >= b.cost {
                    a.ty.clone()
                } else {
                    b.ty.clone()
                };
                return est(args[0].cost.saturating_add(a.cost.max(b.cost)), ty);
            }
            "_[_]" if args.len() == 2 => {
                let ty = match (&args[0].ty, &call.args[1].expr) {
                    (Ty::Object { .. }, Expr::Literal(LiteralValue::String(k))) => {
                        args[0].ty.field(k.inner())
                    }
                    (t, _) => t.element_or_value(),
                };
                return est(sum(&args).saturating_add(1), ty);
            }
            _ => {}
        }
        // The size driving the cost: the receiver's, else the largest
        // argument's.
        let size = if SIZED_FUNCTIONS.contains(&name) {
            let mut size = target
                .as_ref()
                .filter(|t| t.ty.is_sized())
                .map(|t| t.ty.max_size())
                .unwrap_or(0);
            for a in &args {
                if a.ty.is_sized() {
                    size = size.max(a.ty.max_size());
                }
            }
            tenth(size)
        } else {
            0
        };
        let ty = result_type(name, target.as_ref().map(|t| &t.ty), &args);
        est(
            1u64.saturating_add(target_cost)
                .saturating_add(sum(&args))
                .saturating_add(size),
            ty,
        )
    }

    fn comprehension(&self, c: &ComprehensionExpr, scope: &mut Vec<(String, Ty)>) -> Estimate {
        let range = self.walk(&c.iter_range, scope);
        let init = self.walk(&c.accu_init, scope);
        let n = range.ty.max_size();
        let depth = scope.len();
        let (first, second) = match (&range.ty, &c.iter_var2) {
            (Ty::List { items, .. }, Some(_)) => (Ty::Int, (**items).clone()),
            (Ty::Object { .. }, Some(_)) => (Ty::string(), range.ty.element_or_value()),
            (t, _) => (t.element(), Ty::Dyn),
        };
        scope.push((c.iter_var.clone(), first));
        if let Some(v2) = &c.iter_var2 {
            scope.push((v2.clone(), second));
        }
        scope.push((c.accu_var.clone(), init.ty.clone()));
        let cond = self.walk(&c.loop_cond, scope);
        let step = self.walk(&c.loop_step, scope);
        let result = self.walk(&c.result, scope);
        scope.truncate(depth);
        let body = cond.cost.saturating_add(step.cost).max(1);
        let cost = range
            .cost
            .saturating_add(init.cost)
            .saturating_add(result.cost)
            .saturating_add(n.saturating_mul(body));
        // `map`/`filter` build a list as long as their range.
        let ty = match &init.ty {
            Ty::List { .. } => Ty::List {
                items: Box::new(appended_item_type(&c.loop_step, &step.ty)),
                max_items: Some(n),
            },
            t => t.clone(),
        };
        est(cost, ty)
    }
}

impl Ty {
    /// The type of `x[i]`: a list's items, a map's values.
    fn element_or_value(&self) -> Ty {
        match self {
            Ty::List { items, .. } => (**items).clone(),
            Ty::Object { additional, .. } => additional.as_deref().cloned().unwrap_or(Ty::Dyn),
            _ => Ty::Dyn,
        }
    }
}

/// The item type of the list a `map`/`filter` step appends (`accu + [x]`).
fn appended_item_type(step: &IdedExpr, step_ty: &Ty) -> Ty {
    let _ = step;
    match step_ty {
        Ty::List { items, .. } => (**items).clone(),
        _ => Ty::Dyn,
    }
}

/// The result type of a call, as far as sizes matter.
fn result_type(name: &str, target: Option<&Ty>, args: &[Estimate]) -> Ty {
    let receiver = target.or(args.first().map(|a| &a.ty));
    match name {
        "size" | "int" | "indexOf" | "lastIndexOf" => Ty::Int,
        "double" => Ty::Double,
        "uint" => Ty::UInt,
        "contains" | "startsWith" | "endsWith" | "matches" | "isSorted" | "_==_" | "_!=_"
        | "_<_" | "_<=_" | "_>_" | "_>=_" | "@in" | "!_" | "has" => Ty::Bool,
        "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "reverse" | "find"
        | "charAt" | "format" => match receiver {
            Some(t @ Ty::String { .. }) => t.clone(),
            _ => Ty::string(),
        },
        "string" => Ty::string(),
        "split" | "findAll" => Ty::List {
            items: Box::new(match receiver {
                Some(t @ Ty::String { .. }) => t.clone(),
                _ => Ty::string(),
            }),
            max_items: receiver.map(|t| t.max_size()),
        },
        "join" => Ty::string(),
        "_+_" => match (args.first().map(|a| &a.ty), args.get(1).map(|a| &a.ty)) {
            (Some(Ty::String { max_length: a }), Some(Ty::String { max_length: b })) => {
                Ty::String {
                    max_length: a.zip(*b).map(|(a, b)| a.saturating_add(b)),
                }
            }
            (
                Some(Ty::List {
                    items,
                    max_items: a,
                }),
                Some(Ty::List { max_items: b, .. }),
            ) => Ty::List {
                items: items.clone(),
                max_items: a.zip(*b).map(|(a, b)| a.saturating_add(b)),
            },
            (Some(t @ (Ty::Int | Ty::UInt | Ty::Double)), _) => t.clone(),
            _ => Ty::Dyn,
        },
        "sort" | "distinct" | "slice" | "flatten" => receiver.cloned().unwrap_or(Ty::Dyn),
        "min" | "max" | "sum" => receiver.map(|t| t.element()).unwrap_or(Ty::Dyn),
        _ => Ty::Dyn,
    }
}

/// The static cost estimate of `ast` with variables typed by `vars`.
pub(crate) fn estimate(ast: &IdedExpr, vars: &BTreeMap<String, Ty>) -> u64 {
    Estimator { vars }.walk(ast, &mut Vec::new()).cost
}

/// The cost of evaluating `e` once, not counting iterations of the
/// comprehensions inside it (those charge for themselves).
fn flat_cost(e: &IdedExpr) -> u64 {
    match &e.expr {
        Expr::Literal(_) | Expr::Unspecified => 0,
        Expr::Ident(_) => 1,
        Expr::Select(sel) => 1 + flat_cost(&sel.operand),
        Expr::Call(call) => {
            1 + call.target.as_deref().map(flat_cost).unwrap_or(0)
                + call.args.iter().map(flat_cost).sum::<u64>()
        }
        Expr::List(l) => 1 + l.elements.iter().map(flat_cost).sum::<u64>(),
        Expr::Map(m) => {
            1 + m
                .entries
                .iter()
                .map(|en| match &en.expr {
                    EntryExpr::MapEntry(me) => flat_cost(&me.key) + flat_cost(&me.value),
                    EntryExpr::StructField(f) => flat_cost(&f.value),
                })
                .sum::<u64>()
        }
        Expr::Struct(s) => {
            1 + s
                .entries
                .iter()
                .map(|en| match &en.expr {
                    EntryExpr::MapEntry(me) => flat_cost(&me.key) + flat_cost(&me.value),
                    EntryExpr::StructField(f) => flat_cost(&f.value),
                })
                .sum::<u64>()
        }
        Expr::Comprehension(c) => {
            1 + flat_cost(&c.iter_range) + flat_cost(&c.accu_init) + flat_cost(&c.result)
        }
    }
}

/// Ids for the nodes the instrumentation adds: above any the parser gives.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// `@charge(n, e)`.
fn charged(ids: &mut Ids, n: u64, e: IdedExpr) -> IdedExpr {
    let n = IdedExpr {
        id: ids.next(),
        expr: Expr::Literal(LiteralValue::Int((n.min(i64::MAX as u64) as i64).into())),
    };
    IdedExpr {
        id: ids.next(),
        expr: Expr::Call(CallExpr {
            func_name: CHARGE.to_string(),
            target: None,
            args: vec![n, e],
        }),
    }
}

fn is_ident(e: &IdedExpr, name: &str) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == name)
}

/// The `[x]` of an `accu + [x]` step.
fn appended<'a>(step: &'a mut IdedExpr, accu: &str) -> Option<&'a mut IdedExpr> {
    if let Expr::Call(call) = &mut step.expr
        && call.func_name == "_+_"
        && call.target.is_none()
        && call.args.len() == 2
        && is_ident(&call.args[0], accu)
        && let Expr::List(list) = &mut call.args[1].expr
        && list.elements.len() == 1
    {
        return Some(&mut list.elements[0]);
    }
    None
}

fn instrument_in(e: &mut IdedExpr, ids: &mut Ids) {
    match &mut e.expr {
        Expr::Select(sel) => instrument_in(&mut sel.operand, ids),
        Expr::Call(call) => {
            if let Some(t) = call.target.as_deref_mut() {
                instrument_in(t, ids);
            }
            for a in &mut call.args {
                instrument_in(a, ids);
            }
        }
        Expr::List(l) => {
            for el in &mut l.elements {
                instrument_in(el, ids);
            }
        }
        Expr::Map(m) => {
            for en in &mut m.entries {
                match &mut en.expr {
                    EntryExpr::MapEntry(me) => {
                        instrument_in(&mut me.key, ids);
                        instrument_in(&mut me.value, ids);
                    }
                    EntryExpr::StructField(f) => instrument_in(&mut f.value, ids),
                }
            }
        }
        Expr::Struct(s) => {
            for en in &mut s.entries {
                match &mut en.expr {
                    EntryExpr::MapEntry(me) => {
                        instrument_in(&mut me.key, ids);
                        instrument_in(&mut me.value, ids);
                    }
                    EntryExpr::StructField(f) => instrument_in(&mut f.value, ids),
                }
            }
        }
        Expr::Comprehension(c) => {
            let n = (flat_cost(&c.loop_cond) + flat_cost(&c.loop_step)).max(1);
            for part in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                instrument_in(part, ids);
            }
            let accu = c.accu_var.clone();
            // cel-rust runs `map`/`filter` (literal condition, step appending
            // `[x]` to the accumulator, maybe under a guard) on a fast path
            // that must keep recognising the step: charge inside the
            // appended item or the guard. Anything else charges in its
            // condition, which every iteration evaluates first.
            let fast_path =
                matches!(c.loop_cond.expr, Expr::Literal(_)) && is_ident(&c.result, &accu);
            if fast_path {
                if let Some(item) = appended(&mut c.loop_step, &accu) {
                    let taken = std::mem::take(item);
                    *item = charged(ids, n, taken);
                    return;
                }
                if let Expr::Call(call) = &mut c.loop_step.expr
                    && call.func_name == "_?_:_"
                    && call.args.len() == 3
                    && is_ident(&call.args[2], &accu)
                    && appended(&mut call.args[1], &accu).is_some()
                {
                    let guard = std::mem::take(&mut call.args[0]);
                    call.args[0] = charged(ids, n, guard);
                    return;
                }
            }
            let cond = std::mem::take(&mut c.loop_cond);
            c.loop_cond = charged(ids, n, cond);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn max_id(e: &IdedExpr) -> u64 {
    let mut m = e.id;
    let mut visit = |x: &IdedExpr| m = m.max(max_id(x));
    match &e.expr {
        Expr::Select(sel) => visit(&sel.operand),
        Expr::Call(call) => {
            if let Some(t) = call.target.as_deref() {
                visit(t);
            }
            call.args.iter().for_each(&mut visit);
        }
        Expr::List(l) => l.elements.iter().for_each(&mut visit),
        Expr::Map(map) => {
            for en in &map.entries {
                if let EntryExpr::MapEntry(me) = &en.expr {
                    visit(&me.key);
                    visit(&me.value);
                }
            }
        }
        Expr::Struct(s) => {
            for en in &s.entries {
                match &en.expr {
                    EntryExpr::MapEntry(me) => {
                        visit(&me.key);
                        visit(&me.value);
                    }
                    EntryExpr::StructField(f) => visit(&f.value),
                }
            }
        }
        Expr::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                visit(part);
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    m
}

/// Rewrites `ast` to charge the runtime cost; gives it and the cost of the
/// work outside any loop.
pub(crate) fn instrument(mut ast: IdedExpr) -> (IdedExpr, u64) {
    let base = flat_cost(&ast).max(1);
    let mut ids = Ids(max_id(&ast));
    instrument_in(&mut ast, &mut ids);
    (ast, base)
}
