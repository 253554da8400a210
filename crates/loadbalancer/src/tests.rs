//! Behaviour tests on real loopback sockets: HTTPS test backends with a
//! test CA, a balancer in front, clients that verify the real certificate
//! through it. Every wait polls with a deadline.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rke2_trust::{ServerTrust, ServerTrustParams};
use rustls::pki_types::ServerName;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::*;

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// One test CA and serving certificate for every test; its SANs cover
/// `127.0.0.1` and every `127.77.<t>.<b>` the tests bind.
fn trust() -> &'static ServerTrust {
    static TRUST: OnceLock<(TempDir, ServerTrust)> = OnceLock::new();
    &TRUST
        .get_or_init(|| {
            let dir = TempDir::new().unwrap();
            let mut sans = vec!["127.0.0.1".to_string()];
            for t in 0..16 {
                for b in 1..=4 {
                    sans.push(format!("127.77.{t}.{b}"));
                }
            }
            let trust = rke2_trust::ensure_server_trust(&ServerTrustParams {
                data_dir: dir.path().to_path_buf(),
                node_name: "lb-test".into(),
                serving_sans: sans,
                etcd_sans: vec!["127.0.0.1".into()],
            })
            .unwrap();
            (dir, trust)
        })
        .1
}

fn ca_pem() -> Vec<u8> {
    trust().server_ca.cert_pem.as_bytes().to_vec()
}

