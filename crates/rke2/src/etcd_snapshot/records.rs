//! `ETCDSnapshotFile` objects (`k3s.cattle.io/v1`, cluster-scoped): the
//! CRD, created through the API as RKE2's supervisor creates it, and the
//! records of one node's snapshots kept equal to what is on its disk and
//! in the bucket under its name.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::SnapshotInfo;

/// The field manager records are applied with.
const MANAGER: &str = "rke2-etcd-snapshot";
/// The label naming the node whose disk holds a snapshot (`s3` for the
/// bucket), RKE2's.
pub const LABEL_STORAGE_NODE: &str = "etcd.rke2.cattle.io/snapshot-storage-node";
/// The annotation holding a snapshot's SHA-256.
pub const ANNOTATION_SHA256: &str = "etcd.rke2.cattle.io/snapshot-sha256";
/// The most `spec.metadata` may hold (bytes of keys and values): the
/// extra-metadata ConfigMap is copied into every record, so a large one
/// would multiply; above this it is left out with a warning.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// The ConfigMap (kube-system) whose data RKE2 copies into each
/// snapshot's metadata.
pub const EXTRA_METADATA_CONFIGMAP: &str = "rke2-etcd-snapshot-extra-metadata";

/// The API resource of `ETCDSnapshotFile`.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "k3s.cattle.io".into(),
        version: "v1".into(),
        api_version: "k3s.cattle.io/v1".into(),
        kind: "ETCDSnapshotFile".into(),
        plural: "etcdsnapshotfiles".into(),
    }
}

/// The `etcdsnapshotfiles.k3s.cattle.io` CRD with k3s's fields and
/// printer columns.
pub fn crd() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    let s3 = json!({"type": "object", "description": "Where in S3, for a snapshot stored there.", "properties": {
        "endpoint": s("S3 endpoint."),
        "endpointCA": s("CA the endpoint is verified with."),
        "skipSSLVerify": {"type": "boolean"},
        "bucket": s("Bucket."),
        "region": s("Region."),
        "prefix": s("Folder."),
        "insecure": {"type": "boolean"}
    }});
    let spec = json!({"type": "object", "required": ["snapshotName", "nodeName", "location"], "properties": {
        "snapshotName": s("The snapshot's file or object name."),
        "nodeName": s("The node that took the snapshot (and holds it, for a local one)."),
        "location": s("file:// path or s3:// URI of the snapshot."),
        "metadata": {"type": "object", "additionalProperties": {"type": "string"},
            "description": "The data of the extra-metadata ConfigMap when the snapshot was taken."},
        "s3": s3
    }});
    let size = json!({"x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}]});
    let status = json!({"type": "object", "properties": {
        "size": size,
        "creationTime": {"type": "string", "format": "date-time"},
        "readyToUse": {"type": "boolean"},
        "error": {"type": "object", "properties": {
            "time": {"type": "string", "format": "date-time"},
            "message": {"type": "string"}
        }}
    }});
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "etcdsnapshotfiles.k3s.cattle.io"},
        "spec": {
            "group": "k3s.cattle.io",
            "names": {"kind": "ETCDSnapshotFile", "listKind": "ETCDSnapshotFileList",
                "plural": "etcdsnapshotfiles", "singular": "etcdsnapshotfile"},
            "scope": "Cluster",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": [
                    {"name": "SnapshotName", "type": "string", "jsonPath": ".spec.snapshotName"},
                    {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"},
                    {"name": "Location", "type": "string", "jsonPath": ".spec.location"},
                    {"name": "Size", "type": "string", "jsonPath": ".status.size"},
                    {"name": "CreationTime", "type": "date", "jsonPath": ".status.creationTime"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "ETCDSnapshotFile: one etcd snapshot on a node's disk or in S3.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status
                    }
                }}
            }]
        }
    })
}

