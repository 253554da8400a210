//! Scraping one node: its address as metrics-server picks it (the first
//! of the preferred address types the Node publishes; the port from
//! `status.daemonEndpoints.kubeletEndpoint`), and `GET /metrics/resource`
//! over TLS verified against the kubelet CA, with the ServiceAccount's
//! bearer token (re-read each time: the kubelet rotates it).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Node;
use rustls::pki_types::ServerName;

/// Largest answer read from a node.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The Node publishes no usable address.
    #[error("node {0} has no address of the preferred types")]
    NoAddress(String),
    /// Connecting, TLS or HTTP failed.
    #[error("GET {url}: {reason}")]
    Request {
        /// The URL asked.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A non-200 answer.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        /// The URL asked.
        url: String,
        /// Its status.
        status: u16,
        /// The start of its body.
        body: String,
    },
}

/// How nodes are reached.
#[derive(Clone)]
pub struct Scraper {
    tls: Arc<rustls::ClientConfig>,
    token_file: Option<PathBuf>,
    address_types: Vec<String>,
    default_port: u16,
    use_node_status_port: bool,
    timeout: Duration,
}

impl Scraper {
    /// A scraper verifying nodes with `tls`, sending the token of
    /// `token_file` (if any), picking addresses of `address_types` in
    /// order, on `default_port` or, with `use_node_status_port`, the port
    /// the Node publishes.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        token_file: Option<PathBuf>,
        address_types: Vec<String>,
        default_port: u16,
        use_node_status_port: bool,
        timeout: Duration,
    ) -> Self {
        Scraper {
            tls,
            token_file,
            address_types,
            default_port,
            use_node_status_port,
            timeout,
        }
    }

    /// The host and port of `node`.
    pub fn address(&self, node: &Node) -> Result<(String, u16), ScrapeError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let status = node.status.as_ref();
        let addrs = status.and_then(|s| s.addresses.as_ref());
        let host = self
            .address_types
            .iter()
            .find_map(|t| {
                addrs?
                    .iter()
                    .find(|a| &a.type_ == t && !a.address.is_empty())
                    .map(|a| a.address.clone())
            })
            .ok_or(ScrapeError::NoAddress(name))?;
        let port = status
            .filter(|_| self.use_node_status_port)
            .and_then(|s| s.daemon_endpoints.as_ref())
            .and_then(|d| d.kubelet_endpoint.as_ref())
            .map(|e| e.port)
            .filter(|p| *p > 0 && *p <= 65535)
            .map(|p| p as u16)
            .unwrap_or(self.default_port);
        Ok((host, port))
    }

    /// `GET https://host:port/metrics/resource`: the body.
    pub async fn get(&self, host: &str, port: u16, path: &str) -> Result<String, ScrapeError> {
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let url = format!("https://{authority}{path}");
        let fail = |reason: String| ScrapeError::Request {
            url: url.clone(),
            reason,
        };
        let token = match &self.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| fail(format!("reading the token {}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let work = async {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| fail(format!("connect: {e}")))?;
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.to_string())
                    .map_err(|e| fail(format!("server name: {e}")))?,
            };
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| fail(format!("HTTP: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = http::Request::get(path)
                .header(http::header::HOST, &authority)
                .header(http::header::ACCEPT, "text/plain");
            if let Some(t) = &token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| fail(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| fail(format!("HTTP: {e}")))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the body: {e}")))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                return Err(ScrapeError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                    body: text.chars().take(300).collect(),
                });
            }
            Ok(text)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
    }
}

/// A client configuration that does not verify node certificates
/// (metrics-server's `--kubelet-insecure-tls`).
pub fn insecure_tls() -> Arc<rustls::ClientConfig> {
    let provider = rke2_trust::provider();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(provider))
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addrs: &[(&str, &str)], port: Option<i32>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {
                "addresses": addrs.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect::<Vec<_>>(),
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port.unwrap_or(0)}},
            }
        }))
        .unwrap()
    }

    #[test]
    fn preferred_address_and_the_nodes_port() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        let s = Scraper::new(
            tls.clone(),
            None,
            vec!["InternalIP".into(), "ExternalIP".into()],
            10250,
            true,
            Duration::from_secs(1),
        );
        let n = node(
            &[
                ("Hostname", "h"),
                ("ExternalIP", "1.2.3.4"),
                ("InternalIP", "10.0.0.5"),
            ],
            Some(10255),
        );
        assert_eq!(s.address(&n).unwrap(), ("10.0.0.5".into(), 10255));
        let n = node(&[("ExternalIP", "1.2.3.4")], None);
        assert_eq!(s.address(&n).unwrap(), ("1.2.3.4".into(), 10250));
        let n = node(&[("Hostname", "h")], None);
        assert!(matches!(s.address(&n), Err(ScrapeError::NoAddress(_))));
        // Without --kubelet-use-node-status-port: --kubelet-port.
        let s = Scraper::new(
            tls,
            None,
            vec!["InternalIP".into()],
            10250,
            false,
            Duration::from_secs(1),
        );
        let n = node(&[("InternalIP", "10.0.0.5")], Some(10255));
        assert_eq!(s.address(&n).unwrap(), ("10.0.0.5".into(), 10250));
    }
}
