//! The `helm.cattle.io/v1` CustomResourceDefinitions (HelmChart and
//! HelmChartConfig), with the fields, short names and printer columns of
//! k3s-io/helm-controller's, written here and created through the API.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The field manager the CRDs are applied with.
const MANAGER: &str = "rke2-helm-controller";

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn boolean(description: &str) -> Value {
    json!({"type": "boolean", "description": description})
}

fn local_ref(description: &str) -> Value {
    json!({"type": "object", "description": description,
        "properties": {"name": {"type": "string", "default": ""}},
        "x-kubernetes-map-type": "atomic"})
}

fn failure_policy() -> Value {
    json!({"type": "string", "enum": ["abort", "reinstall", "retry"],
        "description": "What a failed install or upgrade leads to: `abort` leaves the release failed for an administrator, `reinstall` (the default) uninstalls and installs again, `retry` upgrades again."})
}

fn values_secrets() -> Value {
    json!({"type": "array", "description": "Values from keys of Secrets in the chart's namespace (`--values`).",
        "items": {"type": "object", "properties": {
            "name": {"type": "string"},
            "keys": {"type": "array", "items": {"type": "string"}},
            "ignoreUpdates": {"type": "boolean"}}}})
}

fn server_side() -> Value {
    json!({"type": "string", "enum": ["true", "false", "auto"],
        "description": "helm's `--server-side`."})
}

fn conditions() -> Value {
    json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        "description": "`JobCreated`: a Job installs or upgrades the chart; `Failed`: that Job failed.",
        "items": {"type": "object", "required": ["type", "status"], "properties": {
            "type": {"type": "string"},
            "status": {"type": "string"},
            "reason": {"type": "string"},
            "message": {"type": "string"}}}})
}

/// The HelmChart CRD (`helmcharts.helm.cattle.io`, short name `hc`).
pub fn helmchart_crd() -> Value {
    let spec = json!({
        "type": "object",
        "properties": {
            "targetNamespace": string("Namespace of the release (`--namespace`)."),
            "createNamespace": boolean("Create the target namespace if missing (`--create-namespace`)."),
            "chart": string("Chart name in the repository, or the URL of a chart archive (`CHART`)."),
            "version": string("Chart version in the repository (`--version`)."),
            "repo": string("Chart repository URL (`--repo`)."),
            "repoCA": string("PEM CA certificates to verify the repository with (`--ca-file`)."),
            "repoCAConfigMap": local_ref("ConfigMap of CA certificates for the repository."),
            "set": {"type": "object", "description": "Simple values (`--set`, `--set-string`); over the others.",
                "additionalProperties": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}},
            "values": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "description": "Values as structured YAML (`--values`), over valuesContent."},
            "valuesContent": string("Values as inline YAML (`--values`)."),
            "valuesSecrets": values_secrets(),
            "helmVersion": string("Deprecated; only v3 charts are supported."),
            "bootstrap": boolean("The chart is needed to bootstrap the cluster: its Job runs on the host network, on a control-plane node, tolerating the taints of a node that is not ready yet."),
            "takeOwnership": boolean("Adopt existing objects (`--take-ownership`)."),
            "serverSide": server_side(),
            "forceConflicts": boolean("helm's `--force-conflicts`."),
            "chartContent": string("Base64 chart archive (.tgz); overrides chart and version."),
            "jobImage": string("Image of the helm Job's pod."),
            "backOffLimit": {"type": "integer", "format": "int32", "description": "Retries before the helm Job counts as failed."},
            "timeout": string("Timeout of helm operations (`--timeout`), a duration such as 5m0s."),
            "failurePolicy": failure_policy(),
            "authSecret": local_ref("kubernetes.io/basic-auth Secret for the repository."),
            "authPassCredentials": boolean("Pass the credentials to all domains (`--pass-credentials`)."),
            "insecureSkipTLSVerify": boolean("Skip TLS verification of the download (`--insecure-skip-tls-verify`)."),
            "plainHTTP": boolean("Plain HTTP for the download (`--plain-http`)."),
            "dockerRegistrySecret": local_ref("kubernetes.io/dockerconfigjson Secret for an OCI registry."),
            "podSecurityContext": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "description": "PodSecurityContext of the helm Job's pod."},
            "securityContext": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "description": "SecurityContext of the helm Job's container."},
            "driver": {"type": "string", "enum": ["secret", "configmap"],
                "description": "helm's storage driver (`HELM_DRIVER`)."}
        }
    });
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "helmcharts.helm.cattle.io"},
        "spec": {
            "group": "helm.cattle.io",
            "names": {"kind": "HelmChart", "listKind": "HelmChartList", "plural": "helmcharts",
                "singular": "helmchart", "shortNames": ["hc"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"jsonPath": ".spec.repo", "name": "Repo", "type": "string"},
                    {"jsonPath": ".spec.chart", "name": "Chart", "type": "string"},
                    {"jsonPath": ".spec.version", "name": "Version", "type": "string"},
                    {"jsonPath": ".spec.targetNamespace", "name": "TargetNamespace", "type": "string"},
                    {"jsonPath": ".spec.bootstrap", "name": "Bootstrap", "type": "boolean"},
                    {"jsonPath": ".status.conditions[?(@.type=='Failed')].status", "name": "Failed", "type": "string"},
                    {"jsonPath": ".status.jobName", "name": "Job", "type": "string", "priority": 10}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "HelmChart: a Helm chart release installed, upgraded and uninstalled by a helm Job.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": {"type": "object", "properties": {
                            "jobName": string("The Job that installs or upgrades the chart."),
                            "conditions": conditions()
                        }}
                    }
                }}
            }]
        }
    })
}

