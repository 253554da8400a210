//! `exec` and `attach`: the client's WebSocket relayed to the runtime's
//! streaming server (over SPDY for `v5.channel.k8s.io` clients, see
//! [`relay_spdy`]; over WebSocket for the older subprotocols).
//!
//! CRI `Exec`/`Attach` answer with a URL on containerd's own streaming
//! server (127.0.0.1, random port). That server is containerd 1.6's copy
//! of kubelet's streaming package: a WebSocket speaking the
//! `channel.k8s.io` family up to `v4.channel.k8s.io` (every message
//! starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error
//! Status JSON, 4 resize). kubectl >= 1.30 speaks `v5.channel.k8s.io`,
//! which is v4 plus channel 255 "close stdin"; v4 has no such signal.
//! The same server's SPDY side has one (every SPDY stream half-closes), so
//! v5 clients are relayed over SPDY and `kubectl exec -i ... -- cat < file`
//! ends when the file does.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{self, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

use super::spdy::{self, StreamError};

/// None of the WebSocket subprotocols a client offered is spoken here
/// (the node API answers 400 with the message).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "none of the requested WebSocket subprotocols {offered:?} is supported; this node speaks {}",
    CLIENT_PROTOCOLS.join(", ")
)]
pub struct Unsupported {
    /// What the client offered.
    pub offered: Vec<String>,
}

/// The subprotocols accepted from clients, most preferred first.
pub const CLIENT_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// kubelet's port-forward protocol over SPDY.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of kubectl >= 1.31's port-forward: SPDY
/// frames carried in binary messages.
pub const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The v5 channel that tells the server stdin is closed.
const CLOSE_CHANNEL: u8 = 255;

/// How long the runtime side may keep sending after the client left
/// (its close is forwarded; anything after it has nowhere to go).
const DRAIN_AFTER_CLIENT_CLOSE: Duration = Duration::from_secs(2);

/// How long a SPDY client may take to close its connection after the
/// runtime's side ended, before the node closes it.
const CLIENT_CLOSE_AFTER_RUNTIME: Duration = Duration::from_secs(10);

/// The outcome of subprotocol negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// What the client is answered (`None`: it asked for none).
    pub client: Option<&'static str>,
    /// What is asked of the runtime's streaming server.
    pub runtime: &'static str,
}

impl Negotiated {
    /// Whether the client speaks v5 (and may send channel 255).
    pub fn is_v5(&self) -> bool {
        self.client == Some(CLIENT_PROTOCOLS[0])
    }
}

/// Picks the subprotocol from what the client offered. A client that
/// offers none gets plain `channel.k8s.io`, as kubelet does. v5 is
/// relayed over SPDY ([`relay_spdy`]; `runtime` names v4, the protocol
/// spoken there); every other one passes through as a WebSocket.
pub fn negotiate(offered: &[String]) -> Result<Negotiated, Unsupported> {
    if offered.is_empty() {
        return Ok(Negotiated {
            client: None,
            runtime: "channel.k8s.io",
        });
    }
    let chosen = CLIENT_PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .ok_or_else(|| Unsupported {
            offered: offered.to_vec(),
        })?;
    Ok(Negotiated {
        client: Some(chosen),
        runtime: if *chosen == CLIENT_PROTOCOLS[0] {
            CLIENT_PROTOCOLS[1]
        } else {
            chosen
        },
    })
}

/// A WebSocket to the runtime's streaming server.
pub type RuntimeSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the WebSocket to the URL CRI returned, asking for `protocol`.
pub async fn connect_runtime(url: &str, protocol: &str) -> Result<RuntimeSocket, StreamError> {
    // The runtime answers with an http:// URL; the same server takes a
    // WebSocket upgrade on it.
    let ws_url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    };
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| StreamError::Url {
            url: url.to_string(),
            source: e.into(),
        })?;
    req.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_str(protocol).map_err(|source| StreamError::Subprotocol {
            protocol: protocol.to_string(),
            source,
        })?,
    );
    let (socket, _) = spdy::dial(url, tokio_tungstenite::connect_async(req)).await?;
    Ok(socket)
}