/// A small HTTPS server: `/readyz` answers per its mode, `/id` answers its
/// id, `/watch` answers its id and then keeps the connection open (a
/// stand-in for a Kubernetes watch). In HANG mode it accepts TCP and never
/// says a word.
struct TestBackend {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestBackend {
    async fn start(ip: &str, id: &'static str) -> TestBackend {
        let t = trust();
        let config = rke2_trust::server_tls_config(
            t.serving.cert_pem.as_bytes(),
            t.serving.key_pem.as_bytes(),
            None,
        )
        .unwrap();
        let acceptor = TlsAcceptor::from(config);
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OK));
        let stop = CancellationToken::new();
        let (m, s) = (mode.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let conns = tokio_util::task::TaskTracker::new();
            loop {
                let (sock, _) = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => a.unwrap(),
                };
                let (m, s, acceptor) = (m.clone(), s.clone(), acceptor.clone());
                conns.spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = serve_conn(sock, acceptor, m, id) => {}
                    }
                });
            }
            drop(listener);
            conns.close();
            conns.wait().await;
        });
        TestBackend {
            addr,
            mode,
            stop,
            task: Some(task),
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Close the listener and every connection; afterwards dials are refused.
    async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_conn(sock: TcpStream, acceptor: TlsAcceptor, mode: Arc<AtomicU8>, id: &str) {
    if mode.load(Ordering::SeqCst) == HANG {
        // Accept TCP, never answer: hold the socket until the test ends.
        std::future::pending::<()>().await;
    }
    let Ok(mut tls) = acceptor.accept(sock).await else {
        return;
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let (status, body) = match path.as_str() {
        "/readyz" => match mode.load(Ordering::SeqCst) {
            OK => ("200 OK", "ok".to_string()),
            FAIL => ("500 Internal Server Error", "not ready".to_string()),
            _ => std::future::pending().await,
        },
        "/id" => ("200 OK", id.to_string()),
        "/watch" => {
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{id}\n");
            let _ = tls.write_all(resp.as_bytes()).await;
            let _ = tls.flush().await;
            // Like a watch: never ends on its own.
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => ("404 Not Found", String::new()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(resp.as_bytes()).await;
    let _ = tls.shutdown().await;
}

/// Connect through the balancer and verify the real serving certificate
/// (as a client of `127.0.0.1:6443` would: `127.0.0.1` is a SAN of every
/// serving cert).
async fn connect_tls(lb: SocketAddr) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = rke2_trust::client_tls_config(&ca_pem(), None).unwrap();
    let tcp = TcpStream::connect(lb).await.map_err(|e| e.to_string())?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// `GET path` through the balancer; the body of a 200 answer.
async fn get(lb: SocketAddr, path: &str) -> Result<String, String> {
    let mut tls = connect_tls(lb).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {head}"));
    }
    Ok(body.to_string())
}

/// Which backend serves a new connection now (`None`: failed or took over
/// a second, e.g. a hanging backend).
async fn served_by(lb: SocketAddr) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(1), get(lb, "/id")).await {
        Ok(Ok(id)) => Some(id),
        _ => None,
    }
}

/// Poll `cond` until it holds or `limit` passes; the time it took.
async fn poll_until<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn https() -> HealthCheck {
    HealthCheck::Https {
        path: "/readyz".into(),
        ca_pem: ca_pem(),
        server_name: String::new(),
    }
}

async fn start_lb(
    net: u8,
    state: &Path,
    defaults: Vec<String>,
    health: HealthCheck,
) -> LoadBalancer {
    LoadBalancer::start(LoadBalancerConfig {
        name: "apiserver".into(),
        listen: format!("127.77.{net}.100:0").parse().unwrap(),
        state_file: state.to_path_buf(),
        default_servers: defaults,
        health,
    })
    .await
    .unwrap()
}

fn health_of(lb: &LoadBalancer, addr: &str) -> Option<Health> {
    lock(&lb.inner.backends)
        .iter()
        .find(|b| b.addr == addr)
        .map(|b| b.health)
}

/// Wait until both backends passed a check and A serves.
async fn until_a_serves(lb: &LoadBalancer, a: &TestBackend, b: &TestBackend) {
    let ok = poll_until(Duration::from_secs(5), || async {
        lb.servers() == vec![(a.addr(), true), (b.addr(), true)]
    })
    .await;
    assert!(ok.is_some(), "backends never healthy: {:?}", lb.servers());
    assert_eq!(lb.active(), Some(a.addr()));
    assert_eq!(served_by(lb.local_addr()).await.as_deref(), Some("A"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_failing_readyz_closes_connections_and_fails_back() {
    let dir = TempDir::new().unwrap();
    let a = TestBackend::start("127.77.1.1", "A").await;
    let b = TestBackend::start("127.77.1.2", "B").await;
    let lb = start_lb(
        1,
        &dir.path().join("lb.json"),
        vec![a.addr(), b.addr()],
        https(),
    )
    .await;
    until_a_serves(&lb, &a, &b).await;

    // A long-lived connection (a watch) proxied to A.
    let mut watch = connect_tls(lb.local_addr()).await.unwrap();
    watch
        .write_all(b"GET /watch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\nA\n") {
        let n = watch.read(&mut buf).await.unwrap();
        assert!(n > 0, "watch closed early");
        seen.extend_from_slice(&buf[..n]);
    }

    let failed_at = Instant::now();
    a.set(FAIL);
    let watch_closed = tokio::spawn(async move {
        // EOF or a reset both mean "closed": the client reconnects.
        loop {
            match watch.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });

    let lbaddr = lb.local_addr();
    let failover = poll_until(Duration::from_secs(3), || async {
        served_by(lbaddr).await.as_deref() == Some("B")
    })
    .await
    .expect("new connections did not move to B within 3 s");
    println!("failover time (A's /readyz -> 500 until first connection served by B): {failover:?}");
    assert_eq!(lb.active(), Some(b.addr()));
    assert_eq!(health_of(&lb, &a.addr()), Some(Health::Unhealthy));

    let closed_at = tokio::time::timeout(Duration::from_secs(3), watch_closed)
        .await
        .expect("A's proxied watch connection was not closed")
        .unwrap();
    println!(
        "open connection to A closed {:?} after A started failing",
        closed_at - failed_at
    );
    assert!(closed_at - failed_at < Duration::from_secs(3));

    // Fail-back: A recovers, new connections return to it.
    a.set(OK);
    let failback = poll_until(Duration::from_secs(3), || async {
        served_by(lbaddr).await.as_deref() == Some("A")
    })
    .await
    .expect("no fail-back to A within 3 s");
    println!("fail-back time (A healthy again until first connection served by A): {failback:?}");
    assert_eq!(lb.active(), Some(a.addr()));
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_that_accepts_but_never_answers_is_down() {
    let dir = TempDir::new().unwrap();
    let a = TestBackend::start("127.77.2.1", "A").await;
    let b = TestBackend::start("127.77.2.2", "B").await;
    let lb = start_lb(
        2,
        &dir.path().join("lb.json"),
        vec![a.addr(), b.addr()],
        https(),
    )
    .await;
    until_a_serves(&lb, &a, &b).await;

    a.set(HANG);
    let lbaddr = lb.local_addr();
    let failover = poll_until(Duration::from_secs(5), || async {
        served_by(lbaddr).await.as_deref() == Some("B")
    })
    .await
    .expect("a hanging A kept new connections for more than 5 s");
    println!(
        "failover time (A accepts TCP but hangs until first connection served by B): {failover:?}"
    );
    assert_eq!(health_of(&lb, &a.addr()), Some(Health::Unhealthy));
    assert_eq!(lb.servers(), vec![(a.addr(), false), (b.addr(), true)]);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_backends_are_still_tried_and_dead_ones_fail_fast() {
    let dir = TempDir::new().unwrap();
    let mut a = TestBackend::start("127.77.3.1", "A").await;
    let mut b = TestBackend::start("127.77.3.2", "B").await;
    let lb = start_lb(
        3,
        &dir.path().join("lb.json"),
        vec![a.addr(), b.addr()],
        https(),
    )
    .await;
    until_a_serves(&lb, &a, &b).await;

    // Both unhealthy but reachable: still better to try than to refuse.
    a.set(FAIL);
    b.set(FAIL);
    poll_until(Duration::from_secs(5), || async {
        health_of(&lb, &a.addr()) == Some(Health::Unhealthy)
            && health_of(&lb, &b.addr()) == Some(Health::Unhealthy)
    })
    .await
    .expect("backends never marked unhealthy");
    assert_eq!(lb.active(), Some(a.addr()));
    assert_eq!(served_by(lb.local_addr()).await.as_deref(), Some("A"));

    // A dies while B is (equally) unhealthy: the dial to A is refused and the
    // same client connection goes on to B.
    a.shutdown().await;
    assert_eq!(served_by(lb.local_addr()).await.as_deref(), Some("B"));

    // Everything dead: the client hears so quickly instead of hanging.
    b.shutdown().await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), get(lb.local_addr(), "/id"))
        .await
        .expect("client hung for 5 s with every backend down");
    assert!(r.is_err(), "{r:?}");
    println!(
        "all backends down: client connection failed after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_list_survives_restart_with_dead_seed() {
    let dir = TempDir::new().unwrap();
    let state = dir
        .path()
        .join("etc")
        .join("rke2-apiserver-load-balancer.json");
    let a = TestBackend::start("127.77.4.1", "A").await;
    let b = TestBackend::start("127.77.4.2", "B").await;
    // A seed that refuses connections (the registration address is down).
    let dead = {
        let l = TcpListener::bind("127.77.4.3:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };

    let lb = start_lb(4, &state, vec![dead.clone()], https()).await;
    assert_eq!(lb.servers(), vec![(dead.clone(), false)]);
    lb.update_servers(vec![a.addr(), b.addr(), a.addr()]);
    assert_eq!(
        lb.servers().into_iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![a.addr(), b.addr(), dead.clone()],
        "learned servers first, seed last, duplicates dropped"
    );
    let meta = std::fs::metadata(&state).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        saved["ServerAddresses"],
        serde_json::json!([a.addr(), b.addr()])
    );
    // An empty refresh is ignored rather than dropping everything.
    lb.update_servers(Vec::new());
    assert_eq!(lb.servers().len(), 3);
    let lbaddr = lb.local_addr();
    poll_until(Duration::from_secs(5), || async {
        served_by(lbaddr).await.as_deref() == Some("A")
    })
    .await
    .expect("A never served");
    lb.stop().await;

    // Restart with only the dead seed configured: the persisted list works.
    let lb = start_lb(4, &state, vec![dead.clone()], HealthCheck::Tcp).await;
    assert_eq!(
        lb.servers().into_iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![a.addr(), b.addr(), dead.clone()]
    );
    // Before the first checks finish either learned server may answer: a
    // server whose check already passed ranks before one still unknown,
    // and the checks of A and B race. What matters is that the persisted
    // list serves while the only configured seed is dead.
    let first = served_by(lb.local_addr()).await;
    assert!(
        matches!(first.as_deref(), Some("A") | Some("B")),
        "persisted list did not serve: {first:?}"
    );
    let lbaddr = lb.local_addr();
    poll_until(Duration::from_secs(5), || async {
        health_of(&lb, &dead) == Some(Health::Unhealthy)
            && lb.servers()[..2] == [(a.addr(), true), (b.addr(), true)]
    })
    .await
    .expect("TCP checks did not settle");
    assert_eq!(served_by(lbaddr).await.as_deref(), Some("A"));
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_server_loses_its_connections_and_bad_certs_are_unhealthy() {
    let dir = TempDir::new().unwrap();
    let a = TestBackend::start("127.77.5.1", "A").await;
    let b = TestBackend::start("127.77.5.2", "B").await;
    let lb = start_lb(5, &dir.path().join("lb.json"), vec![], https()).await;
    assert_eq!(lb.active(), None);
    lb.update_servers(vec![a.addr(), b.addr()]);
    until_a_serves(&lb, &a, &b).await;

    let mut conn = connect_tls(lb.local_addr()).await.unwrap();
    lb.update_servers(vec![b.addr()]);
    assert_eq!(lb.servers(), vec![(b.addr(), true)]);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .expect("connection to a removed server stayed open");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(served_by(lb.local_addr()).await.as_deref(), Some("B"));
    lb.stop().await;

    // A certificate that does not verify (wrong name) is a failed check.
    let lb = start_lb(
        5,
        &dir.path().join("lb2.json"),
        vec![a.addr()],
        HealthCheck::Https {
            path: "readyz".into(),
            ca_pem: ca_pem(),
            server_name: "not-in-the-cert.example".into(),
        },
    )
    .await;
    poll_until(Duration::from_secs(5), || async {
        health_of(&lb, &a.addr()) == Some(Health::Unhealthy)
    })
    .await
    .expect("unverifiable backend not marked unhealthy");
    lb.stop().await;
}

#[tokio::test]
async fn start_errors_are_reported() {
    let dir = TempDir::new().unwrap();
    let taken = TcpListener::bind("127.77.6.100:0").await.unwrap();
    let err = LoadBalancer::start(LoadBalancerConfig {
        name: "supervisor".into(),
        listen: taken.local_addr().unwrap(),
        state_file: dir.path().join("s.json"),
        default_servers: vec![],
        health: HealthCheck::Tcp,
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, LbError::Bind { .. }), "{err}");
    let err = LoadBalancer::start(LoadBalancerConfig {
        name: "supervisor".into(),
        listen: "127.77.6.100:0".parse().unwrap(),
        state_file: dir.path().join("s.json"),
        default_servers: vec![],
        health: HealthCheck::Https {
            path: "/ping".into(),
            ca_pem: b"not a pem".to_vec(),
            server_name: String::new(),
        },
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, LbError::Tls { .. }), "{err}");

    // A corrupt state file falls back to the seeds.
    std::fs::write(dir.path().join("bad.json"), b"{not json").unwrap();
    let lb = LoadBalancer::start(LoadBalancerConfig {
        name: "supervisor".into(),
        listen: "127.77.6.100:0".parse().unwrap(),
        state_file: dir.path().join("bad.json"),
        default_servers: vec!["127.77.6.1:9345".into()],
        health: HealthCheck::Tcp,
    })
    .await
    .unwrap();
    assert_eq!(lb.servers(), vec![("127.77.6.1:9345".to_string(), false)]);
    lb.stop().await;
}

#[tokio::test]
async fn shared_balancer_can_be_shut_down() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LoadBalancer>();
    let dir = TempDir::new().unwrap();
    let lb = Arc::new(
        start_lb(
            7,
            &dir.path().join("s.json"),
            vec!["127.77.7.1:1".into()],
            HealthCheck::Tcp,
        )
        .await,
    );
    let addr = lb.local_addr();
    lb.shutdown().await;
    lb.shutdown().await;
    // The address is free again once shutdown returns.
    let again = TcpListener::bind(addr).await.unwrap();
    drop(again);
    // Updates after shutdown change the list but start no task.
    lb.update_servers(vec!["127.77.7.2:1".into()]);
    assert_eq!(lb.servers().len(), 2);
}
