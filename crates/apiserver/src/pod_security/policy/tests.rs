use serde_json::{Value, json};

use super::*;

fn lv(level: Level, version: &str) -> LevelVersion {
    LevelVersion {
        level,
        version: Version::parse(version).expect("version"),
    }
}

/// The findings of `pod` at `level:version`, as the message prints them.
fn detail(pod: &Value, level: Level, version: &str) -> String {
    evaluate(lv(level, version), &pod["metadata"], &pod["spec"]).detail()
}

/// A pod with one container `c` and no security settings at all.
fn bare() -> Value {
    json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

/// A pod that passes `restricted` (what the docs recommend).
fn compliant() -> Value {
    json!({
        "metadata": {"name": "ok"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}}, {"name": "tmp", "emptyDir": {}}],
            "containers": [{
                "name": "c",
                "image": "busybox",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
            }],
        },
    })
}

/// `compliant()` with `f` applied.
fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut p = compliant();
    f(&mut p);
    p
}

const BARE_RESTRICTED: &str = r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#;

#[test]
fn checks_are_in_upstream_order() {
    let ids = |level| {
        CHECKS
            .iter()
            .filter(|c| c.level == level)
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    for level in [Level::Baseline, Level::Restricted] {
        let got = ids(level);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "{level:?} checks in byte order of their id");
    }
    let first_restricted = CHECKS
        .iter()
        .position(|c| c.level == Level::Restricted)
        .unwrap();
    assert!(
        CHECKS[first_restricted..]
            .iter()
            .all(|c| c.level == Level::Restricted),
        "baseline checks come first"
    );
    let newest = CHECKS
        .iter()
        .flat_map(|c| c.revisions.iter().map(|r| r.since))
        .max();
    assert_eq!(newest, Some(NEWEST_CHECK));
}

#[test]
fn a_pod_without_settings_passes_baseline_and_fails_restricted_as_upstream_words_it() {
    let p = bare();
    assert_eq!(detail(&p, Level::Baseline, "latest"), "");
    assert_eq!(detail(&p, Level::Privileged, "latest"), "");
    assert_eq!(detail(&p, Level::Restricted, "latest"), BARE_RESTRICTED);
}

#[test]
fn a_privileged_pod() {
    let mut p = bare();
    p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"privileged (container "c" must not set securityContext.privileged=true)"#
    );
    // The message of a real kube-apiserver for this pod (kubectl's stderr).
    assert_eq!(
        detail(&p, Level::Restricted, "latest"),
        format!(
            r#"privileged (container "c" must not set securityContext.privileged=true), {BARE_RESTRICTED}"#
        )
    );
}

#[test]
fn a_host_path_pod() {
    let mut p = bare();
    p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/etc"}}]);
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"hostPath volumes (volume "h")"#
    );
    // restricted replaces the hostPath check with its volume type check.
    let p = with(|p| {
        p["spec"]["volumes"] = json!([
            {"name": "h", "hostPath": {"path": "/etc"}},
            {"name": "n", "nfs": {"server": "s", "path": "/"}},
            {"name": "g", "gitRepo": {"repository": "r"}},
            {"name": "e", "emptyDir": {}},
        ])
    });
    assert_eq!(
        detail(&p, Level::Restricted, "latest"),
        r#"restricted volume types (volumes "h", "n", "g" use restricted volume types "gitRepo", "hostPath", "nfs")"#
    );
}

#[test]
fn a_compliant_pod_passes_every_level_and_version() {
    let p = compliant();
    for v in ["latest", "v1.0", "v1.19", "v1.25", "v1.35", "v1.99"] {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert_eq!(detail(&p, level, v), "", "{level:?}:{v}");
        }
    }
}

