//! The routing table: an immutable snapshot built from the Ingresses of
//! this controller's class, their Services, EndpointSlices and TLS
//! Secrets. The proxy reads the current one per request (and the TLS
//! acceptor per handshake); a change builds a new one and swaps it in,
//! so connections in flight keep what they had.
//!
//! Matching follows ingress-nginx: the host exactly, else a wildcard
//! `*.x` (one label), else rules without a host; in a host, an `Exact`
//! path first, then (hosts with `use-regex` or `rewrite-target` on any
//! of their Ingresses) case-insensitive regexes anchored at the start,
//! longest first, else the longest `Prefix` by path elements
//! (`ImplementationSpecific` is a `Prefix`); then the Ingress's
//! `defaultBackend`, else 404.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use regex::Regex;
use rustls::sign::CertifiedKey;

use crate::annotations::{self, Annotations};

/// The legacy class annotation, still honoured.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Ingresses are this controller's.
#[derive(Debug, Clone)]
pub struct Class {
    /// `--ingress-class`: the IngressClass name (and legacy annotation
    /// value) served.
    pub name: String,
    /// `--controller-class`: IngressClasses with this `spec.controller`
    /// are served.
    pub controller: String,
}

/// One Service port's endpoints, picked round robin.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/service:port`, for logs and Events.
    pub name: String,
    /// Ready endpoint addresses with the target port.
    pub endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backend {
    /// A backend over `endpoints`.
    pub fn new(name: impl Into<String>, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order to try them for one request: round
    /// robin for the first, the others after it (retries on connect
    /// failure).
    pub fn order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

/// How a path matches.
#[derive(Debug)]
pub enum Matcher {
    /// The path exactly.
    Exact(String),
    /// The path elements (`/a` matches `/a` and `/a/b`, not `/ab`).
    Prefix(String),
    /// A case-insensitive regex anchored at the start.
    Regex(Regex),
}

/// One path of a host.
#[derive(Debug)]
pub struct Route {
    /// How the request path is matched.
    pub matcher: Matcher,
    /// The path as written (its length orders regexes and prefixes).
    pub path: String,
    /// Where it goes.
    pub backend: Arc<Backend>,
    /// The owning Ingress's annotations.
    pub opts: Arc<Annotations>,
    /// `namespace/name` of the owning Ingress.
    pub ingress: String,
}

/// The paths of one host, and what it does when none matches.
#[derive(Debug, Default)]
pub struct Host {
    /// Exact paths first, then regexes and prefixes, longest first.
    pub routes: Vec<Route>,
    /// The `defaultBackend` of an Ingress naming this host.
    pub default: Option<(Arc<Backend>, Arc<Annotations>)>,
    /// Whether a TLS section names the host (ssl-redirect applies).
    pub tls: bool,
}

/// What a request was matched to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The backend.
    pub backend: Arc<Backend>,
    /// The settings of the Ingress that routed it.
    pub opts: Arc<Annotations>,
    /// The path to send (after `rewrite-target`).
    pub path: String,
    /// Whether the host has TLS (for ssl-redirect).
    pub tls: bool,
}

/// Something wrong with one Ingress, reported as a Warning Event on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    /// The Ingress's namespace.
    pub namespace: String,
    /// The Ingress's name.
    pub name: String,
    /// Event reason.
    pub reason: String,
    /// What is wrong, naming the object or field.
    pub message: String,
}

/// The routing table.
#[derive(Default)]
pub struct Table {
    exact: HashMap<String, Host>,
    /// `*.x` hosts by `x`.
    wildcard: HashMap<String, Host>,
    /// Rules without a host.
    any: Host,
    /// The `defaultBackend` of the oldest Ingress that has one.
    default: Option<(Arc<Backend>, Arc<Annotations>)>,
    certs: HashMap<String, Arc<CertifiedKey>>,
    wildcard_certs: HashMap<String, Arc<CertifiedKey>>,
    /// The Ingresses of this class, `namespace/name` (status writer).
    pub ingresses: Vec<(String, String)>,
    /// What was wrong, per Ingress.
    pub problems: Vec<Problem>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("hosts", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcards", &self.wildcard.keys().collect::<Vec<_>>())
            .field("problems", &self.problems)
            .finish()
    }
}

