//! Configuration of `rke2 server` and `rke2 agent`.
//!
//! [`load`] turns the command line, the config file (`/etc/rancher/rke2/config.yaml`
//! unless `-c/--config` or `RKE2_CONFIG_FILE` says otherwise), its drop-ins
//! (`<config file>.d/*.yaml|*.yml` in name order, i.e. `config.yaml.d` for the
//! default file) and the `RKE2_*` environment into one validated [`Config`],
//! the way RKE2/k3s do:
//!
//! * precedence: flags > environment > files > defaults;
//! * a file key is the flag name without dashes; `key+:` appends to the list
//!   built so far, otherwise a later file replaces an earlier value;
//! * a list given on the command line (or in the environment, comma separated)
//!   replaces the list from the files;
//! * unknown keys produce a warning (in [`Loaded::warnings`]); keys that only
//!   exist for the other role are ignored silently (server and agent share the
//!   config file);
//! * bad values produce a [`ConfigError`] naming where the value came from
//!   (file and line, flag or env var), the key and the value.
//!
//! The crate never writes anything. Callers print the error and exit with
//! [`ConfigError::exit_code`] (2 for every error, 0 for `--help`/`--version`).

mod checks;
mod flags;
mod yaml;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::parser::ValueSource;
use serde_json::Value;

pub use checks::{check_cluster_dns, check_server_token};
pub use flags::{
    DEFAULT_CONFIG_FILE, DEFAULT_DATA_DIR, DEFAULT_PAUSE_IMAGE, DEFAULT_WRITE_KUBECONFIG,
};
use flags::{FLAGS, FlagDef, Kind};

/// Which `rke2` sub-command is being configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `rke2 server`: supervisor, API server, etcd, controllers and a node.
    Server,
    /// `rke2 agent`: a worker node joining through `server`.
    Agent,
}

impl Role {
    /// The sub-command name (`"server"` or `"agent"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Effect of a node taint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    /// Pods that do not tolerate the taint are not scheduled.
    NoSchedule,
    /// The scheduler tries to avoid the node.
    PreferNoSchedule,
    /// Pods that do not tolerate the taint are evicted.
    NoExecute,
}

impl TaintEffect {
    /// The Kubernetes spelling (`"NoSchedule"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

impl FromStr for TaintEffect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            other => Err(format!(
                "taint effect {other:?} is not one of NoSchedule, PreferNoSchedule, NoExecute"
            )),
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node taint from `node-taint`, written `key=value:Effect` or `key:Effect`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Optional taint value.
    pub value: Option<String>,
    /// Taint effect.
    pub effect: TaintEffect,
}

impl FromStr for Taint {
    type Err = String;
    /// Parses `key=value:Effect` or `key:Effect`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kv, effect) = s.rsplit_once(':').ok_or_else(|| {
            "taint has no effect (want key=value:Effect or key:Effect)".to_string()
        })?;
        let effect: TaintEffect = effect.parse()?;
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err("taint key is empty".into());
        }
        Ok(Taint {
            key: key.to_string(),
            value,
            effect,
        })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}:{}", self.key, v, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

/// Where RKE2 looks for the audit policy when `audit-policy-file` is not
/// given.
pub const DEFAULT_AUDIT_POLICY_FILE: &str = "/etc/rancher/rke2/audit-policy.yaml";

/// The merged, validated configuration of one `rke2 server|agent` run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Which sub-command this configures.
    pub role: Role,
    /// The main config file that was used (it may not exist when it is the default).
    pub config_file: PathBuf,
    /// State directory (`data-dir`, default `/var/lib/rancher/rke2`).
    pub data_dir: PathBuf,
    /// Cluster token (`token`, or the trimmed content of `token-file`).
    pub token: Option<String>,
    /// Agent-only token (`agent-token` or `agent-token-file`); server only.
    pub agent_token: Option<String>,
    /// Supervisor URL to join (`server`, env `RKE2_URL`); always set for agents.
    pub server: Option<String>,
    /// Extra Subject Alternative Names for the serving certificates (server only).
    pub tls_san: Vec<String>,
    /// Taints registered on the node.
    pub node_taints: Vec<Taint>,
    /// Labels registered on the node, in the order given.
    pub node_labels: Vec<(String, String)>,
    /// Where the server writes the admin kubeconfig.
    pub write_kubeconfig: PathBuf,
    /// Mode of the admin kubeconfig; `None` means the caller applies 0600.
    pub write_kubeconfig_mode: Option<u32>,
    /// Node name (default: the host name, lowercased). `with-node-id` is applied by the caller.
    pub node_name: String,
    /// Node addresses; empty means the caller picks one.
    pub node_ips: Vec<IpAddr>,
    /// Address the API server advertises; `None` means the node IP.
    pub advertise_address: Option<IpAddr>,
    /// Address to listen on; `None` means all interfaces.
    pub bind_address: Option<IpAddr>,
    /// Pod network.
    pub cluster_cidr: ipnet::IpNet,
    /// Service network.
    pub service_cidr: ipnet::IpNet,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Packaged components not to deploy.
    pub disable: Vec<String>,
    /// Append a random id to the node name (done by the caller).
    pub with_node_id: bool,
    /// Kubernetes API port (6443).
    pub https_listen_port: u16,
    /// Supervisor port (9345).
    pub supervisor_port: u16,
    /// Local port of the supervisor load balancer (`lb-server-port`); the
    /// apiserver load balancer listens one port below.
    pub lb_server_port: u16,
    /// etcd executable (looked up in PATH by the caller when it has no `/`).
    pub etcd_binary: String,
    /// The pod sandbox image (`pause-image`).
    pub pause_image: String,
    /// The cluster DNS service IP (`cluster-dns`; default: the 10th
    /// address of `service-cidr`).
    pub cluster_dns: IpAddr,
    /// The host resolv.conf for pods with `dnsPolicy: Default` and the
    /// DNS addon's upstreams (`resolv-conf`); without it the node picks
    /// one as RKE2 does.
    pub resolv_conf: Option<PathBuf>,
    /// The security benchmark profile (`profile`).
    pub profile: Option<Profile>,
    /// PodSecurity admission's configuration file
    /// (`pod-security-admission-config-file`); without it the server uses
    /// RKE2's default for the profile. Read and checked by the server.
    pub pod_security_admission_config_file: Option<PathBuf>,
    /// The audit policy (`audit-policy-file`); unset, the server reads
    /// [`DEFAULT_AUDIT_POLICY_FILE`] when it exists and audits nothing
    /// otherwise.
    pub audit_policy_file: Option<PathBuf>,
    /// `secrets-encryption` (default true, as RKE2): a new cluster
    /// encrypts Secrets at rest.
    pub secrets_encryption: bool,
    /// `secrets-encryption-provider`: `aescbc` (default) or `secretbox`.
    pub secrets_encryption_provider: String,
    /// Debug logging.
    pub debug: bool,
    /// `service-node-port-range`: the NodePorts the apiserver allocates
    /// from (inclusive).
    pub service_node_port_range: (u16, u16),
    /// `disable-kube-proxy`: no service proxy on this node.
    pub disable_kube_proxy: bool,
    /// `enable-servicelb`: LoadBalancer Services get the nodes' addresses
    /// (RKE2's ServiceLB).
    pub enable_servicelb: bool,
    /// `default-local-storage-path`: where the built-in local-path
    /// provisioner makes the volumes' directories on the nodes
    /// (`<data-dir>/storage` when unset, as k3s's `<data-dir>/storage`).
    pub default_local_storage_path: PathBuf,
    /// etcd snapshots: `etcd-snapshot-*`, `etcd-disable-snapshots` and
    /// the `etcd-s3*` keys (server only; an agent gets the defaults).
    pub etcd_snapshot: EtcdSnapshotConfig,
    /// `cluster-reset`: start etcd as the only member of a new cluster
    /// (from this server's data, or from `cluster-reset-restore-path`),
    /// then exit with the next steps.
    pub cluster_reset: bool,
    /// `cluster-reset-restore-path`: the snapshot to restore (a file, or
    /// its name in the bucket with `etcd-s3`); only with `cluster-reset`.
    pub cluster_reset_restore_path: Option<String>,
    /// kubelet's node-pressure eviction settings: `kubelet-arg:
    /// [eviction-hard=…, eviction-soft=…, eviction-soft-grace-period=…,
    /// eviction-max-pod-grace-period=…,
    /// eviction-pressure-transition-period=…, eviction-minimum-reclaim=…]`,
    /// else RKE2's defaults (`imagefs.available<5%,nodefs.available<5%`,
    /// minimum reclaim 10% each); with the node's reservations
    /// (`kube-reserved=…`, `system-reserved=…`) and image garbage
    /// collection thresholds (`image-gc-high-threshold=…`,
    /// `image-gc-low-threshold=…`).
    pub eviction: rke2_apimachinery::eviction::EvictionConfig,
    /// The HPA controller's settings: `kube-controller-manager-arg:
    /// [horizontal-pod-autoscaler-sync-period=…, …-tolerance=…,
    /// …-downscale-stabilization=…, …-cpu-initialization-period=…,
    /// …-initial-readiness-delay=…]`, else upstream's defaults.
    pub hpa: rke2_apimachinery::autoscaling::HpaSettings,
}

