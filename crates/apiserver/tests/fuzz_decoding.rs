//! Property tests: bad request input gets a 4xx `Status`, never a panic.
//!
//! Covers the request decoding of the API server without a server process:
//! bodies (`request::decode_body` for every media type, Kubernetes
//! protobuf), paths, query strings, the Accept header, label and field
//! selectors, strategic merge patches and the per-type object checks
//! (`objects::check_type`, `prepare_create`, `validate`, `prepare_update`).

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rke2_apimachinery::selectors::{
    LabelOperator, LabelSelector, Requirement, label_selector_from_json, parse_field_selector,
    parse_label_selector,
};
use rke2_apimachinery::strategic_merge::{apply, builtin_schema};
use rke2_apiserver::objects;
use rke2_apiserver::registry::{self, ResourceType};
use rke2_apiserver::request::{self, BodyType, Query, Route};
use rke2_apiserver::status::ApiError;
use serde_json::{Map, Value, json};

const ALL_BODY_TYPES: [BodyType; 7] = [
    BodyType::Json,
    BodyType::Yaml,
    BodyType::Protobuf,
    BodyType::JsonPatch,
    BodyType::MergePatch,
    BodyType::StrategicMergePatch,
    BodyType::ApplyPatch,
];

/// Body types decoded by the JSON parser (errors carry line/column).
const JSON_BODY_TYPES: [BodyType; 4] = [
    BodyType::Json,
    BodyType::JsonPatch,
    BodyType::MergePatch,
    BodyType::StrategicMergePatch,
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Minimal failing inputs are reported in the panic message; no
        // regression files are written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- strategies

/// Keys that matter to Kubernetes objects and patches, plus random ones.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "apiVersion", "kind", "metadata", "name", "generateName", "namespace",
            "labels", "annotations", "finalizers", "uid", "resourceVersion",
            "generation", "spec", "status", "template", "selector", "matchLabels",
            "matchExpressions", "key", "operator", "values", "containers",
            "initContainers", "env", "ports", "containerPort", "protocol", "image",
            "replicas", "strategy", "type", "data", "stringData", "$patch",
            "$retainKeys", "$setElementOrder/containers", "$setElementOrder/env",
            "$deleteFromPrimitiveList/finalizers", "volumes", "volumeMounts",
            "mountPath", "value", "targetPort", "port", "tolerations",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z0-9$/._-]{0,10}",
    ]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "", "a", "web", "delete", "replace", "merge", "retainKeys", "In",
            "NotIn", "Exists", "DoesNotExist", "v1", "apps/v1", "Deployment",
            "Pod", "Namespace", "default", "kube-system", "nginx:1.25", "80",
            "TCP", "Bad_Name", "-x-", "a/b/c",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // Exactly representable floats, so JSON text round-trips.
        (-1_000_000i64..1_000_000).prop_map(|n| json!(n as f64 / 8.0)),
        any::<u64>().prop_map(|n| json!(n)),
        arb_string().prop_map(Value::String),
    ]
}

/// Any JSON value, depth-limited.
fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(arb_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object (what patches and bodies usually are).
fn arb_object() -> impl Strategy<Value = Value> {
    btree_map(arb_key(), arb_json(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

/// Optionally one of the strategic-merge directives inside a map.
fn arb_directive() -> impl Strategy<Value = Option<(String, Value)>> {
    prop::option::weighted(
        0.3,
        prop_oneof![
            prop::sample::select(vec!["delete", "replace", "merge", "bogus"])
                .prop_map(|d| ("$patch".to_string(), json!(d))),
            Just(("$patch".to_string(), json!(7))),
            vec(arb_key(), 0..3).prop_map(|k| ("$retainKeys".to_string(), json!(k))),
            Just(("$retainKeys".to_string(), json!("name"))),
            vec(arb_string(), 0..3)
                .prop_map(|v| ("$deleteFromPrimitiveList/finalizers".to_string(), json!(v))),
            vec(arb_json(), 0..3)
                .prop_map(|v| ("$setElementOrder/containers".to_string(), Value::Array(v))),
            Just(("$setElementOrder/env".to_string(), json!("x"))),
        ],
    )
}

fn with_directive(mut v: Value, d: Option<(String, Value)>) -> Value {
    if let (Some(m), Some((k, dv))) = (v.as_object_mut(), d) {
        m.insert(k, dv);
    }
    v
}

/// A container-ish map; the `name` merge key is sometimes missing.
fn arb_container() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.8, prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(arb_string()),
        vec(
            (
                prop::option::weighted(0.8, prop::sample::select(vec!["X", "Y"])),
                arb_json(),
            ),
            0..3,
        ),
        vec(
            (
                prop::option::weighted(0.8, prop::sample::select(vec![80i64, 443])),
                arb_leaf(),
            ),
            0..3,
        ),
        arb_directive(),
        prop::option::weighted(0.15, arb_json()),
    )
        .prop_map(|(name, image, env, ports, dir, junk)| {
            if let Some(j) = junk {
                return j;
            }
            let mut c = Map::new();
            if let Some(n) = name {
                c.insert("name".into(), json!(n));
            }
            if let Some(i) = image {
                c.insert("image".into(), json!(i));
            }
            let env: Vec<Value> = env
                .into_iter()
                .map(|(n, v)| match n {
                    Some(n) => json!({"name": n, "value": v}),
                    None => json!({"value": v}),
                })
                .collect();
            c.insert("env".into(), Value::Array(env));
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(p, proto)| match p {
                    Some(p) => json!({"containerPort": p, "protocol": proto}),
                    None => json!({"protocol": proto}),
                })
                .collect();
            c.insert("ports".into(), Value::Array(ports));
            with_directive(Value::Object(c), dir)
        })
}

/// A Deployment-shaped object (or patch) reaching the merge-keyed lists.
fn arb_deployment_like() -> impl Strategy<Value = Value> {
    (
        vec(arb_container(), 0..4),
        prop::option::of(vec(arb_string(), 0..3)),
        btree_map(arb_key(), arb_json(), 0..3),
        arb_directive(),
        arb_directive(),
        prop::option::weighted(0.2, arb_json()),
    )
        .prop_map(|(containers, finalizers, extra, d1, d2, spec_junk)| {
            let pod_spec = with_directive(json!({ "containers": containers }), d1);
            let mut spec = json!({
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec},
            });
            if let Some(j) = spec_junk {
                spec["template"]["spec"]["volumes"] = j;
            }
            let mut obj = json!({"metadata": {"name": "web"}, "spec": with_directive(spec, d2)});
            if let Some(f) = finalizers {
                obj["metadata"]["finalizers"] = json!(f);
            }
            if let Some(m) = obj.as_object_mut() {
                m.extend(extra);
            }
            obj
        })
}

