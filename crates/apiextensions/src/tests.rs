use serde_json::{Value, json};

use super::*;

fn schema(v: Value) -> Result<Schema, Vec<FieldError>> {
    let props: JSONSchemaProps = serde_json::from_value(v).expect("schema JSON");
    Schema::compile(&props)
}

fn texts(errs: &[FieldError]) -> Vec<String> {
    errs.iter().map(|e| e.to_string()).collect()
}

/// The versions' schemas of a CRD manifest in testdata.
fn crd_schemas(file: &str) -> Vec<(String, JSONSchemaProps)> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("testdata file");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("YAML");
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let crd: CustomResourceDefinition = serde_json::from_value(doc).expect("a CRD");
        for v in crd.spec.versions {
            let s = v.schema.and_then(|s| s.open_api_v3_schema).expect("schema");
            out.push((v.name, s));
        }
    }
    out
}

const TESTDATA: &[&str] = &[
    "gateway.networking.k8s.io_gateways.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
    "gateway.networking.k8s.io_gatewayclasses.yaml",
    "gateway.networking.k8s.io_referencegrants.yaml",
    "cert-manager.io_certificates.yaml",
    "cert-manager.io_issuers.yaml",
];

#[test]
fn real_crds_compile() {
    for file in TESTDATA {
        let versions = crd_schemas(file);
        assert!(!versions.is_empty(), "{file}");
        for (name, props) in versions {
            if let Err(errs) = Schema::compile(&props) {
                panic!("{file} {name}: {:#?}", texts(&errs));
            }
        }
    }
}

fn gateway_v1() -> Schema {
    let (_, props) = crd_schemas("gateway.networking.k8s.io_gateways.yaml")
        .into_iter()
        .find(|(n, _)| n == "v1")
        .expect("v1");
    Schema::compile(&props).expect("compiles")
}

fn httproute_v1() -> Schema {
    let (_, props) = crd_schemas("gateway.networking.k8s.io_httproutes.yaml")
        .into_iter()
        .find(|(n, _)| n == "v1")
        .expect("v1");
    Schema::compile(&props).expect("compiles")
}

#[test]
fn gateway_defaults_prune_and_validate() {
    let s = gateway_v1();
    let mut gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "g", "namespace": "default", "labels": {"a": "b"}},
        "spec": {
            "gatewayClassName": "example",
            "listeners": [{"name": "http", "protocol": "HTTP", "port": 80, "bogus": 1}],
            "extra": true
        }
    });
    let pruned = s.prune(&mut gw);
    assert_eq!(
        pruned,
        vec![
            "spec.listeners[0].bogus".to_string(),
            "spec.extra".to_string()
        ]
    );
    assert_eq!(gw["metadata"]["labels"]["a"], "b", "metadata is kept");
    s.apply_defaults(&mut gw);
    // allowedRoutes defaults to namespaces.from=Same.
    assert_eq!(
        gw["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"], "Same",
        "{gw:#}"
    );
    assert_eq!(s.validate(&gw), vec![]);
    assert_eq!(s.validate_rules(&gw, None), vec![]);

    // Wrong type, enum, range.
    let mut bad = gw.clone();
    bad["spec"]["listeners"][0]["port"] = json!("eighty");
    bad["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["from"] = json!("Nowhere");
    let errs = texts(&s.validate(&bad));
    assert!(
        errs.contains(&r#"spec.listeners[0].port: Invalid value: "string": spec.listeners[0].port in body must be of type integer: "string""#.to_string()),
        "{errs:#?}"
    );
    assert!(
        errs.contains(&r#"spec.listeners[0].allowedRoutes.namespaces.from: Unsupported value: "Nowhere": supported values: "All", "Selector", "Same""#.to_string()),
        "{errs:#?}"
    );
    let mut bad = gw.clone();
    bad["spec"]["listeners"][0]["port"] = json!(0);
    let errs = texts(&s.validate(&bad));
    assert!(
        errs.contains(&"spec.listeners[0].port: Invalid value: 0: spec.listeners[0].port in body should be greater than or equal to 1".to_string()),
        "{errs:#?}"
    );
    // Required.
    let mut bad = gw.clone();
    bad["spec"]
        .as_object_mut()
        .unwrap()
        .remove("gatewayClassName");
    assert!(
        texts(&s.validate(&bad)).contains(&"spec.gatewayClassName: Required value".to_string())
    );
    // Listener names are the list's map key: a duplicate is refused.
    let mut bad = gw.clone();
    let l = bad["spec"]["listeners"][0].clone();
    bad["spec"]["listeners"].as_array_mut().unwrap().push(l);
    let errs = texts(&s.validate(&bad));
    assert!(
        errs.contains(&r#"spec.listeners[1]: Duplicate value: {"name":"http"}"#.to_string()),
        "{errs:#?}"
    );
}

#[test]
fn gateway_cel_rules_run() {
    let s = gateway_v1();
    assert!(s.has_rules());
    // tls on an HTTP listener is refused by a rule on the listeners list.
    let mut gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "g"},
        "spec": {
            "gatewayClassName": "example",
            "listeners": [{"name": "http", "protocol": "HTTP", "port": 80,
                           "tls": {"certificateRefs": [{"name": "c"}]}}]
        }
    });
    s.apply_defaults(&mut gw);
    let errs = s.validate_rules(&gw, None);
    assert!(!errs.is_empty(), "a rule should refuse tls on HTTP");
    assert!(
        errs.iter()
            .any(|e| e.field == "spec.listeners" && e.kind == "Invalid value"),
        "{:#?}",
        texts(&errs)
    );
}

