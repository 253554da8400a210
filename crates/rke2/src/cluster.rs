//! Cluster membership of a server: joining through the supervisor of an
//! existing server, the encrypted bootstrap data in etcd, and the loops
//! that keep etcd membership and endpoints current.
//!
//! The join steps are separate functions named after the protocol step,
//! so a failure names the step that failed and a restart between two steps
//! resumes safely (every step is idempotent).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use rke2_config::Config;
use rke2_datastore::Store;
use rke2_supervisor::bootstrap::{self, Passwd};
use rke2_supervisor::client::SupervisorClient;
use rke2_trust::Token;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The non-secret settings every server must agree on (`/v1-rke2/config`):
/// the flags marked critical in the flag table.
pub fn critical_config(cfg: &Config) -> Value {
    Value::Object(cfg.critical_settings())
}

/// What a joining server learned from the cluster before starting etcd.
pub struct JoinPlan {
    /// Client URLs of the existing voting members.
    pub voter_client_urls: Vec<String>,
    /// The supervisor passwords of the cluster.
    pub passwd: Passwd,
}

/// Steps 1-3 of a server join: check the token against the server's CA,
/// compare critical settings, and write the cluster's CA material into
/// `tls_dir` (before any certificate of ours is issued). Nothing is
/// written unless every check passed.
pub async fn prepare_join(cfg: &Config, server_url: &str, tls_dir: &Path) -> Result<JoinPlan> {
    let given = cfg
        .token
        .as_deref()
        .context("joining a cluster (config key `server`) needs the cluster's `token`")?;
    let token = Token::parse(given).context("parsing the token (config key `token`)")?;
    if token.user.as_deref().is_some_and(|u| u != "server") {
        bail!(
            "the token is an agent token (user {:?}): it can join agents, not servers; use the server token from server/token",
            token.user.as_deref().unwrap_or("")
        );
    }
    // Step 1: the CA, authenticated by the hash in the token.
    let ca = retry_transient("join step 1 (fetch CA)", || {
        rke2_supervisor::client::fetch_cacerts(server_url)
    })
    .await?;
    rke2_supervisor::client::verify_ca(&token, &ca)
        .context("join step 1 (verify CA hash from token)")?;
    let sup = SupervisorClient::new(server_url, &ca, "server", &token.password)
        .context("join: building the supervisor client")?;
    // Step 2: settings every server must share.
    let remote = retry_transient("join step 2 (fetch cluster config)", || sup.config()).await?;
    rke2_supervisor::client::compare_critical(&critical_config(cfg), &remote)
        .context("join step 2 (compare critical config)")?;
    // Step 3: CA material.
    let doc = retry_transient("join step 3 (fetch bootstrap data)", || {
        sup.server_bootstrap()
    })
    .await?;
    let passwd = bootstrap::unpack(&doc, tls_dir).context("join step 3 (write CA material)")?;
    // Step 4 starts here: the member list.
    let info = retry_transient("join step 4 (fetch etcd members)", || sup.db_info()).await?;
    let voter_client_urls: Vec<String> = info["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["isLearner"] != true)
        .flat_map(|m| m["clientURLs"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    if voter_client_urls.is_empty() {
        bail!("join step 4: the cluster reported no etcd members with client URLs");
    }
    Ok(JoinPlan {
        voter_client_urls,
        passwd,
    })
}

/// Retries a supervisor request while the server is unreachable, not
/// answering or answering 5xx (it may still be starting, as when all
/// servers are started at once); any other error ends the join at once.
pub async fn retry_transient<T, F, Fut>(step: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, rke2_supervisor::client::JoinError>>,
{
    use rke2_supervisor::client::JoinError;
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e @ (JoinError::Transport { .. } | JoinError::Timeout { .. }))
            | Err(
                e @ JoinError::Status {
                    status: 500..=599, ..
                },
            ) if start.elapsed() < Duration::from_secs(15 * 60) => {
                if tries.is_multiple_of(10) {
                    info!(step, error = %e, "server not reachable yet; retrying");
                }
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(step.to_string())),
        }
    }
}

/// The etcd key recording the newest storage format a server of this
/// cluster has used, with the version that wrote it.
pub const STORAGE_FORMAT_KEY: &str = "/rke2/storage-format";

/// The storage format this build reads and writes. Raised by a release
/// that stores something an older one cannot read correctly (format 2:
/// Secrets may be encrypted at rest, bootstrap CAs may be rotated
/// bundles). A cluster without the key was written by releases before the
/// record existed (format 1).
pub const STORAGE_FORMAT: u64 = 2;

/// Refuses to serve a cluster whose data a newer release has written in a
/// format this build does not know, and records this build's format when
/// it is the newest so far. Runs before this server writes anything.
pub async fn check_storage_format(store: &Store, version: &str) -> Result<()> {
    let record = serde_json::to_vec(&json!({"format": STORAGE_FORMAT, "writtenBy": version}))
        .context("encoding the storage format record")?;
    loop {
        let current = store
            .get(STORAGE_FORMAT_KEY)
            .await
            .with_context(|| format!("reading {STORAGE_FORMAT_KEY} from etcd"))?;
        let written = match current {
            None => store.create(STORAGE_FORMAT_KEY, record.clone()).await,
            Some(kv) => {
                let stored: Value = serde_json::from_slice(&kv.value).with_context(|| {
                    format!("{STORAGE_FORMAT_KEY} in etcd is not a storage format record")
                })?;
                let format = stored["format"].as_u64().with_context(|| {
                    format!("{STORAGE_FORMAT_KEY} in etcd has no numeric `format`")
                })?;
                let by = stored["writtenBy"].as_str().unwrap_or("an unknown release");
                if format > STORAGE_FORMAT {
                    bail!(
                        "this cluster's data is in storage format {format}, written by {by}; this rke2 ({version}) reads formats up to {STORAGE_FORMAT} and must not serve it: upgrade this server to {by} or later (servers are upgraded one at a time, and an upgraded cluster is not served by older servers)"
                    );
                }
                if format == STORAGE_FORMAT {
                    return Ok(());
                }
                info!(from = format, to = STORAGE_FORMAT, "raising the cluster's storage format");
                store
                    .update(STORAGE_FORMAT_KEY, record.clone(), kv.mod_revision)
                    .await
                    .map(|_| 0)
            }
        };
        match written {
            Ok(_) => return Ok(()),
            // Another server wrote it meanwhile: look again.
            Err(
                rke2_datastore::StoreError::AlreadyExists
                | rke2_datastore::StoreError::Conflict { .. },
            ) => continue,
            Err(e) => return Err(e).with_context(|| format!("writing {STORAGE_FORMAT_KEY} to etcd")),
        }
    }
}

/// Stores the cluster's bootstrap data encrypted with the token, or checks
/// that what is stored was encrypted with this token.
pub async fn ensure_bootstrap_data(
    store: &Store,
    password: &str,
    tls_dir: &Path,
    passwd: &Passwd,
) -> Result<()> {
    let key = bootstrap::storage_key(password);
    let existing = store
        .list("/bootstrap/", None, 0, 0)
        .await
        .context("reading bootstrap data from etcd")?;
    if let Some(kv) = existing.items.iter().find(|kv| kv.key == key) {
        let text = String::from_utf8_lossy(&kv.value);
        bootstrap::decrypt(password, &text).context("checking the stored bootstrap data")?;
        return Ok(());
    }
    if !existing.items.is_empty() {
        bail!("{}", bootstrap::BootstrapError::WrongToken);
    }
    let doc = bootstrap::pack(tls_dir, passwd).context("packing bootstrap data")?;
    let sealed = bootstrap::encrypt(password, &doc);
    match store.create(&key, sealed.into_bytes()).await {
        Ok(_) | Err(rke2_datastore::StoreError::AlreadyExists) => Ok(()),
        Err(e) => Err(e).context("storing bootstrap data in etcd"),
    }
}

/// Keeps the etcd side of the cluster healthy, every 2 s until `stop`:
/// uses new members' client URLs, and, on the server whose etcd member is
/// the raft leader, promotes caught-up learners (and drops learners stalled
/// for 5 minutes).
pub async fn run_membership(store: Store, own_client_url: String, stop: CancellationToken) {
    let mut first_seen: HashMap<u64, Instant> = HashMap::new();
    let mut preferred_own = false;
    let mut warned_even = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(members) = store.members().await else {
            continue;
        };
        let urls: Vec<String> = members
            .iter()
            .filter(|m| !m.is_learner)
            .flat_map(|m| m.client_urls.clone())
            .collect();
        store.add_endpoints(&urls).await;
        // Once this server's member votes, talk to it first: it is local.
        if !preferred_own && urls.contains(&own_client_url) {
            store.prefer(&own_client_url);
            preferred_own = true;
        }
        let voters = members.iter().filter(|m| !m.is_learner).count();
        if voters % 2 == 0 && warned_even != Some(voters) {
            warn!(
                voters,
                "etcd has an even number of voting members; an odd number (3, 5) tolerates the same failures with fewer machines"
            );
            warned_even = Some(voters);
        } else if voters % 2 == 1 {
            warned_even = None;
        }
        // The status names the member that answered it, which is this
        // server's only while the connection has not failed over to
        // another member; this server's own member is the one advertising
        // its client URL. Asking "is the answering member the leader"
        // instead had every server skip promotion whenever none of them
        // was connected to the leader, leaving a re-joined learner
        // unpromoted for good.
        let own = members
            .iter()
            .find(|m| !m.is_learner && m.client_urls.contains(&own_client_url))
            .map(|m| m.id);
        if let Some(own) = own
            && let Ok((_, leader)) = store.member_and_leader().await
            && own == leader
            && let Err(e) = store
                .promote_learners(&mut first_seen, Duration::from_secs(300))
                .await
        {
            warn!(error = %e, "promoting etcd learners");
        }
    }
}