/// The objects a table is built from.
#[derive(Default)]
pub struct Inputs<'a> {
    /// Every Ingress seen.
    pub ingresses: &'a [Arc<Ingress>],
    /// Every IngressClass.
    pub classes: &'a [Arc<IngressClass>],
    /// Every Service.
    pub services: &'a [Arc<Service>],
    /// Every EndpointSlice.
    pub slices: &'a [Arc<EndpointSlice>],
    /// Every Secret.
    pub secrets: &'a [Arc<Secret>],
    /// Keys parsed by earlier builds (the controller's), so a rebuild
    /// after an endpoint change does not parse every certificate again.
    pub keys: Option<&'a KeyCache>,
}

/// Signing keys of TLS Secrets by namespace, name and resourceVersion.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: std::sync::Mutex<HashMap<(String, String, String), Arc<CertifiedKey>>>,
    used: std::sync::Mutex<std::collections::HashSet<(String, String, String)>>,
}

impl KeyCache {
    fn key_of(&self, s: &Secret) -> Result<Arc<CertifiedKey>, crate::tls::TlsError> {
        let (ns, name) = ns_name(&s.metadata);
        let id = (
            ns,
            name,
            s.metadata.resource_version.clone().unwrap_or_default(),
        );
        if let Ok(mut u) = self.used.lock() {
            u.insert(id.clone());
        }
        if let Some(k) = self.keys.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(k);
        }
        let k = Arc::new(crate::tls::certified_key_of_secret(s)?);
        if let Ok(mut m) = self.keys.lock() {
            m.insert(id, k.clone());
        }
        Ok(k)
    }

    /// Drops the keys the last builds since the previous call did not use.
    pub fn retain_used(&self) {
        let used = self
            .used
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default();
        if let Ok(mut m) = self.keys.lock() {
            m.retain(|k, _| used.contains(k));
        }
    }
}

fn ns_name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Whether `ing` belongs to `class`: its `ingressClassName` names an
/// IngressClass of our controller (or is our class name), or its legacy
/// annotation is our class name.
pub fn is_ours(ing: &Ingress, class: &Class, classes: &[Arc<IngressClass>]) -> bool {
    if let Some(name) = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        return name == class.name
            || classes.iter().any(|c| {
                c.metadata.name.as_deref() == Some(name)
                    && c.spec.as_ref().and_then(|s| s.controller.as_deref())
                        == Some(class.controller.as_str())
            });
    }
    ing.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
        .is_some_and(|v| *v == class.name)
}

struct Resolver<'a> {
    services: HashMap<(String, String), &'a Service>,
    slices: HashMap<(String, String), Vec<&'a EndpointSlice>>,
    backends: HashMap<String, Arc<Backend>>,
}