#[test]
fn httproute_rules_and_list_kinds() {
    let s = httproute_v1();
    assert_eq!(
        s.list_kind_at(&["spec", "parentRefs"]),
        Some(ListKind::Atomic)
    );
    assert_eq!(
        s.list_kind_at(&["spec", "hostnames"]),
        Some(ListKind::Atomic)
    );
    assert_eq!(s.list_kind_at(&["spec", "rules"]), Some(ListKind::Atomic));
    assert_eq!(s.list_kind_at(&["spec", "nope"]), None);
    let mut route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {
            "parentRefs": [{"name": "g"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/x"}}],
                       "backendRefs": [{"name": "svc", "port": 8080}]}]
        }
    });
    s.apply_defaults(&mut route);
    assert_eq!(s.validate(&route), vec![]);
    assert_eq!(s.validate_rules(&route, None), vec![]);
    // A path value must start with '/' (a CEL rule on the path match).
    route["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!("x");
    let errs = s.validate_rules(&route, None);
    assert!(!errs.is_empty());
    assert!(
        errs.iter()
            .all(|e| e.field.starts_with("spec.rules[0].matches[0].path")),
        "{:#?}",
        texts(&errs)
    );
}

#[test]
fn cert_manager_preserves_unknown_where_declared() {
    let (_, props) = crd_schemas("cert-manager.io_issuers.yaml").remove(0);
    let s = Schema::compile(&props).unwrap();
    let mut issuer = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "i"},
        "spec": {"selfSigned": {}, "unknown": 1}
    });
    assert_eq!(s.prune(&mut issuer), vec!["spec.unknown".to_string()]);
    assert_eq!(s.validate(&issuer), vec![]);
    let (_, props) = crd_schemas("cert-manager.io_certificates.yaml").remove(0);
    let s = Schema::compile(&props).unwrap();
    let cert = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"},
        "spec": {"secretName": "s", "issuerRef": {"name": "i"}, "duration": "2160h", "dnsNames": ["a.example"]}
    });
    assert_eq!(s.validate(&cert), vec![]);
    let mut bad = cert.clone();
    bad["spec"].as_object_mut().unwrap().remove("secretName");
    assert_eq!(
        texts(&s.validate(&bad)),
        vec!["spec.secretName: Required value".to_string()]
    );
}

#[test]
fn openapi_schema_has_gvk_and_object_meta() {
    let s = gateway_v1();
    let v = s.openapi_v3_schema("gateway.networking.k8s.io", "v1", "Gateway");
    assert_eq!(
        v["x-kubernetes-group-version-kind"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "version": "v1"}])
    );
    assert_eq!(
        v["properties"]["metadata"]["allOf"][0]["$ref"],
        OBJECT_META_REF
    );
    assert!(v["properties"]["spec"]["properties"]["listeners"].is_object());
}

