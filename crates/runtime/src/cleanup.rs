//! What `rke2 killall` does for one node: stop every container and shim
//! this node's containerd started (found by the pid files in its state
//! dir, never by process name), then unmount what is left under the
//! node's directories. Containers outlive the node role by design (a
//! restart adopts them), so this is the explicit way to end them.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Pids signalled (container inits and shims).
    pub killed: Vec<i32>,
    /// Mount points unmounted.
    pub unmounted: Vec<PathBuf>,
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 1)
}

/// Kills the containers and shims recorded under containerd's `state_dir`
/// (`io.containerd.runtime.v2.task/<namespace>/<id>/{init,shim}.pid`).
pub fn kill_containers(state_dir: &Path) -> Vec<i32> {
    let mut killed = Vec::new();
    let tasks = state_dir.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = std::fs::read_dir(&tasks) else {
        return killed;
    };
    let mut shims = Vec::new();
    for ns in namespaces.filter_map(|e| e.ok()) {
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.filter_map(|e| e.ok()) {
            if let Some(pid) = read_pid(&id.path().join("init.pid"))
                && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
            {
                killed.push(pid);
            }
            if let Some(pid) = read_pid(&id.path().join("shim.pid")) {
                shims.push(pid);
            }
        }
    }
    // containerd 1.6 records no shim pid in the bundle, but every shim
    // runs with its bundle dir as working directory.
    shims.extend(processes_working_in(&tasks));
    // Shims last: they reap their container first.
    for pid in shims {
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed.push(pid);
        }
    }
    killed
}

/// Processes whose working directory is at or below `dir`.
pub fn processes_working_in(dir: &Path) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 1 && *pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Mount points of this mount namespace at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts (lazily) everything at or below each of `dirs`.
pub fn unmount_under(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for d in dirs {
        for m in mounts_under(d) {
            if nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                done.push(m);
            }
        }
    }
    done
}

/// Kills containers and shims of the node whose containerd dir is
/// `containerd_dir`, then unmounts what remains under `dirs`.
pub fn kill_all(containerd_dir: &Path, dirs: &[PathBuf]) -> Cleaned {
    let killed = kill_containers(&containerd_dir.join("state"));
    let unmounted = unmount_under(dirs);
    Cleaned { killed, unmounted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }

    #[test]
    fn pid_files_name_what_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let task = d.path().join("io.containerd.runtime.v2.task/k8s.io/abc");
        std::fs::create_dir_all(&task).unwrap();
        // A child we own stands in for a container init.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        std::fs::write(task.join("init.pid"), child.id().to_string()).unwrap();
        std::fs::write(task.join("shim.pid"), "1").unwrap();
        // And one working in a bundle dir stands in for a shim.
        let mut shim = std::process::Command::new("sleep")
            .arg("60")
            .current_dir(&task)
            .spawn()
            .unwrap();
        let killed = kill_containers(d.path());
        assert_eq!(killed, vec![child.id() as i32, shim.id() as i32]);
        assert!(!child.wait().unwrap().success());
        assert!(!shim.wait().unwrap().success());
    }
}