/// What `rke2 server` and `rke2 etcd-snapshot` need to take, keep and
/// store etcd snapshots, as RKE2's `etcd-snapshot-*` keys say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSnapshotConfig {
    /// `etcd-disable-snapshots`: no scheduled snapshots.
    pub disable: bool,
    /// `etcd-snapshot-schedule-cron` (default `0 */12 * * *`); the binary
    /// parses it before writing anything.
    pub schedule_cron: String,
    /// `etcd-snapshot-retention` (default 5, at least 1): how many
    /// scheduled snapshots of this node each location keeps.
    pub retention: usize,
    /// `etcd-snapshot-dir` (default `<data-dir>/server/db/snapshots`).
    pub dir: PathBuf,
    /// `etcd-snapshot-name` (default `etcd-snapshot`): the base of the
    /// file name `<name>-<node>-<unix time>`.
    pub name: String,
    /// `etcd-snapshot-compress`: store snapshots zipped (`.zip`).
    pub compress: bool,
    /// The S3 store (`etcd-s3` set), else `None`.
    pub s3: Option<S3Config>,
}

/// The S3-compatible object store snapshots also go to (`etcd-s3-*`).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `etcd-s3-endpoint`: host[:port], no scheme (default `s3.amazonaws.com`).
    pub endpoint: String,
    /// `etcd-s3-endpoint-ca`: PEM CA bundle to verify the endpoint with.
    pub endpoint_ca: Option<PathBuf>,
    /// `etcd-s3-skip-ssl-verify`.
    pub skip_ssl_verify: bool,
    /// `etcd-s3-access-key` (env `AWS_ACCESS_KEY_ID`).
    pub access_key: Option<String>,
    /// `etcd-s3-secret-key` (env `AWS_SECRET_ACCESS_KEY`); never printed.
    pub secret_key: Option<String>,
    /// `etcd-s3-bucket` (required with `etcd-s3`).
    pub bucket: String,
    /// `etcd-s3-region` (default `us-east-1`).
    pub region: String,
    /// `etcd-s3-folder`: key prefix, without slashes at either end.
    pub folder: String,
    /// `etcd-s3-insecure`: plain HTTP.
    pub insecure: bool,
    /// `etcd-s3-timeout` (default 5 minutes): bound on each request.
    pub timeout: std::time::Duration,
}

impl fmt::Debug for S3Config {
    // The secret key stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("endpoint_ca", &self.endpoint_ca)
            .field("skip_ssl_verify", &self.skip_ssl_verify)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<hidden>"))
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("folder", &self.folder)
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub use rke2_apimachinery::duration::parse_go_duration;

/// A `profile` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cis`: the CIS benchmark; PodSecurity enforces `restricted` by default.
    Cis,
    /// `etcd`: the benchmark's etcd requirements only.
    Etcd,
}

impl Profile {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Cis => "cis",
            Profile::Etcd => "etcd",
        }
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cis" => Ok(Profile::Cis),
            "etcd" => Ok(Profile::Etcd),
            _ => Err("invalid value provided for --profile flag (valid items: cis, etcd)".into()),
        }
    }
}

/// Result of [`load`]: the configuration plus warnings to show the user.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The merged configuration.
    pub config: Config,
    /// Human-readable warnings (unknown keys, ...), one per entry.
    pub warnings: Vec<String>,
}

