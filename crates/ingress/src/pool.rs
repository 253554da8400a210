//! Keep-alive connections to plain HTTP/1.1 endpoints: hyper's
//! `client::conn` senders kept per endpoint address, taken for one request
//! and given back when the response body has been read to its end (a
//! connection whose response is not read to the end, or that upgraded, is
//! not reused). Cheaper per request than hyper-util's general pool, which
//! the HTTPS and h2c backends keep using.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::proxy::Body;

/// The most idle connections kept per endpoint.
const MAX_IDLE: usize = 1024;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened; the request was not sent (and is
    /// given back).
    Connect(std::io::Error, Box<Request<Body>>),
    /// The request failed on an open connection.
    Request(hyper::Error),
}

/// The idle connections, by endpoint.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Body>>>>,
    /// Give-backs since the last sweep of closed connections.
    returns: std::sync::atomic::AtomicUsize,
}

/// Every this many give-backs, connections the backends closed (and
/// endpoints gone) are dropped from the idle lists.
const SWEEP_EVERY: usize = 4096;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    fn take(&self, ep: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&ep)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, ep: SocketAddr, s: SendRequest<Body>) {
        if s.is_closed() {
            return;
        }
        let sweep = self
            .returns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % SWEEP_EVERY
            == SWEEP_EVERY - 1;
        if let Ok(mut idle) = self.idle.lock() {
            if sweep {
                idle.retain(|_, list| {
                    list.retain(|s| !s.is_closed());
                    !list.is_empty()
                });
            }
            let list = idle.entry(ep).or_default();
            if list.len() < MAX_IDLE {
                list.push(s);
            }
        }
    }

    async fn connect(ep: SocketAddr, timeout: Duration) -> std::io::Result<SendRequest<Body>> {
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(ep))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %ep, error = %e, "backend connection");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `ep` on an idle connection (a fresh one when none is
    /// left or the idle one was closed before the request went out).
    pub async fn send(
        self: &Arc<Self>,
        ep: SocketAddr,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, SendError> {
        loop {
            let (mut sender, reused) = match self.take(ep) {
                Some(s) => (s, true),
                None => match Self::connect(ep, connect_timeout).await {
                    Ok(s) => (s, false),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Connect(
                    std::io::Error::other("connection closed at once"),
                    Box::new(req),
                ));
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.wrap(ep, sender, res)),
                Err(mut e) => match e.take_message() {
                    // Not sent: an idle connection the backend had closed.
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    fn wrap(
        self: &Arc<Self>,
        ep: SocketAddr,
        sender: SendRequest<Body>,
        res: Response<Incoming>,
    ) -> Response<Body> {
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            return res.map(|b| Body::new(http_body_util::BodyExt::map_err(b, Into::into)));
        }
        let done = res.body().is_end_stream();
        let back = Some((self.clone(), ep, sender));
        let mut body = PoolBody { inner: None, back };
        if done {
            body.finish();
        }
        res.map(|b| {
            body.inner = Some(b);
            Body::new(body)
        })
    }
}

/// A response body that gives its connection back at its end.
struct PoolBody {
    inner: Option<Incoming>,
    back: Option<(Arc<Pool>, SocketAddr, SendRequest<Body>)>,
}

impl PoolBody {
    fn finish(&mut self) {
        if let Some((pool, ep, sender)) = self.back.take() {
            pool.give_back(ep, sender);
        }
    }
}

impl HttpBody for PoolBody {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken connection is not reused.
                self.back = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => {
                if self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                    self.finish();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}
