//! CustomResourceDefinitions against a real `rke2 server` with every real
//! kubectl (`rke2_testbed::kubectls()`): a CRD becomes Established within
//! moments, its objects go through create/get/list/watch/patch (JSON,
//! merge, server-side apply)/scale/delete, printer columns, short names,
//! categories and selectable fields work as kubectl users know them, and
//! deleting the CRD deletes its objects and its endpoints.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rke2_testbed::kubectl::{Kubectl, row};
use rke2_testbed::{Server, ServerOpts, eventually, kubectls};
use serde_json::Value;

/// Generous deadline for anything that converges (2 busy cores).
const DEADLINE: Duration = Duration::from_secs(60);

async fn start_server() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(Path::new(env!("CARGO_BIN_EXE_rke2")), ServerOpts::default())
        .expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    server
}

/// A namespaced, two-version CRD with printer columns, short names, a
/// category, status and scale subresources and a selectable field.
const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.rke2.io
spec:
  group: test.rke2.io
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    selectableFields:
    - jsonPath: .spec.color
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - name: Color
      type: string
      jsonPath: .spec.color
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Ready
      type: string
      jsonPath: .status.conditions[?(@.type=="Ready")].status
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              color:
                type: string
                default: blue
                enum: [blue, red, green]
              replicas:
                type: integer
                minimum: 0
              size:
                x-kubernetes-int-or-string: true
            x-kubernetes-validations:
            - rule: "!has(self.replicas) || self.replicas <= 100"
              message: replicas must be at most 100
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn widget(name: &str, ns: &str, color: &str, replicas: i64) -> String {
    format!(
        "apiVersion: test.rke2.io/v1\nkind: Widget\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: w\nspec:\n  color: {color}\n  replicas: {replicas}\n"
    )
}

async fn established(k: &Kubectl, crd: &str) -> Result<Duration> {
    let start = Instant::now();
    eventually(DEADLINE, &format!("{crd} Established"), || async {
        let v = k.json(&["get", "crd", crd]).ok()?;
        v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
            .then_some(())
    })
    .await?;
    Ok(start.elapsed())
}

