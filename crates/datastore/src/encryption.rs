//! Encryption at rest of chosen resources (Secrets), as kube-apiserver does
//! it with `--encryption-provider-config`.
//!
//! [`EncryptionConfig`] reads an `EncryptionConfiguration`
//! (`apiserver.config.k8s.io/v1`, JSON or YAML). Each listed resource gets
//! its providers in order: values are written with the first provider and
//! read with whichever provider's prefix the stored value carries, so a
//! key stays readable for as long as it is listed anywhere. The stored
//! bytes are kube-apiserver's, so etcd data moves between the two:
//! - `aescbc`: `k8s:enc:aescbc:v1:<key name>:` + 16-byte random IV +
//!   AES-CBC ciphertext of the value with PKCS#7 padding (16, 24 or
//!   32-byte keys);
//! - `secretbox`: `k8s:enc:secretbox:v1:<key name>:` + 24-byte random
//!   nonce + NaCl `secretbox` (Poly1305 tag, then XSalsa20 ciphertext;
//!   32-byte keys);
//! - `identity`: the value as it is (and reading a value that carries an
//!   encryption prefix no listed key matches is an error, not garbage).
//!
//! [`EncryptingStore`] applies the configuration to an [`ObjectStore`] for
//! the keys of the listed resources (`/registry/<resource>/` for the core
//! group, `/registry/<group>/<resource>/` otherwise): everything above it
//! (gets, lists, watches, the watch cache, server-side apply) sees
//! plaintext. The configuration can be replaced while the store is in use
//! ([`EncryptingStore::reload`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::object_store::{ObjectStore, SharedStore, WatchStream};
use crate::store::{KeyValue, ListPage, StoreError};

/// The API version of the configuration file.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// The kind of the configuration file.
pub const KIND: &str = "EncryptionConfiguration";
/// What every encrypted value starts with (kube-apiserver's marker).
pub const ENCRYPTED_MARKER: &[u8] = b"k8s:enc:";

/// An `EncryptionConfiguration` that failed to read or check; the text
/// names the field (`resources[0].providers[1].aescbc.keys[0].secret`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A stored value that cannot be read (or a value that cannot be written).
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The value carries an encryption prefix no provider has a key for.
    #[error(
        "the stored value is encrypted ({0}) with a key that is not in the encryption configuration"
    )]
    UnknownKey(String),
    /// The value does not decrypt with the key its prefix names.
    #[error("the stored value does not decrypt with key {key}: {reason}")]
    Decrypt {
        /// The provider and key (`aescbc:aescbckey`).
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// The configuration file as written (field names of the upstream type).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfiguration {
    /// `apiserver.config.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `EncryptionConfiguration`.
    #[serde(default)]
    pub kind: String,
    /// The resources and their providers.
    #[serde(default)]
    pub resources: Vec<ResourceConfiguration>,
}

/// One entry of `resources`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceConfiguration {
    /// Resource names (`secrets`, `deployments.apps`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// The providers, the writer first.
    #[serde(default)]
    pub providers: Vec<ProviderConfiguration>,
}

/// One provider: exactly one of the fields is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfiguration {
    /// AES-CBC with PKCS#7 padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbc: Option<KeysConfiguration>,
    /// XSalsa20-Poly1305.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox: Option<KeysConfiguration>,
    /// No encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<serde_json::Value>,
    /// Providers kube-apiserver knows that this server does not implement;
    /// kept so they are refused by name instead of ignored.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The keys of an `aescbc` or `secretbox` provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeysConfiguration {
    /// The keys, the writer first.
    #[serde(default)]
    pub keys: Vec<Key>,
}

/// One named key (base64 `secret`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Key {
    /// The name written into every value's prefix.
    #[serde(default)]
    pub name: String,
    /// The key bytes, base64 (standard alphabet).
    #[serde(default)]
    pub secret: String,
}