/// Bytes of a serialized value with one random edit (delete, insert,
/// replace or truncate).
fn mutate(text: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = text.len();
    (
        0..4u8,
        0..=len,
        any::<u8>(),
        prop::sample::select(b"{}[]:,\"\\ \n-#&*!|>'".to_vec()),
    )
        .prop_map(move |(op, at, byte, syntax)| {
            let mut t = text.clone();
            let at = at.min(t.len());
            let b = if byte % 2 == 0 { syntax } else { byte };
            match op {
                0 if at < t.len() => {
                    t.remove(at);
                }
                1 => t.insert(at, b),
                2 if at < t.len() => t[at] = b,
                _ => t.truncate(at),
            }
            t
        })
}

fn arb_mutated_json() -> impl Strategy<Value = Vec<u8>> {
    arb_json()
        .prop_map(|v| {
            if v.is_object() {
                serde_json::to_vec_pretty(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            }
        })
        .prop_flat_map(mutate)
}

fn arb_mutated_yaml() -> impl Strategy<Value = Vec<u8>> {
    arb_object()
        .prop_map(|v| serde_saphyr::to_string(&v).unwrap().into_bytes())
        .prop_flat_map(mutate)
}

/// YAML-looking text: indentation, flow collections, anchors, tags, ...
fn arb_yamlish() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            4 => "[a-z0-9]{1,6}".boxed(),
            3 => prop::sample::select(vec![
                ": ", ":", "- ", "\n", "\n  ", "\n    ", "{", "}", "[", "]", ", ",
                "&a ", "*a", "&b ", "*b", "!!str ", "!!int ", "!!map ", "!custom ",
                "<<: ", "? ", "| ", "> ", "#c", "\"", "'", "---\n", "...\n", "%YAML 1.2\n",
                "\t", "\\", "~", "null", "true", "0x1F", "0o17", "1e400", ".nan",
                "é", "\u{feff}", "\r\n",
            ])
            .prop_map(str::to_string)
            .boxed(),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

// ---------------------------------------------------------------- helpers

fn assert_4xx(e: &ApiError, allowed: &[u16]) -> Result<(), TestCaseError> {
    prop_assert!(
        allowed.contains(&e.code),
        "code {} not in {:?}: {}",
        e.code,
        allowed,
        e.message
    );
    prop_assert!(!e.message.is_empty(), "empty message for {}", e.code);
    let status = e.to_status();
    prop_assert_eq!(&status["kind"], "Status");
    prop_assert_eq!(&status["code"], e.code);
    let expected_reason = match e.code {
        400 => "BadRequest",
        404 => "NotFound",
        406 => "NotAcceptable",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        _ => e.reason,
    };
    prop_assert_eq!(e.reason, expected_reason);
    Ok(())
}

fn check_decode(bytes: &[u8], ty: BodyType) -> Result<(), TestCaseError> {
    match request::decode_body(bytes, ty) {
        Ok(_) => {}
        Err(e) => {
            let allowed: &[u16] = if ty == BodyType::Protobuf {
                &[400, 415]
            } else {
                &[400]
            };
            assert_4xx(&e, allowed)?;
            if JSON_BODY_TYPES.contains(&ty) {
                prop_assert!(
                    e.message.contains("line ") && e.message.contains("column "),
                    "JSON error without position: {}",
                    e.message
                );
                prop_assert!(serde_json::from_slice::<Value>(bytes).is_err());
            }
        }
    }
    Ok(())
}

fn type_strategy() -> impl Strategy<Value = &'static ResourceType> {
    prop::sample::select(registry::builtin().iter().map(|t| &**t).collect::<Vec<_>>())
}

