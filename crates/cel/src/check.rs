//! The compile-time checks cel-rust leaves to run time: references to
//! undeclared variables and unknown functions, reported as cel-go's checker
//! words them (`undeclared reference to 'x' (in container '')`).

use std::collections::{BTreeMap, BTreeSet};

use cel::common::ast::{EntryExpr, Expr, SourceInfo};
use cel::{IdedExpr, ParseErrors};

use crate::types::Ty;

/// Identifiers that name types, usable as values (`type(x) == int`).
const TYPE_IDENTS: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "optional_type",
];

/// Namespaces of global functions (`strings.quote(x)`).
const NAMESPACES: &[&str] = &[
    "strings", "base64", "math", "lists", "optional", "sets", "cel",
];

/// Global functions: CEL's standard ones and Kubernetes'. Kubernetes ones
/// this crate does not implement still compile (the rule fails when run),
/// so CRDs using them install as upstream.
const GLOBAL_FUNCTIONS: &[&str] = &[
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "duration",
    "timestamp",
    "type",
    "dyn",
    "matches",
    "quantity",
    "isQuantity",
    "url",
    "isURL",
    "ip",
    "isIP",
    "cidr",
    "isCIDR",
    "semver",
    "isSemver",
    "format",
    "strings.quote",
    "base64.encode",
    "base64.decode",
    "lists.range",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    "math.greatest",
    "math.least",
    "math.abs",
    "math.bitAnd",
    "math.bitNot",
    "math.bitOr",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "math.bitXor",
    "math.ceil",
    "math.floor",
    "math.isFinite",
    "math.isInf",
    "math.isNaN",
    "math.round",
    "math.sign",
    "math.sqrt",
    "math.trunc",
];

/// Member functions, standard and Kubernetes' (strings, lists, regex, url,
/// quantity, ip/cidr, semver, authorizer, optional).
const MEMBER_FUNCTIONS: &[&str] = &[
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "size",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "format",
    "reverse",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "slice",
    "flatten",
    "distinct",
    "sort",
    "isSorted",
    "sum",
    "min",
    "max",
    "find",
    "findAll",
    "hasValue",
    "value",
    "or",
    "orValue",
    "optMap",
    "optFlatMap",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    "compareTo",
    "isLessThan",
    "isGreaterThan",
    "asInteger",
    "asApproximateFloat",
    "isInteger",
    "add",
    "sub",
    "sign",
    "family",
    "isUnspecified",
    "isLoopback",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "isGlobalUnicast",
    "prefixLength",
    "masked",
    "major",
    "minor",
    "patch",
    "group",
    "resource",
    "subresource",
    "namespace",
    "name",
    "check",
    "allowed",
    "reason",
    "errored",
    "error",
    "serviceAccount",
    "path",
    "verb",
    "fieldSelector",
    "labelSelector",
];

/// Formats one error the way cel-go does, with the `compilation failed: `
/// prefix kube-apiserver adds.
pub(crate) fn compile_failed(source: &str, line: usize, col: usize, msg: &str) -> String {
    format!("compilation failed: {}", error_text(source, line, col, msg))
}

/// `ERROR: <input>:L:C: msg` and the source line with a caret under column C.
fn error_text(source: &str, line: usize, col: usize, msg: &str) -> String {
    let mut out = format!("ERROR: <input>:{line}:{col}: {msg}");
    if let Some(text) = source.lines().nth(line.saturating_sub(1)) {
        out.push_str(&format!(
            "\n | {text}\n | {}^",
            ".".repeat(col.saturating_sub(1))
        ));
    }
    out
}

/// cel-rust's parse errors in upstream's format.
pub(crate) fn syntax_errors(source: &str, errs: &ParseErrors) -> String {
    let parts: Vec<String> = errs
        .errors
        .iter()
        .map(|e| {
            let line = e.pos.0.max(1) as usize;
            // cel-rust's column is 0-based; cel-go prints 1-based.
            let col = e.pos.1.max(0) as usize + 1;
            let msg = if e.msg.starts_with("Syntax error") {
                e.msg.clone()
            } else {
                format!("Syntax error: {}", e.msg)
            };
            error_text(source, line, col, &msg)
        })
        .collect();
    if parts.is_empty() {
        return compile_failed(source, 1, 1, "Syntax error");
    }
    format!("compilation failed: {}", parts.join("\n"))
}

/// Line and 1-based column (in characters) of byte `offset` in `source`.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in source.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

struct Checker<'a> {
    source: &'a str,
    info: &'a SourceInfo,
    vars: &'a BTreeMap<String, Ty>,
    errors: Vec<String>,
    referenced: BTreeSet<String>,
}