/// Where a value came from; used in error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A config file (main file or drop-in), with the 1-based line when known.
    File {
        /// Path of the file.
        path: PathBuf,
        /// 1-based line, 0 when unknown.
        line: usize,
    },
    /// A command-line flag (`--name`).
    Flag(String),
    /// An environment variable.
    Env(String),
    /// The built-in default.
    Default,
    /// The default `node-name`: this machine's host name.
    HostName,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } if *line > 0 => {
                write!(f, "file {} line {}", path.display(), line)
            }
            Origin::File { path, .. } => write!(f, "file {}", path.display()),
            Origin::Flag(name) => write!(f, "flag --{name}"),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Default => f.write_str("default"),
            Origin::HostName => f.write_str("default (the host name)"),
        }
    }
}

/// Everything that can stop [`load`]. Callers print it and exit with
/// [`ConfigError::exit_code`]: 2 for all errors, 0 for [`ConfigError::Display`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad command line (unknown flag, missing value, ...); the text is clap's rendered message.
    #[error("{0}")]
    Usage(String),
    /// `--help` or `--version` was asked for: print the text and exit 0.
    #[error("{0}")]
    Display(String),
    /// The config file or a drop-in is not valid YAML (or not a mapping).
    #[error("file {} line {line} column {column}: invalid YAML: {message}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line reported by the parser (0 if unknown).
        line: u64,
        /// 1-based column reported by the parser (0 if unknown).
        column: u64,
        /// The parser's message.
        message: String,
    },
    /// The config file given with `-c/--config` or `RKE2_CONFIG_FILE` does not exist.
    #[error("config file {} (from {origin}) does not exist", path.display())]
    MissingConfigFile {
        /// The file.
        path: PathBuf,
        /// Where the path came from.
        origin: Origin,
    },
    /// A config file or drop-in directory exists but cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A value does not parse or is not allowed.
    #[error("{origin}: invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// Where the value came from.
        origin: Origin,
        /// Flag / key name.
        key: String,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `token` / `agent-token` (or what its `-file` holds) is malformed or
    /// does not fit the role. The value is a secret and is never shown.
    #[error(
        "{origin}: invalid {key}{}: {reason}",
        file.as_ref().map(|p| format!(" (the content of {})", p.display())).unwrap_or_default()
    )]
    InvalidToken {
        /// Where the token (or its file's path) came from.
        origin: Origin,
        /// `token` or `agent-token`.
        key: String,
        /// The file it was read from (`token-file` / `agent-token-file`).
        file: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },
    /// `token-file` / `agent-token-file` cannot be read or is empty.
    #[error("{origin}: cannot read {key} {}: {reason}", path.display())]
    TokenFile {
        /// Where the path came from.
        origin: Origin,
        /// `token-file` or `agent-token-file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A required setting is missing (e.g. `server` for an agent).
    #[error(
        "{key} is required for rke2 {role}: set flag --{key}, env {env} or `{key}:` in the config file"
    )]
    Missing {
        /// The missing key.
        key: String,
        /// The role that requires it.
        role: Role,
        /// Its environment variable.
        env: String,
    },
}

/// The keys every server of a cluster must agree on: the flags marked
/// critical in the flag table, in table order.
pub fn critical_keys() -> Vec<&'static str> {
    FLAGS
        .iter()
        .filter(|f| f.critical)
        .map(|f| f.name)
        .collect()
}

impl Config {
    /// This server's value of every [`critical_keys`] key, normalised
    /// (CIDRs in canonical form, `disable` sorted), as published on
    /// `/v1-rke2/config` and compared by a joining server.
    pub fn critical_settings(&self) -> serde_json::Map<String, serde_json::Value> {
        critical_keys()
            .into_iter()
            .map(|key| (key.to_string(), self.critical_value(key)))
            .collect()
    }

    /// One critical key's value; a key marked critical in the table but
    /// unknown here is a programming error caught by this crate's tests.
    fn critical_value(&self, key: &str) -> serde_json::Value {
        match key {
            "cluster-cidr" => self.cluster_cidr.to_string().into(),
            "service-cidr" => self.service_cidr.to_string().into(),
            "cluster-domain" => self.cluster_domain.clone().into(),
            "disable" => {
                let mut disable = self.disable.clone();
                disable.sort();
                disable.dedup();
                disable.into()
            }
            _ => serde_json::Value::Null,
        }
    }
}

impl ConfigError {
    /// Process exit code for this error: 0 for `--help`/`--version`, 2 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Display(_) => 0,
            _ => 2,
        }
    }
}

/// The clap command of `rke2 server` / `rke2 agent`, built from the same flag
/// table as the config-file keys and env names. `--help` lists every flag with
/// its help text, env var and default.
pub fn command(role: Role) -> clap::Command {
    flags::build_command(role)
}

/// A value as collected from the sources, before validation.
#[derive(Clone, Debug)]
enum RawValue {
    Bool(bool),
    Str(String, Origin),
    List(Vec<(String, Origin)>),
}

/// Loads the configuration for `role`. `args` are the words after
/// `rke2 server` / `rke2 agent`; `env` is the process environment (passed in so
/// tests and callers control it). Reads files but writes nothing.
pub fn load(
    role: Role,
    args: &[OsString],
    env: &HashMap<String, String>,
) -> Result<Loaded, ConfigError> {
    let argv = std::iter::once(OsString::from(format!("rke2 {role}"))).chain(args.iter().cloned());
    let matches = command(role).try_get_matches_from(argv).map_err(|e| {
        use clap::error::ErrorKind;
        let text = e.render().to_string();
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ConfigError::Display(text),
            _ => ConfigError::Usage(text),
        }
    })?;
    let cli_set = |name: &str| matches.value_source(name) == Some(ValueSource::CommandLine);
    let env_get = |name: &str| env.get(name).filter(|v| !v.is_empty());

    // 1. Which config file.
    let config_def = flags::find("config").expect("config flag");
    let (config_file, explicit) = if cli_set("config") {
        let p: &String = matches.get_one("config").expect("config value");
        (PathBuf::from(p), Some(Origin::Flag("config".into())))
    } else if let Some(p) = env_get(config_def.env) {
        (PathBuf::from(p), Some(Origin::Env(config_def.env.into())))
    } else {
        (PathBuf::from(DEFAULT_CONFIG_FILE), None)
    };

    let mut values: HashMap<&'static str, RawValue> = HashMap::new();
    let mut warnings = Vec::new();

    // 2. Files, in order.
    for path in config_files(&config_file, explicit)? {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        apply_file(role, &path, &text, &mut values, &mut warnings)?;
    }

    // 3. Environment, then 4. command line; each replaces what came before.
    for f in FLAGS
        .iter()
        .filter(|f| f.for_role(role) && f.name != "config")
    {
        if let Some(v) = env_get(f.env) {
            let origin = Origin::Env(f.env.to_string());
            let raw = match f.kind {
                Kind::Bool => RawValue::Bool(parse_bool(v, f.name, &origin)?),
                Kind::Str => RawValue::Str(v.clone(), origin),
                Kind::List => RawValue::List(
                    split_list(v, true)
                        .into_iter()
                        .map(|s| (s, origin.clone()))
                        .collect(),
                ),
            };
            values.insert(f.name, raw);
        }
        if cli_set(f.name) {
            let origin = Origin::Flag(f.name.to_string());
            let raw = match f.kind {
                Kind::Bool => RawValue::Bool(matches.get_flag(f.name)),
                Kind::Str => RawValue::Str(
                    matches
                        .get_one::<String>(f.name)
                        .cloned()
                        .unwrap_or_default(),
                    origin,
                ),
                Kind::List => RawValue::List(
                    matches
                        .get_many::<String>(f.name)
                        .into_iter()
                        .flatten()
                        .flat_map(|s| split_list(s, f.split_commas))
                        .map(|s| (s, origin.clone()))
                        .collect(),
                ),
            };
            values.insert(f.name, raw);
        }
    }

    let config = build(role, config_file, &values, &mut warnings)?;
    Ok(Loaded { config, warnings })
}