/// A body for `rt`: a well-formed object with random parts, or anything.
fn arb_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => arb_json(),
        2 => arb_deployment_like(),
        3 => (
            prop::option::of(prop_oneof![arb_string().prop_map(Value::String), arb_leaf()]),
            prop::option::weighted(0.3, arb_string()),
            prop::option::weighted(0.3, arb_string()),
            prop::option::of(prop_oneof![
                btree_map("[a-zA-Z0-9./_-]{0,12}", arb_leaf(), 0..4)
                    .prop_map(|m| json!(m)),
                arb_json(),
            ]),
            prop::option::of(arb_json()),
            prop::option::of(arb_json()),
            prop::option::weighted(0.3, prop_oneof![
                Just(json!("v1")), Just(json!("apps/v1")), arb_leaf(),
            ]),
            prop::option::weighted(0.3, arb_leaf()),
            btree_map(arb_key(), arb_json(), 0..3),
        )
            .prop_map(|(name, gen_name, ns, labels, spec, status, api_version, kind, extra)| {
                let mut meta = Map::new();
                if let Some(n) = name {
                    meta.insert("name".into(), n);
                }
                if let Some(g) = gen_name {
                    meta.insert("generateName".into(), json!(g));
                }
                if let Some(n) = ns {
                    meta.insert("namespace".into(), json!(n));
                }
                if let Some(l) = labels {
                    meta.insert("labels".into(), l);
                }
                let mut obj = Map::new();
                obj.insert("metadata".into(), Value::Object(meta));
                if let Some(s) = spec {
                    obj.insert("spec".into(), s);
                }
                if let Some(s) = status {
                    obj.insert("status".into(), s);
                }
                if let Some(a) = api_version {
                    obj.insert("apiVersion".into(), a);
                }
                if let Some(k) = kind {
                    obj.insert("kind".into(), k);
                }
                obj.extend(extra);
                Value::Object(obj)
            }),
    ]
}

fn check_invalid(e: &ApiError, rt: &ResourceType) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.code, 422, "{}", e.message);
    prop_assert_eq!(e.reason, "Invalid");
    // Upstream names the kind with its group outside the core group
    // (`Deployment.apps "web" is invalid`).
    let kind = if rt.group.is_empty() {
        rt.kind.to_string()
    } else {
        format!("{}.{}", rt.kind, rt.group)
    };
    prop_assert!(
        e.message.starts_with(&format!("{kind} \"")),
        "message does not name the kind: {}",
        e.message
    );
    let causes = e
        .details
        .as_ref()
        .and_then(|d| d["causes"].as_array())
        .cloned()
        .unwrap_or_default();
    prop_assert!(!causes.is_empty(), "422 without causes: {}", e.message);
    for c in &causes {
        let field = c["field"].as_str().unwrap_or("");
        prop_assert!(!field.is_empty(), "cause without a field: {}", c);
        prop_assert!(
            e.message.contains(field),
            "message {:?} does not name field {:?}",
            e.message,
            field
        );
    }
    Ok(())
}

/// The create path of the handlers: check_type → prepare_create → validate.
fn create_pipeline(
    rt: &ResourceType,
    mut obj: Value,
    ns: Option<&str>,
) -> Result<Value, TestCaseError> {
    match objects::check_type(rt, &mut obj) {
        Ok(()) => {}
        Err(e) => {
            assert_4xx(&e, &[400])?;
            return Ok(Value::Null);
        }
    }
    if let Err(e) = objects::prepare_create(rt, &mut obj, ns) {
        assert_4xx(&e, &[400])?;
        return Ok(Value::Null);
    }
    match objects::validate(rt, &obj) {
        Ok(()) => Ok(obj),
        Err(e) => {
            check_invalid(&e, rt)?;
            Ok(Value::Null)
        }
    }
}

// ---------------------------------------------------------------- protobuf

fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_bytes(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `k8s\0` + a `runtime.Unknown` with the given type and raw object bytes.
fn envelope(api_version: &str, kind: &str, raw: &[u8], encoding: Option<&str>) -> Vec<u8> {
    let mut tm = Vec::new();
    field_bytes(1, api_version.as_bytes(), &mut tm);
    field_bytes(2, kind.as_bytes(), &mut tm);
    let mut out = b"k8s\0".to_vec();
    field_bytes(1, &tm, &mut out);
    field_bytes(2, raw, &mut out);
    if let Some(e) = encoding {
        field_bytes(3, e.as_bytes(), &mut out);
    }
    out
}

/// Protobuf-looking bytes: random fields of every wire type, nested
/// length-delimited messages, and sometimes a broken tail.
fn arb_protoish() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (1u32..40, any::<u64>()).prop_map(|(f, v)| {
            let mut o = Vec::new();
            varint(u64::from(f) << 3, &mut o);
            varint(v, &mut o);
            o
        }),
        (1u32..40, vec(any::<u8>(), 0..12)).prop_map(|(f, d)| {
            let mut o = Vec::new();
            field_bytes(f, &d, &mut o);
            o
        }),
        (1u32..40, "[a-zA-Z0-9/.:-]{0,12}").prop_map(|(f, s)| {
            let mut o = Vec::new();
            field_bytes(f, s.as_bytes(), &mut o);
            o
        }),
        (1u32..40, any::<u64>()).prop_map(|(f, v)| {
            let mut o = Vec::new();
            varint(u64::from(f) << 3 | 1, &mut o);
            o.extend_from_slice(&v.to_le_bytes());
            o
        }),
        (1u32..40, any::<u32>()).prop_map(|(f, v)| {
            let mut o = Vec::new();
            varint(u64::from(f) << 3 | 5, &mut o);
            o.extend_from_slice(&v.to_le_bytes());
            o
        }),
        vec(any::<u8>(), 0..4),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|parts| parts.concat()),
            (1u32..20, vec(inner, 0..5)).prop_map(|(f, parts)| {
                let mut o = Vec::new();
                field_bytes(f, &parts.concat(), &mut o);
                o
            }),
        ]
    })
}

// ---------------------------------------------------------------- selectors

