//! The supervisor's HTTPS routes (DESIGN.md section 5) as an axum Router.
//!
//! Only the router lives here: the binary serves it over TLS with the same
//! serving certificate as 6443, so joiners that check SANs against the
//! registration address see one consistent certificate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::future::BoxFuture;
use rke2_trust::{NODE_USER, SERVER_USER, constant_time_eq};
use tracing::{debug, warn};

use crate::bootstrap::{Passwd, pack};

/// Live facts about the cluster the routes need; implemented by the
/// binary (API readiness, apiserver endpoints, etcd membership) so this
/// crate stays free of etcd and Kubernetes clients.
pub trait ClusterInfo: Send + Sync {
    /// True once the local Kubernetes API can serve (`/v1-rke2/readyz`).
    fn api_ready(&self) -> BoxFuture<'_, bool>;
    /// `ip:port` of every live apiserver (`/v1-rke2/apiservers`).
    fn apiservers(&self) -> BoxFuture<'_, Vec<String>>;
    /// The `/db/info` body: `{"members":[{"name","peerURLs":[],
    /// "clientURLs":[],"isLearner":bool,"id":"<hex>"}]}`, or why it is not
    /// available (etcd down).
    fn etcd_members(&self) -> BoxFuture<'_, Result<serde_json::Value, String>>;
    /// Checks (or records, for a new node) the node password of `node`
    /// (secret `kube-system/<node>.node-password.rke2`). `Err` carries the
    /// message for a 403: another machine registered that name with a
    /// different password.
    fn check_node_password(
        &self,
        node: String,
        password: String,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Who holds which address: every Node's addresses (with the node's
    /// name) and every live apiserver's IP (`None`). A node's serving
    /// certificate may carry only addresses that are its own or nobody's.
    fn address_holders(&self) -> BoxFuture<'_, Result<AddressHolders, String>>;
    /// Rotates the cluster token (`PUT /v1-rke2/token`): re-encrypts the
    /// bootstrap data stored under the `current` passwords with
    /// `new_token`'s password and returns the passwords now in force.
    /// `Err((status, message))` refuses it (400 for a bad token).
    fn rotate_token(
        &self,
        current: Passwd,
        new_token: String,
    ) -> BoxFuture<'_, Result<Passwd, (StatusCode, String)>> {
        let _ = (current, new_token);
        Box::pin(async {
            Err((
                StatusCode::NOT_IMPLEMENTED,
                "token rotation is not available on this server\n".to_string(),
            ))
        })
    }
    /// Stores new CA material (`PUT /v1-rke2/cert/cacerts`, `rke2
    /// certificate rotate-ca`): `files` (paths relative to `server/tls`,
    /// their bytes) replace the CA files of the stored bootstrap data
    /// after the same checks the command made. `Err((status, message))`
    /// refuses it (400 for bad material, naming the file).
    fn rotate_ca(
        &self,
        current: Passwd,
        files: Vec<(String, Vec<u8>)>,
        force: bool,
    ) -> BoxFuture<'_, Result<(), (StatusCode, String)>> {
        let _ = (current, files, force);
        Box::pin(async {
            Err((
                StatusCode::NOT_IMPLEMENTED,
                "CA rotation is not available on this server\n".to_string(),
            ))
        })
    }
    /// Secrets encryption at rest (`GET /v1-rke2/encrypt/status`): the
    /// state `rke2 secrets-encrypt status` prints.
    fn encrypt_status(&self) -> BoxFuture<'_, Result<serde_json::Value, (StatusCode, String)>> {
        Box::pin(async {
            Err((
                StatusCode::NOT_IMPLEMENTED,
                "secrets encryption is not available on this server\n".to_string(),
            ))
        })
    }
    /// A secrets encryption command (`PUT /v1-rke2/encrypt/config`, body
    /// `{"stage": "prepare|rotate|reencrypt|rotate_keys|enable|disable",
    /// "force": bool, "skip": bool}`); answers the text to print.
    fn encrypt_command(
        &self,
        request: serde_json::Value,
    ) -> BoxFuture<'_, Result<String, (StatusCode, String)>> {
        let _ = request;
        Box::pin(async {
            Err((
                StatusCode::NOT_IMPLEMENTED,
                "secrets encryption is not available on this server\n".to_string(),
            ))
        })
    }
}