async fn objects_with(k: &Kubectl) -> Result<()> {
    let v = format!("v{}", k.minor);
    let ns = format!("crd-{v}");
    k.ok(&["create", "namespace", &ns])?;
    // Create (apply), get, list through the short name and the category.
    k.ok_in(&["apply", "-f", "-"], Some(&widget("a", &ns, "red", 2)))?;
    k.ok_in(&["create", "-f", "-"], Some(&widget("b", &ns, "green", 1)))?;
    let a = k.json(&["get", "widget", "a", "-n", &ns])?;
    ensure!(a["apiVersion"] == "test.rke2.io/v1", "{a}");
    ensure!(a["metadata"]["generation"] == 1, "{a}");
    let table = k.ok(&["get", "wd", "-n", &ns])?;
    let (header, cells) = row(&table, "a").with_context(|| format!("no row a in {table}"))?;
    ensure!(
        header == ["NAME", "COLOR", "REPLICAS", "READY", "AGE"],
        "kubectl 1.{}: header {header:?}",
        k.minor
    );
    ensure!(cells[1] == "red" && cells[2] == "2", "cells {cells:?}");
    let all = k.ok(&["get", "all", "-n", &ns])?;
    ensure!(all.contains("widget.test.rke2.io/a"), "get all: {all}");
    // Selectable field.
    let red = k.ok(&[
        "get",
        "wd",
        "-n",
        &ns,
        "--field-selector",
        "spec.color=red",
        "-o",
        "name",
    ])?;
    ensure!(
        red.trim() == "widget.test.rke2.io/a",
        "field selector: {red}"
    );
    // Patches: merge, JSON, server-side apply.
    k.ok(&[
        "patch",
        "wd",
        "a",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"color":"green"}}"#,
    ])?;
    k.ok(&[
        "patch",
        "wd",
        "a",
        "-n",
        &ns,
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ])?;
    let a = k.json(&["get", "wd", "a", "-n", &ns])?;
    ensure!(
        a["spec"]["color"] == "green" && a["spec"]["replicas"] == 4,
        "{a}"
    );
    ensure!(
        a["metadata"]["generation"] == 3,
        "generation after two spec patches: {a}"
    );
    k.ok_in(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "ssa-test",
            "-f",
            "-",
        ],
        Some(&widget("c", &ns, "blue", 1)),
    )?;
    let c = k.json(&["get", "wd", "c", "-n", &ns, "--show-managed-fields"])?;
    let managers: Vec<&str> = c["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    ensure!(managers.contains(&"ssa-test"), "managedFields: {c}");
    // Status subresource: a write of the object keeps the stored status;
    // the status path writes it, and the printer's filter column reads it.
    k.ok(&[
        "patch", "wd", "a", "-n", &ns, "--subresource", "status", "--type", "merge", "-p",
        r#"{"status":{"replicas":4,"selector":"app=w","conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])?;
    k.ok(&[
        "patch",
        "wd",
        "a",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ])?;
    let a = k.json(&["get", "wd", "a", "-n", &ns])?;
    ensure!(
        a["status"]["replicas"] == 4,
        "status written through the main path: {a}"
    );
    let table = k.ok(&["get", "wd", "a", "-n", &ns])?;
    let (_, cells) = row(&table, "a").context("row a")?;
    ensure!(cells[3] == "True", "READY cell {cells:?}");
    // Scale subresource.
    k.ok(&["scale", "wd", "a", "-n", &ns, "--replicas", "7"])?;
    let scale: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        &format!("/apis/test.rke2.io/v1/namespaces/{ns}/widgets/a/scale"),
    ])?)?;
    ensure!(scale["spec"]["replicas"] == 7, "scale: {scale}");
    ensure!(
        scale["status"]["selector"] == "app=w",
        "scale selector: {scale}"
    );
    // The other served version reads the same object.
    let beta: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        &format!("/apis/test.rke2.io/v1beta1/namespaces/{ns}/widgets/a"),
    ])?)?;
    ensure!(beta["apiVersion"] == "test.rke2.io/v1beta1", "{beta}");
    ensure!(beta["spec"]["replicas"] == 7, "{beta}");
    // Schema: defaults appear, unknown fields are refused under Strict
    // (kubectl's default) and pruned otherwise, invalid values are refused
    // with the field named, CEL rules hold.
    k.ok_in(
        &["create", "-f", "-"],
        Some(&format!("apiVersion: test.rke2.io/v1\nkind: Widget\nmetadata:\n  name: d\n  namespace: {ns}\nspec:\n  replicas: 1\n")),
    )?;
    let d = k.json(&["get", "wd", "d", "-n", &ns])?;
    ensure!(d["spec"]["color"] == "blue", "default not applied: {d}");
    let bogus = format!(
        "apiVersion: test.rke2.io/v1\nkind: Widget\nmetadata:\n  name: e\n  namespace: {ns}\nspec:\n  replicas: 1\n  bogus: 1\n"
    );
    let err = k.fails_in(&["create", "-f", "-"], Some(&bogus))?;
    ensure!(
        err.contains(r#"unknown field "spec.bogus""#),
        "strict: {err}"
    );
    k.ok_in(&["create", "--validate=false", "-f", "-"], Some(&bogus))?;
    let e = k.json(&["get", "wd", "e", "-n", &ns])?;
    ensure!(e["spec"].get("bogus").is_none(), "not pruned: {e}");
    let err = k.fails_in(&["create", "-f", "-"], Some(&widget("f", &ns, "pink", 1)))?;
    ensure!(
        err.contains(
            r#"spec.color: Unsupported value: "pink": supported values: "blue", "red", "green""#
        ),
        "enum: {err}"
    );
    let err = k.fails_in(&["create", "-f", "-"], Some(&widget("f", &ns, "red", 101)))?;
    ensure!(
        err.contains("replicas must be at most 100"),
        "CEL rule: {err}"
    );
    let err = k.fails_in(&["create", "-f", "-"], Some(&widget("f", &ns, "red", -1)))?;
    ensure!(
        err.contains("spec.replicas: Invalid value: -1"),
        "minimum: {err}"
    );
    // kubectl explain reads the CRD's schema from /openapi/v3.
    let explained = k.ok(&["explain", "widgets.spec"])?;
    ensure!(
        explained.contains("Widget")
            && explained.contains("color")
            && explained.contains("replicas"),
        "kubectl 1.{} explain: {explained}",
        k.minor
    );
    // Delete.
    k.ok(&["delete", "wd", "b", "-n", &ns])?;
    let names = k.ok(&["get", "wd", "-n", &ns, "-o", "name"])?;
    ensure!(!names.contains("/b"), "b still listed: {names}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_resources_with_every_kubectl() -> Result<()> {
    let server = start_server().await;
    let kubectls = kubectls()?;
    let (newest_minor, newest_bin) = kubectls.last().cloned().context("no kubectl")?;
    let admin = Kubectl::for_server(&server, newest_minor, newest_bin)?;
    admin.ok_in(&["apply", "-f", "-"], Some(WIDGET_CRD))?;
    let took = established(&admin, "widgets.test.rke2.io").await?;
    println!("CRD established after {took:?}");
    let crd = admin.json(&["get", "crd", "widgets.test.rke2.io"])?;
    ensure!(
        crd["status"]["acceptedNames"]["kind"] == "Widget"
            && crd["status"]["storedVersions"] == serde_json::json!(["v1"]),
        "{}",
        crd["status"]
    );
    for (minor, bin) in &kubectls {
        let k = Kubectl::for_server(&server, *minor, bin.clone())?;
        objects_with(&k)
            .await
            .with_context(|| format!("kubectl 1.{minor}"))?;
    }
    // Deleting the CRD deletes its objects, then the CRD and its endpoints.
    admin.ok(&[
        "delete",
        "crd",
        "widgets.test.rke2.io",
        "--wait=true",
        "--timeout=60s",
    ])?;
    eventually(DEADLINE, "widgets endpoint gone", || async {
        let out = admin
            .run(&["get", "--raw", "/apis/test.rke2.io/v1/widgets"], None)
            .ok()?;
        (!out.status.success()).then_some(())
    })
    .await?;
    // Created again, the type starts empty.
    admin.ok_in(&["apply", "-f", "-"], Some(WIDGET_CRD))?;
    established(&admin, "widgets.test.rke2.io").await?;
    let list: Value =
        serde_json::from_str(&admin.ok(&["get", "--raw", "/apis/test.rke2.io/v1/widgets"])?)?;
    ensure!(
        list["items"].as_array().is_some_and(|a| a.is_empty()),
        "{list}"
    );
    Ok(())
}