impl<'a> Resolver<'a> {
    fn new(inputs: &Inputs<'a>) -> Self {
        let mut services = HashMap::new();
        for s in inputs.services {
            services.insert(ns_name(&s.metadata), &**s);
        }
        let mut slices: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in inputs.slices {
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                slices.entry((ns, svc.clone())).or_default().push(&**s);
            }
        }
        Self {
            services,
            slices,
            backends: HashMap::new(),
        }
    }

    /// The backend of an Ingress backend reference; `Err` says what is
    /// missing (the backend then has no endpoints: 503).
    fn backend(&mut self, ns: &str, b: &IngressBackend) -> (Arc<Backend>, Option<String>) {
        let Some(svc_ref) = &b.service else {
            let what = b
                .resource
                .as_ref()
                .map(|r| format!("{}/{}", r.kind, r.name))
                .unwrap_or_default();
            return (
                Arc::new(Backend::new(format!("{ns}/{what}"), Vec::new())),
                Some(format!("resource backend {what} is not supported")),
            );
        };
        let port_ref = svc_ref.port.as_ref();
        let port_key = port_ref
            .and_then(|p| p.name.clone())
            .or_else(|| port_ref.and_then(|p| p.number).map(|n| n.to_string()))
            .unwrap_or_default();
        let name = format!("{ns}/{}:{port_key}", svc_ref.name);
        if let Some(b) = self.backends.get(&name) {
            return (b.clone(), None);
        }
        let (endpoints, problem) = self.endpoints(ns, &svc_ref.name, port_ref);
        let b = Arc::new(Backend::new(name.clone(), endpoints));
        self.backends.insert(name, b.clone());
        (b, problem)
    }

    fn endpoints(
        &self,
        ns: &str,
        svc_name: &str,
        port_ref: Option<&k8s_openapi::api::networking::v1::ServiceBackendPort>,
    ) -> (Vec<SocketAddr>, Option<String>) {
        let Some(svc) = self.services.get(&(ns.to_string(), svc_name.to_string())) else {
            return (
                Vec::new(),
                Some(format!("service {ns}/{svc_name} not found")),
            );
        };
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let want_name = port_ref.and_then(|p| p.name.as_deref());
        let want_number = port_ref.and_then(|p| p.number);
        let Some(sp) = ports.iter().find(|p| match (want_name, want_number) {
            (Some(n), _) => p.name.as_deref() == Some(n),
            (None, Some(n)) => p.port == n,
            _ => false,
        }) else {
            let shown = want_name
                .map(str::to_string)
                .or(want_number.map(|n| n.to_string()))
                .unwrap_or_default();
            return (
                Vec::new(),
                Some(format!("service {ns}/{svc_name} has no port {shown}")),
            );
        };
        let port_name = sp.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self
            .slices
            .get(&(ns.to_string(), svc_name.to_string()))
            .into_iter()
            .flatten()
        {
            let Some(port) = slice.ports.iter().flatten().find(|p| {
                p.name.clone().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            }) else {
                continue;
            };
            let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        out.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        (out, None)
    }
}

/// A route before regexes are compiled (a host's mode is known only once
/// every Ingress naming it is seen).
struct RawRoute {
    path: String,
    path_type: String,
    backend: Arc<Backend>,
    opts: Arc<Annotations>,
    ingress: (String, String),
}

#[derive(Default)]
struct RawHost {
    routes: Vec<RawRoute>,
    default: Option<(Arc<Backend>, Arc<Annotations>)>,
    tls: bool,
    regex: bool,
}

