//! Jobs and CronJobs run for real (one server node with its containerd,
//! in a network namespace of its own; real kubectl): a CronJob every
//! minute fires within its minute and keeps its history limit, one with
//! `concurrencyPolicy: Forbid` skips while its Job runs, `kubectl create
//! job --from=cronjob/`, invalid cron syntax refused with upstream's 422;
//! an Indexed Job, a pod failure policy, `activeDeadlineSeconds`,
//! `ttlSecondsAfterFinished` and `suspend`; an Indexed Job ended early by
//! its `successPolicy`, one failed by `backoffLimitPerIndex` and a
//! `FailIndex` rule (`failedIndexes`), and their invalid forms refused.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static, etcd
//! (scripts/install.sh). Takes a few minutes: the CronJobs need three
//! scheduled minutes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use rke2_testbed::netbed::{NetBed, NodeProc};
use rke2_testbed::{TEST_BUSYBOX_IMAGE, TEST_PAUSE_IMAGE, eventually};
use serde_json::json;

const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rke2"))
}

/// Generous: a busy 2-core machine runs the node, etcd and containerd.
const LONG: Duration = Duration::from_secs(180);
/// Three scheduled minutes and then some.
const MINUTES: Duration = Duration::from_secs(330);

fn kubectl(k: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn condition(job: &Job, ty: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn owned_by(job: &Job, uid: &str) -> bool {
    job.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

async fn jobs_of(jobs: &Api<Job>, cj: &CronJob) -> Vec<Job> {
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    jobs.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|j| owned_by(j, &uid))
        .collect()
}

fn cronjob(name: &str, policy: &str, command: &str) -> CronJob {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "schedule": "*/1 * * * *",
            "concurrencyPolicy": policy,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sh", "-c", command]}]
            }}}}
        }
    }))
    .unwrap()
}

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut s = json!({"template": {"spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": TEST_BUSYBOX_IMAGE, "command": ["sh", "-c", "true"]}]
    }}});
    for (k, v) in spec.as_object().unwrap() {
        if k == "command" {
            s["template"]["spec"]["containers"][0]["command"] = json!(["sh", "-c", v]);
        } else {
            s[k] = v.clone();
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).unwrap()
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_cronjobs_run_for_real() {
    let mut bed = NetBed::new().expect("this test needs root and iproute2 (scripts/install.sh)");
    let hs = bed.add_host("s1").unwrap();
    let cfg = format!(
        "token: batch-secret\npause-image: {TEST_PAUSE_IMAGE}\ndisable:\n  - rke2-coredns\n  - rke2-ingress-nginx\n  - rke2-metrics-server\n"
    );
    let mut s1 = NodeProc::new(&bed, bin(), &hs, "server", &cfg, &[]).unwrap();
    rke2_testbed::seed_images(&s1.data_dir()).unwrap();
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
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(LONG, "a Ready node", || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let k = rke2_testbed::kubectls().unwrap().last().unwrap().1.clone();
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Bad input: upstream's 422 texts, nothing stored.
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox",
            "--schedule=bad",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            "CronJob.batch \"bad\" is invalid: spec.schedule: Invalid value: \"bad\": expected exactly 5 fields, found 1: [bad]"
        ),
        "{}",
        text(&o)
    );
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox",
            "--schedule=61 * * * *",
        ],
    );
    assert!(
        text(&o).contains(
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        ),
        "{}",
        text(&o)
    );
    let mut tz = cronjob("bad", "Allow", "true");
    tz.spec.as_mut().unwrap().time_zone = Some("Mars/Olympus".into());
    match cronjobs.create(&PostParams::default(), &tz).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains(
                    "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
                ),
                "{}",
                s.message
            );
        }
        other => panic!("a CronJob in an unknown time zone was accepted: {other:?}"),
    }
    assert!(cronjobs.get_opt("bad").await.unwrap().is_none());

    // Two CronJobs every minute: one whose Jobs succeed at once (history
    // limit 1), one Forbid whose first Job never ends.
    let every = cronjobs
        .create(
            &PostParams::default(),
            &cronjob("every", "Allow", "echo tick"),
        )
        .await
        .unwrap();
    let forbid = cronjobs
        .create(
            &PostParams::default(),
            &cronjob("forbid", "Forbid", "sleep 3600"),
        )
        .await
        .unwrap();
    // A suspended one, the template of a manual run.
    let mut template = cronjob("template", "Allow", "echo by hand");
    template.spec.as_mut().unwrap().suspend = Some(true);
    let template = cronjobs
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    let o = kubectl(&k, &kubeconfig, &["get", "cronjobs"]);
    let header = text(&o).lines().next().unwrap_or_default().to_string();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ],
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("*/1 * * * *"), "{}", text(&o));

    // The Jobs below run while the CronJobs tick.

    // Indexed: each index once, its index and hostname in the pod.
    jobs.create(
        &PostParams::default(),
        &job(
            "indexed",
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
                   "command": "echo index=$JOB_COMPLETION_INDEX host=$(hostname)"}),
        ),
    )
    .await
    .unwrap();
    // A FailJob rule on exit code 42 ends the Job at its first failure
    // although backoffLimit would allow six.
    jobs.create(
        &PostParams::default(),
        &job(
            "policy",
            json!({"backoffLimit": 6, "command": "exit 42",
                   "podFailurePolicy": {"rules": [{"action": "FailJob",
                       "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}}]}}),
        ),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job(
            "deadline",
            json!({"activeDeadlineSeconds": 5, "command": "sleep 3600"}),
        ),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("ttl", json!({"ttlSecondsAfterFinished": 3})),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &job("suspended", json!({"suspend": true})),
    )
    .await
    .unwrap();

    // A success policy: index 0 is enough, the others (which would run
    // for an hour) are stopped and the Job completes early.
    jobs.create(
        &PostParams::default(),
        &job(
            "early",
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
                   "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
                   "command": "[ \"$JOB_COMPLETION_INDEX\" = 0 ] || sleep 3600"}),
        ),
    )
    .await
    .unwrap();
    // Per-index limits: index 1 fails twice (its limit is one retry),
    // index 2 once by a FailIndex rule; index 0 succeeds; the Job fails
    // with its failed indexes listed.
    jobs.create(
        &PostParams::default(),
        &job(
            "perindex",
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
                   "backoffLimitPerIndex": 1,
                   "podFailurePolicy": {"rules": [{"action": "FailIndex",
                       "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}}]},
                   "command": "case $JOB_COMPLETION_INDEX in 1) exit 1;; 2) exit 42;; esac"}),
        ),
    )
    .await
    .unwrap();
    // Bad input: upstream's field paths and messages, nothing stored.
    for (spec, want) in [
        (
            json!({"backoffLimitPerIndex": 1}),
            "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
        ),
        (
            json!({"completionMode": "Indexed", "completions": 3,
                   "successPolicy": {"rules": [{"succeededIndexes": "2-1"}]}}),
            "spec.successPolicy.rules[0].succeededIndexes: Invalid value: \"2-1\": error parsing succeededIndexes: non-increasing order, previous: 2, current: 1",
        ),
    ] {
        match jobs.create(&PostParams::default(), &job("bad", spec)).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422);
                assert!(s.message.contains(want), "{}", s.message);
            }
            other => panic!("an invalid Job was accepted: {other:?}"),
        }
    }
    assert!(jobs.get_opt("bad").await.unwrap().is_none());

    let indexed = eventually(LONG, "the Indexed Job Complete", || async {
        jobs.get("indexed")
            .await
            .ok()
            .filter(|j| condition(j, "Complete").is_some())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let st = indexed.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(st.succeeded, Some(3));
    let mut seen = BTreeSet::new();
    for p in job_pods(&pods, "indexed").await {
        let name = p.metadata.name.clone().unwrap();
        let index =
            p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"]
                .clone();
        assert!(name.starts_with(&format!("indexed-{index}-")), "{name}");
        let log = pods.logs(&name, &LogParams::default()).await.unwrap();
        assert_eq!(
            log.trim(),
            format!("index={index} host=indexed-{index}"),
            "{name}"
        );
        seen.insert(index);
    }
    assert_eq!(seen, ["0", "1", "2"].map(String::from).into());

    let early = eventually(LONG, "the success policy completes the Job", || async {
        jobs.get("early")
            .await
            .ok()
            .filter(|j| condition(j, "Complete").is_some())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let want = Some((
        "SuccessPolicy".to_string(),
        "Matched rules at index 0".to_string(),
    ));
    assert_eq!(condition(&early, "SuccessCriteriaMet"), want);
    assert_eq!(condition(&early, "Complete"), want);
    let st = early.status.clone().unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0"));
    assert_eq!((st.succeeded, st.active), (Some(1), Some(0)));
    // Complete only once the stopped pods were gone.
    assert_eq!(st.terminating, Some(0));
    for p in job_pods(&pods, "early").await {
        let index = &p.metadata.annotations.as_ref().unwrap()[COMPLETION_INDEX];
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        if index == "0" {
            assert_eq!(phase, "Succeeded");
        } else {
            assert!(
                p.metadata.deletion_timestamp.is_some() || phase == "Failed",
                "index {index} still {phase}"
            );
        }
    }

    let perindex = eventually(LONG, "the per-index limits fail the Job", || async {
        jobs.get("perindex")
            .await
            .ok()
            .filter(|j| condition(j, "Failed").is_some())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s1.log()));
    let want = Some((
        "FailedIndexes".to_string(),
        "Job has failed indexes".to_string(),
    ));
    assert_eq!(condition(&perindex, "FailureTarget"), want);
    assert_eq!(condition(&perindex, "Failed"), want);
    let st = perindex.status.clone().unwrap();
    assert_eq!(st.failed_indexes.as_deref(), Some("1,2"));
    assert_eq!(st.completed_indexes.as_deref(), Some("0"));
    assert_eq!((st.failed, st.succeeded), (Some(3), Some(1)));
    let mut runs: Vec<(String, String)> = job_pods(&pods, "perindex")
        .await
        .iter()
        .map(|p| {
            let a = p.metadata.annotations.as_ref().unwrap();
            (
                a[COMPLETION_INDEX].clone(),
                a.get("batch.kubernetes.io/job-index-failure-count")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    runs.sort();
    // Index 1 ran twice, its second pod told of the first failure; the
    // FailIndex rule allowed index 2 no retry.
    assert_eq!(
        runs,
        [("0", "0"), ("1", "0"), ("1", "1"), ("2", "0")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let o = kubectl(
        &k,
        &kubeconfig,
        &[
            "get",
            "job",
            "perindex",
            "-o",
            "jsonpath={.status.failedIndexes}",
        ],
    );
    assert_eq!(text(&o).trim(), "1,2");

    let policy = eventually(LONG, "the pod failure policy fails the Job", || async {
        jobs.get("policy")
            .await
            .ok()
            .and_then(|j| condition(&j, "Failed"))
    })
    .await
    .unwrap();
    assert_eq!(policy.0, "PodFailurePolicy");
    assert!(
        policy.1.starts_with("Container c for pod default/policy-")
            && policy
                .1
                .ends_with("failed with exit code 42 matching FailJob rule at index 0"),
        "{}",
        policy.1
    );
    assert_eq!(
        job_pods(&pods, "policy").await.len(),
        1,
        "no retry after FailJob"
    );

    let deadline = eventually(LONG, "the deadline fails the Job", || async {
        jobs.get("deadline")
            .await
            .ok()
            .and_then(|j| condition(&j, "Failed"))
    })
    .await
    .unwrap();
    assert_eq!(deadline.0, "DeadlineExceeded");
    eventually(LONG, "the deadline Job's pod gone", || async {
        job_pods(&pods, "deadline")
            .await
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await
    .unwrap();

    // ttlSecondsAfterFinished: Complete, then gone (with its pods).
    eventually(LONG, "the ttl Job deleted after it finished", || async {
        jobs.get_opt("ttl").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();

    // Suspended: no pod until resumed, then it runs to completion.
    let s = jobs.get("suspended").await.unwrap();
    assert_eq!(
        condition(&s, "Suspended").map(|c| c.0).as_deref(),
        Some("JobSuspended")
    );
    assert!(job_pods(&pods, "suspended").await.is_empty());
    jobs.patch(
        "suspended",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    eventually(LONG, "the resumed Job Complete", || async {
        jobs.get("suspended")
            .await
            .ok()
            .filter(|j| condition(j, "Complete").is_some())
    })
    .await
    .unwrap();

    // kubectl create job --from=cronjob/: a Job of the template, owned.
    let o = kubectl(
        &k,
        &kubeconfig,
        &["create", "job", "manual", "--from=cronjob/template"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let manual = eventually(LONG, "the manual Job Complete", || async {
        jobs.get("manual")
            .await
            .ok()
            .filter(|j| condition(j, "Complete").is_some())
    })
    .await
    .unwrap();
    assert_eq!(
        manual.metadata.annotations.as_ref().unwrap()["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert!(owned_by(&manual, template.metadata.uid.as_deref().unwrap()));
    let log = pods
        .logs(
            &job_pods(&pods, "manual").await[0]
                .metadata
                .name
                .clone()
                .unwrap(),
            &LogParams::default(),
        )
        .await
        .unwrap();
    assert_eq!(log.trim(), "by hand");
    // Suspended: it never ran on its own.
    assert!(
        cronjobs
            .get("template")
            .await
            .unwrap()
            .status
            .and_then(|s| s.last_schedule_time)
            .is_none()
    );

    // Every minute a Job named after its scheduled minute, created within
    // that minute; only the last successful one is kept.
    let names = std::sync::Mutex::new(BTreeSet::new());
    eventually(MINUTES, "three scheduled runs of `every`", || async {
        for j in jobs_of(&jobs, &every).await {
            let name = j.metadata.name.clone().unwrap();
            let minutes: i64 = name.strip_prefix("every-")?.parse().ok()?;
            let scheduled =
                j.metadata.annotations.as_ref()?["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                    .clone();
            let at = k8s_openapi::jiff::Timestamp::from_second(minutes * 60).ok()?;
            assert_eq!(scheduled, at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            let created = j.metadata.creation_timestamp.as_ref()?.0.as_second();
            assert!(
                (minutes * 60..minutes * 60 + 60).contains(&created),
                "{name} created at {created}, not within its minute"
            );
            names.lock().unwrap().insert(name);
        }
        (names.lock().unwrap().len() >= 3).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: seen {names:?}\n{}", s1.log()));
    eventually(
        LONG,
        "history limit: one successful scheduled Job kept",
        || async {
            let kept: Vec<Job> = jobs_of(&jobs, &every)
                .await
                .into_iter()
                .filter(|j| {
                    condition(j, "Complete").is_some() && j.metadata.deletion_timestamp.is_none()
                })
                .collect();
            (kept.len() == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let every_now = cronjobs.get("every").await.unwrap();
    let st = every_now.status.unwrap();
    assert!(st.last_schedule_time.is_some() && st.last_successful_time.is_some());

    // Forbid: its first Job still runs, and no second one was started
    // although minutes passed; the skips are Events.
    let forbid_jobs = jobs_of(&jobs, &forbid).await;
    assert_eq!(forbid_jobs.len(), 1, "{forbid_jobs:?}");
    assert!(condition(&forbid_jobs[0], "Complete").is_none());
    let fst = cronjobs.get("forbid").await.unwrap().status.unwrap();
    assert_eq!(fst.active.as_ref().map(|a| a.len()), Some(1));
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let skipped = events
        .list(&ListParams::default().fields("involvedObject.name=forbid"))
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("JobAlreadyActive"));
    assert!(skipped, "no JobAlreadyActive event for the Forbid CronJob");
    let o = kubectl(&k, &kubeconfig, &["get", "cronjob", "forbid"]);
    let row = text(&o).lines().nth(1).unwrap_or_default().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME SCHEDULE(5 words) TIMEZONE SUSPEND ACTIVE LAST-SCHEDULE AGE
    assert_eq!(cells[0], "forbid");
    assert_eq!(&cells[6..9], ["<none>", "False", "1"], "{row}");

    for name in ["every", "forbid", "template"] {
        cronjobs.delete(name, &Default::default()).await.unwrap();
    }
    drop(s1);
    drop(bed);
}
