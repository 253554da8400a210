//! Legacy discovery documents, `/version` and the OpenAPI answers kubectl needs.

use serde_json::{Value, json};

use crate::registry::{self, ResourceType};

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

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// Groups served outside the registry: the access reviews, which are
/// answered, never stored.
const VIRTUAL_GROUPS: &[(&str, &str)] = &[("authorization.k8s.io", "v1")];

fn all_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut gvs = registry::group_versions();
    gvs.extend_from_slice(VIRTUAL_GROUPS);
    gvs
}

/// `/apis`.
pub fn groups() -> Value {
    let groups: Vec<Value> = all_group_versions()
        .into_iter()
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    all_group_versions()
        .into_iter()
        .find(|(g, _)| *g == name)
        .map(|(g, v)| {
            let mut e = group_entry(g, v);
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

/// `/api/v1` or `/apis/<g>/<v>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == ("authorization.k8s.io", "v1") {
        let resources: Vec<Value> = crate::access_review::KINDS
            .iter()
            .map(|(plural, kind, namespaced)| {
                json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["create"]})
            })
            .collect();
        return Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "authorization.k8s.io/v1", "resources": resources}));
    }
    let types: Vec<&ResourceType> = registry::all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in types {
        resources.push(resource_entry(rt));
        for sub in rt.subresources {
            let (kind, verbs): (&str, &[&str]) = match *sub {
                "status" => (rt.kind, &["get", "patch", "update"]),
                "binding" => ("Binding", &["create"]),
                "finalize" => (rt.kind, &["update"]),
                "approval" => (rt.kind, &["get", "patch", "update"]),
                "scale" => ("Scale", &["get", "patch", "update"]),
                "token" => ("TokenRequest", &["create"]),
                // Proxied to the node API (`proxy.rs`).
                "log" => (rt.kind, &["get"]),
                "exec" => ("PodExecOptions", &["create", "get"]),
                "attach" => ("PodAttachOptions", &["create", "get"]),
                _ => continue,
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if *sub == "scale" {
                entry["group"] = json!("autoscaling");
                entry["version"] = json!("v1");
            }
            if *sub == "token" {
                entry["group"] = json!("authentication.k8s.io");
                entry["version"] = json!("v1");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_registered_type() {
        let core = resource_list("", "v1").unwrap();
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
        let apps = resource_list("apps", "v1").unwrap();
        assert_eq!(apps["groupVersion"], "apps/v1");
        assert!(resource_list("batch", "v1").is_some());
        assert!(resource_list("policy", "v1").is_none());
        let apps_names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(apps_names.contains(&"deployments/scale"));
        assert_eq!(groups()["groups"][0]["preferredVersion"]["version"], "v1");
    }

    #[test]
    fn version_is_semver() {
        let v = version();
        assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.35.0"));
    }
}
