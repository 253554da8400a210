//! The same object built with k8s-openapi (serde JSON = expected) and with
//! k8s-pb (prost-encoded, wrapped in the `k8s\0` envelope, then decoded).
//! The protobuf side also carries the zero values gogo-protobuf writes for Go
//! value fields (`generateName: ""`, `stdin: false`, zero `creationTimestamp`),
//! which must disappear as Go's `omitempty` makes them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as oapps;
use k8s_openapi::api::batch::v1 as obatch;
use k8s_openapi::api::coordination::v1 as ocoord;
use k8s_openapi::api::core::v1 as oc;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as OQ;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as ometa;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as OIos;
use k8s_openapi::{ByteString, jiff};
use k8s_pb::api::apps::v1 as papps;
use k8s_pb::api::batch::v1 as pbatch;
use k8s_pb::api::coordination::v1 as pcoord;
use k8s_pb::api::core::v1 as pc;
use k8s_pb::apimachinery::pkg::api::resource::Quantity as PQ;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pmeta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString as PIos;
use prost::Message;
use rke2_kubeproto::{MAGIC, ProtoError, decode, is_supported};

const T0: i64 = 1_704_164_645; // 2024-01-02T03:04:05Z

fn s(x: &str) -> Option<String> {
    Some(x.to_owned())
}
fn v(x: &[&str]) -> Vec<String> {
    x.iter().map(|x| (*x).to_owned()).collect()
}
fn m(x: &[(&str, &str)]) -> BTreeMap<String, String> {
    x.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
fn ptime(secs: i64) -> pmeta::Time {
    pmeta::Time {
        seconds: Some(secs),
        nanos: Some(0),
    }
}
fn otime(secs: i64) -> ometa::Time {
    ometa::Time(jiff::Timestamp::from_second(secs).unwrap())
}
fn pq(x: &str) -> PQ {
    PQ { string: s(x) }
}
fn oq(x: &str) -> OQ {
    OQ(x.to_owned())
}
fn pios_int(i: i32) -> PIos {
    PIos {
        r#type: Some(0),
        int_val: Some(i),
        str_val: Some(String::new()),
    }
}
fn pios_str(x: &str) -> PIos {
    PIos {
        r#type: Some(1),
        int_val: Some(0),
        str_val: s(x),
    }
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let u = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s(api_version),
            kind: s(kind),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(u.encode_to_vec());
    out
}

fn check<O: k8s_openapi::Resource + k8s_openapi::serde::Serialize, P: Message>(o: &O, p: &P) {
    check_with(o, p, |_| {});
}

/// `fix` adjusts the k8s-openapi JSON where it differs from Go's on purpose.
fn check_with<O: k8s_openapi::Resource + k8s_openapi::serde::Serialize, P: Message>(
    o: &O,
    p: &P,
    fix: impl Fn(&mut serde_json::Value),
) {
    let mut expected = serde_json::to_value(o).unwrap();
    fix(&mut expected);
    let got = decode(&envelope(O::API_VERSION, O::KIND, p.encode_to_vec())).unwrap();
    if expected != got {
        let mut diffs = Vec::new();
        diff("", &expected, &got, &mut diffs);
        panic!("mismatch for {}:\n{}", O::KIND, diffs.join("\n"));
    }
    assert!(is_supported(O::API_VERSION, O::KIND));
}

/// Paths where two JSON values differ, for readable failures.
fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (va, vb) = (x.get(k).unwrap_or(&serde_json::Value::Null), y.get(k));
                match vb {
                    Some(vb) if x.contains_key(k) => diff(&format!("{path}.{k}"), va, vb, out),
                    Some(vb) => out.push(format!("{path}.{k}: unexpected {vb}")),
                    None => out.push(format!("{path}.{k}: missing, expected {va}")),
                }
            }
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: expected {a}, got {b}")),
        _ => {}
    }
}

