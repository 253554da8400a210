//! The bundled ingress controller for real: a server (tainted
//! CriticalAddonsOnly, so it runs no ingress pod) and an agent on a bed;
//! the rke2-ingress-nginx DaemonSet runs `rke2 ingress-controller` from
//! the addon image on the agent with host ports 80/443. Everything is
//! driven with real kubectl and reached from outside the nodes at the
//! agent's address: hosts routed to two Services' pods, TLS by SNI with a
//! Secret's certificate, 404 for unknown hosts, a WebSocket echo, an
//! Ingress edited while a long download runs, ADDRESS in `kubectl get
//! ingress`, and Warning Events for a broken Ingress that leaves the
//! others working.
//!
//! Needs root (namespaces), etcd, containerd and kubectl
//! (scripts/install.sh).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(240);
const SOON: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn kubectl(k: &Path, kc: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(k: &Path, kc: &Path, dir: &Path, name: &str, yaml: &str) -> String {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    ok(kubectl(k, kc, &["apply", "-f", &p.display().to_string()]))
}

/// One plain HTTP/1.1 request (`Connection: close`): status, headers
/// (lower-case names), body.
async fn http(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    parse(&buf)
}

fn parse(buf: &[u8]) -> Option<(u16, String, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

/// One HTTPS request with SNI `sni`, trusting only `ca`.
async fn https(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> Result<(u16, String, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    parse(&buf).ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))
}

/// A WebSocket echo server (the test's own, on the bed's gateway address).
async fn ws_echo(listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() || m.is_binary() {
                    let _ = ws.send(m).await;
                }
            }
        });
    }
}

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 100;