/// etcd membership for the server-removal loop, through this server's
/// datastore connection (which fails over across members).
pub struct StoreMembership(pub Store);

impl rke2_controllers::server_removal::Membership for StoreMembership {
    fn members(
        &self,
    ) -> BoxFuture<'_, Result<Vec<rke2_controllers::server_removal::EtcdMember>, String>> {
        Box::pin(async move {
            let members = self.0.members().await.map_err(|e| e.to_string())?;
            Ok(members
                .into_iter()
                .map(|m| rke2_controllers::server_removal::EtcdMember {
                    id: m.id,
                    name: m.name,
                    is_learner: m.is_learner,
                })
                .collect())
        })
    }

    fn remove(&self, id: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.remove_member(id).await.map_err(|e| e.to_string()) })
    }
}

/// The supervisor's view of this server.
pub struct LocalCluster {
    /// The datastore.
    pub store: Store,
    /// The API state (for the live apiserver list).
    pub api: rke2_apiserver::ApiState,
    /// An admin client of the local API (node-password secrets).
    pub client: kube::Client,
    /// `<data-dir>/server` (token files, `tls/`).
    pub server_dir: std::path::PathBuf,
    /// The cluster's server CA, for full tokens.
    pub server_ca_pem: String,
    /// Secrets encryption at rest (`rke2 secrets-encrypt`).
    pub encryption: Arc<crate::secrets_encrypt::Manager>,
}

