//! The `rbac` phase: what authorization costs a request. The same paced
//! GETs (the create phase's ConfigMaps) as the admin, whose group
//! `system:masters` passes before any authorizer runs, and as a user with
//! a client certificate from the cluster's client CA whose only
//! permission is a Role bound to it, so RBAC answers every request. Run
//! at each count of `--rbac-bindings` (RoleBindings in the namespace,
//! all but one for other users): the subject index should keep the
//! user's cost flat as bindings grow. `--rbac-runs` repeats the pair,
//! alternating which side goes first, so that the p99 ratio can be taken
//! as a median over runs rather than from one noisy pair.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use kube::Client as Kube;
use kube::api::GetParams;
use serde_json::{Value, json};

use crate::{Bench, cm_path, name};

/// The user and group of the RBAC side's certificate.
const USER: &str = "bench-user";

impl Bench {
    /// A client for `USER`, its certificate issued by the client CA in
    /// `--client-ca-dir`, against the admin kubeconfig's server.
    async fn user_client(&self) -> Result<Kube> {
        let dir = self
            .args
            .client_ca_dir
            .as_ref()
            .context("the rbac phase needs --client-ca-dir (<data-dir>/server/tls)")?;
        let ca =
            rke2_trust::CertAuthority::load(&dir.join("client-ca.crt"), &dir.join("client-ca.key"))
                .context("loading the client CA")?;
        let (cert, key) = ca.issue(&rke2_trust::LeafSpec::client(USER, &["bench-devs"]))?;
        let mut kc = kube::config::Kubeconfig::read_from(&self.args.kubeconfig)?;
        let auth = kc
            .auth_infos
            .first_mut()
            .and_then(|a| a.auth_info.as_mut())
            .context("no user in the admin kubeconfig")?;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        auth.client_certificate_data = Some(b64.encode(cert));
        auth.client_key_data = Some(b64.encode(key).into());
        auth.client_certificate = None;
        auth.client_key = None;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(Kube::try_from(cfg)?)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<()> {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)?;
        match self.kube.request_text(req).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("POST {path}")),
        }
    }

    pub(crate) async fn rbac(&self) -> Result<()> {
        let ns = self.args.namespace.clone();
        let base = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}");
        self.post(
            &format!("{base}/roles"),
            json!({"metadata": {"name": "cm-reader"}, "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        )
        .await?;
        let binding = |name: String, user: &str| {
            json!({"metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
                "subjects": [{"kind": "User", "name": user}]})
        };
        self.post(
            &format!("{base}/rolebindings"),
            binding("bench-user".into(), USER),
        )
        .await?;
        let user = self.user_client().await?;
        let n = self.args.ops;
        // The binding reaches the watch caches quickly; wait for it.
        let t0 = std::time::Instant::now();
        loop {
            let req = cm_path(&ns).get(&name(0), &GetParams::default())?;
            match user.request_text(req).await {
                Ok(_) => break,
                Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                    eprintln!("[bench-api] waiting for the user's binding: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("the bench user cannot GET after 30 s: {e}"),
            }
        }
        // Warm both clients' connection pools, so neither side's first
        // measured requests pay TLS handshakes the other's did not.
        for client in [&self.kube, &user] {
            let gets = (0..self.args.concurrency * 20).map(|i| {
                let req = cm_path(&ns).get(&name(i % n), &GetParams::default());
                let client = client.clone();
                async move { client.request_text(req?).await.map_err(anyhow::Error::from) }
            });
            let results: Vec<Result<String>> = futures::stream::iter(gets)
                .buffer_unordered(self.args.concurrency)
                .collect()
                .await;
            for r in results {
                r?;
            }
        }
        let mut have = 1usize;
        for &target in &self.args.rbac_bindings {
            eprintln!("[bench-api] rbac: {target} RoleBindings in {ns}");
            let bodies: Vec<Value> = (have..target)
                .map(|i| binding(format!("other-{i:06}"), &format!("other-user-{i}")))
                .collect();
            let path = format!("{base}/rolebindings");
            let results: Vec<Result<()>> = futures::stream::iter(bodies)
                .map(|b| self.post(&path, b))
                .buffer_unordered(self.args.concurrency)
                .collect()
                .await;
            for r in results {
                r?;
            }
            have = have.max(target);
            for run in 1..=self.args.rbac_runs.max(1) {
                let phase = format!("rbac@{target}/{run}");
                let user_first = run % 2 == 0;
                for user_side in [user_first, !user_first] {
                    let client = if user_side {
                        user.clone()
                    } else {
                        self.kube.clone()
                    };
                    let side = if user_side {
                        "API GET as a user RBAC authorizes"
                    } else {
                        "admin GET (system:masters, no authorizer)"
                    };
                    let ns2 = ns.clone();
                    self.paced(&phase, side, move |i| {
                        let client = client.clone();
                        let req =
                            cm_path(&ns2).get(&name((i * 7919 + 13) % n), &GetParams::default());
                        async move {
                            client.request_text(req?).await?;
                            Ok(())
                        }
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }
}
