//! The multi-host test bed: several "hosts" on this one machine, each a
//! network namespace with its own address on a private /24
//! (`10.231.<X>.0/24`), joined by veth pairs to one bridge in the root
//! namespace (which holds `.1`, so the test process itself can reach every
//! host). Hosts have no default route: nothing but the bed's subnet and
//! their own loopback is reachable from inside.
//!
//! Everything a bed creates carries a unique prefix `rk<pid%10000>b<n>`
//! (the bridge `<prefix>br`, the root-side veths `<prefix>v<i>`, the
//! namespaces `<prefix>-<host name>`), and is recorded, before it is
//! created, in a state file `/run/rke2-testbed/<prefix>.state` together
//! with the creating process (pid and start time) and every child process
//! started in a host. [`NetBed`]'s `Drop` stops those children by pid and
//! deletes exactly those namespaces and links; [`cleanup_stale`] removes
//! what a crashed run left behind. Nothing is ever killed by name.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Where beds keep their state files (one per bed) and their lock file.
pub const STATE_DIR: &str = "/run/rke2-testbed";

/// The first two octets of every bed's subnet.
pub const SUBNET_PREFIX: [u8; 2] = [10, 231];

/// The third octet `scripts/ha-cluster.sh` uses by default; beds avoid it.
pub const SCRIPT_SUBNET: u8 = 200;

/// An address that is outside every bed's subnet (no bed takes `.250`).
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 250, 250);

/// How long a tracked child gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// One host of a bed: a network namespace with one interface (`eth0`, the
/// far end of the veth `veth`) holding `ip`, plus `lo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name given to [`NetBed::add_host`].
    pub name: String,
    /// The network namespace (`ip netns` name, `/run/netns/<netns>`).
    pub netns: String,
    /// The host's address on the bed's subnet.
    pub ip: Ipv4Addr,
    /// The root-namespace end of the host's veth pair (a bridge port).
    pub veth: String,
}

/// A bed of hosts on one bridge; see the module docs. Dropping it stops
/// every tracked child and removes every namespace and link it created.
pub struct NetBed {
    prefix: String,
    subnet: u8,
    bridge: String,
    dir: tempfile::TempDir,
    hosts: Vec<Host>,
    tracker: Arc<Tracker>,
}

/// What a bed has created, as written to its state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct BedState {
    /// The creating process: pid and start time (clock ticks since boot).
    owner: (u32, u64),
    subnet: u8,
    netns: Vec<String>,
    links: Vec<String>,
    /// Tracked children: pid and start time.
    procs: Vec<(u32, u64)>,
}

impl BedState {
    fn render(&self) -> String {
        let mut s = format!(
            "owner {} {}\nsubnet {}\n",
            self.owner.0, self.owner.1, self.subnet
        );
        for n in &self.netns {
            s.push_str(&format!("netns {n}\n"));
        }
        for l in &self.links {
            s.push_str(&format!("link {l}\n"));
        }
        for (p, t) in &self.procs {
            s.push_str(&format!("proc {p} {t}\n"));
        }
        s
    }

    fn parse(text: &str) -> BedState {
        let mut st = BedState::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match f.first().copied() {
                Some("owner") => st.owner = (num(1) as u32, num(2)),
                Some("subnet") => st.subnet = num(1) as u8,
                Some("netns") if f.len() > 1 => st.netns.push(f[1].to_string()),
                Some("link") if f.len() > 1 => st.links.push(f[1].to_string()),
                Some("proc") => st.procs.push((num(1) as u32, num(2))),
                _ => {}
            }
        }
        st
    }
}

/// The bed's state, kept in memory and mirrored to its state file on every
/// change (written before the thing it records is created).
struct Tracker {
    path: PathBuf,
    state: Mutex<BedState>,
}

impl Tracker {
    fn update(&self, f: impl FnOnce(&mut BedState)) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st);
        write_atomic(&self.path, &st.render())
    }

    fn snapshot(&self) -> BedState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn track(&self, pid: u32) -> Result<()> {
        let start = proc_start_time(pid).unwrap_or(0);
        self.update(|s| s.procs.push((pid, start)))
    }

    fn untrack(&self, pid: u32) -> Result<()> {
        self.update(|s| s.procs.retain(|(p, _)| *p != pid))
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), `None`
/// when it does not exist.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive (exists, is not a zombie) and, when `start` is
/// non-zero, is the very process that started at `start`.
fn proc_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    if rest.first() == Some(&"Z") || rest.first() == Some(&"X") {
        return false;
    }
    start == 0 || rest.get(19).and_then(|v| v.parse::<u64>().ok()) == Some(start)
}

/// Runs `ip <args>`, failing with its output.
fn ip(args: &[&str]) -> Result<String> {
    crate::run_ok(Command::new(tool("ip")).args(args))
}

/// Runs `ip <args>` ignoring failure (for cleanup of things that may be gone).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new(tool("ip"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn ensure_root() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if uid != 0 {
        bail!(
            "the network test bed needs root (network namespaces, veths, a bridge); this process runs as uid {uid}: run the tests as root"
        );
    }
    Ok(())
}

/// Holds `/run/rke2-testbed/lock` (an exclusive `flock`) while alive.
struct StateLock(File);

