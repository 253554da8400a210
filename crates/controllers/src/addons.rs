//! Auto-deploying manifests (k3s/RKE2's `server/manifests`): every YAML or
//! JSON file in the directory is applied with server-side apply, and
//! re-applied when its content changes. The bundled addons are written
//! there at start unless named in `disable`: RKE2's charts as HelmChart
//! objects carrying the chart (`chartContent`, packaged here from the
//! chart directories under `crates/controllers/charts/`, embedded at
//! build time), which the HelmChart controller (`helm.rs`) installs.
//!
//! The addons are ordinary workloads: none tolerates `CriticalAddonsOnly`
//! except cluster DNS, so on an all-tainted cluster they stay Pending until
//! an untainted node joins — scheduler semantics, no special case here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The field manager of applied manifests.
pub const FIELD_MANAGER: &str = "rke2-deploy";

/// How a bundled addon is shipped.
#[derive(Debug, Clone, Copy)]
enum Shipped {
    /// A chart under `crates/controllers/charts/<name>/`, written as a
    /// HelmChart with `chartContent` (as RKE2 ships its charts).
    /// `bootstrap`: its helm Job runs before the pod network is up.
    Chart { bootstrap: bool },
}

/// The bundled addons, in the order they are written.
const BUNDLED: &[(&str, Shipped)] = &[
    // RKE2 marks its DNS chart bootstrap: DNS is needed before anything else.
    ("rke2-coredns", Shipped::Chart { bootstrap: true }),
    ("rke2-ingress-nginx", Shipped::Chart { bootstrap: false }),
    ("rke2-metrics-server", Shipped::Chart { bootstrap: false }),
];

/// The chart files embedded at build time.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/charts.rs"));
}

/// Names of the bundled addons (what `disable` accepts).
pub fn bundled_names() -> Vec<&'static str> {
    BUNDLED.iter().map(|(n, _)| *n).collect()
}

/// What the bundled manifests are filled in with.
#[derive(Debug, Clone)]
pub struct AddonValues {
    /// The cluster DNS Service IP (`cluster-dns`).
    pub cluster_dns: String,
    /// The cluster domain (`cluster-domain`).
    pub cluster_domain: String,
    /// The image the addons run (this binary's own,
    /// `rke2_runtime::addon_image::reference`).
    pub addon_image: String,
}

/// The files of a bundled chart (path in the chart, content).
pub fn chart_files(name: &str) -> Option<&'static [embedded::ChartFile]> {
    embedded::CHARTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, files)| *files)
}

/// A bundled chart packaged as `helm package` lays it out
/// (`<name>/Chart.yaml`, ...), gzipped tar with fixed times and owners,
/// so the same binary always writes the same `chartContent` (and a
/// restart re-runs no helm Job).
pub fn chart_archive(name: &str) -> Option<Vec<u8>> {
    let files = chart_files(name)?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, format!("{name}/{path}"), *data)
            .expect("writing to memory");
    }
    let gz = tar.into_inner().expect("writing to memory");
    Some(gz.finish().expect("writing to memory"))
}

/// The HelmChart of a bundled chart: the chart as `chartContent`, rke2's
/// settings as `global.*` values in `set` (as RKE2 passes
/// `global.clusterDNS` and friends), `takeOwnership` so objects an older
/// rke2 applied as plain manifests are adopted rather than refused.
fn helmchart_text(name: &str, bootstrap: bool, values: &AddonValues) -> Option<String> {
    use base64::Engine;
    let archive = chart_archive(name)?;
    let content = base64::engine::general_purpose::STANDARD.encode(archive);
    let doc = serde_json::json!({
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {
            "bootstrap": bootstrap,
            "takeOwnership": true,
            "chartContent": content,
            "set": {
                "global.addonImage": values.addon_image,
                "global.clusterDNS": values.cluster_dns,
                "global.clusterDomain": values.cluster_domain,
            },
        },
    });
    let yaml = serde_saphyr::to_string(&doc).ok()?;
    Some(format!(
        "# RKE2's bundled {name} chart, written by rke2 at every start: tune it with a\n# HelmChartConfig named {name} in kube-system; `disable: [{name}]` removes it.\n{yaml}"
    ))
}

/// A bundled addon's manifest as written.
pub fn bundled_text(name: &str, values: &AddonValues) -> Option<String> {
    match BUNDLED.iter().find(|(n, _)| *n == name)?.1 {
        Shipped::Chart { bootstrap } => helmchart_text(name, bootstrap, values),
    }
}

