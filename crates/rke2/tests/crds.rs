//! CustomResourceDefinitions against a real `rke2 server` with every real
//! kubectl (`rke2_testbed::kubectls()`): a CRD becomes Established within
//! moments, its objects go through create/get/list/watch/patch (JSON,
//! merge, server-side apply)/scale/delete, printer columns, short names,
//! categories and selectable fields work as kubectl users know them, and
//! deleting the CRD deletes its objects and its endpoints.

use std::path::Path;
use std::process::Command;
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
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    port: {type: integer}
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
    // Server-side apply merges a map-list by its keys: an element another
    // writer added stays, the applied one is merged in.
    k.ok(&[
        "patch",
        "wd",
        "c",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"ports":[{"name":"a","port":1}]}}"#,
    ])?;
    k.ok_in(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "ssa-test",
            "-f",
            "-",
        ],
        Some(&format!(
            "{}  ports:\n  - name: b\n    port: 2\n",
            widget("c", &ns, "blue", 1)
        )),
    )?;
    let c = k.json(&["get", "wd", "c", "-n", &ns])?;
    let ports = c["spec"]["ports"].as_array().cloned().unwrap_or_default();
    ensure!(
        ports.len() == 2
            && ports.contains(&serde_json::json!({"name": "a", "port": 1}))
            && ports.contains(&serde_json::json!({"name": "b", "port": 2})),
        "list-map merge: {}",
        c["spec"]
    );
    // Strategic merge patches are not served for custom types (upstream).
    let err = k.fails_in(
        &[
            "patch",
            "wd",
            "c",
            "-n",
            &ns,
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ],
        None,
    )?;
    ensure!(
        err.contains("UnsupportedMediaType") || err.contains("unknown format"),
        "SMP: {err}"
    );
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

fn crd_with(name: &str, schema: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {name}s.bad.rke2.io\nspec:\n  group: bad.rke2.io\n  scope: Namespaced\n  names: {{plural: {name}s, kind: {kind}}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n{schema}",
        kind = name[..1].to_uppercase() + &name[1..]
    )
}

