use std::collections::BTreeMap;

use super::*;

fn fixture(file: &str) -> Vec<Value> {
    let path = format!(
        "{}/testdata/bootstrappolicy/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let list: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    list["items"].as_array().cloned().unwrap_or_default()
}

/// What the 1.35 policy has beyond the fixtures (which predate it; see the
/// testdata README). Each entry is applied to the fixture before the
/// comparison, so anything else that differs fails the test.
fn expected_additions(file: &str, items: &mut Vec<Value>) {
    let find = |items: &mut Vec<Value>, name: &str| -> usize {
        items
            .iter()
            .position(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{file}: no {name}"))
    };
    match file {
        "cluster-roles.yaml" => {
            // KubeletServiceAccountTokenForCredentialProviders (beta, on by
            // default since 1.34): a kubelet reads the pod's
            // ServiceAccount to hand its token to a credential provider.
            let i = find(items, "system:node");
            items[i]["rules"].as_array_mut().unwrap().push(
                json!({"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}),
            );
        }
        "controller-roles.yaml" | "controller-role-bindings.yaml" => {
            // MultiCIDRServiceAllocator went GA (locked on) in 1.33, so the
            // ServiceCIDR controller's role and binding always exist.
            let mine = if file == "controller-roles.yaml" {
                controller_roles()
            } else {
                controller_role_bindings()
            };
            let name = "system:controller:service-cidrs-controller";
            let obj = mine
                .into_iter()
                .find(|o| o["metadata"]["name"] == name)
                .expect("ours has it");
            let at = find(items, "system:controller:service-controller");
            items.insert(at, obj);
        }
        _ => {}
    }
}

fn sorted_strings(v: &Value) -> Value {
    let mut s: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    s.sort();
    json!(s)
}

/// The parts the comparison is about, in one shape whatever the source:
/// lists within a rule sorted, empty fields and server-set metadata dropped.
fn normalize(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let mut out = json!({
        "kind": obj["kind"],
        "name": meta["name"],
        "namespace": meta["namespace"].as_str().unwrap_or(""),
        "labels": meta["labels"].as_object().cloned().unwrap_or_default(),
        "annotations": meta["annotations"].as_object().cloned().unwrap_or_default(),
    });
    let rules: Vec<Value> = obj["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut n = Map::new();
            for k in [
                "verbs",
                "apiGroups",
                "resources",
                "resourceNames",
                "nonResourceURLs",
            ] {
                let s = sorted_strings(&r[k]);
                if s.as_array().is_some_and(|a| !a.is_empty()) {
                    n.insert(k.into(), s);
                }
            }
            Value::Object(n)
        })
        .collect();
    if obj["kind"].as_str().is_some_and(|k| k.ends_with("Role")) {
        out["rules"] = json!(rules);
    }
    if !obj["aggregationRule"].is_null() {
        out["aggregationRule"] = obj["aggregationRule"].clone();
    }
    if !obj["roleRef"].is_null() {
        out["roleRef"] = obj["roleRef"].clone();
        out["subjects"] = json!(obj["subjects"].as_array().cloned().unwrap_or_default());
    }
    out
}

fn compare(file: &str, ours: Vec<Value>) {
    let mut upstream = fixture(file);
    expected_additions(file, &mut upstream);
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let theirs: BTreeMap<String, Value> = upstream.iter().map(|o| (key(o), normalize(o))).collect();
    let mine: BTreeMap<String, Value> = ours.iter().map(|o| (key(o), normalize(o))).collect();
    let only_theirs: Vec<&String> = theirs.keys().filter(|k| !mine.contains_key(*k)).collect();
    let only_mine: Vec<&String> = mine.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        only_theirs.is_empty() && only_mine.is_empty(),
        "{file}: missing {only_theirs:?}, not upstream's {only_mine:?}"
    );
    for (k, t) in &theirs {
        let m = &mine[k];
        if t != m {
            panic!(
                "{file}: {k} differs\n upstream: {}\n ours:     {}",
                serde_json::to_string(t).unwrap(),
                serde_json::to_string(m).unwrap()
            );
        }
    }
    assert_eq!(upstream.len(), ours.len(), "{file}: duplicates");
}

#[test]
fn fixture_cluster_roles() {
    compare("cluster-roles.yaml", cluster_roles());
}

#[test]
fn fixture_cluster_role_bindings() {
    compare("cluster-role-bindings.yaml", cluster_role_bindings());
}

#[test]
fn fixture_controller_roles() {
    compare("controller-roles.yaml", controller_roles());
}

#[test]
fn fixture_controller_role_bindings() {
    compare("controller-role-bindings.yaml", controller_role_bindings());
}

#[test]
fn fixture_namespace_roles() {
    compare("namespace-roles.yaml", namespace_roles());
}

#[test]
fn fixture_namespace_role_bindings() {
    compare("namespace-role-bindings.yaml", namespace_role_bindings());
}

#[test]
fn every_bootstrap_object_passes_validation() {
    for (plural, mut obj) in all() {
        let rt = registry::find(GROUP, "v1", plural).unwrap();
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        objects::check_type(rt, &mut obj).unwrap();
        objects::prepare_create(rt, &mut obj, ns.as_deref()).unwrap();
        if let Err(e) = objects::validate(rt, &obj) {
            panic!("{}: {}", objects::name_of(&obj), e.message);
        }
        (rt.schema)(&obj).unwrap();
    }
}

fn view_role() -> Value {
    cluster_roles()
        .into_iter()
        .find(|r| r["metadata"]["name"] == "system:aggregate-to-view")
        .unwrap()
}

#[test]
fn a_missing_rule_is_added_in_parts() {
    let expected = view_role();
    let mut existing = expected.clone();
    // An admin took `watch` away from the first rule.
    existing["rules"][0]["verbs"] = json!(["get", "list"]);
    let Reconciled::Update(out) = reconcile_role(&expected, &existing) else {
        panic!("no update");
    };
    let rules = out["rules"].as_array().unwrap();
    assert_eq!(
        rules.len(),
        expected["rules"].as_array().unwrap().len() + 10
    );
    assert_eq!(
        rules.last().unwrap(),
        &json!({"apiGroups": [""], "resources": ["services/status"], "verbs": ["watch"]})
    );
    assert_eq!(reconcile_role(&expected, &out), Reconciled::Keep);
}

#[test]
fn extra_rules_labels_and_selectors_stay() {
    let expected = view_role();
    let mut existing = expected.clone();
    existing["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}));
    existing["metadata"]["labels"]["team"] = json!("a");
    assert_eq!(reconcile_role(&expected, &existing), Reconciled::Keep);
    // A lost label comes back, and the admin's own rule stays.
    existing["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("rbac.authorization.k8s.io/aggregate-to-view");
    let Reconciled::Update(out) = reconcile_role(&expected, &existing) else {
        panic!("no update");
    };
    assert_eq!(
        out["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert_eq!(out["metadata"]["labels"]["team"], "a");
    assert_eq!(out["rules"], existing["rules"]);

    let admin = cluster_roles().remove(0);
    let mut existing = admin.clone();
    existing["aggregationRule"]["clusterRoleSelectors"] =
        json!([{"matchLabels": {"example.com/aggregate-to-admin": "true"}}]);
    let Reconciled::Update(out) = reconcile_role(&admin, &existing) else {
        panic!("no update");
    };
    assert_eq!(
        out["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn autoupdate_false_is_left_alone() {
    let expected = view_role();
    let mut existing = json!({"metadata": {"name": "system:aggregate-to-view",
        "annotations": {AUTOUPDATE: "false"}}, "rules": []});
    assert_eq!(reconcile_role(&expected, &existing), Reconciled::Keep);
    existing["metadata"]["annotations"][AUTOUPDATE] = json!("true");
    assert!(matches!(
        reconcile_role(&expected, &existing),
        Reconciled::Update(_)
    ));
    let binding = cluster_role_bindings().remove(0);
    let mut mine = binding.clone();
    mine["subjects"] = json!([]);
    mine["metadata"]["annotations"][AUTOUPDATE] = json!("false");
    assert_eq!(reconcile_binding(&binding, &mine), Reconciled::Keep);
}

#[test]
fn bindings_gain_subjects_and_are_recreated_for_another_role() {
    let expected = cluster_role_bindings()
        .into_iter()
        .find(|b| b["metadata"]["name"] == "system:public-info-viewer")
        .unwrap();
    let mut existing = expected.clone();
    existing["subjects"] = json!([{"apiGroup": GROUP, "kind": "User", "name": "carol"},
        {"apiGroup": GROUP, "kind": "Group", "name": "system:authenticated"}]);
    let Reconciled::Update(out) = reconcile_binding(&expected, &existing) else {
        panic!("no update");
    };
    let names: Vec<&str> = out["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["carol", "system:authenticated", "system:unauthenticated"]
    );
    assert_eq!(reconcile_binding(&expected, &out), Reconciled::Keep);
    existing["roleRef"]["name"] = json!("view");
    assert_eq!(
        reconcile_binding(&expected, &existing),
        Reconciled::Recreate
    );
}

#[test]
fn coverage_follows_wildcards() {
    let all = [rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])];
    for (_, obj) in super::all() {
        let wanted = obj["rules"].as_array().cloned().unwrap_or_default();
        assert!(missing_rules(&all, &wanted).is_empty());
    }
    let scale = [rule(&["get"], &["*"], &["*/scale"])];
    assert!(missing_rules(&scale, &[rule(&["get"], &["apps"], &["deployments/scale"])]).is_empty());
    assert_eq!(
        missing_rules(
            &scale,
            &[rule(&["get", "update"], &["apps"], &["deployments/scale"])]
        ),
        vec![
            json!({"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]})
        ]
    );
    let healthz = [urls(&["get"], &["/healthz*"])];
    assert!(missing_rules(&healthz, &[urls(&["get"], &["/healthz/etcd"])]).is_empty());
    let named_only = [named(&["get"], &[""], &["configmaps"], &["a"])];
    assert_eq!(
        missing_rules(&named_only, &[rule(&["get"], &[""], &["configmaps"])]).len(),
        1
    );
}
