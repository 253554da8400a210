//! Connection bounds of the TLS listener (`serve_router_with`), over real
//! sockets with real TLS: a client that connects and stalls (before the
//! handshake, after it, or halfway through its request headers) is cut
//! off once the bound has passed, while a connection that carries a
//! request stays open as long as the request runs.
//!
//! The bound is 1 s here (kube-apiserver's 32 s in production), so the
//! checks are quick; each waits for the close with a generous deadline
//! and checks it did not come before the bound.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rke2_apiserver::server::{ConnectionBounds, serve_router_with};
use rke2_trust::{LeafSpec, ServerTrustParams};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const BOUND: Duration = Duration::from_secs(1);

/// Longest a close may take after the bound on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

struct Listener {
    addr: SocketAddr,
    client_tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

async fn start() -> Listener {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let ip: IpAddr = rke2_testbed::unique_loopback()
        .parse()
        .expect("loopback ip");
    let trust = rke2_trust::ensure_server_trust(&ServerTrustParams {
        data_dir: dir.path().to_path_buf(),
        node_name: "bounds".into(),
        serving_sans: vec![ip.to_string()],
        etcd_sans: rke2_trust::etcd_sans("bounds", &[ip]),
    })
    .expect("trust material");
    let (cert, key) = trust
        .server_ca
        .issue(&LeafSpec::server("bounds", vec![ip.to_string()]))
        .expect("serving certificate");
    let tls =
        rke2_trust::server_tls_config(cert.as_bytes(), key.as_bytes(), None).expect("server TLS");
    let client_tls = rke2_trust::client_tls_config(trust.server_ca.cert_pem.as_bytes(), None)
        .expect("client TLS");
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .expect("listener");
    let addr = listener.local_addr().expect("address");
    // Counts the bytes of the body it is sent, however slowly they come.
    let app = axum::Router::new().route(
        "/count",
        axum::routing::post(|body: bytes::Bytes| async move { body.len().to_string() }),
    );
    tokio::spawn(serve_router_with(
        listener,
        tls,
        app,
        ConnectionBounds {
            first_request: BOUND,
        },
        std::future::pending(),
    ));
    Listener {
        addr,
        client_tls,
        _dir: dir,
    }
}

impl Listener {
    async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        tokio_rustls::TlsConnector::from(self.client_tls.clone())
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await
            .expect("TLS handshake")
    }
}

/// Reads until the peer closes (EOF or reset); returns when that was.
async fn closed_after(mut s: impl AsyncRead + Unpin, since: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, read_all)
        .await
        .expect("the server should close a stalled connection");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_busy_ones_kept() {
    let l = start().await;

    // No TLS handshake at all.
    let t0 = Instant::now();
    let tcp = tokio::net::TcpStream::connect(l.addr)
        .await
        .expect("connect");
    let took = closed_after(tcp, t0).await;
    assert!(took >= BOUND, "closed after {took:?}, before the bound");

    // A handshake, then no request.
    let t0 = Instant::now();
    let tls = l.tls().await;
    let took = closed_after(tls, t0).await;
    assert!(took >= BOUND, "closed after {took:?}, before the bound");

    // Half the request headers, then nothing.
    let t0 = Instant::now();
    let mut tls = l.tls().await;
    tls.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let took = closed_after(tls, t0).await;
    assert!(took >= BOUND, "closed after {took:?}, before the bound");

    // A request whose body trickles in for three times the bound is served
    // whole: the bound is on stalling before a request, not on its length.
    let mut tls = l.tls().await;
    let chunks = 6usize;
    tls.write_all(
        format!(
            "POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            chunks * 100
        )
        .as_bytes(),
    )
    .await
    .expect("headers");
    for _ in 0..chunks {
        tls.write_all(&[b'a'; 100]).await.expect("body chunk");
        tls.flush().await.expect("flush");
        // Pacing the upload, not waiting for a condition.
        tokio::time::sleep(BOUND / 2).await;
    }
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, tls.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("answer read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("600"), "{answer}");
}
