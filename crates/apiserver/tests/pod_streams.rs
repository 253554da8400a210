//! `pods/log`, `pods/exec` and `pods/attach` through the real apiserver
//! (its HTTPS listener, routing, authorization and a real etcd), forwarded
//! to `FakeNode`.
//!
//! `FakeNode` is a TEST DOUBLE of the node API's wire side only (HTTPS on a
//! loopback address with a serving certificate from the server CA, routes
//! `/containerLogs/...`, `/exec/...`, `/attach/...`): the real node API is
//! built in parallel in the node crates, and end-to-end tests against it
//! come with it. The double records every request (path, query, client
//! identity, headers) so the tests can check what the apiserver sent.
//!
//! Real kubectl binaries (every installed version) drive `logs`, `logs -f`,
//! `exec` and `attach` in `kubectl_logs_exec_and_attach`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rke2_apiserver::proxy::NodeClientTls;
use rke2_apiserver::{ApiConfig, ApiState, Identity};
use rke2_datastore::store::StoreTls;
use rke2_datastore::{EtcdConfig, EtcdProcess, Store};
use rke2_trust::{LeafSpec, ServerTrust, ServerTrustParams};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deadline for anything that converges (2 busy cores).
const DEADLINE: Duration = Duration::from_secs(60);

/// Deadline for one answer that should come at once.
const QUICK: Duration = Duration::from_secs(15);

/// What the fake node saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    identity: Option<Identity>,
    headers: HeaderMap,
}

/// Shared state of the fake node.
struct FakeState {
    seen: mpsc::UnboundedSender<Seen>,
    /// The body of the next `/containerLogs/default/stream/...` answer.
    follow: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

/// The test double of a node API (see the crate-level comment).
struct FakeNode {
    seen: mpsc::UnboundedReceiver<Seen>,
    state: Arc<FakeState>,
}

impl FakeNode {
    /// The next request the node saw.
    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(QUICK, self.seen.recv())
            .await
            .expect("the fake node saw a request in time")
            .expect("fake node running")
    }

    /// Makes the next follow-log answer stream what is sent on the returned
    /// channel; the channel closes when the node's answer is dropped.
    fn follow_stream(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(16);
        *self.state.follow.lock().expect("follow lock") = Some(rx);
        tx
    }
}

/// An apiserver on real etcd, its trust material and a fake node.
struct Bed {
    dir: tempfile::TempDir,
    ip: IpAddr,
    trust: ServerTrust,
    etcd: EtcdProcess,
    state: ApiState,
    api: SocketAddr,
    stop: CancellationToken,
}

impl Bed {
    async fn start() -> Bed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let ip: IpAddr = rke2_testbed::unique_loopback()
            .parse()
            .expect("loopback ip");
        let trust = rke2_trust::ensure_server_trust(&ServerTrustParams {
            data_dir: dir.path().to_path_buf(),
            node_name: "bed".into(),
            serving_sans: vec![ip.to_string(), "localhost".into()],
            etcd_sans: rke2_trust::etcd_sans("bed", &[ip]),
        })
        .expect("trust material");
        let client_url = format!("https://{ip}:2379");
        let peer_url = format!("https://{ip}:2380");
        let etcd = EtcdProcess::start(EtcdConfig {
            binary: "etcd".into(),
            name: "bed".into(),
            data_dir: dir.path().join("etcd"),
            log_file: dir.path().join("etcd.log"),
            listen_client_urls: vec![client_url.clone()],
            advertise_client_url: client_url.clone(),
            peer_url: peer_url.clone(),
            initial_cluster: format!("bed={peer_url}"),
            initial_cluster_state: "new".into(),
            trusted_ca_file: trust.etcd_server_ca.cert_path.clone(),
            cert_file: trust.etcd_server.cert_path.clone(),
            key_file: trust.etcd_server.key_path.clone(),
            peer_trusted_ca_file: trust.etcd_peer_ca.cert_path.clone(),
            peer_cert_file: trust.etcd_peer.cert_path.clone(),
            peer_key_file: trust.etcd_peer.key_path.clone(),
            force_new_cluster: false,
        })
        .expect("starting etcd");
        let store = Store::connect(
            &[client_url],
            Some(&StoreTls {
                ca_pem: trust.etcd_server_ca.cert_pem.clone(),
                cert_pem: trust.etcd_client.cert_pem.clone(),
                key_pem: trust.etcd_client.key_pem.clone(),
            }),
        )
        .await
        .expect("etcd client");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !store.healthy().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd not healthy; log: {}",
                std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("API listener");
        let api = listener.local_addr().expect("API address");
        let state = ApiState::new(
            ApiConfig {
                service_cidr: "10.43.0.0/16".parse().expect("cidr"),
                advertise_address: ip,
                port: api.port(),
                node_port_range: (30000, 32767),
                node_client: NodeClientTls::from_pem(
                    trust.server_ca.cert_pem.as_bytes(),
                    trust.kube_apiserver_client.cert_pem.as_bytes(),
                    trust.kube_apiserver_client.key_pem.as_bytes(),
                )
                .expect("node client TLS"),
                tokens: std::sync::Arc::new(
                    rke2_apiserver::tokens::TokenIssuer::from_pem(&trust.service_account_key_pem)
                        .expect("the trust's service.key"),
                ),
                pod_security: Default::default(),
                audit: None,
                aggregator: None,
            },
            store,
        );
        let tls = rke2_trust::server_tls_config(
            trust.serving.cert_pem.as_bytes(),
            trust.serving.key_pem.as_bytes(),
            Some(trust.client_ca.cert_pem.as_bytes()),
        )
        .expect("API TLS");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(rke2_apiserver::serve(
            listener,
            tls,
            state.clone(),
            async move { s.cancelled().await },
        ));
        Bed {
            dir,
            ip,
            trust,
            etcd,
            state,
            api,
            stop,
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.etcd.stop().await;
    }

