use std::path::Path;

use serde_json::json;

use super::*;

fn lv(level: Level, version: Version) -> LevelVersion {
    LevelVersion { level, version }
}

const R_LATEST: LevelVersion = LevelVersion {
    level: Level::Restricted,
    version: Version::Latest,
};
const B_LATEST: LevelVersion = LevelVersion {
    level: Level::Baseline,
    version: Version::Latest,
};

#[test]
fn labels_select_the_policy_over_the_defaults() {
    let d = Policy::privileged();
    assert_eq!(policy_for(&json!(null), &d), (d, vec![]));
    assert_eq!(policy_for(&json!({"app": "x"}), &d), (d, vec![]));

    // enforce set by label also warns at that level and version.
    let (p, errs) = policy_for(
        &json!({ENFORCE_LABEL: "restricted", ENFORCE_VERSION_LABEL: "v1.30"}),
        &d,
    );
    assert!(errs.is_empty());
    assert_eq!(p.enforce, lv(Level::Restricted, Version::V1(30)));
    assert_eq!(p.warn, lv(Level::Restricted, Version::V1(30)));
    assert_eq!(p.audit, LevelVersion::PRIVILEGED);

    // ... unless warn is labelled itself, or the version is.
    let (p, _) = policy_for(
        &json!({ENFORCE_LABEL: "restricted", WARN_LABEL: "baseline"}),
        &d,
    );
    assert_eq!(p.warn, B_LATEST);
    let (p, _) = policy_for(
        &json!({ENFORCE_LABEL: "baseline", WARN_VERSION_LABEL: "v1.20"}),
        &d,
    );
    assert_eq!(p.warn, lv(Level::Baseline, Version::V1(20)));

    // A stricter default warn level stays.
    let defaults = Policy {
        warn: R_LATEST,
        ..Policy::privileged()
    };
    let (p, _) = policy_for(&json!({ENFORCE_LABEL: "baseline"}), &defaults);
    assert_eq!(p.warn, R_LATEST);
}

#[test]
fn bad_labels_fail_closed_for_enforce_and_open_for_warn_and_audit() {
    let (p, errs) = policy_for(
        &json!({
            ENFORCE_LABEL: "strict",
            ENFORCE_VERSION_LABEL: "1.25",
            WARN_LABEL: "loud",
            AUDIT_LABEL: "yes",
        }),
        &Policy::privileged(),
    );
    assert_eq!(p.enforce, R_LATEST);
    assert_eq!(p.warn, LevelVersion::PRIVILEGED);
    assert_eq!(p.audit, LevelVersion::PRIVILEGED);
    let labels: Vec<_> = errs.iter().map(|e| (e.label, e.value.as_str())).collect();
    assert_eq!(
        labels,
        vec![
            (ENFORCE_LABEL, "strict"),
            (ENFORCE_VERSION_LABEL, "1.25"),
            (AUDIT_LABEL, "yes"),
            (WARN_LABEL, "loud"),
        ]
    );
    let rt = registry::find("", "v1", "namespaces").unwrap();
    let e = label_errors(rt, "team", &errs[..1]);
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        r#"Namespace "team" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#
    );
}

fn privileged_pod() -> Value {
    json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true}}]}})
}

