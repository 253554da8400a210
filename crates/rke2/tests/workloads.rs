//! Deployments and ReplicaSets against a real server, driven by the newest
//! real kubectl: create, scale (the scale subresource), an image change
//! rolled out with RollingUpdate (`rollout status`, `rollout history`),
//! `rollout undo`, a deleted pod replaced, pause/resume, and a Recreate
//! rollover that never runs old and new pods at once (with
//! `revisionHistoryLimit: 0` cleaning the old ReplicaSet).
//!
//! The ReplicaSet and Deployment loops are the server's own (leader-elected
//! controllers; running a second copy in-process would only make the two
//! fight). The pods go to a fake node (the server's own node is cordoned):
//! the test is about the controllers, so a tiny in-test "fake kubelet"
//! marks every pod Running and Ready shortly after it appears, which is what
//! availability is computed from, and finishes graceful deletions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use rke2_testbed::{Server, ServerOpts, eventually, kubectls, run_ok};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Generous deadline for anything that converges (2 busy cores).
const DEADLINE: Duration = Duration::from_secs(90);
const NS: &str = "default";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

fn log_tail(server: &Server, n: usize) -> String {
    let text = server.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a kubectl against `server` (off the async workers).
async fn kubectl(server: &Server, kc: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = server.kubectl(kc);
    cmd.args(args);
    tokio::task::spawn_blocking(move || run_ok(&mut cmd)).await?
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Marks every pod of `NS` Running and Ready as soon as it is seen.
async fn fake_kubelet(client: Client, stop: CancellationToken) {
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let mut stream = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.try_next() => ev,
        };
        let p = match ev {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => continue,
        };
        if is_ready(&p) || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let now = Timestamp::now().to_string();
        let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now});
        let patch = json!({"status": {
            "phase": "Running",
            "conditions": [cond("Initialized"), cond("PodScheduled"), cond("ContainersReady"), cond("Ready")],
            "startTime": now,
        }});
        let _ = pods
            .patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
    }
}

fn controller_uid<K: kube::Resource>(obj: &K) -> Option<String> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

fn image_of_rs(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn image_of_deploy(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

struct Bed {
    client: Client,
    deploys: Api<Deployment>,
    rss: Api<ReplicaSet>,
    pods: Api<Pod>,
}

impl Bed {
    /// The ReplicaSets controlled by deployment `name`, oldest first.
    async fn owned_rss(&self, name: &str) -> Option<(Deployment, Vec<ReplicaSet>)> {
        let d = self.deploys.get_opt(name).await.ok()??;
        let uid = d.metadata.uid.clone()?;
        let mut rss: Vec<ReplicaSet> = self
            .rss
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|rs| controller_uid(rs).as_deref() == Some(uid.as_str()))
            .collect();
        rss.sort_by_key(|rs| annotation(&rs.metadata, "deployment.kubernetes.io/revision"));
        Some((d, rss))
    }

    /// Live pods controlled by the ReplicaSet with `uid`.
    async fn pods_of(&self, uid: &str) -> Option<Vec<Pod>> {
        Some(
            self.pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| controller_uid(p).as_deref() == Some(uid))
                .collect(),
        )
    }

    /// Waits until deployment `name` has exactly one ReplicaSet with
    /// `replicas` ready pods running `image`, all others at 0 with no pods,
    /// and a status `kubectl rollout status` accepts.
    async fn settled(&self, name: &str, image: &str, replicas: i32) -> Result<ReplicaSet> {
        eventually(
            DEADLINE,
            &format!("{name}: {replicas} ready pods of {image}"),
            || async {
                let (d, rss) = self.owned_rss(name).await?;
                let mut current = None;
                for rs in &rss {
                    let uid = rs.metadata.uid.clone()?;
                    let pods = self.pods_of(&uid).await?;
                    if image_of_rs(rs) == image {
                        let ok = rs_replicas(rs) == replicas
                            && pods.len() as i32 == replicas
                            && pods.iter().all(is_ready);
                        if !ok {
                            return None;
                        }
                        current = Some(rs.clone());
                    } else if rs_replicas(rs) != 0 || !pods.is_empty() {
                        return None;
                    }
                }
                let st = d.status.clone()?;
                let done = st.observed_generation >= d.metadata.generation
                    && st.updated_replicas == Some(replicas)
                    && st.replicas == Some(replicas)
                    && st.available_replicas == Some(replicas);
                if done { current } else { None }
            },
        )
        .await
    }
}

