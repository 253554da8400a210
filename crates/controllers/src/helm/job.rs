//! What a HelmChart turns into, as pure functions: the helm Job
//! (`helm-install-<name>` / `helm-delete-<name>`), its ServiceAccount
//! `helm-<name>` bound to `cluster-admin`, the values Secret
//! `chart-values-<name>` and the content ConfigMap `chart-content-<name>`,
//! with the names, labels, environment and file layout of
//! k3s-io/helm-controller's, so what a user sees is what RKE2 shows.
//! The Job runs `rke2 helm-job` on the addon image (the klipper-helm role).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Label on the Job and its pods naming the HelmChart.
pub const LABEL_CHART: &str = "helmcharts.helm.cattle.io/chart";
/// Annotation on the Job's pod template: the hash of everything the run
/// depends on; a new hash replaces the Job (and so re-runs helm).
pub const KEY_CONFIG_HASH: &str = "helmcharts.helm.cattle.io/configHash";
/// The values Secret's type.
pub const VALUES_SECRET_TYPE: &str = "helmcharts.helm.cattle.io/values";
/// The ClusterRole the helm Jobs' ServiceAccounts are bound to.
pub const JOB_CLUSTER_ROLE: &str = "cluster-admin";
/// Retries of a helm Job before it counts as failed (upstream's default).
pub const DEFAULT_BACKOFF_LIMIT: i64 = 1000;

/// What the controller fills in that is not in the HelmChart.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The image of the helm Job's pod (the addon image).
    pub default_image: String,
    /// The apiserver a bootstrap Job (host network) talks to: this
    /// server's address and port.
    pub bootstrap_api: (String, u16),
}

/// The HelmChart fields the Job needs (`spec` as upstream names them).
fn spec(chart: &Value) -> &Value {
    &chart["spec"]
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// The chart's name.
pub fn name(chart: &Value) -> &str {
    chart["metadata"]["name"].as_str().unwrap_or("")
}

/// The chart's namespace.
pub fn namespace(chart: &Value) -> &str {
    chart["metadata"]["namespace"].as_str().unwrap_or("default")
}

/// Whether the chart is being deleted.
pub fn deleting(chart: &Value) -> bool {
    !chart["metadata"]["deletionTimestamp"].is_null()
}

/// `helm-install-<name>`, or `helm-delete-<name>` while it is deleted.
pub fn job_name(chart: &Value) -> String {
    let action = if deleting(chart) { "delete" } else { "install" };
    format!("helm-{action}-{}", name(chart))
}

/// Whether this controller acts on the chart: it names a chart (by
/// `chart` or `chartContent`) and is not marked unmanaged.
pub fn managed(chart: &Value) -> bool {
    let sp = spec(chart);
    if s(sp, "chart").is_empty() && s(sp, "chartContent").is_empty() {
        return false;
    }
    chart["metadata"]["annotations"]
        .get("helmcharts.helm.cattle.io/unmanaged")
        .is_none()
}

/// The failure policy in force: the HelmChartConfig's, else the chart's,
/// else `reinstall`.
pub fn failure_policy(chart: &Value, config: Option<&Value>) -> String {
    let from_config = config.map(|c| s(&c["spec"], "failurePolicy")).unwrap_or("");
    let from_chart = s(spec(chart), "failurePolicy");
    [from_config, from_chart, "reinstall"]
        .into_iter()
        .find(|p| !p.is_empty())
        .unwrap_or("reinstall")
        .to_string()
}

/// Where the chart comes from, for events (upstream's wording).
pub fn chart_source(chart: &Value) -> String {
    let sp = spec(chart);
    let (c, v, r) = (s(sp, "chart"), s(sp, "version"), s(sp, "repo"));
    if !s(sp, "chartContent").is_empty() {
        return "inline spec.chartContent".into();
    }
    if c.contains("://") {
        return c.into();
    }
    if !v.is_empty() {
        return format!("{c} version {v} from chart repository {r}");
    }
    format!("latest stable version of {c} from chart repository {r}")
}

/// helm's rule for `--set` values: integers, booleans and null are
/// typed, the rest are strings (`--set-string`).
fn typed(v: &Value) -> Option<(bool, String)> {
    match v {
        Value::Number(n) => Some((true, n.to_string())),
        Value::Bool(b) => Some((true, b.to_string())),
        Value::String(s) => {
            let lower = s.to_ascii_lowercase();
            Some((
                matches!(lower.as_str(), "true" | "false" | "null"),
                s.clone(),
            ))
        }
        _ => None,
    }
}

/// Escapes unescaped commas of a `--set-string` value (helm splits on
/// them).
fn escape_commas(v: &str) -> String {
    let mut out = String::new();
    let mut backslashes = 0;
    for ch in v.chars() {
        if ch == ',' && backslashes % 2 == 0 {
            out.push('\\');
        }
        backslashes = if ch == '\\' { backslashes + 1 } else { 0 };
        out.push(ch);
    }
    out
}

/// The arguments of `rke2 helm-job` (after the subcommand).
pub fn args(chart: &Value) -> Vec<String> {
    if deleting(chart) {
        return vec!["delete".into()];
    }
    let sp = spec(chart);
    let mut a = vec!["install".to_string()];
    if !s(sp, "targetNamespace").is_empty() {
        a.extend(["--namespace".into(), s(sp, "targetNamespace").into()]);
    }
    if sp["createNamespace"] == true {
        a.push("--create-namespace".into());
    }
    if sp["takeOwnership"] == true {
        a.push("--take-ownership".into());
    }
    if !s(sp, "version").is_empty() {
        a.extend(["--version".into(), s(sp, "version").into()]);
    }
    if let Some(set) = sp["set"].as_object() {
        let sorted: BTreeMap<&String, &Value> = set.iter().collect();
        for (k, v) in sorted {
            match typed(v) {
                Some((true, v)) => a.extend(["--set".into(), format!("{k}={v}")]),
                Some((false, v)) => {
                    a.extend(["--set-string".into(), format!("{k}={}", escape_commas(&v))])
                }
                None => {}
            }
        }
    }
    a
}

fn to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_default()
}