    /// Starts a fake node with a serving certificate from `ca` (the server
    /// CA unless a test wants an untrusted one) and registers Node `name`
    /// pointing at it.
    async fn fake_node(&self, name: &str, ca: &rke2_trust::CertAuthority) -> FakeNode {
        let (cert, key) = ca
            .issue(&LeafSpec::server(name, vec![self.ip.to_string()]))
            .expect("node serving certificate");
        let tls = rke2_trust::server_tls_config(
            cert.as_bytes(),
            key.as_bytes(),
            Some(self.trust.client_ca.cert_pem.as_bytes()),
        )
        .expect("node TLS");
        let listener = tokio::net::TcpListener::bind((self.ip, 0))
            .await
            .expect("node listener");
        let addr = listener.local_addr().expect("node address");
        let (tx, seen) = mpsc::unbounded_channel();
        let state = Arc::new(FakeState {
            seen: tx,
            follow: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(fake_node)
            .with_state(state.clone());
        let s = self.stop.clone();
        tokio::spawn(rke2_apiserver::serve_router(
            listener,
            tls,
            app,
            async move { s.cancelled().await },
        ));
        self.put_node(name, addr).await;
        FakeNode { seen, state }
    }

    async fn put_node(&self, name: &str, addr: SocketAddr) {
        self.put(
            &format!("/registry/nodes/{name}"),
            json!({
                "kind": "Node", "apiVersion": "v1",
                "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2024-01-01T00:00:00Z"},
                "status": {
                    "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": addr.ip().to_string()}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": addr.port()}}
                }
            }),
        )
        .await;
    }

    /// Stores a pod with these containers, bound to `node` (if any).
    async fn put_pod(&self, name: &str, containers: &[&str], node: Option<&str>) {
        let containers: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "busybox"}))
            .collect();
        let mut spec = json!({"containers": containers});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        self.put(
            &format!("/registry/pods/default/{name}"),
            json!({
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": spec,
                "status": {"phase": "Running"}
            }),
        )
        .await;
    }

    async fn put(&self, key: &str, v: Value) {
        self.state
            .store
            .create(key, serde_json::to_vec(&v).expect("json"))
            .await
            .expect("storing a test object");
    }

    /// An API client presenting a client certificate of the client CA.
    fn client(&self, user: &str, groups: &[&str]) -> ApiClient {
        let (cert, key) = self
            .trust
            .client_ca
            .issue(&LeafSpec::client(user, groups))
            .expect("client certificate");
        let tls = rke2_trust::client_tls_config(
            self.trust.server_ca.cert_pem.as_bytes(),
            Some((cert.as_bytes(), key.as_bytes())),
        )
        .expect("client TLS");
        ApiClient {
            tls,
            addr: self.api,
        }
    }

    fn admin(&self) -> ApiClient {
        self.client("system:admin", &["system:masters"])
    }

    /// Writes an admin kubeconfig and returns its path.
    fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig.yaml");
        rke2_trust::write_kubeconfig(
            &path,
            &format!("https://{}", self.api),
            self.trust.server_ca.cert_pem.as_bytes(),
            self.trust.admin.cert_pem.as_bytes(),
            self.trust.admin.key_pem.as_bytes(),
            0o600,
        )
        .expect("kubeconfig");
        path
    }
}

