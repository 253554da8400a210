//! Property tests: bad configuration gets a `ConfigError` naming the file,
//! flag or environment variable involved, never a panic.
//!
//! Each case builds a temp dir with `config.yaml` (arbitrary bytes,
//! YAML-looking text, or a YAML map whose keys are real flag names, `key+`
//! appends or random keys, with values of every YAML type), optionally a
//! `config.yaml.d` drop-in, random command-line words from the flag table
//! and random `RKE2_*` environment, and calls `rke2_config::load`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rke2_config::{ConfigError, Loaded, Role, load};
use serde_json::{Map, Value, json};

/// How a flag takes its value (mirrors the crate's private flag table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Str,
    List,
}

/// `(name, kind, env, agent)`: every flag exists for the server.
const FLAGS: &[(&str, Kind, &str, bool)] = &[
    ("debug", Kind::Bool, "RKE2_DEBUG", true),
    ("data-dir", Kind::Str, "RKE2_DATA_DIR", true),
    ("token", Kind::Str, "RKE2_TOKEN", true),
    ("token-file", Kind::Str, "RKE2_TOKEN_FILE", true),
    ("agent-token", Kind::Str, "RKE2_AGENT_TOKEN", false),
    (
        "agent-token-file",
        Kind::Str,
        "RKE2_AGENT_TOKEN_FILE",
        false,
    ),
    ("server", Kind::Str, "RKE2_URL", true),
    ("tls-san", Kind::List, "RKE2_TLS_SAN", false),
    ("node-taint", Kind::List, "RKE2_NODE_TAINT", true),
    ("node-label", Kind::List, "RKE2_NODE_LABEL", true),
    (
        "write-kubeconfig",
        Kind::Str,
        "RKE2_KUBECONFIG_OUTPUT",
        false,
    ),
    (
        "write-kubeconfig-mode",
        Kind::Str,
        "RKE2_KUBECONFIG_MODE",
        false,
    ),
    ("node-name", Kind::Str, "RKE2_NODE_NAME", true),
    ("node-ip", Kind::List, "RKE2_NODE_IP", true),
    (
        "advertise-address",
        Kind::Str,
        "RKE2_ADVERTISE_ADDRESS",
        false,
    ),
    ("bind-address", Kind::Str, "RKE2_BIND_ADDRESS", false),
    ("cluster-cidr", Kind::Str, "RKE2_CLUSTER_CIDR", false),
    ("service-cidr", Kind::Str, "RKE2_SERVICE_CIDR", false),
    ("cluster-domain", Kind::Str, "RKE2_CLUSTER_DOMAIN", false),
    ("disable", Kind::List, "RKE2_DISABLE", false),
    ("with-node-id", Kind::Bool, "RKE2_WITH_NODE_ID", true),
    (
        "https-listen-port",
        Kind::Str,
        "RKE2_HTTPS_LISTEN_PORT",
        false,
    ),
    ("lb-server-port", Kind::Str, "RKE2_LB_SERVER_PORT", true),
    ("supervisor-port", Kind::Str, "RKE2_SUPERVISOR_PORT", false),
    ("etcd-binary", Kind::Str, "RKE2_ETCD_BINARY", false),
];

/// Flags whose value is a path that `load` reads: only ever given one of
/// the paths of [`TokenPath`], never a random string.
const FILE_FLAGS: &[&str] = &["token-file", "agent-token-file"];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- values

/// A value for a flag: valid spellings of every kind of setting, near
/// misses and junk.
fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", " ", "true", "false", "yes", "no", "1", "0", "t", "F", "maybe",
            "10.0.0.1", "::1", "fe80::1%eth0", "300.1.1.1", "10.42.0.0/16",
            "fd00::/8", "10.42.0.0/33", "10.0.0.1,10.0.0.2", ",", " , ,",
            "6443", "0", "65535", "65536", "-1", "0x10", "0644", "644", "0o600",
            "0888", "77777", "0o", "https://10.0.0.1:9345", "http://x", "https://",
            "https:///x", "key=value:NoSchedule", "key:NoExecute", "=v:NoSchedule",
            "key=v:Bogus", "key=v", "a=b", "=b", "ab", "a=b,c=d", "traefik,coredns",
            "cluster.local", "node-1", "/var/lib/rancher/rke2", "é", "\u{0}",
            "--debug", "-c", "\n", "#", "a: b",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
        1 => "[a-z0-9=:,./-]{0,16}",
    ]
}