impl Table {
    /// Builds the table of `class` from `inputs`; what is wrong with an
    /// Ingress is in `problems`, and only its bad part is left out.
    pub fn build(class: &Class, inputs: &Inputs<'_>) -> Table {
        let mut ours: Vec<&Ingress> = inputs
            .ingresses
            .iter()
            .map(|i| &**i)
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .filter(|i| is_ours(i, class, inputs.classes))
            .collect();
        // The oldest Ingress wins a conflict, as ingress-nginx.
        ours.sort_by(|a, b| {
            let ts = |i: &Ingress| i.metadata.creation_timestamp.as_ref().map(|t| t.0);
            ts(a)
                .cmp(&ts(b))
                .then_with(|| ns_name(&a.metadata).cmp(&ns_name(&b.metadata)))
        });
        let secrets: HashMap<(String, String), &Secret> = inputs
            .secrets
            .iter()
            .map(|s| (ns_name(&s.metadata), &**s))
            .collect();
        let mut resolver = Resolver::new(inputs);
        let mut table = Table::default();
        let mut hosts: BTreeMap<String, RawHost> = BTreeMap::new();
        for ing in ours {
            let (ns, name) = ns_name(&ing.metadata);
            table.ingresses.push((ns.clone(), name.clone()));
            let mut problem = |reason: &str, message: String| {
                table.problems.push(Problem {
                    namespace: ns.clone(),
                    name: name.clone(),
                    reason: reason.to_string(),
                    message,
                })
            };
            let (opts, bad) = annotations::parse(ing.metadata.annotations.as_ref());
            for m in bad {
                problem("InvalidAnnotation", m);
            }
            let opts = Arc::new(opts);
            let Some(spec) = &ing.spec else { continue };
            let mut ing_default = None;
            if let Some(b) = &spec.default_backend {
                let (backend, p) = resolver.backend(&ns, b);
                if let Some(p) = p {
                    problem("BackendNotFound", format!("defaultBackend: {p}"));
                }
                ing_default = Some((backend.clone(), opts.clone()));
                if table.default.is_none() {
                    table.default = Some((backend, opts.clone()));
                }
            }
            for tls in spec.tls.iter().flatten() {
                let tls_hosts: Vec<String> = match &tls.hosts {
                    Some(h) if !h.is_empty() => h.clone(),
                    _ => spec
                        .rules
                        .iter()
                        .flatten()
                        .filter_map(|r| r.host.clone())
                        .collect(),
                };
                for h in &tls_hosts {
                    hosts.entry(h.clone()).or_default().tls = true;
                }
                let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                    continue;
                };
                let key = match secrets.get(&(ns.clone(), secret_name.to_string())) {
                    None => {
                        problem(
                            "SecretNotFound",
                            format!(
                                "TLS secret {ns}/{secret_name} not found; the default certificate is served for {}",
                                tls_hosts.join(", ")
                            ),
                        );
                        continue;
                    }
                    Some(s) => match inputs.keys.map_or_else(
                        || crate::tls::certified_key_of_secret(s).map(Arc::new),
                        |cache| cache.key_of(s),
                    ) {
                        Ok(k) => k,
                        Err(e) => {
                            problem(
                                "InvalidSecret",
                                format!(
                                    "TLS secret {ns}/{secret_name}: {e}; the default certificate is served for {}",
                                    tls_hosts.join(", ")
                                ),
                            );
                            continue;
                        }
                    },
                };
                for h in tls_hosts {
                    match h.strip_prefix("*.") {
                        Some(rest) => {
                            table
                                .wildcard_certs
                                .entry(rest.to_string())
                                .or_insert(key.clone());
                        }
                        None => {
                            table.certs.entry(h).or_insert(key.clone());
                        }
                    }
                }
            }
            for rule in spec.rules.iter().flatten() {
                let host_name = rule.host.clone().unwrap_or_default();
                let host = hosts.entry(host_name).or_default();
                if opts.regex_paths() {
                    host.regex = true;
                }
                if host.default.is_none() {
                    host.default = ing_default.clone();
                }
                for p in rule.http.iter().flat_map(|h| &h.paths) {
                    let (backend, bad) = resolver.backend(&ns, &p.backend);
                    if let Some(bad) = bad {
                        problem(
                            "BackendNotFound",
                            format!("path {:?}: {bad}", p.path.as_deref().unwrap_or("/")),
                        );
                    }
                    host.routes.push(RawRoute {
                        path: p
                            .path
                            .clone()
                            .filter(|p| !p.is_empty())
                            .unwrap_or("/".into()),
                        path_type: p.path_type.clone(),
                        backend,
                        opts: opts.clone(),
                        ingress: (ns.clone(), name.clone()),
                    });
                }
            }
        }
        for (name, raw) in hosts {
            let mut host = Host {
                routes: Vec::new(),
                default: raw.default,
                tls: raw.tls,
            };
            for r in raw.routes {
                let matcher = if r.path_type == "Exact" {
                    Matcher::Exact(r.path.clone())
                } else if raw.regex {
                    match Regex::new(&format!("(?i)^{}", r.path)) {
                        Ok(re) => Matcher::Regex(re),
                        Err(e) => {
                            table.problems.push(Problem {
                                namespace: r.ingress.0.clone(),
                                name: r.ingress.1.clone(),
                                reason: "InvalidPath".into(),
                                message: format!(
                                    "path {:?} of host {:?} is not a valid regex ({}); the path is skipped",
                                    r.path,
                                    if name.is_empty() { "*" } else { &name },
                                    e.to_string().lines().last().unwrap_or("")
                                ),
                            });
                            continue;
                        }
                    }
                } else {
                    Matcher::Prefix(r.path.clone())
                };
                // The first (oldest) Ingress keeps a path two of them name.
                let dup = host.routes.iter().any(|o| {
                    o.path == r.path
                        && matches!(o.matcher, Matcher::Exact(_))
                            == matches!(matcher, Matcher::Exact(_))
                });
                if dup {
                    continue;
                }
                host.routes.push(Route {
                    matcher,
                    path: r.path,
                    backend: r.backend,
                    opts: r.opts,
                    ingress: format!("{}/{}", r.ingress.0, r.ingress.1),
                });
            }
            // Exact first, then longest paths first.
            host.routes.sort_by_key(|r| {
                (
                    !matches!(r.matcher, Matcher::Exact(_)),
                    std::cmp::Reverse(r.path.len()),
                )
            });
            if name.is_empty() {
                table.any = host;
            } else if let Some(rest) = name.strip_prefix("*.") {
                table.wildcard.insert(rest.to_string(), host);
            } else {
                table.exact.insert(name, host);
            }
        }
        table.problems.sort();
        table.problems.dedup();
        table
    }

    fn host(&self, host: &str) -> Option<&Host> {
        if let Some(h) = self.exact.get(host) {
            return Some(h);
        }
        if let Some((_, rest)) = host.split_once('.')
            && let Some(h) = self.wildcard.get(rest)
        {
            return Some(h);
        }
        None
    }

    /// Where a request for `host` (no port, lower case) and `path` goes;
    /// `None` is a 404.
    pub fn route(&self, host: &str, path: &str) -> Option<Target> {
        // A known host is served by its own rules only (an unmatched path
        // goes to the default backend); other hosts by the host-less rules,
        // as ingress-nginx's default server.
        let h = self.host(host);
        let candidate = h.unwrap_or(&self.any);
        if let Some(t) = candidate.matching(path) {
            return Some(t);
        }
        candidate
            .default
            .as_ref()
            .filter(|_| h.is_some())
            .or(self.default.as_ref())
            .map(|(b, o)| Target {
                backend: b.clone(),
                opts: o.clone(),
                path: path.to_string(),
                tls: candidate.tls,
            })
    }

    /// The certificate for an SNI name (exact, then wildcard).
    pub fn cert(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        if let Some(c) = self.certs.get(&sni) {
            return Some(c.clone());
        }
        let (_, rest) = sni.split_once('.')?;
        self.wildcard_certs.get(rest).cloned()
    }

    /// Every backend, by name (tests, logs).
    pub fn backend_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
            .flat_map(|h| h.routes.iter().map(|r| r.backend.name.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

impl Host {
    fn matching(&self, path: &str) -> Option<Target> {
        for r in &self.routes {
            let rewritten = match &r.matcher {
                Matcher::Exact(p) => (p == path).then(|| rewrite_plain(r, path)),
                Matcher::Prefix(p) => prefix_matches(p, path).then(|| rewrite_plain(r, path)),
                Matcher::Regex(re) => re.captures(path).map(|caps| match &r.opts.rewrite_target {
                    Some(target) => {
                        let mut out = String::new();
                        caps.expand(&braced(target), &mut out);
                        out
                    }
                    None => path.to_string(),
                }),
            };
            if let Some(p) = rewritten {
                return Some(Target {
                    backend: r.backend.clone(),
                    opts: r.opts.clone(),
                    path: if p.is_empty() { "/".into() } else { p },
                    tls: self.tls,
                });
            }
        }
        None
    }
}

/// A rewrite-target on a non-regex route replaces the whole path.
fn rewrite_plain(r: &Route, path: &str) -> String {
    r.opts
        .rewrite_target
        .clone()
        .unwrap_or_else(|| path.to_string())
}

/// `$1` → `${1}`, so a digit group followed by letters stays a group
/// number (nginx's reading).
fn braced(target: &str) -> String {
    let mut out = String::with_capacity(target.len() + 4);
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push_str("${");
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                out.push(d);
                chars.next();
            }
            out.push('}');
        } else {
            out.push(c);
        }
    }
    out
}

/// The `Prefix` rule: `prefix`'s path elements are the first of `path`'s
/// (a trailing `/` on either side is ignored).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_by_path_elements() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/a", "/a"));
        assert!(prefix_matches("/a", "/a/"));
        assert!(prefix_matches("/a/", "/a"));
        assert!(prefix_matches("/a/b", "/a/b/c"));
        assert!(!prefix_matches("/a", "/ab"));
        assert!(!prefix_matches("/a/b", "/a/bc"));
        assert!(!prefix_matches("/a/b", "/a"));
    }

    #[test]
    fn rewrite_targets_name_groups_as_nginx() {
        assert_eq!(braced("/$2"), "/${2}");
        assert_eq!(braced("/x/$1abc$$"), "/x/${1}abc$$");
        assert_eq!(braced("/plain"), "/plain");
    }
}