impl Checker<'_> {
    fn error(&mut self, id: u64, msg: String) {
        let offset = self
            .info
            .offset_for(id)
            .map(|(s, _)| s as usize)
            .unwrap_or(0);
        let (line, col) = line_col(self.source, offset);
        self.errors.push(error_text(self.source, line, col, &msg));
    }

    fn walk(&mut self, e: &IdedExpr, scope: &mut Vec<String>) {
        match &e.expr {
            Expr::Ident(name) => {
                if scope.iter().any(|s| s == name) {
                    return;
                }
                if self.vars.contains_key(name) {
                    self.referenced.insert(name.clone());
                } else if !TYPE_IDENTS.contains(&name.as_str()) {
                    self.error(
                        e.id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    );
                }
            }
            Expr::Select(sel) => self.walk(&sel.operand, scope),
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let is_operator = name.starts_with('_')
                    || name.contains('@')
                    || name.starts_with('!')
                    || name.starts_with('-');
                match &call.target {
                    Some(target) => {
                        let namespace = match &target.expr {
                            Expr::Ident(ns)
                                if NAMESPACES.contains(&ns.as_str())
                                    && !self.vars.contains_key(ns)
                                    && !scope.iter().any(|s| s == ns) =>
                            {
                                Some(ns.clone())
                            }
                            _ => None,
                        };
                        match namespace {
                            Some(ns) => {
                                let full = format!("{ns}.{name}");
                                if !is_operator && !GLOBAL_FUNCTIONS.contains(&full.as_str()) {
                                    self.error(
                                        e.id,
                                        format!(
                                            "undeclared reference to '{full}' (in container '')"
                                        ),
                                    );
                                }
                            }
                            None => {
                                if !is_operator && !MEMBER_FUNCTIONS.contains(&name) {
                                    self.error(
                                        e.id,
                                        format!(
                                            "undeclared reference to '{name}' (in container '')"
                                        ),
                                    );
                                }
                                self.walk(target, scope);
                            }
                        }
                    }
                    None => {
                        if !is_operator && !GLOBAL_FUNCTIONS.contains(&name) {
                            self.error(
                                e.id,
                                format!("undeclared reference to '{name}' (in container '')"),
                            );
                        }
                    }
                }
                for a in &call.args {
                    self.walk(a, scope);
                }
            }
            Expr::List(list) => {
                for el in &list.elements {
                    self.walk(el, scope);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key, scope);
                        self.walk(&me.value, scope);
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &st.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => self.walk(&f.value, scope),
                        EntryExpr::MapEntry(me) => {
                            self.walk(&me.key, scope);
                            self.walk(&me.value, scope);
                        }
                    }
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, scope);
                self.walk(&c.accu_init, scope);
                let depth = scope.len();
                scope.push(c.accu_var.clone());
                scope.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    scope.push(v2.clone());
                }
                self.walk(&c.loop_cond, scope);
                self.walk(&c.loop_step, scope);
                self.walk(&c.result, scope);
                scope.truncate(depth);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// Checks `ast`; gives the declared variables it references, or upstream's
/// error text.
pub(crate) fn check(
    source: &str,
    info: &SourceInfo,
    ast: &IdedExpr,
    vars: &BTreeMap<String, Ty>,
) -> Result<BTreeSet<String>, String> {
    let mut checker = Checker {
        source,
        info,
        vars,
        errors: Vec::new(),
        referenced: BTreeSet::new(),
    };
    checker.walk(ast, &mut Vec::new());
    if checker.errors.is_empty() {
        Ok(checker.referenced)
    } else {
        Err(format!("compilation failed: {}", checker.errors.join("\n")))
    }
}

/// The depth of `ast` and the deepest nesting of comprehensions in it,
/// found without recursion (the AST may be deeper than the stack allows
/// recursing).
pub(crate) fn depth(ast: &IdedExpr) -> (usize, usize) {
    let mut max = 0;
    let mut max_loops = 0;
    let mut stack: Vec<(&IdedExpr, usize, usize)> = vec![(ast, 1, 0)];
    while let Some((e, d, l)) = stack.pop() {
        max = max.max(d);
        max_loops = max_loops.max(l);
        let l = if matches!(e.expr, Expr::Comprehension(_)) {
            l + 1
        } else {
            l
        };
        match &e.expr {
            Expr::Select(sel) => stack.push((&sel.operand, d + 1, l)),
            Expr::Call(call) => {
                if let Some(t) = call.target.as_deref() {
                    stack.push((t, d + 1, l));
                }
                stack.extend(call.args.iter().map(|a| (a, d + 1, l)));
            }
            Expr::List(list) => stack.extend(list.elements.iter().map(|a| (a, d + 1, l))),
            Expr::Map(m) => {
                for en in &m.entries {
                    match &en.expr {
                        EntryExpr::MapEntry(me) => {
                            stack.push((&me.key, d + 1, l));
                            stack.push((&me.value, d + 1, l));
                        }
                        EntryExpr::StructField(f) => stack.push((&f.value, d + 1, l)),
                    }
                }
            }
            Expr::Struct(st) => {
                for en in &st.entries {
                    match &en.expr {
                        EntryExpr::MapEntry(me) => {
                            stack.push((&me.key, d + 1, l));
                            stack.push((&me.value, d + 1, l));
                        }
                        EntryExpr::StructField(f) => stack.push((&f.value, d + 1, l)),
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
                    stack.push((part, d + 1, l));
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    (max, max_loops)
}
