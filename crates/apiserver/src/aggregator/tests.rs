use std::sync::Arc;

use serde_json::{Value, json};

use super::available::{Outcome, service_checks, updated_conditions};
use super::forward::{ready_addresses, service_port_name, set_identity_headers};
use super::*;
use crate::request::Query;

fn apiservice(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name}, "spec": spec})
}

fn causes_of(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_apiservice(obj, &mut causes);
    causes
}

fn remote_spec() -> Value {
    json!({"group": "test.rke2.io", "version": "v1", "groupPriorityMinimum": 1000,
        "versionPriority": 15, "service": {"namespace": "ext", "name": "api", "port": 443}})
}

#[test]
fn a_valid_remote_apiservice_passes() {
    assert!(causes_of(&apiservice("v1.test.rke2.io", remote_spec())).is_empty());
}

#[test]
fn the_name_must_be_version_dot_group() {
    let causes = causes_of(&apiservice("v2.test.rke2.io", remote_spec()));
    assert_eq!(
        causes,
        vec![(
            "metadata.name".to_string(),
            "Invalid value".to_string(),
            "\"v2.test.rke2.io\": must be `spec.version+\".\"+spec.group`: \"v1.test.rke2.io\""
                .to_string()
        )]
    );
}

#[test]
fn priorities_group_version_and_service_are_checked_as_upstream() {
    let mut spec = remote_spec();
    spec["groupPriorityMinimum"] = json!(0);
    spec["versionPriority"] = json!(1001);
    spec["service"] = json!({"port": 443});
    let causes = causes_of(&apiservice("v1.test.rke2.io", spec));
    let fields: Vec<&str> = causes.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.groupPriorityMinimum",
            "spec.versionPriority",
            "spec.service.namespace",
            "spec.service.name"
        ]
    );
    assert_eq!(causes[0].2, "0: must be positive and less than 20000");
    assert_eq!(causes[1].2, "1001: must be positive and less than 1000");

    let mut spec = remote_spec();
    spec["group"] = json!("Not_A_Group");
    spec["version"] = json!("1v");
    let causes = causes_of(&apiservice("1v.Not_A_Group", spec));
    assert_eq!(causes[0].0, "spec.group");
    assert_eq!(causes[1].0, "spec.version");

    // Only the legacy group may be empty, and only as v1.
    let mut spec = remote_spec();
    spec["group"] = json!("");
    spec["version"] = json!("v2");
    let causes = causes_of(&apiservice("v2.", spec));
    assert_eq!(causes[0].0, "spec.group");
    assert_eq!(
        causes[0].2,
        "only v1 may have an empty group and it better be legacy kube"
    );
}

#[test]
fn ca_bundle_and_insecure_exclude_each_other_and_local_may_have_neither() {
    let mut spec = remote_spec();
    spec["caBundle"] = json!("LS0tLS0=");
    spec["insecureSkipTLSVerify"] = json!(true);
    let causes = causes_of(&apiservice("v1.test.rke2.io", spec));
    assert_eq!(
        causes,
        vec![(
            "spec.insecureSkipTLSVerify".to_string(),
            "Invalid value".to_string(),
            "true: may not be true if caBundle is present".to_string()
        )]
    );

    let mut spec = remote_spec();
    spec["service"] = Value::Null;
    spec["caBundle"] = json!("LS0tLS0=");
    spec["insecureSkipTLSVerify"] = json!(true);
    let causes = causes_of(&apiservice("v1.test.rke2.io", spec));
    assert_eq!(causes[0].0, "spec.caBundle");
    assert_eq!(
        causes[0].2,
        "\"5 bytes\": local APIServices may not have a caBundle"
    );
    assert_eq!(
        causes[1].2,
        "true: local APIServices may not have insecureSkipTLSVerify"
    );
}

#[test]
fn the_service_port_defaults_to_443() {
    let mut obj = apiservice("v1.test.rke2.io", remote_spec());
    obj["spec"]["service"]
        .as_object_mut()
        .unwrap()
        .remove("port");
    ApiServiceStrategy.defaults(apiservices(), &mut obj);
    assert_eq!(ServiceRef::of(&obj).unwrap().port, 443);
    // A local one gets no service.
    let mut local = local_apiservice("apps", "v1").unwrap();
    ApiServiceStrategy.defaults(apiservices(), &mut local);
    assert!(local["spec"]["service"].is_null());
}

