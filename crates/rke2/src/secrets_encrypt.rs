//! Secrets encryption at rest, as RKE2 (k3s) runs it: the
//! `EncryptionConfiguration` every server applies, its rotation stages,
//! and `rke2 secrets-encrypt`.
//!
//! The cluster's configuration and stage live in etcd under
//! [`RECORD_KEY`], sealed with the cluster token like the bootstrap data
//! (so etcd snapshots do not carry the keys in the clear). Each server
//! copies it to `<data-dir>/server/cred/encryption-config.json` (0600, the
//! file kube-apiserver would read), applies it to its store
//! ([`rke2_datastore::EncryptingStore`]) and polls the record every 2 s:
//! a changed record is applied at once, without a restart, and the server
//! then records what it runs as annotations of its Node
//! (`encryption.k3s.cattle.io/stage` and `encryption.k3s.cattle.io/hash` =
//! `<stage>-<sha256 of the configuration>`), as k3s does. Commands check
//! those annotations: a stage is only advanced once every server runs the
//! previous one (unless forced), and `rotate-keys` waits for every server
//! between its steps, so reads keep working on every server throughout.
//!
//! Stages (k3s's): `start` → `prepare` (a new key appended, readable
//! everywhere, not yet written) → `rotate` (the new key first: it encrypts
//! new writes) → `reencrypt_request` / `reencrypt_active` (every Secret
//! rewritten) → `reencrypt_finished` (the old key dropped).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http::StatusCode;
use rke2_datastore::encryption::{EncryptionConfiguration, Key, ProviderConfiguration};
use rke2_datastore::{EncryptingStore, EncryptionConfig, SharedStore, Store, StoreError};
use rke2_supervisor::bootstrap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the cluster's encryption configuration and stage are kept in etcd.
pub const RECORD_KEY: &str = "/rke2/encryption-config";
/// The Node annotation naming the stage a server runs.
pub const STAGE_ANNOTATION: &str = "encryption.k3s.cattle.io/stage";
/// The Node annotation with `<stage>-<configuration hash>` a server runs.
pub const HASH_ANNOTATION: &str = "encryption.k3s.cattle.io/hash";
/// The label that marks server nodes.
const SERVER_LABEL: &str = "node-role.kubernetes.io/control-plane=true";

/// The stages of a key rotation (k3s's names).
pub const STAGE_START: &str = "start";
const STAGE_PREPARE: &str = "prepare";
const STAGE_ROTATE: &str = "rotate";
const STAGE_REENCRYPT_REQUEST: &str = "reencrypt_request";
const STAGE_REENCRYPT_ACTIVE: &str = "reencrypt_active";
const STAGE_REENCRYPT_FINISHED: &str = "reencrypt_finished";

/// How long a step waits for every server to apply a configuration.
const ALL_SERVERS_TIMEOUT: Duration = Duration::from_secs(300);

/// `<data-dir>/server/cred/encryption-config.json`.
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server/cred/encryption-config.json")
}

/// The cluster's configuration and the stage of its rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The rotation stage.
    pub stage: String,
    /// The configuration every server applies.
    pub config: EncryptionConfiguration,
}

impl Record {
    /// `<stage>-<sha256 of the configuration>`, the hash annotation.
    pub fn hash(&self) -> String {
        format!("{}-{}", self.stage, self.config.hash())
    }

    /// The `secrets` entry of the configuration.
    fn secrets_entry(&mut self) -> Option<&mut rke2_datastore::encryption::ResourceConfiguration> {
        self.config
            .resources
            .iter_mut()
            .find(|r| r.resources.iter().any(|n| n == "secrets"))
    }

    /// Whether the first provider of `secrets` encrypts.
    pub fn enabled(&self) -> bool {
        self.config
            .resources
            .iter()
            .find(|r| r.resources.iter().any(|n| n == "secrets"))
            .and_then(|r| r.providers.first())
            .is_some_and(|p| p.identity.is_none())
    }
}

/// The provider that holds keys (`aescbc` / `secretbox`) and its keys.
fn key_provider(p: &mut ProviderConfiguration) -> Option<(&'static str, &mut Vec<Key>)> {
    if let Some(k) = p.aescbc.as_mut() {
        return Some(("aescbc", &mut k.keys));
    }
    p.secretbox.as_mut().map(|k| ("secretbox", &mut k.keys))
}

