//! `Schema::compile`: the checks kube-apiserver makes of a CRD version's
//! `openAPIV3Schema` (the CRD-schema rules of `validation.go` and the
//! structural-schema invariants), in upstream's words, and the
//! compilation of `x-kubernetes-validations` rules.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use rke2_cel::{Env, Program, Ty};
use serde_json::Value;

use crate::{FieldError, Node, Rule, Schema, child, go_quote, key};

/// The types a schema may name (`openapiV3Types`).
const TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

/// The reasons a rule may give.
const REASONS: &[&str] = &[
    "FieldValueDuplicate",
    "FieldValueForbidden",
    "FieldValueInvalid",
    "FieldValueRequired",
];

/// Largest request body: bounds what an unbounded list or map can hold,
/// as upstream estimates cardinality.
const MAX_REQUEST: u64 = rke2_cel::MAX_REQUEST_SIZE_BYTES;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Item,
    Field,
}

/// What the position in the schema implies for the checks below it.
#[derive(Clone)]
struct Ctx {
    allow_defaults: bool,
    disallow_reason: Option<String>,
    inside_meta: bool,
    /// The path above which `oldSelf` can't correlate (an atomic list's
    /// items, a set's items).
    uncorrelatable: Option<String>,
    /// How many times a rule here may run for one object.
    cardinality: u64,
}

struct Builder {
    errors: Vec<FieldError>,
    /// Estimated costs of the rules, with their paths.
    costs: Vec<(String, u64)>,
}

pub(crate) fn compile(props: &JSONSchemaProps) -> Result<Schema, Vec<FieldError>> {
    let mut b = Builder {
        errors: Vec::new(),
        costs: Vec::new(),
    };
    if props.nullable == Some(true) {
        b.errors.push(FieldError::forbidden(
            "nullable",
            "nullable cannot be true at the root",
        ));
    }
    let ctx = Ctx {
        allow_defaults: true,
        disallow_reason: None,
        inside_meta: false,
        uncorrelatable: None,
        cardinality: 1,
    };
    let root = b.node(props, Level::Root, "", &ctx, true);
    let total = b
        .costs
        .iter()
        .fold(0u64, |acc, (_, c)| acc.saturating_add(*c));
    if total > rke2_cel::STATIC_ESTIMATED_CRD_COST_LIMIT {
        let mut costs = b.costs.clone();
        costs.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (path, _) in costs.iter().take(4) {
            b.errors.push(FieldError::forbidden(
                path,
                "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema",
            ));
        }
        b.errors.push(FieldError::forbidden(
            "",
            &rke2_cel::cost_error_message(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                total,
                rke2_cel::STATIC_ESTIMATED_CRD_COST_LIMIT,
            ),
        ));
    }
    if b.errors.is_empty() {
        Ok(Schema {
            root,
            raw: props.clone(),
        })
    } else {
        Err(b.errors)
    }
}

fn json(
    v: &Option<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON>,
) -> Option<Value> {
    v.as_ref().map(|j| j.0.clone())
}

/// The most elements an unbounded list or map of `item` can hold in a
/// request.
fn fits(item: &Node) -> u64 {
    let min = match item.ty.as_deref() {
        Some("string") => 2,
        Some("boolean") => 4,
        Some("object") | Some("array") => 2,
        _ => 1,
    };
    MAX_REQUEST / (min + 1)
}

impl Builder {
    fn err(&mut self, e: FieldError) {
        self.errors.push(e);
    }

