//! Installed as a service, as RKE2 users install it: `scripts/package.sh`
//! makes the release tarball and checksum, `dist/install.sh` (RKE2's
//! variables: `INSTALL_RKE2_ARTIFACT_PATH`, `INSTALL_RKE2_TYPE`,
//! `INSTALL_RKE2_TAR_PREFIX`) verifies and installs it under a prefix with
//! the units rewritten to it; `systemd-analyze verify` accepts both units
//! without a warning. The installed binary, started as systemd starts a
//! `Type=notify` unit (with `NOTIFY_SOCKET`, in its own network namespace),
//! sends `READY=1` only once its API answers, runs a pod, and sends
//! `STOPPING=1` on SIGTERM while the pod's container keeps running
//! (`KillMode=process`). `rke2-uninstall.sh` then leaves nothing of ours:
//! no file, mount, process, nftables table, iptables rule, bridge or pod
//! route. A tampered tarball and a bad `INSTALL_RKE2_TYPE` are refused with
//! nothing installed.
//!
//! Needs root, systemd-analyze (Debian's `systemd`), containerd, runc, the
//! CNI plugins, busybox-static, etcd, nftables, iptables (scripts/install.sh).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rke2_testbed::netbed::NetBed;
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Generous: a busy 2-core machine runs the node, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);

const INSTALLED: &[&str] = &[
    "bin/rke2",
    "bin/rke2-killall.sh",
    "bin/rke2-uninstall.sh",
    "lib/systemd/system/rke2-server.service",
    "lib/systemd/system/rke2-agent.service",
    "lib/systemd/system/rke2-server.env",
    "lib/systemd/system/rke2-agent.env",
];

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn install(artifacts: &Path, prefix: &Path, kind: &str) -> Output {
    Command::new("sh")
        .arg(artifacts.join("install.sh"))
        .env("INSTALL_RKE2_ARTIFACT_PATH", artifacts)
        .env("INSTALL_RKE2_TAR_PREFIX", prefix)
        .env("INSTALL_RKE2_TYPE", kind)
        .env("INSTALL_RKE2_SKIP_RELOAD", "1")
        .output()
        .expect("running install.sh")
}