/// The paths given to `token-file` / `agent-token-file`.
#[derive(Clone, Copy, Debug)]
enum TokenPath {
    Missing,
    Empty,
    Token,
    Dir,
}

fn arb_token_path() -> impl Strategy<Value = TokenPath> {
    prop::sample::select(vec![
        TokenPath::Missing,
        TokenPath::Empty,
        TokenPath::Token,
        TokenPath::Dir,
    ])
}

/// One temp dir per case, holding the config file, drop-ins and token files.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty-token"), "").unwrap();
        std::fs::write(dir.path().join("token"), format!("{}\n", full_token())).unwrap();
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();
        Sandbox { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config_file(&self) -> PathBuf {
        self.path().join("config.yaml")
    }

    fn token_path(&self, t: TokenPath) -> String {
        let name = match t {
            TokenPath::Missing => "no-such-token",
            TokenPath::Empty => "empty-token",
            TokenPath::Token => "token",
            TokenPath::Dir => "a-dir",
        };
        self.path().join(name).display().to_string()
    }
}

/// A well-formed full token (`K10<64 hex>::server:<password>`).
fn full_token() -> String {
    format!("K10{}::server:secret", "0123456789abcdef".repeat(4))
}

// ---------------------------------------------------------------- YAML

fn arb_yaml_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1_000_000i64..1_000_000).prop_map(|n| json!(n as f64 / 8.0)),
        arb_value().prop_map(Value::String),
    ]
}

/// A YAML value of any type, depth-limited.
fn arb_yaml_value() -> impl Strategy<Value = Value> {
    arb_yaml_scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A key: a real flag name (maybe with `+`), `config`, or a random word.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (
            prop::sample::select(FLAGS.iter().map(|f| f.0).collect::<Vec<_>>()),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(n, plus)| if plus { format!("{n}+") } else { n.to_string() }),
        1 => prop::sample::select(vec!["config", "+", "debug++", "Token", "node_ip"])
            .prop_map(str::to_string),
        1 => "[a-zA-Z0-9_+-]{1,12}",
    ]
}

/// A config map: flag keys with values of random YAML types; file-path
/// keys get one of the sandbox's token paths.
fn arb_config_map() -> impl Strategy<Value = Vec<(String, ConfValue)>> {
    vec(
        (
            arb_key(),
            prop_oneof![
                3 => arb_yaml_value().prop_map(ConfValue::Yaml),
                1 => vec(arb_value(), 0..4).prop_map(|l| ConfValue::Yaml(json!(l))),
                1 => arb_token_path().prop_map(ConfValue::Token),
            ],
        ),
        0..10,
    )
}

#[derive(Clone, Debug)]
enum ConfValue {
    Yaml(Value),
    Token(TokenPath),
}

/// Renders a config map as YAML text (keys are unique: later ones win).
fn render_map(sb: &Sandbox, entries: &[(String, ConfValue)]) -> String {
    let mut m: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in entries {
        let is_file_key = FILE_FLAGS.contains(&k.trim_end_matches('+'));
        let v = match v {
            ConfValue::Token(t) => json!(sb.token_path(*t)),
            // A random string in a file-path key would make load read an
            // arbitrary path of this machine: use a sandbox path instead.
            ConfValue::Yaml(Value::String(_)) if is_file_key => {
                json!(sb.token_path(TokenPath::Missing))
            }
            ConfValue::Yaml(Value::Array(_)) if is_file_key => {
                json!([sb.token_path(TokenPath::Token)])
            }
            ConfValue::Yaml(v) => v.clone(),
        };
        m.insert(k.clone(), v);
    }
    serde_saphyr::to_string(&m).unwrap()
}

/// YAML-looking text built from YAML syntax and flag names.
fn arb_yamlish() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            3 => prop::sample::select(
                FLAGS
                    .iter()
                    .filter(|f| !FILE_FLAGS.contains(&f.0))
                    .map(|f| f.0)
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_string)
            .boxed(),
            3 => prop::sample::select(vec![
                ": ", ":", "+: ", "- ", "\n", "\n  ", "\n- ", "{", "}", "[", "]", ", ",
                "&a ", "*a", "!!str ", "!!int ", "!!binary ", "<<: ", "? ", "| ", "> ",
                "#c", "\"", "'", "---\n", "...\n", "%YAML 1.2\n", "\t", "\\", "~",
                "null", "true", "0644", "0x1F", "1e400", ".inf", "é", "\u{feff}",
                "\r\n", "10.0.0.1", "a=b:NoSchedule",
            ])
            .prop_map(str::to_string)
            .boxed(),
            2 => "[a-z0-9]{1,6}".boxed(),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// What goes into `config.yaml`.