impl EncryptionConfiguration {
    /// Reads a configuration (JSON or YAML) and checks it.
    pub fn parse(text: &[u8]) -> Result<Self, ConfigError> {
        let trimmed = text.iter().find(|b| !b.is_ascii_whitespace());
        let cfg: Self = if trimmed == Some(&b'{') {
            serde_json::from_slice(text).map_err(|e| ConfigError(format!("not valid JSON: {e}")))?
        } else {
            let s = std::str::from_utf8(text)
                .map_err(|e| ConfigError(format!("not UTF-8 text: {e}")))?;
            serde_saphyr::from_str(s).map_err(|e| ConfigError(format!("not valid YAML: {e}")))?
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads and checks the file at `path`; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// A configuration for `secrets` with one new random key of
    /// `provider` (`aescbc` or `secretbox`) named `name`, then `identity`.
    pub fn generate(provider: &str, name: &str) -> Result<Self, ConfigError> {
        let key = Key {
            name: name.to_string(),
            secret: B64.encode(rand::random::<[u8; 32]>()),
        };
        let keys = Some(KeysConfiguration { keys: vec![key] });
        let first = match provider {
            "aescbc" => ProviderConfiguration {
                aescbc: keys,
                ..Default::default()
            },
            "secretbox" => ProviderConfiguration {
                secretbox: keys,
                ..Default::default()
            },
            other => {
                return Err(ConfigError(format!(
                    "unknown provider {other:?} (valid: aescbc, secretbox)"
                )));
            }
        };
        Ok(Self {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            resources: vec![ResourceConfiguration {
                resources: vec!["secrets".into()],
                providers: vec![first, identity()],
            }],
        })
    }

    /// The file bytes as written to disk and shared between servers.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("configuration serializes")
    }

    /// Checks every field kube-apiserver checks that matters here.
    pub fn check(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.kind != KIND {
            return err(format!("kind: want {KIND:?}, got {:?}", self.kind));
        }
        if self.api_version != API_VERSION {
            return err(format!(
                "apiVersion: want {API_VERSION:?}, got {:?}",
                self.api_version
            ));
        }
        if self.resources.is_empty() {
            return err("resources: at least one entry is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.resources.iter().enumerate() {
            if r.resources.is_empty() {
                return err(format!("resources[{i}].resources: must not be empty"));
            }
            for (j, name) in r.resources.iter().enumerate() {
                if name.contains('*') {
                    return err(format!(
                        "resources[{i}].resources[{j}]: wildcard {name:?} is not supported; name the resources"
                    ));
                }
                if name.is_empty() || name.contains('/') {
                    return err(format!(
                        "resources[{i}].resources[{j}]: {name:?} is not a resource name"
                    ));
                }
                if !seen.insert(name.clone()) {
                    return err(format!(
                        "resources[{i}].resources[{j}]: {name:?} is listed twice"
                    ));
                }
            }
            if r.providers.is_empty() {
                return err(format!("resources[{i}].providers: must not be empty"));
            }
            for (j, p) in r.providers.iter().enumerate() {
                Provider::build(p)
                    .map_err(|m| ConfigError(format!("resources[{i}].providers[{j}]{m}")))?;
            }
        }
        Ok(())
    }

    /// A short hash of the configuration (hex SHA-256 of its JSON form).
    pub fn hash(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.to_json()))
    }
}

/// The `identity` provider entry.
pub fn identity() -> ProviderConfiguration {
    ProviderConfiguration {
        identity: Some(serde_json::json!({})),
        ..Default::default()
    }
}

/// The etcd key prefix of a resource name (`secrets`, `deployments.apps`).
pub fn resource_prefix(name: &str) -> String {
    match name.split_once('.') {
        Some((plural, group)) => format!("/registry/{group}/{plural}/"),
        None => format!("/registry/{name}/"),
    }
}

enum Cipher {
    Aes128(Vec<u8>),
    Aes192(Vec<u8>),
    Aes256(Vec<u8>),
    SecretBox([u8; 32]),
}

struct NamedKey {
    /// `k8s:enc:<provider>:v1:<name>:`
    prefix: Vec<u8>,
    /// `<provider>:<name>` for messages.
    label: String,
    cipher: Cipher,
}

enum Provider {
    Keys(Vec<NamedKey>),
    Identity,
}