/// The next datagram on the notify socket, waiting at most `within`.
fn next_notification(sock: &UnixDatagram, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no sd_notify message within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Mount points whose path contains `needle`.
fn mounts_under(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Processes whose executable, working directory or command line mentions
/// `needle` (pid and command line), this test excepted.
fn processes_using(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let link = |name: &str| {
            std::fs::read_link(dir.join(name))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if link("exe").contains(needle) || link("cwd").contains(needle) || cmdline.contains(needle)
        {
            out.push((pid, cmdline));
        }
    }
    out
}

/// What the node left in `host`'s namespace, one line per kind that is
/// still there: the service proxy's table, the egress rule, the bridge,
/// the pod routes.
fn network_leftovers(bed: &NetBed, host: &rke2_testbed::netbed::Host) -> Vec<String> {
    let run = |program: &str, args: &[&str]| {
        let o = bed
            .command_in(host, program)
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut left = Vec::new();
    if run("nft", &["list", "tables"]).contains("rke2-proxy") {
        left.push("nftables table ip rke2-proxy".to_string());
    }
    if run("iptables", &["-w", "5", "-t", "nat", "-S", "POSTROUTING"]).contains("rke2 pod egress") {
        left.push("iptables nat rule \"rke2 pod egress\"".to_string());
    }
    if !run("ip", &["link", "show", "cni0"]).trim().is_empty() {
        left.push("bridge cni0".to_string());
    }
    let routes = run("ip", &["-4", "route", "show", "proto", "250"]);
    if !routes.trim().is_empty() {
        left.push(format!("pod routes: {}", routes.trim()));
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_as_a_notify_service_then_uninstall_leaves_nothing() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "this test needs systemd-analyze (Debian package systemd; scripts/install.sh)"
    );
    let work = tempfile::Builder::new()
        .prefix("rke2-install-")
        .tempdir()
        .unwrap();
    let work_str = work.path().display().to_string();
    let artifacts = work.path().join("artifacts");
    let o = Command::new("bash")
        .arg(repo().join("scripts/package.sh"))
        .arg(bin())
        .arg(&artifacts)
        .output()
        .unwrap();
    assert!(o.status.success(), "package.sh: {}", text(&o));
    assert!(artifacts.join("rke2.linux-amd64.tar.gz").is_file());
    let sums = std::fs::read_to_string(artifacts.join("sha256sum-amd64.txt")).unwrap();
    assert!(sums.contains("rke2.linux-amd64.tar.gz"), "{sums}");

    // Bad input: a tampered tarball and an unknown type install nothing.
    let tampered = work.path().join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    for f in [
        "install.sh",
        "sha256sum-amd64.txt",
        "rke2.linux-amd64.tar.gz",
    ] {
        std::fs::copy(artifacts.join(f), tampered.join(f)).unwrap();
    }
    let mut tar = std::fs::read(tampered.join("rke2.linux-amd64.tar.gz")).unwrap();
    tar.push(0);
    std::fs::write(tampered.join("rke2.linux-amd64.tar.gz"), tar).unwrap();
    let bad_prefix = work.path().join("bad-prefix");
    let o = install(&tampered, &bad_prefix, "server");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("sha256 does not match"),
        "tampered tarball: {}",
        text(&o)
    );
    assert!(
        !bad_prefix.exists(),
        "a refused install wrote {bad_prefix:?}"
    );
    let o = install(&artifacts, &bad_prefix, "worker");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("Invalid INSTALL_RKE2_TYPE \"worker\": must be server or agent"),
        "{}",
        text(&o)
    );
    assert!(!bad_prefix.exists());

    // Install.
    let prefix = work.path().join("prefix");
    let o = install(&artifacts, &prefix, "server");
    assert!(o.status.success(), "install.sh: {}", text(&o));
    assert!(
        text(&o).contains("systemctl enable --now rke2-server.service"),
        "{}",
        text(&o)
    );
    for f in INSTALLED {
        assert!(prefix.join(f).is_file(), "{f} not installed: {}", text(&o));
    }
    let mode = std::fs::metadata(prefix.join("bin/rke2"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    for role in ["server", "agent"] {
        let unit_path = prefix.join(format!("lib/systemd/system/rke2-{role}.service"));
        let unit = std::fs::read_to_string(&unit_path).unwrap();
        for needle in [
            "Type=notify".to_string(),
            "KillMode=process".to_string(),
            "Delegate=yes".to_string(),
            "LimitNOFILE=1048576".to_string(),
            "TasksMax=infinity".to_string(),
            "Restart=always".to_string(),
            "EnvironmentFile=-/etc/default/%N".to_string(),
            format!(
                "EnvironmentFile=-{}/lib/systemd/system/%N.env",
                prefix.display()
            ),
            format!("ExecStart={}/bin/rke2 {role}", prefix.display()),
        ] {
            assert!(
                unit.contains(&needle),
                "rke2-{role}.service lacks {needle}:\n{unit}"
            );
        }
        assert!(!unit.contains("/usr/local"), "{unit}");
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify rke2-{role}.service: {}",
            text(&o)
        );
    }
    let script = std::fs::read_to_string(prefix.join("bin/rke2-uninstall.sh")).unwrap();
    assert!(script.contains(&format!("PREFIX={}", prefix.display())));

    // Run it as systemd runs a Type=notify unit.
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let host = bed.add_host("s1").unwrap();
    let config_dir = work.path().join("etc-rancher-rke2");
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.yaml"),
        format!(
            "token: install-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n  - rke2-coredns\n"
        ),
    )
    .unwrap();
    rke2_testbed::seed_images(&data_dir).unwrap();
    let sock_path = work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let kubeconfig = config_dir.join("rke2.yaml");
    let log = std::fs::File::create(work.path().join("server.log")).unwrap();
    let mut cmd = Command::new(prefix.join("bin/rke2"));
    cmd.arg("server")
        .arg("--config")
        .arg(config_dir.join("config.yaml"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", "s1", "--node-ip"])
        .arg(host.ip.to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut child = bed.spawn_in(&host, &mut cmd).unwrap();
    let server_log = || std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
    let ready = tokio::task::block_in_place(|| next_notification(&sock, LONG));
    assert!(
        ready.lines().any(|l| l == "READY=1") && ready.contains("STATUS=rke2 server is up"),
        "first notification: {ready:?}"
    );
    // READY=1 means usable: the kubeconfig is there and the API answers
    // the first time it is asked.
    let edited = std::fs::read_to_string(&kubeconfig)
        .expect("READY=1 before the kubeconfig was written")
        .replace(
            "https://127.0.0.1:6443",
            &format!("https://{}:6443", host.ip),
        );
    let kc_ip = work.path().join("rke2-ip.yaml");
    std::fs::write(&kc_ip, edited).unwrap();
    let client = rke2_testbed::client_from_kubeconfig(&kc_ip).await.unwrap();
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("API not answering at READY=1: {e}\n{}", server_log()));

    // A pod, so that there are containers, mounts and a pod network to remove.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"]}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually(LONG, "pod Running", || async {
        let p = pods.get("sleeper").await.ok()?;
        (p.status?.phase? == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server_log()));
    // The node's own traces exist before the uninstall (so their absence
    // after it means something).
    let data_str = data_dir.display().to_string();
    assert!(
        !mounts_under(&data_str).is_empty(),
        "no mounts under the data dir"
    );
    eventually(LONG, "service proxy table and pod network", || async {
        let left = network_leftovers(&bed, &host);
        (left.iter().any(|l| l.contains("rke2-proxy")) && left.iter().any(|l| l.contains("cni0")))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}",
            network_leftovers(&bed, &host),
            server_log()
        )
    });

    // `systemctl stop` with KillMode=process: SIGTERM to rke2 alone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = tokio::task::block_in_place(|| next_notification(&sock, LONG));
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "notification after SIGTERM: {stopping:?}"
    );
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(started.elapsed() < LONG, "rke2 did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "rke2 exit after SIGTERM: {status:?}\n{}",
        server_log()
    );
    let survivors = processes_using(&data_str);
    assert!(
        !survivors.is_empty(),
        "the pod's container should outlive a stop of rke2 (KillMode=process)"
    );

    // Uninstall, in the node's namespace as on its machine.
    let o = bed
        .command_in(&host, prefix.join("bin/rke2-uninstall.sh"))
        .unwrap()
        .env("RKE2_DATA_DIR", &data_dir)
        .env("RKE2_CONFIG_DIR", &config_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "rke2-uninstall.sh: {}", text(&o));
    assert!(text(&o).contains("rke2 removed"), "{}", text(&o));
    for f in INSTALLED {
        assert!(!prefix.join(f).exists(), "{f} left after uninstall");
    }
    assert!(!data_dir.exists(), "data dir left after uninstall");
    assert!(!config_dir.exists(), "config dir left after uninstall");
    assert_eq!(mounts_under(&work_str), Vec::<String>::new(), "mounts left");
    assert_eq!(processes_using(&work_str), vec![], "processes left");
    assert_eq!(
        network_leftovers(&bed, &host),
        Vec::<String>::new(),
        "network left"
    );
}