#[derive(Clone, Debug)]
enum FileContent {
    Absent,
    Bytes(Vec<u8>),
    Text(String),
    Map(Vec<(String, ConfValue)>),
}

fn arb_file() -> impl Strategy<Value = FileContent> {
    prop_oneof![
        1 => Just(FileContent::Absent),
        2 => vec(any::<u8>(), 0..200).prop_map(FileContent::Bytes),
        3 => arb_yamlish().prop_map(FileContent::Text),
        6 => arb_config_map().prop_map(FileContent::Map),
    ]
}

fn write_content(sb: &Sandbox, path: &Path, c: &FileContent) {
    match c {
        FileContent::Absent => {}
        FileContent::Bytes(b) => std::fs::write(path, b).unwrap(),
        FileContent::Text(t) => std::fs::write(path, t).unwrap(),
        FileContent::Map(m) => std::fs::write(path, render_map(sb, m)).unwrap(),
    }
}

/// How `config.yaml.d` looks.
#[derive(Clone, Debug)]
enum Dropins {
    None,
    NotADir,
    Files(Vec<FileContent>),
}

fn arb_dropins() -> impl Strategy<Value = Dropins> {
    prop_oneof![
        4 => Just(Dropins::None),
        1 => Just(Dropins::NotADir),
        2 => vec(arb_file(), 0..3).prop_map(Dropins::Files),
    ]
}

// ---------------------------------------------------------------- args, env

/// One command-line element: a flag from the table with a value, or junk.
#[derive(Clone, Debug)]
enum Arg {
    Flag {
        name: &'static str,
        value: String,
        joined: bool,
    },
    Token {
        name: &'static str,
        path: TokenPath,
    },
    Junk(String),
}

fn arb_arg() -> impl Strategy<Value = Arg> {
    let names: Vec<&'static str> = FLAGS
        .iter()
        .filter(|f| !FILE_FLAGS.contains(&f.0))
        .map(|f| f.0)
        .collect();
    prop_oneof![
        12 => (prop::sample::select(names), arb_value(), prop::bool::weighted(0.3))
            .prop_map(|(name, value, joined)| Arg::Flag { name, value, joined }),
        1 => (prop::sample::select(FILE_FLAGS.to_vec()), arb_token_path())
            .prop_map(|(name, path)| Arg::Token { name, path }),
        1 => prop_oneof![
            prop::sample::select(vec![
                "--unknown", "-x", "--", "-", "--debug=maybe", "--debug=true", "--=",
                "--node-ip", "positional", "-h", "--help", "-V", "--version", "-cX",
            ])
            .prop_map(str::to_string),
            "[a-z-]{0,10}".prop_filter("not a file flag", |s| {
                !FILE_FLAGS.iter().any(|f| s.trim_start_matches('-').starts_with(f))
            }),
        ]
        .prop_map(Arg::Junk),
    ]
}

fn render_args(sb: &Sandbox, args: &[Arg]) -> Vec<OsString> {
    let mut out = Vec::new();
    for a in args {
        match a {
            Arg::Flag {
                name,
                value,
                joined,
            } => {
                let kind = FLAGS.iter().find(|f| f.0 == *name).unwrap().1;
                if kind == Kind::Bool && !*joined {
                    out.push(format!("--{name}"));
                } else if *joined {
                    out.push(format!("--{name}={value}"));
                } else {
                    out.push(format!("--{name}"));
                    out.push(value.clone());
                }
            }
            Arg::Token { name, path } => {
                out.push(format!("--{name}"));
                out.push(sb.token_path(*path));
            }
            Arg::Junk(j) => out.push(j.clone()),
        }
    }
    out.into_iter().map(OsString::from).collect()
}