#[test]
fn enforce_refuses_and_warn_warns() {
    let cfg = PodSecurityConfig::default();
    let pod = privileged_pod();
    let (meta, spec) = (&pod["metadata"], &pod["spec"]);
    let enforce = Policy {
        enforce: B_LATEST,
        ..Policy::privileged()
    };
    assert_eq!(
        check_pod(&cfg, &enforce, meta, spec, true),
        Err(r#"violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#.into())
    );
    // A template is never refused, only warned about.
    assert_eq!(check_pod(&cfg, &enforce, meta, spec, false), Ok(vec![]));
    let warn = Policy {
        warn: B_LATEST,
        ..Policy::privileged()
    };
    let want = vec![r#"would violate PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#.to_string()];
    assert_eq!(check_pod(&cfg, &warn, meta, spec, true), Ok(want.clone()));
    assert_eq!(check_pod(&cfg, &warn, meta, spec, false), Ok(want));

    // An exempt runtime class is not looked at.
    let cfg = PodSecurityConfig {
        exemptions: Exemptions {
            runtime_classes: vec!["kata".into()],
            ..Exemptions::default()
        },
        ..PodSecurityConfig::default()
    };
    let mut pod = privileged_pod();
    pod["spec"]["runtimeClassName"] = json!("kata");
    assert_eq!(
        check_pod(&cfg, &enforce, &pod["metadata"], &pod["spec"], true),
        Ok(vec![])
    );
}

#[test]
fn only_container_and_image_changes_are_significant_pod_updates() {
    let old = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}, "metadata": {"labels": {"x": "1"}}});
    let mut relabelled = old.clone();
    relabelled["metadata"]["labels"]["x"] = json!("2");
    relabelled["spec"]["activeDeadlineSeconds"] = json!(5);
    assert!(!significant_pod_update(&old, &relabelled));
    let mut image = old.clone();
    image["spec"]["containers"][0]["image"] = json!("b");
    assert!(significant_pod_update(&old, &image));
    let mut eph = old.clone();
    eph["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    assert!(significant_pod_update(&old, &eph));
    assert!(!significant_pod_update(&eph, &eph.clone()));
}

#[test]
fn exempt_namespace_warnings_name_the_labelled_modes() {
    let cfg = PodSecurityConfig::default();
    let labels = json!({ENFORCE_LABEL: "restricted"});
    let (p, _) = policy_for(&labels, &cfg.defaults);
    assert_eq!(
        exempt_namespace_warning(&cfg, "test", &p, &labels).as_deref(),
        Some(
            r#"namespace "test" is exempt from Pod Security, and the policy (enforce=restricted:latest) will be ignored"#
        )
    );
    let labels = json!({
        ENFORCE_LABEL: "restricted", ENFORCE_VERSION_LABEL: "v1.0",
        AUDIT_LABEL: "restricted", WARN_LABEL: "baseline",
    });
    let (p, _) = policy_for(&labels, &cfg.defaults);
    assert_eq!(
        exempt_namespace_warning(&cfg, "test", &p, &labels).as_deref(),
        Some(
            r#"namespace "test" is exempt from Pod Security, and the policy (enforce=restricted:v1.0, audit=restricted:latest, warn=baseline:latest) will be ignored"#
        )
    );
    let labels = json!({ENFORCE_LABEL: "privileged"});
    let (p, _) = policy_for(&labels, &cfg.defaults);
    assert_eq!(exempt_namespace_warning(&cfg, "test", &p, &labels), None);
}

