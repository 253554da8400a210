//! The `custom` phase: what a custom type costs a write. Creates of
//! ConfigMaps and of custom objects (a CRD with a structural schema, a
//! default, an enum and a CEL rule, the kind of schema real operators
//! ship), the same payload and concurrency, in `--custom-runs` pairs whose
//! first side alternates. Phases `custom@<run>`, sides `ConfigMap` and
//! `custom object`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::api::PostParams;
use kube::core::Request;
use serde_json::json;

use crate::Bench;

const CRD: &str = "benchobjects.bench.rke2.io";

impl Bench {
    async fn establish_crd(&self) -> Result<()> {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": CRD},
            "spec": {
                "group": "bench.rke2.io",
                "scope": "Namespaced",
                "names": {"plural": "benchobjects", "singular": "benchobject", "kind": "BenchObject"},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "payload": {"type": "string", "maxLength": 1048576},
                                    "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "self.replicas <= 1000", "message": "at most 1000 replicas"}
                                ],
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        },
                    }},
                }],
            },
        });
        self.post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let req = Request::new("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
                .get(CRD, &Default::default())?;
            let text = self.kube.request_text(req).await?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let established = v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{CRD} not Established within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn custom(&self) -> Result<()> {
        self.establish_crd()
            .await
            .context("creating the bench CRD")?;
        let ns = self.args.namespace.clone();
        let n = self.args.ops;
        let payload = self.payload.clone();
        for run in 1..=self.args.custom_runs {
            let phase = format!("custom@{run}");
            for side in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
                let (kube, ns, payload) = (self.kube.clone(), ns.clone(), payload.clone());
                if side == 0 {
                    self.phase(&phase, "ConfigMap", n, move |i| {
                        let body = serde_json::to_vec(&json!({
                            "apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": format!("cmx-{run}-{i:06}"), "namespace": ns},
                            "data": {"payload": payload},
                        }));
                        let kube = kube.clone();
                        let path = format!("/api/v1/namespaces/{ns}/configmaps");
                        async move {
                            let req = Request::new(path).create(&PostParams::default(), body?)?;
                            Ok(kube.request_text(req).await?)
                        }
                    })
                    .await?;
                } else {
                    self.phase(&phase, "custom object", n, move |i| {
                        let body = serde_json::to_vec(&json!({
                            "apiVersion": "bench.rke2.io/v1", "kind": "BenchObject",
                            "metadata": {"name": format!("bo-{run}-{i:06}"), "namespace": ns},
                            "spec": {"payload": payload, "labels": {"app": "bench"}},
                        }));
                        let kube = kube.clone();
                        let path = format!("/apis/bench.rke2.io/v1/namespaces/{ns}/benchobjects");
                        async move {
                            let req = Request::new(path).create(&PostParams::default(), body?)?;
                            Ok(kube.request_text(req).await?)
                        }
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }
}
