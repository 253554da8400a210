//! The generated rules in a real kernel: a "node" network namespace with
//! a bridge and veth "pods" (each its own namespace running a small
//! Python server that answers with its name and the source address it
//! saw), an "outside" namespace on the node's address, and the proxy's
//! table applied in the node namespace with Debian's `nft`. Real TCP and
//! UDP traffic goes through ClusterIPs and NodePorts. Needs root, `ip`,
//! `nft`, `conntrack` and python3 (scripts/install.sh).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rke2_service_proxy::apply::{self, Applier};
use rke2_service_proxy::model::{Endpoint, NodeFacts, Protocol, ServicePort};
use rke2_service_proxy::{TABLE, conntrack, rules};

const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5353))
    while True:
        d, a = u.recvfrom(100)
        u.sendto(("%s %s\n" % (name, a[0])).encode(), a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(128)
while True:
    c, a = s.accept()
    try:
        c.sendall(("%s %s\n" % (name, a[0])).encode())
    finally:
        c.close()
"#;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces, links and servers of one test; removed on drop.
struct Bed {
    tag: String,
    servers: Vec<Child>,
}

impl Bed {
    fn ns(&self, role: &str) -> String {
        format!("rp{}-{role}", self.tag)
    }

    fn new() -> Bed {
        let bed = Bed {
            tag: std::process::id().to_string(),
            servers: Vec::new(),
        };
        let node = bed.ns("node");
        for role in ["node", "pa", "pb", "pc", "ext"] {
            sh(&["ip", "netns", "add", &bed.ns(role)]);
        }
        let inn = |ns: &str, cmd: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", ns];
            a.extend_from_slice(cmd);
            sh(&a);
        };
        inn(&node, &["ip", "link", "set", "lo", "up"]);
        inn(&node, &["ip", "link", "add", "cni0", "type", "bridge"]);
        inn(&node, &["ip", "addr", "add", "10.42.0.1/24", "dev", "cni0"]);
        inn(&node, &["ip", "link", "set", "cni0", "up"]);
        // A fresh namespace forwards nothing; the proxy's host
        // preparation turns forwarding on (and makes bridged replies pass
        // conntrack to be un-DNATed).
        let forwarding = || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node,
                    "sysctl",
                    "-n",
                    "net.ipv4.ip_forward",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        // A new namespace copies the host's setting on some kernels
        // (devconf_inherit_init_net): start from off either way.
        inn(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        assert_eq!(forwarding(), "0", "forwarding is off before");
        in_ns(&node, rke2_service_proxy::runner::prepare_host);
        assert_eq!(forwarding(), "1", "prepare_host turned forwarding on");
        for (i, role) in ["pa", "pb", "pc"].iter().enumerate() {
            let ns = bed.ns(role);
            let host_if = format!("veth{i}");
            sh(&[
                "ip", "link", "add", &host_if, "netns", &node, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ]);
            inn(
                &node,
                &["ip", "link", "set", &host_if, "master", "cni0", "up"],
            );
            // As the CNI bridge plugin's hairpinMode: a pod's own packet
            // DNATed back to it leaves by the port it came in.
            inn(
                &node,
                &[
                    "ip",
                    "link",
                    "set",
                    &host_if,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
            );
            inn(&ns, &["ip", "link", "set", "lo", "up"]);
            inn(
                &ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.42.0.{}/24", 5 + i),
                    "dev",
                    "eth0",
                ],
            );
            inn(&ns, &["ip", "link", "set", "eth0", "up"]);
            inn(&ns, &["ip", "route", "add", "default", "via", "10.42.0.1"]);
        }
        let ext = bed.ns("ext");
        sh(&[
            "ip", "link", "add", "uplink", "netns", &node, "type", "veth", "peer", "name", "eth0",
            "netns", &ext,
        ]);
        inn(
            &node,
            &["ip", "addr", "add", "192.168.77.2/24", "dev", "uplink"],
        );
        inn(&node, &["ip", "link", "set", "uplink", "up"]);
        // Like a real node, a default route (the node's own connections
        // to a ClusterIP need a route before the output hook DNATs them).
        inn(
            &node,
            &["ip", "route", "add", "default", "via", "192.168.77.1"],
        );
        inn(&ext, &["ip", "link", "set", "lo", "up"]);
        inn(
            &ext,
            &["ip", "addr", "add", "192.168.77.1/24", "dev", "eth0"],
        );
        inn(&ext, &["ip", "link", "set", "eth0", "up"]);
        // The outside reaches the service network through the node (as a
        // router in front of a cluster might), but not the pods.
        inn(
            &ext,
            &["ip", "route", "add", "10.43.0.0/16", "via", "192.168.77.2"],
        );
        bed
    }

    fn start_servers(&mut self) {
        for role in ["pa", "pb"] {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns(role),
                    "python3",
                    "-c",
                    SERVER,
                    role,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            self.servers.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for ip in ["10.42.0.5", "10.42.0.6"] {
            loop {
                if in_ns(&self.ns("node"), move || {
                    tcp_call(SocketAddr::new(ip.parse().unwrap(), 8080)).ok()
                })
                .is_some()
                {
                    break;
                }
                assert!(Instant::now() < deadline, "server {ip} did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for role in ["node", "pa", "pb", "pc", "ext"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`
/// (sockets it opens and processes it starts live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd, for this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Connects, reads the answer: `(endpoint name, source it saw)`.
fn tcp_call(to: SocketAddr) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let mut w = out.split_whitespace();
    Ok((
        w.next().unwrap_or_default().to_string(),
        w.next().unwrap_or_default().to_string(),
    ))
}

fn calls(bed: &Bed, from: &str, to: &str, n: usize) -> Vec<std::io::Result<(String, String)>> {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(&bed.ns(from), move || {
        (0..n).map(|_| tcp_call(to)).collect()
    })
}

fn names(results: &[std::io::Result<(String, String)>]) -> std::collections::BTreeSet<String> {
    results
        .iter()
        .map(|r| r.as_ref().expect("call through the service").0.clone())
        .collect()
}

fn node_facts() -> NodeFacts {
    NodeFacts {
        name: "n1".into(),
        addresses: vec![Ipv4Addr::new(192, 168, 77, 2)],
        cluster_cidr: Some("10.42.0.0/16".parse().unwrap()),
        service_cidr: Some("10.43.0.0/16".parse().unwrap()),
    }
}

fn ep(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 42, 0, last),
        port,
        local: true,
    }
}

fn svc(name: &str, ip: u8, proto: Protocol, eps: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        service: name.into(),
        port_name: "p".into(),
        protocol: proto,
        cluster_ip: Ipv4Addr::new(10, 43, 0, ip),
        port: if proto == Protocol::Udp { 53 } else { 80 },
        node_port: None,
        external_ips: vec![],
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        endpoints: eps,
    }
}

fn sync(bed: &Bed, applier: Applier, ports: Vec<ServicePort>) -> (Applier, apply::SyncReport) {
    in_ns(&bed.ns("node"), move || {
        let mut applier = applier;
        let r = applier
            .sync(rules::generate(&node_facts(), &ports))
            .unwrap();
        (applier, r)
    })
}

/// The table as the kernel holds it: chains, rules and declarations, and
/// the elements of the fixed sets and maps (sorted lines, so element
/// order does not matter; affinity sets' dynamic contents left out).
fn dump(bed: &Bed) -> Vec<String> {
    in_ns(&bed.ns("node"), || {
        let mut lines: Vec<String> = Vec::new();
        let mut add = |args: &[&str]| {
            let out = apply::nft(args, "", "list").unwrap();
            lines.extend(
                out.lines()
                    .map(|l| l.trim().trim_end_matches(',').to_string()),
            );
        };
        add(&["-t", "list", "table", "ip", TABLE]);
        for (kind, name) in [
            ("set", "cluster-ips"),
            ("set", "nodeport-ips"),
            ("map", "service-ips"),
            ("map", "service-nodeports"),
            ("map", "no-endpoint-services"),
            ("map", "no-endpoint-nodeports"),
        ] {
            add(&["list", kind, "ip", TABLE, name]);
        }
        lines.sort();
        lines
    })
}

#[test]
fn services_route_real_traffic_in_a_network_namespace() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (network namespaces, nftables)"
    );
    let mut bed = Bed::new();
    bed.start_servers();

    let mut web = svc("web", 20, Protocol::Tcp, vec![ep(5, 8080), ep(6, 8080)]);
    web.node_port = Some(30080);
    let only_a = svc("self", 21, Protocol::Tcp, vec![ep(5, 8080)]);
    let mut sticky = svc("sticky", 22, Protocol::Tcp, vec![ep(5, 8080), ep(6, 8080)]);
    sticky.affinity_timeout = Some(300);
    let dns = svc("dns", 10, Protocol::Udp, vec![ep(5, 5353)]);
    let all = vec![web.clone(), only_a.clone(), sticky.clone(), dns.clone()];
    let (applier, report) = sync(&bed, Applier::new(), all.clone());
    assert!(report.full);

    // ClusterIP from a pod: both endpoints, the pod's own address kept.
    let r = calls(&bed, "pc", "10.43.0.20:80", 40);
    assert_eq!(names(&r), ["pa", "pb"].map(String::from).into());
    assert!(
        r.iter().all(|x| x.as_ref().unwrap().1 == "10.42.0.7"),
        "{r:?}"
    );
    // NodePort from outside the node: answered, source masqueraded.
    let r = calls(&bed, "ext", "192.168.77.2:30080", 20);
    assert_eq!(names(&r), ["pa", "pb"].map(String::from).into());
    assert!(
        r.iter().all(|x| x.as_ref().unwrap().1 != "192.168.77.1"),
        "{r:?}"
    );
    // ClusterIP from outside the cluster CIDR: masqueraded.
    let r = calls(&bed, "ext", "10.43.0.20:80", 4);
    assert!(
        r.iter().all(|x| x.as_ref().unwrap().1 != "192.168.77.1"),
        "{r:?}"
    );
    // From the node itself (the output hook).
    let r = calls(&bed, "node", "10.43.0.20:80", 4);
    assert!(!names(&r).is_empty());
    // Hairpin: a pod through its own Service reaches itself, masqueraded
    // (else it would answer itself from its own address).
    let r = calls(&bed, "pa", "10.43.0.21:80", 4);
    assert!(
        r.iter()
            .all(|x| x.as_ref().unwrap() == &("pa".into(), "10.42.0.1".into())),
        "{r:?}"
    );
    // ClientIP affinity: one endpoint for one client.
    let r = calls(&bed, "pc", "10.43.0.22:80", 20);
    assert_eq!(names(&r).len(), 1, "{r:?}");
    // A port the ClusterIP does not serve is refused.
    let e = calls(&bed, "pc", "10.43.0.20:81", 1)
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    // UDP: a flow to the DNS ClusterIP from one source port...
    let client = in_ns(&bed.ns("pc"), || {
        let s = UdpSocket::bind("0.0.0.0:40000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let ask = |s: &UdpSocket| {
        s.send_to(b"q", "10.43.0.10:53").unwrap();
        let mut buf = [0u8; 100];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(ask(&client), "pa");

    // One endpoint change: a small partial sync, and traffic follows.
    let mut web2 = web.clone();
    web2.endpoints = vec![ep(5, 8080)];
    let mut dns2 = dns.clone();
    dns2.endpoints = vec![ep(6, 5353)];
    let next = vec![web2.clone(), only_a.clone(), sticky.clone(), dns2.clone()];
    let (applier, report) = sync(&bed, applier, next.clone());
    assert!(!report.full && report.lines < 20, "{report:?}");
    assert_eq!(
        names(&calls(&bed, "pc", "10.43.0.20:80", 20)),
        ["pa".to_string()].into()
    );
    // ...and the stale UDP flow is deleted, so the same client socket
    // now reaches the new endpoint.
    let stale = conntrack::stale_flows(&all, &next);
    assert!(!stale.is_empty());
    let errors = in_ns(&bed.ns("node"), move || conntrack::delete(&stale));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ask(&client), "pb");

    // Scaled to 0: connections are refused (ClusterIP and NodePort).
    web2.endpoints.clear();
    let zero = vec![web2.clone(), only_a.clone(), sticky.clone(), dns2.clone()];
    let (applier, _) = sync(&bed, applier, zero);
    let e = calls(&bed, "pc", "10.43.0.20:80", 1)
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let e = calls(&bed, "ext", "192.168.77.2:30080", 1)
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // Scaled back: answered again.
    web2.endpoints = vec![ep(6, 8080)];
    let back = vec![web2.clone(), only_a.clone(), sticky.clone(), dns2.clone()];
    let (applier, report) = sync(&bed, applier, back.clone());
    assert!(!report.full);
    assert_eq!(
        names(&calls(&bed, "ext", "192.168.77.2:30080", 5)),
        ["pb".to_string()].into()
    );

    // The partial syncs left exactly what a full sync writes.
    let after_partials = dump(&bed);
    let (_, report) = sync(&bed, Applier::new(), back);
    assert!(report.full);
    assert_eq!(after_partials, dump(&bed));
    drop(applier);

    // Cleanup leaves no table.
    let had = in_ns(&bed.ns("node"), apply::delete_table).unwrap();
    assert!(had);
    let tables = in_ns(&bed.ns("node"), || {
        apply::nft(&["list", "tables"], "", "list").unwrap()
    });
    assert!(!tables.contains(TABLE), "{tables}");
    assert!(!in_ns(&bed.ns("node"), apply::delete_table).unwrap());
}