fn arb_label_key() -> impl Strategy<Value = String> {
    (
        prop::option::of("[a-z]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z]{2,4})?"),
        "[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,10}[a-zA-Z0-9])?",
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
}

fn arb_label_value() -> impl Strategy<Value = String> {
    "([a-zA-Z0-9]([a-zA-Z0-9_.-]{0,10}[a-zA-Z0-9])?)?"
}

fn arb_requirement() -> impl Strategy<Value = Requirement> {
    let nonempty_value = "[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,10}[a-zA-Z0-9])?";
    (
        arb_label_key(),
        prop_oneof![
            (
                prop::sample::select(vec![LabelOperator::In, LabelOperator::NotIn]),
                vec(nonempty_value, 1..4)
            )
                .boxed(),
            (
                prop::sample::select(vec![
                    LabelOperator::Equals,
                    LabelOperator::DoubleEquals,
                    LabelOperator::NotEquals,
                ]),
                arb_label_value().prop_map(|v| vec![v])
            )
                .boxed(),
            (
                prop::sample::select(vec![LabelOperator::Exists, LabelOperator::DoesNotExist]),
                Just(Vec::new())
            )
                .boxed(),
            (
                prop::sample::select(vec![LabelOperator::GreaterThan, LabelOperator::LessThan]),
                (0u32..100_000).prop_map(|n| vec![n.to_string()])
            )
                .boxed(),
        ],
    )
        .prop_map(|(key, (op, values))| {
            Requirement::new(&key, op, values).expect("generated requirement is valid")
        })
}

fn arb_selector_text() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            3 => "[a-z0-9]{1,5}".boxed(),
            3 => prop::sample::select(vec![
                "=", "==", "!=", "!", ",", " in ", " notin ", "(", ")", " ", ">", "<",
                "/", ".", "-", "_", "in", "notin", "\\", "\\,", "\\=", "é", "日本",
                "\t", "example.com/", "a=b", "x in (a,b)",
            ])
            .prop_map(str::to_string)
            .boxed(),
        ],
        0..16,
    )
    .prop_map(|parts| parts.concat())
}

