//! The DNS server: turning one packet into an answer (the zone, the
//! forwarder, or an error code), and the UDP and TCP loops around it.
//!
//! Packet handling never panics on client bytes: shorter than a header or
//! a response (QR set) is dropped; undecodable is FORMERR; an opcode
//! other than QUERY is NOTIMP; not exactly one question is FORMERR; EDNS
//! above version 0 is BADVERS; a class other than IN, or a zone transfer,
//! is REFUSED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::answer::{Lookup, lookup};
use crate::forward::{EDNS_PAYLOAD, Forwarder};
use crate::zone::{Place, Zone};

/// The largest UDP answer we send, whatever the client's EDNS size says.
pub const MAX_UDP_ANSWER: usize = 4096;
/// Forwarded questions in flight at once; past this, REFUSED (as
/// CoreDNS's `forward` with `max_concurrent`).
pub const MAX_FORWARDS: usize = 1000;
/// Open TCP connections at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// How long a TCP connection may sit idle between questions.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// The server's state: the current zone snapshot and the forwarder.
pub struct Dns {
    zone: ArcSwap<Zone>,
    synced: AtomicBool,
    forwarder: Forwarder,
    rotate: AtomicUsize,
    forwards: Arc<Semaphore>,
}

/// What to do with one packet.
pub enum Handled {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing (not a query, or too short to answer).
    Drop,
    /// The answer needs upstream: finish it with [`Dns::complete`].
    Forward(Box<Pending>),
}

/// A question waiting for upstream.
pub struct Pending {
    request: Message,
    max_len: usize,
    /// CNAME records already answered from the zone, and the outside
    /// target whose records upstream must add.
    chase: Option<(Vec<Record>, Name)>,
}

impl Dns {
    /// A server for the zone `empty` (not yet synced: names in it get
    /// SERVFAIL until [`Dns::publish`]) forwarding through `forwarder`.
    pub fn new(empty: Zone, forwarder: Forwarder) -> Dns {
        Dns {
            zone: ArcSwap::from_pointee(empty),
            synced: AtomicBool::new(false),
            forwarder,
            rotate: AtomicUsize::new(0),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        }
    }

    /// Replaces the zone snapshot; the server is synced from now on.
    pub fn publish(&self, zone: Zone) {
        self.zone.store(Arc::new(zone));
        self.synced.store(true, Ordering::Release);
    }

    /// Whether a snapshot from the API has been published (readiness).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn zone(&self) -> Arc<Zone> {
        self.zone.load_full()
    }

    /// Handles one packet that came over `tcp` or UDP.
    pub fn handle(&self, packet: &[u8], tcp: bool) -> Handled {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return Handled::Drop;
        }
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return Handled::Reply(header_error(packet, ResponseCode::FormErr)),
        };
        let max_len = if tcp {
            u16::MAX as usize
        } else {
            request
                .edns
                .as_ref()
                .map(|e| (e.max_payload() as usize).clamp(512, MAX_UDP_ANSWER))
                .unwrap_or(512)
        };
        let reply = |rcode: ResponseCode| {
            Handled::Reply(encode(&request, rcode, false, &[], &[], &[], max_len))
        };
        if request.metadata.op_code != OpCode::Query {
            return reply(ResponseCode::NotImp);
        }
        if request.queries.len() != 1 {
            return reply(ResponseCode::FormErr);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return reply(ResponseCode::BADVERS);
        }
        let q = &request.queries[0];
        if q.query_class() != DNSClass::IN
            || matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return reply(ResponseCode::Refused);
        }
        let zone = self.zone.load();
        if !self.synced() && zone.place(q.name()) != Place::Outside {
            return reply(ResponseCode::ServFail);
        }
        let rot = self.rotate.fetch_add(1, Ordering::Relaxed);
        match lookup(&zone, q.name(), q.query_type(), rot) {
            Lookup::Found {
                answers,
                additionals,
                chase: None,
            } => Handled::Reply(encode(
                &request,
                ResponseCode::NoError,
                true,
                &answers,
                &[],
                &additionals,
                max_len,
            )),
            Lookup::Found {
                answers,
                chase: Some(target),
                ..
            } => Handled::Forward(Box::new(Pending {
                request,
                max_len,
                chase: Some((answers, target)),
            })),
            Lookup::NoData(soa) => Handled::Reply(encode(
                &request,
                ResponseCode::NoError,
                true,
                &[],
                &[soa],
                &[],
                max_len,
            )),
            Lookup::NxDomain(soa) => Handled::Reply(encode(
                &request,
                ResponseCode::NXDomain,
                true,
                &[],
                &[soa],
                &[],
                max_len,
            )),
            Lookup::Outside => Handled::Forward(Box::new(Pending {
                request,
                max_len,
                chase: None,
            })),
        }
    }

    /// Finishes a question that needs upstream.
    pub async fn complete(&self, p: Box<Pending>) -> Vec<u8> {
        let Ok(_permit) = self.forwards.clone().try_acquire_owned() else {
            return encode(
                &p.request,
                ResponseCode::Refused,
                false,
                &[],
                &[],
                &[],
                p.max_len,
            );
        };
        let q = &p.request.queries[0];
        let dnssec_ok = p.request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let cd = p.request.metadata.checking_disabled;
        match p.chase {
            Some((mut answers, target)) => {
                let mut tq = Query::query(target, q.query_type());
                tq.set_query_class(DNSClass::IN);
                let up = self.forwarder.resolve(&tq, dnssec_ok, cd).await;
                answers.extend(up.answers);
                encode(
                    &p.request,
                    up.rcode,
                    true,
                    &answers,
                    &up.authorities,
                    &[],
                    p.max_len,
                )
            }
            None => {
                let up = self.forwarder.resolve(q, dnssec_ok, cd).await;
                encode(
                    &p.request,
                    up.rcode,
                    false,
                    &up.answers,
                    &up.authorities,
                    &up.additionals,
                    p.max_len,
                )
            }
        }
    }

    /// Answers one packet, going upstream if needed (for TCP and tests).
    pub async fn answer(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        match self.handle(packet, tcp) {
            Handled::Reply(b) => Some(b),
            Handled::Drop => None,
            Handled::Forward(p) => Some(self.complete(p).await),
        }
    }
}