/// Relays a client of the subprotocols before v5 (v5 clients go through
/// [`relay_spdy`]): copies messages both ways until either side ends. Everything the
/// runtime sends before it closes (above all the exit Status on channel
/// 3, which kubectl turns into its exit code) is delivered before the
/// client is closed.
pub async fn relay(client: WebSocket, runtime: RuntimeSocket) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut r_tx, mut r_rx) = runtime.split();
    let down = async {
        while let Some(msg) = r_rx.next().await {
            let msg = match msg {
                Ok(tungstenite::Message::Binary(b)) => ws::Message::Binary(b),
                Ok(tungstenite::Message::Text(t)) => ws::Message::Text(t.as_str().into()),
                Ok(tungstenite::Message::Close(_)) => break,
                // Pings are answered by the library; nothing to forward.
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, "runtime stream ended");
                    break;
                }
            };
            if c_tx.send(msg).await.is_err() {
                return;
            }
        }
        close_client(&mut c_tx).await;
    };
    let up = async {
        while let Some(msg) = c_rx.next().await {
            let msg = match msg {
                Ok(ws::Message::Binary(b)) => tungstenite::Message::Binary(b),
                Ok(ws::Message::Text(t)) => tungstenite::Message::Text(t.as_str().into()),
                Ok(ws::Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, "client stream ended");
                    break;
                }
            };
            if r_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = r_tx.send(tungstenite::Message::Close(None)).await;
        let _ = r_tx.close().await;
    };
    until_done(down, up).await;
}