impl Provider {
    /// Builds a provider; the error text is the field path suffix and
    /// the problem (`.aescbc.keys[0].secret: ...`).
    fn build(p: &ProviderConfiguration) -> Result<Self, String> {
        let set = p.aescbc.is_some() as u8
            + p.secretbox.is_some() as u8
            + p.identity.is_some() as u8
            + p.other.len() as u8;
        if set != 1 {
            return Err(
                ": exactly one provider (aescbc, secretbox, identity) must be given".to_string(),
            );
        }
        if let Some(name) = p.other.keys().next() {
            return Err(format!(
                ": unknown provider {name:?} (this server implements aescbc, secretbox and identity)"
            ));
        }
        if p.identity.is_some() {
            return Ok(Provider::Identity);
        }
        let (kind, keys) = match (&p.aescbc, &p.secretbox) {
            (Some(k), _) => ("aescbc", k),
            (_, Some(k)) => ("secretbox", k),
            _ => unreachable!("one provider is set"),
        };
        if keys.keys.is_empty() {
            return Err(format!(".{kind}.keys: at least one key is required"));
        }
        let mut names = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, k) in keys.keys.iter().enumerate() {
            let field = format!(".{kind}.keys[{i}]");
            if k.name.is_empty() {
                return Err(format!("{field}.name: must not be empty"));
            }
            // Names may hold ':' (k3s names rotated keys with an RFC 3339
            // time): a value's key is found by its whole prefix.
            if !names.insert(k.name.clone()) {
                return Err(format!("{field}.name: {:?} is used twice", k.name));
            }
            let bytes = B64
                .decode(k.secret.trim())
                .map_err(|e| format!("{field}.secret: not valid base64: {e}"))?;
            let cipher = match (kind, bytes.len()) {
                ("aescbc", 16) => Cipher::Aes128(bytes),
                ("aescbc", 24) => Cipher::Aes192(bytes),
                ("aescbc", 32) => Cipher::Aes256(bytes),
                ("aescbc", n) => {
                    return Err(format!(
                        "{field}.secret: the key is {n} bytes; aescbc needs 16, 24 or 32"
                    ));
                }
                (_, 32) => Cipher::SecretBox(bytes.try_into().expect("32 bytes")),
                (_, n) => {
                    return Err(format!(
                        "{field}.secret: the key is {n} bytes; secretbox needs 32"
                    ));
                }
            };
            out.push(NamedKey {
                prefix: format!("k8s:enc:{kind}:v1:{}:", k.name).into_bytes(),
                label: format!("{kind}:{}", k.name),
                cipher,
            });
        }
        Ok(Provider::Keys(out))
    }
}

fn cbc_encrypt(key: &Cipher, plain: &[u8]) -> Vec<u8> {
    use cbc::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    let iv: [u8; 16] = rand::random();
    let ct = match key {
        Cipher::Aes128(k) => cbc::Encryptor::<aes::Aes128>::new(k[..].into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        Cipher::Aes192(k) => cbc::Encryptor::<aes::Aes192>::new(k[..].into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        Cipher::Aes256(k) => cbc::Encryptor::<aes::Aes256>::new(k[..].into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        Cipher::SecretBox(_) => unreachable!("not a CBC key"),
    };
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    out
}

fn cbc_decrypt(key: &Cipher, data: &[u8]) -> Result<Vec<u8>, String> {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    if data.len() < 32 {
        return Err("the stored data was shorter than the required size".into());
    }
    let (iv, ct) = data.split_at(16);
    if !ct.len().is_multiple_of(16) {
        return Err("the stored data is not a multiple of the block size".into());
    }
    let iv: [u8; 16] = iv.try_into().expect("16 bytes");
    let r = match key {
        Cipher::Aes128(k) => cbc::Decryptor::<aes::Aes128>::new(k[..].into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ct),
        Cipher::Aes192(k) => cbc::Decryptor::<aes::Aes192>::new(k[..].into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ct),
        Cipher::Aes256(k) => cbc::Decryptor::<aes::Aes256>::new(k[..].into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ct),
        Cipher::SecretBox(_) => unreachable!("not a CBC key"),
    };
    r.map_err(|_| "invalid padding on input (wrong key or damaged data)".into())
}

fn secretbox_encrypt(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let nonce: [u8; 24] = rand::random();
    let sealed = crypto_secretbox::XSalsa20Poly1305::new(key.into())
        .encrypt(&nonce.into(), plain)
        .expect("secretbox encryption of an in-memory value");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    out
}

fn secretbox_decrypt(key: &[u8; 32], data: &[u8]) -> Result<Vec<u8>, String> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    if data.len() < 24 + 16 {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, sealed) = data.split_at(24);
    let nonce: [u8; 24] = nonce.try_into().expect("24 bytes");
    crypto_secretbox::XSalsa20Poly1305::new(key.into())
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| "output array was not large enough for encryption (authentication failed: wrong key or damaged data)".into())
}

impl NamedKey {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let body = match &self.cipher {
            Cipher::SecretBox(k) => secretbox_encrypt(k, plain),
            c => cbc_encrypt(c, plain),
        };
        let mut out = self.prefix.clone();
        out.extend_from_slice(&body);
        out
    }

    fn open(&self, body: &[u8]) -> Result<Vec<u8>, TransformError> {
        match &self.cipher {
            Cipher::SecretBox(k) => secretbox_decrypt(k, body),
            c => cbc_decrypt(c, body),
        }
        .map_err(|reason| TransformError::Decrypt {
            key: self.label.clone(),
            reason,
        })
    }
}

