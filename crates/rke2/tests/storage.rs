//! Volumes that persist, on a two-host bed (one server, one agent, real
//! containerd and kubectl): the default StorageClass `local-path`; a claim
//! that waits for its first consumer, then is bound to a volume made on
//! that pod's node; data that outlives the pod (a second pod, placed by
//! the volume's node affinity, reads it); `subPath`, `subPathExpr` and
//! `fsGroup` seen from inside the container; `kubectl get pv,pvc,sc`
//! columns; bad input refused with upstream's messages; and a deleted
//! claim whose volume is released and whose directory is removed on its
//! node.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs two nodes, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);

const NS: &str = "store";

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn kubectl_stdin(k: &Path, kubeconfig: &Path, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("kubectl output")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The lines of a kubectl table with runs of spaces made one.
fn rows(o: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn phase_of_pv(v: &PersistentVolume) -> String {
    v.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn pod_phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// A pod of the busybox image using claim `data`.
fn user_pod(name: &str, node_selector: Option<&str>) -> Pod {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
        "containers": [{
            "name": "app",
            "image": TEST_BUSYBOX_IMAGE,
            "command": ["sh", "-c", "sleep 3600"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/sub", "subPath": "sub"},
                {"name": "data", "mountPath": "/mine", "subPathExpr": "per-pod/$(POD_NAME)"},
                {"name": "data", "mountPath": "/ro", "readOnly": true}
            ]
        }],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    });
    if let Some(n) = node_selector {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": n});
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": NS}, "spec": spec}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_volumes_persist_and_are_reclaimed() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let ha = bed.add_host("a1").unwrap();
    let storage = bed.dir().join("local-storage");
    let common = format!("token: storage-secret\npause-image: {TEST_PAUSE_IMAGE}\n");
    let server_cfg = format!(
        "{common}default-local-storage-path: {}\ndisable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n",
        storage.display()
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &server_cfg, &[]).unwrap();
    let agent_cfg = format!("server: https://{}:9345\n{common}", hs.ip);
    let mut a1 = NodeProc::new(&bed, bin(), &ha, "agent", &agent_cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    rke2_testbed::seed_images(&a1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc_path = s1.dir.join("rke2.yaml");
    eventually(LONG, "server kubeconfig", || async {
        kc_path.exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubeconfig = s1.kubeconfig_at_ip().unwrap();
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await
    .unwrap();
    a1.start(&bed).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "two Ready nodes", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();

    // The default class, as k3s ships it, with upstream's columns.
    let sc = eventually(LONG, "the local-path StorageClass", || async {
        let o = kubectl(&k, &kubeconfig, &["get", "sc"]);
        let r = rows(&o);
        (r.len() == 2).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(
        sc[0],
        "NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE"
    );
    assert!(
        sc[1].starts_with(
            "local-path (default) rancher.io/local-path Delete WaitForFirstConsumer false "
        ),
        "{sc:?}"
    );
    // Its provisioner is fixed.
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "patch",
            "sc",
            "local-path",
            "-p",
            r#"{"reclaimPolicy":"Retain"}"#,
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden."),
        "{}",
        text(&o)
    );

    let o = kubectl(&k, &kubeconfig, &["create", "namespace", NS]);
    assert!(o.status.success(), "{}", text(&o));

    // Bad input: a claim without a storage request.
    let bad = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"]}});
    let o = kubectl_stdin(&k, &kubeconfig, &["apply", "-f", "-"], &bad.to_string());
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            r#"PersistentVolumeClaim "bad" is invalid: spec.resources[storage]: Required value"#
        ),
        "{}",
        text(&o)
    );

    // A claim naming no class gets the default one and waits for a pod.
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    let o = kubectl_stdin(&k, &kubeconfig, &["apply", "-f", "-"], &claim.to_string());
    assert!(o.status.success(), "{}", text(&o));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let c = claims.get("data").await.unwrap();
    assert_eq!(
        c.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("local-path")
    );
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    eventually(LONG, "a WaitForFirstConsumer event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("WaitForFirstConsumer")
                    && e.involved_object.name.as_deref() == Some("data")
            })
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    assert_eq!(
        phase_of_claim(&claims.get("data").await.unwrap()),
        "Pending"
    );
    assert!(
        pvs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let o = kubectl(&k, &kubeconfig, &["get", "pvc", "-n", NS]);
    assert_eq!(
        rows(&o)[0],
        "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE"
    );
    assert!(
        rows(&o)[1].starts_with("data Pending local-path <unset> "),
        "{:?}",
        rows(&o)
    );

    // The first consumer, pinned to the agent: the claim is bound to a
    // volume made there.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &user_pod("writer", Some("a1")))
        .await
        .unwrap();
    eventually(LONG, "the writer Running", || async {
        (pod_phase(&pods.get("writer").await.ok()?) == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver:\n{}\nagent:\n{}", s1.log(), a1.log()));
    let c = claims.get("data").await.unwrap();
    assert_eq!(phase_of_claim(&c), "Bound");
    let uid = c.metadata.uid.clone().unwrap();
    let pv_name = format!("pvc-{uid}");
    assert_eq!(
        c.spec.as_ref().unwrap().volume_name.as_deref(),
        Some(pv_name.as_str())
    );
    let ann = c.metadata.annotations.clone().unwrap();
    assert_eq!(ann["pv.kubernetes.io/bind-completed"], "yes");
    assert_eq!(ann["volume.kubernetes.io/selected-node"], "a1");
    assert_eq!(
        ann["volume.kubernetes.io/storage-provisioner"],
        "rancher.io/local-path"
    );
    let pv = pvs.get(&pv_name).await.unwrap();
    let pv_json = serde_json::to_value(&pv).unwrap();
    assert_eq!(
        pv_json["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"],
        json!(["a1"])
    );
    assert_eq!(pv_json["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv_json["status"]["phase"], "Bound");
    let dir = storage.join(format!("pvc-{uid}_{NS}_data"));
    assert_eq!(
        pv_json["spec"]["hostPath"]["path"],
        dir.to_string_lossy().as_ref()
    );

    // Inside the container: the user's groups include the fsGroup, the
    // volume belongs to it (setgid), and sub paths land in the volume.
    let exec = |args: &[&str]| {
        let mut a = vec!["exec", "-n", NS, "writer", "--"];
        a.extend_from_slice(args);
        kubectl(&k, &kubeconfig, &a)
    };
    let o = exec(&[
        "sh",
        "-c",
        "id -G; stat -c '%g %A' /data; echo hello > /data/file && echo s > /sub/in-sub && echo m > /mine/in-mine && echo $?",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].split(' ').any(|g| g == "2000"), "groups: {out}");
    assert!(lines[0].split(' ').any(|g| g == "3000"), "groups: {out}");
    assert!(lines[1].starts_with("2000 drwxrws"), "volume root: {out}");
    assert_eq!(lines[2], "0", "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/in-sub")).unwrap(),
        "s\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("per-pod/writer/in-mine")).unwrap(),
        "m\n"
    );
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(dir.join("file")).unwrap().gid(), 2000);
    }
    let o = exec(&["sh", "-c", "echo x > /ro/nope"]);
    assert!(!o.status.success(), "a readOnly mount refuses writes");

    // Columns of all three.
    let o = kubectl(&k, &kubeconfig, &["get", "pv,pvc", "-n", NS]);
    let r = rows(&o);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        r[0],
        "NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS VOLUMEATTRIBUTESCLASS REASON AGE"
    );
    assert!(
        r[1].starts_with(&format!(
            "persistentvolume/{pv_name} 1Gi RWO Delete Bound {NS}/data local-path <unset> "
        )),
        "{r:?}"
    );
    let pvc_header = r.iter().position(|l| l.starts_with("NAME STATUS")).unwrap();
    assert!(
        r[pvc_header + 1].starts_with(&format!(
            "persistentvolumeclaim/data Bound {pv_name} 1Gi RWO local-path <unset> "
        )),
        "{r:?}"
    );

    // Bad input: a class without allowVolumeExpansion refuses growth.
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "patch",
            "pvc",
            "data",
            "-n",
            NS,
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains(r#"persistentvolumeclaims "data" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"#),
        "{}",
        text(&o)
    );
    // And the spec is otherwise fixed.
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "patch",
            "pvc",
            "data",
            "-n",
            NS,
            "-p",
            r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("spec is immutable after creation"),
        "{}",
        text(&o)
    );

    // The data outlives its pod; the next pod, placed by the scheduler
    // alone, goes where the volume is.
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
    eventually(LONG, "the writer gone", || async {
        pods.get_opt("writer").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    pods.create(&PostParams::default(), &user_pod("reader", None))
        .await
        .unwrap();
    eventually(LONG, "the reader Running", || async {
        (pod_phase(&pods.get("reader").await.ok()?) == "Running").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", a1.log()));
    let reader = pods.get("reader").await.unwrap();
    assert_eq!(
        reader.spec.as_ref().unwrap().node_name.as_deref(),
        Some("a1"),
        "the volume's node affinity places the pod"
    );
    let o = kubectl(
        &k,
        &kubeconfig,
        &["exec", "-n", NS, "reader", "--", "cat", "/data/file"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello\n",
        "{}",
        text(&o)
    );

    // A pod that must run elsewhere cannot have the volume: upstream's
    // message names the conflict.
    let mut misplaced = user_pod("misplaced", Some("s1"));
    misplaced.spec.as_mut().unwrap().containers[0].command = Some(vec!["true".to_string()]);
    pods.create(&PostParams::default(), &misplaced)
        .await
        .unwrap();
    let why = eventually(LONG, "the misplaced pod Unschedulable", || async {
        let p = pods.get("misplaced").await.ok()?;
        let c = p
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        c.message
    })
    .await
    .unwrap();
    assert_eq!(
        why,
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had volume node affinity conflict. preemption: 0/2 nodes are available: \
         2 Preemption is not helpful for scheduling."
    );
    pods.delete("misplaced", &DeleteParams::default())
        .await
        .unwrap();
    eventually(LONG, "the misplaced pod gone", || async {
        pods.get_opt("misplaced")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();

    // A claim a pod still uses is only marked for deletion
    // (kubernetes.io/pvc-protection): the data stays under the pod.
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    let c = claims.get("data").await.unwrap();
    assert!(c.metadata.deletion_timestamp.is_some());
    let o = kubectl(
        &k,
        &kubeconfig,
        &["get", "pvc", "data", "-n", NS, "--no-headers"],
    );
    assert!(rows(&o)[0].starts_with("data Terminating "), "{}", text(&o));
    let o = kubectl(
        &k,
        &kubeconfig,
        &["exec", "-n", NS, "reader", "--", "cat", "/data/file"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello\n",
        "{}",
        text(&o)
    );
    assert!(dir.join("file").exists());

    // Once the pod is gone the claim goes, the volume is released, and
    // reclaim Delete removes its directory on its node, then the volume.
    pods.delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    let reclaimed = eventually(
        LONG * 2,
        "the volume deleted and its directory gone",
        || async {
            let gone = pvs.get_opt(&pv_name).await.ok()?.is_none();
            (gone && !dir.exists()).then_some(())
        },
    )
    .await;
    if let Err(e) = reclaimed {
        let pv = pvs.get_opt(&pv_name).await;
        panic!(
            "{e}: pv {pv:?}, dir exists {}\nserver:\n{}\nagent:\n{}",
            dir.exists(),
            s1.log(),
            a1.log()
        );
    }
    // The helper pod is cleaned up too.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    eventually(LONG, "no helper pods left", || async {
        let list = system.list(&ListParams::default()).await.ok()?;
        (!list.items.iter().any(|p| {
            p.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("helper-pod-delete-")
        }))
        .then_some(())
    })
    .await
    .unwrap();

    // A volume made by hand binds to a claim that fits it (the smallest
    // fitting one, Immediate: no class object), and Retain keeps it
    // Released after its claim is gone.
    let manual_dir = bed.dir().join("manual-volume");
    for (name, size) in [("manual-big", "5Gi"), ("manual-small", "2Gi")] {
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "manual",
                "hostPath": {"path": manual_dir.join(name).to_string_lossy()}}});
        let o = kubectl_stdin(&k, &kubeconfig, &["apply", "-f", "-"], &pv.to_string());
        assert!(o.status.success(), "{}", text(&o));
    }
    let manual = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "manual", "namespace": NS},
        "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}});
    let o = kubectl_stdin(&k, &kubeconfig, &["apply", "-f", "-"], &manual.to_string());
    assert!(o.status.success(), "{}", text(&o));
    let bound = eventually(LONG, "the manual claim Bound", || async {
        let c = claims.get("manual").await.ok()?;
        (phase_of_claim(&c) == "Bound").then_some(c)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(
        bound.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("manual-small")
    );
    assert_eq!(
        bound.status.as_ref().unwrap().capacity.as_ref().unwrap()["storage"].0,
        "2Gi"
    );
    let pv = pvs.get("manual-small").await.unwrap();
    assert!(
        pv.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == "kubernetes.io/pv-protection")),
        "{pv:?}"
    );
    claims
        .delete("manual", &DeleteParams::default())
        .await
        .unwrap();
    eventually(LONG, "the manual volume Released", || async {
        let pv = pvs.get("manual-small").await.ok()?;
        (pv.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let o = kubectl(
        &k,
        &kubeconfig,
        &["get", "pv", "manual-small", "--no-headers"],
    );
    assert!(
        rows(&o)[0].starts_with(&format!(
            "manual-small 2Gi RWO Retain Released {NS}/manual manual <unset> "
        )),
        "{}",
        text(&o)
    );
    assert_eq!(
        phase_of_pv(&pvs.get("manual-big").await.unwrap()),
        "Available"
    );
    for name in ["manual-big", "manual-small"] {
        pvs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(LONG, "the manual volumes deleted", || async {
        let list = pvs.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await
    .unwrap();

    let o = kubectl(
        &k,
        &kubeconfig,
        &["delete", "namespace", NS, "--wait=false"],
    );
    assert!(o.status.success(), "{}", text(&o));
    drop(bed);
}
