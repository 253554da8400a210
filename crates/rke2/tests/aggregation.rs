//! API aggregation end to end: a real `rke2 server`, real kubectl, and an
//! extension apiserver started by the test (HTTPS, its own CA, serving
//! `test.rke2.io/v1`). The extension server trusts the apiserver the way
//! real ones (metrics-server) do: it reads
//! `kube-system/extension-apiserver-authentication`, requires a client
//! certificate signed by `requestheader-client-ca-file` whose CN is in
//! `requestheader-allowed-names`, and takes the user from
//! `X-Remote-User`/`X-Remote-Group`, which it echoes back.
//!
//! It is registered through an APIService whose Service has no selector
//! and a hand-written EndpointSlice pointing at this machine's own
//! (non-loopback) address, where the server listens: the apiserver must
//! resolve the endpoint itself. Checked: the built-in groups as local
//! APIServices, the Available condition (Passed, then MissingEndpoints,
//! EndpointsNotFound and FailedDiscoveryCheck), `kubectl get --raw`
//! through the proxy with the caller's identity, a streamed watch,
//! discovery (`/apis`, `kubectl api-resources`), and a 403 before anything
//! is proxied for a user without RBAC.

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rke2_testbed::{Server, ServerOpts, eventually, kubectls};
use serde_json::{Value, json};

/// Generous deadline for anything that converges (2 busy cores).
const DEADLINE: Duration = Duration::from_secs(60);

const NS: &str = "aggr-test";
const GROUP: &str = "test.rke2.io";

async fn start_server() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = Server::start(Path::new(env!("CARGO_BIN_EXE_rke2")), ServerOpts::default())
        .expect("starting rke2 server");
    server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");
    server
}

fn log_tail(server: &Server, n: usize) -> String {
    let text = server.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
    bin: PathBuf,
    minor: u32,
}

impl Kubectl {
    fn new(server: &Server, minor: u32, bin: PathBuf) -> Self {
        let home = server.dir.path().join(format!("home-1.{minor}"));
        std::fs::create_dir_all(&home).expect("kubectl home");
        Self {
            kubeconfig: server.kubeconfig.clone(),
            home,
            bin,
            minor,
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut c = Command::new(&self.bin);
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("spawning kubectl")?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        Ok(child.wait_with_output()?)
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_in(args, None)
    }

    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl 1.{} {args:?} failed: {}",
                self.minor,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None)?;
        ensure!(
            !out.status.success(),
            "kubectl 1.{} {args:?} succeeded: {}",
            self.minor,
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&all)?)?)
    }
}

/// The cells of the row whose first column is `name`, with the header's
/// (split on kubectl's two-space column gap).
fn row(table: &str, name: &str) -> Option<(Vec<String>, Vec<String>)> {
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut lines = table.lines();
    let header = split(lines.next()?);
    let cells = lines
        .map(split)
        .find(|c| c.first().map(String::as_str) == Some(name))?;
    Some((header, cells))
}

/// The cell under header `col` in the row starting with `name`, cut at
/// the header's column offsets (cells may be empty).
fn column(table: &str, name: &str, col: &str) -> Option<String> {
    let mut lines = table.lines();
    let header = lines.next()?;
    let line = lines.find(|l| l.split_whitespace().next() == Some(name))?;
    let start = header.find(col)?;
    // The next column starts after the gap that ends this header.
    let end = header[start..]
        .find("  ")
        .and_then(|gap| {
            header[start + gap..]
                .find(|c: char| !c.is_whitespace())
                .map(|j| start + gap + j)
        })
        .unwrap_or(usize::MAX)
        .min(line.len());
    Some(line.get(start..end)?.trim().to_string())
}

/// A non-loopback IPv4 address of this machine (EndpointSlices refuse
/// loopback addresses, as upstream's).
fn machine_ip() -> Result<IpAddr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .context("running `ip -4 -o addr`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet"
                && let Some(cidr) = words.next()
                && let Some(ip) = cidr.split('/').next()
                && let Ok(ip) = ip.parse::<IpAddr>()
            {
                return Ok(ip);
            }
        }
    }
    bail!("this machine has no global IPv4 address for the extension server to listen on:\n{text}")
}

// ------------------------------------------------------------ the extension server

/// What the extension server saw.
#[derive(Default)]
struct Seen {
    /// (path, X-Remote-User, X-Remote-Group values) of every request.
    requests: Mutex<Vec<(String, String, Vec<String>)>>,
    /// Connections whose client certificate was not an allowed front proxy.
    refused: AtomicUsize,
    /// Lets the watch send its second event.
    release: tokio::sync::Notify,
}

