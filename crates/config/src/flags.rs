//! The single table of flag definitions from which the command line, the
//! config-file keys and the `RKE2_*` environment names are all derived.

use clap::{Arg, ArgAction, Command};

use crate::Role;

/// How a flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `--flag` on the command line, `flag: true` in a file.
    Bool,
    /// One value.
    Str,
    /// The flag may be repeated; a file gives a YAML list (or a scalar).
    List,
}

/// One row of the flag table.
#[derive(Debug)]
pub(crate) struct FlagDef {
    /// Long flag name, also the config-file key.
    pub name: &'static str,
    /// Optional short flag.
    pub short: Option<char>,
    pub kind: Kind,
    /// Default shown in `--help` and applied when nothing else sets the flag.
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// Environment variable that sets the flag.
    pub env: &'static str,
    pub server: bool,
    pub agent: bool,
    /// List values are also split on commas (like k3s `SplitStringSlice`).
    pub split_commas: bool,
    /// Every server of a cluster must have the same value (k3s's
    /// `CriticalControlArgs`): a joining server compares it with the
    /// cluster's before touching etcd ([`crate::Config::critical_settings`]).
    pub critical: bool,
}

impl FlagDef {
    /// Whether the flag exists for `role`.
    pub fn for_role(&self, role: Role) -> bool {
        match role {
            Role::Server => self.server,
            Role::Agent => self.agent,
        }
    }
}

const fn flag(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    env: &'static str,
    agent: bool,
    help: &'static str,
) -> FlagDef {
    FlagDef {
        name,
        short: None,
        kind,
        default,
        help,
        env,
        server: true,
        agent,
        split_commas: false,
        critical: false,
    }
}

const fn split(mut f: FlagDef) -> FlagDef {
    f.split_commas = true;
    f
}

const fn critical(mut f: FlagDef) -> FlagDef {
    f.critical = true;
    f
}

const fn short(mut f: FlagDef, c: char) -> FlagDef {
    f.short = Some(c);
    f
}

/// The default pod sandbox image (RKE2's own default reference).
pub const DEFAULT_PAUSE_IMAGE: &str = "docker.io/rancher/mirrored-pause:3.6";

/// Default path of the main config file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rancher/rke2/config.yaml";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/rke2";
/// Default path of the admin kubeconfig written by the server.
pub const DEFAULT_WRITE_KUBECONFIG: &str = "/etc/rancher/rke2/rke2.yaml";

use Kind::{Bool, List, Str};

