//! In-place pod resize on a real node (one server in its own network
//! namespace, real containerd, newest kubectl): `kubectl patch
//! --subresource resize` raising a container's memory limit reaches the
//! container's cgroup (read from the host's cgroupfs) with no restart and
//! shows in `status.containerStatuses[].resources`/`allocatedResources`
//! and `observedGeneration`; a plain update of resources keeps upstream's
//! refusal; a resize beyond the node's allocatable is
//! `PodResizePending`/`Infeasible` with kubelet's message and changes
//! nothing; one over a ResourceQuota is refused with the 403 quota
//! message.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

const LONG: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_in_place() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: resize-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n  - rke2-coredns\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
    s1.start(&bed).unwrap();
    let kc = s1.dir.join("rke2.yaml");
    eventually(LONG, "kubeconfig", || async { kc.exists().then_some(()) })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let kubeconfig = s1.kubeconfig_at_ip().unwrap();
    let client = eventually(LONG, "API client", || async {
        rke2_testbed::client_from_kubeconfig(&kubeconfig).await.ok()
    })
    .await
    .unwrap();
    // Pods are refused until the controllers made the namespace's
    // default service account.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    eventually(LONG, "the default service account", || async {
        accounts.get_opt("default").await.ok()?
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    in_place_resize(&client, &kubeconfig, &s1).await;
}

/// The cgroup memory limit of container `id` of pod `uid`, read from the
/// host's cgroupfs (cgroup v1 or v2, the cgroupfs driver's layout).
fn memory_limit(uid: &str, id: &str) -> Option<String> {
    [
        format!("/sys/fs/cgroup/memory/kubepods/pod{uid}/{id}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/kubepods/pod{uid}/{id}/memory.max"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| s.trim().to_string())
}

fn condition(p: &Pod, t: &str) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
}

/// In-place resize (`kubectl patch --subresource resize`, newest kubectl):
/// a raised memory limit reaches the container's cgroup without a
/// restart and shows in the status; a plain update of resources keeps
/// upstream's refusal; a resize beyond the node is `Infeasible`; one over
/// a ResourceQuota is refused with the 403 quota message.
async fn in_place_resize(client: &kube::Client, kubeconfig: &Path, s1: &NodeProc) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (_, k) = rke2_testbed::kubectls().unwrap().pop().unwrap();
    let kubectl = |args: &[&str]| {
        std::process::Command::new(&k)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .unwrap()
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "resize"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sleep", "3600"],
            "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                          "limits": {"cpu": "500m", "memory": "64Mi"}}}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let running_id = |p: &Pod| {
        let cs = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .clone();
        cs.state.as_ref()?.running.as_ref()?;
        Some(
            cs.container_id?
                .trim_start_matches("containerd://")
                .to_string(),
        )
    };
    let id = eventually(
        LONG,
        "the resize pod running with its resources reported",
        || async {
            let p = pods.get("resize").await.ok()?;
            let cs = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .clone();
            cs.resources.as_ref()?;
            running_id(&p)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(memory_limit(&uid, &id).as_deref(), Some("67108864"));

    // A plain update may not change resources: upstream's message.
    let o = kubectl(&[
        "patch",
        "pod",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":"128Mi"}}}]}}"#,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("pod updates may not change fields other than"),
        "{err}"
    );

    // Through the resize subresource: applied in place.
    let o = kubectl(&[
        "patch",
        "pod",
        "resize",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":"128Mi"}}}]}}"#,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eventually(LONG, "memory limit raised in the cgroup", || async {
        (memory_limit(&uid, &id).as_deref() == Some("134217728")).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let p = eventually(LONG, "status shows the resize done", || async {
        let p = pods.get("resize").await.ok()?;
        let cs = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .clone();
        let lim = cs
            .resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("memory")?
            .0
            .clone();
        let done = lim == "128Mi"
            && condition(&p, "PodResizeInProgress").is_none()
            && p.status.as_ref()?.observed_generation == p.metadata.generation;
        done.then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(p.metadata.generation, Some(2));
    let cs = p.status.unwrap().container_statuses.unwrap()[0].clone();
    assert_eq!(cs.restart_count, 0, "resized without a restart");
    assert_eq!(
        running_id(&pods.get("resize").await.unwrap()).as_deref(),
        Some(id.as_str())
    );
    assert_eq!(cs.allocated_resources.unwrap()["memory"].0, "32Mi");

    // Beyond the node's allocatable: pending, Infeasible, nothing applied.
    let o = kubectl(&[
        "patch",
        "pod",
        "resize",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"memory":"100Ti"},"limits":{"memory":"100Ti"}}}]}}"#,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = eventually(LONG, "PodResizePending Infeasible", || async {
        condition(&pods.get("resize").await.ok()?, "PodResizePending")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    assert_eq!(c.status, "True");
    assert_eq!(c.reason.as_deref(), Some("Infeasible"));
    assert!(
        c.message.as_deref().unwrap_or("").starts_with(
            "Node didn't have enough capacity: memory, requested: 109951162777600, capacity: "
        ),
        "{c:?}"
    );
    assert_eq!(memory_limit(&uid, &id).as_deref(), Some("134217728"));

    // Over a quota: kube-apiserver's 403.
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), "default");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cpu"},
                "spec": {"hard": {"requests.cpu": "1"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    eventually(LONG, "the quota's usage counted", || async {
        let q = quotas.get("cpu").await.ok()?;
        (q.status?.used?.get("requests.cpu")?.0 == "100m").then_some(())
    })
    .await
    .unwrap();
    let o = kubectl(&[
        "patch",
        "pod",
        "resize",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"1500m"},"limits":{"cpu":"2"}}}]}}"#,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("pods \"resize\" is forbidden: exceeded quota: cpu, requested: requests.cpu=1400m, used: requests.cpu=100m, limited: requests.cpu=1"),
        "{err}"
    );
    quotas.delete("cpu", &Default::default()).await.unwrap();
    pods.delete("resize", &Default::default()).await.unwrap();
}
