//! The workload loops against a real server: DaemonSet, Job, garbage
//! collector, ServiceAccount and taint eviction.
//!
//! The loops run in-process with the admin client, as API clients like any
//! other, after the test took the controllers Lease from the server (see
//! [`take_over_controllers`]). Nodes are fake (created through the API, Ready, their Leases
//! renewed by a fake kubelet task); nothing runs their pods, so the test
//! moves pods to Running/Succeeded/Ready with status patches where a
//! kubelet would, and deletes gracefully deleted pods with grace 0 as a
//! kubelet does once their containers stopped. Every wait polls the API
//! for the expected state.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rke2_controllers::{daemonset, garbage_collector, job, serviceaccount, taint_eviction};
use rke2_testbed::{Server, ServerOpts, eventually, fake_node};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(90);
const WITHIN: Duration = Duration::from_secs(60);
const DS_LABEL: &str = "rke2-test/ds";
const DEDICATED: &str = "example.com/dedicated";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn obj<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": name}})),
    )
    .await
    .unwrap();
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn set_pod_status(pods: &Api<Pod>, name: &str, status: Value) {
    match pods
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("patching status of pod {name}: {e}"),
    }
}

fn ready_status() -> Value {
    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
           "lastTransitionTime": Timestamp::now().to_string()}]})
}

async fn daemonset_scenario(client: &kube::Client, stop: &CancellationToken) {
    let ns = "ds-test";
    namespace(client, ns).await;
    fake_node(
        client,
        "fake-plain",
        json!({DS_LABEL: "yes"}),
        json!([]),
        stop,
    )
    .await;
    fake_node(
        client,
        "fake-dedicated",
        json!({DS_LABEL: "yes"}),
        json!([{"key": DEDICATED, "value": "db", "effect": "NoSchedule"}]),
        stop,
    )
    .await;
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    dss.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"nodeSelector": {DS_LABEL: "yes"},
                             "containers": [{"name": "c", "image": "registry.example/agent:1"}]},
                },
            },
        })),
    )
    .await
    .unwrap();

    // Only the untainted node gets a pod.
    let on = eventually(WITHIN, "one daemon pod, on fake-plain", || async {
        let ds = dss.get("agent").await.ok()?;
        let st = ds.status?;
        let done = st.observed_generation == Some(1)
            && st.desired_number_scheduled == 1
            && st.current_number_scheduled == 1;
        if !done {
            return None;
        }
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?;
        Some(list.items.iter().map(node_of).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(on, vec!["fake-plain".to_string()]);
    let pod = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = pod.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("agent-") && name.len() == "agent-".len() + 5,
        "{name}"
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("DaemonSet", Some(true))
    );
    let tolerations = pod.spec.as_ref().unwrap().tolerations.clone().unwrap();
    assert!(
        tolerations.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.effect.as_deref() == Some("NoExecute")
        ),
        "automatic tolerations: {tolerations:?}"
    );
    // A kubelet would report it Ready.
    set_pod_status(&pods, &name, ready_status()).await;
    eventually(WITHIN, "numberReady 1", || async {
        let st = dss.get("agent").await.ok()?.status?;
        (st.number_ready == 1 && st.number_available == Some(1)).then_some(())
    })
    .await
    .unwrap();

    // Tolerating the taint: pods on both nodes, all from the new template.
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {
            "tolerations": [{"key": DEDICATED, "operator": "Exists", "effect": "NoSchedule"}]}}}})),
    )
    .await
    .unwrap();
    let on = eventually(WITHIN, "daemon pods on both nodes, updated", || async {
        // The fake kubelet: new pods become Ready, so the rollout (one
        // unavailable node at a time) proceeds.
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?;
        for p in &list.items {
            if p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none()
            {
                set_pod_status(&pods, p.metadata.name.as_deref()?, ready_status()).await;
            }
        }
        let st = dss.get("agent").await.ok()?.status?;
        let done = st.observed_generation == Some(2)
            && st.desired_number_scheduled == 2
            && st.current_number_scheduled == 2
            && st.updated_number_scheduled == Some(2);
        if !done {
            return None;
        }
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?;
        Some(list.items.iter().map(node_of).collect::<BTreeSet<_>>())
    })
    .await;
    let on = match on {
        Ok(on) => on,
        Err(e) => {
            let list = pods.list(&ListParams::default()).await.unwrap();
            panic!(
                "{e}: pods {:?}, status {:?}",
                list.items
                    .iter()
                    .map(|p| (p.metadata.name.clone(), node_of(p)))
                    .collect::<Vec<_>>(),
                dss.get("agent").await.unwrap().status
            );
        }
    };
    assert_eq!(
        on,
        ["fake-dedicated", "fake-plain"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // The replaced pod was deleted gracefully; once its (fake) kubelet
    // finished it, one pod per node is left.
    let list = eventually(WITHIN, "one pod per node", || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(list)
    })
    .await
    .unwrap();
    for p in &list.items {
        assert!(
            p.spec
                .as_ref()
                .unwrap()
                .tolerations
                .as_ref()
                .unwrap()
                .iter()
                .any(|t| t.key.as_deref() == Some(DEDICATED))
        );
    }
}