/// The providers of one resource, in order.
pub struct Transformer {
    providers: Vec<Provider>,
}

impl Transformer {
    fn new(cfg: &[ProviderConfiguration]) -> Result<Self, ConfigError> {
        Ok(Self {
            providers: cfg
                .iter()
                .map(Provider::build)
                .collect::<Result<_, _>>()
                .map_err(ConfigError)?,
        })
    }

    /// The value as stored: sealed with the first provider's first key.
    pub fn to_storage(&self, plain: &[u8]) -> Vec<u8> {
        match self.providers.first() {
            Some(Provider::Keys(keys)) => keys[0].seal(plain),
            _ => plain.to_vec(),
        }
    }

    /// The plaintext of a stored value: the key its prefix names, or the
    /// value itself when it is not encrypted and `identity` is listed.
    pub fn from_storage(&self, stored: &[u8]) -> Result<Vec<u8>, TransformError> {
        for p in &self.providers {
            if let Provider::Keys(keys) = p {
                for k in keys {
                    if let Some(body) = stored.strip_prefix(&k.prefix[..]) {
                        return k.open(body);
                    }
                }
            }
        }
        if stored.starts_with(ENCRYPTED_MARKER) {
            let end = stored
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b':')
                .map(|(i, _)| i)
                .nth(4)
                .unwrap_or(stored.len().min(40));
            return Err(TransformError::UnknownKey(
                String::from_utf8_lossy(&stored[..end]).into_owned(),
            ));
        }
        if self
            .providers
            .iter()
            .any(|p| matches!(p, Provider::Identity))
        {
            return Ok(stored.to_vec());
        }
        Err(TransformError::UnknownKey(
            "no encryption prefix, and identity is not listed".into(),
        ))
    }
}

/// A checked configuration ready to transform values.
pub struct EncryptionConfig {
    /// The configuration as read.
    pub config: EncryptionConfiguration,
    rules: Vec<(String, Arc<Transformer>)>,
}

impl EncryptionConfig {
    /// Builds the transformers of a configuration (checking it).
    pub fn new(config: EncryptionConfiguration) -> Result<Self, ConfigError> {
        config.check()?;
        let mut rules = Vec::new();
        for r in &config.resources {
            let t = Arc::new(Transformer::new(&r.providers)?);
            for name in &r.resources {
                rules.push((resource_prefix(name), t.clone()));
            }
        }
        Ok(Self { config, rules })
    }

    /// The transformer for an etcd key, when its resource is listed.
    pub fn for_key(&self, key: &str) -> Option<&Transformer> {
        self.rules
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, t)| &**t)
    }

    /// The key prefixes of the listed resources.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(p, _)| p.as_str())
    }
}

/// An [`ObjectStore`] that encrypts the values of the configured resources
/// on the way in and decrypts them on the way out.
pub struct EncryptingStore {
    inner: SharedStore,
    config: Arc<ArcSwapOption<EncryptionConfig>>,
}

fn corrupt(key: &str, e: TransformError) -> StoreError {
    StoreError::Transform {
        key: key.to_string(),
        message: e.to_string(),
    }
}

impl EncryptingStore {
    /// Wraps `inner`; with `config` `None` every value passes as it is.
    pub fn new(inner: SharedStore, config: Option<EncryptionConfig>) -> Self {
        Self {
            inner,
            config: Arc::new(ArcSwapOption::new(config.map(Arc::new))),
        }
    }

    /// Replaces the configuration for every later read and write.
    pub fn reload(&self, config: Option<EncryptionConfig>) {
        self.config.store(config.map(Arc::new));
    }

