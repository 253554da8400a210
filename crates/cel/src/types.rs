//! What the compiler knows of a variable: its shape and declared bounds.
//!
//! The bounds (`maxItems`, `maxLength`, `maxProperties`) drive the static
//! cost estimate exactly as upstream's: an unbounded list is costed as if
//! it filled a whole request.

use std::collections::BTreeMap;

/// Largest request body the apiserver accepts (3 MiB): upstream bounds
/// every unbounded string, list and map by what fits in it.
pub const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;

/// The declared type of a CEL variable, or of a part of one.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Ty {
    /// Anything: no bound is known.
    #[default]
    Dyn,
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `uint`.
    UInt,
    /// `double`: JSON integers given for it are converted to doubles.
    Double,
    /// `string`, with its `maxLength` when declared.
    String {
        /// The most characters the string may have.
        max_length: Option<u64>,
    },
    /// `bytes`.
    Bytes,
    /// A `x-kubernetes-int-or-string` value.
    IntOrString,
    /// `list(items)`, with its `maxItems` when declared.
    List {
        /// The type of each item.
        items: Box<Ty>,
        /// The most items the list may have.
        max_items: Option<u64>,
    },
    /// An object: known properties, and the type of any others.
    Object {
        /// Declared properties.
        properties: BTreeMap<String, Ty>,
        /// The type of properties not declared (`additionalProperties`), if
        /// any are allowed.
        additional: Option<Box<Ty>>,
        /// The most properties the object may have.
        max_properties: Option<u64>,
    },
}

impl Ty {
    /// A string without declared bound.
    pub fn string() -> Ty {
        Ty::String { max_length: None }
    }

    /// A list of `items` without declared bound.
    pub fn list(items: Ty) -> Ty {
        Ty::List {
            items: Box::new(items),
            max_items: None,
        }
    }

    /// An object with the given properties and nothing else.
    pub fn object(properties: impl IntoIterator<Item = (String, Ty)>) -> Ty {
        Ty::Object {
            properties: properties.into_iter().collect(),
            additional: None,
            max_properties: None,
        }
    }

    /// A map of string keys to `values` (`additionalProperties`).
    pub fn map(values: Ty) -> Ty {
        Ty::Object {
            properties: BTreeMap::new(),
            additional: Some(Box::new(values)),
            max_properties: None,
        }
    }

    /// The fewest bytes a value of this type takes in JSON, used as
    /// upstream does to bound how many fit in a request.
    pub(crate) fn min_serialized_size(&self) -> u64 {
        match self {
            Ty::Dyn | Ty::Int | Ty::UInt | Ty::Double | Ty::IntOrString => 1,
            Ty::Bool => 4,
            Ty::String { .. } | Ty::Bytes => 2,
            Ty::List { .. } | Ty::Object { .. } => 2,
        }
    }

    /// The most elements (items, properties or characters) a value of this
    /// type can hold: the declared bound, or what fits in a request.
    pub(crate) fn max_size(&self) -> u64 {
        let fits = |min: u64| MAX_REQUEST_SIZE_BYTES.saturating_sub(2) / (min + 1).max(1);
        match self {
            Ty::String { max_length } => max_length.unwrap_or(MAX_REQUEST_SIZE_BYTES - 2),
            Ty::List { items, max_items } => {
                max_items.unwrap_or_else(|| fits(items.min_serialized_size()))
            }
            Ty::Object {
                properties,
                additional,
                max_properties,
            } => match (max_properties, additional) {
                (Some(m), _) => *m,
                // A key takes at least `"":` (3 bytes) besides its value.
                (None, Some(values)) => fits(values.min_serialized_size() + 3),
                (None, None) => properties.len() as u64,
            },
            Ty::Bytes | Ty::Dyn => MAX_REQUEST_SIZE_BYTES,
            _ => 1,
        }
    }

    /// The type of an element when iterating: list items, map keys.
    pub(crate) fn element(&self) -> Ty {
        match self {
            Ty::List { items, .. } => (**items).clone(),
            Ty::Object { .. } => Ty::string(),
            _ => Ty::Dyn,
        }
    }

    /// The type of `self.<field>` (`name` as written in CEL, escaped) or
    /// `self[<key>]`.
    pub(crate) fn field(&self, name: &str) -> Ty {
        match self {
            Ty::Object {
                properties,
                additional,
                ..
            } => properties
                .get(name)
                .or_else(|| properties.get(&unescape_property(name)))
                .cloned()
                .or_else(|| additional.as_deref().cloned())
                .unwrap_or(Ty::Dyn),
            _ => Ty::Dyn,
        }
    }

    /// Whether the type is a bounded collection or a string (`size()`
    /// matters for cost).
    pub(crate) fn is_sized(&self) -> bool {
        matches!(
            self,
            Ty::String { .. } | Ty::List { .. } | Ty::Object { .. } | Ty::Bytes | Ty::Dyn
        )
    }
}

/// CEL's reserved words: a property so named is reached as `__name__`.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// The name a declared property has in CEL, as upstream escapes it
/// (`namespace` → `__namespace__`, `a-b` → `a__dash__b`, `a.b` →
/// `a__dot__b`, `a/b` → `a__slash__b`, `__` → `__underscores__`); `None`
/// when the name can't be reached from CEL.
pub fn escape_property(name: &str) -> Option<String> {
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok_first = first.is_ascii_alphabetic() || matches!(first, '_' | '.' | '-' | '/');
    if !ok_first
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return None;
    }
    Some(
        name.replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__"),
    )
}

/// The property name behind a CEL field name (inverse of
/// [`escape_property`]).
pub fn unescape_property(name: &str) -> String {
    if let Some(inner) = name.strip_prefix("__").and_then(|n| n.strip_suffix("__"))
        && RESERVED.contains(&inner)
    {
        return inner.to_string();
    }
    if !name.contains("__") {
        return name.to_string();
    }
    let mut out = String::new();
    let mut rest = name;
    while let Some(pos) = rest.find("__") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        let mut matched = false;
        for (esc, plain) in [
            ("__underscores__", "__"),
            ("__dot__", "."),
            ("__dash__", "-"),
            ("__slash__", "/"),
        ] {
            if let Some(r) = after.strip_prefix(esc) {
                out.push_str(plain);
                rest = r;
                matched = true;
                break;
            }
        }
        if !matched {
            out.push_str("__");
            rest = &after[2..];
        }
    }
    out.push_str(rest);
    out
}