fn condition(d: &Deployment, ty: &str) -> Option<(String, String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

async fn event_messages(client: &Client, involved: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(involved))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// What [`overlap_watch`] saw.
#[derive(Default)]
struct Overlaps {
    /// The initial list is done.
    listed: bool,
    /// Sets of templates (hashes) alive at the same time.
    seen: BTreeSet<String>,
}

/// Records, on every pod event of deployment `app`, whether pods of two
/// different templates were ever alive at the same time.
fn overlap_watch(
    client: Client,
    app: &str,
    stop: CancellationToken,
) -> (Arc<Mutex<Overlaps>>, tokio::task::JoinHandle<()>) {
    let seen_overlap = Arc::new(Mutex::new(Overlaps::default()));
    let out = seen_overlap.clone();
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let handle = tokio::spawn(async move {
        let mut alive: BTreeMap<String, String> = BTreeMap::new();
        let mut stream = watcher(pods, cfg).default_backoff().boxed();
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.try_next() => ev,
            };
            match ev {
                Ok(Some(watcher::Event::Apply(p))) | Ok(Some(watcher::Event::InitApply(p))) => {
                    let hash = p
                        .labels()
                        .get("pod-template-hash")
                        .cloned()
                        .unwrap_or_default();
                    alive.insert(p.name_any(), hash);
                }
                Ok(Some(watcher::Event::Delete(p))) => {
                    alive.remove(&p.name_any());
                }
                Ok(Some(watcher::Event::InitDone)) => out.lock().unwrap().listed = true,
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => continue,
            }
            let hashes: BTreeSet<&String> = alive.values().collect();
            if hashes.len() > 1 {
                out.lock()
                    .unwrap()
                    .seen
                    .insert(hashes.into_iter().cloned().collect::<Vec<_>>().join("+"));
            }
        }
    });
    (seen_overlap, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_scale_and_roll_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // In-test tasks log through this (RUST_LOG=...).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // The oldest and the newest kubectl (they differ: 1.29 sends JSON,
    // later ones protobuf, and their rollout code differs), each against a
    // fresh server.
    let all = kubectls().expect("kubectl binaries");
    let mut versions = vec![all.first().unwrap().clone(), all.last().unwrap().clone()];
    versions.dedup();
    for (minor, kc) in versions {
        println!("kubectl 1.{minor}");
        run_with(&kc).await;
    }
}

async fn run_with(kc: &Path) {
    let kc: PathBuf = kc.to_path_buf();
    let mut server = Server::start(bin(), ServerOpts::default()).expect("starting rke2 server");
    let client = server
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("rke2 server ready");

    let stop = CancellationToken::new();
    // The server's own node runs real containers; these pods belong on a
    // node whose only kubelet is the fake one below.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    eventually(
        DEADLINE,
        "the server's node registered and cordoned",
        || async {
            nodes
                .patch(
                    &server.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
                )
                .await
                .ok()
        },
    )
    .await
    .expect("cordoning the server's node");
    rke2_testbed::fake_node(&client, "fake-w1", json!({}), json!([]), &stop).await;
    let loops = [
        tokio::spawn(fake_kubelet(client.clone(), stop.clone())),
        tokio::spawn(rke2_testbed::finalize_terminating_pods(
            client.clone(),
            "fake-".into(),
            stop.clone(),
        )),
    ];
    let bed = Bed {
        client: client.clone(),
        deploys: Api::namespaced(client.clone(), NS),
        rss: Api::namespaced(client.clone(), NS),
        pods: Api::namespaced(client.clone(), NS),
    };
    let result = scenario(&server, &kc, &bed).await;
    stop.cancel();
    for l in loops {
        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
    }
    if let Err(e) = result {
        panic!("{e:#}\n--- server log tail ---\n{}", log_tail(&server, 60));
    }
    let _ = server.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
}