#[test]
fn host_namespaces_and_ports_as_a_real_refusal_words_them() {
    // From a kube-apiserver refusal: `violates PodSecurity
    // "restricted:v1.24": host namespaces (hostNetwork=true), hostPort
    // (container "manager" uses hostPorts 8443, 8888, 9090)`.
    let p = with(|p| {
        p["spec"]["hostNetwork"] = json!(true);
        let c = &mut p["spec"]["containers"][0];
        c["name"] = json!("manager");
        c["ports"] = json!([{"containerPort": 9090, "hostPort": 9090}, {"containerPort": 8443, "hostPort": 8443}, {"containerPort": 8888, "hostPort": 8888}]);
    });
    assert_eq!(
        detail(&p, Level::Restricted, "v1.24"),
        "host namespaces (hostNetwork=true), hostPort (container \"manager\" uses hostPorts 8443, 8888, 9090)"
    );
    let p = with(|p| {
        p["spec"]["hostPID"] = json!(true);
        p["spec"]["hostIPC"] = json!(true);
        p["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": 80, "hostPort": 80}, {"containerPort": 443}]);
    });
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"host namespaces (hostPID=true, hostIPC=true), hostPort (container "c" uses hostPort 80)"#
    );
}

#[test]
fn several_containers_are_named_in_visiting_order() {
    // From a kube-apiserver refusal naming two containers.
    let p = json!({"metadata": {}, "spec": {
        "securityContext": {"runAsNonRoot": true},
        "containers": [
            {"name": "kube-rbac-proxy", "image": "x"},
            {"name": "manager", "image": "y", "securityContext": {"allowPrivilegeEscalation": false}},
        ],
    }});
    assert_eq!(
        detail(&p, Level::Restricted, "latest"),
        r#"allowPrivilegeEscalation != false (container "kube-rbac-proxy" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (containers "kube-rbac-proxy", "manager" must set securityContext.capabilities.drop=["ALL"]), seccompProfile (pod or containers "kube-rbac-proxy", "manager" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
    );
    // Init and ephemeral containers are checked too, init ones first.
    let p = json!({"metadata": {}, "spec": {
        "containers": [{"name": "b", "securityContext": {"privileged": true}}],
        "initContainers": [{"name": "a", "securityContext": {"privileged": true}}],
        "ephemeralContainers": [{"name": "e", "securityContext": {"privileged": true}}],
    }});
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"privileged (containers "a", "b", "e" must not set securityContext.privileged=true)"#
    );
}

#[test]
fn capabilities() {
    let p = with(|p| {
        p["spec"]["containers"][0]["securityContext"]["capabilities"] =
            json!({"add": ["SYS_ADMIN", "CHOWN", "NET_RAW"]})
    });
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"non-default capabilities (container "c" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add)"#
    );
    assert_eq!(
        detail(&p, Level::Restricted, "latest"),
        r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]; container "c" must not include "CHOWN", "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add)"#
    );
    // Before 1.22 restricted had no capabilities check of its own: the
    // baseline one applies.
    assert_eq!(
        detail(&p, Level::Restricted, "v1.21"),
        r#"non-default capabilities (container "c" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add)"#
    );
}