    /// The configuration in force.
    pub fn config(&self) -> Option<Arc<EncryptionConfig>> {
        self.config.load_full()
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        match self.config.load().as_ref().and_then(|c| c.for_key(key)) {
            Some(t) => t.to_storage(&value),
            None => value,
        }
    }

    fn open_with(
        config: Option<&EncryptionConfig>,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        match config.and_then(|c| c.for_key(key)) {
            Some(t) => t.from_storage(&value).map_err(|e| corrupt(key, e)),
            None => Ok(value),
        }
    }

    fn open(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Self::open_with(self.config.load().as_deref(), key, value)
    }

    /// Rewrites every key under `prefix` with the configuration in force
    /// (`secrets-encrypt reencrypt`); returns how many were rewritten. A
    /// key changed meanwhile was written with the configuration in force
    /// already and is skipped.
    pub async fn reencrypt(&self, prefix: &str) -> Result<usize, StoreError> {
        let page = self.inner.list(prefix, None, 0, 0).await?;
        let mut n = 0;
        for kv in page.items {
            let plain = self.open(&kv.key, kv.value)?;
            match self.update(&kv.key, plain, kv.mod_revision).await {
                Ok(_) => n += 1,
                Err(StoreError::Conflict { .. } | StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

impl ObjectStore for EncryptingStore {
    fn healthy(&self) -> BoxFuture<'_, bool> {
        self.inner.healthy()
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.inner.current_revision()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            match self.inner.get(key).await? {
                Some(mut kv) => {
                    kv.value = self.open(key, std::mem::take(&mut kv.value))?;
                    Ok(Some(kv))
                }
                None => Ok(None),
            }
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        let sealed = self.seal(key, value);
        self.inner.create(key, sealed)
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        let sealed = self.seal(key, value);
        self.inner.update(key, sealed, expected)
    }

    fn delete<'a>(&'a self, key: &'a str, expected: i64) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.inner.delete(key, expected)
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start: Option<&'a str>,
        limit: i64,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        Box::pin(async move {
            let mut page = self.inner.list(prefix, start, limit, revision).await?;
            let config = self.config.load_full();
            for kv in &mut page.items {
                kv.value =
                    Self::open_with(config.as_deref(), &kv.key, std::mem::take(&mut kv.value))?;
            }
            Ok(page)
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let stream = self.inner.watch(prefix, after_revision).await?;
            Ok(self.decrypting(stream))
        })
    }

    fn watch_without_prev<'a>(
        &'a self,
        prefix: &'a str,
        after_revision: i64,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let stream = self
                .inner
                .watch_without_prev(prefix, after_revision)
                .await?;
            Ok(self.decrypting(stream))
        })
    }

    fn keep_registered(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
        stop: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        let sealed = self.seal(&key, value);
        self.inner.keep_registered(key, sealed, ttl, stop)
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.compact(revision)
    }
}