async fn scenario(server: &Server, kc: &Path, bed: &Bed) -> Result<()> {
    // --- create: one ReplicaSet, three pods it controls.
    kubectl(
        server,
        kc,
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=3",
        ],
    )
    .await?;
    let rs1 = bed
        .settled("web", "busybox", 3)
        .await
        .context("after create")?;
    let rs1_name = rs1.name_any();
    let (d, rss) = bed.owned_rss("web").await.context("listing")?;
    ensure!(rss.len() == 1, "one replica set, got {}", rss.len());
    let hash = rs1
        .labels()
        .get("pod-template-hash")
        .cloned()
        .context("pod-template-hash label on the replica set")?;
    ensure!(
        rs1_name == format!("web-{hash}"),
        "name {rs1_name} vs hash {hash}"
    );
    let sel = rs1
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    ensure!(
        sel.get("pod-template-hash") == Some(&hash)
            && sel.get("app").map(String::as_str) == Some("web"),
        "selector {sel:?}"
    );
    let owner = rs1.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owner.len() == 1
            && owner[0].kind == "Deployment"
            && owner[0].controller == Some(true)
            && owner[0].block_owner_deletion == Some(true),
        "owner references {owner:?}"
    );
    ensure!(
        annotation(&rs1.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("1")
            && annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("1"),
        "revision 1 on the replica set and the deployment"
    );
    let pods = bed
        .pods_of(rs1.metadata.uid.as_deref().unwrap())
        .await
        .unwrap();
    for p in &pods {
        ensure!(
            p.name_any().starts_with(&format!("{rs1_name}-")),
            "pod name {}",
            p.name_any()
        );
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        ensure!(
            r.kind == "ReplicaSet" && r.block_owner_deletion == Some(true),
            "{r:?}"
        );
    }
    let out = kubectl(
        server,
        kc,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await?;
    ensure!(
        out.contains("successfully rolled out"),
        "rollout status: {out}"
    );
    let (d, _) = bed.owned_rss("web").await.unwrap();
    let avail = condition(&d, "Available");
    ensure!(
        avail.as_ref().map(|c| (c.0.as_str(), c.1.as_str()))
            == Some(("True", "MinimumReplicasAvailable")),
        "Available condition {avail:?}"
    );
    let prog = condition(&d, "Progressing");
    ensure!(
        prog.as_ref()
            .map(|c| (c.0.as_str(), c.1.as_str(), c.2.clone()))
            == Some((
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs1_name}\" has successfully progressed.")
            )),
        "Progressing condition {prog:?}"
    );
    eventually(DEADLINE, "events of the create", || async {
        let d_events = event_messages(&bed.client, "web").await;
        let rs_events = event_messages(&bed.client, &rs1_name).await;
        let scaled = d_events.contains(&(
            "ScalingReplicaSet".to_string(),
            format!("Scaled up replica set {rs1_name} from 0 to 3"),
        ));
        let created = rs_events
            .iter()
            .filter(|(r, m)| {
                r == "SuccessfulCreate" && m.starts_with(&format!("Created pod: {rs1_name}-"))
            })
            .count();
        (scaled && created >= 3).then_some(())
    })
    .await?;

    // --- scale through the scale subresource.
    kubectl(server, kc, &["scale", "deployment", "web", "--replicas=5"]).await?;
    bed.settled("web", "busybox", 5)
        .await
        .context("after scale to 5")?;

    // --- image change: a new ReplicaSet, the old one scaled to 0.
    kubectl(
        server,
        kc,
        &["set", "image", "deployment/web", "busybox=busybox:1.36"],
    )
    .await?;
    let out = kubectl(
        server,
        kc,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await?;
    ensure!(
        out.contains("successfully rolled out"),
        "rollout status: {out}"
    );
    let rs2 = bed
        .settled("web", "busybox:1.36", 5)
        .await
        .context("after set image")?;
    ensure!(rs2.name_any() != rs1_name, "a new replica set");
    let (d, rss) = bed.owned_rss("web").await.unwrap();
    ensure!(rss.len() == 2, "two replica sets, got {}", rss.len());
    ensure!(
        annotation(&rs2.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("2")
            && annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("2"),
        "revision 2"
    );
    let history = kubectl(server, kc, &["rollout", "history", "deployment/web"]).await?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    ensure!(revisions == ["1", "2"], "rollout history:\n{history}");
    let d_events = event_messages(&bed.client, "web").await;
    ensure!(
        d_events.iter().any(|(r, m)| r == "ScalingReplicaSet"
            && m.starts_with(&format!("Scaled down replica set {rs1_name} from 5 to "))),
        "scale-down events: {d_events:?}"
    );

    // --- rollout undo: back to the first template, as revision 3.
    kubectl(server, kc, &["rollout", "undo", "deployment/web"]).await?;
    let back = bed
        .settled("web", "busybox", 5)
        .await
        .context("after rollout undo")?;
    ensure!(
        back.name_any() == rs1_name,
        "undo re-uses {rs1_name}, got {}",
        back.name_any()
    );
    let out = kubectl(
        server,
        kc,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )
    .await?;
    ensure!(
        out.contains("successfully rolled out"),
        "rollout status: {out}"
    );
    let (d, rss) = bed.owned_rss("web").await.unwrap();
    ensure!(
        image_of_deploy(&d) == "busybox",
        "template image {}",
        image_of_deploy(&d)
    );
    ensure!(rss.len() == 2, "still two replica sets, got {}", rss.len());
    let back = rss.iter().find(|rs| rs.name_any() == rs1_name).unwrap();
    ensure!(
        annotation(&back.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("3")
            && annotation(&back.metadata, "deployment.kubernetes.io/revision-history").as_deref()
                == Some("1")
            && annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref() == Some("3"),
        "revision 3 (history 1): {:?} / {:?}",
        back.metadata.annotations,
        d.metadata.annotations
    );
    let history = kubectl(server, kc, &["rollout", "history", "deployment/web"]).await?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    ensure!(
        revisions == ["2", "3"],
        "rollout history after undo:\n{history}"
    );

    // --- a deleted pod is replaced.
    let uid = back.metadata.uid.clone().unwrap();
    let victim = bed.pods_of(&uid).await.unwrap()[0].name_any();
    kubectl(server, kc, &["delete", "pod", &victim, "--wait=false"]).await?;
    eventually(DEADLINE, "a replacement pod", || async {
        let pods = bed.pods_of(&uid).await?;
        (pods.len() == 5
            && pods.iter().all(|p| p.name_any() != victim)
            && pods.iter().all(is_ready))
        .then_some(())
    })
    .await?;
    let rs_events = event_messages(&bed.client, &rs1_name).await;
    ensure!(
        rs_events
            .iter()
            .filter(|(r, _)| r == "SuccessfulCreate")
            .count()
            >= 6,
        "create events: {rs_events:?}"
    );

    // --- paused: a template change is observed but not rolled out.
    kubectl(server, kc, &["rollout", "pause", "deployment/web"]).await?;
    kubectl(
        server,
        kc,
        &["set", "image", "deployment/web", "busybox=busybox:1.37"],
    )
    .await?;
    eventually(DEADLINE, "the paused change observed", || async {
        let (d, _) = bed.owned_rss("web").await?;
        let st = d.status.as_ref()?;
        let paused = condition(&d, "Progressing")
            .is_some_and(|c| c.0 == "Unknown" && c.1 == "DeploymentPaused");
        (st.observed_generation >= d.metadata.generation && paused).then_some(())
    })
    .await?;
    let (_, rss) = bed.owned_rss("web").await.unwrap();
    ensure!(
        rss.len() == 2 && rss.iter().all(|rs| image_of_rs(rs) != "busybox:1.37"),
        "no new replica set while paused"
    );
    kubectl(server, kc, &["rollout", "resume", "deployment/web"]).await?;
    bed.settled("web", "busybox:1.37", 5)
        .await
        .context("after resume")?;
    let (_, rss) = bed.owned_rss("web").await.unwrap();
    ensure!(rss.len() == 3, "three replica sets, got {}", rss.len());

    // --- Recreate: old pods are all gone before new ones start; with
    // revisionHistoryLimit 0 the old ReplicaSet is deleted afterwards.
    let rec: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "rec", "namespace": NS},
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 0,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "rec"}},
            "template": {
                "metadata": {"labels": {"app": "rec"}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]}
            }
        }
    }))?;
    bed.deploys.create(&PostParams::default(), &rec).await?;
    let rec1 = bed
        .settled("rec", "busybox", 2)
        .await
        .context("recreate: first")?;
    let watch_stop = CancellationToken::new();
    let (overlaps, watch) = overlap_watch(bed.client.clone(), "rec", watch_stop.clone());
    // The watch has listed rec1's pods before the change.
    eventually(DEADLINE, "the overlap watch to list", || async {
        overlaps.lock().unwrap().listed.then_some(())
    })
    .await?;
    kubectl(
        server,
        kc,
        &["set", "image", "deployment/rec", "main=busybox:1.36"],
    )
    .await?;
    let out = kubectl(
        server,
        kc,
        &["rollout", "status", "deployment/rec", "--timeout=90s"],
    )
    .await?;
    ensure!(
        out.contains("successfully rolled out"),
        "rollout status: {out}"
    );
    let rec2 = bed
        .settled("rec", "busybox:1.36", 2)
        .await
        .context("recreate: second")?;
    ensure!(rec2.name_any() != rec1.name_any(), "a new replica set");
    watch_stop.cancel();
    let _ = watch.await;
    let seen = overlaps.lock().unwrap().seen.clone();
    ensure!(seen.is_empty(), "old and new pods alive together: {seen:?}");
    eventually(
        DEADLINE,
        "the old replica set of rec cleaned up",
        || async {
            let (_, rss) = bed.owned_rss("rec").await?;
            (rss.len() == 1 && rss[0].name_any() == rec2.name_any()).then_some(())
        },
    )
    .await?;
    let d_events = event_messages(&bed.client, "rec").await;
    ensure!(
        d_events.contains(&(
            "ScalingReplicaSet".to_string(),
            format!("Scaled down replica set {} from 2 to 0", rec1.name_any())
        )) && d_events.contains(&(
            "ScalingReplicaSet".to_string(),
            format!("Scaled up replica set {} from 0 to 2", rec2.name_any())
        )),
        "recreate events: {d_events:?}"
    );
    adoption_and_release(bed)
        .await
        .context("adoption and release")
}