/// A new random key of `kind` named `<kind>key-<RFC3339 now>` (k3s's name).
fn new_key(kind: &str) -> Key {
    use base64::Engine;
    Key {
        name: format!(
            "{kind}key-{}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        secret: base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>()),
    }
}

/// Reads the configuration file a server was left with, checking it
/// before anything else happens (a bad file refuses the start).
pub fn load_local(data_dir: &Path) -> Result<Option<EncryptionConfiguration>, String> {
    let path = config_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    EncryptionConfiguration::load(&path)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn seal(password: &str, record: &Record) -> Vec<u8> {
    bootstrap::encrypt(
        password,
        &serde_json::to_vec(record).expect("record serializes"),
    )
    .into_bytes()
}

fn open(password: &str, raw: &[u8]) -> Result<Record> {
    let plain = bootstrap::decrypt(password, &String::from_utf8_lossy(raw))
        .context("opening the stored secrets encryption configuration with the token")?;
    let record: Record = serde_json::from_slice(&plain)
        .context("the stored secrets encryption configuration is malformed")?;
    record
        .config
        .check()
        .context("the stored secrets encryption configuration")?;
    Ok(record)
}

async fn read_record(store: &Store, password: &str) -> Result<Option<(i64, Record)>> {
    match store
        .get(RECORD_KEY)
        .await
        .context("reading the secrets encryption configuration from etcd")?
    {
        Some(kv) => Ok(Some((kv.mod_revision, open(password, &kv.value)?))),
        None => Ok(None),
    }
}

fn write_local(data_dir: &Path, config: &EncryptionConfiguration) -> Result<()> {
    let path = config_path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    rke2_trust::write_file_if_changed(&path, &config.to_json(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Re-seals the stored record with a new token (`rke2 token rotate`).
pub async fn reseal(store: &Store, old_password: &str, new_password: &str) -> Result<()> {
    let Some(kv) = store
        .get(RECORD_KEY)
        .await
        .context("reading the secrets encryption configuration")?
    else {
        return Ok(());
    };
    let record = open(old_password, &kv.value)?;
    store
        .update(RECORD_KEY, seal(new_password, &record), kv.mod_revision)
        .await
        .context("storing the secrets encryption configuration under the new token")?;
    Ok(())
}

/// This server's side of secrets encryption.
pub struct Manager {
    store: Store,
    enc: Arc<EncryptingStore>,
    data_dir: PathBuf,
    node_name: String,
    client: OnceLock<kube::Client>,
    /// The record revision and record applied now.
    loaded: Mutex<Option<(i64, Record)>>,
    /// One command at a time.
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl Manager {
    /// Makes sure the cluster has its configuration (the one in etcd; else
    /// this server's file; else, with `secrets-encryption`, a new one with
    /// one key of `provider`), writes the local file and applies it.
    pub async fn start(
        store: &Store,
        password: &str,
        data_dir: &Path,
        node_name: &str,
        enabled: bool,
        provider: &str,
        local: Option<EncryptionConfiguration>,
    ) -> Result<Arc<Self>> {
        let mut current = read_record(store, password).await?;
        if current.is_none() {
            let config = match local.clone() {
                Some(c) => Some(c),
                None if enabled => Some(
                    EncryptionConfiguration::generate(provider, &format!("{provider}key"))
                        .map_err(|e| anyhow::anyhow!("secrets-encryption-provider: {e}"))?,
                ),
                None => None,
            };
            if let Some(config) = config {
                let record = Record {
                    stage: STAGE_START.into(),
                    config,
                };
                match store.create(RECORD_KEY, seal(password, &record)).await {
                    Ok(rev) => {
                        info!("secrets encryption configured for the cluster");
                        current = Some((rev, record));
                    }
                    Err(StoreError::AlreadyExists) => {
                        current = read_record(store, password).await?
                    }
                    Err(e) => {
                        return Err(e).context("storing the secrets encryption configuration");
                    }
                }
            }
        }
        let applied = match &current {
            Some((_, r)) => {
                if local.as_ref().is_some_and(|l| *l != r.config) {
                    warn!(
                        file = %config_path(data_dir).display(),
                        "the secrets encryption configuration file differs from the cluster's; it is replaced by the cluster's (change keys with rke2 secrets-encrypt)"
                    );
                }
                write_local(data_dir, &r.config)?;
                Some(EncryptionConfig::new(r.config.clone()).with_context(|| {
                    format!("the secrets encryption configuration in {RECORD_KEY}")
                })?)
            }
            None => None,
        };
        let inner: SharedStore = Arc::new(store.clone());
        Ok(Arc::new(Self {
            store: store.clone(),
            enc: Arc::new(EncryptingStore::new(inner, applied)),
            data_dir: data_dir.to_path_buf(),
            node_name: node_name.to_string(),
            client: OnceLock::new(),
            loaded: Mutex::new(current),
            busy: Arc::new(tokio::sync::Mutex::new(())),
        }))
    }

    /// The store the apiserver uses (encrypting the configured resources).
    pub fn store(&self) -> SharedStore {
        self.enc.clone()
    }

    /// Sets the API client used for the Node annotations.
    pub fn set_client(&self, client: kube::Client) {
        let _ = self.client.set(client);
    }

    fn password(&self) -> Result<String> {
        let path = self.data_dir.join("server/token");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(rke2_trust::Token::parse(text.trim())
            .with_context(|| format!("parsing {}", path.display()))?
            .password)
    }

    fn loaded(&self) -> Option<(i64, Record)> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies the stored record when it changed; returns whether the
    /// applied record is new.
    async fn sync(&self) -> Result<bool> {
        let Some(kv) = self
            .store
            .get(RECORD_KEY)
            .await
            .context("reading the secrets encryption configuration")?
        else {
            return Ok(false);
        };
        if self.loaded().is_some_and(|(rev, _)| rev == kv.mod_revision) {
            return Ok(false);
        }
        let record = open(&self.password()?, &kv.value)?;
        let changed_config = self.loaded().is_none_or(|(_, r)| r.config != record.config);
        if changed_config {
            let applied = EncryptionConfig::new(record.config.clone())
                .context("the stored secrets encryption configuration")?;
            write_local(&self.data_dir, &record.config)?;
            self.enc.reload(Some(applied));
            info!(stage = %record.stage, hash = %record.hash(), "secrets encryption configuration reloaded");
        }
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some((kv.mod_revision, record));
        Ok(true)
    }

    async fn annotate(&self, record: &Record) -> Result<()> {
        use k8s_openapi::api::core::v1::Node;
        use kube::api::{Api, Patch, PatchParams};
        let client = self.client.get().context("no API client yet")?;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    STAGE_ANNOTATION: record.stage,
                    HASH_ANNOTATION: record.hash(),
                }}})),
            )
            .await
            .with_context(|| format!("annotating node {}", self.node_name))?;
        Ok(())
    }

    /// Follows the stored record every 2 s until `stop`: applies changes
    /// and records what this server runs on its Node.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut annotated: Option<String> = None;
        let mut last_error = String::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = async {
                self.sync().await?;
                if let Some((_, record)) = self.loaded() {
                    let hash = record.hash();
                    if annotated.as_deref() != Some(&hash) {
                        self.annotate(&record).await?;
                        annotated = Some(hash);
                    }
                }
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    let text = format!("{e:#}");
                    if text != last_error {
                        warn!(error = %text, "secrets encryption: following the cluster configuration");
                        last_error = text;
                    }
                }
            }
        }
    }

    /// `None` when every server runs `record`, else what differs.
    async fn hash_mismatch(&self, record: &Record) -> Result<Option<String>> {
        use k8s_openapi::api::core::v1::Node;
        use kube::api::{Api, ListParams};
        let client = self.client.get().context("no API client yet")?;
        let nodes: Api<Node> = Api::all(client.clone());
        let list = nodes
            .list(&ListParams::default().labels(SERVER_LABEL))
            .await
            .context("listing server nodes")?;
        let want = record.hash();
        for n in list.items {
            let name = n.metadata.name.clone().unwrap_or_default();
            let got = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HASH_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            if got != want {
                let this = if name == self.node_name {
                    "the configuration"
                } else {
                    self.node_name.as_str()
                };
                return Ok(Some(format!(
                    "hash does not match between {this} and {name} (want {want}, {name} runs {:?})",
                    got
                )));
            }
        }
        Ok(None)
    }

    async fn wait_all(&self, record: &Record) -> Result<()> {
        let deadline = Instant::now() + ALL_SERVERS_TIMEOUT;
        loop {
            match self.hash_mismatch(record).await {
                Ok(None) => return Ok(()),
                Ok(Some(m)) if Instant::now() > deadline => {
                    bail!("not every server applied stage {}: {m}", record.stage)
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Stores `record` if the stored one is still at `rev`; applies it here
    /// at once; returns the new revision.
    async fn put(&self, record: &Record, rev: i64) -> Result<i64> {
        let sealed = seal(&self.password()?, record);
        let rev = self
            .store
            .update(RECORD_KEY, sealed, rev)
            .await
            .context("storing the secrets encryption configuration (did another command change it meanwhile?)")?;
        self.sync().await?;
        Ok(rev)
    }

    async fn current(&self) -> Result<(i64, Record)> {
        read_record(&self.store, &self.password()?)
            .await?
            .context("secrets encryption is not configured on this cluster (start the servers with secrets-encryption: true)")
    }

    /// The status `rke2 secrets-encrypt status` prints.
    pub async fn status(&self) -> Result<Value> {
        let Some((_, mut record)) = read_record(&self.store, &self.password()?).await? else {
            return Ok(
                json!({"enable": false, "stage": "", "hashMatch": true, "hashError": "", "keys": []}),
            );
        };
        let mismatch = self.hash_mismatch(&record).await?;
        let mut keys = Vec::new();
        let enabled = record.enabled();
        if let Some(entry) = record.secrets_entry() {
            for (i, p) in entry.providers.iter_mut().enumerate() {
                if p.identity.is_some() && i == 0 {
                    keys.push(json!({"active": true, "type": "Identity", "name": "identity"}));
                }
                if let Some((kind, ks)) = key_provider(p) {
                    for (j, k) in ks.iter().enumerate() {
                        keys.push(json!({
                            "active": i == 0 && j == 0,
                            "type": if kind == "aescbc" { "AES-CBC" } else { "XSalsa20-POLY1305" },
                            "name": k.name,
                        }));
                    }
                }
            }
        }
        Ok(json!({
            "enable": enabled,
            "stage": record.stage,
            "hashMatch": mismatch.is_none(),
            "hashError": mismatch.unwrap_or_default(),
            "keys": keys,
        }))
    }

    /// Runs one command (see [`rke2_supervisor::server::ClusterInfo::encrypt_command`]).
    pub async fn command(self: &Arc<Self>, req: Value) -> Result<String, (StatusCode, String)> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, format!("{m}\n"));
        let internal = |e: anyhow::Error| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"));
        let stage = req["stage"].as_str().unwrap_or("").to_string();
        let force = req["force"].as_bool().unwrap_or(false);
        let skip = req["skip"].as_bool().unwrap_or(false);
        let Ok(guard) = self.busy.clone().try_lock_owned() else {
            return Err((
                StatusCode::CONFLICT,
                "another secrets-encrypt command is still running on this server\n".into(),
            ));
        };
        let (rev, mut record) = self.current().await.map_err(|e| bad(format!("{e:#}")))?;
        if matches!(
            record.stage.as_str(),
            STAGE_REENCRYPT_REQUEST | STAGE_REENCRYPT_ACTIVE
        ) && !force
        {
            return Err(bad(format!(
                "a reencryption is in progress (stage {}); wait for reencrypt_finished",
                record.stage
            )));
        }
        if !force && let Some(m) = self.hash_mismatch(&record).await.map_err(internal)? {
            return Err(bad(format!(
                "{m}: every server must run the current stage before the next one (or use --force)"
            )));
        }
        let want_stage = |allowed: &[&str]| {
            if force || allowed.contains(&record.stage.as_str()) {
                Ok(())
            } else {
                Err(bad(format!(
                    "cannot {stage} at stage {}; it is allowed at stage {}",
                    record.stage,
                    allowed.join(" or ")
                )))
            }
        };
        let kind_of = |r: &mut Record| -> Result<&'static str, (StatusCode, String)> {
            r.secrets_entry()
                .and_then(|e| {
                    e.providers
                        .iter_mut()
                        .find_map(|p| key_provider(p).map(|(k, _)| k))
                })
                .ok_or_else(|| {
                    bad("the configuration of secrets has no aescbc or secretbox provider".into())
                })
        };
        match stage.as_str() {
            "prepare" => {
                want_stage(&[STAGE_START, STAGE_REENCRYPT_FINISHED])?;
                let kind = kind_of(&mut record)?;
                prepare(&mut record, kind);
                self.put(&record, rev).await.map_err(internal)?;
                Ok("prepare completed successfully\n".into())
            }
            "rotate" => {
                want_stage(&[STAGE_PREPARE])?;
                rotate(&mut record);
                self.put(&record, rev).await.map_err(internal)?;
                Ok("rotate completed successfully\n".into())
            }
            "reencrypt" => {
                want_stage(&[STAGE_ROTATE, STAGE_START, STAGE_REENCRYPT_FINISHED])?;
                let drop_old = record.stage == STAGE_ROTATE && !skip;
                record.stage = STAGE_REENCRYPT_REQUEST.into();
                let rev = self.put(&record, rev).await.map_err(internal)?;
                let me = self.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Err(e) = me.reencrypt(rev, record, drop_old).await {
                        warn!(error = %format!("{e:#}"), "secrets encryption: reencryption failed");
                    }
                });
                Ok("reencryption started\n".into())
            }
            "rotate_keys" | "rotate-keys" => {
                want_stage(&[STAGE_START, STAGE_REENCRYPT_FINISHED])?;
                let kind = kind_of(&mut record)?;
                let me = self.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Err(e) = me.rotate_keys(rev, record, kind).await {
                        warn!(error = %format!("{e:#}"), "secrets encryption: key rotation failed");
                    }
                });
                Ok("keys rotation started: a new key is added, every secret is reencrypted with it, and the old key is removed\n".into())
            }
            "enable" | "disable" => {
                want_stage(&[STAGE_START, STAGE_REENCRYPT_FINISHED])?;
                let enable = stage == "enable";
                if record.enabled() == enable {
                    return Ok(format!("secrets encryption already {stage}d\n"));
                }
                let entry = record
                    .secrets_entry()
                    .ok_or_else(|| bad("no secrets entry".into()))?;
                let identity = entry.providers.iter().position(|p| p.identity.is_some());
                let keyed = entry.providers.iter().position(|p| p.identity.is_none());
                match (enable, identity, keyed) {
                    (true, Some(_), Some(k)) => {
                        let p = entry.providers.remove(k);
                        entry.providers.insert(0, p);
                    }
                    (false, Some(i), Some(_)) => {
                        let p = entry.providers.remove(i);
                        entry.providers.insert(0, p);
                    }
                    (false, None, Some(_)) => {
                        entry
                            .providers
                            .insert(0, rke2_datastore::encryption::identity());
                    }
                    _ => {
                        return Err(bad(
                            "the configuration of secrets has no key to enable".into()
                        ));
                    }
                }
                self.put(&record, rev).await.map_err(internal)?;
                Ok(format!(
                    "secrets encryption {stage}d; run `rke2 secrets-encrypt reencrypt` to rewrite existing secrets\n"
                ))
            }
            other => Err(bad(format!(
                "unknown command {other:?} (status, enable, disable, prepare, rotate, reencrypt, rotate-keys)"
            ))),
        }
    }

    /// Rewrites every secret with the first provider once every server
    /// runs it; drops the keys after the first when `drop_old`.
    async fn reencrypt(&self, rev: i64, mut record: Record, drop_old: bool) -> Result<()> {
        self.wait_all(&record).await?;
        record.stage = STAGE_REENCRYPT_ACTIVE.into();
        let rev = self.put(&record, rev).await?;
        let started = Instant::now();
        let config = EncryptionConfig::new(record.config.clone())?;
        let mut n = 0;
        for prefix in config.prefixes() {
            n += self
                .enc
                .reencrypt(prefix)
                .await
                .with_context(|| format!("reencrypting {prefix}"))?;
        }
        info!(count = n, elapsed = ?started.elapsed(), "secrets encryption: every secret reencrypted");
        if drop_old
            && let Some(entry) = record.secrets_entry()
            && let Some((_, keys)) = entry.providers.first_mut().and_then(key_provider)
        {
            keys.truncate(1);
        }
        record.stage = STAGE_REENCRYPT_FINISHED.into();
        self.put(&record, rev).await?;
        Ok(())
    }

    async fn rotate_keys(&self, rev: i64, mut record: Record, kind: &str) -> Result<()> {
        prepare(&mut record, kind);
        let rev = self.put(&record, rev).await?;
        info!("secrets encryption: new key added; waiting for every server");
        self.wait_all(&record).await?;
        rotate(&mut record);
        let rev = self.put(&record, rev).await?;
        info!("secrets encryption: new key first; waiting for every server");
        self.wait_all(&record).await?;
        self.reencrypt(rev, record, true).await
    }
}

