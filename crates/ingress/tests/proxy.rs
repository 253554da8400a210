//! The proxy in process against real local backends: routing by the
//! table built from API objects, the annotations, TLS by SNI with ALPN,
//! WebSocket upgrades, keep-alive pools, retries, and a table swap while
//! a long download runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use rke2_ingress::routes::{Class, Inputs, Table};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn class() -> Class {
    Class {
        name: "nginx".into(),
        controller: "k8s.io/ingress-nginx".into(),
    }
}

/// A backend: answers `<name> <path>`; `/headers` echoes the request
/// headers, `/slow` streams 50 chunks of 16 KiB at 40 ms, `/sleep` waits
/// 3 s, `/size` answers the body's length. Counts its connections.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn backend(name: &'static str) -> Backend {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().to_string();
                        let slow = req.uri().path() == "/slow";
                        let body: rke2_ingress::proxy::Body = match req.uri().path() {
                            "/headers" => {
                                let mut s = String::new();
                                for (k, v) in req.headers() {
                                    s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
                                }
                                Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed()
                            }
                            "/slow" => {
                                let stream = futures::stream::unfold(0usize, |i| async move {
                                    if i == 50 {
                                        return None;
                                    }
                                    tokio::time::sleep(Duration::from_millis(40)).await;
                                    Some((
                                        Ok::<_, rke2_ingress::proxy::BoxError>(Frame::data(
                                            Bytes::from(vec![b'x'; 16384]),
                                        )),
                                        i + 1,
                                    ))
                                });
                                BodyExt::boxed(StreamBody::new(stream))
                            }
                            "/sleep" => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                Full::new(Bytes::from("late"))
                                    .map_err(|e| match e {})
                                    .boxed()
                            }
                            "/size" => {
                                let n = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().len())
                                    .unwrap_or(0);
                                Full::new(Bytes::from(n.to_string()))
                                    .map_err(|e| match e {})
                                    .boxed()
                            }
                            _ => Full::new(Bytes::from(format!("{name} {path}")))
                                .map_err(|e| match e {})
                                .boxed(),
                        };
                        let mut res = hyper::Response::new(body);
                        if slow {
                            res.headers_mut()
                                .insert("content-length", (50 * 16384).into());
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Backend { addr, connections }
}

async fn ws_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

fn service(name: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap(),
    )
}

fn slice(svc: &str, addrs: &[SocketAddr]) -> Arc<EndpointSlice> {
    // One slice per port (a test backend per port).
    let port = addrs.first().map(|a| a.port()).unwrap_or(1);
    Arc::new(serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-x"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": addrs.iter().map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
    })).unwrap())
}

fn path(p: &str, ty: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

fn ingress(name: &str, annotations: Value, spec: Value) -> Arc<Ingress> {
    let mut spec = spec;
    spec["ingressClassName"] = json!("nginx");
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn tls_secret(name: &str, host: &str) -> (Arc<Secret>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        k8s_openapi::ByteString(cert.pem().into_bytes()),
    );
    data.insert(
        "tls.key".to_string(),
        k8s_openapi::ByteString(key.serialize_pem().into_bytes()),
    );
    let s = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    (Arc::new(s), cert.der().to_vec())
}

#[derive(Default)]
struct World {
    ingresses: Vec<Arc<Ingress>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    secrets: Vec<Arc<Secret>>,
}

impl World {
    fn table(&self) -> Table {
        let classes: Vec<Arc<IngressClass>> = Vec::new();
        Table::build(
            &class(),
            &Inputs {
                ingresses: &self.ingresses,
                classes: &classes,
                services: &self.services,
                slices: &self.slices,
                secrets: &self.secrets,
                keys: None,
            },
        )
    }
}

struct Running {
    http: SocketAddr,
    https: SocketAddr,
    table: Arc<ArcSwap<Table>>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(table: Table) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let table = Arc::new(ArcSwap::from_pointee(table));
    let cfg = rke2_ingress::Config {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: "127.0.0.1:0".parse().unwrap(),
        health_listen: None,
        settings: rke2_ingress::controller::Settings {
            class: class(),
            election_id: "x".into(),
            pod: None,
            publish_addresses: vec![],
        },
        default_ssl_certificate: None,
    };
    let (proxy, listeners) = rke2_ingress::bind(
        &cfg,
        table.clone(),
        rke2_ingress::tls::self_signed().unwrap(),
    )
    .await
    .unwrap();
    let (http, https) = listeners.addrs();
    let stop = CancellationToken::new();
    tokio::spawn(listeners.serve(proxy, stop.clone()));
    Running {
        http,
        https,
        table,
        stop,
    }
}

/// One request on a fresh connection: (status, head, body).
async fn get(addr: SocketAddr, host: &str, path: &str, extra: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head.to_ascii_lowercase(),
        body.to_string(),
    )
}