/// The HelmChartConfig CRD (`helmchartconfigs.helm.cattle.io`, `hcc`):
/// values merged over those of the HelmChart of the same name and
/// namespace.
pub fn helmchartconfig_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "helmchartconfigs.helm.cattle.io"},
        "spec": {
            "group": "helm.cattle.io",
            "names": {"kind": "HelmChartConfig", "listKind": "HelmChartConfigList",
                "plural": "helmchartconfigs", "singular": "helmchartconfig", "shortNames": ["hcc"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "HelmChartConfig: more values for the HelmChart of the same name, merged over its own.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": {"type": "object", "properties": {
                            "values": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                "description": "Values as structured YAML, over valuesContent."},
                            "valuesContent": string("Values as inline YAML, over the HelmChart's."),
                            "valuesSecrets": values_secrets(),
                            "failurePolicy": failure_policy(),
                            "serverSide": server_side(),
                            "forceConflicts": boolean("helm's `--force-conflicts`.")
                        }}
                    }
                }}
            }]
        }
    })
}

/// Creates (or updates) both CRDs and waits until the apiserver serves
/// them, retrying until it does or `stop`. Run at every server start.
pub async fn ensure(client: kube::Client, stop: CancellationToken) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in [helmchart_crd(), helmchartconfig_crd()] {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        loop {
            let applied = api
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await;
            match applied {
                Ok(_) => {
                    info!(crd = %name, "CRD applied");
                    break;
                }
                Err(e) => warn!(crd = %name, error = %e, "applying CRD; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_decode_as_crds_with_upstreams_names() {
        let hc: CustomResourceDefinition = serde_json::from_value(helmchart_crd()).unwrap();
        assert_eq!(hc.spec.names.short_names, Some(vec!["hc".to_string()]));
        let v = &hc.spec.versions[0];
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Repo",
                "Chart",
                "Version",
                "TargetNamespace",
                "Bootstrap",
                "Failed",
                "Job"
            ]
        );
        let hcc: CustomResourceDefinition = serde_json::from_value(helmchartconfig_crd()).unwrap();
        assert_eq!(hcc.spec.names.short_names, Some(vec!["hcc".to_string()]));
    }
}