/// Random `RKE2_*` variables: env names from the table (file-path ones get
/// sandbox paths), plus unrelated ones.
fn arb_env() -> impl Strategy<Value = Vec<(&'static str, EnvValue)>> {
    let names: Vec<&'static str> = FLAGS.iter().map(|f| f.2).collect();
    vec(
        prop_oneof![
            4 => (prop::sample::select(names), arb_value().prop_map(EnvValue::Str)),
            1 => (
                prop::sample::select(vec!["RKE2_TOKEN_FILE", "RKE2_AGENT_TOKEN_FILE"]),
                arb_token_path().prop_map(EnvValue::Token),
            ),
            1 => (
                prop::sample::select(vec!["RKE2_UNKNOWN", "PATH", "rke2_debug", "RKE2_"]),
                arb_value().prop_map(EnvValue::Str),
            ),
        ],
        0..6,
    )
}

#[derive(Clone, Debug)]
enum EnvValue {
    Str(String),
    Token(TokenPath),
}

fn render_env(sb: &Sandbox, env: &[(&'static str, EnvValue)]) -> HashMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                EnvValue::Token(t) => sb.token_path(*t),
                EnvValue::Str(_) if k.ends_with("TOKEN_FILE") => sb.token_path(TokenPath::Missing),
                EnvValue::Str(s) => s.clone(),
            };
            (k.to_string(), v)
        })
        .collect()
}

/// How the config file is named: `--config`, `-c`, `RKE2_CONFIG_FILE`, or
/// a missing file through either.
#[derive(Clone, Copy, Debug)]
enum ConfigSource {
    Flag,
    Short,
    Env,
    MissingFlag,
    MissingEnv,
}

fn arb_config_source() -> impl Strategy<Value = ConfigSource> {
    prop_oneof![
        8 => Just(ConfigSource::Flag),
        2 => Just(ConfigSource::Short),
        6 => Just(ConfigSource::Env),
        1 => Just(ConfigSource::MissingFlag),
        1 => Just(ConfigSource::MissingEnv),
    ]
}

/// A valid value for a flag (as the file, env and command line spell it).
fn valid_value(name: &'static str) -> BoxedStrategy<String> {
    let ip = any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string());
    match name {
        "debug" | "with-node-id" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        "server" => "https://[a-z0-9]{1,8}(\\.[a-z]{2,4})?(:[1-9][0-9]{0,3})?".boxed(),
        "node-taint" => {
            "[a-z]{1,5}(=[a-z0-9]{0,4})?:(NoSchedule|PreferNoSchedule|NoExecute)".boxed()
        }
        "node-label" => "[a-z]{1,5}=[a-z0-9]{0,4}".boxed(),
        "write-kubeconfig-mode" => "0?[0-7]{3}".boxed(),
        "node-ip" | "advertise-address" | "bind-address" => ip.boxed(),
        // Pods in 172.16/12, Services in 192.168/16: never overlapping each
        // other or the other's default, each holding a node block (/24)
        // and the default cluster-dns (10th address).
        "cluster-cidr" => (16u8..32, any::<u8>(), 12u8..=24)
            .prop_map(|(b, c, n)| format!("172.{b}.{c}.0/{n}"))
            .boxed(),
        "service-cidr" => (any::<u8>(), 16u8..=24)
            .prop_map(|(c, n)| format!("192.168.{c}.0/{n}"))
            .boxed(),
        "node-name" => "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}".boxed(),
        // Ranges apart, and apart from the fixed etcd and node API ports
        // and from https-listen-port's default (6443), which applies when
        // only supervisor-port is set.
        "https-listen-port" => (1u16..2379).prop_map(|p| p.to_string()).boxed(),
        "supervisor-port" => prop_oneof![2381u16..6443, 6444u16..10250]
            .prop_map(|p| p.to_string())
            .boxed(),
        "lb-server-port" => (2u16..).prop_map(|p| p.to_string()).boxed(),
        _ => "[a-z0-9][a-z0-9./-]{0,11}".boxed(),
    }
}

/// `(flag, value, where)` with `where` 0 = file, 1 = env, 2 = command line.
fn arb_valid_settings() -> impl Strategy<Value = Vec<(&'static str, String, u8)>> {
    let names: Vec<&'static str> = FLAGS
        .iter()
        .filter(|f| !FILE_FLAGS.contains(&f.0))
        .map(|f| f.0)
        .collect();
    vec(
        (prop::sample::select(names), 0..3u8)
            .prop_flat_map(|(n, w)| (Just(n), valid_value(n), Just(w))),
        0..12,
    )
    .prop_map(|settings| {
        // One source per flag: a repeated single-value flag is a usage error.
        let mut seen = std::collections::BTreeSet::new();
        let mut out: Vec<_> = settings
            .into_iter()
            .rev()
            .filter(|s| seen.insert(s.0))
            .collect();
        out.reverse();
        out
    })
}