/// Who holds which address (see [`ClusterInfo::address_holders`]): a
/// node's name, or `None` for an apiserver.
pub type AddressHolders = Vec<(Option<String>, IpAddr)>;

/// Request header naming the node a kubelet certificate is for.
pub const NODE_NAME_HEADER: &str = "rke2-node-name";
/// Request header with the node's password.
pub const NODE_PASSWORD_HEADER: &str = "rke2-node-password";
/// Request header with the node's IPs (comma separated), for serving SANs.
pub const NODE_IP_HEADER: &str = "rke2-node-ip";

/// Everything the routes serve from.
pub struct SupervisorState {
    /// The server CA PEM exactly as stored in `server-ca.crt`: joiners hash
    /// these bytes against the token, so they must not be re-encoded.
    pub server_ca_pem: String,
    /// The basic-auth passwords of users `server` and `node`; replaced by
    /// a token rotation.
    pub passwd: std::sync::RwLock<Passwd>,
    /// Non-secret cluster configuration for `/v1-rke2/config`; must hold the
    /// critical keys of the config crate's flag table so joiners can
    /// compare them.
    pub cluster_config: serde_json::Value,
    /// `<data-dir>/server/tls`, packed on each `/v1-rke2/server-bootstrap`
    /// so the answer always reflects the files on disk.
    pub tls_dir: PathBuf,
    /// Live cluster facts.
    pub info: Arc<dyn ClusterInfo>,
}

impl SupervisorState {
    /// The passwords in force now.
    pub fn passwd(&self) -> Passwd {
        self.passwd
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Who a request authenticated as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// User `server`: may do everything.
    Server,
    /// User `node`: agent registration only.
    Node,
}

/// Which users a route admits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    ServerOrNode,
    ServerOnly,
}

/// The supervisor routes. Unknown paths answer 404.
pub fn router(state: Arc<SupervisorState>) -> Router {
    Router::new()
        .route("/cacerts", get(cacerts))
        .route("/ping", get(ping))
        .route("/v1-rke2/readyz", get(readyz))
        .route("/v1-rke2/config", get(config))
        .route("/v1-rke2/server-bootstrap", get(server_bootstrap))
        .route("/v1-rke2/token", axum::routing::put(rotate_token))
        .route("/v1-rke2/cert/cacerts", axum::routing::put(rotate_ca))
        .route("/v1-rke2/encrypt/status", get(encrypt_status))
        .route(
            "/v1-rke2/encrypt/config",
            axum::routing::put(encrypt_command),
        )
        .route("/v1-rke2/apiservers", get(apiservers))
        .route("/db/info", get(db_info))
        .route("/v1-rke2/client-kubelet.crt", get(client_kubelet))
        .route("/v1-rke2/serving-kubelet.crt", get(serving_kubelet))
        .route("/v1-rke2/client-kube-proxy.crt", get(client_kube_proxy))
        .fallback(not_found)
        .with_state(state)
}

/// Why a request was refused; turned into the response by `IntoResponse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denied {
    /// No or wrong credentials: 401.
    Unauthorized,
    /// User `node` on a server-only route: 403.
    Forbidden,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => unauthorized(),
            Denied::Forbidden => (
                StatusCode::FORBIDDEN,
                "the agent token (user node) may not fetch server bootstrap data; \
                 join servers with the server token\n",
            )
                .into_response(),
        }
    }
}

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "Unauthorized: a valid token (basic auth user server or node) is required\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rke2\""),
    );
    r
}

/// Authenticate with basic auth and check the route's requirement.
fn authorize(state: &SupervisorState, headers: &HeaderMap, need: Need) -> Result<Role, Denied> {
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest)
        })
        .and_then(|b| B64.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some(creds) = creds else {
        return Err(Denied::Unauthorized);
    };
    let Some((user, password)) = creds.split_once(':') else {
        return Err(Denied::Unauthorized);
    };
    // Compare against both passwords every time so the answer time does
    // not reveal which user name exists.
    let passwd = state.passwd();
    let server_ok = constant_time_eq(password.as_bytes(), passwd.server.as_bytes());
    let node_ok = constant_time_eq(password.as_bytes(), passwd.node.as_bytes());
    let role = match user {
        SERVER_USER if server_ok => Role::Server,
        NODE_USER if node_ok => Role::Node,
        _ => {
            debug!(user, "supervisor: basic auth refused");
            return Err(Denied::Unauthorized);
        }
    };
    if need == Need::ServerOnly && role != Role::Server {
        warn!("supervisor: the agent token was used on a server-only route");
        return Err(Denied::Forbidden);
    }
    Ok(role)
}