/// A minimal HTTP/1.1 client of the test apiserver (one connection per
/// request, so a dropped answer closes its connection).
struct ApiClient {
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
}

impl ApiClient {
    async fn send(&self, req: http::request::Builder) -> hyper::Response<hyper::body::Incoming> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the apiserver");
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await
            .expect("TLS to the apiserver");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let req = req
            .header(http::header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        tokio::time::timeout(QUICK, sender.send_request(req))
            .await
            .expect("the apiserver answered in time")
            .expect("an answer")
    }

    async fn get(&self, path: &str) -> hyper::Response<hyper::body::Incoming> {
        self.send(http::Request::get(path)).await
    }

    /// A GET answered with a Status: (code, reason, message).
    async fn status(&self, req: http::request::Builder) -> (u16, String, String) {
        let resp = self.send(req).await;
        let code = resp.status().as_u16();
        let body = body_text(resp).await;
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        assert_eq!(v["kind"], "Status", "{body}");
        assert_eq!(v["code"], code, "{body}");
        (
            code,
            v["reason"].as_str().unwrap_or("").to_string(),
            v["message"].as_str().unwrap_or("").to_string(),
        )
    }
}

async fn body_text(resp: hyper::Response<hyper::body::Incoming>) -> String {
    let bytes = tokio::time::timeout(QUICK, resp.into_body().collect())
        .await
        .expect("the body ended in time")
        .expect("a body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).to_string()
}

fn upgrade_request(path: &str) -> http::request::Builder {
    http::Request::get(path)
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "websocket")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io",
        )
}

fn masters_apiserver() -> Option<Identity> {
    Some(Identity {
        user: "system:apiserver".into(),
        groups: vec!["system:masters".into()],
    })
}

/// The fake node's one handler: records the request, then answers by route
/// and pod name.
async fn fake_node(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let identity = req
        .extensions()
        .get::<Option<Identity>>()
        .cloned()
        .flatten();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let _ = st.seen.send(Seen {
        path_and_query: path_and_query.clone(),
        identity: identity.clone(),
        headers: req.headers().clone(),
    });
    // As the real node API: only system:masters clients.
    if !identity.is_some_and(|i| i.groups.iter().any(|g| g == "system:masters")) {
        return (StatusCode::FORBIDDEN, "forbidden").into_response();
    }
    let segs: Vec<String> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let query = req.uri().query().unwrap_or("").to_string();
    let [route, _ns, pod, container] = segs.as_slice() else {
        return (StatusCode::NOT_FOUND, "no such route").into_response();
    };
    match (route.as_str(), pod.as_str(), container.as_str()) {
        ("containerLogs", "stream", _) => {
            let Some(rx) = st.follow.lock().expect("follow lock").take() else {
                return (StatusCode::CONFLICT, "no follow stream prepared").into_response();
            };
            let body = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
            });
            ([(CONTENT_TYPE, "text/plain")], Body::from_stream(body)).into_response()
        }
        ("containerLogs", "web", c) => (
            [(CONTENT_TYPE, "text/plain")],
            format!("container={c} query={query}\nsecond line\n"),
        )
            .into_response(),
        ("containerLogs", "duo", "a") => (
            StatusCode::BAD_REQUEST,
            [(CONTENT_TYPE, "application/json")],
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "previous terminated container \"a\" not found", "reason": "BadRequest", "code": 400})
            .to_string(),
        )
            .into_response(),
        ("containerLogs", "duo", _) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "runtime exploded\n").into_response()
        }
        ("exec" | "attach", "raw", _) => raw_echo(req),
        ("exec" | "attach", "web", c) => {
            channel_v5(req, route.clone(), c.to_string(), query).await
        }
        _ => (StatusCode::NOT_FOUND, "unknown pod").into_response(),
    }
}