/// The main file (when it exists) followed by its `.d` drop-ins in name order.
fn config_files(config_file: &Path, explicit: Option<Origin>) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    match std::fs::metadata(config_file) {
        Ok(_) => files.push(config_file.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(origin) = explicit {
                return Err(ConfigError::MissingConfigFile {
                    path: config_file.to_path_buf(),
                    origin,
                });
            }
        }
        Err(error) => {
            return Err(ConfigError::Read {
                path: config_file.to_path_buf(),
                error,
            });
        }
    }
    let mut dropin_dir = config_file.as_os_str().to_owned();
    dropin_dir.push(".d");
    let dropin_dir = PathBuf::from(dropin_dir);
    match std::fs::read_dir(&dropin_dir) {
        Ok(rd) => {
            let mut dropins: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml") | Some("yml")
                        )
                })
                .collect();
            dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            files.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {}
        Err(error) => {
            return Err(ConfigError::Read {
                path: dropin_dir,
                error,
            });
        }
    }
    Ok(files)
}

/// Merges the entries of one file into `values`.
fn apply_file(
    role: Role,
    path: &Path,
    text: &str,
    values: &mut HashMap<&'static str, RawValue>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for entry in yaml::parse(path, text)? {
        let (name, append) = match entry.key.strip_suffix('+') {
            Some(n) => (n, true),
            None => (entry.key.as_str(), false),
        };
        let origin = Origin::File {
            path: path.to_path_buf(),
            line: entry.line,
        };
        let Some(def) = flags::find(name) else {
            warnings.push(format!(
                "unknown key {:?} in config file {} line {}: ignored",
                entry.key,
                path.display(),
                entry.line
            ));
            continue;
        };
        if !def.for_role(role) || def.name == "config" {
            // Keys of the other role: ignored silently, like RKE2 (shared config.yaml).
            continue;
        }
        if entry.value.is_null() {
            continue;
        }
        match def.kind {
            Kind::Bool => {
                let b = match &entry.value {
                    Value::Bool(b) => *b,
                    Value::String(s) => parse_bool(s, def.name, &origin)?,
                    other => {
                        return Err(invalid(&origin, def.name, other, "expected true or false"));
                    }
                };
                values.insert(def.name, RawValue::Bool(b));
            }
            Kind::Str => {
                if append {
                    warnings.push(format!(
                        "key {:?} in config file {} line {}: {} is not a list, `+` ignored",
                        entry.key,
                        path.display(),
                        entry.line,
                        def.name
                    ));
                }
                let s = scalar(&entry.value, entry.raw.as_deref()).ok_or_else(|| {
                    invalid(&origin, def.name, &entry.value, "expected a single value")
                })?;
                values.insert(def.name, RawValue::Str(s, origin));
            }
            Kind::List => {
                let mut items = Vec::new();
                match &entry.value {
                    Value::Array(arr) => {
                        let mut from = entry.line;
                        for item in arr {
                            if item.is_null() {
                                continue;
                            }
                            let s = scalar(item, None).ok_or_else(|| {
                                invalid(&origin, def.name, item, "list items must be scalars")
                            })?;
                            let line = yaml::item_line(text, from, &s);
                            from = line;
                            let o = Origin::File {
                                path: path.to_path_buf(),
                                line,
                            };
                            items.extend(
                                split_list(&s, def.split_commas)
                                    .into_iter()
                                    .map(|s| (s, o.clone())),
                            );
                        }
                    }
                    other => {
                        let s = scalar(other, entry.raw.as_deref()).ok_or_else(|| {
                            invalid(
                                &origin,
                                def.name,
                                other,
                                "expected a list or a single value",
                            )
                        })?;
                        items.extend(
                            split_list(&s, def.split_commas)
                                .into_iter()
                                .map(|s| (s, origin.clone())),
                        );
                    }
                }
                match (append, values.get_mut(def.name)) {
                    (true, Some(RawValue::List(existing))) => existing.extend(items),
                    _ => {
                        values.insert(def.name, RawValue::List(items));
                    }
                }
            }
        }
    }
    Ok(())
}

fn invalid(origin: &Origin, key: &str, value: &Value, reason: &str) -> ConfigError {
    let value = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ConfigError::InvalidValue {
        origin: origin.clone(),
        key: key.to_string(),
        value,
        reason: reason.to_string(),
    }
}

/// A YAML scalar as a string (numbers keep their source spelling when known).
fn scalar(v: &Value, raw: Option<&str>) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(raw.map(str::to_string).unwrap_or_else(|| n.to_string())),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn split_list(s: &str, commas: bool) -> Vec<String> {
    if commas {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    } else {
        vec![s.to_string()]
    }
}

fn parse_bool(s: &str, key: &str, origin: &Origin) -> Result<bool, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Ok(true),
        "false" | "0" | "f" | "no" => Ok(false),
        _ => Err(ConfigError::InvalidValue {
            origin: origin.clone(),
            key: key.into(),
            value: s.into(),
            reason: "expected true or false".into(),
        }),
    }
}

/// Parses a file mode given as octal digits: "0644", "644", "0o644".
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 5 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("want an octal file mode such as 0644 or 600".into());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if mode > 0o7777 {
        return Err("mode is larger than 07777".into());
    }
    Ok(mode)
}

