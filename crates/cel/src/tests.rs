use serde_json::json;

use super::*;

fn crd_env() -> Env {
    // Untyped: nothing bounds the loops, so no estimated-cost budget.
    Env::crd_rule(Ty::Dyn).with_cost_budget(None)
}

fn eval(expr: &str, self_: serde_json::Value) -> Result<serde_json::Value, CelError> {
    Program::compile(expr, &crd_env())?.eval_value(&Vars::new().json("self", &self_))
}

#[test]
fn basic_rules_evaluate() {
    let obj = json!({"replicas": 3, "minReplicas": 1, "name": "Web", "tags": ["a", "b"]});
    assert_eq!(
        eval("self.minReplicas <= self.replicas", obj.clone()),
        Ok(json!(true))
    );
    assert_eq!(
        eval("self.name.lowerAscii()", obj.clone()),
        Ok(json!("web"))
    );
    assert_eq!(
        eval("self.tags.all(t, t.size() == 1)", obj.clone()),
        Ok(json!(true))
    );
    assert_eq!(
        eval("self.tags.map(t, t + 'x')", obj.clone()),
        Ok(json!(["ax", "bx"]))
    );
    assert_eq!(
        eval("self.tags.filter(t, t != 'a')", obj.clone()),
        Ok(json!(["b"]))
    );
    assert_eq!(
        eval("has(self.name) && !has(self.other)", obj.clone()),
        Ok(json!(true))
    );
    assert_eq!(
        eval("self.tags.exists_one(t, t == 'b')", obj),
        Ok(json!(true))
    );
}

#[test]
fn undeclared_variable_is_a_compile_error_in_upstream_words() {
    let err = Program::compile("self.x == foo", &crd_env()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "compilation failed: ERROR: <input>:1:11: undeclared reference to 'foo' (in container '')\n | self.x == foo\n | ..........^"
    );
    // Comprehension variables are in scope inside the macro only.
    let ok = Program::compile("self.all(x, x > 0)", &crd_env());
    assert!(ok.is_ok(), "{ok:?}");
    assert!(Program::compile("self.all(x, x > 0) && x > 0", &crd_env()).is_err());
    // Admission variables are not CRD variables.
    assert!(Program::compile("object.metadata.name == 'a'", &crd_env()).is_err());
    assert!(Program::compile("object.metadata.name == 'a'", &Env::admission()).is_ok());
    assert!(Program::compile("self == 1", &Env::admission()).is_err());
}

#[test]
fn unknown_function_is_a_compile_error() {
    let err = Program::compile("self.frobnicate()", &crd_env()).unwrap_err();
    assert!(
        err.to_string()
            .contains("undeclared reference to 'frobnicate'"),
        "{err}"
    );
    let err = Program::compile("nope(self)", &crd_env()).unwrap_err();
    assert!(
        err.to_string().contains("undeclared reference to 'nope'"),
        "{err}"
    );
    assert!(Program::compile("strings.quote(self)", &crd_env()).is_ok());
}

#[test]
fn syntax_error_names_position() {
    let err = Program::compile("self.x ==", &crd_env()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("compilation failed: ERROR: <input>:1:"),
        "{text}"
    );
    assert!(text.contains("Syntax error"), "{text}");
    assert!(text.contains("\n | self.x ==\n | "), "{text}");
}

#[test]
fn transition_rules_and_optional_old_self() {
    let env = crd_env();
    let p = Program::compile("self == oldSelf", &env).unwrap();
    assert!(p.uses_variable("oldSelf"));
    let vars = Vars::new()
        .json("self", &json!("a"))
        .json("oldSelf", &json!("a"));
    assert_eq!(p.eval_bool(&vars), Ok(true));
    let p = Program::compile("!oldSelf.hasValue() || self >= oldSelf.value()", &env).unwrap();
    let none = Vars::new()
        .json("self", &json!(1))
        .optional_json("oldSelf", None);
    assert_eq!(p.eval_bool(&none), Ok(true));
    let some = Vars::new()
        .json("self", &json!(1))
        .optional_json("oldSelf", Some(&json!(2)));
    assert_eq!(p.eval_bool(&some), Ok(false));
    assert!(
        !Program::compile("self > 1", &env)
            .unwrap()
            .uses_variable("oldSelf")
    );
}

