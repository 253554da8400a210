//! Snapshots in an S3-compatible bucket (`etcd-s3*`): objects
//! `<folder>/<name>` with their checksum sidecars `<folder>/<name>.sha256`.
//!
//! Requests are signed with SigV4 (`aws-sigv4`) and sent with `reqwest`
//! over a rustls configuration of our own (ring provider), so the
//! endpoint's certificate is verified as RKE2 (k3s `pkg/etcd/s3`) does:
//! against the CA bundle of `etcd-s3-endpoint-ca` alone when it is set,
//! else against the system's roots; `etcd-s3-skip-ssl-verify` turns the
//! verification off (and wins over a CA, as in k3s). Path-style URLs
//! (`<endpoint>/<bucket>/<key>`), which every S3-compatible server serves.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rke2_config::S3Config;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{
    CHECKSUM_EXTENSION, SnapshotError, SnapshotInfo, checksum_line, created_from_name,
    parse_checksum,
};

/// What SigV4 leaves unescaped in a path segment or query value: the
/// unreserved characters of RFC 3986.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The roots `etcd-s3-endpoint-ca` names: every certificate of the PEM
/// file at `path`. A file that cannot be read, holds no certificate or a
/// certificate rustls cannot use is refused with a message naming the key
/// and the file (checked at config load by the server, and again when a
/// store is opened).
pub fn endpoint_ca_roots(path: &Path) -> Result<RootCertStore, String> {
    let what = |detail: String| format!("etcd-s3-endpoint-ca: {}: {detail}", path.display());
    let pem = std::fs::read(path).map_err(|e| what(format!("cannot read it: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| what(format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(what(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| what(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// The rustls client configuration for `cfg`'s endpoint.
fn tls_config(cfg: &S3Config) -> Result<rustls::ClientConfig, SnapshotError> {
    let provider = rke2_trust::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SnapshotError::S3(format!("S3 TLS configuration: {e}")))?;
    let config = if cfg.skip_ssl_verify {
        builder
            .dangerous()
            // `etcd-s3-skip-ssl-verify`; handshake signatures are still checked.
            .with_custom_certificate_verifier(rke2_trust::AcceptAnyServerCert::new(provider))
            .with_no_client_auth()
    } else {
        let roots = match &cfg.endpoint_ca {
            Some(path) => endpoint_ca_roots(path).map_err(SnapshotError::S3)?,
            None => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(SnapshotError::S3(format!(
                        "S3 endpoint https://{}: this machine has no system root certificates to verify it with; set etcd-s3-endpoint-ca to the CA that signed its certificate",
                        cfg.endpoint
                    )));
                }
                roots
            }
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// Why a request failed, before it is put in words with the bucket.
enum Failure {
    /// The server answered with an error status; `code` is the S3 error
    /// code of the body (`AccessDenied`, `NoSuchBucket`, ...), if any.
    Status { status: u16, code: String },
    /// No answer: connection, TLS or timeout.
    Transport { chain: String, certificate: bool },
}

/// The body of a request and how it is signed.
enum Payload {
    /// Nothing (GET, DELETE).
    Empty,
    /// Small bytes, hashed for the signature.
    Bytes(Vec<u8>),
    /// A file streamed with its length and known SHA-256.
    File {
        file: tokio::fs::File,
        len: u64,
        sha256: String,
    },
}

/// ListObjectsV2's answer, as far as we read it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<ListedObject>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedObject {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    last_modified: String,
}

/// An open bucket with the settings it came from.
pub struct S3Store {
    http: reqwest::Client,
    identity: Option<Identity>,
    cfg: S3Config,
}

impl S3Store {
    /// Prepares the client and checks that the bucket answers to these
    /// credentials (a listing of the folder), so a wrong key, an unknown
    /// bucket or an untrusted certificate fails before anything is written
    /// anywhere.
    pub async fn open(cfg: &S3Config) -> Result<Self, SnapshotError> {
        // A broken CA file is refused even over plain HTTP (as k3s loads
        // it whatever the scheme): the setting is wrong either way.
        if let (Some(ca), false) = (&cfg.endpoint_ca, cfg.skip_ssl_verify) {
            endpoint_ca_roots(ca).map_err(SnapshotError::S3)?;
        }
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(30)))
            // The endpoint is the one configured: no proxy from the
            // environment sees the credentials' signatures or the data.
            .no_proxy();
        if !cfg.insecure {
            builder = builder
                .use_preconfigured_tls(tls_config(cfg)?)
                .https_only(true);
        }
        let http = builder
            .build()
            .map_err(|e| SnapshotError::S3(format!("S3 client for {}: {e}", cfg.endpoint)))?;
        let identity = match (&cfg.access_key, &cfg.secret_key) {
            (Some(a), Some(s)) => {
                Some(aws_credential_types::Credentials::new(a, s, None, None, "etcd-s3").into())
            }
            _ => None,
        };
        let store = Self {
            http,
            identity,
            cfg: cfg.clone(),
        };
        store
            .list_page(&store.prefix(), None, Some(1))
            .await
            .map_err(|e| store.err("listing", &e))?;
        Ok(store)
    }

    /// The object key of a snapshot name.
    fn key(&self, name: &str) -> String {
        if self.cfg.folder.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.cfg.folder)
        }
    }

    /// The key prefix of the folder (`<folder>/`, or nothing).
    fn prefix(&self) -> String {
        if self.cfg.folder.is_empty() {
            String::new()
        } else {
            format!("{}/", self.cfg.folder)
        }
    }

    fn location(&self, name: &str) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.key(name))
    }

    fn scheme(&self) -> &'static str {
        if self.cfg.insecure { "http" } else { "https" }
    }

    fn err(&self, what: &str, e: &Failure) -> SnapshotError {
        SnapshotError::S3(self.describe(what, e))
    }

    /// An S3 failure with the bucket and endpoint it concerns, and what to
    /// do about the usual ones (a 403, an untrusted certificate).
    fn describe(&self, what: &str, e: &Failure) -> String {
        let cfg = &self.cfg;
        let at = format!(
            "S3 {what} bucket {:?} at {}://{}",
            cfg.bucket,
            self.scheme(),
            cfg.endpoint
        );
        match e {
            Failure::Status { status, code } => {
                let hint = match (*status, code.as_str()) {
                    (403, _) => ": access denied (check etcd-s3-access-key and etcd-s3-secret-key)",
                    (404, "NoSuchBucket") | (404, "") => ": no such bucket",
                    _ => "",
                };
                format!("{at}: HTTP {status} {code}{hint}")
            }
            Failure::Transport {
                chain,
                certificate: true,
            } => match &cfg.endpoint_ca {
                Some(ca) => format!(
                    "{at}: the server's TLS certificate is not signed by the CA of etcd-s3-endpoint-ca ({}): {chain}",
                    ca.display()
                ),
                None => format!(
                    "{at}: the server's TLS certificate is not trusted by this machine's roots: {chain}; set etcd-s3-endpoint-ca to the CA that signed it (or, at your own risk, etcd-s3-skip-ssl-verify)"
                ),
            },
            Failure::Transport { chain, .. } => format!("{at}: {chain}"),
        }
    }

    /// Sends one signed request: `key` `None` addresses the bucket itself.
    async fn send(
        &self,
        method: reqwest::Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        payload: Payload,
    ) -> Result<reqwest::Response, Failure> {
        let mut url = format!(
            "{}://{}/{}",
            self.scheme(),
            self.cfg.endpoint,
            utf8_percent_encode(&self.cfg.bucket, UNRESERVED)
        );
        if let Some(key) = key {
            for segment in key.split('/') {
                url.push('/');
                url.extend(utf8_percent_encode(segment, UNRESERVED));
            }
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.extend(utf8_percent_encode(k, UNRESERVED));
            url.push('=');
            url.extend(utf8_percent_encode(v, UNRESERVED));
        }
        let (body, signable, len) = match payload {
            Payload::Empty => (reqwest::Body::from(Vec::new()), None, None),
            Payload::Bytes(b) => {
                let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b));
                let len = b.len() as u64;
                (reqwest::Body::from(b), Some(hash), Some(len))
            }
            Payload::File { file, len, sha256 } => {
                (reqwest::Body::from(file), Some(sha256), Some(len))
            }
        };
        let mut request = http::Request::builder()
            .method(method.as_str())
            .uri(&url)
            .header(http::header::HOST, &self.cfg.endpoint)
            .body(())
            .map_err(|e| Failure::Transport {
                chain: format!("request {url}: {e}"),
                certificate: false,
            })?;
        if let Some(identity) = &self.identity {
            sign_request(&mut request, identity, &self.cfg.region, signable).map_err(|e| {
                Failure::Transport {
                    chain: format!("signing the request: {e}"),
                    certificate: false,
                }
            })?;
        }
        let mut builder = self
            .http
            .request(method, &url)
            .headers(request.headers().clone());
        if let Some(len) = len {
            builder = builder.header(http::header::CONTENT_LENGTH, len);
        }
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|e| transport_failure(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let code = text
            .split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or("")
            .to_string();
        Err(Failure::Status {
            status: status.as_u16(),
            code,
        })
    }

    /// One page of ListObjectsV2 under `prefix`, delimited by `/`.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<ListBucketResult, Failure> {
        let max = max_keys.map(|m| m.to_string());
        let mut query = vec![("list-type", "2"), ("prefix", prefix), ("delimiter", "/")];
        if let Some(t) = token {
            query.push(("continuation-token", t));
        }
        if let Some(m) = &max {
            query.push(("max-keys", m));
        }
        let text = self
            .send(reqwest::Method::GET, None, &query, Payload::Empty)
            .await?
            .text()
            .await
            .map_err(|e| transport_failure(&e))?;
        quick_xml::de::from_str(&text).map_err(|e| Failure::Transport {
            chain: format!("unreadable ListObjectsV2 answer: {e}"),
            certificate: false,
        })
    }

    /// The bytes of a small object (a sidecar).
    async fn get_small(&self, key: &str) -> Result<Vec<u8>, Failure> {
        let r = self
            .send(reqwest::Method::GET, Some(key), &[], Payload::Empty)
            .await?;
        r.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| transport_failure(&e))
    }

    /// Uploads a local snapshot and its checksum sidecar (the sidecar
    /// first: an object is never listed without its checksum).
    pub async fn upload(
        &self,
        path: &Path,
        info: &SnapshotInfo,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let sha = match &info.sha256 {
            Some(s) => s.clone(),
            None => super::sha256_file(path)?,
        };
        self.send(
            reqwest::Method::PUT,
            Some(&self.key(&format!("{}{CHECKSUM_EXTENSION}", info.name))),
            &[],
            Payload::Bytes(checksum_line(&sha, &info.name).into_bytes()),
        )
        .await
        .map_err(|e| self.err("uploading the checksum of a snapshot to", &e))?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(SnapshotError::io("reading", path))?;
        let len = file
            .metadata()
            .await
            .map_err(SnapshotError::io("reading", path))?
            .len();
        // The signature covers the snapshot's SHA-256, so the server
        // refuses bytes that changed on the way.
        self.send(
            reqwest::Method::PUT,
            Some(&self.key(&info.name)),
            &[],
            Payload::File {
                file,
                len,
                sha256: sha.clone(),
            },
        )
        .await
        .map_err(|e| self.err("uploading a snapshot to", &e))?;
        Ok(SnapshotInfo {
            location: self.location(&info.name),
            s3: true,
            sha256: Some(sha),
            ..info.clone()
        })
    }

    /// The snapshots in the folder (sidecars read for their checksums),
    /// oldest first. Objects in deeper folders are not ours.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let prefix = self.prefix();
        let mut objects: Vec<(String, u64, String)> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_page(&prefix, token.as_deref(), None)
                .await
                .map_err(|e| self.err("listing", &e))?;
            objects.extend(page.contents.into_iter().filter_map(|o| {
                let name = o.key.strip_prefix(&prefix)?.to_string();
                (!name.is_empty() && !name.contains('/')).then_some((name, o.size, o.last_modified))
            }));
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => break,
            }
        }
        let mut out = Vec::new();
        for (name, size, modified) in &objects {
            if name.ends_with(CHECKSUM_EXTENSION) || name.starts_with('.') {
                continue;
            }
            let side = format!("{name}{CHECKSUM_EXTENSION}");
            let sha256 = if objects.iter().any(|(n, _, _)| *n == side) {
                self.get_small(&self.key(&side))
                    .await
                    .ok()
                    .and_then(|b| parse_checksum(&String::from_utf8_lossy(&b)))
            } else {
                None
            };
            let created = created_from_name(name).unwrap_or_else(|| {
                chrono::DateTime::parse_from_rfc3339(modified)
                    .map(|t| t.timestamp())
                    .unwrap_or(0)
            });
            out.push(SnapshotInfo {
                location: self.location(name),
                name: name.clone(),
                size: *size,
                created,
                node: "s3".into(),
                sha256,
                s3: true,
            });
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// Deletes a snapshot object and its sidecar; `Ok(false)` when absent.
    pub async fn delete(&self, name: &str) -> Result<bool, SnapshotError> {
        let present = self.list().await?.iter().any(|s| s.name == name);
        if !present {
            return Ok(false);
        }
        self.send(
            reqwest::Method::DELETE,
            Some(&self.key(name)),
            &[],
            Payload::Empty,
        )
        .await
        .map_err(|e| self.err("deleting a snapshot from", &e))?;
        let _ = self
            .send(
                reqwest::Method::DELETE,
                Some(&self.key(&format!("{name}{CHECKSUM_EXTENSION}"))),
                &[],
                Payload::Empty,
            )
            .await;
        Ok(true)
    }

    /// Keeps the newest `retention` snapshots named with `prefix` (one
    /// node's snapshots of one base name) and deletes the rest.
    pub async fn prune(
        &self,
        prefix: &str,
        retention: usize,
    ) -> Result<Vec<String>, SnapshotError> {
        let mine: Vec<SnapshotInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|s| s.name.starts_with(prefix) && created_from_name(&s.name).is_some())
            .collect();
        let excess = mine.len().saturating_sub(retention);
        let mut deleted = Vec::new();
        for s in mine.into_iter().take(excess) {
            if self.delete(&s.name).await? {
                deleted.push(s.name);
            }
        }
        Ok(deleted)
    }

    /// Downloads a snapshot to `out` (0600) and returns the checksum its
    /// sidecar records, if any.
    pub async fn download(&self, name: &str, out: &Path) -> Result<Option<String>, SnapshotError> {
        use std::os::unix::fs::OpenOptionsExt;
        let sha = self
            .get_small(&self.key(&format!("{name}{CHECKSUM_EXTENSION}")))
            .await
            .ok()
            .and_then(|b| parse_checksum(&String::from_utf8_lossy(&b)));
        let mut response = self
            .send(
                reqwest::Method::GET,
                Some(&self.key(name)),
                &[],
                Payload::Empty,
            )
            .await
            .map_err(|e| self.err("downloading a snapshot from", &e))?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(out)
            .map_err(SnapshotError::io("creating", out))?;
        let mut f = tokio::fs::File::from_std(f);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.err("downloading a snapshot from", &transport_failure(&e)))?
        {
            f.write_all(&chunk)
                .await
                .map_err(SnapshotError::io("writing", out))?;
        }
        f.flush().await.map_err(SnapshotError::io("writing", out))?;
        Ok(sha)
    }
}