/// Accessors over the collected values with defaults from the table.
struct Resolver<'a> {
    values: &'a HashMap<&'static str, RawValue>,
}

impl Resolver<'_> {
    fn def(name: &str) -> &'static FlagDef {
        flags::find(name).expect("flag in table")
    }

    /// The string value and its origin; the table default when unset.
    fn str(&self, name: &str) -> Option<(String, Origin)> {
        match self.values.get(name) {
            Some(RawValue::Str(s, o)) if !s.is_empty() => Some((s.clone(), o.clone())),
            _ => Self::def(name)
                .default
                .map(|d| (d.to_string(), Origin::Default)),
        }
    }

    fn list(&self, name: &str) -> Vec<(String, Origin)> {
        match self.values.get(name) {
            Some(RawValue::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }

    fn bool(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(RawValue::Bool(true)))
    }

    fn parsed<T, E: fmt::Display>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        Ok(self.parsed_at(name, parse)?.map(|(v, _)| v))
    }

    /// Like [`Resolver::parsed`], with where the value came from.
    fn parsed_at<T, E: fmt::Display>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<(T, Origin)>, ConfigError> {
        self.str(name)
            .map(|(s, origin)| match parse(&s) {
                Ok(v) => Ok((v, origin)),
                Err(e) => Err(ConfigError::InvalidValue {
                    origin,
                    key: name.to_string(),
                    value: s.clone(),
                    reason: e.to_string(),
                }),
            })
            .transpose()
    }

    fn parsed_list<T, E: fmt::Display>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Vec<T>, ConfigError> {
        self.list(name)
            .into_iter()
            .map(|(s, origin)| {
                parse(&s).map_err(|e| ConfigError::InvalidValue {
                    origin,
                    key: name.to_string(),
                    value: s.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// `token` if set, else the trimmed content of `<file_key>`, with
    /// where it came from.
    fn token(&self, key: &str, file_key: &str) -> Result<Option<GivenToken>, ConfigError> {
        if let Some((value, origin)) = self.str(key) {
            return Ok(Some(GivenToken {
                value,
                origin,
                file: None,
            }));
        }
        let Some((path, origin)) = self.str(file_key) else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        let err = |reason: String| ConfigError::TokenFile {
            origin: origin.clone(),
            key: file_key.to_string(),
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let t = text.trim();
        if t.is_empty() {
            return Err(err("file is empty".into()));
        }
        Ok(Some(GivenToken {
            value: t.to_string(),
            origin,
            file: Some(path),
        }))
    }
}

/// A token as given, before its checks.
struct GivenToken {
    value: String,
    /// Origin of `token` (or of `token-file` when read from a file).
    origin: Origin,
    /// The file it was read from.
    file: Option<PathBuf>,
}

impl GivenToken {
    /// Checks the token for `key` and `role`; the error names the key,
    /// origin and file, never the value.
    fn check(&self, key: checks::TokenKey, role: Role) -> Result<rke2_trust::Token, ConfigError> {
        checks::token(&self.value, key, role).map_err(|reason| self.error(key, reason))
    }

    fn error(&self, key: checks::TokenKey, reason: String) -> ConfigError {
        ConfigError::InvalidToken {
            origin: self.origin.clone(),
            key: match key {
                checks::TokenKey::Token => "token",
                checks::TokenKey::AgentToken => "agent-token",
            }
            .to_string(),
            file: self.file.clone(),
            reason,
        }
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| "not an IPv4 or IPv6 address".to_string())
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.trim()
        .parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| "not a CIDR such as 10.42.0.0/16".to_string())
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("not a port number (1-65535)".to_string()),
    }
}

/// A `node-label` value: `key=value`, both valid as label parts, and the
/// key one a kubelet may set on its own Node (a kubelet refuses other
/// reserved keys such as `node-role.kubernetes.io/*` at start, and the
/// apiserver would refuse them from the node anyway).
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => (k, v),
        Some(_) => return Err("label key is empty".to_string()),
        None => return Err("label has no `=` (want key=value)".to_string()),
    };
    use rke2_apimachinery::validation::{validate_label_key, validate_label_value};
    if let Some(e) = validate_label_key(k).into_iter().next() {
        return Err(format!("invalid label key {k:?}: {e}"));
    }
    if let Some(e) = validate_label_value(v).into_iter().next() {
        return Err(format!("invalid label value {v:?}: {e}"));
    }
    if let Some(e) = rke2_apimachinery::node_labels::kubelet_flag_refusal(k) {
        return Err(e);
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_server_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .ok_or_else(|| "server URL must start with https://".to_string())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("server URL has no host".to_string());
    }
    Ok(s.to_string())
}

/// The host name, lowercased (`node-name` default).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is a valid writable buffer of the given length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
    };
    name.trim().to_lowercase()
}