    /// A structural node at `path` (relative to the schema root).
    fn node(
        &mut self,
        s: &JSONSchemaProps,
        level: Level,
        path: &str,
        ctx: &Ctx,
        is_root: bool,
    ) -> Node {
        let errors_before = self.errors.len();
        self.spec_standard(s, path, ctx);
        let mut node = self.value_validations(s, path);
        node.ty = s.type_.clone().filter(|t| !t.is_empty());
        node.nullable = s.nullable.unwrap_or(false);
        node.format = s.format.clone();
        node.required = s.required.clone().unwrap_or_default();
        node.preserve_unknown = s.x_kubernetes_preserve_unknown_fields == Some(true);
        node.embedded = s.x_kubernetes_embedded_resource == Some(true);
        node.int_or_string = s.x_kubernetes_int_or_string == Some(true);
        node.list_type = s.x_kubernetes_list_type.clone();
        node.list_map_keys = s.x_kubernetes_list_map_keys.clone().unwrap_or_default();
        node.map_type = s.x_kubernetes_map_type.clone();
        node.default = json(&s.default);

        if s.unique_items == Some(true) {
            self.err(FieldError::forbidden(
                &child(path, "uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        let properties = s.properties.clone().unwrap_or_default();

        // additionalProperties.
        if let Some(ap) = &s.additional_properties {
            let (allows, schema) = match ap {
                JSONSchemaPropsOrBool::Bool(b) => (*b, None),
                JSONSchemaPropsOrBool::Schema(sch) => (true, Some(sch)),
            };
            if !properties.is_empty() && (!allows || schema.is_some()) {
                self.err(FieldError::forbidden(
                    &child(path, "additionalProperties"),
                    "additionalProperties and properties are mutual exclusive",
                ));
            }
            if level == Level::Root {
                self.err(FieldError::forbidden(
                    &child(path, "additionalProperties"),
                    "must not be used at the root",
                ));
            }
            if node.embedded {
                self.err(FieldError::forbidden(
                    &child(path, "additionalProperties"),
                    "must not be used if x-kubernetes-embedded-resource is set",
                ));
            }
            node.additional_allowed = allows && schema.is_none();
            if let Some(sch) = schema {
                let mut sub = ctx.clone();
                if ctx.inside_meta {
                    sub.allow_defaults = false;
                    sub.disallow_reason =
                        Some("inside additionalProperties applying to object metadata".into());
                }
                let shape = self.node_shape_only(sch);
                let card = s
                    .max_properties
                    .map(|m| m.max(0) as u64)
                    .unwrap_or_else(|| fits(&shape));
                sub.cardinality = ctx.cardinality.saturating_mul(card);
                let built = self.node(
                    sch,
                    Level::Field,
                    &child(path, "additionalProperties"),
                    &sub,
                    false,
                );
                node.additional = Some(Box::new(built));
            }
        }

        // properties.
        for (name, p) in &properties {
            let mut sub = ctx.clone();
            if !map_correlatable(s.x_kubernetes_map_type.as_deref()) && sub.uncorrelatable.is_none()
            {
                sub.uncorrelatable = Some(path.to_string());
            }
            if (is_root || node.embedded)
                && ["metadata", "kind", "apiVersion"].contains(&name.as_str())
            {
                sub.inside_meta = true;
                if is_root {
                    sub.allow_defaults = false;
                    sub.disallow_reason = Some(format!("in top-level {name}"));
                }
            }
            let built = self.node(
                p,
                Level::Field,
                &key(&child(path, "properties"), name),
                &sub,
                false,
            );
            node.properties.insert(name.clone(), built);
        }

        // items.
        match &s.items {
            Some(JSONSchemaPropsOrArray::Schema(items)) => {
                let mut sub = ctx.clone();
                if s.x_kubernetes_list_type.as_deref() != Some("map")
                    && sub.uncorrelatable.is_none()
                {
                    sub.uncorrelatable = Some(path.to_string());
                }
                let shape = self.node_shape_only(items);
                let card = s
                    .max_items
                    .map(|m| m.max(0) as u64)
                    .unwrap_or_else(|| fits(&shape));
                sub.cardinality = ctx.cardinality.saturating_mul(card);
                let built = self.node(items, Level::Item, &child(path, "items"), &sub, false);
                node.items = Some(Box::new(built));
            }
            Some(JSONSchemaPropsOrArray::Schemas(_)) => {
                // Reported by spec_standard.
            }
            None => {}
        }

        self.structural(s, &node, level, path, is_root);
        self.extensions(s, path);
        if self.errors.len() == errors_before && ctx.allow_defaults {
            self.check_default(&node, path);
        }

        // x-kubernetes-validations: compiled only when the schema around
        // them is sound, as upstream.
        if let Some(rules) = &s.x_kubernetes_validations {
            let text_errors_before = self.errors.len();
            self.rule_texts(rules, s, path);
            if self.errors.len() == errors_before && self.errors.len() == text_errors_before {
                let ty = cel_type(&node, is_root || node.embedded);
                for (i, r) in rules.iter().enumerate() {
                    if let Some(rule) = self.compile_rule(r, i, &ty, path, ctx) {
                        node.rules.push(rule);
                    }
                }
            }
        }
        node
    }

    /// A default must be pruned already and valid against its schema
    /// (upstream's `ValidateDefaults`).
    fn check_default(&mut self, node: &Node, path: &str) {
        let Some(default) = &node.default else {
            return;
        };
        let dpath = child(path, "default");
        let mut pruned = default.clone();
        if !crate::prune::prune_at(node, &mut pruned).is_empty() {
            self.err(FieldError::invalid(
                &dpath,
                default,
                "must not have unknown fields",
            ));
            return;
        }
        let mut errs = Vec::new();
        crate::validate::validate(node, default, "", false, &mut errs);
        errs.extend(crate::rules::validate(node, default, None));
        for e in errs {
            self.err(e.under(&dpath));
        }
    }

    /// The type of a schema without checking it (for cardinality).
    fn node_shape_only(&self, s: &JSONSchemaProps) -> Node {
        Node {
            ty: s.type_.clone(),
            ..Node::default()
        }
    }

    /// The checks of upstream's `specStandardValidatorV3.validate`.
    fn spec_standard(&mut self, s: &JSONSchemaProps, path: &str, ctx: &Ctx) {
        if let Some(t) = s.type_.as_deref()
            && !t.is_empty()
            && !TYPES.contains(&t)
        {
            if t == "null" {
                self.err(FieldError::forbidden(
                    &child(path, "type"),
                    "type cannot be set to null, use nullable as an alternative",
                ));
            }
            self.err(FieldError::not_supported(
                &child(path, "type"),
                &Value::String(t.to_string()),
                &TYPES.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ));
        }
        if s.default.is_some() && !ctx.allow_defaults {
            let mut detail = "must not be set".to_string();
            if let Some(r) = &ctx.disallow_reason {
                detail.push(' ');
                detail.push_str(r);
            }
            self.err(FieldError::forbidden(&child(path, "default"), &detail));
        }
        if s.id.as_deref().is_some_and(|i| !i.is_empty()) {
            self.err(FieldError::forbidden(
                &child(path, "id"),
                "id is not supported",
            ));
        }
        if s.additional_items.is_some() {
            self.err(FieldError::forbidden(
                &child(path, "additionalItems"),
                "additionalItems is not supported",
            ));
        }
        if s.pattern_properties.as_ref().is_some_and(|p| !p.is_empty()) {
            self.err(FieldError::forbidden(
                &child(path, "patternProperties"),
                "patternProperties is not supported",
            ));
        }
        if s.definitions.as_ref().is_some_and(|p| !p.is_empty()) {
            self.err(FieldError::forbidden(
                &child(path, "definitions"),
                "definitions is not supported",
            ));
        }
        if s.dependencies.is_some() {
            self.err(FieldError::forbidden(
                &child(path, "dependencies"),
                "dependencies is not supported",
            ));
        }
        if s.ref_path.is_some() {
            self.err(FieldError::forbidden(
                &child(path, "$ref"),
                "$ref is not supported",
            ));
        }
        if matches!(s.items, Some(JSONSchemaPropsOrArray::Schemas(_))) {
            self.err(FieldError::forbidden(
                &child(path, "items"),
                "items must be a schema object and not an array",
            ));
        }
        if ctx.inside_meta && s.x_kubernetes_embedded_resource == Some(true) {
            self.err(FieldError::forbidden(
                &child(path, "x-kubernetes-embedded-resource"),
                "must not be used inside of resource meta",
            ));
        }
    }

    /// The value validations of `s` (and its junctors, as nested nodes).
    fn value_validations(&mut self, s: &JSONSchemaProps, path: &str) -> Node {
        let mut n = Node {
            enum_: s
                .enum_
                .as_ref()
                .map(|e| e.iter().map(|j| j.0.clone()).collect()),
            maximum: s.maximum,
            exclusive_maximum: s.exclusive_maximum.unwrap_or(false),
            minimum: s.minimum,
            exclusive_minimum: s.exclusive_minimum.unwrap_or(false),
            multiple_of: s.multiple_of,
            max_length: s.max_length,
            min_length: s.min_length,
            max_items: s.max_items,
            min_items: s.min_items,
            unique_items: s.unique_items.unwrap_or(false),
            max_properties: s.max_properties,
            min_properties: s.min_properties,
            ..Node::default()
        };
        if let Some(p) = &s.pattern {
            match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                Ok(re) => n.pattern = Some((p.clone(), re)),
                Err(e) => self.err(FieldError::invalid(
                    &child(path, "pattern"),
                    &Value::String(p.clone()),
                    &format!(
                        "must be a valid regular expression, but isn't: {}",
                        e.to_string().lines().last().unwrap_or("invalid")
                    ),
                )),
            }
        }
        let int_or_string_any_of = is_int_or_string_any_of(s.any_of.as_deref());
        let int_or_string_all_of = s
            .all_of
            .as_ref()
            .and_then(|a| a.first())
            .is_some_and(|first| is_int_or_string_any_of(first.any_of.as_deref()));
        for (i, sub) in s.all_of.iter().flatten().enumerate() {
            let p = format!("{}[{i}]", child(path, "allOf"));
            n.all_of
                .push(self.nested(sub, &p, int_or_string_all_of && i == 0));
        }
        for (i, sub) in s.any_of.iter().flatten().enumerate() {
            let p = format!("{}[{i}]", child(path, "anyOf"));
            n.any_of.push(self.nested(sub, &p, int_or_string_any_of));
        }
        for (i, sub) in s.one_of.iter().flatten().enumerate() {
            let p = format!("{}[{i}]", child(path, "oneOf"));
            n.one_of.push(self.nested(sub, &p, false));
        }
        if let Some(not) = &s.not {
            n.not = Some(Box::new(self.nested(not, &child(path, "not"), false)));
        }
        n
    }

    /// A schema under a junctor: value validations only (what makes a
    /// schema structural forbids the rest).
    fn nested(&mut self, s: &JSONSchemaProps, path: &str, int_or_string: bool) -> Node {
        let mut n = self.value_validations(s, path);
        let forbid = |b: &mut Builder, name: &str, what: &str| {
            b.err(FieldError::forbidden(&child(path, name), what));
        };
        if s.type_.as_deref().is_some_and(|t| !t.is_empty()) && !int_or_string {
            forbid(self, "type", "must be empty to be structural");
        }
        if int_or_string {
            // `anyOf: [{type: integer}, {type: string}]`: the type checks
            // int-or-string validation already does.
            n.ty = None;
        }
        if s.additional_properties.is_some() {
            forbid(
                self,
                "additionalProperties",
                "must be undefined to be structural",
            );
        }
        if s.default.is_some() {
            forbid(self, "default", "must be undefined to be structural");
        }
        if s.title.as_deref().is_some_and(|t| !t.is_empty()) {
            forbid(self, "title", "must be empty to be structural");
        }
        if s.description.as_deref().is_some_and(|t| !t.is_empty()) {
            forbid(self, "description", "must be empty to be structural");
        }
        if s.nullable == Some(true) {
            forbid(self, "nullable", "must be false to be structural");
        }
        if s.x_kubernetes_preserve_unknown_fields == Some(true) {
            forbid(
                self,
                "x-kubernetes-preserve-unknown-fields",
                "must be false to be structural",
            );
        }
        if s.x_kubernetes_embedded_resource == Some(true) {
            forbid(
                self,
                "x-kubernetes-embedded-resource",
                "must be false to be structural",
            );
        }
        if s.x_kubernetes_int_or_string == Some(true) {
            forbid(
                self,
                "x-kubernetes-int-or-string",
                "must be false to be structural",
            );
        }
        if s.x_kubernetes_list_map_keys
            .as_ref()
            .is_some_and(|k| !k.is_empty())
        {
            forbid(
                self,
                "x-kubernetes-list-map-keys",
                "must be empty to be structural",
            );
        }
        if s.x_kubernetes_list_type.is_some() {
            forbid(
                self,
                "x-kubernetes-list-type",
                "must be undefined to be structural",
            );
        }
        if let Some(props) = &s.properties {
            if props.contains_key("metadata") {
                self.err(FieldError::forbidden(
                    &key(&child(path, "properties"), "metadata"),
                    "must not be specified in a nested context",
                ));
            }
            for (name, p) in props {
                let built = self.nested(p, &key(&child(path, "properties"), name), false);
                n.properties.insert(name.clone(), built);
            }
        }
        if let Some(JSONSchemaPropsOrArray::Schema(items)) = &s.items {
            n.items = Some(Box::new(self.nested(items, &child(path, "items"), false)));
        }
        n.required = s.required.clone().unwrap_or_default();
        n
    }

    /// `validateStructuralInvariants`, and completeness of junctors.
    fn structural(
        &mut self,
        s: &JSONSchemaProps,
        node: &Node,
        level: Level,
        path: &str,
        is_root: bool,
    ) {
        if node.ty.as_deref() == Some("array") && s.items.is_none() {
            self.err(FieldError::required(
                &child(path, "items"),
                "must be specified",
            ));
        }
        if node.int_or_string && node.preserve_unknown {
            self.err(FieldError::invalid(
                &child(path, "x-kubernetes-preserve-unknown-fields"),
                &Value::Bool(true),
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        if node.int_or_string && node.embedded {
            self.err(FieldError::invalid(
                &child(path, "x-kubernetes-embedded-resource"),
                &Value::Bool(true),
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        let ty = node.ty.as_deref();
        if node.embedded && ty != Some("object") {
            match ty {
                None => self.err(FieldError::required(
                    &child(path, "type"),
                    "must be object if x-kubernetes-embedded-resource is true",
                )),
                Some(t) => self.err(FieldError::invalid(
                    &child(path, "type"),
                    &Value::String(t.into()),
                    "must be object if x-kubernetes-embedded-resource is true",
                )),
            }
        } else if ty.is_none() && !node.int_or_string && !node.preserve_unknown {
            let detail = match level {
                Level::Root => "must not be empty at the root",
                Level::Item => "must not be empty for specified array items",
                Level::Field => "must not be empty for specified object fields",
            };
            self.err(FieldError::required(&child(path, "type"), detail));
        }
        if level == Level::Root
            && let Some(t) = ty
            && t != "object"
        {
            self.err(FieldError::invalid(
                &child(path, "type"),
                &Value::String(t.into()),
                "must be object at the root",
            ));
        }
        let check_meta = is_root || node.embedded;
        let props = s.properties.clone().unwrap_or_default();
        if check_meta {
            for (name, want) in [
                ("kind", "string"),
                ("apiVersion", "string"),
                ("metadata", "object"),
            ] {
                if let Some(p) = props.get(name)
                    && p.type_.as_deref().unwrap_or("") != want
                {
                    self.err(FieldError::invalid(
                        &child(&key(&child(path, "properties"), name), "type"),
                        &Value::String(p.type_.clone().unwrap_or_default()),
                        &format!("must be {want}"),
                    ));
                }
            }
        }
        if is_root
            && let Some(meta) = props.get("metadata")
            && !metadata_is_name_only(meta)
        {
            self.err(FieldError::forbidden(
                &key(&child(path, "properties"), "metadata"),
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            ));
        }
        if node.embedded && !node.preserve_unknown && props.is_empty() {
            self.err(FieldError::required(
                &child(path, "properties"),
                "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
            ));
        }
        // Completeness: what junctors constrain must exist structurally.
        let mut junctors: Vec<(String, &Node)> = Vec::new();
        for (i, j) in node.all_of.iter().enumerate() {
            junctors.push((format!("allOf[{i}]"), j));
        }
        for (i, j) in node.any_of.iter().enumerate() {
            junctors.push((format!("anyOf[{i}]"), j));
        }
        for (i, j) in node.one_of.iter().enumerate() {
            junctors.push((format!("oneOf[{i}]"), j));
        }
        if let Some(not) = &node.not {
            junctors.push(("not".into(), not));
        }
        for (jpath, j) in junctors {
            for name in j.properties.keys() {
                if !props.contains_key(name) && !node.preserve_unknown && node.additional.is_none()
                {
                    self.err(FieldError::required(
                        &key(&child(path, "properties"), name),
                        &format!("because it is defined in {jpath}.properties[{name}]"),
                    ));
                }
            }
            if j.items.is_some() && s.items.is_none() {
                self.err(FieldError::required(
                    &child(path, "items"),
                    &format!("because it is defined in {jpath}.items"),
                ));
            }
        }
    }

    /// Checks of the Kubernetes extensions (list/map types).
    fn extensions(&mut self, s: &JSONSchemaProps, path: &str) {
        let ty = s.type_.as_deref().unwrap_or("");
        if s.x_kubernetes_preserve_unknown_fields == Some(false) {
            self.err(FieldError::invalid(
                &child(path, "x-kubernetes-preserve-unknown-fields"),
                &Value::Bool(false),
                "must be true or undefined",
            ));
        }
        if let Some(mt) = &s.x_kubernetes_map_type {
            if ty != "object" {
                if ty.is_empty() {
                    self.err(FieldError::required(
                        &child(path, "type"),
                        "must be object if x-kubernetes-map-type is specified",
                    ));
                } else {
                    self.err(FieldError::invalid(
                        &child(path, "type"),
                        &Value::String(ty.into()),
                        "must be object if x-kubernetes-map-type is specified",
                    ));
                }
            }
            if mt != "atomic" && mt != "granular" {
                self.err(FieldError::not_supported(
                    &child(path, "x-kubernetes-map-type"),
                    &Value::String(mt.clone()),
                    &["atomic".into(), "granular".into()],
                ));
            }
        }
        let items = match &s.items {
            Some(JSONSchemaPropsOrArray::Schema(i)) => Some(&**i),
            _ => None,
        };
        if let Some(lt) = &s.x_kubernetes_list_type {
            if ty != "array" {
                if ty.is_empty() {
                    self.err(FieldError::required(
                        &child(path, "type"),
                        "must be array if x-kubernetes-list-type is specified",
                    ));
                } else {
                    self.err(FieldError::invalid(
                        &child(path, "type"),
                        &Value::String(ty.into()),
                        "must be array if x-kubernetes-list-type is specified",
                    ));
                }
            } else if lt == "set"
                && let Some(is) = items
            {
                match is.type_.as_deref() {
                    Some("array")
                        if is
                            .x_kubernetes_list_type
                            .as_deref()
                            .is_some_and(|t| t != "atomic") =>
                    {
                        self.err(FieldError::invalid(
                            &child(&child(path, "items"), "x-kubernetes-list-type"),
                            &Value::String(is.x_kubernetes_list_type.clone().unwrap_or_default()),
                            "must be atomic as item of a list with x-kubernetes-list-type=set",
                        ));
                    }
                    Some("object") if is.x_kubernetes_map_type.as_deref() != Some("atomic") => {
                        self.err(FieldError::invalid(
                            &child(&child(path, "items"), "x-kubernetes-map-type"),
                            &Value::String(lt.clone()),
                            "must be atomic as item of a list with x-kubernetes-list-type=set",
                        ));
                    }
                    _ => {}
                }
            }
            if lt != "atomic" && lt != "set" && lt != "map" {
                self.err(FieldError::not_supported(
                    &child(path, "x-kubernetes-list-type"),
                    &Value::String(lt.clone()),
                    &["atomic".into(), "set".into(), "map".into()],
                ));
            }
        }
        let keys = s.x_kubernetes_list_map_keys.clone().unwrap_or_default();
        if !keys.is_empty() {
            match s.x_kubernetes_list_type.as_deref() {
                None => self.err(FieldError::required(
                    &child(path, "x-kubernetes-list-type"),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                )),
                Some("map") => {}
                Some(other) => self.err(FieldError::invalid(
                    &child(path, "x-kubernetes-list-type"),
                    &Value::String(other.into()),
                    "must be map if x-kubernetes-list-map-keys is non-empty",
                )),
            }
        }
        if s.x_kubernetes_list_type.as_deref() == Some("map") {
            if keys.is_empty() {
                self.err(FieldError::required(
                    &child(path, "x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
            match &s.items {
                None => self.err(FieldError::required(
                    &child(path, "items"),
                    "must have a schema if x-kubernetes-list-type is map",
                )),
                Some(JSONSchemaPropsOrArray::Schemas(_)) => self.err(FieldError::invalid(
                    &child(path, "items"),
                    &Value::String(String::new()),
                    "must only have a single schema if x-kubernetes-list-type is map",
                )),
                Some(JSONSchemaPropsOrArray::Schema(is)) => {
                    let ity = is.type_.as_deref().unwrap_or("");
                    if ity != "object" {
                        self.err(FieldError::invalid(
                            &child(&child(path, "items"), "type"),
                            &Value::String(ity.into()),
                            "must be object if parent array's x-kubernetes-list-type is map",
                        ));
                    } else {
                        let props = is.properties.clone().unwrap_or_default();
                        let mut seen = std::collections::BTreeSet::new();
                        let keys_value =
                            Value::Array(keys.iter().map(|k| Value::String(k.clone())).collect());
                        for k in &keys {
                            match props.get(k) {
                                Some(p)
                                    if matches!(
                                        p.type_.as_deref(),
                                        Some("array") | Some("object")
                                    ) =>
                                {
                                    self.err(FieldError::invalid(
                                        &child(&key(&child(&child(path, "items"), "properties"), k), "type"),
                                        &Value::String(ity.into()),
                                        "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                    ));
                                }
                                Some(_) => {}
                                None => self.err(FieldError::invalid(
                                    &child(path, "x-kubernetes-list-map-keys"),
                                    &keys_value,
                                    "entries must all be names of item properties",
                                )),
                            }
                            if !seen.insert(k.clone()) {
                                self.err(FieldError::invalid(
                                    &child(path, "x-kubernetes-list-map-keys"),
                                    &keys_value,
                                    "must not contain duplicate entries",
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Set and map lists: items not nullable; map keys required or
        // defaulted, never nullable.
        if let (Some(lt @ ("set" | "map")), Some(is)) = (s.x_kubernetes_list_type.as_deref(), items)
        {
            if is.nullable == Some(true) {
                self.err(FieldError::forbidden(
                    &child(&child(path, "items"), "nullable"),
                    &format!("cannot be nullable when x-kubernetes-list-type is {lt}"),
                ));
            }
            if lt == "map" {
                let required = is.required.clone().unwrap_or_default();
                let props = is.properties.clone().unwrap_or_default();
                for k in &keys {
                    let Some(p) = props.get(k) else { continue };
                    let kp = key(&child(&child(path, "items"), "properties"), k);
                    if !required.contains(k) && p.default.is_none() {
                        self.err(FieldError::required(
                            &child(&kp, "default"),
                            "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
                        ));
                    }
                    if p.nullable == Some(true) {
                        self.err(FieldError::forbidden(
                            &child(&kp, "nullable"),
                            "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
                        ));
                    }
                }
            }
        }
    }

    /// The checks of the rules' texts (`rule`, `message`, `reason`, ...).
    fn rule_texts(&mut self, rules: &[ValidationRule], s: &JSONSchemaProps, path: &str) {
        for (i, r) in rules.iter().enumerate() {
            let rp = format!("{}[{i}]", child(path, "x-kubernetes-validations"));
            let rule = r.rule.trim();
            let msg = r.message.as_deref().unwrap_or("");
            let trimmed_msg = msg.trim();
            if rule.is_empty() {
                self.err(FieldError::required(
                    &child(&rp, "rule"),
                    "rule is not specified",
                ));
            } else if !msg.is_empty() && trimmed_msg.is_empty() {
                self.err(FieldError::invalid(
                    &child(&rp, "message"),
                    &Value::String(msg.into()),
                    "message must be non-empty if specified",
                ));
            } else if has_newlines(trimmed_msg) {
                self.err(FieldError::invalid(
                    &child(&rp, "message"),
                    &Value::String(msg.into()),
                    "message must not contain line breaks",
                ));
            } else if has_newlines(rule) && trimmed_msg.is_empty() {
                self.err(FieldError::required(
                    &child(&rp, "message"),
                    "message must be specified if rule contains line breaks",
                ));
            }
            if let Some(me) = &r.message_expression
                && !me.is_empty()
                && me.trim().is_empty()
            {
                self.err(FieldError::required(
                    &child(&rp, "messageExpression"),
                    "messageExpression must be non-empty if specified",
                ));
            }
            if let Some(reason) = &r.reason
                && !REASONS.contains(&reason.as_str())
            {
                self.err(FieldError::not_supported(
                    &child(&rp, "reason"),
                    &Value::String(reason.clone()),
                    &REASONS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                ));
            }
            if let Some(fp) = &r.field_path {
                if !fp.is_empty() && fp.trim().is_empty() {
                    self.err(FieldError::invalid(
                        &child(&rp, "fieldPath"),
                        &Value::String(fp.clone()),
                        "fieldPath must be non-empty if specified",
                    ));
                }
                if has_newlines(fp) {
                    self.err(FieldError::invalid(
                        &child(&rp, "fieldPath"),
                        &Value::String(fp.clone()),
                        "fieldPath must not contain line breaks",
                    ));
                }
                if !fp.is_empty() && !field_path_valid(s, fp) {
                    self.err(FieldError::invalid(
                        &child(&rp, "fieldPath"),
                        &Value::String(fp.clone()),
                        "fieldPath must be a valid path",
                    ));
                }
            }
        }
    }

    fn compile_rule(
        &mut self,
        r: &ValidationRule,
        i: usize,
        ty: &Ty,
        path: &str,
        ctx: &Ctx,
    ) -> Option<Rule> {
        let rp = format!("{}[{i}]", child(path, "x-kubernetes-validations"));
        let env = Env::crd_rule(ty.clone()).with_cost_budget(None);
        let rule_value = Value::String(go_rule(r));
        let program = match Program::compile(&r.rule, &env) {
            Ok(p) => p,
            Err(e) => {
                self.err(FieldError {
                    field: child(&rp, "rule"),
                    kind: "Invalid value".into(),
                    detail: format!("{}: {e}", rule_value.as_str().unwrap_or_default()),
                });
                return None;
            }
        };
        let cost = program.estimated_cost().saturating_mul(ctx.cardinality);
        if cost > rke2_cel::STATIC_ESTIMATED_COST_LIMIT {
            self.err(FieldError::forbidden(
                &child(&rp, "rule"),
                &rke2_cel::cost_error_message(
                    "estimated rule cost",
                    cost,
                    rke2_cel::STATIC_ESTIMATED_COST_LIMIT,
                ),
            ));
        }
        self.costs.push((child(&rp, "rule"), cost));
        let mut message_expression = None;
        if let Some(me) = r
            .message_expression
            .as_deref()
            .filter(|m| !m.trim().is_empty())
        {
            match Program::compile(me, &env) {
                Ok(p) => {
                    let mcost = p.estimated_cost().saturating_mul(ctx.cardinality);
                    if mcost > rke2_cel::STATIC_ESTIMATED_COST_LIMIT {
                        self.err(FieldError::forbidden(
                            &child(&rp, "messageExpression"),
                            &rke2_cel::cost_error_message(
                                "estimated messageExpression cost",
                                mcost,
                                rke2_cel::STATIC_ESTIMATED_COST_LIMIT,
                            ),
                        ));
                    }
                    self.costs.push((child(&rp, "messageExpression"), mcost));
                    message_expression = Some(p);
                }
                Err(e) => {
                    self.err(FieldError {
                        field: child(&rp, "messageExpression"),
                        kind: "Invalid value".into(),
                        detail: format!(
                            "{}: messageExpression {e}",
                            rule_value.as_str().unwrap_or_default()
                        ),
                    });
                }
            }
        }
        let transition = program.uses_variable("oldSelf");
        if transition {
            if let Some(up) = &ctx.uncorrelatable {
                self.err(FieldError::invalid(
                    &child(&rp, "rule"),
                    &Value::String(r.rule.clone()),
                    &format!(
                        "oldSelf cannot be used on the uncorrelatable portion of the schema within {}",
                        if up.is_empty() { "<root>" } else { up }
                    ),
                ));
            }
        } else if let Some(o) = r.optional_old_self {
            self.err(FieldError::invalid(
                &child(&rp, "optionalOldSelf"),
                &Value::Bool(o),
                "may not be set if oldSelf is not used in rule",
            ));
        }
        Some(Rule {
            rule: r.rule.clone(),
            program,
            message: r.message.clone().filter(|m| !m.trim().is_empty()),
            message_expression,
            reason: r.reason.clone(),
            field_path: r.field_path.clone().filter(|f| !f.trim().is_empty()),
            optional_old_self: r.optional_old_self == Some(true),
            transition,
        })
    }
}

/// The rule as Go's `%#v` prints upstream's `ValidationRule` (the value of
/// the `Invalid value` for a rule that does not compile).
fn go_rule(r: &ValidationRule) -> String {
    format!(
        "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{}, FieldPath:{}, OptionalOldSelf:{}}}",
        go_quote(&r.rule),
        go_quote(r.message.as_deref().unwrap_or("")),
        go_quote(r.message_expression.as_deref().unwrap_or("")),
        match &r.reason {
            Some(reason) => format!("&{}", go_quote(reason)),
            None => "(*apiextensions.FieldValueErrorReason)(nil)".into(),
        },
        go_quote(r.field_path.as_deref().unwrap_or("")),
        match r.optional_old_self {
            Some(b) => format!("&{b}"),
            None => "(*bool)(nil)".into(),
        },
    )
}

fn has_newlines(s: &str) -> bool {
    s.contains('\n') || s.contains('\r')
}

fn map_correlatable(map_type: Option<&str>) -> bool {
    matches!(
        map_type,
        None | Some("") | Some("granular") | Some("atomic")
    )
}

fn is_int_or_string_any_of(any_of: Option<&[JSONSchemaProps]>) -> bool {
    let Some(a) = any_of else { return false };
    a.len() == 2
        && a[0].type_.as_deref() == Some("integer")
        && a[1].type_.as_deref() == Some("string")
        && a.iter().all(|s| {
            let mut bare = s.clone();
            bare.type_ = None;
            bare == JSONSchemaProps::default()
        })
}

/// Whether the root `metadata` schema restricts nothing but `name` and
/// `generateName` (upstream forbids anything else).
fn metadata_is_name_only(m: &JSONSchemaProps) -> bool {
    let mut rest = m.clone();
    rest.type_ = None;
    rest.default = None;
    if let Some(props) = &rest.properties
        && props.keys().all(|k| k == "name" || k == "generateName")
    {
        rest.properties = None;
    }
    rest == JSONSchemaProps::default()
}

/// Whether `fp` (`.a.b`, `['a.b'].c`) names a field the schema declares
/// (or allows under additionalProperties / preserve-unknown-fields).
fn field_path_valid(s: &JSONSchemaProps, fp: &str) -> bool {
    let Some(segments) = parse_field_path(fp) else {
        return false;
    };
    let mut cur = s.clone();
    for seg in segments {
        if let Some(p) = cur.properties.as_ref().and_then(|p| p.get(&seg)) {
            cur = p.clone();
            continue;
        }
        match &cur.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(a)) => {
                cur = (**a).clone();
                continue;
            }
            Some(JSONSchemaPropsOrBool::Bool(true)) => return true,
            _ => {}
        }
        return cur.x_kubernetes_preserve_unknown_fields == Some(true);
    }
    true
}

/// Splits `.a['b.c'].d` into `["a", "b.c", "d"]`.
pub(crate) fn parse_field_path(fp: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = fp;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            out.push(r[..end].to_string());
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            out.push(r[..end].to_string());
            rest = &r[end + 2..];
        } else {
            return None;
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// The CEL type of the values at `node` (sizes bound the cost estimate).
pub(crate) fn cel_type(node: &Node, resource_root: bool) -> Ty {
    if node.int_or_string {
        return Ty::IntOrString;
    }
    match node.ty.as_deref() {
        Some("string") => Ty::String {
            max_length: node.max_length.map(|m| m.max(0) as u64).or_else(|| {
                node.enum_.as_ref().map(|e| {
                    e.iter()
                        .filter_map(|v| v.as_str())
                        .map(|s| s.chars().count() as u64)
                        .max()
                        .unwrap_or(0)
                })
            }),
        },
        Some("integer") => Ty::Int,
        Some("number") => Ty::Double,
        Some("boolean") => Ty::Bool,
        Some("array") => Ty::List {
            items: Box::new(
                node.items
                    .as_deref()
                    .map(|i| cel_type(i, i.embedded))
                    .unwrap_or(Ty::Dyn),
            ),
            max_items: node.max_items.map(|m| m.max(0) as u64),
        },
        Some("object") => {
            let mut properties: BTreeMap<String, Ty> = node
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), cel_type(v, v.embedded)))
                .collect();
            if resource_root {
                properties.insert("apiVersion".into(), Ty::string());
                properties.insert("kind".into(), Ty::string());
                properties.insert(
                    "metadata".into(),
                    Ty::object([
                        ("name".to_string(), Ty::string()),
                        ("generateName".to_string(), Ty::string()),
                    ]),
                );
            }
            let additional = node
                .additional
                .as_deref()
                .map(|a| Box::new(cel_type(a, a.embedded)))
                .or_else(|| {
                    (node.preserve_unknown || node.additional_allowed).then(|| Box::new(Ty::Dyn))
                });
            Ty::Object {
                properties,
                additional,
                max_properties: node.max_properties.map(|m| m.max(0) as u64),
            }
        }
        _ => Ty::Dyn,
    }
}