#[test]
fn local_apiservices_are_named_and_filled_as_autoregister_does() {
    let core = local_apiservice("", "v1").unwrap();
    assert_eq!(core["metadata"]["name"], "v1.");
    assert_eq!(core["spec"]["groupPriorityMinimum"], 18000);
    assert_eq!(core["spec"]["versionPriority"], 1);
    assert!(core["spec"]["service"].is_null());
    assert_eq!(
        core["metadata"]["labels"][AUTOMANAGED_LABEL],
        json!("onstart")
    );
    assert!(causes_of(&core).is_empty());
    let apps = local_apiservice("apps", "v1").unwrap();
    assert_eq!(apps["metadata"]["name"], "v1.apps");
    assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800);
    assert_eq!(table_cells(&apps), ("Local".into(), "True".into()));
    // Every group/version served here has one.
    for (g, v) in local_group_versions() {
        let a = local_apiservice(&g, &v).unwrap_or_else(|| panic!("no APIService for {g}/{v}"));
        assert!(causes_of(&a).is_empty(), "{g}/{v}");
        assert!(
            is_local(&crate::registry::Registry::new(), &g, &v),
            "{g}/{v}"
        );
    }
    assert!(!is_local(
        &crate::registry::Registry::new(),
        "test.rke2.io",
        "v1"
    ));
}

#[test]
fn the_available_column_shows_the_reason_unless_true() {
    let mut a = apiservice("v1.test.rke2.io", remote_spec());
    assert_eq!(table_cells(&a), ("ext/api".into(), "Unknown".into()));
    a["status"]["conditions"] =
        json!([{"type": "Available", "status": "False", "reason": "MissingEndpoints"}]);
    assert_eq!(table_cells(&a).1, "False (MissingEndpoints)");
    a["status"]["conditions"] =
        json!([{"type": "Available", "status": "True", "reason": "Passed"}]);
    assert_eq!(table_cells(&a).1, "True");
    assert!(is_available(&a));
}

#[test]
fn the_authentication_configmap_carries_json_lists() {
    let cfg = AggregatorConfig {
        proxy_cert_pem: String::new(),
        proxy_key_pem: String::new(),
        client_ca_pem: "CLIENT".into(),
        request_header_ca_pem: "RH".into(),
        discovered: Default::default(),
    };
    let d = authentication_configmap_data(&cfg);
    assert_eq!(d["client-ca-file"], "CLIENT");
    assert_eq!(d["requestheader-client-ca-file"], "RH");
    assert_eq!(d["requestheader-allowed-names"], "[\"system:auth-proxy\"]");
    assert_eq!(d["requestheader-username-headers"], "[\"X-Remote-User\"]");
    assert_eq!(d["requestheader-group-headers"], "[\"X-Remote-Group\"]");
    assert_eq!(
        d["requestheader-extra-headers-prefix"],
        "[\"X-Remote-Extra-\"]"
    );
    assert!(!format!("{cfg:?}").contains("RH"));
}

#[test]
fn request_info_follows_upstream() {
    let q = |s: &str| Query::parse(Some(s));
    let get = http::Method::GET;
    let info = request_info(&get, "test.rke2.io", &[], &q(""));
    assert!(!info.resource_request);
    assert_eq!(info.verb, "get");
    let info = request_info(&get, "g", &["namespaces", "ns", "widgets"], &q(""));
    assert_eq!(
        (
            info.verb.as_str(),
            info.namespace.as_str(),
            info.resource.as_str()
        ),
        ("list", "ns", "widgets")
    );
    let info = request_info(
        &get,
        "g",
        &["namespaces", "ns", "widgets", "w", "status"],
        &q(""),
    );
    assert_eq!(
        (
            info.verb.as_str(),
            info.name.as_str(),
            info.subresource.as_str()
        ),
        ("get", "w", "status")
    );
    let info = request_info(&get, "g", &["widgets"], &q("watch=true"));
    assert_eq!(info.verb, "watch");
    let info = request_info(&get, "g", &["watch", "widgets"], &q(""));
    assert_eq!(
        (info.verb.as_str(), info.resource.as_str()),
        ("watch", "widgets")
    );
    let info = request_info(&http::Method::DELETE, "g", &["widgets"], &q(""));
    assert_eq!(info.verb, "deletecollection");
    let info = request_info(
        &http::Method::POST,
        "g",
        &["namespaces", "ns", "widgets"],
        &q(""),
    );
    assert_eq!(info.verb, "create");
    // A namespace itself.
    let info = request_info(&get, "g", &["namespaces", "ns"], &q(""));
    assert_eq!(
        (
            info.resource.as_str(),
            info.name.as_str(),
            info.namespace.as_str()
        ),
        ("namespaces", "ns", "ns")
    );
}

