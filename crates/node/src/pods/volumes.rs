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

    async fn config_map(&mut self, name: &str) -> Result<Option<ConfigMap>, String> {
        if let Some(c) = self.config_maps.get(name) {
            return Ok(c.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let got = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading configmap {:?}: {e}", name))?;
        self.config_maps.insert(name.to_string(), got.clone());
        Ok(got)
    }

    async fn secret(&mut self, name: &str) -> Result<Option<Secret>, String> {
        if let Some(c) = self.secrets.get(name) {
            return Ok(c.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let got = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading secret {:?}: {e}", name))?;
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
pub fn field_value(pod: &Pod, f: &ObjectFieldSelector) -> Result<String, String> {
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
        other => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
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
) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
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
                None => return Err(format!("configmap {:?} not found", r.name)),
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
                None => return Err(format!("secret {:?} not found", r.name)),
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
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, sources.namespace, r.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional == Some(true);
                match sources.secret(&r.name).await? {
                    Some(s) => match secret_data(&s).get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, sources.namespace, r.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("secret {:?} not found", r.name)),
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

fn resource_field(c: &Container, resource: &str) -> Result<String, String> {
    let r = c.resources.clone().unwrap_or_default();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (r.limits, k),
        Some(("requests", k)) => (r.requests, k),
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef resource {resource:?}"
            ));
        }
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
pub fn write_files(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (rel, (content, mode)) in files {
        if !safe_relative(rel) {
            return Err(format!(
                "invalid path {rel:?}: must be relative, without '..'"
            ));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if std::fs::read(&p).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        let tmp = p.with_extension("rke2-tmp");
        std::fs::write(&tmp, content).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &p).map_err(|e| format!("writing {}: {e}", p.display()))?;
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
    what: &str,
    optional: bool,
    out: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), String> {
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
                        return Err(format!(
                            "configured to use key {} of {what}, which is missing",
                            it.key
                        ));
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
    ) -> Result<String, String> {
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
        .map_err(|e| format!("building a TokenRequest: {e}"))?;
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let got = api
            .create_token_request(&account, &Default::default(), &request)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let status = got
            .status
            .ok_or("failed to fetch token: the TokenRequest came back without a status")?;
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

/// Adds the keys of a ConfigMap or Secret (all, or the `items` chosen) to
/// `files`; a missing object is an error unless `optional`.
async fn add_source(
    sources: &mut Sources<'_>,
    src: Source<'_>,
    items: &Option<Vec<KeyToPath>>,
    mode: u32,
    optional: Option<bool>,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), String> {
    let optional = optional == Some(true);
    let (data, what) = match src {
        Source::ConfigMap(name) => (
            sources.config_map(name).await?.map(|cm| cm_data(&cm)),
            format!("configmap {name:?}"),
        ),
        Source::Secret(name) => (
            sources.secret(name).await?.map(|s| secret_data(&s)),
            format!("secret {name:?}"),
        ),
    };
    match data {
        Some(data) => project(&data, items, mode, &what, optional, files),
        None if optional => Ok(()),
        None => Err(format!("{what} not found")),
    }
}

/// Adds downward API items (fieldRef values) to `files`.
fn add_downward(
    pod: &Pod,
    items: &Option<Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>,
    mode: u32,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), String> {
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
) -> Result<HashMap<String, PathBuf>, String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let dir = paths.volume_dir(&uid, &v.name);
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
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
) -> Result<PathBuf, String> {
    let mkdir =
        |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()));
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
            .map_err(|e| format!("mounting a tmpfs at {}: {e}", dir.display()))?;
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
                .map_err(|e| format!("changing the mode of {path}: {e}"))?;
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
pub fn set_ownership(dir: &Path, gid: u32, read_only: bool) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mask = if read_only { 0o440 } else { 0o660 };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.gid() != gid {
            std::os::unix::fs::chown(&p, None, Some(gid))
                .map_err(|e| format!("changing the group of {}: {e}", p.display()))?;
        }
        let mut mode = meta.mode() & 0o7777 | mask;
        if meta.is_dir() {
            mode |= 0o110 | 0o2000;
            for entry in
                std::fs::read_dir(&p).map_err(|e| format!("reading {}: {e}", p.display()))?
            {
                stack.push(
                    entry
                        .map_err(|e| format!("reading {}: {e}", p.display()))?
                        .path(),
                );
            }
        }
        if mode != meta.mode() & 0o7777 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("changing the mode of {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// Where the volume bound to claim `name` lives on this node: the
/// path of its `hostPath` or `local` source.
async fn claim_path(sources: &Sources<'_>, name: &str) -> Result<String, String> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(sources.client.clone(), &sources.namespace);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(|e| format!("reading persistentvolumeclaim {name:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty() && bound)
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} is not bound"))?;
    let volumes: Api<PersistentVolume> = Api::all(sources.client.clone());
    let pv = volumes
        .get_opt(&volume)
        .await
        .map_err(|e| format!("reading persistentvolume {volume:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolume {volume:?} not found"))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = spec.host_path {
        return Ok(h.path);
    }
    if let Some(l) = spec.local {
        return Ok(l.path);
    }
    Err(format!(
        "persistentvolume {volume:?}: unsupported volume type (supported for claims: hostPath, local)"
    ))
}

/// A hostPath volume (or a claim's directory): the path, checked
/// against (or created as) its `type`.
fn host_path(path: &str, type_: Option<&str>) -> Result<PathBuf, String> {
    let mkdir =
        |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()));
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
                    std::fs::write(&p, b"")
                        .map_err(|e| format!("creating {}: {e}", p.display()))?;
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
            other => return Err(format!("unknown hostPath type {other:?}")),
        };
        if !ok {
            return Err(format!("hostPath type check failed: {path} is not a {t}"));
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
) -> Result<PathBuf, String> {
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
        return Err("unsupported volume type (supported: emptyDir, hostPath, persistentVolumeClaim, configMap, secret, downwardAPI, projected)".into());
    }
    write_files(dir, &files)?;
    Ok(dir.to_path_buf())
}

/// Creates the missing directories of `sub` under `base` with the
/// volume root's mode, as kubelet's `SafeMakeDir` (so a volume its
/// fsGroup may write gives the same to its sub paths; the group comes
/// from the root's setgid).
fn make_sub_path(base: &Path, sub: &str) -> Result<(), String> {
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
        std::fs::create_dir(&at).map_err(|e| format!("creating subPath {}: {e}", at.display()))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("creating subPath {}: {e}", at.display()))?;
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
) -> Result<Vec<Mount>, String> {
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
            return Err(format!(
                "unable to find volume {:?} for container {:?}",
                vm.name, c.name
            ));
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
                return Err(format!(
                    "invalid subPath {sub:?}: must be relative, without '..'"
                ));
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
        let err = mounts(&pod, &c, &vols, &env).unwrap_err();
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
                .contains("invalid path")
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
