//! The `nginx.ingress.kubernetes.io/` annotations this controller honours,
//! parsed once per Ingress when the routing table is built, with
//! ingress-nginx's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;

/// The prefix of every annotation read here.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// ingress-nginx's default `proxy-body-size` (`1m`).
pub const DEFAULT_BODY_SIZE: u64 = 1024 * 1024;

/// ingress-nginx's default `proxy-read-timeout` (60 s).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How the proxy talks to the backend (`backend-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProtocol {
    /// Plain HTTP/1.1 (the default).
    Http,
    /// HTTP/1.1 over TLS; the backend's certificate is not verified, as
    /// ingress-nginx's default `proxy-ssl-verify: off`.
    Https,
    /// HTTP/2 without TLS (`GRPC`, `H2C`).
    H2c,
}

/// The settings of one Ingress's paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotations {
    /// `rewrite-target`: the path sent to the backend, `$n` naming the
    /// path regex's capture groups.
    pub rewrite_target: Option<String>,
    /// `use-regex`: paths are case-insensitive regexes anchored at the
    /// start (for every path of the host, as ingress-nginx enforces).
    pub use_regex: bool,
    /// `ssl-redirect` (default true): plain HTTP to a host with TLS is
    /// redirected to HTTPS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect to HTTPS even without TLS.
    pub force_ssl_redirect: bool,
    /// `backend-protocol`.
    pub backend_protocol: BackendProtocol,
    /// `proxy-body-size`: the largest request body (`None`: no limit,
    /// the annotation's `0`).
    pub proxy_body_size: Option<u64>,
    /// `proxy-read-timeout`: how long the backend may take to answer.
    pub proxy_read_timeout: Duration,
    /// `whitelist-source-range` (or `allowlist-source-range`): the client
    /// networks allowed; empty allows all.
    pub allow_source: Vec<IpNet>,
}

impl Default for Annotations {
    fn default() -> Self {
        Self {
            rewrite_target: None,
            use_regex: false,
            ssl_redirect: true,
            force_ssl_redirect: false,
            backend_protocol: BackendProtocol::Http,
            proxy_body_size: Some(DEFAULT_BODY_SIZE),
            proxy_read_timeout: DEFAULT_READ_TIMEOUT,
            allow_source: Vec::new(),
        }
    }
}

impl Annotations {
    /// Whether the Ingress's paths are regexes (`use-regex`, or a
    /// `rewrite-target`, which ingress-nginx turns into a regex location).
    pub fn regex_paths(&self) -> bool {
        self.use_regex || self.rewrite_target.is_some()
    }
}

/// Parses an Ingress's annotations; an unreadable value keeps the default
/// and is reported (the message names the annotation and the value).
pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> (Annotations, Vec<String>) {
    let mut out = Annotations::default();
    let mut problems = Vec::new();
    let Some(map) = annotations else {
        return (out, problems);
    };
    let get = |k: &str| map.get(&format!("{PREFIX}{k}")).map(|s| s.trim());
    let mut bad = |k: &str, v: &str, why: &str| {
        problems.push(format!("annotation {PREFIX}{k}: {v:?} {why}"));
    };
    if let Some(v) = get("rewrite-target").filter(|v| !v.is_empty()) {
        out.rewrite_target = Some(v.to_string());
    }
    for key in ["use-regex", "ssl-redirect", "force-ssl-redirect"] {
        if let Some(v) = get(key) {
            let Ok(b) = v.parse::<bool>() else {
                bad(key, v, "is not true or false");
                continue;
            };
            match key {
                "use-regex" => out.use_regex = b,
                "ssl-redirect" => out.ssl_redirect = b,
                _ => out.force_ssl_redirect = b,
            }
        }
    }
    if let Some(v) = get("backend-protocol") {
        match v.to_ascii_uppercase().as_str() {
            "HTTP" => out.backend_protocol = BackendProtocol::Http,
            "HTTPS" => out.backend_protocol = BackendProtocol::Https,
            "GRPC" | "H2C" => out.backend_protocol = BackendProtocol::H2c,
            _ => bad(
                "backend-protocol",
                v,
                "is not one of HTTP, HTTPS, GRPC, H2C",
            ),
        }
    }
    if let Some(v) = get("proxy-body-size") {
        match parse_size(v) {
            Some(0) => out.proxy_body_size = None,
            Some(n) => out.proxy_body_size = Some(n),
            None => bad("proxy-body-size", v, "is not a size (such as 8m)"),
        }
    }
    if let Some(v) = get("proxy-read-timeout") {
        match v.parse::<u64>() {
            Ok(s) if s > 0 => out.proxy_read_timeout = Duration::from_secs(s),
            _ => bad(
                "proxy-read-timeout",
                v,
                "is not a positive number of seconds",
            ),
        }
    }
    for key in ["whitelist-source-range", "allowlist-source-range"] {
        if let Some(v) = get(key) {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let net = part
                    .parse::<IpNet>()
                    .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from));
                match net {
                    Ok(n) => out.allow_source.push(n),
                    Err(_) => bad(key, part, "is not a CIDR"),
                }
            }
        }
    }
    (out, problems)
}

/// An nginx size: bytes, or a number with `k`, `m` or `g`.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mul) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1024),
        'm' | 'M' => (&v[..v.len() - 1], 1024 * 1024),
        'g' | 'G' => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_ingress_nginx_defaults() {
        let (a, p) = parse(None);
        assert!(p.is_empty());
        assert!(a.ssl_redirect);
        assert_eq!(a.proxy_body_size, Some(1024 * 1024));
        assert_eq!(a.proxy_read_timeout, Duration::from_secs(60));
    }

    #[test]
    fn values_parse_and_bad_ones_are_named() {
        let (a, p) = parse(Some(&map(&[
            ("rewrite-target", "/$2"),
            ("use-regex", "true"),
            ("ssl-redirect", "false"),
            ("backend-protocol", "https"),
            ("proxy-body-size", "8k"),
            ("proxy-read-timeout", "5"),
            ("whitelist-source-range", "10.0.0.0/8, 192.168.1.1"),
        ])));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
        assert!(a.use_regex && !a.ssl_redirect);
        assert_eq!(a.backend_protocol, BackendProtocol::Https);
        assert_eq!(a.proxy_body_size, Some(8192));
        assert_eq!(a.proxy_read_timeout, Duration::from_secs(5));
        assert_eq!(a.allow_source.len(), 2);
        let (a, p) = parse(Some(&map(&[
            ("proxy-body-size", "lots"),
            ("use-regex", "yes"),
            ("whitelist-source-range", "nope"),
        ])));
        assert_eq!(a, Annotations::default());
        assert_eq!(p.len(), 3);
        assert!(
            p[0].contains("use-regex") && p[0].contains("\"yes\""),
            "{p:?}"
        );
        assert_eq!(
            parse(Some(&map(&[("proxy-body-size", "0")])))
                .0
                .proxy_body_size,
            None
        );
    }
}