#[test]
fn structural_errors_in_upstream_words() {
    let errs = schema(json!({
        "type": "object",
        "properties": {
            "spec": {"properties": {"a": {"type": "string"}}},
            "list": {"type": "array"},
            "m": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "n": {"type": "string", "anyOf": [{"type": "string"}]},
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "bad": {"type": "null"}
        },
        "additionalProperties": {"type": "string"}
    }))
    .unwrap_err();
    let t = texts(&errs);
    for want in [
        "properties[spec].type: Required value: must not be empty for specified object fields",
        "properties[list].items: Required value: must be specified",
        "properties[m].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
        "properties[n].anyOf[0].type: Forbidden: must be empty to be structural",
        "properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified",
        "properties[bad].type: Forbidden: type cannot be set to null, use nullable as an alternative",
        "additionalProperties: Forbidden: must not be used at the root",
    ] {
        assert!(t.contains(&want.to_string()), "missing {want}\nin {t:#?}");
    }
    let e = errs[0].under("spec.versions[0].schema.openAPIV3Schema");
    assert!(
        e.field
            .starts_with("spec.versions[0].schema.openAPIV3Schema."),
        "{e}"
    );
    assert_eq!(
        FieldError::forbidden("", "x")
            .under("spec.versions[0].schema.openAPIV3Schema")
            .field,
        "spec.versions[0].schema.openAPIV3Schema"
    );
}

#[test]
fn list_type_checks_in_schema() {
    let t = texts(
        &schema(json!({
            "type": "object",
            "properties": {
                "a": {"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
                "b": {"type": "array", "x-kubernetes-list-type": "bag", "items": {"type": "string"}},
                "c": {"type": "string", "x-kubernetes-list-type": "set"}
            }
        }))
        .unwrap_err(),
    );
    for want in [
        "properties[a].x-kubernetes-list-map-keys: Required value: must not be empty if x-kubernetes-list-type is map",
        r#"properties[b].x-kubernetes-list-type: Unsupported value: "bag": supported values: "atomic", "set", "map""#,
        r#"properties[c].type: Invalid value: "string": must be array if x-kubernetes-list-type is specified"#,
    ] {
        assert!(t.contains(&want.to_string()), "missing {want}\nin {t:#?}");
    }
}

#[test]
fn cel_rule_compile_and_cost_errors() {
    let t = texts(
        &schema(json!({
            "type": "object",
            "properties": {"spec": {"type": "object",
                "properties": {"x": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.x == foo"}]}}
        }))
        .unwrap_err(),
    );
    assert_eq!(t.len(), 1, "{t:#?}");
    assert!(
        t[0].starts_with(r#"properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:"self.x == foo", "#),
        "{t:#?}"
    );
    assert!(t[0].contains(": compilation failed: ERROR: <input>:1:11: undeclared reference to 'foo' (in container '')"), "{t:#?}");

    let t = texts(
        &schema(json!({
            "type": "object",
            "properties": {"spec": {"type": "object",
                "properties": {"names": {"type": "array", "items": {"type": "string"}}},
                "x-kubernetes-validations": [{"rule": "self.names.all(a, self.names.all(b, a == b || a != b))"}]}}
        }))
        .unwrap_err(),
    );
    assert!(
        t.iter().any(|e| e.starts_with("properties[spec].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x")),
        "{t:#?}"
    );
    // Bounded, it is fine.
    schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object",
            "properties": {"names": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 10}}},
            "x-kubernetes-validations": [{"rule": "self.names.all(a, self.names.all(b, a == b || a != b))"}]}}
    }))
    .unwrap();
    // oldSelf under an atomic list's items.
    let t = texts(
        &schema(json!({
            "type": "object",
            "properties": {"l": {"type": "array", "maxItems": 5, "items": {"type": "string", "maxLength": 5,
                "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}}}
        }))
        .unwrap_err(),
    );
    assert!(t[0].contains("oldSelf cannot be used on the uncorrelatable portion of the schema within properties[l]"), "{t:#?}");
}

#[test]
fn rules_messages_reasons_field_paths_and_transitions() {
    let s = schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object",
            "properties": {
                "min": {"type": "integer"}, "max": {"type": "integer"},
                "name": {"type": "string", "maxLength": 20,
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "name is immutable"}]}
            },
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max"},
                {"rule": "self.min >= 0", "messageExpression": "'min is ' + string(self.min)", "reason": "FieldValueForbidden", "fieldPath": ".min"},
                {"rule": "!has(oldSelf.max) || self.max >= oldSelf.max", "message": "max may not shrink"}
            ]}}
    }))
    .unwrap();
    let new = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
                     "spec": {"min": -5, "max": -6, "name": "b"}});
    let t = texts(&s.validate_rules(&new, None));
    assert_eq!(
        t,
        vec![
            r#"spec: Invalid value: "object": failed rule: self.min <= self.max"#.to_string(),
            "spec.min: Forbidden: min is -5".to_string(),
        ]
    );
    let old = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
                     "spec": {"min": -5, "max": 0, "name": "a"}});
    let t = texts(&s.validate_rules(&new, Some(&old)));
    assert!(
        t.contains(&r#"spec: Invalid value: "object": max may not shrink"#.to_string()),
        "{t:#?}"
    );
    assert!(
        t.contains(&r#"spec.name: Invalid value: "string": name is immutable"#.to_string()),
        "{t:#?}"
    );
}

#[test]
fn defaults_in_items_additional_properties_and_nulls() {
    let s = schema(json!({
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {
                "replicas": {"type": "integer", "default": 1},
                "nullable": {"type": "string", "nullable": true, "default": "d"},
                "notNullable": {"type": "string", "default": "d"},
                "ports": {"type": "array", "items": {"type": "object", "properties": {
                    "protocol": {"type": "string", "default": "TCP"}, "port": {"type": "integer"}}}},
                "byName": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                    "weight": {"type": "integer", "default": 10}}}},
                "nested": {"type": "object", "default": {}, "properties": {"x": {"type": "string", "default": "y"}}}
            }}
        }
    }))
    .unwrap();
    let mut obj = json!({"spec": {"nullable": null, "notNullable": null,
        "ports": [{"port": 80}], "byName": {"a": {}}}});
    s.apply_defaults(&mut obj);
    assert_eq!(
        obj,
        json!({"spec": {"replicas": 1, "nullable": null, "notNullable": "d",
            "ports": [{"port": 80, "protocol": "TCP"}], "byName": {"a": {"weight": 10}},
            "nested": {"x": "y"}}})
    );
}