/// Creates or updates the CRD and waits until its resource is served.
pub async fn ensure_crd(client: &kube::Client, deadline: Duration) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crd();
    let start = std::time::Instant::now();
    loop {
        let applied = api
            .patch(
                "etcdsnapshotfiles.k3s.cattle.io",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await;
        let served = match applied {
            Ok(_) => {
                let records: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource());
                records
                    .list(&ListParams::default().limit(1))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        match served {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The object name of a snapshot's record, k3s's `GenerateName`:
/// `local-`/`s3-` + the lowercased file name + 6 hex digits of the
/// SHA-256 of node and location; a name that is not a DNS subdomain (or
/// too long) becomes `etcd-snapshot-<node>-<unix>`.
pub fn record_name(s: &SnapshotInfo, node: &str) -> String {
    let mut name = s.name.to_lowercase();
    let digest = Sha256::digest(format!("{node}{}", s.location).as_bytes());
    let valid = rke2_apimachinery::validation::validate_dns1123_subdomain(&name).is_empty()
        && name.len() + 13 <= 253;
    if !valid {
        let short = node.split('.').next().unwrap_or(node);
        name = format!("etcd-snapshot-{short}-{}", s.created);
        if s.compressed() {
            name.push_str(super::COMPRESSED_EXTENSION);
        }
    }
    let kind = if s.s3 { "s3" } else { "local" };
    format!("{kind}-{name}-{}", &hex::encode(digest)[..6])
}

/// The record of one snapshot taken by `node`.
pub fn record(
    s: &SnapshotInfo,
    node: &str,
    metadata: &BTreeMap<String, String>,
    s3: Option<&rke2_config::S3Config>,
) -> Value {
    let created = chrono::DateTime::from_timestamp(s.created, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut annotations = serde_json::Map::new();
    if let Some(sha) = &s.sha256 {
        annotations.insert(ANNOTATION_SHA256.into(), json!(sha));
    }
    let mut spec = json!({
        "snapshotName": s.name,
        "nodeName": node,
        "location": s.location,
    });
    if !metadata.is_empty() {
        spec["metadata"] = json!(metadata);
    }
    if let (true, Some(c)) = (s.s3, s3) {
        spec["s3"] = json!({
            "endpoint": c.endpoint,
            "endpointCA": c.endpoint_ca.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "skipSSLVerify": c.skip_ssl_verify,
            "bucket": c.bucket,
            "region": c.region,
            "prefix": c.folder,
            "insecure": c.insecure,
        });
    }
    json!({
        "apiVersion": "k3s.cattle.io/v1",
        "kind": "ETCDSnapshotFile",
        "metadata": {
            "name": record_name(s, node),
            "labels": {LABEL_STORAGE_NODE: if s.s3 { "s3" } else { node }},
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "size": s.size.to_string(),
            "creationTime": created,
            "readyToUse": true,
        }
    })
}

/// The record of a snapshot that failed (as k3s records one): `s` names
/// what was attempted (an S3 upload when `s.s3`), `status.readyToUse` is
/// false and `status.error` holds the message and the time it failed.
pub fn failed_record(
    s: &SnapshotInfo,
    node: &str,
    metadata: &BTreeMap<String, String>,
    s3: Option<&rke2_config::S3Config>,
    message: &str,
) -> Value {
    let mut r = record(s, node, metadata, s3);
    r["status"]["readyToUse"] = json!(false);
    r["status"]["error"] = json!({
        "message": message,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    r
}

/// Whether a record is one of a failed snapshot.
fn is_failed(obj: &Value) -> bool {
    obj["status"]["error"].is_object()
}

/// The extra metadata to record with new snapshots: the data of the
/// `rke2-etcd-snapshot-extra-metadata` ConfigMap in kube-system, when it
/// exists and is at most [`MAX_METADATA_BYTES`].
pub async fn extra_metadata(client: &kube::Client) -> BTreeMap<String, String> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "kube-system");
    let Ok(Some(cm)) = api.get_opt(EXTRA_METADATA_CONFIGMAP).await else {
        return BTreeMap::new();
    };
    let data = cm.data.unwrap_or_default();
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_BYTES {
        tracing::warn!(
            configmap = EXTRA_METADATA_CONFIGMAP,
            size,
            limit = MAX_METADATA_BYTES,
            "the snapshot extra metadata is too large; snapshots are recorded without it"
        );
        return BTreeMap::new();
    }
    data
}

/// Makes the records of `node`'s snapshots equal to `local` (its disk)
/// and, when S3 is configured, to `s3` (the bucket's snapshots named with
/// this node): creates missing records, deletes records of snapshots that
/// are gone. Records of other nodes are never touched. Existing records
/// keep the metadata they were created with.
///
/// Records of failed snapshots ([`failed_record`]; `failed` are new ones)
/// have no file to match: the newest `keep_failed` of the node's are kept
/// (by the time they failed), older ones deleted, so a bucket that stays
/// down leaves a bounded trail.
pub async fn reconcile(
    client: &kube::Client,
    node: &str,
    local: &[SnapshotInfo],
    s3: Option<(&[SnapshotInfo], &rke2_config::S3Config)>,
    metadata: &BTreeMap<String, String>,
    failed: &[Value],
    keep_failed: usize,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource());
    let mut wanted: BTreeMap<String, Value> = local
        .iter()
        .map(|s| (record_name(s, node), record(s, node, metadata, None)))
        .collect();
    let node_tag = format!("-{node}-");
    if let Some((objects, cfg)) = s3 {
        for s in objects.iter().filter(|s| s.name.contains(&node_tag)) {
            wanted.insert(record_name(s, node), record(s, node, metadata, Some(cfg)));
        }
    }
    // Failed records, new and existing, newest first: (time, name, new record).
    let mut failures: Vec<(String, String, Option<Value>)> = failed
        .iter()
        .filter_map(|r| {
            let name = r["metadata"]["name"].as_str()?.to_string();
            let time = r["status"]["error"]["time"].as_str()?.to_string();
            Some((time, name, Some(r.clone())))
        })
        .collect();
    let existing = api.list(&ListParams::default()).await?;
    for obj in existing.items {
        let Some(name) = obj.metadata.name.clone() else {
            continue;
        };
        if is_failed(&obj.data) && obj.data["spec"]["nodeName"] == node {
            if !failures.iter().any(|(_, n, _)| *n == name) {
                let time = obj.data["status"]["error"]["time"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                failures.push((time, name, None));
            }
            continue;
        }
        let spec_node = obj.data["spec"]["nodeName"].as_str().unwrap_or_default();
        let storage = obj
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_STORAGE_NODE))
            .map(String::as_str)
            .unwrap_or_default();
        let ours = spec_node == node && (storage == node || (storage == "s3" && s3.is_some()));
        if wanted.remove(&name).is_some() {
            continue;
        }
        if ours {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    failures.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    for (i, (_, name, new)) in failures.into_iter().enumerate() {
        match (i < keep_failed, new) {
            (true, Some(obj)) => {
                wanted.insert(name, obj);
            }
            (true, None) | (false, Some(_)) => {}
            (false, None) => match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            },
        }
    }
    for (name, obj) in wanted {
        match api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, s3: bool) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            location: format!("file:///snap/{name}"),
            size: 10,
            created: 1_700_000_000,
            node: "n1".into(),
            sha256: Some("ab".repeat(32)),
            s3,
        }
    }

    #[test]
    fn record_names_follow_k3s() {
        let n = record_name(&info("etcd-snapshot-n1-1700000000", false), "n1");
        assert!(n.starts_with("local-etcd-snapshot-n1-1700000000-"), "{n}");
        assert_eq!(n.len(), "local-etcd-snapshot-n1-1700000000-".len() + 6);
        let n = record_name(&info("Bad_Name", true), "n1.example");
        assert!(n.starts_with("s3-etcd-snapshot-n1-1700000000-"), "{n}");
    }

    #[test]
    fn a_failed_record_says_why() {
        let r = failed_record(
            &info("etcd-snapshot-n1-1700000000", true),
            "n1",
            &BTreeMap::new(),
            None,
            "S3 down",
        );
        assert_eq!(r["status"]["readyToUse"], false);
        assert_eq!(r["status"]["error"]["message"], "S3 down");
        assert!(
            r["status"]["error"]["time"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert!(is_failed(&r));
        assert!(!is_failed(&record(
            &info("x", false),
            "n1",
            &BTreeMap::new(),
            None
        )));
    }

    #[test]
    fn the_crd_decodes() {
        let c: CustomResourceDefinition = serde_json::from_value(crd()).unwrap();
        assert_eq!(c.spec.scope, "Cluster");
    }
}