#[test]
fn kubernetes_list_library() {
    let v = json!({"a": [1, 2, 3], "b": [3, 1], "s": ["x", "y", "x"], "d": [1.5, 2.5]});
    assert_eq!(eval("self.a.isSorted()", v.clone()), Ok(json!(true)));
    assert_eq!(eval("self.b.isSorted()", v.clone()), Ok(json!(false)));
    assert_eq!(eval("self.a.sum()", v.clone()), Ok(json!(6)));
    assert_eq!(eval("self.d.sum()", v.clone()), Ok(json!(4.0)));
    assert_eq!(eval("self.b.min()", v.clone()), Ok(json!(1)));
    assert_eq!(eval("self.b.max()", v.clone()), Ok(json!(3)));
    assert_eq!(eval("self.s.indexOf('x')", v.clone()), Ok(json!(0)));
    assert_eq!(eval("self.s.lastIndexOf('x')", v.clone()), Ok(json!(2)));
    assert_eq!(eval("self.s.indexOf('z')", v.clone()), Ok(json!(-1)));
    assert_eq!(eval("[].sum()", v.clone()), Ok(json!(0)));
    assert!(eval("[].min()", v.clone()).is_err());
    assert_eq!(eval("math.greatest(1, 5)", v), Ok(json!(5)));
}

#[test]
fn kubernetes_string_and_regex_library() {
    let v = json!("Hello World, hello");
    assert_eq!(
        eval("self.lowerAscii()", v.clone()),
        Ok(json!("hello world, hello"))
    );
    assert_eq!(
        eval("self.upperAscii()", v.clone()),
        Ok(json!("HELLO WORLD, HELLO"))
    );
    assert_eq!(
        eval("self.split(', ')", v.clone()),
        Ok(json!(["Hello World", "hello"]))
    );
    assert_eq!(eval("['a','b'].join('-')", v.clone()), Ok(json!("a-b")));
    assert_eq!(eval("'  x '.trim()", v.clone()), Ok(json!("x")));
    assert_eq!(
        eval("self.replace('hello', 'bye')", v.clone()),
        Ok(json!("Hello World, bye"))
    );
    assert_eq!(eval("self.indexOf('World')", v.clone()), Ok(json!(6)));
    assert_eq!(eval("self.substring(0, 5)", v.clone()), Ok(json!("Hello")));
    assert_eq!(eval("self.matches('^H.*o$')", v.clone()), Ok(json!(true)));
    assert_eq!(eval("self.find('[a-z]+')", v.clone()), Ok(json!("ello")));
    assert_eq!(
        eval("self.findAll('[hH]ello')", v.clone()),
        Ok(json!(["Hello", "hello"]))
    );
    assert_eq!(
        eval("self.findAll('l', 2)", v.clone()),
        Ok(json!(["l", "l"]))
    );
    assert!(eval("self.find('(')", v).is_err());
}

#[test]
fn kubernetes_quantity_library() {
    let v = json!({"mem": "1Gi", "cpu": "500m"});
    assert_eq!(
        eval(
            "quantity(self.mem).isGreaterThan(quantity('1000Mi'))",
            v.clone()
        ),
        Ok(json!(true))
    );
    assert_eq!(
        eval("quantity(self.cpu).isLessThan(quantity('1'))", v.clone()),
        Ok(json!(true))
    );
    assert_eq!(
        eval(
            "quantity(self.mem).compareTo(quantity('1024Mi'))",
            v.clone()
        ),
        Ok(json!(0))
    );
    assert_eq!(
        eval("quantity(self.mem) == quantity('1073741824')", v.clone()),
        Ok(json!(true))
    );
    assert_eq!(
        eval("quantity(self.mem).asInteger()", v.clone()),
        Ok(json!(1073741824))
    );
    assert_eq!(
        eval("quantity(self.cpu).isInteger()", v.clone()),
        Ok(json!(false))
    );
    assert_eq!(
        eval("quantity(self.cpu).asApproximateFloat()", v.clone()),
        Ok(json!(0.5))
    );
    assert_eq!(
        eval(
            "quantity(self.cpu).add(quantity('500m')).asInteger()",
            v.clone()
        ),
        Ok(json!(1))
    );
    assert_eq!(
        eval("quantity(self.cpu).sub(1).sign()", v.clone()),
        Ok(json!(-1))
    );
    assert_eq!(
        eval("isQuantity(self.mem) && !isQuantity('1Q')", v.clone()),
        Ok(json!(true))
    );
    assert!(eval("quantity('nope')", v.clone()).is_err());
    assert_eq!(eval("quantity(self.cpu)", v.clone()), Ok(json!("500m")));
    assert!(eval("quantity(self.cpu).asInteger()", v).is_err());
}

