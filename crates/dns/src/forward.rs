//! Forwarding of names outside the cluster zone to the upstream resolvers
//! of a resolv.conf (RKE2's Corefile: `forward . /etc/resolv.conf`), over
//! UDP with a retry over TCP when the answer is truncated, and a small
//! cache of the answers (`cache 30`: nothing kept longer than 30 s).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The longest any forwarded answer is cached (`cache 30`).
pub const MAX_CACHE_TTL: u32 = 30;
/// How many answers the cache holds at most (CoreDNS's default capacity).
pub const CACHE_CAPACITY: usize = 9984;
/// How long one upstream gets to answer before the next is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The EDNS payload size we offer (the DNS flag day's 1232 bytes).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Errors of reading a resolv.conf.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file names no usable nameserver.
    #[error("{path} has no nameserver line with an IP address")]
    NoNameserver {
        /// The file.
        path: String,
    },
}

/// The nameservers of a resolv.conf text, in order, on port 53 (an IPv6
/// zone suffix such as `%eth0` is dropped; unparsable entries skipped).
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver").then_some(())?;
            let ip = f.next()?.split('%').next()?.parse::<IpAddr>().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Reads the upstream resolvers from a resolv.conf file.
pub fn read_upstreams(path: &Path) -> Result<Vec<SocketAddr>, ResolvConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResolvConfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let ns = nameservers(&text);
    if ns.is_empty() {
        return Err(ResolvConfError::NoNameserver {
            path: path.display().to_string(),
        });
    }
    Ok(ns)
}

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
struct Key {
    name: String,
    qtype: RecordType,
    qclass: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

struct Entry {
    stored: Instant,
    ttl: u32,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

/// What upstream said, ready to be put into our response.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The response code.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
    /// Additional section, without OPT.
    pub additionals: Vec<Record>,
}

/// The forwarder: upstream resolvers and the answer cache.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Entry>>,
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order.
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The upstream resolvers.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Resolves `query` upstream (or from the cache). `dnssec_ok` and
    /// `checking_disabled` are the client's bits, passed on and part of
    /// the cache key. SERVFAIL when no upstream answers.
    pub async fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Upstream {
        let key = Key {
            name: query.name().to_lowercase().to_string(),
            qtype: query.query_type(),
            qclass: query.query_class(),
            dnssec_ok,
            checking_disabled,
        };
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        for up in &self.upstreams {
            match exchange(*up, query, dnssec_ok, checking_disabled).await {
                Ok(resp) => {
                    let mut out = Upstream {
                        rcode: resp.metadata.response_code,
                        answers: resp.answers,
                        authorities: resp.authorities,
                        additionals: resp.additionals,
                    };
                    // The first answer carries the TTLs the cached copies
                    // will, so a client never sees them jump up.
                    if let Some(ttl) = cache_ttl(&out) {
                        for r in out
                            .answers
                            .iter_mut()
                            .chain(&mut out.authorities)
                            .chain(&mut out.additionals)
                        {
                            r.ttl = r.ttl.min(ttl);
                        }
                        self.store(key, ttl, &out);
                    }
                    return out;
                }
                Err(e) => tracing::debug!(upstream = %up, error = %e, "upstream failed"),
            }
        }
        Upstream {
            rcode: ResponseCode::ServFail,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    fn cached(&self, key: &Key) -> Option<Upstream> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.get(key)?;
        let age = e.stored.elapsed().as_secs().min(u32::MAX as u64) as u32;
        if age >= e.ttl {
            return None;
        }
        let age_out = |rs: &[Record]| {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        Some(Upstream {
            rcode: e.rcode,
            answers: age_out(&e.answers),
            authorities: age_out(&e.authorities),
            additionals: age_out(&e.additionals),
        })
    }

    fn store(&self, key: Key, ttl: u32, up: &Upstream) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < e.ttl as u64);
            if cache.len() >= CACHE_CAPACITY
                && let Some(k) = cache.keys().next().cloned()
            {
                cache.remove(&k);
            }
        }
        cache.insert(
            key,
            Entry {
                stored: Instant::now(),
                ttl,
                rcode: up.rcode,
                answers: up.answers.clone(),
                authorities: up.authorities.clone(),
                additionals: up.additionals.clone(),
            },
        );
    }
}

/// How long an answer may be cached: the smallest TTL of its records (for
/// a negative answer, the SOA's TTL and minimum), at most 30 s; `None`
/// for answers that are not cached (errors other than NXDOMAIN, TTL 0).
fn cache_ttl(up: &Upstream) -> Option<u32> {
    if !matches!(up.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        return None;
    }
    let ttl = if up.answers.is_empty() {
        up.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                _ => None,
            })
            .unwrap_or(0)
    } else {
        up.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    let ttl = ttl.min(MAX_CACHE_TTL);
    (ttl > 0).then_some(ttl)
}

/// Errors of one exchange with an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Socket trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer we could not decode or that does not answer our question.
    #[error("bad answer: {0}")]
    Bad(String),
}

/// One question to one upstream: UDP from a fresh socket (a random source
/// port) with a random id, then TCP if the answer came back truncated.
pub async fn exchange(
    upstream: SocketAddr,
    query: &Query,
    dnssec_ok: bool,
    checking_disabled: bool,
) -> Result<Message, ExchangeError> {
    // A random id (and below, a fresh socket's random port) so that an
    // off-path forger has to guess both.
    let mut msg = Message::query();
    let id = msg.metadata.id;
    msg.metadata.recursion_desired = true;
    msg.metadata.checking_disabled = checking_disabled;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    msg.set_edns(edns);
    let bytes = msg
        .to_vec()
        .map_err(|e| ExchangeError::Bad(format!("encoding the query: {e}")))?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(&bytes).await?;
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout(UPSTREAM_TIMEOUT))??;
        // Anything that is not the answer to our question (a late answer
        // to someone else, a spoofing attempt) is ignored.
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if !answers(&resp, id, query) {
            continue;
        }
        if resp.metadata.truncation {
            return exchange_tcp(upstream, &bytes, id, query, deadline).await;
        }
        return Ok(resp);
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    bytes: &[u8],
    id: u16,
    query: &Query,
    deadline: tokio::time::Instant,
) -> Result<Message, ExchangeError> {
    let work = async {
        let mut s = TcpStream::connect(upstream).await?;
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
        s.write_all(&out).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        let resp = Message::from_vec(&buf).map_err(|e| ExchangeError::Bad(e.to_string()))?;
        if !answers(&resp, id, query) {
            return Err(ExchangeError::Bad(
                "answer to another question over TCP".into(),
            ));
        }
        Ok(resp)
    };
    tokio::time::timeout_at(deadline + UPSTREAM_TIMEOUT, work)
        .await
        .map_err(|_| ExchangeError::Timeout(UPSTREAM_TIMEOUT))?
}

fn answers(resp: &Message, id: u16, query: &Query) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == 1
        && resp.queries[0].query_type() == query.query_type()
        && resp.queries[0].query_class() == query.query_class()
        && *resp.queries[0].name() == *query.name()
}