// ---------------------------------------------------------------- checks

#[derive(Debug, Clone)]
struct Case {
    role: Role,
    source: ConfigSource,
    file: FileContent,
    dropins: Dropins,
    args: Vec<Arg>,
    env: Vec<(&'static str, EnvValue)>,
}

fn arb_case(file: BoxedStrategy<FileContent>) -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![Role::Server, Role::Server, Role::Agent]),
        arb_config_source(),
        file,
        arb_dropins(),
        vec(arb_arg(), 0..4),
        arb_env(),
    )
        .prop_map(|(role, source, file, dropins, args, env)| Case {
            role,
            source,
            file,
            dropins,
            args,
            env,
        })
}

/// Sets the case up in a fresh sandbox and calls `load`.
fn run(case: &Case) -> (Sandbox, Result<Loaded, ConfigError>) {
    let sb = Sandbox::new();
    let cfg = sb.config_file();
    write_content(&sb, &cfg, &case.file);
    let dropin_dir = sb.path().join("config.yaml.d");
    match &case.dropins {
        Dropins::None => {}
        Dropins::NotADir => std::fs::write(&dropin_dir, "debug: true\n").unwrap(),
        Dropins::Files(files) => {
            std::fs::create_dir(&dropin_dir).unwrap();
            for (i, f) in files.iter().enumerate() {
                let ext = if i % 2 == 0 { "yaml" } else { "yml" };
                write_content(&sb, &dropin_dir.join(format!("{i:02}-x.{ext}")), f);
            }
        }
    }
    let mut env = render_env(&sb, &case.env);
    env.remove("RKE2_CONFIG_FILE");
    let missing = sb.path().join("missing.yaml").display().to_string();
    let mut args: Vec<OsString> = Vec::new();
    match case.source {
        ConfigSource::Flag => {
            args.push("--config".into());
            args.push(cfg.clone().into());
        }
        ConfigSource::Short => {
            args.push("-c".into());
            args.push(cfg.clone().into());
        }
        ConfigSource::Env => {
            env.insert("RKE2_CONFIG_FILE".into(), cfg.display().to_string());
        }
        ConfigSource::MissingFlag => {
            args.push("--config".into());
            args.push(missing.into());
        }
        ConfigSource::MissingEnv => {
            env.insert("RKE2_CONFIG_FILE".into(), missing);
        }
    }
    args.extend(render_args(&sb, &case.args));
    let r = load(case.role, &args, &env);
    (sb, r)
}