#[test]
fn kubernetes_url_library() {
    let v = json!("https://user@example.com:8443/a%20b/c?x=1&x=2&y=z+w#frag");
    assert_eq!(eval("url(self).getScheme()", v.clone()), Ok(json!("https")));
    assert_eq!(
        eval("url(self).getHost()", v.clone()),
        Ok(json!("example.com:8443"))
    );
    assert_eq!(
        eval("url(self).getHostname()", v.clone()),
        Ok(json!("example.com"))
    );
    assert_eq!(eval("url(self).getPort()", v.clone()), Ok(json!("8443")));
    assert_eq!(
        eval("url(self).getEscapedPath()", v.clone()),
        Ok(json!("/a%20b/c"))
    );
    assert_eq!(
        eval("url(self).getQuery()", v.clone()),
        Ok(json!({"x": ["1", "2"], "y": ["z w"]}))
    );
    assert_eq!(
        eval("url('https://[::1]:80/').getHostname()", v.clone()),
        Ok(json!("::1"))
    );
    assert_eq!(
        eval("url('/just/a/path').getHost()", v.clone()),
        Ok(json!(""))
    );
    assert_eq!(
        eval(
            "isURL(self) && !isURL('not a url') && !isURL('mailto:x')",
            v.clone()
        ),
        Ok(json!(true))
    );
    assert!(eval("url('::')", v).is_err());
}

#[test]
fn static_cost_refuses_unbounded_nested_loops_in_upstream_words() {
    let ty = Ty::list(Ty::string());
    let env = Env::crd_rule(ty);
    let err = Program::compile("self.all(x, self.all(y, x != y))", &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    );
    // Bounded, the same rule is cheap enough.
    let bounded = Ty::List {
        items: Box::new(Ty::String {
            max_length: Some(64),
        }),
        max_items: Some(100),
    };
    let p = Program::compile("self.all(x, self.all(y, x != y))", &Env::crd_rule(bounded)).unwrap();
    assert!(p.estimated_cost() > 10_000, "{}", p.estimated_cost());
    assert!(p.estimated_cost() < STATIC_ESTIMATED_COST_LIMIT);
}

#[test]
fn cost_message_factor_formats() {
    assert!(cost_error_message("estimated rule cost", 12, 10).contains("factor of 1.200000x"));
    assert!(cost_error_message("estimated rule cost", 181, 10).contains("factor of 18.1x"));
}

#[test]
fn runtime_cost_limit_cancels() {
    let env = Env::crd_rule(Ty::Dyn)
        .with_cost_budget(None)
        .with_runtime_limit(10_000);
    let p = Program::compile(
        "self.all(x, self.all(y, self.all(z, x + y + z >= 0)))",
        &env,
    )
    .unwrap();
    let big: Vec<i64> = (0..100).collect();
    let err = p
        .eval_bool(&Vars::new().json("self", &json!(big)))
        .unwrap_err();
    assert_eq!(err, CelError::CostLimit);
    assert_eq!(
        err.to_string(),
        "operation cancelled: actual cost limit exceeded"
    );
    // map/filter charge too.
    let p = Program::compile("self.map(x, self.filter(y, y > x)).size() > 0", &env).unwrap();
    assert_eq!(
        p.eval_bool(&Vars::new().json("self", &json!(big))),
        Err(CelError::CostLimit)
    );
    // Small input is within the limit, and the charge is counted.
    let (r, cost) = p.eval_cel_with_cost(&Vars::new().json("self", &json!([1, 2, 3])));
    assert_eq!(r, Ok(CelValue::Bool(true)));
    assert!(cost > 3, "{cost}");
}

#[test]
fn evaluation_errors_in_upstream_words() {
    assert_eq!(
        eval("self.missing == 1", json!({})),
        Err(CelError::Eval("no such key: missing".into()))
    );
    assert_eq!(
        eval("1 / (self - self) == 1", json!(1)),
        Err(CelError::Eval("division by zero".into()))
    );
    let p = Program::compile("self.a", &crd_env()).unwrap();
    assert!(matches!(
        p.eval_bool(&Vars::new().json("self", &json!({"a": 1}))),
        Err(CelError::Type(_))
    ));
}

#[test]
fn reserved_and_odd_property_names_are_escaped() {
    assert_eq!(
        escape_property("namespace").as_deref(),
        Some("__namespace__")
    );
    assert_eq!(
        escape_property("a-b.c/d__e").as_deref(),
        Some("a__dash__b__dot__c__slash__d__underscores__e")
    );
    assert_eq!(escape_property("1a"), None);
    for n in ["namespace", "a-b.c/d__e", "plain", "x__y"] {
        assert_eq!(unescape_property(&escape_property(n).unwrap()), n);
    }
    let ty = Ty::object([
        ("namespace".to_string(), Ty::string()),
        ("x-y".to_string(), Ty::Int),
    ]);
    let p = Program::compile(
        "self.__namespace__ == 'a' && self.x__dash__y == 1",
        &Env::crd_rule(ty),
    )
    .unwrap();
    assert_eq!(
        p.eval_bool(&Vars::new().json("self", &json!({"namespace": "a", "x-y": 1}))),
        Ok(true)
    );
}

