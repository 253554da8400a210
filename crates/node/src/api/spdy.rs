//! A SPDY/3.1 client for the runtime's streaming server, for the one thing
//! its WebSocket side cannot say: "stdin is closed".
//!
//! containerd 1.6's streaming server (kubelet's streaming package) speaks
//! WebSocket only up to `v4.channel.k8s.io`, which has no close-stdin
//! signal, but over SPDY every stream half-closes on its own: a DATA frame
//! with `FLAG_FIN` on the stdin stream is an end of file for the process.
//! So a `v5.channel.k8s.io` client (kubectl >= 1.30) is relayed here: its
//! channels become SPDY streams of the `v4.channel.k8s.io` remote-command
//! protocol (`streamtype` error, stdin, stdout, stderr, resize), its
//! channel 255 becomes the stdin FIN.
//!
//! Only what this client needs of SPDY/3.1 is implemented: SYN_STREAM out
//! (header blocks as zlib *stored* blocks, each closed by a sync flush,
//! which any inflater reads and which need no dictionary, since they
//! reference none), DATA both ways,
//! PING answered, every other control frame read and ignored (the server's
//! header blocks are never needed). The server closes the connection once
//! the process has exited and the exit Status is written.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The remote-command protocol asked of the streaming server.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// A zlib stream header without a preset dictionary (CMF 0x78, FLG 0x01).
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];
/// An empty non-final stored block.
const SYNC_FLUSH: [u8; 5] = [0, 0, 0, 0xff, 0xff];
/// The largest DATA frame sent (SPDY lengths are 24 bits).
const MAX_DATA: usize = 32 * 1024;
/// How long the runtime's streaming server has to accept a connection and
/// answer its upgrade (WebSocket or SPDY).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session with the runtime's streaming server (exec, attach,
/// port-forward) could not be opened; the node API answers 500 with the
/// message.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server did not accept within [`CONNECT_TIMEOUT`].
    #[error("the runtime's stream server at {0} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout(String),
    /// Connecting (TCP or WebSocket) failed.
    #[error("connecting to the runtime's stream server at {url}: {source}")]
    Connect {
        /// The server's URL.
        url: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The URL CRI returned for SPDY is not plain HTTP.
    #[error("the runtime's stream URL {0:?} is not http://")]
    NotHttp(String),
    /// The URL CRI returned is not one this node can dial.
    #[error("the runtime's stream URL {url:?}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A subprotocol that is not a valid header value.
    #[error("subprotocol {protocol:?}: {source}")]
    Subprotocol {
        /// The subprotocol.
        protocol: String,
        /// Why.
        source: http::header::InvalidHeaderValue,
    },
    /// Reading or writing the connection failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server did not answer the upgrade in time.
    #[error("the runtime's stream server did not answer the upgrade")]
    UpgradeTimeout,
    /// The server answered the upgrade with something other than 101.
    #[error("the runtime's stream server refused the SPDY upgrade: {0}")]
    Refused(String),
    /// The server chose no protocol offered.
    #[error("the runtime's stream server agreed to none of the protocols {0:?}")]
    NoProtocol(Vec<String>),
    /// The server chose another protocol than the one asked for.
    #[error("the runtime's stream server chose {0:?}, not {PROTOCOL}")]
    WrongProtocol(String),
}

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> StreamError {
    move |source| StreamError::Io { action, source }
}

/// Runs `connecting` (a dial of the runtime's streaming server at `url`)
/// within [`CONNECT_TIMEOUT`], naming the server in either failure.
pub async fn dial<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    url: &str,
    connecting: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StreamError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| StreamError::Timeout(url.to_string()))?
        .map_err(|e| StreamError::Connect {
            url: url.to_string(),
            source: e.into(),
        })
}