/// The values Secret's data (key → content) and the files of the
/// `/config` volume (key → path), in the order helm reads them: the
/// chart's values, then the HelmChartConfig's over them.
pub fn values(
    chart: &Value,
    config: Option<&Value>,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let sp = spec(chart);
    let mut data = BTreeMap::new();
    let mut items = Vec::new();
    let mut add = |key: &str, path: &str, content: String| {
        data.insert(key.to_string(), content);
        items.push((key.to_string(), path.to_string()));
    };
    if !s(sp, "valuesContent").is_empty() {
        add(
            "HelmChartValuesContent",
            "values-0-000-HelmChart-ValuesContent.yaml",
            s(sp, "valuesContent").into(),
        );
    }
    if sp["values"].as_object().is_some_and(|m| !m.is_empty()) {
        add(
            "HelmChartValues",
            "values-0-001-HelmChart-Values.yaml",
            to_yaml(&sp["values"]),
        );
    }
    if !s(sp, "repoCA").is_empty() {
        add("RepoCA", "ca-file.pem", s(sp, "repoCA").into());
    }
    if let Some(c) = config {
        let cs = &c["spec"];
        if !s(cs, "valuesContent").is_empty() {
            add(
                "HelmChartConfigValuesContent",
                "values-1-000-HelmChartConfig-ValuesContent.yaml",
                s(cs, "valuesContent").into(),
            );
        }
        if cs["values"].as_object().is_some_and(|m| !m.is_empty()) {
            add(
                "HelmChartConfigValues",
                "values-1-001-HelmChartConfig-Values.yaml",
                to_yaml(&cs["values"]),
            );
        }
    }
    (data, items)
}