#[tokio::test]
async fn routes_by_host_and_path_as_ingress_nginx() {
    let a = backend("a").await;
    let b = backend("b").await;
    let c = backend("c").await;
    let d = backend("d").await;
    let mut w = World::default();
    for (n, be) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        w.services.push(service(n));
        w.slices.push(slice(n, &[be.addr]));
    }
    w.services.push(service("empty"));
    w.ingresses.push(ingress("one", json!({}), json!({
        "defaultBackend": {"service": {"name": "d", "port": {"name": "http"}}},
        "rules": [
            {"host": "x.test", "http": {"paths": [
                path("/", "Prefix", "a"),
                path("/api", "Prefix", "b"),
                path("/api/exact", "Exact", "c"),
                path("/impl", "ImplementationSpecific", "c"),
            ]}},
            {"host": "*.wild.test", "http": {"paths": [path("/", "Prefix", "b")]}},
            {"host": "down.test", "http": {"paths": [path("/", "Prefix", "empty"), path("/gone", "Prefix", "nosuch")]}},
        ]
    })));
    let table = w.table();
    assert_eq!(
        table
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>(),
        ["path \"/gone\": service default/nosuch not found"]
    );
    let p = start(table).await;
    let cases = [
        ("x.test", "/", "a /"),
        ("x.test", "/api", "b /api"),
        ("x.test", "/api/", "b /api/"),
        ("x.test", "/api/v1?q=1", "b /api/v1?q=1"),
        ("x.test", "/apis", "a /apis"),
        ("x.test", "/api/exact", "c /api/exact"),
        ("x.test", "/api/exact/more", "b /api/exact/more"),
        ("x.test", "/impl/x", "c /impl/x"),
        ("X.TEST:80", "/api", "b /api"),
        ("one.wild.test", "/", "b /"),
        ("other.test", "/z", "d /z"),
    ];
    for (host, path, want) in cases {
        let (status, _, body) = get(p.http, host, path, "").await;
        assert_eq!((status, body.as_str()), (200, want), "{host}{path}");
    }
    // A wildcard matches one label only; with no rule and the default
    // backend it goes there.
    assert_eq!(get(p.http, "a.b.wild.test", "/", "").await.2, "d /");
    assert_eq!(get(p.http, "down.test", "/", "").await.0, 503);
    assert_eq!(get(p.http, "down.test", "/gone", "").await.0, 503);

    // Without a default backend: 404.
    let mut w2 = World::default();
    w2.services.push(service("a"));
    w2.slices.push(slice("a", &[a.addr]));
    w2.ingresses.push(ingress(
        "two",
        json!({}),
        json!({"rules": [{"host": "x.test", "http": {"paths": [path("/a", "Exact", "a")]}}]}),
    ));
    p.table.store(Arc::new(w2.table()));
    assert_eq!(get(p.http, "x.test", "/a", "").await.0, 200);
    assert_eq!(get(p.http, "x.test", "/b", "").await.0, 404);
    assert_eq!(get(p.http, "nobody.test", "/a", "").await.0, 404);
}