fn escape_field_value(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace(',', r"\,")
        .replace('=', r"\=")
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes for every media type: Ok, or 400 (415 for protobuf
    /// bodies of kinds we cannot convert), JSON errors naming line/column.
    #[test]
    fn decode_body_arbitrary_bytes(bytes in vec(any::<u8>(), 0..400)) {
        for ty in ALL_BODY_TYPES {
            check_decode(&bytes, ty)?;
        }
    }

    /// Valid JSON with one random edit.
    #[test]
    fn decode_body_mutated_json(bytes in arb_mutated_json()) {
        for ty in ALL_BODY_TYPES {
            check_decode(&bytes, ty)?;
        }
    }

    /// Valid YAML with one random edit.
    #[test]
    fn decode_body_mutated_yaml(bytes in arb_mutated_yaml()) {
        check_decode(&bytes, BodyType::Yaml)?;
        check_decode(&bytes, BodyType::ApplyPatch)?;
    }

    /// YAML-looking text built from YAML syntax (anchors, tags, flow, ...).
    #[test]
    fn decode_body_yamlish(text in arb_yamlish()) {
        check_decode(text.as_bytes(), BodyType::Yaml)?;
        check_decode(text.as_bytes(), BodyType::ApplyPatch)?;
    }

    /// Valid JSON decodes to itself under every JSON-capable media type.
    #[test]
    fn decode_body_valid_json_round_trips(v in arb_json()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        for ty in ALL_BODY_TYPES {
            if ty == BodyType::Protobuf {
                continue;
            }
            let got = request::decode_body(&bytes, ty);
            prop_assert!(got.is_ok(), "{:?}: {:?}", ty, got.err());
            prop_assert_eq!(got.unwrap(), v.clone());
        }
    }

    /// Objects serialized as YAML decode to themselves.
    #[test]
    fn decode_body_valid_yaml_round_trips(v in btree_map("[a-z]{1,8}", prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 ]{0,12}".prop_map(Value::String),
        vec("[a-z]{0,6}", 0..4).prop_map(|l| json!(l)),
    ], 1..6)) {
        let v = json!(v);
        let text = serde_saphyr::to_string(&v).unwrap();
        let got = request::decode_body(text.as_bytes(), BodyType::Yaml);
        prop_assert!(got.is_ok(), "{text}: {:?}", got.err());
        prop_assert_eq!(got.unwrap(), v);
    }

    /// Protobuf: arbitrary bytes, and `k8s\0` + arbitrary bytes, are errors.
    #[test]
    fn kubeproto_decode_arbitrary(bytes in vec(any::<u8>(), 0..300)) {
        let _ = rke2_kubeproto::decode(&bytes);
        let mut framed = b"k8s\0".to_vec();
        framed.extend_from_slice(&bytes);
        prop_assert!(rke2_kubeproto::decode(&framed).is_err());
        check_decode(&framed, BodyType::Protobuf)?;
    }

    /// Protobuf: an envelope for a supported kind with random, protobuf-like
    /// object bytes: Ok or an error, never a panic; through decode_body 400.
    #[test]
    fn kubeproto_decode_supported_kinds_random_objects(
        kind in prop::sample::select(
            rke2_kubeproto::supported_kinds().iter().copied()
                .chain([("v1", "DeleteOptions"), ("v1", "Widget"), ("", "Pod")])
                .collect::<Vec<_>>()
        ),
        raw in prop_oneof![arb_protoish(), vec(any::<u8>(), 0..200)],
        encoding in prop::option::weighted(0.05, "[a-z]{0,5}"),
    ) {
        let body = envelope(kind.0, kind.1, &raw, encoding.as_deref());
        if let Ok(v) = rke2_kubeproto::decode(&body) {
            prop_assert!(v.is_object());
        }
        check_decode(&body, BodyType::Protobuf)?;
    }

    /// Arbitrary paths: a route, or a 404 Status.
    #[test]
    fn parse_path_never_panics(
        segs in vec(prop_oneof![
            3 => prop::sample::select(vec![
                "api", "apis", "v1", "apps", "batch", "coordination.k8s.io", "namespaces",
                "watch", "default", "pods", "status", "binding", "finalize", "scale",
                "deployments", "nodes", "configmaps", "x", "", "..", "%2F",
            ]).prop_map(str::to_string),
            1 => any::<String>(),
        ], 0..8),
        lead in any::<bool>(),
        trail in any::<bool>(),
    ) {
        let mut path = segs.join("/");
        if lead {
            path.insert(0, '/');
        }
        if trail {
            path.push('/');
        }
        if let Err(e) = request::parse_path(&path, &registry::Registry::new()) {
            assert_4xx(&e, &[404])?;
        }
    }

    /// Every served type's canonical paths resolve to it.
    #[test]
    fn parse_path_resolves_every_type(
        rt in type_strategy(),
        ns in "[a-z0-9-]{1,10}",
        name in "[a-z0-9.-]{1,12}",
    ) {
        let base = if rt.group.is_empty() {
            format!("/api/{}", rt.version)
        } else {
            format!("/apis/{}/{}", rt.group, rt.version)
        };
        let (list, one) = if rt.namespaced {
            (
                format!("{base}/namespaces/{ns}/{}", rt.plural),
                format!("{base}/namespaces/{ns}/{}/{name}", rt.plural),
            )
        } else {
            (format!("{base}/{}", rt.plural), format!("{base}/{}/{name}", rt.plural))
        };
        for (path, want_name) in [(list, None), (one, Some(name.as_str()))] {
            match request::parse_path(&path, &registry::Registry::new()) {
                Ok(Route::Resource(r)) => {
                    prop_assert_eq!(&r.rt.plural, &rt.plural);
                    prop_assert_eq!(&r.rt.group, &rt.group);
                    prop_assert_eq!(r.name.as_deref(), want_name);
                }
                // `namespaces/<ns>/<plural>` where `<plural>` is also a
                // resource is the namespace list... only for namespaces.
                other => prop_assert!(false, "{path}: {other:?}"),
            }
        }
    }

    /// Arbitrary query strings parse; `int` is Ok or a 400 naming the key.
    #[test]
    fn query_parse_and_int(
        raw in prop_oneof![
            any::<String>(),
            vec(("(limit|timeoutSeconds|gracePeriodSeconds|[a-z%+=&]{0,6})",
                 "(-?[0-9]{0,20}|[a-zA-Z%+&=.]{0,8}|%[0-9A-Fa-f]{0,2}|%FF%FE)"), 0..5)
                .prop_map(|kv| kv.into_iter().map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>().join("&")),
        ],
        absent in any::<bool>(),
    ) {
        let q = Query::parse(if absent { None } else { Some(&raw) });
        let keys: Vec<String> = q.0.keys().cloned().chain(["limit".to_string()]).collect();
        for k in keys {
            let _ = q.flag(&k);
            match q.int(&k) {
                Ok(Some(n)) => prop_assert_eq!(q.get(&k).unwrap().parse::<i64>().ok(), Some(n)),
                Ok(None) => prop_assert!(q.get(&k).unwrap_or("").is_empty()),
                Err(e) => {
                    assert_4xx(&e, &[400])?;
                    prop_assert!(e.message.contains(&k), "{} does not name {k:?}", e.message);
                }
            }
        }
    }

    /// Integers survive the query string.
    #[test]
    fn query_int_round_trips(n in any::<i64>()) {
        let q = Query::parse(Some(&format!("limit={n}&watch=1")));
        prop_assert_eq!(q.int("limit").unwrap(), Some(n));
        prop_assert!(q.flag("watch"));
    }

    /// Arbitrary Accept headers: an answer shape or 406.
    #[test]
    fn answer_as_never_panics(
        accept in prop_oneof![
            any::<String>(),
            vec(prop::sample::select(vec![
                "application/json", "application/yaml", "*/*", "application/*",
                "application/vnd.kubernetes.protobuf", "text/html", ";", ",", " ",
                "as=Table", "as=PartialObjectMetadataList", "v=v1", "g=meta.k8s.io",
                "q=0.9", "", "É",
            ]), 0..10).prop_map(|p| p.concat()),
        ],
        none in prop::bool::weighted(0.05),
    ) {
        match request::answer_as(if none { None } else { Some(&accept) }) {
            Ok(_) => {}
            Err(e) => assert_4xx(&e, &[406])?,
        }
        let _ = request::body_type(Some(&accept));
    }

    /// Label selectors from arbitrary text: Ok or an error with a message.
    #[test]
    fn label_selector_arbitrary_text(s in prop_oneof![arb_selector_text(), any::<String>()]) {
        match parse_label_selector(&s) {
            Ok(sel) => {
                // The canonical form parses to the same selector.
                let again = parse_label_selector(&sel.to_string());
                prop_assert!(again.is_ok(), "{:?} -> {:?}: {:?}", s, sel.to_string(), again);
                prop_assert_eq!(again.unwrap(), sel);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// A generated valid selector's canonical text re-parses to itself.
    #[test]
    fn label_selector_round_trip(reqs in vec(arb_requirement(), 0..5)) {
        let sel = LabelSelector::from_requirements(reqs);
        let text = sel.to_string();
        let parsed = parse_label_selector(&text);
        prop_assert!(parsed.is_ok(), "{text:?}: {:?}", parsed);
        prop_assert_eq!(parsed.unwrap(), sel);
    }

    /// `metav1.LabelSelector` JSON of any shape: Ok or an error.
    #[test]
    fn label_selector_from_arbitrary_json(
        v in prop_oneof![
            arb_json(),
            (
                prop::option::of(btree_map(
                    prop_oneof![arb_label_key(), any::<String>()], arb_leaf(), 0..4)),
                prop::option::of(vec((
                    prop::option::of(prop_oneof![arb_label_key().prop_map(Value::String), arb_leaf()]),
                    prop::option::of(prop_oneof![
                        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Gt", ""])
                            .prop_map(|o| json!(o)),
                        arb_leaf(),
                    ]),
                    prop::option::of(prop_oneof![vec(arb_leaf(), 0..4).prop_map(Value::Array), arb_leaf()]),
                ), 0..4)),
            ).prop_map(|(ml, me)| {
                let mut o = Map::new();
                if let Some(ml) = ml {
                    o.insert("matchLabels".into(), json!(ml));
                }
                if let Some(me) = me {
                    let exprs: Vec<Value> = me.into_iter().map(|(k, op, vals)| {
                        let mut e = Map::new();
                        if let Some(k) = k { e.insert("key".into(), k); }
                        if let Some(op) = op { e.insert("operator".into(), op); }
                        if let Some(v) = vals { e.insert("values".into(), v); }
                        Value::Object(e)
                    }).collect();
                    o.insert("matchExpressions".into(), Value::Array(exprs));
                }
                Value::Object(o)
            }),
        ]
    ) {
        match label_selector_from_json(&v) {
            Ok(sel) => {
                let _ = sel.matches_value(v.get("matchLabels"));
                if !v.is_null() {
                    let again = parse_label_selector(&sel.to_string());
                    prop_assert!(again.is_ok(), "{} -> {:?}: {:?}", v, sel.to_string(), again);
                    prop_assert_eq!(again.unwrap(), sel);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Field selectors from arbitrary ASCII text: Ok or an error with a
    /// message. (Non-ASCII text: see `field_selector_arbitrary_unicode`.)
    #[test]
    fn field_selector_arbitrary_ascii(s in prop_oneof![
        arb_selector_text().prop_filter("ascii", |s| s.is_ascii()),
        "[ -~]{0,40}",
    ]) {
        check_field_selector(&s)?;
    }

    /// Field selectors from arbitrary Unicode text.
    #[test]
    fn field_selector_arbitrary_unicode(s in prop_oneof![arb_selector_text(), any::<String>()]) {
        check_field_selector(&s)?;
    }

    /// Generated field selectors with any values round-trip through Display.
    #[test]
    fn field_selector_round_trip(terms in vec((
        "[a-z]{1,8}(\\.[a-zA-Z]{1,8}){0,2}",
        any::<bool>(),
        any::<String>(),
    ), 0..5)) {
        let text = terms.iter()
            .map(|(f, ne, v)| format!("{f}{}{}", if *ne { "!=" } else { "=" }, escape_field_value(v)))
            .collect::<Vec<_>>()
            .join(",");
        let sel = parse_field_selector(&text);
        prop_assert!(sel.is_ok(), "{text:?}: {:?}", sel);
        let sel = sel.unwrap();
        let mut got: Vec<_> = sel.requirements().iter()
            .map(|r| (r.field.clone(), r.not_equal, r.value.clone())).collect();
        let mut want = terms.clone();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
        let again = parse_field_selector(&sel.to_string());
        prop_assert!(again.is_ok(), "{:?}: {:?}", sel.to_string(), again);
        prop_assert_eq!(again.unwrap(), sel);
    }
}

proptest! {
    #![proptest_config(config(384))]

    /// Strategic merge of arbitrary JSON into arbitrary JSON with the
    /// Deployment schema: Ok or Err, never a panic.
    #[test]
    fn strategic_merge_arbitrary(
        orig in prop_oneof![arb_json(), arb_deployment_like()],
        patch in prop_oneof![arb_json(), arb_object(), arb_deployment_like()],
    ) {
        for (av, kind) in [("apps/v1", "Deployment"), ("v1", "Pod"), ("example.com/v1", "Widget")] {
            let schema = builtin_schema(av, kind);
            if let Ok(v) = apply(&orig, &patch, &schema) {
                prop_assert!(v.is_object());
            }
        }
        let _ = apply(&orig, &patch, &());
    }

    /// Deployment-shaped original and patch, reaching the merge-keyed lists
    /// (containers by name, env by name, ports by containerPort).
    #[test]
    fn strategic_merge_deployments(
        orig in arb_deployment_like().prop_map(strip_directives),
        patch in arb_deployment_like(),
    ) {
        let schema = builtin_schema("apps/v1", "Deployment");
        if let Ok(v) = apply(&orig, &patch, &schema) {
            prop_assert!(v.is_object());
            // Directives of the patch never survive in the merged maps
            // (atomic lists, and keyed lists holding non-maps, which are
            // merged as primitive sets, are copied verbatim).
            if keyed_lists_hold_maps(&orig) && keyed_lists_hold_maps(&patch) {
                let left = directives_in_merged_maps(&v);
                prop_assert!(left.is_empty(), "{:?} left in {}", left, v);
            }
        }
    }

    /// `{}` is the identity patch for objects.
    #[test]
    fn strategic_merge_empty_patch_is_identity(
        orig in prop_oneof![arb_object(), arb_deployment_like()].prop_map(strip_directives),
    ) {
        let schema = builtin_schema("apps/v1", "Deployment");
        let got = apply(&orig, &json!({}), &schema);
        prop_assert!(got.is_ok(), "{:?}", got);
        prop_assert_eq!(got.unwrap(), orig);
    }

    /// Every served type with a body whose known structural fields
    /// (`metadata.labels`, `spec`, `status`, `spec.template...`, `data`)
    /// are objects when present, through the create path (check_type →
    /// prepare_create → validate): no panic; a failed validation is a 422
    /// `Invalid` naming each field. Fully arbitrary shapes:
    /// `objects_create_pipeline_any_shape`.
    #[test]
    fn objects_create_pipeline(
        rt in type_strategy(),
        body in arb_body().prop_map(shape_known_paths),
        ns in prop::option::of(prop::sample::select(vec!["default", "kube-system", "x"])),
    ) {
        create_pipeline(rt, body, ns)?;
    }

    /// Like `objects_create_pipeline`, with any JSON in those fields.
    #[test]
    fn objects_create_pipeline_any_shape(
        rt in type_strategy(),
        body in arb_body(),
        ns in prop::option::of(prop::sample::select(vec!["default", "kube-system", "x"])),
    ) {
        create_pipeline(rt, body, ns)?;
    }

    /// `validate` and `check_type` alone on arbitrary bodies of any shape.
    #[test]
    fn objects_validate_arbitrary(rt in type_strategy(), body in arb_body()) {
        if let Err(e) = objects::validate(rt, &body) {
            check_invalid(&e, rt)?;
        }
        let mut b = body;
        if let Err(e) = objects::check_type(rt, &mut b) {
            assert_4xx(&e, &[400])?;
        }
    }

    /// The update path: a stored object updated with a well-shaped body
    /// (check_type → prepare_update → validate).
    #[test]
    fn objects_update_pipeline(
        rt in type_strategy(),
        body in arb_body().prop_map(shape_known_paths),
        status_only in any::<bool>(),
    ) {
        update_pipeline(rt, body, status_only)?;
    }

    /// Like `objects_update_pipeline`, with any JSON in the structural fields.
    #[test]
    fn objects_update_pipeline_any_shape(
        rt in type_strategy(),
        body in arb_body(),
        status_only in any::<bool>(),
    ) {
        update_pipeline(rt, body, status_only)?;
    }
}

/// The update path of the handlers: check_type → prepare_update → validate,
/// against a freshly created stored object.
fn update_pipeline(rt: &ResourceType, body: Value, status_only: bool) -> Result<(), TestCaseError> {
    let mut old = json!({"metadata": {"name": "n", "namespace": "default"}});
    objects::check_type(rt, &mut old).unwrap();
    objects::prepare_create(rt, &mut old, Some("default")).unwrap();
    let mut new = body;
    if let Err(e) = objects::check_type(rt, &mut new) {
        assert_4xx(&e, &[400])?;
        return Ok(());
    }
    objects::prepare_update(rt, &old, &mut new, status_only);
    if let Err(e) = objects::validate(rt, &new) {
        check_invalid(&e, rt)?;
    }
    Ok(())
}

/// Replaces non-object values at the paths `objects::apply_defaults` writes
/// into with `{}` (the shapes the panicking properties exercise).
fn shape_known_paths(mut v: Value) -> Value {
    const PATHS: &[&[&str]] = &[
        &["metadata", "labels"],
        &["spec"],
        &["status"],
        &["data"],
        &["spec", "template"],
        &["spec", "template", "metadata"],
        &["spec", "template", "metadata", "labels"],
        &["spec", "template", "spec"],
    ];
    if !v.is_object() {
        return v;
    }
    for path in PATHS {
        let mut cur = &mut v;
        for (i, k) in path.iter().enumerate() {
            let Some(m) = cur.as_object_mut() else { break };
            let Some(next) = m.get_mut(*k) else { break };
            if i + 1 == path.len() && !next.is_object() && !next.is_null() {
                *next = json!({});
            }
            cur = next;
        }
    }
    v
}

/// Runs each case, catching panics; fails listing every case that panicked.
fn panicking_cases<T: std::fmt::Debug + Clone + std::panic::RefUnwindSafe>(
    cases: &[T],
    f: impl Fn(T) + std::panic::RefUnwindSafe,
) {
    let failed: Vec<&T> = cases
        .iter()
        .filter(|c| std::panic::catch_unwind(|| f((*c).clone())).is_err())
        .collect();
    assert!(failed.is_empty(), "panicked on: {failed:#?}");
}

/// Minimal inputs of the known panics, for whoever fixes them.
#[test]
fn field_selector_non_ascii_regression() {
    panicking_cases(&["₠", "é=x", "a\\é=x", "metadata.name=é,ü!=x"], |s| {
        let _ = parse_field_selector(s);
    });
}

#[test]
fn objects_non_object_fields_regression() {
    let cases = [
        (
            "namespaces",
            json!({"metadata": {"name": "a", "labels": "s"}}),
        ),
        ("namespaces", json!({"metadata": {"name": "a"}, "spec": []})),
        (
            "namespaces",
            json!({"metadata": {"name": "a"}, "status": "s"}),
        ),
        ("pods", json!({"metadata": {"name": "a"}, "spec": "s"})),
        ("pods", json!({"metadata": {"name": "a"}, "status": "s"})),
        (
            "secrets",
            json!({"metadata": {"name": "a"}, "stringData": {"k": "v"}, "data": "s"}),
        ),
        (
            "deployments",
            json!({"metadata": {"name": "a"}, "spec": {"template": "s"}}),
        ),
        (
            "replicasets",
            json!({"metadata": {"name": "a"}, "spec": false}),
        ),
        (
            "daemonsets",
            json!({"metadata": {"name": "a"}, "spec": {"template": 1}}),
        ),
        (
            "jobs",
            json!({"metadata": {"name": "a"}, "spec": {"template": {"metadata": {"labels": "s"}}}}),
        ),
        (
            "statefulsets",
            json!({"metadata": {"name": "a"}, "spec": {"updateStrategy": {"rollingUpdate": 7},
                "volumeClaimTemplates": [1, {"spec": "s"}], "persistentVolumeClaimRetentionPolicy": []}}),
        ),
        (
            "statefulsets",
            json!({"metadata": {"name": "a"}, "spec": {"updateStrategy": "s",
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": 1}, "ordinals": {"start": "x"}}}),
        ),
        (
            "controllerrevisions",
            json!({"metadata": {"name": "a"}, "revision": "s", "data": [1]}),
        ),
    ];
    panicking_cases(&cases, |(plural, body)| {
        let rt = registry::builtin()
            .iter()
            .find(|r| r.plural == plural)
            .unwrap();
        let _ = create_pipeline(rt, body, Some("default"));
    });
    // The update path: labels of a Namespace (objects.rs prepare_update).
    panicking_cases(
        &[json!({"metadata": {"name": "n", "labels": "s"}})],
        |body| {
            let rt = registry::builtin()
                .iter()
                .find(|r| r.kind == "Namespace")
                .unwrap();
            let _ = update_pipeline(rt, body, false);
        },
    );
}

fn check_field_selector(s: &str) -> Result<(), TestCaseError> {
    match parse_field_selector(s) {
        Ok(sel) => {
            let _ = sel.matches(&json!({"metadata": {"name": "x"}}));
            let again = parse_field_selector(&sel.to_string());
            prop_assert!(
                again.is_ok(),
                "{:?} -> {:?}: {:?}",
                s,
                sel.to_string(),
                again
            );
            prop_assert_eq!(again.unwrap(), sel);
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// Directive keys left in the maps a Deployment merge walks: the root,
/// `spec`, the pod template and its spec, containers and their env items.
fn directives_in_merged_maps(v: &Value) -> Vec<String> {
    let pod_spec = &v["spec"]["template"]["spec"];
    let containers = pod_spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let env: Vec<Value> = containers
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .collect();
    [v, &v["spec"], &v["spec"]["template"], pod_spec]
        .into_iter()
        .chain(containers.iter())
        .chain(env.iter())
        .filter_map(Value::as_object)
        .flat_map(|m| m.keys())
        .filter(|k| {
            *k == "$patch"
                || *k == "$retainKeys"
                || k.starts_with("$setElementOrder/")
                || k.starts_with("$deleteFromPrimitiveList/")
        })
        .cloned()
        .collect()
}

/// Whether the containers list and every env list hold only maps.
fn keyed_lists_hold_maps(v: &Value) -> bool {
    let containers = v["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    containers.iter().all(|c| {
        c.is_object()
            && c["env"]
                .as_array()
                .is_none_or(|e| e.iter().all(Value::is_object))
    })
}

/// Removes directive keys from an original object, so that the result of
/// a merge holds only the patch's directives.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[test]
fn malformed_json_names_line_and_column() {
    let e = request::decode_body(b"{\n  \"a\": 1,\n  \"b\": }\n", BodyType::Json).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("line 3"), "{}", e.message);
    assert!(e.message.contains("column"), "{}", e.message);
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary impersonation headers: no impersonation, a 400 naming an
    /// `Impersonate-` header, or an identity in `system:authenticated`
    /// with one permission check per thing asked for.
    #[test]
    fn impersonation_headers_never_panic(
        pairs in vec(
            (
                prop::sample::select(vec![
                    "impersonate-user", "impersonate-group", "impersonate-uid",
                    "impersonate-extra-scopes", "impersonate-extra-a%2Fb", "accept",
                ]),
                prop_oneof![
                    "[a-z:]{0,12}".boxed(),
                    Just("system:serviceaccount:ns:sa".to_string()).boxed(),
                    Just("system:serviceaccount::".to_string()).boxed(),
                ],
            ),
            0..6,
        ),
    ) {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &pairs {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        match rke2_apiserver::authz::impersonation(&headers) {
            Ok(None) => prop_assert!(pairs.iter().all(|(k, _)| *k == "accept")),
            Ok(Some((id, asked))) => {
                prop_assert!(!id.user.is_empty());
                prop_assert!(id.groups.iter().any(|g| g == "system:authenticated"));
                let things = pairs.iter().filter(|(k, _)| *k != "accept" && *k != "impersonate-user").count() + 1;
                prop_assert_eq!(asked.len(), things);
            }
            Err(e) => {
                assert_4xx(&e, &[400])?;
                prop_assert!(e.message.contains("Impersonate-"), "{}", e.message);
            }
        }
    }
}