/// Which channels the exec or attach session has, as the CRI request
/// asked for them (the server expects exactly these streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    /// A stdin stream.
    pub stdin: bool,
    /// A stdout stream.
    pub stdout: bool,
    /// A stderr stream (never with a TTY).
    pub stderr: bool,
    /// A resize stream (with a TTY).
    pub resize: bool,
}

/// A remote-command channel, numbered as in `channel.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// 0.
    Stdin,
    /// 1.
    Stdout,
    /// 2.
    Stderr,
    /// 3: the exit Status (JSON).
    Error,
    /// 4: terminal size (JSON).
    Resize,
}

impl Channel {
    /// The channel byte of WebSocket messages.
    pub fn number(self) -> u8 {
        match self {
            Channel::Stdin => 0,
            Channel::Stdout => 1,
            Channel::Stderr => 2,
            Channel::Error => 3,
            Channel::Resize => 4,
        }
    }

    fn stream_type(self) -> &'static str {
        match self {
            Channel::Stdin => "stdin",
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Error => "error",
            Channel::Resize => "resize",
        }
    }
}

/// The sending half of a session.
pub struct Sender {
    w: OwnedWriteHalf,
    ids: HashMap<Channel, u32>,
    stdin_closed: bool,
}

/// The receiving half of a session.
pub struct Receiver {
    r: BufReader<OwnedReadHalf>,
    channels: HashMap<u32, Channel>,
    /// A channel whose last DATA frame carried FIN: its close comes next.
    pending_close: Option<Channel>,
}

/// What the server sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Bytes on a channel.
    Data(Channel, Vec<u8>),
    /// The server closed its side of a channel.
    Closed(Channel),
    /// A PING, to be answered through the [`Sender`].
    Ping([u8; 4]),
}

fn control(kind: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

fn data_frame(id: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// A SPDY/3 header block (`count`, then length-prefixed names and values),
/// as one zlib stored block; the first block of the connection also
/// carries the zlib stream header.
fn header_block(pairs: &[(&str, &str)], first: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
    for (n, v) in pairs {
        raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
        raw.extend_from_slice(n.as_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    let mut out = Vec::new();
    if first {
        out.extend_from_slice(&ZLIB_HEADER);
    }
    // A non-final stored block: BFINAL 0, BTYPE 00, padded to the byte,
    // then LEN and its complement (little-endian), then the bytes.
    let len = raw.len() as u16;
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&raw);
    // An empty stored block, as zlib's sync flush ends every SPDY header
    // block: inflaters (Go's among them) hand out what they hold only on
    // a block boundary they can see, not at the end of the frame.
    out.extend_from_slice(&SYNC_FLUSH);
    out
}

fn syn_stream(id: u32, channel: Channel, first: bool) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&header_block(
        &[("streamtype", channel.stream_type())],
        first,
    ));
    control(SYN_STREAM, 0, &d)
}

/// Copies the SPDY frames `r` sends to `w`, all but GOAWAY, until `r`
/// ends (or sends half a frame). Returns whether a GOAWAY was held back.
///
/// The streaming server sends GOAWAY and closes right after its last
/// DATA frames and the exit Status. The spdystream library of kubectl
/// <= 1.29 stops reading at a GOAWAY (or at the end of the connection)
/// and then discards the frames still queued for its per-stream workers,
/// so the last output of an attach or exec could vanish. Without the
/// GOAWAY, and with the connection kept open, the client ends each
/// stream at its FIN, reads the Status and closes the connection itself.
pub async fn forward_frames_but_goaway<R, W>(r: &mut R, w: &mut W) -> std::io::Result<bool>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut held = false;
    loop {
        let mut frame = vec![0u8; 8];
        match r.read_exact(&mut frame).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(held),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]) as usize;
        frame.resize(8 + len, 0);
        match r.read_exact(&mut frame[8..]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(held),
            Err(e) => return Err(e),
        }
        if frame[0] & 0x80 != 0 && u16::from_be_bytes([frame[2], frame[3]]) == GOAWAY {
            held = true;
            continue;
        }
        w.write_all(&frame).await?;
        w.flush().await?;
    }
}

