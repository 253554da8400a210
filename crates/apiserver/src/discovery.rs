//! Legacy discovery documents, `/version` and the OpenAPI answers kubectl needs.

use serde_json::{Value, json};

use std::sync::Arc;

use crate::registry::{Registry, ResourceType};

/// The Kubernetes version this server speaks.
pub const KUBE_VERSION: (&str, &str) = ("1", "35");

/// `gitVersion` of `/version` (semver, as kubectl requires).
pub fn git_version() -> String {
    format!("v{}.{}.0+rke2r1", KUBE_VERSION.0, KUBE_VERSION.1)
}

/// The `/version` document.
pub fn version() -> Value {
    json!({
        "major": KUBE_VERSION.0,
        "minor": KUBE_VERSION.1,
        "gitVersion": git_version(),
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
}

/// Groups served outside the registry: the token and access reviews,
/// which are answered, never stored.
const VIRTUAL_GROUPS: &[(&str, &str)] = &[
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
];

/// The kinds of a virtual group/version: (plural, kind, namespaced), all
/// served with `create` only.
fn virtual_kinds(
    group: &str,
    version: &str,
) -> Option<&'static [(&'static str, &'static str, bool)]> {
    match (group, version) {
        ("authorization.k8s.io", "v1") => Some(crate::access_review::KINDS),
        ("authentication.k8s.io", "v1") => Some(&[
            ("selfsubjectreviews", "SelfSubjectReview", false),
            ("tokenreviews", "TokenReview", false),
        ]),
        _ => None,
    }
}

fn all_group_versions(reg: &Registry) -> Vec<(String, Vec<String>)> {
    let mut gvs = reg.group_versions();
    for (g, v) in VIRTUAL_GROUPS {
        gvs.push((g.to_string(), vec![v.to_string()]));
    }
    // Upstream orders groups by priority; custom groups (priority 1000)
    // come after the built-in ones, which the registry already does.
    gvs
}

/// `/apis`.
pub fn groups(reg: &Registry) -> Value {
    let groups: Vec<Value> = all_group_versions(reg)
        .iter()
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    all_group_versions(reg)
        .into_iter()
        .find(|(g, _)| g == name)
        .map(|(g, v)| {
            let mut e = group_entry(&g, &v);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

fn resource_entry(rt: &ResourceType) -> Value {
    let mut e = json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": rt.verbs(),
    });
    if !rt.short_names.is_empty() {
        e["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        e["categories"] = json!(rt.categories);
    }
    e
}

/// One subresource as discovery shows it: (group, version, kind) of its
/// answer (`None` group/version = the parent's) and its verbs.
struct SubresourceInfo {
    group_version: Option<(&'static str, &'static str)>,
    kind: String,
    verbs: &'static [&'static str],
}

fn subresource_info(rt: &ResourceType, sub: &str) -> Option<SubresourceInfo> {
    let own = |verbs| {
        Some(SubresourceInfo {
            group_version: None,
            kind: rt.kind.clone(),
            verbs,
        })
    };
    let other = |g, v, kind: &str, verbs| {
        Some(SubresourceInfo {
            group_version: Some((g, v)),
            kind: kind.to_string(),
            verbs,
        })
    };
    match sub {
        "status" | "approval" | "ephemeralcontainers" | "resize" => {
            own(&["get", "patch", "update"])
        }
        "finalize" => own(&["update"]),
        // Proxied to the node API (`proxy.rs`).
        "log" => own(&["get"]),
        // Nodes: to the node API, every verb (`proxy::node_proxy`); pods
        // and Services: any method (`workload_proxy`).
        "proxy" if rt.plural == "nodes" => other(
            "",
            "v1",
            "NodeProxyOptions",
            &["create", "delete", "get", "patch", "update"],
        ),
        "proxy" => other(
            "",
            "v1",
            &format!("{}ProxyOptions", rt.kind),
            &["create", "delete", "get", "patch", "update"],
        ),
        "binding" => other("", "v1", "Binding", &["create"]),
        "eviction" => other("policy", "v1", "Eviction", &["create"]),
        "scale" => other("autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        "token" => other("authentication.k8s.io", "v1", "TokenRequest", &["create"]),
        "exec" => other("", "v1", "PodExecOptions", &["create", "get"]),
        "attach" => other("", "v1", "PodAttachOptions", &["create", "get"]),
        "portforward" => other("", "v1", "PodPortForwardOptions", &["create", "get"]),
        _ => None,
    }
}

fn virtual_resources(kinds: &[(&str, &str, bool)]) -> Vec<Value> {
    kinds
        .iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["create"]})
        })
        .collect()
}