/// Appends a new key to the keyed provider (readable, not yet written).
fn prepare(record: &mut Record, kind: &str) {
    if let Some(entry) = record.secrets_entry()
        && let Some((_, keys)) = entry.providers.iter_mut().find_map(key_provider)
    {
        keys.push(new_key(kind));
    }
    record.stage = STAGE_PREPARE.into();
}

/// Moves the newest (last) key first and the first last.
fn rotate(record: &mut Record) {
    if let Some(entry) = record.secrets_entry()
        && let Some((_, keys)) = entry.providers.iter_mut().find_map(key_provider)
    {
        let last = keys.len() - 1;
        keys.swap(0, last);
    }
    record.stage = STAGE_ROTATE.into();
}

fn command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let common = |c: Command| {
        c.arg(
            Arg::new("data-dir")
                .long("data-dir")
                .short('d')
                .env("RKE2_DATA_DIR")
                .default_value(rke2_config::DEFAULT_DATA_DIR)
                .help("Data dir of this server (its token and server CA are used)"),
        )
        .arg(
            Arg::new("token")
                .long("token")
                .short('t')
                .env("RKE2_TOKEN")
                .help("The cluster token (default: <data-dir>/server/token)"),
        )
        .arg(
            Arg::new("server")
                .long("server")
                .short('s')
                .env("RKE2_URL")
                .default_value("https://127.0.0.1:9345")
                .help("Supervisor URL of a server"),
        )
    };
    let force = || {
        Arg::new("force")
            .long("force")
            .short('f')
            .action(ArgAction::SetTrue)
            .help(
                "Proceed even if the servers do not all run the current stage, or at another stage",
            )
    };
    Command::new("rke2 secrets-encrypt")
        .about("Control secrets encryption and keys rotation")
        .subcommand_required(true)
        .subcommand(
            common(Command::new("status").about("Print current status of secrets encryption")).arg(
                Arg::new("output")
                    .long("output")
                    .short('o')
                    .default_value("text")
                    .value_parser(["text", "json"])
                    .help("Status format"),
            ),
        )
        .subcommand(common(
            Command::new("enable").about("Enable secrets encryption"),
        ))
        .subcommand(common(
            Command::new("disable").about("Disable secrets encryption"),
        ))
        .subcommand(
            common(Command::new("prepare").about("Prepare for encryption keys rotation"))
                .arg(force()),
        )
        .subcommand(
            common(Command::new("rotate").about("Rotate secrets encryption keys")).arg(force()),
        )
        .subcommand(
            common(Command::new("reencrypt").about("Reencrypt all data with new encryption key"))
                .arg(force())
                .arg(
                    Arg::new("skip")
                        .long("skip")
                        .action(ArgAction::SetTrue)
                        .help("Skip removing old key"),
                ),
        )
        .subcommand(common(Command::new("rotate-keys").about(
            "Dynamically rotates secrets encryption keys and re-encrypt secrets",
        )))
}