impl rke2_supervisor::server::ClusterInfo for LocalCluster {
    fn rotate_token(
        &self,
        current: Passwd,
        new_token: String,
    ) -> BoxFuture<'_, Result<Passwd, (http::StatusCode, String)>> {
        Box::pin(async move {
            let bad = |m: String| (http::StatusCode::BAD_REQUEST, format!("{m}\n"));
            let token = rke2_config::check_server_token(new_token.trim())
                .map_err(|e| bad(format!("the new token is not valid: {e}")))?;
            if token.ca_hash.is_some() && !token.ca_matches(self.server_ca_pem.as_bytes()) {
                return Err(bad(
                    "the new token's CA hash does not match this cluster's server CA".into(),
                ));
            }
            if token.password == current.server {
                return Err(bad("the new token is the current token".into()));
            }
            // Agents that use the server token (no `agent-token`) follow it;
            // a separate agent token stays.
            let new = Passwd {
                server: token.password.clone(),
                node: if current.node == current.server {
                    token.password.clone()
                } else {
                    current.node.clone()
                },
            };
            let internal = |e: anyhow::Error| {
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("token rotation failed: {e:#}\n"),
                )
            };
            rotate_bootstrap_data(&self.store, &current.server, &new)
                .await
                .map_err(internal)?;
            crate::secrets_encrypt::reseal(&self.store, &current.server, &new.server)
                .await
                .map_err(internal)?;
            let text = format!(
                "{}\n",
                Token::server(self.server_ca_pem.as_bytes(), &new.server)
            );
            for name in ["token", "node-token"] {
                let p = self.server_dir.join(name);
                rke2_trust::write_file_atomic(&p, text.as_bytes(), 0o600)
                    .with_context(|| format!("writing {}", p.display()))
                    .map_err(internal)?;
            }
            info!("cluster token rotated; restart every server with the new token");
            Ok(new)
        })
    }

    fn rotate_ca(
        &self,
        current: Passwd,
        files: Vec<(String, Vec<u8>)>,
        force: bool,
    ) -> BoxFuture<'_, Result<(), (http::StatusCode, String)>> {
        Box::pin(async move {
            let tls = self.server_dir.join("tls");
            let lookup = |rel: &str| {
                files
                    .iter()
                    .find(|(name, _)| name == rel)
                    .map(|(_, b)| b.clone())
            };
            let checked = rke2_trust::validate_ca_rotation(
                &lookup,
                &|rel: &str| std::fs::read(tls.join(rel)).ok(),
                force,
            )
            .map_err(|e| {
                (
                    http::StatusCode::BAD_REQUEST,
                    format!("refusing the new CA material: {e}\n"),
                )
            })?;
            store_rotated_ca(&self.store, &current.server, &checked)
                .await
                .map_err(|e| {
                    (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("CA rotation failed: {e:#}\n"),
                    )
                })?;
            info!(
                force,
                "new CA certificates stored in the bootstrap data; restart every server, one at a time"
            );
            Ok(())
        })
    }

    fn encrypt_status(&self) -> BoxFuture<'_, Result<Value, (http::StatusCode, String)>> {
        Box::pin(async move {
            self.encryption.status().await.map_err(|e| {
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("secrets encryption status: {e:#}\n"),
                )
            })
        })
    }

    fn encrypt_command(
        &self,
        request: Value,
    ) -> BoxFuture<'_, Result<String, (http::StatusCode, String)>> {
        Box::pin(async move { self.encryption.command(request).await })
    }

    fn api_ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.store.healthy().await })
    }

    fn apiservers(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            rke2_apiserver::bootstrap::live_apiservers(&self.api)
                .await
                .unwrap_or_default()
        })
    }

    fn check_node_password(
        &self,
        node: String,
        password: String,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { check_node_password(&self.client, &node, &password).await })
    }

    fn address_holders(
        &self,
    ) -> BoxFuture<'_, Result<rke2_supervisor::server::AddressHolders, String>> {
        Box::pin(async move {
            use k8s_openapi::api::core::v1::Node;
            let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
            let list = nodes
                .list(&kube::api::ListParams::default())
                .await
                .map_err(|e| format!("listing nodes: {e}"))?;
            let mut out = Vec::new();
            for n in list.items {
                let name = n.metadata.name.clone().unwrap_or_default();
                for a in n.status.and_then(|s| s.addresses).unwrap_or_default() {
                    if let Ok(ip) = a.address.parse() {
                        out.push((Some(name.clone()), ip));
                    }
                }
            }
            for s in rke2_apiserver::bootstrap::live_apiservers(&self.api)
                .await
                .unwrap_or_default()
            {
                if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
                    out.push((None, sa.ip()));
                }
            }
            Ok(out)
        })
    }

    fn etcd_members(&self) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            let members = self.store.members().await.map_err(|e| e.to_string())?;
            Ok(json!({"members": members.iter().map(|m| m.to_json()).collect::<Vec<_>>()}))
        })
    }
}