/// A connection to the runtime's streaming server after its 101: the
/// reader (with whatever it buffered past the answer head), the writer,
/// and the protocol the server chose.
pub struct Upgraded {
    /// The reading half, buffered.
    pub r: BufReader<OwnedReadHalf>,
    /// The writing half.
    pub w: OwnedWriteHalf,
    /// The `X-Stream-Protocol-Version` the server chose.
    pub protocol: String,
}

/// Asks the streaming server at `url` (what CRI `Exec` or `Attach`
/// returned) for a SPDY/3.1 upgrade, offering `protocols` (most preferred
/// first), and reads its answer head.
pub async fn upgrade(url: &str, protocols: &[String]) -> Result<Upgraded, StreamError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| StreamError::NotHttp(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = dial(url, TcpStream::connect(authority)).await?;
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    w.write_all(req.as_bytes())
        .await
        .map_err(io("writing to the runtime's stream server"))?;
    let mut r = BufReader::new(r);
    let mut status = String::new();
    let mut protocol = None;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(CONNECT_TIMEOUT, r.read_line(&mut line))
            .await
            .map_err(|_| StreamError::UpgradeTimeout)?
            .map_err(io("reading the runtime's upgrade answer"))?;
        if n == 0 || line == "\r\n" {
            break;
        }
        if status.is_empty() {
            status = line.trim().to_string();
        } else if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("x-stream-protocol-version")
        {
            protocol = Some(v.trim().to_string());
        }
    }
    if !status.contains(" 101") {
        return Err(StreamError::Refused(status));
    }
    let protocol = protocol.ok_or_else(|| StreamError::NoProtocol(protocols.to_vec()))?;
    Ok(Upgraded { r, w, protocol })
}

/// Opens a session on the streaming server's `url` (what CRI `Exec` or
/// `Attach` returned) with the streams of `streams`.
pub async fn connect(url: &str, streams: Streams) -> Result<(Sender, Receiver), StreamError> {
    let Upgraded { r, mut w, protocol } = upgrade(url, &[PROTOCOL.to_string()]).await?;
    if protocol != PROTOCOL {
        return Err(StreamError::WrongProtocol(protocol));
    }
    let mut wanted = vec![Channel::Error];
    for (on, c) in [
        (streams.stdin, Channel::Stdin),
        (streams.stdout, Channel::Stdout),
        (streams.stderr, Channel::Stderr),
        (streams.resize, Channel::Resize),
    ] {
        if on {
            wanted.push(c);
        }
    }
    let mut ids = HashMap::new();
    let mut channels = HashMap::new();
    let mut frames = Vec::new();
    for (i, c) in wanted.into_iter().enumerate() {
        // Streams a client opens have odd ids.
        let id = 1 + 2 * i as u32;
        frames.extend_from_slice(&syn_stream(id, c, i == 0));
        ids.insert(c, id);
        channels.insert(id, c);
    }
    w.write_all(&frames)
        .await
        .map_err(io("opening the SPDY streams"))?;
    Ok((
        Sender {
            w,
            ids,
            stdin_closed: false,
        },
        Receiver {
            r,
            channels,
            pending_close: None,
        },
    ))
}

impl Sender {
    /// Sends bytes on stdin or resize (other channels are the server's).
    pub async fn send(&mut self, channel: Channel, data: &[u8]) -> std::io::Result<()> {
        let Some(&id) = self.ids.get(&channel) else {
            return Ok(());
        };
        if channel == Channel::Stdin && self.stdin_closed {
            return Ok(());
        }
        for chunk in data.chunks(MAX_DATA) {
            self.w.write_all(&data_frame(id, 0, chunk)).await?;
        }
        Ok(())
    }

