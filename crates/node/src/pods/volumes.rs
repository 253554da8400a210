//! Volumes and environment: what a container sees besides its image.
//!
//! Volumes live in `<agent>/pods/<uid>/volumes/<name>` and are bind
//! mounted by the runtime. ConfigMap, Secret, projected and downward API
//! volumes are written from the API and refreshed while the pod runs.
//! Errors are worded as kubelet's, because they end up in events and
//! container statuses (`CreateContainerConfigError`, `FailedMount`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, ObjectFieldSelector, Pod, Secret, ServiceAccount,
    ServiceAccountTokenProjection, Volume,
};
use kube::Api;

use super::spec::{Mount, PodPaths, safe_relative};

/// The kinds of API object a volume or variable reads, as the messages
/// name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
    /// A PersistentVolumeClaim.
    PersistentVolumeClaim,
    /// A PersistentVolume.
    PersistentVolume,
}

impl ObjectKind {
    /// The kind as its type is spelt (`ConfigMap`), for kubelet's
    /// `couldn't find key` message.
    fn title(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "ConfigMap",
            ObjectKind::Secret => "Secret",
            ObjectKind::PersistentVolumeClaim => "PersistentVolumeClaim",
            ObjectKind::PersistentVolume => "PersistentVolume",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    /// The lower-case resource name (`configmap`), as in kubelet's
    /// `configmap "x" not found`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.title().to_ascii_lowercase())
    }
}

/// Why a volume could not be set up, a variable not resolved or a mount
/// not made. The messages are kubelet's where it has one: they reach
/// events (`FailedMount`) and container statuses
/// (`CreateContainerConfigError`) as they are.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Reading an object through the API failed.
    #[error("reading {kind} {name:?}: {source}")]
    Read {
        /// What was read.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// A referenced object does not exist (and is not optional).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked for.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// A `configMapKeyRef`/`secretKeyRef` names a key the object lacks.
    #[error("couldn't find key {key} in {} {namespace}/{name}", kind.title())]
    MissingKey {
        /// The ConfigMap or Secret.
        kind: ObjectKind,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A volume's `items` name a key the object lacks.
    #[error("configured to use key {key} of {kind} {name:?}, which is missing")]
    MissingItem {
        /// The ConfigMap or Secret.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A claim without a bound volume.
    #[error("persistentvolumeclaim {0:?} is not bound")]
    ClaimNotBound(String),
    /// A claim's volume of a type this node cannot mount.
    #[error(
        "persistentvolume {0:?}: unsupported volume type (supported for claims: hostPath, local)"
    )]
    UnsupportedClaimVolume(String),
    /// A `fieldRef` this node does not serve.
    #[error("unsupported fieldRef fieldPath {0:?}")]
    FieldPath(String),
    /// A `resourceFieldRef` this node does not serve.
    #[error("unsupported resourceFieldRef resource {0:?}")]
    ResourceField(String),
    /// A file or directory operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`creating`, `writing`, ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A memory-backed emptyDir could not be mounted.
    #[error("mounting a tmpfs at {}: {source}", path.display())]
    Tmpfs {
        /// The volume's directory.
        path: PathBuf,
        /// The mount error.
        source: nix::Error,
    },
    /// A file path of a volume's items leaves the volume.
    #[error("invalid path {0:?}: must be relative, without '..'")]
    InvalidPath(String),
    /// A `subPath` (or expanded `subPathExpr`) leaves the volume.
    #[error("invalid subPath {0:?}: must be relative, without '..'")]
    InvalidSubPath(String),
    /// The TokenRequest for a projected token could not be built.
    #[error("building a TokenRequest: {0}")]
    BuildTokenRequest(#[source] serde_json::Error),
    /// The TokenRequest for a projected token failed.
    #[error("failed to fetch token: {0}")]
    Token(#[source] kube::Error),
    /// The TokenRequest came back without a token.
    #[error("failed to fetch token: the TokenRequest came back without a status")]
    TokenWithoutStatus,
    /// A hostPath `type` Kubernetes does not define.
    #[error("unknown hostPath type {0:?}")]
    HostPathType(String),
    /// The hostPath is not what its `type` asks for.
    #[error("hostPath type check failed: {path} is not a {type_}")]
    HostPathCheck {
        /// The path.
        path: String,
        /// The type asked for.
        type_: String,
    },
    /// A volume source this node does not implement.
    #[error(
        "unsupported volume type (supported: emptyDir, hostPath, persistentVolumeClaim, configMap, secret, downwardAPI, projected)"
    )]
    UnsupportedVolume,
    /// A volumeMount names no volume of the pod.
    #[error("unable to find volume {volume:?} for container {container:?}")]
    NoSuchVolume {
        /// The volume named.
        volume: String,
        /// The container mounting it.
        container: String,
    },
    /// Setting up one volume failed (kubelet's `FailedMount` wording).
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SetUp {
        /// The volume.
        volume: String,
        /// Why.
        source: Box<VolumeError>,
    },
}