/// Wraps [`LocalCluster`] for the supervisor state.
pub fn cluster_info(
    store: Store,
    api: rke2_apiserver::ApiState,
    client: kube::Client,
    server_dir: std::path::PathBuf,
    server_ca_pem: String,
    encryption: Arc<crate::secrets_encrypt::Manager>,
) -> Arc<dyn rke2_supervisor::server::ClusterInfo> {
    Arc::new(LocalCluster {
        store,
        api,
        client,
        server_dir,
        server_ca_pem,
        encryption,
    })
}

/// Re-encrypts the bootstrap data stored under `old_password` with
/// `new.server` and the passwords `new` (`rke2 token rotate`): the new
/// record is written before the old one is deleted, so a crash in between
/// leaves data that either token opens, never none. The stored files are
/// kept as they are (not repacked from this server's disk).
pub async fn rotate_bootstrap_data(store: &Store, old_password: &str, new: &Passwd) -> Result<()> {
    let old_key = bootstrap::storage_key(old_password);
    let new_key = bootstrap::storage_key(&new.server);
    let existing = store
        .list("/bootstrap/", None, 0, 0)
        .await
        .context("reading bootstrap data from etcd")?;
    let old = existing
        .items
        .iter()
        .find(|kv| kv.key == old_key)
        .context("no bootstrap data is stored under the current token")?;
    let stored = bootstrap::decrypt(old_password, &String::from_utf8_lossy(&old.value))
        .context("opening the stored bootstrap data with the current token")?;
    // The stored files, not this server's: they may hold a CA rotation
    // that no server has taken yet.
    let doc = bootstrap::set_passwd(&stored, new).context("updating bootstrap data")?;
    let sealed = bootstrap::encrypt(&new.server, &doc);
    store
        .create(&new_key, sealed.into_bytes())
        .await
        .context("storing the bootstrap data under the new token")?;
    store
        .delete(&old_key, old.mod_revision)
        .await
        .context("deleting the bootstrap data of the old token")?;
    Ok(())
}

