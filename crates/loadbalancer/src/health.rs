//! Active health checks: one probe of one backend.
//!
//! The probe is deliberately stricter than "the port accepts TCP": the
//! original's weak spot is a server whose listener is up but whose API
//! cannot serve (stuck, overloaded, etcd lost). For `Https` we therefore
//! need a verified TLS handshake *and* a 2xx answer within the timeout.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{HealthCheck, LbError};

/// Largest response head we read before deciding; a status line is tiny,
/// and a bound keeps a misbehaving peer from growing our buffer.
const MAX_HEAD: usize = 4096;

/// A prepared health check: the TLS configuration is built once at start,
/// not per probe.
pub(crate) enum Prober {
    Tcp,
    Https {
        path: String,
        connector: TlsConnector,
        /// `None`: verify against the backend's own host (IP or DNS name).
        server_name: Option<String>,
    },
}

impl Prober {
    pub(crate) fn new(check: &HealthCheck) -> Result<Prober, LbError> {
        Ok(match check {
            HealthCheck::Tcp => Prober::Tcp,
            HealthCheck::Https {
                path,
                ca_pem,
                server_name,
            } => {
                let config: Arc<rustls::ClientConfig> = rke2_trust::client_tls_config(ca_pem, None)
                    .map_err(|source| LbError::Tls { source })?;
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                Prober::Https {
                    path,
                    connector: TlsConnector::from(config),
                    server_name: (!server_name.is_empty()).then(|| server_name.clone()),
                }
            }
        })
    }

    /// Probe `addr` once. The caller applies the timeout; this future may
    /// hang forever against a server that accepts and never answers.
    pub(crate) async fn probe(&self, addr: &str) -> Result<(), String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (path, connector, server_name) = match self {
            Prober::Tcp => return Ok(()),
            Prober::Https {
                path,
                connector,
                server_name,
            } => (path, connector, server_name),
        };
        let _ = tcp.set_nodelay(true);
        let name = server_name.clone().unwrap_or_else(|| host_of(addr));
        let sni = ServerName::try_from(name.clone())
            .map_err(|e| format!("invalid server name {name:?}: {e}"))?;
        let mut tls = connector
            .connect(sni, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        // `Connection: close` so the server ends the exchange; we only need
        // the status line anyway.
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rke2-loadbalancer\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send request: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") {
            if head.len() >= MAX_HEAD {
                return Err("response status line too long".into());
            }
            let n = tls
                .read(&mut buf)
                .await
                .map_err(|e| format!("read response: {e}"))?;
            if n == 0 {
                return Err("connection closed before a response".into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let code = status_code(&head).ok_or_else(|| "malformed response".to_string())?;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {code}"))
        }
    }
}

/// The status code of an HTTP/1.x status line at the start of `head`.
fn status_code(head: &[u8]) -> Option<u16> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The host part of `host:port`, without IPv6 brackets.
pub(crate) fn host_of(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 x\r\nfoo"), Some(503));
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 200"), None);
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("10.0.0.1:6443"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:9345"), "fd00::1");
        assert_eq!(host_of("rke2.example.com:9345"), "rke2.example.com");
        assert_eq!(host_of("rke2.example.com"), "rke2.example.com");
    }
}