/// An I/O error with what was being done and where.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// Reads ConfigMaps and Secrets for one pod, caching within one sync.
pub struct Sources<'a> {
    client: &'a kube::Client,
    namespace: String,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl<'a> Sources<'a> {
    /// Sources of `namespace` through `client`.
    pub fn new(client: &'a kube::Client, namespace: &str) -> Sources<'a> {
        Sources {
            client,
            namespace: namespace.to_string(),
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<ConfigMap>, VolumeError> {
        if let Some(c) = self.config_maps.get(name) {
            return Ok(c.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let got = api
            .get_opt(name)
            .await
            .map_err(|source| VolumeError::Read {
                kind: ObjectKind::ConfigMap,
                name: name.to_string(),
                source,
            })?;
        self.config_maps.insert(name.to_string(), got.clone());
        Ok(got)
    }

    async fn secret(&mut self, name: &str) -> Result<Option<Secret>, VolumeError> {
        if let Some(c) = self.secrets.get(name) {
            return Ok(c.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let got = api
            .get_opt(name)
            .await
            .map_err(|source| VolumeError::Read {
                kind: ObjectKind::Secret,
                name: name.to_string(),
                source,
            })?;
        self.secrets.insert(name.to_string(), got.clone());
        Ok(got)
    }
}

fn cm_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

/// A pod field by its path, as `fieldRef` names it.
pub fn field_value(pod: &Pod, f: &ObjectFieldSelector) -> Result<String, VolumeError> {
    let m = &pod.metadata;
    let path = f.field_path.as_str();
    let bracket = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(|k| {
                map.as_ref()
                    .and_then(|m| m.get(k))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    if let Some(v) = bracket("metadata.labels['", &m.labels) {
        return Ok(v);
    }
    if let Some(v) = bracket("metadata.annotations['", &m.annotations) {
        return Ok(v);
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => render_map(&m.labels),
        "metadata.annotations" => render_map(&m.annotations),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" => status.host_ip.unwrap_or_default(),
        "status.hostIPs" => status
            .host_ips
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
            .join(","),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        "status.podIPs" => status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
            .join(","),
        other => return Err(VolumeError::FieldPath(other.to_string())),
    })
}

fn render_map(m: &Option<BTreeMap<String, String>>) -> String {
    m.clone()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The environment of container `c`: `envFrom` first, then `env` in
/// order (later wins, `$(VAR)` refers to earlier ones), plus the
/// `KUBERNETES_SERVICE_*` variables every pod gets. Returns the map and
/// the order of names.
pub async fn resolve_env(
    sources: &mut Sources<'_>,
    pod: &Pod,
    c: &Container,
    kubernetes_service: Option<(&str, i32)>,
) -> Result<(BTreeMap<String, String>, Vec<String>), VolumeError> {
    let mut env = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |env: &mut BTreeMap<String, String>, k: String, v: String| {
        if !order.contains(&k) {
            order.push(k.clone());
        }
        env.insert(k, v);
    };
    if let Some((ip, port)) = kubernetes_service {
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", ip.to_string()),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
            ("KUBERNETES_PORT", format!("tcp://{ip}:{port}")),
            (
                &format!("KUBERNETES_PORT_{port}_TCP"),
                format!("tcp://{ip}:{port}"),
            ),
            (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
            (
                &format!("KUBERNETES_PORT_{port}_TCP_PORT"),
                port.to_string(),
            ),
            (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip.to_string()),
        ] {
            set(&mut env, k.to_string(), v);
        }
    }
    for from in c.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_map(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.clone().unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(not_found(ObjectKind::ConfigMap, &r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret(&r.name).await? {
                Some(s) => {
                    for (k, v) in secret_data(&s) {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(not_found(ObjectKind::Secret, &r.name)),
            }
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let value = if let Some(v) = e.value {
            super::spec::expand(&v, &env)
        } else if let Some(from) = e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(pod, f)?
            } else if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional == Some(true);
                match sources.config_map(&r.name).await? {
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(VolumeError::MissingKey {
                                kind: ObjectKind::ConfigMap,
                                namespace: sources.namespace.clone(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                    },
                    None if optional => continue,
                    None => return Err(not_found(ObjectKind::ConfigMap, &r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional == Some(true);
                match sources.secret(&r.name).await? {
                    Some(s) => match secret_data(&s).get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(VolumeError::MissingKey {
                                kind: ObjectKind::Secret,
                                namespace: sources.namespace.clone(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                    },
                    None if optional => continue,
                    None => return Err(not_found(ObjectKind::Secret, &r.name)),
                }
            } else if let Some(r) = &from.resource_field_ref {
                resource_field(c, &r.resource)?
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, e.name, value);
    }
    Ok((env, order))
}

fn not_found(kind: ObjectKind, name: &str) -> VolumeError {
    VolumeError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn resource_field(c: &Container, resource: &str) -> Result<String, VolumeError> {
    let r = c.resources.clone().unwrap_or_default();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (r.limits, k),
        Some(("requests", k)) => (r.requests, k),
        _ => return Err(VolumeError::ResourceField(resource.to_string())),
    };
    let q = map.and_then(|m| m.get(key).cloned()).map(|q| q.0);
    Ok(match (key, q) {
        ("cpu", Some(q)) => {
            let m = super::spec::millicores(&q).unwrap_or(0);
            ((m + 999) / 1000).max(1).to_string()
        }
        (_, Some(q)) => super::spec::bytes(&q).unwrap_or(0).to_string(),
        // Unset limits read as the node's capacity upstream; 0 here.
        (_, None) => "0".into(),
    })
}

/// Writes `files` (relative path -> content) into `dir` with `mode`,
/// removing files a previous write left that are no longer wanted.
/// Each file is replaced atomically, so a reader never sees half a file.
pub fn write_files(
    dir: &Path,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    for (rel, (content, mode)) in files {
        if !safe_relative(rel) {
            return Err(VolumeError::InvalidPath(rel.clone()));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        if std::fs::read(&p).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        let tmp = p.with_extension("rke2-tmp");
        std::fs::write(&tmp, content).map_err(io("writing", &tmp))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))
            .map_err(io("chmod", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io("writing", &p))?;
    }
    // Remove top-level entries no longer wanted.
    let wanted: std::collections::HashSet<String> = files
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    Ok(())
}

fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    mode: u32,
    src: Source<'_>,
    optional: bool,
    out: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), mode));
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(
                            it.path.clone(),
                            (v.clone(), it.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                    None if optional => {}
                    None => {
                        let (kind, name) = src.object();
                        return Err(VolumeError::MissingItem {
                            kind,
                            name: name.to_string(),
                            key: it.key.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// The service-account tokens a pod's projected volumes hold, requested
/// through TokenRequest bound to the pod and renewed as kubelet does: once
/// 80 % of a token's lifetime has passed, or it is a day old.
#[derive(Default)]
pub struct TokenCache {
    issued: HashMap<(String, String, i64), Issued>,
}

struct Issued {
    token: String,
    /// Unix seconds.
    renew_at: i64,
}

impl TokenCache {
    /// The token for projection `t` of `pod`, requested when there is none
    /// yet or the one held is due for renewal.
    pub async fn token(
        &mut self,
        client: &kube::Client,
        pod: &Pod,
        t: &ServiceAccountTokenProjection,
    ) -> Result<String, VolumeError> {
        let spec = pod.spec.as_ref();
        let account = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let audience = t.audience.clone().unwrap_or_default();
        let seconds = t.expiration_seconds.unwrap_or(3600);
        let key = (account.clone(), audience.clone(), seconds);
        let now = chrono::Utc::now().timestamp();
        if let Some(i) = self.issued.get(&key)
            && now < i.renew_at
        {
            return Ok(i.token.clone());
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": {
                "audiences": if audience.is_empty() { vec![] } else { vec![audience] },
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "kind": "Pod", "apiVersion": "v1",
                    "name": pod.metadata.name, "uid": pod.metadata.uid,
                },
            },
        }))
        .map_err(VolumeError::BuildTokenRequest)?;
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let got = api
            .create_token_request(&account, &Default::default(), &request)
            .await
            .map_err(VolumeError::Token)?;
        let status = got.status.ok_or(VolumeError::TokenWithoutStatus)?;
        // Renew after 80 % of the lifetime, or after 24 h, as kubelet does.
        let lifetime = (status.expiration_timestamp.0.as_second() - now).max(0);
        let renew_in = (lifetime * 4 / 5).min(24 * 3600);
        self.issued.insert(
            key,
            Issued {
                token: status.token.clone(),
                renew_at: now + renew_in,
            },
        );
        Ok(status.token)
    }
}

/// Where a volume's (or projected source's) files come from.
#[derive(Clone, Copy)]
enum Source<'n> {
    ConfigMap(&'n str),
    Secret(&'n str),
}

impl Source<'_> {
    /// The object's kind and name.
    fn object(&self) -> (ObjectKind, &str) {
        match *self {
            Source::ConfigMap(n) => (ObjectKind::ConfigMap, n),
            Source::Secret(n) => (ObjectKind::Secret, n),
        }
    }
}

/// Adds the keys of a ConfigMap or Secret (all, or the `items` chosen) to
/// `files`; a missing object is an error unless `optional`.
async fn add_source(
    sources: &mut Sources<'_>,
    src: Source<'_>,
    items: &Option<Vec<KeyToPath>>,
    mode: u32,
    optional: Option<bool>,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), VolumeError> {
    let optional = optional == Some(true);
    let data = match src {
        Source::ConfigMap(name) => sources.config_map(name).await?.map(|cm| cm_data(&cm)),
        Source::Secret(name) => sources.secret(name).await?.map(|s| secret_data(&s)),
    };
    match data {
        Some(data) => project(&data, items, mode, src, optional, files),
        None if optional => Ok(()),
        None => {
            let (kind, name) = src.object();
            Err(not_found(kind, name))
        }
    }
}

/// Adds downward API items (fieldRef values) to `files`.
fn add_downward(
    pod: &Pod,
    items: &Option<Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>,
    mode: u32,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), VolumeError> {
    for it in items.clone().unwrap_or_default() {
        if let Some(f) = &it.field_ref {
            let m = it.mode.map(|m| m as u32).unwrap_or(mode);
            files.insert(it.path.clone(), (field_value(pod, f)?.into_bytes(), m));
        }
    }
    Ok(())
}

/// Prepares every volume of `pod`; returns name -> directory on the node.
/// Service-account tokens come from `tokens`, which requests and renews them.
pub async fn prepare(
    sources: &mut Sources<'_>,
    pod: &Pod,
    paths: &PodPaths,
    tokens: &mut TokenCache,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let dir = paths.volume_dir(&uid, &v.name);
        let fail = |e: VolumeError| VolumeError::SetUp {
            volume: v.name.clone(),
            source: Box::new(e),
        };
        let host = prepare_one(sources, pod, &v, &dir, tokens)
            .await
            .map_err(fail)?;
        if let Some(gid) = fs_group_of(pod)
            && owned_by_fs_group(&v)
            && !(keeps_data(&v) && root_owned(&host, gid))
        {
            let read_only = v
                .persistent_volume_claim
                .as_ref()
                .and_then(|c| c.read_only)
                .unwrap_or(false);
            set_ownership(&host, gid, read_only).map_err(fail)?;
        }
        out.insert(v.name.clone(), host);
    }
    Ok(out)
}

async fn prepare_one(
    sources: &mut Sources<'_>,
    pod: &Pod,
    v: &Volume,
    dir: &Path,
    tokens: &mut TokenCache,
) -> Result<PathBuf, VolumeError> {
    let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(io("creating", d));
    if let Some(e) = &v.empty_dir {
        mkdir(dir)?;
        if e.medium.as_deref() == Some("Memory")
            && rke2_runtime::cleanup::mounts_under(dir)
                .first()
                .map(PathBuf::as_path)
                != Some(dir)
        {
            // Memory-backed: a tmpfs, sized by sizeLimit when given.
            let mut opts = "mode=0777".to_string();
            if let Some(limit) = e.size_limit.as_ref().and_then(|q| super::spec::bytes(&q.0)) {
                opts.push_str(&format!(",size={limit}"));
            }
            nix::mount::mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|source| VolumeError::Tmpfs {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(c) = &v.persistent_volume_claim {
        let path = claim_path(sources, &c.claim_name).await?;
        if !Path::new(&path).exists() {
            // Open to every user, as k3s's provisioner makes it
            // (`mkdir -m 0777`): the pod's user is not known in advance.
            use std::os::unix::fs::PermissionsExt;
            mkdir(Path::new(&path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(io("changing the mode of", Path::new(&path)))?;
        }
        return host_path(&path, Some("Directory"));
    }
    if let Some(h) = &v.host_path {
        return host_path(&h.path, h.type_.as_deref());
    }
    prepare_files(sources, pod, v, dir, tokens).await
}

/// The pod's `securityContext.fsGroup`.
fn fs_group_of(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()?
        .security_context
        .as_ref()?
        .fs_group
        .and_then(|g| u32::try_from(g).ok())
}

/// The volume types whose ownership kubelet hands to the fsGroup
/// (`SetVolumeOwnership`): emptyDir, claims and the files it writes;
/// never a hostPath, which belongs to the node.
fn owned_by_fs_group(v: &Volume) -> bool {
    v.empty_dir.is_some()
        || v.persistent_volume_claim.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// Volumes whose content outlives a refresh: walked once, then left
/// alone while their root has the group and setgid (kubelet's
/// `OnRootMismatch`), since containers' new files inherit the group.
fn keeps_data(v: &Volume) -> bool {
    v.empty_dir.is_some() || v.persistent_volume_claim.is_some()
}

fn root_owned(dir: &Path, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.gid() == gid && m.mode() & 0o2000 != 0)
}

/// kubelet's `SetVolumeOwnership`: every file and directory under `dir`
/// gets group `gid` and group read (and write unless `read_only`) access;
/// directories also group execute and setgid, so what the containers
/// create there stays in the group.
pub fn set_ownership(dir: &Path, gid: u32, read_only: bool) -> Result<(), VolumeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mask = if read_only { 0o440 } else { 0o660 };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.gid() != gid {
            std::os::unix::fs::chown(&p, None, Some(gid))
                .map_err(io("changing the group of", &p))?;
        }
        let mut mode = meta.mode() & 0o7777 | mask;
        if meta.is_dir() {
            mode |= 0o110 | 0o2000;
            for entry in std::fs::read_dir(&p).map_err(io("reading", &p))? {
                stack.push(entry.map_err(io("reading", &p))?.path());
            }
        }
        if mode != meta.mode() & 0o7777 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(io("changing the mode of", &p))?;
        }
    }
    Ok(())
}

/// Where the volume bound to claim `name` lives on this node: the
/// path of its `hostPath` or `local` source.
async fn claim_path(sources: &Sources<'_>, name: &str) -> Result<String, VolumeError> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(sources.client.clone(), &sources.namespace);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(|source| VolumeError::Read {
            kind: ObjectKind::PersistentVolumeClaim,
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| not_found(ObjectKind::PersistentVolumeClaim, name))?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty() && bound)
        .ok_or_else(|| VolumeError::ClaimNotBound(name.to_string()))?;
    let volumes: Api<PersistentVolume> = Api::all(sources.client.clone());
    let pv = volumes
        .get_opt(&volume)
        .await
        .map_err(|source| VolumeError::Read {
            kind: ObjectKind::PersistentVolume,
            name: volume.clone(),
            source,
        })?
        .ok_or_else(|| not_found(ObjectKind::PersistentVolume, &volume))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = spec.host_path {
        return Ok(h.path);
    }
    if let Some(l) = spec.local {
        return Ok(l.path);
    }
    Err(VolumeError::UnsupportedClaimVolume(volume))
}

/// A hostPath volume (or a claim's directory): the path, checked
/// against (or created as) its `type`.
fn host_path(path: &str, type_: Option<&str>) -> Result<PathBuf, VolumeError> {
    let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(io("creating", d));
    {
        let p = PathBuf::from(path);
        let t = type_.unwrap_or("");
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(&p).ok();
        let ok = match t {
            "" => true,
            "DirectoryOrCreate" => {
                if meta.is_none() {
                    mkdir(&p)?;
                }
                std::fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false)
            }
            "Directory" => meta.as_ref().is_some_and(|m| m.is_dir()),
            "FileOrCreate" => {
                if meta.is_none() {
                    if let Some(parent) = p.parent() {
                        mkdir(parent)?;
                    }
                    std::fs::write(&p, b"").map_err(io("creating", &p))?;
                }
                std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false)
            }
            "File" => meta.as_ref().is_some_and(|m| m.is_file()),
            "Socket" => meta.as_ref().is_some_and(|m| m.file_type().is_socket()),
            "CharDevice" => meta
                .as_ref()
                .is_some_and(|m| m.file_type().is_char_device()),
            "BlockDevice" => meta
                .as_ref()
                .is_some_and(|m| m.file_type().is_block_device()),
            other => return Err(VolumeError::HostPathType(other.to_string())),
        };
        if !ok {
            return Err(VolumeError::HostPathCheck {
                path: path.to_string(),
                type_: t.to_string(),
            });
        }
        Ok(p)
    }
}

async fn prepare_files(
    sources: &mut Sources<'_>,
    pod: &Pod,
    v: &Volume,
    dir: &Path,
    tokens: &mut TokenCache,
) -> Result<PathBuf, VolumeError> {
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        let src = Source::ConfigMap(&c.name);
        add_source(sources, src, &c.items, mode, c.optional, &mut files).await?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let src = Source::Secret(&name);
        add_source(sources, src, &s.items, mode, s.optional, &mut files).await?;
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        add_downward(pod, &d.items, mode, &mut files)?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for src in p.sources.clone().unwrap_or_default() {
            if let Some(c) = &src.config_map {
                let from = Source::ConfigMap(&c.name);
                add_source(sources, from, &c.items, mode, c.optional, &mut files).await?;
            }
            if let Some(s) = &src.secret {
                let from = Source::Secret(&s.name);
                add_source(sources, from, &s.items, mode, s.optional, &mut files).await?;
            }
            if let Some(d) = &src.downward_api {
                add_downward(pod, &d.items, mode, &mut files)?;
            }
            if let Some(t) = &src.service_account_token {
                let token = tokens.token(sources.client, pod, t).await?;
                // The volume's mode, as kubelet: a container running as
                // another user than root must be able to read its token.
                files.insert(t.path.clone(), (token.into_bytes(), mode));
            }
        }
    } else {
        return Err(VolumeError::UnsupportedVolume);
    }
    write_files(dir, &files)?;
    Ok(dir.to_path_buf())
}

/// Creates the missing directories of `sub` under `base` with the
/// volume root's mode, as kubelet's `SafeMakeDir` (so a volume its
/// fsGroup may write gives the same to its sub paths; the group comes
/// from the root's setgid).
fn make_sub_path(base: &Path, sub: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(base)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755);
    let mut at = base.to_path_buf();
    for part in Path::new(sub).components() {
        at.push(part);
        if at.exists() {
            continue;
        }
        std::fs::create_dir(&at).map_err(io("creating subPath", &at))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
            .map_err(io("creating subPath", &at))?;
    }
    Ok(())
}

/// The mounts of container `c` of `pod` from its volumeMounts:
/// `subPath`, or `subPathExpr` expanded with the container's `env`, and
/// read-only where the mount or the claim says so.
pub fn mounts(
    pod: &Pod,
    c: &Container,
    volumes: &HashMap<String, PathBuf>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Mount>, VolumeError> {
    let read_only_claims: Vec<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.read_only == Some(true))
        })
        .map(|v| v.name.as_str())
        .collect();
    let mut out = Vec::new();
    for vm in c.volume_mounts.clone().unwrap_or_default() {
        let Some(base) = volumes.get(&vm.name) else {
            return Err(VolumeError::NoSuchVolume {
                volume: vm.name.clone(),
                container: c.name.clone(),
            });
        };
        let mut host = base.clone();
        let expanded = vm
            .sub_path_expr
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|e| super::spec::expand(e, env));
        if let Some(sub) = expanded
            .as_deref()
            .or(vm.sub_path.as_deref())
            .filter(|s| !s.is_empty())
        {
            if !safe_relative(sub) {
                return Err(VolumeError::InvalidSubPath(sub.to_string()));
            }
            host = base.join(sub);
            if !host.exists() {
                make_sub_path(base, sub)?;
            }
        }
        out.push(Mount {
            host_path: host,
            container_path: vm.mount_path.clone(),
            readonly: vm.read_only.unwrap_or(false) || read_only_claims.contains(&vm.name.as_str()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_group_owns_the_volume_and_sub_paths_inherit() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), b"x").unwrap();
        std::fs::set_permissions(root.join("a/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        set_ownership(&root, 4321, false).unwrap();
        let m = |p: &Path| std::fs::metadata(p).unwrap();
        assert_eq!(m(&root).gid(), 4321);
        assert_eq!(m(&root).mode() & 0o2070, 0o2070, "group rwx and setgid");
        assert_eq!(m(&root.join("a/f")).gid(), 4321);
        assert_eq!(m(&root.join("a/f")).mode() & 0o777, 0o660);
        assert!(root_owned(&root, 4321));
        assert!(!root_owned(&root, 1));
        // A sub path made later takes the root's mode and, by setgid, its group.
        make_sub_path(&root, "x/y").unwrap();
        assert_eq!(
            m(&root.join("x/y")).mode() & 0o7777,
            m(&root).mode() & 0o7777
        );
        assert_eq!(m(&root.join("x/y")).gid(), 4321);
    }

    #[test]
    fn sub_path_expr_expands_and_read_only_claims_stay_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"spec": {"containers": [], "volumes": [
            {"name": "ro", "persistentVolumeClaim": {"claimName": "c", "readOnly": true}},
            {"name": "rw", "emptyDir": {}}]}}))
            .unwrap();
        let c: Container =
            serde_json::from_value(serde_json::json!({"name": "app", "volumeMounts": [
            {"name": "ro", "mountPath": "/ro"},
            {"name": "rw", "mountPath": "/rw", "subPathExpr": "logs/$(POD_NAME)"},
            {"name": "rw", "mountPath": "/bad", "subPathExpr": "$(UP)/x"}]}))
            .unwrap();
        let vols: HashMap<String, PathBuf> = [
            ("ro".to_string(), tmp.path().join("ro")),
            ("rw".to_string(), tmp.path().join("rw")),
        ]
        .into();
        std::fs::create_dir_all(tmp.path().join("rw")).unwrap();
        let mut env = BTreeMap::new();
        env.insert("POD_NAME".to_string(), "p-1".to_string());
        env.insert("UP".to_string(), "..".to_string());
        let err = mounts(&pod, &c, &vols, &env).unwrap_err().to_string();
        assert!(err.contains("invalid subPath \"../x\""), "{err}");
        let c: Container =
            serde_json::from_value(serde_json::json!({"name": "app", "volumeMounts": [
            {"name": "ro", "mountPath": "/ro"},
            {"name": "rw", "mountPath": "/rw", "subPathExpr": "logs/$(POD_NAME)"}]}))
            .unwrap();
        let m = mounts(&pod, &c, &vols, &env).unwrap();
        assert!(m[0].readonly);
        assert_eq!(m[1].host_path, tmp.path().join("rw/logs/p-1"));
        assert!(!m[1].readonly);
        assert!(tmp.path().join("rw/logs/p-1").is_dir());
    }

    #[test]
    fn write_files_replaces_and_prunes() {
        let d = tempfile::tempdir().unwrap();
        let mut f = BTreeMap::new();
        f.insert("a".to_string(), (b"1".to_vec(), 0o644));
        f.insert("sub/b".to_string(), (b"2".to_vec(), 0o600));
        write_files(d.path(), &f).unwrap();
        assert_eq!(std::fs::read(d.path().join("sub/b")).unwrap(), b"2");
        f.remove("a");
        write_files(d.path(), &f).unwrap();
        assert!(!d.path().join("a").exists());
        f.insert("../x".to_string(), (b"no".to_vec(), 0o644));
        assert!(
            write_files(d.path(), &f)
                .unwrap_err()
                .to_string()
                .contains("invalid path")
        );
    }

    /// The messages reach events and container statuses: they stay
    /// kubelet's word for word.
    #[test]
    fn messages_are_kubelets() {
        assert_eq!(
            not_found(ObjectKind::ConfigMap, "cfg").to_string(),
            "configmap \"cfg\" not found"
        );
        assert_eq!(
            VolumeError::MissingKey {
                kind: ObjectKind::Secret,
                namespace: "ns".into(),
                name: "s".into(),
                key: "k".into(),
            }
            .to_string(),
            "couldn't find key k in Secret ns/s"
        );
        assert_eq!(
            VolumeError::MissingItem {
                kind: ObjectKind::ConfigMap,
                name: "c".into(),
                key: "k".into(),
            }
            .to_string(),
            "configured to use key k of configmap \"c\", which is missing"
        );
        assert_eq!(
            VolumeError::SetUp {
                volume: "data".into(),
                source: Box::new(not_found(ObjectKind::PersistentVolumeClaim, "claim")),
            }
            .to_string(),
            "MountVolume.SetUp failed for volume \"data\" : persistentvolumeclaim \"claim\" not found"
        );
        let e = host_path("/nonexistent/rke2-test", Some("Directory")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hostPath type check failed: /nonexistent/rke2-test is not a Directory"
        );
        let e = write_files(Path::new("/proc/rke2-test"), &BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string().starts_with("creating /proc/rke2-test: "),
            "{e}"
        );
    }

    #[test]
    fn field_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "x"}},
            "spec": {"nodeName": "a1", "containers": []},
            "status": {"podIP": "10.42.0.5"}
        }))
        .unwrap();
        let f = |p: &str| ObjectFieldSelector {
            field_path: p.into(),
            api_version: None,
        };
        assert_eq!(field_value(&pod, &f("metadata.name")).unwrap(), "p");
        assert_eq!(
            field_value(&pod, &f("metadata.labels['app']")).unwrap(),
            "x"
        );
        assert_eq!(field_value(&pod, &f("spec.nodeName")).unwrap(), "a1");
        assert_eq!(field_value(&pod, &f("status.podIP")).unwrap(), "10.42.0.5");
        assert!(field_value(&pod, &f("spec.nope")).is_err());
    }
}