/// `/api/v1` or `/apis/<g>/<v>`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    if let Some(kinds) = virtual_kinds(group, version) {
        return Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": format!("{group}/{version}"), "resources": virtual_resources(kinds)}));
    }
    let types: Vec<Arc<ResourceType>> = reg
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in &types {
        resources.push(resource_entry(rt));
        for sub in &rt.subresources {
            let Some(info) = subresource_info(rt, sub) else {
                continue;
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": info.kind,
                "verbs": info.verbs,
            });
            if let Some((g, v)) = info.group_version.filter(|(g, _)| !g.is_empty()) {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The aggregated discovery version a request's `Accept` offers (`v2` or
/// `v2beta1`), if any; legacy documents otherwise.
pub fn aggregated_version(accept: Option<&str>) -> Option<&'static str> {
    let accept = accept?;
    let mut best = None;
    for part in accept.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        if !params.contains(&"g=apidiscovery.k8s.io")
            || !params.contains(&"as=APIGroupDiscoveryList")
        {
            continue;
        }
        if params.contains(&"v=v2") {
            return Some("v2");
        }
        if params.contains(&"v=v2beta1") {
            best = Some("v2beta1");
        }
    }
    best
}

/// The `Content-Type` of an aggregated discovery answer.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

fn aggregated_resource(rt: &ResourceType) -> Value {
    let mut e = json!({
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": rt.singular,
        "verbs": rt.verbs(),
    });
    if !rt.short_names.is_empty() {
        e["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        e["categories"] = json!(rt.categories);
    }
    let subs: Vec<Value> = rt
        .subresources
        .iter()
        .filter_map(|sub| {
            let info = subresource_info(rt, sub)?;
            let (g, v) = info
                .group_version
                .map(|(g, v)| (g.to_string(), v.to_string()))
                .unwrap_or_else(|| (rt.group.clone(), rt.version.clone()));
            Some(json!({
                "subresource": sub,
                "responseKind": {"group": g, "version": v, "kind": info.kind},
                "verbs": info.verbs,
            }))
        })
        .collect();
    if !subs.is_empty() {
        e["subresources"] = json!(subs);
    }
    e
}

/// `/api` (`core`) or `/apis` as an `APIGroupDiscoveryList` of the given
/// version (`v2` or `v2beta1`, the same shape).
pub fn aggregated(reg: &Registry, core: bool, version: &str) -> Value {
    let types = reg.all();
    let item = |group: &str, versions: &[String]| {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = if let Some(kinds) = virtual_kinds(group, v) {
                    kinds
                        .iter()
                        .map(|(plural, kind, namespaced)| {
                            json!({"resource": plural, "responseKind": {"group": group, "version": v, "kind": kind},
                                "scope": if *namespaced { "Namespaced" } else { "Cluster" }, "singularResource": "", "verbs": ["create"]})
                        })
                        .collect()
                } else {
                    types
                        .iter()
                        .filter(|t| t.group == group && &t.version == v)
                        .map(|t| aggregated_resource(t))
                        .collect()
                };
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
    };
    let items: Vec<Value> = if core {
        vec![item("", &["v1".to_string()])]
    } else {
        all_group_versions(reg)
            .iter()
            .map(|(g, v)| item(g, v))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_registered_type() {
        let reg = Registry::new();
        let core = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in [
            "pods",
            "pods/status",
            "pods/binding",
            "pods/eviction",
            "nodes",
            "configmaps",
            "namespaces/finalize",
            "pods/log",
            "pods/exec",
            "pods/attach",
            "serviceaccounts/token",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        let apps = resource_list(&reg, "apps", "v1").unwrap();
        assert_eq!(apps["groupVersion"], "apps/v1");
        assert!(resource_list(&reg, "batch", "v1").is_some());
        assert!(resource_list(&reg, "policy", "v1").is_some());
        assert!(resource_list(&reg, "policy", "v1beta1").is_none());
        let apps_names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(apps_names.contains(&"deployments/scale"));
        assert_eq!(
            groups(&reg)["groups"][0]["preferredVersion"]["version"],
            "v1"
        );
    }

    #[test]
    fn aggregated_discovery_is_offered_by_accept() {
        let v2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(Some(v2)), Some("v2"));
        let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(Some(beta)), Some("v2beta1"));
        assert_eq!(aggregated_version(Some("application/json")), None);
        assert_eq!(aggregated_version(None), None);
        let reg = Registry::new();
        let doc = aggregated(&reg, false, "v2");
        let apps = doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        let core = aggregated(&reg, true, "v2");
        assert_eq!(core["items"][0]["metadata"]["name"], "");
    }

    #[test]
    fn version_is_semver() {
        let v = version();
        assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.35.0"));
    }
}