/// Runs `rke2 secrets-encrypt <args>`; returns the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let mut argv = vec![std::ffi::OsString::from("rke2 secrets-encrypt")];
    argv.extend(args.iter().cloned());
    let matches = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let (sub, m) = matches.subcommand().expect("subcommand_required");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rke2 secrets-encrypt: {e}");
            return 1;
        }
    };
    match runtime.block_on(run_cli(sub, m)) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("rke2 secrets-encrypt {sub}: {e:#}");
            1
        }
    }
}

async fn client(m: &clap::ArgMatches) -> Result<rke2_supervisor::SupervisorClient> {
    let data_dir = PathBuf::from(m.get_one::<String>("data-dir").expect("defaulted"));
    let server = m.get_one::<String>("server").expect("defaulted");
    let token_text = match m.get_one::<String>("token") {
        Some(t) => t.clone(),
        None => {
            let p = data_dir.join("server/token");
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {} (or give --token)", p.display()))?
        }
    };
    let token = rke2_trust::Token::parse(token_text.trim()).context("the token (--token)")?;
    let local_ca = data_dir.join("server/tls/server-ca.crt");
    let ca = if token.ca_hash.is_some() {
        let ca = rke2_supervisor::fetch_cacerts(server).await?;
        rke2_supervisor::verify_ca(&token, &ca)?;
        ca
    } else {
        std::fs::read(&local_ca).with_context(|| {
            format!(
                "reading {} (the token is a bare password; give the full K10 token to verify the server instead)",
                local_ca.display()
            )
        })?
    };
    Ok(rke2_supervisor::SupervisorClient::new(
        server,
        &ca,
        rke2_trust::SERVER_USER,
        &token.password,
    )?)
}