/// The response to `request`: its id, opcode, RD and CD, the question, RA
/// set (we recurse through upstream), an OPT record if the request had
/// one, and the sections given. Past `max_len` the answer is cut to the
/// header and question with TC set, so the client retries over TCP.
pub fn encode(
    request: &Message,
    rcode: ResponseCode,
    authoritative: bool,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
    max_len: usize,
) -> Vec<u8> {
    let mut m = Message::response(request.metadata.id, request.metadata.op_code);
    m.metadata = Metadata::response_from_request(&request.metadata);
    m.metadata.authoritative = authoritative;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.queries = request.queries.clone();
    if let Some(req_edns) = &request.edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e.set_dnssec_ok(req_edns.flags().dnssec_ok);
        m.set_edns(e);
    }
    m.answers = answers.to_vec();
    m.authorities = authorities.to_vec();
    m.additionals = additionals.to_vec();
    match m.to_vec() {
        Ok(b) if b.len() <= max_len => b,
        Ok(_) => {
            m.answers.clear();
            m.authorities.clear();
            m.additionals.clear();
            m.metadata.truncation = true;
            m.to_vec()
                .unwrap_or_else(|_| header_error(&[], ResponseCode::ServFail))
        }
        // A record we cannot encode (a name from upstream too long once
        // compressed differently): the client gets SERVFAIL, not silence.
        Err(_) => {
            m.answers.clear();
            m.authorities.clear();
            m.additionals.clear();
            m.metadata.response_code = ResponseCode::ServFail;
            m.to_vec()
                .unwrap_or_else(|_| header_error(&[], ResponseCode::ServFail))
        }
    }
}

/// An answer with no question for a packet we could not decode: the id,
/// opcode and RD bit taken from its header bytes.
fn header_error(packet: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let id = match packet {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    let flags = packet.get(2).copied().unwrap_or(0);
    let mut m = Message::error_msg(id, OpCode::from_u8((flags >> 3) & 0x0f), rcode);
    m.metadata.recursion_desired = flags & 1 != 0;
    m.metadata.recursion_available = true;
    m.to_vec().unwrap_or_default()
}

/// Serves DNS over UDP on `sock` until `stop`: `workers` loops read the
/// one socket, answer what the zone knows in place, and hand questions
/// that need upstream to tasks of their own.
pub async fn serve_udp(
    dns: Arc<Dns>,
    sock: Arc<UdpSocket>,
    workers: usize,
    stop: CancellationToken,
) {
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let dns = dns.clone();
        let sock = sock.clone();
        let stop = stop.clone();
        loops.spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (n, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = sock.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // ICMP errors of earlier sends surface here on
                            // Linux; they are no reason to stop serving.
                            tracing::debug!(error = %e, "udp receive");
                            continue;
                        }
                    },
                };
                match dns.handle(&buf[..n], false) {
                    Handled::Reply(b) => send(&sock, &b, peer).await,
                    Handled::Drop => {}
                    Handled::Forward(p) => {
                        let dns = dns.clone();
                        let sock = sock.clone();
                        tokio::spawn(async move {
                            let b = dns.complete(p).await;
                            send(&sock, &b, peer).await;
                        });
                    }
                }
            }
        });
    }
    while loops.join_next().await.is_some() {}
}

async fn send(sock: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, peer).await {
        tracing::debug!(error = %e, %peer, "udp send");
    }
}

/// Serves DNS over TCP (two-byte length prefix, several questions per
/// connection) on `listener` until `stop`.
pub async fn serve_tcp(dns: Arc<Dns>, listener: TcpListener, stop: CancellationToken) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "tcp accept");
                    continue;
                }
            },
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let dns = dns.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tcp_connection(&dns, stream) => {}
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(dns: &Dns, mut s: TcpStream) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return;
        };
        let mut buf = vec![0u8; len as usize];
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf)).await else {
            return;
        };
        let Some(answer) = dns.answer(&buf, true).await else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        out.extend_from_slice(&answer);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}