/// Writes the bundled addon manifests into `dir` (or removes those named
/// in `disable`). Files are rewritten only when their content differs.
pub fn write_bundled(dir: &Path, disable: &[String], values: &AddonValues) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, _) in BUNDLED {
        let path = dir.join(format!("{name}.yaml"));
        if disable.iter().any(|d| d == name) {
            if path.exists() {
                info!(addon = name, "addon disabled; removing its manifest");
                std::fs::remove_file(&path)?;
            }
            continue;
        }
        let content = bundled_text(name, values).expect("bundled");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            let tmp = dir.join(format!(".{name}.yaml.tmp"));
            std::fs::write(&tmp, &content)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(())
}

/// Deletes the objects of the bundled addons named in `disable`, as RKE2
/// uninstalls an addon that is disabled after it ran: every object of its
/// manifest that exists is deleted (their pods go with their owners, by
/// the garbage collector). Retries until every delete got an answer.
pub async fn remove_disabled(
    client: kube::Client,
    disable: Vec<String>,
    values: AddonValues,
    stop: CancellationToken,
) {
    let mut docs = Vec::new();
    for name in &disable {
        if let Some(text) = bundled_text(name, &values) {
            match parse_documents(Path::new(name), &text) {
                Ok(d) => docs.extend(d.into_iter().map(|d| (name.clone(), d))),
                Err(e) => warn!(error = %e, "bundled manifest does not parse"),
            }
        }
    }
    while !docs.is_empty() {
        let mut left = Vec::new();
        for (addon, doc) in docs {
            match delete_one(&client, &doc).await {
                Ok(true) => {
                    info!(addon = %addon, kind = %doc["kind"], name = %doc["metadata"]["name"], "disabled addon's object deleted")
                }
                Ok(false) => {}
                Err(e) => {
                    debug!(addon = %addon, error = %e, "deleting a disabled addon's object; retrying");
                    left.push((addon, doc));
                }
            }
        }
        docs = left;
        if docs.is_empty() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Deletes one manifest object; `Ok(false)` when it did not exist.
async fn delete_one(client: &kube::Client, doc: &Value) -> Result<bool, String> {
    let api = dynamic_api(client, doc).await?;
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(format!("deleting {} {name}: {e}", doc["kind"])),
    }
}

async fn dynamic_api(client: &kube::Client, doc: &Value) -> Result<Api<DynamicObject>, String> {
    let api_version = doc["apiVersion"].as_str().ok_or("missing apiVersion")?;
    let kind = doc["kind"].as_str().ok_or("missing kind")?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{api_version} {kind} is not served: {e}"))?;
    Ok(if caps.scope == kube::discovery::Scope::Namespaced {
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    })
}

/// The manifest files of a directory, in name order.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with('.')
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Parses the documents of a manifest file; errors name the file.
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for d in docs {
        match d {
            Value::Null => {}
            Value::Object(_) if d.get("kind") == Some(&Value::String("List".into())) => {
                out.extend(d["items"].as_array().cloned().unwrap_or_default());
            }
            Value::Object(_) => out.push(d),
            other => {
                return Err(format!(
                    "{}: a document is not an object: {other}",
                    path.display()
                ));
            }
        }
    }
    Ok(out)
}

async fn apply_one(client: &kube::Client, doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().ok_or("missing kind")?;
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or("missing metadata.name")?;
    let api = dynamic_api(client, doc).await?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(doc),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("applying {kind} {name}: {e}"))
}

