//! The node API against a real containerd: logs (current, previous,
//! tail, timestamps, limitBytes, sinceTime, long lines, follow) and exec
//! over a `v5.channel.k8s.io` WebSocket, relayed to containerd's
//! streaming server.
//!
//! Needs root and Debian's `containerd`, `ctr`, `runc` and
//! `busybox-static` (scripts/install.sh installs them); fails with a
//! message naming what is missing otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use futures::{FutureExt, SinkExt, StreamExt};
use http_body_util::BodyExt;
use rke2_node::api::{Cri, Peer};
use rke2_runtime::containerd::{Containerd, ContainerdConfig};
use rke2_runtime::cri::api;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tower::ServiceExt;

const BUSYBOX: &str = "rke2.test/busybox:1";
const PAUSE: &str = "rke2.test/pause:1";
const NS: &str = "default";
const POD: &str = "web";
const UID: &str = "uid-web-1";

/// How long any one wait in this test may take.
const DEADLINE: Duration = Duration::from_secs(60);

fn preflight() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test runs containers and needs root"
    );
    for bin in ["containerd", "ctr", "runc"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{bin}` is not on PATH: install Debian's containerd and runc (scripts/install.sh)"
        );
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn import_images(dir: &Path, socket: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage.py");
    for (file, name, extra) in [
        ("busybox.tar", BUSYBOX, None),
        ("pause.tar", PAUSE, Some("--pause")),
    ] {
        let tar = dir.join(file);
        let mut mk = std::process::Command::new("python3");
        mk.arg(&script).arg(&tar).arg(name);
        if let Some(e) = extra {
            mk.arg(e);
        }
        run(&mut mk);
        run(std::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&tar));
    }
}

fn pod_labels() -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".to_string(), POD.to_string()),
        ("io.kubernetes.pod.namespace".to_string(), NS.to_string()),
        ("io.kubernetes.pod.uid".to_string(), UID.to_string()),
    ])
}

fn sandbox_config(log_dir: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: POD.into(),
            uid: UID.into(),
            namespace: NS.into(),
            attempt: 0,
        }),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: pod_labels(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/pod{UID}"),
            security_context: Some(api::LinuxSandboxSecurityContext {
                // The node's network: no CNI needed.
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Pod {
    cri: Cri,
    sandbox_id: String,
    sandbox: api::PodSandboxConfig,
}

impl Pod {
    /// Creates and starts container `name` (attempt `attempt`) running
    /// `cmd`; returns its id.
    async fn start(&self, name: &str, attempt: u32, cmd: &[&str]) -> String {
        self.start_with(name, attempt, cmd, false).await
    }

    /// As [`Pod::start`]; with `stdin` the container's stdin is open
    /// (once: it closes when the first attached client closes it).
    async fn start_with(&self, name: &str, attempt: u32, cmd: &[&str], stdin: bool) -> String {
        let mut labels = pod_labels();
        labels.insert("io.kubernetes.container.name".into(), name.into());
        let id = self
            .cri
            .runtime()
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: self.sandbox_id.clone(),
                config: Some(api::ContainerConfig {
                    metadata: Some(api::ContainerMetadata {
                        name: name.into(),
                        attempt,
                    }),
                    image: Some(api::ImageSpec {
                        image: BUSYBOX.into(),
                        ..Default::default()
                    }),
                    command: cmd.iter().map(|s| s.to_string()).collect(),
                    log_path: format!("{name}/{attempt}.log"),
                    labels,
                    stdin,
                    stdin_once: stdin,
                    ..Default::default()
                }),
                sandbox_config: Some(self.sandbox.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        self.cri
            .runtime()
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        id
    }

    async fn wait_exited(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let st = self
                .cri
                .runtime()
                .container_status(api::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("a status");
            if st.state == api::ContainerState::ContainerExited as i32 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "container {id} did not exit within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn masters() -> Peer {
    Peer {
        user: "system:apiserver".into(),
        groups: vec!["system:masters".into()],
    }
}

async fn get(app: &axum::Router, uri: &str) -> (http::StatusCode, String) {
    let req = http::Request::get(uri).body(Body::empty()).unwrap();
    let resp = tokio::time::timeout(DEADLINE, app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("GET {uri}: no answer within {DEADLINE:?}"))
        .unwrap();
    let status = resp.status();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("GET {uri}: body not finished within {DEADLINE:?}"))
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What an exec gave: stdout, stderr and the Status on channel 3.
#[derive(Debug)]
struct ExecResult {
    stdout: String,
    stderr: String,
    status: Value,
}

/// Runs an exec in container `app` over a `v5.channel.k8s.io` WebSocket,
/// writing `stdin` (if any) on channel 0, and reads until the server closes.
async fn exec(addr: std::net::SocketAddr, query: &str, stdin: Option<&[u8]>) -> ExecResult {
    session(addr, "exec/", "app", query, stdin).await
}

/// As [`exec`], for `route` (`exec/` or `attach/`) and `container`.
async fn session(
    addr: std::net::SocketAddr,
    route: &str,
    container: &str,
    query: &str,
    stdin: Option<&[u8]>,
) -> ExecResult {
    let url = format!("ws://{addr}/{route}{NS}/{POD}/{container}?{query}");
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static("v5.channel.k8s.io"),
    );
    let (mut ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket connect timed out")
        .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
    assert_eq!(
        resp.headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.to_str().unwrap()),
        Some("v5.channel.k8s.io")
    );
    if let Some(data) = stdin {
        let mut msg = vec![0u8];
        msg.extend_from_slice(data);
        ws.send(tungstenite::Message::Binary(msg.into()))
            .await
            .unwrap();
        // v5's "stdin closed": the node ends the runtime's stdin (SPDY FIN).
        ws.send(tungstenite::Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
    }
    let mut out = ExecResult {
        stdout: String::new(),
        stderr: String::new(),
        status: Value::Null,
    };
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(tungstenite::Message::Binary(b)) => {
                    let Some((ch, data)) = b.split_first() else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(data);
                    match ch {
                        1 => out.stdout.push_str(&text),
                        2 => out.stderr.push_str(&text),
                        3 if !data.is_empty() => {
                            out.status = serde_json::from_slice(data)
                                .unwrap_or_else(|e| panic!("status {text:?}: {e}"))
                        }
                        _ => {}
                    }
                }
                Ok(tungstenite::Message::Close(_)) => break,
                Ok(_) => {}
                Err(e) => panic!("exec stream error: {e}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("exec {query}: not finished within {DEADLINE:?}"));
    out
}

async fn scenario(dir: &Path, cfg: &ContainerdConfig) {
    let socket = cfg.socket();
    import_images(dir, &socket);
    let cri = Cri::connect(&socket).expect("CRI client");
    let sandbox = sandbox_config(&dir.join("logs").join(UID));
    let sandbox_id = cri
        .runtime()
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let pod = Pod {
        cri: cri.clone(),
        sandbox_id,
        sandbox,
    };

    let app = rke2_node::api::router(cri.clone()).layer(axum::Extension(masters()));

    // A follower started before the container writes anything; it must
    // see both lines and end by itself once the container exits.
    let slow = pod
        .start("slow", 0, &["sh", "-c", "echo one; sleep 1; echo two"])
        .await;
    let follow = {
        let app = app.clone();
        tokio::spawn(async move {
            get(&app, &format!("/containerLogs/{NS}/{POD}/slow?follow=true")).await
        })
    };

    pod.start("app", 0, &["sleep", "3600"]).await;
    let first = pod
        .start("echo", 0, &["sh", "-c", "echo hello; echo world"])
        .await;
    pod.wait_exited(&first).await;
    let second = pod.start("echo", 1, &["sh", "-c", "echo again"]).await;
    pod.wait_exited(&second).await;
    // One line longer than containerd's 16 KiB record size (written as
    // partial records), then a line on stderr.
    let long = pod
        .start(
            "long",
            0,
            &[
                "sh",
                "-c",
                "head -c 40000 /dev/zero | tr '\\0' x; echo; echo err >&2",
            ],
        )
        .await;
    pod.wait_exited(&long).await;

    let logs = |q: &str| format!("/containerLogs/{NS}/{POD}/{q}");
    assert_eq!(
        get(&app, &logs("echo")).await,
        (http::StatusCode::OK, "again\n".into())
    );
    assert_eq!(
        get(&app, &logs("echo?previous=true")).await,
        (http::StatusCode::OK, "hello\nworld\n".into())
    );
    assert_eq!(
        get(&app, &logs("echo?previous=true&tailLines=1")).await.1,
        "world\n"
    );
    assert_eq!(
        get(&app, &logs("echo?previous=true&tailLines=0")).await.1,
        ""
    );
    assert_eq!(
        get(&app, &logs("echo?previous=true&limitBytes=3")).await.1,
        "hel"
    );
    assert_eq!(
        get(
            &app,
            &logs("echo?previous=true&sinceTime=2999-01-01T00:00:00Z")
        )
        .await
        .1,
        ""
    );
    let (code, stamped) = get(&app, &logs("echo?previous=true&timestamps=true")).await;
    assert_eq!(code, http::StatusCode::OK);
    let stamped: Vec<&str> = stamped.lines().collect();
    assert_eq!(stamped.len(), 2, "{stamped:?}");
    for (line, text) in stamped.iter().zip(["hello", "world"]) {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, text);
        chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap_or_else(|e| panic!("timestamp {ts:?}: {e}"));
    }
    let (code, body) = get(&app, &logs("app?previous=true")).await;
    assert_eq!(code, http::StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        "previous terminated container \"app\" in pod \"web\" not found"
    );
    let (code, body) = get(&app, &logs("nothere")).await;
    assert_eq!(code, http::StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("\"nothere\""), "{body}");
    let (code, body) = get(&app, &format!("/containerLogs/{NS}/ghost/app")).await;
    assert_eq!(code, http::StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("does not exist"), "{body}");
    let (code, body) = get(&app, &logs("echo?tailLines=-1")).await;
    assert_eq!(code, http::StatusCode::BAD_REQUEST);
    assert!(body.contains("tailLines"), "{body}");

    // stdout and stderr are copied by separate goroutines: their
    // relative order in the file is not fixed.
    let (code, body) = get(&app, &logs("long")).await;
    assert_eq!(code, http::StatusCode::OK);
    let mut lines: Vec<&str> = body.lines().collect();
    lines.sort();
    let long_line = "x".repeat(40000);
    assert!(
        lines == ["err", long_line.as_str()] && body.ends_with('\n'),
        "the long line is not joined: {} lines, lengths {:?}",
        lines.len(),
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(get(&app, &logs("long?stream=Stderr")).await.1, "err\n");
    assert_eq!(
        get(&app, &logs("long?stream=Stdout&tailLines=1&limitBytes=5"))
            .await
            .1,
        "xxxxx"
    );

    let (code, followed) = tokio::time::timeout(DEADLINE, follow)
        .await
        .expect("the followed log did not end after the container exited")
        .unwrap();
    assert_eq!(
        (code, followed.as_str()),
        (http::StatusCode::OK, "one\ntwo\n")
    );
    pod.wait_exited(&slow).await;

    // exec over a real socket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let hi = exec(
        addr,
        "command=echo&command=hi&stdout=true&stderr=true",
        None,
    )
    .await;
    assert_eq!(hi.stdout, "hi\n", "{hi:?}");
    assert_eq!(hi.status["status"], "Success", "{hi:?}");
    let three = exec(
        addr,
        "command=sh&command=-c&command=exit+3&stdout=true&stderr=true",
        None,
    )
    .await;
    assert_eq!(three.status["status"], "Failure", "{three:?}");
    assert_eq!(three.status["reason"], "NonZeroExitCode", "{three:?}");
    let causes = three.status["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        causes
            .iter()
            .any(|c| c["reason"] == "ExitCode" && c["message"] == "3"),
        "{three:?}"
    );
    let err = exec(
        addr,
        "command=sh&command=-c&command=echo+oops+%3E%262&stdout=true&stderr=true",
        None,
    )
    .await;
    assert_eq!(
        (err.stdout.as_str(), err.stderr.as_str()),
        ("", "oops\n"),
        "{err:?}"
    );
    // stdin reaches the command, and its end too: `cat` copies 200 KiB
    // (more than one SPDY window) and exits at the end of its input.
    let input: String = (0..200 * 1024)
        .map(|i| {
            if i % 64 == 63 {
                '\n'
            } else {
                (b'a' + (i % 26) as u8) as char
            }
        })
        .collect();
    let echoed = exec(
        addr,
        "command=cat&stdin=true&stdout=true&stderr=true",
        Some(input.as_bytes()),
    )
    .await;
    assert!(
        echoed.stdout == input,
        "cat gave back {} of {} bytes",
        echoed.stdout.len(),
        input.len()
    );
    assert_eq!(echoed.status["status"], "Success", "{:?}", echoed.status);
    let counted = exec(
        addr,
        "command=wc&command=-l&stdin=true&stdout=true&stderr=true",
        Some(b"one\ntwo\nthree\n"),
    )
    .await;
    assert_eq!(counted.stdout.trim(), "3", "{counted:?}");
    // attach: what is written reaches the container's own stdin, and the
    // end of it too (stdinOnce): `cat` ends, the container exits.
    let reader = pod
        .start_with("reader", 0, &["sh", "-c", "cat; echo reader-done"], true)
        .await;
    let attached = session(
        addr,
        "attach/",
        "reader",
        "stdin=true&stdout=true&stderr=true",
        Some(b"through attach\n"),
    )
    .await;
    assert_eq!(
        attached.stdout, "through attach\nreader-done\n",
        "{attached:?}"
    );
    pod.wait_exited(&reader).await;
    server.abort();

    let _ = cri
        .runtime()
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.sandbox_id.clone(),
        })
        .await;
    cri.runtime()
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.sandbox_id.clone(),
        })
        .await
        .expect("RemovePodSandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_against_real_containerd() {
    preflight();
    // Short: the containerd socket path must fit a unix socket address.
    let dir = tempfile::Builder::new()
        .prefix("nodeapi")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let agent: PathBuf = dir.path().join("agent");
    let cfg = ContainerdConfig::for_agent_dir(&agent, PAUSE);
    let containerd = Containerd::start(cfg.clone())
        .await
        .unwrap_or_else(|e| panic!("starting containerd: {e}"));
    let outcome = std::panic::AssertUnwindSafe(scenario(dir.path(), &cfg))
        .catch_unwind()
        .await;
    containerd.stop().await;
    let cleaned = rke2_runtime::cleanup::kill_all(&cfg.dir, &[dir.path().to_path_buf()]);
    if outcome.is_err() {
        eprintln!("containerd log: {}", cfg.log_path().display());
        eprintln!(
            "{}",
            std::fs::read_to_string(cfg.log_path())
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(cleaned);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
