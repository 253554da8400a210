//! Label and field selectors (apimachinery `pkg/labels/selector.go`,
//! `pkg/fields/selector.go`), used by list/watch filtering and by the
//! workload controllers' `spec.selector`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::validation::{validate_label_key, validate_label_value};

/// A malformed label or field selector; the message follows upstream's so
/// it can go straight into a 400 Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// Operator of one label selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LabelOperator {
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`
    NotIn,
    /// `key=a`
    Equals,
    /// `key==a`
    DoubleEquals,
    /// `key!=a`
    NotEquals,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>1` (integer comparison, node affinity style)
    GreaterThan,
    /// `key<1`
    LessThan,
}

/// One `key op values` term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: LabelOperator,
    /// Values, sorted and deduplicated (upstream keeps them as a set).
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds a validated requirement (upstream `labels.NewRequirement`).
    pub fn new(
        key: &str,
        operator: LabelOperator,
        values: Vec<String>,
    ) -> Result<Self, SelectorError> {
        let mut errs: Vec<String> = Vec::new();
        let key_errs = validate_label_key(key);
        if !key_errs.is_empty() {
            errs.push(format!(
                "key: Invalid value: {key:?}: {}",
                key_errs.join("; ")
            ));
        }
        let shown = format!("{values:?}");
        match operator {
            LabelOperator::In | LabelOperator::NotIn if values.is_empty() => errs.push(format!(
                "values: Invalid value: {shown}: for 'in', 'notin' operators, values set can't be empty"
            )),
            LabelOperator::Equals | LabelOperator::DoubleEquals | LabelOperator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(format!(
                    "values: Invalid value: {shown}: exact-match compatibility requires one single value"
                ))
            }
            LabelOperator::Exists | LabelOperator::DoesNotExist if !values.is_empty() => errs.push(format!(
                "values: Invalid value: {shown}: values set must be empty for exists and does not exist"
            )),
            LabelOperator::GreaterThan | LabelOperator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {shown}: for 'Gt', 'Lt' operators, exactly one value is required"
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let v_errs = validate_label_value(v);
            if !v_errs.is_empty() {
                errs.push(format!(
                    "values[{i}][{key}]: Invalid value: {v:?}: {}",
                    v_errs.join("; ")
                ));
            }
        }
        match errs.len() {
            0 => {}
            1 => return Err(SelectorError(errs.remove(0))),
            _ => return Err(SelectorError(format!("[{}]", errs.join(", ")))),
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    /// Whether a label set satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.operator {
            LabelOperator::In | LabelOperator::Equals | LabelOperator::DoubleEquals => {
                got.is_some_and(|v| self.values.contains(v))
            }
            LabelOperator::NotIn | LabelOperator::NotEquals => {
                got.is_none_or(|v| !self.values.contains(v))
            }
            LabelOperator::Exists => got.is_some(),
            LabelOperator::DoesNotExist => got.is_none(),
            LabelOperator::GreaterThan | LabelOperator::LessThan => {
                let (Some(Ok(have)), Some(Ok(want))) = (
                    got.map(|v| v.parse::<i64>()),
                    self.values.first().map(|v| v.parse::<i64>()),
                ) else {
                    return false;
                };
                if self.operator == LabelOperator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == LabelOperator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let values = self.values.join(",");
        match self.operator {
            LabelOperator::Exists | LabelOperator::DoesNotExist => Ok(()),
            LabelOperator::Equals => write!(f, "={values}"),
            LabelOperator::DoubleEquals => write!(f, "=={values}"),
            LabelOperator::NotEquals => write!(f, "!={values}"),
            LabelOperator::GreaterThan => write!(f, ">{values}"),
            LabelOperator::LessThan => write!(f, "<{values}"),
            LabelOperator::In => write!(f, " in ({values})"),
            LabelOperator::NotIn => write!(f, " notin ({values})"),
        }
    }
}

