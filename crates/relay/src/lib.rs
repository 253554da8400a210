//! Byte relays between two connections: an upgraded client stream and
//! its backend (exec, attach and port-forward through the apiserver and
//! the node, the aggregator, service and ingress proxies), or a proxied
//! TCP connection.
//!
//! `tokio::io::copy_bidirectional` is not enough for these: it returns
//! at the first error of either direction, dropping what the other
//! direction had read but not yet written, and a socket closed while the
//! peer's bytes sit unread in it is reset (RST), which throws away what
//! was still queued for that peer. The relay of `kubectl attach` lost a
//! container's last output that way: the backend closed right after its
//! last bytes, a client frame sent at that moment made the write towards
//! the backend fail, and the output still in flight was dropped.
//!
//! [`splice`] therefore runs the two directions independently: a
//! direction whose writer fails keeps reading (and discarding) its
//! reader until that side closes, the backend's output is always carried
//! to its end, and after it ends the client gets a bounded time to close
//! its own side before the connections are dropped.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a client may keep its side open after the backend's side
/// ended, when the caller has no reason to choose otherwise: its close
/// (or the last frames it sends before closing) is read rather than
/// reset.
pub const LINGER: Duration = Duration::from_secs(2);

/// Bytes carried each way by [`splice`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// From the client to the backend.
    pub up: u64,
    /// From the backend to the client.
    pub down: u64,
}

/// Copies `from` into `to` until `from` ends, then shuts `to` down. When
/// writing fails, what `from` still sends is read and dropped until it
/// ends, so that closing it later does not reset it. Returns the bytes
/// written. One direction of [`splice`], for relays that need to treat
/// the other direction differently.
pub async fn pump<R, W>(from: &mut R, to: &mut W) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    let mut sink_open = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if sink_open {
            if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                sink_open = false;
            } else {
                written += n as u64;
            }
        }
    }
    if sink_open {
        let _ = to.shutdown().await;
    }
    written
}

/// Relays `client` and `backend` both ways. Returns once the backend's
/// output has been carried to its end and the client closed its side (or
/// `linger` passed after the backend ended, or the client's reads fail);
/// a client that closes first leaves the backend's output flowing until
/// the backend ends, as a half-closed TCP connection does.
pub async fn splice<C, B>(client: C, backend: B, linger: Duration) -> Carried
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut c_r, mut c_w) = tokio::io::split(client);
    let (mut b_r, mut b_w) = tokio::io::split(backend);
    let down = pump(&mut b_r, &mut c_w);
    let up = pump(&mut c_r, &mut b_w);
    tokio::pin!(down, up);
    let mut carried = Carried::default();
    tokio::select! {
        n = &mut down => {
            carried.down = n;
            if let Ok(n) = tokio::time::timeout(linger, &mut up).await {
                carried.up = n;
            }
        }
        n = &mut up => {
            carried.up = n;
            carried.down = down.await;
        }
    }
    carried
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn everything_the_backend_sent_reaches_the_client_when_its_write_side_fails() {
        let (client_far, client_near) = duplex(64);
        let (backend_near, backend_far) = duplex(64);
        let relay = tokio::spawn(splice(client_near, backend_near, LINGER));
        let (mut b_r, mut b_w) = tokio::io::split(backend_far);
        let (mut c_r, mut c_w) = tokio::io::split(client_far);
        // The backend stops reading (its read half is gone) but has a lot
        // to say, more than any buffer on the way holds.
        drop(b_r.read(&mut [0u8; 0]).await);
        let out: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expect = out.clone();
        let writer = tokio::spawn(async move {
            b_w.write_all(&out).await.unwrap();
            b_w.shutdown().await.unwrap();
            drop(b_r);
        });
        // Meanwhile the client keeps sending.
        let sender = tokio::spawn(async move {
            for _ in 0..100 {
                if c_w.write_all(&[7u8; 1024]).await.is_err() {
                    break;
                }
            }
            let _ = c_w.shutdown().await;
        });
        let mut got = Vec::new();
        c_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
        writer.await.unwrap();
        sender.await.unwrap();
        let carried = relay.await.unwrap();
        assert_eq!(carried.down, expect.len() as u64);
    }

    #[tokio::test]
    async fn a_client_that_closes_first_still_gets_the_backends_output() {
        let (client_far, client_near) = duplex(1024);
        let (backend_near, mut backend_far) = duplex(1024);
        let relay = tokio::spawn(splice(client_near, backend_near, LINGER));
        let (mut c_r, mut c_w) = tokio::io::split(client_far);
        c_w.write_all(b"input").await.unwrap();
        c_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"input");
        backend_far
            .write_all(b"output after the client's close")
            .await
            .unwrap();
        backend_far.shutdown().await.unwrap();
        let mut out = Vec::new();
        c_r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"output after the client's close");
        assert_eq!(relay.await.unwrap(), Carried { up: 5, down: 31 });
    }

    #[tokio::test]
    async fn a_client_that_never_closes_is_dropped_after_the_linger() {
        let (client_far, client_near) = duplex(1024);
        let (backend_near, backend_far) = duplex(1024);
        let linger = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        let relay = tokio::spawn(splice(client_near, backend_near, linger));
        drop(backend_far);
        // Bounded: a relay that waited for the client would never end.
        tokio::time::timeout(Duration::from_secs(60), relay)
            .await
            .expect("the relay ends after the linger")
            .unwrap();
        assert!(started.elapsed() >= linger);
        drop(client_far);
    }
}