#[test]
fn one_pod_per_controller_is_tried_first() {
    let pod = |name: &str, owner: Option<&str>| {
        let mut p = json!({"metadata": {"name": name}, "spec": {}});
        if let Some(uid) = owner {
            p["metadata"]["ownerReferences"] = json!([{"uid": uid, "controller": true}]);
        }
        p
    };
    let cfg = PodSecurityConfig::default();
    let order: Vec<String> = prioritize(
        &cfg,
        vec![
            pod("a1", Some("A")),
            pod("a2", Some("A")),
            pod("b1", Some("B")),
            pod("solo", None),
        ],
    )
    .iter()
    .map(|p| name_of(p).to_string())
    .collect();
    assert_eq!(order, ["a1", "b1", "solo", "a2"]);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// RKE2's own `rke2-pss.yaml` in CIS mode, as it writes it.
const RKE2_CIS_FILE: &str = r#"apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1beta1
    kind: PodSecurityConfiguration
    defaults:
      enforce: "restricted"
      enforce-version: "latest"
      audit: "restricted"
      audit-version: "latest"
      warn: "restricted"
      warn-version: "latest"
    exemptions:
      usernames: []
      runtimeClasses: []
      namespaces: [kube-system, cis-operator-system, tigera-operator]"#;

#[test]
fn configuration_files_read_as_kube_apiserver_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let cis = write(dir.path(), "cis.yaml", RKE2_CIS_FILE);
    assert_eq!(
        PodSecurityConfig::load(&cis).unwrap(),
        PodSecurityConfig::rke2_cis()
    );

    // Unset defaults are privileged:latest; other plugins are ignored.
    let partial = write(
        dir.path(),
        "partial.yaml",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: EventRateLimit\n  path: elsewhere.yaml\n- name: PodSecurity\n  configuration:\n    apiVersion: pod-security.admission.config.k8s.io/v1\n    kind: PodSecurityConfiguration\n    defaults:\n      enforce: baseline\n      enforce-version: v1.30\n",
    );
    let c = PodSecurityConfig::load(&partial).unwrap();
    assert_eq!(c.defaults.enforce, lv(Level::Baseline, Version::V1(30)));
    assert_eq!(c.defaults.warn, LevelVersion::PRIVILEGED);
    assert_eq!(c.exemptions, Exemptions::default());

    // The plugin's configuration from a file beside this one.
    write(
        dir.path(),
        "psa.yaml",
        "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  warn: restricted\nexemptions:\n  usernames: [ci-bot]\n",
    );
    let by_path = write(
        dir.path(),
        "by-path.yaml",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  path: psa.yaml\n",
    );
    let c = PodSecurityConfig::load(&by_path).unwrap();
    assert_eq!(c.defaults.warn, R_LATEST);
    assert_eq!(c.exemptions.usernames, ["ci-bot"]);

    // No PodSecurity plugin entry: the default.
    let none = write(
        dir.path(),
        "none.yaml",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins: []\n",
    );
    assert_eq!(
        PodSecurityConfig::load(&none).unwrap(),
        PodSecurityConfig::default()
    );
}

#[test]
fn bad_configuration_files_are_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let e = PodSecurityConfig::load(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );

    let cases = [
        ("yaml.yaml", "plugins: [\n", "invalid YAML"),
        (
            "kind.yaml",
            "apiVersion: v1\nkind: ConfigMap\n",
            r#"expected kind AdmissionConfiguration of apiVersion apiserver.config.k8s.io/v1 or apiserver.config.k8s.io/v1alpha1 or apiserver.k8s.io/v1alpha1, got kind "ConfigMap" of apiVersion "v1""#,
        ),
        (
            "level.yaml",
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  configuration:\n    apiVersion: pod-security.admission.config.k8s.io/v1\n    kind: PodSecurityConfiguration\n    defaults:\n      enforce: strict\n      warn-version: \"1.2\"\n    exemptions:\n      namespaces: [kube-system, kube-system, Bad_NS]\n      usernames: [\"\"]\n",
            concat!(
                r#"plugins[PodSecurity].configuration: defaults.enforce: Invalid value: "strict": must be one of privileged, baseline, restricted, "#,
                r#"defaults.warn-version: Invalid value: "1.2": must be "latest" or "v1.x", "#,
                r#"exemptions.namespaces[1]: Duplicate value: "kube-system", "#,
                r#"exemptions.namespaces[2]: Invalid value: "Bad_NS": "#
            ),
        ),
        (
            "inner-kind.yaml",
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  configuration:\n    defaults:\n      enforce: restricted\n",
            r#"plugins[PodSecurity].configuration: expected kind PodSecurityConfiguration"#,
        ),
    ];
    for (name, text, want) in cases {
        let p = write(dir.path(), name, text);
        let e = PodSecurityConfig::load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains(want), "{name}: {e}");
    }
    let p = write(
        dir.path(),
        "user.yaml",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  configuration:\n    apiVersion: pod-security.admission.config.k8s.io/v1\n    kind: PodSecurityConfiguration\n    exemptions:\n      usernames: [\"\"]\n",
    );
    let e = PodSecurityConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.ends_with(r#"exemptions.usernames[0]: Invalid value: "": username must not be empty"#),
        "{e}"
    );
}