#[test]
fn validation_messages() {
    let s = schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 3, "minLength": 2, "pattern": "^[a-z]+$"},
            "list": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
            "ios": {"x-kubernetes-int-or-string": true},
            "id": {"type": "string", "format": "uuid"},
            "ratio": {"type": "number", "maximum": 1, "exclusiveMaximum": true},
            "emb": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
            "labels": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}}
        }}}
    }))
    .unwrap();
    let obj = json!({"spec": {
        "name": "ABCD", "list": ["a", "a", "b"], "ios": true, "id": "nope", "ratio": 1,
        "emb": {"kind": "Pod"}, "labels": {"a": "x", "b": 1}
    }});
    let t = texts(&s.validate(&obj));
    for want in [
        "spec.name: Too long: may not be more than 3 bytes",
        r#"spec.name: Invalid value: "ABCD": spec.name in body should match '^[a-z]+$'"#,
        "spec.list: Too many: 3: must have at most 2 items",
        r#"spec.list[1]: Duplicate value: "a""#,
        r#"spec.ios: Invalid value: "boolean": spec.ios in body must be of type integer,string: "boolean""#,
        r#"spec.id: Invalid value: "nope": spec.id in body must be of type uuid: "nope""#,
        "spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1",
        "spec.emb.apiVersion: Required value: must not be empty",
        "spec.labels: Too many: 2: must have at most 1 items",
        r#"spec.labels.b: Invalid value: "integer": spec.labels.b in body must be of type string: "integer""#,
    ] {
        assert!(t.contains(&want.to_string()), "missing {want}\nin {t:#?}");
    }
    assert_eq!(t.len(), 10, "{t:#?}");
    let ok = json!({"spec": {"name": "ab", "ios": "50%", "id": "123e4567-e89b-12d3-a456-426614174000",
                             "emb": {"apiVersion": "v1", "kind": "Pod", "anything": 1}}});
    assert_eq!(texts(&s.validate(&ok)), Vec::<String>::new());
}

#[test]
fn prune_keeps_preserved_and_embedded_meta() {
    let s = schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "tpl": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}}
        }}}
    }))
    .unwrap();
    let mut obj = json!({"apiVersion": "a/v1", "kind": "K", "metadata": {"name": "n"}, "top": 1,
        "spec": {"free": {"x": {"y": 1}}, "tpl": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"z": 1}, "other": 2},
                 "items": [{"a": "1", "b": 2}]}});
    let mut pruned = s.prune(&mut obj);
    pruned.sort();
    assert_eq!(
        pruned,
        vec![
            "spec.items[0].b",
            "spec.tpl.other",
            "spec.tpl.spec.z",
            "top"
        ]
    );
    assert_eq!(obj["spec"]["free"]["x"]["y"], 1);
    assert_eq!(obj["spec"]["tpl"]["metadata"]["name"], "p");
}