/// A parsed label selector: all requirements must hold. An empty selector
/// matches everything; [`LabelSelector::nothing`] matches nothing (what a
/// missing `spec.selector` means upstream).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches no object.
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Builds a selector from requirements (sorted by key, as upstream).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            nothing: false,
        }
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether this selector matches everything (no requirements).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Whether the label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Like [`matches`](Self::matches) for a JSON `metadata.labels` value
    /// (absent or `null` = no labels; non-string values are ignored).
    pub fn matches_value(&self, labels: Option<&Value>) -> bool {
        let map: BTreeMap<String, String> = labels
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&map)
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string form (`a=b,c in (x,y),!d`), as upstream's
    /// `Selector.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    In,
    NotIn,
    OpenPar,
    ClosedPar,
    Comma,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    End,
}

impl Token {
    fn literal(&self) -> &str {
        match self {
            Token::Identifier(s) => s,
            Token::In => "in",
            Token::NotIn => "notin",
            Token::OpenPar => "(",
            Token::ClosedPar => ")",
            Token::Comma => ",",
            Token::Not => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::GreaterThan => ">",
            Token::LessThan => "<",
            Token::End => "",
        }
    }

    /// In value position `in`/`notin` are plain identifiers (upstream's
    /// `Values` parser context), so `in=notin` is a valid selector.
    fn as_value(&self) -> Token {
        match self {
            Token::In | Token::NotIn => Token::Identifier(self.literal().to_string()),
            t => t.clone(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn special_token(s: &str) -> Option<Token> {
    Some(match s {
        "(" => Token::OpenPar,
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::Not,
        "=" => Token::Equals,
        "==" => Token::DoubleEquals,
        "!=" => Token::NotEquals,
        ">" => Token::GreaterThan,
        "<" => Token::LessThan,
        _ => return None,
    })
}

fn lex(input: &str) -> Result<Vec<Token>, SelectorError> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_special(c) {
            // Longest run of symbols that still forms a token.
            let mut buf = String::new();
            let mut last: Option<(Token, usize)> = None;
            let mut j = i;
            while j < chars.len() && is_special(chars[j]) {
                buf.push(chars[j]);
                j += 1;
                match special_token(&buf) {
                    Some(t) => last = Some((t, j)),
                    None if last.is_some() => break,
                    None => {}
                }
            }
            let Some((tok, end)) = last else {
                return Err(SelectorError(format!(
                    "error expected: keyword found '{buf}'"
                )));
            };
            out.push(tok);
            i = end;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(match word.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier(word),
            });
        }
    }
    out.push(Token::End);
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_value(&self) -> Token {
        self.tokens[self.pos].as_value()
    }

    fn next_raw(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn next_value(&mut self) -> Token {
        self.next_raw().as_value()
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.peek_value() {
                Token::Identifier(_) | Token::Not => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.next_value() {
                        Token::End => return Ok(reqs),
                        Token::Comma => {
                            let t = self.peek_value();
                            if !matches!(t, Token::Identifier(_) | Token::Not) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ));
                        }
                    }
                }
                Token::End => return Ok(reqs),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let mut tok = self.next_value();
        let negated = tok == Token::Not;
        if negated {
            tok = self.next_value();
        }
        let Token::Identifier(key) = tok else {
            return Err(format!("found '{}', expected: identifier", tok.literal()));
        };
        let key_errs = validate_label_key(&key);
        if !key_errs.is_empty() {
            return Err(format!(
                "key: Invalid value: {key:?}: {}",
                key_errs.join("; ")
            ));
        }
        if matches!(self.peek_value(), Token::End | Token::Comma) {
            let op = if negated {
                LabelOperator::DoesNotExist
            } else {
                LabelOperator::Exists
            };
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.0);
        }
        if negated {
            return Err(format!("found '{key}', expected: ',' or 'end of string'"));
        }
        let op = match self.next_raw() {
            Token::In => LabelOperator::In,
            Token::NotIn => LabelOperator::NotIn,
            Token::Equals => LabelOperator::Equals,
            Token::DoubleEquals => LabelOperator::DoubleEquals,
            Token::NotEquals => LabelOperator::NotEquals,
            Token::GreaterThan => LabelOperator::GreaterThan,
            Token::LessThan => LabelOperator::LessThan,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ));
            }
        };
        let values = match op {
            LabelOperator::In | LabelOperator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values).map_err(|e| e.0)
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let t = self.next_value();
        if t != Token::OpenPar {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.peek_value() {
            Token::Identifier(_) | Token::Comma => {
                let lit = self.peek_value();
                let values = self.parse_identifiers_list()?;
                if self.next_value() != Token::ClosedPar {
                    return Err(format!("found '{}', expected: ')'", lit.literal()));
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.next_value();
                Ok(vec![String::new()])
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    /// A comma-separated list in which empty entries mean the empty value.
    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut values: Vec<String> = Vec::new();
        loop {
            match self.next_value() {
                Token::Identifier(v) => {
                    values.push(v);
                    match self.peek_value() {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(values),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    match self.peek_value() {
                        Token::ClosedPar => {
                            values.push(String::new());
                            return Ok(values);
                        }
                        Token::Comma => {
                            self.next_value();
                            values.push(String::new());
                        }
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.peek_value(), Token::End | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        match self.next_value() {
            Token::Identifier(v) => Ok(vec![v]),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

/// Parses a label selector string (`a=b,c!=d,e in (x,y),f notin (z),g,!h`),
/// as sent in `?labelSelector=`.
pub fn parse_label_selector(s: &str) -> Result<LabelSelector, SelectorError> {
    let tokens = lex(s)?;
    let mut p = Parser { tokens, pos: 0 };
    let reqs = p.parse().map_err(SelectorError)?;
    Ok(LabelSelector::from_requirements(reqs))
}

/// Converts a `metav1.LabelSelector` JSON (`matchLabels`, `matchExpressions`)
/// into a selector, as upstream `LabelSelectorAsSelector`: `null` matches
/// nothing, `{}` matches everything.
pub fn label_selector_from_json(v: &Value) -> Result<LabelSelector, SelectorError> {
    let obj = match v {
        Value::Null => return Ok(LabelSelector::nothing()),
        Value::Object(o) => o,
        _ => {
            return Err(SelectorError(
                "label selector must be an object".to_string(),
            ));
        }
    };
    let mut reqs = Vec::new();
    if let Some(ml) = obj.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            let v = v.as_str().unwrap_or_default().to_string();
            reqs.push(Requirement::new(k, LabelOperator::Equals, vec![v])?);
        }
    }
    if let Some(exprs) = obj.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let op_name = e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let op = match op_name {
                "In" => LabelOperator::In,
                "NotIn" => LabelOperator::NotIn,
                "Exists" => LabelOperator::Exists,
                "DoesNotExist" => LabelOperator::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            reqs.push(Requirement::new(key, op, values)?);
        }
    }
    Ok(LabelSelector::from_requirements(reqs))
}

/// One `field=value` / `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted field path, e.g. `spec.nodeName`.
    pub field: String,
    /// True for `!=`.
    pub not_equal: bool,
    /// The (unescaped) value.
    pub value: String,
}

/// A parsed field selector: all terms must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The terms, sorted like upstream (by their text).
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// The field names used, so the server can reject fields a kind does not
    /// support (`field label not supported: x`).
    pub fn fields(&self) -> Vec<&str> {
        self.requirements.iter().map(|r| r.field.as_str()).collect()
    }

    /// Whether the selector has no terms (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required by an `=`/`==` term on `field`, if any; lets the
    /// server narrow a list (e.g. `metadata.name`, `spec.nodeName`).
    pub fn exact_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && !r.not_equal)
            .map(|r| r.value.as_str())
    }

    /// Evaluates against an object, resolving dotted paths in its JSON; a
    /// missing field reads as the empty string, booleans and numbers as their
    /// text (`spec.hostNetwork=true`).
    pub fn matches(&self, object: &Value) -> bool {
        self.matches_with(|field| field_value(object, field))
    }

    /// Evaluates with a caller-supplied field accessor, for kinds whose
    /// selectable fields are not plain JSON paths.
    pub fn matches_with(&self, mut get: impl FnMut(&str) -> String) -> bool {
        self.requirements
            .iter()
            .all(|r| (get(&r.field) == r.value) != r.not_equal)
    }
}

impl fmt::Display for FieldSelector {
    /// Canonical form, values re-escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if r.not_equal { "!=" } else { "=" };
            let escaped = r
                .value
                .replace('\\', r"\\")
                .replace(',', r"\,")
                .replace('=', r"\=");
            write!(f, "{}{op}{escaped}", r.field)?;
        }
        Ok(())
    }
}

/// Resolves a dotted path in a JSON object to its field-selector text.
fn field_value(object: &Value, path: &str) -> String {
    field_text(object, path).into_owned()
}

/// The text a field selector compares for `path` in `object` (missing
/// fields read as the empty string, booleans and numbers as their text).
/// Public so an index of watches by a field's value (the apiserver's
/// watch cache) agrees exactly with [`FieldSelector::matches`]; borrowed
/// because that index reads it for every event.
pub fn field_text<'a>(object: &'a Value, path: &str) -> Cow<'a, str> {
    let mut cur = object;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return Cow::Borrowed(""),
        }
    }
    match cur {
        Value::String(s) => Cow::Borrowed(s),
        Value::Bool(b) => Cow::Owned(b.to_string()),
        Value::Number(n) => Cow::Owned(n.to_string()),
        _ => Cow::Borrowed(""),
    }
}