/// ObjectMeta with the zero value fields gogo writes, plus many real ones.
fn pmeta_full(name: &str) -> pmeta::ObjectMeta {
    pmeta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s("default"),
        self_link: s(""),
        uid: s("0b8f2a3c-1111-2222-3333-444455556666"),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(ptime(T0)),
        deletion_timestamp: None,
        deletion_grace_period_seconds: Some(0),
        labels: m(&[("app", "web"), ("tier", "fe")]),
        annotations: m(&[("note", "hello")]),
        owner_references: vec![pmeta::OwnerReference {
            api_version: s("apps/v1"),
            kind: s("ReplicaSet"),
            name: s("web-abc"),
            uid: s("u-1"),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }],
        finalizers: v(&["example.com/f"]),
        managed_fields: vec![],
    }
}
fn ometa_full(name: &str) -> ometa::ObjectMeta {
    ometa::ObjectMeta {
        name: s(name),
        namespace: s("default"),
        uid: s("0b8f2a3c-1111-2222-3333-444455556666"),
        creation_timestamp: Some(otime(T0)),
        deletion_grace_period_seconds: Some(0),
        labels: Some(m(&[("app", "web"), ("tier", "fe")])),
        annotations: Some(m(&[("note", "hello")])),
        owner_references: Some(vec![ometa::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-abc".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }]),
        finalizers: Some(v(&["example.com/f"])),
        ..Default::default()
    }
}
/// Just a name, as kubectl sends it (zero `creationTimestamp` included).
fn pmeta_name(name: &str) -> pmeta::ObjectMeta {
    pmeta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        creation_timestamp: Some(ptime(-62_135_596_800)),
        ..Default::default()
    }
}
fn ometa_name(name: &str) -> ometa::ObjectMeta {
    ometa::ObjectMeta {
        name: s(name),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- Pod ----

fn p_container(name: &str) -> pc::Container {
    pc::Container {
        name: s(name),
        image: s("busybox:1.36"),
        command: v(&["sh", "-c"]),
        args: v(&["sleep 10"]),
        working_dir: s("/work"),
        ports: vec![pc::ContainerPort {
            name: s("http"),
            host_port: Some(0),
            container_port: Some(8080),
            protocol: s("TCP"),
            host_ip: s(""),
        }],
        env_from: vec![
            pc::EnvFromSource {
                prefix: s("CM_"),
                config_map_ref: Some(pc::ConfigMapEnvSource {
                    local_object_reference: Some(pc::LocalObjectReference { name: s("cm1") }),
                    optional: Some(true),
                }),
                secret_ref: None,
            },
            pc::EnvFromSource {
                prefix: s(""),
                config_map_ref: None,
                secret_ref: Some(pc::SecretEnvSource {
                    local_object_reference: Some(pc::LocalObjectReference { name: s("sec1") }),
                    optional: None,
                }),
            },
        ],
        env: vec![
            pc::EnvVar {
                name: s("A"),
                value: s("B"),
                value_from: None,
            },
            pc::EnvVar {
                name: s("FROM_CM"),
                value: s(""),
                value_from: Some(pc::EnvVarSource {
                    config_map_key_ref: Some(pc::ConfigMapKeySelector {
                        local_object_reference: Some(pc::LocalObjectReference { name: s("cm1") }),
                        key: s("k"),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
            pc::EnvVar {
                name: s("POD_IP"),
                value: s(""),
                value_from: Some(pc::EnvVarSource {
                    field_ref: Some(pc::ObjectFieldSelector {
                        api_version: s("v1"),
                        field_path: s("status.podIP"),
                    }),
                    ..Default::default()
                }),
            },
            pc::EnvVar {
                name: s("MEM"),
                value: s(""),
                value_from: Some(pc::EnvVarSource {
                    resource_field_ref: Some(pc::ResourceFieldSelector {
                        container_name: s(name),
                        resource: s("limits.memory"),
                        divisor: Some(pq("1Mi")),
                    }),
                    ..Default::default()
                }),
            },
            pc::EnvVar {
                name: s("PW"),
                value: s(""),
                value_from: Some(pc::EnvVarSource {
                    secret_key_ref: Some(pc::SecretKeySelector {
                        local_object_reference: Some(pc::LocalObjectReference { name: s("sec1") }),
                        key: s("pw"),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
        ],
        resources: Some(pc::ResourceRequirements {
            limits: [
                ("cpu".to_owned(), pq("500m")),
                ("memory".to_owned(), pq("128Mi")),
            ]
            .into(),
            requests: [("cpu".to_owned(), pq("100m"))].into(),
            claims: vec![],
        }),
        volume_mounts: vec![
            pc::VolumeMount {
                name: s("data"),
                read_only: Some(true),
                mount_path: s("/data"),
                sub_path: s(""),
                mount_propagation: s("HostToContainer"),
                sub_path_expr: s(""),
                recursive_read_only: None,
            },
            pc::VolumeMount {
                name: s("cfg"),
                read_only: Some(false),
                mount_path: s("/cfg"),
                sub_path: s("app.conf"),
                ..Default::default()
            },
        ],
        liveness_probe: Some(pc::Probe {
            handler: Some(pc::ProbeHandler {
                http_get: Some(pc::HttpGetAction {
                    path: s("/healthz"),
                    port: Some(pios_str("http")),
                    host: s(""),
                    scheme: s("HTTP"),
                    http_headers: vec![pc::HttpHeader {
                        name: s("X-A"),
                        value: s("1"),
                    }],
                }),
                ..Default::default()
            }),
            initial_delay_seconds: Some(5),
            timeout_seconds: Some(1),
            period_seconds: Some(10),
            success_threshold: Some(1),
            failure_threshold: Some(3),
            termination_grace_period_seconds: None,
        }),
        readiness_probe: Some(pc::Probe {
            handler: Some(pc::ProbeHandler {
                tcp_socket: Some(pc::TcpSocketAction {
                    port: Some(pios_int(8080)),
                    host: s(""),
                }),
                ..Default::default()
            }),
            initial_delay_seconds: Some(0),
            ..Default::default()
        }),
        startup_probe: Some(pc::Probe {
            handler: Some(pc::ProbeHandler {
                exec: Some(pc::ExecAction {
                    command: v(&["cat", "/tmp/ok"]),
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        lifecycle: Some(pc::Lifecycle {
            post_start: Some(pc::LifecycleHandler {
                exec: Some(pc::ExecAction {
                    command: v(&["echo", "hi"]),
                }),
                ..Default::default()
            }),
            pre_stop: Some(pc::LifecycleHandler {
                sleep: Some(pc::SleepAction { seconds: Some(5) }),
                ..Default::default()
            }),
            stop_signal: None,
        }),
        termination_message_path: s("/dev/termination-log"),
        termination_message_policy: s("File"),
        image_pull_policy: s("IfNotPresent"),
        security_context: Some(pc::SecurityContext {
            capabilities: Some(pc::Capabilities {
                add: v(&["NET_ADMIN"]),
                drop: v(&["ALL"]),
            }),
            privileged: Some(false),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            seccomp_profile: Some(pc::SeccompProfile {
                r#type: s("RuntimeDefault"),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        stdin: Some(false),
        stdin_once: Some(false),
        tty: Some(true),
        ..Default::default()
    }
}

fn o_container(name: &str) -> oc::Container {
    oc::Container {
        name: name.into(),
        image: s("busybox:1.36"),
        command: Some(v(&["sh", "-c"])),
        args: Some(v(&["sleep 10"])),
        working_dir: s("/work"),
        ports: Some(vec![oc::ContainerPort {
            name: s("http"),
            container_port: 8080,
            protocol: s("TCP"),
            ..Default::default()
        }]),
        env_from: Some(vec![
            oc::EnvFromSource {
                prefix: s("CM_"),
                config_map_ref: Some(oc::ConfigMapEnvSource {
                    name: "cm1".into(),
                    optional: Some(true),
                }),
                secret_ref: None,
            },
            oc::EnvFromSource {
                secret_ref: Some(oc::SecretEnvSource {
                    name: "sec1".into(),
                    optional: None,
                }),
                ..Default::default()
            },
        ]),
        env: Some(vec![
            oc::EnvVar {
                name: "A".into(),
                value: s("B"),
                value_from: None,
            },
            oc::EnvVar {
                name: "FROM_CM".into(),
                value: None,
                value_from: Some(oc::EnvVarSource {
                    config_map_key_ref: Some(oc::ConfigMapKeySelector {
                        name: "cm1".into(),
                        key: "k".into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
            oc::EnvVar {
                name: "POD_IP".into(),
                value: None,
                value_from: Some(oc::EnvVarSource {
                    field_ref: Some(oc::ObjectFieldSelector {
                        api_version: s("v1"),
                        field_path: "status.podIP".into(),
                    }),
                    ..Default::default()
                }),
            },
            oc::EnvVar {
                name: "MEM".into(),
                value: None,
                value_from: Some(oc::EnvVarSource {
                    resource_field_ref: Some(oc::ResourceFieldSelector {
                        container_name: s(name),
                        resource: "limits.memory".into(),
                        divisor: Some(oq("1Mi")),
                    }),
                    ..Default::default()
                }),
            },
            oc::EnvVar {
                name: "PW".into(),
                value: None,
                value_from: Some(oc::EnvVarSource {
                    secret_key_ref: Some(oc::SecretKeySelector {
                        name: "sec1".into(),
                        key: "pw".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
        ]),
        resources: Some(oc::ResourceRequirements {
            limits: Some(
                [
                    ("cpu".to_owned(), oq("500m")),
                    ("memory".to_owned(), oq("128Mi")),
                ]
                .into(),
            ),
            requests: Some([("cpu".to_owned(), oq("100m"))].into()),
            claims: None,
        }),
        volume_mounts: Some(vec![
            oc::VolumeMount {
                name: "data".into(),
                read_only: Some(true),
                mount_path: "/data".into(),
                mount_propagation: s("HostToContainer"),
                ..Default::default()
            },
            oc::VolumeMount {
                name: "cfg".into(),
                mount_path: "/cfg".into(),
                sub_path: s("app.conf"),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(oc::Probe {
            http_get: Some(oc::HTTPGetAction {
                path: s("/healthz"),
                port: OIos::String("http".into()),
                scheme: s("HTTP"),
                http_headers: Some(vec![oc::HTTPHeader {
                    name: "X-A".into(),
                    value: "1".into(),
                }]),
                host: None,
            }),
            initial_delay_seconds: Some(5),
            timeout_seconds: Some(1),
            period_seconds: Some(10),
            success_threshold: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        readiness_probe: Some(oc::Probe {
            tcp_socket: Some(oc::TCPSocketAction {
                port: OIos::Int(8080),
                host: None,
            }),
            ..Default::default()
        }),
        startup_probe: Some(oc::Probe {
            exec: Some(oc::ExecAction {
                command: Some(v(&["cat", "/tmp/ok"])),
            }),
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        lifecycle: Some(oc::Lifecycle {
            post_start: Some(oc::LifecycleHandler {
                exec: Some(oc::ExecAction {
                    command: Some(v(&["echo", "hi"])),
                }),
                ..Default::default()
            }),
            pre_stop: Some(oc::LifecycleHandler {
                sleep: Some(oc::SleepAction { seconds: 5 }),
                ..Default::default()
            }),
            stop_signal: None,
        }),
        termination_message_path: s("/dev/termination-log"),
        termination_message_policy: s("File"),
        image_pull_policy: s("IfNotPresent"),
        security_context: Some(oc::SecurityContext {
            capabilities: Some(oc::Capabilities {
                add: Some(v(&["NET_ADMIN"])),
                drop: Some(v(&["ALL"])),
            }),
            privileged: Some(false),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            seccomp_profile: Some(oc::SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        tty: Some(true),
        ..Default::default()
    }
}

fn p_volumes() -> Vec<pc::Volume> {
    let vol = |name: &str, vs: pc::VolumeSource| pc::Volume {
        name: s(name),
        volume_source: Some(vs),
    };
    vec![
        vol(
            "scratch",
            pc::VolumeSource {
                empty_dir: Some(pc::EmptyDirVolumeSource {
                    medium: s("Memory"),
                    size_limit: Some(pq("64Mi")),
                }),
                ..Default::default()
            },
        ),
        vol(
            "cfg",
            pc::VolumeSource {
                config_map: Some(pc::ConfigMapVolumeSource {
                    local_object_reference: Some(pc::LocalObjectReference { name: s("cm1") }),
                    items: vec![pc::KeyToPath {
                        key: s("a"),
                        path: s("a.txt"),
                        mode: Some(0o400),
                    }],
                    default_mode: Some(0o644),
                    optional: None,
                }),
                ..Default::default()
            },
        ),
        vol(
            "sec",
            pc::VolumeSource {
                secret: Some(pc::SecretVolumeSource {
                    secret_name: s("sec1"),
                    items: vec![],
                    default_mode: Some(0o600),
                    optional: Some(false),
                }),
                ..Default::default()
            },
        ),
        vol(
            "host",
            pc::VolumeSource {
                host_path: Some(pc::HostPathVolumeSource {
                    path: s("/var/log"),
                    r#type: s(""),
                }),
                ..Default::default()
            },
        ),
        vol(
            "data",
            pc::VolumeSource {
                persistent_volume_claim: Some(pc::PersistentVolumeClaimVolumeSource {
                    claim_name: s("pvc1"),
                    read_only: Some(false),
                }),
                ..Default::default()
            },
        ),
        vol(
            "podinfo",
            pc::VolumeSource {
                downward_api: Some(pc::DownwardAPIVolumeSource {
                    items: vec![pc::DownwardAPIVolumeFile {
                        path: s("labels"),
                        field_ref: Some(pc::ObjectFieldSelector {
                            api_version: s("v1"),
                            field_path: s("metadata.labels"),
                        }),
                        resource_field_ref: None,
                        mode: None,
                    }],
                    default_mode: Some(420),
                }),
                ..Default::default()
            },
        ),
        vol(
            "token",
            pc::VolumeSource {
                projected: Some(pc::ProjectedVolumeSource {
                    sources: vec![
                        pc::VolumeProjection {
                            service_account_token: Some(pc::ServiceAccountTokenProjection {
                                audience: s("api"),
                                expiration_seconds: Some(3607),
                                path: s("token"),
                            }),
                            ..Default::default()
                        },
                        pc::VolumeProjection {
                            config_map: Some(pc::ConfigMapProjection {
                                local_object_reference: Some(pc::LocalObjectReference {
                                    name: s("kube-root-ca.crt"),
                                }),
                                items: vec![pc::KeyToPath {
                                    key: s("ca.crt"),
                                    path: s("ca.crt"),
                                    mode: None,
                                }],
                                optional: None,
                            }),
                            ..Default::default()
                        },
                    ],
                    default_mode: Some(420),
                }),
                ..Default::default()
            },
        ),
    ]
}

fn o_volumes() -> Vec<oc::Volume> {
    vec![
        oc::Volume {
            name: "scratch".into(),
            empty_dir: Some(oc::EmptyDirVolumeSource {
                medium: s("Memory"),
                size_limit: Some(oq("64Mi")),
            }),
            ..Default::default()
        },
        oc::Volume {
            name: "cfg".into(),
            config_map: Some(oc::ConfigMapVolumeSource {
                name: "cm1".into(),
                items: Some(vec![oc::KeyToPath {
                    key: "a".into(),
                    path: "a.txt".into(),
                    mode: Some(0o400),
                }]),
                default_mode: Some(0o644),
                optional: None,
            }),
            ..Default::default()
        },
        oc::Volume {
            name: "sec".into(),
            secret: Some(oc::SecretVolumeSource {
                secret_name: s("sec1"),
                items: None,
                default_mode: Some(0o600),
                optional: Some(false),
            }),
            ..Default::default()
        },
        oc::Volume {
            name: "host".into(),
            host_path: Some(oc::HostPathVolumeSource {
                path: "/var/log".into(),
                type_: s(""),
            }),
            ..Default::default()
        },
        oc::Volume {
            name: "data".into(),
            persistent_volume_claim: Some(oc::PersistentVolumeClaimVolumeSource {
                claim_name: "pvc1".into(),
                read_only: None,
            }),
            ..Default::default()
        },
        oc::Volume {
            name: "podinfo".into(),
            downward_api: Some(oc::DownwardAPIVolumeSource {
                items: Some(vec![oc::DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(oc::ObjectFieldSelector {
                        api_version: s("v1"),
                        field_path: "metadata.labels".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: Some(420),
            }),
            ..Default::default()
        },
        oc::Volume {
            name: "token".into(),
            projected: Some(oc::ProjectedVolumeSource {
                sources: Some(vec![
                    oc::VolumeProjection {
                        service_account_token: Some(oc::ServiceAccountTokenProjection {
                            audience: s("api"),
                            expiration_seconds: Some(3607),
                            path: "token".into(),
                        }),
                        ..Default::default()
                    },
                    oc::VolumeProjection {
                        config_map: Some(oc::ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![oc::KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ]),
                default_mode: Some(420),
            }),
            ..Default::default()
        },
    ]
}

fn p_label_selector() -> pmeta::LabelSelector {
    pmeta::LabelSelector {
        match_labels: m(&[("app", "web")]),
        match_expressions: vec![pmeta::LabelSelectorRequirement {
            key: s("tier"),
            operator: s("In"),
            values: v(&["fe", "be"]),
        }],
    }
}
fn o_label_selector() -> ometa::LabelSelector {
    ometa::LabelSelector {
        match_labels: Some(m(&[("app", "web")])),
        match_expressions: Some(vec![ometa::LabelSelectorRequirement {
            key: "tier".into(),
            operator: "In".into(),
            values: Some(v(&["fe", "be"])),
        }]),
    }
}

fn p_pod_spec() -> pc::PodSpec {
    pc::PodSpec {
        volumes: p_volumes(),
        init_containers: vec![pc::Container {
            name: s("init"),
            image: s("busybox"),
            ..Default::default()
        }],
        containers: vec![p_container("main")],
        restart_policy: s("Always"),
        termination_grace_period_seconds: Some(30),
        active_deadline_seconds: None,
        dns_policy: s("ClusterFirst"),
        node_selector: m(&[("kubernetes.io/os", "linux")]),
        service_account_name: s("sa1"),
        service_account: s(""),
        automount_service_account_token: Some(false),
        node_name: s(""),
        host_network: Some(true),
        host_pid: Some(false),
        host_ipc: Some(false),
        share_process_namespace: None,
        security_context: Some(pc::PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(0),
            fs_group: Some(2000),
            supplemental_groups: vec![3000],
            sysctls: vec![pc::Sysctl {
                name: s("net.core.somaxconn"),
                value: s("1024"),
            }],
            ..Default::default()
        }),
        image_pull_secrets: vec![pc::LocalObjectReference { name: s("regcred") }],
        hostname: s("h1"),
        subdomain: s(""),
        affinity: Some(pc::Affinity {
            node_affinity: Some(pc::NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(pc::NodeSelector {
                    node_selector_terms: vec![pc::NodeSelectorTerm {
                        match_expressions: vec![pc::NodeSelectorRequirement {
                            key: s("zone"),
                            operator: s("In"),
                            values: v(&["a", "b"]),
                        }],
                        match_fields: vec![],
                    }],
                }),
                preferred_during_scheduling_ignored_during_execution: vec![
                    pc::PreferredSchedulingTerm {
                        weight: Some(10),
                        preference: Some(pc::NodeSelectorTerm {
                            match_expressions: vec![pc::NodeSelectorRequirement {
                                key: s("ssd"),
                                operator: s("Exists"),
                                values: vec![],
                            }],
                            match_fields: vec![],
                        }),
                    },
                ],
            }),
            pod_affinity: Some(pc::PodAffinity {
                required_during_scheduling_ignored_during_execution: vec![pc::PodAffinityTerm {
                    label_selector: Some(p_label_selector()),
                    namespaces: v(&["default"]),
                    topology_key: s("kubernetes.io/hostname"),
                    namespace_selector: None,
                    match_label_keys: vec![],
                    mismatch_label_keys: vec![],
                }],
                preferred_during_scheduling_ignored_during_execution: vec![],
            }),
            pod_anti_affinity: Some(pc::PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: vec![],
                preferred_during_scheduling_ignored_during_execution: vec![
                    pc::WeightedPodAffinityTerm {
                        weight: Some(100),
                        pod_affinity_term: Some(pc::PodAffinityTerm {
                            label_selector: Some(pmeta::LabelSelector {
                                match_labels: m(&[("app", "web")]),
                                match_expressions: vec![],
                            }),
                            topology_key: s("zone"),
                            ..Default::default()
                        }),
                    },
                ],
            }),
        }),
        scheduler_name: s("default-scheduler"),
        tolerations: vec![
            pc::Toleration {
                key: s("node.kubernetes.io/not-ready"),
                operator: s("Exists"),
                value: s(""),
                effect: s("NoExecute"),
                toleration_seconds: Some(300),
            },
            pc::Toleration {
                key: s("dedicated"),
                operator: s("Equal"),
                value: s("gpu"),
                effect: s("NoSchedule"),
                toleration_seconds: None,
            },
        ],
        host_aliases: vec![pc::HostAlias {
            ip: s("10.0.0.1"),
            hostnames: v(&["foo.local"]),
        }],
        priority_class_name: s("high"),
        priority: Some(0),
        dns_config: Some(pc::PodDnsConfig {
            nameservers: v(&["1.1.1.1"]),
            searches: v(&["svc.cluster.local"]),
            options: vec![pc::PodDnsConfigOption {
                name: s("ndots"),
                value: s("2"),
            }],
        }),
        readiness_gates: vec![pc::PodReadinessGate {
            condition_type: s("example.com/ready"),
        }],
        runtime_class_name: None,
        enable_service_links: Some(false),
        preemption_policy: s("PreemptLowerPriority"),
        overhead: [("cpu".to_owned(), pq("10m"))].into(),
        topology_spread_constraints: vec![pc::TopologySpreadConstraint {
            max_skew: Some(1),
            topology_key: s("zone"),
            when_unsatisfiable: s("DoNotSchedule"),
            label_selector: Some(p_label_selector()),
            min_domains: Some(2),
            node_affinity_policy: s("Honor"),
            node_taints_policy: None,
            match_label_keys: v(&["pod-template-hash"]),
        }],
        os: Some(pc::PodOs { name: s("linux") }),
        ..Default::default()
    }
}

fn o_pod_spec() -> oc::PodSpec {
    oc::PodSpec {
        volumes: Some(o_volumes()),
        init_containers: Some(vec![oc::Container {
            name: "init".into(),
            image: s("busybox"),
            ..Default::default()
        }]),
        containers: vec![o_container("main")],
        restart_policy: s("Always"),
        termination_grace_period_seconds: Some(30),
        dns_policy: s("ClusterFirst"),
        node_selector: Some(m(&[("kubernetes.io/os", "linux")])),
        service_account_name: s("sa1"),
        automount_service_account_token: Some(false),
        host_network: Some(true),
        security_context: Some(oc::PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(0),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![3000]),
            sysctls: Some(vec![oc::Sysctl {
                name: "net.core.somaxconn".into(),
                value: "1024".into(),
            }]),
            ..Default::default()
        }),
        image_pull_secrets: Some(vec![oc::LocalObjectReference {
            name: "regcred".into(),
        }]),
        hostname: s("h1"),
        affinity: Some(oc::Affinity {
            node_affinity: Some(oc::NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(oc::NodeSelector {
                    node_selector_terms: vec![oc::NodeSelectorTerm {
                        match_expressions: Some(vec![oc::NodeSelectorRequirement {
                            key: "zone".into(),
                            operator: "In".into(),
                            values: Some(v(&["a", "b"])),
                        }]),
                        match_fields: None,
                    }],
                }),
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    oc::PreferredSchedulingTerm {
                        weight: 10,
                        preference: oc::NodeSelectorTerm {
                            match_expressions: Some(vec![oc::NodeSelectorRequirement {
                                key: "ssd".into(),
                                operator: "Exists".into(),
                                values: None,
                            }]),
                            match_fields: None,
                        },
                    },
                ]),
            }),
            pod_affinity: Some(oc::PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![
                    oc::PodAffinityTerm {
                        label_selector: Some(o_label_selector()),
                        namespaces: Some(v(&["default"])),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                ]),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            pod_anti_affinity: Some(oc::PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: None,
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    oc::WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: oc::PodAffinityTerm {
                            label_selector: Some(ometa::LabelSelector {
                                match_labels: Some(m(&[("app", "web")])),
                                match_expressions: None,
                            }),
                            topology_key: "zone".into(),
                            ..Default::default()
                        },
                    },
                ]),
            }),
        }),
        scheduler_name: s("default-scheduler"),
        tolerations: Some(vec![
            oc::Toleration {
                key: s("node.kubernetes.io/not-ready"),
                operator: s("Exists"),
                value: None,
                effect: s("NoExecute"),
                toleration_seconds: Some(300),
            },
            oc::Toleration {
                key: s("dedicated"),
                operator: s("Equal"),
                value: s("gpu"),
                effect: s("NoSchedule"),
                toleration_seconds: None,
            },
        ]),
        host_aliases: Some(vec![oc::HostAlias {
            ip: "10.0.0.1".into(),
            hostnames: Some(v(&["foo.local"])),
        }]),
        priority_class_name: s("high"),
        priority: Some(0),
        dns_config: Some(oc::PodDNSConfig {
            nameservers: Some(v(&["1.1.1.1"])),
            searches: Some(v(&["svc.cluster.local"])),
            options: Some(vec![oc::PodDNSConfigOption {
                name: s("ndots"),
                value: s("2"),
            }]),
        }),
        readiness_gates: Some(vec![oc::PodReadinessGate {
            condition_type: "example.com/ready".into(),
        }]),
        enable_service_links: Some(false),
        preemption_policy: s("PreemptLowerPriority"),
        overhead: Some([("cpu".to_owned(), oq("10m"))].into()),
        topology_spread_constraints: Some(vec![oc::TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "zone".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            label_selector: Some(o_label_selector()),
            min_domains: Some(2),
            node_affinity_policy: s("Honor"),
            node_taints_policy: None,
            match_label_keys: Some(v(&["pod-template-hash"])),
        }]),
        os: Some(oc::PodOS {
            name: "linux".into(),
        }),
        ..Default::default()
    }
}

#[test]
fn pod_full() {
    let p = pc::Pod {
        metadata: Some(pmeta_full("p1")),
        spec: Some(p_pod_spec()),
        status: None,
    };
    let o = oc::Pod {
        metadata: ometa_full("p1"),
        spec: Some(o_pod_spec()),
        status: None,
    };
    check(&o, &p);
}

// ------------------------------------------------------- simple kinds ----

#[test]
fn configmap() {
    let p = pc::ConfigMap {
        metadata: Some(pmeta_full("c1")),
        immutable: Some(false),
        data: m(&[("a", "b"), ("empty", "")]),
        binary_data: [("bin".to_owned(), vec![0u8, 1, 2, 255])].into(),
    };
    let o = oc::ConfigMap {
        metadata: ometa_full("c1"),
        immutable: Some(false),
        data: Some(m(&[("a", "b"), ("empty", "")])),
        binary_data: Some([("bin".to_owned(), ByteString(vec![0u8, 1, 2, 255]))].into()),
    };
    check(&o, &p);
    let j = decode(&envelope("v1", "ConfigMap", p.encode_to_vec())).unwrap();
    assert_eq!(j["binaryData"]["bin"], "AAEC/w==");
    assert_eq!(j["metadata"]["creationTimestamp"], "2024-01-02T03:04:05Z");
}

#[test]
fn secret() {
    let p = pc::Secret {
        metadata: Some(pmeta_name("s1")),
        immutable: None,
        data: [("pw".to_owned(), b"hunter2".to_vec())].into(),
        string_data: m(&[("user", "bob")]),
        r#type: s("Opaque"),
    };
    let o = oc::Secret {
        metadata: ometa_name("s1"),
        data: Some([("pw".to_owned(), ByteString(b"hunter2".to_vec()))].into()),
        string_data: Some(m(&[("user", "bob")])),
        type_: s("Opaque"),
        ..Default::default()
    };
    check(&o, &p);
}

#[test]
fn namespace_and_serviceaccount() {
    let p = pc::Namespace {
        metadata: Some(pmeta_name("n1")),
        spec: Some(pc::NamespaceSpec {
            finalizers: v(&["kubernetes"]),
        }),
        status: None,
    };
    let o = oc::Namespace {
        metadata: ometa_name("n1"),
        spec: Some(oc::NamespaceSpec {
            finalizers: Some(v(&["kubernetes"])),
        }),
        status: None,
    };
    check(&o, &p);

    let p = pc::ServiceAccount {
        metadata: Some(pmeta_full("sa1")),
        secrets: vec![pc::ObjectReference {
            name: s("tok"),
            kind: s("Secret"),
            ..Default::default()
        }],
        image_pull_secrets: vec![pc::LocalObjectReference { name: s("regcred") }],
        automount_service_account_token: Some(false),
    };
    let o = oc::ServiceAccount {
        metadata: ometa_full("sa1"),
        secrets: Some(vec![oc::ObjectReference {
            name: s("tok"),
            kind: s("Secret"),
            ..Default::default()
        }]),
        image_pull_secrets: Some(vec![oc::LocalObjectReference {
            name: "regcred".into(),
        }]),
        automount_service_account_token: Some(false),
    };
    check(&o, &p);
}

#[test]
fn service() {
    let p = pc::Service {
        metadata: Some(pmeta_name("svc1")),
        spec: Some(pc::ServiceSpec {
            ports: vec![
                pc::ServicePort {
                    name: s("http"),
                    protocol: s("TCP"),
                    app_protocol: None,
                    port: Some(80),
                    target_port: Some(pios_int(8080)),
                    node_port: Some(0),
                },
                pc::ServicePort {
                    name: s("metrics"),
                    protocol: s("TCP"),
                    app_protocol: s("http"),
                    port: Some(9090),
                    target_port: Some(pios_str("metrics")),
                    node_port: Some(30090),
                },
            ],
            selector: m(&[("app", "web")]),
            cluster_ip: s("10.43.0.10"),
            cluster_ips: v(&["10.43.0.10"]),
            r#type: s("NodePort"),
            external_ips: vec![],
            session_affinity: s("ClientIP"),
            session_affinity_config: Some(pc::SessionAffinityConfig {
                client_ip: Some(pc::ClientIpConfig {
                    timeout_seconds: Some(600),
                }),
            }),
            external_traffic_policy: s("Local"),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            ip_families: v(&["IPv4"]),
            ip_family_policy: s("SingleStack"),
            allocate_load_balancer_node_ports: None,
            internal_traffic_policy: s("Cluster"),
            ..Default::default()
        }),
        status: None,
    };
    let o = oc::Service {
        metadata: ometa_name("svc1"),
        spec: Some(oc::ServiceSpec {
            ports: Some(vec![
                oc::ServicePort {
                    name: s("http"),
                    protocol: s("TCP"),
                    port: 80,
                    target_port: Some(OIos::Int(8080)),
                    ..Default::default()
                },
                oc::ServicePort {
                    name: s("metrics"),
                    protocol: s("TCP"),
                    app_protocol: s("http"),
                    port: 9090,
                    target_port: Some(OIos::String("metrics".into())),
                    node_port: Some(30090),
                },
            ]),
            selector: Some(m(&[("app", "web")])),
            cluster_ip: s("10.43.0.10"),
            cluster_ips: Some(v(&["10.43.0.10"])),
            type_: s("NodePort"),
            session_affinity: s("ClientIP"),
            session_affinity_config: Some(oc::SessionAffinityConfig {
                client_ip: Some(oc::ClientIPConfig {
                    timeout_seconds: Some(600),
                }),
            }),
            external_traffic_policy: s("Local"),
            ip_families: Some(v(&["IPv4"])),
            ip_family_policy: s("SingleStack"),
            internal_traffic_policy: s("Cluster"),
            ..Default::default()
        }),
        status: None,
    };
    check(&o, &p);
}

// ------------------------------------------------------------ apps/v1 ----

fn p_template() -> pc::PodTemplateSpec {
    pc::PodTemplateSpec {
        metadata: Some(pmeta::ObjectMeta {
            labels: m(&[("app", "web")]),
            creation_timestamp: Some(ptime(-62_135_596_800)),
            ..Default::default()
        }),
        spec: Some(p_pod_spec()),
    }
}
fn o_template() -> oc::PodTemplateSpec {
    oc::PodTemplateSpec {
        metadata: Some(ometa::ObjectMeta {
            labels: Some(m(&[("app", "web")])),
            ..Default::default()
        }),
        spec: Some(o_pod_spec()),
    }
}

#[test]
fn deployment() {
    let p = papps::Deployment {
        metadata: Some(pmeta_full("web")),
        spec: Some(papps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(p_label_selector()),
            template: Some(p_template()),
            strategy: Some(papps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(papps::RollingUpdateDeployment {
                    max_unavailable: Some(pios_str("25%")),
                    max_surge: Some(pios_int(1)),
                }),
            }),
            min_ready_seconds: Some(0),
            revision_history_limit: Some(10),
            paused: Some(false),
            progress_deadline_seconds: Some(600),
        }),
        status: None,
    };
    let o = oapps::Deployment {
        metadata: ometa_full("web"),
        spec: Some(oapps::DeploymentSpec {
            replicas: Some(0),
            selector: o_label_selector(),
            template: o_template(),
            strategy: Some(oapps::DeploymentStrategy {
                type_: s("RollingUpdate"),
                rolling_update: Some(oapps::RollingUpdateDeployment {
                    max_unavailable: Some(OIos::String("25%".into())),
                    max_surge: Some(OIos::Int(1)),
                }),
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        }),
        status: None,
    };
    check(&o, &p);
}

#[test]
fn replicaset_daemonset_statefulset() {
    let p = papps::ReplicaSet {
        metadata: Some(pmeta_full("rs")),
        spec: Some(papps::ReplicaSetSpec {
            replicas: Some(3),
            min_ready_seconds: Some(5),
            selector: Some(p_label_selector()),
            template: Some(p_template()),
        }),
        status: None,
    };
    let o = oapps::ReplicaSet {
        metadata: ometa_full("rs"),
        spec: Some(oapps::ReplicaSetSpec {
            replicas: Some(3),
            min_ready_seconds: Some(5),
            selector: o_label_selector(),
            template: Some(o_template()),
        }),
        status: None,
    };
    check(&o, &p);

    let p = papps::DaemonSet {
        metadata: Some(pmeta_name("ds")),
        spec: Some(papps::DaemonSetSpec {
            selector: Some(p_label_selector()),
            template: Some(p_template()),
            update_strategy: Some(papps::DaemonSetUpdateStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(papps::RollingUpdateDaemonSet {
                    max_unavailable: Some(pios_int(1)),
                    max_surge: Some(pios_int(0)),
                }),
            }),
            min_ready_seconds: Some(0),
            revision_history_limit: Some(0),
        }),
        status: None,
    };
    let o = oapps::DaemonSet {
        metadata: ometa_name("ds"),
        spec: Some(oapps::DaemonSetSpec {
            selector: o_label_selector(),
            template: o_template(),
            update_strategy: Some(oapps::DaemonSetUpdateStrategy {
                type_: s("RollingUpdate"),
                rolling_update: Some(oapps::RollingUpdateDaemonSet {
                    max_unavailable: Some(OIos::Int(1)),
                    max_surge: Some(OIos::Int(0)),
                }),
            }),
            revision_history_limit: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    check(&o, &p);

    let p = papps::StatefulSet {
        metadata: Some(pmeta_name("db")),
        spec: Some(papps::StatefulSetSpec {
            replicas: Some(2),
            selector: Some(p_label_selector()),
            template: Some(p_template()),
            volume_claim_templates: vec![pc::PersistentVolumeClaim {
                metadata: Some(pmeta::ObjectMeta {
                    name: s("data"),
                    ..Default::default()
                }),
                spec: Some(pc::PersistentVolumeClaimSpec {
                    access_modes: v(&["ReadWriteOnce"]),
                    resources: Some(pc::VolumeResourceRequirements {
                        limits: Default::default(),
                        requests: [("storage".to_owned(), pq("1Gi"))].into(),
                    }),
                    storage_class_name: s(""),
                    ..Default::default()
                }),
                status: None,
            }],
            service_name: s("db"),
            pod_management_policy: s("Parallel"),
            update_strategy: Some(papps::StatefulSetUpdateStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(papps::RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            revision_history_limit: Some(5),
            min_ready_seconds: Some(0),
            persistent_volume_claim_retention_policy: Some(
                papps::StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: s("Retain"),
                    when_scaled: s("Delete"),
                },
            ),
            ordinals: Some(papps::StatefulSetOrdinals { start: Some(1) }),
        }),
        status: None,
    };
    let o = oapps::StatefulSet {
        metadata: ometa_name("db"),
        spec: Some(oapps::StatefulSetSpec {
            replicas: Some(2),
            selector: o_label_selector(),
            template: o_template(),
            volume_claim_templates: Some(vec![oc::PersistentVolumeClaim {
                metadata: ometa::ObjectMeta {
                    name: s("data"),
                    ..Default::default()
                },
                spec: Some(oc::PersistentVolumeClaimSpec {
                    access_modes: Some(v(&["ReadWriteOnce"])),
                    resources: Some(oc::VolumeResourceRequirements {
                        limits: None,
                        requests: Some([("storage".to_owned(), oq("1Gi"))].into()),
                    }),
                    storage_class_name: s(""),
                    ..Default::default()
                }),
                status: None,
            }]),
            service_name: s("db"),
            pod_management_policy: s("Parallel"),
            update_strategy: Some(oapps::StatefulSetUpdateStrategy {
                type_: s("RollingUpdate"),
                rolling_update: Some(oapps::RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            revision_history_limit: Some(5),
            persistent_volume_claim_retention_policy: Some(
                oapps::StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: s("Retain"),
                    when_scaled: s("Delete"),
                },
            ),
            ordinals: Some(oapps::StatefulSetOrdinals { start: Some(1) }),
            ..Default::default()
        }),
        status: None,
    };
    // k8s-openapi prints apiVersion/kind on the embedded PVC; Go's protobuf
    // form has no TypeMeta there, so Go (and we) print none.
    check_with(&o, &p, |j| {
        let t = j["spec"]["volumeClaimTemplates"][0]
            .as_object_mut()
            .unwrap();
        t.remove("apiVersion");
        t.remove("kind");
    });
}

// ----------------------------------------------------------- batch/v1 ----

fn p_job_spec() -> pbatch::JobSpec {
    let mut tpl = p_template();
    tpl.spec.as_mut().unwrap().restart_policy = s("Never");
    pbatch::JobSpec {
        parallelism: Some(2),
        completions: Some(4),
        active_deadline_seconds: Some(600),
        backoff_limit: Some(0),
        selector: None,
        manual_selector: None,
        template: Some(tpl),
        ttl_seconds_after_finished: Some(0),
        completion_mode: s("Indexed"),
        suspend: Some(false),
        pod_failure_policy: Some(pbatch::PodFailurePolicy {
            rules: vec![pbatch::PodFailurePolicyRule {
                action: s("FailJob"),
                on_exit_codes: Some(pbatch::PodFailurePolicyOnExitCodesRequirement {
                    container_name: s("main"),
                    operator: s("In"),
                    values: vec![42],
                }),
                on_pod_conditions: vec![],
            }],
        }),
        ..Default::default()
    }
}
fn o_job_spec() -> obatch::JobSpec {
    let mut tpl = o_template();
    tpl.spec.as_mut().unwrap().restart_policy = s("Never");
    obatch::JobSpec {
        parallelism: Some(2),
        completions: Some(4),
        active_deadline_seconds: Some(600),
        backoff_limit: Some(0),
        template: tpl,
        ttl_seconds_after_finished: Some(0),
        completion_mode: s("Indexed"),
        suspend: Some(false),
        pod_failure_policy: Some(obatch::PodFailurePolicy {
            rules: vec![obatch::PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(obatch::PodFailurePolicyOnExitCodesRequirement {
                    container_name: s("main"),
                    operator: "In".into(),
                    values: vec![42],
                }),
                on_pod_conditions: None,
            }],
        }),
        ..Default::default()
    }
}

#[test]
fn job_and_cronjob() {
    let p = pbatch::Job {
        metadata: Some(pmeta_full("j1")),
        spec: Some(p_job_spec()),
        status: None,
    };
    let o = obatch::Job {
        metadata: ometa_full("j1"),
        spec: Some(o_job_spec()),
        status: None,
    };
    check(&o, &p);

    let p = pbatch::CronJob {
        metadata: Some(pmeta_name("cj")),
        spec: Some(pbatch::CronJobSpec {
            schedule: s("*/5 * * * *"),
            time_zone: s("Etc/UTC"),
            starting_deadline_seconds: Some(0),
            concurrency_policy: s("Forbid"),
            suspend: Some(true),
            job_template: Some(pbatch::JobTemplateSpec {
                metadata: Some(pmeta::ObjectMeta {
                    name: s("cj"),
                    ..Default::default()
                }),
                spec: Some(p_job_spec()),
            }),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(0),
        }),
        status: None,
    };
    let o = obatch::CronJob {
        metadata: ometa_name("cj"),
        spec: Some(obatch::CronJobSpec {
            schedule: "*/5 * * * *".into(),
            time_zone: s("Etc/UTC"),
            starting_deadline_seconds: Some(0),
            concurrency_policy: s("Forbid"),
            suspend: Some(true),
            job_template: obatch::JobTemplateSpec {
                metadata: Some(ometa::ObjectMeta {
                    name: s("cj"),
                    ..Default::default()
                }),
                spec: Some(o_job_spec()),
            },
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(0),
        }),
        status: None,
    };
    check(&o, &p);
}

// ------------------------------------------------------------- others ----

#[test]
fn lease_with_micro_time() {
    let p = pcoord::Lease {
        metadata: Some(pmeta_name("node1")),
        spec: Some(pcoord::LeaseSpec {
            holder_identity: s("node1"),
            lease_duration_seconds: Some(40),
            acquire_time: Some(pmeta::MicroTime {
                seconds: Some(T0),
                nanos: Some(123_456_000),
            }),
            renew_time: Some(pmeta::MicroTime {
                seconds: Some(T0 + 10),
                nanos: Some(0),
            }),
            lease_transitions: Some(0),
            strategy: None,
            preferred_holder: None,
        }),
    };
    let o = ocoord::Lease {
        metadata: ometa_name("node1"),
        spec: Some(ocoord::LeaseSpec {
            holder_identity: s("node1"),
            lease_duration_seconds: Some(40),
            acquire_time: Some(ometa::MicroTime(
                jiff::Timestamp::new(T0, 123_456_000).unwrap(),
            )),
            renew_time: Some(ometa::MicroTime(
                jiff::Timestamp::from_second(T0 + 10).unwrap(),
            )),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    check(&o, &p);
    let j = decode(&envelope(
        "coordination.k8s.io/v1",
        "Lease",
        p.encode_to_vec(),
    ))
    .unwrap();
    assert_eq!(j["spec"]["acquireTime"], "2024-01-02T03:04:05.123456Z");
    assert_eq!(j["spec"]["renewTime"], "2024-01-02T03:04:15.000000Z");
}

#[test]
fn core_event() {
    let p = pc::Event {
        metadata: Some(pmeta_name("ev1")),
        involved_object: Some(pc::ObjectReference {
            kind: s("Pod"),
            namespace: s("default"),
            name: s("p1"),
            uid: s("u"),
            api_version: s("v1"),
            resource_version: s("12"),
            field_path: s(""),
        }),
        reason: s("Started"),
        message: s("Started container"),
        source: Some(pc::EventSource {
            component: s("kubelet"),
            host: s("node1"),
        }),
        first_timestamp: Some(ptime(T0)),
        last_timestamp: Some(ptime(T0 + 60)),
        count: Some(2),
        r#type: s("Normal"),
        event_time: None,
        reporting_component: s("kubelet"),
        reporting_instance: s("node1"),
        ..Default::default()
    };
    let o = oc::Event {
        metadata: ometa_name("ev1"),
        involved_object: oc::ObjectReference {
            kind: s("Pod"),
            namespace: s("default"),
            name: s("p1"),
            uid: s("u"),
            api_version: s("v1"),
            resource_version: s("12"),
            field_path: None,
        },
        reason: s("Started"),
        message: s("Started container"),
        source: Some(oc::EventSource {
            component: s("kubelet"),
            host: s("node1"),
        }),
        first_timestamp: Some(otime(T0)),
        last_timestamp: Some(otime(T0 + 60)),
        count: Some(2),
        type_: s("Normal"),
        reporting_component: s("kubelet"),
        reporting_instance: s("node1"),
        ..Default::default()
    };
    check(&o, &p);
}

// ------------------------------------------------------------- errors ----

#[test]
fn errors() {
    assert!(matches!(
        decode(b"{\"kind\":\"Pod\"}"),
        Err(ProtoError::BadMagic)
    ));
    assert!(matches!(decode(b"k8s"), Err(ProtoError::BadMagic)));
    assert!(matches!(
        decode(b"k8s\0\xff\xff\xff"),
        Err(ProtoError::Envelope(_))
    ));
    assert!(matches!(decode(b"k8s\0"), Err(ProtoError::MissingTypeMeta)));
    let e = decode(&envelope("example.com/v1", "Widget", vec![])).unwrap_err();
    assert!(
        matches!(&e, ProtoError::UnsupportedKind { api_version, kind }
        if api_version == "example.com/v1" && kind == "Widget")
    );
    assert!(e.to_string().contains("Widget"), "{e}");
    let e = decode(&envelope("v1", "ConfigMap", vec![0x0a, 0x05, 0x01])).unwrap_err();
    assert!(matches!(e, ProtoError::Body { .. }), "{e}");
    assert!(e.to_string().contains("ConfigMap"));
    assert!(is_supported("apps/v1", "Deployment"));
    assert!(!is_supported("apps/v1", "Widget"));
    assert!(!is_supported("v1", "Deployment"));
}

#[test]
fn every_supported_kind_decodes_an_empty_object() {
    for (av, kind) in rke2_kubeproto::supported_kinds() {
        let j = decode(&envelope(av, kind, vec![])).unwrap();
        assert_eq!(j["kind"], *kind);
        assert_eq!(j["apiVersion"], *av);
    }
}
