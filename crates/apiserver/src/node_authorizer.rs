//! The relationship half of upstream's Node authorizer: a node may read a
//! Secret or ConfigMap, or ask for a token of a ServiceAccount, only when
//! a pod bound to it references that object, and may read a pod only when
//! the pod is bound to it.
//!
//! Upstream keeps a graph fed by informers; here the pods cache keeps an
//! index of pods by `spec.nodeName` ([`ResourceCache::pods_on_node`]) and
//! the references are read from those pods when asked. A node learns of
//! its pods through that same cache, so on one apiserver it never asks
//! before the index knows; behind another apiserver the cache may lag a
//! moment, so a miss waits briefly for the cache to catch up with etcd
//! before it is a refusal.
//!
//! [`ResourceCache::pods_on_node`]: crate::watch_cache::ResourceCache::pods_on_node

use std::time::Duration;

use serde_json::Value;

use crate::ApiState;
use crate::watch_cache::ResourceCache;

/// How long a miss waits for the pods cache to reach etcd's revision.
const CATCH_UP: Duration = Duration::from_millis(500);
const CATCH_UP_STEP: Duration = Duration::from_millis(20);

/// Names referenced by `pod` as objects of `plural` (`secrets`,
/// `configmaps`, `serviceaccounts`; `pods` is the pod itself), as
/// upstream's graph populator finds them: image pull secrets; `env` and
/// `envFrom` of every container, init and ephemeral container; secret,
/// configMap and projected volumes and the secret references of volume
/// plugins; the service account.
pub fn references(pod: &Value, plural: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    match plural {
        "pods" => is(&pod["metadata"]["name"]),
        "serviceaccounts" => {
            let sa = spec["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            sa == name
        }
        "secrets" => {
            arr(&spec["imagePullSecrets"]).any(|r| is(&r["name"]))
                || containers(spec).any(|c| {
                    arr(&c["envFrom"]).any(|e| is(&e["secretRef"]["name"]))
                        || arr(&c["env"]).any(|e| is(&e["valueFrom"]["secretKeyRef"]["name"]))
                })
                || arr(&spec["volumes"]).any(|v| {
                    is(&v["secret"]["secretName"])
                        || is(&v["azureFile"]["secretName"])
                        || [
                            "cephfs",
                            "cinder",
                            "flexVolume",
                            "rbd",
                            "scaleIO",
                            "iscsi",
                            "storageos",
                        ]
                        .iter()
                        .any(|p| is(&v[*p]["secretRef"]["name"]))
                        || is(&v["csi"]["nodePublishSecretRef"]["name"])
                        || arr(&v["projected"]["sources"]).any(|s| is(&s["secret"]["name"]))
                })
        }
        "configmaps" => {
            containers(spec).any(|c| {
                arr(&c["envFrom"]).any(|e| is(&e["configMapRef"]["name"]))
                    || arr(&c["env"]).any(|e| is(&e["valueFrom"]["configMapKeyRef"]["name"]))
            }) || arr(&spec["volumes"]).any(|v| {
                is(&v["configMap"]["name"])
                    || arr(&v["projected"]["sources"]).any(|s| is(&s["configMap"]["name"]))
            })
        }
        "persistentvolumeclaims" => {
            arr(&spec["volumes"]).any(|v| is(&v["persistentVolumeClaim"]["claimName"]))
        }
        _ => false,
    }
}

/// The claims a pod's volumes name.
fn claims(pod: &Value) -> impl Iterator<Item = &str> {
    arr(&pod["spec"]["volumes"]).filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
}

/// Whether a pod bound to `node` uses a claim bound to the
/// PersistentVolume `name` (upstream's graph edge pod → pvc → pv).
pub async fn related_volume(state: &ApiState, node: &str, name: &str) -> bool {
    let pods_rt = crate::registry::find("", "v1", "pods").expect("pods are served");
    let claims_rt =
        crate::registry::find("", "v1", "persistentvolumeclaims").expect("claims are served");
    let Some(cache) = state.caches.ready(pods_rt).await else {
        return false;
    };
    let Some(pods) = cache.pods_on_node(node) else {
        return false;
    };
    for pod in pods.iter() {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        for claim in claims(pod) {
            let key = claims_rt.key(Some(ns), claim);
            if let Ok(Some(kv)) = state.store.get(&key).await
                && let Ok(pvc) = serde_json::from_slice::<Value>(&kv.value)
                && pvc["spec"]["volumeName"].as_str() == Some(name)
            {
                return true;
            }
        }
    }
    false
}

fn arr(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    arr(&spec["containers"])
        .chain(arr(&spec["initContainers"]))
        .chain(arr(&spec["ephemeralContainers"]))
}

fn any_references(pods: &[std::sync::Arc<Value>], plural: &str, ns: &str, name: &str) -> bool {
    pods.iter()
        .any(|p| p["metadata"]["namespace"].as_str() == Some(ns) && references(p, plural, name))
}

/// Whether the object `ns/name` of `plural` is related to `node`: a pod
/// bound to the node references it (or is it).
pub async fn related(state: &ApiState, node: &str, plural: &str, ns: &str, name: &str) -> bool {
    let pods_rt = crate::registry::find("", "v1", "pods").expect("pods are served");
    match state.caches.ready(pods_rt).await {
        Some(cache) => related_in_cache(state, &cache, node, plural, ns, name).await,
        // No cache (it could not sync): the namespace's pods from etcd.
        None => match namespace_pods(state, ns).await {
            Some(pods) => pods.iter().any(|p| {
                p["spec"]["nodeName"].as_str() == Some(node) && references(p, plural, name)
            }),
            None => false,
        },
    }
}

async fn related_in_cache(
    state: &ApiState,
    cache: &ResourceCache,
    node: &str,
    plural: &str,
    ns: &str,
    name: &str,
) -> bool {
    let check = || {
        cache
            .pods_on_node(node)
            .is_some_and(|pods| any_references(&pods, plural, ns, name))
    };
    if check() {
        return true;
    }
    // A pod bound a moment ago, seen by the node through another
    // apiserver: wait for this cache to reach etcd's current revision.
    let Ok(target) = state.store.current_revision().await else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while cache.revision() < target && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(CATCH_UP_STEP).await;
        if check() {
            return true;
        }
    }
    check()
}