#[test]
fn forbidden_messages_are_upstreams() {
    let q = Query::default();
    let info = request_info(
        &http::Method::GET,
        "test.rke2.io",
        &["namespaces", "a", "widgets"],
        &q,
    );
    assert_eq!(
        forbidden("bob", &info, "/x").message,
        "widgets.test.rke2.io is forbidden: User \"bob\" cannot list resource \"widgets\" in API group \"test.rke2.io\" in the namespace \"a\""
    );
    let info = request_info(&http::Method::GET, "test.rke2.io", &["widgets", "w"], &q);
    assert_eq!(
        forbidden("bob", &info, "/x").message,
        "widgets.test.rke2.io \"w\" is forbidden: User \"bob\" cannot get resource \"widgets\" in API group \"test.rke2.io\" at the cluster scope"
    );
    let info = request_info(&http::Method::GET, "test.rke2.io", &[], &q);
    assert_eq!(
        forbidden("bob", &info, "/apis/test.rke2.io/v1").message,
        "forbidden: User \"bob\" cannot get path \"/apis/test.rke2.io/v1\""
    );
}

#[test]
fn remote_groups_are_listed_by_priority_with_the_preferred_version_first() {
    let mk = |v: &str, vp: i64, g: &str, gp: i64| {
        let mut spec = remote_spec();
        spec["group"] = json!(g);
        spec["version"] = json!(v);
        spec["versionPriority"] = json!(vp);
        spec["groupPriorityMinimum"] = json!(gp);
        Arc::new(apiservice(&format!("{v}.{g}"), spec))
    };
    let mut all = vec![
        mk("v1alpha1", 5, "b.io", 100),
        mk("v1", 20, "b.io", 100),
        mk("v1", 10, "a.io", 50),
        // A local group/version is never listed as remote.
        mk("v1", 15, "apps", 17800),
    ];
    sort_for_discovery(&mut all);
    let groups = remote_groups(&crate::registry::Registry::new(), &all);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["name"], "b.io");
    assert_eq!(groups[0]["preferredVersion"]["version"], "v1");
    assert_eq!(groups[0]["versions"][1]["groupVersion"], "b.io/v1alpha1");
    assert_eq!(groups[1]["name"], "a.io");
}

