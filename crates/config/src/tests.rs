use super::*;
use std::fs;
use tempfile::TempDir;

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A temp dir with `config.yaml` holding `main` and drop-ins `(name, text)`.
fn setup(main: Option<&str>, dropins: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let cfg = dir.path().join("config.yaml");
    if let Some(m) = main {
        fs::write(&cfg, m).unwrap();
    }
    if !dropins.is_empty() {
        let d = dir.path().join("config.yaml.d");
        fs::create_dir(&d).unwrap();
        for (name, text) in dropins {
            fs::write(d.join(name), text).unwrap();
        }
    }
    (dir, cfg)
}

fn load_with(
    role: Role,
    cfg: &Path,
    extra: &[&str],
    e: &HashMap<String, String>,
) -> Result<Loaded, ConfigError> {
    let mut a = vec!["--config".to_string(), cfg.display().to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<OsString> = a.into_iter().map(OsString::from).collect();
    load(role, &a, e)
}

fn server(cfg: &Path, extra: &[&str]) -> Result<Loaded, ConfigError> {
    load_with(Role::Server, cfg, extra, &no_env())
}

fn err_text(r: Result<Loaded, ConfigError>) -> String {
    match r {
        Ok(l) => panic!("expected an error, got {:?}", l.config),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn defaults_for_server() {
    let (_d, cfg) = setup(Some(""), &[]);
    let l = server(&cfg, &[]).unwrap();
    let c = l.config;
    assert!(l.warnings.is_empty());
    assert_eq!(c.role, Role::Server);
    assert_eq!(c.config_file, cfg);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/rancher/rke2"));
    assert_eq!(
        c.write_kubeconfig,
        PathBuf::from("/etc/rancher/rke2/rke2.yaml")
    );
    assert_eq!(c.write_kubeconfig_mode, None);
    assert_eq!(c.cluster_cidr.to_string(), "10.42.0.0/16");
    assert_eq!(c.service_cidr.to_string(), "10.43.0.0/16");
    assert_eq!(c.cluster_domain, "cluster.local");
    assert_eq!(c.https_listen_port, 6443);
    assert_eq!(c.supervisor_port, 9345);
    assert_eq!(c.etcd_binary, "etcd");
    assert_eq!(c.token, None);
    assert_eq!(c.server, None);
    assert!(c.tls_san.is_empty() && c.node_ips.is_empty() && c.disable.is_empty());
    assert!(!c.with_node_id && !c.debug);
    assert_eq!(c.service_node_port_range, (30000, 32767));
    assert!(!c.disable_kube_proxy && !c.enable_servicelb);
    assert_eq!(c.bind_address, None);
    assert!(!c.node_name.is_empty());
    assert_eq!(c.node_name, c.node_name.to_lowercase());
}

#[test]
fn default_config_file_path_when_not_given() {
    // The default file may or may not exist on this machine; only check the path chosen.
    match load(Role::Server, &[], &no_env()) {
        Ok(l) => assert_eq!(l.config.config_file, PathBuf::from(DEFAULT_CONFIG_FILE)),
        Err(e) => assert!(e.to_string().contains("/etc/rancher/rke2"), "{e}"),
    }
}

#[test]
fn missing_explicit_config_file_is_an_error() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("nope.yaml");
    let t = err_text(server(&p, &[]));
    assert!(
        t.contains("nope.yaml") && t.contains("does not exist"),
        "{t}"
    );
    let e = env(&[("RKE2_CONFIG_FILE", p.to_str().unwrap())]);
    let t = err_text(load(Role::Server, &[], &e));
    assert!(t.contains("env RKE2_CONFIG_FILE"), "{t}");
}

#[test]
fn config_file_from_env() {
    let (_d, cfg) = setup(Some("token: fromenvfile\n"), &[]);
    let e = env(&[("RKE2_CONFIG_FILE", cfg.to_str().unwrap())]);
    let l = load(Role::Server, &[], &e).unwrap();
    assert_eq!(l.config.token.as_deref(), Some("fromenvfile"));
    assert_eq!(l.config.config_file, cfg);
}

#[test]
fn short_c_flag() {
    let (_d, cfg) = setup(Some("token: short\n"), &[]);
    let l = load(
        Role::Server,
        &args(&["-c", cfg.to_str().unwrap()]),
        &no_env(),
    )
    .unwrap();
    assert_eq!(l.config.token.as_deref(), Some("short"));
}

#[test]
fn file_values_are_read() {
    let (_d, cfg) = setup(
        Some(
            "token: secret\nserver: https://lb.example:9345\ntls-san:\n  - lb.example\n  - 10.0.0.5\n\
             node-taint: CriticalAddonsOnly=true:NoExecute\nnode-label:\n  - a=b\n  - c=\n\
             write-kubeconfig-mode: \"0644\"\ndata-dir: /tmp/rke2\nnode-name: n1\n\
             node-ip: 10.0.0.1,fd00::1\nadvertise-address: 10.0.0.1\nbind-address: 0.0.0.0\n\
             cluster-cidr: 10.50.0.0/16\nservice-cidr: 10.60.0.0/16\ncluster-domain: example.org\n\
             disable: [rke2-ingress-nginx]\nwith-node-id: true\nhttps-listen-port: 7443\n\
             supervisor-port: 9999\netcd-binary: /usr/bin/etcd\ndebug: true\n",
        ),
        &[],
    );
    let l = server(&cfg, &[]).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = l.config;
    assert_eq!(c.token.as_deref(), Some("secret"));
    assert_eq!(c.server.as_deref(), Some("https://lb.example:9345"));
    assert_eq!(c.tls_san, vec!["lb.example", "10.0.0.5"]);
    assert_eq!(
        c.node_taints,
        vec![Taint {
            key: "CriticalAddonsOnly".into(),
            value: Some("true".into()),
            effect: TaintEffect::NoExecute
        }]
    );
    assert_eq!(
        c.node_labels,
        vec![
            ("a".to_string(), "b".to_string()),
            ("c".to_string(), String::new())
        ]
    );
    assert_eq!(c.write_kubeconfig_mode, Some(0o644));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/rke2"));
    assert_eq!(c.node_name, "n1");
    assert_eq!(
        c.node_ips,
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(c.advertise_address, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(c.bind_address, Some("0.0.0.0".parse().unwrap()));
    assert_eq!(c.cluster_cidr.to_string(), "10.50.0.0/16");
    assert_eq!(c.service_cidr.to_string(), "10.60.0.0/16");
    assert_eq!(c.cluster_domain, "example.org");
    assert_eq!(c.disable, vec!["rke2-ingress-nginx"]);
    assert!(c.with_node_id && c.debug);
    assert_eq!(c.https_listen_port, 7443);
    assert_eq!(c.supervisor_port, 9999);
    assert_eq!(c.etcd_binary, "/usr/bin/etcd");
}

#[test]
fn kubeconfig_mode_spellings() {
    for (text, want) in [
        ("write-kubeconfig-mode: \"0644\"\n", 0o644),
        ("write-kubeconfig-mode: '600'\n", 0o600),
        ("write-kubeconfig-mode: 644\n", 0o644),
        ("write-kubeconfig-mode: 0644\n", 0o644),
        ("write-kubeconfig-mode: 0600\n", 0o600),
    ] {
        let (_d, cfg) = setup(Some(text), &[]);
        let c = server(&cfg, &[]).unwrap().config;
        assert_eq!(c.write_kubeconfig_mode, Some(want), "{text}");
    }
    let (_d, cfg) = setup(Some(""), &[]);
    let e = env(&[("RKE2_KUBECONFIG_MODE", "0640")]);
    let c = load_with(Role::Server, &cfg, &[], &e).unwrap().config;
    assert_eq!(c.write_kubeconfig_mode, Some(0o640));
}

#[test]
fn dropins_in_name_order_and_later_wins() {
    let (_d, cfg) = setup(
        Some("token: main\nnode-name: main\ntls-san: [a]\n"),
        &[
            ("20-b.yaml", "token: twenty\n"),
            ("10-a.yml", "token: ten\nnode-name: ten\n"),
            ("30-c.txt", "token: ignored\n"),
        ],
    );
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.token.as_deref(), Some("twenty"));
    assert_eq!(c.node_name, "ten");
    assert_eq!(c.tls_san, vec!["a"]);
}

#[test]
fn empty_main_file_still_reads_dropins_and_config_key_is_ignored() {
    let (_d, cfg) = setup(
        Some("# nothing\n"),
        &[("a.yaml", "token: drop\nconfig: /elsewhere.yaml\n")],
    );
    let l = server(&cfg, &[]).unwrap();
    assert_eq!(l.config.token.as_deref(), Some("drop"));
    assert_eq!(l.config.config_file, cfg);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn custom_config_file_uses_its_own_dot_d() {
    let dir = TempDir::new().unwrap();
    let cfg = dir.path().join("custom.yaml");
    fs::write(&cfg, "token: main\n").unwrap();
    fs::create_dir(dir.path().join("custom.yaml.d")).unwrap();
    fs::write(dir.path().join("custom.yaml.d/1.yaml"), "token: dropin\n").unwrap();
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.token.as_deref(), Some("dropin"));
}

#[test]
fn plus_appends_across_files_and_plain_key_replaces() {
    let (_d, cfg) = setup(
        Some("tls-san: [a, b]\nnode-label: [x=1]\n"),
        &[
            ("1.yaml", "tls-san+: [c]\nnode-label: [y=2]\n"),
            ("2.yaml", "tls-san+: d\nnode-label+:\n  - z=3\n"),
        ],
    );
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.tls_san, vec!["a", "b", "c", "d"]);
    assert_eq!(
        c.node_labels,
        vec![
            ("y".to_string(), "2".to_string()),
            ("z".to_string(), "3".to_string())
        ]
    );
}

#[test]
fn scalar_for_list_is_one_element() {
    let (_d, cfg) = setup(Some("node-taint: k:NoSchedule\n"), &[]);
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.node_taints.len(), 1);
    assert_eq!(c.node_taints[0].to_string(), "k:NoSchedule");
    assert_eq!(c.node_taints[0].value, None);
}

#[test]
fn cli_list_replaces_file_list_and_cli_wins() {
    let (_d, cfg) = setup(
        Some("tls-san: [a, b]\ntoken: file\nnode-label: [f=1]\n"),
        &[("x.yaml", "tls-san+: [c]\n")],
    );
    let c = server(
        &cfg,
        &[
            "--tls-san",
            "cli1",
            "--tls-san",
            "cli2,cli3",
            "--token",
            "cli",
            "--with-node-id",
        ],
    )
    .unwrap()
    .config;
    assert_eq!(c.tls_san, vec!["cli1", "cli2", "cli3"]);
    assert_eq!(c.token.as_deref(), Some("cli"));
    assert!(c.with_node_id);
    // Not given on the CLI: the file list stays.
    assert_eq!(c.node_labels, vec![("f".to_string(), "1".to_string())]);
}

#[test]
fn env_precedence_between_cli_and_files() {
    let (_d, cfg) = setup(
        Some("token: file\ndata-dir: /file\ntls-san: [f]\nserver: https://file:9345\n"),
        &[],
    );
    let e = env(&[
        ("RKE2_TOKEN", "env"),
        ("RKE2_DATA_DIR", "/env"),
        ("RKE2_TLS_SAN", "e1,e2"),
        ("RKE2_URL", "https://env:9345"),
        ("RKE2_KUBECONFIG_OUTPUT", "/env/kc.yaml"),
        ("RKE2_WITH_NODE_ID", "true"),
    ]);
    let c = load_with(Role::Server, &cfg, &["--data-dir", "/cli"], &e)
        .unwrap()
        .config;
    assert_eq!(c.token.as_deref(), Some("env"), "env beats file");
    assert_eq!(c.data_dir, PathBuf::from("/cli"), "cli beats env");
    assert_eq!(c.tls_san, vec!["e1", "e2"], "env list replaces file list");
    assert_eq!(c.server.as_deref(), Some("https://env:9345"));
    assert_eq!(c.write_kubeconfig, PathBuf::from("/env/kc.yaml"));
    assert!(c.with_node_id);
}

#[test]
fn empty_env_is_unset() {
    let (_d, cfg) = setup(Some("token: file\n"), &[]);
    let e = env(&[("RKE2_TOKEN", "")]);
    let c = load_with(Role::Server, &cfg, &[], &e).unwrap().config;
    assert_eq!(c.token.as_deref(), Some("file"));
}

#[test]
fn unknown_key_warns_with_key_and_file() {
    let (_d, cfg) = setup(
        Some("token: t\nbogus-key: 1\n"),
        &[("10.yaml", "another-bogus: x\n")],
    );
    let l = server(&cfg, &[]).unwrap();
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("bogus-key"), "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains(cfg.to_str().unwrap()),
        "{:?}",
        l.warnings
    );
    assert!(l.warnings[0].contains("line 2"), "{:?}", l.warnings);
    assert!(l.warnings[1].contains("another-bogus"));
    assert!(l.warnings[1].contains("10.yaml"));
    assert_eq!(l.config.token.as_deref(), Some("t"));
}