impl EncryptingStore {
    /// Decrypts the values of a watch with the configuration in force when
    /// each event arrives (a reload applies to watches already open).
    fn decrypting(&self, stream: WatchStream) -> WatchStream {
        let cfg = self.config.clone();
        stream
            .map(move |ev| {
                let mut ev = ev?;
                if ev.key.is_empty() {
                    return Ok(ev);
                }
                let current = cfg.load_full();
                let c = current.as_deref();
                if !ev.value.is_empty() {
                    ev.value = Self::open_with(c, &ev.key, std::mem::take(&mut ev.value))?;
                }
                if let Some(prev) = ev.prev_value.take() {
                    ev.prev_value = Some(Self::open_with(c, &ev.key, prev)?);
                }
                Ok(ev)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key32() -> String {
        B64.encode((0u8..32).collect::<Vec<_>>())
    }

    fn config(providers: &str) -> EncryptionConfig {
        let text = format!(
            r#"{{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1",
                "resources":[{{"resources":["secrets"],"providers":{providers}}}]}}"#
        );
        EncryptionConfig::new(EncryptionConfiguration::parse(text.as_bytes()).unwrap()).unwrap()
    }

    fn stored(prefix: &str, body_b64: &str) -> Vec<u8> {
        let mut v = prefix.as_bytes().to_vec();
        v.extend(B64.decode(body_b64).unwrap());
        v
    }

    /// A value made with `openssl enc -aes-256-cbc -K 000102..1f
    /// -iv 000102..0f` (PKCS#7 padding), laid out as kube-apiserver
    /// stores it: prefix, IV, ciphertext.
    #[test]
    fn aescbc_reads_an_openssl_vector() {
        let c = config(&format!(
            r#"[{{"aescbc":{{"keys":[{{"name":"k1","secret":"{}"}}]}}}},{{"identity":{{}}}}]"#,
            key32()
        ));
        let t = c.for_key("/registry/secrets/default/a").unwrap();
        let mut body = (0u8..16).collect::<Vec<_>>();
        body.extend(
            B64.decode("Hpn0KofbnvirKiie/IIFjVOLZlA7XeGodbnheOrmYaQVbwCFcjWbSyuYDUpLaceR")
                .unwrap(),
        );
        let mut value = b"k8s:enc:aescbc:v1:k1:".to_vec();
        value.extend(body);
        assert_eq!(
            t.from_storage(&value).unwrap(),
            br#"{"kind":"Secret","apiVersion":"v1"}"#
        );
        // Round trip with a random IV; two writes differ.
        let a = t.to_storage(b"hello");
        let b = t.to_storage(b"hello");
        assert!(a.starts_with(b"k8s:enc:aescbc:v1:k1:"));
        assert_ne!(a, b);
        assert_eq!(a.len(), b"k8s:enc:aescbc:v1:k1:".len() + 16 + 16);
        assert_eq!(t.from_storage(&a).unwrap(), b"hello");
        // Plaintext written before encryption is still read (identity).
        assert_eq!(t.from_storage(b"{}").unwrap(), b"{}");
        // Other resources are not touched.
        assert!(c.for_key("/registry/configmaps/default/a").is_none());
    }

    /// A value sealed with PyNaCl's `SecretBox` (key 00..1f, nonce
    /// 0x64..0x7b), the layout kube-apiserver stores: prefix, nonce, tag,
    /// ciphertext.
    #[test]
    fn secretbox_reads_a_nacl_vector() {
        let c = config(&format!(
            r#"[{{"secretbox":{{"keys":[{{"name":"sb","secret":"{}"}}]}}}}]"#,
            key32()
        ));
        let t = c.for_key("/registry/secrets/x/y").unwrap();
        let value = stored(
            "k8s:enc:secretbox:v1:sb:",
            "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7qpPSwr4v8lwoOkPM+qHfn3mb8qBU0uzTkq5G90Xh1zpD",
        );
        assert_eq!(t.from_storage(&value).unwrap(), br#"{"kind":"Secret"}"#);
        let a = t.to_storage(b"hello");
        assert_eq!(t.from_storage(&a).unwrap(), b"hello");
        // A flipped byte fails authentication.
        let mut bad = a.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            t.from_storage(&bad),
            Err(TransformError::Decrypt { .. })
        ));
        // Without identity, plaintext is not accepted.
        assert!(t.from_storage(b"{}").is_err());
    }