/// Replaces the CA files of the bootstrap data stored under `password`
/// (`rke2 certificate rotate-ca`), in one compare-and-swap: a concurrent
/// token rotation makes it fail rather than be lost.
pub async fn store_rotated_ca(
    store: &Store,
    password: &str,
    files: &[(String, Vec<u8>)],
) -> Result<()> {
    let key = bootstrap::storage_key(password);
    let kv = store
        .get(&key)
        .await
        .context("reading bootstrap data from etcd")?
        .context("no bootstrap data is stored under the current token")?;
    let doc = bootstrap::decrypt(password, &String::from_utf8_lossy(&kv.value))
        .context("opening the stored bootstrap data with the current token")?;
    let doc = bootstrap::replace_files(&doc, files).context("updating the bootstrap data")?;
    store
        .update(
            &key,
            bootstrap::encrypt(password, &doc).into_bytes(),
            kv.mod_revision,
        )
        .await
        .context("storing the new CA material in etcd")?;
    Ok(())
}

/// The stored CA material differs from this server's files: they were
/// replaced from etcd and the server must start again with them.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cluster's CA certificates were rotated: {files:?} replaced from the bootstrap data (old files kept in {backup})"
)]
pub struct CaRotated {
    /// The files replaced, relative to `server/tls`.
    pub files: Vec<String>,
    /// Where the previous `server/tls` was copied.
    pub backup: String,
}