fn build(
    role: Role,
    config_file: PathBuf,
    values: &HashMap<&'static str, RawValue>,
    warnings: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    let r = Resolver { values };
    let server_role = role == Role::Server;

    let server = r.parsed("server", parse_server_url)?;
    if role == Role::Agent && server.is_none() {
        return Err(missing("server", role));
    }
    let token = r.token("token", "token-file")?;
    let agent_token = if server_role {
        r.token("agent-token", "agent-token-file")?
    } else {
        None
    };
    check_tokens(role, token.as_ref(), agent_token.as_ref())?;
    let with_node_id = r.bool("with-node-id");
    let node_name = node_name(&r, with_node_id, hostname)?;
    let (cluster_cidr, cluster_origin) = r.parsed_at("cluster-cidr", parse_cidr)?.expect("default");
    let (service_cidr, service_origin) = r.parsed_at("service-cidr", parse_cidr)?.expect("default");
    let (cluster_dns, dns_origin) = r
        .parsed_at("cluster-dns", parse_ip)?
        .unwrap_or_else(|| (nth_address(&service_cidr, 10), Origin::Default));
    let https = r
        .parsed_at("https-listen-port", parse_port)?
        .expect("default");
    let supervisor = r
        .parsed_at("supervisor-port", parse_port)?
        .expect("default");
    let (lb_server_port, lb_origin) = r.parsed_at("lb-server-port", parse_port)?.expect("default");
    if server_role {
        // An agent's networks come from the servers at run time; it
        // checks cluster-dns once it knows them.
        check_networks(
            (&cluster_cidr, &cluster_origin),
            (&service_cidr, &service_origin),
            (cluster_dns, &dns_origin),
        )?;
        check_server_ports(&https, &supervisor)?;
    } else if lb_server_port < 2 {
        return Err(ConfigError::InvalidValue {
            origin: lb_origin,
            key: "lb-server-port".into(),
            value: lb_server_port.to_string(),
            reason: "must be at least 2: the apiserver load balancer listens on the port below it"
                .into(),
        });
    }

    let data_dir = PathBuf::from(r.str("data-dir").expect("default").0);
    let etcd_snapshot = etcd_snapshot_config(&r, &data_dir)?;
    let cluster_reset = r.bool("cluster-reset");
    let cluster_reset_restore_path = r.str("cluster-reset-restore-path");
    if let (Some((path, origin)), false) = (&cluster_reset_restore_path, cluster_reset) {
        return Err(ConfigError::InvalidValue {
            origin: origin.clone(),
            key: "cluster-reset-restore-path".into(),
            value: path.clone(),
            reason: "invalid flag use; --cluster-reset required with --cluster-reset-restore-path"
                .into(),
        });
    }
    let cluster_reset_restore_path = cluster_reset_restore_path.map(|(p, _)| p);
    let eviction = kubelet_args(&r, warnings)?;
    let hpa = kube_controller_manager_args(&r, warnings)?;
    Ok(Config {
        role,
        config_file,
        data_dir,
        token: token.map(|t| t.value),
        agent_token: agent_token.map(|t| t.value),
        server,
        tls_san: r.list("tls-san").into_iter().map(|(s, _)| s).collect(),
        node_taints: r.parsed_list("node-taint", Taint::from_str)?,
        node_labels: r.parsed_list("node-label", parse_label)?,
        write_kubeconfig: PathBuf::from(r.str("write-kubeconfig").expect("default").0),
        write_kubeconfig_mode: r.parsed("write-kubeconfig-mode", parse_mode)?,
        node_name,
        node_ips: r.parsed_list("node-ip", parse_ip)?,
        advertise_address: r.parsed("advertise-address", parse_ip)?,
        bind_address: r.parsed("bind-address", parse_ip)?,
        cluster_cidr,
        service_cidr,
        cluster_domain: r.str("cluster-domain").expect("default").0,
        disable: r.list("disable").into_iter().map(|(s, _)| s).collect(),
        with_node_id,
        https_listen_port: https.0,
        supervisor_port: supervisor.0,
        lb_server_port,
        etcd_binary: r.str("etcd-binary").expect("default").0,
        pause_image: r.str("pause-image").expect("default").0,
        cluster_dns,
        resolv_conf: r.str("resolv-conf").map(|(p, _)| PathBuf::from(p)),
        profile: r.parsed("profile", Profile::from_str)?,
        pod_security_admission_config_file: r
            .str("pod-security-admission-config-file")
            .map(|(p, _)| PathBuf::from(p)),
        audit_policy_file: r.str("audit-policy-file").map(|(p, _)| PathBuf::from(p)),
        secrets_encryption: !matches!(
            r.values.get("secrets-encryption"),
            Some(RawValue::Bool(false))
        ),
        secrets_encryption_provider: r
            .parsed("secrets-encryption-provider", |s| match s {
                "aescbc" | "secretbox" => Ok(s.to_string()),
                _ => Err("valid items: aescbc, secretbox"),
            })?
            .expect("default"),
        debug: r.bool("debug"),
        service_node_port_range: r
            .parsed("service-node-port-range", parse_port_range)?
            .expect("default"),
        disable_kube_proxy: r.bool("disable-kube-proxy"),
        enable_servicelb: r.bool("enable-servicelb"),
        default_local_storage_path: r
            .str("default-local-storage-path")
            .map(|(s, _)| PathBuf::from(s))
            .unwrap_or_else(|| {
                PathBuf::from(r.str("data-dir").expect("default").0).join("storage")
            }),
        etcd_snapshot,
        cluster_reset,
        cluster_reset_restore_path,
        eviction,
        hpa,
    })
}