#[test]
fn apparmor_selinux_procmount_and_host_process() {
    let p = with(|p| {
        p["metadata"]["annotations"] = json!({
            "container.apparmor.security.beta.kubernetes.io/c": "unconfined",
            "container.apparmor.security.beta.kubernetes.io/d": "localhost/mine",
        });
        p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"});
        p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t", "user": "root"});
        p["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true});
        let sc = &mut p["spec"]["containers"][0]["securityContext"];
        sc["seLinuxOptions"] = json!({"type": "container_engine_t", "role": "r"});
        sc["procMount"] = json!("Unmasked");
    });
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        concat!(
            r#"forbidden AppArmor profiles (pod and annotation must not set AppArmor profile type to "Unconfined", "container.apparmor.security.beta.kubernetes.io/c="unconfined""), "#,
            r#"procMount (container "c" must not set securityContext.procMount to "Unmasked"), "#,
            r#"seLinuxOptions (pod and container "c" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set; role may not be set), "#,
            r#"hostProcess (pod must not set securityContext.windowsOptions.hostProcess=true)"#
        )
    );
    // container_engine_t is allowed from 1.31 on only.
    assert!(
        detail(&p, Level::Baseline, "v1.30")
            .contains(r#"types "container_engine_t", "spc_t"; user may not be set"#)
    );
}

#[test]
fn user_namespaces_relax_proc_mount_and_root_from_1_35() {
    let p = with(|p| {
        p["spec"]["hostUsers"] = json!(false);
        p["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
        p["spec"]["securityContext"]["runAsUser"] = json!(0);
        p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked");
    });
    assert_eq!(detail(&p, Level::Baseline, "latest"), "");
    assert_eq!(
        detail(&p, Level::Restricted, "latest"),
        r#"procMount (container "c" must not set securityContext.procMount to "Unmasked")"#
    );
    assert_eq!(
        detail(&p, Level::Restricted, "v1.34"),
        concat!(
            r#"procMount (container "c" must not set securityContext.procMount to "Unmasked"), "#,
            r#"runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false), "#,
            r#"runAsUser=0 (pod must not set runAsUser=0)"#
        )
    );
    // runAsUser is a restricted check from 1.23 on.
    assert_eq!(
        detail(&p, Level::Restricted, "v1.22"),
        concat!(
            r#"procMount (container "c" must not set securityContext.procMount to "Unmasked"), "#,
            r#"runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"#
        )
    );
}

#[test]
fn seccomp_by_version() {
    let p = with(|p| {
        p["spec"]["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
        p["metadata"]["annotations"] =
            json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"});
    });
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#
    );
    assert_eq!(
        detail(&p, Level::Restricted, "latest"),
        r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#
    );
    // Before 1.19 the annotations were what counted.
    assert_eq!(
        detail(&p, Level::Baseline, "v1.18"),
        r#"seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")"#
    );
}

#[test]
fn windows_pods_skip_the_linux_only_restricted_checks_from_1_25() {
    let mut p = bare();
    p["spec"]["os"] = json!({"name": "windows"});
    p["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    assert_eq!(detail(&p, Level::Restricted, "latest"), "");
    assert!(
        detail(&p, Level::Restricted, "v1.24").starts_with("allowPrivilegeEscalation != false")
    );
}

#[test]
fn sysctls_allowed_by_version() {
    let p = with(|p| {
        p["spec"]["securityContext"]["sysctls"] = json!([
            {"name": "net.ipv4.tcp_rmem", "value": "4096 87380 6291456"},
            {"name": "kernel.msgmax", "value": "1"},
            {"name": "net.ipv4.tcp_keepalive_time", "value": "60"},
        ])
    });
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        "forbidden sysctls (kernel.msgmax)"
    );
    assert_eq!(
        detail(&p, Level::Baseline, "v1.31"),
        "forbidden sysctls (net.ipv4.tcp_rmem, kernel.msgmax)"
    );
    assert_eq!(
        detail(&p, Level::Baseline, "v1.28"),
        "forbidden sysctls (net.ipv4.tcp_rmem, kernel.msgmax, net.ipv4.tcp_keepalive_time)"
    );
}

#[test]
fn probe_and_lifecycle_hosts_from_1_34() {
    let p = with(|p| {
        let c = &mut p["spec"]["containers"][0];
        c["livenessProbe"] = json!({"httpGet": {"host": "10.0.0.1", "port": 80}});
        c["lifecycle"] = json!({"preStop": {"tcpSocket": {"host": "evil", "port": 1}}});
    });
    assert_eq!(
        detail(&p, Level::Baseline, "latest"),
        r#"probe or lifecycle host (container "c" uses probe or lifecycle hosts "10.0.0.1", "evil")"#
    );
    assert_eq!(detail(&p, Level::Baseline, "v1.33"), "");
}

#[test]
fn versions_parse_as_upstream() {
    assert_eq!(Version::parse("latest"), Ok(Version::Latest));
    assert_eq!(Version::parse("v1.0"), Ok(Version::V1(0)));
    assert_eq!(Version::parse("v1.35"), Ok(Version::V1(35)));
    for bad in [
        "", "v1.05", "1.25", "v2.1", "v1.", "v1.x", "Latest", "v1.-1",
    ] {
        assert_eq!(
            Version::parse(bad),
            Err(r#"must be "latest" or "v1.x""#.to_string()),
            "{bad:?}"
        );
    }
    assert_eq!(Version::V1(99).effective_minor(), latest_minor());
    assert_eq!(Version::Latest.effective_minor(), 35);
    assert_eq!(
        lv(Level::Restricted, "v1.99").to_string(),
        "restricted:v1.99"
    );
    assert_eq!(
        Level::parse("Restricted"),
        Err("must be one of privileged, baseline, restricted".to_string())
    );
}