    #[test]
    fn reads_with_any_listed_key_and_writes_with_the_first() {
        let old = B64.encode([7u8; 32]);
        let new = B64.encode([9u8; 32]);
        let before = config(&format!(
            r#"[{{"aescbc":{{"keys":[{{"name":"old","secret":"{old}"}}]}}}},{{"identity":{{}}}}]"#
        ));
        let during = config(&format!(
            r#"[{{"aescbc":{{"keys":[{{"name":"new","secret":"{new}"}},{{"name":"old","secret":"{old}"}}]}}}},{{"identity":{{}}}}]"#
        ));
        let after = config(&format!(
            r#"[{{"aescbc":{{"keys":[{{"name":"new","secret":"{new}"}}]}}}},{{"identity":{{}}}}]"#
        ));
        let k = "/registry/secrets/a/b";
        let v_old = before.for_key(k).unwrap().to_storage(b"s");
        assert_eq!(
            during.for_key(k).unwrap().from_storage(&v_old).unwrap(),
            b"s"
        );
        let v_new = during.for_key(k).unwrap().to_storage(b"s");
        assert!(v_new.starts_with(b"k8s:enc:aescbc:v1:new:"));
        let e = after.for_key(k).unwrap().from_storage(&v_old).unwrap_err();
        assert!(e.to_string().contains("k8s:enc:aescbc:v1:old"), "{e}");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let parse = |p: &str| {
            EncryptionConfiguration::parse(
                format!(
                    r#"{{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1",
                        "resources":[{{"resources":["secrets"],"providers":{p}}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap_err()
            .to_string()
        };
        let short = B64.encode([1u8; 20]);
        let e = parse(&format!(
            r#"[{{"aescbc":{{"keys":[{{"name":"k","secret":"{short}"}}]}}}}]"#
        ));
        assert!(
            e.contains("resources[0].providers[0].aescbc.keys[0].secret") && e.contains("20 bytes"),
            "{e}"
        );
        let e = parse(r#"[{"aescbc":{"keys":[{"name":"k","secret":"%%%"}]}}]"#);
        assert!(e.contains("aescbc.keys[0].secret: not valid base64"), "{e}");
        let e = parse(r#"[{"kms":{"name":"x"}}]"#);
        assert!(e.contains("providers[0]: unknown provider \"kms\""), "{e}");
        let e = parse(&format!(
            r#"[{{"secretbox":{{"keys":[{{"name":"k","secret":"{}"}}]}}}}]"#,
            B64.encode([1u8; 16])
        ));
        assert!(e.contains("secretbox needs 32"), "{e}");
        let e = EncryptionConfiguration::parse(b"kind: Other\n").unwrap_err();
        assert!(e.to_string().contains("kind:"), "{e}");
        // YAML is read too.
        let yaml = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: {}\n  - identity: {{}}\n",
            key32()
        );
        EncryptionConfiguration::parse(yaml.as_bytes()).unwrap();
    }

    #[test]
    fn generated_configuration_round_trips() {
        let c = EncryptionConfiguration::generate("aescbc", "aescbckey").unwrap();
        let again = EncryptionConfiguration::parse(&c.to_json()).unwrap();
        assert_eq!(again, c);
        assert_eq!(c.resources[0].providers.len(), 2);
        assert!(EncryptionConfiguration::generate("kms", "x").is_err());
    }

    #[tokio::test]
    async fn the_store_encrypts_only_listed_resources_and_reencrypts() {
        let mem: SharedStore = Arc::new(crate::MemoryStore::new());
        let old = config(&format!(
            r#"[{{"aescbc":{{"keys":[{{"name":"old","secret":"{}"}}]}}}},{{"identity":{{}}}}]"#,
            key32()
        ));
        let store = EncryptingStore::new(mem.clone(), Some(old));
        store
            .create("/registry/secrets/a/s", b"{\"s\":1}".to_vec())
            .await
            .unwrap();
        store
            .create("/registry/configmaps/a/c", b"{\"c\":1}".to_vec())
            .await
            .unwrap();
        let raw = mem.get("/registry/secrets/a/s").await.unwrap().unwrap();
        assert!(raw.value.starts_with(b"k8s:enc:aescbc:v1:old:"));
        let raw = mem.get("/registry/configmaps/a/c").await.unwrap().unwrap();
        assert_eq!(raw.value, b"{\"c\":1}");
        let got = store.get("/registry/secrets/a/s").await.unwrap().unwrap();
        assert_eq!(got.value, b"{\"s\":1}");
        let page = store.list("/registry/secrets/", None, 0, 0).await.unwrap();
        assert_eq!(page.items[0].value, b"{\"s\":1}");
        // A watch sees plaintext, also after a reload.
        let rev = store.current_revision().await.unwrap();
        let mut w = store.watch("/registry/secrets/", rev).await.unwrap();
        let new = config(&format!(
            r#"[{{"secretbox":{{"keys":[{{"name":"new","secret":"{}"}}]}}}},{{"aescbc":{{"keys":[{{"name":"old","secret":"{}"}}]}}}},{{"identity":{{}}}}]"#,
            B64.encode([5u8; 32]),
            key32()
        ));
        store.reload(Some(new));
        assert_eq!(store.reencrypt("/registry/secrets/").await.unwrap(), 1);
        let ev = w.next().await.unwrap().unwrap();
        assert_eq!(ev.value, b"{\"s\":1}");
        assert_eq!(ev.prev_value.as_deref(), Some(&b"{\"s\":1}"[..]));
        let raw = mem.get("/registry/secrets/a/s").await.unwrap().unwrap();
        assert!(raw.value.starts_with(b"k8s:enc:secretbox:v1:new:"));
        // Without configuration, values are stored as they are.
        store.reload(None);
        store
            .create("/registry/secrets/a/t", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(
            mem.get("/registry/secrets/a/t")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"{}"
        );
    }
}