/// `kubelet-arg`: the `eviction-*` flags are applied (RKE2's defaults
/// without them); the node role is not kubelet, so other flags are warned
/// about and ignored rather than refused.
fn kubelet_args(
    r: &Resolver,
    warnings: &mut Vec<String>,
) -> Result<rke2_apimachinery::eviction::EvictionConfig, ConfigError> {
    use rke2_apimachinery::eviction as ev;
    let mut hard = None;
    let mut soft = Vec::new();
    let mut grace = std::collections::BTreeMap::new();
    let mut reclaim = ev::default_minimum_reclaim();
    let mut max_pod_grace = None;
    let mut transition = None;
    // The flag the soft-threshold check is blamed on.
    let mut soft_origin = None;
    let mut kube_reserved = None;
    let mut system_reserved = None;
    // (percent, flag, origin) of the image GC thresholds given.
    let mut gc_high = None;
    let mut gc_low = None;
    for (arg, origin) in r.list("kubelet-arg") {
        let flag = arg.trim_start_matches('-');
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        let invalid = |reason: String| ConfigError::InvalidValue {
            origin: origin.clone(),
            key: "kubelet-arg".into(),
            value: arg.clone(),
            reason,
        };
        match name {
            "eviction-hard" => hard = Some(ev::parse_thresholds(value).map_err(invalid)?),
            "eviction-soft" => {
                soft = ev::parse_thresholds(value).map_err(invalid)?;
                soft_origin = Some((arg.clone(), origin.clone()));
            }
            "eviction-soft-grace-period" => {
                grace = ev::parse_grace_periods(value, parse_go_duration).map_err(invalid)?;
                soft_origin.get_or_insert((arg.clone(), origin.clone()));
            }
            "eviction-minimum-reclaim" => {
                reclaim = ev::parse_minimum_reclaims(value).map_err(invalid)?
            }
            "eviction-max-pod-grace-period" => {
                max_pod_grace = Some(value.trim().parse::<i64>().map_err(|_| {
                    invalid(format!(
                        "eviction-max-pod-grace-period must be a whole number of seconds: {value:?}"
                    ))
                })?)
            }
            "eviction-pressure-transition-period" => {
                transition = Some(
                    parse_go_duration(value)
                        .or_else(|e| {
                            // A Go duration of zero ("0s") is valid here.
                            if value.trim().trim_end_matches(['s', 'm', 'h']) == "0" {
                                Ok(std::time::Duration::ZERO)
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| {
                            invalid(format!("eviction-pressure-transition-period: {e}"))
                        })?,
                )
            }
            "kube-reserved" => {
                kube_reserved = Some(
                    ev::parse_reserved(value)
                        .map_err(|e| invalid(format!("kube-reserved: {e}")))?,
                )
            }
            "system-reserved" => {
                system_reserved = Some(
                    ev::parse_reserved(value)
                        .map_err(|e| invalid(format!("system-reserved: {e}")))?,
                )
            }
            "image-gc-high-threshold" | "image-gc-low-threshold" => {
                let v = value.trim().parse::<i64>().map_err(|_| {
                    invalid(format!("{name} must be a whole percentage: {value:?}"))
                })?;
                let slot = if name == "image-gc-high-threshold" {
                    &mut gc_high
                } else {
                    &mut gc_low
                };
                *slot = Some((v, arg.clone(), origin.clone()));
            }
            _ => warnings.push(format!(
                "kubelet-arg {arg:?} ({origin}): not supported by this node role; ignored"
            )),
        }
    }
    let high = gc_high
        .as_ref()
        .map_or(i64::from(ev::DEFAULT_IMAGE_GC_HIGH), |g| g.0);
    let low = gc_low
        .as_ref()
        .map_or(i64::from(ev::DEFAULT_IMAGE_GC_LOW), |g| g.0);
    if let Err(reason) = ev::check_image_gc(high, low) {
        // Blamed on the flag given (the low one when both are).
        let (_, value, origin) = gc_low.or(gc_high).expect("the defaults pass the check");
        return Err(ConfigError::InvalidValue {
            origin,
            key: "kubelet-arg".into(),
            value,
            reason,
        });
    }
    let mut cfg =
        ev::EvictionConfig::new(hard.unwrap_or_else(ev::default_hard), soft, grace, reclaim)
            .map_err(|reason| {
                let (value, origin) = soft_origin
                    .clone()
                    .unwrap_or((String::new(), Origin::Default));
                ConfigError::InvalidValue {
                    origin,
                    key: "kubelet-arg".into(),
                    value,
                    reason,
                }
            })?;
    if let Some(m) = max_pod_grace {
        cfg.max_pod_grace_period_seconds = m;
    }
    if let Some(t) = transition {
        cfg.pressure_transition_period = t;
    }
    cfg.kube_reserved = kube_reserved.unwrap_or_default();
    cfg.system_reserved = system_reserved.unwrap_or_default();
    // Checked to be within 0..=100 above.
    cfg.image_gc_high_threshold = high as u8;
    cfg.image_gc_low_threshold = low as u8;
    Ok(cfg)
}

/// `kube-controller-manager-arg`: the `horizontal-pod-autoscaler-*`
/// flags are applied (upstream's defaults without them); the controllers
/// run inside this binary, so other flags are warned about and ignored.
fn kube_controller_manager_args(
    r: &Resolver,
    warnings: &mut Vec<String>,
) -> Result<rke2_apimachinery::autoscaling::HpaSettings, ConfigError> {
    let mut hpa = rke2_apimachinery::autoscaling::HpaSettings::default();
    for (arg, origin) in r.list("kube-controller-manager-arg") {
        let flag = arg.trim_start_matches('-');
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        let applied = hpa
            .apply(name, value)
            .map_err(|reason| ConfigError::InvalidValue {
                origin: origin.clone(),
                key: "kube-controller-manager-arg".into(),
                value: arg.clone(),
                reason,
            })?;
        if !applied {
            warnings.push(format!(
                "kube-controller-manager-arg {arg:?} ({origin}): not supported by this server; ignored"
            ));
        }
    }
    Ok(hpa)
}

/// The `etcd-snapshot-*` and `etcd-s3-*` keys.
fn etcd_snapshot_config(
    r: &Resolver,
    data_dir: &std::path::Path,
) -> Result<EtcdSnapshotConfig, ConfigError> {
    let retention = r
        .parsed("etcd-snapshot-retention", |s| {
            match s.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err("must be a whole number of at least 1"),
            }
        })?
        .expect("default");
    let name = r.str("etcd-snapshot-name").expect("default");
    if name.0.is_empty()
        || name.0.contains('/')
        || !name
            .0
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::InvalidValue {
            origin: name.1,
            key: "etcd-snapshot-name".into(),
            value: name.0,
            reason: "only letters, digits, '-', '_' and '.' may appear in a snapshot name".into(),
        });
    }
    let s3 = if r.bool("etcd-s3") {
        let bucket = r.str("etcd-s3-bucket").map(|(b, _)| b).unwrap_or_default();
        if bucket.is_empty() {
            return Err(ConfigError::InvalidValue {
                origin: Origin::Default,
                key: "etcd-s3-bucket".into(),
                value: String::new(),
                reason: "etcd-s3 is set: a bucket is required".into(),
            });
        }
        let endpoint = r.str("etcd-s3-endpoint").expect("default");
        if endpoint.0.contains("://") || endpoint.0.contains('/') {
            return Err(ConfigError::InvalidValue {
                origin: endpoint.1,
                key: "etcd-s3-endpoint".into(),
                value: endpoint.0,
                reason: "give host[:port] without a scheme or path (etcd-s3-insecure selects http)"
                    .into(),
            });
        }
        Some(S3Config {
            endpoint: endpoint.0,
            endpoint_ca: r.str("etcd-s3-endpoint-ca").map(|(p, _)| PathBuf::from(p)),
            skip_ssl_verify: r.bool("etcd-s3-skip-ssl-verify"),
            access_key: r.str("etcd-s3-access-key").map(|(v, _)| v),
            secret_key: r.str("etcd-s3-secret-key").map(|(v, _)| v),
            bucket,
            region: r.str("etcd-s3-region").expect("default").0,
            folder: r
                .str("etcd-s3-folder")
                .map(|(v, _)| v.trim_matches('/').to_string())
                .unwrap_or_default(),
            insecure: r.bool("etcd-s3-insecure"),
            timeout: r
                .parsed("etcd-s3-timeout", parse_go_duration)?
                .expect("default"),
        })
    } else {
        None
    };
    Ok(EtcdSnapshotConfig {
        disable: r.bool("etcd-disable-snapshots"),
        schedule_cron: r.str("etcd-snapshot-schedule-cron").expect("default").0,
        retention,
        dir: r
            .str("etcd-snapshot-dir")
            .map(|(p, _)| PathBuf::from(p))
            .unwrap_or_else(|| data_dir.join("server").join("db").join("snapshots")),
        name: name.0,
        compress: r.bool("etcd-snapshot-compress"),
        s3,
    })
}