/// Ends the client's WebSocket with a normal close.
async fn close_client(c_tx: &mut futures::stream::SplitSink<WebSocket, ws::Message>) {
    let _ = c_tx
        .send(ws::Message::Close(Some(ws::CloseFrame {
            code: ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    let _ = c_tx.close().await;
}

/// Runs a relay's two directions: done [`DRAIN_AFTER_CLIENT_CLOSE`]
/// after the client's side (`up`) ended, so what the runtime still sends
/// (the exit Status) is delivered; and when the runtime's side (`down`)
/// ends first, done once the client answered the close (or that long
/// after): a connection dropped while the client's last frames sit
/// unread in it is reset, and the reset can discard the runtime's last
/// output still on its way to the client.
async fn until_done(down: impl Future<Output = ()>, up: impl Future<Output = ()>) {
    tokio::pin!(down, up);
    tokio::select! {
        _ = &mut down => {
            let _ = tokio::time::timeout(DRAIN_AFTER_CLIENT_CLOSE, up).await;
        }
        _ = &mut up => {
            let _ = tokio::time::timeout(DRAIN_AFTER_CLIENT_CLOSE, down).await;
        }
    }
}

/// Relays a `v5.channel.k8s.io` client over SPDY to the runtime (see
/// [`super::spdy`]): channel 0 and 4 messages become stdin and resize
/// data, `[255, 0]` ends stdin, and everything the runtime sends comes
/// back on its channel. Ends when the runtime closes the session (after
/// the exit Status on channel 3) or, a moment after, when the client left.
pub async fn relay_spdy(client: WebSocket, mut tx: spdy::Sender, mut rx: spdy::Receiver) {
    let (mut c_tx, mut c_rx) = client.split();
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel::<[u8; 4]>();
    let down = async move {
        while let Some(event) = rx.next().await {
            match event {
                spdy::Incoming::Data(channel, bytes) => {
                    let mut msg = Vec::with_capacity(bytes.len() + 1);
                    msg.push(channel.number());
                    msg.extend_from_slice(&bytes);
                    if c_tx.send(ws::Message::Binary(msg.into())).await.is_err() {
                        return;
                    }
                }
                spdy::Incoming::Ping(id) => {
                    let _ = ping_tx.send(id);
                }
                spdy::Incoming::Closed(_) => {}
            }
        }
        close_client(&mut c_tx).await;
    };
    let up = async move {
        loop {
            let sent = tokio::select! {
                id = ping_rx.recv() => match id {
                    Some(id) => tx.pong(id).await,
                    None => break,
                },
                msg = c_rx.next() => match msg {
                    Some(Ok(ws::Message::Binary(b))) => match (b.first(), b.get(1)) {
                        (Some(0), _) => tx.send(spdy::Channel::Stdin, &b[1..]).await,
                        (Some(4), _) => tx.send(spdy::Channel::Resize, &b[1..]).await,
                        (Some(&CLOSE_CHANNEL), Some(0)) => tx.close_stdin().await,
                        _ => Ok(()),
                    },
                    Some(Ok(ws::Message::Close(_))) | None => break,
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => {
                        debug!(error = %e, "client stream ended");
                        break;
                    }
                },
            };
            if let Err(e) = sent {
                debug!(error = %e, "runtime stream ended");
                break;
            }
        }
        tx.shutdown().await;
    };
    until_done(down, up).await;
}

/// Relays a SPDY client's upgraded connection and the runtime's: frames
/// from the runtime pass through whole, all but its GOAWAY (see
/// [`spdy::forward_frames_but_goaway`]), and once the runtime has closed
/// the client is left to close first; bytes from the client pass through
/// as they come.
pub async fn relay_bytes(client: hyper::upgrade::OnUpgrade, runtime: spdy::Upgraded) {
    use tokio::io::AsyncWriteExt;
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "SPDY upgrade did not complete");
            return;
        }
    };
    let client = hyper_util::rt::TokioIo::new(client);
    let spdy::Upgraded { mut r, mut w, .. } = runtime;
    let (mut c_r, mut c_w) = tokio::io::split(client);
    {
        let down = async {
            if let Err(e) = spdy::forward_frames_but_goaway(&mut r, &mut c_w).await {
                debug!(error = %e, "runtime stream ended");
            }
        };
        let up = rke2_relay::pump(&mut c_r, &mut w);
        tokio::pin!(down, up);
        tokio::select! {
            _ = &mut down => {
                // The client closes once it has read every stream's end and
                // the Status (see forward_frames_but_goaway); closing first
                // could still lose what it has not read.
                let _ = tokio::time::timeout(CLIENT_CLOSE_AFTER_RUNTIME, &mut up).await;
            }
            _ = &mut up => {
                let _ = tokio::time::timeout(DRAIN_AFTER_CLIENT_CLOSE, &mut down).await;
            }
        }
    }
    let _ = c_w.shutdown().await;
}

/// Relays a WebSocket that tunnels SPDY (binary messages are chunks of
/// the SPDY byte stream) to the runtime's SPDY connection, both ways.
pub async fn relay_tunnel(socket: WebSocket, runtime: spdy::Upgraded) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let spdy::Upgraded { r, mut w, .. } = runtime;
    let early = r.buffer().to_vec();
    let mut r = r.into_inner();
    let (mut ws_tx, mut ws_rx) = socket.split();
    let down = async {
        if !early.is_empty() && ws_tx.send(ws::Message::Binary(early.into())).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(ws::Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(ws::Message::Close(None)).await;
    };
    let up = async {
        while let Some(Ok(m)) = ws_rx.next().await {
            match m {
                ws::Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                ws::Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    };
    until_done(down, up).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn v5_is_preferred_and_served_as_v4() {
        let n = negotiate(&offer(&["v4.channel.k8s.io", "v5.channel.k8s.io"])).unwrap();
        assert_eq!(n.client, Some("v5.channel.k8s.io"));
        assert_eq!(n.runtime, "v4.channel.k8s.io");
        assert!(n.is_v5());
    }

    #[test]
    fn older_protocols_pass_through() {
        for p in [
            "v4.channel.k8s.io",
            "channel.k8s.io",
            "base64.channel.k8s.io",
        ] {
            let n = negotiate(&offer(&[p])).unwrap();
            assert_eq!(n.client, Some(p));
            assert_eq!(n.runtime, p);
            assert!(!n.is_v5());
        }
        let none = negotiate(&[]).unwrap();
        assert_eq!(none.client, None);
        assert_eq!(none.runtime, "channel.k8s.io");
    }

    #[test]
    fn unknown_protocols_are_refused_by_name() {
        let e = negotiate(&offer(&["SPDY/3.1", "v6.channel.k8s.io"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("v6.channel.k8s.io") && e.contains("v5.channel.k8s.io"),
            "{e}"
        );
    }
}