impl StateLock {
    fn take() -> Result<StateLock> {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(STATE_DIR).join("lock"))
            .context("opening the test bed lock file")?;
        f.lock().context("locking the test bed lock file")?;
        Ok(StateLock(f))
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Splits a name made by a bed (`rk<digits>b<digits>` followed by `br`,
/// `v<digits>`, `-<host>` or nothing) into its bed prefix.
fn bed_prefix_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("rk")?;
    let d1 = rest.bytes().take_while(u8::is_ascii_digit).count();
    if d1 == 0 {
        return None;
    }
    let rest2 = rest[d1..].strip_prefix('b')?;
    let d2 = rest2.bytes().take_while(u8::is_ascii_digit).count();
    if d2 == 0 {
        return None;
    }
    let end = 2 + d1 + 1 + d2;
    let tail = &name[end..];
    let ok = tail.is_empty()
        || tail == "br"
        || tail.starts_with('-')
        || (tail.len() > 1
            && tail.starts_with('v')
            && tail[1..].bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| &name[..end])
}

/// All network namespace names (`ip netns list`).
fn list_netns() -> Vec<String> {
    let out = Command::new(tool("ip")).args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// All link names in the root namespace (`ip -o link show`).
fn list_links() -> Vec<String> {
    let out = Command::new(tool("ip"))
        .args(["-o", "link", "show"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

/// The pids of processes inside a namespace (`ip netns pids`).
fn netns_pids(netns: &str) -> Vec<u32> {
    let out = Command::new(tool("ip"))
        .args(["netns", "pids", netns])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Stops processes: SIGTERM, then SIGKILL for those still running after
/// `grace`. A pid is signalled only when it is an unreaped child of this
/// process or still the process that started at the recorded time.
fn stop_pids(pids: &[(u32, u64)], grace: Duration) {
    // Processes to wait for; `true` when it is our own child.
    let mut waiting: Vec<(u32, u64, bool)> = Vec::new();
    for &(pid, start) in pids {
        let p = Pid::from_raw(pid as i32);
        match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                let _ = kill(p, Signal::SIGTERM);
                waiting.push((pid, start, true));
            }
            Ok(_) => {} // it had exited; now reaped
            Err(_) => {
                if start != 0 && proc_alive(pid, start) {
                    let _ = kill(p, Signal::SIGTERM);
                    waiting.push((pid, start, false));
                }
            }
        }
    }
    let deadline = Instant::now() + grace;
    while !waiting.is_empty() {
        waiting.retain(|&(pid, start, child)| {
            if child {
                matches!(
                    waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                )
            } else {
                proc_alive(pid, start)
            }
        });
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for &(pid, start, child) in &waiting {
                let p = Pid::from_raw(pid as i32);
                if child || proc_alive(pid, start) {
                    let _ = kill(p, Signal::SIGKILL);
                }
                if child {
                    let _ = waitpid(p, None);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs whatever still runs inside `netns` (leftover grandchildren such
/// as an etcd whose server was killed) and waits briefly for them to go.
fn kill_netns_procs(netns: &str) {
    for _ in 0..50 {
        let pids = netns_pids(netns);
        let alive: Vec<u32> = pids.into_iter().filter(|&p| proc_alive(p, 0)).collect();
        if alive.is_empty() {
            return;
        }
        for p in alive {
            let pid = Pid::from_raw(p as i32);
            let _ = kill(pid, Signal::SIGKILL);
            // Reap it if it happens to be our child.
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes everything a state says was created: processes, namespaces,
/// links (in that order).
fn teardown(st: &BedState, grace: Duration) {
    stop_pids(&st.procs, grace);
    for ns in &st.netns {
        kill_netns_procs(ns);
    }
    for ns in &st.netns {
        ip_quiet(&["netns", "del", ns]);
    }
    // Root-side veths vanish with their namespaces' ends; the bridge last.
    let links = list_links();
    for l in st.links.iter().rev() {
        if links.contains(l) {
            ip_quiet(&["link", "del", l]);
        }
    }
}

/// Removes the leftovers of beds whose creating process no longer exists:
/// every bed state file in [`STATE_DIR`] whose bed prefix starts with
/// `prefix` (e.g. `"rk"` for all beds) and whose owner is gone has its
/// processes stopped (by recorded pid and start time, and whatever still
/// runs in its namespaces), its namespaces and links deleted, and the file
/// removed. Namespaces and links named like a bed's with no state file at
/// all are removed too. Beds of live processes are never touched. Returns
/// the bed prefixes it cleaned.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    ensure_root()?;
    let _lock = StateLock::take()?;
    cleanup_stale_locked(prefix)
}

fn cleanup_stale_locked(prefix: &str) -> Result<Vec<String>> {
    // List resources before reading state files: a state file is always
    // written before the resource it records is created.
    let netns = list_netns();
    let links = list_links();
    let mut cleaned = Vec::new();
    let mut live = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(STATE_DIR)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(bed) = name.strip_suffix(".state") else {
            continue;
        };
        if !bed.starts_with(prefix) || bed_prefix_of(bed) != Some(bed) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let st = BedState::parse(&text);
        if st.owner.0 != 0 && proc_alive(st.owner.0, st.owner.1) {
            live.insert(bed.to_string());
            continue;
        }
        teardown(&st, Duration::from_secs(2));
        // Anything else carrying this bed's prefix.
        for ns in netns
            .iter()
            .filter(|n| bed_prefix_of(n) == Some(bed) && !st.netns.contains(n))
        {
            kill_netns_procs(ns);
            ip_quiet(&["netns", "del", ns]);
        }
        for l in links
            .iter()
            .filter(|l| bed_prefix_of(l) == Some(bed) && !st.links.contains(l))
        {
            ip_quiet(&["link", "del", l]);
        }
        let _ = std::fs::remove_file(e.path());
        cleaned.push(bed.to_string());
    }
    // Orphans: named like a bed's, but no state file (now) owns them.
    let owned = |bed: &str| {
        live.contains(bed) || Path::new(STATE_DIR).join(format!("{bed}.state")).exists()
    };
    for ns in &netns {
        if let Some(bed) = bed_prefix_of(ns)
            && bed.starts_with(prefix)
            && !owned(bed)
        {
            kill_netns_procs(ns);
            ip_quiet(&["netns", "del", ns]);
            if !cleaned.iter().any(|c| c == bed) {
                cleaned.push(bed.to_string());
            }
        }
    }
    for l in &links {
        if let Some(bed) = bed_prefix_of(l)
            && bed.starts_with(prefix)
            && !owned(bed)
        {
            ip_quiet(&["link", "del", l]);
            if !cleaned.iter().any(|c| c == bed) {
                cleaned.push(bed.to_string());
            }
        }
    }
    Ok(cleaned)
}

/// The third octets already in use: by live or stale bed state files and by
/// any `10.231.X.*` address in the root namespace.
fn used_subnets() -> std::collections::BTreeSet<u8> {
    let mut used = std::collections::BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(STATE_DIR) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".state") {
                let st = BedState::parse(&std::fs::read_to_string(e.path()).unwrap_or_default());
                used.insert(st.subnet);
            }
        }
    }
    if let Ok(out) = Command::new(tool("ip"))
        .args(["-o", "-4", "addr", "show"])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        let pat = format!("inet {}.{}.", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        for l in text.lines() {
            if let Some(i) = l.find(&pat)
                && let Some(x) = l[i + pat.len()..]
                    .split('.')
                    .next()
                    .and_then(|v| v.parse::<u8>().ok())
            {
                used.insert(x);
            }
        }
    }
    used
}

/// Opens `/run/netns/<netns>`.
fn open_netns(netns: &str) -> Result<File> {
    let path = format!("/run/netns/{netns}");
    File::open(&path).with_context(|| format!("opening {path}"))
}

/// Makes `cmd` enter `netns` between fork and exec.
fn enter_netns(cmd: &mut Command, netns: &str) -> Result<()> {
    let fd = open_netns(netns)?;
    // SAFETY: the closure only makes the setns(2) system call, which is
    // async-signal-safe, on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

fn spawn_tracked(tracker: &Tracker, netns: &str, cmd: &mut Command) -> Result<Child> {
    enter_netns(cmd, netns)?;
    cmd.envs(crate::OFFLINE_ENV);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?} in {netns}"))?;
    if let Err(e) = tracker.track(child.id()) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

impl NetBed {
    /// Creates a bed: takes a free `10.231.X.0/24`, records the bed in its
    /// state file, and creates the bridge `<prefix>br` holding
    /// `10.231.X.1/24`. First removes the leftovers of crashed beds
    /// ([`cleanup_stale`]`("rk")`). Fails with a clear message when not root.
    pub fn new() -> Result<NetBed> {
        ensure_root()?;
        which("ip").context("`ip` (Debian package `iproute2`) is needed")?;
        let lock = StateLock::take()?;
        cleanup_stale_locked("rk")?;
        let pid = std::process::id();
        let (prefix, path) = loop {
            let n = NEXT_BED.fetch_add(1, Ordering::SeqCst);
            let prefix = format!("rk{}b{}", pid % 10000, n);
            let path = Path::new(STATE_DIR).join(format!("{prefix}.state"));
            let taken = path.exists()
                || list_netns()
                    .iter()
                    .any(|x| bed_prefix_of(x) == Some(&prefix))
                || list_links()
                    .iter()
                    .any(|x| bed_prefix_of(x) == Some(&prefix));
            if !taken {
                break (prefix, path);
            }
            if n > 900 {
                bail!("no free test bed prefix for pid {pid}");
            }
        };
        let used = used_subnets();
        let start = (pid.wrapping_mul(7) + NEXT_BED.load(Ordering::SeqCst)) % 249;
        let subnet = (0..249u32)
            .map(|i| ((start + i) % 249 + 1) as u8)
            .find(|x| *x != SCRIPT_SUBNET && !used.contains(x))
            .context("no free 10.231.X.0/24 subnet for a test bed")?;
        let owner = (pid, proc_start_time(pid).unwrap_or(0));
        let tracker = Arc::new(Tracker {
            path,
            state: Mutex::new(BedState {
                owner,
                subnet,
                ..BedState::default()
            }),
        });
        let bridge = format!("{prefix}br");
        tracker.update(|s| s.links.push(bridge.clone()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("rke2-netbed-{prefix}-"))
            .tempdir()?;
        let bed = NetBed {
            prefix,
            subnet,
            bridge,
            dir,
            hosts: Vec::new(),
            tracker,
        };
        // From here on, Drop cleans up whatever was created.
        ip(&["link", "add", &bed.bridge, "type", "bridge"])?;
        drop(lock);
        let gw = format!("{}/24", bed.subnet_gateway());
        ip(&["addr", "add", &gw, "dev", &bed.bridge])?;
        ip(&["link", "set", &bed.bridge, "up"])?;
        Ok(bed)
    }

    /// The bed's unique name prefix (`rk<pid%10000>b<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge's name (`<prefix>br`).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bed's temporary directory (HAProxy configs and logs live here;
    /// tests may put their own files here too). Removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The bridge's address `10.231.X.1`: how hosts reach the root namespace.
    pub fn subnet_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], self.subnet, 1)
    }

    /// The third octet `X` of the bed's subnet `10.231.X.0/24`.
    pub fn subnet_octet(&self) -> u8 {
        self.subnet
    }

    /// Adds a host: namespace `<prefix>-<name>` (`name`: 1 to 20 of
    /// `[a-z0-9-]`), a veth pair `<prefix>v<i>` (on the bridge) / `eth0`
    /// (in the namespace) with the next free address, `lo` up, and no
    /// default route.
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        if name.is_empty()
            || name.len() > 20
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("host name {name:?}: use 1 to 20 of [a-z0-9-]");
        }
        if self.hosts.iter().any(|h| h.name == name) {
            bail!("host {name:?} already exists in this bed");
        }
        let idx = self.hosts.len() + 2;
        if idx > 249 {
            bail!("a bed holds at most 248 hosts");
        }
        let host = Host {
            name: name.to_string(),
            netns: format!("{}-{name}", self.prefix),
            ip: Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], self.subnet, idx as u8),
            veth: format!("{}v{idx}", self.prefix),
        };
        self.tracker.update(|s| s.netns.push(host.netns.clone()))?;
        ip(&["netns", "add", &host.netns])?;
        // Links are deleted in reverse order: veths before the bridge.
        self.tracker.update(|s| s.links.push(host.veth.clone()))?;
        ip(&[
            "link",
            "add",
            &host.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.netns,
        ])?;
        ip(&["link", "set", &host.veth, "master", &self.bridge])?;
        ip(&["link", "set", &host.veth, "up"])?;
        ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &host.netns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Starts `cmd` inside `host`'s network namespace (it enters it with
    /// setns(2) between fork and exec, so the program, arguments,
    /// environment and stdio stay as the caller set them). The child is
    /// tracked: when the bed is dropped it gets SIGTERM, then SIGKILL after
    /// [`STOP_GRACE`], unless the caller has waited for it or has called
    /// [`NetBed::untrack`].
    pub fn spawn_in(&self, host: &Host, cmd: &mut Command) -> Result<Child> {
        spawn_tracked(&self.tracker, &host.netns, cmd)
    }

    /// Takes a child started by [`NetBed::spawn_in`] out of the bed's care:
    /// the bed will not stop it on drop (it is still killed if it lingers
    /// in a namespace the bed deletes).
    pub fn untrack(&self, child: &Child) -> Result<()> {
        self.tracker.untrack(child.id())
    }

    /// A command that runs `program` inside `host`'s namespace, for
    /// short-lived commands the caller waits for (`output()`, `status()`).
    /// Not tracked.
    pub fn command_in(&self, host: &Host, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        enter_netns(&mut cmd, &host.netns)?;
        Ok(cmd)
    }

    /// Opens a TCP connection from inside `host`'s namespace (a helper
    /// thread enters the namespace, connects, and hands the socket back; a
    /// socket keeps its namespace). Errors are the real ones, e.g.
    /// `NetworkUnreachable` for addresses outside the subnet.
    pub fn connect_from(
        &self,
        host: &Host,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        let fd = open_netns(&host.netns).map_err(std::io::Error::other)?;
        std::thread::spawn(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpStream::connect_timeout(&addr, timeout)
        })
        .join()
        .map_err(|_| std::io::Error::other("connect thread panicked"))?
    }

    /// Cuts `host` off the bridge (its veth goes down): nothing reaches it
    /// and it reaches nothing until [`NetBed::link_up`].
    pub fn link_down(&self, host: &Host) -> Result<()> {
        ip(&["link", "set", &host.veth, "down"]).map(|_| ())
    }

    /// Puts `host` back on the bridge after [`NetBed::link_down`].
    pub fn link_up(&self, host: &Host) -> Result<()> {
        ip(&["link", "set", &host.veth, "up"]).map(|_| ())
    }

    /// Starts HAProxy in `host`'s namespace as the fixed registration
    /// address: TCP frontends on `:9345` and `:6443`, each forwarding to the
    /// same port of every backend, health-checked over TLS without
    /// verification (`GET /ping` for 9345, `GET /readyz` for 6443; every
    /// 1 s, down after 2 failures, up after 1 success), with 1 h
    /// client/server/tunnel timeouts so watches survive. The config and log
    /// are written to the bed's directory; HAProxy runs in the foreground
    /// (`-db`) as a tracked child. Returns once both ports accept
    /// connections.
    pub fn start_haproxy(&mut self, host: &Host, backends: &[Ipv4Addr]) -> Result<Haproxy> {
        which("haproxy").context("HAProxy is needed (Debian package `haproxy`)")?;
        let cfg = self.dir().join(format!("haproxy-{}.cfg", host.name));
        let log = self.dir().join(format!("haproxy-{}.log", host.name));
        std::fs::write(&cfg, haproxy_config(backends))?;
        let mut h = Haproxy {
            host: host.clone(),
            cfg,
            log,
            child: None,
            tracker: self.tracker.clone(),
        };
        h.start()?;
        Ok(h)
    }
}

/// The HAProxy configuration [`NetBed::start_haproxy`] writes: what a user
/// would put in front of RKE2 servers.
pub fn haproxy_config(backends: &[Ipv4Addr]) -> String {
    let mut s = String::from(
        "global\n\
         \x20   maxconn 4096\n\
         \x20   log stderr format raw local0 info\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   log global\n\
         \x20   option tcplog\n\
         \x20   option dontlognull\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout tunnel 1h\n\
         \x20   timeout check 3s\n",
    );
    for (port, name, path) in [
        (9345, "rke2-supervisor", "/ping"),
        (6443, "rke2-apiserver", "/readyz"),
    ] {
        s.push_str(&format!(
            "\nfrontend {name}\n    bind *:{port}\n    default_backend {name}\n\
             \nbackend {name}\n    balance roundrobin\n    option httpchk GET {path}\n"
        ));
        for (i, b) in backends.iter().enumerate() {
            s.push_str(&format!(
                "    server server-{} {b}:{port} check check-ssl verify none inter 1s fall 2 rise 1\n",
                i + 1
            ));
        }
    }
    s
}

/// HAProxy running in a host of a bed; stopped (by pid) on drop.
pub struct Haproxy {
    /// The host it runs in; its frontends are `<host.ip>:9345` and `:6443`.
    pub host: Host,
    /// Its configuration file.
    pub cfg: PathBuf,
    /// Its combined stdout/stderr (health-check transitions, connections).
    pub log: PathBuf,
    child: Option<Child>,
    tracker: Arc<Tracker>,
}

impl Haproxy {
    /// The running HAProxy's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn start(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(tool("haproxy"));
        cmd.arg("-db")
            .arg("-f")
            .arg(&self.cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tracked(&self.tracker, &self.host.netns, &mut cmd)?;
        self.child = Some(child);
        // Wait until both frontends accept connections.
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                let pid = c.id();
                self.child = None;
                let _ = self.tracker.untrack(pid);
                bail!("haproxy exited with {st}; log:\n{}", self.log_text());
            }
            let up = [9345u16, 6443].iter().all(|p| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((self.host.ip, *p)),
                    Duration::from_millis(300),
                )
                .is_ok()
            });
            if up {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.stop();
                bail!(
                    "haproxy did not open its ports within 10 s; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops HAProxy (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            stop_pids(&[(pid, 0)], STOP_GRACE);
            let _ = c.try_wait();
            self.tracker.untrack(pid)?;
        }
        Ok(())
    }

