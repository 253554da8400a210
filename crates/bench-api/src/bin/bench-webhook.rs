//! What one mutating admission webhook adds to a ConfigMap create
//! (bench/webhook.sh): runs a minimal HTTPS webhook server in process
//! (a JSONPatch adding a label, certificate from a CA made here),
//! registers it for ConfigMaps labelled `hook: "yes"`, then creates
//! ConfigMaps one at a time, alternating labelled (webhook called) and
//! unlabelled (not called) ones, so both sides share the same run. A
//! first phase without any configuration gives the plain baseline.
//! Prints p50/p99 of each side, and the p99 ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "latency one mutating webhook adds to a ConfigMap create")]
struct Args {
    /// Admin kubeconfig of the server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Creates per side.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Namespace of the created ConfigMaps.
    #[arg(long, default_value = "bench-webhook")]
    namespace: String,
}

/// Answers every AdmissionReview on one connection with a JSONPatch
/// adding the label `mutated: "yes"`.
async fn serve_conn(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Result<()> {
    let mut tls = acceptor.accept(stream).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        // Headers.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let review: Value = serde_json::from_slice(&buf[head_end..head_end + len])?;
        buf.drain(..head_end + len);
        let has_labels = review["request"]["object"]["metadata"]["labels"].is_object();
        let ops = if has_labels {
            json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
        } else {
            json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
        };
        let body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"], "allowed": true, "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&ops)?),
            }
        }))?;
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        tls.write_all(&out).await?;
    }
}

/// Starts the webhook server; answers its port and CA (PEM).
async fn start_webhook(dir: &std::path::Path) -> Result<(u16, String)> {
    let ca = rke2_trust::CertAuthority::ensure(
        &dir.join("ca.crt"),
        &dir.join("ca.key"),
        "bench-webhook",
    )?;
    let (cert, key) = ca.issue(&rke2_trust::LeafSpec::server(
        "webhook",
        vec!["127.0.0.1".into()],
    ))?;
    let config = rustls::ServerConfig::builder_with_provider(rke2_trust::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            rke2_trust::parse_certs(cert.as_bytes())?,
            rke2_trust::parse_key(key.as_bytes())?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = serve_conn(s, acceptor).await;
            });
        }
    });
    Ok((port, ca.cert_pem.clone()))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn summary(name: &str, mut lat: Vec<Duration>) -> (f64, f64) {
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
    println!(
        "RESULT\t{name}\t{}\t{p50:.3}\t{p99:.3}\t{:.3}",
        lat.len(),
        pct(&lat, 1.0)
    );
    (p50, p99)
}

async fn create(api: &Api<ConfigMap>, name: &str, hook: bool) -> Result<(Duration, bool)> {
    let mut cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"k": "v".repeat(256)},
    }))?;
    if hook {
        cm.metadata.labels = Some([("hook".to_string(), "yes".to_string())].into());
    }
    let t = Instant::now();
    let created = api.create(&PostParams::default(), &cm).await?;
    let took = t.elapsed();
    let mutated = created
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get("mutated").is_some_and(|v| v == "yes"));
    Ok((took, mutated))
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    let client = kube::Client::try_from(cfg)?;
    let dir = std::env::temp_dir().join(format!("bench-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (port, ca_pem) = start_webhook(&dir).await?;

    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": args.namespace}}))?,
        )
        .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);

    // Baseline: no webhook configuration at all.
    let mut none = Vec::new();
    for i in 0..args.ops {
        let (d, _) = create(&api, &format!("none-{i}"), false).await?;
        none.push(d);
    }

    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "bench-webhook"},
        "webhooks": [{
            "name": "bench.webhook.example.com",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "objectSelector": {"matchLabels": {"hook": "yes"}},
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/mutate"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca_pem),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
        }],
    }))?;
    hooks
        .create(&PostParams::default(), &config)
        .await
        .context("creating the webhook configuration")?;
    // The configuration is in effect once a labelled create comes back mutated.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let (_, mutated) = create(&api, &format!("warm-{n}"), true).await?;
        n += 1;
        if mutated {
            break;
        }
        if Instant::now() > deadline {
            bail!("the webhook configuration never took effect");
        }
    }
    // Warm both paths, then measure them interleaved.
    for i in 0..50 {
        create(&api, &format!("warm-plain-{i}"), false).await?;
        create(&api, &format!("warm-hook-{i}"), true).await?;
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..args.ops {
        let (d, mutated) = create(&api, &format!("plain-{i}"), false).await?;
        if mutated {
            bail!("an unlabelled ConfigMap was mutated");
        }
        without.push(d);
        let (d, mutated) = create(&api, &format!("hook-{i}"), true).await?;
        if !mutated {
            bail!("a labelled ConfigMap was not mutated");
        }
        with.push(d);
    }
    println!("# RESULT side n p50-ms p99-ms max-ms");
    let (n50, n99) = summary("no-configuration", none);
    let (o50, o99) = summary("not-matched", without);
    let (w50, w99) = summary("one-mutating-webhook", with);
    println!(
        "RATIO\tp99 webhook/not-matched {:.2}\tp99 webhook/no-configuration {:.2}\tp50 webhook/not-matched {:.2}\tadded p50 {:.3} ms p99 {:.3} ms\tnot-matched/no-configuration p50 {:.2}",
        w99 / o99,
        w99 / n99,
        w50 / o50,
        w50 - o50,
        w99 - o99,
        o50 / n50
    );
    let _ = hooks
        .delete("bench-webhook", &DeleteParams::default())
        .await;
    let _ = nss.delete(&args.namespace, &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