#[test]
fn list_kinds() {
    let s = schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {
            "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port", "protocol"],
                "items": {"type": "object", "required": ["port", "protocol"], "properties": {
                    "port": {"type": "integer"}, "protocol": {"type": "string"},
                    "names": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}
        }}}
    }))
    .unwrap();
    assert_eq!(s.list_kind_at(&["spec", "set"]), Some(ListKind::Set));
    assert_eq!(
        s.list_kind_at(&["spec", "ports"]),
        Some(ListKind::Map(vec!["port".into(), "protocol".into()]))
    );
    assert_eq!(
        s.list_kind_at(&["spec", "ports", "names"]),
        Some(ListKind::Set)
    );
    assert_eq!(s.list_kind_at(&["spec"]), None);
    assert_eq!(s.map_is_atomic_at(&["spec"]), Some(false));
    assert_eq!(s.map_is_atomic_at(&["spec", "set"]), None);
    let s = schema(
        json!({"type": "object", "properties": {"sel": {"type": "object",
        "x-kubernetes-map-type": "atomic", "additionalProperties": {"type": "string"}}}}),
    )
    .unwrap();
    assert_eq!(s.map_is_atomic_at(&["sel"]), Some(true));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn schema_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!({"type": "string"})),
            Just(
                json!({"type": "string", "maxLength": 3, "pattern": "^[a-z]*$", "enum": ["a", "b"]})
            ),
            Just(json!({"type": "integer", "minimum": 0, "maximum": 5, "default": 1})),
            Just(json!({"type": "number", "multipleOf": 0.5})),
            Just(json!({"type": "boolean", "nullable": true})),
            Just(json!({"x-kubernetes-int-or-string": true})),
            Just(json!({"type": "string", "format": "date-time"})),
            Just(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})),
            Just(json!({})),
            Just(json!({"type": "null"})),
            Just(json!({"type": "string", "pattern": "("})),
            Just(
                json!({"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 3"}]})
            ),
            Just(
                json!({"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "optionalOldSelf": true}]})
            ),
            Just(
                json!({"type": "integer", "x-kubernetes-validations": [{"rule": "self > ", "message": "x"}]})
            ),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::btree_map("[a-c]{1,2}", inner.clone(), 0..4).prop_map(|m| {
                    json!({"type": "object", "properties": m, "required": ["a"]})
                }),
                inner.clone().prop_map(|i| json!({"type": "array", "items": i, "maxItems": 3})),
                inner.clone().prop_map(|i| json!({"type": "array", "items": i, "x-kubernetes-list-type": "set"})),
                inner.clone().prop_map(|i| json!({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}, "v": i}, "required": ["k"]}, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]})),
                inner.clone().prop_map(|i| json!({"type": "object", "additionalProperties": i})),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"type": "object", "properties": {"x": a}, "anyOf": [{"required": ["x"]}, b]})),
                inner.clone().prop_map(|i| json!({"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": i}})),
                inner.prop_map(|i| json!({"type": "object", "properties": {"x": i}, "x-kubernetes-validations": [{"rule": "has(self.x) || !has(self.x)", "messageExpression": "'m'"}]})),
            ]
        })
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|i| json!(i)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z0-9:/.-]{0,6}".prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-ck-kv-v]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn never_panics(spec in schema_json(), v in value(), old in value()) {
            let root = json!({"type": "object", "properties": {"spec": spec}});
            let Ok(props) = serde_json::from_value::<JSONSchemaProps>(root) else { return Ok(()); };
            if let Ok(s) = Schema::compile(&props) {
                let mut obj = json!({"apiVersion": "a/v1", "kind": "K", "metadata": {"name": "n"}, "spec": v});
                let oldobj = json!({"apiVersion": "a/v1", "kind": "K", "metadata": {"name": "n"}, "spec": old});
                s.apply_defaults(&mut obj);
                let _ = s.prune(&mut obj);
                let _ = s.validate(&obj);
                let _ = s.validate_rules(&obj, Some(&oldobj));
                let _ = s.validate_rules(&obj, None);
                let _ = s.list_kind_at(&["spec", "a"]);
                let _ = s.openapi_v3_schema("g", "v1", "K");
            }
        }
    }
}