    /// Stops HAProxy (if running) and starts it again with its config file.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// Rewrites the config for a new backend list and restarts.
    pub fn set_backends(&mut self, backends: &[Ipv4Addr]) -> Result<()> {
        std::fs::write(&self.cfg, haproxy_config(backends))?;
        self.restart()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Ends the containers of every node whose data dir is `<dir>/<host>/data`
/// (containers outlive their node's process, and live in pod network
/// namespaces, so stopping a host's processes does not reach them).
fn kill_bed_containers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let data = e.path().join("data");
        if data.join("agent/containerd").is_dir() {
            crate::kill_node_containers(&data);
        }
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        let st = self.tracker.snapshot();
        teardown(&st, STOP_GRACE);
        kill_bed_containers(self.dir());
        let _ = std::fs::remove_file(&self.tracker.path);
    }
}

/// `program`'s full path when [`which`] finds it, else its bare name.
fn tool(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|_| PathBuf::from(program))
}

/// The full path of `program` on `PATH` (or in `/usr/sbin`, `/sbin`).
fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = d.join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{program} not found on PATH")
}

/// An `rke2 server` or `rke2 agent` on one host of a bed: its own dir
/// (`<bed dir>/<host>/`: config.yaml, data/, log, rke2.yaml for servers).
pub struct NodeProc {
    /// The host it runs on.
    pub host: Host,
    /// `<bed dir>/<host>`.
    pub dir: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    /// Prepares `rke2 <role>` on `host` with `config` as its config.yaml
    /// and `--data-dir`, `--node-name`, `--node-ip` set for the host.
    pub fn new(
        bed: &NetBed,
        binary: &Path,
        host: &Host,
        role: &str,
        config: &str,
        extra: &[&str],
    ) -> Result<NodeProc> {
        let dir = bed.dir().join(&host.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.yaml"), config)?;
        let mut args: Vec<String> = vec![
            role.into(),
            "--config".into(),
            dir.join("config.yaml").display().to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--node-name".into(),
            host.name.clone(),
            "--node-ip".into(),
            host.ip.to_string(),
        ];
        if role == "server" {
            args.push("--write-kubeconfig".into());
            args.push(dir.join("rke2.yaml").display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(NodeProc {
            host: host.clone(),
            dir,
            binary: binary.to_path_buf(),
            args,
            child: None,
        })
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts (or restarts) the process, appending to its log.
    pub fn start(&mut self, bed: &NetBed) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(bed.spawn_in(&self.host, &mut cmd)?);
        Ok(())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// A kubeconfig for this server reached at its bed address (the one it
    /// writes points at 127.0.0.1 inside its own namespace).
    pub fn kubeconfig_at_ip(&self) -> Result<PathBuf> {
        let text = std::fs::read_to_string(self.dir.join("rke2.yaml"))?;
        let edited = text.replace(
            "https://127.0.0.1:6443",
            &format!("https://{}:6443", self.host.ip),
        );
        let p = self.dir.join("rke2-ip.yaml");
        std::fs::write(&p, edited)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Fails with a clear message unless root and the tools exist.
    fn prerequisites() {
        if let Err(e) = ensure_root() {
            panic!("{e:#}");
        }
        for (tool, pkg) in [
            ("ip", "iproute2"),
            ("haproxy", "haproxy"),
            ("openssl", "openssl"),
        ] {
            if which(tool).is_err() {
                panic!("`{tool}` is needed for the network test bed (Debian package `{pkg}`)");
            }
        }
    }

    /// GET / over TLS (no verification) with `openssl s_client` from the
    /// root namespace; returns the HTTP response.
    fn tls_get(addr: SocketAddr) -> Result<String> {
        let mut child = Command::new("timeout")
            .args(["10", "openssl", "s_client", "-quiet", "-connect"])
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)?;
        child.wait()?;
        if !out.starts_with("HTTP/1.0 200") {
            bail!("no HTTP 200 from {addr}: {out:?}");
        }
        Ok(out)
    }

    /// Which backend answered: s_server echoes its command line, which
    /// names the host's own certificate file.
    fn backend_of(page: &str) -> Option<String> {
        let i = page.find("-cert ")?;
        let path = page[i + 6..].split_whitespace().next()?;
        Some(
            Path::new(path)
                .file_stem()?
                .to_string_lossy()
                .trim_start_matches("cert-")
                .to_string(),
        )
    }

    fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftovers(prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = list_netns()
            .into_iter()
            .chain(list_links())
            .filter(|n| bed_prefix_of(n) == Some(prefix))
            .collect();
        if Path::new(STATE_DIR)
            .join(format!("{prefix}.state"))
            .exists()
        {
            v.push(format!("{prefix}.state"));
        }
        v
    }

    #[test]
    fn bed_prefix_parsing() {
        assert_eq!(bed_prefix_of("rk123b0br"), Some("rk123b0"));
        assert_eq!(bed_prefix_of("rk123b10v2"), Some("rk123b10"));
        assert_eq!(bed_prefix_of("rk1b2-server-1"), Some("rk1b2"));
        assert_eq!(bed_prefix_of("rk1b2"), Some("rk1b2"));
        assert_eq!(bed_prefix_of("rkeha-lb"), None);
        assert_eq!(bed_prefix_of("rk1b2x"), None);
        assert_eq!(bed_prefix_of("rk1b2v"), None);
        assert_eq!(bed_prefix_of("eth0"), None);
        let st = BedState {
            owner: (42, 7),
            subnet: 9,
            netns: vec!["rk1b0-a".into()],
            links: vec!["rk1b0br".into(), "rk1b0v2".into()],
            procs: vec![(5, 6)],
        };
        assert_eq!(BedState::parse(&st.render()), st);
        let cfg = haproxy_config(&[Ipv4Addr::new(10, 231, 3, 2)]);
        assert!(cfg.contains("bind *:9345") && cfg.contains("bind *:6443"));
        assert!(cfg.contains("option httpchk GET /ping"));
        assert!(cfg.contains("option httpchk GET /readyz"));
        assert!(cfg.contains(
            "server server-1 10.231.3.2:6443 check check-ssl verify none inter 1s fall 2 rise 1"
        ));
        assert!(cfg.contains("timeout tunnel 1h"));
    }

    /// Three hosts and a load-balancer host: HAProxy forwards to live
    /// backends only, hosts reach each other but nothing outside the
    /// subnet, link_down/link_up cut and restore a host, and dropping the
    /// bed leaves no namespace, link, process or state file behind.
    #[test]
    fn three_hosts_and_a_load_balancer() {
        prerequisites();
        let t0 = Instant::now();
        let mut bed = NetBed::new().expect("creating the bed");
        let prefix = bed.prefix().to_string();
        let gw = bed.subnet_gateway();
        println!("bed {prefix}: subnet {gw}/24, dir {}", bed.dir().display());
        let s1 = bed.add_host("server-1").unwrap();
        let s2 = bed.add_host("server-2").unwrap();
        let s3 = bed.add_host("server-3").unwrap();
        let lb = bed.add_host("lb").unwrap();
        assert_eq!(s1.ip, Ipv4Addr::new(10, 231, bed.subnet_octet(), 2));
        assert_eq!(lb.ip, Ipv4Addr::new(10, 231, bed.subnet_octet(), 5));
        assert!(Path::new(&format!("/run/netns/{}", s1.netns)).exists());
        assert!(s1.veth.len() <= 15 && bed.bridge().len() <= 15);

        // No default route inside a host; only the subnet and loopback.
        let routes =
            crate::run_ok(bed.command_in(&s1, "ip").unwrap().args(["-4", "route"])).unwrap();
        assert!(
            !routes.contains("default"),
            "routes in {}: {routes}",
            s1.netns
        );
        assert!(routes.contains(&format!("10.231.{}.0/24 dev eth0", bed.subnet_octet())));

        // TLS servers (openssl s_server -www) on 9345 and 6443 in s1 and s2;
        // s3 runs nothing, so HAProxy's health checks must take it out.
        let mut children = Vec::new();
        let mut pids = Vec::new();
        for h in [&s1, &s2] {
            let cert = bed.dir().join(format!("cert-{}.pem", h.name));
            let key = bed.dir().join(format!("key-{}.pem", h.name));
            crate::run_ok(
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    ])
                    .args(["-subj", &format!("/CN={}", h.name), "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert),
            )
            .unwrap();
            for port in ["9345", "6443"] {
                let child = bed
                    .spawn_in(
                        h,
                        Command::new("openssl")
                            .args(["s_server", "-quiet", "-www", "-accept", port, "-cert"])
                            .arg(&cert)
                            .arg("-key")
                            .arg(&key)
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null()),
                    )
                    .unwrap();
                pids.push(child.id());
                children.push((h.name.clone(), child));
            }
        }
        // A long sleeper the bed must stop itself on drop.
        let sleeper = bed.spawn_in(&s3, Command::new("sleep").arg("600")).unwrap();
        pids.push(sleeper.id());
        for h in [&s1, &s2] {
            poll(Duration::from_secs(10), "s_server ports", || {
                tls_get(SocketAddr::from((h.ip, 6443))).ok()
            });
        }

        // Hosts reach each other by IP.
        bed.connect_from(&s3, SocketAddr::from((s1.ip, 9345)), Duration::from_secs(2))
            .expect("server-3 -> server-1:9345");
        bed.connect_from(&lb, SocketAddr::from((s2.ip, 6443)), Duration::from_secs(2))
            .expect("lb -> server-2:6443");
        // A closed port on a reachable host is refused, not unreachable.
        let e = bed
            .connect_from(&s1, SocketAddr::from((s3.ip, 6443)), Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        // Hosts reach the root namespace through the bridge address.
        let root_listener = std::net::TcpListener::bind((gw, 0)).unwrap();
        let root_addr = root_listener.local_addr().unwrap();
        bed.connect_from(&s2, root_addr, Duration::from_secs(2))
            .expect("server-2 -> bridge address");
        drop(root_listener);

        // Nothing outside the subnet: no route, fails at once.
        let start = Instant::now();
        let e = bed
            .connect_from(
                &s1,
                SocketAddr::from((OUTSIDE_ADDR, 80)),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NetworkUnreachable, "{e}");
        assert!(e.to_string().contains("Network is unreachable"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(1));

        // HAProxy in the LB host, with all three servers as backends.
        let mut haproxy = bed.start_haproxy(&lb, &[s1.ip, s2.ip, s3.ip]).unwrap();
        let cfg = std::fs::read_to_string(&haproxy.cfg).unwrap();
        assert!(haproxy.cfg.starts_with(bed.dir()));
        assert!(cfg.contains(&format!("server server-3 {}:9345 check", s3.ip)));
        pids.push(haproxy.pid().unwrap());
        // Once server-3 is marked down, every request lands on a live
        // backend, and both live ones get traffic (round robin).
        let seen = poll(
            Duration::from_secs(20),
            "LB forwarding only to live backends",
            || {
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..8 {
                    let page = tls_get(SocketAddr::from((lb.ip, 6443))).ok()?;
                    seen.insert(backend_of(&page)?);
                }
                Some(seen)
            },
        );
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec!["server-1".to_string(), "server-2".to_string()]
        );
        let page = tls_get(SocketAddr::from((lb.ip, 9345))).unwrap();
        assert!(backend_of(&page).is_some());
        let log = haproxy.log_text();
        assert!(log.contains("server-3"), "haproxy log:\n{log}");

        // Stop server-1's servers: the LB moves everything to server-2.
        for (name, child) in children.iter_mut() {
            if name == "server-1" {
                child.kill().unwrap();
                child.wait().unwrap();
            }
        }
        poll(
            Duration::from_secs(20),
            "LB failing over to server-2",
            || {
                for _ in 0..6 {
                    let page = tls_get(SocketAddr::from((lb.ip, 6443))).ok()?;
                    if backend_of(&page)? != "server-2" {
                        return None;
                    }
                }
                Some(())
            },
        );

        // Restart keeps working (new pid, same config).
        let old = haproxy.pid().unwrap();
        haproxy.restart().unwrap();
        let new = haproxy.pid().unwrap();
        assert_ne!(old, new);
        assert!(!proc_alive(old, 0), "old haproxy {old} still runs");
        pids.push(new);
        poll(Duration::from_secs(20), "LB after restart", || {
            tls_get(SocketAddr::from((lb.ip, 6443))).ok()
        });

        // link_down cuts server-2 off from the root namespace and the
        // other hosts; link_up restores it.
        let s2_api = SocketAddr::from((s2.ip, 6443));
        bed.link_down(&s2).unwrap();
        let start = Instant::now();
        assert!(TcpStream::connect_timeout(&s2_api, Duration::from_secs(2)).is_err());
        assert!(
            bed.connect_from(&s1, s2_api, Duration::from_secs(2))
                .is_err(),
            "server-1 still reaches server-2 after link_down"
        );
        println!("link_down: connects failed after {:?}", start.elapsed());
        // With both live backends gone the LB has nothing to forward to.
        poll(Duration::from_secs(20), "LB with no live backend", || {
            tls_get(SocketAddr::from((lb.ip, 6443)))
                .is_err()
                .then_some(())
        });
        bed.link_up(&s2).unwrap();
        poll(
            Duration::from_secs(10),
            "server-2 reachable after link_up",
            || TcpStream::connect_timeout(&s2_api, Duration::from_secs(1)).ok(),
        );
        poll(
            Duration::from_secs(10),
            "server-1 -> server-2 after link_up",
            || bed.connect_from(&s1, s2_api, Duration::from_secs(1)).ok(),
        );
        poll(Duration::from_secs(20), "LB back on server-2", || {
            tls_get(SocketAddr::from((lb.ip, 6443))).ok()
        });

        // Everything is recorded in the state file while the bed lives.
        assert!(!leftovers(&prefix).is_empty());
        let st =
            std::fs::read_to_string(Path::new(STATE_DIR).join(format!("{prefix}.state"))).unwrap();
        assert!(st.contains(&format!("netns {}", lb.netns)), "{st}");
        assert!(st.contains(&format!("proc {} ", sleeper.id())), "{st}");
        // A live bed is not stale.
        assert!(!cleanup_stale(&prefix).unwrap().contains(&prefix));
        assert!(Path::new(&format!("/run/netns/{}", lb.netns)).exists());

        // Drop: the children (still held here, not waited for) are stopped
        // by the bed, then namespaces and links go.
        let dir = bed.dir().to_path_buf();
        drop(haproxy);
        let start = Instant::now();
        drop(bed);
        println!("drop took {:?}", start.elapsed());
        assert_eq!(leftovers(&prefix), Vec::<String>::new());
        for pid in &pids {
            assert!(!proc_alive(*pid, 0), "pid {pid} survived the bed");
        }
        assert!(!dir.exists());
        drop(children);
        drop(sleeper);
        println!("whole test took {:?}", t0.elapsed());
    }

    const CRASH_ENV: &str = "RKE2_NETBED_CRASH_HELPER";

    /// Not a test by itself: run by `stale_beds_are_cleaned` in a child
    /// process, which it then SIGKILLs, leaving a bed behind.
    #[test]
    #[ignore]
    #[allow(clippy::zombie_processes)] // it is killed with the bed left behind
    fn crash_helper() {
        if std::env::var_os(CRASH_ENV).is_none() {
            return;
        }
        let mut bed = NetBed::new().unwrap();
        let h = bed.add_host("victim").unwrap();
        let sleeper = bed.spawn_in(&h, Command::new("sleep").arg("600")).unwrap();
        // A process in the namespace that the bed did not start itself
        // (like etcd under a killed server).
        let grandchild = crate::run_ok(
            bed.command_in(&h, "sh")
                .unwrap()
                .args(["-c", "sleep 600 >/dev/null 2>&1 & echo $!"]),
        )
        .unwrap();
        println!(
            "BED {} {} {} {}",
            bed.prefix(),
            h.netns,
            sleeper.id(),
            grandchild.trim()
        );
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(600));
    }

    /// A bed whose process was SIGKILLed is found and removed by
    /// `cleanup_stale`, processes included.
    #[test]
    fn stale_beds_are_cleaned() {
        prerequisites();
        let exe = std::env::current_exe().unwrap();
        let mut helper = Command::new(exe)
            .args([
                "--exact",
                "netbed::tests::crash_helper",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = helper.stdout.take().unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        let line = loop {
            if out.read(&mut byte).unwrap() == 0 {
                let _ = helper.kill();
                panic!(
                    "crash helper ended early: {}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.push(byte[0]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(l) = text
                .lines()
                .find(|l| l.starts_with("BED ") && text.ends_with('\n'))
            {
                break l.to_string();
            }
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let (prefix, netns) = (f[1].to_string(), f[2].to_string());
        let sleeper: u32 = f[3].parse().unwrap();
        let grandchild: u32 = f[4].parse().unwrap();
        // Hold the state lock so that no other bed being created meanwhile
        // (which sweeps stale beds first) cleans this one before we look.
        let lock = StateLock::take().unwrap();
        kill(Pid::from_raw(helper.id() as i32), Signal::SIGKILL).unwrap();
        helper.wait().unwrap();
        // The crashed run left its bed behind.
        assert!(list_netns().contains(&netns));
        assert!(proc_alive(sleeper, 0) && proc_alive(grandchild, 0));
        let cleaned = cleanup_stale_locked(&prefix).unwrap();
        drop(lock);
        assert_eq!(cleaned, vec![prefix.clone()]);
        assert_eq!(leftovers(&prefix), Vec::<String>::new());
        poll(Duration::from_secs(5), "leftover processes to die", || {
            (!proc_alive(sleeper, 0) && !proc_alive(grandchild, 0)).then_some(())
        });
        // Nothing further to clean.
        assert!(cleanup_stale(&prefix).unwrap().is_empty());
    }
}