/// A bare ReplicaSet adopts a matching orphan instead of creating a pod
/// for it, and releases a pod relabelled out of its selector (dropping its
/// ownerReference) and replaces it.
async fn adoption_and_release(bed: &Bed) -> Result<()> {
    let labels = json!({"app": "solo"});
    let spec = json!({"containers": [{"name": "main", "image": "busybox"}]});
    bed.pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "solo-orphan", "labels": labels},
                "spec": spec,
            }))?,
        )
        .await?;
    let rs = bed
        .rss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "solo"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": spec},
                },
            }))?,
        )
        .await?;
    let uid = rs.metadata.uid.clone().context("uid of solo")?;
    let owned = eventually(
        DEADLINE,
        "solo owns 2 pods, the orphan one of them",
        || async {
            let pods = bed.pods_of(&uid).await?;
            let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
            (names.len() == 2 && names.contains("solo-orphan")).then_some(names)
        },
    )
    .await?;
    let all: Vec<String> = bed
        .pods
        .list(&ListParams::default().labels("app=solo"))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    ensure!(
        all.len() == 2,
        "adopting the orphan, the replica set created one pod, not two: {all:?}"
    );
    let other = owned
        .iter()
        .find(|n| *n != "solo-orphan")
        .cloned()
        .context("the created pod")?;
    bed.pods
        .patch(
            &other,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"app": "gone"}}})),
        )
        .await?;
    eventually(
        DEADLINE,
        "the relabelled pod released and replaced",
        || async {
            let p = bed.pods.get_opt(&other).await.ok()??;
            let released = controller_uid(&p).is_none();
            let pods = bed.pods_of(&uid).await?;
            let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
            (released && names.len() == 2 && !names.contains(&other)).then_some(())
        },
    )
    .await?;
    Ok(())
}
