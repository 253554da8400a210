//! Liveness, readiness and startup probes: exec (CRI ExecSync), httpGet,
//! tcpSocket and gRPC (`grpc.health.v1.Health/Check`), with kubelet's
//! timing fields, thresholds and failure messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rke2_runtime::cri::{Cri, api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It passed.
    Success,
    /// It failed, with kubelet-like wording for the `Unhealthy` event.
    Failure(String),
}

/// Why a probe's port could not be resolved (the probe then fails with
/// this message).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PortError {
    /// A number outside 0..=65535.
    #[error("invalid port {0}")]
    Invalid(i32),
    /// A name no port of the container has.
    #[error("port {name:?} not found in container {container:?}")]
    NotFound {
        /// The port name.
        name: String,
        /// The container.
        container: String,
    },
}

/// Resolves a named or numbered port of the container.
fn port(c: &Container, p: &IntOrString) -> Result<u16, PortError> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| PortError::Invalid(*n)),
        IntOrString::String(name) => c
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| PortError::NotFound {
                name: name.clone(),
                container: c.name.clone(),
            }),
    }
}

/// Runs `probe` once against container `container_id` with IP `pod_ip`.
pub async fn run(
    cri: &Cri,
    c: &Container,
    container_id: &str,
    pod_ip: &str,
    probe: &Probe,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let r = cri
            .runtime()
            .exec_sync(api::ExecSyncRequest {
                container_id: container_id.to_string(),
                cmd: cmd.clone(),
                timeout: timeout.as_secs() as i64,
            })
            .await;
        return match r {
            Ok(r) => {
                let r = r.into_inner();
                if r.exit_code == 0 {
                    Outcome::Success
                } else {
                    let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
                    Outcome::Failure(format!(
                        "Probe command {cmd:?} exited with {}{}",
                        r.exit_code,
                        if out.is_empty() {
                            String::new()
                        } else {
                            format!(": {out}")
                        }
                    ))
                }
            }
            Err(s) => Outcome::Failure(format!("Probe errored: {}", s.message())),
        };
    }
    if let Some(h) = &probe.http_get {
        let port = match port(c, &h.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e.to_string()),
        };
        let host = h
            .host
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        let https = h.scheme.as_deref() == Some("HTTPS");
        let scheme = if https { "https" } else { "http" };
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let mut headers = String::new();
        for hd in h.http_headers.clone().unwrap_or_default() {
            headers.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        let fut = http_get(&host, port, &path, &headers, https);
        return match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
            Ok(Ok(code)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Outcome::Failure(format!("Get \"{scheme}://{host}:{port}{path}\": {e}")),
            Err(_) => Outcome::Failure(format!(
                "Get \"{scheme}://{host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let port = match port(c, &t.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e.to_string()),
        };
        let host = t
            .host
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        let addr = format!("{}:{port}", bracket(&host));
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
            Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(g) = &probe.grpc {
        let Ok(port) = u16::try_from(g.port) else {
            return Outcome::Failure(format!("invalid port {}", g.port));
        };
        return grpc_check(pod_ip, port, g.service.as_deref().unwrap_or(""), timeout).await;
    }
    Outcome::Success
}

/// `grpc.health.v1.HealthCheckRequest` (the protocol is two tiny messages;
/// no .proto compilation for them).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// The name of a `ServingStatus` value, as the health protocol spells it.
fn serving_status(n: i32) -> String {
    match n {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => other.to_string(),
    }
}

/// One health check over plaintext HTTP/2, as kubelet's gRPC prober does
/// (its failure messages, word for word).
async fn grpc_check(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let target = format!("{}:{port}", bracket(host));
    let secs = format!("{}s", timeout.as_secs());
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{target}")) {
        Ok(e) => e.connect_timeout(timeout).user_agent("kube-probe/1.35"),
        Err(e) => return Outcome::Failure(format!("error: invalid gRPC target {target:?}: {e}")),
    };
    let Ok(endpoint) = endpoint else {
        return Outcome::Failure(format!("error: invalid gRPC target {target:?}"));
    };
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let cause = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            return Outcome::Failure(format!(
                "timeout: failed to connect service {target:?} within {secs}: {cause}"
            ));
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {target:?} within {secs}"
            ));
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec: tonic_prost::ProstCodec<HealthCheckRequest, HealthCheckResponse> =
            tonic_prost::ProstCodec::default();
        grpc.unary(
            tonic::Request::new(HealthCheckRequest {
                service: service.to_string(),
            }),
            http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            codec,
        )
        .await
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(resp)) => {
            let status = resp.into_inner().status;
            if status == 1 {
                Outcome::Success
            } else {
                Outcome::Failure(format!(
                    "service unhealthy (responded with {:?})",
                    serving_status(status)
                ))
            }
        }
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Outcome::Failure(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {secs}"
        )),
        Ok(Err(s)) => Outcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )),
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {secs}"
        )),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn probe_tls() -> Arc<rustls::ClientConfig> {
    static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(provider))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    })
    .clone()
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &str,
    https: bool,
) -> std::io::Result<u16> {
    let tcp = tokio::net::TcpStream::connect(format!("{}:{port}", bracket(host))).await?;
    if !https {
        return http_exchange(tcp, host, port, path, headers).await;
    }
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(std::io::Error::other)?,
    };
    let tls = tokio_rustls::TlsConnector::from(probe_tls())
        .connect(name, tcp)
        .await?;
    http_exchange(tls, host, port, path, headers).await
}