/// At start, once etcd runs: when the bootstrap data in etcd carries CA
/// files other than this server's, stored after this server's files were
/// written (`rke2 certificate rotate-ca` on any server), backs up
/// `server/tls` and writes them; the caller then starts again so every
/// leaf is issued by the new CAs. Files changed on disk after the stored
/// copy are kept, with a warning. `Ok(None)` when nothing is taken.
pub async fn apply_stored_ca(
    store: &Store,
    password: &str,
    tls_dir: &Path,
) -> Result<Option<CaRotated>> {
    let key = bootstrap::storage_key(password);
    let Some(kv) = store
        .get(&key)
        .await
        .context("reading bootstrap data from etcd")?
    else {
        return Ok(None);
    };
    let doc = bootstrap::decrypt(password, &String::from_utf8_lossy(&kv.value))
        .context("opening the stored bootstrap data")?;
    let cmp = bootstrap::compare_files(&doc, tls_dir).context("comparing CA files")?;
    if !cmp.newer_on_disk.is_empty() {
        warn!(
            files = ?cmp.newer_on_disk,
            "CA files on disk differ from the cluster's bootstrap data and are newer: kept; servers with other CAs will not trust this one (use rke2 certificate rotate-ca to change the cluster's CAs)"
        );
    }
    let files = cmp.take;
    if files.is_empty() {
        return Ok(None);
    }
    let backup = tls_dir.with_file_name(format!("tls-{}", chrono::Utc::now().timestamp()));
    crate::certificate::copy_dir(tls_dir, &backup)
        .with_context(|| format!("backing up {} to {}", tls_dir.display(), backup.display()))?;
    bootstrap::write_entries(&doc, tls_dir, &files).context("writing the rotated CA files")?;
    Ok(Some(CaRotated {
        files,
        backup: backup.display().to_string(),
    }))
}

fn hash_password(salt: &str, password: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    format!("{salt}:{}", hex::encode(h.finalize()))
}

/// Checks a node's password against `kube-system/<node>.node-password.rke2`,
/// creating the secret for a node seen for the first time.
pub async fn check_node_password(
    client: &kube::Client,
    node: &str,
    password: &str,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let name = format!("{node}.node-password.rke2");
    let refuse = || {
        format!(
            "node {node:?} is already registered by another machine with a different node password; \
             give this machine another name (node-name) or start it with with-node-id, \
             or delete the secret kube-system/{name} if the old machine is gone"
        )
    };
    for _ in 0..3 {
        match secrets
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading {name}: {e}"))?
        {
            Some(secret) => {
                let stored = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get("hash"))
                    .map(|b| String::from_utf8_lossy(&b.0).to_string())
                    .unwrap_or_default();
                let salt = stored.split(':').next().unwrap_or("");
                return if rke2_trust::constant_time_eq(
                    hash_password(salt, password).as_bytes(),
                    stored.as_bytes(),
                ) {
                    Ok(())
                } else {
                    Err(refuse())
                };
            }
            None => {
                let salt = hex::encode(rand::random::<[u8; 8]>());
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "kube-system"},
                    "type": "rke2.io/node-password",
                    "stringData": {"hash": hash_password(&salt, password)},
                }))
                .expect("secret literal");
                match secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => return Ok(()),
                    // Two registrations raced: check against the winner.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(format!("creating {name}: {e}")),
                }
            }
        }
    }
    Err(refuse())
}

/// Logs how a join went.
pub fn log_joined(name: &str, started: Instant) {
    info!(member = %name, elapsed = ?started.elapsed(), "joined the etcd cluster as a learner");
}