fn json(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn cacerts(State(s): State<Arc<SupervisorState>>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        s.server_ca_pem.clone(),
    )
        .into_response()
}

/// Body of `PUT /v1-rke2/token` (k3s's `/v1-k3s/token`).
#[derive(serde::Deserialize)]
struct TokenRotation {
    token: String,
}

async fn rotate_token(
    State(s): State<Arc<SupervisorState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOnly) {
        return r.into_response();
    }
    let Ok(req) = serde_json::from_slice::<TokenRotation>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "the body must be {\"token\": \"<new token>\"}\n",
        )
            .into_response();
    };
    match s.info.rotate_token(s.passwd(), req.token).await {
        Ok(passwd) => {
            *s.passwd.write().unwrap_or_else(|e| e.into_inner()) = passwd;
            tracing::info!("supervisor: the cluster token was rotated");
            (StatusCode::OK, "").into_response()
        }
        Err((status, message)) => {
            warn!(%status, message = message.trim(), "supervisor: token rotation refused");
            (status, message).into_response()
        }
    }
}

/// Body of `PUT /v1-rke2/cert/cacerts`.
#[derive(serde::Deserialize)]
struct CaRotation {
    #[serde(default)]
    force: bool,
    /// Path relative to `server/tls` -> base64 content.
    files: std::collections::BTreeMap<String, String>,
}

async fn rotate_ca(
    State(s): State<Arc<SupervisorState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOnly) {
        return r.into_response();
    }
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let Ok(req) = serde_json::from_slice::<CaRotation>(&body) else {
        return bad(
            "the body must be {\"force\": bool, \"files\": {\"<path>\": \"<base64>\"}}\n".into(),
        );
    };
    let mut files = Vec::with_capacity(req.files.len());
    for (name, content) in req.files {
        match B64.decode(content.as_bytes()) {
            Ok(b) => files.push((name, b)),
            Err(e) => return bad(format!("{name}: content is not base64: {e}\n")),
        }
    }
    match s.info.rotate_ca(s.passwd(), files, req.force).await {
        Ok(()) => {
            tracing::info!(
                "supervisor: new CA certificates stored; they apply at each server's next start"
            );
            (StatusCode::OK, "").into_response()
        }
        Err((status, message)) => {
            warn!(%status, message = message.trim(), "supervisor: CA rotation refused");
            (status, message).into_response()
        }
    }
}

async fn encrypt_status(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOnly) {
        return r.into_response();
    }
    match s.info.encrypt_status().await {
        Ok(v) => json(serde_json::to_vec(&v).expect("JSON value serializes")),
        Err((status, message)) => (status, message).into_response(),
    }
}

async fn encrypt_command(
    State(s): State<Arc<SupervisorState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOnly) {
        return r.into_response();
    }
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object {\"stage\": ...}\n",
        )
            .into_response();
    };
    match s.info.encrypt_command(req).await {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err((status, message)) => {
            warn!(%status, message = message.trim(), "supervisor: secrets-encrypt command refused");
            (status, message).into_response()
        }
    }
}

async fn ping() -> &'static str {
    "pong"
}

async fn readyz(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOrNode) {
        return r.into_response();
    }
    if s.info.api_ready().await {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "apiserver not ready yet\n").into_response()
    }
}

async fn config(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOrNode) {
        return r.into_response();
    }
    json(serde_json::to_vec(&s.cluster_config).expect("JSON value serializes"))
}