#[test]
fn defaults_are_checked_against_their_schema() {
    let t = texts(
        &schema(json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "replicas": {"type": "integer", "minimum": 1, "default": 0},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "c"},
                "obj": {"type": "object", "properties": {"x": {"type": "string"}}, "default": {"y": 1}},
                "ok": {"type": "object", "properties": {"x": {"type": "string", "maxLength": 2}}, "default": {"x": "abc"}}
            }}}
        }))
        .unwrap_err(),
    );
    for want in [
        "properties[spec].properties[replicas].default: Invalid value: 0: in body should be greater than or equal to 1",
        r#"properties[spec].properties[mode].default: Unsupported value: "c": supported values: "a", "b""#,
        r#"properties[spec].properties[obj].default: Invalid value: {"y":1}: must not have unknown fields"#,
        "properties[spec].properties[ok].default.x: Too long: may not be more than 2 bytes",
    ] {
        assert!(t.contains(&want.to_string()), "missing {want}\nin {t:#?}");
    }
    let t = texts(
        &schema(json!({
            "type": "object",
            "properties": {"metadata": {"type": "object", "default": {"name": "x"}}}
        }))
        .unwrap_err(),
    );
    assert!(
        t.contains(
            &"properties[metadata].default: Forbidden: must not be set in top-level metadata"
                .to_string()
        ),
        "{t:#?}"
    );
}

#[test]
fn updates_ratchet_unchanged_values() {
    let s = schema(json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 3},
            "other": {"type": "integer"},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["n"],
                "items": {"type": "object", "required": ["n"], "properties": {
                    "n": {"type": "string"}, "p": {"type": "integer", "maximum": 10,
                        "x-kubernetes-validations": [{"rule": "self > 0"}]}}}}
        }}}
    }))
    .unwrap();
    let old = json!({"spec": {"name": "toolong", "other": 1, "ports": [{"n": "a", "p": 20}, {"n": "b", "p": 0}]}});
    // Only `other` changes, and ports are reordered: nothing is re-checked.
    let new = json!({"spec": {"name": "toolong", "other": 2, "ports": [{"n": "b", "p": 0}, {"n": "a", "p": 20}]}});
    assert_eq!(texts(&s.validate_update(&new, &old)), Vec::<String>::new());
    assert_eq!(
        texts(&s.validate_rules(&new, Some(&old))),
        Vec::<String>::new()
    );
    // Without the old object everything is checked.
    assert_eq!(s.validate(&new).len(), 2);
    assert_eq!(s.validate_rules(&new, None).len(), 1);
    // A changed value is checked.
    let changed = json!({"spec": {"name": "toolonger", "other": 2, "ports": [{"n": "b", "p": -1}, {"n": "a", "p": 20}]}});
    let t = texts(&s.validate_update(&changed, &old));
    assert_eq!(
        t,
        vec!["spec.name: Too long: may not be more than 3 bytes".to_string()]
    );
    let t = texts(&s.validate_rules(&changed, Some(&old)));
    assert_eq!(
        t,
        vec![r#"spec.ports[0].p: Invalid value: "integer": failed rule: self > 0"#.to_string()]
    );
}

#[test]
fn deep_schemas_and_values_do_not_overflow() {
    // serde_json refuses more than 128 levels; build the deepest it allows.
    let depth = 61;
    let mut s = json!({"type": "string", "default": "x", "x-kubernetes-validations": [{"rule": "self.size() > 0"}]});
    let mut v = json!("leaf");
    for i in 0..depth {
        s = if i % 20 != 19 {
            json!({"type": "object", "properties": {"a": s}, "x-kubernetes-validations": [{"rule": "has(self.a)"}]})
        } else {
            json!({"type": "array", "maxItems": 1, "items": s})
        };
        v = if i % 20 != 19 {
            json!({"a": v})
        } else {
            json!([v])
        };
    }
    let root = json!({"type": "object", "properties": {"spec": s}});
    let text = serde_json::to_string(&root).unwrap();
    let props: JSONSchemaProps = serde_json::from_str(&text).unwrap();
    let schema = Schema::compile(&props).unwrap_or_else(|e| panic!("{:#?}", texts(&e)));
    let mut obj = json!({"spec": v});
    schema.apply_defaults(&mut obj);
    let _ = schema.prune(&mut obj);
    assert_eq!(schema.validate(&obj), vec![]);
    let _ = schema.validate_update(&obj, &json!({}));
    assert_eq!(schema.validate_rules(&obj, None), vec![]);
    let _ = schema.validate_rules(&obj, Some(&obj));
    let _ = schema.list_kind_at(&["spec"]);
    let _ = schema.openapi_v3_schema("g", "v", "K");
}

/// Schemas are compiled once per CRD version and shared by the apiserver's
/// tasks.
#[test]
fn schemas_are_send_and_sync() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Schema>();
    shared::<FieldError>();
}