/// Answers an upgrade with 101 (the first offered subprotocol and a marker
/// `Sec-WebSocket-Accept`) and then echoes the first bytes it reads, prefixed
/// `echo:`, and closes: enough to see that bytes are relayed both ways and
/// that a close travels through.
fn raw_echo(mut req: Request) -> Response {
    let spdy = req.headers().get(UPGRADE).is_some_and(|v| v == "SPDY/3.1");
    let offered_in = if spdy {
        "x-stream-protocol-version"
    } else {
        "sec-websocket-protocol"
    };
    let offered = req
        .headers()
        .get(offered_in)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .unwrap_or("")
        .trim()
        .to_string();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 256];
        let n = io.read(&mut buf).await.unwrap_or(0);
        let mut out = b"echo:".to_vec();
        out.extend_from_slice(&buf[..n]);
        let _ = io.write_all(&out).await;
        let _ = io.shutdown().await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, "Upgrade".parse().expect("header"));
    if spdy {
        h.insert(UPGRADE, "SPDY/3.1".parse().expect("header"));
        if let Ok(v) = offered.parse() {
            h.insert("x-stream-protocol-version", v);
        }
        return resp;
    }
    h.insert(UPGRADE, "websocket".parse().expect("header"));
    h.insert(
        "sec-websocket-accept",
        "from-the-node".parse().expect("header"),
    );
    if let Ok(v) = offered.parse() {
        h.insert("sec-websocket-protocol", v);
    }
    resp
}