#[tokio::test]
async fn annotations_rewrite_redirect_limit_time_out_and_filter() {
    let a = backend("a").await;
    let mut w = World::default();
    w.services.push(service("a"));
    w.slices.push(slice("a", &[a.addr]));
    let (secret, _) = tls_secret("t", "tls.test");
    w.secrets.push(secret);
    w.ingresses.push(ingress("rw", json!({
        "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
        "nginx.ingress.kubernetes.io/use-regex": "true",
    }), json!({"rules": [{"host": "rw.test", "http": {"paths": [path("/something(/|$)(.*)", "ImplementationSpecific", "a")]}}]})));
    w.ingresses.push(ingress(
        "tls",
        json!({}),
        json!({
        "tls": [{"hosts": ["tls.test"], "secretName": "t"}],
        "rules": [{"host": "tls.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    w.ingresses.push(ingress(
        "force",
        json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
        json!({"rules": [{"host": "force.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    w.ingresses.push(ingress(
        "limits",
        json!({
            "nginx.ingress.kubernetes.io/proxy-body-size": "1k",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "1",
        }),
        json!({"rules": [{"host": "limits.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    w.ingresses.push(ingress(
        "allow",
        json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"}),
        json!({"rules": [{"host": "deny.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    w.ingresses.push(ingress(
        "allow2",
        json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "127.0.0.0/8"}),
        json!({"rules": [{"host": "allow.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    w.ingresses.push(ingress("badre", json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
        json!({"rules": [{"host": "re.test", "http": {"paths": [path("/ok/[0-9]+", "Prefix", "a"), path("/bad(", "Prefix", "a")]}}]})));
    let table = w.table();
    assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
    assert_eq!(table.problems[0].name, "badre");
    assert!(
        table.problems[0]
            .message
            .contains("\"/bad(\" of host \"re.test\" is not a valid regex"),
        "{:?}",
        table.problems
    );
    let p = start(table).await;

    assert_eq!(
        get(p.http, "rw.test", "/something/new/path?x=1", "")
            .await
            .2,
        "a /new/path?x=1"
    );
    assert_eq!(get(p.http, "rw.test", "/SOMETHING", "").await.2, "a /");
    let (st, head, _) = get(p.http, "tls.test", "/p?q", "").await;
    assert_eq!(st, 308);
    assert!(head.contains("location: https://tls.test/p?q"), "{head}");
    assert_eq!(get(p.http, "force.test", "/", "").await.0, 308);
    assert_eq!(
        get(p.http, "limits.test", "/size", "Content-Length: 2048\r\n")
            .await
            .0,
        413
    );
    assert_eq!(get(p.http, "limits.test", "/sleep", "").await.0, 504);
    assert_eq!(get(p.http, "deny.test", "/", "").await.0, 403);
    assert_eq!(get(p.http, "allow.test", "/", "").await.0, 200);
    assert_eq!(get(p.http, "re.test", "/OK/12", "").await.2, "a /OK/12");
    assert_eq!(get(p.http, "re.test", "/bad(", "").await.0, 404);

    // The forwarded headers.
    let (_, _, h) = get(
        p.http,
        "rw.test",
        "/something/headers",
        "X-Forwarded-For: 6.6.6.6\r\n",
    )
    .await;
    for want in [
        "host: rw.test",
        "x-forwarded-for: 127.0.0.1",
        "x-real-ip: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: rw.test",
        &format!("x-forwarded-port: {}", p.http.port()),
    ] {
        assert!(h.lines().any(|l| l == want), "{want} in\n{h}");
    }
    assert!(!h.contains("6.6.6.6"));
}

#[tokio::test]
async fn a_body_within_the_limit_reaches_the_backend() {
    let a = backend("a").await;
    let mut w = World::default();
    w.services.push(service("a"));
    w.slices.push(slice("a", &[a.addr]));
    w.ingresses.push(ingress(
        "limits",
        json!({"nginx.ingress.kubernetes.io/proxy-body-size": "1k"}),
        json!({"rules": [{"host": "l.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    let p = start(w.table()).await;
    let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let body = "y".repeat(1000);
    s.write_all(format!("POST /size HTTP/1.1\r\nHost: l.test\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{body}").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(
        buf.starts_with("HTTP/1.1 200") && buf.ends_with("\r\n\r\n1000"),
        "{buf}"
    );
    // Chunked and too long: cut at the limit.
    let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let chunk = "z".repeat(2000);
    s.write_all(format!("POST /size HTTP/1.1\r\nHost: l.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes()).await.unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    assert!(!buf.ends_with("2000"), "{buf}");
}

#[tokio::test]
async fn keep_alive_pools_round_robin_and_retries() {
    let a = backend("a").await;
    let b = backend("b").await;
    // A closed port among the endpoints: connect fails, the next is tried.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut w = World::default();
    w.services.push(service("s"));
    // Three endpoints on three addresses with one port number each is not
    // how slices work; give each its own slice with its own port.
    let mut s1 = (*slice("s", &[a.addr])).clone();
    s1.metadata.name = Some("s-a".into());
    let mut s2 = (*slice("s", &[b.addr])).clone();
    s2.metadata.name = Some("s-b".into());
    let mut s3 = (*slice("s", &[dead])).clone();
    s3.metadata.name = Some("s-dead".into());
    w.slices = vec![Arc::new(s1), Arc::new(s2), Arc::new(s3)];
    w.ingresses.push(ingress(
        "rr",
        json!({}),
        json!({"rules": [{"host": "rr.test", "http": {"paths": [path("/", "Prefix", "s")]}}]}),
    ));
    let table = w.table();
    let p = start(table).await;
    // One client connection, many requests.
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let req = hyper::Request::builder()
            .uri("/")
            .header("host", "rr.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        *seen
            .entry(String::from_utf8_lossy(&body[..1]).to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.values().all(|n| *n >= 10),
        "round robin over the live two: {seen:?}"
    );
    // Pooled: far fewer backend connections than requests.
    let conns = a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst);
    assert!(conns <= 4, "{conns} backend connections for 30 requests");
}

#[tokio::test]
async fn tls_by_sni_with_alpn_h2_and_a_default_certificate() {
    let a = backend("a").await;
    let mut w = World::default();
    w.services.push(service("a"));
    w.slices.push(slice("a", &[a.addr]));
    let (s1, der1) = tls_secret("one", "one.test");
    let (s2, der2) = tls_secret("wild", "*.two.test");
    w.secrets = vec![s1, s2];
    w.ingresses.push(ingress("t", json!({}), json!({
        "tls": [{"hosts": ["one.test"], "secretName": "one"}, {"hosts": ["*.two.test"], "secretName": "wild"},
                {"hosts": ["three.test"], "secretName": "missing"}],
        "rules": [{"host": "one.test", "http": {"paths": [path("/", "Prefix", "a")]}},
                  {"host": "*.two.test", "http": {"paths": [path("/", "Prefix", "a")]}}]})));
    let table = w.table();
    assert_eq!(table.problems.len(), 1);
    assert!(
        table.problems[0]
            .message
            .starts_with("TLS secret default/missing not found"),
        "{:?}",
        table.problems
    );
    let p = start(table).await;
    let handshake = |sni: &'static str, alpn: &'static [u8]| {
        let addr = p.https;
        async move {
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(
                rke2_trust::provider(),
            ))
            .with_no_client_auth();
            let mut cfg = cfg;
            cfg.alpn_protocols = vec![alpn.to_vec()];
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .unwrap()
        }
    };
    let s = handshake("one.test", b"http/1.1").await;
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        &der1[..]
    );
    let s = handshake("x.two.test", b"http/1.1").await;
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        &der2[..]
    );
    let s = handshake("three.test", b"http/1.1").await;
    let default = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert!(default != der1 && default != der2);
    // HTTP/2 to clients.
    let s = handshake("one.test", b"h2").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("https://one.test/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"a /h2");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let ws = ws_backend().await;
    let mut w = World::default();
    w.services.push(service("ws"));
    w.slices.push(slice("ws", &[ws]));
    w.ingresses.push(ingress(
        "ws",
        json!({}),
        json!({"rules": [{"host": "ws.test", "http": {"paths": [path("/", "Prefix", "ws")]}}]}),
    ));
    let p = start(w.table()).await;
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut c, resp) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    // A table swap does not touch the upgraded connection.
    p.table.store(Arc::new(Table::default()));
    for m in ["one", "two", "three"] {
        c.send(tokio_tungstenite::tungstenite::Message::text(m))
            .await
            .unwrap();
        let back = c.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), m);
    }
}

#[tokio::test]
async fn a_table_swap_does_not_cut_a_download() {
    let a = backend("a").await;
    let mut w = World::default();
    w.services.push(service("a"));
    w.slices.push(slice("a", &[a.addr]));
    w.ingresses.push(ingress(
        "d",
        json!({}),
        json!({"rules": [{"host": "d.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    let p = start(w.table()).await;
    let addr = p.http;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: d.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the headers");
        got.extend_from_slice(&buf[..n]);
    }
    // The download has begun: swap tables (the route removed, then
    // another one) until it ends.
    let mut w2 = World::default();
    w2.services.push(service("a"));
    w2.slices.push(slice("a", &[a.addr]));
    w2.ingresses.push(ingress(
        "e",
        json!({}),
        json!({"rules": [{"host": "e.test", "http": {"paths": [path("/", "Prefix", "a")]}}]}),
    ));
    let done = CancellationToken::new();
    let swapper = {
        let table = p.table.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut swaps = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !done.is_cancelled() {
                tick.tick().await;
                table.store(Arc::new(if swaps.is_multiple_of(2) {
                    w2.table()
                } else {
                    Table::default()
                }));
                swaps += 1;
            }
            swaps
        })
    };
    s.read_to_end(&mut got).await.unwrap();
    done.cancel();
    let swaps = swapper.await.unwrap();
    assert!(swaps > 10, "the download outlived only {swaps} swaps");
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 50 * 16384, "the download was cut");
    assert_eq!(
        get(addr, "d.test", "/", "").await.0,
        404,
        "the swap did take effect"
    );
}

/// A backend over TLS (HTTP/1.1) or h2c (HTTP/2 without TLS), answering
/// `<name> <version>`.
async fn protocol_backend(name: &'static str, tls: bool) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tls.then(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["backend".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("{name} {:?}", req.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                match acceptor {
                    Some(a) => {
                        let Ok(s) = a.accept(tcp).await else { return };
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    }
                    None => {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn backend_protocols_https_and_h2c() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = protocol_backend("tls", true).await;
    let h2c = protocol_backend("h2c", false).await;
    let mut w = World::default();
    for (n, a) in [("tls", tls), ("h2c", h2c)] {
        w.services.push(service(n));
        w.slices.push(slice(n, &[a]));
    }
    w.ingresses.push(ingress(
        "tls",
        json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}),
        json!({"rules": [{"host": "tls.test", "http": {"paths": [path("/", "Prefix", "tls")]}}]}),
    ));
    w.ingresses.push(ingress(
        "grpc",
        json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        json!({"rules": [{"host": "grpc.test", "http": {"paths": [path("/", "Prefix", "h2c")]}}]}),
    ));
    let p = start(w.table()).await;
    assert_eq!(get(p.http, "tls.test", "/", "").await.2, "tls HTTP/1.1");
    assert_eq!(get(p.http, "grpc.test", "/", "").await.2, "h2c HTTP/2.0");
}

#[test]
fn rebuilds_reuse_parsed_keys_until_the_secret_changes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (secret, _) = tls_secret("one", "one.test");
    let mut w = World::default();
    w.secrets.push(secret.clone());
    w.ingresses.push(ingress(
        "t",
        json!({}),
        json!({
        "tls": [{"hosts": ["one.test"], "secretName": "one"}],
        "rules": [{"host": "one.test"}]}),
    ));
    let cache = rke2_ingress::routes::KeyCache::default();
    let build = |w: &World| {
        let t = Table::build(
            &class(),
            &Inputs {
                ingresses: &w.ingresses,
                classes: &[],
                services: &w.services,
                slices: &w.slices,
                secrets: &w.secrets,
                keys: Some(&cache),
            },
        );
        cache.retain_used();
        t.cert("one.test").unwrap()
    };
    let first = build(&w);
    assert!(Arc::ptr_eq(&first, &build(&w)));
    // A new resourceVersion of the Secret is parsed again.
    let mut changed = (*secret).clone();
    changed.metadata.resource_version = Some("2".into());
    w.secrets = vec![Arc::new(changed)];
    assert!(!Arc::ptr_eq(&first, &build(&w)));
}

#[tokio::test]
async fn a_backend_closing_idle_connections_costs_no_request() {
    // One response per connection, then a silent close (no `Connection:
    // close`): the pooled connection is dead when the next request comes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let mut w = World::default();
    w.services.push(service("c"));
    w.slices.push(slice("c", &[addr]));
    w.ingresses.push(ingress(
        "c",
        json!({}),
        json!({"rules": [{"host": "c.test", "http": {"paths": [path("/", "Prefix", "c")]}}]}),
    ));
    let p = start(w.table()).await;
    for i in 0..20 {
        let (st, _, body) = get(p.http, "c.test", "/", "").await;
        assert_eq!((st, body.as_str()), (200, "ok"), "request {i}");
    }
}