fn slice(service: &str, port_name: &str, port: u16, endpoints: Value) -> Arc<Value> {
    Arc::new(json!({
        "metadata": {"name": format!("{service}-x"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

#[test]
fn endpoints_resolve_through_the_service_port_name() {
    let svc = json!({"spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}});
    assert_eq!(service_port_name(&svc, 443).as_deref(), Some("https"));
    assert_eq!(service_port_name(&svc, 80), None);
    let slices = vec![
        slice(
            "api",
            "https",
            8443,
            json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                   {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                   {"addresses": ["10.0.0.3"]}]),
        ),
        slice("api", "other", 9000, json!([{"addresses": ["10.0.0.4"]}])),
    ];
    let got: Vec<String> = ready_addresses(&slices, "https")
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(got, vec!["10.0.0.1:8443", "10.0.0.3:8443"]);
}

#[test]
fn service_checks_give_upstreams_reasons() {
    let svc = ServiceRef {
        namespace: "ext".into(),
        name: "api".into(),
        port: 443,
    };
    let reason = |r: Result<Option<String>, Outcome>| r.err().map(|o| (o.reason, o.message));
    assert_eq!(
        reason(service_checks(&svc, None, &[])),
        Some((
            "ServiceNotFound",
            "service/api in \"ext\" is not present".to_string()
        ))
    );
    let service = json!({"spec": {"type": "ClusterIP", "ports": [{"name": "", "port": 443}]}});
    assert_eq!(
        reason(service_checks(&svc, Some(&service), &[])),
        Some((
            "EndpointsNotFound",
            "cannot find endpointslices for service/api in \"ext\"".to_string()
        ))
    );
    let empty = vec![slice("api", "", 8443, json!([]))];
    assert_eq!(
        reason(service_checks(&svc, Some(&service), &empty)),
        Some((
            "MissingEndpoints",
            "endpointslices for service/api in \"ext\" have no addresses with port name \"\""
                .to_string()
        ))
    );
    let ready = vec![slice("api", "", 8443, json!([{"addresses": ["10.0.0.1"]}]))];
    assert_eq!(
        service_checks(&svc, Some(&service), &ready),
        Ok(Some(String::new()))
    );
    let other_port = ServiceRef { port: 80, ..svc };
    assert_eq!(
        reason(service_checks(&other_port, Some(&service), &ready)).map(|r| r.0),
        Some("ServicePortError")
    );
}

#[test]
fn conditions_change_their_transition_time_only_with_the_status() {
    let mut a = apiservice("v1.test.rke2.io", remote_spec());
    let passed = Outcome {
        status: "True",
        reason: "Passed",
        message: "all checks passed".into(),
    };
    let c = updated_conditions(&a, &passed, "t1").unwrap();
    assert_eq!(c[0]["lastTransitionTime"], "t1");
    a["status"]["conditions"] = c;
    assert!(updated_conditions(&a, &passed, "t2").is_none());
    let missing = Outcome {
        status: "False",
        reason: "MissingEndpoints",
        message: "m".into(),
    };
    let c = updated_conditions(&a, &missing, "t3").unwrap();
    assert_eq!(c[0]["lastTransitionTime"], "t3");
    a["status"]["conditions"] = c;
    let not_found = Outcome {
        status: "False",
        reason: "ServiceNotFound",
        message: "n".into(),
    };
    let c = updated_conditions(&a, &not_found, "t4").unwrap();
    assert_eq!(c[0]["lastTransitionTime"], "t3");
    assert_eq!(c[0]["reason"], "ServiceNotFound");
}

#[test]
fn identity_headers_replace_forged_ones() {
    let mut h = http::HeaderMap::new();
    h.insert("x-remote-user", "mallory".parse().unwrap());
    h.insert("x-remote-extra-scope", "x".parse().unwrap());
    set_identity_headers(
        &mut h,
        "alice",
        &["devs".into(), "system:authenticated".into()],
    );
    assert_eq!(h.get("x-remote-user").unwrap(), "alice");
    let groups: Vec<&str> = h
        .get_all("x-remote-group")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(groups, vec!["devs", "system:authenticated"]);
    assert!(h.get("x-remote-extra-scope").is_none());
}

#[test]
fn the_discovery_check_path_is_the_group_version() {
    let a = apiservice("v1.test.rke2.io", remote_spec());
    assert_eq!(available::discovery_path(&a), "/apis/test.rke2.io/v1");
    let mut spec = remote_spec();
    spec["group"] = json!("");
    assert_eq!(
        available::discovery_path(&apiservice("v1.", spec)),
        "/api/v1"
    );
}

#[test]
fn aggregated_discovery_converts_the_legacy_list_and_marks_unavailable_stale() {
    let list = json!({"kind": "APIResourceList", "groupVersion": "test.rke2.io/v1", "resources": [
        {"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget",
         "verbs": ["get", "list"], "shortNames": ["wd"]},
        {"name": "widgets/status", "singularName": "", "namespaced": true, "kind": "Widget", "verbs": ["get"]},
        {"name": "gadgets", "singularName": "gadget", "namespaced": false, "kind": "Gadget", "verbs": ["get"]},
    ]});
    let res = v2_resources(&list, "test.rke2.io", "v1");
    assert_eq!(res.len(), 2);
    assert_eq!(
        res[0]["responseKind"],
        json!({"group": "test.rke2.io", "version": "v1", "kind": "Widget"})
    );
    assert_eq!(res[0]["scope"], "Namespaced");
    assert_eq!(res[0]["shortNames"], json!(["wd"]));
    assert_eq!(res[0]["subresources"][0]["subresource"], "status");
    assert_eq!(res[1]["scope"], "Cluster");

    let cache = DiscoveryCache::default();
    cache.put("v1.test.rke2.io", list);
    let mut a = apiservice("v1.test.rke2.io", remote_spec());
    let groups = v2_groups(
        &crate::registry::Registry::new(),
        &[Arc::new(a.clone())],
        &cache,
    );
    assert_eq!(groups[0]["metadata"]["name"], "test.rke2.io");
    assert_eq!(groups[0]["versions"][0]["freshness"], "Stale");
    a["status"]["conditions"] =
        json!([{"type": "Available", "status": "True", "reason": "Passed"}]);
    let groups = v2_groups(&crate::registry::Registry::new(), &[Arc::new(a)], &cache);
    assert_eq!(groups[0]["versions"][0]["freshness"], "Current");
    assert_eq!(
        groups[0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn upgrades_are_recognised_by_connection_and_upgrade() {
    let mut h = http::HeaderMap::new();
    h.insert("upgrade", "websocket".parse().unwrap());
    assert!(!forward::is_upgrade(&h));
    h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
    assert!(forward::is_upgrade(&h));
    h.remove("upgrade");
    assert!(!forward::is_upgrade(&h));
}