/// Signs `request` (its method, URL and `host` header) for S3 with SigV4;
/// `payload_sha256` `None` sends the empty body's hash.
fn sign_request(
    request: &mut http::Request<()>,
    identity: &Identity,
    region: &str,
    payload_sha256: Option<String>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut settings = SigningSettings::default();
    // S3's flavour of SigV4: keys are escaped once and never normalized,
    // and the payload hash travels in x-amz-content-sha256.
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()?
        .into();
    let body = match &payload_sha256 {
        Some(h) => SignableBody::Precomputed(h.clone()),
        None => SignableBody::Bytes(&[]),
    };
    let uri = request.uri().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        body,
    )?;
    let (instructions, _signature) = sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// A transport error in words (its whole chain, repeats dropped), and
/// whether a certificate the verifier refused is the cause.
fn transport_failure(e: &reqwest::Error) -> Failure {
    let mut parts: Vec<String> = Vec::new();
    let mut certificate = false;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        // tokio-rustls reports the handshake's rustls::Error inside an
        // io::Error, whose `source()` skips it.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(_)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                certificate = true;
            }
        }
        let text = err.to_string();
        // Connectors may box the handshake error in types of their own that
        // hide it from downcasts; rustls' words for it are stable.
        if text.contains("invalid peer certificate") {
            certificate = true;
        }
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    Failure::Transport {
        chain: parts.join(": "),
        certificate,
    }
}