async fn server_bootstrap(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOnly) {
        return r.into_response();
    }
    // File reads: keep them off the async workers.
    let st = s.clone();
    match tokio::task::spawn_blocking(move || pack(&st.tls_dir, &st.passwd())).await {
        Ok(Ok(doc)) => json(doc),
        Ok(Err(e)) => {
            warn!(error = %e, "supervisor: cannot pack bootstrap data");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot pack bootstrap data: {e}\n"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot pack bootstrap data: {e}\n"),
        )
            .into_response(),
    }
}

async fn apiservers(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOrNode) {
        return r.into_response();
    }
    let list = s.info.apiservers().await;
    json(serde_json::to_vec(&list).expect("string list serializes"))
}

async fn db_info(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers, Need::ServerOnly) {
        return r.into_response();
    }
    match s.info.etcd_members().await {
        Ok(v) => json(serde_json::to_vec(&v).expect("JSON value serializes")),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("etcd member list unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// The node name, password and IPs of a kubelet certificate request,
/// after the node password check.
async fn node_request(
    s: &SupervisorState,
    headers: &HeaderMap,
) -> Result<(String, Vec<String>), Response> {
    authorize(s, headers, Need::ServerOrNode).map_err(IntoResponse::into_response)?;
    let get = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let name = get(NODE_NAME_HEADER);
    let password = get(NODE_PASSWORD_HEADER);
    if name.is_empty() || password.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("headers {NODE_NAME_HEADER} and {NODE_PASSWORD_HEADER} are required\n"),
        )
            .into_response());
    }
    if !rke2_apimachinery_free_name_ok(&name) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("invalid node name {name:?}: must be a lowercase RFC 1123 subdomain\n"),
        )
            .into_response());
    }
    if let Err(msg) = s.info.check_node_password(name.clone(), password).await {
        return Err((StatusCode::FORBIDDEN, format!("{msg}\n")).into_response());
    }
    let ips = get(NODE_IP_HEADER)
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect();
    Ok((name, ips))
}

/// Lowercase RFC 1123 subdomain check (node names become cert subjects).
fn rke2_apimachinery_free_name_ok(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn issue_pair(
    tls_dir: &std::path::Path,
    ca: &str,
    spec: &rke2_trust::LeafSpec,
) -> Result<Response, String> {
    let ca = rke2_trust::CertAuthority::load(
        &tls_dir.join(format!("{ca}.crt")),
        &tls_dir.join(format!("{ca}.key")),
    )
    .map_err(|e| e.to_string())?;
    let (cert, key) = ca.issue(spec).map_err(|e| e.to_string())?;
    Ok(json(
        serde_json::to_vec(&serde_json::json!({"cert": cert, "key": key, "ca": ca.cert_pem}))
            .expect("JSON"),
    ))
}

/// `CN=system:node:<name>, O=system:nodes`, signed by the client CA.
async fn client_kubelet(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    let (name, _) = match node_request(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let spec = rke2_trust::LeafSpec::client(&format!("system:node:{name}"), &["system:nodes"]);
    issue_pair(&s.tls_dir, "client-ca", &spec).unwrap_or_else(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("issuing the node client certificate: {e}\n"),
        )
            .into_response()
    })
}

/// `CN=system:kube-proxy`, signed by the client CA: the service proxy's
/// identity (the bootstrap policy binds it `system:node-proxier`). Any
/// node may have it, as in RKE2; it names no node.
async fn client_kube_proxy(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    if let Err(d) = authorize(&s, &headers, Need::ServerOrNode) {
        return d.into_response();
    }
    let spec = rke2_trust::LeafSpec::client("system:kube-proxy", &[]);
    issue_pair(&s.tls_dir, "client-ca", &spec).unwrap_or_else(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("issuing the kube-proxy client certificate: {e}\n"),
        )
            .into_response()
    })
}