/// Splits on commas not escaped by a backslash.
fn split_terms(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    terms.push(cur);
    terms
}

/// Splits a term at its first operator (`!=`, `==` or `=`), ignoring
/// backslash-escaped characters.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    // Walk by characters (not bytes) so slicing never lands inside a
    // multi-byte character.
    let mut chars = term.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
            continue;
        }
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    )));
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Upstream formats the rune with %v, which prints its code point.
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )));
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError(
            "invalid field selector: invalid escape sequence: \\".to_string(),
        ));
    }
    Ok(out)
}

/// Parses a field selector (`metadata.name=x,spec.nodeName!=n1`), as sent in
/// `?fieldSelector=`. Values may escape `\,`, `\=` and `\\`.
pub fn parse_field_selector(s: &str) -> Result<FieldSelector, SelectorError> {
    let mut parts = split_terms(s);
    parts.sort();
    let mut requirements = Vec::new();
    for part in &parts {
        if part.is_empty() {
            continue;
        }
        let Some((lhs, op, rhs)) = split_term(part) else {
            return Err(SelectorError(format!(
                "invalid selector: '{s}'; can't understand '{part}'"
            )));
        };
        requirements.push(FieldRequirement {
            field: lhs.to_string(),
            not_equal: op == "!=",
            value: unescape_value(rhs)?,
        });
    }
    Ok(FieldSelector { requirements })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_selectors() {
        let s = parse_label_selector("app=web,tier==front,env!=prod").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("env", "prod")
        ])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert_eq!(s.to_string(), "app=web,env!=prod,tier==front");
    }

    #[test]
    fn set_selectors() {
        let s = parse_label_selector("env in (prod, staging),tier notin (db),app,!legacy").unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("app", "x")])));
        assert!(s.matches(&labels(&[
            ("env", "staging"),
            ("app", "x"),
            ("tier", "web")
        ])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("app", "x")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("app", "x"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("app", "x"), ("legacy", "")])));
        assert_eq!(
            s.to_string(),
            "app,env in (prod,staging),!legacy,tier notin (db)"
        );
    }

    #[test]
    fn empty_and_edge_values() {
        assert!(parse_label_selector("").unwrap().is_empty());
        assert!(parse_label_selector("  ").unwrap().matches(&labels(&[])));
        let s = parse_label_selector("a=").unwrap();
        assert!(s.matches(&labels(&[("a", "")])));
        let s = parse_label_selector("in=notin").unwrap();
        assert!(s.matches(&labels(&[("in", "notin")])));
        let s = parse_label_selector("a in (x,)").unwrap();
        assert_eq!(s.requirements()[0].values, vec!["", "x"]);
        let s = parse_label_selector("node-role.kubernetes.io/control-plane").unwrap();
        assert!(s.matches(&labels(&[(
            "node-role.kubernetes.io/control-plane",
            "true"
        )])));
        let s = parse_label_selector("n>3").unwrap();
        assert!(s.matches(&labels(&[("n", "4")])));
        assert!(!s.matches(&labels(&[("n", "3")])));
    }

    #[test]
    fn label_selector_errors() {
        let e = parse_label_selector("a b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        let e = parse_label_selector("a=b,").unwrap_err();
        assert_eq!(e.to_string(), "found '', expected: identifier after ','");
        let e = parse_label_selector("a in x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to parse requirement: found 'x' expected: '('"
        );
        let e = parse_label_selector("=b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        let e = parse_label_selector("!a=b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to parse requirement: found 'a', expected: ',' or 'end of string'"
        );
        let e = parse_label_selector("a=b c").unwrap_err();
        assert_eq!(e.to_string(), "found 'c', expected: ',' or 'end of string'");
        let e = parse_label_selector("-a=b").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unable to parse requirement: key: Invalid value: \"-a\": name part"),
            "{e}"
        );
        let e = parse_label_selector("a=b c d").unwrap_err();
        assert!(e.to_string().contains("expected"));
        let e = parse_label_selector("a=x y!").unwrap_err();
        assert!(e.to_string().contains("found"));
        assert!(parse_label_selector("a=(b)").is_err());
        assert!(parse_label_selector("a>x").is_err());
    }

    #[test]
    fn matches_value_reads_json_labels() {
        let s = parse_label_selector("app=web").unwrap();
        assert!(s.matches_value(Some(&json!({"app": "web", "x": "y"}))));
        assert!(!s.matches_value(None));
        assert!(parse_label_selector("!app").unwrap().matches_value(None));
    }

    #[test]
    fn metav1_label_selector() {
        let s = label_selector_from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "old", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("old", "1")])));
        assert!(
            label_selector_from_json(&json!({}))
                .unwrap()
                .matches(&labels(&[]))
        );
        assert!(
            !label_selector_from_json(&Value::Null)
                .unwrap()
                .matches(&labels(&[]))
        );
        let e = label_selector_from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"Foo\" is not a valid label selector operator"
        );
        assert!(
            label_selector_from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p1", "namespace": "default"},
            "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}});
        let s = parse_field_selector("spec.nodeName=n1,status.phase!=Succeeded").unwrap();
        assert!(s.matches(&pod));
        assert_eq!(s.fields(), vec!["spec.nodeName", "status.phase"]);
        assert_eq!(s.exact_value("spec.nodeName"), Some("n1"));
        assert!(
            !parse_field_selector("metadata.name==p2")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            parse_field_selector("spec.hostNetwork=true")
                .unwrap()
                .matches(&pod)
        );
        // Missing fields read as "".
        assert!(
            parse_field_selector("spec.schedulerName=")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            parse_field_selector("spec.schedulerName!=x")
                .unwrap()
                .matches(&pod)
        );
        let ev = json!({"type": "Warning", "involvedObject": {"name": "p1", "kind": "Pod"}});
        assert!(
            parse_field_selector("type=Warning,involvedObject.name=p1")
                .unwrap()
                .matches(&ev)
        );
        assert!(parse_field_selector("").unwrap().is_empty());
    }

    #[test]
    fn field_selector_escapes_and_errors() {
        let s = parse_field_selector(r"metadata.name=a\,b\=c").unwrap();
        assert_eq!(s.requirements()[0].value, "a,b=c");
        assert_eq!(s.to_string(), r"metadata.name=a\,b\=c");
        let e = parse_field_selector("metadata.name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        let e = parse_field_selector(r"a=b\x").unwrap_err();
        assert_eq!(
            e.to_string(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        let e = parse_field_selector("a=b=c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid field selector: unescaped character in value: 61"
        );
    }
}