async fn run_cli(sub: &str, m: &clap::ArgMatches) -> Result<String> {
    let client = client(m).await?;
    let server = client.server_url().to_string();
    if sub == "status" {
        let v = client
            .encrypt_status()
            .await
            .with_context(|| format!("reading the status at {server}"))?;
        if m.get_one::<String>("output").map(String::as_str) == Some("json") {
            return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
        }
        return Ok(status_text(&v));
    }
    let flag = |k: &str| {
        m.try_get_one::<bool>(k)
            .ok()
            .flatten()
            .copied()
            .unwrap_or(false)
    };
    let req = json!({"stage": sub.replace('-', "_"), "force": flag("force"), "skip": flag("skip")});
    client
        .encrypt_command(&req)
        .await
        .with_context(|| format!("secrets-encrypt {sub} at {server}"))
}

/// k3s's status layout (also shown by `rke2 status`).
pub(crate) fn status_text(v: &Value) -> String {
    if v["stage"].as_str().unwrap_or("").is_empty() {
        return "Encryption Status: Disabled, no configuration file found\n".into();
    }
    let mut out = format!(
        "Encryption Status: {}\nCurrent Rotation Stage: {}\nServer Encryption Hashes: {}\n\n",
        if v["enable"] == true {
            "Enabled"
        } else {
            "Disabled"
        },
        v["stage"].as_str().unwrap_or(""),
        if v["hashMatch"] == true {
            "All hashes match".to_string()
        } else {
            v["hashError"].as_str().unwrap_or("").to_string()
        }
    );
    out.push_str("Active  Key Type           Name\n------  --------           ----\n");
    for k in v["keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            " {:<6} {:<18} {}\n",
            if k["active"] == true { "*" } else { "" },
            k["type"].as_str().unwrap_or(""),
            k["name"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            stage: STAGE_START.into(),
            config: EncryptionConfiguration::generate("aescbc", "aescbckey").unwrap(),
        }
    }

    fn names(r: &mut Record) -> Vec<String> {
        let entry = r.secrets_entry().unwrap();
        let (_, keys) = key_provider(&mut entry.providers[0]).unwrap();
        keys.iter().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn prepare_appends_and_rotate_moves_the_new_key_first() {
        let mut r = record();
        assert!(r.enabled());
        let h0 = r.hash();
        assert!(h0.starts_with("start-"));
        prepare(&mut r, "aescbc");
        assert_eq!(r.stage, "prepare");
        let n = names(&mut r);
        assert_eq!(n[0], "aescbckey");
        assert!(n[1].starts_with("aescbckey-20"), "{n:?}");
        assert_ne!(r.hash(), h0);
        rotate(&mut r);
        assert_eq!(r.stage, "rotate");
        let m = names(&mut r);
        assert_eq!(m, vec![n[1].clone(), n[0].clone()]);
        // Still a configuration kube-apiserver would accept.
        EncryptionConfig::new(r.config.clone()).unwrap();
    }

    #[test]
    fn record_seals_with_the_token_only() {
        let r = record();
        let sealed = seal("pw", &r);
        assert!(!String::from_utf8_lossy(&sealed).contains("aescbckey"));
        assert_eq!(open("pw", &sealed).unwrap(), r);
        assert!(open("other", &sealed).is_err());
    }

    #[test]
    fn status_text_is_k3s_layout() {
        let v = json!({"enable": true, "stage": "start", "hashMatch": true, "hashError": "",
            "keys": [{"active": true, "type": "AES-CBC", "name": "aescbckey"}]});
        let t = status_text(&v);
        assert!(t.starts_with("Encryption Status: Enabled\nCurrent Rotation Stage: start\nServer Encryption Hashes: All hashes match\n"), "{t}");
        assert!(t.contains(" *      AES-CBC            aescbckey"), "{t}");
        assert_eq!(
            status_text(&json!({"stage": ""})),
            "Encryption Status: Disabled, no configuration file found\n"
        );
    }
}