#[test]
fn server_only_keys_ignored_by_agent_without_warning() {
    let (_d, cfg) = setup(
        Some(
            "server: https://s:9345\ntoken: t\ntls-san: [x]\ncluster-cidr: not-a-cidr\n\
             write-kubeconfig-mode: \"0644\"\nagent-token: at\nnode-label: [a=b]\nbogus: 1\n",
        ),
        &[],
    );
    let l = load_with(Role::Agent, &cfg, &[], &no_env()).unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("bogus"));
    let c = l.config;
    assert_eq!(c.role, Role::Agent);
    assert!(c.tls_san.is_empty());
    assert_eq!(c.agent_token, None);
    assert_eq!(c.write_kubeconfig_mode, None);
    assert_eq!(c.node_labels, vec![("a".to_string(), "b".to_string())]);
}

#[test]
fn agent_rejects_server_only_flag_on_cli() {
    let (_d, cfg) = setup(Some("server: https://s:9345\n"), &[]);
    let e = load_with(Role::Agent, &cfg, &["--tls-san", "x"], &no_env()).unwrap_err();
    assert!(matches!(e, ConfigError::Usage(_)), "{e:?}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn agent_without_server_is_an_error() {
    let (_d, cfg) = setup(Some("token: t\n"), &[]);
    let t = err_text(load_with(Role::Agent, &cfg, &[], &no_env()));
    assert!(t.contains("server") && t.contains("RKE2_URL"), "{t}");
    let c = load_with(
        Role::Agent,
        &cfg,
        &["--server", "https://s:9345"],
        &no_env(),
    )
    .unwrap()
    .config;
    assert_eq!(c.server.as_deref(), Some("https://s:9345"));
}

fn assert_file_error(yaml: &str, key: &str, value: &str, line: usize) {
    let (_d, cfg) = setup(Some(yaml), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(t.contains(cfg.to_str().unwrap()), "no file in: {t}");
    assert!(
        t.contains(&format!("line {line}")),
        "no line {line} in: {t}"
    );
    assert!(t.contains(key), "no key in: {t}");
    assert!(t.contains(value), "no value in: {t}");
}

#[test]
fn bad_values_in_files_name_file_line_key_value() {
    assert_file_error(
        "token: t\nwrite-kubeconfig-mode: rw-r\n",
        "write-kubeconfig-mode",
        "rw-r",
        2,
    );
    assert_file_error(
        "write-kubeconfig-mode: 0999\n",
        "write-kubeconfig-mode",
        "0999",
        1,
    );
    assert_file_error(
        "a: 1\nb: 2\ncluster-cidr: 10.42.0.0/33\n",
        "cluster-cidr",
        "10.42.0.0/33",
        3,
    );
    assert_file_error("service-cidr: nope\n", "service-cidr", "nope", 1);
    assert_file_error(
        "node-ip:\n  - 10.0.0.1\n  - 10.0.0.999\n",
        "node-ip",
        "10.0.0.999",
        3,
    );
    assert_file_error(
        "advertise-address: host.example\n",
        "advertise-address",
        "host.example",
        1,
    );
    assert_file_error("\nbind-address: 1.2.3\n", "bind-address", "1.2.3", 2);
    assert_file_error(
        "node-taint:\n  - a=b:NoSchedule\n  - key=value\n",
        "node-taint",
        "key=value",
        3,
    );
    assert_file_error(
        "node-taint: [k=v:Sometimes]\n",
        "node-taint",
        "Sometimes",
        1,
    );
    assert_file_error("node-label:\n  - nolabel\n", "node-label", "nolabel", 2);
    // A kubelet may not give its node a role, nor set other reserved keys.
    assert_file_error(
        "node-label:\n  - tier=web\n  - node-role.kubernetes.io/worker=true\n",
        "node-label",
        "node-role.kubernetes.io/worker",
        3,
    );
    assert_file_error(
        "node-label: [node-restriction.kubernetes.io/pci=yes]\n",
        "node-label",
        "node-restriction.kubernetes.io/pci",
        1,
    );
    assert_file_error("node-label: [\"bad key=1\"]\n", "node-label", "bad key", 1);
    assert_file_error("node-label: [k=bad value]\n", "node-label", "bad value", 1);
    assert_file_error(
        "https-listen-port: 70000\n",
        "https-listen-port",
        "70000",
        1,
    );
    assert_file_error("server: http://x:9345\n", "server", "http://x:9345", 1);
}

#[test]
fn bad_value_in_appending_dropin_names_that_dropin() {
    let (_d, cfg) = setup(
        Some("node-taint: [a:NoSchedule]\n"),
        &[("50-extra.yaml", "# comment\nnode-taint+:\n  - bad\n")],
    );
    let t = err_text(server(&cfg, &[]));
    assert!(t.contains("50-extra.yaml line 3"), "{t}");
    assert!(t.contains("\"bad\""), "{t}");
}

#[test]
fn bad_values_from_flag_and_env_name_the_source() {
    let (_d, cfg) = setup(Some(""), &[]);
    let t = err_text(server(&cfg, &["--cluster-cidr", "banana"]));
    assert!(
        t.contains("flag --cluster-cidr") && t.contains("banana"),
        "{t}"
    );
    let e = env(&[("RKE2_KUBECONFIG_MODE", "abc")]);
    let t = err_text(load_with(Role::Server, &cfg, &[], &e));
    assert!(
        t.contains("env RKE2_KUBECONFIG_MODE")
            && t.contains("write-kubeconfig-mode")
            && t.contains("abc"),
        "{t}"
    );
    let e = env(&[("RKE2_NODE_TAINT", "x=y")]);
    let t = err_text(load_with(Role::Server, &cfg, &[], &e));
    assert!(
        t.contains("env RKE2_NODE_TAINT") && t.contains("x=y"),
        "{t}"
    );
}

#[test]
fn bad_yaml_error_has_position() {
    let (_d, cfg) = setup(Some("token: t\ntls-san: [a, b\nnode-name: x\n"), &[]);
    let e = server(&cfg, &[]).unwrap_err();
    match &e {
        ConfigError::Yaml { path, line, .. } => {
            assert_eq!(path, &cfg);
            assert!(*line >= 2, "line {line}");
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
    let t = e.to_string();
    assert!(
        t.contains(cfg.to_str().unwrap()) && t.contains("line") && t.contains("column"),
        "{t}"
    );
    assert_eq!(t.matches("column").count(), 1, "position printed once: {t}");
    assert_eq!(e.exit_code(), 2);

    let (_d2, cfg2) = setup(Some("- just\n- a list\n"), &[]);
    let e = server(&cfg2, &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Yaml { .. }), "{e:?}");
}

#[test]
fn token_file_is_read_and_trimmed() {
    let (d, cfg) = setup(Some(""), &[]);
    let tf = d.path().join("token");
    let full = format!("K10{}::server:pw", "ab".repeat(32));
    fs::write(&tf, format!("  {full}\n\n")).unwrap();
    let atf = d.path().join("agent-token");
    fs::write(&atf, "agentpw\n").unwrap();
    fs::write(
        &cfg,
        format!(
            "token-file: {}\nagent-token-file: {}\n",
            tf.display(),
            atf.display()
        ),
    )
    .unwrap();
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.token.as_deref(), Some(full.as_str()));
    assert_eq!(c.agent_token.as_deref(), Some("agentpw"));
    // An explicit token wins over token-file.
    let c = server(&cfg, &["--token", "direct"]).unwrap().config;
    assert_eq!(c.token.as_deref(), Some("direct"));
}

#[test]
fn missing_token_file_names_key_and_path() {
    let (d, cfg) = setup(Some(""), &[]);
    let missing = d.path().join("missing-token");
    let t = err_text(server(&cfg, &["--token-file", missing.to_str().unwrap()]));
    assert!(
        t.contains("token-file") && t.contains("missing-token"),
        "{t}"
    );
    let e = env(&[("RKE2_AGENT_TOKEN_FILE", missing.to_str().unwrap())]);
    let t = err_text(load_with(Role::Server, &cfg, &[], &e));
    assert!(
        t.contains("agent-token-file") && t.contains("env RKE2_AGENT_TOKEN_FILE"),
        "{t}"
    );
}

#[test]
fn help_and_version_exit_zero_and_list_flags() {
    let e = load(Role::Server, &args(&["--help"]), &no_env()).unwrap_err();
    assert_eq!(e.exit_code(), 0);
    let t = e.to_string();
    for f in [
        "--tls-san",
        "--write-kubeconfig-mode",
        "--cluster-cidr",
        "RKE2_URL",
        "10.42.0.0/16",
        "-c",
    ] {
        assert!(t.contains(f), "help lacks {f}: {t}");
    }
    let e = load(Role::Agent, &args(&["--help"]), &no_env()).unwrap_err();
    assert!(!e.to_string().contains("--tls-san"));
    let e = load(Role::Agent, &args(&["--version"]), &no_env()).unwrap_err();
    assert!(matches!(e, ConfigError::Display(_)));
    assert_eq!(e.exit_code(), 0);
}

#[test]
fn unknown_cli_flag_is_usage_error() {
    let e = load(Role::Server, &args(&["--no-such-flag"]), &no_env()).unwrap_err();
    assert!(matches!(e, ConfigError::Usage(_)));
    assert!(e.to_string().contains("no-such-flag"));
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn every_flag_has_an_env_name_and_cli_flag() {
    for role in [Role::Server, Role::Agent] {
        let cmd = command(role);
        for f in FLAGS.iter().filter(|f| f.for_role(role)) {
            // The S3 credentials take the AWS variables, as RKE2's do.
            assert!(
                f.env.starts_with("RKE2_") || f.env.starts_with("AWS_"),
                "{}",
                f.name
            );
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(f.name)),
                "{} missing from {role}",
                f.name
            );
        }
    }
    cmd_debug_assert();
}

fn cmd_debug_assert() {
    command(Role::Server).debug_assert();
    command(Role::Agent).debug_assert();
}

#[test]
fn taint_parsing() {
    let t: Taint = "k=v:PreferNoSchedule".parse().unwrap();
    assert_eq!(t.key, "k");
    assert_eq!(t.value.as_deref(), Some("v"));
    assert_eq!(t.effect.as_str(), "PreferNoSchedule");
    assert_eq!(t.to_string(), "k=v:PreferNoSchedule");
    assert!("k=v".parse::<Taint>().is_err());
    assert!(":NoSchedule".parse::<Taint>().is_err());
    assert!("k=v:noschedule".parse::<Taint>().is_err());
}

#[test]
fn mode_parsing() {
    assert_eq!(parse_mode("0644"), Ok(0o644));
    assert_eq!(parse_mode("600"), Ok(0o600));
    assert!(parse_mode("0x1A4").is_err());
    assert!(parse_mode("").is_err());
    assert!(parse_mode("888").is_err());
}

// ------------------------------------------------ checks before anything is written

const SUBDOMAIN_MSG: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

#[test]
fn node_name_must_be_a_dns1123_subdomain() {
    for bad in ["Bad_Name", "a..b", "-a", "a-", "node 1", "ä"] {
        let (_d, cfg) = setup(Some(&format!("token: t\nnode-name: \"{bad}\"\n")), &[]);
        let t = err_text(server(&cfg, &[]));
        assert!(t.contains(&format!("{} line 2", cfg.display())), "{t}");
        assert!(t.contains("for node-name") && t.contains(bad), "{t}");
        assert!(t.contains(SUBDOMAIN_MSG), "{t}");
        // Agents are held to the same rule.
        let t = err_text(load_with(
            Role::Agent,
            &cfg,
            &["--server", "https://s:9345"],
            &no_env(),
        ));
        assert!(t.contains(SUBDOMAIN_MSG), "{t}");
    }
    let (_d, cfg) = setup(Some(""), &[]);
    let t = err_text(server(&cfg, &["--node-name", &"a".repeat(254)]));
    assert!(
        t.contains("flag --node-name") && t.contains("must be no more than 253 characters"),
        "{t}"
    );
    // The node password Secret `<name>.node-password.rke2` must fit too,
    // also with the with-node-id suffix.
    let t = err_text(server(&cfg, &["--node-name", &"a".repeat(235)]));
    assert!(t.contains("must be no more than 234 characters"), "{t}");
    assert!(server(&cfg, &["--node-name", &"a".repeat(234)]).is_ok());
    let t = err_text(server(
        &cfg,
        &["--node-name", &"a".repeat(226), "--with-node-id"],
    ));
    assert!(
        t.contains("must be no more than 225 characters with with-node-id"),
        "{t}"
    );
    let c = server(&cfg, &["--node-name", "n-1.example.com"])
        .unwrap()
        .config;
    assert_eq!(c.node_name, "n-1.example.com");
}

#[test]
fn hostname_default_node_name_is_checked_and_names_the_key_to_set() {
    let values = HashMap::new();
    let r = Resolver { values: &values };
    let e = node_name(&r, false, || "my_host".to_string()).unwrap_err();
    let t = e.to_string();
    assert!(
        t.starts_with("default (the host name): invalid value \"my_host\" for node-name"),
        "{t}"
    );
    assert!(t.contains(SUBDOMAIN_MSG), "{t}");
    assert!(
        t.contains("set node-name (flag --node-name, env RKE2_NODE_NAME"),
        "{t}"
    );
    assert_eq!(e.exit_code(), 2);
    assert_eq!(node_name(&r, false, || "vm-1".to_string()).unwrap(), "vm-1");
    // A configured node-name is used and the host name is not consulted.
    let mut values = HashMap::new();
    values.insert(
        "node-name",
        RawValue::Str("n1".into(), Origin::Flag("node-name".into())),
    );
    let r = Resolver { values: &values };
    assert_eq!(node_name(&r, false, || unreachable!()).unwrap(), "n1");
}

fn hash() -> String {
    "0123456789abcdef".repeat(4)
}

/// Token cases: (role, yaml, needles in the error).
#[test]
fn malformed_tokens_are_refused_without_showing_them() {
    let h = hash();
    let cases: Vec<(Role, String, Vec<&str>)> = vec![
        (
            Role::Server,
            "token: K10abc::server:pw-x\n".into(),
            vec!["64 hex", "got 3"],
        ),
        (
            Role::Server,
            format!("token: K10{}::server:pw-x\n", "g".repeat(64)),
            vec!["64 hex"],
        ),
        (
            Role::Server,
            format!("token: K10{h}server-pw-x\n"),
            vec!["missing '::'"],
        ),
        (
            Role::Server,
            format!("token: K10{h}::serverpw-x\n"),
            vec!["missing ':'"],
        ),
        (
            Role::Server,
            format!("token: \"K10{h}::server:\"\n"),
            vec!["password must not be empty"],
        ),
        (
            Role::Server,
            format!("token: \"K10{h}:::pw-x\"\n"),
            vec!["user must not be empty"],
        ),
        (
            Role::Server,
            "token: K10pw-x\n".into(),
            vec!["missing '::'"],
        ),
        (
            Role::Server,
            "token: \"pw-x two\"\n".into(),
            vec!["a space at character 5"],
        ),
        (
            Role::Server,
            "token: \"pw-x\\ttwo\"\n".into(),
            vec!["a tab"],
        ),
        (
            Role::Server,
            "token: \"pw-x\\u0007\"\n".into(),
            vec!["control character U+0007"],
        ),
        (
            Role::Server,
            format!("token: K10{h}::node:pw-x\n"),
            vec!["agent token (user `node`)", "not servers"],
        ),
        (
            Role::Server,
            format!("token: K10{h}::admin:pw-x\n"),
            vec!["must be `server`, not `admin`"],
        ),
        (
            Role::Agent,
            format!("server: https://s:9345\ntoken: K10{h}::admin:pw-x\n"),
            vec!["`server` or `node`"],
        ),
        (
            Role::Server,
            format!("token: K10{h}::server:one\nagent-token: K10{h}::server:pw-x\n"),
            vec!["invalid agent-token", "user `node`", "server token"],
        ),
        (
            Role::Server,
            "token: pw-x\nagent-token: pw-x\n".into(),
            vec!["invalid agent-token", "must differ"],
        ),
        (
            Role::Server,
            format!(
                "token: K10{h}::server:one\nagent-token: K10{}::node:pw-x\n",
                "f".repeat(64)
            ),
            vec!["invalid agent-token", "different clusters"],
        ),
    ];
    for (role, yaml, needles) in cases {
        let (_d, cfg) = setup(Some(&yaml), &[]);
        let t = err_text(load_with(role, &cfg, &[], &no_env()));
        assert!(
            t.contains(&cfg.display().to_string()),
            "{yaml}: no file in {t}"
        );
        for n in needles {
            assert!(t.contains(n), "{yaml}: {n:?} not in {t}");
        }
        assert!(!t.contains("pw-x"), "{yaml}: the secret is shown: {t}");
    }
}

#[test]
fn token_file_content_is_checked_and_the_file_named() {
    let (d, cfg) = setup(Some(""), &[]);
    let tf = d.path().join("token");
    fs::write(&tf, "first-secret\nsecond-secret\n").unwrap();
    let t = err_text(server(&cfg, &["--token-file", tf.to_str().unwrap()]));
    assert!(t.contains("flag --token-file: invalid token"), "{t}");
    assert!(
        t.contains(&format!("the content of {}", tf.display())),
        "{t}"
    );
    assert!(t.contains("a line break at character 13"), "{t}");
    assert!(!t.contains("secret"), "{t}");
    let e = env(&[("RKE2_AGENT_TOKEN_FILE", tf.to_str().unwrap())]);
    let t = err_text(load_with(Role::Server, &cfg, &[], &e));
    assert!(
        t.contains("env RKE2_AGENT_TOKEN_FILE: invalid agent-token"),
        "{t}"
    );
}

#[test]
fn well_formed_tokens_load() {
    let h = hash();
    let (_d, cfg) = setup(Some(""), &[]);
    for t in [
        "secret",
        "s3cr3t:with:colons",
        &format!("K10{h}::server:pw"),
    ] {
        assert_eq!(
            server(&cfg, &["--token", t])
                .unwrap()
                .config
                .token
                .as_deref(),
            Some(t)
        );
    }
    for t in [
        format!("K10{h}::server:pw"),
        format!("K10{h}::node:pw"),
        "pw".into(),
    ] {
        let c = load_with(
            Role::Agent,
            &cfg,
            &["--server", "https://s:9345", "--token", &t],
            &no_env(),
        )
        .unwrap()
        .config;
        assert_eq!(c.token.as_deref(), Some(t.as_str()));
    }
    let c = server(
        &cfg,
        &[
            "--token",
            &format!("K10{h}::server:pw"),
            "--agent-token",
            &format!("K10{h}::node:other"),
        ],
    )
    .unwrap()
    .config;
    assert_eq!(c.agent_token, Some(format!("K10{h}::node:other")));
    assert!(server(&cfg, &["--agent-token", "agent-only"]).is_ok());
}

#[test]
fn agent_without_token_is_an_error() {
    let (_d, cfg) = setup(Some("server: https://s:9345\n"), &[]);
    let e = load_with(Role::Agent, &cfg, &[], &no_env()).unwrap_err();
    assert!(matches!(e, ConfigError::Missing { .. }), "{e:?}");
    let t = e.to_string();
    assert!(
        t.contains("token is required for rke2 agent") && t.contains("RKE2_TOKEN"),
        "{t}"
    );
}

#[test]
fn cluster_and_service_cidr_must_not_overlap() {
    let (_d, cfg) = setup(Some("service-cidr: 10.42.128.0/17\n"), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(
        t.contains(&format!(
            "{} line 1: invalid value \"10.42.128.0/17\" for service-cidr",
            cfg.display()
        )),
        "{t}"
    );
    assert!(
        t.contains("overlaps cluster-cidr 10.42.0.0/16 (default)"),
        "{t}"
    );
    // The key that was set is blamed; the other is named with its origin.
    let (_d, cfg) = setup(Some("token: t\ncluster-cidr: 10.0.0.0/8\n"), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(
        t.contains("line 2: invalid value \"10.0.0.0/8\" for cluster-cidr"),
        "{t}"
    );
    assert!(
        t.contains("overlaps service-cidr 10.43.0.0/16 (default)"),
        "{t}"
    );
    let t = err_text(server(&cfg, &["--service-cidr", "10.96.0.0/12"]));
    assert!(
        t.contains("flag --service-cidr: invalid value \"10.96.0.0/12\" for service-cidr"),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "overlaps cluster-cidr 10.0.0.0/8 (file {} line 2)",
            cfg.display()
        )),
        "{t}"
    );
    let c = server(
        &cfg,
        &[
            "--cluster-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/12",
        ],
    )
    .unwrap()
    .config;
    assert_eq!(c.cluster_dns.to_string(), "10.96.0.10");
    // Different families never overlap.
    assert!(server(&cfg, &["--cluster-cidr", "fd00:42::/56"]).is_ok());
}

#[test]
fn cluster_cidr_must_hold_a_node_block() {
    let (_d, cfg) = setup(Some("cluster-cidr: 10.42.0.0/25\n"), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(
        t.contains("for cluster-cidr") && t.contains("prefix of at most /24"),
        "{t}"
    );
    assert!(server(&cfg, &["--cluster-cidr", "10.42.0.0/24"]).is_ok());
    let t = err_text(server(&cfg, &["--cluster-cidr", "fd00:42::/80"]));
    assert!(t.contains("at most /64"), "{t}");
}

#[test]
fn cluster_dns_must_be_a_service_address_of_service_cidr() {
    let (_d, cfg) = setup(Some("token: t\ncluster-dns: 10.44.0.10\n"), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(
        t.contains("line 2: invalid value \"10.44.0.10\" for cluster-dns"),
        "{t}"
    );
    assert!(
        t.contains("not in service-cidr 10.43.0.0/16 (service-cidr: default)"),
        "{t}"
    );
    for (dns, needle) in [
        ("10.43.0.0", "network address"),
        ("10.43.255.255", "broadcast address"),
        ("10.43.0.1", "`kubernetes` Service"),
        ("fd00::10", "not in service-cidr"),
    ] {
        let t = err_text(server(&cfg, &["--cluster-dns", dns]));
        assert!(
            t.contains("flag --cluster-dns") && t.contains(needle),
            "{dns}: {t}"
        );
    }
    let c = server(&cfg, &["--cluster-dns", "10.43.0.53"])
        .unwrap()
        .config;
    assert_eq!(c.cluster_dns.to_string(), "10.43.0.53");
    // A service-cidr too small for the default (its 10th address) names
    // service-cidr and the key to set.
    let (_d, cfg) = setup(Some("service-cidr: 10.43.0.0/29\n"), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(
        t.contains("line 1: invalid value \"10.43.0.0/29\" for service-cidr"),
        "{t}"
    );
    assert!(
        t.contains("default cluster-dns 10.43.0.10") && t.contains("set cluster-dns"),
        "{t}"
    );
    assert!(server(&cfg, &["--cluster-dns", "10.43.0.2"]).is_ok());
    // An agent's service-cidr comes from the servers: not judged at load.
    let (_d, cfg) = setup(
        Some("server: https://s:9345\ntoken: t\ncluster-dns: 10.99.0.10\n"),
        &[],
    );
    let c = load_with(Role::Agent, &cfg, &[], &no_env()).unwrap().config;
    assert_eq!(c.cluster_dns.to_string(), "10.99.0.10");
    assert!(check_cluster_dns(c.cluster_dns, &"10.99.0.0/16".parse().unwrap()).is_ok());
    assert!(check_cluster_dns(c.cluster_dns, &c.service_cidr).is_err());
}

#[test]
fn listen_ports_must_not_collide() {
    let (_d, cfg) = setup(Some("supervisor-port: 6443\n"), &[]);
    let t = err_text(server(&cfg, &[]));
    assert!(
        t.contains("line 1: invalid value \"6443\" for supervisor-port"),
        "{t}"
    );
    assert!(t.contains("the same as https-listen-port (default)"), "{t}");
    for (flag, port, needle) in [
        ("--https-listen-port", "2379", "etcd's client port"),
        ("--supervisor-port", "2380", "etcd's peer port"),
        ("--https-listen-port", "10250", "the node API's port"),
    ] {
        let (_d, cfg) = setup(Some(""), &[]);
        let t = err_text(server(&cfg, &[flag, port]));
        assert!(
            t.contains(&format!("flag {flag}")) && t.contains(needle),
            "{t}"
        );
    }
    let (_d, cfg) = setup(
        Some("server: https://s:9345\ntoken: t\nlb-server-port: 1\n"),
        &[],
    );
    let t = err_text(load_with(Role::Agent, &cfg, &[], &no_env()));
    assert!(
        t.contains("for lb-server-port") && t.contains("port below it"),
        "{t}"
    );
}

#[test]
fn profile_and_pod_security_admission_config_file() {
    let (_d, cfg) = setup(
        Some("profile: cis\npod-security-admission-config-file: /etc/rancher/rke2/psa.yaml\n"),
        &[],
    );
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.profile, Some(Profile::Cis));
    assert_eq!(
        c.pod_security_admission_config_file,
        Some(PathBuf::from("/etc/rancher/rke2/psa.yaml"))
    );
    let (_d, cfg) = setup(Some(""), &[]);
    let c = server(&cfg, &[]).unwrap().config;
    assert_eq!(c.profile, None);
    assert_eq!(c.pod_security_admission_config_file, None);
    // RKE2's environment name for the profile.
    let env: HashMap<String, String> =
        [("RKE2_CIS_PROFILE".to_string(), "etcd".to_string())].into();
    let c = load_with(Role::Server, &cfg, &[], &env).unwrap().config;
    assert_eq!(c.profile, Some(Profile::Etcd));
    let (_d, cfg) = setup(Some("profile: cis-1.23\n"), &[]);
    let e = err_text(server(&cfg, &[]));
    assert!(
        e.contains("line 1: invalid value \"cis-1.23\" for profile: invalid value provided for --profile flag (valid items: cis, etcd)"),
        "{e}"
    );
    // Both keys exist for agents too, as in RKE2.
    let (_d, cfg) = setup(
        Some(
            "server: https://s:9345\ntoken: t\nprofile: etcd\npod-security-admission-config-file: x\n",
        ),
        &[],
    );
    let l = load_with(Role::Agent, &cfg, &[], &no_env()).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.profile, Some(Profile::Etcd));
}

#[test]
fn service_proxy_keys() {
    let (_d, cfg) = setup(
        Some(
            "disable-kube-proxy: true\nenable-servicelb: true\nservice-node-port-range: 20000-20100\n",
        ),
        &[],
    );
    let c = server(&cfg, &[]).unwrap().config;
    assert!(c.disable_kube_proxy && c.enable_servicelb);
    assert_eq!(c.service_node_port_range, (20000, 20100));
    let c = server(&cfg, &["--service-node-port-range", "30000+10"])
        .unwrap()
        .config;
    assert_eq!(c.service_node_port_range, (30000, 30010));
    for bad in ["30000", "0-10", "40000-30000", "30000-70000", "a-b"] {
        let e = err_text(server(&cfg, &["--service-node-port-range", bad]));
        assert!(e.contains("service-node-port-range"), "{bad}: {e}");
    }
}

#[test]
fn etcd_snapshot_keys_have_rke2_defaults() {
    let (_d, cfg) = setup(Some("data-dir: /srv/rke2\n"), &[]);
    let s = server(&cfg, &[]).unwrap().config.etcd_snapshot;
    assert_eq!(s.schedule_cron, "0 */12 * * *");
    assert_eq!(s.retention, 5);
    assert_eq!(s.dir, PathBuf::from("/srv/rke2/server/db/snapshots"));
    assert_eq!(s.name, "etcd-snapshot");
    assert!(!s.compress && !s.disable && s.s3.is_none());
}

#[test]
fn etcd_s3_keys_from_file_and_env() {
    let (_d, cfg) = setup(
        Some(
            "etcd-s3: true\netcd-s3-bucket: b\netcd-s3-folder: /f/\netcd-s3-endpoint: 127.0.0.1:9000\netcd-s3-timeout: 1m30s\n",
        ),
        &[],
    );
    let l = load_with(
        Role::Server,
        &cfg,
        &[],
        &env(&[("AWS_ACCESS_KEY_ID", "ak"), ("AWS_SECRET_ACCESS_KEY", "sk")]),
    )
    .unwrap();
    let s3 = l.config.etcd_snapshot.s3.unwrap();
    assert_eq!(s3.bucket, "b");
    assert_eq!(s3.folder, "f");
    assert_eq!(s3.region, "us-east-1");
    assert_eq!(s3.access_key.as_deref(), Some("ak"));
    assert_eq!(s3.timeout, std::time::Duration::from_secs(90));
    assert!(
        !format!("{s3:?}").contains("sk\""),
        "secret in Debug: {s3:?}"
    );
}

#[test]
fn bad_etcd_snapshot_keys_are_refused() {
    let (_d, cfg) = setup(Some(""), &[]);
    assert!(
        err_text(server(&cfg, &["--etcd-snapshot-retention", "0"]))
            .contains("etcd-snapshot-retention")
    );
    assert!(err_text(server(&cfg, &["--etcd-s3"])).contains("etcd-s3-bucket"));
    assert!(
        err_text(server(
            &cfg,
            &[
                "--etcd-s3",
                "--etcd-s3-bucket",
                "b",
                "--etcd-s3-endpoint",
                "http://x"
            ]
        ))
        .contains("without a scheme")
    );
    assert!(
        err_text(server(&cfg, &["--etcd-snapshot-name", "a/b"])).contains("etcd-snapshot-name")
    );
    assert!(
        err_text(server(&cfg, &["--cluster-reset-restore-path", "/x"]))
            .contains("--cluster-reset required")
    );
    assert!(
        err_text(server(
            &cfg,
            &[
                "--etcd-s3",
                "--etcd-s3-bucket",
                "b",
                "--etcd-s3-timeout",
                "soon"
            ]
        ))
        .contains("not a duration")
    );
}

#[test]
fn every_critical_key_has_a_value_and_is_a_server_flag() {
    let (_d, cfg) = setup(
        Some("cluster-cidr: 10.50.0.0/16\ndisable: [rke2-metrics-server, rke2-ingress-nginx]\n"),
        &[],
    );
    let loaded = server(&cfg, &[]).unwrap();
    let settings = loaded.config.critical_settings();
    let keys = critical_keys();
    assert_eq!(
        keys,
        ["cluster-cidr", "service-cidr", "cluster-domain", "disable"]
    );
    for key in &keys {
        let flag = FLAGS.iter().find(|f| f.name == *key).unwrap();
        assert!(
            flag.server && !flag.agent,
            "{key} must be a server-only flag"
        );
        assert!(!settings[*key].is_null(), "critical key {key} has no value");
    }
    assert_eq!(settings.len(), keys.len());
    assert_eq!(settings["cluster-cidr"], "10.50.0.0/16");
    assert_eq!(
        settings["disable"],
        serde_json::json!(["rke2-ingress-nginx", "rke2-metrics-server"])
    );
}

#[test]
fn kubelet_arg_eviction_hard_and_unsupported_flags() {
    let (_d, cfg) = setup(Some(""), &[]);
    let l = server(&cfg, &[]).unwrap();
    assert_eq!(
        l.config.eviction,
        rke2_apimachinery::eviction::EvictionConfig::default()
    );
    let (_d, cfg) = setup(
        Some(
            "kubelet-arg:\n  - eviction-hard=memory.available<1Gi,nodefs.available<5%\n  - --max-pods=250\n",
        ),
        &[],
    );
    let l = server(&cfg, &[]).unwrap();
    let signals: Vec<String> = l
        .config
        .eviction
        .hard
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(signals, ["memory.available<1Gi", "nodefs.available<5%"]);
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("--max-pods=250"), "{:?}", l.warnings);
    let (_d, cfg) = setup(Some("kubelet-arg: [eviction-hard=memory.free<1Gi]\n"), &[]);
    let e = err_text(server(&cfg, &[]));
    assert!(e.contains("kubelet-arg"), "{e}");
    assert!(
        e.contains("unsupported eviction signal \"memory.free\""),
        "{e}"
    );
}

#[test]
fn kubelet_arg_soft_eviction_and_its_periods() {
    let (_d, cfg) = setup(
        Some(
            "kubelet-arg:\n  - eviction-soft=memory.available<1Gi,nodefs.available<20%\n  - eviction-soft-grace-period=memory.available=1m30s,nodefs.available=2m\n  - eviction-max-pod-grace-period=60\n  - eviction-pressure-transition-period=30s\n  - eviction-minimum-reclaim=nodefs.available=500Mi\n",
        ),
        &[],
    );
    let l = server(&cfg, &[]).unwrap();
    let e = &l.config.eviction;
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(e.hard, rke2_apimachinery::eviction::default_hard());
    assert_eq!(e.soft.len(), 2);
    assert_eq!(e.soft[0].0.to_string(), "memory.available<1Gi");
    assert_eq!(e.soft[0].1, std::time::Duration::from_secs(90));
    assert_eq!(e.soft[1].1, std::time::Duration::from_secs(120));
    assert_eq!(e.max_pod_grace_period_seconds, 60);
    assert_eq!(
        e.pressure_transition_period,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(
        e.minimum_reclaim["nodefs.available"],
        rke2_apimachinery::eviction::ThresholdValue::Quantity(500 << 20)
    );
    let (_d, cfg) = setup(
        Some("kubelet-arg: [eviction-pressure-transition-period=0s]\n"),
        &[],
    );
    let l = server(&cfg, &[]).unwrap();
    assert!(l.config.eviction.pressure_transition_period.is_zero());
    for (arg, want) in [
        (
            "eviction-soft=memory.available<1Gi",
            "grace period must be specified for the soft eviction threshold memory.available",
        ),
        (
            "eviction-soft-grace-period=memory.available:1m",
            "invalid eviction grace period syntax",
        ),
        (
            "eviction-soft-grace-period=memory.available=soon",
            "eviction grace period memory.available",
        ),
        (
            "eviction-minimum-reclaim=nodefs.available=-1Gi",
            "negative reclaim",
        ),
        (
            "eviction-max-pod-grace-period=a-minute",
            "eviction-max-pod-grace-period must be a whole number",
        ),
        (
            "eviction-pressure-transition-period=later",
            "eviction-pressure-transition-period",
        ),
    ] {
        let (_d, cfg) = setup(Some(&format!("kubelet-arg: [\"{arg}\"]\n")), &[]);
        let r = server(&cfg, &[]);
        let code = r.as_ref().err().map(|e| e.exit_code());
        let e = err_text(r);
        assert!(e.contains("kubelet-arg") && e.contains(want), "{arg}: {e}");
        assert_eq!(code, Some(2), "{arg}");
    }
}

#[test]
fn kubelet_arg_reservations_and_image_gc_thresholds() {
    use rke2_apimachinery::eviction::Reserved;
    let (_d, cfg) = setup(Some(""), &[]);
    let e = server(&cfg, &[]).unwrap().config.eviction;
    assert_eq!(e.kube_reserved, Reserved::default());
    assert_eq!(
        (e.image_gc_high_threshold, e.image_gc_low_threshold),
        (85, 80)
    );
    let (_d, cfg) = setup(
        Some(
            "kubelet-arg:\n  - kube-reserved=cpu=500m,memory=1Gi,ephemeral-storage=1Gi,pid=100\n  - --system-reserved=memory=512Mi\n  - image-gc-high-threshold=90\n  - image-gc-low-threshold=70\n",
        ),
        &[],
    );
    let l = server(&cfg, &[]).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let e = l.config.eviction;
    assert_eq!(
        e.kube_reserved,
        Reserved {
            cpu_milli: 500,
            memory: 1 << 30,
            ephemeral_storage: 1 << 30,
            pid: 100
        }
    );
    assert_eq!(e.system_reserved.memory, 512 << 20);
    assert_eq!(
        (e.image_gc_high_threshold, e.image_gc_low_threshold),
        (90, 70)
    );
    for (arg, want) in [
        (
            "kube-reserved=memory=lots",
            "kube-reserved: failed to parse quantity \"lots\" for \"memory\" resource",
        ),
        (
            "system-reserved=gpu=1",
            "system-reserved: cannot reserve \"gpu\" resource",
        ),
        ("system-reserved=cpu", "system-reserved: malformed pair"),
        (
            "image-gc-high-threshold=101",
            "imageGCHighThresholdPercent (--image-gc-high-threshold) 101 must be between 0 and 100",
        ),
        (
            "image-gc-low-threshold=90",
            "imageGCLowThresholdPercent (--image-gc-low-threshold) 90 must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) 85",
        ),
        (
            "image-gc-low-threshold=most",
            "image-gc-low-threshold must be a whole percentage",
        ),
    ] {
        let (_d, cfg) = setup(Some(&format!("kubelet-arg: [\"{arg}\"]\n")), &[]);
        let e = err_text(server(&cfg, &[]));
        assert!(
            e.contains("kubelet-arg") && e.contains(arg) && e.contains(want),
            "{arg}: {e}"
        );
    }
}

#[test]
fn kube_controller_manager_arg_hpa_flags() {
    use rke2_apimachinery::autoscaling::HpaSettings;
    let (_d, cfg) = setup(Some(""), &[]);
    let l = server(&cfg, &[]).unwrap();
    assert_eq!(l.config.hpa, HpaSettings::default());
    let (_d, cfg) = setup(
        Some(
            "kube-controller-manager-arg:\n  - horizontal-pod-autoscaler-sync-period=5s\n  - --horizontal-pod-autoscaler-tolerance=0.2\n  - horizontal-pod-autoscaler-downscale-stabilization=1m\n  - horizontal-pod-autoscaler-cpu-initialization-period=2m\n  - horizontal-pod-autoscaler-initial-readiness-delay=10s\n  - node-monitor-grace-period=20s\n",
        ),
        &[],
    );
    let l = server(&cfg, &[]).unwrap();
    let secs = std::time::Duration::from_secs;
    assert_eq!(
        l.config.hpa,
        HpaSettings {
            sync_period: secs(5),
            tolerance: 0.2,
            downscale_stabilization: secs(60),
            cpu_initialization_period: secs(120),
            initial_readiness_delay: secs(10),
        }
    );
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("node-monitor-grace-period=20s"),
        "{:?}",
        l.warnings
    );
    // On the command line too (repeatable).
    let (_d, cfg) = setup(Some(""), &[]);
    let l = server(
        &cfg,
        &["--kube-controller-manager-arg=horizontal-pod-autoscaler-tolerance=0"],
    )
    .unwrap();
    assert_eq!(l.config.hpa.tolerance, 0.0);
    // A bad value is refused naming the key and the flag.
    for (arg, want) in [
        (
            "horizontal-pod-autoscaler-sync-period=0s",
            "must be greater than 0",
        ),
        (
            "horizontal-pod-autoscaler-tolerance=lots",
            "is not a number",
        ),
        (
            "horizontal-pod-autoscaler-downscale-stabilization=5",
            "not a duration",
        ),
    ] {
        let (_d, cfg) = setup(
            Some(&format!("kube-controller-manager-arg: [{arg}]\n")),
            &[],
        );
        let e = err_text(server(&cfg, &[]));
        assert!(e.contains("kube-controller-manager-arg"), "{e}");
        assert!(e.contains(arg) && e.contains(want), "{arg}: {e}");
    }
}