fn owner(chart: &Value) -> Value {
    json!([{
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "name": name(chart),
        "uid": chart["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": false,
    }])
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Desired {
    /// `helm-<name>` in the chart's namespace.
    pub service_account: Value,
    /// `helm-<namespace>-<name>` → `cluster-admin`.
    pub role_binding: Value,
    /// `chart-values-<name>` (not for the delete Job).
    pub values_secret: Option<Value>,
    /// `chart-content-<name>` (not for the delete Job).
    pub content_config_map: Option<Value>,
    /// The Job.
    pub job: Value,
    /// The hash of the inputs (`SHA256=<HEX>`), also on the Job's template.
    pub hash: String,
}

/// The ServiceAccount name of a chart's Jobs.
pub fn service_account_name(chart: &Value) -> String {
    format!("helm-{}", name(chart))
}

/// The ClusterRoleBinding name of a chart's Jobs.
pub fn role_binding_name(chart: &Value) -> String {
    format!("helm-{}-{}", namespace(chart), name(chart))
}

/// Builds the Job and its objects for `chart` (with its HelmChartConfig).
pub fn desired(chart: &Value, config: Option<&Value>, settings: &JobSettings) -> Desired {
    let sp = spec(chart);
    let (n, ns) = (name(chart), namespace(chart));
    let target_ns = match s(sp, "targetNamespace") {
        "" => ns,
        t => t,
    };
    let image = match s(sp, "jobImage").trim() {
        "" => settings.default_image.clone(),
        i => i.to_string(),
    };
    let chart_ref = if !s(sp, "repo").is_empty() {
        format!("{n}/{}", s(sp, "chart"))
    } else {
        s(sp, "chart").to_string()
    };
    let driver = match s(sp, "driver") {
        "" => "secret",
        d => d,
    };
    let mut env = vec![
        ("NAME", n.to_string()),
        ("VERSION", s(sp, "version").to_string()),
        ("REPO", s(sp, "repo").to_string()),
        ("HELM_DRIVER", driver.to_string()),
        ("CHART_NAMESPACE", ns.to_string()),
        ("CHART", chart_ref),
        ("HELM_VERSION", s(sp, "helmVersion").to_string()),
        ("TARGET_NAMESPACE", target_ns.to_string()),
        (
            "AUTH_PASS_CREDENTIALS",
            (sp["authPassCredentials"] == true).to_string(),
        ),
        (
            "INSECURE_SKIP_TLS_VERIFY",
            (sp["insecureSkipTLSVerify"] == true).to_string(),
        ),
        ("PLAIN_HTTP", (sp["plainHTTP"] == true).to_string()),
    ];
    if !s(sp, "timeout").is_empty() {
        env.push(("TIMEOUT", s(sp, "timeout").to_string()));
    }
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {"medium": "Memory"}})];
    let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"})];
    let mut pod = Map::new();
    pod.insert("restartPolicy".into(), json!("OnFailure"));
    pod.insert(
        "serviceAccountName".into(),
        json!(service_account_name(chart)),
    );
    pod.insert("priorityClassName".into(), json!("system-cluster-critical"));
    let mut node_selector = json!({"kubernetes.io/os": "linux"});
    if sp["bootstrap"] == true {
        node_selector["node-role.kubernetes.io/control-plane"] = json!("true");
        pod.insert("hostNetwork".into(), json!(true));
        pod.insert(
            "tolerations".into(),
            json!([
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"},
                {"key": "node.cloudprovider.kubernetes.io/uninitialized", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                {"key": "CriticalAddonsOnly", "operator": "Exists"},
                {"key": "node-role.kubernetes.io/etcd", "operator": "Exists", "effect": "NoExecute"},
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
            ]),
        );
        env.push(("KUBERNETES_SERVICE_HOST", settings.bootstrap_api.0.clone()));
        env.push((
            "KUBERNETES_SERVICE_PORT",
            settings.bootstrap_api.1.to_string(),
        ));
        env.push(("BOOTSTRAP", "true".into()));
    }
    pod.insert("nodeSelector".into(), node_selector);
    if sp["podSecurityContext"].is_object() {
        pod.insert("securityContext".into(), sp["podSecurityContext"].clone());
    }
    let (values_secret, content_config_map) = if deleting(chart) {
        (None, None)
    } else {
        let (data, items) = values(chart, config);
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("chart-values-{n}"), "namespace": ns,
                "ownerReferences": owner(chart)},
            "type": VALUES_SECRET_TYPE,
            "data": data.iter().map(|(k, v)| (k.clone(), json!(B64.encode(v)))).collect::<Map<String, Value>>(),
        });
        let mut cm_data = BTreeMap::new();
        if !s(sp, "chartContent").is_empty() {
            cm_data.insert(format!("{n}.tgz.base64"), s(sp, "chartContent").to_string());
        }
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("chart-content-{n}"), "namespace": ns,
                "ownerReferences": owner(chart)},
            "data": cm_data,
        });
        let items: Vec<Value> = items
            .iter()
            .map(|(k, p)| json!({"key": k, "path": p}))
            .collect();
        volumes.push(json!({"name": "values", "secret": {
            "secretName": format!("chart-values-{n}"), "defaultMode": 0o644, "items": items}}));
        mounts.push(json!({"name": "values", "mountPath": "/config"}));
        volumes.push(json!({"name": "content", "configMap": {
            "name": format!("chart-content-{n}"), "defaultMode": 0o644}}));
        mounts.push(json!({"name": "content", "mountPath": "/chart"}));
        (Some(secret), Some(cm))
    };
    if let Some(a) = sp["authSecret"]["name"].as_str().filter(|a| !a.is_empty()) {
        volumes.push(json!({"name": "auth", "secret": {"secretName": a, "defaultMode": 0o644}}));
        mounts.push(json!({"name": "auth", "mountPath": "/auth"}));
    }
    if let Some(c) = sp["repoCAConfigMap"]["name"]
        .as_str()
        .filter(|c| !c.is_empty())
    {
        volumes.push(json!({"name": "ca-files", "configMap": {"name": c, "defaultMode": 0o644}}));
        mounts.push(json!({"name": "ca-files", "mountPath": "/ca-files"}));
    }
    env.push(("FAILURE_POLICY", failure_policy(chart, config)));
    let backoff_limit = sp["backOffLimit"].as_i64().unwrap_or(DEFAULT_BACKOFF_LIMIT);
    let mut container = json!({
        "name": "helm",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": std::iter::once("helm-job".to_string()).chain(args(chart)).collect::<Vec<_>>(),
        "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "volumeMounts": mounts,
    });
    if sp["securityContext"].is_object() {
        container["securityContext"] = sp["securityContext"].clone();
    }
    pod.insert("containers".into(), json!([container]));
    pod.insert("volumes".into(), json!(volumes));
    let template = json!({
        "metadata": {"labels": {LABEL_CHART: n}, "annotations": {}},
        "spec": Value::Object(pod),
    });
    // The hash covers the pod template, the retry limit and the data of
    // the values and content objects, so any change of input re-runs helm.
    let mut h = Sha256::new();
    h.update(backoff_limit.to_string());
    h.update(serde_json::to_vec(&template).unwrap_or_default());
    for obj in [&values_secret, &content_config_map].into_iter().flatten() {
        if let Some(m) = obj["data"].as_object() {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            for (k, v) in sorted {
                h.update(k.as_bytes());
                h.update(v.as_str().unwrap_or("").as_bytes());
            }
        }
    }
    let hash = format!("SHA256={}", hex::encode_upper(h.finalize()));
    let mut template = template;
    template["metadata"]["annotations"][KEY_CONFIG_HASH] = json!(hash);
    let short: String = hash
        .trim_start_matches("SHA256=")
        .chars()
        .take(63)
        .collect();
    if let Some(envs) = template["spec"]["containers"][0]["env"].as_array_mut() {
        envs.push(json!({"name": "CONFIG_HASH", "value": short}));
    }
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(chart), "namespace": ns,
            "labels": {LABEL_CHART: n},
            "annotations": {KEY_CONFIG_HASH: hash},
            "ownerReferences": owner(chart)},
        "spec": {"backoffLimit": backoff_limit, "template": template},
    });
    Desired {
        service_account: json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": service_account_name(chart), "namespace": ns,
                "ownerReferences": owner(chart)},
            "automountServiceAccountToken": true,
        }),
        role_binding: json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role_binding_name(chart), "labels": {LABEL_CHART: n}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": JOB_CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": service_account_name(chart), "namespace": ns}],
        }),
        values_secret,
        content_config_map,
        job,
        hash,
    }
}