/// Every flag of `rke2 server` and `rke2 agent`.
pub(crate) const FLAGS: &[FlagDef] = &[
    short(
        flag(
            "config",
            Str,
            Some(DEFAULT_CONFIG_FILE),
            "RKE2_CONFIG_FILE",
            true,
            "Load configuration from FILE (then FILE.d/*.yaml and *.yml in name order)",
        ),
        'c',
    ),
    flag(
        "debug",
        Bool,
        None,
        "RKE2_DEBUG",
        true,
        "Turn on debug logs",
    ),
    flag(
        "data-dir",
        Str,
        Some(DEFAULT_DATA_DIR),
        "RKE2_DATA_DIR",
        true,
        "Folder to hold state",
    ),
    flag(
        "token",
        Str,
        None,
        "RKE2_TOKEN",
        true,
        "Shared secret used to join a server or agent to a cluster",
    ),
    flag(
        "token-file",
        Str,
        None,
        "RKE2_TOKEN_FILE",
        true,
        "File containing the cluster token (used when --token is not set)",
    ),
    flag(
        "agent-token",
        Str,
        None,
        "RKE2_AGENT_TOKEN",
        false,
        "Shared secret used to join agents to the cluster, but not servers",
    ),
    flag(
        "agent-token-file",
        Str,
        None,
        "RKE2_AGENT_TOKEN_FILE",
        false,
        "File containing the agent secret (used when --agent-token is not set)",
    ),
    flag(
        "server",
        Str,
        None,
        "RKE2_URL",
        true,
        "Server to connect to (https://host:9345); required for agents, used by servers to join",
    ),
    split(flag(
        "tls-san",
        List,
        None,
        "RKE2_TLS_SAN",
        false,
        "Add additional hostnames or IPv4/IPv6 addresses as Subject Alternative Names on the server TLS cert",
    )),
    flag(
        "node-taint",
        List,
        None,
        "RKE2_NODE_TAINT",
        true,
        "Registering kubelet with set of taints (key=value:Effect or key:Effect)",
    ),
    flag(
        "node-label",
        List,
        None,
        "RKE2_NODE_LABEL",
        true,
        "Registering and starting kubelet with set of labels (key=value)",
    ),
    flag(
        "kubelet-arg",
        List,
        None,
        "RKE2_KUBELET_ARG",
        true,
        "Customized flag for kubelet process (this node role applies the eviction-*, kube-reserved, system-reserved and image-gc-* flags; others are warned about and ignored)",
    ),
    flag(
        "kube-controller-manager-arg",
        List,
        None,
        "RKE2_KUBE_CONTROLLER_MANAGER_ARG",
        false,
        "Customized flag for kube-controller-manager process (the horizontal-pod-autoscaler-* flags apply; others are warned about and ignored)",
    ),
    flag(
        "write-kubeconfig",
        Str,
        Some(DEFAULT_WRITE_KUBECONFIG),
        "RKE2_KUBECONFIG_OUTPUT",
        false,
        "Write kubeconfig for admin client to this file",
    ),
    flag(
        "write-kubeconfig-mode",
        Str,
        None,
        "RKE2_KUBECONFIG_MODE",
        false,
        "Write kubeconfig with this octal mode (e.g. 0644); 0600 when unset",
    ),
    flag(
        "node-name",
        Str,
        None,
        "RKE2_NODE_NAME",
        true,
        "Node name (default: hostname, lowercased)",
    ),
    split(flag(
        "node-ip",
        List,
        None,
        "RKE2_NODE_IP",
        true,
        "IPv4/IPv6 addresses to advertise for node",
    )),
    flag(
        "advertise-address",
        Str,
        None,
        "RKE2_ADVERTISE_ADDRESS",
        false,
        "IPv4/IPv6 address that apiserver uses to advertise to members of the cluster (default: node-ip)",
    ),
    flag(
        "bind-address",
        Str,
        None,
        "RKE2_BIND_ADDRESS",
        false,
        "IPv4/IPv6 address to listen on (default: all interfaces)",
    ),
    critical(flag(
        "cluster-cidr",
        Str,
        Some("10.42.0.0/16"),
        "RKE2_CLUSTER_CIDR",
        false,
        "IPv4/IPv6 network CIDR to use for pod IPs",
    )),
    critical(flag(
        "service-cidr",
        Str,
        Some("10.43.0.0/16"),
        "RKE2_SERVICE_CIDR",
        false,
        "IPv4/IPv6 network CIDR to use for service IPs",
    )),
    critical(flag(
        "cluster-domain",
        Str,
        Some("cluster.local"),
        "RKE2_CLUSTER_DOMAIN",
        false,
        "Cluster Domain",
    )),
    critical(split(flag(
        "disable",
        List,
        None,
        "RKE2_DISABLE",
        false,
        "Do not deploy packaged components and delete any deployed components",
    ))),
    flag(
        "service-node-port-range",
        Str,
        Some("30000-32767"),
        "RKE2_SERVICE_NODE_PORT_RANGE",
        false,
        "Port range to reserve for services with NodePort visibility",
    ),
    flag(
        "disable-kube-proxy",
        Bool,
        None,
        "RKE2_DISABLE_KUBE_PROXY",
        true,
        "Disable running kube-proxy",
    ),
    flag(
        "enable-servicelb",
        Bool,
        None,
        "RKE2_ENABLE_SERVICELB",
        false,
        "Enable rke2 default cloud controller manager's service controller",
    ),
    flag(
        "default-local-storage-path",
        Str,
        None,
        "RKE2_DEFAULT_LOCAL_STORAGE_PATH",
        false,
        "Default local storage path for local provisioner storage class",
    ),
    flag(
        "with-node-id",
        Bool,
        None,
        "RKE2_WITH_NODE_ID",
        true,
        "Append id to node name",
    ),
    flag(
        "https-listen-port",
        Str,
        Some("6443"),
        "RKE2_HTTPS_LISTEN_PORT",
        false,
        "HTTPS listen port of the Kubernetes API",
    ),
    flag(
        "lb-server-port",
        Str,
        Some("6444"),
        "RKE2_LB_SERVER_PORT",
        true,
        "Local port of the client-side load balancer to the supervisors; the one to the apiservers uses the port below it",
    ),
    flag(
        "supervisor-port",
        Str,
        Some("9345"),
        "RKE2_SUPERVISOR_PORT",
        false,
        "HTTPS listen port of the supervisor (node registration)",
    ),
    flag(
        "pause-image",
        Str,
        Some(DEFAULT_PAUSE_IMAGE),
        "RKE2_PAUSE_IMAGE",
        true,
        "Pod sandbox (pause) image; must be in the air-gap images folder (<data-dir>/agent/images) or pullable",
    ),
    flag(
        "cluster-dns",
        Str,
        None,
        "RKE2_CLUSTER_DNS",
        true,
        "Cluster DNS service IP written into pods' resolv.conf (default: the 10th address of service-cidr)",
    ),
    flag(
        "resolv-conf",
        Str,
        None,
        "RKE2_RESOLV_CONF",
        true,
        "(agent/node) Kubelet resolv.conf file",
    ),
    flag(
        "profile",
        Str,
        None,
        "RKE2_CIS_PROFILE",
        true,
        "(security) Validate system configuration against the selected benchmark (valid items: cis, etcd); cis makes PodSecurity enforce restricted by default",
    ),
    flag(
        "secrets-encryption",
        Bool,
        Some("true"),
        "RKE2_SECRETS_ENCRYPTION",
        false,
        "(security) Encrypt Secrets at rest in etcd (RKE2 always does; `secrets-encryption: false` in the config file turns it off for a new cluster)",
    ),
    flag(
        "secrets-encryption-provider",
        Str,
        Some("aescbc"),
        "RKE2_SECRETS_ENCRYPTION_PROVIDER",
        false,
        "(security) Encryption provider of new keys (valid items: aescbc, secretbox)",
    ),
    flag(
        "audit-policy-file",
        Str,
        None,
        "RKE2_AUDIT_POLICY_FILE",
        true,
        "(security) Path to the file that defines the audit policy configuration (default: /etc/rancher/rke2/audit-policy.yaml when it exists)",
    ),
    flag(
        "pod-security-admission-config-file",
        Str,
        None,
        "RKE2_POD_SECURITY_ADMISSION_CONFIG_FILE",
        true,
        "(security) Path to the file that defines Pod Security Admission configuration (an AdmissionConfiguration with a PodSecurity plugin)",
    ),
    flag(
        "etcd-binary",
        Str,
        Some("etcd"),
        "RKE2_ETCD_BINARY",
        false,
        "etcd executable to run (looked up in PATH when not a path)",
    ),
    flag(
        "cluster-reset",
        Bool,
        None,
        "RKE2_CLUSTER_RESET",
        false,
        "(cluster) Forget all peers and become sole member of a new cluster",
    ),
    flag(
        "cluster-reset-restore-path",
        Str,
        None,
        "RKE2_CLUSTER_RESET_RESTORE_PATH",
        false,
        "(db) Path to snapshot file to be restored (or its name in S3 with etcd-s3)",
    ),
    flag(
        "etcd-disable-snapshots",
        Bool,
        None,
        "RKE2_ETCD_DISABLE_SNAPSHOTS",
        false,
        "(db) Disable automatic etcd snapshots",
    ),
    flag(
        "etcd-snapshot-schedule-cron",
        Str,
        Some("0 */12 * * *"),
        "RKE2_ETCD_SNAPSHOT_SCHEDULE_CRON",
        false,
        "(db) Snapshot interval time in cron spec. eg. every 5 hours '0 */5 * * *'",
    ),
    flag(
        "etcd-snapshot-retention",
        Str,
        Some("5"),
        "RKE2_ETCD_SNAPSHOT_RETENTION",
        false,
        "(db) Number of snapshots to retain",
    ),
    flag(
        "etcd-snapshot-dir",
        Str,
        None,
        "RKE2_ETCD_SNAPSHOT_DIR",
        false,
        "(db) Directory to save db snapshots. (default: ${data-dir}/server/db/snapshots)",
    ),
    flag(
        "etcd-snapshot-name",
        Str,
        Some("etcd-snapshot"),
        "RKE2_ETCD_SNAPSHOT_NAME",
        false,
        "(db) Set the base name of etcd snapshots (default: etcd-snapshot-<unix-timestamp>)",
    ),
    flag(
        "etcd-snapshot-compress",
        Bool,
        None,
        "RKE2_ETCD_SNAPSHOT_COMPRESS",
        false,
        "(db) Compress etcd snapshot",
    ),
    flag(
        "etcd-s3",
        Bool,
        None,
        "RKE2_ETCD_S3",
        false,
        "(db) Enable backup to S3",
    ),
    flag(
        "etcd-s3-endpoint",
        Str,
        Some("s3.amazonaws.com"),
        "RKE2_ETCD_S3_ENDPOINT",
        false,
        "(db) S3 endpoint url",
    ),
    flag(
        "etcd-s3-endpoint-ca",
        Str,
        None,
        "RKE2_ETCD_S3_ENDPOINT_CA",
        false,
        "(db) S3 custom CA cert to connect to S3 endpoint",
    ),
    flag(
        "etcd-s3-skip-ssl-verify",
        Bool,
        None,
        "RKE2_ETCD_S3_SKIP_SSL_VERIFY",
        false,
        "(db) Disables S3 SSL certificate validation",
    ),
    flag(
        "etcd-s3-access-key",
        Str,
        None,
        "AWS_ACCESS_KEY_ID",
        false,
        "(db) S3 access key",
    ),
    flag(
        "etcd-s3-secret-key",
        Str,
        None,
        "AWS_SECRET_ACCESS_KEY",
        false,
        "(db) S3 secret key",
    ),
    flag(
        "etcd-s3-bucket",
        Str,
        None,
        "RKE2_ETCD_S3_BUCKET",
        false,
        "(db) S3 bucket name",
    ),
    flag(
        "etcd-s3-region",
        Str,
        Some("us-east-1"),
        "RKE2_ETCD_S3_REGION",
        false,
        "(db) S3 region / bucket location (optional)",
    ),
    flag(
        "etcd-s3-folder",
        Str,
        None,
        "RKE2_ETCD_S3_FOLDER",
        false,
        "(db) S3 folder",
    ),
    flag(
        "etcd-s3-insecure",
        Bool,
        None,
        "RKE2_ETCD_S3_INSECURE",
        false,
        "(db) Disables S3 over HTTPS",
    ),
    flag(
        "etcd-s3-timeout",
        Str,
        Some("5m0s"),
        "RKE2_ETCD_S3_TIMEOUT",
        false,
        "(db) S3 timeout",
    ),
];