/// A port range as kube-apiserver's `--service-node-port-range` takes it:
/// `low-high` or `base+size`, within 1-65535.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let t = s.trim();
    let bad = || format!("{t:?} is not a port range such as 30000-32767");
    let (lo, hi) = if let Some((a, b)) = t.split_once('-') {
        let lo: u32 = a.trim().parse().map_err(|_| bad())?;
        let hi: u32 = b.trim().parse().map_err(|_| bad())?;
        (lo, hi)
    } else if let Some((a, n)) = t.split_once('+') {
        let lo: u32 = a.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        (lo, lo.saturating_add(n))
    } else {
        return Err(bad());
    };
    if lo == 0 || hi > 65535 || lo > hi {
        return Err(format!(
            "{t:?}: ports must satisfy 1 <= low <= high <= 65535"
        ));
    }
    Ok((lo as u16, hi as u16))
}

fn missing(key: &str, role: Role) -> ConfigError {
    ConfigError::Missing {
        key: key.into(),
        role,
        env: Resolver::def(key).env.into(),
    }
}

/// `token` (required for agents) and `agent-token`: well formed, fit for
/// the role, and not the same secret twice.
fn check_tokens(
    role: Role,
    token: Option<&GivenToken>,
    agent_token: Option<&GivenToken>,
) -> Result<(), ConfigError> {
    use checks::TokenKey;
    let parsed = token.map(|t| t.check(TokenKey::Token, role)).transpose()?;
    if role == Role::Agent && token.is_none() {
        return Err(missing("token", role));
    }
    if let Some(a) = agent_token {
        let agent = a.check(TokenKey::AgentToken, role)?;
        if let Some(server) = &parsed {
            checks::agent_token_vs_token(&agent, server)
                .map_err(|reason| a.error(TokenKey::AgentToken, reason))?;
        }
    }
    Ok(())
}

/// `node-name`, else the host name; either must make a valid Node name.
fn node_name(
    r: &Resolver<'_>,
    with_node_id: bool,
    hostname: impl FnOnce() -> String,
) -> Result<String, ConfigError> {
    let (name, origin) = r
        .str("node-name")
        .unwrap_or_else(|| (hostname(), Origin::HostName));
    checks::node_name(&name, with_node_id).map_err(|reason| {
        let reason = if origin == Origin::HostName {
            format!(
                "{reason}; the host name is not a valid node name: set node-name (flag --node-name, env {} or `node-name:` in the config file)",
                Resolver::def("node-name").env
            )
        } else {
            reason
        };
        ConfigError::InvalidValue {
            origin,
            key: "node-name".into(),
            value: name.clone(),
            reason,
        }
    })?;
    Ok(name)
}

/// `cluster-cidr` holds a node block and does not overlap `service-cidr`;
/// `cluster-dns` is a Service address of `service-cidr`. A conflict is
/// reported on the key the user set (of two, `service-cidr`).
fn check_networks(
    (cluster, cluster_origin): (&ipnet::IpNet, &Origin),
    (service, service_origin): (&ipnet::IpNet, &Origin),
    (dns, dns_origin): (IpAddr, &Origin),
) -> Result<(), ConfigError> {
    let invalid =
        |key: &str, origin: &Origin, value: String, reason: String| ConfigError::InvalidValue {
            origin: origin.clone(),
            key: key.into(),
            value,
            reason,
        };
    checks::cluster_cidr(cluster)
        .map_err(|reason| invalid("cluster-cidr", cluster_origin, cluster.to_string(), reason))?;
    if checks::overlap(cluster, service) {
        let (key, origin, value, other, other_value, other_origin) =
            if *service_origin == Origin::Default {
                (
                    "cluster-cidr",
                    cluster_origin,
                    cluster,
                    "service-cidr",
                    service,
                    service_origin,
                )
            } else {
                (
                    "service-cidr",
                    service_origin,
                    service,
                    "cluster-cidr",
                    cluster,
                    cluster_origin,
                )
            };
        return Err(invalid(
            key,
            origin,
            value.to_string(),
            format!(
                "overlaps {other} {other_value} ({other_origin}): pod and Service addresses must not overlap"
            ),
        ));
    }
    if let Err(reason) = checks::check_cluster_dns(dns, service) {
        return Err(if *dns_origin == Origin::Default {
            invalid(
                "service-cidr",
                service_origin,
                service.to_string(),
                format!(
                    "too small for the default cluster-dns {dns} (its 10th address): {reason}; use a larger service-cidr or set cluster-dns"
                ),
            )
        } else {
            invalid(
                "cluster-dns",
                dns_origin,
                dns.to_string(),
                format!("{reason} (service-cidr: {service_origin})"),
            )
        });
    }
    Ok(())
}

/// The API and supervisor ports differ from each other and from the ports
/// the server always uses (etcd, node API).
fn check_server_ports(
    (https, https_origin): &(u16, Origin),
    (sup, sup_origin): &(u16, Origin),
) -> Result<(), ConfigError> {
    if https == sup {
        let (key, origin, other, other_origin) = if *sup_origin == Origin::Default {
            (
                "https-listen-port",
                https_origin,
                "supervisor-port",
                sup_origin,
            )
        } else {
            (
                "supervisor-port",
                sup_origin,
                "https-listen-port",
                https_origin,
            )
        };
        return Err(ConfigError::InvalidValue {
            origin: origin.clone(),
            key: key.into(),
            value: https.to_string(),
            reason: format!(
                "the same as {other} ({other_origin}): the supervisor and the Kubernetes API need a port each"
            ),
        });
    }
    for (key, port, origin) in [
        ("https-listen-port", https, https_origin),
        ("supervisor-port", sup, sup_origin),
    ] {
        if let Some((_, what)) = checks::FIXED_SERVER_PORTS.iter().find(|(p, _)| p == port) {
            return Err(ConfigError::InvalidValue {
                origin: origin.clone(),
                key: key.into(),
                value: port.to_string(),
                reason: format!("port {port} is {what}, which the server also listens on"),
            });
        }
    }
    Ok(())
}

/// The `n`th address of a network (10.43.0.0/16, 10 -> 10.43.0.10).
pub fn nth_address(net: &ipnet::IpNet, n: u32) -> IpAddr {
    match net {
        ipnet::IpNet::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4.network()).saturating_add(n),
        )),
        ipnet::IpNet::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6.network()).saturating_add(n as u128),
        )),
    }
}

#[cfg(test)]
mod tests;