/// The hash a Job was made for.
pub fn hash_of(job: &Value) -> &str {
    job["metadata"]["annotations"][KEY_CONFIG_HASH]
        .as_str()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JobSettings {
        JobSettings {
            default_image: "rke2.local/rke2-addons:v1".into(),
            bootstrap_api: ("127.0.0.1".into(), 6443),
        }
    }

    fn chart(spec: Value) -> Value {
        json!({"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
            "metadata": {"name": "web", "namespace": "kube-system", "uid": "u1"},
            "spec": spec})
    }

    fn env(job: &Value) -> BTreeMap<String, String> {
        job["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    #[test]
    fn an_install_job_as_upstream_names_it() {
        let c = chart(
            json!({"chart": "nginx", "repo": "http://r/", "version": "1.2.3",
            "targetNamespace": "web", "createNamespace": true,
            "set": {"replicas": 2, "name": "a,b", "enabled": "true"}}),
        );
        let d = desired(&c, None, &settings());
        assert_eq!(d.job["metadata"]["name"], "helm-install-web");
        assert_eq!(d.service_account["metadata"]["name"], "helm-web");
        assert_eq!(d.role_binding["metadata"]["name"], "helm-kube-system-web");
        assert_eq!(d.role_binding["roleRef"]["name"], "cluster-admin");
        let args = &d.job["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(
            args,
            &json!([
                "helm-job",
                "install",
                "--namespace",
                "web",
                "--create-namespace",
                "--version",
                "1.2.3",
                "--set",
                "enabled=true",
                "--set-string",
                "name=a\\,b",
                "--set",
                "replicas=2"
            ])
        );
        let e = env(&d.job);
        assert_eq!(e["CHART"], "web/nginx");
        assert_eq!(e["TARGET_NAMESPACE"], "web");
        assert_eq!(e["FAILURE_POLICY"], "reinstall");
        assert_eq!(e["CONFIG_HASH"].len(), 63);
        assert!(d.hash.starts_with("SHA256="));
        assert_eq!(hash_of(&d.job), d.hash);
        assert_eq!(d.job["spec"]["backoffLimit"], 1000);
        assert!(d.job["spec"]["template"]["spec"]["hostNetwork"].is_null());
    }

    #[test]
    fn a_config_changes_the_hash_and_comes_after_the_charts_values() {
        let c = chart(json!({"chartContent": "AAAA", "valuesContent": "a: 1\n"}));
        let plain = desired(&c, None, &settings());
        let cfg = json!({"spec": {"valuesContent": "a: 2\n", "failurePolicy": "abort"}});
        let tuned = desired(&c, Some(&cfg), &settings());
        assert_ne!(plain.hash, tuned.hash);
        let (_, items) = values(&c, Some(&cfg));
        let paths: Vec<&str> = items.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "values-0-000-HelmChart-ValuesContent.yaml",
                "values-1-000-HelmChartConfig-ValuesContent.yaml"
            ]
        );
        assert_eq!(env(&tuned.job)["FAILURE_POLICY"], "abort");
        assert_eq!(
            tuned.content_config_map.unwrap()["data"]["web.tgz.base64"],
            "AAAA"
        );
        // Same inputs, same hash: a restart re-runs nothing.
        assert_eq!(desired(&c, Some(&cfg), &settings()).hash, tuned.hash);
    }

    #[test]
    fn bootstrap_runs_on_the_host_network_tolerating_everything() {
        let c = chart(json!({"chartContent": "AAAA", "bootstrap": true}));
        let d = desired(&c, None, &settings());
        let pod = &d.job["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(
            pod["nodeSelector"]["node-role.kubernetes.io/control-plane"],
            "true"
        );
        assert!(
            pod["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "CriticalAddonsOnly")
        );
        let e = env(&d.job);
        assert_eq!(e["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(e["BOOTSTRAP"], "true");
    }

    #[test]
    fn the_delete_job_uninstalls_without_values() {
        let mut c = chart(json!({"chartContent": "AAAA"}));
        c["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let d = desired(&c, None, &settings());
        assert_eq!(d.job["metadata"]["name"], "helm-delete-web");
        assert_eq!(
            d.job["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["helm-job", "delete"])
        );
        assert!(d.values_secret.is_none());
        assert!(managed(&c));
        assert!(!managed(&chart(json!({}))));
    }
}