async fn job_scenario(client: &kube::Client) {
    let ns = "job-test";
    namespace(client, ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = jobs
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "batch"},
                "spec": {
                    "completions": 3, "parallelism": 2,
                    "template": {"spec": {"restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "registry.example/work:1"}]}},
                },
            })),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let job = eventually(WITHIN, "job Complete", || {
        let (jobs, pods, selector, seen) =
            (jobs.clone(), pods.clone(), selector.clone(), seen.clone());
        async move {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let active: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
                .collect();
            assert!(
                active.len() <= 2,
                "parallelism 2 exceeded: {} active",
                active.len()
            );
            // The fake kubelet: every pod runs and succeeds.
            for p in active {
                let name = p.metadata.name.clone().unwrap();
                seen.lock().unwrap().insert(name.clone());
                set_pod_status(&pods, &name, json!({"phase": "Succeeded"})).await;
            }
            let job = jobs.get("batch").await.ok()?;
            let complete = job
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            complete.then_some(job)
        }
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let st = job.status.unwrap();
    assert_eq!(st.succeeded, Some(3));
    assert_eq!(st.active, Some(0));
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    let conds = st.conditions.unwrap();
    for ty in ["SuccessCriteriaMet", "Complete"] {
        let c = conds
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap_or_else(|| panic!("no {ty}"));
        assert_eq!(c.status, "True");
    }
    assert_eq!(seen.len(), 3, "exactly three pods ran: {seen:?}");
    for name in &seen {
        assert!(
            name.starts_with("batch-") && name.len() == "batch-".len() + 5,
            "{name}"
        );
    }
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
    assert!(
        list.items
            .iter()
            .all(|p| p.metadata.owner_references.as_ref().unwrap()[0].uid == uid)
    );
}

async fn gc_scenario(client: &kube::Client) {
    let ns = "gc-test";
    namespace(client, ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let owner_ref = |api_version: &str, kind: &str, name: &str, uid: &str, block: bool| json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": block});
    let pod = |name: &str, owners: Value| -> Pod {
        obj(json!({
            "metadata": {"name": name, "ownerReferences": owners},
            "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]},
        }))
    };

    // A ReplicaSet (no replicas) owning a pod, and a ConfigMap owning another.
    let rs = rss
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]}}},
            })),
        )
        .await
        .unwrap();
    let keeper = cms
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "keeper"}})),
        )
        .await
        .unwrap();
    let rs_ref = owner_ref(
        "apps/v1",
        "ReplicaSet",
        "web",
        rs.metadata.uid.as_deref().unwrap(),
        true,
    );
    let keeper_ref = owner_ref(
        "v1",
        "ConfigMap",
        "keeper",
        keeper.metadata.uid.as_deref().unwrap(),
        false,
    );
    pods.create(&PostParams::default(), &pod("rs-child", json!([rs_ref])))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("kept-child", json!([keeper_ref])),
    )
    .await
    .unwrap();
    // Two owners, one of them about to go: only the reference is dropped.
    pods.create(
        &PostParams::default(),
        &pod("two-owners", json!([rs_ref, keeper_ref])),
    )
    .await
    .unwrap();
    rss.delete("web", &DeleteParams::background())
        .await
        .unwrap();
    eventually(WITHIN, "rs-child collected", || async {
        pods.get_opt("rs-child").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    eventually(
        WITHIN,
        "two-owners loses its dangling reference",
        || async {
            let p = pods.get_opt("two-owners").await.ok()??;
            let refs = p.metadata.owner_references.unwrap_or_default();
            (refs.len() == 1 && refs[0].name == "keeper").then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("kept-child").await.unwrap().is_some(),
        "a pod with a live owner is kept"
    );

    // The completed Job of the job scenario: its pods go with it.
    let job_pods: Api<Pod> = Api::namespaced(client.clone(), "job-test");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "job-test");
    assert_eq!(
        job_pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    jobs.delete("batch", &DeleteParams::background())
        .await
        .unwrap();
    eventually(WITHIN, "job pods collected", || async {
        job_pods
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();

    // Foreground (the apiserver marks the owner with `foregroundDeletion`):
    // the GC deletes the dependent; the owner stays while the dependent
    // (held by a finalizer of its own) exists, and goes once it is gone.
    let fg = cms
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "fg-owner"}})),
        )
        .await
        .unwrap();
    let fg_ref = owner_ref(
        "v1",
        "ConfigMap",
        "fg-owner",
        fg.metadata.uid.as_deref().unwrap(),
        true,
    );
    secrets
        .create(
            &PostParams::default(),
            &obj(
                json!({"metadata": {"name": "fg-child", "ownerReferences": [fg_ref],
                                     "finalizers": ["example.com/hold"]}}),
            ),
        )
        .await
        .unwrap();
    cms.delete("fg-owner", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(WITHIN, "foreground dependent being deleted", || async {
        let child = secrets.get_opt("fg-child").await.ok()??;
        child.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await
    .unwrap();
    let owner = cms
        .get_opt("fg-owner")
        .await
        .unwrap()
        .expect("owner waits for its dependent");
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert_eq!(
        owner.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    secrets
        .patch(
            "fg-child",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually(WITHIN, "foreground owner and dependent gone", || async {
        let owner = cms.get_opt("fg-owner").await.ok()?;
        let child = secrets.get_opt("fg-child").await.ok()?;
        (owner.is_none() && child.is_none()).then_some(())
    })
    .await
    .unwrap();

    // Orphan: the dependent stays, without the reference.
    let or = cms
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "orphan-owner"}})),
        )
        .await
        .unwrap();
    let or_ref = owner_ref(
        "v1",
        "ConfigMap",
        "orphan-owner",
        or.metadata.uid.as_deref().unwrap(),
        true,
    );
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "orphan-child", "ownerReferences": [or_ref]}})),
    )
    .await
    .unwrap();
    cms.delete("orphan-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually(WITHIN, "orphan owner gone, dependent kept", || async {
        let owner = cms.get_opt("orphan-owner").await.ok()?;
        let child = cms.get_opt("orphan-child").await.ok()??;
        (owner.is_none()
            && child
                .metadata
                .owner_references
                .unwrap_or_default()
                .is_empty())
        .then_some(())
    })
    .await
    .unwrap();
}

