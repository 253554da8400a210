//! Warns operators of certificates nearing expiry, as RKE2's certificate
//! monitor does: at start and every 12 hours, every certificate of this
//! server (`server/tls`, `server/tls/etcd`, `agent`) with less than
//! [`crate::certificate::WARN_DAYS`] days left raises one Warning Event
//! `CertificateExpirationWarning` on this server's Node. Leaves are renewed
//! at start when they get within 120 days, so a warning means either a
//! server that has not restarted for months or a CA running out (CAs are
//! never re-created; see `rke2 certificate`).
//!
//! The same certificates are a gauge on the node API's `/metrics` (as
//! k3s's `k3s_certificate_expiration_seconds`, reached through
//! `nodes/<node>/proxy/metrics`): [`METRIC`] is the remaining lifetime in
//! seconds of every certificate, read from the files at each scrape so a
//! renewal at start or a CA rotation shows at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often the certificates are looked at again.
const INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Reason of the Event, as RKE2 names it.
pub const REASON: &str = "CertificateExpirationWarning";
const COMPONENT: &str = "rke2-cert-monitor";

/// Name of the expiry gauge (k3s's `k3s_certificate_expiration_seconds`
/// with this project's prefix).
pub const METRIC: &str = "rke2_certificate_expiration_seconds";

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of [`METRIC`] for the certificates under
/// `data_dir` at `now` (Unix seconds): one sample per certificate and file
/// (a bundle's CA certificates too), labelled `filename` (relative to the
/// data dir), `subject` and `usages` as `rke2 certificate check` names
/// them; negative once expired.
pub fn render_metrics(data_dir: &Path, now: i64) -> String {
    let mut out =
        format!("# HELP {METRIC} Remaining lifetime on the certificate.\n# TYPE {METRIC} gauge\n");
    let mut seen = std::collections::BTreeSet::new();
    for f in crate::certificate::cert_files(data_dir, &[]) {
        let Ok(infos) = rke2_trust::describe_cert_file(&f) else {
            continue;
        };
        let name = f.strip_prefix(data_dir).unwrap_or(&f).display().to_string();
        for info in infos {
            let usages = info.usages.join(",");
            if !seen.insert((name.clone(), info.subject.clone(), usages.clone())) {
                continue;
            }
            out.push_str(&format!(
                "{METRIC}{{filename=\"{}\",subject=\"{}\",usages=\"{}\"}} {}\n",
                label_value(&name),
                label_value(&info.subject),
                label_value(&usages),
                info.not_after - now
            ));
        }
    }
    out
}

/// The node API's metrics source: [`render_metrics`] of `data_dir` now.
pub fn metrics_source(data_dir: PathBuf) -> rke2_node::api::MetricsSource {
    std::sync::Arc::new(move || render_metrics(&data_dir, chrono::Utc::now().timestamp()))
}

/// The messages for certificates under `data_dir` that expire within the
/// warning window at `now` (Unix seconds), one per certificate.
pub fn expiring(data_dir: &Path, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    for f in crate::certificate::cert_files(data_dir, &[]) {
        let infos = match rke2_trust::describe_cert_file(&f) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "certificate monitor: cannot read a certificate");
                continue;
            }
        };
        let name = f.strip_prefix(data_dir).unwrap_or(&f).display().to_string();
        for info in infos {
            let left = info.not_after - now;
            if left < crate::certificate::WARN_DAYS * 86_400 {
                let at = chrono::DateTime::from_timestamp(info.not_after, 0)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default();
                let what = if left <= 0 {
                    "expired at"
                } else {
                    "will expire at"
                };
                out.push(format!("{name}: certificate {} {what} {at}", info.subject));
            }
        }
    }
    out
}

/// Runs until `stop`: one pass as soon as the Node exists, then every
/// [`INTERVAL`].
pub async fn run(
    client: kube::Client,
    data_dir: PathBuf,
    node_name: String,
    stop: CancellationToken,
) {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    loop {
        let node = loop {
            if let Ok(Some(n)) = nodes.get_opt(&node_name).await {
                break n;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        };
        let now = chrono::Utc::now().timestamp();
        let found = expiring(&data_dir, now);
        if found.is_empty() {
            debug!("certificate monitor: nothing expires within the warning window");
        } else {
            warn!(certificates = ?found, "certificates expire soon");
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node_name.clone()),
                uid: node.metadata.uid.clone(),
                ..Default::default()
            };
            let message = format!(
                "Node certificates require attention - restart rke2 on this node to trigger automatic rotation: {}",
                found.join(", ")
            );
            rke2_controllers::replicaset::record_event(
                &client, COMPONENT, &reference, "Warning", REASON, message,
            )
            .await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certificates_inside_the_window_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("server/tls");
        std::fs::create_dir_all(&tls).unwrap();
        let ca = rke2_trust::CertAuthority::ensure(
            &tls.join("server-ca.crt"),
            &tls.join("server-ca.key"),
            "rke2-server-ca",
        )
        .unwrap();
        let (leaf, _) = ca
            .issue(&rke2_trust::LeafSpec::client("system:admin", &[]))
            .unwrap();
        std::fs::write(tls.join("client-admin.crt"), leaf).unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!(expiring(dir.path(), now).is_empty());
        // 300 days on, the one-year leaf is inside the window, the CA is not.
        let later = expiring(dir.path(), now + 300 * 86_400);
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(
            later[0].starts_with(
                "server/tls/client-admin.crt: certificate system:admin will expire at"
            ),
            "{later:?}"
        );
        let much_later = expiring(dir.path(), now + 400 * 86_400);
        assert!(much_later[0].contains("expired at"), "{much_later:?}");

        // The gauge: one sample per certificate, seconds left at `now`.
        let text = render_metrics(dir.path(), now);
        assert!(text.contains(&format!("# TYPE {METRIC} gauge")), "{text}");
        let sample = |file: &str| -> i64 {
            text.lines()
                .find(|l| l.starts_with(METRIC) && l.contains(&format!("filename=\"{file}\"")))
                .unwrap_or_else(|| panic!("{file}: {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let leaf = sample("server/tls/client-admin.crt");
        assert!((364 * 86_400..=366 * 86_400).contains(&leaf), "{leaf}");
        assert!(sample("server/tls/server-ca.crt") > 3000 * 86_400);
        assert!(
            text.contains("subject=\"CN=system:admin\"")
                || text.contains("subject=\"system:admin\""),
            "{text}"
        );
        let later = render_metrics(dir.path(), now + 400 * 86_400);
        assert!(
            later
                .lines()
                .any(|l| l.contains("client-admin.crt") && l.contains(" -")),
            "{later}"
        );
    }
}