/// A real WebSocket in the `v5.channel.k8s.io` protocol, as kubectl speaks
/// it: one stdout message, then the Status on channel 3, then a normal
/// close.
/// `exit N` in the command gives a NonZeroExitCode Status.
async fn channel_v5(req: Request, route: String, container: String, query: String) -> Response {
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let command: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |mut socket| async move {
            let stdout = if route == "exec" {
                format!("ran {} in {container}\n", command.join(" "))
            } else {
                format!("attached to {container}\n")
            };
            let exit = command
                .last()
                .and_then(|c| c.strip_prefix("exit "))
                .and_then(|n| n.parse::<u32>().ok());
            let status = match exit {
                Some(n) if n != 0 => json!({"metadata": {}, "status": "Failure",
                    "message": format!("command terminated with non-zero exit code: exit code {n}"),
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]}}),
                _ => json!({"metadata": {}, "status": "Success"}),
            };
            let frame = |channel: u8, data: &[u8]| {
                let mut v = vec![channel];
                v.extend_from_slice(data);
                Message::Binary(Bytes::from(v))
            };
            let _ = socket.send(frame(1, stdout.as_bytes())).await;
            let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
            // A normal closure (1000): client-go reports a close without a
            // status (1005) as an error.
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })))
                .await;
            // Wait for the client's close (or its going away).
            let _ = tokio::time::timeout(QUICK, async {
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_as_they_come_and_stop_with_the_client() {
    let bed = Bed::start().await;
    let mut node = bed.fake_node("n1", &bed.trust.server_ca).await;
    bed.put_pod("stream", &["app"], Some("n1")).await;
    bed.put_pod("web", &["app"], Some("n1")).await;
    let admin = bed.admin();

    // Every log parameter reaches the node, as the node expects it.
    let resp = admin
        .get("/api/v1/namespaces/default/pods/web/log?sinceTime=2024-05-01T10:00:00%2B02:00&previous=1&limitBytes=100&pretty=true")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain");
    let seen = node.next_seen().await;
    assert_eq!(
        seen.path_and_query,
        "/containerLogs/default/web/app?previous=true&sinceTime=2024-05-01T08%3A00%3A00Z&limitBytes=100"
    );
    assert_eq!(seen.identity, masters_apiserver());
    assert!(body_text(resp).await.starts_with("container=app "));

    // follow: each line arrives while the node's answer is still open.
    let lines = node.follow_stream();
    let resp = admin
        .get("/api/v1/namespaces/default/pods/stream/log?container=app&follow=true&tailLines=5&timestamps=true")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        node.next_seen().await.path_and_query,
        "/containerLogs/default/stream/app?follow=true&timestamps=true&tailLines=5"
    );
    let mut body = resp.into_body();
    for line in ["one\n", "two\n"] {
        lines
            .send(Bytes::from(line))
            .await
            .expect("node stream open");
        let frame = tokio::time::timeout(QUICK, body.frame())
            .await
            .expect("a line arrived without the stream ending")
            .expect("a frame")
            .expect("no error");
        assert_eq!(frame.into_data().expect("data"), line);
    }
    // The client goes away: the apiserver closes its node connection.
    drop(body);
    tokio::time::timeout(QUICK, lines.closed())
        .await
        .expect("the node's follow stream was closed after the client left");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_relay_the_nodes_websocket() {
    let bed = Bed::start().await;
    let mut node = bed.fake_node("n1", &bed.trust.server_ca).await;
    bed.put_pod("raw", &["app", "side"], Some("n1")).await;
    let admin = bed.admin();
    for (path, want) in [
        (
            "/api/v1/namespaces/default/pods/raw/exec?container=app&command=sh&command=-c&command=echo+%22a+b%22&stdin=true&stdout=true&stderr=true&tty=false",
            "/exec/default/raw/app?command=sh&command=-c&command=echo+%22a+b%22&stdin=true&stdout=true&stderr=true",
        ),
        (
            "/api/v1/namespaces/default/pods/raw/attach?container=side&stdin=1&stdout=1&tty=1",
            "/attach/default/raw/side?stdin=true&stdout=true&tty=true",
        ),
    ] {
        let resp = admin.send(upgrade_request(path)).await;
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS, "{path}");
        // The node's own handshake answer reaches the client.
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "v5.channel.k8s.io"
        );
        assert_eq!(resp.headers()["sec-websocket-accept"], "from-the-node");
        let seen = node.next_seen().await;
        assert_eq!(seen.path_and_query, want);
        assert_eq!(seen.identity, masters_apiserver());
        assert_eq!(
            seen.headers["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(
            seen.headers["sec-websocket-protocol"],
            "v5.channel.k8s.io, v4.channel.k8s.io"
        );
        let up = tokio::time::timeout(QUICK, hyper::upgrade::on(resp))
            .await
            .expect("upgrade in time")
            .expect("upgraded");
        let mut io = TokioIo::new(up);
        io.write_all(b"\x00ping").await.expect("write");
        let mut got = Vec::new();
        // The node echoes and closes: read to the end.
        tokio::time::timeout(QUICK, io.read_to_end(&mut got))
            .await
            .expect("the node's close came through")
            .expect("read");
        assert_eq!(got, b"echo:\x00ping");
    }
    // SPDY (kubectl <= 1.29): the upgrade and its protocol offer reach the
    // node, the node's choice reaches the client, bytes pass untouched.
    let resp = admin
        .send(
            http::Request::post(
                "/api/v1/namespaces/default/pods/raw/exec?container=app&command=ls&stdout=true",
            )
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
            .header("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[UPGRADE], "SPDY/3.1");
    assert_eq!(
        resp.headers()["x-stream-protocol-version"],
        "v4.channel.k8s.io"
    );
    let seen = node.next_seen().await;
    assert_eq!(
        seen.path_and_query,
        "/exec/default/raw/app?command=ls&stdout=true"
    );
    assert_eq!(seen.headers[UPGRADE], "SPDY/3.1");
    let offered: Vec<&str> = seen
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(offered, ["v4.channel.k8s.io", "v3.channel.k8s.io"]);
    let up = tokio::time::timeout(QUICK, hyper::upgrade::on(resp))
        .await
        .expect("upgrade in time")
        .expect("upgraded");
    let mut io = TokioIo::new(up);
    io.write_all(b"\x80\x03frames").await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(QUICK, io.read_to_end(&mut got))
        .await
        .expect("the node's close came through")
        .expect("read");
    assert_eq!(got, b"echo:\x80\x03frames");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_node_errors_are_statuses() {
    let bed = Bed::start().await;
    let _node = bed.fake_node("n1", &bed.trust.server_ca).await;
    bed.put_pod("duo", &["a", "b"], Some("n1")).await;
    bed.put_pod("pending", &["app"], None).await;
    bed.put_pod("orphan", &["app"], Some("gone")).await;
    // A node whose port is closed, and one whose certificate is not from
    // the server CA.
    let closed = {
        let l = tokio::net::TcpListener::bind((bed.ip, 0))
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    bed.put_node("down", closed).await;
    bed.put_pod("on-down", &["app"], Some("down")).await;
    let other_ca = rke2_trust::CertAuthority::ensure(
        &bed.dir.path().join("other-ca.crt"),
        &bed.dir.path().join("other-ca.key"),
        "other-ca",
    )
    .expect("other CA");
    let _impostor = bed.fake_node("impostor", &other_ca).await;
    bed.put_pod("on-impostor", &["app"], Some("impostor")).await;

    let admin = bed.admin();
    let get = |p: &str| http::Request::get(format!("/api/v1/namespaces/default/pods/{p}"));
    let check = |got: (u16, String, String), code: u16, reason: &str, msg: &str| {
        assert_eq!((got.0, got.1.as_str()), (code, reason), "{}", got.2);
        assert!(got.2.contains(msg), "{:?} does not contain {msg:?}", got.2);
    };
    check(
        admin.status(get("nope/log")).await,
        404,
        "NotFound",
        "pods \"nope\" not found",
    );
    check(
        admin.status(get("duo/log")).await,
        400,
        "BadRequest",
        "a container name must be specified for pod duo, choose one of: [a b]",
    );
    check(
        admin
            .status(upgrade_request(
                "/api/v1/namespaces/default/pods/duo/exec?command=ls",
            ))
            .await,
        400,
        "BadRequest",
        "a container name must be specified for pod duo, choose one of: [a b]",
    );
    check(
        admin.status(get("duo/log?container=c")).await,
        400,
        "BadRequest",
        "container c is not valid for pod duo",
    );
    check(
        admin.status(get("pending/log")).await,
        400,
        "BadRequest",
        "pod pending does not have a host assigned",
    );
    check(
        admin.status(get("orphan/log")).await,
        404,
        "NotFound",
        "nodes \"gone\" not found",
    );
    check(
        admin.status(get("duo/log?container=a&tailLines=-3")).await,
        422,
        "Invalid",
        "PodLogOptions \"duo\" is invalid: tailLines",
    );
    // Unreachable or untrusted nodes: 503 naming node and address.
    check(
        admin.status(get("on-down/log")).await,
        503,
        "ServiceUnavailable",
        &format!("node \"down\" at {closed}"),
    );
    let (code, reason, msg) = admin.status(get("on-impostor/log")).await;
    assert_eq!(
        (code, reason.as_str()),
        (503, "ServiceUnavailable"),
        "{msg}"
    );
    assert!(
        msg.contains("\"impostor\"") && msg.contains("TLS handshake"),
        "{msg}"
    );
    // The node's errors: a Status passes through, text is wrapped.
    check(
        admin.status(get("duo/log?container=a&previous=true")).await,
        400,
        "BadRequest",
        "previous terminated container \"a\" not found",
    );
    check(
        admin.status(get("duo/log?container=b")).await,
        500,
        "InternalError",
        "runtime exploded",
    );
    // exec/attach need a WebSocket upgrade.
    check(
        admin.status(get("duo/exec?container=a&command=ls")).await,
        400,
        "BadRequest",
        "Upgrade request required",
    );
    check(
        admin
            .status(
                http::Request::post(
                    "/api/v1/namespaces/default/pods/duo/exec?container=a&command=ls",
                )
                .header(CONNECTION, "Upgrade")
                .header(UPGRADE, "h2c"),
            )
            .await,
        400,
        "BadRequest",
        "unsupported upgrade protocol \"h2c\"",
    );
    check(
        admin
            .status(http::Request::post(
                "/api/v1/namespaces/default/pods/duo/log",
            ))
            .await,
        405,
        "MethodNotAllowed",
        "POST",
    );
    // Nodes may not read logs or exec through the API.
    let node_client = bed.client("system:node:n1", &["system:nodes"]);
    check(
        node_client.status(get("duo/log?container=a")).await,
        403,
        "Forbidden",
        "pods \"duo\" is forbidden: User \"system:node:n1\" cannot get resource \"pods/log\"",
    );
    check(
        node_client
            .status(upgrade_request(
                "/api/v1/namespaces/default/pods/duo/exec?container=a&command=ls",
            ))
            .await,
        403,
        "Forbidden",
        "User \"system:node:n1\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\"",
    );
    bed.shutdown().await;
}

/// Runs a kubectl with the bed's kubeconfig; returns (exit code, stdout,
/// stderr).
async fn kubectl(
    bin: &std::path::Path,
    home: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(bin)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", home)
            .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("kubectl {args:?} finished in time"))
    .expect("running kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_exec_and_attach() {
    let bed = Bed::start().await;
    let mut node = bed.fake_node("n1", &bed.trust.server_ca).await;
    bed.put_pod("web", &["app"], Some("n1")).await;
    bed.put_pod("stream", &["app"], Some("n1")).await;
    let kubeconfig = bed.kubeconfig();
    let versions = rke2_testbed::kubectls().expect("kubectl binaries");
    for (minor, bin) in versions {
        let home = bed.dir.path().join(format!("home-1.{minor}"));
        std::fs::create_dir_all(&home).expect("home");
        let run = |args: &'static [&'static str]| {
            let (bin, home, kubeconfig) = (bin.clone(), home.clone(), kubeconfig.clone());
            async move { kubectl(&bin, &home, &kubeconfig, args).await }
        };

        let (code, out, err) = run(&["logs", "web", "--tail=3", "--timestamps"]).await;
        assert_eq!(code, 0, "1.{minor} logs: {err}");
        assert_eq!(
            out, "container=app query=timestamps=true&tailLines=3\nsecond line\n",
            "1.{minor}"
        );
        // Skip what kubectl's own GETs of the pod did not reach the node.
        while node.seen.try_recv().is_ok() {}

        // logs -f: the first line shows while the stream stays open, and
        // killing kubectl closes the node's stream.
        let lines = node.follow_stream();
        let mut child = tokio::process::Command::new(&bin)
            .args(["logs", "-f", "stream"])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl logs -f");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        lines
            .send(Bytes::from("first\n"))
            .await
            .expect("node stream open");
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("1.{minor}: kubectl logs -f printed the first line in time"))
            .expect("read");
        assert_eq!(line, "first\n", "1.{minor}");
        child.kill().await.expect("stopping kubectl logs -f");
        tokio::time::timeout(DEADLINE, lines.closed())
            .await
            .unwrap_or_else(|_| panic!("1.{minor}: the node stream closed after kubectl left"));
        while node.seen.try_recv().is_ok() {}

        let (code, out, err) = run(&["exec", "web", "--", "sh", "-c", "echo hi"]).await;
        if minor < 30 {
            // kubectl 1.29 speaks SPDY unless told otherwise: the upgrade
            // is passed to the node as SPDY (this fake node only speaks
            // WebSocket and refuses it; the real node passes it on to the
            // runtime, see rke2's pods test).
            assert_ne!(code, 0, "1.{minor}: the fake node cannot speak SPDY: {out}");
            let seen = loop {
                let s = node.next_seen().await;
                if s.path_and_query.starts_with("/exec/") {
                    break s;
                }
            };
            assert_eq!(seen.headers["upgrade"], "SPDY/3.1", "1.{minor}: {err}");
            assert!(
                seen.headers
                    .get_all("x-stream-protocol-version")
                    .iter()
                    .any(|v| v == "v4.channel.k8s.io"),
                "1.{minor}: {:?}",
                seen.headers
            );
            // With WebSockets turned on it speaks v5 like later ones.
            let out = tokio::process::Command::new(&bin)
                .args(["exec", "web", "--", "sh", "-c", "echo hi"])
                .env("KUBECONFIG", &kubeconfig)
                .env("HOME", &home)
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(DEADLINE, out)
                .await
                .expect("kubectl exec finished in time")
                .expect("running kubectl");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "ran sh -c echo hi in app\n",
                "1.{minor} with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "1.{minor}");
            continue;
        }
        assert_eq!(
            (code, out.as_str()),
            (0, "ran sh -c echo hi in app\n"),
            "1.{minor}: {err}"
        );
        let seen = loop {
            let s = node.next_seen().await;
            if s.path_and_query.starts_with("/exec/") {
                break s;
            }
        };
        assert_eq!(
            seen.path_and_query,
            "/exec/default/web/app?command=sh&command=-c&command=echo+hi&stdout=true&stderr=true",
            "1.{minor}"
        );
        let (code, _, err) = run(&["exec", "web", "--", "sh", "-c", "exit 3"]).await;
        assert_eq!(code, 3, "1.{minor}: {err}");
        let (code, out, err) = run(&["attach", "web"]).await;
        assert_eq!(
            (code, out.as_str()),
            (0, "attached to app\n"),
            "1.{minor}: {err}"
        );
        while node.seen.try_recv().is_ok() {}
        eprintln!("kubectl 1.{minor}: ok");
    }
    bed.shutdown().await;
}