async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    port: u16,
    path: &str,
    headers: &str,
) -> std::io::Result<u16> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{port}\r\nUser-Agent: kube-probe/1.35\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n",
        bracket(host)
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))
}

/// The state of one probe of one container between runs.
#[derive(Debug, Clone)]
pub struct ProbeState {
    /// When it may run next.
    pub next: Instant,
    /// Consecutive successes.
    pub successes: i32,
    /// Consecutive failures.
    pub failures: i32,
    /// The current verdict (after thresholds).
    pub passing: bool,
}

impl ProbeState {
    /// A fresh state for a container started at `started`; `initially`
    /// is the verdict before the first run (readiness false, liveness
    /// true).
    pub fn new(probe: &Probe, started: Instant, initially: bool) -> ProbeState {
        ProbeState {
            next: started
                + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            successes: 0,
            failures: 0,
            passing: initially,
        }
    }

    /// Records one outcome; returns true when the verdict changed.
    pub fn record(&mut self, probe: &Probe, ok: bool, now: Instant) -> bool {
        self.next = now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let before = self.passing;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                self.passing = true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                self.passing = false;
            }
        }
        before != self.passing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let p = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(1),
            ..Default::default()
        };
        let now = Instant::now();
        let mut s = ProbeState::new(&p, now, true);
        assert!(!s.record(&p, false, now));
        assert!(s.passing);
        assert!(s.record(&p, false, now));
        assert!(!s.passing);
        assert!(s.record(&p, true, now));
        assert!(s.passing);
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /ok ") {
                    200
                } else {
                    503
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert_eq!(
            http_get("127.0.0.1", port, "/ok", "", false).await.unwrap(),
            200
        );
        assert_eq!(
            http_get("127.0.0.1", port, "/bad", "", false)
                .await
                .unwrap(),
            503
        );
    }

    #[tokio::test]
    async fn https_probes_do_not_verify_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        // A CA nobody trusts, as a pod's self-signed serving certificate.
        let ca = rke2_trust::CertAuthority::ensure(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            "pod",
        )
        .unwrap();
        let (cert, key) = ca
            .issue(&rke2_trust::LeafSpec::server(
                "pod",
                vec!["10.9.9.9".into()],
            ))
            .unwrap();
        let tls = rke2_trust::server_tls_config(cert.as_bytes(), key.as_bytes(), None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap();
                let req = String::from_utf8_lossy(&b[..n]).to_string();
                let code = if req.starts_with("GET /readyz ") {
                    200
                } else {
                    500
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
        });
        assert_eq!(
            http_get("127.0.0.1", port, "/readyz", "", true)
                .await
                .unwrap(),
            200
        );
        assert_eq!(
            http_get("127.0.0.1", port, "/other", "", true)
                .await
                .unwrap(),
            500
        );
        // Plain HTTP to a TLS port is no answer.
        assert!(
            http_get("127.0.0.1", port, "/readyz", "", false)
                .await
                .is_err()
        );
    }
}