    /// Ends stdin: the process reads end of file.
    pub async fn close_stdin(&mut self) -> std::io::Result<()> {
        let Some(&id) = self.ids.get(&Channel::Stdin) else {
            return Ok(());
        };
        if self.stdin_closed {
            return Ok(());
        }
        self.stdin_closed = true;
        self.w.write_all(&data_frame(id, FLAG_FIN, &[])).await
    }

    /// Answers a PING.
    pub async fn pong(&mut self, id: [u8; 4]) -> std::io::Result<()> {
        self.w.write_all(&control(PING, 0, &id)).await
    }

    /// Closes the connection (the server then ends the session).
    pub async fn shutdown(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

impl Receiver {
    /// The next thing the server sent; `None` once the connection ended
    /// (GOAWAY or EOF).
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            if let Some(c) = self.pending_close.take() {
                return Some(Incoming::Closed(c));
            }
            let mut head = [0u8; 8];
            self.r.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut body = vec![0u8; len];
            self.r.read_exact(&mut body).await.ok()?;
            let flags = head[4];
            if head[0] & 0x80 != 0 {
                let kind = u16::from_be_bytes([head[2], head[3]]);
                match kind {
                    PING if body.len() == 4 => {
                        return Some(Incoming::Ping([body[0], body[1], body[2], body[3]]));
                    }
                    GOAWAY => return None,
                    // SYN_REPLY, RST_STREAM, SETTINGS, HEADERS,
                    // WINDOW_UPDATE: nothing this client acts on. A reset
                    // stream ends with the connection.
                    _ => {}
                }
                continue;
            }
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            let Some(&channel) = self.channels.get(&id) else {
                continue;
            };
            if !body.is_empty() {
                if flags & FLAG_FIN != 0 {
                    // Deliver the data now, the close on the next call.
                    self.channels.remove(&id);
                    self.pending_close = Some(channel);
                }
                return Some(Incoming::Data(channel, body));
            }
            if flags & FLAG_FIN != 0 {
                self.channels.remove(&id);
                return Some(Incoming::Closed(channel));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_frame_but_goaway_is_forwarded_whole() {
        let data = data_frame(3, FLAG_FIN, b"last output");
        let ping = control(PING, 0, &[0, 0, 0, 1]);
        let goaway = control(GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 0]);
        let mut input = Vec::new();
        for f in [&data, &goaway, &ping] {
            input.extend_from_slice(f);
        }
        // A frame cut short by the end of the stream is not passed on.
        input.extend_from_slice(&data[..5]);
        let mut out = Vec::new();
        let held = forward_frames_but_goaway(&mut input.as_slice(), &mut out)
            .await
            .unwrap();
        assert!(held);
        assert_eq!(out, [data, ping].concat());
    }

    #[test]
    fn frames_are_laid_out_as_spdy3() {
        let d = data_frame(3, FLAG_FIN, b"hi");
        assert_eq!(d, vec![0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']);
        let c = control(PING, 0, &[0, 0, 0, 7]);
        assert_eq!(c, vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        // (0x78 << 8 | 0x01) is a multiple of 31, as zlib requires.
        assert_eq!((0x78u32 * 256 + 0x01) % 31, 0);
    }

    #[test]
    fn header_block_is_a_stored_zlib_block() {
        let b = header_block(&[("streamtype", "stdin")], true);
        assert_eq!(&b[..2], &ZLIB_HEADER);
        let raw_len = 4 + 4 + 10 + 4 + 5;
        assert_eq!(b[2], 0);
        assert_eq!(u16::from_le_bytes([b[3], b[4]]) as usize, raw_len);
        assert_eq!(u16::from_le_bytes([b[5], b[6]]), !(raw_len as u16));
        assert_eq!(&b[7..11], &1u32.to_be_bytes());
        assert_eq!(&b[15..25], b"streamtype");
        assert_eq!(&b[b.len() - 5..], &SYNC_FLUSH);
        // Later blocks continue the same zlib stream: no header again.
        assert_eq!(header_block(&[("a", "b")], false)[0], 0);
    }
}