/// A slow download: `CHUNKS` chunks of `CHUNK` bytes, one per 100 ms
/// (a throttled source: the download lasts ~10 s).
async fn slow_download(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
                CHUNK * CHUNKS
            );
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; CHUNK];
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for _ in 0..CHUNKS {
                tick.tick().await;
                if tcp.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A self-signed certificate for `host` (not a CA: clients trusting it
/// take it as the anchor of itself) as PEM files.
fn self_signed(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let crt = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&key, kp.serialize_pem()).unwrap();
    (crt, key)
}

fn running_ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routes_hosts_tls_websockets_and_keeps_downloads_across_edits() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let ha = bed.add_host("a1").unwrap();
    let common = format!("token: ing-secret\npause-image: {TEST_PAUSE_IMAGE}\n");
    let server_cfg = format!(
        "{common}node-taint:\n  - \"CriticalAddonsOnly=true:NoExecute\"\ndisable:\n  - rke2-coredns\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &server_cfg, &[]).unwrap();
    let agent_cfg = format!("server: https://{}:9345\n{common}", hs.ip);
    let mut a1 = NodeProc::new(&bed, bin(), &ha, "agent", &agent_cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    rke2_testbed::seed_images(&a1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc_path = s1.dir.join("rke2.yaml");
    eventually(LONG, "server kubeconfig", || async {
        kc_path.exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kc = s1.kubeconfig_at_ip().unwrap();
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kc).await.ok()
    })
    .await
    .unwrap();
    a1.start(&bed).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "two Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();
    let dir = bed.dir().to_path_buf();
    let http_addr = SocketAddr::from((ha.ip, 80));
    let https_addr = SocketAddr::from((ha.ip, 443));

    // The bundled controller: Running and Ready on the agent only.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let ready_at = Instant::now();
    eventually(
        LONG,
        "the rke2-ingress-nginx pod Running and Ready on a1",
        || async {
            let list = system
                .list(&ListParams::default().labels("app.kubernetes.io/name=rke2-ingress-nginx"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|p| {
                    running_ready(p)
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("a1")
                })
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        let o = kubectl(&k, &kc, &["get", "pods", "-A", "-o", "wide"]);
        let d = kubectl(&k, &kc, &["-n", "kube-system", "describe", "pods"]);
        panic!(
            "{e}\n{}\n{}\nserver:\n{}\nagent:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&d.stdout),
            s1.log(),
            a1.log()
        )
    });
    println!(
        "ingress controller Ready {:?} after the nodes",
        ready_at.elapsed()
    );
    let pods = ok(kubectl(
        &k,
        &kc,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-o",
            "wide",
            "-l",
            "app.kubernetes.io/name=rke2-ingress-nginx",
        ],
    ));
    assert!(
        !pods.contains(" s1 "),
        "the tainted server runs no ingress pod:\n{pods}"
    );
    let classes = ok(kubectl(&k, &kc, &["get", "ingressclass"]));
    let words: Vec<Vec<&str>> = classes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        words[0],
        ["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
        "{classes}"
    );
    assert_eq!(
        words[1][..3],
        ["nginx", "k8s.io/ingress-nginx", "<none>"],
        "{classes}"
    );

    // Two sites as pods behind Services; the WebSocket echo and the slow
    // download are this test's servers on the bed's gateway, reached
    // through selector-less Services with EndpointSlices, as ingress-nginx
    // reaches any endpoint.
    let gw = bed.subnet_gateway();
    let ws_l = tokio::net::TcpListener::bind((gw, 0)).await.unwrap();
    let slow_l = tokio::net::TcpListener::bind((gw, 0)).await.unwrap();
    let ws_port = ws_l.local_addr().unwrap().port();
    let slow_port = slow_l.local_addr().unwrap().port();
    tokio::spawn(ws_echo(ws_l));
    tokio::spawn(slow_download(slow_l));
    let mut backends = String::new();
    for site in ["a", "b"] {
        backends.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: site-{site}\n  labels: {{app: site-{site}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: web\n    image: {TEST_BUSYBOX_IMAGE}\n    command: [sh, -c, 'mkdir -p /www && echo site {site} > /www/index.html && exec httpd -f -p 8080 -h /www']\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: site-{site}\nspec:\n  selector: {{app: site-{site}}}\n  ports:\n  - name: web\n    port: 80\n    targetPort: 8080\n---\n"
        ));
    }
    for (name, port) in [("ws", ws_port), ("slow", slow_port)] {
        backends.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  labels:\n    kubernetes.io/service-name: {name}\n    endpointslice.kubernetes.io/managed-by: ingress-test\naddressType: IPv4\nports:\n- name: \"\"\n  port: {port}\n  protocol: TCP\nendpoints:\n- addresses: [\"{gw}\"]\n  conditions: {{ready: true}}\n---\n"
        ));
    }
    apply(&k, &kc, &dir, "backends", &backends);
    let (crt, key) = self_signed(&dir, "a.test");
    ok(kubectl(
        &k,
        &kc,
        &[
            "create",
            "secret",
            "tls",
            "a-tls",
            "--cert",
            &crt.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    ));
    let ca = rustls_pemfile::certs(&mut &std::fs::read(&crt).unwrap()[..])
        .next()
        .unwrap()
        .unwrap();

    // No ingressClassName: the default class admission gives it `nginx`.
    let demo = |extra_rule: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: demo\nspec:\n  tls:\n  - hosts: [a.test]\n    secretName: a-tls\n  rules:\n  - host: a.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: site-a, port: {{name: web}}}}}}}}\n  - host: b.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: site-b, port: {{number: 80}}}}}}}}\n  - host: ws.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: ws, port: {{number: 80}}}}}}}}\n  - host: slow.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: slow, port: {{number: 80}}}}}}}}\n{extra_rule}"
        )
    };
    // The apiserver's validation, as kubectl shows it.
    let bad = dir.join("invalid.yaml");
    std::fs::write(&bad, "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: invalid\nspec:\n  rules:\n  - host: \"*.a.*.test\"\n    http:\n      paths:\n      - {path: /x, backend: {service: {name: site-a, port: {number: 80}}}}\n      - {path: x, pathType: Prefix, backend: {service: {name: site-a}}}\n").unwrap();
    let out = kubectl(&k, &kc, &["apply", "-f", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for want in [
        "spec.rules[0].host: Invalid value: \"*.a.*.test\"",
        "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
        "spec.rules[0].http.paths[1].path: Invalid value: \"x\": must be an absolute path",
        "spec.rules[0].http.paths[1].backend.service.port: Required value: port name or number is required",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    apply(&k, &kc, &dir, "demo", &demo(""));
    let got = ok(kubectl(
        &k,
        &kc,
        &[
            "get",
            "ingress",
            "demo",
            "-o",
            "jsonpath={.spec.ingressClassName}",
        ],
    ));
    assert_eq!(got, "nginx", "DefaultIngressClass admission");

    let b = eventually(LONG, "b.test served by site-b", || async {
        http(http_addr, "b.test", "/").await.filter(|r| r.0 == 200)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", a1.log()));
    assert_eq!(b.2, "site b\n");
    // a.test has TLS: plain HTTP is redirected (308, as ingress-nginx).
    let a = http(http_addr, "a.test", "/index.html?x=1").await.unwrap();
    assert_eq!(a.0, 308, "{a:?}");
    assert!(
        a.1.contains("location: https://a.test/index.html?x=1"),
        "{a:?}"
    );
    let a = eventually(
        SOON,
        "a.test over TLS with the Secret's certificate",
        || async {
            https(https_addr, "a.test", "/", &ca)
                .await
                .ok()
                .filter(|r| r.0 == 200)
        },
    )
    .await
    .unwrap();
    assert_eq!(a.2, "site a\n");
    // Another name gets the default (self-signed) certificate, which the
    // client trusting only a.test's refuses.
    let other = https(https_addr, "b.test", "/", &ca).await;
    assert!(
        matches!(&other, Err(e) if e.starts_with("TLS")),
        "{other:?}"
    );
    let unknown = http(http_addr, "nobody.test", "/").await.unwrap();
    assert_eq!(unknown.0, 404, "{unknown:?}");

    // WebSocket echo through the ingress.
    let tcp = tokio::net::TcpStream::connect(http_addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/echo", tcp)
        .await
        .expect("WebSocket handshake through the ingress");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "through the ingress"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let back = tokio::time::timeout(SOON, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }

    // A long download runs while the Ingress is edited (a host added):
    // the edit takes effect, the download completes untouched.
    let download = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(http_addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: slow.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf).await;
        (r.map_err(|e| e.to_string()), buf, Instant::now())
    });
    apply(
        &k,
        &kc,
        &dir,
        "demo",
        &demo(
            "  - host: c.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: site-b, port: {number: 80}}}}\n",
        ),
    );
    eventually(SOON, "the edit (c.test) in effect", || async {
        http(http_addr, "c.test", "/").await.filter(|r| r.0 == 200)
    })
    .await
    .unwrap();
    let edited_at = Instant::now();
    let (res, buf, done_at) = tokio::time::timeout(LONG, download).await.unwrap().unwrap();
    assert!(res.is_ok(), "download failed: {res:?}");
    assert!(
        done_at > edited_at,
        "the download ended before the edit took effect; the test proved nothing"
    );
    let (status, _, body) = parse(&buf).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), CHUNK * CHUNKS, "the download was cut");

    // status.loadBalancer: the agent's address, shown by kubectl.
    let want = ha.ip.to_string();
    eventually(
        LONG,
        "kubectl get ingress shows the agent's address",
        || async {
            let out = ok(kubectl(&k, &kc, &["get", "ing", "demo"]));
            let header: Vec<&str> = out.lines().next()?.split_whitespace().collect();
            (header == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
                && out.contains(&format!(
                    "nginx   a.test,b.test,ws.test + 2 more...   {want}   80, 443"
                )))
            .then_some(out)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            ok(kubectl(&k, &kc, &["get", "ingress", "-o", "yaml"]))
        )
    });

    // A broken Ingress: a missing Service, a missing Secret, an invalid
    // regex. Warning Events name each; the good paths of it and the other
    // Ingress keep working; the missing Service answers 503.
    apply(
        &k,
        &kc,
        &dir,
        "broken",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: broken\n  annotations:\n    nginx.ingress.kubernetes.io/use-regex: \"true\"\n    nginx.ingress.kubernetes.io/ssl-redirect: \"false\"\n    nginx.ingress.kubernetes.io/rewrite-target: /\nspec:\n  tls:\n  - hosts: [broken.test]\n    secretName: no-such-secret\n  rules:\n  - host: broken.test\n    http:\n      paths:\n      - {path: /missing, pathType: ImplementationSpecific, backend: {service: {name: no-such-svc, port: {number: 80}}}}\n      - {path: \"/bad(\", pathType: ImplementationSpecific, backend: {service: {name: site-a, port: {number: 80}}}}\n      - {path: \"/good/[0-9]+\", pathType: ImplementationSpecific, backend: {service: {name: site-a, port: {number: 80}}}}\n",
    );
    let events = eventually(SOON, "Warning Events on the broken Ingress", || async {
        let out = ok(kubectl(
            &k,
            &kc,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=broken,type=Warning",
                "-o",
                "custom-columns=REASON:.reason,MESSAGE:.message",
            ],
        ));
        (out.contains("service default/no-such-svc not found")
            && out.contains("TLS secret default/no-such-secret not found")
            && out.contains("is not a valid regex"))
        .then_some(out)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a1.log()));
    println!("{events}");
    let good = eventually(SOON, "broken.test's good regex path served", || async {
        http(http_addr, "broken.test", "/good/12")
            .await
            .filter(|r| r.0 == 200)
    })
    .await
    .unwrap();
    assert_eq!(good.2, "site a\n", "rewritten to / on site-a");
    let missing = http(http_addr, "broken.test", "/missing").await.unwrap();
    assert_eq!(missing.0, 503, "{missing:?}");
    let bad = http(http_addr, "broken.test", "/bad(").await.unwrap();
    assert_eq!(bad.0, 404, "the invalid path is skipped: {bad:?}");
    let b = http(http_addr, "b.test", "/").await.unwrap();
    assert_eq!(
        (b.0, b.2.as_str()),
        (200, "site b\n"),
        "the other Ingress is unaffected"
    );
    let ctrl_log = ok(kubectl(
        &k,
        &kc,
        &[
            "-n",
            "kube-system",
            "logs",
            "ds/rke2-ingress-nginx-controller",
        ],
    ));
    assert!(!ctrl_log.contains("panicked"), "{ctrl_log}");

    ok(kubectl(&k, &kc, &["delete", "ingress", "demo", "broken"]));
    eventually(SOON, "b.test gone after the Ingress is deleted", || async {
        http(http_addr, "b.test", "/").await.filter(|r| r.0 == 404)
    })
    .await
    .unwrap();
    drop(bed);
}
