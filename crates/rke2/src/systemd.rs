//! Telling systemd how a `Type=notify` unit (`rke2-server.service`,
//! `rke2-agent.service`) is doing: `READY=1` only once the server or agent
//! is up, so `systemctl start` returns when the node can be used and units
//! ordered `After=` it start then; `STOPPING=1` when a signal ends it.
//! Without `NOTIFY_SOCKET` (not started by systemd) these do nothing.
//!
//! The socket is taken out of the environment at start ([`take_socket`]):
//! etcd and containerd notify on their own when they see it, and their
//! `READY=1` must not stand for ours.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

use tracing::{debug, warn};

static SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` out of the environment, keeping it for
/// [`ready`] and [`stopping`]. Must run first in `main`, before any thread
/// exists.
pub fn take_socket() {
    let value = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|v| !v.is_empty());
    if value.is_some() {
        // SAFETY: called at the top of main, before any other thread is
        // started, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    }
    let _ = SOCKET.set(value);
}

/// Reports readiness with a one-line status shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}\n"));
}

/// Reports that a shutdown has begun.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=shutting down\n");
}

fn send(message: &str) {
    let Some(Some(path)) = SOCKET.get() else {
        return;
    };
    match notify(path, message) {
        Ok(()) => debug!(message, "told systemd"),
        Err(e) => warn!(error = %e, socket = %path, "could not notify systemd (NOTIFY_SOCKET)"),
    }
}

/// One datagram to `path`: a file system socket, or an abstract one when it
/// starts with `@` (as systemd's `sd_notify` reads the variable).
fn notify(path: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    sock.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify(path.to_str().unwrap(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        let name = format!("rke2-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        notify(&format!("@{name}"), "STOPPING=1\n").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");

        assert!(notify(dir.path().join("missing").to_str().unwrap(), "READY=1\n").is_err());
    }
}