/// Every error names where the problem is and exits 2 (0 for help/version).
fn check_result(sb: &Sandbox, r: &Result<Loaded, ConfigError>) -> Result<(), TestCaseError> {
    let dir = sb.path().display().to_string();
    let e = match r {
        Ok(l) => {
            prop_assert!(l.config.config_file.starts_with(sb.path()));
            for w in &l.warnings {
                prop_assert!(w.contains(&dir), "warning does not name the file: {}", w);
            }
            return Ok(());
        }
        Err(e) => e,
    };
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty(), "empty message for {:?}", e);
    let names_origin =
        |m: &str| m.contains(&dir) || m.contains("flag --") || m.contains("env RKE2_");
    match e {
        ConfigError::Display(_) => {
            prop_assert_eq!(e.exit_code(), 0);
            return Ok(());
        }
        ConfigError::Usage(_) => prop_assert!(msg.contains("--"), "usage error: {}", msg),
        ConfigError::Yaml { path, .. } | ConfigError::Read { path, .. } => {
            prop_assert!(path.starts_with(sb.path()), "{}", msg);
            prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
        }
        ConfigError::MissingConfigFile { path, .. } => {
            prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
            prop_assert!(names_origin(&msg), "{}", msg);
        }
        ConfigError::InvalidValue { key, .. } => {
            prop_assert!(names_origin(&msg), "does not name file/flag/env: {}", msg);
            prop_assert!(msg.contains(key.as_str()), "does not name the key: {}", msg);
        }
        ConfigError::InvalidToken { key, file, .. } => {
            prop_assert!(names_origin(&msg), "does not name file/flag/env: {}", msg);
            prop_assert!(msg.contains(key.as_str()), "does not name the key: {}", msg);
            if let Some(f) = file {
                prop_assert!(msg.contains(&f.display().to_string()), "{}", msg);
            }
        }
        ConfigError::TokenFile { path, .. } => {
            prop_assert!(names_origin(&msg), "does not name file/flag/env: {}", msg);
            prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
        }
        ConfigError::Missing { .. } => {
            prop_assert!(msg.contains("--") && msg.contains("RKE2_"), "{}", msg);
        }
    }
    prop_assert_eq!(e.exit_code(), 2, "{}", msg);
    Ok(())
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary files (bytes, YAML-like text, flag maps with random value
    /// types), drop-ins, CLI words and env: Ok, or an error naming where.
    #[test]
    fn load_never_panics(case in arb_case(arb_file().boxed())) {
        let (sb, r) = run(&case);
        check_result(&sb, &r)?;
    }

    /// Config maps only, no junk arguments: exercises value validation of
    /// every key through every source.
    #[test]
    fn load_flag_maps(
        map in arb_config_map(),
        args in vec(arb_arg().prop_filter("no junk", |a| !matches!(a, Arg::Junk(_))), 0..4),
        env in arb_env(),
        role in prop::sample::select(vec![Role::Server, Role::Agent]),
    ) {
        let case = Case {
            role,
            source: ConfigSource::Flag,
            file: FileContent::Map(map),
            dropins: Dropins::None,
            args,
            env,
        };
        let (sb, r) = run(&case);
        check_result(&sb, &r)?;
    }

    /// A bad value for one setting in the file, the env or on the command
    /// line is reported with that source.
    #[test]
    fn bad_value_names_its_source(
        flag in prop::sample::select(vec![
            ("https-listen-port", "RKE2_HTTPS_LISTEN_PORT"),
            ("cluster-cidr", "RKE2_CLUSTER_CIDR"),
            ("node-ip", "RKE2_NODE_IP"),
            ("bind-address", "RKE2_BIND_ADDRESS"),
            ("write-kubeconfig-mode", "RKE2_KUBECONFIG_MODE"),
            ("node-taint", "RKE2_NODE_TAINT"),
            ("node-label", "RKE2_NODE_LABEL"),
            ("server", "RKE2_URL"),
        ]),
        junk in "[g-z]{1,8}",
        source in 0..3u8,
    ) {
        let (name, env_name) = flag;
        let sb = Sandbox::new();
        let cfg = sb.config_file();
        let mut args: Vec<OsString> = vec!["--config".into(), cfg.clone().into()];
        let mut env = HashMap::new();
        std::fs::write(&cfg, "").unwrap();
        match source {
            0 => std::fs::write(&cfg, format!("{name}: \"{junk}\"\n")).unwrap(),
            1 => {
                env.insert(env_name.to_string(), junk.clone());
            }
            _ => {
                args.push(format!("--{name}={junk}").into());
            }
        }
        let r = load(Role::Server, &args, &env);
        check_result(&sb, &r)?;
        let msg = match r {
            Ok(_) => return Err(TestCaseError::fail(format!("{name}={junk} accepted"))),
            Err(e) => e.to_string(),
        };
        let want = match source {
            0 => format!("file {} line 1", cfg.display()),
            1 => format!("env {env_name}"),
            _ => format!("flag --{name}"),
        };
        prop_assert!(msg.contains(&want), "{} does not contain {}", msg, want);
        prop_assert!(msg.contains(&junk), "{} does not show the value", msg);
    }

    /// Precedence: flags > environment > files > defaults.
    #[test]
    fn precedence_flag_env_file(
        file in prop::option::of(1u16..),
        env_port in prop::option::of(1u16..),
        flag in prop::option::of(1u16..),
    ) {
        let sb = Sandbox::new();
        let cfg = sb.config_file();
        let text = file.map(|p| format!("https-listen-port: {p}\n")).unwrap_or_default();
        std::fs::write(&cfg, text).unwrap();
        let mut args: Vec<OsString> = vec!["--config".into(), cfg.clone().into()];
        if let Some(p) = flag {
            args.push(format!("--https-listen-port={p}").into());
        }
        let env: HashMap<String, String> = env_port
            .map(|p| ("RKE2_HTTPS_LISTEN_PORT".to_string(), p.to_string()))
            .into_iter()
            .collect();
        let r = load(Role::Server, &args, &env);
        let got = r.map_err(|e| TestCaseError::fail(e.to_string()))?.config.https_listen_port;
        prop_assert_eq!(got, flag.or(env_port).or(file).unwrap_or(6443));
    }

    /// Valid values for any flags, from any source, load without error.
    #[test]
    fn valid_settings_load(
        settings in arb_valid_settings(),
        token in prop::option::of(prop::sample::select(vec![
            TokenPath::Token, TokenPath::Token, TokenPath::Missing,
        ])),
    ) {
        let sb = Sandbox::new();
        let cfg = sb.config_file();
        let mut file = serde_json::Map::new();
        let mut env = HashMap::new();
        let mut args: Vec<OsString> = vec!["--config".into(), cfg.clone().into()];
        for (name, value, place) in &settings {
            let kind = FLAGS.iter().find(|f| f.0 == *name).unwrap().1;
            match place {
                0 => {
                    let v = match kind {
                        Kind::Bool => json!(value == "true"),
                        Kind::List => json!([value]),
                        Kind::Str => json!(value),
                    };
                    file.insert(name.to_string(), v);
                }
                1 => {
                    let e = FLAGS.iter().find(|f| f.0 == *name).unwrap().2;
                    env.insert(e.to_string(), value.clone());
                }
                _ if kind == Kind::Bool => {
                    if value == "true" {
                        args.push(format!("--{name}").into());
                    }
                }
                _ => args.push(format!("--{name}={value}").into()),
            }
        }
        if let Some(t) = token {
            file.insert("token-file".into(), json!(sb.token_path(t)));
        }
        std::fs::write(&cfg, serde_saphyr::to_string(&file).unwrap()).unwrap();
        let r = load(Role::Server, &args, &env);
        check_result(&sb, &r)?;
        match (&r, token) {
            (Err(ConfigError::TokenFile { .. }), Some(TokenPath::Missing)) => {}
            (Ok(l), _) => {
                if matches!(token, Some(TokenPath::Token))
                    && !settings.iter().any(|s| s.0 == "token")
                {
                    prop_assert_eq!(l.config.token.clone(), Some(full_token()));
                }
            }
            (Err(e), _) => {
                return Err(TestCaseError::fail(format!("valid settings rejected: {e}")));
            }
        }
    }
    /// Tokens of every shape (bare, K10 with good and bad hashes, users,
    /// separators, whitespace): loaded only when the server and agent
    /// will parse them, refused as `InvalidToken` otherwise, and the
    /// secret never appears in the message.
    #[test]
    fn tokens_load_only_when_well_formed_and_are_never_shown(
        hash in prop_oneof!["[0-9a-f]{64}", "[0-9A-F]{64}", "[0-9a-fA-Fg]{0,66}"],
        sep in prop::sample::select(vec!["::", ":", ":::", ""]),
        user in prop::sample::select(vec!["server", "node", "admin", ""]),
        colon in prop::sample::select(vec![":", ""]),
        junk in "[ -~\t\n]{0,3}",
        full in any::<bool>(),
        role in prop::sample::select(vec![Role::Server, Role::Agent]),
    ) {
        const SECRET: &str = "S3cr3tMark";
        let token = if full {
            format!("K10{hash}{sep}{user}{colon}{SECRET}{junk}")
        } else {
            format!("{junk}{SECRET}{junk}")
        };
        let env: HashMap<String, String> = [
            ("RKE2_TOKEN".to_string(), token.clone()),
            ("RKE2_URL".to_string(), "https://s:9345".to_string()),
        ]
        .into_iter()
        .collect();
        let args: Vec<OsString> = vec!["--config".into(), "/dev/null".into()];
        match load(role, &args, &env) {
            Ok(l) => {
                prop_assert_eq!(l.config.token.as_deref(), Some(token.as_str()));
                let t = rke2_trust::Token::parse(&token);
                prop_assert!(t.is_ok(), "loaded but unparsable: {:?}", token);
                prop_assert!(!token.chars().any(|c| c.is_whitespace() || c.is_control()));
                let t = t.unwrap();
                if let Some(u) = t.user.as_deref() {
                    prop_assert!(u == "server" || (u == "node" && role == Role::Agent), "user {}", u);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let is_token_error = matches!(e, ConfigError::InvalidToken { .. });
                prop_assert!(is_token_error, "{:?}", e);
                prop_assert!(msg.contains("env RKE2_TOKEN: invalid token"), "{}", msg);
                prop_assert!(!msg.contains(SECRET), "the secret is shown: {}", msg);
                prop_assert_eq!(e.exit_code(), 2);
            }
        }
    }
}