/// Malformed CRDs get a 422 naming the field, and nothing is created.
fn bad_crds_are_refused(k: &Kubectl) -> Result<()> {
    let cases = [
        (
            "nostruct",
            "        type: object\n        properties:\n          spec:\n            properties:\n              a: {type: string}\n",
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value",
        ),
        (
            "badcel",
            "        type: object\n        properties:\n          spec:\n            type: object\n            x-kubernetes-validations:\n            - rule: \"self.nope +\"\n",
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
        ),
        (
            "costly",
            "        type: object\n        properties:\n          spec:\n            type: object\n            properties:\n              l:\n                type: array\n                items: {type: string}\n            x-kubernetes-validations:\n            - rule: \"self.l.all(a, self.l.all(b, self.l.all(c, a + b + c != 'x')))\"\n",
            "cost",
        ),
    ];
    for (name, schema, want) in cases {
        let err = k.fails_in(&["create", "-f", "-"], Some(&crd_with(name, schema)))?;
        ensure!(err.contains(want), "{name}: want {want:?} in {err}");
        let out = k.run(&["get", "crd", &format!("{name}s.bad.rke2.io")], None)?;
        ensure!(!out.status.success(), "{name}: a refused CRD exists");
    }
    let wrong_name =
        crd_with("named", "        type: object\n").replace("name: nameds.bad", "name: other.bad");
    let err = k.fails_in(&["create", "-f", "-"], Some(&wrong_name))?;
    ensure!(
        err.contains("must be spec.names.plural+\".\"+spec.group"),
        "{err}"
    );
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
    bad_crds_are_refused(&admin)?;
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

/// Where the install script puts helm.
const HELM: &str = "/usr/local/lib/rke2-test/helm";

fn testdata(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../apiextensions/testdata")
        .join(name)
}

const GATEWAY_CRDS: &[&str] = &[
    "gateway.networking.k8s.io_gatewayclasses.yaml",
    "gateway.networking.k8s.io_gateways.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
    "gateway.networking.k8s.io_referencegrants.yaml",
];

fn route(name: &str, ns: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  parentRefs:\n  - name: gw\n  hostnames: [\"{name}.test\"]\n  rules:\n  - backendRefs:\n    - {backend}\n"
    )
}

/// Real CRDs nobody here wrote (Gateway API: several versions, defaults,
/// CEL rules, printer columns; cert-manager: large schemas), applied with
/// kubectl and with helm's `crds/` folder, used through kubectl, the
/// Python dynamic client and kube-rs' `DynamicObject`.
#[tokio::test(flavor = "multi_thread")]
async fn real_crds_with_kubectl_helm_python_and_kube_rs() -> Result<()> {
    let server = start_server().await;
    let (minor, bin) = kubectls()?.last().cloned().context("no kubectl")?;
    let k = Kubectl::for_server(&server, minor, bin)?;
    for f in GATEWAY_CRDS {
        let path = testdata(f);
        // Server-side: the CRDs are too large for client-side apply's
        // last-applied annotation, with kube-apiserver too.
        k.ok(&[
            "apply",
            "--server-side",
            "-f",
            path.to_str().context("path")?,
        ])?;
    }
    for crd in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "referencegrants",
    ] {
        established(&k, &format!("{crd}.gateway.networking.k8s.io")).await?;
    }
    let ns = "gw";
    k.ok(&["create", "namespace", ns])?;
    k.ok_in(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: rke2\nspec:\n  controllerName: example.com/gateway\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: {ns}\nspec:\n  gatewayClassName: rke2\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 80\n"
        )),
    )?;
    k.ok_in(
        &["apply", "-f", "-"],
        Some(&route("a", ns, "{name: web, port: 80}")),
    )?;
    let a = k.json(&["get", "httproute", "a", "-n", ns])?;
    ensure!(
        a["spec"]["rules"][0]["matches"][0]["path"]
            == serde_json::json!({"type": "PathPrefix", "value": "/"}),
        "HTTPRoute defaults: {a}"
    );
    ensure!(
        a["spec"]["parentRefs"][0]["group"] == "gateway.networking.k8s.io"
            && a["spec"]["parentRefs"][0]["kind"] == "Gateway",
        "parentRef defaults: {a}"
    );
    let table = k.ok(&["get", "httproutes", "-n", ns])?;
    let (header, cells) = row(&table, "a").with_context(|| format!("no row in {table}"))?;
    ensure!(header == ["NAME", "HOSTNAMES", "AGE"], "{header:?}");
    ensure!(cells[1] == r#"["a.test"]"#, "{cells:?}");
    let beta: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        &format!("/apis/gateway.networking.k8s.io/v1beta1/namespaces/{ns}/httproutes/a"),
    ])?)?;
    ensure!(
        beta["apiVersion"] == "gateway.networking.k8s.io/v1beta1",
        "{beta}"
    );
    let err = k.fails_in(&["apply", "-f", "-"], Some(&route("b", ns, "{name: web}")))?;
    ensure!(
        err.contains("spec.rules[0].backendRefs[0]")
            && err.contains("Must have port for Service reference"),
        "CEL rule of a real CRD: {err}"
    );
    let gw = k.ok(&["get", "gateways", "-n", ns])?;
    ensure!(row(&gw, "gw").is_some(), "{gw}");
    let explained = k.ok(&["explain", "httproute.spec.rules.backendRefs"])?;
    ensure!(explained.contains("port"), "explain: {explained}");

    // helm installs a chart's crds/ before its templates.
    let chart = server.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("crds"))?;
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: issuer\nversion: 0.1.0\n",
    )?;
    for f in [
        "cert-manager.io_issuers.yaml",
        "cert-manager.io_certificates.yaml",
    ] {
        std::fs::copy(testdata(f), chart.join("crds").join(f))?;
    }
    std::fs::write(
        chart.join("templates/issuer.yaml"),
        "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata:\n  name: selfsigned\nspec:\n  selfSigned: {}\n---\napiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  secretName: web-tls\n  dnsNames: [web.test]\n  issuerRef:\n    name: selfsigned\n",
    )?;
    let out = Command::new(HELM)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .args([
            "install",
            "issuer",
            chart.to_str().context("path")?,
            "-n",
            ns,
            "--wait",
            "--timeout",
            "60s",
        ])
        .output()
        .context("running helm (bash scripts/install.sh installs it)")?;
    ensure!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = k.ok(&["get", "certs", "-n", ns])?;
    ensure!(
        row(&certs, "web").is_some(),
        "cert-manager Certificate via helm: {certs}"
    );
    let issuer = k.json(&["get", "issuer", "selfsigned", "-n", ns])?;
    ensure!(issuer["spec"]["selfSigned"].is_object(), "{issuer}");

    // The Python dynamic client.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/dynamic_crds.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&server.kubeconfig)
        .arg(ns)
        .output()
        .context("python3 (bash scripts/install.sh installs the kubernetes client)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "tests/py/dynamic_crds.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kube-rs: discovery finds the custom kinds; DynamicObject through
    // Api::all_with and Api::namespaced_with, a watch included.
    let client = server.client().await?;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await?;
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "HTTPRoute")
        .context("kube-rs discovery has no HTTPRoute")?;
    ensure!(ar.version == "v1", "preferred version {}", ar.version);
    ensure!(
        caps.scope == kube::discovery::Scope::Namespaced,
        "{:?}",
        caps.scope
    );
    let all: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    let listed = all.list(&Default::default()).await?;
    ensure!(
        listed
            .items
            .iter()
            .any(|o| o.metadata.name.as_deref() == Some("a")),
        "all_with list"
    );
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, ns, &ar);
    let mut watch = Box::pin(
        api.watch(&kube::api::WatchParams::default().timeout(30), "0")
            .await?,
    );
    let mut obj = kube::api::DynamicObject::new("rs", &ar).within(ns);
    obj.data = serde_json::json!({"spec": {"hostnames": ["rs.test"], "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]}});
    api.create(&Default::default(), &obj).await?;
    let seen = tokio::time::timeout(DEADLINE, async {
        use futures::StreamExt;
        while let Some(ev) = watch.next().await {
            if let Ok(kube::api::WatchEvent::Added(o)) = ev
                && o.metadata.name.as_deref() == Some("rs")
            {
                return Some(o);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("kube-rs watch saw no ADDED rs")?;
    ensure!(
        seen.data["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/",
        "{:?}",
        seen.data
    );
    api.delete("rs", &Default::default()).await?;
    Ok(())
}