/// Looks a flag up by name (any role).
pub(crate) fn find(name: &str) -> Option<&'static FlagDef> {
    FLAGS.iter().find(|f| f.name == name)
}

/// Builds the clap command for `rke2 server` or `rke2 agent` from [`FLAGS`].
pub(crate) fn build_command(role: Role) -> Command {
    let (name, about) = match role {
        Role::Server => ("server", "Run management server"),
        Role::Agent => ("agent", "Run node agent"),
    };
    let mut cmd = Command::new(name)
        .bin_name(format!("rke2 {name}"))
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .after_help(
            "Every flag may also be set as a key (the flag name without dashes) in the config \
             file and its config.yaml.d drop-ins; `key+:` appends to a list. \
             Precedence: flags > environment > config files > defaults.",
        );
    for f in FLAGS.iter().filter(|f| f.for_role(role)) {
        let mut arg = Arg::new(f.name)
            .long(f.name)
            .help(format!("{} [env: {}]", f.help, f.env));
        if let Some(c) = f.short {
            arg = arg.short(c);
        }
        arg = match f.kind {
            Kind::Bool => arg.action(ArgAction::SetTrue),
            Kind::Str => arg.action(ArgAction::Set).value_name(
                if f.name.ends_with("file") || f.name == "config" {
                    "FILE"
                } else {
                    "VALUE"
                },
            ),
            Kind::List => arg.action(ArgAction::Append).value_name("VALUE"),
        };
        if let Some(d) = f.default {
            arg = arg.default_value(d);
        }
        cmd = cmd.arg(arg);
    }
    cmd
}