async fn serviceaccount_scenario(client: &kube::Client) {
    namespace(client, "sa-test").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "sa-test");
    let first = eventually(WITHIN, "default ServiceAccount", || async {
        sas.get_opt("default").await.ok()?
    })
    .await
    .unwrap();
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WITHIN, "default ServiceAccount re-created", || async {
        let sa = sas.get_opt("default").await.ok()??;
        (sa.metadata.uid != first.metadata.uid).then_some(())
    })
    .await
    .unwrap();
}

async fn taint_scenario(client: &kube::Client, stop: &CancellationToken) {
    let ns = "taint-test";
    namespace(client, ns).await;
    fake_node(client, "fake-evict", json!({}), json!([]), stop).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let bound = |name: &str, tolerations: Value| -> Pod {
        obj(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "fake-evict", "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "registry.example/x:1"}]},
        }))
    };
    let evict_tol = |secs: Option<i64>| json!([{"key": "example.com/evict", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}]);
    pods.create(&PostParams::default(), &bound("victim", json!([])))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &bound("tolerant", evict_tol(None)))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &bound("timed", evict_tol(Some(2))))
        .await
        .unwrap();
    for p in ["victim", "tolerant", "timed"] {
        set_pod_status(&pods, p, ready_status()).await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let added = Timestamp::now().to_string();
    nodes
        .patch(
            "fake-evict",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": [
                {"key": "example.com/evict", "value": "yes", "effect": "NoExecute", "timeAdded": added}]}})),
        )
        .await
        .unwrap();
    eventually(WITHIN, "victim evicted", || async {
        pods.get_opt("victim").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let ev = eventually(WITHIN, "eviction event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("TaintManagerEviction")
                && e.involved_object.name.as_deref() == Some("victim")
        })
    })
    .await
    .unwrap();
    assert_eq!(
        ev.message.as_deref(),
        Some("Marking for deletion Pod taint-test/victim")
    );
    eventually(
        WITHIN,
        "timed pod evicted after its tolerationSeconds",
        || async { pods.get_opt("timed").await.ok()?.is_none().then_some(()) },
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("tolerant").await.unwrap().is_some(),
        "a tolerating pod stays"
    );
}