/// The addresses a node's serving certificate may carry: each must be an
/// IP address (a name would become a DNS SAN another server answers to),
/// and one another node or an apiserver holds is refused, so a node
/// cannot present a certificate the apiserver or another node's clients
/// would take for that machine's.
fn check_serving_ips(
    node: &str,
    ips: &[String],
    holders: &[(Option<String>, IpAddr)],
) -> Result<(), (StatusCode, String)> {
    for raw in ips {
        let ip: IpAddr = raw.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("invalid node IP {raw:?} in {NODE_IP_HEADER}: not an IP address\n"),
            )
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("invalid node IP {ip} in {NODE_IP_HEADER}: not a unicast address\n"),
            ));
        }
        let own = holders
            .iter()
            .any(|(h, a)| *a == ip && h.as_deref() == Some(node));
        if own {
            continue;
        }
        if let Some((holder, _)) = holders.iter().find(|(_, a)| *a == ip) {
            let who = match holder {
                Some(other) => format!("node {other:?}"),
                None => "an apiserver".to_string(),
            };
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "node {node:?} may not have a serving certificate for {ip}: that address belongs to {who}\n"
                ),
            ));
        }
    }
    Ok(())
}

/// The node API's serving certificate (node name and IPs), signed by the server CA.
async fn serving_kubelet(State(s): State<Arc<SupervisorState>>, headers: HeaderMap) -> Response {
    let (name, ips) = match node_request(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let holders = match s.info.address_holders().await {
        Ok(h) => h,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("checking the node's addresses: {e}\n"),
            )
                .into_response();
        }
    };
    if let Err(refused) = check_serving_ips(&name, &ips, &holders) {
        return refused.into_response();
    }
    let mut sans = vec![
        name.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    sans.extend(ips);
    let spec = rke2_trust::LeafSpec::server(&name, sans);
    issue_pair(&s.tls_dir, "server-ca", &spec).unwrap_or_else(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("issuing the node serving certificate: {e}\n"),
        )
            .into_response()
    })
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Fake {
        ready: bool,
    }

    impl ClusterInfo for Fake {
        fn api_ready(&self) -> BoxFuture<'_, bool> {
            Box::pin(async move { self.ready })
        }
        fn apiservers(&self) -> BoxFuture<'_, Vec<String>> {
            Box::pin(async { vec!["10.0.0.1:6443".to_string()] })
        }
        fn etcd_members(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
            Box::pin(async { Err("etcd is down".to_string()) })
        }
        fn check_node_password(
            &self,
            node: String,
            password: String,
        ) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                if node == "taken" && password != "right" {
                    Err("node name taken".to_string())
                } else {
                    Ok(())
                }
            })
        }
        fn address_holders(&self) -> BoxFuture<'_, Result<AddressHolders, String>> {
            Box::pin(async {
                Ok(vec![
                    (None, "10.0.0.1".parse().unwrap()),
                    (Some("s1".to_string()), "10.0.0.1".parse().unwrap()),
                    (Some("w1".to_string()), "10.0.0.7".parse().unwrap()),
                ])
            })
        }
    }

    #[test]
    fn serving_certificates_carry_only_the_nodes_own_addresses() {
        let holders = vec![
            (None, "10.0.0.1".parse().unwrap()),
            (Some("s1".to_string()), "10.0.0.1".parse().unwrap()),
            (Some("w1".to_string()), "10.0.0.7".parse().unwrap()),
        ];
        let ips = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_serving_ips("w1", &ips(&["10.0.0.7", "10.0.0.9"]), &holders).is_ok());
        assert!(check_serving_ips("s1", &ips(&["10.0.0.1"]), &holders).is_ok());
        assert!(check_serving_ips("new", &ips(&[]), &holders).is_ok());
        let (code, msg) = check_serving_ips("w2", &ips(&["10.0.0.7"]), &holders).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(msg.contains("node \"w1\""), "{msg}");
        let (code, msg) = check_serving_ips("w2", &ips(&["10.0.0.1"]), &holders).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(msg.contains("apiserver"), "{msg}");
        for bad in [
            "kubernetes.default.svc",
            "0.0.0.0",
            "224.0.0.1",
            "10.0.0.1/8",
        ] {
            let (code, _) = check_serving_ips("w1", &ips(&[bad]), &holders).unwrap_err();
            assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    fn app(ready: bool, tls_dir: PathBuf) -> Router {
        router(Arc::new(SupervisorState {
            server_ca_pem: "CA PEM\n".into(),
            passwd: std::sync::RwLock::new(Passwd {
                server: "spw".into(),
                node: "npw".into(),
            }),
            cluster_config: serde_json::json!({"cluster-cidr": "10.42.0.0/16"}),
            tls_dir,
            info: Arc::new(Fake { ready }),
        }))
    }

    async fn call(app: &Router, path: &str, auth: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = axum::http::Request::get(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn basic(user: &str, pw: &str) -> String {
        format!("Basic {}", B64.encode(format!("{user}:{pw}")))
    }

    #[tokio::test]
    async fn auth_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(false, dir.path().join("missing"));
        let server = basic("server", "spw");
        let node = basic("node", "npw");

        assert_eq!(call(&app, "/cacerts", None).await.2, "CA PEM\n");
        assert_eq!(call(&app, "/ping", None).await.2, "pong");

        for path in [
            "/v1-rke2/readyz",
            "/v1-rke2/config",
            "/v1-rke2/apiservers",
            "/v1-rke2/server-bootstrap",
            "/v1-rke2/encrypt/status",
            "/db/info",
        ] {
            for bad in [
                None,
                Some(basic("server", "npw")),
                Some(basic("node", "spw")),
                Some(basic("admin", "spw")),
                Some("Bearer spw".to_string()),
                Some("Basic !!!".to_string()),
            ] {
                let (st, h, _) = call(&app, path, bad.as_deref()).await;
                assert_eq!(st, StatusCode::UNAUTHORIZED, "{path} {bad:?}");
                assert_eq!(h[header::WWW_AUTHENTICATE], "Basic realm=\"rke2\"");
            }
        }

        let (st, _, body) = call(&app, "/v1-rke2/readyz", Some(&node)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (st, h, body) = call(&app, "/v1-rke2/config", Some(&node)).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(body, r#"{"cluster-cidr":"10.42.0.0/16"}"#);
        let (st, _, body) = call(&app, "/v1-rke2/apiservers", Some(&node)).await;
        assert_eq!(
            (st, body.as_str()),
            (StatusCode::OK, r#"["10.0.0.1:6443"]"#)
        );

        // Secrets encryption is for the server token only.
        let (st, _, _) = call(&app, "/v1-rke2/encrypt/status", Some(&node)).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _, body) = call(&app, "/v1-rke2/encrypt/status", Some(&server)).await;
        assert_eq!(st, StatusCode::NOT_IMPLEMENTED, "{body}");

        for path in ["/v1-rke2/server-bootstrap", "/db/info"] {
            let (st, _, body) = call(&app, path, Some(&node)).await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{path}");
            assert!(
                body.contains("agent token") && body.contains("server bootstrap data"),
                "{body}"
            );
        }
        // Server user passes auth; the fakes' failures surface as 5xx.
        let (st, _, body) = call(&app, "/db/info", Some(&server)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("etcd is down"), "{body}");
        let (st, _, body) = call(&app, "/v1-rke2/server-bootstrap", Some(&server)).await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("server-ca.crt"), "{body}");

        let (st, _, _) = call(&app, "/nope", Some(&server)).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _, _) = call(&app, "/v1-rke2/nope", None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn rotate_ca_is_for_the_server_token_with_a_well_formed_body() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(true, dir.path().to_path_buf());
        let put = |auth: Option<String>, body: &str| {
            let mut req = axum::http::Request::put("/v1-rke2/cert/cacerts");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req.body(Body::from(body.to_string())).unwrap();
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let good = r#"{"force": false, "files": {"server-ca.crt": "QUJD"}}"#;
        assert_eq!(put(None, good).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            put(Some(basic("node", "npw")), good).await.0,
            StatusCode::FORBIDDEN
        );
        let (st, body) = put(Some(basic("server", "spw")), "{}").await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        let (st, body) = put(
            Some(basic("server", "spw")),
            r#"{"files": {"server-ca.crt": "!!"}}"#,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(body.contains("server-ca.crt"), "{body}");
        // The fake cluster has no rotation: the trait's default answers.
        let (st, _) = put(Some(basic("server", "spw")), good).await;
        assert_eq!(st, StatusCode::NOT_IMPLEMENTED);
    }

    #[tokio::test]
    async fn readyz_ok_when_ready() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(true, dir.path().to_path_buf());
        let (st, _, body) = call(&app, "/v1-rke2/readyz", Some(&basic("server", "spw"))).await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "ok"));
    }
}