/// Every pod of namespace `ns`, read from etcd; `None` when etcd fails.
async fn namespace_pods(state: &ApiState, ns: &str) -> Option<Vec<std::sync::Arc<Value>>> {
    let prefix = format!("/registry/pods/{ns}/");
    let mut out = Vec::new();
    let mut start = prefix.clone();
    let mut revision = 0;
    loop {
        let page = state
            .store
            .list(&prefix, Some(&start), 500, revision)
            .await
            .ok()?;
        revision = page.revision;
        let mut last = None;
        for kv in page.items {
            if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                out.push(std::sync::Arc::new(v));
            }
            last = Some(kv.key);
        }
        match (page.more, last) {
            (true, Some(k)) => start = format!("{k}\u{0}"),
            _ => return Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "nodeName": "a",
                "serviceAccountName": "runner",
                "imagePullSecrets": [{"name": "pull"}],
                "containers": [{"name": "c",
                    "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                            {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                    "envFrom": [{"secretRef": {"name": "from-secret"}}, {"configMapRef": {"name": "from-cm"}}]}],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-secret"}}]}],
                "ephemeralContainers": [{"name": "e", "env": [{"name": "Z", "valueFrom": {"configMapKeyRef": {"name": "eph-cm", "key": "k"}}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": "vol-secret"}},
                    {"name": "m", "configMap": {"name": "vol-cm"}},
                    {"name": "r", "rbd": {"secretRef": {"name": "rbd-secret"}}},
                    {"name": "x", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi-secret"}}},
                    {"name": "p", "projected": {"sources": [
                        {"secret": {"name": "proj-secret"}},
                        {"configMap": {"name": "proj-cm"}},
                        {"serviceAccountToken": {"path": "t"}}]}}
                ]
            }
        })
    }

    #[test]
    fn every_reference_of_a_pod_counts() {
        let p = pod();
        for s in [
            "pull",
            "env-secret",
            "from-secret",
            "init-secret",
            "vol-secret",
            "rbd-secret",
            "csi-secret",
            "proj-secret",
        ] {
            assert!(references(&p, "secrets", s), "{s}");
            assert!(!references(&p, "configmaps", s), "{s}");
        }
        for c in ["env-cm", "from-cm", "eph-cm", "vol-cm", "proj-cm"] {
            assert!(references(&p, "configmaps", c), "{c}");
            assert!(!references(&p, "secrets", c), "{c}");
        }
        assert!(!references(&p, "secrets", "other"));
        assert!(references(&p, "serviceaccounts", "runner"));
        assert!(!references(&p, "serviceaccounts", "default"));
        assert!(references(
            &json!({"spec": {}}),
            "serviceaccounts",
            "default"
        ));
        assert!(references(&p, "pods", "p"));
        assert!(!references(&p, "leases", "p"));
    }

    #[test]
    fn references_count_only_in_the_pods_namespace() {
        let pods = vec![std::sync::Arc::new(pod())];
        assert!(any_references(&pods, "secrets", "ns", "vol-secret"));
        assert!(!any_references(&pods, "secrets", "other", "vol-secret"));
    }
}