/// Makes the test the controller-manager: the server runs these same loops
/// under the `kube-controller-manager` Lease, so the test waits until the
/// server leads, takes the Lease over (an hour-long lease, written with the
/// resourceVersion it read) and waits for the server to log that it lost
/// leadership and stopped its loops. Only then do the in-process loops
/// start, so no two copies of a loop run at once.
async fn take_over_controllers(server: &Server, client: &kube::Client) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease_name = rke2_controllers::CONTROLLERS_LEASE;
    eventually(READY, "the server leading the controllers", || async {
        let l = leases.get_opt(lease_name).await.ok()??;
        let holder = l.spec?.holder_identity?;
        holder.starts_with(&server.node_name).then_some(())
    })
    .await
    .unwrap();
    eventually(WITHIN, "the controllers Lease taken over", || async {
        let mut l = leases.get(lease_name).await.ok()?;
        let micro = Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap();
        l.spec = Some(obj(json!({
            "holderIdentity": "controllers-test",
            "leaseDurationSeconds": 3600,
            "acquireTime": micro.to_string(),
            "renewTime": micro.to_string(),
            "leaseTransitions": 1,
        })));
        leases
            .replace(lease_name, &PostParams::default(), &l)
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .unwrap();
    eventually(WITHIN, "the server stepping down", || async {
        server
            .log_text()
            .lines()
            .any(|l| l.contains("lost leadership") && l.contains(lease_name))
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_controllers() {
    let mut server = Server::start(bin(), ServerOpts::default()).unwrap();
    let client = server.wait_ready(READY).await.unwrap();
    take_over_controllers(&server, &client).await;
    let stop = CancellationToken::new();
    let loops = vec![
        // Pods on the fake nodes are deleted gracefully; nothing else
        // would finish that.
        tokio::spawn(rke2_testbed::finalize_terminating_pods(
            client.clone(),
            "fake-".into(),
            stop.clone(),
        )),
        tokio::spawn(daemonset::run(client.clone(), stop.clone())),
        tokio::spawn(job::run(client.clone(), stop.clone())),
        tokio::spawn(garbage_collector::run(client.clone(), stop.clone())),
        tokio::spawn(serviceaccount::run(client.clone(), stop.clone())),
        tokio::spawn(taint_eviction::run(client.clone(), stop.clone())),
    ];
    serviceaccount_scenario(&client).await;
    daemonset_scenario(&client, &stop).await;
    job_scenario(&client).await;
    gc_scenario(&client).await;
    taint_scenario(&client, &stop).await;
    stop.cancel();
    for l in loops {
        tokio::time::timeout(Duration::from_secs(10), l)
            .await
            .expect("loop stops on cancel")
            .unwrap();
    }
}