#[test]
fn doubles_declared_get_doubles() {
    let env = Env::crd_rule(Ty::object([("d".to_string(), Ty::Double)]));
    let p = Program::compile("self.d == 2.0", &env).unwrap();
    assert_eq!(
        p.eval_bool(&Vars::new().json("self", &json!({"d": 2}))),
        Ok(true)
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("self".to_string()),
            Just("oldSelf".to_string()),
            Just("1".to_string()),
            Just("'a'".to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
            Just("[1, 2]".to_string()),
            Just("{'k': 1}".to_string()),
            Just("2.5".to_string()),
            "[a-z]{1,3}".prop_map(|s| s),
        ];
        leaf.prop_recursive(4, 32, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} + {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} == {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} / {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}]")),
                inner.clone().prop_map(|a| format!("{a}.all(x, x == {a})")),
                inner.clone().prop_map(|a| format!("{a}.map(x, x)")),
                inner.clone().prop_map(|a| format!("size({a})")),
                inner.clone().prop_map(|a| format!("{a}.min()")),
                inner.clone().prop_map(|a| format!("{a}.sum()")),
                inner.clone().prop_map(|a| format!("{a}.isSorted()")),
                inner.clone().prop_map(|a| format!("{a}.split('a')")),
                inner.clone().prop_map(|a| format!("{a}.findAll('[a-')")),
                inner.clone().prop_map(|a| format!("has({a}.x)")),
                inner.clone().prop_map(|a| format!("int({a})")),
                inner
                    .clone()
                    .prop_map(|a| format!("quantity({a}).add({a})")),
                inner.clone().prop_map(|a| format!("isQuantity({a})")),
                inner.clone().prop_map(|a| format!("url({a}).getQuery()")),
                inner.clone().prop_map(|a| format!("({a}")),
                inner.prop_map(|a| format!("!{a}")),
            ]
        })
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z]{0,4}".prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,2}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn never_panics(e in expr(), v in json_value(), old in json_value(), junk in "\\PC{0,20}") {
            let env = Env::crd_rule(Ty::Dyn);
            for src in [e.clone(), junk.clone(), format!("{e}{junk}")] {
                if let Ok(p) = Program::compile(&src, &env) {
                    let _ = p.eval_value(&Vars::new().json("self", &v).json("oldSelf", &old));
                    let _ = p.eval_bool(&Vars::new().json("self", &v).optional_json("oldSelf", None));
                }
            }
        }
    }
}

#[test]
fn deep_expressions_are_errors_not_crashes() {
    let env = crd_env();
    // The test thread has a 2 MiB stack, as tokio's workers.
    for n in [50usize, 150, 199, 200, 201, 1000, 5000, 30000] {
        for src in [
            format!("{}true", "!".repeat(n)),
            format!("{}1", "-".repeat(n)),
            format!("{}1{}", "[".repeat(n), "]".repeat(n)),
            format!("{}1{}", "(".repeat(n), ")".repeat(n)),
            format!("self{}", ".a".repeat(n)),
            format!("1{}", " + 1".repeat(n)),
            format!("true{}", " && true".repeat(n)),
            "self.all(x, ".repeat(n.min(300)) + "true" + &")".repeat(n.min(300)),
            "[1].map(x, ".repeat(n.min(300)) + "x" + &")".repeat(n.min(300)),
        ] {
            match Program::compile(&src, &env) {
                Ok(p) => {
                    let _ = p.eval_value(&Vars::new().json("self", &json!({"a": 1})));
                }
                Err(e) => assert!(
                    e.to_string()
                        .starts_with("compilation failed: ERROR: <input>:"),
                    "{e}"
                ),
            }
        }
    }
}

#[test]
fn too_long_and_too_deep_are_refused() {
    let long = "1 + ".repeat(30_000) + "1";
    let e = Program::compile(&long, &crd_env()).unwrap_err().to_string();
    assert!(
        e.contains("expression code point size exceeds limit: size: 120001, limit 100000"),
        "{e}"
    );
    let deep = format!("self{}", ".a".repeat(500));
    let e = Program::compile(&deep, &crd_env()).unwrap_err().to_string();
    assert!(
        e.contains("expression nesting depth 501 exceeds limit 200"),
        "{e}"
    );
}

/// Programs are compiled once and shared by the apiserver's tasks.
#[test]
fn programs_are_send_and_sync() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Program>();
    shared::<Env>();
    shared::<CelError>();
}