impl Seen {
    fn resource_requests(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p.starts_with(&format!("/apis/{GROUP}/v1/")))
            .count()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_body(code: u16, v: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())).boxed())
        .unwrap()
}

fn watch_line(name: &str) -> Bytes {
    let ev = json!({"type": "ADDED", "object": {"apiVersion": format!("{GROUP}/v1"), "kind": "Widget",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"}}});
    Bytes::from(format!("{ev}\n"))
}

async fn handle(
    mut req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
) -> hyper::Response<Body> {
    let path = req.uri().path().to_string();
    let user = req
        .headers()
        .get("x-remote-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let groups: Vec<String> = req
        .headers()
        .get_all("x-remote-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    seen.requests
        .lock()
        .unwrap()
        .push((path.clone(), user.clone(), groups.clone()));
    let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
    if path.ends_with("/echo")
        && req
            .headers()
            .get("upgrade")
            .is_some_and(|u| u == "rke2-echo")
    {
        // Switches to a protocol that echoes every byte back.
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return hyper::Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "rke2-echo")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    let widgets = format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets");
    if path == format!("/apis/{GROUP}/v1") {
        return json_body(
            200,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"),
                "resources": [{"name": "widgets", "singularName": "widget", "namespaced": true,
                    "kind": "Widget", "verbs": ["get", "list", "watch"]}]}),
        );
    }
    if path == widgets && watch {
        let s = seen.clone();
        let stream = futures::stream::unfold(0u8, move |step| {
            let s = s.clone();
            async move {
                match step {
                    0 => Some((Ok::<_, Infallible>(Frame::data(watch_line("w1"))), 1)),
                    1 => {
                        s.release.notified().await;
                        Some((Ok(Frame::data(watch_line("w2"))), 2))
                    }
                    _ => None,
                }
            }
        });
        return hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    if path == widgets && req.method() == hyper::Method::POST {
        // A create echoes the body it got, naming who sent it.
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        obj["createdBy"] = json!(user);
        return json_body(201, &obj);
    }
    if path == widgets {
        return json_body(
            200,
            &json!({"kind": "WidgetList", "apiVersion": format!("{GROUP}/v1"), "metadata": {"resourceVersion": "1"},
                "items": [{"apiVersion": format!("{GROUP}/v1"), "kind": "Widget",
                    "metadata": {"name": "echo", "namespace": NS},
                    "user": user, "groups": groups}]}),
        );
    }
    json_body(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not here"}),
    )
}

/// Starts the extension server on `ip:0`; trusts only front-proxy
/// certificates from `requestheader_ca` with a CN in `allowed`.
async fn start_extension(
    ip: IpAddr,
    cert_pem: &str,
    key_pem: &str,
    requestheader_ca: &str,
    allowed: Vec<String>,
    seen: Arc<Seen>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rke2_trust::parse_certs(requestheader_ca.as_bytes())? {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            rke2_trust::parse_certs(cert_pem.as_bytes())?,
            rke2_trust::parse_key(key_pem.as_bytes())?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            let allowed = allowed.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    seen.refused.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|der| rke2_trust::peer_identity(der.as_ref()).ok())
                    .map(|(cn, _)| cn);
                if !cn.as_ref().is_some_and(|cn| allowed.contains(cn)) {
                    seen.refused.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let svc = hyper::service::service_fn(move |req| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(handle(req, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok((addr, task))
}

// ------------------------------------------------------------ the test

fn manifests(port: u16, ip: IpAddr, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: {NS}
spec:
  ports:
  - name: https
    port: 443
    targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: {NS}
  labels:
    kubernetes.io/service-name: api
addressType: IPv4
ports:
- name: https
  port: {port}
  protocol: TCP
endpoints:
- addresses: ["{ip}"]
  conditions:
    ready: true
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1.{GROUP}
spec:
  group: {GROUP}
  version: v1
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: {ca}
  service:
    namespace: {NS}
    name: api
    port: 443
"#
    )
}

/// The Available condition's (status, reason) of an APIService.
fn availability(k: &Kubectl, name: &str) -> Option<(String, String)> {
    let a = k.json(&["get", "apiservice", name]).ok()?;
    let c = a["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Available")?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    ))
}

async fn wait_availability(k: &Kubectl, status: &str, reason: &str) -> Result<()> {
    eventually(
        DEADLINE,
        &format!("APIService Available={status} ({reason})"),
        || async {
            (availability(k, &format!("v1.{GROUP}"))
                == Some((status.to_string(), reason.to_string())))
            .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_extension_apiserver_is_proxied_discovered_and_checked() {
    let mut server = start_server().await;
    let mut result = run(&server).await;
    if result.is_ok() {
        result = restart(&mut server).await;
    }
    if let Err(e) = result {
        panic!("{e:#}\n--- server log tail ---\n{}", log_tail(&server, 60));
    }
}

/// At a restart the local APIServices are put back as autoregister keeps
/// them: a changed one is corrected, one of a group/version no longer
/// served is removed, and a user's remote APIService stays.
async fn restart(server: &mut Server) -> Result<()> {
    let all = kubectls()?;
    let (minor, bin) = all.last().cloned().context("a kubectl")?;
    let k = Kubectl::new(server, minor, bin);
    k.ok(&[
        "patch",
        "apiservice",
        "v1.apps",
        "--type=merge",
        "-p",
        r#"{"spec":{"groupPriorityMinimum":5}}"#,
    ])?;
    let gone = "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1alpha1.gone.rke2.io\n  labels:\n    kube-aggregator.kubernetes.io/automanaged: onstart\nspec:\n  group: gone.rke2.io\n  version: v1alpha1\n  groupPriorityMinimum: 100\n  versionPriority: 1\n";
    k.ok_in(&["apply", "-f", "-"], Some(gone))?;
    server.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60))?;
    server.spawn()?;
    server.wait_ready(Duration::from_secs(120)).await?;
    eventually(DEADLINE, "the local APIServices put back", || async {
        let apps = k.json(&["get", "apiservice", "v1.apps"]).ok()?;
        let names = k.ok(&["get", "apiservices", "-o", "name"]).ok()?;
        (apps["spec"]["groupPriorityMinimum"] == 17800
            && !names.contains("v1alpha1.gone.rke2.io")
            && names.contains(&format!("v1.{GROUP}")))
        .then_some(())
    })
    .await
}

async fn run(server: &Server) -> Result<()> {
    let all = kubectls()?;
    let (minor, bin) = all.last().cloned().context("a kubectl")?;
    let k = Kubectl::new(server, minor, bin);

    // The built-in groups are local APIServices, printed as kubectl shows them.
    let table = k.ok(&["get", "apiservices"])?;
    for name in [
        "v1.",
        "v1.apps",
        "v1.rbac.authorization.k8s.io",
        "v1.apiregistration.k8s.io",
    ] {
        let (header, cells) = row(&table, name).with_context(|| format!("{name} in\n{table}"))?;
        ensure!(
            header == ["NAME", "SERVICE", "AVAILABLE", "AGE"],
            "header {header:?}"
        );
        ensure!(
            cells[1] == "Local" && cells[2] == "True",
            "{name}: {cells:?}"
        );
    }
    let core = k.json(&["get", "apiservice", "v1."])?;
    ensure!(core["spec"]["groupPriorityMinimum"] == 18000, "{core}");
    ensure!(core["spec"]["service"].is_null(), "{core}");
    ensure!(
        core["status"]["conditions"][0]["reason"] == "Local",
        "{core}"
    );

    // What real extension servers read to trust us.
    let cm = k.json(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "extension-apiserver-authentication",
    ])?;
    let data = &cm["data"];
    let requestheader_ca = data["requestheader-client-ca-file"]
        .as_str()
        .context("requestheader-client-ca-file")?
        .to_string();
    ensure!(
        data["client-ca-file"]
            .as_str()
            .is_some_and(|s| s.contains("BEGIN CERTIFICATE"))
    );
    let allowed: Vec<String> = serde_json::from_str(
        data["requestheader-allowed-names"]
            .as_str()
            .context("requestheader-allowed-names")?,
    )?;
    ensure!(allowed == ["system:auth-proxy"], "{allowed:?}");
    ensure!(data["requestheader-username-headers"] == "[\"X-Remote-User\"]");
    ensure!(data["requestheader-group-headers"] == "[\"X-Remote-Group\"]");
    ensure!(data["requestheader-extra-headers-prefix"] == "[\"X-Remote-Extra-\"]");

    // The extension server, with its own CA.
    let pki = server.dir.path().join("ext-pki");
    std::fs::create_dir_all(&pki)?;
    let ca = rke2_trust::CertAuthority::ensure(
        &pki.join("ca.crt"),
        &pki.join("ca.key"),
        "aggr-test-ca",
    )?;
    let (cert_pem, key_pem) = ca.issue(&rke2_trust::LeafSpec::server(
        "api",
        vec![format!("api.{NS}.svc")],
    ))?;
    let ip = machine_ip()?;
    let seen = Arc::new(Seen::default());
    let (addr, ext_task) = start_extension(
        ip,
        &cert_pem,
        &key_pem,
        &requestheader_ca,
        allowed,
        seen.clone(),
    )
    .await?;

    // A request for the group before any APIService: not found.
    let err = k.fails(&[
        "get",
        "--raw",
        &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
    ])?;
    ensure!(
        err.contains("NotFound") || err.contains("not find"),
        "{err}"
    );

    k.ok_in(
        &["apply", "-f", "-"],
        Some(&manifests(addr.port(), ip, &ca.cert_pem)),
    )?;
    wait_availability(&k, "True", "Passed").await?;
    let table = k.ok(&["get", "apiservice", &format!("v1.{GROUP}")])?;
    let (_, cells) = row(&table, &format!("v1.{GROUP}")).context("row")?;
    ensure!(
        cells[1] == format!("{NS}/api") && cells[2] == "True",
        "{cells:?}"
    );
    // The discovery check came in as the aggregator, with the front-proxy cert.
    ensure!(
        seen.requests
            .lock()
            .unwrap()
            .iter()
            .any(|(p, u, g)| p == &format!("/apis/{GROUP}/v1")
                && u == "system:kube-aggregator"
                && g.iter().any(|g| g == "system:masters")),
        "no discovery check seen"
    );
    ensure!(
        seen.refused.load(Ordering::SeqCst) == 0,
        "a connection was refused"
    );

    // Proxied with the caller's identity, with every kubectl.
    for (minor, bin) in &all {
        let k = Kubectl::new(server, *minor, bin.clone());
        let table = k.ok(&["get", "apiservices"])?;
        let (_, cells) =
            row(&table, &format!("v1.{GROUP}")).with_context(|| format!("1.{minor}: {table}"))?;
        ensure!(
            cells[1] == format!("{NS}/api") && cells[2] == "True",
            "1.{minor}: {cells:?}"
        );
        // The group/version's own discovery document is the server's.
        let list: Value =
            serde_json::from_str(&k.ok(&["get", "--raw", &format!("/apis/{GROUP}/v1")])?)?;
        ensure!(
            list["kind"] == "APIResourceList" && list["resources"][0]["name"] == "widgets",
            "1.{minor}: {list}"
        );
        ensure!(
            seen.requests
                .lock()
                .unwrap()
                .iter()
                .any(|(p, u, _)| p == &format!("/apis/{GROUP}/v1") && u == "system:admin"),
            "1.{minor}: the discovery request did not reach the server as system:admin"
        );
        let got: Value = serde_json::from_str(&k.ok(&[
            "get",
            "--raw",
            &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
        ])?)?;
        let item = &got["items"][0];
        ensure!(item["user"] == "system:admin", "1.{minor}: {got}");
        let groups: Vec<&str> = item["groups"]
            .as_array()
            .context("groups")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            groups.contains(&"system:masters") && groups.contains(&"system:authenticated"),
            "1.{minor}: {groups:?}"
        );
        // Discovery: /apis lists the group, kubectl api-resources the resource.
        let apis: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/apis"])?)?;
        let g = apis["groups"]
            .as_array()
            .context("groups")?
            .iter()
            .find(|g| g["name"] == GROUP)
            .with_context(|| format!("{GROUP} not in /apis: {apis}"))?;
        ensure!(
            g["preferredVersion"]["groupVersion"] == format!("{GROUP}/v1"),
            "{g}"
        );
        let group_doc: Value =
            serde_json::from_str(&k.ok(&["get", "--raw", &format!("/apis/{GROUP}")])?)?;
        ensure!(
            group_doc["kind"] == "APIGroup" && group_doc["name"] == GROUP,
            "{group_doc}"
        );
        let resources = k.ok(&["api-resources", "--api-group", GROUP])?;
        let col = |n: &str| column(&resources, "widgets", n);
        ensure!(
            col("APIVERSION").as_deref() == Some(&format!("{GROUP}/v1")[..]),
            "1.{minor}: {resources}"
        );
        ensure!(
            col("KIND").as_deref() == Some("Widget"),
            "1.{minor}: {resources}"
        );
        ensure!(
            col("NAMESPACED").as_deref() == Some("true"),
            "1.{minor}: {resources}"
        );
    }

    // A watch streams: the first event arrives while the extension server
    // still holds the second.
    {
        use futures::AsyncBufReadExt;
        let client = rke2_testbed::client_from_kubeconfig(&server.kubeconfig).await?;
        let req = http::Request::get(format!(
            "/apis/{GROUP}/v1/namespaces/{NS}/widgets?watch=true"
        ))
        .body(Vec::new())?;
        let mut stream = Box::pin(client.request_stream(req).await?);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_line(&mut line))
            .await
            .context("first watch event")??;
        ensure!(line.contains("\"w1\""), "{line}");
        seen.release.notify_one();
        line.clear();
        tokio::time::timeout(Duration::from_secs(20), stream.read_line(&mut line))
            .await
            .context("second watch event")??;
        ensure!(line.contains("\"w2\""), "{line}");
    }

    // An upgrade goes through: after the server's 101 bytes flow both ways.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls_dir = server.data_dir.join("server/tls");
        let config = rke2_trust::client_tls_config(
            &std::fs::read(tls_dir.join("server-ca.crt"))?,
            Some((
                &std::fs::read(tls_dir.join("client-admin.crt"))?,
                &std::fs::read(tls_dir.join("client-admin.key"))?,
            )),
        )?;
        let ip: IpAddr = server.ip.parse()?;
        let tcp = tokio::net::TcpStream::connect((ip, 6443)).await?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn.with_upgrades());
        let req = hyper::Request::get(format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets/w/echo"))
            .header("host", format!("{ip}:6443"))
            .header("connection", "Upgrade")
            .header("upgrade", "rke2-echo")
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        ensure!(resp.status() == 101, "upgrade answered {}", resp.status());
        ensure!(
            resp.headers()
                .get("upgrade")
                .is_some_and(|u| u == "rke2-echo")
        );
        let mut io = TokioIo::new(hyper::upgrade::on(resp).await?);
        io.write_all(b"ping").await?;
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut got))
            .await
            .context("echo")??;
        ensure!(&got == b"ping", "{got:?}");
    }

    // A user without RBAC is refused before anything is proxied; with a
    // Role they get through, and the server sees them.
    let before = seen.resource_requests();
    let err = k.fails(&[
        "get",
        "--raw",
        &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
        "--as",
        "eve",
    ])?;
    ensure!(
        err.contains(&format!(
            "widgets.{GROUP} is forbidden: User \"eve\" cannot list resource \"widgets\" in API group \"{GROUP}\" in the namespace \"{NS}\""
        )),
        "{err}"
    );
    ensure!(
        seen.resource_requests() == before,
        "a forbidden request reached the extension server"
    );
    k.ok(&[
        "create",
        "role",
        "widget-reader",
        "-n",
        NS,
        "--verb=list",
        &format!("--resource=widgets.{GROUP}"),
    ])?;
    k.ok(&[
        "create",
        "rolebinding",
        "eve-reads",
        "-n",
        NS,
        "--role=widget-reader",
        "--user=eve",
    ])?;
    let got: Value = eventually(DEADLINE, "eve may list widgets", || async {
        let out = k
            .ok(&[
                "get",
                "--raw",
                &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
                "--as",
                "eve",
            ])
            .ok()?;
        serde_json::from_str(&out).ok()
    })
    .await?;
    ensure!(got["items"][0]["user"] == "eve", "{got}");

    // A create's body goes through.
    let dir = server.dir.path().join("widget.json");
    std::fs::write(
        &dir,
        serde_json::to_vec(
            &json!({"apiVersion": format!("{GROUP}/v1"), "kind": "Widget", "metadata": {"name": "made"}, "size": 7}),
        )?,
    )?;
    let created: Value = serde_json::from_str(&k.ok(&[
        "create",
        "--raw",
        &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
        "-f",
        dir.to_str().context("path")?,
    ])?)?;
    ensure!(
        created["size"] == 7 && created["createdBy"] == "system:admin",
        "{created}"
    );

    // The server's certificate is checked against caBundle: with another
    // CA nothing reaches it (the availability check does not verify, as
    // upstream's, so the APIService stays Available).
    let other = rke2_trust::CertAuthority::ensure(
        &pki.join("other.crt"),
        &pki.join("other.key"),
        "other-ca",
    )?;
    let patch = {
        use base64::Engine;
        json!({"spec": {"caBundle": base64::engine::general_purpose::STANDARD.encode(&other.cert_pem)}}).to_string()
    };
    k.ok(&[
        "patch",
        "apiservice",
        &format!("v1.{GROUP}"),
        "--type=merge",
        "-p",
        &patch,
    ])?;
    let before = seen.resource_requests();
    let err = k.fails(&[
        "get",
        "--raw",
        &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
    ])?;
    ensure!(err.contains("ServiceUnavailable"), "{err}");
    ensure!(
        seen.resource_requests() == before,
        "a request reached a server whose certificate does not verify"
    );
    // insecureSkipTLSVerify: not verified at all.
    k.ok(&[
        "patch",
        "apiservice",
        &format!("v1.{GROUP}"),
        "--type=merge",
        "-p",
        r#"{"spec":{"caBundle":null,"insecureSkipTLSVerify":true}}"#,
    ])?;
    eventually(DEADLINE, "an unverified server reached", || async {
        k.ok(&[
            "get",
            "--raw",
            &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
        ])
        .ok()
    })
    .await?;
    let patch = {
        use base64::Engine;
        json!({"spec": {"insecureSkipTLSVerify": null, "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem)}}).to_string()
    };
    k.ok(&[
        "patch",
        "apiservice",
        &format!("v1.{GROUP}"),
        "--type=merge",
        "-p",
        &patch,
    ])?;
    eventually(DEADLINE, "the right caBundle back in use", || async {
        k.ok(&[
            "get",
            "--raw",
            &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
        ])
        .ok()
    })
    .await?;

    // Endpoints gone: MissingEndpoints, and the proxy answers 503.
    k.ok(&[
        "patch",
        "endpointslice",
        "api-1",
        "-n",
        NS,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/endpoints","value":[]}]"#,
    ])?;
    wait_availability(&k, "False", "MissingEndpoints").await?;
    let table = k.ok(&["get", "apiservice", &format!("v1.{GROUP}")])?;
    let (_, cells) = row(&table, &format!("v1.{GROUP}")).context("row")?;
    ensure!(cells[2] == "False (MissingEndpoints)", "{cells:?}");
    let before = seen.resource_requests();
    let err = k.fails(&[
        "get",
        "--raw",
        &format!("/apis/{GROUP}/v1/namespaces/{NS}/widgets"),
    ])?;
    ensure!(err.contains("ServiceUnavailable"), "{err}");
    ensure!(seen.resource_requests() == before);
    // Discovery still lists the group (upstream hides nothing); its
    // resources cannot be fetched.
    let apis = k.ok(&["get", "--raw", "/apis"])?;
    ensure!(apis.contains(GROUP), "{apis}");

    k.ok(&["delete", "endpointslice", "api-1", "-n", NS])?;
    wait_availability(&k, "False", "EndpointsNotFound").await?;

    // Back, but the server is gone: the discovery check fails.
    ext_task.abort();
    let _ = ext_task.await;
    k.ok_in(
        &["apply", "-f", "-"],
        Some(&manifests(addr.port(), ip, &ca.cert_pem)),
    )?;
    wait_availability(&k, "False", "FailedDiscoveryCheck").await?;
    let a = k.json(&["get", "apiservice", &format!("v1.{GROUP}")])?;
    let msg = a["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or("");
    ensure!(
        msg.starts_with(&format!(
            "failing or missing response from https://{addr}/apis/{GROUP}/v1"
        )),
        "{msg}"
    );

    k.ok(&["delete", "service", "api", "-n", NS])?;
    wait_availability(&k, "False", "ServiceNotFound").await?;

    // A bad APIService is refused with upstream's field.
    let bad = format!(
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v2.{GROUP}\nspec:\n  group: {GROUP}\n  version: v1\n  groupPriorityMinimum: 1000\n  versionPriority: 15\n  insecureSkipTLSVerify: true\n  caBundle: {}\n  service:\n    namespace: {NS}\n    name: api\n",
        "LS0tLS0="
    );
    let out = k.run(&["apply", "-f", "-"], Some(&bad))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a bad APIService was accepted");
    ensure!(
        err.contains("metadata.name: Invalid value: \"v2.test.rke2.io\": must be `spec.version+\".\"+spec.group`: \"v1.test.rke2.io\"")
            && err.contains("spec.insecureSkipTLSVerify: Invalid value: true: may not be true if caBundle is present"),
        "{err}"
    );
    Ok(())
}