/// Applies every manifest in `dir` whose content changed, every 5 s, until
/// `stop`. A file that fails is retried at the next round.
pub async fn run(client: kube::Client, dir: PathBuf, stop: CancellationToken) {
    let mut applied: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for path in manifest_files(&dir) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if applied.get(&path) == Some(&text) {
                continue;
            }
            let docs = match parse_documents(&path, &text) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "manifest is not valid YAML; skipped until it changes");
                    applied.insert(path, text);
                    continue;
                }
            };
            let mut ok = true;
            for doc in &docs {
                if let Err(e) = apply_one(&client, doc).await {
                    warn!(file = %path.display(), error = %e, "applying manifest");
                    ok = false;
                }
            }
            if ok {
                info!(file = %path.display(), objects = docs.len(), "applied manifest");
                applied.insert(path, text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> AddonValues {
        AddonValues {
            cluster_dns: "10.43.0.10".into(),
            cluster_domain: "cluster.local".into(),
            addon_image: "rke2.local/rke2-addons:v0".into(),
        }
    }

    /// The objects a bundled addon installs: a chart rendered by the real
    /// helm (`helm template` of the archive with the HelmChart's `set`),
    /// or the plain manifest.
    fn rendered(name: &str) -> Vec<Value> {
        let text = bundled_text(name, &values()).unwrap();
        let docs = parse_documents(Path::new(name), &text).unwrap();
        if docs[0]["kind"] != "HelmChart" {
            return docs;
        }
        const HELM: &str = "/usr/local/lib/rke2-test/helm";
        assert!(
            Path::new(HELM).is_file(),
            "rendering the bundled charts needs helm at {HELM}: run `bash scripts/install.sh`"
        );
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join(format!("{name}.tgz"));
        std::fs::write(&tgz, chart_archive(name).unwrap()).unwrap();
        let mut cmd = std::process::Command::new(HELM);
        cmd.env("HOME", dir.path())
            .args(["template", name])
            .arg(&tgz)
            .args(["--namespace", "kube-system"]);
        for (k, v) in docs[0]["spec"]["set"].as_object().unwrap() {
            cmd.arg("--set-string")
                .arg(format!("{k}={}", v.as_str().unwrap()));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_documents(Path::new(name), &String::from_utf8_lossy(&out.stdout)).unwrap()
    }

    #[test]
    fn coredns_is_a_bootstrap_helmchart_with_the_chart_inside() {
        let text = bundled_text("rke2-coredns", &values()).unwrap();
        let doc = &parse_documents(Path::new("dns"), &text).unwrap()[0];
        assert_eq!(doc["apiVersion"], "helm.cattle.io/v1");
        assert_eq!(doc["kind"], "HelmChart");
        assert_eq!(doc["metadata"]["namespace"], "kube-system");
        assert_eq!(doc["spec"]["bootstrap"], true);
        assert_eq!(doc["spec"]["set"]["global.clusterDNS"], "10.43.0.10");
        // Same binary, same content: a restart re-runs nothing.
        assert_eq!(chart_archive("rke2-coredns"), chart_archive("rke2-coredns"));
        let files: Vec<&str> = chart_files("rke2-coredns")
            .unwrap()
            .iter()
            .map(|(p, _)| *p)
            .collect();
        assert!(
            files.contains(&"Chart.yaml") && files.contains(&"values.yaml"),
            "{files:?}"
        );
    }

    #[test]
    fn dns_runs_on_the_addon_image_at_the_cluster_dns_address() {
        let docs = rendered("rke2-coredns");
        let svc = docs
            .iter()
            .find(|d| d["kind"] == "Service")
            .expect("a Service");
        assert_eq!(svc["metadata"]["name"], "rke2-coredns-rke2-coredns");
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.10");
        let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
        assert_eq!(deployments.len(), 2, "DNS and its autoscaler");
        for d in deployments {
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["image"], "rke2.local/rke2-addons:v0");
            assert!(c["resources"]["requests"].is_object());
        }
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("the autoscaler's ConfigMap");
        let linear: Value = serde_json::from_str(cm["data"]["linear"].as_str().unwrap()).unwrap();
        assert_eq!(linear["coresPerReplica"], 256);
        assert_eq!(linear["nodesPerReplica"], 16);
    }

    #[test]
    fn bundled_manifests_parse_and_disable_removes() {
        let dir = tempfile::tempdir().unwrap();
        write_bundled(dir.path(), &[], &values()).unwrap();
        for name in bundled_names() {
            let p = dir.path().join(format!("{name}.yaml"));
            let text = std::fs::read_to_string(&p).unwrap();
            let docs = parse_documents(&p, &text).unwrap();
            assert!(!docs.is_empty(), "{name}");
            assert!(!text.contains("{cluster_dns}"), "{name}");
            assert!(!text.contains("{cluster_domain}"), "{name}");
            assert!(!text.contains("{addon_image}"), "{name}");
        }
        write_bundled(dir.path(), &["rke2-ingress-nginx".to_string()], &values()).unwrap();
        assert!(!dir.path().join("rke2-ingress-nginx.yaml").exists());
        assert!(dir.path().join("rke2-coredns.yaml").exists());
    }

    #[test]
    fn only_dns_tolerates_critical_addons_only() {
        for (name, _) in BUNDLED {
            let docs = rendered(name);
            let tolerates = docs.iter().any(|d| {
                d["spec"]["template"]["spec"]["tolerations"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().any(|t| t["key"] == "CriticalAddonsOnly"))
            });
            assert_eq!(tolerates, *name == "rke2-coredns", "{name}");
        }
    }

    #[test]
    fn bad_yaml_names_the_file() {
        let e = parse_documents(Path::new("/m/x.yaml"), "a: [1,\n").unwrap_err();
        assert!(e.contains("/m/x.yaml"), "{e}");
    }
}
